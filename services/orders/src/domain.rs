//! Order rules: the request's validation, pricing from the menu replica, and the
//! order state machine.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tiffin_runtime::problem::Problem;

/// Most of one item an order may contain.
pub const MAX_QUANTITY: u32 = 50;
/// Most lines an order may contain.
pub const MAX_LINES: usize = 100;
/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// The status of an order.
///
/// The happy path is placed, accepted, ready, picked up, delivered. Rejected and
/// cancelled end an order early; payment-declined is recorded for orders whose
/// authorization was refused. See [`OrderStatus::apply`] for the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Paid for (authorized) and sent to the kitchen.
    Placed,
    /// The kitchen accepted it and is preparing it.
    Accepted,
    /// Ready for pickup.
    Ready,
    /// A courier has it.
    PickedUp,
    /// At the customer's door. Final.
    Delivered,
    /// The kitchen refused it. Final.
    Rejected,
    /// Cancelled by the customer. Final.
    Cancelled,
    /// The card was declined. Final.
    PaymentDeclined,
}

/// Something that happened to an order, as reported by another service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderEvent {
    /// `order.accepted` from the kitchen.
    Accepted,
    /// `order.ready` from the kitchen.
    Ready,
    /// `order.picked_up` from delivery.
    PickedUp,
    /// `order.delivered` from delivery.
    Delivered,
    /// `order.rejected` from the kitchen.
    Rejected,
    /// The customer cancelled.
    Cancelled,
}

/// The outcome of applying an event to a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The order moves to this status.
    To(OrderStatus),
    /// The event is already reflected: a duplicate, or a step that a later event
    /// overtook (for example `order.accepted` arriving after `order.ready`).
    Stale,
    /// The event contradicts the order's state (for example `order.ready` for a
    /// cancelled order). Nothing changes; the caller logs it.
    Illegal,
}

impl OrderStatus {
    /// All statuses, in the order of the happy path first.
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

    /// Returns the status's name in the API and the database.
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

    /// Returns true when no event can change the status any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Delivered | Self::Rejected | Self::Cancelled | Self::PaymentDeclined
        )
    }

    /// Returns the position on the happy path, or `None` for the early endings.
    fn progress(self) -> Option<u8> {
        match self {
            Self::Placed => Some(0),
            Self::Accepted => Some(1),
            Self::Ready => Some(2),
            Self::PickedUp => Some(3),
            Self::Delivered => Some(4),
            Self::Rejected | Self::Cancelled | Self::PaymentDeclined => None,
        }
    }

    /// Applies `event` to this status.
    ///
    /// Events may arrive twice and out of order, so a forward event may skip steps
    /// (`order.ready` before `order.accepted` moves a placed order to ready) and an
    /// event behind the current step is [`Transition::Stale`]. The order therefore
    /// ends in the state the set of events implies, whatever their order.
    ///
    /// - Rejection is legal only before the food is ready.
    /// - Cancellation is legal only before pickup.
    /// - Nothing leaves a final status; repeating the event that caused it is stale.
    pub fn apply(self, event: OrderEvent) -> Transition {
        let target = match event {
            OrderEvent::Accepted => Self::Accepted,
            OrderEvent::Ready => Self::Ready,
            OrderEvent::PickedUp => Self::PickedUp,
            OrderEvent::Delivered => Self::Delivered,
            OrderEvent::Rejected => Self::Rejected,
            OrderEvent::Cancelled => Self::Cancelled,
        };
        if self == target {
            return Transition::Stale;
        }
        match (self.progress(), target.progress()) {
            (Some(from), Some(to)) if to > from => Transition::To(target),
            (Some(_), Some(_)) => Transition::Stale,
            (Some(from), None) => {
                let allowed = match target {
                    Self::Rejected => from < 2,
                    Self::Cancelled => from < 3,
                    _ => false,
                };
                if allowed {
                    Transition::To(target)
                } else {
                    Transition::Illegal
                }
            }
            (None, _) => Transition::Illegal,
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| format!("unknown order status `{text}`"))
    }
}

/// The body of `POST /v1/orders`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    /// The restaurant to order from.
    pub restaurant_id: String,
    /// The requested lines.
    pub items: Vec<RequestedItem>,
    /// The delivery address.
    pub delivery_address: DeliveryAddress,
    /// For replays of real orders: the minutes the original order took from placement
    /// to the door, from which the kitchen and delivery take their durations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_delivery_minutes: Option<u32>,
    /// For replays of real orders: the local time the original was placed,
    /// `YYYY-MM-DDTHH:MM:SS`, by which the kitchen judges opening hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_local_time: Option<String>,
}

/// One requested line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedItem {
    /// A menu item of the restaurant.
    pub menu_item_id: String,
    /// 1 to [`MAX_QUANTITY`].
    pub quantity: u32,
}

