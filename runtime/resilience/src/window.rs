//! A sliding window of fixed-width buckets on injected time, shared by the
//! breaker, the adaptive limiter and the retry budget.

use std::time::{Duration, Instant};

/// `n` buckets of `width` each; bucket `k` covers
/// `[origin + k·width, origin + (k+1)·width)`. A bucket slot is reused when
/// time moves on, so memory is fixed.
#[derive(Debug)]
pub(crate) struct Window<T> {
    width_nanos: u64,
    origin: Option<Instant>,
    /// (bucket number, data); a slot whose number is outside the window is
    /// stale and read as empty.
    slots: Vec<(u64, T)>,
}

impl<T: Default> Window<T> {
    /// A window of `span` split into `n` buckets (`n >= 1`, width at least
    /// 1 ns).
    pub(crate) fn new(span: Duration, n: u32) -> Self {
        let n = n.max(1) as u64;
        let width_nanos = (span.as_nanos() / n as u128).max(1) as u64;
        Window {
            width_nanos,
            origin: None,
            slots: (0..n).map(|_| (u64::MAX, T::default())).collect(),
        }
    }

    pub(crate) fn width(&self) -> Duration {
        Duration::from_nanos(self.width_nanos)
    }

    /// The number of the bucket `now` falls in (the window starts at the
    /// first instant it sees; an earlier `now` falls in bucket 0).
    pub(crate) fn bucket_at(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        let nanos = now.saturating_duration_since(origin).as_nanos();
        (nanos / self.width_nanos as u128) as u64
    }

    /// The bucket `now` falls in, emptied first if it held older data.
    pub(crate) fn current(&mut self, now: Instant) -> &mut T {
        let k = self.bucket_at(now);
        let len = self.slots.len() as u64;
        let slot = &mut self.slots[(k % len) as usize];
        if slot.0 != k {
            *slot = (k, T::default());
        }
        &mut slot.1
    }

    /// The buckets inside the window ending with the bucket of `now`, with
    /// their distance from the current bucket (0 = current).
    pub(crate) fn live(&mut self, now: Instant) -> impl Iterator<Item = (u64, &T)> {
        let k = self.bucket_at(now);
        let len = self.slots.len() as u64;
        self.slots
            .iter()
            .filter(move |(n, _)| *n != u64::MAX && *n <= k && k - *n < len)
            .map(move |(n, data)| (k - *n, data))
    }

    pub(crate) fn clear(&mut self) {
        for slot in &mut self.slots {
            *slot = (u64::MAX, T::default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_expire_after_the_span() {
        let t0 = Instant::now();
        let mut w: Window<u32> = Window::new(Duration::from_secs(1), 10);
        assert_eq!(w.width(), Duration::from_millis(100));
        *w.current(t0) += 1;
        *w.current(t0 + Duration::from_millis(150)) += 2;
        let sum = |w: &mut Window<u32>, t| w.live(t).map(|(_, v)| *v).sum::<u32>();
        assert_eq!(sum(&mut w, t0 + Duration::from_millis(950)), 3);
        // Bucket 0 leaves the window when bucket 10 begins.
        assert_eq!(sum(&mut w, t0 + Duration::from_millis(1000)), 2);
        assert_eq!(sum(&mut w, t0 + Duration::from_millis(1100)), 0);
        // A reused slot starts empty.
        *w.current(t0 + Duration::from_millis(1000)) += 5;
        assert_eq!(sum(&mut w, t0 + Duration::from_millis(1050)), 7);
        assert_eq!(sum(&mut w, t0 + Duration::from_millis(1150)), 5);
        w.clear();
        assert_eq!(sum(&mut w, t0 + Duration::from_millis(1050)), 0);
    }

    #[test]
    fn distances_count_back_from_the_current_bucket() {
        let t0 = Instant::now();
        let mut w: Window<u32> = Window::new(Duration::from_secs(1), 10);
        *w.current(t0) = 1;
        *w.current(t0 + Duration::from_millis(300)) = 2;
        let mut d: Vec<(u64, u32)> = w
            .live(t0 + Duration::from_millis(350))
            .map(|(d, v)| (d, *v))
            .collect();
        d.sort();
        assert_eq!(d, vec![(0, 2), (3, 1)]);
    }
}
