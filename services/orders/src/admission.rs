//! Admission control: the order service rejects new orders with 503 while the
//! kitchen's decisions or its own outbox relay fall behind.
//!
//! Under enough load, HTTP accepts orders faster than the events behind them are
//! handled, and the difference waits in the queues. Every new order then takes
//! longer to reach the kitchen, and the wait grows for as long as the load lasts.
//! Rejecting a placement with 503 and `Retry-After` while too many orders have
//! waited too long keeps that wait bounded. The client's retry with the same
//! `Idempotency-Key` places the order once the backlog has shrunk.
//!
//! A placement that arrives while the service is behind is first held for a
//! while (`hold`) in case the backlog clears, and rejected only if it does not.
//! A client that ignores `Retry-After` and retries at once would otherwise keep
//! the service busy sending thousands of rejections a second, with CPU the
//! backlog needs. Held, each connection costs one rejection per hold.
//!
//! The signals are the order service's own data. One is the orders still `placed`
//! (the kitchen's decision has not come back) that are older than a threshold: a
//! few orders stuck for another reason, such as a dead-lettered event, do not stop
//! the service. The other is the age of the oldest event in the outbox: when the
//! relay cannot publish as fast as placements and status changes add events, every
//! event, and so every order, waits longer before anyone hears of it. Held
//! placements leave the cores to the relay until it catches up.
//!
//! NOTE: a backlog further on, such as the notifications queue, is not seen until
//! it slows the kitchen's side down too.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tiffin_bus::outbox::OutboxRelay;
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;
use tiffin_runtime::time::now_millis;
use tokio::sync::watch;

use crate::storage;

/// When the order service rejects new orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionSettings {
    /// Reject new orders while more than this many orders wait for the kitchen
    /// longer than `waiting_after`. `None` admits every order, whatever the relay.
    pub max_waiting: Option<u64>,
    /// How long an order may wait for the kitchen's decision before it counts.
    pub waiting_after: Duration,
    /// Reject new orders while the oldest event in the outbox has waited longer
    /// than this for the relay. `None` leaves the relay out.
    pub max_outbox_lag: Option<Duration>,
    /// How often the signals are read.
    pub interval: Duration,
    /// How long a placement that arrives while the service is behind waits for
    /// it to catch up before it is rejected. Zero rejects it at once.
    pub hold: Duration,
}

impl Default for AdmissionSettings {
    /// 200 orders waiting longer than 2 s, or an outbox event waiting longer than
    /// 1 s, read every 250 ms, and a placement held up to 1 s. When they keep up,
    /// the kitchen decides and the relay publishes in milliseconds.
    fn default() -> Self {
        Self {
            max_waiting: Some(200),
            waiting_after: Duration::from_secs(2),
            max_outbox_lag: Some(Duration::from_secs(1)),
            interval: Duration::from_millis(250),
            hold: Duration::from_secs(1),
        }
    }
}

/// The backlog for which the service rejects an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behind {
    /// Orders have waited too long for the kitchen's decision.
    Kitchen {
        /// How many orders.
        waiting: u64,
        /// The wait after which an order counts, in milliseconds.
        after_ms: u128,
    },
    /// The oldest event in the outbox has waited this many milliseconds.
    Outbox(u64),
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kitchen { waiting, after_ms } => write!(
                f,
                "the kitchen is behind: {waiting} orders have waited more than {after_ms} ms for its decision"
            ),
            Self::Outbox(lag_ms) => write!(
                f,
                "the order service's events are behind: the oldest has waited {lag_ms} ms to be published"
            ),
        }
    }
}

/// The latest readings of the signals, shared by the watcher and the placement
/// handler.
#[derive(Debug, Clone)]
pub struct Admission {
    settings: AdmissionSettings,
    waiting: Arc<AtomicI64>,
    outbox_lag_ms: Arc<AtomicI64>,
    /// True while a signal is over its limit. Held placements wait for false.
    over: Arc<watch::Sender<bool>>,
}

