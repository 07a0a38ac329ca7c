//! The auth service over real HTTP on 127.0.0.1, with a SQLite file per test, and its
//! main path once more on a fresh PostgreSQL database.

use std::net::SocketAddr;
use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tiffin_auth::{Service, Settings};
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;
use tiffin_runtime::problem::Problem;
use tiffin_runtime::testing::TestDatabase;
use tiffin_runtime::token::{Jwks, Role, TokenVerifier};
use tokio::task::JoinHandle;

const PASSWORD: &str = "ruisleipa-2020";

/// A running auth service and a client for it.
struct TestApp {
    base_url: String,
    client: reqwest::Client,
    shutdown: CancellationToken,
    server: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// Starts the service on a free port with its database in `dir`.
    async fn spawn(dir: &Path) -> Self {
        Self::spawn_on(Database::sqlite_url(dir, "auth")).await
    }

    /// Starts the service on a free port with its database at `database_url`.
    async fn spawn_on(database_url: String) -> Self {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        let settings = Settings::new(addr, database_url);
        let service = Service::build(settings).await.expect("service builds");
        let base_url = format!("http://{}", service.http_addr());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(service.run(shutdown.clone()));
        Self {
            base_url,
            client: reqwest::Client::new(),
            shutdown,
            server,
        }
    }

    /// Stops the service and waits until it has closed its database.
    async fn stop(self) {
        self.shutdown.cancel();
        self.server
            .await
            .expect("server task completes")
            .expect("server stops cleanly");
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base_url))
            .json(body)
            .send()
            .await
            .expect("request is sent")
    }

    async fn register(&self, email: &str, password: &str) -> reqwest::Response {
        let body = json!({ "email": email, "password": password });
        self.post("/v1/auth/register", &body).await
    }

    async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        let body = json!({ "email": email, "password": password });
        self.post("/v1/auth/login", &body).await
    }

    /// Logs in and returns the access token.
    async fn token(&self, email: &str, password: &str) -> String {
        let response = self.login(email, password).await;
        assert_eq!(response.status(), StatusCode::OK, "login failed");
        let body: Value = response.json().await.expect("JSON body");
        body["access_token"]
            .as_str()
            .expect("access_token is a string")
            .to_owned()
    }

    /// Fetches the key set over HTTP and builds a verifier from it.
    async fn verifier(&self) -> TokenVerifier {
        let jwks: Jwks = self
            .client
            .get(format!("{}/v1/auth/jwks", self.base_url))
            .send()
            .await
            .expect("request is sent")
            .json()
            .await
            .expect("a JWKS document");
        TokenVerifier::from_jwks(&jwks).expect("the key set has an Ed25519 key")
    }
}

async fn problem(response: reqwest::Response) -> Problem {
    response.json().await.expect("a problem document")
}

#[tokio::test]
async fn register_returns_customer() {
    let dir = TempDir::new().expect("temp dir");
    let app = TestApp::spawn(dir.path()).await;

    let response = app.register("  Aino.Lahti@Example.FI ", PASSWORD).await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(body["email"], "aino.lahti@example.fi");
    assert_eq!(body["role"], "customer");
    assert!(body["id"].as_str().is_some_and(|id| !id.is_empty()));
}

#[tokio::test]
async fn login_token_verifies_with_jwks() {
    let dir = TempDir::new().expect("temp dir");
    let app = TestApp::spawn(dir.path()).await;
    let registered: Value = app
        .register("aino@example.fi", PASSWORD)
        .await
        .json()
        .await
        .expect("JSON body");

    let response = app.login("AINO@example.fi", PASSWORD).await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 12 * 60 * 60);
    let token = body["access_token"].as_str().expect("access_token");
    let claims = app.verifier().await.verify(token).expect("token verifies");
    assert_eq!(claims.sub, registered["id"].as_str().expect("id"));
    assert_eq!(claims.role, Role::Customer);
}

