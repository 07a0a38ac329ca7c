//! The order handler: decides each `order.placed`, opening a ticket and announcing
//! `order.accepted` or `order.rejected`, and applies `order.cancelled`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Any, Transaction};
use tiffin_bus::{Envelope, Handler, HandlerError, inbox, outbox};
use tiffin_events::order::{OrderAccepted, OrderCancelled, OrderPlaced, OrderRejected};
use tiffin_hours::LocalTime;
use tiffin_runtime::db::Database;
use tiffin_runtime::time::now_millis;
use tokio::sync::Notify;

use crate::domain::decision::{self, Circumstances, Decision, Limits};
use crate::domain::{self, KnownRestaurant, Ticket, TicketStatus, TimeScale, stock};
use crate::storage::{self, NewTicket};

/// The consumer group, which is also the inbox's consumer name.
pub(crate) const CONSUMER: &str = "kitchen";

/// The event types that the kitchen's work queue binds.
pub(crate) const ORDER_EVENTS: [&str; 2] = ["order.placed", "order.cancelled"];

/// The CloudEvents `source` of the kitchen's events.
pub(crate) const SOURCE: &str = "/tiffin/kitchen";

/// Decides placed orders and applies cancellations, one ticket per order.
///
/// A batch of events is handled in one transaction that records them in the inbox,
/// changes the tickets and stock, and writes the events they cause to the outbox. A
/// redelivered event stops at the inbox. Whichever of `order.placed` and `order.cancelled` comes
/// first creates the order's ticket, so a second `order.placed` for the same order
/// (another event id) decides nothing and announces nothing.
#[derive(Debug)]
pub(crate) struct OrderHandler {
    pub(crate) db: Database,
    pub(crate) time_scale: TimeScale,
    pub(crate) default_preparation: Duration,
    pub(crate) limits: Limits,
    /// The restaurants' offset from UTC, for orders without a replayed local time.
    pub(crate) utc_offset_minutes: i32,
    /// Wakes the outbox relay after a commit.
    pub(crate) relay: Arc<Notify>,
    /// Wakes the ticket timer, which may be asleep until a later ticket.
    pub(crate) timer: Arc<Notify>,
}

/// An event of the kitchen's queue, decoded.
enum OrderWork {
    Placed(OrderPlaced),
    Cancelled(OrderCancelled),
}

impl OrderWork {
    fn decode(event: &Envelope) -> Result<Self, HandlerError> {
        match event.event_type.as_str() {
            "order.placed" => Ok(Self::Placed(
                event.decode().map_err(HandlerError::permanent)?,
            )),
            "order.cancelled" => Ok(Self::Cancelled(
                event.decode().map_err(HandlerError::permanent)?,
            )),
            other => Err(HandlerError::permanent(anyhow::anyhow!(
                "the kitchen does not handle event type {other}"
            ))),
        }
    }

    /// Returns the write-lock keys: the restaurant, whose capacity and stock decisions
    /// are made one at a time, and the order.
    fn keys(&self) -> [&str; 2] {
        match self {
            Self::Placed(order) => [&order.restaurant_id, &order.order_id],
            Self::Cancelled(cancelled) => [&cancelled.restaurant_id, &cancelled.order_id],
        }
    }
}

#[async_trait]
impl Handler for OrderHandler {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.handle_batch(std::slice::from_ref(event)).await
    }

    fn applies_batches(&self) -> bool {
        true
    }

    /// Handles the events in order in one transaction, which locks every
    /// restaurant and order they name and writes the events they cause with one
    /// statement.
    async fn handle_batch(&self, events: &[Envelope]) -> Result<(), HandlerError> {
        let works = events
            .iter()
            .map(OrderWork::decode)
            .collect::<Result<Vec<_>, _>>()?;
        let keys: Vec<&str> = works.iter().flat_map(OrderWork::keys).collect();
        let ids: Vec<&str> = events.iter().map(|event| event.id.as_str()).collect();

        let placed: Vec<&OrderPlaced> = works
            .iter()
            .filter_map(|work| match work {
                OrderWork::Placed(order) => Some(order),
                OrderWork::Cancelled(_) => None,
            })
            .collect();

        let mut tx = self.db.begin_write_for(&keys).await?;
        let mut new = inbox::record_many(&mut tx, CONSUMER, &ids).await?;
        let mut reads = BatchReads::load(&mut tx, &placed).await?;
        let mut tickets = Vec::new();
        let mut outgoing = Vec::new();
        let mut accepted = false;
        for (event, work) in events.iter().zip(works) {
            // Taking the id out handles an event given twice in the batch once.
            if !new.remove(&event.id) {
                tracing::trace!(event_id = %event.id, "event already handled");
                continue;
            }
            match work {
                OrderWork::Placed(order) => {
                    let decided = self.place(&mut tx, &mut reads, event, order).await?;
                    if let Some((ticket, announcement)) = decided {
                        accepted |= ticket.ticket.status == TicketStatus::Accepted;
                        tickets.push(ticket);
                        outgoing.push(announcement);
                    }
                }
                OrderWork::Cancelled(cancelled) => {
                    // The cancellation reads the order's ticket, which may be one
                    // of this batch's.
                    insert_tickets(&mut tx, &mut tickets).await?;
                    self.cancel(&mut tx, &mut reads, event, &cancelled).await?;
                    reads.cancelled(&cancelled);
                }
            }
        }
        insert_tickets(&mut tx, &mut tickets).await?;
        outbox::enqueue_many(&mut tx, &outgoing).await?;
        tx.commit().await?;

        if !outgoing.is_empty() {
            self.relay.notify_one();
        }
        if accepted {
            self.timer.notify_one();
        }
        Ok(())
    }
}

