//! `tiffin up` and `tiffin demo`.

use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tiffin_bus::embedded::EmbeddedBus;

use crate::audit::{self, AuditReport};
use crate::cli::{DemoArgs, SimulationArgs, UpArgs};
use crate::load::{self, LoadSettings, LoadSummary};
use crate::report::{self, SystemCounts};
use crate::system::{Databases, Delivery, System, SystemSettings};

pub(crate) fn processor(
    simulation: &SimulationArgs,
) -> anyhow::Result<tiffin_payments::ProcessorSettings> {
    for (name, value) in [
        ("--decline-rate", simulation.decline_rate),
        ("--payment-error-rate", simulation.payment_error_rate),
        ("--reject-rate", simulation.reject_rate),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&value),
            "{name} is {value}; it must be between 0 and 1"
        );
    }
    Ok(tiffin_payments::ProcessorSettings {
        decline_rate: simulation.decline_rate,
        error_rate: simulation.payment_error_rate,
        latency: Duration::from_millis(simulation.payment_latency_ms),
        ..Default::default()
    })
}

/// Runs `tiffin up` until Ctrl-C.
///
/// # Errors
///
/// Fails when the system cannot start or a service fails.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.time_scale > 0.0,
        "--time-scale is {}; it must be greater than 0",
        args.time_scale
    );
    let mut system = System::start(SystemSettings {
        data_dir: args.data.data_dir.clone(),
        database: args.database.clone(),
        gateway_addr: args.gateway_addr,
        port_base: args.port_base,
        time_scale: args.time_scale,
        processor: processor(&args.simulation)?,
        notify_channel: args.simulation.notify_channel.clone(),
        reject_rate: args.simulation.reject_rate,
        kitchen_capacity: args.simulation.kitchen_capacity,
        couriers: args.simulation.couriers,
        queue_bus: args.bus.urls().0,
        stream_bus: args.bus.urls().1,
        fault_exit_after_payment_step: args.fault_exit_after_payment_step,
        pool: args.pool.settings(),
        release_unclaimed_after: std::time::Duration::from_secs(60),
        admission: args.admission.settings(),
        delivery: Delivery::Runs,
    })
    .await?;

    if let Err(error) = system.wait_ready(Duration::from_secs(120)).await {
        system.stop().await;
        return Err(error);
    }
    match system.databases() {
        Databases::Sqlite(dir) => println!("Tiffin is ready; data in {}", dir.display()),
        Databases::Postgres { server, prefix } => println!(
            "Tiffin is ready; events in {}, data in the {prefix}_* databases on {}",
            system.data_dir().display(),
            tiffin_runtime::db::redact(server)
        ),
    }
    for (name, addr) in &system.addresses {
        let scheme = if *name == "payments" { "grpc" } else { "http" };
        println!("  {name:<14} {scheme}://{addr}");
    }
    println!(
        "Clients use the gateway: {}. Press Ctrl-C to stop.",
        system.gateway_url
    );

    let stop = system.shutdown_token();
    let ctrl_c = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("shutdown requested: finishing in-flight work and flushing outboxes");
            ctrl_c.cancel();
        }
    });
    let failed = system.watch(&stop).await;
    let data_dir = system.data_dir().to_path_buf();
    system.stop().await;
    if let Some(name) = failed {
        anyhow::bail!("service {name} stopped unexpectedly; see the log above");
    }
    println!(
        "Tiffin stopped; starting it again on {} resumes where it stopped.",
        data_dir.display()
    );
    Ok(())
}

