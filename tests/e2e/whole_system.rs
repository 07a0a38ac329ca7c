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

use crate::helpers::TestSystem;

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
