//! The kitchen against a real embedded bus and SQLite files in a temporary directory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tiffin_bus::api::{Bus, StartPosition, StreamReceiver, StreamSpec};
use tiffin_bus::embedded::EmbeddedBus;
use tiffin_bus::{Envelope, Handler, Publisher, Subscriber};
use tiffin_events::order::{OrderAccepted, OrderLine, OrderPlaced, OrderReady};
use tiffin_kitchen::{Service, Settings, Stats};
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;
use tokio::task::JoinHandle;

/// How long a test waits for an event before it fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a test keeps reading after the expected events, to catch extra ones.
const SETTLE: Duration = Duration::from_millis(500);

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

    fn settings(&self, time_scale: f64) -> Settings {
        let mut settings = Settings::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Database::sqlite_url(self.dir.path(), "kitchen"),
        );
        settings.time_scale = time_scale;
        settings
    }

    async fn start(&self, settings: Settings) -> Kitchen {
        let bus: Arc<dyn Bus> = self.bus.clone();
        let service = Service::build(settings, bus).await.expect("kitchen builds");
        let base_url = format!("http://{}", service.http_addr());
        let handler = service.handler();
        let stats = service.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(service.run(shutdown.clone()));
        Kitchen {
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

    /// Opens a reader of the kitchen's events from the start of the log.
    async fn kitchen_events(&self) -> Box<dyn StreamReceiver> {
        self.bus
            .stream(&StreamSpec {
                group: format!("test-{}", uuid::Uuid::now_v7()),
                event_types: vec!["order.accepted".to_owned(), "order.ready".to_owned()],
                start: StartPosition::Beginning,
            })
            .await
            .expect("stream opens")
    }
}

struct Kitchen {
    client: reqwest::Client,
    base_url: String,
    handler: Arc<dyn Handler>,
    stats: Stats,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Kitchen {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("kitchen task does not panic")
            .expect("kitchen stops cleanly");
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .expect("request succeeds")
    }
}

fn order_placed(order_id: &str, replay_delivery_minutes: Option<u32>) -> Envelope {
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
        replay_delivery_minutes,
        replay_local_time: None,
    };
    Envelope::new("/tiffin/orders", &order, None)
}

/// Reads events until one of type `until` arrives, then for [`SETTLE`] longer, and
/// returns all of them in log order.
async fn read_events(stream: &mut Box<dyn StreamReceiver>, until: &str) -> Vec<Envelope> {
    let mut events: Vec<Envelope> = Vec::new();
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while !events.iter().any(|event| event.event_type == until) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {until} event within {EVENT_TIMEOUT:?}; got {:?}",
            types(&events)
        );
        let batch = stream
            .fetch(100, Duration::from_millis(100))
            .await
            .expect("fetch succeeds");
        events.extend(batch.into_iter().map(|message| message.envelope));
    }

    let settle_until = tokio::time::Instant::now() + SETTLE;
    while tokio::time::Instant::now() < settle_until {
        let batch = stream
            .fetch(100, Duration::from_millis(100))
            .await
            .expect("fetch succeeds");
        events.extend(batch.into_iter().map(|message| message.envelope));
    }
    events
}

fn types(events: &[Envelope]) -> Vec<&str> {
    events
        .iter()
        .map(|event| event.event_type.as_str())
        .collect()
}

#[tokio::test]
async fn placed_order_becomes_ready() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let kitchen = fixture.start(fixture.settings(60_000.0)).await;

    fixture.publish(&order_placed("order-1", Some(30))).await;
    let events = read_events(&mut stream, "order.ready").await;

    assert_eq!(types(&events), ["order.accepted", "order.ready"]);
    let accepted: OrderAccepted = events[0].decode().expect("order.accepted decodes");
    let ready: OrderReady = events[1].decode().expect("order.ready decodes");
    assert_eq!(
        accepted.ready_by - accepted.accepted_at,
        12,
        "12 minutes at 60,000 times"
    );
    assert_eq!(ready.ticket_id, accepted.ticket_id);
    assert!(
        ready.preparation_ms >= 12,
        "preparation took {} ms",
        ready.preparation_ms
    );
    assert!(
        ready.preparation_ms < 5_000,
        "preparation took {} ms",
        ready.preparation_ms
    );
    kitchen.stop().await;
}

#[tokio::test]
async fn events_continue_the_order_trace() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let kitchen = fixture.start(fixture.settings(60_000.0)).await;
    let trace = tiffin_runtime::trace::TraceContext::new_root();
    let mut placed = order_placed("order-1", Some(30));
    placed.traceparent = Some(trace.to_string());

    fixture.publish(&placed).await;
    let events = read_events(&mut stream, "order.ready").await;

    for event in &events {
        assert_eq!(
            event.trace_context().trace_id(),
            trace.trace_id(),
            "{}",
            event.event_type
        );
    }
    kitchen.stop().await;
}

#[tokio::test]
async fn ticket_endpoint_shows_ready_ticket() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let kitchen = fixture.start(fixture.settings(60_000.0)).await;
    fixture.publish(&order_placed("order-1", None)).await;
    read_events(&mut stream, "order.ready").await;

    let response = kitchen.get("/v1/kitchen/tickets/order-1").await;

    assert_eq!(response.status(), 200);
    let ticket: serde_json::Value = response.json().await.expect("JSON body");
    assert_eq!(ticket["order_id"], "order-1");
    assert_eq!(ticket["status"], "ready");
    assert_eq!(ticket["lines"][0]["quantity"], 2);
    assert!(
        ticket["ready_at"].is_i64(),
        "ready_at is {}",
        ticket["ready_at"]
    );
    kitchen.stop().await;
}

