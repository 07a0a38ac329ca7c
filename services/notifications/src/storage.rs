//! Every SQL statement of the notifications service.

use std::collections::{BTreeMap, HashSet};

use anyhow::Context;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::domain::{Notification, NotificationStatus, OrderStatus};

const COLUMNS: &str = "notification_id, event_id, order_id, customer_id, event_type, order_status, \
     channel, subject, body, status, attempts, last_error, created_at, sent_at";

/// Notification counts for reports and consistency checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NotificationCounts {
    /// All notifications.
    pub notifications: i64,
    /// Events that have more than one notification. The unique `event_id` column keeps
    /// this at 0, so a report that shows anything else has found a bug.
    pub events_with_several_notifications: i64,
    /// Notifications per event type. Types without notifications are absent.
    pub by_event_type: BTreeMap<String, i64>,
    /// Notifications per delivery status (`pending`, `sent`, `failed`). Statuses
    /// without notifications are absent.
    pub by_status: BTreeMap<String, i64>,
    /// Notifications per order status they report (`placed`, `accepted`, ...,
    /// `payment_declined`). Statuses without notifications are absent.
    pub by_status_change: BTreeMap<String, i64>,
    /// Orders that have more than one notification for one status. The unique
    /// `(order_id, order_status)` index keeps this at 0, so a report that shows
    /// anything else has found a bug.
    pub orders_with_duplicate_status: i64,
}

/// The outcome of a failed send as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailureRecorded {
    pub(crate) status: NotificationStatus,
    pub(crate) attempts: i64,
}

/// Notifications inserted per statement by [`insert_notifications`]: 15
/// parameters each, far below the parameter limits of SQLite (32,766) and
/// PostgreSQL (65,535).
const ROWS_PER_INSERT: usize = 100;

/// Stores new notifications, each with the time of its first send attempt, and
/// returns the ids of those stored. A notification whose event, or whose order and
/// status, already has one is left out, also when the repeat is in `rows`.
pub(crate) async fn insert_notifications(
    tx: &mut Transaction<'_, Any>,
    rows: &[(&Notification, i64)],
) -> Result<HashSet<String>, sqlx::Error> {
    let mut inserted = HashSet::with_capacity(rows.len());
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|row| {
                let placeholders: Vec<String> = (1..=15)
                    .map(|column| format!("${}", row * 15 + column))
                    .collect();
                format!("({})", placeholders.join(", "))
            })
            .collect();
        // No conflict target, so that both unique keys, `event_id` and
        // `(order_id, order_status)`, turn a repeat into a no-op. Only placeholders
        // are formatted in. The text varies with the chunk's length, so it is not
        // kept as a prepared statement.
        let sql = format!(
            "INSERT INTO notifications (notification_id, event_id, order_id, customer_id, event_type, \
             order_status, channel, subject, body, status, attempts, last_error, next_attempt_at, \
             created_at, sent_at) VALUES {} ON CONFLICT DO NOTHING RETURNING notification_id",
            values.join(", ")
        );
        let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).persistent(false);
        for (notification, next_attempt_at) in chunk {
            query = query
                .bind(&notification.notification_id)
                .bind(&notification.event_id)
                .bind(&notification.order_id)
                .bind(&notification.customer_id)
                .bind(&notification.event_type)
                .bind(notification.order_status.as_str())
                .bind(&notification.channel)
                .bind(&notification.subject)
                .bind(&notification.body)
                .bind(notification.status.as_str())
                .bind(notification.attempts)
                .bind(notification.last_error.as_deref())
                .bind(*next_attempt_at)
                .bind(notification.created_at)
                .bind(notification.sent_at);
        }
        inserted.extend(query.fetch_all(&mut **tx).await?);
    }
    Ok(inserted)
}

/// Lists the notifications of `order_id`, oldest first.
pub(crate) async fn notifications_of_order(
    pool: &AnyPool,
    order_id: &str,
) -> anyhow::Result<Vec<Notification>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM notifications WHERE order_id = $1 \
         ORDER BY created_at, notification_id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(order_id)
        .fetch_all(pool)
        .await
        .with_context(|| format!("failed to list the notifications of order {order_id}"))?;
    rows.iter().map(notification_from_row).collect()
}

/// Lists up to `limit` pending notifications whose next attempt is due at `now`,
/// the longest waiting first.
pub(crate) async fn due_notifications(
    pool: &AnyPool,
    now: i64,
    limit: i64,
) -> anyhow::Result<Vec<Notification>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM notifications WHERE status = 'pending' AND next_attempt_at <= $1 \
         ORDER BY next_attempt_at, notification_id LIMIT $2"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(limit)
        .fetch_all(pool)
        .await
        .context("failed to list due notifications")?;
    rows.iter().map(notification_from_row).collect()
}

fn notification_from_row(row: &AnyRow) -> anyhow::Result<Notification> {
    let notification_id: String = row.try_get("notification_id")?;
    let status: String = row.try_get("status")?;
    let order_status: String = row.try_get("order_status")?;
    Ok(Notification {
        status: NotificationStatus::parse(&status).with_context(|| {
            format!("notification {notification_id} has an unknown status {status:?}")
        })?,
        order_status: OrderStatus::parse(&order_status).with_context(|| {
            format!("notification {notification_id} has an unknown order status {order_status:?}")
        })?,
        event_id: row.try_get("event_id")?,
        order_id: row.try_get("order_id")?,
        customer_id: row.try_get("customer_id")?,
        event_type: row.try_get("event_type")?,
        channel: row.try_get("channel")?,
        subject: row.try_get("subject")?,
        body: row.try_get("body")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        sent_at: row.try_get("sent_at")?,
        notification_id,
    })
}

