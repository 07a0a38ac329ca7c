//! Every SQL query of the auth service.

use sqlx::Row as _;
use tiffin_runtime::db::Database;
use tiffin_runtime::token::Role;

use crate::domain::{self, Email};
use crate::signing::StoredKey;

/// An account to insert.
#[derive(Debug)]
pub(crate) struct NewUser<'a> {
    pub(crate) id: &'a str,
    pub(crate) email: &'a Email,
    /// The argon2id PHC string.
    pub(crate) password_hash: &'a str,
    pub(crate) role: Role,
    /// Milliseconds since the Unix epoch.
    pub(crate) created_at: i64,
}

/// The columns of an account that login needs.
#[derive(Debug)]
pub(crate) struct StoredUser {
    pub(crate) id: String,
    /// The argon2id PHC string.
    pub(crate) password_hash: String,
    pub(crate) role: Role,
}

/// Inserts `user` and returns `false`, writing nothing, when its email is taken.
pub(crate) async fn insert_user(db: &Database, user: &NewUser<'_>) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO users (id, email, password_hash, role, created_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(user.id)
    .bind(user.email.as_str())
    .bind(user.password_hash)
    .bind(domain::role_name(user.role))
    .bind(user.created_at)
    .execute(db.pool())
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Finds the account with `email`, which must already be normalized.
pub(crate) async fn find_user_by_email(
    db: &Database,
    email: &str,
) -> Result<Option<StoredUser>, sqlx::Error> {
    let row = sqlx::query("SELECT id, password_hash, role FROM users WHERE email = $1")
        .bind(email)
        .fetch_optional(db.pool())
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };

    let id: String = row.try_get("id")?;
    let role_text: String = row.try_get("role")?;
    let role = domain::parse_role(&role_text).ok_or_else(|| {
        sqlx::Error::Decode(format!("user {id} has unknown role `{role_text}`").into())
    })?;
    Ok(Some(StoredUser {
        password_hash: row.try_get("password_hash")?,
        id,
        role,
    }))
}

/// Inserts a signing key unless one with the same kid exists.
pub(crate) async fn insert_signing_key(db: &Database, key: &StoredKey) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO signing_keys (kid, seed, public_x, created_at) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (kid) DO NOTHING",
    )
    .bind(key.kid.as_str())
    .bind(key.seed.as_str())
    .bind(key.public_x.as_str())
    .bind(key.created_at)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Returns the oldest signing key, ties broken by kid, or `None` when there is none.
///
/// Two instances that start together on an empty table may both insert a key, and
/// this order makes both of them sign with the same one.
pub(crate) async fn oldest_signing_key(db: &Database) -> Result<Option<StoredKey>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT kid, seed, public_x, created_at FROM signing_keys \
         ORDER BY created_at, kid LIMIT 1",
    )
    .fetch_optional(db.pool())
    .await?;
    row.map(|row| {
        Ok(StoredKey {
            kid: row.try_get("kid")?,
            seed: row.try_get("seed")?,
            public_x: row.try_get("public_x")?,
            created_at: row.try_get("created_at")?,
        })
    })
    .transpose()
}

/// Runs a trivial query, to check that the database responds.
pub(crate) async fn ping(db: &Database) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(db.pool()).await?;
    Ok(())
}
