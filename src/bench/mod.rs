//! `tiffin bench`: the place-order benchmark.
//!
//! A round starts Tiffin in the benchmark configuration: preparation and delivery
//! take no time, and there is no simulated payment latency and no rejection. By
//! default it runs no delivery service, so that orders end at `ready` as in the
//! benchmark's specified flow and the reference implementation. It
//! registers one customer per connection and writes the inputs of the wrk script, a
//! menu file of the restaurants open around the clock and a token file. Then it
//! warms up and runs wrk while it samples CPU time from `/proc`. After the load it waits for every event
//! to be handled and reads the figures from the services' databases: end-to-end
//! latency from an order's placement to its stored `ready` notification, and the
//! integrity counts and audit. With a reference implementation the rounds alternate
//! (reference, Tiffin, reference, Tiffin) so that both see the same machine, and
//! the summary compares them. With `--topology both`, each round runs Tiffin
//! distributed and then all-in-one (reference, distributed, all-in-one, ...).

pub mod figures;
pub mod procs;
mod reference;
pub mod wrk;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use serde::Serialize;
use serde_json::Value;

use crate::cli::{BenchArgs, Topology};
use crate::serve::Cluster;
use crate::system::{Databases, System, SystemSettings};
use figures::EndToEnd;
use wrk::WrkFigures;

/// The figures of one round.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// `tiffin` or `reference`.
    pub implementation: String,
    /// Tiffin's topology, `distributed` or `all-in-one`; none for the reference.
    pub topology: Option<String>,
    /// Throughput and HTTP latency, from wrk.
    pub wrk: WrkFigures,
    /// From placement to the stored `ready` notification.
    pub end_to_end: EndToEnd,
    /// True when every order has one authorization, one ticket and its
    /// notifications, and nothing was lost or doubled.
    pub integrity_ok: bool,
    /// The integrity counts, for the report.
    pub integrity: String,
    /// CPU seconds per process group during the measured run.
    pub cpu_s: BTreeMap<String, f64>,
    /// CPU seconds per process group from the start of the measured run until
    /// the system handled every event it caused; empty when not measured. When
    /// the events fall behind the intake, much of an order's work happens after
    /// the load stops, and only this figure counts it.
    pub cpu_drained_s: BTreeMap<String, f64>,
    /// The prefix of the groups that are the implementation's own processes.
    pub own_prefix: String,
    /// Peak resident memory of each of the implementation's processes.
    pub peak_rss_bytes: BTreeMap<String, u64>,
    /// The highest sum of the processes' proportional set sizes, sampled each
    /// second during the load: their memory together, with the pages they share
    /// (the binary's code) counted once. 0 when not measured.
    pub peak_pss_total_bytes: u64,
}

impl Figures {
    /// Returns CPU milliseconds per placed order of `group`.
    fn per_order_ms(&self, seconds: f64) -> f64 {
        if self.wrk.created == 0 {
            return 0.0;
        }
        seconds * 1000.0 / self.wrk.created as f64
    }

    /// Returns CPU milliseconds per placed order of the implementation's own
    /// processes together.
    pub fn own_cpu_ms_per_order(&self) -> f64 {
        self.per_order_ms(self.own_seconds(&self.cpu_s))
    }

