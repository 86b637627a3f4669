//! Tenant isolation: every tenant-scoped route called with another
//! tenant's ids is 404 and changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Backend, TestServer, access};
use botserver::auth::Role;

both_backends!(other_tenant_ids_are_404);

async fn snapshot(server: &TestServer) -> Value {
    let db = server.state.db.pool();
    let tenants: Vec<(String, String)> = sqlx::query_as("SELECT id, name FROM tenants ORDER BY id")
        .fetch_all(db)
        .await
        .unwrap();
    let users: Vec<(String, String, String, String, i64, i64)> = sqlx::query_as(
        "SELECT id, tenant_id, username, role, disabled, failed_logins FROM users ORDER BY id",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let hashes: Vec<(String,)> = sqlx::query_as("SELECT password_hash FROM users ORDER BY id")
        .fetch_all(db)
        .await
        .unwrap();
    json!({"tenants": tenants, "users": users, "hashes": hashes})
}

async fn other_tenant_ids_are_404(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.bootstrap().await;
    let tenant_a = botserver::storage::tenants::find(&server.state.db, "tenant-a")
        .await
        .unwrap()
        .unwrap();
    let tenant_b = server.create_tenant("tenant-b").await;
    server
        .create_user(
            &tenant_a,
            "admin-a",
            "admin a password 1",
            Role::TenantAdmin,
        )
        .await;
    server
        .create_user(&tenant_a, "user-a", "user a password 12", Role::User)
        .await;
    let admin_b = server
        .create_user(
            &tenant_b,
            "admin-b",
            "admin b password 1",
            Role::TenantAdmin,
        )
        .await;
    let user_b = server
        .create_user(&tenant_b, "user-b", "user b password 12", Role::User)
        .await;
    let b_tokens = server
        .login_ok("tenant-b", "user-b", "user b password 12")
        .await;

    let callers = [
        (
            "tenant admin",
            access(
                &server
                    .login_ok("tenant-a", "admin-a", "admin a password 1")
                    .await,
            ),
        ),
        (
            "user",
            access(
                &server
                    .login_ok("tenant-a", "user-a", "user a password 12")
                    .await,
            ),
        ),
    ];
    let before = snapshot(&server).await;

    let a = tenant_a.id;
    let b = tenant_b.id;
    let new_user = json!({"username": "intruder", "password": "intruder password 1"});
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/api/v1/tenants/{b}"), None),
        (Method::GET, "/api/v1/tenants/tenant-b".to_owned(), None),
        (
            Method::PATCH,
            format!("/api/v1/tenants/{b}"),
            Some(json!({"name": "pwned"})),
        ),
        (Method::DELETE, format!("/api/v1/tenants/{b}"), None),
        (Method::GET, format!("/api/v1/tenants/{b}/users"), None),
        (
            Method::POST,
            format!("/api/v1/tenants/{b}/users"),
            Some(new_user),
        ),
        (
            Method::GET,
            format!("/api/v1/tenants/{b}/users/{user_b}"),
            None,
        ),
        (
            Method::PATCH,
            format!("/api/v1/tenants/{b}/users/{user_b}"),
            Some(json!({"role": "tenant_admin"})),
        ),
        (
            Method::DELETE,
            format!("/api/v1/tenants/{b}/users/{user_b}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/tenants/{b}/users/{user_b}/unlock"),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/v1/tenants/{b}/users/{user_b}/sessions"),
            None,
        ),
        (
            Method::PATCH,
            format!("/api/v1/tenants/{b}/users/{admin_b}"),
            Some(json!({"disabled": true})),
        ),
        // Own tenant in the path, another tenant's user id.
        (
            Method::GET,
            format!("/api/v1/tenants/{a}/users/{user_b}"),
            None,
        ),
        (
            Method::PATCH,
            format!("/api/v1/tenants/{a}/users/{user_b}"),
            Some(json!({"disabled": true})),
        ),
        (
            Method::DELETE,
            format!("/api/v1/tenants/{a}/users/{user_b}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/tenants/{a}/users/{user_b}/unlock"),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/v1/tenants/{a}/users/{user_b}/sessions"),
            None,
        ),
    ];

    for (who, token) in &callers {
        for (method, path, body) in &routes {
            let own_tenant_path = path.starts_with(&format!("/api/v1/tenants/{a}/"));
            let (status, problem) = server
                .json(method.clone(), path, Some(token), body.clone())
                .await;
            // A plain user of tenant-a may get 403 on their own tenant's
            // admin routes; never anything that reveals tenant-b.
            let allowed = status == StatusCode::NOT_FOUND
                || (*who == "user" && own_tenant_path && status == StatusCode::FORBIDDEN);
            assert!(allowed, "{who}: {method} {path} gave {status} {problem}");
        }
    }

    assert_eq!(
        snapshot(&server).await,
        before,
        "cross-tenant calls changed data"
    );
    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some(&access(&b_tokens)), None)
        .await;
    assert_eq!(status, StatusCode::OK, "tenant-b's sessions survive");
}
