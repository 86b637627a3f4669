//! The circuit breaker: a bot that traps too often in a short time is
//! disabled until an admin enables it again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::runtime::InvocationError;
use crate::storage::TenantId;

/// Traps within [`BREAKER_WINDOW`] that trip the breaker. Stops a hostile
/// or broken plugin from burning a core on every message it receives.
pub const BREAKER_TRAPS: usize = 5;

/// The window in which [`BREAKER_TRAPS`] traps trip the breaker.
pub const BREAKER_WINDOW: Duration = Duration::from_secs(60);

/// Recent trap times per bot.
///
/// NOTE: the window lives in this process's memory, so each server of a
/// cluster counts on its own and a restart clears it. The trip itself is
/// stored in the bot's row and survives both.
#[derive(Debug, Default)]
pub(super) struct Breaker {
    recent: Mutex<HashMap<(TenantId, String), VecDeque<Instant>>>,
}

impl Breaker {
    /// Counts one trap; returns why the breaker trips when this trap is
    /// the last one allowed.
    pub(super) fn record_trap(
        &self,
        tenant: TenantId,
        bot: &str,
        error: &InvocationError,
    ) -> Option<String> {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let times = recent.entry((tenant, bot.to_owned())).or_default();
        times.retain(|at| now.duration_since(*at) < BREAKER_WINDOW);
        times.push_back(now);
        if times.len() < BREAKER_TRAPS {
            return None;
        }
        times.clear();
        Some(format!(
            "{BREAKER_TRAPS} traps within {} s, the last: {error}",
            BREAKER_WINDOW.as_secs()
        ))
    }

    /// Clears a bot's recent traps.
    pub(super) fn reset(&self, tenant: TenantId, bot: &str) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.remove(&(tenant, bot.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_at_the_limit_and_not_before() {
        let breaker = Breaker::default();
        let tenant = TenantId(uuid::Uuid::new_v4());
        let trap = InvocationError::StackOverflow;
        for _ in 1..BREAKER_TRAPS {
            assert!(breaker.record_trap(tenant, "bot", &trap).is_none());
        }
        assert!(breaker.record_trap(tenant, "other", &trap).is_none());
        let reason = breaker.record_trap(tenant, "bot", &trap);
        assert!(reason.is_some_and(|reason| reason.contains("stack overflow")));
    }
}
