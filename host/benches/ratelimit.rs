//! Load test of the rate limiter on loopback: one client floods while
//! well-behaved clients keep asking at their normal pace.
//!
//! Run with `scripts/bench`; results go to `docs/benchmarks.md`. The bench
//! starts a server in this process (SQLite, then SQLite with Redis at
//! 127.0.0.1:6379 when it is reachable), with 127.0.0.1 as a trusted proxy so
//! that each client is its own address through `X-Forwarded-For`. Each
//! backend runs three phases of the same length: the well-behaved clients
//! alone, then with a flood paced at [`PACED_FLOOD_PER_SECOND`] (100 times
//! the budget), then with a flood as fast as its connections allow.
//! Well-behaved clients send `GET /api/v1/me` with their own access token
//! (token check, session check, a database read); the flood sends the same
//! request with an invalid token. The unpaced flood client runs on the same
//! cores as the server, so that phase shows what CPU saturation costs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use botserver::auth::Role;
use botserver::auth::password::Password;
use botserver::config::{Config, Overrides};
use botserver::http::{AppState, serve};
use botserver::storage::users::{self, NewUser};
use botserver::storage::{UserId, tenants};
use uuid::Uuid;

/// Length of each phase.
const PHASE: Duration = Duration::from_secs(10);
/// Well-behaved clients, each with its own address and account.
const CLIENTS: usize = 4;
/// Time between two requests of one well-behaved client: 5 a second,
/// half the address budget.
const CLIENT_PERIOD: Duration = Duration::from_millis(200);
/// Concurrent connections of the flooding client.
const FLOOD_CONNECTIONS: usize = 16;
/// Requests per second of the paced flood, over all its connections.
const PACED_FLOOD_PER_SECOND: u32 = 1000;
/// `BOTSERVER_RATE_LIMIT_PER_IP` of the bench: 10 a second.
const PER_IP_PER_MINUTE: u32 = 600;
const PASSWORD: &str = "bench password 12345";

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

struct Server {
    base: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

async fn start_server(redis_prefix: Option<&str>) -> BenchResult<(Server, AppState)> {
    let data = tempfile::tempdir()?;
    let mut env: HashMap<&str, String> = HashMap::new();
    env.insert("BOTSERVER_RATE_LIMIT_PER_IP", PER_IP_PER_MINUTE.to_string());
    env.insert("BOTSERVER_TRUSTED_PROXIES", "127.0.0.1".to_owned());
    if let Some(prefix) = redis_prefix {
        env.insert("BOTSERVER_REDIS_URL", "redis://127.0.0.1:6379".to_owned());
        env.insert("BOTSERVER_REDIS_KEY_PREFIX", prefix.to_owned());
    }

    let overrides = Overrides {
        data_dir: Some(data.path().join("data")),
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Overrides::default()
    };
    let config = Config::load(&overrides, |name| env.get(name).cloned())?;
    let state = AppState::build(config).await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = state.clone();
    tokio::spawn(async move {
        let _ = serve(listener, served, async {
            let _ = stopped.await;
        })
        .await;
    });
    let server = Server {
        base,
        shutdown: Some(shutdown),
        _data: data,
    };
    Ok((server, state))
}

/// Creates the tenant and one user per client; returns their tokens.
async fn sign_in_clients(server: &Server, state: &AppState) -> BenchResult<Vec<String>> {
    let tenant = tenants::create(&state.db, "bench").await?;
    state.vault.ensure_tenant_key(tenant.id).await?;
    let hash = state.auth.hasher().hash(&Password::new(PASSWORD)).await?;
    let client = reqwest::Client::new();
    let mut tokens = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let username = format!("user{i}");
        let user = NewUser {
            id: UserId(Uuid::new_v4()),
            tenant_id: tenant.id,
            username: &username,
            password_hash: &hash,
            role: Role::User,
            email_sealed: None,
        };
        users::insert(&state.db, user).await?;
        let body =
            serde_json::json!({"tenant": "bench", "username": username, "password": PASSWORD});
        let response = client
            .post(format!("{}/api/v1/auth/login", server.base))
            .header("x-forwarded-for", client_address(i))
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        let tokens_json: serde_json::Value = response.json().await?;
        let access = tokens_json["access_token"]
            .as_str()
            .ok_or("login returned no access token")?;
        tokens.push(access.to_owned());
    }
    Ok(tokens)
}

