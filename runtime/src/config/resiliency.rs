//! Resiliency resources in the resources directory (docs/resiliency.md):
//!
//! * Dapr's `Resiliency` (`apiVersion: dapr.io/v1alpha1`), read as Dapr
//!   spells it: `spec.policies.timeouts` / `retries` (constant and
//!   exponential, `maxRetries`, `duration`, `maxInterval`,
//!   `matching.gRPCStatusCodes` / `httpStatusCodes`) / `circuitBreakers`
//!   (`maxRequests`, `interval`, `timeout`, `trip`), and
//!   `spec.targets.apps` / `components` (`outbound`, `inbound`); `actors`
//!   is refused (this runtime has no actors);
//! * Weft's `FlowControl` (`apiVersion: weft.dev/v1alpha1`): rate,
//!   concurrency and breaker rules per app (and method) or component.
//!
//! Both honour top-level `scopes` (app ids; all when absent). Every error
//! names the file and the field, e.g.
//! `res/policy.yaml: spec.policies.retries.fast.maxRetries: expected a number, got a string`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_yaml::Value;
use weft_blocks::resiliency::{
    CodeSet, DaprPolicy, FlowRule, Named, Resiliency, RetrySpec, Target,
};
use weft_components::metadata::parse_duration;
use weft_resilience::{
    AdaptiveConfig, AdaptiveLimiter, Backoff, BreakerConfig, BudgetConfig, CircuitBreaker,
    ConcurrencyLimiter, RateConfig, RateLimiter, RetryBudget, RetryPolicy, Trip, TripExpr,
};

use super::yaml::{from_value, ObjectMeta};
use super::ConfigError;

fn err(file: &str, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    let field = field.into();
    ConfigError::File {
        file: file.to_string(),
        field: (!field.is_empty()).then_some(field),
        reason: reason.into(),
    }
}

/// The resources of `dir` for `app_id`: every `Resiliency` and
/// `FlowControl` document in scope, merged (a target named twice is an
/// error naming both files).
pub fn load_dir(dir: &Path, app_id: &str) -> Result<Resiliency, ConfigError> {
    let files = super::resources::yaml_files(dir).map_err(|e| {
        err(
            &dir.display().to_string(),
            "",
            format!("cannot read resources directory: {e}"),
        )
    })?;
    let mut out = Builder::default();
    for path in files {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| err(&file, "", format!("cannot read file: {e}")))?;
        out.add_file(&file, &text, app_id)?;
    }
    Ok(out.resiliency)
}

/// Re-reads the policies of `dir` when its YAML files change (checked
/// every `every`): a valid set replaces the one in force for the calls
/// that start from then on; an invalid one is logged, naming the file and
/// field, and the old set stays. Calls under way are not disturbed.
pub fn watch(
    dir: PathBuf,
    app_id: String,
    policies: Arc<weft_blocks::resiliency::Policies>,
    every: Duration,
    shutdown: weft_blocks::Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = fingerprint(&dir);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = fingerprint(&dir);
            if now == seen {
                continue;
            }
            seen = now;
            match load_dir(&dir, &app_id) {
                Ok(r) => {
                    tracing::info!(dir = %dir.display(), "resiliency policies and flow rules reloaded");
                    policies.replace(r);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "resiliency files changed but are not valid: the previous policies stay in force");
                }
            }
        }
    })
}

/// Feeds the adaptive protection, when configured, this process's CPU
/// use every `every`: the fraction of one core busy over the last period
/// (user and system time from /proc/self/stat; Linux's 100 ticks per
/// second).
pub fn sample_cpu(
    policies: Arc<weft_blocks::resiliency::Policies>,
    every: Duration,
    shutdown: weft_blocks::Shutdown,
) -> tokio::task::JoinHandle<()> {
    fn ticks() -> Option<u64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command (which may hold spaces) end with ')'.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    }
    tokio::spawn(async move {
        let mut last = (Instant::now(), ticks());
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = (Instant::now(), ticks());
            if let (Some(a), Some(b)) = (last.1, now.1) {
                let secs = now.0.duration_since(last.0).as_secs_f64();
                if let Some(limiter) = policies.active().and_then(|r| r.system().cloned()) {
                    if secs > 0.0 {
                        limiter.set_cpu(((b - a) as f64 / 100.0 / secs).min(1.0));
                    }
                }
            }
            last = now;
        }
    })
}

