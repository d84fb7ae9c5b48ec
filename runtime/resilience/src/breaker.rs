//! Circuit breakers: Dapr's (trip expression on counts) and Sentinel's (error
//! count, error ratio, slow-call ratio over a sliding window), one state
//! machine. See the crate documentation.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::window::Window;
use crate::ConfigError;

/// Buckets in Sentinel's statistics window.
const STAT_BUCKETS: u32 = 10;

// === Counts and trip expressions ===

/// Dapr's counters, kept since the last clear (state change or `interval`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls let through (counted when let through, outcome or not).
    pub requests: u64,
    pub total_successes: u64,
    pub total_failures: u64,
    pub consecutive_successes: u64,
    pub consecutive_failures: u64,
}

impl Counts {
    fn record(&mut self, ok: bool) {
        if ok {
            self.total_successes += 1;
            self.consecutive_successes += 1;
            self.consecutive_failures = 0;
        } else {
            self.total_failures += 1;
            self.consecutive_failures += 1;
            self.consecutive_successes = 0;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Requests,
    TotalSuccesses,
    TotalFailures,
    ConsecutiveSuccesses,
    ConsecutiveFailures,
}

const VARS: [(&str, Var); 5] = [
    ("requests", Var::Requests),
    ("totalSuccesses", Var::TotalSuccesses),
    ("totalFailures", Var::TotalFailures),
    ("consecutiveSuccesses", Var::ConsecutiveSuccesses),
    ("consecutiveFailures", Var::ConsecutiveFailures),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl CmpOp {
    fn apply<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
        }
    }
}

/// A typed expression tree: integer nodes and condition nodes never mix
/// (the parser checks).
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Int(i64),
    Var(Var),
    Bool(bool),
    CmpInt(CmpOp, Box<Node>, Box<Node>),
    CmpBool(CmpOp, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
}

impl Node {
    fn int(&self, c: &Counts) -> i64 {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        match self {
            Node::Int(v) => *v,
            Node::Var(Var::Requests) => clamp(c.requests),
            Node::Var(Var::TotalSuccesses) => clamp(c.total_successes),
            Node::Var(Var::TotalFailures) => clamp(c.total_failures),
            Node::Var(Var::ConsecutiveSuccesses) => clamp(c.consecutive_successes),
            Node::Var(Var::ConsecutiveFailures) => clamp(c.consecutive_failures),
            _ => unreachable!("type-checked: not an integer node"),
        }
    }

    fn truth(&self, c: &Counts) -> bool {
        match self {
            Node::Bool(b) => *b,
            Node::CmpInt(op, a, b) => op.apply(a.int(c), b.int(c)),
            Node::CmpBool(op, a, b) => op.apply(a.truth(c), b.truth(c)),
            Node::And(a, b) => a.truth(c) && b.truth(c),
            Node::Or(a, b) => a.truth(c) || b.truth(c),
            Node::Not(a) => !a.truth(c),
            _ => unreachable!("type-checked: not a condition node"),
        }
    }
}

/// A Dapr trip expression: the CEL subset Dapr users write. Identifiers
/// `requests`, `totalSuccesses`, `totalFailures`, `consecutiveSuccesses`,
/// `consecutiveFailures`; integer literals; `true`, `false`; comparisons
/// `> >= < <= == !=`; `&&`, `||`, `!` and parentheses, with CEL's precedence
/// (`!` binds tightest, then comparisons, then `&&`, then `||`).
#[derive(Debug, Clone, PartialEq)]
pub struct TripExpr {
    source: String,
    root: Node,
}

impl TripExpr {
    /// Parses and type-checks `src`; the error names the offending token
    /// and its 0-based character position.
    pub fn parse(src: &str) -> Result<TripExpr, ConfigError> {
        let tokens = lex(src)?;
        let mut p = Parser { src, tokens, at: 0 };
        let (root, ty, pos) = p.or()?;
        let next = p.peek();
        if next.kind != Tok::End {
            return Err(p.error(format!("unexpected `{}`", next.text), next.pos));
        }
        if ty != Ty::Bool {
            return Err(p.error(
                "the expression must be a condition such as `consecutiveFailures > 5`, \
                 found a number"
                    .to_string(),
                pos,
            ));
        }
        Ok(TripExpr {
            source: src.to_string(),
            root,
        })
    }

