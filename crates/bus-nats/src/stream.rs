//! Stream readers: durable pull consumers with `AckPolicy::All`, whose ack floor is
//! the group's committed offset.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::message::{AckKind, Acker};
use async_trait::async_trait;
use bytes::Bytes;
use tiffin_bus::api::{
    AckError, ReceiveError, StartPosition, StreamMessage, StreamReceiver, StreamSpec, matches_any,
};
use tiffin_bus::envelope::Envelope;

use crate::headers::{self, DeadLetter};
use crate::queue::{check_name, publish_dead_letter};
use crate::{Inner, pull};

/// One reader of a stream group. A group is meant to have one reader at a time.
pub(crate) struct NatsStream {
    inner: Arc<Inner>,
    group: String,
    patterns: Vec<String>,
    consumer: PullConsumer,
    /// Ack handles of delivered messages not yet committed, by stream sequence.
    /// Acking one acks every earlier message too (`AckPolicy::All`).
    uncommitted: BTreeMap<u64, Acker>,
    /// The highest stream sequence delivered to this reader. A redelivery at or
    /// below it (its ack wait ran out while the caller worked) is skipped, because
    /// the caller has already read it.
    last_delivered: u64,
    /// The highest offset returned to the caller and not yet committed, if any.
    returned: Option<u64>,
}

impl fmt::Debug for NatsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsStream")
            .field("group", &self.group)
            .field("patterns", &self.patterns)
            .field("last_delivered", &self.last_delivered)
            .finish_non_exhaustive()
    }
}

impl NatsStream {
    /// Opens the group's consumer, creating it at `spec.start` when the group is new.
    ///
    /// When the group exists and has messages delivered to an earlier reader but
    /// never committed, the consumer is recreated at its committed offset plus one.
    /// Otherwise those messages would come back only after their ack wait.
    pub(crate) async fn open(inner: Arc<Inner>, spec: &StreamSpec) -> anyhow::Result<Self> {
        inner.check_connected()?;
        check_name(&spec.group)?;
        let prefix = &inner.options.subject_prefix;
        let filter = match spec.event_types.as_slice() {
            [pattern] => headers::filter_subject(prefix, pattern),
            _ => None,
        }
        .unwrap_or_else(|| format!("{prefix}.>"));
        let stream = inner
            .jetstream
            .get_stream_no_info(&inner.options.stream)
            .await
            .with_context(|| format!("failed to open stream {}", inner.options.stream))?;

        let deliver_policy = match stream.consumer_info(&spec.group).await {
            Ok(info) => {
                if info.config.filter_subject != filter {
                    anyhow::bail!(
                        "stream group {} exists with filter subject {:?} instead of {filter:?}; delete its consumer or use another group name",
                        spec.group,
                        info.config.filter_subject
                    );
                }
                let committed = info.ack_floor.stream_sequence;
                if info.num_ack_pending > 0 && committed > 0 {
                    tracing::debug!(group = %spec.group, committed, "resuming stream group after its committed offset");
                    stream
                        .delete_consumer(&spec.group)
                        .await
                        .with_context(|| format!("failed to reset consumer {}", spec.group))?;
                    Some(DeliverPolicy::ByStartSequence {
                        start_sequence: committed + 1,
                    })
                } else {
                    None
                }
            }
            Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => {
                Some(start_policy(spec.start)?)
            }
            Err(error) => {
                return Err(
                    anyhow!(error).context(format!("failed to read consumer {}", spec.group))
                );
            }
        };

        let consumer = match deliver_policy {
            Some(deliver_policy) => {
                let config = pull::Config {
                    durable_name: Some(spec.group.clone()),
                    deliver_policy,
                    ack_policy: AckPolicy::All,
                    ack_wait: inner.options.stream_ack_wait,
                    filter_subject: filter.clone(),
                    ..Default::default()
                };
                stream
                    .create_consumer(config)
                    .await
                    .with_context(|| format!("failed to create consumer {}", spec.group))?
            }
            None => stream
                .get_consumer::<pull::Config>(&spec.group)
                .await
                .map_err(|error| {
                    anyhow!(error).context(format!("failed to open consumer {}", spec.group))
                })?,
        };

        Ok(Self {
            inner,
            group: spec.group.clone(),
            patterns: spec.event_types.clone(),
            consumer,
            uncommitted: BTreeMap::new(),
            last_delivered: 0,
            returned: None,
        })
    }