/// Names, sizes and modification times of the directory's YAML files.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    super::resources::yaml_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let md = std::fs::metadata(&p).ok();
            let len = md.as_ref().map_or(0, |m| m.len());
            (p, len, md.and_then(|m| m.modified().ok()))
        })
        .collect()
}

/// Collects documents, remembering where each target was defined.
#[derive(Default)]
pub struct Builder {
    pub resiliency: Resiliency,
    seen: BTreeMap<String, String>,
}

impl Builder {
    /// Adds the resiliency documents of one file (other kinds are skipped;
    /// YAML errors are the component loader's to report).
    pub fn add_file(&mut self, file: &str, text: &str, app_id: &str) -> Result<(), ConfigError> {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let Ok(value) = Value::deserialize(doc) else {
                return Ok(()); // reported by the component loader
            };
            let kind = value
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match kind {
                "Resiliency" => self.dapr(file, value, app_id)?,
                "FlowControl" => self.flow(file, value, app_id)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn claim(&mut self, file: &str, what: String, field: &str) -> Result<(), ConfigError> {
        if let Some(prev) = self.seen.insert(what.clone(), file.to_string()) {
            return Err(err(
                file,
                field,
                format!("{what} already has a policy in {prev} (one per target)"),
            ));
        }
        Ok(())
    }

    fn dapr(&mut self, file: &str, value: Value, app_id: &str) -> Result<(), ConfigError> {
        let Some((name, spec)) =
            open::<ResiliencySpec>(file, value, app_id, "dapr.io/v1alpha1", "Resiliency")?
        else {
            return Ok(());
        };
        let policies = spec.policies.unwrap_or_default();
        let mut timeouts = BTreeMap::new();
        for (k, v) in &policies.timeouts {
            let field = format!("spec.policies.timeouts.{k}");
            timeouts.insert(k.clone(), duration(file, &field, v)?);
        }
        let mut retries = BTreeMap::new();
        for (k, r) in &policies.retries {
            retries.insert(
                k.clone(),
                retry(file, &format!("spec.policies.retries.{k}"), r)?,
            );
        }
        let mut breakers = BTreeMap::new();
        for (k, b) in &policies.circuit_breakers {
            breakers.insert(
                k.clone(),
                dapr_breaker(file, &format!("spec.policies.circuitBreakers.{k}"), b)?,
            );
        }
        let targets = spec.targets.unwrap_or_default();
        if targets.actors.as_ref().is_some_and(|a| !a.is_null()) {
            return Err(err(
                file,
                "spec.targets.actors",
                "actors are not supported by this runtime; remove the actors targets",
            ));
        }
        let policy_of = |field: &str, t: &TargetDoc| -> Result<DaprPolicy, ConfigError> {
            let pick = |kind: &str, name: &Option<String>, known: Vec<&String>| {
                let Some(n) = name else { return Ok(None) };
                if known.contains(&n) {
                    Ok(Some(n.clone()))
                } else {
                    Err(err(
                        file,
                        format!("{field}.{kind}"),
                        format!(
                            "no {kind} policy named '{n}' in spec.policies (defined: {})",
                            list(known)
                        ),
                    ))
                }
            };
            let timeout = pick("timeout", &t.timeout, timeouts.keys().collect())?.map(|n| Named {
                value: timeouts[&n],
                name: n,
            });
            let retry = pick("retry", &t.retry, retries.keys().collect())?.map(|n| Named {
                value: retries[&n].clone(),
                name: n,
            });
            // Each target gets its own breaker state, from the named template.
            let breaker = match pick(
                "circuitBreaker",
                &t.circuit_breaker,
                breakers.keys().collect(),
            )? {
                Some(n) => Some(Named {
                    value: Arc::new(CircuitBreaker::new(breakers[&n].clone()).map_err(|e| {
                        err(
                            file,
                            format!("spec.policies.circuitBreakers.{n}"),
                            e.to_string(),
                        )
                    })?),
                    name: n,
                }),
                None => None,
            };
            Ok(DaprPolicy {
                timeout,
                retry,
                breaker,
                budget: RetryBudget::new(BudgetConfig::default()).expect("default budget is valid"),
            })
        };
        for (app, t) in &targets.apps {
            let field = format!("spec.targets.apps.{app}");
            self.claim(file, format!("app '{app}'"), &field)?;
            let p = policy_of(&field, t)?;
            self.resiliency.guards_mut(Target::App(app)).dapr = Some(p);
        }
        for (c, t) in &targets.components {
            let field = format!("spec.targets.components.{c}");
            if let Some(o) = &t.outbound {
                self.claim(file, format!("component '{c}' (outbound)"), &field)?;
                let p = policy_of(&format!("{field}.outbound"), o)?;
                self.resiliency
                    .guards_mut(Target::ComponentOutbound(c))
                    .dapr = Some(p);
            }
            if let Some(i) = &t.inbound {
                self.claim(file, format!("component '{c}' (inbound)"), &field)?;
                let p = policy_of(&format!("{field}.inbound"), i)?;
                self.resiliency.guards_mut(Target::ComponentInbound(c)).dapr = Some(p);
            }
            if t.outbound.is_none() && t.inbound.is_none() {
                return Err(err(file, &field, "names neither outbound nor inbound"));
            }
        }
        tracing::info!(file, resiliency = %name, "resiliency policies loaded");
        Ok(())
    }

    fn flow(&mut self, file: &str, value: Value, app_id: &str) -> Result<(), ConfigError> {
        let Some((doc_name, spec)) =
            open::<FlowSpec>(file, value, app_id, "weft.dev/v1alpha1", "FlowControl")?
        else {
            return Ok(());
        };
        let now = Instant::now();
        if let Some(sys) = &spec.system {
            if self.resiliency.system().is_some() {
                return Err(err(file, "spec.system", "adaptive protection is already configured by another FlowControl document (one per runtime)"));
            }
            let mut cfg = AdaptiveConfig {
                cpu_threshold: sys.cpu_threshold,
                max_in_flight: sys.max_inflight,
                ..AdaptiveConfig::default()
            };
            if let Some(w) = &sys.window {
                cfg.window = duration(file, "spec.system.window", w)?;
            }
            if let Some(b) = sys.buckets {
                cfg.buckets = b;
            }
            if let Some(f) = &sys.min_rt_floor {
                cfg.min_rt_floor = duration(file, "spec.system.minRtFloor", f)?;
            }
            let limiter =
                AdaptiveLimiter::new(cfg).map_err(|e| err(file, "spec.system", e.to_string()))?;
            self.resiliency.set_system(limiter);
        }
        for (i, r) in spec.rules.iter().enumerate() {
            let field = format!("spec.rules[{i}]");
            let name = r.name.clone().unwrap_or_else(|| format!("{doc_name}#{i}"));
            let mut method = r.method.clone();
            let target = match (&r.app, &r.component, &r.subscription) {
                (Some(a), None, None) => Target::App(a),
                (None, Some(c), None) => {
                    if r.method.is_some() {
                        return Err(err(file, format!("{field}.method"), "applies to app rules only"));
                    }
                    Target::ComponentOutbound(c)
                }
                (None, None, Some(sub)) => {
                    if r.method.is_some() {
                        return Err(err(file, format!("{field}.method"), "applies to app rules only"));
                    }
                    if r.max_concurrency.is_some() || r.circuit_breaker.is_some() {
                        return Err(err(file, &field, "a subscription rule paces deliveries with qps only; limit events in flight with the subscription's maxInFlight metadata"));
                    }
                    let pubsub = sub
                        .pubsub
                        .as_deref()
                        .filter(|p| !p.is_empty())
                        .ok_or_else(|| err(file, format!("{field}.subscription.pubsub"), "missing"))?;
                    method = sub.topic.clone().filter(|t| !t.is_empty());
                    Target::ComponentInbound(pubsub)
                }
                (None, None, None) => {
                    return Err(err(file, &field, "names no target: give app (with an optional method), component or subscription"))
                }
                _ => {
                    return Err(err(file, &field, "names more than one of app, component and subscription; a rule has one target"))
                }
            };
            let rate = match r.qps {
                None => {
                    for (set, f) in [
                        (r.burst.is_some(), "burst"),
                        (r.behavior.is_some(), "behavior"),
                        (r.warm_up.is_some(), "warmUp"),
                    ] {
                        if set {
                            return Err(err(file, format!("{field}.{f}"), "needs qps"));
                        }
                    }
                    None
                }
                Some(qps) => {
                    let max_queueing = match r.behavior.as_deref().unwrap_or("reject") {
                        "reject" => Duration::ZERO,
                        "queue" => match &r.max_queueing_time {
                            Some(t) => duration(file, &format!("{field}.maxQueueingTime"), t)?,
                            None => Duration::from_millis(500),
                        },
                        other => {
                            return Err(err(
                                file,
                                format!("{field}.behavior"),
                                format!("expected reject or queue, got '{other}'"),
                            ))
                        }
                    };
                    let warm_up = match &r.warm_up {
                        Some(t) => Some(duration(file, &format!("{field}.warmUp"), t)?),
                        None => None,
                    };
                    let cfg = RateConfig {
                        qps,
                        burst: r.burst.unwrap_or_else(|| (qps.ceil() as u32).max(1)),
                        warm_up,
                        cold_factor: r.cold_factor.unwrap_or(3.0),
                        max_queueing,
                    };
                    Some(RateLimiter::new(cfg, now).map_err(|e| err(file, &field, e.to_string()))?)
                }
            };
            let concurrency = match r.max_concurrency {
                Some(0) => {
                    return Err(err(
                        file,
                        format!("{field}.maxConcurrency"),
                        "must be at least 1",
                    ))
                }
                Some(n) => Some(Arc::new(ConcurrencyLimiter::new(n))),
                None => None,
            };
            let breaker = match &r.circuit_breaker {
                Some(b) => {
                    let cfg = flow_breaker(file, &format!("{field}.circuitBreaker"), b)?;
                    Some(Arc::new(CircuitBreaker::new(cfg).map_err(|e| {
                        err(file, format!("{field}.circuitBreaker"), e.to_string())
                    })?))
                }
                None => None,
            };
            if rate.is_none() && concurrency.is_none() && breaker.is_none() {
                return Err(err(
                    file,
                    &field,
                    "limits nothing: give qps, maxConcurrency or circuitBreaker",
                ));
            }
            self.resiliency.guards_mut(target).flow.push(FlowRule {
                name,
                method,
                rate,
                concurrency,
                breaker,
            });
        }
        Ok(())
    }
}

/// Reads a resource document: checks its `apiVersion`, skips it when
/// `app_id` is out of its `scopes`; else its `metadata.name` and `spec`.
fn open<S: serde::de::DeserializeOwned>(
    file: &str,
    value: Value,
    app_id: &str,
    api_version: &str,
    kind: &str,
) -> Result<Option<(String, S)>, ConfigError> {
    let doc: Envelope<S> = from_value(value).map_err(|(f, r)| err(file, f, r))?;
    if doc.api_version.as_deref() != Some(api_version) {
        return Err(err(
            file,
            "apiVersion",
            format!(
                "expected {api_version} for kind {kind}, got {}",
                doc.api_version.as_deref().unwrap_or("nothing")
            ),
        ));
    }
    if !in_scope(&doc.scopes, app_id) {
        return Ok(None);
    }
    let name = doc.metadata.and_then(|m| m.name).unwrap_or_default();
    let spec = doc.spec.ok_or_else(|| err(file, "spec", "missing"))?;
    Ok(Some((name, spec)))
}

fn in_scope(scopes: &Option<Vec<String>>, app_id: &str) -> bool {
    scopes
        .as_ref()
        .is_none_or(|s| s.is_empty() || s.iter().any(|a| a == app_id))
}

fn list(names: Vec<&String>) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A Go-style duration (`5s`, `500ms`, `1m30s`) or a number of seconds.
fn duration(file: &str, field: &str, v: &Value) -> Result<Duration, ConfigError> {
    let raw = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(err(file, field, "expected a duration such as 5s or 500ms")),
    };
    go_duration(&raw).ok_or_else(|| {
        err(
            file,
            field,
            format!("'{raw}' is not a duration (e.g. 5s, 500ms, 1m30s)"),
        )
    })
}

/// Sums `1m30s`-style parts.
fn go_duration(raw: &str) -> Option<Duration> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    if let Some(d) = parse_duration(s) {
        return Some(d);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|i| *i > 0)?;
        let unit_end = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .map_or(rest.len(), |i| digits + i);
        total += parse_duration(&rest[..unit_end])?;
        rest = &rest[unit_end..];
    }
    Some(total)
}

