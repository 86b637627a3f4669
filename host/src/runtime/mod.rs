//! The plugin runtime: compiles components, links the granted capabilities
//! and runs each event in a fresh, limited instance.
//!
//! One [`PluginRuntime`] owns the engine and its epoch ticker. Compiled
//! components are cached by SHA-256 digest and pre-instantiated once per
//! granted capability set. Every event then gets a new `Store` from the
//! pooling allocator, so nothing in linear memory passes from one user or
//! conversation to the next. Storage, secrets and name resolution are
//! passed in as [`Services`]: the CLI uses local backends, the server its
//! database.

pub mod bindings;
pub mod engine;
mod error;
pub mod limits;
pub(crate) mod state;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{Engine, Store, Trap};

use self::bindings::PluginPre;
use self::engine::{EpochTicker, deadline_ticks, engine_config};
use self::limits::InvocationLimits;
use self::state::{HostState, LimitTrap, fuel_hook};
use crate::capabilities::http::Denial;
use crate::capabilities::{self, Capability, GrantSet, ImportKind, classify_import};

pub use self::bindings::botserver::bot::types::{
    Attribute, Context as EventContext, Event, HandlerError, Reply, Response, Suggestion,
    UserMessage,
};
pub use self::error::{FailedInvocation, InvocationError, LoadError};

/// Fuel a plugin burns between yields to the async runtime. Without it a
/// busy plugin holds its worker thread until its deadline, and a few such
/// events stall every other tenant's requests; this many units take well
/// under a millisecond.
const FUEL_YIELD_INTERVAL: u64 = 100_000;
pub use self::state::{Identity, Services};

/// Name of the interface every plugin exports, without its version.
const HANDLER_EXPORT: &str = "botserver:bot/handler@";

/// Time allowed past an event's deadline for host calls to notice it. The
/// epoch deadline only interrupts WebAssembly code, so a plugin waiting in a
/// host call is stopped by this outer timeout instead.
const HOST_DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// SHA-256 digest of a component's bytes, in lower-case hex; a plugin
/// version's identity.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct PluginDigest(String);

impl PluginDigest {
    /// Computes the digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    /// Parses a digest written as 64 lower-case hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        let valid =
            text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| Self(text.to_owned()))
    }

    /// Returns the digest as lower-case hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PluginDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A component's identity and the capabilities it requests.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PluginInfo {
    /// SHA-256 of the component bytes.
    pub digest: PluginDigest,
    /// Size of the component in bytes.
    pub size: usize,
    /// Version of the `botserver:bot` contract the component exports.
    pub wit_version: String,
    /// Capabilities the component's imports need.
    pub requested: BTreeSet<Capability>,
    /// Every import, by interface name.
    pub imports: Vec<String>,
}

/// A compiled component and its description.
pub struct CompiledPlugin {
    info: PluginInfo,
    component: Component,
}

impl CompiledPlugin {
    /// Returns the component's description.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }
}

/// A component linked against one grant set, ready to instantiate.
#[derive(Clone)]
pub struct PreparedPlugin {
    info: Arc<PluginInfo>,
    pre: PluginPre<HostState>,
}

impl PreparedPlugin {
    /// Returns the component's description.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }
}

/// The result of one event.
#[derive(Debug)]
pub struct Outcome {
    /// The plugin's response.
    pub response: Response,
    /// Host calls the policy denied; the plugin saw an error for each.
    pub denials: Vec<Denial>,
    /// Names of the secrets whose values reached the plugin.
    pub revealed_secrets: Vec<String>,
    /// Fuel spent, host calls included.
    pub fuel_used: u64,
}

/// Settings of the runtime as a whole.
#[derive(Clone, Copy, Debug)]
pub struct RuntimeConfig {
    /// Instances that may run at once; the pooling allocator reserves a slot
    /// for each.
    pub concurrent_instances: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            concurrent_instances: engine::DEFAULT_CONCURRENT_INSTANCES,
        }
    }
}

