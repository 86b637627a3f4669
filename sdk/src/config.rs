//! The bot's configuration, set by the tenant admin (capability `config`).
//!
//! Using any function here makes the plugin import `botserver:bot/config`,
//! so the bot needs a `config` grant. Values are plain text and not secret;
//! keep credentials in [`secrets`](crate::secrets).

use std::fmt;

use crate::HandlerError;
use crate::bindings::botserver::bot::config as wit;

/// Error from reading configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The `config` grant was revoked after the plugin was loaded.
    Denied,
    /// The configuration store failed.
    Unavailable(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied => f.write_str("config access denied: the `config` grant was revoked"),
            Self::Unavailable(text) => write!(f, "config unavailable: {text}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<wit::Error> for ConfigError {
    fn from(error: wit::Error) -> Self {
        match error {
            wit::Error::Denied => Self::Denied,
            wit::Error::Unavailable(text) => Self::Unavailable(text),
        }
    }
}

/// Maps every configuration error to [`HandlerError::Unavailable`], so `?`
/// works in [`Bot::handle`](crate::Bot::handle).
impl From<ConfigError> for HandlerError {
    fn from(error: ConfigError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// Returns the value for `key`, or `None` when the admin has not set it.
///
/// # Errors
///
/// [`ConfigError::Denied`], [`ConfigError::Unavailable`].
pub fn get(key: &str) -> Result<Option<String>, ConfigError> {
    wit::get(key).map_err(ConfigError::from)
}

/// Returns every key and value, sorted by key.
///
/// # Errors
///
/// [`ConfigError::Denied`], [`ConfigError::Unavailable`].
pub fn get_all() -> Result<Vec<(String, String)>, ConfigError> {
    wit::get_all().map_err(ConfigError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_message_keeps_host_text() {
        let error = ConfigError::from(wit::Error::Unavailable("database is down".to_owned()));
        assert_eq!(error.to_string(), "config unavailable: database is down");
    }
}