fn retry(file: &str, field: &str, r: &RetryDoc) -> Result<RetrySpec, ConfigError> {
    let backoff = match r.policy.as_deref().unwrap_or("constant") {
        "constant" => Backoff::Constant {
            duration: match &r.duration {
                Some(d) => duration(file, &format!("{field}.duration"), d)?,
                None => Duration::from_secs(5),
            },
        },
        "exponential" => {
            let mut b = Backoff::dapr_exponential();
            if let (Some(d), Backoff::Exponential { max_interval, .. }) = (&r.max_interval, &mut b)
            {
                *max_interval = duration(file, &format!("{field}.maxInterval"), d)?;
            }
            b
        }
        other => {
            return Err(err(
                file,
                format!("{field}.policy"),
                format!("expected constant or exponential, got '{other}'"),
            ))
        }
    };
    let max_retries = match r.max_retries {
        None | Some(-1) => None,
        Some(n) if n >= 0 => Some(n as u32),
        Some(n) => {
            return Err(err(
                file,
                format!("{field}.maxRetries"),
                format!("must be -1 (no limit) or at least 0, got {n}"),
            ))
        }
    };
    let codes = match r
        .matching
        .as_ref()
        .and_then(|m| m.grpc_status_codes.as_deref())
    {
        Some(c) if !c.trim().is_empty() => Some(
            CodeSet::parse(c)
                .map_err(|e| err(file, format!("{field}.matching.gRPCStatusCodes"), e))?,
        ),
        _ => None,
    };
    if let Some(h) = r
        .matching
        .as_ref()
        .and_then(|m| m.http_status_codes.as_deref())
    {
        check_http_codes(h)
            .map_err(|e| err(file, format!("{field}.matching.httpStatusCodes"), e))?;
    }
    let policy = RetryPolicy {
        backoff,
        max_retries,
        max_elapsed: None,
    };
    policy
        .validate()
        .map_err(|e| err(file, field, e.to_string()))?;
    Ok(RetrySpec { policy, codes })
}

