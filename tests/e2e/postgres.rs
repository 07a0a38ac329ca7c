//! The whole system with every service on its own PostgreSQL database, replaying real
//! orders and audited like the SQLite runs.
//!
//! The databases are `tiffin_e2e_<uuid>_<service>` on the server that
//! `TIFFIN_TEST_POSTGRES_URL` names (by default the local one), created by the system
//! and dropped at the end. Without a server the test prints `skipped: ...` and passes,
//! except on CI (`CI=true`), where it fails.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Executor};
use tiffin::load::{self, LoadSettings};
use tiffin::report;
use tiffin::system::SERVICES;

use crate::helpers::TestSystem;

const DEFAULT_SERVER: &str = "postgres://tiffin:tiffin@127.0.0.1:5432/postgres";

/// Held shared by every test here that uses PostgreSQL, and exclusively by the test
/// that restarts it.
pub(crate) static POSTGRES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Connects to the test server, or returns why it cannot.
pub(crate) async fn admin() -> Result<(String, PgConnection), String> {
    let server =
        std::env::var("TIFFIN_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
    let conn = admin_at(&server).await?;
    Ok((server, conn))
}

async fn admin_at(server: &str) -> Result<PgConnection, String> {
    let options = PgConnectOptions::from_str(server).map_err(|error| error.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 5 s".to_owned()),
    }
}

/// The per-service databases of one test, `<prefix>_<service>` on `server`, dropped
/// with their open connections when the guard goes, so that a test that fails
/// leaves none behind.
pub(crate) struct TestDatabases {
    server: String,
    prefix: String,
}

impl TestDatabases {
    pub(crate) fn new(server: &str) -> Self {
        Self {
            server: server.to_owned(),
            prefix: format!("tiffin_e2e_{}", uuid::Uuid::now_v7().simple()),
        }
    }

    /// Returns the URL the system names its databases after.
    pub(crate) fn base_url(&self) -> String {
        tiffin_runtime::db::with_database(&self.server, &self.prefix)
    }
}

impl Drop for TestDatabases {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be the current-thread kind
        // or already unwinding, so the clean-up runs on a thread with its own.
        let (server, prefix) = (self.server.clone(), self.prefix.clone());
        let cleanup =
            std::thread::spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(drop_databases(&server, &prefix)),
                    Err(error) => eprintln!("failed to drop the databases {prefix}_*: {error}"),
                }
            });
        if cleanup.join().is_err() {
            eprintln!("failed to drop the databases {}_*", self.prefix);
        }
    }
}

async fn drop_databases(server: &str, prefix: &str) {
    let mut conn = match admin_at(server).await {
        Ok(conn) => conn,
        Err(reason) => {
            eprintln!("failed to drop the databases {prefix}_*: {reason}");
            return;
        }
    };
    for service in SERVICES {
        let statement = format!("DROP DATABASE IF EXISTS \"{prefix}_{service}\" WITH (FORCE)");
        if let Err(error) = conn.execute(sqlx::AssertSqlSafe(statement)).await {
            eprintln!("failed to drop database {prefix}_{service}: {error}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_orders_audit_clean_on_postgres() {
    let _shared = POSTGRES.read().await;
    let (server, _admin) = match admin().await {
        Ok(found) => found,
        Err(reason) if std::env::var("CI").is_ok_and(|value| value == "true") => {
            panic!("PostgreSQL is required on CI: {reason}; .ci/run starts it")
        }
        Err(reason) => {
            eprintln!("skipped: PostgreSQL is not available: {reason}");
            return;
        }
    };
    let test_databases = TestDatabases::new(&server);
    let base = test_databases.base_url();
    let system = TestSystem::start_with(|settings| settings.database = Some(base.clone())).await;
    let databases = system.system.databases().clone();

    let summary = load::run(LoadSettings {
        target: system.system.gateway_url.clone(),
        limit: 30,
        skip: 0,
        speed: 36_000.0,
        concurrency: 8,
        customers: 5,
        order_timeout: Duration::from_secs(60),
        cancel_rate: 0.0,
        run_id: format!("test-{}", uuid::Uuid::now_v7()),
        progress: false,
    })
    .await
    .expect("replay runs");
    system
        .system
        .wait_quiet(Duration::from_secs(60))
        .await
        .expect("system settles");
    let mut counts = report::count(&databases).await.expect("counts");
    for _ in 0..100 {
        if counts.analytics_orders == counts.placed && counts.lost == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        counts = report::count(&databases).await.expect("counts");
    }
    let audit = tiffin::audit::audit(&databases, 30_000).await;

    system.stop().await;
    drop(test_databases);

    assert_eq!(summary.placed, 30, "load summary: {summary}");
    assert_eq!(summary.failed_total(), 0, "load summary: {summary}");
    assert!(counts.is_clean(), "counts: {counts:?}");
    let audit = audit.expect("audit runs");
    assert!(audit.is_clean(), "audit:\n{audit}");
}