#[tokio::test]
async fn restart_keeps_signing_key() {
    let dir = TempDir::new().expect("temp dir");
    let first = TestApp::spawn(dir.path()).await;
    first.register("aino@example.fi", PASSWORD).await;
    let token = first.token("aino@example.fi", PASSWORD).await;
    first.stop().await;

    let second = TestApp::spawn(dir.path()).await;
    let verifier = second.verifier().await;

    assert!(verifier.verify(&token).is_ok(), "old token was rejected");
    let response = second.login("aino@example.fi", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn duplicate_email_conflicts() {
    let dir = TempDir::new().expect("temp dir");
    let app = TestApp::spawn(dir.path()).await;
    app.register("aino@example.fi", PASSWORD).await;

    let response = app.register(" Aino@Example.fi", "another-password").await;

    assert_eq!(response.status(), StatusCode::CONFLICT);
    let problem = problem(response).await;
    assert_eq!(problem.field.as_deref(), Some("email"));
}

#[tokio::test]
async fn invalid_fields_are_named() {
    let dir = TempDir::new().expect("temp dir");
    let app = TestApp::spawn(dir.path()).await;
    let long_email = format!("{}@example.fi", "a".repeat(250));
    let long_password = "p".repeat(129);
    let cases = [
        ("no @", "aino.example.fi", PASSWORD, "email"),
        ("empty local part", "@example.fi", PASSWORD, "email"),
        ("no dot in domain", "aino@example", PASSWORD, "email"),
        (
            "email over 254 chars",
            long_email.as_str(),
            PASSWORD,
            "email",
        ),
        (
            "password of 7 chars",
            "aino@example.fi",
            "1234567",
            "password",
        ),
        (
            "password of 129 chars",
            "aino@example.fi",
            long_password.as_str(),
            "password",
        ),
    ];

    for (case, email, password, field) in cases {
        let response = app.register(email, password).await;

        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{case}");
        let problem = problem(response).await;
        assert_eq!(problem.field.as_deref(), Some(field), "{case}");
    }
}

#[tokio::test]
async fn bad_credentials_look_alike() {
    let dir = TempDir::new().expect("temp dir");
    let app = TestApp::spawn(dir.path()).await;
    app.register("aino@example.fi", PASSWORD).await;

    let wrong_password = app.login("aino@example.fi", "not-the-password").await;
    let unknown_email = app.login("eino@example.fi", PASSWORD).await;

    assert_eq!(wrong_password.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown_email.status(), StatusCode::UNAUTHORIZED);
    let wrong_password = wrong_password.bytes().await.expect("body");
    let unknown_email = unknown_email.bytes().await.expect("body");
    assert_eq!(wrong_password, unknown_email);
}

#[tokio::test]
async fn malformed_json_is_rejected() {
    let dir = TempDir::new().expect("temp dir");
    let app = TestApp::spawn(dir.path()).await;

    let response = app
        .client
        .post(format!("{}/v1/auth/register", app.base_url))
        .header("content-type", "application/json")
        .body(r#"{"email": "aino@example.fi", "password": "#)
        .send()
        .await
        .expect("request is sent");

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let problem = problem(response).await;
    assert!(
        problem.kind.ends_with("/malformed-json"),
        "{}",
        problem.kind
    );
}

#[tokio::test]
async fn readyz_is_ok() {
    let dir = TempDir::new().expect("temp dir");
    let app = TestApp::spawn(dir.path()).await;

    let response = app
        .client
        .get(format!("{}/readyz", app.base_url))
        .send()
        .await
        .expect("request is sent");

    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn login_works_on_postgres() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let app = TestApp::spawn_on(db.url().to_owned()).await;
    app.register("eino@example.fi", PASSWORD).await;

    let token = app.token("eino@example.fi", PASSWORD).await;

    let claims = app.verifier().await.verify(&token).expect("token verifies");
    assert_eq!(claims.role, Role::Customer);
    app.stop().await;
    db.close().await;
}
