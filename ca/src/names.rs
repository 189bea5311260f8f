//! Rules for the names that go into certificates.

use std::net::IpAddr;

use crate::error::CaError;

/// Maximum length of a DNS name in presentation form without the trailing
/// dot (RFC 1035).
pub const MAX_DNS_NAME_LEN: usize = 253;

/// Maximum length of one DNS label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// Maximum length in characters of a common name or an organization
/// (`ub-common-name` and `ub-organization-name` in RFC 5280).
pub const MAX_NAME_ATTRIBUTE_LEN: usize = 64;

/// Maximum number of subject alternative names in one certificate, a limit
/// of this service that keeps a single request cheap to validate and sign.
pub const MAX_SUBJECT_ALT_NAMES: usize = 100;

/// Maximum length of an email address (RFC 5321: a path of 256 octets
/// including the angle brackets).
pub const MAX_EMAIL_LEN: usize = 254;

/// Maximum length of a local part of an email address (RFC 5321).
pub const MAX_EMAIL_LOCAL_LEN: usize = 64;

/// Maximum length of a URI SAN, a limit of this service.
pub const MAX_URI_LEN: usize = 2048;

/// Maximum length of an issuer name.
pub const MAX_ISSUER_NAME_LEN: usize = 64;

/// Normalizes and validates a DNS name for a dNSName SAN.
///
/// One trailing dot is removed and empty labels are rejected. The rest is
/// then mapped with IDNA (UTS #46), which lowercases it and converts
/// internationalized labels to A-labels (`bücher` to `xn--bcher-kva`), so
/// every later check and comparison sees one spelling. The result must be
/// at most 253 characters of labels that are 1 to 63 characters of `a-z`,
/// `0-9` and `-`, neither starting nor ending with `-`. A wildcard is
/// allowed only as the whole leftmost label `*` followed by at least two
/// labels, as in `*.example.com`. The last label must not be all digits, so
/// text that resembles an IPv4 address never becomes a dNSName. IP
/// addresses themselves are rejected with a hint to pass them as IP
/// addresses.
pub fn normalize_dns_name(input: &str) -> Result<String, CaError> {
    let invalid = |reason: String| CaError::InvalidDnsName {
        name: input.to_owned(),
        reason,
    };

    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty() {
        return Err(invalid("the name is empty".to_owned()));
    }
    if trimmed.parse::<IpAddr>().is_ok() {
        return Err(invalid(
            "an IP address is not a DNS name; pass it as an IP address".to_owned(),
        ));
    }
    if trimmed.split('.').any(str::is_empty) {
        return Err(invalid("the name has an empty label".to_owned()));
    }
    let (wildcard, rest) = match trimmed.split_once('.') {
        Some(("*", rest)) => (true, rest),
        _ => (false, trimmed),
    };
    let mapped = to_a_labels(rest).map_err(&invalid)?;
    let name = if wildcard {
        format!("*.{mapped}")
    } else {
        mapped
    };
    if name.len() > MAX_DNS_NAME_LEN {
        return Err(invalid(format!(
            "the name is {} characters long, the maximum is {MAX_DNS_NAME_LEN}",
            name.len()
        )));
    }

    let labels: Vec<&str> = name.split('.').collect();
    for (index, label) in labels.iter().enumerate() {
        if *label == "*" {
            if index != 0 {
                return Err(invalid(
                    "a wildcard is allowed only as the leftmost label".to_owned(),
                ));
            }
            if labels.len() < 3 {
                return Err(invalid(
                    "a wildcard must be followed by at least two labels, as in *.example.com"
                        .to_owned(),
                ));
            }
            continue;
        }
        check_label(label).map_err(&invalid)?;
    }

    let last = labels.last().copied().unwrap_or_default();
    if last.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid(format!(
            "the last label {last:?} is all digits, which is not a valid top-level domain"
        )));
    }
    Ok(name)
}

/// Lowercases a name and converts internationalized labels to A-labels.
/// ASCII input is only lowercased, so the label checks can name the exact
/// character that is not allowed; other input goes through IDNA.
fn to_a_labels(name: &str) -> Result<String, String> {
    if name.is_ascii() {
        let lowered = name.to_ascii_lowercase();
        // An A-label that does not decode is not a valid IDNA name.
        if lowered.split('.').any(|label| label.starts_with("xn--")) {
            idna::domain_to_ascii_strict(&lowered)
                .map_err(|_| "the name has an A-label (xn--) that is not valid IDNA".to_owned())?;
        }
        return Ok(lowered);
    }
    idna::domain_to_ascii_strict(name)
        .map_err(|_| "the name is not a valid internationalized domain name (IDNA)".to_owned())
}

fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("the name has an empty label".to_owned());
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!(
            "the label {label:?} is {} characters long, the maximum is {MAX_LABEL_LEN}",
            label.len()
        ));
    }
    if let Some(bad) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(if bad == '*' {
            format!("the label {label:?} contains '*'; a wildcard must be the whole leftmost label")
        } else {
            format!("the label {label:?} contains {bad:?}; only a-z, 0-9 and '-' are allowed")
        });
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("the label {label:?} starts or ends with '-'"));
    }
    Ok(())
}

/// Parses an IP address for an iPAddress SAN (4 octets for IPv4, 16 for
/// IPv6). Zone identifiers and leading zeros in IPv4 octets are rejected.
pub fn parse_ip_address(input: &str) -> Result<IpAddr, CaError> {
    input
        .parse::<IpAddr>()
        .map_err(|_| CaError::InvalidIpAddress {
            input: input.to_owned(),
        })
}

/// Normalizes and validates an email address for an rfc822Name SAN.
///
/// The address is `local@domain`. The local part is kept as written and must
/// be 1 to 64 characters of a dot-atom (RFC 5322): ASCII letters, digits and
/// ``!#$%&'*+/=?^_`{|}~-``, with single dots between them. The domain goes
/// through [`normalize_dns_name`] and may not be a wildcard. Quoted local
/// parts and internationalized local parts (RFC 8398) are rejected.
pub fn normalize_email_address(input: &str) -> Result<String, CaError> {
    let invalid = |reason: String| CaError::InvalidEmailAddress {
        input: input.to_owned(),
        reason,
    };
    if input.len() > MAX_EMAIL_LEN {
        return Err(invalid(format!(
            "the address is {} characters long, the maximum is {MAX_EMAIL_LEN}",
            input.len()
        )));
    }
    let Some((local, domain)) = input.rsplit_once('@') else {
        return Err(invalid("expected local@domain".to_owned()));
    };
    if local.is_empty() || local.len() > MAX_EMAIL_LOCAL_LEN {
        return Err(invalid(format!(
            "the local part must be 1 to {MAX_EMAIL_LOCAL_LEN} characters"
        )));
    }
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
    if local
        .split('.')
        .any(|atom| atom.is_empty() || !atom.chars().all(atext))
    {
        return Err(invalid(
            "the local part must be ASCII letters, digits and !#$%&'*+/=?^_`{|}~- \
             with single dots between them"
                .to_owned(),
        ));
    }
    let domain = normalize_dns_name(domain).map_err(|error| invalid(error.to_string()))?;
    if domain.starts_with("*.") {
        return Err(invalid("the domain may not be a wildcard".to_owned()));
    }
    Ok(format!("{local}@{domain}"))
}

/// Normalizes and validates a URI for a uniformResourceIdentifier SAN.
///
/// The URI must be ASCII without spaces or control characters, at most 2048
/// characters, with a scheme and an authority that names a host:
/// `scheme://host[:port][path][?query][#fragment]`, such as
/// `spiffe://example.org/web` or `https://app.example.com/`. RFC 5280 section
/// 4.2.1.10 matches URI name constraints against that host, so URIs without
/// one (`urn:`, `mailto:`) are rejected. User information (`user@`) is
/// rejected. The scheme and host are lowercased, and the host is a DNS name
/// (checked like [`normalize_dns_name`], no wildcard) or an IP address
/// (IPv6 in brackets).
pub fn normalize_uri(input: &str) -> Result<String, CaError> {
    let invalid = |reason: &str| CaError::InvalidUri {
        input: input.to_owned(),
        reason: reason.to_owned(),
    };
    if input.len() > MAX_URI_LEN {
        return Err(invalid(&format!(
            "the URI is {} characters long, the maximum is {MAX_URI_LEN}",
            input.len()
        )));
    }

    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c);
    if let Some(bad) = input.chars().find(|c| !allowed(*c)) {
        return Err(invalid(&format!(
            "the URI contains {bad:?}; percent-encode it"
        )));
    }
    let Some((scheme, rest)) = input.split_once(':') else {
        return Err(invalid("the URI has no scheme, such as https: or spiffe:"));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(invalid("the scheme is not valid"));
    }

    let Some(after_slashes) = rest.strip_prefix("//") else {
        return Err(invalid(
            "the URI has no host; expected scheme://host/..., such as spiffe://example.org/web",
        ));
    };
    let authority_end = after_slashes
        .find(['/', '?', '#'])
        .unwrap_or(after_slashes.len());
    let (authority, tail) = after_slashes.split_at(authority_end);
    if authority.contains('@') {
        return Err(invalid("user information (user@) is not allowed"));
    }
    let host = uri_host(authority).map_err(|reason| invalid(&reason))?;
    Ok(format!("{}://{host}{tail}", scheme.to_ascii_lowercase()))
}

