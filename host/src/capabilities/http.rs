//! Outbound HTTP for plugins (capability `http`).
//!
//! Plugins speak the standard `wasi:http` 0.2 interfaces; this module is the
//! policy behind them. Every request is checked before a socket is opened.
//! The scheme, host and port must match the grant's allowlist exactly. The
//! host name is resolved here and each resolved address is checked again,
//! so a name that points at loopback, a private network, link-local or a
//! cloud metadata address is rejected unless the grant names that address as
//! an IP literal. The connection goes to the checked address, never to a second
//! lookup. Redirects are not followed by the host: a plugin that follows one
//! sends a new request, which is checked like the first.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::uri::{Authority, Scheme};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{Error as HttpError, ForbiddenHeaderFilter, RequestOptions, WasiBody};

use super::{Capability, GrantError, LiveGrants};

/// Maximum time a plugin may wait for a connection to open. Stops a plugin from
/// pinning a host task on an address that never responds.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Maximum time a plugin may wait for response headers, and between two chunks of
/// a response body. Stops a slow server from holding an invocation open.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default number of requests one invocation may send. Stops a plugin from
/// using the host as a request amplifier.
pub const DEFAULT_MAX_REQUESTS: u32 = 8;

/// Default size cap of one response body, in bytes. Stops a plugin from
/// pulling unbounded data into host memory.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// Highest `max_requests` a grant may set, so that no grant turns one event
/// into a flood of outbound requests.
pub const MAX_REQUESTS_LIMIT: u32 = 100;

/// Highest `max_response_bytes` a grant may set: what one response may
/// hold in host memory on its way to the plugin.
pub const MAX_RESPONSE_BYTES_LIMIT: u64 = 16 * 1024 * 1024;

/// Request headers a plugin may not set: hop-by-hop headers, headers that
/// would misdirect or smuggle the request, and headers that claim to come
/// from a proxy. `Host` is always the granted authority.
const FORBIDDEN_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "http2-settings",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "via",
];

/// One allowed destination, `scheme://host:port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HttpTarget {
    /// `http` or `https`.
    pub scheme: String,
    /// Lower-case host name, or an IP address in canonical form (IPv6 without
    /// brackets).
    pub host: String,
    /// TCP port; 80 or 443 when the target left it out.
    pub port: u16,
}

impl HttpTarget {
    /// Parses the scheme and authority of a request URI into a target.
    ///
    /// # Errors
    ///
    /// Returns the reason when the URI has no usable scheme or authority, or
    /// carries user information.
    fn from_uri(uri: &http::Uri) -> Result<Self, &'static str> {
        let scheme = uri.scheme().ok_or("missing scheme")?;
        let authority = uri.authority().ok_or("missing authority")?;
        Self::from_parts(scheme, authority)
    }

    fn from_parts(scheme: &Scheme, authority: &Authority) -> Result<Self, &'static str> {
        let scheme = match scheme.as_str() {
            "http" => "http",
            "https" => "https",
            _ => return Err("scheme must be `http` or `https`"),
        };
        if authority.as_str().contains('@') {
            return Err("user information is not allowed in the authority");
        }
        let host = normalize_host(authority.host())?;
        let default_port = if scheme == "https" { 443 } else { 80 };
        Ok(Self {
            scheme: scheme.to_owned(),
            host,
            port: parse_port(authority)?.unwrap_or(default_port),
        })
    }

    /// Rejects IP literals that no grant can sensibly name: the unspecified
    /// address (which reaches the local machine on Linux), broadcast and
    /// multicast, also in their IPv4-mapped IPv6 forms.
    fn check_grantable(&self) -> Result<(), &'static str> {
        let ip = match self.ip() {
            Some(IpAddr::V6(ip)) => ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4),
            Some(ip) => ip,
            None => return Ok(()),
        };
        let unusable = match ip {
            IpAddr::V4(ip) => ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast(),
            IpAddr::V6(ip) => ip.is_unspecified() || ip.is_multicast(),
        };
        if unusable {
            return Err("unspecified, broadcast and multicast addresses cannot be granted");
        }
        Ok(())
    }

    /// Returns the address when the host is an IP literal.
    fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for HttpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(ip)) => write!(f, "{}://[{ip}]:{}", self.scheme, self.port),
            _ => write!(f, "{}://{}:{}", self.scheme, self.host, self.port),
        }
    }
}

