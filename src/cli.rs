//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Tiffin: a food-delivery backend built as microservices that talk over REST, gRPC,
/// work queues and a replayable event stream.
#[derive(Debug, Parser)]
#[command(name = "tiffin", version, about, long_about = None)]
pub struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Pretty, global = true, env = "TIFFIN_LOG_FORMAT")]
    pub log_format: LogFormatArg,

    /// A TOML file of settings: keys are long flag names (`bus`, `queue-bus`,
    /// `database`, ...). Flags and `TIFFIN_...` environment variables override it.
    #[arg(long, global = true, value_name = "FILE", env = "TIFFIN_CONFIG")]
    pub config: Option<PathBuf>,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    /// Readable lines for a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every service in this process with embedded storage and bus, until Ctrl-C.
    Up(UpArgs),
    /// Run one service in this process, against a broker and a database that other
    /// processes share: the distributed topology.
    Serve(ServeArgs),
    /// Replay real orders against a running gateway and report what happened.
    Load(LoadArgs),
    /// Start the whole system, replay real orders through it, report and exit.
    Demo(DemoArgs),
    /// Check the invariants that span services: final orders, payments settled
    /// exactly once, one notification per status change. Exits non-zero on a
    /// violation.
    Audit(AuditArgs),
    /// Operator commands of the auth service.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Operator commands of the analytics service.
    #[command(subcommand)]
    Analytics(AnalyticsCommand),
    /// Inspect and replay messages that consumers gave up on.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Measure the place-order flow under wrk: throughput, latency, CPU and memory
    /// per order, and integrity; optionally against a reference implementation.
    Bench(BenchArgs),
}

/// The data directory of the embedded system.
#[derive(Debug, Clone, Args)]
pub struct DataDirArg {
    /// Directory of the SQLite files: one per service plus `bus.db`, the event log.
    /// Created when missing.
    #[arg(long, default_value = "tiffin-data", env = "TIFFIN_DATA_DIR")]
    pub data_dir: PathBuf,
}

/// The bus URLs, shared by `up`, `demo` and `serve`.
#[derive(Debug, Clone, Args)]
pub struct BusArgs {
    /// The bus for work queues and the event stream: `embedded:` (a log in the data
    /// directory), `amqp://USER:PASSWORD@HOST:PORT/VHOST` (RabbitMQ; add
    /// `?queue-type=classic` for classic instead of quorum work queues),
    /// `nats://HOST:PORT` (NATS JetStream) or `kafka://HOST:PORT` (Kafka).
    #[arg(long, default_value = "embedded:", env = "TIFFIN_BUS")]
    pub bus: String,

    /// The bus for work queues only, overriding --bus.
    #[arg(long, env = "TIFFIN_QUEUE_BUS")]
    pub queue_bus: Option<String>,

    /// The bus for the event stream only, overriding --bus.
    #[arg(long, env = "TIFFIN_STREAM_BUS")]
    pub stream_bus: Option<String>,
}

impl BusArgs {
    /// Returns the queue and stream URLs.
    pub fn urls(&self) -> (String, String) {
        (
            self.queue_bus.clone().unwrap_or_else(|| self.bus.clone()),
            self.stream_bus.clone().unwrap_or_else(|| self.bus.clone()),
        )
    }
}

/// The database connection pool of each service, shared by `up`, `demo` and `serve`.
#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
    /// Most connections each service keeps open to its database.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,

    /// Seconds a request waits for a free database connection before it fails
    /// with 503.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub db_acquire_timeout: u64,
}

impl PoolArgs {
    /// Returns the pool settings these flags describe.
    pub fn settings(&self) -> tiffin_runtime::db::PoolSettings {
        tiffin_runtime::db::PoolSettings {
            max_connections: self.db_max_connections,
            acquire_timeout: std::time::Duration::from_secs(self.db_acquire_timeout),
        }
    }
}

/// When the order service rejects new orders because the kitchen or its outbox
/// relay is behind, shared by `up`, `serve`, `demo` and `bench`.
#[derive(Debug, Clone, Args)]
pub struct AdmissionArgs {
    /// Hold new orders, and reject with 503 those still waiting after
    /// --admission-hold-ms, while more than this many orders wait longer than
    /// --waiting-after-ms for the kitchen's decision. 0 admits every order.
    #[arg(long, default_value_t = 200)]
    pub max_waiting_orders: u64,

    /// Milliseconds an order may wait for the kitchen's decision before it counts
    /// against --max-waiting-orders.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub waiting_after_ms: u64,

    /// Also hold new orders, as for --max-waiting-orders, while the oldest event
    /// in the order service's outbox has waited longer than this many
    /// milliseconds for its relay. 0 leaves the relay out, and so does
    /// --max-waiting-orders 0, which turns admission control off.
    #[arg(long, default_value_t = 1000)]
    pub max_outbox_lag_ms: u64,

