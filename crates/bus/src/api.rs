//! The contract every backend implements.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::envelope::Envelope;

/// Publishes events.
#[async_trait]
pub trait Publisher: Send + Sync + Debug {
    /// Publishes `events` in order and returns once the broker has stored every one
    /// durably (publisher confirms).
    ///
    /// Events with the same `subject` are delivered to each subscriber in the order
    /// given here, as far as the backend's ordering guarantee goes. Publishing an event
    /// id twice is allowed: backends that can deduplicate do, and consumers
    /// deduplicate through the inbox either way.
    ///
    /// # Errors
    ///
    /// When this fails, any subset of `events` may have been stored; the caller
    /// publishes them again (the outbox relay does).
    async fn publish(&self, events: &[Envelope]) -> Result<(), PublishError>;
}

/// Opens subscriptions.
#[async_trait]
pub trait Subscriber: Send + Sync + Debug {
    /// Subscribes the consumer group `spec.group` as a work queue.
    ///
    /// The queue is durable: it is created on the first call and from then on
    /// collects every published event of the bound types, whether or not a member is
    /// connected. Each message goes to one member of the group at a time.
    ///
    /// # Errors
    ///
    /// Fails when the broker cannot be reached or the queue cannot be declared.
    async fn queue(&self, spec: &QueueSpec) -> Result<Box<dyn QueueReceiver>, SubscribeError>;

    /// Subscribes the consumer group `spec.group` to the event stream.
    ///
    /// Reading resumes after the group's last committed offset; `spec.start` applies
    /// only when the group has committed nothing yet.
    ///
    /// # Errors
    ///
    /// Fails when the broker cannot be reached.
    async fn stream(&self, spec: &StreamSpec) -> Result<Box<dyn StreamReceiver>, SubscribeError>;
}

/// A backend that publishes and subscribes.
pub trait Bus: Publisher + Subscriber {}

impl<T: Publisher + Subscriber> Bus for T {}

/// A shared handle to a bus.
pub type SharedBus = Arc<dyn Bus>;

/// A work-queue subscription.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// The consumer group, which names the queue.
    pub group: String,
    /// Event types to bind. A trailing `*` matches any suffix (`order.*`).
    pub event_types: Vec<String>,
    /// How long a fetched message stays invisible to other members before it is
    /// redelivered if not acked (visibility timeout). Must exceed the handler timeout.
    pub lease: Duration,
}

/// Where a stream group starts when it has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The first event in the log.
    Beginning,
    /// Only events published after subscribing.
    Latest,
    /// The first event with an offset greater than this one.
    After(u64),
    /// The first event published at or after this time, in Unix milliseconds.
    Time(i64),
}

/// A stream subscription.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// The consumer group, whose committed offset is stored by the broker.
    pub group: String,
    /// Event types to read; others are skipped. A trailing `*` matches any suffix.
    pub event_types: Vec<String>,
    /// Where to start without a committed offset.
    pub start: StartPosition,
}

/// Receives work-queue messages.
#[async_trait]
pub trait QueueReceiver: Send + Debug {
    /// Fetches up to `max` messages, waiting up to `wait` for the first one.
    ///
    /// Returns an empty batch when nothing arrived in time. Every returned message
    /// must be settled with [`QueueMessage::ack`], [`QueueMessage::nack`] or
    /// [`QueueMessage::dead_letter`]; one that is dropped unsettled is redelivered
    /// after its lease.
    ///
    /// # Errors
    ///
    /// Fails when the broker cannot be reached.
    async fn fetch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<QueueMessage>, ReceiveError>;
}

/// Settles one work-queue message. Implemented by backends.
#[async_trait]
pub trait Settle: Send + Sync + Debug {
    /// Removes the message from the queue.
    async fn ack(&self) -> Result<(), AckError>;
    /// Returns the message to the queue, visible again after `delay`.
    async fn nack(&self, delay: Duration, reason: &str) -> Result<(), AckError>;
    /// Moves the message to the dead-letter store with `reason`.
    async fn dead_letter(&self, reason: &str) -> Result<(), AckError>;
}

/// A message fetched from a work queue.
#[derive(Debug)]
pub struct QueueMessage {
    /// The event.
    pub envelope: Envelope,
    /// Which delivery this is, counting from 1.
    pub attempt: u32,
    settle: Box<dyn Settle>,
}

