//! The table of known settings and the parsers that turn raw strings into
//! typed values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::origin::Origin;
use super::{Config, DEFAULT_DATA_DIR, Described, ExtraSettings, Overrides, RawValues};
use crate::crypto::KeyBytes;
use crate::http::client_ip::{ForwardedHeader, parse_networks};
use crate::metrics::ScrapeToken;

/// One known setting.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// Environment variable name.
    pub env: &'static str,
    /// Meaning of the value, for help output.
    pub help: &'static str,
}

impl Setting {
    /// Returns the config-file key: the lowercase name without `BOTSERVER_`.
    pub fn file_key(&self) -> String {
        file_key_of(self.env)
    }
}

pub(super) fn file_key_of(env_name: &str) -> String {
    env_name
        .strip_prefix("BOTSERVER_")
        .unwrap_or(env_name)
        .to_ascii_lowercase()
}

/// Every setting the server reads.
pub const SETTINGS: &[Setting] = &[
    Setting {
        env: "BOTSERVER_LISTEN",
        help: "address the HTTP server binds",
    },
    Setting {
        env: "BOTSERVER_DATA_DIR",
        help: "directory for the SQLite file and key files",
    },
    Setting {
        env: "BOTSERVER_ENV",
        help: "`production` rejects a start with missing keys instead of generating them",
    },
    Setting {
        env: "DATABASE_URL",
        help: "postgres:// URL; unset uses SQLite in the data directory",
    },
    Setting {
        env: "BOTSERVER_REDIS_URL",
        help: "redis:// URL for sessions; unset keeps them in process",
    },
    Setting {
        env: "BOTSERVER_REDIS_KEY_PREFIX",
        help: "prefix of every Redis key this server writes",
    },
    Setting {
        env: "BOTSERVER_SESSION_TIMEOUT",
        help: "session idle timeout in seconds",
    },
    Setting {
        env: "BOTSERVER_MAX_LOGIN_ATTEMPTS",
        help: "failed logins that lock an account",
    },
    Setting {
        env: "BOTSERVER_LOCKOUT_DURATION",
        help: "account lock duration in seconds",
    },
    Setting {
        env: "BOTSERVER_JWT_KEY",
        help: "PEM file with the RSA key that signs access tokens",
    },
    Setting {
        env: "BOTSERVER_JWT_SECRET",
        help: "64 hex characters: HMAC key for tickets",
    },
    Setting {
        env: "DATABASE_ENCRYPTION_KEY",
        help: "64 hex characters: wraps column data keys",
    },
    Setting {
        env: "BOTSERVER_ENCRYPTION_KEY",
        help: "64 hex characters: wraps file keys",
    },
    Setting {
        env: "BOTSERVER_ENABLE_AUDIT",
        help: "`false` stops recording audit events (default `true`)",
    },
    Setting {
        env: "BOTSERVER_AUDIT_API_CALLS",
        help: "`true` also records every API request in the audit trail, reads included",
    },
    Setting {
        env: "BOTSERVER_AUDIT_RETENTION_DAYS",
        help: "days audit events are kept (default 365, at least 31)",
    },
    Setting {
        env: "BOTSERVER_LOG_DIR",
        help: "directory for daily rotated JSON log files; unset logs to stderr only",
    },
    Setting {
        env: "BOTSERVER_LOG_RETENTION_DAYS",
        help: "days log files are kept (default 14)",
    },
    Setting {
        env: "BOTSERVER_REQUIRE_MFA",
        help: "`true` requires a second factor of every user; production mode requires one of admins",
    },
    Setting {
        env: "BOTSERVER_METRICS_TOKEN",
        help: "bearer token (32 to 512 characters) a Prometheus server presents at `/metrics`; \
               without it only platform admins' access tokens may scrape",
    },
    Setting {
        env: "BOTSERVER_ALLOWED_ORIGINS",
        help: "comma-separated origins (`https://host[:port]`) whose pages may open chat \
               WebSockets and call the API (CORS)",
    },
    Setting {
        env: "BOTSERVER_WS_MAX_MESSAGE_SIZE",
        help: "largest WebSocket message in bytes; larger ones close the connection with 1009",
    },
    Setting {
        env: "BOTSERVER_WS_PING_INTERVAL",
        help: "seconds between WebSocket pings; a peer silent for a whole interval is dropped",
    },
    Setting {
        env: "BOTSERVER_RATE_LIMIT_PER_IP",
        help: "requests per minute per client address",
    },
    Setting {
        env: "BOTSERVER_RATE_LIMIT_PER_USER",
        help: "requests and chat messages per hour per user",
    },
    Setting {
        env: "BOTSERVER_RATE_LIMIT_LOGIN_PER_IP",
        help: "login requests, and separately refresh requests, per minute per client address",
    },
    Setting {
        env: "BOTSERVER_RATE_LIMIT_TICKET_PER_IP",
        help: "ws-ticket requests, and separately anonymous-session requests, per minute per client address",
    },
    Setting {
        env: "BOTSERVER_TRUSTED_PROXIES",
        help: "comma-separated proxy addresses or CIDR ranges whose forwarded-for header names the client",
    },
    Setting {
        env: "BOTSERVER_FORWARDED_HEADER",
        help: "`x-forwarded-for` or `forwarded`: the header the trusted proxies write",
    },
    Setting {
        env: "BOTSERVER_WS_MAX_CONNECTIONS_PER_USER",
        help: "open chat WebSockets per user on one server",
    },
    Setting {
        env: "BOTSERVER_WS_MAX_CONNECTIONS_PER_IP",
        help: "open chat WebSockets per client address on one server",
    },
    Setting {
        env: "BOTSERVER_WS_MESSAGES_PER_MINUTE",
        help: "messages per minute on one chat WebSocket",
    },
    Setting {
        env: "BOTSERVER_MAX_UPLOAD_SIZE",
        help: "upload size cap in bytes",
    },
    Setting {
        env: "BOTSERVER_TLS_CERT",
        help: "PEM certificate chain file",
    },
    Setting {
        env: "BOTSERVER_TLS_KEY",
        help: "PEM private key file",
    },
    Setting {
        env: "BOTSERVER_TLS_MIN_VERSION",
        help: "`1.3` (default) or `1.2`: the oldest TLS version accepted",
    },
    Setting {
        env: "BOTSERVER_TLS_CLIENT_CA",
        help: "PEM file of CA certificates; operator requests (`/metrics`, admin actions) then \
               need a client certificate they issued",
    },
    Setting {
        env: "BOTSERVER_MAX_CONNECTIONS",
        help: "open connections served at once (default 1024); more wait in the listen backlog",
    },
    Setting {
        env: "BOTSERVER_HEADER_READ_TIMEOUT",
        help: "seconds a client has to send request headers or finish the TLS handshake, and \
               that an idle keep-alive connection stays open (default 10)",
    },
    Setting {
        env: "BOTSERVER_WRITE_TIMEOUT",
        help: "seconds a response write may wait on a client that reads nothing (default 30)",
    },
    Setting {
        env: "ZITADEL_DOMAIN",
        help: "OIDC provider domain",
    },
    Setting {
        env: "ZITADEL_CLIENT_ID",
        help: "OIDC client id",
    },
    Setting {
        env: "ZITADEL_CLIENT_SECRET",
        help: "OIDC client secret",
    },
];

