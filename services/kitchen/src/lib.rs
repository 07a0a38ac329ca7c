//! The kitchen service: turns placed orders into kitchen tickets and announces when
//! the food is ready.
//!
//! It consumes `order.placed` from the work queue of consumer group `kitchen`, opens
//! one ticket per order and publishes `order.accepted` with the planned ready time.
//! Once the preparation time has passed it marks the ticket ready and publishes
//! `order.ready`. Preparation takes the kitchen's share of a replayed order's
//! order-to-door minutes, or [`Settings::default_preparation`], divided by
//! [`Settings::time_scale`] so that simulations run faster than real time.
//!
//! Events leave through the transactional outbox, and handled events are recorded in
//! the inbox, so each order gets one ticket and one `order.ready` however often its
//! event arrives.
//!
//! # Layout
//!
//! - `consumer`: the `order.placed` handler, which inserts the ticket and writes
//!   `order.accepted` to the outbox.
//! - `timer`: the ticket timer, which moves due tickets to ready and writes
//!   `order.ready` to the outbox.
//! - `routes`: `GET /v1/kitchen/tickets/{order_id}` and `GET /readyz`.
//! - `storage`: every SQL statement; `domain`: ticket states and time rules.
//! - [`Service`] wires them with the outbox relay and runs them until shutdown.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod consumer;
mod domain;
mod routes;
mod storage;
mod timer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tiffin_bus::api::{Bus, Publisher, QueueReceiver, QueueSpec};
use tiffin_bus::outbox::OutboxRelay;
use tiffin_bus::{Handler, RetryPolicy};
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::{Database, PoolSettings};
use tokio::net::TcpListener;

use crate::consumer::{CONSUMER, OrderPlacedHandler};
use crate::domain::TimeScale;
use crate::timer::TicketTimer;

pub use crate::storage::TicketCounts;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a fetched `order.placed` message stays invisible to other members of the
/// group before it is redelivered. It exceeds the default handler timeout of 20 s.
const QUEUE_LEASE: Duration = Duration::from_secs(60);

/// The kitchen's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address of the HTTP API. Port 0 picks a free port.
    pub http_addr: SocketAddr,
    /// The database URL, `sqlite://PATH?mode=rwc` or `postgres://...`.
    pub database_url: String,
    /// How many times faster than real time simulated preparation runs: 1.0 is real
    /// time, 60.0 runs one simulated minute per second. Must be a finite number
    /// greater than 0. Default 1.0.
    pub time_scale: f64,
    /// Preparation time of an order that carries no replayed order-to-door minutes,
    /// before scaling. Default 12 minutes.
    pub default_preparation: Duration,
    /// Retries, backoff and timeouts of the `order.placed` consumer.
    pub consumer: RetryPolicy,
    /// Maximum number of `order.placed` events handled at once. Must be at least 1.
    /// Default 16.
    pub concurrency: usize,
}

impl Settings {
    /// Creates settings with the given address and database and the defaults for
    /// everything else.
    pub fn new(http_addr: SocketAddr, database_url: impl Into<String>) -> Self {
        Self {
            http_addr,
            database_url: database_url.into(),
            time_scale: 1.0,
            default_preparation: Duration::from_secs(12 * 60),
            consumer: RetryPolicy::default(),
            concurrency: 16,
        }
    }
}

/// A built kitchen: database migrated, HTTP listener bound and work queue declared,
/// but nothing running until [`Service::run`].
#[derive(Debug)]
pub struct Service {
    db: Database,
    listener: TcpListener,
    http_addr: SocketAddr,
    receiver: Box<dyn QueueReceiver>,
    handler: Arc<OrderPlacedHandler>,
    relay: OutboxRelay,
    timer: TicketTimer,
    consumer: RetryPolicy,
    concurrency: usize,
}

