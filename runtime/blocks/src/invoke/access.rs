//! Access control for service invocation, in the shape of Dapr's
//! `spec.accessControl` section of a `Configuration` resource.
//!
//! The policy is applied by the runtime of the *called* app to every
//! invocation that arrives from another runtime. The caller is identified by
//! the SPIFFE ID of its certificate (`spiffe://<trust domain>/ns/<namespace>/<app id>`).
//!
//! # Decision
//!
//! 1. No `accessControl` section (or an empty one): everything is allowed.
//! 2. The policy for the caller is the one whose `appId`, `trustDomain` and
//!    `namespace` all equal the caller's. If there is none (or the caller's
//!    identity is unknown), the global `defaultAction` decides. When the
//!    section defines policies but no global `defaultAction`, that default is
//!    `deny` (Dapr's "more secure option"); without policies it is `allow`.
//! 3. Within the policy, the most specific operation rule that matches the
//!    call decides (see below). For an HTTP call, a rule matches only if its
//!    `httpVerb` list holds the call's verb or `*`; a rule without `httpVerb`
//!    therefore applies to gRPC calls only. For a gRPC call (no verb), the
//!    verb list is not consulted.
//! 4. No rule matches: the policy's `defaultAction`, or the global one when
//!    the policy has none.
//!
//! This is Dapr's documented priority (operation/verb action, then app
//! default, then global default), from "How-To: Apply access control list
//! configuration for service invocation" (docs.dapr.io).
//!
//! # Operation names
//!
//! Rule names start with `/` and are matched segment by segment against the
//! invoked method, which is normalised first: a leading `/` is added, the
//! query (`?…`) is dropped, percent-escapes of unreserved characters are
//! decoded, empty and `.` segments are removed and `..` removes the segment
//! before it (so `/public/../admin` is checked as `/admin`).
//!
//! * `*` as a whole segment matches exactly one segment: `/op1/*` matches
//!   `/op1/a` but neither `/op1` nor `/op1/a/b`;
//! * `**` as a whole segment matches any number of segments, none included:
//!   `/op1/**` matches `/op1`, `/op1/a` and `/op1/a/b`; `/op1/**/a` matches
//!   `/op1/a` and `/op1/x/y/a`;
//! * `*` inside a segment matches any characters within that segment:
//!   `/get*` matches `/getOrder`;
//! * for HTTP calls names are compared ASCII case-insensitively, for gRPC
//!   calls exactly (Dapr lower-cases operations of HTTP apps).
//!
//! **Most specific wins.** Matching rules are compared segment by segment from
//! the left; at the first position where they differ the more specific kind
//! wins: a literal segment, then a segment with `*` inside (more literal
//! characters first), then `*`, then the end of the pattern, then `**`. So
//! `/admin/status` beats `/admin/*`, which beats `/admin/**`; `/a/b/**` beats
//! `/a/**/c`; `/op1` beats `/op1/**` for the call `/op1`. Rules that are
//! equally specific resolve to the one listed first.
//!
//! Dapr's own matcher (a trie) picks among overlapping rules by their order
//! in the file, and also lets `/op1` cover `/op1/x` and `/op1/*` cover
//! `/op1`; Weft follows the documented meaning of the wildcards and orders by
//! specificity, which agrees with Dapr when rules are listed from specific to
//! general.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "public";
/// The namespace a policy applies to when it names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The HTTP verbs an operation rule may list (besides `*`).
pub const HTTP_VERBS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];

/// The authenticated identity of the calling app (from its SPIFFE ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller<'a> {
    pub trust_domain: &'a str,
    pub namespace: &'a str,
    /// Empty when the caller could not be identified: only the global
    /// `defaultAction` applies then.
    pub app_id: &'a str,
}

/// The outcome of [`AccessPolicy::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied; the message names the policy and rule (or default) that decided.
    Deny(String),
}

impl Decision {
    /// True for [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    /// Parses `allow` / `deny` (any case).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("allow") {
            Ok(Action::Allow)
        } else if s.eq_ignore_ascii_case("deny") {
            Ok(Action::Deny)
        } else {
            Err(format!("expected allow or deny, got {s:?}"))
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

// === spec: the configuration as written ===

/// `spec.accessControl` as written in the file, before validation (Dapr's
/// field names; an unknown field is an error, since a misspelt field would
/// silently change who may call the app).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessControlSpec {
    /// `defaultAction`: `allow` or `deny`; see the module docs for the default.
    #[serde(default, deserialize_with = "yaml::opt_text")]
    pub default_action: Option<String>,
    /// `trustDomain`: this app's own trust domain, `public` when absent. It
    /// is also the default trust domain of the policies.
    #[serde(default, deserialize_with = "yaml::opt_text")]
    pub trust_domain: Option<String>,
    /// `policies`: one per calling app.
    #[serde(default, deserialize_with = "yaml::list")]
    pub policies: Vec<AppPolicySpec>,
}

