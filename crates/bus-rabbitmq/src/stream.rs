//! Stream readers and their committed offsets.
//!
//! A reader consumes the stream queue of its event family with `x-stream-offset`
//! set from the group's committed offset, or from the spec's start position when
//! the group has committed nothing. It filters event types within the family
//! itself, because the stream keeps every event of the family.
//!
//! The committed offset of group `G` lives in `G.offset`, a durable classic queue
//! with `x-max-length` 1, so it keeps only the latest commit, written as the stream
//! name, a space and the offset. A reader reads it with `basic.get` and returns it
//! at once. A commit that names another stream, or only a number (as written when
//! one stream kept every family), does not apply, and the group starts at the
//! spec's start position. Two members of one group that commit at the same moment
//! race, and the later commit wins, which at worst makes the group read some events
//! again.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use async_trait::async_trait;
use futures::{FutureExt as _, StreamExt as _};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer};
use tiffin_bus::Envelope;
use tiffin_bus::api::{
    AckError, ReceiveError, StartPosition, StreamMessage, StreamReceiver, StreamSpec, matches_any,
};
use tokio::time::Instant;

use crate::headers::{self, DEAD_LETTER_REASON, PUBLISHED_MS, STREAM_OFFSET};
use crate::{Outgoing, Shared, declare_stream, durable, family, long, queue_type, stream_name};

/// A reader of the stream queue for one group.
pub(crate) struct RabbitStream {
    shared: Arc<Shared>,
    /// The stream queue of the family.
    stream: String,
    /// The event family the group reads.
    family: String,
    group: String,
    patterns: Vec<String>,
    offset_queue: String,
    dead_queue: String,
    start: StartPosition,
    /// The group's committed offset when the reader opened, then its own commits.
    committed: Option<u64>,
    /// The offset of the last delivery read, matching or not.
    last: Option<u64>,
    /// For a start at a time: events published before it are skipped until the
    /// first one at or after it, because the broker seeks to whole seconds and
    /// chunks.
    not_before_ms: Option<i64>,
    live: Option<(Channel, Consumer)>,
}

impl fmt::Debug for RabbitStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitStream")
            .field("group", &self.group)
            .field("committed", &self.committed)
            .field("last", &self.last)
            .finish()
    }
}

impl RabbitStream {
    pub(crate) async fn open(shared: Arc<Shared>, spec: &StreamSpec) -> anyhow::Result<Self> {
        let prefix = shared.options().stream.clone().ok_or_else(|| {
            anyhow!("this bus has no stream queue; set Options::stream to read the event stream")
        })?;
        let family = spec_family(&spec.event_types)?;
        let mut reader = Self {
            stream: stream_name(&prefix, &family),
            family,
            group: spec.group.clone(),
            patterns: spec.event_types.clone(),
            offset_queue: format!("{}.offset", spec.group),
            dead_queue: format!("{}.dead", spec.group),
            start: spec.start,
            committed: None,
            last: None,
            not_before_ms: match spec.start {
                StartPosition::Time(millis) => Some(millis),
                _ => None,
            },
            live: None,
            shared,
        };
        reader.committed = reader.read_committed().await?;
        if reader.committed.is_some() {
            reader.not_before_ms = None;
        }
        reader.consume().await?;
        tracing::debug!(group = %reader.group, committed = ?reader.committed, start = ?reader.start, "stream reader opened");
        Ok(reader)
    }

