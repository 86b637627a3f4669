//! Bot rows: which plugin a bot runs, with what limits and configuration,
//! and its status (invocations, traps by kind, breaker).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Db, StorageError, TenantId, now_unix};
use crate::runtime::limits::InvocationLimits;

/// Who may chat with a bot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Users of the bot's tenant.
    Members,
    /// Anyone, through an anonymous session.
    Public,
}

impl Visibility {
    fn as_str(self) -> &'static str {
        match self {
            Self::Members => "members",
            Self::Public => "public",
        }
    }
}

/// A bot as stored.
#[derive(Clone, Debug, Serialize)]
pub struct Bot {
    /// Name, unique within the tenant.
    pub name: String,
    /// Digest of the plugin it runs.
    pub plugin_digest: String,
    /// Whether it answers events.
    pub enabled: bool,
    /// Who may chat with it.
    pub visibility: Visibility,
    /// Limits of each invocation.
    pub limits: InvocationLimits,
    /// Values the plugin reads through `config`.
    pub config: BTreeMap<String, String>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last change, Unix seconds.
    pub updated_at: i64,
}

/// What the breaker last did to a bot.
#[derive(Clone, Debug, Serialize)]
pub struct BreakerState {
    /// `open` while the breaker keeps the bot disabled, else `closed`.
    pub state: &'static str,
    /// When it tripped, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tripped_at: Option<i64>,
    /// Why it tripped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The last failed event of a bot.
#[derive(Clone, Debug, Serialize)]
pub struct LastFailure {
    /// When it failed, Unix seconds.
    pub at: i64,
    /// The error, and the host calls denied on the way.
    pub reason: String,
}

/// A bot's counters.
#[derive(Clone, Debug, Serialize)]
pub struct BotStatus {
    /// Events run since the bot was created.
    pub invocations: i64,
    /// Traps and broken limits, by [`crate::runtime::InvocationError::kind`].
    pub traps: BTreeMap<String, i64>,
    /// The breaker.
    pub breaker: BreakerState,
    /// The last failed event, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<LastFailure>,
}

const COLUMNS: &str =
    "name, plugin_digest, enabled, visibility, limits, config, created_at, updated_at";

fn corrupt(column: &'static str) -> StorageError {
    StorageError::CorruptRow {
        table: "bots",
        column,
    }
}

fn from_row(row: &AnyRow) -> Result<Bot, StorageError> {
    let enabled: i64 = row.try_get("enabled")?;
    let visibility: String = row.try_get("visibility")?;
    let limits: String = row.try_get("limits")?;
    let config: String = row.try_get("config")?;
    Ok(Bot {
        name: row.try_get("name")?,
        plugin_digest: row.try_get("plugin_digest")?,
        enabled: enabled != 0,
        visibility: serde_json::from_value(serde_json::Value::String(visibility))
            .map_err(|_| corrupt("visibility"))?,
        limits: serde_json::from_str(&limits).map_err(|_| corrupt("limits"))?,
        config: serde_json::from_str(&config).map_err(|_| corrupt("config"))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn json(value: &impl Serialize, column: &'static str) -> Result<String, StorageError> {
    serde_json::to_string(value).map_err(|_| corrupt(column))
}

/// Inserts a bot.
///
/// # Errors
///
/// Returns [`StorageError::Conflict`] when the name is taken.
pub async fn insert(db: &Db, tenant: TenantId, bot: &Bot) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO bots (tenant_id, name, plugin_digest, enabled, visibility, limits, config, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(tenant.to_string())
    .bind(&bot.name)
    .bind(&bot.plugin_digest)
    .bind(i64::from(bot.enabled))
    .bind(bot.visibility.as_str())
    .bind(json(&bot.limits, "limits")?)
    .bind(json(&bot.config, "config")?)
    .bind(bot.created_at)
    .bind(bot.updated_at)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Writes every settable field of a bot; returns `false` when it is gone.
/// Enabling clears the breaker.
///
/// # Errors
///
/// Returns [`StorageError`] when the update fails.
pub async fn update(db: &Db, tenant: TenantId, bot: &Bot) -> Result<bool, StorageError> {
    let result = sqlx::query(
        "UPDATE bots SET plugin_digest = $1, enabled = $2, visibility = $3, limits = $4, \
         config = $5, updated_at = $6, \
         breaker_tripped_at = CASE WHEN $2 = 1 THEN NULL ELSE breaker_tripped_at END, \
         breaker_reason = CASE WHEN $2 = 1 THEN NULL ELSE breaker_reason END \
         WHERE tenant_id = $7 AND name = $8",
    )
    .bind(&bot.plugin_digest)
    .bind(i64::from(bot.enabled))
    .bind(bot.visibility.as_str())
    .bind(json(&bot.limits, "limits")?)
    .bind(json(&bot.config, "config")?)
    .bind(now_unix())
    .bind(tenant.to_string())
    .bind(&bot.name)
    .execute(db.pool())
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Lists a tenant's bots by name.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or a row is invalid.
pub async fn list(db: &Db, tenant: TenantId) -> Result<Vec<Bot>, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM bots WHERE tenant_id = $1 ORDER BY name");
    let rows = sqlx::query(&sql)
        .bind(tenant.to_string())
        .fetch_all(db.pool())
        .await?;
    rows.iter().map(from_row).collect()
}

/// Finds one of a tenant's bots.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or the row is invalid.
pub async fn find(db: &Db, tenant: TenantId, name: &str) -> Result<Option<Bot>, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM bots WHERE tenant_id = $1 AND name = $2");
    let row = sqlx::query(&sql)
        .bind(tenant.to_string())
        .bind(name)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Deletes a bot with its counters; returns `false` when it is gone.
///
/// NOTE: the bot's key-value entries stay, so a new bot with the same name
/// sees them; deleting them needs a purge that this build does not have.
///
/// # Errors
///
/// Returns [`StorageError`] when the delete fails.
pub async fn delete(db: &Db, tenant: TenantId, name: &str) -> Result<bool, StorageError> {
    let result = sqlx::query("DELETE FROM bots WHERE tenant_id = $1 AND name = $2")
        .bind(tenant.to_string())
        .bind(name)
        .execute(db.pool())
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Counts one invocation, and one trap of `trap_kind` when given.
///
/// # Errors
///
/// Returns [`StorageError`] when a write fails.
pub async fn record_invocation(
    db: &Db,
    tenant: TenantId,
    name: &str,
    trap_kind: Option<&str>,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE bots SET invocations = invocations + 1 WHERE tenant_id = $1 AND name = $2")
        .bind(tenant.to_string())
        .bind(name)
        .execute(db.pool())
        .await?;
    if let Some(kind) = trap_kind {
        sqlx::query(
            "INSERT INTO bot_traps (tenant_id, bot_name, kind, count) VALUES ($1, $2, $3, 1) \
             ON CONFLICT (tenant_id, bot_name, kind) DO UPDATE SET count = bot_traps.count + 1",
        )
        .bind(tenant.to_string())
        .bind(name)
        .bind(kind)
        .execute(db.pool())
        .await?;
    }
    Ok(())
}

/// Records why the bot's last event failed.
///
/// # Errors
///
/// Returns [`StorageError`] when the update fails.
pub async fn record_failure(
    db: &Db,
    tenant: TenantId,
    name: &str,
    reason: &str,
) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE bots SET last_failure = $1, last_failure_at = $2 WHERE tenant_id = $3 AND name = $4",
    )
    .bind(reason)
    .bind(now_unix())
    .bind(tenant.to_string())
    .bind(name)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Disables a bot and records why the breaker tripped.
///
/// # Errors
///
/// Returns [`StorageError`] when the update fails.
pub async fn trip_breaker(
    db: &Db,
    tenant: TenantId,
    name: &str,
    reason: &str,
) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE bots SET enabled = 0, breaker_tripped_at = $1, breaker_reason = $2 \
         WHERE tenant_id = $3 AND name = $4",
    )
    .bind(now_unix())
    .bind(reason)
    .bind(tenant.to_string())
    .bind(name)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Returns a bot's counters, or `None` when it is gone.
///
/// # Errors
///
/// Returns [`StorageError`] when a query fails.
pub async fn status(
    db: &Db,
    tenant: TenantId,
    name: &str,
) -> Result<Option<BotStatus>, StorageError> {
    let Some(row) = sqlx::query(
        "SELECT invocations, breaker_tripped_at, breaker_reason, last_failure, last_failure_at \
         FROM bots \
         WHERE tenant_id = $1 AND name = $2",
    )
    .bind(tenant.to_string())
    .bind(name)
    .fetch_optional(db.pool())
    .await?
    else {
        return Ok(None);
    };
    let tripped_at: Option<i64> = row.try_get("breaker_tripped_at")?;
    let breaker = BreakerState {
        state: if tripped_at.is_some() {
            "open"
        } else {
            "closed"
        },
        tripped_at,
        reason: row.try_get("breaker_reason")?,
    };
    let traps = sqlx::query(
        "SELECT kind, count FROM bot_traps WHERE tenant_id = $1 AND bot_name = $2 ORDER BY kind",
    )
    .bind(tenant.to_string())
    .bind(name)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|row| Ok((row.try_get("kind")?, row.try_get("count")?)))
    .collect::<Result<_, sqlx::Error>>()?;
    let last_failure_at: Option<i64> = row.try_get("last_failure_at")?;
    let last_failure: Option<String> = row.try_get("last_failure")?;
    Ok(Some(BotStatus {
        invocations: row.try_get("invocations")?,
        traps,
        breaker,
        last_failure: last_failure_at
            .zip(last_failure)
            .map(|(at, reason)| LastFailure { at, reason }),
    }))
}
