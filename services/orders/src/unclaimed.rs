//! Authorizations that may exist without an order, and their release.
//!
//! When payments does not respond within the deadline, the client gets 503 and no
//! order is stored, but payments may still complete the authorization. The order
//! service then records the attempt here, and a retry with the same
//! Idempotency-Key claims the record in the transaction that stores the order.
//! Once `release_unclaimed_after` has passed without a claim, the payment worker
//! marks the row `releasing`, so later retries get 409. It then requests the authorization
//! again under the same key, which is idempotent and returns the late one (or
//! creates one), and voids it. Every step runs under the database's write lock, so
//! a retry and the release never both succeed.

use sqlx::{Any, Row as _, Transaction};
use tiffin_runtime::db::Database;

/// An attempt whose authorization may be held without an order.
#[derive(Debug, Clone)]
pub struct Unclaimed {
    /// The order id the attempt would have had.
    pub order_id: String,
    /// The customer.
    pub customer_id: String,
    /// The amount asked for, in minor units.
    pub amount_cents: i64,
    /// The currency.
    pub currency: String,
    /// Release attempts made so far.
    pub attempts: i64,
}

/// The state of a recorded attempt, from a retry's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No attempt was recorded, or the retry claimed it.
    Free,
    /// The authorization is being or has been released: the key is spent.
    Released,
}

/// Records an attempt whose authorization call timed out, to release after
/// `due_at` (Unix milliseconds) unless a retry claims it first.
///
/// # Errors
///
/// Returns the database error.
pub async fn record(
    db: &Database,
    attempt: &Unclaimed,
    due_at: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin_write_for(&[&attempt.order_id]).await?;
    sqlx::query(
        "INSERT INTO unclaimed_authorizations \
         (order_id, customer_id, amount_cents, currency, status, attempts, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, $4, 'pending', 0, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(&attempt.order_id)
    .bind(&attempt.customer_id)
    .bind(attempt.amount_cents)
    .bind(&attempt.currency)
    .bind(due_at)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Claims the attempt for `order_id` inside the transaction that stores its order.
///
/// # Errors
///
/// Returns the database error.
pub async fn claim(tx: &mut Transaction<'_, Any>, order_id: &str) -> Result<Claim, sqlx::Error> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM unclaimed_authorizations WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&mut **tx)
            .await?;
    match status.as_deref() {
        Some("releasing" | "released") => Ok(Claim::Released),
        Some("pending") => {
            sqlx::query(
                "UPDATE unclaimed_authorizations SET status = 'claimed' WHERE order_id = $1",
            )
            .bind(order_id)
            .execute(&mut **tx)
            .await?;
            Ok(Claim::Free)
        }
        _ => Ok(Claim::Free),
    }
}

/// Returns up to `limit` attempts due for release at `now`.
///
/// # Errors
///
/// Returns the database error.
pub async fn due(db: &Database, now: i64, limit: i64) -> Result<Vec<Unclaimed>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT order_id, customer_id, amount_cents, currency, attempts FROM unclaimed_authorizations \
         WHERE status IN ('pending', 'releasing') AND next_attempt_at <= $1 \
         ORDER BY next_attempt_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Unclaimed {
                order_id: row.try_get(0)?,
                customer_id: row.try_get(1)?,
                amount_cents: row.try_get(2)?,
                currency: row.try_get(3)?,
                attempts: row.try_get(4)?,
            })
        })
        .collect()
}

/// Starts releasing the attempt for `order_id`: returns false, and marks the row
/// claimed, when its order was stored after all.
///
/// # Errors
///
/// Returns the database error.
pub async fn start_release(db: &Database, order_id: &str) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin_write_for(&[order_id]).await?;
    let stored: Option<String> =
        sqlx::query_scalar("SELECT order_id FROM orders WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?;
    let status = if stored.is_some() {
        "claimed"
    } else {
        "releasing"
    };
    sqlx::query("UPDATE unclaimed_authorizations SET status = $2 WHERE order_id = $1")
        .bind(order_id)
        .bind(status)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(stored.is_none())
}

/// Marks the release of `order_id` done.
///
/// # Errors
///
/// Returns the database error.
pub async fn released(db: &Database, order_id: &str) -> Result<(), sqlx::Error> {
    let mut tx = db.begin_write_for(&[order_id]).await?;
    sqlx::query("UPDATE unclaimed_authorizations SET status = 'released' WHERE order_id = $1")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Schedules another release attempt at `next_attempt_at`.
///
/// # Errors
///
/// Returns the database error.
pub async fn retry_later(
    db: &Database,
    order_id: &str,
    next_attempt_at: i64,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin_write_for(&[order_id]).await?;
    sqlx::query(
        "UPDATE unclaimed_authorizations SET attempts = attempts + 1, next_attempt_at = $2 WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(next_attempt_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
