//! Retried requests and redelivered events change nothing.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestSystem, count_rows, order_body};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_key_same_body_gives_one_order() {
    let system = TestSystem::start().await;
    let customer = system.customer("retrier").await;
    let (restaurant, items) = system.restaurant_with_menu(0).await;
    let body = order_body(&restaurant, &[&items[0], &items[1]]);

    let first = system.place(&customer.token, Some("key-1"), &body).await;
    let second = system.place(&customer.token, Some("key-1"), &body).await;

    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let first: Value = first.json().await.unwrap();
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    assert_eq!(
        count_rows(system.dir.path(), "orders", "SELECT COUNT(*) FROM orders").await,
        1
    );
    assert_eq!(
        count_rows(
            system.dir.path(),
            "payments",
            "SELECT COUNT(*) FROM payments"
        )
        .await,
        1
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_give_one_order() {
    let system = TestSystem::start().await;
    let customer = system.customer("impatient").await;
    let (restaurant, items) = system.restaurant_with_menu(1).await;
    let body = order_body(&restaurant, &[&items[0]]);

    let attempts = (0..6).map(|_| system.place(&customer.token, Some("same-key"), &body));
    let responses = futures::future::join_all(attempts).await;

    let mut ids = Vec::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::CREATED);
        ids.push(response.json::<Value>().await.unwrap()["id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every retry answered with the same order");
    assert_eq!(
        count_rows(system.dir.path(), "orders", "SELECT COUNT(*) FROM orders").await,
        1
    );
    assert_eq!(
        count_rows(
            system.dir.path(),
            "payments",
            "SELECT COUNT(*) FROM payments"
        )
        .await,
        1
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_key_other_body_is_rejected() {
    let system = TestSystem::start().await;
    let customer = system.customer("forgetful").await;
    let (restaurant, items) = system.restaurant_with_menu(0).await;
    let first = system
        .place(
            &customer.token,
            Some("key-2"),
            &order_body(&restaurant, &[&items[0]]),
        )
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);

    let other = system
        .place(
            &customer.token,
            Some("key-2"),
            &order_body(&restaurant, &[&items[1]]),
        )
        .await;

    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = other.json().await.unwrap();
    assert_eq!(problem["field"], "Idempotency-Key");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("different request body"),
        "{problem}"
    );
    assert_eq!(
        count_rows(system.dir.path(), "orders", "SELECT COUNT(*) FROM orders").await,
        1
    );
    assert_eq!(
        count_rows(
            system.dir.path(),
            "payments",
            "SELECT COUNT(*) FROM payments"
        )
        .await,
        1
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivered_event_changes_nothing() {
    let system = TestSystem::start().await;
    let customer = system.customer("hungry").await;
    let (restaurant, items) = system.restaurant_with_menu(0).await;
    let placed = system
        .place(
            &customer.token,
            Some("once"),
            &order_body(&restaurant, &[&items[0]]),
        )
        .await;
    assert_eq!(placed.status(), StatusCode::CREATED);
    let order_id = placed.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    system
        .await_status(&customer.token, &order_id, &["delivered"])
        .await;
    system
        .system
        .wait_quiet(Duration::from_secs(30))
        .await
        .unwrap();
    let notifications_before = count_rows(
        system.dir.path(),
        "notifications",
        "SELECT COUNT(*) FROM notifications",
    )
    .await;

    // The broker delivers order.placed to the kitchen and every status change to
    // notifications a second time, as it does when an ack is lost.
    let bus_url = format!("sqlite://{}/bus.db", system.dir.path().display());
    let bus_db = sqlx::AnyPool::connect(&bus_url).await.unwrap();
    let mut redelivered = 0;
    for (queue, event_type) in [
        ("kitchen", "order.placed"),
        ("notifications", "order.status_changed"),
    ] {
        redelivered += sqlx::query(
            "INSERT INTO queue_messages (queue, seq, attempts, available_at) \
             SELECT $1, seq, 1, 0 FROM events WHERE subject = $2 AND event_type = $3",
        )
        .bind(queue)
        .bind(&order_id)
        .bind(event_type)
        .execute(&bus_db)
        .await
        .unwrap()
        .rows_affected();
    }
    bus_db.close().await;
    assert_eq!(redelivered, 6, "order.placed once, and five status changes");
    system
        .system
        .wait_quiet(Duration::from_secs(30))
        .await
        .unwrap();

    assert_eq!(
        count_rows(system.dir.path(), "kitchen", "SELECT COUNT(*) FROM tickets").await,
        1
    );
    assert_eq!(
        notifications_before, 5,
        "placed, accepted, ready, picked up, delivered"
    );
    assert_eq!(
        count_rows(
            system.dir.path(),
            "notifications",
            "SELECT COUNT(*) FROM notifications"
        )
        .await,
        notifications_before
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abandoned_request_still_places_order() {
    let system = TestSystem::start_with(|settings| {
        settings.processor.latency = Duration::from_millis(400);
    })
    .await;
    let customer = system.customer("quitter").await;
    let (restaurant, items) = system.restaurant_with_menu(2).await;
    let body = order_body(&restaurant, &[&items[0]]);
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();

    let abandoned = impatient
        .post(system.url("/v1/orders"))
        .bearer_auth(&customer.token)
        .header("Idempotency-Key", "left-early")
        .json(&body)
        .send()
        .await;
    assert!(
        abandoned.is_err(),
        "the client gave up before the payment answered"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let orders = count_rows(system.dir.path(), "orders", "SELECT COUNT(*) FROM orders").await;
    let payments = count_rows(
        system.dir.path(),
        "payments",
        "SELECT COUNT(*) FROM payments",
    )
    .await;
    let retry = system
        .place(&customer.token, Some("left-early"), &body)
        .await;
    assert_eq!(orders, 1, "the order was stored although its client left");
    assert_eq!(payments, 1);
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    system.stop().await;
}
