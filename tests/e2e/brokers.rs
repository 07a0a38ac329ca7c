//! The whole system on real brokers: RabbitMQ, NATS JetStream, and queues on one
//! with the stream on the other. Each test gets its own RabbitMQ virtual host and its
//! own JetStream stream, and removes them at the end.

use std::time::Duration;

use clap::Parser;
use tiffin::load::{self, LoadSettings};
use tiffin::system::Delivery;

use crate::helpers::TestSystem;

/// Held shared by every test here that uses RabbitMQ, and exclusively by the test
/// that restarts it, so the restart never cuts into another test of this binary.
/// (Cargo runs test binaries one after another, so other binaries are not affected.)
pub(crate) static RABBITMQ: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Returns true when the engine at `addr` accepts connections; otherwise fails
/// under CI and prints why the test is skipped.
pub(crate) async fn engine_available(name: &str, addr: &str, start: &str) -> bool {
    if tokio::net::TcpStream::connect(addr).await.is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{name} is not reachable at {addr}; start it with: {start}"
    );
    eprintln!("skipped: {name} not reachable at {addr}; start it with: {start}");
    false
}

/// A RabbitMQ virtual host for one test, deleted on drop.
pub(crate) struct Vhost(String);

impl Vhost {
    pub(crate) fn create() -> Self {
        let name = format!("tiffin-e2e-{}", uuid::Uuid::now_v7().simple());
        for args in [
            vec!["add_vhost", name.as_str()],
            vec![
                "set_permissions",
                "-p",
                name.as_str(),
                "guest",
                ".*",
                ".*",
                ".*",
            ],
        ] {
            let status = std::process::Command::new("rabbitmqctl")
                .args(&args)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("rabbitmqctl runs");
            assert!(status.success(), "rabbitmqctl {args:?} failed");
        }
        Self(name)
    }

    pub(crate) fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.0)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.0])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

/// A JetStream stream and subject prefix for one test.
struct NatsStream {
    stream: String,
    prefix: String,
}

impl NatsStream {
    fn new() -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        Self {
            stream: format!("TIFFIN_E2E_{}", &id[id.len() - 12..]),
            prefix: format!("e2e{}.events", &id[id.len() - 12..]),
        }
    }

    fn url(&self) -> String {
        format!(
            "nats://127.0.0.1:4222?stream={}&prefix={}",
            self.stream, self.prefix
        )
    }

    async fn delete(&self) {
        let options = tiffin_bus_nats::NatsOptions {
            stream: self.stream.clone(),
            subject_prefix: self.prefix.clone(),
            ..Default::default()
        };
        if let Ok(bus) = tiffin_bus_nats::connect("nats://127.0.0.1:4222", options).await {
            let _ = bus.delete_streams().await;
        }
    }
}