/// The report `tiffin demo --report` writes.
#[derive(Debug, Serialize)]
pub struct DemoReport {
    /// Orders stored (from the order database).
    pub placed: i64,
    /// Authorizations declined (from the payment database).
    pub declined: i64,
    /// Order requests that failed (from the load generator: a failed request stores
    /// nothing anywhere).
    pub failed: u64,
    /// Orders ready or later (from the order database).
    pub reached_ready: i64,
    /// Stored orders that are not ready.
    pub lost: i64,
    /// Orders with more than one kitchen ticket.
    pub duplicate_tickets: i64,
    /// Events with more than one notification.
    pub duplicate_notifications: i64,
    /// HTTP latency of placing an order, from the load generator.
    pub http_p50_ms: f64,
    /// As above.
    pub http_p99_ms: f64,
    /// From placement to ready, from the orders' timelines.
    pub ready_p50_ms: f64,
    /// As above.
    pub ready_p99_ms: f64,
    /// Orders per final state (from the order database).
    pub final_states: std::collections::BTreeMap<String, i64>,
    /// True when nothing was lost, doubled or failed, analytics agrees and the audit
    /// found no violation.
    pub clean: bool,
    /// The cross-service audit.
    pub audit: AuditReport,
    /// Every count read from the databases.
    pub system: SystemCounts,
    /// Everything the load generator saw.
    pub load: LoadSummary,
}

/// Runs `tiffin demo`: starts the system, replays orders, reports and stops.
///
/// Returns whether the run was clean.
///
/// # Errors
///
/// Fails when the system cannot start or the report cannot be written.
pub async fn demo(args: DemoArgs) -> anyhow::Result<bool> {
    // Settings are checked before the system starts, not after a long replay.
    processor(&args.simulation)?;
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.replay.cancel_rate),
        "--cancel-rate is {}; it must be between 0 and 1",
        args.replay.cancel_rate
    );
    let temporary;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temporary = tempfile::Builder::new().prefix("tiffin-demo-").tempdir()?;
            temporary.path().to_path_buf()
        }
    };

    eprintln!(
        "Starting Tiffin in {} (seeding the catalog on first start)...",
        data_dir.display()
    );
    let report = if args.distributed {
        crate::serve::demo_distributed(&args, &data_dir).await?
    } else {
        run_in_process(&args, &data_dir).await?
    };

    print_report(&report);
    if let Some(path) = &args.report {
        write_json(path, &report)?;
        eprintln!("Report written to {}", path.display());
    }
    if args.data_dir.is_some() {
        eprintln!("Data kept in {}", data_dir.display());
    }
    Ok(report.clean)
}

async fn run_in_process(args: &DemoArgs, data_dir: &Path) -> anyhow::Result<DemoReport> {
    let system = System::start(SystemSettings {
        data_dir: data_dir.to_path_buf(),
        database: args.database.clone(),
        gateway_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        port_base: 0,
        time_scale: args.replay.speed,
        processor: processor(&args.simulation)?,
        notify_channel: args.simulation.notify_channel.clone(),
        reject_rate: args.simulation.reject_rate,
        kitchen_capacity: args.simulation.kitchen_capacity,
        couriers: args.simulation.couriers,
        queue_bus: args.bus.urls().0,
        stream_bus: args.bus.urls().1,
        fault_exit_after_payment_step: false,
        pool: args.pool.settings(),
        release_unclaimed_after: std::time::Duration::from_secs(60),
        admission: args.admission.settings(),
        delivery: Delivery::Runs,
    })
    .await?;
    let outcome = replay_and_report(&system, args).await;
    eprintln!("Stopping...");
    system.stop().await;
    outcome
}

async fn replay_and_report(system: &System, args: &DemoArgs) -> anyhow::Result<DemoReport> {
    system.wait_ready(Duration::from_secs(120)).await?;
    replay_and_count(&system.gateway_url, system.databases(), system.bus(), args).await
}

