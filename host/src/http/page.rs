//! The chat page at `/` and its script and style sheet, built into the
//! binary.
//!
//! The page is an ordinary client of the API and of `/ws`: it signs in,
//! lists the caller's bots, takes a WebSocket ticket and chats. This module
//! only serves its three files, with a Content-Security-Policy that lets
//! them load and connect to this origin alone.

use std::sync::OnceLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest as _, Sha256};

use super::AppState;

/// Allows the page's own script, style sheet and connections (the API and
/// `/ws`) and nothing else, so injected markup can neither run inline code,
/// nor load from or send to another origin, nor be framed or post a form.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Makes browsers revalidate on every load, so a page never runs with an
/// asset from another server version. The `ETag` turns an unchanged file
/// into a 304.
const CACHE_CONTROL: &str = "no-cache";

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: OnceLock<HeaderValue>,
}

static INDEX_HTML: Asset = Asset::new(
    include_str!("../../assets/index.html"),
    "text/html; charset=utf-8",
);
static CHAT_JS: Asset = Asset::new(
    include_str!("../../assets/chat.js"),
    "text/javascript; charset=utf-8",
);
static CHAT_CSS: Asset = Asset::new(
    include_str!("../../assets/chat.css"),
    "text/css; charset=utf-8",
);

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index_html))
        .route("/assets/chat.js", get(chat_js))
        .route("/assets/chat.css", get(chat_css))
}

async fn index_html(request: HeaderMap) -> Response {
    INDEX_HTML.serve(&request)
}

async fn chat_js(request: HeaderMap) -> Response {
    CHAT_JS.serve(&request)
}

async fn chat_css(request: HeaderMap) -> Response {
    CHAT_CSS.serve(&request)
}

impl Asset {
    const fn new(body: &'static str, content_type: &'static str) -> Self {
        Self {
            body,
            content_type,
            etag: OnceLock::new(),
        }
    }

    /// Returns a strong `ETag`: the first 128 bits of the body's SHA-256.
    #[allow(
        clippy::expect_used,
        reason = "hex digits in quotes are always a valid header value"
    )]
    fn etag(&self) -> &HeaderValue {
        self.etag.get_or_init(|| {
            let digest = Sha256::digest(self.body.as_bytes());
            let tag = format!("\"{}\"", hex::encode(&digest[..16]));
            HeaderValue::try_from(tag).expect("quoted hex is a valid header value")
        })
    }

    /// Returns the file, or 304 when `If-None-Match` names its current tag.
    fn serve(&self, request: &HeaderMap) -> Response {
        let etag = self.etag();
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, etag.clone());
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );

        if is_cached(request, etag) {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        (headers, self.body).into_response()
    }
}

/// Returns whether the request's `If-None-Match` lists `etag` or is `*`.
/// Weak tags (`W/"..."`) compare by their opaque part, as RFC 9110 requires
/// for this header.
fn is_cached(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(current) = etag.to_str() else {
        return false;
    };
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(if_none_match: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(if_none_match).unwrap(),
        );
        headers
    }

    #[test]
    fn if_none_match_matches_listed_tags() {
        let etag = HeaderValue::from_static("\"abc\"");
        assert!(is_cached(&request("\"abc\""), &etag));
        assert!(is_cached(&request("\"old\", \"abc\""), &etag));
        assert!(is_cached(&request("W/\"abc\""), &etag));
        assert!(is_cached(&request("*"), &etag));
    }

    #[test]
    fn if_none_match_rejects_other_tags() {
        let etag = HeaderValue::from_static("\"abc\"");
        assert!(!is_cached(&HeaderMap::new(), &etag));
        assert!(!is_cached(&request("\"abcd\""), &etag));
        assert!(!is_cached(&request("abc"), &etag));
    }

    #[test]
    fn unchanged_file_is_not_modified() {
        let fresh = CHAT_CSS.serve(&HeaderMap::new());
        assert_eq!(fresh.status(), StatusCode::OK);
        let etag = fresh.headers()[header::ETAG].to_str().unwrap().to_owned();
        let cached = CHAT_CSS.serve(&request(&etag));
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(cached.headers()[header::ETAG], etag.as_str());
        assert!(cached.headers().get(header::CONTENT_TYPE).is_none());
    }
}