/// Replays orders with every path mixed in and checks that all end final, nothing
/// failed, and the audit is clean.
pub(crate) async fn replay_and_audit(system: &TestSystem) {
    let summary = load::run(LoadSettings {
        target: system.system.gateway_url.clone(),
        limit: 30,
        skip: 300,
        speed: 3600.0,
        concurrency: 16,
        customers: 4,
        order_timeout: Duration::from_secs(60),
        cancel_rate: 0.1,
        run_id: format!("brokers-{}", uuid::Uuid::now_v7()),
        progress: false,
    })
    .await
    .expect("replay runs");
    assert_eq!(summary.lost, 0, "load summary: {summary}");
    assert_eq!(summary.failed_total(), 0, "load summary: {summary}");

    // Broker queues are not counted by wait_quiet, so poll the audit until the last
    // notifications and payment steps have landed.
    system
        .system
        .wait_quiet(Duration::from_secs(60))
        .await
        .expect("system settles");
    let mut audit = tiffin::audit::audit(system.dir.path(), 30_000)
        .await
        .expect("audit runs");
    let mut counts = tiffin::report::count(system.dir.path())
        .await
        .expect("counts");
    for _ in 0..150 {
        if audit.is_clean() && counts.analytics_orders == counts.placed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        audit = tiffin::audit::audit(system.dir.path(), 30_000)
            .await
            .expect("audit runs");
        counts = tiffin::report::count(system.dir.path())
            .await
            .expect("counts");
    }
    assert!(audit.is_clean(), "audit:\n{audit}");
    assert_eq!(
        counts.analytics_orders, counts.placed,
        "analytics read every order from the stream"
    );
    assert_eq!(counts.analytics_revenue_cents, counts.orders_revenue_cents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_demo_on_rabbitmq() {
    let _shared = RABBITMQ.read().await;
    if !engine_available("RabbitMQ", "127.0.0.1:5672", "rabbitmq-server -detached").await {
        return;
    }
    let vhost = Vhost::create();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tiffin"))
        .args(["demo", "--distributed", "--orders", "30", "--skip", "500"])
        .args([
            "--reject-rate",
            "0.1",
            "--cancel-rate",
            "0.1",
            "--bus",
            &vhost.url(),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--report")
        .arg(&report)
        .output()
        .await
        .expect("tiffin demo runs");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["lost"], 0);
    assert_eq!(report["clean"], true);
    assert_eq!(
        report["audit"]["violations"].as_array().map(Vec::len),
        Some(0)
    );
    for service in tiffin::services::START_ORDER {
        let log = dir.path().join("data/logs").join(format!("{service}.log"));
        assert!(log.exists(), "{service} ran as its own process");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_system_on_rabbitmq() {
    let _shared = RABBITMQ.read().await;
    if !engine_available("RabbitMQ", "127.0.0.1:5672", "rabbitmq-server -detached").await {
        return;
    }
    let vhost = Vhost::create();
    let url = vhost.url();
    let system = TestSystem::start_with(|settings| {
        settings.queue_bus = url.clone();
        settings.stream_bus = url.clone();
        settings.reject_rate = 0.1;
    })
    .await;

    replay_and_audit(&system).await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_system_on_nats() {
    if !engine_available(
        "NATS",
        "127.0.0.1:4222",
        "nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server",
    )
    .await
    {
        return;
    }
    let stream = NatsStream::new();
    let url = stream.url();
    let system = TestSystem::start_with(|settings| {
        settings.queue_bus = url.clone();
        settings.stream_bus = url.clone();
        settings.reject_rate = 0.1;
    })
    .await;

    replay_and_audit(&system).await;
    system.stop().await;
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queues_on_rabbitmq_stream_on_nats() {
    let _shared = RABBITMQ.read().await;
    let rabbitmq =
        engine_available("RabbitMQ", "127.0.0.1:5672", "rabbitmq-server -detached").await;
    let nats = engine_available(
        "NATS",
        "127.0.0.1:4222",
        "nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server",
    )
    .await;
    if !(rabbitmq && nats) {
        return;
    }
    let vhost = Vhost::create();
    let stream = NatsStream::new();
    let (queue_url, stream_url) = (vhost.url(), stream.url());
    let system = TestSystem::start_with(|settings| {
        settings.queue_bus = queue_url.clone();
        settings.stream_bus = stream_url.clone();
    })
    .await;

    replay_and_audit(&system).await;
    system.stop().await;
    stream.delete().await;
}

/// A running distributed system on RabbitMQ with one logged-in customer.
pub(crate) struct Distributed {
    pub(crate) cluster: tiffin::serve::Cluster,
    gateway: String,
    http: reqwest::Client,
    token: String,
}

impl Distributed {
    /// Starts every service as its own process on `bus_url` at 600 times real time,
    /// with `extra` demo arguments, and registers and logs in a customer.
    pub(crate) async fn start(
        dir: &std::path::Path,
        bus_url: &str,
        extra: &[&str],
        email: &str,
    ) -> Self {
        Self::start_with(dir, bus_url, extra, email, Delivery::Runs).await
    }

    /// Like [`Distributed::start`], with or without the delivery service.
    pub(crate) async fn start_with(
        dir: &std::path::Path,
        bus_url: &str,
        extra: &[&str],
        email: &str,
        delivery: Delivery,
    ) -> Self {
        let mut arguments = vec!["tiffin", "demo", "--distributed", "--bus", bus_url];
        arguments.extend(["--speed", "600"]);
        arguments.extend(extra);
        let cli = tiffin::cli::Cli::try_parse_from(arguments).expect("demo arguments parse");
        let tiffin::cli::Command::Demo(args) = cli.command else {
            unreachable!("parsed as demo");
        };
        let exe = std::path::Path::new(env!("CARGO_BIN_EXE_tiffin"));
        let mut cluster = tiffin::serve::Cluster::start_with(exe, &args, dir, delivery)
            .await
            .expect("processes start");
        cluster
            .wait_ready(Duration::from_secs(180))
            .await
            .expect("cluster becomes ready");
        let gateway = cluster.gateway_url();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let credentials =
            serde_json::json!({ "email": email, "password": "correct horse battery" });
        http.post(format!("{gateway}/v1/auth/register"))
            .json(&credentials)
            .send()
            .await
            .unwrap();
        let login: serde_json::Value = http
            .post(format!("{gateway}/v1/auth/login"))
            .json(&credentials)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["access_token"].as_str().unwrap().to_owned();
        Self {
            cluster,
            gateway,
            http,
            token,
        }
    }

    pub(crate) async fn place(&self, count: usize, tag: &str) -> Vec<String> {
        place_slow_orders(&self.http, &self.gateway, &self.token, count, tag).await
    }

    /// Polls an order's status for up to 90 s until it is `expected`, and returns
    /// the last status read.
    pub(crate) async fn await_status(&self, order_id: &str, expected: &str) -> String {
        let mut status = String::new();
        for _ in 0..900 {
            let body: serde_json::Value = self
                .http
                .get(format!("{}/v1/orders/{order_id}/status", self.gateway))
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or_default();
            status = body["status"].as_str().unwrap_or_default().to_owned();
            if status == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        status
    }

    /// Waits up to 90 s per order for delivery, then for a clean audit, and stops the
    /// processes.
    pub(crate) async fn finish(self, orders: &[String], what: &str) {
        for order_id in orders {
            let status = self.await_status(order_id, "delivered").await;
            assert_eq!(status, "delivered", "order {order_id} survived {what}");
        }
        let mut audit = tiffin::audit::audit(self.cluster.databases(), 30_000)
            .await
            .expect("audit runs");
        for _ in 0..100 {
            if audit.is_clean() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            audit = tiffin::audit::audit(self.cluster.databases(), 30_000)
                .await
                .expect("audit runs");
        }
        self.cluster.stop().await;
        assert!(audit.is_clean(), "audit after {what}:\n{audit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_without_delivery_ends_at_ready() {
    let _shared = RABBITMQ.read().await;
    if !engine_available("RabbitMQ", "127.0.0.1:5672", "rabbitmq-server -detached").await {
        return;
    }
    let vhost = Vhost::create();
    let dir = tempfile::tempdir().unwrap();
    let system = Distributed::start_with(
        dir.path(),
        &vhost.url(),
        &[],
        "takeaway@test.tiffin.dev",
        Delivery::LeftOut,
    )
    .await;

    assert!(
        system
            .cluster
            .processes()
            .iter()
            .all(|(service, _)| *service != "delivery")
    );
    let orders = system.place(3, "takeaway").await;

    for order_id in &orders {
        let status = system.await_status(order_id, "ready").await;
        assert_eq!(status, "ready", "order {order_id}");
    }

    let delivery = system
        .http
        .get(format!(
            "{}/v1/delivery/orders/{}",
            system.gateway, orders[0]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(delivery.status(), reqwest::StatusCode::NOT_FOUND);

    let databases = system.cluster.databases().clone();
    tiffin::system::wait_quiet(&databases, None, Delivery::LeftOut, Duration::from_secs(60))
        .await
        .expect("system settles");
    let counts = tiffin::report::count_for(&databases, Delivery::LeftOut)
        .await
        .expect("counts");
    system.cluster.stop().await;

    assert_eq!(counts.placed, 3);
    assert_eq!(counts.lost, 0);
    assert_eq!(counts.missing_tickets, 0);
    assert_eq!(counts.orders_with_wrong_notifications, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_kitchen_killed_mid_flight() {
    let _shared = RABBITMQ.read().await;
    if !engine_available("RabbitMQ", "127.0.0.1:5672", "rabbitmq-server -detached").await {
        return;
    }
    let vhost = Vhost::create();
    let dir = tempfile::tempdir().unwrap();
    let mut system =
        Distributed::start(dir.path(), &vhost.url(), &[], "fault@test.tiffin.dev").await;
    let orders = system.place(15, "fault").await;

    system
        .cluster
        .kill("kitchen")
        .await
        .expect("kitchen killed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    system.cluster.restart("kitchen").expect("kitchen restarts");
    system.finish(&orders, "the kitchen's crash").await;

    let tickets =
        crate::helpers::count_rows(dir.path(), "kitchen", "SELECT COUNT(*) FROM tickets").await;
    let orders_with_tickets = crate::helpers::count_rows(
        dir.path(),
        "kitchen",
        "SELECT COUNT(DISTINCT order_id) FROM tickets",
    )
    .await;
    assert_eq!(
        tickets, 15,
        "one ticket per order, none doubled by redelivery"
    );
    assert_eq!(orders_with_tickets, 15);
}

/// Places `count` orders through `gateway` with about one second of preparation at
/// 600 times real time, and returns their ids.
async fn place_slow_orders(
    http: &reqwest::Client,
    gateway: &str,
    token: &str,
    count: usize,
    tag: &str,
) -> Vec<String> {
    let page: serde_json::Value = http
        .get(format!("{gateway}/v1/restaurants?limit=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let restaurants: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["opening_hours"].is_null())
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .take(5)
        .collect();
    let mut orders = Vec::new();
    for n in 0..count {
        let restaurant = &restaurants[n % restaurants.len()];
        let menu: serde_json::Value = http
            .get(format!("{gateway}/v1/restaurants/{restaurant}/menu"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut body =
            crate::helpers::order_body(restaurant, &[menu["items"][0]["id"].as_str().unwrap()]);
        body["replay_delivery_minutes"] = serde_json::json!(25);
        let placed = http
            .post(format!("{gateway}/v1/orders"))
            .bearer_auth(token)
            .header("Idempotency-Key", format!("{tag}-{n}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(placed.status(), reqwest::StatusCode::CREATED);
        orders.push(
            placed.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    orders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_survives_broker_restart() {
    let _exclusive = RABBITMQ.write().await;
    if !engine_available("RabbitMQ", "127.0.0.1:5672", "rabbitmq-server -detached").await {
        return;
    }
    let vhost = Vhost::create();
    let dir = tempfile::tempdir().unwrap();
    let system = Distributed::start(dir.path(), &vhost.url(), &[], "restart@test.tiffin.dev").await;
    let mut orders = system.place(10, "before").await;

    let rabbitmqctl = |command: &str| {
        let status = std::process::Command::new("rabbitmqctl")
            .arg(command)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("rabbitmqctl runs");
        assert!(status.success(), "rabbitmqctl {command} failed");
    };
    rabbitmqctl("stop_app");
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbitmqctl("start_app");
    orders.extend(system.place(10, "after").await);

    system.finish(&orders, "the broker restart").await;
}
