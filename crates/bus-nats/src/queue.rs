//! Work queues: durable pull consumers with explicit acks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::{AckKind, Acker};
use async_trait::async_trait;
use bytes::Bytes;
use tiffin_bus::api::{
    AckError, QueueMessage, QueueReceiver, QueueSpec, ReceiveError, Settle, matches_any,
};
use tiffin_bus::envelope::Envelope;

use crate::headers::{self, DeadLetter};
use crate::{Inner, pull};

/// A work-queue member: one pull consumer per filter subject of the group.
pub(crate) struct NatsQueue {
    inner: Arc<Inner>,
    group: String,
    patterns: Vec<String>,
    consumers: Vec<PullConsumer>,
    /// The consumer that the next fetch pulls from first, so that one busy pattern does
    /// not starve the others.
    next: usize,
}

impl fmt::Debug for NatsQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsQueue")
            .field("group", &self.group)
            .field("patterns", &self.patterns)
            .field("consumers", &self.consumers.len())
            .finish_non_exhaustive()
    }
}

impl NatsQueue {
    /// Creates or reuses the group's consumers.
    pub(crate) async fn open(inner: Arc<Inner>, spec: &QueueSpec) -> anyhow::Result<Self> {
        inner.check_connected()?;
        check_name(&spec.group)?;
        let filters = filters(&inner.options.subject_prefix, &spec.event_types);
        let stream = inner
            .jetstream
            .get_stream_no_info(&inner.options.stream)
            .await
            .with_context(|| format!("failed to open stream {}", inner.options.stream))?;

        let mut consumers = Vec::with_capacity(filters.len());
        for (index, filter) in filters.iter().enumerate() {
            let name = if filters.len() == 1 {
                spec.group.clone()
            } else {
                format!("{}_{index}", spec.group)
            };
            let config = pull::Config {
                durable_name: Some(name.clone()),
                // The bus contract has a queue collect the events published from its
                // creation on. Older events are for stream readers.
                deliver_policy: DeliverPolicy::New,
                ack_policy: AckPolicy::Explicit,
                ack_wait: spec.lease,
                max_deliver: inner.options.max_deliver,
                filter_subject: filter.clone(),
                ..Default::default()
            };
            let mut consumer = stream
                .get_or_create_consumer(&name, config)
                .await
                .with_context(|| format!("failed to create consumer {name} on {filter}"))?;
            let info = consumer
                .info()
                .await
                .with_context(|| format!("failed to read consumer {name}"))?;
            if info.config.filter_subject != *filter {
                anyhow::bail!(
                    "consumer {name} exists with filter subject {:?} instead of {filter:?}; delete the consumer or use another group name",
                    info.config.filter_subject
                );
            }
            consumers.push(consumer);
        }
        tracing::debug!(group = %spec.group, ?filters, "queue consumers ready");

        Ok(Self {
            inner,
            group: spec.group.clone(),
            patterns: spec.event_types.clone(),
            consumers,
            next: 0,
        })
    }

    /// Turns a delivery into a bus message, or settles it on the spot when it is not
    /// one: a message of a type the group does not bind is acked, and one whose
    /// payload is not an envelope is dead-lettered.
    async fn admit(
        &self,
        message: async_nats::jetstream::Message,
    ) -> anyhow::Result<Option<QueueMessage>> {
        let (attempt, sequence) = {
            let info = message.info().map_err(|error| anyhow!(error))?;
            (
                u32::try_from(info.delivered).unwrap_or(u32::MAX),
                info.stream_sequence,
            )
        };
        let (message, acker) = message.split();
        let settle = NatsSettle {
            inner: self.inner.clone(),
            group: self.group.clone(),
            acker,
            payload: message.payload.clone(),
            headers: message.headers.clone(),
            sequence,
            attempt,
        };

        let envelope = match Envelope::from_bytes(&message.payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                let reason = format!("invalid envelope on {}: {error}", message.subject);
                tracing::error!(group = %self.group, sequence, reason, "dead-lettering a message that is not an event");
                settle.dead_letter(&reason).await.map_err(|e| e.0)?;
                return Ok(None);
            }
        };
        if !matches_any(&self.patterns, &envelope.event_type) {
            settle.ack().await.map_err(|e| e.0)?;
            return Ok(None);
        }
        tracing::trace!(group = %self.group, event_id = %envelope.id, attempt, "message fetched");
        Ok(Some(QueueMessage::new(envelope, attempt, Box::new(settle))))
    }
}

