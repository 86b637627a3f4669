//! Key-value storage for plugins (capability `kv`).
//!
//! This module owns the limits on keys, values and quotas, the storage trait
//! that backends implement, a file-backed store for `botserver plugin run`,
//! and the host functions of `botserver:bot/kv`. Encryption at rest is the
//! job of the server's database backend, not of this module.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use wasmtime::StoreContextMut;
use wasmtime::component::Linker;

use super::{Capability, GrantError};
use crate::runtime::bindings::botserver::bot::kv::{Error as KvError, Scope};
use crate::runtime::state::{HostState, enter_host_call};

/// Maximum key length, in bytes. Keeps keys usable as index entries.
pub const MAX_KEY_BYTES: u32 = 512;

/// Largest value, in bytes. Stops one entry from taking a bot's whole quota
/// in a single call and keeps host calls small.
pub const MAX_VALUE_BYTES: u32 = 256 * 1024;

/// Default total quota of one bot, keys plus values, in bytes.
pub const DEFAULT_QUOTA_BYTES: u64 = 1024 * 1024;

/// Highest quota a grant may set, in bytes.
pub const MAX_QUOTA_BYTES: u64 = 1024 * 1024 * 1024;

/// Most keys one `list-keys` call returns. Bounds the host call's result.
pub const MAX_LIST_KEYS: u32 = 1_000;

/// The `kv` grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvGrant {
    /// Total bytes of keys and values the bot may store, across all scopes.
    #[serde(default = "default_quota")]
    pub quota_bytes: u64,
}

fn default_quota() -> u64 {
    DEFAULT_QUOTA_BYTES
}

impl Default for KvGrant {
    fn default() -> Self {
        Self {
            quota_bytes: DEFAULT_QUOTA_BYTES,
        }
    }
}

impl KvGrant {
    /// Parses a quota given as a number of bytes.
    ///
    /// # Errors
    ///
    /// Returns [`GrantError::InvalidKvQuota`] unless the text is an integer
    /// from 1 to [`MAX_QUOTA_BYTES`].
    pub fn with_quota(text: &str) -> Result<Self, GrantError> {
        match text.parse::<u64>() {
            Ok(quota_bytes) if (1..=MAX_QUOTA_BYTES).contains(&quota_bytes) => {
                Ok(Self { quota_bytes })
            }
            _ => Err(GrantError::InvalidKvQuota(text.to_owned())),
        }
    }
}

/// Whose entries a call reaches: one bot's, and within it one user's or the
/// shared ones. Stores keep the parts apart, so no choice of names can make
/// two namespaces meet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KvNamespace {
    /// Tenant that owns the bot.
    pub tenant: String,
    /// Bot name within the tenant.
    pub bot: String,
    /// Pseudonymous user id for the user scope; `None` for the bot scope.
    pub user: Option<String>,
}

