//! Rate limits at the HTTP edge: client addresses behind and without
//! proxies, the tighter credential budgets, per-user budgets, several nodes
//! sharing Redis, and what a Redis outage does to each route class.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use botserver::auth::Role;
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::header::RETRY_AFTER;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::both_backends;
use crate::chat::{Socket, add_bot};
use crate::harness::{
    ADMIN_PASSWORD, Backend, Settings, TestServer, access, captured_logs, eventually,
};

both_backends!(
    rotating_forwarded_for_is_ignored_from_untrusted_peers,
    trusted_proxy_limits_each_client_not_the_proxy,
    login_and_ticket_routes_have_tighter_budgets,
    user_budget_follows_the_account_across_addresses,
    health_probes_keep_their_own_budget,
    product_defaults_are_on,
    two_nodes_enforce_one_budget_through_redis,
    redis_outage_fails_closed_for_credentials_only,
);

/// A route that needs no login and costs almost nothing.
const CHEAP: &str = "/.well-known/jwks.json";

const USER_PASSWORD: &str = "alice password 1";

fn settings(pairs: &[(&'static str, &str)]) -> Settings {
    Settings {
        env: pairs
            .iter()
            .map(|(key, value)| (*key, (*value).to_owned()))
            .collect(),
    }
}

/// Sends `GET path` with extra headers; returns the response.
async fn get_with(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = server.client.get(format!("{}{path}", server.base));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// Sends `POST path` with a JSON body and extra headers.
async fn post_with(
    server: &TestServer,
    path: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = server
        .client
        .post(format!("{}{path}", server.base))
        .json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// Checks a 429: problem details and a `Retry-After` of whole seconds
/// within the budget's period.
async fn assert_rate_limited(response: reqwest::Response, max_retry_secs: u64) {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=max_retry_secs).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 429);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("rate limit exceeded"),
        "{body}"
    );
}

/// Security events of the rate limiter for `client`, parsed from the
/// captured JSON log.
fn security_events(client: &str) -> Vec<Value> {
    captured_logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["target"] == "botserver::security")
        .filter(|event| event["fields"]["client.ip"] == client)
        .collect()
}

async fn rotating_forwarded_for_is_ignored_from_untrusted_peers(backend: Backend) {
    let server =
        TestServer::start_with(backend, settings(&[("BOTSERVER_RATE_LIMIT_PER_IP", "5")])).await;

    // Each request claims another client, but all come from one peer.
    let mut statuses = Vec::new();
    for i in 0..5 {
        let forwarded = format!("203.0.113.{i}");
        let rfc = format!("for={forwarded}");
        let headers = [
            ("x-forwarded-for", forwarded.as_str()),
            ("forwarded", rfc.as_str()),
        ];
        statuses.push(get_with(&server, CHEAP, &headers).await.status());
    }
    assert!(
        statuses.iter().all(|status| *status == StatusCode::OK),
        "{statuses:?}"
    );
    let spoofed = [("x-forwarded-for", "198.51.100.99")];
    let over = get_with(&server, CHEAP, &spoofed).await;
    assert_rate_limited(over, 60).await;
}

async fn trusted_proxy_limits_each_client_not_the_proxy(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        settings(&[
            ("BOTSERVER_RATE_LIMIT_PER_IP", "3"),
            ("BOTSERVER_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8"),
        ]),
    )
    .await;
    let alpha = [("x-forwarded-for", "203.0.113.21")];
    for _ in 0..3 {
        assert_eq!(
            get_with(&server, CHEAP, &alpha).await.status(),
            StatusCode::OK
        );
    }
    assert_rate_limited(get_with(&server, CHEAP, &alpha).await, 60).await;

    // A client cannot escape by prepending an address of its choice: the
    // proxy appends the real one, and that one counts.
    let prepended = [("x-forwarded-for", "192.0.2.1, 203.0.113.21")];
    let status = get_with(&server, CHEAP, &prepended).await.status();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // A second trusted hop is skipped too.
    let via_inner_proxy = [("x-forwarded-for", "203.0.113.21, 10.1.2.3")];
    let status = get_with(&server, CHEAP, &via_inner_proxy).await.status();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // The other header is not what this proxy writes, so it is ignored.
    let other_header = [
        ("forwarded", "for=198.51.100.50"),
        ("x-forwarded-for", "203.0.113.21"),
    ];
    let status = get_with(&server, CHEAP, &other_header).await.status();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // Another client behind the same proxy, and the proxy itself, are not
    // affected.
    let beta = [("x-forwarded-for", "198.51.100.7")];
    assert_eq!(
        get_with(&server, CHEAP, &beta).await.status(),
        StatusCode::OK
    );
    assert_eq!(get_with(&server, CHEAP, &[]).await.status(), StatusCode::OK);

    let events = security_events("203.0.113.21");
    assert!(
        events
            .iter()
            .any(|event| event["fields"]["route.class"] == "api"
                && event["fields"]["security.event"] == "rate_limited"
                && event["fields"]["rate_limit.bucket"] == "ip"),
        "{events:?}"
    );
    assert!(security_events("198.51.100.7").is_empty());
}

