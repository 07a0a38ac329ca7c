//! The HTTP handlers of the gateway.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tiffin_runtime::json::MAX_BODY_BYTES;
use tiffin_runtime::problem::Problem;
use tiffin_runtime::trace::TraceContext;

use crate::proxy::{ForwardError, Outgoing, Proxy};
use crate::routing::{self, ROUTED_PREFIXES};

/// Builds the gateway's routes, without the common layers: `GET /readyz`, and every
/// other request forwarded by its path.
pub(crate) fn router(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/readyz", get(readyz))
        .fallback(forward)
        .with_state(proxy)
}

/// Forwards a request to the upstream that owns its path.
async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |target| target.as_str());
    let Some(route) = routing::route(path_and_query) else {
        return Problem::not_found(format!(
            "no service serves {} {}: the gateway forwards only paths under {ROUTED_PREFIXES}",
            request.method(),
            request.uri().path()
        ))
        .into_response();
    };

    let method = request.method().clone();
    let headers = request.headers().clone();
    let client_ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let trace = request.extensions().get::<TraceContext>().copied();
    // `Bytes` enforces the body limit that `with_common_layers` sets.
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                format!("request body is larger than the limit of {MAX_BODY_BYTES} bytes"),
            )
            .into_response();
        }
        Err(rejection) => {
            return Problem::new(rejection.status(), "invalid-request", rejection.body_text())
                .into_response();
        }
    };

    let outgoing = Outgoing {
        method,
        route,
        headers,
        body,
        client_ip,
        trace,
    };
    match proxy.forward(outgoing).await {
        Ok(response) => response,
        Err(error) => problem_for(&error).into_response(),
    }
}

/// Maps a forwarding failure to the problem returned to the client, logging its
/// cause.
fn problem_for(error: &ForwardError) -> Problem {
    // A request for a service the deployment leaves out is the client's mistake,
    // not a fault of the gateway.
    if !matches!(error, ForwardError::NotDeployed { .. }) {
        tracing::warn!(error = %error, cause = ?error, "failed to forward a request");
    }
    match error {
        ForwardError::NotDeployed { upstream } => {
            tracing::debug!(%upstream, "request for a service this deployment does not run");
            Problem::not_found(format!(
                "this deployment runs no {upstream} service, so nothing serves its paths"
            ))
        }
        ForwardError::Unreachable {
            upstream, base_url, ..
        } => Problem::new(
            StatusCode::BAD_GATEWAY,
            "bad-gateway",
            format!("upstream {upstream} is unreachable at {base_url}: retry shortly"),
        ),
        ForwardError::TimedOut {
            upstream,
            base_url,
            timeout,
            ..
        } => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "gateway-timeout",
            format!(
                "upstream {upstream} at {base_url} did not respond within {} ms",
                timeout.as_millis()
            ),
        ),
        ForwardError::Failed {
            upstream, base_url, ..
        } => Problem::new(
            StatusCode::BAD_GATEWAY,
            "bad-gateway",
            format!("upstream {upstream} at {base_url} failed to respond: retry shortly"),
        ),
    }
}

/// `GET /readyz`: 200 when every upstream's `/readyz` returns 200 within 2 s, else
/// 503 naming the ones that did not.
async fn readyz(State(proxy): State<Arc<Proxy>>) -> Result<&'static str, Problem> {
    let unready = proxy.unready_upstreams().await;
    if unready.is_empty() {
        Ok("ready")
    } else {
        Err(Problem::unavailable(
            format!("upstreams not ready: {}", unready.join("; ")),
            1,
        ))
    }
}
