//! BBR-style adaptive load shedding: in-flight calls beyond the best observed
//! throughput × the best observed latency are shed. See the crate
//! documentation.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::window::Window;
use crate::ConfigError;

/// After shedding while the CPU was high, the check stays on this long even
/// if the CPU falls below the threshold (Kratos' one-second cool-off).
const COOL_OFF: Duration = Duration::from_secs(1);

/// The adaptive limiter's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConfig {
    /// Span of the statistics (default 10 s).
    pub window: Duration,
    /// Buckets in the window (default 100, i.e. 100 ms each).
    pub buckets: u32,
    /// Shed only while the process CPU (0..=1, set with
    /// [`AdaptiveLimiter::set_cpu`]) is above this, and for one second after
    /// shedding. `None`: always evaluate. Default 0.8.
    pub cpu_threshold: Option<f64>,
    /// Hard limit on calls in flight, whatever the CPU and the estimate.
    pub max_in_flight: Option<u32>,
    /// The latency estimate is never below this (very fast calls would
    /// otherwise make the estimate jumpy). Default 1 ms.
    pub min_rt_floor: Duration,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            window: Duration::from_secs(10),
            buckets: 100,
            cpu_threshold: Some(0.8),
            max_in_flight: None,
            min_rt_floor: Duration::from_millis(1),
        }
    }
}

impl AdaptiveConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.buckets == 0 {
            return Err(ConfigError::invalid("buckets", "must be >= 1 (got 0)"));
        }
        if self.window < Duration::from_micros(self.buckets as u64) {
            return Err(ConfigError::invalid(
                "window",
                format!(
                    "must be at least 1 µs per bucket (got {:?} for {} buckets)",
                    self.window, self.buckets
                ),
            ));
        }
        if let Some(c) = self.cpu_threshold {
            if !(c.is_finite() && (0.0..=1.0).contains(&c)) {
                return Err(ConfigError::invalid(
                    "cpu_threshold",
                    format!("must be between 0 and 1 (got {c})"),
                ));
            }
        }
        if self.max_in_flight == Some(0) {
            return Err(ConfigError::invalid(
                "max_in_flight",
                "must be >= 1 (got 0)",
            ));
        }
        Ok(())
    }
}

/// A call shed; `reason` says which limit, with the numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shed {
    pub reason: String,
}

impl fmt::Display for Shed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Shed {}

/// A snapshot of the limiter.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveStats {
    pub in_flight: u64,
    /// The in-flight limit the window supports (`None` until the window has
    /// completed calls).
    pub limit: Option<u64>,
    /// Best throughput in the window, calls per second.
    pub max_pass_per_sec: Option<f64>,
    /// Best mean round trip in the window (at least `min_rt_floor`).
    pub min_rt: Option<Duration>,
    /// The CPU usage last set.
    pub cpu: f64,
    pub admitted_total: u64,
    pub shed_total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Estimate {
    max_pass_per_sec: f64,
    min_rt: Duration,
    limit: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    completed: u64,
    rt_nanos: u128,
}

#[derive(Debug)]
struct Inner {
    window: Window<Bucket>,
    /// The estimate from the completed buckets, computed once per bucket.
    cached: Option<(u64, Option<Estimate>)>,
    last_shed: Option<Instant>,
}

/// The adaptive limiter; share it in an `Arc`.
#[derive(Debug)]
pub struct AdaptiveLimiter {
    config: AdaptiveConfig,
    in_flight: AtomicU64,
    cpu_bits: AtomicU64,
    /// Set while a cool-off may be running (saves the lock otherwise).
    cooling: AtomicBool,
    admitted: AtomicU64,
    shed: AtomicU64,
    inner: Mutex<Inner>,
}

/// An admitted call. Call [`AdaptivePermit::done`] when it completes so its
/// round trip feeds the estimate; dropping the permit without it only
/// releases the in-flight place.
#[derive(Debug)]
#[must_use = "call done(now) when the call completes"]
pub struct AdaptivePermit {
    limiter: Arc<AdaptiveLimiter>,
    admitted_at: Instant,
}

// === impl AdaptiveLimiter ===

