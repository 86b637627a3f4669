//! Password hashing with Argon2id and the password policy.
//!
//! New hashes always use [`PINNED`] parameters. Stored hashes are checked
//! against [`MIN_PARAMS`] and [`MAX_PARAMS`] before any hashing, so a
//! tampered row can neither downgrade the work factor nor make one login
//! cost gigabytes. Verification of an unknown user runs against a dummy
//! hash, so its timing matches a known user's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::Deserialize;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use super::AuthError;

/// Argon2id parameters of every new hash: memory in KiB, passes, lanes.
pub const PINNED: ArgonParams = ArgonParams {
    m_cost: 19_456,
    t_cost: 2,
    p_cost: 1,
};

/// Weakest parameters accepted from a stored hash; weaker hashes fail
/// closed instead of letting a downgraded row through.
pub const MIN_PARAMS: ArgonParams = PINNED;

/// Strongest parameters accepted from a stored hash. Anything above is
/// rejected before hashing, so a tampered row cannot exhaust memory or CPU.
pub const MAX_PARAMS: ArgonParams = ArgonParams {
    m_cost: 262_144,
    t_cost: 10,
    p_cost: 4,
};

/// Salt length in bytes.
pub const SALT_LEN: usize = 32;

/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Longest accepted password, in bytes; bounds the hashing input.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Common passwords rejected by the policy, one per line, lowercase.
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

/// Argon2 cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgonParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

/// A password from a request: zeroized on drop, redacted from `Debug`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Password(Zeroizing<String>);

impl Password {
    /// Wraps a password.
    pub fn new(text: impl Into<String>) -> Self {
        Self(Zeroizing::new(text.into()))
    }

    /// Returns the password text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Result of checking a password against a stored hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verification {
    /// Whether the password matched.
    pub matched: bool,
    /// Whether the stored hash should be replaced with a pinned one.
    pub needs_rehash: bool,
}

