//! The ticket timer: marks accepted tickets ready once their preparation time has
//! passed, and announces `order.ready`.
//!
//! Tickets and their planned ready times live in the database, so a ticket accepted
//! before a restart becomes ready after it: the timer's first pass picks up every
//! ticket that fell due while the service was down.

use std::sync::Arc;
use std::time::Duration;

use tiffin_bus::{Envelope, outbox};
use tiffin_events::order::OrderReady;
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;
use tiffin_runtime::time::now_millis;
use tiffin_runtime::trace::TraceContext;
use tokio::sync::Notify;

use crate::consumer::SOURCE;
use crate::storage::{self, DueTicket};

/// Due tickets handled per database read.
const BATCH: usize = 100;

/// Maximum sleep between passes. A ticket written without a wake-up, by another
/// process sharing the database, waits at most this long.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Moves accepted tickets to ready when their planned ready time has passed.
#[derive(Debug)]
pub(crate) struct TicketTimer {
    db: Database,
    /// Wakes the outbox relay after a commit.
    relay: Arc<Notify>,
    /// Woken by the consumer after it accepts a ticket that may be due sooner than
    /// the timer's next pass.
    wake: Arc<Notify>,
}

impl TicketTimer {
    pub(crate) fn new(db: Database, relay: Arc<Notify>) -> Self {
        Self {
            db,
            relay,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Returns a handle that wakes the timer for an early pass.
    pub(crate) fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs passes until `shutdown` is cancelled. A pass that is under way when the
    /// token is cancelled finishes its batch, one transaction.
    ///
    /// Between passes it sleeps until the next planned ready time, at most
    /// [`MAX_SLEEP`], or until woken. After a failed pass it retries after 100 ms,
    /// doubling up to 5 s.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        tracing::info!("ticket timer started");
        let mut retry_delay = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let pause = match self.pass().await {
                Ok(pause) => {
                    retry_delay = Duration::from_millis(100);
                    pause
                }
                Err(error) => {
                    tracing::warn!(error = %error, cause = ?error, retry_in_ms = retry_delay.as_millis() as u64, "ticket timer pass failed");
                    let pause = retry_delay;
                    retry_delay = (retry_delay * 2).min(Duration::from_secs(5));
                    pause
                }
            };
            if pause.is_zero() {
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => {}
            }
        }
        tracing::info!("ticket timer stopped");
    }

    /// Marks the due tickets ready, up to one batch, and returns how long to sleep
    /// before the next pass: zero when a full batch suggests that more are due.
    async fn pass(&self) -> anyhow::Result<Duration> {
        let due = storage::due_tickets(self.db.pool(), now_millis(), BATCH as i64).await?;
        if !due.is_empty() {
            self.mark_ready(&due).await?;
        }
        if due.len() == BATCH {
            return Ok(Duration::ZERO);
        }

        let Some(next) = storage::next_ready_by(self.db.pool()).await? else {
            return Ok(MAX_SLEEP);
        };
        let until_next = u64::try_from(next.saturating_sub(now_millis())).unwrap_or(0);
        Ok(Duration::from_millis(until_next).min(MAX_SLEEP))
    }

    /// Moves the tickets to ready and writes their `order.ready` events to the
    /// outbox, in one transaction that locks their orders. A ticket that is no
    /// longer accepted, because it was cancelled since it was read, is skipped.
    ///
    /// The restaurants are not locked: a ticket turning ready only frees capacity,
    /// so a decision that still counts it errs on the safe side. Locking them made
    /// every pass wait for the order handler's batches, which lock every
    /// restaurant they name.
    async fn mark_ready(&self, due: &[DueTicket]) -> anyhow::Result<()> {
        let keys: Vec<&str> = due.iter().map(|ticket| ticket.order_id.as_str()).collect();
        let ids: Vec<&str> = due.iter().map(|ticket| ticket.ticket_id.as_str()).collect();
        let mut tx = self.db.begin_write_for(&keys).await?;
        let now = now_millis();
        let updated = storage::mark_ready(&mut tx, &ids, now).await?;
        let mut events = Vec::with_capacity(updated.len());
        for ticket in due
            .iter()
            .filter(|ticket| updated.contains(&ticket.ticket_id))
        {
            let ready = OrderReady {
                order_id: ticket.order_id.clone(),
                restaurant_id: ticket.restaurant_id.clone(),
                ticket_id: ticket.ticket_id.clone(),
                ready_at: now,
                preparation_ms: now - ticket.accepted_at,
                replay_delivery_minutes: ticket.replay_delivery_minutes,
            };
            let trace = ticket
                .traceparent
                .as_deref()
                .and_then(TraceContext::parse)
                .map_or_else(TraceContext::new_root, |context| context.child());
            tracing::trace!(
                order_id = %ticket.order_id,
                ticket_id = %ticket.ticket_id,
                preparation_ms = ready.preparation_ms,
                "ticket ready"
            );
            events.push(Envelope::new(SOURCE, &ready, Some(trace)));
        }
        outbox::enqueue_many(&mut tx, &events).await?;
        tx.commit().await?;

        if !events.is_empty() {
            self.relay.notify_one();
        }
        Ok(())
    }
}
