//! The `tiffin` command as a library, so that end-to-end tests start the same system
//! the command does.
//!
//! # Layout
//!
//! - [`system`]: every service in one process, on the embedded bus or a broker.
//! - [`bus`]: the bus backend chosen by URL.
//! - [`services`]: builds one service from the system's settings.
//! - [`load`]: the replay of real orders against a gateway.
//! - [`report`]: figures counted from the services' own databases.
//! - [`audit`]: the invariants that span services.
//! - [`demo`]: `tiffin up` and `tiffin demo`.
//! - [`serve`]: `tiffin serve`, one service per process, and the distributed demo.
//! - [`ops`]: operator commands on a stopped system.
//! - [`cli`]: the command line.
#![forbid(unsafe_code)]

pub mod audit;
pub mod bench;
pub mod bus;
pub mod cli;
pub mod config;
pub mod demo;
pub mod load;
pub mod ops;
pub mod report;
pub mod serve;
pub mod services;
pub mod system;
