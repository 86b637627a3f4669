//! Uploaded plugin components and their grant sets, per tenant and digest.

use std::collections::BTreeSet;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Db, StorageError, TenantId, now_unix};
use crate::capabilities::{Capability, GrantSet};
use crate::runtime::{PluginDigest, PluginInfo};

/// A stored plugin, without its component bytes.
#[derive(Clone, Debug, Serialize)]
pub struct PluginRecord {
    /// SHA-256 of the component.
    pub digest: String,
    /// Name given at upload.
    pub name: String,
    /// Version given at upload.
    pub version: String,
    /// Component size in bytes.
    pub size: i64,
    /// Version of the `botserver:bot` contract it exports.
    pub wit_version: String,
    /// Capabilities its imports need.
    pub requested: BTreeSet<Capability>,
    /// Capabilities granted to it, with their parameters.
    pub grants: GrantSet,
    /// Upload time, Unix seconds.
    pub created_at: i64,
}

impl PluginRecord {
    /// Requested capabilities that are not granted.
    pub fn missing(&self) -> Vec<Capability> {
        self.requested
            .difference(&self.grants.capabilities())
            .copied()
            .collect()
    }
}

const COLUMNS: &str = "digest, name, version, size, wit_version, requested, grants, created_at";

fn corrupt(column: &'static str) -> StorageError {
    StorageError::CorruptRow {
        table: "plugins",
        column,
    }
}

fn from_row(row: &AnyRow) -> Result<PluginRecord, StorageError> {
    let requested: String = row.try_get("requested")?;
    let grants: String = row.try_get("grants")?;
    Ok(PluginRecord {
        digest: row.try_get("digest")?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        size: row.try_get("size")?,
        wit_version: row.try_get("wit_version")?,
        requested: serde_json::from_str(&requested).map_err(|_| corrupt("requested"))?,
        grants: serde_json::from_str(&grants).map_err(|_| corrupt("grants"))?,
        created_at: row.try_get("created_at")?,
    })
}

/// Stores a validated component unless the tenant already has the same
/// digest; returns whether a row was added.
///
/// # Errors
///
/// Returns [`StorageError`] when the insert fails.
pub async fn insert(
    db: &Db,
    tenant: TenantId,
    info: &PluginInfo,
    name: &str,
    version: &str,
    component: &[u8],
) -> Result<bool, StorageError> {
    let requested = serde_json::to_string(&info.requested).map_err(|_| corrupt("requested"))?;
    let result = sqlx::query(
        "INSERT INTO plugins (tenant_id, digest, name, version, size, wit_version, requested, \
         grants, component, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, '{}', $8, $9) \
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant.to_string())
    .bind(info.digest.as_str())
    .bind(name)
    .bind(version)
    .bind(i64::try_from(component.len()).unwrap_or(i64::MAX))
    .bind(&info.wit_version)
    .bind(requested)
    .bind(component)
    .bind(now_unix())
    .execute(db.pool())
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Lists a tenant's plugins, newest first.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or a row is invalid.
pub async fn list(db: &Db, tenant: TenantId) -> Result<Vec<PluginRecord>, StorageError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM plugins WHERE tenant_id = $1 ORDER BY created_at DESC, digest"
    );
    let rows = sqlx::query(&sql)
        .bind(tenant.to_string())
        .fetch_all(db.pool())
        .await?;
    rows.iter().map(from_row).collect()
}

/// Finds one of a tenant's plugins.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or the row is invalid.
pub async fn find(
    db: &Db,
    tenant: TenantId,
    digest: &str,
) -> Result<Option<PluginRecord>, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM plugins WHERE tenant_id = $1 AND digest = $2");
    let row = sqlx::query(&sql)
        .bind(tenant.to_string())
        .bind(digest)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Returns the component bytes of one of a tenant's plugins.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn component(
    db: &Db,
    tenant: TenantId,
    digest: &PluginDigest,
) -> Result<Option<Vec<u8>>, StorageError> {
    let row = sqlx::query("SELECT component FROM plugins WHERE tenant_id = $1 AND digest = $2")
        .bind(tenant.to_string())
        .bind(digest.as_str())
        .fetch_optional(db.pool())
        .await?;
    Ok(row.map(|row| row.try_get("component")).transpose()?)
}

/// Replaces a plugin's grant set; returns `false` when there is no such
/// plugin.
///
/// # Errors
///
/// Returns [`StorageError`] when the update fails.
pub async fn set_grants(
    db: &Db,
    tenant: TenantId,
    digest: &str,
    grants: &GrantSet,
) -> Result<bool, StorageError> {
    let text = serde_json::to_string(grants).map_err(|_| corrupt("grants"))?;
    let result = sqlx::query("UPDATE plugins SET grants = $1 WHERE tenant_id = $2 AND digest = $3")
        .bind(text)
        .bind(tenant.to_string())
        .bind(digest)
        .execute(db.pool())
        .await?;
    Ok(result.rows_affected() == 1)
}
