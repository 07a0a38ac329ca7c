//! The kitchen against a real embedded bus and SQLite files in a temporary directory,
//! and its main path once more on a fresh PostgreSQL database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tempfile::TempDir;
use tiffin_bus::api::{Bus, StartPosition, StreamReceiver, StreamSpec};
use tiffin_bus::embedded::EmbeddedBus;
use tiffin_bus::{Envelope, Handler, Publisher, Subscriber};
use tiffin_events::order::{
    OrderAccepted, OrderCancelled, OrderLine, OrderPlaced, OrderReady, OrderRejected, RejectReason,
};
use tiffin_events::restaurant::RestaurantUpserted;
use tiffin_kitchen::{Service, Settings, Stats};
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;
use tiffin_runtime::testing::TestDatabase;
use tiffin_runtime::token::{Claims, ISSUER, Jwk, Jwks, Role};
use tokio::task::JoinHandle;

/// How long a test waits for an event before it fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a test keeps reading after the expected events, to catch extra ones.
const SETTLE: Duration = Duration::from_millis(500);

/// A Wednesday noon, when the default hours of every amenity are open.
const WEDNESDAY_NOON: &str = "2020-08-05T12:00:00";

/// A Saturday morning at 06:07, before the default hours of every amenity.
const SATURDAY_DAWN: &str = "2020-08-01T06:07:00";

/// The PKCS#8 v1 DER prefix of an Ed25519 private key, followed by the 32-byte seed
/// (RFC 8410, section 7), which is the form jsonwebtoken signs with.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The test's signing key seed and its key id.
const SEED: [u8; 32] = [7; 32];
const KID: &str = "test-key";

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
                event_types: vec![
                    "order.accepted".to_owned(),
                    "order.rejected".to_owned(),
                    "order.ready".to_owned(),
                ],
                start: StartPosition::Beginning,
            })
            .await
            .expect("stream opens")
    }

    /// Settings whose stock routes verify tokens against a key set served on
    /// 127.0.0.1.
    async fn settings_with_auth(&self, time_scale: f64) -> Settings {
        let mut settings = self.settings(time_scale);
        settings.jwks_url = Some(serve_jwks().await);
        settings
    }
}

/// Serves the test key's JWKS on 127.0.0.1 and returns its URL. The server runs
/// until the test's runtime stops.
async fn serve_jwks() -> String {
    let public_key = ed25519_dalek::SigningKey::from_bytes(&SEED)
        .verifying_key()
        .to_bytes();
    let jwks = Jwks {
        keys: vec![Jwk {
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            x: URL_SAFE_NO_PAD.encode(public_key),
            kid: KID.to_owned(),
            alg: "EdDSA".to_owned(),
            usage: "sig".to_owned(),
        }],
    };
    let app = axum::Router::new().route(
        "/v1/auth/jwks",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("JWKS listener binds");
    let addr = listener.local_addr().expect("JWKS listener address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1/auth/jwks")
}

/// Signs an access token for `role` with the test key.
fn token(role: Role) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let claims = Claims {
        sub: format!("user-{role:?}"),
        role,
        exp: now + 3600,
        iat: now,
        iss: ISSUER.to_owned(),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(KID.to_owned());
    let der = [PKCS8_ED25519_PREFIX.as_slice(), SEED.as_slice()].concat();
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&der)).expect("token signs")
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

    /// Sends `PUT .../stock/{menu_item_id}` of `restaurant-1` with `body`, as `role`
    /// or without a token.
    async fn put_stock(
        &self,
        menu_item_id: &str,
        body: serde_json::Value,
        role: Option<Role>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .put(format!(
                "{}/v1/kitchen/restaurants/restaurant-1/stock/{menu_item_id}",
                self.base_url
            ))
            .json(&body);
        if let Some(role) = role {
            request = request.bearer_auth(token(role));
        }
        request.send().await.expect("request succeeds")
    }

    /// Sends `GET .../stock` of `restaurant-1` as staff and returns the body.
    async fn stock(&self) -> serde_json::Value {
        let response = self
            .client
            .get(format!(
                "{}/v1/kitchen/restaurants/restaurant-1/stock",
                self.base_url
            ))
            .bearer_auth(token(Role::Staff))
            .send()
            .await
            .expect("request succeeds");
        assert_eq!(response.status(), 200);
        response.json().await.expect("JSON body")
    }

    async fn handle(&self, event: &Envelope) {
        self.handler
            .handle(event)
            .await
            .unwrap_or_else(|error| panic!("{} fails: {error}", event.event_type));
    }
}