#[tokio::test]
async fn unknown_ticket_is_not_found() {
    let fixture = Fixture::new().await;
    let kitchen = fixture.start(fixture.settings(1.0)).await;

    let response = kitchen.get("/v1/kitchen/tickets/order-404").await;

    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = response.json().await.expect("JSON body");
    let detail = problem["detail"].as_str().expect("detail is a string");
    assert!(detail.contains("order-404"), "detail: {detail}");
    kitchen.stop().await;
}

#[tokio::test]
async fn readyz_returns_ok() {
    let fixture = Fixture::new().await;
    let kitchen = fixture.start(fixture.settings(1.0)).await;

    let response = kitchen.get("/readyz").await;

    assert_eq!(response.status(), 200);
    kitchen.stop().await;
}

#[tokio::test]
async fn same_envelope_twice_one_ticket() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let kitchen = fixture.start(fixture.settings(60_000.0)).await;
    let placed = order_placed("order-1", Some(30));

    kitchen
        .handler
        .handle(&placed)
        .await
        .expect("first delivery succeeds");
    kitchen
        .handler
        .handle(&placed)
        .await
        .expect("second delivery succeeds");
    let events = read_events(&mut stream, "order.ready").await;

    assert_eq!(types(&events), ["order.accepted", "order.ready"]);
    let counts = kitchen.stats.ticket_counts().await.expect("counts");
    assert_eq!(counts.tickets, 1);
    assert_eq!(counts.orders_with_several_tickets, 0);
    kitchen.stop().await;
}

#[tokio::test]
async fn two_events_one_order_one_ticket() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let kitchen = fixture.start(fixture.settings(60_000.0)).await;
    let first = order_placed("order-1", Some(30));
    let second = order_placed("order-1", Some(30));
    assert_ne!(first.id, second.id);

    fixture.publish(&first).await;
    fixture.publish(&second).await;
    let events = read_events(&mut stream, "order.ready").await;

    assert_eq!(types(&events), ["order.accepted", "order.ready"]);
    let counts = kitchen.stats.ticket_counts().await.expect("counts");
    assert_eq!(counts.tickets, 1);
    assert_eq!(counts.by_status.get("ready"), Some(&1));
    let queue_depth = fixture
        .bus
        .queue_depth("kitchen")
        .await
        .expect("queue depth");
    assert_eq!(queue_depth, 0, "both events are acked");
    let dead_letters = fixture.bus.dead_letters().await.expect("dead letters");
    assert!(dead_letters.is_empty(), "dead letters: {dead_letters:?}");
    kitchen.stop().await;
}

#[tokio::test]
async fn many_orders_each_ready_once() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let kitchen = fixture.start(fixture.settings(60_000.0)).await;
    let orders: Vec<Envelope> = (0..250)
        .map(|index| order_placed(&format!("order-{index}"), Some(30)))
        .collect();

    fixture
        .bus
        .publish(&orders)
        .await
        .expect("publish succeeds");
    let mut events: Vec<Envelope> = Vec::new();
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT * 3;
    while events
        .iter()
        .filter(|event| event.event_type == "order.ready")
        .count()
        < orders.len()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} events arrived",
            events.len()
        );
        let batch = stream
            .fetch(500, Duration::from_millis(100))
            .await
            .expect("fetch succeeds");
        events.extend(batch.into_iter().map(|message| message.envelope));
    }

    let counts = kitchen.stats.ticket_counts().await.expect("counts");
    assert_eq!(counts.tickets, 250);
    assert_eq!(counts.orders_with_several_tickets, 0);
    assert_eq!(counts.by_status.get("ready"), Some(&250));
    let mut ready_orders: Vec<&str> = events
        .iter()
        .filter(|event| event.event_type == "order.ready")
        .map(|event| event.subject.as_str())
        .collect();
    ready_orders.sort_unstable();
    ready_orders.dedup();
    assert_eq!(ready_orders.len(), 250, "each order is ready once");
    kitchen.stop().await;
}

#[tokio::test]
async fn restart_keeps_pending_ticket() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    // 12 minutes of preparation at 360 times real time take 2 s, long enough to stop
    // the service in between.
    let settings = fixture.settings(360.0);
    let kitchen = fixture.start(settings.clone()).await;
    fixture.publish(&order_placed("order-1", None)).await;
    let before = read_events(&mut stream, "order.accepted").await;
    let stats = kitchen.stats.clone();
    kitchen.stop().await;
    let counts_between = stats.ticket_counts().await.expect("counts");

    let kitchen = fixture.start(settings).await;
    let after = read_events(&mut stream, "order.ready").await;

    assert_eq!(types(&before), ["order.accepted"]);
    assert_eq!(counts_between.by_status.get("accepted"), Some(&1));
    assert_eq!(types(&after), ["order.ready"]);
    let counts = kitchen.stats.ticket_counts().await.expect("counts");
    assert_eq!(counts.tickets, 1);
    assert_eq!(counts.by_status.get("ready"), Some(&1));
    kitchen.stop().await;
}

#[tokio::test]
async fn zero_time_scale_fails_build() {
    let fixture = Fixture::new().await;
    let bus: Arc<dyn Bus> = fixture.bus.clone();

    let error = Service::build(fixture.settings(0.0), bus)
        .await
        .expect_err("a zero time scale is invalid");

    assert!(error.to_string().contains("time_scale"), "error: {error}");
}
