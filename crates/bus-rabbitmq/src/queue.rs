//! Work-queue receivers and how their messages are settled.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use async_trait::async_trait;
use futures::{FutureExt as _, StreamExt as _};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueBindOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, BasicProperties, Channel, Consumer};
use tiffin_bus::Envelope;
use tiffin_bus::api::{AckError, QueueMessage, QueueReceiver, QueueSpec, ReceiveError, Settle};

use crate::headers::{self, ATTEMPTS, DEAD_LETTER_REASON, LAST_ERROR};
use crate::{Outgoing, Shared, WorkQueueType, durable, long, queue_type};

/// The queues of one work-queue group.
#[derive(Debug, Clone)]
pub(crate) struct GroupQueues {
    pub(crate) main: String,
    pub(crate) retry: String,
    pub(crate) dead: String,
}

impl GroupQueues {
    pub(crate) fn new(group: &str) -> Self {
        Self {
            main: group.to_owned(),
            retry: format!("{group}.retry"),
            dead: format!("{group}.dead"),
        }
    }
}

/// Translates bus event type patterns to AMQP topic binding keys.
///
/// A topic binding matches whole dot-separated words, so only a `*` that stands
/// for whole words can be expressed: `order.*` becomes `order.#` and `*` becomes
/// `#`.
pub(crate) fn binding_keys(patterns: &[String]) -> anyhow::Result<Vec<String>> {
    patterns
        .iter()
        .map(|pattern| {
            if pattern == "*" {
                return Ok("#".to_owned());
            }
            if let Some(prefix) = pattern.strip_suffix(".*") {
                if prefix.contains(['*', '#']) {
                    bail!("invalid event type pattern {pattern:?}: only a trailing `*` is allowed");
                }
                return Ok(format!("{prefix}.#"));
            }
            if pattern.contains(['*', '#']) {
                bail!(
                    "invalid event type pattern {pattern:?}: RabbitMQ matches whole words, so write a trailing `*` after a dot, as in `order.*`"
                );
            }
            Ok(pattern.clone())
        })
        .collect()
}

/// Describes a failed declaration of a work queue, whose usual cause is a queue
/// declared before with another type or other arguments.
fn declare_failed(queue: &str, kind: WorkQueueType) -> String {
    format!(
        "failed to declare queue {queue} as a {} queue; a queue keeps the type and arguments it was first declared with, so use the queue-type it has or delete it (rabbitmqctl delete_queue {queue})",
        kind.as_str()
    )
}

/// Declares the dead-letter, retry and main queues of a group and binds the main
/// queue to `patterns`.
async fn declare(
    shared: &Shared,
    channel: &Channel,
    queues: &GroupQueues,
    binding_keys: &[String],
) -> anyhow::Result<()> {
    let kind = shared.options().work_queues;
    channel
        .queue_declare(
            queues.dead.as_str().into(),
            durable(),
            queue_type(kind.as_str()),
        )
        .await
        .with_context(|| declare_failed(&queues.dead, kind))?;

    // Expired messages go back to the main queue through the default exchange.
    let mut retry = queue_type("classic");
    retry.insert("x-dead-letter-exchange".into(), headers::string(""));
    retry.insert(
        "x-dead-letter-routing-key".into(),
        headers::string(&queues.main),
    );
    channel
        .queue_declare(queues.retry.as_str().into(), durable(), retry)
        .await
        .with_context(|| format!("failed to declare queue {}", queues.retry))?;

    let mut main = queue_type(kind.as_str());
    if kind == WorkQueueType::Quorum {
        main.insert(
            "x-delivery-limit".into(),
            long(i64::from(shared.options().delivery_limit)),
        );
    }
    main.insert("x-dead-letter-exchange".into(), headers::string(""));
    main.insert(
        "x-dead-letter-routing-key".into(),
        headers::string(&queues.dead),
    );
    channel
        .queue_declare(queues.main.as_str().into(), durable(), main)
        .await
        .with_context(|| declare_failed(&queues.main, kind))?;
    for key in binding_keys {
        channel
            .queue_bind(
                queues.main.as_str().into(),
                shared.options().exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("failed to bind queue {} to {key}", queues.main))?;
    }
    Ok(())
}

/// A member of a work-queue group: one channel with its own prefetch and one
/// consumer on the group's quorum queue.
///
/// NOTE: `QueueSpec::lease` is not enforced. RabbitMQ returns an unsettled message
/// when its channel or connection closes, not after a per-message timeout.
pub(crate) struct RabbitQueue {
    shared: Arc<Shared>,
    queues: GroupQueues,
    binding_keys: Vec<String>,
    live: Option<(Channel, Consumer)>,
}

impl fmt::Debug for RabbitQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitQueue")
            .field("queue", &self.queues.main)
            .field("consuming", &self.live.is_some())
            .finish()
    }
}

impl RabbitQueue {
    pub(crate) async fn open(shared: Arc<Shared>, spec: &QueueSpec) -> anyhow::Result<Self> {
        let mut receiver = Self {
            binding_keys: binding_keys(&spec.event_types)?,
            queues: GroupQueues::new(&spec.group),
            shared,
            live: None,
        };
        receiver.consume().await?;
        tracing::debug!(queue = %receiver.queues.main, bindings = ?receiver.binding_keys, "work queue subscribed");
        Ok(receiver)
    }

    /// Declares the group's queues on a new channel and starts consuming.
    async fn consume(&mut self) -> anyhow::Result<()> {
        self.live = None;
        let channel = self.shared.channel().await?;
        declare(&self.shared, &channel, &self.queues, &self.binding_keys).await?;
        channel
            .basic_qos(self.shared.options().prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.queues.main.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("failed to consume queue {}", self.queues.main))?;
        self.live = Some((channel, consumer));
        Ok(())
    }

