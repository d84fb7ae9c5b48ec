//! Sentinel's concurrency (thread-count) rule: at most `max` calls in flight.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Admits at most `max` concurrent calls; each holds a [`ConcurrencyPermit`]
/// whose drop releases its place.
#[derive(Debug)]
pub struct ConcurrencyLimiter {
    max: AtomicU32,
    in_flight: AtomicU32,
    admitted: AtomicU64,
    rejected: AtomicU64,
}

/// A snapshot of a [`ConcurrencyLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyStats {
    pub max: u32,
    pub in_flight: u32,
    pub admitted_total: u64,
    pub rejected_total: u64,
}

/// One admitted call; dropping it releases the place.
#[derive(Debug)]
#[must_use = "dropping the permit releases the place at once"]
pub struct ConcurrencyPermit {
    limiter: Arc<ConcurrencyLimiter>,
}

// === impl ConcurrencyLimiter ===

impl ConcurrencyLimiter {
    /// A limiter admitting `max` calls at once (0 admits none).
    pub fn new(max: u32) -> Self {
        ConcurrencyLimiter {
            max: AtomicU32::new(max),
            in_flight: AtomicU32::new(0),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Admits a call if fewer than `max` are in flight.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConcurrencyPermit> {
        let max = self.max.load(Ordering::Relaxed);
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            self.admitted.fetch_add(1, Ordering::Relaxed);
            Some(ConcurrencyPermit {
                limiter: self.clone(),
            })
        } else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Changes the limit (a rule reload). Calls in flight keep their
    /// places; if there are more than the new `max`, new calls wait for
    /// enough of them to finish.
    pub fn set_max(&self, max: u32) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn max(&self) -> u32 {
        self.max.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> ConcurrencyStats {
        ConcurrencyStats {
            max: self.max(),
            in_flight: self.in_flight(),
            admitted_total: self.admitted.load(Ordering::Relaxed),
            rejected_total: self.rejected_total(),
        }
    }
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_max_and_releases_on_drop() {
        let l = Arc::new(ConcurrencyLimiter::new(2));
        let a = l.try_acquire().unwrap();
        let b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        assert_eq!(l.in_flight(), 2);
        drop(a);
        assert_eq!(l.in_flight(), 1);
        let c = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        drop((b, c));
        assert_eq!(
            l.stats(),
            ConcurrencyStats {
                max: 2,
                in_flight: 0,
                admitted_total: 3,
                rejected_total: 2
            }
        );
    }

    #[test]
    fn zero_admits_nothing_and_set_max_applies() {
        let l = Arc::new(ConcurrencyLimiter::new(0));
        assert!(l.try_acquire().is_none());
        l.set_max(1);
        let p = l.try_acquire().unwrap();
        l.set_max(0);
        assert!(l.try_acquire().is_none());
        drop(p);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn never_above_max_across_threads() {
        const MAX: u32 = 3;
        let l = Arc::new(ConcurrencyLimiter::new(MAX));
        let peak = Arc::new(AtomicU32::new(0));
        let inside = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (l, peak, inside) = (l.clone(), peak.clone(), inside.clone());
                std::thread::spawn(move || {
                    let mut admitted = 0u32;
                    for _ in 0..2_000 {
                        if let Some(p) = l.try_acquire() {
                            let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(n, Ordering::SeqCst);
                            std::thread::yield_now();
                            inside.fetch_sub(1, Ordering::SeqCst);
                            drop(p);
                            admitted += 1;
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(peak.load(Ordering::SeqCst) <= MAX);
        assert!(admitted > 0);
        let s = l.stats();
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.admitted_total, admitted as u64);
        assert_eq!(s.admitted_total + s.rejected_total, 16_000);
    }
}
