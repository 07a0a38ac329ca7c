//! The projection: folds order events into `order_facts` and `status_changes`.

use std::collections::HashSet;

use async_trait::async_trait;
use sqlx::{Any, Transaction};
use tiffin_bus::envelope::{Envelope, EventData};
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
        let mut facts = Facts::default();
        for event in events {
            // Taking the id out applies an event given twice in the batch once.
            if new.remove(&event.id) {
                facts.add(event)?;
            }
        }
        facts.record(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The new events of a batch, decoded and gathered by type, so that each type is
/// written with one statement.
#[derive(Debug, Default)]
struct Facts {
    placed: Vec<OrderPlaced>,
    accepted: Vec<OrderAccepted>,
    ready: Vec<OrderReady>,
    delivered: Vec<OrderDelivered>,
    changes: Vec<(OrderStatusChanged, OrderStatus)>,
}

impl Facts {
    /// Decodes `event` and adds it to its type's list.
    fn add(&mut self, event: &Envelope) -> Result<(), HandlerError> {
        match event.event_type.as_str() {
            "order.placed" => self.placed.push(decode(event)?),
            "order.accepted" => self.accepted.push(decode(event)?),
            "order.ready" => self.ready.push(decode(event)?),
            "order.delivered" => self.delivered.push(decode(event)?),
            "order.status_changed" => {
                let data: OrderStatusChanged = decode(event)?;
                let status = OrderStatus::parse(&data.status).ok_or_else(|| {
                    HandlerError::permanent(anyhow::anyhow!(
                        "event {} has an unknown order status {:?}: expected one of {}",
                        event.id,
                        data.status,
                        OrderStatus::ALL.map(OrderStatus::as_str).join(", ")
                    ))
                })?;
                self.changes.push((data, status));
            }
            // Pickups, rejections and cancellations are counted from the status
            // changes, which carry the order service's decision rather than the raw
            // report.
            other => tracing::trace!(event_type = other, "event type not projected"),
        }
        Ok(())
    }

    /// Writes the facts in `tx`, one statement per event type present.
    async fn record(&self, tx: &mut Transaction<'_, Any>) -> Result<(), HandlerError> {
        let placed = last_per_order(&self.placed, |order| &order.order_id);
        let accepted = last_per_order(&self.accepted, |order| &order.order_id);
        let ready = last_per_order(&self.ready, |order| &order.order_id);
        let delivered = last_per_order(&self.delivered, |order| &order.order_id);
        storage::record_placed(tx, &placed).await?;
        storage::record_accepted(tx, &accepted).await?;
        storage::record_ready(tx, &ready).await?;
        storage::record_delivered(tx, &delivered).await?;
        storage::record_status_changes(tx, &self.changes).await?;
        Ok(())
    }
}

fn decode<T: EventData>(event: &Envelope) -> Result<T, HandlerError> {
    event.decode::<T>().map_err(HandlerError::permanent)
}

/// Returns the last event of each order, in the order given, which is what
/// applying the events one by one would leave. Two events of one type for one
/// order (a publish retried under a new id) must not reach the same upsert,
/// because PostgreSQL rejects a statement that updates a row twice.
fn last_per_order<T>(events: &[T], order_id: impl Fn(&T) -> &str) -> Vec<&T> {
    let mut seen = HashSet::with_capacity(events.len());
    let mut latest: Vec<&T> = events
        .iter()
        .rev()
        .filter(|event| seen.insert(order_id(event)))
        .collect();
    latest.reverse();
    latest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_per_order_wins() {
        let events = [("a", 1), ("b", 2), ("a", 3), ("c", 4)];

        let latest = last_per_order(&events, |event| event.0);

        assert_eq!(latest, [&("b", 2), &("a", 3), &("c", 4)]);
    }
}
