//! Assigning couriers to deliveries.
//!
//! Assignment runs inside the caller's write transaction, so the free couriers it
//! reads cannot change before it commits on SQLite, where write transactions run one
//! at a time. On PostgreSQL the conditional updates in `storage` keep a courier from
//! being claimed twice.

use std::time::Duration;

use sqlx::{Any, Transaction};

use crate::domain::{self, Position, TimeScale};
use crate::storage::{self, WaitingDelivery};

/// A courier assigned to a delivery.
#[derive(Debug, Clone)]
pub(crate) struct Assignment {
    pub(crate) courier_id: String,
    /// Distance from the courier to the restaurant, when the restaurant's position is
    /// known.
    pub(crate) distance_km: Option<f64>,
    pub(crate) pickup_due: i64,
}

/// Assigns the free courier nearest to the delivery's restaurant, or any free courier
/// when the replica does not contain the restaurant, and plans its rides from `now`.
///
/// Returns `None`, changing nothing, when no courier is free.
///
/// # Errors
///
/// Fails on a database error, or when the delivery is no longer waiting. The caller
/// then rolls back, which also releases the claimed courier.
pub(crate) async fn assign(
    tx: &mut Transaction<'_, Any>,
    delivery: &WaitingDelivery,
    now: i64,
    scale: TimeScale,
) -> anyhow::Result<Option<Assignment>> {
    let restaurant = storage::restaurant_position(tx, &delivery.restaurant_id).await?;
    let candidates = domain::rank_couriers(restaurant, storage::free_couriers(tx).await?);

    for courier in candidates {
        if !storage::claim_courier(tx, &courier.courier_id, &delivery.order_id).await? {
            // Another transaction claimed it after the list was read, which PostgreSQL allows.
            continue;
        }
        let share = Duration::from_millis(u64::try_from(delivery.courier_share_ms).unwrap_or(0));
        let plan = domain::plan_ride(now, share, scale);
        if !storage::mark_assigned(tx, &delivery.order_id, &courier.courier_id, now, plan).await? {
            anyhow::bail!(
                "failed to assign courier {} to order {}: the delivery is no longer waiting",
                courier.courier_id,
                delivery.order_id
            );
        }
        return Ok(Some(Assignment {
            distance_km: restaurant.map(|at: Position| domain::distance_km(at, courier.position)),
            courier_id: courier.courier_id,
            pickup_due: plan.pickup_due,
        }));
    }
    Ok(None)
}
