//! The key-value store of plugins, in the database.
//!
//! Values are sealed with the tenant's data key. The associated data binds
//! tenant, bot, scope, user and key, so a value copied into another row
//! fails to open. Keys stay plaintext, so listing by prefix works in SQL.

use std::sync::Arc;

use sqlx::Row;

use super::{Backend, Db, TenantId};
use crate::capabilities::kv::{KvNamespace, KvStore, StoreError, page_keys};
use crate::crypto::{ColumnRef, Vault};

const TABLE: &str = "kv_entries";
const COLUMN: &str = "value_sealed";

/// A [`KvStore`] over the `kv_entries` table.
#[derive(Clone, Debug)]
pub struct DbKvStore {
    db: Db,
    vault: Arc<Vault>,
}

/// The columns of one entry's key, in the order of the primary key.
struct EntryKey<'a> {
    tenant: TenantId,
    bot: &'a str,
    scope: &'static str,
    user: &'a str,
    key: &'a str,
}

impl<'a> EntryKey<'a> {
    fn new(namespace: &'a KvNamespace, key: &'a str) -> Result<Self, StoreError> {
        let tenant = uuid::Uuid::parse_str(&namespace.tenant)
            .map(TenantId)
            .map_err(|_| StoreError("key-value namespace has no tenant id".to_owned()))?;
        let (scope, user) = match &namespace.user {
            Some(user) => ("user", user.as_str()),
            None => ("bot", ""),
        };
        Ok(Self {
            tenant,
            bot: &namespace.bot,
            scope,
            user,
            key,
        })
    }

    /// The row id bound into the associated data: a JSON array, so no two
    /// different entries encode to the same text.
    fn row_id(&self) -> String {
        serde_json::json!([self.bot, self.scope, self.user, self.key]).to_string()
    }
}

fn failed(action: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |error| {
        tracing::warn!(error = %error, "key-value {action} failed");
        StoreError(format!("key-value {action} failed"))
    }
}

impl DbKvStore {
    /// A store in `db` sealing values with `vault`.
    pub fn new(db: Db, vault: Arc<Vault>) -> Self {
        Self { db, vault }
    }

    /// Returns the bots of `tenant` that hold user-scope entries.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when the query fails.
    pub async fn bots_with_user_entries(
        &self,
        tenant: TenantId,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT bot_name FROM kv_entries WHERE tenant_id = $1 AND scope = 'user' \
             ORDER BY bot_name",
        )
        .bind(tenant.to_string())
        .fetch_all(self.db.pool())
        .await
        .map_err(failed("list"))?;
        rows.iter()
            .map(|row| row.try_get("bot_name").map_err(failed("list")))
            .collect()
    }

    /// Deletes every entry in the user scope of `user` (the pseudonym the
    /// bot sees) of one bot; returns how many there were.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when the delete fails.
    pub async fn delete_user_scope(
        &self,
        tenant: TenantId,
        bot: &str,
        user: &str,
    ) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "DELETE FROM kv_entries WHERE tenant_id = $1 AND bot_name = $2 AND scope = 'user' \
             AND user_id = $3",
        )
        .bind(tenant.to_string())
        .bind(bot)
        .bind(user)
        .execute(self.db.pool())
        .await
        .map_err(failed("delete"))?;
        Ok(result.rows_affected())
    }

    async fn seal(&self, entry: &EntryKey<'_>, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let row = entry.row_id();
        let at = ColumnRef {
            tenant: entry.tenant,
            table: TABLE,
            row: &row,
            column: COLUMN,
        };
        self.vault.seal(&at, value).await.map_err(|error| {
            tracing::warn!(error = %error, "key-value seal failed");
            StoreError("key-value write failed".to_owned())
        })
    }

    /// One statement inserts or replaces the entry only while the bot's
    /// total stays within the quota. PostgreSQL first locks the bot's row
    /// so two writers cannot both pass the check; SQLite runs one writer
    /// at a time anyway.
    async fn upsert(
        &self,
        entry: &EntryKey<'_>,
        sealed: Vec<u8>,
        size: i64,
        quota: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.db.pool().begin().await?;
        if self.db.backend() == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(format!("{}/{}", entry.tenant, entry.bot))
                .execute(&mut *tx)
                .await?;
        }
        let result = sqlx::query(
            "INSERT INTO kv_entries (tenant_id, bot_name, scope, user_id, key, value_sealed, size) \
             SELECT $1, $2, $3, $4, $5, $6, $7 WHERE \
             (SELECT COALESCE(SUM(size), 0) FROM kv_entries WHERE tenant_id = $1 AND bot_name = $2 \
              AND NOT (scope = $3 AND user_id = $4 AND key = $5)) + $7 <= $8 \
             ON CONFLICT (tenant_id, bot_name, scope, user_id, key) \
             DO UPDATE SET value_sealed = excluded.value_sealed, size = excluded.size",
        )
        .bind(entry.tenant.to_string())
        .bind(entry.bot)
        .bind(entry.scope)
        .bind(entry.user)
        .bind(entry.key)
        .bind(sealed)
        .bind(size)
        .bind(quota)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }
}

