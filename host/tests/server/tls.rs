//! TLS with real clients: `openssl s_client`, reqwest, rustls and a
//! WebSocket client. Certificates are generated for each test with rcgen.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use reqwest::{Method, StatusCode};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::both_backends;
use crate::chat::add_bot;
use crate::harness::{Backend, Settings, TestServer, captured_logs, eventually};

both_backends!(
    tls_1_3_only_by_default,
    tls_1_2_when_configured,
    certificates_reload_without_restart,
    operator_requests_need_a_client_certificate,
    websocket_own_origin_is_https,
);

/// Longest wait for a reload: a few certificate checks.
const RELOAD_DEADLINE: Duration = Duration::from_secs(30);

/// A certificate authority for one test.
struct Authority(CertifiedIssuer<'static, KeyPair>);

/// A certificate with its key, as PEM and DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.0.der().clone()
    }

    /// A server certificate for 127.0.0.1 and `localhost`.
    fn server(&self, name: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate.
    fn client(&self, name: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        }
    }
}

impl Leaf {
    fn key_der(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject as _;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }
}

/// The PEM files of one TLS server.
struct Files {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

impl Files {
    fn new(authority: &Authority, server: &Leaf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = Self {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            client_ca: dir.path().join("client-ca.pem"),
            _dir: dir,
        };
        std::fs::write(&files.ca, authority.pem()).unwrap();
        files.install(server);
        files
    }

    /// Replaces the server's certificate and key in place.
    fn install(&self, server: &Leaf) {
        std::fs::write(&self.key, &server.key_pem).unwrap();
        std::fs::write(&self.cert, &server.cert_pem).unwrap();
    }

