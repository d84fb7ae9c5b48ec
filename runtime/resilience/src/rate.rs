//! Sentinel's QPS flow rule: token bucket with burst (reject), uniform pacing
//! with a bounded queue, and warm-up. See the crate documentation for the
//! algorithm.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ConfigError;

/// Tolerance for comparing schedule times (seconds): float rounding must not
/// turn an exactly-on-time request away.
const EPS: f64 = 1e-9;

/// A QPS rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RateConfig {
    /// Permitted requests per second (> 0).
    pub qps: f64,
    /// Bucket capacity: how many requests may pass back to back after the
    /// limiter has been idle. 0 is taken as 1 (strict spacing).
    pub burst: u32,
    /// Warm-up period (Sentinel's `warmUpPeriodSec`); `None` or zero: no
    /// warm-up.
    pub warm_up: Option<Duration>,
    /// How much slower than `qps` a cold limiter is (Sentinel's
    /// `coldFactor`, default 3; must be > 1 when `warm_up` is set).
    pub cold_factor: f64,
    /// Longest wait a request may be given for its slot (Sentinel's
    /// `maxQueueingTimeMs`); zero rejects at once.
    pub max_queueing: Duration,
}

impl RateConfig {
    /// `qps` with no burst, no warm-up, cold factor 3 and reject behaviour.
    pub fn per_second(qps: f64) -> Self {
        RateConfig {
            qps,
            burst: 1,
            warm_up: None,
            cold_factor: 3.0,
            max_queueing: Duration::ZERO,
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.qps.is_finite() && self.qps > 0.0) {
            return Err(ConfigError::invalid(
                "qps",
                format!("must be > 0 (got {})", self.qps),
            ));
        }
        if self.warm_up.is_some_and(|w| !w.is_zero())
            && !(self.cold_factor.is_finite() && self.cold_factor > 1.0)
        {
            return Err(ConfigError::invalid(
                "cold_factor",
                format!("must be > 1 (got {})", self.cold_factor),
            ));
        }
        Ok(())
    }
}

/// What a caller does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Proceed now.
    Now,
    /// A slot is reserved: wait this long, then proceed (never longer than
    /// `max_queueing`).
    After(Duration),
    /// Refused; the request would conform after `retry_after` (for the
    /// queueing behaviour: its wait would then fit in `max_queueing`).
    Rejected { retry_after: Duration },
}

/// A snapshot of a limiter.
#[derive(Debug, Clone, PartialEq)]
pub struct RateStats {
    /// Requests that could pass at once right now (0 ..= burst).
    pub tokens: f64,
    /// Requests holding a future slot (queueing behaviour).
    pub queued: u32,
    /// The rate currently permitted (below `qps` while warming up).
    pub current_qps: f64,
    /// Requests admitted (`Now` or `After`) since creation.
    pub passed_total: u64,
    /// Requests rejected since creation.
    pub rejected_total: u64,
}

/// Warm-up geometry, all in tokens and seconds.
#[derive(Debug, Clone, Copy)]
struct WarmUp {
    /// Coldness below which the full rate applies.
    warning: f64,
    /// Coldness of a fully cold limiter.
    max: f64,
    /// Extra spacing per token of coldness above `warning`.
    slope: f64,
}

#[derive(Debug)]
struct State {
    /// Schedule: theoretical arrival time of the next request, seconds
    /// since `origin`.
    tat: f64,
    /// Warm-up: stored tokens (coldness) and when idle time was last
    /// credited to them.
    stored: f64,
    credited_to: f64,
    passed: u64,
    rejected: u64,
}

/// A QPS limiter; see [`RateConfig`] and the crate documentation.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateConfig,
    interval: f64,
    burst: f64,
    warm: Option<WarmUp>,
    origin: Instant,
    state: Mutex<State>,
}

// === impl RateLimiter ===

