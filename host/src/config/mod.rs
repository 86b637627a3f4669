//! Server configuration: environment variables, an optional TOML file and
//! command-line overrides, validated in one pass.
//!
//! Every setting has an environment variable name (the name operators already
//! know) and a config-file key (the same name in lowercase without the
//! `BOTSERVER_` prefix). The environment wins over the file, and the command
//! line wins over both. Validation reports every bad value at once, one line
//! each, so an operator fixes a broken deployment in one round.

pub mod origin;
mod settings;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::crypto::KeyBytes;

pub use settings::{SETTINGS, Setting};

/// Default address of the HTTP listener: loopback only, so a fresh install
/// is not reachable from the network until the operator says so.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Default data directory for the embedded SQLite file and generated keys.
pub const DEFAULT_DATA_DIR: &str = "./data";

/// Validated server configuration.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Directory for the SQLite file and generated key files (mode 0700).
    pub data_dir: PathBuf,
    /// Whether missing keys stop startup instead of being generated.
    pub production: bool,
    /// PostgreSQL URL; `None` selects the embedded SQLite file.
    pub database_url: Option<String>,
    /// Redis URL for sessions; `None` keeps sessions in process.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key, so several deployments can share a server.
    pub redis_key_prefix: String,
    /// Idle time after which a session and its refresh tokens stop working.
    pub session_timeout: Duration,
    /// Failed logins in a row that lock an account.
    pub max_login_attempts: u32,
    /// How long a lock lasts. Failures during a lock do not extend it.
    pub lockout_duration: Duration,
    /// PEM file with the RSA private key that signs access tokens.
    pub jwt_key_path: Option<PathBuf>,
    /// HMAC key for short-lived values the server checks itself.
    pub jwt_secret: Option<KeyBytes>,
    /// Master key that wraps the per-tenant data keys of database columns.
    pub database_encryption_key: Option<KeyBytes>,
    /// Master key for files and configuration secrets. It also wraps the
    /// database data keys when `DATABASE_ENCRYPTION_KEY` is not set.
    pub encryption_key: Option<KeyBytes>,
    /// Settings that later subsystems read, already checked for their form.
    pub extra: ExtraSettings,
}

/// Further settings operators know from earlier deployments.
///
/// NOTE: the OIDC settings are checked for their form only; nothing uses
/// them yet. Every other setting here is enforced.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ExtraSettings {
    /// `BOTSERVER_ENABLE_AUDIT`: whether audit events are recorded; on
    /// unless set to `false`.
    pub enable_audit: bool,
    /// `BOTSERVER_AUDIT_API_CALLS`: whether every API request is audited.
    pub audit_api_calls: bool,
    /// `BOTSERVER_AUDIT_RETENTION_DAYS`; default 365.
    pub audit_retention_days: Option<u32>,
    /// `BOTSERVER_LOG_DIR`: where daily log files go; `None` logs to
    /// stderr only.
    pub log_dir: Option<PathBuf>,
    /// `BOTSERVER_LOG_RETENTION_DAYS`; default 14.
    pub log_retention_days: Option<u32>,
    /// `BOTSERVER_REQUIRE_MFA`: every user needs a second factor.
    pub require_mfa: bool,
    /// `BOTSERVER_METRICS_TOKEN`: a bearer token that may scrape `/metrics`.
    pub metrics_token: Option<crate::metrics::ScrapeToken>,
    /// `BOTSERVER_ALLOWED_ORIGINS`, comma separated: origins other than the
    /// server's own whose pages may open chat WebSockets and call the API
    /// through CORS.
    pub allowed_origins: Vec<origin::Origin>,
    /// `BOTSERVER_WS_MAX_MESSAGE_SIZE`, bytes; default 10 MiB.
    pub ws_max_message_size: Option<usize>,
    /// `BOTSERVER_WS_PING_INTERVAL`, seconds between pings; default 30.
    pub ws_ping_interval: Option<u64>,
    /// `BOTSERVER_RATE_LIMIT_PER_IP`, requests per minute.
    pub rate_limit_per_ip: Option<u32>,
    /// `BOTSERVER_RATE_LIMIT_PER_USER`, requests and chat messages per
    /// hour.
    pub rate_limit_per_user: Option<u32>,
    /// `BOTSERVER_RATE_LIMIT_LOGIN_PER_IP`, login requests per minute, and
    /// refresh requests separately.
    pub rate_limit_login_per_ip: Option<u32>,
    /// `BOTSERVER_RATE_LIMIT_TICKET_PER_IP`, ws-ticket requests per minute,
    /// and anonymous-session requests separately.
    pub rate_limit_ticket_per_ip: Option<u32>,
    /// `BOTSERVER_TRUSTED_PROXIES`: peers whose forwarded-for header names
    /// the client; empty trusts none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `BOTSERVER_FORWARDED_HEADER`: the header trusted proxies write.
    pub forwarded_header: crate::http::client_ip::ForwardedHeader,
    /// `BOTSERVER_WS_MAX_CONNECTIONS_PER_USER`, per server.
    pub ws_max_connections_per_user: Option<u32>,
    /// `BOTSERVER_WS_MAX_CONNECTIONS_PER_IP`, per server.
    pub ws_max_connections_per_ip: Option<u32>,
    /// `BOTSERVER_WS_MESSAGES_PER_MINUTE`, per connection.
    pub ws_messages_per_minute: Option<u32>,
    /// `BOTSERVER_MAX_UPLOAD_SIZE`, bytes; plugin uploads default to 10 MiB.
    pub max_upload_size: Option<u64>,
    /// `BOTSERVER_TLS_CERT`: PEM certificate chain; with the key, the
    /// server speaks TLS only.
    pub tls_cert: Option<PathBuf>,
    /// `BOTSERVER_TLS_KEY`: PEM private key of the certificate.
    pub tls_key: Option<PathBuf>,
    /// `BOTSERVER_TLS_MIN_VERSION`: `1.2` or `1.3`; TLS 1.3 only by default.
    pub tls_min_version: Option<String>,
    /// `BOTSERVER_TLS_CLIENT_CA`: PEM CA certificates whose client
    /// certificates operator requests need.
    pub tls_client_ca: Option<PathBuf>,
    /// `BOTSERVER_MAX_CONNECTIONS`: open connections; default 1024.
    pub max_connections: Option<usize>,
    /// `BOTSERVER_HEADER_READ_TIMEOUT`, seconds to send a request head or
    /// complete the TLS handshake; default 10.
    pub header_read_timeout: Option<u64>,
    /// `BOTSERVER_WRITE_TIMEOUT`, seconds a write may stall on a client
    /// that reads nothing; default 30.
    pub write_timeout: Option<u64>,
    /// `ZITADEL_DOMAIN`.
    pub zitadel_domain: Option<String>,
    /// `ZITADEL_CLIENT_ID`.
    pub zitadel_client_id: Option<String>,
    /// Whether `ZITADEL_CLIENT_SECRET` is set; the value is not kept here.
    pub has_zitadel_client_secret: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("production", &self.production)
            .field("database", &self.database_url.as_ref().map(|_| "postgres"))
            .field("redis", &self.redis_url.is_some())
            .field("session_timeout", &self.session_timeout)
            .field("max_login_attempts", &self.max_login_attempts)
            .field("lockout_duration", &self.lockout_duration)
            .field("jwt_key_path", &self.jwt_key_path)
            .field("extra", &self.extra)
            .finish_non_exhaustive()
    }
}

