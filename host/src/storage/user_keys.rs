//! Wrapped per-user data keys: one per account, created on first use and
//! deleted when the account is erased.

use sqlx::Row;

use super::{Db, StorageError, TenantId, UserId, now_unix};

/// A user's data key, still wrapped by a tenant data key.
#[derive(Clone, Debug)]
pub struct WrappedUserKey {
    /// Version of the tenant data key that wraps it.
    pub tenant_key_version: u32,
    /// The sealed key bytes.
    pub wrapped_key: Vec<u8>,
}

/// Stores a user's key unless one exists; returns whether it was stored.
///
/// # Errors
///
/// Returns [`StorageError`] when the insert fails.
pub async fn insert(
    db: &Db,
    tenant: TenantId,
    user: UserId,
    key: &WrappedUserKey,
) -> Result<bool, StorageError> {
    let result = sqlx::query(
        "INSERT INTO user_keys (tenant_id, user_id, tenant_key_version, wrapped_key, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(tenant.to_string())
    .bind(user.to_string())
    .bind(i64::from(key.tenant_key_version))
    .bind(&key.wrapped_key)
    .bind(now_unix())
    .execute(db.pool())
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Returns a user's wrapped key.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or the row is corrupt.
pub async fn find(
    db: &Db,
    tenant: TenantId,
    user: UserId,
) -> Result<Option<WrappedUserKey>, StorageError> {
    let row = sqlx::query(
        "SELECT tenant_key_version, wrapped_key FROM user_keys \
         WHERE tenant_id = $1 AND user_id = $2",
    )
    .bind(tenant.to_string())
    .bind(user.to_string())
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let version: i64 = row.try_get("tenant_key_version")?;
    Ok(Some(WrappedUserKey {
        tenant_key_version: u32::try_from(version).map_err(|_| StorageError::CorruptRow {
            table: "user_keys",
            column: "tenant_key_version",
        })?,
        wrapped_key: row.try_get("wrapped_key")?,
    }))
}

/// Deletes a user's key; returns whether there was one.
///
/// # Errors
///
/// Returns [`StorageError`] when the delete fails.
pub async fn delete(db: &Db, tenant: TenantId, user: UserId) -> Result<bool, StorageError> {
    let result = sqlx::query("DELETE FROM user_keys WHERE tenant_id = $1 AND user_id = $2")
        .bind(tenant.to_string())
        .bind(user.to_string())
        .execute(db.pool())
        .await?;
    Ok(result.rows_affected() > 0)
}
