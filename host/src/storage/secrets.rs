//! Tenant secrets, sealed with the tenant's data key. Values are written
//! by admins and read only by plugins granted their names.

use std::sync::Arc;

use sqlx::Row;

use super::{Db, StorageError, TenantId, now_unix};
use crate::capabilities::kv::StoreError;
use crate::capabilities::secrets::{SecretStore, SecretValue};
use crate::crypto::{ColumnRef, CryptoError, Vault};

const TABLE: &str = "secrets";
const COLUMN: &str = "value_sealed";

fn column(tenant: TenantId, name: &str) -> ColumnRef<'_> {
    ColumnRef {
        tenant,
        table: TABLE,
        row: name,
        column: COLUMN,
    }
}

/// Seals and stores a secret, replacing any earlier value.
///
/// # Errors
///
/// Returns [`CryptoError`] when sealing or the write fails.
pub async fn put(
    db: &Db,
    vault: &Vault,
    tenant: TenantId,
    name: &str,
    value: &SecretValue,
) -> Result<(), CryptoError> {
    let sealed = vault
        .seal(&column(tenant, name), value.expose().as_bytes())
        .await?;
    sqlx::query(
        "INSERT INTO secrets (tenant_id, name, value_sealed, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant_id, name) DO UPDATE SET value_sealed = excluded.value_sealed, \
         updated_at = excluded.updated_at",
    )
    .bind(tenant.to_string())
    .bind(name)
    .bind(sealed)
    .bind(now_unix())
    .execute(db.pool())
    .await
    .map_err(StorageError::from)?;
    Ok(())
}

/// A [`SecretStore`] over the `secrets` table.
#[derive(Clone, Debug)]
pub struct DbSecretStore {
    db: Db,
    vault: Arc<Vault>,
}

impl DbSecretStore {
    /// A store in `db` opening values with `vault`.
    pub fn new(db: Db, vault: Arc<Vault>) -> Self {
        Self { db, vault }
    }
}

#[wasmtime_wasi::async_trait]
impl SecretStore for DbSecretStore {
    async fn get(&self, tenant: &str, name: &str) -> Result<Option<SecretValue>, StoreError> {
        let unavailable = || StoreError("secret store unavailable".to_owned());
        let tenant = uuid::Uuid::parse_str(tenant)
            .map(TenantId)
            .map_err(|_| unavailable())?;
        let row =
            sqlx::query("SELECT value_sealed FROM secrets WHERE tenant_id = $1 AND name = $2")
                .bind(tenant.to_string())
                .bind(name)
                .fetch_optional(self.db.pool())
                .await
                .map_err(|error| {
                    tracing::warn!(error = %error, "secret read failed");
                    unavailable()
                })?;
        let Some(row) = row else {
            return Ok(None);
        };
        let sealed: Vec<u8> = row.try_get("value_sealed").map_err(|_| unavailable())?;
        let plain = self
            .vault
            .open(&column(tenant, name), &sealed)
            .await
            .map_err(|_| {
                tracing::warn!("secret value failed to open: moved, changed or wrong key");
                unavailable()
            })?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| unavailable())?;
        Ok(Some(SecretValue::new(text)))
    }
}