    /// Declares the family's stream and the group's offset and dead-letter queues,
    /// and reads the committed offset.
    async fn read_committed(&self) -> anyhow::Result<Option<u64>> {
        let channel = self.shared.channel().await?;
        let options = self.shared.options();
        if let Some(prefix) = &options.stream {
            declare_stream(&channel, &options.exchange, prefix, &self.family).await?;
        }
        channel
            .queue_declare(
                self.dead_queue.as_str().into(),
                durable(),
                queue_type("quorum"),
            )
            .await
            .with_context(|| format!("failed to declare queue {}", self.dead_queue))?;
        let mut arguments = queue_type("classic");
        arguments.insert("x-max-length".into(), long(1));
        channel
            .queue_declare(self.offset_queue.as_str().into(), durable(), arguments)
            .await
            .with_context(|| format!("failed to declare queue {}", self.offset_queue))?;

        let got = channel
            .basic_get(
                self.offset_queue.as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .with_context(|| format!("failed to read queue {}", self.offset_queue))?;
        let committed = match got {
            None => None,
            Some(message) => {
                let text = String::from_utf8_lossy(&message.delivery.data).into_owned();
                message
                    .delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await?;
                self.parse_commit(&text)?
            }
        };
        let _ = channel.close(200, "OK".into()).await;
        Ok(committed)
    }

    /// Returns the offset in a commit of this group's stream, or `None` for a
    /// commit of another stream.
    fn parse_commit(&self, text: &str) -> anyhow::Result<Option<u64>> {
        let text = text.trim();
        let (stream, offset) = text.split_once(' ').unwrap_or(("", text));
        let offset = offset.parse::<u64>().with_context(|| {
            format!(
                "invalid committed offset {text:?} in queue {}",
                self.offset_queue
            )
        })?;
        if stream != self.stream {
            tracing::warn!(group = %self.group, commit = %text, stream = %self.stream, start = ?self.start, "the committed offset is of another stream; reading from the start position");
            return Ok(None);
        }
        Ok(Some(offset))
    }

    /// Returns where the consumer attaches: after the last read event, else after the
    /// committed offset, else at the start position.
    fn attach_at(&self) -> AMQPValue {
        let next = self.last.or(self.committed).map(|offset| offset + 1);
        if let Some(next) = next {
            return long(i64::try_from(next).unwrap_or(i64::MAX));
        }
        match self.start {
            StartPosition::Beginning => headers::string("first"),
            // NOTE: a reader that reconnects before it read any event attaches at
            // `next` again, so it misses the events published while it was away.
            StartPosition::Latest => headers::string("next"),
            StartPosition::After(offset) => {
                long(i64::try_from(offset.saturating_add(1)).unwrap_or(i64::MAX))
            }
            // The broker seeks to a chunk at or after a whole second; start a second
            // early and skip what precedes the requested time.
            StartPosition::Time(millis) => {
                AMQPValue::Timestamp(u64::try_from(millis / 1000 - 1).unwrap_or(0))
            }
        }
    }

    async fn consume(&mut self) -> anyhow::Result<()> {
        self.live = None;
        let channel = self.shared.channel().await?;
        // The broker requires a prefetch for stream consumers.
        channel
            .basic_qos(self.shared.options().prefetch, BasicQosOptions::default())
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert(STREAM_OFFSET.into(), self.attach_at());
        let consumer = channel
            .basic_consume(
                self.stream.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await
            .with_context(|| format!("failed to consume stream queue {}", self.stream))?;
        self.live = Some((channel, consumer));
        Ok(())
    }

    /// Returns the message of a delivery the group reads, or `None` for a skipped
    /// one.
    fn message(&mut self, delivery: &Delivery) -> anyhow::Result<Option<StreamMessage>> {
        let offset = headers::integer(&delivery.properties, STREAM_OFFSET)
            .and_then(|offset| u64::try_from(offset).ok())
            .ok_or_else(|| anyhow!("a delivery from stream {} has no offset", self.stream))?;
        if self.last.is_some_and(|last| offset <= last) {
            return Ok(None);
        }
        self.last = Some(offset);
        if let Some(not_before) = self.not_before_ms {
            let published = headers::integer(&delivery.properties, PUBLISHED_MS).unwrap_or(0);
            if published < not_before {
                return Ok(None);
            }
            self.not_before_ms = None;
        }
        if !matches_any(&self.patterns, delivery.routing_key.as_str()) {
            return Ok(None);
        }
        match Envelope::from_bytes(&delivery.data) {
            Ok(envelope) => Ok(Some(StreamMessage { envelope, offset })),
            Err(error) => {
                // Another publisher wrote to the exchange; the stream cannot be
                // changed, so skipping is all a reader can do.
                tracing::error!(stream = %self.stream, offset, error = %error, "skipping a stream message that is not a CloudEvents envelope");
                Ok(None)
            }
        }
    }
}

#[async_trait]
impl StreamReceiver for RabbitStream {
    async fn fetch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StreamMessage>, ReceiveError> {
        if !self
            .live
            .as_ref()
            .is_some_and(|(channel, _)| channel.status().connected())
        {
            self.consume().await.map_err(ReceiveError)?;
        }
        let deadline = Instant::now() + wait;
        let mut messages = Vec::new();
        let mut last_delivery = None;
        // Skipped deliveries not yet acked. Acking after half the prefetch window
        // returns credit before the window runs dry, with one frame per many skips.
        let mut skipped = 0_u16;
        let credit_step = (self.shared.options().prefetch / 2).max(1);

        while messages.len() < max {
            let (_, consumer) = self.live.as_mut().expect("consume sets live");
            let next = if messages.is_empty() {
                tokio::time::timeout_at(deadline, consumer.next())
                    .await
                    .ok()
            } else {
                consumer.next().now_or_never()
            };
            let delivery = match next {
                None => break,
                Some(Some(Ok(delivery))) => delivery,
                Some(Some(Err(error))) => {
                    self.live = None;
                    return Err(ReceiveError(anyhow!(error).context(format!(
                        "failed to consume stream queue {}",
                        self.stream
                    ))));
                }
                Some(None) => {
                    self.live = None;
                    return Err(ReceiveError(anyhow!(
                        "the broker cancelled the consumer of stream queue {}",
                        self.stream
                    )));
                }
            };
            if let Some(message) = self.message(&delivery).map_err(ReceiveError)? {
                messages.push(message);
                last_delivery = Some(delivery);
                continue;
            }
            // A skipped delivery (another group's event type) must return its credit
            // before the batch ends: waiting for the end would stall a reader that
            // skips a whole prefetch window until the fetch times out. An ack with
            // `multiple` covers every earlier delivery too.
            skipped += 1;
            if skipped >= credit_step {
                delivery
                    .acker
                    .ack(BasicAckOptions { multiple: true })
                    .await
                    .map_err(|e| ReceiveError(e.into()))?;
                skipped = 0;
                last_delivery = None;
            } else {
                last_delivery = Some(delivery);
            }
        }

        // Acks only return credit to a stream consumer; one for the batch will do.
        if let Some(delivery) = last_delivery {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .map_err(|e| ReceiveError(e.into()))?;
        }
        Ok(messages)
    }

    async fn commit(&mut self, offset: u64) -> Result<(), AckError> {
        self.shared
            .publish(vec![Outgoing {
                exchange: String::new(),
                routing_key: self.offset_queue.clone(),
                payload: format!("{} {offset}", self.stream).into_bytes(),
                properties: BasicProperties::default().with_delivery_mode(2),
                label: format!("offset {offset} of group {}", self.group),
            }])
            .await
            .map_err(AckError)?;
        self.committed = Some(offset);
        tracing::trace!(group = %self.group, offset, "committed stream offset");
        Ok(())
    }

    async fn dead_letter(&mut self, message: &StreamMessage, reason: &str) -> Result<(), AckError> {
        let properties = headers::republished(
            &headers::properties(&message.envelope),
            &[
                (DEAD_LETTER_REASON, headers::string(reason)),
                (
                    STREAM_OFFSET,
                    long(i64::try_from(message.offset).unwrap_or(i64::MAX)),
                ),
            ],
        );
        self.shared
            .publish(vec![Outgoing {
                exchange: String::new(),
                routing_key: self.dead_queue.clone(),
                payload: message.envelope.to_bytes(),
                properties,
                label: format!("dead letter of event {}", message.envelope.id),
            }])
            .await
            .map_err(AckError)
    }
}

/// Returns the one event family that `patterns` select.
///
/// # Errors
///
/// Fails when the patterns are empty, span families or leave the family open
/// (`*`, `order*`), naming the fix.
fn spec_family(patterns: &[String]) -> anyhow::Result<String> {
    let mut families = Vec::new();
    for pattern in patterns {
        let word = family(pattern);
        if word.is_empty() || word.contains(['*', '#']) {
            bail!(
                "event type pattern {pattern:?} selects more than one event family; on RabbitMQ each family has its own stream, so start the pattern with the family's word, as in `order.*`"
            );
        }
        if !families.contains(&word) {
            families.push(word);
        }
    }
    match families.as_slice() {
        [family] => Ok((*family).to_owned()),
        [] => bail!("a stream reader needs at least one event type pattern"),
        _ => bail!(
            "event type patterns {patterns:?} span the families {}; on RabbitMQ each family has its own stream, so open one stream reader per family",
            families.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::spec_family;

    fn patterns(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn one_family_is_read() {
        assert_eq!(
            spec_family(&patterns(&["order.*", "order.placed"])).unwrap(),
            "order"
        );
        assert_eq!(spec_family(&patterns(&["menu"])).unwrap(), "menu");
    }

    #[test]
    fn patterns_across_families_are_rejected() {
        let error = spec_family(&patterns(&["order.*", "menu.item.upserted"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("order, menu"), "{error}");
        assert!(error.contains("one stream reader per family"), "{error}");
    }

    #[test]
    fn open_family_is_rejected() {
        for open in ["*", "order*", "#"] {
            let error = spec_family(&patterns(&[open])).unwrap_err().to_string();
            assert!(error.contains(open), "{error}");
        }
        assert!(spec_family(&[]).is_err());
    }
}
