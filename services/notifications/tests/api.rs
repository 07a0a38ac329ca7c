//! The notifications service against a real embedded bus, SQLite files in a
//! temporary directory and a fake SMTP server on 127.0.0.1. One test runs the main path
//! on a fresh PostgreSQL database.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tiffin_bus::api::Bus;
use tiffin_bus::embedded::EmbeddedBus;
use tiffin_bus::{Envelope, Handler, Publisher};
use tiffin_events::order::{OrderLine, OrderPlaced, OrderStatusChanged};
use tiffin_notifications::{SendPolicy, Service, Settings, Stats};
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;
use tiffin_runtime::testing::TestDatabase;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long a test waits for a notification to reach a state before it fails.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

struct Fixture {
    dir: TempDir,
    bus: Arc<EmbeddedBus>,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bus = EmbeddedBus::open(&dir.path().join("bus.db"))
            .await
            .expect("embedded bus opens");
        Self {
            dir,
            bus: Arc::new(bus),
        }
    }

    fn settings(&self, channel: &str) -> Settings {
        let mut settings = Settings::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Database::sqlite_url(self.dir.path(), "notifications"),
        );
        settings.channel = channel.to_owned();
        settings
    }

    async fn start(&self, settings: Settings) -> Notifications {
        let bus: Arc<dyn Bus> = self.bus.clone();
        let service = Service::build(settings, bus).await.expect("service builds");
        let base_url = format!("http://{}", service.http_addr());
        let handler = service.handler();
        let stats = service.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(service.run(shutdown.clone()));
        Notifications {
            client: tiffin_runtime::http::client(Duration::from_secs(10)).expect("HTTP client"),
            base_url,
            handler,
            stats,
            shutdown,
            task,
        }
    }

    async fn publish(&self, envelope: &Envelope) {
        self.bus
            .publish(std::slice::from_ref(envelope))
            .await
            .expect("publish succeeds");
    }
}

struct Notifications {
    client: reqwest::Client,
    base_url: String,
    handler: Arc<dyn Handler>,
    stats: Stats,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Notifications {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("service task does not panic")
            .expect("service stops cleanly");
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .expect("request succeeds")
    }

    async fn list(&self, order_id: &str) -> Vec<Value> {
        let response = self
            .get(&format!("/v1/notifications?order_id={order_id}"))
            .await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("JSON body");
        body["notifications"].as_array().expect("a list").clone()
    }

    /// Polls the order's notifications until `done` holds for them.
    async fn wait_for(&self, order_id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT_TIMEOUT;
        loop {
            let notifications = self.list(order_id).await;
            if done(&notifications) {
                return notifications;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "notifications of {order_id} did not get there within {WAIT_TIMEOUT:?}: {notifications:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn all_sent(count: usize) -> impl Fn(&[Value]) -> bool {
    move |notifications| {
        notifications.len() == count
            && notifications
                .iter()
                .all(|notification| notification["status"] == "sent")
    }
}

fn status_changed(order_id: &str, status: &str, reason: Option<&str>) -> Envelope {
    let change = OrderStatusChanged {
        order_id: order_id.to_owned(),
        customer_id: "customer-1".to_owned(),
        restaurant_id: "restaurant-1".to_owned(),
        status: status.to_owned(),
        reason: reason.map(str::to_owned),
        total_cents: 2340,
        currency: "EUR".to_owned(),
        changed_at: 1_700_000_000_000,
    };
    Envelope::new("/tiffin/orders", &change, None)
}

fn placed(order_id: &str) -> Envelope {
    status_changed(order_id, "placed", None)
}

/// Builds an `order.placed` event, which the service no longer consumes.
fn order_placed(order_id: &str) -> Envelope {
    let order = OrderPlaced {
        order_id: order_id.to_owned(),
        customer_id: "customer-1".to_owned(),
        restaurant_id: "restaurant-1".to_owned(),
        lines: vec![OrderLine {
            menu_item_id: "item-1".to_owned(),
            name: "Salmon soup".to_owned(),
            quantity: 2,
            unit_price_cents: 1170,
        }],
        total_cents: 2340,
        currency: "EUR".to_owned(),
        payment_id: "payment-1".to_owned(),
        placed_at: 1_700_000_000_000,
        replay_delivery_minutes: None,
        replay_local_time: None,
    };
    Envelope::new("/tiffin/orders", &order, None)
}

fn order_statuses(notifications: &[Value]) -> Vec<&str> {
    notifications
        .iter()
        .map(|notification| notification["order_status"].as_str().expect("order_status"))
        .collect()
}

fn smtp_channel(addr: SocketAddr) -> String {
    format!("smtp://{addr}?from=orders@tiffin.test&to_domain=customers.test")
}

// === fake SMTP server ===

/// A mail as the fake server received it.
#[derive(Debug, Clone)]
struct ReceivedMail {
    recipients: Vec<String>,
    data: String,
}

impl ReceivedMail {
    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}: ");
        self.data
            .split("\r\n")
            .take_while(|line| !line.is_empty())
            .find_map(|line| line.strip_prefix(prefix.as_str()))
    }
}

/// Speaks the server side of SMTP just far enough for one client: greeting, EHLO or
/// HELO, MAIL, RCPT, DATA up to the line with a single dot, and QUIT.
struct FakeSmtp {
    mails: Arc<Mutex<Vec<ReceivedMail>>>,
    task: JoinHandle<()>,
}

impl FakeSmtp {
    fn start(listener: TcpListener) -> Self {
        let mails = Arc::new(Mutex::new(Vec::new()));
        let received = mails.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_smtp(stream, received.clone()));
            }
        });
        Self { mails, task }
    }

    fn mails(&self) -> Vec<ReceivedMail> {
        self.mails.lock().expect("mail list lock").clone()
    }
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_smtp(stream: TcpStream, mails: Arc<Mutex<Vec<ReceivedMail>>>) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut recipients = Vec::new();
    let _ = writer.write_all(b"220 fake.test ESMTP\r\n").await;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if command.starts_with("EHLO") || command.starts_with("HELO") {
            b"250 fake.test\r\n"
        } else if command.starts_with("MAIL FROM:") || command == "RSET" || command == "NOOP" {
            b"250 OK\r\n"
        } else if command.starts_with("RCPT TO:") {
            let address = line.trim_end()["RCPT TO:".len()..].trim();
            recipients.push(address.trim_matches(['<', '>']).to_owned());
            b"250 OK\r\n"
        } else if command == "DATA" {
            let _ = writer.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await;
            let mut data = String::new();
            loop {
                let mut data_line = String::new();
                match reader.read_line(&mut data_line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) if data_line == ".\r\n" => break,
                    Ok(_) => data.push_str(&data_line),
                }
            }
            mails.lock().expect("mail list lock").push(ReceivedMail {
                recipients: std::mem::take(&mut recipients),
                data,
            });
            b"250 OK queued\r\n"
        } else if command == "QUIT" {
            let _ = writer.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"502 command not implemented\r\n"
        };
        if writer.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// Returns a local address on which nothing listens.
