//! Refresh-token rows: only SHA-256 hashes of the tokens, grouped in
//! families that share one session.
//!
//! Rotation marks the presented token used with a conditional `UPDATE` and
//! inserts the successor in the same transaction. When many rotations of
//! one token run concurrently, exactly one finds the token unused. The
//! others detect reuse and revoke the family, successor included.
//!
//! NOTE: used, revoked and expired rows stay until their user is deleted.
//! Nothing prunes them yet, so the table grows with every refresh.

use sqlx::Row;

use super::{Db, StorageError, UserId, now_unix, uuid_column};

/// Result of presenting a refresh token.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The token was live and the successor is stored.
    Rotated {
        /// The user the family belongs to.
        user: UserId,
    },
    /// The token was already used: the family is now revoked.
    Reused,
    /// Unknown, expired or revoked.
    Invalid,
}

/// A token to store.
#[derive(Debug, Clone, Copy)]
pub struct NewRefreshToken<'a> {
    /// Hex SHA-256 of the token.
    pub token_hash: &'a str,
    /// Family (equal to the session id).
    pub family_id: &'a str,
    /// Owner.
    pub user: UserId,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
}

/// Stores the first token of a new family.
///
/// # Errors
///
/// Returns [`StorageError`] when the insert fails.
pub async fn insert(db: &Db, token: NewRefreshToken<'_>) -> Result<(), StorageError> {
    insert_on(db.pool(), token).await
}

async fn insert_on<'e, E>(executor: E, token: NewRefreshToken<'_>) -> Result<(), StorageError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token.token_hash)
    .bind(token.family_id)
    .bind(token.user.to_string())
    .bind(now_unix())
    .bind(token.expires_at)
    .execute(executor)
    .await?;
    Ok(())
}

/// Looks up the family of a live token, for the session check before
/// rotation. Returns `None` for unknown, expired or revoked tokens.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn family_of(db: &Db, token_hash: &str) -> Result<Option<String>, StorageError> {
    let row = sqlx::query(
        "SELECT family_id FROM refresh_tokens \
         WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2",
    )
    .bind(token_hash)
    .bind(now_unix())
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(|row| row.try_get("family_id")).transpose()?)
}

/// Marks `old_hash` used and stores `successor` in its family, or revokes
/// the family when `old_hash` was already used.
///
/// # Errors
///
/// Returns [`StorageError`] when a query fails.
pub async fn rotate(
    db: &Db,
    old_hash: &str,
    successor_hash: &str,
    successor_expires_at: i64,
) -> Result<Rotation, StorageError> {
    let now = now_unix();
    let row = sqlx::query(
        "SELECT family_id, user_id, expires_at, revoked_at FROM refresh_tokens \
         WHERE token_hash = $1",
    )
    .bind(old_hash)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else {
        return Ok(Rotation::Invalid);
    };
    let family: String = row.try_get("family_id")?;
    let user = UserId(uuid_column(&row, "refresh_tokens", "user_id")?);
    let expires_at: i64 = row.try_get("expires_at")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    if revoked_at.is_some() || expires_at <= now {
        return Ok(Rotation::Invalid);
    }

    let mut tx = db.pool().begin().await?;
    let claimed = sqlx::query(
        "UPDATE refresh_tokens SET used_at = $1 \
         WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(old_hash)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !claimed {
        tx.rollback().await?;
        revoke_family(db, &family).await?;
        return Ok(Rotation::Reused);
    }
    let successor = NewRefreshToken {
        token_hash: successor_hash,
        family_id: &family,
        user,
        expires_at: successor_expires_at,
    };
    insert_on(&mut *tx, successor).await?;
    tx.commit().await?;
    Ok(Rotation::Rotated { user })
}

/// Revokes every token of a family.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn revoke_family(db: &Db, family: &str) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
    )
    .bind(now_unix())
    .bind(family)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Revokes every token of a user.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn revoke_user(db: &Db, user: UserId) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
    )
    .bind(now_unix())
    .bind(user.to_string())
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Counts the tokens of a family that are neither used nor revoked.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails.
pub async fn count_live(db: &Db, family: &str) -> Result<i64, StorageError> {
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM refresh_tokens \
         WHERE family_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(family)
    .fetch_one(db.pool())
    .await?;
    Ok(count)
}
