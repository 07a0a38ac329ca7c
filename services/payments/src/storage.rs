//! Every SQL statement of the payments service.
//!
//! A state change and its ledger entry are written in one transaction. Transitions
//! out of AUTHORIZED are conditional updates (`WHERE status = 'AUTHORIZED'`), so of
//! two concurrent captures or voids of one payment exactly one changes it, on SQLite
//! and on PostgreSQL alike.

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row, Transaction};
use tiffin_runtime::db::{Database, Engine};
use uuid::Uuid;

use crate::domain::{EntryKind, Payment, PaymentStatus};
use crate::reports::{LedgerEntry, ReferenceCount, StatusCounts};

/// The `payments` columns that [`payment_from_row`] reads, in one place so that every
/// query returns the same shape.
macro_rules! payment_columns {
    () => {
        "payment_id, customer_id, reference, amount_cents, currency, status, \
         decline_reason, captured_cents, created_at, updated_at"
    };
}

/// A payment to insert after the processor decided about it.
#[derive(Debug, Clone)]
pub(crate) struct NewPayment<'a> {
    pub(crate) payment: Payment,
    pub(crate) idempotency_key: &'a str,
}

/// Returns the payment with `payment_id`, if any.
pub(crate) async fn find(db: &Database, payment_id: &str) -> Result<Option<Payment>, sqlx::Error> {
    let row = sqlx::query(concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE payment_id = $1"
    ))
    .bind(payment_id)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(payment_from_row).transpose()
}

/// Returns the payment created under `idempotency_key`, if any.
pub(crate) async fn find_by_idempotency_key(
    db: &Database,
    idempotency_key: &str,
) -> Result<Option<Payment>, sqlx::Error> {
    let row = sqlx::query(concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE idempotency_key = $1"
    ))
    .bind(idempotency_key)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(payment_from_row).transpose()
}

/// Inserts an authorized or declined payment with its ledger entry, unless a payment
/// with the same idempotency key exists. Returns the stored payment: the new one, or
/// the one that was there first.
pub(crate) async fn insert_payment(
    db: &Database,
    new: &NewPayment<'_>,
) -> Result<Payment, sqlx::Error> {
    match db.engine() {
        Engine::Postgres => insert_payment_in_one_statement(db, new).await,
        Engine::Sqlite => insert_payment_in_transaction(db, new).await,
    }
}

/// Runs [`insert_payment`] on PostgreSQL as one statement, which writes the
/// payment and, if it is new, its ledger entry, with no transaction around it.
/// That saves three round trips (`BEGIN`, the ledger's `INSERT`, `COMMIT`) per
/// order.
async fn insert_payment_in_one_statement(
    db: &Database,
    new: &NewPayment<'_>,
) -> Result<Payment, sqlx::Error> {
    let payment = &new.payment;
    let inserted = bind_new_payment(
        new,
        sqlx::query(
            "WITH inserted AS ( \
           INSERT INTO payments (payment_id, idempotency_key, customer_id, reference, \
             amount_cents, currency, status, decline_reason, void_reason, captured_cents, \
             created_at, updated_at) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10, $11) \
           ON CONFLICT (idempotency_key) DO NOTHING \
           RETURNING payment_id) \
         INSERT INTO ledger_entries (entry_id, payment_id, kind, amount_cents, created_at) \
         SELECT $12, payment_id, $13, $5, $10 FROM inserted",
        ),
    )
    .bind(Uuid::now_v7().to_string())
    .bind(first_entry_kind(payment.status).as_str())
    .execute(db.pool())
    .await?
    .rows_affected();

    if inserted == 0 {
        // A concurrent call with the same key committed first. The INSERT waited
        // for that commit, so this new statement reads the committed row.
        return find_by_idempotency_key(db, new.idempotency_key)
            .await?
            .ok_or(sqlx::Error::RowNotFound);
    }
    Ok(payment.clone())
}

