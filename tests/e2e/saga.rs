//! The order saga across services: rejections, cancellations and declines mixed,
//! cancellation semantics and races, and a crash in the middle of a compensation.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tiffin::load::{self, LoadSettings};
use tokio::process::Command;

use crate::helpers::{TestSystem, UpProcess, count_rows, order_body};

async fn audit_clean(system: &TestSystem) {
    system
        .system
        .wait_quiet(Duration::from_secs(60))
        .await
        .expect("system settles");
    let audit = tiffin::audit::audit(system.dir.path(), 30_000)
        .await
        .expect("audit runs");
    assert!(audit.is_clean(), "audit:\n{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_paths_end_final_and_audit_clean() {
    let system = TestSystem::start_with(|settings| {
        settings.reject_rate = 0.2;
        settings.processor.decline_rate = 0.2;
    })
    .await;

    let summary = load::run(LoadSettings {
        target: system.system.gateway_url.clone(),
        limit: 60,
        skip: 100,
        speed: 3600.0,
        concurrency: 32,
        customers: 6,
        order_timeout: Duration::from_secs(60),
        cancel_rate: 0.2,
        run_id: format!("saga-{}", uuid::Uuid::now_v7()),
        progress: false,
    })
    .await
    .expect("replay runs");

    assert_eq!(summary.lost, 0, "load summary: {summary}");
    assert_eq!(summary.failed_total(), 0, "load summary: {summary}");
    assert!(
        summary.declined_total() > 0,
        "some cards declined: {summary}"
    );
    for status in ["delivered", "rejected", "cancelled"] {
        assert!(
            summary.final_states.get(status).is_some_and(|n| *n > 0),
            "no {status} orders: {summary}"
        );
    }
    assert!(summary.cancel_requests > 0);
    audit_clean(&system).await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancellation_follows_the_rules() {
    let system = TestSystem::start_with(|settings| settings.time_scale = 60.0).await;
    let owner = system.customer("canceller").await;
    let stranger = system.customer("bystander").await;
    let (restaurant, items) = system.restaurant_with_menu(0).await;
    let placed = system
        .place(
            &owner.token,
            Some("to-cancel"),
            &order_body(&restaurant, &[&items[0]]),
        )
        .await;
    assert_eq!(placed.status(), StatusCode::CREATED);
    let order_id = placed.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let by_stranger = system.cancel(&stranger.token, &order_id).await;
    let unknown = system
        .cancel(&owner.token, "00000000-0000-0000-0000-000000000000")
        .await;
    let first = system.cancel(&owner.token, &order_id).await;
    let second = system.cancel(&owner.token, &order_id).await;

    assert_eq!(
        by_stranger.status(),
        StatusCode::NOT_FOUND,
        "another customer's order looks unknown"
    );
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        second.status(),
        StatusCode::OK,
        "cancelling twice returns the first outcome"
    );
    let first: Value = first.json().await.unwrap();
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["status"], "cancelled");
    assert_eq!(second["status"], "cancelled");
    assert_eq!(first["timeline"], second["timeline"]);
    audit_clean(&system).await;
    assert_eq!(
        count_rows(
            system.dir.path(),
            "payments",
            "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'void'"
        )
        .await,
        1
    );
    assert_eq!(
        count_rows(
            system.dir.path(),
            "kitchen",
            "SELECT COUNT(*) FROM tickets WHERE status = 'cancelled'"
        )
        .await,
        1
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivered_order_cannot_be_cancelled() {
    let system = TestSystem::start().await;
    let customer = system.customer("too-late").await;
    let (restaurant, items) = system.restaurant_with_menu(0).await;
    let placed = system
        .place(
            &customer.token,
            Some("delivered"),
            &order_body(&restaurant, &[&items[0]]),
        )
        .await;
    let order_id = placed.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    system
        .await_status(&customer.token, &order_id, &["delivered"])
        .await;

    let response = system.cancel(&customer.token, &order_id).await;

    assert_eq!(response.status(), StatusCode::CONFLICT);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("already been delivered"),
        "{problem}"
    );
    audit_clean(&system).await;
    assert_eq!(
        count_rows(
            system.dir.path(),
            "payments",
            "SELECT COUNT(*) FROM payments WHERE status = 'CAPTURED'"
        )
        .await,
        1
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_racing_ready_ends_consistent() {
    // Preparation of a 25-minute order is 10 minutes; at 2,000 times real time that
    // is 300 ms, and the cancellations below land from 200 to 400 ms after placing.
    let system = TestSystem::start_with(|settings| settings.time_scale = 2000.0).await;
    let customer = system.customer("racer").await;
    let mut orders = Vec::new();
    for n in 0..16 {
        let (restaurant, items) = system.restaurant_with_menu(n % 8).await;
        let mut body = order_body(&restaurant, &[&items[0]]);
        body["replay_delivery_minutes"] = json!(25);
        let placed = system
            .place(&customer.token, Some(&format!("race-{n}")), &body)
            .await;
        assert_eq!(placed.status(), StatusCode::CREATED);
        orders.push(
            placed.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }

    let mut cancels = Vec::new();
    for (n, order_id) in orders.iter().enumerate() {
        let delay = Duration::from_millis(200 + 200 * n as u64 / 16);
        let client = system.http.clone();
        let url = system.url(&format!("/v1/orders/{order_id}/cancel"));
        let token = customer.token.clone();
        cancels.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            client
                .post(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut outcomes = Vec::new();
    for cancel in cancels {
        outcomes.push(cancel.await.unwrap());
    }
    for order_id in &orders {
        system
            .await_status(&customer.token, order_id, &["delivered", "cancelled"])
            .await;
    }

    for (order_id, outcome) in orders.iter().zip(&outcomes) {
        let status = system
            .await_status(&customer.token, order_id, &["delivered", "cancelled"])
            .await;
        match *outcome {
            StatusCode::OK => assert_eq!(status, "cancelled", "order {order_id}"),
            StatusCode::CONFLICT => assert_eq!(status, "delivered", "order {order_id}"),
            other => panic!("cancel of {order_id} answered {other}"),
        }
    }
    audit_clean(&system).await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_between_void_and_record_voids_once() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let up = UpProcess::start(
        dir.path(),
        &["--time-scale", "3600", "--fault-exit-after-payment-step"],
    )
    .await;
    let (mut child, gateway) = (up.child, up.gateway);
    let credentials =
        json!({ "email": "crash@test.tiffin.dev", "password": "correct horse battery" });
    http.post(format!("{gateway}/v1/auth/register"))
        .json(&credentials)
        .send()
        .await
        .unwrap();
    let login: Value = http
        .post(format!("{gateway}/v1/auth/login"))
        .json(&credentials)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();
    let page: Value = http
        .get(format!("{gateway}/v1/restaurants?limit=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let restaurant = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["opening_hours"].is_null())
        .and_then(|r| r["id"].as_str())
        .unwrap();
    let menu: Value = http
        .get(format!("{gateway}/v1/restaurants/{restaurant}/menu"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut body = order_body(restaurant, &[menu["items"][0]["id"].as_str().unwrap()]);
    body["replay_delivery_minutes"] = json!(600);
    let placed: Value = http
        .post(format!("{gateway}/v1/orders"))
        .bearer_auth(&token)
        .header("Idempotency-Key", "crash-void")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let order_id = placed["id"].as_str().unwrap().to_owned();

    // The fault ends the process right after the void is sent, sometimes before
    // the cancel's response is written. The pending step below shows that the
    // cancellation committed either way.
    let cancelled = http
        .post(format!("{gateway}/v1/orders/{order_id}/cancel"))
        .bearer_auth(&token)
        .send()
        .await;
    if let Ok(response) = &cancelled {
        assert_eq!(response.status(), StatusCode::OK);
    }
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the fault ends the process")
        .unwrap();
    assert_eq!(exit.code(), Some(86), "exited at the fault");
    let pending = count_rows(
        dir.path(),
        "orders",
        "SELECT COUNT(*) FROM payment_actions WHERE status = 'pending'",
    )
    .await;
    assert_eq!(pending, 1, "the void is sent but not recorded");

    let child = UpProcess::start(dir.path(), &["--time-scale", "3600"])
        .await
        .child;
    let mut audit = tiffin::audit::audit(dir.path(), 30_000)
        .await
        .expect("audit runs");
    for _ in 0..100 {
        let pending = count_rows(
            dir.path(),
            "orders",
            "SELECT COUNT(*) FROM payment_actions WHERE status = 'pending'",
        )
        .await;
        if pending == 0 && audit.is_clean() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        audit = tiffin::audit::audit(dir.path(), 30_000)
            .await
            .expect("audit runs");
    }
    drop(child);

    assert!(audit.is_clean(), "audit:\n{audit}");
    assert_eq!(
        count_rows(
            dir.path(),
            "payments",
            "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'void'"
        )
        .await,
        1
    );
    assert_eq!(
        count_rows(
            dir.path(),
            "payments",
            "SELECT COUNT(*) FROM payments WHERE status = 'VOIDED'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_reports_tampered_payments() {
    let system = TestSystem::start_with(|settings| settings.time_scale = 60.0).await;
    let customer = system.customer("audited").await;
    let (restaurant, items) = system.restaurant_with_menu(0).await;
    let placed = system
        .place(
            &customer.token,
            Some("audited"),
            &order_body(&restaurant, &[&items[0]]),
        )
        .await;
    let order_id = placed.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        system.cancel(&customer.token, &order_id).await.status(),
        StatusCode::OK
    );
    audit_clean(&system).await;
    let dir = system.stop().await;

    // Capture the cancelled order's voided payment behind the saga's back.
    let url = format!("sqlite://{}/payments.db", dir.path().display());
    let payments = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE payments SET status = 'CAPTURED', captured_cents = amount_cents WHERE reference = $1")
        .bind(&order_id)
        .execute(&payments)
        .await
        .unwrap();
    payments.close().await;
    let audit = tiffin::audit::audit(dir.path(), 30_000)
        .await
        .expect("audit runs");
    let output = Command::new(env!("CARGO_BIN_EXE_tiffin"))
        .args(["audit", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .expect("tiffin audit runs");

    assert!(!audit.is_clean());
    assert!(
        audit
            .violations
            .iter()
            .any(|v| v.order_id == order_id && v.rule == "ended_order_captured"),
        "audit:\n{audit}"
    );
    assert!(
        !output.status.success(),
        "tiffin audit exits non-zero on a violation"
    );
    let printed: Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    assert_eq!(printed["violations"][0]["order_id"], order_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_authorization_without_retry_is_voided() {
    let system = TestSystem::start_with(|settings| {
        settings.processor.latency = Duration::from_millis(700);
        settings.release_unclaimed_after = Duration::from_millis(500);
    })
    .await;
    let customer = system.customer("gave-up").await;
    let (restaurant, items) = system.restaurant_with_menu(3).await;
    let body = order_body(&restaurant, &[&items[0]]);

    let timed_out = system
        .place(&customer.token, Some("slow-card"), &body)
        .await;
    assert_eq!(timed_out.status(), StatusCode::SERVICE_UNAVAILABLE);
    let mut voided = 0;
    for _ in 0..100 {
        voided = count_rows(
            system.dir.path(),
            "payments",
            "SELECT COUNT(*) FROM payments WHERE status = 'VOIDED'",
        )
        .await;
        if voided > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audit = tiffin::audit::audit(system.dir.path(), 30_000)
        .await
        .expect("audit runs");
    let retry = system
        .place(&customer.token, Some("slow-card"), &body)
        .await;

    assert!(audit.is_clean(), "audit:\n{audit}");
    assert_eq!(voided, 1, "the late authorization was voided");
    assert_eq!(retry.status(), StatusCode::CONFLICT, "the key is spent");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_waits_for_release_of_timed_out_authorization() {
    let system = TestSystem::start_with(|settings| {
        settings.processor.latency = Duration::from_millis(700);
        settings.release_unclaimed_after = Duration::from_secs(60);
    })
    .await;
    let customer = system.customer("impatient").await;
    let (restaurant, items) = system.restaurant_with_menu(3).await;
    let body = order_body(&restaurant, &[&items[0]]);

    let timed_out = system
        .place(&customer.token, Some("slow-auth"), &body)
        .await;
    assert_eq!(timed_out.status(), StatusCode::SERVICE_UNAVAILABLE);
    let mut authorized = 0;
    for _ in 0..100 {
        authorized = count_rows(
            system.dir.path(),
            "payments",
            "SELECT COUNT(*) FROM payments WHERE status = 'AUTHORIZED'",
        )
        .await;
        if authorized > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let within_limit = tiffin::audit::audit(system.dir.path(), 30_000)
        .await
        .expect("audit runs");
    let past_limit = tiffin::audit::audit(system.dir.path(), -1)
        .await
        .expect("audit runs");

    assert_eq!(authorized, 1, "the late authorization completed");
    assert!(within_limit.is_clean(), "audit:\n{within_limit}");
    assert!(
        past_limit
            .violations
            .iter()
            .any(|v| v.rule == "authorization_without_order"),
        "audit past the limit:\n{past_limit}"
    );
    system.stop().await;
}
