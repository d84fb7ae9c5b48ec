//! Resiliency around calls to other apps and to components: Dapr's
//! policies (timeouts, retries, circuit breakers) by target, and Weft's
//! flow-control rules (rate, concurrency, Sentinel-style breakers) by
//! target and method. The algorithms are `weft_resilience`'s; this module
//! decides when they apply and what the caller is told.
//!
//! A call goes through, in order:
//!
//! 1. the flow rules of its target that cover its method: the rate limit
//!    (rejected with RESOURCE_EXHAUSTED naming the rule, or queued up to
//!    the rule's maximum wait), the concurrency limit (RESOURCE_EXHAUSTED),
//!    the rule's breaker (UNAVAILABLE while open);
//! 2. the Dapr policy of its target: its breaker (UNAVAILABLE while open,
//!    naming the breaker), then the attempt with the policy's timeout
//!    (never past the caller's deadline); a failed attempt is retried with
//!    the policy's back-off while the error's gRPC code matches the
//!    policy's `matching.gRPCStatusCodes` (every failure when absent),
//!    retries remain, the next attempt starts before the deadline and the
//!    target's retry budget (a fifth of its recent calls, at least a few
//!    per second) allows it — so retries cannot multiply the load on a
//!    failing target.
//!
//! Errors that are the caller's (invalid argument, not found, aborted,
//! failed precondition, permission denied, unauthenticated) count as
//! successes for breakers and are never retried. With no policy and no
//! rule for a target the attempt runs as is: one map lookup.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_resilience::{
    AdaptiveLimiter, AdaptivePermit, Admission, BreakerPermit, BreakerState, CircuitBreaker,
    ConcurrencyLimiter, RateLimiter, RetryBudget, RetryPolicy,
};

use crate::error::{BlockError, Code};

/// The policies in force, replaced as a whole when their files change
/// (breakers and limiters then start afresh). With none configured a call
/// costs one atomic load.
#[derive(Default)]
pub struct Policies {
    current: std::sync::RwLock<Arc<Resiliency>>,
    any: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.active() {
            Some(r) => r.fmt(f),
            None => f.write_str("Policies(none)"),
        }
    }
}

impl Policies {
    pub fn new(r: Resiliency) -> Self {
        let p = Policies::default();
        p.replace(r);
        p
    }

    /// The policies, unless none is configured.
    pub fn active(&self) -> Option<Arc<Resiliency>> {
        if !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    /// Puts `r` in force for the calls that start from now on.
    pub fn replace(&self, r: Resiliency) {
        let any = !r.is_empty();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(r);
        self.any.store(any, std::sync::atomic::Ordering::Release);
    }
}

/// What a call is made to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Another app, by app id (service invocation).
    App(&'a str),
    /// A component, for calls the runtime makes to it (state operations,
    /// publishing, …).
    ComponentOutbound(&'a str),
    /// A component, for what it brings in (deliveries of a subscription).
    ComponentInbound(&'a str),
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::App(a) => write!(f, "app '{a}'"),
            Target::ComponentOutbound(c) => write!(f, "component '{c}'"),
            Target::ComponentInbound(c) => write!(f, "component '{c}' (inbound)"),
        }
    }
}

/// A set of gRPC codes (Dapr's `matching.gRPCStatusCodes`, e.g. `1-4,8-11,13,14`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeSet(u32);

impl CodeSet {
    /// Parses Dapr's list of codes and ranges (0–16).
    pub fn parse(raw: &str) -> Result<CodeSet, String> {
        let mut bits = 0u32;
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let num = |s: &str| {
                s.parse::<u32>()
                    .ok()
                    .filter(|n| *n <= 16)
                    .ok_or_else(|| format!("'{part}' is not a gRPC status code or range (0-16)"))
            };
            let (lo, hi) = (num(lo)?, num(hi)?);
            if lo > hi {
                return Err(format!("range '{part}' is reversed"));
            }
            for c in lo..=hi {
                bits |= 1 << c;
            }
        }
        if bits == 0 {
            return Err("lists no code".into());
        }
        Ok(CodeSet(bits))
    }

    pub fn contains(&self, code: Code) -> bool {
        let c = code.as_i32();
        (0..=16).contains(&c) && self.0 & (1 << c) != 0
    }
}

