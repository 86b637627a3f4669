//! The data each store carries for one invocation, and the checks every
//! host call goes through.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{CallHook, StoreContextMut};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::limits::{HOST_CALL_FUEL, HOST_CALL_FUEL_PER_BYTE, MAX_HANDLES, StoreLimiter};
use crate::capabilities::http::{DenialLog, HttpPolicy, Resolver, record_denial};
use crate::capabilities::kv::KvStore;
use crate::capabilities::logging::{LogBudget, OutputCapture};
use crate::capabilities::secrets::SecretStore;
use crate::capabilities::{Capability, LiveGrants};

/// The tenant, bot, user and conversation an invocation runs for. The host
/// scopes storage and logs by them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Tenant that owns the bot.
    pub tenant: String,
    /// Bot name within the tenant.
    pub bot: String,
    /// Pseudonymous user id.
    pub user: String,
    /// Conversation id.
    pub conversation: String,
}

/// The grants and capability backends the host gives one invocation,
/// besides its limits.
#[derive(Clone)]
pub struct Services {
    /// Grants, checked at every host call.
    pub grants: Arc<LiveGrants>,
    /// Key-value backend for `kv`.
    pub kv: Arc<dyn KvStore>,
    /// Secret backend for `secrets`.
    pub secrets: Arc<dyn SecretStore>,
    /// The bot's configuration values for `config`.
    pub config: Arc<BTreeMap<String, String>>,
    /// Name resolution for `http`.
    pub resolver: Arc<dyn Resolver>,
}

/// A host call that broke a limit; the invocation traps with it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub(crate) enum LimitTrap {
    #[error("host call of {actual} bytes exceeds the limit of {limit} bytes")]
    HostCallBytes { limit: u64, actual: u64 },
    #[error("fuel exhausted by host calls")]
    FuelExhausted,
}

/// The `T` of every plugin `Store<T>`.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http_ctx: WasiHttpCtx,
    pub(crate) http_policy: HttpPolicy,
    pub(crate) limiter: StoreLimiter,
    pub(crate) grants: Arc<LiveGrants>,
    pub(crate) kv: Arc<dyn KvStore>,
    pub(crate) secrets: Arc<dyn SecretStore>,
    pub(crate) config: Arc<BTreeMap<String, String>>,
    pub(crate) identity: Identity,
    pub(crate) denials: DenialLog,
    pub(crate) log: LogBudget,
    pub(crate) output: OutputCapture,
    pub(crate) host_call_bytes: u64,
    /// Fuel owed for host work, charged against the store's fuel at every
    /// return from the host.
    pub(crate) fuel_debt: u64,
    pub(crate) open_secrets: usize,
    /// Names of the secrets whose values the plugin revealed, for the
    /// audit trail.
    pub(crate) revealed_secrets: std::collections::BTreeSet<String>,
}

impl HostState {
    pub(crate) fn new(
        services: Services,
        identity: Identity,
        digest: &str,
        memory_bytes: u64,
        host_call_bytes: u64,
    ) -> Self {
        let output = OutputCapture::new();
        let wasi = WasiCtx::builder()
            .stdout(output.clone())
            .stderr(output.clone())
            .allow_blocking_current_thread(false)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        let denials = DenialLog::default();
        let http_policy = HttpPolicy::new(
            Arc::clone(&services.grants),
            Arc::clone(&services.resolver),
            Arc::clone(&denials),
        );
        Self {
            wasi,
            table,
            http_ctx: WasiHttpCtx::new(),
            http_policy,
            limiter: StoreLimiter::new(memory_bytes),
            grants: services.grants,
            kv: services.kv,
            secrets: services.secrets,
            config: services.config,
            log: LogBudget::new(digest, &identity),
            identity,
            denials,
            output,
            host_call_bytes,
            fuel_debt: 0,
            open_secrets: 0,
            revealed_secrets: std::collections::BTreeSet::new(),
        }
    }

    /// Records a denied call for the admin's view and the log.
    pub(crate) fn deny(&self, capability: Capability, reason: String) {
        record_denial(&self.denials, capability, reason);
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http_policy,
        }
    }
}

/// Checks the size of a BotServer host call and adds its cost to the fuel
/// debt. The debt is settled by [`fuel_hook`] when the call returns.
///
/// # Errors
///
/// Traps with [`LimitTrap::HostCallBytes`] when `bytes` passes the
/// invocation's host-call cap.
pub(crate) fn enter_host_call(
    store: &mut StoreContextMut<'_, HostState>,
    bytes: usize,
) -> wasmtime::Result<()> {
    let state = store.data_mut();
    let actual = bytes as u64;
    if actual > state.host_call_bytes {
        return Err(LimitTrap::HostCallBytes {
            limit: state.host_call_bytes,
            actual,
        }
        .into());
    }
    let cost = actual.saturating_mul(HOST_CALL_FUEL_PER_BYTE);
    state.fuel_debt = state.fuel_debt.saturating_add(cost);
    Ok(())
}

/// The store's call hook: every return from the host, WASI calls included,
/// adds [`HOST_CALL_FUEL`] to the debt and traps once the debt is more than
/// the fuel left. Wasm instructions spend the store's fuel directly, so the
/// two together never pass the invocation's budget at a host boundary.
pub(crate) fn fuel_hook(
    mut state: wasmtime::StoreHookState<'_, HostState>,
    hook: CallHook,
) -> wasmtime::Result<()> {
    if !matches!(hook, CallHook::ReturningFromHost) {
        return Ok(());
    }
    let remaining = wasmtime::AsContext::as_context(&state).get_fuel()?;
    let data = state.data_mut();
    data.fuel_debt = data.fuel_debt.saturating_add(HOST_CALL_FUEL);
    if data.fuel_debt > remaining {
        return Err(LimitTrap::FuelExhausted.into());
    }
    Ok(())
}
