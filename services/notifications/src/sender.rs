//! Sending notifications through the channel, and the sender loop that retries them.
//!
//! The event handler sends each new notification once right after committing it. A
//! notification whose send failed, or was cut off by a crash, stays `pending`, and
//! the sender loop sends it again once its `next_attempt_at` has passed, with
//! exponential backoff, until it is sent or its attempts run out.

use std::sync::Arc;
use std::time::Duration;

use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;
use tiffin_runtime::time::now_millis;
use tokio::sync::Notify;

use crate::channel::Channel;
use crate::domain::{Notification, NotificationStatus};
use crate::storage;

/// Due notifications handled per database read.
const BATCH: usize = 100;

/// Maximum sleep of the sender loop between passes.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Margin added to the send timeout to get the lease of a send. It lets a send that
/// just timed out record its outcome before the loop may take the notification over.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Send timeout and retry schedule of notifications.
///
/// The delay before attempt `n + 1` is `initial_backoff * 2^(n - 1)`, capped at
/// `max_backoff`. With the defaults, a notification is tried 5 times over about 15 s.
#[derive(Debug, Clone)]
pub struct SendPolicy {
    /// Sends before a notification is marked failed, the first one included. Must
    /// be at least 1. Default 5.
    pub max_attempts: u32,
    /// Delay before the first retry. Default 1 s.
    pub initial_backoff: Duration,
    /// Upper bound of the delay. Default 60 s.
    pub max_backoff: Duration,
    /// How long one send may take before it counts as failed. Default 10 s.
    pub timeout: Duration,
}

impl Default for SendPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

impl SendPolicy {
    /// Returns the delay after failed attempt `attempt`, counting from 1.
    pub(crate) fn backoff(&self, attempt: i64) -> Duration {
        let doublings = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        self.initial_backoff
            .saturating_mul(2_u32.pow(doublings))
            .min(self.max_backoff)
    }

    /// Returns the lease of a send: how long it keeps other sends off its notification.
    pub(crate) fn lease(&self) -> Duration {
        self.timeout + LEASE_MARGIN
    }
}

/// Converts a duration to milliseconds for adding to a Unix millisecond timestamp.
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Sends a notification through `channel` and records the outcome: sent, or failed
/// with the next attempt scheduled or the notification given up.
///
/// The caller must hold the notification's lease (its `next_attempt_at` in the
/// future). Errors are logged, not returned: a send whose outcome could not be
/// recorded is sent again after the lease, which the at-least-once contract allows.
pub(crate) async fn deliver(
    db: &Database,
    channel: &dyn Channel,
    notification: &Notification,
    policy: &SendPolicy,
) {
    match send(channel, notification, policy).await {
        Ok(()) => {
            let now = now_millis();
            match storage::mark_sent(db.write_pool(), &notification.notification_id, now).await {
                Ok(_) => tracing::trace!(
                    notification_id = %notification.notification_id,
                    order_id = %notification.order_id,
                    "notification sent"
                ),
                Err(error) => tracing::error!(
                    notification_id = %notification.notification_id,
                    error = %error,
                    "failed to mark a sent notification; it will be sent again"
                ),
            }
        }
        Err(send_error) => record_failed_send(db, notification, &send_error, policy).await,
    }
}

/// Sends notifications side by side, as [`deliver`] does, and marks the sent ones
/// in one transaction, which saves a commit per notification. Returns true when a
/// notification is left pending (its send failed, or the sent ones could not be
/// marked), so that the sender loop looks again.
pub(crate) async fn deliver_many(
    db: &Database,
    channel: &dyn Channel,
    notifications: &[Notification],
    policy: &SendPolicy,
) -> bool {
    let outcomes = futures::future::join_all(
        notifications
            .iter()
            .map(|notification| send(channel, notification, policy)),
    )
    .await;
    let mut sent = Vec::with_capacity(notifications.len());
    for (notification, outcome) in notifications.iter().zip(outcomes) {
        match outcome {
            Ok(()) => sent.push(notification),
            Err(send_error) => record_failed_send(db, notification, &send_error, policy).await,
        }
    }
    let failed = sent.len() < notifications.len();
    if sent.is_empty() {
        return true;
    }

    let now = now_millis();
    let marked = async {
        let ids: Vec<&str> = sent.iter().map(|n| n.notification_id.as_str()).collect();
        let mut tx = db.begin_write_for(&[]).await?;
        storage::mark_all_sent(&mut tx, &ids, now).await?;
        tx.commit().await
    }
    .await;
    match marked {
        Ok(()) => {
            tracing::trace!(sent = sent.len(), "notifications sent");
            failed
        }
        Err(error) => {
            tracing::error!(
                notification_ids = ?sent.iter().map(|n| n.notification_id.as_str()).collect::<Vec<_>>(),
                error = %error,
                "failed to mark sent notifications; they will be sent again"
            );
            true
        }
    }
}

