//! Kitchen rules: ticket states, preparation times, simulated time and the settings
//! that bound decisions. The decision itself is in `decision`, and stock rules in
//! `stock`.

pub(crate) mod decision;
pub(crate) mod stock;

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tiffin_events::order::{OrderLine, RejectReason, split_replay_minutes};
use tiffin_hours::OpeningHours;
use tiffin_runtime::token::Role;

/// State of a kitchen ticket.
///
/// A ticket starts `Accepted` and moves to `Ready` once its preparation time has
/// passed, or to `Cancelled` when the customer cancels first. `Rejected` is where an
/// order that the kitchen refused starts and stays. A cancellation that arrives
/// before its order creates a ticket that starts `Cancelled`.
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

/// A kitchen ticket: the kitchen's decision on one order and, once accepted, the
/// work of preparing it. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Ticket {
    pub(crate) ticket_id: String,
    pub(crate) order_id: String,
    pub(crate) restaurant_id: String,
    pub(crate) status: TicketStatus,
    /// The reason the kitchen rejected the order, for a rejected ticket.
    pub(crate) reject_reason: Option<RejectReason>,
    /// Details of the rejection for people, such as the sold-out item.
    pub(crate) reject_detail: Option<String>,
    /// The order's lines, empty for a ticket created by an early cancellation.
    pub(crate) lines: Vec<OrderLine>,
    /// The replayed order's order-to-door minutes, copied into `order.ready`.
    pub(crate) replay_delivery_minutes: Option<u32>,
    /// When the kitchen decided the order or recorded its cancellation.
    pub(crate) created_at: i64,
    /// When the kitchen accepted the order, or `None` when it never did.
    pub(crate) accepted_at: Option<i64>,
    /// When the food is planned to be ready, for an accepted order.
    pub(crate) ready_by: Option<i64>,
    /// When the food was ready, or `None` until then.
    pub(crate) ready_at: Option<i64>,
    /// When the cancellation arrived, for a cancelled ticket.
    pub(crate) cancelled_at: Option<i64>,
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

/// The share of placed orders that the kitchen declines at random, from 0.0 to 1.0,
/// to simulate kitchens that turn orders down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RejectRate(f64);

/// A reject rate outside 0.0..=1.0.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error(
    "invalid reject_rate {0}: it must be a number from 0.0 (decline nothing) to 1.0 \
     (decline every order that passes the other checks)"
)]
pub(crate) struct InvalidRejectRate(f64);

impl RejectRate {
    /// Validates `rate`.
    pub(crate) fn new(rate: f64) -> Result<Self, InvalidRejectRate> {
        if (0.0..=1.0).contains(&rate) {
            Ok(Self(rate))
        } else {
            Err(InvalidRejectRate(rate))
        }
    }

    /// Returns true when `draw`, uniform in `[0, 1)`, falls in the declined share.
    pub(crate) fn declines(self, draw: f64) -> bool {
        draw < self.0
    }
}

/// The range of real UTC offsets, from UTC-12:00 to UTC+14:00, in minutes.
const UTC_OFFSETS: std::ops::RangeInclusive<i32> = -12 * 60..=14 * 60;

/// Validates a UTC offset in minutes east of Greenwich.
pub(crate) fn validate_utc_offset(minutes: i32) -> anyhow::Result<i32> {
    if UTC_OFFSETS.contains(&minutes) {
        Ok(minutes)
    } else {
        anyhow::bail!(
            "invalid utc_offset_minutes {minutes}: it must be from -720 (UTC-12:00) to 840 \
             (UTC+14:00), such as 120 for Helsinki in winter"
        )
    }
}

/// A restaurant as the replica stores it: what its opening hours depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KnownRestaurant {
    /// OpenStreetMap's `amenity`: `restaurant`, `fast_food` or `cafe`.
    pub(crate) amenity: String,
    /// The raw `opening_hours` value, or `None` when the catalog has none.
    pub(crate) opening_hours: Option<String>,
}

/// Returns a restaurant's opening hours: its own when they parse, otherwise the
/// default of its amenity, and the default of `restaurant` for a restaurant that the
/// replica does not know yet.
pub(crate) fn opening_hours(restaurant: Option<&KnownRestaurant>) -> OpeningHours {
    let Some(restaurant) = restaurant else {
        return tiffin_hours::default_for("restaurant");
    };
    restaurant
        .opening_hours
        .as_deref()
        .and_then(|value| OpeningHours::parse(value).ok())
        .unwrap_or_else(|| tiffin_hours::default_for(&restaurant.amenity))
}

/// Parses a stored reject reason, or returns `None` for a value outside the set.
pub(crate) fn parse_reject_reason(value: &str) -> Option<RejectReason> {
    [
        RejectReason::Closed,
        RejectReason::SoldOut,
        RejectReason::AtCapacity,
        RejectReason::KitchenDeclined,
    ]
    .into_iter()
    .find(|reason| reason.as_str() == value)
}

/// Returns true when a caller with `role` may read and change stock.
pub(crate) fn may_manage_stock(role: Role) -> bool {
    matches!(role, Role::Staff | Role::Admin)
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
    fn reject_rate_bounds_are_inclusive() {
        for rate in [0.0, 0.5, 1.0] {
            assert!(RejectRate::new(rate).is_ok(), "rejected {rate}");
        }
        for rate in [-0.1, 1.1, f64::NAN, f64::INFINITY] {
            assert!(RejectRate::new(rate).is_err(), "accepted {rate}");
        }
    }

    #[test]
    fn reject_rate_extremes_decide_all() {
        let never = RejectRate::new(0.0).expect("valid rate");
        let always = RejectRate::new(1.0).expect("valid rate");

        assert!(!never.declines(0.0));
        assert!(always.declines(0.999_999));
    }

    #[test]
    fn utc_offset_outside_range_fails() {
        assert_eq!(validate_utc_offset(120).expect("Helsinki"), 120);
        assert!(validate_utc_offset(-721).is_err());
        assert!(validate_utc_offset(841).is_err());
    }

    #[test]
    fn unknown_restaurant_gets_restaurant_default() {
        let hours = opening_hours(None);

        assert_eq!(hours, tiffin_hours::default_for("restaurant"));
    }

    #[test]
    fn unparseable_hours_use_amenity_default() {
        let cafe = KnownRestaurant {
            amenity: "cafe".to_owned(),
            opening_hours: Some("by appointment".to_owned()),
        };

        let hours = opening_hours(Some(&cafe));

        assert_eq!(hours, tiffin_hours::default_for("cafe"));
    }

    #[test]
    fn own_hours_win_over_default() {
        let late = KnownRestaurant {
            amenity: "fast_food".to_owned(),
            opening_hours: Some("Mo-Su 20:00-05:00".to_owned()),
        };

        let hours = opening_hours(Some(&late));

        assert_eq!(
            hours,
            OpeningHours::parse("Mo-Su 20:00-05:00").expect("valid")
        );
    }

    #[test]
    fn reject_reason_round_trips() {
        for reason in [
            RejectReason::Closed,
            RejectReason::SoldOut,
            RejectReason::AtCapacity,
            RejectReason::KitchenDeclined,
        ] {
            assert_eq!(parse_reject_reason(reason.as_str()), Some(reason));
        }
        assert_eq!(parse_reject_reason("busy"), None);
    }

    #[test]
    fn only_staff_and_admin_manage_stock() {
        assert!(may_manage_stock(Role::Staff));
        assert!(may_manage_stock(Role::Admin));
        assert!(!may_manage_stock(Role::Customer));
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
