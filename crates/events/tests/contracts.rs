//! The payload structs match their JSON Schemas under `contracts/`.

use serde::Serialize;
use serde_json::Value;
use tiffin_bus::envelope::schema_uri;
use tiffin_events::EventData;
use tiffin_events::menu::MenuItemUpserted;
use tiffin_events::order::{
    OrderAccepted, OrderCancelled, OrderDelivered, OrderLine, OrderPickedUp, OrderPlaced,
    OrderReady, OrderRejected, OrderStatusChanged, RejectReason,
};
use tiffin_events::restaurant::RestaurantUpserted;

fn schema(event_type: &str) -> Value {
    let path = format!(
        "{}/../../contracts/{event_type}.v1.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_str(&text).expect("schema is JSON")
}

/// Checks that `payload` writes every required property, writes nothing the schema
/// does not describe, and that the schema's `$id` is the payload's `dataschema`.
fn check<T: EventData + Serialize>(payload: &T) {
    let schema = schema(T::TYPE);
    let json = serde_json::to_value(payload).unwrap();
    let written = json.as_object().unwrap();
    let properties = schema["properties"].as_object().unwrap();

    assert_eq!(
        schema["$id"],
        schema_uri(T::TYPE, T::VERSION),
        "{}: $id",
        T::TYPE
    );
    for required in schema["required"].as_array().unwrap() {
        let name = required.as_str().unwrap();
        assert!(
            written.contains_key(name),
            "{}: required `{name}` not written",
            T::TYPE
        );
    }
    for name in written.keys() {
        assert!(
            properties.contains_key(name),
            "{}: `{name}` missing from the schema",
            T::TYPE
        );
    }
}

#[test]
fn payloads_match_their_schemas() {
    check(&MenuItemUpserted {
        menu_item_id: "node-1-1".into(),
        restaurant_id: "node-1".into(),
        restaurant_name: "Arnolds".into(),
        name: "Coffee".into(),
        price_cents: 450,
        currency: "EUR".into(),
        available: true,
        revision: 1,
    });
    check(&OrderPlaced {
        order_id: "o".into(),
        customer_id: "c".into(),
        restaurant_id: "r".into(),
        lines: vec![OrderLine {
            menu_item_id: "m".into(),
            name: "Coffee".into(),
            quantity: 2,
            unit_price_cents: 450,
        }],
        total_cents: 900,
        currency: "EUR".into(),
        payment_id: "p".into(),
        placed_at: 1,
        replay_delivery_minutes: Some(30),
        replay_local_time: Some("2020-08-01T06:07:00".into()),
    });
    check(&OrderAccepted {
        order_id: "o".into(),
        restaurant_id: "r".into(),
        ticket_id: "t".into(),
        accepted_at: 1,
        ready_by: 2,
    });
    check(&OrderReady {
        order_id: "o".into(),
        restaurant_id: "r".into(),
        ticket_id: "t".into(),
        ready_at: 2,
        preparation_ms: 1,
        replay_delivery_minutes: Some(30),
    });
    check(&OrderRejected {
        order_id: "o".into(),
        restaurant_id: "r".into(),
        reason: RejectReason::SoldOut,
        detail: "Coffee is sold out".into(),
        rejected_at: 2,
    });
    check(&OrderCancelled {
        order_id: "o".into(),
        restaurant_id: "r".into(),
        reason: "customer_request".into(),
        cancelled_at: 2,
    });
    check(&OrderPickedUp {
        order_id: "o".into(),
        courier_id: "c".into(),
        picked_up_at: 3,
    });
    check(&OrderDelivered {
        order_id: "o".into(),
        courier_id: "c".into(),
        delivered_at: 4,
        delivery_ms: 1,
    });
    check(&OrderStatusChanged {
        order_id: "o".into(),
        customer_id: "u".into(),
        restaurant_id: "r".into(),
        status: "cancelled".into(),
        reason: Some("customer_request".into()),
        total_cents: 900,
        currency: "EUR".into(),
        changed_at: 5,
    });
    check(&RestaurantUpserted {
        restaurant_id: "node-1".into(),
        name: "Arnolds".into(),
        amenity: "cafe".into(),
        lat: 60.17,
        lon: 24.94,
        opening_hours: Some("Mo-Fr 08:00-20:00".into()),
        revision: 1,
    });
}
