//! The audit trail: events of a scripted session, the hash chain under
//! tampering and concurrent writers, the database's refusal of edits,
//! retention, the query API and the `botserver audit` commands. Canary
//! values must reach neither the logs nor the audit table.

use std::time::Duration;

use botserver::audit::chain::{Break, Problem};
use botserver::audit::storage::{self, AuditRecord, Filter, NewRecord, Order};
use botserver::audit::verify::{Report, verify};
use botserver::audit::{Actor, AuditEvent, Outcome, apply_retention, now_ms};
use botserver::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::both_backends;
use crate::bots::{create_bot, digest, grant, upload};
use crate::chat::{add_bot, chat, greeting, next_frame, say};
use crate::harness::{
    Backend, Settings, TestServer, access, captured_logs, eventually, refresh_token,
};
use crate::support;

both_backends!(
    scripted_session_leaves_its_events,
    tampering_is_found_at_the_first_bad_event,
    application_cannot_edit_or_delete_events,
    concurrent_nodes_build_one_chain,
    retention_keeps_the_chain_verifiable,
    query_api_filters_and_is_tenant_scoped,
    cli_verifies_and_exports,
    disabled_audit_records_nothing,
    canaries_reach_neither_logs_nor_audit,
    serve_writes_rotating_json_log_files,
);

const ALICE_PASSWORD: &str = "alice password 1";

/// Maximum wait for an event recorded off the request path.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Returns every stored event, oldest first.
async fn events(server: &TestServer) -> Vec<AuditRecord> {
    storage::query(
        &server.state.db,
        &Filter::default(),
        Order::OldestFirst,
        100_000,
    )
    .await
    .unwrap()
}

/// Events named `action`, oldest first.
async fn named(server: &TestServer, action: &str) -> Vec<AuditRecord> {
    let filter = Filter {
        action: Some(action.to_owned()),
        ..Filter::default()
    };
    storage::query(&server.state.db, &filter, Order::OldestFirst, 1000)
        .await
        .unwrap()
}

