//! Named secrets such as API keys (capability `secrets`).
//!
//! Using any function here makes the plugin import `botserver:bot/secrets`,
//! so the bot needs a `secrets` grant that lists each name it opens.
//! [`open`] returns a handle without copying the value into the plugin;
//! only [`Secret::reveal`] does, and the host records every reveal in its
//! audit trail. Neither type prints the value in its `Debug` output.

use std::fmt;

use crate::HandlerError;
use crate::bindings::botserver::bot::secrets as wit;

/// Error from opening or revealing a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretError {
    /// The name is not in the `secrets` grant, or the grant was revoked.
    Denied {
        /// Name of the secret.
        name: String,
    },
    /// The name is granted but no value is stored under it.
    NotFound {
        /// Name of the secret.
        name: String,
    },
    /// The secret store failed. The text is safe to show an admin.
    Unavailable {
        /// Name of the secret.
        name: String,
        /// The host's description of the failure.
        reason: String,
    },
}

impl SecretError {
    fn from_wit(error: wit::Error, name: &str) -> Self {
        let name = name.to_owned();
        match error {
            wit::Error::Denied => Self::Denied { name },
            wit::Error::NotFound => Self::NotFound { name },
            wit::Error::Unavailable(reason) => Self::Unavailable { name, reason },
        }
    }
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied { name } => {
                write!(
                    f,
                    "access to secret `{name}` denied: the name is not in the `secrets` grant, \
                     or the grant was revoked"
                )
            }
            Self::NotFound { name } => write!(f, "secret `{name}` is not set"),
            Self::Unavailable { name, reason } => {
                write!(f, "secret `{name}` unavailable: {reason}")
            }
        }
    }
}

impl std::error::Error for SecretError {}

/// Maps every secret error to [`HandlerError::Unavailable`], so `?` works in
/// [`Bot::handle`](crate::Bot::handle): each one means a setting that the
/// tenant admin, not the bot, has to fix.
impl From<SecretError> for HandlerError {
    fn from(error: SecretError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// Opens the secret called `name`.
///
/// # Errors
///
/// [`SecretError::Denied`], [`SecretError::NotFound`],
/// [`SecretError::Unavailable`].
pub fn open(name: &str) -> Result<Secret, SecretError> {
    let handle = wit::open(name).map_err(|error| SecretError::from_wit(error, name))?;
    Ok(Secret {
        name: name.to_owned(),
        handle,
    })
}

/// A handle to one secret, valid until the current event ends.
pub struct Secret {
    name: String,
    handle: wit::Secret,
}

impl Secret {
    /// Returns the name the secret was opened with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Copies the secret's value into the plugin.
    ///
    /// # Errors
    ///
    /// [`SecretError::Denied`] when the grant was revoked since [`open`].
    pub fn reveal(&self) -> Result<SecretValue, SecretError> {
        self.handle
            .reveal()
            .map(SecretValue)
            .map_err(|error| SecretError::from_wit(error, &self.name))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A revealed secret value. `Debug` prints `[redacted]`, and there is no
/// `Display`, so the value reaches a log or a reply only through
/// [`SecretValue::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// Returns the value itself. Keep it out of replies, logs and errors.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Returns the length of the value in characters (Unicode scalar
    /// values).
    pub fn char_count(&self) -> usize {
        self.0.chars().count()
    }

    /// Returns whether the value is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_value_debug_is_redacted() {
        let value = SecretValue("canary-value-7f3a".to_owned());
        let printed = format!("{value:?}");
        assert!(!printed.contains("canary"), "{printed}");
        assert_eq!(printed, "SecretValue([redacted])");
    }

    #[test]
    fn char_count_counts_characters() {
        assert_eq!(SecretValue("sécret".to_owned()).char_count(), 6);
    }

    #[test]
    fn errors_name_the_secret() {
        let denied = SecretError::from_wit(wit::Error::Denied, "API_KEY");
        assert_eq!(
            denied.to_string(),
            "access to secret `API_KEY` denied: the name is not in the `secrets` grant, \
             or the grant was revoked"
        );
        let missing = SecretError::from_wit(wit::Error::NotFound, "API_KEY");
        assert_eq!(
            missing,
            SecretError::NotFound {
                name: "API_KEY".to_owned()
            }
        );
    }
}
