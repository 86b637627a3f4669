//! BotServer hosts chat bots for many tenants. Each bot is a WebAssembly
//! component that runs in a sandbox with fuel, a memory cap, a deadline and
//! only the capabilities an administrator granted it.
//!
//! - [`runtime`] compiles, links and runs plugin components under limits.
//! - [`capabilities`] owns the grantable capabilities and their host sides.
//! - [`cli`] is the `botserver` command line.
//! - [`http`] and [`ws`] are the API and the chat WebSocket of the server.

#[cfg(feature = "server")]
pub mod audit;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod bots;
pub mod capabilities;
pub mod cli;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod crypto;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod metrics;
pub mod runtime;
#[cfg(feature = "server")]
pub mod storage;
#[cfg(feature = "server")]
pub mod ws;
