//! Access policy: identifiers, resources, rules and the matcher.
//!
//! A resource is the canonical string `{mount}/{operation}`, plus
//! `/{issuer}` for the CA operations that name an issuer. A rule pattern is
//! made of `/`-separated segments: a literal identifier, `*` for exactly one
//! whole segment, or a final `**` for one or more remaining segments. There
//! is no implicit prefix match, so `pki/issue` does not match
//! `pki/issue/web`, and `pki/issue/web` does not match `pki/issue/web2`.
//!
//! [`evaluate`] decides a request: admins bypass policy, any matching deny
//! wins over every allow whatever the rule order, and without a matching
//! allow the request is denied.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::messages::Caller;

/// Maximum length of an identifier (mount, issuer, rule name) in bytes.
pub const MAX_IDENTIFIER_LEN: usize = 64;

/// Maximum number of stored rules.
pub const MAX_RULES: usize = 1000;

/// Maximum number of entries in each list of a rule.
pub const MAX_RULE_ENTRIES: usize = 256;

/// Maximum length of a username or role in a rule, in bytes.
pub const MAX_SUBJECT_LEN: usize = 128;

/// The role that makes an MCIAS user a Metacrypt admin.
pub const ADMIN_ROLE: &str = "admin";

/// Checks that `value` is an identifier: 1 to 64 characters of `a-z`,
/// `0-9`, `_` and `-`, starting with a letter or digit. Uppercase letters
/// are rejected rather than folded. `kind` names the value in the message,
/// such as `mount name`.
pub fn check_identifier(kind: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{kind} is empty"));
    }
    if value.bytes().any(|byte| byte.is_ascii_uppercase()) {
        return Err(format!(
            "invalid {kind} {value:?}: identifiers are lowercase, and uppercase letters are rejected"
        ));
    }
    let bytes = value.as_bytes();
    let valid = value.len() <= MAX_IDENTIFIER_LEN
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || *byte == b'_' || *byte == b'-'
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} {value:?}: expected 1 to {MAX_IDENTIFIER_LEN} characters of a-z, \
             0-9, '_' and '-', starting with a letter or digit"
        ))
    }
}

/// A canonical resource: `{mount}/{operation}[/{issuer}]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resource {
    pub mount: String,
    pub operation: String,
    pub issuer: Option<String>,
}

impl Resource {
    /// Builds a resource from its parts, checking each as an identifier.
    pub fn new(mount: &str, operation: &str, issuer: Option<&str>) -> Result<Self, String> {
        check_identifier("mount name", mount)?;
        check_identifier("operation", operation)?;
        if let Some(issuer) = issuer {
            check_identifier("issuer name", issuer)?;
        }
        Ok(Self {
            mount: mount.to_owned(),
            operation: operation.to_owned(),
            issuer: issuer.map(str::to_owned),
        })
    }

    /// Parses the canonical string form.
    pub fn parse(text: &str) -> Result<Self, String> {
        let segments: Vec<&str> = text.split('/').collect();
        match segments.as_slice() {
            [mount, operation] => Self::new(mount, operation, None),
            [mount, operation, issuer] => Self::new(mount, operation, Some(issuer)),
            _ => Err(format!(
                "invalid resource {text:?}: expected MOUNT/OPERATION or MOUNT/OPERATION/ISSUER"
            )),
        }
    }