/// Sends one notification, within the policy's timeout.
async fn send(
    channel: &dyn Channel,
    notification: &Notification,
    policy: &SendPolicy,
) -> anyhow::Result<()> {
    match tokio::time::timeout(policy.timeout, channel.send(notification)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(anyhow::anyhow!(
            "send timed out after {} ms",
            policy.timeout.as_millis()
        )),
    }
}

/// Records a failed send: schedules the next attempt, or gives the notification up
/// after its last one.
async fn record_failed_send(
    db: &Database,
    notification: &Notification,
    send_error: &anyhow::Error,
    policy: &SendPolicy,
) {
    let now = now_millis();
    let attempt = notification.attempts + 1;
    let retry_in = policy.backoff(attempt);
    let recorded = storage::record_failure(
        db.write_pool(),
        &notification.notification_id,
        &format!("{send_error:#}"),
        now.saturating_add(millis(retry_in)),
        i64::from(policy.max_attempts),
    )
    .await;
    match recorded {
        Ok(Some(failure)) if failure.status == NotificationStatus::Failed => {
            tracing::error!(
                notification_id = %notification.notification_id,
                order_id = %notification.order_id,
                attempts = failure.attempts,
                error = %send_error,
                cause = ?send_error,
                "failed to send notification; giving up"
            );
        }
        Ok(Some(failure)) => tracing::warn!(
            notification_id = %notification.notification_id,
            order_id = %notification.order_id,
            attempts = failure.attempts,
            error = %send_error,
            retry_in_ms = retry_in.as_millis() as u64,
            "failed to send notification, will retry"
        ),
        Ok(None) => {}
        Err(error) => tracing::error!(
            notification_id = %notification.notification_id,
            error = %error,
            send_error = %send_error,
            "failed to record a failed send; it is retried after its lease"
        ),
    }
}

/// Retries pending notifications whose next attempt is due.
pub(crate) struct SenderLoop {
    db: Database,
    channel: Arc<dyn Channel>,
    policy: SendPolicy,
    /// Woken after a failed send, whose retry may be due before the loop's next pass.
    wake: Arc<Notify>,
}

impl std::fmt::Debug for SenderLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderLoop")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl SenderLoop {
    pub(crate) fn new(db: Database, channel: Arc<dyn Channel>, policy: SendPolicy) -> Self {
        Self {
            db,
            channel,
            policy,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Returns a handle that wakes the loop for an early pass.
    pub(crate) fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs passes until `shutdown` is cancelled. A pass under way when the token is
    /// cancelled finishes the send it is on and stops.
    ///
    /// Between passes it sleeps until the next due attempt, at most [`MAX_SLEEP`], or
    /// until woken. After a failed pass it retries after 100 ms, doubling up to 5 s.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        tracing::info!("notification sender started");
        let mut retry_delay = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let pause = match self.pass(&shutdown).await {
                Ok(pause) => {
                    retry_delay = Duration::from_millis(100);
                    pause
                }
                Err(error) => {
                    tracing::warn!(error = %error, cause = ?error, retry_in_ms = retry_delay.as_millis() as u64, "notification sender pass failed");
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
        tracing::info!("notification sender stopped");
    }

    /// Sends the due notifications, up to one batch, and returns how long to sleep
    /// before the next pass: zero when a full batch suggests that more are due.
    async fn pass(&self, shutdown: &CancellationToken) -> anyhow::Result<Duration> {
        let now = now_millis();
        let due = storage::due_notifications(self.db.pool(), now, BATCH as i64).await?;
        for notification in &due {
            if shutdown.is_cancelled() {
                return Ok(Duration::ZERO);
            }
            let lease_until = now_millis().saturating_add(millis(self.policy.lease()));
            if storage::claim(
                self.db.write_pool(),
                &notification.notification_id,
                now_millis(),
                lease_until,
            )
            .await?
            {
                deliver(&self.db, self.channel.as_ref(), notification, &self.policy).await;
            }
        }
        if due.len() == BATCH {
            return Ok(Duration::ZERO);
        }

        let Some(next) = storage::next_attempt_at(self.db.pool()).await? else {
            return Ok(MAX_SLEEP);
        };
        let until_next = u64::try_from(next.saturating_sub(now_millis())).unwrap_or(0);
        Ok(Duration::from_millis(until_next).min(MAX_SLEEP))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_cap() {
        let policy = SendPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        };

        let delays: Vec<u64> = (1..=5)
            .map(|attempt| policy.backoff(attempt).as_secs())
            .collect();

        assert_eq!(delays, [1, 2, 4, 5, 5]);
    }
}