/// A delivery address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryAddress {
    /// Street and number.
    pub line1: String,
    /// City.
    pub city: String,
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
}

/// A menu item as stored in the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MenuItem {
    /// The item.
    pub menu_item_id: String,
    /// Its restaurant.
    pub restaurant_id: String,
    /// Its name.
    pub name: String,
    /// Price in minor units.
    pub price_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Whether it can be ordered.
    pub available: bool,
}

/// A priced order line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    /// The menu item.
    pub menu_item_id: String,
    /// Its name.
    pub name: String,
    /// How many.
    pub quantity: u32,
    /// Price of one, in minor units.
    pub unit_price_cents: i64,
}

/// An order priced from the replica, ready to be authorized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedOrder {
    /// The lines in request order.
    pub lines: Vec<PricedLine>,
    /// Their sum, in minor units.
    pub total_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// Checks the parts of a request that need no lookup.
///
/// # Errors
///
/// A 400 problem naming the first invalid field.
pub fn validate(request: &PlaceOrderRequest) -> Result<(), Problem> {
    if request.restaurant_id.trim().is_empty() {
        return Err(Problem::invalid_field(
            "restaurant_id",
            "restaurant_id must not be empty",
        ));
    }
    if request.items.is_empty() {
        return Err(Problem::invalid_field(
            "items",
            "items must list at least one menu item",
        ));
    }
    if request.items.len() > MAX_LINES {
        return Err(Problem::invalid_field(
            "items",
            format!(
                "items lists {} lines; at most {MAX_LINES} are allowed",
                request.items.len()
            ),
        ));
    }
    let mut seen = HashMap::new();
    for (index, item) in request.items.iter().enumerate() {
        if item.menu_item_id.trim().is_empty() {
            let field = format!("items[{index}].menu_item_id");
            return Err(Problem::invalid_field(
                &field,
                format!("{field} must not be empty"),
            ));
        }
        if item.quantity == 0 || item.quantity > MAX_QUANTITY {
            let field = format!("items[{index}].quantity");
            return Err(Problem::invalid_field(
                &field,
                format!(
                    "{field} is {}; it must be between 1 and {MAX_QUANTITY}",
                    item.quantity
                ),
            ));
        }
        if let Some(first) = seen.insert(item.menu_item_id.as_str(), index) {
            let field = format!("items[{index}].menu_item_id");
            return Err(Problem::invalid_field(
                &field,
                format!(
                    "{field} repeats menu item {} of items[{first}]; order it once with a larger quantity",
                    item.menu_item_id
                ),
            ));
        }
    }
    let address = &request.delivery_address;
    if address.line1.trim().is_empty() {
        return Err(Problem::invalid_field(
            "delivery_address.line1",
            "delivery_address.line1 must not be empty",
        ));
    }
    if address.city.trim().is_empty() {
        return Err(Problem::invalid_field(
            "delivery_address.city",
            "delivery_address.city must not be empty",
        ));
    }
    if !(-90.0..=90.0).contains(&address.lat) {
        return Err(Problem::invalid_field(
            "delivery_address.lat",
            format!(
                "delivery_address.lat is {}; it must be between -90 and 90",
                address.lat
            ),
        ));
    }
    if !(-180.0..=180.0).contains(&address.lon) {
        return Err(Problem::invalid_field(
            "delivery_address.lon",
            format!(
                "delivery_address.lon is {}; it must be between -180 and 180",
                address.lon
            ),
        ));
    }
    if let Some(minutes) = request.replay_delivery_minutes
        && minutes > 24 * 60
    {
        return Err(Problem::invalid_field(
            "replay_delivery_minutes",
            format!("replay_delivery_minutes is {minutes}; it must be at most 1440"),
        ));
    }
    if let Some(time) = &request.replay_local_time
        && !is_local_time(time)
    {
        return Err(Problem::invalid_field(
            "replay_local_time",
            format!("replay_local_time is `{time}`; it must have the form YYYY-MM-DDTHH:MM:SS"),
        ));
    }
    Ok(())
}

/// Returns true for `YYYY-MM-DDTHH:MM:SS` with plausible field values.
fn is_local_time(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits =
        |range: std::ops::Range<usize>| text.get(range).and_then(|part| part.parse::<u32>().ok());
    bytes.len() == 19
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && digits(0..4).is_some()
        && digits(5..7).is_some_and(|m| (1..=12).contains(&m))
        && digits(8..10).is_some_and(|d| (1..=31).contains(&d))
        && digits(11..13).is_some_and(|h| h < 24)
        && digits(14..16).is_some_and(|m| m < 60)
        && digits(17..19).is_some_and(|s| s < 60)
}

