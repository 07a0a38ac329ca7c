//! The NATS JetStream backend of Tiffin's message bus (nats-server 2.9 or newer with
//! JetStream enabled).
//!
//! All events live in one JetStream stream (default `TIFFIN_EVENTS`) over the
//! subjects `<prefix>.>`. An event of type `order.placed` is published on
//! `<prefix>.order.placed`.
//!
//! # Message format
//!
//! The payload is the whole envelope in CloudEvents structured JSON mode, and it is
//! what receivers decode. The header `Nats-Msg-Id` is the event id, so JetStream's
//! duplicate window drops a repeated publish of the same event. The other headers
//! are `Content-Type: application/cloudevents+json`, a copy of the attributes
//! `ce-id`, `ce-type`, `ce-source`, `ce-subject` (the aggregate id, which is the
//! event's key) and `ce-time`, and the W3C `traceparent` and `tracestate`. Tools
//! such as the `nats` CLI can then filter and trace without parsing the payload.
//!
//! # Work queues
//!
//! A queue group is a durable pull consumer named after the group, with explicit
//! acks, `ack_wait` equal to the spec's lease and `max_deliver` from
//! [`NatsOptions::max_deliver`]. The attempt number is the delivery count that
//! JetStream reports. A nack is a `-NAK` with the requested delay, and dead-lettering
//! publishes a copy to `<prefix>-dead.<group>` in the stream `<stream>_DEAD`, with
//! the reason in the `Tiffin-Dead-Reason` header, before the original is terminated
//! (`+TERM`).
//!
//! A 2.9 server allows one filter subject per consumer, so a spec with several
//! event-type patterns gets one consumer per pattern, named `<group>_<index>`, and
//! [`QueueReceiver::fetch`](tiffin_bus::QueueReceiver::fetch) merges them.
//!
//! # Streams
//!
//! A stream group is a durable pull consumer with `AckPolicy::All` whose deliver
//! policy follows [`StartPosition`](tiffin_bus::StartPosition): `All`, `New`,
//! `ByStartSequence(n + 1)` or `ByStartTime`. Offsets are stream sequence numbers,
//! and a commit acks every message up to the offset, so the server keeps the
//! group's position.
//!
//! # Connection loss
//!
//! The client reconnects by itself, without limit, after a delay of 0 ms for the
//! first attempt and then `min(100 ms * 2^(attempt - 2), 5 s)`. While it is
//! disconnected, publish, fetch, ack and commit return an error within
//! [`NatsOptions::request_timeout`] instead of waiting, so the outbox relay and the
//! consumer runners retry with their own backoff.
//!
//! # Layout
//!
//! - this file: options, [`connect`] and publishing.
//! - `headers`: the envelope's mapping to subjects and headers.
//! - `queue`: work-queue receivers and message settlement.
//! - `stream`: stream readers.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod headers;
mod queue;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_nats::jetstream::{self, Context};
use async_nats::{ConnectOptions, Event};
use async_trait::async_trait;
use tiffin_bus::api::{
    Bus, PublishError, Publisher, QueueReceiver, QueueSpec, StreamReceiver, StreamSpec,
    SubscribeError, Subscriber,
};
use tiffin_bus::envelope::Envelope;
use tiffin_runtime::db::redact;

pub use headers::DEAD_REASON_HEADER;

/// Settings of the JetStream backend.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// The JetStream stream that stores events. Default `TIFFIN_EVENTS`.
    pub stream: String,
    /// The subject prefix: events go to `<prefix>.<event type>`. Default
    /// `tiffin.events`.
    pub subject_prefix: String,
    /// Deliveries of a work-queue message before the server stops redelivering it.
    /// Keep it above the consumer's `RetryPolicy::max_attempts`, so that the runner
    /// dead-letters a failing message before the server gives up on it silently.
    /// Default 20, and -1 means no limit.
    pub max_deliver: i64,
    /// How long one request to the server (publish acknowledgement, consumer
    /// management, ack) may take before it fails. Default 5 s.
    pub request_timeout: Duration,
    /// How long a stream message read but not yet committed stays with a reader
    /// before the server delivers it again. A group reopened after a crash resumes
    /// at once from its committed offset, so this matters only while a reader runs.
    /// Default 60 s.
    pub stream_ack_wait: Duration,
    /// JetStream's duplicate window: a publish that repeats an event id within it is
    /// dropped. Default 2 min.
    pub duplicate_window: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            stream: "TIFFIN_EVENTS".to_owned(),
            subject_prefix: "tiffin.events".to_owned(),
            max_deliver: 20,
            request_timeout: Duration::from_secs(5),
            stream_ack_wait: Duration::from_secs(60),
            duplicate_window: Duration::from_secs(120),
        }
    }
}

impl NatsOptions {
    /// Returns the name of the stream that stores dead letters.
    pub fn dead_stream(&self) -> String {
        format!("{}_DEAD", self.stream)
    }

    /// Returns the subject that dead letters of `group` are published on.
    pub fn dead_subject(&self, group: &str) -> String {
        format!("{}-dead.{group}", self.subject_prefix)
    }
}