    /// Returns the CPU seconds of the implementation's own groups in `cpu_s`.
    fn own_seconds(&self, cpu_s: &BTreeMap<String, f64>) -> f64 {
        cpu_s
            .iter()
            .filter(|(group, _)| group.starts_with(&self.own_prefix))
            .map(|(_, seconds)| seconds)
            .sum()
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let wrk = &self.wrk;
        writeln!(
            f,
            "throughput   {:.1} orders/s ({} placed, {} other responses, {} socket errors)",
            wrk.orders_per_s,
            wrk.created,
            wrk.other,
            wrk.errors_connect + wrk.errors_read + wrk.errors_write + wrk.errors_timeout
        )?;

        writeln!(
            f,
            "HTTP latency p50 {:.2} ms, p99 {:.2} ms",
            wrk.http_p50_ms, wrk.http_p99_ms
        )?;
        writeln!(
            f,
            "end to end   p50 {:.2} ms, p99 {:.2} ms (placed to the ready notification, {} orders)",
            self.end_to_end.p50_ms, self.end_to_end.p99_ms, self.end_to_end.orders
        )?;

        let verdict = if self.integrity_ok { "OK" } else { "FAILED" };
        writeln!(f, "integrity    {verdict} {}", self.integrity)?;
        writeln!(
            f,
            "CPU per order {:.3} ms in the implementation's own processes; by group:",
            self.own_cpu_ms_per_order()
        )?;
        let mut groups: Vec<(&String, &f64)> = self.cpu_s.iter().collect();
        groups.sort_by(|a, b| b.1.total_cmp(a.1));
        for (group, seconds) in groups {
            write!(
                f,
                "  {group:<28} {:>8.3} ms/order ({seconds:.2} s)",
                self.per_order_ms(*seconds)
            )?;
            match self.cpu_drained_s.get(group) {
                Some(drained) => writeln!(
                    f,
                    ", {:>8.3} ms/order until drained",
                    self.per_order_ms(*drained)
                )?,
                None => writeln!(f)?,
            }
        }
        if !self.cpu_drained_s.is_empty() {
            let total: f64 = self.cpu_drained_s.values().sum();
            writeln!(
                f,
                "CPU per order until drained {:.3} ms own, {:.3} ms all processes",
                self.per_order_ms(self.own_seconds(&self.cpu_drained_s)),
                self.per_order_ms(total)
            )?;
        }
        if !self.peak_rss_bytes.is_empty() {
            let total: u64 = self.peak_rss_bytes.values().sum();
            writeln!(
                f,
                "peak RSS     {:.1} MB in all ({})",
                total as f64 / 1e6,
                self.peak_rss_bytes
                    .iter()
                    .map(|(name, bytes)| format!("{name} {:.1} MB", *bytes as f64 / 1e6))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
        }
        if self.peak_pss_total_bytes > 0 {
            writeln!(
                f,
                "memory       {:.1} MB together at the peak (proportional set sizes: shared pages such as the binary's code counted once)",
                self.peak_pss_total_bytes as f64 / 1e6
            )?;
        }
        Ok(())
    }
}

/// Runs the benchmark and prints the figures; returns false when a round's
/// integrity check failed.
///
/// # Errors
///
/// Fails when the system cannot start, wrk or the reference cannot run, or the
/// databases cannot be read.
pub async fn run(args: &BenchArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(
        args.script.exists(),
        "wrk script {} not found; run from the project folder or pass --script",
        args.script.display()
    );
    anyhow::ensure!(args.rounds >= 1, "--rounds is 0; it must be at least 1");
    let topologies = match args.topology() {
        Topology::Both => vec![Topology::Distributed, Topology::AllInOne],
        single => vec![single],
    };
    let scratch = tempfile::tempdir()?;
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        if let Some(dir) = &args.reference {
            eprintln!(
                "Round {round}: reference, {} connections for {} s...",
                args.connections, args.duration
            );
            let figures = reference::run(
                dir,
                &args.script,
                &scratch.path().join(format!("reference-{round}")),
                args.duration,
                args.connections,
                args.threads,
            )
            .await?;
            eprintln!("{figures}");
            rounds.push(figures);
        }
        for &topology in &topologies {
            eprintln!(
                "Round {round}: Tiffin {}, orders until {}, {} connections for {} s...",
                topology.as_str(),
                args.flow.as_str(),
                args.connections,
                args.duration
            );
            let figures = tiffin_round(args, round, topology).await?;
            eprintln!("{figures}");
            rounds.push(figures);
        }
    }

    let ok = rounds.iter().all(|figures| figures.integrity_ok);
    let comparison = compare(&rounds);
    if let Some(text) = &comparison {
        println!("{text}");
    }
    if let Some(path) = &args.report {
        crate::demo::write_json(
            path,
            &serde_json::json!({
                "topology": args.topology().as_str(),
                "flow": args.flow.as_str(),
                "through_gateway": args.through_gateway,
                "connections": args.connections,
                "duration_s": args.duration,
                "threads": args.threads,
                "rounds": rounds,
            }),
        )?;
        eprintln!("Report written to {}", path.display());
    }
    Ok(ok)
}