impl OrderHandler {
    /// Decides a placed order inside `tx` and takes the stock it needs. Returns
    /// the ticket that records the decision, for the caller to insert, and the
    /// event that announces it, or nothing when the order already has a ticket.
    /// The caller has recorded the event in the inbox and locked the restaurant
    /// and the order.
    async fn place(
        &self,
        tx: &mut Transaction<'static, Any>,
        reads: &mut BatchReads,
        event: &Envelope,
        order: OrderPlaced,
    ) -> Result<Option<(NewTicket, Envelope)>, HandlerError> {
        let now = now_millis();
        // NOTE: the offset is fixed, so orders placed during daylight saving time are
        // judged an hour off unless the offset is changed with the season.
        let local_time = match &order.replay_local_time {
            Some(value) => LocalTime::parse(value).map_err(HandlerError::permanent)?,
            None => LocalTime::from_unix_millis(now, self.utc_offset_minutes),
        };
        let trace = event.trace_context();

        if reads.ticketed.contains(&order.order_id) {
            tracing::debug!(order_id = %order.order_id, "order already has a ticket; event ignored");
            return Ok(None);
        }

        let hours = domain::opening_hours(reads.restaurants.get(&order.restaurant_id));
        let ordered = stock::ordered_quantities(&order.lines);
        let levels = reads.stock_levels(&order.restaurant_id, ordered.keys());
        let shortages = stock::shortages(&order.lines, &levels);
        let open_tickets = reads.open_tickets(tx, &order.restaurant_id).await?;
        let decision = decision::decide(
            &Circumstances {
                restaurant_id: &order.restaurant_id,
                local_time,
                hours: &hours,
                shortages: &shortages,
                open_tickets,
                draw: fastrand::f64(),
            },
            self.limits,
        );

        let mut ticket = Ticket {
            ticket_id: uuid::Uuid::now_v7().to_string(),
            order_id: order.order_id.clone(),
            restaurant_id: order.restaurant_id.clone(),
            status: TicketStatus::Rejected,
            reject_reason: None,
            reject_detail: None,
            lines: order.lines.clone(),
            replay_delivery_minutes: order.replay_delivery_minutes,
            created_at: now,
            accepted_at: None,
            ready_by: None,
            ready_at: None,
            cancelled_at: None,
        };
        let mut stock_taken = BTreeMap::new();
        let announcement = match decision {
            Decision::Accept => {
                // Stock is taken only for the items that had a limit when the
                // decision read the stock. An unlimited item has nothing to take, so
                // skipping it saves a statement a line; a limit set since then
                // applies to later orders.
                let limited = ordered
                    .iter()
                    .filter(|(menu_item_id, _)| levels.contains_key(*menu_item_id));
                for (menu_item_id, &quantity) in limited {
                    if storage::take_stock(tx, &order.restaurant_id, menu_item_id, quantity).await?
                    {
                        reads.took(&order.restaurant_id, menu_item_id, quantity);
                        stock_taken.insert(menu_item_id.clone(), quantity);
                    }
                }
                let preparation = domain::preparation_time(
                    order.replay_delivery_minutes,
                    self.default_preparation,
                );
                let ready_by = domain::ready_by(now, preparation, self.time_scale);
                ticket.status = TicketStatus::Accepted;
                ticket.accepted_at = Some(now);
                ticket.ready_by = Some(ready_by);
                let accepted = OrderAccepted {
                    order_id: order.order_id.clone(),
                    restaurant_id: order.restaurant_id.clone(),
                    ticket_id: ticket.ticket_id.clone(),
                    accepted_at: now,
                    ready_by,
                };
                Envelope::new(SOURCE, &accepted, Some(trace.child()))
            }
            Decision::Reject { reason, detail } => {
                ticket.reject_reason = Some(reason);
                ticket.reject_detail = Some(detail.clone());
                let rejected = OrderRejected {
                    order_id: order.order_id.clone(),
                    restaurant_id: order.restaurant_id.clone(),
                    reason,
                    detail,
                    rejected_at: now,
                };
                Envelope::new(SOURCE, &rejected, Some(trace.child()))
            }
        };

        reads.ticketed.insert(ticket.order_id.clone());
        if ticket.status == TicketStatus::Accepted {
            *reads
                .open_tickets
                .entry(ticket.restaurant_id.clone())
                .or_default() += 1;
        }
        tracing::trace!(
            order_id = %ticket.order_id,
            ticket_id = %ticket.ticket_id,
            status = %ticket.status,
            reason = ticket.reject_reason.map(|reason| reason.as_str()),
            %local_time,
            "order decided"
        );
        let ticket = NewTicket {
            ticket,
            traceparent: trace.to_string(),
            stock_taken,
        };
        Ok(Some((ticket, announcement)))
    }

