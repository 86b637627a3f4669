//! Per-invocation limits and the store limiter that enforces the memory,
//! table and instance caps.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default fuel per event. A tight loop burns this in tens of milliseconds,
/// while a plugin that handles a message and makes a few host calls uses a
/// few percent of it.
pub const DEFAULT_FUEL: u64 = 20_000_000;

/// Default cap on all linear memories of one instance, summed. Stops a
/// plugin from taking host memory that other bots need.
pub const DEFAULT_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

/// Default wall-clock deadline for one event, host calls included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(2);

/// Highest memory cap a bot may be given; the pooling allocator reserves
/// slots of this size.
pub const MAX_MEMORY_BYTES: u64 = 256 * 1024 * 1024;

/// Highest fuel a bot may be given.
pub const MAX_FUEL: u64 = 10_000_000_000_000;

/// Maximum deadline a bot may be given. Stops one event from holding an
/// instance slot for longer than a chat user would wait.
pub const MAX_DEADLINE: Duration = Duration::from_secs(60);

/// Cap on elements across all tables of one instance. Rust plugins use a
/// few hundred; the cap stops `table.grow` from being a memory sink.
pub const MAX_TABLE_ELEMENTS: usize = 20_000;

/// Cap on core instances, tables and memories created by one component
/// instantiation. A wasm32-wasip2 component uses a handful of each.
pub const MAX_INSTANCES: usize = 32;
/// Cap on tables per store; see [`MAX_INSTANCES`].
pub const MAX_TABLES: usize = 32;
/// Cap on memories per store; see [`MAX_INSTANCES`].
pub const MAX_MEMORIES: usize = 4;

/// Cap on live host resources (streams, requests, secrets) per event. Stops
/// a plugin from filling host memory with handles it never drops.
pub const MAX_HANDLES: usize = 1_000;

/// Default cap on the bytes crossing one host call, arguments plus results,
/// and on the handler's whole response. Stops a plugin from copying large
/// buffers into the host.
pub const DEFAULT_HOST_CALL_BYTES: u64 = 1024 * 1024;

/// Fuel charged for every call from a plugin into the host, on top of the
/// instructions the plugin runs.
pub const HOST_CALL_FUEL: u64 = 1_000;

/// Fuel charged per byte a host call copies in or out of the plugin.
pub const HOST_CALL_FUEL_PER_BYTE: u64 = 1;

/// Limits for one event. Every field has a restrictive default and an upper
/// bound that [`InvocationLimits::validate`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InvocationLimits {
    /// Fuel units; roughly one per WebAssembly instruction, plus host calls.
    pub fuel: u64,
    /// Cap on all linear memories, summed, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock deadline in milliseconds.
    pub deadline_ms: u64,
    /// Cap on bytes crossing one host call and on the response.
    pub host_call_bytes: u64,
}

impl Default for InvocationLimits {
    fn default() -> Self {
        Self {
            fuel: DEFAULT_FUEL,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            deadline_ms: duration_ms(DEFAULT_DEADLINE),
            host_call_bytes: DEFAULT_HOST_CALL_BYTES,
        }
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A limit value outside its allowed range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid `{name}`: expected {min} to {max}, got {value}")]
pub struct InvalidLimit {
    /// Field name.
    pub name: &'static str,
    /// Smallest allowed value.
    pub min: u64,
    /// Largest allowed value.
    pub max: u64,
    /// The value given.
    pub value: u64,
}

impl InvocationLimits {
    /// Returns the deadline as a [`Duration`].
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    /// Checks every field against its bounds.
    ///
    /// # Errors
    ///
    /// Returns the first field outside its range.
    pub fn validate(&self) -> Result<(), InvalidLimit> {
        let checks = [
            ("fuel", self.fuel, 1, MAX_FUEL),
            ("memory_bytes", self.memory_bytes, 1 << 20, MAX_MEMORY_BYTES),
            (
                "deadline_ms",
                self.deadline_ms,
                1,
                duration_ms(MAX_DEADLINE),
            ),
            (
                "host_call_bytes",
                self.host_call_bytes,
                1024,
                MAX_MEMORY_BYTES,
            ),
        ];
        for (name, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                return Err(InvalidLimit {
                    name,
                    min,
                    max,
                    value,
                });
            }
        }
        Ok(())
    }
}

/// Tracks one store's memories, tables and instances against the caps.
#[derive(Debug)]
pub(crate) struct StoreLimiter {
    memory_cap: usize,
    memory_in_use: usize,
    /// Set when a memory could not grow because of the cap, so that the trap
    /// that usually follows is reported as the memory limit.
    pub(crate) memory_denied: bool,
    table_elements: usize,
    pub(crate) table_denied: bool,
}

impl StoreLimiter {
    pub(crate) fn new(memory_cap: u64) -> Self {
        Self {
            memory_cap: usize::try_from(memory_cap).unwrap_or(usize::MAX),
            memory_in_use: 0,
            memory_denied: false,
            table_elements: 0,
            table_denied: false,
        }
    }
}

impl wasmtime::ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let others = self.memory_in_use.saturating_sub(current);
        let total = others.saturating_add(desired);
        if total > self.memory_cap {
            self.memory_denied = true;
            return Ok(false);
        }
        self.memory_in_use = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let others = self.table_elements.saturating_sub(current);
        let total = others.saturating_add(desired);
        if total > MAX_TABLE_ELEMENTS {
            self.table_denied = true;
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn memory_cap_is_summed_over_memories() -> wasmtime::Result<()> {
        let mut limiter = StoreLimiter::new(10 * 65536);
        assert!(limiter.memory_growing(0, 6 * 65536, None)?);
        // A second memory starts at zero; together they may not pass the cap.
        let mut second = StoreLimiter {
            memory_in_use: 6 * 65536,
            ..StoreLimiter::new(10 * 65536)
        };
        assert!(!second.memory_growing(0, 5 * 65536, None)?);
        assert!(second.memory_denied);
        assert!(limiter.memory_growing(6 * 65536, 10 * 65536, None)?);
        assert!(!limiter.memory_growing(10 * 65536, 11 * 65536, None)?);
        Ok(())
    }

    #[test]
    fn limits_outside_bounds_are_invalid() {
        let zero_fuel = InvocationLimits {
            fuel: 0,
            ..Default::default()
        };
        assert_eq!(zero_fuel.validate().map_err(|e| e.name), Err("fuel"));
        let huge_memory = InvocationLimits {
            memory_bytes: u64::MAX,
            ..Default::default()
        };
        assert_eq!(
            huge_memory.validate().map_err(|e| e.name),
            Err("memory_bytes")
        );
        assert_eq!(InvocationLimits::default().validate(), Ok(()));
    }
}