    /// Milliseconds a new order that arrives while the kitchen or the outbox relay
    /// is behind waits for it to catch up before it is rejected; 0 rejects it at
    /// once.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub admission_hold_ms: u64,
}

impl AdmissionArgs {
    /// Returns the order service's admission settings these flags describe.
    pub fn settings(&self) -> tiffin_orders::admission::AdmissionSettings {
        tiffin_orders::admission::AdmissionSettings {
            max_waiting: (self.max_waiting_orders > 0).then_some(self.max_waiting_orders),
            waiting_after: std::time::Duration::from_millis(self.waiting_after_ms),
            max_outbox_lag: (self.max_outbox_lag_ms > 0)
                .then(|| std::time::Duration::from_millis(self.max_outbox_lag_ms)),
            hold: std::time::Duration::from_millis(self.admission_hold_ms),
            ..tiffin_orders::admission::AdmissionSettings::default()
        }
    }

    /// Returns the flags that give a child process the same settings.
    pub fn to_args(&self) -> [String; 8] {
        [
            "--max-waiting-orders".to_owned(),
            self.max_waiting_orders.to_string(),
            "--waiting-after-ms".to_owned(),
            self.waiting_after_ms.to_string(),
            "--max-outbox-lag-ms".to_owned(),
            self.max_outbox_lag_ms.to_string(),
            "--admission-hold-ms".to_owned(),
            self.admission_hold_ms.to_string(),
        ]
    }
}

/// Settings of the simulation, shared by `up` and `demo`.
#[derive(Debug, Clone, Args)]
pub struct SimulationArgs {
    /// Share of payment authorizations the simulated card processor declines,
    /// from 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub decline_rate: f64,

    /// Share of authorizations the simulated card processor fails as unavailable,
    /// from 0 to 1. Orders retry them.
    #[arg(long, default_value_t = 0.0)]
    pub payment_error_rate: f64,

    /// Simulated card processor latency per authorization, in milliseconds.
    #[arg(long, default_value_t = 2)]
    pub payment_latency_ms: u64,

    /// Share of orders the kitchens turn down at random, from 0 to 1, on top of
    /// rejections for closed restaurants, sold-out items and full kitchens.
    #[arg(long, default_value_t = 0.0)]
    pub reject_rate: f64,

    /// Open tickets a kitchen cooks at once; further orders are rejected as at
    /// capacity.
    #[arg(long, default_value_t = 25)]
    pub kitchen_capacity: u32,

    /// Couriers in the fleet.
    #[arg(long, default_value_t = 300)]
    pub couriers: usize,

    /// Where notifications go: `log:` records and logs them; `smtp://HOST:PORT?from=ADDR&to_domain=DOMAIN`
    /// also mails them.
    #[arg(long, default_value = "log:", env = "TIFFIN_NOTIFY_CHANNEL")]
    pub notify_channel: String,
}

/// `tiffin up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub data: DataDirArg,

    /// Address of the gateway, the one origin for clients.
    #[arg(long, default_value = "127.0.0.1:8080", env = "TIFFIN_GATEWAY_ADDR")]
    pub gateway_addr: SocketAddr,

    /// First port of the services behind the gateway: auth, catalog, orders,
    /// payments (gRPC), kitchen, notifications, analytics and delivery take this port
    /// and the seven after it, on 127.0.0.1. 0 picks free ports.
    #[arg(long, default_value_t = 8081)]
    pub port_base: u16,

    /// How many times faster than real time simulated durations run (preparation
    /// time). Use the same value as `tiffin load --speed`.
    #[arg(long, default_value_t = 3600.0)]
    pub time_scale: f64,

    /// Keep the services' data on this PostgreSQL server instead of in SQLite files,
    /// one database per service named `<database>_<service>`, or `tiffin_<service>`
    /// when the URL names no database or `postgres`. Missing databases are created,
    /// so the role needs CREATEDB the first time. The event log stays in the data
    /// directory.
    #[arg(
        long,
        value_name = "URL",
        env = "TIFFIN_DATABASE_URL",
        hide_env_values = true
    )]
    pub database: Option<String>,

    #[command(flatten)]
    pub pool: PoolArgs,

    #[command(flatten)]
    pub admission: AdmissionArgs,

    #[command(flatten)]
    pub simulation: SimulationArgs,

    #[command(flatten)]
    pub bus: BusArgs,

    /// A fault for tests: exit right after payments confirms a void or capture and
    /// before the order service records it.
    #[arg(long, hide = true)]
    pub fault_exit_after_payment_step: bool,
}

