//! The kitchen service: decides placed orders, turns accepted ones into kitchen
//! tickets and announces when the food is ready.
//!
//! It consumes `order.placed` and `order.cancelled` from the work queue of consumer
//! group `kitchen`. The checks on a placed order run in this order, and the first
//! that fails rejects it:
//!
//! - `closed`: the restaurant's opening hours exclude the order's local time;
//! - `sold_out`: an item has less stock than ordered;
//! - `at_capacity`: the restaurant already prepares
//!   [`Settings::capacity_per_restaurant`] orders;
//! - `kitchen_declined`: a random draw falls under [`Settings::reject_rate`].
//!
//! A rejection publishes `order.rejected` with the reason. An order that passes every
//! check is accepted: its items are taken from stock and `order.accepted` carries the
//! planned ready time. Once the preparation time has passed the ticket becomes ready
//! and `order.ready` is published. Preparation takes the kitchen's share of a
//! replayed order's order-to-door minutes, or [`Settings::default_preparation`],
//! divided by [`Settings::time_scale`] so that simulations run faster than real time.
//!
//! A cancellation stops an accepted ticket before it is ready and returns its stock.
//! One that arrives before its order leaves a cancelled ticket, so the order is never
//! decided.
//!
//! Opening hours come from a replica of the catalog's `restaurant.upserted` stream,
//! parsed with `tiffin_hours`. A restaurant without hours, with hours outside the
//! supported syntax, or not yet in the replica gets its amenity's default hours.
//!
//! Events leave through the transactional outbox, and handled events are recorded in
//! the inbox, so each order gets one ticket, one decision and at most one
//! `order.ready` however often its events arrive.
//!
//! # Layout
//!
//! - `consumer`: the order handler, which decides `order.placed` into a ticket and
//!   writes `order.accepted` or `order.rejected` to the outbox, and applies
//!   `order.cancelled`.
//! - `replica`: the restaurant replica, fed by the `restaurant.upserted` stream.
//! - `timer`: the ticket timer, which moves due tickets to ready and writes
//!   `order.ready` to the outbox.
//! - `routes`: `GET /v1/kitchen/tickets/{order_id}`, `GET /readyz`, and the staff
//!   stock routes `PUT /v1/kitchen/restaurants/{restaurant_id}/stock/{menu_item_id}`
//!   and `GET /v1/kitchen/restaurants/{restaurant_id}/stock`.
//! - `storage`: every SQL statement; `domain`: ticket states, time rules, the
//!   decision and stock rules.
//! - [`Service`] wires them with the outbox relay and runs them until shutdown.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod consumer;
mod domain;
mod replica;
mod routes;
mod storage;
mod timer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tiffin_bus::api::{
    Bus, Publisher, QueueReceiver, QueueSpec, StartPosition, StreamReceiver, StreamSpec,
};
use tiffin_bus::outbox::OutboxRelay;
use tiffin_bus::{Handler, RetryPolicy};
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::{Database, PoolSettings};
use tiffin_runtime::token::TokenVerifier;
use tokio::net::TcpListener;

use crate::consumer::{CONSUMER, ORDER_EVENTS, OrderHandler};
use crate::domain::decision::Limits;
use crate::domain::{RejectRate, TimeScale};
use crate::replica::{REPLICA_GROUP, RestaurantReplica};
use crate::timer::TicketTimer;

pub use crate::storage::TicketCounts;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a fetched order event stays invisible to other members of the group
/// before it is redelivered. It exceeds the default handler timeout of 20 s.
const QUEUE_LEASE: Duration = Duration::from_secs(60);

/// How long [`Service::build`] keeps trying to fetch the auth key set, so the kitchen
/// can start while the auth service is still starting.
const JWKS_DEADLINE: Duration = Duration::from_secs(30);