async fn login_and_ticket_routes_have_tighter_budgets(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        settings(&[
            ("BOTSERVER_RATE_LIMIT_LOGIN_PER_IP", "2"),
            ("BOTSERVER_RATE_LIMIT_TICKET_PER_IP", "2"),
            ("BOTSERVER_TRUSTED_PROXIES", "127.0.0.1"),
        ]),
    )
    .await;
    let (_, root) = server.bootstrap().await;
    let guesser = [("x-forwarded-for", "203.0.113.31")];
    let wrong = json!({"tenant": "tenant-a", "username": "root", "password": "guess 1"});
    let hasher = server.state.auth.hasher();

    for _ in 0..2 {
        let response = post_with(&server, "/api/v1/auth/login", wrong.clone(), &guesser).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let before = hasher.verifications();
    let refused = post_with(&server, "/api/v1/auth/login", wrong.clone(), &guesser).await;
    assert_rate_limited(refused, 60).await;
    assert_eq!(
        hasher.verifications(),
        before,
        "a rejected login must not reach Argon2"
    );
    // Even the right password waits: the budget is per address.
    let right = json!({"tenant": "tenant-a", "username": "root", "password": ADMIN_PASSWORD});
    let status = post_with(&server, "/api/v1/auth/login", right.clone(), &guesser)
        .await
        .status();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // The owner from another address is not locked out by the guesser.
    let owner = [("x-forwarded-for", "198.51.100.31")];
    let status = post_with(&server, "/api/v1/auth/login", right, &owner)
        .await
        .status();
    assert_eq!(status, StatusCode::OK);
    // Refresh has a bucket of its own, and other routes the address budget.
    let garbage = json!({"refresh_token": "not-a-token"});
    for _ in 0..2 {
        let status = post_with(&server, "/api/v1/auth/refresh", garbage.clone(), &guesser)
            .await
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let status = post_with(&server, "/api/v1/auth/refresh", garbage, &guesser)
        .await
        .status();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        get_with(&server, CHEAP, &guesser).await.status(),
        StatusCode::OK
    );

    // Tickets: ws-ticket and anonymous sessions, each its own bucket.
    add_bot(&server, &root, "tenant-a", "echo", "echo", "public").await;
    let minter = [("x-forwarded-for", "203.0.113.32")];
    let anonymous = "/api/v1/tenants/tenant-a/bots/echo/anonymous-session";
    for expected in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        let status = post_with(&server, anonymous, Value::Null, &minter)
            .await
            .status();
        assert_eq!(status, expected);
    }
    let bearer = format!("Bearer {root}");
    let with_token = [
        ("x-forwarded-for", "203.0.113.32"),
        ("authorization", bearer.as_str()),
    ];
    for expected in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        let status = post_with(&server, "/api/v1/auth/ws-ticket", Value::Null, &with_token)
            .await
            .status();
        assert_eq!(status, expected);
    }

    let classes: Vec<Value> = security_events("203.0.113.31")
        .into_iter()
        .chain(security_events("203.0.113.32"))
        .map(|event| event["fields"]["route.class"].clone())
        .collect();
    for class in ["login", "refresh", "anonymous_session", "ws_ticket"] {
        assert!(classes.contains(&json!(class)), "{class} in {classes:?}");
    }
    let logs = captured_logs();
    assert!(!logs.contains(&root), "an access token reached the log");
    assert!(!logs.contains("guess 1"), "a password reached the log");
}

