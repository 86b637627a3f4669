//! Abuse limits of chat WebSockets: message budgets per user and per
//! visitor address, the per-connection message rate, caps on open
//! connections, fragmented messages, and compression.

use std::time::{Duration, Instant};

use botserver::auth::Role;
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::Request;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::both_backends;
use crate::chat::{Socket, add_bot};
use crate::harness::{Backend, Settings, TestServer, access, captured_logs, eventually};

both_backends!(
    member_messages_spend_the_user_budget,
    visitor_messages_spend_the_address_budget,
    connection_rate_cuts_off_a_flood,
    open_chats_are_capped_per_user_and_address,
    fragments_add_up_to_the_message_cap,
    endless_fragments_are_dropped,
    compression_is_never_negotiated,
);

const USER_PASSWORD: &str = "alice password 1";

/// Longest wait for one frame; bots answer in milliseconds.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

const ANONYMOUS: &str = "/api/v1/tenants/tenant-a/bots/echo/anonymous-session";

struct Setup {
    server: TestServer,
    tenant_id: String,
    alice: String,
    alice_id: String,
}

/// Tenant `tenant-a` with admin `root`, user `alice`, and `echo` as a
/// public bot; 127.0.0.1 is a trusted proxy, so tests pick client
/// addresses with `X-Forwarded-For`.
async fn setup(backend: Backend, pairs: &[(&'static str, &str)]) -> Setup {
    let mut env: Vec<(&'static str, String)> =
        vec![("BOTSERVER_TRUSTED_PROXIES", "127.0.0.1".into())];
    env.extend(pairs.iter().map(|(key, value)| (*key, (*value).to_owned())));
    let server = TestServer::start_with(backend, Settings { env }).await;
    let (tenant, root) = server.bootstrap().await;
    let alice_id = server
        .create_user(&tenant, "alice", USER_PASSWORD, Role::User)
        .await
        .to_string();
    add_bot(&server, &root, "tenant-a", "echo", "echo", "public").await;
    let alice = access(&server.login_ok("tenant-a", "alice", USER_PASSWORD).await);
    Setup {
        server,
        tenant_id: tenant.id.to_string(),
        alice,
        alice_id,
    }
}

/// Requests a ticket from `address` for the holder of `token`, or for a
/// new visitor without one.
async fn ticket(server: &TestServer, token: Option<&str>, address: &str) -> String {
    let path = token.map_or(ANONYMOUS, |_| "/api/v1/auth/ws-ticket");
    let mut request = server
        .client
        .post(format!("{}{path}", server.base))
        .header("x-forwarded-for", address);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["ticket"].as_str().unwrap().to_owned()
}

fn upgrade_request(server: &TestServer, ticket: &str, address: &str) -> Request<()> {
    let url = format!(
        "{}/ws?ticket={ticket}&bot=echo",
        server.base.replacen("http", "ws", 1)
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", address.parse().unwrap());
    request
}

/// Opens a chat with `echo` from `address`, or returns the status of the
/// refused upgrade.
async fn try_open(server: &TestServer, token: Option<&str>, address: &str) -> Result<Socket, u16> {
    let ticket = ticket(server, token, address).await;
    let request = upgrade_request(server, &ticket, address);
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(error) => panic!("connect failed: {error}"),
    }
}

/// Opens a chat and reads the `connected` frame and the greeting.
async fn open(server: &TestServer, token: Option<&str>, address: &str) -> Socket {
    let mut socket = try_open(server, token, address)
        .await
        .unwrap_or_else(|status| panic!("upgrade refused with {status}"));
    let connected = next_frame(&mut socket).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let greeting = next_frame(&mut socket).await;
    assert_eq!(greeting["message_type"], 2, "{greeting}");
    socket
}

/// Returns the next text frame as JSON, a close frame as
/// `{"close": code}`, and a dropped connection as `{"close": null}`.
async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(FRAME_TIMEOUT, socket.next())
            .await
            .expect("a frame in time");
        match message {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Close(frame))) => {
                return json!({"close": frame.map(|frame| u16::from(frame.code))});
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return json!({"close": null}),
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

async fn say(socket: &mut Socket, content: &str) -> Value {
    send(socket, content).await;
    next_frame(socket).await
}

fn is_rate_limited(frame: &Value) -> bool {
    frame["type"] == "error" && frame["code"] == "rate_limited"
}

/// Reads frames until the server closes; returns the close code and the
/// number of `rate_limited` frames before it.
async fn read_until_close(socket: &mut Socket) -> (Value, usize) {
    let mut limited = 0;
    loop {
        let frame = next_frame(socket).await;
        if frame.get("close").is_some() {
            return (frame["close"].clone(), limited);
        }
        if is_rate_limited(&frame) {
            limited += 1;
        }
    }
}

/// `ws_abuse` security events of tenant `tenant_id` whose `field` is
/// `value`.
fn abuse_events(tenant_id: &str, field: &str, value: &str) -> Vec<Value> {
    captured_logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["target"] == "botserver::security")
        .filter(|event| event["fields"]["security.event"] == "ws_abuse")
        .filter(|event| event["fields"]["tenant.id"] == tenant_id)
        .filter(|event| event["fields"][field] == value)
        .collect()
}

async fn member_messages_spend_the_user_budget(backend: Backend) {
    let Setup {
        server,
        tenant_id,
        alice,
        alice_id,
    } = setup(backend, &[("BOTSERVER_RATE_LIMIT_PER_USER", "4")]).await;
    // The ticket spends one of four; three messages get answers.
    let mut socket = open(&server, Some(&alice), "203.0.113.70").await;
    for i in 0..3 {
        let reply = say(&mut socket, "hello").await;
        assert_eq!(reply["message_type"], 2, "message {i}: {reply}");
    }
    // Over budget: an error frame, and the connection stays open.
    let refused = say(&mut socket, "hello").await;
    assert!(is_rate_limited(&refused), "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .starts_with("too many messages"),
        "{refused}"
    );
    // Ignoring the error frames: four more are answered with errors, the
    // next closes the connection with 1008.
    for _ in 0..5 {
        send(&mut socket, "flood").await;
    }
    let (close, limited) = read_until_close(&mut socket).await;
    assert_eq!(close, 1008);
    assert_eq!(limited, 4);

    let events = abuse_events(&tenant_id, "user.id", &alice_id);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["fields"]["reason"], "rate limit exceeded");
    assert_eq!(events[0]["fields"]["bot.name"], "echo");
    assert_eq!(events[0]["fields"]["client.ip"], "203.0.113.70");
    assert_eq!(events[0]["fields"]["close.code"], 1008);
    assert!(
        !captured_logs().contains(&alice),
        "an access token reached the log"
    );
}

async fn visitor_messages_spend_the_address_budget(backend: Backend) {
    let Setup { server, .. } = setup(backend, &[("BOTSERVER_RATE_LIMIT_PER_IP", "8")]).await;
    // Ticket and upgrade spend two of eight; six messages get answers, or
    // more if the budget refills (one every 7.5 s) while the bot starts.
    let visitor = "203.0.113.71";
    let start = Instant::now();
    let mut socket = open(&server, None, visitor).await;
    let mut answered = 0;
    loop {
        let reply = say(&mut socket, "hello").await;
        if is_rate_limited(&reply) {
            break;
        }
        assert_eq!(reply["message_type"], 2, "{reply}");
        answered += 1;
        let refills = start.elapsed().as_millis() / 7500 + 1;
        assert!(answered <= 6 + refills, "{answered} answered");
    }
    assert!(answered >= 6, "only {answered} answered");
    // The visitor's address is out of budget for plain requests too.
    let response = server
        .client
        .post(format!("{}{ANONYMOUS}", server.base))
        .header("x-forwarded-for", visitor)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another visitor's address has its own budget.
    let mut other = open(&server, None, "203.0.113.72").await;
    assert_eq!(say(&mut other, "hello").await["message_type"], 2);
}

async fn connection_rate_cuts_off_a_flood(backend: Backend) {
    let Setup {
        server,
        tenant_id,
        alice,
        ..
    } = setup(backend, &[("BOTSERVER_WS_MESSAGES_PER_MINUTE", "3")]).await;
    let mut socket = open(&server, Some(&alice), "203.0.113.73").await;
    for _ in 0..3 {
        assert_eq!(say(&mut socket, "hello").await["message_type"], 2);
    }
    // Pings count as well: each one makes the server answer.
    socket.send(Message::Ping(Vec::new().into())).await.unwrap();
    let refused = next_frame(&mut socket).await;
    assert!(is_rate_limited(&refused), "{refused}");
    for _ in 0..20 {
        if socket.send(Message::Text("{}".into())).await.is_err() {
            break;
        }
    }
    let (close, limited) = read_until_close(&mut socket).await;
    assert_eq!(close, 1008);
    assert_eq!(limited, 4);
    let events = abuse_events(&tenant_id, "client.ip", "203.0.113.73");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["fields"]["reason"], "rate limit exceeded");
}

