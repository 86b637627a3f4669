//! The bot's configuration values (capability `config`).
//!
//! Values are plain text set by the tenant admin; they are not secret and
//! need no further scoping than the bot they belong to.

use serde::{Deserialize, Serialize};
use wasmtime::component::Linker;

use super::Capability;
use crate::runtime::bindings::botserver::bot::config::Error as ConfigError;
use crate::runtime::state::{HostState, enter_host_call};

/// The `config` grant. It has no parameters; the object exists so that
/// later versions can add some without changing the grant format.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigGrant {}

/// Adds `botserver:bot/config` to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let mut config = linker.instance("botserver:bot/config@0.1.0")?;
    config.func_wrap_async("get", |mut store, (key,): (String,)| {
        Box::new(async move {
            enter_host_call(&mut store, key.len())?;
            if let Some(error) = revoked(store.data()) {
                return Ok((Err(error),));
            }
            let value = store.data().config.get(&key).cloned();
            enter_host_call(&mut store, value.as_ref().map_or(0, String::len))?;
            Ok((Ok(value),))
        })
    })?;
    config.func_wrap_async("get-all", |mut store, (): ()| {
        Box::new(async move {
            enter_host_call(&mut store, 0)?;
            if let Some(error) = revoked(store.data()) {
                return Ok((Err(error),));
            }
            let pairs: Vec<(String, String)> = store
                .data()
                .config
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            let bytes = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
            enter_host_call(&mut store, bytes)?;
            Ok((Ok(pairs),))
        })
    })?;
    Ok(())
}

fn revoked(state: &HostState) -> Option<ConfigError> {
    if state.grants.allows(Capability::Config) {
        return None;
    }
    state.deny(
        Capability::Config,
        "the `config` grant was revoked".to_owned(),
    );
    Some(ConfigError::Denied)
}
