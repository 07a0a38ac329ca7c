//! Runs a [`Handler`] over a subscription.
//!
//! The handler's outcome drives the message. `Ok` acks it, and a transient error nacks
//! it for redelivery after a backoff. A permanent error, a panic caught in the handler
//! or the last allowed attempt moves it to the dead-letter store with the reason. A
//! handler that runs past its timeout counts as a transient error.
//!
//! Around each message the runner opens a span named `event` with the event id and
//! type, the order id (the envelope's subject) and the producer's trace id, so every
//! log line of a handler carries them.
//!
//! Shutdown: once the token is cancelled the runner fetches nothing more, waits for
//! the handlers in flight to settle their messages (up to the drain timeout), and
//! returns. A message whose handler is cut off is redelivered after its lease.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::{QueueMessage, QueueReceiver, StreamReceiver};
use crate::envelope::Envelope;

/// Handles one event. Implementations must be idempotent: the same event may arrive
/// more than once (record its id in the inbox in the same transaction as the change).
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles `event`.
    ///
    /// # Errors
    ///
    /// A [`HandlerError::transient`] error requests a redelivery, a
    /// [`HandlerError::permanent`] one for dead-lettering at once.
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError>;

    /// Handles a batch of events in order, all or nothing, for handlers that can
    /// apply many events in one transaction (projections, replicas, consumers that
    /// commit a batch at once).
    ///
    /// The runners call it only when [`Handler::applies_batches`] returns true: the
    /// stream runner with each batch read, the queue runner with each fetch of more
    /// than one message, acking them all after it succeeds. When it fails, the
    /// runner handles the batch again one event at a time, so one bad event is
    /// retried and dead-lettered on its own. That is safe only because a failed
    /// batch changed nothing. The default calls [`Handler::handle`] for each event.
    ///
    /// # Errors
    ///
    /// As for [`Handler::handle`].
    async fn handle_batch(&self, events: &[Envelope]) -> Result<(), HandlerError> {
        for event in events {
            self.handle(event).await?;
        }
        Ok(())
    }

    /// Returns true when [`Handler::handle_batch`] applies a batch atomically.
    fn applies_batches(&self) -> bool {
        false
    }
}

/// A handler failure, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
#[error("{source:#}")]
pub struct HandlerError {
    permanent: bool,
    source: anyhow::Error,
}

impl HandlerError {
    /// A failure that may pass (a database busy, a timeout): retry with backoff.
    pub fn transient(source: impl Into<anyhow::Error>) -> Self {
        Self {
            permanent: false,
            source: source.into(),
        }
    }

    /// A failure that will repeat (an undecodable payload): dead-letter at once.
    pub fn permanent(source: impl Into<anyhow::Error>) -> Self {
        Self {
            permanent: true,
            source: source.into(),
        }
    }

    /// Returns true when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        Self::transient(error)
    }
}

/// Retries, backoff and timeouts of a consumer.
///
/// The delay before attempt `n + 1` is `initial_backoff * multiplier^(n - 1)`, capped at
/// `max_backoff`, with up to 20 % of random jitter subtracted so that many failed
/// messages do not return at the same instant.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Deliveries before dead-lettering, the first one included.
    pub max_attempts: u32,
    /// Delay before the first redelivery.
    pub initial_backoff: Duration,
    /// Upper bound of the delay.
    pub max_backoff: Duration,
    /// Growth factor of the delay per attempt.
    pub multiplier: f64,
    /// How long one handler call may run before it is abandoned and retried.
    pub handler_timeout: Duration,
    /// How long shutdown waits for handlers in flight.
    pub drain_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            handler_timeout: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Returns the delay after failed attempt `attempt` (counting from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = base.min(self.max_backoff.as_secs_f64());
        let jitter = capped * 0.2 * fastrand_f64();
        Duration::from_secs_f64((capped - jitter).max(0.0))
    }
}

