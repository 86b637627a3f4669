//! `/healthz`, `/readyz`, `/metrics` and the example alert rules.

use std::collections::BTreeSet;
use std::time::Duration;

use botserver::auth::Role;
use futures_util::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::both_backends;
use crate::bots::{create_bot, digest, grant, upload};
use crate::harness::{Backend, REDIS_URL, Settings, TestServer, access, eventually};

both_backends!(
    healthz_and_readyz_report_the_process_and_database,
    readyz_fails_while_redis_is_unreachable,
    metrics_refuse_anonymous_and_non_admin_callers,
    metrics_move_after_failures_traps_and_limits,
    alert_rules_name_exported_metrics,
);

const SCRAPE_TOKEN: &str = "scrape-token-for-tests-0123456789abcdef";

async fn healthz_and_readyz_report_the_process_and_database(backend: Backend) {
    let server = TestServer::start(backend).await;
    for path in ["/healthz", "/readyz"] {
        let (status, body) = server.json(Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    for old in ["/health/live", "/health/ready"] {
        let (status, _) = server.json(Method::GET, old, None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{old}");
    }
    server.state.db.close().await;
    let (status, body) = server.json(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK, "the process still serves: {body}");
    let (status, body) = server.json(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["detail"], "not ready", "{body}");
    assert!(!body.to_string().contains("database"), "{body}");
}

/// Forwards loopback connections to the test Redis until dropped, so a
/// test can take "Redis" away without touching the shared server.
struct RedisProxy {
    address: String,
    task: tokio::task::JoinHandle<()>,
}

impl RedisProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let upstream = REDIS_URL.trim_start_matches("redis://").to_owned();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { address, task }
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        // Aborting drops the listener and, with the join set, every
        // forwarded connection.
        self.task.abort();
    }
}

async fn readyz_fails_while_redis_is_unreachable(backend: Backend) {
    let proxy = RedisProxy::start().await;
    let prefix = format!("bs-test-ready-{}:", uuid::Uuid::new_v4().simple());
    let settings = Settings {
        env: vec![
            ("BOTSERVER_REDIS_URL", format!("redis://{}", proxy.address)),
            ("BOTSERVER_REDIS_KEY_PREFIX", prefix.clone()),
        ],
    };
    let server = TestServer::start_with(backend, settings).await;
    let (status, body) = server.json(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    drop(proxy);
    let unready = eventually(Duration::from_secs(20), || async {
        let response = server.call(Method::GET, "/readyz", None, None).await;
        response.status() == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(unready, "/readyz kept answering 200 without Redis");
    let (_, body) = server.json(Method::GET, "/readyz", None, None).await;
    assert!(!body.to_string().contains("redis"), "{body}");
    let (status, _) = server.json(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    crate::harness::drop_redis_prefix(&prefix);
}

/// Scrapes `/metrics` with `token`; returns status and text.
async fn scrape(server: &TestServer, token: Option<&str>) -> (StatusCode, String) {
    let response = server.call(Method::GET, "/metrics", token, None).await;
    let status = response.status();
    (status, response.text().await.unwrap())
}

/// Returns the value of one sample line, 0 when the series does not exist yet.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn metrics_refuse_anonymous_and_non_admin_callers(backend: Backend) {
    let settings = Settings {
        env: vec![("BOTSERVER_METRICS_TOKEN", SCRAPE_TOKEN.to_owned())],
    };
    let server = TestServer::start_with(backend, settings).await;
    let (tenant, root) = server.bootstrap().await;
    server
        .create_user(&tenant, "tina", "tina password 123", Role::TenantAdmin)
        .await;
    let tina = access(
        &server
            .login_ok("tenant-a", "tina", "tina password 123")
            .await,
    );

    let (status, text) = scrape(&server, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!text.contains("botserver_"), "{text}");
    let almost = &SCRAPE_TOKEN[..SCRAPE_TOKEN.len() - 1];
    for wrong in ["garbage", almost] {
        let (status, _) = scrape(&server, Some(wrong)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    let (status, _) = scrape(&server, Some(&tina)).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "tenant admins may not scrape"
    );

    for token in [root.as_str(), SCRAPE_TOKEN] {
        let response = server
            .call(Method::GET, "/metrics", Some(token), None)
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        let text = response.text().await.unwrap();
        assert!(
            text.contains("# TYPE botserver_login_failures counter"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
    let logs = crate::harness::captured_logs();
    assert!(
        !logs.contains(SCRAPE_TOKEN),
        "the scrape token reached a log line"
    );
}

/// Opens a chat with `bot` and returns the first bot frame after
/// `connected`.
async fn chat_greeting(server: &TestServer, token: &str, bot: &str) -> Value {
    let (status, body) = server
        .json(Method::POST, "/api/v1/auth/ws-ticket", Some(token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ticket = body["ticket"].as_str().unwrap();
    let url = format!(
        "{}/ws?ticket={ticket}&bot={bot}",
        server.base.replacen("http", "ws", 1)
    );
    let request = url.into_client_request().unwrap();
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut frames = Vec::new();
    while frames.len() < 2 {
        let next = tokio::time::timeout(Duration::from_secs(30), socket.next()).await;
        match next.expect("a frame in time") {
            Some(Ok(Message::Text(text))) => frames.push(serde_json::from_str(&text).unwrap()),
            Some(Ok(_)) => {}
            other => panic!("chat ended early: {other:?}"),
        }
    }
    frames.pop().unwrap()
}

async fn metrics_move_after_failures_traps_and_limits(backend: Backend) {
    let settings = Settings {
        env: vec![
            ("BOTSERVER_MAX_LOGIN_ATTEMPTS", "2".to_owned()),
            ("BOTSERVER_RATE_LIMIT_LOGIN_PER_IP", "5".to_owned()),
        ],
    };
    let server = TestServer::start_with(backend, settings).await;
    let (tenant, root) = server.bootstrap().await;
    server
        .create_user(&tenant, "erin", "erin password 123", Role::User)
        .await;
    let (_, before) = scrape(&server, Some(&root)).await;

    for _ in 0..2 {
        let response = server.login("tenant-a", "erin", "wrong password 1").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // Unknown users until the login budget of this address runs out.
    let mut unknown_failures = 0.0;
    let mut limited = false;
    for _ in 0..10 {
        let response = server.login("tenant-a", "nobody", "wrong password 1").await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        unknown_failures += 1.0;
    }
    assert!(limited, "the login budget of 5 never ran out");

    let (status, spin) = upload(&server, &root, "tenant-a", "spin-loop").await;
    assert!(status.is_success(), "{spin}");
    grant(&server, &root, "tenant-a", &digest(&spin), json!({})).await;
    let limits = json!({"deadline_ms": 200, "fuel": 50_000_000});
    let bot =
        json!({"name": "spin", "plugin_digest": digest(&spin), "enabled": true, "limits": limits});
    create_bot(&server, &root, "tenant-a", bot).await;
    let greeting = chat_greeting(&server, &root, "spin").await;
    assert_eq!(
        greeting["content"], "",
        "the trapped greeting is empty: {greeting}"
    );

    let (status, _) = server
        .json(Method::GET, "/no/such/path-canary-4711", None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, after) = scrape(&server, Some(&root)).await;
    assert_eq!(status, StatusCode::OK);
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    let password = r#"botserver_login_failures_total{reason="password"}"#;
    assert_eq!(moved(password), 2.0, "{after}");
    let unknown = r#"botserver_login_failures_total{reason="unknown_user"}"#;
    assert_eq!(moved(unknown), unknown_failures);
    assert_eq!(moved("botserver_account_lockouts_total"), 1.0);
    let login_4xx =
        r#"botserver_http_requests_total{method="POST",route="/api/v1/auth/login",status="4xx"}"#;
    assert_eq!(moved(login_4xx), 2.0 + unknown_failures + 1.0, "{after}");
    let limited = r#"botserver_rate_limited_total{route_class="login"}"#;
    assert_eq!(moved(limited), 1.0, "{after}");
    let open = sample(&after, "botserver_http_connections_open");
    assert!(open >= 1.0, "the scrape's own connection is open: {after}");

    let traps: f64 = ["fuel", "deadline"]
        .iter()
        .map(|kind| moved(&format!(r#"botserver_plugin_traps_total{{kind="{kind}"}}"#)))
        .sum();
    assert_eq!(traps, 1.0, "{after}");
    let trapped = r#"botserver_plugin_invocations_total{outcome="trap"}"#;
    assert_eq!(moved(trapped), 1.0);
    assert!(moved("botserver_plugin_fuel_used_total") > 0.0, "{after}");
    assert_eq!(moved("botserver_ws_connections_total"), 1.0);
    let sent = r#"botserver_ws_messages_total{direction="sent"}"#;
    assert_eq!(moved(sent), 1.0);
    let granted = r#"botserver_privilege_changes_total{kind="grant"}"#;
    assert_eq!(moved(granted), 1.0);

    let unmatched =
        r#"botserver_http_requests_total{method="GET",route="<unmatched>",status="4xx"}"#;
    assert_eq!(moved(unmatched), 1.0, "{after}");
    assert!(!after.contains("canary-4711"), "a raw path became a label");
    for line in after.lines().filter(|line| !line.starts_with('#')) {
        assert!(!line.contains("erin"), "{line}");
        assert!(!line.contains("nobody"), "{line}");
        assert!(!line.contains(&tenant.id.to_string()), "{line}");
    }
}

/// Metric names an expression refers to: every `botserver_*` identifier.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("botserver_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Returns the family a sample name belongs to.
fn family(name: &str) -> &str {
    ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

async fn alert_rules_name_exported_metrics(backend: Backend) {
    use yaml_rust2::YamlLoader;

    let server = TestServer::start(backend).await;
    let (_, root) = server.bootstrap().await;
    let (_, exported) = scrape(&server, Some(&root)).await;

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/prometheus/alerts.yml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let documents = YamlLoader::load_from_str(&text).expect("valid YAML");
    let groups = documents[0]["groups"].as_vec().expect("a `groups` list");
    let mut alerts = Vec::new();
    for group in groups {
        assert!(group["name"].as_str().is_some(), "a group without a name");
        for rule in group["rules"].as_vec().expect("a `rules` list") {
            let alert = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"].as_str().expect("an `expr`");
            let severity = rule["labels"]["severity"].as_str().expect("a severity");
            assert!(["warning", "critical"].contains(&severity), "{alert}");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{alert} names no metric");
            for name in &names {
                let described = format!("# TYPE {} ", family(name));
                assert!(
                    exported.contains(&described),
                    "{alert}: `{name}` is not exported"
                );
            }
            alerts.push((alert.to_owned(), severity.to_owned(), names));
        }
    }
    let find = |metric: &str, severity: &str| {
        alerts
            .iter()
            .any(|(_, level, names)| level == severity && names.contains(metric))
    };
    assert!(find("botserver_login_failures_total", "warning"));
    assert!(find("botserver_login_failures_total", "critical"));
    assert!(find("botserver_privilege_changes_total", "critical"));
    assert!(find("botserver_plugin_traps_total", "warning"));
}
