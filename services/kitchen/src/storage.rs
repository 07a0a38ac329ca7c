//! Every SQL statement of the kitchen.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::domain::{Ticket, TicketStatus};

/// An accepted ticket whose planned ready time has passed.
#[derive(Debug, Clone)]
pub(crate) struct DueTicket {
    pub(crate) ticket_id: String,
    pub(crate) order_id: String,
    pub(crate) restaurant_id: String,
    pub(crate) accepted_at: i64,
    pub(crate) traceparent: Option<String>,
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
}

/// Inserts `ticket` unless its order already has one, and returns whether it did.
pub(crate) async fn insert_ticket(
    tx: &mut Transaction<'_, Any>,
    ticket: &Ticket,
    traceparent: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let lines = serde_json::to_string(&ticket.lines).expect("order lines always serialize");
    let inserted = sqlx::query(
        "INSERT INTO tickets (ticket_id, order_id, restaurant_id, status, lines, traceparent, \
         accepted_at, ready_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(&ticket.ticket_id)
    .bind(&ticket.order_id)
    .bind(&ticket.restaurant_id)
    .bind(ticket.status.as_str())
    .bind(lines)
    .bind(traceparent)
    .bind(ticket.accepted_at)
    .bind(ticket.ready_by)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Finds the ticket of `order_id`.
pub(crate) async fn find_ticket(pool: &AnyPool, order_id: &str) -> anyhow::Result<Option<Ticket>> {
    let row = sqlx::query(
        "SELECT ticket_id, order_id, restaurant_id, status, lines, accepted_at, ready_at, \
         ready_at_actual FROM tickets WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await
    .with_context(|| format!("failed to read the ticket of order {order_id}"))?;
    row.map(|row| ticket_from_row(&row)).transpose()
}

fn ticket_from_row(row: &AnyRow) -> anyhow::Result<Ticket> {
    let ticket_id: String = row.try_get("ticket_id")?;
    let status: String = row.try_get("status")?;
    let lines: String = row.try_get("lines")?;
    Ok(Ticket {
        status: TicketStatus::parse(&status)
            .with_context(|| format!("ticket {ticket_id} has an unknown status {status:?}"))?,
        lines: serde_json::from_str(&lines)
            .with_context(|| format!("ticket {ticket_id} has invalid lines"))?,
        order_id: row.try_get("order_id")?,
        restaurant_id: row.try_get("restaurant_id")?,
        accepted_at: row.try_get("accepted_at")?,
        ready_by: row.try_get("ready_at")?,
        ready_at: row.try_get("ready_at_actual")?,
        ticket_id,
    })
}

/// Lists up to `limit` accepted tickets planned to be ready at or before `now`,
/// oldest planned time first.
pub(crate) async fn due_tickets(
    pool: &AnyPool,
    now: i64,
    limit: i64,
) -> anyhow::Result<Vec<DueTicket>> {
    let rows = sqlx::query(
        "SELECT ticket_id, order_id, restaurant_id, accepted_at, traceparent FROM tickets \
         WHERE status = 'accepted' AND ready_at <= $1 ORDER BY ready_at, ticket_id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("failed to list due tickets")?;
    rows.iter()
        .map(|row| {
            Ok(DueTicket {
                ticket_id: row.try_get("ticket_id")?,
                order_id: row.try_get("order_id")?,
                restaurant_id: row.try_get("restaurant_id")?,
                accepted_at: row.try_get("accepted_at")?,
                traceparent: row.try_get("traceparent")?,
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

/// Moves an accepted ticket to ready at `now` and returns whether it was still
/// accepted. A ticket in any other state is left alone.
pub(crate) async fn mark_ready(
    tx: &mut Transaction<'_, Any>,
    ticket_id: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE tickets SET status = 'ready', ready_at_actual = $2 \
         WHERE ticket_id = $1 AND status = 'accepted'",
    )
    .bind(ticket_id)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Counts tickets in total, per status and per order.
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
