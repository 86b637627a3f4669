//! The chat page at `/`: its security headers, its assets, and markup that
//! the Content-Security-Policy would not break. The page reads nothing from
//! the database, so these tests run against SQLite only.

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};

use crate::harness::{Backend, TestServer};

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One start tag of an HTML document: its lowercase name and attributes.
#[derive(Debug)]
struct Tag {
    name: String,
    attributes: Vec<(String, String)>,
}

impl Tag {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Lists the start tags of `html`. A small scanner, enough for the page
/// this crate ships: it skips comments and end tags and reads quoted,
/// unquoted and empty attributes.
fn start_tags(html: &str) -> Vec<Tag> {
    let mut tags = Vec::new();
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        if let Some(comment) = rest.strip_prefix("!--") {
            rest = comment.split_once("-->").map_or("", |(_, after)| after);
            continue;
        }
        let end = rest.find('>').expect("every tag is closed");
        let inside = &rest[..end];
        rest = &rest[end + 1..];
        if inside.starts_with('/') || inside.starts_with('!') {
            continue;
        }
        tags.push(parse_tag(inside));
    }
    tags
}

fn parse_tag(inside: &str) -> Tag {
    let inside = inside.trim_end_matches('/');
    let name_end = inside.find(char::is_whitespace).unwrap_or(inside.len());
    let name = inside[..name_end].to_ascii_lowercase();
    let mut attributes = Vec::new();
    let mut rest = inside[name_end..].trim_start();
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = rest[..key_end].to_ascii_lowercase();
        rest = rest[key_end..].trim_start();
        let mut value = String::new();
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (text, remainder) = match after.chars().next() {
                Some(quote @ ('"' | '\'')) => after[1..]
                    .split_once(quote)
                    .expect("every quoted attribute value is closed"),
                _ => after.split_at(after.find(char::is_whitespace).unwrap_or(after.len())),
            };
            value = text.to_owned();
            rest = remainder.trim_start();
        }
        attributes.push((key, value));
    }
    Tag { name, attributes }
}

/// Returns the text between each `<script ...>` and its `</script>`.
fn script_bodies(html: &str) -> Vec<&str> {
    html.split("<script")
        .skip(1)
        .map(|after| {
            let body = after.split_once('>').map_or("", |(_, body)| body);
            body.split_once("</script>").map_or(body, |(text, _)| text)
        })
        .collect()
}

fn header<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("missing `{name}` header"))
        .to_str()
        .unwrap()
}

async fn fetch(server: &TestServer, path: &str) -> (StatusCode, HeaderMap, String) {
    let response = server
        .client
        .get(format!("{}{path}", server.base))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_has_security_headers() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (status, headers, body) = fetch(&server, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        header(&headers, &header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    assert_eq!(
        header(&headers, &header::CONTENT_SECURITY_POLICY),
        CONTENT_SECURITY_POLICY
    );
    assert_eq!(header(&headers, &header::X_FRAME_OPTIONS), "DENY");
    assert_eq!(header(&headers, &header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(header(&headers, &header::CACHE_CONTROL), "no-cache");
    assert!(headers.contains_key(header::ETAG));
    assert!(body.starts_with("<!doctype html>"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_has_no_inline_code_or_style() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (_, _, html) = fetch(&server, "/").await;
    let tags = start_tags(&html);
    assert!(tags.iter().any(|tag| tag.name == "form"), "no form parsed");

    let scripts: Vec<&Tag> = tags.iter().filter(|tag| tag.name == "script").collect();
    assert!(!scripts.is_empty(), "the page loads no script");
    for script in &scripts {
        assert!(
            script.attribute("src").is_some(),
            "inline script: {script:?}"
        );
    }
    for body in script_bodies(&html) {
        assert!(body.trim().is_empty(), "script with a body: {body}");
    }
    for tag in &tags {
        assert_ne!(tag.name, "style", "inline style element");
        for (name, value) in &tag.attributes {
            assert!(!name.starts_with("on"), "inline handler `{name}={value}`");
            assert_ne!(name, "style", "style attribute on <{}>", tag.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_loads_only_its_own_assets() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (_, _, html) = fetch(&server, "/").await;
    let mut references = Vec::new();
    for tag in start_tags(&html) {
        for name in ["src", "href", "action"] {
            if let Some(value) = tag.attribute(name) {
                references.push(value.to_owned());
            }
        }
    }
    assert!(references.contains(&"/assets/chat.js".to_owned()));
    assert!(references.contains(&"/assets/chat.css".to_owned()));
    for reference in &references {
        assert!(
            reference.starts_with('/') && !reference.starts_with("//"),
            "not a path on this server: `{reference}`"
        );
        let (status, _, _) = fetch(&server, reference).await;
        assert_eq!(status, StatusCode::OK, "{reference}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_have_content_types_and_headers() {
    let server = TestServer::start(Backend::Sqlite).await;
    let assets = [
        (
            "/assets/chat.js",
            "text/javascript; charset=utf-8",
            "chat.js",
        ),
        ("/assets/chat.css", "text/css; charset=utf-8", "chat.css"),
    ];
    for (path, content_type, file) in assets {
        let (status, headers, body) = fetch(&server, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(header(&headers, &header::CONTENT_TYPE), content_type);
        assert_eq!(header(&headers, &header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(
            header(&headers, &header::CONTENT_SECURITY_POLICY),
            CONTENT_SECURITY_POLICY
        );
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets")
            .join(file);
        assert_eq!(body, std::fs::read_to_string(source).unwrap(), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_page_revalidates_as_not_modified() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (_, headers, _) = fetch(&server, "/").await;
    let etag = header(&headers, &header::ETAG).to_owned();
    let response = server
        .client
        .get(format!("{}/", server.base))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(response.headers(), &header::ETAG), etag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_keeps_tokens_out_of_storage_and_html() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (_, _, script) = fetch(&server, "/assets/chat.js").await;
    for banned in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "localStorage",
        "sessionStorage",
        "document.cookie",
        "eval(",
    ] {
        assert!(!script.contains(banned), "chat.js uses `{banned}`");
    }
    assert!(script.contains("textContent"));
}
