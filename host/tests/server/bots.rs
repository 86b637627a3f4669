//! Plugins, grants, bots, secrets and the invocation service, with the
//! real plugins from `target/plugins`.

use std::sync::Arc;

use botserver::auth::Role;
use botserver::bots::BotError;
use botserver::runtime::{Event, InvocationError, Response, UserMessage};
use botserver::storage::{Tenant, TenantId};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Backend, Settings, TestServer, access};
use crate::support::plugin;

both_backends!(
    bad_uploads_are_rejected_and_store_nothing,
    uploads_are_idempotent_and_per_tenant,
    grants_are_replaced_shown_revoked_and_kept_per_digest,
    counter_counts_per_user_with_sealed_values,
    revoking_kv_reaches_the_next_event,
    traps_trip_the_breaker_while_another_tenant_answers,
    secrets_are_sealed_and_write_only,
);

const ADMIN_B_PASSWORD: &str = "admin b password 1";

struct Setup {
    server: TestServer,
    root: String,
    tenant_a: Tenant,
    tenant_b: Tenant,
    admin_b: String,
}

async fn setup(backend: Backend) -> Setup {
    let server = TestServer::start(backend).await;
    let (tenant_a, root) = server.bootstrap().await;
    let tenant_b = server.create_tenant("tenant-b").await;
    server
        .create_user(&tenant_b, "admin-b", ADMIN_B_PASSWORD, Role::TenantAdmin)
        .await;
    let admin_b = access(
        &server
            .login_ok("tenant-b", "admin-b", ADMIN_B_PASSWORD)
            .await,
    );
    Setup {
        server,
        root,
        tenant_a,
        tenant_b,
        admin_b,
    }
}