async fn closed_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local address")
}

// === tests ===

#[tokio::test]
async fn every_status_is_notified() {
    let fixture = Fixture::new().await;
    let service = fixture.start(fixture.settings("log:")).await;
    let histories = [
        (
            "order-1",
            vec!["placed", "accepted", "ready", "picked_up", "delivered"],
        ),
        ("order-2", vec!["placed", "rejected"]),
        ("order-3", vec!["placed", "accepted", "cancelled"]),
        ("order-4", vec!["payment_declined"]),
    ];

    for (order_id, statuses) in &histories {
        for status in statuses {
            fixture
                .publish(&status_changed(order_id, status, None))
                .await;
        }
    }

    for (order_id, statuses) in &histories {
        let notifications = service.wait_for(order_id, all_sent(statuses.len())).await;
        let mut notified = order_statuses(&notifications);
        notified.sort_unstable();
        let mut expected = statuses.clone();
        expected.sort_unstable();
        assert_eq!(notified, expected, "{order_id}");
        for notification in &notifications {
            assert_eq!(notification["customer_id"], "customer-1", "{notification}");
            assert_eq!(
                notification["event_type"], "order.status_changed",
                "{notification}"
            );
            assert_eq!(notification["channel"], "log", "{notification}");
            assert!(notification["sent_at"].is_i64(), "{notification}");
        }
    }
    service.stop().await;
}

#[tokio::test]
async fn placed_body_shows_total() {
    let fixture = Fixture::new().await;
    let service = fixture.start(fixture.settings("log:")).await;

    fixture.publish(&placed("order-1")).await;
    let notifications = service.wait_for("order-1", all_sent(1)).await;

    assert_eq!(
        notifications[0]["body"],
        "Your order order-1 from restaurant restaurant-1 is placed: 23.40 EUR."
    );
    service.stop().await;
}

#[tokio::test]
async fn rejected_body_names_reason() {
    let fixture = Fixture::new().await;
    let service = fixture.start(fixture.settings("log:")).await;

    fixture
        .publish(&status_changed("order-1", "rejected", Some("sold_out")))
        .await;
    let notifications = service.wait_for("order-1", all_sent(1)).await;

    assert_eq!(notifications[0]["subject"], "Order order-1 rejected");
    assert_eq!(
        notifications[0]["body"],
        "Your order order-1 was rejected: an item is sold out. Your payment was released."
    );
    service.stop().await;
}