/// One entry of `policies`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppPolicySpec {
    /// `appId` of the calling app (required).
    #[serde(deserialize_with = "yaml::text")]
    pub app_id: String,
    /// `trustDomain` of the calling app; the global `trustDomain` when absent.
    #[serde(default, deserialize_with = "yaml::opt_text")]
    pub trust_domain: Option<String>,
    /// `namespace` of the calling app; `default` when absent.
    #[serde(default, deserialize_with = "yaml::opt_text")]
    pub namespace: Option<String>,
    /// `defaultAction` when no operation rule matches; the global one when absent.
    #[serde(default, deserialize_with = "yaml::opt_text")]
    pub default_action: Option<String>,
    /// `operations`: rules for specific methods.
    #[serde(default, deserialize_with = "yaml::list")]
    pub operations: Vec<OperationSpec>,
}

/// One entry of `operations`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperationSpec {
    /// `name`: method path starting with `/`, with optional `*` / `**`.
    #[serde(deserialize_with = "yaml::text")]
    pub name: String,
    /// `httpVerb`: verbs the rule applies to for HTTP calls (`*` = all).
    #[serde(default, rename = "httpVerb", deserialize_with = "yaml::texts")]
    pub http_verbs: Vec<String>,
    /// `action`: `allow` (the default) or `deny`.
    #[serde(default, deserialize_with = "yaml::opt_text")]
    pub action: Option<String>,
}

/// How the spec's scalars are read: YAML writes `appId: 42` for the string
/// "42", and an empty list as nothing.
mod yaml {
    use serde::de::{Deserialize, Deserializer, Error, Visitor};
    use std::fmt;

    struct Text;

    impl<'de> Visitor<'de> for Text {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_string<E: Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Text)
        }
    }

    /// A string (or a number, read as its text); nothing reads as `None`.
    pub fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(Text)
    }

    /// A required string (or number); nothing reads as empty.
    pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(opt_text(d)?.unwrap_or_default())
    }

    /// A list; nothing reads as an empty one.
    pub fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
    }

    /// A list of strings (or numbers).
    pub fn texts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        #[derive(serde::Deserialize)]
        struct Item(#[serde(deserialize_with = "text")] String);
        Ok(list::<D, Item>(d)?.into_iter().map(|i| i.0).collect())
    }
}

/// A validation error; `field` is relative to `accessControl`, e.g.
/// `policies[1].operations[0].action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for SpecError {}

// === compiled policy ===

/// Validated access control, ready for [`AccessPolicy::check`].
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    configured: bool,
    trust_domain: String,
    default_action: Action,
    /// True when `default_action` was implied (policies without a global default).
    default_implied: bool,
    /// By caller app id; several entries differ in trust domain or namespace.
    policies: HashMap<String, Vec<AppPolicy>>,
}

#[derive(Debug, Clone)]
struct AppPolicy {
    trust_domain: String,
    namespace: String,
    default_action: Option<Action>,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// As written, for messages.
    name: String,
    pattern: Vec<Segment>,
    /// Upper-case verbs; `*` for all; empty = gRPC calls only.
    verbs: Vec<String>,
    action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// Contains `*` (not alone): matches within one segment.
    Glob(String),
    Star,
    DoubleStar,
}

impl AccessPolicy {
    /// The policy when nothing is configured: every call is allowed.
    pub fn allow_all() -> Self {
        Self {
            configured: false,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            default_action: Action::Allow,
            default_implied: false,
            policies: HashMap::new(),
        }
    }

