//! Key files in the data directory: created with mode 0600 inside a 0700
//! directory, read back on later starts.
//!
//! Generation happens only outside production mode; configuration
//! validation rejects a production start with a key missing.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{CryptoError, KeyBytes};
use crate::config::Config;

/// File name of the generated master key for database columns.
pub const DATABASE_KEY_FILE: &str = "database-encryption.key";
/// File name of the generated master key for files and config secrets.
pub const FILES_KEY_FILE: &str = "encryption.key";
/// File name of the generated HMAC key for short-lived tickets.
pub const JWT_SECRET_FILE: &str = "jwt-secret.key";
/// File name of the generated RSA key that signs access tokens.
pub const JWT_SIGNING_KEY_FILE: &str = "jwt-signing-key.pem";

/// The master keys of a running server.
#[derive(Clone, Debug)]
pub struct MasterKeys {
    /// Wraps the per-tenant data keys of database columns.
    pub database: KeyBytes,
    /// Wraps keys of uploaded files and configuration secrets.
    pub files: KeyBytes,
    /// Keys the HMAC of tickets the server issues and checks itself.
    pub jwt_secret: KeyBytes,
}

impl MasterKeys {
    /// Resolves the master keys from the configuration, reading or
    /// generating key files in the data directory for those not set.
    ///
    /// The database key is `DATABASE_ENCRYPTION_KEY` if set, otherwise
    /// `BOTSERVER_ENCRYPTION_KEY`, otherwise the key file.
    ///
    /// # Errors
    ///
    /// Returns [`CryptoError`] when a key file cannot be read, created or
    /// parsed.
    pub fn load(config: &Config) -> Result<Self, CryptoError> {
        let dir = &config.data_dir;
        let database = match (&config.database_encryption_key, &config.encryption_key) {
            (Some(key), _) | (None, Some(key)) => key.clone(),
            (None, None) => load_or_generate(&dir.join(DATABASE_KEY_FILE))?,
        };
        let files = match &config.encryption_key {
            Some(key) => key.clone(),
            None => load_or_generate(&dir.join(FILES_KEY_FILE))?,
        };
        let jwt_secret = match &config.jwt_secret {
            Some(key) => key.clone(),
            None => load_or_generate(&dir.join(JWT_SECRET_FILE))?,
        };
        Ok(Self {
            database,
            files,
            jwt_secret,
        })
    }
}

/// Reads a hex key file, or creates it with a fresh key when absent.
///
/// # Errors
///
/// Returns [`CryptoError::KeyFile`] for I/O failures and
/// [`CryptoError::InvalidKeyFormat`] for a file that is not 64 hex digits.
pub fn load_or_generate(path: &Path) -> Result<KeyBytes, CryptoError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            warn_if_shared(path);
            KeyBytes::from_hex(&text)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyBytes::generate()?;
            let hex = key.to_hex();
            match write_secret_file(path, hex.as_bytes()) {
                Ok(()) => Ok(key),
                // Another process created it first: use theirs.
                Err(CryptoError::KeyFile { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    load_or_generate(path)
                }
                Err(error) => Err(error),
            }
        }
        Err(source) => Err(key_file_error(path, source)),
    }
}

/// Creates `path` with mode 0600 and writes `contents`; fails if it exists.
///
/// # Errors
///
/// Returns [`CryptoError::KeyFile`] when the file exists or cannot be
/// written.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), CryptoError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| key_file_error(path, source))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| key_file_error(path, source))
}

/// Creates `dir` (and parents) if needed and restricts it to mode 0700.
///
/// # Errors
///
/// Returns [`CryptoError::KeyFile`] when it cannot be created or chmodded.
pub fn ensure_private_dir(dir: &Path) -> Result<(), CryptoError> {
    fs::create_dir_all(dir).map_err(|source| key_file_error(dir, source))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|source| key_file_error(dir, source))
}

/// Logs a warning when a key file is readable or writable by anyone but
/// its owner. The key is still used, because refusing would take the
/// server down over a fixable permission.
pub fn warn_if_shared(path: &Path) {
    if let Ok(metadata) = fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            key.path = %path.display(),
            "key file is accessible to other users: run `chmod 600` on it"
        );
    }
}

fn key_file_error(path: &Path, source: std::io::Error) -> CryptoError {
    CryptoError::KeyFile {
        path: PathBuf::from(path),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let first = load_or_generate(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = load_or_generate(&path).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
    }
}
