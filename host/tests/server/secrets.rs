//! Password hashes at rest, sealed columns, and key rotation.

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Row as _;

use crate::both_backends;
use crate::harness::{Backend, TestServer, access, captured_logs, refresh_token};
use botserver::crypto::{ColumnRef, Vault};

both_backends!(
    stored_hash_has_pinned_params,
    tampered_hash_params_fail_closed,
    stronger_hash_is_rehashed_at_login,
    canary_never_stored_or_logged_in_plaintext,
    moved_ciphertext_fails_to_open,
    rotation_keeps_values_readable,
);

async fn stored_hash_has_pinned_params(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, root) = server.bootstrap().await;
    let body = json!({"username": "frank", "password": "frank password 123"});
    let (status, frank) = server
        .json(
            Method::POST,
            &format!("/api/v1/tenants/{}/users", tenant.id),
            Some(&root),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let row = sqlx::query("SELECT password_hash FROM users WHERE id = $1")
        .bind(frank["id"].as_str().unwrap())
        .fetch_one(server.state.db.pool())
        .await
        .unwrap();
    let hash: String = row.get("password_hash");
    let parts: Vec<&str> = hash.split('$').collect();
    assert_eq!(parts.len(), 6, "{hash}");
    assert_eq!(parts[1], "argon2id");
    assert_eq!(parts[2], "v=19");
    assert_eq!(parts[3], "m=19456,t=2,p=1");
    // 32 bytes of salt are 43 characters of unpadded base64.
    assert_eq!(parts[4].len(), 43);
}