impl RateLimiter {
    /// A limiter starting at `now` with a full bucket (and cold, if it warms
    /// up).
    pub fn new(config: RateConfig, now: Instant) -> Result<RateLimiter, ConfigError> {
        config.validate()?;
        let qps = config.qps;
        let warm = config.warm_up.filter(|w| !w.is_zero()).map(|w| {
            let period = w.as_secs_f64();
            let c = config.cold_factor;
            // Sentinel's levels. Spending the tokens between `warning` and
            // `max` one per admitted request, at the spacing the slope gives,
            // takes exactly `period` (the integral of the spacing over that
            // range), so a saturated cold limiter is warm after `period`.
            let warning = period * qps / (c - 1.0);
            let max = warning + 2.0 * period * qps / (1.0 + c);
            let slope = (c - 1.0) / qps / (max - warning);
            WarmUp {
                warning,
                max,
                slope,
            }
        });
        Ok(RateLimiter {
            interval: 1.0 / qps,
            burst: config.burst.max(1) as f64,
            state: Mutex::new(State {
                tat: 0.0,
                stored: warm.map_or(0.0, |w| w.max),
                credited_to: 0.0,
                passed: 0,
                rejected: 0,
            }),
            warm,
            origin: now,
            config,
        })
    }

    pub fn config(&self) -> &RateConfig {
        &self.config
    }

