//! Second factors: TOTP (RFC 6238) enrolment and checks, single-use
//! recovery codes, and the policy of who must have one.
//!
//! A secret is created unconfirmed, sealed with the tenant's data key, and
//! counts only once the user proves with a first code that their
//! authenticator has it. Codes are six digits over 30-second steps, with
//! one step of clock difference allowed either way. The newest accepted
//! step is stored, and a code of that step or an older one is rejected, so
//! a code seen once (over a shoulder, in a proxy log) cannot be replayed.
//! Recovery codes are 128 random bits each, shown once and stored as
//! SHA-256; each works once. Counting wrong codes towards the lockout is
//! left to [`super::AuthService`].

use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use totp_rs::{Algorithm, Builder, Totp};
use zeroize::Zeroizing;

use super::{AuthError, Role};
use crate::config::Config;
use crate::crypto::{ColumnRef, Vault, fill_random};
use crate::storage::mfa::{self, TotpRecord};
use crate::storage::{Db, TenantId, User, UserId, now_unix};

/// Length of one time step in seconds, the RFC 6238 default that
/// authenticator apps assume.
pub const TOTP_STEP_SECS: u64 = 30;

/// Digits of a code; apps assume six.
pub const TOTP_DIGITS: u8 = 6;

/// Steps accepted on either side of the server's clock. One step covers a
/// phone whose clock is up to 30 s off. Each further step would make two
/// more codes valid at once for someone guessing.
pub const TOTP_SKEW_STEPS: u16 = 1;

/// Bytes of a new TOTP secret: 160 bits, the length RFC 4226 recommends.
pub const TOTP_SECRET_BYTES: usize = 20;

/// Recovery codes issued at enrolment.
pub const RECOVERY_CODE_COUNT: usize = 10;

/// Random bytes of one recovery code. 128 bits cannot be guessed, so an
/// unsalted SHA-256 is enough to store them.
pub const RECOVERY_CODE_BYTES: usize = 16;

/// Issuer shown by authenticator apps next to the account.
const ISSUER: &str = "BotServer";

/// Maximum length of a code the server parses, so a client cannot make it
/// hash or scan large inputs. Real codes have at most 39 characters.
const MAX_CODE_CHARS: usize = 64;

const TABLE: &str = "mfa_totp";
const COLUMN: &str = "secret_sealed";

/// The rule of which users must have a second factor.
#[derive(Clone, Copy, Debug, Default)]
pub struct MfaPolicy {
    /// `BOTSERVER_REQUIRE_MFA`: every user.
    pub require_all: bool,
    /// Production mode: platform and tenant admins.
    pub require_admins: bool,
}

impl MfaPolicy {
    /// Reads the policy from `config`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            require_all: config.extra.require_mfa,
            require_admins: config.production,
        }
    }

    /// Returns whether a user with `role` must have a second factor.
    pub fn requires(&self, role: Role) -> bool {
        self.require_all || (self.require_admins && role.is_admin())
    }
}

/// A one-time or recovery code from a request: zeroized on drop, redacted
/// from `Debug`.
#[derive(Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct OneTimeCode(Zeroizing<String>);

impl OneTimeCode {
    /// Wraps a code.
    pub fn new(text: impl Into<String>) -> Self {
        Self(Zeroizing::new(text.into()))
    }

    /// Returns the code text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for OneTimeCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OneTimeCode(<redacted>)")
    }
}

/// The second factor a client sent.
#[derive(Clone, Copy, Debug)]
pub enum SecondFactor<'a> {
    /// Nothing.
    Missing,
    /// A code from the authenticator app.
    Totp(&'a str),
    /// One of the recovery codes.
    RecoveryCode(&'a str),
}

impl<'a> SecondFactor<'a> {
    /// Builds the factor from optional request fields.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::BadRequest`] when both are given.
    pub fn from_fields(
        totp: Option<&'a str>,
        recovery_code: Option<&'a str>,
    ) -> Result<Self, AuthError> {
        match (totp, recovery_code) {
            (None, None) => Ok(Self::Missing),
            (Some(code), None) => Ok(Self::Totp(code)),
            (None, Some(code)) => Ok(Self::RecoveryCode(code)),
            (Some(_), Some(_)) => Err(AuthError::BadRequest(
                "give either `totp` or `recovery_code`, not both",
            )),
        }
    }
}

/// A new, unconfirmed TOTP secret, for the user's authenticator app.
pub struct Enrolment {
    /// The secret in base32, for typing into an app.
    pub secret: Zeroizing<String>,
    /// The `otpauth://totp/...` URI, for a QR code.
    pub uri: Zeroizing<String>,
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolment").finish_non_exhaustive()
    }
}

