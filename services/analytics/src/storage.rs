//! The projection's SQL.

use serde::Serialize;
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Row, Transaction};
use tiffin_events::order::{
    OrderAccepted, OrderDelivered, OrderPlaced, OrderReady, OrderStatusChanged,
};
use tiffin_runtime::db::{Database, placeholders};

use crate::domain::{Distribution, EndingFigures, Funnel, OrderStatus, StatusCount, StatusFigures};

/// Records placed orders, one statement per chunk of rows.
pub async fn record_placed(
    tx: &mut Transaction<'_, Any>,
    placed: &[&OrderPlaced],
) -> Result<(), sqlx::Error> {
    const COLUMNS: [&str; 4] = ["restaurant_id", "total_cents", "currency", "placed_at"];
    for chunk in placed.chunks(FACTS_PER_UPSERT) {
        let mut query = upsert_facts(&COLUMNS, chunk.len());
        for order in chunk {
            query = query
                .bind(&order.order_id)
                .bind(&order.restaurant_id)
                .bind(order.total_cents)
                .bind(&order.currency)
                .bind(order.placed_at);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Records acceptances. An order's row may not exist yet when events arrive out of
/// order; the later `order.placed` fills in the rest.
pub async fn record_accepted(
    tx: &mut Transaction<'_, Any>,
    accepted: &[&OrderAccepted],
) -> Result<(), sqlx::Error> {
    for chunk in accepted.chunks(FACTS_PER_UPSERT) {
        let mut query = upsert_facts(&["accepted_at"], chunk.len());
        for order in chunk {
            query = query.bind(&order.order_id).bind(order.accepted_at);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Records that orders are ready, with their preparation times.
pub async fn record_ready(
    tx: &mut Transaction<'_, Any>,
    ready: &[&OrderReady],
) -> Result<(), sqlx::Error> {
    for chunk in ready.chunks(FACTS_PER_UPSERT) {
        let mut query = upsert_facts(&["ready_at", "preparation_ms"], chunk.len());
        for order in chunk {
            query = query
                .bind(&order.order_id)
                .bind(order.ready_at)
                .bind(order.preparation_ms);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Records that orders were delivered, with the couriers' delivery times.
pub async fn record_delivered(
    tx: &mut Transaction<'_, Any>,
    delivered: &[&OrderDelivered],
) -> Result<(), sqlx::Error> {
    for chunk in delivered.chunks(FACTS_PER_UPSERT) {
        let mut query = upsert_facts(&["delivered_at", "delivery_ms"], chunk.len());
        for order in chunk {
            query = query
                .bind(&order.order_id)
                .bind(order.delivered_at)
                .bind(order.delivery_ms);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// The maximum number of orders per upsert of `order_facts`. With up to 5
/// parameters each, that stays far below both engines' parameter limits.
const FACTS_PER_UPSERT: usize = 500;

/// Returns an unbound upsert of `rows` rows into `order_facts`, each the order id
/// followed by `columns`, which overwrite the columns of an existing row.
///
/// PostgreSQL rejects a statement that updates one row twice, so the rows must
/// name distinct orders.
fn upsert_facts(columns: &[&str], rows: usize) -> Query<'static, Any, AnyArguments> {
    let width = columns.len() + 1;
    let values: Vec<String> = (0..rows)
        .map(|i| format!("({})", placeholders(i * width + 1, width)))
        .collect();
    let updates: Vec<String> = columns
        .iter()
        .map(|column| format!("{column} = excluded.{column}"))
        .collect();
    let sql = format!(
        "INSERT INTO order_facts (order_id, {}) VALUES {} \
         ON CONFLICT (order_id) DO UPDATE SET {}",
        columns.join(", "),
        values.join(", "),
        updates.join(", ")
    );
    // Only column names from this file and placeholders are formatted in. The text
    // varies with the number of rows, so it is not kept as a prepared statement.
    sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false)
}

/// Records that orders reached statuses, except where an earlier event already
/// reported that order and status.
pub async fn record_status_changes(
    tx: &mut Transaction<'_, Any>,
    changes: &[(OrderStatusChanged, OrderStatus)],
) -> Result<(), sqlx::Error> {
    for chunk in changes.chunks(CHANGES_PER_INSERT) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", placeholders(i * 8 + 1, 8)))
            .collect();
        let sql = format!(
            "INSERT INTO status_changes (order_id, status, stage, reason, restaurant_id, total_cents, \
               currency, changed_at) \
             VALUES {} ON CONFLICT (order_id, status) DO NOTHING",
            rows.join(", ")
        );
        // Only placeholders are formatted in. The text varies with the batch's
        // size, so it is not kept as a prepared statement.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
        for (change, status) in chunk {
            query = query
                .bind(&change.order_id)
                .bind(status.as_str())
                .bind(status.stage())
                .bind(change.reason.as_deref())
                .bind(&change.restaurant_id)
                .bind(change.total_cents)
                .bind(&change.currency)
                .bind(change.changed_at);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// How many status changes one INSERT writes at most: 8 parameters each, far
/// below both engines' limits.
const CHANGES_PER_INSERT: usize = 500;

/// The figures at `GET /v1/analytics/summary`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Orders placed.
    pub orders: i64,
    /// Orders that reached ready.
    pub ready: i64,
    /// Sum of the placed orders' totals, in minor units.
    pub revenue_cents: i64,
    /// The currency of the revenue, or null before the first order.
    pub currency: Option<String>,
    /// Orders placed per minute between the first and the last placement (the count
    /// itself when they all fall within one minute).
    pub orders_per_minute: f64,
    /// The most orders placed within one calendar minute.
    pub peak_orders_per_minute: i64,
    /// Mean time from acceptance to ready, in milliseconds, or null before the first
    /// ready order.
    pub mean_preparation_ms: Option<f64>,
    /// The ten restaurants with the most orders, ties broken by id.
    pub top_restaurants: Vec<RestaurantFigure>,
    /// How many orders reached each status, from `order.status_changed`.
    pub funnel: Funnel,
    /// Orders the kitchen rejected, per reason. Rates are of the funnel's placed
    /// orders.
    pub rejections: EndingFigures,
    /// Orders the customer cancelled, per reason. Rates are of the funnel's placed
    /// orders.
    pub cancellations: EndingFigures,
    /// Order attempts whose payment was declined, per reason. Rates are of all
    /// attempts: the funnel's placed orders plus the declined ones.
    pub payment_declines: EndingFigures,
    /// Milliseconds from acceptance to ready, from `order.ready`.
    pub preparation_ms: Distribution,
    /// Milliseconds from the courier's assignment to the handover, from
    /// `order.delivered`.
    pub delivery_ms: Distribution,
}

/// One restaurant's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestaurantFigure {
    /// The restaurant.
    pub restaurant_id: String,
    /// Orders placed with it.
    pub orders: i64,
    /// Their total, in minor units.
    pub revenue_cents: i64,
}

/// Computes the summary from the projection.
pub async fn summary(db: &Database) -> Result<Summary, sqlx::Error> {
    let pool = db.pool();
    let totals = sqlx::query(
        "SELECT COUNT(*) AS orders, CAST(COALESCE(SUM(total_cents), 0) AS BIGINT) AS revenue, \
           COALESCE(MIN(placed_at), 0) AS first_at, COALESCE(MAX(placed_at), 0) AS last_at, \
           MIN(currency) AS currency \
         FROM order_facts WHERE placed_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    let orders: i64 = totals.try_get("orders")?;
    let revenue_cents: i64 = totals.try_get("revenue")?;
    let first_at: i64 = totals.try_get("first_at")?;
    let last_at: i64 = totals.try_get("last_at")?;
    let currency: Option<String> = totals.try_get("currency")?;

    let ready: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM order_facts WHERE ready_at IS NOT NULL")
            .fetch_one(pool)
            .await?;
    // AVG returns a float on both engines; read the sum and count instead so the
    // type is the same everywhere. PostgreSQL sums BIGINT into NUMERIC, which the Any
    // driver cannot decode, so every SUM is cast back to BIGINT.
    let preparation = sqlx::query(
        "SELECT CAST(COALESCE(SUM(preparation_ms), 0) AS BIGINT) AS total, COUNT(preparation_ms) AS n FROM order_facts",
    )
    .fetch_one(pool)
    .await?;
    let preparation_total: i64 = preparation.try_get("total")?;
    let preparation_count: i64 = preparation.try_get("n")?;

    let peak: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM order_facts \
         WHERE placed_at IS NOT NULL GROUP BY placed_at / 60000) AS per_minute",
    )
    .fetch_one(pool)
    .await?;

    let rows = sqlx::query(
        "SELECT restaurant_id, COUNT(*) AS orders, CAST(COALESCE(SUM(total_cents), 0) AS BIGINT) AS revenue FROM order_facts \
         WHERE placed_at IS NOT NULL GROUP BY restaurant_id ORDER BY orders DESC, restaurant_id LIMIT 10",
    )
    .fetch_all(pool)
    .await?;
    let mut top_restaurants = Vec::with_capacity(rows.len());
    for row in rows {
        top_restaurants.push(RestaurantFigure {
            restaurant_id: row.try_get("restaurant_id")?,
            orders: row.try_get("orders")?,
            revenue_cents: row.try_get("revenue")?,
        });
    }

    let status_figures = status_figures(pool).await?;
    let preparation_ms = distribution(pool, "preparation_ms").await?;
    let delivery_ms = distribution(pool, "delivery_ms").await?;

    let span_minutes = (last_at - first_at) as f64 / 60_000.0;
    let orders_per_minute = if span_minutes < 1.0 {
        orders as f64
    } else {
        orders as f64 / span_minutes
    };
    Ok(Summary {
        orders,
        ready,
        revenue_cents,
        currency,
        orders_per_minute,
        peak_orders_per_minute: peak,
        mean_preparation_ms: (preparation_count > 0)
            .then(|| preparation_total as f64 / preparation_count as f64),
        top_restaurants,
        funnel: status_figures.funnel,
        rejections: status_figures.rejections,
        cancellations: status_figures.cancellations,
        payment_declines: status_figures.payment_declines,
        preparation_ms,
        delivery_ms,
    })
}

/// Reads the orders per furthest happy-path stage and per status and reason, and
/// computes the figures drawn from `order.status_changed`.
async fn status_figures(pool: &AnyPool) -> Result<StatusFigures, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT furthest, COUNT(*) AS orders FROM (SELECT order_id, MAX(stage) AS furthest \
         FROM status_changes WHERE stage IS NOT NULL GROUP BY order_id) AS per_order \
         GROUP BY furthest",
    )
    .fetch_all(pool)
    .await?;
    let mut furthest_stages = Vec::with_capacity(rows.len());
    for row in rows {
        furthest_stages.push((row.try_get("furthest")?, row.try_get("orders")?));
    }

    let rows = sqlx::query(
        "SELECT status, reason, COUNT(*) AS orders FROM status_changes GROUP BY status, reason",
    )
    .fetch_all(pool)
    .await?;
    let mut counts = Vec::with_capacity(rows.len());
    for row in rows {
        let status: String = row.try_get("status")?;
        // The consumer stores parsed statuses only, so another value means that the
        // table was written by something else.
        let status = OrderStatus::parse(&status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown order status {status:?} in status_changes").into())
        })?;
        counts.push(StatusCount {
            status,
            reason: row.try_get("reason")?,
            orders: row.try_get("orders")?,
        });
    }
    Ok(StatusFigures::new(&furthest_stages, &counts))
}

/// Reads the non-null values of an `order_facts` column in ascending order and
/// computes their distribution. `column` must be a column name, not input.
async fn distribution(pool: &AnyPool, column: &'static str) -> Result<Distribution, sqlx::Error> {
    let sql = format!(
        "SELECT {column} AS value FROM order_facts WHERE {column} IS NOT NULL ORDER BY {column}"
    );
    let values: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?;
    Ok(Distribution::from_sorted(&values))
}

/// Deletes the projection (order facts and status changes) and the inbox, before a
/// rebuild.
pub async fn reset(db: &Database) -> Result<(), sqlx::Error> {
    let mut tx = db.begin_write().await?;
    sqlx::query("DELETE FROM order_facts")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM status_changes")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM inbox").execute(&mut *tx).await?;
    tx.commit().await
}

/// Reads a count for reports.
pub async fn fact_count(db: &Database) -> Result<i64, sqlx::Error> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM order_facts")
        .fetch_one(db.pool())
        .await?;
    row.try_get("n")
}