impl FromStr for HttpTarget {
    type Err = GrantError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| GrantError::InvalidHttpTarget {
            target: text.to_owned(),
            reason,
        };
        let uri: http::Uri = text
            .parse()
            .map_err(|_| invalid("expected `scheme://host:port`"))?;
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(invalid("expected no path or query"));
        }
        let target = Self::from_uri(&uri).map_err(invalid)?;
        target.check_grantable().map_err(invalid)?;
        Ok(target)
    }
}

impl Serialize for HttpTarget {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HttpTarget {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Reads the port after the host, if any. `http::uri::Authority` turns a
/// port it cannot parse (`:65536`, `:x`) into no port at all, which would
/// silently mean the default port.
fn parse_port(authority: &Authority) -> Result<Option<u16>, &'static str> {
    let after_host = authority
        .as_str()
        .get(authority.host().len()..)
        .unwrap_or_default();
    let Some(digits) = after_host.strip_prefix(':') else {
        return if after_host.is_empty() {
            Ok(None)
        } else {
            Err("invalid authority")
        };
    };
    match digits.parse::<u16>() {
        Ok(0) | Err(_) => Err("port must be from 1 to 65535"),
        Ok(port) => Ok(Some(port)),
    }
}

/// Lower-cases a host, drops one trailing dot and brackets, and rejects
/// numeric forms that are not canonical IP addresses (`2130706433`,
/// `0x7f.1`, `127.1`), which resolvers would otherwise read as addresses.
fn normalize_host(host: &str) -> Result<String, &'static str> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip: Ipv6Addr = inner.parse().map_err(|_| "invalid IPv6 address")?;
        return Ok(ip.to_string());
    }
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.is_empty() || host.len() > 253 {
        return Err("invalid host name");
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(ip.to_string());
    }
    let last_label = host.rsplit('.').next().unwrap_or_default();
    let numeric = last_label.starts_with("0x") || last_label.bytes().all(|b| b.is_ascii_digit());
    if numeric {
        return Err("numeric host is not a canonical IPv4 address");
    }
    let valid = host
        .split('.')
        .all(|label| !label.is_empty() && label.len() <= 63 && label.bytes().all(is_label_byte));
    if !valid {
        return Err("invalid host name");
    }
    Ok(host)
}

fn is_label_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

/// Returns whether `ip` is an ordinary public unicast address. Loopback,
/// private, shared (CGNAT), link-local (which contains the cloud metadata
/// address 169.254.169.254), unique-local, multicast, documentation,
/// benchmarking, reserved and unspecified addresses are not, and neither
/// are IPv6 forms that embed such an IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let special = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space, RFC 6598
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, RFC 2544
        || a >= 240; // reserved
    !special
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    let embeds_v4 = matches!(segments, [0x64, 0xff9b, ..]) // NAT64
        || segments[0] == 0x2002 // 6to4
        || matches!(segments, [0, 0, 0, 0, 0, 0, _, _]); // IPv4-compatible
    let special = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        || (segments[0] & 0xffc0) == 0xfec0 // site-local, deprecated
        || matches!(segments, [0x2001, 0xdb8, ..]) // documentation
        || embeds_v4;
    !special
}

/// The `http` grant: where a plugin may send requests, and how much.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// Allowed destinations. Empty means no request is allowed.
    #[serde(default)]
    pub allow: Vec<HttpTarget>,
    /// Requests one invocation may send.
    #[serde(default = "default_max_requests")]
    pub max_requests: u32,
    /// Size cap of one response body, in bytes.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
}

fn default_max_requests() -> u32 {
    DEFAULT_MAX_REQUESTS
}

fn default_max_response_bytes() -> u64 {
    DEFAULT_MAX_RESPONSE_BYTES
}

impl Default for HttpGrant {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            max_requests: DEFAULT_MAX_REQUESTS,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// A host call that the policy rejected, kept for the admin's view and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The capability whose policy refused the call.
    pub capability: Capability,
    /// The rejected call and the reason, safe to show an admin.
    pub reason: String,
}

