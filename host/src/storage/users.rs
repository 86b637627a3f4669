//! User rows, including the login-failure counter that drives lockout.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Db, StorageError, TenantId, now_unix, uuid_column};
use crate::auth::Role;

/// Longest accepted username, in bytes.
pub const MAX_USERNAME_BYTES: usize = 64;

/// Description of a valid username, for error messages.
pub const USERNAME_RULE: &str = "1 to 64 characters of a-z, 0-9, `.`, `_`, `-`, `@` or `+`";

/// Lowercases and trims a username; returns `None` unless it follows
/// [`USERNAME_RULE`]. Logins normalize the same way, so case never matters.
pub fn normalize_username(raw: &str) -> Option<String> {
    let username = raw.trim().to_lowercase();
    let valid_chars = username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+'));
    (!username.is_empty() && username.len() <= MAX_USERNAME_BYTES && valid_chars)
        .then_some(username)
}

/// A user's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub Uuid);

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A user row. The password hash is left out of `Debug`.
#[derive(Clone)]
pub struct User {
    /// Stable id.
    pub id: UserId,
    /// Tenant the user belongs to.
    pub tenant_id: TenantId,
    /// Login name, unique within the tenant.
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Role, which decides what the user may do.
    pub role: Role,
    /// E-mail address sealed with the tenant's data key.
    pub email_sealed: Option<Vec<u8>>,
    /// Whether logins and tokens are rejected.
    pub disabled: bool,
    /// Failed logins since the last success or lock.
    pub failed_logins: i64,
    /// End of the current lock, Unix seconds.
    pub locked_until: Option<i64>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl User {
    /// Returns whether a lock is in force at `now`.
    pub fn is_locked(&self, now: i64) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }
}

const COLUMNS: &str = "id, tenant_id, username, password_hash, role, email_sealed, disabled, \
                       failed_logins, locked_until, created_at";

fn from_row(row: &AnyRow) -> Result<User, StorageError> {
    let role: String = row.try_get("role")?;
    let disabled: i64 = row.try_get("disabled")?;
    Ok(User {
        id: UserId(uuid_column(row, "users", "id")?),
        tenant_id: TenantId(uuid_column(row, "users", "tenant_id")?),
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        role: Role::parse(&role).ok_or(StorageError::CorruptRow {
            table: "users",
            column: "role",
        })?,
        email_sealed: row.try_get("email_sealed")?,
        disabled: disabled != 0,
        failed_logins: row.try_get("failed_logins")?,
        locked_until: row.try_get("locked_until")?,
        created_at: row.try_get("created_at")?,
    })
}

/// A user to insert. The caller picks the id, because sealed columns bind it.
#[derive(Debug)]
pub struct NewUser<'a> {
    /// Id of the new row.
    pub id: UserId,
    /// Tenant.
    pub tenant_id: TenantId,
    /// Login name.
    pub username: &'a str,
    /// Argon2id PHC string.
    pub password_hash: &'a str,
    /// Role.
    pub role: Role,
    /// Sealed e-mail address.
    pub email_sealed: Option<Vec<u8>>,
}

/// Inserts a user.
///
/// # Errors
///
/// Returns [`StorageError::Conflict`] when the username is taken in the
/// tenant.
pub async fn insert(db: &Db, user: NewUser<'_>) -> Result<(), StorageError> {
    let now = now_unix();
    sqlx::query(
        "INSERT INTO users (id, tenant_id, username, password_hash, role, email_sealed, \
         disabled, failed_logins, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 0, 0, $7, $7)",
    )
    .bind(user.id.to_string())
    .bind(user.tenant_id.to_string())
    .bind(user.username)
    .bind(user.password_hash)
    .bind(user.role.as_str())
    .bind(user.email_sealed)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Finds a user by id alone, for token checks.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or the row is invalid.
pub async fn find_by_id(db: &Db, id: UserId) -> Result<Option<User>, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(id.to_string())
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Finds a user by id within a tenant; another tenant's user is `None`.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or the row is invalid.
pub async fn find(db: &Db, tenant: TenantId, id: UserId) -> Result<Option<User>, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2");
    let row = sqlx::query(&sql)
        .bind(tenant.to_string())
        .bind(id.to_string())
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Finds a user by login name within a tenant.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or the row is invalid.
pub async fn find_by_username(
    db: &Db,
    tenant: TenantId,
    username: &str,
) -> Result<Option<User>, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE tenant_id = $1 AND username = $2");
    let row = sqlx::query(&sql)
        .bind(tenant.to_string())
        .bind(username)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Lists a tenant's users by name.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or a row is invalid.
pub async fn list(db: &Db, tenant: TenantId) -> Result<Vec<User>, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE tenant_id = $1 ORDER BY username");
    let rows = sqlx::query(&sql)
        .bind(tenant.to_string())
        .fetch_all(db.pool())
        .await?;
    rows.iter().map(from_row).collect()
}

