//! Cheap random numbers for ids that must be unique, not secret (trace and
//! span ids, load-balancing choices).

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new({
        let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
        (hi ^ lo) | 1
    });
}

/// xorshift64* over a per-thread state seeded once from the OS: no system
/// call per number (one per id showed up in profiles of the mesh).
pub fn random_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_differ() {
        let a: Vec<u64> = (0..1000).map(|_| super::random_u64()).collect();
        let mut b = a.clone();
        b.sort_unstable();
        b.dedup();
        assert_eq!(a.len(), b.len());
    }
}
