//! [`HttpError`] and the text of `wasi:http` error codes.

use std::fmt;

use wasip2::http::types::{ErrorCode, FieldSizePayload};

use crate::HandlerError;

/// Error from an HTTP request that did not produce a response.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL cannot be sent as a request.
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Description of the problem.
        reason: &'static str,
    },
    /// The host or the network failed the request with a `wasi:http`
    /// `error-code`. The host's outbound policy rejects a request with
    /// `HTTP-request-denied`.
    Request {
        /// Name of the `error-code` case as the WIT spells it, for example
        /// `HTTP-request-denied` or `connection-refused`.
        code: &'static str,
        /// The case's payload, when it has one.
        detail: Option<String>,
    },
    /// The response body is longer than the limit the caller set.
    BodyTooLarge {
        /// The limit, in bytes.
        max_bytes: usize,
    },
    /// Reading the response body failed without a `wasi:http` error code.
    /// The text is the host's description of the I/O error.
    BodyRead(String),
    /// The host broke the `wasi:http` contract, for example by handing out a
    /// response body twice.
    Protocol(String),
}

impl HttpError {
    /// Returns the `wasi:http` `error-code` case name when the request
    /// failed with one.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::Request { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Returns whether the host's outbound policy rejected the request.
    pub fn is_denied(&self) -> bool {
        self.code() == Some("HTTP-request-denied")
    }