type PreparedKey = (PluginDigest, BTreeSet<Capability>);

/// The engine, its caches and its ticker.
pub struct PluginRuntime {
    engine: Engine,
    _ticker: EpochTicker,
    compiled: Mutex<HashMap<PluginDigest, Arc<CompiledPlugin>>>,
    prepared: Mutex<HashMap<PreparedKey, PluginPre<HostState>>>,
}

impl PluginRuntime {
    /// Creates the engine and starts its epoch ticker.
    ///
    /// # Errors
    ///
    /// Returns [`LoadError::Link`] when the engine cannot be created with the
    /// pooling allocator (for example when virtual memory is restricted) or
    /// the ticker thread cannot start.
    pub fn new(config: RuntimeConfig) -> Result<Self, LoadError> {
        let engine = Engine::new(&engine_config(config.concurrent_instances))
            .map_err(|error| LoadError::Link(format!("failed to create engine: {error}")))?;
        let ticker = EpochTicker::start(&engine)
            .map_err(|error| LoadError::Link(format!("failed to start epoch ticker: {error}")))?;
        Ok(Self {
            engine,
            _ticker: ticker,
            compiled: Mutex::default(),
            prepared: Mutex::default(),
        })
    }

    /// Returns the shared engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Validates and compiles a component, or returns the cached one with
    /// the same digest. Compiling takes CPU time: call it off the async
    /// runtime's worker threads.
    ///
    /// # Errors
    ///
    /// [`LoadError::CoreModule`], [`LoadError::Invalid`],
    /// [`LoadError::UnknownImports`] or [`LoadError::MissingHandler`].
    pub fn compile(&self, bytes: &[u8]) -> Result<Arc<CompiledPlugin>, LoadError> {
        let digest = PluginDigest::of(bytes);
        if let Some(found) = lock(&self.compiled).get(&digest) {
            return Ok(Arc::clone(found));
        }
        if bytes.starts_with(b"\0asm\x01\0\0\0") {
            return Err(LoadError::CoreModule);
        }
        // Binary only: the text format would echo the file's first line in
        // parse errors, whatever the file holds.
        let component = Component::from_binary(&self.engine, bytes)
            .map_err(|error| LoadError::Invalid(describe(&error)))?;
        let info = describe_component(&self.engine, &component, digest.clone(), bytes.len())?;
        let compiled = Arc::new(CompiledPlugin { info, component });
        lock(&self.compiled).insert(digest, Arc::clone(&compiled));
        Ok(compiled)
    }

    /// Links `plugin` with the capabilities in `grants` and pre-instantiates
    /// it. Only granted capabilities are linked.
    ///
    /// # Errors
    ///
    /// [`LoadError::GrantMissing`] naming every requested capability that is
    /// not granted, or [`LoadError::Link`].
    pub fn prepare(
        &self,
        plugin: &CompiledPlugin,
        grants: &GrantSet,
    ) -> Result<PreparedPlugin, LoadError> {
        let granted = grants.capabilities();
        let missing: Vec<Capability> = plugin
            .info
            .requested
            .difference(&granted)
            .copied()
            .collect();
        if !missing.is_empty() {
            return Err(LoadError::GrantMissing(missing));
        }
        let key = (plugin.info.digest.clone(), granted.clone());
        if let Some(pre) = lock(&self.prepared).get(&key) {
            return Ok(PreparedPlugin {
                info: Arc::new(plugin.info.clone()),
                pre: pre.clone(),
            });
        }
        let linker =
            build_linker(&self.engine, &granted).map_err(|e| LoadError::Link(describe(&e)))?;
        let instance_pre = linker
            .instantiate_pre(&plugin.component)
            .map_err(|e| LoadError::Link(describe(&e)))?;
        let pre = PluginPre::new(instance_pre).map_err(|e| LoadError::Link(describe(&e)))?;
        lock(&self.prepared).insert(key, pre.clone());
        Ok(PreparedPlugin {
            info: Arc::new(plugin.info.clone()),
            pre,
        })
    }

