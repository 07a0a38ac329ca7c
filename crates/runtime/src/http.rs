//! The HTTP side of a service: server with request spans and graceful shutdown, and
//! the outgoing client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::json::MAX_BODY_BYTES;
use crate::trace::{TRACEPARENT, TraceContext};

/// Binds a TCP listener. Port 0 picks a free port; read it back from the listener.
///
/// # Errors
///
/// Fails when the address is in use or not local.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| anyhow::anyhow!("failed to listen on {addr}: {error}"))
}

/// Adds what every service's router needs: `GET /healthz`, a request span carrying
/// the trace id, and the request body limit of [`MAX_BODY_BYTES`].
///
/// Handlers record `order_id` and `user_id` on the request span once they know them.
pub fn with_common_layers(router: Router) -> Router {
    router
        .route("/healthz", get(|| async { "ok" }))
        .layer(middleware::from_fn(request_span))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// A response extension for a server error that is no fault of this service. The
/// request log records such a response at debug level instead of as a warning.
///
/// Two cases use it: a deliberate rejection under load, which would otherwise log
/// a line per rejected request, and an upstream's response that a gateway passes
/// on, which the upstream has logged.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotAFault;

async fn request_span(mut request: Request, next: Next) -> Response {
    let context = TraceContext::from_header_or_new(
        request
            .headers()
            .get(TRACEPARENT)
            .and_then(|value| value.to_str().ok()),
    );
    request.extensions_mut().insert(context);

    let path = request.uri().path().to_owned();
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %path,
        trace_id = %context.trace_id(),
        order_id = tracing::field::Empty,
        user_id = tracing::field::Empty,
    );
    let started = Instant::now();
    async move {
        let mut response = next.run(request).await;
        let status = response.status();
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        // A probe that returns 503 means "not yet", not a failure.
        let probe = matches!(path.as_str(), "/readyz" | "/healthz");
        let fault = !probe && response.extensions().get::<NotAFault>().is_none();
        if status.is_server_error() && fault {
            tracing::warn!(status = status.as_u16(), elapsed_ms, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), elapsed_ms, "request handled");
        }
        if let Ok(value) = HeaderValue::from_str(&context.to_string()) {
            response.headers_mut().insert(TRACEPARENT, value);
        }
        response
    }
    .instrument(span)
    .await
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
///
/// On shutdown the server stops accepting connections and waits for in-flight
/// requests to finish.
///
/// # Errors
///
/// Fails when accepting connections fails.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(service = name, %addr, "HTTP server listening");
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await?;
    tracing::info!(service = name, "HTTP server stopped");
    Ok(())
}

/// Builds an HTTP client whose every request times out after `timeout`, connects
/// within 2 s and keeps connections alive for reuse.
///
/// # Errors
///
/// Fails only when the TLS-less client cannot be built, which indicates a bug.
pub fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(30))
        .no_proxy()
        .build()?)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use axum::Extension;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use tower::ServiceExt;

    use super::*;

    /// Log lines written while a test runs.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Sends `GET path` through the common layers and returns the warnings logged.
    async fn warnings_for(router: Router, path: &str) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let request = Request::get(path).body(Body::empty()).expect("request");
        let response = with_common_layers(router)
            .oneshot(request)
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bytes = captured.0.lock().expect("log buffer").clone();
        String::from_utf8(bytes).expect("UTF-8 log")
    }

    #[tokio::test(flavor = "current_thread")]
    async fn server_error_logs_warning() {
        let router =
            Router::new().route("/busy", get(|| async { StatusCode::SERVICE_UNAVAILABLE }));

        let warnings = warnings_for(router, "/busy").await;

        assert!(warnings.contains("request failed"), "{warnings}");
        assert!(warnings.contains("status=503"), "{warnings}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn not_a_fault_logs_no_warning() {
        let router = Router::new().route(
            "/shed",
            get(|| async {
                (Extension(NotAFault), StatusCode::SERVICE_UNAVAILABLE).into_response()
            }),
        );

        let warnings = warnings_for(router, "/shed").await;

        assert_eq!(warnings, "");
    }
}
