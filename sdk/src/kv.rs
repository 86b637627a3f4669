//! Key-value storage owned by the bot (capability `kv`).
//!
//! Using any function here makes the plugin import `botserver:bot/kv`, so
//! the bot needs a `kv` grant to load. The host encrypts keys and values,
//! enforces key and value size limits, and charges every write against the
//! bot's quota. Values are bytes; [`get_string`], [`get_u64`] and their
//! setters store text and decimal numbers for the common cases.

use std::fmt;

use crate::HandlerError;
use crate::bindings::botserver::bot::kv as wit;

/// Part of the bot's storage that a call reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Shared by every user of the bot.
    Bot,
    /// Private to the user of the current event. Other users' entries are
    /// not reachable through this scope.
    User,
}

impl From<Scope> for wit::Scope {
    fn from(scope: Scope) -> Self {
        match scope {
            Scope::Bot => Self::Bot,
            Scope::User => Self::User,
        }
    }
}

/// Error from a storage call.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvError {
    /// The `kv` grant was revoked after the plugin was loaded.
    Denied,
    /// The key is empty or longer than the host's limit.
    InvalidKey {
        /// The host's key limit, in bytes.
        max_bytes: u32,
    },
    /// The value is longer than the host's limit.
    ValueTooLarge {
        /// The host's value limit, in bytes.
        max_bytes: u32,
    },
    /// The write would take the bot past its storage quota.
    QuotaExceeded {
        /// The bot's quota for keys and values together, in bytes.
        quota_bytes: u64,
    },
    /// The storage backend failed. The text is safe to show an admin.
    Unavailable(String),
    /// A typed getter found a value that does not decode as the type.
    InvalidValue {
        /// Key of the value.
        key: String,
        /// Description of the expected type, for example "UTF-8 text".
        expected: &'static str,
    },
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied => f.write_str("kv access denied: the `kv` grant was revoked"),
            Self::InvalidKey { max_bytes } => {
                write!(f, "kv key is empty or longer than {max_bytes} bytes")
            }
            Self::ValueTooLarge { max_bytes } => {
                write!(f, "kv value is larger than {max_bytes} bytes")
            }
            Self::QuotaExceeded { quota_bytes } => {
                write!(
                    f,
                    "kv write would exceed the bot's quota of {quota_bytes} bytes"
                )
            }
            Self::Unavailable(text) => write!(f, "kv storage unavailable: {text}"),
            Self::InvalidValue { key, expected } => {
                write!(f, "invalid kv value under `{key}`: expected {expected}")
            }
        }
    }
}

impl std::error::Error for KvError {}

impl From<wit::Error> for KvError {
    fn from(error: wit::Error) -> Self {
        match error {
            wit::Error::Denied => Self::Denied,
            wit::Error::InvalidKey(max_bytes) => Self::InvalidKey { max_bytes },
            wit::Error::ValueTooLarge(max_bytes) => Self::ValueTooLarge { max_bytes },
            wit::Error::QuotaExceeded(quota_bytes) => Self::QuotaExceeded { quota_bytes },
            wit::Error::Unavailable(text) => Self::Unavailable(text),
        }
    }
}

/// Maps a storage error to a handler error, so `?` works in
/// [`Bot::handle`](crate::Bot::handle). A revoked grant, a full quota and a
/// failed backend become [`HandlerError::Unavailable`]. Size limits and
/// undecodable values are the bot's own fault and become
/// [`HandlerError::Failed`].
impl From<KvError> for HandlerError {
    fn from(error: KvError) -> Self {
        match error {
            KvError::Denied | KvError::QuotaExceeded { .. } | KvError::Unavailable(_) => {
                Self::Unavailable(error.to_string())
            }
            KvError::InvalidKey { .. }
            | KvError::ValueTooLarge { .. }
            | KvError::InvalidValue { .. } => Self::Failed(error.to_string()),
        }
    }
}

/// Returns the value stored under `key`, or `None` when there is none.
///
/// # Errors
///
/// [`KvError::Denied`], [`KvError::InvalidKey`], [`KvError::Unavailable`].
pub fn get(scope: Scope, key: &str) -> Result<Option<Vec<u8>>, KvError> {
    wit::get(scope.into(), key).map_err(KvError::from)
}

/// Stores `value` under `key`, replacing any previous value. On error
/// nothing is written.
///
/// # Errors
///
/// [`KvError::Denied`], [`KvError::InvalidKey`], [`KvError::ValueTooLarge`],
/// [`KvError::QuotaExceeded`], [`KvError::Unavailable`].
pub fn set(scope: Scope, key: &str, value: &[u8]) -> Result<(), KvError> {
    wit::set(scope.into(), key, value).map_err(KvError::from)
}

