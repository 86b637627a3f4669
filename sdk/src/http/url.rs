//! URL handling for the HTTP client: splitting an absolute `http` or
//! `https` URL into the parts that a `wasi:http` request takes, and
//! resolving a reference such as a redirect's `Location` against a base URL
//! as RFC 3986, section 5.2, describes.

use super::HttpError;
use wasip2::http::types::Scheme;

/// The parts of an absolute URL that an outgoing request is made of.
#[derive(Debug)]
pub(super) struct RequestTarget {
    pub(super) scheme: Scheme,
    pub(super) authority: String,
    pub(super) path_with_query: String,
}

/// Splits `url` into a request target. The fragment is dropped, because it
/// never goes on the wire.
pub(super) fn request_target(url: &str) -> Result<RequestTarget, HttpError> {
    let invalid = |reason| HttpError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    check_characters(url).map_err(invalid)?;

    let parts = UriParts::split(url);
    let scheme = match parts.scheme {
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => Scheme::Http,
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => Scheme::Https,
        Some(_) => return Err(invalid("unsupported scheme, expected `http` or `https`")),
        None => return Err(invalid("missing scheme, expected `http://` or `https://`")),
    };
    let authority = match parts.authority {
        Some(authority) if !authority.is_empty() => authority,
        _ => return Err(invalid("missing host")),
    };
    if authority.contains('@') {
        return Err(invalid("credentials in the URL are not supported"));
    }

    let path = if parts.path.is_empty() {
        "/"
    } else {
        parts.path
    };
    let path_with_query = match parts.query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    Ok(RequestTarget {
        scheme,
        authority: authority.to_owned(),
        path_with_query,
    })
}

/// Resolves `reference` against the absolute URL `base`, as a browser does
/// with a link or a redirect's `Location` header.
///
/// ```
/// use botserver_sdk::http::resolve_reference;
///
/// let next = resolve_reference("https://example.com/a/b?x=1", "../c")?;
/// assert_eq!(next, "https://example.com/c");
/// # Ok::<(), botserver_sdk::http::HttpError>(())
/// ```
///
/// # Errors
///
/// [`HttpError::InvalidUrl`] when `base` has no scheme, or when either
/// string contains whitespace, control or non-ASCII characters.
pub fn resolve_reference(base: &str, reference: &str) -> Result<String, HttpError> {
    let invalid = |url: &str, reason| HttpError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    check_characters(base).map_err(|reason| invalid(base, reason))?;
    check_characters(reference).map_err(|reason| invalid(reference, reason))?;

    let base_parts = UriParts::split(base);
    if base_parts.scheme.is_none() {
        return Err(invalid(base, "missing scheme in the base URL"));
    }
    Ok(resolve_parts(&base_parts, &UriParts::split(reference)).to_string())
}

/// Rejects characters that must be percent-encoded before they can appear
/// in a request line.
fn check_characters(url: &str) -> Result<(), &'static str> {
    if url
        .bytes()
        .any(|byte| byte.is_ascii_whitespace() || byte.is_ascii_control())
    {
        return Err("contains whitespace or control characters");
    }
    if !url.is_ascii() {
        return Err("contains non-ASCII characters, which must be percent-encoded");
    }
    Ok(())
}

/// The five components of a URI reference (RFC 3986, appendix B).
#[derive(Debug, Default, PartialEq, Eq)]
struct UriParts<'a> {
    scheme: Option<&'a str>,
    authority: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

impl<'a> UriParts<'a> {
    fn split(reference: &'a str) -> Self {
        let mut rest = reference;
        let mut parts = Self::default();

        if let Some(end) = rest.find([':', '/', '?', '#'])
            && rest[end..].starts_with(':')
            && is_scheme(&rest[..end])
        {
            parts.scheme = Some(&rest[..end]);
            rest = &rest[end + 1..];
        }
        if let Some(after) = rest.strip_prefix("//") {
            let end = after.find(['/', '?', '#']).unwrap_or(after.len());
            parts.authority = Some(&after[..end]);
            rest = &after[end..];
        }
        if let Some(start) = rest.find('#') {
            parts.fragment = Some(&rest[start + 1..]);
            rest = &rest[..start];
        }
        if let Some(start) = rest.find('?') {
            parts.query = Some(&rest[start + 1..]);
            rest = &rest[..start];
        }
        parts.path = rest;
        parts
    }
}