fn client_address(i: usize) -> String {
    format!("198.51.100.{}", 10 + i)
}

/// Latencies and failures of the well-behaved clients in one phase.
#[derive(Default)]
struct ClientStats {
    latencies: Vec<Duration>,
    failures: u64,
}

async fn well_behaved(base: String, token: String, address: String) -> ClientStats {
    let client = reqwest::Client::new();
    let url = format!("{base}/api/v1/me");
    let mut stats = ClientStats::default();
    let mut ticks = tokio::time::interval(CLIENT_PERIOD);
    let end = Instant::now() + PHASE;
    while Instant::now() < end {
        ticks.tick().await;
        let started = Instant::now();
        let sent = client
            .get(&url)
            .bearer_auth(&token)
            .header("x-forwarded-for", &address)
            .send()
            .await;
        let ok = match sent {
            Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            stats.latencies.push(started.elapsed());
        } else {
            stats.failures += 1;
        }
    }
    stats
}

/// Counts of the flood's responses.
#[derive(Default)]
struct FloodCounts {
    passed: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
}

/// Sending mode of the flood.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flood {
    None,
    Paced,
    Unpaced,
}

/// Returns the flooding client's address: a fresh one per flooding phase,
/// so each flood starts with a full budget.
fn flooder_address(mode: Flood) -> &'static str {
    match mode {
        Flood::Unpaced => "203.0.113.10",
        Flood::None | Flood::Paced => "203.0.113.9",
    }
}

async fn flood(base: String, mode: Flood, counts: Arc<FloodCounts>, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::new();
    let url = format!("{base}/api/v1/me");
    let per_connection = PACED_FLOOD_PER_SECOND / u32::try_from(FLOOD_CONNECTIONS).unwrap_or(1);
    let mut pace = tokio::time::interval(Duration::from_secs(1) / per_connection.max(1));
    while !stop.load(Ordering::Relaxed) {
        if mode == Flood::Paced {
            pace.tick().await;
        }
        let sent = client
            .get(&url)
            .bearer_auth("flood-invalid-token")
            .header("x-forwarded-for", flooder_address(mode))
            .send()
            .await;
        let counter = match &sent {
            Ok(response) if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                &counts.limited
            }
            // Past the limiter, an invalid token is a 401.
            Ok(response) if response.status() == reqwest::StatusCode::UNAUTHORIZED => {
                &counts.passed
            }
            _ => &counts.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(response) = sent {
            let _ = response.bytes().await;
        }
    }
}

struct Phase {
    clients: ClientStats,
    flood: Option<FloodOutcome>,
}

struct FloodOutcome {
    passed: u64,
    limited: u64,
    other: u64,
    elapsed: Duration,
}

async fn run_phase(base: &str, tokens: &[String], mode: Flood) -> Phase {
    let counts = Arc::new(FloodCounts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let flood_started = Instant::now();
    let connections = if mode == Flood::None {
        0
    } else {
        FLOOD_CONNECTIONS
    };

    let flooders: Vec<_> = (0..connections)
        .map(|_| {
            let (counts, stop) = (Arc::clone(&counts), Arc::clone(&stop));
            tokio::spawn(flood(base.to_owned(), mode, counts, stop))
        })
        .collect();

    let clients: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            tokio::spawn(well_behaved(
                base.to_owned(),
                token.clone(),
                client_address(i),
            ))
        })
        .collect();
    let mut stats = ClientStats::default();
    for client in clients {
        if let Ok(mut one) = client.await {
            stats.latencies.append(&mut one.latencies);
            stats.failures += one.failures;
        }
    }

    stop.store(true, Ordering::Relaxed);
    let elapsed = flood_started.elapsed();
    for flooder in flooders {
        let _ = flooder.await;
    }
    let flood = (mode != Flood::None).then(|| FloodOutcome {
        passed: counts.passed.load(Ordering::Relaxed),
        limited: counts.limited.load(Ordering::Relaxed),
        other: counts.other.load(Ordering::Relaxed),
        elapsed,
    });
    Phase {
        clients: stats,
        flood,
    }
}

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() - 1) * percent / 100]
}

