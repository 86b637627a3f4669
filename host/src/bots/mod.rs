//! Running bots: one event in, one invocation of the bot's plugin, one
//! response out.
//!
//! [`BotService::handle_event`] loads the bot, its plugin (compiled once
//! per digest), the plugin's grants from the database and the bot's limits
//! and configuration, then runs the event in a fresh instance. It counts
//! invocations and traps, and a [`Breaker`] disables a bot that traps too
//! often. Transports such as the WebSocket layer call it, and it does not
//! depend on them.

mod audit;
mod breaker;
pub mod grants;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest as _, Sha256};

use self::breaker::Breaker;
use self::grants::GrantRegistry;
use crate::audit::AuditLog;
use crate::capabilities::http::{Resolver, SystemResolver};
use crate::capabilities::{Capability, GrantSet};
use crate::crypto::Vault;
use crate::metrics::{InvocationOutcome, Metrics};
use crate::runtime::{
    CompiledPlugin, Event, EventContext, FailedInvocation, InvocationError, LoadError,
    PluginDigest, PluginRuntime, Response, Services,
};
use crate::storage::kv::DbKvStore;
use crate::storage::secrets::DbSecretStore;
use crate::storage::{Db, StorageError, TenantId, bots, plugins};

/// Failure of one bot event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BotError {
    /// No bot of that name in the tenant.
    #[error("bot not found")]
    NotFound,
    /// The bot is disabled, by an admin or by its breaker.
    #[error("bot is disabled")]
    Disabled,
    /// The plugin could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The plugin trapped, broke a limit or returned an error.
    #[error(transparent)]
    Invocation(#[from] InvocationError),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Runs bot events and keeps the state shared between them.
pub struct BotService {
    db: Db,
    runtime: Arc<PluginRuntime>,
    compiled: Mutex<HashMap<PluginDigest, Arc<CompiledPlugin>>>,
    grants: GrantRegistry,
    breaker: Breaker,
    kv: Arc<DbKvStore>,
    secrets: Arc<DbSecretStore>,
    resolver: Arc<dyn Resolver>,
    metrics: Arc<Metrics>,
    audit: AuditLog,
}

impl std::fmt::Debug for BotService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotService").finish_non_exhaustive()
    }
}

