//! Log lines for the tenant admin, over `botserver:bot/logging`.
//!
//! Logging needs no grant. The host tags each line with the plugin and the
//! bot, truncates long lines and drops lines past a per-event budget. Never
//! log secrets or message text that the user would not expect an admin to
//! read.
//!
//! ```no_run
//! use botserver_sdk::log;
//!
//! log::info(&format!("cache miss for {}", "weather/lisbon"));
//! ```

use crate::bindings::botserver::bot::logging as wit;

/// Severity of a log line, from the most verbose to the most severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Step-by-step detail, usually disabled.
    Trace,
    /// Detail useful while debugging a bot.
    Debug,
    /// Normal events worth recording.
    Info,
    /// Something unexpected that the bot recovered from.
    Warn,
    /// A failure that needs the admin's attention.
    Error,
}

impl From<Level> for wit::Level {
    fn from(level: Level) -> Self {
        match level {
            Level::Trace => Self::Trace,
            Level::Debug => Self::Debug,
            Level::Info => Self::Info,
            Level::Warn => Self::Warn,
            Level::Error => Self::Error,
        }
    }
}

/// Writes one log line at `level`.
pub fn log(level: Level, message: &str) {
    wit::log(level.into(), message);
}

/// Writes one log line at [`Level::Trace`].
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Writes one log line at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Writes one log line at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Writes one log line at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Writes one log line at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message);
}
