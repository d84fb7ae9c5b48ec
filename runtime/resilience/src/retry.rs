//! Dapr retry policies (constant and exponential back-off) and a retry budget.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::window::Window;
use crate::ConfigError;

/// Buckets in the budget's window.
const BUDGET_BUCKETS: u32 = 10;

/// How long to wait before each retry.
#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    /// The same delay every time (Dapr `policy: constant`, `duration`,
    /// default 5 s).
    Constant { duration: Duration },
    /// Dapr `policy: exponential`: the base delay starts at
    /// `initial_interval` and is multiplied by `multiplier` after each retry,
    /// never beyond `max_interval`; each delay drawn is the base delay
    /// ± `randomization_factor` × base, uniformly (so a drawn delay may exceed
    /// `max_interval` by that factor, as in the back-off library Dapr uses).
    Exponential {
        initial_interval: Duration,
        multiplier: f64,
        randomization_factor: f64,
        max_interval: Duration,
    },
}

impl Backoff {
    /// Dapr's constant default: 5 s.
    pub fn dapr_constant() -> Self {
        Backoff::Constant {
            duration: Duration::from_secs(5),
        }
    }

    /// Dapr's exponential defaults: 500 ms, × 1.5, ± 50 %, at most 60 s.
    pub fn dapr_exponential() -> Self {
        Backoff::Exponential {
            initial_interval: Duration::from_millis(500),
            multiplier: 1.5,
            randomization_factor: 0.5,
            max_interval: Duration::from_secs(60),
        }
    }
}

