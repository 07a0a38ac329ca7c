//! The order service's multi-row reads and writes on SQLite and on a real
//! PostgreSQL server.

use tiffin_bus::envelope::Envelope;
use tiffin_events::menu::MenuItemUpserted;
use tiffin_events::order::OrderStatusChanged;
use tiffin_orders::domain::{OrderStatus, PricedLine};
use tiffin_orders::storage::{self, NewOrder, StoredAddress};
use tiffin_runtime::db::{Database, PoolSettings};
use tiffin_runtime::testing::TestDatabase;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

async fn open(url: &str) -> Database {
    Database::open(url, &PoolSettings::default(), &MIGRATOR)
        .await
        .expect("database opens")
}

fn line(menu_item_id: &str, name: &str, quantity: u32, unit_price_cents: i64) -> PricedLine {
    PricedLine {
        menu_item_id: menu_item_id.to_owned(),
        name: name.to_owned(),
        quantity,
        unit_price_cents,
    }
}

/// Stores three menu items in the replica, then reads two of them and an unknown one.
async fn check_menu_items(db: &Database) {
    let mut tx = db.begin_write().await.expect("begin");
    for (id, name, price) in [
        ("soup", "Salmon soup", 1_450),
        ("pie", "Karelian pie", 350),
        ("tea", "Black tea", 250),
    ] {
        let item = MenuItemUpserted {
            menu_item_id: id.to_owned(),
            restaurant_id: "restaurant-1".to_owned(),
            restaurant_name: "Kauppahalli".to_owned(),
            name: name.to_owned(),
            price_cents: price,
            currency: "EUR".to_owned(),
            available: id != "tea",
            revision: 1,
        };
        storage::upsert_menu_item(&mut tx, &item)
            .await
            .expect("upsert");
    }
    tx.commit().await.expect("commit");

    let items = storage::menu_items(db, &["pie", "missing", "tea"])
        .await
        .expect("read");

    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items["pie"].name, "Karelian pie");
    assert_eq!(items["pie"].price_cents, 350);
    assert!(items["pie"].available);
    assert!(!items["tea"].available);
    assert!(!items.contains_key("missing"));
}

/// Stores an order of three lines with an event, as a placement does, and reads
/// the order, its lines in their order, its timeline, its key and its event back.
async fn check_order_lines(db: &Database) {
    let lines = [
        line("soup", "Salmon soup", 2, 1_450),
        line("pie", "Karelian pie", 3, 350),
        line("tea", "Black tea", 1, 250),
    ];
    let order = NewOrder {
        id: "order-1",
        status: OrderStatus::Placed,
        reason: None,
        customer_id: "customer-1",
        restaurant_id: "restaurant-1",
        total_cents: 4_200,
        currency: "EUR",
        payment_id: "payment-1",
        lines: &lines,
        address: StoredAddress {
            line1: "Eteläranta 1".to_owned(),
            city: "Helsinki".to_owned(),
            lat: 60.167,
            lon: 24.953,
        },
        replay_delivery_minutes: Some(31),
        now: 1_000,
    };
    let event = Envelope::new(
        "/tiffin/orders",
        &OrderStatusChanged {
            order_id: "order-1".to_owned(),
            customer_id: "customer-1".to_owned(),
            restaurant_id: "restaurant-1".to_owned(),
            status: "placed".to_owned(),
            reason: None,
            total_cents: 4_200,
            currency: "EUR".to_owned(),
            changed_at: 1_000,
        },
        None,
    );
    let mut tx = db.begin_write().await.expect("begin");
    storage::insert_placement(
        &mut tx,
        db.engine(),
        &order,
        "key-1",
        "hash-1",
        std::slice::from_ref(&event),
    )
    .await
    .expect("insert order");
    tx.commit().await.expect("commit");

    let stored = storage::find_order(db, "order-1")
        .await
        .expect("read")
        .expect("order exists");

    let key = storage::find_idempotency_key(db, "customer-1", "key-1")
        .await
        .expect("read key");
    let outbox: Vec<(String, String)> = sqlx::query_as("SELECT event_id, envelope FROM outbox")
        .fetch_all(db.pool())
        .await
        .expect("read outbox");

    assert_eq!(stored.lines, lines);
    assert_eq!(stored.status, OrderStatus::Placed);
    assert_eq!(stored.replay_delivery_minutes, Some(31));
    assert_eq!(stored.timeline.len(), 1);
    assert_eq!(stored.timeline[0].status, OrderStatus::Placed);
    assert_eq!(stored.timeline[0].at, 1_000);
    assert_eq!(key, Some(("order-1".to_owned(), "hash-1".to_owned())));
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].0, event.id);
    let written: Envelope = serde_json::from_str(&outbox[0].1).expect("envelope decodes");
    assert_eq!(written.id, event.id);
    // The placement responds with `record` instead of reading the order back.
    assert_eq!(
        serde_json::to_value(order.record()).expect("serializes"),
        serde_json::to_value(&stored).expect("serializes"),
    );
}

#[tokio::test]
async fn menu_and_lines_on_sqlite() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = open(&Database::sqlite_url(dir.path(), "orders")).await;

    check_menu_items(&db).await;
    check_order_lines(&db).await;
}

#[tokio::test]
async fn menu_and_lines_on_postgres() {
    let Some(test_db) = TestDatabase::create().await else {
        return;
    };
    let db = open(test_db.url()).await;

    check_menu_items(&db).await;
    check_order_lines(&db).await;
    db.close().await;
    test_db.close().await;
}
