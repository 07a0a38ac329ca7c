//! Admission control: the order service rejects new orders with 503 while the
//! kitchen's decisions fall behind.
//!
//! Under enough load, HTTP accepts orders faster than the events behind them are
//! handled, and the difference waits in the queues. Every new order then takes
//! longer to reach the kitchen, and the wait grows for as long as the load lasts.
//! Rejecting a placement with 503 and `Retry-After` while too many orders have
//! waited too long keeps that wait bounded. The client's retry with the same
//! `Idempotency-Key` places the order once the backlog has shrunk.
//!
//! A placement that arrives while the kitchen is behind is first held for a
//! while (`hold`) in case the backlog clears, and rejected only if it does not.
//! A client that ignores `Retry-After` and retries at once would otherwise keep
//! the service busy sending thousands of rejections a second, with CPU the
//! backlog needs. Held, each connection costs one rejection per hold.
//!
//! The signal is the order service's own data: orders still `placed` (the
//! kitchen's decision has not come back) that are older than a threshold. A few
//! orders stuck for another reason, such as a dead-lettered event, do not stop
//! the service.
//!
//! NOTE: only the kitchen's side is counted. A backlog further on, such as the
//! notifications queue, is not seen until it slows the kitchen's side down too.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;
use tiffin_runtime::time::now_millis;
use tokio::sync::watch;

use crate::storage;

/// When the order service rejects new orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionSettings {
    /// Reject new orders while more than this many orders wait for the kitchen
    /// longer than `waiting_after`. `None` admits every order.
    pub max_waiting: Option<u64>,
    /// How long an order may wait for the kitchen's decision before it counts.
    pub waiting_after: Duration,
    /// How often the count is taken.
    pub interval: Duration,
    /// How long a placement that arrives while the kitchen is behind waits for
    /// it to catch up before it is rejected. Zero rejects it at once.
    pub hold: Duration,
}

impl Default for AdmissionSettings {
    /// 200 orders waiting longer than 2 s, counted every 250 ms, and a placement
    /// held up to 1 s: the kitchen decides in milliseconds when it keeps up.
    fn default() -> Self {
        Self {
            max_waiting: Some(200),
            waiting_after: Duration::from_secs(2),
            interval: Duration::from_millis(250),
            hold: Duration::from_secs(1),
        }
    }
}

/// The latest count of waiting orders, shared by the watcher and the placement
/// handler.
#[derive(Debug, Clone)]
pub struct Admission {
    settings: AdmissionSettings,
    waiting: Arc<AtomicI64>,
    /// True while the count is over the limit. Held placements wait for false.
    over: Arc<watch::Sender<bool>>,
}

impl Admission {
    /// Creates the gate with no orders counted yet.
    pub fn new(settings: AdmissionSettings) -> Self {
        Self {
            settings,
            waiting: Arc::new(AtomicI64::new(0)),
            over: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Admits a placement, holding it up to `hold` while the count is over the
    /// limit. Returns the number of waiting orders when it is still over the
    /// limit after that, so that the caller rejects the order.
    pub async fn admit(&self) -> Result<(), u64> {
        if self.over_limit().is_none() {
            return Ok(());
        }
        if !self.settings.hold.is_zero() {
            let mut over = self.over.subscribe();
            // Timing out is the expected way out when the backlog persists, and
            // the count below decides either way.
            let _ = tokio::time::timeout(self.settings.hold, over.wait_for(|over| !*over)).await;
        }
        match self.over_limit() {
            None => Ok(()),
            Some(waiting) => Err(waiting),
        }
    }

    /// Stores a new count of waiting orders and wakes the held placements when
    /// it drops to the limit or below. Returns true when the count is over it.
    fn record(&self, waiting: i64) -> bool {
        self.waiting.store(waiting, Ordering::Relaxed);
        let over = self.over_limit().is_some();
        self.over
            .send_if_modified(|state| std::mem::replace(state, over) != over);
        over
    }

    /// Returns the number of waiting orders when it is over the limit, so that
    /// the caller rejects the order; `None` admits it.
    pub fn over_limit(&self) -> Option<u64> {
        let limit = self.settings.max_waiting?;
        let waiting = u64::try_from(self.waiting.load(Ordering::Relaxed)).unwrap_or(0);
        (waiting > limit).then_some(waiting)
    }

    /// Returns the settings.
    pub fn settings(&self) -> AdmissionSettings {
        self.settings
    }

    /// Counts the waiting orders every interval until `shutdown` is cancelled. A
    /// failed count keeps the last one and is logged.
    pub async fn watch(self, db: Database, shutdown: CancellationToken) {
        if self.settings.max_waiting.is_none() {
            return;
        }
        let waiting_after = i64::try_from(self.settings.waiting_after.as_millis()).unwrap_or(0);
        let mut was_over = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.settings.interval) => {}
                () = shutdown.cancelled() => return,
            }
            let before = now_millis().saturating_sub(waiting_after);
            match storage::count_waiting_for_kitchen(&db, before).await {
                Ok(waiting) => {
                    let over = self.record(waiting);
                    if over != was_over {
                        if over {
                            let limit = self.settings.max_waiting.unwrap_or_default();
                            tracing::warn!(
                                waiting,
                                limit,
                                "the kitchen is behind; holding new orders, and rejecting with 503 those still waiting after the hold"
                            );
                        } else {
                            tracing::info!(waiting, "the kitchen caught up; admitting new orders");
                        }
                        was_over = over;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error, "failed to count the orders waiting for the kitchen");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(hold: Duration) -> Admission {
        Admission::new(AdmissionSettings {
            max_waiting: Some(10),
            hold,
            ..AdmissionSettings::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn under_limit_admits_at_once() {
        let admission = admission(Duration::from_secs(1));
        admission.record(10);
        let started = tokio::time::Instant::now();

        assert_eq!(admission.admit().await, Ok(()));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn backlog_that_stays_rejects_after_hold() {
        let admission = admission(Duration::from_secs(1));
        admission.record(11);
        let started = tokio::time::Instant::now();

        assert_eq!(admission.admit().await, Err(11));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn backlog_that_clears_admits_held_placement() {
        let admission = admission(Duration::from_secs(1));
        admission.record(50);
        let watcher = admission.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            watcher.record(3);
        });
        let started = tokio::time::Instant::now();

        assert_eq!(admission.admit().await, Ok(()));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_hold_rejects_at_once() {
        let admission = admission(Duration::ZERO);
        admission.record(11);
        let started = tokio::time::Instant::now();

        assert_eq!(admission.admit().await, Err(11));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
