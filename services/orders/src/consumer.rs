//! Event handlers of the order service: the menu replica and the order lifecycle.

use std::sync::Arc;

use async_trait::async_trait;
use tiffin_bus::envelope::Envelope;
use tiffin_bus::{Handler, HandlerError, inbox};
use tiffin_events::menu::MenuItemUpserted;
use tiffin_events::order::{OrderAccepted, OrderReady};
use tiffin_runtime::db::Database;
use tiffin_runtime::time::now_millis;

use crate::domain::{OrderEvent, Transition};
use crate::storage;

/// The consumer group of the lifecycle queue, also the inbox's consumer name.
pub const LIFECYCLE_GROUP: &str = "orders";
/// The stream group of the menu replica.
pub const MENU_GROUP: &str = "orders-menu-replica";
/// Event types the lifecycle queue binds.
pub const LIFECYCLE_EVENTS: [&str; 2] = ["order.accepted", "order.ready"];

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

/// Moves orders through their states as the kitchen reports progress.
#[derive(Debug, Clone)]
pub struct OrderLifecycle {
    db: Database,
}

impl OrderLifecycle {
    /// Creates the handler over the order database.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait]
impl Handler for OrderLifecycle {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        let (order_id, order_event, at) = match event.event_type.as_str() {
            "order.accepted" => {
                let data = event
                    .decode::<OrderAccepted>()
                    .map_err(HandlerError::permanent)?;
                (data.order_id, OrderEvent::Accepted, data.accepted_at)
            }
            "order.ready" => {
                let data = event
                    .decode::<OrderReady>()
                    .map_err(HandlerError::permanent)?;
                (data.order_id, OrderEvent::Ready, data.ready_at)
            }
            other => {
                return Err(HandlerError::permanent(anyhow::anyhow!(
                    "the order lifecycle does not handle event type {other}"
                )));
            }
        };

        let mut tx = self.db.begin_write().await?;
        if !inbox::record(&mut tx, LIFECYCLE_GROUP, &event.id).await? {
            tracing::debug!("event already handled");
            return Ok(());
        }
        let Some(status) = storage::status_for_update(&mut tx, &order_id).await? else {
            // Events are published only after their order commits, so an unknown order
            // means another deployment's data on the same broker.
            return Err(HandlerError::permanent(anyhow::anyhow!(
                "order {order_id} does not exist"
            )));
        };
        match status.apply(order_event) {
            Transition::To(next) => {
                storage::set_status(&mut tx, &order_id, next, now_millis()).await?;
                storage::record_status(&mut tx, &order_id, next, at, Some(&event.id)).await?;
                tracing::debug!(from = %status, to = %next, "order status changed");
            }
            Transition::Stale => {
                // A step overtaken by a later one still happened: keep it in the
                // timeline. A true duplicate is absorbed by the history's key.
                let step = match order_event {
                    OrderEvent::Accepted => Some(crate::domain::OrderStatus::Accepted),
                    OrderEvent::Ready => Some(crate::domain::OrderStatus::Ready),
                    _ => None,
                };
                if let Some(step) = step {
                    storage::record_status(&mut tx, &order_id, step, at, Some(&event.id)).await?;
                }
                tracing::debug!(%status, "event already reflected in the order status");
            }
            Transition::Illegal => {
                tracing::warn!(%status, event = ?order_event, "event contradicts the order status, ignored");
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Both handlers, shared by the service's tasks.
#[derive(Debug, Clone)]
pub struct Handlers {
    /// The menu replica.
    pub menu: Arc<MenuReplica>,
    /// The lifecycle.
    pub lifecycle: Arc<OrderLifecycle>,
}
