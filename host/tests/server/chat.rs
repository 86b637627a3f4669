//! Chat over WebSocket with a real client (tokio-tungstenite): tickets,
//! the origin check, frames, history, revocation and hostile neighbours.

use std::time::Duration;

use botserver::auth::{Role, Ticket, TicketHolder};
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::both_backends;
use crate::bots::{create_bot, digest, grant, upload};
use crate::harness::{Backend, Settings, TestServer, access};

both_backends!(
    counter_counts_and_continues_after_reconnect,
    cross_site_upgrades_are_refused_before_the_ticket_is_spent,
    tickets_are_single_use_short_lived_and_bound,
    bad_frames_get_errors_and_abuse_closes,
    revoking_kv_mid_conversation_denies_the_next_message,
    hostile_bots_trip_their_breaker_while_another_tenant_chats,
    anonymous_visitors_reach_only_public_bots,
    logout_ends_the_chat,
    silent_peers_are_dropped_and_answering_ones_kept,
);

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const USER_PASSWORD: &str = "alice password 1";

/// Longest wait for one frame; bots answer in milliseconds.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

struct Chat {
    server: TestServer,
    root: String,
    alice: String,
}

/// A server with tenant `tenant-a`, its admin `root`, user `alice`, and an
/// enabled `counter` bot granted `kv`.
async fn setup_with(backend: Backend, settings: Settings) -> Chat {
    let server = TestServer::start_with(backend, settings).await;
    let (tenant, root) = server.bootstrap().await;
    server
        .create_user(&tenant, "alice", USER_PASSWORD, Role::User)
        .await;
    add_bot(&server, &root, "tenant-a", "counter", "counter", "members").await;
    let alice = access(&server.login_ok("tenant-a", "alice", USER_PASSWORD).await);
    Chat {
        server,
        root,
        alice,
    }
}

async fn setup(backend: Backend) -> Chat {
    setup_with(backend, Settings::default()).await
}

pub(crate) async fn add_bot(
    server: &TestServer,
    token: &str,
    tenant: &str,
    name: &str,
    plugin: &str,
    visibility: &str,
) -> String {
    let (status, body) = upload(server, token, tenant, plugin).await;
    assert!(status.is_success(), "{body}");
    let digest = digest(&body);
    let grants = if plugin == "counter" {
        json!({"kv": {"quota_bytes": 65536}})
    } else {
        json!({})
    };
    grant(server, token, tenant, &digest, grants).await;
    create_bot(
        server,
        token,
        tenant,
        json!({"name": name, "plugin_digest": digest, "enabled": true, "visibility": visibility}),
    )
    .await;
    digest
}

pub(crate) async fn ticket(server: &TestServer, token: &str) -> String {
    let (status, body) = server
        .json(Method::POST, "/api/v1/auth/ws-ticket", Some(token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["expires_in"], 30);
    body["ticket"].as_str().unwrap().to_owned()
}

fn own_origin(server: &TestServer) -> String {
    server.base.clone()
}

/// Opens `/ws?<query>`, or returns the HTTP status of the refusal.
async fn open(server: &TestServer, query: &str, origin: Option<&str>) -> Result<Socket, u16> {
    let url = format!("{}/ws?{query}", server.base.replacen("http", "ws", 1));
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(error) => panic!("connect failed: {error}"),
    }
}

/// Opens a chat with `bot` for the holder of `token` from the server's own
/// origin, and returns the socket and the `connected` frame.
pub(crate) async fn chat(
    server: &TestServer,
    token: &str,
    bot: &str,
    extra: &str,
) -> (Socket, Value) {
    let ticket = ticket(server, token).await;
    let query = format!("ticket={ticket}&bot={bot}{extra}");
    let mut socket = open(server, &query, Some(&own_origin(server)))
        .await
        .unwrap_or_else(|status| panic!("upgrade refused with {status}"));
    let connected = next_frame(&mut socket).await.expect("connected frame");
    assert_eq!(connected["type"], "connected", "{connected}");
    (socket, connected)
}

