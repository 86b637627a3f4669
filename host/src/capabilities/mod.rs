//! The capabilities a plugin can be granted, and how a component's imports map
//! to them.
//!
//! This module owns the capability names (`kv`, `http`, `secrets`, `config`),
//! the parameters each grant carries, and the rule that decides which import
//! needs which grant. Linking the host side of each capability lives in the
//! submodules; the runtime decides when to link them.

pub mod config;
pub mod http;
pub mod kv;
pub mod logging;
pub mod secrets;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

pub use self::http::{HttpGrant, HttpTarget};

/// Interface-name prefix of every BotServer import, without the version.
const BOTSERVER_PACKAGE: &str = "botserver:bot/";

/// A capability that a tenant admin can grant to a plugin version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Key-value storage scoped to the bot (`botserver:bot/kv`).
    Kv,
    /// Outbound HTTP (`wasi:http/outgoing-handler` and `wasi:http/types`).
    Http,
    /// Named secrets (`botserver:bot/secrets`).
    Secrets,
    /// Configuration values (`botserver:bot/config`).
    Config,
}

impl Capability {
    /// Every capability, in the order they are shown to admins.
    pub const ALL: [Capability; 4] = [Self::Kv, Self::Http, Self::Secrets, Self::Config];

    /// Returns the name used in grants, CLI flags and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kv => "kv",
            Self::Http => "http",
            Self::Secrets => "secrets",
            Self::Config => "config",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Capability {
    type Err = GrantError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|capability| capability.name() == name)
            .ok_or_else(|| GrantError::UnknownCapability(name.to_owned()))
    }
}

/// The kind of one component import, as far as grants are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportKind {
    /// Needs the named capability.
    Capability(Capability),
    /// Always linked: logging, shared types, and the plain WASI interfaces
    /// that are linked with nothing behind them.
    Always,
    /// Not something this host offers.
    Unknown,
}

/// Classifies one import name such as `botserver:bot/kv@0.1.0`.
pub fn classify_import(name: &str) -> ImportKind {
    let (interface, version) = match name.split_once('@') {
        Some((interface, version)) => (interface, Some(version)),
        None => (name, None),
    };
    if let Some(rest) = interface.strip_prefix(BOTSERVER_PACKAGE) {
        // Only the 0.1 line of the contract exists so far.
        if !version.is_some_and(|v| v.starts_with("0.1.")) {
            return ImportKind::Unknown;
        }
        return match rest {
            "kv" => ImportKind::Capability(Capability::Kv),
            "secrets" => ImportKind::Capability(Capability::Secrets),
            "config" => ImportKind::Capability(Capability::Config),
            "logging" | "types" => ImportKind::Always,
            _ => ImportKind::Unknown,
        };
    }
    if !version.is_some_and(|v| v.starts_with("0.2.")) {
        return ImportKind::Unknown;
    }
    match interface {
        "wasi:http/outgoing-handler" | "wasi:http/types" => {
            ImportKind::Capability(Capability::Http)
        }
        _ if PLAIN_WASI.contains(&interface) => ImportKind::Always,
        _ => ImportKind::Unknown,
    }
}

/// WASI 0.2 interfaces that are linked for every plugin. Filesystem and
/// sockets are present so that Rust's standard library links, but a plugin
/// gets no preopened directory and no network permission through them.
const PLAIN_WASI: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

/// Errors in grant parameters.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrantError {
    /// The capability name is not one of `kv`, `http`, `secrets`, `config`.
    #[error("unknown capability `{0}`: expected one of kv, http, secrets, config")]
    UnknownCapability(String),
    /// An `http` grant target is not `scheme://host:port`.
    #[error("invalid `http` grant `{target}`: {reason}")]
    InvalidHttpTarget {
        /// The target as written.
        target: String,
        /// The problem with the target.
        reason: &'static str,
    },
    /// A `kv` quota is not a positive integer within the maximum.
    #[error("invalid `kv` quota `{0}`: expected a number of bytes from 1 to {max}", max = kv::MAX_QUOTA_BYTES)]
    InvalidKvQuota(String),
    /// A secret name is empty, too long or has characters other than
    /// letters, digits, `_`, `-` and `.`.
    #[error("invalid secret name `{0}`: expected 1 to 128 letters, digits, `_`, `-` or `.`")]
    InvalidSecretName(String),
    /// A capability that takes no parameter was given one.
    #[error("capability `{0}` takes no parameter")]
    UnexpectedParameter(Capability),
    /// A numeric grant parameter is outside its allowed range.
    #[error("invalid `{field}`: expected {min} to {max}, got {value}")]
    OutOfRange {
        /// The parameter, such as `http.max_requests`.
        field: &'static str,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
        /// The value given.
        value: u64,
    },
    /// A list parameter has more entries than [`MAX_GRANT_ENTRIES`].
    #[error("too many entries in `{field}`: expected at most {max}, got {count}", max = MAX_GRANT_ENTRIES)]
    TooManyEntries {
        /// The parameter, such as `secrets.names`.
        field: &'static str,
        /// The number of entries given.
        count: usize,
    },
}

