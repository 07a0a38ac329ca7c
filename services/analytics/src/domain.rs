//! Order statuses as the figures count them, and the figures computed from counts and
//! stored values: the funnel, the early endings with their reasons, and the
//! distributions of durations.

use std::collections::BTreeMap;

use serde::Serialize;

/// The reason key of an early ending whose event carries no reason.
pub const UNSPECIFIED_REASON: &str = "unspecified";

/// An order status as `order.status_changed` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    /// Paid for (authorized) and sent to the kitchen.
    Placed,
    /// The kitchen accepted it.
    Accepted,
    /// The food is ready for the courier.
    Ready,
    /// A courier has it.
    PickedUp,
    /// Handed to the customer.
    Delivered,
    /// The kitchen refused it.
    Rejected,
    /// The customer cancelled it before pickup.
    Cancelled,
    /// The card was declined, so the order was never placed.
    PaymentDeclined,
}

impl OrderStatus {
    /// Every status, the happy path first.
    pub const ALL: [Self; 8] = [
        Self::Placed,
        Self::Accepted,
        Self::Ready,
        Self::PickedUp,
        Self::Delivered,
        Self::Rejected,
        Self::Cancelled,
        Self::PaymentDeclined,
    ];

    /// Returns the name used in events and in the `status_changes` table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Accepted => "accepted",
            Self::Ready => "ready",
            Self::PickedUp => "picked_up",
            Self::Delivered => "delivered",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
            Self::PaymentDeclined => "payment_declined",
        }
    }

    /// Parses a status name, or returns `None` for a name outside the set.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
    }

    /// Returns the furthest step of the happy path that the status proves the order
    /// reached: 0 placed, 1 accepted, 2 ready, 3 picked up, 4 delivered.
    ///
    /// A rejection or a cancellation proves placement (step 0), because only a placed
    /// order can end that way. A declined payment proves nothing, so it returns
    /// `None`.
    pub fn stage(self) -> Option<i64> {
        match self {
            Self::Placed | Self::Rejected | Self::Cancelled => Some(0),
            Self::Accepted => Some(1),
            Self::Ready => Some(2),
            Self::PickedUp => Some(3),
            Self::Delivered => Some(4),
            Self::PaymentDeclined => None,
        }
    }
}

/// How many orders reached each status, from `order.status_changed`.
///
/// A happy-path count includes every order that got at least that far, so the counts
/// never grow along the path. That holds even when the order service moved an order
/// past a step without publishing it, as it does when a ready arrives before the
/// acceptance. An order that ended early counts for the steps it reached first and
/// for its ending.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Funnel {
    /// Orders placed.
    pub placed: i64,
    /// Orders the kitchen accepted.
    pub accepted: i64,
    /// Orders whose food was ready.
    pub ready: i64,
    /// Orders a courier picked up.
    pub picked_up: i64,
    /// Orders delivered.
    pub delivered: i64,
    /// Orders the kitchen rejected.
    pub rejected: i64,
    /// Orders the customer cancelled.
    pub cancelled: i64,
    /// Order attempts whose payment was declined.
    pub payment_declined: i64,
}

/// One kind of early ending: how many orders ended that way, and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EndingFigures {
    /// Orders that ended this way.
    pub count: i64,
    /// `count` as a fraction of the ending's base, or 0 when the base is 0. The base
    /// is the placed orders for rejections and cancellations, and all order attempts
    /// (placed plus declined) for declined payments.
    pub rate: f64,
    /// Count and rate per reason, with the same base. Reasons that no order gave are
    /// absent, and an ending without a reason is counted under `unspecified`.
    pub by_reason: BTreeMap<String, ReasonFigure>,
}

/// The orders that ended early for one reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ReasonFigure {
    /// Orders that ended for this reason.
    pub count: i64,
    /// `count` as a fraction of the ending's base, or 0 when the base is 0.
    pub rate: f64,
}

/// Count, mean and nearest-rank percentiles of a duration in milliseconds. Every field
/// but `count` is null when there are no values.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Distribution {
    /// Values.
    pub count: i64,
    /// Arithmetic mean.
    pub mean: Option<f64>,
    /// Median (50th percentile).
    pub p50: Option<i64>,
    /// 90th percentile.
    pub p90: Option<i64>,
    /// 99th percentile.
    pub p99: Option<i64>,
    /// Largest value.
    pub max: Option<i64>,
}

impl Distribution {
    /// Computes the distribution of `sorted`, which must be in ascending order.
    ///
    /// The `p`th percentile is the nearest-rank one: the value at 1-based rank
    /// `ceil(p / 100 * n)`. It is always one of the values, so it is the same
    /// whichever engine stored them.
    pub fn from_sorted(sorted: &[i64]) -> Self {
        let Some(&max) = sorted.last() else {
            return Self::default();
        };
        let count = sorted.len();
        let sum: i128 = sorted.iter().map(|&value| i128::from(value)).sum();
        Self {
            count: count as i64,
            mean: Some(sum as f64 / count as f64),
            p50: Some(nearest_rank(sorted, 50)),
            p90: Some(nearest_rank(sorted, 90)),
            p99: Some(nearest_rank(sorted, 99)),
            max: Some(max),
        }
    }
}

/// Returns the `percent`th nearest-rank percentile of a non-empty ascending slice.
fn nearest_rank(sorted: &[i64], percent: usize) -> i64 {
    // ceil(percent * n / 100) in integers, so that no float rounding moves the rank.
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// The number of orders that reached one status with one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusCount {
    pub(crate) status: OrderStatus,
    pub(crate) reason: Option<String>,
    pub(crate) orders: i64,
}

