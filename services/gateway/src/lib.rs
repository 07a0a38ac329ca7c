//! The API gateway: one origin for clients, forwarding each request to the service
//! that owns its path.
//!
//! | path | upstream |
//! | --- | --- |
//! | `/v1/auth/...` | auth |
//! | `/v1/restaurants...` | catalog |
//! | `/v1/orders...`, `/v1/users/...` | orders |
//! | `/v1/kitchen/...` | kitchen |
//! | `/v1/delivery/...` | delivery |
//! | `/v1/notifications...` | notifications |
//! | `/v1/analytics/...` | analytics |
//!
//! Method, path, query, body and end-to-end headers pass through, with
//! `X-Forwarded-For` extended by the client's address and `traceparent` set to a
//! child span of the request's trace. The upstream's status, headers and body come
//! back unchanged, hop-by-hop headers aside. The gateway itself responds with a
//! problem document only for its own failures:
//!
//! - 404 for a path that no service owns;
//! - 413 for a body over 64 KiB;
//! - 502 when the upstream is unreachable;
//! - 504 when the upstream does not respond within the request timeout.
//!
//! The gateway checks no tokens, because each service verifies the bearer token it
//! receives.
//!
//! NOTE: bodies are buffered whole in both directions, so a streamed response such
//! as server-sent events reaches the client only once it ends, and only if it ends
//! within the request timeout.
//!
//! # Layout
//!
//! - [`Service`] (this file) validates the settings, binds the listener and serves
//!   until shutdown.
//! - `routes`: the handlers, `GET /readyz` and the fallback that forwards.
//! - `routing`: the path-to-upstream table and the header rules.
//! - `proxy`: the HTTP client that forwards requests and probes `/readyz`.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod proxy;
mod routes;
mod routing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tiffin_runtime::CancellationToken;
use tokio::net::TcpListener;

use crate::proxy::{BaseUrls, Proxy};

/// The gateway's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address of the HTTP listener. Port 0 picks a free port, which
    /// [`Service::http_addr`] returns.
    pub http_addr: SocketAddr,
    /// The base URL of each service.
    pub upstreams: Upstreams,
    /// Maximum time for an upstream to return the response to a forwarded request,
    /// body included, before the client gets 504. Must be positive. [`Settings::new`] sets
    /// [`Settings::DEFAULT_REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
}

impl Settings {
    /// The default request timeout, 10 s.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

    /// Creates settings with the default request timeout.
    pub fn new(http_addr: SocketAddr, upstreams: Upstreams) -> Self {
        Self {
            http_addr,
            upstreams,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The base URL of each service behind the gateway, such as `http://127.0.0.1:8081`:
/// scheme `http`, a host, an optional port, and no path, query or fragment.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// The auth service.
    pub auth: String,
    /// The catalog service.
    pub catalog: String,
    /// The orders service.
    pub orders: String,
    /// The kitchen service.
    pub kitchen: String,
    /// The delivery service, or `None` in a deployment without it (a benchmark of
    /// the flow up to `ready`). Its paths then return 404, and readiness leaves it
    /// out.
    pub delivery: Option<String>,
    /// The notification service.
    pub notifications: String,
    /// The analytics service.
    pub analytics: String,
}

/// A built gateway, listening but not yet serving.
#[derive(Debug)]
pub struct Service {
    listener: TcpListener,
    http_addr: SocketAddr,
    router: Router,
}

impl Service {
    /// Validates the settings and binds the HTTP listener. Upstreams need not be up
    /// yet: `GET /readyz` reports the ones that are not.
    ///
    /// # Errors
    ///
    /// Fails when an upstream URL or the request timeout is invalid, or the address
    /// cannot be bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !settings.request_timeout.is_zero(),
            "invalid request_timeout 0 s: it must be positive"
        );
        let upstreams = &settings.upstreams;
        let base_urls = BaseUrls {
            auth: base_url("auth", &upstreams.auth)?,
            catalog: base_url("catalog", &upstreams.catalog)?,
            orders: base_url("orders", &upstreams.orders)?,
            kitchen: base_url("kitchen", &upstreams.kitchen)?,
            delivery: upstreams
                .delivery
                .as_deref()
                .map(|url| base_url("delivery", url))
                .transpose()?,
            notifications: base_url("notifications", &upstreams.notifications)?,
            analytics: base_url("analytics", &upstreams.analytics)?,
        };
        let proxy = Proxy::new(base_urls, settings.request_timeout)?;

        let listener = tiffin_runtime::http::bind(settings.http_addr).await?;
        let http_addr = listener.local_addr()?;
        let router = tiffin_runtime::http::with_common_layers(routes::router(Arc::new(proxy)));
        Ok(Self {
            listener,
            http_addr,
            router,
        })
    }

    /// Returns the address the HTTP listener is bound to, with the real port.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Returns the full router, common layers included, for tests that call it without a
    /// socket. Without a socket no client address is known, so `X-Forwarded-For` is
    /// passed on as received.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves HTTP until `shutdown` is cancelled, then waits for in-flight requests,
    /// forwarded ones included, to finish.
    ///
    /// # Errors
    ///
    /// Fails when the server fails to accept connections.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tiffin_runtime::http::serve("gateway", self.listener, self.router, shutdown).await
    }
}

/// Checks an upstream's base URL and returns it without a trailing slash.
fn base_url(name: &str, raw: &str) -> anyhow::Result<String> {
    let invalid = |reason: &str| {
        anyhow::anyhow!(
            "invalid upstreams.{name} `{raw}` ({reason}): use a base URL such as http://127.0.0.1:8081"
        )
    };
    let url = reqwest::Url::parse(raw).map_err(|error| invalid(&error.to_string()))?;
    if url.scheme() != "http" {
        return Err(invalid(
            "the scheme must be http, as the gateway's client has no TLS",
        ));
    }
    if url.host_str().is_none() {
        return Err(invalid("a host is missing"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must not have a path, query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_drops_trailing_slash() {
        let url = base_url("orders", "http://127.0.0.1:8083/");

        assert_eq!(url.expect("valid"), "http://127.0.0.1:8083");
    }

    #[test]
    fn invalid_base_urls_are_rejected() {
        for raw in [
            "127.0.0.1:8083",
            "https://127.0.0.1:8083",
            "http://127.0.0.1:8083/orders",
            "http://127.0.0.1:8083/?a=1",
            "",
        ] {
            let error = base_url("orders", raw).expect_err(raw);

            assert!(
                error.to_string().contains("upstreams.orders"),
                "{raw}: {error}"
            );
        }
    }
}
