//! The client address of a request: the socket peer, or the address a
//! trusted proxy forwarded.
//!
//! Rate limits, WebSocket connection caps and security events key on this
//! address. A forwarded-for header is read only when the socket peer is in
//! `BOTSERVER_TRUSTED_PROXIES`, and only the one header those proxies write
//! (`BOTSERVER_FORWARDED_HEADER`), so a client cannot pick its own address by
//! sending either header itself. The rate-limit middleware resolves the
//! address once per request and stores it as a [`ClientIp`] extension.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, header};
use ipnet::IpNet;

/// Forwarded-for entries read from the right. A chain longer than this
/// stops at the limit, so a huge header costs bounded work.
const MAX_FORWARDED_HOPS: usize = 32;

/// The header trusted proxies write the client address into.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

impl ForwardedHeader {
    /// Parses `x-forwarded-for` or `forwarded`, in any letter case.
    pub fn parse(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("x-forwarded-for") {
            Some(Self::XForwardedFor)
        } else if text.eq_ignore_ascii_case("forwarded") {
            Some(Self::Forwarded)
        } else {
            None
        }
    }

    fn name(self) -> HeaderName {
        match self {
            Self::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            Self::Forwarded => header::FORWARDED,
        }
    }
}

/// Finds the client address of a request from its peer and headers.
#[derive(Clone, Debug, Default)]
pub struct ClientIpResolver {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
}

impl ClientIpResolver {
    /// Creates a resolver that reads `header` from peers in `trusted`.
    pub fn new(trusted: Vec<IpNet>, header: ForwardedHeader) -> Self {
        Self { trusted, header }
    }

    /// Returns the client address of a request from `peer`.
    ///
    /// An untrusted peer is the client. Behind trusted proxies, the client
    /// is the rightmost entry of the forwarded-for chain that is not a
    /// trusted proxy itself, because entries left of it were written by
    /// the client. An entry that is not an address (`unknown`, an
    /// obfuscated name, garbage) ends the walk at the last trusted hop.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = canonical(peer);
        if !self.is_trusted(client) {
            return client;
        }
        let entries = forwarded_entries(headers, self.header);
        for entry in entries.iter().rev().take(MAX_FORWARDED_HOPS) {
            let Some(address) = entry else {
                return client;
            };
            client = canonical(*address);
            if !self.is_trusted(client) {
                return client;
            }
        }
        client
    }

    fn is_trusted(&self, address: IpAddr) -> bool {
        self.trusted
            .iter()
            .any(|network| network.contains(&address))
    }
}

/// Parses a comma-separated list of addresses and CIDR ranges, such as
/// `10.0.0.0/8, 192.0.2.7, 2001:db8::/32`. Returns `None` when any entry
/// is invalid. A `/0` range is invalid too: trusting every address would
/// let any client pick the address it is limited by.
pub fn parse_networks(text: &str) -> Option<Vec<IpNet>> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .ok()
                .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
                .filter(|network| network.prefix_len() > 0)
        })
        .collect()
}

/// Returns the entries of the configured header, leftmost first, with
/// `None` for each one that is not an address.
fn forwarded_entries(headers: &HeaderMap, kind: ForwardedHeader) -> Vec<Option<IpAddr>> {
    let mut entries = Vec::new();
    for value in headers.get_all(kind.name()) {
        let Ok(text) = value.to_str() else {
            entries.push(None);
            continue;
        };
        for element in text.split(',') {
            let address = match kind {
                ForwardedHeader::XForwardedFor => parse_node(element),
                ForwardedHeader::Forwarded => forwarded_for(element),
            };
            entries.push(address);
        }
    }
    entries
}

/// Reads the `for` parameter of one `Forwarded` element, such as
/// `for=192.0.2.60;proto=https` or `for="[2001:db8::17]:4711"`.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_node(value))?
    })
}

/// Parses a node: an address, optionally quoted, bracketed (IPv6) or with
/// a port.
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let text = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(text);
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address);
    }
    if let Some(inner) = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    text.parse::<SocketAddr>().ok().map(|socket| socket.ip())
}

/// Maps an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a dual-stack
/// listener reports IPv4 peers) to plain IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// The client address of a request, as the rate-limit middleware resolved
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The key that limits and caps count this address under.
    pub fn key(self) -> AddressKey {
        AddressKey::of(self.0)
    }
}

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    /// Reads the extension the middleware stored. Without it (a router
    /// served without the middleware), falls back to the socket peer, and
    /// without that to the unspecified address, which all such requests
    /// then share.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(client) = parts.extensions.get::<ClientIp>() {
            return Ok(*client);
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
        Ok(Self(canonical(peer)))
    }
}

/// An address as limits count it: IPv4 addresses one by one, IPv6 ones by
/// their /64 network. One IPv6 host usually holds a whole /64, so keys per
/// address would let it rotate through 2^64 of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressKey {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl AddressKey {
    /// The key of `address`.
    pub fn of(address: IpAddr) -> Self {
        match canonical(address) {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) >> 64;
                Self::V6(u64::try_from(bits).unwrap_or(u64::MAX))
            }
        }
    }
}

