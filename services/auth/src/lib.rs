//! The auth service: registers customers, logs users in and issues access tokens.
//!
//! Tokens are JWTs signed with Ed25519 (`alg` EdDSA) and carry
//! [`tiffin_runtime::token::Claims`]. Other services fetch the public key once from
//! `GET /v1/auth/jwks` and verify tokens themselves, so this service is on the path
//! of a login only, never of a request that presents a token.
//!
//! # HTTP API
//!
//! - `POST /v1/auth/register` `{"email","password"}`: 201 `{"id","email","role"}`,
//!   400 naming the invalid field, 409 when the email is taken.
//! - `POST /v1/auth/login` `{"email","password"}`: 200
//!   `{"access_token","token_type":"Bearer","expires_in"}`, or 401 "invalid email or
//!   password" for an unknown email and a wrong password alike.
//! - `GET /v1/auth/jwks`: the JSON Web Key Set.
//! - `GET /healthz` and `GET /readyz` (200 while the database responds).
//!
//! # Layout
//!
//! - [`Service`] (this file) opens the database, loads or creates the signing key,
//!   binds the listener and serves until shutdown.
//! - `routes`: the HTTP handlers. They validate with `domain`, hash with
//!   `password`, sign with `signing` and read and write through `storage`.
//! - `domain`: email and password rules and role names.
//! - `password`: argon2id hashing on the blocking pool.
//! - `signing`: the Ed25519 key, its JWKS and the tokens it issues.
//! - `storage`: every SQL query.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod domain;
mod password;
mod routes;
mod signing;
mod storage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::{Database, PoolSettings};
use tokio::net::TcpListener;

use crate::password::PasswordHasher;
use crate::routes::AppState;
use crate::signing::{Signer, StoredKey};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The auth service's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address of the HTTP listener. Port 0 picks a free port, which
    /// [`Service::http_addr`] returns.
    pub http_addr: SocketAddr,
    /// The database URL, `sqlite://PATH?mode=rwc` or `postgres://USER:PASSWORD@HOST/DB`.
    pub database_url: String,
    /// Size and acquire timeout of the database connection pool.
    pub pool: PoolSettings,
    /// How long an access token stays valid, in whole seconds (at least 1 s).
    /// [`Settings::new`] sets [`Settings::DEFAULT_TOKEN_TTL`].
    pub token_ttl: Duration,
}

impl Settings {
    /// The default token lifetime, 12 h, so that a long replay can keep using the
    /// tokens it obtained at its start.
    pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(12 * 60 * 60);

    /// Creates settings with the default token lifetime.
    pub fn new(http_addr: SocketAddr, database_url: impl Into<String>) -> Self {
        Self {
            http_addr,
            database_url: database_url.into(),
            pool: PoolSettings::default(),
            token_ttl: Self::DEFAULT_TOKEN_TTL,
        }
    }
}

/// A built auth service, listening but not yet serving.
#[derive(Debug)]
pub struct Service {
    listener: TcpListener,
    http_addr: SocketAddr,
    router: Router,
    db: Database,
}

impl Service {
    /// Opens the database and applies migrations, loads the signing key (creating it
    /// on the first start), and binds the HTTP listener.
    ///
    /// # Errors
    ///
    /// Fails when `token_ttl` is under one second, the database cannot be opened or
    /// migrated, the stored signing key is damaged, or the address cannot be bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            settings.token_ttl >= Duration::from_secs(1),
            "invalid token_ttl {:?}: it must be at least 1 s",
            settings.token_ttl
        );

        let db = Database::open(&settings.database_url, &settings.pool, &MIGRATOR).await?;
        let signer = load_or_create_signer(&db).await?;
        tracing::info!(kid = signer.kid(), "signing key loaded");
        let passwords = PasswordHasher::new().await?;

        let listener = tiffin_runtime::http::bind(settings.http_addr).await?;
        let http_addr = listener.local_addr()?;
        let state = AppState {
            db: db.clone(),
            signer: Arc::new(signer),
            passwords: Arc::new(passwords),
            token_ttl: settings.token_ttl,
        };
        let router = tiffin_runtime::http::with_common_layers(routes::router(state));
        Ok(Self {
            listener,
            http_addr,
            router,
            db,
        })
    }

    /// Returns the address the HTTP listener is bound to, with the real port.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Returns the full router, common layers included, for tests that call it without a
    /// socket.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves HTTP until `shutdown` is cancelled, then waits for in-flight requests
    /// and closes the database.
    ///
    /// # Errors
    ///
    /// Fails when the server fails to accept connections.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let served =
            tiffin_runtime::http::serve("auth", self.listener, self.router, shutdown).await;
        self.db.close().await;
        served
    }
}

/// Loads the oldest stored signing key, inserting a new one when there is none.
///
/// The key persists so that tokens issued before a restart still verify after it.
async fn load_or_create_signer(db: &Database) -> anyhow::Result<Signer> {
    let stored = match storage::oldest_signing_key(db)
        .await
        .context("failed to read the signing key")?
    {
        Some(stored) => stored,
        None => {
            let generated = StoredKey::generate(tiffin_runtime::time::now_millis())?;
            storage::insert_signing_key(db, &generated)
                .await
                .context("failed to store a new signing key")?;
            tracing::info!(kid = %generated.kid, "created a signing key");
            storage::oldest_signing_key(db)
                .await
                .context("failed to read the signing key")?
                .context("the signing key just inserted is missing")?
        }
    };
    Signer::from_stored(&stored)
}

/// Creates an account with any role in the auth database at `database_url`, for
/// operators: self-registration creates customers only, so staff and admin accounts
/// come from here (`tiffin users add`). Returns the new user id.
///
/// # Errors
///
/// Fails when the email or password is invalid, the email is taken, or the database
/// cannot be opened.
pub async fn create_user(
    database_url: &str,
    email: &str,
    password: &str,
    role: tiffin_runtime::token::Role,
) -> anyhow::Result<String> {
    let email =
        domain::Email::parse(email).map_err(|invalid| anyhow::anyhow!("{}", invalid.detail))?;
    let password = domain::Password::parse(password.to_owned())
        .map_err(|invalid| anyhow::anyhow!("{}", invalid.detail))?;
    let db = Database::open(database_url, &PoolSettings::default(), &MIGRATOR).await?;
    let password_hash = PasswordHasher::new().await?.hash(password).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let user = storage::NewUser {
        id: &id,
        email: &email,
        password_hash: &password_hash,
        role,
        created_at: tiffin_runtime::time::now_millis(),
    };
    let inserted = storage::insert_user(&db, &user).await?;
    db.close().await;
    anyhow::ensure!(inserted, "an account with email {email} already exists");
    Ok(id)
}
