//! `tiffin load`: replays the real orders against a running gateway.
//!
//! 1. Lists the catalog and signs in the customers (register, then log in).
//! 2. Sends each real order at its real time since the first, divided by the speed,
//!    to the nearest restaurant open at the order's real local time, with at most
//!    `concurrency` orders between sending and reaching a final state.
//! 3. Cancels a share of the orders (`cancel_rate`, chosen by a hash of the order id)
//!    after a delay drawn from the order's preparation time, so some cancellations
//!    come in time and some too late.
//! 4. Follows every placed order until it is final (delivered, rejected, cancelled)
//!    or the timeout passes, and reads its timeline for the time from placement to
//!    ready.
//!
//! A request that fails with 503 is retried with the same `Idempotency-Key`, as a
//! real client would, so a retry never places a second order.

pub mod client;
pub mod replay;
pub mod summary;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;

use self::client::{Customer, GatewayClient, MenuEntry, PlaceOutcome};
use self::replay::{RealOrder, Venue};
pub use self::summary::LoadSummary;
use tiffin_events::order::split_replay_minutes;
use tiffin_runtime::hash::fnv1a64;

/// Settings of a load run.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// The gateway's base URL.
    pub target: String,
    /// Orders to send.
    pub limit: usize,
    /// Rows of the order data to skip first.
    pub skip: usize,
    /// How many times faster than real time the orders arrive.
    pub speed: f64,
    /// Orders in flight at once, from sending until ready.
    pub concurrency: usize,
    /// Customers to sign in; order `n` belongs to customer `n % customers`.
    pub customers: usize,
    /// How long a placed order may take to reach a final state.
    pub order_timeout: Duration,
    /// Share of placed orders to cancel, from 0 to 1.
    pub cancel_rate: f64,
    /// Prefix of the idempotency keys, unique per run.
    pub run_id: String,
    /// Whether to draw a progress bar (off when output is not a terminal).
    pub progress: bool,
}

/// The shared state of one run.
struct Run {
    client: GatewayClient,
    settings: LoadSettings,
    venues: Vec<Venue>,
    menus: Mutex<HashMap<usize, Arc<OnceCell<Vec<MenuEntry>>>>>,
    customers: Vec<Customer>,
    summary: Mutex<LoadSummary>,
    http: Mutex<Histogram<u64>>,
    ready: Mutex<Histogram<u64>>,
    bar: ProgressBar,
}

/// Runs the replay and returns what it measured.
///
/// # Errors
///
/// Fails when the gateway cannot be reached for the catalog or the sign-ins. Failed
/// orders are counted in the summary, not returned as errors.
pub async fn run(settings: LoadSettings) -> anyhow::Result<LoadSummary> {
    anyhow::ensure!(
        settings.speed > 0.0,
        "--speed is {}; it must be greater than 0",
        settings.speed
    );
    anyhow::ensure!(settings.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(settings.customers > 0, "--customers must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&settings.cancel_rate),
        "--cancel-rate is {}; it must be between 0 and 1",
        settings.cancel_rate
    );

    let client = GatewayClient::new(&settings.target, Duration::from_secs(10))?;
    let orders = replay::real_orders(settings.skip, settings.limit)?;
    anyhow::ensure!(
        !orders.is_empty(),
        "--skip {} leaves no orders to replay",
        settings.skip
    );

    let venues = client
        .restaurants()
        .await
        .with_context(|| format!("failed to read the catalog through {}", settings.target))?;
    anyhow::ensure!(
        !venues.is_empty(),
        "the catalog at {} lists no restaurants",
        settings.target
    );
    let customers = sign_in(&client, settings.customers).await?;
    tracing::info!(
        orders = orders.len(),
        restaurants = venues.len(),
        customers = customers.len(),
        "replaying orders"
    );

    let bar = if settings.progress {
        let bar = ProgressBar::new(orders.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} ready {msg}")
                .expect("the progress template is valid")
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let run = Arc::new(Run {
        client,
        settings: settings.clone(),
        venues,
        menus: Mutex::new(HashMap::new()),
        customers,
        summary: Mutex::new(LoadSummary::default()),
        http: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")),
        ready: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")),
        bar,
    });

    let started = Instant::now();
    let first_at = orders[0].ordered_at_secs()?;
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let mut tasks = Vec::with_capacity(orders.len());
    for (index, order) in orders.into_iter().enumerate() {
        let offset = (order.ordered_at_secs()? - first_at) as f64 / settings.speed;
        tokio::time::sleep_until(started + Duration::from_secs_f64(offset.max(0.0))).await;
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            run.replay_one(index, &order).await;
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.context("an order task panicked")?;
    }

    run.bar.finish_and_clear();
    let mut summary = run.summary.lock().expect("not poisoned").clone();
    summary.set_latencies(
        &run.http.lock().expect("not poisoned"),
        &run.ready.lock().expect("not poisoned"),
    );
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Signs in `count` customers, eight at a time (each sign-in hashes a password).
async fn sign_in(client: &GatewayClient, count: usize) -> anyhow::Result<Vec<Customer>> {
    let slots = Arc::new(Semaphore::new(8));
    let mut tasks = Vec::with_capacity(count);
    for n in 0..count {
        let client = client.clone();
        let slots = slots.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = slots
                .acquire()
                .await
                .expect("the semaphore is never closed");
            client
                .sign_in(
                    &format!("customer-{n}@load.tiffin.dev"),
                    &format!("replay-password-{n}"),
                )
                .await
        }));
    }
    let mut customers = Vec::with_capacity(count);
    for task in tasks {
        customers.push(task.await.context("a sign-in task panicked")??);
    }
    Ok(customers)
}

