//! Stream readers of the embedded bus.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use tiffin_runtime::time::now_millis;

use super::EmbeddedBus;
use crate::api::{
    AckError, ReceiveError, StartPosition, StreamMessage, StreamReceiver, StreamSpec, matches_any,
};
use crate::envelope::Envelope;

/// How often a caught-up reader looks again without a publish.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

pub(super) struct EmbeddedStream {
    bus: EmbeddedBus,
    group: String,
    patterns: Vec<String>,
    /// The sequence number of the last event scanned, matching or not.
    scanned: i64,
}

impl fmt::Debug for EmbeddedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStream")
            .field("group", &self.group)
            .field("scanned", &self.scanned)
            .finish()
    }
}

impl EmbeddedStream {
    pub(super) async fn open(bus: EmbeddedBus, spec: &StreamSpec) -> anyhow::Result<Self> {
        let pool = bus.inner.db.pool();
        let committed: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM stream_offsets WHERE group_name = $1")
                .bind(&spec.group)
                .fetch_optional(pool)
                .await?;
        let scanned = match (committed, spec.start) {
            (Some(last), _) => last,
            (None, StartPosition::Beginning) => 0,
            (None, StartPosition::After(offset)) => i64::try_from(offset)?,
            (None, StartPosition::Latest) => {
                sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
                    .fetch_one(pool)
                    .await?
            }
            (None, StartPosition::Time(millis)) => {
                sqlx::query_scalar(
                    "SELECT COALESCE((SELECT MIN(seq) FROM events WHERE time_ms >= $1), \
                     (SELECT COALESCE(MAX(seq), 0) + 1 FROM events)) - 1",
                )
                .bind(millis)
                .fetch_one(pool)
                .await?
            }
        };
        tracing::debug!(group = %spec.group, after = scanned, "stream reader opened");
        Ok(Self {
            bus,
            group: spec.group.clone(),
            patterns: spec.event_types.clone(),
            scanned,
        })
    }

    async fn scan(&mut self, max: usize) -> anyhow::Result<Vec<StreamMessage>> {
        let mut messages = Vec::new();
        loop {
            let rows = sqlx::query(
                "SELECT seq, event_type, envelope FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(self.scanned)
            .bind(i64::try_from(max.max(64))?)
            .fetch_all(self.bus.inner.db.pool())
            .await?;
            if rows.is_empty() {
                return Ok(messages);
            }
            for row in rows {
                let seq: i64 = row.try_get("seq")?;
                let event_type: String = row.try_get("event_type")?;
                if matches_any(&self.patterns, &event_type) {
                    let bytes: Vec<u8> = row.try_get("envelope")?;
                    messages.push(StreamMessage {
                        envelope: Envelope::from_bytes(&bytes)?,
                        offset: u64::try_from(seq)?,
                    });
                }
                self.scanned = seq;
                if messages.len() == max {
                    return Ok(messages);
                }
            }
            if !messages.is_empty() {
                return Ok(messages);
            }
        }
    }
}

#[async_trait]
impl StreamReceiver for EmbeddedStream {
    async fn fetch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StreamMessage>, ReceiveError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut published = self.bus.inner.published.subscribe();
        loop {
            published.mark_unchanged();
            let messages = self.scan(max).await.map_err(ReceiveError)?;
            let now = tokio::time::Instant::now();
            if !messages.is_empty() || now >= deadline {
                return Ok(messages);
            }
            let nap = (deadline - now).min(POLL_INTERVAL);
            let _ = tokio::time::timeout(nap, published.changed()).await;
        }
    }

    async fn commit(&mut self, offset: u64) -> Result<(), AckError> {
        let offset = i64::try_from(offset).map_err(|e| AckError(e.into()))?;
        sqlx::query(
            "INSERT INTO stream_offsets (group_name, last_seq, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (group_name) DO UPDATE SET last_seq = excluded.last_seq, updated_at = excluded.updated_at",
        )
        .bind(&self.group)
        .bind(offset)
        .bind(now_millis())
        .execute(self.bus.inner.db.write_pool())
        .await
        .map_err(|e| AckError(e.into()))?;
        Ok(())
    }

    async fn dead_letter(&mut self, message: &StreamMessage, reason: &str) -> Result<(), AckError> {
        let seq = i64::try_from(message.offset).map_err(|e| AckError(e.into()))?;
        sqlx::query(
            "INSERT INTO dead_letters (queue, seq, event_id, attempts, reason, dead_at) \
             VALUES ($1, $2, $3, 0, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&self.group)
        .bind(seq)
        .bind(&message.envelope.id)
        .bind(reason)
        .bind(now_millis())
        .execute(self.bus.inner.db.write_pool())
        .await
        .map_err(|e| AckError(e.into()))?;
        Ok(())
    }
}