/// Prices a validated request against the restaurant's menu from the replica.
///
/// `menu` contains the replica's rows for the requested item ids, whichever restaurant
/// they belong to, so an item of another restaurant is named as such.
///
/// # Errors
///
/// A 422 problem naming the field when the restaurant is unknown, an item is unknown,
/// belongs to another restaurant or is unavailable.
pub fn price(
    request: &PlaceOrderRequest,
    restaurant_known: bool,
    menu: &HashMap<String, MenuItem>,
) -> Result<PricedOrder, Problem> {
    if !restaurant_known {
        return Err(Problem::unprocessable(
            "unknown-restaurant",
            format!(
                "restaurant {} does not exist; pick one from GET /v1/restaurants",
                request.restaurant_id
            ),
        )
        .with_field("restaurant_id"));
    }
    let mut lines = Vec::with_capacity(request.items.len());
    let mut total_cents: i64 = 0;
    let mut currency = None::<String>;
    for (index, item) in request.items.iter().enumerate() {
        let field = format!("items[{index}].menu_item_id");
        let Some(menu_item) = menu.get(&item.menu_item_id) else {
            return Err(Problem::unprocessable(
                "unknown-menu-item",
                format!("{field}: menu item {} does not exist", item.menu_item_id),
            )
            .with_field(field));
        };
        if menu_item.restaurant_id != request.restaurant_id {
            return Err(Problem::unprocessable(
                "item-of-another-restaurant",
                format!(
                    "{field}: menu item {} belongs to restaurant {}, not {}",
                    item.menu_item_id, menu_item.restaurant_id, request.restaurant_id
                ),
            )
            .with_field(field));
        }
        if !menu_item.available {
            return Err(Problem::unprocessable(
                "menu-item-unavailable",
                format!(
                    "{field}: menu item {} is not available now",
                    item.menu_item_id
                ),
            )
            .with_field(field));
        }
        match &currency {
            None => currency = Some(menu_item.currency.clone()),
            Some(c) if *c != menu_item.currency => {
                return Err(Problem::unprocessable(
                    "mixed-currencies",
                    format!(
                        "{field}: menu item {} is priced in {}, the order in {c}",
                        item.menu_item_id, menu_item.currency
                    ),
                )
                .with_field(field));
            }
            Some(_) => {}
        }
        total_cents += menu_item.price_cents * i64::from(item.quantity);
        lines.push(PricedLine {
            menu_item_id: item.menu_item_id.clone(),
            name: menu_item.name.clone(),
            quantity: item.quantity,
            unit_price_cents: menu_item.price_cents,
        });
    }
    Ok(PricedOrder {
        lines,
        total_cents,
        currency: currency.unwrap_or_else(|| "EUR".to_owned()),
    })
}

/// Checks an `Idempotency-Key` header value.
///
/// # Errors
///
/// A 400 problem when it is missing, empty or too long.
pub fn validate_idempotency_key(value: Option<&str>) -> Result<String, Problem> {
    let key = value.map(str::trim).unwrap_or_default();
    if key.is_empty() {
        return Err(Problem::invalid_field(
            "Idempotency-Key",
            "missing Idempotency-Key header: send a unique value per order, and the same value when retrying it",
        ));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(Problem::invalid_field(
            "Idempotency-Key",
            format!(
                "Idempotency-Key is {} bytes long; at most {MAX_IDEMPOTENCY_KEY_LEN} are allowed",
                key.len()
            ),
        ));
    }
    Ok(key.to_owned())
}