impl QueueMessage {
    /// Builds a message; for backends.
    pub fn new(envelope: Envelope, attempt: u32, settle: Box<dyn Settle>) -> Self {
        Self {
            envelope,
            attempt,
            settle,
        }
    }

    /// Acknowledges the message: it will not be delivered again.
    ///
    /// # Errors
    ///
    /// Fails when the broker cannot be reached; the message is then redelivered
    /// later, which the consumer's inbox absorbs.
    pub async fn ack(self) -> Result<(), AckError> {
        self.settle.ack().await
    }

    /// Rejects the message for now: it is redelivered after `delay`.
    ///
    /// # Errors
    ///
    /// Fails when the broker cannot be reached; the lease then expires instead.
    pub async fn nack(self, delay: Duration, reason: &str) -> Result<(), AckError> {
        self.settle.nack(delay, reason).await
    }

    /// Gives up on the message: it moves to the dead-letter store with `reason`.
    ///
    /// # Errors
    ///
    /// Fails when the broker cannot be reached; the lease then expires instead.
    pub async fn dead_letter(self, reason: &str) -> Result<(), AckError> {
        self.settle.dead_letter(reason).await
    }
}

/// An event read from a stream, with its position in the log.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    /// The event.
    pub envelope: Envelope,
    /// Its offset, increasing through the log.
    pub offset: u64,
}

/// Receives stream messages in log order.
#[async_trait]
pub trait StreamReceiver: Send + Debug {
    /// Fetches up to `max` messages after the last fetched one, waiting up to `wait`
    /// for the first. Returns an empty batch when the reader has caught up with the
    /// log.
    ///
    /// # Errors
    ///
    /// Fails when the broker cannot be reached.
    async fn fetch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StreamMessage>, ReceiveError>;

    /// Stores `offset` as the group's position: after a restart the group resumes
    /// with the next event.
    ///
    /// # Errors
    ///
    /// Fails when the broker cannot be reached.
    async fn commit(&mut self, offset: u64) -> Result<(), AckError>;

    /// Records `message` in the dead-letter store with `reason`, so the reader can
    /// move past an event it cannot handle without losing it.
    ///
    /// # Errors
    ///
    /// Fails when the broker cannot be reached.
    async fn dead_letter(&mut self, message: &StreamMessage, reason: &str) -> Result<(), AckError>;
}

// The bus errors print their cause in their own message, because they are logged
// with `%error`, and so they do not also report it as `source()`: a chain printed
// with `{:#}` would name every cause twice.

/// Publishing failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to publish: {0:#}")]
pub struct PublishError(pub anyhow::Error);

/// Subscribing failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to subscribe group {group}: {cause:#}")]
pub struct SubscribeError {
    /// The consumer group.
    pub group: String,
    /// The cause.
    pub cause: anyhow::Error,
}

/// Receiving failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to receive: {0:#}")]
pub struct ReceiveError(pub anyhow::Error);

/// Acking, nacking, dead-lettering or committing failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to settle message: {0:#}")]
pub struct AckError(pub anyhow::Error);

/// Returns true when `event_type` matches one of `patterns`. A pattern ending in
/// `*` matches any type starting with what precedes the `*`.
pub fn matches_any(patterns: &[String], event_type: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => event_type.starts_with(prefix),
            None => pattern == event_type,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_and_prefix() {
        let patterns = vec!["order.*".to_owned(), "menu.item.upserted".to_owned()];

        assert!(matches_any(&patterns, "order.placed"));
        assert!(matches_any(&patterns, "menu.item.upserted"));
        assert!(!matches_any(&patterns, "menu.item.deleted"));
        assert!(!matches_any(&patterns, "orders"));
    }

    #[test]
    fn errors_name_each_cause_once() {
        let cause =
            anyhow::anyhow!("connection refused").context("failed to declare queue kitchen");
        let subscribe = anyhow::Error::from(SubscribeError {
            group: "kitchen".to_owned(),
            cause,
        });
        let receive = ReceiveError(anyhow::anyhow!("channel closed").context("consume kitchen"));

        assert_eq!(
            format!("{subscribe:#}"),
            "failed to subscribe group kitchen: failed to declare queue kitchen: connection refused"
        );
        assert_eq!(
            receive.to_string(),
            "failed to receive: consume kitchen: channel closed"
        );
    }
}
