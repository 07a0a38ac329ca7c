//! Admission control: while orders wait too long for the kitchen, or events too
//! long for the outbox relay, placements are rejected with 503 and `Retry-After`.
//! Once the backlog has cleared, a retry with the same key places the order, or
//! replays an earlier one.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tiffin_orders::admission::AdmissionSettings;

use crate::helpers::{TestSystem, order_body};

/// Orders placed long ago that the kitchen has not decided, written straight into
/// the order database: a backlog without waiting for one to build up.
const STUCK_ORDERS: &str = "INSERT INTO orders (order_id, customer_id, restaurant_id, status, \
     total_cents, currency, payment_id, address_line1, address_city, address_lat, address_lon, \
     created_at, updated_at) VALUES \
     ('stuck-1', 'c', 'r', 'placed', 100, 'EUR', 'p1', 'Street 1', 'Helsinki', 60.17, 24.94, 0, 0), \
     ('stuck-2', 'c', 'r', 'placed', 100, 'EUR', 'p2', 'Street 1', 'Helsinki', 60.17, 24.94, 0, 0), \
     ('stuck-3', 'c', 'r', 'placed', 100, 'EUR', 'p3', 'Street 1', 'Helsinki', 60.17, 24.94, 0, 0)";

/// An outbox row written long ago that the relay cannot publish, because it is
/// not an envelope: it stays first in line and blocks the relay.
const STUCK_EVENT: &str = "INSERT INTO outbox (event_id, envelope, created_at) \
     VALUES ('00000000-0000-0000-0000-000000000000', 'not an envelope', 0)";

/// Removes the stuck row, as an operator would.
const REMOVE_STUCK_EVENT: &str =
    "DELETE FROM outbox WHERE event_id = '00000000-0000-0000-0000-000000000000'";

/// The kitchen "decides" the stuck orders.
const DECIDE_STUCK: &str = "UPDATE orders SET status = 'accepted' WHERE order_id LIKE 'stuck-%'";

async fn execute(system: &TestSystem, sql: &'static str) {
    sqlx::any::install_default_drivers();
    let url = tiffin::system::Databases::from(system.dir.path()).url("orders");
    let pool = sqlx::AnyPool::connect(&url).await.expect("database opens");
    sqlx::query(sql)
        .execute(&pool)
        .await
        .expect("statement runs");
    pool.close().await;
}

/// Places with a new key until the order service rejects one, for up to 5 s, and
/// returns the rejected key with the response. The first placements may be admitted
/// before the service has counted the backlog.
async fn place_until_rejected(
    system: &TestSystem,
    token: &str,
    body: &Value,
) -> (String, reqwest::Response) {
    for attempt in 0..100 {
        let key = format!("probe-{attempt}");
        let response = system.place(token, Some(&key), body).await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            return (key, response);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("POST /v1/orders was never rejected");
}

/// Places with `key` until the order is created, for up to 5 s.
async fn place_until_created(
    system: &TestSystem,
    token: &str,
    key: &str,
    body: &Value,
) -> reqwest::Response {
    for _ in 0..100 {
        let response = system.place(token, Some(key), body).await;
        if response.status() == StatusCode::CREATED {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("POST /v1/orders with key {key} was never admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kitchen_backlog_rejects_new_orders() {
    let system = TestSystem::start_with(|settings| {
        settings.admission = AdmissionSettings {
            max_waiting: Some(2),
            waiting_after: Duration::from_secs(60),
            max_outbox_lag: None,
            interval: Duration::from_millis(20),
            hold: Duration::ZERO,
        };
    })
    .await;
    let customer = system.customer("admitted").await;
    let (restaurant, items) = system.restaurant_with_menu(0).await;
    let body = order_body(&restaurant, &[&items[0]]);
    let before = system.place(&customer.token, Some("before"), &body).await;
    assert_eq!(before.status(), StatusCode::CREATED);
    let before: Value = before.json().await.unwrap();

    execute(&system, STUCK_ORDERS).await;
    let (rejected_key, rejected) = place_until_rejected(&system, &customer.token, &body).await;
    let retry_after = rejected.headers()["retry-after"]
        .to_str()
        .unwrap()
        .to_owned();
    let problem: Value = rejected.json().await.unwrap();

    assert_eq!(retry_after, "1");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("3 orders"), "{detail}");

    execute(&system, DECIDE_STUCK).await;
    let admitted = place_until_created(&system, &customer.token, &rejected_key, &body).await;
    let replayed_header = admitted.headers().get("idempotent-replayed").cloned();
    let admitted: Value = admitted.json().await.unwrap();
    let replayed = system.place(&customer.token, Some("before"), &body).await;

    assert!(replayed_header.is_none(), "the rejected key had an order");
    assert_ne!(admitted["id"], before["id"]);
    assert_eq!(replayed.status(), StatusCode::CREATED);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_lag_rejects_new_orders() {
    let system = TestSystem::start_with(|settings| {
        settings.admission = AdmissionSettings {
            max_outbox_lag: Some(Duration::from_secs(5)),
            interval: Duration::from_millis(20),
            hold: Duration::ZERO,
            ..AdmissionSettings::default()
        };
    })
    .await;
    let customer = system.customer("lagging").await;
    let (restaurant, items) = system.restaurant_with_menu(0).await;
    let body = order_body(&restaurant, &[&items[0]]);

    execute(&system, STUCK_EVENT).await;
    let (rejected_key, rejected) = place_until_rejected(&system, &customer.token, &body).await;
    let problem: Value = rejected.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();

    assert!(detail.contains("waited"), "{detail}");
    assert!(detail.contains("to be published"), "{detail}");

    execute(&system, REMOVE_STUCK_EVENT).await;
    let admitted = place_until_created(&system, &customer.token, &rejected_key, &body).await;

    assert_eq!(admitted.status(), StatusCode::CREATED);
    system.stop().await;
}