/// A storage backend failure, already stripped of anything a plugin or an
/// admin should not see.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// A backend that stores plugin entries.
#[wasmtime_wasi::async_trait]
pub trait KvStore: Send + Sync {
    /// Returns the value under `key`.
    async fn get(&self, namespace: &KvNamespace, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores `value` under `key` unless the bot's total (every namespace of
    /// the same tenant and bot) would pass `quota_bytes`; returns whether it
    /// was stored. The check and the write are one atomic step.
    async fn set_within_quota(
        &self,
        namespace: &KvNamespace,
        key: &str,
        value: &[u8],
        quota_bytes: u64,
    ) -> Result<bool, StoreError>;

    /// Removes `key`; removing a missing key succeeds.
    async fn delete(&self, namespace: &KvNamespace, key: &str) -> Result<(), StoreError>;

    /// Returns up to `limit` keys starting with `prefix`, in byte order,
    /// after `start_after`.
    async fn list_keys(
        &self,
        namespace: &KvNamespace,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
}

type EntryMap = BTreeMap<KvNamespace, BTreeMap<String, Vec<u8>>>;

/// A store kept in memory and, when given a directory, in a JSON file there
/// that is replaced atomically after each write. Meant for one process:
/// `botserver plugin run --kv-dir`.
#[derive(Debug, Default)]
pub struct FileKvStore {
    entries: Mutex<EntryMap>,
    file: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    namespace: KvNamespace,
    key: String,
    value_hex: String,
}

impl FileKvStore {
    /// Creates a store that keeps nothing after the process ends.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Opens or creates the store in `dir` (file `kv.json`).
    ///
    /// # Errors
    ///
    /// Returns an I/O error when the directory or file cannot be created or
    /// read, or when the file is not a store written by this type.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let file = dir.join("kv.json");
        let mut entries = EntryMap::new();
        match std::fs::read(&file) {
            Ok(bytes) => {
                let stored: Vec<FileEntry> = serde_json::from_slice(&bytes)
                    .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
                for entry in stored {
                    let value = hex::decode(&entry.value_hex).map_err(|error| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, error)
                    })?;
                    entries
                        .entry(entry.namespace)
                        .or_default()
                        .insert(entry.key, value);
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        Ok(Self {
            entries: Mutex::new(entries),
            file: Some(file),
        })
    }

    fn lock_entries(&self) -> Result<std::sync::MutexGuard<'_, EntryMap>, StoreError> {
        self.entries
            .lock()
            .map_err(|_| StoreError("key-value store lock poisoned".to_owned()))
    }

    fn persist(&self, entries: &EntryMap) -> Result<(), StoreError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let stored: Vec<FileEntry> = entries
            .iter()
            .flat_map(|(namespace, keys)| {
                keys.iter().map(move |(key, value)| FileEntry {
                    namespace: namespace.clone(),
                    key: key.clone(),
                    value_hex: hex::encode(value),
                })
            })
            .collect();
        let failed = |error: std::io::Error| {
            StoreError(format!("failed to write `{}`: {error}", file.display()))
        };
        let bytes = serde_json::to_vec(&stored).map_err(|e| StoreError(e.to_string()))?;
        let temporary = file.with_extension("json.tmp");
        write_private(&temporary, &bytes).map_err(failed)?;
        std::fs::rename(&temporary, file).map_err(failed)
    }
}

/// Writes `bytes` to a new file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // A leftover file keeps its old mode, so start from a new one.
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Selects one page of a `list-keys` call from a namespace's keys: those
/// starting with `prefix` and sorting after `start_after`, in byte order, at
/// most `limit` of them. Every store uses it, so they page alike.
pub fn page_keys(
    keys: impl IntoIterator<Item = String>,
    prefix: &str,
    start_after: Option<&str>,
    limit: u32,
) -> Vec<String> {
    let mut page: Vec<String> = keys
        .into_iter()
        .filter(|key| key.starts_with(prefix))
        .filter(|key| start_after.is_none_or(|after| key.as_str() > after))
        .collect();
    page.sort_unstable();
    page.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    page
}

fn bot_usage(entries: &EntryMap, namespace: &KvNamespace) -> u64 {
    entries
        .iter()
        .filter(|(other, _)| other.tenant == namespace.tenant && other.bot == namespace.bot)
        .flat_map(|(_, keys)| keys.iter())
        .map(|(key, value)| (key.len() + value.len()) as u64)
        .sum()
}

#[wasmtime_wasi::async_trait]
impl KvStore for FileKvStore {
    async fn get(&self, namespace: &KvNamespace, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let entries = self.lock_entries()?;
        Ok(entries
            .get(namespace)
            .and_then(|keys| keys.get(key))
            .cloned())
    }

    async fn set_within_quota(
        &self,
        namespace: &KvNamespace,
        key: &str,
        value: &[u8],
        quota_bytes: u64,
    ) -> Result<bool, StoreError> {
        let mut entries = self.lock_entries()?;
        let replaced = entries
            .get(namespace)
            .and_then(|keys| keys.get(key))
            .map_or(0, |old| (key.len() + old.len()) as u64);
        let usage = bot_usage(&entries, namespace) - replaced + (key.len() + value.len()) as u64;
        if usage > quota_bytes {
            return Ok(false);
        }
        let keys = entries.entry(namespace.clone()).or_default();
        let previous = keys.insert(key.to_owned(), value.to_vec());
        if let Err(error) = self.persist(&entries) {
            // Undo, so memory and file agree.
            let keys = entries.entry(namespace.clone()).or_default();
            match previous {
                Some(previous) => keys.insert(key.to_owned(), previous),
                None => keys.remove(key),
            };
            return Err(error);
        }
        Ok(true)
    }