/// Hashes and verifies passwords off the async runtime, at most
/// `max_concurrent` at a time.
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    dummy_hash: Arc<String>,
    /// Argon2 verifications run so far, dummy ones included.
    verifications: Arc<AtomicU64>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher").finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// Creates a hasher that runs at most `max_concurrent` hashes at once.
    /// Each uses [`PINNED`]`.m_cost` KiB, so this bounds memory as well.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::Hashing`] when the dummy hash cannot be made.
    pub fn new(max_concurrent: usize) -> Result<Self, AuthError> {
        let mut random = Zeroizing::new([0u8; 32]);
        crate::crypto::fill_random(random.as_mut_slice())?;
        let dummy = hash_blocking(&hex::encode(random.as_slice()))?;
        Ok(Self {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            dummy_hash: Arc::new(dummy),
            verifications: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Returns how many Argon2 verifications this hasher has run, including
    /// those against the dummy hash. Every login attempt adds exactly one,
    /// whether or not the account exists.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Hashes `password` with the pinned parameters and a fresh salt.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::Hashing`] when hashing fails.
    pub async fn hash(&self, password: &Password) -> Result<String, AuthError> {
        let password = password.clone();
        self.run(move || hash_blocking(password.expose())).await?
    }

    /// Verifies `password` against `stored`, or against a dummy hash when
    /// `stored` is `None`, so unknown users cost the same time.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::Hashing`] when the blocking task fails.
    pub async fn verify(
        &self,
        password: &Password,
        stored: Option<&str>,
    ) -> Result<Verification, AuthError> {
        let password = password.clone();
        let known = stored.is_some();
        let stored = stored.map_or_else(|| self.dummy_hash.as_str().to_owned(), str::to_owned);
        let verifications = Arc::clone(&self.verifications);
        let verification = self
            .run(move || verify_blocking(password.expose(), &stored, &verifications))
            .await?;
        Ok(Verification {
            matched: known && verification.matched,
            needs_rehash: known && verification.needs_rehash,
        })
    }

    /// Runs `work` on the blocking pool. The permit moves into the blocking
    /// task, so a request that times out and drops this future does not
    /// free a slot while its hash is still running.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| AuthError::Hashing("hasher closed".to_owned()))?;
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await
        .map_err(|error| AuthError::Hashing(error.to_string()))
    }
}

fn argon2(params: ArgonParams) -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(params.m_cost, params.t_cost, params.p_cost, None)
        .map_err(|error| AuthError::Hashing(error.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_blocking(password: &str) -> Result<String, AuthError> {
    let mut salt_bytes = [0u8; SALT_LEN];
    crate::crypto::fill_random(&mut salt_bytes)?;
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|error| AuthError::Hashing(error.to_string()))?;
    let hash = argon2(PINNED)?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|error| AuthError::Hashing(error.to_string()))?;
    Ok(hash.to_string())
}

/// Checks the stored hash's form and bounds, then verifies. A hash outside
/// the bounds or of another algorithm never matches.
fn verify_blocking(password: &str, stored: &str, verifications: &AtomicU64) -> Verification {
    let rejected = Verification {
        matched: false,
        needs_rehash: false,
    };
    let Some((parsed, params)) = parse_stored(stored) else {
        return rejected;
    };
    let Ok(argon) = argon2(params) else {
        return rejected;
    };
    verifications.fetch_add(1, Ordering::Relaxed);
    let matched = argon.verify_password(password.as_bytes(), &parsed).is_ok();
    Verification {
        matched,
        needs_rehash: matched && params != PINNED,
    }
}

/// Parses a stored PHC string and returns its parameters when it is
/// Argon2id version 19 within [`MIN_PARAMS`]..=[`MAX_PARAMS`].
pub fn parse_stored(stored: &str) -> Option<(PasswordHash<'_>, ArgonParams)> {
    let parsed = PasswordHash::new(stored).ok()?;
    if parsed.algorithm != argon2::ARGON2ID_IDENT || parsed.version != Some(0x13) {
        return None;
    }
    let decoded = Params::try_from(&parsed).ok()?;
    let params = ArgonParams {
        m_cost: decoded.m_cost(),
        t_cost: decoded.t_cost(),
        p_cost: decoded.p_cost(),
    };
    let within = |value: u32, min: u32, max: u32| (min..=max).contains(&value);
    let in_bounds = within(params.m_cost, MIN_PARAMS.m_cost, MAX_PARAMS.m_cost)
        && within(params.t_cost, MIN_PARAMS.t_cost, MAX_PARAMS.t_cost)
        && within(params.p_cost, MIN_PARAMS.p_cost, MAX_PARAMS.p_cost);
    let salt_ok = parsed.salt.is_some_and(|salt| salt.len() >= 22);
    (in_bounds && salt_ok && parsed.hash.is_some()).then_some((parsed, params))
}

/// Checks a new password against the policy: length bounds, not the
/// username, and not in the shipped list of common passwords.
///
/// # Errors
///
/// Returns [`AuthError::WeakPassword`] naming the broken rule.
pub fn check_policy(password: &Password, username: &str) -> Result<(), AuthError> {
    let text = password.expose();
    if text.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AuthError::WeakPassword(format!(
            "password too short: expected at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if text.len() > MAX_PASSWORD_BYTES {
        return Err(AuthError::WeakPassword(format!(
            "password too long: expected at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    let lowered = Zeroizing::new(text.to_lowercase());
    if lowered.as_str() == username.to_lowercase() {
        return Err(AuthError::WeakPassword(
            "password must differ from the username".to_owned(),
        ));
    }
    if is_common(&lowered) {
        return Err(AuthError::WeakPassword(
            "password is in the list of common passwords: choose a less predictable one".to_owned(),
        ));
    }
    Ok(())
}

fn is_common(lowered: &str) -> bool {
    static LIST: OnceLock<std::collections::HashSet<&'static str>> = OnceLock::new();
    let list = LIST.get_or_init(|| {
        COMMON_PASSWORDS
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect()
    });
    list.contains(lowered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_with(params: ArgonParams, algorithm: Algorithm, password: &str) -> String {
        let p = Params::new(params.m_cost, params.t_cost, params.p_cost, None).unwrap();
        let salt = SaltString::encode_b64(&[7u8; SALT_LEN]).unwrap();
        Argon2::new(algorithm, Version::V0x13, p)
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn new_hash_carries_pinned_params() {
        let hash = hash_blocking("correct horse battery").unwrap();
        let parsed = PasswordHash::new(&hash).unwrap();
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        assert_eq!(parsed.version, Some(19));
        assert_eq!(parsed.params.get_decimal("m"), Some(19_456));
        assert_eq!(parsed.params.get_decimal("t"), Some(2));
        assert_eq!(parsed.params.get_decimal("p"), Some(1));
        // 32 bytes of salt are 43 characters of unpadded base64.
        assert_eq!(parsed.salt.unwrap().len(), 43);
        assert!(verify_blocking("correct horse battery", &hash, &AtomicU64::new(0)).matched);
        assert!(!verify_blocking("wrong horse battery", &hash, &AtomicU64::new(0)).matched);
    }

    #[test]
    fn weak_stored_params_fail_closed() {
        let weak = hash_with(
            ArgonParams {
                m_cost: 8,
                t_cost: 1,
                p_cost: 1,
            },
            Algorithm::Argon2id,
            "pw",
        );
        assert!(!verify_blocking("pw", &weak, &AtomicU64::new(0)).matched);
    }

    #[test]
    fn huge_stored_params_rejected_without_hashing() {
        let huge = "$argon2id$v=19$m=4194304,t=100,p=1$c2FsdHNhbHRzYWx0c2FsdA$\
                    aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
        let started = std::time::Instant::now();
        assert!(!verify_blocking("pw", huge, &AtomicU64::new(0)).matched);
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
    }

    #[test]
    fn other_algorithms_and_garbage_fail_closed() {
        for algorithm in [Algorithm::Argon2i, Algorithm::Argon2d] {
            let hash = hash_with(PINNED, algorithm, "pw");
            assert!(
                !verify_blocking("pw", &hash, &AtomicU64::new(0)).matched,
                "{hash}"
            );
        }
        for garbage in [
            "",
            "plaintext",
            "$2b$12$abcdefghijklmnopqrstuv",
            "$argon2id$v=19$m=19456",
        ] {
            assert!(
                !verify_blocking("pw", garbage, &AtomicU64::new(0)).matched,
                "{garbage}"
            );
        }
    }

    #[test]
    fn stronger_params_match_and_ask_for_rehash() {
        let strong = hash_with(
            ArgonParams {
                m_cost: 32_768,
                t_cost: 3,
                p_cost: 1,
            },
            Algorithm::Argon2id,
            "pw",
        );
        let verification = verify_blocking("pw", &strong, &AtomicU64::new(0));
        assert!(verification.matched);
        assert!(verification.needs_rehash);
    }

    #[test]
    fn policy_rejects_short_common_and_username() {
        assert!(check_policy(&Password::new("short"), "alice").is_err());
        assert!(check_policy(&Password::new("Password1234"), "alice").is_err());
        assert!(check_policy(&Password::new("alice-the-admin"), "alice-the-admin").is_err());
        assert!(check_policy(&Password::new("x".repeat(MAX_PASSWORD_BYTES + 1)), "alice").is_err());
        assert!(check_policy(&Password::new("violet tractor sings"), "alice").is_ok());
    }
}