/// The kitchen's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address of the HTTP API. Port 0 picks a free port.
    pub http_addr: SocketAddr,
    /// The database URL, `sqlite://PATH?mode=rwc` or `postgres://...`.
    pub database_url: String,
    /// Size and acquire timeout of the database connection pool.
    pub pool: PoolSettings,
    /// How many times faster than real time simulated preparation runs: 1.0 is real
    /// time, 60.0 runs one simulated minute per second. Must be a finite number
    /// greater than 0. Default 1.0.
    pub time_scale: f64,
    /// Preparation time of an order that carries no replayed order-to-door minutes,
    /// before scaling. Default 12 minutes.
    pub default_preparation: Duration,
    /// Retries, backoff and timeouts of the order consumer and the restaurant
    /// replica.
    pub consumer: RetryPolicy,
    /// Maximum number of order events handled at once. Must be at least 1.
    /// Default 64: a batch takes one slot per event, so this also bounds the batch
    /// that shares one transaction.
    pub concurrency: usize,
    /// The auth service's JSON Web Key Set URL, such as
    /// `http://127.0.0.1:8080/v1/auth/jwks`, which verifies the staff tokens of the
    /// stock routes. Default `None`: the stock routes return 503.
    pub jwks_url: Option<String>,
    /// The restaurants' offset from UTC in minutes east of Greenwich, which turns the
    /// current time into local time for opening hours when an order carries no
    /// replayed local time. From -720 to 840. Default 120, Helsinki's winter time.
    /// There is no daylight saving time: in summer Helsinki is at 180.
    pub utc_offset_minutes: i32,
    /// Maximum number of orders a restaurant prepares at once (its accepted
    /// tickets). An order beyond it is rejected as `at_capacity`. Must be at least 1.
    /// Default 25.
    pub capacity_per_restaurant: u32,
    /// The share of orders, from 0.0 to 1.0, that pass every other check and are
    /// still declined as `kitchen_declined`, to simulate kitchens that turn orders
    /// down. Default 0.0.
    pub reject_rate: f64,
}

impl Settings {
    /// Creates settings with the given address and database and the defaults for
    /// everything else.
    pub fn new(http_addr: SocketAddr, database_url: impl Into<String>) -> Self {
        Self {
            http_addr,
            database_url: database_url.into(),
            pool: PoolSettings::default(),
            time_scale: 1.0,
            default_preparation: Duration::from_secs(12 * 60),
            consumer: RetryPolicy::default(),
            concurrency: 64,
            jwks_url: None,
            utc_offset_minutes: 120,
            capacity_per_restaurant: 25,
            reject_rate: 0.0,
        }
    }
}

/// A built kitchen: database migrated, key set fetched, HTTP listener bound, work
/// queue declared and restaurant stream opened, but nothing running until
/// [`Service::run`].
#[derive(Debug)]
pub struct Service {
    db: Database,
    verifier: Option<TokenVerifier>,
    listener: TcpListener,
    http_addr: SocketAddr,
    receiver: Box<dyn QueueReceiver>,
    handler: Arc<OrderHandler>,
    restaurants: Box<dyn StreamReceiver>,
    relay: OutboxRelay,
    timer: TicketTimer,
    consumer: RetryPolicy,
    concurrency: usize,
}