/// A named policy part, for messages and the metadata view.
#[derive(Debug, Clone)]
pub struct Named<T> {
    pub name: String,
    pub value: T,
}

/// A Dapr retry policy with its matching codes.
#[derive(Debug, Clone)]
pub struct RetrySpec {
    pub policy: RetryPolicy,
    /// `None`: every failure is retried.
    pub codes: Option<CodeSet>,
}

/// The Dapr policy of one target.
pub struct DaprPolicy {
    pub timeout: Option<Named<Duration>>,
    pub retry: Option<Named<RetrySpec>>,
    pub breaker: Option<Named<Arc<CircuitBreaker>>>,
    pub budget: RetryBudget,
}

/// One flow-control rule.
pub struct FlowRule {
    pub name: String,
    /// The method (operation) it covers; all when `None`.
    pub method: Option<String>,
    pub rate: Option<RateLimiter>,
    pub concurrency: Option<Arc<ConcurrencyLimiter>>,
    pub breaker: Option<Arc<CircuitBreaker>>,
}

/// Everything that applies to one target.
#[derive(Default)]
pub struct Guards {
    pub dapr: Option<DaprPolicy>,
    pub flow: Vec<FlowRule>,
}

/// The policies and rules of a runtime.
#[derive(Default)]
pub struct Resiliency {
    apps: HashMap<String, Guards>,
    outbound: HashMap<String, Guards>,
    inbound: HashMap<String, Guards>,
    /// Adaptive protection of calls into this app (FlowControl `system`).
    system: Option<Arc<AdaptiveLimiter>>,
}

