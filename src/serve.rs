//! `tiffin serve`: one service per process, and `tiffin demo --distributed`, which
//! starts every service that way.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tiffin_runtime::CancellationToken;
use tokio::process::{Child, Command};

use crate::cli::{DemoArgs, ServeArgs};
use crate::demo::DemoReport;
use crate::services::{self, START_ORDER, Topology};
use crate::system::{Databases, Delivery, SystemSettings, port_offset};

/// The first wait before trying again to start, and the longest wait.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Runs one service until Ctrl-C or SIGTERM.
///
/// While its database or broker cannot be reached it logs why and tries again, after
/// 0.5 s, doubling up to 30 s, instead of exiting.
///
/// # Errors
///
/// Fails on settings that no retry can fix: an unknown service or an embedded bus.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        START_ORDER.contains(&args.service.as_str()),
        "unknown service `{}`: choose one of {}",
        args.service,
        START_ORDER.join(", ")
    );
    let (queue_url, stream_url) = args.bus.urls();
    anyhow::ensure!(
        !queue_url.starts_with("embedded:") && !stream_url.starts_with("embedded:"),
        "tiffin serve needs a broker that other processes share: pass --bus amqp://..., --bus nats://... or --bus kafka://... \
         (the embedded bus belongs to one process; use tiffin up for that)"
    );
    std::fs::create_dir_all(&args.data.data_dir)
        .with_context(|| format!("failed to create {}", args.data.data_dir.display()))?;
    let data_dir = args.data.data_dir.canonicalize()?;

    let mut topology = Topology::default();
    for service in START_ORDER {
        let addr = match service {
            "gateway" => args.gateway_addr,
            other => SocketAddr::from((Ipv4Addr::LOCALHOST, args.port_base + port_offset(other))),
        };
        topology.set(service, addr);
    }
    for (name, addr) in &args.peers {
        topology.set(name, *addr);
    }
    let listen = args.listen.unwrap_or(topology.addr(&args.service)?);
    let databases = match &args.database {
        Some(server) => Databases::postgres(server),
        None => Databases::Sqlite(data_dir.clone()),
    };
    let settings = SystemSettings {
        data_dir: data_dir.clone(),
        database: args.database.clone(),
        gateway_addr: args.gateway_addr,
        port_base: args.port_base,
        time_scale: args.time_scale,
        processor: crate::demo::processor(&args.simulation)?,
        notify_channel: args.simulation.notify_channel.clone(),
        reject_rate: args.simulation.reject_rate,
        kitchen_capacity: args.simulation.kitchen_capacity,
        couriers: args.simulation.couriers,
        queue_bus: queue_url.clone(),
        stream_bus: stream_url.clone(),
        fault_exit_after_payment_step: false,
        pool: args.pool.settings(),
        release_unclaimed_after: std::time::Duration::from_secs(60),
        admission: args.admission.settings(),
        delivery: if args.without_delivery {
            Delivery::LeftOut
        } else {
            Delivery::Runs
        },
    };

    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let mut delay = RETRY_FIRST;
    let built = loop {
        let attempt = async {
            if args.service != "gateway"
                && let Databases::Postgres { .. } = databases
            {
                tiffin_runtime::db::create_postgres_database(&databases.url(&args.service)).await?;
            }
            let bus = crate::bus::connect(&queue_url, &stream_url, &data_dir).await?;
            let database_url = if args.service == "gateway" {
                String::new()
            } else {
                databases.url(&args.service)
            };
            services::build(
                &args.service,
                listen,
                &topology,
                &settings,
                database_url,
                bus.bus,
            )
            .await
        };
        match attempt.await {
            Ok(built) => break built,
            Err(error) => {
                tracing::warn!(service = %args.service, error = %format!("{error:#}"), retry_in_ms = delay.as_millis() as u64, "failed to start, waiting for its dependencies");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(()),
                }
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    };

    let scheme = if args.service == "payments" {
        "grpc"
    } else {
        "http"
    };
    println!("{} listening on {scheme}://{}", args.service, built.addr);
    let outcome = (built.run)(shutdown).await;
    println!("{} stopped", args.service);
    outcome
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGTERM; only Ctrl-C stops the service");
                let _ = tokio::signal::ctrl_c().await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutdown requested: finishing in-flight work and flushing the outbox");
        shutdown.cancel();
    });
}