    /// Validates `spec`. Errors name the field relative to `accessControl`.
    pub fn from_spec(spec: &AccessControlSpec) -> Result<Self, SpecError> {
        let fail = |field: String, reason: String| SpecError { field, reason };
        let global_default = match non_empty(&spec.default_action) {
            Some(a) => Some(Action::parse(a).map_err(|e| fail("defaultAction".into(), e))?),
            None => None,
        };
        if global_default.is_none()
            && non_empty(&spec.trust_domain).is_none()
            && spec.policies.is_empty()
        {
            return Ok(Self::allow_all()); // an empty section is no section (Dapr)
        }
        let trust_domain = non_empty(&spec.trust_domain)
            .unwrap_or(DEFAULT_TRUST_DOMAIN)
            .to_string();
        let mut policies: HashMap<String, Vec<AppPolicy>> = HashMap::new();
        let mut first_index: HashMap<(String, String, String), usize> = HashMap::new();
        for (i, p) in spec.policies.iter().enumerate() {
            let at = format!("policies[{i}]");
            if p.app_id.is_empty() {
                return Err(fail(format!("{at}.appId"), "missing".into()));
            }
            let default_action = match non_empty(&p.default_action) {
                Some(a) => {
                    Some(Action::parse(a).map_err(|e| fail(format!("{at}.defaultAction"), e))?)
                }
                None => None,
            };
            let policy = AppPolicy {
                trust_domain: non_empty(&p.trust_domain)
                    .unwrap_or(&trust_domain)
                    .to_string(),
                namespace: non_empty(&p.namespace)
                    .unwrap_or(DEFAULT_NAMESPACE)
                    .to_string(),
                default_action,
                rules: p
                    .operations
                    .iter()
                    .enumerate()
                    .map(|(j, op)| Rule::compile(op, &format!("{at}.operations[{j}]")))
                    .collect::<Result<_, _>>()?,
            };
            let key = (
                p.app_id.clone(),
                policy.trust_domain.clone(),
                policy.namespace.clone(),
            );
            if let Some(prev) = first_index.insert(key, i) {
                return Err(fail(
                    at,
                    format!(
                        "duplicate policy for app '{}' (trust domain '{}', namespace '{}'): policies[{prev}] already covers it",
                        p.app_id, policy.trust_domain, policy.namespace
                    ),
                ));
            }
            policies.entry(p.app_id.clone()).or_default().push(policy);
        }
        Ok(Self {
            configured: true,
            trust_domain,
            // Dapr: policies without a global default imply deny.
            default_action: global_default.unwrap_or(if spec.policies.is_empty() {
                Action::Allow
            } else {
                Action::Deny
            }),
            default_implied: global_default.is_none(),
            policies,
        })
    }

    /// This app's trust domain (`trustDomain`, `public` by default).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// False for [`AccessPolicy::allow_all`] (no or an empty `accessControl`).
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    /// Decides whether `caller` may invoke `operation` (the method name; a
    /// leading `/` is added when missing). `http_verb` is the HTTP verb of
    /// an HTTP invocation and `None` for a gRPC invocation.
    pub fn check(&self, caller: &Caller<'_>, operation: &str, http_verb: Option<&str>) -> Decision {
        if !self.configured {
            return Decision::Allow;
        }
        let global = || {
            if self.default_implied {
                format!(
                    "the global defaultAction is {} (implied: policies are defined without a global defaultAction)",
                    self.default_action
                )
            } else {
                format!("the global defaultAction is {}", self.default_action)
            }
        };
        // Deny messages are only built when the call is denied.
        let decide = |action: Action, why: &dyn Fn() -> String| match action {
            Action::Allow => Decision::Allow,
            Action::Deny => Decision::Deny(why()),
        };
        if caller.app_id.is_empty() {
            return decide(self.default_action, &|| {
                format!(
                    "access denied: the caller's identity is unknown; {}",
                    global()
                )
            });
        }
        let Some(policy) = self.policies.get(caller.app_id).and_then(|ps| {
            ps.iter()
                .find(|p| p.trust_domain == caller.trust_domain && p.namespace == caller.namespace)
        }) else {
            return decide(self.default_action, &|| {
                format!(
                    "access denied: no policy for app '{}' in trust domain '{}' namespace '{}'; {}",
                    caller.app_id,
                    caller.trust_domain,
                    caller.namespace,
                    global()
                )
            });
        };
        let path = normalize_operation(operation);
        let who = || {
            format!(
                "access denied by policy for app '{}' (trust domain '{}', namespace '{}')",
                caller.app_id, policy.trust_domain, policy.namespace
            )
        };
        let shown = || format!("/{}", path.join("/"));
        let mut best: Option<&Rule> = None;
        for rule in &policy.rules {
            if rule.applies(&path, http_verb)
                && best.is_none_or(|b| rule.specificity_cmp(b) == Ordering::Greater)
            {
                best = Some(rule);
            }
        }
        if let Some(rule) = best {
            return decide(rule.action, &|| {
                format!(
                    "{}: operation '{}' matches rule '{}' with action {}",
                    who(),
                    shown(),
                    rule.name,
                    rule.action
                )
            });
        }
        let call = || match http_verb {
            Some(v) => format!("{} '{}'", v.to_ascii_uppercase(), shown()),
            None => format!("'{}'", shown()),
        };
        match policy.default_action {
            Some(action) => decide(action, &|| {
                format!(
                    "{}: no operation rule matches {}; the policy's defaultAction is {action}",
                    who(),
                    call()
                )
            }),
            None => decide(self.default_action, &|| {
                format!(
                    "{}: no operation rule matches {}; the policy has no defaultAction and {}",
                    who(),
                    call(),
                    global()
                )
            }),
        }
    }
}