/// Reads one figure of a round.
type Metric = fn(&Figures) -> f64;

/// Compares the mean figures of Tiffin in each topology with the reference's, as
/// ratios Tiffin over reference, when there are rounds of both.
fn compare(rounds: &[Figures]) -> Option<String> {
    let mean = |values: Vec<f64>| {
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let rows: [(&str, Metric); 6] = [
        ("orders/s", |f| f.wrk.orders_per_s),
        ("HTTP p50 ms", |f| f.wrk.http_p50_ms),
        ("HTTP p99 ms", |f| f.wrk.http_p99_ms),
        ("end-to-end p50 ms", |f| f.end_to_end.p50_ms),
        ("end-to-end p99 ms", |f| f.end_to_end.p99_ms),
        ("own CPU ms/order", |f| f.own_cpu_ms_per_order()),
    ];
    let reference: Vec<&Figures> = rounds
        .iter()
        .filter(|figures| figures.implementation == "reference")
        .collect();
    let mut topologies: Vec<&str> = Vec::new();
    for figures in rounds {
        if let Some(topology) = figures.topology.as_deref()
            && !topologies.contains(&topology)
        {
            topologies.push(topology);
        }
    }
    let mut text = String::new();
    for topology in topologies {
        let ours: Vec<&Figures> = rounds
            .iter()
            .filter(|figures| figures.topology.as_deref() == Some(topology))
            .collect();
        text.push_str(&format!(
            "\nMean over rounds     Tiffin {topology:<12} reference   Tiffin/reference\n"
        ));
        for (label, value) in rows {
            let (Some(ours), Some(theirs)) = (
                mean(ours.iter().map(|figures| value(figures)).collect()),
                mean(reference.iter().map(|figures| value(figures)).collect()),
            ) else {
                return None;
            };
            let ratio = if theirs == 0.0 { 0.0 } else { ours / theirs };
            text.push_str(&format!(
                "{label:<18} {ours:>19.2} {theirs:>11.2} {ratio:>14.2}x\n"
            ));
        }
    }
    (!text.is_empty()).then_some(text)
}

/// The system under test.
enum Target {
    InProcess(System),
    Processes(Cluster),
}

impl Target {
    async fn start(
        args: &BenchArgs,
        engines: &Engines,
        database: Option<&str>,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        if args.flow.delivery() == crate::system::Delivery::LeftOut {
            check_no_delivery_queue(&engines.queue_bus).await?;
        }
        if engines.distributed {
            let mut argv: Vec<String> = ["tiffin", "demo", "--distributed"]
                .map(str::to_owned)
                .to_vec();
            argv.extend(["--queue-bus".to_owned(), engines.queue_bus.clone()]);
            argv.extend(["--stream-bus".to_owned(), engines.stream_bus.clone()]);
            argv.extend(BENCH_SIMULATION.map(str::to_owned));
            argv.extend([
                "--db-max-connections".to_owned(),
                args.pool.db_max_connections.to_string(),
                "--db-acquire-timeout".to_owned(),
                args.pool.db_acquire_timeout.to_string(),
            ]);
            argv.extend(args.admission.to_args());
            if let Some(database) = database {
                argv.extend(["--database".to_owned(), database.to_owned()]);
            }
            let cli = crate::cli::Cli::try_parse_from(&argv)
                .context("the benchmark's process settings do not parse")?;
            let crate::cli::Command::Demo(demo) = cli.command else {
                unreachable!("parsed as demo");
            };
            let mut cluster = Cluster::start(&demo, dir, args.flow.delivery()).await?;
            if let Err(error) = cluster.wait_ready(Duration::from_secs(180)).await {
                cluster.stop().await;
                return Err(error);
            }
            return Ok(Self::Processes(cluster));
        }
        let system = System::start(SystemSettings {
            data_dir: dir.to_path_buf(),
            database: database.map(str::to_owned),
            gateway_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            port_base: 0,
            time_scale: BENCH_TIME_SCALE,
            processor: tiffin_payments::ProcessorSettings {
                latency: Duration::ZERO,
                latency_jitter: Duration::ZERO,
                error_rate: 0.0,
                decline_rate: 0.0,
            },
            notify_channel: "log:".to_owned(),
            reject_rate: 0.0,
            kitchen_capacity: BENCH_KITCHEN_CAPACITY,
            couriers: BENCH_COURIERS,
            queue_bus: engines.queue_bus.clone(),
            stream_bus: engines.stream_bus.clone(),
            fault_exit_after_payment_step: false,
            pool: args.pool.settings(),
            release_unclaimed_after: std::time::Duration::from_secs(60),
            admission: args.admission.settings(),
            delivery: args.flow.delivery(),
        })
        .await?;
        if let Err(error) = system.wait_ready(Duration::from_secs(120)).await {
            system.stop().await;
            return Err(error);
        }
        Ok(Self::InProcess(system))
    }

    fn url(&self) -> String {
        match self {
            Self::InProcess(system) => system.gateway_url.clone(),
            Self::Processes(cluster) => cluster.gateway_url(),
        }
    }

    /// Returns the base URL of the order service itself, bypassing the gateway.
    fn orders_url(&self) -> anyhow::Result<String> {
        match self {
            Self::InProcess(system) => system
                .addresses
                .iter()
                .find(|(name, _)| *name == "orders")
                .map(|(_, addr)| format!("http://{addr}"))
                .context("the system has no order service"),
            Self::Processes(cluster) => Ok(cluster.orders_url()),
        }
    }

    fn databases(&self) -> &Databases {
        match self {
            Self::InProcess(system) => system.databases(),
            Self::Processes(cluster) => cluster.databases(),
        }
    }

    /// Returns the processes that run Tiffin, with their group names.
    fn processes(&self) -> HashMap<u32, String> {
        match self {
            Self::InProcess(_) => {
                HashMap::from([(std::process::id(), "tiffin (all services)".to_owned())])
            }
            Self::Processes(cluster) => cluster
                .processes()
                .into_iter()
                .map(|(service, pid)| (pid, format!("tiffin {service}")))
                .collect(),
        }
    }

    async fn wait_quiet(&self, timeout: Duration) -> anyhow::Result<()> {
        match self {
            Self::InProcess(system) => system.wait_quiet(timeout).await,
            Self::Processes(cluster) => {
                crate::system::wait_quiet(cluster.databases(), None, cluster.delivery(), timeout)
                    .await
            }
        }
    }

    async fn stop(self) {
        match self {
            Self::InProcess(system) => system.stop().await,
            Self::Processes(cluster) => cluster.stop().await,
        }
    }
}

/// Fails when the RabbitMQ virtual host of a run without delivery has a delivery
/// work queue, left by a run with delivery: every `order.ready` would wait there
/// unread, and the broker's work on it would count against the round.
async fn check_no_delivery_queue(queue_url: &str) -> anyhow::Result<()> {
    if !(queue_url.starts_with("amqp://") || queue_url.starts_with("amqps://")) {
        return Ok(());
    }
    let (url, options) = crate::bus::rabbitmq_options(queue_url)?;
    let bus = tiffin_bus_rabbitmq::connect(&url, options).await?;
    // The connection closes when `bus` is dropped at the end of this function.
    let Some(messages) = bus.ready_messages("delivery").await? else {
        return Ok(());
    };
    let vhost = url.rsplit('/').next().unwrap_or_default();
    anyhow::bail!(
        "the virtual host {vhost} has a work queue `delivery` ({messages} messages waiting), left by a run with --flow delivered; \
         without delivery, every order.ready would wait there unread. Use another virtual host for runs up to ready (--flow ready, the default), \
         or delete the queues: rabbitmqctl delete_queue -p {vhost} delivery (and delivery.retry, delivery.dead)"
    )
}

/// Simulated durations run this many times faster than real time, so preparation
/// and delivery take well under a millisecond.
const BENCH_TIME_SCALE: f64 = 1e6;
/// Tickets a restaurant's kitchen takes at once: enough never to reject for load.
const BENCH_KITCHEN_CAPACITY: u32 = 100_000;
/// Couriers: far more than the orders in flight at 64 connections.
const BENCH_COURIERS: usize = 2_000;
/// The same simulation for `tiffin serve` processes.
const BENCH_SIMULATION: [&str; 12] = [
    "--speed",
    "1000000",
    "--kitchen-capacity",
    "100000",
    "--couriers",
    "2000",
    "--payment-latency-ms",
    "0",
    "--reject-rate",
    "0",
    "--decline-rate",
    "0",
];

/// The bus and database of a Tiffin round.
struct Engines {
    distributed: bool,
    queue_bus: String,
    stream_bus: String,
    /// The PostgreSQL server and name prefix of the round's databases; none for
    /// SQLite files.
    database: Option<String>,
}

impl Engines {
    /// Returns the engines of a round in `topology`. With `--topology both`, the
    /// all-in-one rounds run on the embedded defaults, as `tiffin up` does, and
    /// --bus and --database are for the distributed rounds.
    fn of(args: &BenchArgs, topology: Topology) -> Self {
        if args.topology() == Topology::Both && topology == Topology::AllInOne {
            return Self {
                distributed: false,
                queue_bus: "embedded:".to_owned(),
                stream_bus: "embedded:".to_owned(),
                database: None,
            };
        }
        let (queue_bus, stream_bus) = args.bus.urls();
        Self {
            distributed: topology == Topology::Distributed,
            queue_bus,
            stream_bus,
            database: args.database.clone(),
        }
    }
}

async fn tiffin_round(args: &BenchArgs, round: u32, topology: Topology) -> anyhow::Result<Figures> {
    let engines = Engines::of(args, topology);
    let dir = tempfile::tempdir()?;
    // Each round gets databases of its own, dropped after it: tables and indexes
    // left by earlier rounds would make every round slower than the one before.
    let database = engines.database.as_deref().map(|url| {
        let stamp = uuid::Uuid::now_v7().simple().to_string();
        round_database(url, &format!("r{round}_{}", &stamp[stamp.len() - 8..]))
    });
    let started = Target::start(args, &engines, database.as_deref(), dir.path()).await;
    let outcome = match started {
        Ok(target) => {
            let outcome = measure(args, &target, dir.path(), round).await;
            target.stop().await;
            outcome
        }
        Err(error) => Err(error),
    };
    if let Some(url) = &database {
        drop_round_databases(url).await;
    }
    let mut figures = outcome?;
    figures.topology = Some(topology.as_str().to_owned());
    Ok(figures)
}

/// Returns `url` with its database name (the prefix of the service databases)
/// followed by `suffix`.
fn round_database(url: &str, suffix: &str) -> String {
    let Databases::Postgres { prefix, .. } = Databases::postgres(url) else {
        unreachable!("Databases::postgres builds a PostgreSQL layout")
    };
    tiffin_runtime::db::with_database(url, &format!("{prefix}_{suffix}"))
}

/// Drops the service databases of a round, warning about those that remain.
async fn drop_round_databases(url: &str) {
    let databases = Databases::postgres(url);
    for service in crate::system::SERVICES {
        let service_url = databases.url(service);
        if let Err(error) = tiffin_runtime::db::drop_postgres_database(&service_url).await {
            eprintln!("warning: {error}; drop it by hand");
        }
    }
}

async fn measure(
    args: &BenchArgs,
    target: &Target,
    dir: &Path,
    round: u32,
) -> anyhow::Result<Figures> {
    let url = target.url();
    let http = tiffin_runtime::http::client(Duration::from_secs(30))?;
    let menu_file = dir.join("menu.txt");
    let tokens_file = dir.join("tokens.txt");
    write_menu(&http, &url, &menu_file).await?;
    write_tokens(&http, &url, args.connections, &tokens_file).await?;
    // The reference's wrk sends its orders straight to its order service. Through
    // the gateway, each order would cost one more HTTP hop.
    let orders_url = if args.through_gateway {
        url.clone()
    } else {
        target.orders_url()?
    };
    let stamp = uuid::Uuid::now_v7().simple().to_string();
    let mut load = wrk::Run {
        script: &args.script,
        url: &orders_url,
        menu_file: &menu_file,
        tokens_file: &tokens_file,
        run_id: &format!("warmup-{round}-{stamp}"),
        connections: args.connections,
        threads: args.threads,
        duration: Duration::from_secs(args.warmup),
    };
    if args.warmup > 0 {
        load.run().await.context("the warm-up failed")?;
        target.wait_quiet(Duration::from_secs(300)).await?;
    }

    let run_id = format!("run-{round}-{stamp}");
    load.run_id = &run_id;
    load.duration = Duration::from_secs(args.duration);
    let own = target.processes();
    let started_ms = tiffin_runtime::time::now_millis();
    let before = procs::Snapshot::take();
    let sampler =
        procs::MemorySampler::start(own.keys().copied().collect(), Duration::from_secs(1));
    let wrk = load.run().await;
    let peak_pss_total_bytes = sampler.stop();
    let wrk = wrk?;
    let after = procs::Snapshot::take();
    let peak_rss_bytes = own
        .iter()
        .map(|(pid, name)| (name.clone(), procs::peak_rss(*pid)))
        .collect();
    let cpu_s = procs::cpu_by_group(&before, &after, &own);

    target.wait_quiet(Duration::from_secs(300)).await?;
    let drained = procs::Snapshot::take();
    let cpu_drained_s = procs::cpu_by_group(&before, &drained, &own);
    let databases = target.databases();
    let delivery = args.flow.delivery();
    let mut counts = crate::report::count_for(databases, delivery).await?;
    for _ in 0..600 {
        if counts.analytics_orders == counts.placed && counts.lost == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        counts = crate::report::count_for(databases, delivery).await?;
    }
    let audit = crate::audit::audit_for(databases, 300_000, delivery).await?;
    let end_to_end = figures::end_to_end(databases, started_ms).await?;
    let integrity = format!(
        "({} orders: lost {}, missing tickets {}, duplicate tickets {}, duplicate notifications {}, wrong notification counts {}, duplicate authorizations {}, orders without authorization {}, analytics {} of {}, audit violations {})",
        counts.placed,
        counts.lost,
        counts.missing_tickets,
        counts.duplicate_tickets,
        counts.duplicate_notifications,
        counts.orders_with_wrong_notifications,
        counts.duplicate_authorizations,
        counts.orders_without_authorization,
        counts.analytics_orders,
        counts.placed,
        audit.violations.len(),
    );
    if let Some(first) = audit.violations.first() {
        eprintln!(
            "audit: {} violations, the first: {} for {}: {}",
            audit.violations.len(),
            first.rule,
            first.order_id,
            first.detail
        );
    }
    Ok(Figures {
        implementation: "tiffin".to_owned(),
        topology: None,
        wrk,
        end_to_end,
        integrity_ok: counts.is_clean() && audit.is_clean(),
        integrity,
        cpu_s,
        cpu_drained_s,
        own_prefix: "tiffin".to_owned(),
        peak_rss_bytes,
        peak_pss_total_bytes,
    })
}

/// Writes the wrk script's menu file: the restaurants open around the clock, so
/// that no order is rejected as out of hours, each with its menu item ids.
async fn write_menu(http: &reqwest::Client, url: &str, path: &Path) -> anyhow::Result<()> {
    let mut restaurants = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut page_url = format!("{url}/v1/restaurants?limit=100");
        if let Some(cursor) = &cursor {
            page_url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = http
            .get(&page_url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for restaurant in page["items"].as_array().into_iter().flatten() {
            if restaurant["opening_hours"] == "24/7"
                && let Some(id) = restaurant["id"].as_str()
            {
                restaurants.push(id.to_owned());
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    anyhow::ensure!(
        !restaurants.is_empty(),
        "the catalog has no restaurant open around the clock to order from"
    );
    let mut lines = Vec::new();
    for restaurant in restaurants {
        let menu: Value = http
            .get(format!("{url}/v1/restaurants/{restaurant}/menu"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let items: Vec<&str> = menu["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["id"].as_str())
            .collect();
        if !items.is_empty() {
            lines.push(format!("{restaurant} {}", items.join(" ")));
        }
    }
    std::fs::write(path, lines.join("\n") + "\n")?;
    Ok(())
}

/// Registers one customer per connection and writes one access token per line.
async fn write_tokens(
    http: &reqwest::Client,
    url: &str,
    connections: u32,
    path: &Path,
) -> anyhow::Result<()> {
    let mut tokens = Vec::new();
    for n in 0..connections {
        let credentials = serde_json::json!({
            "email": format!("bench-{n}@bench.tiffin.dev"),
            "password": format!("bench-password-{n}"),
        });
        // A customer registered by an earlier round logs in all the same.
        http.post(format!("{url}/v1/auth/register"))
            .json(&credentials)
            .send()
            .await?;
        let login: Value = http
            .post(format!("{url}/v1/auth/login"))
            .json(&credentials)
            .send()
            .await?
            .error_for_status()
            .context("logging a benchmark customer in failed")?
            .json()
            .await?;
        let token = login["access_token"]
            .as_str()
            .context("the login response has no access_token")?;
        tokens.push(token.to_owned());
    }
    std::fs::write(path, tokens.join("\n") + "\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn bench_args(argv: &[&str]) -> BenchArgs {
        let cli = Cli::try_parse_from(["tiffin", "bench"].iter().chain(argv))
            .expect("bench arguments parse");
        let Command::Bench(args) = cli.command else {
            unreachable!("parsed as bench");
        };
        args
    }

    fn round(implementation: &str, topology: Option<&str>, orders_per_s: f64) -> Figures {
        Figures {
            implementation: implementation.to_owned(),
            topology: topology.map(str::to_owned),
            wrk: WrkFigures {
                orders_per_s,
                created: 1000,
                ..WrkFigures::default()
            },
            end_to_end: EndToEnd::default(),
            integrity_ok: true,
            integrity: String::new(),
            cpu_s: BTreeMap::new(),
            cpu_drained_s: BTreeMap::new(),
            own_prefix: "tiffin".to_owned(),
            peak_rss_bytes: BTreeMap::new(),
            peak_pss_total_bytes: 0,
        }
    }

    #[test]
    fn both_runs_all_in_one_embedded() {
        let args = bench_args(&[
            "--topology",
            "both",
            "--bus",
            "amqp://guest:guest@127.0.0.1:5672/bench",
            "--database",
            "postgres://tiffin:tiffin@127.0.0.1:5432/bench",
        ]);

        let distributed = Engines::of(&args, Topology::Distributed);
        let all_in_one = Engines::of(&args, Topology::AllInOne);

        assert!(distributed.distributed);
        assert_eq!(
            distributed.queue_bus,
            "amqp://guest:guest@127.0.0.1:5672/bench"
        );
        assert!(distributed.database.is_some());
        assert!(!all_in_one.distributed);
        assert_eq!(all_in_one.queue_bus, "embedded:");
        assert_eq!(all_in_one.stream_bus, "embedded:");
        assert_eq!(all_in_one.database, None);
    }

    #[test]
    fn all_in_one_alone_keeps_bus() {
        let args = bench_args(&["--database", "postgres://tiffin:tiffin@127.0.0.1:5432/b"]);

        let engines = Engines::of(&args, args.topology());

        assert_eq!(args.topology(), Topology::AllInOne);
        assert!(!engines.distributed);
        assert!(engines.database.is_some());
    }

    #[test]
    fn distributed_flag_conflicts_with_topology() {
        let parsed =
            Cli::try_parse_from(["tiffin", "bench", "--distributed", "--topology", "both"]);

        assert!(parsed.is_err());
        assert_eq!(
            bench_args(&["--distributed"]).topology(),
            Topology::Distributed
        );
    }

    #[test]
    fn comparison_per_topology() {
        let rounds = [
            round("reference", None, 400.0),
            round("tiffin", Some("distributed"), 200.0),
            round("tiffin", Some("all-in-one"), 600.0),
            round("reference", None, 600.0),
            round("tiffin", Some("distributed"), 300.0),
            round("tiffin", Some("all-in-one"), 400.0),
        ];

        let text = compare(&rounds).expect("both implementations have rounds");
        let orders: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("orders/s"))
            .collect();

        assert!(text.contains("Tiffin distributed"), "{text}");
        assert!(text.contains("Tiffin all-in-one"), "{text}");
        assert_eq!(orders.len(), 2, "{text}");
        assert!(orders[0].ends_with("0.50x"), "{text}");
        assert!(orders[1].ends_with("1.00x"), "{text}");
    }

    #[test]
    fn no_comparison_without_reference() {
        let rounds = [round("tiffin", Some("distributed"), 200.0)];

        assert_eq!(compare(&rounds), None);
    }
}
