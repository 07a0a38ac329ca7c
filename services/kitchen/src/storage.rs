//! Every SQL statement of the kitchen: tickets here, stock limits in `stock`, and
//! the restaurant replica in `restaurants`.

mod restaurants;
mod stock;

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use serde::Serialize;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Row, Transaction};
use tiffin_runtime::db::placeholders;

use crate::domain::{self, Ticket, TicketStatus};

pub(crate) use self::restaurants::{count_restaurants, find_restaurants, upsert_restaurant};
pub(crate) use self::stock::{
    StockEntry, list_stock, remove_stock, return_stock, set_stock, stock_levels, take_stock,
};

/// An accepted ticket whose planned ready time has passed.
#[derive(Debug, Clone)]
pub(crate) struct DueTicket {
    pub(crate) ticket_id: String,
    pub(crate) order_id: String,
    pub(crate) restaurant_id: String,
    pub(crate) accepted_at: i64,
    pub(crate) traceparent: Option<String>,
    pub(crate) replay_delivery_minutes: Option<u32>,
}

/// A ticket read for a change, with the stock its acceptance took.
#[derive(Debug, Clone)]
pub(crate) struct LockedTicket {
    pub(crate) ticket: Ticket,
    /// The quantity taken from each stock row, by menu item.
    pub(crate) stock_taken: BTreeMap<String, u64>,
}

/// Ticket counts for reports and consistency checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TicketCounts {
    /// All tickets.
    pub tickets: i64,
    /// Orders that have more than one ticket. The unique `order_id` column keeps this
    /// at 0, so a report that shows anything else has found a bug.
    pub orders_with_several_tickets: i64,
    /// Tickets per status (`accepted`, `ready`, ...). Statuses without tickets are
    /// absent.
    pub by_status: BTreeMap<String, i64>,
    /// Rejected tickets per reason (`closed`, `sold_out`, `at_capacity`,
    /// `kitchen_declined`). Reasons without tickets are absent.
    pub by_reject_reason: BTreeMap<String, i64>,
}

/// The columns that [`ticket_from_row`] reads.
const TICKET_COLUMNS: &str = "ticket_id, order_id, restaurant_id, status, reject_reason, \
     reject_detail, lines, stock_taken, replay_delivery_minutes, created_at, accepted_at, \
     ready_at, ready_at_actual, cancelled_at";

/// A ticket to insert, with what its acceptance took from the stock rows.
#[derive(Debug)]
pub(crate) struct NewTicket {
    pub(crate) ticket: Ticket,
    pub(crate) traceparent: String,
    /// The quantity taken from each stock row, by menu item.
    pub(crate) stock_taken: BTreeMap<String, u64>,
}

/// Inserts the tickets whose orders have none yet, and returns the order ids of
/// those it inserted.
pub(crate) async fn insert_tickets(
    tx: &mut Transaction<'_, Any>,
    tickets: &[NewTicket],
) -> Result<HashSet<String>, sqlx::Error> {
    let mut inserted = HashSet::with_capacity(tickets.len());
    for chunk in tickets.chunks(TICKETS_PER_INSERT) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", placeholders(i * 14 + 1, 14)))
            .collect();
        let sql = format!(
            "INSERT INTO tickets (ticket_id, order_id, restaurant_id, status, reject_reason, \
             reject_detail, lines, stock_taken, traceparent, replay_delivery_minutes, \
             created_at, accepted_at, ready_at, cancelled_at) \
             VALUES {} ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
            rows.join(", ")
        );
        // Only placeholders are formatted in. Batches of a few tickets are the
        // common case when the kitchen keeps up, so their shapes stay prepared.
        let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
            .persistent(chunk.len() <= PREPARED_TICKETS);
        for new in chunk {
            let ticket = &new.ticket;
            let lines = serde_json::to_string(&ticket.lines).expect("order lines always serialize");
            let stock_taken = serde_json::to_string(&new.stock_taken)
                .expect("a map of strings to numbers serializes");
            query = query
                .bind(ticket.ticket_id.clone())
                .bind(ticket.order_id.clone())
                .bind(ticket.restaurant_id.clone())
                .bind(ticket.status.as_str())
                .bind(ticket.reject_reason.map(|reason| reason.as_str()))
                .bind(ticket.reject_detail.clone())
                .bind(lines)
                .bind(stock_taken)
                .bind(new.traceparent.clone())
                .bind(ticket.replay_delivery_minutes.map(i64::from))
                .bind(ticket.created_at)
                .bind(ticket.accepted_at)
                .bind(ticket.ready_by)
                .bind(ticket.cancelled_at);
        }
        inserted.extend(query.fetch_all(&mut **tx).await?);
    }
    Ok(inserted)
}

/// How many tickets one INSERT writes at most: 14 parameters each, far below
/// both engines' limits.
const TICKETS_PER_INSERT: usize = 200;

/// Inserts of up to this many tickets are kept as prepared statements.
const PREPARED_TICKETS: usize = 4;

