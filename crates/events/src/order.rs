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
}

impl EventData for OrderReady {
    const TYPE: &'static str = "order.ready";
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
