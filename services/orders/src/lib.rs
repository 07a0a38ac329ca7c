//! The order service: places orders and follows each one through its life.
//!
//! Placing an order is request/response end to end: the customer waits while the
//! service prices the items from its own replica of the menus, authorizes the payment
//! over gRPC and stores the order with its `order.placed` event (transactional
//! outbox). Everything after that arrives as events: the kitchen's progress moves
//! the order through its states.
//!
//! # Layout
//!
//! - [`domain`]: request validation, pricing and the order state machine.
//! - [`place`]: the placement steps, from request to stored order.
//! - [`payments`]: the gRPC client of the payment service.
//! - [`routes`]: the REST handlers.
//! - [`consumer`]: the menu replica (a stream reader) and the lifecycle (a work
//!   queue).
//! - [`saga`]: how a change moves an order and what it sets in motion.
//! - [`compensation`]: the worker that voids and captures payments.
//! - [`storage`]: the SQL.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod admission;
pub mod compensation;
pub mod consumer;
pub mod domain;
pub mod payments;
pub mod place;
pub mod routes;
pub mod saga;
pub mod storage;
pub mod unclaimed;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use tiffin_bus::RetryPolicy;
use tiffin_bus::api::{Bus, Publisher, QueueSpec, StartPosition, StreamSpec};
use tiffin_bus::consumer::{run_queue, run_stream};
use tiffin_bus::outbox::OutboxRelay;
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::{Database, PoolSettings};
use tiffin_runtime::token::TokenVerifier;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::admission::{Admission, AdmissionSettings};
use crate::compensation::PaymentWorker;
use crate::consumer::{LIFECYCLE_EVENTS, LIFECYCLE_GROUP, MENU_GROUP, MenuReplica, OrderLifecycle};
use crate::payments::PaymentsGateway;

/// The CloudEvents `source` of this service's events.
pub const SOURCE: &str = "/tiffin/orders";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Settings of the order service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the REST API listens; port 0 picks a free port.
    pub http_addr: SocketAddr,
    /// The order database, `sqlite://...` or `postgres://...`.
    pub database_url: String,
    /// Size and acquire timeout of the database connection pool.
    pub pool: PoolSettings,
    /// The auth service's key set, for example `http://127.0.0.1:8081/v1/auth/jwks`.
    pub jwks_url: String,
    /// The payment service's gRPC endpoint, for example `http://127.0.0.1:8084`.
    pub payments_url: String,
    /// Deadline of one authorization, retries included. Default 500 ms.
    pub payment_deadline: Duration,
    /// Retries and timeouts of the lifecycle and replica consumers.
    pub consumer: RetryPolicy,
    /// Lifecycle events handled at once. Default 256: a batch takes one slot per
    /// event, so this bounds the two batches in flight together. Each lifecycle
    /// event costs a few rows in one multi-row statement, and with 64 about 1,000
    /// events waited in the queue through a benchmark run.
    pub concurrency: usize,
    /// A fault for tests: exit the process right after payments confirms a void or
    /// capture, before recording it. Default false.
    pub fault_exit_after_payment_step: bool,
    /// How long an authorization that timed out waits for a retry with the same
    /// Idempotency-Key before the payment worker voids it. Default 60 s.
    pub release_unclaimed_after: Duration,
    /// When new orders are rejected because the kitchen's decisions fall behind.
    pub admission: AdmissionSettings,
}

impl Settings {
    /// Settings with the defaults for everything but the addresses.
    pub fn new(
        http_addr: SocketAddr,
        database_url: String,
        jwks_url: String,
        payments_url: String,
    ) -> Self {
        Self {
            http_addr,
            database_url,
            pool: PoolSettings::default(),
            jwks_url,
            payments_url,
            payment_deadline: Duration::from_millis(500),
            consumer: RetryPolicy::default(),
            concurrency: 256,
            fault_exit_after_payment_step: false,
            release_unclaimed_after: Duration::from_secs(60),
            admission: AdmissionSettings::default(),
        }
    }
}

/// The state the REST handlers share. Cloning is cheap: every field is a handle.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The order database.
    pub db: Database,
    /// Verifies access tokens.
    pub verifier: TokenVerifier,
    /// The payment client.
    pub payments: PaymentsGateway,
    /// Wakes the outbox relay after a commit.
    pub relay_waker: Arc<Notify>,
    /// Wakes the payment worker after a commit that added a payment step.
    pub compensation_waker: Arc<Notify>,
    /// True once the menu replica has read the catalog's stream to its end.
    pub replica_caught_up: watch::Receiver<bool>,
    /// How long a timed-out authorization waits for a retry before it is voided.
    pub release_unclaimed_after: Duration,
    /// Rejects new orders while the kitchen's decisions fall behind.
    pub admission: Admission,
}

