//! The idle strategy of a waiting side: spin, then yield, then sleep on the
//! socket (docs/shm-protocol.md §7.3).

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
}
