//! A test server per test: its own data directory, its own SQLite file or
//! PostgreSQL database, its own Redis key prefix, and a real listener on a
//! loopback port chosen by the OS.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use botserver::auth::Role;
use botserver::auth::password::Password;
use botserver::config::{Config, Overrides};
use botserver::http::{AppState, serve};
use botserver::storage::users::{self, NewUser};
use botserver::storage::{Tenant, UserId, tenants};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::{Connection as _, Executor as _};
use tokio::sync::oneshot;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use uuid::Uuid;

/// Admin database of the local PostgreSQL used to create per-test ones.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Local Redis.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Password of every bootstrap admin in tests.
pub const ADMIN_PASSWORD: &str = "admin password for tests 1";

/// Which database and session store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file and in-process sessions.
    Sqlite,
    /// PostgreSQL database and Redis sessions.
    Postgres,
}

/// Generates `sqlite` and `postgres` test functions for each scenario.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$name($crate::harness::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    super::$name($crate::harness::Backend::Postgres).await;
                }
            }
        )*
    };
}

/// Captured log output of every server in this test binary, as JSON lines.
pub fn captured_logs() -> String {
    let buffer = log_buffer()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    String::from_utf8_lossy(&buffer).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

#[derive(Clone)]
struct BufferWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufferWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logging() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let writer = BufferWriter(Arc::clone(log_buffer()));
        let _ = tracing_subscriber::fmt()
            .json()
            // The compiler crates stay at info: their trace output for one
            // component runs to hundreds of megabytes.
            .with_env_filter(
                "trace,hyper=info,h2=info,tower=info,reqwest=info,redis=info,\
                 cranelift_codegen=info,cranelift_frontend=info,regalloc2=info,\
                 wasmtime=info,wasmtime_cranelift=info,wasmtime_environ=info,\
                 wasmtime_internal_cranelift=info,wasmparser=info",
            )
            .with_writer(move || writer.clone())
            .finish()
            // The server binary drops the WebSocket library's payload lines
            // the same way.
            .with(botserver::cli::logging::payload_filter())
            .try_init();
    });
}

/// Rate limits and connection caps for tests that do not exercise them.
/// Every test client shares 127.0.0.1, so the product defaults (100
/// requests a minute, 10 logins a minute) would refuse ordinary scenarios.
/// Tests of the limits set their own values over these, or start with
/// [`TestServer::start_with_product_limits`].
const RELAXED_LIMITS: &[(&str, &str)] = &[
    ("BOTSERVER_RATE_LIMIT_PER_IP", "1000000"),
    ("BOTSERVER_RATE_LIMIT_PER_USER", "1000000"),
    ("BOTSERVER_RATE_LIMIT_LOGIN_PER_IP", "1000000"),
    ("BOTSERVER_RATE_LIMIT_TICKET_PER_IP", "1000000"),
    ("BOTSERVER_WS_MAX_CONNECTIONS_PER_USER", "10000"),
    ("BOTSERVER_WS_MAX_CONNECTIONS_PER_IP", "10000"),
    ("BOTSERVER_WS_MESSAGES_PER_MINUTE", "1000000"),
];

/// Extra settings for one test server.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Environment-style settings added to the defaults of the backend.
    pub env: Vec<(&'static str, String)>,
}

/// A running server with an HTTP client.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The client.
    pub client: reqwest::Client,
    /// The server's state, for direct database access in checks.
    pub state: AppState,
    /// The data directory.
    pub data_dir: tempfile::TempDir,
    /// The per-test PostgreSQL database URL.
    pub database_url: Option<String>,
    pg_database: Option<String>,
    redis_prefix: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    /// The settings and data path it started with, for [`Self::start_peer`].
    config_env: HashMap<String, String>,
    data_path: std::path::PathBuf,
}

/// Creates a per-test PostgreSQL database and returns its name and URL.
pub async fn create_pg_database() -> (String, String) {
    let name = format!("bs_test_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::postgres::PgConnection::connect(PG_ADMIN_URL)
        .await
        .expect("connect to PostgreSQL at 127.0.0.1:5432 (start it with scripts/services)");
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create test database");
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    (name, url)
}

/// Drops a per-test database, from any context including `Drop`.
pub fn drop_pg_database(name: &str) {
    let name = name.to_owned();
    let _ = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            if let Ok(mut admin) = sqlx::postgres::PgConnection::connect(PG_ADMIN_URL).await {
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let _ = admin.execute(sql.as_str()).await;
            }
        });
    })
    .join();
}

