//! Notifications and their wording.

use std::fmt;

use serde::Serialize;
use tiffin_events::order::OrderStatusChanged;

/// Delivery state of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationStatus {
    /// Not sent yet: the first send is under way, failed or was cut off, and the
    /// sender loop tries again.
    Pending,
    /// The channel accepted it.
    Sent,
    /// The sender gave up after its last attempt.
    Failed,
}

impl NotificationStatus {
    /// Returns the value stored in the `status` column and sent in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored status, or returns `None` for a value outside the set.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "pending" => Some(Self::Pending),
            "sent" => Some(Self::Sent),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

impl fmt::Display for NotificationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An order status that customers hear about, as `order.status_changed` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Paid for (authorized) and sent to the kitchen.
    Placed,
    /// The kitchen accepted it and is preparing it.
    Accepted,
    /// The food is ready for the courier.
    Ready,
    /// A courier has it.
    PickedUp,
    /// Handed to the customer.
    Delivered,
    /// The kitchen refused it, and the payment was voided.
    Rejected,
    /// The customer cancelled it before pickup, and the payment was voided.
    Cancelled,
    /// The card was declined, so no order was placed.
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

    /// Returns the name used in events, the `order_status` column and the API.
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
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message to a customer about one status change of their order. Each order has
/// at most one notification per status. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    /// A UUIDv7.
    pub notification_id: String,
    /// The first event that reported this status change. A later event for the same
    /// order and status makes no second notification.
    pub event_id: String,
    /// The order.
    pub order_id: String,
    /// The customer's user id. Some `order.ready` notifications written by earlier
    /// versions have an empty one.
    pub customer_id: String,
    /// The type of the event, `order.status_changed`. Notifications written by
    /// earlier versions also have `order.placed` and `order.ready`.
    pub event_type: String,
    /// The status the order reached.
    pub order_status: OrderStatus,
    /// The channel that sends it, `log` or `smtp`.
    pub channel: String,
    /// One line for a mail subject.
    pub subject: String,
    /// The message text.
    pub body: String,
    /// Delivery status.
    pub status: NotificationStatus,
    /// Finished sends, failed ones included.
    pub attempts: i64,
    /// Error of the last failed send.
    pub last_error: Option<String>,
    /// When the event was handled.
    pub created_at: i64,
    /// When the channel accepted it.
    pub sent_at: Option<i64>,
}

/// The text of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) subject: String,
    pub(crate) body: String,
}

/// Words the notification of `change`, whose status has been parsed as `status`.
///
/// Rejected, cancelled and declined orders name their reason. A reason this service
/// has no wording for is quoted as the event gives it.
pub(crate) fn status_message(change: &OrderStatusChanged, status: OrderStatus) -> Message {
    let order = &change.order_id;
    let restaurant = &change.restaurant_id;
    let reason = change.reason.as_deref().filter(|reason| !reason.is_empty());
    match status {
        OrderStatus::Placed => Message {
            subject: format!("Order {order} placed"),
            body: format!(
                "Your order {order} from restaurant {restaurant} is placed: {}.",
                format_money(change.total_cents, &change.currency)
            ),
        },
        OrderStatus::Accepted => Message {
            subject: format!("Order {order} accepted"),
            body: format!(
                "Restaurant {restaurant} accepted your order {order} and is preparing it."
            ),
        },
        OrderStatus::Ready => Message {
            subject: format!("Order {order} ready"),
            body: format!(
                "Your order {order} from restaurant {restaurant} is ready and waits for its courier."
            ),
        },
        OrderStatus::PickedUp => Message {
            subject: format!("Order {order} on its way"),
            body: format!(
                "A courier picked up your order {order} from restaurant {restaurant} and is on the way."
            ),
        },
        OrderStatus::Delivered => Message {
            subject: format!("Order {order} delivered"),
            body: format!(
                "Your order {order} from restaurant {restaurant} was delivered. Enjoy your meal."
            ),
        },
        OrderStatus::Rejected => Message {
            subject: format!("Order {order} rejected"),
            body: format!(
                "Your order {order} was rejected: {}. Your payment was released.",
                rejection_cause(reason)
            ),
        },
        OrderStatus::Cancelled => {
            let cause = match reason {
                None | Some("customer_request") => " at your request".to_owned(),
                Some(reason) => format!(": {reason}"),
            };
            Message {
                subject: format!("Order {order} cancelled"),
                body: format!(
                    "Your order {order} was cancelled{cause}. Your payment was released."
                ),
            }
        }
        OrderStatus::PaymentDeclined => Message {
            subject: format!("Payment for order {order} declined"),
            body: format!(
                "Your payment of {} for order {order} was declined: {}. The order was not \
                 placed and nothing was charged.",
                format_money(change.total_cents, &change.currency),
                decline_cause(reason)
            ),
        },
    }
}

