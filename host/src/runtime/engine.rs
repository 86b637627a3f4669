//! The shared wasmtime engine: its hardened configuration and its epoch
//! ticker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, Strategy,
    WasmFeatures,
};

use super::limits::{MAX_MEMORIES, MAX_MEMORY_BYTES, MAX_TABLE_ELEMENTS, MAX_TABLES};

/// How often the ticker advances the engine's epoch; deadlines are counted
/// in these ticks, so this is their resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Largest WebAssembly call stack per instance. Deep recursion traps with a
/// stack overflow here instead of exhausting the host thread.
pub const MAX_WASM_STACK: usize = 512 * 1024;

/// Default number of instances that can run at once. Each one uses a slot of
/// the pooling allocator until its event ends.
pub const DEFAULT_CONCURRENT_INSTANCES: u32 = 100;

/// Builds the engine configuration every plugin runs under.
///
/// It uses Cranelift only, because the Winch baseline compiler has had
/// sandbox-escape bugs. Proposals that plugins do not need are turned off,
/// so a wasmtime upgrade cannot widen the attack surface silently. Guard
/// pages and bounds checks stay at their defaults, fuel and epoch
/// interruption are on, and the pooling allocator is sized for
/// `concurrent_instances`.
pub fn engine_config(concurrent_instances: u32) -> Config {
    let mut config = Config::new();
    config
        .strategy(Strategy::Cranelift)
        .cranelift_opt_level(OptLevel::Speed)
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .wasm_component_model(true)
        .concurrency_support(false)
        .wasm_memory64(false)
        .wasm_multi_memory(false)
        .wasm_features(
            WasmFeatures::THREADS
                | WasmFeatures::SHARED_EVERYTHING_THREADS
                | WasmFeatures::GC
                | WasmFeatures::FUNCTION_REFERENCES
                | WasmFeatures::STACK_SWITCHING
                | WasmFeatures::EXCEPTIONS
                | WasmFeatures::LEGACY_EXCEPTIONS
                | WasmFeatures::CM_ASYNC
                | WasmFeatures::CM_THREADING,
            false,
        )
        .wasm_custom_page_sizes(false)
        .wasm_wide_arithmetic(false)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(
            concurrent_instances,
        )));
    config
}

fn pooling_config(concurrent_instances: u32) -> PoolingAllocationConfig {
    let instances = concurrent_instances.max(1);
    let per_instance =
        |count: usize| instances.saturating_mul(u32::try_from(count).unwrap_or(u32::MAX));
    let mut pooling = PoolingAllocationConfig::new();
    pooling
        .total_component_instances(instances)
        .total_core_instances(per_instance(super::limits::MAX_INSTANCES))
        .total_memories(per_instance(MAX_MEMORIES))
        .total_tables(per_instance(MAX_TABLES))
        .total_stacks(instances)
        .max_memory_size(usize::try_from(MAX_MEMORY_BYTES).unwrap_or(usize::MAX))
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_memories_per_module(1)
        .max_core_instances_per_component(
            u32::try_from(super::limits::MAX_INSTANCES).unwrap_or(u32::MAX),
        )
        .max_memories_per_component(u32::try_from(MAX_MEMORIES).unwrap_or(u32::MAX))
        .max_tables_per_component(u32::try_from(MAX_TABLES).unwrap_or(u32::MAX));
    pooling
}

/// A thread that advances an engine's epoch every [`EPOCH_TICK`] until it
/// is dropped.
#[derive(Debug)]
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts the ticker thread for `engine`.
    ///
    /// # Errors
    ///
    /// Returns the operating system's error when the thread cannot start.
    pub fn start(engine: &Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let thread = std::thread::Builder::new()
            .name("botserver-epoch".to_owned())
            .spawn({
                let stop = Arc::clone(&stop);
                move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(EPOCH_TICK);
                        match weak.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => break,
                        }
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Converts a deadline to epoch ticks, rounding up, plus one tick because
/// the current tick may be about to end.
pub fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos().max(1);
    let ticks = deadline.as_nanos().div_ceil(tick);
    u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_config_pins_the_feature_surface() -> wasmtime::Result<()> {
        let engine = Engine::new(&engine_config(2))?;
        let features = engine.get_wasm_features();
        assert_eq!(engine.get_strategy(), Some(Strategy::Cranelift));
        assert!(engine.get_consume_fuel());
        assert!(engine.get_epoch_interruption());
        assert_eq!(engine.get_max_wasm_stack(), MAX_WASM_STACK);
        for (name, enabled) in [
            ("memory64", features.memory64()),
            ("threads", features.threads()),
            ("multi-memory", features.multi_memory()),
            ("gc", features.gc()),
            ("stack switching", features.stack_switching()),
            ("exceptions", features.exceptions()),
        ] {
            assert!(!enabled, "wasm feature `{name}` must stay off");
        }
        Ok(())
    }

    #[test]
    fn deadline_rounds_up_to_ticks() {
        assert_eq!(deadline_ticks(Duration::from_millis(1)), 2);
        assert_eq!(deadline_ticks(Duration::from_millis(10)), 2);
        assert_eq!(deadline_ticks(Duration::from_millis(11)), 3);
    }
}
