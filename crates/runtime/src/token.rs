//! Access tokens: Ed25519-signed JWTs issued by the auth service.
//!
//! Other services never share a secret with auth. They fetch auth's public key once
//! from its JWKS document (`GET /v1/auth/jwks`) and verify every token locally.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::problem::Problem;

/// The issuer written into every token.
pub const ISSUER: &str = "tiffin-auth";

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Places and follows their own orders.
    Customer,
    /// Restaurant staff: manages tickets and stock.
    Staff,
    /// Operators: may read everything.
    Admin,
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The user's role.
    pub role: Role,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, in seconds since the Unix epoch.
    pub iat: u64,
    /// Always [`ISSUER`].
    pub iss: String,
}

/// A JSON Web Key Set holding Ed25519 public keys (RFC 8037).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
}

/// One Ed25519 public key in JWK form.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Jwk {
    /// Always `OKP`.
    pub kty: String,
    /// Always `Ed25519`.
    pub crv: String,
    /// The public key, base64url without padding.
    pub x: String,
    /// The key id, matched against the token header's `kid`.
    pub kid: String,
    /// Always `EdDSA`.
    pub alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub usage: String,
}

/// The reason a token was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// No `Authorization` header.
    #[error(
        "missing access token: send `Authorization: Bearer <token>` with a token from POST /v1/auth/login"
    )]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("the Authorization header must have the form `Bearer <token>`")]
    NotBearer,
    /// The token cannot be parsed.
    #[error("access token is malformed")]
    Malformed,
    /// The token is signed with another algorithm.
    #[error("access token algorithm {0} is not accepted: tokens must be signed with EdDSA")]
    WrongAlgorithm(String),
    /// The signature does not match any known key.
    #[error("access token signature is invalid")]
    BadSignature,
    /// The token has expired.
    #[error("access token has expired: log in again")]
    Expired,
    /// The token's claims are wrong (issuer, missing fields).
    #[error("access token claims are invalid: {0}")]
    BadClaims(String),
}

/// Verifies access tokens against the auth service's public keys.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Arc<Vec<(String, DecodingKey)>>,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field(
                "kids",
                &self.keys.iter().map(|(kid, _)| kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TokenVerifier {
    /// Builds a verifier from a key set.
    ///
    /// # Errors
    ///
    /// Fails when the set has no usable Ed25519 key.
    pub fn from_jwks(jwks: &Jwks) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for jwk in &jwks.keys {
            if jwk.kty == "OKP" && jwk.crv == "Ed25519" {
                keys.push((jwk.kid.clone(), DecodingKey::from_ed_components(&jwk.x)?));
            }
        }
        anyhow::ensure!(!keys.is_empty(), "the key set has no Ed25519 key");

        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        validation.leeway = 5;
        Ok(Self {
            keys: Arc::new(keys),
            validation,
        })
    }

    /// Fetches the key set from `jwks_url`, retrying while the auth service starts.
    ///
    /// Retries every 200 ms, doubling up to 5 s, until `deadline` has passed.
    ///
    /// # Errors
    ///
    /// Fails when no valid key set was fetched before the deadline.
    pub async fn fetch(jwks_url: &str, deadline: Duration) -> anyhow::Result<Self> {
        let client = crate::http::client(Duration::from_secs(5))?;
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            let attempt = async {
                let response = client.get(jwks_url).send().await?.error_for_status()?;
                let jwks: Jwks = response.json().await?;
                Self::from_jwks(&jwks)
            };
            match attempt.await {
                Ok(verifier) => return Ok(verifier),
                Err(error) if started.elapsed() + delay < deadline => {
                    tracing::warn!(url = jwks_url, error = %error, retry_in_ms = delay.as_millis() as u64, "failed to fetch the auth key set, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    return Err(
                        error.context(format!("failed to fetch the auth key set from {jwks_url}"))
                    );
                }
            }
        }
    }

    /// Verifies a token and returns its claims.
    ///
    /// # Errors
    ///
    /// Returns why the token is not accepted.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::WrongAlgorithm(format!("{:?}", header.alg)));
        }

        // A token without `kid` is tried against every key; auth always sets it.
        let candidates = self
            .keys
            .iter()
            .filter(|(kid, _)| header.kid.as_deref().is_none_or(|k| k == kid));
        let mut last = TokenError::BadSignature;
        for (_, key) in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return Ok(data.claims),
                Err(error) => {
                    last = match error.kind() {
                        ErrorKind::InvalidSignature => TokenError::BadSignature,
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::InvalidIssuer => {
                            return Err(TokenError::BadClaims("unknown issuer".into()));
                        }
                        ErrorKind::MissingRequiredClaim(claim) => {
                            return Err(TokenError::BadClaims(format!("missing claim `{claim}`")));
                        }
                        ErrorKind::Json(_) => {
                            return Err(TokenError::BadClaims("claims do not parse".into()));
                        }
                        _ => TokenError::Malformed,
                    }
                }
            }
        }
        Err(last)
    }

    /// Verifies the bearer token in an `Authorization` header value.
    ///
    /// # Errors
    ///
    /// Returns why the header or its token is not accepted.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Claims, TokenError> {
        let header = header.ok_or(TokenError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(TokenError::NotBearer)?;
        self.verify(token.trim())
    }
}

/// The authenticated caller of a request, extracted from its bearer token.
///
/// A missing or invalid token rejects the request with 401 and a problem document
/// that gives the reason.
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

impl<S> FromRequestParts<S> for Caller
where
    TokenVerifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = TokenVerifier::from_ref(state);
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .map(|value| value.to_str().unwrap_or_default());
        match verifier.verify_header(header) {
            Ok(claims) => {
                tracing::Span::current().record("user_id", claims.sub.as_str());
                Ok(Self(claims))
            }
            Err(error) => Err(Problem::unauthorized(error.to_string())),
        }
    }
}
