//! A crash with events in flight: the `tiffin up` process is killed with SIGKILL
//! and started again on the same data directory.

use std::time::Duration;

use crate::helpers::{UpProcess, order_body};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_process_resumes_without_loss_or_doubles() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut running = UpProcess::start(dir.path(), &["--time-scale", "600"]).await;
    let credentials =
        json!({ "email": "crash@test.tiffin.dev", "password": "correct horse battery" });
    let registered = http
        .post(format!("{}/v1/auth/register", running.gateway))
        .json(&credentials)
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    let login: Value = http
        .post(format!("{}/v1/auth/login", running.gateway))
        .json(&credentials)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();
    let page: Value = http
        .get(format!("{}/v1/restaurants?limit=100", running.gateway))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Restaurants without mapped hours are open at the orders' noon by default.
    let restaurants: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["opening_hours"].is_null())
        .filter_map(|r| r["id"].as_str())
        .take(10)
        .collect();

    // Orders with about one second of preparation at this time scale, so the kitchen
    // holds all of them when the process dies.
    let mut order_ids = Vec::new();
    for n in 0..20 {
        let restaurant = restaurants[n % restaurants.len()];
        let menu: Value = http
            .get(format!(
                "{}/v1/restaurants/{restaurant}/menu",
                running.gateway
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let item = menu["items"][0]["id"].as_str().unwrap();
        let mut body = order_body(restaurant, &[item]);
        body["replay_delivery_minutes"] = json!(25);
        let placed = http
            .post(format!("{}/v1/orders", running.gateway))
            .bearer_auth(&token)
            .header("Idempotency-Key", format!("crash-{n}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(placed.status(), StatusCode::CREATED);
        order_ids.push(
            placed.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    running.child.kill().await.expect("SIGKILL");
    let _ = running.child.wait().await;

    let running = UpProcess::start(dir.path(), &["--time-scale", "600"]).await;
    for order_id in &order_ids {
        let mut ready = false;
        for _ in 0..300 {
            let status: Value = http
                .get(format!("{}/v1/orders/{order_id}/status", running.gateway))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if status["status"] == "delivered" {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "order {order_id} was delivered after the restart");
    }
    for order_id in &order_ids {
        let mut count = 0;
        for _ in 0..100 {
            let list: Value = http
                .get(format!(
                    "{}/v1/notifications?order_id={order_id}",
                    running.notifications
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            count = list["notifications"].as_array().map_or(0, Vec::len);
            if count >= 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            count, 5,
            "order {order_id} has one notification per status change"
        );
    }
    drop(running);

    let tickets =
        crate::helpers::count_rows(dir.path(), "kitchen", "SELECT COUNT(*) FROM tickets").await;
    let distinct = crate::helpers::count_rows(
        dir.path(),
        "kitchen",
        "SELECT COUNT(DISTINCT order_id) FROM tickets",
    )
    .await;
    let payments =
        crate::helpers::count_rows(dir.path(), "payments", "SELECT COUNT(*) FROM payments").await;
    assert_eq!(tickets, 20);
    assert_eq!(distinct, 20);
    assert_eq!(payments, 20);
}