/// Deletes every Redis key under a per-test prefix.
pub fn drop_redis_prefix(prefix: &str) {
    use redis::Commands as _;
    let Ok(client) = redis::Client::open(REDIS_URL) else {
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

impl TestServer {
    /// Starts a server with default settings.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, Settings::default()).await
    }

    /// Starts a server with extra settings and relaxed rate limits.
    pub async fn start_with(backend: Backend, settings: Settings) -> Self {
        Self::launch(backend, settings, true).await
    }

    /// Starts a server with extra settings and the product's default rate
    /// limits and connection caps.
    pub async fn start_with_product_limits(backend: Backend, settings: Settings) -> Self {
        Self::launch(backend, settings, false).await
    }

    async fn launch(backend: Backend, settings: Settings, relaxed: bool) -> Self {
        init_logging();
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut env: HashMap<String, String> = HashMap::new();
        let mut pg_database = None;
        let mut database_url = None;
        let mut redis_prefix = None;
        if backend == Backend::Postgres {
            let (name, url) = create_pg_database().await;
            let prefix = format!("bs-test-{}:", Uuid::new_v4().simple());
            env.insert("DATABASE_URL".into(), url.clone());
            env.insert("BOTSERVER_REDIS_URL".into(), REDIS_URL.into());
            env.insert("BOTSERVER_REDIS_KEY_PREFIX".into(), prefix.clone());
            pg_database = Some(name);
            database_url = Some(url);
            redis_prefix = Some(prefix);
        }
        if relaxed {
            for (key, value) in RELAXED_LIMITS {
                env.insert((*key).into(), (*value).into());
            }
        }
        for (key, value) in settings.env {
            env.insert(key.into(), value);
        }
        let data_path = data_dir.path().join("data");
        let (base, state, shutdown) = spawn_server(&env, &data_path).await;
        Self {
            base,
            client: reqwest::Client::new(),
            state,
            data_dir,
            database_url,
            pg_database,
            redis_prefix,
            shutdown: Some(shutdown),
            config_env: env,
            data_path,
        }
    }

    /// Starts another node of this server's deployment: the same database,
    /// data directory (so the same keys), Redis prefix and settings, with
    /// `settings` on top. This server keeps ownership of all of them, so
    /// dropping the peer deletes nothing; drop the peer first.
    pub async fn start_peer(&self, settings: Settings) -> Self {
        let mut env = self.config_env.clone();
        for (key, value) in settings.env {
            env.insert(key.into(), value);
        }
        let (base, state, shutdown) = spawn_server(&env, &self.data_path).await;
        Self {
            base,
            client: reqwest::Client::new(),
            state,
            data_dir: tempfile::tempdir().expect("temp dir"),
            database_url: self.database_url.clone(),
            pg_database: None,
            redis_prefix: None,
            shutdown: Some(shutdown),
            config_env: env,
            data_path: self.data_path.clone(),
        }
    }

    /// Creates a tenant directly in storage, with its data key.
    pub async fn create_tenant(&self, name: &str) -> Tenant {
        let tenant = tenants::create(&self.state.db, name)
            .await
            .expect("create tenant");
        self.state
            .vault
            .ensure_tenant_key(tenant.id)
            .await
            .expect("tenant key");
        tenant
    }

    /// Creates a user directly in storage.
    pub async fn create_user(
        &self,
        tenant: &Tenant,
        username: &str,
        password: &str,
        role: Role,
    ) -> UserId {
        let hash = self
            .state
            .auth
            .hasher()
            .hash(&Password::new(password))
            .await
            .expect("hash");
        let id = UserId(Uuid::new_v4());
        let user = NewUser {
            id,
            tenant_id: tenant.id,
            username,
            password_hash: &hash,
            role,
            email_sealed: None,
        };
        users::insert(&self.state.db, user)
            .await
            .expect("insert user");
        id
    }

    /// Creates tenant `tenant-a` with platform admin `root`; returns its
    /// access token.
    pub async fn bootstrap(&self) -> (Tenant, String) {
        let tenant = self.create_tenant("tenant-a").await;
        self.create_user(&tenant, "root", ADMIN_PASSWORD, Role::PlatformAdmin)
            .await;
        let tokens = self.login_ok("tenant-a", "root", ADMIN_PASSWORD).await;
        (tenant, access(&tokens))
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request sent")
    }

    /// Sends a request and returns status and JSON body (`Null` if empty).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let response = self.call(method, path, token, body).await;
        let status = response.status();
        let text = response.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        (status, value)
    }

    /// Logs in and returns the raw response.
    pub async fn login(&self, tenant: &str, username: &str, password: &str) -> reqwest::Response {
        let body =
            serde_json::json!({"tenant": tenant, "username": username, "password": password});
        self.call(Method::POST, "/api/v1/auth/login", None, Some(body))
            .await
    }

    /// Logs in and returns the token response, failing the test otherwise.
    pub async fn login_ok(&self, tenant: &str, username: &str, password: &str) -> Value {
        let response = self.login(tenant, username, password).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "login of `{username}` failed"
        );
        response.json().await.expect("token JSON")
    }

    /// Presents a refresh token.
    pub async fn refresh(&self, refresh_token: &str) -> (StatusCode, Value) {
        let body = serde_json::json!({"refresh_token": refresh_token});
        self.json(Method::POST, "/api/v1/auth/refresh", None, Some(body))
            .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(name) = self.pg_database.take() {
            drop_pg_database(&name);
        }
        if let Some(prefix) = self.redis_prefix.take() {
            drop_redis_prefix(&prefix);
        }
    }
}

/// Builds the state from `env` and serves it on a loopback port; returns
/// the base URL, the state and the shutdown trigger.
async fn spawn_server(
    env: &HashMap<String, String>,
    data_path: &std::path::Path,
) -> (String, AppState, oneshot::Sender<()>) {
    let overrides = Overrides {
        data_dir: Some(data_path.to_owned()),
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Overrides::default()
    };
    let config =
        Config::load(&overrides, |name| env.get(name).cloned()).expect("valid test config");
    let state = AppState::build(config).await.expect("server state");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("local address");
    let (shutdown, stopped) = oneshot::channel::<()>();
    let served = state.clone();
    tokio::spawn(async move {
        let _ = serve(listener, served, async {
            let _ = stopped.await;
        })
        .await;
    });
    (format!("http://{address}"), state, shutdown)
}

/// Returns the access token of a token response.
pub fn access(tokens: &Value) -> String {
    tokens["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// Returns the refresh token of a token response.
pub fn refresh_token(tokens: &Value) -> String {
    tokens["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned()
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
