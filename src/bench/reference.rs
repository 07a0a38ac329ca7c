//! Runs the reference implementation's own benchmark script and reads its summary.
//!
//! The reference is a folder with a `run.sh DURATION CONNECTIONS THREADS` that
//! writes `summary.json` into the directory named by `SCRATCH`, with wrk's figures
//! under `wrk`, end-to-end latency under `e2e_ms`, the integrity verdict under
//! `checks.ok` and CPU seconds per process group under `cpu.groups`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::Figures;
use super::wrk::WrkFigures;

#[derive(Debug, Deserialize)]
struct Summary {
    wrk: WrkFigures,
    e2e_ms: EndToEndSummary,
    checks: Checks,
    cpu: Cpu,
}

#[derive(Debug, Deserialize)]
struct EndToEndSummary {
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Deserialize)]
struct Checks {
    ok: bool,
}

#[derive(Debug, Deserialize)]
struct Cpu {
    groups: Vec<CpuGroup>,
}

#[derive(Debug, Deserialize)]
struct CpuGroup {
    group: String,
    cpu_s: f64,
}

/// Runs one round of the reference in `dir` with the same load as Tiffin's rounds.
///
/// # Errors
///
/// Fails when the script fails or its summary is missing or malformed.
pub(super) async fn run(
    dir: &Path,
    script: &Path,
    scratch: &Path,
    duration_s: u64,
    connections: u32,
    threads: u32,
) -> anyhow::Result<Figures> {
    let run_sh = dir.join("run.sh");
    anyhow::ensure!(
        run_sh.exists(),
        "no run.sh in the reference folder {}; pass a writable copy of the reference implementation",
        dir.display()
    );
    let script = script
        .canonicalize()
        .with_context(|| format!("wrk script {} not found", script.display()))?;
    let output = tokio::process::Command::new("bash")
        .arg(&run_sh)
        .arg(format!("{duration_s}s"))
        .arg(connections.to_string())
        .arg(threads.to_string())
        .current_dir(dir)
        .env("SCRATCH", scratch)
        .env("LUA", &script)
        .output()
        .await
        .context("failed to run the reference's run.sh")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        bail!(
            "the reference's run.sh exited with {}; its last lines:\n{}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let path = scratch.join("summary.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("the reference wrote no {}", path.display()))?;
    let summary: Summary = serde_json::from_str(&text)
        .with_context(|| format!("{} is not the expected summary", path.display()))?;
    let mut cpu_s = BTreeMap::new();
    for group in summary.cpu.groups {
        // Its own services are `node <service>`, PostgreSQL backends
        // `postgres <database>`; the rest are named as Tiffin's groups are.
        let name = if group.group.starts_with("node ") {
            group.group.clone()
        } else if group.group.starts_with("postgres") {
            "postgresql".to_owned()
        } else if group.group.starts_with("other") {
            "other".to_owned()
        } else {
            group.group.clone()
        };
        *cpu_s.entry(name).or_default() += group.cpu_s;
    }
    Ok(Figures {
        implementation: "reference".to_owned(),
        topology: None,
        wrk: summary.wrk,
        end_to_end: super::figures::EndToEnd {
            orders: summary.e2e_ms.n,
            p50_ms: summary.e2e_ms.p50_ms,
            p99_ms: summary.e2e_ms.p99_ms,
        },
        integrity_ok: summary.checks.ok,
        integrity: String::new(),
        cpu_s,
        // The reference's script measures only while the load runs.
        cpu_drained_s: BTreeMap::new(),
        own_prefix: "node ".to_owned(),
        peak_rss_bytes: BTreeMap::new(),
        peak_pss_total_bytes: 0,
    })
}
