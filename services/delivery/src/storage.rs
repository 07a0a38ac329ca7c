//! Every SQL statement of the delivery service.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, Row, Transaction};
use tiffin_events::restaurant::RestaurantUpserted;

use crate::domain::{Delivery, DeliveryStatus, FreeCourier, Position, RidePlan};

// === Restaurant replica ===

/// Stores the restaurant's position unless the replica already contains the same or a
/// later revision.
pub(crate) async fn upsert_restaurant(
    tx: &mut Transaction<'_, Any>,
    restaurant: &RestaurantUpserted,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO restaurants (restaurant_id, lat, lon, revision) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (restaurant_id) DO UPDATE SET lat = excluded.lat, lon = excluded.lon, \
           revision = excluded.revision \
         WHERE excluded.revision > restaurants.revision",
    )
    .bind(&restaurant.restaurant_id)
    .bind(restaurant.lat)
    .bind(restaurant.lon)
    .bind(restaurant.revision)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Finds the position of `restaurant_id`, or `None` when the replica does not contain it.
pub(crate) async fn restaurant_position(
    tx: &mut Transaction<'_, Any>,
    restaurant_id: &str,
) -> Result<Option<Position>, sqlx::Error> {
    let row = sqlx::query("SELECT lat, lon FROM restaurants WHERE restaurant_id = $1")
        .bind(restaurant_id)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(|row| position_from_row(&row)).transpose()
}

/// Lists every restaurant of the replica with its position, in no particular order.
pub(crate) async fn restaurant_positions(
    tx: &mut Transaction<'_, Any>,
) -> Result<Vec<(String, Position)>, sqlx::Error> {
    let rows = sqlx::query("SELECT restaurant_id, lat, lon FROM restaurants")
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("restaurant_id")?, position_from_row(row)?)))
        .collect()
}

fn position_from_row(row: &AnyRow) -> Result<Position, sqlx::Error> {
    Ok(Position {
        lat: row.try_get("lat")?,
        lon: row.try_get("lon")?,
    })
}

// === Couriers ===