    /// Whether the breaker should trip on these counts.
    pub fn eval(&self, counts: &Counts) -> bool {
        self.root.truth(counts)
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for TripExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident,
    Int(i64),
    Op(&'static str),
    LParen,
    RParen,
    End,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Tok,
    text: String,
    pos: usize,
}

fn lex(src: &str) -> Result<Vec<Token>, ConfigError> {
    let chars: Vec<char> = src.chars().collect();
    let err = |problem: String, position| ConfigError::TripExpr {
        expr: src.to_string(),
        problem,
        position,
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            out.push(Token {
                kind: Tok::Ident,
                text,
                pos: start,
            });
            continue;
        }
        if c.is_ascii_digit() {
            while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let v = match text.parse::<i64>() {
                Ok(v) => v,
                Err(_) if text.bytes().all(|b| b.is_ascii_digit()) => {
                    return Err(err(format!("integer `{text}` is too large"), start))
                }
                Err(_) => return Err(err(format!("invalid integer `{text}`"), start)),
            };
            out.push(Token {
                kind: Tok::Int(v),
                text,
                pos: start,
            });
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let op = match two.as_str() {
            ">=" | "<=" | "==" | "!=" | "&&" | "||" => Some(two.as_str()),
            _ => None,
        };
        let (kind, len) = match (op, c) {
            (Some(">="), _) => (Tok::Op(">="), 2),
            (Some("<="), _) => (Tok::Op("<="), 2),
            (Some("=="), _) => (Tok::Op("=="), 2),
            (Some("!="), _) => (Tok::Op("!="), 2),
            (Some("&&"), _) => (Tok::Op("&&"), 2),
            (Some("||"), _) => (Tok::Op("||"), 2),
            (_, '>') => (Tok::Op(">"), 1),
            (_, '<') => (Tok::Op("<"), 1),
            (_, '!') => (Tok::Op("!"), 1),
            (_, '(') => (Tok::LParen, 1),
            (_, ')') => (Tok::RParen, 1),
            _ => {
                return Err(err(format!("unsupported token `{c}`"), start));
            }
        };
        i += len;
        out.push(Token {
            kind,
            text: chars[start..i].iter().collect(),
            pos: start,
        });
    }
    out.push(Token {
        kind: Tok::End,
        text: "end of expression".to_string(),
        pos: chars.len(),
    });
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Int,
    Bool,
}

struct Parser<'a> {
    src: &'a str,
    tokens: Vec<Token>,
    at: usize,
}

/// A parsed sub-expression, its type and the position of its first token.
type Parsed = (Node, Ty, usize);

impl Parser<'_> {
    fn peek(&self) -> Token {
        self.tokens[self.at].clone()
    }

    fn bump(&mut self) -> Token {
        let t = self.peek();
        if t.kind != Tok::End {
            self.at += 1;
        }
        t
    }

    fn error(&self, problem: String, position: usize) -> ConfigError {
        ConfigError::TripExpr {
            expr: self.src.to_string(),
            problem,
            position,
        }
    }

    fn condition(&self, (node, ty, pos): Parsed, op: &str) -> Result<Node, ConfigError> {
        if ty == Ty::Bool {
            Ok(node)
        } else {
            let text = self
                .tokens
                .iter()
                .find(|t| t.pos == pos)
                .map_or(String::new(), |t| t.text.clone());
            Err(self.error(
                format!("`{op}` needs a condition, found the number `{text}`"),
                pos,
            ))
        }
    }

