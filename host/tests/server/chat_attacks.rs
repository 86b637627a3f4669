//! Attacks on chat over WebSocket found by testing the running server:
//! bots that change under an open chat, peers that stop reading, plugins
//! that hold the async workers, message text in logs, and query errors
//! outside problem details.

use std::time::{Duration, Instant};

use botserver::auth::Role;
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::both_backends;
use crate::bots::{create_bot, digest, grant, upload};
use crate::harness::{Backend, Settings, TestServer, access, captured_logs};

both_backends!(
    visitor_loses_a_bot_made_members_only,
    deleted_bot_ends_the_chat_without_error_logs,
    chat_text_stays_out_of_logs,
    history_query_errors_are_problem_details,
    spinning_bot_leaves_other_tenants_answered,
    peer_that_stops_reading_is_dropped,
);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const USER_PASSWORD: &str = "alice password 1";
const BOB_PASSWORD: &str = "bob password for b 1";

/// Longest wait for one frame. Bots reply in milliseconds.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Chats with the spinning bot at once: more than the four worker threads
/// of the test runtime.
const SPINNING_CHATS: usize = 6;

/// Deadline given to the spinning bot, far longer than any reply takes.
const SPIN_DEADLINE: Duration = Duration::from_secs(30);

struct Setup {
    server: TestServer,
    root: String,
    alice: String,
}

/// Tenant `tenant-a` with admin `root` and user `alice`.
async fn setup_with(backend: Backend, settings: Settings) -> Setup {
    let server = TestServer::start_with(backend, settings).await;
    let (tenant, root) = server.bootstrap().await;
    server
        .create_user(&tenant, "alice", USER_PASSWORD, Role::User)
        .await;
    let alice = access(&server.login_ok("tenant-a", "alice", USER_PASSWORD).await);
    Setup {
        server,
        root,
        alice,
    }
}

async fn setup(backend: Backend) -> Setup {
    setup_with(backend, Settings::default()).await
}

/// Uploads `plugin` to `tenant`, grants what it requests, and creates the
/// enabled bot `name`.
async fn add_bot(
    server: &TestServer,
    token: &str,
    tenant: &str,
    name: &str,
    plugin: &str,
    visibility: &str,
) {
    let (status, body) = upload(server, token, tenant, plugin).await;
    assert!(status.is_success(), "{body}");
    let digest = digest(&body);
    let grants = if plugin == "counter" {
        json!({"kv": {"quota_bytes": 65536}})
    } else {
        json!({})
    };
    grant(server, token, tenant, &digest, grants).await;
    let bot =
        json!({"name": name, "plugin_digest": digest, "enabled": true, "visibility": visibility});
    create_bot(server, token, tenant, bot).await;
}

