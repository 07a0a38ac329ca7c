//! Kitchen rules: ticket states, preparation times and simulated time.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tiffin_events::order::{OrderLine, split_replay_minutes};

/// State of a kitchen ticket.
///
/// A ticket starts `Accepted` and moves to `Ready` once its preparation time has
/// passed. `Rejected` and `Cancelled` are terminal states reserved for rejecting and
/// cancelling orders. Nothing produces them yet, but storage and the API already
/// accept them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TicketStatus {
    Accepted,
    Ready,
    Rejected,
    Cancelled,
}

impl TicketStatus {
    /// Returns the value stored in the `status` column and sent in the API.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Ready => "ready",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored status, or returns `None` for a value outside the set.
    pub(crate) fn parse(value: &str) -> Option<Self> {
        match value {
            "accepted" => Some(Self::Accepted),
            "ready" => Some(Self::Ready),
            "rejected" => Some(Self::Rejected),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

impl fmt::Display for TicketStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kitchen ticket: the work of preparing one order. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Ticket {
    pub(crate) ticket_id: String,
    pub(crate) order_id: String,
    pub(crate) restaurant_id: String,
    pub(crate) status: TicketStatus,
    pub(crate) lines: Vec<OrderLine>,
    pub(crate) accepted_at: i64,
    /// When the food is planned to be ready.
    pub(crate) ready_by: i64,
    /// When the food was ready, or `None` until then.
    pub(crate) ready_at: Option<i64>,
}

/// How many times faster than real time simulated durations run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TimeScale(f64);

/// A time scale that is not a finite number greater than 0.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error(
    "invalid time_scale {0}: it must be a finite number greater than 0, \
     such as 1.0 for real time or 60.0 for one simulated minute per second"
)]
pub(crate) struct InvalidTimeScale(f64);

impl TimeScale {
    /// Validates `factor`.
    pub(crate) fn new(factor: f64) -> Result<Self, InvalidTimeScale> {
        if factor.is_finite() && factor > 0.0 {
            Ok(Self(factor))
        } else {
            Err(InvalidTimeScale(factor))
        }
    }

    /// Converts a simulated duration into the wall-clock time it takes, saturating
    /// at [`Duration::MAX`] for a tiny factor.
    pub(crate) fn wall_clock(self, simulated: Duration) -> Duration {
        Duration::try_from_secs_f64(simulated.as_secs_f64() / self.0).unwrap_or(Duration::MAX)
    }
}

/// Returns how long an order takes to prepare in simulated time: the kitchen's share
/// of a replayed order's order-to-door minutes, or `default` for an ordinary order.
pub(crate) fn preparation_time(
    replay_delivery_minutes: Option<u32>,
    default: Duration,
) -> Duration {
    match replay_delivery_minutes {
        Some(total) => {
            let (preparation_minutes, _delivery_minutes) = split_replay_minutes(total);
            Duration::from_secs(u64::from(preparation_minutes) * 60)
        }
        None => default,
    }
}

/// Returns the Unix millisecond at which a ticket accepted at `accepted_at` is ready,
/// saturating at `i64::MAX`.
pub(crate) fn ready_by(accepted_at: i64, preparation: Duration, scale: TimeScale) -> i64 {
    let wall_clock = scale.wall_clock(preparation).as_millis();
    accepted_at.saturating_add(i64::try_from(wall_clock).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_scale_rejects_non_positive() {
        for factor in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(TimeScale::new(factor).is_err(), "accepted {factor}");
        }
    }

    #[test]
    fn replay_minutes_set_preparation() {
        let preparation = preparation_time(Some(30), Duration::from_secs(1));

        assert_eq!(preparation, Duration::from_secs(12 * 60));
    }

    #[test]
    fn missing_replay_uses_default() {
        let preparation = preparation_time(None, Duration::from_secs(7));

        assert_eq!(preparation, Duration::from_secs(7));
    }

    #[test]
    fn ready_by_is_scaled() {
        let scale = TimeScale::new(60.0).expect("valid scale");

        let ready = ready_by(1_000, Duration::from_secs(12 * 60), scale);

        assert_eq!(ready, 1_000 + 12_000);
    }

    #[test]
    fn ready_by_saturates() {
        let scale = TimeScale::new(f64::MIN_POSITIVE).expect("valid scale");

        let ready = ready_by(1_000, Duration::from_secs(60), scale);

        assert_eq!(ready, i64::MAX);
    }

    #[test]
    fn status_round_trips() {
        for status in [
            TicketStatus::Accepted,
            TicketStatus::Ready,
            TicketStatus::Rejected,
            TicketStatus::Cancelled,
        ] {
            assert_eq!(TicketStatus::parse(status.as_str()), Some(status));
        }
    }
}
