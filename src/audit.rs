//! `tiffin audit`: checks the invariants that span services, from their databases.
//!
//! No service can check these alone, because each owns only its part:
//!
//! - every order is final, or younger than the time limit;
//! - every authorization ends captured or voided, exactly once, never both: a
//!   delivered order's payment is captured for the order total, a rejected or
//!   cancelled order's payment is voided and never captured, and no authorization is
//!   left without an order (one whose placement timed out counts only after the
//!   time limit, because the order service voids it after its retry window);
//! - no payment step (void or capture) failed for good;
//! - the customer got exactly one notification per status change in the order's
//!   timeline, and none for a change the order never made.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::system::{Databases, Delivery};
use anyhow::Context;
use serde::Serialize;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use tiffin_runtime::time::now_millis;

/// One broken invariant.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// The invariant, such as `payment_settled_once`.
    pub rule: &'static str,
    /// The order involved, or the payment reference for an orphan authorization.
    pub order_id: String,
    /// What is wrong.
    pub detail: String,
}

/// The audit's findings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    /// Orders checked.
    pub orders: usize,
    /// Orders per status.
    pub by_status: BTreeMap<String, usize>,
    /// Payments checked.
    pub payments: usize,
    /// Notifications checked.
    pub notifications: usize,
    /// Every broken invariant, sorted by rule and order.
    pub violations: Vec<Violation>,
}

impl AuditReport {
    /// Returns true when no invariant is broken.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    fn violate(&mut self, rule: &'static str, order_id: &str, detail: String) {
        self.violations.push(Violation {
            rule,
            order_id: order_id.to_owned(),
            detail,
        });
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "orders checked         {}", self.orders)?;
        for (status, count) in &self.by_status {
            writeln!(f, "  {count:>6}  {status}")?;
        }
        writeln!(f, "payments checked       {}", self.payments)?;
        writeln!(f, "notifications checked  {}", self.notifications)?;
        if self.violations.is_empty() {
            return write!(f, "violations             none");
        }
        writeln!(f, "violations             {}", self.violations.len())?;
        let mut by_rule: BTreeMap<&str, Vec<&Violation>> = BTreeMap::new();
        for violation in &self.violations {
            by_rule.entry(violation.rule).or_default().push(violation);
        }
        for (rule, violations) in by_rule {
            writeln!(f, "  {rule}: {}", violations.len())?;
            for violation in violations.iter().take(10) {
                writeln!(f, "    {} {}", violation.order_id, violation.detail)?;
            }
            if violations.len() > 10 {
                writeln!(
                    f,
                    "    ... and {} more (--json lists all)",
                    violations.len() - 10
                )?;
            }
        }
        Ok(())
    }
}

struct Order {
    status: String,
    total_cents: i64,
    payment_id: String,
    created_at: i64,
    updated_at: i64,
    timeline: Vec<String>,
}

struct Payment {
    reference: String,
    status: String,
    captured_cents: i64,
    captures: i64,
    voids: i64,
}

async fn open(databases: &Databases, name: &str) -> anyhow::Result<AnyPool> {
    sqlx::any::install_default_drivers();
    databases.ensure_exists(name)?;
    let url = databases.read_url(name);
    AnyPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .with_context(|| format!("failed to open {}", tiffin_runtime::db::redact(&url)))
}

/// Audits the system whose databases `databases` locates (a data directory of
/// SQLite files converts into it). Orders younger than
/// `time_limit_ms` may still be in progress.
///
/// # Errors
///
/// Fails when a database cannot be read; broken invariants are in the report.
pub async fn audit(
    databases: impl Into<Databases>,
    time_limit_ms: i64,
) -> anyhow::Result<AuditReport> {
    audit_for(databases, time_limit_ms, Delivery::Runs).await
}

