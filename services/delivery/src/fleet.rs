//! The courier fleet, created once.
//!
//! Couriers start at restaurants of the replica, so the fleet is created only once
//! the replica contains restaurants: at start when an earlier run filled the replica,
//! or else the first time the replica has read the catalog's stream to its end.
//! Creating it after the first batch of events instead would place every courier
//! among the few restaurants that batch carried.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::{Any, Transaction};
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;
use tiffin_runtime::time::now_millis;
use tokio::sync::{Notify, watch};

use crate::domain;
use crate::storage;

/// The result of [`create_once`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FleetOutcome {
    /// The fleet was created with this many couriers.
    Created(usize),
    /// The fleet existed already, and nothing changed.
    Exists,
    /// The replica contains no restaurant yet, and nothing changed.
    NoRestaurants,
}

/// Creates `count` free couriers in one transaction unless the fleet exists or the
/// replica contains no restaurant.
///
/// Courier `k` (counting from 0) is `courier-<k>` and starts at the restaurant with
/// index `fnv1a64("courier<k>") % restaurants` among the replica's restaurants
/// sorted by id, compared byte by byte so that every database sorts the same way.
///
/// # Errors
///
/// Fails on a database error, and then changes nothing.
pub(crate) async fn create_once(db: &Database, count: usize) -> anyhow::Result<FleetOutcome> {
    let mut tx = db
        .begin_write()
        .await
        .context("failed to begin creating the courier fleet")?;
    let outcome = create(&mut tx, count)
        .await
        .context("failed to create the courier fleet")?;
    tx.commit()
        .await
        .context("failed to commit the courier fleet")?;
    Ok(outcome)
}

async fn create(tx: &mut Transaction<'_, Any>, count: usize) -> Result<FleetOutcome, sqlx::Error> {
    if storage::has_couriers(tx).await? {
        return Ok(FleetOutcome::Exists);
    }
    let mut restaurants = storage::restaurant_positions(tx).await?;
    if restaurants.is_empty() {
        return Ok(FleetOutcome::NoRestaurants);
    }
    restaurants.sort_by(|a, b| a.0.cmp(&b.0));

    let now = now_millis();
    for k in 0..count {
        let (_, position) = restaurants[domain::start_restaurant(k, restaurants.len())];
        storage::insert_courier(tx, &domain::courier_id(k), position, now).await?;
    }
    tracing::info!(
        couriers = count,
        restaurants = restaurants.len(),
        "courier fleet created"
    );
    Ok(FleetOutcome::Created(count))
}

/// Creates the fleet the first time the restaurant replica has read the stream to
/// its end while holding restaurants, then wakes the delivery timer so that waiting
/// deliveries get couriers, and returns. It also returns when the fleet exists, when
/// `shutdown` is cancelled, or when the replica's reader stops.
///
/// `caught_up` is the replica reader's flag: true while the reader is at the end of
/// the stream, with every event read so far applied. After a failed attempt it
/// retries after 1 s.
pub(crate) async fn create_when_caught_up(
    db: Database,
    count: usize,
    mut caught_up: watch::Receiver<bool>,
    timer: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        if !wait_for_flag(&mut caught_up, true, &shutdown).await {
            return;
        }
        match create_once(&db, count).await {
            Ok(FleetOutcome::Created(_)) => {
                timer.notify_one();
                return;
            }
            Ok(FleetOutcome::Exists) => return,
            Ok(FleetOutcome::NoRestaurants) => {
                // Check again after the reader has read more events.
                if !wait_for_flag(&mut caught_up, false, &shutdown).await {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, cause = ?error, retry_in_ms = 1000, "failed to create the courier fleet");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Waits until the flag equals `value`, and returns false instead when `shutdown` is
/// cancelled or the reader has stopped.
async fn wait_for_flag(
    flag: &mut watch::Receiver<bool>,
    value: bool,
    shutdown: &CancellationToken,
) -> bool {
    tokio::select! {
        reached = async { flag.wait_for(|current| *current == value).await.is_ok() } => reached,
        () = shutdown.cancelled() => false,
    }
}
