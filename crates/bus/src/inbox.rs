//! The idempotent inbox: a consumer records each event id it has handled in its own
//! database, in the same transaction as the state change the event causes. A
//! redelivered event then finds its id and changes nothing.
//!
//! Each service's migrations create the table:
//!
//! ```sql
//! CREATE TABLE inbox (
//!     consumer   TEXT   NOT NULL,
//!     event_id   TEXT   NOT NULL,
//!     handled_at BIGINT NOT NULL,
//!     PRIMARY KEY (consumer, event_id)
//! );
//! ```

use std::collections::HashSet;

use sqlx::{Any, Transaction};
use tiffin_runtime::time::now_millis;

/// Event ids recorded per statement by [`record_many`]: one parameter each, far
/// below the parameter limits of SQLite (32,766) and PostgreSQL (65,535).
const IDS_PER_INSERT: usize = 500;

/// Records that `consumer` handles `event_id` and returns true, or returns false when
/// it was handled before, in which case the caller commits nothing else.
///
/// Call it first in the handler's transaction, so that two concurrent deliveries of
/// one event serialize on the row and only one proceeds.
///
/// # Errors
///
/// Returns the database error.
pub async fn record(
    tx: &mut Transaction<'_, Any>,
    consumer: &str,
    event_id: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO inbox (consumer, event_id, handled_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .bind(now_millis())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Records that `consumer` handles each of `event_ids` and returns the ids that were
/// not handled before, with one statement per 500 ids. An id given twice is returned
/// once, so its event is applied once.
///
/// Call it first in the handler's transaction, as [`record`].
///
/// # Errors
///
/// Returns the database error.
pub async fn record_many(
    tx: &mut Transaction<'_, Any>,
    consumer: &str,
    event_ids: &[&str],
) -> Result<HashSet<String>, sqlx::Error> {
    let now = now_millis();
    let mut new = HashSet::with_capacity(event_ids.len());
    for chunk in event_ids.chunks(IDS_PER_INSERT) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("($1, ${}, $2)", i + 3))
            .collect();
        let sql = format!(
            "INSERT INTO inbox (consumer, event_id, handled_at) VALUES {} \
             ON CONFLICT DO NOTHING RETURNING event_id",
            rows.join(", ")
        );
        // Only placeholders are formatted in. The text varies with the chunk's
        // length, so it is not kept as a prepared statement, where it would push
        // out the ones that repeat.
        let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .bind(consumer)
            .bind(now);
        for id in chunk {
            query = query.bind(*id);
        }
        new.extend(query.fetch_all(&mut **tx).await?);
    }
    Ok(new)
}
