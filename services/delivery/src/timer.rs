//! The delivery timer: ends rides when their planned time has passed, announcing
//! `order.picked_up` and `order.delivered`, and assigns freed couriers to waiting
//! deliveries.
//!
//! Deliveries and their planned times live in the database, so a ride that started
//! before a restart ends after it: the timer's first pass picks up every ride that
//! ended while the service was down. Each transition is a conditional update
//! (`WHERE status = ...`) in the same transaction as its outbox row, so it happens and
//! is announced once.

use std::sync::Arc;
use std::time::Duration;

use tiffin_bus::{Envelope, outbox};
use tiffin_events::order::{OrderDelivered, OrderPickedUp};
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;
use tiffin_runtime::time::now_millis;
use tiffin_runtime::trace::TraceContext;
use tokio::sync::Notify;

use crate::consumer::SOURCE;
use crate::dispatch;
use crate::domain::TimeScale;
use crate::storage::{self, DueRide};

/// Rides ended, or deliveries assigned, per step of a pass.
const BATCH: usize = 100;

/// Maximum sleep between passes. A delivery written without a wake-up, by another
/// process sharing the database, waits at most this long.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Moves deliveries along as their planned times pass.
#[derive(Debug)]
pub(crate) struct DeliveryTimer {
    db: Database,
    time_scale: TimeScale,
    /// Wakes the outbox relay after a commit.
    relay: Arc<Notify>,
    /// Woken when a ride starts that may end before the timer's next pass, or when a
    /// courier becomes free for a waiting delivery.
    wake: Arc<Notify>,
}

impl DeliveryTimer {
    pub(crate) fn new(db: Database, time_scale: TimeScale, relay: Arc<Notify>) -> Self {
        Self {
            db,
            time_scale,
            relay,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Returns a handle that wakes the timer for an early pass.
    pub(crate) fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs passes until `shutdown` is cancelled. A pass that is under way when the
    /// token is cancelled stops after the transaction it is in.
    ///
    /// Between passes it sleeps until the next planned pickup or delivery, at most
    /// [`MAX_SLEEP`], or until woken. After a failed pass it retries after 100 ms,
    /// doubling up to 5 s.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        tracing::info!("delivery timer started");
        let mut retry_delay = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let pause = match self.pass(&shutdown).await {
                Ok(pause) => {
                    retry_delay = Duration::from_millis(100);
                    pause
                }
                Err(error) => {
                    tracing::warn!(error = %error, cause = ?error, retry_in_ms = retry_delay.as_millis() as u64, "delivery timer pass failed");
                    let pause = retry_delay;
                    retry_delay = (retry_delay * 2).min(Duration::from_secs(5));
                    pause
                }
            };
            if pause.is_zero() {
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => {}
            }
        }
        tracing::info!("delivery timer stopped");
    }

    /// Ends the due rides and assigns free couriers, up to one batch per step, and
    /// returns how long to sleep before the next pass: zero when a full batch
    /// suggests that more work is due.
    ///
    /// Pickups come before handovers, so a delivery whose two rides both ended
    /// (after a restart, or with a zero share) is picked up and delivered in one
    /// pass, in that order. Assignments come last, so couriers freed by this pass's
    /// handovers take waiting deliveries at once.
    async fn pass(&self, shutdown: &CancellationToken) -> anyhow::Result<Duration> {
        let now = now_millis();
        let pickups = storage::due_pickups(self.db.pool(), now, BATCH as i64).await?;
        if !pickups.is_empty() && !shutdown.is_cancelled() {
            self.pick_up(&pickups).await?;
        }

        let handovers = storage::due_handovers(self.db.pool(), now, BATCH as i64).await?;
        if !handovers.is_empty() && !shutdown.is_cancelled() {
            self.hand_over(&handovers).await?;
        }
        if shutdown.is_cancelled() {
            return Ok(Duration::ZERO);
        }

        let assigned = self.assign_waiting().await?;
        if pickups.len() == BATCH || handovers.len() == BATCH || assigned == BATCH {
            return Ok(Duration::ZERO);
        }

        let Some(next) = storage::next_due(self.db.pool()).await? else {
            return Ok(MAX_SLEEP);
        };
        let until_next = u64::try_from(next.saturating_sub(now_millis())).unwrap_or(0);
        Ok(Duration::from_millis(until_next).min(MAX_SLEEP))
    }

