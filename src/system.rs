//! The whole system in one process: every service on its own loopback port, each
//! with its own database (a SQLite file, or a database on one PostgreSQL server), all
//! sharing the embedded bus.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tiffin_bus::api::Bus;
use tiffin_bus::embedded::EmbeddedBus;
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;

use crate::services::{self, START_ORDER, Topology};
use tokio::task::JoinHandle;

/// Settings of an all-in-one system.
#[derive(Debug, Clone)]
pub struct SystemSettings {
    /// Directory of the SQLite files and of the embedded bus's log.
    pub data_dir: PathBuf,
    /// A PostgreSQL server URL, or `None` for SQLite files in `data_dir`. Each service
    /// then keeps its data in its own database on that server, named as
    /// [`Databases::postgres`] describes, and missing databases are created.
    pub database: Option<String>,
    /// Address of the gateway.
    pub gateway_addr: SocketAddr,
    /// First port of the services behind the gateway, or 0 for free ports.
    pub port_base: u16,
    /// How many times faster than real time simulated durations run.
    pub time_scale: f64,
    /// The simulated card processor.
    pub processor: tiffin_payments::ProcessorSettings,
    /// The notification channel URL.
    pub notify_channel: String,
    /// Share of orders kitchens turn down at random.
    pub reject_rate: f64,
    /// Open tickets per kitchen.
    pub kitchen_capacity: u32,
    /// Couriers in the fleet.
    pub couriers: usize,
    /// The bus for work queues: `embedded:`, `amqp://...` or `nats://...` (see
    /// [`crate::bus`]).
    pub queue_bus: String,
    /// The bus for the event stream; may differ from `queue_bus`.
    pub stream_bus: String,
    /// Exit after a payment step is confirmed and before it is recorded (a fault
    /// for tests).
    pub fault_exit_after_payment_step: bool,
    /// Each service's database connection pool.
    pub pool: tiffin_runtime::db::PoolSettings,
    /// How long the order service waits for a retry of a placement whose payment
    /// timed out before it voids the authorization.
    pub release_unclaimed_after: Duration,
    /// When the order service rejects new orders because the kitchen or its outbox
    /// relay is behind.
    pub admission: tiffin_orders::admission::AdmissionSettings,
    /// Whether the delivery service runs.
    pub delivery: Delivery,
}

/// Whether a system runs the delivery service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Delivery {
    /// Couriers take every ready order to its customer, and the payment is
    /// captured on delivery.
    #[default]
    Runs,
    /// No delivery service: orders end at `ready` with their payment authorized,
    /// and the gateway returns 404 for delivery's paths. The place-order
    /// benchmark's flow ends at `ready`, as the reference implementation's does.
    LeftOut,
}

impl Delivery {
    /// Returns the statuses after which an order no longer changes.
    pub fn final_statuses(self) -> &'static [&'static str] {
        match self {
            Self::Runs => &["delivered", "rejected", "cancelled", "payment_declined"],
            Self::LeftOut => &[
                "ready",
                "delivered",
                "rejected",
                "cancelled",
                "payment_declined",
            ],
        }
    }

    /// Returns true when `service` runs in a system with this setting.
    pub fn runs(self, service: &str) -> bool {
        self == Self::Runs || service != "delivery"
    }
}

/// The services whose data the system keeps, one database each.
pub const SERVICES: [&str; 8] = [
    "auth",
    "catalog",
    "orders",
    "payments",
    "kitchen",
    "delivery",
    "notifications",
    "analytics",
];

/// The locations of a system's service databases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Databases {
    /// One SQLite file per service, `<dir>/<service>.db`.
    Sqlite(PathBuf),
    /// One database per service on a PostgreSQL server, `<prefix>_<service>`.
    Postgres {
        /// The server URL, credentials included; its database name is replaced.
        server: String,
        /// The start of every database name.
        prefix: String,
    },
}

impl Databases {
    /// The databases on the PostgreSQL server at `url`.
    ///
    /// The URL's database name is the prefix of the services' databases, so that
    /// several systems can share a server: `postgres://u:p@host/shop` gives `shop_orders`,
    /// `shop_kitchen` and so on. Without a database name, or with the server's
    /// maintenance database `postgres`, the prefix is `tiffin` (`tiffin_orders`).
    pub fn postgres(url: &str) -> Self {
        let without_query = url.split_once('?').map_or(url, |(base, _)| base);
        let authority_start = without_query.find("://").map_or(0, |i| i + 3);
        let name = without_query[authority_start..]
            .split_once('/')
            .map_or("", |(_, path)| path);
        let prefix = if name.is_empty() || name == "postgres" {
            "tiffin"
        } else {
            name
        };
        Self::Postgres {
            server: url.to_owned(),
            prefix: prefix.to_owned(),
        }
    }

