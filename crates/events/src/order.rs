//! Events of an order's life. The subject of each is the order id.

use serde::{Deserialize, Serialize};
use tiffin_bus::envelope::EventData;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The menu item.
    pub menu_item_id: String,
    /// Its name when ordered.
    pub name: String,
    /// How many.
    pub quantity: u32,
    /// Unit price in minor units when ordered.
    pub unit_price_cents: i64,
}

/// An order was placed and its payment authorized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: String,
    /// The customer's user id.
    pub customer_id: String,
    /// The restaurant.
    pub restaurant_id: String,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
    /// Sum of the lines, in minor units.
    pub total_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The payment authorization.
    pub payment_id: String,
    /// When, in Unix milliseconds.
    pub placed_at: i64,
    /// For simulations: the order-to-door time in minutes that this order took in
    /// the real data it replays. The kitchen and delivery derive their durations
    /// from it; absent for ordinary orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_delivery_minutes: Option<u32>,
    /// For simulations: the local time at which the replayed real order was placed,
    /// `YYYY-MM-DDTHH:MM:SS` without an offset. The kitchen judges opening hours by
    /// it; absent for ordinary orders, which are judged by the current time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_local_time: Option<String>,
}

impl EventData for OrderPlaced {
    const TYPE: &'static str = "order.placed";
    const VERSION: u32 = 1;

    fn subject(&self) -> String {
        self.order_id.clone()
    }
}

/// The kitchen accepted an order and started a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderAccepted {
    /// The order.
    pub order_id: String,
    /// The restaurant.
    pub restaurant_id: String,
    /// The kitchen ticket.
    pub ticket_id: String,
    /// When, in Unix milliseconds.
    pub accepted_at: i64,
    /// When the food is expected to be ready, in Unix milliseconds.
    pub ready_by: i64,
}

impl EventData for OrderAccepted {
    const TYPE: &'static str = "order.accepted";
    const VERSION: u32 = 1;

    fn subject(&self) -> String {
        self.order_id.clone()
    }
}

/// The food of an order is ready for pickup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderReady {
    /// The order.
    pub order_id: String,
    /// The restaurant.
    pub restaurant_id: String,
    /// The kitchen ticket.
    pub ticket_id: String,
    /// When, in Unix milliseconds.
    pub ready_at: i64,
    /// Milliseconds from acceptance to ready.
    pub preparation_ms: i64,
    /// Copied from `order.placed`, for the courier's share of a replayed order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_delivery_minutes: Option<u32>,
}

impl EventData for OrderReady {
    const TYPE: &'static str = "order.ready";
    const VERSION: u32 = 1;

    fn subject(&self) -> String {
        self.order_id.clone()
    }
}

/// Why the kitchen refused an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The restaurant is closed at the order's time.
    Closed,
    /// An ordered item is out of stock.
    SoldOut,
    /// The restaurant has as many open tickets as it can cook.
    AtCapacity,
    /// The kitchen turned the order down for another reason (the simulation's
    /// reject rate).
    KitchenDeclined,
}

impl RejectReason {
    /// The reason's name in events and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::SoldOut => "sold_out",
            Self::AtCapacity => "at_capacity",
            Self::KitchenDeclined => "kitchen_declined",
        }
    }
}

/// The kitchen refused an order. The order will not be prepared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRejected {
    /// The order.
    pub order_id: String,
    /// The restaurant.
    pub restaurant_id: String,
    /// Why.
    pub reason: RejectReason,
    /// Details for people, such as the item that is sold out.
    pub detail: String,
    /// When, in Unix milliseconds.
    pub rejected_at: i64,
}

impl EventData for OrderRejected {
    const TYPE: &'static str = "order.rejected";
    const VERSION: u32 = 1;

    fn subject(&self) -> String {
        self.order_id.clone()
    }
}

/// The customer cancelled an order before pickup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// The order.
    pub order_id: String,
    /// The restaurant.
    pub restaurant_id: String,
    /// The customer's reason, or `customer_request`.
    pub reason: String,
    /// When, in Unix milliseconds.
    pub cancelled_at: i64,
}

impl EventData for OrderCancelled {
    const TYPE: &'static str = "order.cancelled";
    const VERSION: u32 = 1;

    fn subject(&self) -> String {
        self.order_id.clone()
    }
}

/// A courier collected an order from the restaurant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPickedUp {
    /// The order.
    pub order_id: String,
    /// The courier.
    pub courier_id: String,
    /// When, in Unix milliseconds.
    pub picked_up_at: i64,
}

impl EventData for OrderPickedUp {
    const TYPE: &'static str = "order.picked_up";
    const VERSION: u32 = 1;

    fn subject(&self) -> String {
        self.order_id.clone()
    }
}

/// A courier handed an order to the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderDelivered {
    /// The order.
    pub order_id: String,
    /// The courier.
    pub courier_id: String,
    /// When, in Unix milliseconds.
    pub delivered_at: i64,
    /// Milliseconds from the courier's assignment to the handover.
    pub delivery_ms: i64,
}

impl EventData for OrderDelivered {
    const TYPE: &'static str = "order.delivered";
    const VERSION: u32 = 1;

    fn subject(&self) -> String {
        self.order_id.clone()
    }
}

/// An order's status changed, as the order service decided it. This is the
/// customer-facing history: notifications and dashboards read it rather than the
/// services' own events, so a late or contradicting event never reaches a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStatusChanged {
    /// The order.
    pub order_id: String,
    /// The customer's user id.
    pub customer_id: String,
    /// The restaurant.
    pub restaurant_id: String,
    /// The new status: `placed`, `accepted`, `ready`, `picked_up`, `delivered`,
    /// `rejected`, `cancelled` or `payment_declined`.
    pub status: String,
    /// Why, for `rejected` (a reject reason), `cancelled` and `payment_declined`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The order total in minor units.
    pub total_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// When the change happened, in Unix milliseconds.
    pub changed_at: i64,
}

impl EventData for OrderStatusChanged {
    const TYPE: &'static str = "order.status_changed";
    const VERSION: u32 = 1;

    fn subject(&self) -> String {
        self.order_id.clone()
    }
}

/// Splits a replayed order's order-to-door minutes into the kitchen's preparation
/// and the courier's share: preparation is 40 % of the total, rounded, at least 1
/// minute and at most the total. The split is an assumption; the source data records
/// only the total.
pub fn split_replay_minutes(total_minutes: u32) -> (u32, u32) {
    let total = total_minutes.max(1);
    let preparation = ((f64::from(total) * 0.4).round() as u32).clamp(1, total);
    (preparation, total - preparation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_the_total() {
        assert_eq!(split_replay_minutes(30), (12, 18));
        assert_eq!(split_replay_minutes(1), (1, 0));
        assert_eq!(split_replay_minutes(0), (1, 0));
        for total in 1..200 {
            let (preparation, delivery) = split_replay_minutes(total);
            assert_eq!(preparation + delivery, total);
        }
    }
}
