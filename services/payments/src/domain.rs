//! Payment rules: request validation, the payment states and which transitions
//! each state allows.

use std::fmt;
use std::str::FromStr;

/// The largest amount one authorization may reserve, in minor units (100,000.00 in a
/// two-decimal currency).
pub(crate) const MAX_AMOUNT_CENTS: i64 = 10_000_000;

/// The maximum idempotency key length, in characters.
pub(crate) const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// A request field that failed validation, with what was wrong and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {problem}")]
pub(crate) struct FieldError {
    /// The field name as it appears in the request message.
    pub(crate) field: &'static str,
    /// A description of the invalid value and of the accepted values.
    pub(crate) problem: String,
}

impl FieldError {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

// === Validated request values ===

/// A caller-chosen key that makes retries of one authorization return its first
/// outcome: non-blank, at most [`MAX_IDEMPOTENCY_KEY_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyKey(String);

impl IdempotencyKey {
    pub(crate) fn parse(value: String) -> Result<Self, FieldError> {
        if value.trim().is_empty() {
            return Err(FieldError::new(
                "idempotency_key",
                "must not be empty. Send one key per logical authorization and reuse it on retries",
            ));
        }
        let chars = value.chars().count();
        if chars > MAX_IDEMPOTENCY_KEY_CHARS {
            return Err(FieldError::new(
                "idempotency_key",
                format!("is {chars} characters long, the maximum is {MAX_IDEMPOTENCY_KEY_CHARS}"),
            ));
        }
        Ok(Self(value))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// A positive amount in minor units of currency, at most [`MAX_AMOUNT_CENTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Amount(i64);

impl Amount {
    pub(crate) fn parse(value: i64) -> Result<Self, FieldError> {
        if !(1..=MAX_AMOUNT_CENTS).contains(&value) {
            return Err(FieldError::new(
                "amount_cents",
                format!("got {value}, expected minor units from 1 to {MAX_AMOUNT_CENTS}"),
            ));
        }
        Ok(Self(value))
    }

    pub(crate) fn cents(self) -> i64 {
        self.0
    }
}

/// An ISO 4217 alphabetic code: three uppercase ASCII letters such as `EUR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Currency(String);

impl Currency {
    pub(crate) fn parse(value: String) -> Result<Self, FieldError> {
        if value.len() != 3 || !value.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(FieldError::new(
                "currency",
                format!(
                    "got {value:?}, expected an ISO 4217 code of three uppercase letters such as \"EUR\""
                ),
            ));
        }
        Ok(Self(value))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated Authorize request.
#[derive(Debug, Clone)]
pub(crate) struct AuthorizeCommand {
    pub(crate) idempotency_key: IdempotencyKey,
    pub(crate) customer_id: String,
    /// The purpose of the authorization, such as an order id. It may be empty.
    pub(crate) reference: String,
    pub(crate) amount: Amount,
    pub(crate) currency: Currency,
}

impl AuthorizeCommand {
    /// Validates the request fields in message order and reports the first bad one.
    pub(crate) fn parse(
        idempotency_key: String,
        customer_id: String,
        reference: String,
        amount_cents: i64,
        currency: String,
    ) -> Result<Self, FieldError> {
        let idempotency_key = IdempotencyKey::parse(idempotency_key)?;
        if customer_id.trim().is_empty() {
            return Err(FieldError::new(
                "customer_id",
                "must not be empty. Send the id of the customer whose card is charged",
            ));
        }
        Ok(Self {
            idempotency_key,
            customer_id,
            reference,
            amount: Amount::parse(amount_cents)?,
            currency: Currency::parse(currency)?,
        })
    }
}

/// Checks that a request names a payment.
pub(crate) fn parse_payment_id(value: &str) -> Result<&str, FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(
            "payment_id",
            "must not be empty. Send the payment_id returned by Authorize",
        ));
    }
    Ok(value)
}

// === Payments and their states ===

/// The state of a payment. Only AUTHORIZED changes, and only once: to CAPTURED or
/// VOIDED. DECLINED is final from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    /// The amount is reserved on the card.
    Authorized,
    /// The processor declined the card, so nothing is reserved.
    Declined,
    /// The reserved amount, or part of it, was taken.
    Captured,
    /// The reservation was released.
    Voided,
}