fn fastrand_f64() -> f64 {
    let mut bytes = [0u8; 8];
    // Jitter does not need cryptographic randomness, but the bus already depends on
    // the OS source through uuid, so take it from there.
    bytes.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `handler` over a work queue until `shutdown` is cancelled, with up to
/// `concurrency` messages in flight (a bulkhead per consumer). A handler that
/// applies batches gets each fetch as one batch, with at most
/// [`BATCHES_IN_FLIGHT`] batches at once.
pub async fn run_queue(
    name: &str,
    mut receiver: Box<dyn QueueReceiver>,
    handler: Arc<dyn Handler>,
    policy: RetryPolicy,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    let name: Arc<str> = Arc::from(name);
    let permits = Arc::new(Semaphore::new(concurrency));
    let batches = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let batching = handler.applies_batches();
    let policy = Arc::new(policy);
    let mut failures: u32 = 0;
    tracing::info!(consumer = %name, concurrency, "consumer started");

    while !shutdown.is_cancelled() {
        // A batch handler fetches only when a batch slot is free. Until then, new
        // messages gather in the prefetch for the next batch.
        let batch_slot = if batching {
            tokio::select! {
                slot = batches.clone().acquire_owned() => Some(slot.expect("the semaphore is never closed")),
                () = shutdown.cancelled() => break,
            }
        } else {
            None
        };
        // Fetch only as many messages as there are free handler slots, so nothing
        // waits in memory while its lease runs out.
        let free = permits.available_permits();
        if free == 0 {
            tokio::select! {
                permit = permits.clone().acquire_owned() => drop(permit),
                () = shutdown.cancelled() => break,
            }
            continue;
        }
        let batch = tokio::select! {
            batch = receiver.fetch(free, Duration::from_millis(500)) => batch,
            () = shutdown.cancelled() => break,
        };
        let messages = match batch {
            Ok(messages) => {
                failures = 0;
                messages
            }
            Err(error) => {
                failures += 1;
                let delay = policy.backoff(failures.min(8));
                tracing::warn!(consumer = %name, error = %error, retry_in_ms = delay.as_millis() as u64, "failed to fetch messages");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if let Some(batch_slot) = batch_slot {
            if messages.is_empty() {
                continue;
            }
            // One task and one transaction for the batch, which takes a slot per message.
            let count = u32::try_from(messages.len()).unwrap_or(u32::MAX);
            let batch_permits = permits
                .clone()
                .acquire_many_owned(count)
                .await
                .expect("the semaphore is never closed");
            let handler = handler.clone();
            let policy = policy.clone();
            let name = name.clone();
            tokio::spawn(async move {
                settle_queue_batch(&name, messages, handler.as_ref(), &policy).await;
                drop(batch_permits);
                drop(batch_slot);
            });
            continue;
        }
        for message in messages {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let handler = handler.clone();
            let policy = policy.clone();
            let name = name.clone();
            tokio::spawn(async move {
                settle_queue_message(&name, message, handler.as_ref(), &policy).await;
                drop(permit);
            });
        }
    }

    let max = u32::try_from(concurrency).unwrap_or(u32::MAX);
    match tokio::time::timeout(policy.drain_timeout, permits.acquire_many(max)).await {
        Ok(_) => tracing::info!(consumer = %name, "consumer stopped"),
        Err(_) => {
            tracing::warn!(consumer = %name, "consumer stopped with handlers still running; their messages will be redelivered")
        }
    }
}

/// The number of batches a batch handler's queue runner applies at once. While
/// they run, new messages wait in the prefetch, and the next fetch takes them
/// together. A busy queue is then handled in a few large transactions instead of
/// many small ones that each pay for a commit and contend for the same rows. With
/// two, one batch can commit while the next one is applied.
const BATCHES_IN_FLIGHT: usize = 2;

/// Handles a fetched batch with [`Handler::handle_batch`] and acks every message
/// after it succeeds. When it fails, times out or panics, it changed nothing, so
/// each message is handled and settled on its own, and only a bad one is retried
/// or dead-lettered.
async fn settle_queue_batch(
    name: &str,
    mut messages: Vec<QueueMessage>,
    handler: &dyn Handler,
    policy: &RetryPolicy,
) {
    if messages.len() == 1 {
        let message = messages.pop().expect("one message");
        settle_queue_message(name, message, handler, policy).await;
        return;
    }
    let envelopes: Vec<Envelope> = messages.iter().map(|m| m.envelope.clone()).collect();
    let guarded = AssertUnwindSafe(handler.handle_batch(&envelopes)).catch_unwind();
    match tokio::time::timeout(policy.handler_timeout, guarded).await {
        Ok(Ok(Ok(()))) => {
            let acks = messages.into_iter().map(|message| async move {
                let event_id = message.envelope.id.clone();
                if let Err(error) = message.ack().await {
                    tracing::warn!(consumer = %name, %event_id, error = %error, "failed to ack message; it will be redelivered after its lease");
                }
            });
            futures::future::join_all(acks).await;
        }
        outcome => {
            let cause = match outcome {
                Ok(Ok(Err(error))) => error.to_string(),
                Ok(Err(_)) => "the handler panicked".to_owned(),
                _ => "the handler timed out".to_owned(),
            };
            tracing::debug!(consumer = %name, messages = envelopes.len(), error = %cause, "batch failed, handling its messages one by one");
            // NOTE: one by one, a large batch can take longer than its lease when
            // every message times out (a stalled database). A backend with leases
            // (embedded, NATS) then hands the last ones out again meanwhile. The
            // inbox absorbs the duplicate effects, but each round uses an attempt.
            for message in messages {
                settle_queue_message(name, message, handler, policy).await;
            }
        }
    }
}

async fn settle_queue_message(
    name: &str,
    message: QueueMessage,
    handler: &dyn Handler,
    policy: &RetryPolicy,
) {
    let span = event_span(name, &message.envelope, message.attempt);
    async move {
        tracing::trace!("handling event");
        let outcome = call(handler, &message.envelope, policy.handler_timeout).await;
        let attempt = message.attempt;
        let settled = match outcome {
            Ok(()) => message.ack().await,
            Err(error) if !error.is_permanent() && attempt < policy.max_attempts => {
                let delay = policy.backoff(attempt);
                tracing::warn!(error = %error, attempt, retry_in_ms = delay.as_millis() as u64, "handler failed, will retry");
                message.nack(delay, &error.to_string()).await
            }
            Err(error) => {
                let reason = format!("{error} (attempt {attempt} of {})", policy.max_attempts);
                tracing::error!(error = %error, attempt, "handler failed, moving the event to the dead letters");
                message.dead_letter(&reason).await
            }
        };
        if let Err(error) = settled {
            tracing::warn!(error = %error, "failed to settle message; it will be redelivered after its lease");
        }
    }
    .instrument(span)
    .await;
}

/// Runs `handler` over a stream until `shutdown` is cancelled, one event at a time in
/// log order.
///
/// A failing event is retried in place with backoff, because skipping it would
/// reorder the stream; after the last attempt it is dead-lettered and reading moves
/// on. The offset is committed once per second or 512 events while events keep
/// coming, when the reader catches up or a read fails, and on shutdown. `caught_up` is set to true
/// whenever the reader has reached the end of the log, and to false when it has
/// events to read.
pub async fn run_stream(
    name: &str,
    mut receiver: Box<dyn StreamReceiver>,
    handler: Arc<dyn Handler>,
    policy: RetryPolicy,
    caught_up: Option<watch::Sender<bool>>,
    shutdown: CancellationToken,
) {
    tracing::info!(consumer = %name, "stream reader started");
    let mut failures: u32 = 0;
    let mut offsets = OffsetCommits::default();
    'read: while !shutdown.is_cancelled() {
        let batch = tokio::select! {
            batch = receiver.fetch(256, Duration::from_millis(500)) => batch,
            () = shutdown.cancelled() => break,
        };
        let messages = match batch {
            Ok(messages) => messages,
            Err(error) => {
                // A backend may stop delivering while too many events wait for a
                // commit (NATS JetStream's max_ack_pending), so commit before trying
                // again.
                offsets.commit(name, receiver.as_mut()).await;
                failures += 1;
                let delay = policy.backoff(failures.min(8));
                tracing::warn!(consumer = %name, error = %error, retry_in_ms = delay.as_millis() as u64, "failed to read the stream");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        failures = 0;
        if let Some(flag) = &caught_up {
            flag.send_if_modified(|value| {
                let idle = messages.is_empty();
                let changed = *value != idle;
                *value = idle;
                changed
            });
        }
        let Some(last) = messages.last().map(|m| m.offset) else {
            // Caught up: a good moment to record how far the group got.
            offsets.commit(name, receiver.as_mut()).await;
            continue;
        };

        if handler.applies_batches() {
            let envelopes: Vec<Envelope> = messages.iter().map(|m| m.envelope.clone()).collect();
            let whole =
                tokio::time::timeout(policy.handler_timeout, handler.handle_batch(&envelopes))
                    .await;
            match whole {
                Ok(Ok(())) => {
                    offsets
                        .handled(name, receiver.as_mut(), last, messages.len())
                        .await;
                    continue;
                }
                Ok(Err(error)) => {
                    tracing::debug!(consumer = %name, error = %error, "batch failed, handling its events one by one");
                }
                Err(_) => {
                    tracing::debug!(consumer = %name, "batch timed out, handling its events one by one")
                }
            }
        }

        for message in &messages {
            let mut attempt = 1;
            loop {
                let span = event_span(name, &message.envelope, attempt);
                let outcome = call(handler.as_ref(), &message.envelope, policy.handler_timeout)
                    .instrument(span.clone())
                    .await;
                match outcome {
                    Ok(()) => break,
                    Err(error) if !error.is_permanent() && attempt < policy.max_attempts => {
                        let delay = policy.backoff(attempt);
                        span.in_scope(|| tracing::warn!(error = %error, attempt, retry_in_ms = delay.as_millis() as u64, "handler failed, will retry"));
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            // Unhandled events of this batch are read again after a restart.
                            () = shutdown.cancelled() => break 'read,
                        }
                        attempt += 1;
                    }
                    Err(error) => {
                        let reason =
                            format!("{error} (attempt {attempt} of {})", policy.max_attempts);
                        span.in_scope(|| tracing::error!(error = %error, attempt, "handler failed, moving the event to the dead letters"));
                        if let Err(error) = receiver.dead_letter(message, &reason).await {
                            tracing::warn!(consumer = %name, error = %error, "failed to record a dead letter; the event will be read again");
                            continue 'read;
                        }
                        break;
                    }
                }
            }
        }
        offsets
            .handled(name, receiver.as_mut(), last, messages.len())
            .await;
    }
    offsets.commit(name, receiver.as_mut()).await;
    tracing::info!(consumer = %name, "stream reader stopped");
}

/// How often a busy stream reader commits its offset.
///
/// A commit is a write to the broker or the log, so committing after every small
/// batch cost more than the handling on a busy stream. A reader that crashes reads
/// up to this much again, which handlers absorb because they must be idempotent.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Maximum events a stream reader handles between commits. It stays below the
/// number of unacknowledged messages a backend lets a reader keep (NATS
/// JetStream's `max_ack_pending`, 1,000 by default), past which deliveries stop.
const COMMIT_EVERY: usize = 512;

/// The offset a stream reader has handled but not yet committed.
#[derive(Debug, Default)]
struct OffsetCommits {
    pending: Option<u64>,
    uncommitted_events: usize,
    last_commit: Option<tokio::time::Instant>,
}

impl OffsetCommits {
    /// Records that `events` more events, up to `offset`, are handled, and commits
    /// after [`COMMIT_INTERVAL`] or [`COMMIT_EVERY`] events.
    async fn handled(
        &mut self,
        name: &str,
        receiver: &mut dyn StreamReceiver,
        offset: u64,
        events: usize,
    ) {
        self.pending = Some(offset);
        self.uncommitted_events += events;
        if self.uncommitted_events >= COMMIT_EVERY
            || self
                .last_commit
                .is_none_or(|at| at.elapsed() >= COMMIT_INTERVAL)
        {
            self.commit(name, receiver).await;
        }
    }

    /// Commits the pending offset, if any.
    async fn commit(&mut self, name: &str, receiver: &mut dyn StreamReceiver) {
        let Some(offset) = self.pending else {
            return;
        };
        match receiver.commit(offset).await {
            Ok(()) => {
                self.pending = None;
                self.uncommitted_events = 0;
                self.last_commit = Some(tokio::time::Instant::now());
            }
            Err(error) => {
                tracing::warn!(consumer = %name, offset, error = %error, "failed to commit the stream offset; events will be read again");
            }
        }
    }
}

fn event_span(consumer: &str, envelope: &Envelope, attempt: u32) -> tracing::Span {
    let span = tracing::info_span!(
        "event",
        consumer,
        event_id = %envelope.id,
        event_type = %envelope.event_type,
        subject = %envelope.subject,
        order_id = tracing::field::Empty,
        trace_id = %envelope.trace_context().trace_id(),
        attempt,
    );
    if envelope.event_type.starts_with("order.") {
        span.record("order_id", envelope.subject.as_str());
    }
    span
}

/// Calls the handler with a timeout, turning a panic into a permanent error.
async fn call(
    handler: &dyn Handler,
    envelope: &Envelope,
    timeout: Duration,
) -> Result<(), HandlerError> {
    let guarded = AssertUnwindSafe(handler.handle(envelope)).catch_unwind();
    match tokio::time::timeout(timeout, guarded).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(HandlerError::permanent(anyhow::anyhow!(
                "handler panicked: {message}"
            )))
        }
        Err(_) => Err(HandlerError::transient(anyhow::anyhow!(
            "handler timed out after {} ms",
            timeout.as_millis()
        ))),
    }
}