/// `tiffin serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The service: payments, auth, catalog, orders, kitchen, delivery,
    /// notifications, analytics or gateway.
    pub service: String,

    #[command(flatten)]
    pub data: DataDirArg,

    /// A PostgreSQL server URL; the service keeps its data in its own database there,
    /// named as for `tiffin up --database` and created when missing. Without it, a
    /// SQLite file in the data directory.
    #[arg(
        long,
        value_name = "URL",
        env = "TIFFIN_DATABASE_URL",
        hide_env_values = true
    )]
    pub database: Option<String>,

    #[command(flatten)]
    pub pool: PoolArgs,

    #[command(flatten)]
    pub admission: AdmissionArgs,

    #[command(flatten)]
    pub bus: BusArgs,

    /// Address to listen on. Defaults to the service's port from --port-base, or
    /// --gateway-addr for the gateway.
    #[arg(long)]
    pub listen: Option<SocketAddr>,

    /// Address of the gateway.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway_addr: SocketAddr,

    /// First port of the other services, as for `tiffin up`; each peer is expected
    /// on 127.0.0.1 at its port unless --peer names another address.
    #[arg(long, default_value_t = 8081)]
    pub port_base: u16,

    /// The address of another service, as NAME=HOST:PORT, for example
    /// `auth=10.0.0.5:8081`. Repeat for each peer that is not at its default port.
    #[arg(long = "peer", value_parser = parse_peer)]
    pub peers: Vec<(String, SocketAddr)>,

    /// How many times faster than real time simulated durations run.
    #[arg(long, default_value_t = 3600.0)]
    pub time_scale: f64,

    #[command(flatten)]
    pub simulation: SimulationArgs,

    /// The deployment runs no delivery service, so orders end at ready. The
    /// gateway returns 404 for delivery's paths, and its readiness leaves delivery
    /// out. The place-order benchmark's flow runs this way.
    #[arg(long)]
    pub without_delivery: bool,
}

fn parse_peer(text: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=HOST:PORT"))?;
    let addr = addr
        .parse()
        .map_err(|error| format!("`{addr}` in --peer {text} is not HOST:PORT: {error}"))?;
    Ok((name.to_owned(), addr))
}

/// Settings of a replay, shared by `load` and `demo`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// How many times faster than real time orders arrive: 3600 turns each hour of
    /// the real data into one second.
    #[arg(long, default_value_t = 3600.0)]
    pub speed: f64,

    /// Orders in flight at once, from sending until ready.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,

    /// Customers to register and log in; orders are spread over them in turn.
    #[arg(long, default_value_t = 50)]
    pub customers: usize,

    /// Rows of the real order data to skip before the first replayed order.
    #[arg(long, default_value_t = 0)]
    pub skip: usize,

    /// Seconds a placed order may take to reach a final state (delivered, rejected,
    /// cancelled) before it counts as lost.
    #[arg(long, default_value_t = 120)]
    pub order_timeout_secs: u64,

    /// Share of placed orders the customers try to cancel, from 0 to 1. Each waits
    /// up to 1.5 times the preparation time first, so some come too late.
    #[arg(long, default_value_t = 0.0)]
    pub cancel_rate: f64,
}

/// `tiffin load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Base URL of the gateway.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,

    /// Orders to replay (the data contains 18,706).
    #[arg(long, default_value_t = 500)]
    pub limit: usize,

    #[command(flatten)]
    pub replay: ReplayArgs,

    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// `tiffin demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Orders to replay (the data contains 18,706).
    #[arg(long, default_value_t = 500)]
    pub orders: usize,

    /// Keep the system's files in this directory instead of a temporary one that is
    /// deleted at the end.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// Keep the services' data on this PostgreSQL server instead of in SQLite files,
    /// one database per service named `<database>_<service>`, or `tiffin_<service>`
    /// when the URL names no database or `postgres`. Missing databases are created,
    /// so the role needs CREATEDB the first time. The event log stays in the data
    /// directory.
    #[arg(
        long,
        value_name = "URL",
        env = "TIFFIN_DATABASE_URL",
        hide_env_values = true
    )]
    pub database: Option<String>,

    #[command(flatten)]
    pub pool: PoolArgs,

    #[command(flatten)]
    pub admission: AdmissionArgs,

    /// Write the report as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,

    /// Run every service as its own process (`tiffin serve`) instead of all in this
    /// one. Needs a broker: --bus amqp://..., nats://... or kafka://..., or
    /// --queue-bus and --stream-bus.
    #[arg(long)]
    pub distributed: bool,

    #[command(flatten)]
    pub replay: ReplayArgs,

    #[command(flatten)]
    pub simulation: SimulationArgs,

    #[command(flatten)]
    pub bus: BusArgs,
}