/// Words a kitchen's reject reason, one of `tiffin_events::order::RejectReason`.
fn rejection_cause(reason: Option<&str>) -> String {
    match reason {
        Some("closed") => "the restaurant is closed".to_owned(),
        Some("sold_out") => "an item is sold out".to_owned(),
        // The customer cannot act on the difference between a full kitchen and one
        // that turned the order down, so both read the same.
        Some("at_capacity" | "kitchen_declined") => "the restaurant is too busy".to_owned(),
        Some(other) => format!("the restaurant could not take it ({other})"),
        None => "the restaurant could not take it".to_owned(),
    }
}

/// Words a card processor's decline reason.
fn decline_cause(reason: Option<&str>) -> String {
    match reason {
        Some("insufficient_funds") => "insufficient funds".to_owned(),
        Some("card_declined") | None => "the card was declined".to_owned(),
        Some(other) => format!("the card was declined ({other})"),
    }
}

/// Formats an amount in minor units as a decimal amount and its currency code, such
/// as `23.40 EUR` for 2340 and `EUR`.
pub(crate) fn format_money(minor_units: i64, currency: &str) -> String {
    let exponent = minor_unit_exponent(currency);
    let sign = if minor_units < 0 { "-" } else { "" };
    let amount = minor_units.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{amount} {currency}");
    }
    let divisor = 10_u64.pow(exponent);
    format!(
        "{sign}{}.{:0width$} {currency}",
        amount / divisor,
        amount % divisor,
        width = exponent as usize
    )
}

