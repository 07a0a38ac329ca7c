//! The notifications service: notifies customers of every status change of their
//! order, from placement to delivery or an early ending.
//!
//! It consumes `order.status_changed` from the work queue of consumer group
//! `notifications`, records one notification per order and status and sends it
//! through the configured [`channel`]: the log only, or mail over SMTP. The order
//! service publishes that event only for the changes it applies, so customers follow
//! the order's history as the order service decided it, not the other services' raw
//! events.
//!
//! Delivery guarantees: the inbox, a unique `event_id` column and a unique
//! `(order_id, order_status)` index keep exactly one notification per status change
//! in the database, however often the change arrives and under however many event
//! ids. Sending happens at least once, because a send that fails or is cut off by a
//! crash is retried. So a mail server may receive a mail twice, for instance when the
//! service stops after the server accepted the mail but before the service recorded
//! it. Exactly-once delivery to an external mail server is impossible, so every mail
//! of one notification carries the same `Message-ID`, derived from the id of the
//! event that created it, by which the receiver can drop duplicates.
//!
//! # Layout
//!
//! - `consumer`: the event handler, which records the notification and sends it once.
//! - `sender`: sending and recording the outcome, and the sender loop that retries
//!   pending notifications with backoff until they are sent or marked failed.
//! - [`channel`]: the [`channel::Channel`] trait with the log and SMTP channels.
//! - `routes`: `GET /v1/notifications?order_id=...` and `GET /readyz`.
//! - `storage`: every SQL statement; `domain`: notifications, order statuses and
//!   their wording.
//! - [`Service`] wires them and runs them until shutdown.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod channel;
mod consumer;
mod domain;
mod routes;
mod sender;
mod storage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tiffin_bus::api::{Bus, QueueReceiver, QueueSpec};
use tiffin_bus::{Handler, RetryPolicy};
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::{Database, PoolSettings};
use tokio::net::TcpListener;

use crate::channel::ChannelUrl;
use crate::consumer::{CONSUMER, EVENT_TYPES, NotificationHandler};
use crate::sender::SenderLoop;

pub use crate::domain::{Notification, NotificationStatus, OrderStatus};
pub use crate::sender::SendPolicy;
pub use crate::storage::NotificationCounts;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a fetched message stays invisible to other members of the group before
/// it is redelivered. It exceeds the default handler timeout of 20 s.
const QUEUE_LEASE: Duration = Duration::from_secs(60);

/// The service's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address of the HTTP API. Port 0 picks a free port.
    pub http_addr: SocketAddr,
    /// The database URL, `sqlite://PATH?mode=rwc` or `postgres://...`.
    pub database_url: String,
    /// Size and acquire timeout of the database connection pool.
    pub pool: PoolSettings,
    /// How notifications are delivered: `log:` records and logs them only, and
    /// `smtp://HOST:PORT?from=ADDRESS&to_domain=DOMAIN` sends them as plain-text mail
    /// without TLS from `ADDRESS` to `<customer_id>@DOMAIN`. Default `log:`.
    pub channel: String,
    /// Retries, backoff and timeouts of the event consumer. Its handler timeout
    /// should exceed [`SendPolicy::timeout`], because the handler sends once.
    pub consumer: RetryPolicy,
    /// Maximum number of events handled at once. Must be at least 1. Default 64: a
    /// batch takes one slot per event, so this also bounds the batch that shares
    /// one transaction.
    pub concurrency: usize,
    /// Send timeout and retries of each notification.
    pub sender: SendPolicy,
}

impl Settings {
    /// Creates settings with the given address and database and the defaults for
    /// everything else.
    pub fn new(http_addr: SocketAddr, database_url: impl Into<String>) -> Self {
        Self {
            http_addr,
            database_url: database_url.into(),
            pool: PoolSettings::default(),
            channel: "log:".to_owned(),
            consumer: RetryPolicy::default(),
            concurrency: 64,
            sender: SendPolicy::default(),
        }
    }
}

/// A built notifications service: database migrated, HTTP listener bound and work
/// queue declared, but nothing running until [`Service::run`].
#[derive(Debug)]
pub struct Service {
    db: Database,
    listener: TcpListener,
    http_addr: SocketAddr,
    receiver: Box<dyn QueueReceiver>,
    handler: Arc<NotificationHandler>,
    sender: SenderLoop,
    consumer: RetryPolicy,
    concurrency: usize,
}

