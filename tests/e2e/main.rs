//! End-to-end tests of the whole system: every service in-process on port 0 with a
//! temporary data directory, driven over real HTTP through the gateway.
//!
//! Set `TEST_LOG=1` to see the services' logs.

mod admission;
mod bad_input;
mod brokers;
mod crash;
mod engines;
mod helpers;
mod idempotency;
mod postgres;
mod saga;
mod whole_system;
