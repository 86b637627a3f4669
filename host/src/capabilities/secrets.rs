//! Named secrets for plugins (capability `secrets`).
//!
//! The grant lists the names a plugin may open. Opening returns a handle;
//! the value crosses into the guest only through `reveal`. Values live in
//! [`SecretValue`], which wipes its memory on drop and never prints itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use wasmtime::component::{Linker, Resource, ResourceType};
use zeroize::Zeroizing;

use super::{Capability, GrantError};
use crate::runtime::bindings::botserver::bot::secrets::Error as SecretsError;
use crate::runtime::state::{HostState, enter_host_call};

/// Maximum secret name length, in bytes.
pub const MAX_SECRET_NAME_BYTES: usize = 128;

/// Most secrets one event may hold open at once.
pub const MAX_OPEN_SECRETS: usize = 32;

/// The `secrets` grant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsGrant {
    /// Names the plugin may open. Empty means none.
    #[serde(default)]
    pub names: BTreeSet<String>,
}

/// Checks a secret name: 1 to 128 ASCII letters, digits, `_`, `-` or `.`.
///
/// # Errors
///
/// Returns [`GrantError::InvalidSecretName`] otherwise.
pub fn validate_secret_name(name: &str) -> Result<String, GrantError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SECRET_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(name.to_owned())
    } else {
        Err(GrantError::InvalidSecretName(name.to_owned()))
    }
}

/// A secret's value. Its memory is wiped on drop and `Debug` prints a
/// placeholder.
#[derive(Clone)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The value itself; callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// A backend that stores secret values.
#[wasmtime_wasi::async_trait]
pub trait SecretStore: Send + Sync {
    /// Returns the value of secret `name` of `tenant`, or `None` when unset.
    async fn get(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<SecretValue>, super::kv::StoreError>;
}

/// Secrets held in memory, for `botserver plugin run` and tests.
#[derive(Debug, Default)]
pub struct MemorySecretStore(BTreeMap<String, SecretValue>);

impl MemorySecretStore {
    /// Creates a store with the given name-to-value pairs, shared by every tenant.
    pub fn new(values: BTreeMap<String, SecretValue>) -> Self {
        Self(values)
    }

    /// Parses `NAME=VALUE` lines; blank lines and lines starting with `#`
    /// are skipped.
    ///
    /// # Errors
    ///
    /// Returns the 1-based number of the first line that is not `NAME=VALUE`
    /// with a valid name. The line's content is not included because it
    /// may hold a secret.
    /// A name given twice is an error too.
    pub fn parse(text: &str) -> Result<Self, usize> {
        let mut values = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (name, value) = line.split_once('=').ok_or(index + 1)?;
            let name = validate_secret_name(name.trim()).map_err(|_| index + 1)?;
            if values
                .insert(name, SecretValue::new(value.to_owned()))
                .is_some()
            {
                return Err(index + 1);
            }
        }
        Ok(Self(values))
    }
}

#[wasmtime_wasi::async_trait]
impl SecretStore for MemorySecretStore {
    async fn get(
        &self,
        _tenant: &str,
        name: &str,
    ) -> Result<Option<SecretValue>, super::kv::StoreError> {
        Ok(self.0.get(name).cloned())
    }
}

/// The host side of a `secret` resource.
pub struct SecretHandle {
    name: String,
    value: SecretValue,
}

/// Adds `botserver:bot/secrets` to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let mut secrets = linker.instance("botserver:bot/secrets@0.1.0")?;
    secrets.resource(
        "secret",
        ResourceType::host::<SecretHandle>(),
        |mut store, rep| {
            let state = store.data_mut();
            state.table.delete(Resource::<SecretHandle>::new_own(rep))?;
            state.open_secrets = state.open_secrets.saturating_sub(1);
            Ok(())
        },
    )?;
    secrets.func_wrap_async("open", |mut store, (name,): (String,)| {
        Box::new(async move {
            enter_host_call(&mut store, name.len())?;
            let state = store.data();
            let granted = state.grants.allows(Capability::Secrets)
                && state
                    .grants
                    .grants()
                    .secrets
                    .as_ref()
                    .is_some_and(|grant| grant.names.contains(&name));
            if !granted {
                let reason = format!(
                    "secret `{}` is not in the `secrets` grant",
                    printable(&name)
                );
                state.deny(Capability::Secrets, reason);
                return Ok((Err(SecretsError::Denied),));
            }
            if state.open_secrets >= MAX_OPEN_SECRETS {
                return Ok((Err(SecretsError::Unavailable(format!(
                    "more than {MAX_OPEN_SECRETS} secrets open at once"
                ))),));
            }
            let backend = std::sync::Arc::clone(&state.secrets);
            let tenant = state.identity.tenant.clone();
            let value = match backend.get(&tenant, &name).await {
                Ok(Some(value)) => value,
                Ok(None) => return Ok((Err(SecretsError::NotFound),)),
                Err(error) => {
                    tracing::warn!(%error, "secret store call failed");
                    return Ok((Err(SecretsError::Unavailable(
                        "secret store is unavailable".into(),
                    )),));
                }
            };
            let state = store.data_mut();
            let handle = state.table.push(SecretHandle { name, value })?;
            state.open_secrets += 1;
            Ok((Ok(handle),))
        })
    })?;
    secrets.func_wrap_async(
        "[method]secret.reveal",
        |mut store, (handle,): (Resource<SecretHandle>,)| {
            Box::new(async move {
                let state = store.data();
                if !state.grants.allows(Capability::Secrets) {
                    state.deny(
                        Capability::Secrets,
                        "the `secrets` grant was revoked".to_owned(),
                    );
                    return Ok((Err(SecretsError::Denied),));
                }
                let opened = state.table.get(&handle)?;
                let (name, value) = (opened.name.clone(), opened.value.clone());
                enter_host_call(&mut store, value.expose().len())?;
                let state = store.data_mut();
                state.log.remember_secret(&value);
                state.revealed_secrets.insert(name);
                tracing::debug!(
                    tenant.id = %store.data().identity.tenant,
                    bot.id = %store.data().identity.bot,
                    "plugin revealed a secret"
                );
                Ok((Ok(value.expose().to_owned()),))
            })
        },
    )?;
    Ok(())
}

/// Formats a guest-supplied name for a message, with control characters
/// escaped.
fn printable(name: &str) -> String {
    let shown: String = name.chars().take(MAX_SECRET_NAME_BYTES).collect();
    shown.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_value_debug_is_redacted() {
        let value = SecretValue::new("canary-3f9d".to_owned());
        assert!(!format!("{value:?}").contains("canary"));
    }

    #[test]
    fn parses_secret_files() {
        let parsed = MemorySecretStore::parse("# comment\nAPI_KEY=abc=def\n\nOTHER=\n");
        let store = parsed.unwrap_or_default();
        assert_eq!(
            store.0.get("API_KEY").map(SecretValue::expose),
            Some("abc=def")
        );
        assert_eq!(store.0.get("OTHER").map(SecretValue::expose), Some(""));
        assert_eq!(
            MemorySecretStore::parse("ok=1\nno equals sign").err(),
            Some(2)
        );
        assert_eq!(MemorySecretStore::parse("bad name=1").err(), Some(1));
        assert_eq!(MemorySecretStore::parse("A=1\nA=2").err(), Some(2));
    }
}