/// Returns whether `name` is a valid scheme: a letter, then letters, digits, `+`,
/// `-` or `.` (RFC 3986, section 3.1).
fn is_scheme(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'-' | b'.'))
}

/// A resolved URI whose path may be newly built.
struct Resolved<'a> {
    scheme: Option<&'a str>,
    authority: Option<&'a str>,
    path: String,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

impl std::fmt::Display for Resolved<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(scheme) = self.scheme {
            write!(f, "{scheme}:")?;
        }
        if let Some(authority) = self.authority {
            write!(f, "//{authority}")?;
        }
        f.write_str(&self.path)?;
        if let Some(query) = self.query {
            write!(f, "?{query}")?;
        }
        if let Some(fragment) = self.fragment {
            write!(f, "#{fragment}")?;
        }
        Ok(())
    }
}

/// Reference resolution, following RFC 3986, section 5.2.2.
fn resolve_parts<'a>(base: &UriParts<'a>, reference: &UriParts<'a>) -> Resolved<'a> {
    let fragment = reference.fragment;
    if reference.scheme.is_some() {
        return Resolved {
            scheme: reference.scheme,
            authority: reference.authority,
            path: remove_dot_segments(reference.path),
            query: reference.query,
            fragment,
        };
    }
    if reference.authority.is_some() {
        return Resolved {
            scheme: base.scheme,
            authority: reference.authority,
            path: remove_dot_segments(reference.path),
            query: reference.query,
            fragment,
        };
    }

    let (path, query) = if reference.path.is_empty() {
        (base.path.to_owned(), reference.query.or(base.query))
    } else if reference.path.starts_with('/') {
        (remove_dot_segments(reference.path), reference.query)
    } else {
        let merged = merge_paths(base, reference.path);
        (remove_dot_segments(&merged), reference.query)
    };
    Resolved {
        scheme: base.scheme,
        authority: base.authority,
        path,
        query,
        fragment,
    }
}

/// Appends a relative path to the directory of the base path (RFC 3986,
/// section 5.2.3).
fn merge_paths(base: &UriParts<'_>, relative: &str) -> String {
    if base.authority.is_some() && base.path.is_empty() {
        return format!("/{relative}");
    }
    match base.path.rfind('/') {
        Some(last_slash) => format!("{}{relative}", &base.path[..=last_slash]),
        None => relative.to_owned(),
    }
}

/// Interprets `.` and `..` segments (RFC 3986, section 5.2.4).
fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut output = String::with_capacity(path.len());
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest;
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest;
        } else if input.starts_with("/./") {
            input = &input[2..];
        } else if input == "/." {
            input = "/";
        } else if input.starts_with("/../") {
            input = &input[3..];
            truncate_last_segment(&mut output);
        } else if input == "/.." {
            input = "/";
            truncate_last_segment(&mut output);
        } else if input == "." || input == ".." {
            input = "";
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| i + start);
            output.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    output
}