/// Denials recorded during one invocation.
pub type DenialLog = Arc<Mutex<Vec<Denial>>>;

/// Records a denial; a poisoned lock loses the record rather than panicking.
pub(crate) fn record_denial(log: &DenialLog, capability: Capability, reason: String) {
    tracing::debug!(capability = %capability, %reason, "host call denied");
    if let Ok(mut denials) = log.lock() {
        denials.push(Denial { capability, reason });
    }
}

/// Resolves host names to addresses. Tests substitute fixed results.
pub trait Resolver: Send + Sync + fmt::Debug {
    /// Returns every address `host` resolves to.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>;
}

/// The operating system's resolver.
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// Fixed resolver results for tests, from host name to addresses.
#[derive(Debug, Default)]
pub struct StaticResolver(pub BTreeMap<String, Vec<IpAddr>>);

impl Resolver for StaticResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        let found = self.0.get(host).map(|ips| {
            ips.iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect::<Vec<_>>()
        });
        Box::pin(async move {
            found.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such host"))
        })
    }
}

/// The per-invocation `wasi:http` hooks that enforce the `http` grant.
pub struct HttpPolicy {
    grants: Arc<LiveGrants>,
    resolver: Arc<dyn Resolver>,
    denials: DenialLog,
    sent: u32,
}

impl HttpPolicy {
    /// Creates the policy for one invocation.
    pub fn new(grants: Arc<LiveGrants>, resolver: Arc<dyn Resolver>, denials: DenialLog) -> Self {
        Self {
            grants,
            resolver,
            denials,
            sent: 0,
        }
    }

    /// Checks one request against the grant and counts it.
    fn admit(&mut self, uri: &http::Uri) -> Result<(HttpTarget, HttpGrant), HttpError> {
        let grant = match self.grants.grants().http.clone() {
            Some(grant) if self.grants.allows(Capability::Http) => grant,
            _ => return Err(self.deny("the `http` grant was revoked".to_owned())),
        };
        let target = match HttpTarget::from_uri(uri) {
            Ok(target) => target,
            Err(reason) => return Err(self.deny(format!("invalid request target: {reason}"))),
        };
        if !grant.allow.contains(&target) {
            return Err(self.deny(format!("`{target}` is not in the `http` grant")));
        }
        if self.sent >= grant.max_requests {
            record_denial(
                &self.denials,
                Capability::Http,
                format!("request limit of {} per event reached", grant.max_requests),
            );
            return Err(HttpError::ConnectionLimitReached);
        }
        self.sent += 1;
        Ok((target, grant))
    }

    fn deny(&self, reason: String) -> HttpError {
        record_denial(&self.denials, Capability::Http, reason);
        HttpError::HttpRequestDenied
    }
}

impl wasmtime_wasi_http::WasiHttpHooks for HttpPolicy {
    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        Arc::new(|name: &HeaderName| FORBIDDEN_HEADERS.contains(&name.as_str()))
    }

    fn default_scheme(&mut self) -> Option<Scheme> {
        None
    }

    // The default hooks log every failed connection at warn level and
    // untagged, so a plugin could fill the operator's log with them. The
    // plugin gets the error code, and the host logs it at debug level.
    fn p2_error_from_connect(&mut self, error: &std::io::Error) -> ErrorCode {
        tracing::debug!(%error, "plugin request failed to connect");
        match error.kind() {
            std::io::ErrorKind::TimedOut => ErrorCode::ConnectionTimeout,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                ErrorCode::ConnectionTerminated
            }
            std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable
            | std::io::ErrorKind::NetworkDown => ErrorCode::DestinationUnavailable,
            _ => ErrorCode::ConnectionRefused,
        }
    }

    fn p2_error_from_hyper(&mut self, error: &hyper::Error) -> ErrorCode {
        tracing::debug!(%error, "plugin request failed in HTTP");
        ErrorCode::HttpProtocolError
    }

    fn p2_error_from_tls(&mut self, error: &std::io::Error) -> ErrorCode {
        tracing::debug!(%error, "plugin request failed in TLS");
        match error.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                ErrorCode::ConnectionTerminated
            }
            _ => ErrorCode::TlsProtocolError,
        }
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                )>,
            > + Send,
    > {
        drop(fut);
        let admitted = self.admit(request.uri());
        let resolver = Arc::clone(&self.resolver);
        let denials = Arc::clone(&self.denials);
        Box::new(async move {
            let (target, grant) = admitted?;
            let address = resolve_allowed(&*resolver, &target, &denials).await?;
            let (response, io) = send(request, &target, address, options).await?;
            let response = response
                .map(|body| LimitedBody::new(body, grant.max_response_bytes).boxed_unsync());
            Ok((response, io))
        })
    }
}