fn order_placed(order_id: &str, replay_delivery_minutes: Option<u32>) -> Envelope {
    order_placed_at(order_id, replay_delivery_minutes, WEDNESDAY_NOON)
}

/// Builds an order of two salmon soups from `restaurant-1`, placed at the replayed
/// local time `local_time`.
fn order_placed_at(
    order_id: &str,
    replay_delivery_minutes: Option<u32>,
    local_time: &str,
) -> Envelope {
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
        replay_local_time: Some(local_time.to_owned()),
    };
    Envelope::new("/tiffin/orders", &order, None)
}

fn order_cancelled(order_id: &str) -> Envelope {
    let cancelled = OrderCancelled {
        order_id: order_id.to_owned(),
        restaurant_id: "restaurant-1".to_owned(),
        reason: "customer_request".to_owned(),
        cancelled_at: 1_700_000_060_000,
    };
    Envelope::new("/tiffin/orders", &cancelled, None)
}

fn restaurant_upserted(opening_hours: &str) -> Envelope {
    let restaurant = RestaurantUpserted {
        restaurant_id: "restaurant-1".to_owned(),
        name: "Soup kitchen".to_owned(),
        amenity: "restaurant".to_owned(),
        lat: 60.17,
        lon: 24.94,
        opening_hours: Some(opening_hours.to_owned()),
        revision: 1,
    };
    Envelope::new("/tiffin/catalog", &restaurant, None)
}

/// Reads events for `duration` and returns all of them in log order.
async fn read_for(stream: &mut Box<dyn StreamReceiver>, duration: Duration) -> Vec<Envelope> {
    let mut events = Vec::new();
    let until = tokio::time::Instant::now() + duration;
    while tokio::time::Instant::now() < until {
        let batch = stream
            .fetch(100, Duration::from_millis(100))
            .await
            .expect("fetch succeeds");
        events.extend(batch.into_iter().map(|message| message.envelope));
    }
    events
}

/// Reads events until `order.rejected` arrives and returns it.
async fn rejection(stream: &mut Box<dyn StreamReceiver>) -> OrderRejected {
    let events = read_events(stream, "order.rejected").await;
    assert_eq!(types(&events), ["order.rejected"]);
    events[0].decode().expect("order.rejected decodes")
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

/// Returns the type and order id of each acceptance and rejection in `events`.
fn decisions(events: &[Envelope]) -> Vec<(&str, String)> {
    events
        .iter()
        .filter(|event| event.event_type != "order.ready")
        .map(|event| {
            let order_id = match event.event_type.as_str() {
                "order.accepted" => event.decode::<OrderAccepted>().expect("decodes").order_id,
                _ => event.decode::<OrderRejected>().expect("decodes").order_id,
            };
            (event.event_type.as_str(), order_id)
        })
        .collect()
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
    let mut settings = fixture.settings(60_000.0);
    // Every order goes to the same restaurant, and none may be rejected for capacity.
    settings.capacity_per_restaurant = 1_000;
    let kitchen = fixture.start(settings).await;
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

#[tokio::test]
async fn ready_carries_replay_minutes() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let kitchen = fixture.start(fixture.settings(60_000.0)).await;

    fixture.publish(&order_placed("order-1", Some(30))).await;
    let events = read_events(&mut stream, "order.ready").await;

    let ready: OrderReady = events[1].decode().expect("order.ready decodes");
    assert_eq!(ready.replay_delivery_minutes, Some(30));
    kitchen.stop().await;
}

#[tokio::test]
async fn closed_at_replay_time_rejects() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let kitchen = fixture.start(fixture.settings(1.0)).await;

    fixture
        .publish(&order_placed_at("order-1", None, SATURDAY_DAWN))
        .await;
    let rejected = rejection(&mut stream).await;

    assert_eq!(rejected.reason, RejectReason::Closed);
    assert!(
        rejected.detail.contains("Saturday 06:07"),
        "detail: {}",
        rejected.detail
    );
    let counts = kitchen.stats.ticket_counts().await.expect("counts");
    assert_eq!(counts.by_status.get("rejected"), Some(&1));
    assert_eq!(counts.by_reject_reason.get("closed"), Some(&1));
    kitchen.stop().await;
}

#[tokio::test]
async fn replica_hours_close_restaurant() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    fixture
        .publish(&restaurant_upserted("Mo-Fr 13:00-14:00; Sa off"))
        .await;
    let kitchen = fixture.start(fixture.settings(1.0)).await;
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while kitchen.stats.replica_restaurants().await.expect("count") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica stays empty"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    kitchen.handle(&order_placed("order-1", None)).await;
    let rejected = rejection(&mut stream).await;

    assert_eq!(rejected.reason, RejectReason::Closed);
    assert!(
        rejected.detail.contains("Wednesday 12:00"),
        "detail: {}",
        rejected.detail
    );
    kitchen.stop().await;
}

