//! The table of upstreams by path, and the rules for headers crossing the gateway.

use std::fmt;
use std::net::IpAddr;

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// A service behind the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upstream {
    Auth,
    Catalog,
    Orders,
    Kitchen,
    Delivery,
    Notifications,
    Analytics,
}

impl Upstream {
    /// Every upstream, in the order readiness reports them.
    pub(crate) const ALL: [Self; 7] = [
        Self::Auth,
        Self::Catalog,
        Self::Orders,
        Self::Kitchen,
        Self::Delivery,
        Self::Notifications,
        Self::Analytics,
    ];

    /// Returns the service name, as in the settings' field names.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Catalog => "catalog",
            Self::Orders => "orders",
            Self::Kitchen => "kitchen",
            Self::Delivery => "delivery",
            Self::Notifications => "notifications",
            Self::Analytics => "analytics",
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The path prefixes the gateway forwards, for the 404 detail.
pub(crate) const ROUTED_PREFIXES: &str = "/v1/auth, /v1/restaurants, /v1/orders, /v1/users, /v1/kitchen, /v1/delivery, /v1/notifications and /v1/analytics";

/// A request target matched to its upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) upstream: Upstream,
    /// The path and query to request from the upstream, starting with `/`.
    pub(crate) path_and_query: String,
}

/// Matches a request's path and query to the upstream that owns it, by the first
/// path segment after `/v1/`. Returns `None` when no upstream owns the path.
///
/// The path is first normalized the way the HTTP client will send it (WHATWG URL
/// parsing: `.` and `..` segments resolved, unsafe characters percent-encoded), so
/// the upstream chosen here is the one that owns the path the upstream receives.
/// Without that, `/v1/auth/../orders` would go to auth as `/v1/orders`.
pub(crate) fn route(path_and_query: &str) -> Option<Route> {
    let url = reqwest::Url::parse("http://gateway.invalid")
        .expect("a literal URL parses")
        .join(path_and_query)
        .ok()?;
    // A target starting with `//` would join as another host.
    if url.host_str() != Some("gateway.invalid") {
        return None;
    }

    let first_segment = url.path().strip_prefix("/v1/")?.split('/').next()?;
    let upstream = match first_segment {
        "auth" => Upstream::Auth,
        "restaurants" => Upstream::Catalog,
        "orders" | "users" => Upstream::Orders,
        "kitchen" => Upstream::Kitchen,
        "delivery" => Upstream::Delivery,
        "notifications" => Upstream::Notifications,
        "analytics" => Upstream::Analytics,
        _ => return None,
    };
    let path_and_query = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    Some(Route {
        upstream,
        path_and_query,
    })
}

/// Returns true for a header that describes one connection rather than the message
/// (RFC 9110, section 7.6.1), or that the HTTP client sets itself.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
}

/// Copies `headers` without hop-by-hop headers, including those that the
/// `Connection` header itself names.
pub(crate) fn end_to_end_headers(headers: &HeaderMap) -> HeaderMap {
    let named_by_connection: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();

    let mut end_to_end = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let named = named_by_connection.iter().any(|n| n == name.as_str());
        if !is_hop_by_hop(name) && !named {
            end_to_end.append(name.clone(), value.clone());
        }
    }
    end_to_end
}

/// Prepares a client's request headers for the upstream: drops hop-by-hop headers,
/// `Host` and `Content-Length` (the client library sets both for the upstream
/// request) and appends `client_ip` to `X-Forwarded-For`.
pub(crate) fn request_headers(headers: &HeaderMap, client_ip: Option<IpAddr>) -> HeaderMap {
    let mut forwarded = end_to_end_headers(headers);
    forwarded.remove(header::HOST);
    forwarded.remove(header::CONTENT_LENGTH);

    if let Some(ip) = client_ip {
        let earlier: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        let chain = if earlier.is_empty() {
            ip.to_string()
        } else {
            format!("{}, {ip}", earlier.join(", "))
        };
        if let Ok(value) = HeaderValue::from_str(&chain) {
            forwarded.insert(X_FORWARDED_FOR, value);
        }
    }
    forwarded
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_route_to_owners() {
        for (path, upstream) in [
            ("/v1/auth/login", Upstream::Auth),
            ("/v1/restaurants", Upstream::Catalog),
            ("/v1/restaurants/42/menu?lang=fi", Upstream::Catalog),
            ("/v1/orders", Upstream::Orders),
            ("/v1/orders/abc/cancel", Upstream::Orders),
            ("/v1/users/u1/orders", Upstream::Orders),
            ("/v1/kitchen/tickets", Upstream::Kitchen),
            ("/v1/analytics/hourly", Upstream::Analytics),
        ] {
            let route = route(path).map(|route| route.upstream);

            assert_eq!(route, Some(upstream), "{path}");
        }
    }

    #[test]
    fn unowned_paths_are_not_routed() {
        for path in [
            "/",
            "/v1",
            "/v1/",
            "/v1/couriers",
            "/v1/restaurantsx",
            "/v2/orders",
            "//gateway.example/v1/orders",
            "/v1/auth/../../v2/orders",
        ] {
            assert_eq!(route(path), None, "{path}");
        }
    }

    #[test]
    fn query_is_kept() {
        let route = route("/v1/restaurants?near=60.17,24.94&limit=5").expect("routed");

        assert_eq!(
            route.path_and_query,
            "/v1/restaurants?near=60.17,24.94&limit=5"
        );
    }

    #[test]
    fn dot_segments_route_by_result() {
        let route = route("/v1/auth/../orders/o1").expect("routed");

        assert_eq!(route.upstream, Upstream::Orders);
        assert_eq!(route.path_and_query, "/v1/orders/o1");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-session-hint"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-session-hint", "abc"),
            ("host", "gateway.example"),
            ("content-length", "12"),
            ("authorization", "Bearer t"),
            ("x-custom", "kept"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }

        let forwarded = request_headers(&headers, None);

        let mut names: Vec<&str> = forwarded.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["authorization", "x-custom"]);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        let client_ip: IpAddr = "127.0.0.1".parse().expect("literal address");

        let forwarded = request_headers(&headers, Some(client_ip));

        assert_eq!(forwarded[X_FORWARDED_FOR], "203.0.113.7, 127.0.0.1");
    }
}