impl PaymentStatus {
    /// Returns the name stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorized => "AUTHORIZED",
            Self::Declined => "DECLINED",
            Self::Captured => "CAPTURED",
            Self::Voided => "VOIDED",
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PaymentStatus {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "AUTHORIZED" => Ok(Self::Authorized),
            "DECLINED" => Ok(Self::Declined),
            "CAPTURED" => Ok(Self::Captured),
            "VOIDED" => Ok(Self::Voided),
            other => Err(format!("unknown payment status {other:?}")),
        }
    }
}

/// The processor's reason for declining a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeclineReason {
    InsufficientFunds,
    CardDeclined,
}

impl DeclineReason {
    /// Returns the reason as stored and sent to clients.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientFunds => "insufficient_funds",
            Self::CardDeclined => "card_declined",
        }
    }
}

/// One stored payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Payment {
    pub(crate) payment_id: String,
    pub(crate) customer_id: String,
    pub(crate) reference: String,
    pub(crate) amount_cents: i64,
    pub(crate) currency: String,
    pub(crate) status: PaymentStatus,
    /// Set when `status` is DECLINED.
    pub(crate) decline_reason: Option<String>,
    pub(crate) captured_cents: i64,
    /// Unix milliseconds.
    pub(crate) created_at: i64,
    /// Unix milliseconds.
    pub(crate) updated_at: i64,
}

/// The kind of event a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// The processor reserved the payment's amount.
    Authorize,
    /// The processor declined the card. The entry carries the requested amount.
    Decline,
    /// The captured amount was taken.
    Capture,
    /// The authorized amount was released.
    Void,
}

impl EntryKind {
    /// Returns the name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorize => "authorize",
            Self::Decline => "decline",
            Self::Capture => "capture",
            Self::Void => "void",
        }
    }
}

impl FromStr for EntryKind {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "authorize" => Ok(Self::Authorize),
            "decline" => Ok(Self::Decline),
            "capture" => Ok(Self::Capture),
            "void" => Ok(Self::Void),
            other => Err(format!("unknown ledger entry kind {other:?}")),
        }
    }
}

// === Transitions ===

/// The effect of a Capture or Void request on a payment that allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Change the state and write a ledger entry.
    Apply,
    /// The request was already applied: return the payment as it is.
    Unchanged,
}

/// A Capture or Void request that the payment's current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RuleError {
    /// The payment's status rules the action out.
    #[error(
        "cannot {action} payment {payment_id}: its status is {status}, and only an AUTHORIZED payment can be {done}"
    )]
    WrongStatus {
        action: &'static str,
        done: &'static str,
        payment_id: String,
        status: PaymentStatus,
    },
    /// The capture requests more than was authorized.
    #[error(
        "invalid amount_cents: {requested} exceeds the authorized {authorized} of payment {payment_id}, capture at most {authorized}"
    )]
    ExceedsAuthorized {
        payment_id: String,
        requested: i64,
        authorized: i64,
    },
}

/// Decides a capture of `amount`. A captured payment is returned unchanged whatever
/// the amount, so a retried capture succeeds.
pub(crate) fn plan_capture(payment: &Payment, amount: Amount) -> Result<Plan, RuleError> {
    match payment.status {
        PaymentStatus::Captured => Ok(Plan::Unchanged),
        PaymentStatus::Authorized if amount.cents() > payment.amount_cents => {
            Err(RuleError::ExceedsAuthorized {
                payment_id: payment.payment_id.clone(),
                requested: amount.cents(),
                authorized: payment.amount_cents,
            })
        }
        PaymentStatus::Authorized => Ok(Plan::Apply),
        status @ (PaymentStatus::Voided | PaymentStatus::Declined) => Err(RuleError::WrongStatus {
            action: "capture",
            done: "captured",
            payment_id: payment.payment_id.clone(),
            status,
        }),
    }
}