fn truncate_last_segment(output: &mut String) {
    let cut = output.rfind('/').unwrap_or(0);
    output.truncate(cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(reference: &str) -> String {
        resolve_reference("http://a/b/c/d;p?q", reference)
            .unwrap_or_else(|error| panic!("`{reference}`: {error}"))
    }

    #[test]
    fn resolves_rfc_3986_normal_examples() {
        let cases = [
            ("g:h", "g:h"),
            ("g", "http://a/b/c/g"),
            ("./g", "http://a/b/c/g"),
            ("g/", "http://a/b/c/g/"),
            ("/g", "http://a/g"),
            ("//g", "http://g"),
            ("?y", "http://a/b/c/d;p?y"),
            ("g?y", "http://a/b/c/g?y"),
            ("#s", "http://a/b/c/d;p?q#s"),
            ("g#s", "http://a/b/c/g#s"),
            ("g?y#s", "http://a/b/c/g?y#s"),
            (";x", "http://a/b/c/;x"),
            ("g;x", "http://a/b/c/g;x"),
            ("", "http://a/b/c/d;p?q"),
            (".", "http://a/b/c/"),
            ("./", "http://a/b/c/"),
            ("..", "http://a/b/"),
            ("../", "http://a/b/"),
            ("../g", "http://a/b/g"),
            ("../..", "http://a/"),
            ("../../", "http://a/"),
            ("../../g", "http://a/g"),
        ];
        for (reference, expected) in cases {
            assert_eq!(resolve(reference), expected, "reference `{reference}`");
        }
    }

    #[test]
    fn resolves_rfc_3986_abnormal_examples() {
        let cases = [
            ("../../../g", "http://a/g"),
            ("/./g", "http://a/g"),
            ("/../g", "http://a/g"),
            ("g.", "http://a/b/c/g."),
            ("..g", "http://a/b/c/..g"),
            ("./../g", "http://a/b/g"),
            ("g/./h", "http://a/b/c/g/h"),
            ("g/../h", "http://a/b/c/h"),
            ("g;x=1/../y", "http://a/b/c/y"),
            ("g?y/./x", "http://a/b/c/g?y/./x"),
            ("g#s/../x", "http://a/b/c/g#s/../x"),
            ("http:g", "http:g"),
        ];
        for (reference, expected) in cases {
            assert_eq!(resolve(reference), expected, "reference `{reference}`");
        }
    }

    #[test]
    fn resolves_against_host_without_path() {
        let resolved = resolve_reference("http://127.0.0.1:8080", "final");
        assert_eq!(
            resolved.ok().as_deref(),
            Some("http://127.0.0.1:8080/final")
        );
    }

    #[test]
    fn resolve_rejects_base_without_scheme() {
        let error = resolve_reference("/relative", "g");
        assert!(
            matches!(error, Err(HttpError::InvalidUrl { .. })),
            "{error:?}"
        );
    }

    #[test]
    fn request_target_splits_url() -> Result<(), HttpError> {
        let target = request_target("HTTPS://example.com:8443/a/b?x=1&y=2#top")?;
        assert!(matches!(target.scheme, Scheme::Https));
        assert_eq!(target.authority, "example.com:8443");
        assert_eq!(target.path_with_query, "/a/b?x=1&y=2");
        Ok(())
    }

    #[test]
    fn request_target_defaults_path_to_root() -> Result<(), HttpError> {
        assert_eq!(request_target("http://example.com")?.path_with_query, "/");
        assert_eq!(
            request_target("http://example.com?q")?.path_with_query,
            "/?q"
        );
        Ok(())
    }

    #[test]
    fn request_target_rejects_invalid_urls() {
        let cases = [
            (
                "example.com/path",
                "missing scheme, expected `http://` or `https://`",
            ),
            (
                "127.0.0.1:80/path",
                "missing scheme, expected `http://` or `https://`",
            ),
            (
                "ftp://example.com/",
                "unsupported scheme, expected `http` or `https`",
            ),
            ("http:///path", "missing host"),
            ("http:/path", "missing host"),
            (
                "http://user:pass@example.com/",
                "credentials in the URL are not supported",
            ),
            (
                "http://127.0.0.1:80@169.254.169.254/",
                "credentials in the URL are not supported",
            ),
            (
                "http://example.com/a b",
                "contains whitespace or control characters",
            ),
            (
                "http://example.com/\r\nx: y",
                "contains whitespace or control characters",
            ),
            (
                "http://exämple.com/",
                "contains non-ASCII characters, which must be percent-encoded",
            ),
        ];
        for (url, expected) in cases {
            match request_target(url) {
                Err(HttpError::InvalidUrl { reason, .. }) => assert_eq!(reason, expected, "{url}"),
                other => panic!("`{url}` gave {other:?}"),
            }
        }
    }
}
