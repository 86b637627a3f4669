//! Export and erasure of a user's data.

use botserver::auth::Role;
use botserver::crypto::ColumnRef;
use botserver::storage::{TenantId, UserId};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::chat::{add_bot, chat, greeting, say};
use crate::harness::{Backend, TestServer, access};

both_backends!(
    export_holds_the_users_data_and_nothing_else,
    erasure_revokes_access_and_shreds_old_ciphertexts,
    admin_erasure_and_export_follow_the_user_rules,
);

const ALICE_PASSWORD: &str = "alice password 1";
const BOB_PASSWORD: &str = "bob password 1";

struct People {
    server: TestServer,
    root: String,
    tenant: TenantId,
    alice_id: UserId,
    alice: String,
    bob_id: UserId,
    bob: String,
}

/// Tenant `tenant-a` with admin `root`, users `alice` (with an e-mail) and
/// `bob`, and a `counter` bot each of them has used.
async fn people(backend: Backend) -> People {
    let server = TestServer::start(backend).await;
    let (tenant, root) = server.bootstrap().await;
    add_bot(&server, &root, "tenant-a", "counter", "counter", "members").await;
    let path = "/api/v1/tenants/tenant-a/users";
    let mut ids = Vec::new();
    for (name, password, email) in [
        ("alice", ALICE_PASSWORD, "alice@example.test"),
        ("bob", BOB_PASSWORD, "bob@example.test"),
    ] {
        let body = json!({"username": name, "password": password, "email": email});
        let (status, user) = server
            .json(Method::POST, path, Some(&root), Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        ids.push(UserId(user["id"].as_str().unwrap().parse().unwrap()));
    }
    let alice = access(&server.login_ok("tenant-a", "alice", ALICE_PASSWORD).await);
    let bob = access(&server.login_ok("tenant-a", "bob", BOB_PASSWORD).await);
    for (token, canary) in [(&alice, "alice-canary-41"), (&bob, "bob-canary-97")] {
        let (mut socket, _) = chat(&server, token, "counter", "").await;
        greeting(&mut socket).await;
        say(&mut socket, canary).await;
        say(&mut socket, canary).await;
    }
    People {
        server,
        root,
        tenant: tenant.id,
        alice_id: ids[0],
        alice,
        bob_id: ids[1],
        bob,
    }
}

async fn export_holds_the_users_data_and_nothing_else(backend: Backend) {
    let p = people(backend).await;
    let (status, archive) = p
        .server
        .json(Method::GET, "/api/v1/me/export", Some(&p.alice), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{archive}");
    assert_eq!(archive["account"]["username"], "alice");
    assert_eq!(archive["account"]["email"], "alice@example.test");
    let conversations = archive["conversations"].as_array().unwrap();
    assert_eq!(conversations.len(), 1);
    let messages = conversations[0]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 5, "{archive}");
    assert_eq!(messages[1]["content"], "alice-canary-41");
    let entries = archive["key_value_entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{archive}");
    assert_eq!(entries[0]["bot"], "counter");
    assert_eq!(entries[0]["key"], "count");

    let events = archive["audit_events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|event| event["action"] == "auth.login.success"),
        "{archive}"
    );

    let text = archive.to_string();
    assert!(!text.contains("bob"), "another user's data leaked: {text}");
    assert!(!text.contains("password"), "{text}");

    // The tenant's admin gets the same archive.
    let path = format!("/api/v1/tenants/tenant-a/users/{}/export", p.alice_id.0);
    let (status, by_admin) = p.server.json(Method::GET, &path, Some(&p.root), None).await;
    assert_eq!(status, StatusCode::OK, "{by_admin}");
    assert_eq!(by_admin["conversations"], archive["conversations"]);
    assert_eq!(by_admin["key_value_entries"], archive["key_value_entries"]);

    // A user is not an admin of anyone else.
    let path = format!("/api/v1/tenants/tenant-a/users/{}/export", p.bob_id.0);
    let (status, _) = p
        .server
        .json(Method::GET, &path, Some(&p.alice), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// One stored message of `user` with its row id, as a backup would hold it.
async fn saved_message(server: &TestServer, user: UserId) -> (String, Vec<u8>) {
    sqlx::query_as(
        "SELECT m.id, m.content_sealed FROM messages m \
         JOIN conversations c ON c.id = m.conversation_id WHERE c.owner_id = $1 \
         ORDER BY m.seq LIMIT 1",
    )
    .bind(user.to_string())
    .fetch_one(server.state.db.pool())
    .await
    .unwrap()
}

async fn opens(
    server: &TestServer,
    tenant: TenantId,
    user: UserId,
    saved: &(String, Vec<u8>),
) -> bool {
    let at = ColumnRef {
        tenant,
        table: "messages",
        row: &saved.0,
        column: "content_sealed",
    };
    server
        .state
        .vault
        .open_for_user(&at, user, &saved.1)
        .await
        .is_ok()
}

async fn count(server: &TestServer, sql: &str, user: &str) -> i64 {
    let (count,): (i64,) = sqlx::query_as(sql)
        .bind(user)
        .fetch_one(server.state.db.pool())
        .await
        .unwrap();
    count
}

async fn erasure_revokes_access_and_shreds_old_ciphertexts(backend: Backend) {
    let p = people(backend).await;
    let saved = saved_message(&p.server, p.alice_id).await;
    assert!(opens(&p.server, p.tenant, p.alice_id, &saved).await);
    let (mut socket, _) = chat(&p.server, &p.alice, "counter", "").await;
    greeting(&mut socket).await;

    // A token alone is not enough: the password is asked again.
    let wrong = json!({"password": "not alice's password"});
    let (status, _) = p
        .server
        .json(Method::DELETE, "/api/v1/me", Some(&p.alice), Some(wrong))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(opens(&p.server, p.tenant, p.alice_id, &saved).await);

    let right = json!({"password": ALICE_PASSWORD});
    let (status, body) = p
        .server
        .json(Method::DELETE, "/api/v1/me", Some(&p.alice), Some(right))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    // Sessions, tokens and the open chat are gone.
    let (status, _) = p
        .server
        .json(Method::GET, "/api/v1/me/export", Some(&p.alice), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(say(&mut socket, "still there?").await["close"], 1008);
    assert_eq!(
        p.server
            .login("tenant-a", "alice", ALICE_PASSWORD)
            .await
            .status(),
        401
    );

    // The rows are gone, and a copy of a ciphertext made before no longer
    // opens, because the key that sealed it was destroyed.
    let alice = p.alice_id.to_string();
    let conversations = "SELECT COUNT(*) FROM conversations WHERE owner_id = $1";
    assert_eq!(count(&p.server, conversations, &alice).await, 0);
    let keys = "SELECT COUNT(*) FROM user_keys WHERE user_id = $1";
    assert_eq!(count(&p.server, keys, &alice).await, 0);
    assert!(!opens(&p.server, p.tenant, p.alice_id, &saved).await);
    let entries = "SELECT COUNT(*) FROM kv_entries WHERE scope = 'user' AND user_id != $1";
    assert_eq!(
        count(&p.server, entries, "").await,
        1,
        "only bob's counter is left"
    );
    let path = format!("/api/v1/tenants/tenant-a/users/{}/export", p.alice_id.0);
    let (status, _) = p.server.json(Method::GET, &path, Some(&p.root), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Bob keeps everything.
    let (status, archive) = p
        .server
        .json(Method::GET, "/api/v1/me/export", Some(&p.bob), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        archive["conversations"][0]["messages"][1]["content"],
        "bob-canary-97"
    );
    let bobs = saved_message(&p.server, p.bob_id).await;
    assert!(opens(&p.server, p.tenant, p.bob_id, &bobs).await);
}

async fn admin_erasure_and_export_follow_the_user_rules(backend: Backend) {
    let p = people(backend).await;
    let saved = saved_message(&p.server, p.bob_id).await;
    let path = format!("/api/v1/tenants/tenant-a/users/{}", p.bob_id.0);
    let (status, _) = p
        .server
        .json(Method::DELETE, &path, Some(&p.alice), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = p
        .server
        .json(Method::DELETE, &path, Some(&p.root), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!opens(&p.server, p.tenant, p.bob_id, &saved).await);
    let (status, _) = p
        .server
        .json(Method::GET, "/api/v1/me", Some(&p.bob), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = p
        .server
        .json(Method::DELETE, &path, Some(&p.root), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Another tenant's admin sees no such user.
    let tenant_b = p.server.create_tenant("tenant-b").await;
    p.server
        .create_user(
            &tenant_b,
            "admin-b",
            "admin b password 1",
            Role::TenantAdmin,
        )
        .await;
    let admin_b = access(
        &p.server
            .login_ok("tenant-b", "admin-b", "admin b password 1")
            .await,
    );
    let path = format!("/api/v1/tenants/tenant-a/users/{}/export", p.alice_id.0);
    let (status, _) = p
        .server
        .json(Method::GET, &path, Some(&admin_b), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
