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
        let pool = AnyPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
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
            .connect_with(options)
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
        Ok(Self { pool, engine })
    }

    /// The connection pool, for reads and single-statement writes.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The engine behind this database.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Begins a transaction that will write.
    ///
    /// On SQLite this is `BEGIN IMMEDIATE`: a deferred transaction that reads and then
    /// writes fails with `SQLITE_BUSY` when another connection committed in between,
    /// because WAL mode cannot upgrade its stale read snapshot. Taking the write lock
    /// up front makes such transactions wait for each other instead.
    ///
    /// # Errors
    ///
    /// Returns the driver's error when no connection is free in time or `BEGIN` fails.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.engine {
            Engine::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Engine::Postgres => self.pool.begin().await,
        }
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
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
    fn redact_hides_password() {
        assert_eq!(
            redact("postgres://tiffin:secret@127.0.0.1/orders"),
            "postgres://tiffin:***@127.0.0.1/orders"
        );
        assert_eq!(redact("sqlite:///tmp/a.db"), "sqlite:///tmp/a.db");
    }
}
