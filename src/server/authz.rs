//! Authorization: which callers may call which methods (`SPILLWAY_AUTHZ_FILE`).
//!
//! A policy is a TOML file of rules; a call is allowed when one rule that covers its
//! protocol and method admits the caller. Without a covering rule, `default` decides
//! (`deny` unless the file says `allow`).
//!
//! ```toml
//! default = "deny"
//!
//! [[rule]]
//! protocol = "spillway.Demo.v1"      # or "*"
//! methods = ["echo", "blob"]         # or ["*"] (the default)
//! principals = ["alice", "system:serviceaccount:jobs:loader"]
//!
//! [[rule]]
//! protocol = "*"
//! claims = { groups = ["data-eng"], scope = ["spillway.call"] }
//! ```
//!
//! A rule admits a caller whose principal is listed (`"*"`: any authenticated caller), or
//! one of whose claim values is listed under that claim (`scope` and `scp` are split on
//! spaces). The reflection protocol (`vgi_rpc.Reflection.v1`) is a protocol like any other.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::auth::AuthContext;
use crate::error::{Error, Result};

/// An authorization policy (see the module docs for the file format).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzPolicy {
    /// What happens to a call no rule covers.
    #[serde(default)]
    pub default: DefaultDecision,
    /// The rules, in no particular order: any admitting rule allows the call.
    #[serde(default, rename = "rule")]
    pub rules: Vec<AuthzRule>,
}

/// What a policy does with a call that no rule covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultDecision {
    /// Refuse it (403).
    #[default]
    Deny,
    /// Let it through.
    Allow,
}

/// One rule: the calls it covers and the callers it admits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzRule {
    /// A protocol's wire name, or `*` for every protocol.
    pub protocol: String,
    /// Method names, or `["*"]` (the default) for all.
    #[serde(default = "all_methods")]
    pub methods: Vec<String>,
    /// Principals admitted; `*` admits any authenticated caller.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Claim name to admitted values.
    #[serde(default)]
    pub claims: BTreeMap<String, Vec<String>>,
}

fn all_methods() -> Vec<String> {
    vec!["*".to_string()]
}

/// The verdict on one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused; `target` names what was refused (`protocol.method`).
    Deny {
        /// `protocol.method`.
        target: String,
    },
}

impl AuthzPolicy {
    /// Parses a policy from TOML text, checking that every rule can admit someone.
    pub fn from_toml(text: &str) -> Result<Self> {
        let policy: AuthzPolicy = toml::from_str(text)
            .map_err(|e| Error::Config(format!("authorization policy: {e}")))?;
        for (i, rule) in policy.rules.iter().enumerate() {
            let n = i + 1;
            if rule.protocol.trim().is_empty() {
                return Err(Error::Config(format!(
                    "authorization policy: rule {n} has an empty protocol"
                )));
            }
            if rule.methods.is_empty() {
                return Err(Error::Config(format!(
                    "authorization policy: rule {n} lists no methods (use [\"*\"] for all)"
                )));
            }
            if rule.principals.is_empty() && rule.claims.values().all(Vec::is_empty) {
                return Err(Error::Config(format!(
                    "authorization policy: rule {n} admits nobody (give principals or claims)"
                )));
            }
        }
        Ok(policy)
    }

    /// Reads and parses a policy file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("authorization policy {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// The protocols the rules name (for a startup check against the hosted ones).
    pub fn named_protocols(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .map(|r| r.protocol.as_str())
            .filter(|p| *p != "*")
    }

    /// Whether `caller` may call `protocol`.`method`.
    pub fn decide(&self, protocol: &str, method: &str, caller: &AuthContext) -> Decision {
        let covering: Vec<&AuthzRule> = self
            .rules
            .iter()
            .filter(|r| r.protocol == "*" || r.protocol == protocol)
            .filter(|r| r.methods.iter().any(|m| m == "*" || m == method))
            .collect();
        let allowed = if covering.is_empty() {
            self.default == DefaultDecision::Allow
        } else {
            covering.iter().any(|r| r.admits(caller))
        };
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny {
                target: format!("{protocol}.{method}"),
            }
        }
    }

    /// Whether `caller` may call anything at all (for routes of no protocol, such as
    /// upload URLs).
    pub fn decide_any(&self, caller: &AuthContext) -> Decision {
        if self.default == DefaultDecision::Allow || self.rules.iter().any(|r| r.admits(caller)) {
            Decision::Allow
        } else {
            Decision::Deny {
                target: crate::wire::http::UPLOAD_METHOD.to_string(),
            }
        }
    }
}

