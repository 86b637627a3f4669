//! Errors of loading a plugin and of running one event.

use std::time::Duration;

use crate::capabilities::Capability;
use crate::capabilities::http::Denial;

/// An error that stops a component from loading for a given grant set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The bytes are a core WebAssembly module, not a component.
    #[error(
        "not a component: this is a core WebAssembly module; build for `wasm32-wasip2` or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// The bytes are not WebAssembly, or the component is malformed or uses
    /// a feature the host turns off.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// The component imports interfaces the host does not offer.
    #[error("unknown import{s} {names}: the host offers `botserver:bot/*@0.1.x` and WASI 0.2 interfaces", s = plural(.0.len()), names = backticked(.0))]
    UnknownImports(Vec<String>),
    /// The component does not export `botserver:bot/handler`.
    #[error(
        "missing export `botserver:bot/handler@0.1.x`: build the plugin with the BotServer SDK"
    )]
    MissingHandler,
    /// The component imports capabilities that are not granted.
    #[error("missing grant{s} for {names}", s = plural(.0.len()), names = backticked(.0))]
    GrantMissing(Vec<Capability>),
    /// Linking or pre-instantiating failed for another reason.
    #[error("failed to link component: {0}")]
    Link(String),
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn backticked<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|item| format!("`{item}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An error that stopped one event from producing a response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvocationError {
    /// The plugin used all of its fuel.
    #[error("out of fuel: the event used more than {limit} fuel units")]
    FuelExhausted {
        /// The fuel limit.
        limit: u64,
    },
    /// The plugin ran past its deadline.
    #[error("deadline exceeded: the event ran longer than {} ms", .limit.as_millis())]
    DeadlineExceeded {
        /// The deadline.
        limit: Duration,
    },
    /// The plugin tried to grow its memory past the cap.
    #[error("memory limit reached: the plugin asked for more than {limit} bytes of memory")]
    MemoryLimit {
        /// The memory cap, in bytes.
        limit: u64,
    },
    /// The plugin overflowed its call stack.
    #[error("stack overflow: the plugin recursed too deeply")]
    StackOverflow,
    /// A host call or the response carried more bytes than allowed.
    #[error("host call limit reached: {actual} bytes crossed one host call, the limit is {limit}")]
    HostCallBytes {
        /// The cap, in bytes.
        limit: u64,
        /// The bytes the call carried.
        actual: u64,
    },
    /// The plugin hit a table, instance or handle cap.
    #[error("resource limit reached: {0}")]
    ResourceLimit(String),
    /// The plugin trapped for another reason (unreachable, out-of-bounds
    /// access, a bad handle, ...).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The plugin returned a handler error.
    #[error("plugin returned an error: {0}")]
    Handler(String),
    /// The host failed; the detail is logged.
    #[error("host error: {0}")]
    Host(String),
}

impl InvocationError {
    /// Returns a short, stable name of the kind, for metrics and bot status.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::FuelExhausted { .. } => "fuel",
            Self::DeadlineExceeded { .. } => "deadline",
            Self::MemoryLimit { .. } => "memory",
            Self::StackOverflow => "stack",
            Self::HostCallBytes { .. } => "host_call_bytes",
            Self::ResourceLimit(_) => "resource",
            Self::Trap(_) => "trap",
            Self::Handler(_) => "handler",
            Self::Host(_) => "host",
        }
    }

    /// Returns whether the plugin broke a limit or trapped, as opposed to
    /// returning an error of its own. Traps count towards a bot's breaker.
    pub fn is_trap(&self) -> bool {
        !matches!(self, Self::Handler(_) | Self::Host(_))
    }
}

/// An event's failure together with the calls the policy denied on the way.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct FailedInvocation {
    /// The cause of the failure.
    #[source]
    pub error: InvocationError,
    /// Host calls denied before the failure.
    pub denials: Vec<Denial>,
    /// Names of the secrets whose values reached the plugin before the
    /// failure.
    pub revealed_secrets: Vec<String>,
    /// Fuel spent before the failure.
    pub fuel_used: u64,
}