/// Returns those of `order_ids` that have a ticket.
pub(crate) async fn orders_with_tickets(
    tx: &mut Transaction<'_, Any>,
    order_ids: &[&str],
) -> Result<HashSet<String>, sqlx::Error> {
    let mut found = HashSet::new();
    for chunk in order_ids.chunks(IDS_PER_READ) {
        let sql = "SELECT order_id FROM tickets WHERE order_id IN ({ids})";
        for row in query_in(sql, chunk).fetch_all(&mut **tx).await? {
            found.insert(row.try_get("order_id")?);
        }
    }
    Ok(found)
}

/// Finds the ticket of `order_id`.
pub(crate) async fn find_ticket(pool: &AnyPool, order_id: &str) -> anyhow::Result<Option<Ticket>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TICKET_COLUMNS} FROM tickets WHERE order_id = $1"
    )))
    .bind(order_id)
    .fetch_optional(pool)
    .await
    .with_context(|| format!("failed to read the ticket of order {order_id}"))?;
    row.map(|row| ticket_from_row(&row)).transpose()
}

/// Finds the ticket of `order_id` inside a write transaction, with the stock its
/// acceptance took.
pub(crate) async fn find_ticket_in(
    tx: &mut Transaction<'_, Any>,
    order_id: &str,
) -> anyhow::Result<Option<LockedTicket>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TICKET_COLUMNS} FROM tickets WHERE order_id = $1"
    )))
    .bind(order_id)
    .fetch_optional(&mut **tx)
    .await
    .with_context(|| format!("failed to read the ticket of order {order_id}"))?;
    let Some(row) = row else {
        return Ok(None);
    };

    let ticket = ticket_from_row(&row)?;
    let stock_taken: Option<String> = row.try_get("stock_taken")?;
    let stock_taken = match stock_taken {
        Some(json) => serde_json::from_str(&json)
            .with_context(|| format!("ticket {} has invalid stock_taken", ticket.ticket_id))?,
        None => BTreeMap::new(),
    };
    Ok(Some(LockedTicket {
        ticket,
        stock_taken,
    }))
}

fn ticket_from_row(row: &AnyRow) -> anyhow::Result<Ticket> {
    let ticket_id: String = row.try_get("ticket_id")?;
    let status: String = row.try_get("status")?;
    let reject_reason: Option<String> = row.try_get("reject_reason")?;
    let lines: String = row.try_get("lines")?;
    let replay_delivery_minutes: Option<i64> = row.try_get("replay_delivery_minutes")?;
    Ok(Ticket {
        status: TicketStatus::parse(&status)
            .with_context(|| format!("ticket {ticket_id} has an unknown status {status:?}"))?,
        reject_reason: reject_reason
            .map(|reason| {
                domain::parse_reject_reason(&reason).with_context(|| {
                    format!("ticket {ticket_id} has an unknown reject reason {reason:?}")
                })
            })
            .transpose()?,
        reject_detail: row.try_get("reject_detail")?,
        lines: serde_json::from_str(&lines)
            .with_context(|| format!("ticket {ticket_id} has invalid lines"))?,
        replay_delivery_minutes: replay_delivery_minutes
            .map(u32::try_from)
            .transpose()
            .with_context(|| format!("ticket {ticket_id} has invalid replay minutes"))?,
        order_id: row.try_get("order_id")?,
        restaurant_id: row.try_get("restaurant_id")?,
        created_at: row.try_get("created_at")?,
        accepted_at: row.try_get("accepted_at")?,
        ready_by: row.try_get("ready_at")?,
        ready_at: row.try_get("ready_at_actual")?,
        cancelled_at: row.try_get("cancelled_at")?,
        ticket_id,
    })
}

/// Moves an accepted ticket to cancelled at `now` and returns whether it was still
/// accepted. The ticket timer then skips it, because it only readies accepted tickets.
pub(crate) async fn cancel_ticket(
    tx: &mut Transaction<'_, Any>,
    ticket_id: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE tickets SET status = 'cancelled', cancelled_at = $2 \
         WHERE ticket_id = $1 AND status = 'accepted'",
    )
    .bind(ticket_id)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Counts the accepted tickets of `restaurant_id`: the orders it is preparing.
pub(crate) async fn count_open_tickets(
    tx: &mut Transaction<'_, Any>,
    restaurant_id: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM tickets WHERE restaurant_id = $1 AND status = 'accepted'",
    )
    .bind(restaurant_id)
    .fetch_one(&mut **tx)
    .await
}

/// Counts the accepted tickets of each of `restaurant_ids`. A restaurant without
/// one is absent from the result.
pub(crate) async fn count_open_tickets_of(
    tx: &mut Transaction<'_, Any>,
    restaurant_ids: &[&str],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let mut counts = HashMap::with_capacity(restaurant_ids.len());
    for chunk in restaurant_ids.chunks(IDS_PER_READ) {
        let sql = "SELECT restaurant_id, COUNT(*) AS open_tickets FROM tickets \
                   WHERE status = 'accepted' AND restaurant_id IN ({ids}) GROUP BY restaurant_id";
        for row in query_in(sql, chunk).fetch_all(&mut **tx).await? {
            counts.insert(row.try_get("restaurant_id")?, row.try_get("open_tickets")?);
        }
    }
    Ok(counts)
}

