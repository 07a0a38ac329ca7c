//! Event handlers: the restaurant replica (a stream reader) and the order events of
//! the `delivery` work queue.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Any, Transaction};
use tiffin_bus::envelope::EventData as _;
use tiffin_bus::{Envelope, Handler, HandlerError, inbox};
use tiffin_events::order::{OrderCancelled, OrderReady};
use tiffin_events::restaurant::RestaurantUpserted;
use tiffin_runtime::db::Database;
use tiffin_runtime::time::now_millis;
use tokio::sync::Notify;

use crate::dispatch;
use crate::domain::{self, DeliveryStatus, TimeScale};
use crate::storage::{self, NewDelivery};

/// The consumer group of the work queue, which is also the inbox's consumer name.
pub(crate) const CONSUMER: &str = "delivery";

/// Event types the work queue binds.
pub(crate) const ORDER_EVENTS: [&str; 2] = ["order.ready", "order.cancelled"];

/// The stream group of the restaurant replica.
pub(crate) const RESTAURANT_GROUP: &str = "delivery-restaurants";

/// The CloudEvents `source` of the delivery service's events.
pub(crate) const SOURCE: &str = "/tiffin/delivery";

/// Keeps the positions of the catalog's restaurants.
///
/// Upserts are idempotent by revision, so it needs no inbox.
#[derive(Debug)]
pub(crate) struct RestaurantReplica {
    pub(crate) db: Database,
}

#[async_trait]
impl Handler for RestaurantReplica {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.handle_batch(std::slice::from_ref(event)).await
    }

    fn applies_batches(&self) -> bool {
        true
    }

    async fn handle_batch(&self, events: &[Envelope]) -> Result<(), HandlerError> {
        let mut restaurants = Vec::with_capacity(events.len());
        for event in events {
            restaurants.push(
                event
                    .decode::<RestaurantUpserted>()
                    .map_err(HandlerError::permanent)?,
            );
        }

        let mut tx = self.db.begin_write().await?;
        for restaurant in &restaurants {
            storage::upsert_restaurant(&mut tx, restaurant).await?;
        }
        tx.commit().await?;
        tracing::trace!(
            restaurants = restaurants.len(),
            "restaurant replica updated"
        );
        Ok(())
    }
}

/// Creates a delivery for each ready order and cancels deliveries of cancelled
/// orders.
///
/// Each transaction first records its events in the inbox, so a redelivered event
/// changes nothing. A batch of `order.ready` shares one transaction. Neither event causes an event of its own:
/// `order.picked_up` and `order.delivered` come from the delivery timer.
#[derive(Debug)]
pub(crate) struct OrderEventsHandler {
    pub(crate) db: Database,
    pub(crate) time_scale: TimeScale,
    /// The courier's share of an order that carries no replayed minutes.
    pub(crate) default_courier_share: Duration,
    /// Wakes the delivery timer when a ride starts or a courier becomes free.
    pub(crate) timer: Arc<Notify>,
}

#[async_trait]
impl Handler for OrderEventsHandler {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        match event.event_type.as_str() {
            "order.ready" => self.on_ready(std::slice::from_ref(event)).await,
            "order.cancelled" => {
                let cancelled: OrderCancelled = event.decode().map_err(HandlerError::permanent)?;
                self.on_cancelled(event, &cancelled).await
            }
            other => Err(HandlerError::permanent(anyhow::anyhow!(
                "the delivery consumer does not handle event type {other}; \
                 it handles {ORDER_EVENTS:?}"
            ))),
        }
    }

    fn applies_batches(&self) -> bool {
        true
    }

    /// Handles a batch of `order.ready` in one transaction. A batch with any other
    /// event is handled one event at a time, because a cancellation reads and
    /// changes one delivery with checks of its own.
    async fn handle_batch(&self, events: &[Envelope]) -> Result<(), HandlerError> {
        if events
            .iter()
            .all(|event| event.event_type == OrderReady::TYPE)
        {
            return self.on_ready(events).await;
        }
        for event in events {
            self.handle(event).await?;
        }
        Ok(())
    }
}