/// Every service as its own `tiffin serve` process: the distributed topology on one
/// machine, for `demo --distributed` and for fault tests that kill and restart
/// single services.
#[derive(Debug)]
pub struct Cluster {
    exe: std::path::PathBuf,
    data_dir: std::path::PathBuf,
    /// The arguments every `serve` process gets besides its service and address.
    common: Vec<String>,
    ports: Vec<(&'static str, SocketAddr)>,
    children: Vec<(&'static str, Child)>,
    databases: Databases,
    delivery: Delivery,
}

impl Cluster {
    /// Starts every service process with the settings of `args` over `data_dir`,
    /// running this same executable as `tiffin serve`. The delivery service starts
    /// only when `delivery` is [`Delivery::Runs`].
    ///
    /// # Errors
    ///
    /// Fails when the bus is embedded (processes cannot share it) or a process
    /// cannot be spawned.
    pub async fn start(
        args: &DemoArgs,
        data_dir: &Path,
        delivery: Delivery,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("failed to find the tiffin executable")?;
        Self::start_with(&exe, args, data_dir, delivery).await
    }

    /// Like [`Cluster::start`], running `exe` as the `tiffin` executable (tests run
    /// from another binary).
    ///
    /// # Errors
    ///
    /// As for [`Cluster::start`].
    pub async fn start_with(
        exe: &Path,
        args: &DemoArgs,
        data_dir: &Path,
        delivery: Delivery,
    ) -> anyhow::Result<Self> {
        let (queue_url, stream_url) = args.bus.urls();
        anyhow::ensure!(
            !queue_url.starts_with("embedded:") && !stream_url.starts_with("embedded:"),
            "--distributed needs a broker that the processes share: pass --bus amqp://..., --bus nats://... or --bus kafka://..."
        );
        std::fs::create_dir_all(data_dir.join("logs"))?;
        let data_dir = data_dir.canonicalize()?;
        let ports = free_ports()?;
        let simulation = &args.simulation;
        let mut common: Vec<String> = vec![
            "--queue-bus".into(),
            queue_url,
            "--stream-bus".into(),
            stream_url,
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--time-scale".into(),
            args.replay.speed.to_string(),
            "--decline-rate".into(),
            simulation.decline_rate.to_string(),
            "--payment-error-rate".into(),
            simulation.payment_error_rate.to_string(),
            "--payment-latency-ms".into(),
            simulation.payment_latency_ms.to_string(),
            "--reject-rate".into(),
            simulation.reject_rate.to_string(),
            "--kitchen-capacity".into(),
            simulation.kitchen_capacity.to_string(),
            "--couriers".into(),
            simulation.couriers.to_string(),
            "--notify-channel".into(),
            simulation.notify_channel.clone(),
            "--db-max-connections".into(),
            args.pool.db_max_connections.to_string(),
            "--db-acquire-timeout".into(),
            args.pool.db_acquire_timeout.to_string(),
            "--log-format".into(),
            "json".into(),
        ];
        common.extend(args.admission.to_args());
        if delivery == Delivery::LeftOut {
            common.push("--without-delivery".to_owned());
        }
        if let Some(database) = &args.database {
            common.extend(["--database".to_owned(), database.clone()]);
        }
        for (name, addr) in &ports {
            common.extend(["--peer".to_owned(), format!("{name}={addr}")]);
        }
        let mut cluster = Self {
            exe: exe.to_path_buf(),
            databases: match &args.database {
                Some(server) => Databases::postgres(server),
                None => Databases::Sqlite(data_dir.clone()),
            },
            data_dir,
            common,
            ports,
            children: Vec::new(),
            delivery,
        };
        for service in START_ORDER.into_iter().filter(|s| delivery.runs(s)) {
            cluster.spawn(service)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, service: &'static str) -> anyhow::Result<()> {
        let child = self.spawn_process(service, self.addr(service), service)?;
        self.children.retain(|(name, _)| *name != service);
        self.children.push((service, child));
        Ok(())
    }

    fn spawn_process(
        &self,
        service: &str,
        addr: SocketAddr,
        log_name: &str,
    ) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("logs").join(format!("{log_name}.log")))?;
        Command::new(&self.exe)
            .args(["serve", service, "--listen", &addr.to_string()])
            .args(&self.common)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start {service}"))
    }

    /// Starts one more process of `service` on a free port, sharing the first one's
    /// database and broker: its consumers join the same groups and its outbox
    /// relay takes turns with the first one's. Clients still reach the first process
    /// through the gateway. Its log is `<service>-<n>.log`.
    ///
    /// # Errors
    ///
    /// Fails when the service name is unknown, its data is in SQLite files (which
    /// belong to one process), or the process cannot be spawned.
    pub fn add_replica(&mut self, service: &str) -> anyhow::Result<()> {
        let service = START_ORDER
            .into_iter()
            .find(|name| *name == service)
            .with_context(|| format!("unknown service {service}"))?;
        anyhow::ensure!(
            matches!(self.databases, Databases::Postgres { .. }),
            "replicas of {service} need --database postgres://...: a SQLite file belongs to one process"
        );
        let number = self
            .children
            .iter()
            .filter(|(name, _)| *name == service)
            .count()
            + 1;
        let addr = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
        let child = self.spawn_process(service, addr, &format!("{service}-{number}"))?;
        self.children.push((service, child));
        Ok(())
    }

    fn addr(&self, service: &str) -> SocketAddr {
        self.ports
            .iter()
            .find(|(name, _)| *name == service)
            .map(|(_, addr)| *addr)
            .expect("every service has a port")
    }

    /// Returns the gateway's base URL.
    pub fn gateway_url(&self) -> String {
        format!("http://{}", self.addr("gateway"))
    }

    /// Returns the base URL of the order service's first process.
    pub fn orders_url(&self) -> String {
        format!("http://{}", self.addr("orders"))
    }

    /// Returns the services' databases.
    pub fn databases(&self) -> &Databases {
        &self.databases
    }

    /// Returns whether the delivery service runs.
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    /// Returns the service and process id of every running process.
    pub fn processes(&self) -> Vec<(&'static str, u32)> {
        self.children
            .iter()
            .filter_map(|(name, child)| child.id().map(|pid| (*name, pid)))
            .collect()
    }

    /// Returns the directory of the processes' logs.
    pub fn logs_dir(&self) -> std::path::PathBuf {
        self.data_dir.join("logs")
    }

    /// Waits until the gateway reports every upstream ready and every replica contains
    /// the catalog, failing early when a process exits.
    ///
    /// # Errors
    ///
    /// Fails after `timeout` or when a process has exited.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let client = tiffin_runtime::http::client(Duration::from_secs(3))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let logs = self.logs_dir();
        loop {
            for (name, child) in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    let log = logs.join(format!("{name}.log"));
                    let detail = std::fs::read_to_string(&log)
                        .ok()
                        .and_then(|text| exit_error(&text).or_else(|| last_problem(&text)))
                        .map(|problem| format!(": {problem}"))
                        .unwrap_or_default();
                    anyhow::bail!(
                        "service {name} exited with {status} during start-up (log {}){detail}",
                        log.display()
                    );
                }
            }
            let gateway_ready = client
                .get(format!("{}/readyz", self.gateway_url()))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if gateway_ready {
                let lagging = crate::report::lagging_replicas(&self.databases, self.delivery)
                    .await
                    .unwrap_or_else(|error| vec![error.to_string()]);
                if lagging.is_empty() {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let problems = self.last_problems();
                let detail = if problems.is_empty() {
                    String::new()
                } else {
                    format!("; last warnings:\n  {}", problems.join("\n  "))
                };
                anyhow::bail!(
                    "the distributed system was not ready within {} s (logs in {}){detail}",
                    timeout.as_secs(),
                    self.logs_dir().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Returns the last warning of the process logs, one line per distinct text
    /// with the logs that ended on it, so a start-up that never becomes ready
    /// reports why (an unknown virtual host, a refused login).
    fn last_problems(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.logs_dir()) else {
            return Vec::new();
        };
        let mut problems: std::collections::BTreeMap<String, Vec<String>> =
            std::collections::BTreeMap::new();
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            if let Some(problem) = last_problem(&text) {
                let name = entry.file_name().to_string_lossy().replace(".log", "");
                problems.entry(problem).or_default().push(name);
            }
        }
        problems
            .into_iter()
            .map(|(problem, mut names)| {
                names.sort();
                format!("{}: {problem}", names.join(", "))
            })
            .collect()
    }

    /// Kills one service's process with SIGKILL, as a crash would.
    ///
    /// # Errors
    ///
    /// Fails when the service is not running.
    pub async fn kill(&mut self, service: &str) -> anyhow::Result<()> {
        let (_, child) = self
            .children
            .iter_mut()
            .find(|(name, _)| *name == service)
            .with_context(|| format!("service {service} is not running"))?;
        child.kill().await?;
        Ok(())
    }

    /// Starts a killed service again on the same port.
    ///
    /// # Errors
    ///
    /// Fails when the service name is unknown or the process cannot be spawned.
    pub fn restart(&mut self, service: &str) -> anyhow::Result<()> {
        let service = START_ORDER
            .into_iter()
            .find(|name| *name == service)
            .with_context(|| format!("unknown service {service}"))?;
        self.spawn(service)
    }

    /// Asks every process to stop (SIGTERM), waits up to 15 s each, then kills.
    pub async fn stop(mut self) {
        for (_, child) in &self.children {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
        }
        for (name, child) in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_err()
            {
                tracing::warn!(service = *name, "did not stop within 15 s; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

/// Picks a free loopback port per service.
fn free_ports() -> anyhow::Result<Vec<(&'static str, SocketAddr)>> {
    let mut listeners = Vec::new();
    for service in START_ORDER {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listeners.push((service, listener.local_addr()?, listener));
    }
    // The ports are free again once the listeners drop; another process could take
    // one in between, which start-up then reports as a bind error.
    Ok(listeners
        .into_iter()
        .map(|(service, addr, _)| (service, addr))
        .collect())
}

/// Runs `tiffin demo --distributed`: every service as its own `tiffin serve`
/// process, then the same replay, report and audit as the all-in-one demo.
///
/// # Errors
///
/// Fails when a process cannot start or the system does not become ready.
pub async fn demo_distributed(args: &DemoArgs, data_dir: &Path) -> anyhow::Result<DemoReport> {
    let mut cluster = Cluster::start(args, data_dir, Delivery::Runs).await?;
    eprintln!(
        "Started every service as its own process; logs in {}",
        cluster.logs_dir().display()
    );
    let outcome = async {
        cluster.wait_ready(Duration::from_secs(180)).await?;
        crate::demo::replay_and_count(&cluster.gateway_url(), cluster.databases(), None, args).await
    }
    .await;
    eprintln!("Stopping the service processes...");
    cluster.stop().await;
    outcome
}

/// Returns the last warning or error of a log, preferring lines that carry an
/// `error` field: JSON lines as `LEVEL message: error`, text lines as they are.
fn last_problem(log: &str) -> Option<String> {
    let mut fallback = None;
    for line in log.lines().rev() {
        let line = strip_ansi(line);
        if !(line.contains("WARN") || line.contains("ERROR")) {
            continue;
        }
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(&line) else {
            return Some(line.trim().to_owned());
        };
        let text = |key: &str| fields.get(key).and_then(|v| v.as_str()).unwrap_or_default();
        let summary = format!("{} {}", text("level"), text("message"));
        if fields.contains_key("error") {
            return Some(format!("{summary}: {}", text("error")));
        }
        fallback.get_or_insert(summary);
    }
    fallback
}

/// Removes terminal colour codes (`ESC [ ... m`) from a log line.
/// Returns the error a `tiffin` process printed as it exited (`error: ...`), which
/// names the cause with its context, unlike the log lines before it.
fn exit_error(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .find_map(|line| strip_ansi(line).strip_prefix("error: ").map(str::to_owned))
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for end in chars.by_ref() {
                if end.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{last_problem, strip_ansi};

    #[test]
    fn last_problem_prefers_a_line_with_an_error() {
        let log = concat!(
            r#"{"level":"WARN","message":"failed to start","error":"vhost x not found"}"#,
            "\n",
            r#"{"level":"ERROR","message":"backoff exhausted"}"#,
            "\n",
            r#"{"level":"INFO","message":"retrying"}"#,
        );
        assert_eq!(
            last_problem(log).as_deref(),
            Some("WARN failed to start: vhost x not found")
        );
    }

    #[test]
    fn last_problem_reads_text_lines() {
        let log = "INFO started\n\u{1b}[33m WARN\u{1b}[0m disk slow\nINFO ok";
        assert_eq!(last_problem(log).as_deref(), Some("WARN disk slow"));
        assert_eq!(last_problem("INFO fine"), None);
    }

    #[test]
    fn strip_ansi_keeps_text() {
        assert_eq!(
            strip_ansi("\u{1b}[33m WARN\u{1b}[0m vhost not found"),
            " WARN vhost not found"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
