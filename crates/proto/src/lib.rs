//! gRPC contracts generated from `proto/`.
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// `payments.v1`: authorizations, captures and voids.
pub mod payments {
    /// Version 1 of the payments contract.
    pub mod v1 {
        tonic::include_proto!("payments.v1");
    }
}