/// Whether a user has a second factor, for `GET /api/v1/me/mfa`.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct MfaStatus {
    /// A confirmed TOTP secret exists.
    pub enabled: bool,
    /// An enrolment waits for its first code.
    pub pending: bool,
    /// Unused recovery codes.
    pub recovery_codes_left: i64,
    /// The server's policy requires a second factor for this user.
    pub required: bool,
}

/// Second-factor operations over the database and the vault.
#[derive(Clone, Debug)]
pub struct MfaService {
    db: Db,
    vault: Arc<Vault>,
    policy: MfaPolicy,
}

impl MfaService {
    /// Creates the service.
    pub fn new(db: Db, vault: Arc<Vault>, policy: MfaPolicy) -> Self {
        Self { db, vault, policy }
    }

    /// Returns the policy.
    pub fn policy(&self) -> MfaPolicy {
        self.policy
    }

    /// Returns whether the policy requires a second factor of `user` and
    /// they have none yet, so they may only enrol.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::Storage`] when the query fails.
    pub async fn must_enrol(&self, user: &User) -> Result<bool, AuthError> {
        if !self.policy.requires(user.role) {
            return Ok(false);
        }
        Ok(!mfa::is_enabled(&self.db, user.id).await?)
    }

    /// Returns the user's second-factor status.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::Storage`] when a query fails.
    pub async fn status(&self, user: &User) -> Result<MfaStatus, AuthError> {
        let record = mfa::find(&self.db, user.id).await?;
        let enabled = record.as_ref().is_some_and(|record| record.confirmed);
        let recovery_codes_left = if enabled {
            mfa::recovery_codes_left(&self.db, user.id).await?
        } else {
            0
        };
        Ok(MfaStatus {
            enabled,
            pending: record.is_some_and(|record| !record.confirmed),
            recovery_codes_left,
            required: self.policy.requires(user.role),
        })
    }

    /// Creates a new unconfirmed secret for `user`, replacing an earlier
    /// unconfirmed one. `account` is the name an authenticator app shows.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::MfaState`] when the user already has a
    /// confirmed secret, and other [`AuthError`]s when sealing or storage
    /// fails.
    pub async fn begin_enrolment(
        &self,
        user: &User,
        account: &str,
    ) -> Result<Enrolment, AuthError> {
        let mut bytes = Zeroizing::new(vec![0u8; TOTP_SECRET_BYTES]);
        fill_random(&mut bytes)?;
        let totp = totp(bytes.to_vec(), account)?;
        let uri = Zeroizing::new(totp.to_url().map_err(totp_failure)?);
        let secret = Zeroizing::new(totp.secret().to_base32());

        let row = user.id.to_string();
        let sealed = self
            .vault
            .seal_for_user(&secret_column(user.tenant_id, &row), user.id, &bytes)
            .await?;
        if !mfa::put_pending(&self.db, user.tenant_id, user.id, &sealed).await? {
            return Err(AuthError::MfaState(
                "a second factor is already enabled: disable it first to enrol a new one",
            ));
        }
        Ok(Enrolment { secret, uri })
    }

    /// Confirms a pending enrolment with a first code and returns new
    /// recovery codes, replacing any earlier ones.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::MfaState`] when no enrolment is pending,
    /// [`AuthError::InvalidSecondFactor`] for a wrong code, and other
    /// [`AuthError`]s when opening the secret or storage fails.
    pub async fn confirm(
        &self,
        user: &User,
        code: &str,
    ) -> Result<Vec<Zeroizing<String>>, AuthError> {
        let no_pending = AuthError::MfaState(
            "no enrolment is pending: start one with `POST /api/v1/me/mfa/totp`",
        );
        let record = mfa::find(&self.db, user.id)
            .await?
            .filter(|record| !record.confirmed)
            .ok_or(no_pending)?;
        let step = self
            .matching_step(user, &record, code)
            .await?
            .ok_or(AuthError::InvalidSecondFactor)?;
        let codes = recovery_codes()?;
        let hashes: Vec<String> = codes.iter().map(|code| hash_recovery_code(code)).collect();
        if !mfa::confirm(&self.db, user.id, step, &hashes).await? {
            return Err(AuthError::MfaState(
                "no enrolment is pending: start one with `POST /api/v1/me/mfa/totp`",
            ));
        }
        Ok(codes)
    }