/// Connecting to NATS or preparing the streams failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to connect to NATS at {url}: {source:#}")]
pub struct ConnectError {
    /// The server URL, password hidden.
    pub url: String,
    /// The cause, with what to check.
    #[source]
    pub source: anyhow::Error,
}

/// A bus over NATS JetStream. Cloning shares the connection.
#[derive(Debug, Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) client: async_nats::Client,
    pub(crate) jetstream: Context,
    pub(crate) options: NatsOptions,
    /// The server URL with the password hidden, for error messages.
    pub(crate) url: String,
}

/// Connects to the NATS server at `url` (for example `nats://127.0.0.1:4222`) and
/// creates the event and dead-letter streams if they do not exist.
///
/// # Errors
///
/// Fails when the server cannot be reached within the request timeout, when
/// JetStream is not enabled on it, or when the stream exists without the subjects
/// `<prefix>.>`. The message names the URL without its password.
///
/// # Example
///
/// ```no_run
/// # async fn example() -> Result<(), tiffin_bus_nats::ConnectError> {
/// use tiffin_bus_nats::{NatsOptions, connect};
///
/// let bus = connect("nats://127.0.0.1:4222", NatsOptions::default()).await?;
/// # Ok(())
/// # }
/// ```
pub async fn connect(url: &str, options: NatsOptions) -> Result<NatsBus, ConnectError> {
    let redacted = redact(url);
    let fail = |source: anyhow::Error| ConnectError {
        url: redacted.clone(),
        source,
    };

    let log_url = redacted.clone();
    let client = ConnectOptions::new()
        .connection_timeout(options.request_timeout)
        .request_timeout(Some(options.request_timeout))
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let url = log_url.clone();
            async move { log_event(&url, event) }
        })
        .connect(url)
        .await
        .map_err(|error| {
            fail(anyhow!(error).context(
                "check that nats-server is running with JetStream (-js) and listens at that address",
            ))
        })?;
    let mut jetstream = jetstream::new(client.clone());
    jetstream.set_timeout(options.request_timeout);

    let inner = Inner {
        client,
        jetstream,
        options,
        url: redacted.clone(),
    };
    inner
        .ensure_stream(
            &inner.options.stream,
            &format!("{}.>", inner.options.subject_prefix),
        )
        .await
        .map_err(fail)?;
    inner
        .ensure_stream(
            &inner.options.dead_stream(),
            &format!("{}-dead.>", inner.options.subject_prefix),
        )
        .await
        .map_err(fail)?;
    tracing::info!(url = %redacted, stream = %inner.options.stream, "connected to NATS JetStream");

    Ok(NatsBus {
        inner: Arc::new(inner),
    })
}

/// Returns the delay before reconnect attempt `attempts` (counting from 1): none,
/// then 100 ms doubling up to 5 s.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exponent = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    Duration::from_millis(100u64.saturating_mul(1 << exponent)).min(Duration::from_secs(5))
}

fn log_event(url: &str, event: Event) {
    match event {
        Event::Connected => tracing::info!(url, "connected to NATS"),
        Event::Disconnected => tracing::warn!(url, "disconnected from NATS, reconnecting"),
        Event::Closed => tracing::info!(url, "NATS connection closed"),
        other => tracing::warn!(url, event = %other, "NATS connection event"),
    }
}

impl NatsBus {
    /// Returns the options this bus was connected with.
    pub fn options(&self) -> &NatsOptions {
        &self.inner.options
    }

    /// Returns the underlying client, for administration and tests (for example
    /// `force_reconnect`).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Returns the JetStream context, for administration and tests (reading dead
    /// letters, inspecting consumers).
    pub fn jetstream(&self) -> &Context {
        &self.inner.jetstream
    }

    /// Deletes the event and dead-letter streams with every consumer on them. Tests
    /// call it to clean up; in production it destroys all events.
    ///
    /// # Errors
    ///
    /// Fails when the server cannot be reached; a stream that does not exist is not
    /// an error.
    pub async fn delete_streams(&self) -> anyhow::Result<()> {
        let options = &self.inner.options;
        for name in [options.stream.clone(), options.dead_stream()] {
            match self.inner.jetstream.delete_stream(&name).await {
                Ok(_) => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        async_nats::jetstream::context::DeleteStreamErrorKind::JetStream(ref js)
                            if js.error_code()
                                == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
                    ) => {}
                Err(error) => {
                    return Err(anyhow!(error).context(format!("failed to delete stream {name}")));
                }
            }
        }
        Ok(())
    }

    /// Returns this bus as the shared handle that services take.
    pub fn shared(self) -> Arc<dyn Bus> {
        Arc::new(self)
    }
}

