//! The order service's SQL. Every query is portable between SQLite and PostgreSQL,
//! except the placement's write on PostgreSQL ([`insert_placement`]), which is one
//! statement there.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tiffin_events::menu::MenuItemUpserted;
use tiffin_runtime::db::{Database, placeholders};

use crate::domain::{MenuItem, OrderStatus, PricedLine};

mod placement;

pub use self::placement::insert_placement;

/// An order as stored, with its lines and timeline.
#[derive(Debug, Clone, Serialize)]
pub struct OrderRecord {
    /// The order id.
    pub id: String,
    /// The customer's user id.
    pub customer_id: String,
    /// The restaurant.
    pub restaurant_id: String,
    /// The current status.
    pub status: OrderStatus,
    /// Sum of the lines in minor units.
    pub total_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The payment authorization.
    pub payment_id: String,
    /// The ordered lines.
    pub lines: Vec<PricedLine>,
    /// The delivery address.
    pub delivery_address: StoredAddress,
    /// Status changes, oldest first.
    pub timeline: Vec<TimelineEntry>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
    /// Replay minutes, when the order replays a real one.
    #[serde(skip)]
    pub replay_delivery_minutes: Option<u32>,
}

/// The stored delivery address.
#[derive(Debug, Clone, Serialize)]
pub struct StoredAddress {
    /// Street and number.
    pub line1: String,
    /// City.
    pub city: String,
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
}

/// One status change.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    /// The new status.
    pub status: OrderStatus,
    /// Unix milliseconds.
    pub at: i64,
    /// Why, for a rejection, cancellation or declined payment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A new order to insert.
#[derive(Debug)]
pub struct NewOrder<'a> {
    /// The order id.
    pub id: &'a str,
    /// `placed`, or `payment_declined` for an order whose card was declined.
    pub status: OrderStatus,
    /// Why, for a declined order.
    pub reason: Option<&'a str>,
    /// The customer.
    pub customer_id: &'a str,
    /// The restaurant.
    pub restaurant_id: &'a str,
    /// Sum in minor units.
    pub total_cents: i64,
    /// ISO 4217 code.
    pub currency: &'a str,
    /// The authorization.
    pub payment_id: &'a str,
    /// Lines.
    pub lines: &'a [PricedLine],
    /// Address.
    pub address: StoredAddress,
    /// Replay minutes.
    pub replay_delivery_minutes: Option<u32>,
    /// Unix milliseconds.
    pub now: i64,
}

impl NewOrder<'_> {
    /// Returns the order as [`insert_order`] stores it, so that a placement can
    /// respond without reading it back.
    pub fn record(&self) -> OrderRecord {
        OrderRecord {
            id: self.id.to_owned(),
            customer_id: self.customer_id.to_owned(),
            restaurant_id: self.restaurant_id.to_owned(),
            status: self.status,
            total_cents: self.total_cents,
            currency: self.currency.to_owned(),
            payment_id: self.payment_id.to_owned(),
            lines: self.lines.to_vec(),
            delivery_address: self.address.clone(),
            timeline: vec![TimelineEntry {
                status: self.status,
                at: self.now,
                reason: self.reason.map(str::to_owned),
            }],
            created_at: self.now,
            updated_at: self.now,
            replay_delivery_minutes: self.replay_delivery_minutes,
        }
    }
}

/// Looks up an idempotency key: the order it created and the request hash.
pub async fn find_idempotency_key(
    db: &Database,
    customer_id: &str,
    key: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT order_id, request_hash FROM idempotency_keys WHERE customer_id = $1 AND idempotency_key = $2",
    )
    .bind(customer_id)
    .bind(key)
    .fetch_optional(db.pool())
    .await?;
    row.map(|row| Ok((row.try_get("order_id")?, row.try_get("request_hash")?)))
        .transpose()
}

