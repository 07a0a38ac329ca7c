//! The delivery service against a real embedded bus and SQLite files in a temporary
//! directory, and the main path once more on a fresh PostgreSQL database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tiffin_bus::api::{Bus, StartPosition, StreamReceiver, StreamSpec};
use tiffin_bus::embedded::EmbeddedBus;
use tiffin_bus::{Envelope, Handler, Publisher, Subscriber};
use tiffin_delivery::{Service, Settings, Stats};
use tiffin_events::order::{OrderCancelled, OrderDelivered, OrderPickedUp, OrderReady};
use tiffin_events::restaurant::RestaurantUpserted;
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;
use tiffin_runtime::hash::fnv1a64;
use tiffin_runtime::testing::TestDatabase;
use tiffin_runtime::trace::TraceContext;
use tokio::task::JoinHandle;

/// How long a test waits for an event or a state before it fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a test keeps reading after the expected events, to catch extra ones.
const SETTLE: Duration = Duration::from_millis(500);

/// Kamppi, central Helsinki.
const CENTRE: (f64, f64) = (60.1699, 24.9384);

/// Itäkeskus, about 9 km east of the centre.
const EAST: (f64, f64) = (60.2100, 25.0800);

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

    fn settings(&self, time_scale: f64, couriers: usize) -> Settings {
        let mut settings = Settings::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Database::sqlite_url(self.dir.path(), "delivery"),
        );
        settings.time_scale = time_scale;
        settings.couriers = couriers;
        settings
    }

    async fn start(&self, settings: Settings) -> DeliveryApp {
        let bus: Arc<dyn Bus> = self.bus.clone();
        let service = Service::build(settings, bus)
            .await
            .expect("delivery service builds");
        let base_url = format!("http://{}", service.http_addr());
        let handler = service.handler();
        let stats = service.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(service.run(shutdown.clone()));
        DeliveryApp {
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

    async fn add_restaurant(&self, restaurant_id: &str, (lat, lon): (f64, f64)) {
        let restaurant = RestaurantUpserted {
            restaurant_id: restaurant_id.to_owned(),
            name: format!("Restaurant {restaurant_id}"),
            amenity: "restaurant".to_owned(),
            lat,
            lon,
            opening_hours: None,
            revision: 1,
        };
        self.publish(&Envelope::new("/tiffin/catalog", &restaurant, None))
            .await;
    }

    /// Opens a reader of the delivery service's events from the start of the log.
    async fn delivery_events(&self) -> Box<dyn StreamReceiver> {
        self.bus
            .stream(&StreamSpec {
                group: format!("test-{}", uuid::Uuid::now_v7()),
                event_types: vec!["order.picked_up".to_owned(), "order.delivered".to_owned()],
                start: StartPosition::Beginning,
            })
            .await
            .expect("stream opens")
    }

    /// Waits until the `delivery` work queue has settled every message.
    async fn wait_for_empty_queue(&self) {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let depth = self.bus.queue_depth("delivery").await.expect("queue depth");
            if depth == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{depth} messages still in the delivery queue after {EVENT_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct DeliveryApp {
    client: reqwest::Client,
    base_url: String,
    handler: Arc<dyn Handler>,
    stats: Stats,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl DeliveryApp {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("delivery task does not panic")
            .expect("delivery service stops cleanly");
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .expect("request succeeds")
    }

    async fn delivery(&self, order_id: &str) -> Option<serde_json::Value> {
        let response = self.get(&format!("/v1/delivery/orders/{order_id}")).await;
        if response.status() == 404 {
            return None;
        }
        assert_eq!(response.status(), 200, "GET delivery of {order_id}");
        Some(response.json().await.expect("JSON body"))
    }

    async fn couriers(&self) -> serde_json::Value {
        let response = self.get("/v1/delivery/couriers").await;
        assert_eq!(response.status(), 200, "GET couriers");
        response.json().await.expect("JSON body")
    }

    /// Waits until the delivery of `order_id` has `status` and returns it.
    async fn wait_for_status(&self, order_id: &str, status: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let delivery = self.delivery(order_id).await;
            if let Some(delivery) = delivery.as_ref().filter(|d| d["status"] == status) {
                return delivery.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the delivery of {order_id} is not {status} after {EVENT_TIMEOUT:?}: {delivery:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the fleet has `count` couriers.
    async fn wait_for_couriers(&self, count: i64) {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let couriers = self.couriers().await;
            if couriers["couriers"] == count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fleet is not {count} couriers after {EVENT_TIMEOUT:?}: {couriers}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn order_ready(order_id: &str, restaurant_id: &str, replay_minutes: Option<u32>) -> Envelope {
    let ready = OrderReady {
        order_id: order_id.to_owned(),
        restaurant_id: restaurant_id.to_owned(),
        ticket_id: format!("ticket-{order_id}"),
        ready_at: 1_700_000_000_000,
        preparation_ms: 720_000,
        replay_delivery_minutes: replay_minutes,
    };
    Envelope::new("/tiffin/kitchen", &ready, None)
}

fn order_cancelled(order_id: &str, restaurant_id: &str) -> Envelope {
    let cancelled = OrderCancelled {
        order_id: order_id.to_owned(),
        restaurant_id: restaurant_id.to_owned(),
        reason: "customer_request".to_owned(),
        cancelled_at: 1_700_000_000_000,
    };
    Envelope::new("/tiffin/orders", &cancelled, None)
}

/// Reads events until `count` of type `until` have arrived, then for [`SETTLE`]
/// longer, and returns all of them in log order.
async fn read_until(
    stream: &mut Box<dyn StreamReceiver>,
    until: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Envelope> {
    let mut events: Vec<Envelope> = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while events
        .iter()
        .filter(|event| event.event_type == until)
        .count()
        < count
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {count} {until} events within {timeout:?}; got {:?}",
            types(&events)
        );
        let batch = stream
            .fetch(100, Duration::from_millis(100))
            .await
            .expect("fetch succeeds");
        events.extend(batch.into_iter().map(|message| message.envelope));
    }
    events.extend(read_quiet(stream).await);
    events
}

/// Reads events for [`SETTLE`] and returns them.
async fn read_quiet(stream: &mut Box<dyn StreamReceiver>) -> Vec<Envelope> {
    let mut events = Vec::new();
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
async fn ready_order_is_picked_up_then_delivered() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.delivery_events().await;
    let app = fixture.start(fixture.settings(60_000.0, 3)).await;
    fixture.add_restaurant("node-1", CENTRE).await;
    app.wait_for_couriers(3).await;

    fixture
        .publish(&order_ready("order-1", "node-1", Some(30)))
        .await;
    let events = read_until(&mut stream, "order.delivered", 1, EVENT_TIMEOUT).await;

    assert_eq!(types(&events), ["order.picked_up", "order.delivered"]);
    let picked_up: OrderPickedUp = events[0].decode().expect("order.picked_up decodes");
    let delivered: OrderDelivered = events[1].decode().expect("order.delivered decodes");
    assert_eq!(picked_up.order_id, "order-1");
    assert_eq!(delivered.courier_id, picked_up.courier_id);
    assert!(picked_up.picked_up_at <= delivered.delivered_at);
    assert!(
        delivered.delivery_ms >= 18,
        "delivery took {} ms",
        delivered.delivery_ms
    );
    assert!(
        delivered.delivery_ms < 5_000,
        "delivery took {} ms",
        delivered.delivery_ms
    );
    let delivery = app.delivery("order-1").await.expect("delivery exists");
    assert_eq!(delivery["status"], "delivered");
    let assigned_at = delivery["assigned_at"].as_i64().expect("assigned_at");
    let pickup_due = delivery["pickup_due"].as_i64().expect("pickup_due");
    let delivered_due = delivery["delivered_due"].as_i64().expect("delivered_due");
    assert_eq!(
        pickup_due - assigned_at,
        6,
        "a third of 18 minutes at 60,000 times"
    );
    assert_eq!(
        delivered_due - pickup_due,
        12,
        "two thirds of 18 minutes at 60,000 times"
    );
    let couriers = app.couriers().await;
    assert_eq!(couriers["free"], 3);
    assert_eq!(couriers["busy"], 0);
    app.stop().await;
}

#[tokio::test]
async fn events_continue_the_order_trace() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.delivery_events().await;
    let app = fixture.start(fixture.settings(60_000.0, 1)).await;
    fixture.add_restaurant("node-1", CENTRE).await;
    let trace = TraceContext::new_root();
    let mut ready = order_ready("order-1", "node-1", Some(30));
    ready.traceparent = Some(trace.to_string());

    fixture.publish(&ready).await;
    let events = read_until(&mut stream, "order.delivered", 1, EVENT_TIMEOUT).await;

    assert_eq!(events.len(), 2);
    for event in &events {
        assert_eq!(
            event.trace_context().trace_id(),
            trace.trace_id(),
            "{}",
            event.event_type
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn nearest_courier_is_assigned() {
    let fixture = Fixture::new().await;
    // Real time: rides take minutes, so both couriers stay assigned during the test.
    let app = fixture.start(fixture.settings(1.0, 4)).await;
    // Courier k starts at restaurant fnv1a64("courier<k>") % 2 in id order: node-a
    // is 0 and node-b is 1.
    let at_east: Vec<String> = (0..4)
        .filter(|k| fnv1a64(&format!("courier{k}")) % 2 == 1)
        .map(|k| format!("courier-{k}"))
        .collect();
    assert!(
        !at_east.is_empty() && at_east.len() < 4,
        "both restaurants need couriers: {at_east:?}"
    );
    fixture.add_restaurant("node-a", CENTRE).await;
    fixture.add_restaurant("node-b", EAST).await;
    app.wait_for_couriers(4).await;

    fixture
        .publish(&order_ready("order-east", "node-b", None))
        .await;
    fixture
        .publish(&order_ready("order-centre", "node-a", None))
        .await;
    let east = app.wait_for_status("order-east", "assigned").await;
    let centre = app.wait_for_status("order-centre", "assigned").await;

    let east_courier = east["courier_id"].as_str().expect("courier_id");
    let centre_courier = centre["courier_id"].as_str().expect("courier_id");
    assert!(
        at_east.iter().any(|id| id == east_courier),
        "{east_courier} is not one of the couriers at node-b: {at_east:?}"
    );
    assert!(
        !at_east.iter().any(|id| id == centre_courier),
        "{centre_courier} is one of the couriers at node-b: {at_east:?}"
    );
    let couriers = app.couriers().await;
    assert_eq!(couriers["busy"], 2);
    assert_eq!(couriers["free"], 2);
    app.stop().await;
}

#[tokio::test]
async fn same_envelope_twice_one_delivery() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.delivery_events().await;
    let app = fixture.start(fixture.settings(60_000.0, 2)).await;
    fixture.add_restaurant("node-1", CENTRE).await;
    app.wait_for_couriers(2).await;
    let ready = order_ready("order-1", "node-1", Some(30));

    app.handler
        .handle(&ready)
        .await
        .expect("first delivery succeeds");
    app.handler
        .handle(&ready)
        .await
        .expect("second delivery succeeds");
    let events = read_until(&mut stream, "order.delivered", 1, EVENT_TIMEOUT).await;

    assert_eq!(types(&events), ["order.picked_up", "order.delivered"]);
    let counts = app.stats.delivery_counts().await.expect("counts");
    assert_eq!(counts.deliveries, 1);
    assert_eq!(counts.orders_with_several_deliveries, 0);
    app.stop().await;
}

#[tokio::test]
async fn two_events_one_order_one_delivery() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.delivery_events().await;
    let app = fixture.start(fixture.settings(60_000.0, 2)).await;
    fixture.add_restaurant("node-1", CENTRE).await;
    app.wait_for_couriers(2).await;
    let first = order_ready("order-1", "node-1", Some(30));
    let second = order_ready("order-1", "node-1", Some(30));
    assert_ne!(first.id, second.id);

    fixture.publish(&first).await;
    fixture.publish(&second).await;
    let events = read_until(&mut stream, "order.delivered", 1, EVENT_TIMEOUT).await;

    assert_eq!(types(&events), ["order.picked_up", "order.delivered"]);
    let counts = app.stats.delivery_counts().await.expect("counts");
    assert_eq!(counts.deliveries, 1);
    assert_eq!(counts.by_status.get("delivered"), Some(&1));
    fixture.wait_for_empty_queue().await;
    let dead_letters = fixture.bus.dead_letters().await.expect("dead letters");
    assert!(dead_letters.is_empty(), "dead letters: {dead_letters:?}");
    app.stop().await;
}

#[tokio::test]
async fn extra_orders_wait_for_couriers() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.delivery_events().await;
    // 18 minutes at 360 times real time take 3 s, long enough to see orders wait.
    let app = fixture.start(fixture.settings(360.0, 2)).await;
    fixture.add_restaurant("node-1", CENTRE).await;
    app.wait_for_couriers(2).await;
    let orders: Vec<String> = (1..=4).map(|n| format!("order-{n}")).collect();

    for order_id in &orders {
        fixture
            .publish(&order_ready(order_id, "node-1", Some(30)))
            .await;
    }
    fixture.wait_for_empty_queue().await;
    let counts_while_busy = app.stats.delivery_counts().await.expect("counts");
    let couriers_while_busy = app.stats.courier_counts().await.expect("counts");
    let mut waited = Vec::new();
    for order_id in &orders {
        let delivery = app.delivery(order_id).await.expect("delivery exists");
        if delivery["status"] == "waiting" {
            waited.push(order_id.clone());
        }
    }
    let events = read_until(
        &mut stream,
        "order.delivered",
        orders.len(),
        EVENT_TIMEOUT * 2,
    )
    .await;

    assert_eq!(counts_while_busy.deliveries, 4);
    assert_eq!(counts_while_busy.by_status.get("waiting"), Some(&2));
    assert_eq!(couriers_while_busy.busy, 2);
    assert_eq!(waited.len(), 2, "waiting orders: {waited:?}");
    for order_id in &waited {
        let picked_up = events
            .iter()
            .position(|e| e.event_type == "order.picked_up" && &e.subject == order_id)
            .expect("the waiting order is picked up");
        let first_delivered = events
            .iter()
            .position(|e| e.event_type == "order.delivered")
            .expect("an order is delivered");
        assert!(
            picked_up > first_delivered,
            "{order_id} was picked up before any courier was free: {:?}",
            types(&events)
        );
    }
    let mut delivered: Vec<&str> = events
        .iter()
        .filter(|e| e.event_type == "order.delivered")
        .map(|e| e.subject.as_str())
        .collect();
    delivered.sort_unstable();
    assert_eq!(delivered, ["order-1", "order-2", "order-3", "order-4"]);
    let counts = app.stats.delivery_counts().await.expect("counts");
    assert_eq!(counts.by_status.get("delivered"), Some(&4));
    let couriers = app.stats.courier_counts().await.expect("counts");
    assert_eq!(couriers.free, 2);
    app.stop().await;
}

#[tokio::test]
async fn ready_batch_assigns_oldest_once() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.delivery_events().await;
    // 18 minutes at 360 times real time take 3 s, long enough to see an order wait.
    let app = fixture.start(fixture.settings(360.0, 2)).await;
    fixture.add_restaurant("node-1", CENTRE).await;
    app.wait_for_couriers(2).await;
    let first = order_ready("order-1", "node-1", Some(30));
    let events = [
        first.clone(),
        order_ready("order-2", "node-1", Some(30)),
        order_ready("order-2", "node-1", Some(30)),
        order_ready("order-3", "node-1", Some(30)),
        first,
    ];

    // One publish, so the consumer fetches the events together.
    fixture
        .bus
        .publish(&events)
        .await
        .expect("publish succeeds");
    fixture.wait_for_empty_queue().await;
    let counts_while_busy = app.stats.delivery_counts().await.expect("counts");
    let third = app.delivery("order-3").await.expect("delivery exists");
    let delivered = read_until(&mut stream, "order.delivered", 3, EVENT_TIMEOUT * 2).await;

    assert_eq!(counts_while_busy.deliveries, 3);
    assert_eq!(counts_while_busy.by_status.get("waiting"), Some(&1));
    assert_eq!(
        third["status"], "waiting",
        "the newest order waits: {third}"
    );
    let mut orders: Vec<&str> = delivered
        .iter()
        .filter(|e| e.event_type == "order.delivered")
        .map(|e| e.subject.as_str())
        .collect();
    orders.sort_unstable();
    assert_eq!(orders, ["order-1", "order-2", "order-3"]);
    let dead_letters = fixture.bus.dead_letters().await.expect("dead letters");
    assert!(dead_letters.is_empty(), "dead letters: {dead_letters:?}");
    app.stop().await;
}

/// Builds `count` ready orders, alternately from `node-1` and `node-2`.
fn ready_orders_of_two_restaurants(count: usize) -> Vec<Envelope> {
    (0..count)
        .map(|n| {
            let restaurant = if n % 2 == 0 { "node-1" } else { "node-2" };
            order_ready(&format!("order-{n}"), restaurant, Some(30))
        })
        .collect()
}

/// Checks that `orders` deliveries exist, each delivered and none doubled, that
/// all `couriers` are free again and that nothing was dead-lettered.
async fn assert_all_delivered_once(
    app: &DeliveryApp,
    fixture: &Fixture,
    orders: i64,
    couriers: i64,
) {
    let counts = app.stats.delivery_counts().await.expect("counts");
    assert_eq!(counts.deliveries, orders);
    assert_eq!(counts.orders_with_several_deliveries, 0);
    assert_eq!(counts.by_status.get("delivered"), Some(&orders));
    let fleet = app.stats.courier_counts().await.expect("counts");
    assert_eq!(fleet.free, couriers);
    assert_eq!(fleet.busy, 0);
    let dead_letters = fixture.bus.dead_letters().await.expect("dead letters");
    assert!(dead_letters.is_empty(), "dead letters: {dead_letters:?}");
}

#[tokio::test]
async fn many_orders_each_delivered_once() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.delivery_events().await;
    let app = fixture.start(fixture.settings(60_000.0, 5)).await;
    fixture.add_restaurant("node-1", CENTRE).await;
    fixture.add_restaurant("node-2", EAST).await;
    app.wait_for_couriers(5).await;
    let orders = ready_orders_of_two_restaurants(60);

    fixture
        .bus
        .publish(&orders)
        .await
        .expect("publish succeeds");
    let events = read_until(
        &mut stream,
        "order.delivered",
        orders.len(),
        EVENT_TIMEOUT * 3,
    )
    .await;

    for order in &orders {
        let own: Vec<&str> = events
            .iter()
            .filter(|event| event.subject == order.subject)
            .map(|event| event.event_type.as_str())
            .collect();
        assert_eq!(
            own,
            ["order.picked_up", "order.delivered"],
            "{}",
            order.subject
        );
    }
    assert_all_delivered_once(&app, &fixture, 60, 5).await;
    app.stop().await;
}

#[tokio::test]
async fn cancel_before_pickup_frees_courier() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.delivery_events().await;
    // Real time: the ride to the restaurant takes 6 minutes.
    let app = fixture.start(fixture.settings(1.0, 1)).await;
    fixture.add_restaurant("node-1", CENTRE).await;
    app.wait_for_couriers(1).await;
    fixture
        .publish(&order_ready("order-1", "node-1", Some(30)))
        .await;
    app.wait_for_status("order-1", "assigned").await;
    let couriers_assigned = app.couriers().await;

    fixture.publish(&order_cancelled("order-1", "node-1")).await;
    let delivery = app.wait_for_status("order-1", "cancelled").await;
    let events = read_quiet(&mut stream).await;

    assert_eq!(couriers_assigned["busy"], 1);
    assert!(
        delivery["cancelled_at"].is_i64(),
        "cancelled_at is {}",
        delivery["cancelled_at"]
    );
    assert!(events.is_empty(), "events: {:?}", types(&events));
    let couriers = app.couriers().await;
    assert_eq!(couriers["free"], 1);
    assert_eq!(couriers["busy"], 0);
    app.stop().await;
}

#[tokio::test]
async fn cancel_after_pickup_still_delivers() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.delivery_events().await;
    // A 4.5 s share in real time: pickup after 1.5 s, delivery 3 s later.
    let mut settings = fixture.settings(1.0, 1);
    settings.default_courier_share = Duration::from_millis(4_500);
    let app = fixture.start(settings).await;
    fixture.add_restaurant("node-1", CENTRE).await;
    app.wait_for_couriers(1).await;
    fixture
        .publish(&order_ready("order-1", "node-1", None))
        .await;
    let before = read_until(&mut stream, "order.picked_up", 1, EVENT_TIMEOUT).await;

    fixture.publish(&order_cancelled("order-1", "node-1")).await;
    fixture.wait_for_empty_queue().await;
    let after_cancel = app.delivery("order-1").await.expect("delivery exists");
    let after = read_until(&mut stream, "order.delivered", 1, EVENT_TIMEOUT).await;

    assert_eq!(types(&before), ["order.picked_up"]);
    assert_eq!(after_cancel["status"], "picked_up");
    assert_eq!(types(&after), ["order.delivered"]);
    let delivery = app.delivery("order-1").await.expect("delivery exists");
    assert_eq!(delivery["status"], "delivered");
    assert!(delivery["cancelled_at"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn cancel_before_ready_creates_nothing() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.delivery_events().await;
    let app = fixture.start(fixture.settings(60_000.0, 2)).await;
    fixture.add_restaurant("node-1", CENTRE).await;
    app.wait_for_couriers(2).await;
    fixture.publish(&order_cancelled("order-1", "node-1")).await;
    app.wait_for_status("order-1", "cancelled").await;

    fixture
        .publish(&order_ready("order-1", "node-1", Some(30)))
        .await;
    fixture.wait_for_empty_queue().await;
    let events = read_quiet(&mut stream).await;

    assert!(events.is_empty(), "events: {:?}", types(&events));
    let delivery = app.delivery("order-1").await.expect("delivery exists");
    assert_eq!(delivery["status"], "cancelled");
    assert!(delivery["courier_id"].is_null());
    let counts = app.stats.delivery_counts().await.expect("counts");
    assert_eq!(counts.deliveries, 1);
    assert_eq!(counts.by_status.get("cancelled"), Some(&1));
    let couriers = app.couriers().await;
    assert_eq!(couriers["free"], 2);
    app.stop().await;
}

#[tokio::test]
async fn order_waits_for_first_restaurant() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.delivery_events().await;
    let app = fixture.start(fixture.settings(60_000.0, 5)).await;
    let couriers_before = app.couriers().await;
    fixture
        .publish(&order_ready("order-1", "node-1", Some(30)))
        .await;
    app.wait_for_status("order-1", "waiting").await;

    fixture.add_restaurant("node-1", CENTRE).await;
    let events = read_until(&mut stream, "order.delivered", 1, EVENT_TIMEOUT).await;

    assert_eq!(couriers_before["couriers"], 0);
    assert_eq!(types(&events), ["order.picked_up", "order.delivered"]);
    let couriers = app.couriers().await;
    assert_eq!(couriers["couriers"], 5);
    assert_eq!(couriers["free"], 5);
    app.stop().await;
}

#[tokio::test]
async fn unknown_restaurant_gets_any_courier() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.delivery_events().await;
    let app = fixture.start(fixture.settings(60_000.0, 2)).await;
    fixture.add_restaurant("node-1", CENTRE).await;
    app.wait_for_couriers(2).await;

    fixture
        .publish(&order_ready("order-1", "node-unknown", Some(30)))
        .await;
    let events = read_until(&mut stream, "order.delivered", 1, EVENT_TIMEOUT).await;

    assert_eq!(types(&events), ["order.picked_up", "order.delivered"]);
    let delivery = app.delivery("order-1").await.expect("delivery exists");
    assert_eq!(delivery["restaurant_id"], "node-unknown");
    assert_eq!(delivery["status"], "delivered");
    app.stop().await;
}

#[tokio::test]
async fn restart_between_pickup_and_delivery() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.delivery_events().await;
    // A 4.5 s share in real time: pickup after 1.5 s, delivery 3 s later, long enough
    // to restart the service in between.
    let mut settings = fixture.settings(1.0, 3);
    settings.default_courier_share = Duration::from_millis(4_500);
    let app = fixture.start(settings.clone()).await;
    fixture.add_restaurant("node-1", CENTRE).await;
    app.wait_for_couriers(3).await;
    fixture
        .publish(&order_ready("order-1", "node-1", None))
        .await;
    let before = read_until(&mut stream, "order.picked_up", 1, EVENT_TIMEOUT).await;
    let stats = app.stats.clone();
    app.stop().await;
    let counts_between = stats.delivery_counts().await.expect("counts");

    let app = fixture.start(settings).await;
    let after = read_until(&mut stream, "order.delivered", 1, EVENT_TIMEOUT).await;

    assert_eq!(types(&before), ["order.picked_up"]);
    assert_eq!(counts_between.by_status.get("picked_up"), Some(&1));
    assert_eq!(types(&after), ["order.delivered"]);
    let counts = app.stats.delivery_counts().await.expect("counts");
    assert_eq!(counts.deliveries, 1);
    assert_eq!(counts.by_status.get("delivered"), Some(&1));
    let couriers = app.stats.courier_counts().await.expect("counts");
    assert_eq!(couriers.couriers, 3, "the restart creates no second fleet");
    assert_eq!(couriers.free, 3);
    app.stop().await;
}

#[tokio::test]
async fn unknown_delivery_is_not_found() {
    let fixture = Fixture::new().await;
    let app = fixture.start(fixture.settings(1.0, 1)).await;

    let response = app.get("/v1/delivery/orders/order-404").await;

    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = response.json().await.expect("JSON body");
    let detail = problem["detail"].as_str().expect("detail is a string");
    assert!(detail.contains("order-404"), "detail: {detail}");
    app.stop().await;
}

#[tokio::test]
async fn readyz_returns_ok() {
    let fixture = Fixture::new().await;
    let app = fixture.start(fixture.settings(1.0, 1)).await;

    let response = app.get("/readyz").await;

    assert_eq!(response.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn invalid_settings_fail_build() {
    let fixture = Fixture::new().await;
    let mut zero_couriers = fixture.settings(1.0, 1);
    zero_couriers.couriers = 0;
    let mut zero_concurrency = fixture.settings(1.0, 1);
    zero_concurrency.concurrency = 0;
    let cases = [
        ("time_scale", fixture.settings(0.0, 1)),
        ("couriers", zero_couriers),
        ("concurrency", zero_concurrency),
    ];

    for (setting, settings) in cases {
        let bus: Arc<dyn Bus> = fixture.bus.clone();
        let error = Service::build(settings, bus)
            .await
            .expect_err("invalid settings fail");

        assert!(
            error.to_string().contains(setting),
            "{setting}: error {error}"
        );
    }
}

#[tokio::test]
async fn postgres_order_is_delivered() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let fixture = Fixture::new().await;
    let mut stream = fixture.delivery_events().await;
    let mut settings = fixture.settings(60_000.0, 3);
    settings.database_url = db.url().to_owned();
    let app = fixture.start(settings).await;
    fixture.add_restaurant("node-1", CENTRE).await;
    app.wait_for_couriers(3).await;

    fixture
        .publish(&order_ready("order-1", "node-1", Some(30)))
        .await;
    let events = read_until(&mut stream, "order.delivered", 1, EVENT_TIMEOUT).await;

    assert_eq!(types(&events), ["order.picked_up", "order.delivered"]);
    let delivery = app.delivery("order-1").await.expect("delivery exists");
    assert_eq!(delivery["status"], "delivered");
    let couriers = app.couriers().await;
    assert_eq!(couriers["free"], 3);
    app.stop().await;
    db.close().await;
}

/// Two replicas on one PostgreSQL database and one queue assign from the same
/// fleet at the same time: every order is delivered once and no courier is left
/// busy.
#[tokio::test]
async fn postgres_replicas_deliver_each_order_once() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let fixture = Fixture::new().await;
    let mut stream = fixture.delivery_events().await;
    let mut settings = fixture.settings(60_000.0, 5);
    settings.database_url = db.url().to_owned();
    let first = fixture.start(settings.clone()).await;
    let second = fixture.start(settings).await;
    fixture.add_restaurant("node-1", CENTRE).await;
    fixture.add_restaurant("node-2", EAST).await;
    first.wait_for_couriers(5).await;
    let orders = ready_orders_of_two_restaurants(60);

    fixture
        .bus
        .publish(&orders)
        .await
        .expect("publish succeeds");
    let events = read_until(
        &mut stream,
        "order.delivered",
        orders.len(),
        EVENT_TIMEOUT * 3,
    )
    .await;

    let delivered = events
        .iter()
        .filter(|event| event.event_type == "order.delivered")
        .count();
    assert_eq!(delivered, orders.len());
    assert_all_delivered_once(&first, &fixture, 60, 5).await;
    first.stop().await;
    second.stop().await;
    db.close().await;
}
