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

use std::collections::HashMap;

use sqlx::{Any, Transaction};
use tiffin_bus::envelope::Envelope;
use tiffin_bus::outbox;
use tiffin_events::order::{OrderCancelled, OrderStatusChanged};
use tiffin_runtime::time::now_millis;
use tiffin_runtime::trace::TraceContext;

use crate::SOURCE;
use crate::domain::{OrderEvent, OrderStatus, Transition};
use crate::storage::{self, OrderSummary, PaymentAction, StatusEntry};

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
    let mut outcomes = apply_all(tx, std::slice::from_ref(change), &mut events).await?;
    outbox::enqueue_many(tx, &events).await?;
    Ok(outcomes.pop().unwrap_or(Outcome::UnknownOrder))
}

/// Applies `changes` in their order inside `tx`, as if one after the other, and
/// adds the events they cause to `events`, which the caller writes to the outbox
/// before it commits. Returns one outcome per change.
///
/// A batch costs the same few statements however many changes it holds: one read
/// of its orders, and one write each for the new statuses, the timeline entries
/// and the payment steps. The caller holds the orders' write locks.
///
/// # Errors
///
/// Returns the database error; the caller rolls back.
pub async fn apply_all(
    tx: &mut Transaction<'_, Any>,
    changes: &[Change<'_>],
    events: &mut Vec<Envelope>,
) -> Result<Vec<Outcome>, sqlx::Error> {
    let ids: Vec<&str> = changes.iter().map(|change| change.order_id).collect();
    let mut orders = storage::summaries(tx, &ids).await?;
    let now = now_millis();
    let mut plan = Plan::default();
    let mut outcomes = Vec::with_capacity(changes.len());

    for change in changes {
        let Some(order) = orders.get_mut(change.order_id) else {
            outcomes.push(Outcome::UnknownOrder);
            continue;
        };
        let target = target_status(change.event);
        let outcome = match order.status.apply(change.event) {
            Transition::To(next) => {
                plan.announce(change, order, next);
                if next == OrderStatus::Cancelled {
                    let cancelled = OrderCancelled {
                        order_id: change.order_id.to_owned(),
                        restaurant_id: order.restaurant_id.clone(),
                        reason: change.reason.unwrap_or("customer_request").to_owned(),
                        cancelled_at: change.at,
                    };
                    plan.emit(Envelope::new(
                        SOURCE,
                        &cancelled,
                        Some(change.trace.child()),
                    ));
                }
                if let Some(action) = payment_step(change, order, next) {
                    plan.payments.push(action);
                }
                let from = order.status;
                order.status = next;
                plan.statuses.insert(change.order_id, next);
                Outcome::Moved { from, to: next }
            }
            Transition::Stale => {
                // A step overtaken by a later one still happened (accepted after
                // ready, picked up after delivered): it joins the timeline, once.
                if !target.is_final() && target != order.status {
                    plan.announce(change, order, target);
                }
                Outcome::Stale(order.status)
            }
            Transition::Illegal => Outcome::Illegal(order.status),
        };
        outcomes.push(outcome);
    }

    let statuses: Vec<(&str, OrderStatus)> = plan.statuses.into_iter().collect();
    storage::set_statuses(tx, &statuses, now).await?;
    let recorded = storage::record_statuses(tx, &plan.entries).await?;
    storage::add_payment_actions(tx, &plan.payments, now).await?;

    // Events keep the order of the changes that caused them. An entry the timeline
    // already had is not announced again.
    for step in plan.outgoing {
        match step {
            Outgoing::Announce(index, event) => {
                let entry = &plan.entries[index];
                if recorded.contains(&(entry.order_id.to_owned(), entry.status)) {
                    events.push(*event);
                }
            }
            Outgoing::Event(event) => events.push(*event),
        }
    }
    Ok(outcomes)
}

/// The writes and events a batch of changes adds up to, gathered before any of
/// them is made.
#[derive(Default)]
struct Plan<'a> {
    /// Each order's last new status.
    statuses: HashMap<&'a str, OrderStatus>,
    /// Timeline entries, one per order and status.
    entries: Vec<StatusEntry<'a>>,
    payments: Vec<PaymentAction>,
    outgoing: Vec<Outgoing>,
}

/// An event the batch causes: one that depends on whether its timeline entry is
/// new, or one it always causes.
enum Outgoing {
    Announce(usize, Box<Envelope>),
    Event(Box<Envelope>),
}

impl<'a> Plan<'a> {
    /// Adds a timeline entry and the `order.status_changed` that announces it, unless
    /// the batch has one for this order and status already.
    fn announce(&mut self, change: &Change<'a>, order: &OrderSummary, status: OrderStatus) {
        let known = self
            .entries
            .iter()
            .any(|entry| entry.order_id == change.order_id && entry.status == status);
        if known {
            return;
        }
        self.entries.push(StatusEntry {
            order_id: change.order_id,
            status,
            at: change.at,
            event_id: change.event_id,
            reason: change.reason,
        });
        let event = status_changed(change.order_id, order, status, change.reason, change.at);
        let envelope = Envelope::new(SOURCE, &event, Some(change.trace.child()));
        self.outgoing.push(Outgoing::Announce(
            self.entries.len() - 1,
            Box::new(envelope),
        ));
    }

    fn emit(&mut self, event: Envelope) {
        self.outgoing.push(Outgoing::Event(Box::new(event)));
    }
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