    /// Acks every delivered message up to `sequence`.
    async fn ack_through(&mut self, sequence: u64) -> Result<(), AckError> {
        let Some((&at, acker)) = self.uncommitted.range(..=sequence).next_back() else {
            return Ok(());
        };
        self.inner.check_connected().map_err(AckError)?;
        self.inner
            .timed("commit", self.inner.options.request_timeout, async {
                acker
                    .double_ack_with(AckKind::Ack)
                    .await
                    .map_err(|error| anyhow!(error))
            })
            .await
            .map_err(|error| {
                AckError(error.context(format!(
                    "failed to commit offset {at} of stream group {}",
                    self.group
                )))
            })?;
        self.uncommitted = self.uncommitted.split_off(&(at + 1));
        Ok(())
    }
}

/// Maps a start position to a deliver policy.
fn start_policy(start: StartPosition) -> anyhow::Result<DeliverPolicy> {
    Ok(match start {
        StartPosition::Beginning => DeliverPolicy::All,
        StartPosition::Latest => DeliverPolicy::New,
        StartPosition::After(offset) => DeliverPolicy::ByStartSequence {
            start_sequence: offset + 1,
        },
        StartPosition::Time(millis) => DeliverPolicy::ByStartTime {
            start_time: async_nats::datetime::from_nanos(i128::from(millis) * 1_000_000)
                .map_err(|error| anyhow!("invalid start time {millis} ms: {error}"))?,
        },
    })
}

#[async_trait]
impl StreamReceiver for NatsStream {
    async fn fetch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StreamMessage>, ReceiveError> {
        let delivered = pull(&self.inner, &self.consumer, max, wait)
            .await
            .map_err(ReceiveError)?;

        let mut messages = Vec::with_capacity(delivered.len());
        let mut skipped = None;
        for message in delivered {
            let sequence = message
                .info()
                .map_err(|error| ReceiveError(anyhow!(error)))?
                .stream_sequence;
            if sequence <= self.last_delivered {
                continue;
            }
            self.last_delivered = sequence;
            let (message, acker) = message.split();
            self.uncommitted.insert(sequence, acker);

            match Envelope::from_bytes(&message.payload) {
                Ok(envelope) if matches_any(&self.patterns, &envelope.event_type) => {
                    messages.push(StreamMessage {
                        envelope,
                        offset: sequence,
                    });
                }
                Ok(_) => skipped = Some(sequence),
                Err(error) => {
                    let reason = format!("invalid envelope on {}: {error}", message.subject);
                    tracing::error!(group = %self.group, sequence, reason, "dead-lettering a message that is not an event");
                    publish_dead_letter(
                        &self.inner,
                        message.payload.clone(),
                        message.headers.as_ref(),
                        &DeadLetter {
                            group: &self.group,
                            sequence,
                            attempts: 1,
                            reason: &reason,
                        },
                    )
                    .await
                    .map_err(ReceiveError)?;
                    skipped = Some(sequence);
                }
            }
        }

        match messages.last() {
            Some(last) => self.returned = Some(last.offset),
            // Only skipped messages arrived. Committing past them is safe while the
            // caller has nothing uncommitted, and it keeps them from being
            // redelivered when their ack wait runs out.
            None => {
                if let (Some(sequence), None) = (skipped, self.returned) {
                    self.ack_through(sequence)
                        .await
                        .map_err(|error| ReceiveError(error.0))?;
                }
            }
        }
        Ok(messages)
    }

    async fn commit(&mut self, offset: u64) -> Result<(), AckError> {
        self.ack_through(offset).await?;
        if self.returned.is_some_and(|returned| returned <= offset) {
            self.returned = None;
        }
        Ok(())
    }

    async fn dead_letter(&mut self, message: &StreamMessage, reason: &str) -> Result<(), AckError> {
        publish_dead_letter(
            &self.inner,
            Bytes::from(message.envelope.to_bytes()),
            None,
            &DeadLetter {
                group: &self.group,
                sequence: message.offset,
                attempts: 1,
                reason,
            },
        )
        .await
        .map_err(AckError)
    }
}
