//! The projection: folds order events into `order_facts` and `status_changes`.

use async_trait::async_trait;
use sqlx::{Any, Transaction};
use tiffin_bus::envelope::Envelope;
use tiffin_bus::{Handler, HandlerError, inbox};
use tiffin_events::order::{
    OrderAccepted, OrderDelivered, OrderPlaced, OrderReady, OrderStatusChanged,
};
use tiffin_runtime::db::Database;

use crate::domain::OrderStatus;
use crate::storage;

/// The inbox's consumer name, shared by the live reader and a rebuild.
pub const CONSUMER: &str = "analytics";

/// Applies order events to the projection, each exactly once through the inbox.
#[derive(Debug, Clone)]
pub struct Projection {
    db: Database,
}

impl Projection {
    /// Creates the projection over the analytics database.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait]
impl Handler for Projection {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.handle_batch(std::slice::from_ref(event)).await
    }

    fn applies_batches(&self) -> bool {
        true
    }

    async fn handle_batch(&self, events: &[Envelope]) -> Result<(), HandlerError> {
        let ids: Vec<&str> = events.iter().map(|event| event.id.as_str()).collect();
        let mut tx = self.db.begin_write().await?;
        let mut new = inbox::record_many(&mut tx, CONSUMER, &ids).await?;
        let mut changes = Vec::new();
        for event in events {
            // Taking the id out applies an event given twice in the batch once.
            if new.remove(&event.id) {
                apply(&mut tx, event, &mut changes).await?;
            }
        }
        storage::record_status_changes(&mut tx, &changes).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Applies `event` to the order facts in `tx`, and adds a status change to
/// `changes`, which the caller records for the whole batch with one statement.
async fn apply(
    tx: &mut Transaction<'_, Any>,
    event: &Envelope,
    changes: &mut Vec<(OrderStatusChanged, OrderStatus)>,
) -> Result<(), HandlerError> {
    match event.event_type.as_str() {
        "order.placed" => {
            let data = event
                .decode::<OrderPlaced>()
                .map_err(HandlerError::permanent)?;
            storage::record_placed(
                tx,
                &data.order_id,
                &data.restaurant_id,
                data.total_cents,
                &data.currency,
                data.placed_at,
            )
            .await?;
        }
        "order.accepted" => {
            let data = event
                .decode::<OrderAccepted>()
                .map_err(HandlerError::permanent)?;
            storage::record_accepted(tx, &data.order_id, data.accepted_at).await?;
        }
        "order.ready" => {
            let data = event
                .decode::<OrderReady>()
                .map_err(HandlerError::permanent)?;
            storage::record_ready(tx, &data.order_id, data.ready_at, data.preparation_ms).await?;
        }
        "order.delivered" => {
            let data = event
                .decode::<OrderDelivered>()
                .map_err(HandlerError::permanent)?;
            storage::record_delivered(tx, &data.order_id, data.delivered_at, data.delivery_ms)
                .await?;
        }
        "order.status_changed" => {
            let data = event
                .decode::<OrderStatusChanged>()
                .map_err(HandlerError::permanent)?;
            let status = OrderStatus::parse(&data.status).ok_or_else(|| {
                HandlerError::permanent(anyhow::anyhow!(
                    "event {} has an unknown order status {:?}: expected one of {}",
                    event.id,
                    data.status,
                    OrderStatus::ALL.map(OrderStatus::as_str).join(", ")
                ))
            })?;
            changes.push((data, status));
        }
        // Pickups, rejections and cancellations are counted from the status changes,
        // which carry the order service's decision rather than the raw report.
        other => tracing::trace!(event_type = other, "event type not projected"),
    }
    Ok(())
}
