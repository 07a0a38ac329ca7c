//! The handler of `order.placed` and `order.ready`: records one notification per
//! event and sends it.

use std::sync::Arc;

use async_trait::async_trait;
use tiffin_bus::envelope::EventData;
use tiffin_bus::{Envelope, Handler, HandlerError, inbox};
use tiffin_events::order::{OrderPlaced, OrderReady};
use tiffin_runtime::db::Database;
use tiffin_runtime::time::now_millis;
use tokio::sync::Notify;

use crate::channel::Channel;
use crate::domain::{self, Message, Notification, NotificationStatus};
use crate::sender::{self, SendPolicy};
use crate::storage;

/// The consumer group, which is also the inbox's consumer name.
pub(crate) const CONSUMER: &str = "notifications";

/// The event types this service notifies about.
pub(crate) const EVENT_TYPES: [&str; 2] = [OrderPlaced::TYPE, OrderReady::TYPE];

/// Records and sends the notification of an order event.
///
/// In one transaction it records the event in the inbox and inserts a pending
/// notification. A redelivered event stops at the inbox, so each event has exactly
/// one notification. After the commit it sends the notification once. A failed send
/// leaves it pending for the sender loop and still succeeds, because the event
/// itself has been handled.
///
/// `order.ready` carries no customer id, so its notification takes the one recorded
/// with the order's `order.placed` notification. `order.ready` can be handled first,
/// for instance when `order.placed` failed once and waits for its redelivery. Its
/// customer id then stays empty until `order.placed` fills it in. The SMTP channel
/// cannot address a notification without one, so its sends fail and are retried
/// meanwhile, and it is marked failed if the retries run out first.
pub(crate) struct NotificationHandler {
    pub(crate) db: Database,
    pub(crate) channel: Arc<dyn Channel>,
    pub(crate) channel_name: &'static str,
    pub(crate) policy: SendPolicy,
    /// Wakes the sender loop after a send, since a failed one may be due for a retry
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

/// Part of a notification that comes from its event.
struct Draft {
    order_id: String,
    /// Known for `order.placed` only.
    customer_id: Option<String>,
    message: Message,
}

fn draft(event: &Envelope) -> Result<Draft, HandlerError> {
    match event.event_type.as_str() {
        OrderPlaced::TYPE => {
            let order: OrderPlaced = event.decode().map_err(HandlerError::permanent)?;
            Ok(Draft {
                message: domain::placed_message(&order),
                order_id: order.order_id,
                customer_id: Some(order.customer_id),
            })
        }
        OrderReady::TYPE => {
            let order: OrderReady = event.decode().map_err(HandlerError::permanent)?;
            Ok(Draft {
                message: domain::ready_message(&order),
                order_id: order.order_id,
                customer_id: None,
            })
        }
        other => Err(HandlerError::permanent(anyhow::anyhow!(
            "event {} has type {other}, but notifications handles only {}",
            event.id,
            EVENT_TYPES.join(" and ")
        ))),
    }
}

#[async_trait]
impl Handler for NotificationHandler {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        let draft = draft(event)?;
        let created_at = now_millis();

        let mut tx = self.db.begin_write().await?;
        if !inbox::record(&mut tx, CONSUMER, &event.id).await? {
            tx.rollback().await?;
            tracing::trace!("event already handled");
            return Ok(());
        }
        let customer_id = match draft.customer_id {
            Some(customer_id) => {
                storage::fill_customer(&mut tx, &draft.order_id, &customer_id).await?;
                customer_id
            }
            None => storage::placed_customer(&mut tx, &draft.order_id)
                .await?
                .unwrap_or_default(),
        };
        let notification = Notification {
            notification_id: uuid::Uuid::now_v7().to_string(),
            event_id: event.id.clone(),
            order_id: draft.order_id,
            customer_id,
            event_type: event.event_type.clone(),
            channel: self.channel_name.to_owned(),
            subject: draft.message.subject,
            body: draft.message.body,
            status: NotificationStatus::Pending,
            attempts: 0,
            last_error: None,
            created_at,
            sent_at: None,
        };
        // The lease keeps the sender loop off the notification while this send runs.
        let lease_until = created_at.saturating_add(sender::millis(self.policy.lease()));
        let inserted = storage::insert_notification(&mut tx, &notification, lease_until).await?;
        tx.commit().await?;
        if !inserted {
            tracing::debug!("event already has a notification");
            return Ok(());
        }

        sender::deliver(&self.db, self.channel.as_ref(), &notification, &self.policy).await;
        self.sender.notify_one();
        Ok(())
    }
}
