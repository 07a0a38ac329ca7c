//! The demo's report, counted from the services' own databases.
//!
//! The load generator sees only the API's responses. These figures come from
//! each service's database, so they show what the system actually did: one
//! authorization, one ticket and one notification per event for every order, or
//! the ids of the orders where that failed.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::system::{Databases, Delivery};
use anyhow::Context;
use serde::Serialize;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use tiffin_bus::embedded::EmbeddedBus;

/// Counts of a run, read from the services' databases.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SystemCounts {
    /// Orders stored by the order service whose payment was authorized.
    pub placed: i64,
    /// Authorizations the payment service declined.
    pub declined: i64,
    /// Orders whose timeline shows them ready.
    pub reached_ready: i64,
    /// Stored orders not in a final state.
    pub lost: i64,
    /// Orders per status.
    pub orders_by_status: BTreeMap<String, i64>,
    /// Orders with more than one kitchen ticket.
    pub duplicate_tickets: i64,
    /// Orders without a kitchen ticket.
    pub missing_tickets: i64,
    /// Status changes with more than one notification.
    pub duplicate_notifications: i64,
    /// Orders without exactly one notification per status in their timeline.
    pub orders_with_wrong_notifications: i64,
    /// Orders with more than one payment authorization.
    pub duplicate_authorizations: i64,
    /// Orders whose payment is missing or not authorized.
    pub orders_without_authorization: i64,
    /// From placement to ready by the orders' timelines, milliseconds.
    pub ready_p50_ms: f64,
    /// As above.
    pub ready_p99_ms: f64,
    /// Orders counted by analytics.
    pub analytics_orders: i64,
    /// Revenue counted by analytics, minor units.
    pub analytics_revenue_cents: i64,
    /// Revenue of the stored orders, minor units.
    pub orders_revenue_cents: i64,
    /// Up to 20 ids of orders involved in any problem above.
    pub problem_orders: Vec<String>,
}

impl SystemCounts {
    /// Returns true when nothing was lost or doubled and analytics agrees.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicate_tickets == 0
            && self.missing_tickets == 0
            && self.duplicate_notifications == 0
            && self.orders_with_wrong_notifications == 0
            && self.duplicate_authorizations == 0
            && self.orders_without_authorization == 0
            && self.analytics_orders == self.placed
            && self.analytics_revenue_cents == self.orders_revenue_cents
    }
}

pub(crate) async fn open(databases: &Databases, name: &str) -> anyhow::Result<AnyPool> {
    sqlx::any::install_default_drivers();
    let url = databases.read_url(name);
    AnyPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .with_context(|| format!("failed to open {}", tiffin_runtime::db::redact(&url)))
}

/// Counts work not yet done: outbox rows of every service, payment steps the order
/// service has yet to carry out, and messages waiting in the embedded bus's work
/// queues (a broker's queues are not counted).
///
/// # Errors
///
/// Fails when a database cannot be read.
pub async fn pending_events(
    databases: impl Into<Databases>,
    bus: Option<&EmbeddedBus>,
    delivery: Delivery,
) -> anyhow::Result<i64> {
    let databases = databases.into();
    let mut pending = match bus {
        Some(bus) => bus.pending_messages().await?,
        None => 0,
    };
    for service in ["catalog", "orders", "kitchen", "delivery"] {
        if !delivery.runs(service) {
            continue;
        }
        let pool = open(&databases, service).await?;
        pending += sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox")
            .fetch_one(&pool)
            .await?;
        if service == "orders" {
            pending += sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM payment_actions WHERE status = 'pending'",
            )
            .fetch_one(&pool)
            .await?;
        }
        pool.close().await;
    }
    Ok(pending)
}

