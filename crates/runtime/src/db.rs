//! One SQL pool per service.
//!
//! Services write portable SQL (text ids, integer money in minor units, integer
//! millisecond timestamps, `$1` placeholders, `ON CONFLICT` and `RETURNING`), and run it
//! through sqlx's `Any` driver so that one code path serves SQLite and PostgreSQL.
//!
//! SQLite files are opened in WAL mode with `synchronous = FULL`, so a committed
//! transaction survives a power loss, not only a process crash.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Executor, Transaction};

/// The SQL engine behind a [`Database`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Errors from opening or migrating a database.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL's scheme is neither `sqlite:` nor `postgres:`.
    #[error(
        "unsupported database URL `{0}`: use sqlite://PATH or postgres://USER:PASSWORD@HOST/DB"
    )]
    UnsupportedUrl(String),
    /// The directory for a SQLite file could not be created.
    #[error("failed to create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error("failed to connect to {url}: {source}")]
    Connect {
        /// The URL without its password.
        url: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// Creating a PostgreSQL database failed.
    #[error("failed to create database `{name}` on {url}: {source}")]
    CreateDatabase {
        /// The database's name.
        name: String,
        /// The URL without its password.
        url: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// Dropping a PostgreSQL database failed.
    #[error("failed to drop database `{name}` on {url}: {source}")]
    DropDatabase {
        /// The database's name.
        name: String,
        /// The URL without its password.
        url: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("failed to migrate {url}: {source}")]
    Migrate {
        /// The URL without its password.
        url: String,
        /// The cause.
        source: sqlx::migrate::MigrateError,
    },
}

/// A service's own database: a connection pool plus the engine it talks to.
///
/// Cloning is cheap and shares the pool.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    /// The pool of write transactions: on SQLite one connection, so writers queue in
    /// this process instead of in SQLite's busy handler, which sleeps up to 100 ms
    /// between tries and leaves the file idle while writers wait. On PostgreSQL the
    /// same pool as `pool`.
    writer: AnyPool,
    engine: Engine,
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Maximum number of open connections.
    pub max_connections: u32,
    /// How long a caller waits for a free connection before failing.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

impl Database {
    /// Returns the URL of the SQLite file `<data_dir>/<name>.db`.
    pub fn sqlite_url(data_dir: &Path, name: &str) -> String {
        format!("sqlite://{}/{name}.db?mode=rwc", data_dir.display())
    }

    /// Opens the database at `url` and applies the service's migrations.
    ///
    /// A SQLite file and its directory are created when missing.
    ///
    /// # Errors
    ///
    /// Returns an error when the URL is not supported, the server cannot be reached or
    /// a migration fails.
    pub async fn open(
        url: &str,
        settings: &PoolSettings,
        migrator: &Migrator,
    ) -> Result<Self, OpenError> {
        sqlx::any::install_default_drivers();
        let engine = if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Engine::Postgres
        } else {
            return Err(OpenError::UnsupportedUrl(redact(url)));
        };
        if engine == Engine::Sqlite {
            create_parent_dir(url)?;
        }

        let options = AnyConnectOptions::from_str(url).map_err(|source| OpenError::Connect {
            url: redact(url),
            source,
        })?;
        let pool = pool_options(engine, settings.max_connections, settings.acquire_timeout)
            .connect_with(options.clone())
            .await
            .map_err(|source| OpenError::Connect {
                url: redact(url),
                source,
            })?;
        migrator
            .run(&pool)
            .await
            .map_err(|source| OpenError::Migrate {
                url: redact(url),
                source,
            })?;
        let writer = match engine {
            Engine::Sqlite => pool_options(engine, 1, settings.acquire_timeout)
                .connect_with(options)
                .await
                .map_err(|source| OpenError::Connect {
                    url: redact(url),
                    source,
                })?,
            Engine::Postgres => pool.clone(),
        };
        Ok(Self {
            pool,
            writer,
            engine,
        })
    }

    /// The connection pool for reads.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Returns the pool for single-statement writes outside a transaction. On SQLite its one
    /// connection is shared with [`Database::begin_write`], so such a write waits
    /// its turn in this process rather than in SQLite's busy handler.
    pub fn write_pool(&self) -> &AnyPool {
        &self.writer
    }

    /// The engine behind this database.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Begins a transaction that will write, and that runs alone among this
    /// database's write transactions.
    ///
    /// On SQLite this is `BEGIN IMMEDIATE`: a deferred transaction that reads and then
    /// writes fails with `SQLITE_BUSY` when another connection committed in between,
    /// because WAL mode cannot upgrade its stale read snapshot. Taking the write lock
    /// up front makes such transactions wait for each other instead.
    ///
    /// On PostgreSQL the transaction takes one transaction-scoped advisory lock shared
    /// by every caller of this method, for the same effect. Without it, READ COMMITTED
    /// lets two handlers read a row, decide, and both write, so the later commit
    /// silently undoes the earlier one (an order moved to `delivered` went back to
    /// `picked_up`). Prefer [`Database::begin_write_for`] where the decision depends
    /// on a few known things: this lock makes every such transaction wait in one line.
    ///
    /// # Errors
    ///
    /// Returns the driver's error when no connection is free in time, or `BEGIN` or
    /// the lock fails.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.engine {
            Engine::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
            Engine::Postgres => {
                let mut tx = self.pool.begin().await?;
                tx.execute("SELECT pg_advisory_xact_lock(7320561) IS NULL")
                    .await?;
                Ok(tx)
            }
        }
    }

    /// Begins a transaction that will write, and that waits for other transactions
    /// naming any of the same `keys` (an order id, a restaurant id).
    ///
    /// Name what the transaction reads and then decides on: two transactions that
    /// share a key run one after the other, others run side by side. With no keys the
    /// transaction takes no lock on PostgreSQL, which suits transactions whose
    /// statements are each atomic (`INSERT ... ON CONFLICT`, `UPDATE ... WHERE
    /// status = ...`). On SQLite every write transaction runs alone anyway
    /// (`BEGIN IMMEDIATE`, see [`Database::begin_write`]).
    ///
    /// On PostgreSQL each key becomes a transaction-scoped advisory lock in a space
    /// of its own (the two-integer form, so it never meets [`Database::begin_write`]'s
    /// lock). The ids are sorted and locked in that order in one statement, so two
    /// transactions cannot deadlock over their keys. Two different keys may share a
    /// lock by hash collision, which costs waiting, never correctness.
    ///
    /// # Errors
    ///
    /// As for [`Database::begin_write`].
    pub async fn begin_write_for(
        &self,
        keys: &[&str],
    ) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.engine {
            Engine::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
            Engine::Postgres => {
                let mut tx = self.pool.begin().await?;
                let locks = padded(lock_ids(keys));
                if !locks.is_empty() {
                    // The target list is evaluated left to right, so the locks are
                    // taken in ascending order. The text depends only on the number
                    // of locks, padded to a power of two, so sqlx prepares a few
                    // shapes per connection and keeps them among its cached
                    // statements, where one shape per batch size would evict them.
                    let calls: Vec<String> = (1..=locks.len())
                        .map(|i| format!("pg_advisory_xact_lock({KEYED_LOCK_SPACE}, ${i}) IS NULL"))
                        .collect();
                    let sql = format!("SELECT {}", calls.join(", "));
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for id in locks {
                        query = query.bind(id);
                    }
                    query.execute(&mut *tx).await?;
                }
                Ok(tx)
            }
        }
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// Returns the options of a pool of up to `max_connections`, with SQLite's
/// durability settings on every new connection.
fn pool_options(engine: Engine, max_connections: u32, acquire_timeout: Duration) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if engine == Engine::Sqlite {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                    )
                    .await?;
                }
                Ok(())
            })
        })
}

