//! The gRPC client of the payment service.
//!
//! Every call carries a deadline (sent as `grpc-timeout`, so payments stops working
//! on it when the caller has given up) and the caller's trace context. Authorize is
//! idempotent by key, so a call that failed with `Unavailable` is retried within the
//! same deadline.

use std::time::Duration;

use tiffin_proto::payments::v1::payments_client::PaymentsClient;
use tiffin_proto::payments::v1::{
    AuthorizeRequest, CaptureRequest, Payment, PaymentStatus, VoidRequest,
};
use tiffin_runtime::trace::{TRACEPARENT, TraceContext};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

/// Backoff before retry `n` of an unavailable call: 20 ms, then 40 ms, then 80 ms.
const RETRY_BACKOFF: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(40),
    Duration::from_millis(80),
];

/// Why an authorization returned no outcome.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// No response within the deadline.
    #[error("payment service did not answer within {0} ms")]
    DeadlineExceeded(u128),
    /// The service or its card processor is unavailable.
    #[error("payment service is unavailable: {0}")]
    Unavailable(String),
    /// Any other failure.
    #[error("payment call failed: {0}")]
    Failed(tonic::Status),
}

/// The outcome of an authorization that got a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// The amount is reserved.
    Authorized {
        /// The payment id.
        payment_id: String,
    },
    /// The card was declined.
    Declined {
        /// The payment id.
        payment_id: String,
        /// The processor's reason.
        reason: String,
    },
}

/// A client of `payments.v1.Payments`.
#[derive(Debug, Clone)]
pub struct PaymentsGateway {
    client: PaymentsClient<Channel>,
    deadline: Duration,
}

impl PaymentsGateway {
    /// Creates a client for `url` (such as `http://127.0.0.1:8084`) whose calls time
    /// out after `deadline`. It connects on first use and reconnects as needed.
    ///
    /// # Errors
    ///
    /// Fails when the URL is invalid.
    pub fn new(url: &str, deadline: Duration) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(url.to_owned())
            .map_err(|error| anyhow::anyhow!("invalid payments URL `{url}`: {error}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            client: PaymentsClient::new(channel),
            deadline,
        })
    }

    /// Returns a client for the same service whose calls time out after `deadline`.
    pub fn with_deadline(&self, deadline: Duration) -> Self {
        Self {
            client: self.client.clone(),
            deadline,
        }
    }

    /// Authorizes `amount_cents` for `reference` under `idempotency_key`.
    ///
    /// # Errors
    ///
    /// Fails when no answer came within the deadline, retries included.
    pub async fn authorize(
        &self,
        idempotency_key: &str,
        customer_id: &str,
        reference: &str,
        amount_cents: i64,
        currency: &str,
        trace: TraceContext,
    ) -> Result<Authorization, PaymentError> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let remaining = self.deadline.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(PaymentError::DeadlineExceeded(self.deadline.as_millis()));
            }
            let mut request = Request::new(AuthorizeRequest {
                idempotency_key: idempotency_key.to_owned(),
                customer_id: customer_id.to_owned(),
                reference: reference.to_owned(),
                amount_cents,
                currency: currency.to_owned(),
            });
            request.set_timeout(remaining);
            if let Ok(value) = trace.child().to_string().parse() {
                request.metadata_mut().insert(TRACEPARENT, value);
            }

            let mut client = self.client.clone();
            match client.authorize(request).await {
                Ok(response) => return Ok(outcome(response.into_inner())),
                Err(status)
                    if status.code() == Code::Unavailable && attempt < RETRY_BACKOFF.len() =>
                {
                    let backoff = RETRY_BACKOFF[attempt];
                    attempt += 1;
                    tracing::warn!(error = %status.message(), attempt, "payment service unavailable, retrying");
                    if started.elapsed() + backoff >= self.deadline {
                        return Err(PaymentError::Unavailable(status.message().to_owned()));
                    }
                    tokio::time::sleep(backoff).await;
                }
                Err(status) => {
                    return Err(match status.code() {
                        Code::DeadlineExceeded | Code::Cancelled => {
                            PaymentError::DeadlineExceeded(self.deadline.as_millis())
                        }
                        Code::Unavailable => PaymentError::Unavailable(status.message().to_owned()),
                        _ => PaymentError::Failed(status),
                    });
                }
            }
        }
    }
}

impl PaymentsGateway {
    /// Voids an authorization. Voiding a voided payment succeeds and changes nothing.
    ///
    /// # Errors
    ///
    /// Returns the gRPC status; `FailedPrecondition` means the payment was captured.
    pub async fn void(&self, payment_id: &str, reason: &str) -> Result<(), tonic::Status> {
        let mut request = Request::new(VoidRequest {
            payment_id: payment_id.to_owned(),
            reason: reason.to_owned(),
        });
        request.set_timeout(STEP_DEADLINE);
        self.client.clone().void(request).await.map(|_| ())
    }

    /// Captures `amount_cents` of an authorization. Capturing a captured payment
    /// succeeds and changes nothing.
    ///
    /// # Errors
    ///
    /// Returns the gRPC status; `FailedPrecondition` means the payment was voided.
    pub async fn capture(&self, payment_id: &str, amount_cents: i64) -> Result<(), tonic::Status> {
        let mut request = Request::new(CaptureRequest {
            payment_id: payment_id.to_owned(),
            amount_cents,
        });
        request.set_timeout(STEP_DEADLINE);
        self.client.clone().capture(request).await.map(|_| ())
    }
}

/// Deadline of a void or capture. No client request waits on them, so it is longer than an
/// authorization's.
pub(crate) const STEP_DEADLINE: Duration = Duration::from_secs(2);

fn outcome(payment: Payment) -> Authorization {
    if payment.status == PaymentStatus::Declined as i32 {
        Authorization::Declined {
            payment_id: payment.payment_id,
            reason: payment.decline_reason,
        }
    } else {
        Authorization::Authorized {
            payment_id: payment.payment_id,
        }
    }
}