/// Returns true when the replica contains any item of the restaurant.
pub async fn restaurant_known(db: &Database, restaurant_id: &str) -> Result<bool, sqlx::Error> {
    let found: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM menu_replica WHERE restaurant_id = $1 LIMIT 1")
            .bind(restaurant_id)
            .fetch_optional(db.pool())
            .await?;
    Ok(found.is_some())
}

/// Loads the replica rows of the given item ids, keyed by id.
pub async fn menu_items(
    db: &Database,
    ids: &[&str],
) -> Result<HashMap<String, MenuItem>, sqlx::Error> {
    let mut items = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "SELECT menu_item_id, restaurant_id, name, price_cents, currency, available \
             FROM menu_replica WHERE menu_item_id IN ({})",
            placeholders(1, chunk.len())
        );
        // Kept as a prepared statement: orders have a few lines, so a few
        // shapes of this text repeat on every connection.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(*id);
        }
        for row in query.fetch_all(db.pool()).await? {
            let available: i64 = row.try_get("available")?;
            let item = MenuItem {
                menu_item_id: row.try_get("menu_item_id")?,
                restaurant_id: row.try_get("restaurant_id")?,
                name: row.try_get("name")?,
                price_cents: row.try_get("price_cents")?,
                currency: row.try_get("currency")?,
                available: available != 0,
            };
            items.insert(item.menu_item_id.clone(), item);
        }
    }
    Ok(items)
}

/// Counts the items in the menu replica.
pub async fn menu_replica_size(db: &Database) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM menu_replica")
        .fetch_one(db.pool())
        .await
}

/// Applies a menu item event to the replica, keeping the highest revision.
pub async fn upsert_menu_item(
    tx: &mut Transaction<'_, Any>,
    item: &MenuItemUpserted,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO menu_replica (menu_item_id, restaurant_id, restaurant_name, name, price_cents, currency, available, revision) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (menu_item_id) DO UPDATE SET restaurant_id = excluded.restaurant_id, \
           restaurant_name = excluded.restaurant_name, name = excluded.name, price_cents = excluded.price_cents, \
           currency = excluded.currency, available = excluded.available, revision = excluded.revision \
         WHERE excluded.revision > menu_replica.revision",
    )
    .bind(&item.menu_item_id)
    .bind(&item.restaurant_id)
    .bind(&item.restaurant_name)
    .bind(&item.name)
    .bind(item.price_cents)
    .bind(&item.currency)
    .bind(i64::from(item.available))
    .bind(item.revision)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts an order, its lines, its first timeline entry and its idempotency key.
///
/// # Errors
///
/// A unique violation means a concurrent request with the same key won the race.
pub async fn insert_order(
    tx: &mut Transaction<'_, Any>,
    order: &NewOrder<'_>,
    idempotency_key: &str,
    request_hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idempotency_keys (customer_id, idempotency_key, request_hash, order_id, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(order.customer_id)
    .bind(idempotency_key)
    .bind(request_hash)
    .bind(order.id)
    .bind(order.now)
    .execute(&mut **tx)
    .await?;

    sqlx::query(
        "INSERT INTO orders (order_id, customer_id, restaurant_id, status, total_cents, currency, payment_id, \
           address_line1, address_city, address_lat, address_lon, replay_delivery_minutes, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)",
    )
    .bind(order.id)
    .bind(order.customer_id)
    .bind(order.restaurant_id)
    .bind(order.status.as_str())
    .bind(order.total_cents)
    .bind(order.currency)
    .bind(order.payment_id)
    .bind(&order.address.line1)
    .bind(&order.address.city)
    .bind(order.address.lat)
    .bind(order.address.lon)
    .bind(order.replay_delivery_minutes.map(i64::from))
    .bind(order.now)
    .execute(&mut **tx)
    .await?;

    let numbered: Vec<(usize, &PricedLine)> = order.lines.iter().enumerate().collect();
    for chunk in numbered.chunks(ROWS_PER_STATEMENT) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("($1, {})", placeholders(i * 5 + 2, 5)))
            .collect();
        let sql = format!(
            "INSERT INTO order_lines (order_id, line_no, menu_item_id, name, quantity, unit_price_cents) \
             VALUES {}",
            rows.join(", ")
        );
        // Kept as a prepared statement, as in `menu_items`.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(order.id);
        for (line_no, line) in chunk {
            query = query
                .bind(i64::try_from(*line_no).unwrap_or(i64::MAX))
                .bind(&line.menu_item_id)
                .bind(&line.name)
                .bind(i64::from(line.quantity))
                .bind(line.unit_price_cents);
        }
        query.execute(&mut **tx).await?;
    }

    record_status(tx, order.id, order.status, order.now, None, order.reason).await?;
    Ok(())
}

