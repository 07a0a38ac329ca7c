//! The handler of `order.status_changed`: records one notification per order and
//! status and sends it.

use std::sync::Arc;

use async_trait::async_trait;
use tiffin_bus::envelope::EventData;
use tiffin_bus::{Envelope, Handler, HandlerError, inbox};
use tiffin_events::order::OrderStatusChanged;
use tiffin_runtime::db::Database;
use tiffin_runtime::time::now_millis;
use tokio::sync::Notify;

use crate::channel::Channel;
use crate::domain::{self, Notification, NotificationStatus, OrderStatus};
use crate::sender::{self, SendPolicy};
use crate::storage;

/// The consumer group, which is also the inbox's consumer name.
pub(crate) const CONSUMER: &str = "notifications";

/// The event types this service notifies about. The order service publishes
/// `order.status_changed` only for the changes it applies, so an event it ignored,
/// such as a ready after a cancellation, never reaches the customer.
pub(crate) const EVENT_TYPES: [&str; 1] = [OrderStatusChanged::TYPE];

/// Records and sends the notification of an order's status change.
///
/// In one transaction it records the event in the inbox and inserts a pending
/// notification. A redelivered event stops at the inbox, and a second event for the
/// same order and status (another event id) stops at the unique
/// `(order_id, order_status)` index, so each change has exactly one notification.
/// After the commit it sends the notification once. A failed send leaves it pending
/// for the sender loop and still succeeds, because the event itself has been handled.
pub(crate) struct NotificationHandler {
    pub(crate) db: Database,
    pub(crate) channel: Arc<dyn Channel>,
    pub(crate) channel_name: &'static str,
    pub(crate) policy: SendPolicy,
    /// Wakes the sender loop after a failed send, which may be due for a retry
    /// before the loop's next pass.
    pub(crate) sender: Arc<Notify>,
}

impl std::fmt::Debug for NotificationHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationHandler")
            .field("channel", &self.channel_name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Decodes a status change. A wrong type, an undecodable payload or a status outside
/// the contract's set is permanent, because redelivering the event cannot fix it.
fn decode(event: &Envelope) -> Result<(OrderStatusChanged, OrderStatus), HandlerError> {
    if event.event_type != OrderStatusChanged::TYPE {
        return Err(HandlerError::permanent(anyhow::anyhow!(
            "event {} has type {}, but notifications handles only {}",
            event.id,
            event.event_type,
            EVENT_TYPES.join(" and ")
        )));
    }
    let change: OrderStatusChanged = event.decode().map_err(HandlerError::permanent)?;
    let status = OrderStatus::parse(&change.status).ok_or_else(|| {
        HandlerError::permanent(anyhow::anyhow!(
            "event {} has an unknown order status {:?}: expected one of {}",
            event.id,
            change.status,
            OrderStatus::ALL.map(OrderStatus::as_str).join(", ")
        ))
    })?;
    Ok((change, status))
}

impl NotificationHandler {
    /// Builds the pending notification of a status change.
    fn notification_of(&self, event: &Envelope) -> Result<Notification, HandlerError> {
        let (change, order_status) = decode(event)?;
        let message = domain::status_message(&change, order_status);
        Ok(Notification {
            notification_id: uuid::Uuid::now_v7().to_string(),
            event_id: event.id.clone(),
            order_id: change.order_id,
            customer_id: change.customer_id,
            event_type: event.event_type.clone(),
            order_status,
            channel: self.channel_name.to_owned(),
            subject: message.subject,
            body: message.body,
            status: NotificationStatus::Pending,
            attempts: 0,
            last_error: None,
            created_at: now_millis(),
            sent_at: None,
        })
    }
}

#[async_trait]
impl Handler for NotificationHandler {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.handle_batch(std::slice::from_ref(event)).await
    }

    fn applies_batches(&self) -> bool {
        true
    }

    /// Records the notifications of many events in one transaction, then sends the
    /// new ones side by side.
    async fn handle_batch(&self, events: &[Envelope]) -> Result<(), HandlerError> {
        let notifications = events
            .iter()
            .map(|event| self.notification_of(event))
            .collect::<Result<Vec<_>, _>>()?;

        let ids: Vec<&str> = events.iter().map(|event| event.id.as_str()).collect();
        let mut tx = self.db.begin_write_for(&[]).await?;
        let mut unseen = inbox::record_many(&mut tx, CONSUMER, &ids).await?;
        let mut fresh = Vec::with_capacity(notifications.len());
        for notification in notifications {
            // Taking the id out handles an event given twice in the batch once.
            if !unseen.remove(&notification.event_id) {
                tracing::trace!(event_id = %notification.event_id, "event already handled");
                continue;
            }
            fresh.push(notification);
        }
        // The lease keeps the sender loop off a notification while this send runs.
        let lease = sender::millis(self.policy.lease());
        let rows: Vec<_> = fresh
            .iter()
            .map(|notification| (notification, notification.created_at.saturating_add(lease)))
            .collect();
        let stored = storage::insert_notifications(&mut tx, &rows).await?;
        let mut new = Vec::with_capacity(stored.len());
        for notification in fresh {
            if stored.contains(&notification.notification_id) {
                new.push(notification);
            } else {
                tracing::debug!(
                    order_id = %notification.order_id,
                    order_status = %notification.order_status,
                    "order already has a notification for this status"
                );
            }
        }
        tx.commit().await?;
        if new.is_empty() {
            return Ok(());
        }

        let failed =
            sender::deliver_many(&self.db, self.channel.as_ref(), &new, &self.policy).await;
        if failed {
            self.sender.notify_one();
        }
        Ok(())
    }
}