impl AuthzRule {
    fn admits(&self, caller: &AuthContext) -> bool {
        if !caller.authenticated {
            return false;
        }
        let principal = caller.principal_or_empty();
        if self.principals.iter().any(|p| p == "*" || p == principal) {
            return true;
        }
        self.claims.iter().any(|(claim, wanted)| {
            caller
                .claim_values(claim)
                .iter()
                .any(|have| wanted.iter().any(|w| w == have))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
        [[rule]]
        protocol = "spillway.Demo.v1"
        methods = ["echo"]
        principals = ["alice"]

        [[rule]]
        protocol = "spillway.Demo.v1"
        claims = { groups = ["data-eng"] }

        [[rule]]
        protocol = "vgi_rpc.Reflection.v1"
        principals = ["*"]
    "#;

    fn caller(principal: &str, claims: &str) -> AuthContext {
        AuthContext::new("jwt", principal).with_claims(serde_json::from_str(claims).unwrap())
    }

    #[test]
    fn rules_allow_by_principal_and_by_claim() {
        let p = AuthzPolicy::from_toml(POLICY).unwrap();
        let alice = caller("alice", "{}");
        let eng = caller("carol", r#"{"groups":["data-eng"]}"#);
        let bob = caller("bob", r#"{"groups":["sales"]}"#);
        assert_eq!(
            p.decide("spillway.Demo.v1", "echo", &alice),
            Decision::Allow
        );
        assert!(matches!(
            p.decide("spillway.Demo.v1", "blob", &alice),
            Decision::Deny { .. }
        ));
        assert_eq!(p.decide("spillway.Demo.v1", "blob", &eng), Decision::Allow);
        assert_eq!(
            p.decide("spillway.Demo.v1", "blob", &bob),
            Decision::Deny {
                target: "spillway.Demo.v1.blob".into()
            }
        );
        // Reflection is covered like any protocol; `*` is any authenticated caller.
        assert_eq!(
            p.decide("vgi_rpc.Reflection.v1", "describe", &bob),
            Decision::Allow
        );
        assert!(matches!(
            p.decide(
                "vgi_rpc.Reflection.v1",
                "describe",
                &AuthContext::anonymous()
            ),
            Decision::Deny { .. }
        ));
        // An unknown protocol is covered by no rule: the default (deny).
        assert!(matches!(
            p.decide("other.v1", "x", &alice),
            Decision::Deny { .. }
        ));
        assert_eq!(p.decide_any(&bob), Decision::Allow);
        assert!(matches!(
            p.decide_any(&AuthContext::anonymous()),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn default_allow_lets_uncovered_calls_through() {
        let p = AuthzPolicy::from_toml(&format!("default = \"allow\"\n{POLICY}")).unwrap();
        assert_eq!(
            p.decide("other.v1", "x", &caller("x", "{}")),
            Decision::Allow
        );
        // A covered call still needs an admitting rule.
        assert!(matches!(
            p.decide("spillway.Demo.v1", "echo", &caller("x", "{}")),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn bad_policies_are_config_errors() {
        for (text, want) in [
            ("[[rule]]\nprotocol = \"p\"\n", "admits nobody"),
            (
                "[[rule]]\nprotocol = \"\"\nprincipals=[\"a\"]\n",
                "empty protocol",
            ),
            (
                "[[rule]]\nprotocol = \"p\"\nmethods=[]\nprincipals=[\"a\"]\n",
                "no methods",
            ),
            ("default = \"maybe\"\n", "authorization policy"),
            (
                "[[rule]]\nprotocol = \"p\"\nprincipal=[\"a\"]\n",
                "unknown field",
            ),
        ] {
            let e = AuthzPolicy::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
