//! Delivery rules: statuses, the courier's share of the journey, ride times,
//! distances and where couriers start.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tiffin_events::order::split_replay_minutes;
use tiffin_runtime::hash::fnv1a64;

/// State of a delivery.
///
/// A delivery starts `Waiting` and becomes `Assigned` once a courier is free. It is
/// `PickedUp` when the ride to the restaurant is over and `Delivered` when the ride
/// to the customer is over. `Cancelled` ends a delivery that was not picked up yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DeliveryStatus {
    Waiting,
    Assigned,
    PickedUp,
    Delivered,
    Cancelled,
}

impl DeliveryStatus {
    /// Returns the value stored in the `status` column and sent in the API.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Assigned => "assigned",
            Self::PickedUp => "picked_up",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored status, or returns `None` for a value outside the set.
    pub(crate) fn parse(value: &str) -> Option<Self> {
        match value {
            "waiting" => Some(Self::Waiting),
            "assigned" => Some(Self::Assigned),
            "picked_up" => Some(Self::PickedUp),
            "delivered" => Some(Self::Delivered),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The delivery of one order, as the API shows it. Times are Unix milliseconds and
/// are null until the step happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Delivery {
    pub(crate) delivery_id: String,
    pub(crate) order_id: String,
    pub(crate) restaurant_id: String,
    pub(crate) status: DeliveryStatus,
    pub(crate) courier_id: Option<String>,
    /// When the delivery service stored the delivery.
    pub(crate) created_at: i64,
    pub(crate) assigned_at: Option<i64>,
    /// When the courier is planned to reach the restaurant.
    pub(crate) pickup_due: Option<i64>,
    pub(crate) picked_up_at: Option<i64>,
    /// When the courier is planned to reach the customer.
    pub(crate) delivered_due: Option<i64>,
    pub(crate) delivered_at: Option<i64>,
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

/// Returns the courier's share of the journey in simulated time: the second value of
/// [`split_replay_minutes`] for a replayed order, or `default` for an ordinary one.
pub(crate) fn courier_share(replay_delivery_minutes: Option<u32>, default: Duration) -> Duration {
    match replay_delivery_minutes {
        Some(total) => {
            let (_preparation_minutes, courier_minutes) = split_replay_minutes(total);
            Duration::from_secs(u64::from(courier_minutes) * 60)
        }
        None => default,
    }
}

/// When an assigned courier is due at the restaurant and at the customer, in Unix
/// milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RidePlan {
    pub(crate) pickup_due: i64,
    pub(crate) delivered_due: i64,
}

/// Plans the rides of a courier assigned at `assigned_at`: the first third of the
/// courier's share is the ride to the restaurant and the other two thirds the ride to
/// the customer, both divided by the time scale. Times saturate at `i64::MAX`.
pub(crate) fn plan_ride(assigned_at: i64, share: Duration, scale: TimeScale) -> RidePlan {
    let to_restaurant = scale.wall_clock(share / 3);
    let to_customer = scale.wall_clock(share.saturating_mul(2) / 3);
    let pickup_due = assigned_at.saturating_add(millis(to_restaurant));
    RidePlan {
        pickup_due,
        delivered_due: pickup_due.saturating_add(millis(to_customer)),
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A point on Earth, in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Position {
    pub(crate) lat: f64,
    pub(crate) lon: f64,
}

/// Mean radius of the Earth, used as the radius of the sphere distances are taken on.
const EARTH_RADIUS_KM: f64 = 6371.0;

/// Returns the great-circle distance between `a` and `b` in kilometres, by the
/// haversine formula on a sphere of radius [`EARTH_RADIUS_KM`]. The Earth is
/// slightly flattened, so the true distance differs by well under 1 %, which does not
/// change which courier is nearest within a city.
pub(crate) fn distance_km(a: Position, b: Position) -> f64 {
    let lat_a = a.lat.to_radians();
    let lat_b = b.lat.to_radians();
    let half_dlat = (b.lat - a.lat).to_radians() / 2.0;
    let half_dlon = (b.lon - a.lon).to_radians() / 2.0;
    let haversine = half_dlat.sin().powi(2) + lat_a.cos() * lat_b.cos() * half_dlon.sin().powi(2);
    // Rounding can push the value slightly above 1 for antipodal points.
    2.0 * EARTH_RADIUS_KM * haversine.sqrt().min(1.0).asin()
}

/// A courier that can take a delivery.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FreeCourier {
    pub(crate) courier_id: String,
    pub(crate) position: Position,
}

/// Returns the index of the courier in `couriers` preferred for a delivery from a
/// restaurant at `restaurant`: the nearest, ties broken by courier id. For a
/// restaurant of unknown position it is the lowest courier id, since any free
/// courier will do. `None` when `couriers` is empty.
pub(crate) fn nearest_courier(
    restaurant: Option<Position>,
    couriers: &[FreeCourier],
) -> Option<usize> {
    let by_id = |a: &FreeCourier, b: &FreeCourier| a.courier_id.cmp(&b.courier_id);
    let best = match restaurant {
        Some(at) => couriers.iter().enumerate().min_by(|(_, a), (_, b)| {
            distance_km(at, a.position)
                .total_cmp(&distance_km(at, b.position))
                .then_with(|| by_id(a, b))
        }),
        None => couriers
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| by_id(a, b)),
    };
    best.map(|(index, _)| index)
}

/// Returns the id of courier `k`, counting from 0.
pub(crate) fn courier_id(k: usize) -> String {
    format!("courier-{k}")
}

/// Returns where courier `k` starts: the index of a restaurant among
/// `restaurant_count` restaurants sorted by id, `fnv1a64("courier<k>") % count`.
///
/// # Panics
///
/// Panics when `restaurant_count` is 0. Couriers are created only once the replica
/// contains a restaurant.
pub(crate) fn start_restaurant(k: usize, restaurant_count: usize) -> usize {
    assert!(restaurant_count > 0, "couriers start at a restaurant");
    let count = restaurant_count as u64;
    // The remainder is below restaurant_count, which is a usize.
    (fnv1a64(&format!("courier{k}")) % count) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELSINKI: Position = Position {
        lat: 60.1699,
        lon: 24.9384,
    };

    fn courier(id: &str, lat: f64, lon: f64) -> FreeCourier {
        FreeCourier {
            courier_id: id.to_owned(),
            position: Position { lat, lon },
        }
    }

    #[test]
    fn time_scale_rejects_non_positive() {
        for factor in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(TimeScale::new(factor).is_err(), "accepted {factor}");
        }
    }

    #[test]
    fn replay_minutes_set_courier_share() {
        let share = courier_share(Some(30), Duration::from_secs(1));

        assert_eq!(share, Duration::from_secs(18 * 60));
    }

    #[test]
    fn missing_replay_uses_default_share() {
        let share = courier_share(None, Duration::from_secs(7));

        assert_eq!(share, Duration::from_secs(7));
    }

    #[test]
    fn one_minute_order_has_no_ride() {
        let share = courier_share(Some(1), Duration::from_secs(7));

        assert_eq!(share, Duration::ZERO);
    }

    #[test]
    fn ride_plan_splits_share_in_thirds() {
        let scale = TimeScale::new(60.0).expect("valid scale");

        let plan = plan_ride(1_000, Duration::from_secs(18 * 60), scale);

        assert_eq!(plan.pickup_due, 1_000 + 6_000);
        assert_eq!(plan.delivered_due, 1_000 + 18_000);
    }

    #[test]
    fn ride_plan_saturates() {
        let scale = TimeScale::new(f64::MIN_POSITIVE).expect("valid scale");

        let plan = plan_ride(1_000, Duration::from_secs(60), scale);

        assert_eq!(plan.pickup_due, i64::MAX);
        assert_eq!(plan.delivered_due, i64::MAX);
    }

    #[test]
    fn distance_matches_known_arcs() {
        let origin = Position { lat: 0.0, lon: 0.0 };
        // One degree of a great circle is 2 * pi * R / 360, a quarter circle pi * R / 2.
        let cases = [
            ("same point", origin, 0.0),
            (
                "one degree east",
                Position { lat: 0.0, lon: 1.0 },
                111.194_926,
            ),
            (
                "one degree north",
                Position { lat: 1.0, lon: 0.0 },
                111.194_926,
            ),
            (
                "north pole",
                Position {
                    lat: 90.0,
                    lon: 0.0,
                },
                10_007.543_398,
            ),
            (
                "antipode",
                Position {
                    lat: 0.0,
                    lon: 180.0,
                },
                20_015.086_796,
            ),
        ];

        for (name, point, expected) in cases {
            let distance = distance_km(origin, point);

            assert!(
                (distance - expected).abs() < 1e-3,
                "{name}: {distance} km, expected {expected} km"
            );
        }
    }

    #[test]
    fn nearest_courier_is_preferred() {
        let couriers = vec![
            courier("courier-far", 60.25, 25.10),
            courier("courier-near", 60.171, 24.94),
            courier("courier-middle", 60.20, 24.98),
        ];

        let nearest = nearest_courier(Some(HELSINKI), &couriers);

        assert_eq!(nearest, Some(1));
    }

    #[test]
    fn equal_distance_prefers_lower_id() {
        let couriers = vec![
            courier("courier-b", 60.18, 24.95),
            courier("courier-a", 60.18, 24.95),
        ];

        let nearest = nearest_courier(Some(HELSINKI), &couriers);

        assert_eq!(nearest, Some(1));
    }

    #[test]
    fn unknown_restaurant_prefers_lower_id() {
        let couriers = vec![
            courier("courier-2", 60.171, 24.94),
            courier("courier-1", 60.25, 25.10),
        ];

        let nearest = nearest_courier(None, &couriers);

        assert_eq!(nearest, Some(1));
        assert_eq!(nearest_courier(None, &[]), None);
    }

    #[test]
    fn start_restaurant_follows_hash() {
        let count = 1465;

        let start = start_restaurant(7, count);

        assert_eq!(start as u64, fnv1a64("courier7") % 1465);
        assert!(start < count);
    }

    #[test]
    fn status_round_trips() {
        for status in [
            DeliveryStatus::Waiting,
            DeliveryStatus::Assigned,
            DeliveryStatus::PickedUp,
            DeliveryStatus::Delivered,
            DeliveryStatus::Cancelled,
        ] {
            assert_eq!(DeliveryStatus::parse(status.as_str()), Some(status));
        }
    }
}