    /// Cancels the order's ticket inside `tx` while it is accepted, or records the
    /// cancellation when the order has not arrived yet. The caller has recorded
    /// the event in the inbox and locked the restaurant and the order.
    async fn cancel(
        &self,
        tx: &mut Transaction<'static, Any>,
        reads: &mut BatchReads,
        event: &Envelope,
        cancelled: &OrderCancelled,
    ) -> Result<(), HandlerError> {
        let order_id = cancelled.order_id.as_str();
        let now = now_millis();

        let existing = storage::find_ticket_in(tx, order_id)
            .await
            .map_err(HandlerError::transient)?;
        match existing {
            None => {
                let ticket = Ticket {
                    ticket_id: uuid::Uuid::now_v7().to_string(),
                    order_id: cancelled.order_id.clone(),
                    restaurant_id: cancelled.restaurant_id.clone(),
                    status: TicketStatus::Cancelled,
                    reject_reason: None,
                    reject_detail: None,
                    lines: Vec::new(),
                    replay_delivery_minutes: None,
                    created_at: now,
                    accepted_at: None,
                    ready_by: None,
                    ready_at: None,
                    cancelled_at: Some(now),
                };
                let mut ticket = vec![NewTicket {
                    ticket,
                    traceparent: event.trace_context().to_string(),
                    stock_taken: BTreeMap::new(),
                }];
                insert_tickets(tx, &mut ticket).await?;
                tracing::debug!(
                    order_id,
                    "order cancelled before it arrived; its order.placed will be ignored"
                );
            }
            Some(locked) if locked.ticket.status == TicketStatus::Accepted => {
                if storage::cancel_ticket(tx, &locked.ticket.ticket_id, now).await? {
                    for (menu_item_id, &quantity) in &locked.stock_taken {
                        reads.returned(&locked.ticket.restaurant_id, menu_item_id, quantity);
                        storage::return_stock(
                            tx,
                            &locked.ticket.restaurant_id,
                            menu_item_id,
                            quantity,
                        )
                        .await?;
                    }
                }
                tracing::debug!(order_id, ticket_id = %locked.ticket.ticket_id, "ticket cancelled");
            }
            Some(locked) if locked.ticket.status == TicketStatus::Cancelled => {
                tracing::debug!(order_id, "ticket already cancelled; event ignored");
            }
            Some(locked) => {
                tracing::info!(
                    order_id,
                    ticket_id = %locked.ticket.ticket_id,
                    status = %locked.ticket.status,
                    "cancellation ignored: the kitchen only cancels tickets it is still preparing"
                );
            }
        }
        Ok(())
    }
}

/// Inserts the decided tickets and empties `tickets`. Every one of them must go
/// in: the batch read them as absent while holding its orders' locks, so a ticket
/// that exists now came from a concurrent handler, and the error rolls the batch
/// back for a retry that finds it.
async fn insert_tickets(
    tx: &mut Transaction<'static, Any>,
    tickets: &mut Vec<NewTicket>,
) -> Result<(), HandlerError> {
    if tickets.is_empty() {
        return Ok(());
    }
    let inserted = storage::insert_tickets(tx, tickets).await?;
    if let Some(taken) = tickets
        .iter()
        .find(|new| !inserted.contains(&new.ticket.order_id))
    {
        return Err(HandlerError::transient(anyhow::anyhow!(
            "order {} got a ticket from a concurrent handler",
            taken.ticket.order_id
        )));
    }
    tickets.clear();
    Ok(())
}