/// Dapr's HTTP code list: checked, though this runtime's calls are gRPC.
fn check_http_codes(raw: &str) -> Result<(), String> {
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ok = |s: &str| {
            s.trim()
                .parse::<u16>()
                .is_ok_and(|c| (100..=599).contains(&c))
        };
        let valid = match part.split_once('-') {
            Some((a, b)) => ok(a) && ok(b),
            None => ok(part),
        };
        if !valid {
            return Err(format!(
                "'{part}' is not an HTTP status code or range (100-599)"
            ));
        }
    }
    Ok(())
}

fn dapr_breaker(file: &str, field: &str, b: &BreakerDoc) -> Result<BreakerConfig, ConfigError> {
    let mut cfg = BreakerConfig::default();
    if let Some(t) = &b.trip {
        cfg.trip = Trip::Expr(
            TripExpr::parse(t).map_err(|e| err(file, format!("{field}.trip"), e.to_string()))?,
        );
    }
    if let Some(t) = &b.timeout {
        cfg.open_for = duration(file, &format!("{field}.timeout"), t)?;
    }
    if let Some(i) = &b.interval {
        cfg.interval =
            Some(duration(file, &format!("{field}.interval"), i)?).filter(|d| !d.is_zero());
    }
    if let Some(m) = b.max_requests {
        cfg.half_open_max = m;
    }
    cfg.validate()
        .map_err(|e| err(file, field, e.to_string()))?;
    Ok(cfg)
}