/// Appends a timeline entry and returns true, or returns false when the order already
/// has an entry for `status` (which keeps its first time).
pub async fn record_status(
    tx: &mut Transaction<'_, Any>,
    order_id: &str,
    status: OrderStatus,
    at: i64,
    event_id: Option<&str>,
    reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO order_status_history (order_id, status, changed_at, event_id, reason) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(order_id)
    .bind(status.as_str())
    .bind(at)
    .bind(event_id)
    .bind(reason)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The parts of an order the saga reads to act on it.
#[derive(Debug, Clone)]
pub struct OrderSummary {
    /// The current status.
    pub status: OrderStatus,
    /// The customer.
    pub customer_id: String,
    /// The restaurant.
    pub restaurant_id: String,
    /// Total in minor units.
    pub total_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The payment authorization.
    pub payment_id: String,
}

/// Reads the summaries of `order_ids` inside a transaction, keyed by order id;
/// unknown ids are missing from the map.
pub async fn summaries(
    tx: &mut Transaction<'_, Any>,
    order_ids: &[&str],
) -> Result<HashMap<String, OrderSummary>, sqlx::Error> {
    let mut unique: Vec<&str> = order_ids.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let mut found = HashMap::with_capacity(unique.len());
    for chunk in unique.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "SELECT order_id, status, customer_id, restaurant_id, total_cents, currency, payment_id \
             FROM orders WHERE order_id IN ({})",
            placeholders(1, chunk.len())
        );
        // Only placeholders are formatted in. The text varies with the batch's
        // size, so it is not kept as a prepared statement.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
        for id in chunk {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut **tx).await? {
            let status: String = row.try_get("status")?;
            let summary = OrderSummary {
                status: status
                    .parse()
                    .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
                customer_id: row.try_get("customer_id")?,
                restaurant_id: row.try_get("restaurant_id")?,
                total_cents: row.try_get("total_cents")?,
                currency: row.try_get("currency")?,
                payment_id: row.try_get("payment_id")?,
            };
            found.insert(row.try_get("order_id")?, summary);
        }
    }
    Ok(found)
}

/// A timeline entry to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEntry<'a> {
    /// The order.
    pub order_id: &'a str,
    /// The status it reached.
    pub status: OrderStatus,
    /// When, in Unix milliseconds.
    pub at: i64,
    /// The event that reported it, if any.
    pub event_id: Option<&'a str>,
    /// Why, for rejections and cancellations.
    pub reason: Option<&'a str>,
}

/// Appends timeline entries and returns the (order, status) pairs that were new.
/// An order that already has an entry for a status keeps its first time.
pub async fn record_statuses(
    tx: &mut Transaction<'_, Any>,
    entries: &[StatusEntry<'_>],
) -> Result<HashSet<(String, OrderStatus)>, sqlx::Error> {
    let mut recorded = HashSet::with_capacity(entries.len());
    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", placeholders(i * 5 + 1, 5)))
            .collect();
        let sql = format!(
            "INSERT INTO order_status_history (order_id, status, changed_at, event_id, reason) \
             VALUES {} ON CONFLICT DO NOTHING RETURNING order_id, status",
            rows.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
        for entry in chunk {
            query = query
                .bind(entry.order_id)
                .bind(entry.status.as_str())
                .bind(entry.at)
                .bind(entry.event_id)
                .bind(entry.reason);
        }
        for row in query.fetch_all(&mut **tx).await? {
            let status: String = row.try_get("status")?;
            let status = status
                .parse()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))?;
            recorded.insert((row.try_get("order_id")?, status));
        }
    }
    Ok(recorded)
}