/// The first half of the two-integer advisory locks that [`Database::begin_write_for`]
/// takes.
const KEYED_LOCK_SPACE: i32 = 7_320_563;

/// Hashes each key to a 32-bit lock id (FNV-1a, stable across processes and
/// releases), sorted and without repeats.
fn lock_ids(keys: &[&str]) -> Vec<i32> {
    let mut ids: Vec<i32> = keys
        .iter()
        .map(|key| {
            let hash = key.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
                (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
            });
            i32::from_ne_bytes(hash.to_ne_bytes())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Returns `count` numbered placeholders from `$first` on, `$first, $first+1, ...`,
/// for statements whose rows or `IN` lists vary in number.
pub fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Repeats the last of `ids` until their number is a power of two. A transaction
/// may take an advisory lock it already holds, so the repeats change nothing.
fn padded(mut ids: Vec<i32>) -> Vec<i32> {
    if let Some(&last) = ids.last() {
        ids.resize(ids.len().next_power_of_two(), last);
    }
    ids
}

/// Creates the PostgreSQL database that `url` names unless it exists, and returns
/// true when it created it.
///
/// It connects to the server's `postgres` database with the same credentials, so the
/// role needs the `CREATEDB` attribute. The name may hold only ASCII letters, digits
/// and `_`, because it is written into the statement as an identifier.
///
/// # Errors
///
/// Returns an error when the URL is not a PostgreSQL URL with a valid database name,
/// the server cannot be reached or the statement fails. Two callers racing to create
/// the same database may see the loser fail with a unique violation.
pub async fn create_postgres_database(url: &str) -> Result<bool, OpenError> {
    use sqlx::Connection;

    let (name, mut admin) = admin_connection(url).await?;
    let create_error = |source| OpenError::CreateDatabase {
        name: name.clone(),
        url: redact(url),
        source,
    };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .map_err(create_error)?;
    if !exists {
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await
            .map_err(create_error)?;
    }
    // The connection is discarded either way; a failed goodbye changes nothing.
    let _ = admin.close().await;
    Ok(!exists)
}

/// Drops the database that `url` names, if it exists, ending the sessions still
/// connected to it (PostgreSQL 13 or newer).
///
/// # Errors
///
/// Returns an error when the URL is not a PostgreSQL URL with a valid database name,
/// the server cannot be reached or the statement fails, for example because the
/// role does not own the database.
pub async fn drop_postgres_database(url: &str) -> Result<(), OpenError> {
    use sqlx::Connection;

    let (name, mut admin) = admin_connection(url).await?;
    let dropped = admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .await;
    let _ = admin.close().await;
    dropped
        .map(|_| ())
        .map_err(|source| OpenError::DropDatabase {
            name,
            url: redact(url),
            source,
        })
}

/// Returns the database name in PostgreSQL `url` and a connection to the same
/// server's `postgres` database, from which that database can be created or
/// dropped.
async fn admin_connection(url: &str) -> Result<(String, sqlx::PgConnection), OpenError> {
    use sqlx::Connection;
    use sqlx::postgres::{PgConnectOptions, PgConnection};

    let options = PgConnectOptions::from_str(url).map_err(|source| OpenError::Connect {
        url: redact(url),
        source,
    })?;
    let name = options
        .get_database()
        .filter(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .ok_or_else(|| OpenError::UnsupportedUrl(redact(url)))?
        .to_owned();
    let admin = PgConnection::connect_with(&options.database("postgres"))
        .await
        .map_err(|source| OpenError::Connect {
            url: redact(url),
            source,
        })?;
    Ok((name, admin))
}

/// Returns true when `error` is a unique-constraint violation.
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn create_parent_dir(url: &str) -> Result<(), OpenError> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(parent) = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|source| OpenError::CreateDir {
            path: parent.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Returns the server URL `url` with its database replaced by `name`, keeping the
/// credentials and any `?` options: `postgres://u:p@host:5432/a?x=1` with `b` gives
/// `postgres://u:p@host:5432/b?x=1`. A URL without a path gains `/name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

/// Hides the password in a database URL so it can be logged.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_ids_are_sorted_stable_and_distinct() {
        assert_eq!(lock_ids(&[]), Vec::<i32>::new());
        assert_eq!(lock_ids(&["a", "b", "a"]).len(), 2);
        let ids = lock_ids(&["order-1", "restaurant-9"]);
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(ids, lock_ids(&["restaurant-9", "order-1"]));
        // FNV-1a of "a", as a signed integer.
        assert_eq!(
            lock_ids(&["a"]),
            vec![i32::from_ne_bytes(0xe40c_292c_u32.to_ne_bytes())]
        );
    }

    #[test]
    fn placeholders_count_from_first() {
        assert_eq!(placeholders(1, 0), "");
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
    }

    #[test]
    fn padded_locks_repeat_the_last() {
        assert_eq!(padded(Vec::new()), Vec::<i32>::new());
        assert_eq!(padded(vec![1]), vec![1]);
        assert_eq!(padded(vec![1, 2, 3]), vec![1, 2, 3, 3]);
        assert_eq!(padded((1..=5).collect()), vec![1, 2, 3, 4, 5, 5, 5, 5]);
    }

    #[test]
    fn redact_hides_password() {
        assert_eq!(
            redact("postgres://tiffin:secret@127.0.0.1/orders"),
            "postgres://tiffin:***@127.0.0.1/orders"
        );
        assert_eq!(redact("sqlite:///tmp/a.db"), "sqlite:///tmp/a.db");
    }

    #[test]
    fn with_database_replaces_path() {
        assert_eq!(
            with_database(
                "postgres://u:p@127.0.0.1:5432/postgres?sslmode=disable",
                "orders"
            ),
            "postgres://u:p@127.0.0.1:5432/orders?sslmode=disable"
        );
    }

    #[test]
    fn with_database_adds_missing_path() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1", "orders"),
            "postgres://u:p@127.0.0.1/orders"
        );
    }
}
