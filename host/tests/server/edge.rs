//! The network edge over plain HTTP: CORS, security headers, request
//! head and body caps, slow clients, the connection cap, and fragmented
//! WebSocket messages. TLS is in `tls.rs`.

use std::time::Duration;

use futures_util::SinkExt as _;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::both_backends;
use crate::chat::{add_bot, chat, greeting, next_frame};
use crate::harness::{Backend, Settings, TestServer};

both_backends!(
    cors_answers_only_listed_origins,
    security_headers_are_on_every_response,
    oversized_heads_get_431,
    endless_chunked_body_is_cut_at_the_cap,
    slowloris_clients_are_dropped,
    idle_keep_alive_connections_are_closed,
    connections_over_the_cap_wait,
    clients_that_stop_reading_are_dropped,
    tiny_fragment_flood_closes_with_1009,
);

/// Longest wait for anything the server should do at once or after a
/// one-second timeout.
const DEADLINE: Duration = Duration::from_secs(30);

const ALLOWED_ORIGIN: &str = "https://app.example.test";

fn settings(pairs: &[(&'static str, &str)]) -> Settings {
    Settings {
        env: pairs
            .iter()
            .map(|(key, value)| (*key, (*value).to_owned()))
            .collect(),
    }
}

fn address(server: &TestServer) -> &str {
    server.base.trim_start_matches("http://")
}

/// Writes `request` on a new connection and reads the response until the
/// server closes the connection.
async fn exchange(server: &TestServer, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address(server)).await.unwrap();
    // A server that responds before reading the whole request may reset
    // the connection under the writer, and the response is still readable.
    let _ = stream.write_all(request).await;
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut response = Vec::new();
    let read = stream.read_to_end(&mut response);
    // A reset after the response still leaves the response readable.
    let _ = tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the server did not close the connection");
    String::from_utf8_lossy(&response).into_owned()
}

fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"))
}

/// The headers of a raw response, names lowercased.
fn headers_of(raw: &str) -> HeaderMap {
    let head = raw.split("\r\n\r\n").next().unwrap_or("");
    let mut headers = HeaderMap::new();
    for line in head.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            headers.append(
                reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                value.trim().parse().unwrap(),
            );
        }
    }
    headers
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|value| value.to_str().unwrap())
}

async fn cors_answers_only_listed_origins(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        settings(&[("BOTSERVER_ALLOWED_ORIGINS", ALLOWED_ORIGIN)]),
    )
    .await;
    let (_, root) = server.bootstrap().await;
    let url = format!("{}/api/v1/tenants/tenant-a/bots", server.base);
    let actual = |origin: &str| {
        server
            .client
            .get(&url)
            .bearer_auth(&root)
            .header("origin", origin)
            .send()
    };
    let preflight = |origin: &str| {
        server
            .client
            .request(Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "PATCH")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };

    // The listed origin: its own value back, with credentials.
    let response = actual(ALLOWED_ORIGIN).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(
        header(headers, "access-control-allow-origin"),
        Some(ALLOWED_ORIGIN)
    );
    assert_eq!(
        header(headers, "access-control-allow-credentials"),
        Some("true")
    );
    assert!(
        header(headers, "vary").is_some_and(|vary| vary.to_lowercase().contains("origin")),
        "{headers:?}"
    );
    let response = preflight(ALLOWED_ORIGIN).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let headers = response.headers();
    assert_eq!(
        header(headers, "access-control-allow-origin"),
        Some(ALLOWED_ORIGIN)
    );
    assert_eq!(
        header(headers, "access-control-allow-credentials"),
        Some("true")
    );
    let methods = header(headers, "access-control-allow-methods").unwrap_or("");
    assert!(methods.contains("PATCH"), "{methods}");
    let allowed_headers = header(headers, "access-control-allow-headers").unwrap_or("");
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );
    assert!(
        allowed_headers.contains("content-type"),
        "{allowed_headers}"
    );

    // Everything else: foreign, `null`, look-alikes, other scheme or port.
    for origin in [
        "https://evil.test",
        "null",
        "https://app.example.test.evil.test",
        "https://xapp.example.test",
        "http://app.example.test",
        "https://app.example.test:8443",
        "https://app.example.test/",
        "https://user@app.example.test",
    ] {
        for (kind, response) in [
            ("actual", actual(origin).await.unwrap()),
            ("preflight", preflight(origin).await.unwrap()),
        ] {
            let headers = response.headers();
            assert_eq!(
                header(headers, "access-control-allow-origin"),
                None,
                "{kind} request from {origin}"
            );
            assert_eq!(
                header(headers, "access-control-allow-credentials"),
                None,
                "{kind} request from {origin}"
            );
            assert!(
                header(headers, "vary").is_some_and(|vary| vary.to_lowercase().contains("origin")),
                "{kind} request from {origin}: {headers:?}"
            );
        }
    }

    // A request without `Origin` gets no CORS grant either.
    let response = server
        .client
        .get(&url)
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(response.headers(), "access-control-allow-origin"),
        None
    );
}

