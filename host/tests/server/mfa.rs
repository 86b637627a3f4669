//! Second factors: TOTP enrolment and login, replay and clock-window
//! checks, recovery codes, lockout, and the policies that require MFA.

use std::time::{SystemTime, UNIX_EPOCH};

use botserver::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use totp_rs::Totp;

use crate::both_backends;
use crate::harness::{ADMIN_PASSWORD, Backend, Settings, TestServer, access};

both_backends!(
    totp_login_rejects_wrong_replayed_and_stale_codes,
    recovery_codes_work_once,
    wrong_codes_count_towards_lockout,
    require_mfa_allows_only_enrolment_until_enrolled,
    production_requires_admins_to_enrol,
    disabling_needs_a_current_code,
    admin_reset_removes_the_factor,
);

const PASSWORD: &str = "alice password 123";

/// Starts a server with tenant `tenant-a`, its admin `root` and user `alice`.
async fn start(backend: Backend, settings: Settings) -> (TestServer, String) {
    let server = TestServer::start_with(backend, settings).await;
    let (tenant, root) = server.bootstrap().await;
    server
        .create_user(&tenant, "alice", PASSWORD, Role::User)
        .await;
    (server, root)
}

/// Returns the current RFC 6238 time step.
fn current_step() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30
}

/// Computes the code of `step` as the user's authenticator app does.
fn code(app: &Totp, step: u64) -> String {
    app.generate(step * 30).to_string()
}

/// Logs in with optional extra fields; returns status and body.
async fn login(
    server: &TestServer,
    user: &str,
    password: &str,
    extra: Value,
) -> (StatusCode, Value) {
    let mut body = json!({"tenant": "tenant-a", "username": user, "password": password});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    server
        .json(Method::POST, "/api/v1/auth/login", None, Some(body))
        .await
}

/// Starts an enrolment and returns the authenticator built from its URI.
async fn begin(server: &TestServer, token: &str) -> Totp {
    let (status, body) = server
        .json(Method::POST, "/api/v1/me/mfa/totp", Some(token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let uri = body["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/BotServer:"), "{uri}");
    let app = Totp::from_url(uri).expect("a standard otpauth URI");
    assert_eq!(app.secret().to_base32(), body["secret"].as_str().unwrap());
    app
}

/// Enrols `user` and returns the authenticator and the recovery codes.
async fn enrol(server: &TestServer, user: &str, password: &str) -> (Totp, Vec<String>) {
    let token = access(&server.login_ok("tenant-a", user, password).await);
    let app = begin(server, &token).await;
    let confirm = json!({"code": code(&app, current_step())});
    let (status, body) = server
        .json(
            Method::POST,
            "/api/v1/me/mfa/totp/confirm",
            Some(&token),
            Some(confirm),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let codes = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|code| code.as_str().unwrap().to_owned())
        .collect();
    (app, codes)
}

fn problem_code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("")
}

