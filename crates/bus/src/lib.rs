//! Tiffin's message bus: one API over several brokers.
//!
//! Services publish [`Envelope`]s (CloudEvents 1.0 plus W3C trace context) and
//! subscribe in one of two ways:
//!
//! - a **work queue** ([`Subscriber::queue`]): a named consumer group receives every
//!   event of the types it binds, each message goes to one member of the group, and
//!   each message is acked, nacked (redelivered after a delay) or dead-lettered on its
//!   own;
//! - a **stream** ([`Subscriber::stream`]): a named group reads the whole event log in
//!   order from a chosen position and commits how far it has read.
//!
//! Delivery is at least once. Consumers make it effectively once with the [`inbox`],
//! and producers make "state change plus event" atomic with the [`outbox`].
//!
//! # Layout
//!
//! - [`envelope`]: the message format.
//! - [`api`]: the [`Publisher`] and [`Subscriber`] traits every backend implements.
//! - [`embedded`]: the default backend, a durable log in one SQLite file.
//! - [`consumer`]: runs a [`Handler`] over a subscription with retries, backoff,
//!   timeouts, dead-lettering and graceful shutdown.
//! - [`outbox`] and [`inbox`]: the transactional outbox relay and the idempotent inbox.
//! - [`split`]: work queues on one engine and the stream on another.
//! - `conformance` (feature `conformance`): the test suite every backend passes.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod api;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod consumer;
pub mod embedded;
pub mod envelope;
pub mod inbox;
pub mod outbox;
pub mod split;

pub use api::{
    AckError, Bus, PublishError, Publisher, QueueMessage, QueueReceiver, QueueSpec, ReceiveError,
    StartPosition, StreamMessage, StreamReceiver, StreamSpec, SubscribeError, Subscriber,
};
pub use consumer::{Handler, HandlerError, RetryPolicy};
pub use envelope::Envelope;