impl Service {
    /// Validates `settings`, opens and migrates the database, binds the HTTP listener
    /// and declares the `notifications` work queue on `bus`.
    ///
    /// The queue collects events from the moment this returns, even before
    /// [`Service::run`] starts consuming it.
    ///
    /// # Errors
    ///
    /// Fails when `channel`, `concurrency` or `sender.max_attempts` is invalid (the
    /// message names the setting and, for `channel`, the accepted forms), the database
    /// cannot be opened or migrated, the address cannot be bound, or the queue cannot
    /// be declared.
    pub async fn build(settings: Settings, bus: Arc<dyn Bus>) -> anyhow::Result<Self> {
        let channel_url: ChannelUrl = settings.channel.parse()?;
        if settings.concurrency == 0 {
            anyhow::bail!("invalid concurrency 0: it must be at least 1");
        }
        if settings.sender.max_attempts == 0 {
            anyhow::bail!("invalid sender.max_attempts 0: it must be at least 1");
        }

        let db = Database::open(&settings.database_url, &settings.pool, &MIGRATOR)
            .await
            .context("failed to open the notifications database")?;
        let listener = tiffin_runtime::http::bind(settings.http_addr).await?;
        let http_addr = listener.local_addr()?;
        let receiver = bus
            .queue(&QueueSpec {
                group: CONSUMER.to_owned(),
                event_types: EVENT_TYPES
                    .iter()
                    .map(|&event_type| event_type.to_owned())
                    .collect(),
                lease: QUEUE_LEASE,
            })
            .await?;

        let channel = channel_url.open(settings.sender.timeout);
        let sender = SenderLoop::new(db.clone(), channel.clone(), settings.sender.clone());
        let handler = Arc::new(NotificationHandler {
            db: db.clone(),
            channel,
            channel_name: channel_url.name(),
            policy: settings.sender,
            sender: sender.waker(),
        });
        Ok(Self {
            db,
            listener,
            http_addr,
            receiver,
            handler,
            sender,
            consumer: settings.consumer,
            concurrency: settings.concurrency,
        })
    }

    /// Returns the address the HTTP API listens on, with the real port when port 0
    /// was requested.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The event handler that the consumer runs, for delivering an event without the
    /// bus. It writes to the same database and sends through the same channel.
    pub fn handler(&self) -> Arc<dyn Handler> {
        self.handler.clone()
    }

    /// A handle for counting notifications, which stays usable after
    /// [`Service::run`] returns.
    pub fn stats(&self) -> Stats {
        Stats {
            db: self.db.clone(),
        }
    }

    /// Runs the HTTP server, the event consumer and the sender loop until `shutdown`
    /// is cancelled.
    ///
    /// Shutdown stops them one after the other. The HTTP server stops after its
    /// in-flight requests, and the consumer after its in-flight handlers and their
    /// sends, waiting up to the consumer's drain timeout. The sender loop stops last,
    /// after the send it is on. Notifications still pending are sent after the next
    /// start.
    ///
    /// # Errors
    ///
    /// Fails when the HTTP server fails or a task panics. The other tasks are still
    /// stopped in order first.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let stop_http = CancellationToken::new();
        let stop_consumer = CancellationToken::new();
        let stop_sender = CancellationToken::new();

        let mut http = tokio::spawn(tiffin_runtime::http::serve(
            "notifications",
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
        let sender = tokio::spawn(self.sender.run(stop_sender.clone()));

        let stopped_early = tokio::select! {
            () = shutdown.cancelled() => None,
            outcome = &mut http => Some(outcome),
        };
        tracing::info!(service = "notifications", "shutting down");
        stop_http.cancel();
        let http_outcome = match stopped_early {
            Some(outcome) => outcome,
            None => http.await,
        };
        stop_consumer.cancel();
        let consumer_outcome = consumer.await;
        stop_sender.cancel();
        let sender_outcome = sender.await;
        tracing::info!(service = "notifications", "stopped");

        http_outcome.context("the HTTP server task panicked")??;
        consumer_outcome.context("the consumer task panicked")?;
        sender_outcome.context("the sender loop task panicked")?;
        if !shutdown.is_cancelled() {
            anyhow::bail!("the HTTP server stopped before shutdown was requested");
        }
        Ok(())
    }
}

/// Counts notifications for reports. Cloning shares the database pool.
#[derive(Debug, Clone)]
pub struct Stats {
    db: Database,
}

impl Stats {
    /// Counts notifications in total, per event type, per delivery status and per
    /// order status, and the events and orders with more than one notification for
    /// one status change.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be read.
    pub async fn notification_counts(&self) -> anyhow::Result<NotificationCounts> {
        storage::notification_counts(self.db.pool()).await
    }
}

/// Builds the service's HTTP API on `db`, with `/healthz`, request spans and the body
/// limit added.
pub fn router(db: Database) -> axum::Router {
    tiffin_runtime::http::with_common_layers(routes::routes(db))
}
