//! Runs wrk with the place-order script and reads its figures.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

/// The figures of the script's `PLACE_ORDER_JSON` line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WrkFigures {
    /// Length of the run, seconds.
    pub duration_s: f64,
    /// Responses received.
    pub responses: u64,
    /// Responses with status 201: placed orders.
    pub created: u64,
    /// Responses with another status.
    pub other: u64,
    /// Placed orders per second.
    pub orders_per_s: f64,
    /// Median HTTP latency, milliseconds.
    pub http_p50_ms: f64,
    /// 99th percentile HTTP latency, milliseconds.
    pub http_p99_ms: f64,
    /// Connection errors.
    pub errors_connect: u64,
    /// Read errors.
    pub errors_read: u64,
    /// Write errors.
    pub errors_write: u64,
    /// Requests that timed out.
    pub errors_timeout: u64,
}

/// One wrk run.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    /// The wrk script.
    pub script: &'a Path,
    /// The base URL of the server.
    pub url: &'a str,
    /// The menu file the script reads.
    pub menu_file: &'a Path,
    /// The token file the script reads.
    pub tokens_file: &'a Path,
    /// The prefix of the Idempotency-Keys.
    pub run_id: &'a str,
    /// Connections.
    pub connections: u32,
    /// Threads.
    pub threads: u32,
    /// Length of the run.
    pub duration: Duration,
}

impl Run<'_> {
    /// Runs wrk to the end and returns its figures.
    ///
    /// # Errors
    ///
    /// Fails when wrk cannot start, exits with an error, or prints no figures.
    pub async fn run(&self) -> anyhow::Result<WrkFigures> {
        let output = tokio::process::Command::new("wrk")
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", self.duration.as_secs().max(1)))
            .args(["--timeout", "10s", "--latency", "-s"])
            .arg(self.script)
            .arg(self.url)
            .env("MENU_FILE", self.menu_file)
            .env("TOKENS_FILE", self.tokens_file)
            .env("RUN_ID", self.run_id)
            .output()
            .await
            .context("failed to run wrk; install it (Debian: apt-get install wrk)")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "wrk exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        parse(&stdout)
    }
}

/// Finds the figures in wrk's output.
fn parse(stdout: &str) -> anyhow::Result<WrkFigures> {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("PLACE_ORDER_JSON "))
        .with_context(|| {
            format!("wrk printed no PLACE_ORDER_JSON line; is the script the place-order one? Output:\n{stdout}")
        })?;
    serde_json::from_str(line).context("the PLACE_ORDER_JSON line is not the expected JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_line_is_parsed() {
        let stdout = "Running 1s test\nPLACE_ORDER_JSON {\"duration_s\":20.096,\"responses\":10899,\"created\":10899,\"other\":0,\"orders_per_s\":542.34,\"http_p50_ms\":115.941,\"http_p90_ms\":142.695,\"http_p99_ms\":181.217,\"http_p999_ms\":530.821,\"http_max_ms\":650.862,\"errors_connect\":0,\"errors_read\":0,\"errors_write\":0,\"errors_timeout\":0}\n";

        let figures = parse(stdout).unwrap();

        assert_eq!(figures.created, 10899);
        assert!((figures.http_p99_ms - 181.217).abs() < 1e-9);
    }

    #[test]
    fn missing_line_is_an_error() {
        let error = parse("Running 1s test\n").unwrap_err().to_string();

        assert!(error.contains("PLACE_ORDER_JSON"), "{error}");
    }
}
