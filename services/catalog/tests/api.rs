//! The catalog service over real HTTP on 127.0.0.1, with a temporary SQLite file and a
//! real embedded bus. One test runs the main path on a fresh PostgreSQL database.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tiffin_bus::api::{StartPosition, StreamSpec, Subscriber};
use tiffin_bus::embedded::EmbeddedBus;
use tiffin_catalog::{Service, Settings, seed};
use tiffin_events::menu::MenuItemUpserted;
use tiffin_events::restaurant::RestaurantUpserted;
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;
use tiffin_runtime::testing::TestDatabase;
use tokio::task::JoinHandle;

/// A catalog serving on a port of its own, over a database and bus in `dir`.
struct TestApp {
    dir: TempDir,
    bus: EmbeddedBus,
    addr: SocketAddr,
    menu_items: i64,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    client: reqwest::Client,
}

impl TestApp {
    /// Starts a catalog on a fresh database and bus.
    async fn spawn() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory can be created");
        let bus = EmbeddedBus::open(&dir.path().join("bus.db"))
            .await
            .expect("the bus opens");
        Self::start(dir, bus).await
    }

    /// Starts a catalog over the database and bus that `dir` already contains.
    async fn start(dir: TempDir, bus: EmbeddedBus) -> Self {
        let database_url = Database::sqlite_url(dir.path(), "catalog");
        Self::start_on(dir, bus, database_url).await
    }

    /// Starts a catalog over the bus in `dir` and the database at `database_url`.
    async fn start_on(dir: TempDir, bus: EmbeddedBus, database_url: String) -> Self {
        let settings = Settings {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url,
            pool: tiffin_runtime::db::PoolSettings::default(),
        };
        let service = Service::build(settings, Arc::new(bus.clone()))
            .await
            .expect("the catalog builds");
        let addr = service.http_addr();
        let menu_items = service
            .menu_item_count()
            .await
            .expect("menu items are counted");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(service.run(shutdown.clone()));
        Self {
            dir,
            bus,
            addr,
            menu_items,
            shutdown,
            task,
            client: reqwest::Client::new(),
        }
    }

    /// Stops the catalog, which flushes its outbox, and hands back its files.
    async fn stop(self) -> (TempDir, EmbeddedBus) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("the catalog task does not panic")
            .expect("the catalog stops cleanly");
        (self.dir, self.bus)
    }

    /// Waits until the bus log contains `count` events.
    async fn wait_for_events(&self, count: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let stored = self
                .bus
                .event_count()
                .await
                .expect("the bus log is readable");
            if stored >= count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {stored} of {count} events were published"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.client
            .get(format!("http://{}{path_and_query}", self.addr))
            .send()
            .await
            .expect("the catalog answers")
    }

    async fn get_json(&self, path_and_query: &str) -> (reqwest::StatusCode, Value) {
        let response = self.get(path_and_query).await;
        let status = response.status();
        let body = response.json::<Value>().await.expect("the body is JSON");
        (status, body)
    }

    /// Follows `next_cursor` from the first page of `query` to the last and returns
    /// the ids in the order received.
    async fn walk_ids(&self, query: &str) -> Vec<String> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(cursor) => format!("/v1/restaurants?{query}&cursor={cursor}"),
                None => format!("/v1/restaurants?{query}"),
            };
            let (status, page) = self.get_json(&path).await;
            assert_eq!(status, 200, "{path}: {page}");
            for item in page["items"].as_array().expect("items is an array") {
                ids.push(item["id"].as_str().expect("id is a string").to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return ids,
            }
        }
    }
}

fn seed_item_count() -> i64 {
    let catalog = seed::catalog().expect("the seed catalog builds");
    catalog.iter().map(|entry| entry.menu.len() as i64).sum()
}

/// Reads every `menu.item.upserted` event in the log from the beginning.
async fn read_upserted_events(bus: &EmbeddedBus) -> Vec<MenuItemUpserted> {
    let spec = StreamSpec {
        group: "test-reader".to_owned(),
        event_types: vec!["menu.item.upserted".to_owned()],
        start: StartPosition::Beginning,
    };
    let mut stream = bus.stream(&spec).await.expect("the stream opens");
    let mut events = Vec::new();
    loop {
        let batch = stream
            .fetch(1000, Duration::from_millis(200))
            .await
            .expect("the stream is readable");
        if batch.is_empty() {
            return events;
        }
        for message in batch {
            events.push(
                message
                    .envelope
                    .decode::<MenuItemUpserted>()
                    .expect("the payload decodes"),
            );
        }
    }
}

#[tokio::test]
async fn first_start_publishes_every_item() {
    let app = TestApp::spawn().await;
    let expected = seed_item_count();

    app.wait_for_events(app.menu_items + SEED_RESTAURANTS).await;
    let (_dir, bus) = app.stop().await;
    let events = read_upserted_events(&bus).await;

    let ids = events
        .iter()
        .map(|event| event.menu_item_id.as_str())
        .collect::<HashSet<_>>();
    assert_eq!(events.len() as i64, expected);
    assert_eq!(ids.len() as i64, expected);
}

