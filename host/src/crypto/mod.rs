//! Key material and authenticated encryption.
//!
//! This module owns 256-bit keys ([`KeyBytes`]), the AES-256-GCM envelope
//! format, master keys loaded from the environment or generated key files
//! ([`keyfile`]), and the [`Vault`] that seals and opens column values with
//! per-tenant data keys. It leaves the storage of wrapped data keys to
//! [`crate::storage`].
//!
//! Every sealed value carries a random 96-bit nonce and is bound through the
//! associated data to the key version, tenant, table, row and column, so a
//! ciphertext copied anywhere else fails to open.

pub mod keyfile;
mod vault;

use aws_lc_rs::aead::{self, AES_256_GCM, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

pub use vault::{ColumnRef, RotationReport, Vault};

/// Length of every symmetric key, in bytes.
pub const KEY_LEN: usize = 32;

/// Format byte at the start of every sealed value; a new layout gets a new
/// byte so old values stay readable.
const FORMAT_V1: u8 = 1;

/// Failures of key handling and authenticated encryption.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A key is not 64 hex characters.
    #[error("invalid key: expected 64 hex characters")]
    InvalidKeyFormat,
    /// The operating system random generator failed.
    #[error("failed to read random bytes from the operating system")]
    Random,
    /// A sealed value is truncated, tampered with, or bound to other
    /// associated data (another tenant, table, row, column or key).
    #[error("sealed value failed to open: wrong key, wrong location or tampered data")]
    Open,
    /// A sealed value names a format this build does not know.
    #[error("sealed value has unknown format `{0}`")]
    UnknownFormat(u8),
    /// Sealing failed inside the cipher.
    #[error("failed to seal a value")]
    Seal,
    /// A data key is wrapped by a master key this server does not have.
    #[error("data key `{tenant}` v{version} is wrapped by unknown master key `{master_key_id}`")]
    UnknownMasterKey {
        /// Tenant of the data key.
        tenant: String,
        /// Data key version.
        version: u32,
        /// Fingerprint of the missing master key.
        master_key_id: String,
    },
    /// Reading or writing wrapped data keys failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// A key file could not be read or written.
    #[error("failed to access key file `{path}`")]
    KeyFile {
        /// The key file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A 256-bit secret key, zeroized on drop and redacted from `Debug`.
#[derive(Clone, zeroize::ZeroizeOnDrop)]
pub struct KeyBytes(Box<[u8; KEY_LEN]>);

impl KeyBytes {
    /// Parses 64 hex characters.
    ///
    /// # Errors
    ///
    /// Returns [`CryptoError::InvalidKeyFormat`] for any other input.
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let mut key = Box::new([0u8; KEY_LEN]);
        hex::decode_to_slice(text.trim(), key.as_mut_slice())
            .map_err(|_| CryptoError::InvalidKeyFormat)?;
        Ok(Self(key))
    }

    /// Generates a key from the operating system random generator.
    ///
    /// # Errors
    ///
    /// Returns [`CryptoError::Random`] when the generator fails.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = Box::new([0u8; KEY_LEN]);
        fill_random(key.as_mut_slice())?;
        Ok(Self(key))
    }

    /// Returns the key as hex, in a buffer that is zeroized on drop.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_slice()))
    }

    /// Returns a short, non-secret fingerprint that names this key.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"botserver key fingerprint\0")
            .chain_update(self.0.as_slice())
            .finalize();
        hex::encode(&digest[..8])
    }

    /// Returns HMAC-SHA256 of `message` under this key, for values the
    /// server issues and later looks up or checks itself.
    pub fn mac(&self, message: &[u8]) -> [u8; 32] {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, self.as_bytes());
        let tag = aws_lc_rs::hmac::sign(&key, message);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBytes(<redacted>)")
    }
}

/// Fills `buffer` from the operating system random generator.
///
/// # Errors
///
/// Returns [`CryptoError::Random`] when the generator fails.
pub fn fill_random(buffer: &mut [u8]) -> Result<(), CryptoError> {
    aws_lc_rs::rand::fill(buffer).map_err(|_| CryptoError::Random)
}

/// Seals `plaintext` with `key` and `aad`: format byte, key version, random
/// nonce, then ciphertext and tag.
fn seal(
    key: &KeyBytes,
    version: u32,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher = cipher(key)?;
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;

    let mut buffer = Vec::with_capacity(1 + 4 + NONCE_LEN + plaintext.len() + 16);
    buffer.push(FORMAT_V1);
    buffer.extend_from_slice(&version.to_be_bytes());
    buffer.extend_from_slice(&nonce);
    let mut body = plaintext.to_vec();
    let sealed = cipher.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(aad),
        &mut body,
    );
    if sealed.is_err() {
        body.zeroize();
        return Err(CryptoError::Seal);
    }
    buffer.extend_from_slice(&body);
    Ok(buffer)
}