/// A payment step the saga owes: void or capture an order's authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentAction {
    /// The order.
    pub order_id: String,
    /// `void` or `capture`.
    pub action: String,
    /// The authorization.
    pub payment_id: String,
    /// Amount to capture, in minor units (the order total).
    pub amount_cents: i64,
    /// Why, for a void.
    pub reason: String,
    /// Attempts made so far.
    pub attempts: i64,
}

/// Records payment steps to carry out; a step an order already has is kept as it is.
pub async fn add_payment_actions(
    tx: &mut Transaction<'_, Any>,
    actions: &[PaymentAction],
    now: i64,
) -> Result<(), sqlx::Error> {
    for chunk in actions.chunks(ROWS_PER_STATEMENT) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("({}, 'pending', 0, $1, $1)", placeholders(i * 5 + 2, 5)))
            .collect();
        let sql = format!(
            "INSERT INTO payment_actions (order_id, action, payment_id, amount_cents, reason, status, attempts, next_attempt_at, created_at) \
             VALUES {} ON CONFLICT DO NOTHING",
            rows.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .bind(now);
        for action in chunk {
            query = query
                .bind(&action.order_id)
                .bind(&action.action)
                .bind(&action.payment_id)
                .bind(action.amount_cents)
                .bind(&action.reason);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Lists pending payment steps that are due, oldest first.
pub async fn due_payment_actions(
    db: &Database,
    now: i64,
    limit: i64,
) -> Result<Vec<PaymentAction>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT order_id, action, payment_id, amount_cents, reason, attempts FROM payment_actions \
         WHERE status = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at, order_id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            Ok(PaymentAction {
                order_id: row.try_get("order_id")?,
                action: row.try_get("action")?,
                payment_id: row.try_get("payment_id")?,
                amount_cents: row.try_get("amount_cents")?,
                reason: row.try_get("reason")?,
                attempts: row.try_get("attempts")?,
            })
        })
        .collect()
}

/// Returns when the next pending payment step is due, if any.
pub async fn next_payment_action_due(db: &Database) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM payment_actions WHERE status = 'pending'")
        .fetch_one(db.pool())
        .await
}

/// Marks a payment step finished: `done`, or `failed` when payments refused it for
/// good (the audit reports those).
pub async fn finish_payment_action(
    db: &Database,
    action: &PaymentAction,
    status: &str,
    error: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payment_actions SET status = $3, attempts = attempts + 1, last_error = $4, done_at = $5 \
         WHERE order_id = $1 AND action = $2 AND status = 'pending'",
    )
    .bind(&action.order_id)
    .bind(&action.action)
    .bind(status)
    .bind(error)
    .bind(now)
    .execute(db.write_pool())
    .await?;
    Ok(())
}

/// Schedules another attempt of a payment step.
pub async fn retry_payment_action(
    db: &Database,
    action: &PaymentAction,
    error: &str,
    next_attempt_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payment_actions SET attempts = attempts + 1, last_error = $3, next_attempt_at = $4 \
         WHERE order_id = $1 AND action = $2 AND status = 'pending'",
    )
    .bind(&action.order_id)
    .bind(&action.action)
    .bind(error)
    .bind(next_attempt_at)
    .execute(db.write_pool())
    .await?;
    Ok(())
}

