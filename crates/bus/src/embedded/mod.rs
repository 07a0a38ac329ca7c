//! The embedded backend: a durable event log in one SQLite file.
//!
//! It needs nothing installed and is the default for `tiffin up`. One process owns the
//! file: on open it returns every leased message to its queue, because the members
//! that held the leases belonged to an earlier run of this process.
//!
//! - Publishing appends each event to `events` once (a repeated event id is ignored,
//!   so a relay that publishes twice after a crash stores one event), and in the same
//!   transaction adds a row to every declared queue whose bindings match.
//! - A queue member claims ready rows by setting a lease; ack deletes the row, nack
//!   clears the lease and delays the row, dead-lettering moves it to `dead_letters`.
//! - A stream reader scans `events` by sequence number and stores its group's offset
//!   in `stream_offsets`.
//!
//! Ordering: a stream reader sees events in publish order. A work queue hands out
//! ready messages in publish order, but concurrent members and redeliveries can
//! finish them out of order, as with any competing-consumer queue.

mod acks;
mod queue;
mod stream;

use std::path::Path;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use sqlx::Row;
use tiffin_runtime::db::{Database, PoolSettings};
use tiffin_runtime::time::now_millis;
use tokio::sync::watch;

use crate::api::{
    PublishError, Publisher, QueueReceiver, QueueSpec, StreamReceiver, StreamSpec, SubscribeError,
    Subscriber, matches_any,
};
use crate::envelope::Envelope;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The embedded bus. Cloning shares the file and the wake-up signal.
#[derive(Debug, Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    /// Declared queues and their bindings, mirrored from the `queues` table so that
    /// publishing does not read it every time. Only this process writes the table.
    queues: RwLock<Vec<(String, Vec<String>)>>,
    /// Bumped after every commit that adds messages, so waiting receivers fetch again.
    published: watch::Sender<u64>,
    /// Commits the acks of all queue members in groups.
    acker: acks::Acker,
}

/// A message that a queue gave up on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// The work queue or stream group.
    pub queue: String,
    /// The event's position in the log.
    pub seq: i64,
    /// The event id.
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// The aggregate id.
    pub subject: String,
    /// Deliveries made before giving up.
    pub attempts: i64,
    /// Why the consumer gave up.
    pub reason: String,
    /// When, in Unix milliseconds.
    pub dead_at: i64,
}

impl EmbeddedBus {
    /// Opens (creating if needed) the log at `path`.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be opened or migrated.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let db = Database::open(&url, &PoolSettings::default(), &MIGRATOR).await?;

        let released = sqlx::query(
            "UPDATE queue_messages SET leased_until = NULL WHERE leased_until IS NOT NULL",
        )
        .execute(db.pool())
        .await?
        .rows_affected();
        if released > 0 {
            tracing::info!(
                released,
                "returned messages leased by the previous run to their queues"
            );
        }

