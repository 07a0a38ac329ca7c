//! The kitchen's decision on a placed order.

use tiffin_events::order::RejectReason;
use tiffin_hours::{LocalTime, OpeningHours};

use super::RejectRate;
use super::stock::Shortage;

/// The kitchen's decision on a placed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Accept,
    Reject {
        reason: RejectReason,
        /// Details for people, such as the sold-out item.
        detail: String,
    },
}

/// The facts about a placed order that the decision depends on.
#[derive(Debug)]
pub(crate) struct Circumstances<'a> {
    pub(crate) restaurant_id: &'a str,
    /// The restaurant's local time when the order was placed.
    pub(crate) local_time: LocalTime,
    pub(crate) hours: &'a OpeningHours,
    /// The ordered items with less in stock than ordered.
    pub(crate) shortages: &'a [Shortage],
    /// The restaurant's tickets in status accepted.
    pub(crate) open_tickets: i64,
    /// A uniform random number in `[0, 1)`, compared with the reject rate.
    pub(crate) draw: f64,
}

/// The limits that the settings put on decisions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Maximum number of accepted tickets per restaurant.
    pub(crate) capacity_per_restaurant: u32,
    pub(crate) reject_rate: RejectRate,
}

/// Decides a placed order. The checks run in this order, and the first that fails
/// gives the reason: the restaurant is closed, an item is sold out, the restaurant is
/// at capacity, the random draw falls under the reject rate. An order that passes all
/// four is accepted.
pub(crate) fn decide(facts: &Circumstances<'_>, limits: Limits) -> Decision {
    let restaurant = facts.restaurant_id;
    if !facts.hours.is_open_at(facts.local_time) {
        return reject(
            RejectReason::Closed,
            format!(
                "restaurant {restaurant} is closed on {} local time",
                facts.local_time
            ),
        );
    }
    if !facts.shortages.is_empty() {
        let items: Vec<String> = facts.shortages.iter().map(ToString::to_string).collect();
        return reject(
            RejectReason::SoldOut,
            format!("sold out: {}", items.join("; ")),
        );
    }
    if facts.open_tickets >= i64::from(limits.capacity_per_restaurant) {
        return reject(
            RejectReason::AtCapacity,
            format!(
                "restaurant {restaurant} is preparing {} orders and its capacity is {}",
                facts.open_tickets, limits.capacity_per_restaurant
            ),
        );
    }
    if limits.reject_rate.declines(facts.draw) {
        return reject(
            RejectReason::KitchenDeclined,
            format!("the kitchen of restaurant {restaurant} declined the order"),
        );
    }
    Decision::Accept
}

fn reject(reason: RejectReason, detail: String) -> Decision {
    Decision::Reject { reason, detail }
}

#[cfg(test)]
mod tests {
    use tiffin_hours::Weekday;

    use super::*;

    fn limits(capacity_per_restaurant: u32, reject_rate: f64) -> Limits {
        Limits {
            capacity_per_restaurant,
            reject_rate: RejectRate::new(reject_rate).expect("valid rate"),
        }
    }

    fn shortage() -> Shortage {
        Shortage {
            menu_item_id: "item-1".to_owned(),
            name: "Salmon soup".to_owned(),
            in_stock: 0,
            ordered: 2,
        }
    }

    fn reason(decision: &Decision) -> Option<RejectReason> {
        match decision {
            Decision::Accept => None,
            Decision::Reject { reason, .. } => Some(*reason),
        }
    }

    /// Builds circumstances in which every check passes: open, in stock, no tickets,
    /// and a draw above any reject rate below 1.0.
    fn passing<'a>(hours: &'a OpeningHours) -> Circumstances<'a> {
        Circumstances {
            restaurant_id: "restaurant-1",
            local_time: LocalTime::new(Weekday::Wednesday, 12 * 60).expect("valid minute"),
            hours,
            shortages: &[],
            open_tickets: 0,
            draw: 0.999,
        }
    }

    #[test]
    fn open_kitchen_accepts() {
        let hours = OpeningHours::parse("24/7").expect("valid hours");

        let decision = decide(&passing(&hours), limits(25, 0.0));

        assert_eq!(decision, Decision::Accept);
    }

    #[test]
    fn closed_names_local_time() {
        let hours = OpeningHours::parse("Mo-Fr 13:00-22:00").expect("valid hours");

        let decision = decide(&passing(&hours), limits(25, 0.0));

        let Decision::Reject { reason, detail } = decision else {
            panic!("accepted while closed");
        };
        assert_eq!(reason, RejectReason::Closed);
        assert_eq!(
            detail,
            "restaurant restaurant-1 is closed on Wednesday 12:00 local time"
        );
    }

    #[test]
    fn sold_out_names_item() {
        let hours = OpeningHours::parse("24/7").expect("valid hours");
        let shortages = [shortage()];
        let facts = Circumstances {
            shortages: &shortages,
            ..passing(&hours)
        };

        let decision = decide(&facts, limits(25, 0.0));

        let Decision::Reject { reason, detail } = decision else {
            panic!("accepted while sold out");
        };
        assert_eq!(reason, RejectReason::SoldOut);
        assert!(detail.contains("Salmon soup (item-1)"), "{detail}");
    }

    #[test]
    fn full_kitchen_is_at_capacity() {
        let hours = OpeningHours::parse("24/7").expect("valid hours");
        let facts = Circumstances {
            open_tickets: 3,
            ..passing(&hours)
        };

        let at_limit = decide(&facts, limits(3, 0.0));
        let below_limit = decide(&facts, limits(4, 0.0));

        assert_eq!(reason(&at_limit), Some(RejectReason::AtCapacity));
        assert_eq!(below_limit, Decision::Accept);
    }

    #[test]
    fn draw_under_rate_declines() {
        let hours = OpeningHours::parse("24/7").expect("valid hours");
        let facts = Circumstances {
            draw: 0.25,
            ..passing(&hours)
        };

        let declined = decide(&facts, limits(25, 0.3));
        let accepted = decide(&facts, limits(25, 0.2));

        assert_eq!(reason(&declined), Some(RejectReason::KitchenDeclined));
        assert_eq!(accepted, Decision::Accept);
    }

    #[test]
    fn checks_run_in_order() {
        let closed = OpeningHours::parse("off").expect("valid hours");
        let open = OpeningHours::parse("24/7").expect("valid hours");
        let shortages = [shortage()];
        let everything_fails = |hours| Circumstances {
            shortages: &shortages,
            open_tickets: 1,
            draw: 0.0,
            ..passing(hours)
        };

        let when_closed = decide(&everything_fails(&closed), limits(1, 1.0));
        let when_open = decide(&everything_fails(&open), limits(1, 1.0));
        let in_stock = decide(
            &Circumstances {
                shortages: &[],
                ..everything_fails(&open)
            },
            limits(1, 1.0),
        );

        assert_eq!(reason(&when_closed), Some(RejectReason::Closed));
        assert_eq!(reason(&when_open), Some(RejectReason::SoldOut));
        assert_eq!(reason(&in_stock), Some(RejectReason::AtCapacity));
    }
}