    fn segments(&self) -> Vec<&str> {
        let mut segments = vec![self.mount.as_str(), self.operation.as_str()];
        segments.extend(self.issuer.as_deref());
        segments
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.mount, self.operation)?;
        if let Some(issuer) = &self.issuer {
            write!(f, "/{issuer}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// A final `**`: one or more segments.
    Rest,
}

/// A parsed resource pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        if parts.len() < 2 {
            return Err(format!(
                "invalid resource pattern {text:?}: expected at least MOUNT/OPERATION, \
                 such as pki/issue/web or pki/**"
            ));
        }
        let mut segments = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let segment = match *part {
                "*" => Segment::One,
                "**" if index + 1 == parts.len() => Segment::Rest,
                "**" => {
                    return Err(format!(
                        "invalid resource pattern {text:?}: '**' is allowed only as the last segment"
                    ));
                }
                part if part.contains('*') => {
                    return Err(format!(
                        "invalid resource pattern {text:?}: '*' must be a whole segment"
                    ));
                }
                part => {
                    check_identifier("resource segment", part)
                        .map_err(|error| format!("invalid resource pattern {text:?}: {error}"))?;
                    Segment::Literal(part.to_owned())
                }
            };
            segments.push(segment);
        }
        let fixed = segments
            .iter()
            .filter(|segment| **segment != Segment::Rest)
            .count();
        if fixed > 3 {
            return Err(format!(
                "invalid resource pattern {text:?}: resources have at most 3 segments \
                 (MOUNT/OPERATION/ISSUER)"
            ));
        }
        Ok(Self { segments })
    }

    pub fn matches(&self, resource: &Resource) -> bool {
        let target = resource.segments();
        let (fixed, rest) = match self.segments.split_last() {
            Some((Segment::Rest, fixed)) => (fixed, true),
            _ => (self.segments.as_slice(), false),
        };
        let length_fits = if rest {
            target.len() > fixed.len()
        } else {
            target.len() == fixed.len()
        };
        length_fits
            && fixed
                .iter()
                .zip(&target)
                .all(|(segment, value)| match segment {
                    Segment::Literal(literal) => literal == value,
                    Segment::One | Segment::Rest => true,
                })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// One policy rule. It applies to a caller whose username is in `users`
/// (`*` means any authenticated user) or who has a role in `roles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    pub effect: Effect,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub resources: Vec<String>,
}

impl PolicyRule {
    /// Checks the rule's lists and parses every resource pattern.
    pub fn validate(&self) -> Result<(), String> {
        if self.users.is_empty() && self.roles.is_empty() {
            return Err("rule applies to nobody: users and roles are both empty".to_owned());
        }
        if self.resources.is_empty() {
            return Err("rule has no resources".to_owned());
        }
        for (field, list) in [
            ("users", &self.users),
            ("roles", &self.roles),
            ("resources", &self.resources),
        ] {
            if list.len() > MAX_RULE_ENTRIES {
                return Err(format!(
                    "{field} has {} entries: the maximum is {MAX_RULE_ENTRIES}",
                    list.len()
                ));
            }
        }
        for (field, list) in [("users", &self.users), ("roles", &self.roles)] {
            for name in list {
                let valid = !name.is_empty()
                    && name.len() <= MAX_SUBJECT_LEN
                    && !name.chars().any(|c| c.is_control() || c.is_whitespace());
                if !valid {
                    return Err(format!(
                        "invalid entry {name:?} in {field}: expected 1 to {MAX_SUBJECT_LEN} \
                         bytes without spaces or control characters"
                    ));
                }
            }
        }
        for resource in &self.resources {
            Pattern::parse(resource)?;
        }
        Ok(())
    }

    /// Returns whether the rule names the caller.
    pub fn applies_to(&self, caller: &Caller) -> bool {
        self.users
            .iter()
            .any(|user| user == "*" || *user == caller.username)
            || self.roles.iter().any(|role| caller.roles.contains(role))
    }

    /// Returns whether one of the rule's patterns matches `resource`. A
    /// pattern that does not parse matches nothing, because stored rules were
    /// validated when they were written.
    pub fn matches(&self, resource: &Resource) -> bool {
        self.resources
            .iter()
            .filter_map(|pattern| Pattern::parse(pattern).ok())
            .any(|pattern| pattern.matches(resource))
    }
}

/// The outcome of a policy check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The rule that decided, or `None` for an admin or when no rule
    /// matched.
    pub rule: Option<String>,
    pub reason: String,
}