async fn open_chats_are_capped_per_user_and_address(backend: Backend) {
    let Setup { server, alice, .. } = setup(
        backend,
        &[
            ("BOTSERVER_WS_MAX_CONNECTIONS_PER_USER", "2"),
            ("BOTSERVER_WS_MAX_CONNECTIONS_PER_IP", "2"),
        ],
    )
    .await;
    // Per user, whatever the address.
    let mut first = open(&server, Some(&alice), "203.0.113.74").await;
    let _second = open(&server, Some(&alice), "203.0.113.75").await;
    let third = try_open(&server, Some(&alice), "203.0.113.76").await;
    assert_eq!(third.err(), Some(429));
    // Closing one frees its place once the server has seen the close.
    first.close(None).await.unwrap();
    let reopened = eventually(Duration::from_secs(10), || {
        let (server, alice) = (&server, &alice);
        async move { try_open(server, Some(alice), "203.0.113.76").await.is_ok() }
    })
    .await;
    assert!(reopened, "the closed chat still counts against the cap");

    // Per address, visitors included.
    let _one = open(&server, None, "203.0.113.77").await;
    let _two = open(&server, None, "203.0.113.77").await;
    let refused = try_open(&server, None, "203.0.113.77").await;
    assert_eq!(refused.err(), Some(429));
    let _elsewhere = open(&server, None, "203.0.113.78").await;
}

