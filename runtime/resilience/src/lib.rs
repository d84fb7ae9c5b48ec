//! Weft's resilience algorithms: pure, synchronous, `std`-only building blocks
//! that the runtime wires into its call paths (configuration parsing, gRPC
//! statuses, metrics and reloads live elsewhere).
//!
//! Every method whose answer depends on time takes `now: Instant` from the
//! caller, so the algorithms never read a clock themselves and their tests are
//! deterministic: a test moves time forward by adding durations to a base
//! instant. All types are `Send + Sync` and take `&self` (interior mutex or
//! atomics), so one instance is shared by every call to the same target.
//!
//! # Rate limiting ([`rate`])
//!
//! Sentinel's QPS flow rule. Internally one schedule serves every behaviour:
//! the limiter remembers the *theoretical arrival time* of the next request
//! (the time it would arrive if requests were spaced exactly `1/qps` apart).
//! A request that arrives no earlier than that time, minus a tolerance of
//! `burst - 1` intervals, conforms and pushes the schedule one interval on.
//! This is equivalent to a token bucket refilled at `qps` tokens a second and
//! holding at most `burst` tokens.
//!
//! * With `max_queueing` zero (Sentinel's *reject* behaviour) a request that
//!   does not conform is refused with the time after which it would.
//! * With `max_queueing` above zero (Sentinel's *rate limiter* / uniform
//!   pacing behaviour) a request that does not conform reserves the next free
//!   slot and is told how long to wait for it, unless that wait exceeds
//!   `max_queueing`, in which case it is refused and reserves nothing.
//! * With `warm_up` (Sentinel's *warm up* behaviour, itself derived from the
//!   token-bucket warm-up of Guava's smooth rate limiter) the limiter keeps a
//!   second quantity, its *coldness*: stored tokens that accumulate at `qps`
//!   tokens a second while the schedule is idle, up to a maximum, and that
//!   each admitted request spends. While coldness is above a warning level the
//!   spacing between requests grows linearly with it, from `1/qps` at the
//!   warning level to `cold_factor/qps` at the maximum. The levels are chosen,
//!   as Sentinel chooses them, so that a fully cold limiter under saturating
//!   load reaches `qps` after exactly `warm_up`; an idle limiter goes cold
//!   again. A new limiter starts cold.
//!
//! # Concurrency limiting ([`concurrency`])
//!
//! Sentinel's thread-count rule: at most `max` calls in flight, each holding an
//! RAII permit.
//!
//! # Circuit breaking ([`breaker`])
//!
//! One breaker with two families of trip conditions:
//!
//! * Dapr's: a trip expression (the subset of CEL Dapr users write, such as
//!   `consecutiveFailures > 5`) evaluated on counts kept since the last clear.
//!   As in Dapr (which delegates to the `gobreaker` state machine) the
//!   expression is evaluated after each recorded failure, counts are cleared
//!   every `interval` while closed (never if unset) and on every state change,
//!   and `requests` counts calls as they are let through.
//! * Sentinel's: error count, error ratio or slow-call ratio over a sliding
//!   statistics window, ignored until the window holds `min_requests` calls;
//!   checked after every recorded outcome. A call is slow when its round trip
//!   exceeds `max_rt`.
//!
//! Both share the state machine: closed calls pass; when the condition holds
//! the breaker opens and rejects calls for `open_for`; then it is half-open and
//! lets through up to `half_open_max` probes. When that many probes have
//! succeeded it closes; any failed probe (for the slow-ratio kind: any slow
//! probe) opens it again. Outcomes of calls let through before the last state
//! change are ignored.
//!
//! # Adaptive load shedding ([`adaptive`])
//!
//! The BBR-inspired limiter popularised by Kratos: over a sliding window of
//! buckets it estimates the best throughput seen (the most completions in one
//! bucket, as a rate per second) and the best latency seen (the smallest mean
//! round-trip time of one bucket). Their product is, by Little's law, the
//! number of calls the service can have in flight without queueing. While the
//! process CPU is above a threshold (or always, if no threshold is set), a new
//! call is shed when more calls than that are already in flight, so work that
//! would only queue is refused before it costs anything and admitted calls
//! keep their latency. After shedding while the CPU was high, the check stays
//! on for a one-second cool-off so the limiter does not flap.
//!
//! # Retries ([`retry`])
//!
//! Dapr's retry policies (constant and exponential back-off with Dapr's
//! defaults and jitter as its back-off library applies it, maximum retries,
//! maximum elapsed time) and a retry budget: within a sliding window retries
//! may number at most a ratio of the original requests plus a small reserve
//! per second, so retries cannot multiply the load on a struggling target.