/// Names the replicas that do not yet hold all of the catalog, such as
/// `orders menu replica (120 of 13239 items)`. Empty when all are complete.
///
/// # Errors
///
/// Fails when a database cannot be read.
pub async fn lagging_replicas(
    databases: impl Into<Databases>,
    delivery: Delivery,
) -> anyhow::Result<Vec<String>> {
    let databases = databases.into();
    let count = async |service: &str, sql: &'static str| -> anyhow::Result<i64> {
        let pool = open(&databases, service).await?;
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await?;
        pool.close().await;
        Ok(n)
    };
    let items = count("catalog", "SELECT COUNT(*) FROM menu_items").await?;
    let restaurants = count("catalog", "SELECT COUNT(*) FROM restaurants").await?;
    let mut checks = vec![
        (
            "orders menu replica",
            "items",
            count("orders", "SELECT COUNT(*) FROM menu_replica").await?,
            items,
        ),
        (
            "kitchen restaurant replica",
            "restaurants",
            count("kitchen", "SELECT COUNT(*) FROM restaurants").await?,
            restaurants,
        ),
    ];
    if delivery.runs("delivery") {
        checks.push((
            "delivery restaurant replica",
            "restaurants",
            count("delivery", "SELECT COUNT(*) FROM restaurants").await?,
            restaurants,
        ));
        checks.push((
            "delivery courier fleet",
            "couriers",
            count("delivery", "SELECT COUNT(*) FROM couriers")
                .await?
                .min(1),
            1,
        ));
    }
    Ok(checks
        .into_iter()
        .filter(|(_, _, have, want)| have < want)
        .map(|(name, unit, have, want)| format!("{name} ({have} of {want} {unit})"))
        .collect())
}

/// Counts what the services of a system with delivery stored.
///
/// # Errors
///
/// Fails when a database cannot be read.
pub async fn count(databases: impl Into<Databases>) -> anyhow::Result<SystemCounts> {
    count_for(databases, Delivery::Runs).await
}

