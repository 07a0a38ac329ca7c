//! Password hashing with argon2id, off the async workers.

use std::sync::{Arc, Mutex};

use anyhow::{Context as _, anyhow};
use argon2::password_hash::phc::{Output, ParamsString, Salt};
use argon2::password_hash::try_generate_salt;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use tokio::sync::Semaphore;

use crate::domain::Password;

/// Hashes and verifies passwords as PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$...`),
/// with the argon2 crate's default parameters.
///
/// Each hash takes a blocking thread, a core and 19 MiB of memory while it runs, so
/// at most one hash per core runs at a time and the others wait for a permit.
/// Without that bound a burst of logins could fill Tokio's blocking pool (512
/// threads by default) and allocate 512 × 19 MiB, about 9.5 GiB.
///
/// The 19 MiB come from a pool of buffers, one per permit, kept for the life of
/// the process. When each hash allocated its own buffer, glibc's allocator kept
/// the freed buffers in its per-thread arenas, and the service grew to 140 to
/// 320 MB while the benchmark logged in its customers.
#[derive(Debug)]
pub(crate) struct PasswordHasher {
    permits: Semaphore,
    memory: Arc<Memory>,
    /// A hash computed at startup, verified in place of a stored hash when the
    /// email is unknown.
    dummy_hash: String,
}

impl PasswordHasher {
    /// Creates the hasher, computing its dummy hash.
    pub(crate) async fn new() -> anyhow::Result<Self> {
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        let permits = Semaphore::new(parallelism);
        let memory = Arc::new(Memory::default());

        // The password is irrelevant: `verify` never reports a match for it.
        let dummy_password = Password::parse("unknown-account".to_owned())
            .expect("15 characters are a valid password");
        let dummy_hash = hash_blocking(&permits, &memory, dummy_password).await?;
        Ok(Self {
            permits,
            memory,
            dummy_hash,
        })
    }

    /// Hashes `password` with a fresh random salt and returns the PHC string.
    pub(crate) async fn hash(&self, password: Password) -> anyhow::Result<String> {
        hash_blocking(&self.permits, &self.memory, password).await
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
        let memory = self.memory.clone();
        let matches = run_blocking(&self.permits, move || {
            verify_with(&memory, password.as_bytes(), &stored)
                .context("failed to verify a password against its stored hash")
        })
        .await?;
        Ok(known && matches)
    }
}

/// Argon2's working memory, reused from one hash to the next.
#[derive(Debug, Default)]
struct Memory {
    /// Idle buffers. A hash takes one (or allocates one when none is idle) and
    /// puts it back, so there are never more buffers than hashes that ran at the
    /// same time.
    idle: Mutex<Vec<Vec<Block>>>,
}

impl Memory {
    /// Runs `work` with a buffer of `blocks` blocks.
    fn with<T>(&self, blocks: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
        let mut buffer = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        if buffer.len() < blocks {
            buffer.resize(blocks, Block::new());
        }
        let result = work(&mut buffer[..blocks]);
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(buffer);
        result
    }
}

/// Hashes `password` with argon2id, the crate's default parameters and a random
/// salt, and returns the PHC string.
fn hash_with(memory: &Memory, password: &[u8]) -> anyhow::Result<String> {
    let argon2 = Argon2::default();
    let params = argon2.params().clone();
    let salt =
        try_generate_salt().map_err(|error| anyhow!("failed to generate a salt: {error}"))?;
    let mut output = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    memory
        .with(params.block_count(), |blocks| {
            argon2.hash_password_into_with_memory(password, &salt, &mut output, blocks)
        })
        .map_err(|error| anyhow!("{error}"))?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|error| anyhow!("{error}"))?,
        salt: Some(Salt::new(&salt).map_err(|error| anyhow!("{error}"))?),
        hash: Some(Output::new(&output).map_err(|error| anyhow!("{error}"))?),
    };
    Ok(hash.to_string())
}

/// Checks `password` against `stored`, a PHC string of any argon2 variant and
/// parameters, comparing the outputs in constant time.
fn verify_with(memory: &Memory, password: &[u8], stored: &str) -> anyhow::Result<bool> {
    let hash = PasswordHash::new(stored).map_err(|error| anyhow!("invalid PHC string: {error}"))?;
    let algorithm = Algorithm::try_from(hash.algorithm.as_str())
        .map_err(|error| anyhow!("unsupported algorithm {}: {error}", hash.algorithm))?;
    let version = hash
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(|error| anyhow!("unsupported version: {error}"))?
        .unwrap_or_default();
    let params = Params::try_from(&hash).map_err(|error| anyhow!("invalid parameters: {error}"))?;
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return Err(anyhow!("the PHC string has no salt or no hash"));
    };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut output = vec![0u8; expected.len()];
    memory
        .with(params.block_count(), |blocks| {
            argon2.hash_password_into_with_memory(password, salt, &mut output, blocks)
        })
        .map_err(|error| anyhow!("{error}"))?;
    let computed = Output::new(&output).map_err(|error| anyhow!("{error}"))?;
    // `Output` compares in constant time.
    Ok(computed == *expected)
}

async fn hash_blocking(
    permits: &Semaphore,
    memory: &Arc<Memory>,
    password: Password,
) -> anyhow::Result<String> {
    let memory = memory.clone();
    run_blocking(permits, move || {
        hash_with(&memory, password.expose().as_bytes()).context("failed to hash a password")
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
    async fn verifies_hash_of_argon2_crate() {
        use argon2::PasswordHasher as _;
        let hasher = PasswordHasher::new().await.expect("hasher");
        let stored = Argon2::default()
            .hash_password(b"kardemumma-pulla")
            .expect("hash")
            .to_string();

        let right = hasher
            .verify("kardemumma-pulla".to_owned(), Some(stored.clone()))
            .await;
        let wrong = hasher.verify("korvapuusti".to_owned(), Some(stored)).await;

        assert!(right.expect("verify"));
        assert!(!wrong.expect("verify"));
    }

    #[tokio::test]
    async fn argon2_crate_verifies_our_hash() {
        use argon2::PasswordVerifier as _;
        let hasher = PasswordHasher::new().await.expect("hasher");
        let stored = hasher
            .hash(password("kardemumma-pulla"))
            .await
            .expect("hash");
        let parsed = PasswordHash::new(&stored).expect("PHC string");

        let right = Argon2::default().verify_password(b"kardemumma-pulla", &parsed);
        let wrong = Argon2::default().verify_password(b"korvapuusti", &parsed);

        assert!(right.is_ok(), "{right:?}");
        assert!(wrong.is_err());
    }

    #[tokio::test]
    async fn verifies_hash_of_other_parameters() {
        use argon2::PasswordHasher as _;
        let hasher = PasswordHasher::new().await.expect("hasher");
        let params = Params::new(8 * 1024, 3, 1, None).expect("parameters");
        let stored = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"kardemumma-pulla")
            .expect("hash")
            .to_string();

        let matches = hasher
            .verify("kardemumma-pulla".to_owned(), Some(stored))
            .await;

        assert!(matches.expect("verify"));
    }

    #[tokio::test]
    async fn malformed_stored_hash_is_an_error() {
        let hasher = PasswordHasher::new().await.expect("hasher");

        let result = hasher
            .verify("kardemumma-pulla".to_owned(), Some("not-a-hash".to_owned()))
            .await;

        assert!(result.is_err());
    }

    #[tokio::test]
    async fn unknown_account_never_matches() {
        let hasher = PasswordHasher::new().await.expect("hasher");

        let matches = hasher.verify("anything-at-all".to_owned(), None).await;

        assert!(!matches.expect("verify"));
    }
}
