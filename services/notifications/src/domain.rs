//! Notifications and their wording.

use std::fmt;

use serde::Serialize;
use tiffin_events::order::{OrderPlaced, OrderReady};

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

/// A message to a customer about one event of their order. Times are Unix
/// milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    /// A UUIDv7.
    pub notification_id: String,
    /// The event the notification is about. Each event has one notification.
    pub event_id: String,
    /// The order.
    pub order_id: String,
    /// The customer's user id, or empty when the order's `order.placed` has not been
    /// handled yet (possible for `order.ready` only).
    pub customer_id: String,
    /// The type of the event, such as `order.placed`.
    pub event_type: String,
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

/// Words the notification of a placed order.
pub(crate) fn placed_message(order: &OrderPlaced) -> Message {
    Message {
        subject: format!("Order {} placed", order.order_id),
        body: format!(
            "Your order {} from restaurant {} is placed: {}.",
            order.order_id,
            order.restaurant_id,
            format_money(order.total_cents, &order.currency)
        ),
    }
}

/// Words the notification of an order whose food is ready.
pub(crate) fn ready_message(order: &OrderReady) -> Message {
    Message {
        subject: format!("Order {} ready", order.order_id),
        body: format!(
            "Your order {} from restaurant {} is ready for pickup.",
            order.order_id, order.restaurant_id
        ),
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
