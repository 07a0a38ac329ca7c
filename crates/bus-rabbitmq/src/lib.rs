//! Tiffin's message bus on RabbitMQ (AMQP 0-9-1, RabbitMQ 3.10 or newer, no
//! plugins).
//!
//! [`connect`] returns a [`RabbitBus`] that implements [`tiffin_bus::api::Bus`], so
//! services run on it unchanged.
//!
//! # Topology
//!
//! - Events go to one durable topic exchange ([`Options::exchange`]) with the event
//!   type as routing key. Every publish is persistent, `mandatory` and waits for
//!   publisher confirms, so an event no queue takes is an error, not a silent drop.
//! - A work-queue group `G` owns three queues. `G` is a durable queue, quorum by
//!   default ([`Options::work_queues`]), bound to each event type pattern of the
//!   group (`order.*` becomes `order.#`). `G.retry`
//!   keeps nacked messages until their delay expires and then dead-letters them back
//!   to `G`. `G.dead` keeps dead letters, with the reason in the
//!   `tiffin-dead-letter-reason` header. `G` also has `x-delivery-limit`
//!   ([`Options::delivery_limit`]) and dead-letters to `G.dead` as a safety net for
//!   a message that keeps killing its consumer before the runner can settle it.
//! - The event stream is one stream queue per event family, the family being the
//!   first word of the event type: `order.placed` goes to `tiffin.stream.order`
//!   (the [`Options::stream`] prefix, a dot and the family), bound to `order.#`.
//!   RabbitMQ before 3.13 cannot filter a stream on the broker, so with one stream
//!   for every event a reader of restaurant updates would be sent, and would skip,
//!   every order event. A stream reader therefore reads one family. A publisher
//!   declares a family's stream before its first event of that family on each
//!   connection, so no event misses its stream.
//! - A stream group `G` stores its committed offset in `G.offset`, a durable classic
//!   queue of length 1, because AMQP 0-9-1 has no server-side offset tracking.
//!
//! # Reconnecting
//!
//! The bus holds one connection. When the broker closes it or it drops, publish and
//! fetch calls return errors, so the outbox relay and the consumer runner retry with
//! their own backoff. Each such call also tries to reconnect, at most once per
//! backoff step: 100 ms after the first failure, doubling up to 5 s. A new
//! connection declares the exchange again. It declares each family's stream again
//! before it publishes the family's first event. Each receiver declares its queues
//! and resumes consuming on its next fetch.
//!
//! # Layout
//!
//! - `headers`: how an envelope maps onto AMQP properties and headers.
//! - `queue`: work-queue receivers and how their messages are settled.
//! - `stream`: stream readers and their committed offsets.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod headers;
mod queue;
mod stream;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use async_trait::async_trait;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tiffin_bus::api::{
    Publisher, QueueReceiver, QueueSpec, StreamReceiver, StreamSpec, SubscribeError, Subscriber,
};
use tiffin_bus::{Envelope, PublishError};
use tiffin_runtime::db::redact;
use tokio::time::Instant;

/// Delay before the first reconnect attempt after a failure.
const RECONNECT_INITIAL: Duration = Duration::from_millis(100);
/// Upper bound of the delay between reconnect attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Names and limits of the RabbitMQ topology.
///
/// Every process of a deployment must use the same values: a queue declared again
/// with other arguments is rejected by the broker (`PRECONDITION_FAILED`).
#[derive(Debug, Clone)]
pub struct Options {
    /// The topic exchange events are published to. Default `tiffin.events`.
    pub exchange: String,
    /// The prefix of the stream queues that keep every event for stream readers,
    /// one per event family (`tiffin.stream.order`), or `None` for a deployment
    /// with work queues only, where [`Subscriber::stream`] fails and an event no
    /// group binds is unroutable. Default `tiffin.stream`.
    pub stream: Option<String>,
    /// Messages the broker sends a receiver ahead of its fetches (`basic.qos`).
    /// Default 256, as many as the largest consumer handles at once (the order
    /// service's lifecycle). A consumer that handles fewer leaves the rest
    /// waiting in its buffer for the next fetch.
    pub prefetch: u16,
    /// Deliveries after which a work queue's broker dead-letters a message that was
    /// never settled (`x-delivery-limit`, quorum queues only). Keep it above the
    /// consumers' `RetryPolicy::max_attempts`, because the runner dead-letters with
    /// a reason first. Default 20.
    pub delivery_limit: u32,
    /// The type of the work queues and their dead-letter queues. Default quorum.
    pub work_queues: WorkQueueType,
    /// The connection name shown by `rabbitmqctl list_connections`. Default
    /// `tiffin`.
    pub connection_name: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            exchange: "tiffin.events".to_owned(),
            stream: Some("tiffin.stream".to_owned()),
            prefetch: 256,
            delivery_limit: 20,
            work_queues: WorkQueueType::Quorum,
            connection_name: "tiffin".to_owned(),
        }
    }
}

