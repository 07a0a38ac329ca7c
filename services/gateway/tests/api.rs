//! The gateway over real HTTP on 127.0.0.1, in front of small upstreams started by
//! each test.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tiffin_gateway::{Service, Settings, Upstreams};
use tiffin_runtime::CancellationToken;
use tiffin_runtime::problem::Problem;

/// Starts an upstream that responds with 202, a JSON description of the request it
/// got, and an `x-upstream` header with its name. Returns its base URL.
async fn spawn_upstream(name: &'static str) -> String {
    let router = Router::new()
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/v1/kitchen/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "too late"
            }),
        )
        .route(
            "/v1/orders/moved",
            get(|| async { (StatusCode::SEE_OTHER, [(header::LOCATION, "/v1/orders/o2")]) }),
        )
        .fallback(move |request: Request| echo(name, request));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

async fn echo(name: &'static str, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("request body");
    let header = |headers: &HeaderMap, name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let description = json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "body": String::from_utf8_lossy(&body),
        "x_custom": header(&parts.headers, "x-custom"),
        "traceparent": header(&parts.headers, "traceparent"),
        "x_forwarded_for": header(&parts.headers, "x-forwarded-for"),
    });
    (
        StatusCode::ACCEPTED,
        [("x-upstream", name)],
        axum::Json(description),
    )
        .into_response()
}

/// Returns a base URL where nothing listens: a port that was bound and released.
async fn stopped_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{addr}")
}

/// Upstreams split over two servers: auth and orders on `first`, the rest on
/// `second`.
async fn two_upstreams() -> Upstreams {
    let first = spawn_upstream("first").await;
    let second = spawn_upstream("second").await;
    Upstreams {
        auth: first.clone(),
        catalog: second.clone(),
        orders: first.clone(),
        kitchen: second.clone(),
        delivery: Some(first),
        notifications: second.clone(),
        analytics: second,
    }
}

/// A running gateway and a client for it that does not follow redirects.
struct TestGateway {
    base_url: String,
    client: reqwest::Client,
    _stop_on_drop: StopOnDrop,
}

/// Cancels the gateway's shutdown token when the test ends.
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl TestGateway {
    async fn spawn(upstreams: Upstreams, request_timeout: Duration) -> Self {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        let settings = Settings {
            request_timeout,
            ..Settings::new(addr, upstreams)
        };
        let service = Service::build(settings).await.expect("gateway builds");
        let base_url = format!("http://{}", service.http_addr());
        let shutdown = CancellationToken::new();
        tokio::spawn(service.run(shutdown.clone()));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Self {
            base_url,
            client,
            _stop_on_drop: StopOnDrop(shutdown),
        }
    }

    async fn start() -> Self {
        Self::spawn(two_upstreams().await, Settings::DEFAULT_REQUEST_TIMEOUT).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request is sent")
    }
}

async fn problem(response: reqwest::Response) -> Problem {
    response.json().await.expect("a problem document")
}

#[tokio::test]
async fn prefixes_reach_their_upstream() {
    let gateway = TestGateway::start().await;
    let cases = [
        ("/v1/auth/jwks", "first"),
        ("/v1/restaurants", "second"),
        ("/v1/restaurants/r1/menu", "second"),
        ("/v1/orders", "first"),
        ("/v1/users/u1/orders", "first"),
        ("/v1/kitchen/tickets", "second"),
        ("/v1/analytics/summary", "second"),
    ];

    for (path, upstream) in cases {
        let response = gateway.get(path).await;

        assert_eq!(response.headers()["x-upstream"], upstream, "{path}");
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(body["path"], path, "{path}");
    }
}