/// Returns true when the fleet has been created.
pub(crate) async fn has_couriers(tx: &mut Transaction<'_, Any>) -> Result<bool, sqlx::Error> {
    let found: Option<String> = sqlx::query_scalar("SELECT courier_id FROM couriers LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    Ok(found.is_some())
}

/// Inserts a free courier at `position` unless one with that id exists.
pub(crate) async fn insert_courier(
    tx: &mut Transaction<'_, Any>,
    courier_id: &str,
    position: Position,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO couriers (courier_id, status, order_id, lat, lon, created_at) \
         VALUES ($1, 'free', NULL, $2, $3, $4) ON CONFLICT (courier_id) DO NOTHING",
    )
    .bind(courier_id)
    .bind(position.lat)
    .bind(position.lon)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Half the side of the first square of the map searched for free couriers, in
/// degrees of latitude: about 1.1 km.
const FIRST_SQUARE: f64 = 0.01;

/// How many squares, each four times as wide as the one before, are searched
/// before the whole fleet. The widest is about 36 km across.
const SQUARES: usize = 3;

/// Lists up to `limit` free couriers, those nearest to `near` first, or those of
/// the lowest ids when `near` is `None`, and locks them on PostgreSQL, skipping
/// those another assignment holds.
///
/// The database orders by a flat-earth distance (longitude scaled by the cosine of
/// the latitude). Within a city that ranks couriers as the great-circle distance
/// does except for near ties, so the caller ranks the few it gets exactly. Sending every
/// free courier instead cost more than the rest of an assignment.
///
/// Ranking the whole fleet for every assignment cost about 1.8 ms of PostgreSQL time
/// with 2,000 couriers. So the search first reads a square around `near` through
/// the index of free couriers by latitude. Every courier outside the square is
/// farther from its centre than half its side, so a full list whose farthest member
/// is within that distance is what ranking the whole fleet would return. Otherwise
/// the search widens the square. On PostgreSQL the couriers a narrower square
/// returned stay locked until the transaction ends, so concurrent assignments skip
/// up to a few dozen couriers for that long.
pub(crate) async fn nearest_free_couriers(
    tx: &mut Transaction<'_, Any>,
    near: Option<Position>,
    limit: usize,
) -> Result<Vec<FreeCourier>, sqlx::Error> {
    let locks = skip_locked(tx);
    let count = i64::try_from(limit).unwrap_or(i64::MAX);
    let Some(at) = near else {
        let sql = format!(
            "SELECT courier_id, lat, lon FROM couriers WHERE status = 'free' \
             ORDER BY courier_id LIMIT $1{locks}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(count)
            .fetch_all(&mut **tx)
            .await?;
        return free_couriers(&rows);
    };
    let lon_scale = at.lat.to_radians().cos().powi(2);
    let distance = |p: &Position| {
        (p.lat - at.lat) * (p.lat - at.lat) + (p.lon - at.lon) * (p.lon - at.lon) * lon_scale
    };
    let order = "ORDER BY (lat - $1) * (lat - $1) + (lon - $2) * (lon - $2) * $3, courier_id";

    let mut half = FIRST_SQUARE;
    for _ in 0..SQUARES {
        let half_lon = half / lon_scale.sqrt();
        let sql = format!(
            "SELECT courier_id, lat, lon FROM couriers WHERE status = 'free' \
             AND lat BETWEEN $4 AND $5 AND lon BETWEEN $6 AND $7 {order} LIMIT $8{locks}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(at.lat)
            .bind(at.lon)
            .bind(lon_scale)
            .bind(at.lat - half)
            .bind(at.lat + half)
            .bind(at.lon - half_lon)
            .bind(at.lon + half_lon)
            .bind(count)
            .fetch_all(&mut **tx)
            .await?;
        let found = free_couriers(&rows)?;
        if found.len() == limit
            && found
                .last()
                .is_some_and(|farthest| distance(&farthest.position) <= half * half)
        {
            return Ok(found);
        }
        half *= 4.0;
    }
    let sql = format!(
        "SELECT courier_id, lat, lon FROM couriers WHERE status = 'free' {order} LIMIT $4{locks}"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(at.lat)
        .bind(at.lon)
        .bind(lon_scale)
        .bind(count)
        .fetch_all(&mut **tx)
        .await?;
    free_couriers(&rows)
}

fn free_couriers(rows: &[AnyRow]) -> Result<Vec<FreeCourier>, sqlx::Error> {
    rows.iter()
        .map(|row| {
            Ok(FreeCourier {
                courier_id: row.try_get("courier_id")?,
                position: position_from_row(row)?,
            })
        })
        .collect()
}

/// Makes a free courier busy with the delivery of `order_id`, and returns whether it
/// was still free.
pub(crate) async fn claim_courier(
    tx: &mut Transaction<'_, Any>,
    courier_id: &str,
    order_id: &str,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE couriers SET status = 'busy', order_id = $2 \
         WHERE courier_id = $1 AND status = 'free'",
    )
    .bind(courier_id)
    .bind(order_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Frees a courier busy with `order_id` without moving it, and returns whether it
/// was busy with that order.
pub(crate) async fn release_courier(
    tx: &mut Transaction<'_, Any>,
    courier_id: &str,
    order_id: &str,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE couriers SET status = 'free', order_id = NULL \
         WHERE courier_id = $1 AND order_id = $2",
    )
    .bind(courier_id)
    .bind(order_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Frees a courier busy with `order_id` and moves it to the position of
/// `restaurant_id`, or leaves it where it is when the replica does not contain that
/// restaurant. Returns whether the courier was busy with that order.
pub(crate) async fn release_courier_at_restaurant(
    tx: &mut Transaction<'_, Any>,
    courier_id: &str,
    order_id: &str,
    restaurant_id: &str,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE couriers SET status = 'free', order_id = NULL, \
           lat = COALESCE((SELECT r.lat FROM restaurants r WHERE r.restaurant_id = $3), lat), \
           lon = COALESCE((SELECT r.lon FROM restaurants r WHERE r.restaurant_id = $4), lon) \
         WHERE courier_id = $1 AND order_id = $2",
    )
    .bind(courier_id)
    .bind(order_id)
    .bind(restaurant_id)
    .bind(restaurant_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

// === Deliveries ===

/// A delivery to insert when its order is ready.
#[derive(Debug, Clone)]
pub(crate) struct NewDelivery<'a> {
    pub(crate) delivery_id: &'a str,
    pub(crate) order_id: &'a str,
    pub(crate) restaurant_id: &'a str,
    pub(crate) courier_share_ms: i64,
    pub(crate) traceparent: Option<&'a str>,
    pub(crate) created_at: i64,
}

/// Inserts a waiting delivery unless its order already has one, and returns whether
/// it did.
pub(crate) async fn insert_waiting(
    tx: &mut Transaction<'_, Any>,
    delivery: &NewDelivery<'_>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO deliveries (delivery_id, order_id, restaurant_id, status, courier_share_ms, \
           traceparent, created_at) VALUES ($1, $2, $3, 'waiting', $4, $5, $6) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(delivery.delivery_id)
    .bind(delivery.order_id)
    .bind(delivery.restaurant_id)
    .bind(delivery.courier_share_ms)
    .bind(delivery.traceparent)
    .bind(delivery.created_at)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Inserts a cancelled delivery for an order that has none yet, so that a later
/// `order.ready` creates nothing, and returns whether it did.
pub(crate) async fn insert_cancelled(
    tx: &mut Transaction<'_, Any>,
    delivery_id: &str,
    order_id: &str,
    restaurant_id: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO deliveries (delivery_id, order_id, restaurant_id, status, created_at, \
           cancelled_at) VALUES ($1, $2, $3, 'cancelled', $4, $5) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(delivery_id)
    .bind(order_id)
    .bind(restaurant_id)
    .bind(now)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The status of an order's delivery and its courier, if any.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryState {
    pub(crate) status: DeliveryStatus,
    pub(crate) courier_id: Option<String>,
}

/// Reads the status and courier of the delivery of `order_id`.
pub(crate) async fn delivery_state(
    tx: &mut Transaction<'_, Any>,
    order_id: &str,
) -> anyhow::Result<Option<DeliveryState>> {
    let row = sqlx::query("SELECT status, courier_id FROM deliveries WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let status: String = row.try_get("status")?;
    Ok(Some(DeliveryState {
        status: DeliveryStatus::parse(&status).with_context(|| {
            format!("the delivery of order {order_id} has an unknown status {status:?}")
        })?,
        courier_id: row.try_get("courier_id")?,
    }))
}

/// A delivery that waits for a courier.
#[derive(Debug, Clone)]
pub(crate) struct WaitingDelivery {
    pub(crate) order_id: String,
    pub(crate) restaurant_id: String,
    pub(crate) courier_share_ms: i64,
}

/// Returns the clause that locks the rows a query reads and passes over those
/// that another transaction has locked: PostgreSQL's `FOR UPDATE SKIP LOCKED`, so
/// concurrent assignments take different deliveries and couriers without waiting
/// for each other. A SQLite file has one writer, which needs no row locks.
fn skip_locked(tx: &Transaction<'_, Any>) -> &'static str {
    // sqlx's name of the PostgreSQL backend (`<Postgres as Database>::NAME`).
    if tx.backend_name() == "PostgreSQL" {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    }
}

/// Lists up to `limit` deliveries waiting for a courier, the longest waiting first,
/// and locks them on PostgreSQL, skipping those another assignment holds.
pub(crate) async fn oldest_waiting(
    tx: &mut Transaction<'_, Any>,
    limit: usize,
) -> anyhow::Result<Vec<WaitingDelivery>> {
    let sql = format!(
        "SELECT order_id, restaurant_id, courier_share_ms FROM deliveries \
         WHERE status = 'waiting' ORDER BY created_at, order_id LIMIT $1{}",
        skip_locked(tx)
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut **tx)
        .await
        .context("failed to read the waiting deliveries")?;
    rows.iter()
        .map(|row| {
            let order_id: String = row.try_get("order_id")?;
            let courier_share_ms: Option<i64> = row.try_get("courier_share_ms")?;
            Ok(WaitingDelivery {
                courier_share_ms: courier_share_ms.with_context(|| {
                    format!("the waiting delivery of order {order_id} has no courier share")
                })?,
                restaurant_id: row.try_get("restaurant_id")?,
                order_id,
            })
        })
        .collect()
}

/// Returns true when a delivery waits and a courier is free, so that an assignment
/// pass can make progress.
pub(crate) async fn assignable(pool: &AnyPool) -> anyhow::Result<bool> {
    let waiting: Option<String> =
        sqlx::query_scalar("SELECT order_id FROM deliveries WHERE status = 'waiting' LIMIT 1")
            .fetch_optional(pool)
            .await
            .context("failed to look for waiting deliveries")?;
    if waiting.is_none() {
        return Ok(false);
    }
    let free: Option<String> =
        sqlx::query_scalar("SELECT courier_id FROM couriers WHERE status = 'free' LIMIT 1")
            .fetch_optional(pool)
            .await
            .context("failed to look for free couriers")?;
    Ok(free.is_some())
}

/// Moves a waiting delivery to assigned with its courier and ride plan, and returns
/// whether it was still waiting.
pub(crate) async fn mark_assigned(
    tx: &mut Transaction<'_, Any>,
    order_id: &str,
    courier_id: &str,
    assigned_at: i64,
    plan: RidePlan,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE deliveries SET status = 'assigned', courier_id = $2, assigned_at = $3, \
           pickup_due = $4, delivered_due = $5 \
         WHERE order_id = $1 AND status = 'waiting'",
    )
    .bind(order_id)
    .bind(courier_id)
    .bind(assigned_at)
    .bind(plan.pickup_due)
    .bind(plan.delivered_due)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Moves the delivery of `order_id` from `from` to cancelled at `now`, and returns
/// whether it was still in `from`.
pub(crate) async fn mark_cancelled(
    tx: &mut Transaction<'_, Any>,
    order_id: &str,
    from: DeliveryStatus,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE deliveries SET status = 'cancelled', cancelled_at = $3 \
         WHERE order_id = $1 AND status = $2",
    )
    .bind(order_id)
    .bind(from.as_str())
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// A delivery whose next ride has ended.
#[derive(Debug, Clone)]
pub(crate) struct DueRide {
    pub(crate) order_id: String,
    pub(crate) restaurant_id: String,
    pub(crate) courier_id: String,
    pub(crate) assigned_at: i64,
    pub(crate) traceparent: Option<String>,
}

/// Lists up to `limit` assigned deliveries whose pickup time is at or before `now`,
/// earliest first.
pub(crate) async fn due_pickups(
    pool: &AnyPool,
    now: i64,
    limit: i64,
) -> anyhow::Result<Vec<DueRide>> {
    let rows = sqlx::query(
        "SELECT order_id, restaurant_id, courier_id, assigned_at, traceparent FROM deliveries \
         WHERE status = 'assigned' AND pickup_due <= $1 ORDER BY pickup_due, order_id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("failed to list due pickups")?;
    rows.iter().map(due_ride_from_row).collect()
}

/// Lists up to `limit` picked-up deliveries whose delivery time is at or before
/// `now`, earliest first.
pub(crate) async fn due_handovers(
    pool: &AnyPool,
    now: i64,
    limit: i64,
) -> anyhow::Result<Vec<DueRide>> {
    let rows = sqlx::query(
        "SELECT order_id, restaurant_id, courier_id, assigned_at, traceparent FROM deliveries \
         WHERE status = 'picked_up' AND delivered_due <= $1 \
         ORDER BY delivered_due, order_id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("failed to list due handovers")?;
    rows.iter().map(due_ride_from_row).collect()
}

fn due_ride_from_row(row: &AnyRow) -> anyhow::Result<DueRide> {
    let order_id: String = row.try_get("order_id")?;
    let courier_id: Option<String> = row.try_get("courier_id")?;
    let assigned_at: Option<i64> = row.try_get("assigned_at")?;
    Ok(DueRide {
        courier_id: courier_id
            .with_context(|| format!("the delivery of order {order_id} has no courier"))?,
        assigned_at: assigned_at
            .with_context(|| format!("the delivery of order {order_id} has no assignment time"))?,
        restaurant_id: row.try_get("restaurant_id")?,
        traceparent: row.try_get("traceparent")?,
        order_id,
    })
}

/// Returns the earliest planned pickup or delivery time of the deliveries under way,
/// if any.
pub(crate) async fn next_due(pool: &AnyPool) -> anyhow::Result<Option<i64>> {
    let pickup: Option<i64> =
        sqlx::query_scalar("SELECT MIN(pickup_due) FROM deliveries WHERE status = 'assigned'")
            .fetch_one(pool)
            .await
            .context("failed to read the next pickup time")?;
    let handover: Option<i64> =
        sqlx::query_scalar("SELECT MIN(delivered_due) FROM deliveries WHERE status = 'picked_up'")
            .fetch_one(pool)
            .await
            .context("failed to read the next delivery time")?;
    Ok(pickup.into_iter().chain(handover).min())
}

/// Moves an assigned delivery to picked up at `now`, and returns whether it was still
/// assigned.
pub(crate) async fn mark_picked_up(
    tx: &mut Transaction<'_, Any>,
    order_id: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE deliveries SET status = 'picked_up', picked_up_at = $2 \
         WHERE order_id = $1 AND status = 'assigned'",
    )
    .bind(order_id)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Moves a picked-up delivery to delivered at `now`, and returns whether it was still
/// picked up.
pub(crate) async fn mark_delivered(
    tx: &mut Transaction<'_, Any>,
    order_id: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE deliveries SET status = 'delivered', delivered_at = $2 \
         WHERE order_id = $1 AND status = 'picked_up'",
    )
    .bind(order_id)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Finds the delivery of `order_id`.
pub(crate) async fn find_delivery(
    pool: &AnyPool,
    order_id: &str,
) -> anyhow::Result<Option<Delivery>> {
    let row = sqlx::query(
        "SELECT delivery_id, order_id, restaurant_id, status, courier_id, created_at, \
           assigned_at, pickup_due, picked_up_at, delivered_due, delivered_at, cancelled_at \
         FROM deliveries WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await
    .with_context(|| format!("failed to read the delivery of order {order_id}"))?;
    row.map(|row| delivery_from_row(&row)).transpose()
}

fn delivery_from_row(row: &AnyRow) -> anyhow::Result<Delivery> {
    let delivery_id: String = row.try_get("delivery_id")?;
    let status: String = row.try_get("status")?;
    Ok(Delivery {
        status: DeliveryStatus::parse(&status)
            .with_context(|| format!("delivery {delivery_id} has an unknown status {status:?}"))?,
        order_id: row.try_get("order_id")?,
        restaurant_id: row.try_get("restaurant_id")?,
        courier_id: row.try_get("courier_id")?,
        created_at: row.try_get("created_at")?,
        assigned_at: row.try_get("assigned_at")?,
        pickup_due: row.try_get("pickup_due")?,
        picked_up_at: row.try_get("picked_up_at")?,
        delivered_due: row.try_get("delivered_due")?,
        delivered_at: row.try_get("delivered_at")?,
        cancelled_at: row.try_get("cancelled_at")?,
        delivery_id,
    })
}

// === Reports ===

/// Delivery counts for reports and consistency checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryCounts {
    /// All deliveries, cancelled ones included.
    pub deliveries: i64,
    /// Orders that have more than one delivery. The unique `order_id` column keeps
    /// this at 0, so a report that shows anything else has found a bug.
    pub orders_with_several_deliveries: i64,
    /// Deliveries per status (`waiting`, `assigned`, `picked_up`, `delivered`,
    /// `cancelled`). Statuses without deliveries are absent.
    pub by_status: BTreeMap<String, i64>,
}

/// Courier counts: the fleet and how much of it is at work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CourierCounts {
    /// All couriers, which is 0 until the replica contains a restaurant.
    pub couriers: i64,
    /// Couriers without a delivery.
    pub free: i64,
    /// Couriers busy with a delivery.
    pub busy: i64,
}

/// Counts deliveries in total, per status and per order.
pub(crate) async fn delivery_counts(pool: &AnyPool) -> anyhow::Result<DeliveryCounts> {
    let rows = sqlx::query("SELECT status, COUNT(*) AS deliveries FROM deliveries GROUP BY status")
        .fetch_all(pool)
        .await
        .context("failed to count deliveries per status")?;
    let mut counts = DeliveryCounts::default();
    for row in rows {
        let status: String = row.try_get("status")?;
        let deliveries: i64 = row.try_get("deliveries")?;
        counts.deliveries += deliveries;
        counts.by_status.insert(status, deliveries);
    }

    counts.orders_with_several_deliveries = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT order_id FROM deliveries GROUP BY order_id \
         HAVING COUNT(*) > 1) AS repeated",
    )
    .fetch_one(pool)
    .await
    .context("failed to count orders with several deliveries")?;
    Ok(counts)
}

/// Counts couriers in total, free and busy.
pub(crate) async fn courier_counts(pool: &AnyPool) -> anyhow::Result<CourierCounts> {
    let rows = sqlx::query("SELECT status, COUNT(*) AS couriers FROM couriers GROUP BY status")
        .fetch_all(pool)
        .await
        .context("failed to count couriers per status")?;
    let mut counts = CourierCounts::default();
    for row in rows {
        let status: String = row.try_get("status")?;
        let couriers: i64 = row.try_get("couriers")?;
        counts.couriers += couriers;
        match status.as_str() {
            "free" => counts.free = couriers,
            "busy" => counts.busy = couriers,
            other => anyhow::bail!("{couriers} couriers have an unknown status {other:?}"),
        }
    }
    Ok(counts)
}

/// Runs `SELECT 1` to check that the database responds.
pub(crate) async fn ping(pool: &AnyPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tiffin_runtime::db::{Database, PoolSettings};
    use tiffin_runtime::testing::TestDatabase;

    use super::*;
    use crate::MIGRATOR;

    const CENTRE: Position = Position {
        lat: 60.17,
        lon: 24.94,
    };

    /// Far from the rest of the fleet, with two couriers in corners of the first
    /// square searched around it and a nearer one just outside its edge.
    const LONELY: Position = Position {
        lat: 64.0,
        lon: 20.0,
    };

    fn around_lonely() -> [(&'static str, Position); 3] {
        let corner_lon = 0.9 * FIRST_SQUARE / LONELY.lat.to_radians().cos();
        [
            (
                "corner-a",
                Position {
                    lat: LONELY.lat + 0.9 * FIRST_SQUARE,
                    lon: LONELY.lon + corner_lon,
                },
            ),
            (
                "corner-b",
                Position {
                    lat: LONELY.lat - 0.9 * FIRST_SQUARE,
                    lon: LONELY.lon - corner_lon,
                },
            ),
            (
                "outside-edge",
                Position {
                    lat: LONELY.lat + 1.05 * FIRST_SQUARE,
                    lon: LONELY.lon,
                },
            ),
        ]
    }

    /// Creates a dense centre, a sparse suburb and a few far-off couriers, so that a
    /// search ends in the first square, in a wider one or in the whole fleet. Every
    /// seventh courier is busy.
    async fn fill(db: &Database) -> Vec<FreeCourier> {
        let mut seed: u64 = 42;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let mut tx = db.begin_write().await.expect("begin");
        let mut free = Vec::new();
        for k in 0..600 {
            let spread = match k % 10 {
                0..=6 => 0.02,
                7 | 8 => 0.3,
                _ => 3.0,
            };
            let position = Position {
                lat: CENTRE.lat + next() * spread,
                lon: CENTRE.lon + next() * spread * 2.0,
            };
            let courier_id = format!("courier-{k:03}");
            insert_courier(&mut tx, &courier_id, position, 0)
                .await
                .expect("insert");
            if k % 7 == 0 {
                assert!(
                    claim_courier(&mut tx, &courier_id, &format!("order-{k}"))
                        .await
                        .expect("claim")
                );
            } else {
                free.push(FreeCourier {
                    courier_id,
                    position,
                });
            }
        }
        for (courier_id, position) in around_lonely() {
            insert_courier(&mut tx, courier_id, position, 0)
                .await
                .expect("insert");
            free.push(FreeCourier {
                courier_id: courier_id.to_owned(),
                position,
            });
        }
        tx.commit().await.expect("commit");
        free
    }

    /// Ranks every free courier, as the search must.
    fn ranked(free: &[FreeCourier], at: Position, limit: usize) -> Vec<String> {
        let scale = at.lat.to_radians().cos().powi(2);
        let distance = |p: &Position| {
            (p.lat - at.lat) * (p.lat - at.lat) + (p.lon - at.lon) * (p.lon - at.lon) * scale
        };
        let mut all: Vec<&FreeCourier> = free.iter().collect();
        all.sort_by(|a, b| {
            distance(&a.position)
                .total_cmp(&distance(&b.position))
                .then_with(|| a.courier_id.cmp(&b.courier_id))
        });
        all.into_iter()
            .take(limit)
            .map(|c| c.courier_id.clone())
            .collect()
    }

    async fn search_matches_ranking_the_fleet(db: &Database) {
        let free = fill(db).await;
        let probes = [
            CENTRE,
            Position {
                lat: 60.25,
                lon: 25.1,
            },
            Position {
                lat: 61.5,
                lon: 23.8,
            },
            LONELY,
        ];
        for at in probes {
            for limit in [1, 2, 16, 200, 1000] {
                let mut tx = db.begin_write().await.expect("begin");
                let found = nearest_free_couriers(&mut tx, Some(at), limit)
                    .await
                    .expect("search");
                tx.rollback().await.expect("rollback");

                let ids: Vec<String> = found.into_iter().map(|c| c.courier_id).collect();
                assert_eq!(ids, ranked(&free, at, limit), "near {at:?}, limit {limit}");
            }
        }
        // The case the widening exists for: the first square contains two couriers,
        // but the nearest is outside it.
        assert_eq!(ranked(&free, LONELY, 2), ["outside-edge", "corner-a"]);
    }

    #[tokio::test]
    async fn sqlite_search_matches_ranking_the_fleet() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = Database::sqlite_url(dir.path(), "delivery");
        let db = Database::open(&url, &PoolSettings::default(), &MIGRATOR)
            .await
            .expect("open");

        search_matches_ranking_the_fleet(&db).await;

        db.close().await;
    }

    #[tokio::test]
    async fn postgres_search_matches_ranking_the_fleet() {
        let Some(test_db) = TestDatabase::create().await else {
            return;
        };
        let db = Database::open(test_db.url(), &PoolSettings::default(), &MIGRATOR)
            .await
            .expect("open");

        search_matches_ranking_the_fleet(&db).await;

        db.close().await;
        test_db.close().await;
    }
}