    async fn delete(&self, namespace: &KvNamespace, key: &str) -> Result<(), StoreError> {
        let mut entries = self.lock_entries()?;
        let Some(removed) = entries.get_mut(namespace).and_then(|keys| keys.remove(key)) else {
            return Ok(());
        };
        if let Err(error) = self.persist(&entries) {
            // Undo, so memory and file agree.
            entries
                .entry(namespace.clone())
                .or_default()
                .insert(key.to_owned(), removed);
            return Err(error);
        }
        Ok(())
    }

    async fn list_keys(
        &self,
        namespace: &KvNamespace,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let entries = self.lock_entries()?;
        let keys = entries
            .get(namespace)
            .into_iter()
            .flat_map(|keys| keys.keys().cloned());
        Ok(page_keys(keys, prefix, start_after, limit))
    }
}

/// Adds `botserver:bot/kv` to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let mut kv = linker.instance("botserver:bot/kv@0.1.0")?;
    kv.func_wrap_async("get", |mut store, (scope, key): (Scope, String)| {
        Box::new(async move {
            let request = prepare(&mut store, scope, &key, 0, false)?;
            let (kv, namespace) = match request {
                Ok(request) => request,
                Err(error) => return Ok((Err(error),)),
            };
            let found = kv.get(&namespace, &key).await;
            let result = match found {
                Ok(value) => {
                    let size = value.as_ref().map_or(0, Vec::len);
                    enter_host_call(&mut store, size)?;
                    Ok(value)
                }
                Err(error) => Err(unavailable(&error)),
            };
            Ok((result,))
        })
    })?;
    kv.func_wrap_async(
        "set",
        |mut store, (scope, key, value): (Scope, String, Vec<u8>)| {
            Box::new(async move {
                let request = prepare(&mut store, scope, &key, value.len(), false)?;
                let (kv, namespace) = match request {
                    Ok(request) => request,
                    Err(error) => return Ok((Err(error),)),
                };
                if value.len() > MAX_VALUE_BYTES as usize {
                    return Ok((Err(KvError::ValueTooLarge(MAX_VALUE_BYTES)),));
                }
                let quota = store
                    .data()
                    .grants
                    .grants()
                    .kv
                    .as_ref()
                    .map_or(0, |grant| grant.quota_bytes);
                let result = match kv.set_within_quota(&namespace, &key, &value, quota).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(KvError::QuotaExceeded(quota)),
                    Err(error) => Err(unavailable(&error)),
                };
                Ok((result,))
            })
        },
    )?;
    kv.func_wrap_async("delete", |mut store, (scope, key): (Scope, String)| {
        Box::new(async move {
            let (kv, namespace) = match prepare(&mut store, scope, &key, 0, false)? {
                Ok(request) => request,
                Err(error) => return Ok((Err(error),)),
            };
            let result = kv
                .delete(&namespace, &key)
                .await
                .map_err(|e| unavailable(&e));
            Ok((result,))
        })
    })?;
    kv.func_wrap_async(
        "list-keys",
        |mut store, (scope, prefix, start_after, limit): (Scope, String, Option<String>, u32)| {
            Box::new(async move {
                let (kv, namespace) = match prepare(&mut store, scope, &prefix, 0, true)? {
                    Ok(request) => request,
                    Err(error) => return Ok((Err(error),)),
                };
                let limit = limit.min(MAX_LIST_KEYS);
                let listed = kv
                    .list_keys(&namespace, &prefix, start_after.as_deref(), limit)
                    .await;
                let result = match listed {
                    Ok(keys) => {
                        enter_host_call(&mut store, keys.iter().map(String::len).sum())?;
                        Ok(keys)
                    }
                    Err(error) => Err(unavailable(&error)),
                };
                Ok((result,))
            })
        },
    )?;
    Ok(())
}

type Prepared = Result<(std::sync::Arc<dyn KvStore>, KvNamespace), KvError>;