/// A Dapr retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    /// Retries after the first attempt; `None` is Dapr's `-1`: unlimited.
    pub max_retries: Option<u32>,
    /// No retry starts later than this after the first attempt began.
    pub max_elapsed: Option<Duration>,
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Backoff::Exponential {
            initial_interval,
            multiplier,
            randomization_factor,
            max_interval,
        } = &self.backoff
        {
            if !(multiplier.is_finite() && *multiplier >= 1.0) {
                return Err(ConfigError::invalid(
                    "multiplier",
                    format!("must be >= 1 (got {multiplier})"),
                ));
            }
            if !(randomization_factor.is_finite() && (0.0..=1.0).contains(randomization_factor)) {
                return Err(ConfigError::invalid(
                    "randomization_factor",
                    format!("must be between 0 and 1 (got {randomization_factor})"),
                ));
            }
            if max_interval < initial_interval {
                return Err(ConfigError::invalid(
                    "max_interval",
                    format!(
                        "must be >= initial_interval {initial_interval:?} (got {max_interval:?})"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The delays before each retry, in order, with jitter from `seed`
    /// (use [`seed`] outside tests). Ends after `max_retries`, or when the
    /// delays alone would add up beyond `max_elapsed` (the time the attempts
    /// themselves take is not known here: use [`RetryPolicy::start`] for
    /// that).
    pub fn delays(&self, seed: u64) -> Delays {
        Delays {
            policy: self.clone(),
            base: self.initial(),
            retries: 0,
            elapsed: Duration::ZERO,
            exhausted: false,
            rng: SplitMix64(seed),
        }
    }

    /// A retry loop for a call whose first attempt began at `now`.
    pub fn start(&self, now: Instant, seed: u64) -> Retrying {
        Retrying {
            started: now,
            delays: self.delays(seed),
        }
    }

    fn initial(&self) -> Duration {
        match self.backoff {
            Backoff::Constant { duration } => duration,
            Backoff::Exponential {
                initial_interval, ..
            } => initial_interval,
        }
    }
}

/// A seed for jitter from the standard library's per-process random keys.
pub fn seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish()
}

/// A tiny PRNG (SplitMix64): enough for jitter, seedable for tests.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The delays of a [`RetryPolicy`]; see [`RetryPolicy::delays`].
#[derive(Debug, Clone)]
pub struct Delays {
    policy: RetryPolicy,
    /// The next base (un-jittered) delay.
    base: Duration,
    retries: u32,
    /// Sum of the delays handed out.
    elapsed: Duration,
    /// Gave up once: stays given up.
    exhausted: bool,
    rng: SplitMix64,
}

impl Delays {
    /// The next delay, given the time already spent since the first attempt
    /// began; `None`: give up.
    fn next_after(&mut self, spent: Duration) -> Option<Duration> {
        if self.exhausted || self.policy.max_retries.is_some_and(|m| self.retries >= m) {
            self.exhausted = true;
            return None;
        }
        let delay = match self.policy.backoff {
            Backoff::Constant { duration } => duration,
            Backoff::Exponential {
                multiplier,
                randomization_factor,
                max_interval,
                ..
            } => {
                let base = self.base.as_secs_f64();
                let jittered = base * (1.0 - randomization_factor)
                    + base * 2.0 * randomization_factor * self.rng.unit();
                let next = (base * multiplier).min(max_interval.as_secs_f64());
                self.base = Duration::from_secs_f64(next);
                Duration::from_secs_f64(jittered)
            }
        };
        if let Some(max) = self.policy.max_elapsed {
            if spent + delay > max {
                self.exhausted = true;
                return None;
            }
        }
        self.retries += 1;
        self.elapsed += delay;
        Some(delay)
    }

    /// Retries handed out so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let spent = self.elapsed;
        self.next_after(spent)
    }
}

/// A retry loop in progress; see [`RetryPolicy::start`].
#[derive(Debug, Clone)]
pub struct Retrying {
    started: Instant,
    delays: Delays,
}

impl Retrying {
    /// After a failed attempt, at `now`: how long to wait before retrying, or
    /// `None` to give up (retries exhausted, or the retry would start after
    /// `max_elapsed`).
    pub fn next_delay(&mut self, now: Instant) -> Option<Duration> {
        let spent = now.saturating_duration_since(self.started);
        self.delays.next_after(spent)
    }

    /// Retries handed out so far.
    pub fn retries(&self) -> u32 {
        self.delays.retries()
    }
}

// === Retry budget ===

/// A retry budget's settings (defaults: 20 % of requests, 10 retries a
/// second, over 10 s).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    /// Retries may be at most this fraction of the original requests in the
    /// window (0..=1 or more).
    pub ratio: f64,
    /// Plus this many retries per second of the window, so a quiet target
    /// can still be retried.
    pub min_per_second: u32,
    /// The window over which requests and retries are counted.
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// A snapshot of a budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryStats {
    /// Original requests in the window.
    pub requests: u64,
    /// Retries in the window.
    pub retries: u64,
    /// Retries the window allows in all.
    pub allowed: f64,
    /// Retries refused since creation.
    pub refused_total: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    requests: u64,
    retries: u64,
}

#[derive(Debug)]
struct BudgetInner {
    window: Window<Tally>,
    refused: u64,
}

/// Per-target retry budget: within the window, retries may be at most
/// `ratio` × original requests + `min_per_second` × window seconds.
/// Callers record each original request (not the retries) with
/// [`RetryBudget::record_request`] and ask before each retry.
#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    inner: Mutex<BudgetInner>,
}

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> Result<RetryBudget, ConfigError> {
        if !(config.ratio.is_finite() && config.ratio >= 0.0) {
            return Err(ConfigError::invalid(
                "ratio",
                format!("must be >= 0 (got {})", config.ratio),
            ));
        }
        if config.window.is_zero() {
            return Err(ConfigError::invalid("window", "must be > 0"));
        }
        Ok(RetryBudget {
            inner: Mutex::new(BudgetInner {
                window: Window::new(config.window, BUDGET_BUCKETS),
                refused: 0,
            }),
            config,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tally(inner: &mut BudgetInner, now: Instant) -> Tally {
        inner
            .window
            .live(now)
            .fold(Tally::default(), |acc, (_, t)| Tally {
                requests: acc.requests + t.requests,
                retries: acc.retries + t.retries,
            })
    }

    fn allowed(&self, t: Tally) -> f64 {
        self.config.ratio * t.requests as f64
            + self.config.min_per_second as f64 * self.config.window.as_secs_f64()
    }

    /// An original request (not a retry) was sent at `now`.
    pub fn record_request(&self, now: Instant) {
        self.lock().window.current(now).requests += 1;
    }

    /// Whether a retry may be sent at `now`; if so it is counted.
    pub fn try_retry(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        let t = Self::tally(&mut inner, now);
        if ((t.retries + 1) as f64) <= self.allowed(t) + 1e-9 {
            inner.window.current(now).retries += 1;
            true
        } else {
            inner.refused += 1;
            false
        }
    }

    pub fn stats(&self, now: Instant) -> RetryStats {
        let mut inner = self.lock();
        let t = Self::tally(&mut inner, now);
        RetryStats {
            requests: t.requests,
            retries: t.retries,
            allowed: self.allowed(t),
            refused_total: inner.refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn exp(rf: f64, max_retries: Option<u32>) -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::Exponential {
                initial_interval: ms(500),
                multiplier: 1.5,
                randomization_factor: rf,
                max_interval: Duration::from_secs(5),
            },
            max_retries,
            max_elapsed: None,
        }
    }

    #[test]
    fn constant_delays_stop_after_max_retries() {
        let p = RetryPolicy {
            backoff: Backoff::Constant { duration: ms(200) },
            max_retries: Some(3),
            max_elapsed: None,
        };
        assert_eq!(p.delays(1).collect::<Vec<_>>(), vec![ms(200); 3]);
        let p = RetryPolicy {
            max_retries: Some(0),
            ..p
        };
        assert_eq!(p.delays(1).next(), None);
    }

    #[test]
    fn unlimited_retries_never_end() {
        let p = RetryPolicy {
            backoff: Backoff::dapr_constant(),
            max_retries: None,
            max_elapsed: None,
        };
        assert_eq!(p.delays(1).take(10_000).count(), 10_000);
    }

    #[test]
    fn exponential_grows_by_the_multiplier_up_to_max_interval() {
        let got: Vec<f64> = exp(0.0, Some(10))
            .delays(7)
            .map(|d| d.as_secs_f64())
            .collect();
        let want = [
            0.5, 0.75, 1.125, 1.6875, 2.53125, 3.796875, 5.0, 5.0, 5.0, 5.0,
        ];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn jitter_stays_within_the_randomization_factor() {
        let p = exp(0.5, Some(20));
        let bases: Vec<f64> = exp(0.0, Some(20))
            .delays(0)
            .map(|d| d.as_secs_f64())
            .collect();
        let mut spread = false;
        for seed in 0..200 {
            let got: Vec<f64> = p.delays(seed).map(|d| d.as_secs_f64()).collect();
            assert_eq!(got.len(), 20);
            for (g, b) in got.iter().zip(&bases) {
                assert!(*g >= b * 0.5 - 1e-9 && *g <= b * 1.5 + 1e-9, "{g} vs {b}");
                spread |= (g - b).abs() > b * 0.25;
            }
        }
        assert!(spread, "jitter never moved far from the base");
        // Same seed, same delays; another seed, others.
        let a: Vec<_> = p.delays(42).collect();
        assert_eq!(a, p.delays(42).collect::<Vec<_>>());
        assert_ne!(a, p.delays(43).collect::<Vec<_>>());
    }

    #[test]
    fn dapr_defaults() {
        let p = RetryPolicy {
            backoff: Backoff::dapr_exponential(),
            max_retries: Some(30),
            max_elapsed: None,
        };
        p.validate().unwrap();
        let d: Vec<_> = p.delays(3).collect();
        assert!(d[0] >= ms(250) && d[0] <= ms(750));
        assert!(d[29] >= Duration::from_secs(30) && d[29] <= Duration::from_secs(90));
    }

    #[test]
    fn max_elapsed_counts_the_time_spent() {
        let p = RetryPolicy {
            backoff: Backoff::Constant {
                duration: Duration::from_secs(1),
            },
            max_retries: None,
            max_elapsed: Some(Duration::from_secs(10)),
        };
        // Delays alone: ten 1 s delays fit in 10 s.
        assert_eq!(p.delays(0).count(), 10);
        // With attempts taking 2 s each, the clock decides.
        let t0 = Instant::now();
        let mut r = p.start(t0, 0);
        let mut now = t0 + Duration::from_secs(2);
        let mut n = 0;
        while let Some(d) = r.next_delay(now) {
            n += 1;
            now += d + Duration::from_secs(2);
        }
        // Attempts end at 2, 5, 8 s; a retry at 9 s fits, one at 12 would not.
        assert_eq!((n, r.retries()), (3, 3));
        // Given up stays given up.
        assert_eq!(r.next_delay(t0), None);
    }

    #[test]
    fn bad_policies_name_the_field() {
        let bad = |backoff| {
            RetryPolicy {
                backoff,
                max_retries: None,
                max_elapsed: None,
            }
            .validate()
            .unwrap_err()
            .to_string()
        };
        let Backoff::Exponential {
            initial_interval,
            max_interval,
            ..
        } = Backoff::dapr_exponential()
        else {
            unreachable!()
        };
        assert_eq!(
            bad(Backoff::Exponential {
                initial_interval,
                multiplier: 0.5,
                randomization_factor: 0.5,
                max_interval
            }),
            "multiplier must be >= 1 (got 0.5)"
        );
        assert!(bad(Backoff::Exponential {
            initial_interval,
            multiplier: 1.5,
            randomization_factor: 2.0,
            max_interval
        })
        .starts_with("randomization_factor"));
        assert!(bad(Backoff::Exponential {
            initial_interval: Duration::from_secs(120),
            multiplier: 1.5,
            randomization_factor: 0.5,
            max_interval
        })
        .starts_with("max_interval"));
    }

    #[test]
    fn budget_allows_a_ratio_of_requests_plus_a_reserve() {
        let t0 = Instant::now();
        let b = RetryBudget::new(BudgetConfig {
            ratio: 0.2,
            min_per_second: 1,
            window: Duration::from_secs(10),
        })
        .unwrap();
        // No traffic: the reserve (1/s × 10 s) only.
        let n = (0..100).filter(|_| b.try_retry(t0)).count();
        assert_eq!(n, 10);
        // 100 requests: 20 more.
        for i in 0..100 {
            b.record_request(t0 + ms(i));
        }
        let n = (0..100).filter(|_| b.try_retry(t0 + ms(200))).count();
        assert_eq!(n, 20);
        let s = b.stats(t0 + ms(200));
        assert_eq!((s.requests, s.retries, s.refused_total), (100, 30, 170));
        assert!((s.allowed - 30.0).abs() < 1e-9);
        // The window moves on: everything counted at t0 is forgotten.
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(b.stats(t1).retries, 0);
        assert!(b.try_retry(t1));
    }

    #[test]
    fn budget_bounds_retries_under_sustained_failure() {
        let t0 = Instant::now();
        let b = RetryBudget::new(BudgetConfig::default()).unwrap();
        // 1000 requests a second for 60 s, each failing and asking to retry
        // up to three times: retries stay near 20 % + 10/s, not 300 %.
        let mut retries = 0u64;
        for i in 0..60_000u64 {
            let now = t0 + ms(i);
            b.record_request(now);
            for _ in 0..3 {
                if b.try_retry(now) {
                    retries += 1;
                }
            }
        }
        let ratio = retries as f64 / 60_000.0;
        assert!(ratio < 0.25, "{ratio}");
        assert!(ratio > 0.15, "{ratio}");
    }

    #[test]
    fn bad_budgets_name_the_field() {
        let e = RetryBudget::new(BudgetConfig {
            ratio: -1.0,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "ratio must be >= 0 (got -1)");
    }
}