/// Replays the orders through `gateway_url`, waits for the system to settle and
/// counts what the databases hold. `embedded` is the embedded bus, whose queues count
/// as unsettled work; a broker's queues are waited out through the audit instead.
pub(crate) async fn replay_and_count(
    gateway_url: &str,
    databases: &Databases,
    embedded: Option<&EmbeddedBus>,
    args: &DemoArgs,
) -> anyhow::Result<DemoReport> {
    eprintln!(
        "Replaying {} real orders through {} at {}x real time...",
        args.orders, gateway_url, args.replay.speed
    );

    let summary = load::run(LoadSettings {
        target: gateway_url.to_owned(),
        limit: args.orders,
        skip: args.replay.skip,
        speed: args.replay.speed,
        concurrency: args.replay.concurrency,
        customers: args.replay.customers,
        order_timeout: Duration::from_secs(args.replay.order_timeout_secs),
        cancel_rate: args.replay.cancel_rate,
        run_id: format!("demo-{}", uuid::Uuid::now_v7()),
        progress: std::io::stderr().is_terminal(),
    })
    .await?;

    crate::system::wait_quiet(databases, embedded, Delivery::Runs, Duration::from_secs(60))
        .await
        .context("the system did not settle after the replay")?;
    // Analytics and notifications read at their own pace (and a broker's queues are
    // not counted above): give them up to 10 s to agree.
    let mut counts = report::count(databases).await?;
    // Every order is final by now, so the audit's time limit only has to cover the
    // payment steps the worker may still be finishing.
    let mut audit = audit::audit(databases, 30_000).await?;
    for _ in 0..100 {
        if counts.analytics_orders == counts.placed && audit.is_clean() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        counts = report::count(databases).await?;
        audit = audit::audit(databases, 30_000).await?;
    }

    Ok(DemoReport {
        placed: counts.placed,
        declined: counts.declined,
        failed: summary.failed_total(),
        reached_ready: counts.reached_ready,
        lost: counts.lost,
        duplicate_tickets: counts.duplicate_tickets,
        duplicate_notifications: counts.duplicate_notifications,
        http_p50_ms: summary.http_p50_ms,
        http_p99_ms: summary.http_p99_ms,
        ready_p50_ms: counts.ready_p50_ms,
        ready_p99_ms: counts.ready_p99_ms,
        clean: counts.is_clean()
            && audit.is_clean()
            && summary.failed_total() == 0
            && summary.lost == 0,
        final_states: counts.orders_by_status.clone(),
        audit,
        system: counts,
        load: summary,
    })
}

fn print_report(report: &DemoReport) {
    println!("\nWhat the load generator saw:\n{}", report.load);
    let system = &report.system;
    println!("\nWhat the services stored:");
    println!("placed             {}", system.placed);
    println!("declined           {}", system.declined);
    println!("reached ready      {}", system.reached_ready);
    println!("lost               {}", system.lost);
    println!(
        "duplicate tickets  {} (missing {})",
        system.duplicate_tickets, system.missing_tickets
    );
    println!(
        "notifications      {} duplicated, {} orders with a wrong count",
        system.duplicate_notifications, system.orders_with_wrong_notifications
    );
    println!(
        "authorizations     {} duplicated, {} orders without one",
        system.duplicate_authorizations, system.orders_without_authorization
    );
    println!(
        "placed to ready    p50 {:.0} ms, p99 {:.0} ms",
        system.ready_p50_ms, system.ready_p99_ms
    );
    println!(
        "analytics          {} orders, {} cents (orders: {} cents)",
        system.analytics_orders, system.analytics_revenue_cents, system.orders_revenue_cents
    );
    println!("\nAudit:\n{}", report.audit);
    if !system.problem_orders.is_empty() {
        println!("orders to look at  {}", system.problem_orders.join(" "));
    }
    println!(
        "\nResult: {}",
        if report.clean {
            "clean: nothing lost, nothing doubled"
        } else {
            "PROBLEMS FOUND (see above)"
        }
    );
}

/// Writes `value` as pretty JSON to `path`.
///
/// # Errors
///
/// Fails when the file cannot be written.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    std::fs::write(path, json + "\n").with_context(|| format!("failed to write {}", path.display()))
}
