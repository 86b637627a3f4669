//! The client-certificate requirement of operator requests.
//!
//! With `BOTSERVER_TLS_CLIENT_CA` set, the TLS handshake requests a
//! certificate from every client. A client may connect without one, but a certificate
//! that the CA did not issue fails the handshake. Operator requests are
//! then served only on connections that presented a certificate: requests
//! for [`OPERATOR_PATHS`], refused here before routing, and every admin
//! action (a route that needs the `tenant_admin` or `platform_admin` role),
//! refused by [`crate::http::extract::Caller`]. Chat, sign-in and a user's
//! own account stay open to clients without a certificate. Without the
//! setting nothing here applies.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Extensions;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use super::error::ApiError;
use crate::config::Config;

/// Paths, and the paths below them, served only to clients with a
/// certificate when `BOTSERVER_TLS_CLIENT_CA` is set.
pub const OPERATOR_PATHS: &[&str] = &["/metrics"];

/// Detail of the 403 for an operator request without a certificate.
pub(crate) const CERTIFICATE_REQUIRED: &str =
    "requires a TLS client certificate issued by the operator CA";

/// Request extension: the TLS client presented a certificate that chains
/// to a CA of `BOTSERVER_TLS_CLIENT_CA`. rustls ends the handshake for any
/// other certificate, so its presence is the proof.
#[derive(Clone, Copy, Debug)]
pub struct ClientCertificate;

/// Returns whether a request with `extensions` may make operator requests:
/// always when no client CA is configured, otherwise only with a verified
/// client certificate.
pub fn has_operator_access(config: &Config, extensions: &Extensions) -> bool {
    config.extra.tls_client_ca.is_none() || extensions.get::<ClientCertificate>().is_some()
}

fn is_operator_path(path: &str) -> bool {
    OPERATOR_PATHS.iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Refuses requests for [`OPERATOR_PATHS`] without operator access.
pub(super) async fn guard(
    State(config): State<Arc<Config>>,
    request: Request,
    next: Next,
) -> Response {
    if is_operator_path(request.uri().path()) && !has_operator_access(&config, request.extensions())
    {
        return ApiError::Forbidden(CERTIFICATE_REQUIRED).into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::is_operator_path;

    #[test]
    fn operator_paths_match_whole_segments() {
        assert!(is_operator_path("/metrics"));
        assert!(is_operator_path("/metrics/"));
        assert!(is_operator_path("/metrics/extra"));
        assert!(!is_operator_path("/metricsx"));
        assert!(!is_operator_path("/api/v1/metrics"));
        assert!(!is_operator_path("/"));
    }
}
