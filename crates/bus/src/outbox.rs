//! The transactional outbox.
//!
//! A service writes its state change and the events it causes in one database
//! transaction, the events as rows of its `outbox` table ([`enqueue`]). A relay
//! ([`OutboxRelay`]) publishes those rows to the bus in order and deletes them once
//! the broker has confirmed them. So no event exists without its state change and no
//! state change without its event. A crash between publishing and deleting publishes
//! the rows again; consumers deduplicate by event id.
//!
//! Each service's migrations create the table:
//!
//! ```sql
//! CREATE TABLE outbox (
//!     event_id   TEXT   PRIMARY KEY,
//!     envelope   TEXT   NOT NULL,
//!     created_at BIGINT NOT NULL
//! );
//! ```
//!
//! Event ids are UUIDv7, which are time-ordered and, within one process, strictly
//! increasing, so ordering rows by id publishes them in the order they were written.

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, Row, Transaction};
use tiffin_runtime::db::{Database, Engine, placeholders};
use tiffin_runtime::time::now_millis;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::Publisher;
use crate::envelope::Envelope;

/// Adds `envelope` to the outbox inside the caller's transaction.
///
/// # Errors
///
/// Returns the database error.
pub async fn enqueue(
    tx: &mut Transaction<'_, Any>,
    envelope: &Envelope,
) -> Result<(), sqlx::Error> {
    let json = serde_json::to_string(envelope).expect("an envelope always serializes");
    sqlx::query("INSERT INTO outbox (event_id, envelope, created_at) VALUES ($1, $2, $3)")
        .bind(&envelope.id)
        .bind(json)
        .bind(now_millis())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Rows per `INSERT` in [`enqueue_many`]: 150 rows of 3 values. Much larger
/// statements were slower through sqlx's `Any` driver on SQLite (measured while
/// seeding the catalog's 13,239 events).
const ROWS_PER_INSERT: usize = 150;

/// The largest [`enqueue_many`] statement kept as a prepared statement.
const PREPARED_ROWS: usize = 4;

/// Ids per `DELETE` once a batch is published: one statement instead of a round
/// trip per row, and far below SQLite's limit of 32,766 parameters.
const ROWS_PER_DELETE: usize = 256;

/// The advisory lock key that the relays of one PostgreSQL database share.
const RELAY_LOCK: i64 = 7_320_562;

/// Adds many envelopes to the outbox inside the caller's transaction, several rows
/// per statement, in the order given.
///
/// # Errors
///
/// Returns the database error.
pub async fn enqueue_many(
    tx: &mut Transaction<'_, Any>,
    envelopes: &[Envelope],
) -> Result<(), sqlx::Error> {
    let now = now_millis();
    for chunk in envelopes.chunks(ROWS_PER_INSERT) {
        // The text varies with the number of rows. The few short forms that a
        // placement or a small batch writes are kept as prepared statements. The
        // rest are parsed each time, so that they do not fill the statement cache.
        let query = sqlx::query(sqlx::AssertSqlSafe(insert_sql(1, chunk.len())))
            .persistent(chunk.len() <= PREPARED_ROWS);
        bind_rows(query, chunk, now).execute(&mut **tx).await?;
    }
    Ok(())
}

/// Returns an `INSERT` of `rows` outbox rows whose placeholders start at
/// `$first`, three per row, for a statement that writes them together with
/// other rows (a data-modifying `WITH` on PostgreSQL). Bind the rows with
/// [`bind_rows`].
pub fn insert_sql(first: usize, rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|i| format!("({})", placeholders(first + i * 3, 3)))
        .collect();
    format!(
        "INSERT INTO outbox (event_id, envelope, created_at) VALUES {}",
        values.join(", ")
    )
}

/// Binds the values of [`insert_sql`]'s rows: each envelope's id and JSON, and
/// `now` as the time it was written.
pub fn bind_rows<'q>(
    mut query: Query<'q, Any, AnyArguments>,
    envelopes: &[Envelope],
    now: i64,
) -> Query<'q, Any, AnyArguments> {
    for envelope in envelopes {
        let json = serde_json::to_string(envelope).expect("an envelope always serializes");
        query = query.bind(envelope.id.clone()).bind(json).bind(now);
    }
    query
}

/// Publishes a service's outbox rows to the bus.
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    name: &'static str,
    db: Database,
    publisher: Arc<dyn Publisher>,
    wake: Arc<Notify>,
    batch_size: usize,
}