async fn user_budget_follows_the_account_across_addresses(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        settings(&[
            ("BOTSERVER_RATE_LIMIT_PER_USER", "3"),
            ("BOTSERVER_TRUSTED_PROXIES", "127.0.0.1"),
        ]),
    )
    .await;
    let (tenant, root) = server.bootstrap().await;
    let alice_id = server
        .create_user(&tenant, "alice", USER_PASSWORD, Role::User)
        .await;
    let alice = access(&server.login_ok("tenant-a", "alice", USER_PASSWORD).await);

    let bearer = format!("Bearer {alice}");
    for i in 0..3 {
        let address = format!("203.0.113.{}", 40 + i);
        let headers = [
            ("x-forwarded-for", address.as_str()),
            ("authorization", bearer.as_str()),
        ];
        let response = get_with(&server, "/api/v1/me", &headers).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let fresh_address = [
        ("x-forwarded-for", "198.51.100.40"),
        ("authorization", bearer.as_str()),
    ];
    let over = get_with(&server, "/api/v1/me", &fresh_address).await;
    // A budget of 3 an hour refills one request every 20 minutes.
    assert_rate_limited(over, 1200).await;
    // Requests without a valid token are not charged to anyone's account.
    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some("not-a-token"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Other users keep their own budget.
    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some(&root), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    let events = security_events("198.51.100.40");
    assert!(
        events
            .iter()
            .any(|event| event["fields"]["user.id"] == alice_id.to_string()
                && event["fields"]["rate_limit.bucket"] == "user"),
        "{events:?}"
    );
}

async fn health_probes_keep_their_own_budget(backend: Backend) {
    let server =
        TestServer::start_with(backend, settings(&[("BOTSERVER_RATE_LIMIT_PER_IP", "2")])).await;
    for _ in 0..2 {
        assert_eq!(get_with(&server, CHEAP, &[]).await.status(), StatusCode::OK);
    }
    assert_eq!(
        get_with(&server, CHEAP, &[]).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..20 {
        let status = get_with(&server, "/healthz", &[]).await.status();
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        get_with(&server, CHEAP, &[]).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// With no rate-limit settings at all: 10 logins and 100 requests a
/// minute per address. Budgets refill while the test runs (a login every
/// 6 s, a request every 0.6 s), so the counts may exceed them by that much.
async fn product_defaults_are_on(backend: Backend) {
    let server = TestServer::start_with_product_limits(backend, Settings::default()).await;
    let wrong = json!({"tenant": "tenant-a", "username": "nobody", "password": "guess 1"});
    let start = Instant::now();
    let logins = count_until_limited(200, || {
        post_with(&server, "/api/v1/auth/login", wrong.clone(), &[])
    })
    .await;
    assert!(logins >= 10, "only {logins} logins passed");
    assert!(logins <= 10 + refilled(start, 10), "{logins} logins passed");

    // The passed logins spent the address budget too; the rejected one
    // spent nothing.
    let requests = count_until_limited(200, || get_with(&server, CHEAP, &[])).await;
    let total = logins + requests;
    assert!(total >= 100, "only {total} requests passed");
    assert!(
        total <= 100 + refilled(start, 100),
        "{total} requests passed"
    );
}

/// Sends requests until one gets 429, checks that rejection, and returns
/// how many passed; fails after `limit` passes.
async fn count_until_limited<F, Fut>(limit: usize, mut send: F) -> usize
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    for passed in 0..limit {
        let response = send().await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_rate_limited(response, 60).await;
            return passed;
        }
    }
    panic!("no 429 after {limit} requests");
}

/// Units a budget of `per_minute` regains between `start` and now, plus
/// one for a refill due at the edge.
fn refilled(start: Instant, per_minute: u32) -> usize {
    let interval = Duration::from_secs(60) / per_minute;
    let refills = start.elapsed().as_nanos() / interval.as_nanos();
    usize::try_from(refills).unwrap() + 1
}

/// Two nodes on one database share Redis budgets; without Redis each node
/// keeps its own (documented), so the same traffic passes.
async fn two_nodes_enforce_one_budget_through_redis(backend: Backend) {
    let first =
        TestServer::start_with(backend, settings(&[("BOTSERVER_RATE_LIMIT_PER_IP", "4")])).await;
    let second = first.start_peer(Settings::default()).await;
    for node in [&first, &second, &first, &second] {
        assert_eq!(get_with(node, CHEAP, &[]).await.status(), StatusCode::OK);
    }
    let fifth = get_with(&first, CHEAP, &[]).await;
    let sixth = get_with(&second, CHEAP, &[]).await;
    match backend {
        Backend::Postgres => {
            assert_rate_limited(fifth, 60).await;
            assert_rate_limited(sixth, 60).await;
        }
        Backend::Sqlite => {
            assert_eq!(fifth.status(), StatusCode::OK);
            assert_eq!(sixth.status(), StatusCode::OK);
        }
    }
    drop(second);
}

/// A Redis server of this test only, on a free loopback port.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (install it, or run scripts/services)");
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self) {
        let url = self.url();
        let ready = eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .is_ok()
            }
        })
        .await;
        assert!(ready, "redis-server on port {} did not start", self.port);
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// With Redis gone, the credential routes return 503 without doing any
/// work, and other routes and chat messages fall back to this node's
/// limiter. The SQLite backend gets a Redis of its own for this test.
async fn redis_outage_fails_closed_for_credentials_only(backend: Backend) {
    let mut redis = OwnRedis::start();
    redis.wait_ready().await;
    let server = TestServer::start_with(
        backend,
        settings(&[
            ("BOTSERVER_REDIS_URL", &redis.url()),
            ("BOTSERVER_RATE_LIMIT_PER_IP", "10"),
            ("BOTSERVER_TRUSTED_PROXIES", "127.0.0.1"),
        ]),
    )
    .await;
    let (_, root) = server.bootstrap().await;
    add_bot(&server, &root, "tenant-a", "echo", "echo", "public").await;
    let visitor = "203.0.113.61";
    let mut socket = visitor_chat(&server, visitor).await;

    redis.stop();
    let hasher = server.state.auth.hasher();
    let before = hasher.verifications();
    let right = json!({"tenant": "tenant-a", "username": "root", "password": ADMIN_PASSWORD});
    let login = post_with(&server, "/api/v1/auth/login", right.clone(), &[]).await;
    assert_eq!(login.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(login.headers()[RETRY_AFTER], "5");
    let body: Value = login.json().await.unwrap();
    assert_eq!(body["status"], 503);
    assert_eq!(
        hasher.verifications(),
        before,
        "no Argon2 while failing closed"
    );
    for path in [
        "/api/v1/auth/refresh",
        "/api/v1/auth/ws-ticket",
        "/api/v1/tenants/tenant-a/bots/echo/anonymous-session",
    ] {
        let status = post_with(&server, path, json!({}), &[]).await.status();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
    }
    assert_eq!(
        get_with(&server, "/healthz", &[]).await.status(),
        StatusCode::OK
    );

    // Other routes use this node's budget of 10.
    let reader = [("x-forwarded-for", "203.0.113.60")];
    for _ in 0..10 {
        assert_eq!(
            get_with(&server, CHEAP, &reader).await.status(),
            StatusCode::OK
        );
    }
    assert_rate_limited(get_with(&server, CHEAP, &reader).await, 60).await;

    // So do the visitor's chat messages: ten answers (more if the budget
    // refills meanwhile), then an error frame.
    let start = Instant::now();
    let mut answered = 0;
    let refused = loop {
        let reply = say(&mut socket, "hello").await;
        if reply["type"] == "error" {
            break reply;
        }
        assert_eq!(reply["message_type"], 2, "{reply}");
        answered += 1;
        assert!(answered <= 10 + refilled(start, 10), "{answered} answered");
    };
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(answered >= 10, "only {answered} answered");

    // Redis back on the same port: credentials work again.
    let redis = OwnRedis::start_on(redis.port);
    redis.wait_ready().await;
    let recovered = eventually(Duration::from_secs(10), || {
        let (server, right) = (&server, right.clone());
        async move {
            post_with(server, "/api/v1/auth/login", right, &[])
                .await
                .status()
                == StatusCode::OK
        }
    })
    .await;
    assert!(recovered, "login still rejected after Redis came back");
}

/// Opens a chat with the public `echo` bot as a visitor at `address`
/// behind the trusted proxy, and reads its greeting.
async fn visitor_chat(server: &TestServer, address: &str) -> Socket {
    let forwarded = [("x-forwarded-for", address)];
    let path = "/api/v1/tenants/tenant-a/bots/echo/anonymous-session";
    let response = post_with(server, path, Value::Null, &forwarded).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let ticket = body["ticket"].as_str().unwrap();
    let url = format!(
        "{}/ws?ticket={ticket}&bot=echo",
        server.base.replacen("http", "ws", 1)
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", address.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let connected = next_json(&mut socket).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let greeting = next_json(&mut socket).await;
    assert_eq!(greeting["message_type"], 2, "{greeting}");
    socket
}

async fn say(socket: &mut Socket, content: &str) -> Value {
    let frame = json!({"content": content, "message_type": 1});
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    next_json(socket).await
}

/// Returns the next text frame as JSON, and a close frame as
/// `{"close": code}`.
async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("a frame in time")
            .expect("an open socket")
            .expect("a readable frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => {
                return json!({"close": frame.map(|frame| u16::from(frame.code))});
            }
            _ => {}
        }
    }
}
