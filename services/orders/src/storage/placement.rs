//! The placement's write: the order with its lines, first timeline entry,
//! idempotency key and outbox events.

use sqlx::{Any, Transaction};
use tiffin_bus::envelope::Envelope;
use tiffin_bus::outbox;
use tiffin_runtime::db::{Engine, placeholders};

use super::{NewOrder, insert_order};

/// Writes a new order and the events it causes inside `tx`.
///
/// On PostgreSQL this is one statement with a data-modifying `WITH` per table,
/// which saves four round trips per order. SQLite has no data-modifying `WITH`,
/// and it runs in the process, so there the tables are written one at a time.
///
/// # Errors
///
/// Returns the database error, a unique violation when the idempotency key or
/// the order exists already.
pub async fn insert_placement(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    order: &NewOrder<'_>,
    idempotency_key: &str,
    request_hash: &str,
    events: &[Envelope],
) -> Result<(), sqlx::Error> {
    match engine {
        Engine::Sqlite => {
            insert_order(tx, order, idempotency_key, request_hash).await?;
            outbox::enqueue_many(tx, events).await
        }
        Engine::Postgres => {
            insert_in_one_statement(tx, order, idempotency_key, request_hash, events).await
        }
    }
}

/// The number of parameters before the lines' and the events'.
const FIXED_PARAMETERS: usize = 16;

/// Parameters per order line.
const LINE_PARAMETERS: usize = 5;

/// The maximum number of lines and events together whose statement is kept
/// prepared. A placement usually has a few lines and two events, so a few shapes
/// cover it, and larger orders do not fill the connection's statement cache.
const PREPARED_ROWS: usize = 6;

async fn insert_in_one_statement(
    tx: &mut Transaction<'_, Any>,
    order: &NewOrder<'_>,
    idempotency_key: &str,
    request_hash: &str,
    events: &[Envelope],
) -> Result<(), sqlx::Error> {
    let sql = statement(order.lines.len(), events.len());
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .persistent(order.lines.len() + events.len() <= PREPARED_ROWS)
        .bind(order.customer_id)
        .bind(idempotency_key)
        .bind(request_hash)
        .bind(order.id)
        .bind(order.now)
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
        .bind(order.reason);
    for (line_no, line) in order.lines.iter().enumerate() {
        query = query
            .bind(i64::try_from(line_no).unwrap_or(i64::MAX))
            .bind(&line.menu_item_id)
            .bind(&line.name)
            .bind(i64::from(line.quantity))
            .bind(line.unit_price_cents);
    }
    outbox::bind_rows(query, events, order.now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Returns the statement for an order of `lines` lines and `events` events.
///
/// The order's 16 parameters come first: `$1` the customer, `$2` the idempotency
/// key, `$3` the request hash, `$4` the order id and `$5` the time, then the
/// order's columns, and `$16` the reason. Then come 5 per line and 3 per event.
fn statement(lines: usize, events: usize) -> String {
    let line_rows: Vec<String> = (0..lines)
        .map(|i| {
            let first = FIXED_PARAMETERS + 1 + i * LINE_PARAMETERS;
            format!("($4, {})", placeholders(first, LINE_PARAMETERS))
        })
        .collect();
    let first_event = FIXED_PARAMETERS + 1 + lines * LINE_PARAMETERS;
    let mut parts = vec![
        "key AS (INSERT INTO idempotency_keys (customer_id, idempotency_key, request_hash, \
         order_id, created_at) VALUES ($1, $2, $3, $4, $5))"
            .to_owned(),
        "placed AS (INSERT INTO orders (order_id, customer_id, restaurant_id, status, \
         total_cents, currency, payment_id, address_line1, address_city, address_lat, \
         address_lon, replay_delivery_minutes, created_at, updated_at) \
         VALUES ($4, $1, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $5, $5))"
            .to_owned(),
        "timeline AS (INSERT INTO order_status_history (order_id, status, changed_at, \
         event_id, reason) VALUES ($4, $7, $5, NULL, $16))"
            .to_owned(),
    ];
    if lines > 0 {
        parts.push(format!(
            "order_lines AS (INSERT INTO order_lines (order_id, line_no, menu_item_id, name, \
             quantity, unit_price_cents) VALUES {})",
            line_rows.join(", ")
        ));
    }
    if events == 0 {
        // A statement with a WITH clause needs a main query, and this one reads
        // nothing.
        return format!("WITH {} SELECT 1 WHERE false", parts.join(", "));
    }
    format!(
        "WITH {} {}",
        parts.join(", "),
        outbox::insert_sql(first_event, events)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_numbers_rows_after_order() {
        let sql = statement(2, 1);

        assert!(sql.contains("($4, $17, $18, $19, $20, $21), ($4, $22, $23, $24, $25, $26)"));
        assert!(sql.ends_with("VALUES ($27, $28, $29)"), "{sql}");
    }
}