impl OutboxRelay {
    /// Creates a relay for the outbox in `db`. `name` appears in logs.
    pub fn new(name: &'static str, db: Database, publisher: Arc<dyn Publisher>) -> Self {
        Self {
            name,
            db,
            publisher,
            wake: Arc::new(Notify::new()),
            batch_size: 256,
        }
    }

    /// Returns a handle that wakes the relay after committing outbox rows, so events leave
    /// without waiting for the next poll.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Publishes one batch of pending rows and returns how many were published.
    ///
    /// # Errors
    ///
    /// Fails when the database or the broker fails; the rows stay for the next try.
    pub async fn publish_batch(&self) -> anyhow::Result<usize> {
        let limit = i64::try_from(self.batch_size)?;
        // Replicas of a service share its PostgreSQL database, so their relays take
        // turns: the one holding this lock publishes the oldest rows and deletes
        // them before another reads them, which keeps the events in order and
        // published once. The lock is the relay's own, so the service's writes go on
        // while a batch is with the broker. A SQLite file has one process.
        let mut relay_tx = None;
        if self.db.engine() == Engine::Postgres {
            let mut tx = self.db.pool().begin().await?;
            let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(RELAY_LOCK)
                .fetch_one(&mut *tx)
                .await?;
            if !leader {
                return Ok(0);
            }
            relay_tx = Some(tx);
        }
        let select =
            sqlx::query("SELECT event_id, envelope FROM outbox ORDER BY event_id LIMIT $1")
                .bind(limit);
        let rows = match relay_tx.as_mut() {
            Some(tx) => select.fetch_all(&mut **tx).await?,
            None => select.fetch_all(self.db.pool()).await?,
        };
        if rows.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("event_id")?;
            let json: String = row.try_get("envelope")?;
            events.push(serde_json::from_str::<Envelope>(&json)?);
            ids.push(id);
        }

        self.publisher.publish(&events).await?;

        let mut tx = match relay_tx {
            Some(tx) => tx,
            None => self.db.begin_write().await?,
        };
        for chunk in ids.chunks(ROWS_PER_DELETE) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "DELETE FROM outbox WHERE event_id IN ({})",
                placeholders.join(", ")
            );
            // Batch sizes vary, so keep these statements out of the connection's
            // cache of prepared statements, where they would push out the hot ones.
            let mut delete = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
            for id in chunk {
                delete = delete.bind(id.as_str());
            }
            delete.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        tracing::trace!(
            relay = self.name,
            published = ids.len(),
            "outbox batch published"
        );
        Ok(ids.len())
    }

    /// Publishes until the outbox is empty.
    ///
    /// # Errors
    ///
    /// Fails on the first failed batch.
    pub async fn drain(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let published = self.publish_batch().await?;
            total += published;
            if published == 0 {
                return Ok(total);
            }
        }
    }

    /// Returns when the oldest row waiting to be published was written, in Unix
    /// milliseconds, or `None` when the outbox is empty. The relay takes rows in
    /// event id order, which follows the time they were made, so the row's age is
    /// how far the relay is behind.
    ///
    /// # Errors
    ///
    /// Returns the database error.
    pub async fn oldest_pending(&self) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar("SELECT created_at FROM outbox ORDER BY event_id LIMIT 1")
            .fetch_optional(self.db.pool())
            .await
    }

    /// Counts the rows waiting to be published.
    ///
    /// # Errors
    ///
    /// Returns the database error.
    pub async fn backlog(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(self.db.pool())
            .await?)
    }

    /// Runs until `shutdown` is cancelled, then publishes what is left (trying for up
    /// to 10 s) and returns.
    ///
    /// Between batches it waits for a wake-up or 200 ms. After a failure it retries
    /// after 100 ms, doubling up to 5 s.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(relay = self.name, "outbox relay started");
        let mut delay = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.publish_batch().await {
                Ok(0) => {
                    delay = Duration::from_millis(100);
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
                Ok(_) => delay = Duration::from_millis(100),
                Err(error) => {
                    tracing::warn!(relay = self.name, error = %error, retry_in_ms = delay.as_millis() as u64, "failed to publish outbox batch");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }

        match tokio::time::timeout(Duration::from_secs(10), self.drain()).await {
            Ok(Ok(flushed)) => tracing::info!(relay = self.name, flushed, "outbox relay stopped"),
            Ok(Err(error)) => {
                tracing::error!(relay = self.name, error = %error, "outbox relay stopped with events left; they are published after the next start")
            }
            Err(_) => tracing::error!(
                relay = self.name,
                "outbox relay timed out flushing; the rest is published after the next start"
            ),
        }
    }
}