impl Inner {
    /// Creates stream `name` over `subjects`, or checks that the existing one covers
    /// them.
    async fn ensure_stream(&self, name: &str, subjects: &str) -> anyhow::Result<()> {
        let config = jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            storage: jetstream::stream::StorageType::File,
            duplicate_window: self.options.duplicate_window,
            ..Default::default()
        };
        let mut stream = self
            .jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|error| {
                anyhow!(error).context(format!(
                    "failed to create stream {name}; check that JetStream is enabled (nats-server -js)"
                ))
            })?;
        let info = stream
            .info()
            .await
            .with_context(|| format!("failed to read stream {name}"))?;
        if !info.config.subjects.iter().any(|s| s == subjects) {
            anyhow::bail!(
                "stream {name} exists with subjects {:?} instead of {subjects}; delete it or choose another stream name",
                info.config.subjects
            );
        }
        Ok(())
    }

    /// Fails fast while the client is reconnecting, so callers retry instead of
    /// waiting for a timeout.
    pub(crate) fn check_connected(&self) -> anyhow::Result<()> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(anyhow!(
                "not connected to NATS at {} ({state:?}); the client is reconnecting",
                self.url
            )),
        }
    }

    /// Runs `operation` with the request timeout.
    pub(crate) async fn timed<T>(
        &self,
        action: &str,
        limit: Duration,
        operation: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(limit, operation).await {
            Ok(result) => result,
            Err(_) => Err(anyhow!(
                "timed out after {} ms to {action} at NATS {}; check the connection",
                limit.as_millis(),
                self.url
            )),
        }
    }
}

#[async_trait]
impl Publisher for NatsBus {
    async fn publish(&self, events: &[Envelope]) -> Result<(), PublishError> {
        let inner = &self.inner;
        inner.check_connected().map_err(PublishError)?;

        // Send every event first and await the acknowledgements afterwards: one
        // connection keeps the order, and the batch costs one round trip.
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let subject = headers::subject(&inner.options.subject_prefix, &event.event_type)
                .map_err(PublishError)?;
            let message = headers::publish_message(event);
            let ack = inner
                .timed("publish", inner.options.request_timeout, async {
                    inner
                        .jetstream
                        .send_publish(subject.clone(), message)
                        .await
                        .map_err(anyhow::Error::from)
                })
                .await
                .map_err(|error| {
                    PublishError(
                        error.context(format!("failed to publish event {} on {subject}", event.id)),
                    )
                })?;
            acks.push((event, subject, ack));
        }

        for (event, subject, ack) in acks {
            let stored = ack.await.map_err(|error| {
                PublishError(anyhow!(error).context(format!(
                    "event {} on {subject} was not confirmed; check that stream {} exists and covers {}.>",
                    event.id, inner.options.stream, inner.options.subject_prefix
                )))
            })?;
            tracing::trace!(event_id = %event.id, subject, sequence = stored.sequence, duplicate = stored.duplicate, "event stored");
        }
        Ok(())
    }
}

#[async_trait]
impl Subscriber for NatsBus {
    async fn queue(&self, spec: &QueueSpec) -> Result<Box<dyn QueueReceiver>, SubscribeError> {
        let receiver = queue::NatsQueue::open(self.inner.clone(), spec)
            .await
            .map_err(|cause| SubscribeError {
                group: spec.group.clone(),
                cause,
            })?;
        Ok(Box::new(receiver))
    }

    async fn stream(&self, spec: &StreamSpec) -> Result<Box<dyn StreamReceiver>, SubscribeError> {
        let reader = stream::NatsStream::open(self.inner.clone(), spec)
            .await
            .map_err(|cause| SubscribeError {
                group: spec.group.clone(),
                cause,
            })?;
        Ok(Box::new(reader))
    }
}

/// Pulls up to `max` messages from `consumer`, waiting up to `wait` for the first.
///
/// A pull request that waits stays open on the server until its whole batch is filled or
/// it expires, so this first takes what is ready without waiting, and only when
/// nothing is ready waits for a single message and then takes what else is ready.
/// Messages are therefore never left in flight to a request nobody reads.
pub(crate) async fn pull(
    inner: &Inner,
    consumer: &jetstream::consumer::PullConsumer,
    max: usize,
    wait: Duration,
) -> anyhow::Result<Vec<jetstream::Message>> {
    use futures::StreamExt;

    async fn drain(
        batch: Result<jetstream::consumer::pull::Batch, jetstream::consumer::pull::BatchError>,
    ) -> anyhow::Result<Vec<jetstream::Message>> {
        let mut batch = batch?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            messages.push(message.map_err(|error| anyhow!(error))?);
        }
        Ok(messages)
    }

    inner.check_connected()?;
    if max == 0 {
        return Ok(Vec::new());
    }
    let limit = wait + inner.options.request_timeout;
    inner
        .timed("fetch messages", limit, async {
            let mut messages = drain(consumer.fetch().max_messages(max).messages().await).await?;
            if messages.is_empty() && !wait.is_zero() {
                messages = drain(
                    consumer
                        .batch()
                        .max_messages(1)
                        .expires(wait)
                        .messages()
                        .await,
                )
                .await?;
                if !messages.is_empty() && max > 1 {
                    messages.extend(
                        drain(consumer.fetch().max_messages(max - 1).messages().await).await?,
                    );
                }
            }
            Ok(messages)
        })
        .await
}