    /// Runs one event in a fresh instance under `limits`.
    ///
    /// # Errors
    ///
    /// A [`FailedInvocation`] whose [`InvocationError`] names the limit that
    /// stopped the plugin, the trap, or the plugin's own error.
    pub async fn invoke(
        &self,
        plugin: &PreparedPlugin,
        services: Services,
        limits: InvocationLimits,
        context: EventContext,
        event: Event,
    ) -> Result<Outcome, FailedInvocation> {
        let identity = Identity {
            tenant: context.tenant.clone(),
            bot: context.bot.clone(),
            user: context.user.clone(),
            conversation: context.conversation.clone(),
        };
        let state = HostState::new(
            services,
            identity,
            plugin.info.digest.as_str(),
            limits.memory_bytes,
            limits.host_call_bytes,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.call_hook(fuel_hook);
        let started = store
            .set_fuel(limits.fuel)
            .and_then(|()| store.fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL)));
        store.set_epoch_deadline(deadline_ticks(limits.deadline()));
        store.epoch_deadline_trap();

        let outer_deadline = limits.deadline() + HOST_DEADLINE_GRACE;
        let result = match started {
            Ok(()) => {
                let run = run_handler(&mut store, &plugin.pre, &context, &event);
                match tokio::time::timeout(outer_deadline, run).await {
                    Ok(result) => result.map_err(|error| classify(&error, &store, &limits)),
                    Err(_) => Err(InvocationError::DeadlineExceeded {
                        limit: limits.deadline(),
                    }),
                }
            }
            Err(error) => Err(InvocationError::Host(describe(&error))),
        };
        finish(store, &limits, result)
    }
}

/// Instantiates the plugin and calls its handler.
async fn run_handler(
    store: &mut Store<HostState>,
    pre: &PluginPre<HostState>,
    context: &EventContext,
    event: &Event,
) -> wasmtime::Result<Result<Response, HandlerError>> {
    let plugin = pre.instantiate_async(&mut *store).await?;
    plugin
        .botserver_bot_handler()
        .call_handle(&mut *store, context, event)
        .await
}

/// Turns the handler's result into an outcome, checks the response size and
/// logs the plugin's output.
fn finish(
    mut store: Store<HostState>,
    limits: &InvocationLimits,
    result: Result<Result<Response, HandlerError>, InvocationError>,
) -> Result<Outcome, FailedInvocation> {
    let remaining = store.get_fuel().unwrap_or(0);
    let state = store.data_mut();
    let fuel_used = limits
        .fuel
        .saturating_sub(remaining)
        .saturating_add(state.fuel_debt)
        .min(limits.fuel);
    let output = state.output.clone();
    state.log.finish(&output);
    let denials = state.denials.lock().map(|d| d.clone()).unwrap_or_default();
    let revealed_secrets: Vec<String> = std::mem::take(&mut state.revealed_secrets)
        .into_iter()
        .collect();

    let error = match result {
        Ok(Ok(response)) => {
            let actual = response_bytes(&response);
            if actual <= limits.host_call_bytes {
                return Ok(Outcome {
                    response,
                    denials,
                    revealed_secrets,
                    fuel_used,
                });
            }
            InvocationError::HostCallBytes {
                limit: limits.host_call_bytes,
                actual,
            }
        }
        Ok(Err(handler_error)) => {
            InvocationError::Handler(state.log.clean(&describe_handler_error(&handler_error)))
        }
        Err(error) => error,
    };
    Err(FailedInvocation {
        error,
        denials,
        revealed_secrets,
        fuel_used,
    })
}