    fn or(&mut self) -> Result<Parsed, ConfigError> {
        let mut left = self.and()?;
        while self.peek().kind == Tok::Op("||") {
            self.bump();
            let right = self.and()?;
            let pos = left.2;
            let l = self.condition(left, "||")?;
            let r = self.condition(right, "||")?;
            left = (Node::Or(Box::new(l), Box::new(r)), Ty::Bool, pos);
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Parsed, ConfigError> {
        let mut left = self.relation()?;
        while self.peek().kind == Tok::Op("&&") {
            self.bump();
            let right = self.relation()?;
            let pos = left.2;
            let l = self.condition(left, "&&")?;
            let r = self.condition(right, "&&")?;
            left = (Node::And(Box::new(l), Box::new(r)), Ty::Bool, pos);
        }
        Ok(left)
    }

    fn relation(&mut self) -> Result<Parsed, ConfigError> {
        let mut left = self.unary()?;
        loop {
            let tok = self.peek();
            let op = match tok.kind {
                Tok::Op(">") => CmpOp::Gt,
                Tok::Op(">=") => CmpOp::Ge,
                Tok::Op("<") => CmpOp::Lt,
                Tok::Op("<=") => CmpOp::Le,
                Tok::Op("==") => CmpOp::Eq,
                Tok::Op("!=") => CmpOp::Ne,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.unary()?;
            let pos = left.2;
            let (l, r) = (Box::new(left.0), Box::new(right.0));
            left = match (left.1, right.1, op) {
                (Ty::Int, Ty::Int, _) => (Node::CmpInt(op, l, r), Ty::Bool, pos),
                (Ty::Bool, Ty::Bool, CmpOp::Eq | CmpOp::Ne) => {
                    (Node::CmpBool(op, l, r), Ty::Bool, pos)
                }
                _ => {
                    return Err(self.error(
                        format!(
                            "`{}` compares two numbers (comparisons do not chain; use `&&`)",
                            tok.text
                        ),
                        tok.pos,
                    ))
                }
            };
        }
    }

    fn unary(&mut self) -> Result<Parsed, ConfigError> {
        let tok = self.peek();
        if tok.kind == Tok::Op("!") {
            self.bump();
            let operand = self.unary()?;
            let node = self.condition(operand, "!")?;
            return Ok((Node::Not(Box::new(node)), Ty::Bool, tok.pos));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Parsed, ConfigError> {
        let tok = self.bump();
        match tok.kind {
            Tok::Int(v) => Ok((Node::Int(v), Ty::Int, tok.pos)),
            Tok::Ident => match tok.text.as_str() {
                "true" => Ok((Node::Bool(true), Ty::Bool, tok.pos)),
                "false" => Ok((Node::Bool(false), Ty::Bool, tok.pos)),
                name => match VARS.iter().find(|(n, _)| *n == name) {
                    Some((_, v)) => Ok((Node::Var(*v), Ty::Int, tok.pos)),
                    None => Err(self.error(
                        format!(
                            "unknown identifier `{name}` (known: {})",
                            VARS.map(|(n, _)| n).join(", ")
                        ),
                        tok.pos,
                    )),
                },
            },
            Tok::LParen => {
                let (node, ty, _) = self.or()?;
                let close = self.bump();
                if close.kind != Tok::RParen {
                    return Err(self.error(
                        format!(
                            "expected `)` to close the `(` at position {}, found `{}`",
                            tok.pos, close.text
                        ),
                        close.pos,
                    ));
                }
                Ok((node, ty, tok.pos))
            }
            Tok::End => Err(self.error(
                "expected a number, a counter or `(`, found end of expression".to_string(),
                tok.pos,
            )),
            Tok::Op(_) | Tok::RParen => Err(self.error(
                format!("expected a number, a counter or `(`, found `{}`", tok.text),
                tok.pos,
            )),
        }
    }
}

// === Configuration ===

/// When a closed breaker opens.
#[derive(Debug, Clone, PartialEq)]
pub enum Trip {
    /// Dapr: the expression holds on the counts after a recorded failure.
    Expr(TripExpr),
    /// Sentinel: at least `count` errors in the statistics window.
    ErrorCount { count: u32 },
    /// Sentinel: errors / calls in the window reach `ratio` (0..=1), once
    /// the window holds at least `min_requests` calls.
    ErrorRatio { ratio: f64, min_requests: u32 },
    /// Sentinel: calls slower than `max_rt` / calls in the window reach
    /// `ratio`, once the window holds `min_requests` calls. Only the round
    /// trip matters for this kind (errors are not failures), probes included.
    SlowRatio {
        max_rt: Duration,
        ratio: f64,
        min_requests: u32,
    },
}

/// A breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub trip: Trip,
    /// How long an open breaker rejects calls before probing (Dapr
    /// `timeout`, default 60 s; Sentinel `timeWindow`).
    pub open_for: Duration,
    /// Probes let through while half-open (Dapr `maxRequests`, default 1;
    /// 0 is taken as 1, as Dapr does). The breaker closes once that many
    /// have succeeded.
    pub half_open_max: u32,
    /// Dapr `interval`: while closed, counts are cleared this often.
    /// `None` or zero: only on state changes.
    pub interval: Option<Duration>,
    /// Sentinel `statIntervalMs` (default 1 s): the sliding window for the
    /// error-count, error-ratio and slow-ratio kinds.
    pub stat_window: Duration,
}

impl Default for BreakerConfig {
    /// Dapr's defaults: trip `consecutiveFailures > 5`, timeout 60 s,
    /// maxRequests 1, no interval.
    fn default() -> Self {
        BreakerConfig {
            trip: Trip::Expr(TripExpr::parse("consecutiveFailures > 5").expect("valid")),
            open_for: Duration::from_secs(60),
            half_open_max: 1,
            interval: None,
            stat_window: Duration::from_secs(1),
        }
    }
}

impl BreakerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ratio_ok = |r: f64| r.is_finite() && (0.0..=1.0).contains(&r);
        match &self.trip {
            Trip::Expr(_) => return Ok(()),
            Trip::ErrorCount { count } if *count == 0 => {
                return Err(ConfigError::invalid("count", "must be >= 1 (got 0)"))
            }
            Trip::ErrorRatio { ratio, .. } | Trip::SlowRatio { ratio, .. } if !ratio_ok(*ratio) => {
                return Err(ConfigError::invalid(
                    "ratio",
                    format!("must be between 0 and 1 (got {ratio})"),
                ))
            }
            _ => {}
        }
        if self.stat_window.is_zero() {
            return Err(ConfigError::invalid("stat_window", "must be > 0"));
        }
        Ok(())
    }
}

// === State ===

/// The state a breaker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// A call refused by an open breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    /// Time until the breaker probes again; zero when it is half-open and
    /// all its probes are out (it will decide as soon as they return).
    pub retry_in: Duration,
}

/// A snapshot of a breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerStats {
    pub state: BreakerState,
    /// Dapr's counts since the last clear.
    pub counts: Counts,
    /// Sentinel kinds: calls, errors and slow calls in the statistics
    /// window (zero for Dapr expressions).
    pub window_total: u64,
    pub window_errors: u64,
    pub window_slow: u64,
    /// Times the breaker opened (from closed or half-open).
    pub opened_total: u64,
    /// Calls refused while open or half-open with all probes out.
    pub rejected_total: u64,
    /// Calls let through.
    pub passed_total: u64,
}

#[derive(Debug, Clone, Copy)]
enum St {
    Closed,
    Open { until: Instant },
    HalfOpen { outstanding: u32, succeeded: u32 },
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    total: u64,
    errors: u64,
    slow: u64,
}

#[derive(Debug)]
struct Inner {
    st: St,
    generation: u64,
    counts: Counts,
    /// Dapr `interval`: when closed counts are next cleared.
    clear_at: Option<Instant>,
    window: Window<Bucket>,
    opened: u64,
    rejected: u64,
    passed: u64,
}

/// A circuit breaker; share it in an `Arc`.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    interval: Option<Duration>,
    half_open_max: u32,
    inner: Mutex<Inner>,
}