/// Returns the order id for a customer's idempotency key: the same key always names the same
/// order, so a retried request that authorizes again refers to the same order.
pub fn order_id_for(customer_id: &str, idempotency_key: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f1d_2c4e_9b7a_4f0e_8d3c_5a6b_7c8d_9e0f);
    uuid::Uuid::new_v5(
        &NAMESPACE,
        format!("{customer_id}\n{idempotency_key}").as_bytes(),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_event() -> impl Strategy<Value = OrderEvent> {
        prop_oneof![
            Just(OrderEvent::Accepted),
            Just(OrderEvent::Ready),
            Just(OrderEvent::PickedUp),
            Just(OrderEvent::Delivered),
            Just(OrderEvent::Rejected),
            Just(OrderEvent::Cancelled),
        ]
    }

    /// A history the other services can produce: the happy path up to some step, or
    /// a rejection instead of acceptance.
    fn kitchen_and_courier_history() -> impl Strategy<Value = Vec<OrderEvent>> {
        prop_oneof![
            (0usize..=4).prop_map(|steps| HAPPY_PATH[..steps].to_vec()),
            Just(vec![OrderEvent::Rejected]),
        ]
    }

    const HAPPY_PATH: [OrderEvent; 4] = [
        OrderEvent::Accepted,
        OrderEvent::Ready,
        OrderEvent::PickedUp,
        OrderEvent::Delivered,
    ];

    /// Delivers `events` in a scrambled order, each once or twice.
    fn scramble(events: &[OrderEvent], seed: u64) -> Vec<OrderEvent> {
        let mut delivered: Vec<OrderEvent> = events.to_vec();
        let mut rng = seed;
        let mut next = || {
            rng = rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (rng >> 33) as usize
        };
        for event in events {
            if next() % 2 == 0 {
                delivered.push(*event);
            }
        }
        for i in (1..delivered.len()).rev() {
            let j = next() % (i + 1);
            delivered.swap(i, j);
        }
        delivered
    }

    /// Applies events in sequence, ignoring stale and illegal ones, as the consumer does.
    fn replay_from(start: OrderStatus, events: &[OrderEvent]) -> OrderStatus {
        events
            .iter()
            .fold(start, |status, event| match status.apply(*event) {
                Transition::To(next) => next,
                Transition::Stale | Transition::Illegal => status,
            })
    }

    fn replay(events: &[OrderEvent]) -> OrderStatus {
        replay_from(OrderStatus::Placed, events)
    }

    /// Returns the status a history implies.
    fn implied(history: &[OrderEvent]) -> OrderStatus {
        match history.last() {
            None => OrderStatus::Placed,
            Some(OrderEvent::Rejected) => OrderStatus::Rejected,
            Some(_) => [
                OrderStatus::Accepted,
                OrderStatus::Ready,
                OrderStatus::PickedUp,
                OrderStatus::Delivered,
            ][history.len() - 1],
        }
    }

    proptest! {
        #[test]
        fn any_events_never_leave_a_final_status_or_go_back(
            events in proptest::collection::vec(any_event(), 0..16),
        ) {
            let mut status = OrderStatus::Placed;
            for event in events {
                let next = match status.apply(event) {
                    Transition::To(next) => next,
                    Transition::Stale | Transition::Illegal => status,
                };
                prop_assert!(!status.is_final() || next == status, "{status} moved to {next}");
                if let (Some(before), Some(after)) = (status.progress(), next.progress()) {
                    prop_assert!(after >= before, "{status} went back to {next}");
                }
                status = next;
            }
        }

        #[test]
        fn scrambled_history_converges(history in kitchen_and_courier_history(), seed in any::<u64>()) {
            let delivered = scramble(&history, seed);

            prop_assert_eq!(replay(&delivered), implied(&history), "delivered as {:?}", delivered);
        }

        #[test]
        fn cancel_before_pickup_wins_over_late_events(
            steps in 0usize..=2,
            late in 0usize..=2,
            seed in any::<u64>(),
        ) {
            let before = scramble(&HAPPY_PATH[..steps], seed);
            let after = scramble(&HAPPY_PATH[steps..(steps + late).min(4)], seed.rotate_left(7));

            let at_cancel = replay(&before);
            let cancelled = replay_from(at_cancel, &[OrderEvent::Cancelled]);
            let end = replay_from(cancelled, &after);

            prop_assert_eq!(cancelled, OrderStatus::Cancelled);
            prop_assert_eq!(end, OrderStatus::Cancelled);
        }
    }

    #[test]
    fn ready_before_accepted_ends_ready() {
        assert_eq!(
            replay(&[OrderEvent::Ready, OrderEvent::Accepted]),
            OrderStatus::Ready
        );
    }

    #[test]
    fn nothing_leaves_a_final_status() {
        for status in OrderStatus::ALL.into_iter().filter(|s| s.is_final()) {
            for event in [
                OrderEvent::Accepted,
                OrderEvent::Ready,
                OrderEvent::PickedUp,
                OrderEvent::Delivered,
            ] {
                assert!(
                    !matches!(status.apply(event), Transition::To(_)),
                    "{status} moved on {event:?}"
                );
            }
        }
    }

    #[test]
    fn cancel_only_before_pickup() {
        assert_eq!(
            OrderStatus::Ready.apply(OrderEvent::Cancelled),
            Transition::To(OrderStatus::Cancelled)
        );
        assert_eq!(
            OrderStatus::PickedUp.apply(OrderEvent::Cancelled),
            Transition::Illegal
        );
        assert_eq!(
            OrderStatus::Ready.apply(OrderEvent::Rejected),
            Transition::Illegal
        );
    }

    #[test]
    fn status_names_round_trip() {
        for status in OrderStatus::ALL {
            assert_eq!(status.as_str().parse::<OrderStatus>(), Ok(status));
        }
    }

    #[test]
    fn order_id_is_stable_per_key() {
        assert_eq!(order_id_for("u1", "k1"), order_id_for("u1", "k1"));
        assert_ne!(order_id_for("u1", "k1"), order_id_for("u2", "k1"));
    }
}
