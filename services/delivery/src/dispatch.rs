//! Assigning couriers to deliveries.
//!
//! Assignment runs inside the caller's write transaction. On PostgreSQL it locks
//! the waiting deliveries and free couriers it reads (`FOR UPDATE SKIP LOCKED`),
//! so assignments in other transactions, in this process or another replica, take
//! other deliveries and couriers instead of waiting. A SQLite file has one writer.
//! The conditional updates in `storage` still reject a second claim of one courier
//! or delivery, and the assignment moves on to the next candidate.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::{Any, Transaction};

use crate::domain::{self, FreeCourier, Position, TimeScale};
use crate::storage;

/// A courier assigned to a delivery.
#[derive(Debug, Clone)]
pub(crate) struct Assignment {
    pub(crate) order_id: String,
    pub(crate) courier_id: String,
    /// Distance from the courier to the restaurant, when the restaurant's position is
    /// known.
    pub(crate) distance_km: Option<f64>,
    pub(crate) pickup_due: i64,
}

impl Assignment {
    /// Traces the assignment, with the time to pickup counted from `now`.
    pub(crate) fn trace(&self, now: i64) {
        tracing::trace!(
            order_id = %self.order_id,
            courier_id = %self.courier_id,
            distance_km = self.distance_km,
            pickup_in_ms = self.pickup_due - now,
            "courier assigned"
        );
    }
}

/// Free couriers the database proposes for each delivery, ranked exactly here.
const CANDIDATES: usize = 16;

/// Assigns free couriers to the longest-waiting deliveries, up to `limit` of them,
/// and plans their rides from `now`. Each delivery gets the free courier nearest to
/// its restaurant, or any free courier when the replica does not contain the
/// restaurant.
///
/// Returns the assignments, none when no courier is free or nothing waits.
///
/// # Errors
///
/// Fails on a database error, or when a delivery stopped waiting after it was read.
/// The caller then rolls back, which also releases the claimed couriers.
pub(crate) async fn assign_waiting(
    tx: &mut Transaction<'_, Any>,
    limit: usize,
    now: i64,
    scale: TimeScale,
) -> anyhow::Result<Vec<Assignment>> {
    let waiting = storage::oldest_waiting(tx, limit).await?;
    let mut positions: HashMap<String, Option<Position>> = HashMap::new();
    let mut assignments = Vec::with_capacity(waiting.len());

    for delivery in waiting {
        let restaurant = match positions.get(&delivery.restaurant_id) {
            Some(known) => *known,
            None => {
                let found = storage::restaurant_position(tx, &delivery.restaurant_id).await?;
                positions.insert(delivery.restaurant_id.clone(), found);
                found
            }
        };
        let Some(courier) = claim_nearest(tx, restaurant, &delivery.order_id).await? else {
            break;
        };
        let share = Duration::from_millis(u64::try_from(delivery.courier_share_ms).unwrap_or(0));
        let plan = domain::plan_ride(now, share, scale);
        if !storage::mark_assigned(tx, &delivery.order_id, &courier.courier_id, now, plan).await? {
            anyhow::bail!(
                "failed to assign courier {} to order {}: the delivery is no longer waiting",
                courier.courier_id,
                delivery.order_id
            );
        }
        assignments.push(Assignment {
            distance_km: restaurant.map(|at| domain::distance_km(at, courier.position)),
            order_id: delivery.order_id,
            courier_id: courier.courier_id,
            pickup_due: plan.pickup_due,
        });
    }
    Ok(assignments)
}

/// Claims the free courier nearest to `restaurant` for `order_id`, or returns
/// `None` when no courier is free.
async fn claim_nearest(
    tx: &mut Transaction<'_, Any>,
    restaurant: Option<Position>,
    order_id: &str,
) -> anyhow::Result<Option<FreeCourier>> {
    loop {
        let mut candidates = storage::nearest_free_couriers(tx, restaurant, CANDIDATES).await?;
        if candidates.is_empty() {
            return Ok(None);
        }
        while let Some(index) = domain::nearest_courier(restaurant, &candidates) {
            let courier = candidates.swap_remove(index);
            if storage::claim_courier(tx, &courier.courier_id, order_id).await? {
                return Ok(Some(courier));
            }
            // Claimed by another writer after the list was read.
        }
    }
}
