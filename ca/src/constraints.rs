//! Per-issuer constraints on the names and lifetime of the leaves it signs.

use std::net::IpAddr;

use metacrypt_protocol::IssuerConstraints;
use rcgen::{CidrSubnet, GeneralSubtree, NameConstraints};
use time::Duration;

use crate::error::CaError;
use crate::names::{SubjectAltNames, normalize_dns_name, parse_ip_address};
use crate::ttl::parse_ttl;

/// Maximum number of entries in `allowed_domains` and in
/// `allowed_ip_ranges`, a limit of this service.
pub const MAX_CONSTRAINT_ENTRIES: usize = 100;

/// An IP network: an address whose bits past the prefix are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    pub network: IpAddr,
    pub prefix: u8,
}

impl IpRange {
    /// Parses `192.0.2.0/24` or `2001:db8::/32`. An address without a
    /// prefix is a single host (`/32` or `/128`). Host bits past the prefix
    /// must be zero.
    pub fn parse(input: &str) -> Result<Self, CaError> {
        let invalid = |reason: String| CaError::InvalidConstraint {
            field: "allowed_ip_ranges",
            reason: format!("{input:?}: {reason}"),
        };
        let (address, prefix) = match input.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (input, None),
        };
        let network = parse_ip_address(address).map_err(|_| {
            invalid("expected a network such as 10.0.0.0/8 or 2001:db8::/32".to_owned())
        })?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(text) => text
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= max && !text.starts_with('+'))
                .ok_or_else(|| invalid(format!("the prefix length must be 0 to {max}")))?,
            None => max,
        };
        let range = Self { network, prefix };
        if range.masked(network) != network {
            return Err(invalid(format!(
                "host bits are set past the prefix; the network is {}/{prefix}",
                range.masked(network)
            )));
        }
        Ok(range)
    }

    fn mask_bits(&self) -> u128 {
        let width = if self.network.is_ipv4() { 32 } else { 128 };
        let shift = width - u32::from(self.prefix);
        let ones = if shift >= 128 { 0 } else { u128::MAX << shift };
        if width == 32 {
            ones & u128::from(u32::MAX)
        } else {
            ones
        }
    }

    fn masked(&self, address: IpAddr) -> IpAddr {
        let mask = self.mask_bits();
        match address {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & mask as u32).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & mask).into()),
        }
    }

    /// Returns whether `address` is in this network. Addresses of the other
    /// IP version never are.
    pub fn contains(&self, address: IpAddr) -> bool {
        address.is_ipv4() == self.network.is_ipv4() && self.masked(address) == self.network
    }

    fn subnet(&self) -> CidrSubnet {
        let mask = self.mask_bits();
        match self.network {
            IpAddr::V4(v4) => CidrSubnet::V4(v4.octets(), (mask as u32).to_be_bytes()),
            IpAddr::V6(v6) => CidrSubnet::V6(v6.octets(), mask.to_be_bytes()),
        }
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The validated constraints of an issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerPolicy {
    /// Normalized domains; names must equal one or be below one. Any name
    /// when empty.
    pub allowed_domains: Vec<String>,
    pub allow_wildcards: bool,
    pub allow_ip_sans: bool,
    /// Networks IP SANs must be in; any address when empty.
    pub allowed_ip_ranges: Vec<IpRange>,
    /// Maximum leaf lifetime, with the text the operator wrote.
    pub max_ttl: Option<(Duration, String)>,
}

impl Default for IssuerPolicy {
    /// No name restriction, wildcards and IP SANs allowed, no maximum TTL.
    fn default() -> Self {
        Self {
            allowed_domains: Vec::new(),
            allow_wildcards: true,
            allow_ip_sans: true,
            allowed_ip_ranges: Vec::new(),
            max_ttl: None,
        }
    }
}

impl IssuerPolicy {
    /// Validates and normalizes constraints from a request or from storage.
    /// Domains go through [`normalize_dns_name`] and may not be wildcards,
    /// networks through [`IpRange::parse`], the TTL through [`parse_ttl`].
    pub fn from_constraints(constraints: &IssuerConstraints) -> Result<Self, CaError> {
        let too_many = |field: &'static str, count: usize| CaError::InvalidConstraint {
            field,
            reason: format!("{count} entries given, the maximum is {MAX_CONSTRAINT_ENTRIES}"),
        };
        if constraints.allowed_domains.len() > MAX_CONSTRAINT_ENTRIES {
            return Err(too_many(
                "allowed_domains",
                constraints.allowed_domains.len(),
            ));
        }
        if constraints.allowed_ip_ranges.len() > MAX_CONSTRAINT_ENTRIES {
            return Err(too_many(
                "allowed_ip_ranges",
                constraints.allowed_ip_ranges.len(),
            ));
        }
        let mut allowed_domains = Vec::new();
        for input in &constraints.allowed_domains {
            let domain = normalize_dns_name(input).map_err(|error| CaError::InvalidConstraint {
                field: "allowed_domains",
                reason: error.to_string(),
            })?;
            if domain.starts_with("*.") {
                return Err(CaError::InvalidConstraint {
                    field: "allowed_domains",
                    reason: format!(
                        "{input:?}: a domain covers its subdomains already; leave out the '*.'"
                    ),
                });
            }
            if !allowed_domains.contains(&domain) {
                allowed_domains.push(domain);
            }
        }
        let mut allowed_ip_ranges = Vec::new();
        for input in &constraints.allowed_ip_ranges {
            let range = IpRange::parse(input)?;
            if !allowed_ip_ranges.contains(&range) {
                allowed_ip_ranges.push(range);
            }
        }
        if !constraints.allow_ip_sans && !allowed_ip_ranges.is_empty() {
            return Err(CaError::InvalidConstraint {
                field: "allowed_ip_ranges",
                reason: "IP ranges were given but allow_ip_sans is false".to_owned(),
            });
        }
        let max_ttl = match &constraints.max_ttl {
            Some(text) => Some((
                parse_ttl(text).map_err(|error| CaError::InvalidConstraint {
                    field: "max_ttl",
                    reason: error.to_string(),
                })?,
                text.clone(),
            )),
            None => None,
        };
        Ok(Self {
            allowed_domains,
            allow_wildcards: constraints.allow_wildcards,
            allow_ip_sans: constraints.allow_ip_sans,
            allowed_ip_ranges,
            max_ttl,
        })
    }

    /// Returns the constraints in normalized form, as `get-issuer` shows
    /// them.
    pub fn to_constraints(&self) -> IssuerConstraints {
        IssuerConstraints {
            allowed_domains: self.allowed_domains.clone(),
            allow_wildcards: self.allow_wildcards,
            allow_ip_sans: self.allow_ip_sans,
            allowed_ip_ranges: self
                .allowed_ip_ranges
                .iter()
                .map(ToString::to_string)
                .collect(),
            max_ttl: self.max_ttl.as_ref().map(|(_, text)| text.clone()),
        }
    }

    fn domain_allowed(&self, name: &str) -> bool {
        let base = name.strip_prefix("*.").unwrap_or(name);
        self.allowed_domains.is_empty()
            || self.allowed_domains.iter().any(|domain| {
                base == domain
                    || base
                        .strip_suffix(domain.as_str())
                        .is_some_and(|prefix| prefix.ends_with('.'))
            })
    }

    fn check_dns_name(&self, name: &str, what: &str) -> Result<(), CaError> {
        if name.starts_with("*.") && !self.allow_wildcards {
            return Err(CaError::NameNotAllowed {
                name: name.to_owned(),
                reason: "the issuer does not allow wildcards".to_owned(),
            });
        }
        if !self.domain_allowed(name) {
            return Err(CaError::NameNotAllowed {
                name: name.to_owned(),
                reason: format!(
                    "the {what} is outside the issuer's allowed domains ({})",
                    self.allowed_domains.join(", ")
                ),
            });
        }
        Ok(())
    }

    fn check_ip_address(&self, address: IpAddr) -> Result<(), CaError> {
        if !self.allow_ip_sans {
            return Err(CaError::NameNotAllowed {
                name: address.to_string(),
                reason: "the issuer does not allow IP addresses".to_owned(),
            });
        }
        if !self.allowed_ip_ranges.is_empty()
            && !self
                .allowed_ip_ranges
                .iter()
                .any(|range| range.contains(address))
        {
            let ranges: Vec<String> = self
                .allowed_ip_ranges
                .iter()
                .map(ToString::to_string)
                .collect();
            return Err(CaError::NameNotAllowed {
                name: address.to_string(),
                reason: format!(
                    "the address is outside the issuer's allowed IP ranges ({})",
                    ranges.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Checks every SAN of a leaf, and a common name that is a DNS name or
    /// an IP address (verifiers such as OpenSSL apply name constraints to a
    /// host-like common name too).
    pub fn check_names(&self, common_name: &str, sans: &SubjectAltNames) -> Result<(), CaError> {
        if let Ok(address) = parse_ip_address(common_name) {
            self.check_ip_address(address)?;
        } else if let Ok(name) = normalize_dns_name(common_name) {
            self.check_dns_name(&name, "common name")?;
        }
        for name in &sans.dns_names {
            self.check_dns_name(name, "DNS name")?;
        }
        for address in &sans.ip_addresses {
            self.check_ip_address(*address)?;
        }
        for address in &sans.email_addresses {
            let domain = address.rsplit_once('@').map_or("", |(_, domain)| domain);
            self.check_dns_name(domain, "email domain")?;
        }
        for uri in &sans.uris {
            let host = uri_host(uri);
            match host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                Ok(address) => self.check_ip_address(address)?,
                Err(_) => self.check_dns_name(host, "URI host")?,
            }
        }
        Ok(())
    }

    /// Returns the NameConstraints extension that expresses these
    /// constraints to verifiers, or `None` when nothing is restricted.
    ///
    /// Allowed domains become permitted dNSName subtrees and rfc822Name
    /// subtrees (the domain for mailboxes on it, `.domain` for mailboxes
    /// below it). Allowed ranges become permitted iPAddress subtrees, and
    /// `allow_ip_sans = false` excludes all of IPv4 and IPv6. Wildcards and
    /// the maximum TTL have no X.509 form, so only the engine enforces them.
    // NOTE: rcgen 0.14 cannot write uniformResourceIdentifier subtrees, so
    // URI hosts are checked by the engine but not constrained for verifiers.
    pub(crate) fn name_constraints(&self) -> Option<NameConstraints> {
        let mut permitted = Vec::new();
        for domain in &self.allowed_domains {
            permitted.push(GeneralSubtree::DnsName(domain.clone()));
        }
        for domain in &self.allowed_domains {
            permitted.push(GeneralSubtree::Rfc822Name(domain.clone()));
            permitted.push(GeneralSubtree::Rfc822Name(format!(".{domain}")));
        }
        for range in &self.allowed_ip_ranges {
            permitted.push(GeneralSubtree::IpAddress(range.subnet()));
        }
        let mut excluded = Vec::new();
        if !self.allow_ip_sans {
            excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])));
            excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])));
        }
        if permitted.is_empty() && excluded.is_empty() {
            return None;
        }
        Some(NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: excluded,
        })
    }
}