/// Most entries in a list parameter of a grant (HTTP targets, secret
/// names). Grants are loaded for every invocation and shown by the API; the
/// cap keeps an admin's mistake or a scripted request from making them huge.
pub const MAX_GRANT_ENTRIES: usize = 64;

/// The capabilities granted to one plugin version, with their parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSet {
    /// Key-value storage and its quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<kv::KvGrant>,
    /// Outbound HTTP and its allowlist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpGrant>,
    /// Secrets and the names that may be opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<secrets::SecretsGrant>,
    /// Configuration values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<config::ConfigGrant>,
}

impl GrantSet {
    /// Checks every parameter against its bounds. The CLI's `--grant` flags
    /// are checked as they are parsed; a grant set from an API request body
    /// is checked here.
    ///
    /// # Errors
    ///
    /// Returns the [`GrantError`] of the first parameter out of bounds.
    pub fn validate(&self) -> Result<(), GrantError> {
        if let Some(grant) = &self.kv {
            check_range("kv.quota_bytes", grant.quota_bytes, 1, kv::MAX_QUOTA_BYTES)?;
        }
        if let Some(grant) = &self.http {
            check_count("http.allow", grant.allow.len())?;
            check_range(
                "http.max_requests",
                u64::from(grant.max_requests),
                1,
                u64::from(http::MAX_REQUESTS_LIMIT),
            )?;
            check_range(
                "http.max_response_bytes",
                grant.max_response_bytes,
                1,
                http::MAX_RESPONSE_BYTES_LIMIT,
            )?;
        }
        if let Some(grant) = &self.secrets {
            check_count("secrets.names", grant.names.len())?;
            for name in &grant.names {
                secrets::validate_secret_name(name)?;
            }
        }
        Ok(())
    }

    /// Returns whether `capability` is granted.
    pub fn has(&self, capability: Capability) -> bool {
        match capability {
            Capability::Kv => self.kv.is_some(),
            Capability::Http => self.http.is_some(),
            Capability::Secrets => self.secrets.is_some(),
            Capability::Config => self.config.is_some(),
        }
    }

    /// Returns the granted capabilities, without their parameters.
    pub fn capabilities(&self) -> BTreeSet<Capability> {
        Capability::ALL
            .into_iter()
            .filter(|capability| self.has(*capability))
            .collect()
    }

    /// Adds one grant written as `CAP[=PARAM]`, the form the CLI's `--grant`
    /// flag takes: `kv`, `kv=1048576` (quota in bytes), `http=https://host:443`,
    /// `secrets=API_KEY,OTHER`, `config`. Repeating `http` or `secrets` adds
    /// to the list.
    ///
    /// # Errors
    ///
    /// Returns a [`GrantError`] naming the capability or parameter that is
    /// not valid.
    pub fn add_flag(&mut self, flag: &str) -> Result<(), GrantError> {
        let (name, parameter) = match flag.split_once('=') {
            Some((name, parameter)) => (name, Some(parameter)),
            None => (flag, None),
        };
        match name.parse::<Capability>()? {
            Capability::Kv => {
                let grant = match parameter {
                    Some(quota) => kv::KvGrant::with_quota(quota)?,
                    None => kv::KvGrant::default(),
                };
                self.kv = Some(grant);
            }
            Capability::Http => {
                let grant = self.http.get_or_insert_with(HttpGrant::default);
                if let Some(target) = parameter {
                    grant.allow.push(target.parse()?);
                }
            }
            Capability::Secrets => {
                let grant = self.secrets.get_or_insert_with(Default::default);
                for name in parameter.into_iter().flat_map(|p| p.split(',')) {
                    grant.names.insert(secrets::validate_secret_name(name)?);
                }
            }
            Capability::Config => {
                if parameter.is_some() {
                    return Err(GrantError::UnexpectedParameter(Capability::Config));
                }
                self.config = Some(config::ConfigGrant::default());
            }
        }
        Ok(())
    }
}

fn check_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), GrantError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(GrantError::OutOfRange {
            field,
            min,
            max,
            value,
        })
    }
}

fn check_count(field: &'static str, count: usize) -> Result<(), GrantError> {
    if count <= MAX_GRANT_ENTRIES {
        Ok(())
    } else {
        Err(GrantError::TooManyEntries { field, count })
    }
}