    /// Checks the second factor of a user whose password was right.
    /// Returns `Ok` at once for a user without a confirmed secret.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::SecondFactorRequired`] when the user has one
    /// and `factor` is missing, [`AuthError::InvalidSecondFactor`] for a
    /// wrong, replayed or out-of-window code or an unknown or used
    /// recovery code, and other [`AuthError`]s for server failures.
    pub async fn check(&self, user: &User, factor: SecondFactor<'_>) -> Result<(), AuthError> {
        let Some(record) = mfa::find(&self.db, user.id)
            .await?
            .filter(|record| record.confirmed)
        else {
            return Ok(());
        };
        let accepted = match factor {
            SecondFactor::Missing => return Err(AuthError::SecondFactorRequired),
            SecondFactor::Totp(code) => match self.matching_step(user, &record, code).await? {
                Some(step) => mfa::accept_step(&self.db, user.id, step).await?,
                None => false,
            },
            SecondFactor::RecoveryCode(code) => {
                let normalized = normalize_recovery_code(code);
                match normalized {
                    Some(code) => {
                        let hash = hash_recovery_code(&code);
                        mfa::use_recovery_code(&self.db, user.id, &hash).await?
                    }
                    None => false,
                }
            }
        };
        if accepted {
            Ok(())
        } else {
            Err(AuthError::InvalidSecondFactor)
        }
    }

    /// Returns whether `user` has a confirmed second factor.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::Storage`] when the query fails.
    pub async fn is_enabled(&self, user: UserId) -> Result<bool, AuthError> {
        Ok(mfa::is_enabled(&self.db, user).await?)
    }

    /// Removes the user's secret and recovery codes; returns whether a
    /// secret existed. Callers check a current code or an admin's rights
    /// first.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::Storage`] when a query fails.
    pub async fn remove(&self, user: UserId) -> Result<bool, AuthError> {
        Ok(mfa::delete(&self.db, user).await?)
    }

    /// Opens the secret and returns the time step `code` matches within the
    /// clock window, if any.
    async fn matching_step(
        &self,
        user: &User,
        record: &TotpRecord,
        code: &str,
    ) -> Result<Option<i64>, AuthError> {
        let Some(code) = normalize_totp(code) else {
            return Ok(None);
        };
        let row = user.id.to_string();
        let secret = self
            .vault
            .open_for_user(
                &secret_column(record.tenant_id, &row),
                user.id,
                &record.secret_sealed,
            )
            .await?;
        let totp = totp(secret.to_vec(), "")?;
        let now = u64::try_from(now_unix()).unwrap_or(0);
        let step = totp.check(&code, now);
        Ok(step.and_then(|step| i64::try_from(step).ok()))
    }
}

fn secret_column(tenant: TenantId, row: &str) -> ColumnRef<'_> {
    ColumnRef {
        tenant,
        table: TABLE,
        row,
        column: COLUMN,
    }
}

/// Builds the TOTP parameters every secret uses: SHA-1, six digits,
/// 30-second steps, one step of skew. Apps ignore other algorithms.
fn totp(secret: Vec<u8>, account: &str) -> Result<Totp, AuthError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(TOTP_DIGITS)
        .with_skew(TOTP_SKEW_STEPS)
        .with_step_duration(TOTP_STEP_SECS)
        .with_secret(secret)
        .with_issuer(Some(ISSUER))
        .with_account_name(account)
        .build()
        .map_err(totp_failure)
}

fn totp_failure(error: totp_rs::TotpError) -> AuthError {
    AuthError::SecondFactorSetup(error.to_string())
}

