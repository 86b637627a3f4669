//! Sealing and opening of column values with per-tenant data keys.
//!
//! Each tenant has numbered data keys, stored wrapped (AES-256-GCM) by the
//! database master key. New values use the newest version; the version is
//! written into each sealed value, so old values keep opening after a
//! rotation. Unwrapped keys are cached in memory and zeroized when dropped.

mod user;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::{CryptoError, KeyBytes, encode_aad, open, seal, sealed_version};
use crate::storage::tenant_keys::{self, WrappedKey};
use crate::storage::{Db, TenantId, tenants};

/// How long the newest key version of a tenant is cached before the vault
/// checks the database again, so a rotation made by `botserver keys rotate`
/// in another process reaches a running server within this time.
const CURRENT_VERSION_TTL: Duration = Duration::from_secs(60);

/// Domain label of the associated data of column values.
const COLUMN_LABEL: &str = "botserver column";
/// Domain label of the associated data of wrapped data keys.
const KEY_WRAP_LABEL: &str = "botserver data key";

/// Location of a sealed value. All four parts are bound into the associated
/// data, so the value opens only in the same tenant, table, row and column.
#[derive(Clone, Copy, Debug)]
pub struct ColumnRef<'a> {
    /// Tenant that owns the row.
    pub tenant: TenantId,
    /// Table name.
    pub table: &'static str,
    /// Primary key of the row, as text.
    pub row: &'a str,
    /// Column name.
    pub column: &'static str,
}

impl ColumnRef<'_> {
    fn aad(&self, version: u32) -> Vec<u8> {
        let tenant = self.tenant.to_string();
        let fields: [&[u8]; 4] = [
            tenant.as_bytes(),
            self.table.as_bytes(),
            self.row.as_bytes(),
            self.column.as_bytes(),
        ];
        encode_aad(COLUMN_LABEL, version, &fields)
    }
}

/// Counts of what a rotation changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// Tenants that got a new data key version.
    pub new_versions: usize,
    /// Stored data keys rewrapped under the current master key.
    pub rewrapped: usize,
}

/// Seals and opens column values with per-tenant data keys.
pub struct Vault {
    db: Db,
    master: KeyBytes,
    master_id: String,
    previous_masters: Vec<KeyBytes>,
    keys: Mutex<HashMap<(TenantId, u32), Arc<KeyBytes>>>,
    current: Mutex<HashMap<TenantId, (u32, Instant)>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("master_key_id", &self.master_id)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Creates a vault whose data keys are wrapped by `master`. Keys
    /// wrapped by one of `previous_masters` can still be unwrapped.
    pub fn new(db: Db, master: KeyBytes, previous_masters: Vec<KeyBytes>) -> Self {
        let master_id = master.fingerprint();
        Self {
            db,
            master,
            master_id,
            previous_masters,
            keys: Mutex::new(HashMap::new()),
            current: Mutex::new(HashMap::new()),
        }
    }

    /// Seals `plaintext` for the column `at` with the tenant's newest key.
    ///
    /// NOTE: nothing counts encryptions per data key yet. Random 96-bit
    /// nonces stay safe for about 2^32 values per key, so a tenant that
    /// seals that many needs `botserver keys rotate` before then.
    ///
    /// # Errors
    ///
    /// Returns [`CryptoError`] when the data key cannot be loaded or created.
    #[tracing::instrument(level = "trace", skip_all, fields(tenant.id = %at.tenant))]
    pub async fn seal(&self, at: &ColumnRef<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let version = self.current_version(at.tenant).await?;
        let key = self.data_key(at.tenant, version).await?;
        seal(&key, version, &at.aad(version), plaintext)
    }

    /// Opens a value sealed for the column `at`.
    ///
    /// # Errors
    ///
    /// Returns [`CryptoError::Open`] when the value was sealed for another
    /// location or key, or was changed; nothing of the plaintext is returned.
    #[tracing::instrument(level = "trace", skip_all, fields(tenant.id = %at.tenant))]
    pub async fn open(
        &self,
        at: &ColumnRef<'_>,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let version = sealed_version(sealed)?;
        // A version the tenant never had fails as `Open`: the value is not theirs.
        let key = self.data_key(at.tenant, version).await?;
        open(&key, &at.aad(version), sealed)
    }

    /// Creates version 1 of a tenant's data key if it has none.
    ///
    /// # Errors
    ///
    /// Returns [`CryptoError`] when the key cannot be generated or stored.
    pub async fn ensure_tenant_key(&self, tenant: TenantId) -> Result<u32, CryptoError> {
        if let Some(latest) = tenant_keys::latest(&self.db, tenant).await? {
            return Ok(latest.version);
        }
        self.add_version(tenant, 1).await?;
        let latest = tenant_keys::latest(&self.db, tenant).await?;
        latest.map(|key| key.version).ok_or(CryptoError::Open)
    }

