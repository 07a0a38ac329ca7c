//! The delivery service: assigns couriers to ready orders and announces when each
//! order is picked up and delivered.
//!
//! It keeps a replica of the restaurants' positions from the catalog's
//! `restaurant.upserted` stream (group `delivery-restaurants`, read from the
//! beginning). The first time that replica contains restaurants and has read the stream
//! to its end, it creates a fleet of [`Settings::couriers`] couriers, each starting
//! at a restaurant chosen by a stable hash, so they start near restaurants. A courier
//! is free, or busy with one delivery.
//!
//! It consumes `order.ready` and `order.cancelled` from the work queue of consumer
//! group `delivery`:
//!
//! - `order.ready` creates the order's delivery and assigns the free courier nearest
//!   to the restaurant (great-circle distance), or any free courier when the replica
//!   does not know the restaurant. Without a free courier, or when older deliveries
//!   are already waiting, the delivery waits; waiting deliveries get couriers as they
//!   become free, oldest first.
//! - `order.cancelled` cancels a delivery that was not picked up yet and frees its
//!   courier. A delivery already picked up goes on. An order cancelled before it was
//!   ready gets a cancelled delivery, so its later `order.ready` creates nothing.
//!
//! # Ride times
//!
//! The courier's share of the journey is the second value of
//! `tiffin_events::order::split_replay_minutes` for a replayed order, or
//! [`Settings::default_courier_share`] for an ordinary one. From the moment a courier
//! is assigned, the first third of the share is the ride to the restaurant and the
//! other two thirds the ride to the customer, both divided by
//! [`Settings::time_scale`]:
//!
//! ```text
//! pickup_due    = assigned_at + share / 3 / time_scale
//! delivered_due = pickup_due  + 2 * share / 3 / time_scale
//! ```
//!
//! When `pickup_due` has passed, the delivery timer marks the order picked up and
//! publishes `order.picked_up`. When `delivered_due` has passed, it marks the order
//! delivered, publishes `order.delivered` (whose `delivery_ms` is the time from
//! assignment to handover) and frees the courier at the restaurant.
//!
//! Events leave through the transactional outbox, and handled events are recorded in
//! the inbox, so each order gets one delivery and each transition is announced once
//! however often an event arrives.
//!
//! # Layout
//!
//! - `consumer`: the restaurant replica and the handler of the work queue's order
//!   events.
//! - `fleet`: creating the courier fleet once; `dispatch`: assigning a courier to a
//!   delivery.
//! - `timer`: the delivery timer, which ends due rides, writes `order.picked_up` and
//!   `order.delivered` to the outbox and assigns freed couriers.
//! - `routes`: `GET /v1/delivery/orders/{order_id}`, `GET /v1/delivery/couriers` and
//!   `GET /readyz`.
//! - `storage`: every SQL statement; `domain`: statuses, ride times, distances and
//!   courier placement.
//! - [`Service`] wires them with the outbox relay and runs them until shutdown.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod consumer;
mod dispatch;
mod domain;
mod fleet;
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
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::consumer::{
    CONSUMER, ORDER_EVENTS, OrderEventsHandler, RESTAURANT_GROUP, RestaurantReplica,
};
use crate::domain::TimeScale;
use crate::timer::DeliveryTimer;

pub use crate::storage::{CourierCounts, DeliveryCounts};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a fetched order event stays invisible to other members of the group
/// before it is redelivered. It exceeds the default handler timeout of 20 s.
const QUEUE_LEASE: Duration = Duration::from_secs(60);

/// The delivery service's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address of the HTTP API. Port 0 picks a free port.
    pub http_addr: SocketAddr,
    /// The database URL, `sqlite://PATH?mode=rwc` or `postgres://...`.
    pub database_url: String,
    /// Size and acquire timeout of the database connection pool.
    pub pool: PoolSettings,
    /// How many times faster than real time simulated rides run: 1.0 is real time,
    /// 60.0 runs one simulated minute per second. Must be a finite number greater
    /// than 0. Default 1.0.
    pub time_scale: f64,
    /// Size of the courier fleet. It is read only when the fleet is created, once
    /// the restaurant replica contains restaurants, so changing it later changes
    /// nothing. Must be at least 1. Default 300.
    pub couriers: usize,
    /// The courier's share of the journey for an order that carries no replayed
    /// order-to-door minutes, before scaling. Default 18 minutes.
    pub default_courier_share: Duration,
    /// Retries, backoff and timeouts of the order-event consumer and the restaurant
    /// replica.
    pub consumer: RetryPolicy,
    /// Maximum number of order events handled at once. Must be at least 1.
    /// Default 64, so that a backlog is applied in batches of up to 64.
    pub concurrency: usize,
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
            couriers: 300,
            default_courier_share: Duration::from_secs(18 * 60),
            consumer: RetryPolicy::default(),
            concurrency: 64,
        }
    }
}

