//! Refresh-token rotation, reuse detection, concurrency and idle timeout.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::api::jwt_claims;
use crate::both_backends;
use crate::harness::{ADMIN_PASSWORD, Backend, Settings, TestServer, access, refresh_token};
use botserver::storage::refresh_tokens;

both_backends!(
    replayed_refresh_revokes_family,
    concurrent_refreshes_leave_one_successor,
    refresh_rotates_every_time,
    idle_session_expires,
);

async fn refresh_rotates_every_time(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.bootstrap().await;
    let mut tokens = server.login_ok("tenant-a", "root", ADMIN_PASSWORD).await;
    let session = jwt_claims(&access(&tokens))["sid"].clone();
    for _ in 0..3 {
        let (status, next) = server.refresh(&refresh_token(&tokens)).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(refresh_token(&next), refresh_token(&tokens));
        assert_eq!(
            jwt_claims(&access(&next))["sid"],
            session,
            "refresh keeps the session"
        );
        let (status, _) = server
            .json(Method::GET, "/api/v1/me", Some(&access(&next)), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        tokens = next;
    }
}

async fn replayed_refresh_revokes_family(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.bootstrap().await;
    let first = server.login_ok("tenant-a", "root", ADMIN_PASSWORD).await;
    let other_device = server.login_ok("tenant-a", "root", ADMIN_PASSWORD).await;
    let (status, second) = server.refresh(&refresh_token(&first)).await;
    assert_eq!(status, StatusCode::OK);

    // Replaying the rotated token fails and kills the whole family.
    let (status, _) = server.refresh(&refresh_token(&first)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.refresh(&refresh_token(&second)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "successor dies with its family"
    );
    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some(&access(&second)), None)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the family's session ends"
    );

    // Another login's family is untouched.
    let (status, _) = server.refresh(&refresh_token(&other_device)).await;
    assert_eq!(status, StatusCode::OK);

    let (status, _) = server.refresh("made-up-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn concurrent_refreshes_leave_one_successor(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.bootstrap().await;
    let tokens = server.login_ok("tenant-a", "root", ADMIN_PASSWORD).await;
    let family = jwt_claims(&access(&tokens))["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let presented = refresh_token(&tokens);

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = server.client.clone();
        let url = format!("{}/api/v1/auth/refresh", server.base);
        let body = serde_json::json!({"refresh_token": presented});
        tasks.push(tokio::spawn(async move {
            let response = client.post(url).json(&body).send().await.unwrap();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body)
        }));
    }
    let mut successors = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert!(
            status == StatusCode::OK || status == StatusCode::UNAUTHORIZED,
            "{status}"
        );
        if status == StatusCode::OK {
            successors.push(refresh_token(&body));
        }
    }
    assert!(
        successors.len() <= 1,
        "{} successors issued",
        successors.len()
    );
    let live = refresh_tokens::count_live(&server.state.db, &family)
        .await
        .unwrap();
    assert!(live <= 1, "{live} live tokens in the family");
    let mut working = 0;
    for successor in successors {
        if server.refresh(&successor).await.0 == StatusCode::OK {
            working += 1;
        }
    }
    assert!(working <= 1);
}

async fn idle_session_expires(backend: Backend) {
    let settings = Settings {
        env: vec![("BOTSERVER_SESSION_TIMEOUT", "1".to_owned())],
    };
    let server = TestServer::start_with(backend, settings).await;
    server.bootstrap().await;
    let tokens = server.login_ok("tenant-a", "root", ADMIN_PASSWORD).await;
    let token = access(&tokens);
    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // Idleness is the condition under test, so this waits the timeout out:
    // polling the session would count as activity and keep it alive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some(&token), None)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "session alive after its idle timeout"
    );
    let (status, _) = server.refresh(&refresh_token(&tokens)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
