//! Choosing an instance: round robin or power of two choices over the
//! instances name resolution returned, skipping ejected ones.
//!
//! An instance is ejected when a connection to it fails (refused, reset,
//! TLS or identity failure) or after [`EJECT_AFTER`] consecutive transport
//! failures; it comes back after a back-off that doubles with every
//! ejection in a row (1 s … 30 s) and is fully trusted again after its
//! first success. When every instance is ejected, all are tried anyway:
//! an ejection never makes an app unreachable by itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::LbPolicy;

/// Consecutive transport failures that eject an instance.
pub const EJECT_AFTER: u32 = 3;
const EJECT_BASE: Duration = Duration::from_secs(1);
const EJECT_MAX: Duration = Duration::from_secs(30);

/// Health and load of one instance.
#[derive(Debug)]
pub struct InstanceStats {
    pub addr: SocketAddr,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    health: Mutex<Ejection>,
}

#[derive(Debug, Default)]
struct Ejection {
    until: Option<Instant>,
    times: u32,
}

impl InstanceStats {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            health: Mutex::new(Ejection::default()),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a call in flight until the guard is dropped.
    pub fn start_call(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.health
            .lock()
            .map(|h| h.until.is_some_and(|t| t > now))
            .unwrap_or(false)
    }

    /// A call completed at the transport level (whatever the app answered).
    pub fn record_success(&self) {
        if self.consecutive_failures.swap(0, Ordering::Relaxed) != 0 {
            if let Ok(mut h) = self.health.lock() {
                if h.times > 0 {
                    tracing::info!(instance = %self.addr, "mesh: instance recovered");
                }
                *h = Ejection::default();
            }
        }
    }

    /// A transport failure. `hard` (the connection could not be made)
    /// ejects at once; otherwise after [`EJECT_AFTER`] in a row. Returns the
    /// ejection time when this failure ejected the instance.
    pub fn record_failure(&self, hard: bool, now: Instant) -> Option<Duration> {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if !hard && n < EJECT_AFTER {
            return None;
        }
        let mut h = self.health.lock().ok()?;
        if h.until.is_some_and(|t| t > now) {
            return None;
        }
        h.times = h.times.saturating_add(1);
        let factor = 1u32 << (h.times - 1).min(5);
        let time = (EJECT_BASE * factor).min(EJECT_MAX);
        h.until = Some(now + time);
        Some(time)
    }
}

/// Decrements the in-flight count on drop.
pub struct InFlight<'a>(&'a InstanceStats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks among `candidates` (instances not yet tried for this call).
pub struct Balancer {
    policy: LbPolicy,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(policy: LbPolicy) -> Self {
        Self {
            policy,
            next: AtomicUsize::new(0),
        }
    }

    pub fn pick<'a, T: AsRef<InstanceStats>>(&self, candidates: &'a [T]) -> Option<&'a T> {
        let now = Instant::now();
        let healthy: Vec<&T> = candidates
            .iter()
            .filter(|c| !c.as_ref().is_ejected(now))
            .collect();
        let pool: Vec<&T> = if healthy.is_empty() {
            candidates.iter().collect()
        } else {
            healthy
        };
        match pool.len() {
            0 => None,
            1 => Some(pool[0]),
            n => match self.policy {
                LbPolicy::RoundRobin => Some(pool[self.next.fetch_add(1, Ordering::Relaxed) % n]),
                LbPolicy::PowerOfTwo => {
                    let r = random_usize();
                    let a = r % n;
                    let b = (a + 1 + (r / n) % (n - 1)) % n;
                    let (x, y) = (pool[a], pool[b]);
                    Some(if y.as_ref().in_flight() < x.as_ref().in_flight() {
                        y
                    } else {
                        x
                    })
                }
            },
        }
    }
}

fn random_usize() -> usize {
    weft_blocks::ids::random_u64() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn instances(n: u16) -> Vec<Arc<InstanceStats>> {
        (0..n)
            .map(|i| {
                Arc::new(InstanceStats::new(SocketAddr::from((
                    [127, 0, 0, 1],
                    1000 + i,
                ))))
            })
            .collect()
    }

    #[test]
    fn round_robin_visits_each_in_turn() {
        let all = instances(3);
        let b = Balancer::new(LbPolicy::RoundRobin);
        let picks: Vec<u16> = (0..6).map(|_| b.pick(&all).unwrap().addr.port()).collect();
        assert_eq!(picks, [1000, 1001, 1002, 1000, 1001, 1002]);
    }

    #[test]
    fn power_of_two_prefers_the_less_loaded() {
        let all = instances(2);
        let _busy: Vec<_> = (0..5).map(|_| all[0].start_call()).collect();
        let b = Balancer::new(LbPolicy::PowerOfTwo);
        for _ in 0..50 {
            assert_eq!(b.pick(&all).unwrap().addr.port(), 1001);
        }
        drop(_busy);
        assert_eq!(all[0].in_flight(), 0);
    }

    #[test]
    fn ejected_instances_are_skipped_until_they_recover() {
        let all = instances(2);
        let now = Instant::now();
        assert_eq!(all[0].record_failure(false, now), None);
        assert_eq!(all[0].record_failure(false, now), None);
        assert_eq!(all[0].record_failure(false, now), Some(EJECT_BASE));
        let b = Balancer::new(LbPolicy::RoundRobin);
        for _ in 0..10 {
            assert_eq!(b.pick(&all).unwrap().addr.port(), 1001);
        }
        // A hard failure after the back-off doubles it.
        let later = now + EJECT_BASE + Duration::from_millis(1);
        assert!(!all[0].is_ejected(later));
        assert_eq!(all[0].record_failure(true, later), Some(EJECT_BASE * 2));
        all[0].record_success();
        assert!(!all[0].is_ejected(Instant::now()));
    }

    #[test]
    fn all_ejected_still_tries_them() {
        let all = instances(2);
        for i in &all {
            i.record_failure(true, Instant::now());
        }
        assert!(Balancer::new(LbPolicy::RoundRobin).pick(&all).is_some());
    }

    #[test]
    fn policy_names() {
        assert_eq!("p2c".parse::<LbPolicy>(), Ok(LbPolicy::PowerOfTwo));
        assert_eq!("round-robin".parse::<LbPolicy>(), Ok(LbPolicy::RoundRobin));
        assert!("random"
            .parse::<LbPolicy>()
            .unwrap_err()
            .0
            .contains("random"));
    }
}