impl Admission {
    /// Creates the gate with nothing counted yet.
    pub fn new(settings: AdmissionSettings) -> Self {
        Self {
            settings,
            waiting: Arc::new(AtomicI64::new(0)),
            outbox_lag_ms: Arc::new(AtomicI64::new(0)),
            over: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Admits a placement, holding it up to `hold` while a signal is over its
    /// limit. Returns what is behind when it still is after that, so that the
    /// caller rejects the order.
    pub async fn admit(&self) -> Result<(), Behind> {
        if self.over_limit().is_none() {
            return Ok(());
        }
        if !self.settings.hold.is_zero() {
            let mut over = self.over.subscribe();
            // Timing out is the expected way out when the backlog persists, and
            // the reading below decides either way.
            let _ = tokio::time::timeout(self.settings.hold, over.wait_for(|over| !*over)).await;
        }
        match self.over_limit() {
            None => Ok(()),
            Some(behind) => Err(behind),
        }
    }

    /// Stores new readings, the waiting orders and the outbox's lag in
    /// milliseconds, and wakes the held placements when both are within their
    /// limits. Returns what is behind, if anything.
    fn record(&self, waiting: i64, outbox_lag_ms: i64) -> Option<Behind> {
        self.waiting.store(waiting, Ordering::Relaxed);
        self.outbox_lag_ms.store(outbox_lag_ms, Ordering::Relaxed);
        let behind = self.over_limit();
        let over = behind.is_some();
        self.over
            .send_if_modified(|state| std::mem::replace(state, over) != over);
        behind
    }

    /// Returns what is over its limit, so that the caller rejects the order;
    /// `None` admits it.
    pub fn over_limit(&self) -> Option<Behind> {
        let limit = self.settings.max_waiting?;
        let waiting = u64::try_from(self.waiting.load(Ordering::Relaxed)).unwrap_or(0);
        if waiting > limit {
            return Some(Behind::Kitchen {
                waiting,
                after_ms: self.settings.waiting_after.as_millis(),
            });
        }
        let max_lag = self.settings.max_outbox_lag?;
        let lag_ms = u64::try_from(self.outbox_lag_ms.load(Ordering::Relaxed)).unwrap_or(0);
        let max_lag_ms = u64::try_from(max_lag.as_millis()).unwrap_or(u64::MAX);
        (lag_ms > max_lag_ms).then_some(Behind::Outbox(lag_ms))
    }

    /// Returns the settings.
    pub fn settings(&self) -> AdmissionSettings {
        self.settings
    }

    /// Reads the signals every interval until `shutdown` is cancelled. A failed
    /// reading keeps the last one and is logged.
    pub async fn watch(self, db: Database, relay: OutboxRelay, shutdown: CancellationToken) {
        if self.settings.max_waiting.is_none() {
            return;
        }
        let waiting_after = i64::try_from(self.settings.waiting_after.as_millis()).unwrap_or(0);
        let mut was_behind = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.settings.interval) => {}
                () = shutdown.cancelled() => return,
            }
            let now = now_millis();
            let waiting = match storage::count_waiting_for_kitchen(&db, now - waiting_after).await {
                Ok(waiting) => waiting,
                Err(error) => {
                    tracing::warn!(error = %error, "failed to count the orders waiting for the kitchen");
                    self.waiting.load(Ordering::Relaxed)
                }
            };
            let outbox_lag_ms = if self.settings.max_outbox_lag.is_some() {
                match relay.oldest_pending().await {
                    Ok(oldest) => oldest.map_or(0, |created_at| (now - created_at).max(0)),
                    Err(error) => {
                        tracing::warn!(error = %error, "failed to read the age of the oldest outbox event");
                        self.outbox_lag_ms.load(Ordering::Relaxed)
                    }
                }
            } else {
                0
            };
            let behind = self.record(waiting, outbox_lag_ms);
            if behind.is_some() != was_behind {
                match behind {
                    Some(behind) => tracing::warn!(
                        %behind,
                        "holding new orders, and rejecting with 503 those still waiting after the hold"
                    ),
                    None => tracing::info!(
                        waiting,
                        outbox_lag_ms,
                        "the kitchen and the outbox relay caught up; admitting new orders"
                    ),
                }
                was_behind = behind.is_some();
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
        admission.record(10, 0);
        let started = tokio::time::Instant::now();

        assert_eq!(admission.admit().await, Ok(()));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn backlog_that_stays_rejects_after_hold() {
        let admission = admission(Duration::from_secs(1));
        admission.record(11, 0);
        let started = tokio::time::Instant::now();

        assert_eq!(
            admission.admit().await,
            Err(Behind::Kitchen {
                waiting: 11,
                after_ms: 2000
            })
        );
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn backlog_that_clears_admits_held_placement() {
        let admission = admission(Duration::from_secs(1));
        admission.record(50, 0);
        let watcher = admission.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            watcher.record(3, 0);
        });
        let started = tokio::time::Instant::now();

        assert_eq!(admission.admit().await, Ok(()));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_hold_rejects_at_once() {
        let admission = admission(Duration::ZERO);
        admission.record(11, 0);
        let started = tokio::time::Instant::now();

        assert_eq!(
            admission.admit().await,
            Err(Behind::Kitchen {
                waiting: 11,
                after_ms: 2000
            })
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn lagging_outbox_rejects_after_hold() {
        let admission = admission(Duration::from_secs(1));
        admission.record(0, 1001);
        let started = tokio::time::Instant::now();

        assert_eq!(admission.admit().await, Err(Behind::Outbox(1001)));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn outbox_within_lag_admits() {
        let admission = admission(Duration::from_secs(1));

        admission.record(0, 1000);

        assert_eq!(admission.admit().await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn outbox_catching_up_admits_held_placement() {
        let admission = admission(Duration::from_secs(1));
        admission.record(0, 5000);
        let watcher = admission.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            watcher.record(0, 20);
        });
        let started = tokio::time::Instant::now();

        assert_eq!(admission.admit().await, Ok(()));
        assert_eq!(started.elapsed(), Duration::from_millis(200));
    }

    #[test]
    fn outbox_left_out_without_lag_limit() {
        let admission = Admission::new(AdmissionSettings {
            max_outbox_lag: None,
            ..AdmissionSettings::default()
        });

        admission.record(0, 60_000);

        assert_eq!(admission.over_limit(), None);
    }

    #[test]
    fn admission_off_ignores_outbox() {
        let admission = Admission::new(AdmissionSettings {
            max_waiting: None,
            ..AdmissionSettings::default()
        });

        admission.record(1000, 60_000);

        assert_eq!(admission.over_limit(), None);
    }
}