/// Counts what the services of a system with or without delivery stored: without
/// it, an order that reached `ready` is not lost.
///
/// # Errors
///
/// Fails when a database cannot be read.
pub async fn count_for(
    databases: impl Into<Databases>,
    delivery: Delivery,
) -> anyhow::Result<SystemCounts> {
    let databases = databases.into();
    let orders_db = open(&databases, "orders").await?;
    let kitchen_db = open(&databases, "kitchen").await?;
    let notifications_db = open(&databases, "notifications").await?;
    let payments_db = open(&databases, "payments").await?;
    let analytics_db = open(&databases, "analytics").await?;
    let mut counts = SystemCounts::default();
    let mut problems = Vec::new();

    let orders: Vec<(String, String, String, i64)> =
        sqlx::query("SELECT order_id, status, payment_id, total_cents FROM orders")
            .fetch_all(&orders_db)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?;
    let mut timelines: HashMap<String, Vec<String>> = HashMap::new();
    for row in sqlx::query("SELECT order_id, status FROM order_status_history")
        .fetch_all(&orders_db)
        .await?
    {
        timelines
            .entry(row.try_get(0)?)
            .or_default()
            .push(row.try_get(1)?);
    }
    // Orders refused at the door (payment declined) never reach the kitchen; the
    // counts below are about the orders that did.
    let declined_orders = orders
        .iter()
        .filter(|(_, status, ..)| status == "payment_declined")
        .count() as i64;
    counts.placed = orders.len() as i64 - declined_orders;
    for (id, status, _, total) in &orders {
        *counts.orders_by_status.entry(status.clone()).or_default() += 1;
        if status == "payment_declined" {
            continue;
        }
        counts.orders_revenue_cents += total;
        let timeline = timelines.get(id).map(Vec::as_slice).unwrap_or_default();
        if timeline.iter().any(|s| s == "ready") {
            counts.reached_ready += 1;
        }
        if !delivery.final_statuses().contains(&status.as_str()) {
            counts.lost += 1;
            problems.push(id.clone());
        }
    }

    let mut ready_ms: Vec<i64> = sqlx::query(
        "SELECT r.changed_at - p.changed_at FROM order_status_history p \
         JOIN order_status_history r ON r.order_id = p.order_id AND r.status = 'ready' WHERE p.status = 'placed'",
    )
    .fetch_all(&orders_db)
    .await?
    .iter()
    .map(|row| row.try_get(0))
    .collect::<Result<_, sqlx::Error>>()?;
    ready_ms.sort_unstable();
    counts.ready_p50_ms = percentile(&ready_ms, 0.50);
    counts.ready_p99_ms = percentile(&ready_ms, 0.99);

    let mut tickets: HashMap<String, i64> = HashMap::new();
    for row in sqlx::query("SELECT order_id FROM tickets")
        .fetch_all(&kitchen_db)
        .await?
    {
        *tickets.entry(row.try_get(0)?).or_default() += 1;
    }
    for (id, status, ..) in &orders {
        if status == "payment_declined" {
            continue;
        }
        match tickets.get(id) {
            None => {
                counts.missing_tickets += 1;
                problems.push(id.clone());
            }
            Some(n) if *n > 1 => {
                counts.duplicate_tickets += 1;
                problems.push(id.clone());
            }
            Some(_) => {}
        }
    }

    counts.duplicate_notifications = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT order_id, order_status FROM notifications GROUP BY order_id, order_status HAVING COUNT(*) > 1) AS d",
    )
    .fetch_one(&notifications_db)
    .await?;
    let mut notified: HashMap<String, Vec<String>> = HashMap::new();
    for row in sqlx::query("SELECT order_id, order_status FROM notifications")
        .fetch_all(&notifications_db)
        .await?
    {
        notified
            .entry(row.try_get(0)?)
            .or_default()
            .push(row.try_get(1)?);
    }
    for (id, ..) in &orders {
        let mut expected = timelines.get(id).cloned().unwrap_or_default();
        let mut sent = notified.get(id).cloned().unwrap_or_default();
        expected.sort();
        sent.sort();
        if expected != sent {
            counts.orders_with_wrong_notifications += 1;
            problems.push(id.clone());
        }
    }

    counts.declined = sqlx::query_scalar("SELECT COUNT(*) FROM payments WHERE status = 'DECLINED'")
        .fetch_one(&payments_db)
        .await?;
    let mut authorizations: HashMap<String, (i64, bool)> = HashMap::new();
    for row in sqlx::query("SELECT payment_id, reference, status FROM payments")
        .fetch_all(&payments_db)
        .await?
    {
        let payment_id: String = row.try_get(0)?;
        let reference: String = row.try_get(1)?;
        let status: String = row.try_get(2)?;
        let entry = authorizations.entry(reference).or_default();
        entry.0 += 1;
        entry.1 |= status != "DECLINED" && !payment_id.is_empty();
    }
    let payment_ids: HashSet<String> =
        sqlx::query("SELECT payment_id FROM payments WHERE status <> 'DECLINED'")
            .fetch_all(&payments_db)
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, sqlx::Error>>()?;
    for (id, status, payment_id, _) in &orders {
        if status == "payment_declined" {
            continue;
        }
        match authorizations.get(id) {
            Some((n, _)) if *n > 1 => {
                counts.duplicate_authorizations += 1;
                problems.push(id.clone());
            }
            _ => {}
        }
        if !payment_ids.contains(payment_id) && status != "payment_declined" {
            counts.orders_without_authorization += 1;
            problems.push(id.clone());
        }
    }

    let analytics = sqlx::query("SELECT COUNT(*), CAST(COALESCE(SUM(total_cents), 0) AS BIGINT) FROM order_facts WHERE placed_at IS NOT NULL")
        .fetch_one(&analytics_db)
        .await?;
    counts.analytics_orders = analytics.try_get(0)?;
    counts.analytics_revenue_cents = analytics.try_get(1)?;

    problems.sort();
    problems.dedup();
    problems.truncate(20);
    counts.problem_orders = problems;
    for pool in [
        orders_db,
        kitchen_db,
        notifications_db,
        payments_db,
        analytics_db,
    ] {
        pool.close().await;
    }
    Ok(counts)
}

pub(crate) fn percentile(sorted: &[i64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}