fn flow_breaker(file: &str, field: &str, b: &FlowBreakerDoc) -> Result<BreakerConfig, ConfigError> {
    let threshold = b
        .threshold
        .ok_or_else(|| err(file, format!("{field}.threshold"), "missing"))?;
    let min_requests = b.min_requests.unwrap_or(5);
    let trip = match b.strategy.as_deref() {
        Some("errorCount") => Trip::ErrorCount {
            count: threshold as u32,
        },
        Some("errorRatio") => Trip::ErrorRatio {
            ratio: threshold,
            min_requests,
        },
        Some("slowRatio") => Trip::SlowRatio {
            max_rt: match &b.max_rt {
                Some(t) => duration(file, &format!("{field}.maxRt"), t)?,
                None => {
                    return Err(err(
                        file,
                        format!("{field}.maxRt"),
                        "missing (slowRatio needs the slow-call threshold)",
                    ))
                }
            },
            ratio: threshold,
            min_requests,
        },
        Some(other) => {
            return Err(err(
                file,
                format!("{field}.strategy"),
                format!("expected slowRatio, errorRatio or errorCount, got '{other}'"),
            ))
        }
        None => {
            return Err(err(
                file,
                format!("{field}.strategy"),
                "missing (slowRatio, errorRatio or errorCount)",
            ))
        }
    };
    let cfg = BreakerConfig {
        trip,
        open_for: match &b.open_for {
            Some(t) => duration(file, &format!("{field}.openFor"), t)?,
            None => Duration::from_secs(10),
        },
        half_open_max: b.half_open_probes.unwrap_or(1),
        interval: None,
        stat_window: match &b.stat_interval {
            Some(t) => duration(file, &format!("{field}.statInterval"), t)?,
            None => Duration::from_secs(1),
        },
    };
    cfg.validate()
        .map_err(|e| err(file, field, e.to_string()))?;
    Ok(cfg)
}