        let rows = sqlx::query("SELECT name, event_types FROM queues")
            .fetch_all(db.pool())
            .await?;
        let mut queues = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("name")?;
            let types: String = row.try_get("event_types")?;
            queues.push((name, serde_json::from_str(&types)?));
        }

        let (published, _) = watch::channel(0);
        Ok(Self {
            inner: Arc::new(Inner {
                acker: acks::Acker::start(db.clone()),
                db,
                queues: RwLock::new(queues),
                published,
            }),
        })
    }

    /// Lists dead letters, oldest first.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be read.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT d.queue, d.seq, d.event_id, e.event_type, e.subject, d.attempts, d.reason, d.dead_at \
             FROM dead_letters d JOIN events e ON e.seq = d.seq ORDER BY d.dead_at, d.seq",
        )
        .fetch_all(self.inner.db.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    queue: row.try_get("queue")?,
                    seq: row.try_get("seq")?,
                    event_id: row.try_get("event_id")?,
                    event_type: row.try_get("event_type")?,
                    subject: row.try_get("subject")?,
                    attempts: row.try_get("attempts")?,
                    reason: row.try_get("reason")?,
                    dead_at: row.try_get("dead_at")?,
                })
            })
            .collect()
    }

    /// Puts the dead letters of work queue `queue` back on it, with their attempt
    /// counts reset, and returns how many. Dead letters of stream groups stay.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be written.
    pub async fn replay_dead_letters(&self, queue: &str) -> anyhow::Result<u64> {
        let mut tx = self.inner.db.begin_write().await?;
        let now = now_millis();
        let moved = sqlx::query(
            "INSERT INTO queue_messages (queue, seq, attempts, available_at) \
             SELECT d.queue, d.seq, 0, $2 FROM dead_letters d JOIN queues q ON q.name = d.queue \
             WHERE d.queue = $1 ON CONFLICT DO NOTHING",
        )
        .bind(queue)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM dead_letters WHERE queue = $1 AND EXISTS (SELECT 1 FROM queues WHERE name = $1)")
            .bind(queue)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.inner.published.send_modify(|n| *n += 1);
        Ok(moved)
    }

    /// Counts the messages a work queue has yet to settle.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be read.
    pub async fn queue_depth(&self, queue: &str) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM queue_messages WHERE queue = $1")
                .bind(queue)
                .fetch_one(self.inner.db.pool())
                .await?,
        )
    }

    /// Counts the messages all work queues have yet to settle.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be read.
    pub async fn pending_messages(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM queue_messages")
            .fetch_one(self.inner.db.pool())
            .await?)
    }

    /// Counts the events in the log.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be read.
    pub async fn event_count(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(self.inner.db.pool())
            .await?)
    }

    /// Closes the file.
    pub async fn close(&self) {
        self.inner.db.close().await;
    }

    fn wake_receivers(&self) {
        self.inner.published.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[async_trait]
impl Publisher for EmbeddedBus {
    async fn publish(&self, events: &[Envelope]) -> Result<(), PublishError> {
        if events.is_empty() {
            return Ok(());
        }
        let queues = self
            .inner
            .queues
            .read()
            .expect("the queue list lock is never held across a panic")
            .clone();
        let now = now_millis();

        let result: anyhow::Result<()> = async {
            let mut tx = self.inner.db.begin_write().await?;
            for envelope in events {
                let seq: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO events (id, event_type, subject, time_ms, envelope) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING RETURNING seq",
                )
                .bind(&envelope.id)
                .bind(&envelope.event_type)
                .bind(&envelope.subject)
                .bind(now)
                .bind(envelope.to_bytes())
                .fetch_optional(&mut *tx)
                .await?;
                let Some(seq) = seq else {
                    tracing::debug!(event_id = %envelope.id, "event already in the log");
                    continue;
                };
                for (queue, patterns) in &queues {
                    if matches_any(patterns, &envelope.event_type) {
                        sqlx::query(
                            "INSERT INTO queue_messages (queue, seq, attempts, available_at) VALUES ($1, $2, 0, $3)",
                        )
                        .bind(queue)
                        .bind(seq)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
            tx.commit().await?;
            Ok(())
        }
        .await;
        result.map_err(PublishError)?;

        self.wake_receivers();
        Ok(())
    }
}

#[async_trait]
impl Subscriber for EmbeddedBus {
    async fn queue(&self, spec: &QueueSpec) -> Result<Box<dyn QueueReceiver>, SubscribeError> {
        self.declare_queue(spec)
            .await
            .map_err(|cause| SubscribeError {
                group: spec.group.clone(),
                cause,
            })?;
        Ok(Box::new(queue::EmbeddedQueue::new(self.clone(), spec)))
    }

    async fn stream(&self, spec: &StreamSpec) -> Result<Box<dyn StreamReceiver>, SubscribeError> {
        let receiver = stream::EmbeddedStream::open(self.clone(), spec)
            .await
            .map_err(|cause| SubscribeError {
                group: spec.group.clone(),
                cause,
            })?;
        Ok(Box::new(receiver))
    }
}

impl EmbeddedBus {
    /// Creates the queue on first use, or updates its bindings, which then apply to
    /// events published from now on.
    async fn declare_queue(&self, spec: &QueueSpec) -> anyhow::Result<()> {
        let types = serde_json::to_string(&spec.event_types)?;
        sqlx::query(
            "INSERT INTO queues (name, event_types, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET event_types = excluded.event_types",
        )
        .bind(&spec.group)
        .bind(&types)
        .bind(now_millis())
        .execute(self.inner.db.write_pool())
        .await?;

        let mut queues = self
            .inner
            .queues
            .write()
            .expect("the queue list lock is never held across a panic");
        queues.retain(|(name, _)| name != &spec.group);
        queues.push((spec.group.clone(), spec.event_types.clone()));
        Ok(())
    }
}