    /// Returns the URL that `service` opens its database with.
    pub fn url(&self, service: &str) -> String {
        match self {
            Self::Sqlite(dir) => Database::sqlite_url(dir, service),
            Self::Postgres { server, prefix } => {
                tiffin_runtime::db::with_database(server, &format!("{prefix}_{service}"))
            }
        }
    }

    /// Returns the URL for reading `service`'s data from outside the service, such as the
    /// audit: read-only for a SQLite file, so that a missing file fails instead of
    /// being created empty.
    pub fn read_url(&self, service: &str) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite://{}/{service}.db?mode=ro", dir.display()),
            Self::Postgres { .. } => self.url(service),
        }
    }

    /// Checks that `service`'s SQLite file exists. For PostgreSQL it checks nothing,
    /// because connecting to a missing database fails with a clear error anyway.
    ///
    /// # Errors
    ///
    /// Fails with the missing file's path and a hint.
    pub fn ensure_exists(&self, service: &str) -> anyhow::Result<()> {
        if let Self::Sqlite(dir) = self {
            let path = dir.join(format!("{service}.db"));
            anyhow::ensure!(
                path.exists(),
                "{} does not exist: pass the --data-dir of a system that ran",
                path.display()
            );
        }
        Ok(())
    }

    /// Creates the PostgreSQL databases that do not exist yet; does nothing for
    /// SQLite, whose files the services create themselves.
    ///
    /// # Errors
    ///
    /// Fails when the server cannot be reached or refuses to create a database.
    pub async fn create_missing(&self) -> anyhow::Result<()> {
        if let Self::Postgres { .. } = self {
            for service in SERVICES {
                let url = self.url(service);
                if tiffin_runtime::db::create_postgres_database(&url).await? {
                    tracing::info!(
                        database = %tiffin_runtime::db::redact(&url),
                        "created database"
                    );
                }
            }
        }
        Ok(())
    }
}

impl From<&Path> for Databases {
    fn from(dir: &Path) -> Self {
        Self::Sqlite(dir.to_owned())
    }
}

impl From<&PathBuf> for Databases {
    fn from(dir: &PathBuf) -> Self {
        Self::Sqlite(dir.clone())
    }
}

impl From<&Databases> for Databases {
    fn from(databases: &Databases) -> Self {
        databases.clone()
    }
}

/// A running all-in-one system.
#[derive(Debug)]
pub struct System {
    /// The gateway's base URL.
    pub gateway_url: String,
    /// Each service's name and address, in start order.
    pub addresses: Vec<(&'static str, SocketAddr)>,
    data_dir: PathBuf,
    databases: Databases,
    delivery: Delivery,
    bus: Option<EmbeddedBus>,
    shutdown: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

impl System {
    /// Starts every service and returns once all listen. Orders waits for auth's
    /// key set, so auth runs before orders is built.
    ///
    /// # Errors
    ///
    /// Fails when a file or database cannot be opened or created, or a port is
    /// taken. Services already started are stopped again.
    pub async fn start(settings: SystemSettings) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&settings.data_dir).with_context(|| {
            format!(
                "failed to create the data directory {}",
                settings.data_dir.display()
            )
        })?;
        let data_dir = settings.data_dir.canonicalize()?;
        let connected =
            crate::bus::connect(&settings.queue_bus, &settings.stream_bus, &data_dir).await?;
        let shared: Arc<dyn Bus> = connected.bus;
        let bus = connected.embedded;
        let databases = match &settings.database {
            Some(server) => {
                let databases = Databases::postgres(server);
                databases.create_missing().await?;
                databases
            }
            None => Databases::Sqlite(data_dir.clone()),
        };
        let url = |name: &str| databases.url(name);
        let addr = |offset: u16| {
            let port = if settings.port_base == 0 {
                0
            } else {
                settings.port_base + offset
            };
            SocketAddr::from((Ipv4Addr::LOCALHOST, port))
        };

        let mut system = Self {
            gateway_url: String::new(),
            addresses: Vec::new(),
            data_dir: data_dir.clone(),
            databases: databases.clone(),
            delivery: settings.delivery,
            bus,
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
        };
        match system.start_services(&settings, shared, &url, &addr).await {
            Ok(()) => Ok(system),
            Err(error) => {
                system.stop().await;
                Err(error)
            }
        }
    }

    async fn start_services(
        &mut self,
        settings: &SystemSettings,
        bus: Arc<dyn Bus>,
        url: &dyn Fn(&str) -> String,
        addr: &dyn Fn(u16) -> SocketAddr,
    ) -> anyhow::Result<()> {
        let mut topology = Topology::default();
        for service in START_ORDER {
            if !settings.delivery.runs(service) {
                continue;
            }
            let listen = match service {
                "gateway" => settings.gateway_addr,
                other => addr(port_offset(other)),
            };
            let database_url = if service == "gateway" {
                String::new()
            } else {
                url(service)
            };
            let built = services::build(
                service,
                listen,
                &topology,
                settings,
                database_url,
                bus.clone(),
            )
            .await
            .with_context(|| format!("failed to start {service}"))?;
            topology.set(service, built.addr);
            if service == "gateway" {
                self.gateway_url = format!("http://{}", built.addr);
            }
            self.spawn(service, built.addr, built.run);
        }
        Ok(())
    }

