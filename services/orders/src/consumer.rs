//! Event handlers of the order service: the menu replica and the order lifecycle.

use std::sync::Arc;

use async_trait::async_trait;
use tiffin_bus::envelope::Envelope;
use tiffin_bus::{Handler, HandlerError, inbox, outbox};
use tiffin_events::menu::MenuItemUpserted;
use tiffin_events::order::{
    OrderAccepted, OrderDelivered, OrderPickedUp, OrderReady, OrderRejected,
};
use tiffin_runtime::db::Database;
use tokio::sync::Notify;

use crate::domain::OrderEvent;
use crate::saga::{self, Change, Outcome};
use crate::storage;

/// The consumer group of the lifecycle queue, also the inbox's consumer name.
pub const LIFECYCLE_GROUP: &str = "orders";
/// The stream group of the menu replica.
pub const MENU_GROUP: &str = "orders-menu-replica";
/// Event types the lifecycle queue binds.
pub const LIFECYCLE_EVENTS: [&str; 5] = [
    "order.accepted",
    "order.ready",
    "order.rejected",
    "order.picked_up",
    "order.delivered",
];

/// Keeps the menu replica: the latest revision of every item the catalog published.
///
/// Upserts are idempotent by revision, so it needs no inbox.
#[derive(Debug, Clone)]
pub struct MenuReplica {
    db: Database,
}

impl MenuReplica {
    /// Creates the handler over the order database.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait]
impl Handler for MenuReplica {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.handle_batch(std::slice::from_ref(event)).await
    }

    fn applies_batches(&self) -> bool {
        true
    }

    async fn handle_batch(&self, events: &[Envelope]) -> Result<(), HandlerError> {
        let mut items = Vec::with_capacity(events.len());
        for event in events {
            items.push(
                event
                    .decode::<MenuItemUpserted>()
                    .map_err(HandlerError::permanent)?,
            );
        }
        let mut tx = self.db.begin_write().await?;
        for item in &items {
            storage::upsert_menu_item(&mut tx, item).await?;
        }
        tx.commit().await?;
        tracing::trace!(items = items.len(), "menu replica updated");
        Ok(())
    }
}

/// Moves orders through their states as the kitchen and delivery report progress.
#[derive(Debug, Clone)]
pub struct OrderLifecycle {
    db: Database,
    relay_waker: Arc<Notify>,
    compensation_waker: Arc<Notify>,
}

impl OrderLifecycle {
    /// Creates the handler over the order database; the wakers are the outbox
    /// relay's and the payment worker's.
    pub fn new(db: Database, relay_waker: Arc<Notify>, compensation_waker: Arc<Notify>) -> Self {
        Self {
            db,
            relay_waker,
            compensation_waker,
        }
    }
}

/// The change to its order that a lifecycle event reports.
struct Step {
    order_id: String,
    event: OrderEvent,
    at: i64,
    reason: Option<String>,
}

/// Reads the step out of a lifecycle event.
fn step_of(event: &Envelope) -> Result<Step, HandlerError> {
    let (order_id, order_event, at, reason) = match event.event_type.as_str() {
        "order.accepted" => {
            let data = event
                .decode::<OrderAccepted>()
                .map_err(HandlerError::permanent)?;
            (data.order_id, OrderEvent::Accepted, data.accepted_at, None)
        }
        "order.ready" => {
            let data = event
                .decode::<OrderReady>()
                .map_err(HandlerError::permanent)?;
            (data.order_id, OrderEvent::Ready, data.ready_at, None)
        }
        "order.rejected" => {
            let data = event
                .decode::<OrderRejected>()
                .map_err(HandlerError::permanent)?;
            let reason = data.reason.as_str().to_owned();
            (
                data.order_id,
                OrderEvent::Rejected,
                data.rejected_at,
                Some(reason),
            )
        }
        "order.picked_up" => {
            let data = event
                .decode::<OrderPickedUp>()
                .map_err(HandlerError::permanent)?;
            (data.order_id, OrderEvent::PickedUp, data.picked_up_at, None)
        }
        "order.delivered" => {
            let data = event
                .decode::<OrderDelivered>()
                .map_err(HandlerError::permanent)?;
            (
                data.order_id,
                OrderEvent::Delivered,
                data.delivered_at,
                None,
            )
        }
        other => {
            return Err(HandlerError::permanent(anyhow::anyhow!(
                "the order lifecycle does not handle event type {other}"
            )));
        }
    };
    Ok(Step {
        order_id,
        event: order_event,
        at,
        reason,
    })
}

/// Logs what applying a step did, or fails the batch for an unknown order.
fn report(step: &Step, outcome: &Outcome) -> Result<(), HandlerError> {
    match outcome {
        Outcome::Moved { from, to } => {
            tracing::debug!(order_id = %step.order_id, %from, %to, "order status changed");
        }
        Outcome::Stale(status) => {
            tracing::debug!(order_id = %step.order_id, %status, "event already reflected in the order status");
        }
        Outcome::Illegal(status) => {
            // Expected in a saga: the kitchen may accept an order the customer has
            // just cancelled. The order keeps its status; this is not a fault.
            tracing::info!(order_id = %step.order_id, %status, event = ?step.event, "event contradicts the order status, ignored");
        }
        Outcome::UnknownOrder => {
            // Events are published only after their order commits, so an unknown
            // order means another deployment's data on the same broker.
            return Err(HandlerError::permanent(anyhow::anyhow!(
                "order {} does not exist",
                step.order_id
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl Handler for OrderLifecycle {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.handle_batch(std::slice::from_ref(event)).await
    }

    fn applies_batches(&self) -> bool {
        true
    }

    /// Applies the events of many orders in one transaction, which locks each of
    /// their orders; the ids, the orders' reads and each kind of write take one
    /// statement for the whole batch.
    async fn handle_batch(&self, events: &[Envelope]) -> Result<(), HandlerError> {
        let steps = events.iter().map(step_of).collect::<Result<Vec<_>, _>>()?;
        let keys: Vec<&str> = steps.iter().map(|step| step.order_id.as_str()).collect();
        let ids: Vec<&str> = events.iter().map(|event| event.id.as_str()).collect();
        let mut tx = self.db.begin_write_for(&keys).await?;
        let mut new = inbox::record_many(&mut tx, LIFECYCLE_GROUP, &ids).await?;
        let mut applied = Vec::with_capacity(steps.len());
        let mut changes = Vec::with_capacity(steps.len());
        for (event, step) in events.iter().zip(&steps) {
            // Taking the id out applies an event given twice in the batch once.
            if !new.remove(&event.id) {
                tracing::debug!(event_id = %event.id, "event already handled");
                continue;
            }
            applied.push(step);
            changes.push(Change {
                order_id: &step.order_id,
                event: step.event,
                at: step.at,
                reason: step.reason.as_deref(),
                event_id: Some(&event.id),
                trace: event.trace_context(),
            });
        }
        let mut outgoing = Vec::new();
        let outcomes = saga::apply_all(&mut tx, &changes, &mut outgoing).await?;
        for (step, outcome) in applied.into_iter().zip(&outcomes) {
            report(step, outcome)?;
        }
        outbox::enqueue_many(&mut tx, &outgoing).await?;
        tx.commit().await?;
        self.relay_waker.notify_one();
        self.compensation_waker.notify_one();
        Ok(())
    }
}