/// `tiffin audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub data: DataDirArg,

    /// Seconds an order may take to become final, and its payment to be settled,
    /// before the audit counts it as stuck.
    #[arg(long, default_value_t = 300)]
    pub time_limit_secs: u64,

    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tiffin users ...`.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create an account with any role; customers register themselves, staff and
    /// admins come from here.
    Add {
        /// The email address to log in with.
        #[arg(long)]
        email: String,
        /// The password, 8 to 128 characters. Prefer the environment variable, which
        /// other users of the machine cannot see in the process list.
        #[arg(long, env = "TIFFIN_NEW_USER_PASSWORD", hide_env_values = true)]
        password: String,
        /// The role: customer, staff (manages kitchen stock) or admin (may read every order).
        #[arg(long, value_enum)]
        role: RoleArg,
        #[command(flatten)]
        data: DataDirArg,
    },
}

/// A user role.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Places and follows their own orders.
    Customer,
    /// Restaurant staff.
    Staff,
    /// Operators.
    Admin,
}

/// `tiffin analytics ...`.
#[derive(Debug, Subcommand)]
pub enum AnalyticsCommand {
    /// Delete the analytics projection and rebuild it by replaying the event stream
    /// from the start. Run it while the system is stopped.
    Rebuild(DataDirArg),
}

/// `tiffin dead-letters ...`.
#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List the dead letters, oldest first.
    List(DataDirArg),
    /// Put a work queue's dead letters back on the queue.
    Replay {
        /// The work queue (consumer group), for example `kitchen`.
        queue: String,
        #[command(flatten)]
        data: DataDirArg,
    },
}

/// How far each order of `tiffin bench` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Flow {
    /// To `ready`: payment, kitchen ticket, notifications and analytics, with no
    /// delivery service; the flow the benchmark specifies and the reference
    /// implementation runs.
    Ready,
    /// To `delivered`: also a courier's dispatch, pickup and delivery, and the
    /// capture of the payment.
    Delivered,
}

impl Flow {
    /// Returns whether the system under test runs the delivery service.
    pub fn delivery(self) -> crate::system::Delivery {
        match self {
            Self::Ready => crate::system::Delivery::LeftOut,
            Self::Delivered => crate::system::Delivery::Runs,
        }
    }

    /// Returns the name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Delivered => "delivered",
        }
    }
}

/// The topology in which `tiffin bench` runs Tiffin's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Topology {
    /// Every service in the benchmark's process, as `tiffin up` runs them.
    AllInOne,
    /// Every service as its own process, on the broker of --bus.
    Distributed,
    /// A distributed round and then an all-in-one round on the embedded bus
    /// and SQLite files, in each round; --bus and --database apply to the
    /// distributed rounds only.
    Both,
}

impl Topology {
    /// Returns the name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllInOne => "all-in-one",
            Self::Distributed => "distributed",
            Self::Both => "both",
        }
    }
}

/// `tiffin bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// wrk connections, each with its own customer's token.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,

    /// Length of the measured run, seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,

    /// wrk threads.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,

    /// Warm-up before each measured run, seconds; 0 for none.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,

    /// The wrk script that places orders.
    #[arg(long, default_value = "bench/place-order.lua")]
    pub script: PathBuf,

    /// The topology of the services in each round.
    #[arg(long, value_enum, default_value_t = Topology::AllInOne)]
    pub topology: Topology,

    /// The same as --topology distributed: every service as its own process
    /// (needs --bus with a broker) instead of all in this one.
    #[arg(long, conflicts_with = "topology")]
    pub distributed: bool,

    /// How far each order goes.
    #[arg(long, value_enum, default_value_t = Flow::Ready)]
    pub flow: Flow,

    /// Send wrk's orders through the gateway, one more HTTP hop each, instead of
    /// straight to the order service as the reference's benchmark does.
    #[arg(long)]
    pub through_gateway: bool,

    /// Keep the services' data on this PostgreSQL server instead of in SQLite
    /// files, one database per service as for `tiffin up --database`. Each round
    /// creates databases of its own, named after the URL's database with the round
    /// and a random suffix, and drops them afterwards.
    #[arg(
        long,
        value_name = "URL",
        env = "TIFFIN_DATABASE_URL",
        hide_env_values = true
    )]
    pub database: Option<String>,

    #[command(flatten)]
    pub pool: PoolArgs,

    #[command(flatten)]
    pub admission: AdmissionArgs,

    #[command(flatten)]
    pub bus: BusArgs,

    /// A writable copy of the reference implementation's folder: its `run.sh` runs
    /// before each Tiffin round with the same connections and duration, and the
    /// summary compares the two.
    #[arg(long, value_name = "DIR")]
    pub reference: Option<PathBuf>,

    /// Rounds of each implementation.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,

    /// Write every round's figures as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

impl BenchArgs {
    /// Returns the topology that --topology or --distributed chose.
    pub fn topology(&self) -> Topology {
        if self.distributed {
            Topology::Distributed
        } else {
            self.topology
        }
    }
}