/// A call let through. Record its outcome with [`BreakerPermit::record`].
/// A permit dropped without recording is ignored: it neither succeeds nor
/// fails (a half-open probe dropped so frees its place for another probe).
#[derive(Debug)]
#[must_use = "record the call's outcome on the permit"]
pub struct BreakerPermit {
    breaker: Arc<CircuitBreaker>,
    generation: u64,
    probe: bool,
    recorded: bool,
}

// === impl CircuitBreaker ===

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Result<CircuitBreaker, ConfigError> {
        config.validate()?;
        Ok(CircuitBreaker {
            interval: config.interval.filter(|i| !i.is_zero()),
            half_open_max: config.half_open_max.max(1),
            inner: Mutex::new(Inner {
                st: St::Closed,
                generation: 0,
                counts: Counts::default(),
                clear_at: None,
                window: Window::new(config.stat_window, STAT_BUCKETS),
                opened: 0,
                rejected: 0,
                passed: 0,
            }),
            config,
        })
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves to `st`: a new generation with cleared counts.
    fn enter(&self, inner: &mut Inner, st: St, now: Instant) {
        inner.generation += 1;
        inner.counts = Counts::default();
        inner.clear_at = None;
        match st {
            St::Open { .. } => inner.opened += 1,
            St::Closed => {
                inner.window.clear();
                inner.clear_at = self.interval.map(|i| now + i);
            }
            St::HalfOpen { .. } => {}
        }
        inner.st = st;
    }

    /// Time-driven transitions: open → half-open, closed interval clears.
    fn advance(&self, inner: &mut Inner, now: Instant) {
        match inner.st {
            St::Open { until } if now >= until => {
                let st = St::HalfOpen {
                    outstanding: 0,
                    succeeded: 0,
                };
                self.enter(inner, st, now);
            }
            St::Closed => {
                if let Some(interval) = self.interval {
                    match inner.clear_at {
                        None => inner.clear_at = Some(now + interval),
                        Some(at) if now >= at => {
                            inner.generation += 1;
                            inner.counts = Counts::default();
                            inner.clear_at = Some(now + interval);
                        }
                        Some(_) => {}
                    }
                }
            }
            _ => {}
        }
    }

    /// Lets a call through, or refuses it while open.
    pub fn try_pass(self: &Arc<Self>, now: Instant) -> Result<BreakerPermit, Open> {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        let probe = match &mut inner.st {
            St::Closed => false,
            St::Open { until } => {
                let retry_in = until.saturating_duration_since(now);
                inner.rejected += 1;
                return Err(Open { retry_in });
            }
            St::HalfOpen {
                outstanding,
                succeeded,
            } => {
                if *outstanding + *succeeded >= self.half_open_max {
                    inner.rejected += 1;
                    return Err(Open {
                        retry_in: Duration::ZERO,
                    });
                }
                *outstanding += 1;
                true
            }
        };
        inner.counts.requests += 1;
        inner.passed += 1;
        Ok(BreakerPermit {
            breaker: self.clone(),
            generation: inner.generation,
            probe,
            recorded: false,
        })
    }

    /// The state at `now` (an open breaker whose `open_for` has passed is
    /// half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        match inner.st {
            St::Closed => BreakerState::Closed,
            St::Open { .. } => BreakerState::Open,
            St::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    pub fn stats(&self, now: Instant) -> BreakerStats {
        let state = self.state(now);
        let mut inner = self.lock();
        let (mut total, mut errors, mut slow) = (0, 0, 0);
        for (_, b) in inner.window.live(now) {
            total += b.total;
            errors += b.errors;
            slow += b.slow;
        }
        BreakerStats {
            state,
            counts: inner.counts,
            window_total: total,
            window_errors: errors,
            window_slow: slow,
            opened_total: inner.opened,
            rejected_total: inner.rejected,
            passed_total: inner.passed,
        }
    }

    /// Whether the outcome is a failure for this breaker's kind.
    fn failed(&self, ok: bool, rt: Duration) -> bool {
        match self.config.trip {
            Trip::SlowRatio { max_rt, .. } => rt > max_rt,
            _ => !ok,
        }
    }

    /// Sentinel kinds: whether the window now calls for opening.
    fn window_trips(&self, inner: &mut Inner, now: Instant) -> bool {
        let (mut total, mut errors, mut slow) = (0u64, 0u64, 0u64);
        for (_, b) in inner.window.live(now) {
            total += b.total;
            errors += b.errors;
            slow += b.slow;
        }
        let ratio_reached = |bad: u64, ratio: f64, min: u32| {
            total >= min as u64 && bad > 0 && bad as f64 >= ratio * total as f64
        };
        match self.config.trip {
            Trip::Expr(_) => false,
            Trip::ErrorCount { count } => errors >= count as u64,
            Trip::ErrorRatio {
                ratio,
                min_requests,
            } => ratio_reached(errors, ratio, min_requests),
            Trip::SlowRatio {
                ratio,
                min_requests,
                ..
            } => ratio_reached(slow, ratio, min_requests),
        }
    }

    fn record(&self, generation: u64, now: Instant, ok: bool, rt: Duration) -> BreakerState {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        if generation == inner.generation {
            let failed = self.failed(ok, rt);
            inner.counts.record(!failed);
            match inner.st {
                St::Closed => {
                    let trips = match &self.config.trip {
                        Trip::Expr(expr) => failed && expr.eval(&inner.counts),
                        Trip::SlowRatio { max_rt, .. } => {
                            let b = inner.window.current(now);
                            b.total += 1;
                            b.errors += u64::from(!ok);
                            b.slow += u64::from(rt > *max_rt);
                            self.window_trips(&mut inner, now)
                        }
                        _ => {
                            let b = inner.window.current(now);
                            b.total += 1;
                            b.errors += u64::from(!ok);
                            self.window_trips(&mut inner, now)
                        }
                    };
                    if trips {
                        let until = now + self.config.open_for;
                        self.enter(&mut inner, St::Open { until }, now);
                    }
                }
                St::HalfOpen {
                    outstanding,
                    succeeded,
                } => {
                    if failed {
                        let until = now + self.config.open_for;
                        self.enter(&mut inner, St::Open { until }, now);
                    } else if succeeded + 1 >= self.half_open_max {
                        self.enter(&mut inner, St::Closed, now);
                    } else {
                        inner.st = St::HalfOpen {
                            outstanding: outstanding.saturating_sub(1),
                            succeeded: succeeded + 1,
                        };
                    }
                }
                St::Open { .. } => {}
            }
        }
        match inner.st {
            St::Closed => BreakerState::Closed,
            St::Open { .. } => BreakerState::Open,
            St::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn forget(&self, generation: u64) {
        let mut inner = self.lock();
        if generation == inner.generation {
            if let St::HalfOpen { outstanding, .. } = &mut inner.st {
                *outstanding = outstanding.saturating_sub(1);
            }
        }
    }
}

// === impl BreakerPermit ===

impl BreakerPermit {
    /// Records the call's outcome (`ok`: the call succeeded; `rt`: its round
    /// trip) and returns the breaker's state afterwards. Outcomes of calls let
    /// through before the breaker last changed state (or cleared its counts)
    /// are ignored.
    pub fn record(mut self, now: Instant, ok: bool, rt: Duration) -> BreakerState {
        self.recorded = true;
        self.breaker.record(self.generation, now, ok, rt)
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            self.breaker.forget(self.generation);
        }
    }
}

#[cfg(test)]
mod tests;
