//! Write transactions that name keys, on a real PostgreSQL server.

use std::time::Duration;

use sqlx::Row;
use tiffin_runtime::db::{Database, PoolSettings};
use tiffin_runtime::testing::TestDatabase;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("tests/migrations");

async fn open(test_db: &TestDatabase) -> Database {
    let settings = PoolSettings {
        max_connections: 24,
        ..PoolSettings::default()
    };
    Database::open(test_db.url(), &settings, &MIGRATOR)
        .await
        .expect("database opens")
}

async fn value(db: &Database, name: &str) -> i64 {
    sqlx::query("SELECT value FROM counters WHERE name = $1")
        .bind(name)
        .fetch_one(db.pool())
        .await
        .expect("counter exists")
        .get(0)
}

/// Twenty read-then-write increments of one counter under its key lose none,
/// which READ COMMITTED alone would allow.
#[tokio::test]
async fn one_key_makes_read_decide_write_safe() {
    let Some(test_db) = TestDatabase::create().await else {
        return;
    };
    let db = open(&test_db).await;
    sqlx::query("INSERT INTO counters (name, value) VALUES ('orders', 0)")
        .execute(db.pool())
        .await
        .expect("insert");

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tx = db.begin_write_for(&["orders"]).await.expect("begin");
                let current: i64 = sqlx::query("SELECT value FROM counters WHERE name = 'orders'")
                    .fetch_one(&mut *tx)
                    .await
                    .expect("read")
                    .get(0);
                // Widen the window between reading and writing.
                tokio::time::sleep(Duration::from_millis(5)).await;
                sqlx::query("UPDATE counters SET value = $1 WHERE name = 'orders'")
                    .bind(current + 1)
                    .execute(&mut *tx)
                    .await
                    .expect("write");
                tx.commit().await.expect("commit");
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(value(&db, "orders").await, 20);

    db.close().await;
    test_db.close().await;
}

/// A transaction waits for one holding any of its keys, and not for one holding
/// other keys.
#[tokio::test]
async fn shared_key_waits_and_other_keys_do_not() {
    let Some(test_db) = TestDatabase::create().await else {
        return;
    };
    let db = open(&test_db).await;

    // Three keys: the lock statement repeats one of them, which must not block.
    let holder = tokio::time::timeout(
        Duration::from_secs(5),
        db.begin_write_for(&["order-1", "restaurant-7", "customer-4"]),
    )
    .await
    .expect("a repeated lock of the holder's own does not wait")
    .expect("begin");

    let other = tokio::time::timeout(
        Duration::from_secs(5),
        db.begin_write_for(&["order-2", "restaurant-8"]),
    )
    .await
    .expect("other keys do not wait")
    .expect("begin");
    other.commit().await.expect("commit");
    let unkeyed = tokio::time::timeout(Duration::from_secs(5), db.begin_write_for(&[]))
        .await
        .expect("no keys, no wait")
        .expect("begin");
    unkeyed.commit().await.expect("commit");

    let db_for_waiter = db.clone();
    let mut waiter = tokio::spawn(async move {
        // Listed in the other order: the locks are still taken in one order.
        let tx = db_for_waiter
            .begin_write_for(&["restaurant-7", "order-3"])
            .await
            .expect("begin");
        tx.commit().await.expect("commit");
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiter)
            .await
            .is_err(),
        "a transaction sharing restaurant-7 went ahead while another held it"
    );
    holder.commit().await.expect("commit");
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter goes ahead after the commit")
        .expect("task");

    db.close().await;
    test_db.close().await;
}