/// The next JSON frame, or `None` when the server closed; close frames
/// are returned as `{"close": code}`.
pub(crate) async fn next_frame(socket: &mut Socket) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(FRAME_TIMEOUT, socket.next())
            .await
            .expect("no frame from the server in time")?;
        match message {
            Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Message::Close(frame)) => {
                return Some(json!({"close": frame.map(|frame| u16::from(frame.code))}));
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

async fn send(socket: &mut Socket, content: &str) {
    let frame = json!({"content": content, "message_type": 1, "channel": "web"});
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

pub(crate) async fn say(socket: &mut Socket, content: &str) -> Value {
    send(socket, content).await;
    next_frame(socket).await.expect("a reply")
}

/// Skips the counter's greeting.
pub(crate) async fn greeting(socket: &mut Socket) {
    let frame = next_frame(socket).await.expect("greeting");
    assert_eq!(frame["message_type"], 2, "{frame}");
}

async fn counter_counts_and_continues_after_reconnect(backend: Backend) {
    let Chat { server, alice, .. } = setup(backend).await;

    let (mut socket, connected) = chat(&server, &alice, "counter", "").await;
    assert_eq!(connected["bot_id"], "counter");
    let session_id = connected["session_id"].as_str().unwrap().to_owned();
    let user_id = connected["user_id"].as_str().unwrap().to_owned();
    greeting(&mut socket).await;
    for expected in ["1", "2", "3"] {
        let reply = say(&mut socket, "canary-message-7f3a").await;
        assert_eq!(reply["content"], expected, "{reply}");
        assert_eq!(reply["message_type"], 2);
        assert_eq!(reply["is_complete"], true);
        assert_eq!(reply["session_id"], session_id.as_str());
        assert_eq!(reply["user_id"], user_id.as_str());
    }
    socket.close(None).await.unwrap();

    let (mut socket, connected) = chat(&server, &alice, "counter", "").await;
    assert_ne!(connected["session_id"], session_id.as_str());
    assert_eq!(connected["user_id"], user_id.as_str());
    greeting(&mut socket).await;
    assert_eq!(say(&mut socket, "again").await["content"], "4");

    // The first conversation continues under its own id.
    let extra = format!("&session_id={session_id}");
    let (mut socket, connected) = chat(&server, &alice, "counter", &extra).await;
    assert_eq!(connected["session_id"], session_id.as_str());
    let resumed = next_frame(&mut socket).await.unwrap();
    assert_eq!(resumed["content"], "", "{resumed}");
    assert_eq!(say(&mut socket, "more").await["content"], "5");

    let (status, list) = server
        .json(Method::GET, "/api/v1/me/conversations", Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["conversations"].as_array().unwrap().len(), 2, "{list}");
    let path = format!("/api/v1/me/conversations/{session_id}/messages");
    let (status, history) = server.json(Method::GET, &path, Some(&alice), None).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let messages: Vec<(String, String)> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| {
            (
                message["role"].as_str().unwrap().to_owned(),
                message["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(messages.len(), 9, "{history}");
    assert_eq!(messages[1], ("user".into(), "canary-message-7f3a".into()));
    assert_eq!(messages[2], ("bot".into(), "1".into()));
    assert_eq!(messages[8], ("bot".into(), "5".into()));

    // Nobody else reads it, not even the tenant's admin through this route.
    let root = access(
        &server
            .login_ok("tenant-a", "root", crate::harness::ADMIN_PASSWORD)
            .await,
    );
    let (status, _) = server.json(Method::GET, &path, Some(&root), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Message text and key-value values are ciphertext at rest.
    let sealed: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT content_sealed FROM messages")
        .fetch_all(server.state.db.pool())
        .await
        .unwrap();
    assert_eq!(sealed.len(), 12);
    for (bytes,) in &sealed {
        assert!(!contains(bytes, b"canary-message-7f3a"));
        assert!(!contains(bytes, b"Send me anything"));
    }
    let values: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT value_sealed FROM kv_entries")
        .fetch_all(server.state.db.pool())
        .await
        .unwrap();
    assert_eq!(values.len(), 1);
    assert_ne!(values[0].0, b"5", "the count is stored in clear");
}

async fn tenant_id(server: &TestServer, name: &str) -> botserver::storage::TenantId {
    botserver::storage::tenants::find(&server.state.db, name)
        .await
        .unwrap()
        .unwrap()
        .id
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

async fn cross_site_upgrades_are_refused_before_the_ticket_is_spent(backend: Backend) {
    let settings = Settings {
        env: vec![(
            "BOTSERVER_ALLOWED_ORIGINS",
            "https://app.example.test".to_owned(),
        )],
    };
    let Chat { server, alice, .. } = setup_with(backend, settings).await;
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let ticket = ticket(&server, &alice).await;
    let query = format!("ticket={ticket}&bot=counter");
    for origin in [
        "https://evil.test",
        "null",
        "https://app.example.test.evil.test",
        "https://xapp.example.test",
        "https://app.example.tes",
        "http://app.example.test",
        "https://app.example.test:8443",
        "wss://app.example.test",
        "https://app.example.test/",
        &format!("https://127.0.0.1:{port}"),
        &format!("http://127.0.0.2:{port}"),
        &format!("http://127.0.0.1:{}", port.parse::<u16>().unwrap() ^ 1),
        "",
    ] {
        assert_eq!(
            open(&server, &query, Some(origin)).await.err(),
            Some(403),
            "{origin}"
        );
    }
    // The refusals did not spend the ticket: the listed origin opens it.
    let mut socket = open(&server, &query, Some("https://app.example.test"))
        .await
        .expect("allowed origin");
    assert_eq!(next_frame(&mut socket).await.unwrap()["type"], "connected");

    // The server's own origin is allowed, in any case of its scheme.
    let own = own_origin(&server).replacen("http", "HTTP", 1);
    let query = format!("ticket={}&bot=counter", self::ticket(&server, &alice).await);
    assert!(open(&server, &query, Some(&own)).await.is_ok());
}

async fn tickets_are_single_use_short_lived_and_bound(backend: Backend) {
    let Chat {
        server,
        root,
        alice,
    } = setup(backend).await;
    let origin = own_origin(&server);
    let origin = Some(origin.as_str());

    let used = ticket(&server, &alice).await;
    let query = format!("ticket={used}&bot=counter");
    assert!(open(&server, &query, origin).await.is_ok());
    assert_eq!(open(&server, &query, origin).await.err(), Some(401));

    // Issued straight into the server's store, already expired.
    let expired = server
        .state
        .tickets
        .clone()
        .with_ttl(Duration::ZERO)
        .issue(&Ticket {
            tenant: tenant_id(&server, "tenant-a").await,
            holder: TicketHolder::Anonymous {
                visitor: uuid::Uuid::new_v4(),
            },
            bot: Some("counter".to_owned()),
        })
        .await
        .unwrap();
    let query = format!("ticket={}&bot=counter", expired.as_str());
    assert_eq!(open(&server, &query, origin).await.err(), Some(401));

    for query in [
        "bot=counter".to_owned(),
        "ticket=&bot=counter".to_owned(),
        format!("ticket={}&bot=counter", "A".repeat(43)),
        format!("ticket={}&bot=counter", "A".repeat(10_000)),
    ] {
        assert_eq!(
            open(&server, &query, origin).await.err(),
            Some(401),
            "{query}"
        );
    }

    // A ticket is checked after the bot name and session id are, so a
    // malformed request does not spend it.
    let fresh = ticket(&server, &alice).await;
    for query in [
        format!("ticket={fresh}"),
        format!("ticket={fresh}&bot=../etc"),
        format!("ticket={fresh}&bot=counter&session_id=nope"),
    ] {
        assert_eq!(
            open(&server, &query, origin).await.err(),
            Some(400),
            "{query}"
        );
    }
    let query = format!("ticket={fresh}&bot=missing");
    assert_eq!(open(&server, &query, origin).await.err(), Some(404));

    // Another user's conversation cannot be continued.
    let (_, connected) = chat(&server, &root, "counter", "").await;
    let theirs = connected["session_id"].as_str().unwrap();
    let query = format!(
        "ticket={}&bot=counter&session_id={theirs}",
        ticket(&server, &alice).await
    );
    assert_eq!(open(&server, &query, origin).await.err(), Some(404));

    // A ticket does not cross tenants: tenant B's bot is not found.
    let tenant_b = server.create_tenant("tenant-b").await;
    server
        .create_user(
            &tenant_b,
            "admin-b",
            "admin b password 1",
            Role::TenantAdmin,
        )
        .await;
    let admin_b = access(
        &server
            .login_ok("tenant-b", "admin-b", "admin b password 1")
            .await,
    );
    add_bot(&server, &admin_b, "tenant-b", "echo-b", "echo", "public").await;
    let query = format!("ticket={}&bot=echo-b", ticket(&server, &alice).await);
    assert_eq!(open(&server, &query, origin).await.err(), Some(404));

    // A disabled bot refuses the upgrade.
    let (status, body) = server
        .json(
            Method::PATCH,
            "/api/v1/tenants/tenant-a/bots/counter",
            Some(&root),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let query = format!("ticket={}&bot=counter", ticket(&server, &alice).await);
    assert_eq!(open(&server, &query, origin).await.err(), Some(409));

    // A ticket needs a live token.
    let (status, _) = server
        .json(Method::POST, "/api/v1/auth/ws-ticket", Some("forged"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn bad_frames_get_errors_and_abuse_closes(backend: Backend) {
    let settings = Settings {
        env: vec![("BOTSERVER_WS_MAX_MESSAGE_SIZE", "4096".to_owned())],
    };
    let Chat { server, alice, .. } = setup_with(backend, settings).await;
    let (mut socket, _) = chat(&server, &alice, "counter", "").await;
    greeting(&mut socket).await;

    for bad in ["not json", "[1]", r#"{"content": 5, "message_type": 1}"#] {
        socket.send(Message::Text(bad.into())).await.unwrap();
        let frame = next_frame(&mut socket).await.unwrap();
        assert_eq!(frame["type"], "error", "{frame}");
        assert_eq!(frame["code"], "invalid_frame", "{frame}");
    }
    socket
        .send(Message::Text(r#"{"content":"x","message_type":6}"#.into()))
        .await
        .unwrap();
    let frame = next_frame(&mut socket).await.unwrap();
    assert_eq!(frame["code"], "unsupported_message_type", "{frame}");
    socket
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut socket).await.unwrap()["code"],
        "invalid_frame"
    );
    // The connection survived all of that.
    assert_eq!(say(&mut socket, "hi").await["content"], "1");

    // One message over the cap closes with 1009.
    send(&mut socket, &"x".repeat(8192)).await;
    assert_eq!(next_frame(&mut socket).await.unwrap()["close"], 1009);

    // Repeated invalid frames close with 1008.
    let (mut socket, _) = chat(&server, &alice, "counter", "").await;
    greeting(&mut socket).await;
    // One frame at a time: a server that closes while unread frames wait
    // in its socket may reset the connection before the close frame lands.
    let mut last = Value::Null;
    for _ in 0..20 {
        socket.send(Message::Text("{".into())).await.unwrap();
        last = next_frame(&mut socket).await.unwrap();
        if last.get("close").is_some() {
            break;
        }
    }
    assert_eq!(last["close"], 1008, "{last}");
}

async fn revoking_kv_mid_conversation_denies_the_next_message(backend: Backend) {
    let Chat {
        server,
        root,
        alice,
    } = setup(backend).await;
    let (mut socket, _) = chat(&server, &alice, "counter", "").await;
    greeting(&mut socket).await;
    assert_eq!(say(&mut socket, "one").await["content"], "1");

    let (_, bot) = server
        .json(
            Method::GET,
            "/api/v1/tenants/tenant-a/bots/counter",
            Some(&root),
            None,
        )
        .await;
    let digest = bot["plugin_digest"].as_str().unwrap();
    let path = format!("/api/v1/tenants/tenant-a/plugins/{digest}/grants/kv");
    let (status, body) = server.json(Method::DELETE, &path, Some(&root), None).await;
    assert!(status.is_success(), "{body}");

    let frame = say(&mut socket, "two").await;
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], "bot_failed", "{frame}");
    assert!(!frame.to_string().contains("denied"), "{frame}");

    // Its admin sees why in the bot's status.
    let (_, bot) = server
        .json(
            Method::GET,
            "/api/v1/tenants/tenant-a/bots/counter",
            Some(&root),
            None,
        )
        .await;
    let reason = bot["status"]["last_failure"]["reason"].as_str().unwrap();
    assert!(reason.contains("denied"), "{reason}");

    // Enabling it again is refused until the grant is back.
    let (status, body) = server
        .json(
            Method::PATCH,
            "/api/v1/tenants/tenant-a/bots/counter",
            Some(&root),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.to_string().contains("kv"), "{body}");
}

async fn hostile_bots_trip_their_breaker_while_another_tenant_chats(backend: Backend) {
    let Chat { server, root, .. } = setup(backend).await;
    for (bot, plugin) in [("spinner", "spin-loop"), ("bomber", "memory-bomb")] {
        add_bot(&server, &root, "tenant-a", bot, plugin, "members").await;
    }
    let tenant_b = server.create_tenant("tenant-b").await;
    server
        .create_user(&tenant_b, "bob", "bob password 1", Role::TenantAdmin)
        .await;
    let bob = access(&server.login_ok("tenant-b", "bob", "bob password 1").await);
    add_bot(&server, &bob, "tenant-b", "counter", "counter", "members").await;

    let hostile = async {
        let mut tripped = Vec::new();
        for bot in ["spinner", "bomber"] {
            let (mut socket, _) = chat(&server, &root, bot, "").await;
            // The greeting traps, and the client gets an empty frame.
            let empty = next_frame(&mut socket).await.unwrap();
            assert_eq!(empty["content"], "", "{empty}");
            let mut codes = Vec::new();
            for _ in 0..8 {
                codes.push(say(&mut socket, "go").await["code"].clone());
            }
            tripped.push((bot, codes));
        }
        tripped
    };
    let good = async {
        let (mut socket, _) = chat(&server, &bob, "counter", "").await;
        greeting(&mut socket).await;
        let mut answers = Vec::new();
        for _ in 0..20 {
            answers.push(say(&mut socket, "ping").await["content"].clone());
        }
        answers
    };
    let (tripped, answers) = tokio::join!(hostile, good);

    let expected: Vec<Value> = (1..=20).map(|n| json!(n.to_string())).collect();
    assert_eq!(answers, expected);
    for (bot, codes) in tripped {
        // The greeting traps too, so the breaker's fifth trap is the
        // fourth or fifth message; every later one finds the bot disabled.
        let failed = codes
            .iter()
            .take_while(|code| *code == "bot_failed")
            .count();
        assert!((4..=5).contains(&failed), "{bot}: {codes:?}");
        assert!(
            codes[failed..].iter().all(|code| code == "bot_disabled"),
            "{bot}: {codes:?}"
        );
        let path = format!("/api/v1/tenants/tenant-a/bots/{bot}");
        let (_, body) = server.json(Method::GET, &path, Some(&root), None).await;
        assert_eq!(body["enabled"], false, "{body}");
        assert_eq!(body["status"]["breaker"]["state"], "open", "{body}");
        let reason = body["status"]["last_failure"]["reason"].as_str().unwrap();
        assert!(
            ["fuel", "memory", "deadline"]
                .iter()
                .any(|limit| reason.contains(limit)),
            "{bot}: {reason}"
        );
    }
}

async fn anonymous_visitors_reach_only_public_bots(backend: Backend) {
    let Chat {
        server,
        root,
        alice,
    } = setup(backend).await;
    add_bot(&server, &root, "tenant-a", "echo", "echo", "public").await;
    let path = "/api/v1/tenants/tenant-a/bots/echo/anonymous-session";
    let (status, body) = server.json(Method::POST, path, None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ticket = body["ticket"].as_str().unwrap();
    let user_id = body["user_id"].as_str().unwrap();

    // The ticket opens that bot only.
    let origin = own_origin(&server);
    let query = format!("ticket={ticket}&bot=counter");
    assert_eq!(open(&server, &query, Some(&origin)).await.err(), Some(404));
    let (_, body) = server.json(Method::POST, path, None, None).await;
    let query = format!("ticket={}&bot=echo", body["ticket"].as_str().unwrap());
    let mut socket = open(&server, &query, Some(&origin)).await.unwrap();
    let connected = next_frame(&mut socket).await.unwrap();
    assert_eq!(connected["bot_id"], "echo");
    assert_ne!(connected["user_id"], user_id, "visitors share an id");
    greeting(&mut socket).await;
    let reply = say(&mut socket, "hello there").await;
    assert!(
        reply["content"].as_str().unwrap().contains("hello there"),
        "{reply}"
    );

    // Members-only bots, unknown bots and unknown tenants look the same.
    for path in [
        "/api/v1/tenants/tenant-a/bots/counter/anonymous-session",
        "/api/v1/tenants/tenant-a/bots/missing/anonymous-session",
        "/api/v1/tenants/nope/bots/echo/anonymous-session",
    ] {
        let (status, _) = server.json(Method::POST, path, None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }

    // Members see the enabled bots of their tenant.
    let (status, body) = server
        .json(Method::GET, "/api/v1/me/bots", Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = body["bots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|bot| bot["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["counter", "echo"]);
}

async fn logout_ends_the_chat(backend: Backend) {
    let Chat { server, alice, .. } = setup(backend).await;
    let (mut socket, _) = chat(&server, &alice, "counter", "").await;
    greeting(&mut socket).await;
    assert_eq!(say(&mut socket, "one").await["content"], "1");
    let unused = ticket(&server, &alice).await;

    let (status, _) = server
        .json(Method::POST, "/api/v1/auth/logout", Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(say(&mut socket, "two").await["close"], 1008);
    let query = format!("ticket={unused}&bot=counter");
    let origin = own_origin(&server);
    assert_eq!(open(&server, &query, Some(&origin)).await.err(), Some(401));
}

async fn silent_peers_are_dropped_and_answering_ones_kept(backend: Backend) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let settings = Settings {
        env: vec![("BOTSERVER_WS_PING_INTERVAL", "1".to_owned())],
    };
    let Chat { server, alice, .. } = setup_with(backend, settings).await;

    // A peer that answers pings (the client library does) stays connected
    // across several intervals.
    let (mut socket, _) = chat(&server, &alice, "counter", "").await;
    let mut pings = 0;
    while pings < 3 {
        let message = tokio::time::timeout(FRAME_TIMEOUT, socket.next())
            .await
            .expect("no ping in time")
            .expect("connection dropped")
            .unwrap();
        if matches!(message, Message::Ping(_)) {
            pings += 1;
        }
    }
    assert_eq!(say(&mut socket, "still here").await["content"], "1");

    // A peer that completes the upgrade and then reads nothing never
    // answers a ping, and the server hangs up on it.
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "GET /ws?ticket={}&bot=counter HTTP/1.1\r\nhost: {address}\r\nupgrade: websocket\r\n\
         connection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         sec-websocket-version: 13\r\n\r\n",
        ticket(&server, &alice).await
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(FRAME_TIMEOUT, stream.read_to_end(&mut received))
        .await
        .expect("the server kept a silent peer")
        .unwrap();
    assert!(
        received.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(received.contains(&0x89), "no ping frame was sent");
}
