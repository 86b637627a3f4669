//! The API error type and its RFC 9457 problem-details rendering.
//!
//! 4xx bodies state what was wrong with the request. 5xx bodies are
//! generic, and the detail is logged once, here, inside the request's span.

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
    /// The caller's role does not allow this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// Nothing with that id, or nothing the caller may see.
    #[error("not found")]
    NotFound,
    /// A unique value is taken.
    #[error("{0}")]
    Conflict(&'static str),
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
            Self::InvalidCredentials | Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
        problem_response(status, detail)
    }
}

/// Builds a problem-details response.
pub fn problem_response(status: StatusCode, detail: Option<String>) -> Response {
    let problem = Problem {
        kind: "about:blank",
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail,
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