//! # Usage
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use weft_resilience::*;
//!
//! let now = Instant::now();
//! let rate = RateLimiter::new(RateConfig { burst: 5, ..RateConfig::per_second(100.0) }, now)?;
//! let breaker = Arc::new(CircuitBreaker::new(BreakerConfig {
//!     trip: Trip::Expr(TripExpr::parse("consecutiveFailures > 5")?),
//!     ..BreakerConfig::default()
//! })?);
//! match rate.acquire(now) {
//!     Admission::Now => {}
//!     Admission::After(wait) => { /* sleep `wait`, then go on */ }
//!     Admission::Rejected { retry_after } => { /* RESOURCE_EXHAUSTED */ }
//! }
//! let permit = breaker.try_pass(now).expect("closed");
//! // ... make the call ...
//! let state = permit.record(now + Duration::from_millis(3), true, Duration::from_millis(3));
//! assert_eq!(state, BreakerState::Closed);
//! # Ok::<(), ConfigError>(())
//! ```

pub mod adaptive;
pub mod breaker;
pub mod concurrency;
pub mod rate;
pub mod retry;
mod window;

pub use adaptive::{AdaptiveConfig, AdaptiveLimiter, AdaptivePermit, AdaptiveStats, Shed};
pub use breaker::{
    BreakerConfig, BreakerPermit, BreakerState, BreakerStats, CircuitBreaker, Counts, Open, Trip,
    TripExpr,
};
pub use concurrency::{ConcurrencyLimiter, ConcurrencyPermit, ConcurrencyStats};
pub use rate::{Admission, RateConfig, RateLimiter, RateStats};
pub use retry::{Backoff, BudgetConfig, Delays, RetryBudget, RetryPolicy, RetryStats, Retrying};

/// A configuration value the algorithms cannot work with. The message names
/// the field (as the algorithm's config struct spells it) and what is wrong,
/// so the runtime can prefix it with the file and rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A field out of range, e.g. `qps must be > 0 (got 0)`.
    #[error("{field} {problem}")]
    Invalid {
        /// The field, as the config struct names it (`qps`, `cold_factor`…).
        field: &'static str,
        /// What is wrong with it, with the offending value.
        problem: String,
    },
    /// A Dapr trip expression that is not in the supported subset.
    #[error("trip expression `{expr}`: {problem} at position {position}")]
    TripExpr {
        /// The expression as written.
        expr: String,
        /// What is wrong, naming the offending token.
        problem: String,
        /// 0-based character offset of the offending token in `expr`.
        position: usize,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field,
            problem: problem.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn everything_is_send_and_sync() {
        assert_send_sync::<RateLimiter>();
        assert_send_sync::<ConcurrencyLimiter>();
        assert_send_sync::<ConcurrencyPermit>();
        assert_send_sync::<CircuitBreaker>();
        assert_send_sync::<BreakerPermit>();
        assert_send_sync::<AdaptiveLimiter>();
        assert_send_sync::<AdaptivePermit>();
        assert_send_sync::<RetryBudget>();
        assert_send_sync::<RetryPolicy>();
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = ConfigError::invalid("qps", "must be > 0 (got 0)");
        assert_eq!(e.to_string(), "qps must be > 0 (got 0)");
    }
}
