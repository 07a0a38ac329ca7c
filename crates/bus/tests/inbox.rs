//! The inbox on SQLite and on a real PostgreSQL server.

use std::collections::HashSet;

use tiffin_bus::inbox;
use tiffin_runtime::db::{Database, PoolSettings};
use tiffin_runtime::testing::TestDatabase;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("tests/migrations");

async fn open(url: &str) -> Database {
    Database::open(url, &PoolSettings::default(), &MIGRATOR)
        .await
        .expect("database opens")
}

fn set(ids: &[&str]) -> HashSet<String> {
    ids.iter().map(|id| (*id).to_owned()).collect()
}

/// Records ids in two transactions, the first with a duplicate and the second
/// overlapping the first, then one id on its own.
async fn check_record_many(db: &Database) {
    let mut tx = db.begin_write().await.expect("begin");
    let first = inbox::record_many(&mut tx, "kitchen", &["a", "b", "a"])
        .await
        .expect("record");
    tx.commit().await.expect("commit");
    let mut tx = db.begin_write().await.expect("begin");
    let second = inbox::record_many(&mut tx, "kitchen", &["b", "c"])
        .await
        .expect("record");
    let other_consumer = inbox::record_many(&mut tx, "delivery", &["b"])
        .await
        .expect("record");
    let c_again = inbox::record(&mut tx, "kitchen", "c")
        .await
        .expect("record");
    tx.commit().await.expect("commit");

    assert_eq!(first, set(&["a", "b"]));
    assert_eq!(second, set(&["c"]));
    assert_eq!(other_consumer, set(&["b"]));
    assert!(!c_again, "c was recorded by record_many");
}

/// More ids than one statement takes.
async fn check_many_statements(db: &Database) {
    let ids: Vec<String> = (0..1_234).map(|n| format!("event-{n}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();

    let mut tx = db.begin_write().await.expect("begin");
    let new = inbox::record_many(&mut tx, "analytics", &refs)
        .await
        .expect("record");
    let again = inbox::record_many(&mut tx, "analytics", &refs[1_000..])
        .await
        .expect("record");
    tx.commit().await.expect("commit");

    assert_eq!(new.len(), 1_234);
    assert!(again.is_empty(), "{} recorded twice", again.len());
}

/// Rolled back ids are not recorded.
async fn check_rollback(db: &Database) {
    let mut tx = db.begin_write().await.expect("begin");
    inbox::record_many(&mut tx, "orders", &["x"])
        .await
        .expect("record");
    tx.rollback().await.expect("rollback");
    let mut tx = db.begin_write().await.expect("begin");
    let after = inbox::record_many(&mut tx, "orders", &["x"])
        .await
        .expect("record");
    tx.commit().await.expect("commit");

    assert_eq!(after, set(&["x"]));
}

#[tokio::test]
async fn record_many_on_sqlite() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = open(&Database::sqlite_url(dir.path(), "inbox")).await;

    check_record_many(&db).await;
    check_many_statements(&db).await;
    check_rollback(&db).await;
}

#[tokio::test]
async fn record_many_on_postgres() {
    let Some(test_db) = TestDatabase::create().await else {
        return;
    };
    let db = open(test_db.url()).await;

    check_record_many(&db).await;
    check_many_statements(&db).await;
    check_rollback(&db).await;
}