#[wasmtime_wasi::async_trait]
impl KvStore for DbKvStore {
    async fn get(&self, namespace: &KvNamespace, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let entry = EntryKey::new(namespace, key)?;
        let row = sqlx::query(
            "SELECT value_sealed FROM kv_entries WHERE tenant_id = $1 AND bot_name = $2 \
             AND scope = $3 AND user_id = $4 AND key = $5",
        )
        .bind(entry.tenant.to_string())
        .bind(entry.bot)
        .bind(entry.scope)
        .bind(entry.user)
        .bind(entry.key)
        .fetch_optional(self.db.pool())
        .await
        .map_err(failed("read"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let sealed: Vec<u8> = row.try_get("value_sealed").map_err(failed("read"))?;
        let row_id = entry.row_id();
        let at = ColumnRef {
            tenant: entry.tenant,
            table: TABLE,
            row: &row_id,
            column: COLUMN,
        };
        let plain = self.vault.open(&at, &sealed).await.map_err(|_| {
            tracing::warn!("key-value value failed to open: moved, changed or wrong key");
            StoreError("key-value read failed".to_owned())
        })?;
        Ok(Some(plain.to_vec()))
    }

    async fn set_within_quota(
        &self,
        namespace: &KvNamespace,
        key: &str,
        value: &[u8],
        quota_bytes: u64,
    ) -> Result<bool, StoreError> {
        let entry = EntryKey::new(namespace, key)?;
        let sealed = self.seal(&entry, value).await?;
        let size = i64::try_from(key.len() + value.len()).unwrap_or(i64::MAX);
        let quota = i64::try_from(quota_bytes).unwrap_or(i64::MAX);
        self.upsert(&entry, sealed, size, quota)
            .await
            .map_err(failed("write"))
    }

    async fn delete(&self, namespace: &KvNamespace, key: &str) -> Result<(), StoreError> {
        let entry = EntryKey::new(namespace, key)?;
        sqlx::query(
            "DELETE FROM kv_entries WHERE tenant_id = $1 AND bot_name = $2 \
             AND scope = $3 AND user_id = $4 AND key = $5",
        )
        .bind(entry.tenant.to_string())
        .bind(entry.bot)
        .bind(entry.scope)
        .bind(entry.user)
        .bind(entry.key)
        .execute(self.db.pool())
        .await
        .map_err(failed("delete"))?;
        Ok(())
    }

    async fn list_keys(
        &self,
        namespace: &KvNamespace,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let entry = EntryKey::new(namespace, prefix)?;
        // Filtering by prefix in Rust keeps `%` and `_` in keys literal and
        // compares bytes the same way on both dialects.
        // NOTE: this reads every key of the namespace, which the bot's quota
        // bounds. A large quota makes listing slow; a byte-ordered index
        // (`COLLATE "C"` on PostgreSQL) would let SQL page instead.
        let rows = sqlx::query(
            "SELECT key FROM kv_entries WHERE tenant_id = $1 AND bot_name = $2 \
             AND scope = $3 AND user_id = $4",
        )
        .bind(entry.tenant.to_string())
        .bind(entry.bot)
        .bind(entry.scope)
        .bind(entry.user)
        .fetch_all(self.db.pool())
        .await
        .map_err(failed("list"))?;
        let keys = rows
            .iter()
            .map(|row| row.try_get::<String, _>("key"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(failed("list"))?;
        Ok(page_keys(keys, prefix, start_after, limit))
    }
}
