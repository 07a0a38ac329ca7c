//! End-to-end latency read from the services' databases.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row as _;

use crate::report::{open, percentile};
use crate::system::Databases;

/// From an order's placement to its stored `ready` notification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EndToEnd {
    /// Orders measured.
    pub orders: usize,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
}

/// Measures the orders placed at or after `since_ms` (Unix milliseconds) that have a
/// `ready` notification.
///
/// # Errors
///
/// Fails when a database cannot be read.
pub async fn end_to_end(databases: &Databases, since_ms: i64) -> anyhow::Result<EndToEnd> {
    let orders = open(databases, "orders").await?;
    let placed: HashMap<String, i64> = sqlx::query(
        "SELECT order_id, changed_at FROM order_status_history WHERE status = 'placed' AND changed_at >= $1",
    )
    .bind(since_ms)
    .fetch_all(&orders)
    .await?
    .iter()
    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
    .collect::<Result<_, sqlx::Error>>()?;
    orders.close().await;

    let notifications = open(databases, "notifications").await?;
    let ready = sqlx::query(
        "SELECT order_id, created_at FROM notifications WHERE order_status = 'ready' AND created_at >= $1",
    )
    .bind(since_ms)
    .fetch_all(&notifications)
    .await?;
    notifications.close().await;

    let mut latencies = Vec::with_capacity(ready.len());
    for row in ready {
        let order_id: String = row.try_get(0)?;
        let at: i64 = row.try_get(1)?;
        if let Some(placed_at) = placed.get(&order_id) {
            latencies.push(at - placed_at);
        }
    }
    latencies.sort_unstable();
    Ok(EndToEnd {
        orders: latencies.len(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
    })
}