impl std::fmt::Debug for Resiliency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resiliency")
            .field("apps", &self.apps.keys().collect::<Vec<_>>())
            .field("components", &self.outbound.keys().collect::<Vec<_>>())
            .field(
                "components_inbound",
                &self.inbound.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Resiliency {
    /// Whether anything applies to `target`.
    pub fn covers(&self, target: Target<'_>) -> bool {
        self.guards(target).is_some()
    }

    /// No policy, no rule.
    pub fn none() -> Self {
        Self::default()
    }

    /// The guards of `target`, created empty when missing (for building).
    pub fn guards_mut(&mut self, target: Target<'_>) -> &mut Guards {
        let (map, key) = match target {
            Target::App(k) => (&mut self.apps, k),
            Target::ComponentOutbound(k) => (&mut self.outbound, k),
            Target::ComponentInbound(k) => (&mut self.inbound, k),
        };
        map.entry(key.to_string()).or_default()
    }

    fn guards(&self, target: Target<'_>) -> Option<&Guards> {
        match target {
            Target::App(k) => self.apps.get(k),
            Target::ComponentOutbound(k) => self.outbound.get(k),
            Target::ComponentInbound(k) => self.inbound.get(k),
        }
    }

    /// Whether anything is configured.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
            && self.outbound.is_empty()
            && self.inbound.is_empty()
            && self.system.is_none()
    }

    /// Sets the adaptive protection of calls into this app.
    pub fn set_system(&mut self, limiter: AdaptiveLimiter) {
        self.system = Some(Arc::new(limiter));
    }

    /// The adaptive limiter, if configured (the runtime feeds it its CPU).
    pub fn system(&self) -> Option<&Arc<AdaptiveLimiter>> {
        self.system.as_ref()
    }

    /// Admits a call into this app (from another runtime) or sheds it with
    /// RESOURCE_EXHAUSTED before it costs work; the permit is to be
    /// finished with [`AdaptivePermit::done`] when the call ends.
    pub fn admit_inbound(&self) -> Result<Option<AdaptivePermit>, BlockError> {
        match &self.system {
            None => Ok(None),
            Some(a) => a.admit(Instant::now()).map(Some).map_err(|shed| {
                BlockError::ResourceExhausted(format!(
                    "load protection: this runtime sheds calls to its app now: {shed}"
                ))
            }),
        }
    }

    /// Runs `attempt` (given the time it may take) for `method` of
    /// `target` within `deadline`, under the target's rules and policy.
    pub async fn call<T, F, Fut>(
        &self,
        target: Target<'_>,
        method: &str,
        deadline: Duration,
        mut attempt: F,
    ) -> Result<T, BlockError>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<T, BlockError>>,
    {
        let Some(g) = self.guards(target) else {
            return attempt(deadline).await;
        };
        // One clock read for every rule (they decide within nanoseconds of
        // each other).
        let started = Instant::now();
        let deadline_at = started + deadline;
        // 1. Flow rules. Permits are held without allocating for the usual
        // one rule per target.
        let mut concurrency: Held<weft_resilience::ConcurrencyPermit> = Held::default();
        let mut flow_breakers: Held<BreakerPermit> = Held::default();
        for rule in g.flow.iter().filter(|r| covers(r, method)) {
            if let Some(rate) = &rule.rate {
                match rate.acquire(started) {
                    Admission::Now => {}
                    Admission::After(wait) => tokio::time::sleep(wait).await,
                    Admission::Rejected { retry_after } => {
                        return Err(BlockError::ResourceExhausted(format!(
                            "flow rule '{}': {target} is over its rate of {} calls/s (method '{method}'); retry after {} ms",
                            rule.name,
                            rate.config().qps,
                            retry_after.as_millis().max(1)
                        )))
                    }
                }
            }
            if let Some(limit) = &rule.concurrency {
                match limit.try_acquire() {
                    Some(p) => concurrency.push(p),
                    None => {
                        return Err(BlockError::ResourceExhausted(format!(
                            "flow rule '{}': {target} already has {} calls in flight, its concurrency limit (method '{method}')",
                            rule.name,
                            limit.max()
                        )))
                    }
                }
            }
            if let Some(b) = &rule.breaker {
                match b.try_pass(started) {
                    Ok(p) => flow_breakers.push(p),
                    Err(open) => {
                        return Err(BlockError::Unavailable(format!(
                            "flow rule '{}': the circuit breaker of {target} is open (method '{method}'); next probe in {} ms",
                            rule.name,
                            open.retry_in.as_millis()
                        )))
                    }
                }
            }
        }
        // 2. The Dapr policy.
        let result = match &g.dapr {
            None => attempt(deadline).await,
            Some(p) => dapr_call(p, target, started, deadline_at, &mut attempt).await,
        };
        if !flow_breakers.is_empty() {
            let now = Instant::now();
            let ok = result.as_ref().map_or_else(|e| !is_failure(e), |_| true);
            for permit in flow_breakers.drain() {
                permit.record(now, ok, now - started);
            }
        }
        drop(concurrency);
        result
    }

    /// Waits until the rate rules on `component`'s subscriptions (for
    /// `topic`, or all topics) admit one more delivery: deliveries are
    /// slowed, never refused.
    pub async fn pace_inbound(&self, component: &str, topic: &str) {
        let Some(g) = self.guards(Target::ComponentInbound(component)) else {
            return;
        };
        for rule in g.flow.iter().filter(|r| covers(r, topic)) {
            let Some(rate) = &rule.rate else { continue };
            loop {
                match rate.acquire(Instant::now()) {
                    Admission::Now => break,
                    Admission::After(wait) => {
                        tokio::time::sleep(wait).await;
                        break;
                    }
                    Admission::Rejected { retry_after } => {
                        tokio::time::sleep(retry_after.max(Duration::from_millis(1))).await
                    }
                }
            }
        }
    }

    /// The state of every breaker and limiter, for the metadata API.
    pub fn snapshot(&self) -> serde_json::Value {
        let now = Instant::now();
        let mut out = Vec::new();
        let kinds = [
            ("app", &self.apps),
            ("component", &self.outbound),
            ("componentInbound", &self.inbound),
        ];
        for (kind, map) in kinds {
            let mut names: Vec<&String> = map.keys().collect();
            names.sort();
            for name in names {
                let g = &map[name];
                let mut entry = serde_json::json!({"target": kind, "name": name});
                if let Some(p) = &g.dapr {
                    entry["timeout"] = p.timeout.as_ref().map(|t| t.name.clone()).into();
                    entry["retry"] = p.retry.as_ref().map(|r| r.name.clone()).into();
                    if let Some(b) = &p.breaker {
                        let s = b.value.stats(now);
                        entry["circuitBreaker"] = serde_json::json!({
                            "name": b.name,
                            "state": state_name(s.state),
                            "openedTotal": s.opened_total,
                            "rejectedTotal": s.rejected_total,
                        });
                    }
                    let r = p.budget.stats(now);
                    entry["retries"] = serde_json::json!({
                        "retriedTotal": r.retries,
                        "refusedTotal": r.refused_total,
                    });
                }
                let rules: Vec<serde_json::Value> = g
                    .flow
                    .iter()
                    .map(|r| {
                        let mut v = serde_json::json!({"name": r.name, "method": r.method});
                        if let Some(rate) = &r.rate {
                            let s = rate.stats(now);
                            v["rate"] = serde_json::json!({
                                "qps": rate.config().qps,
                                "passedTotal": s.passed_total,
                                "rejectedTotal": s.rejected_total,
                            });
                        }
                        if let Some(c) = &r.concurrency {
                            v["concurrency"] = serde_json::json!({
                                "max": c.max(),
                                "inFlight": c.in_flight(),
                                "rejectedTotal": c.rejected_total(),
                            });
                        }
                        if let Some(b) = &r.breaker {
                            let s = b.stats(now);
                            v["circuitBreaker"] = serde_json::json!({
                                "state": state_name(s.state),
                                "openedTotal": s.opened_total,
                                "rejectedTotal": s.rejected_total,
                            });
                        }
                        v
                    })
                    .collect();
                if !rules.is_empty() {
                    entry["flowRules"] = rules.into();
                }
                out.push(entry);
            }
        }
        if let Some(a) = &self.system {
            let s = a.stats(now);
            out.push(serde_json::json!({
                "target": "system",
                "inFlight": s.in_flight,
                "limit": s.limit,
                "maxPassPerSecond": s.max_pass_per_sec,
                "minRtMs": s.min_rt.map(|d| d.as_secs_f64() * 1000.0),
                "cpu": s.cpu,
                "admittedTotal": s.admitted_total,
                "shedTotal": s.shed_total,
            }));
        }
        out.into()
    }
}

