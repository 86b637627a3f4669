//! The setup of `botserver demo`: run twice on one server, it leaves the
//! tenant, accounts, bots and a sealed FAQ knowledge base that the FAQ bot
//! answers from, in process and over WebSocket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use botserver::capabilities::kv::{KvNamespace, KvStore as _};
use botserver::cli::demo::knowledge::{self, FaqEntry};
use botserver::cli::demo::{self, DemoAccounts, DemoSources};
use botserver::runtime::{Event, UserMessage};
use botserver::storage::kv::DbKvStore;
use botserver::storage::{Tenant, tenants};
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::both_backends;
use crate::harness::{Backend, TestServer, access};
use crate::support::plugin;

both_backends!(demo_seed_is_idempotent_and_sealed);

/// A question of the demo's knowledge file and the start of its answer.
const KNOWN_QUESTION: &str = "What is a grant?";
const KNOWN_ANSWER_START: &str = "A grant gives one plugin version a capability";

fn sources() -> DemoSources {
    for name in ["echo", "counter"] {
        plugin(name);
    }
    let faq = plugin("faq");
    DemoSources {
        plugins: faq.parent().map(Path::to_path_buf).unwrap(),
        knowledge: knowledge_file(),
    }
}

fn knowledge_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/faq.md")
}

async fn demo_tenant(server: &TestServer) -> Tenant {
    tenants::find(&server.state.db, demo::TENANT)
        .await
        .unwrap()
        .expect("demo tenant")
}

async fn seed(server: &TestServer) -> DemoAccounts {
    demo::seed(&server.state, &sources())
        .await
        .unwrap_or_else(|error| panic!("demo setup failed: {error:#}"))
}

async fn demo_seed_is_idempotent_and_sealed(backend: Backend) {
    let server = TestServer::start(backend).await;
    let first = seed(&server).await;

    // A stale entry beyond the file's count must be gone after the next run.
    let tenant = demo_tenant(&server).await;
    let store = DbKvStore::new(server.state.db.clone(), server.state.vault.clone());
    let namespace = KvNamespace {
        tenant: tenant.id.to_string(),
        bot: demo::FAQ_BOT.to_owned(),
        user: None,
    };
    store
        .set_within_quota(
            &namespace,
            "faq/0999",
            b"Stale?\nYes.",
            demo::KV_QUOTA_BYTES,
        )
        .await
        .unwrap();

    let second = seed(&server).await;
    assert_eq!(demo_tenant(&server).await.id, tenant.id);
    check_accounts(&server, &first, &second).await;
    let admin_password = second.admin.password.expose();
    let admin = access(
        &server
            .login_ok(demo::TENANT, demo::ADMIN, admin_password)
            .await,
    );
    check_bots(&server, &admin).await;

    let entries = knowledge::read(&knowledge_file()).unwrap();
    check_sealed_entries(&server, &tenant, &entries).await;
    check_answers(&server, &tenant, &entries).await;
    check_websocket_chat(&server).await;
}

async fn check_accounts(server: &TestServer, first: &DemoAccounts, second: &DemoAccounts) {
    for (old, new) in [(&first.admin, &second.admin), (&first.user, &second.user)] {
        assert_ne!(old.password.expose(), new.password.expose());
        let response = server
            .login(demo::TENANT, old.username, old.password.expose())
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "old password of `{}` still works",
            old.username
        );
        server
            .login_ok(demo::TENANT, new.username, new.password.expose())
            .await;
    }
}

async fn check_bots(server: &TestServer, admin: &str) {
    let path = format!("/api/v1/tenants/{}/bots", demo::TENANT);
    let (status, body) = server.json(Method::GET, &path, Some(admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bots = body.as_array().expect("bot list");
    let names: Vec<&str> = bots.iter().filter_map(|bot| bot["name"].as_str()).collect();
    assert_eq!(names, ["counter", "echo", "faq"]);
    for bot in bots {
        assert_eq!(bot["enabled"], json!(true), "{bot}");
        let expected = if bot["name"] == "faq" {
            "public"
        } else {
            "members"
        };
        assert_eq!(bot["visibility"], json!(expected), "{bot}");
    }
}

async fn check_sealed_entries(server: &TestServer, tenant: &Tenant, entries: &[FaqEntry]) {
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT key, value_sealed FROM kv_entries \
         WHERE tenant_id = $1 AND bot_name = $2 AND scope = 'bot' ORDER BY key",
    )
    .bind(tenant.id.to_string())
    .bind(demo::FAQ_BOT)
    .fetch_all(server.state.db.pool())
    .await
    .unwrap();
    let keys: Vec<&str> = rows.iter().map(|(key, _)| key.as_str()).collect();
    let expected: Vec<String> = (0..entries.len()).map(knowledge::key).collect();
    assert_eq!(keys, expected);
    for ((key, sealed), entry) in rows.iter().zip(entries) {
        let answer = entry.answer.as_bytes();
        let found = sealed.windows(answer.len()).any(|window| window == answer);
        assert!(!found, "answer of `{key}` stored in plaintext");
        let question = entry.question.as_bytes();
        let found = sealed
            .windows(question.len())
            .any(|window| window == question);
        assert!(!found, "question of `{key}` stored in plaintext");
    }
}

fn message(text: &str) -> Event {
    Event::UserMessage(UserMessage {
        text: text.to_owned(),
        attributes: Vec::new(),
    })
}

/// Asks every question as written and expects its own answer back.
async fn check_answers(server: &TestServer, tenant: &Tenant, entries: &[FaqEntry]) {
    for entry in entries {
        let response = server
            .state
            .bots
            .handle_event(
                tenant.id,
                demo::FAQ_BOT,
                "visitor",
                "conversation-1",
                message(&entry.question),
            )
            .await
            .unwrap_or_else(|error| panic!("`{}` failed: {error}", entry.question));
        let replies: Vec<&str> = response.replies.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(replies, [entry.answer.as_str()], "{}", entry.question);
        let suggestions = response.replies[0].suggestions.len();
        assert_eq!(suggestions, 3, "{}", entry.question);
    }
}

/// Reads the next text frame as JSON, failing after a few seconds.
async fn next_frame<S>(socket: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(text) = item {
            return serde_json::from_str(text.as_str()).expect("JSON frame");
        }
    }
}

/// Chats with the public FAQ bot as an anonymous visitor.
async fn check_websocket_chat(server: &TestServer) {
    let path = format!(
        "/api/v1/tenants/{}/bots/{}/anonymous-session",
        demo::TENANT,
        demo::FAQ_BOT
    );
    let (status, body) = server.json(Method::POST, &path, None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ticket = body["ticket"].as_str().expect("ticket");
    let address = server.base.trim_start_matches("http://");
    let url = format!("ws://{address}/ws?ticket={ticket}&bot={}", demo::FAQ_BOT);
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("WebSocket upgrade");

    let connected = next_frame(&mut socket).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let greeting = next_frame(&mut socket).await;
    assert_eq!(greeting["suggestions"].as_array().map(Vec::len), Some(3));

    let question = json!({"content": KNOWN_QUESTION, "message_type": 1});
    socket
        .send(Message::text(question.to_string()))
        .await
        .unwrap();
    let answer = next_frame(&mut socket).await;
    let content = answer["content"].as_str().unwrap_or_default();
    assert!(content.starts_with(KNOWN_ANSWER_START), "{answer}");
}
