//! A small blocking HTTP client over `wasi:http/outgoing-handler` 0.2
//! (capability `http`).
//!
//! Using [`get`] makes the plugin import `wasi:http/outgoing-handler` and
//! `wasi:http/types`, so the bot needs an `http` grant for each origin it
//! calls. The host checks every request against the grant and rejects the
//! rest with [`HttpError::Request`] carrying `HTTP-request-denied`.
//!
//! The client does not follow redirects: a `3xx` response comes back as it
//! is, with [`HttpResponse::location`], so the bot decides whether to send
//! a new request, and the host checks that request like any other.
//! [`resolve_reference`] turns a relative `Location` into a URL.

mod error;
mod url;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, IoError, Method,
    OutgoingRequest, http_error_code,
};
use wasip2::io::streams::{InputStream, StreamError};

pub use error::HttpError;
pub use url::resolve_reference;

/// Body size limit of [`get`], in bytes. It stops a large or endless
/// response from filling the plugin's memory, which would end the event
/// with a trap rather than an error the bot can handle.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Bytes requested from the body stream per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A response with its whole body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code, for example `200`.
    pub status: u16,
    /// Header fields in the order received. Compare names without regard
    /// to ASCII case, as [`HttpResponse::header`] does. Values are bytes
    /// because HTTP does not require them to be UTF-8.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The response body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Returns the value of the first header called `name`, compared
    /// without regard to ASCII case.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
    }

    /// Returns the `Location` header as text, if present and UTF-8.
    pub fn location(&self) -> Option<&str> {
        self.header("location")
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// Returns whether the status is one of the redirect codes 301, 302,
    /// 303, 307 and 308.
    pub fn is_redirect(&self) -> bool {
        matches!(self.status, 301 | 302 | 303 | 307 | 308)
    }
}

/// Sends a `GET` request for `url` and reads the whole response, with a
/// body of at most [`DEFAULT_MAX_BODY_BYTES`].
///
/// ```no_run
/// use botserver_sdk::http;
///
/// let response = http::get("https://api.example.com/v1/status")?;
/// if response.is_redirect() {
///     let next = http::resolve_reference(
///         "https://api.example.com/v1/status",
///         response.location().unwrap_or("/"),
///     )?;
///     let response = http::get(&next)?;
///     assert!(response.status < 300);
/// }
/// # Ok::<(), http::HttpError>(())
/// ```
///
/// # Errors
///
/// As [`get_with_limit`].
pub fn get(url: &str) -> Result<HttpResponse, HttpError> {
    get_with_limit(url, DEFAULT_MAX_BODY_BYTES)
}

/// Sends a `GET` request for `url` and reads the whole response, with a
/// body of at most `max_body_bytes`. Redirects are returned, not followed.
///
/// # Errors
///
/// - [`HttpError::InvalidUrl`] when `url` is not an absolute `http` or
///   `https` URL without credentials.
/// - [`HttpError::Request`] when the host or the network fails the request,
///   including `HTTP-request-denied` for a request outside the grant.
/// - [`HttpError::BodyTooLarge`] when the body exceeds `max_body_bytes`.
/// - [`HttpError::BodyRead`] when reading the body fails without an error
///   code.
/// - [`HttpError::Protocol`] when the host breaks the `wasi:http` contract.
pub fn get_with_limit(url: &str, max_body_bytes: usize) -> Result<HttpResponse, HttpError> {
    let request = build_get_request(url)?;
    let future =
        outgoing_handler::handle(request, None).map_err(|code| HttpError::from_code(&code))?;
    let response = wait_for_response(&future)?;

    let status = response.status();
    let headers = response.headers().entries();
    let declared_length = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| std::str::from_utf8(value).ok()?.trim().parse::<u64>().ok());
    if declared_length.is_some_and(|length| exceeds(length, max_body_bytes)) {
        return Err(HttpError::BodyTooLarge {
            max_bytes: max_body_bytes,
        });
    }

    let body = read_body(&response, max_body_bytes)?;
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn build_get_request(url: &str) -> Result<OutgoingRequest, HttpError> {
    let target = url::request_target(url)?;
    let rejected = |reason| HttpError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };

    let request = OutgoingRequest::new(Fields::new());
    request
        .set_method(&Method::Get)
        .map_err(|()| HttpError::Protocol("the host rejected method `GET`".to_owned()))?;
    request
        .set_scheme(Some(&target.scheme))
        .map_err(|()| rejected("the host rejected the scheme"))?;
    request
        .set_authority(Some(&target.authority))
        .map_err(|()| rejected("invalid host or port"))?;
    request
        .set_path_with_query(Some(&target.path_with_query))
        .map_err(|()| rejected("invalid path or query"))?;
    Ok(request)
}