#[async_trait]
impl QueueReceiver for NatsQueue {
    async fn fetch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<QueueMessage>, ReceiveError> {
        let count = self.consumers.len();
        let start = self.next;
        self.next = (self.next + 1) % count;
        let order: Vec<usize> = (0..count).map(|i| (start + i) % count).collect();

        // Take what is ready from each consumer in turn.
        let mut delivered = Vec::new();
        for &index in &order {
            let room = max.saturating_sub(delivered.len());
            if room == 0 {
                break;
            }
            delivered.extend(
                pull(&self.inner, &self.consumers[index], room, Duration::ZERO)
                    .await
                    .map_err(ReceiveError)?,
            );
        }

        // Nothing ready: wait on up to `max` consumers at once, one message each.
        if delivered.is_empty() && !wait.is_zero() {
            let waits = order
                .iter()
                .take(max)
                .map(|&index| pull(&self.inner, &self.consumers[index], 1, wait));
            for batch in futures::future::join_all(waits).await {
                delivered.extend(batch.map_err(ReceiveError)?);
            }
        }

        let mut messages = Vec::with_capacity(delivered.len());
        for message in delivered {
            if let Some(message) = self.admit(message).await.map_err(ReceiveError)? {
                messages.push(message);
            }
        }
        Ok(messages)
    }
}

/// Returns the filter subjects of `patterns`. A pattern that NATS wildcards cannot express
/// widens the filter to every event, and the receiver drops the rest by type.
fn filters(prefix: &str, patterns: &[String]) -> Vec<String> {
    let mut filters = Vec::new();
    for pattern in patterns {
        match headers::filter_subject(prefix, pattern) {
            Some(filter) if !filters.contains(&filter) => filters.push(filter),
            Some(_) => {}
            None => return vec![format!("{prefix}.>")],
        }
    }
    if filters.is_empty() {
        filters.push(format!("{prefix}.>"));
    }
    filters
}

/// Checks that `group` can name a JetStream consumer.
pub(crate) fn check_name(group: &str) -> anyhow::Result<()> {
    let valid = !group.is_empty()
        && group.chars().all(|c| {
            !c.is_whitespace() && !c.is_control() && !matches!(c, '.' | '*' | '>' | '/' | '\\')
        });
    if valid {
        Ok(())
    } else {
        Err(anyhow!(
            "invalid group name {group:?}: a JetStream consumer name must be non-empty without whitespace, '.', '*', '>', '/' or '\\'"
        ))
    }
}

/// Settles one delivery through its ack subject.
struct NatsSettle {
    inner: Arc<Inner>,
    group: String,
    acker: Acker,
    payload: Bytes,
    headers: Option<HeaderMap>,
    sequence: u64,
    attempt: u32,
}

impl fmt::Debug for NatsSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSettle")
            .field("group", &self.group)
            .field("sequence", &self.sequence)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl NatsSettle {
    /// Sends `kind` and waits for the server to confirm it, so that a lost
    /// connection is reported instead of silently dropping the ack.
    async fn send(&self, kind: AckKind, action: &str) -> Result<(), AckError> {
        self.inner.check_connected().map_err(AckError)?;
        self.inner
            .timed(action, self.inner.options.request_timeout, async {
                self.acker
                    .double_ack_with(kind)
                    .await
                    .map_err(|error| anyhow!(error))
            })
            .await
            .map_err(|error| {
                AckError(error.context(format!(
                    "failed to {action} message {} of group {}",
                    self.sequence, self.group
                )))
            })
    }
}

#[async_trait]
impl Settle for NatsSettle {
    async fn ack(&self) -> Result<(), AckError> {
        self.send(AckKind::Ack, "ack").await
    }

    async fn nack(&self, delay: Duration, reason: &str) -> Result<(), AckError> {
        tracing::trace!(group = %self.group, sequence = self.sequence, reason, "nacking message");
        self.send(AckKind::Nak(Some(delay)), "nack").await
    }

    async fn dead_letter(&self, reason: &str) -> Result<(), AckError> {
        publish_dead_letter(
            &self.inner,
            self.payload.clone(),
            self.headers.as_ref(),
            &DeadLetter {
                group: &self.group,
                sequence: self.sequence,
                attempts: self.attempt,
                reason,
            },
        )
        .await
        .map_err(AckError)?;
        self.send(AckKind::Term, "terminate").await
    }
}

/// Publishes a dead letter to `<prefix>-dead.<group>` and waits for it to be stored.
pub(crate) async fn publish_dead_letter(
    inner: &Inner,
    payload: Bytes,
    original: Option<&HeaderMap>,
    dead: &DeadLetter<'_>,
) -> anyhow::Result<()> {
    inner.check_connected()?;
    let subject = inner.options.dead_subject(dead.group);
    let message = headers::dead_message(payload, original, dead);
    inner
        .timed(
            "publish a dead letter",
            inner.options.request_timeout,
            async {
                let ack = inner
                    .jetstream
                    .send_publish(subject.clone(), message)
                    .await?;
                ack.await?;
                Ok(())
            },
        )
        .await
        .with_context(|| {
            format!(
                "failed to store dead letter of message {} on {subject}",
                dead.sequence
            )
        })
}