#[tokio::test]
async fn payment_declined_body_names_reason() {
    let fixture = Fixture::new().await;
    let service = fixture.start(fixture.settings("log:")).await;

    fixture
        .publish(&status_changed(
            "order-1",
            "payment_declined",
            Some("insufficient_funds"),
        ))
        .await;
    let notifications = service.wait_for("order-1", all_sent(1)).await;

    assert_eq!(
        notifications[0]["body"],
        "Your payment of 23.40 EUR for order order-1 was declined: insufficient funds. \
         The order was not placed and nothing was charged."
    );
    service.stop().await;
}

#[tokio::test]
async fn same_envelope_twice_one_notification() {
    let fixture = Fixture::new().await;
    let service = fixture.start(fixture.settings("log:")).await;
    let placed = placed("order-1");

    service
        .handler
        .handle(&placed)
        .await
        .expect("first delivery succeeds");
    service
        .handler
        .handle(&placed)
        .await
        .expect("second delivery succeeds");

    let notifications = service.list("order-1").await;
    assert_eq!(notifications.len(), 1);
    let counts = service.stats.notification_counts().await.expect("counts");
    assert_eq!(counts.notifications, 1);
    assert_eq!(counts.events_with_several_notifications, 0);
    service.stop().await;
}

#[tokio::test]
async fn same_status_twice_one_notification() {
    let fixture = Fixture::new().await;
    let service = fixture.start(fixture.settings("log:")).await;
    let first = status_changed("order-1", "delivered", None);
    let second = status_changed("order-1", "delivered", None);

    service
        .handler
        .handle(&first)
        .await
        .expect("first event succeeds");
    service
        .handler
        .handle(&second)
        .await
        .expect("second event succeeds");

    assert_ne!(first.id, second.id);
    let notifications = service.list("order-1").await;
    assert_eq!(notifications.len(), 1);
    assert_eq!(notifications[0]["event_id"], first.id.as_str());
    let counts = service.stats.notification_counts().await.expect("counts");
    assert_eq!(counts.notifications, 1);
    assert_eq!(counts.orders_with_duplicate_status, 0);
    service.stop().await;
}

#[tokio::test]
async fn batch_with_repeats_notifies_once() {
    let fixture = Fixture::new().await;
    let service = fixture.start(fixture.settings("log:")).await;
    let first = status_changed("order-1", "delivered", None);
    let batch = [
        first.clone(),
        status_changed("order-1", "delivered", None),
        first.clone(),
        status_changed("order-2", "ready", None),
    ];

    service
        .handler
        .handle_batch(&batch)
        .await
        .expect("the batch succeeds");

    let order_1 = service.list("order-1").await;
    let order_2 = service.list("order-2").await;
    assert_eq!(order_1.len(), 1);
    assert_eq!(order_1[0]["event_id"], first.id.as_str());
    assert_eq!(order_2.len(), 1);
    let counts = service.stats.notification_counts().await.expect("counts");
    assert_eq!(counts.notifications, 2);
    assert_eq!(counts.orders_with_duplicate_status, 0);
    service.stop().await;
}

#[tokio::test]
async fn counts_group_by_status_change() {
    let fixture = Fixture::new().await;
    let service = fixture.start(fixture.settings("log:")).await;
    for status in ["placed", "accepted", "cancelled"] {
        fixture
            .publish(&status_changed("order-1", status, None))
            .await;
    }
    fixture.publish(&placed("order-2")).await;
    fixture.publish(&placed("order-2")).await;
    service.wait_for("order-1", all_sent(3)).await;
    service.wait_for("order-2", all_sent(1)).await;

    let counts = service.stats.notification_counts().await.expect("counts");

    assert_eq!(counts.notifications, 4);
    assert_eq!(counts.events_with_several_notifications, 0);
    assert_eq!(counts.orders_with_duplicate_status, 0);
    assert_eq!(counts.by_status_change.get("placed"), Some(&2));
    assert_eq!(counts.by_status_change.get("accepted"), Some(&1));
    assert_eq!(counts.by_status_change.get("cancelled"), Some(&1));
    assert_eq!(counts.by_status_change.len(), 3);
    assert_eq!(counts.by_event_type.get("order.status_changed"), Some(&4));
    assert_eq!(counts.by_status.get("sent"), Some(&4));
    service.stop().await;
}

#[tokio::test]
async fn unknown_status_is_permanent() {
    let fixture = Fixture::new().await;
    let service = fixture.start(fixture.settings("log:")).await;

    let error = service
        .handler
        .handle(&status_changed("order-1", "lost", None))
        .await
        .expect_err("the status is outside the contract");

    assert!(error.is_permanent());
    assert!(error.to_string().contains("\"lost\""), "{error}");
    assert!(service.list("order-1").await.is_empty());
    service.stop().await;
}