/// Lists the ids of a tenant's users.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or a row is invalid.
pub async fn list_ids(db: &Db, tenant: TenantId) -> Result<Vec<UserId>, StorageError> {
    let rows = sqlx::query("SELECT id FROM users WHERE tenant_id = $1")
        .bind(tenant.to_string())
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|row| uuid_column(row, "users", "id").map(UserId))
        .collect()
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct UserChanges {
    /// New role.
    pub role: Option<Role>,
    /// New sealed e-mail; `Some(None)` clears it.
    pub email_sealed: Option<Option<Vec<u8>>>,
    /// New disabled flag.
    pub disabled: Option<bool>,
    /// New password hash.
    pub password_hash: Option<String>,
}

/// Applies `changes` to a tenant's user; returns `false` when not found.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn update(
    db: &Db,
    tenant: TenantId,
    id: UserId,
    changes: UserChanges,
) -> Result<bool, StorageError> {
    let mut tx = db.pool().begin().await?;
    let exists = sqlx::query("UPDATE users SET updated_at = $1 WHERE tenant_id = $2 AND id = $3")
        .bind(now_unix())
        .bind(tenant.to_string())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if !exists {
        return Ok(false);
    }
    if let Some(role) = changes.role {
        set_column(&mut tx, id, "role", role.as_str().to_owned()).await?;
    }
    if let Some(email) = changes.email_sealed {
        sqlx::query("UPDATE users SET email_sealed = $1 WHERE id = $2")
            .bind(email)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
    }
    if let Some(disabled) = changes.disabled {
        sqlx::query("UPDATE users SET disabled = $1 WHERE id = $2")
            .bind(i64::from(disabled))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
    }
    if let Some(hash) = changes.password_hash {
        set_column(&mut tx, id, "password_hash", hash).await?;
    }
    tx.commit().await?;
    Ok(true)
}

async fn set_column(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: UserId,
    column: &'static str,
    value: String,
) -> Result<(), StorageError> {
    // `column` is one of the fixed names above, never request data.
    let sql = format!("UPDATE users SET {column} = $1 WHERE id = $2");
    sqlx::query(&sql)
        .bind(value)
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Replaces a user's password hash.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn set_password_hash(db: &Db, id: UserId, hash: &str) -> Result<(), StorageError> {
    sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
        .bind(hash)
        .bind(now_unix())
        .bind(id.to_string())
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Deletes a tenant's user and, through the foreign keys, its refresh
/// tokens; returns `false` when not found.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn delete(db: &Db, tenant: TenantId, id: UserId) -> Result<bool, StorageError> {
    let result = sqlx::query("DELETE FROM users WHERE tenant_id = $1 AND id = $2")
        .bind(tenant.to_string())
        .bind(id.to_string())
        .execute(db.pool())
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Counts a failed login and locks the account when the count reaches
/// `max_attempts`. Failures while a lock is in force are not counted, so
/// they cannot extend it. Returns whether this failure started a lock.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn record_failed_login(
    db: &Db,
    id: UserId,
    max_attempts: u32,
    lock_secs: i64,
) -> Result<bool, StorageError> {
    let now = now_unix();
    let count: Option<i64> = sqlx::query_scalar(
        "UPDATE users SET failed_logins = failed_logins + 1 \
         WHERE id = $1 AND (locked_until IS NULL OR locked_until <= $2) \
         RETURNING failed_logins",
    )
    .bind(id.to_string())
    .bind(now)
    .fetch_optional(db.pool())
    .await?;
    let Some(count) = count else { return Ok(false) };
    if count < i64::from(max_attempts) {
        return Ok(false);
    }
    let locked = sqlx::query(
        "UPDATE users SET locked_until = $1, failed_logins = 0 \
         WHERE id = $2 AND failed_logins >= $3",
    )
    .bind(now.saturating_add(lock_secs))
    .bind(id.to_string())
    .bind(i64::from(max_attempts))
    .execute(db.pool())
    .await?;
    Ok(locked.rows_affected() == 1)
}

/// Clears the failure counter and any expired lock after a good login.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn record_successful_login(db: &Db, id: UserId) -> Result<(), StorageError> {
    sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
        .bind(id.to_string())
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Lifts a lock and clears the failure counter; returns `false` when the
/// user is not in the tenant.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn unlock(db: &Db, tenant: TenantId, id: UserId) -> Result<bool, StorageError> {
    let result = sqlx::query(
        "UPDATE users SET failed_logins = 0, locked_until = NULL \
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant.to_string())
    .bind(id.to_string())
    .execute(db.pool())
    .await?;
    Ok(result.rows_affected() == 1)
}