async fn ticket(server: &TestServer, token: &str) -> String {
    let (status, body) = server
        .json(Method::POST, "/api/v1/auth/ws-ticket", Some(token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["ticket"].as_str().unwrap().to_owned()
}

fn socket_url(base: &str, query: &str) -> String {
    format!("{}/ws?{query}", base.replacen("http", "ws", 1))
}

/// Opens `/ws?<query>` from the server's own origin and returns the
/// socket after its `connected` frame.
async fn open(base: &str, query: &str) -> (Socket, Value) {
    let mut request = socket_url(base, query).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", base.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .unwrap_or_else(|error| panic!("upgrade failed: {error}"));
    let connected = next_frame(&mut socket).await.expect("connected frame");
    assert_eq!(connected["type"], "connected", "{connected}");
    (socket, connected)
}

/// Opens a chat with `bot` and skips the bot's greeting.
async fn chat(server: &TestServer, token: &str, bot: &str) -> (Socket, Value) {
    let query = format!("ticket={}&bot={bot}", ticket(server, token).await);
    let (mut socket, connected) = open(&server.base, &query).await;
    let greeting = next_frame(&mut socket).await.expect("greeting");
    assert_eq!(greeting["message_type"], 2, "{greeting}");
    (socket, connected)
}

/// The next JSON frame, or `None` when the connection ended; close frames
/// are returned as `{"close": code}`.
async fn next_frame(socket: &mut Socket) -> Option<Value> {
    next_frame_within(socket, FRAME_TIMEOUT).await
}

/// [`next_frame`] with a wait of `limit` instead of [`FRAME_TIMEOUT`].
async fn next_frame_within(socket: &mut Socket, limit: Duration) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(limit, socket.next())
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
    let frame = json!({"content": content, "message_type": 1});
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

/// Sends `content` and returns the reply. A dropped connection reads as
/// `{"close": null}`.
async fn say(socket: &mut Socket, content: &str) -> Value {
    send(socket, content).await;
    next_frame(socket)
        .await
        .unwrap_or_else(|| json!({"close": null}))
}

/// Whether `frame` ends the turn without a bot answer: an error frame or
/// the end of the connection.
fn is_refusal(frame: &Value) -> bool {
    frame["type"] == "error" || frame.get("close").is_some()
}

/// A visitor's chat must not outlive the bot's `public` visibility: the
/// upgrade checks it, so every later message must too, or a bot made
/// members-only keeps answering anyone who connected before.
async fn visitor_loses_a_bot_made_members_only(backend: Backend) {
    let Setup { server, root, .. } = setup(backend).await;
    add_bot(&server, &root, "tenant-a", "echo", "echo", "public").await;
    let path = "/api/v1/tenants/tenant-a/bots/echo/anonymous-session";
    let (status, body) = server.json(Method::POST, path, None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let query = format!("ticket={}&bot=echo", body["ticket"].as_str().unwrap());
    let (mut socket, _) = open(&server.base, &query).await;
    let greeting = next_frame(&mut socket).await.unwrap();
    assert_eq!(greeting["message_type"], 2, "{greeting}");
    let before = say(&mut socket, "visible while public").await;
    assert_eq!(before["content"], "visible while public", "{before}");

    let (status, body) = server
        .json(
            Method::PATCH,
            "/api/v1/tenants/tenant-a/bots/echo",
            Some(&root),
            Some(json!({"visibility": "members"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let after = say(&mut socket, "members only now").await;
    assert!(
        is_refusal(&after),
        "a visitor still chats with a members-only bot: {after}"
    );
}

/// Deleting a bot is an admin's everyday action: an open chat with it
/// should end or get `bot_disabled`, not an undocumented `server_error`
/// frame with an error-level log line for every further message.
async fn deleted_bot_ends_the_chat_without_error_logs(backend: Backend) {
    let Setup {
        server,
        root,
        alice,
    } = setup(backend).await;
    add_bot(&server, &root, "tenant-a", "echo", "echo", "members").await;
    let (mut socket, connected) = chat(&server, &alice, "echo").await;
    let conversation = connected["session_id"].as_str().unwrap().to_owned();
    assert_eq!(say(&mut socket, "hello").await["content"], "hello");

    let (status, _) = server
        .json(
            Method::DELETE,
            "/api/v1/tenants/tenant-a/bots/echo",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let after = say(&mut socket, "are you there").await;
    assert!(
        after["code"] == "bot_disabled" || after.get("close").is_some(),
        "a chat with a deleted bot got {after}"
    );
    let logs = captured_logs();
    let errors: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains(&conversation) && line.contains(r#""level":"ERROR""#))
        .collect();
    assert!(
        errors.is_empty(),
        "deleting a bot logged errors for its open chat: {errors:?}"
    );
}

/// Message text is user data: it must appear in no log record at any
/// level, the WebSocket library's included. The client writes its frames
/// by hand, so every record it finds is the server's.
async fn chat_text_stays_out_of_logs(backend: Backend) {
    let Setup {
        server,
        root,
        alice,
    } = setup(backend).await;
    add_bot(&server, &root, "tenant-a", "echo", "echo", "members").await;
    let canary = format!("canary-chat-text-{}", uuid::Uuid::new_v4().simple());
    let ticket = ticket(&server, &alice).await;
    let mut stream = raw_upgrade(&server, &ticket, "echo", None).await;
    let message = json!({"content": canary, "message_type": 1}).to_string();
    stream
        .write_all(&masked_text_frame(message.as_bytes()))
        .await
        .unwrap();

    // The echo bot replies with the text, and server frames are not masked.
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while !contains(&received, canary.as_bytes()) {
        let read = tokio::time::timeout(FRAME_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("no echo from the server in time")
            .unwrap();
        assert!(read > 0, "the server closed before echoing");
        received.extend_from_slice(&chunk[..read]);
    }

    let logs = captured_logs();
    let leaks: Vec<&str> = logs.lines().filter(|line| line.contains(&canary)).collect();
    assert!(
        leaks.is_empty(),
        "message text reached {} log records, the first: {}",
        leaks.len(),
        leaks[0]
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Bad query strings are bad input like any other: 400 with problem
/// details, not the framework's plain-text rejection.
async fn history_query_errors_are_problem_details(backend: Backend) {
    let Setup {
        server,
        root,
        alice,
    } = setup(backend).await;
    add_bot(&server, &root, "tenant-a", "echo", "echo", "members").await;
    let (socket, connected) = chat(&server, &alice, "echo").await;
    drop(socket);
    let conversation = connected["session_id"].as_str().unwrap();

    let path = format!("/api/v1/me/conversations/{conversation}/messages");
    let (status, _) = server.json(Method::GET, &path, Some(&alice), None).await;
    assert_eq!(status, StatusCode::OK);
    for query in [
        "?after=abc",
        "?after=",
        "?limit=-1",
        "?limit=99999999999",
        "?limit=1&limit=2",
        "?unknown=1",
    ] {
        let response = server
            .call(Method::GET, &format!("{path}{query}"), Some(&alice), None)
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert_eq!(content_type, "application/problem+json", "{query}");
    }

    let bytes = std::fs::read(crate::support::plugin("echo")).unwrap();
    let response = server
        .client
        .post(format!(
            "{}/api/v1/tenants/tenant-a/plugins?name=a&name=b&version=1",
            server.base
        ))
        .bearer_auth(&root)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert_eq!(content_type, "application/problem+json");
}

/// A tenant admin may give a bot up to the maximum fuel and deadline. A
/// plugin that computes for that long must not hold an async worker
/// thread meanwhile, or a few chats with it stop every other tenant's
/// chats, the health check included, until the deadline.
///
/// The client runs on a runtime of its own, so a stalled server cannot
/// stall the checks. Apart from a 5 s limit on each upgrade, they compare
/// order, not time: another tenant's bot must reply while the spinning
/// greetings still run, before any of them has ended in its empty frame.
async fn spinning_bot_leaves_other_tenants_answered(backend: Backend) {
    let settings = Settings {
        env: vec![("BOTSERVER_WS_MAX_CONNECTIONS_PER_USER", "64".to_owned())],
    };
    let Setup { server, root, .. } = setup_with(backend, settings).await;
    add_bot(
        &server,
        &root,
        "tenant-a",
        "spinner",
        "spin-loop",
        "members",
    )
    .await;
    let limits = json!({"limits": {
        "fuel": botserver::runtime::limits::MAX_FUEL,
        "memory_bytes": 64 * 1024 * 1024,
        "deadline_ms": SPIN_DEADLINE.as_secs() * 1000,
        "host_call_bytes": 1024 * 1024,
    }});
    let (status, body) = server
        .json(
            Method::PATCH,
            "/api/v1/tenants/tenant-a/bots/spinner",
            Some(&root),
            Some(limits),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let tenant_b = server.create_tenant("tenant-b").await;
    server
        .create_user(&tenant_b, "bob", BOB_PASSWORD, Role::TenantAdmin)
        .await;
    let bob = access(&server.login_ok("tenant-b", "bob", BOB_PASSWORD).await);
    add_bot(&server, &bob, "tenant-b", "counter", "counter", "members").await;

    let mut spinner_tickets = Vec::new();
    for _ in 0..SPINNING_CHATS {
        spinner_tickets.push(ticket(&server, &root).await);
    }
    let good_ticket = ticket(&server, &bob).await;
    let base = server.base.clone();
    let client = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(race_spinners(base, good_ticket, spinner_tickets))
    });
    let outcome = tokio::task::spawn_blocking(move || client.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        outcome.spinners_started, SPINNING_CHATS,
        "the server stopped completing upgrades after {} spinning chats",
        outcome.spinners_started
    );
    assert_eq!(
        outcome.answer["content"], "1",
        "the other tenant's bot did not answer: {}",
        outcome.answer
    );
    assert!(
        !outcome.spinner_ended_first,
        "the other tenant's bot answered only after a spinning greeting ended: \
         the spinners held every worker thread"
    );
}

struct RaceOutcome {
    answer: Value,
    spinners_started: usize,
    spinner_ended_first: bool,
}

/// Opens the good chat, then the spinning ones, then messages the good bot.
async fn race_spinners(base: String, good: String, spinners: Vec<String>) -> RaceOutcome {
    let (mut good_socket, _) = open(&base, &format!("ticket={good}&bot=counter")).await;
    let greeting = next_frame(&mut good_socket).await.unwrap();
    assert_eq!(greeting["message_type"], 2, "{greeting}");

    // A stalled server stops completing upgrades, so stop opening then.
    let mut spinning = Vec::new();
    for ticket in spinners {
        let query = format!("ticket={ticket}&bot=spinner");
        let opened = tokio::time::timeout(Duration::from_secs(5), open(&base, &query)).await;
        match opened {
            Ok((socket, _)) => spinning.push(socket),
            Err(_) => break,
        }
    }
    let spinners_started = spinning.len();

    // A stalled server replies only after the spinners' deadline ends them.
    send(&mut good_socket, "ping").await;
    let answer = next_frame_within(&mut good_socket, SPIN_DEADLINE * 3)
        .await
        .unwrap_or_else(|| json!({"close": null}));

    // Had the spinners held the workers, their greetings ended first and
    // their empty frames are already here. Otherwise they still run.
    let started = Instant::now();
    let mut spinner_ended_first = false;
    for socket in &mut spinning {
        let left = Duration::from_secs(2).saturating_sub(started.elapsed());
        if let Ok(Some(_)) = tokio::time::timeout(left, socket.next()).await {
            spinner_ended_first = true;
            break;
        }
    }
    RaceOutcome {
        answer,
        spinners_started,
        spinner_ended_first,
    }
}

/// Size of each message the non-reading peer sends. The echo bot replies
/// with as much, so a few messages fill the socket buffers.
const FLOOD_MESSAGE_BYTES: usize = 512 * 1024;

/// A peer that keeps sending but never reads makes every reply wait for
/// socket buffer space. The server must still drop it once it cannot
/// answer pings, instead of waiting in a send forever.
async fn peer_that_stops_reading_is_dropped(backend: Backend) {
    // A server may drop the peer on the missed ping or on a write that
    // stalls; both settings are short, so either fix passes quickly.
    let settings = Settings {
        env: vec![
            ("BOTSERVER_WS_PING_INTERVAL", "1".to_owned()),
            ("BOTSERVER_WRITE_TIMEOUT", "1".to_owned()),
        ],
    };
    let Setup {
        server,
        root,
        alice,
    } = setup_with(backend, settings).await;
    add_bot(&server, &root, "tenant-a", "echo", "echo", "members").await;

    let ticket = ticket(&server, &alice).await;
    let mut stream = raw_upgrade(&server, &ticket, "echo", Some(4096)).await;

    // Send until the server stops taking messages in, then read nothing.
    let message = json!({"content": "y".repeat(FLOOD_MESSAGE_BYTES)}).to_string();
    let frame = masked_text_frame(message.as_bytes());
    let mut sent = 0;
    for _ in 0..32 {
        let written = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&frame)).await;
        if !matches!(written, Ok(Ok(()))) {
            break;
        }
        sent += 1;
    }
    assert!(sent >= 2, "the server took only {sent} messages");

    // The server had unread data when it closed the socket, so a dropped
    // connection shows as a reset in the socket's pending error. Reading
    // cannot tell, because the queued replies stay readable after a reset.
    // A write that fails other than on a full buffer also means it is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if stream.take_error().unwrap().is_some() {
            break;
        }
        match stream.try_write(&[]) {
            Err(error) if error.kind() != std::io::ErrorKind::WouldBlock => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the server still holds a peer that stopped reading, 30 s after it stalled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Opens a chat with `bot` over a plain TCP stream, optionally with a
/// small receive buffer, and returns it after the `101` status line.
async fn raw_upgrade(
    server: &TestServer,
    ticket: &str,
    bot: &str,
    receive_buffer: Option<u32>,
) -> TcpStream {
    let address: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(bytes) = receive_buffer {
        socket.set_recv_buffer_size(bytes).unwrap();
    }
    let mut stream = socket.connect(address).await.unwrap();
    let head = format!(
        "GET /ws?ticket={ticket}&bot={bot} HTTP/1.1\r\nhost: {address}\r\n\
         origin: {}\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        server.base
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut status_line = [0u8; 12];
    stream.read_exact(&mut status_line).await.unwrap();
    assert_eq!(&status_line, b"HTTP/1.1 101");
    stream
}

/// A client text frame (FIN, opcode 1) with a zero masking key, which
/// leaves the payload as it is.
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}
