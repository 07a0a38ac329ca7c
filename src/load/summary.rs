//! The figures of a load run.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The load generator's own view of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadSummary {
    /// Orders sent.
    pub sent: u64,
    /// Responses with 201.
    pub placed: u64,
    /// Responses with 402, by the processor's decline reason.
    pub declined: BTreeMap<String, u64>,
    /// Neither 201 nor 402, by status and detail (0 for a transport error).
    pub failed: BTreeMap<String, u64>,
    /// Placed orders whose timeline shows them ready.
    pub reached_ready: u64,
    /// Placed orders by the final status they reached.
    pub final_states: BTreeMap<String, u64>,
    /// Placed orders not final before the timeout.
    pub lost: u64,
    /// Cancellations requested.
    pub cancel_requests: u64,
    /// Cancellations refused with 409 because the order was past cancelling.
    pub cancel_refused: u64,
    /// HTTP latency of `POST /v1/orders`, milliseconds.
    pub http_p50_ms: f64,
    /// As above.
    pub http_p95_ms: f64,
    /// As above.
    pub http_p99_ms: f64,
    /// From placement to ready by the order's own timeline, milliseconds.
    pub ready_p50_ms: f64,
    /// As above.
    pub ready_p99_ms: f64,
    /// Wall-clock duration of the replay, seconds.
    pub elapsed_secs: f64,
}

impl LoadSummary {
    /// Orders declined, all reasons together.
    pub fn declined_total(&self) -> u64 {
        self.declined.values().sum()
    }

    /// Orders failed, all causes together.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Fills the percentiles from the histograms (recorded in microseconds).
    pub fn set_latencies(&mut self, http: &Histogram<u64>, ready: &Histogram<u64>) {
        let ms = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        self.http_p50_ms = ms(http, 0.50);
        self.http_p95_ms = ms(http, 0.95);
        self.http_p99_ms = ms(http, 0.99);
        self.ready_p50_ms = ms(ready, 0.50);
        self.ready_p99_ms = ms(ready, 0.99);
    }
}

impl fmt::Display for LoadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "orders sent        {}", self.sent)?;
        writeln!(f, "placed             {}", self.placed)?;
        writeln!(f, "declined           {}", self.declined_total())?;
        for (reason, count) in &self.declined {
            writeln!(f, "  {count:>6}  {reason}")?;
        }
        writeln!(f, "failed             {}", self.failed_total())?;
        for (cause, count) in &self.failed {
            writeln!(f, "  {count:>6}  {cause}")?;
        }
        writeln!(f, "reached ready      {}", self.reached_ready)?;
        writeln!(f, "final states")?;
        for (status, count) in &self.final_states {
            writeln!(f, "  {count:>6}  {status}")?;
        }
        writeln!(
            f,
            "cancel requests    {} ({} too late)",
            self.cancel_requests, self.cancel_refused
        )?;
        writeln!(f, "lost               {}", self.lost)?;
        writeln!(
            f,
            "HTTP latency       p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
            self.http_p50_ms, self.http_p95_ms, self.http_p99_ms
        )?;
        writeln!(
            f,
            "placed to ready    p50 {:.0} ms, p99 {:.0} ms",
            self.ready_p50_ms, self.ready_p99_ms
        )?;
        write!(f, "elapsed            {:.1} s", self.elapsed_secs)
    }
}
