//! Refresh tokens: 256 random bits, handed to the client once and stored
//! only as a SHA-256 hash.
//!
//! Tokens are looked up by hash, never compared as strings, so response
//! time does not depend on how many leading bytes of a guess are right.
//! Neither type implements `PartialEq` or a revealing `Debug`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::{CryptoError, fill_random};

/// Random bytes in a refresh token.
pub const TOKEN_BYTES: usize = 32;

/// Longest refresh token accepted from a client; ours are 43 characters.
const MAX_TOKEN_CHARS: usize = 128;

/// A refresh token as the client holds it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RefreshToken(Zeroizing<String>);

impl RefreshToken {
    /// Generates a fresh token.
    ///
    /// # Errors
    ///
    /// Returns [`CryptoError::Random`] when the random generator fails.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
        fill_random(bytes.as_mut_slice())?;
        Ok(Self(Zeroizing::new(
            URL_SAFE_NO_PAD.encode(bytes.as_slice()),
        )))
    }

    /// Returns the hash under which the token is stored, or `None` for
    /// input too long to be one of ours.
    pub fn hash(&self) -> Option<RefreshTokenHash> {
        if self.0.is_empty() || self.0.len() > MAX_TOKEN_CHARS {
            return None;
        }
        let digest = Sha256::digest(self.0.as_bytes());
        Some(RefreshTokenHash(hex::encode(digest)))
    }

    /// Returns the token text for the response body.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken(<redacted>)")
    }
}

/// Hex SHA-256 of a refresh token: the database key of the token.
pub struct RefreshTokenHash(String);

impl RefreshTokenHash {
    /// Returns the hex digest for a query parameter.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RefreshTokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshTokenHash(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_256_bits_and_hash_stably() {
        let token = RefreshToken::generate().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(token.expose()).unwrap().len(), 32);
        assert_eq!(
            token.hash().unwrap().as_str(),
            token.hash().unwrap().as_str()
        );
        let other = RefreshToken::generate().unwrap();
        assert_ne!(
            token.hash().unwrap().as_str(),
            other.hash().unwrap().as_str()
        );
        assert!(format!("{token:?}").contains("redacted"));
    }

    #[test]
    fn oversized_input_has_no_hash() {
        let long = RefreshToken(Zeroizing::new("a".repeat(MAX_TOKEN_CHARS + 1)));
        assert!(long.hash().is_none());
    }
}