/// The RabbitMQ queue type of the work queues.
///
/// Both types keep persistent messages on disk, and the broker confirms a publish
/// only after it stored the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkQueueType {
    /// Replicated queues (`x-queue-type=quorum`) with a delivery limit, which
    /// dead-letters a message that keeps killing its consumer. RabbitMQ's choice
    /// for data that must survive the loss of a node.
    Quorum,
    /// Single-node queues (`x-queue-type=classic`): less broker work per message,
    /// but no replication and no delivery limit. A message that crashes its
    /// consumer before the runner settles it is redelivered without end.
    Classic,
}

impl WorkQueueType {
    /// Returns the value of `x-queue-type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }

    /// Parses `quorum` or `classic`, or returns `None`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "quorum" => Some(Self::Quorum),
            "classic" => Some(Self::Classic),
            _ => None,
        }
    }
}

/// Connecting to the broker or declaring the shared topology failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "failed to connect to RabbitMQ at {url}: {source:#}; check that the broker is running, that the user and password are right and that the user may access the virtual host"
)]
pub struct ConnectError {
    /// The broker URL with its password hidden.
    pub url: String,
    /// The cause.
    #[source]
    pub source: anyhow::Error,
}

/// Connects to the broker at `url` (`amqp://user:password@host:port/vhost`, the
/// default virtual host `/` written `%2f`) and declares the exchange.
///
/// # Errors
///
/// Fails when the broker cannot be reached, rejects the login or the declarations.
/// Later connection losses are not fatal: see the crate documentation.
pub async fn connect(url: &str, options: Options) -> Result<RabbitBus, ConnectError> {
    let shared = Arc::new(Shared {
        url: url.to_owned(),
        redacted: redact(url),
        options,
        link: tokio::sync::Mutex::new(Link::default()),
    });
    let mut link = shared.link.lock().await;
    shared
        .open(&mut link)
        .await
        .map_err(|source| ConnectError {
            url: shared.redacted.clone(),
            source,
        })?;
    drop(link);
    tracing::info!(url = %shared.redacted, exchange = %shared.options.exchange, "connected to RabbitMQ");
    Ok(RabbitBus { shared })
}

/// A bus on one RabbitMQ connection. Cheap to clone: clones share the connection,
/// which closes when the last clone and the last receiver are dropped.
#[derive(Debug, Clone)]
pub struct RabbitBus {
    shared: Arc<Shared>,
}

impl RabbitBus {
    /// Returns how many messages wait, ready for delivery, in the queue `name` of
    /// the bus's virtual host, or `None` when the virtual host has no such queue.
    /// The queue is not declared if missing.
    ///
    /// # Errors
    ///
    /// Fails when the broker cannot be reached or rejects the check for another
    /// reason than a missing queue.
    pub async fn ready_messages(&self, name: &str) -> anyhow::Result<Option<u32>> {
        let channel = self.shared.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(name.into(), passive, FieldTable::default())
            .await;
        match declared {
            Ok(queue) => {
                let _ = channel.close(200, "OK".into()).await;
                Ok(Some(queue.message_count()))
            }
            // The broker closes the channel with 404 for a queue that does not exist.
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => {
                Err(anyhow::Error::new(error).context(format!("failed to check queue {name}")))
            }
        }
    }
}

/// Returns true when the broker replied 404 NOT_FOUND.
fn is_not_found(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

/// State shared by the bus, its receivers and their messages.
pub(crate) struct Shared {
    url: String,
    redacted: String,
    options: Options,
    link: tokio::sync::Mutex<Link>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.redacted)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The connection and the confirm-mode channel used for every publish.
#[derive(Default)]
struct Link {
    connection: Option<Connection>,
    publisher: Option<Channel>,
    /// Event families whose stream this connection declared.
    streams: HashSet<String>,
    /// Connection attempts failed in a row.
    failures: u32,
    /// No new connection attempt before this instant.
    retry_at: Option<Instant>,
}

/// A message to publish with confirms.
pub(crate) struct Outgoing {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) properties: BasicProperties,
    /// Names the message in errors, for example `event 0190…`.
    pub(crate) label: String,
}

impl Shared {
    pub(crate) fn options(&self) -> &Options {
        &self.options
    }

