//! The payment worker: carries out the voids and captures the saga records.
//!
//! Each step is a row written in the same transaction as the status change that
//! requires it. The worker calls payments, then marks the row done. Payments makes
//! both calls idempotent (voiding a voided payment or capturing a captured one
//! returns it unchanged), so a crash between the call and the mark only repeats a
//! call that changes nothing, and no payment is ever voided or captured twice.
//!
//! Failed calls are retried with backoff: 200 ms after the first failure, doubling up
//! to 30 s, without limit, because the step must happen eventually. A call that
//! payments refuses for good (voiding a captured payment) marks the row `failed` and
//! is logged as an error; `tiffin audit` reports it.

use std::sync::Arc;
use std::time::Duration;

use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;
use tiffin_runtime::time::now_millis;
use tiffin_runtime::trace::TraceContext;
use tokio::sync::Notify;
use tonic::Code;

use crate::payments::{Authorization, PaymentsGateway, STEP_DEADLINE};
use crate::place::payment_key;
use crate::storage::{self, PaymentAction};
use crate::unclaimed::{self, Unclaimed};

/// Runs payment steps until shutdown.
#[derive(Debug)]
pub struct PaymentWorker {
    db: Database,
    payments: PaymentsGateway,
    wake: Arc<Notify>,
    exit_after_call: bool,
}

impl PaymentWorker {
    /// Creates the worker. With `exit_after_call`, the process exits right after
    /// payments confirms the first step and before the step is marked done: a
    /// fault to test that a restart repeats nothing.
    pub fn new(
        db: Database,
        payments: PaymentsGateway,
        wake: Arc<Notify>,
        exit_after_call: bool,
    ) -> Self {
        Self {
            db,
            payments,
            wake,
            exit_after_call,
        }
    }

    /// Runs until `shutdown` is cancelled. A call in flight finishes first.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!("payment worker started");
        while !shutdown.is_cancelled() {
            let pause = match self.run_due().await {
                Ok(pause) => pause,
                Err(error) => {
                    tracing::warn!(error = %error, "failed to read due payment steps, retrying in 1 s");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => {}
            }
        }
        tracing::info!("payment worker stopped");
    }

    /// Carries out the due steps and returns how long to wait for the next one.
    async fn run_due(&self) -> anyhow::Result<Duration> {
        self.release_unclaimed().await?;
        let due = storage::due_payment_actions(&self.db, now_millis(), 50).await?;
        for action in &due {
            self.carry_out(action).await?;
        }
        if due.len() == 50 {
            return Ok(Duration::ZERO);
        }
        let next = storage::next_payment_action_due(&self.db).await?;
        let wait = next.map_or(1000, |at| (at - now_millis()).clamp(0, 1000));
        Ok(Duration::from_millis(u64::try_from(wait).unwrap_or(1000)))
    }

    /// Voids the authorizations that timed out and that no retry claimed in time.
    async fn release_unclaimed(&self) -> anyhow::Result<()> {
        for attempt in unclaimed::due(&self.db, now_millis(), 20).await? {
            if !unclaimed::start_release(&self.db, &attempt.order_id).await? {
                continue;
            }
            if let Err(error) = self.release(&attempt).await {
                let exponent = u32::try_from(attempt.attempts.min(8)).unwrap_or(8);
                let delay_ms = (200_i64 << exponent).min(30_000);
                tracing::warn!(order_id = %attempt.order_id, %error, retry_in_ms = delay_ms, "failed to release an unclaimed authorization");
                unclaimed::retry_later(&self.db, &attempt.order_id, now_millis() + delay_ms)
                    .await?;
            }
        }
        Ok(())
    }

    /// Asks for the authorization again under the order's key, which returns the
    /// late one (or makes one that is voided at once), and voids it.
    async fn release(&self, attempt: &Unclaimed) -> anyhow::Result<()> {
        let payments = self.payments.with_deadline(STEP_DEADLINE);
        let authorization = payments
            .authorize(
                &payment_key(&attempt.order_id),
                &attempt.customer_id,
                &attempt.order_id,
                attempt.amount_cents,
                &attempt.currency,
                TraceContext::new_root(),
            )
            .await?;
        if let Authorization::Authorized { payment_id } = authorization {
            payments
                .void(&payment_id, "no order was stored: the payment answered too late and the client did not retry")
                .await?;
            tracing::info!(order_id = %attempt.order_id, %payment_id, "released an authorization that no order claimed");
        }
        unclaimed::released(&self.db, &attempt.order_id).await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(order_id = %action.order_id, action = %action.action, payment_id = %action.payment_id))]
    async fn carry_out(&self, action: &PaymentAction) -> anyhow::Result<()> {
        let result = match action.action.as_str() {
            "void" => self.payments.void(&action.payment_id, &action.reason).await,
            "capture" => {
                self.payments
                    .capture(&action.payment_id, action.amount_cents)
                    .await
            }
            other => {
                tracing::error!(action = other, "unknown payment step");
                storage::finish_payment_action(
                    &self.db,
                    action,
                    "failed",
                    Some("unknown payment step"),
                    now_millis(),
                )
                .await?;
                return Ok(());
            }
        };
        if self.exit_after_call && result.is_ok() {
            tracing::error!(
                "exiting after the payment call, before recording it, as the fault setting asks"
            );
            std::process::exit(86);
        }

        match result {
            Ok(()) => {
                storage::finish_payment_action(&self.db, action, "done", None, now_millis())
                    .await?;
                tracing::debug!("payment step done");
            }
            Err(status)
                if matches!(
                    status.code(),
                    Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument
                ) =>
            {
                tracing::error!(error = %status.message(), "payments refused the step; it needs an operator");
                storage::finish_payment_action(
                    &self.db,
                    action,
                    "failed",
                    Some(status.message()),
                    now_millis(),
                )
                .await?;
            }
            Err(status) => {
                let exponent = u32::try_from(action.attempts.min(8)).unwrap_or(8);
                let delay_ms = (200_i64 << exponent).min(30_000);
                tracing::warn!(error = %status.message(), attempt = action.attempts + 1, retry_in_ms = delay_ms, "payment step failed, will retry");
                storage::retry_payment_action(
                    &self.db,
                    action,
                    status.message(),
                    now_millis() + delay_ms,
                )
                .await?;
            }
        }
        Ok(())
    }
}
