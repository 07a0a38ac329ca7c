//! The saga's batches on SQLite and on a real PostgreSQL server: a batch of
//! changes ends where applying them one at a time would.

use tiffin_bus::envelope::Envelope;
use tiffin_events::order::OrderStatusChanged;
use tiffin_orders::domain::{OrderEvent, OrderStatus, PricedLine};
use tiffin_orders::saga::{self, Change, Outcome};
use tiffin_orders::storage::{self, NewOrder, StoredAddress};
use tiffin_runtime::db::{Database, PoolSettings};
use tiffin_runtime::testing::TestDatabase;
use tiffin_runtime::trace::TraceContext;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

async fn open(url: &str) -> Database {
    Database::open(url, &PoolSettings::default(), &MIGRATOR)
        .await
        .expect("database opens")
}

async fn place(db: &Database, order_id: &str) {
    let lines = [PricedLine {
        menu_item_id: "item-1".to_owned(),
        name: "Salmon soup".to_owned(),
        quantity: 1,
        unit_price_cents: 1_450,
    }];
    let order = NewOrder {
        id: order_id,
        status: OrderStatus::Placed,
        reason: None,
        customer_id: "customer-1",
        restaurant_id: "restaurant-1",
        total_cents: 1_450,
        currency: "EUR",
        payment_id: &format!("payment-{order_id}"),
        lines: &lines,
        address: StoredAddress {
            line1: "Mannerheimintie 1".to_owned(),
            city: "Helsinki".to_owned(),
            lat: 60.17,
            lon: 24.94,
        },
        replay_delivery_minutes: None,
        now: 1_000,
    };
    let mut tx = db.begin_write().await.expect("begin");
    storage::insert_order(&mut tx, &order, &format!("key-{order_id}"), "hash")
        .await
        .expect("insert order");
    tx.commit().await.expect("commit");
}

fn change<'a>(order_id: &'a str, event: OrderEvent, event_id: &'a str, at: i64) -> Change<'a> {
    Change {
        order_id,
        event,
        at,
        reason: matches!(event, OrderEvent::Rejected).then_some("out_of_stock"),
        event_id: Some(event_id),
        trace: TraceContext::new_root(),
    }
}