/// Reads that the placements of one batch share, made with one statement each
/// before the first decision and kept current as the batch takes stock and adds
/// tickets. A change that another transaction commits meanwhile (the ready timer
/// closing tickets, a restaurant's new opening hours) applies from the next batch
/// on. Until then the count of open tickets can only be too high, which makes the
/// kitchen reject a busy restaurant's orders a little early. When staff lower an
/// item's stock below what the batch read and then takes, the take fails the stock
/// row's check, and the batch is retried on fresh reads.
#[derive(Debug, Default)]
struct BatchReads {
    /// The batch's placed orders that have a ticket.
    ticketed: HashSet<String>,
    /// The batch's restaurants that the replica holds.
    restaurants: HashMap<String, KnownRestaurant>,
    /// Accepted tickets per restaurant.
    open_tickets: HashMap<String, i64>,
    /// The stock of the ordered items that have a limit, by restaurant and item.
    stock: HashMap<(String, String), i64>,
}

impl BatchReads {
    /// Reads what deciding `placed` needs.
    async fn load(
        tx: &mut Transaction<'static, Any>,
        placed: &[&OrderPlaced],
    ) -> Result<Self, sqlx::Error> {
        if placed.is_empty() {
            return Ok(Self::default());
        }
        let order_ids: Vec<&str> = placed.iter().map(|order| order.order_id.as_str()).collect();
        let mut restaurant_ids: Vec<&str> = placed
            .iter()
            .map(|order| order.restaurant_id.as_str())
            .collect();
        restaurant_ids.sort_unstable();
        restaurant_ids.dedup();
        let items: HashSet<(&str, &str)> = placed
            .iter()
            .flat_map(|order| {
                order
                    .lines
                    .iter()
                    .map(|line| (order.restaurant_id.as_str(), line.menu_item_id.as_str()))
            })
            .collect();

        let ticketed = storage::orders_with_tickets(tx, &order_ids).await?;
        let restaurants = storage::find_restaurants(tx, &restaurant_ids).await?;
        let mut open_tickets = storage::count_open_tickets_of(tx, &restaurant_ids).await?;
        for restaurant_id in &restaurant_ids {
            open_tickets.entry((*restaurant_id).to_owned()).or_insert(0);
        }
        let stock = storage::stock_levels(tx, &items).await?;
        Ok(Self {
            ticketed,
            restaurants,
            open_tickets,
            stock,
        })
    }

    /// Returns the restaurant's accepted tickets, counted again when a
    /// cancellation of the batch made the count stale.
    async fn open_tickets(
        &mut self,
        tx: &mut Transaction<'static, Any>,
        restaurant_id: &str,
    ) -> Result<i64, sqlx::Error> {
        if let Some(&count) = self.open_tickets.get(restaurant_id) {
            return Ok(count);
        }
        let count = storage::count_open_tickets(tx, restaurant_id).await?;
        self.open_tickets.insert(restaurant_id.to_owned(), count);
        Ok(count)
    }

    /// Returns the stock of those of `menu_item_ids` that have a limit.
    fn stock_levels<'a>(
        &self,
        restaurant_id: &str,
        menu_item_ids: impl IntoIterator<Item = &'a String>,
    ) -> BTreeMap<String, i64> {
        menu_item_ids
            .into_iter()
            .filter_map(|item| {
                let key = (restaurant_id.to_owned(), item.clone());
                self.stock.get(&key).map(|&level| (item.clone(), level))
            })
            .collect()
    }

    /// Accounts for stock that an acceptance took.
    fn took(&mut self, restaurant_id: &str, menu_item_id: &str, quantity: u64) {
        let key = (restaurant_id.to_owned(), menu_item_id.to_owned());
        if let Some(level) = self.stock.get_mut(&key) {
            *level = level.saturating_sub(i64::try_from(quantity).unwrap_or(i64::MAX));
        }
    }

    /// Accounts for stock that a cancellation gave back.
    fn returned(&mut self, restaurant_id: &str, menu_item_id: &str, quantity: u64) {
        let key = (restaurant_id.to_owned(), menu_item_id.to_owned());
        if let Some(level) = self.stock.get_mut(&key) {
            *level = level.saturating_add(i64::try_from(quantity).unwrap_or(i64::MAX));
        }
    }

    /// Accounts for a cancellation the batch applied: the order has a ticket now,
    /// and the restaurant's open tickets are counted again when next needed.
    fn cancelled(&mut self, cancelled: &OrderCancelled) {
        self.ticketed.insert(cancelled.order_id.clone());
        self.open_tickets.remove(&cancelled.restaurant_id);
    }
}
