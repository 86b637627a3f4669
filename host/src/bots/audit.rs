//! Audit events of bot invocations: host calls the policy denied, secrets
//! whose values reached a plugin, traps, and breaker trips.
//!
//! One invocation yields at most one event per denied capability (with a
//! count) and one per revealed secret name, so a plugin that loops over a
//! denied call cannot flood the audit trail.

use std::collections::BTreeMap;

use crate::audit::{Actor, AuditEvent, AuditLog, Outcome};
use crate::capabilities::Capability;
use crate::capabilities::http::Denial;
use crate::runtime::InvocationError;
use crate::storage::TenantId;

/// The invocation an event belongs to.
pub(super) struct Invocation<'a> {
    /// The bot's tenant.
    pub(super) tenant: TenantId,
    /// The bot's name.
    pub(super) bot: &'a str,
    /// The account the event ran for: a user id or `visitor:<uuid>`.
    pub(super) account: &'a str,
    /// The plugin's digest.
    pub(super) digest: &'a str,
}

impl Invocation<'_> {
    fn event(&self, action: &'static str, outcome: Outcome) -> AuditEvent {
        AuditEvent::new(action, outcome)
            .actor(Actor::Account(self.account.to_owned()))
            .tenant(self.tenant)
            .target(format!("bot:{}", self.bot))
            .detail("plugin_digest", self.digest)
    }

    /// Records the denials, reveals and trap of one finished invocation.
    pub(super) async fn record(
        &self,
        audit: &AuditLog,
        denials: &[Denial],
        revealed_secrets: &[String],
        error: Option<&InvocationError>,
    ) {
        let mut by_capability: BTreeMap<Capability, (&str, u64)> = BTreeMap::new();
        for denial in denials {
            let entry = by_capability
                .entry(denial.capability)
                .or_insert((denial.reason.as_str(), 0));
            entry.1 += 1;
        }
        for (capability, (reason, count)) in by_capability {
            let event = self
                .event("plugin.capability.denied", Outcome::Denied)
                .detail("capability", capability.name())
                .detail("reason", reason)
                .detail("count", count);
            audit.record(event).await;
        }
        for name in revealed_secrets {
            let event = self
                .event("secret.reveal", Outcome::Success)
                .detail("secret", name.as_str());
            audit.record(event).await;
        }
        if let Some(error) = error.filter(|error| error.is_trap()) {
            let event = self
                .event("plugin.trap", Outcome::Failure)
                .detail("kind", error.kind())
                .detail("error", error.to_string());
            audit.record(event).await;
        }
    }
}

/// Builds the event of a breaker that disabled a bot.
pub(super) fn breaker_tripped(tenant: TenantId, bot: &str, reason: &str) -> AuditEvent {
    AuditEvent::new("bot.breaker.trip", Outcome::Success)
        .actor(Actor::System)
        .tenant(tenant)
        .target(format!("bot:{bot}"))
        .detail("reason", reason)
}