/// Resolves the target and returns the first address the policy allows.
async fn resolve_allowed(
    resolver: &dyn Resolver,
    target: &HttpTarget,
    denials: &DenialLog,
) -> Result<SocketAddr, HttpError> {
    if let Some(ip) = target.ip() {
        // An IP literal in the grant names that address explicitly, so it
        // may be loopback or private; it was already matched exactly.
        return Ok(SocketAddr::new(ip, target.port));
    }
    let resolved =
        tokio::time::timeout(CONNECT_TIMEOUT, resolver.resolve(&target.host, target.port))
            .await
            .map_err(|_| HttpError::DnsTimeout)?
            .map_err(|_| HttpError::DestinationNotFound)?;
    let allowed = resolved.iter().find(|address| is_public(address.ip()));
    match allowed {
        Some(address) => Ok(*address),
        None if resolved.is_empty() => Err(HttpError::DestinationNotFound),
        None => {
            let reason = format!(
                "`{}` resolves only to non-public addresses; grant an IP literal to allow one",
                target.host
            );
            record_denial(denials, Capability::Http, reason);
            Err(HttpError::DestinationIpProhibited)
        }
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

/// Sends the request over a new connection to `address`.
async fn send(
    mut request: http::Request<WasiBody>,
    target: &HttpTarget,
    address: SocketAddr,
    options: Option<RequestOptions>,
) -> Result<(http::Response<hyper::body::Incoming>, IoFuture), HttpError> {
    let connect_timeout = clamp(options.and_then(|o| o.connect_timeout), CONNECT_TIMEOUT);
    let read_timeout = clamp(options.and_then(|o| o.first_byte_timeout), READ_TIMEOUT);

    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(HttpError::Connect)?;
    let io: Box<dyn IoStream> = if target.scheme == "https" {
        Box::new(tls_connect(stream, target, connect_timeout).await?)
    } else {
        Box::new(stream)
    };
    let (mut sender, connection) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(io)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)?
    .map_err(HttpError::Hyper)?;
    let driver = wasmtime_wasi::runtime::spawn(connection);

    prepare_headers(&mut request, target)?;
    let response = tokio::time::timeout(read_timeout, sender.send_request(request))
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)?
        .map_err(HttpError::Hyper)?;
    let io: IoFuture = Box::new(async move {
        match driver.await {
            Ok(()) => Ok(()),
            Err(error) => Err(HttpError::Hyper(error)),
        }
    });
    Ok((response, io))
}

/// Removes what a plugin must not send and sets `Host` to the granted
/// authority, then reduces the URI to its path for an origin-form request.
fn prepare_headers(
    request: &mut http::Request<WasiBody>,
    target: &HttpTarget,
) -> Result<(), HttpError> {
    let headers = request.headers_mut();
    for name in FORBIDDEN_HEADERS {
        headers.remove(*name);
    }
    let default_port = if target.scheme == "https" { 443 } else { 80 };
    let host = match (target.ip(), target.port == default_port) {
        (Some(IpAddr::V6(ip)), true) => format!("[{ip}]"),
        (Some(IpAddr::V6(ip)), false) => format!("[{ip}]:{}", target.port),
        (_, true) => target.host.clone(),
        (_, false) => format!("{}:{}", target.host, target.port),
    };
    let host = http::HeaderValue::from_str(&host).map_err(|_| HttpError::HttpRequestUriInvalid)?;
    headers.insert(header::HOST, host);

    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    *request.uri_mut() = path.parse().map_err(|_| HttpError::HttpRequestUriInvalid)?;
    Ok(())
}