impl Service {
    /// Validates `settings`, opens and migrates the database, binds the HTTP listener
    /// and declares the `kitchen` work queue on `bus`.
    ///
    /// The queue collects `order.placed` events from the moment this returns, even
    /// before [`Service::run`] starts consuming it.
    ///
    /// # Errors
    ///
    /// Fails when `time_scale` or `concurrency` is invalid (the message names the
    /// setting), the database cannot be opened or migrated, the address cannot be
    /// bound, or the queue cannot be declared.
    pub async fn build(settings: Settings, bus: Arc<dyn Bus>) -> anyhow::Result<Self> {
        let time_scale = TimeScale::new(settings.time_scale)?;
        if settings.concurrency == 0 {
            anyhow::bail!("invalid concurrency 0: it must be at least 1");
        }

        let db = Database::open(&settings.database_url, &PoolSettings::default(), &MIGRATOR)
            .await
            .context("failed to open the kitchen database")?;
        let listener = tiffin_runtime::http::bind(settings.http_addr).await?;
        let http_addr = listener.local_addr()?;
        let receiver = bus
            .queue(&QueueSpec {
                group: CONSUMER.to_owned(),
                event_types: vec!["order.placed".to_owned()],
                lease: QUEUE_LEASE,
            })
            .await?;

        let publisher: Arc<dyn Publisher> = bus;
        let relay = OutboxRelay::new("kitchen", db.clone(), publisher);
        let timer = TicketTimer::new(db.clone(), relay.waker());
        let handler = Arc::new(OrderPlacedHandler {
            db: db.clone(),
            time_scale,
            default_preparation: settings.default_preparation,
            relay: relay.waker(),
            timer: timer.waker(),
        });
        Ok(Self {
            db,
            listener,
            http_addr,
            receiver,
            handler,
            relay,
            timer,
            consumer: settings.consumer,
            concurrency: settings.concurrency,
        })
    }

    /// Returns the address the HTTP API listens on, with the real port when port 0
    /// was requested.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The `order.placed` handler that the consumer runs, for delivering an event
    /// without the bus. It writes to the same database and wakes the same relay and
    /// timer as the consumer.
    pub fn handler(&self) -> Arc<dyn Handler> {
        self.handler.clone()
    }

    /// A handle for counting tickets, which stays usable after [`Service::run`]
    /// returns.
    pub fn stats(&self) -> Stats {
        Stats {
            db: self.db.clone(),
        }
    }

    /// Runs the HTTP server, the `order.placed` consumer, the ticket timer and the
    /// outbox relay until `shutdown` is cancelled.
    ///
    /// Shutdown stops them one after the other. The HTTP server stops after its
    /// in-flight requests, and the consumer after its in-flight handlers, waiting up
    /// to the consumer's drain timeout. Then the timer stops. The relay stops last,
    /// because it publishes what the others wrote to the outbox before it returns.
    ///
    /// # Errors
    ///
    /// Fails when the HTTP server fails or a task panics. The other tasks are still
    /// stopped in order first.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let stop_http = CancellationToken::new();
        let stop_consumer = CancellationToken::new();
        let stop_timer = CancellationToken::new();
        let stop_relay = CancellationToken::new();

        let mut http = tokio::spawn(tiffin_runtime::http::serve(
            "kitchen",
            self.listener,
            router(self.db.clone()),
            stop_http.clone(),
        ));
        let consumer = tokio::spawn(tiffin_bus::consumer::run_queue(
            CONSUMER,
            self.receiver,
            self.handler,
            self.consumer,
            self.concurrency,
            stop_consumer.clone(),
        ));
        let timer = tokio::spawn(self.timer.run(stop_timer.clone()));
        let relay = tokio::spawn(self.relay.run(stop_relay.clone()));

        let stopped_early = tokio::select! {
            () = shutdown.cancelled() => None,
            outcome = &mut http => Some(outcome),
        };
        tracing::info!(service = "kitchen", "shutting down");
        stop_http.cancel();
        let http_outcome = match stopped_early {
            Some(outcome) => outcome,
            None => http.await,
        };
        stop_consumer.cancel();
        let consumer_outcome = consumer.await;
        stop_timer.cancel();
        let timer_outcome = timer.await;
        stop_relay.cancel();
        let relay_outcome = relay.await;
        tracing::info!(service = "kitchen", "stopped");

        http_outcome.context("the HTTP server task panicked")??;
        consumer_outcome.context("the consumer task panicked")?;
        timer_outcome.context("the ticket timer task panicked")?;
        relay_outcome.context("the outbox relay task panicked")?;
        if !shutdown.is_cancelled() {
            anyhow::bail!("the HTTP server stopped before shutdown was requested");
        }
        Ok(())
    }
}

/// Counts the kitchen's tickets for reports. Cloning shares the database pool.
#[derive(Debug, Clone)]
pub struct Stats {
    db: Database,
}

impl Stats {
    /// Counts tickets in total, per status, and the orders with more than one ticket.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be read.
    pub async fn ticket_counts(&self) -> anyhow::Result<TicketCounts> {
        storage::ticket_counts(self.db.pool()).await
    }
}

/// Builds the kitchen's HTTP API on `db`, with `/healthz`, request spans and the body
/// limit added.
pub fn router(db: Database) -> axum::Router {
    tiffin_runtime::http::with_common_layers(routes::routes(db))
}