impl fmt::Display for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::V4(v4) => v4.fmt(f),
            Self::V6(prefix) => {
                let network = Ipv6Addr::from(u128::from(prefix) << 64);
                write!(f, "{network}/64")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn resolver(trusted: &str, header: ForwardedHeader) -> ClientIpResolver {
        ClientIpResolver::new(parse_networks(trusted).unwrap(), header)
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let none = ClientIpResolver::default();
        let spoofed = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("forwarded", "for=198.51.100.8"),
        ]);
        assert_eq!(none.resolve(ip("203.0.113.9"), &spoofed), ip("203.0.113.9"));
        let other = resolver("10.0.0.0/8", ForwardedHeader::XForwardedFor);
        assert_eq!(
            other.resolve(ip("203.0.113.9"), &spoofed),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_proxy_yields_rightmost_untrusted_entry() {
        let proxies = resolver("10.0.0.1, 10.1.0.0/16", ForwardedHeader::XForwardedFor);
        let chain = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.1.2.3")]);
        assert_eq!(proxies.resolve(ip("10.0.0.1"), &chain), ip("198.51.100.7"));
        let split = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "198.51.100.7, 10.1.2.3"),
        ]);
        assert_eq!(proxies.resolve(ip("10.0.0.1"), &split), ip("198.51.100.7"));
    }

    #[test]
    fn trusted_proxy_without_header_is_the_client() {
        let proxies = resolver("10.0.0.1", ForwardedHeader::XForwardedFor);
        assert_eq!(
            proxies.resolve(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        let all_trusted = headers(&[("x-forwarded-for", "10.0.0.1")]);
        assert_eq!(
            proxies.resolve(ip("10.0.0.1"), &all_trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn unreadable_entry_stops_at_last_trusted_hop() {
        let proxies = resolver("10.0.0.1, 10.0.0.2", ForwardedHeader::XForwardedFor);
        for value in [
            "198.51.100.7, unknown, 10.0.0.2",
            "198.51.100.7, , 10.0.0.2",
        ] {
            let mut map = HeaderMap::new();
            map.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
            assert_eq!(
                proxies.resolve(ip("10.0.0.1"), &map),
                ip("10.0.0.2"),
                "{value}"
            );
        }
    }

    #[test]
    fn only_the_configured_header_counts() {
        let xff = resolver("10.0.0.1", ForwardedHeader::XForwardedFor);
        let forwarded_only = headers(&[("forwarded", "for=198.51.100.7")]);
        assert_eq!(xff.resolve(ip("10.0.0.1"), &forwarded_only), ip("10.0.0.1"));
        let rfc = resolver("10.0.0.1", ForwardedHeader::Forwarded);
        let xff_only = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(rfc.resolve(ip("10.0.0.1"), &xff_only), ip("10.0.0.1"));
    }

    #[test]
    fn reads_rfc_7239_nodes() {
        let rfc = resolver("10.0.0.1", ForwardedHeader::Forwarded);
        let cases = [
            ("for=198.51.100.7;proto=https", "198.51.100.7"),
            ("For=\"198.51.100.7:4711\"", "198.51.100.7"),
            ("for=\"[2001:db8:cafe::17]:4711\"", "2001:db8:cafe::17"),
            (
                "for=\"[2001:db8:cafe::17]\";by=10.0.0.1",
                "2001:db8:cafe::17",
            ),
            ("for=192.0.2.1, for=198.51.100.7", "198.51.100.7"),
            ("for=unknown", "10.0.0.1"),
            ("for=_hidden", "10.0.0.1"),
            ("proto=https", "10.0.0.1"),
        ];
        for (value, expected) in cases {
            let mut map = HeaderMap::new();
            map.insert("forwarded", HeaderValue::from_str(value).unwrap());
            assert_eq!(rfc.resolve(ip("10.0.0.1"), &map), ip(expected), "{value}");
        }
    }

    #[test]
    fn reads_ports_and_mapped_addresses() {
        let proxies = resolver("10.0.0.1", ForwardedHeader::XForwardedFor);
        let with_port = headers(&[("x-forwarded-for", "198.51.100.7:5000")]);
        assert_eq!(
            proxies.resolve(ip("10.0.0.1"), &with_port),
            ip("198.51.100.7")
        );
        let mapped_peer = ip("::ffff:10.0.0.1");
        let plain = headers(&[("x-forwarded-for", "::ffff:198.51.100.7")]);
        assert_eq!(proxies.resolve(mapped_peer, &plain), ip("198.51.100.7"));
    }

    #[test]
    fn long_chains_stop_at_the_hop_limit() {
        let proxies = resolver("10.0.0.0/8", ForwardedHeader::XForwardedFor);
        let mut chain = vec!["198.51.100.7".to_owned()];
        chain.extend((0..MAX_FORWARDED_HOPS).map(|i| format!("10.0.0.{i}")));
        let mut map = HeaderMap::new();
        map.insert(
            "x-forwarded-for",
            HeaderValue::from_str(&chain.join(", ")).unwrap(),
        );
        assert_eq!(proxies.resolve(ip("10.0.0.200"), &map), ip("10.0.0.0"));
    }

    #[test]
    fn parses_network_lists() {
        let networks = parse_networks(" 10.0.0.0/8, 192.0.2.7 ,2001:db8::/32,").unwrap();
        assert_eq!(networks.len(), 3);
        assert!(networks[1].contains(&ip("192.0.2.7")));
        assert!(!networks[1].contains(&ip("192.0.2.8")));
        assert_eq!(parse_networks(""), Some(Vec::new()));
        assert_eq!(parse_networks("10.0.0.0/33"), None);
        assert_eq!(parse_networks("proxy.example.test"), None);
        assert_eq!(parse_networks("10.0.0.1, 0.0.0.0/0"), None);
        assert_eq!(parse_networks("::/0"), None);
    }

    #[test]
    fn ipv6_keys_group_a_64() {
        let a = AddressKey::of(ip("2001:db8:1:2::1"));
        let b = AddressKey::of(ip("2001:db8:1:2:ffff::9"));
        let c = AddressKey::of(ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            AddressKey::of(ip("::ffff:192.0.2.1")).to_string(),
            "192.0.2.1"
        );
    }
}