/// The policies' state at scrape time: `weft_resiliency_breaker_state`
/// (0 closed, 1 open, 2 half-open), `weft_resiliency_rejected_total` (by
/// rule and reason: rate, concurrency, breaker), `weft_resiliency_retries_total`,
/// `weft_resiliency_shed_total` and `weft_resiliency_in_flight` (load protection).
#[derive(Debug)]
pub struct PoliciesCollector(pub Arc<Policies>);

impl prometheus_client::collector::Collector for PoliciesCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        type L = Vec<(&'static str, String)>;
        let Some(r) = self.0.active() else {
            return Ok(());
        };
        let now = Instant::now();
        let kinds = [
            ("app", &r.apps),
            ("component", &r.outbound),
            ("component_inbound", &r.inbound),
        ];
        let mut states: Vec<(L, i64)> = Vec::new();
        let mut rejected: Vec<(L, u64)> = Vec::new();
        let mut retries: Vec<(L, u64)> = Vec::new();
        for (kind, map) in kinds {
            for (name, g) in map {
                let base = |extra: &[(&'static str, String)]| -> L {
                    let mut l = vec![("target", kind.to_string()), ("name", name.clone())];
                    l.extend_from_slice(extra);
                    l
                };
                if let Some(p) = &g.dapr {
                    if let Some(b) = &p.breaker {
                        let st = b.value.stats(now);
                        states.push((base(&[("breaker", b.name.clone())]), state_code(st.state)));
                        rejected.push((
                            base(&[("rule", b.name.clone()), ("reason", "breaker".into())]),
                            st.rejected_total,
                        ));
                    }
                    retries.push((base(&[]), p.budget.stats(now).retries));
                }
                for rule in &g.flow {
                    let with = |reason: &str| {
                        base(&[("rule", rule.name.clone()), ("reason", reason.to_string())])
                    };
                    if let Some(rate) = &rule.rate {
                        rejected.push((with("rate"), rate.stats(now).rejected_total));
                    }
                    if let Some(c) = &rule.concurrency {
                        rejected.push((with("concurrency"), c.rejected_total()));
                    }
                    if let Some(b) = &rule.breaker {
                        let st = b.stats(now);
                        states.push((
                            base(&[("breaker", rule.name.clone())]),
                            state_code(st.state),
                        ));
                        rejected.push((with("breaker"), st.rejected_total));
                    }
                }
            }
        }
        let mut e = encoder.encode_descriptor(
            "resiliency_breaker_state",
            "Circuit breakers: 0 closed, 1 open, 2 half-open",
            None,
            MetricType::Gauge,
        )?;
        for (l, v) in &states {
            ConstGauge::new(*v).encode(e.encode_family(l)?)?;
        }
        let mut e = encoder.encode_descriptor(
            "resiliency_rejected",
            "Calls refused by a flow rule or an open breaker, by rule and reason",
            None,
            MetricType::Counter,
        )?;
        for (l, v) in &rejected {
            ConstCounter::new(*v).encode(e.encode_family(l)?)?;
        }
        let mut e = encoder.encode_descriptor(
            "resiliency_retries",
            "Retries made under Dapr retry policies",
            None,
            MetricType::Counter,
        )?;
        for (l, v) in &retries {
            ConstCounter::new(*v).encode(e.encode_family(l)?)?;
        }
        if let Some(a) = &r.system {
            let st = a.stats(now);
            let e = encoder.encode_descriptor(
                "resiliency_shed",
                "Calls into the app shed by load protection",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(st.shed_total).encode(e)?;
            let e = encoder.encode_descriptor(
                "resiliency_in_flight",
                "Calls into the app in flight under load protection",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(st.in_flight as i64).encode(e)?;
        }
        Ok(())
    }
}

fn state_code(s: BreakerState) -> i64 {
    match s {
        BreakerState::Closed => 0,
        BreakerState::Open => 1,
        BreakerState::HalfOpen => 2,
    }
}

fn state_name(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half-open",
    }
}

fn covers(rule: &FlowRule, method: &str) -> bool {
    match &rule.method {
        None => true,
        Some(m) => m == method || m.trim_start_matches('/') == method.trim_start_matches('/'),
    }
}

/// Errors that say something about the target (as opposed to the request).
fn is_failure(e: &BlockError) -> bool {
    !matches!(
        e.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::Aborted
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::AlreadyExists
            | Code::OutOfRange
    )
}

/// Values held for the length of a call: the first inline, more in a Vec.
struct Held<T> {
    first: Option<T>,
    more: Vec<T>,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held {
            first: None,
            more: Vec::new(),
        }
    }
}

