//! The order saga: how a reported event or a customer's cancellation changes an
//! order, and what else that change sets in motion.
//!
//! Every change is made in the caller's transaction, together with everything it
//! causes:
//!
//! - the new status and its timeline entry;
//! - `order.status_changed`, the customer-facing history that notifications read;
//! - `order.cancelled` for a cancellation, so the kitchen and delivery stop;
//! - the payment step it makes necessary: rejected and cancelled orders void their
//!   authorization, delivered orders capture it. The step is a row that a worker
//!   ([`crate::compensation`]) carries out until payments confirms it, so a crash
//!   never loses it.

use sqlx::{Any, Transaction};
use tiffin_bus::envelope::Envelope;
use tiffin_bus::outbox;
use tiffin_events::order::{OrderCancelled, OrderStatusChanged};
use tiffin_runtime::time::now_millis;
use tiffin_runtime::trace::TraceContext;

use crate::SOURCE;
use crate::domain::{OrderEvent, OrderStatus, Transition};
use crate::storage::{self, OrderSummary, PaymentAction};

/// A change reported for an order.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// The order.
    pub order_id: &'a str,
    /// What happened.
    pub event: OrderEvent,
    /// When it happened, in Unix milliseconds.
    pub at: i64,
    /// Why, for rejections and cancellations.
    pub reason: Option<&'a str>,
    /// The event that reported it, if any.
    pub event_id: Option<&'a str>,
    /// The trace to continue in the events the change causes.
    pub trace: TraceContext,
}

/// What applying a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The order moved from one status to another.
    Moved {
        /// The status before.
        from: OrderStatus,
        /// The status after.
        to: OrderStatus,
    },
    /// The change was already reflected; nothing moved.
    Stale(OrderStatus),
    /// The change contradicts the order's status; nothing changed.
    Illegal(OrderStatus),
    /// No such order.
    UnknownOrder,
}

/// Applies `change` inside `tx`, with the events it causes in the outbox.
///
/// # Errors
///
/// Returns the database error; the caller rolls back.
pub async fn apply(
    tx: &mut Transaction<'_, Any>,
    change: &Change<'_>,
) -> Result<Outcome, sqlx::Error> {
    let mut events = Vec::new();
    let outcome = apply_into(tx, change, &mut events).await?;
    outbox::enqueue_many(tx, &events).await?;
    Ok(outcome)
}

/// Applies `change` inside `tx` and adds the events it causes to `events`, which
/// the caller writes to the outbox before it commits: a batch of changes then
/// writes its events with one statement.
///
/// # Errors
///
/// Returns the database error; the caller rolls back.
pub async fn apply_into(
    tx: &mut Transaction<'_, Any>,
    change: &Change<'_>,
    events: &mut Vec<Envelope>,
) -> Result<Outcome, sqlx::Error> {
    let Some(order) = storage::summary_for_update(tx, change.order_id).await? else {
        return Ok(Outcome::UnknownOrder);
    };
    let target = target_status(change.event);

    match order.status.apply(change.event) {
        Transition::To(next) => {
            storage::set_status(tx, change.order_id, next, now_millis()).await?;
            announce(tx, change, &order, next, events).await?;
            if next == OrderStatus::Cancelled {
                let cancelled = OrderCancelled {
                    order_id: change.order_id.to_owned(),
                    restaurant_id: order.restaurant_id.clone(),
                    reason: change.reason.unwrap_or("customer_request").to_owned(),
                    cancelled_at: change.at,
                };
                events.push(Envelope::new(
                    SOURCE,
                    &cancelled,
                    Some(change.trace.child()),
                ));
            }
            if let Some(action) = payment_step(change, &order, next) {
                storage::add_payment_action(tx, &action, now_millis()).await?;
            }
            Ok(Outcome::Moved {
                from: order.status,
                to: next,
            })
        }
        Transition::Stale => {
            // A step overtaken by a later one still happened (accepted after ready,
            // picked up after delivered): it joins the timeline, once.
            if !target.is_final() && target != order.status {
                announce(tx, change, &order, target, events).await?;
            }
            Ok(Outcome::Stale(order.status))
        }
        Transition::Illegal => Ok(Outcome::Illegal(order.status)),
    }
}

/// Records a timeline entry and, when it is new, adds its `order.status_changed`
/// to `events`.
async fn announce(
    tx: &mut Transaction<'_, Any>,
    change: &Change<'_>,
    order: &OrderSummary,
    status: OrderStatus,
    events: &mut Vec<Envelope>,
) -> Result<(), sqlx::Error> {
    let recorded = storage::record_status(
        tx,
        change.order_id,
        status,
        change.at,
        change.event_id,
        change.reason,
    )
    .await?;
    if recorded {
        let event = status_changed(change.order_id, order, status, change.reason, change.at);
        events.push(Envelope::new(SOURCE, &event, Some(change.trace.child())));
    }
    Ok(())
}

/// Builds the customer-facing event of a status change.
pub fn status_changed(
    order_id: &str,
    order: &OrderSummary,
    status: OrderStatus,
    reason: Option<&str>,
    at: i64,
) -> OrderStatusChanged {
    OrderStatusChanged {
        order_id: order_id.to_owned(),
        customer_id: order.customer_id.clone(),
        restaurant_id: order.restaurant_id.clone(),
        status: status.as_str().to_owned(),
        reason: reason.map(str::to_owned),
        total_cents: order.total_cents,
        currency: order.currency.clone(),
        changed_at: at,
    }
}

fn target_status(event: OrderEvent) -> OrderStatus {
    match event {
        OrderEvent::Accepted => OrderStatus::Accepted,
        OrderEvent::Ready => OrderStatus::Ready,
        OrderEvent::PickedUp => OrderStatus::PickedUp,
        OrderEvent::Delivered => OrderStatus::Delivered,
        OrderEvent::Rejected => OrderStatus::Rejected,
        OrderEvent::Cancelled => OrderStatus::Cancelled,
    }
}

/// The payment step a new status requires, if any.
fn payment_step(
    change: &Change<'_>,
    order: &OrderSummary,
    next: OrderStatus,
) -> Option<PaymentAction> {
    let (action, reason) = match next {
        OrderStatus::Rejected => (
            "void",
            format!("order rejected: {}", change.reason.unwrap_or("unknown")),
        ),
        OrderStatus::Cancelled => (
            "void",
            format!(
                "order cancelled: {}",
                change.reason.unwrap_or("customer_request")
            ),
        ),
        OrderStatus::Delivered => ("capture", "order delivered".to_owned()),
        _ => return None,
    };
    Some(PaymentAction {
        order_id: change.order_id.to_owned(),
        action: action.to_owned(),
        payment_id: order.payment_id.clone(),
        amount_cents: order.total_cents,
        reason,
        attempts: 0,
    })
}