/// A built delivery service: database migrated, fleet created if the replica already
/// contains restaurants, HTTP listener bound, work queue declared and stream opened, but
/// nothing running until [`Service::run`].
#[derive(Debug)]
pub struct Service {
    db: Database,
    listener: TcpListener,
    http_addr: SocketAddr,
    orders: Box<dyn QueueReceiver>,
    restaurants: Box<dyn StreamReceiver>,
    handler: Arc<OrderEventsHandler>,
    replica: Arc<RestaurantReplica>,
    relay: OutboxRelay,
    timer: DeliveryTimer,
    consumer: RetryPolicy,
    concurrency: usize,
    couriers: usize,
}

impl Service {
    /// Validates `settings`, opens and migrates the database, creates the courier
    /// fleet if the replica already contains restaurants, binds the HTTP listener,
    /// declares the `delivery` work queue on `bus` and opens the restaurant stream.
    ///
    /// The queue collects `order.ready` and `order.cancelled` events from the moment
    /// this returns, even before [`Service::run`] starts consuming it.
    ///
    /// # Errors
    ///
    /// Fails when `time_scale`, `couriers` or `concurrency` is invalid (the message
    /// names the setting), the database cannot be opened or migrated, the address
    /// cannot be bound, or the bus cannot be subscribed to.
    pub async fn build(settings: Settings, bus: Arc<dyn Bus>) -> anyhow::Result<Self> {
        let time_scale = TimeScale::new(settings.time_scale)?;
        if settings.couriers == 0 {
            anyhow::bail!("invalid couriers 0: the fleet needs at least 1 courier");
        }
        if settings.concurrency == 0 {
            anyhow::bail!("invalid concurrency 0: it must be at least 1");
        }

        let db = Database::open(&settings.database_url, &settings.pool, &MIGRATOR)
            .await
            .context("failed to open the delivery database")?;
        fleet::create_once(&db, settings.couriers).await?;
        let listener = tiffin_runtime::http::bind(settings.http_addr).await?;
        let http_addr = listener.local_addr()?;
        let orders = bus
            .queue(&QueueSpec {
                group: CONSUMER.to_owned(),
                event_types: ORDER_EVENTS.iter().map(|t| (*t).to_owned()).collect(),
                lease: QUEUE_LEASE,
            })
            .await?;
        let restaurants = bus
            .stream(&StreamSpec {
                group: RESTAURANT_GROUP.to_owned(),
                event_types: vec!["restaurant.upserted".to_owned()],
                start: StartPosition::Beginning,
            })
            .await?;

        let publisher: Arc<dyn Publisher> = bus;
        let relay = OutboxRelay::new("delivery", db.clone(), publisher);
        let timer = DeliveryTimer::new(db.clone(), time_scale, relay.waker());
        let handler = Arc::new(OrderEventsHandler {
            db: db.clone(),
            time_scale,
            default_courier_share: settings.default_courier_share,
            timer: timer.waker(),
        });
        let replica = Arc::new(RestaurantReplica { db: db.clone() });
        Ok(Self {
            db,
            listener,
            http_addr,
            orders,
            restaurants,
            handler,
            replica,
            relay,
            timer,
            consumer: settings.consumer,
            concurrency: settings.concurrency,
            couriers: settings.couriers,
        })
    }

    /// Returns the address the HTTP API listens on, with the real port when port 0
    /// was requested.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The handler of `order.ready` and `order.cancelled` that the work-queue
    /// consumer runs, for delivering an event without the bus. It writes to the same
    /// database and wakes the same timer as the consumer.
    pub fn handler(&self) -> Arc<dyn Handler> {
        self.handler.clone()
    }

