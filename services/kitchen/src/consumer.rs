//! The `order.placed` handler: opens a ticket and announces `order.accepted`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tiffin_bus::{Envelope, Handler, HandlerError, inbox, outbox};
use tiffin_events::order::{OrderAccepted, OrderPlaced};
use tiffin_runtime::db::Database;
use tiffin_runtime::time::now_millis;
use tokio::sync::Notify;

use crate::domain::{self, Ticket, TicketStatus, TimeScale};
use crate::storage;

/// The consumer group, which is also the inbox's consumer name.
pub(crate) const CONSUMER: &str = "kitchen";

/// The CloudEvents `source` of the kitchen's events.
pub(crate) const SOURCE: &str = "/tiffin/kitchen";

/// Opens one ticket per placed order.
///
/// In one transaction it records the event in the inbox, inserts the ticket and
/// writes `order.accepted` to the outbox. A redelivered event stops at the inbox. A
/// second event for an order that already has a ticket (another event id) is recorded
/// in the inbox but changes nothing else, so it announces nothing.
#[derive(Debug)]
pub(crate) struct OrderPlacedHandler {
    pub(crate) db: Database,
    pub(crate) time_scale: TimeScale,
    pub(crate) default_preparation: Duration,
    /// Wakes the outbox relay after a commit.
    pub(crate) relay: Arc<Notify>,
    /// Wakes the ticket timer, which may be asleep until a later ticket.
    pub(crate) timer: Arc<Notify>,
}

#[async_trait]
impl Handler for OrderPlacedHandler {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        let order: OrderPlaced = event.decode().map_err(HandlerError::permanent)?;
        let trace = event.trace_context();
        let accepted_at = now_millis();
        let preparation =
            domain::preparation_time(order.replay_delivery_minutes, self.default_preparation);
        let ticket = Ticket {
            ticket_id: uuid::Uuid::now_v7().to_string(),
            order_id: order.order_id.clone(),
            restaurant_id: order.restaurant_id.clone(),
            status: TicketStatus::Accepted,
            lines: order.lines,
            accepted_at,
            ready_by: domain::ready_by(accepted_at, preparation, self.time_scale),
            ready_at: None,
        };

        let mut tx = self.db.begin_write().await?;
        if !inbox::record(&mut tx, CONSUMER, &event.id).await? {
            tx.rollback().await?;
            tracing::trace!("event already handled");
            return Ok(());
        }
        if !storage::insert_ticket(&mut tx, &ticket, Some(&trace.to_string())).await? {
            tx.commit().await?;
            tracing::debug!(order_id = %ticket.order_id, "order already has a ticket; event ignored");
            return Ok(());
        }
        let accepted = OrderAccepted {
            order_id: ticket.order_id.clone(),
            restaurant_id: ticket.restaurant_id.clone(),
            ticket_id: ticket.ticket_id.clone(),
            accepted_at,
            ready_by: ticket.ready_by,
        };
        outbox::enqueue(
            &mut tx,
            &Envelope::new(SOURCE, &accepted, Some(trace.child())),
        )
        .await?;
        tx.commit().await?;

        self.relay.notify_one();
        self.timer.notify_one();
        tracing::trace!(
            order_id = %ticket.order_id,
            ticket_id = %ticket.ticket_id,
            preparation_ms = ticket.ready_by - accepted_at,
            "ticket accepted"
        );
        Ok(())
    }
}
