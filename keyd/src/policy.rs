//! Policy rules, stored as one JSON entry in the barrier's system scope.
//!
//! All rules live in one entry, so a list is one barrier read and every
//! change replaces the whole set atomically. Changes are serialized by a
//! mutex, so two writers cannot lose each other's rule.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use metacrypt_protocol::policy::{MAX_RULES, PolicyRule, check_identifier};
use metacrypt_protocol::{ErrorBody, ErrorCode};

use crate::barrier::{Barrier, SYSTEM_SCOPE, ScopeView, WriteBatch};

/// The system-scope path of the rule set.
const RULES_PATH: &str = "policy/rules";

/// Maximum size of the encoded rule set. Every list of the rules travels in
/// one protocol frame (at most 4 MiB), and frontd reads the set for each
/// check of a non-admin caller, so it is kept well below that.
pub const MAX_RULE_SET_BYTES: usize = 1024 * 1024;

pub struct PolicyStore {
    view: ScopeView,
    changes: Mutex<()>,
}

impl PolicyStore {
    pub fn new(barrier: Arc<Barrier>) -> Self {
        Self {
            view: ScopeView::new(barrier, SYSTEM_SCOPE),
            changes: Mutex::new(()),
        }
    }

    /// Returns every rule by name; none before the first is written.
    pub fn list(&self) -> Result<BTreeMap<String, PolicyRule>, ErrorBody> {
        let Some(bytes) = self.view.get(RULES_PATH)? else {
            return Ok(BTreeMap::new());
        };
        serde_json::from_slice(&bytes).map_err(|error| {
            ErrorBody::internal(format!("stored policy rules are invalid: {error}"))
        })
    }

    /// Creates or replaces rule `name` after checking the name and the rule.
    pub fn put(&self, name: &str, rule: PolicyRule) -> Result<PolicyRule, ErrorBody> {
        check_identifier("rule name", name).map_err(ErrorBody::invalid_request)?;
        rule.validate().map_err(ErrorBody::invalid_request)?;
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let mut rules = self.list()?;
        if !rules.contains_key(name) && rules.len() >= MAX_RULES {
            return Err(ErrorBody::new(
                ErrorCode::Conflict,
                format!("there are already {MAX_RULES} rules, the maximum; delete one first"),
            ));
        }
        rules.insert(name.to_owned(), rule.clone());
        let size = serde_json::to_vec(&rules).map_or(usize::MAX, |bytes| bytes.len());
        if size > MAX_RULE_SET_BYTES {
            return Err(ErrorBody::invalid_request(format!(
                "the policy rules would take {size} bytes, over the maximum of \
                 {MAX_RULE_SET_BYTES}; use roles or wildcards in place of long lists"
            )));
        }
        self.store(&rules)?;
        Ok(rule)
    }

    /// Deletes rule `name`; a missing rule is a not-found error.
    pub fn delete(&self, name: &str) -> Result<(), ErrorBody> {
        check_identifier("rule name", name).map_err(ErrorBody::invalid_request)?;
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let mut rules = self.list()?;
        if rules.remove(name).is_none() {
            return Err(ErrorBody::not_found(format!(
                "policy rule {name} not found"
            )));
        }
        self.store(&rules)
    }

    fn store(&self, rules: &BTreeMap<String, PolicyRule>) -> Result<(), ErrorBody> {
        let bytes = serde_json::to_vec(rules).map_err(|error| {
            ErrorBody::internal(format!("failed to encode policy rules: {error}"))
        })?;
        let mut batch = WriteBatch::new();
        batch.put(RULES_PATH, &bytes);
        self.view.commit(batch)?;
        Ok(())
    }
}