#[tokio::test]
async fn staff_zero_stock_sells_out() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let kitchen = fixture.start(fixture.settings_with_auth(1.0).await).await;

    let response = kitchen
        .put_stock(
            "item-1",
            serde_json::json!({"quantity": 0}),
            Some(Role::Staff),
        )
        .await;
    kitchen.handle(&order_placed("order-1", None)).await;
    let rejected = rejection(&mut stream).await;

    assert_eq!(response.status(), 200);
    assert_eq!(rejected.reason, RejectReason::SoldOut);
    assert!(
        rejected.detail.contains("Salmon soup (item-1)"),
        "detail: {}",
        rejected.detail
    );
    let ticket: serde_json::Value = kitchen
        .get("/v1/kitchen/tickets/order-1")
        .await
        .json()
        .await
        .expect("JSON body");
    assert_eq!(ticket["status"], "rejected");
    assert_eq!(ticket["reject_reason"], "sold_out");
    assert!(ticket["accepted_at"].is_null(), "{ticket}");
    kitchen.stop().await;
}

#[tokio::test]
async fn accepted_order_takes_stock() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let kitchen = fixture.start(fixture.settings_with_auth(1.0).await).await;
    kitchen
        .put_stock(
            "item-1",
            serde_json::json!({"quantity": 5}),
            Some(Role::Admin),
        )
        .await;

    kitchen.handle(&order_placed("order-1", None)).await;
    let events = read_events(&mut stream, "order.accepted").await;
    let stock = kitchen.stock().await;

    assert_eq!(types(&events), ["order.accepted"]);
    assert_eq!(stock["items"][0]["menu_item_id"], "item-1");
    assert_eq!(stock["items"][0]["quantity"], 3);
    kitchen.stop().await;
}

#[tokio::test]
async fn cancellation_returns_taken_stock() {
    let fixture = Fixture::new().await;
    let kitchen = fixture.start(fixture.settings_with_auth(1.0).await).await;
    kitchen
        .put_stock(
            "item-1",
            serde_json::json!({"quantity": 5}),
            Some(Role::Staff),
        )
        .await;
    kitchen.handle(&order_placed("order-1", None)).await;

    kitchen.handle(&order_cancelled("order-1")).await;
    let stock = kitchen.stock().await;

    assert_eq!(stock["items"][0]["quantity"], 5);
    kitchen.stop().await;
}

/// One batch in one transaction decides its orders in order: a repeated order,
/// a shortage left by earlier orders of the batch, and a cancellation that returns
/// stock to a later order.
#[tokio::test]
async fn batch_decides_in_order() {
    let fixture = Fixture::new().await;
    let settings = fixture.settings_with_auth(1.0).await;
    decides_batch_in_order(&fixture, settings).await;
}

/// The same on PostgreSQL, whose batch reads and ticket inserts are the same
/// statements on another engine.
#[tokio::test]
async fn postgres_batch_decides_in_order() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let fixture = Fixture::new().await;
    let mut settings = fixture.settings_with_auth(1.0).await;
    settings.database_url = db.url().to_owned();
    decides_batch_in_order(&fixture, settings).await;
    db.close().await;
}

async fn decides_batch_in_order(fixture: &Fixture, settings: Settings) {
    let mut stream = fixture.kitchen_events().await;
    let kitchen = fixture.start(settings).await;
    kitchen
        .put_stock(
            "item-1",
            serde_json::json!({"quantity": 5}),
            Some(Role::Staff),
        )
        .await;
    let batch = [
        order_placed("order-1", None),
        order_placed("order-1", None),
        order_placed("order-2", None),
        order_placed("order-3", None),
        order_cancelled("order-2"),
        order_placed("order-4", None),
    ];

    kitchen
        .handler
        .handle_batch(&batch)
        .await
        .expect("batch handled");
    kitchen
        .handler
        .handle_batch(&batch)
        .await
        .expect("batch handled again");
    let events = read_for(&mut stream, SETTLE * 4).await;
    let decisions = decisions(&events);
    let stock = kitchen.stock().await;

    let expected = [
        ("order.accepted", "order-1"),
        ("order.accepted", "order-2"),
        ("order.rejected", "order-3"),
        ("order.accepted", "order-4"),
    ];
    let expected: Vec<(&str, String)> = expected
        .iter()
        .map(|(kind, order_id)| (*kind, (*order_id).to_owned()))
        .collect();
    assert_eq!(decisions, expected);
    assert_eq!(stock["items"][0]["quantity"], 1);
    kitchen.stop().await;
}