/// Applies `changes` as one batch in one transaction and returns the outcomes and
/// the announced (order, status) pairs in the order they were caused.
async fn apply(db: &Database, changes: &[Change<'_>]) -> (Vec<Outcome>, Vec<(String, String)>) {
    let mut tx = db.begin_write().await.expect("begin");
    let mut events = Vec::new();
    let outcomes = saga::apply_all(&mut tx, changes, &mut events)
        .await
        .expect("apply");
    tx.commit().await.expect("commit");
    (outcomes, announced(&events))
}

fn announced(events: &[Envelope]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|event| event.event_type == "order.status_changed")
        .map(|event| {
            let data = event.decode::<OrderStatusChanged>().expect("decodes");
            (data.order_id, data.status)
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(order, status)| ((*order).to_owned(), (*status).to_owned()))
        .collect()
}

async fn timeline(db: &Database, order_id: &str) -> Vec<String> {
    let order = storage::find_order(db, order_id)
        .await
        .expect("read")
        .expect("order exists");
    let mut statuses: Vec<String> = order
        .timeline
        .iter()
        .map(|entry| entry.status.as_str().to_owned())
        .collect();
    statuses.sort();
    statuses
}

async fn payment_steps(db: &Database) -> Vec<(String, String)> {
    let mut steps: Vec<(String, String)> = storage::due_payment_actions(db, i64::MAX, 100)
        .await
        .expect("read steps")
        .into_iter()
        .map(|step| (step.order_id, step.action))
        .collect();
    steps.sort();
    steps
}

/// Several changes to one order in a batch, a rejection, a repeat, a change that
/// contradicts an earlier one in the same batch, and an unknown order.
async fn check_mixed_batch(db: &Database) {
    place(db, "a").await;
    place(db, "b").await;
    let (outcomes, events) = apply(
        db,
        &[
            change("a", OrderEvent::Accepted, "e1", 2_000),
            change("a", OrderEvent::Ready, "e2", 3_000),
            change("b", OrderEvent::Rejected, "e3", 2_500),
            change("a", OrderEvent::Accepted, "e4", 2_100),
            change("nobody", OrderEvent::Accepted, "e5", 2_000),
            change("b", OrderEvent::Accepted, "e6", 2_600),
        ],
    )
    .await;

    assert_eq!(
        outcomes,
        [
            Outcome::Moved {
                from: OrderStatus::Placed,
                to: OrderStatus::Accepted
            },
            Outcome::Moved {
                from: OrderStatus::Accepted,
                to: OrderStatus::Ready
            },
            Outcome::Moved {
                from: OrderStatus::Placed,
                to: OrderStatus::Rejected
            },
            Outcome::Stale(OrderStatus::Ready),
            Outcome::UnknownOrder,
            Outcome::Illegal(OrderStatus::Rejected),
        ]
    );
    assert_eq!(
        events,
        pairs(&[("a", "accepted"), ("a", "ready"), ("b", "rejected")])
    );
    assert_eq!(timeline(db, "a").await, ["accepted", "placed", "ready"]);
    assert_eq!(timeline(db, "b").await, ["placed", "rejected"]);
    assert_eq!(payment_steps(db).await, pairs(&[("b", "void")]));
}

/// Changes that arrive out of order across batches: a late step joins the
/// timeline once, and delivery adds the capture step.
async fn check_late_steps(db: &Database) {
    place(db, "c").await;
    let (outcomes, events) = apply(db, &[change("c", OrderEvent::Ready, "f1", 3_000)]).await;
    assert_eq!(
        outcomes,
        [Outcome::Moved {
            from: OrderStatus::Placed,
            to: OrderStatus::Ready
        }]
    );
    assert_eq!(events, pairs(&[("c", "ready")]));

    let (outcomes, events) = apply(
        db,
        &[
            change("c", OrderEvent::Accepted, "f2", 2_000),
            change("c", OrderEvent::Delivered, "f3", 5_000),
            change("c", OrderEvent::PickedUp, "f4", 4_000),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        [
            Outcome::Stale(OrderStatus::Ready),
            Outcome::Moved {
                from: OrderStatus::Ready,
                to: OrderStatus::Delivered
            },
            Outcome::Stale(OrderStatus::Delivered),
        ]
    );
    assert_eq!(
        events,
        pairs(&[("c", "accepted"), ("c", "delivered"), ("c", "picked_up")])
    );

    // The same steps again, as another deployment's duplicates would arrive: the
    // timeline has them, so nothing is announced twice.
    let (_, events) = apply(
        db,
        &[
            change("c", OrderEvent::Accepted, "f5", 2_000),
            change("c", OrderEvent::PickedUp, "f6", 4_000),
        ],
    )
    .await;
    assert!(events.is_empty(), "announced again: {events:?}");

    let order = storage::find_order(db, "c")
        .await
        .expect("read")
        .expect("order");
    assert_eq!(order.status, OrderStatus::Delivered);
    assert_eq!(
        timeline(db, "c").await,
        ["accepted", "delivered", "picked_up", "placed", "ready"]
    );
    assert!(
        payment_steps(db)
            .await
            .contains(&("c".to_owned(), "capture".to_owned()))
    );
}

/// More orders than one statement takes.
async fn check_large_batch(db: &Database) {
    let ids: Vec<String> = (0..612).map(|n| format!("bulk-{n}")).collect();
    for id in &ids {
        place(db, id).await;
    }
    let event_ids: Vec<String> = ids.iter().map(|id| format!("event-{id}")).collect();
    let changes: Vec<Change<'_>> = ids
        .iter()
        .zip(&event_ids)
        .map(|(id, event_id)| change(id, OrderEvent::Accepted, event_id, 2_000))
        .collect();
    let (outcomes, events) = apply(db, &changes).await;
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, Outcome::Moved { .. })),
        "not all moved"
    );
    assert_eq!(events.len(), ids.len());
    let counts = storage::count_by_status(db).await.expect("count");
    assert!(
        counts.contains(&("accepted".to_owned(), 612)),
        "counts: {counts:?}"
    );
}

#[tokio::test]
async fn batches_on_sqlite() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = open(&Database::sqlite_url(dir.path(), "orders")).await;

    check_mixed_batch(&db).await;
    check_late_steps(&db).await;
    check_large_batch(&db).await;
}

#[tokio::test]
async fn batches_on_postgres() {
    let Some(test_db) = TestDatabase::create().await else {
        return;
    };
    let db = open(test_db.url()).await;

    check_mixed_batch(&db).await;
    check_late_steps(&db).await;
    check_large_batch(&db).await;
    db.close().await;
    test_db.close().await;
}