async fn fragments_add_up_to_the_message_cap(backend: Backend) {
    let Setup {
        server, tenant_id, ..
    } = setup(backend, &[("BOTSERVER_WS_MAX_MESSAGE_SIZE", "4096")]).await;
    let mut socket = open(&server, None, "203.0.113.79").await;
    // Each fragment is small; together they pass the cap.
    let chunk = vec![b'x'; 1000];
    let first = Frame::message(chunk.clone(), OpCode::Data(Data::Text), false);
    socket.send(Message::Frame(first)).await.unwrap();
    for _ in 0..5 {
        let more = Frame::message(chunk.clone(), OpCode::Data(Data::Continue), false);
        if socket.send(Message::Frame(more)).await.is_err() {
            break;
        }
    }
    let (close, _) = read_until_close(&mut socket).await;
    assert_eq!(close, 1009);
    let events = abuse_events(&tenant_id, "client.ip", "203.0.113.79");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["fields"]["reason"], "message too big");
}

/// A message that never ends, in empty fragments, grows no buffer; the
/// server drops the peer once it misses a ping.
async fn endless_fragments_are_dropped(backend: Backend) {
    let Setup { server, .. } = setup(backend, &[("BOTSERVER_WS_PING_INTERVAL", "1")]).await;
    let mut socket = open(&server, None, "203.0.113.80").await;
    let first = Frame::message(Vec::new(), OpCode::Data(Data::Text), false);
    socket.send(Message::Frame(first)).await.unwrap();
    // Keep sending without reading, so no ping is answered.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut dropped = false;
    while Instant::now() < deadline {
        let empty = Frame::message(Vec::new(), OpCode::Data(Data::Continue), false);
        if socket.send(Message::Frame(empty)).await.is_err() {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dropped, "the server kept a peer that sends only fragments");
}

async fn compression_is_never_negotiated(backend: Backend) {
    let Setup { server, .. } = setup(backend, &[]).await;
    let address = "203.0.113.81";
    let ticket = ticket(&server, None, address).await;
    let mut request = upgrade_request(&server, &ticket, address);
    request.headers_mut().insert(
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits"
            .parse()
            .unwrap(),
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert!(
        response.headers().get("sec-websocket-extensions").is_none(),
        "{:?}",
        response.headers()
    );
    assert_eq!(next_frame(&mut socket).await["type"], "connected");
}
