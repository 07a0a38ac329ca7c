//! Read-only queries over the payments ledger for run reports: how many payments
//! ended in each status, and which references were authorized more than once.

use tiffin_runtime::db::{Database, PoolSettings};

use crate::domain::EntryKind;
use crate::storage;

/// The number of payments in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// Payments still holding their amount.
    pub authorized: i64,
    /// Payments whose card the processor declined.
    pub declined: i64,
    /// Payments whose amount was taken.
    pub captured: i64,
    /// Payments whose authorization was released.
    pub voided: i64,
}

impl StatusCounts {
    /// Returns the number of payments in all statuses.
    pub fn total(&self) -> i64 {
        self.authorized + self.declined + self.captured + self.voided
    }
}

/// A reference, such as an order id, with its number of successful authorizations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceCount {
    /// The `reference` of the Authorize requests.
    pub reference: String,
    /// The number of payments with this reference that the processor approved.
    pub authorizations: i64,
}

/// One row of a payment's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// A UUIDv7, so entries sort by creation time.
    pub entry_id: String,
    /// The payment the entry belongs to.
    pub payment_id: String,
    /// What happened.
    pub kind: EntryKind,
    /// The amount authorized, requested (for a decline), captured or released, in
    /// minor units.
    pub amount_cents: i64,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// Read-only access to a payments database, for reports during or after a run.
///
/// Cloning is cheap and shares the connection pool. A `Reports` taken from
/// [`Service::reports`](crate::Service::reports) keeps working after the service has
/// stopped.
#[derive(Debug, Clone)]
pub struct Reports {
    db: Database,
}

impl Reports {
    pub(crate) fn new(db: Database) -> Self {
        Self { db }
    }

    /// Opens the payments database at `database_url`, applying any missing
    /// migrations, for reading it without running the service.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be opened or migrated.
    pub async fn open(database_url: &str) -> anyhow::Result<Self> {
        let db = Database::open(database_url, &PoolSettings::default(), &crate::MIGRATOR).await?;
        Ok(Self { db })
    }

    /// Counts the payments in each status.
    ///
    /// # Errors
    ///
    /// Returns the database error.
    pub async fn count_by_status(&self) -> Result<StatusCounts, sqlx::Error> {
        storage::count_by_status(&self.db).await
    }

    /// Lists the references authorized more than once, ordered by reference.
    ///
    /// Counts only approved authorizations: a declined attempt followed by an
    /// approved one is not a duplicate. Payments with an empty reference are left
    /// out, because they have nothing in common. An empty list means no reference
    /// was authorized twice.
    ///
    /// # Errors
    ///
    /// Returns the database error.
    pub async fn duplicate_authorizations(&self) -> Result<Vec<ReferenceCount>, sqlx::Error> {
        storage::duplicate_authorizations(&self.db).await
    }

    /// Lists the ledger entries of one payment, oldest first. An unknown id gives an
    /// empty list.
    ///
    /// # Errors
    ///
    /// Returns the database error.
    pub async fn ledger_entries(&self, payment_id: &str) -> Result<Vec<LedgerEntry>, sqlx::Error> {
        storage::ledger_entries(&self.db, payment_id).await
    }
}