async fn upload_bytes(
    server: &TestServer,
    token: &str,
    tenant: &str,
    query: &str,
    bytes: Vec<u8>,
) -> (StatusCode, Value) {
    let response = server
        .client
        .post(format!(
            "{}/api/v1/tenants/{tenant}/plugins{query}",
            server.base
        ))
        .bearer_auth(token)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Sends only the head of an upload that declares `length` body bytes. The
/// server must answer from `Content-Length` alone; a client that went on
/// writing a body the server refuses to read could see the connection
/// reset before it reads the answer.
async fn upload_declared_size(
    server: &TestServer,
    token: &str,
    query: &str,
    length: usize,
) -> (StatusCode, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let address = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /api/v1/tenants/tenant-a/plugins{query} HTTP/1.1\r\nhost: {address}\r\n\
         authorization: Bearer {token}\r\ncontent-length: {length}\r\n\
         connection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // A server that waited for the body would never answer.
    let read = stream.read_to_end(&mut response);
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("no answer to a head declaring an oversized body")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

pub(crate) async fn upload(
    server: &TestServer,
    token: &str,
    tenant: &str,
    name: &str,
) -> (StatusCode, Value) {
    let bytes = std::fs::read(plugin(name)).unwrap();
    upload_bytes(
        server,
        token,
        tenant,
        &format!("?name={name}&version=1.0.0"),
        bytes,
    )
    .await
}

pub(crate) fn digest(body: &Value) -> String {
    body["digest"].as_str().unwrap().to_owned()
}

async fn table_rows(server: &TestServer) -> Vec<(String, String, i64)> {
    sqlx::query_as("SELECT tenant_id, digest, size FROM plugins ORDER BY tenant_id, digest")
        .fetch_all(server.state.db.pool())
        .await
        .unwrap()
}

pub(crate) async fn grant(
    server: &TestServer,
    token: &str,
    tenant: &str,
    digest: &str,
    grants: Value,
) {
    let path = format!("/api/v1/tenants/{tenant}/plugins/{digest}/grants");
    let (status, body) = server
        .json(Method::PUT, &path, Some(token), Some(grants))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

pub(crate) async fn create_bot(
    server: &TestServer,
    token: &str,
    tenant: &str,
    bot: Value,
) -> Value {
    let path = format!("/api/v1/tenants/{tenant}/bots");
    let (status, body) = server
        .json(Method::POST, &path, Some(token), Some(bot))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

fn message(text: &str) -> Event {
    Event::UserMessage(UserMessage {
        text: text.to_owned(),
        attributes: Vec::new(),
    })
}

fn text(response: &Response) -> String {
    response
        .replies
        .iter()
        .map(|reply| reply.text.as_str())
        .collect()
}

async fn say(
    server: &TestServer,
    tenant: TenantId,
    bot: &str,
    user: &str,
) -> Result<String, BotError> {
    let response = server
        .state
        .bots
        .handle_event(tenant, bot, user, "conversation-1", message("hi"))
        .await?;
    Ok(text(&response))
}

/// Upload cap of the bad-upload test: above every test plugin, and small
/// enough that an oversized body fits the loopback socket buffers, so the
/// client reads the 413 instead of failing on a closed connection.
const SMALL_UPLOAD_CAP: usize = 256 * 1024;

async fn bad_uploads_are_rejected_and_store_nothing(backend: Backend) {
    let settings = Settings {
        env: vec![("BOTSERVER_MAX_UPLOAD_SIZE", SMALL_UPLOAD_CAP.to_string())],
    };
    let server = TestServer::start_with(backend, settings).await;
    let (_, root) = server.bootstrap().await;
    let query = "?name=bad&version=1";
    let empty_component = b"\0asm\x0d\0\x01\0".to_vec();
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "garbage",
            b"hello, not wasm".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid component",
        ),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "core WebAssembly module",
        ),
        (
            "unknown import",
            std::fs::read(plugin("unknown-import")).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown import",
        ),
        (
            "no handler",
            empty_component,
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing export",
        ),
        ("empty", Vec::new(), StatusCode::BAD_REQUEST, "empty body"),
    ];
    for (case, bytes, expected, detail) in cases {
        let (status, body) = upload_bytes(&server, &root, "tenant-a", query, bytes).await;
        assert_eq!(status, expected, "{case}: {body}");
        let found = body["detail"].as_str().unwrap_or_default();
        assert!(found.contains(detail), "{case}: {found}");
        assert!(table_rows(&server).await.is_empty(), "{case} stored a row");
    }
    let (status, body) = upload_declared_size(&server, &root, query, SMALL_UPLOAD_CAP + 1).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "oversized: {body}");
    let found = body["detail"].as_str().unwrap_or_default();
    assert!(found.contains("too large"), "oversized: {found}");
    assert!(
        table_rows(&server).await.is_empty(),
        "oversized stored a row"
    );

    let echo = std::fs::read(plugin("echo")).unwrap();
    let (status, _) = upload_bytes(&server, &root, "tenant-a", "?version=1", echo).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(table_rows(&server).await.is_empty());
}