/// Default prefix of Redis keys.
const DEFAULT_REDIS_KEY_PREFIX: &str = "botserver:";
/// Default session idle timeout in seconds.
const DEFAULT_SESSION_TIMEOUT: u64 = 3600;
/// Default number of failed logins that lock an account.
const DEFAULT_MAX_LOGIN_ATTEMPTS: u32 = 5;
/// Default lock duration in seconds.
const DEFAULT_LOCKOUT_DURATION: u64 = 900;

/// Collects parse failures as one line per bad value.
struct Parser<'a> {
    raw: &'a RawValues,
    problems: &'a mut Vec<String>,
}

impl Parser<'_> {
    /// Parses a setting with `parse`; `expected` completes "expected ...".
    fn parse<T>(
        &mut self,
        env_name: &'static str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let (value, described) = self.raw.get(env_name)?;
        let parsed = parse(value.trim());
        if parsed.is_none() {
            // Secrets are never echoed back, even when malformed.
            let displayed = if is_secret(env_name) {
                "<redacted>".to_owned()
            } else {
                value.escape_debug().to_string()
            };
            self.problems.push(format!(
                "invalid {described}: expected {expected}, got `{displayed}`"
            ));
        }
        parsed
    }

    fn report(&mut self, line: &str) {
        self.problems.push(line.to_owned());
    }

    fn described(&self, env_name: &'static str) -> Option<Described> {
        self.raw.get(env_name).map(|(_, described)| described)
    }
}