async fn tampered_hash_params_fail_closed(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, _) = server.bootstrap().await;
    let id = server
        .create_user(
            &tenant,
            "gina",
            "gina password 123",
            botserver::auth::Role::User,
        )
        .await;
    let set_hash = |hash: String| {
        let server = &server;
        async move {
            sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
                .bind(hash)
                .bind(id.to_string())
                .execute(server.state.db.pool())
                .await
                .unwrap();
        }
    };
    // A weak hash of the right password is refused.
    let weak = {
        use argon2::password_hash::{PasswordHasher as _, SaltString};
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        let salt = SaltString::encode_b64(&[9u8; 32]).unwrap();
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(b"gina password 123", &salt)
            .unwrap()
            .to_string()
    };
    set_hash(weak).await;
    assert_eq!(
        server
            .login("tenant-a", "gina", "gina password 123")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // Huge parameters are refused before any hashing.
    set_hash(
        "$argon2id$v=19$m=4194304,t=100,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaA"
            .to_owned(),
    )
    .await;
    let before = server.state.auth.hasher().verifications();
    assert_eq!(
        server
            .login("tenant-a", "gina", "gina password 123")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(server.state.auth.hasher().verifications(), before);

    for other in [
        "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
        "garbage",
        "",
    ] {
        set_hash(other.to_owned()).await;
        assert_eq!(
            server
                .login("tenant-a", "gina", "gina password 123")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

async fn canary_never_stored_or_logged_in_plaintext(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, root) = server.bootstrap().await;
    let canary = format!("canary-{}@secret.test", uuid::Uuid::new_v4().simple());
    let password = format!("canary password {}", uuid::Uuid::new_v4().simple());
    let body = json!({"username": "hank", "password": password, "email": canary});
    let (status, hank) = server
        .json(
            Method::POST,
            &format!("/api/v1/tenants/{}/users", tenant.id),
            Some(&root),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        hank["email"],
        canary.as_str(),
        "the API returns the opened value"
    );
    let tokens = server.login_ok("tenant-a", "hank", &password).await;
    let (status, me) = server
        .json(Method::GET, "/api/v1/me", Some(&access(&tokens)), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["email"], canary.as_str());
    let (status, refreshed) = server.refresh(&refresh_token(&tokens)).await;
    assert_eq!(status, StatusCode::OK);

    // At rest: every file of the data directory, or a full dump.
    match backend {
        Backend::Sqlite => {
            server.state.db.close().await;
            for entry in walk(server.data_dir.path()) {
                let bytes = std::fs::read(&entry).unwrap();
                assert!(
                    !contains(&bytes, canary.as_bytes()),
                    "canary in {}",
                    entry.display()
                );
                assert!(
                    !contains(&bytes, password.as_bytes()),
                    "password in {}",
                    entry.display()
                );
            }
        }
        Backend::Postgres => {
            let output = std::process::Command::new("pg_dump")
                .arg(server.database_url.as_deref().unwrap())
                .output()
                .expect("run pg_dump");
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                contains(&output.stdout, b"CREATE TABLE"),
                "dump is not empty"
            );
            assert!(
                !contains(&output.stdout, canary.as_bytes()),
                "canary in pg_dump"
            );
            assert!(
                !contains(&output.stdout, password.as_bytes()),
                "password in pg_dump"
            );
        }
    }

    // In the logs: no canary, password or token of any kind.
    let logs = captured_logs();
    assert!(logs.contains("login succeeded"), "logs were captured");
    for secret in [
        canary.as_str(),
        password.as_str(),
        tokens["access_token"].as_str().unwrap(),
        tokens["refresh_token"].as_str().unwrap(),
        refreshed["access_token"].as_str().unwrap(),
        refreshed["refresh_token"].as_str().unwrap(),
        crate::harness::ADMIN_PASSWORD,
    ] {
        assert!(!logs.contains(secret), "a secret appears in the logs");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

async fn sealed_email(server: &TestServer, user: &str) -> Vec<u8> {
    let row = sqlx::query("SELECT email_sealed FROM users WHERE id = $1")
        .bind(user)
        .fetch_one(server.state.db.pool())
        .await
        .unwrap();
    row.get("email_sealed")
}

async fn set_sealed_email(server: &TestServer, user: &str, sealed: Vec<u8>) {
    sqlx::query("UPDATE users SET email_sealed = $1 WHERE id = $2")
        .bind(sealed)
        .bind(user)
        .execute(server.state.db.pool())
        .await
        .unwrap();
}

async fn moved_ciphertext_fails_to_open(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant_a, root) = server.bootstrap().await;
    let tenant_b = server.create_tenant("tenant-b").await;
    let mut ids = Vec::new();
    for (tenant, name) in [
        (&tenant_a, "ivan"),
        (&tenant_a, "judy"),
        (&tenant_b, "kate"),
    ] {
        let body = json!({"username": name, "password": format!("{name} password 123"),
                          "email": format!("{name}@secret.test")});
        let (status, user) = server
            .json(
                Method::POST,
                &format!("/api/v1/tenants/{}/users", tenant.id),
                Some(&root),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        ids.push((tenant.id, user["id"].as_str().unwrap().to_owned()));
    }
    let ivan_sealed = sealed_email(&server, &ids[0].1).await;

    // Into another row of the same tenant, and into another tenant's row.
    for (tenant, target) in [&ids[1], &ids[2]] {
        set_sealed_email(&server, target, ivan_sealed.clone()).await;
        let path = format!("/api/v1/tenants/{tenant}/users/{target}");
        let response = server.call(Method::GET, &path, Some(&root), None).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("ivan@secret.test"),
            "no plaintext in the error"
        );
        assert!(!body.contains("failed to open"), "5xx bodies stay generic");
    }
    let logs = captured_logs();
    let failure = logs
        .lines()
        .find(|line| line.contains("sealed value failed to open"));
    assert!(failure.is_some(), "the failure is logged");
    assert!(
        failure.is_some_and(|line| line.contains("request.id")),
        "the failure log carries the request id"
    );

    // Into another column of the same row: opening as another column fails.
    let ivan: uuid::Uuid = ids[0].1.parse().unwrap();
    let row = ivan.to_string();
    let other_column = ColumnRef {
        tenant: ids[0].0,
        table: "users",
        row: &row,
        column: "display_name",
    };
    let ivan_id = botserver::storage::UserId(ivan);
    assert!(
        server
            .state
            .vault
            .open_for_user(&other_column, ivan_id, &ivan_sealed)
            .await
            .is_err()
    );

    // One flipped bit fails as well.
    let mut flipped = ivan_sealed.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let own_column = ColumnRef {
        column: "email",
        ..other_column
    };
    assert!(
        server
            .state
            .vault
            .open_for_user(&own_column, ivan_id, &flipped)
            .await
            .is_err()
    );
    assert_eq!(
        server
            .state
            .vault
            .open_for_user(&own_column, ivan_id, &ivan_sealed)
            .await
            .unwrap()
            .as_slice(),
        b"ivan@secret.test"
    );
}

async fn rotation_keeps_values_readable(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, root) = server.bootstrap().await;
    let users_path = format!("/api/v1/tenants/{}/users", tenant.id);
    let body =
        json!({"username": "leo", "password": "leo password 1234", "email": "leo@secret.test"});
    let (status, leo) = server
        .json(Method::POST, &users_path, Some(&root), Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let leo_id = leo["id"].as_str().unwrap().to_owned();
    let before = sealed_email(&server, &leo_id).await;

    // A second vault plays `botserver keys rotate` in another process
    // while this server keeps running.
    let master = botserver::crypto::keyfile::MasterKeys::load(&server.state.config).unwrap();
    let rotator = Vault::new(server.state.db.clone(), master.database, Vec::new());
    let report = rotator.rotate().await.unwrap();
    assert_eq!(report.new_versions, 1);

    // A value sealed with the new version by the other process opens here.
    let row = leo_id.clone();
    let column = ColumnRef {
        tenant: tenant.id,
        table: "users",
        row: &row,
        column: "email",
    };
    // The e-mail is sealed with leo's own key, which stays wrapped by the
    // first tenant key; tenant-sealed values switch to the new version.
    let leo = botserver::storage::UserId(leo_id.parse().unwrap());
    let tenant_sealed = rotator.seal(&column, b"any").await.unwrap();
    assert_eq!(
        u32::from_be_bytes(tenant_sealed[1..5].try_into().unwrap()),
        2
    );
    let resealed = rotator
        .seal_for_user(&column, leo, b"leo@rotated.test")
        .await
        .unwrap();
    set_sealed_email(&server, &leo_id, resealed).await;
    let (status, view) = server
        .json(
            Method::GET,
            &format!("{users_path}/{leo_id}"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["email"], "leo@rotated.test");

    // Old values stay readable.
    set_sealed_email(&server, &leo_id, before).await;
    let (status, view) = server
        .json(
            Method::GET,
            &format!("{users_path}/{leo_id}"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["email"], "leo@secret.test");

    // A rotation under a new master key rewraps every data key; the old
    // master is only needed during the rotation.
    let new_master = botserver::crypto::KeyBytes::generate().unwrap();
    let old_master = botserver::crypto::keyfile::MasterKeys::load(&server.state.config)
        .unwrap()
        .database;
    let rewrapper = Vault::new(
        server.state.db.clone(),
        new_master.clone(),
        vec![old_master],
    );
    let report = rewrapper.rotate().await.unwrap();
    assert_eq!(report.rewrapped, 2);
    let fresh = Vault::new(server.state.db.clone(), new_master, Vec::new());
    assert_eq!(
        fresh
            .open_for_user(&column, leo, &sealed_email(&server, &leo_id).await)
            .await
            .unwrap()
            .as_slice(),
        b"leo@secret.test"
    );
}

async fn stronger_hash_is_rehashed_at_login(backend: Backend) {
    use argon2::password_hash::{PasswordHasher as _, SaltString};

    let server = TestServer::start(backend).await;
    let (tenant, _) = server.bootstrap().await;
    let id = server
        .create_user(
            &tenant,
            "olga",
            "olga password 123",
            botserver::auth::Role::User,
        )
        .await;
    let params = argon2::Params::new(32_768, 3, 1, None).unwrap();
    let salt = SaltString::encode_b64(&[5u8; 32]).unwrap();
    let stronger = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(b"olga password 123", &salt)
        .unwrap()
        .to_string();
    sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
        .bind(&stronger)
        .bind(id.to_string())
        .execute(server.state.db.pool())
        .await
        .unwrap();

    server
        .login_ok("tenant-a", "olga", "olga password 123")
        .await;

    let row = sqlx::query("SELECT password_hash FROM users WHERE id = $1")
        .bind(id.to_string())
        .fetch_one(server.state.db.pool())
        .await
        .unwrap();
    let hash: String = row.get("password_hash");
    assert!(hash.contains("$m=19456,t=2,p=1$"), "{hash}");
    server
        .login_ok("tenant-a", "olga", "olga password 123")
        .await;
}