/// Returns the earliest next attempt of the pending notifications, if any.
pub(crate) async fn next_attempt_at(pool: &AnyPool) -> anyhow::Result<Option<i64>> {
    let next: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(next_attempt_at) FROM notifications WHERE status = 'pending'",
    )
    .fetch_one(pool)
    .await
    .context("failed to read the next attempt time")?;
    Ok(next)
}

/// Takes a due pending notification for one send by moving its next attempt to
/// `lease_until`, and returns whether it was still due at `now`.
pub(crate) async fn claim(
    pool: &AnyPool,
    notification_id: &str,
    now: i64,
    lease_until: i64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE notifications SET next_attempt_at = $3 \
         WHERE notification_id = $1 AND status = 'pending' AND next_attempt_at <= $2",
    )
    .bind(notification_id)
    .bind(now)
    .bind(lease_until)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Marks a pending notification sent at `now` and returns whether it was pending.
pub(crate) async fn mark_sent<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Any>,
    notification_id: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE notifications SET status = 'sent', sent_at = $2, attempts = attempts + 1 \
         WHERE notification_id = $1 AND status = 'pending'",
    )
    .bind(notification_id)
    .bind(now)
    .execute(executor)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Notifications marked per statement by [`mark_all_sent`], one parameter each.
const IDS_PER_UPDATE: usize = 500;

/// Marks the pending notifications among `notification_ids` sent at `now`, one
/// statement per 500 ids, and returns how many were still pending.
pub(crate) async fn mark_all_sent(
    tx: &mut Transaction<'_, Any>,
    notification_ids: &[&str],
    now: i64,
) -> Result<u64, sqlx::Error> {
    let mut updated = 0;
    for chunk in notification_ids.chunks(IDS_PER_UPDATE) {
        let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "UPDATE notifications SET status = 'sent', sent_at = $1, attempts = attempts + 1 \
             WHERE status = 'pending' AND notification_id IN ({})",
            placeholders.join(", ")
        );
        // Only placeholders are formatted in. The text varies with the chunk's
        // length, so it is not kept as a prepared statement.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .bind(now);
        for id in chunk {
            query = query.bind(*id);
        }
        updated += query.execute(&mut **tx).await?.rows_affected();
    }
    Ok(updated)
}

/// Records a failed send of a pending notification: counts the attempt, keeps
/// `error`, and either schedules the next attempt at `retry_at` or, once
/// `max_attempts` sends have failed, marks it failed. Returns `None` when the
/// notification was no longer pending.
pub(crate) async fn record_failure(
    pool: &AnyPool,
    notification_id: &str,
    error: &str,
    retry_at: i64,
    max_attempts: i64,
) -> anyhow::Result<Option<FailureRecorded>> {
    let row = sqlx::query(
        "UPDATE notifications SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3, \
         status = CASE WHEN attempts + 1 >= $4 THEN 'failed' ELSE 'pending' END \
         WHERE notification_id = $1 AND status = 'pending' RETURNING status, attempts",
    )
    .bind(notification_id)
    .bind(error)
    .bind(retry_at)
    .bind(max_attempts)
    .fetch_optional(pool)
    .await
    .with_context(|| format!("failed to record a failed send of notification {notification_id}"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let status: String = row.try_get("status")?;
    Ok(Some(FailureRecorded {
        status: NotificationStatus::parse(&status).with_context(|| {
            format!("notification {notification_id} has an unknown status {status:?}")
        })?,
        attempts: row.try_get("attempts")?,
    }))
}

/// Counts notifications in total, per event type, per delivery status and per order
/// status, and the events and orders that have more than one for one change.
pub(crate) async fn notification_counts(pool: &AnyPool) -> anyhow::Result<NotificationCounts> {
    let rows = sqlx::query(
        "SELECT event_type, status, order_status, COUNT(*) AS notifications FROM notifications \
         GROUP BY event_type, status, order_status",
    )
    .fetch_all(pool)
    .await
    .context("failed to count notifications")?;
    let mut counts = NotificationCounts::default();
    for row in rows {
        let event_type: String = row.try_get("event_type")?;
        let status: String = row.try_get("status")?;
        let order_status: String = row.try_get("order_status")?;
        let notifications: i64 = row.try_get("notifications")?;
        counts.notifications += notifications;
        *counts.by_event_type.entry(event_type).or_default() += notifications;
        *counts.by_status.entry(status).or_default() += notifications;
        *counts.by_status_change.entry(order_status).or_default() += notifications;
    }

    counts.events_with_several_notifications = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT event_id FROM notifications GROUP BY event_id \
         HAVING COUNT(*) > 1) AS repeated",
    )
    .fetch_one(pool)
    .await
    .context("failed to count events with several notifications")?;

    counts.orders_with_duplicate_status = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT order_id) FROM (SELECT order_id FROM notifications \
         GROUP BY order_id, order_status HAVING COUNT(*) > 1) AS repeated",
    )
    .fetch_one(pool)
    .await
    .context("failed to count orders with duplicate status notifications")?;
    Ok(counts)
}

/// Runs `SELECT 1` to check that the database responds.
pub(crate) async fn ping(pool: &AnyPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}