    /// Marks deliveries picked up and writes an `order.picked_up` for each to the
    /// outbox, in one transaction. A delivery that is no longer assigned is skipped.
    async fn pick_up(&self, rides: &[DueRide]) -> anyhow::Result<()> {
        let mut tx = self.db.begin_write_for(&order_ids(rides)).await?;
        let now = now_millis();
        let mut events = Vec::with_capacity(rides.len());
        for ride in rides {
            if !storage::mark_picked_up(&mut tx, &ride.order_id, now).await? {
                continue;
            }
            let picked_up = OrderPickedUp {
                order_id: ride.order_id.clone(),
                courier_id: ride.courier_id.clone(),
                picked_up_at: now,
            };
            events.push(Envelope::new(SOURCE, &picked_up, Some(trace_of(ride))));
            tracing::trace!(order_id = %ride.order_id, courier_id = %ride.courier_id, "order picked up");
        }
        outbox::enqueue_many(&mut tx, &events).await?;
        tx.commit().await?;

        if !events.is_empty() {
            self.relay.notify_one();
        }
        Ok(())
    }

    /// Marks deliveries delivered, frees their couriers at the restaurants and
    /// writes an `order.delivered` for each to the outbox, in one transaction. A
    /// delivery that is no longer picked up is skipped.
    async fn hand_over(&self, rides: &[DueRide]) -> anyhow::Result<()> {
        let mut tx = self.db.begin_write_for(&order_ids(rides)).await?;
        let now = now_millis();
        let mut events = Vec::with_capacity(rides.len());
        for ride in rides {
            if !storage::mark_delivered(&mut tx, &ride.order_id, now).await? {
                continue;
            }
            // The courier waits for its next delivery at the restaurant it picked
            // this one up from. The customer's position would be the truth, but
            // order.ready does not carry it, so the delivery service never learns it.
            let released = storage::release_courier_at_restaurant(
                &mut tx,
                &ride.courier_id,
                &ride.order_id,
                &ride.restaurant_id,
            )
            .await?;
            if !released {
                tracing::error!(
                    order_id = %ride.order_id,
                    courier_id = %ride.courier_id,
                    "courier of a delivered order was not busy with it; left as it is"
                );
            }
            let delivered = OrderDelivered {
                order_id: ride.order_id.clone(),
                courier_id: ride.courier_id.clone(),
                delivered_at: now,
                delivery_ms: now - ride.assigned_at,
            };
            tracing::trace!(
                order_id = %ride.order_id,
                courier_id = %ride.courier_id,
                delivery_ms = delivered.delivery_ms,
                "order delivered"
            );
            events.push(Envelope::new(SOURCE, &delivered, Some(trace_of(ride))));
        }
        outbox::enqueue_many(&mut tx, &events).await?;
        tx.commit().await?;

        if !events.is_empty() {
            self.relay.notify_one();
        }
        Ok(())
    }

    /// Assigns free couriers to waiting deliveries, oldest delivery first, up to one
    /// batch in one transaction, and returns how many it assigned.
    async fn assign_waiting(&self) -> anyhow::Result<usize> {
        if !storage::assignable(self.db.pool()).await? {
            return Ok(0);
        }
        // No keys: the assignment locks the deliveries and couriers it takes.
        let mut tx = self.db.begin_write_for(&[]).await?;
        let now = now_millis();
        let assignments = dispatch::assign_waiting(&mut tx, BATCH, now, self.time_scale).await?;
        tx.commit().await?;
        for assignment in &assignments {
            assignment.trace(now);
        }
        Ok(assignments.len())
    }
}

/// Returns the write-lock keys of `rides`: their orders, which a cancellation
/// locks too.
fn order_ids(rides: &[DueRide]) -> Vec<&str> {
    rides.iter().map(|ride| ride.order_id.as_str()).collect()
}

/// Continues the trace of the order's `order.ready`, or starts one for a delivery
/// stored without it.
fn trace_of(ride: &DueRide) -> TraceContext {
    ride.traceparent
        .as_deref()
        .and_then(TraceContext::parse)
        .map_or_else(TraceContext::new_root, |context| context.child())
}