fn is_secret(env_name: &str) -> bool {
    env_name.ends_with("_KEY") && env_name != "BOTSERVER_JWT_KEY" && env_name != "BOTSERVER_TLS_KEY"
        || env_name.ends_with("_SECRET")
        || env_name.ends_with("_TOKEN")
}

fn positive<T: FromStr + PartialOrd + Default>(text: &str) -> Option<T> {
    text.parse::<T>().ok().filter(|value| *value > T::default())
}

fn boolean(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn key_hex(text: &str) -> Option<KeyBytes> {
    KeyBytes::from_hex(text).ok()
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn url_with_scheme(schemes: &'static [&'static str]) -> impl Fn(&str) -> Option<String> {
    move |text| {
        schemes
            .iter()
            .any(|scheme| text.starts_with(scheme) && text.len() > scheme.len())
            .then(|| text.to_owned())
    }
}

/// Builds the configuration, pushing one line per problem.
pub(super) fn build(raw: &RawValues, overrides: &Overrides, problems: &mut Vec<String>) -> Config {
    let mut p = Parser { raw, problems };

    let listen = overrides.listen.or_else(|| {
        p.parse(
            "BOTSERVER_LISTEN",
            "an address such as `127.0.0.1:8080`",
            |t| SocketAddr::from_str(t).ok(),
        )
    });
    let data_dir = overrides.data_dir.clone().or_else(|| {
        p.parse("BOTSERVER_DATA_DIR", "a directory path", |t| {
            non_empty(t).map(PathBuf::from)
        })
    });
    let env_mode = p.parse(
        "BOTSERVER_ENV",
        "`production` or `development`",
        |t| match t.to_ascii_lowercase().as_str() {
            "production" => Some(true),
            "development" | "dev" | "test" => Some(false),
            _ => None,
        },
    );
    let production = overrides.production || env_mode.unwrap_or(false);

    let database_url = p.parse(
        "DATABASE_URL",
        "a `postgres://` or `postgresql://` URL",
        url_with_scheme(&["postgres://", "postgresql://"]),
    );
    let redis_url = p.parse(
        "BOTSERVER_REDIS_URL",
        "a `redis://` or `rediss://` URL",
        url_with_scheme(&["redis://", "rediss://"]),
    );
    let redis_key_prefix = p.parse(
        "BOTSERVER_REDIS_KEY_PREFIX",
        "a non-empty prefix",
        non_empty,
    );
    let session_timeout = p.parse(
        "BOTSERVER_SESSION_TIMEOUT",
        "a positive number of seconds",
        positive::<u64>,
    );
    let max_login_attempts = p.parse(
        "BOTSERVER_MAX_LOGIN_ATTEMPTS",
        "a positive integer",
        positive::<u32>,
    );
    let lockout_duration = p.parse(
        "BOTSERVER_LOCKOUT_DURATION",
        "a positive number of seconds",
        positive::<u64>,
    );

    let hex_form = "64 hex characters (a 256-bit key)";
    let jwt_key_path = p.parse("BOTSERVER_JWT_KEY", "a PEM file path", |t| {
        non_empty(t).map(PathBuf::from)
    });
    let jwt_secret = p.parse("BOTSERVER_JWT_SECRET", hex_form, key_hex);
    let database_encryption_key = p.parse("DATABASE_ENCRYPTION_KEY", hex_form, key_hex);
    let encryption_key = p.parse("BOTSERVER_ENCRYPTION_KEY", hex_form, key_hex);

    let extra = build_extra(&mut p);

    if production {
        check_production_keys(&mut p);
    }

    Config {
        listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
        data_dir: data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        production,
        database_url,
        redis_url,
        redis_key_prefix: redis_key_prefix.unwrap_or_else(|| DEFAULT_REDIS_KEY_PREFIX.to_owned()),
        session_timeout: Duration::from_secs(session_timeout.unwrap_or(DEFAULT_SESSION_TIMEOUT)),
        max_login_attempts: max_login_attempts.unwrap_or(DEFAULT_MAX_LOGIN_ATTEMPTS),
        lockout_duration: Duration::from_secs(lockout_duration.unwrap_or(DEFAULT_LOCKOUT_DURATION)),
        jwt_key_path,
        jwt_secret,
        database_encryption_key,
        encryption_key,
        extra,
    }
}

fn build_extra(p: &mut Parser<'_>) -> ExtraSettings {
    let bool_form = "`true` or `false`";
    let extra = ExtraSettings {
        enable_audit: p
            .parse("BOTSERVER_ENABLE_AUDIT", bool_form, boolean)
            .unwrap_or(true),
        audit_api_calls: p
            .parse("BOTSERVER_AUDIT_API_CALLS", bool_form, boolean)
            .unwrap_or(false),
        audit_retention_days: p.parse(
            "BOTSERVER_AUDIT_RETENTION_DAYS",
            "a number of days of at least 31",
            |t| {
                t.parse::<u32>()
                    .ok()
                    .filter(|days| *days >= crate::audit::MIN_RETENTION_DAYS)
            },
        ),
        log_dir: p.parse("BOTSERVER_LOG_DIR", "a directory path", |t| {
            non_empty(t).map(PathBuf::from)
        }),
        log_retention_days: p.parse(
            "BOTSERVER_LOG_RETENTION_DAYS",
            "a positive number of days",
            positive::<u32>,
        ),
        require_mfa: p
            .parse("BOTSERVER_REQUIRE_MFA", bool_form, boolean)
            .unwrap_or(false),
        metrics_token: p.parse(
            "BOTSERVER_METRICS_TOKEN",
            "32 to 512 printable characters without spaces (for example from `openssl rand -hex 32`)",
            ScrapeToken::parse,
        ),
        allowed_origins: p
            .parse(
                "BOTSERVER_ALLOWED_ORIGINS",
                "comma-separated `https://host[:port]` origins",
                parse_origins,
            )
            .unwrap_or_default(),
        ws_max_message_size: p.parse(
            "BOTSERVER_WS_MAX_MESSAGE_SIZE",
            "a positive number of bytes",
            positive::<usize>,
        ),
        ws_ping_interval: p.parse(
            "BOTSERVER_WS_PING_INTERVAL",
            "a positive number of seconds",
            positive::<u64>,
        ),
        rate_limit_per_ip: p.parse(
            "BOTSERVER_RATE_LIMIT_PER_IP",
            "a positive integer",
            positive::<u32>,
        ),
        rate_limit_per_user: p.parse(
            "BOTSERVER_RATE_LIMIT_PER_USER",
            "a positive integer",
            positive::<u32>,
        ),
        rate_limit_login_per_ip: p.parse(
            "BOTSERVER_RATE_LIMIT_LOGIN_PER_IP",
            "a positive integer",
            positive::<u32>,
        ),
        rate_limit_ticket_per_ip: p.parse(
            "BOTSERVER_RATE_LIMIT_TICKET_PER_IP",
            "a positive integer",
            positive::<u32>,
        ),
        trusted_proxies: p
            .parse(
                "BOTSERVER_TRUSTED_PROXIES",
                "comma-separated IP addresses or CIDR ranges such as `10.0.0.0/8`",
                parse_networks,
            )
            .unwrap_or_default(),
        forwarded_header: p
            .parse(
                "BOTSERVER_FORWARDED_HEADER",
                "`x-forwarded-for` or `forwarded`",
                ForwardedHeader::parse,
            )
            .unwrap_or_default(),
        ws_max_connections_per_user: p.parse(
            "BOTSERVER_WS_MAX_CONNECTIONS_PER_USER",
            "a positive integer",
            positive::<u32>,
        ),
        ws_max_connections_per_ip: p.parse(
            "BOTSERVER_WS_MAX_CONNECTIONS_PER_IP",
            "a positive integer",
            positive::<u32>,
        ),
        ws_messages_per_minute: p.parse(
            "BOTSERVER_WS_MESSAGES_PER_MINUTE",
            "a positive integer",
            positive::<u32>,
        ),
        max_upload_size: p.parse(
            "BOTSERVER_MAX_UPLOAD_SIZE",
            "a positive number of bytes",
            positive::<u64>,
        ),
        tls_cert: p.parse("BOTSERVER_TLS_CERT", "a PEM file path", |t| {
            non_empty(t).map(PathBuf::from)
        }),
        tls_key: p.parse("BOTSERVER_TLS_KEY", "a PEM file path", |t| {
            non_empty(t).map(PathBuf::from)
        }),
        tls_min_version: p.parse("BOTSERVER_TLS_MIN_VERSION", "`1.2` or `1.3`", |t| {
            matches!(t, "1.2" | "1.3").then(|| t.to_owned())
        }),
        tls_client_ca: p.parse("BOTSERVER_TLS_CLIENT_CA", "a PEM file path", |t| {
            non_empty(t).map(PathBuf::from)
        }),
        max_connections: p.parse(
            "BOTSERVER_MAX_CONNECTIONS",
            "a positive integer",
            positive::<usize>,
        ),
        header_read_timeout: p.parse(
            "BOTSERVER_HEADER_READ_TIMEOUT",
            "a positive number of seconds",
            positive::<u64>,
        ),
        write_timeout: p.parse(
            "BOTSERVER_WRITE_TIMEOUT",
            "a positive number of seconds",
            positive::<u64>,
        ),
        zitadel_domain: p.parse("ZITADEL_DOMAIN", "a domain name", non_empty),
        zitadel_client_id: p.parse("ZITADEL_CLIENT_ID", "a client id", non_empty),
        has_zitadel_client_secret: p
            .parse("ZITADEL_CLIENT_SECRET", "a secret", non_empty)
            .is_some(),
    };
    check_tls(p, &extra);
    extra
}

/// Reports TLS settings that only make sense together. Starting on plain
/// HTTP while the operator asked for TLS would send tokens in clear text,
/// so each is an error rather than a warning.
fn check_tls(p: &mut Parser<'_>, extra: &ExtraSettings) {
    if extra.tls_cert.is_some() != extra.tls_key.is_some() {
        p.report(
            "incomplete TLS settings: set both `BOTSERVER_TLS_CERT` and `BOTSERVER_TLS_KEY`, \
             or neither to serve plain HTTP",
        );
    }
    let serves_tls = extra.tls_cert.is_some() && extra.tls_key.is_some();
    if extra.tls_client_ca.is_some() && !serves_tls {
        p.report(
            "`BOTSERVER_TLS_CLIENT_CA` needs `BOTSERVER_TLS_CERT` and `BOTSERVER_TLS_KEY`: \
             client certificates are checked only when this server speaks TLS",
        );
    }
}

fn parse_origins(text: &str) -> Option<Vec<Origin>> {
    text.split(',')
        .map(str::trim)
        .filter(|origin| !origin.is_empty())
        .map(Origin::parse)
        .collect()
}

/// In production every key must be configured; none is generated.
fn check_production_keys(p: &mut Parser<'_>) {
    let has = |p: &Parser<'_>, name| p.described(name).is_some();
    if !has(p, "DATABASE_ENCRYPTION_KEY") && !has(p, "BOTSERVER_ENCRYPTION_KEY") {
        p.report(
            "missing `DATABASE_ENCRYPTION_KEY` or `BOTSERVER_ENCRYPTION_KEY`: production mode \
             does not generate master keys; set 64 hex characters (for example from `openssl rand -hex 32`)",
        );
    }
    if !has(p, "BOTSERVER_JWT_KEY") {
        p.report(
            "missing `BOTSERVER_JWT_KEY`: production mode does not generate the access-token \
             signing key; point it at a PEM file with an RSA private key of at least 2048 bits",
        );
    }
    if !has(p, "BOTSERVER_JWT_SECRET") {
        p.report(
            "missing `BOTSERVER_JWT_SECRET`: production mode does not generate it; set 64 hex characters",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError, Overrides};
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)], overrides: &Overrides) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(overrides, |name| env.get(name).cloned())
    }

    fn problems(result: Result<Config, ConfigError>) -> Vec<String> {
        match result {
            Err(ConfigError::Invalid(lines)) => lines,
            other => panic!("expected invalid configuration, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_loopback_and_data_dir() {
        let config = load(&[], &Overrides::default()).unwrap();
        assert_eq!(config.listen.to_string(), crate::config::DEFAULT_LISTEN);
        assert_eq!(config.data_dir, std::path::PathBuf::from("./data"));
        assert_eq!(config.session_timeout.as_secs(), 3600);
        assert_eq!(config.max_login_attempts, 5);
        assert_eq!(config.lockout_duration.as_secs(), 900);
        assert!(!config.production);
    }

    #[test]
    fn audit_is_on_by_default_with_a_retention_floor() {
        let config = load(&[], &Overrides::default()).unwrap();
        assert!(config.extra.enable_audit);
        assert!(!config.extra.audit_api_calls);
        let lines = problems(load(
            &[("BOTSERVER_AUDIT_RETENTION_DAYS", "7")],
            &Overrides::default(),
        ));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("`BOTSERVER_AUDIT_RETENTION_DAYS`"),
            "{lines:?}"
        );
    }

    #[test]
    fn reports_one_line_per_bad_value() {
        let lines = problems(load(
            &[
                ("BOTSERVER_SESSION_TIMEOUT", "abc"),
                ("BOTSERVER_MAX_LOGIN_ATTEMPTS", "0"),
                ("DATABASE_URL", "mysql://x"),
            ],
            &Overrides::default(),
        ));
        assert_eq!(lines.len(), 3, "{lines:?}");
        let timeout = lines
            .iter()
            .find(|line| line.contains("`BOTSERVER_SESSION_TIMEOUT`"));
        assert!(
            timeout.is_some_and(|line| line.contains("got `abc`")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|line| line.contains("`BOTSERVER_MAX_LOGIN_ATTEMPTS`"))
        );
        assert!(lines.iter().any(|line| line.contains("`DATABASE_URL`")));
    }

    #[test]
    fn redacts_malformed_keys() {
        let lines = problems(load(
            &[("BOTSERVER_ENCRYPTION_KEY", "s3cret-not-hex")],
            &Overrides::default(),
        ));
        assert_eq!(lines.len(), 1);
        assert!(!lines[0].contains("s3cret"), "{}", lines[0]);
    }

    #[test]
    fn redacts_malformed_metrics_token() {
        let lines = problems(load(
            &[("BOTSERVER_METRICS_TOKEN", "s3cret but short")],
            &Overrides::default(),
        ));
        assert_eq!(lines.len(), 1);
        assert!(!lines[0].contains("s3cret"), "{}", lines[0]);
        let token = "t".repeat(40);
        let config = load(
            &[("BOTSERVER_METRICS_TOKEN", &token)],
            &Overrides::default(),
        )
        .unwrap();
        assert!(
            config
                .extra
                .metrics_token
                .as_ref()
                .is_some_and(|parsed| parsed.matches(&token))
        );
        assert!(!format!("{config:?}").contains(&token));
    }

    #[test]
    fn production_requires_every_key() {
        let overrides = Overrides {
            production: true,
            ..Overrides::default()
        };
        let lines = problems(load(&[], &overrides));
        assert_eq!(lines.len(), 3, "{lines:?}");
        let lines = problems(load(
            &[("BOTSERVER_ENV", "production")],
            &Overrides::default(),
        ));
        assert_eq!(lines.len(), 3, "{lines:?}");
    }

    #[test]
    fn env_overrides_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("botserver.toml");
        std::fs::write(&path, "session_timeout = 60\nmax_login_attempts = 3\n").unwrap();
        let overrides = Overrides {
            config_file: Some(path),
            ..Overrides::default()
        };
        let config = load(&[("BOTSERVER_SESSION_TIMEOUT", "120")], &overrides).unwrap();
        assert_eq!(config.session_timeout.as_secs(), 120);
        assert_eq!(config.max_login_attempts, 3);
    }

    #[test]
    fn sample_config_file_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/botserver.toml");
        let overrides = Overrides {
            config_file: Some(path.into()),
            ..Overrides::default()
        };
        let config = load(&[], &overrides).unwrap();
        assert_eq!(config.session_timeout.as_secs(), 3600);
        assert_eq!(config.max_login_attempts, 5);
    }

    #[test]
    fn tls_needs_certificate_and_key() {
        let lines = problems(load(
            &[("BOTSERVER_TLS_CERT", "/etc/cert.pem")],
            &Overrides::default(),
        ));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("`BOTSERVER_TLS_KEY`"), "{lines:?}");

        let config = load(
            &[
                ("BOTSERVER_TLS_CERT", "/etc/cert.pem"),
                ("BOTSERVER_TLS_KEY", "/etc/key.pem"),
            ],
            &Overrides::default(),
        )
        .unwrap();
        assert!(config.serves_tls());
        assert!(!load(&[], &Overrides::default()).unwrap().serves_tls());
    }

    #[test]
    fn client_ca_needs_tls() {
        let lines = problems(load(
            &[("BOTSERVER_TLS_CLIENT_CA", "/etc/ca.pem")],
            &Overrides::default(),
        ));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("`BOTSERVER_TLS_CLIENT_CA`"), "{lines:?}");
    }

    #[test]
    fn rejects_unknown_tls_version() {
        let lines = problems(load(
            &[("BOTSERVER_TLS_MIN_VERSION", "1.1")],
            &Overrides::default(),
        ));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("got `1.1`"), "{lines:?}");
    }

    #[test]
    fn rejects_unknown_config_file_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("botserver.toml");
        std::fs::write(&path, "session_timout = 60\n").unwrap();
        let overrides = Overrides {
            config_file: Some(path),
            ..Overrides::default()
        };
        let lines = problems(load(&[], &overrides));
        assert!(
            lines[0].contains("unknown key `session_timout`"),
            "{lines:?}"
        );
    }

    #[test]
    fn reads_trusted_proxies_and_forwarded_header() {
        let config = load(
            &[
                ("BOTSERVER_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7"),
                ("BOTSERVER_FORWARDED_HEADER", "Forwarded"),
            ],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.extra.trusted_proxies.len(), 2);
        assert_eq!(
            config.extra.forwarded_header,
            crate::http::client_ip::ForwardedHeader::Forwarded
        );
        let lines = problems(load(
            &[
                ("BOTSERVER_TRUSTED_PROXIES", "0.0.0.0/0"),
                ("BOTSERVER_FORWARDED_HEADER", "x-real-ip"),
                ("BOTSERVER_WS_MAX_CONNECTIONS_PER_USER", "0"),
            ],
            &Overrides::default(),
        ));
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].contains("`BOTSERVER_TRUSTED_PROXIES`"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("`BOTSERVER_FORWARDED_HEADER`"),
            "{lines:?}"
        );
        assert!(
            lines[2].contains("`BOTSERVER_WS_MAX_CONNECTIONS_PER_USER`"),
            "{lines:?}"
        );
    }
}