#[tokio::test]
async fn order_placed_is_permanent() {
    let fixture = Fixture::new().await;
    let service = fixture.start(fixture.settings("log:")).await;

    let error = service
        .handler
        .handle(&order_placed("order-1"))
        .await
        .expect_err("order.placed is not consumed");

    assert!(error.is_permanent());
    assert!(service.list("order-1").await.is_empty());
    service.stop().await;
}

#[tokio::test]
async fn smtp_server_gets_one_mail() {
    let fixture = Fixture::new().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let channel = smtp_channel(listener.local_addr().expect("local address"));
    let smtp = FakeSmtp::start(listener);
    let service = fixture.start(fixture.settings(&channel)).await;
    let placed = placed("order-1");

    fixture.publish(&placed).await;
    service.wait_for("order-1", all_sent(1)).await;

    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert_eq!(mails[0].recipients, ["customer-1@customers.test"]);
    assert_eq!(mails[0].header("Subject"), Some("Order order-1 placed"));
    let expected_id = format!("<{}@tiffin.test>", placed.id);
    assert_eq!(mails[0].header("Message-ID"), Some(expected_id.as_str()));
    service.stop().await;
}

#[tokio::test]
async fn stopped_smtp_server_delays_send() {
    let fixture = Fixture::new().await;
    let addr = closed_addr().await;
    let mut settings = fixture.settings(&smtp_channel(addr));
    settings.sender = SendPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(300),
        max_backoff: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
    };
    let service = fixture.start(settings).await;
    fixture.publish(&placed("order-1")).await;
    let failed_once = service
        .wait_for("order-1", |notifications| {
            notifications
                .first()
                .is_some_and(|notification| notification["attempts"].as_i64() >= Some(1))
        })
        .await;

    let smtp = FakeSmtp::start(TcpListener::bind(addr).await.expect("bind the same port"));
    let sent = service.wait_for("order-1", all_sent(1)).await;

    assert_eq!(failed_once[0]["status"], "pending");
    assert!(
        failed_once[0]["last_error"].is_string(),
        "{}",
        failed_once[0]
    );
    assert_eq!(smtp.mails().len(), 1);
    assert!(sent[0]["attempts"].as_i64() >= Some(2), "{}", sent[0]);
    service.stop().await;
}

#[tokio::test]
async fn send_gives_up_after_max_attempts() {
    let fixture = Fixture::new().await;
    let mut settings = fixture.settings(&smtp_channel(closed_addr().await));
    settings.sender = SendPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(20),
        timeout: Duration::from_secs(2),
    };
    let service = fixture.start(settings).await;

    fixture.publish(&placed("order-1")).await;
    let notifications = service
        .wait_for("order-1", |notifications| {
            notifications
                .first()
                .is_some_and(|notification| notification["status"] == "failed")
        })
        .await;

    assert_eq!(notifications[0]["attempts"], 5);
    let last_error = notifications[0]["last_error"].as_str().expect("last_error");
    assert!(
        last_error.contains("failed to send the mail"),
        "{last_error}"
    );
    service.stop().await;
}

#[tokio::test]
async fn list_without_order_id_is_rejected() {
    let fixture = Fixture::new().await;
    let service = fixture.start(fixture.settings("log:")).await;

    let response = service.get("/v1/notifications").await;

    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("JSON body");
    assert_eq!(problem["field"], "order_id");
    service.stop().await;
}

#[tokio::test]
async fn readyz_returns_ok() {
    let fixture = Fixture::new().await;
    let service = fixture.start(fixture.settings("log:")).await;

    let response = service.get("/readyz").await;

    assert_eq!(response.status(), 200);
    service.stop().await;
}

#[tokio::test]
async fn invalid_channel_fails_build() {
    let fixture = Fixture::new().await;
    let bus: Arc<dyn Bus> = fixture.bus.clone();

    let error = Service::build(
        fixture.settings("smtp://mail.test:25?from=orders@tiffin.test"),
        bus,
    )
    .await
    .expect_err("to_domain is missing");

    let message = error.to_string();
    assert!(message.contains("channel"), "{message}");
    assert!(message.contains("to_domain"), "{message}");
}

#[tokio::test]
async fn postgres_every_status_is_notified() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let fixture = Fixture::new().await;
    let mut settings = fixture.settings("log:");
    settings.database_url = db.url().to_owned();
    let service = fixture.start(settings).await;
    let statuses = ["placed", "accepted", "ready", "picked_up", "delivered"];

    for status in statuses {
        fixture
            .publish(&status_changed("order-1", status, None))
            .await;
    }
    let notifications = service.wait_for("order-1", all_sent(statuses.len())).await;

    let mut notified = order_statuses(&notifications);
    notified.sort_unstable();
    let mut expected = statuses.to_vec();
    expected.sort_unstable();
    assert_eq!(notified, expected);
    service.stop().await;
    db.close().await;
}