/// Runs [`insert_payment`] on SQLite, which has no data-modifying `WITH`, as one
/// transaction with a statement for the payment and one for its ledger entry.
async fn insert_payment_in_transaction(
    db: &Database,
    new: &NewPayment<'_>,
) -> Result<Payment, sqlx::Error> {
    let payment = &new.payment;
    let mut tx = db.begin_write_for(&[]).await?;

    let inserted = bind_new_payment(
        new,
        sqlx::query(
        "INSERT INTO payments (payment_id, idempotency_key, customer_id, reference, amount_cents, \
         currency, status, decline_reason, void_reason, captured_cents, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10, $11) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    ))
    .execute(&mut *tx)
    .await?
    .rows_affected();

    if inserted == 0 {
        // A concurrent call with the same key committed first. On PostgreSQL the
        // INSERT waited for that commit, and this SELECT, a new statement under READ
        // COMMITTED, returns the row.
        let row = sqlx::query(concat!(
            "SELECT ",
            payment_columns!(),
            " FROM payments WHERE idempotency_key = $1"
        ))
        .bind(new.idempotency_key)
        .fetch_one(&mut *tx)
        .await?;
        let winner = payment_from_row(&row)?;
        tx.commit().await?;
        return Ok(winner);
    }

    insert_entry(
        &mut tx,
        &payment.payment_id,
        first_entry_kind(payment.status),
        payment.amount_cents,
        payment.created_at,
    )
    .await?;
    tx.commit().await?;
    Ok(payment.clone())
}

/// Binds the payment's columns to the `$1` to `$11` of both inserts of
/// [`insert_payment`].
fn bind_new_payment<'q>(
    new: &NewPayment<'_>,
    query: Query<'q, Any, AnyArguments>,
) -> Query<'q, Any, AnyArguments> {
    let payment = &new.payment;
    query
        .bind(payment.payment_id.clone())
        .bind(new.idempotency_key.to_owned())
        .bind(payment.customer_id.clone())
        .bind(payment.reference.clone())
        .bind(payment.amount_cents)
        .bind(payment.currency.clone())
        .bind(payment.status.as_str())
        .bind(payment.decline_reason.clone())
        .bind(payment.captured_cents)
        .bind(payment.created_at)
        .bind(payment.updated_at)
}

/// Returns the kind of ledger entry that records a new payment in `status`.
fn first_entry_kind(status: PaymentStatus) -> EntryKind {
    match status {
        PaymentStatus::Declined => EntryKind::Decline,
        _ => EntryKind::Authorize,
    }
}