/// Removes spaces from a code as apps display it (`123 456`); returns
/// `None` for anything but six digits.
fn normalize_totp(code: &str) -> Option<String> {
    if code.len() > MAX_CODE_CHARS {
        return None;
    }
    let digits: String = code.chars().filter(|c| *c != ' ').collect();
    let valid =
        digits.len() == usize::from(TOTP_DIGITS) && digits.bytes().all(|b| b.is_ascii_digit());
    valid.then_some(digits)
}

/// Generates new recovery codes: 32 hex digits in groups of four.
fn recovery_codes() -> Result<Vec<Zeroizing<String>>, AuthError> {
    let mut codes = Vec::with_capacity(RECOVERY_CODE_COUNT);
    for _ in 0..RECOVERY_CODE_COUNT {
        let mut bytes = Zeroizing::new([0u8; RECOVERY_CODE_BYTES]);
        fill_random(bytes.as_mut_slice())?;
        let hex = Zeroizing::new(hex::encode(bytes.as_slice()));
        let groups: Vec<&str> = hex
            .as_bytes()
            .chunks(4)
            .filter_map(|chunk| std::str::from_utf8(chunk).ok())
            .collect();
        codes.push(Zeroizing::new(groups.join("-")));
    }
    Ok(codes)
}

/// Lowercases a recovery code and drops dashes and spaces; returns `None`
/// unless 32 hex digits remain.
fn normalize_recovery_code(code: &str) -> Option<Zeroizing<String>> {
    if code.len() > MAX_CODE_CHARS {
        return None;
    }
    let digits: Zeroizing<String> = Zeroizing::new(
        code.chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .map(|c| c.to_ascii_lowercase())
            .collect(),
    );
    let valid =
        digits.len() == RECOVERY_CODE_BYTES * 2 && digits.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then_some(digits)
}

/// Hashes a recovery code in either its shown or its normalized form.
fn hash_recovery_code(code: &str) -> String {
    let normalized = normalize_recovery_code(code).unwrap_or_default();
    hex::encode(Sha256::digest(normalized.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_covers_admins_only_in_production() {
        let production = MfaPolicy {
            require_all: false,
            require_admins: true,
        };
        assert!(production.requires(Role::PlatformAdmin));
        assert!(production.requires(Role::TenantAdmin));
        assert!(!production.requires(Role::User));
        assert!(!production.requires(Role::PluginAuthor));
        let everyone = MfaPolicy {
            require_all: true,
            require_admins: false,
        };
        assert!(everyone.requires(Role::User));
        assert!(!MfaPolicy::default().requires(Role::PlatformAdmin));
    }

    #[test]
    fn totp_matches_rfc_6238_vector() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890" at
        // T = 59 s gives 94287082; its last six digits are the code.
        let totp = totp(b"12345678901234567890".to_vec(), "test").unwrap();
        assert_eq!(totp.generate(59).to_string(), "287082");
        assert_eq!(totp.check("287082", 59), Some(1));
        assert_eq!(totp.check("287082", 59 + 30), Some(1), "one step late");
        assert_eq!(totp.check("287082", 59 + 60), None, "two steps late");
    }

    #[test]
    fn uri_names_issuer_and_secret() {
        let totp = totp(vec![7u8; TOTP_SECRET_BYTES], "acme/alice").unwrap();
        let uri = totp.to_url().unwrap();
        assert!(
            uri.starts_with("otpauth://totp/BotServer:acme%2Falice?"),
            "{uri}"
        );
        assert!(uri.contains("issuer=BotServer"), "{uri}");
        assert!(uri.contains(&format!("secret={}", totp.secret().to_base32())));
    }

    #[test]
    fn codes_are_normalized_strictly() {
        assert_eq!(normalize_totp("123 456").as_deref(), Some("123456"));
        assert_eq!(normalize_totp("12345"), None);
        assert_eq!(normalize_totp("+12345"), None);
        assert_eq!(normalize_totp("１２３４５６"), None);
        let codes = recovery_codes().unwrap();
        assert_eq!(codes.len(), RECOVERY_CODE_COUNT);
        let shown = codes[0].as_str();
        assert_eq!(shown.len(), 39, "{shown}");
        let typed = shown.to_ascii_uppercase().replace('-', " ");
        assert_eq!(hash_recovery_code(shown), hash_recovery_code(&typed));
        assert_ne!(hash_recovery_code(shown), hash_recovery_code(&codes[1]));
        assert!(normalize_recovery_code("not a code").is_none());
    }
}