    /// Ensures `link` has an open connection, opening one when the backoff
    /// allows.
    async fn ensure(&self, link: &mut Link) -> anyhow::Result<()> {
        if link
            .connection
            .as_ref()
            .is_some_and(|connection| connection.status().connected())
        {
            return Ok(());
        }
        link.connection = None;
        link.publisher = None;
        if let Some(retry_at) = link.retry_at {
            let now = Instant::now();
            if now < retry_at {
                bail!(
                    "the connection to {} is down; next reconnect attempt in {} ms",
                    self.redacted,
                    (retry_at - now).as_millis()
                );
            }
        }
        match self.open(link).await {
            Ok(()) => {
                tracing::info!(url = %self.redacted, "reconnected to RabbitMQ");
                Ok(())
            }
            Err(error) => {
                link.failures += 1;
                let delay = reconnect_delay(link.failures);
                link.retry_at = Some(Instant::now() + delay);
                tracing::warn!(url = %self.redacted, error = %error, retry_in_ms = delay.as_millis() as u64, "failed to reconnect to RabbitMQ");
                Err(error.context(format!("failed to reconnect to {}", self.redacted)))
            }
        }
    }

    /// Opens a connection and declares the exchange.
    async fn open(&self, link: &mut Link) -> anyhow::Result<()> {
        let properties = ConnectionProperties::default()
            .with_connection_name(self.options.connection_name.as_str().into());
        let connection = Connection::connect(&self.url, properties).await?;
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                self.options.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("failed to declare exchange {}", self.options.exchange))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        link.connection = Some(connection);
        link.publisher = Some(channel);
        link.streams.clear();
        link.failures = 0;
        link.retry_at = None;
        Ok(())
    }

    /// Opens a new channel on the current connection, reconnecting first if needed.
    pub(crate) async fn channel(&self) -> anyhow::Result<Channel> {
        let mut link = self.link.lock().await;
        self.ensure(&mut link).await?;
        let connection = link
            .connection
            .as_ref()
            .expect("ensure leaves an open connection");
        Ok(connection.create_channel().await?)
    }

    /// Returns the confirm-mode channel, opening a new one when the broker closed
    /// the last (it closes a channel on errors such as a missing exchange).
    async fn publisher(&self) -> anyhow::Result<Channel> {
        let mut link = self.link.lock().await;
        self.ensure(&mut link).await?;
        if let Some(channel) = &link.publisher
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let connection = link
            .connection
            .as_ref()
            .expect("ensure leaves an open connection");
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        link.publisher = Some(channel.clone());
        Ok(channel)
    }

    /// Declares the stream of each of `families` that this connection has not
    /// declared yet, so that their events have a stream to go to.
    async fn declare_streams(&self, families: &[&str]) -> anyhow::Result<()> {
        let Some(prefix) = &self.options.stream else {
            return Ok(());
        };
        let mut link = self.link.lock().await;
        self.ensure(&mut link).await?;
        let missing: Vec<&str> = families
            .iter()
            .copied()
            .filter(|family| !link.streams.contains(*family))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let connection = link
            .connection
            .as_ref()
            .expect("ensure leaves an open connection");
        let channel = connection.create_channel().await?;
        for family in missing {
            declare_stream(&channel, &self.options.exchange, prefix, family).await?;
            link.streams.insert(family.to_owned());
        }
        let _ = channel.close(200, "OK".into()).await;
        Ok(())
    }

    /// Publishes `messages` in order and waits until the broker confirmed each.
    ///
    /// Messages are `mandatory`, so one that no queue takes comes back as a
    /// `basic.return` and fails the call.
    pub(crate) async fn publish(&self, messages: Vec<Outgoing>) -> anyhow::Result<()> {
        let channel = self.publisher().await?;
        // lapin hands each message's frames to its I/O thread and returns once
        // they are written. Awaited one by one, that is a hand-off between threads
        // per message, which on busy cores costs up to milliseconds each. Polled
        // once as it is made, each publish queues its frames at once and in order,
        // and the writes of the whole batch are awaited together.
        // NOTE: the order rests on lapin 4 queuing the frames before the first
        // await of `basic_publish`; the conformance case
        // `stream_keeps_per_key_order` checks it after an upgrade.
        let (payloads, messages): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .map(|mut message| (std::mem::take(&mut message.payload), message))
            .unzip();
        let mut sends = Vec::with_capacity(messages.len());
        for (payload, message) in payloads.iter().zip(messages) {
            let mut send = Box::pin(channel.basic_publish(
                message.exchange.as_str().into(),
                message.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                payload,
                message.properties,
            ));
            let polled = futures::poll!(send.as_mut());
            sends.push((
                message.label,
                message.exchange,
                message.routing_key,
                send,
                polled,
            ));
        }
        let mut pending = Vec::with_capacity(sends.len());
        for (label, exchange, routing_key, send, polled) in sends {
            let sent = match polled {
                std::task::Poll::Ready(sent) => sent,
                std::task::Poll::Pending => send.await,
            };
            let confirm = sent.with_context(|| format!("failed to send {label}"))?;
            pending.push((label, exchange, routing_key, confirm));
        }
        for (label, exchange, routing_key, confirm) in pending {
            let confirmation = confirm
                .await
                .with_context(|| format!("no confirm for {label}"))?;
            match confirmation {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                    bail!(
                        "{label} is unroutable: the broker returned it ({} {}) because no queue is bound to routing key {routing_key} on exchange {}",
                        returned.reply_code,
                        returned.reply_text,
                        display_exchange(&exchange),
                    );
                }
                Confirmation::Nack(None) => {
                    bail!("the broker did not store {label} (negative confirm)")
                }
                Confirmation::NotRequested => {
                    return Err(anyhow!(
                        "the publish channel is not in confirm mode; {label} is unconfirmed"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Returns the delay before reconnect attempt `failures + 1`: 100 ms doubling per failure,
/// capped at 5 s.
fn reconnect_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    RECONNECT_INITIAL
        .saturating_mul(1 << exponent)
        .min(RECONNECT_MAX)
}

/// Returns the family of an event type: its first word (`order` for
/// `order.placed`).
pub(crate) fn family(event_type: &str) -> &str {
    event_type.split('.').next().unwrap_or(event_type)
}

/// Returns the name of the stream queue of `family`.
pub(crate) fn stream_name(prefix: &str, family: &str) -> String {
    format!("{prefix}.{family}")
}

/// Declares the stream queue of `family` and binds it to every event type of the
/// family (`#` also matches no word, so `order.#` takes `order` too).
pub(crate) async fn declare_stream(
    channel: &Channel,
    exchange: &str,
    prefix: &str,
    family: &str,
) -> anyhow::Result<()> {
    let stream = stream_name(prefix, family);
    channel
        .queue_declare(stream.as_str().into(), durable(), queue_type("stream"))
        .await
        .with_context(|| format!("failed to declare stream queue {stream}"))?;
    channel
        .queue_bind(
            stream.as_str().into(),
            exchange.into(),
            format!("{family}.#").as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("failed to bind stream queue {stream}"))?;
    Ok(())
}

fn display_exchange(exchange: &str) -> &str {
    if exchange.is_empty() {
        "(default)"
    } else {
        exchange
    }
}

/// Options of a durable queue declaration.
pub(crate) fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Returns queue arguments with `x-queue-type` set.
pub(crate) fn queue_type(kind: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), headers::string(kind));
    arguments
}

/// Returns an integer queue argument.
pub(crate) fn long(value: i64) -> AMQPValue {
    AMQPValue::LongLongInt(value)
}

#[async_trait]
impl Publisher for RabbitBus {
    async fn publish(&self, events: &[Envelope]) -> Result<(), PublishError> {
        let mut families: Vec<&str> = Vec::new();
        for envelope in events {
            let family = family(&envelope.event_type);
            if !families.contains(&family) {
                families.push(family);
            }
        }
        self.shared
            .declare_streams(&families)
            .await
            .map_err(PublishError)?;
        let messages = events
            .iter()
            .map(|envelope| Outgoing {
                exchange: self.shared.options.exchange.clone(),
                routing_key: envelope.event_type.clone(),
                payload: envelope.to_bytes(),
                properties: headers::properties(envelope),
                label: format!("event {} of type {}", envelope.id, envelope.event_type),
            })
            .collect();
        self.shared.publish(messages).await.map_err(PublishError)?;
        tracing::trace!(count = events.len(), "published events");
        Ok(())
    }
}

#[async_trait]
impl Subscriber for RabbitBus {
    async fn queue(&self, spec: &QueueSpec) -> Result<Box<dyn QueueReceiver>, SubscribeError> {
        let receiver = queue::RabbitQueue::open(self.shared.clone(), spec)
            .await
            .map_err(|cause| SubscribeError {
                group: spec.group.clone(),
                cause,
            })?;
        Ok(Box::new(receiver))
    }

    async fn stream(&self, spec: &StreamSpec) -> Result<Box<dyn StreamReceiver>, SubscribeError> {
        let receiver = stream::RabbitStream::open(self.shared.clone(), spec)
            .await
            .map_err(|cause| SubscribeError {
                group: spec.group.clone(),
                cause,
            })?;
        Ok(Box::new(receiver))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_doubles_then_caps() {
        assert_eq!(reconnect_delay(1), Duration::from_millis(100));
        assert_eq!(reconnect_delay(2), Duration::from_millis(200));
        assert_eq!(reconnect_delay(4), Duration::from_millis(800));
        assert_eq!(reconnect_delay(30), Duration::from_secs(5));
    }
}