#[tokio::test]
async fn null_quantity_removes_limit() {
    let fixture = Fixture::new().await;
    let kitchen = fixture.start(fixture.settings_with_auth(1.0).await).await;
    kitchen
        .put_stock(
            "item-1",
            serde_json::json!({"quantity": 0}),
            Some(Role::Staff),
        )
        .await;

    let response = kitchen
        .put_stock(
            "item-1",
            serde_json::json!({"quantity": null}),
            Some(Role::Staff),
        )
        .await;
    let stock = kitchen.stock().await;

    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.expect("JSON body");
    assert!(body["quantity"].is_null(), "{body}");
    assert_eq!(stock["items"], serde_json::json!([]));
    kitchen.stop().await;
}

#[tokio::test]
async fn invalid_quantities_are_rejected() {
    let fixture = Fixture::new().await;
    let kitchen = fixture.start(fixture.settings_with_auth(1.0).await).await;
    let cases = [
        ("negative", serde_json::json!({"quantity": -1})),
        ("missing", serde_json::json!({})),
        ("text", serde_json::json!({"quantity": "five"})),
        (
            "misspelled",
            serde_json::json!({"quantity": 1, "quantty": 2}),
        ),
    ];

    for (case, body) in cases {
        let response = kitchen.put_stock("item-1", body, Some(Role::Staff)).await;

        assert_eq!(response.status(), 400, "{case}");
        let problem: serde_json::Value = response.json().await.expect("JSON body");
        let detail = problem["detail"].as_str().expect("detail is a string");
        assert!(detail.contains("quant"), "{case}: {detail}");
    }
    kitchen.stop().await;
}

#[tokio::test]
async fn customer_token_is_forbidden() {
    let fixture = Fixture::new().await;
    let kitchen = fixture.start(fixture.settings_with_auth(1.0).await).await;

    let response = kitchen
        .put_stock(
            "item-1",
            serde_json::json!({"quantity": 1}),
            Some(Role::Customer),
        )
        .await;

    assert_eq!(response.status(), 403);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    kitchen.stop().await;
}

#[tokio::test]
async fn missing_token_is_unauthorized() {
    let fixture = Fixture::new().await;
    let kitchen = fixture.start(fixture.settings_with_auth(1.0).await).await;

    let put = kitchen
        .put_stock("item-1", serde_json::json!({"quantity": 1}), None)
        .await;
    let get = kitchen
        .get("/v1/kitchen/restaurants/restaurant-1/stock")
        .await;

    assert_eq!(put.status(), 401);
    assert_eq!(get.status(), 401);
    kitchen.stop().await;
}

#[tokio::test]
async fn stock_routes_need_jwks_url() {
    let fixture = Fixture::new().await;
    let kitchen = fixture.start(fixture.settings(1.0)).await;

    let response = kitchen
        .put_stock(
            "item-1",
            serde_json::json!({"quantity": 1}),
            Some(Role::Staff),
        )
        .await;

    assert_eq!(response.status(), 503);
    let problem: serde_json::Value = response.json().await.expect("JSON body");
    let detail = problem["detail"].as_str().expect("detail is a string");
    assert!(detail.contains("jwks_url"), "detail: {detail}");
    kitchen.stop().await;
}

#[tokio::test]
async fn capacity_one_rejects_second() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let mut settings = fixture.settings(1.0);
    settings.capacity_per_restaurant = 1;
    let kitchen = fixture.start(settings).await;

    kitchen.handle(&order_placed("order-1", None)).await;
    kitchen.handle(&order_placed("order-2", None)).await;
    let events = read_events(&mut stream, "order.rejected").await;

    assert_eq!(types(&events), ["order.accepted", "order.rejected"]);
    let rejected: OrderRejected = events[1].decode().expect("order.rejected decodes");
    assert_eq!(rejected.order_id, "order-2");
    assert_eq!(rejected.reason, RejectReason::AtCapacity);
    kitchen.stop().await;
}