impl OrderEventsHandler {
    /// Stores a waiting delivery for each ready order, then assigns free couriers
    /// to the longest-waiting deliveries, older ones first, in one transaction. An
    /// order that already has a delivery (also a cancelled one) gets no second one.
    async fn on_ready(&self, events: &[Envelope]) -> Result<(), HandlerError> {
        let mut readies = Vec::with_capacity(events.len());
        for event in events {
            readies.push(
                event
                    .decode::<OrderReady>()
                    .map_err(HandlerError::permanent)?,
            );
        }
        let now = now_millis();
        let keys: Vec<&str> = readies
            .iter()
            .map(|ready| ready.order_id.as_str())
            .collect();

        let mut tx = self.db.begin_write_for(&keys).await?;
        let mut created = 0;
        for (event, ready) in events.iter().zip(&readies) {
            if !inbox::record(&mut tx, CONSUMER, &event.id).await? {
                tracing::trace!(event_id = %event.id, "event already handled");
                continue;
            }
            let share =
                domain::courier_share(ready.replay_delivery_minutes, self.default_courier_share);
            let delivery_id = uuid::Uuid::now_v7().to_string();
            let traceparent = event.trace_context().to_string();
            let new_delivery = NewDelivery {
                delivery_id: &delivery_id,
                order_id: &ready.order_id,
                restaurant_id: &ready.restaurant_id,
                courier_share_ms: i64::try_from(share.as_millis()).unwrap_or(i64::MAX),
                traceparent: Some(&traceparent),
                created_at: now,
            };
            if storage::insert_waiting(&mut tx, &new_delivery).await? {
                created += 1;
            } else {
                tracing::debug!(order_id = %ready.order_id, "order already has a delivery; order.ready ignored");
            }
        }
        if created == 0 {
            tx.commit().await?;
            return Ok(());
        }
        let assignments = dispatch::assign_waiting(&mut tx, created, now, self.time_scale)
            .await
            .map_err(HandlerError::transient)?;
        tx.commit().await?;

        if !assignments.is_empty() {
            self.timer.notify_one();
        }
        for assignment in &assignments {
            assignment.trace(now);
        }
        if assignments.len() < created {
            tracing::trace!(
                waiting = created - assignments.len(),
                "deliveries wait for free couriers"
            );
        }
        Ok(())
    }

    /// Cancels the order's delivery unless it was picked up, freeing its courier.
    /// Without a delivery it stores a cancelled one, so that a later `order.ready`
    /// creates nothing.
    async fn on_cancelled(
        &self,
        event: &Envelope,
        cancelled: &OrderCancelled,
    ) -> Result<(), HandlerError> {
        let now = now_millis();
        let order_id = cancelled.order_id.as_str();

        let mut tx = self.db.begin_write_for(&[order_id]).await?;
        if !inbox::record(&mut tx, CONSUMER, &event.id).await? {
            tx.rollback().await?;
            tracing::trace!("event already handled");
            return Ok(());
        }
        let state = storage::delivery_state(&mut tx, order_id)
            .await
            .map_err(HandlerError::transient)?;
        let freed_courier = match state {
            None => {
                let delivery_id = uuid::Uuid::now_v7().to_string();
                let inserted = storage::insert_cancelled(
                    &mut tx,
                    &delivery_id,
                    order_id,
                    &cancelled.restaurant_id,
                    now,
                )
                .await?;
                ensure_changed(inserted, order_id)?;
                tracing::debug!(
                    order_id,
                    "order cancelled before it was ready; no delivery will start"
                );
                false
            }
            Some(state) => match state.status {
                DeliveryStatus::Waiting => {
                    let changed =
                        storage::mark_cancelled(&mut tx, order_id, DeliveryStatus::Waiting, now)
                            .await?;
                    ensure_changed(changed, order_id)?;
                    tracing::debug!(order_id, "waiting delivery cancelled");
                    false
                }
                DeliveryStatus::Assigned => {
                    self.cancel_assigned(&mut tx, order_id, state.courier_id.as_deref(), now)
                        .await?
                }
                DeliveryStatus::PickedUp => {
                    tracing::info!(
                        order_id,
                        "cancellation ignored: the courier has picked up the food, so the delivery goes on"
                    );
                    false
                }
                DeliveryStatus::Delivered => {
                    tracing::info!(
                        order_id,
                        "cancellation ignored: the order was delivered already"
                    );
                    false
                }
                DeliveryStatus::Cancelled => {
                    tracing::debug!(order_id, "delivery already cancelled");
                    false
                }
            },
        };
        tx.commit().await?;

        if freed_courier {
            self.timer.notify_one();
        }
        Ok(())
    }

    /// Cancels an assigned delivery and frees its courier where it was assigned,
    /// because the ride to the restaurant is not tracked along the way. Returns
    /// whether a courier was freed.
    async fn cancel_assigned(
        &self,
        tx: &mut Transaction<'_, Any>,
        order_id: &str,
        courier_id: Option<&str>,
        now: i64,
    ) -> Result<bool, HandlerError> {
        let changed = storage::mark_cancelled(tx, order_id, DeliveryStatus::Assigned, now).await?;
        ensure_changed(changed, order_id)?;
        let Some(courier_id) = courier_id else {
            tracing::error!(
                order_id,
                "assigned delivery has no courier; cancelled it anyway"
            );
            return Ok(false);
        };
        let released = storage::release_courier(tx, courier_id, order_id).await?;
        if !released {
            tracing::error!(
                order_id,
                courier_id,
                "courier of a cancelled delivery was not busy with it; left as it is"
            );
        }
        tracing::debug!(
            order_id,
            courier_id,
            "assigned delivery cancelled, courier freed"
        );
        Ok(released)
    }
}

/// Turns a conditional write that changed nothing into a transient error. It happens
/// only when another transaction changed the delivery between the read and the write
/// (possible on PostgreSQL), and the retry reads the new state.
fn ensure_changed(changed: bool, order_id: &str) -> Result<(), HandlerError> {
    if changed {
        Ok(())
    } else {
        Err(HandlerError::transient(anyhow::anyhow!(
            "the delivery of order {order_id} changed while cancelling it"
        )))
    }
}