#[tokio::test]
async fn request_passes_through_unchanged() {
    let gateway = TestGateway::start().await;

    let response = gateway
        .client
        .post(gateway.url("/v1/orders?source=app&dry_run=1"))
        .header("x-custom", "kept as sent")
        .header("content-type", "application/json")
        .body(r#"{"restaurant_id":"r1"}"#)
        .send()
        .await
        .expect("request is sent");

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.headers()["x-upstream"], "first");
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/v1/orders");
    assert_eq!(body["query"], "source=app&dry_run=1");
    assert_eq!(body["body"], r#"{"restaurant_id":"r1"}"#);
    assert_eq!(body["x_custom"], "kept as sent");
    assert_eq!(body["x_forwarded_for"], "127.0.0.1");
}

#[tokio::test]
async fn traceparent_keeps_trace_id() {
    let gateway = TestGateway::start().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace_id}-00f067aa0ba902b7-01");

    let response = gateway
        .client
        .get(gateway.url("/v1/kitchen/tickets"))
        .header("traceparent", &incoming)
        .send()
        .await
        .expect("request is sent");

    let body: Value = response.json().await.expect("JSON body");
    let forwarded = body["traceparent"].as_str().expect("traceparent forwarded");
    assert!(
        forwarded.starts_with(&format!("00-{trace_id}-")),
        "{forwarded}"
    );
    assert_ne!(forwarded, incoming, "the span id was not replaced");
}

#[tokio::test]
async fn redirect_passes_through() {
    let gateway = TestGateway::start().await;

    let response = gateway.get("/v1/orders/moved").await;

    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/v1/orders/o2");
}

#[tokio::test]
async fn unknown_path_is_404() {
    let gateway = TestGateway::start().await;

    let response = gateway.get("/v1/couriers/c1").await;

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let problem = problem(response).await;
    let detail = problem.detail.unwrap_or_default();
    assert!(detail.contains("/v1/couriers/c1"), "{detail}");
}

#[tokio::test]
async fn stopped_upstream_is_502() {
    let mut upstreams = two_upstreams().await;
    upstreams.orders = stopped_upstream().await;
    let gateway = TestGateway::spawn(upstreams, Settings::DEFAULT_REQUEST_TIMEOUT).await;

    let response = gateway.get("/v1/orders/o1").await;

    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let problem = problem(response).await;
    let detail = problem.detail.unwrap_or_default();
    assert!(
        detail.contains("upstream orders is unreachable at http://127.0.0.1:"),
        "{detail}"
    );
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let gateway = TestGateway::spawn(two_upstreams().await, Duration::from_millis(300)).await;

    let response = gateway.get("/v1/kitchen/slow").await;

    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let problem = problem(response).await;
    let detail = problem.detail.unwrap_or_default();
    assert!(detail.contains("upstream kitchen"), "{detail}");
}

#[tokio::test]
async fn oversized_body_is_413() {
    let gateway = TestGateway::start().await;

    let response = gateway
        .client
        .post(gateway.url("/v1/orders"))
        .body(vec![b'x'; 65 * 1024])
        .send()
        .await
        .expect("request is sent");

    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let problem = problem(response).await;
    assert!(
        problem.kind.ends_with("/payload-too-large"),
        "{}",
        problem.kind
    );
}

#[tokio::test]
async fn body_at_limit_is_forwarded() {
    let gateway = TestGateway::start().await;

    let response = gateway
        .client
        .post(gateway.url("/v1/orders"))
        .body(vec![b'x'; 64 * 1024])
        .send()
        .await
        .expect("request is sent");

    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn readyz_ok_when_all_up() {
    let gateway = TestGateway::start().await;

    let response = gateway.get("/readyz").await;

    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn readyz_names_down_upstream() {
    let mut upstreams = two_upstreams().await;
    upstreams.analytics = stopped_upstream().await;
    let gateway = TestGateway::spawn(upstreams, Settings::DEFAULT_REQUEST_TIMEOUT).await;

    let response = gateway.get("/readyz").await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let problem = problem(response).await;
    let detail = problem.detail.unwrap_or_default();
    assert!(
        detail.contains("analytics at http://127.0.0.1:"),
        "{detail}"
    );
    assert!(!detail.contains("orders"), "{detail}");
}

#[tokio::test]
async fn service_left_out_is_404_and_not_probed() {
    let mut upstreams = two_upstreams().await;
    upstreams.delivery = None;
    let gateway = TestGateway::spawn(upstreams, Settings::DEFAULT_REQUEST_TIMEOUT).await;

    let response = gateway.get("/v1/delivery/orders/o1").await;

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let problem = problem(response).await;
    let detail = problem.detail.unwrap_or_default();
    assert!(detail.contains("runs no delivery service"), "{detail}");
    assert_eq!(gateway.get("/readyz").await.status(), StatusCode::OK);
    assert!(gateway.get("/v1/orders/o1").await.status().is_success());
}
