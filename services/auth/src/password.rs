//! Password hashing with argon2id, off the async workers.

use anyhow::Context as _;
use argon2::password_hash::Error as HashError;
use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};
use tokio::sync::Semaphore;

use crate::domain::Password;

/// Hashes and verifies passwords as PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$...`),
/// with the argon2 crate's default parameters.
///
/// Each hash takes a blocking thread, a core and 19 MiB of memory while it runs, so
/// at most one hash per core runs at a time and the others wait for a permit.
/// Without that bound a burst of logins could fill Tokio's blocking pool (512
/// threads by default) and allocate 512 × 19 MiB, about 9.5 GiB.
#[derive(Debug)]
pub(crate) struct PasswordHasher {
    permits: Semaphore,
    /// A hash computed at startup, verified in place of a stored hash when the
    /// email is unknown.
    dummy_hash: String,
}

impl PasswordHasher {
    /// Creates the hasher, computing its dummy hash.
    pub(crate) async fn new() -> anyhow::Result<Self> {
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        let permits = Semaphore::new(parallelism);

        // The password is irrelevant: `verify` never reports a match for it.
        let dummy_password = Password::parse("unknown-account".to_owned())
            .expect("15 characters are a valid password");
        let dummy_hash = hash_blocking(&permits, dummy_password).await?;
        Ok(Self {
            permits,
            dummy_hash,
        })
    }

    /// Hashes `password` with a fresh random salt and returns the PHC string.
    pub(crate) async fn hash(&self, password: Password) -> anyhow::Result<String> {
        hash_blocking(&self.permits, password).await
    }

    /// Checks `password` against `stored`, a PHC string, and returns whether it
    /// matches.
    ///
    /// `stored` is `None` when no account has the email. The password is then
    /// verified against the dummy hash, which has the same parameters as every
    /// stored hash, so that an unknown email takes as long to reject as a wrong
    /// password. Rejecting it early would let a client find registered addresses
    /// by timing the login. The result is always `false` in that case.
    pub(crate) async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> anyhow::Result<bool> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.clone());
        let matches = run_blocking(&self.permits, move || {
            match Argon2::default().verify_password(password.as_bytes(), stored.as_str()) {
                Ok(()) => Ok(true),
                Err(HashError::PasswordInvalid) => Ok(false),
                Err(error) => Err(anyhow::anyhow!(
                    "failed to verify a password against its stored hash: {error}"
                )),
            }
        })
        .await?;
        Ok(known && matches)
    }
}

async fn hash_blocking(permits: &Semaphore, password: Password) -> anyhow::Result<String> {
    run_blocking(permits, move || {
        Argon2::default()
            .hash_password(password.expose().as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|error| anyhow::anyhow!("failed to hash a password: {error}"))
    })
    .await
}

/// Runs `work` on the blocking pool once a permit is free, inside the caller's span.
async fn run_blocking<T, F>(permits: &Semaphore, work: F) -> anyhow::Result<T>
where
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let _permit = permits
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .context("failed to join the password hashing task")?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(text: &str) -> Password {
        Password::parse(text.to_owned()).expect("valid password")
    }

    #[tokio::test]
    async fn hash_verifies_same_password() {
        let hasher = PasswordHasher::new().await.expect("hasher");
        let stored = hasher
            .hash(password("kardemumma-pulla"))
            .await
            .expect("hash");

        let matches = hasher
            .verify("kardemumma-pulla".to_owned(), Some(stored))
            .await;

        assert!(matches.expect("verify"));
    }

    #[tokio::test]
    async fn hash_rejects_other_password() {
        let hasher = PasswordHasher::new().await.expect("hasher");
        let stored = hasher
            .hash(password("kardemumma-pulla"))
            .await
            .expect("hash");

        let matches = hasher.verify("korvapuusti".to_owned(), Some(stored)).await;

        assert!(!matches.expect("verify"));
    }

    #[tokio::test]
    async fn hash_is_argon2id_phc_string() {
        let hasher = PasswordHasher::new().await.expect("hasher");

        let stored = hasher
            .hash(password("kardemumma-pulla"))
            .await
            .expect("hash");

        assert!(stored.starts_with("$argon2id$v=19$"), "{stored}");
    }

    #[tokio::test]
    async fn unknown_account_never_matches() {
        let hasher = PasswordHasher::new().await.expect("hasher");

        let matches = hasher.verify("anything-at-all".to_owned(), None).await;

        assert!(!matches.expect("verify"));
    }
}