impl Run {
    async fn replay_one(&self, index: usize, order: &RealOrder) {
        let outcome = self.place(index, order).await;
        self.count_outcome(order, &outcome);

        if let Ok((PlaceOutcome::Placed(order_id), customer)) = outcome {
            if self.should_cancel(order) {
                self.cancel_later(order, &customer, &order_id).await;
            }
            let end = self.await_final(&customer, &order_id).await;
            let mut summary = self.summary.lock().expect("not poisoned");
            match end {
                Some((status, ready_ms)) => {
                    *summary.final_states.entry(status).or_default() += 1;
                    if let Some(ready_ms) = ready_ms {
                        summary.reached_ready += 1;
                        let _ = self
                            .ready
                            .lock()
                            .expect("not poisoned")
                            .record(ready_ms.max(0) as u64 * 1000 + 1);
                    }
                }
                None => {
                    summary.lost += 1;
                    tracing::warn!(%order_id, "order did not reach a final state in time");
                }
            }
        }

        let summary = self.summary.lock().expect("not poisoned");
        self.bar.set_message(format!(
            "| placed {} declined {} failed {} lost {}",
            summary.placed,
            summary.declined_total(),
            summary.failed_total(),
            summary.lost
        ));
        self.bar.inc(1);
    }

    fn count_outcome(&self, order: &RealOrder, outcome: &anyhow::Result<(PlaceOutcome, Customer)>) {
        let mut summary = self.summary.lock().expect("not poisoned");
        summary.sent += 1;
        match outcome {
            Ok((PlaceOutcome::Placed(_), _)) => summary.placed += 1,
            Ok((PlaceOutcome::Declined(reason), _)) => {
                *summary.declined.entry(reason.clone()).or_default() += 1
            }
            Ok((PlaceOutcome::Failed(status, detail), _)) => {
                tracing::warn!(real_order = order.order_id, status, detail = %detail, "order failed");
                *summary
                    .failed
                    .entry(format!("{status} {detail}"))
                    .or_default() += 1;
            }
            Err(error) => {
                tracing::warn!(real_order = order.order_id, error = %error, "order failed");
                *summary.failed.entry(format!("0 {error:#}")).or_default() += 1;
            }
        }
    }

    async fn place(
        &self,
        index: usize,
        order: &RealOrder,
    ) -> anyhow::Result<(PlaceOutcome, Customer)> {
        let local_time = order.local_time();
        let venue_index =
            replay::nearest_open(&self.venues, order.venue_lat, order.venue_lon, &local_time)
                .context("the catalog has no restaurants")?;
        let venue = &self.venues[venue_index];
        let menu = self.menu(venue_index).await?;
        let items: Vec<Value> = replay::pick_items(order.order_id, order.item_count, menu.len())
            .into_iter()
            .map(|(item, quantity)| json!({ "menu_item_id": menu[item].id, "quantity": quantity }))
            .collect();
        let body = json!({
            "restaurant_id": venue.id,
            "items": items,
            "delivery_address": {
                "line1": format!("Drop-off {}", order.order_id),
                "city": "Helsinki",
                "lat": order.customer_lat,
                "lon": order.customer_lon,
            },
            "replay_delivery_minutes": order.actual_delivery_minutes,
            "replay_local_time": local_time,
        });
        let customer = self.customers[index % self.customers.len()].clone();
        let key = format!("{}-{}", self.settings.run_id, order.order_id);

        let mut attempt = 0;
        loop {
            let sent = Instant::now();
            let outcome = self.client.place(&customer, &key, &body).await?;
            let micros = sent.elapsed().as_micros() as u64;
            let _ = self
                .http
                .lock()
                .expect("not poisoned")
                .record(micros.max(1));
            match outcome {
                PlaceOutcome::Failed(503, _) if attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                outcome => return Ok((outcome, customer)),
            }
        }
    }

