//! Identity: password hashing, access and refresh tokens, sessions, lockout
//! and roles.
//!
//! [`AuthService`] ties them together for login, refresh, logout and
//! password change. The HTTP layer calls it and decides what each failure
//! looks like on the wire; storage of users and token hashes is left to
//! [`crate::storage`].

pub mod mfa;
pub mod password;
pub mod refresh;
mod service;
pub mod sessions;
pub mod tickets;
pub mod tokens;

use serde::{Deserialize, Serialize};

pub use service::{AuthService, IssuedTokens, LockoutPolicy, LoginRequest};
pub use sessions::{SessionId, SessionStore};
pub use tickets::{Ticket, TicketHolder, TicketStore};
pub use tokens::{AccessClaims, TokenKeys};

/// A user's role. Roles do not nest: each HTTP handler names the roles it
/// accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages every tenant; the only role that may create tenants.
    PlatformAdmin,
    /// Manages the users of one tenant.
    TenantAdmin,
    /// Uploads plugins to one tenant.
    PluginAuthor,
    /// Chats with bots.
    User,
}

impl Role {
    /// Returns the stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlatformAdmin => "platform_admin",
            Self::TenantAdmin => "tenant_admin",
            Self::PluginAuthor => "plugin_author",
            Self::User => "user",
        }
    }

    /// Parses the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "platform_admin" => Some(Self::PlatformAdmin),
            "tenant_admin" => Some(Self::TenantAdmin),
            "plugin_author" => Some(Self::PluginAuthor),
            "user" => Some(Self::User),
            _ => None,
        }
    }

    /// Returns whether the role manages a tenant's users.
    pub fn is_admin(self) -> bool {
        matches!(self, Self::PlatformAdmin | Self::TenantAdmin)
    }
}

/// Failures of the identity subsystem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Wrong password, unknown user or tenant, locked or disabled account.
    /// One variant for all, so callers cannot tell them apart.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The access or refresh token is missing, malformed, expired, revoked
    /// or signed by another key.
    #[error("invalid or expired token")]
    InvalidToken,
    /// The new password breaks the password policy.
    #[error("{0}")]
    WeakPassword(String),
    /// The request is malformed in a way the route's types cannot express.
    #[error("{0}")]
    BadRequest(&'static str),
    /// The password was right, but the user has a second factor and the
    /// request carried no code.
    #[error("a second factor is required: send `totp` or `recovery_code`")]
    SecondFactorRequired,
    /// The one-time code is wrong, already used or outside the clock
    /// window, or the recovery code is unknown or used.
    #[error("invalid or already used one-time code")]
    InvalidSecondFactor,
    /// The second factor is not in the state the operation needs.
    #[error("{0}")]
    MfaState(&'static str),
    /// A TOTP secret could not be set up.
    #[error("failed to set up a TOTP secret: {0}")]
    SecondFactorSetup(String),
    /// Hashing could not run.
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// A signing key could not be loaded, generated or used.
    #[error("signing key error: {0}")]
    SigningKey(String),
    /// The session store failed.
    #[error("session store failed: {0}")]
    SessionStore(String),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// A key file or the vault failed.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
}