/// Audits like [`audit`] a system with or without delivery: without it, an order
/// ends at `ready` with its payment authorized.
///
/// # Errors
///
/// As for [`audit`].
pub async fn audit_for(
    databases: impl Into<Databases>,
    time_limit_ms: i64,
    delivery: Delivery,
) -> anyhow::Result<AuditReport> {
    let databases = databases.into();
    let orders_db = open(&databases, "orders").await?;
    let payments_db = open(&databases, "payments").await?;
    let notifications_db = open(&databases, "notifications").await?;
    let mut report = AuditReport::default();

    let orders = read_orders(&orders_db).await?;
    let payments = read_payments(&payments_db).await?;
    let notified = read_notifications(&notifications_db).await?;
    let failed_steps: Vec<(String, String, Option<String>)> = sqlx::query(
        "SELECT order_id, action, last_error FROM payment_actions WHERE status = 'failed'",
    )
    .fetch_all(&orders_db)
    .await?
    .iter()
    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
    .collect::<Result<_, sqlx::Error>>()?;
    // Authorizations whose placement timed out: the order service voids each one
    // once its retry window has passed, so until then it is not an orphan.
    let releasing: HashMap<String, i64> = sqlx::query(
        "SELECT order_id, created_at FROM unclaimed_authorizations \
         WHERE status IN ('pending', 'releasing')",
    )
    .fetch_all(&orders_db)
    .await?
    .iter()
    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
    .collect::<Result<_, sqlx::Error>>()?;
    for pool in [orders_db, payments_db, notifications_db] {
        pool.close().await;
    }

    report.orders = orders.len();
    report.payments = payments.len();
    report.notifications = notified.values().sum::<i64>() as usize;
    let now = now_millis();
    for (order_id, order) in &orders {
        *report.by_status.entry(order.status.clone()).or_default() += 1;
        check_progress(&mut report, order_id, order, now, time_limit_ms, delivery);
        let late = now - order.updated_at > time_limit_ms;
        check_payment(
            &mut report,
            order_id,
            order,
            payments.get(&order.payment_id),
            late,
        );
        check_notifications(&mut report, order_id, order, &notified);
    }

    let order_ids: HashSet<&String> = orders.keys().collect();
    for (payment_id, payment) in &payments {
        let being_released = releasing
            .get(&payment.reference)
            .is_some_and(|created_at| now - created_at <= time_limit_ms);
        if payment.status == "AUTHORIZED"
            && !order_ids.contains(&payment.reference)
            && !being_released
        {
            report.violate(
                "authorization_without_order",
                &payment.reference,
                format!(
                    "payment {payment_id} is authorized but no order {} exists",
                    payment.reference
                ),
            );
        }
    }
    for (order_id, action, error) in failed_steps {
        report.violate(
            "payment_step_failed",
            &order_id,
            format!(
                "the {action} failed for good: {}",
                error.unwrap_or_default()
            ),
        );
    }
    for (order_id, status) in notified.keys() {
        if !orders.contains_key(order_id) {
            report.violate(
                "notification_without_order",
                order_id,
                format!("a `{status}` notification for an unknown order"),
            );
        }
    }

    report.violations.sort();
    Ok(report)
}

fn check_progress(
    report: &mut AuditReport,
    order_id: &str,
    order: &Order,
    now: i64,
    time_limit_ms: i64,
    delivery: Delivery,
) {
    let age_ms = now - order.created_at;
    if !delivery.final_statuses().contains(&order.status.as_str()) && age_ms > time_limit_ms {
        report.violate(
            "order_not_final",
            order_id,
            format!(
                "still {} after {} s (limit {} s)",
                order.status,
                age_ms / 1000,
                time_limit_ms / 1000
            ),
        );
    }
}

