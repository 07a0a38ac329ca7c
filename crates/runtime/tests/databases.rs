//! Creating and dropping PostgreSQL databases, on a real server.

use tiffin_runtime::db::{create_postgres_database, drop_postgres_database, with_database};
use tiffin_runtime::testing::TestDatabase;

#[tokio::test]
async fn dropped_database_can_be_created_again() {
    let Some(test_db) = TestDatabase::create().await else {
        return;
    };
    let name = format!("tiffin_test_drop_{}", uuid::Uuid::now_v7().simple());
    let url = with_database(test_db.url(), &name);

    let created = create_postgres_database(&url).await.expect("create");
    let created_twice = create_postgres_database(&url).await.expect("create again");
    drop_postgres_database(&url).await.expect("drop");
    let dropped_twice = drop_postgres_database(&url).await;
    let created_after_drop = create_postgres_database(&url).await.expect("create anew");
    drop_postgres_database(&url).await.expect("clean up");

    assert!(created, "the first create makes the database");
    assert!(!created_twice, "the second create finds it");
    assert!(
        dropped_twice.is_ok(),
        "dropping a missing database is not an error"
    );
    assert!(created_after_drop, "the drop removed it");
}
