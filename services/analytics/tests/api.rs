//! The analytics service against a real embedded bus and SQLite files in a temporary
//! directory: events go through the bus, figures come back over HTTP, and a rebuild
//! from the same stream gives the same summary. One test repeats that on a fresh
//! PostgreSQL database.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tiffin_analytics::domain::{Distribution, EndingFigures, Funnel, ReasonFigure};
use tiffin_analytics::storage::{self, RestaurantFigure, Summary};
use tiffin_analytics::{Service, Settings};
use tiffin_bus::api::Bus;
use tiffin_bus::embedded::EmbeddedBus;
use tiffin_bus::{Envelope, Publisher};
use tiffin_events::EventData;
use tiffin_events::order::{
    OrderAccepted, OrderCancelled, OrderDelivered, OrderLine, OrderPickedUp, OrderPlaced,
    OrderReady, OrderRejected, OrderStatusChanged, RejectReason,
};
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;
use tiffin_runtime::testing::TestDatabase;
use tokio::task::JoinHandle;

/// How long a test waits for the projection to catch up before it fails.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The start of a calendar minute, so that the per-minute figures are predictable.
const T0: i64 = 28_333_334 * 60_000;

const MINUTE: i64 = 60_000;

struct Fixture {
    /// Keeps the bus and SQLite files alive as long as the fixture.
    _dir: TempDir,
    bus: Arc<EmbeddedBus>,
    published: usize,
    database_url: String,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bus = EmbeddedBus::open(&dir.path().join("bus.db"))
            .await
            .expect("embedded bus opens");
        let database_url = Database::sqlite_url(dir.path(), "analytics");
        Self {
            _dir: dir,
            bus: Arc::new(bus),
            published: 0,
            database_url,
        }
    }

    /// A fixture whose service keeps its data at `database_url` instead.
    async fn on(database_url: &str) -> Self {
        let mut fixture = Self::new().await;
        fixture.database_url = database_url.to_owned();
        fixture
    }

    fn database_url(&self) -> String {
        self.database_url.clone()
    }

    fn shared_bus(&self) -> Arc<dyn Bus> {
        self.bus.clone()
    }

    async fn start(&self) -> Analytics {
        let settings = Settings::new(SocketAddr::from(([127, 0, 0, 1], 0)), self.database_url());
        let service = Service::build(settings, self.shared_bus())
            .await
            .expect("service builds");
        let base_url = format!("http://{}", service.http_addr());
        let db = service.database();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(service.run(shutdown.clone()));
        Analytics {
            client: tiffin_runtime::http::client(Duration::from_secs(10)).expect("HTTP client"),
            base_url,
            db,
            shutdown,
            task,
        }
    }

    async fn publish<T: EventData>(&mut self, source: &str, data: &T) -> Envelope {
        let envelope = Envelope::new(source, data, None);
        self.bus
            .publish(std::slice::from_ref(&envelope))
            .await
            .expect("publish succeeds");
        self.published += 1;
        envelope
    }
}

