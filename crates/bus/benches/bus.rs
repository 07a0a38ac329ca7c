//! Micro-benchmarks of the bus's hot paths: envelope encoding, the embedded
//! backend's publish and consume, and one outbox relay batch.
//!
//! Run with `cargo bench -p tiffin-bus`. The embedded cases write to a SQLite file
//! in a temporary directory with the same durable settings as production, so they
//! measure the disk's commit latency as much as the code.

use std::sync::Arc;
use std::time::Duration;

use divan::Bencher;
use tiffin_bus::api::{Publisher as _, QueueSpec, Subscriber as _};
use tiffin_bus::embedded::EmbeddedBus;
use tiffin_bus::envelope::Envelope;
use tiffin_bus::outbox::{self, OutboxRelay};
use tiffin_runtime::db::{Database, PoolSettings};

fn main() {
    divan::main();
}

fn event(n: usize) -> Envelope {
    Envelope {
        specversion: "1.0".to_owned(),
        id: uuid::Uuid::now_v7().to_string(),
        source: "/orders".to_owned(),
        event_type: "order.placed".to_owned(),
        subject: format!("order-{n}"),
        time: "2026-12-05T00:00:00Z".to_owned(),
        datacontenttype: "application/json".to_owned(),
        dataschema: "https://tiffin.dev/contracts/order.placed.v1.json".to_owned(),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
        tracestate: None,
        data: serde_json::json!({
            "order_id": format!("order-{n}"),
            "customer_id": "customer-1",
            "restaurant_id": "restaurant-1",
            "items": [{"menu_item_id": "item-1", "name": "Margherita", "quantity": 2, "unit_price_cents": 1150}],
            "total_cents": 2300,
            "currency": "EUR",
            "placed_at": 1_764_892_800_000_i64,
        }),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[divan::bench]
fn envelope_to_bytes(bencher: Bencher<'_, '_>) {
    let envelope = event(1);
    bencher.bench(|| divan::black_box(&envelope).to_bytes());
}

#[divan::bench]
fn envelope_from_bytes(bencher: Bencher<'_, '_>) {
    let bytes = event(1).to_bytes();
    bencher.bench(|| Envelope::from_bytes(divan::black_box(&bytes)).expect("decodes"));
}

/// Publishes a batch to a bus with one queue bound, as the outbox relay does.
#[divan::bench(args = [1, 64])]
fn embedded_publish(bencher: Bencher<'_, '_>, batch: usize) {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("temporary directory");
    let bus = runtime.block_on(async {
        let bus = EmbeddedBus::open(&dir.path().join("bus.db"))
            .await
            .expect("bus opens");
        bus.queue(&spec()).await.expect("queue");
        bus
    });
    let events: Vec<Envelope> = (0..batch).map(event).collect();
    // Fresh ids each time: the bus drops an event id it has already stored.
    bencher
        .with_inputs(|| events_with_new_ids(&events))
        .bench_refs(|batch| runtime.block_on(bus.publish(batch)).expect("published"));
}

/// Publishes a batch and then fetches and acks it: one trip through a work queue.
#[divan::bench(args = [1, 64])]
fn embedded_publish_fetch_ack(bencher: Bencher<'_, '_>, batch: usize) {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("temporary directory");
    let (bus, receiver) = runtime.block_on(async {
        let bus = EmbeddedBus::open(&dir.path().join("bus.db"))
            .await
            .expect("bus opens");
        let receiver = bus.queue(&spec()).await.expect("queue");
        (bus, receiver)
    });
    let receiver = std::sync::Mutex::new(receiver);
    let events: Vec<Envelope> = (0..batch).map(event).collect();
    bencher
        .with_inputs(|| events_with_new_ids(&events))
        .bench_refs(|fresh| {
            let mut receiver = receiver.lock().expect("not poisoned");
            runtime.block_on(async {
                bus.publish(fresh).await.expect("published");
                let mut left = batch;
                while left > 0 {
                    let messages = receiver
                        .fetch(left, Duration::from_secs(1))
                        .await
                        .expect("fetch");
                    left -= messages.len();
                    // Concurrently, as the consumer runner's handler tasks do.
                    let acks = messages.into_iter().map(|message| async move {
                        message.ack().await.expect("ack");
                    });
                    futures::future::join_all(acks).await;
                }
            });
        });
}

/// Publishes one relay batch of 64 outbox rows and deletes them.
#[divan::bench]
fn outbox_relay_batch(bencher: Bencher<'_, '_>) {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("temporary directory");
    let (bus, db) = runtime.block_on(async {
        let bus = EmbeddedBus::open(&dir.path().join("bus.db"))
            .await
            .expect("bus opens");
        let url = Database::sqlite_url(dir.path(), "service");
        let db = Database::open(&url, &PoolSettings::default(), &OUTBOX_ONLY)
            .await
            .expect("database opens");
        (bus, db)
    });
    let relay = OutboxRelay::new("bench", db.clone(), Arc::new(bus));
    let events: Vec<Envelope> = (0..64).map(event).collect();
    bencher
        .with_inputs(|| {
            runtime.block_on(async {
                let mut tx = db.begin_write().await.expect("transaction");
                outbox::enqueue_many(&mut tx, &events_with_new_ids(&events))
                    .await
                    .expect("enqueued");
                tx.commit().await.expect("committed");
            });
        })
        .bench_values(|()| runtime.block_on(relay.publish_batch()).expect("relayed"));
}

/// The outbox table alone, as every service's migrations create it.
static OUTBOX_ONLY: sqlx::migrate::Migrator = sqlx::migrate!("./benches/migrations");

fn events_with_new_ids(events: &[Envelope]) -> Vec<Envelope> {
    events
        .iter()
        .map(|event| Envelope {
            id: uuid::Uuid::now_v7().to_string(),
            ..event.clone()
        })
        .collect()
}

fn spec() -> QueueSpec {
    QueueSpec {
        group: "kitchen".to_owned(),
        event_types: vec!["order.*".to_owned()],
        lease: Duration::from_secs(30),
    }
}
