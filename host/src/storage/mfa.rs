//! Rows of second factors: a user's sealed TOTP secret with its replay
//! marker, and the hashes of their recovery codes.
//!
//! Sealing, code checks and policy are left to [`crate::auth::mfa`]. The
//! updates here are written so that two servers checking the same code at
//! the same time cannot both accept it.

use sqlx::Row;

use super::{Db, StorageError, TenantId, UserId, now_unix};

/// A user's TOTP row.
#[derive(Clone)]
pub struct TotpRecord {
    /// The user's tenant, whose data key sealed the secret.
    pub tenant_id: TenantId,
    /// The sealed secret.
    pub secret_sealed: Vec<u8>,
    /// Whether the user confirmed enrolment with a first code.
    pub confirmed: bool,
    /// The newest time step accepted.
    pub last_step: Option<i64>,
}

impl std::fmt::Debug for TotpRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpRecord")
            .field("tenant_id", &self.tenant_id)
            .field("confirmed", &self.confirmed)
            .finish_non_exhaustive()
    }
}

/// Stores a new, unconfirmed secret, replacing an unconfirmed one. Returns
/// `false`, and changes nothing, when the user has a confirmed secret.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn put_pending(
    db: &Db,
    tenant: TenantId,
    user: UserId,
    secret_sealed: &[u8],
) -> Result<bool, StorageError> {
    let result = sqlx::query(
        "INSERT INTO mfa_totp (user_id, tenant_id, secret_sealed, confirmed_at, last_step, \
         created_at) VALUES ($1, $2, $3, NULL, NULL, $4) \
         ON CONFLICT (user_id) DO UPDATE SET secret_sealed = excluded.secret_sealed, \
         created_at = excluded.created_at WHERE mfa_totp.confirmed_at IS NULL",
    )
    .bind(user.to_string())
    .bind(tenant.to_string())
    .bind(secret_sealed)
    .bind(now_unix())
    .execute(db.pool())
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Finds a user's TOTP row, confirmed or not.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or the row is invalid.
pub async fn find(db: &Db, user: UserId) -> Result<Option<TotpRecord>, StorageError> {
    let row = sqlx::query(
        "SELECT tenant_id, secret_sealed, confirmed_at, last_step FROM mfa_totp \
         WHERE user_id = $1",
    )
    .bind(user.to_string())
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let confirmed_at: Option<i64> = row.try_get("confirmed_at")?;
    Ok(Some(TotpRecord {
        tenant_id: TenantId(super::uuid_column(&row, "mfa_totp", "tenant_id")?),
        secret_sealed: row.try_get("secret_sealed")?,
        confirmed: confirmed_at.is_some(),
        last_step: row.try_get("last_step")?,
    }))
}

/// Returns whether the user has a confirmed second factor.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn is_enabled(db: &Db, user: UserId) -> Result<bool, StorageError> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL",
    )
    .bind(user.to_string())
    .fetch_optional(db.pool())
    .await?;
    Ok(found.is_some())
}

/// Confirms a pending secret with the step of its first code and replaces
/// the recovery codes with `code_hashes`. Returns `false`, and changes
/// nothing, when there is no pending secret.
///
/// # Errors
///
/// Returns [`StorageError`] when a query fails.
pub async fn confirm(
    db: &Db,
    user: UserId,
    step: i64,
    code_hashes: &[String],
) -> Result<bool, StorageError> {
    let now = now_unix();
    let mut tx = db.pool().begin().await?;
    let confirmed = sqlx::query(
        "UPDATE mfa_totp SET confirmed_at = $1, last_step = $2 \
         WHERE user_id = $3 AND confirmed_at IS NULL",
    )
    .bind(now)
    .bind(step)
    .bind(user.to_string())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !confirmed {
        return Ok(false);
    }
    sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
        .bind(user.to_string())
        .execute(&mut *tx)
        .await?;
    for hash in code_hashes {
        sqlx::query(
            "INSERT INTO mfa_recovery_codes (user_id, code_hash, created_at) VALUES ($1, $2, $3)",
        )
        .bind(user.to_string())
        .bind(hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Records `step` as used when it is newer than every step accepted
/// before. Returns `false` for a step already used or older, so a replayed
/// code fails even when two servers check it at once.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn accept_step(db: &Db, user: UserId, step: i64) -> Result<bool, StorageError> {
    let result = sqlx::query(
        "UPDATE mfa_totp SET last_step = $1 WHERE user_id = $2 \
         AND confirmed_at IS NOT NULL AND (last_step IS NULL OR last_step < $1)",
    )
    .bind(step)
    .bind(user.to_string())
    .execute(db.pool())
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Deletes the recovery code with this hash; returns whether it existed,
/// so each code works once.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn use_recovery_code(db: &Db, user: UserId, hash: &str) -> Result<bool, StorageError> {
    let result =
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1 AND code_hash = $2")
            .bind(user.to_string())
            .bind(hash)
            .execute(db.pool())
            .await?;
    Ok(result.rows_affected() == 1)
}

/// Counts the user's unused recovery codes.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn recovery_codes_left(db: &Db, user: UserId) -> Result<i64, StorageError> {
    let count: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(user.to_string())
            .fetch_one(db.pool())
            .await?;
    Ok(count)
}

/// Removes the user's secret and recovery codes; returns whether a secret
/// existed.
///
/// # Errors
///
/// Returns [`StorageError`] when a query fails.
pub async fn delete(db: &Db, user: UserId) -> Result<bool, StorageError> {
    let mut tx = db.pool().begin().await?;
    sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
        .bind(user.to_string())
        .execute(&mut *tx)
        .await?;
    let removed = sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1")
        .bind(user.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    tx.commit().await?;
    Ok(removed)
}