impl BotService {
    /// Creates a service over `db`, sealing storage with `vault`, running
    /// plugins in `runtime` and counting invocations in `metrics`.
    pub fn new(
        db: Db,
        vault: Arc<Vault>,
        runtime: Arc<PluginRuntime>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            kv: Arc::new(DbKvStore::new(db.clone(), Arc::clone(&vault))),
            secrets: Arc::new(DbSecretStore::new(db.clone(), vault)),
            db,
            runtime,
            compiled: Mutex::default(),
            grants: GrantRegistry::default(),
            breaker: Breaker::default(),
            resolver: Arc::new(SystemResolver),
            metrics,
            audit: AuditLog::disabled(),
        }
    }

    /// Records denials, revealed secrets, traps and breaker trips in
    /// `audit`.
    #[must_use]
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = audit;
        self
    }

    /// Returns the database key-value store that backs the `kv` capability.
    pub fn kv_store(&self) -> &Arc<DbKvStore> {
        &self.kv
    }

    /// Returns the runtime, which also validates uploads.
    pub fn runtime(&self) -> &Arc<PluginRuntime> {
        &self.runtime
    }

    /// Returns the registry through which grant changes reach running invocations.
    pub fn grants(&self) -> &GrantRegistry {
        &self.grants
    }

    /// Clears the traps counted towards a bot's breaker. Call it when an
    /// admin enables the bot.
    pub fn reset_breaker(&self, tenant: TenantId, bot: &str) {
        self.breaker.reset(tenant, bot);
    }

    /// Returns the id bot `bot` of `tenant` sees for account `user`.
    pub fn user_pseudonym(&self, tenant: TenantId, bot: &str, user: &str) -> String {
        pseudonym(tenant, bot, user)
    }

    /// Runs `event` of `user` in `conversation` with bot `bot` of `tenant`.
    /// `user` is the account id, and the plugin receives a pseudonym of it.
    ///
    /// # Errors
    ///
    /// [`BotError::NotFound`], [`BotError::Disabled`], a
    /// [`BotError::Load`] when the plugin cannot load, a
    /// [`BotError::Invocation`] when it traps, breaks a limit or returns
    /// an error (a denied host call usually shows up as the latter), or a
    /// [`BotError::Storage`].
    #[tracing::instrument(level = "debug", skip_all, fields(tenant.id = %tenant, bot.name = bot))]
    pub async fn handle_event(
        &self,
        tenant: TenantId,
        bot: &str,
        user: &str,
        conversation: &str,
        event: Event,
    ) -> Result<Response, BotError> {
        let record = bots::find(&self.db, tenant, bot)
            .await?
            .ok_or(BotError::NotFound)?;
        if !record.enabled {
            return Err(BotError::Disabled);
        }
        let digest = record.plugin_digest.as_str();
        let compiled = self.compiled(tenant, digest).await?;
        let db = &self.db;
        let live = self
            .grants
            .start(tenant, digest, async move {
                let plugin = plugins::find(db, tenant, digest).await?;
                plugin.map(|plugin| plugin.grants).ok_or(BotError::NotFound)
            })
            .await?;
        let prepared = self.prepare(&compiled, live.grants())?;
        let services = Services {
            grants: live,
            kv: self.kv.clone(),
            secrets: self.secrets.clone(),
            config: Arc::new(record.config.clone()),
            resolver: Arc::clone(&self.resolver),
        };
        let context = EventContext {
            tenant: tenant.to_string(),
            bot: bot.to_owned(),
            conversation: conversation.to_owned(),
            user: pseudonym(tenant, bot, user),
            locale: "en".to_owned(),
        };
        let result = self
            .runtime
            .invoke(&prepared, services, record.limits, context, event)
            .await;
        let invocation = audit::Invocation {
            tenant,
            bot,
            account: user,
            digest,
        };
        match &result {
            Ok(outcome) => {
                let (denials, revealed) = (&outcome.denials, &outcome.revealed_secrets);
                invocation
                    .record(&self.audit, denials, revealed, None)
                    .await;
            }
            Err(failed) => {
                let (denials, revealed) = (&failed.denials, &failed.revealed_secrets);
                let error = Some(&failed.error);
                invocation
                    .record(&self.audit, denials, revealed, error)
                    .await;
            }
        }
        match result {
            Ok(outcome) => {
                self.metrics
                    .invocation(InvocationOutcome::Ok, outcome.fuel_used);
                bots::record_invocation(&self.db, tenant, bot, None).await?;
                Ok(outcome.response)
            }
            Err(failed) => {
                self.record_failure(tenant, bot, &failed).await?;
                Err(failed.error.into())
            }
        }
    }

    /// Links the plugin. A requested capability that was revoked after the
    /// bot was enabled is still linked, but its live grant does not allow
    /// it. So the plugin gets `denied` from those host calls instead of the
    /// bot failing to load.
    fn prepare(
        &self,
        compiled: &CompiledPlugin,
        granted: &GrantSet,
    ) -> Result<crate::runtime::PreparedPlugin, BotError> {
        let missing: BTreeSet<Capability> = compiled
            .info()
            .requested
            .difference(&granted.capabilities())
            .copied()
            .collect();
        let mut linked = granted.clone();
        for capability in &missing {
            linked
                .add_flag(capability.name())
                .map_err(|error| LoadError::Link(error.to_string()))?;
        }
        Ok(self.runtime.prepare(compiled, &linked)?)
    }

    async fn compiled(
        &self,
        tenant: TenantId,
        digest: &str,
    ) -> Result<Arc<CompiledPlugin>, BotError> {
        let key = PluginDigest::parse(digest).ok_or(StorageError::CorruptRow {
            table: "bots",
            column: "plugin_digest",
        })?;
        if let Some(found) = lock(&self.compiled).get(&key) {
            return Ok(Arc::clone(found));
        }
        let bytes = plugins::component(&self.db, tenant, &key)
            .await?
            .ok_or(BotError::NotFound)?;
        let runtime = Arc::clone(&self.runtime);
        let compiled = tokio::task::spawn_blocking(move || runtime.compile(&bytes))
            .await
            .map_err(|error| LoadError::Link(format!("compile task failed: {error}")))??;
        lock(&self.compiled).insert(key, Arc::clone(&compiled));
        Ok(compiled)
    }

    async fn record_failure(
        &self,
        tenant: TenantId,
        bot: &str,
        failed: &FailedInvocation,
    ) -> Result<(), StorageError> {
        let error = &failed.error;
        bots::record_failure(&self.db, tenant, bot, &failure_reason(failed)).await?;
        if !error.is_trap() {
            self.metrics
                .invocation(InvocationOutcome::Error, failed.fuel_used);
            tracing::info!(error = %error, "bot event failed");
            bots::record_invocation(&self.db, tenant, bot, None).await?;
            return Ok(());
        }
        self.metrics
            .invocation(InvocationOutcome::Trap, failed.fuel_used);
        self.metrics.trap(error.kind());
        tracing::info!(error = %error, trap.kind = error.kind(), "bot trapped");
        bots::record_invocation(&self.db, tenant, bot, Some(error.kind())).await?;
        if let Some(reason) = self.breaker.record_trap(tenant, bot, error) {
            self.metrics.breaker_tripped();
            tracing::warn!(reason = %reason, "bot breaker tripped; the bot is disabled");
            bots::trip_breaker(&self.db, tenant, bot, &reason).await?;
            let event = audit::breaker_tripped(tenant, bot, &reason.to_string());
            self.audit.record(event).await;
        }
        Ok(())
    }
}

/// Longest failure reason kept for a bot's admin; a plugin chooses part of
/// the text, so it is cut rather than stored whole.
const MAX_FAILURE_REASON_CHARS: usize = 1024;

/// Builds the admin's reason for a failed event: the error, then the host
/// calls the policy denied, with control characters escaped.
fn failure_reason(failed: &FailedInvocation) -> String {
    let mut reason = failed.error.to_string();
    for denial in &failed.denials {
        reason.push_str(&format!(
            "; denied {}: {}",
            denial.capability, denial.reason
        ));
    }
    reason
        .chars()
        .flat_map(char::escape_default)
        .take(MAX_FAILURE_REASON_CHARS)
        .collect()
}

/// A stable id of `user` for one bot that does not reveal the account.
fn pseudonym(tenant: TenantId, bot: &str, user: &str) -> String {
    let mut hash = Sha256::new();
    for part in ["botserver user", &tenant.to_string(), bot, user] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(&hash.finalize()[..16])
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
