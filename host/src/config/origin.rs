//! Web origins (scheme, host and port) as `BOTSERVER_ALLOWED_ORIGINS` lists
//! them and as browsers send them in the `Origin` header.
//!
//! Two origins are equal only when all three parts are: no suffix, prefix
//! or pattern matching, and `null` is never an origin here. The WebSocket
//! upgrade and CORS both compare through [`Origin`].

use std::fmt;

/// Longest `Origin` value considered; longer ones are refused unparsed.
const MAX_ORIGIN_LEN: usize = 512;

/// A parsed `scheme://host:port` origin. The port is always explicit, so
/// `https://a.test` and `https://a.test:443` are the same origin.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: Scheme,
    host: String,
    port: u16,
}

/// The two schemes a web origin can have here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

impl Origin {
    /// Parses an origin: `http` or `https`, a host, an optional port, and
    /// nothing else (no user info, path, query or fragment). Host names are
    /// compared in lowercase.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() > MAX_ORIGIN_LEN {
            return None;
        }
        let (scheme, rest) = text.split_once("://")?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return None,
        };
        Self::from_authority(scheme, rest)
    }

    /// Builds the origin of a request that arrived with `host` (the `Host`
    /// header) over `scheme`.
    pub fn from_host(scheme: Scheme, host: &str) -> Option<Self> {
        Self::from_authority(scheme, host)
    }

    fn from_authority(scheme: Scheme, authority: &str) -> Option<Self> {
        let valid_chars = authority
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-.:[]".contains(&byte));
        if authority.is_empty() || authority.ends_with(':') || !valid_chars {
            return None;
        }
        let parsed: http::uri::Authority = authority.parse().ok()?;
        let host = parsed.host().to_ascii_lowercase();
        if host.is_empty() || host.starts_with('.') || host.ends_with('.') {
            return None;
        }
        // The port is read here because `Authority::port` reports an
        // out-of-range port as no port at all.
        let port = match authority.strip_prefix(parsed.host()).unwrap_or("") {
            "" => scheme.default_port(),
            rest => rest.strip_prefix(':')?.parse().ok()?,
        };
        Some(Self { scheme, host, port })
    }

    /// Returns the scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(text: &str) -> Origin {
        Origin::parse(text).unwrap()
    }

    #[test]
    fn default_ports_are_explicit() {
        assert_eq!(origin("https://a.test"), origin("https://a.test:443"));
        assert_eq!(origin("http://a.test"), origin("http://a.test:80"));
        assert_eq!(origin("HTTPS://A.Test"), origin("https://a.test"));
        assert_eq!(origin("https://a.test:443").to_string(), "https://a.test");
        assert_eq!(
            origin("http://a.test:8080").to_string(),
            "http://a.test:8080"
        );
    }

    #[test]
    fn look_alikes_differ() {
        let allowed = origin("https://app.example.test");
        for other in [
            "https://app.example.test.evil.test",
            "https://xapp.example.test",
            "http://app.example.test",
            "https://app.example.test:8443",
            "https://evil.test",
        ] {
            assert_ne!(origin(other), allowed, "{other}");
        }
    }

    #[test]
    fn refuses_what_is_not_an_origin() {
        for text in [
            "null",
            "",
            "https://",
            "file://a.test",
            "https://user@a.test",
            "https://a.test/",
            "https://a.test/path",
            "https://a.test?x",
            "https://a.test#x",
            "https://a.test:99999",
            "https://a.test:",
            "https://.a.test",
            "https://a b.test",
            "https://a.test\r\nx: y",
        ] {
            assert_eq!(Origin::parse(text), None, "{text:?}");
        }
        assert_eq!(
            Origin::parse(&format!("https://{}.test", "a".repeat(600))),
            None
        );
    }

    #[test]
    fn ipv6_hosts_parse() {
        assert_eq!(origin("http://[::1]:8080").to_string(), "http://[::1]:8080");
    }
}
