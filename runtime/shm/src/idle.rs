//! The idle strategy of a waiting side: spin, then yield, then sleep on the
//! socket (docs/shm-protocol.md §7.3).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long to spin and then yield before sleeping on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleConfig {
    /// Busy-wait this long after the last record (lowest latency, burns a core).
    pub spin: Duration,
    /// Then call `sched_yield` this long (cheap when the core is wanted
    /// elsewhere, still a busy loop otherwise).
    pub yield_for: Duration,
}

impl IdleConfig {
    /// Sleep on the socket at once: every wake-up costs a syscall pair.
    pub const SLEEP: IdleConfig = IdleConfig {
        spin: Duration::ZERO,
        yield_for: Duration::ZERO,
    };
}

impl Default for IdleConfig {
    /// 50 µs spinning, 50 µs yielding: an idle side sleeps within 0.1 ms.
    fn default() -> Self {
        Self {
            spin: Duration::from_micros(50),
            yield_for: Duration::from_micros(50),
        }
    }
}

/// How many threads of a process may spin or yield at once: one less than
/// the vCPUs, at least one. Past that a waiting side sleeps as soon as it
/// has nothing to do, so that spinning never takes every core from the
/// threads that have work (the other side of the ring among them).
#[derive(Debug)]
pub struct SpinBound {
    spinners: AtomicUsize,
    max: usize,
}

impl SpinBound {
    pub fn new(max: usize) -> Self {
        Self {
            spinners: AtomicUsize::new(0),
            max: max.max(1),
        }
    }

    /// One less than this machine's vCPUs, at least one.
    pub fn for_this_machine() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)))
    }

    /// Threads holding a place now.
    pub fn spinning(&self) -> usize {
        self.spinners.load(Ordering::Relaxed)
    }
}

/// A waiting thread's claim on a place of a [`SpinBound`]; given back when
/// it sleeps ([`SpinSlot::release`]) or is dropped.
#[derive(Debug)]
pub struct SpinSlot<'a> {
    bound: &'a SpinBound,
    held: bool,
}

impl<'a> SpinSlot<'a> {
    pub fn new(bound: &'a SpinBound) -> Self {
        Self { bound, held: false }
    }

    /// Holds a place, taking a free one if needed: `false` when none is.
    pub fn hold(&mut self) -> bool {
        if !self.held {
            if self.bound.spinners.fetch_add(1, Ordering::AcqRel) < self.bound.max {
                self.held = true;
            } else {
                self.bound.spinners.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.held
    }

    pub fn release(&mut self) {
        if self.held {
            self.bound.spinners.fetch_sub(1, Ordering::AcqRel);
            self.held = false;
        }
    }
}

impl Drop for SpinSlot<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// What to do on an empty poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Spin,
    Yield,
    Sleep,
}

/// Tracks how long a side has been idle.
#[derive(Debug)]
pub struct Idler {
    cfg: IdleConfig,
    since: Option<Instant>,
    polls: u32,
    step: Step,
}

impl Idler {
    pub fn new(cfg: IdleConfig) -> Self {
        Self {
            cfg,
            since: None,
            polls: 0,
            step: Step::Spin,
        }
    }

    pub fn config(&self) -> IdleConfig {
        self.cfg
    }

    /// Work arrived: start over.
    pub fn reset(&mut self) {
        self.since = None;
        self.polls = 0;
        self.step = Step::Spin;
    }

    /// Called on each empty poll; says what to do next. The clock is read
    /// only every 32 polls, from the 32nd on, to keep spinning cheap.
    pub fn next_step(&mut self) -> Step {
        if self.cfg.spin.is_zero() && self.cfg.yield_for.is_zero() {
            return Step::Sleep;
        }
        self.polls = self.polls.wrapping_add(1);
        if self.polls.is_multiple_of(32) {
            // Idle time counts from the first look at the clock, 32 polls
            // in: a wait that ends sooner never reads it.
            let idle = match self.since {
                Some(since) => since.elapsed(),
                None => {
                    self.since = Some(Instant::now());
                    Duration::ZERO
                }
            };
            self.step = if idle < self.cfg.spin {
                Step::Spin
            } else if idle < self.cfg.spin + self.cfg.yield_for {
                Step::Yield
            } else {
                Step::Sleep
            };
        }
        self.step
    }

    /// Performs a spin or yield step; returns `true` when it is time to sleep.
    pub fn idle(&mut self) -> bool {
        match self.next_step() {
            Step::Spin => {
                std::hint::spin_loop();
                false
            }
            Step::Yield => {
                std::thread::yield_now();
                false
            }
            Step::Sleep => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_to_sleep() {
        let mut i = Idler::new(IdleConfig::SLEEP);
        assert!(i.idle());
        let mut i = Idler::new(IdleConfig {
            spin: Duration::from_micros(10),
            yield_for: Duration::from_micros(10),
        });
        let start = Instant::now();
        while !i.idle() {}
        assert!(start.elapsed() >= Duration::from_micros(20));
        i.reset();
        assert!(!i.idle());
    }

    #[test]
    fn a_spin_bound_gives_out_its_places_and_takes_them_back() {
        let bound = SpinBound::new(1);
        let mut a = SpinSlot::new(&bound);
        let mut b = SpinSlot::new(&bound);
        assert!(a.hold());
        assert!(a.hold(), "holding twice keeps one place");
        assert!(!b.hold(), "the only place is taken");
        assert_eq!(bound.spinning(), 1);
        a.release();
        assert!(b.hold());
        drop(b);
        assert_eq!(bound.spinning(), 0);
        assert_eq!(SpinBound::new(0).max, 1, "at least one may spin");
    }
}