// === impl Rule ===

impl Rule {
    fn compile(op: &OperationSpec, at: &str) -> Result<Self, SpecError> {
        let fail = |field: String, reason: String| SpecError { field, reason };
        let name = op.name.trim();
        if !name.starts_with('/') {
            return Err(fail(
                format!("{at}.name"),
                format!("must start with '/', got {name:?}"),
            ));
        }
        let mut pattern = Vec::new();
        for seg in name.split('/').filter(|s| !s.is_empty()) {
            pattern.push(match seg {
                "**" => Segment::DoubleStar,
                "*" => Segment::Star,
                "." | ".." => {
                    return Err(fail(
                        format!("{at}.name"),
                        format!("'{seg}' segments are not allowed in {name:?}"),
                    ))
                }
                s if s.contains("**") => {
                    return Err(fail(
                        format!("{at}.name"),
                        format!("'**' must be a whole path segment in {name:?}"),
                    ))
                }
                s if s.contains('*') => Segment::Glob(s.to_string()),
                s => Segment::Literal(s.to_string()),
            });
        }
        let mut verbs = Vec::new();
        for (k, v) in op.http_verbs.iter().enumerate() {
            let v = v.trim().to_ascii_uppercase();
            if v != "*" && !HTTP_VERBS.contains(&v.as_str()) {
                return Err(fail(
                    format!("{at}.httpVerb[{k}]"),
                    format!(
                        "expected one of {} or *, got {:?}",
                        HTTP_VERBS.join(", "),
                        op.http_verbs[k]
                    ),
                ));
            }
            verbs.push(v);
        }
        let action = match op.action.as_deref().filter(|a| !a.is_empty()) {
            Some(a) => Action::parse(a).map_err(|e| fail(format!("{at}.action"), e))?,
            None => Action::Allow,
        };
        Ok(Self {
            name: name.to_string(),
            pattern,
            verbs,
            action,
        })
    }

    /// Whether this rule covers the call: its name matches and, for HTTP
    /// calls, its verb list holds the verb or `*`.
    fn applies(&self, path: &[String], http_verb: Option<&str>) -> bool {
        let verb_ok = match http_verb {
            None => true,
            Some(v) => self
                .verbs
                .iter()
                .any(|r| r == "*" || r.eq_ignore_ascii_case(v)),
        };
        verb_ok && matches(&self.pattern, path, http_verb.is_some())
    }

    /// Orders rules by specificity (module docs): `Greater` = more specific.
    fn specificity_cmp(&self, other: &Rule) -> Ordering {
        // Rank per position, the end of the pattern ranking between `*` and `**`.
        fn rank(p: &[Segment], i: usize) -> (u8, usize) {
            match p.get(i) {
                Some(Segment::Literal(_)) => (5, 0),
                Some(Segment::Glob(g)) => (4, g.len() - g.matches('*').count()),
                Some(Segment::Star) => (3, 0),
                None => (2, 0),
                Some(Segment::DoubleStar) => (1, 0),
            }
        }
        (0..=self.pattern.len().max(other.pattern.len()))
            .map(|i| rank(&self.pattern, i).cmp(&rank(&other.pattern, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

/// Matches path segments against a pattern; `fold` compares ASCII
/// case-insensitively.
fn matches(pattern: &[Segment], path: &[String], fold: bool) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((Segment::DoubleStar, rest)) => {
            (0..=path.len()).any(|skip| matches(rest, &path[skip..], fold))
        }
        Some((seg, rest)) => match path.split_first() {
            None => false,
            Some((head, tail)) => {
                let ok = match seg {
                    Segment::Literal(l) if fold => l.eq_ignore_ascii_case(head),
                    Segment::Literal(l) => l == head,
                    Segment::Glob(g) => glob(g.as_bytes(), head.as_bytes(), fold),
                    _ => true, // Star
                };
                ok && matches(rest, tail, fold)
            }
        },
    }
}

/// `*`-only wildcard match within one segment.
fn glob(pattern: &[u8], text: &[u8], fold: bool) -> bool {
    let eq = |a: u8, b: u8| a == b || (fold && a.eq_ignore_ascii_case(&b));
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None; // (pattern index after '*', text index)
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            p += 1;
            star = Some((p, t));
        } else if p < pattern.len() && eq(pattern[p], text[t]) {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The value of an optional string field, an empty string counting as absent.
fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// Splits an invoked method into normalised path segments (module docs).
fn normalize_operation(operation: &str) -> Vec<String> {
    let operation = operation.split(['?', '#']).next().unwrap_or_default();
    let decoded = decode_unreserved(operation);
    let mut out: Vec<String> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_string()),
        }
    }
    out
}

/// Decodes `%XX` escapes of unreserved characters (letters, digits, `-._~`),
/// leaving every other escape (such as `%2F`) as it is.
fn decode_unreserved(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(c) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP1: Caller<'static> = Caller {
        trust_domain: "public",
        namespace: "default",
        app_id: "app1",
    };