impl FromRef<AppState> for TokenVerifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// A built order service, ready to run.
#[derive(Debug)]
pub struct Service {
    state: AppState,
    listener: TcpListener,
    http_addr: SocketAddr,
    bus: Arc<dyn Bus>,
    relay: OutboxRelay,
    settings: Settings,
    caught_up: watch::Sender<bool>,
}

impl Service {
    /// Opens the database, fetches the auth key set, binds the listener and declares
    /// the lifecycle queue.
    ///
    /// # Errors
    ///
    /// Fails when the database, the auth key set or the bus cannot be reached, or the
    /// address is taken.
    pub async fn build(settings: Settings, bus: Arc<dyn Bus>) -> anyhow::Result<Self> {
        let db = Database::open(&settings.database_url, &settings.pool, &MIGRATOR).await?;
        let verifier = TokenVerifier::fetch(&settings.jwks_url, Duration::from_secs(30)).await?;
        let payments = PaymentsGateway::new(&settings.payments_url, settings.payment_deadline)?;
        let listener = tiffin_runtime::http::bind(settings.http_addr).await?;
        let http_addr = listener.local_addr()?;

        let publisher: Arc<dyn Publisher> = bus.clone();
        let relay = OutboxRelay::new("orders", db.clone(), publisher);
        let (caught_up, replica_caught_up) = watch::channel(false);
        let state = AppState {
            db,
            verifier,
            payments,
            relay_waker: relay.waker(),
            compensation_waker: Arc::new(Notify::new()),
            replica_caught_up,
            release_unclaimed_after: settings.release_unclaimed_after,
            admission: Admission::new(settings.admission),
        };
        Ok(Self {
            state,
            listener,
            http_addr,
            bus,
            relay,
            settings,
            caught_up,
        })
    }

    /// The address the REST API listens on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The order database, for reports and tests.
    pub fn database(&self) -> Database {
        self.state.db.clone()
    }

    /// Serves requests and handles events until `shutdown` is cancelled.
    ///
    /// Shutdown order: the HTTP server stops taking requests and finishes those in
    /// flight; the consumers finish their handlers; then the outbox relay publishes
    /// what is left.
    ///
    /// # Errors
    ///
    /// Fails when a subscription cannot be opened or the server fails.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let lifecycle_rx = self
            .bus
            .queue(&QueueSpec {
                group: LIFECYCLE_GROUP.to_owned(),
                event_types: LIFECYCLE_EVENTS.iter().map(|t| (*t).to_owned()).collect(),
                lease: Duration::from_secs(60),
            })
            .await?;
        let menu_rx = self
            .bus
            .stream(&StreamSpec {
                group: MENU_GROUP.to_owned(),
                event_types: vec!["menu.item.upserted".to_owned()],
                start: StartPosition::Beginning,
            })
            .await?;

        let consumers = CancellationToken::new();
        let relay_stop = CancellationToken::new();
        let lifecycle = tokio::spawn(run_queue(
            LIFECYCLE_GROUP,
            lifecycle_rx,
            Arc::new(OrderLifecycle::new(
                self.state.db.clone(),
                self.state.relay_waker.clone(),
                self.state.compensation_waker.clone(),
            )),
            self.settings.consumer.clone(),
            self.settings.concurrency,
            consumers.clone(),
        ));
        let menu = tokio::spawn(run_stream(
            MENU_GROUP,
            menu_rx,
            Arc::new(MenuReplica::new(self.state.db.clone())),
            self.settings.consumer.clone(),
            Some(self.caught_up),
            consumers.clone(),
        ));
        let worker_stop = CancellationToken::new();
        let worker = tokio::spawn(
            PaymentWorker::new(
                self.state.db.clone(),
                self.state.payments.clone(),
                self.state.compensation_waker.clone(),
                self.settings.fault_exit_after_payment_step,
            )
            .run(worker_stop.clone()),
        );
        let relay_reader = self.relay.clone();
        let relay = tokio::spawn(self.relay.run(relay_stop.clone()));
        let admission = tokio::spawn(self.state.admission.clone().watch(
            self.state.db.clone(),
            relay_reader,
            worker_stop.clone(),
        ));

        let router = tiffin_runtime::http::with_common_layers(routes::router(self.state.clone()));
        let served =
            tiffin_runtime::http::serve("orders", self.listener, router, shutdown.clone()).await;

        consumers.cancel();
        let _ = tokio::join!(lifecycle, menu);
        worker_stop.cancel();
        let _ = tokio::join!(worker, admission);
        relay_stop.cancel();
        let _ = relay.await;
        self.state.db.close().await;
        served
    }
}