    fn spawn<F, Fut>(&mut self, name: &'static str, addr: SocketAddr, run: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.addresses.push((name, addr));
        self.tasks
            .push((name, tokio::spawn(run(self.shutdown.clone()))));
    }

    /// The directory of the embedded bus's log, and of the SQLite files when the
    /// services use SQLite.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Returns the locations of the services' databases.
    pub fn databases(&self) -> &Databases {
        &self.databases
    }

    /// Returns the embedded bus, when the system uses it.
    pub fn bus(&self) -> Option<&EmbeddedBus> {
        self.bus.as_ref()
    }

    /// Waits until every service returns 200 from `/readyz` and every replica contains
    /// all of the catalog: the menus in orders, the restaurants in the kitchen and
    /// delivery, and delivery's courier fleet.
    ///
    /// The second check exists because a replica that has read to the end of the
    /// stream is not complete while the catalog is still publishing its seed; a
    /// service alone cannot tell the two apart, but the whole system can.
    ///
    /// # Errors
    ///
    /// Fails with the services still not ready after `timeout`, or when a service
    /// has stopped.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let client = tiffin_runtime::http::client(Duration::from_secs(2))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some((name, _)) = self.tasks.iter().find(|(_, task)| task.is_finished()) {
                anyhow::bail!("service {name} stopped during start-up; see the log above");
            }
            let mut waiting: Vec<String> = Vec::new();
            for (name, addr) in &self.addresses {
                if *name == "payments" {
                    continue;
                }
                let ready = client
                    .get(format!("http://{addr}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success());
                if !ready {
                    waiting.push((*name).to_owned());
                }
            }
            if waiting.is_empty() {
                let lagging =
                    crate::report::lagging_replicas(&self.databases, self.delivery).await?;
                if lagging.is_empty() {
                    return Ok(());
                }
                waiting.extend(lagging);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "services not ready after {} s: {}",
                    timeout.as_secs(),
                    waiting.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until no event is left to deliver: every outbox is empty and every work
    /// queue drained.
    ///
    /// # Errors
    ///
    /// Fails when that does not happen within `timeout`.
    pub async fn wait_quiet(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_quiet(&self.databases, self.bus.as_ref(), self.delivery, timeout).await
    }

    /// Returns whether the delivery service runs.
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    /// Returns a token that stops the system when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops every service: each stops taking work, finishes the work in flight and
    /// flushes its outbox. Then closes the bus.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for (name, task) in self.tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(service = name, error = %error, "service failed"),
                Err(error) => tracing::error!(service = name, error = %error, "service panicked"),
            }
        }
        if let Some(bus) = &self.bus {
            bus.close().await;
        }
    }

    /// Waits until a service stops by itself (a failure) or `shutdown` is cancelled.
    /// Returns the name of the service that stopped, if one did.
    pub async fn watch(&mut self, shutdown: &CancellationToken) -> Option<&'static str> {
        loop {
            if let Some((name, _)) = self.tasks.iter().find(|(_, task)| task.is_finished()) {
                return Some(name);
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

/// Returns the port of `service` relative to `--port-base`, in the order the command line
/// documents: auth, catalog, orders, payments, kitchen, notifications, analytics,
/// delivery.
pub fn port_offset(service: &str) -> u16 {
    match service {
        "auth" => 0,
        "catalog" => 1,
        "orders" => 2,
        "payments" => 3,
        "kitchen" => 4,
        "notifications" => 5,
        "analytics" => 6,
        _ => 7,
    }
}

/// Waits until no work is left: every outbox empty, no payment step pending, and the
/// embedded bus's queues drained when there is one.
///
/// # Errors
///
/// Fails when that does not happen within `timeout`.
pub async fn wait_quiet(
    databases: &Databases,
    embedded: Option<&EmbeddedBus>,
    delivery: Delivery,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let pending = crate::report::pending_events(databases, embedded, delivery).await?;
        if pending == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "{pending} events still undelivered after {} s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_prefix_defaults_to_tiffin() {
        let databases = Databases::postgres("postgres://u:p@127.0.0.1:5432/postgres");

        assert_eq!(
            databases.url("orders"),
            "postgres://u:p@127.0.0.1:5432/tiffin_orders"
        );
    }

    #[test]
    fn postgres_prefix_comes_from_path() {
        let databases = Databases::postgres("postgres://u:p@127.0.0.1/shop?sslmode=disable");

        assert_eq!(
            databases.url("kitchen"),
            "postgres://u:p@127.0.0.1/shop_kitchen?sslmode=disable"
        );
    }
}