/// Reads the key version of a sealed value without opening it.
fn sealed_version(sealed: &[u8]) -> Result<u32, CryptoError> {
    match sealed.first() {
        Some(&FORMAT_V1) => {}
        Some(&other) => return Err(CryptoError::UnknownFormat(other)),
        None => return Err(CryptoError::Open),
    }
    let version = sealed.get(1..5).ok_or(CryptoError::Open)?;
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(version);
    Ok(u32::from_be_bytes(bytes))
}

/// Opens a value sealed by [`seal`]. On failure nothing of the plaintext is
/// returned and the work buffer is zeroized.
fn open(key: &KeyBytes, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    sealed_version(sealed)?;
    let nonce_bytes = sealed.get(5..5 + NONCE_LEN).ok_or(CryptoError::Open)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce_bytes).map_err(|_| CryptoError::Open)?;
    let cipher = cipher(key)?;

    let mut body = Zeroizing::new(
        sealed
            .get(5 + NONCE_LEN..)
            .ok_or(CryptoError::Open)?
            .to_vec(),
    );
    let plaintext_len = cipher
        .open_in_place(nonce, aead::Aad::from(aad), body.as_mut_slice())
        .map_err(|_| CryptoError::Open)?
        .len();
    body.truncate(plaintext_len);
    Ok(body)
}

fn cipher(key: &KeyBytes) -> Result<LessSafeKey, CryptoError> {
    let unbound = UnboundKey::new(&AES_256_GCM, key.as_bytes()).map_err(|_| CryptoError::Seal)?;
    Ok(LessSafeKey::new(unbound))
}

/// Encodes associated data as length-prefixed fields after a domain label,
/// so no two different field lists encode to the same bytes.
fn encode_aad(label: &str, version: u32, fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(label.as_bytes());
    out.push(0);
    out.extend_from_slice(&version.to_be_bytes());
    for field in fields {
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn sealed_value_opens_with_same_aad() {
        let key = KeyBytes::generate().unwrap();
        let sealed = seal(&key, 3, b"aad", b"hello").unwrap();
        assert_eq!(sealed_version(&sealed).unwrap(), 3);
        assert_eq!(open(&key, b"aad", &sealed).unwrap().as_slice(), b"hello");
    }

    #[test]
    fn sealed_value_rejects_other_aad_or_key() {
        let key = KeyBytes::generate().unwrap();
        let sealed = seal(&key, 1, b"row-1", b"hello").unwrap();
        assert!(matches!(
            open(&key, b"row-2", &sealed),
            Err(CryptoError::Open)
        ));
        let other = KeyBytes::generate().unwrap();
        assert!(matches!(
            open(&other, b"row-1", &sealed),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn flipped_bit_fails_to_open() {
        let key = KeyBytes::generate().unwrap();
        let sealed = seal(&key, 1, b"aad", b"hello world").unwrap();
        for index in 5..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[index] ^= 0x01;
            assert!(open(&key, b"aad", &tampered).is_err(), "byte {index}");
        }
        assert!(open(&key, b"aad", &sealed[..sealed.len() - 1]).is_err());
        assert!(open(&key, b"aad", &[]).is_err());
    }

    #[test]
    fn nonces_are_distinct() {
        let key = KeyBytes::generate().unwrap();
        let mut seen = HashSet::new();
        for _ in 0..100_000 {
            let sealed = seal(&key, 1, b"aad", b"same value").unwrap();
            assert!(seen.insert(sealed[5..5 + NONCE_LEN].to_vec()));
        }
    }

    #[test]
    fn aad_fields_do_not_run_together() {
        assert_ne!(
            encode_aad("x", 1, &[b"ab", b"c"]),
            encode_aad("x", 1, &[b"a", b"bc"])
        );
    }

    #[test]
    fn key_debug_is_redacted() {
        let key = KeyBytes::from_hex(&"ab".repeat(32)).unwrap();
        assert_eq!(format!("{key:?}"), "KeyBytes(<redacted>)");
        assert!(KeyBytes::from_hex("abc").is_err());
        assert_eq!(key.to_hex().as_str(), "ab".repeat(32));
    }
}