/// Captures `amount_cents` of an AUTHORIZED payment that authorized at least that
/// much. Returns `None`, changing nothing, when the payment is missing, no longer
/// AUTHORIZED or authorized less.
pub(crate) async fn capture(
    db: &Database,
    payment_id: &str,
    amount_cents: i64,
    now: i64,
) -> Result<Option<Payment>, sqlx::Error> {
    let mut tx = db.begin_write_for(&[]).await?;

    let row = sqlx::query(concat!(
        "UPDATE payments SET status = 'CAPTURED', captured_cents = $1, updated_at = $2 \
         WHERE payment_id = $3 AND status = 'AUTHORIZED' AND amount_cents >= $1 \
         RETURNING ",
        payment_columns!()
    ))
    .bind(amount_cents)
    .bind(now)
    .bind(payment_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let payment = payment_from_row(&row)?;

    insert_entry(&mut tx, payment_id, EntryKind::Capture, amount_cents, now).await?;
    tx.commit().await?;
    Ok(Some(payment))
}

/// Voids an AUTHORIZED payment, keeping the caller's reason. Returns `None`, changing
/// nothing, when the payment is missing or no longer AUTHORIZED.
pub(crate) async fn void(
    db: &Database,
    payment_id: &str,
    reason: &str,
    now: i64,
) -> Result<Option<Payment>, sqlx::Error> {
    let mut tx = db.begin_write_for(&[]).await?;

    let row = sqlx::query(concat!(
        "UPDATE payments SET status = 'VOIDED', void_reason = $1, updated_at = $2 \
         WHERE payment_id = $3 AND status = 'AUTHORIZED' \
         RETURNING ",
        payment_columns!()
    ))
    .bind(reason)
    .bind(now)
    .bind(payment_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let payment = payment_from_row(&row)?;

    insert_entry(
        &mut tx,
        payment_id,
        EntryKind::Void,
        payment.amount_cents,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(Some(payment))
}

/// Counts the payments in each status.
pub(crate) async fn count_by_status(db: &Database) -> Result<StatusCounts, sqlx::Error> {
    let rows = sqlx::query("SELECT status, COUNT(*) AS payments FROM payments GROUP BY status")
        .fetch_all(db.pool())
        .await?;

    let mut counts = StatusCounts::default();
    for row in rows {
        let status = parse_column::<PaymentStatus>(&row, "status")?;
        let payments = row.try_get::<i64, _>("payments")?;
        match status {
            PaymentStatus::Authorized => counts.authorized = payments,
            PaymentStatus::Declined => counts.declined = payments,
            PaymentStatus::Captured => counts.captured = payments,
            PaymentStatus::Voided => counts.voided = payments,
        }
    }
    Ok(counts)
}

/// Lists the non-empty references that have more than one `authorize` ledger entry,
/// ordered by reference.
pub(crate) async fn duplicate_authorizations(
    db: &Database,
) -> Result<Vec<ReferenceCount>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT p.reference AS reference, COUNT(*) AS authorizations \
         FROM ledger_entries e JOIN payments p ON p.payment_id = e.payment_id \
         WHERE e.kind = 'authorize' AND p.reference <> '' \
         GROUP BY p.reference HAVING COUNT(*) > 1 \
         ORDER BY p.reference",
    )
    .fetch_all(db.pool())
    .await?;

    rows.iter()
        .map(|row| {
            Ok(ReferenceCount {
                reference: row.try_get("reference")?,
                authorizations: row.try_get("authorizations")?,
            })
        })
        .collect()
}

/// Lists the ledger entries of one payment in the order they were written.
pub(crate) async fn ledger_entries(
    db: &Database,
    payment_id: &str,
) -> Result<Vec<LedgerEntry>, sqlx::Error> {
    // Entry ids are UUIDv7, which sort by creation time.
    let rows = sqlx::query(
        "SELECT entry_id, payment_id, kind, amount_cents, created_at \
         FROM ledger_entries WHERE payment_id = $1 ORDER BY entry_id",
    )
    .bind(payment_id)
    .fetch_all(db.pool())
    .await?;

    rows.iter()
        .map(|row| {
            Ok(LedgerEntry {
                entry_id: row.try_get("entry_id")?,
                payment_id: row.try_get("payment_id")?,
                kind: parse_column(row, "kind")?,
                amount_cents: row.try_get("amount_cents")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect()
}

async fn insert_entry(
    tx: &mut Transaction<'_, Any>,
    payment_id: &str,
    kind: EntryKind,
    amount_cents: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ledger_entries (entry_id, payment_id, kind, amount_cents, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(payment_id)
    .bind(kind.as_str())
    .bind(amount_cents)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn payment_from_row(row: &AnyRow) -> Result<Payment, sqlx::Error> {
    Ok(Payment {
        payment_id: row.try_get("payment_id")?,
        customer_id: row.try_get("customer_id")?,
        reference: row.try_get("reference")?,
        amount_cents: row.try_get("amount_cents")?,
        currency: row.try_get("currency")?,
        status: parse_column(row, "status")?,
        decline_reason: row.try_get("decline_reason")?,
        captured_cents: row.try_get("captured_cents")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Reads a text column into a type that parses it, reporting a stored value the code
/// does not know as a decode error of that column.
fn parse_column<T>(row: &AnyRow, column: &str) -> Result<T, sqlx::Error>
where
    T: std::str::FromStr<Err = String>,
{
    let text = row.try_get::<String, _>(column)?;
    text.parse()
        .map_err(|error: String| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: error.into(),
        })
}