    /// A handle for counting deliveries and couriers, which stays usable after
    /// [`Service::run`] returns.
    pub fn stats(&self) -> Stats {
        Stats {
            db: self.db.clone(),
        }
    }

    /// Runs the HTTP server, the order-event consumer, the restaurant replica (and,
    /// until the fleet exists, the task that creates it), the delivery timer and the
    /// outbox relay until `shutdown` is cancelled.
    ///
    /// Shutdown stops them one after the other. The HTTP server stops after its
    /// in-flight requests. The consumer and the replica stop after their in-flight
    /// handlers, waiting up to the consumer's drain timeout. Then the timer stops. The
    /// relay stops last, because it publishes what the timer wrote to the outbox
    /// before it returns.
    ///
    /// # Errors
    ///
    /// Fails when the HTTP server fails or a task panics. The other tasks are still
    /// stopped in order first.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let stop_http = CancellationToken::new();
        let stop_consumers = CancellationToken::new();
        let stop_timer = CancellationToken::new();
        let stop_relay = CancellationToken::new();

        let mut http = tokio::spawn(tiffin_runtime::http::serve(
            "delivery",
            self.listener,
            router(self.db.clone()),
            stop_http.clone(),
        ));
        let orders = tokio::spawn(tiffin_bus::consumer::run_queue(
            CONSUMER,
            self.orders,
            self.handler,
            self.consumer.clone(),
            self.concurrency,
            stop_consumers.clone(),
        ));
        let (caught_up_tx, caught_up) = watch::channel(false);
        let restaurants = tokio::spawn(tiffin_bus::consumer::run_stream(
            RESTAURANT_GROUP,
            self.restaurants,
            self.replica,
            self.consumer,
            Some(caught_up_tx),
            stop_consumers.clone(),
        ));
        let fleet = tokio::spawn(fleet::create_when_caught_up(
            self.db.clone(),
            self.couriers,
            caught_up,
            self.timer.waker(),
            stop_consumers.clone(),
        ));
        let timer = tokio::spawn(self.timer.run(stop_timer.clone()));
        let relay = tokio::spawn(self.relay.run(stop_relay.clone()));

        let stopped_early = tokio::select! {
            () = shutdown.cancelled() => None,
            outcome = &mut http => Some(outcome),
        };
        tracing::info!(service = "delivery", "shutting down");
        stop_http.cancel();
        let http_outcome = match stopped_early {
            Some(outcome) => outcome,
            None => http.await,
        };
        stop_consumers.cancel();
        let orders_outcome = orders.await;
        let restaurants_outcome = restaurants.await;
        let fleet_outcome = fleet.await;
        stop_timer.cancel();
        let timer_outcome = timer.await;
        stop_relay.cancel();
        let relay_outcome = relay.await;
        tracing::info!(service = "delivery", "stopped");

        http_outcome.context("the HTTP server task panicked")??;
        orders_outcome.context("the order-event consumer task panicked")?;
        restaurants_outcome.context("the restaurant replica task panicked")?;
        fleet_outcome.context("the courier fleet task panicked")?;
        timer_outcome.context("the delivery timer task panicked")?;
        relay_outcome.context("the outbox relay task panicked")?;
        if !shutdown.is_cancelled() {
            anyhow::bail!("the HTTP server stopped before shutdown was requested");
        }
        Ok(())
    }
}

/// Counts the delivery service's deliveries and couriers for reports. Cloning shares
/// the database pool.
#[derive(Debug, Clone)]
pub struct Stats {
    db: Database,
}

impl Stats {
    /// Counts deliveries in total, per status, and the orders with more than one
    /// delivery.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be read.
    pub async fn delivery_counts(&self) -> anyhow::Result<DeliveryCounts> {
        storage::delivery_counts(self.db.pool()).await
    }

    /// Counts couriers in total, free and busy.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be read.
    pub async fn courier_counts(&self) -> anyhow::Result<CourierCounts> {
        storage::courier_counts(self.db.pool()).await
    }
}

/// Builds the delivery service's HTTP API on `db`, with `/healthz`, request spans and
/// the body limit added.
pub fn router(db: Database) -> axum::Router {
    tiffin_runtime::http::with_common_layers(routes::routes(db))
}