/// Decides whether `caller` may act on `resource` under `rules`. Rules are
/// visited in name order, so the rule named in a decision does not depend
/// on the order they were written in.
pub fn evaluate(
    rules: &BTreeMap<String, PolicyRule>,
    caller: &Caller,
    resource: &Resource,
) -> Decision {
    if caller.admin {
        return Decision {
            allowed: true,
            rule: None,
            reason: format!("{} is an admin, and admins bypass policy", caller.username),
        };
    }
    let mut matching = rules
        .iter()
        .filter(|(_, rule)| rule.applies_to(caller) && rule.matches(resource));
    let mut first_allow = None;
    for (name, rule) in matching.by_ref() {
        match rule.effect {
            Effect::Deny => {
                return Decision {
                    allowed: false,
                    rule: Some(name.clone()),
                    reason: format!("rule {name} denies {resource} for {}", caller.username),
                };
            }
            Effect::Allow => {
                first_allow.get_or_insert(name);
            }
        }
    }
    match first_allow {
        Some(name) => Decision {
            allowed: true,
            rule: Some(name.clone()),
            reason: format!("rule {name} allows {resource} for {}", caller.username),
        },
        None => Decision {
            allowed: false,
            rule: None,
            reason: format!("no rule allows {resource} for {}", caller.username),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(effect: Effect, users: &[&str], roles: &[&str], resources: &[&str]) -> PolicyRule {
        PolicyRule {
            effect,
            users: users.iter().map(|s| s.to_string()).collect(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn caller(username: &str, roles: &[&str]) -> Caller {
        Caller {
            username: username.to_owned(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            admin: roles.contains(&ADMIN_ROLE),
            session: None,
        }
    }

    fn rules(list: Vec<(&str, PolicyRule)>) -> BTreeMap<String, PolicyRule> {
        list.into_iter()
            .map(|(name, rule)| (name.to_owned(), rule))
            .collect()
    }

    #[test]
    fn identifier_rules() {
        for good in ["pki", "a", "0a", "web-server_2", &"a".repeat(64)] {
            assert!(check_identifier("name", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "a.b",
            "a b",
            "a/b",
            "..",
            "a\0",
            "é",
            &"a".repeat(65),
        ] {
            assert!(check_identifier("name", bad).is_err(), "{bad:?}");
        }
        let error = check_identifier("mount name", "Pki").unwrap_err();
        assert!(error.contains("lowercase"), "{error}");
    }

    #[test]
    fn pattern_matching_table() {
        // (pattern, resource, matches)
        let table = [
            ("pki/*", "pki/list-issuers", true),
            ("pki/*", "pki/issue/web", false),
            ("pki/*/web", "pki/issue/web", true),
            ("pki/*/web", "pki/issue/web2", false),
            ("pki/issue/web", "pki/issue/web", true),
            ("pki/issue/web", "pki/issue/web2", false),
            ("pki/issue/web", "pki/issue/we", false),
            ("pki/issue", "pki/issue/web", false),
            ("pki/**", "pki/issue/web", true),
            ("pki/**", "pki/list-certs", true),
            ("pki/**", "pki2/list-certs", false),
            ("pki/issue/**", "pki/issue/web", true),
            ("pki/issue/**", "pki/issue", false),
            ("*/issue/*", "other/issue/x", true),
            ("*/**", "a/b", true),
            ("pk/**", "pki/issue/web", false),
        ];
        for (pattern, resource, expected) in table {
            let parsed = Pattern::parse(pattern).unwrap();
            let resource = Resource::parse(resource).unwrap();
            assert_eq!(
                parsed.matches(&resource),
                expected,
                "{pattern} against {resource}"
            );
        }
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        for bad in [
            "pki",
            "pki/is*",
            "pki/**/web",
            "**",
            "pki//issue",
            "pki/../x",
            "Pki/issue",
            "pki/issue/web/extra",
            "pki/ issue",
            "pki/%2e",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resources_parse_and_print() {
        let resource = Resource::parse("pki/issue/web").unwrap();
        assert_eq!(resource.issuer.as_deref(), Some("web"));
        assert_eq!(resource.to_string(), "pki/issue/web");
        for bad in [
            "pki",
            "pki/issue/web/x",
            "pki//web",
            "../issue",
            "PKI/issue",
        ] {
            assert!(Resource::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// Allow `pki/*` and `pki/issue/**` for ops, deny one issuer: requests to
    /// that issuer, to another issuer, and to names that share a prefix.
    #[test]
    fn precedence_table() {
        let set = rules(vec![
            (
                "a-allow-all",
                rule(Effect::Allow, &[], &["ops"], &["pki/*"]),
            ),
            (
                "b-allow-issue",
                rule(Effect::Allow, &[], &["ops"], &["pki/issue/**"]),
            ),
            (
                "z-deny-root",
                rule(Effect::Deny, &["*"], &[], &["pki/issue/root-issuer"]),
            ),
        ]);
        let bob = caller("bob", &["ops"]);
        let eve = caller("eve", &["guest"]);
        // (caller, resource, allowed, rule)
        let table: [(&Caller, &str, bool, Option<&str>); 8] = [
            (&bob, "pki/issue/root-issuer", false, Some("z-deny-root")),
            (&bob, "pki/issue/other", true, Some("b-allow-issue")),
            (&bob, "pki/issue/root-issuer2", true, Some("b-allow-issue")),
            (&bob, "pki/issue/root", true, Some("b-allow-issue")),
            (&bob, "pki/list-issuers", true, Some("a-allow-all")),
            (&bob, "pki2/list-issuers", false, None),
            (&eve, "pki/list-issuers", false, None),
            (&eve, "pki/issue/root-issuer", false, Some("z-deny-root")),
        ];
        for (who, resource, allowed, rule) in table {
            let resource = Resource::parse(resource).unwrap();
            let decision = evaluate(&set, who, &resource);
            assert_eq!(decision.allowed, allowed, "{} {resource}", who.username);
            assert_eq!(
                decision.rule.as_deref(),
                rule,
                "{} {resource}",
                who.username
            );
        }
    }

    #[test]
    fn deny_wins_whatever_the_order_or_specificity() {
        // The deny is broader and sorts first or last; it wins either way.
        for deny_name in ["a-deny", "z-deny"] {
            let set = rules(vec![
                (
                    "m-allow",
                    rule(Effect::Allow, &["bob"], &[], &["pki/issue/web"]),
                ),
                (deny_name, rule(Effect::Deny, &[], &["ops"], &["pki/**"])),
            ]);
            let decision = evaluate(
                &set,
                &caller("bob", &["ops"]),
                &Resource::parse("pki/issue/web").unwrap(),
            );
            assert!(!decision.allowed, "{deny_name}");
            assert_eq!(decision.rule.as_deref(), Some(deny_name));
            assert_eq!(
                decision.reason,
                format!("rule {deny_name} denies pki/issue/web for bob")
            );
        }
    }

    #[test]
    fn default_is_deny() {
        let decision = evaluate(
            &BTreeMap::new(),
            &caller("bob", &["ops"]),
            &Resource::parse("pki/list-certs").unwrap(),
        );
        assert!(!decision.allowed);
        assert_eq!(decision.rule, None);
        assert_eq!(decision.reason, "no rule allows pki/list-certs for bob");
    }

    #[test]
    fn admin_bypasses_deny() {
        let set = rules(vec![(
            "deny-all",
            rule(Effect::Deny, &["*"], &[], &["*/**"]),
        )]);
        let decision = evaluate(
            &set,
            &caller("root", &[ADMIN_ROLE]),
            &Resource::parse("pki/issue/web").unwrap(),
        );
        assert!(decision.allowed);
        assert_eq!(decision.rule, None);
    }

    #[test]
    fn rule_applies_by_user_role_or_star() {
        let by_user = rule(Effect::Allow, &["bob"], &[], &["pki/*"]);
        let by_role = rule(Effect::Allow, &[], &["ops"], &["pki/*"]);
        let anyone = rule(Effect::Allow, &["*"], &[], &["pki/*"]);
        let bob = caller("bob", &[]);
        let carol = caller("carol", &["ops"]);
        assert!(by_user.applies_to(&bob));
        assert!(!by_user.applies_to(&carol));
        assert!(by_role.applies_to(&carol));
        assert!(!by_role.applies_to(&bob));
        assert!(anyone.applies_to(&bob));
        assert!(anyone.applies_to(&carol));
    }

    #[test]
    fn rule_validation() {
        assert!(
            rule(Effect::Allow, &["bob"], &[], &["pki/*"])
                .validate()
                .is_ok()
        );
        let cases = [
            rule(Effect::Allow, &[], &[], &["pki/*"]),
            rule(Effect::Allow, &["bob"], &[], &[]),
            rule(Effect::Allow, &["bo b"], &[], &["pki/*"]),
            rule(Effect::Allow, &[""], &[], &["pki/*"]),
            rule(Effect::Allow, &["bob"], &["a\n"], &["pki/*"]),
            rule(Effect::Allow, &["bob"], &[], &["pki/is*"]),
        ];
        for case in cases {
            assert!(case.validate().is_err(), "{case:?}");
        }
    }

    #[test]
    fn rule_json_rejects_unknown_fields() {
        let error = serde_json::from_str::<PolicyRule>(
            r#"{"effect":"allow","users":["*"],"resources":["pki/*"],"extra":1}"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("extra"), "{error}");
        assert!(
            serde_json::from_str::<PolicyRule>(r#"{"effect":"maybe","resources":[]}"#).is_err()
        );
    }
}