    /// Reads a restaurant's menu once and shares it between concurrent orders.
    async fn menu(&self, venue_index: usize) -> anyhow::Result<Vec<MenuEntry>> {
        let cell = self
            .menus
            .lock()
            .expect("not poisoned")
            .entry(venue_index)
            .or_default()
            .clone();
        let menu = cell
            .get_or_try_init(|| self.client.menu(&self.venues[venue_index].id))
            .await?;
        anyhow::ensure!(
            !menu.is_empty(),
            "restaurant {} has an empty menu",
            self.venues[venue_index].id
        );
        Ok(menu.clone())
    }

    /// Returns true when this order is one of the share to cancel, chosen by a
    /// stable hash of the real order id.
    fn should_cancel(&self, order: &RealOrder) -> bool {
        let draw = fnv1a64(&format!("cancel{}", order.order_id)) % 10_000;
        (draw as f64) < self.settings.cancel_rate * 10_000.0
    }

    /// Waits between 0 and 1.5 times the order's scaled preparation time, then asks
    /// to cancel. Early requests find the order in the kitchen, late ones find it
    /// picked up and get 409.
    async fn cancel_later(&self, order: &RealOrder, customer: &Customer, order_id: &str) {
        let (preparation_minutes, _) = split_replay_minutes(order.actual_delivery_minutes);
        let preparation_ms = f64::from(preparation_minutes) * 60_000.0 / self.settings.speed;
        let share = (fnv1a64(&format!("cancel-delay{}", order.order_id)) % 150) as f64 / 100.0;
        tokio::time::sleep(Duration::from_secs_f64(preparation_ms * share / 1000.0)).await;
        let accepted = self.client.cancel(customer, order_id).await;
        let mut summary = self.summary.lock().expect("not poisoned");
        summary.cancel_requests += 1;
        match accepted {
            Ok(true) => {}
            Ok(false) => summary.cancel_refused += 1,
            Err(error) => {
                tracing::warn!(%order_id, error = %error, "cancel request failed");
                *summary
                    .failed
                    .entry(format!("cancel: {error:#}"))
                    .or_default() += 1;
            }
        }
    }

    /// Polls the order until it is final and returns its status and the
    /// milliseconds from placement to ready by its timeline (`None` when it never was
    /// ready); `None` on timeout.
    async fn await_final(
        &self,
        customer: &Customer,
        order_id: &str,
    ) -> Option<(String, Option<i64>)> {
        let deadline = Instant::now() + self.settings.order_timeout;
        let mut delay = Duration::from_millis(20);
        let mut final_seen = None;
        while Instant::now() < deadline {
            if let Ok(status) = self.client.status(customer, order_id).await
                && FINAL_STATUSES.contains(&status.as_str())
            {
                let order = self.client.order(customer, order_id).await.ok()?;
                let ready = ready_after(&order);
                // `order.delivered` can overtake a retried `order.ready`, and the late
                // step still joins the timeline. So a delivered order without it is
                // polled again rather than counted as never ready.
                if status != "delivered" || ready.is_some() {
                    return Some((status, ready));
                }
                final_seen = Some(status);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
        final_seen.map(|status| (status, None))
    }
}

/// Statuses an order never leaves.
const FINAL_STATUSES: [&str; 4] = ["delivered", "rejected", "cancelled", "payment_declined"];

/// Milliseconds from the `placed` to the `ready` entry of an order's timeline.
fn ready_after(order: &Value) -> Option<i64> {
    let timeline = order["timeline"].as_array()?;
    let at = |status: &str| {
        timeline
            .iter()
            .find(|entry| entry["status"] == status)
            .and_then(|entry| entry["at"].as_i64())
    };
    Some(at("ready")? - at("placed")?)
}