/// Checks the headers every response must carry over plain HTTP.
fn assert_security_headers(headers: &HeaderMap, what: &str) {
    assert_eq!(
        header(headers, "x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(
        header(headers, "referrer-policy"),
        Some("no-referrer"),
        "{what}"
    );
    assert_eq!(header(headers, "x-frame-options"), Some("DENY"), "{what}");
    let permissions = header(headers, "permissions-policy").unwrap_or("");
    assert!(permissions.contains("camera=()"), "{what}: {permissions:?}");
    let policy = header(headers, "content-security-policy").unwrap_or("");
    assert!(
        policy.contains("frame-ancestors 'none'"),
        "{what}: {policy:?}"
    );
    assert!(policy.contains("default-src 'none'"), "{what}: {policy:?}");
    assert_eq!(header(headers, "server"), None, "{what}");
    // Plain HTTP: a browser would ignore HSTS, and the server must not
    // claim a TLS it does not speak.
    assert_eq!(header(headers, "strict-transport-security"), None, "{what}");
}

async fn security_headers_are_on_every_response(backend: Backend) {
    let server = TestServer::start(backend).await;
    let cases = [
        (Method::GET, "/healthz", StatusCode::OK),
        (Method::GET, "/no/such/route", StatusCode::NOT_FOUND),
        (Method::DELETE, "/healthz", StatusCode::METHOD_NOT_ALLOWED),
        (Method::GET, "/api/v1/me", StatusCode::UNAUTHORIZED),
        (Method::GET, "/.well-known/jwks.json", StatusCode::OK),
    ];
    for (method, path, expected) in cases {
        let response = server.call(method.clone(), path, None, None).await;
        assert_eq!(response.status(), expected, "{method} {path}");
        assert_security_headers(response.headers(), &format!("{method} {path}"));
    }

    // The refused WebSocket upgrade of a foreign page.
    let response = server
        .client
        .get(format!("{}/ws?ticket=x&bot=echo", server.base))
        .header("origin", "https://evil.test")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_security_headers(response.headers(), "WebSocket refusal");

    // A body over the cap, refused from its declared length.
    let request = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        address(&server),
        1024 * 1024
    );
    let raw = exchange(&server, request.as_bytes()).await;
    assert_eq!(status_of(&raw), 413, "{raw}");
    assert_security_headers(&headers_of(&raw), "413");

    // The chat page keeps its own, script-allowing policy.
    let response = server.call(Method::GET, "/", None, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let policy = header(response.headers(), "content-security-policy").unwrap_or("");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
}

async fn oversized_heads_get_431(backend: Backend) {
    let server = TestServer::start(backend).await;
    let host = address(&server).to_owned();
    let request_with = |path: &str, headers: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n")
    };

    // Heads over the 16 KiB cap, on the WebSocket route as on any other:
    // one line of 1 MiB, and one of 32 KiB (still under hyper's own
    // buffer limit, so only the cap stops it).
    for size in [1024 * 1024, 32 * 1024] {
        let request = request_with("/ws?bot=echo", &format!("X-Long: {}\r\n", "a".repeat(size)));
        let raw = exchange(&server, request.as_bytes()).await;
        assert_eq!(status_of(&raw), 431, "{size} bytes: {}", first_line(&raw));
    }
    // More than 64 header fields: 10 000, and 80 (under hyper's default).
    for count in [10_000, 80] {
        let headers: String = (0..count)
            .map(|index| format!("X-{index}: a\r\n"))
            .collect();
        let request = request_with("/ws?bot=echo", &headers);
        let raw = exchange(&server, request.as_bytes()).await;
        assert_eq!(
            status_of(&raw),
            431,
            "{count} headers: {}",
            first_line(&raw)
        );
    }

    // Heads within both caps get through to the route.
    let headers: String = (0..40).map(|index| format!("X-{index}: a\r\n")).collect();
    let headers = format!("{headers}X-Long: {}\r\n", "a".repeat(8 * 1024));
    let raw = exchange(&server, request_with("/healthz", &headers).as_bytes()).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
}

fn first_line(raw: &str) -> &str {
    raw.lines().next().unwrap_or("")
}