fn response_bytes(response: &Response) -> u64 {
    let replies: usize = response
        .replies
        .iter()
        .map(|reply| {
            let suggestions: usize = reply
                .suggestions
                .iter()
                .map(|s| s.text.len() + s.context.as_ref().map_or(0, String::len))
                .sum();
            reply.text.len() + suggestions
        })
        .sum();
    (replies + response.state.as_ref().map_or(0, Vec::len)) as u64
}

fn describe_handler_error(error: &HandlerError) -> String {
    let (kind, text) = match error {
        HandlerError::Unsupported(text) => ("unsupported", text),
        HandlerError::Unavailable(text) => ("unavailable", text),
        HandlerError::Failed(text) => ("failed", text),
    };
    let text: String = text.chars().take(500).collect();
    format!("{kind}: {text}")
}

/// Names the limit behind a trap.
fn classify(
    error: &wasmtime::Error,
    store: &Store<HostState>,
    limits: &InvocationLimits,
) -> InvocationError {
    let state = store.data();
    if state.limiter.memory_denied {
        return InvocationError::MemoryLimit {
            limit: limits.memory_bytes,
        };
    }
    if let Some(limit) = error.downcast_ref::<LimitTrap>() {
        return match limit {
            LimitTrap::HostCallBytes { limit, actual } => InvocationError::HostCallBytes {
                limit: *limit,
                actual: *actual,
            },
            LimitTrap::FuelExhausted => InvocationError::FuelExhausted { limit: limits.fuel },
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => InvocationError::FuelExhausted { limit: limits.fuel },
        Some(Trap::Interrupt) => InvocationError::DeadlineExceeded {
            limit: limits.deadline(),
        },
        Some(Trap::StackOverflow) => InvocationError::StackOverflow,
        Some(Trap::TableOutOfBounds) if state.limiter.table_denied => {
            InvocationError::ResourceLimit("table elements".to_owned())
        }
        Some(trap) => InvocationError::Trap(trap.to_string()),
        None if is_resource_table_full(error) => {
            InvocationError::ResourceLimit("host handles".to_owned())
        }
        None => InvocationError::Trap(describe(error)),
    }
}

fn is_resource_table_full(error: &wasmtime::Error) -> bool {
    matches!(
        error.downcast_ref::<wasmtime::component::ResourceTableError>(),
        Some(wasmtime::component::ResourceTableError::Full)
    )
}

/// Formats an error and its causes on one line. Only the first line of each
/// is kept, which drops the wasm backtraces that traps carry.
fn describe(error: &wasmtime::Error) -> String {
    error
        .chain()
        .map(|cause| {
            cause
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Reads a component's imports and exports into a [`PluginInfo`].
fn describe_component(
    engine: &Engine,
    component: &Component,
    digest: PluginDigest,
    size: usize,
) -> Result<PluginInfo, LoadError> {
    let ty = component.component_type();
    let mut imports = Vec::new();
    let mut unknown = Vec::new();
    let mut requested = BTreeSet::new();
    for (name, item) in ty.imports(engine) {
        let kind = match item.ty {
            ComponentItem::ComponentInstance(_) => classify_import(name),
            _ => ImportKind::Unknown,
        };
        match kind {
            ImportKind::Capability(capability) => {
                requested.insert(capability);
            }
            ImportKind::Always => {}
            ImportKind::Unknown => unknown.push(name.to_owned()),
        }
        imports.push(name.to_owned());
    }
    if !unknown.is_empty() {
        return Err(LoadError::UnknownImports(unknown));
    }
    let wit_version = ty
        .exports(engine)
        .find_map(|(name, _)| name.strip_prefix(HANDLER_EXPORT).map(str::to_owned))
        .filter(|version| version.starts_with("0.1."))
        .ok_or(LoadError::MissingHandler)?;
    Ok(PluginInfo {
        digest,
        size,
        wit_version,
        requested,
        imports,
    })
}

/// Builds a linker with plain WASI, logging and the given capabilities.
fn build_linker(
    engine: &Engine,
    granted: &BTreeSet<Capability>,
) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    linker.instance("botserver:bot/types@0.1.0")?;
    capabilities::logging::add_to_linker(&mut linker)?;
    for capability in granted {
        match capability {
            Capability::Kv => capabilities::kv::add_to_linker(&mut linker)?,
            Capability::Http => wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?,
            Capability::Secrets => capabilities::secrets::add_to_linker(&mut linker)?,
            Capability::Config => capabilities::config::add_to_linker(&mut linker)?,
        }
    }
    Ok(linker)
}

/// Locks a cache; a poisoned lock still holds a consistent map, because
/// every critical section is a single insert or lookup.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::capabilities::LiveGrants;
    use crate::capabilities::http::SystemResolver;
    use crate::capabilities::kv::FileKvStore;
    use crate::capabilities::secrets::MemorySecretStore;

    /// Calls the WASI clock `n` times and does nothing else.
    const CLOCK_CALLER: &str = r#"
    (component
      (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
        (export "now" (func (result u64)))))
      (core func $now (canon lower (func $clock "now")))
      (core module $m
        (import "clock" "now" (func $now (result i64)))
        (func (export "run") (param i32) (result i32)
          (local $i i32)
          (block $done
            (loop $again
              (br_if $done (i32.ge_u (local.get $i) (local.get 0)))
              (drop (call $now))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $again)))
          (local.get $i)))
      (core instance $i (instantiate $m (with "clock" (instance (export "now" (func $now))))))
      (func (export "run") (param "n" u32) (result u32) (canon lift (core func $i "run")))
    )
    "#;

    async fn call_clock(
        runtime: &PluginRuntime,
        calls: u32,
        fuel: u64,
    ) -> (wasmtime::Result<u32>, u64, u64) {
        let services = Services {
            grants: LiveGrants::new(GrantSet::default()),
            kv: Arc::new(FileKvStore::in_memory()),
            secrets: Arc::new(MemorySecretStore::default()),
            config: Arc::new(BTreeMap::new()),
            resolver: Arc::new(SystemResolver),
        };
        let identity = Identity {
            tenant: "t".into(),
            bot: "b".into(),
            user: "u".into(),
            conversation: "c".into(),
        };
        let state = HostState::new(services, identity, "test", 1 << 24, 1 << 20);
        let mut store = Store::new(runtime.engine(), state);
        store.call_hook(fuel_hook);
        store.set_epoch_deadline(1_000);
        let setup = store.set_fuel(fuel);
        let result = async {
            setup?;
            let component = Component::new(runtime.engine(), CLOCK_CALLER)?;
            let linker = build_linker(runtime.engine(), &BTreeSet::new())?;
            let instance = linker.instantiate_async(&mut store, &component).await?;
            let run = instance.get_typed_func::<(u32,), (u32,)>(&mut store, "run")?;
            Ok(run.call_async(&mut store, (calls,)).await?.0)
        }
        .await;
        let remaining = store.get_fuel().unwrap_or(0);
        (result, remaining, store.data().fuel_debt)
    }

    #[tokio::test]
    async fn host_calls_are_charged_fuel() -> Result<(), LoadError> {
        let runtime = PluginRuntime::new(RuntimeConfig {
            concurrent_instances: 2,
        })?;
        let (result, _, debt) = call_clock(&runtime, 100, 10_000_000).await;
        assert_eq!(result.ok(), Some(100));
        assert!(debt >= 100 * limits::HOST_CALL_FUEL, "debt {debt}");

        // Each call costs a handful of instructions but a thousand fuel
        // units, so the budget runs out well before 100,000 calls.
        let (result, remaining, debt) = call_clock(&runtime, 100_000, 10_000_000).await;
        let error = result.err().map(|e| e.downcast_ref::<LimitTrap>().cloned());
        assert_eq!(error, Some(Some(LimitTrap::FuelExhausted)));
        assert!(debt > remaining);
        Ok(())
    }
}
