//! The payments service: card authorizations, captures and voids over gRPC
//! (`payments.v1.Payments` in `proto/payments/v1/payments.proto`).
//!
//! Every Authorize carries a caller-chosen idempotency key. The first call with a key
//! goes to a simulated card processor and stores its decision. Every later call with
//! that key returns the stored payment unchanged, so callers may retry freely. Each
//! state change writes a row to an append-only ledger in the same transaction.
//!
//! # Layout
//!
//! - [`Service`]: binds the gRPC listener, opens the database and serves until
//!   shut down.
//! - `grpc`: the RPC handlers, which validate requests and map outcomes to status
//!   codes.
//! - `ledger`: the operations, which apply the rules of `domain` to stored payments.
//! - `domain`: request validation, payment states and the allowed transitions.
//! - `processor`: the simulated card processor ([`ProcessorSettings`]).
//! - `storage`: every SQL statement. The schema is in `migrations/`.
//! - [`Reports`]: read-only counts for run reports.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod domain;
mod grpc;
mod ledger;
mod processor;
mod reports;
mod storage;

use std::net::SocketAddr;

use anyhow::Context;
use tiffin_proto::payments::v1::payments_server::PaymentsServer;
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::{Database, PoolSettings};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::task::TaskTracker;

pub use crate::domain::{EntryKind, PaymentStatus};
pub use crate::processor::{ProcessorSettings, SettingsError};
pub use crate::reports::{LedgerEntry, ReferenceCount, Reports, StatusCounts};

/// The database schema, applied when the service or [`Reports`] opens the database.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Startup settings of the payments service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The gRPC listen address. Port 0 picks a free port, which
    /// [`Service::grpc_addr`] returns.
    pub grpc_addr: SocketAddr,
    /// The payments database, such as
    /// `tiffin_runtime::db::Database::sqlite_url(data_dir, "payments")` or a
    /// `postgres://` URL.
    pub database_url: String,
    /// Size and acquire timeout of the database connection pool.
    pub pool: PoolSettings,
    /// Settings of the simulated card processor.
    pub processor: ProcessorSettings,
}

/// A payments service with its listener bound and its database migrated, ready to
/// [`run`](Service::run).
#[derive(Debug)]
pub struct Service {
    listener: TcpListener,
    grpc_addr: SocketAddr,
    db: Database,
    api: grpc::PaymentsApi,
    /// Authorizations that finish after their caller has gone. [`Service::run`]
    /// waits for them before returning.
    tasks: TaskTracker,
}

impl Service {
    /// Validates the settings, opens the database (applying migrations) and binds
    /// the gRPC listener.
    ///
    /// # Errors
    ///
    /// Fails when a processor rate is outside 0.0 to 1.0, the database cannot be
    /// opened or migrated, or the address cannot be bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.processor.validate()?;

        let db = Database::open(&settings.database_url, &settings.pool, &MIGRATOR)
            .await
            .context("failed to open the payments database")?;
        let listener = tiffin_runtime::http::bind(settings.grpc_addr).await?;
        let grpc_addr = listener
            .local_addr()
            .context("failed to read the gRPC listener's address")?;

        let tasks = TaskTracker::new();
        let processor = processor::Processor::new(settings.processor);
        let ledger = ledger::Ledger::new(db.clone(), processor, tasks.clone());
        Ok(Self {
            listener,
            grpc_addr,
            db,
            api: grpc::PaymentsApi::new(ledger),
            tasks,
        })
    }

    /// Returns the gRPC listen address, with the real port when the settings
    /// requested port 0.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Read-only report queries over this service's database. They keep working
    /// after [`Service::run`] has returned.
    pub fn reports(&self) -> Reports {
        Reports::new(self.db.clone())
    }

    /// Counts the stored payments in each status, as
    /// `self.reports().count_by_status()` does.
    ///
    /// # Errors
    ///
    /// Returns the database error.
    pub async fn count_by_status(&self) -> Result<StatusCounts, sqlx::Error> {
        self.reports().count_by_status().await
    }

    /// Serves gRPC until `shutdown` is cancelled.
    ///
    /// Shutdown closes the listener, lets in-flight RPCs finish on their open
    /// connections, then waits for authorizations whose callers have gone to store
    /// their outcome. The service publishes no events, so there is no outbox to flush.
    ///
    /// # Errors
    ///
    /// Fails when the server fails.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.grpc_addr;
        tracing::info!(service = "payments", %addr, "gRPC server listening");

        // `serve_with_incoming_shutdown` ignores the builder's TCP options, so
        // TCP_NODELAY, which tonic sets by default, is set here. Without it a small
        // response may wait for the client's delayed ACK.
        let incoming = TcpListenerStream::new(self.listener).map(|connection| {
            let connection = connection?;
            connection.set_nodelay(true)?;
            Ok::<_, std::io::Error>(connection)
        });
        tonic::transport::Server::builder()
            .add_service(PaymentsServer::new(self.api))
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
            .await
            .with_context(|| format!("failed to serve gRPC on {addr}"))?;

        tracing::info!(
            service = "payments",
            "gRPC server stopped, waiting for detached authorizations"
        );
        self.tasks.close();
        self.tasks.wait().await;
        tracing::info!(service = "payments", "payments service stopped");
        Ok(())
    }
}