#[tokio::test]
async fn capacity_counts_within_batch() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let mut settings = fixture.settings(1.0);
    settings.capacity_per_restaurant = 1;
    let kitchen = fixture.start(settings).await;
    let batch = [
        order_placed("order-1", None),
        order_placed("order-2", None),
        order_cancelled("order-1"),
        order_placed("order-3", None),
    ];

    kitchen
        .handler
        .handle_batch(&batch)
        .await
        .expect("batch handled");
    let events = read_for(&mut stream, SETTLE * 4).await;

    let decisions = decisions(&events);
    let expected = [
        ("order.accepted", "order-1"),
        ("order.rejected", "order-2"),
        ("order.accepted", "order-3"),
    ];
    let expected: Vec<(&str, String)> = expected
        .iter()
        .map(|(kind, order_id)| (*kind, (*order_id).to_owned()))
        .collect();
    assert_eq!(decisions, expected);
    kitchen.stop().await;
}

#[tokio::test]
async fn full_reject_rate_declines() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let mut settings = fixture.settings(1.0);
    settings.reject_rate = 1.0;
    let kitchen = fixture.start(settings).await;

    fixture.publish(&order_placed("order-1", None)).await;
    let rejected = rejection(&mut stream).await;

    assert_eq!(rejected.reason, RejectReason::KitchenDeclined);
    let counts = kitchen.stats.ticket_counts().await.expect("counts");
    assert_eq!(counts.by_reject_reason.get("kitchen_declined"), Some(&1));
    kitchen.stop().await;
}

#[tokio::test]
async fn cancellation_stops_ready() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    // 12 minutes of preparation at 720 times real time take 1 s.
    let kitchen = fixture.start(fixture.settings(720.0)).await;
    kitchen.handle(&order_placed("order-1", None)).await;

    kitchen.handle(&order_cancelled("order-1")).await;
    let events = read_for(&mut stream, Duration::from_secs(2)).await;

    assert_eq!(types(&events), ["order.accepted"]);
    let counts = kitchen.stats.ticket_counts().await.expect("counts");
    assert_eq!(counts.by_status.get("cancelled"), Some(&1));
    kitchen.stop().await;
}

#[tokio::test]
async fn cancel_before_placed_decides_nothing() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let kitchen = fixture.start(fixture.settings(60_000.0)).await;

    kitchen.handle(&order_cancelled("order-1")).await;
    kitchen.handle(&order_placed("order-1", Some(30))).await;
    let events = read_for(&mut stream, SETTLE).await;

    assert!(events.is_empty(), "events: {:?}", types(&events));
    let ticket: serde_json::Value = kitchen
        .get("/v1/kitchen/tickets/order-1")
        .await
        .json()
        .await
        .expect("JSON body");
    assert_eq!(ticket["status"], "cancelled");
    assert_eq!(ticket["lines"], serde_json::json!([]));
    kitchen.stop().await;
}

#[tokio::test]
async fn cancel_after_ready_is_ignored() {
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let kitchen = fixture.start(fixture.settings(60_000.0)).await;
    fixture.publish(&order_placed("order-1", Some(30))).await;
    read_events(&mut stream, "order.ready").await;

    kitchen.handle(&order_cancelled("order-1")).await;

    let counts = kitchen.stats.ticket_counts().await.expect("counts");
    assert_eq!(counts.by_status.get("ready"), Some(&1));
    assert_eq!(counts.by_status.get("cancelled"), None);
    kitchen.stop().await;
}

#[tokio::test]
async fn invalid_limits_fail_build() {
    let fixture = Fixture::new().await;
    let mut no_capacity = fixture.settings(1.0);
    no_capacity.capacity_per_restaurant = 0;
    let mut over_one = fixture.settings(1.0);
    over_one.reject_rate = 1.5;
    let mut far_east = fixture.settings(1.0);
    far_east.utc_offset_minutes = 24 * 60;

    for (setting, settings) in [
        ("capacity_per_restaurant", no_capacity),
        ("reject_rate", over_one),
        ("utc_offset_minutes", far_east),
    ] {
        let bus: Arc<dyn Bus> = fixture.bus.clone();

        let error = Service::build(settings, bus)
            .await
            .expect_err("the setting is invalid");

        assert!(error.to_string().contains(setting), "error: {error}");
    }
}

#[tokio::test]
async fn postgres_order_becomes_ready() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let fixture = Fixture::new().await;
    let mut stream = fixture.kitchen_events().await;
    let mut settings = fixture.settings(60_000.0);
    settings.database_url = db.url().to_owned();
    let kitchen = fixture.start(settings).await;

    fixture.publish(&order_placed("order-1", Some(30))).await;
    let events = read_events(&mut stream, "order.ready").await;

    assert_eq!(types(&events), ["order.accepted", "order.ready"]);
    kitchen.stop().await;
    db.close().await;
}
