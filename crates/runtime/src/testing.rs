//! Test support: a fresh PostgreSQL database per test.
//!
//! [`TestDatabase::create`] makes a database named `tiffin_test_<uuid>` on the
//! server that `TIFFIN_TEST_POSTGRES_URL` names (default
//! [`DEFAULT_ADMIN_URL`]), and the guard drops it again, so tests never share
//! state and leave nothing behind. The role needs the `CREATEDB` attribute.
//!
//! A developer without PostgreSQL still gets a passing test run: `create` prints
//! `skipped: ...` and returns `None`. On CI (`CI=true`) a missing server is a
//! failure instead, so the PostgreSQL tests cannot be skipped unnoticed.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor};

/// The server URL used when `TIFFIN_TEST_POSTGRES_URL` is not set.
pub const DEFAULT_ADMIN_URL: &str = "postgres://tiffin:tiffin@127.0.0.1:5432/postgres";

/// How long to wait for the server before calling it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A database that exists for one test.
///
/// Dropping the guard drops the database with `DROP DATABASE ... WITH (FORCE)`,
/// which closes connections still open to it; [`TestDatabase::close`] does the same
/// without blocking the runtime. Both are best effort: a failure is printed, not
/// raised, because the test's own result matters more than the clean-up.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
    admin: PgConnectOptions,
    dropped: bool,
}

impl TestDatabase {
    /// Creates a fresh, empty database.
    ///
    /// Returns `None` after printing `skipped: <reason>` when the server cannot be
    /// reached or refuses the login; the caller's test then returns early.
    ///
    /// # Panics
    ///
    /// Panics when the server cannot be reached and the `CI` variable is `true`,
    /// and when a reachable server refuses to create the database.
    pub async fn create() -> Option<Self> {
        let admin_url = std::env::var("TIFFIN_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let admin = PgConnectOptions::from_str(&admin_url)
            .unwrap_or_else(|error| panic!("TIFFIN_TEST_POSTGRES_URL is not valid: {error}"))
            .disable_statement_logging();
        let mut conn = match connect(&admin).await {
            Ok(conn) => conn,
            Err(reason) => {
                let redacted = crate::db::redact(&admin_url);
                if std::env::var("CI").is_ok_and(|value| value == "true") {
                    panic!(
                        "PostgreSQL is required on CI but {redacted} failed: {reason}; \
                         start it with `pg_ctlcluster --skip-systemctl-redirect \
                         $(ls /etc/postgresql) main start` and create the role with \
                         `CREATE ROLE tiffin LOGIN PASSWORD 'tiffin' CREATEDB` (.ci/run does both)"
                    );
                }
                eprintln!("skipped: PostgreSQL at {redacted} is not available: {reason}");
                return None;
            }
        };

        let name = format!("tiffin_test_{}", uuid::Uuid::now_v7().simple());
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await
            .unwrap_or_else(|error| panic!("failed to create database {name}: {error}"));
        let _ = conn.close().await;

        let url = crate::db::with_database(&admin_url, &name);
        Some(Self {
            name,
            url,
            admin_url,
            admin,
            dropped: false,
        })
    }

    /// Returns the database's URL, password included, for `Database::open`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Returns the URL of a database named `<this database>_<suffix>`, created on
    /// first call and dropped with this one, for tests that need several databases.
    ///
    /// # Panics
    ///
    /// Panics when the server refuses to create it.
    pub async fn sibling(&self, suffix: &str) -> String {
        let name = format!("{}_{suffix}", self.name);
        let url = crate::db::with_database(&self.admin_url, &name);
        crate::db::create_postgres_database(&url)
            .await
            .unwrap_or_else(|error| panic!("failed to create database {name}: {error}"));
        url
    }

    /// Drops the database and its siblings, closing connections still open to them.
    pub async fn close(mut self) {
        self.dropped = true;
        drop_databases(&self.admin, &self.name).await;
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Drop cannot await, and the test's runtime may be the current-thread kind
        // that `block_in_place` rejects, so the clean-up runs on its own thread.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let cleanup =
            std::thread::spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(drop_databases(&admin, &name)),
                    Err(error) => eprintln!("failed to drop database {name}: {error}"),
                }
            });
        let _ = cleanup.join();
    }
}

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
    }
}

/// Drops `name` and every `name_*` sibling.
async fn drop_databases(admin: &PgConnectOptions, name: &str) {
    let mut conn = match connect(admin).await {
        Ok(conn) => conn,
        Err(error) => {
            eprintln!("failed to drop database {name}: {error}");
            return;
        }
    };
    // `_` is a LIKE wildcard, so siblings are matched by prefix instead.
    let siblings: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE left(datname, $1) = $2")
            .bind(i32::try_from(name.len() + 1).unwrap_or(i32::MAX))
            .bind(format!("{name}_"))
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
    for database in siblings.iter().map(String::as_str).chain([name]) {
        let statement = format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)");
        if let Err(error) = conn.execute(sqlx::AssertSqlSafe(statement)).await {
            eprintln!("failed to drop database {database}: {error}");
        }
    }
    let _ = conn.close().await;
}