    fn op(name: &str, verbs: &[&str], action: &str) -> OperationSpec {
        OperationSpec {
            name: name.into(),
            http_verbs: verbs.iter().map(|v| v.to_string()).collect(),
            action: Some(action.into()).filter(|a: &String| !a.is_empty()),
        }
    }

    fn policy(app: &str, default: Option<&str>, operations: Vec<OperationSpec>) -> AppPolicySpec {
        AppPolicySpec {
            app_id: app.into(),
            default_action: default.map(Into::into),
            operations,
            ..Default::default()
        }
    }

    fn acl(default: Option<&str>, policies: Vec<AppPolicySpec>) -> AccessPolicy {
        AccessPolicy::from_spec(&AccessControlSpec {
            default_action: default.map(Into::into),
            trust_domain: None,
            policies,
        })
        .unwrap()
    }

    fn allowed(p: &AccessPolicy, caller: &Caller<'_>, op: &str, verb: Option<&str>) -> bool {
        p.check(caller, op, verb).is_allowed()
    }

    fn denial(p: &AccessPolicy, caller: &Caller<'_>, op: &str, verb: Option<&str>) -> String {
        match p.check(caller, op, verb) {
            Decision::Deny(why) => why,
            Decision::Allow => panic!("{op} {verb:?} was allowed"),
        }
    }

    fn spec_error(spec: AccessControlSpec) -> SpecError {
        AccessPolicy::from_spec(&spec).unwrap_err()
    }