/// Returns the host of a URI that [`crate::normalize_uri`] produced, with
/// brackets for IPv6.
fn uri_host(uri: &str) -> &str {
    let after_scheme = uri.split_once("://").map_or("", |(_, rest)| rest);
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    if authority.starts_with('[') {
        authority
            .split_once(']')
            .map_or(authority, |(host, _)| &authority[..host.len() + 1])
    } else {
        authority.split(':').next().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(domains: &[&str], wildcards: bool, ip: bool, ranges: &[&str]) -> IssuerPolicy {
        IssuerPolicy::from_constraints(&IssuerConstraints {
            allowed_domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            allow_wildcards: wildcards,
            allow_ip_sans: ip,
            allowed_ip_ranges: ranges.iter().map(|r| (*r).to_owned()).collect(),
            max_ttl: None,
        })
        .unwrap()
    }

    fn sans(dns: &[&str], ips: &[&str], emails: &[&str], uris: &[&str]) -> SubjectAltNames {
        let mut sans = SubjectAltNames::default();
        for name in dns {
            sans.add_dns_name(name).unwrap();
        }
        for address in ips {
            sans.add_ip_address(address).unwrap();
        }
        for address in emails {
            sans.add_email_address(address).unwrap();
        }
        for uri in uris {
            sans.add_uri(uri).unwrap();
        }
        sans
    }

    #[test]
    fn ip_ranges_parse_and_match() {
        let range = IpRange::parse("10.0.0.0/8").unwrap();
        assert!(range.contains("10.255.0.1".parse().unwrap()));
        assert!(!range.contains("11.0.0.1".parse().unwrap()));
        assert!(!range.contains("::ffff:10.0.0.1".parse().unwrap()));
        let v6 = IpRange::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert_eq!(
            IpRange::parse("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            IpRange::parse("0.0.0.0/0").unwrap().to_string(),
            "0.0.0.0/0"
        );
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "x/8",
            "",
            "::/129",
        ] {
            let error = IpRange::parse(bad).expect_err(bad);
            assert!(
                error.to_string().contains("allowed_ip_ranges"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn domains_match_only_at_label_boundaries() {
        let policy = policy(&["Example.com."], true, true, &[]);
        assert_eq!(policy.allowed_domains, ["example.com"]);
        let ok = sans(
            &[
                "example.com",
                "a.example.com",
                "*.b.example.com",
                "*.example.com",
            ],
            &[],
            &["ops@example.com", "x@mail.example.com"],
            &["spiffe://example.com/web", "https://a.example.com:8443/"],
        );
        assert!(policy.check_names("Client A", &ok).is_ok());
        for (dns, email, uri) in [
            (&["badexample.com"][..], &[][..], &[][..]),
            (&["example.com.evil.org"][..], &[][..], &[][..]),
            (&[][..], &["a@example.org"][..], &[][..]),
            (&[][..], &[][..], &["spiffe://example.org/web"][..]),
        ] {
            let names = sans(dns, &[], email, uri);
            let error = policy.check_names("Client A", &names).unwrap_err();
            assert!(matches!(error, CaError::NameNotAllowed { .. }), "{error}");
        }
        let error = policy
            .check_names("other.org", &SubjectAltNames::default())
            .unwrap_err();
        assert!(error.to_string().contains("common name"), "{error}");
    }

    #[test]
    fn wildcards_and_ips_follow_flags() {
        let strict = policy(&[], false, false, &[]);
        let wildcard = sans(&["*.example.com"], &[], &[], &[]);
        assert!(strict.check_names("x", &wildcard).is_err());
        let ip = sans(&[], &["192.0.2.10"], &[], &[]);
        assert!(strict.check_names("x", &ip).is_err());
        assert!(
            strict
                .check_names("192.0.2.10", &SubjectAltNames::default())
                .is_err()
        );
        let uri_ip = sans(&[], &[], &[], &["https://[2001:db8::1]/"]);
        assert!(strict.check_names("x", &uri_ip).is_err());

        let ranged = policy(&[], true, true, &["192.0.2.0/24"]);
        assert!(ranged.check_names("x", &ip).is_ok());
        let outside = sans(&[], &["198.51.100.1"], &[], &[]);
        assert!(ranged.check_names("x", &outside).is_err());
        let v6 = sans(&[], &["2001:db8::1"], &[], &[]);
        assert!(ranged.check_names("x", &v6).is_err());
    }

    #[test]
    fn bad_constraints_name_the_field() {
        let cases = [
            (
                IssuerConstraints {
                    allowed_domains: vec!["*.example.com".to_owned()],
                    ..IssuerConstraints::default()
                },
                "allowed_domains",
            ),
            (
                IssuerConstraints {
                    allowed_domains: vec!["exa mple.com".to_owned()],
                    ..IssuerConstraints::default()
                },
                "allowed_domains",
            ),
            (
                IssuerConstraints {
                    allowed_ip_ranges: vec!["10.0.0.1/8".to_owned()],
                    ..IssuerConstraints::default()
                },
                "allowed_ip_ranges",
            ),
            (
                IssuerConstraints {
                    allow_ip_sans: false,
                    allowed_ip_ranges: vec!["10.0.0.0/8".to_owned()],
                    ..IssuerConstraints::default()
                },
                "allowed_ip_ranges",
            ),
            (
                IssuerConstraints {
                    max_ttl: Some("soon".to_owned()),
                    ..IssuerConstraints::default()
                },
                "max_ttl",
            ),
        ];
        for (constraints, field) in cases {
            let error = IssuerPolicy::from_constraints(&constraints).unwrap_err();
            assert!(
                error.to_string().starts_with(&format!("invalid {field}")),
                "{error}"
            );
        }
    }

    #[test]
    fn unrestricted_policy_has_no_extension() {
        assert!(policy(&[], true, true, &[]).name_constraints().is_none());
        let constraints = policy(&["example.com"], false, false, &[])
            .name_constraints()
            .unwrap();
        assert_eq!(constraints.permitted_subtrees.len(), 3);
        assert_eq!(constraints.excluded_subtrees.len(), 2);
    }
}