    pub(super) fn from_code(code: &ErrorCode) -> Self {
        let (code, detail) = describe(code);
        Self::Request { code, detail }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl { url, reason } => write!(f, "invalid URL `{url}`: {reason}"),
            Self::Request { code, detail: None } => f.write_str(code),
            Self::Request {
                code,
                detail: Some(detail),
            } => write!(f, "{code} ({detail})"),
            Self::BodyTooLarge { max_bytes } => {
                write!(f, "response body is larger than {max_bytes} bytes")
            }
            Self::BodyRead(text) => write!(f, "reading the response body failed: {text}"),
            Self::Protocol(text) => write!(f, "wasi:http protocol error: {text}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// Maps an HTTP error to a handler error, so `?` works in
/// [`Bot::handle`](crate::Bot::handle). An invalid URL becomes
/// [`HandlerError::Failed`]; everything else means the remote side or the
/// grant is not available and becomes [`HandlerError::Unavailable`].
impl From<HttpError> for HandlerError {
    fn from(error: HttpError) -> Self {
        match error {
            HttpError::InvalidUrl { .. } => Self::Failed(error.to_string()),
            _ => Self::Unavailable(error.to_string()),
        }
    }
}

/// Returns the WIT case name of `code` and its payload as text.
fn describe(code: &ErrorCode) -> (&'static str, Option<String>) {
    use ErrorCode as E;

    match code {
        E::DnsTimeout => ("DNS-timeout", None),
        E::DnsError(payload) => {
            let detail = match (&payload.rcode, payload.info_code) {
                (Some(rcode), Some(info)) => Some(format!("rcode {rcode}, info code {info}")),
                (Some(rcode), None) => Some(format!("rcode {rcode}")),
                (None, Some(info)) => Some(format!("info code {info}")),
                (None, None) => None,
            };
            ("DNS-error", detail)
        }
        E::DestinationNotFound => ("destination-not-found", None),
        E::DestinationUnavailable => ("destination-unavailable", None),
        E::DestinationIpProhibited => ("destination-IP-prohibited", None),
        E::DestinationIpUnroutable => ("destination-IP-unroutable", None),
        E::ConnectionRefused => ("connection-refused", None),
        E::ConnectionTerminated => ("connection-terminated", None),
        E::ConnectionTimeout => ("connection-timeout", None),
        E::ConnectionReadTimeout => ("connection-read-timeout", None),
        E::ConnectionWriteTimeout => ("connection-write-timeout", None),
        E::ConnectionLimitReached => ("connection-limit-reached", None),
        E::TlsProtocolError => ("TLS-protocol-error", None),
        E::TlsCertificateError => ("TLS-certificate-error", None),
        E::TlsAlertReceived(payload) => {
            let detail = match (payload.alert_id, &payload.alert_message) {
                (_, Some(message)) => Some(message.clone()),
                (Some(id), None) => Some(format!("alert {id}")),
                (None, None) => None,
            };
            ("TLS-alert-received", detail)
        }
        E::HttpRequestDenied => ("HTTP-request-denied", None),
        E::HttpRequestLengthRequired => ("HTTP-request-length-required", None),
        E::HttpRequestBodySize(bytes) => ("HTTP-request-body-size", byte_count(*bytes)),
        E::HttpRequestMethodInvalid => ("HTTP-request-method-invalid", None),
        E::HttpRequestUriInvalid => ("HTTP-request-URI-invalid", None),
        E::HttpRequestUriTooLong => ("HTTP-request-URI-too-long", None),
        E::HttpRequestHeaderSectionSize(bytes) => {
            ("HTTP-request-header-section-size", byte_count(*bytes))
        }
        E::HttpRequestHeaderSize(field) => (
            "HTTP-request-header-size",
            field.as_ref().and_then(field_size),
        ),
        E::HttpRequestTrailerSectionSize(bytes) => {
            ("HTTP-request-trailer-section-size", byte_count(*bytes))
        }
        E::HttpRequestTrailerSize(field) => ("HTTP-request-trailer-size", field_size(field)),
        E::HttpResponseIncomplete => ("HTTP-response-incomplete", None),
        E::HttpResponseHeaderSectionSize(bytes) => {
            ("HTTP-response-header-section-size", byte_count(*bytes))
        }
        E::HttpResponseHeaderSize(field) => ("HTTP-response-header-size", field_size(field)),
        E::HttpResponseBodySize(bytes) => ("HTTP-response-body-size", byte_count(*bytes)),
        E::HttpResponseTrailerSectionSize(bytes) => {
            ("HTTP-response-trailer-section-size", byte_count(*bytes))
        }
        E::HttpResponseTrailerSize(field) => ("HTTP-response-trailer-size", field_size(field)),
        E::HttpResponseTransferCoding(coding) => ("HTTP-response-transfer-coding", coding.clone()),
        E::HttpResponseContentCoding(coding) => ("HTTP-response-content-coding", coding.clone()),
        E::HttpResponseTimeout => ("HTTP-response-timeout", None),
        E::HttpUpgradeFailed => ("HTTP-upgrade-failed", None),
        E::HttpProtocolError => ("HTTP-protocol-error", None),
        E::LoopDetected => ("loop-detected", None),
        E::ConfigurationError => ("configuration-error", None),
        E::InternalError(text) => ("internal-error", text.clone()),
    }
}

fn byte_count<T: fmt::Display>(bytes: Option<T>) -> Option<String> {
    bytes.map(|bytes| format!("{bytes} bytes"))
}

fn field_size(field: &FieldSizePayload) -> Option<String> {
    match (&field.field_name, field.field_size) {
        (Some(name), Some(bytes)) => Some(format!("`{name}`, {bytes} bytes")),
        (Some(name), None) => Some(format!("`{name}`")),
        (None, Some(bytes)) => Some(format!("{bytes} bytes")),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_request_carries_wit_case_name() {
        let error = HttpError::from_code(&ErrorCode::HttpRequestDenied);
        assert_eq!(error.code(), Some("HTTP-request-denied"));
        assert!(error.is_denied());
        assert_eq!(error.to_string(), "HTTP-request-denied");
    }

    #[test]
    fn payload_becomes_detail() {
        let error = HttpError::from_code(&ErrorCode::InternalError(Some("no route".to_owned())));
        assert_eq!(error.to_string(), "internal-error (no route)");
        let error = HttpError::from_code(&ErrorCode::HttpResponseBodySize(Some(10)));
        assert_eq!(error.to_string(), "HTTP-response-body-size (10 bytes)");
    }

    #[test]
    fn invalid_url_is_a_failure_of_the_bot() {
        let error = HttpError::InvalidUrl {
            url: "ftp://x".to_owned(),
            reason: "unsupported scheme, expected `http` or `https`",
        };
        assert!(matches!(HandlerError::from(error), HandlerError::Failed(_)));
    }
}