/// Validates the public base URL of a mount: an `http` or `https` URI with a
/// host, as [`normalize_uri`] accepts it, without a query or fragment.
/// Certificates carry URLs below it, so port 0 is rejected. Its path must
/// reach frontd as written: no empty, `.` or `..` segment, no `[` or `]`,
/// and `%` only before two hex digits. Returns it without a trailing `/`.
pub fn normalize_base_url(input: &str) -> Result<String, CaError> {
    let invalid = |reason: &str| CaError::InvalidUri {
        input: input.to_owned(),
        reason: format!("public_base_url: {reason}"),
    };
    let url = normalize_uri(input).map_err(|error| match error {
        CaError::InvalidUri { input, reason } => CaError::InvalidUri {
            input,
            reason: format!("public_base_url: {reason}"),
        },
        other => invalid(&other.to_string()),
    })?;
    let Some(after_scheme) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err(invalid("the scheme must be http or https"));
    };
    if url.contains(['?', '#']) {
        return Err(invalid("a query or fragment is not allowed"));
    }
    let after_scheme = after_scheme.trim_end_matches('/');
    let (authority, path) =
        after_scheme.split_at(after_scheme.find('/').unwrap_or(after_scheme.len()));
    let port = authority
        .rsplit_once(':')
        .filter(|(_, port)| !port.contains(']'))
        .map(|(_, port)| port);
    if port.is_some_and(|port| port.parse::<u16>() == Ok(0)) {
        return Err(invalid("port 0 cannot be connected to"));
    }
    check_base_url_path(path).map_err(|reason| invalid(&reason))?;
    Ok(url.trim_end_matches('/').to_owned())
}

/// Checks the path of a public base URL (empty or starting with `/`,
/// without a trailing `/`); see [`normalize_base_url`].
fn check_base_url_path(path: &str) -> Result<(), String> {
    for segment in path.split('/').skip(1) {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!(
                "the path {path:?} has an empty, \".\" or \"..\" segment"
            ));
        }
    }
    if path.contains(['[', ']']) {
        return Err(format!(
            "the path {path:?} contains '[' or ']'; percent-encode them"
        ));
    }
    let bytes = path.as_bytes();
    for (index, byte) in bytes.iter().enumerate() {
        let encoded = bytes.get(index + 1..index + 3);
        if *byte == b'%' && !encoded.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
            return Err(format!(
                "the path {path:?} has a '%' that is not followed by two hex digits; \
                 write a literal '%' as %25"
            ));
        }
    }
    Ok(())
}

/// Normalizes the `host[:port]` of a URI authority.
fn uri_host(authority: &str) -> Result<String, String> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (address, after) = bracketed
            .split_once(']')
            .ok_or("the IPv6 host has no closing ']'")?;
        let address: std::net::Ipv6Addr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IPv6 address"))?;
        (format!("[{address}]"), after)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, &authority[host.len()..][..port.len() + 1]),
            None => (authority, ""),
        };
        let host = if let Ok(address) = host.parse::<std::net::Ipv4Addr>() {
            address.to_string()
        } else {
            let name = normalize_dns_name(host).map_err(|error| error.to_string())?;
            if name.starts_with("*.") {
                return Err("the host may not be a wildcard".to_owned());
            }
            name
        };
        (host, port)
    };
    if let Some(digits) = port.strip_prefix(':') {
        if digits.parse::<u16>().is_err() {
            return Err(format!(
                "the port {digits:?} is not a number from 0 to 65535"
            ));
        }
    } else if !port.is_empty() {
        return Err("unexpected text after the host".to_owned());
    }
    Ok(format!("{host}{port}"))
}