struct Analytics {
    client: reqwest::Client,
    base_url: String,
    db: Database,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Analytics {
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

    async fn summary_json(&self) -> Value {
        let response = self.get("/v1/analytics/summary").await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("JSON body")
    }

    /// Polls the inbox until the projection has handled `events` events.
    async fn wait_for_events(&self, events: usize) {
        let deadline = tokio::time::Instant::now() + WAIT_TIMEOUT;
        loop {
            let handled: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbox")
                .fetch_one(self.db.pool())
                .await
                .expect("inbox count");
            if handled == events as i64 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the projection handled {handled} of {events} events within {WAIT_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// === events ===

/// An order as the events describe it.
#[derive(Clone, Copy)]
struct Order {
    id: &'static str,
    restaurant: &'static str,
    total_cents: i64,
    placed_at: i64,
}

impl Order {
    fn placed(self) -> OrderPlaced {
        OrderPlaced {
            order_id: self.id.to_owned(),
            customer_id: "customer-1".to_owned(),
            restaurant_id: self.restaurant.to_owned(),
            lines: vec![OrderLine {
                menu_item_id: "item-1".to_owned(),
                name: "Salmon soup".to_owned(),
                quantity: 1,
                unit_price_cents: self.total_cents,
            }],
            total_cents: self.total_cents,
            currency: "EUR".to_owned(),
            payment_id: format!("payment-{}", self.id),
            placed_at: self.placed_at,
            replay_delivery_minutes: None,
            replay_local_time: None,
        }
    }

    fn accepted(self, minutes: i64) -> OrderAccepted {
        OrderAccepted {
            order_id: self.id.to_owned(),
            restaurant_id: self.restaurant.to_owned(),
            ticket_id: format!("ticket-{}", self.id),
            accepted_at: self.placed_at + minutes * MINUTE,
            ready_by: self.placed_at + (minutes + 15) * MINUTE,
        }
    }

    fn ready(self, minutes: i64, preparation_ms: i64) -> OrderReady {
        OrderReady {
            order_id: self.id.to_owned(),
            restaurant_id: self.restaurant.to_owned(),
            ticket_id: format!("ticket-{}", self.id),
            ready_at: self.placed_at + minutes * MINUTE,
            preparation_ms,
            replay_delivery_minutes: None,
        }
    }

    fn picked_up(self, minutes: i64) -> OrderPickedUp {
        OrderPickedUp {
            order_id: self.id.to_owned(),
            courier_id: "courier-1".to_owned(),
            picked_up_at: self.placed_at + minutes * MINUTE,
        }
    }

    fn delivered(self, minutes: i64, delivery_ms: i64) -> OrderDelivered {
        OrderDelivered {
            order_id: self.id.to_owned(),
            courier_id: "courier-1".to_owned(),
            delivered_at: self.placed_at + minutes * MINUTE,
            delivery_ms,
        }
    }

    fn rejected(self, reason: RejectReason) -> OrderRejected {
        OrderRejected {
            order_id: self.id.to_owned(),
            restaurant_id: self.restaurant.to_owned(),
            reason,
            detail: "closed on Mondays".to_owned(),
            rejected_at: self.placed_at + MINUTE,
        }
    }

    fn cancelled(self, minutes: i64) -> OrderCancelled {
        OrderCancelled {
            order_id: self.id.to_owned(),
            restaurant_id: self.restaurant.to_owned(),
            reason: "customer_request".to_owned(),
            cancelled_at: self.placed_at + minutes * MINUTE,
        }
    }

    fn status(self, status: &str, reason: Option<&str>, minutes: i64) -> OrderStatusChanged {
        OrderStatusChanged {
            order_id: self.id.to_owned(),
            customer_id: "customer-1".to_owned(),
            restaurant_id: self.restaurant.to_owned(),
            status: status.to_owned(),
            reason: reason.map(str::to_owned),
            total_cents: self.total_cents,
            currency: "EUR".to_owned(),
            changed_at: self.placed_at + minutes * MINUTE,
        }
    }
}

const ORDERS: &str = "/tiffin/orders";
const KITCHEN: &str = "/tiffin/kitchen";
const DELIVERY: &str = "/tiffin/delivery";

/// Publishes the life of five orders the way the services would, with repeats and
/// events out of order:
///
/// - A (restaurant-1, 10.00 EUR, minute 0): the whole happy path. Its `order.placed`,
///   `order.ready` and delivered status change are each published again under a new
///   event id.
/// - B (restaurant-1, 20.00 EUR, minute 0.5): delivered. Its ready arrived before its
///   acceptance, so the order service published no accepted status. Its delivery
///   events and status changes arrive delivered first and picked up second.
/// - C (restaurant-2, 15.00 EUR, minute 1.5): rejected because the restaurant is
///   closed.
/// - D (restaurant-2, 5.00 EUR, minute 2): accepted, then cancelled by the customer.
///   The kitchen's late ready still arrives, and the order service ignores it.
/// - E (restaurant-1, 8.00 EUR): the card was declined, so there is no `order.placed`.
async fn publish_history(fixture: &mut Fixture) {
    let a = Order {
        id: "order-a",
        restaurant: "restaurant-1",
        total_cents: 1000,
        placed_at: T0,
    };
    let b = Order {
        id: "order-b",
        restaurant: "restaurant-1",
        total_cents: 2000,
        placed_at: T0 + MINUTE / 2,
    };
    let c = Order {
        id: "order-c",
        restaurant: "restaurant-2",
        total_cents: 1500,
        placed_at: T0 + MINUTE * 3 / 2,
    };
    let d = Order {
        id: "order-d",
        restaurant: "restaurant-2",
        total_cents: 500,
        placed_at: T0 + 2 * MINUTE,
    };
    let e = Order {
        id: "order-e",
        restaurant: "restaurant-1",
        total_cents: 800,
        placed_at: T0 + 3 * MINUTE,
    };

    fixture.publish(ORDERS, &a.placed()).await;
    fixture.publish(ORDERS, &a.status("placed", None, 0)).await;
    fixture.publish(ORDERS, &a.placed()).await;
    fixture.publish(KITCHEN, &a.accepted(1)).await;
    fixture
        .publish(ORDERS, &a.status("accepted", None, 1))
        .await;
    fixture.publish(KITCHEN, &a.ready(11, 600_000)).await;
    fixture.publish(KITCHEN, &a.ready(11, 600_000)).await;
    fixture.publish(ORDERS, &a.status("ready", None, 11)).await;
    fixture.publish(DELIVERY, &a.picked_up(15)).await;
    fixture
        .publish(ORDERS, &a.status("picked_up", None, 15))
        .await;
    fixture.publish(DELIVERY, &a.delivered(30, 900_000)).await;
    fixture
        .publish(ORDERS, &a.status("delivered", None, 30))
        .await;
    fixture
        .publish(ORDERS, &a.status("delivered", None, 30))
        .await;

    fixture.publish(ORDERS, &b.placed()).await;
    fixture.publish(ORDERS, &b.status("placed", None, 0)).await;
    fixture.publish(KITCHEN, &b.ready(6, 300_000)).await;
    fixture.publish(ORDERS, &b.status("ready", None, 6)).await;
    fixture.publish(KITCHEN, &b.accepted(1)).await;
    fixture.publish(DELIVERY, &b.delivered(30, 1_200_000)).await;
    fixture
        .publish(ORDERS, &b.status("delivered", None, 30))
        .await;
    fixture.publish(DELIVERY, &b.picked_up(10)).await;
    fixture
        .publish(ORDERS, &b.status("picked_up", None, 10))
        .await;

    fixture.publish(ORDERS, &c.placed()).await;
    fixture.publish(ORDERS, &c.status("placed", None, 0)).await;
    fixture
        .publish(KITCHEN, &c.rejected(RejectReason::Closed))
        .await;
    fixture
        .publish(ORDERS, &c.status("rejected", Some("closed"), 1))
        .await;

    fixture.publish(ORDERS, &d.placed()).await;
    fixture.publish(ORDERS, &d.status("placed", None, 0)).await;
    fixture.publish(KITCHEN, &d.accepted(1)).await;
    fixture
        .publish(ORDERS, &d.status("accepted", None, 1))
        .await;
    fixture.publish(ORDERS, &d.cancelled(3)).await;
    fixture
        .publish(ORDERS, &d.status("cancelled", Some("customer_request"), 3))
        .await;
    fixture.publish(KITCHEN, &d.ready(8, 420_000)).await;

    fixture
        .publish(
            ORDERS,
            &e.status("payment_declined", Some("card_declined"), 0),
        )
        .await;
}

/// Returns the summary that [`publish_history`] leads to.
fn expected_summary() -> Summary {
    let reason = |count, rate| ReasonFigure { count, rate };
    Summary {
        orders: 4,
        ready: 3,
        revenue_cents: 5000,
        currency: Some("EUR".to_owned()),
        // Placements span minutes 0 to 2.
        orders_per_minute: 2.0,
        // A and B fall into the first minute.
        peak_orders_per_minute: 2,
        mean_preparation_ms: Some(440_000.0),
        top_restaurants: vec![
            RestaurantFigure {
                restaurant_id: "restaurant-1".to_owned(),
                orders: 2,
                revenue_cents: 3000,
            },
            RestaurantFigure {
                restaurant_id: "restaurant-2".to_owned(),
                orders: 2,
                revenue_cents: 2000,
            },
        ],
        funnel: Funnel {
            placed: 4,
            accepted: 3,
            ready: 2,
            picked_up: 2,
            delivered: 2,
            rejected: 1,
            cancelled: 1,
            payment_declined: 1,
        },
        rejections: EndingFigures {
            count: 1,
            rate: 0.25,
            by_reason: BTreeMap::from([("closed".to_owned(), reason(1, 0.25))]),
        },
        cancellations: EndingFigures {
            count: 1,
            rate: 0.25,
            by_reason: BTreeMap::from([("customer_request".to_owned(), reason(1, 0.25))]),
        },
        payment_declines: EndingFigures {
            count: 1,
            rate: 0.2,
            by_reason: BTreeMap::from([("card_declined".to_owned(), reason(1, 0.2))]),
        },
        // D's late ready counts: the distribution is of order.ready events.
        preparation_ms: Distribution {
            count: 3,
            mean: Some(440_000.0),
            p50: Some(420_000),
            p90: Some(600_000),
            p99: Some(600_000),
            max: Some(600_000),
        },
        delivery_ms: Distribution {
            count: 2,
            mean: Some(1_050_000.0),
            p50: Some(900_000),
            p90: Some(1_200_000),
            p99: Some(1_200_000),
            max: Some(1_200_000),
        },
    }
}

// === tests ===

#[tokio::test]
async fn summary_counts_every_figure() {
    let mut fixture = Fixture::new().await;
    let service = fixture.start().await;
    publish_history(&mut fixture).await;
    service.wait_for_events(fixture.published).await;
    let expected = expected_summary();

    let summary = storage::summary(&service.db).await.expect("summary");

    assert_eq!(summary.orders, expected.orders);
    assert_eq!(summary.ready, expected.ready);
    assert_eq!(summary.revenue_cents, expected.revenue_cents);
    assert_eq!(summary.currency, expected.currency);
    assert_eq!(summary.orders_per_minute, expected.orders_per_minute);
    assert_eq!(
        summary.peak_orders_per_minute,
        expected.peak_orders_per_minute
    );
    assert_eq!(summary.mean_preparation_ms, expected.mean_preparation_ms);
    assert_eq!(summary.top_restaurants, expected.top_restaurants);
    assert_eq!(summary.funnel, expected.funnel);
    assert_eq!(summary.rejections, expected.rejections);
    assert_eq!(summary.cancellations, expected.cancellations);
    assert_eq!(summary.payment_declines, expected.payment_declines);
    assert_eq!(summary.preparation_ms, expected.preparation_ms);
    assert_eq!(summary.delivery_ms, expected.delivery_ms);
    service.stop().await;
}

#[tokio::test]
async fn summary_json_has_new_figures() {
    let mut fixture = Fixture::new().await;
    let service = fixture.start().await;
    publish_history(&mut fixture).await;
    service.wait_for_events(fixture.published).await;

    let body = service.summary_json().await;

    assert_eq!(body["orders"], 4);
    assert_eq!(body["funnel"]["placed"], 4);
    assert_eq!(body["funnel"]["payment_declined"], 1);
    assert_eq!(body["rejections"]["count"], 1);
    assert_eq!(body["rejections"]["by_reason"]["closed"]["rate"], 0.25);
    assert_eq!(
        body["cancellations"]["by_reason"]["customer_request"]["count"],
        1
    );
    assert_eq!(body["payment_declines"]["rate"], 0.2);
    assert_eq!(body["preparation_ms"]["p50"], 420_000);
    assert_eq!(body["delivery_ms"]["max"], 1_200_000);
    service.stop().await;
}

#[tokio::test]
async fn rebuild_gives_same_summary() {
    let mut fixture = Fixture::new().await;
    let service = fixture.start().await;
    publish_history(&mut fixture).await;
    service.wait_for_events(fixture.published).await;
    let live = storage::summary(&service.db).await.expect("summary");
    service.stop().await;

    let rebuilt = tiffin_analytics::rebuild(&fixture.database_url(), fixture.shared_bus())
        .await
        .expect("rebuild succeeds");

    assert_eq!(rebuilt, live);
    assert_eq!(rebuilt, expected_summary());
}

#[tokio::test]
async fn empty_summary_has_nulls() {
    let fixture = Fixture::new().await;
    let service = fixture.start().await;

    let body = service.summary_json().await;

    assert_eq!(body["orders"], 0);
    assert_eq!(body["funnel"]["placed"], 0);
    assert_eq!(body["rejections"]["rate"], 0.0);
    assert_eq!(body["rejections"]["by_reason"], serde_json::json!({}));
    assert_eq!(body["preparation_ms"]["count"], 0);
    assert!(body["preparation_ms"]["p50"].is_null(), "{body}");
    assert!(body["delivery_ms"]["mean"].is_null(), "{body}");
    service.stop().await;
}

#[tokio::test]
async fn unknown_status_is_dead_lettered() {
    let mut fixture = Fixture::new().await;
    let service = fixture.start().await;
    let order = Order {
        id: "order-a",
        restaurant: "restaurant-1",
        total_cents: 1000,
        placed_at: T0,
    };
    let lost = fixture
        .publish(ORDERS, &order.status("lost", None, 0))
        .await;
    fixture
        .publish(ORDERS, &order.status("placed", None, 0))
        .await;

    // The inbox records only the event that was applied.
    service.wait_for_events(1).await;
    let dead = fixture.bus.dead_letters().await.expect("dead letters");

    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0].event_id, lost.id);
    assert!(dead[0].reason.contains("\"lost\""), "{}", dead[0].reason);
    let summary = storage::summary(&service.db).await.expect("summary");
    assert_eq!(summary.funnel.placed, 1);
    service.stop().await;
}

#[tokio::test]
async fn readyz_returns_ok() {
    let fixture = Fixture::new().await;
    let service = fixture.start().await;

    let response = service.get("/readyz").await;

    assert_eq!(response.status(), 200);
    service.stop().await;
}

#[tokio::test]
async fn postgres_rebuild_gives_same_summary() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let mut fixture = Fixture::on(db.url()).await;
    let service = fixture.start().await;
    publish_history(&mut fixture).await;
    service.wait_for_events(fixture.published).await;
    let live = storage::summary(&service.db).await.expect("summary");
    service.stop().await;

    let rebuilt = tiffin_analytics::rebuild(&fixture.database_url(), fixture.shared_bus())
        .await
        .expect("rebuild succeeds");

    assert_eq!(live, expected_summary());
    assert_eq!(rebuilt, live);
    db.close().await;
}