async fn endless_chunked_body_is_cut_at_the_cap(backend: Backend) {
    // What the client may have sent when the 413 arrives: the 64 KiB cap
    // plus what the socket buffers of both sides hold.
    const WELL_PAST_THE_CAP: usize = 64 * 1024 * 1024;

    let server = TestServer::start(backend).await;
    let stream = TcpStream::connect(address(&server)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        address(&server)
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    // A body without end: chunks until the server stops taking them, or
    // well past the cap.
    let sender = tokio::spawn(async move {
        let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, "x".repeat(16 * 1024));
        let mut sent = 0;
        while sent < 4 * WELL_PAST_THE_CAP {
            if writer.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let mut response = vec![0; 4096];
    let read = tokio::time::timeout(DEADLINE, reader.read(&mut response))
        .await
        .expect("no response while the body was still streaming")
        .unwrap();
    let text = String::from_utf8_lossy(&response[..read]).into_owned();
    assert_eq!(status_of(&text), 413, "{text}");
    drop(reader);
    let sent = sender.await.unwrap();
    assert!(
        sent < WELL_PAST_THE_CAP,
        "the server took {sent} bytes of a body capped at 64 KiB"
    );
}

async fn slowloris_clients_are_dropped(backend: Backend) {
    let server =
        TestServer::start_with(backend, settings(&[("BOTSERVER_HEADER_READ_TIMEOUT", "1")])).await;
    let stream = TcpStream::connect(address(&server)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One header line every 100 ms, for up to a minute: each byte arrives
    // long before any per-read timeout, the head never ends.
    let trickle = tokio::spawn(async move {
        if writer
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .is_err()
        {
            return true;
        }
        for index in 0..600 {
            let line = format!("X-Slow-{index}: a\r\n");
            if writer.write_all(line.as_bytes()).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    let mut buffer = [0; 1024];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept a client trickling headers");
    assert!(
        !trickle.is_finished() || trickle.await.unwrap(),
        "the client finished sending before the server dropped it"
    );
}

async fn idle_keep_alive_connections_are_closed(backend: Backend) {
    let server =
        TestServer::start_with(backend, settings(&[("BOTSERVER_HEADER_READ_TIMEOUT", "1")])).await;
    let mut stream = TcpStream::connect(address(&server)).await.unwrap();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n",
        address(&server)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The answer, then nothing more from either side until the server ends
    // the idle connection.
    let raw = read_to_close(&mut stream).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
}

async fn connections_over_the_cap_wait(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        settings(&[
            ("BOTSERVER_MAX_CONNECTIONS", "1"),
            ("BOTSERVER_HEADER_READ_TIMEOUT", "60"),
        ]),
    )
    .await;
    // The first client takes the only slot and sends nothing.
    let first = TcpStream::connect(address(&server)).await.unwrap();
    // The second is accepted by the kernel, but not served.
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        address(&server)
    );
    let mut second = TcpStream::connect(address(&server)).await.unwrap();
    second.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = [0; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buffer)).await;
    assert!(
        early.is_err(),
        "the second connection was served while the first held the only slot"
    );
    // Once the first leaves, the second gets its answer.
    drop(first);
    let raw = read_to_close(&mut second).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
}

async fn clients_that_stop_reading_are_dropped(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        settings(&[
            ("BOTSERVER_MAX_CONNECTIONS", "1"),
            ("BOTSERVER_HEADER_READ_TIMEOUT", "60"),
            ("BOTSERVER_WRITE_TIMEOUT", "1"),
        ]),
    )
    .await;
    // A client with a tiny receive window asks for megabytes of responses
    // (pipelined requests for the chat script) and reads none of them.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stalled = socket
        .connect(address(&server).parse().unwrap())
        .await
        .unwrap();
    let (_stalled_reader, mut stalled_writer) = stalled.into_split();
    let request = format!(
        "GET /assets/chat.js HTTP/1.1\r\nHost: {}\r\n\r\n",
        address(&server)
    );
    let pipeline = request.repeat(1000);
    let _writer = tokio::spawn(async move {
        let _ = stalled_writer.write_all(pipeline.as_bytes()).await;
        stalled_writer
    });

    // The stalled client holds the only slot until the write timeout drops
    // it; then another client is served.
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        address(&server)
    );
    let raw = exchange(&server, request.as_bytes()).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
}

async fn tiny_fragment_flood_closes_with_1009(backend: Backend) {
    const CAP: usize = 4096;
    let server = TestServer::start_with(
        backend,
        settings(&[("BOTSERVER_WS_MAX_MESSAGE_SIZE", "4096")]),
    )
    .await;
    let (_, root) = server.bootstrap().await;
    add_bot(&server, &root, "tenant-a", "echo", "echo", "members").await;
    let (mut socket, _) = chat(&server, &root, "echo", "").await;
    greeting(&mut socket).await;

    // One-byte fragments of one text message, one more than the cap
    // holds, sent back to back. The server buffers at most the cap, then
    // closes; nothing is left unread in its socket, so the close frame
    // is not lost to a reset.
    let first = Frame::message(vec![b'x'], OpCode::Data(Data::Text), false);
    socket.feed(Message::Frame(first)).await.unwrap();
    for _ in 0..CAP {
        let more = Frame::message(vec![b'x'], OpCode::Data(Data::Continue), false);
        socket.feed(Message::Frame(more)).await.unwrap();
    }
    socket.flush().await.unwrap();
    let frame = next_frame(&mut socket).await.expect("a close frame");
    assert_eq!(frame["close"], 1009, "{frame}");
}
