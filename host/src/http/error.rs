//! The API error type and its RFC 9457 problem-details rendering.
//!
//! 4xx bodies state what was wrong with the request. 5xx bodies are
//! generic, and the detail is logged once, here, inside the request's span.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::AuthError;
use crate::crypto::CryptoError;
use crate::storage::StorageError;

/// Media type of problem-details bodies.
const PROBLEM_JSON: &str = "application/problem+json";

/// An error returned by a route.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed or a value is invalid.
    #[error("{1}")]
    Request(StatusCode, String),
    /// Login failed. One message for every cause.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// No valid access token, or a refresh token that is not live.
    #[error("missing, invalid or expired token")]
    Unauthenticated,
    /// The password was right, but the account has a second factor and the
    /// login carried no code.
    #[error("a second factor is required: send `totp` or `recovery_code`")]
    SecondFactorRequired,
    /// The one-time or recovery code was rejected.
    #[error("invalid or already used one-time code")]
    InvalidSecondFactor,
    /// The server's policy requires a second factor the caller has not
    /// enrolled; only the enrolment routes and logout accept the token.
    #[error("a second factor is required for this account: enrol with `POST /api/v1/me/mfa/totp`")]
    MfaEnrolmentRequired,
    /// The caller's role does not allow this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// Nothing with that id, or nothing the caller may see.
    #[error("not found")]
    NotFound,
    /// A unique value is taken.
    #[error("{0}")]
    Conflict(&'static str),
    /// Over a rate limit; `Retry-After` gives the delay until the next
    /// request passes.
    #[error("rate limit exceeded: retry after {} s", retry_after_secs(*.retry_after))]
    RateLimited {
        /// Time until the budget admits another request.
        retry_after: Duration,
    },
    /// Over a cap on concurrent resources, such as open chat connections.
    #[error("{0}")]
    TooMany(&'static str),
    /// A service the request depends on is unreachable.
    #[error("{detail}")]
    Unavailable {
        /// The detail sent to the client.
        detail: &'static str,
        /// When to try again.
        retry_after: Duration,
    },
    /// The server failed; the detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Builds a 400 error with `detail`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::Request(StatusCode::BAD_REQUEST, detail.into())
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Request(status, _) => *status,
            Self::InvalidCredentials
            | Self::Unauthenticated
            | Self::SecondFactorRequired
            | Self::InvalidSecondFactor => StatusCode::UNAUTHORIZED,
            Self::MfaEnrolmentRequired => StatusCode::FORBIDDEN,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::RateLimited { .. } | Self::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::Unavailable { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// A stable, machine-readable name for errors a client must act on
    /// differently from a plain 401 or 403.
    fn code(&self) -> Option<&'static str> {
        match self {
            Self::SecondFactorRequired => Some("mfa_required"),
            Self::InvalidSecondFactor => Some("mfa_invalid"),
            Self::MfaEnrolmentRequired => Some("mfa_enrolment_required"),
            _ => None,
        }
    }
}

/// RFC 9457 problem details.
#[derive(Debug, Serialize)]
struct Problem {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// Extension member naming the error for programs.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                None
            }
            other => Some(other.to_string()),
        };
        let mut response = render_problem(status, detail, self.code());
        if let Some(delay) = self.retry_after() {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(delay)),
            );
        }
        response
    }
}

/// Whole seconds for `Retry-After`, rounded up and at least 1, so a client
/// that waits that long passes.
fn retry_after_secs(delay: Duration) -> u64 {
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    secs.max(1)
}

/// Builds a problem-details response.
pub fn problem_response(status: StatusCode, detail: Option<String>) -> Response {
    render_problem(status, detail, None)
}

fn render_problem(
    status: StatusCode,
    detail: Option<String>,
    code: Option<&'static str>,
) -> Response {
    let problem = Problem {
        kind: "about:blank",
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail,
        code,
    };
    let mut response = (status, Json(problem)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::InvalidCredentials => Self::InvalidCredentials,
            AuthError::InvalidToken => Self::Unauthenticated,
            AuthError::WeakPassword(message) => {
                Self::Request(StatusCode::UNPROCESSABLE_ENTITY, message)
            }
            AuthError::BadRequest(message) => Self::bad_request(message),
            AuthError::SecondFactorRequired => Self::SecondFactorRequired,
            AuthError::InvalidSecondFactor => Self::InvalidSecondFactor,
            AuthError::MfaState(message) => Self::Conflict(message),
            AuthError::Storage(error) => error.into(),
            other => Self::Internal(chain(&other)),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Conflict => Self::Conflict("a resource with that name already exists"),
            other => Self::Internal(chain(&other)),
        }
    }
}

impl From<CryptoError> for ApiError {
    fn from(error: CryptoError) -> Self {
        Self::Internal(chain(&error))
    }
}

/// Formats an error with its sources, for the one log line of a 5xx.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