/// Waits for the first event named `action` that `matches`.
async fn wait_until(
    server: &TestServer,
    action: &str,
    matches: impl Fn(&AuditRecord) -> bool,
) -> AuditRecord {
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Some(found) = named(server, action).await.into_iter().find(&matches) {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no matching `{action}` event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the first event named `action` whose detail `key` is `value`.
async fn wait_for(server: &TestServer, action: &str, (key, value): (&str, Value)) -> AuditRecord {
    wait_until(server, action, |record| details(record)[key] == value).await
}

/// Waits for the first event named `action`.
async fn wait_any(server: &TestServer, action: &str) -> AuditRecord {
    wait_until(server, action, |_| true).await
}

fn details(record: &AuditRecord) -> Value {
    serde_json::from_str(&record.details).unwrap()
}

async fn verified(server: &TestServer) -> Report {
    match verify(&server.state.db).await.unwrap() {
        Ok(report) => report,
        Err(found) => panic!("the chain should verify: {found}"),
    }
}

async fn broken(server: &TestServer) -> Break {
    match verify(&server.state.db).await.unwrap() {
        Ok(report) => panic!("the chain should be broken: {report}"),
        Err(found) => found,
    }
}

/// Runs `sql` with the audit triggers out of the way, as an attacker with
/// the table owner's rights (or the SQLite file) could.
async fn tamper(server: &TestServer, backend: Backend, sql: &str, binds: &[&str]) {
    let pool = server.state.db.pool();
    if backend == Backend::Postgres {
        sqlx::query("ALTER TABLE audit_events DISABLE TRIGGER USER")
            .execute(pool)
            .await
            .unwrap();
    } else {
        for trigger in ["audit_events_no_update", "audit_events_delete_checkpointed"] {
            sqlx::query(&format!("DROP TRIGGER IF EXISTS {trigger}"))
                .execute(pool)
                .await
                .unwrap();
        }
    }
    let mut query = sqlx::query(sql);
    for bind in binds {
        query = query.bind(*bind);
    }
    query.execute(pool).await.unwrap();
}

/// Overwrites every column but `seq` of event `seq` with `record`'s.
async fn overwrite(server: &TestServer, backend: Backend, seq: i64, record: &AuditRecord) {
    let seq = seq.to_string();
    let at = record.occurred_at_ms.to_string();
    let sql = "UPDATE audit_events SET occurred_at_ms = CAST($1 AS BIGINT), actor = $2, \
               tenant_id = $3, action = $4, target = $5, outcome = $6, request_id = $7, \
               source = $8, details = $9, hash = $10 WHERE seq = CAST($11 AS BIGINT)";
    let none = |value: &Option<String>| value.clone().unwrap_or_default();
    let (tenant, target, request, source) = (
        none(&record.tenant_id),
        none(&record.target),
        none(&record.request_id),
        none(&record.source),
    );
    tamper(
        server,
        backend,
        sql,
        &[
            &at,
            &record.actor,
            &tenant,
            &record.action,
            &target,
            &record.outcome,
            &request,
            &source,
            &record.details,
            &record.hash,
            &seq,
        ],
    )
    .await;
    // Empty strings stand in for NULL above; put the NULLs back.
    for (column, value) in [
        ("tenant_id", &record.tenant_id),
        ("target", &record.target),
        ("request_id", &record.request_id),
        ("source", &record.source),
    ] {
        if value.is_none() {
            let sql =
                format!("UPDATE audit_events SET {column} = NULL WHERE seq = CAST($1 AS BIGINT)");
            tamper(server, backend, &sql, &[&seq]).await;
        }
    }
}

/// Puts a deleted event back exactly as it was.
async fn reinsert(server: &TestServer, record: &AuditRecord) {
    sqlx::query(
        "INSERT INTO audit_events (seq, occurred_at_ms, actor, tenant_id, action, target, \
         outcome, request_id, source, details, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(record.seq)
    .bind(record.occurred_at_ms)
    .bind(&record.actor)
    .bind(record.tenant_id.as_deref())
    .bind(&record.action)
    .bind(record.target.as_deref())
    .bind(&record.outcome)
    .bind(record.request_id.as_deref())
    .bind(record.source.as_deref())
    .bind(&record.details)
    .bind(&record.hash)
    .execute(server.state.db.pool())
    .await
    .unwrap();
}

/// Starts a server whose trail contains at least eight events from real requests.
async fn server_with_events(backend: Backend) -> (TestServer, String) {
    let server = TestServer::start(backend).await;
    let (_, root) = server.bootstrap().await;
    for name in ["t-one", "t-two", "t-three"] {
        let body = json!({"name": name});
        let (status, _) = server
            .json(Method::POST, "/api/v1/tenants", Some(&root), Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    for _ in 0..4 {
        let response = server.login("tenant-a", "root", "wrong password 1").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert!(events(&server).await.len() >= 8);
    (server, root)
}

async fn scripted_session_leaves_its_events(backend: Backend) {
    let settings = Settings {
        env: vec![
            ("BOTSERVER_MAX_LOGIN_ATTEMPTS", "3".to_owned()),
            ("BOTSERVER_WS_MAX_MESSAGE_SIZE", "4096".to_owned()),
        ],
    };
    let server = TestServer::start_with(backend, settings).await;
    let (tenant, root) = server.bootstrap().await;
    let root_id = server.state.auth.authenticate(&root).await.unwrap().1.id;
    let tenant_id = tenant.id.to_string();

    // Accounts and logins.
    let body = json!({"username": "alice", "password": ALICE_PASSWORD});
    let (status, alice_view) = server
        .json(
            Method::POST,
            "/api/v1/tenants/tenant-a/users",
            Some(&root),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let alice_id = alice_view["id"].as_str().unwrap().to_owned();
    let bob = server
        .create_user(&tenant, "bob", "bob password 123", Role::User)
        .await;
    assert_eq!(
        server
            .login("tenant-a", "alice", "not her password")
            .await
            .status(),
        401
    );
    assert_eq!(
        server
            .login("tenant-a", "nobody", "not a password 1")
            .await
            .status(),
        401
    );
    for _ in 0..3 {
        assert_eq!(
            server
                .login("tenant-a", "bob", "not his password")
                .await
                .status(),
            401
        );
    }
    let tokens = server.login_ok("tenant-a", "alice", ALICE_PASSWORD).await;
    let (status, renewed) = server.refresh(&refresh_token(&tokens)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.refresh(&refresh_token(&tokens)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "reuse is refused");
    drop(renewed);
    let alice = access(&server.login_ok("tenant-a", "alice", ALICE_PASSWORD).await);

    // Refusals.
    let (status, _) = server
        .json(
            Method::GET,
            "/api/v1/tenants/tenant-a/users",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let tenant_b = server.create_tenant("tenant-b").await;
    server
        .create_user(&tenant_b, "carol", "carol password 1", Role::TenantAdmin)
        .await;
    let carol = access(
        &server
            .login_ok("tenant-b", "carol", "carol password 1")
            .await,
    );
    let (status, _) = server
        .json(
            Method::GET,
            "/api/v1/tenants/tenant-a/bots",
            Some(&carol),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some("not-a-token"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Configuration: a plugin, its grants, a secret and a bot that reveals it.
    let (status, uploaded) = upload(&server, &root, "tenant-a", "secrets-demo").await;
    assert!(status.is_success(), "{uploaded}");
    let secrets_digest = digest(&uploaded);
    grant(
        &server,
        &root,
        "tenant-a",
        &secrets_digest,
        json!({"secrets": {"names": ["API_KEY"]}}),
    )
    .await;
    let (status, _) = server
        .json(
            Method::PUT,
            "/api/v1/tenants/tenant-a/secrets/API_KEY",
            Some(&root),
            Some(json!({"value": "value of the key"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    create_bot(
        &server,
        &root,
        "tenant-a",
        json!({"name": "keeper", "plugin_digest": secrets_digest, "enabled": true}),
    )
    .await;
    let (status, _) = server
        .json(
            Method::PATCH,
            &format!("/api/v1/tenants/tenant-a/users/{alice_id}"),
            Some(&root),
            Some(json!({"role": "plugin_author"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // A reveal, then a denial once the grant no longer names the secret.
    let (mut socket, connected) = chat(&server, &alice, "keeper", "").await;
    next_frame(&mut socket).await.unwrap();
    let reply = say(&mut socket, "is it set?").await;
    assert!(
        reply["content"].as_str().unwrap().contains("is set"),
        "{reply}"
    );
    grant(
        &server,
        &root,
        "tenant-a",
        &secrets_digest,
        json!({"secrets": {"names": []}}),
    )
    .await;
    let refused = say(&mut socket, "and now?").await;
    assert_eq!(refused["type"], "error", "{refused}");
    drop(socket);

    // History, a trap, and an abusive message.
    let conversation = connected["session_id"].as_str().unwrap();
    let path = format!("/api/v1/me/conversations/{conversation}/messages");
    let (status, _) = server.json(Method::GET, &path, Some(&alice), None).await;
    assert_eq!(status, StatusCode::OK);
    add_bot(
        &server,
        &root,
        "tenant-a",
        "bomber",
        "memory-bomb",
        "members",
    )
    .await;
    let (mut socket, _) = chat(&server, &alice, "bomber", "").await;
    next_frame(&mut socket).await.unwrap();
    drop(socket);
    add_bot(&server, &root, "tenant-a", "counter", "counter", "members").await;
    let (mut socket, _) = chat(&server, &alice, "counter", "").await;
    greeting(&mut socket).await;
    assert_eq!(say(&mut socket, &"x".repeat(8192)).await["close"], 1009);

    let (status, _) = server
        .json(Method::POST, "/api/v1/auth/logout", Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Now the trail.
    let success = wait_any(&server, "auth.login.success").await;
    assert_eq!(success.actor, root_id.to_string());
    assert_eq!(success.tenant_id.as_deref(), Some(tenant_id.as_str()));
    assert_eq!(success.source.as_deref(), Some("127.0.0.1"));
    assert!(success.request_id.as_ref().is_some_and(|id| id.len() == 36));

    let created = &named(&server, "user.create").await[0];
    assert_eq!(created.actor, root_id.to_string());
    assert_eq!(created.outcome, "success");
    assert_eq!(created.tenant_id.as_deref(), Some(tenant_id.as_str()));
    assert_eq!(details(created)["status"], 201);

    let wrong = wait_for(
        &server,
        "auth.login.failure",
        ("reason", json!("wrong_password")),
    )
    .await;
    assert_eq!(wrong.actor, "anonymous");
    assert_eq!(
        wrong.target.as_deref(),
        Some(format!("user:{alice_id}").as_str())
    );
    let unknown = wait_for(
        &server,
        "auth.login.failure",
        ("reason", json!("unknown_account")),
    )
    .await;
    assert_eq!(details(&unknown)["username"], "nobody");
    assert_eq!(unknown.tenant_id, None);
    let locked = wait_any(&server, "auth.lockout").await;
    assert_eq!(
        locked.target.as_deref(),
        Some(format!("user:{bob}").as_str())
    );
    assert_eq!(locked.actor, "system");

    let refreshed = wait_any(&server, "auth.token.refresh").await;
    assert_eq!(refreshed.actor, alice_id);
    let reused = wait_any(&server, "auth.token.reuse").await;
    assert_eq!(reused.outcome, "denied");

    let forbidden = wait_for(&server, "authz.denied", ("status", json!(403))).await;
    assert_eq!(forbidden.actor, alice_id);
    let other_tenant = wait_for(&server, "authz.denied", ("reason", json!("another tenant"))).await;
    assert_eq!(other_tenant.tenant_id, Some(tenant_b.id.to_string()));
    assert_eq!(
        other_tenant.target.as_deref(),
        Some("/api/v1/tenants/tenant-a/bots")
    );
    let invalid = wait_for(
        &server,
        "auth.token.invalid",
        ("route", json!("/api/v1/me")),
    )
    .await;
    assert_eq!(invalid.actor, "anonymous");

    for action in [
        "plugin.upload",
        "grant.replace",
        "secret.write",
        "bot.create",
        "user.update",
    ] {
        let found = named(&server, action).await;
        assert!(!found.is_empty(), "no `{action}` event");
        assert!(
            found
                .iter()
                .all(|record| record.actor == root_id.to_string()),
            "{action}"
        );
    }
    let secret = wait_for(
        &server,
        "secret.write",
        ("route", json!("/api/v1/tenants/{tenant}/secrets/{name}")),
    )
    .await;
    assert_eq!(
        secret.target.as_deref(),
        Some("/api/v1/tenants/tenant-a/secrets/API_KEY")
    );

    let reveal = wait_for(&server, "secret.reveal", ("secret", json!("API_KEY"))).await;
    assert_eq!(reveal.actor, alice_id);
    assert_eq!(reveal.target.as_deref(), Some("bot:keeper"));
    let denied = wait_for(
        &server,
        "plugin.capability.denied",
        ("capability", json!("secrets")),
    )
    .await;
    assert_eq!(denied.outcome, "denied");
    assert!(
        details(&denied)["reason"]
            .as_str()
            .unwrap()
            .contains("API_KEY")
    );

    let read = wait_for(&server, "conversation.history.read", ("status", json!(200))).await;
    assert_eq!(read.actor, alice_id);
    let trap = wait_until(&server, "plugin.trap", |record| {
        record.target.as_deref() == Some("bot:bomber")
    })
    .await;
    assert!(details(&trap)["kind"].is_string());
    let abuse = wait_for(&server, "chat.abuse.close", ("close_code", json!(1009))).await;
    assert_eq!(abuse.actor, alice_id);
    assert_eq!(abuse.source.as_deref(), Some("127.0.0.1"));
    assert!(abuse.request_id.is_some());
    let logout = wait_for(&server, "auth.logout", ("status", json!(204))).await;
    assert_eq!(logout.actor, alice_id);

    verified(&server).await;
}

async fn tampering_is_found_at_the_first_bad_event(backend: Backend) {
    let (server, _) = server_with_events(backend).await;
    let intact = verified(&server).await;
    assert!(intact.checked >= 8, "{intact}");
    let all = events(&server).await;
    let (third, fourth) = (all[2].clone(), all[3].clone());

    // One edited field.
    let mut edited = third.clone();
    edited.outcome = "success".to_owned();
    edited.actor = "someone-else".to_owned();
    overwrite(&server, backend, 3, &edited).await;
    assert_eq!(
        broken(&server).await,
        Break {
            seq: 3,
            problem: Problem::Altered
        }
    );
    overwrite(&server, backend, 3, &third).await;
    assert_eq!(
        verified(&server).await,
        intact,
        "restoring the row heals the chain"
    );

    // One deleted row.
    tamper(
        &server,
        backend,
        "DELETE FROM audit_events WHERE seq = 4",
        &[],
    )
    .await;
    assert_eq!(
        broken(&server).await,
        Break {
            seq: 4,
            problem: Problem::Missing
        }
    );
    reinsert(&server, &fourth).await;
    verified(&server).await;

    // Two rows' contents swapped, which also reorders them.
    let (second, sixth) = (all[1].clone(), all[5].clone());
    overwrite(&server, backend, 2, &sixth).await;
    overwrite(&server, backend, 6, &second).await;
    let found = broken(&server).await;
    assert_eq!(found.seq, 2);
    assert!(found.to_string().contains("event 2"), "{found}");
    overwrite(&server, backend, 2, &second).await;
    overwrite(&server, backend, 6, &sixth).await;
    verified(&server).await;

    // The newest event deleted: the head still names it.
    let last = all.last().unwrap().clone();
    tamper(
        &server,
        backend,
        &format!("DELETE FROM audit_events WHERE seq = {}", last.seq),
        &[],
    )
    .await;
    let found = broken(&server).await;
    assert_eq!(found.seq, last.seq);
    assert_eq!(found.problem, Problem::Truncated { head_seq: last.seq });
}

async fn application_cannot_edit_or_delete_events(backend: Backend) {
    let (server, _) = server_with_events(backend).await;
    let pool = server.state.db.pool();
    for sql in [
        "UPDATE audit_events SET actor = 'forged' WHERE seq = 1",
        "UPDATE audit_events SET details = '{}'",
        "DELETE FROM audit_events WHERE seq = 1",
        "DELETE FROM audit_events",
        "UPDATE audit_head SET last_seq = 0",
        "DELETE FROM audit_head",
    ] {
        let error = sqlx::query(sql).execute(pool).await.unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("append-only") || message.contains("audit head"),
            "{sql}: {message}"
        );
    }

    if backend == Backend::Postgres {
        for table in ["audit_events", "audit_checkpoints", "audit_head"] {
            let error = sqlx::query(&format!("TRUNCATE {table}"))
                .execute(pool)
                .await
                .unwrap_err();
            assert!(
                error.to_string().contains("append-only"),
                "{table}: {error}"
            );
        }
    }

    // A checkpoint over recent events, the way to make them deletable, is
    // rejected as well.
    let first = &events(&server).await[0];
    let error = sqlx::query(
        "INSERT INTO audit_checkpoints (seq, hash, occurred_at_ms, created_at_ms) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(first.seq)
    .bind(&first.hash)
    .bind(first.occurred_at_ms)
    .bind(now_ms())
    .execute(pool)
    .await
    .unwrap_err();
    assert!(error.to_string().contains("checkpoint"), "{error}");
    verified(&server).await;
}

async fn concurrent_nodes_build_one_chain(backend: Backend) {
    let server = TestServer::start(backend).await;
    let peer = server.start_peer(Settings::default()).await;
    let record = |node: &TestServer, index: usize| {
        let audit = node.state.audit.clone();
        async move {
            let event = AuditEvent::new("test.concurrent", Outcome::Success)
                .actor(Actor::System)
                .detail("index", index);
            audit.record(event).await;
        }
    };
    let mut tasks = Vec::new();
    for index in 0..200 {
        let node = if index % 2 == 0 { &server } else { &peer };
        tasks.push(tokio::spawn(record(node, index)));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stored = named(&server, "test.concurrent").await;
    assert_eq!(stored.len(), 200);
    let report = verified(&server).await;
    assert_eq!(report.checked, 200);
    assert_eq!(server.state.audit.failed_events(), 0);
    assert_eq!(peer.state.audit.failed_events(), 0);
    drop(peer);
}

async fn retention_keeps_the_chain_verifiable(backend: Backend) {
    let server = TestServer::start(backend).await;
    let day = 86_400_000;
    let old = |days: i64, label: &str| NewRecord {
        occurred_at_ms: now_ms() - days * day,
        actor: "system".to_owned(),
        tenant_id: None,
        action: "test.old".to_owned(),
        target: Some(label.to_owned()),
        outcome: "success".to_owned(),
        request_id: None,
        source: None,
        details: "{}".to_owned(),
    };
    let records: Vec<NewRecord> = (0..5).map(|n| old(400 - n, "ancient")).collect();
    storage::append(&server.state.db, &records).await.unwrap();
    storage::append(&server.state.db, &[old(10, "recent")])
        .await
        .unwrap();
    storage::append(&server.state.db, &[old(500, "backdated")])
        .await
        .unwrap();

    // The server prunes at start too, so either run may have done it.
    apply_retention(&server.state.db, 365).await.unwrap();
    let checkpoint = storage::latest_checkpoint(&server.state.db)
        .await
        .unwrap()
        .expect("a checkpoint");
    assert_eq!(
        checkpoint.seq, 5,
        "only the old prefix goes; the backdated event stays"
    );
    let left = events(&server).await;
    assert_eq!(left[0].seq, 6);
    let targets: Vec<Option<&str>> = left.iter().map(|record| record.target.as_deref()).collect();
    assert!(!targets.contains(&Some("ancient")), "{targets:?}");
    assert!(targets.contains(&Some("recent")), "{targets:?}");
    assert!(targets.contains(&Some("backdated")), "{targets:?}");
    assert!(left.iter().any(|record| record.action == "audit.prune"));
    let report = verified(&server).await;
    assert_eq!(report.checkpoint.map(|found| found.seq), Some(5));

    // Deleting what follows the checkpoint is still refused, and so is a
    // checkpoint that would cover the recent event behind the backdated one.
    let pool = server.state.db.pool();
    assert!(
        sqlx::query("DELETE FROM audit_events WHERE seq = 6")
            .execute(pool)
            .await
            .is_err()
    );
    let backdated = left
        .iter()
        .find(|record| record.target.as_deref() == Some("backdated"))
        .unwrap();
    let covering = sqlx::query(
        "INSERT INTO audit_checkpoints (seq, hash, occurred_at_ms, created_at_ms) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(backdated.seq)
    .bind(&backdated.hash)
    .bind(backdated.occurred_at_ms)
    .bind(now_ms())
    .execute(pool)
    .await;
    assert!(covering.is_err());

    // After more events and a second pass the chain still verifies.
    server
        .state
        .audit
        .record(AuditEvent::new("test.after", Outcome::Success).actor(Actor::System))
        .await;
    apply_retention(&server.state.db, 365).await.unwrap();
    verified(&server).await;
}

async fn query_api_filters_and_is_tenant_scoped(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant_a, root) = server.bootstrap().await;
    let tenant_b = server.create_tenant("tenant-b").await;
    server
        .create_user(&tenant_a, "ann", "ann password 123", Role::TenantAdmin)
        .await;
    server
        .create_user(&tenant_b, "ben", "ben password 123", Role::TenantAdmin)
        .await;
    server
        .create_user(&tenant_a, "una", "una password 123", Role::User)
        .await;
    let ann = access(&server.login_ok("tenant-a", "ann", "ann password 123").await);
    let ben = access(&server.login_ok("tenant-b", "ben", "ben password 123").await);
    let una = access(&server.login_ok("tenant-a", "una", "una password 123").await);
    let start = now_ms() / 1000;
    for n in 0..3 {
        let body = json!({"username": format!("made{n}"), "password": "made password 123"});
        for (tenant, token) in [("tenant-a", &ann), ("tenant-b", &ben)] {
            let path = format!("/api/v1/tenants/{tenant}/users");
            let (status, _) = server
                .json(Method::POST, &path, Some(token), Some(body.clone()))
                .await;
            assert_eq!(status, StatusCode::CREATED);
        }
    }
    let get = |query: &str, token: &str| {
        let path = format!("/api/v1/audit{query}");
        let token = token.to_owned();
        let server = &server;
        async move { server.json(Method::GET, &path, Some(&token), None).await }
    };
    let tenants_of = |body: &Value| -> Vec<String> {
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["tenant_id"].as_str().unwrap_or("-").to_owned())
            .collect()
    };

    // A tenant admin reads their own tenant only, whatever the query.
    let (status, body) = get("", &ann).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = tenants_of(&body);
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|tenant| *tenant == tenant_a.id.to_string()),
        "{seen:?}"
    );
    let (status, _) = get("?tenant=tenant-b", &ann).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = get("?action=user.create", &ben).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["events"].as_array().unwrap().len(), 3);
    assert!(
        tenants_of(&body)
            .iter()
            .all(|tenant| *tenant == tenant_b.id.to_string())
    );

    // A plain user may not read it at all.
    let (status, _) = get("", &una).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A platform admin reads both and filters.
    let (status, body) = get("?action=user.create", &root).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["events"].as_array().unwrap().len(), 6);
    let (_, body) = get("?action=user.create&tenant=tenant-b", &root).await;
    assert_eq!(body["events"].as_array().unwrap().len(), 3);
    let ann_id = server.state.auth.authenticate(&ann).await.unwrap().1.id;
    let (_, body) = get(&format!("?actor={ann_id}&action=user.*"), &root).await;
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{body}");
    assert!(
        events
            .iter()
            .all(|event| event["actor"] == ann_id.to_string())
    );
    let about_ann = Filter {
        involving_user: Some(ann_id.to_string()),
        ..Filter::default()
    };
    let about = storage::query(&server.state.db, &about_ann, Order::OldestFirst, 100)
        .await
        .unwrap();
    assert!(
        about
            .iter()
            .any(|record| record.action == "auth.login.success")
    );
    assert!(about.iter().all(|record| record.actor == ann_id.to_string()
        || record.target.as_deref() == Some(format!("user:{ann_id}").as_str())));
    let (_, body) = get("?action=auth.*", &root).await;
    assert!(
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|event| event["action"].as_str().unwrap().starts_with("auth."))
    );
    let (_, body) = get(&format!("?since={}&action=user.create", start), &root).await;
    assert_eq!(body["events"].as_array().unwrap().len(), 6);
    let (_, body) = get("?until=2000-01-01T00:00:00Z", &root).await;
    assert!(body["events"].as_array().unwrap().is_empty());

    // Pages, newest first.
    let (_, first) = get("?action=user.create&limit=4", &root).await;
    let page: Vec<i64> = first["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(page.len(), 4);
    assert!(page.windows(2).all(|pair| pair[0] > pair[1]));
    let next = first["next_before"].as_i64().unwrap();
    let (_, second) = get(&format!("?action=user.create&limit=4&before={next}"), &root).await;
    assert_eq!(second["events"].as_array().unwrap().len(), 2);
    assert_eq!(second["next_before"], Value::Null);

    // Bad values are a 400 naming the parameter.
    for (query, name) in [
        ("?limit=0", "limit"),
        ("?limit=100000", "limit"),
        ("?since=yesterday", "since"),
        ("?action=DROP%20TABLE", "action"),
        ("?colour=red", "colour"),
    ] {
        let (status, body) = get(query, &root).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(name),
            "{query}: {body}"
        );
    }
}

/// Runs `botserver` against the test server's database.
fn botserver_on(server: &TestServer, args: &[&str]) -> std::process::Output {
    let data_dir = server.data_dir.path().join("data");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_botserver"));
    command
        .args(args)
        .arg("--data-dir")
        .arg(&data_dir)
        .env_remove("RUST_LOG")
        .env_remove("DATABASE_URL");
    if let Some(url) = &server.database_url {
        command.env("DATABASE_URL", url);
    }
    command.output().expect("botserver runs")
}

async fn cli_verifies_and_exports(backend: Backend) {
    let (server, _) = server_with_events(backend).await;
    let count = events(&server).await.len();

    let output = botserver_on(&server, &["audit", "verify"]);
    assert!(output.status.success(), "{}", support::stderr(&output));
    assert!(
        support::stdout(&output).contains("audit log verifies"),
        "{}",
        support::stdout(&output)
    );

    let output = botserver_on(
        &server,
        &["audit", "export", "--since", "2000-01-01T00:00:00Z"],
    );
    assert!(output.status.success(), "{}", support::stderr(&output));
    let lines: Vec<Value> = support::stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), count);
    assert!(
        lines
            .windows(2)
            .all(|pair| pair[0]["seq"].as_i64() < pair[1]["seq"].as_i64())
    );
    assert!(
        lines
            .iter()
            .all(|line| line["hash"].as_str().unwrap().len() == 64)
    );
    let output = botserver_on(
        &server,
        &["audit", "export", "--since", "2999-01-01T00:00:00Z"],
    );
    assert!(output.status.success());
    assert!(support::stdout(&output).is_empty());
    let output = botserver_on(&server, &["audit", "export", "--since", "last week"]);
    assert!(!output.status.success());
    assert!(
        support::stderr(&output).contains("--since"),
        "{}",
        support::stderr(&output)
    );

    let second = events(&server).await[1].clone();
    let mut edited = second.clone();
    edited.target = Some("/elsewhere".to_owned());
    overwrite(&server, backend, 2, &edited).await;
    let output = botserver_on(&server, &["audit", "verify"]);
    assert!(!output.status.success());
    let message = support::stderr(&output);
    assert!(
        message.contains("event 2 does not match its hash"),
        "{message}"
    );
}

async fn disabled_audit_records_nothing(backend: Backend) {
    let settings = Settings {
        env: vec![("BOTSERVER_ENABLE_AUDIT", "false".to_owned())],
    };
    let server = TestServer::start_with(backend, settings).await;
    let (_, root) = server.bootstrap().await;
    let (status, _) = server
        .json(
            Method::POST,
            "/api/v1/tenants",
            Some(&root),
            Some(json!({"name": "quiet"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(!server.state.audit.is_enabled());
    assert!(events(&server).await.is_empty());

    // On by default.
    let server = TestServer::start(backend).await;
    assert!(server.state.audit.is_enabled());
}

async fn canaries_reach_neither_logs_nor_audit(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, root) = server.bootstrap().await;
    let tag = Uuid::new_v4().simple().to_string();
    let password = format!("pw-canary-{tag}");
    let wrong_password = format!("wrong-canary-{tag}");
    let secret = format!("secret-canary-{tag}");
    let message = format!("message-canary-{tag}");

    let body = json!({"username": "dana", "password": password});
    let (status, _) = server
        .json(
            Method::POST,
            "/api/v1/tenants/tenant-a/users",
            Some(&root),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        server
            .login("tenant-a", "dana", &wrong_password)
            .await
            .status(),
        401
    );
    let tokens = server.login_ok("tenant-a", "dana", &password).await;
    let (status, renewed) = server.refresh(&refresh_token(&tokens)).await;
    assert_eq!(status, StatusCode::OK);
    let dana = access(&renewed);
    let (status, _) = server
        .json(
            Method::POST,
            "/api/v1/me/password",
            Some(&dana),
            Some(json!({"current_password": wrong_password, "new_password": password})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A secret a bot reveals, and a message over the real WebSocket.
    let (status, uploaded) = upload(&server, &root, "tenant-a", "secrets-demo").await;
    assert!(status.is_success(), "{uploaded}");
    let secrets_digest = digest(&uploaded);
    grant(
        &server,
        &root,
        "tenant-a",
        &secrets_digest,
        json!({"secrets": {"names": ["API_KEY"]}}),
    )
    .await;
    let (status, _) = server
        .json(
            Method::PUT,
            "/api/v1/tenants/tenant-a/secrets/API_KEY",
            Some(&root),
            Some(json!({"value": secret})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    create_bot(
        &server,
        &root,
        "tenant-a",
        json!({"name": "keeper", "plugin_digest": secrets_digest, "enabled": true}),
    )
    .await;
    add_bot(&server, &root, "tenant-a", "echo", "echo", "members").await;
    let dana = access(&server.login_ok("tenant-a", "dana", &password).await);
    let dana_id = server.state.auth.authenticate(&dana).await.unwrap().1.id;
    let (mut socket, _) = chat(&server, &dana, "keeper", "").await;
    next_frame(&mut socket).await.unwrap();
    let reply = say(&mut socket, &message).await;
    let expected = format!("API_KEY is set ({} characters)", secret.chars().count());
    assert_eq!(
        reply["content"],
        expected.as_str(),
        "the secret was revealed"
    );
    // A ticket in the query string of the upgrade, as browsers send it.
    let ticket = crate::chat::ticket(&server, &dana).await;
    let url = format!(
        "{}/ws?ticket={ticket}&bot=echo",
        server.base.replacen("http", "ws", 1)
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    next_frame(&mut socket).await.unwrap();
    next_frame(&mut socket).await.unwrap();
    let echoed = say(&mut socket, &message).await;
    assert!(
        echoed["content"].as_str().unwrap().contains(&message),
        "{echoed}"
    );
    wait_for(&server, "secret.reveal", ("secret", json!("API_KEY"))).await;

    let refresh = refresh_token(&tokens);
    let access_token = access(&tokens);
    let canaries = [
        ("password", password.as_str()),
        ("wrong password", wrong_password.as_str()),
        ("secret", secret.as_str()),
        ("message", message.as_str()),
        ("access token", access_token.as_str()),
        ("refresh token", refresh.as_str()),
        ("ticket", ticket.as_str()),
        ("root's access token", root.as_str()),
    ];
    let logs = captured_logs();
    let trail: String = events(&server)
        .await
        .iter()
        .map(|record| serde_json::to_string(record).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(trail.contains("secret.reveal"), "the trail was read");
    let dana_field = format!(r#""user.id":"{dana_id}""#);
    assert!(
        logs.lines()
            .any(|line| line.contains(r#""name":"http.request""#) && line.contains(&dana_field)),
        "request spans carry the user id"
    );
    for (name, canary) in canaries {
        let leaks: Vec<&str> = logs.lines().filter(|line| line.contains(canary)).collect();
        assert!(
            leaks.is_empty(),
            "the {name} appears in log lines: {leaks:#?}"
        );
        assert!(
            !trail.contains(canary),
            "the {name} appears in the audit trail"
        );
    }
}

async fn serve_writes_rotating_json_log_files(backend: Backend) {
    let data_dir = tempfile::tempdir().unwrap();
    let log_dir = data_dir.path().join("logs");
    let mut database = None;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_botserver"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path().join("data"))
        .env("RUST_LOG", "info")
        .env("BOTSERVER_LOG_DIR", &log_dir)
        .env("BOTSERVER_LOG_RETENTION_DAYS", "3")
        .env_remove("DATABASE_URL")
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    if backend == Backend::Postgres {
        let (name, url) = crate::harness::create_pg_database().await;
        command.env("DATABASE_URL", url);
        database = Some(name);
    }
    // An old file that the retention sweep at start deletes.
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::write(log_dir.join("botserver.2001-01-01.log"), "{}\n").unwrap();
    let mut child = command.spawn().unwrap();

    let today = log_dir.join(format!(
        "botserver.{}.log",
        &botserver::audit::format_time(now_ms())[..10]
    ));
    let written = eventually(Duration::from_secs(60), || {
        let today = today.clone();
        async move {
            std::fs::read_to_string(&today).is_ok_and(|text| text.contains("server listening"))
        }
    })
    .await;
    let old_gone = eventually(Duration::from_secs(20), || {
        let old = log_dir.join("botserver.2001-01-01.log");
        async move { !old.exists() }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    if let Some(name) = database {
        crate::harness::drop_pg_database(&name);
    }
    assert!(written, "no log line in {}", today.display());
    assert!(old_gone, "the old log file was kept");
    let text = std::fs::read_to_string(&today).unwrap();
    for line in text.lines() {
        let parsed: Value = serde_json::from_str(line).unwrap();
        assert!(parsed["level"].is_string(), "{line}");
    }
}
