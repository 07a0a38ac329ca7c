//! Work-queue members of the embedded bus.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use tiffin_runtime::time::now_millis;

use super::EmbeddedBus;
use crate::api::{AckError, QueueMessage, QueueReceiver, QueueSpec, ReceiveError, Settle};
use crate::envelope::Envelope;

/// How often a waiting member looks again without a publish, so that nacked
/// messages become visible soon after their delay.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

pub(super) struct EmbeddedQueue {
    bus: EmbeddedBus,
    queue: String,
    lease: Duration,
}

impl fmt::Debug for EmbeddedQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedQueue")
            .field("queue", &self.queue)
            .finish()
    }
}

impl EmbeddedQueue {
    pub(super) fn new(bus: EmbeddedBus, spec: &QueueSpec) -> Self {
        Self {
            bus,
            queue: spec.group.clone(),
            lease: spec.lease,
        }
    }

    /// Leases up to `max` ready messages in one transaction.
    async fn claim(&self, max: usize) -> anyhow::Result<Vec<QueueMessage>> {
        let now = now_millis();
        let lease_until = now + i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 2);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);

        // Both statements select the same rows because the transaction holds the
        // write lock from its first statement (BEGIN IMMEDIATE).
        let mut tx = self.bus.inner.db.begin_write().await?;
        let rows = sqlx::query(
            "SELECT q.seq, q.attempts, e.envelope FROM queue_messages q JOIN events e ON e.seq = q.seq \
             WHERE q.queue = $1 AND q.available_at <= $2 AND (q.leased_until IS NULL OR q.leased_until <= $2) \
             ORDER BY q.seq LIMIT $3",
        )
        .bind(&self.queue)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        sqlx::query(
            "UPDATE queue_messages SET attempts = attempts + 1, leased_until = $3 \
             WHERE queue = $1 AND seq IN (SELECT seq FROM queue_messages \
               WHERE queue = $1 AND available_at <= $2 AND (leased_until IS NULL OR leased_until <= $2) \
               ORDER BY seq LIMIT $4)",
        )
        .bind(&self.queue)
        .bind(now)
        .bind(lease_until)
        .bind(limit)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;

        let mut messages = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.try_get("seq")?;
            let attempts: i64 = row.try_get("attempts")?;
            let bytes: Vec<u8> = row.try_get("envelope")?;
            let settle = EmbeddedSettle {
                bus: self.bus.clone(),
                queue: self.queue.clone(),
                seq,
            };
            match Envelope::from_bytes(&bytes) {
                Ok(envelope) => messages.push(QueueMessage::new(
                    envelope,
                    u32::try_from(attempts + 1).unwrap_or(u32::MAX),
                    Box::new(settle),
                )),
                Err(error) => {
                    // Only this crate writes the log, so this means a corrupted file;
                    // keep the bytes in the dead-letter table rather than loop on them.
                    tracing::error!(queue = %self.queue, seq, error = %error, "stored event does not parse");
                    settle
                        .dead_letter(&format!("stored envelope does not parse: {error}"))
                        .await?;
                }
            }
        }
        Ok(messages)
    }
}

#[async_trait]
impl QueueReceiver for EmbeddedQueue {
    async fn fetch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<QueueMessage>, ReceiveError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut published = self.bus.inner.published.subscribe();
        loop {
            published.mark_unchanged();
            let messages = self.claim(max).await.map_err(ReceiveError)?;
            if !messages.is_empty() {
                return Ok(messages);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(messages);
            }
            let nap = (deadline - now).min(POLL_INTERVAL);
            let _ = tokio::time::timeout(nap, published.changed()).await;
        }
    }
}

#[derive(Debug)]
struct EmbeddedSettle {
    bus: EmbeddedBus,
    queue: String,
    seq: i64,
}

#[async_trait]
impl Settle for EmbeddedSettle {
    async fn ack(&self) -> Result<(), AckError> {
        self.bus
            .inner
            .acker
            .ack(&self.queue, self.seq)
            .await
            .map_err(AckError)
    }

    async fn nack(&self, delay: Duration, reason: &str) -> Result<(), AckError> {
        let available_at = now_millis() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
        sqlx::query(
            "UPDATE queue_messages SET leased_until = NULL, available_at = $3, last_error = $4 \
             WHERE queue = $1 AND seq = $2",
        )
        .bind(&self.queue)
        .bind(self.seq)
        .bind(available_at)
        .bind(reason)
        .execute(self.bus.inner.db.write_pool())
        .await
        .map_err(|e| AckError(e.into()))?;
        Ok(())
    }

    async fn dead_letter(&self, reason: &str) -> Result<(), AckError> {
        let result: anyhow::Result<()> = async {
            let mut tx = self.bus.inner.db.begin_write().await?;
            sqlx::query(
                "INSERT INTO dead_letters (queue, seq, event_id, attempts, reason, dead_at) \
                 SELECT q.queue, q.seq, e.id, q.attempts, $3, $4 FROM queue_messages q \
                 JOIN events e ON e.seq = q.seq WHERE q.queue = $1 AND q.seq = $2 \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&self.queue)
            .bind(self.seq)
            .bind(reason)
            .bind(now_millis())
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM queue_messages WHERE queue = $1 AND seq = $2")
                .bind(&self.queue)
                .bind(self.seq)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        result.map_err(AckError)
    }
}
