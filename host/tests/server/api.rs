//! The whole API, end to end.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::harness::{ADMIN_PASSWORD, Backend, TestServer, access, refresh_token};

both_backends!(
    full_api_round_trip,
    every_response_has_request_id,
    errors_are_problem_details,
    oversized_body_is_413,
    endless_chunked_body_is_413,
    login_returns_oauth_token_shape,
    admin_actions_end_sessions,
);

async fn full_api_round_trip(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant_a, root) = server.bootstrap().await;

    // Tenants: create, list, read, rename.
    let (status, created) = server
        .json(
            Method::POST,
            "/api/v1/tenants",
            Some(&root),
            Some(json!({"name": "tenant-b"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let tenant_b = created["id"].as_str().unwrap().to_owned();
    let (status, list) = server
        .json(Method::GET, "/api/v1/tenants", Some(&root), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (status, read) = server
        .json(
            Method::GET,
            &format!("/api/v1/tenants/{tenant_b}"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["name"], "tenant-b");
    let (status, renamed) = server
        .json(
            Method::PATCH,
            &format!("/api/v1/tenants/{tenant_b}"),
            Some(&root),
            Some(json!({"name": "tenant-bee"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(renamed["name"], "tenant-bee");
    let (status, _) = server
        .json(
            Method::POST,
            "/api/v1/tenants",
            Some(&root),
            Some(json!({"name": "tenant-bee"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // A tenant admin for tenant-bee, created by the platform admin.
    let users_b = format!("/api/v1/tenants/{tenant_b}/users");
    let body = json!({"username": "boss", "password": "boss password 123", "role": "tenant_admin",
                      "email": "boss@tenant-b.test"});
    let (status, boss) = server
        .json(Method::POST, &users_b, Some(&root), Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{boss}");
    assert_eq!(boss["email"], "boss@tenant-b.test");
    let boss_token = access(
        &server
            .login_ok("tenant-bee", "boss", "boss password 123")
            .await,
    );

    // The tenant admin manages users of their tenant.
    let body = json!({"username": "Carol", "password": "carol password 123"});
    let (status, carol) = server
        .json(Method::POST, &users_b, Some(&boss_token), Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{carol}");
    assert_eq!(carol["username"], "carol");
    assert_eq!(carol["role"], "user");
    let carol_path = format!("{users_b}/{}", carol["id"].as_str().unwrap());
    let (status, list) = server
        .json(Method::GET, &users_b, Some(&boss_token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (status, read) = server
        .json(Method::GET, &carol_path, Some(&boss_token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["username"], "carol");
    let (status, updated) = server
        .json(
            Method::PATCH,
            &carol_path,
            Some(&boss_token),
            Some(json!({"role": "plugin_author", "email": "c@b.test"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["role"], "plugin_author");
    assert_eq!(updated["email"], "c@b.test");

    // Tenant admins cannot grant platform_admin or create tenants.
    let (status, _) = server
        .json(
            Method::PATCH,
            &carol_path,
            Some(&boss_token),
            Some(json!({"role": "platform_admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .json(
            Method::POST,
            "/api/v1/tenants",
            Some(&boss_token),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A plain user sees only /me.
    let carol_tokens = server
        .login_ok("tenant-bee", "carol", "carol password 123")
        .await;
    let carol_token = access(&carol_tokens);
    let (status, me) = server
        .json(Method::GET, "/api/v1/me", Some(&carol_token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["username"], "carol");
    assert_eq!(me["email"], "c@b.test");
    let (status, _) = server
        .json(Method::GET, &users_b, Some(&carol_token), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Password change: weak rejected, wrong current rejected, then works
    // and ends the session that made it.
    let weak = json!({"current_password": "carol password 123", "new_password": "password1234"});
    let (status, problem) = server
        .json(
            Method::POST,
            "/api/v1/me/password",
            Some(&carol_token),
            Some(weak),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let wrong =
        json!({"current_password": "not it at all 1", "new_password": "carol new password 9"});
    let (status, _) = server
        .json(
            Method::POST,
            "/api/v1/me/password",
            Some(&carol_token),
            Some(wrong),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let good =
        json!({"current_password": "carol password 123", "new_password": "carol new password 9"});
    let (status, _) = server
        .json(
            Method::POST,
            "/api/v1/me/password",
            Some(&carol_token),
            Some(good),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some(&carol_token), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.refresh(&refresh_token(&carol_tokens)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        server
            .login("tenant-bee", "carol", "carol password 123")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    server
        .login_ok("tenant-bee", "carol", "carol new password 9")
        .await;

    // Delete the user, then the tenant.
    let (status, _) = server
        .json(Method::DELETE, &carol_path, Some(&boss_token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .json(Method::GET, &carol_path, Some(&boss_token), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .json(
            Method::DELETE,
            &format!("/api/v1/tenants/{tenant_b}"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some(&boss_token), None)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "tenant deletion ends its sessions"
    );

    // JWKS publishes the key that signed our token.
    let (status, jwks) = server
        .json(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let header = jsonwebtoken::decode_header(&root).unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kid"].as_str(), header.kid.as_deref());
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["alg"], "RS256");
    assert!(
        key.get("d").is_none(),
        "private exponent must not be published"
    );

    // Logout ends the session and its refresh family.
    let tokens = server.login_ok("tenant-a", "root", ADMIN_PASSWORD).await;
    let token = access(&tokens);
    let (status, _) = server
        .json(Method::POST, "/api/v1/auth/logout", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.refresh(&refresh_token(&tokens)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let _ = tenant_a;
}

async fn every_response_has_request_id(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, root) = server.bootstrap().await;
    let paths = [
        (Method::GET, "/api/v1/me", Some(root.as_str())),
        (Method::GET, "/api/v1/me", None),
        (Method::GET, "/.well-known/jwks.json", None),
        (Method::GET, "/no/such/route", None),
        (Method::POST, "/api/v1/auth/login", None),
    ];
    for (method, path, token) in paths {
        let response = server.call(method.clone(), path, token, None).await;
        let id = response.headers().get("x-request-id");
        assert!(
            id.is_some_and(|id| !id.is_empty()),
            "{method} {path} has no x-request-id"
        );
    }
}

async fn errors_are_problem_details(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, root) = server.bootstrap().await;
    let cases = [
        (
            Method::GET,
            "/no/such/route",
            None,
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/api/v1/me",
            None,
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::POST,
            "/api/v1/tenants",
            Some(root.as_str()),
            Some(json!({"nom": 1})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/v1/tenants",
            Some(root.as_str()),
            Some(json!({"name": "Bad Name!"})),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, token, body, expected) in cases {
        let response = server.call(method.clone(), path, token, body).await;
        assert_eq!(response.status(), expected, "{method} {path}");
        let content_type = response
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(content_type, "application/problem+json", "{method} {path}");
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["status"], expected.as_u16());
        assert!(problem["title"].is_string());
    }
}

async fn oversized_body_is_413(backend: Backend) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let server = TestServer::start(backend).await;
    let address = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    // A declared 50 MiB body is rejected from the headers alone; the
    // client never has to send it.
    let head = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{{",
        50 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "{}",
        text.lines().next().unwrap_or("")
    );
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{text}"
    );
}

async fn login_returns_oauth_token_shape(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.bootstrap().await;
    let response = server.login("tenant-a", "root", ADMIN_PASSWORD).await;
    assert_eq!(response.headers().get("cache-control").unwrap(), "no-store");
    let tokens: serde_json::Value = response.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    let expires_in = tokens["expires_in"].as_i64().unwrap();
    assert!(expires_in > 0);
    assert!(expires_in <= 900);
    let header = jsonwebtoken::decode_header(access(&tokens)).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert!(header.kid.is_some());
    let claims = jwt_claims(&access(&tokens));
    assert_eq!(claims["iss"], "botserver");
    assert_eq!(claims["aud"], "botserver-api");
    assert!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap() <= 900);
    let session = claims["sid"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(session).unwrap().get_version_num(), 4);
    // 256 random bits, base64url without padding.
    assert_eq!(refresh_token(&tokens).len(), 43);
}

/// Decodes the claims of a JWT without checking it.
pub fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn admin_actions_end_sessions(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, root) = server.bootstrap().await;
    let user = server
        .create_user(
            &tenant,
            "dave",
            "dave password 123",
            botserver::auth::Role::User,
        )
        .await;
    let user_path = format!("/api/v1/tenants/{}/users/{user}", tenant.id);

    // Terminate all sessions: both devices lose access and refresh.
    let device_a = server
        .login_ok("tenant-a", "dave", "dave password 123")
        .await;
    let device_b = server
        .login_ok("tenant-a", "dave", "dave password 123")
        .await;
    let (status, _) = server
        .json(
            Method::DELETE,
            &format!("{user_path}/sessions"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for device in [&device_a, &device_b] {
        let (status, _) = server
            .json(Method::GET, "/api/v1/me", Some(&access(device)), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = server.refresh(&refresh_token(device)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    // Disabling ends sessions and blocks login.
    let device = server
        .login_ok("tenant-a", "dave", "dave password 123")
        .await;
    let (status, _) = server
        .json(
            Method::PATCH,
            &user_path,
            Some(&root),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some(&access(&device)), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        server
            .login("tenant-a", "dave", "dave password 123")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // Deleting ends sessions.
    let (status, _) = server
        .json(
            Method::PATCH,
            &user_path,
            Some(&root),
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let device = server
        .login_ok("tenant-a", "dave", "dave password 123")
        .await;
    let (status, _) = server
        .json(Method::DELETE, &user_path, Some(&root), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some(&access(&device)), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.refresh(&refresh_token(&device)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn endless_chunked_body_is_413(backend: Backend) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let server = TestServer::start(backend).await;
    let address = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Up to 16 MiB without a length; the server must respond long before.
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
    for _ in 0..256 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "{}",
        text.lines().next().unwrap_or("")
    );
}