#[tokio::test]
async fn first_start_stores_every_item() {
    let app = TestApp::spawn().await;

    let stored = app.menu_items;

    assert_eq!(stored, seed_item_count());
    app.stop().await;
}

#[tokio::test]
async fn seeded_event_carries_item() {
    let app = TestApp::spawn().await;
    app.wait_for_events(app.menu_items + SEED_RESTAURANTS).await;
    let (_dir, bus) = app.stop().await;

    let events = read_upserted_events(&bus).await;

    let first = events
        .iter()
        .find(|event| event.menu_item_id == "node-1369465542-1")
        .expect("the first item of Amin's cafe is published");
    assert_eq!(first.restaurant_id, "node-1369465542");
    assert_eq!(first.restaurant_name, "Amin's cafe");
    assert_eq!(first.name, "Spanish olives");
    assert_eq!(first.price_cents, 720);
    assert_eq!(first.currency, "EUR");
    assert!(first.available);
    assert_eq!(first.revision, 1);
}

#[tokio::test]
async fn restart_publishes_nothing_new() {
    let app = TestApp::spawn().await;
    app.wait_for_events(app.menu_items + SEED_RESTAURANTS).await;
    let (dir, bus) = app.stop().await;
    let published = bus.event_count().await.expect("the bus log is readable");

    let restarted = TestApp::start(dir, bus).await;
    let items_after_restart = restarted.menu_items;
    let (_dir, bus) = restarted.stop().await;

    assert_eq!(items_after_restart, seed_item_count());
    assert_eq!(
        bus.event_count().await.expect("the bus log is readable"),
        published
    );
}

#[tokio::test]
async fn pagination_walks_every_restaurant() {
    let app = TestApp::spawn().await;

    let ids = app.walk_ids("limit=100").await;

    let distinct = ids.iter().collect::<HashSet<_>>();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids.len(), 1465);
    assert_eq!(distinct.len(), ids.len());
    assert_eq!(sorted, ids);
    app.stop().await;
}

#[tokio::test]
async fn pagination_defaults_to_twenty() {
    let app = TestApp::spawn().await;

    let (status, page) = app.get_json("/v1/restaurants").await;

    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(20));
    assert_eq!(page["next_cursor"], page["items"][19]["id"]);
    app.stop().await;
}

