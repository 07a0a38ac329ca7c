//! Starting a system for a test, and one helper per endpoint the tests call.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Once;
use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tiffin::system::{System, SystemSettings};

pub(crate) struct TestSystem {
    pub(crate) system: System,
    pub(crate) http: reqwest::Client,
    pub(crate) dir: tempfile::TempDir,
}

/// A logged-in customer.
#[derive(Debug, Clone)]
pub(crate) struct Customer {
    pub(crate) id: String,
    pub(crate) token: String,
}

fn init_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tiffin_runtime::telemetry::init(
                tiffin_runtime::telemetry::LogFormat::Pretty,
                "info,sqlx=warn",
                std::io::stderr,
            );
        }
    });
}

pub(crate) fn settings(dir: &std::path::Path) -> SystemSettings {
    SystemSettings {
        data_dir: dir.to_path_buf(),
        database: None,
        gateway_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        port_base: 0,
        time_scale: 3600.0,
        processor: tiffin_payments::ProcessorSettings::default(),
        notify_channel: "log:".to_owned(),
        reject_rate: 0.0,
        kitchen_capacity: 25,
        couriers: 300,
        queue_bus: "embedded:".to_owned(),
        stream_bus: "embedded:".to_owned(),
        fault_exit_after_payment_step: false,
        pool: tiffin_runtime::db::PoolSettings::default(),
        release_unclaimed_after: std::time::Duration::from_secs(60),
        admission: tiffin_orders::admission::AdmissionSettings::default(),
        delivery: tiffin::system::Delivery::Runs,
    }
}

impl TestSystem {
    /// Starts a system with the default settings and waits until it is ready.
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a system after `adjust` changed its settings.
    pub(crate) async fn start_with(adjust: impl FnOnce(&mut SystemSettings)) -> Self {
        init_logs();
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut settings = settings(dir.path());
        adjust(&mut settings);
        let system = System::start(settings).await.expect("system starts");
        system
            .wait_ready(Duration::from_secs(120))
            .await
            .expect("system becomes ready");
        Self {
            system,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client builds"),
            dir,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.system.gateway_url)
    }

    pub(crate) async fn register(&self, email: &str, password: &str) -> Response {
        self.http
            .post(self.url("/v1/auth/register"))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .expect("register request")
    }

    pub(crate) async fn login(&self, email: &str, password: &str) -> Response {
        self.http
            .post(self.url("/v1/auth/login"))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .expect("login request")
    }

    /// Registers and logs in a new customer.
    pub(crate) async fn customer(&self, name: &str) -> Customer {
        let email = format!("{name}@test.tiffin.dev");
        let registered = self.register(&email, "correct horse battery").await;
        assert_eq!(registered.status(), StatusCode::CREATED, "register {email}");
        let id = registered.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let login = self.login(&email, "correct horse battery").await;
        assert_eq!(login.status(), StatusCode::OK, "login {email}");
        let token = login.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        Customer { id, token }
    }

    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("GET request")
    }

    /// The `skip`-th restaurant without mapped opening hours (so open at noon by
    /// the default hours) with its menu item ids.
    pub(crate) async fn restaurant_with_menu(&self, skip: usize) -> (String, Vec<String>) {
        let page: Value = self
            .get("/v1/restaurants?limit=100", None)
            .await
            .json()
            .await
            .unwrap();
        let id = page["items"]
            .as_array()
            .expect("restaurants")
            .iter()
            .filter(|restaurant| restaurant["opening_hours"].is_null())
            .nth(skip)
            .and_then(|restaurant| restaurant["id"].as_str())
            .expect("a restaurant without mapped hours")
            .to_owned();
        let menu: Value = self
            .get(&format!("/v1/restaurants/{id}/menu"), None)
            .await
            .json()
            .await
            .unwrap();
        let items = menu["items"]
            .as_array()
            .expect("menu items")
            .iter()
            .map(|item| item["id"].as_str().unwrap().to_owned())
            .collect();
        (id, items)
    }

    pub(crate) async fn place(&self, token: &str, key: Option<&str>, body: &Value) -> Response {
        let mut request = self
            .http
            .post(self.url("/v1/orders"))
            .bearer_auth(token)
            .json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("POST /v1/orders")
    }

    /// Polls an order until its status is one of `statuses` and returns it,
    /// panicking after 30 s.
    pub(crate) async fn await_status(
        &self,
        token: &str,
        order_id: &str,
        statuses: &[&str],
    ) -> String {
        for _ in 0..300 {
            let status: Value = self
                .get(&format!("/v1/orders/{order_id}/status"), Some(token))
                .await
                .json()
                .await
                .unwrap();
            if let Some(status) = status["status"].as_str().filter(|s| statuses.contains(s)) {
                return status.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("order {order_id} did not reach any of {statuses:?}");
    }

    pub(crate) async fn cancel(&self, token: &str, order_id: &str) -> Response {
        self.http
            .post(self.url(&format!("/v1/orders/{order_id}/cancel")))
            .bearer_auth(token)
            .send()
            .await
            .expect("cancel request")
    }

    pub(crate) async fn stop(self) -> tempfile::TempDir {
        self.system.stop().await;
        self.dir
    }
}

/// An order body for `restaurant` with one of each of `items`, placed (for opening
/// hours) on a Wednesday at noon, so tests do not depend on the clock.
pub(crate) fn order_body(restaurant: &str, items: &[&str]) -> Value {
    json!({
        "restaurant_id": restaurant,
        "items": items.iter().map(|id| json!({ "menu_item_id": id, "quantity": 1 })).collect::<Vec<_>>(),
        "delivery_address": { "line1": "Mannerheimintie 1", "city": "Helsinki", "lat": 60.17, "lon": 24.94 },
        "replay_local_time": "2020-08-05T12:00:00",
    })
}

/// Counts rows in a service's database: a SQLite file in a data directory, or a
/// PostgreSQL database.
pub(crate) async fn count_rows(
    databases: impl Into<tiffin::system::Databases>,
    service: &str,
    sql: &'static str,
) -> i64 {
    sqlx::any::install_default_drivers();
    let url = databases.into().read_url(service);
    let pool = sqlx::AnyPool::connect(&url).await.expect("database opens");
    let count: i64 = sqlx::query_scalar(sql)
        .fetch_one(&pool)
        .await
        .expect("count query");
    pool.close().await;
    count
}

/// A `tiffin up` child process, killed when dropped.
pub(crate) struct UpProcess {
    pub(crate) child: tokio::process::Child,
    pub(crate) gateway: String,
    pub(crate) notifications: String,
}

impl UpProcess {
    /// Starts `tiffin up` on free ports over `dir` with `extra` arguments, and waits
    /// for the line that reports it ready.
    pub(crate) async fn start(dir: &std::path::Path, extra: &[&str]) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};

        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tiffin"))
            .args([
                "up",
                "--gateway-addr",
                "127.0.0.1:0",
                "--port-base",
                "0",
                "--data-dir",
            ])
            .arg(dir)
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("tiffin up starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut gateway, mut notifications) = (String::new(), String::new());
        let reading = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["gateway", url] => gateway = (*url).to_owned(),
                    ["notifications", url] => notifications = (*url).to_owned(),
                    _ if line.starts_with("Clients use the gateway") => return,
                    _ => {}
                }
            }
            panic!("tiffin up exited before it was ready");
        };
        tokio::time::timeout(Duration::from_secs(120), reading)
            .await
            .expect("tiffin up becomes ready");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            gateway,
            notifications,
        }
    }
}