impl Service {
    /// Validates `settings`, opens and migrates the database, fetches the auth key
    /// set from `jwks_url` when set, binds the HTTP listener, declares the `kitchen`
    /// work queue and opens the restaurant stream on `bus`.
    ///
    /// The queue collects order events from the moment this returns, even before
    /// [`Service::run`] starts consuming it.
    ///
    /// # Errors
    ///
    /// Fails when `time_scale`, `concurrency`, `utc_offset_minutes`,
    /// `capacity_per_restaurant` or `reject_rate` is invalid, and the message names
    /// the setting. Also fails when the database cannot be opened or migrated, the key
    /// set cannot be fetched within 30 s, the address cannot be bound, or the queue or
    /// stream cannot be opened.
    pub async fn build(settings: Settings, bus: Arc<dyn Bus>) -> anyhow::Result<Self> {
        let time_scale = TimeScale::new(settings.time_scale)?;
        if settings.concurrency == 0 {
            anyhow::bail!("invalid concurrency 0: it must be at least 1");
        }
        let utc_offset_minutes = domain::validate_utc_offset(settings.utc_offset_minutes)?;
        if settings.capacity_per_restaurant == 0 {
            anyhow::bail!(
                "invalid capacity_per_restaurant 0: it must be at least 1, the number of \
                 orders a restaurant prepares at once"
            );
        }
        let limits = Limits {
            capacity_per_restaurant: settings.capacity_per_restaurant,
            reject_rate: RejectRate::new(settings.reject_rate)?,
        };

        let db = Database::open(&settings.database_url, &settings.pool, &MIGRATOR)
            .await
            .context("failed to open the kitchen database")?;
        let verifier = match &settings.jwks_url {
            Some(url) => Some(TokenVerifier::fetch(url, JWKS_DEADLINE).await?),
            None => None,
        };
        let listener = tiffin_runtime::http::bind(settings.http_addr).await?;
        let http_addr = listener.local_addr()?;
        let receiver = bus
            .queue(&QueueSpec {
                group: CONSUMER.to_owned(),
                event_types: ORDER_EVENTS
                    .iter()
                    .map(|&event_type| event_type.to_owned())
                    .collect(),
                lease: QUEUE_LEASE,
            })
            .await?;
        let restaurants = bus
            .stream(&StreamSpec {
                group: REPLICA_GROUP.to_owned(),
                event_types: vec!["restaurant.upserted".to_owned()],
                start: StartPosition::Beginning,
            })
            .await?;

        let publisher: Arc<dyn Publisher> = bus;
        let relay = OutboxRelay::new("kitchen", db.clone(), publisher);
        let timer = TicketTimer::new(db.clone(), relay.waker());
        let handler = Arc::new(OrderHandler {
            db: db.clone(),
            time_scale,
            default_preparation: settings.default_preparation,
            limits,
            utc_offset_minutes,
            relay: relay.waker(),
            timer: timer.waker(),
        });
        Ok(Self {
            db,
            verifier,
            listener,
            http_addr,
            receiver,
            handler,
            restaurants,
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

    /// The order handler that the consumer runs, for delivering an `order.placed` or
    /// `order.cancelled` event without the bus. It writes to the same database and
    /// wakes the same relay and timer as the consumer.
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

    /// Runs the HTTP server, the order consumer, the restaurant replica, the ticket
    /// timer and the outbox relay until `shutdown` is cancelled.
    ///
    /// Shutdown stops them one after the other. The HTTP server stops after its
    /// in-flight requests, and the order consumer after its in-flight handlers,
    /// waiting up to the consumer's drain timeout. Then the replica, after the batch
    /// it is applying, and the timer stop. The relay stops last, because it publishes
    /// what the others wrote to the outbox before it returns.
    ///
    /// # Errors
    ///
    /// Fails when the HTTP server fails or a task panics. The other tasks are still
    /// stopped in order first.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let stop_http = CancellationToken::new();
        let stop_consumer = CancellationToken::new();
        let stop_replica = CancellationToken::new();
        let stop_timer = CancellationToken::new();
        let stop_relay = CancellationToken::new();

        let mut http = tokio::spawn(tiffin_runtime::http::serve(
            "kitchen",
            self.listener,
            router(self.db.clone(), self.verifier),
            stop_http.clone(),
        ));
        let consumer = tokio::spawn(tiffin_bus::consumer::run_queue(
            CONSUMER,
            self.receiver,
            self.handler,
            self.consumer.clone(),
            self.concurrency,
            stop_consumer.clone(),
        ));
        let replica = tokio::spawn(tiffin_bus::consumer::run_stream(
            REPLICA_GROUP,
            self.restaurants,
            Arc::new(RestaurantReplica {
                db: self.db.clone(),
            }),
            self.consumer,
            None,
            stop_replica.clone(),
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
        stop_replica.cancel();
        let replica_outcome = replica.await;
        stop_timer.cancel();
        let timer_outcome = timer.await;
        stop_relay.cancel();
        let relay_outcome = relay.await;
        tracing::info!(service = "kitchen", "stopped");

        http_outcome.context("the HTTP server task panicked")??;
        consumer_outcome.context("the consumer task panicked")?;
        replica_outcome.context("the restaurant replica task panicked")?;
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

    /// Counts the restaurants in the replica. The replica trails the catalog's
    /// stream, so a restaurant published a moment ago may be missing.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be read.
    pub async fn replica_restaurants(&self) -> anyhow::Result<i64> {
        storage::count_restaurants(self.db.pool()).await
    }
}

/// Builds the kitchen's HTTP API on `db`, with `/healthz`, request spans and the body
/// limit added. `verifier` checks the staff tokens of the stock routes; without it
/// those routes return 503.
pub fn router(db: Database, verifier: Option<TokenVerifier>) -> axum::Router {
    tiffin_runtime::http::with_common_layers(routes::routes(db, verifier))
}