    fn secs(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.origin).as_secs_f64()
    }

    /// Spacing between requests at the given coldness.
    fn spacing(&self, stored: f64) -> f64 {
        match self.warm {
            Some(w) if stored > w.warning => w.slope * (stored - w.warning) + self.interval,
            _ => self.interval,
        }
    }

    /// Credits idle time (time the schedule was behind `t`) to coldness.
    fn cool(&self, s: &mut State, t: f64) {
        if let Some(w) = self.warm {
            let from = s.tat.max(s.credited_to);
            if t > from {
                s.stored = (s.stored + (t - from) * self.config.qps).min(w.max);
            }
            s.credited_to = s.credited_to.max(t);
        }
    }

    /// Decides one request at `now`.
    pub fn acquire(&self, now: Instant) -> Admission {
        let t = self.secs(now);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.cool(&mut s, t);
        let spacing = self.spacing(s.stored);
        let earliest = s.tat - (self.burst - 1.0) * spacing;
        let wait = earliest - t;
        let max_queue = self.config.max_queueing.as_secs_f64();
        if wait <= EPS || wait <= max_queue {
            s.tat = s.tat.max(t) + spacing;
            s.stored = (s.stored - 1.0).max(0.0);
            s.passed += 1;
            if wait <= EPS {
                Admission::Now
            } else {
                Admission::After(Duration::from_secs_f64(wait))
            }
        } else {
            s.rejected += 1;
            Admission::Rejected {
                retry_after: Duration::from_secs_f64(wait - max_queue),
            }
        }
    }

    /// A snapshot at `now`.
    pub fn stats(&self, now: Instant) -> RateStats {
        let t = self.secs(now);
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Coldness as `acquire` would see it, without crediting it.
        let stored = match self.warm {
            Some(w) => {
                let from = s.tat.max(s.credited_to);
                (s.stored + (t - from).max(0.0) * self.config.qps).min(w.max)
            }
            None => 0.0,
        };
        let spacing = self.spacing(stored);
        let tokens = ((t - s.tat) / spacing + self.burst).clamp(0.0, self.burst);
        let ahead = s.tat - (self.burst - 1.0) * spacing - t;
        // Admitted requests start one spacing apart, the last one a spacing
        // before the schedule's next free slot.
        let queued = if ahead > EPS {
            ((ahead / spacing - EPS).ceil() - 1.0).max(0.0) as u32
        } else {
            0
        };
        RateStats {
            tokens,
            queued,
            current_qps: 1.0 / spacing,
            passed_total: s.passed,
            rejected_total: s.rejected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Offers a request every `step` from `from` for `span`; returns how many
    /// were admitted at once.
    fn offer(l: &RateLimiter, from: Instant, span: Duration, step: Duration) -> u32 {
        let mut n = 0;
        let mut t = from;
        while t < from + span {
            if l.acquire(t) == Admission::Now {
                n += 1;
            }
            t += step;
        }
        n
    }

    #[test]
    fn bad_configs_name_the_field() {
        let t0 = Instant::now();
        let e = RateLimiter::new(RateConfig::per_second(0.0), t0).unwrap_err();
        assert_eq!(e.to_string(), "qps must be > 0 (got 0)");
        assert!(RateLimiter::new(RateConfig::per_second(f64::NAN), t0).is_err());
        let e = RateLimiter::new(
            RateConfig {
                warm_up: Some(Duration::from_secs(5)),
                cold_factor: 1.0,
                ..RateConfig::per_second(10.0)
            },
            t0,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("cold_factor must be > 1"), "{e}");
    }

    #[test]
    fn token_bucket_holds_the_rate() {
        let t0 = Instant::now();
        let l = RateLimiter::new(RateConfig::per_second(100.0), t0).unwrap();
        // Offered 1000/s for 3 s: 100/s pass (the first one at t0).
        let n = offer(&l, t0, Duration::from_secs(3), ms(1));
        assert!((299..=301).contains(&n), "{n}");
        let s = l.stats(t0 + Duration::from_secs(3));
        assert_eq!(s.passed_total, n as u64);
        assert_eq!(s.rejected_total, 3000 - n as u64);
    }

    #[test]
    fn burst_passes_at_once_then_the_rate_applies() {
        let t0 = Instant::now();
        let l = RateLimiter::new(
            RateConfig {
                burst: 20,
                ..RateConfig::per_second(10.0)
            },
            t0,
        )
        .unwrap();
        assert_eq!(l.stats(t0).tokens, 20.0);
        for _ in 0..20 {
            assert_eq!(l.acquire(t0), Admission::Now);
        }
        match l.acquire(t0) {
            Admission::Rejected { retry_after } => {
                assert!(
                    (retry_after.as_secs_f64() - 0.1).abs() < 1e-6,
                    "{retry_after:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(l.stats(t0).tokens < 1e-9);
        // One token back every 100 ms.
        assert_eq!(l.acquire(t0 + ms(100)), Admission::Now);
        assert!(matches!(
            l.acquire(t0 + ms(150)),
            Admission::Rejected { .. }
        ));
        // Idle for a long time: the bucket refills to 20, not more.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(l.stats(t1).tokens, 20.0);
        let n = (0..30).filter(|_| l.acquire(t1) == Admission::Now).count();
        assert_eq!(n, 20);
        // Over 10 s after the burst: 10/s.
        let n = offer(&l, t1 + ms(1), Duration::from_secs(10), ms(5));
        assert!((99..=101).contains(&n), "{n}");
    }

    #[test]
    fn queueing_paces_requests_one_interval_apart() {
        let t0 = Instant::now();
        let l = RateLimiter::new(
            RateConfig {
                max_queueing: ms(500),
                ..RateConfig::per_second(10.0)
            },
            t0,
        )
        .unwrap();
        // Twenty requests at t0: the first passes, the next five get slots
        // 100 ms apart, the rest would wait more than 500 ms.
        let got: Vec<Admission> = (0..8).map(|_| l.acquire(t0)).collect();
        assert_eq!(got[0], Admission::Now);
        for (i, a) in got[1..6].iter().enumerate() {
            match a {
                Admission::After(d) => {
                    let want = 0.1 * (i + 1) as f64;
                    assert!((d.as_secs_f64() - want).abs() < 1e-6, "{i}: {d:?}");
                }
                other => panic!("{i}: {other:?}"),
            }
        }
        match got[6] {
            Admission::Rejected { retry_after } => {
                assert!((retry_after.as_secs_f64() - 0.1).abs() < 1e-6)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(l.stats(t0).queued, 5);
        // Rejections reserve nothing: at +250 ms the next slot is +600 ms.
        match l.acquire(t0 + ms(250)) {
            Admission::After(d) => assert!((d.as_secs_f64() - 0.35).abs() < 1e-6, "{d:?}"),
            other => panic!("{other:?}"),
        }
        // Once the queue drains, a request passes at once again.
        assert_eq!(l.acquire(t0 + Duration::from_secs(2)), Admission::Now);
        let s = l.stats(t0 + Duration::from_secs(2));
        assert_eq!((s.passed_total, s.rejected_total), (8, 2));
    }

    #[test]
    fn queued_admissions_are_spaced_at_the_rate_under_load() {
        let t0 = Instant::now();
        let l = RateLimiter::new(
            RateConfig {
                max_queueing: Duration::from_secs(1),
                ..RateConfig::per_second(50.0)
            },
            t0,
        )
        .unwrap();
        // Offered 200/s for 5 s; admitted requests' start times (now + wait)
        // must be 20 ms apart.
        let mut starts = Vec::new();
        let mut t = t0;
        while t < t0 + Duration::from_secs(5) {
            match l.acquire(t) {
                Admission::Now => starts.push(t),
                Admission::After(d) => starts.push(t + d),
                Admission::Rejected { .. } => {}
            }
            t += ms(5);
        }
        starts.sort();
        for w in starts.windows(2) {
            let gap = (w[1] - w[0]).as_secs_f64();
            assert!(gap > 0.02 - 1e-6, "{gap}");
        }
        // 5 s at 50/s plus the queue of at most 1 s.
        assert!((250..=301).contains(&starts.len()), "{}", starts.len());
        assert!(*starts.last().unwrap() <= t0 + Duration::from_secs(6));
    }

    #[test]
    fn warm_up_starts_below_qps_and_reaches_qps() {
        let t0 = Instant::now();
        let cfg = RateConfig {
            warm_up: Some(Duration::from_secs(10)),
            ..RateConfig::per_second(100.0)
        };
        let l = RateLimiter::new(cfg, t0).unwrap();
        assert!((l.stats(t0).current_qps - 100.0 / 3.0).abs() < 1e-6);
        // Saturating load (1000/s offered), counted per second.
        let per_sec: Vec<u32> = (0..14)
            .map(|i| {
                offer(
                    &l,
                    t0 + Duration::from_secs(i),
                    Duration::from_secs(1),
                    ms(1),
                )
            })
            .collect();
        assert!((32..=37).contains(&per_sec[0]), "{per_sec:?}");
        for w in per_sec.windows(2) {
            assert!(w[1] + 1 >= w[0], "not rising: {per_sec:?}");
        }
        // Sentinel's geometry: saturated, fully warm after `warm_up`.
        assert!(per_sec[5] < 95, "{per_sec:?}");
        for &n in &per_sec[11..] {
            assert!((99..=101).contains(&n), "{per_sec:?}");
        }
        assert!((l.stats(t0 + Duration::from_secs(14)).current_qps - 100.0).abs() < 1e-6);
        // Idle for a while: cold again.
        let t1 = t0 + Duration::from_secs(60);
        assert!((l.stats(t1).current_qps - 100.0 / 3.0).abs() < 1e-6);
        let n = offer(&l, t1, Duration::from_secs(1), ms(1));
        assert!((32..=37).contains(&n), "{n}");
    }

    #[test]
    fn light_load_does_not_warm_the_limiter() {
        let t0 = Instant::now();
        let cfg = RateConfig {
            warm_up: Some(Duration::from_secs(10)),
            ..RateConfig::per_second(100.0)
        };
        let l = RateLimiter::new(cfg, t0).unwrap();
        // 10/s (well under the cold rate) for 30 s: all pass, still cold.
        let n = offer(&l, t0, Duration::from_secs(30), ms(100));
        assert_eq!(n, 300);
        let q = l.stats(t0 + Duration::from_secs(30)).current_qps;
        assert!(q < 40.0, "{q}");
    }

    #[test]
    fn concurrent_callers_share_one_schedule() {
        let t0 = Instant::now();
        let l = std::sync::Arc::new(RateLimiter::new(RateConfig::per_second(10.0), t0).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|i| l.acquire(t0 + ms(*i * 10)) == Admission::Now)
                        .count()
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        // The threads' instants interleave in any order, but one schedule
        // admits at most 1 s × 10/s (+1 for the first) and counts every call.
        assert!((1..=11).contains(&total), "{total}");
        let s = l.stats(t0 + Duration::from_secs(1));
        assert_eq!(s.passed_total + s.rejected_total, 400);
        assert_eq!(s.passed_total, total as u64);
    }
}
