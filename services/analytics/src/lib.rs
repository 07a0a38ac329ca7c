//! The analytics service: live figures projected from the order event stream.
//!
//! It reads every order event from the start of the stream at its own pace, folds
//! them into one row per order and one row per order and status reported by
//! `order.status_changed`, and computes the figures from those rows when asked.
//! The figures depend only on event data (event times, not the time of reading), so
//! [`rebuild`] — deleting the projection and replaying the stream from the start —
//! gives the same figures.
//!
//! # Layout
//!
//! - [`consumer`]: the projection handler.
//! - [`storage`]: the SQL, including the summary's aggregates.
//! - [`domain`]: order statuses and the figures computed from counts and stored
//!   values (funnel, early endings, distributions).
//! - [`routes`]: `GET /v1/analytics/summary`.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod consumer;
pub mod domain;
pub mod routes;
pub mod storage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tiffin_bus::RetryPolicy;
use tiffin_bus::api::{Bus, StartPosition, StreamSpec};
use tiffin_bus::consumer::run_stream;
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::{Database, PoolSettings};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::consumer::Projection;

/// The stream group of the live projection.
pub const GROUP: &str = "analytics";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Settings of the analytics service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the REST API listens; port 0 picks a free port.
    pub http_addr: SocketAddr,
    /// The analytics database, `sqlite://...` or `postgres://...`.
    pub database_url: String,
    /// Size and acquire timeout of the database connection pool.
    pub pool: PoolSettings,
    /// Retries of the stream reader.
    pub consumer: RetryPolicy,
}

impl Settings {
    /// Settings with the default retry policy.
    pub fn new(http_addr: SocketAddr, database_url: String) -> Self {
        Self {
            http_addr,
            database_url,
            pool: PoolSettings::default(),
            consumer: RetryPolicy::default(),
        }
    }
}

/// A built analytics service, ready to run.
#[derive(Debug)]
pub struct Service {
    db: Database,
    listener: TcpListener,
    http_addr: SocketAddr,
    bus: Arc<dyn Bus>,
    settings: Settings,
}

impl Service {
    /// Opens the database and binds the listener.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be opened or the address is taken.
    pub async fn build(settings: Settings, bus: Arc<dyn Bus>) -> anyhow::Result<Self> {
        let db = Database::open(&settings.database_url, &settings.pool, &MIGRATOR).await?;
        let listener = tiffin_runtime::http::bind(settings.http_addr).await?;
        let http_addr = listener.local_addr()?;
        Ok(Self {
            db,
            listener,
            http_addr,
            bus,
            settings,
        })
    }

    /// The address the REST API listens on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The analytics database, for reports and tests.
    pub fn database(&self) -> Database {
        self.db.clone()
    }

    /// Serves the figures and reads the stream until `shutdown` is cancelled.
    ///
    /// # Errors
    ///
    /// Fails when the stream cannot be opened or the server fails.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let receiver = self
            .bus
            .stream(&StreamSpec {
                group: GROUP.to_owned(),
                event_types: vec!["order.*".to_owned()],
                start: StartPosition::Beginning,
            })
            .await?;
        let reader_stop = CancellationToken::new();
        let reader = tokio::spawn(run_stream(
            GROUP,
            receiver,
            Arc::new(Projection::new(self.db.clone())),
            self.settings.consumer.clone(),
            None,
            reader_stop.clone(),
        ));

        let router = tiffin_runtime::http::with_common_layers(routes::router(self.db.clone()));
        let served =
            tiffin_runtime::http::serve("analytics", self.listener, router, shutdown).await;

        reader_stop.cancel();
        let _ = reader.await;
        self.db.close().await;
        served
    }
}

/// Rebuilds the projection in `database_url` by replaying the whole order stream.
///
/// Deletes the projection and its inbox, then reads the stream from the start under a
/// new, one-off group until it has caught up, and returns the resulting figures. Run it
/// while the live service is stopped: events the live reader handles meanwhile would
/// be counted once but could interleave with the reset.
///
/// # Errors
///
/// Fails when the database or the bus fails.
pub async fn rebuild(database_url: &str, bus: Arc<dyn Bus>) -> anyhow::Result<storage::Summary> {
    let db = Database::open(database_url, &PoolSettings::default(), &MIGRATOR).await?;
    storage::reset(&db).await?;

    let group = format!("{GROUP}-rebuild-{}", uuid::Uuid::now_v7());
    let receiver = bus
        .stream(&StreamSpec {
            group: group.clone(),
            event_types: vec!["order.*".to_owned()],
            start: StartPosition::Beginning,
        })
        .await?;
    let (caught_up_tx, mut caught_up) = watch::channel(false);
    let stop = CancellationToken::new();
    let reader = tokio::spawn(run_stream(
        "analytics-rebuild",
        receiver,
        Arc::new(Projection::new(db.clone())),
        RetryPolicy::default(),
        Some(caught_up_tx),
        stop.clone(),
    ));

    let waited =
        tokio::time::timeout(Duration::from_secs(600), caught_up.wait_for(|done| *done)).await;
    stop.cancel();
    let _ = reader.await;
    match waited {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => {
            anyhow::bail!("the rebuild reader stopped before reaching the end of the stream")
        }
        Err(_) => {
            anyhow::bail!("the rebuild did not reach the end of the stream within 10 minutes")
        }
    }

    let summary = storage::summary(&db).await?;
    db.close().await;
    Ok(summary)
}
