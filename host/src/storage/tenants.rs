//! Tenant rows.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Db, StorageError, now_unix, uuid_column};

/// Longest accepted tenant name, in bytes (a DNS label).
pub const MAX_NAME_BYTES: usize = 63;

/// Description of a valid tenant name, for error messages.
pub const NAME_RULE: &str = "1 to 63 characters of a-z, 0-9 and `-`, not starting with `-`";

/// Lowercases and trims a tenant name; returns `None` unless it follows
/// [`NAME_RULE`].
pub fn normalize_name(raw: &str) -> Option<String> {
    let name = raw.trim().to_lowercase();
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-');
    valid.then_some(name)
}

/// A tenant's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub Uuid);

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A tenant: an organisation whose users, bots and data are walled off from
/// every other tenant's.
#[derive(Clone, Debug, Serialize)]
pub struct Tenant {
    /// Stable id.
    pub id: TenantId,
    /// Unique name used at login.
    pub name: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

fn from_row(row: &AnyRow) -> Result<Tenant, StorageError> {
    Ok(Tenant {
        id: TenantId(uuid_column(row, "tenants", "id")?),
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Inserts a tenant.
///
/// # Errors
///
/// Returns [`StorageError::Conflict`] when the name is taken.
pub async fn create(db: &Db, name: &str) -> Result<Tenant, StorageError> {
    let tenant = Tenant {
        id: TenantId(Uuid::new_v4()),
        name: name.to_owned(),
        created_at: now_unix(),
    };
    sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(tenant.id.to_string())
        .bind(&tenant.name)
        .bind(tenant.created_at)
        .execute(db.pool())
        .await?;
    Ok(tenant)
}

/// Lists every tenant by name.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn list(db: &Db) -> Result<Vec<Tenant>, StorageError> {
    let rows = sqlx::query("SELECT id, name, created_at FROM tenants ORDER BY name")
        .fetch_all(db.pool())
        .await?;
    rows.iter().map(from_row).collect()
}

/// Finds a tenant by id, or by name when `key` is not a UUID. A key that is
/// neither a UUID nor a name in stored form finds nothing, without a query.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn find(db: &Db, key: &str) -> Result<Option<Tenant>, StorageError> {
    let row = match Uuid::parse_str(key) {
        Ok(id) => {
            sqlx::query("SELECT id, name, created_at FROM tenants WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(db.pool())
                .await?
        }
        Err(_) if normalize_name(key).as_deref() != Some(key) => return Ok(None),
        Err(_) => {
            sqlx::query("SELECT id, name, created_at FROM tenants WHERE name = $1")
                .bind(key)
                .fetch_optional(db.pool())
                .await?
        }
    };
    row.as_ref().map(from_row).transpose()
}

/// Renames a tenant; returns `false` when it does not exist.
///
/// # Errors
///
/// Returns [`StorageError::Conflict`] when the name is taken.
pub async fn rename(db: &Db, id: TenantId, name: &str) -> Result<bool, StorageError> {
    let result = sqlx::query("UPDATE tenants SET name = $1 WHERE id = $2")
        .bind(name)
        .bind(id.to_string())
        .execute(db.pool())
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Deletes a tenant with its users, tokens and data keys.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn delete(db: &Db, id: TenantId) -> Result<bool, StorageError> {
    let result = sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(id.to_string())
        .execute(db.pool())
        .await?;
    Ok(result.rows_affected() == 1)
}