impl AdaptiveLimiter {
    pub fn new(config: AdaptiveConfig) -> Result<AdaptiveLimiter, ConfigError> {
        config.validate()?;
        Ok(AdaptiveLimiter {
            in_flight: AtomicU64::new(0),
            cpu_bits: AtomicU64::new(0f64.to_bits()),
            cooling: AtomicBool::new(false),
            admitted: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                window: Window::new(config.window, config.buckets),
                cached: None,
                last_shed: None,
            }),
            config,
        })
    }

    pub fn config(&self) -> &AdaptiveConfig {
        &self.config
    }

    /// The process CPU usage, 0..=1 (the runtime samples it periodically).
    pub fn set_cpu(&self, usage: f64) {
        let usage = if usage.is_nan() { 0.0 } else { usage };
        self.cpu_bits.store(usage.to_bits(), Ordering::Relaxed);
    }

    fn cpu(&self) -> f64 {
        f64::from_bits(self.cpu_bits.load(Ordering::Relaxed))
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn estimate(&self, inner: &mut Inner, now: Instant) -> Option<Estimate> {
        let k = inner.window.bucket_at(now);
        if let Some((at, est)) = inner.cached {
            if at == k {
                return est;
            }
        }
        let width = inner.window.width().as_secs_f64();
        let mut max_completed = 0u64;
        let mut min_rt: Option<u128> = None;
        for (distance, b) in inner.window.live(now) {
            if distance == 0 || b.completed == 0 {
                continue;
            }
            max_completed = max_completed.max(b.completed);
            let mean = b.rt_nanos / b.completed as u128;
            min_rt = Some(min_rt.map_or(mean, |m| m.min(mean)));
        }
        let est = min_rt.map(|rt| {
            let rt =
                Duration::from_nanos(rt.min(u64::MAX as u128) as u64).max(self.config.min_rt_floor);
            let max_pass_per_sec = max_completed as f64 / width;
            let limit = (max_pass_per_sec * rt.as_secs_f64()).round().max(1.0) as u64;
            Estimate {
                max_pass_per_sec,
                min_rt: rt,
                limit,
            }
        });
        inner.cached = Some((k, est));
        est
    }

    /// Whether the CPU condition holds (or a cool-off runs) at `now`.
    fn cpu_condition(&self, inner: &mut Inner, now: Instant) -> Option<String> {
        let Some(threshold) = self.config.cpu_threshold else {
            return Some(String::new());
        };
        let cpu = self.cpu();
        if cpu > threshold {
            return Some(format!(
                ", CPU {:.0}% above {:.0}%",
                cpu * 100.0,
                threshold * 100.0
            ));
        }
        match inner.last_shed {
            Some(at) if now.saturating_duration_since(at) <= COOL_OFF => Some(format!(
                ", CPU {:.0}% but cooling off after shedding at {:.0}%",
                cpu * 100.0,
                threshold * 100.0
            )),
            _ => {
                inner.last_shed = None;
                self.cooling.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    fn refuse(&self, reason: String) -> Shed {
        self.shed.fetch_add(1, Ordering::Relaxed);
        Shed { reason }
    }

    /// Admits a call at `now`, or sheds it.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Result<AdaptivePermit, Shed> {
        // Fast path: CPU configured, below it and no cool-off running.
        let quiet = match self.config.cpu_threshold {
            Some(th) => self.cpu() <= th && !self.cooling.load(Ordering::Relaxed),
            None => false,
        };
        let check = if quiet {
            None
        } else {
            let mut inner = self.lock();
            match self.cpu_condition(&mut inner, now) {
                Some(why) => self.estimate(&mut inner, now).map(|e| (e, why)),
                None => None,
            }
        };
        let mut cur = self.in_flight.load(Ordering::Acquire);
        loop {
            if let Some(max) = self.config.max_in_flight {
                if cur >= max as u64 {
                    return Err(self.refuse(format!("in-flight {cur} reached max_in_flight {max}")));
                }
            }
            if let Some((e, why)) = &check {
                if cur > e.limit {
                    if self.config.cpu_threshold.is_some_and(|th| self.cpu() > th) {
                        self.lock().last_shed = Some(now);
                        self.cooling.store(true, Ordering::Relaxed);
                    }
                    return Err(self.refuse(format!(
                        "in-flight {cur} above the estimated capacity {} \
                         (max throughput {:.1}/s × min RT {:?}){why}",
                        e.limit, e.max_pass_per_sec, e.min_rt
                    )));
                }
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(AdaptivePermit {
            limiter: self.clone(),
            admitted_at: now,
        })
    }

    pub fn stats(&self, now: Instant) -> AdaptiveStats {
        let est = {
            let mut inner = self.lock();
            self.estimate(&mut inner, now)
        };
        AdaptiveStats {
            in_flight: self.in_flight(),
            limit: est.map(|e| e.limit),
            max_pass_per_sec: est.map(|e| e.max_pass_per_sec),
            min_rt: est.map(|e| e.min_rt),
            cpu: self.cpu(),
            admitted_total: self.admitted.load(Ordering::Relaxed),
            shed_total: self.shed.load(Ordering::Relaxed),
        }
    }
}

// === impl AdaptivePermit ===

impl AdaptivePermit {
    /// The call completed at `now`: records its round trip and releases its
    /// place.
    pub fn done(self, now: Instant) {
        let rt = now.saturating_duration_since(self.admitted_at);
        let mut inner = self.limiter.lock();
        let b = inner.window.current(now);
        b.completed += 1;
        b.rt_nanos += rt.as_nanos();
        // `self` drops here and releases the place.
    }

    pub fn admitted_at(&self) -> Instant {
        self.admitted_at
    }
}

impl Drop for AdaptivePermit {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn limiter(cpu_threshold: Option<f64>, max_in_flight: Option<u32>) -> Arc<AdaptiveLimiter> {
        Arc::new(
            AdaptiveLimiter::new(AdaptiveConfig {
                window: Duration::from_secs(1),
                buckets: 10,
                cpu_threshold,
                max_in_flight,
                min_rt_floor: Duration::ZERO,
            })
            .unwrap(),
        )
    }

    /// Buckets 0..5 of a 100 ms-bucket window: ten calls each, 50 ms round
    /// trips (100/s × 50 ms: capacity 5).
    fn feed(l: &Arc<AdaptiveLimiter>, t0: Instant) {
        for b in 0..5 {
            let t = t0 + ms(b * 100 + 10);
            for _ in 0..10 {
                l.admit(t).unwrap().done(t + ms(50));
            }
        }
    }

    #[test]
    fn bad_configs_name_the_field() {
        let bad = |c: AdaptiveConfig| AdaptiveLimiter::new(c).unwrap_err().to_string();
        assert_eq!(
            bad(AdaptiveConfig {
                buckets: 0,
                ..Default::default()
            }),
            "buckets must be >= 1 (got 0)"
        );
        assert_eq!(
            bad(AdaptiveConfig {
                cpu_threshold: Some(80.0),
                ..Default::default()
            }),
            "cpu_threshold must be between 0 and 1 (got 80)"
        );
        assert!(bad(AdaptiveConfig {
            max_in_flight: Some(0),
            ..Default::default()
        })
        .starts_with("max_in_flight"));
    }

    #[test]
    fn admits_everything_before_the_window_has_data() {
        let t0 = Instant::now();
        let l = limiter(None, None);
        let held: Vec<_> = (0..1000).map(|_| l.admit(t0).unwrap()).collect();
        assert_eq!(l.in_flight(), 1000);
        assert_eq!(l.stats(t0).limit, None);
        drop(held);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn sheds_beyond_throughput_times_latency_and_admits_as_calls_complete() {
        let t0 = Instant::now();
        let l = limiter(None, None);
        feed(&l, t0);
        let t = t0 + ms(600);
        let s = l.stats(t);
        assert_eq!(s.limit, Some(5));
        assert_eq!(s.max_pass_per_sec, Some(100.0));
        assert_eq!(s.min_rt, Some(ms(50)));
        // Admitted while no more than 5 are already in flight.
        let mut held: Vec<_> = (0..6).map(|_| l.admit(t).unwrap()).collect();
        let shed = l.admit(t).unwrap_err();
        assert_eq!(
            shed.reason,
            "in-flight 6 above the estimated capacity 5 (max throughput 100.0/s × min RT 50ms)"
        );
        assert!(l.admit(t).is_err());
        // One completes: room for one more.
        held.pop().unwrap().done(t + ms(20));
        held.push(l.admit(t + ms(20)).unwrap());
        assert!(l.admit(t + ms(20)).is_err());
        let s = l.stats(t + ms(20));
        assert_eq!((s.in_flight, s.shed_total), (6, 3));
        assert_eq!(s.admitted_total, 50 + 7);
        // All complete.
        for p in held {
            p.done(t + ms(30));
        }
        assert!(l.admit(t + ms(30)).is_ok());
    }

    #[test]
    fn the_estimate_follows_the_best_bucket_and_ages_out() {
        let t0 = Instant::now();
        let l = limiter(None, None);
        feed(&l, t0);
        // A faster bucket (20 calls of 10 ms) raises throughput and lowers
        // latency: 200/s × 10 ms = 2.
        let t = t0 + ms(510);
        for _ in 0..20 {
            l.admit(t).unwrap().done(t + ms(10));
        }
        let s = l.stats(t0 + ms(650));
        assert_eq!(s.max_pass_per_sec, Some(200.0));
        assert_eq!(s.min_rt, Some(ms(10)));
        assert_eq!(s.limit, Some(2));
        // The current bucket never counts; after the window, no data.
        assert_eq!(l.stats(t0 + ms(1600)).limit, None);
        let held: Vec<_> = (0..50).map(|_| l.admit(t0 + ms(1600)).unwrap()).collect();
        assert_eq!(held.len(), 50);
    }

    #[test]
    fn the_floor_bounds_the_latency_estimate() {
        let t0 = Instant::now();
        let l = Arc::new(
            AdaptiveLimiter::new(AdaptiveConfig {
                window: Duration::from_secs(1),
                buckets: 10,
                cpu_threshold: None,
                max_in_flight: None,
                min_rt_floor: ms(200),
            })
            .unwrap(),
        );
        feed(&l, t0);
        let s = l.stats(t0 + ms(600));
        assert_eq!((s.min_rt, s.limit), (Some(ms(200)), Some(20)));
    }

    #[test]
    fn cpu_threshold_gates_shedding_with_a_cool_off() {
        let t0 = Instant::now();
        // A 10 s window (100 ms buckets) keeps the fed data throughout.
        let l = Arc::new(
            AdaptiveLimiter::new(AdaptiveConfig {
                min_rt_floor: Duration::ZERO,
                ..Default::default()
            })
            .unwrap(),
        );
        feed(&l, t0);
        let t = t0 + ms(600);
        l.set_cpu(0.5);
        let mut held: Vec<_> = (0..10).map(|_| l.admit(t).unwrap()).collect();
        l.set_cpu(0.95);
        let shed = l.admit(t).unwrap_err();
        assert!(
            shed.reason.ends_with(", CPU 95% above 80%"),
            "{}",
            shed.reason
        );
        // CPU falls, but shedding continues for the cool-off.
        l.set_cpu(0.3);
        let shed = l.admit(t + ms(500)).unwrap_err();
        assert!(shed.reason.contains("cooling off"), "{}", shed.reason);
        assert!(l.admit(t + ms(1000)).is_err());
        held.push(l.admit(t + ms(1001)).unwrap());
        assert_eq!(l.stats(t + ms(1001)).shed_total, 3);
    }

    #[test]
    fn max_in_flight_is_a_hard_limit_across_threads() {
        let t0 = Instant::now();
        let l = limiter(Some(0.8), Some(4));
        let peak = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (l, peak) = (l.clone(), peak.clone());
                std::thread::spawn(move || {
                    let mut shed = 0;
                    for i in 0..1000 {
                        match l.admit(t0 + ms(i)) {
                            Ok(p) => {
                                peak.fetch_max(l.in_flight(), Ordering::SeqCst);
                                std::thread::yield_now();
                                p.done(t0 + ms(i + 1));
                            }
                            Err(s) => {
                                assert!(s.reason.ends_with("reached max_in_flight 4"));
                                shed += 1;
                            }
                        }
                    }
                    shed
                })
            })
            .collect();
        let shed: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(peak.load(Ordering::SeqCst) <= 4);
        let s = l.stats(t0);
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.shed_total, shed);
        assert_eq!(s.admitted_total + s.shed_total, 6000);
    }
}