async fn totp_login_rejects_wrong_replayed_and_stale_codes(backend: Backend) {
    let (server, _) = start(backend, Settings::default()).await;
    let token = access(&server.login_ok("tenant-a", "alice", PASSWORD).await);
    let app = begin(&server, &token).await;

    let sealed: Vec<u8> = sqlx::query_scalar("SELECT secret_sealed FROM mfa_totp")
        .fetch_one(server.state.db.pool())
        .await
        .unwrap();
    let secret = app.secret().as_bytes();
    assert!(!sealed.windows(secret.len()).any(|window| window == secret));
    let logs = crate::harness::captured_logs();
    assert!(
        !logs.contains(&app.secret().to_base32()),
        "the secret reached a log line"
    );
    let (_, status) = server
        .json(Method::GET, "/api/v1/me/mfa", Some(&token), None)
        .await;
    assert_eq!(status["pending"], true, "{status}");
    assert_eq!(status["enabled"], false, "{status}");

    let step = current_step();
    let wrong = json!({"code": code(&app, step + 5)});
    let path = "/api/v1/me/mfa/totp/confirm";
    let (status, body) = server
        .json(Method::POST, path, Some(&token), Some(wrong))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(problem_code(&body), "mfa_invalid");
    let right = json!({"code": code(&app, step)});
    let (status, body) = server
        .json(Method::POST, path, Some(&token), Some(right))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["recovery_codes"].as_array().unwrap().len(), 10);

    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some(&token), None)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "confirming ends the session"
    );

    let (status, body) = login(&server, "alice", PASSWORD, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem_code(&body), "mfa_required", "{body}");
    let (status, body) = login(&server, "alice", "wrong password 1", json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        problem_code(&body),
        "",
        "a wrong password reveals no MFA: {body}"
    );

    // The enrolment used `step`, so only a later step is accepted now.
    let (status, body) = login(
        &server,
        "alice",
        PASSWORD,
        json!({"totp": code(&app, step)}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(problem_code(&body), "mfa_invalid");
    let next = json!({"totp": code(&app, step + 1)});
    let (status, body) = login(&server, "alice", PASSWORD, next.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("mfa_enrolment_required").is_none(), "{body}");

    let (status, body) = login(&server, "alice", PASSWORD, next).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "replayed code: {body}");
    assert_eq!(problem_code(&body), "mfa_invalid");
    let outside = json!({"totp": code(&app, current_step() + 3)});
    let (status, _) = login(&server, "alice", PASSWORD, outside).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "code three steps ahead");
    for garbage in ["", "12345", "abcdef", "1234567", "+12345"] {
        let (status, _) = login(&server, "alice", PASSWORD, json!({"totp": garbage})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{garbage:?}");
    }
    let (status, body) = login(
        &server,
        "alice",
        PASSWORD,
        json!({"totp": code(&app, step + 2), "recovery_code": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

async fn recovery_codes_work_once(backend: Backend) {
    let (server, _) = start(backend, Settings::default()).await;
    let (_, codes) = enrol(&server, "alice", PASSWORD).await;
    assert_eq!(codes.len(), 10);
    assert!(codes.iter().all(|code| code.len() == 39), "{codes:?}");

    let first = json!({"recovery_code": codes[0]});
    let (status, body) = login(&server, "alice", PASSWORD, first.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = login(&server, "alice", PASSWORD, first).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a used recovery code: {body}"
    );
    assert_eq!(problem_code(&body), "mfa_invalid");

    let typed = codes[1].to_uppercase().replace('-', " ");
    let (status, body) = login(&server, "alice", PASSWORD, json!({"recovery_code": typed})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = access(&body);
    let (_, status) = server
        .json(Method::GET, "/api/v1/me/mfa", Some(&token), None)
        .await;
    assert_eq!(status["enabled"], true, "{status}");
    assert_eq!(status["recovery_codes_left"], 8, "{status}");

    let logs = crate::harness::captured_logs();
    for code in &codes {
        assert!(
            !logs.contains(code.as_str()),
            "a recovery code reached a log line"
        );
    }
    let stored: Vec<String> = sqlx::query_scalar("SELECT code_hash FROM mfa_recovery_codes")
        .fetch_all(server.state.db.pool())
        .await
        .unwrap();
    assert_eq!(stored.len(), 8);
    for code in &codes {
        assert!(
            !stored
                .iter()
                .any(|hash| hash.contains(&code.replace('-', "")))
        );
    }
}

async fn wrong_codes_count_towards_lockout(backend: Backend) {
    let settings = Settings {
        env: vec![("BOTSERVER_MAX_LOGIN_ATTEMPTS", "3".to_owned())],
    };
    let (server, _) = start(backend, settings).await;
    let (app, _) = enrol(&server, "alice", PASSWORD).await;
    let step = current_step();
    for _ in 0..3 {
        let (status, _) = login(&server, "alice", PASSWORD, json!({"totp": "000000"})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // A request without a code must not reset the count of wrong ones.
        let (status, body) = login(&server, "alice", PASSWORD, json!({})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let locked = problem_code(&body).is_empty();
        assert!(locked || problem_code(&body) == "mfa_required", "{body}");
    }
    let right = json!({"totp": code(&app, step + 1)});
    let (status, body) = login(&server, "alice", PASSWORD, right).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "locked: {body}");
    assert_eq!(
        problem_code(&body),
        "",
        "a lock looks like a wrong password: {body}"
    );
}

async fn require_mfa_allows_only_enrolment_until_enrolled(backend: Backend) {
    let settings = Settings {
        env: vec![("BOTSERVER_REQUIRE_MFA", "true".to_owned())],
    };
    let (server, _) = start(backend, settings).await;
    let tokens = server.login_ok("tenant-a", "alice", PASSWORD).await;
    assert_eq!(tokens["mfa_enrolment_required"], true, "{tokens}");
    let token = access(&tokens);

    for (method, path) in [
        (Method::GET, "/api/v1/me"),
        (Method::GET, "/api/v1/me/bots"),
        (Method::POST, "/api/v1/auth/ws-ticket"),
        (Method::POST, "/api/v1/me/mfa/totp/disable"),
    ] {
        let (status, body) = server
            .json(method, path, Some(&token), Some(json!({})))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(problem_code(&body), "mfa_enrolment_required", "{path}");
    }
    let (status, body) = server
        .json(Method::GET, "/api/v1/me/mfa", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["required"], true);

    let (app, _) = enrol(&server, "alice", PASSWORD).await;
    let (status, body) = login(&server, "alice", PASSWORD, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem_code(&body), "mfa_required");
    let right = json!({"totp": code(&app, current_step() + 1)});
    let (status, body) = login(&server, "alice", PASSWORD, right).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("mfa_enrolment_required").is_none(), "{body}");
    let token = access(&body);
    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    let disable = json!({"totp": code(&app, current_step() + 1)});
    let (status, body) = server
        .json(
            Method::POST,
            "/api/v1/me/mfa/totp/disable",
            Some(&token),
            Some(disable),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the policy keeps MFA on: {body}"
    );
}

/// Settings of a production-mode server: every key configured.
fn production_settings(key_dir: &std::path::Path) -> Settings {
    botserver::auth::TokenKeys::load(None, key_dir, true).expect("signing key");
    let key_path = key_dir.join(botserver::crypto::keyfile::JWT_SIGNING_KEY_FILE);
    Settings {
        env: vec![
            ("BOTSERVER_ENV", "production".to_owned()),
            ("BOTSERVER_JWT_KEY", key_path.display().to_string()),
            ("BOTSERVER_JWT_SECRET", "11".repeat(32)),
            ("DATABASE_ENCRYPTION_KEY", "22".repeat(32)),
        ],
    }
}

async fn production_requires_admins_to_enrol(backend: Backend) {
    let key_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(backend, production_settings(key_dir.path())).await;
    let tenant = server.create_tenant("tenant-a").await;
    server
        .create_user(&tenant, "root", ADMIN_PASSWORD, Role::PlatformAdmin)
        .await;
    server
        .create_user(&tenant, "alice", PASSWORD, Role::User)
        .await;

    let alice = server.login_ok("tenant-a", "alice", PASSWORD).await;
    assert!(alice.get("mfa_enrolment_required").is_none(), "{alice}");
    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some(&access(&alice)), None)
        .await;
    assert_eq!(status, StatusCode::OK, "users need no second factor");

    let root = server.login_ok("tenant-a", "root", ADMIN_PASSWORD).await;
    assert_eq!(root["mfa_enrolment_required"], true, "{root}");
    let (status, body) = server
        .json(Method::GET, "/api/v1/tenants", Some(&access(&root)), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(problem_code(&body), "mfa_enrolment_required");

    let (app, _) = enrol(&server, "root", ADMIN_PASSWORD).await;
    let right = json!({"totp": code(&app, current_step() + 1)});
    let (status, body) = login(&server, "root", ADMIN_PASSWORD, right).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .json(Method::GET, "/api/v1/tenants", Some(&access(&body)), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn disabling_needs_a_current_code(backend: Backend) {
    let (server, _) = start(backend, Settings::default()).await;
    let (app, codes) = enrol(&server, "alice", PASSWORD).await;
    let step = current_step();
    let (_, body) = login(
        &server,
        "alice",
        PASSWORD,
        json!({"totp": code(&app, step + 1)}),
    )
    .await;
    let token = access(&body);
    let (status, body) = server
        .json(Method::POST, "/api/v1/me/mfa/totp", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "already enabled: {body}");
    let path = "/api/v1/me/mfa/totp/disable";

    let (status, body) = server
        .json(Method::POST, path, Some(&token), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(problem_code(&body), "mfa_required");
    let replay = json!({"totp": code(&app, step + 1)});
    let (status, body) = server
        .json(Method::POST, path, Some(&token), Some(replay))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(problem_code(&body), "mfa_invalid");

    let recovery = json!({"recovery_code": codes[3]});
    let (status, body) = server
        .json(Method::POST, path, Some(&token), Some(recovery))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = login(&server, "alice", PASSWORD, json!({})).await;
    assert_eq!(status, StatusCode::OK, "no second factor any more: {body}");
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mfa_recovery_codes")
        .fetch_one(server.state.db.pool())
        .await
        .unwrap();
    assert_eq!(count, 0);
}

async fn admin_reset_removes_the_factor(backend: Backend) {
    let (server, root) = start(backend, Settings::default()).await;
    let tenant = botserver::storage::tenants::find(&server.state.db, "tenant-a")
        .await
        .unwrap()
        .unwrap();
    let bob = server
        .create_user(&tenant, "bob", "bob password 1234", Role::User)
        .await;
    enrol(&server, "bob", "bob password 1234").await;
    let alice = access(&server.login_ok("tenant-a", "alice", PASSWORD).await);

    let path = format!("/api/v1/tenants/tenant-a/users/{bob}/mfa");
    let (status, _) = server.json(Method::DELETE, &path, Some(&alice), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "users cannot reset others");
    let (status, body) = server.json(Method::DELETE, &path, Some(&root), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = server.json(Method::DELETE, &path, Some(&root), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing left to reset");
    let (status, body) = login(&server, "bob", "bob password 1234", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