#[tokio::test]
async fn filter_by_cuisine_ignores_case() {
    let app = TestApp::spawn().await;
    let catalog = seed::catalog().expect("the seed catalog builds");
    let expected = catalog
        .iter()
        .filter(|entry| {
            entry
                .restaurant
                .cuisines
                .iter()
                .any(|c| c.eq_ignore_ascii_case("pizza"))
        })
        .count();

    let ids = app.walk_ids("cuisine=PIZZA&limit=50").await;

    assert!(expected > 0);
    assert_eq!(ids.len(), expected);
    for id in &ids {
        let (_, restaurant) = app.get_json(&format!("/v1/restaurants/{id}")).await;
        let cuisines = restaurant["cuisines"]
            .as_array()
            .expect("cuisines is an array");
        assert!(
            cuisines
                .iter()
                .any(|c| c.as_str().is_some_and(|c| c.eq_ignore_ascii_case("pizza"))),
            "{id} has cuisines {cuisines:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn filter_by_cuisine_matches_second_value() {
    let app = TestApp::spawn().await;
    let catalog = seed::catalog().expect("the seed catalog builds");
    let expected = catalog
        .iter()
        .filter(|entry| {
            entry.restaurant.cuisines.len() > 1
                && entry.restaurant.cuisines[1..].iter().any(|c| c == "kebab")
        })
        .map(|entry| entry.restaurant.id.clone())
        .collect::<HashSet<_>>();

    let ids = app.walk_ids("cuisine=kebab&limit=100").await;

    assert!(!expected.is_empty());
    assert!(
        expected.iter().all(|id| ids.contains(id)),
        "missing from {ids:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn filter_by_city_ignores_case() {
    let app = TestApp::spawn().await;

    let helsinki = app.walk_ids("city=HELSINKI&limit=100").await;
    let (status, espoo) = app.get_json("/v1/restaurants?city=Espoo").await;

    assert_eq!(helsinki.len(), 1465);
    assert_eq!(status, 200);
    assert_eq!(espoo["items"], Value::Array(Vec::new()));
    assert_eq!(espoo["next_cursor"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn restaurant_has_documented_shape() {
    let app = TestApp::spawn().await;

    let (status, restaurant) = app.get_json("/v1/restaurants/node-6139262633").await;

    assert_eq!(status, 200);
    assert_eq!(restaurant["id"], "node-6139262633");
    assert_eq!(restaurant["name"], "Arnolds");
    assert_eq!(restaurant["amenity"], "cafe");
    assert_eq!(restaurant["cuisines"], serde_json::json!(["coffee_shop"]));
    assert_eq!(restaurant["lat"], 60.1688675);
    assert_eq!(restaurant["lon"], 24.9381756);
    assert_eq!(
        restaurant["opening_hours"],
        "Mo-Fr 08:00-20:00; Sa 09:00-18:00; Su 12:00-18:00"
    );
    assert_eq!(
        restaurant["address"],
        serde_json::json!({
            "street": "Mannerheimintie",
            "housenumber": "20",
            "postcode": "00100",
            "city": "Helsinki",
        })
    );
    app.stop().await;
}

#[tokio::test]
async fn missing_values_are_null() {
    let app = TestApp::spawn().await;

    let (_, restaurant) = app.get_json("/v1/restaurants/node-1369465542").await;

    assert_eq!(restaurant["cuisines"], Value::Array(Vec::new()));
    assert_eq!(restaurant["opening_hours"], Value::Null);
    assert_eq!(restaurant["address"]["street"], Value::Null);
    assert_eq!(restaurant["address"]["postcode"], "00100");
    app.stop().await;
}

#[tokio::test]
async fn menu_lists_items_in_order() {
    let app = TestApp::spawn().await;

    let (status, menu) = app.get_json("/v1/restaurants/node-1369465542/menu").await;

    let items = menu["items"].as_array().expect("items is an array");
    let ids = items
        .iter()
        .map(|item| item["id"].as_str().unwrap_or_default())
        .collect::<Vec<_>>();
    let expected = (1..=10)
        .map(|k| format!("node-1369465542-{k}"))
        .collect::<Vec<_>>();
    assert_eq!(status, 200);
    assert_eq!(menu["restaurant_id"], "node-1369465542");
    assert_eq!(ids, expected);
    assert_eq!(
        items[0],
        serde_json::json!({
            "id": "node-1369465542-1",
            "name": "Spanish olives",
            "price_cents": 720,
            "currency": "EUR",
            "available": true,
        })
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_restaurant_is_404() {
    let app = TestApp::spawn().await;

    let response = app.get("/v1/restaurants/node-0").await;
    let content_type = response.headers()["content-type"].clone();
    let status = response.status();
    let problem = response.json::<Value>().await.expect("the body is JSON");

    assert_eq!(status, 404);
    assert_eq!(content_type, "application/problem+json");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("`node-0`")),
        "{problem}"
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_restaurant_menu_is_404() {
    let app = TestApp::spawn().await;

    let (status, problem) = app.get_json("/v1/restaurants/way-0/menu").await;

    assert_eq!(status, 404);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("`way-0`")),
        "{problem}"
    );
    app.stop().await;
}

#[tokio::test]
async fn invalid_limit_is_400() {
    let app = TestApp::spawn().await;

    for limit in ["0", "101", "ten", "-5"] {
        let (status, problem) = app
            .get_json(&format!("/v1/restaurants?limit={limit}"))
            .await;

        assert_eq!(status, 400, "limit={limit}");
        assert_eq!(problem["field"], "limit", "limit={limit}");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|detail| detail.contains(&format!("`{limit}`"))),
            "limit={limit}: {problem}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn readyz_answers_ok() {
    let app = TestApp::spawn().await;

    let response = app.get("/readyz").await;

    assert_eq!(response.status(), 200);
    app.stop().await;
}

/// Restaurants in the shipped OpenStreetMap extract.
const SEED_RESTAURANTS: i64 = 1465;

#[tokio::test]
async fn first_start_publishes_every_restaurant() {
    let app = TestApp::spawn().await;
    app.wait_for_events(app.menu_items + SEED_RESTAURANTS).await;
    let (_dir, bus) = app.stop().await;

    let spec = StreamSpec {
        group: "test-restaurants".to_owned(),
        event_types: vec!["restaurant.upserted".to_owned()],
        start: StartPosition::Beginning,
    };
    let mut stream = bus.stream(&spec).await.expect("the stream opens");
    let mut restaurants = Vec::new();
    loop {
        let batch = stream
            .fetch(1000, Duration::from_millis(200))
            .await
            .expect("the stream is readable");
        if batch.is_empty() {
            break;
        }
        for message in batch {
            restaurants.push(
                message
                    .envelope
                    .decode::<RestaurantUpserted>()
                    .expect("the payload decodes"),
            );
        }
    }

    assert_eq!(restaurants.len() as i64, SEED_RESTAURANTS);
    let arnolds = restaurants
        .iter()
        .find(|r| r.restaurant_id == "node-6139262633")
        .expect("Arnolds is published");
    assert_eq!(arnolds.amenity, "cafe");
    assert_eq!(
        arnolds.opening_hours.as_deref(),
        Some("Mo-Fr 08:00-20:00; Sa 09:00-18:00; Su 12:00-18:00")
    );
}

#[tokio::test]
async fn postgres_serves_seeded_catalog() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory can be created");
    let bus = EmbeddedBus::open(&dir.path().join("bus.db"))
        .await
        .expect("the bus opens");
    let app = TestApp::start_on(dir, bus, db.url().to_owned()).await;

    let ids = app.walk_ids("cuisine=PIZZA&limit=50").await;

    assert_eq!(app.menu_items, seed_item_count());
    assert!(!ids.is_empty());
    app.wait_for_events(app.menu_items + SEED_RESTAURANTS).await;
    app.stop().await;
    db.close().await;
}
