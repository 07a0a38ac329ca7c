//! The HTTP handlers of the auth service.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tiffin_runtime::db::Database;
use tiffin_runtime::json::Json;
use tiffin_runtime::problem::{Problem, internal_error};
use tiffin_runtime::token::{Jwks, Role};
use uuid::Uuid;

use crate::domain::{self, Email, Invalid, Password};
use crate::password::PasswordHasher;
use crate::signing::Signer;
use crate::storage::{self, NewUser};

/// The state shared by every handler. Cloning is cheap.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) db: Database,
    pub(crate) signer: Arc<Signer>,
    pub(crate) passwords: Arc<PasswordHasher>,
    pub(crate) token_ttl: Duration,
}

/// Builds the service's routes, without the common layers.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/jwks", get(jwks))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The body of register and login. No `Debug`, so the password cannot reach a log.
#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

/// A registered account.
#[derive(Serialize)]
struct UserView {
    id: String,
    email: String,
    role: Role,
}

/// A login response, in the form of an OAuth 2.0 token response (RFC 6749, section
/// 5.1).
#[derive(Serialize)]
struct TokenView {
    access_token: String,
    token_type: &'static str,
    /// Seconds until the token expires.
    expires_in: u64,
}

fn invalid(invalid: Invalid) -> Problem {
    Problem::invalid_field(invalid.field, invalid.detail)
}

/// `POST /v1/auth/register`: creates a customer account.
async fn register(
    State(state): State<AppState>,
    Json(body): Json<Credentials>,
) -> Result<(StatusCode, Json<UserView>), Problem> {
    let email = Email::parse(&body.email).map_err(invalid)?;
    let password = Password::parse(body.password).map_err(invalid)?;

    let password_hash = state
        .passwords
        .hash(password)
        .await
        .map_err(internal_error)?;
    let id = Uuid::now_v7().to_string();
    let user = NewUser {
        id: &id,
        email: &email,
        password_hash: &password_hash,
        role: Role::Customer,
        created_at: tiffin_runtime::time::now_millis(),
    };
    let inserted = storage::insert_user(&state.db, &user)
        .await
        .map_err(internal_error)?;
    if !inserted {
        return Err(Problem::conflict(format!(
            "an account with email {email} already exists: log in with POST /v1/auth/login"
        ))
        .with_field("email"));
    }

    tracing::Span::current().record("user_id", id.as_str());
    tracing::debug!(user_id = %id, "user registered");
    let view = UserView {
        id,
        email: email.to_string(),
        role: Role::Customer,
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// `POST /v1/auth/login`: exchanges an email and password for an access token.
async fn login(
    State(state): State<AppState>,
    Json(body): Json<Credentials>,
) -> Result<Json<TokenView>, Problem> {
    let email = domain::normalize_email(&body.email);
    let user = storage::find_user_by_email(&state.db, &email)
        .await
        .map_err(internal_error)?;

    // `verify` takes as long for an unknown email as for a wrong password, and
    // both get the same problem, so the response does not reveal which accounts exist.
    let stored_hash = user.as_ref().map(|user| user.password_hash.clone());
    let matches = state
        .passwords
        .verify(body.password, stored_hash)
        .await
        .map_err(internal_error)?;
    let Some(user) = user.filter(|_| matches) else {
        return Err(Problem::unauthorized("invalid email or password"));
    };

    tracing::Span::current().record("user_id", user.id.as_str());
    let issued_at = u64::try_from(tiffin_runtime::time::now_millis() / 1000)
        .expect("the system clock is set after 1970");
    let access_token = state
        .signer
        .issue(&user.id, user.role, issued_at, state.token_ttl)
        .map_err(internal_error)?;
    tracing::debug!(user_id = %user.id, "token issued");
    Ok(Json(TokenView {
        access_token,
        token_type: "Bearer",
        expires_in: state.token_ttl.as_secs(),
    }))
}

/// `GET /v1/auth/jwks`: the public key that verifies every token this service issues.
async fn jwks(State(state): State<AppState>) -> Json<Jwks> {
    Json(state.signer.jwks())
}

/// `GET /readyz`: 200 while the database responds to a query.
async fn readyz(State(state): State<AppState>) -> Result<&'static str, Problem> {
    match storage::ping(&state.db).await {
        Ok(()) => Ok("ready"),
        Err(error) => {
            tracing::warn!(error = %error, "readiness check failed: the database did not respond");
            Err(Problem::unavailable(
                "the auth database is not responding: retry shortly",
                1,
            ))
        }
    }
}