/// Returns the number of decimal digits of a currency's minor unit. The exceptions to
/// 2 are those of the ISO 4217 code list, as Firefox's `CurrencyDataGenerated.js`
/// (version 2025-02-04) lists them.
fn minor_unit_exponent(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_uses_minor_units() {
        let cases = [
            (2340, "EUR", "23.40 EUR"),
            (5, "EUR", "0.05 EUR"),
            (-150, "USD", "-1.50 USD"),
            (1500, "JPY", "1500 JPY"),
            (12345, "KWD", "12.345 KWD"),
        ];

        for (minor_units, currency, expected) in cases {
            assert_eq!(
                format_money(minor_units, currency),
                expected,
                "{minor_units} {currency}"
            );
        }
    }

    fn change(status: &str, reason: Option<&str>) -> OrderStatusChanged {
        OrderStatusChanged {
            order_id: "order-1".to_owned(),
            customer_id: "customer-1".to_owned(),
            restaurant_id: "restaurant-1".to_owned(),
            status: status.to_owned(),
            reason: reason.map(str::to_owned),
            total_cents: 2340,
            currency: "EUR".to_owned(),
            changed_at: 1_700_000_000_000,
        }
    }

    #[test]
    fn every_status_has_a_text() {
        let cases = [
            (
                OrderStatus::Placed,
                None,
                "Order order-1 placed",
                "Your order order-1 from restaurant restaurant-1 is placed: 23.40 EUR.",
            ),
            (
                OrderStatus::Accepted,
                None,
                "Order order-1 accepted",
                "Restaurant restaurant-1 accepted your order order-1 and is preparing it.",
            ),
            (
                OrderStatus::Ready,
                None,
                "Order order-1 ready",
                "Your order order-1 from restaurant restaurant-1 is ready and waits for its courier.",
            ),
            (
                OrderStatus::PickedUp,
                None,
                "Order order-1 on its way",
                "A courier picked up your order order-1 from restaurant restaurant-1 and is on the way.",
            ),
            (
                OrderStatus::Delivered,
                None,
                "Order order-1 delivered",
                "Your order order-1 from restaurant restaurant-1 was delivered. Enjoy your meal.",
            ),
            (
                OrderStatus::Rejected,
                Some("closed"),
                "Order order-1 rejected",
                "Your order order-1 was rejected: the restaurant is closed. Your payment was released.",
            ),
            (
                OrderStatus::Cancelled,
                Some("customer_request"),
                "Order order-1 cancelled",
                "Your order order-1 was cancelled at your request. Your payment was released.",
            ),
            (
                OrderStatus::PaymentDeclined,
                Some("insufficient_funds"),
                "Payment for order order-1 declined",
                "Your payment of 23.40 EUR for order order-1 was declined: insufficient funds. \
                 The order was not placed and nothing was charged.",
            ),
        ];

        for (status, reason, subject, body) in cases {
            let message = status_message(&change(status.as_str(), reason), status);

            assert_eq!(message.subject, subject, "{status}");
            assert_eq!(message.body, body, "{status}");
        }
    }

    #[test]
    fn reasons_are_worded() {
        let cases = [
            (
                OrderStatus::Rejected,
                Some("closed"),
                "rejected: the restaurant is closed.",
            ),
            (
                OrderStatus::Rejected,
                Some("sold_out"),
                "rejected: an item is sold out.",
            ),
            (
                OrderStatus::Rejected,
                Some("at_capacity"),
                "rejected: the restaurant is too busy.",
            ),
            (
                OrderStatus::Rejected,
                Some("kitchen_declined"),
                "rejected: the restaurant is too busy.",
            ),
            (
                OrderStatus::Rejected,
                Some("power_cut"),
                "rejected: the restaurant could not take it (power_cut).",
            ),
            (
                OrderStatus::Rejected,
                None,
                "rejected: the restaurant could not take it.",
            ),
            (OrderStatus::Cancelled, None, "cancelled at your request."),
            (
                OrderStatus::Cancelled,
                Some("ordered twice"),
                "cancelled: ordered twice.",
            ),
            (
                OrderStatus::PaymentDeclined,
                Some("card_declined"),
                "declined: the card was declined.",
            ),
            (
                OrderStatus::PaymentDeclined,
                None,
                "declined: the card was declined.",
            ),
            (
                OrderStatus::PaymentDeclined,
                Some("expired_card"),
                "declined: the card was declined (expired_card).",
            ),
        ];

        for (status, reason, expected) in cases {
            let body = status_message(&change(status.as_str(), reason), status).body;

            assert!(body.contains(expected), "{status} {reason:?}: {body}");
        }
    }

    #[test]
    fn voided_payments_are_mentioned() {
        for status in [OrderStatus::Rejected, OrderStatus::Cancelled] {
            let body = status_message(&change(status.as_str(), None), status).body;

            assert!(
                body.ends_with("Your payment was released."),
                "{status}: {body}"
            );
        }
    }

    #[test]
    fn order_status_round_trips() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::parse("lost"), None);
    }

    #[test]
    fn status_round_trips() {
        for status in [
            NotificationStatus::Pending,
            NotificationStatus::Sent,
            NotificationStatus::Failed,
        ] {
            assert_eq!(NotificationStatus::parse(status.as_str()), Some(status));
        }
    }
}
