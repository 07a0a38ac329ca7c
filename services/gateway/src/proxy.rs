//! The HTTP client side of the gateway: forwarding requests and probing upstreams.

use std::net::IpAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use futures::future::join_all;
use tiffin_runtime::http::NotAFault;
use tiffin_runtime::trace::{TRACEPARENT, TraceContext};

use crate::routing::{self, Route, Upstream};

/// How long an upstream's `/readyz` may take before readiness counts it as down.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Base URLs of the upstreams, validated, without a trailing slash.
#[derive(Debug, Clone)]
pub(crate) struct BaseUrls {
    pub(crate) auth: String,
    pub(crate) catalog: String,
    pub(crate) orders: String,
    pub(crate) kitchen: String,
    pub(crate) delivery: Option<String>,
    pub(crate) notifications: String,
    pub(crate) analytics: String,
}

impl BaseUrls {
    /// Returns the base URL of `upstream`, or `None` when the deployment does not
    /// run it.
    fn of(&self, upstream: Upstream) -> Option<&str> {
        match upstream {
            Upstream::Auth => Some(&self.auth),
            Upstream::Catalog => Some(&self.catalog),
            Upstream::Orders => Some(&self.orders),
            Upstream::Kitchen => Some(&self.kitchen),
            Upstream::Delivery => self.delivery.as_deref(),
            Upstream::Notifications => Some(&self.notifications),
            Upstream::Analytics => Some(&self.analytics),
        }
    }
}

/// A client request on its way to an upstream.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) method: Method,
    pub(crate) route: Route,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) client_ip: Option<IpAddr>,
    /// The trace of the incoming request. The upstream gets a child span of it.
    pub(crate) trace: Option<TraceContext>,
}

/// A failure to get a response from an upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    /// The deployment does not run the upstream.
    #[error("this deployment runs no {upstream} service")]
    NotDeployed { upstream: Upstream },
    /// No connection could be opened.
    #[error("failed to connect to upstream {upstream} at {base_url}: {source}")]
    Unreachable {
        upstream: Upstream,
        base_url: String,
        source: reqwest::Error,
    },
    /// The upstream did not respond in time.
    #[error("upstream {upstream} at {base_url} timed out after {timeout:?}: {source}")]
    TimedOut {
        upstream: Upstream,
        base_url: String,
        timeout: Duration,
        source: reqwest::Error,
    },
    /// The connection failed after it was opened, for example closed mid-response.
    #[error("failed to forward to upstream {upstream} at {base_url}: {source}")]
    Failed {
        upstream: Upstream,
        base_url: String,
        source: reqwest::Error,
    },
}

/// Forwards requests to the upstreams over one pooled HTTP client.
#[derive(Debug)]
pub(crate) struct Proxy {
    client: reqwest::Client,
    base_urls: BaseUrls,
    request_timeout: Duration,
}

impl Proxy {
    /// Creates a proxy whose upstream requests, response bodies included, time out
    /// after `request_timeout`.
    ///
    /// The client has the settings of `tiffin_runtime::http::client` (connect within
    /// 2 s, idle connections kept 30 s, no proxy) except that it does not follow
    /// redirects: the gateway passes a 3xx response to its client unchanged, as it does
    /// every other status.
    pub(crate) fn new(base_urls: BaseUrls, request_timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            base_urls,
            request_timeout,
        })
    }

    /// Sends `outgoing` to its upstream and returns the upstream's status, headers
    /// (hop-by-hop headers removed) and body.
    ///
    /// The response body is read whole before it is returned, so `request_timeout`
    /// bounds the entire exchange and a failure midway becomes a 502 or 504 instead
    /// of a truncated 200.
    pub(crate) async fn forward(&self, outgoing: Outgoing) -> Result<Response<Body>, ForwardError> {
        let upstream = outgoing.route.upstream;
        let base_url = self
            .base_urls
            .of(upstream)
            .ok_or(ForwardError::NotDeployed { upstream })?;
        let url = format!("{base_url}{}", outgoing.route.path_and_query);
        let error = |source: reqwest::Error| self.classify(upstream, base_url, source);

        let mut headers = routing::request_headers(&outgoing.headers, outgoing.client_ip);
        if let Some(trace) = outgoing.trace {
            let child = HeaderValue::from_str(&trace.child().to_string())
                .expect("a traceparent is ASCII hex and dashes");
            headers.insert(TRACEPARENT, child);
        }
        let mut request = self.client.request(outgoing.method, url).headers(headers);
        if !outgoing.body.is_empty() {
            request = request.body(outgoing.body);
        }

        tracing::debug!(%upstream, path = %outgoing.route.path_and_query, "forwarding request");
        let upstream_response = request.send().await.map_err(error)?;
        let status = upstream_response.status();
        let headers = routing::end_to_end_headers(upstream_response.headers());
        let body = upstream_response.bytes().await.map_err(error)?;

        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        // The upstream logged its own server error, so the gateway's request log
        // does not warn about it a second time.
        response.extensions_mut().insert(NotAFault);
        Ok(response)
    }

    fn classify(&self, upstream: Upstream, base_url: &str, source: reqwest::Error) -> ForwardError {
        let base_url = base_url.to_owned();
        // Connect errors come first because a connect timeout means the request was
        // never sent, so the upstream counts as unreachable rather than slow.
        if source.is_connect() {
            ForwardError::Unreachable {
                upstream,
                base_url,
                source,
            }
        } else if source.is_timeout() {
            ForwardError::TimedOut {
                upstream,
                base_url,
                timeout: self.request_timeout,
                source,
            }
        } else {
            ForwardError::Failed {
                upstream,
                base_url,
                source,
            }
        }
    }

    /// Probes every upstream's `GET /readyz` at once and returns one line per
    /// upstream that did not return 200 within 2 s, such as
    /// `orders at http://127.0.0.1:8083 is unreachable`. Empty when all are up.
    /// An upstream the deployment does not run is not probed.
    pub(crate) async fn unready_upstreams(&self) -> Vec<String> {
        let probes = Upstream::ALL.map(|upstream| async move {
            let base_url = self.base_urls.of(upstream)?;
            let result = self
                .client
                .get(format!("{base_url}/readyz"))
                .timeout(HEALTH_TIMEOUT)
                .send()
                .await;
            let reason = match result {
                Ok(response) if response.status() == StatusCode::OK => return None,
                Ok(response) => format!("returned {}", response.status().as_u16()),
                Err(error) if error.is_connect() => "is unreachable".to_owned(),
                Err(error) if error.is_timeout() => {
                    format!("did not respond within {} s", HEALTH_TIMEOUT.as_secs())
                }
                Err(error) => format!("failed: {error}"),
            };
            tracing::debug!(%upstream, base_url, reason, "upstream is not ready");
            Some(format!("{upstream} at {base_url} {reason}"))
        });
        join_all(probes).await.into_iter().flatten().collect()
    }
}