/// Sets the status of each order in `statuses`, which names an order once.
pub async fn set_statuses(
    tx: &mut Transaction<'_, Any>,
    statuses: &[(&str, OrderStatus)],
    now: i64,
) -> Result<(), sqlx::Error> {
    for chunk in statuses.chunks(ROWS_PER_STATEMENT) {
        // A CASE over the ids rather than UPDATE ... FROM (VALUES ...), whose column
        // naming differs between SQLite and PostgreSQL.
        let cases: Vec<String> = (0..chunk.len())
            .map(|i| format!("WHEN ${} THEN ${}", i * 2 + 2, i * 2 + 3))
            .collect();
        let ids: Vec<String> = (0..chunk.len())
            .map(|i| format!("${}", i * 2 + 2))
            .collect();
        let sql = format!(
            "UPDATE orders SET status = CASE order_id {} END, updated_at = $1 WHERE order_id IN ({})",
            cases.join(" "),
            ids.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .bind(now);
        for (order_id, status) in chunk {
            query = query.bind(*order_id).bind(status.as_str());
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// How many rows one multi-row statement writes or reads at most, well inside
/// both engines' limits on bound parameters.
const ROWS_PER_STATEMENT: usize = 500;

/// Counts the orders still `placed`, waiting for the kitchen's decision, that were
/// created before `before` (Unix milliseconds).
pub async fn count_waiting_for_kitchen(db: &Database, before: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE status = 'placed' AND created_at < $1")
        .bind(before)
        .fetch_one(db.pool())
        .await
}

/// Loads an order with its lines and timeline.
pub async fn find_order(db: &Database, order_id: &str) -> Result<Option<OrderRecord>, sqlx::Error> {
    let Some(row) = sqlx::query("SELECT * FROM orders WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(db.pool())
        .await?
    else {
        return Ok(None);
    };
    let mut order = order_from_row(&row)?;

    let lines = sqlx::query(
        "SELECT menu_item_id, name, quantity, unit_price_cents FROM order_lines WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(order_id)
    .fetch_all(db.pool())
    .await?;
    for line in lines {
        let quantity: i64 = line.try_get("quantity")?;
        order.lines.push(PricedLine {
            menu_item_id: line.try_get("menu_item_id")?,
            name: line.try_get("name")?,
            quantity: u32::try_from(quantity).unwrap_or(0),
            unit_price_cents: line.try_get("unit_price_cents")?,
        });
    }

    let history = sqlx::query(
        "SELECT status, changed_at, reason FROM order_status_history WHERE order_id = $1 ORDER BY changed_at, status",
    )
    .bind(order_id)
    .fetch_all(db.pool())
    .await?;
    for entry in history {
        let status: String = entry.try_get("status")?;
        order.timeline.push(TimelineEntry {
            status: status
                .parse()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
            at: entry.try_get("changed_at")?,
            reason: entry.try_get("reason")?,
        });
    }
    Ok(Some(order))
}

/// Lists a customer's orders, newest first, without lines or timeline.
pub async fn list_customer_orders(
    db: &Database,
    customer_id: &str,
    limit: i64,
) -> Result<Vec<OrderRecord>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT * FROM orders WHERE customer_id = $1 ORDER BY created_at DESC, order_id DESC LIMIT $2",
    )
    .bind(customer_id)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(order_from_row).collect()
}

/// Counts orders per status.
pub async fn count_by_status(db: &Database) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT status, COUNT(*) AS n FROM orders GROUP BY status ORDER BY status")
            .fetch_all(db.pool())
            .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("status")?, row.try_get("n")?)))
        .collect()
}

fn order_from_row(row: &AnyRow) -> Result<OrderRecord, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let replay: Option<i64> = row.try_get("replay_delivery_minutes")?;
    Ok(OrderRecord {
        id: row.try_get("order_id")?,
        customer_id: row.try_get("customer_id")?,
        restaurant_id: row.try_get("restaurant_id")?,
        status: status
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
        total_cents: row.try_get("total_cents")?,
        currency: row.try_get("currency")?,
        payment_id: row.try_get("payment_id")?,
        lines: Vec::new(),
        delivery_address: StoredAddress {
            line1: row.try_get("address_line1")?,
            city: row.try_get("address_city")?,
            lat: row.try_get("address_lat")?,
            lon: row.try_get("address_lon")?,
        },
        timeline: Vec::new(),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        replay_delivery_minutes: replay.and_then(|m| u32::try_from(m).ok()),
    })
}
