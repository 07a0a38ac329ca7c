//! Stream readers: a Kafka consumer group whose position is the next offset of the
//! one partition. Bus offsets are Kafka offsets plus one, so that offset 0 never
//! names a record and `After(n)` reads from Kafka offset `n`.

use std::time::Duration;

use async_trait::async_trait;
use tiffin_bus::api::{
    AckError, ReceiveError, StartPosition, StreamMessage, StreamReceiver, StreamSpec, matches_any,
};
use tokio::time::Instant;

use crate::KafkaBus;
use crate::group::{self, DeadLetters, Member, Seed};

/// Opens the stream subscription of `spec.group`.
pub(crate) async fn open(bus: &KafkaBus, spec: &StreamSpec) -> anyhow::Result<KafkaStream> {
    let seed = match spec.start {
        StartPosition::Beginning => Seed::Beginning,
        StartPosition::Latest => Seed::End,
        StartPosition::After(offset) => Seed::Offset(i64::try_from(offset).unwrap_or(i64::MAX)),
        StartPosition::Time(millis) => Seed::Time(millis),
    };
    let member = group::join(bus, bus.options().stream_group(&spec.group), seed).await?;
    Ok(KafkaStream {
        member,
        dead: DeadLetters::new(bus, &spec.group),
        event_types: spec.event_types.clone(),
        read_through: None,
    })
}

/// A reader of the event stream.
pub(crate) struct KafkaStream {
    member: Member,
    dead: DeadLetters,
    event_types: Vec<String>,
    read_through: Option<i64>,
}

impl std::fmt::Debug for KafkaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaStream")
            .field("group", &self.member.group)
            .field("read_through", &self.read_through)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl StreamReceiver for KafkaStream {
    async fn fetch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StreamMessage>, ReceiveError> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < max {
            let now = Instant::now();
            let until = if out.is_empty() {
                deadline
            } else {
                now + Duration::from_millis(1)
            };
            let (offset, decoded) =
                match self.member.next(until.saturating_duration_since(now)).await {
                    Ok(Some(record)) => record,
                    Ok(None) => break,
                    Err(error) if out.is_empty() => return Err(ReceiveError(error)),
                    Err(_) => break,
                };
            // After a rebalance the group re-reads from its committed offset; what
            // this reader already returned is not returned twice.
            if self.read_through.is_some_and(|through| offset <= through) {
                continue;
            }
            self.read_through = Some(offset);
            match decoded {
                Ok(envelope) if matches_any(&self.event_types, &envelope.event_type) => {
                    out.push(StreamMessage {
                        envelope,
                        offset: offset as u64 + 1,
                    });
                }
                Ok(_) => {}
                Err(record) => self
                    .dead
                    .send_raw(&record, offset)
                    .await
                    .map_err(ReceiveError)?,
            }
        }
        Ok(out)
    }

    async fn commit(&mut self, offset: u64) -> Result<(), AckError> {
        let next = i64::try_from(offset).map_err(|_| {
            AckError(anyhow::anyhow!(
                "offset {offset} is beyond what Kafka can hold"
            ))
        })?;
        self.member.commit_now(next).await.map_err(AckError)
    }

    async fn dead_letter(&mut self, message: &StreamMessage, reason: &str) -> Result<(), AckError> {
        self.dead
            .send(&message.envelope, message.offset as i64 - 1, reason)
            .await
            .map_err(AckError)
    }
}
