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

/// Maximum length of an issuer name.
pub const MAX_ISSUER_NAME_LEN: usize = 64;

/// Normalizes and validates a DNS name for a dNSName SAN.
///
/// The name is lowercased (ASCII) once, before every check, and one trailing
/// dot is removed. It must be at most 253 characters of labels that are 1 to
/// 63 characters of `a-z`, `0-9` and `-`, neither starting nor ending with
/// `-`. A wildcard is allowed only as the whole leftmost label `*` followed
/// by at least two labels, as in `*.example.com`. The last label must not be
/// all digits, so text that resembles an IPv4 address never becomes a
/// dNSName. IP addresses themselves are rejected with a hint to pass them as
/// IP addresses.
pub fn normalize_dns_name(input: &str) -> Result<String, CaError> {
    let invalid = |reason: String| CaError::InvalidDnsName {
        name: input.to_owned(),
        reason,
    };

    let lowered = input.to_ascii_lowercase();
    let name = lowered.strip_suffix('.').unwrap_or(&lowered);
    if name.is_empty() {
        return Err(invalid("the name is empty".to_owned()));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err(invalid(
            "an IP address is not a DNS name; pass it as an IP address".to_owned(),
        ));
    }
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
    Ok(name.to_owned())
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

    pub fn len(&self) -> usize {
        self.dns_names.len() + self.ip_addresses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "bücher.example",
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
