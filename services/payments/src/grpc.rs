//! The `payments.v1.Payments` gRPC handlers: each validates its request message,
//! calls the [`Ledger`] and maps the outcome to a message or a status code.

use tiffin_proto::payments::v1 as pb;
use tiffin_runtime::trace::{TRACEPARENT, TraceContext};
use tonic::{Code, Request, Response, Status};
use tracing::Span;

use crate::domain::{self, Amount, AuthorizeCommand, Payment, PaymentStatus, RuleError};
use crate::ledger::{Ledger, PaymentError};

/// The gRPC service implementation.
#[derive(Debug, Clone)]
pub(crate) struct PaymentsApi {
    ledger: Ledger,
}

impl PaymentsApi {
    pub(crate) fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

#[tonic::async_trait]
impl pb::payments_server::Payments for PaymentsApi {
    #[tracing::instrument(skip_all, fields(payment_id, reference, trace_id))]
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        record_trace_id(&request);
        let request = request.into_inner();
        Span::current().record("reference", request.reference.as_str());

        let command = AuthorizeCommand::parse(
            request.idempotency_key,
            request.customer_id,
            request.reference,
            request.amount_cents,
            request.currency,
        )
        .map_err(|error| to_status(error.into()))?;
        let payment = self.ledger.authorize(command).await.map_err(to_status)?;
        Span::current().record("payment_id", payment.payment_id.as_str());

        Ok(respond(payment))
    }

    #[tracing::instrument(skip_all, fields(payment_id, reference, trace_id))]
    async fn capture(
        &self,
        request: Request<pb::CaptureRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        record_trace_id(&request);
        let request = request.into_inner();

        let payment_id = parse_payment_id(&request.payment_id)?;
        let amount =
            Amount::parse(request.amount_cents).map_err(|error| to_status(error.into()))?;
        let payment = self
            .ledger
            .capture(payment_id, amount)
            .await
            .map_err(to_status)?;
        Span::current().record("reference", payment.reference.as_str());

        Ok(respond(payment))
    }

    #[tracing::instrument(skip_all, fields(payment_id, reference, trace_id))]
    async fn void(
        &self,
        request: Request<pb::VoidRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        record_trace_id(&request);
        let request = request.into_inner();

        let payment_id = parse_payment_id(&request.payment_id)?;
        let payment = self
            .ledger
            .void(payment_id, &request.reason)
            .await
            .map_err(to_status)?;
        Span::current().record("reference", payment.reference.as_str());

        Ok(respond(payment))
    }

    #[tracing::instrument(skip_all, fields(payment_id, reference, trace_id))]
    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        record_trace_id(&request);
        let request = request.into_inner();

        let payment_id = parse_payment_id(&request.payment_id)?;
        let payment = self.ledger.get(payment_id).await.map_err(to_status)?;
        Span::current().record("reference", payment.reference.as_str());

        Ok(respond(payment))
    }
}

/// Records the caller's trace id on the current span, or a new one when the request
/// carries no valid `traceparent`.
fn record_trace_id<T>(request: &Request<T>) {
    let header = request
        .metadata()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok());
    let context = TraceContext::from_header_or_new(header);
    Span::current().record("trace_id", context.trace_id());
}

/// Validates a request's `payment_id` and records it on the current span.
fn parse_payment_id(value: &str) -> Result<&str, Status> {
    let payment_id = domain::parse_payment_id(value).map_err(|error| to_status(error.into()))?;
    Span::current().record("payment_id", payment_id);
    Ok(payment_id)
}

/// Wraps a payment in a response. Each handler records the payment's ids on its
/// span once, because a field recorded twice is printed twice.
fn respond(payment: Payment) -> Response<pb::Payment> {
    tracing::debug!(status = %payment.status, "request handled");

    Response::new(pb::Payment {
        status: pb::PaymentStatus::from(payment.status) as i32,
        payment_id: payment.payment_id,
        amount_cents: payment.amount_cents,
        currency: payment.currency,
        decline_reason: payment.decline_reason.unwrap_or_default(),
        captured_cents: payment.captured_cents,
        reference: payment.reference,
        created_at: payment.created_at,
        updated_at: payment.updated_at,
    })
}

impl From<PaymentStatus> for pb::PaymentStatus {
    fn from(status: PaymentStatus) -> Self {
        match status {
            PaymentStatus::Authorized => Self::Authorized,
            PaymentStatus::Declined => Self::Declined,
            PaymentStatus::Captured => Self::Captured,
            PaymentStatus::Voided => Self::Voided,
        }
    }
}

/// Maps an error to its gRPC status. The caller's mistakes keep their message. Our
/// own failures are logged here and returned as an opaque `INTERNAL`.
fn to_status(error: PaymentError) -> Status {
    let code = match &error {
        PaymentError::Invalid(_) | PaymentError::Rule(RuleError::ExceedsAuthorized { .. }) => {
            Code::InvalidArgument
        }
        PaymentError::NotFound(_) => Code::NotFound,
        PaymentError::Rule(RuleError::WrongStatus { .. }) => Code::FailedPrecondition,
        PaymentError::ProcessorUnavailable(_) => Code::Unavailable,
        PaymentError::Storage(_) | PaymentError::Task(_) => {
            tracing::error!(error = %error, cause = ?error, "request failed");
            return Status::internal(
                "the payments service failed to handle the request, and the cause has been logged",
            );
        }
    };
    tracing::debug!(?code, error = %error, "request rejected");
    Status::new(code, error.to_string())
}