fn wait_for_response(future: &FutureIncomingResponse) -> Result<IncomingResponse, HttpError> {
    loop {
        match future.get() {
            Some(Ok(Ok(response))) => return Ok(response),
            Some(Ok(Err(code))) => return Err(HttpError::from_code(&code)),
            Some(Err(())) => {
                return Err(HttpError::Protocol("response was already taken".to_owned()));
            }
            None => future.subscribe().block(),
        }
    }
}

/// Reads the body to its end, then waits for the trailers so that a body cut
/// short by the network is an error rather than a silently short body.
fn read_body(response: &IncomingResponse, max_bytes: usize) -> Result<Vec<u8>, HttpError> {
    let body = response
        .consume()
        .map_err(|()| HttpError::Protocol("response body was already consumed".to_owned()))?;
    let stream = body
        .stream()
        .map_err(|()| HttpError::Protocol("response body stream was already taken".to_owned()))?;

    let bytes = read_stream(&stream, max_bytes)?;

    // The stream is a child resource of the body and must go first.
    drop(stream);
    let trailers = IncomingBody::finish(body);
    loop {
        match trailers.get() {
            Some(Ok(Ok(_))) => return Ok(bytes),
            Some(Ok(Err(code))) => return Err(HttpError::from_code(&code)),
            Some(Err(())) => {
                return Err(HttpError::Protocol(
                    "trailers were already taken".to_owned(),
                ));
            }
            None => trailers.subscribe().block(),
        }
    }
}

fn read_stream(stream: &InputStream, max_bytes: usize) -> Result<Vec<u8>, HttpError> {
    let mut bytes = Vec::new();
    loop {
        // One byte past the limit is enough to tell that the body is too long.
        let chunk_limit = (max_bytes - bytes.len())
            .saturating_add(1)
            .min(READ_CHUNK_BYTES);
        match stream.blocking_read(u64::try_from(chunk_limit).unwrap_or(u64::MAX)) {
            Ok(chunk) => {
                if chunk.len() > max_bytes - bytes.len() {
                    return Err(HttpError::BodyTooLarge { max_bytes });
                }
                bytes.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => return Ok(bytes),
            Err(StreamError::LastOperationFailed(error)) => return Err(body_error(&error)),
        }
    }
}

fn body_error(error: &IoError) -> HttpError {
    match http_error_code(error) {
        Some(code) => HttpError::from_code(&code),
        None => HttpError::BodyRead(error.to_debug_string()),
    }
}

/// Returns whether a declared length of `length` bytes is over `max_bytes`.
fn exceeds(length: u64, max_bytes: usize) -> bool {
    !usize::try_from(length).is_ok_and(|length| length <= max_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)]) -> HttpResponse {
        HttpResponse {
            status,
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.as_bytes().to_vec()))
                .collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn header_lookup_ignores_case() {
        let response = response(200, &[("content-type", "text/plain")]);
        assert_eq!(response.header("Content-Type"), Some(&b"text/plain"[..]));
        assert_eq!(response.header("location"), None);
    }

    #[test]
    fn redirect_exposes_location() {
        let response = response(302, &[("location", "/final")]);
        assert!(response.is_redirect());
        assert_eq!(response.location(), Some("/final"));
    }

    #[test]
    fn not_modified_is_not_a_redirect() {
        assert!(!response(304, &[]).is_redirect());
    }

    #[test]
    fn declared_length_is_checked_against_limit() {
        assert!(!exceeds(10, 10));
        assert!(exceeds(11, 10));
        assert!(exceeds(u64::MAX, usize::MAX - 1));
    }
}