/// The grants an invocation runs under, checked at every host call.
///
/// The runtime links only the capabilities in the grant set, so a missing
/// capability stops a plugin from loading at all. Revocation, though, must
/// reach invocations that are already running: revoking sets a flag that the
/// next host call of that capability checks, and the call returns `denied` to
/// the guest.
#[derive(Debug)]
pub struct LiveGrants {
    grants: GrantSet,
    revoked: BTreeMap<Capability, AtomicBool>,
}

impl LiveGrants {
    /// Wraps a grant set for use by running invocations.
    pub fn new(grants: GrantSet) -> Arc<Self> {
        let revoked = Capability::ALL
            .into_iter()
            .map(|capability| (capability, AtomicBool::new(false)))
            .collect();
        Arc::new(Self { grants, revoked })
    }

    /// Returns the grant set as it was when the invocation started.
    pub fn grants(&self) -> &GrantSet {
        &self.grants
    }

    /// Returns whether `capability` is granted and not revoked since.
    pub fn allows(&self, capability: Capability) -> bool {
        let revoked = self
            .revoked
            .get(&capability)
            .is_some_and(|flag| flag.load(Ordering::Acquire));
        self.grants.has(capability) && !revoked
    }

    /// Revokes `capability` for every invocation that shares this value.
    pub fn revoke(&self, capability: Capability) {
        if let Some(flag) = self.revoked.get(&capability) {
            flag.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_capability_imports() {
        let cases = [
            (
                "botserver:bot/kv@0.1.0",
                ImportKind::Capability(Capability::Kv),
            ),
            (
                "botserver:bot/secrets@0.1.0",
                ImportKind::Capability(Capability::Secrets),
            ),
            (
                "botserver:bot/config@0.1.0",
                ImportKind::Capability(Capability::Config),
            ),
            ("botserver:bot/logging@0.1.0", ImportKind::Always),
            ("botserver:bot/types@0.1.0", ImportKind::Always),
            (
                "wasi:http/outgoing-handler@0.2.12",
                ImportKind::Capability(Capability::Http),
            ),
            (
                "wasi:http/types@0.2.0",
                ImportKind::Capability(Capability::Http),
            ),
            ("wasi:cli/stdout@0.2.6", ImportKind::Always),
            ("wasi:filesystem/preopens@0.2.12", ImportKind::Always),
        ];
        for (name, expected) in cases {
            assert_eq!(classify_import(name), expected, "{name}");
        }
    }

    #[test]
    fn rejects_unknown_and_misversioned_imports() {
        for name in [
            "acme:telemetry/upload@1.0.0",
            "botserver:bot/kv",
            "botserver:bot/kv@1.0.0",
            "botserver:bot/teleport@0.1.0",
            "wasi:http/outgoing-handler@0.3.0",
            "wasi:cli/run@0.2.0",
            "wasi:keyvalue/store@0.2.0-draft",
        ] {
            assert_eq!(classify_import(name), ImportKind::Unknown, "{name}");
        }
    }

    #[test]
    fn parses_grant_flags() -> Result<(), GrantError> {
        let mut grants = GrantSet::default();
        grants.add_flag("kv=4096")?;
        grants.add_flag("http=http://127.0.0.1:8000")?;
        grants.add_flag("http=https://api.example.com:443")?;
        grants.add_flag("secrets=API_KEY,OTHER")?;
        grants.add_flag("config")?;
        assert_eq!(grants.kv.as_ref().map(|kv| kv.quota_bytes), Some(4096));
        assert_eq!(grants.http.as_ref().map(|http| http.allow.len()), Some(2));
        assert_eq!(grants.secrets.as_ref().map(|s| s.names.len()), Some(2));
        assert_eq!(grants.capabilities().len(), 4);
        Ok(())
    }

    #[test]
    fn rejects_bad_grant_flags() {
        for flag in [
            "storage",
            "kv=0",
            "kv=-1",
            "kv=abc",
            "config=x",
            "secrets=a b",
            "http=ftp://x:1",
        ] {
            assert!(GrantSet::default().add_flag(flag).is_err(), "{flag}");
        }
    }

    #[test]
    fn revocation_reaches_shared_grants() -> Result<(), GrantError> {
        let mut grants = GrantSet::default();
        grants.add_flag("kv")?;
        let live = LiveGrants::new(grants);
        let seen_by_invocation = Arc::clone(&live);
        assert!(seen_by_invocation.allows(Capability::Kv));
        live.revoke(Capability::Kv);
        assert!(!seen_by_invocation.allows(Capability::Kv));
        assert!(!seen_by_invocation.allows(Capability::Http));
        Ok(())
    }
}
