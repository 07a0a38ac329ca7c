//! Work queues: a Kafka consumer group plus per-message state kept by the member.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tiffin_bus::api::{
    AckError, QueueMessage, QueueReceiver, QueueSpec, ReceiveError, Settle, matches_any,
};
use tiffin_bus::envelope::Envelope;
use tokio::time::Instant;

use crate::KafkaBus;
use crate::group::{self, DeadLetters, Member, Seed};

/// Opens the work queue of `spec.group`.
pub(crate) async fn open(bus: &KafkaBus, spec: &QueueSpec) -> anyhow::Result<KafkaQueue> {
    let member = group::join(bus, bus.options().queue_group(&spec.group), Seed::End).await?;
    Ok(KafkaQueue {
        shared: Arc::new(Shared {
            member,
            dead: DeadLetters::new(bus, &spec.group),
            lease: spec.lease,
            state: Mutex::new(State::default()),
        }),
        event_types: spec.event_types.clone(),
    })
}

/// A member of a work-queue group.
pub(crate) struct KafkaQueue {
    shared: Arc<Shared>,
    event_types: Vec<String>,
}

impl std::fmt::Debug for KafkaQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaQueue")
            .field("group", &self.shared.member.group)
            .finish_non_exhaustive()
    }
}

struct Shared {
    member: Member,
    dead: DeadLetters,
    lease: Duration,
    state: Mutex<State>,
}

/// The per-message state of this member, which Kafka does not track.
///
/// NOTE: attempts are counted here only, so a message whose handler kills the
/// process every time is redelivered to the next member as attempt 1, forever.
#[derive(Default)]
struct State {
    /// Offsets handed out or waiting for redelivery, not yet settled.
    unsettled: BTreeSet<i64>,
    /// Nacked messages, in the order they become due.
    waiting: VecDeque<Waiting>,
    /// The highest offset read from the broker, to skip records read again after
    /// a rebalance.
    read_through: Option<i64>,
    /// The last position committed.
    committed: Option<i64>,
}

struct Waiting {
    due: Instant,
    offset: i64,
    envelope: Envelope,
    attempt: u32,
}

impl State {
    /// Returns the group's position: the first unsettled offset, or the offset
    /// after everything read.
    fn position(&self) -> Option<i64> {
        self.unsettled
            .first()
            .copied()
            .or(self.read_through.map(|offset| offset + 1))
    }

    fn wait(&mut self, waiting: Waiting) {
        let at = self
            .waiting
            .iter()
            .position(|other| other.due > waiting.due)
            .unwrap_or(self.waiting.len());
        self.waiting.insert(at, waiting);
    }
}

impl Shared {
    /// Commits the group's position when it moved. Commits run in the background:
    /// one that is lost only means a redelivery, which inboxes absorb.
    fn commit(&self) {
        let position = {
            let mut state = self.state.lock().expect("not poisoned");
            match state.position() {
                Some(position) if state.committed < Some(position) => {
                    state.committed = Some(position);
                    position
                }
                _ => return,
            }
        };
        if let Err(error) = self.member.commit_later(position) {
            // The partition moved to another member, which resumes from the last
            // commit that went through.
            tracing::debug!(group = %self.member.group, %error, "offset not committed");
        }
    }

    fn settle(&self, offset: i64) {
        self.state
            .lock()
            .expect("not poisoned")
            .unsettled
            .remove(&offset);
        self.commit();
    }

    fn redeliver_later(&self, offset: i64, envelope: Envelope, attempt: u32, delay: Duration) {
        self.state.lock().expect("not poisoned").wait(Waiting {
            due: Instant::now() + delay,
            offset,
            envelope,
            attempt: attempt + 1,
        });
    }
}

impl KafkaQueue {
    fn message(&self, offset: i64, envelope: Envelope, attempt: u32) -> QueueMessage {
        let settle = KafkaSettle {
            shared: Arc::clone(&self.shared),
            offset,
            envelope: envelope.clone(),
            attempt,
            settled: false.into(),
        };
        QueueMessage::new(envelope, attempt, Box::new(settle))
    }

    fn take_due(&self, max: usize, out: &mut Vec<QueueMessage>) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.shared.state.lock().expect("not poisoned");
        while out.len() < max && state.waiting.front().is_some_and(|w| w.due <= now) {
            let waiting = state.waiting.pop_front().expect("checked above");
            drop(state);
            out.push(self.message(waiting.offset, waiting.envelope, waiting.attempt));
            state = self.shared.state.lock().expect("not poisoned");
        }
        state.waiting.front().map(|w| w.due)
    }
}

#[async_trait]
impl QueueReceiver for KafkaQueue {
    async fn fetch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<QueueMessage>, ReceiveError> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let next_due = self.take_due(max, &mut out);
            if out.len() >= max {
                break;
            }
            let now = Instant::now();
            let until = if out.is_empty() {
                next_due.map_or(deadline, |due| due.min(deadline))
            } else {
                // Something is ready: take only what the client already buffered.
                now + Duration::from_millis(1)
            };
            let received = self
                .shared
                .member
                .next(until.saturating_duration_since(now))
                .await;
            let (offset, decoded) = match received {
                Ok(Some(record)) => record,
                Ok(None) if out.is_empty() && Instant::now() < deadline => continue,
                Ok(None) => break,
                Err(error) if out.is_empty() => return Err(ReceiveError(error)),
                Err(_) => break,
            };
            {
                let mut state = self.shared.state.lock().expect("not poisoned");
                if state.read_through.is_some_and(|through| offset <= through) {
                    continue;
                }
                state.read_through = Some(offset);
            }
            match decoded {
                Ok(envelope) if matches_any(&self.event_types, &envelope.event_type) => {
                    self.shared
                        .state
                        .lock()
                        .expect("not poisoned")
                        .unsettled
                        .insert(offset);
                    out.push(self.message(offset, envelope, 1));
                }
                Ok(_) => {}
                Err(record) => {
                    // Undecodable records go to the dead letters at once: no
                    // retry can make them readable.
                    self.shared
                        .dead
                        .send_raw(&record, offset)
                        .await
                        .map_err(ReceiveError)?;
                }
            }
        }
        self.shared.commit();
        Ok(out)
    }
}

/// Settles one message of a Kafka work queue.
struct KafkaSettle {
    shared: Arc<Shared>,
    offset: i64,
    envelope: Envelope,
    attempt: u32,
    settled: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for KafkaSettle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettle")
            .field("offset", &self.offset)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl KafkaSettle {
    fn mark(&self) {
        self.settled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait]
impl Settle for KafkaSettle {
    async fn ack(&self) -> Result<(), AckError> {
        self.mark();
        self.shared.settle(self.offset);
        Ok(())
    }

    async fn nack(&self, delay: Duration, _reason: &str) -> Result<(), AckError> {
        self.mark();
        self.shared
            .redeliver_later(self.offset, self.envelope.clone(), self.attempt, delay);
        Ok(())
    }

    async fn dead_letter(&self, reason: &str) -> Result<(), AckError> {
        self.shared
            .dead
            .send(&self.envelope, self.offset, reason)
            .await
            .map_err(AckError)?;
        self.mark();
        self.shared.settle(self.offset);
        Ok(())
    }
}

impl Drop for KafkaSettle {
    fn drop(&mut self) {
        // A message dropped unsettled comes back once its lease runs out, as the
        // bus contract promises.
        if !self.settled.load(std::sync::atomic::Ordering::SeqCst) {
            let envelope = self.envelope.clone();
            self.shared
                .redeliver_later(self.offset, envelope, self.attempt, self.shared.lease);
        }
    }
}