/// The figures drawn from `order.status_changed`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StatusFigures {
    pub(crate) funnel: Funnel,
    pub(crate) rejections: EndingFigures,
    pub(crate) cancellations: EndingFigures,
    pub(crate) payment_declines: EndingFigures,
}

impl StatusFigures {
    /// Computes the figures from the number of orders per furthest happy-path stage
    /// (`(stage, orders)` pairs, see [`OrderStatus::stage`]) and per status and
    /// reason.
    pub(crate) fn new(furthest_stages: &[(i64, i64)], counts: &[StatusCount]) -> Self {
        let reached = |stage: i64| -> i64 {
            furthest_stages
                .iter()
                .filter(|(furthest, _)| *furthest >= stage)
                .map(|(_, orders)| orders)
                .sum()
        };
        let ended = |status: OrderStatus| -> i64 {
            counts
                .iter()
                .filter(|count| count.status == status)
                .map(|count| count.orders)
                .sum()
        };
        let funnel = Funnel {
            placed: reached(0),
            accepted: reached(1),
            ready: reached(2),
            picked_up: reached(3),
            delivered: reached(4),
            rejected: ended(OrderStatus::Rejected),
            cancelled: ended(OrderStatus::Cancelled),
            payment_declined: ended(OrderStatus::PaymentDeclined),
        };

        let attempts = funnel.placed + funnel.payment_declined;
        Self {
            rejections: ending(counts, OrderStatus::Rejected, funnel.placed),
            cancellations: ending(counts, OrderStatus::Cancelled, funnel.placed),
            payment_declines: ending(counts, OrderStatus::PaymentDeclined, attempts),
            funnel,
        }
    }
}

/// Counts the orders that ended with `status`, in total and per reason, with rates of
/// `base`.
fn ending(counts: &[StatusCount], status: OrderStatus, base: i64) -> EndingFigures {
    let mut by_reason: BTreeMap<String, i64> = BTreeMap::new();
    for count in counts.iter().filter(|count| count.status == status) {
        let reason = count.reason.as_deref().unwrap_or(UNSPECIFIED_REASON);
        *by_reason.entry(reason.to_owned()).or_default() += count.orders;
    }
    let total = by_reason.values().sum();
    EndingFigures {
        count: total,
        rate: rate(total, base),
        by_reason: by_reason
            .into_iter()
            .map(|(reason, count)| {
                let figure = ReasonFigure {
                    count,
                    rate: rate(count, base),
                };
                (reason, figure)
            })
            .collect(),
    }
}

fn rate(count: i64, base: i64) -> f64 {
    if base == 0 {
        0.0
    } else {
        count as f64 / base as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<i64> = (1..=10).map(|value| value * 100).collect();

        let distribution = Distribution::from_sorted(&values);

        assert_eq!(distribution.count, 10);
        assert_eq!(distribution.mean, Some(550.0));
        assert_eq!(distribution.p50, Some(500));
        assert_eq!(distribution.p90, Some(900));
        assert_eq!(distribution.p99, Some(1000));
        assert_eq!(distribution.max, Some(1000));
    }

    #[test]
    fn single_value_is_every_percentile() {
        let distribution = Distribution::from_sorted(&[42]);

        assert_eq!(distribution.p50, Some(42));
        assert_eq!(distribution.p90, Some(42));
        assert_eq!(distribution.p99, Some(42));
    }

    #[test]
    fn percentile_rank_rounds_up() {
        let values: Vec<i64> = (1..=101).collect();

        let distribution = Distribution::from_sorted(&values);

        // ceil(0.5 * 101) = 51, ceil(0.9 * 101) = 91, ceil(0.99 * 101) = 100.
        assert_eq!(distribution.p50, Some(51));
        assert_eq!(distribution.p90, Some(91));
        assert_eq!(distribution.p99, Some(100));
    }

    #[test]
    fn empty_distribution_is_null() {
        let distribution = Distribution::from_sorted(&[]);

        assert_eq!(distribution, Distribution::default());
    }

    #[test]
    fn funnel_counts_skipped_steps() {
        // One order delivered, one that skipped from placed to ready, one rejected.
        let furthest = [(4, 1), (2, 1), (0, 1)];
        let counts = [StatusCount {
            status: OrderStatus::Rejected,
            reason: Some("closed".to_owned()),
            orders: 1,
        }];

        let figures = StatusFigures::new(&furthest, &counts);

        assert_eq!(figures.funnel.placed, 3);
        assert_eq!(figures.funnel.accepted, 2);
        assert_eq!(figures.funnel.ready, 2);
        assert_eq!(figures.funnel.delivered, 1);
        assert_eq!(figures.funnel.rejected, 1);
    }

    #[test]
    fn declines_are_rated_per_attempt() {
        let furthest = [(0, 3)];
        let counts = [
            StatusCount {
                status: OrderStatus::PaymentDeclined,
                reason: Some("card_declined".to_owned()),
                orders: 1,
            },
            StatusCount {
                status: OrderStatus::PaymentDeclined,
                reason: None,
                orders: 1,
            },
        ];

        let declines = StatusFigures::new(&furthest, &counts).payment_declines;

        assert_eq!(declines.count, 2);
        assert_eq!(declines.rate, 0.4);
        assert_eq!(declines.by_reason["card_declined"].rate, 0.2);
        assert_eq!(declines.by_reason[UNSPECIFIED_REASON].count, 1);
    }

    #[test]
    fn rate_of_nothing_is_zero() {
        let figures = StatusFigures::new(&[], &[]);

        assert_eq!(figures.rejections.rate, 0.0);
    }
}
