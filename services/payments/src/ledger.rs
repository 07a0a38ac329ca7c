//! The payment operations: each applies the rules of [`crate::domain`] to the stored
//! payment and writes the outcome through [`crate::storage`].

use tiffin_runtime::db::Database;
use tiffin_runtime::time::now_millis;
use tokio::task::JoinError;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{
    self, Amount, AuthorizeCommand, FieldError, Payment, PaymentStatus, Plan, RuleError,
};
use crate::processor::{Decision, Processor, ProcessorUnavailable};
use crate::storage::{self, NewPayment};

/// An error from a payment operation.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PaymentError {
    /// A request field is invalid.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No payment has the requested id.
    #[error("payment {0} not found: send a payment_id returned by Authorize")]
    NotFound(String),
    /// The payment's state does not allow the request.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The processor failed and nothing was recorded.
    #[error(
        "the card processor is unavailable and nothing was recorded: retry with the same idempotency_key"
    )]
    ProcessorUnavailable(#[from] ProcessorUnavailable),
    /// The database failed.
    #[error("failed to access the payments database: {0}")]
    Storage(#[from] sqlx::Error),
    /// The task that authorizes a new payment panicked or was cancelled.
    #[error("failed to finish the authorization task: {0}")]
    Task(#[from] JoinError),
}

/// The payments ledger: authorizations, captures and voids over one database.
///
/// Cloning is cheap, and clones share the database pool and the task tracker.
#[derive(Debug, Clone)]
pub(crate) struct Ledger {
    db: Database,
    processor: Processor,
    /// Authorizations that run detached from their caller. The service waits for
    /// them before it stops.
    tasks: TaskTracker,
}

impl Ledger {
    pub(crate) fn new(db: Database, processor: Processor, tasks: TaskTracker) -> Self {
        Self {
            db,
            processor,
            tasks,
        }
    }

    /// Returns the payment stored under the command's idempotency key, or calls the
    /// processor and stores its decision. Concurrent calls with one key that get a
    /// decision from the processor all return the payment that was stored first.
    pub(crate) async fn authorize(
        &self,
        command: AuthorizeCommand,
    ) -> Result<Payment, PaymentError> {
        let key = command.idempotency_key.as_str();
        if let Some(existing) = storage::find_by_idempotency_key(&self.db, key).await? {
            tracing::debug!(status = %existing.status, "returning the payment stored under this idempotency key");
            return Ok(existing);
        }

        // The processor call and the insert run as their own task, so a caller that
        // gives up (a passed deadline, a closed connection) does not discard a
        // decision the processor has made. The outcome is stored, and a retry with
        // the same key returns it.
        let ledger = self.clone();
        let task = self
            .tasks
            .spawn(async move { ledger.authorize_new(command).await }.in_current_span());
        task.await?
    }

    async fn authorize_new(self, command: AuthorizeCommand) -> Result<Payment, PaymentError> {
        // NOTE: a real processor would also receive the idempotency key, because two
        // concurrent first calls with one key both reach it here and would place two
        // holds. The simulated one reserves nothing, and only one payment is stored.
        let decision = match self.processor.authorize().await {
            Ok(decision) => decision,
            Err(error) => {
                tracing::warn!(error = %error, "card processor failed, nothing recorded");
                return Err(error.into());
            }
        };

        let AuthorizeCommand {
            idempotency_key,
            customer_id,
            reference,
            amount,
            currency,
        } = command;
        let (status, decline_reason) = match decision {
            Decision::Approved => (PaymentStatus::Authorized, None),
            Decision::Declined(reason) => {
                (PaymentStatus::Declined, Some(reason.as_str().to_owned()))
            }
        };
        let now = now_millis();
        let new = NewPayment {
            idempotency_key: idempotency_key.as_str(),
            payment: Payment {
                payment_id: Uuid::now_v7().to_string(),
                customer_id,
                reference,
                amount_cents: amount.cents(),
                currency: currency.as_str().to_owned(),
                status,
                decline_reason,
                captured_cents: 0,
                created_at: now,
                updated_at: now,
            },
        };

        let stored = storage::insert_payment(&self.db, &new).await?;
        if stored.payment_id == new.payment.payment_id {
            tracing::debug!(payment_id = %stored.payment_id, status = %stored.status, "payment stored");
        } else {
            tracing::debug!(
                payment_id = %stored.payment_id,
                "a concurrent call with this idempotency key stored its payment first"
            );
        }
        Ok(stored)
    }

    /// Captures `amount` of an authorized payment, or returns a captured payment
    /// unchanged.
    pub(crate) async fn capture(
        &self,
        payment_id: &str,
        amount: Amount,
    ) -> Result<Payment, PaymentError> {
        loop {
            let payment = self.get(payment_id).await?;
            if domain::plan_capture(&payment, amount)? == Plan::Unchanged {
                return Ok(payment);
            }

            if let Some(captured) =
                storage::capture(&self.db, payment_id, amount.cents(), now_millis()).await?
            {
                tracing::debug!(captured_cents = captured.captured_cents, "payment captured");
                return Ok(captured);
            }
            // Another call moved the payment out of AUTHORIZED after the read, so the
            // request is judged again against the new status. A payment leaves
            // AUTHORIZED only once, so the loop runs at most twice.
        }
    }

    /// Voids an authorized payment, or returns a voided payment unchanged. `reason` is
    /// stored with the payment.
    pub(crate) async fn void(
        &self,
        payment_id: &str,
        reason: &str,
    ) -> Result<Payment, PaymentError> {
        loop {
            let payment = self.get(payment_id).await?;
            if domain::plan_void(&payment)? == Plan::Unchanged {
                return Ok(payment);
            }

            if let Some(voided) = storage::void(&self.db, payment_id, reason, now_millis()).await? {
                tracing::debug!("payment voided");
                return Ok(voided);
            }
            // Another call changed the payment after the read, as in `capture`, so
            // the request is judged again.
        }
    }

    /// Returns the payment with `payment_id`.
    pub(crate) async fn get(&self, payment_id: &str) -> Result<Payment, PaymentError> {
        storage::find(&self.db, payment_id)
            .await?
            .ok_or_else(|| PaymentError::NotFound(payment_id.to_owned()))
    }
}
