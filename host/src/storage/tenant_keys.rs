//! Wrapped per-tenant data keys. Each tenant has numbered versions; the
//! highest seals new values and every version stays to open old ones.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Db, StorageError, TenantId, now_unix, uuid_column};

/// A stored data key, still wrapped by a master key.
#[derive(Clone, Debug)]
pub struct WrappedKey {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Version, counting from 1.
    pub version: u32,
    /// Fingerprint of the master key that wrapped it.
    pub master_key_id: String,
    /// The sealed key bytes.
    pub wrapped_key: Vec<u8>,
}

fn from_row(row: &AnyRow) -> Result<WrappedKey, StorageError> {
    let version: i64 = row.try_get("version")?;
    Ok(WrappedKey {
        tenant_id: TenantId(uuid_column(row, "tenant_keys", "tenant_id")?),
        version: u32::try_from(version).map_err(|_| StorageError::CorruptRow {
            table: "tenant_keys",
            column: "version",
        })?,
        master_key_id: row.try_get("master_key_id")?,
        wrapped_key: row.try_get("wrapped_key")?,
    })
}

const COLUMNS: &str = "tenant_id, version, master_key_id, wrapped_key";

/// Stores a new version unless that version exists; returns whether it was
/// stored.
///
/// # Errors
///
/// Returns [`StorageError`] when the insert fails, for example because the
/// tenant is gone.
pub async fn insert(db: &Db, key: &WrappedKey) -> Result<bool, StorageError> {
    let result = sqlx::query(
        "INSERT INTO tenant_keys (tenant_id, version, master_key_id, wrapped_key, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(key.tenant_id.to_string())
    .bind(i64::from(key.version))
    .bind(&key.master_key_id)
    .bind(&key.wrapped_key)
    .bind(now_unix())
    .execute(db.pool())
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Returns the newest version of a tenant's key.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or the row is invalid.
pub async fn latest(db: &Db, tenant: TenantId) -> Result<Option<WrappedKey>, StorageError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM tenant_keys WHERE tenant_id = $1 ORDER BY version DESC LIMIT 1"
    );
    let row = sqlx::query(&sql)
        .bind(tenant.to_string())
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Returns one version of a tenant's key.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or the row is invalid.
pub async fn find(
    db: &Db,
    tenant: TenantId,
    version: u32,
) -> Result<Option<WrappedKey>, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM tenant_keys WHERE tenant_id = $1 AND version = $2");
    let row = sqlx::query(&sql)
        .bind(tenant.to_string())
        .bind(i64::from(version))
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Returns every stored key of every tenant.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or a row is invalid.
pub async fn list_all(db: &Db) -> Result<Vec<WrappedKey>, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM tenant_keys ORDER BY tenant_id, version");
    let rows = sqlx::query(&sql).fetch_all(db.pool()).await?;
    rows.iter().map(from_row).collect()
}

/// Replaces the wrapping of one key version.
///
/// # Errors
///
/// Returns [`StorageError`] when the update fails.
pub async fn rewrap(db: &Db, key: &WrappedKey) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE tenant_keys SET master_key_id = $1, wrapped_key = $2 \
         WHERE tenant_id = $3 AND version = $4",
    )
    .bind(&key.master_key_id)
    .bind(&key.wrapped_key)
    .bind(key.tenant_id.to_string())
    .bind(i64::from(key.version))
    .execute(db.pool())
    .await?;
    Ok(())
}