/// Validates free text for a subject attribute: not empty or only
/// whitespace, at most 64 characters, no control characters.
fn check_name_attribute(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("the value is empty".to_owned());
    }
    let length = value.chars().count();
    if length > MAX_NAME_ATTRIBUTE_LEN {
        return Err(format!(
            "the value is {length} characters long, the maximum is {MAX_NAME_ATTRIBUTE_LEN}"
        ));
    }
    if let Some(bad) = value.chars().find(|c| c.is_control()) {
        return Err(format!("the value contains the control character {bad:?}"));
    }
    Ok(())
}

/// Validates a free-text common name (client certificates and CA names).
pub fn validate_common_name(value: &str) -> Result<(), CaError> {
    check_name_attribute(value).map_err(|reason| CaError::InvalidCommonName {
        value: value.to_owned(),
        reason,
    })
}

/// Validates an organization name.
pub fn validate_organization(value: &str) -> Result<(), CaError> {
    check_name_attribute(value).map_err(|reason| CaError::InvalidOrganization {
        value: value.to_owned(),
        reason,
    })
}

/// Validates an issuer name: `^[a-z0-9][a-z0-9_-]{0,63}$`.
pub fn validate_issuer_name(name: &str) -> Result<(), CaError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if first_ok && rest_ok && name.len() <= MAX_ISSUER_NAME_LEN {
        Ok(())
    } else {
        Err(CaError::InvalidIssuerName {
            name: name.to_owned(),
        })
    }
}

/// The subject alternative names of a leaf, normalized and without
/// duplicates, in the order they were first given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectAltNames {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub email_addresses: Vec<String>,
    pub uris: Vec<String>,
}

impl SubjectAltNames {
    /// Adds a DNS name after [`normalize_dns_name`], ignoring a duplicate.
    pub fn add_dns_name(&mut self, input: &str) -> Result<(), CaError> {
        let name = normalize_dns_name(input)?;
        if !self.dns_names.contains(&name) {
            self.dns_names.push(name);
        }
        Ok(())
    }

    /// Adds an IP address after [`parse_ip_address`], ignoring a duplicate
    /// (compared as addresses, so `2001:db8::1` and `2001:DB8:0::1` are one).
    pub fn add_ip_address(&mut self, input: &str) -> Result<(), CaError> {
        let address = parse_ip_address(input)?;
        if !self.ip_addresses.contains(&address) {
            self.ip_addresses.push(address);
        }
        Ok(())
    }

    /// Adds an email address after [`normalize_email_address`], ignoring a
    /// duplicate.
    pub fn add_email_address(&mut self, input: &str) -> Result<(), CaError> {
        let address = normalize_email_address(input)?;
        if !self.email_addresses.contains(&address) {
            self.email_addresses.push(address);
        }
        Ok(())
    }