    /// Adds a new data key version for every tenant and rewraps keys still
    /// wrapped by a previous master key under the current one. Running
    /// servers keep opening old values and switch to the new versions
    /// within [`CURRENT_VERSION_TTL`].
    ///
    /// # Errors
    ///
    /// Returns [`CryptoError::UnknownMasterKey`] when a stored key is
    /// wrapped by a master key this vault was not given, and other
    /// [`CryptoError`]s for storage failures.
    pub async fn rotate(&self) -> Result<RotationReport, CryptoError> {
        let mut report = RotationReport::default();
        for key in tenant_keys::list_all(&self.db).await? {
            if key.master_key_id == self.master_id {
                continue;
            }
            let plain = self.unwrap_key(&key)?;
            let rewrapped = self.wrap_key(key.tenant_id, key.version, &plain)?;
            tenant_keys::rewrap(&self.db, &rewrapped).await?;
            report.rewrapped += 1;
        }
        for tenant in tenants::list(&self.db).await? {
            let next = match tenant_keys::latest(&self.db, tenant.id).await? {
                Some(latest) => latest.version.saturating_add(1),
                None => 1,
            };
            if self.add_version(tenant.id, next).await? {
                report.new_versions += 1;
            }
        }
        Ok(report)
    }

    async fn current_version(&self, tenant: TenantId) -> Result<u32, CryptoError> {
        {
            let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((version, fetched)) = current.get(&tenant)
                && fetched.elapsed() < CURRENT_VERSION_TTL
            {
                return Ok(*version);
            }
        }
        let version = self.ensure_tenant_key(tenant).await?;
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.insert(tenant, (version, Instant::now()));
        Ok(version)
    }

    async fn data_key(&self, tenant: TenantId, version: u32) -> Result<Arc<KeyBytes>, CryptoError> {
        {
            let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(key) = keys.get(&(tenant, version)) {
                return Ok(Arc::clone(key));
            }
        }
        let wrapped = tenant_keys::find(&self.db, tenant, version)
            .await?
            .ok_or(CryptoError::Open)?;
        let key = Arc::new(self.unwrap_key(&wrapped)?);
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.insert((tenant, version), Arc::clone(&key));
        Ok(key)
    }

    /// Generates and stores a data key version; returns `false` when that
    /// version already exists (another process created it first).
    async fn add_version(&self, tenant: TenantId, version: u32) -> Result<bool, CryptoError> {
        let key = KeyBytes::generate()?;
        let wrapped = self.wrap_key(tenant, version, &key)?;
        Ok(tenant_keys::insert(&self.db, &wrapped).await?)
    }

    fn wrap_key(
        &self,
        tenant: TenantId,
        version: u32,
        key: &KeyBytes,
    ) -> Result<WrappedKey, CryptoError> {
        let aad = wrap_aad(tenant, version);
        Ok(WrappedKey {
            tenant_id: tenant,
            version,
            master_key_id: self.master_id.clone(),
            wrapped_key: seal(&self.master, version, &aad, key.as_bytes())?,
        })
    }

    fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<KeyBytes, CryptoError> {
        let master = std::iter::once(&self.master)
            .chain(&self.previous_masters)
            .find(|master| master.fingerprint() == wrapped.master_key_id)
            .ok_or_else(|| CryptoError::UnknownMasterKey {
                tenant: wrapped.tenant_id.to_string(),
                version: wrapped.version,
                master_key_id: wrapped.master_key_id.clone(),
            })?;
        let aad = wrap_aad(wrapped.tenant_id, wrapped.version);
        let plain = open(master, &aad, &wrapped.wrapped_key)?;
        key_from(&plain)
    }
}

/// Turns unwrapped key bytes back into a key; any other length fails as
/// [`CryptoError::Open`].
fn key_from(plain: &[u8]) -> Result<KeyBytes, CryptoError> {
    let mut key = Box::new([0u8; super::KEY_LEN]);
    if plain.len() != key.len() {
        return Err(CryptoError::Open);
    }
    key.copy_from_slice(plain);
    Ok(KeyBytes(key))
}

fn wrap_aad(tenant: TenantId, version: u32) -> Vec<u8> {
    let tenant = tenant.to_string();
    encode_aad(KEY_WRAP_LABEL, version, &[tenant.as_bytes()])
}