/// The maximum number of ids in one `IN` list of a batch read.
pub(crate) const IDS_PER_READ: usize = 500;

/// Batch reads of up to this many ids are kept as prepared statements.
pub(crate) const PREPARED_IDS: usize = 8;

/// Returns `sql` with `{ids}` replaced by a placeholder for each of `ids`, from
/// `$1` on, and the ids bound to them. Only placeholders are formatted in, and
/// short lists, the common case, stay prepared.
pub(crate) fn query_in<'q>(sql: &str, ids: &[&'q str]) -> Query<'q, Any, AnyArguments> {
    let sql = sql.replace("{ids}", &placeholders(1, ids.len()));
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(ids.len() <= PREPARED_IDS);
    for id in ids {
        query = query.bind(*id);
    }
    query
}

/// Lists up to `limit` accepted tickets planned to be ready at or before `now`,
/// oldest planned time first.
pub(crate) async fn due_tickets(
    pool: &AnyPool,
    now: i64,
    limit: i64,
) -> anyhow::Result<Vec<DueTicket>> {
    let rows = sqlx::query(
        "SELECT ticket_id, order_id, restaurant_id, accepted_at, traceparent, \
         replay_delivery_minutes FROM tickets \
         WHERE status = 'accepted' AND ready_at <= $1 ORDER BY ready_at, ticket_id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("failed to list due tickets")?;
    rows.iter()
        .map(|row| {
            let ticket_id: String = row.try_get("ticket_id")?;
            let replay_delivery_minutes: Option<i64> = row.try_get("replay_delivery_minutes")?;
            Ok(DueTicket {
                replay_delivery_minutes: replay_delivery_minutes
                    .map(u32::try_from)
                    .transpose()
                    .with_context(|| format!("ticket {ticket_id} has invalid replay minutes"))?,
                order_id: row.try_get("order_id")?,
                restaurant_id: row.try_get("restaurant_id")?,
                accepted_at: row.try_get("accepted_at")?,
                traceparent: row.try_get("traceparent")?,
                ticket_id,
            })
        })
        .collect()
}

/// Returns the earliest planned ready time of the accepted tickets, if any.
pub(crate) async fn next_ready_by(pool: &AnyPool) -> anyhow::Result<Option<i64>> {
    let next: Option<i64> =
        sqlx::query_scalar("SELECT MIN(ready_at) FROM tickets WHERE status = 'accepted'")
            .fetch_one(pool)
            .await
            .context("failed to read the next ready time")?;
    Ok(next)
}

/// Moves the accepted tickets among `ticket_ids` to ready at `now` and returns
/// the ids of those that were still accepted. A ticket in any other state is left
/// alone.
pub(crate) async fn mark_ready(
    tx: &mut Transaction<'_, Any>,
    ticket_ids: &[&str],
    now: i64,
) -> Result<HashSet<String>, sqlx::Error> {
    let mut updated = HashSet::with_capacity(ticket_ids.len());
    // One statement per timer batch, whose size is bounded by its read.
    for chunk in ticket_ids.chunks(500) {
        let sql = format!(
            "UPDATE tickets SET status = 'ready', ready_at_actual = $1 \
             WHERE status = 'accepted' AND ticket_id IN ({}) RETURNING ticket_id",
            placeholders(2, chunk.len())
        );
        // Only placeholders are formatted in. The text varies with the batch's
        // size, so it is not kept as a prepared statement.
        let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .bind(now);
        for id in chunk {
            query = query.bind(*id);
        }
        updated.extend(query.fetch_all(&mut **tx).await?);
    }
    Ok(updated)
}

/// Counts tickets in total, per status, per reject reason and per order.
pub(crate) async fn ticket_counts(pool: &AnyPool) -> anyhow::Result<TicketCounts> {
    let rows = sqlx::query("SELECT status, COUNT(*) AS tickets FROM tickets GROUP BY status")
        .fetch_all(pool)
        .await
        .context("failed to count tickets per status")?;
    let mut counts = TicketCounts::default();
    for row in rows {
        let status: String = row.try_get("status")?;
        let tickets: i64 = row.try_get("tickets")?;
        counts.tickets += tickets;
        counts.by_status.insert(status, tickets);
    }

    let rows = sqlx::query(
        "SELECT reject_reason, COUNT(*) AS tickets FROM tickets \
         WHERE status = 'rejected' GROUP BY reject_reason",
    )
    .fetch_all(pool)
    .await
    .context("failed to count rejected tickets per reason")?;
    for row in rows {
        let reason: Option<String> = row.try_get("reject_reason")?;
        let tickets: i64 = row.try_get("tickets")?;
        let reason = reason.unwrap_or_else(|| "unknown".to_owned());
        counts.by_reject_reason.insert(reason, tickets);
    }

    counts.orders_with_several_tickets = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT order_id FROM tickets GROUP BY order_id \
         HAVING COUNT(*) > 1) AS repeated",
    )
    .fetch_one(pool)
    .await
    .context("failed to count orders with several tickets")?;
    Ok(counts)
}

/// Runs `SELECT 1` to check that the database responds.
pub(crate) async fn ping(pool: &AnyPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}