fn clamp(requested: Option<Duration>, maximum: Duration) -> Duration {
    requested.map_or(maximum, |requested| requested.min(maximum))
}

trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> IoStream for T {}

async fn tls_connect(
    stream: TcpStream,
    target: &HttpTarget,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, HttpError> {
    use rustls::pki_types::ServerName;

    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| HttpError::TlsProtocolError)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = match target.ip() {
        Some(ip) => ServerName::from(ip),
        None => {
            ServerName::try_from(target.host.clone()).map_err(HttpError::InvalidDnsNameError)?
        }
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(timeout, connector.connect(name, stream))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(HttpError::Tls)
}

/// A response body that fails once it passes `limit` bytes or stalls for
/// longer than [`READ_TIMEOUT`] between chunks.
struct LimitedBody {
    inner: hyper::body::Incoming,
    limit: u64,
    seen: u64,
    stall: Pin<Box<tokio::time::Sleep>>,
}

impl LimitedBody {
    fn new(inner: hyper::body::Incoming, limit: u64) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            stall: Box::pin(tokio::time::sleep(READ_TIMEOUT)),
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(
                            this.limit,
                        )))));
                    }
                }
                let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
                this.stall.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(HttpError::Hyper(error)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.stall.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> Result<HttpTarget, GrantError> {
        text.parse()
    }

    #[test]
    fn parses_targets_canonically() -> Result<(), GrantError> {
        assert_eq!(
            target("http://127.0.0.1:8000")?.to_string(),
            "http://127.0.0.1:8000"
        );
        assert_eq!(
            target("https://API.Example.com.")?.to_string(),
            "https://api.example.com:443"
        );
        assert_eq!(target("http://[::1]:80/")?.to_string(), "http://[::1]:80");
        assert_eq!(
            target("http://[0:0:0:0:0:0:0:1]:80")?,
            target("http://[::1]:80")?
        );
        Ok(())
    }

    #[test]
    fn rejects_tricky_targets() {
        for text in [
            "ftp://example.com:21",
            "http://user@example.com:80",
            "http://example.com:80@evil.test:80",
            "http://2130706433:80",
            "http://0x7f000001:80",
            "http://127.1:80",
            "http://017700000001:80",
            "http://example.com:80/path",
            "http://example.com:80/?q=1",
            "example.com:80",
            "http://exa mple.com:80",
            "http://127.0.0.1:65536",
            "https://api.example.com:70000",
            "http://127.0.0.1:0",
            "http://127.0.0.1:",
            "http://0.0.0.0:8080",
            "http://[::]:8080",
            "http://[::ffff:0.0.0.0]:8080",
            "http://255.255.255.255:80",
            "http://224.0.0.1:80",
        ] {
            assert!(target(text).is_err(), "{text}");
        }
    }

    #[test]
    fn classifies_non_public_addresses() {
        let blocked = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.10",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
        ];
        for ip in blocked {
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            assert!(!is_public(ip), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            assert!(is_public(ip), "{ip}");
        }
    }

    #[tokio::test]
    async fn resolved_private_addresses_are_refused() {
        let resolver = StaticResolver(BTreeMap::from([
            (
                "internal.test".to_owned(),
                vec![
                    "10.0.0.5"
                        .parse()
                        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                ],
            ),
            (
                "mixed.test".to_owned(),
                vec![
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)),
                ],
            ),
        ]));
        let denials = DenialLog::default();
        let internal = HttpTarget {
            scheme: "http".into(),
            host: "internal.test".into(),
            port: 80,
        };
        let refused = resolve_allowed(&resolver, &internal, &denials).await;
        assert!(matches!(refused, Err(HttpError::DestinationIpProhibited)));

        let mixed = HttpTarget {
            scheme: "http".into(),
            host: "mixed.test".into(),
            port: 80,
        };
        let chosen = resolve_allowed(&resolver, &mixed, &denials).await.ok();
        assert_eq!(chosen, Some(SocketAddr::from(([93, 184, 216, 34], 80))));
    }
}
