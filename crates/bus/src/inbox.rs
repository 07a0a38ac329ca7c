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

use sqlx::{Any, Transaction};
use tiffin_runtime::time::now_millis;

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
