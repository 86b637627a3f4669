//! Input validation at the API: request types that reject unknown fields,
//! bounded grant parameters, and identifiers checked before any lookup.

use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::bots::{digest, upload};
use crate::harness::{Backend, TestServer};

both_backends!(
    grant_parameters_are_bounded,
    bot_plugin_digest_must_be_a_digest,
    malformed_identifiers_are_not_found,
    upload_rejects_unknown_query_parameters,
);

/// Request types of the API that accept unknown fields, each with the
/// reason. Every other type deriving `Deserialize` in `host/src/http` and
/// `host/src/ws` must carry `#[serde(deny_unknown_fields)]`.
const LENIENT_TYPES: &[(&str, &str)] = &[(
    "OpenQuery",
    "`/ws` query: General Bots clients add their own parameters",
)];

#[test]
fn request_types_reject_unknown_fields() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut lenient = Vec::new();
    for folder in ["http", "ws"] {
        for file in rust_files(&root.join(folder)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for name in types_without_deny(&text) {
                if !LENIENT_TYPES.iter().any(|(allowed, _)| *allowed == name) {
                    lenient.push(format!("{}: {name}", file.display()));
                }
            }
        }
    }
    assert!(
        lenient.is_empty(),
        "request types without `deny_unknown_fields`: {lenient:#?}"
    );
}

fn rust_files(folder: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// Names of the types in `text` that derive `Deserialize` without
/// `deny_unknown_fields` or `transparent` among their attributes.
fn types_without_deny(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut found = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if !(line.starts_with("#[derive(") && line.contains("Deserialize")) {
            continue;
        }
        let mut attributes = String::new();
        for next in &lines[index + 1..] {
            if let Some(name) = declared_type(next) {
                let strict = attributes.contains("deny_unknown_fields")
                    || attributes.contains("transparent");
                if !strict {
                    found.push(name);
                }
                break;
            }
            attributes.push_str(next);
        }
    }
    found
}

fn declared_type(line: &str) -> Option<String> {
    let rest = line
        .trim_start_matches("pub(crate) ")
        .trim_start_matches("pub(super) ")
        .trim_start_matches("pub ");
    let rest = rest
        .strip_prefix("struct ")
        .or_else(|| rest.strip_prefix("enum "))?;
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

async fn grants(server: &TestServer, token: &str, digest: &str) -> Value {
    let path = format!("/api/v1/tenants/tenant-a/plugins/{digest}/grants");
    let (status, body) = server.json(Method::GET, &path, Some(token), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["grants"].clone()
}

async fn grant_parameters_are_bounded(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, root) = server.bootstrap().await;
    let (status, body) = upload(&server, &root, "tenant-a", "all-capabilities").await;
    assert!(status.is_success(), "{body}");
    let digest = digest(&body);
    let path = format!("/api/v1/tenants/tenant-a/plugins/{digest}/grants");
    let before = grants(&server, &root, &digest).await;

    let many_names: Vec<String> = (0..65).map(|index| format!("NAME_{index}")).collect();
    let many_targets: Vec<String> = (0..65)
        .map(|index| format!("https://host{index}.example.com:443"))
        .collect();
    let cases = [
        ("kv.quota_bytes", json!({"kv": {"quota_bytes": 0}})),
        (
            "kv.quota_bytes",
            json!({"kv": {"quota_bytes": 1024_u64 * 1024 * 1024 * 1024}}),
        ),
        (
            "secret name",
            json!({"secrets": {"names": ["../etc/passwd"]}}),
        ),
        (
            "secret name",
            json!({"secrets": {"names": ["a".repeat(200)]}}),
        ),
        ("secrets.names", json!({"secrets": {"names": many_names}})),
        ("http.allow", json!({"http": {"allow": many_targets}})),
        ("http.max_requests", json!({"http": {"max_requests": 0}})),
        (
            "http.max_requests",
            json!({"http": {"max_requests": 4_000_000_000_u64}}),
        ),
        (
            "http.max_response_bytes",
            json!({"http": {"max_response_bytes": 0}}),
        ),
        (
            "http.max_response_bytes",
            json!({"http": {"max_response_bytes": u64::MAX}}),
        ),
    ];
    for (field, body) in cases {
        let (status, problem) = server
            .json(Method::PUT, &path, Some(&root), Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        let detail = problem["detail"].as_str().unwrap_or("");
        assert!(detail.contains(field), "{field}: {problem}");
    }
    assert_eq!(grants(&server, &root, &digest).await, before);

    // The bounds themselves are accepted.
    let edge = json!({
        "kv": {"quota_bytes": 1024 * 1024 * 1024},
        "http": {"max_requests": 100, "max_response_bytes": 16 * 1024 * 1024},
        "secrets": {"names": (0..64).map(|index| format!("NAME_{index}")).collect::<Vec<_>>()},
    });
    let (status, body) = server
        .json(Method::PUT, &path, Some(&root), Some(edge))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn bot_plugin_digest_must_be_a_digest(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, root) = server.bootstrap().await;
    let (status, body) = upload(&server, &root, "tenant-a", "echo").await;
    assert!(status.is_success(), "{body}");
    let digest = digest(&body);
    let bots = "/api/v1/tenants/tenant-a/bots";

    let long = "f".repeat(60_000);
    for bad in ["not-a-digest", &digest.to_uppercase(), long.as_str()] {
        let bot = json!({"name": "echo", "plugin_digest": bad});
        let (status, problem) = server
            .json(Method::POST, bots, Some(&root), Some(bot))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        let detail = problem["detail"].as_str().unwrap_or("");
        assert!(detail.contains("`plugin_digest`"), "{problem}");
        assert!(
            !detail.contains(bad),
            "the detail echoes the input: {problem}"
        );
    }

    let bot = json!({"name": "echo", "plugin_digest": digest});
    let (status, body) = server
        .json(Method::POST, bots, Some(&root), Some(bot))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let patch = json!({"plugin_digest": "zz"});
    let (status, problem) = server
        .json(
            Method::PATCH,
            &format!("{bots}/echo"),
            Some(&root),
            Some(patch),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
}

async fn malformed_identifiers_are_not_found(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, root) = server.bootstrap().await;
    let long = "a".repeat(10_000);
    let paths = [
        format!("/api/v1/tenants/{long}"),
        "/api/v1/tenants/Tenant-A".to_owned(),
        "/api/v1/tenants/tenant-a%00".to_owned(),
        format!("/api/v1/tenants/tenant-a/bots/{long}"),
        "/api/v1/tenants/tenant-a/bots/..%2F..%2Fetc".to_owned(),
        "/api/v1/tenants/tenant-a/plugins/not-a-digest".to_owned(),
        "/api/v1/tenants/tenant-a/plugins/not-a-digest/grants".to_owned(),
        "/api/v1/tenants/tenant-a/users/not-a-uuid".to_owned(),
        "/api/v1/me/conversations/not-a-uuid/messages".to_owned(),
    ];
    for path in paths {
        let (status, body) = server.json(Method::GET, &path, Some(&root), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
}

async fn upload_rejects_unknown_query_parameters(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, root) = server.bootstrap().await;
    let bytes = std::fs::read(crate::support::plugin("echo")).unwrap();
    let response = server
        .client
        .post(format!(
            "{}/api/v1/tenants/tenant-a/plugins?name=echo&version=1&grant=kv",
            server.base
        ))
        .bearer_auth(&root)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let problem: Value = response.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap_or("");
    assert!(detail.contains("grant"), "{problem}");
}