// === documents ===

/// The fields every resource document has.
#[derive(Debug, Deserialize)]
#[serde(bound(deserialize = "S: serde::de::DeserializeOwned"))]
struct Envelope<S> {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<ObjectMeta>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    spec: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResiliencySpec {
    #[serde(default)]
    policies: Option<PoliciesDoc>,
    #[serde(default)]
    targets: Option<TargetsDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PoliciesDoc {
    #[serde(default)]
    timeouts: BTreeMap<String, Value>,
    #[serde(default)]
    retries: BTreeMap<String, RetryDoc>,
    #[serde(default)]
    circuit_breakers: BTreeMap<String, BreakerDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RetryDoc {
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    duration: Option<Value>,
    #[serde(default)]
    max_interval: Option<Value>,
    #[serde(default)]
    max_retries: Option<i64>,
    #[serde(default)]
    matching: Option<MatchingDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchingDoc {
    #[serde(rename = "gRPCStatusCodes", default)]
    grpc_status_codes: Option<String>,
    #[serde(rename = "httpStatusCodes", default)]
    http_status_codes: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BreakerDoc {
    #[serde(default)]
    max_requests: Option<u32>,
    #[serde(default)]
    interval: Option<Value>,
    #[serde(default)]
    timeout: Option<Value>,
    #[serde(default)]
    trip: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetsDoc {
    #[serde(default)]
    apps: BTreeMap<String, TargetDoc>,
    #[serde(default)]
    components: BTreeMap<String, ComponentTargetDoc>,
    #[serde(default)]
    actors: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TargetDoc {
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retry: Option<String>,
    #[serde(default)]
    circuit_breaker: Option<String>,
    /// Dapr's per-instance breaker cache size: accepted, breakers here are per app id.
    #[serde(default)]
    #[allow(dead_code)]
    circuit_breaker_cache_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentTargetDoc {
    #[serde(default)]
    outbound: Option<TargetDoc>,
    #[serde(default)]
    inbound: Option<TargetDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowSpec {
    #[serde(default)]
    rules: Vec<FlowRuleDoc>,
    #[serde(default)]
    system: Option<SystemDoc>,
}

/// `spec.rules[i].subscription`: a pub/sub component's deliveries (of
/// one topic, or all).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionDoc {
    #[serde(default)]
    pubsub: Option<String>,
    #[serde(default)]
    topic: Option<String>,
}

/// `spec.system`: adaptive protection of calls into this app.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SystemDoc {
    #[serde(default)]
    max_inflight: Option<u32>,
    #[serde(default)]
    cpu_threshold: Option<f64>,
    #[serde(default)]
    window: Option<Value>,
    #[serde(default)]
    buckets: Option<u32>,
    #[serde(default)]
    min_rt_floor: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FlowRuleDoc {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    component: Option<String>,
    #[serde(default)]
    subscription: Option<SubscriptionDoc>,
    #[serde(default)]
    qps: Option<f64>,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    behavior: Option<String>,
    #[serde(default)]
    max_queueing_time: Option<Value>,
    #[serde(default)]
    warm_up: Option<Value>,
    #[serde(default)]
    cold_factor: Option<f64>,
    #[serde(default)]
    max_concurrency: Option<u32>,
    #[serde(default)]
    circuit_breaker: Option<FlowBreakerDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FlowBreakerDoc {
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    threshold: Option<f64>,
    #[serde(default)]
    max_rt: Option<Value>,
    #[serde(default)]
    min_requests: Option<u32>,
    #[serde(default)]
    stat_interval: Option<Value>,
    #[serde(default)]
    open_for: Option<Value>,
    #[serde(default)]
    half_open_probes: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> Result<Resiliency, ConfigError> {
        let mut b = Builder::default();
        b.add_file("res.yaml", text, "me")?;
        Ok(b.resiliency)
    }

    const DAPR: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: myresiliency
scopes: [me]
spec:
  policies:
    timeouts:
      general: 5s
      important: 1m30s
    retries:
      retryForever:
        policy: exponential
        maxInterval: 15s
        maxRetries: -1
      someRetry:
        policy: constant
        duration: 200ms
        maxRetries: 3
        matching:
          httpStatusCodes: 429,500-599
          gRPCStatusCodes: 1-4,8-11,13,14
    circuitBreakers:
      simpleCB:
        maxRequests: 1
        timeout: 30s
        trip: consecutiveFailures >= 5
        interval: 0s
  targets:
    apps:
      appB:
        timeout: general
        retry: someRetry
        circuitBreaker: simpleCB
        circuitBreakerCacheSize: 100
    components:
      statestore:
        outbound:
          timeout: general
          retry: retryForever
          circuitBreaker: simpleCB
"#;

    #[test]
    fn a_dapr_file_reads_unchanged() {
        let r = build(DAPR).unwrap();
        assert!(r.covers(Target::App("appB")));
        assert!(r.covers(Target::ComponentOutbound("statestore")));
        assert!(!r.covers(Target::ComponentInbound("statestore")));
        let snap = r.snapshot();
        assert_eq!(snap[0]["circuitBreaker"]["name"], "simpleCB");
        assert_eq!(snap[0]["retry"], "someRetry");
        // Out of scope: nothing applies.
        let mut b = Builder::default();
        b.add_file("res.yaml", DAPR, "other").unwrap();
        assert!(b.resiliency.is_empty());
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(
            go_duration("1h2m3s500ms"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(go_duration("5x"), None);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (DAPR.replace("retry: someRetry", "retry: nope"), "spec.targets.apps.appB.retry: no retry policy named 'nope' in spec.policies (defined: retryForever, someRetry)"),
            (DAPR.replace("maxRetries: 3", "maxRetries: -4"), "spec.policies.retries.someRetry.maxRetries: must be -1"),
            (DAPR.replace("1-4,8-11", "1-4,8-99"), "spec.policies.retries.someRetry.matching.gRPCStatusCodes: '8-99'"),
            (DAPR.replace("consecutiveFailures >= 5", "consecutiveFailures >> 5"), "spec.policies.circuitBreakers.simpleCB.trip: trip expression"),
            (DAPR.replace("general: 5s", "general: soon"), "spec.policies.timeouts.general: 'soon' is not a duration"),
            (DAPR.replace("policy: constant", "policy: linear"), "spec.policies.retries.someRetry.policy: expected constant or exponential"),
            (DAPR.replace("    components:", "    actors:\n      myActor: {}\n    components:"), "spec.targets.actors: actors are not supported"),
            (DAPR.replace("maxRequests: 1", "maxRequest: 1"), "unknown field"),
        ];
        for (text, want) in cases {
            let e = build(&text).unwrap_err().to_string();
            assert!(e.starts_with("res.yaml: "), "{e}");
            assert!(e.contains(want), "{e}\nshould contain: {want}");
        }
    }

    #[test]
    fn flow_rules_read_and_refuse_what_is_wrong() {
        let ok = r#"
apiVersion: weft.dev/v1alpha1
kind: FlowControl
metadata: {name: limits}
spec:
  rules:
    - name: greet-rate
      app: greeter
      method: greet
      qps: 100
      behavior: queue
      maxQueueingTime: 200ms
      warmUp: 10s
    - app: greeter
      maxConcurrency: 8
      circuitBreaker: {strategy: slowRatio, maxRt: 100ms, threshold: 0.5, minRequests: 10, openFor: 5s}
    - component: statestore
      qps: 500
"#;
        let r = build(ok).unwrap();
        assert!(r.covers(Target::App("greeter")));
        assert!(r.covers(Target::ComponentOutbound("statestore")));
        let snap = r.snapshot();
        assert_eq!(snap[0]["flowRules"][0]["name"], "greet-rate");
        assert_eq!(snap[0]["flowRules"][1]["name"], "limits#1");
        let cases = [
            (
                ok.replace("qps: 100", "qps: 0"),
                "spec.rules[0]: qps must be > 0",
            ),
            (
                ok.replace("behavior: queue", "behavior: wait"),
                "spec.rules[0].behavior: expected reject or queue",
            ),
            (
                ok.replace("strategy: slowRatio", "strategy: fast"),
                "spec.rules[1].circuitBreaker.strategy",
            ),
            (
                ok.replace("maxConcurrency: 8", "maxConcurrency: 0"),
                "spec.rules[1].maxConcurrency: must be at least 1",
            ),
            (
                ok.replace(
                    "    - component: statestore\n      qps: 500\n",
                    "    - component: statestore\n",
                ),
                "spec.rules[2]: limits nothing",
            ),
            (
                ok.replace("app: greeter\n      method", "method"),
                "spec.rules[0]: names no target",
            ),
            (
                ok.replace("weft.dev/v1alpha1", "dapr.io/v1alpha1"),
                "apiVersion: expected weft.dev/v1alpha1",
            ),
            (ok.replace("qps: 100", "qsp: 100"), "unknown field"),
            (
                ok.replace(
                    "component: statestore",
                    "subscription: {pubsub: bus}\n      maxConcurrency: 3",
                ),
                "spec.rules[2]: a subscription rule paces deliveries with qps only",
            ),
            (
                ok.replace("component: statestore", "subscription: {topic: t}"),
                "spec.rules[2].subscription.pubsub: missing",
            ),
        ];
        for (text, want) in cases {
            let e = build(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{e}\nshould contain: {want}");
        }
    }
}
