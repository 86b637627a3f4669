//! The grant sets of running invocations, so that a revocation reaches
//! them at their next host call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::capabilities::{Capability, GrantSet, LiveGrants};
use crate::storage::TenantId;

type PluginKey = (TenantId, String);

/// Live grant sets by tenant and plugin digest.
///
/// Invocations read their grants from the database while holding the gate
/// for reading. A change takes it for writing while it writes the database
/// and revokes the live sets. So every invocation either started with the
/// new grants or is registered here when the revocation runs.
#[derive(Debug, Default)]
pub struct GrantRegistry {
    gate: tokio::sync::RwLock<()>,
    live: Mutex<HashMap<PluginKey, Vec<Weak<LiveGrants>>>>,
}

impl GrantRegistry {
    /// Loads grants with `load` and registers them for revocation.
    ///
    /// # Errors
    ///
    /// Returns the error of `load`.
    pub async fn start<E>(
        &self,
        tenant: TenantId,
        digest: &str,
        load: impl Future<Output = Result<GrantSet, E>>,
    ) -> Result<Arc<LiveGrants>, E> {
        let _reading = self.gate.read().await;
        let grants = LiveGrants::new(load.await?);
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let entries = live.entry((tenant, digest.to_owned())).or_default();
        entries.retain(|entry| entry.strong_count() > 0);
        entries.push(Arc::downgrade(&grants));
        Ok(grants)
    }

    /// Runs `store`, which writes `next` to the database, then revokes
    /// every capability of `previous` that `next` drops or changes from
    /// the invocations still running.
    ///
    /// # Errors
    ///
    /// Returns the error of `store`; nothing is revoked then.
    pub async fn change<T, E>(
        &self,
        tenant: TenantId,
        digest: &str,
        previous: &GrantSet,
        next: &GrantSet,
        store: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let _writing = self.gate.write().await;
        let stored = store.await?;
        let withdrawn: Vec<Capability> = Capability::ALL
            .into_iter()
            .filter(|capability| previous.has(*capability) && changed(previous, next, *capability))
            .collect();
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entries) = live.get_mut(&(tenant, digest.to_owned())) {
            entries.retain(|entry| entry.strong_count() > 0);
            for grants in entries.iter().filter_map(Weak::upgrade) {
                for capability in &withdrawn {
                    grants.revoke(*capability);
                }
            }
        }
        Ok(stored)
    }
}

/// Returns whether `capability` is missing from `next` or has other parameters.
fn changed(previous: &GrantSet, next: &GrantSet, capability: Capability) -> bool {
    match capability {
        Capability::Kv => previous.kv != next.kv,
        Capability::Http => previous.http != next.http,
        Capability::Secrets => previous.secrets != next.secrets,
        Capability::Config => previous.config != next.config,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revocation_reaches_registered_grants() -> Result<(), GrantErrorOrNever> {
        let registry = GrantRegistry::default();
        let tenant = TenantId(uuid::Uuid::new_v4());
        let mut granted = GrantSet::default();
        granted.add_flag("kv").map_err(|_| GrantErrorOrNever)?;
        granted.add_flag("config").map_err(|_| GrantErrorOrNever)?;
        let running = registry
            .start(tenant, "d1", async { Ok(granted.clone()) })
            .await?;
        let other = registry
            .start(tenant, "d2", async { Ok(granted.clone()) })
            .await?;
        let mut next = granted.clone();
        next.kv = None;
        registry
            .change(tenant, "d1", &granted, &next, async { Ok(()) })
            .await?;
        assert!(!running.allows(Capability::Kv));
        assert!(running.allows(Capability::Config));
        assert!(other.allows(Capability::Kv));
        Ok(())
    }

    #[derive(Debug)]
    struct GrantErrorOrNever;
}
