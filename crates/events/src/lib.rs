//! Payloads of Tiffin's events.
//!
//! Each struct is one version of one event type. Its JSON Schema is
//! `contracts/<type>.v<version>.json`, and [`EventData::TYPE`] and
//! [`EventData::VERSION`] write the matching CloudEvents `type` and `dataschema`.
//!
//! Compatibility rules: a published version never changes incompatibly. New optional
//! fields may be added (readers ignore fields they do not know); anything else is a new
//! version that producers publish next to the old one until every reader has moved.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod menu;
pub mod order;
pub mod restaurant;

pub use tiffin_bus::envelope::EventData;
