//! TLS with rustls: the server configuration that `BOTSERVER_TLS_CERT`,
//! `BOTSERVER_TLS_KEY`, `BOTSERVER_TLS_MIN_VERSION` and
//! `BOTSERVER_TLS_CLIENT_CA` describe, and certificates that are reloaded
//! while the server runs.
//!
//! TLS 1.3 is the only version unless `BOTSERVER_TLS_MIN_VERSION=1.2`. The
//! certificate and key files are checked every [`CERT_CHECK_INTERVAL`] and
//! on `SIGHUP`. A changed pair that loads and matches replaces the old one
//! for every later handshake. A pair that fails to load (half written, or
//! key and certificate from different rotations) is logged and skipped, so
//! the old one stays in use. The client CA file is read once at start. Which requests need a client certificate is decided in
//! [`super::operator`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};

use crate::config::Config;

/// How often the certificate and key files are checked for a change. A
/// check reads only their metadata.
pub const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The protocol versions of the default policy.
static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

/// The only application protocol spoken over TLS.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Failures while loading TLS files or building the server configuration.
/// Messages name the file; they never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate file could not be read or contains no certificate.
    #[error("invalid certificate file `{path}`: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// The reason.
        reason: String,
    },
    /// The key file could not be read or contains no usable private key.
    #[error("invalid private key file `{path}`: {reason}")]
    PrivateKey {
        /// The file.
        path: PathBuf,
        /// The reason.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error(
        "private key `{key}` does not match certificate `{cert}`: set both files from the same rotation"
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The files and policy TLS is served with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Whether TLS 1.2 is accepted besides TLS 1.3.
    pub allow_tls12: bool,
    /// PEM file of CA certificates that issue operator client certificates.
    pub client_ca: Option<PathBuf>,
}

impl TlsSettings {
    /// Returns the TLS settings of `config`, or `None` when it serves plain
    /// HTTP.
    pub fn from_config(config: &Config) -> Option<Self> {
        let extra = &config.extra;
        Some(Self {
            cert: extra.tls_cert.clone()?,
            key: extra.tls_key.clone()?,
            allow_tls12: extra.tls_min_version.as_deref() == Some("1.2"),
            client_ca: extra.tls_client_ca.clone(),
        })
    }

    fn protocol_versions(&self) -> &'static [&'static SupportedProtocolVersion] {
        if self.allow_tls12 {
            rustls::ALL_VERSIONS
        } else {
            &TLS13_ONLY
        }
    }
}

/// A TLS acceptor whose certificate follows the files on disk.
pub struct Tls {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    current: Arc<CurrentCert>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl Tls {
    /// Loads the certificate, key and client CA and builds the acceptor.
    ///
    /// # Errors
    ///
    /// Returns [`TlsError`] naming the file that failed to load, or a
    /// mismatched key.
    pub fn new(settings: TlsSettings) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = load_certified_key(&settings, &provider)?;
        let current = Arc::new(CurrentCert(RwLock::new(Arc::new(certified))));

        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(settings.protocol_versions())?;
        let builder = match &settings.client_ca {
            Some(path) => {
                let roots = load_roots(path)?;
                // A client that sends no certificate still connects; one
                // that sends a certificate the CA did not issue does not.
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
                        .allow_unauthenticated()
                        .build()
                        .map_err(|error| TlsError::Certificate {
                            path: path.clone(),
                            reason: error.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&current) as _);
        config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];

        Ok(Self {
            settings,
            provider,
            current,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Returns the acceptor for new connections.
    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Reloads the certificate and key whenever their files change or the
    /// process gets `SIGHUP`. Runs until dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut interval = tokio::time::interval(CERT_CHECK_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut loaded = FileStamps::read(&self.settings);
        let mut failed: Option<FileStamps> = None;
        loop {
            let forced = tokio::select! {
                _ = interval.tick() => false,
                Some(()) = recv_hangup(&mut hangup) => true,
            };
            let stamps = FileStamps::read(&self.settings);
            if !forced && stamps == loaded {
                continue;
            }
            match load_certified_key(&self.settings, &self.provider) {
                Ok(certified) => {
                    self.current.replace(certified);
                    loaded = stamps;
                    failed = None;
                    tracing::info!(
                        tls.cert = %self.settings.cert.display(),
                        "TLS certificate reloaded"
                    );
                }
                // One warning per state of the files, not one per check.
                Err(error) if failed.as_ref() != Some(&stamps) => {
                    tracing::warn!(%error, "failed to reload the TLS certificate; keeping the current one");
                    failed = Some(stamps);
                }
                Err(_) => {}
            }
        }
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

async fn recv_hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// The certificate every new handshake presents.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl CurrentCert {
    fn replace(&self, certified: CertifiedKey) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(certified);
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

/// Modification time, size and inode of the certificate and key files,
/// read through symbolic links, so an in-place rewrite and a swapped link
/// both count as a change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamps([Option<(SystemTime, u64, u64)>; 2]);

impl FileStamps {
    fn read(settings: &TlsSettings) -> Self {
        Self([stamp(&settings.cert), stamp(&settings.key)])
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}

fn load_certified_key(
    settings: &TlsSettings,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = load_certificates(&settings.cert)?;
    let key_error = |reason: String| TlsError::PrivateKey {
        path: settings.key.clone(),
        reason,
    };
    // The PEM parser's own messages may quote a line of the file, so only
    // an I/O error is passed on.
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|error| match error {
        rustls::pki_types::pem::Error::Io(error) => key_error(error.to_string()),
        _ => key_error("expected a PEM `PRIVATE KEY` section".to_owned()),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|error| match error {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: settings.cert.clone(),
            key: settings.key.clone(),
        },
        _ => key_error("unsupported key type: expected an RSA, ECDSA or Ed25519 key".to_owned()),
    })
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Certificate {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| invalid(error.to_string()))?;
    if chain.is_empty() {
        return Err(invalid("expected a PEM `CERTIFICATE` section".to_owned()));
    }
    Ok(chain)
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in load_certificates(path)? {
        roots
            .add(certificate)
            .map_err(|error| TlsError::Certificate {
                path: path.to_owned(),
                reason: error.to_string(),
            })?;
    }
    Ok(Arc::new(roots))
}