    /// Adds a URI after [`normalize_uri`], ignoring a duplicate.
    pub fn add_uri(&mut self, input: &str) -> Result<(), CaError> {
        let uri = normalize_uri(input)?;
        if !self.uris.contains(&uri) {
            self.uris.push(uri);
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.dns_names.len()
            + self.ip_addresses.len()
            + self.email_addresses.len()
            + self.uris.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalized() {
        let cases = [
            ("https://PKI.Example.com/", "https://pki.example.com"),
            ("https://[::1]:8443//", "https://[::1]:8443"),
            (
                "http://pki.example.com/a/b%2F/",
                "http://pki.example.com/a/b%2F",
            ),
            (
                "http://pki.example.com:80/Prefix",
                "http://pki.example.com:80/Prefix",
            ),
            ("http://192.0.2.7:00443", "http://192.0.2.7:00443"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_base_url(input).unwrap(), expected, "{input}");
        }
    }

    #[test]
    fn long_uri_error_shows_the_start() {
        let uri = format!("https://pki.example.com/{}", "a".repeat(100_000));
        for error in [
            normalize_uri(&uri).unwrap_err(),
            normalize_base_url(&uri).unwrap_err(),
        ] {
            let message = error.to_string();
            assert!(message.len() < 300, "{} bytes: {message}", message.len());
            assert!(
                message.contains("\"https://pki.example.com/aaa"),
                "{message}"
            );
            assert!(
                message.contains("is 100024 characters long, the maximum is 2048"),
                "{message}"
            );
        }
    }

    #[test]
    fn unusable_base_urls_are_rejected() {
        let cases = [
            ("ftp://pki.example.com", "the scheme must be http or https"),
            ("https://pki.example.com?x=1", "a query or fragment"),
            ("https://pki.example.com:0", "port 0"),
            ("https://[::1]:000/", "port 0"),
            ("https://pki.example.com//a", "empty"),
            ("https://pki.example.com/a//b", "empty"),
            ("https://pki.example.com/a/./b", "segment"),
            ("https://pki.example.com/a/..", "segment"),
            ("https://pki.example.com/%zz", "two hex digits"),
            ("https://pki.example.com/a%", "two hex digits"),
            ("https://pki.example.com/a%2", "two hex digits"),
            ("https://pki.example.com/a[b]", "'[' or ']'"),
            (
                "https://user@pki.example.com",
                "public_base_url: user information (user@) is not allowed",
            ),
        ];
        for (input, expected) in cases {
            let error = normalize_base_url(input).unwrap_err().to_string();
            assert!(error.contains(expected), "{input}: {error}");
            assert_eq!(
                error.matches("invalid URI").count(),
                1,
                "{input}: the message repeats itself: {error}"
            );
        }
    }

    #[test]
    fn dns_names_are_lowercased_and_stripped() {
        assert_eq!(
            normalize_dns_name("SUB.EXAMPLE.COM").unwrap(),
            "sub.example.com"
        );
        assert_eq!(
            normalize_dns_name("Other.Example.com.").unwrap(),
            "other.example.com"
        );
        assert_eq!(
            normalize_dns_name("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(normalize_dns_name("localhost").unwrap(), "localhost");
        assert_eq!(
            normalize_dns_name("a-1.b2.example").unwrap(),
            "a-1.b2.example"
        );
    }

    #[test]
    fn internationalized_names_become_a_labels() {
        assert_eq!(
            normalize_dns_name("Bücher.Example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            normalize_dns_name("*.bücher.example.").unwrap(),
            "*.xn--bcher-kva.example"
        );
        let mut sans = SubjectAltNames::default();
        sans.add_dns_name("bücher.example").unwrap();
        sans.add_dns_name("XN--BCHER-KVA.example").unwrap();
        assert_eq!(sans.dns_names, ["xn--bcher-kva.example"]);
        for input in ["xn--a.example", "bü cher.example", "bücher..example"] {
            assert!(normalize_dns_name(input).is_err(), "{input:?}");
        }
    }

    #[test]
    fn email_addresses_are_checked() {
        assert_eq!(
            normalize_email_address("Ops.Team+ca@Example.COM.").unwrap(),
            "Ops.Team+ca@example.com"
        );
        assert_eq!(
            normalize_email_address("a@bücher.example").unwrap(),
            "a@xn--bcher-kva.example"
        );
        for input in [
            "",
            "example.com",
            "@example.com",
            "a@",
            "a..b@example.com",
            ".a@example.com",
            "a b@example.com",
            "\"a\"@example.com",
            "jörg@example.com",
            "a@*.example.com",
            "a@192.0.2.1",
            "a@exa_mple.com",
        ] {
            let error = normalize_email_address(input).expect_err(input);
            assert!(
                matches!(&error, CaError::InvalidEmailAddress { input: named, .. } if named == input),
                "{input:?} gave {error:?}"
            );
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(normalize_email_address(&long_local).is_err());
    }

    #[test]
    fn uris_are_checked() {
        let cases = [
            ("spiffe://Example.org/ns/web", "spiffe://example.org/ns/web"),
            (
                "HTTPS://App.Example.com:8443/x?y=1#z",
                "https://app.example.com:8443/x?y=1#z",
            ),
            ("https://192.0.2.1/", "https://192.0.2.1/"),
            ("https://[2001:DB8::1]:443/", "https://[2001:db8::1]:443/"),
            (
                "https://XN--BCHER-KVA.example/",
                "https://xn--bcher-kva.example/",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_uri(input).unwrap(), expected, "{input:?}");
        }
        for input in [
            "",
            "example.com",
            "urn:uuid:1234",
            "mailto:a@example.com",
            "https://",
            "https:///path",
            "https://user@example.com/",
            "https://*.example.com/",
            "https://example.com:99999/",
            "https://example.com:x/",
            "https://[2001:db8::1/",
            "https://exa mple.com/",
            "https://example.com/a b",
            "1https://example.com/",
            "https://example..com/",
            "https://bücher.example/",
        ] {
            let error = normalize_uri(input).expect_err(input);
            assert!(
                matches!(&error, CaError::InvalidUri { input: named, .. } if named == input),
                "{input:?} gave {error:?}"
            );
        }
    }

    #[test]
    fn wildcard_table() {
        let cases = [
            ("*.example.com", true),
            ("*.EXAMPLE.com", true),
            ("*.a.b.example.com", true),
            ("*.*.example.com", false),
            ("foo.*.example.com", false),
            ("f*.example.com", false),
            ("*foo.example.com", false),
            ("*.com", false),
            ("*", false),
            ("*.", false),
            ("example.*", false),
            ("**.example.com", false),
        ];
        for (input, accepted) in cases {
            assert_eq!(normalize_dns_name(input).is_ok(), accepted, "{input:?}");
        }
    }

    #[test]
    fn bad_dns_names_are_rejected() {
        let long_label = "a".repeat(64);
        let long_name = format!("{}.example.com", ["abcdefghi"; 25].join("."));
        let cases = [
            "",
            ".",
            "..",
            "example..com",
            ".example.com",
            "example.com..",
            "-example.com",
            "example-.com",
            "exa_mple.com",
            "exa mple.com",
            "Example Server A",
            "example.com/path",
            "192.0.2.10",
            "2001:db8::1",
            "1.2.3",
            "10.0.0.256",
            long_label.as_str(),
            long_name.as_str(),
        ];
        for input in cases {
            let error = normalize_dns_name(input).expect_err(input);
            assert!(
                matches!(&error, CaError::InvalidDnsName { name, .. } if name == input),
                "{input:?} gave {error:?}"
            );
        }
    }

    #[test]
    fn label_and_name_limits_are_inclusive() {
        let label = "a".repeat(63);
        assert!(normalize_dns_name(&format!("{label}.example")).is_ok());
        // 4 labels of 61 plus 3 dots make 247, and one more of 5 makes 253.
        let name = format!("{0}.{0}.{0}.{0}.abcde", "b".repeat(61));
        assert_eq!(name.len(), 253);
        assert!(normalize_dns_name(&name).is_ok());
        assert!(normalize_dns_name(&format!("{name}.")).is_ok());
        assert!(normalize_dns_name(&format!("{name}f")).is_err());
    }

    #[test]
    fn ip_addresses_parse() {
        assert_eq!(
            parse_ip_address("192.0.2.10").unwrap().to_string(),
            "192.0.2.10"
        );
        assert_eq!(
            parse_ip_address("2001:db8::1").unwrap().to_string(),
            "2001:db8::1"
        );
        for input in [
            "",
            "192.0.2",
            "192.0.2.256",
            "010.0.0.1",
            "fe80::1%eth0",
            "db.example.com",
            " 192.0.2.1",
        ] {
            assert!(parse_ip_address(input).is_err(), "{input:?}");
        }
    }

    #[test]
    fn common_names_are_checked() {
        assert!(validate_common_name("Example Client A").is_ok());
        assert!(validate_common_name(&"é".repeat(64)).is_ok());
        for value in ["", "   ", "tab\there", "new\nline", "nul\0byte"] {
            assert!(validate_common_name(value).is_err(), "{value:?}");
        }
        assert!(validate_common_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn issuer_names_follow_the_pattern() {
        for name in ["a", "0", "web", "web_1", "web-2", &"a".repeat(64)] {
            assert!(validate_issuer_name(name).is_ok(), "{name:?}");
        }
        for name in [
            "",
            "_a",
            "-a",
            "Web",
            "a b",
            "a/b",
            "../x",
            "a.b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(validate_issuer_name(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn names_dedup_after_normalizing() {
        let mut sans = SubjectAltNames::default();
        sans.add_dns_name("SUB.EXAMPLE.COM").unwrap();
        sans.add_dns_name("sub.example.com.").unwrap();
        sans.add_dns_name("Other.Example.com").unwrap();
        sans.add_ip_address("2001:db8::1").unwrap();
        sans.add_ip_address("2001:DB8:0::1").unwrap();
        assert_eq!(sans.dns_names, ["sub.example.com", "other.example.com"]);
        assert_eq!(sans.ip_addresses.len(), 1);
    }
}