/// Decides a void. A voided payment is returned unchanged, so a retried void succeeds.
pub(crate) fn plan_void(payment: &Payment) -> Result<Plan, RuleError> {
    match payment.status {
        PaymentStatus::Voided => Ok(Plan::Unchanged),
        PaymentStatus::Authorized => Ok(Plan::Apply),
        status @ (PaymentStatus::Captured | PaymentStatus::Declined) => {
            Err(RuleError::WrongStatus {
                action: "void",
                done: "voided",
                payment_id: payment.payment_id.clone(),
                status,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(status: PaymentStatus) -> Payment {
        Payment {
            payment_id: "p-1".into(),
            customer_id: "c-1".into(),
            reference: "order-1".into(),
            amount_cents: 1_000,
            currency: "EUR".into(),
            status,
            decline_reason: None,
            captured_cents: 0,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn amount_bounds() {
        assert!(Amount::parse(0).is_err());
        assert!(Amount::parse(-5).is_err());
        assert!(Amount::parse(1).is_ok());
        assert!(Amount::parse(MAX_AMOUNT_CENTS).is_ok());
        assert!(Amount::parse(MAX_AMOUNT_CENTS + 1).is_err());
    }

    #[test]
    fn currency_needs_three_uppercase_letters() {
        for value in ["", "eur", "EU", "EURO", "E1R", "ÉUR"] {
            assert!(Currency::parse(value.into()).is_err(), "accepted {value:?}");
        }
        assert!(Currency::parse("EUR".into()).is_ok());
    }

    #[test]
    fn idempotency_key_length_counts_characters() {
        let at_limit = "é".repeat(MAX_IDEMPOTENCY_KEY_CHARS);
        let over_limit = "k".repeat(MAX_IDEMPOTENCY_KEY_CHARS + 1);

        assert!(IdempotencyKey::parse(at_limit).is_ok());
        assert!(IdempotencyKey::parse(over_limit).is_err());
        assert!(IdempotencyKey::parse("  ".into()).is_err());
    }

    #[test]
    fn capture_rules_by_status() {
        let amount = Amount::parse(500).unwrap();

        assert_eq!(
            plan_capture(&payment(PaymentStatus::Authorized), amount),
            Ok(Plan::Apply)
        );
        assert_eq!(
            plan_capture(&payment(PaymentStatus::Captured), amount),
            Ok(Plan::Unchanged)
        );
        assert!(plan_capture(&payment(PaymentStatus::Voided), amount).is_err());
        assert!(plan_capture(&payment(PaymentStatus::Declined), amount).is_err());
    }

    #[test]
    fn capture_over_authorized_is_rejected() {
        let amount = Amount::parse(1_001).unwrap();

        let plan = plan_capture(&payment(PaymentStatus::Authorized), amount);

        assert!(matches!(plan, Err(RuleError::ExceedsAuthorized { .. })));
    }

    #[test]
    fn void_rules_by_status() {
        assert_eq!(
            plan_void(&payment(PaymentStatus::Authorized)),
            Ok(Plan::Apply)
        );
        assert_eq!(
            plan_void(&payment(PaymentStatus::Voided)),
            Ok(Plan::Unchanged)
        );
        assert!(plan_void(&payment(PaymentStatus::Captured)).is_err());
        assert!(plan_void(&payment(PaymentStatus::Declined)).is_err());
    }

    #[test]
    fn status_names_round_trip() {
        for status in [
            PaymentStatus::Authorized,
            PaymentStatus::Declined,
            PaymentStatus::Captured,
            PaymentStatus::Voided,
        ] {
            assert_eq!(status.as_str().parse::<PaymentStatus>(), Ok(status));
        }
    }
}
