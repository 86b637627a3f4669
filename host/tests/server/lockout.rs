//! Lockout, and login failures that look identical to the client.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::both_backends;
use crate::harness::{Backend, Settings, TestServer, eventually};
use botserver::auth::Role;

both_backends!(
    login_failures_are_indistinguishable,
    lock_expires_without_renewal,
    admin_unlock_restores_login,
    unknown_user_costs_a_hash,
);

const PASSWORD: &str = "erin password 123";

async fn locking_server(backend: Backend, lock_secs: u64) -> TestServer {
    let settings = Settings {
        env: vec![
            ("BOTSERVER_MAX_LOGIN_ATTEMPTS", "3".to_owned()),
            ("BOTSERVER_LOCKOUT_DURATION", lock_secs.to_string()),
        ],
    };
    let server = TestServer::start_with(backend, settings).await;
    server.bootstrap().await;
    let tenant = botserver::storage::tenants::find(&server.state.db, "tenant-a")
        .await
        .unwrap()
        .unwrap();
    server
        .create_user(&tenant, "erin", PASSWORD, Role::User)
        .await;
    server
}

/// Status, relevant headers and body of a login attempt.
async fn outcome(
    server: &TestServer,
    tenant: &str,
    user: &str,
    password: &str,
) -> (StatusCode, String, String, String) {
    let response = server.login(tenant, user, password).await;
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let content_type = header("content-type");
    let challenge = header("www-authenticate");
    (
        status,
        content_type,
        challenge,
        response.text().await.unwrap(),
    )
}

async fn lock(server: &TestServer) {
    for _ in 0..3 {
        assert_eq!(
            server
                .login("tenant-a", "erin", "wrong password 1")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

async fn login_failures_are_indistinguishable(backend: Backend) {
    let server = locking_server(backend, 3600).await;
    let wrong = outcome(&server, "tenant-a", "erin", "wrong password 1").await;
    assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);
    let unknown_user = outcome(&server, "tenant-a", "nobody", "wrong password 1").await;
    let unknown_tenant = outcome(&server, "no-such-tenant", "erin", PASSWORD).await;
    let injected = outcome(
        &server,
        "tenant-a",
        "erin\n{\"level\":\"INFO\",\"message\":\"admin login ok\"}",
        PASSWORD,
    )
    .await;
    lock(&server).await;
    let locked = outcome(&server, "tenant-a", "erin", PASSWORD).await;
    assert_eq!(unknown_user, wrong);
    assert_eq!(unknown_tenant, wrong);
    assert_eq!(injected, wrong);
    assert_eq!(
        locked, wrong,
        "a locked account with the right password looks like a wrong password"
    );

    // The forged line never shows up as its own log record.
    let logs = crate::harness::captured_logs();
    assert!(
        !logs
            .lines()
            .any(|line| line.starts_with("{\"level\":\"INFO\",\"message\":\"admin login ok\""))
    );
}

async fn lock_expires_without_renewal(backend: Backend) {
    let server = locking_server(backend, 2).await;
    lock(&server).await;
    let locked_at = Instant::now();
    // Failures during the lock neither count nor extend it.
    for _ in 0..5 {
        assert_eq!(
            server
                .login("tenant-a", "erin", "wrong password 1")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let back_in = eventually(Duration::from_secs(10), || async {
        server.login("tenant-a", "erin", PASSWORD).await.status() == StatusCode::OK
    })
    .await;
    assert!(back_in, "owner still locked out");
    assert!(
        locked_at.elapsed() < Duration::from_secs(8),
        "lock was extended"
    );
}

async fn admin_unlock_restores_login(backend: Backend) {
    let server = locking_server(backend, 3600).await;
    let root = crate::harness::access(
        &server
            .login_ok("tenant-a", "root", crate::harness::ADMIN_PASSWORD)
            .await,
    );

    lock(&server).await;
    assert_eq!(
        server.login("tenant-a", "erin", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let tenant = botserver::storage::tenants::find(&server.state.db, "tenant-a")
        .await
        .unwrap()
        .unwrap();
    let erin = botserver::storage::users::find_by_username(&server.state.db, tenant.id, "erin")
        .await
        .unwrap()
        .unwrap();
    let (status, view) = server
        .json(
            reqwest::Method::GET,
            &format!("/api/v1/tenants/{}/users/{}", tenant.id, erin.id),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(view["locked_until"].is_i64(), "admin sees the lock");

    let (status, _) = server
        .json(
            reqwest::Method::POST,
            &format!("/api/v1/tenants/{}/users/{}/unlock", tenant.id, erin.id),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        server.login("tenant-a", "erin", PASSWORD).await.status(),
        StatusCode::OK
    );
}

/// Unknown users run one Argon2 verification like known ones, so a login
/// for a missing account takes as long as a wrong password. The check counts
/// verifications rather than timing them, so machine load cannot flake it.
async fn unknown_user_costs_a_hash(backend: Backend) {
    let server = locking_server(backend, 3600).await;
    let hasher = server.state.auth.hasher();

    let before = hasher.verifications();
    server.login("tenant-a", "erin", "wrong password 1").await;
    assert_eq!(
        hasher.verifications() - before,
        1,
        "known user, wrong password"
    );

    let before = hasher.verifications();
    server
        .login("tenant-a", "nobody-here", "wrong password 1")
        .await;
    assert_eq!(hasher.verifications() - before, 1, "unknown user");

    let before = hasher.verifications();
    server
        .login("no-such-tenant", "nobody-here", "wrong password 1")
        .await;
    assert_eq!(hasher.verifications() - before, 1, "unknown tenant");

    // Two more failures reach the threshold of three and lock the account.
    for _ in 0..2 {
        server.login("tenant-a", "erin", "wrong password 1").await;
    }
    let before = hasher.verifications();
    let locked = server.login("tenant-a", "erin", PASSWORD).await;
    assert_eq!(locked.status(), StatusCode::UNAUTHORIZED, "locked account");
    assert_eq!(hasher.verifications() - before, 1, "locked account");
}