fn millis(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1e3)
}

/// Formats one table row per phase of one backend.
fn rows(backend: &str, phases: &[(&str, Phase)]) -> String {
    let mut text = String::new();
    for (name, phase) in phases {
        let mut latencies = phase.clients.latencies.clone();
        latencies.sort();
        let flood = phase.flood.as_ref().map_or_else(
            || "| - | - | - ".to_owned(),
            |flood| {
                let seconds = flood.elapsed.as_secs_f64();
                let allowed = f64::from(PER_IP_PER_MINUTE) * (1.0 + seconds / 60.0);
                format!(
                    "| {:.0} | {} ({allowed:.0}) | {} ",
                    (flood.passed + flood.limited + flood.other) as f64 / seconds,
                    flood.passed,
                    flood.other,
                )
            },
        );
        text.push_str(&format!(
            "| {backend} | {name} | {} | {} | {} | {} | {} {flood}|\n",
            latencies.len(),
            phase.clients.failures,
            millis(percentile(&latencies, 50)),
            millis(percentile(&latencies, 99)),
            millis(latencies.last().copied().unwrap_or_default()),
        ));
    }
    text
}

async fn bench_backend(name: &str, redis_prefix: Option<&str>) -> BenchResult<String> {
    let (server, state) = start_server(redis_prefix).await?;
    let tokens = sign_in_clients(&server, &state).await?;
    // Warm the connection pools and the database before measuring.
    let _ = run_phase_warmup(&server.base, &tokens).await;
    let mut phases = Vec::new();
    for (label, mode) in [
        ("alone", Flood::None),
        ("paced flood", Flood::Paced),
        ("unpaced flood", Flood::Unpaced),
    ] {
        phases.push((label, run_phase(&server.base, &tokens, mode).await));
    }
    Ok(rows(name, &phases))
}

async fn run_phase_warmup(base: &str, tokens: &[String]) -> BenchResult<()> {
    let client = reqwest::Client::new();
    for (i, token) in tokens.iter().enumerate() {
        client
            .get(format!("{base}/api/v1/me"))
            .bearer_auth(token)
            .header("x-forwarded-for", client_address(i))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

fn redis_available() -> bool {
    std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], 6379)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn drop_redis_prefix(prefix: &str) {
    use redis::Commands as _;
    let Ok(client) = redis::Client::open("redis://127.0.0.1:6379") else {
        return;
    };
    let Ok(mut connection) = client.get_connection() else {
        return;
    };
    let keys: Vec<String> = match connection.scan_match(format!("{prefix}*")) {
        Ok(keys) => keys.filter_map(Result::ok).collect(),
        Err(_) => return,
    };
    if !keys.is_empty() {
        let _: redis::RedisResult<()> = connection.del(keys);
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .map(|line| line.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores of {cpu}")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> BenchResult<()> {
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    let mut table = String::from(
        "| limiter | phase | client requests | client failures | p50 (ms) | p99 (ms) | max (ms) \
         | flood requests/s | flood passed (allowed) | flood other |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    table.push_str(&bench_backend("in process", None).await?);
    if redis_available() {
        let prefix = format!("bench-{}:", Uuid::new_v4().simple());
        let rows = bench_backend("Redis", Some(&prefix)).await;
        drop_redis_prefix(&prefix);
        table.push_str(&rows?);
    } else {
        table.push_str(
            "| Redis | not measured: Redis not reachable at 127.0.0.1:6379 | | | | | | | | |\n",
        );
    }
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    table.push_str(&format!(
        "\n{CLIENTS} clients at {} requests/s each for {} s per phase, {FLOOD_CONNECTIONS} flood \
         connections (paced: {PACED_FLOOD_PER_SECOND} requests/s in all), address budget \
         {PER_IP_PER_MINUTE}/min; clients and server in one process on {}, load average {} at \
         the start, profile `{profile}`.\n",
        1000 / CLIENT_PERIOD.as_millis(),
        PHASE.as_secs(),
        machine(),
        load_average,
    ));
    println!("{table}");
    if let Some(path) = std::env::var_os("BOTSERVER_BENCH_OUTPUT") {
        std::fs::write(path, table)?;
    }
    Ok(())
}
