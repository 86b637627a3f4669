//! Headers the edge adds to every response: security headers, and CORS for
//! the origins listed in `BOTSERVER_ALLOWED_ORIGINS`.
//!
//! Hyper writes some responses itself, before a request reaches the router:
//! 400 for an unparsable request and 431 for an oversized head. Those carry
//! none of these headers, and their body is empty.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use tower_http::cors::{AllowCredentials, AllowOrigin, CorsLayer};

use crate::config::origin::Origin;

/// Policy of every response that does not set its own (the chat page
/// does): load nothing, and never be framed.
const DEFAULT_CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Browsers send no `Referer` when leaving a page of this server, so its
/// URLs never reach other sites.
const REFERRER_POLICY: &str = "no-referrer";

/// Turns off browser features the page never uses, for it and anything
/// injected into it.
const PERMISSIONS_POLICY: &str = "accelerometer=(), camera=(), geolocation=(), gyroscope=(), \
     magnetometer=(), microphone=(), payment=(), usb=()";

/// Sent over TLS only: browsers then refuse plain HTTP to this host for a
/// year. Subdomains are left out because this server cannot know them.
const STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000";

/// How long a browser may cache a preflight response.
const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// Request headers a cross-origin page may send.
const CORS_ALLOWED_HEADERS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    HeaderName::from_static("x-request-id"),
];

/// Response headers a cross-origin page may read besides the simple ones.
const CORS_EXPOSED_HEADERS: [HeaderName; 2] =
    [HeaderName::from_static("x-request-id"), header::RETRY_AFTER];

const PERMISSIONS_POLICY_HEADER: HeaderName = HeaderName::from_static("permissions-policy");

/// Adds the security headers to a response, and HSTS when `tls` is true
/// because the server speaks TLS itself. Browsers ignore HSTS over plain HTTP, and
/// behind a TLS proxy setting it is the proxy's job.
pub(super) async fn set_security_headers(
    State(tls): State<bool>,
    mut response: Response,
) -> Response {
    let headers = response.headers_mut();
    let fixed = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, REFERRER_POLICY),
        (PERMISSIONS_POLICY_HEADER, PERMISSIONS_POLICY),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(DEFAULT_CONTENT_SECURITY_POLICY));
    if tls {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(STRICT_TRANSPORT_SECURITY),
        );
    }
    headers.remove(header::SERVER);
    response
}

/// Builds the CORS layer: a page from one of `allowed` origins may call
/// the API with credentials, and no other page may read a response.
///
/// Matching goes through [`Origin`], so scheme, host and port must all be
/// equal; `null`, look-alike hosts, other schemes and other ports never
/// match. The `Access-Control-Allow-Origin` value is the request's own
/// `Origin`, sent back only when it matched. Responses carry
/// `Vary: Origin` either way, so caches keep the responses apart.
pub(super) fn cors(allowed: &[Origin]) -> CorsLayer {
    let allowed: Arc<[Origin]> = allowed.into();
    let for_credentials = Arc::clone(&allowed);
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, parts| {
            is_allowed(&allowed, origin, parts)
        }))
        .allow_credentials(AllowCredentials::predicate(move |origin, parts| {
            is_allowed(&for_credentials, origin, parts)
        }))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers(CORS_ALLOWED_HEADERS)
        .expose_headers(CORS_EXPOSED_HEADERS)
        .max_age(CORS_MAX_AGE)
}

fn is_allowed(allowed: &[Origin], origin: &HeaderValue, _parts: &Parts) -> bool {
    origin
        .to_str()
        .ok()
        .and_then(Origin::parse)
        .is_some_and(|origin| allowed.contains(&origin))
}