impl<T> Held<T> {
    fn push(&mut self, v: T) {
        match self.first {
            None => self.first = Some(v),
            Some(_) => self.more.push(v),
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.first.take().into_iter().chain(self.more.drain(..))
    }
}

async fn dapr_call<T, F, Fut>(
    p: &DaprPolicy,
    target: Target<'_>,
    first: Instant,
    deadline_at: Instant,
    attempt: &mut F,
) -> Result<T, BlockError>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, BlockError>>,
{
    // The budget counts calls only where retries can happen.
    let mut retrying = p.retry.as_ref().map(|r| {
        p.budget.record_request(first);
        r.value.policy.start(first, weft_resilience::retry::seed())
    });
    let mut now = first;
    loop {
        let permit = match &p.breaker {
            Some(b) => match b.value.try_pass(now) {
                Ok(permit) => Some(permit),
                Err(open) => {
                    return Err(BlockError::Unavailable(format!(
                        "resiliency: circuit breaker '{}' of {target} is open; next probe in {} ms",
                        b.name,
                        open.retry_in.as_millis()
                    )))
                }
            },
            None => None,
        };
        let left = deadline_at.saturating_duration_since(now);
        let budget = match &p.timeout {
            Some(t) if t.value < left => t.value,
            _ => left,
        };
        let outcome = match tokio::time::timeout(budget, attempt(budget)).await {
            Ok(r) => r,
            Err(_) => Err(BlockError::DeadlineExceeded(match &p.timeout {
                Some(t) if t.value <= left => format!(
                    "resiliency: timeout '{}' ({} ms) of {target} passed",
                    t.name,
                    t.value.as_millis()
                ),
                _ => format!("{target} did not answer before the call's deadline"),
            })),
        };
        // The attempt may enforce the budget itself (the mesh client does):
        // its deadline error then names the policy's timeout too.
        let outcome = match (outcome, &p.timeout) {
            (Err(BlockError::DeadlineExceeded(m)), Some(t))
                if t.value <= left && !m.starts_with("resiliency:") =>
            {
                Err(BlockError::DeadlineExceeded(format!(
                    "resiliency: timeout '{}' ({} ms) of {target} passed: {m}",
                    t.name,
                    t.value.as_millis()
                )))
            }
            (o, _) => o,
        };
        // The clock again only when a breaker or a retry needs it.
        let end = if permit.is_some() || (outcome.is_err() && retrying.is_some()) {
            Instant::now()
        } else {
            now
        };
        if let Some(permit) = permit {
            let ok = outcome.as_ref().map_or_else(|e| !is_failure(e), |_| true);
            permit.record(end, ok, end - now);
        }
        let err = match outcome {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let (Some(r), Some(state)) = (&p.retry, retrying.as_mut()) else {
            return Err(err);
        };
        let matches = is_failure(&err)
            && r.value
                .codes
                .as_ref()
                .is_none_or(|codes| codes.contains(err.code()));
        if !matches {
            return Err(err);
        }
        let Some(delay) = state.next_delay(end) else {
            return Err(with_note(
                err,
                &format!("after {} retries (policy '{}')", state.retries(), r.name),
            ));
        };
        if end + delay >= deadline_at {
            return Err(with_note(
                err,
                &format!(
                    "no time left for another retry (policy '{}', {} done)",
                    r.name,
                    state.retries()
                ),
            ));
        }
        if !p.budget.try_retry(end) {
            return Err(with_note(
                err,
                &format!("retry budget of {target} spent (policy '{}')", r.name),
            ));
        }
        tracing::debug!(%target, policy = %r.name, ?delay, error = %err, "resiliency: retrying");
        tokio::time::sleep(delay).await;
        now = Instant::now();
    }
}

/// The same error with a note on why it was not retried further.
fn with_note(e: BlockError, note: &str) -> BlockError {
    let m = format!("{} ({note})", e.message());
    match e {
        BlockError::Unavailable(_) => BlockError::Unavailable(m),
        BlockError::DeadlineExceeded(_) => BlockError::DeadlineExceeded(m),
        BlockError::Internal(_) => BlockError::Internal(m),
        BlockError::ResourceExhausted(_) => BlockError::ResourceExhausted(m),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use weft_resilience::{Backoff, BreakerConfig, BudgetConfig, ConcurrencyLimiter, TripExpr};

    fn policy(retries: u32, codes: Option<&str>, breaker: Option<&str>) -> DaprPolicy {
        DaprPolicy {
            timeout: Some(Named {
                name: "short".into(),
                value: Duration::from_millis(200),
            }),
            retry: Some(Named {
                name: "fast".into(),
                value: RetrySpec {
                    policy: RetryPolicy {
                        backoff: Backoff::Constant {
                            duration: Duration::from_millis(1),
                        },
                        max_retries: Some(retries),
                        max_elapsed: None,
                    },
                    codes: codes.map(|c| CodeSet::parse(c).unwrap()),
                },
            }),
            breaker: breaker.map(|trip| Named {
                name: "cb".into(),
                value: Arc::new(
                    CircuitBreaker::new(BreakerConfig {
                        trip: weft_resilience::Trip::Expr(TripExpr::parse(trip).unwrap()),
                        open_for: Duration::from_secs(60),
                        ..BreakerConfig::default()
                    })
                    .unwrap(),
                ),
            }),
            budget: RetryBudget::new(BudgetConfig::default()).unwrap(),
        }
    }

    #[test]
    fn code_sets() {
        let s = CodeSet::parse("1-4, 8-11,13,14").unwrap();
        assert!(s.contains(Code::Unavailable) && s.contains(Code::Cancelled));
        assert!(!s.contains(Code::Ok) && !s.contains(Code::Unimplemented));
        for bad in ["", "17", "a", "4-1", "1-x"] {
            assert!(CodeSet::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn retries_matching_failures_then_gives_up_naming_the_policy() {
        let mut r = Resiliency::none();
        r.guards_mut(Target::App("b")).dapr = Some(policy(3, Some("14"), None));
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = r
            .call(Target::App("b"), "m", Duration::from_secs(5), |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(BlockError::Unavailable("down".into()))
            })
            .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "one call and three retries"
        );
        let e = out.unwrap_err();
        assert!(
            e.message().contains("after 3 retries (policy 'fast')"),
            "{e}"
        );
        // A code outside the matching set is not retried.
        calls.store(0, Ordering::SeqCst);
        let _ = r
            .call(Target::App("b"), "m", Duration::from_secs(5), |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(BlockError::Internal("bug".into()))
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // The caller's own errors are never retried.
        calls.store(0, Ordering::SeqCst);
        let _ = r
            .call(Target::App("b"), "m", Duration::from_secs(5), |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(BlockError::InvalidArgument("bad".into()))
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Other targets are untouched.
        let ok = r
            .call(Target::App("c"), "m", Duration::from_secs(5), |_| async {
                Ok(7)
            })
            .await;
        assert_eq!(ok.unwrap(), 7);
    }

    #[tokio::test]
    async fn the_policy_timeout_bounds_each_attempt() {
        let mut r = Resiliency::none();
        r.guards_mut(Target::ComponentOutbound("db")).dapr = Some(policy(0, None, None));
        let e = r
            .call(
                Target::ComponentOutbound("db"),
                "get",
                Duration::from_secs(30),
                |t| async move {
                    assert!(t <= Duration::from_millis(200));
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok::<(), BlockError>(())
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded);
        assert!(
            e.message()
                .contains("timeout 'short' (200 ms) of component 'db'"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_open_breaker_fails_fast() {
        let mut r = Resiliency::none();
        r.guards_mut(Target::App("b")).dapr =
            Some(policy(0, None, Some("consecutiveFailures >= 2")));
        for _ in 0..2 {
            let _ = r
                .call(Target::App("b"), "m", Duration::from_secs(5), |_| async {
                    Err::<(), _>(BlockError::Unavailable("down".into()))
                })
                .await;
        }
        let called = AtomicU32::new(0);
        let e = r
            .call(Target::App("b"), "m", Duration::from_secs(5), |_| async {
                called.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(called.load(Ordering::SeqCst), 0);
        assert_eq!(e.code(), Code::Unavailable);
        assert!(
            e.message()
                .contains("circuit breaker 'cb' of app 'b' is open"),
            "{e}"
        );
        assert_eq!(r.snapshot()[0]["circuitBreaker"]["state"], "open");
    }

    #[tokio::test]
    async fn flow_rules_limit_concurrency_per_method() {
        let mut r = Resiliency::none();
        r.guards_mut(Target::App("b")).flow.push(FlowRule {
            name: "two-at-once".into(),
            method: Some("slow".into()),
            rate: None,
            concurrency: Some(Arc::new(ConcurrencyLimiter::new(2))),
            breaker: None,
        });
        let r = Arc::new(r);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut held = Vec::new();
        for _ in 0..2 {
            let (r, mut rx) = (r.clone(), rx.clone());
            held.push(tokio::spawn(async move {
                r.call(Target::App("b"), "slow", Duration::from_secs(5), |_| {
                    let mut rx = rx.clone();
                    async move {
                        let _ = rx.wait_for(|v| *v).await;
                        Ok::<(), BlockError>(())
                    }
                })
                .await
                .map(|_| rx.borrow_and_update().to_owned())
            }));
        }
        // Wait until both hold their permits.
        for _ in 0..1000 {
            if r.snapshot()[0]["flowRules"][0]["concurrency"]["inFlight"] == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let e = r
            .call(
                Target::App("b"),
                "slow",
                Duration::from_secs(5),
                |_| async { Ok(()) },
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("flow rule 'two-at-once'"), "{e}");
        // Another method is not covered by the rule.
        r.call(
            Target::App("b"),
            "fast",
            Duration::from_secs(5),
            |_| async { Ok(()) },
        )
        .await
        .unwrap();
        tx.send_replace(true);
        for h in held {
            h.await.unwrap().unwrap();
        }
    }
}