async fn uploads_are_idempotent_and_per_tenant(backend: Backend) {
    let Setup {
        server,
        root,
        admin_b,
        ..
    } = setup(backend).await;
    let bytes = std::fs::read(plugin("echo")).unwrap();
    let (status, first) = upload(&server, &root, "tenant-a", "echo").await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(
        digest(&first),
        botserver::runtime::PluginDigest::of(&bytes).as_str()
    );
    assert_eq!(first["size"], json!(bytes.len()));
    assert!(first["wit_version"].as_str().unwrap().starts_with("0.1"));
    assert_eq!(first["requested"], json!([]));
    let (status, again) = upload(&server, &root, "tenant-a", "echo").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(digest(&again), digest(&first));

    let (status, counter) = upload(&server, &root, "tenant-a", "counter").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(counter["requested"], json!(["kv"]));
    let counter = digest(&counter);
    let (status, list) = server
        .json(
            Method::GET,
            "/api/v1/tenants/tenant-a/plugins",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Tenant B cannot see A's upload, nor grant it, even by digest.
    for path in [
        format!("/api/v1/tenants/tenant-a/plugins/{counter}"),
        format!("/api/v1/tenants/tenant-b/plugins/{counter}"),
        format!("/api/v1/tenants/tenant-b/plugins/{counter}/grants"),
        "/api/v1/tenants/tenant-a/plugins".to_owned(),
        "/api/v1/tenants/tenant-a/bots".to_owned(),
    ] {
        let (status, _) = server.json(Method::GET, &path, Some(&admin_b), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let grants = format!("/api/v1/tenants/tenant-b/plugins/{counter}/grants");
    let (status, _) = server
        .json(
            Method::PUT,
            &grants,
            Some(&admin_b),
            Some(json!({"kv": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = upload(&server, &admin_b, "tenant-a", "echo").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let bot = json!({"name": "echo", "plugin_digest": counter});
    let (status, _) = server
        .json(
            Method::POST,
            "/api/v1/tenants/tenant-b/bots",
            Some(&admin_b),
            Some(bot),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // The same bytes uploaded by B are B's own plugin.
    let (status, own) = upload(&server, &admin_b, "tenant-b", "echo").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(digest(&own), digest(&first));
}

async fn grants_are_replaced_shown_revoked_and_kept_per_digest(backend: Backend) {
    let Setup { server, root, .. } = setup(backend).await;
    let (_, counter) = upload(&server, &root, "tenant-a", "counter").await;
    let counter = digest(&counter);
    let grants = format!("/api/v1/tenants/tenant-a/plugins/{counter}/grants");
    let (status, shown) = server.json(Method::GET, &grants, Some(&root), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["requested"], json!(["kv"]));
    assert_eq!(shown["grants"], json!({}));
    assert_eq!(shown["missing"], json!(["kv"]));

    let bot = json!({"name": "counter", "plugin_digest": counter, "enabled": true});
    let (status, body) = server
        .json(
            Method::POST,
            "/api/v1/tenants/tenant-a/bots",
            Some(&root),
            Some(bot),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["detail"].as_str().unwrap().contains("`kv`"), "{body}");
    create_bot(
        &server,
        &root,
        "tenant-a",
        json!({"name": "counter", "plugin_digest": counter}),
    )
    .await;
    let path = "/api/v1/tenants/tenant-a/bots/counter";
    let enable = json!({"enabled": true});
    let (status, _) = server
        .json(Method::PATCH, path, Some(&root), Some(enable.clone()))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    for bad in [
        json!({"kv": {}, "files": {}}),
        json!({"kv": {"quota_bytes": 1, "extra": 2}}),
        json!({"http": {"allow": ["ftp://example.com:21"]}}),
        json!({"http": {"allow": ["not a url"]}}),
    ] {
        let (status, body) = server
            .json(Method::PUT, &grants, Some(&root), Some(bad.clone()))
            .await;
        assert!(status.is_client_error(), "{bad}: {status} {body}");
    }
    let full = json!({
        "kv": {"quota_bytes": 4096},
        "http": {"allow": ["https://api.example.com:443"]},
        "config": {}
    });
    grant(&server, &root, "tenant-a", &counter, full).await;
    let (_, shown) = server.json(Method::GET, &grants, Some(&root), None).await;
    assert_eq!(shown["grants"]["kv"]["quota_bytes"], json!(4096));
    assert_eq!(shown["missing"], json!([]));
    let (status, body) = server
        .json(Method::PATCH, path, Some(&root), Some(enable))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["enabled"], json!(true));

    let (status, shown) = server
        .json(Method::DELETE, &format!("{grants}/http"), Some(&root), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(shown["grants"].get("http").is_none());
    assert!(shown["grants"].get("kv").is_some());
    let (status, _) = server
        .json(
            Method::DELETE,
            &format!("{grants}/files"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Another version of the plugin starts with nothing granted.
    let (_, other) = upload(&server, &root, "tenant-a", "all-capabilities").await;
    assert_ne!(digest(&other), counter);
    assert_eq!(other["grants"], json!({}));
    assert!(!other["missing"].as_array().unwrap().is_empty());
    let patch = json!({"plugin_digest": digest(&other)});
    let (status, _) = server
        .json(Method::PATCH, path, Some(&root), Some(patch))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, _) = server.json(Method::DELETE, path, Some(&root), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server.json(Method::GET, path, Some(&root), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn counter_bot(server: &TestServer, token: &str) -> String {
    let (_, counter) = upload(server, token, "tenant-a", "counter").await;
    let counter = digest(&counter);
    grant(
        server,
        token,
        "tenant-a",
        &counter,
        json!({"kv": {"quota_bytes": 4096}}),
    )
    .await;
    let bot = json!({"name": "counter", "plugin_digest": counter, "enabled": true});
    create_bot(server, token, "tenant-a", bot).await;
    counter
}

async fn counter_counts_per_user_with_sealed_values(backend: Backend) {
    let Setup {
        server,
        root,
        tenant_a,
        ..
    } = setup(backend).await;
    counter_bot(&server, &root).await;
    for expected in ["1", "2", "3"] {
        assert_eq!(
            say(&server, tenant_a.id, "counter", "alice").await.unwrap(),
            expected
        );
    }
    assert_eq!(
        say(&server, tenant_a.id, "counter", "bob").await.unwrap(),
        "1"
    );

    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT user_id, value_sealed FROM kv_entries ORDER BY user_id")
            .fetch_all(server.state.db.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 2);
    for (user, sealed) in &rows {
        assert!(!user.contains("alice"), "{user}");
        assert!(!user.contains("bob"), "{user}");
        assert!(sealed.len() > 16, "sealed value of {} bytes", sealed.len());
        assert_ne!(sealed.as_slice(), b"3");
        assert_ne!(sealed.as_slice(), b"1");
    }

    // A value moved into another user's row no longer opens.
    let (alice, bob) = (&rows[0], &rows[1]);
    sqlx::query("UPDATE kv_entries SET value_sealed = $1 WHERE user_id = $2")
        .bind(&alice.1)
        .bind(&bob.0)
        .execute(server.state.db.pool())
        .await
        .unwrap();
    let moved = say(&server, tenant_a.id, "counter", "bob").await;
    let moved2 = say(&server, tenant_a.id, "counter", "alice").await;
    let failed = [moved, moved2]
        .into_iter()
        .filter(|result| {
            matches!(
                result,
                Err(BotError::Invocation(InvocationError::Handler(_)))
            )
        })
        .count();
    assert_eq!(failed, 1, "exactly the moved value fails to open");

    let (status, body) = server
        .json(
            Method::GET,
            "/api/v1/tenants/tenant-a/bots/counter",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"]["invocations"], json!(6), "{body}");
    assert_eq!(body["status"]["breaker"]["state"], json!("closed"));
}

async fn revoking_kv_reaches_the_next_event(backend: Backend) {
    let Setup {
        server,
        root,
        tenant_a,
        ..
    } = setup(backend).await;
    let counter = counter_bot(&server, &root).await;
    assert_eq!(
        say(&server, tenant_a.id, "counter", "alice").await.unwrap(),
        "1"
    );
    let path = format!("/api/v1/tenants/tenant-a/plugins/{counter}/grants/kv");
    let (status, _) = server.json(Method::DELETE, &path, Some(&root), None).await;
    assert_eq!(status, StatusCode::OK);
    match say(&server, tenant_a.id, "counter", "alice").await {
        Err(BotError::Invocation(InvocationError::Handler(detail))) => {
            assert!(detail.contains("denied"), "{detail}");
        }
        other => panic!("expected a kv denial, got {other:?}"),
    }
    grant(&server, &root, "tenant-a", &counter, json!({"kv": {}})).await;
    assert_eq!(
        say(&server, tenant_a.id, "counter", "alice").await.unwrap(),
        "2"
    );
}

async fn traps_trip_the_breaker_while_another_tenant_answers(backend: Backend) {
    let Setup {
        server,
        root,
        tenant_a,
        tenant_b,
        admin_b,
    } = setup(backend).await;
    let (_, spin) = upload(&server, &root, "tenant-a", "spin-loop").await;
    let limits = json!({"deadline_ms": 200, "fuel": 50_000_000});
    let bot =
        json!({"name": "spin", "plugin_digest": digest(&spin), "enabled": true, "limits": limits});
    create_bot(&server, &root, "tenant-a", bot).await;
    let (_, echo) = upload(&server, &admin_b, "tenant-b", "echo").await;
    let bot = json!({"name": "echo", "plugin_digest": digest(&echo), "enabled": true});
    create_bot(&server, &admin_b, "tenant-b", bot).await;

    let server = Arc::new(server);
    let hostile = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let mut results = Vec::new();
            for _ in 0..6 {
                results.push(say(&server, tenant_a.id, "spin", "mallory").await);
            }
            results
        })
    };
    for round in 0..20 {
        let reply = say(&server, tenant_b.id, "echo", "bob").await;
        assert!(
            reply.is_ok_and(|reply| !reply.is_empty()),
            "echo round {round}"
        );
    }
    let results = hostile.await.unwrap();
    assert!(
        results[..5]
            .iter()
            .all(|result| matches!(result, Err(BotError::Invocation(error)) if error.is_trap()))
    );
    assert!(
        matches!(results[5], Err(BotError::Disabled)),
        "{:?}",
        results[5]
    );

    let path = "/api/v1/tenants/tenant-a/bots/spin";
    let (_, body) = server.json(Method::GET, path, Some(&root), None).await;
    assert_eq!(body["enabled"], json!(false));
    assert_eq!(body["status"]["breaker"]["state"], json!("open"), "{body}");
    assert!(body["status"]["breaker"]["tripped_at"].is_i64());
    let traps: i64 = body["status"]["traps"]
        .as_object()
        .unwrap()
        .values()
        .map(|count| count.as_i64().unwrap())
        .sum();
    assert_eq!(traps, 5, "{body}");

    let enable = json!({"enabled": true});
    let (status, body) = server
        .json(Method::PATCH, path, Some(&root), Some(enable))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"]["breaker"]["state"], json!("closed"));
}

async fn secrets_are_sealed_and_write_only(backend: Backend) {
    use botserver::capabilities::secrets::SecretStore as _;

    let Setup {
        server,
        root,
        tenant_a,
        admin_b,
        ..
    } = setup(backend).await;
    let planted = "planted-secret-value-7c1e";
    let path = "/api/v1/tenants/tenant-a/secrets/API_KEY";
    let (status, _) = server
        .json(
            Method::PUT,
            path,
            Some(&root),
            Some(json!({"value": planted})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server.json(Method::GET, path, Some(&root), None).await;
    assert!(status.is_client_error());
    let (status, _) = server
        .json(
            Method::PUT,
            path,
            Some(&admin_b),
            Some(json!({"value": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .json(
            Method::PUT,
            "/api/v1/tenants/tenant-a/secrets/bad%20name",
            Some(&root),
            Some(json!({"value": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let rows: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT value_sealed FROM secrets")
        .fetch_all(server.state.db.pool())
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let needle = planted.as_bytes();
    assert!(
        !rows[0]
            .0
            .windows(needle.len())
            .any(|window| window == needle)
    );

    let store = botserver::storage::secrets::DbSecretStore::new(
        server.state.db.clone(),
        Arc::clone(&server.state.vault),
    );
    let value = store
        .get(&tenant_a.id.to_string(), "API_KEY")
        .await
        .unwrap();
    assert_eq!(value.unwrap().expose(), planted);
    assert!(!crate::harness::captured_logs().contains(planted));
}