    #[test]
    fn nothing_configured_allows_everything() {
        for p in [
            AccessPolicy::allow_all(),
            AccessPolicy::from_spec(&AccessControlSpec::default()).unwrap(),
        ] {
            assert!(!p.is_configured());
            assert_eq!(p.trust_domain(), "public");
            assert!(allowed(&p, &APP1, "/anything", Some("DELETE")));
        }
        // A trust domain alone configures the section; the default stays allow.
        let p = AccessPolicy::from_spec(&AccessControlSpec {
            trust_domain: Some("corp".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(p.is_configured());
        assert_eq!(p.trust_domain(), "corp");
        assert!(allowed(&p, &APP1, "/x", None));
    }

    #[test]
    fn global_default_applies_when_no_policy_matches() {
        let p = acl(Some("deny"), vec![]);
        assert_eq!(
            denial(&p, &APP1, "/x", None),
            "access denied: no policy for app 'app1' in trust domain 'public' namespace 'default'; the global defaultAction is deny"
        );
        assert!(allowed(&acl(Some("allow"), vec![]), &APP1, "/x", None));
    }

    #[test]
    fn policies_without_a_global_default_imply_deny() {
        let p = acl(None, vec![policy("app1", Some("allow"), vec![])]);
        assert!(allowed(&p, &APP1, "/x", None));
        let other = Caller {
            app_id: "app2",
            ..APP1
        };
        let why = denial(&p, &other, "/x", None);
        assert!(why.contains("no policy for app 'app2'"), "{why}");
        assert!(why.contains("deny (implied"), "{why}");
    }

    #[test]
    fn unknown_caller_gets_the_global_default() {
        let p = acl(Some("deny"), vec![policy("app1", Some("allow"), vec![])]);
        let anon = Caller { app_id: "", ..APP1 };
        assert!(denial(&p, &anon, "/x", None).contains("identity is unknown"));
        let p = acl(Some("allow"), vec![policy("app1", Some("deny"), vec![])]);
        assert!(allowed(&p, &anon, "/x", None));
    }

    #[test]
    fn trust_domain_and_namespace_must_match() {
        // Scenario 1 of Dapr's docs: deny all but app1 in public/default.
        let p = acl(Some("deny"), vec![policy("app1", Some("allow"), vec![])]);
        assert!(allowed(&p, &APP1, "/x", Some("GET")));
        for caller in [
            Caller {
                trust_domain: "other",
                ..APP1
            },
            Caller {
                namespace: "ns1",
                ..APP1
            },
            Caller {
                app_id: "app2",
                ..APP1
            },
        ] {
            let why = denial(&p, &caller, "/x", Some("GET"));
            assert!(why.contains("the global defaultAction is deny"), "{why}");
        }
    }

    #[test]
    fn policy_trust_domain_and_namespace_defaults() {
        // The policy's trust domain defaults to the global one, its namespace to "default".
        let spec = AccessControlSpec {
            default_action: Some("deny".into()),
            trust_domain: Some("corp".into()),
            policies: vec![
                policy("a", Some("allow"), vec![]),
                AppPolicySpec {
                    trust_domain: Some("partner".into()),
                    namespace: Some("ns2".into()),
                    ..policy("b", Some("allow"), vec![])
                },
            ],
        };
        let p = AccessPolicy::from_spec(&spec).unwrap();
        let a = Caller {
            trust_domain: "corp",
            namespace: "default",
            app_id: "a",
        };
        assert!(allowed(&p, &a, "/x", None));
        assert!(!allowed(
            &p,
            &Caller {
                trust_domain: "public",
                ..a
            },
            "/x",
            None
        ));
        let b = Caller {
            trust_domain: "partner",
            namespace: "ns2",
            app_id: "b",
        };
        assert!(allowed(&p, &b, "/x", None));
        assert!(!allowed(
            &p,
            &Caller {
                namespace: "default",
                ..b
            },
            "/x",
            None
        ));
    }

    #[test]
    fn same_app_in_two_namespaces() {
        // Scenario 5: app1 allowed from ns1, denied from ns2.
        let ns = |n: &str, d: &str| AppPolicySpec {
            namespace: Some(n.into()),
            ..policy("app1", Some(d), vec![])
        };
        let p = acl(Some("allow"), vec![ns("ns1", "allow"), ns("ns2", "deny")]);
        assert!(allowed(
            &p,
            &Caller {
                namespace: "ns1",
                ..APP1
            },
            "/x",
            None
        ));
        assert!(!allowed(
            &p,
            &Caller {
                namespace: "ns2",
                ..APP1
            },
            "/x",
            None
        ));
        assert!(
            allowed(&p, &APP1, "/x", None),
            "no policy for default: global allow"
        );
    }

    #[test]
    fn operation_rules_then_policy_default() {
        // Scenario 2: only /op1 is allowed from app1.
        let p = acl(
            Some("deny"),
            vec![policy(
                "app1",
                Some("deny"),
                vec![op("/op1", &["*"], "allow")],
            )],
        );
        assert!(allowed(&p, &APP1, "/op1", Some("GET")));
        assert!(allowed(&p, &APP1, "op1", None), "a leading '/' is added");
        assert_eq!(
            denial(&p, &APP1, "/op2", None),
            "access denied by policy for app 'app1' (trust domain 'public', namespace 'default'): no operation rule matches '/op2'; the policy's defaultAction is deny"
        );
        assert!(denial(&p, &APP1, "/op1/x", Some("get")).contains("matches GET '/op1/x'"));
    }

    #[test]
    fn policy_without_default_falls_back_to_global() {
        let p = acl(
            Some("deny"),
            vec![policy("app1", None, vec![op("/ok", &["*"], "allow")])],
        );
        assert!(allowed(&p, &APP1, "/ok", None));
        let why = denial(&p, &APP1, "/x", None);
        assert!(
            why.ends_with("the policy has no defaultAction and the global defaultAction is deny"),
            "{why}"
        );
        let p = acl(
            Some("allow"),
            vec![policy("app1", None, vec![op("/no", &["*"], "deny")])],
        );
        assert!(allowed(&p, &APP1, "/x", None));
        assert!(!allowed(&p, &APP1, "/no", None));
    }

    #[test]
    fn deny_rule_message_names_the_rule() {
        let p = acl(
            Some("allow"),
            vec![policy(
                "app1",
                Some("allow"),
                vec![op("/admin/**", &["*"], "deny")],
            )],
        );
        assert_eq!(
            denial(&p, &APP1, "/admin/reset", Some("POST")),
            "access denied by policy for app 'app1' (trust domain 'public', namespace 'default'): operation '/admin/reset' matches rule '/admin/**' with action deny"
        );
    }

    #[test]
    fn http_verbs() {
        // Scenario 3: POST/PUT on /op1 from app1; /op2 from app2 over gRPC only.
        let app2 = AppPolicySpec {
            trust_domain: Some("myDomain".into()),
            namespace: Some("ns1".into()),
            ..policy("app2", Some("deny"), vec![op("/op2", &[], "allow")])
        };
        let p = acl(
            Some("deny"),
            vec![
                policy(
                    "app1",
                    Some("deny"),
                    vec![op("/op1", &["POST", "put"], "allow")],
                ),
                app2,
            ],
        );
        assert!(allowed(&p, &APP1, "/op1", Some("POST")));
        assert!(
            allowed(&p, &APP1, "/op1", Some("put")),
            "verbs compare case-insensitively"
        );
        assert!(!allowed(&p, &APP1, "/op1", Some("GET")));
        assert!(
            allowed(&p, &APP1, "/op1", None),
            "gRPC: the verb list is not consulted"
        );
        let app2 = Caller {
            trust_domain: "myDomain",
            namespace: "ns1",
            app_id: "app2",
        };
        assert!(allowed(&p, &app2, "/op2", None));
        assert!(
            !allowed(&p, &app2, "/op2", Some("POST")),
            "no httpVerb: gRPC only"
        );
    }

    #[test]
    fn action_defaults_to_allow() {
        let p = acl(
            Some("deny"),
            vec![policy("app1", Some("deny"), vec![op("/a", &["*"], "")])],
        );
        assert!(allowed(&p, &APP1, "/a", None));
    }

    #[test]
    fn wildcards() {
        let rule = |name: &str| {
            acl(
                Some("deny"),
                vec![policy(
                    "app1",
                    Some("deny"),
                    vec![op(name, &["*"], "allow")],
                )],
            )
        };
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "/op1/*",
                &["/op1/a", "/op1/b"],
                &["/op1", "/op1/a/b", "/op2/a"],
            ),
            (
                "/op1/**",
                &["/op1", "/op1/a", "/op1/a/b/c"],
                &["/op2", "/op10"],
            ),
            (
                "/op1/**/a",
                &["/op1/a", "/op1/x/a", "/op1/x/y/a"],
                &["/op1/x", "/op1/a/x"],
            ),
            ("/*/status", &["/a/status"], &["/status", "/a/b/status"]),
            ("/**", &["/", "/a", "/a/b"], &[]),
            ("/get*", &["/get", "/getOrder"], &["/set", "/get/x"]),
            (
                "/v*/*.json",
                &["/v1/a.json", "/v/.json"],
                &["/v1/a.xml", "/x1/a.json"],
            ),
            ("/a*b*c", &["/abc", "/aXbYc", "/abbc"], &["/ab", "/acb"]),
            ("/", &["/", ""], &["/a"]),
        ];
        for (name, yes, no) in cases {
            let p = rule(name);
            for o in *yes {
                assert!(allowed(&p, &APP1, o, None), "{name} should match {o}");
            }
            for o in *no {
                assert!(!allowed(&p, &APP1, o, None), "{name} should not match {o}");
            }
        }
    }

    #[test]
    fn names_fold_case_for_http_only() {
        let p = acl(
            Some("allow"),
            vec![policy(
                "app1",
                Some("allow"),
                vec![op("/Admin/*", &["*"], "deny"), op("/x", &[], "deny")],
            )],
        );
        assert!(!allowed(&p, &APP1, "/admin/reset", Some("GET")));
        assert!(!allowed(&p, &APP1, "/ADMIN/reset", Some("GET")));
        assert!(!allowed(&p, &APP1, "/Admin/reset", None));
        assert!(
            allowed(&p, &APP1, "/admin/reset", None),
            "gRPC names are exact"
        );
    }

    #[test]
    fn most_specific_rule_wins() {
        // Listed from general to specific on purpose: order must not matter.
        let p = acl(
            Some("deny"),
            vec![policy(
                "app1",
                Some("deny"),
                vec![
                    op("/**", &["*"], "allow"),
                    op("/admin/**", &["*"], "deny"),
                    op("/admin/*", &["*"], "allow"),
                    op("/admin/s*", &["*"], "deny"),
                    op("/admin/stat*", &["*"], "allow"),
                    op("/admin/status", &["*"], "deny"),
                    op("/admin/status/**", &["*"], "allow"),
                    op("/a/b/**", &["*"], "allow"),
                    op("/a/**/c", &["*"], "deny"),
                ],
            )],
        );
        let rule_for = |o: &str| match p.check(&APP1, o, None) {
            Decision::Allow => "allow".to_string(),
            Decision::Deny(why) => why
                .split("rule '")
                .nth(1)
                .unwrap()
                .split('\'')
                .next()
                .unwrap()
                .to_string(),
        };
        assert_eq!(
            rule_for("/admin/status"),
            "/admin/status",
            "literal beats globs and /**"
        );
        assert_eq!(rule_for("/admin/stop"), "/admin/s*", "glob beats *");
        assert_eq!(rule_for("/admin/x/y"), "/admin/**");
        assert_eq!(rule_for("/admin"), "/admin/**", "** may match nothing");
        assert_eq!(
            rule_for("/a/b/c"),
            "allow",
            "/a/b/** beats /a/**/c: leftmost literal"
        );
        assert_eq!(rule_for("/a/x/c"), "/a/**/c");
        assert!(
            allowed(&p, &APP1, "/admin/statistics", None),
            "longer literal prefix in a glob wins"
        );
        assert!(allowed(&p, &APP1, "/admin/other", None), "* beats **");
        assert!(allowed(&p, &APP1, "/admin/status/x", None));
        assert!(allowed(&p, &APP1, "/elsewhere", None));
    }

    #[test]
    fn exact_name_beats_double_star_and_ties_go_to_the_first_rule() {
        let p = acl(
            Some("deny"),
            vec![policy(
                "app1",
                Some("deny"),
                vec![
                    op("/op1/**", &["*"], "deny"),
                    op("/op1", &["*"], "allow"),
                    op("/op1", &["*"], "deny"),
                ],
            )],
        );
        assert!(allowed(&p, &APP1, "/op1", None));
        assert!(!allowed(&p, &APP1, "/op1/x", None));
    }

    #[test]
    fn rule_that_does_not_cover_the_verb_leaves_room_for_a_broader_one() {
        let p = acl(
            Some("allow"),
            vec![policy(
                "app1",
                Some("allow"),
                vec![
                    op("/admin/**", &["*"], "deny"),
                    op("/admin/status", &["GET"], "allow"),
                ],
            )],
        );
        assert!(allowed(&p, &APP1, "/admin/status", Some("GET")));
        let why = denial(&p, &APP1, "/admin/status", Some("POST"));
        assert!(why.contains("rule '/admin/**'"), "{why}");
    }

    #[test]
    fn operations_are_normalised() {
        let p = acl(
            Some("allow"),
            vec![policy(
                "app1",
                Some("allow"),
                vec![op("/admin/reset", &["*"], "deny")],
            )],
        );
        for o in [
            "admin/reset",
            "/admin/reset/",
            "//admin//reset",
            "/public/../admin/reset",
            "/./admin/reset",
            "/%61dmin/reset",
            "/admin/reset?force=1",
        ] {
            let why = denial(&p, &APP1, o, Some("POST"));
            assert!(why.contains("operation '/admin/reset'"), "{o}: {why}");
        }
        assert!(
            allowed(&p, &APP1, "/admin%2Freset", None),
            "an escaped '/' is not a separator"
        );
        assert!(allowed(&p, &APP1, "/admin/reset2", None));
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let with_ops = |ops: Vec<OperationSpec>| AccessControlSpec {
            default_action: Some("deny".into()),
            policies: vec![policy("ok", None, vec![]), policy("app1", None, ops)],
            ..Default::default()
        };
        let e = spec_error(with_ops(vec![
            op("/a", &[], "allow"),
            op("/b", &[], "permit"),
        ]));
        assert_eq!(e.field, "policies[1].operations[1].action");
        assert_eq!(e.reason, "expected allow or deny, got \"permit\"");
        let e = spec_error(with_ops(vec![op("/a", &["GET", "FETCH"], "allow")]));
        assert_eq!(e.field, "policies[1].operations[0].httpVerb[1]");
        assert!(e.reason.contains("got \"FETCH\""), "{e}");
        let e = spec_error(with_ops(vec![op("a", &[], "allow")]));
        assert_eq!(e.field, "policies[1].operations[0].name");
        assert!(spec_error(with_ops(vec![op("/a**", &[], "allow")]))
            .reason
            .contains("whole path segment"));
        assert!(spec_error(with_ops(vec![op("/a/../b", &[], "allow")]))
            .reason
            .contains("'..'"));

        let e = spec_error(AccessControlSpec {
            default_action: Some("block".into()),
            ..Default::default()
        });
        assert_eq!(e.field, "defaultAction");
        let e = spec_error(AccessControlSpec {
            policies: vec![policy("a", Some("nope"), vec![])],
            ..Default::default()
        });
        assert_eq!(e.field, "policies[0].defaultAction");
        let e = spec_error(AccessControlSpec {
            policies: vec![policy("", None, vec![])],
            ..Default::default()
        });
        assert_eq!(e.to_string(), "policies[0].appId: missing");
    }

    #[test]
    fn duplicate_policies_are_rejected() {
        // Equal after defaults: an explicit "default" namespace and "public" trust domain.
        let explicit = AppPolicySpec {
            trust_domain: Some("public".into()),
            namespace: Some("default".into()),
            ..policy("app1", Some("allow"), vec![])
        };
        let e = spec_error(AccessControlSpec {
            policies: vec![
                policy("app1", Some("deny"), vec![]),
                policy("app2", None, vec![]),
                explicit,
            ],
            ..Default::default()
        });
        assert_eq!(e.field, "policies[2]");
        assert!(e.reason.contains("policies[0] already covers it"), "{e}");
    }

    #[test]
    fn glob_matcher() {
        assert!(glob(b"*", b"", false));
        assert!(glob(b"a*", b"a", false));
        assert!(glob(b"*c", b"abc", false));
        assert!(glob(b"A*C", b"abc", true));
        assert!(!glob(b"A*C", b"abc", false));
        assert!(!glob(b"a*d", b"abc", false));
    }
}