    fn settings(&self, extra: &[(&'static str, &str)]) -> Settings {
        let mut env = vec![
            ("BOTSERVER_TLS_CERT", display(&self.cert)),
            ("BOTSERVER_TLS_KEY", display(&self.key)),
        ];
        env.extend(extra.iter().map(|(key, value)| (*key, (*value).to_owned())));
        Settings { env }
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Starts a TLS server whose test client trusts `authority` and presents
/// `identity`, when given.
async fn start(
    backend: Backend,
    settings: Settings,
    authority: &Authority,
    identity: Option<&Leaf>,
) -> TestServer {
    let mut server = TestServer::start_with(backend, settings).await;
    server.base = server.base.replacen("http://", "https://", 1);
    server.client = https_client(authority, identity);
    server
}

fn https_client(authority: &Authority, identity: Option<&Leaf>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(authority.pem().as_bytes()).unwrap();
    let mut builder = reqwest::Client::builder().tls_certs_only([ca]);
    if let Some(leaf) = identity {
        let pem = format!("{}{}", leaf.cert_pem, leaf.key_pem);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

fn address(server: &TestServer) -> String {
    server.base.trim_start_matches("https://").to_owned()
}

/// A rustls client configuration that trusts `ca`.
fn client_config(ca: CertificateDer<'static>, identity: Option<&Leaf>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match identity {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.cert_der.clone()], leaf.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

/// Completes a handshake and returns the server's leaf certificate.
async fn presented_certificate(server: &TestServer, authority: &Authority) -> Option<Vec<u8>> {
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(authority.der(), None)));
    let tcp = TcpStream::connect(address(server)).await.ok()?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = connector.connect(name, tcp).await.ok()?;
    let chain = stream.get_ref().1.peer_certificates()?;
    chain.first().map(|cert| cert.as_ref().to_vec())
}

/// Runs `openssl s_client` against the server with `args`, `input` on its
/// stdin; returns whether it succeeded and everything it printed.
async fn s_client(server: &TestServer, args: &[&str], input: &[u8]) -> (bool, String) {
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-connect", &address(server)])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let input = input.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = command
            .spawn()
            .expect("`openssl` on PATH: the TLS tests run `openssl s_client`");
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let output = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    })
    .await
    .unwrap()
}

async fn tls_1_3_only_by_default(backend: Backend) {
    let authority = Authority::new("test CA");
    let files = Files::new(&authority, &authority.server("server"));
    let settings = files.settings(&[("BOTSERVER_HEADER_READ_TIMEOUT", "1")]);
    let server = start(backend, settings, &authority, None).await;
    let ca = display(&files.ca);
    let verify = ["-brief", "-CAfile", ca.as_str(), "-verify_return_error"];

    let (ok, output) = s_client(&server, &[&verify[..], &["-tls1_3"]].concat(), b"").await;
    assert!(ok, "{output}");
    assert!(output.contains("Protocol version: TLSv1.3"), "{output}");

    let (ok, output) = s_client(&server, &[&verify[..], &["-tls1_2"]].concat(), b"").await;
    assert!(!ok, "{output}");
    assert!(!output.contains("CONNECTION ESTABLISHED"), "{output}");

    // HTTPS works, with HSTS.
    let response = server.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let hsts = response.headers().get("strict-transport-security");
    assert_eq!(hsts.unwrap(), "max-age=31536000");
    assert_eq!(
        response.headers().get("x-content-type-options").unwrap(),
        "nosniff"
    );

    // Plain HTTP gets no HTTP response.
    let mut plain = TcpStream::connect(address(&server)).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(RELOAD_DEADLINE, plain.read_to_end(&mut answer))
        .await
        .expect("the server kept a plain-HTTP client");
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");

    // A client that opens a connection and never sends a hello is dropped
    // after the header read timeout.
    let mut silent = TcpStream::connect(address(&server)).await.unwrap();
    let mut buffer = Vec::new();
    let closed = tokio::time::timeout(RELOAD_DEADLINE, silent.read_to_end(&mut buffer)).await;
    assert!(
        closed.is_ok(),
        "the server kept a client that sent no hello"
    );
}

async fn tls_1_2_when_configured(backend: Backend) {
    let authority = Authority::new("test CA");
    let files = Files::new(&authority, &authority.server("server"));
    let settings = files.settings(&[("BOTSERVER_TLS_MIN_VERSION", "1.2")]);
    let server = start(backend, settings, &authority, None).await;
    let ca = display(&files.ca);
    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let args = [
            "-brief",
            "-CAfile",
            ca.as_str(),
            "-verify_return_error",
            flag,
        ];
        let (ok, output) = s_client(&server, &args, b"").await;
        assert!(ok, "{flag}: {output}");
        assert!(
            output.contains(&format!("Protocol version: {version}")),
            "{output}"
        );
    }
}

async fn certificates_reload_without_restart(backend: Backend) {
    let authority = Authority::new("test CA");
    let first = authority.server("first");
    let files = Files::new(&authority, &first);
    let server = start(backend, files.settings(&[]), &authority, None).await;
    assert_eq!(
        presented_certificate(&server, &authority).await.as_deref(),
        Some(first.cert_der.as_ref())
    );

    // New files in place: a later handshake presents the new certificate.
    let second = authority.server("second");
    files.install(&second);
    let reloaded = eventually(RELOAD_DEADLINE, || async {
        presented_certificate(&server, &authority).await.as_deref()
            == Some(second.cert_der.as_ref())
    })
    .await;
    assert!(reloaded, "the server kept presenting the first certificate");

    // A broken certificate file is reported and the good one stays.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    let cert_path = display(&files.cert);
    let reported = eventually(RELOAD_DEADLINE, || async {
        captured_logs().lines().any(|line| {
            line.contains("failed to reload the TLS certificate") && line.contains(&cert_path)
        })
    })
    .await;
    assert!(reported, "no warning about the broken certificate file");
    assert_eq!(
        presented_certificate(&server, &authority).await.as_deref(),
        Some(second.cert_der.as_ref())
    );
}

async fn operator_requests_need_a_client_certificate(backend: Backend) {
    let authority = Authority::new("server CA");
    let operators = Authority::new("operator CA");
    let strangers = Authority::new("stranger CA");
    let files = Files::new(&authority, &authority.server("server"));
    std::fs::write(&files.client_ca, operators.pem()).unwrap();
    let client_ca = display(&files.client_ca);
    let settings = files.settings(&[("BOTSERVER_TLS_CLIENT_CA", client_ca.as_str())]);
    let server = start(backend, settings, &authority, None).await;
    let (_, root) = server.bootstrap().await;

    // Without a certificate: sign-in and the caller's own account work,
    // operator requests do not.
    let (status, _) = server
        .json(Method::GET, "/api/v1/me", Some(&root), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/api/v1/tenants",
        "/api/v1/tenants/tenant-a/users",
        "/metrics",
    ] {
        let (status, body) = server.json(Method::GET, path, Some(&root), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        let detail = body["detail"].as_str().unwrap_or("");
        assert!(detail.contains("client certificate"), "{path}: {body}");
    }

    // The same with `openssl s_client`: the handshake succeeds, the
    // operator endpoint refuses.
    let ca = display(&files.ca);
    let request = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let (_, output) = s_client(&server, &["-quiet", "-CAfile", ca.as_str()], request).await;
    assert!(output.contains("HTTP/1.1 403"), "{output}");

    // With a certificate from the operator CA, both are served.
    let operator = operators.client("operator");
    let with_certificate = https_client(&authority, Some(&operator));
    for path in [
        "/api/v1/tenants",
        "/api/v1/tenants/tenant-a/users",
        "/metrics",
    ] {
        let response = with_certificate
            .get(format!("{}{path}", server.base))
            .bearer_auth(&root)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }

    // A certificate from another CA does not get past the handshake.
    let stranger = strangers.client("stranger");
    let refused = https_client(&authority, Some(&stranger))
        .get(format!("{}/healthz", server.base))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(authority.der(), Some(&stranger))));
    let tcp = TcpStream::connect(address(&server)).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    // TLS 1.3 clients learn of the refusal on their first read.
    let mut stream = connector.connect(name, tcp).await.unwrap();
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer).await;
    assert!(read.is_err() || answer.is_empty(), "{answer:?}");
}

async fn websocket_own_origin_is_https(backend: Backend) {
    let authority = Authority::new("test CA");
    let files = Files::new(&authority, &authority.server("server"));
    let server = start(backend, files.settings(&[]), &authority, None).await;
    let (_, root) = server.bootstrap().await;
    add_bot(&server, &root, "tenant-a", "echo", "echo", "members").await;
    let config = Arc::new(client_config(authority.der(), None));

    let open = |origin: String, ticket: String| {
        let url = format!("wss://{}/ws?ticket={ticket}&bot=echo", address(&server));
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        let connector = Connector::Rustls(Arc::clone(&config));
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
    };
    let ticket = || async {
        let (status, body) = server
            .json(Method::POST, "/api/v1/auth/ws-ticket", Some(&root), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["ticket"].as_str().unwrap().to_owned()
    };

    // Over TLS the page's own origin is `https://` plus the host.
    let plain_origin = format!("http://{}", address(&server));
    match open(plain_origin, ticket().await).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
        }
        other => panic!(
            "an `http://` origin was not refused: {:?}",
            other.map(|_| ())
        ),
    }
    let (_, response) = open(server.base.clone(), ticket().await)
        .await
        .expect("upgrade from the server's own https origin");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
}