/// Removes `key`. Removing a key that does not exist succeeds.
///
/// # Errors
///
/// [`KvError::Denied`], [`KvError::InvalidKey`], [`KvError::Unavailable`].
pub fn delete(scope: Scope, key: &str) -> Result<(), KvError> {
    wit::delete(scope.into(), key).map_err(KvError::from)
}

/// Returns up to `limit` keys that start with `prefix`, in byte order. With
/// `start_after`, the list begins after that key, so passing the last key
/// of one page fetches the next page.
///
/// # Errors
///
/// [`KvError::Denied`], [`KvError::InvalidKey`] (for the prefix),
/// [`KvError::Unavailable`].
pub fn list_keys(
    scope: Scope,
    prefix: &str,
    start_after: Option<&str>,
    limit: u32,
) -> Result<Vec<String>, KvError> {
    wit::list_keys(scope.into(), prefix, start_after, limit).map_err(KvError::from)
}

/// Returns the UTF-8 text stored under `key`, or `None` when there is none.
///
/// # Errors
///
/// As [`get`], and [`KvError::InvalidValue`] when the value is not UTF-8.
pub fn get_string(scope: Scope, key: &str) -> Result<Option<String>, KvError> {
    let Some(bytes) = get(scope, key)? else {
        return Ok(None);
    };
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| invalid_value(key, "UTF-8 text"))
}

/// Stores `value` as UTF-8 text under `key`.
///
/// # Errors
///
/// As [`set`].
pub fn set_string(scope: Scope, key: &str, value: &str) -> Result<(), KvError> {
    set(scope, key, value.as_bytes())
}

/// Returns the number stored under `key`, or `None` when there is none.
///
/// Numbers are stored as decimal ASCII text, so a value written with
/// `set_string(scope, key, "42")` reads back as `42`.
///
/// # Errors
///
/// As [`get`], and [`KvError::InvalidValue`] when the value is not a
/// decimal `u64`.
pub fn get_u64(scope: Scope, key: &str) -> Result<Option<u64>, KvError> {
    let Some(bytes) = get(scope, key)? else {
        return Ok(None);
    };
    decode_u64(&bytes)
        .map(Some)
        .ok_or_else(|| invalid_value(key, "a decimal u64"))
}

/// Stores `value` under `key` as decimal ASCII text.
///
/// # Errors
///
/// As [`set`].
pub fn set_u64(scope: Scope, key: &str, value: u64) -> Result<(), KvError> {
    set(scope, key, value.to_string().as_bytes())
}

fn invalid_value(key: &str, expected: &'static str) -> KvError {
    KvError::InvalidValue {
        key: key.to_owned(),
        expected,
    }
}

/// Parses decimal ASCII digits, rejecting signs, whitespace and overflow.
fn decode_u64(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_u64_reads_decimal_text() {
        assert_eq!(decode_u64(b"0"), Some(0));
        assert_eq!(decode_u64(b"42"), Some(42));
        assert_eq!(decode_u64(u64::MAX.to_string().as_bytes()), Some(u64::MAX));
    }

    #[test]
    fn decode_u64_rejects_other_bytes() {
        for bytes in [
            &b""[..],
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"0x10",
            b"18446744073709551616",
        ] {
            assert_eq!(decode_u64(bytes), None, "{bytes:?}");
        }
    }

    #[test]
    fn errors_convert_from_wit() {
        assert_eq!(KvError::from(wit::Error::Denied), KvError::Denied);
        assert_eq!(
            KvError::from(wit::Error::QuotaExceeded(1024)),
            KvError::QuotaExceeded { quota_bytes: 1024 }
        );
    }

    #[test]
    fn error_messages_name_the_limit() {
        let error = KvError::InvalidKey { max_bytes: 256 };
        assert_eq!(
            error.to_string(),
            "kv key is empty or longer than 256 bytes"
        );
        let error = invalid_value("count", "a decimal u64");
        assert_eq!(
            error.to_string(),
            "invalid kv value under `count`: expected a decimal u64"
        );
    }

    #[test]
    fn handler_error_kind_follows_cause() {
        let denied = HandlerError::from(KvError::Denied);
        assert!(matches!(denied, HandlerError::Unavailable(_)));
        let too_large = HandlerError::from(KvError::ValueTooLarge { max_bytes: 10 });
        assert!(matches!(too_large, HandlerError::Failed(_)));
    }
}