fn check_payment(
    report: &mut AuditReport,
    order_id: &str,
    order: &Order,
    payment: Option<&Payment>,
    late: bool,
) {
    let Some(payment) = payment else {
        report.violate(
            "payment_missing",
            order_id,
            format!("payment {} does not exist", order.payment_id),
        );
        return;
    };
    if payment.reference != order_id {
        report.violate(
            "payment_mismatch",
            order_id,
            format!(
                "payment {} belongs to {}",
                order.payment_id, payment.reference
            ),
        );
    }
    if payment.captures > 1 || payment.voids > 1 || (payment.captures > 0 && payment.voids > 0) {
        report.violate(
            "payment_settled_once",
            order_id,
            format!(
                "{} captures and {} voids on payment {}",
                payment.captures, payment.voids, order.payment_id
            ),
        );
    }

    // The worker settles a final order's payment shortly after the change, so an
    // authorization still open counts only once the order is past its time limit.
    let expected = match order.status.as_str() {
        "delivered" => "CAPTURED",
        "rejected" | "cancelled" => "VOIDED",
        "payment_declined" => "DECLINED",
        _ => "AUTHORIZED",
    };
    if payment.status == expected {
        if expected == "CAPTURED" && payment.captured_cents != order.total_cents {
            report.violate(
                "capture_equals_total",
                order_id,
                format!(
                    "captured {} cents of an order of {} cents",
                    payment.captured_cents, order.total_cents
                ),
            );
        }
        return;
    }
    match (expected, payment.status.as_str()) {
        ("CAPTURED" | "VOIDED", "AUTHORIZED") if !late => {}
        ("CAPTURED" | "VOIDED", "AUTHORIZED") => report.violate(
            "payment_not_settled",
            order_id,
            format!("{} order's payment is still authorized", order.status),
        ),
        ("VOIDED", "CAPTURED") => {
            report.violate(
                "ended_order_captured",
                order_id,
                format!("{} order's payment was captured", order.status),
            );
        }
        (expected, actual) => report.violate(
            "payment_state_matches_order",
            order_id,
            format!(
                "{} order's payment is {actual}, expected {expected}",
                order.status
            ),
        ),
    }
}

fn check_notifications(
    report: &mut AuditReport,
    order_id: &str,
    order: &Order,
    notified: &HashMap<(String, String), i64>,
) {
    for status in &order.timeline {
        let count = notified
            .get(&(order_id.to_owned(), status.clone()))
            .copied()
            .unwrap_or(0);
        if count != 1 {
            report.violate(
                "one_notification_per_change",
                order_id,
                format!("{count} notifications for `{status}`"),
            );
        }
    }
}

async fn read_orders(db: &AnyPool) -> anyhow::Result<HashMap<String, Order>> {
    let mut orders = HashMap::new();
    for row in sqlx::query(
        "SELECT order_id, status, total_cents, payment_id, created_at, updated_at FROM orders",
    )
    .fetch_all(db)
    .await?
    {
        orders.insert(
            row.try_get::<String, _>(0)?,
            Order {
                status: row.try_get(1)?,
                total_cents: row.try_get(2)?,
                payment_id: row.try_get(3)?,
                created_at: row.try_get(4)?,
                updated_at: row.try_get(5)?,
                timeline: Vec::new(),
            },
        );
    }
    for row in sqlx::query("SELECT order_id, status FROM order_status_history")
        .fetch_all(db)
        .await?
    {
        let order_id: String = row.try_get(0)?;
        if let Some(order) = orders.get_mut(&order_id) {
            order.timeline.push(row.try_get(1)?);
        }
    }
    Ok(orders)
}

async fn read_payments(db: &AnyPool) -> anyhow::Result<HashMap<String, Payment>> {
    let mut payments = HashMap::new();
    for row in sqlx::query("SELECT payment_id, reference, status, captured_cents FROM payments")
        .fetch_all(db)
        .await?
    {
        payments.insert(
            row.try_get::<String, _>(0)?,
            Payment {
                reference: row.try_get(1)?,
                status: row.try_get(2)?,
                captured_cents: row.try_get(3)?,
                captures: 0,
                voids: 0,
            },
        );
    }
    for row in
        sqlx::query("SELECT payment_id, kind FROM ledger_entries WHERE kind IN ('capture', 'void')")
            .fetch_all(db)
            .await?
    {
        let payment_id: String = row.try_get(0)?;
        let kind: String = row.try_get(1)?;
        if let Some(payment) = payments.get_mut(&payment_id) {
            match kind.as_str() {
                "capture" => payment.captures += 1,
                _ => payment.voids += 1,
            }
        }
    }
    Ok(payments)
}

/// Notifications per (order, status).
async fn read_notifications(db: &AnyPool) -> anyhow::Result<HashMap<(String, String), i64>> {
    let mut notified = HashMap::new();
    for row in sqlx::query("SELECT order_id, order_status, COUNT(*) FROM notifications GROUP BY order_id, order_status")
        .fetch_all(db)
        .await?
    {
        notified.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
    }
    Ok(notified)
}