/// Values given on the command line; they override the environment and file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--config`: TOML file with settings.
    pub config_file: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--production`.
    pub production: bool,
}

/// Configuration that failed to load or validate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("failed to read config file `{path}`")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// One or more values are invalid; each line names one.
    #[error("invalid configuration:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl Config {
    /// Loads the configuration from `overrides`, the process environment and
    /// the config file named by `--config` or `BOTSERVER_CONFIG`.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError`] when the file cannot be read or any value is
    /// invalid.
    pub fn from_env(overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::load(overrides, |name| std::env::var(name).ok())
    }

    /// Loads the configuration with `env` standing in for the environment.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError`] when the file cannot be read or any value is
    /// invalid.
    pub fn load(
        overrides: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file = overrides
            .config_file
            .clone()
            .or_else(|| env("BOTSERVER_CONFIG").map(PathBuf::from));
        let mut raw = RawValues::default();
        let mut problems = Vec::new();
        if let Some(path) = &file {
            raw.read_file(path, &mut problems)?;
        }
        raw.read_env(&env);
        let config = settings::build(&raw, overrides, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Returns the path of the embedded SQLite database.
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("botserver.sqlite3")
    }

    /// Returns whether the server speaks TLS itself: a certificate and key
    /// are configured.
    pub fn serves_tls(&self) -> bool {
        self.extra.tls_cert.is_some() && self.extra.tls_key.is_some()
    }
}

/// Source of a raw value, for error messages.
#[derive(Clone, Debug)]
enum Source {
    Env,
    File(PathBuf),
}

/// Raw setting values keyed by environment variable name.
#[derive(Default)]
struct RawValues {
    values: BTreeMap<&'static str, (String, Source)>,
}

impl RawValues {
    fn read_file(&mut self, path: &Path, problems: &mut Vec<String>) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        let table: toml::Table = match toml::from_str(&text) {
            Ok(table) => table,
            Err(error) => {
                problems.push(format!("invalid config file `{}`: {error}", path.display()));
                return Ok(());
            }
        };
        for (key, value) in table {
            let Some(setting) = SETTINGS.iter().find(|s| s.file_key() == key) else {
                problems.push(format!(
                    "unknown key `{key}` in config file `{}`",
                    path.display()
                ));
                continue;
            };
            let text = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(number) => number.to_string(),
                toml::Value::Boolean(flag) => flag.to_string(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|item| {
                        item.as_str()
                            .map_or_else(|| item.to_string(), str::to_owned)
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            self.values
                .insert(setting.env, (text, Source::File(path.to_owned())));
        }
        Ok(())
    }

    fn read_env(&mut self, env: &impl Fn(&str) -> Option<String>) {
        for setting in SETTINGS {
            if let Some(value) = env(setting.env) {
                self.values.insert(setting.env, (value, Source::Env));
            }
        }
    }

    fn get(&self, env_name: &'static str) -> Option<(&str, Described)> {
        self.values.get(env_name).map(|(value, origin)| {
            let described = Described {
                env_name,
                origin: origin.clone(),
            };
            (value.as_str(), described)
        })
    }
}

/// Names a setting the way its origin spells it.
struct Described {
    env_name: &'static str,
    origin: Source,
}

impl std::fmt::Display for Described {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.origin {
            Source::Env => write!(f, "`{}`", self.env_name),
            Source::File(path) => {
                let key = settings::file_key_of(self.env_name);
                write!(f, "`{key}` in config file `{}`", path.display())
            }
        }
    }
}