/// Charges the call, checks the grant and the key, and picks the namespace.
/// The outer error traps (a broken limit); the inner one goes to the guest.
fn prepare(
    store: &mut StoreContextMut<'_, HostState>,
    scope: Scope,
    key: &str,
    value_bytes: usize,
    allow_empty: bool,
) -> wasmtime::Result<Prepared> {
    enter_host_call(store, key.len().saturating_add(value_bytes))?;
    let state = store.data();
    if !state.grants.allows(Capability::Kv) {
        state.deny(Capability::Kv, "the `kv` grant was revoked".to_owned());
        return Ok(Err(KvError::Denied));
    }
    // An empty key is allowed only as a `list-keys` prefix.
    if key.len() > MAX_KEY_BYTES as usize || (key.is_empty() && !allow_empty) {
        return Ok(Err(KvError::InvalidKey(MAX_KEY_BYTES)));
    }
    let identity = &state.identity;
    let namespace = KvNamespace {
        tenant: identity.tenant.clone(),
        bot: identity.bot.clone(),
        user: match scope {
            Scope::Bot => None,
            Scope::User => Some(identity.user.clone()),
        },
    };
    Ok(Ok((std::sync::Arc::clone(&state.kv), namespace)))
}

fn unavailable(error: &StoreError) -> KvError {
    tracing::warn!(error = %error, "key-value store call failed");
    KvError::Unavailable("storage is unavailable".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(tenant: &str, bot: &str, user: Option<&str>) -> KvNamespace {
        KvNamespace {
            tenant: tenant.to_owned(),
            bot: bot.to_owned(),
            user: user.map(str::to_owned),
        }
    }

    #[test]
    fn page_keys_filters_orders_and_limits() {
        let keys = ["b2", "a", "b1", "b3", "c"].map(str::to_owned);
        assert_eq!(page_keys(keys.clone(), "b", None, 2), ["b1", "b2"]);
        assert_eq!(page_keys(keys.clone(), "b", Some("b2"), 10), ["b3"]);
        assert_eq!(page_keys(keys.clone(), "", None, 0), Vec::<String>::new());
        assert_eq!(page_keys(keys, "", Some("b3"), 10), ["c"]);
    }

    #[tokio::test]
    async fn namespaces_never_collide() -> Result<(), StoreError> {
        let store = FileKvStore::in_memory();
        let pairs = [
            (namespace("a", "b:c", None), namespace("a:b", "c", None)),
            (
                namespace("acme", "bot", None),
                namespace("acme2", "bot", None),
            ),
            (namespace("t", "bot", Some("")), namespace("t", "bot", None)),
            (
                namespace("t", "b/x", Some("u")),
                namespace("t/b", "x", Some("u")),
            ),
        ];
        for (left, right) in pairs {
            assert!(store.set_within_quota(&left, "x", b"left", 1 << 20).await?);
            assert!(
                store
                    .set_within_quota(&right, "x", b"right", 1 << 20)
                    .await?
            );
            assert_eq!(store.get(&left, "x").await?, Some(b"left".to_vec()));
            assert_eq!(store.get(&right, "x").await?, Some(b"right".to_vec()));
        }
        Ok(())
    }

    #[tokio::test]
    async fn quota_counts_every_scope_of_a_bot() -> Result<(), StoreError> {
        let store = FileKvStore::in_memory();
        let shared = namespace("t", "bot", None);
        let user = namespace("t", "bot", Some("u1"));
        assert!(store.set_within_quota(&shared, "k", &[0; 40], 100).await?);
        assert!(store.set_within_quota(&user, "k", &[0; 40], 100).await?);
        assert!(!store.set_within_quota(&user, "k2", &[0; 40], 100).await?);
        // Replacing a value counts only the difference.
        assert!(store.set_within_quota(&user, "k", &[0; 50], 100).await?);
        assert_eq!(store.get(&user, "k2").await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn file_store_survives_reopen() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let space = namespace("t", "bot", Some("u"));
        {
            let store = FileKvStore::open(dir.path())?;
            assert!(
                store
                    .set_within_quota(&space, "count", b"3", 1 << 20)
                    .await?
            );
        }
        let store = FileKvStore::open(dir.path())?;
        assert_eq!(store.get(&space, "count").await?, Some(b"3".to_vec()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("kv.json"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            store.list_keys(&space, "c", None, 10).await?,
            vec!["count".to_owned()]
        );
        Ok(())
    }
}
