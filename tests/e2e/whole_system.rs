//! The whole system replaying real orders, checked against the services' databases.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tiffin::load::{self, LoadSettings};
use tiffin::report;
use tiffin_bus::api::Bus;
use tiffin_bus::embedded::EmbeddedBus;
use tiffin_runtime::db::Database;

use crate::helpers::{TestSystem, order_body};

fn replay(target: &str, orders: usize) -> LoadSettings {
    LoadSettings {
        target: target.to_owned(),
        limit: orders,
        skip: 0,
        speed: 36_000.0,
        concurrency: 16,
        customers: 5,
        order_timeout: Duration::from_secs(60),
        cancel_rate: 0.0,
        run_id: format!("test-{}", uuid::Uuid::now_v7()),
        progress: false,
    }
}

/// Reads the counts, waiting for analytics to catch up with the orders.
async fn settled_counts(system: &TestSystem) -> report::SystemCounts {
    system
        .system
        .wait_quiet(Duration::from_secs(60))
        .await
        .expect("system settles");
    let mut counts = report::count(system.dir.path()).await.expect("counts");
    for _ in 0..100 {
        if counts.analytics_orders == counts.placed && counts.lost == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        counts = report::count(system.dir.path()).await.expect("counts");
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_orders_end_final_exactly_once() {
    let system = TestSystem::start().await;
    let customer = system.customer("browser").await;
    let page = system
        .get("/v1/restaurants?limit=5&cuisine=pizza", None)
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    let page: Value = page.json().await.unwrap();
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        5,
        "five pizza places on the first page"
    );
    let own_orders = system
        .get(
            &format!("/v1/users/{}/orders", customer.id),
            Some(&customer.token),
        )
        .await;
    assert_eq!(own_orders.status(), StatusCode::OK);

    let summary = load::run(replay(&system.system.gateway_url, 50))
        .await
        .expect("replay runs");

    assert_eq!(summary.placed, 50, "load summary: {summary}");
    assert_eq!(summary.lost, 0);
    assert_eq!(summary.failed_total(), 0);
    let delivered = summary.final_states.get("delivered").copied().unwrap_or(0);
    let rejected = summary.final_states.get("rejected").copied().unwrap_or(0);
    assert_eq!(
        delivered + rejected,
        50,
        "every order delivered or rejected: {summary}"
    );
    assert_eq!(summary.reached_ready, delivered);
    let counts = settled_counts(&system).await;
    assert_eq!(counts.placed, 50);
    assert_eq!(counts.lost, 0);
    assert_eq!(counts.reached_ready as u64, delivered);
    assert_eq!(counts.missing_tickets, 0);
    assert_eq!(counts.duplicate_tickets, 0);
    assert_eq!(counts.duplicate_notifications, 0);
    assert_eq!(
        counts.orders_with_wrong_notifications, 0,
        "two notifications per order"
    );
    assert_eq!(counts.duplicate_authorizations, 0);
    assert_eq!(counts.orders_without_authorization, 0);
    let figures: Value = system
        .get("/v1/analytics/summary", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(figures["orders"], 50);
    assert_eq!(figures["ready"], delivered);
    assert_eq!(figures["revenue_cents"], counts.orders_revenue_cents);
    let audit = tiffin::audit::audit(system.dir.path(), 30_000)
        .await
        .expect("audit runs");
    assert!(audit.is_clean(), "audit:\n{audit}");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn analytics_rebuild_gives_same_figures() {
    let system = TestSystem::start().await;
    let summary = load::run(replay(&system.system.gateway_url, 20))
        .await
        .expect("replay runs");
    assert_eq!(summary.lost, 0, "load summary: {summary}");
    assert_eq!(summary.failed_total(), 0, "load summary: {summary}");
    let counts = settled_counts(&system).await;
    assert_eq!(counts.analytics_orders, 20);
    let live: Value = system
        .get("/v1/analytics/summary", None)
        .await
        .json()
        .await
        .unwrap();
    let dir = system.stop().await;

    let bus = EmbeddedBus::open(&dir.path().join("bus.db")).await.unwrap();
    let shared: Arc<dyn Bus> = Arc::new(bus.clone());
    let rebuilt = tiffin_analytics::rebuild(&Database::sqlite_url(dir.path(), "analytics"), shared)
        .await
        .expect("rebuild succeeds");
    bus.close().await;

    assert_eq!(serde_json::to_value(&rebuilt).unwrap(), live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_delivery_orders_end_at_ready() {
    let system = TestSystem::start_with(|settings| {
        settings.delivery = tiffin::system::Delivery::LeftOut;
    })
    .await;
    let customer = system.customer("takeaway").await;
    let (restaurant, items) = system.restaurant_with_menu(0).await;
    let mut orders = Vec::new();
    for (n, item) in items.iter().take(3).enumerate() {
        let body = order_body(&restaurant, &[item.as_str()]);
        let key = format!("takeaway-{n}");
        let response = system.place(&customer.token, Some(&key), &body).await;
        let status = response.status();
        let order: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{order}");
        orders.push(order["id"].as_str().unwrap().to_owned());
    }
    for order in &orders {
        system
            .await_status(&customer.token, order, &["ready"])
            .await;
    }
    system
        .system
        .wait_quiet(Duration::from_secs(60))
        .await
        .expect("system settles");

    let delivery = system.get("/v1/delivery/orders/x", None).await;
    assert_eq!(delivery.status(), StatusCode::NOT_FOUND);
    let detail: Value = delivery.json().await.unwrap();
    assert!(
        detail["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("runs no delivery service"),
        "{detail}"
    );
    let left_out = tiffin::system::Delivery::LeftOut;
    let counts = report::count_for(system.dir.path(), left_out)
        .await
        .expect("counts");
    assert_eq!(counts.placed, 3);
    assert_eq!(counts.lost, 0, "ready is final without delivery");
    assert_eq!(counts.orders_by_status.get("ready"), Some(&3));
    assert_eq!(counts.orders_with_wrong_notifications, 0);
    assert_eq!(counts.duplicate_notifications, 0);
    // With delivery running, the same orders would still be on their way.
    let with_delivery = report::count(system.dir.path()).await.expect("counts");
    assert_eq!(with_delivery.lost, 3);
    let audit = tiffin::audit::audit_for(system.dir.path(), -1, left_out)
        .await
        .expect("audit runs");
    assert!(audit.is_clean(), "audit:\n{audit}");
    let strict = tiffin::audit::audit(system.dir.path(), -1)
        .await
        .expect("audit runs");
    assert_eq!(strict.violations.len(), 3, "audit:\n{strict}");
    assert!(!system.dir.path().join("delivery.db").exists());
    system.stop().await;
}