    /// Turns a delivery into a message, or dead-letters it when its body is not an
    /// envelope (only a foreign publisher can cause that).
    async fn message(&self, delivery: Delivery) -> anyhow::Result<Option<QueueMessage>> {
        let attempt = headers::attempt(&delivery.properties, delivery.redelivered);
        let settle = RabbitSettle {
            shared: self.shared.clone(),
            queues: self.queues.clone(),
            acker: delivery.acker,
            properties: delivery.properties,
            payload: delivery.data,
            attempt,
        };
        match Envelope::from_bytes(&settle.payload) {
            Ok(envelope) => Ok(Some(QueueMessage::new(envelope, attempt, Box::new(settle)))),
            Err(error) => {
                tracing::error!(queue = %self.queues.main, error = %error, "message body is not a CloudEvents envelope");
                settle
                    .dead_letter(&format!("body is not a CloudEvents envelope: {error}"))
                    .await?;
                Ok(None)
            }
        }
    }
}

#[async_trait]
impl QueueReceiver for RabbitQueue {
    async fn fetch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<QueueMessage>, ReceiveError> {
        if !self
            .live
            .as_ref()
            .is_some_and(|(channel, _)| channel.status().connected())
        {
            self.consume().await.map_err(ReceiveError)?;
        }
        let (_, consumer) = self.live.as_mut().expect("consume sets live");

        let mut deliveries = Vec::new();
        match tokio::time::timeout(wait, consumer.next()).await {
            Err(_elapsed) => return Ok(Vec::new()),
            Ok(Some(Ok(delivery))) => deliveries.push(delivery),
            Ok(Some(Err(error))) => {
                self.live = None;
                return Err(ReceiveError(
                    anyhow!(error).context(format!("failed to consume queue {}", self.queues.main)),
                ));
            }
            Ok(None) => {
                self.live = None;
                return Err(ReceiveError(anyhow!(
                    "the broker cancelled the consumer of queue {}; it was deleted or its node went down",
                    self.queues.main
                )));
            }
        }
        // Take what the prefetch already brought, without waiting for more.
        while deliveries.len() < max {
            match consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => deliveries.push(delivery),
                _ => break,
            }
        }

        let mut messages = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            if let Some(message) = self.message(delivery).await.map_err(ReceiveError)? {
                tracing::trace!(queue = %self.queues.main, event_id = %message.envelope.id, attempt = message.attempt, "fetched message");
                messages.push(message);
            }
        }
        Ok(messages)
    }
}

/// Settles one delivery on the channel it came from.
struct RabbitSettle {
    shared: Arc<Shared>,
    queues: GroupQueues,
    acker: Acker,
    properties: BasicProperties,
    payload: Vec<u8>,
    attempt: u32,
}

impl fmt::Debug for RabbitSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitSettle")
            .field("queue", &self.queues.main)
            .field("message_id", &self.properties.message_id())
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl RabbitSettle {
    /// Publishes a copy of the message to `queue` with `extra` headers, then acks
    /// the original. A failure between the two leaves both, and the consumer's
    /// inbox absorbs the duplicate.
    async fn move_to(
        &self,
        queue: &str,
        properties: BasicProperties,
        label: &str,
    ) -> anyhow::Result<()> {
        self.shared
            .publish(vec![Outgoing {
                exchange: String::new(),
                routing_key: queue.to_owned(),
                payload: self.payload.clone(),
                properties,
                label: format!("{label} of message {:?}", self.properties.message_id()),
            }])
            .await?;
        self.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }
}

#[async_trait]
impl Settle for RabbitSettle {
    async fn ack(&self) -> Result<(), AckError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| AckError(e.into()))?;
        Ok(())
    }

    /// Requeues at once for a zero delay. Otherwise the message waits in the
    /// group's retry queue with a per-message TTL of `delay` and then expires back
    /// into the group's queue.
    ///
    /// NOTE: RabbitMQ expires messages only from the head of a queue, so a message
    /// with a short delay behind one with a longer delay comes back late, never
    /// early.
    async fn nack(&self, delay: Duration, reason: &str) -> Result<(), AckError> {
        if delay.is_zero() {
            self.acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
                .map_err(|e| AckError(e.into()))?;
            return Ok(());
        }
        let properties = headers::republished(
            &self.properties,
            &[
                (ATTEMPTS, long(i64::from(self.attempt))),
                (LAST_ERROR, headers::string(reason)),
            ],
        )
        .with_expiration(delay.as_millis().max(1).to_string().into());
        self.move_to(&self.queues.retry, properties, "retry")
            .await
            .map_err(AckError)
    }

    async fn dead_letter(&self, reason: &str) -> Result<(), AckError> {
        let properties = headers::republished(
            &self.properties,
            &[
                (ATTEMPTS, long(i64::from(self.attempt))),
                (DEAD_LETTER_REASON, headers::string(reason)),
            ],
        );
        self.move_to(&self.queues.dead, properties, "dead letter")
            .await
            .map_err(AckError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_binding_keys() {
        let patterns = vec!["order.*".to_owned(), "menu.item.upserted".to_owned()];

        let keys = binding_keys(&patterns).expect("valid patterns");

        assert_eq!(keys, vec!["order.#", "menu.item.upserted"]);
    }

    #[test]
    fn partial_word_pattern_is_rejected() {
        let patterns = vec!["order*".to_owned()];

        let error = binding_keys(&patterns).expect_err("not expressible");

        assert!(error.to_string().contains("order.*"));
    }
}
