//! Single-producer single-consumer record rings in shared memory
//! (docs/shm-protocol.md §3.2, §4, §7). No async and no locks: the producer
//! owns the tail, the consumer owns the head, both are monotonically
//! increasing byte positions (the index is `position & (capacity - 1)`).
//!
//! The peer is another process and may be hostile: every value read from
//! shared memory is checked before use, payloads are copied out before they
//! are decoded, and a broken invariant is reported as [`RingError`] rather
//! than trusted.

use std::fmt;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::layout::{
    Layout, RingId, HEAD_OFFSET, NEED_WAKEUP_OFFSET, RING_CONTROL_LEN, TAIL_OFFSET,
};
use crate::record::{
    align, check_frame, Frame, FrameError, RECORD_HEADER_LEN, TYPE_MESSAGE, TYPE_PADDING,
};
use crate::segment::Segment;

/// The largest aligned record on a ring of `capacity` bytes: half of it.
pub fn max_record(capacity: u64) -> u64 {
    capacity / 2
}

/// A ring whose shared state breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingError {
    /// The peer's counter went backwards or further than the ring allows.
    BadCounter {
        ring: RingId,
        counter: &'static str,
        value: u64,
        expected: String,
    },
    /// A record header that cannot be accepted.
    BadRecord { ring: RingId, error: FrameError },
    /// A record longer than the ring's largest.
    TooLarge { ring: RingId, len: usize, max: u64 },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::BadCounter {
                ring,
                counter,
                value,
                expected,
            } => write!(f, "ring {ring}: {counter} counter is {value}, expected {expected}"),
            RingError::BadRecord { ring, error } => write!(f, "ring {ring}: {error}"),
            RingError::TooLarge { ring, len, max } => write!(
                f,
                "a record of {len} bytes does not fit ring {ring} (largest record: {max} bytes, half the ring)"
            ),
        }
    }
}

impl std::error::Error for RingError {}

/// Pointers into one ring of a mapped segment.
struct RingMem {
    /// Keeps the mapping alive as long as the pointers below are used.
    _seg: Arc<Segment>,
    ring: RingId,
    ctrl: *mut u8,
    data: *mut u8,
    capacity: u64,
}

// SAFETY: the pointers target the shared mapping owned by `seg` (an `Arc`
// that is itself Send + Sync); all accesses through them are atomics or raw
// copies, which are valid from any thread.
unsafe impl Send for RingMem {}

impl RingMem {
    fn new(seg: Arc<Segment>, layout: &Layout, ring: RingId) -> Self {
        let (offset, capacity) = layout.ring(ring);
        assert!(
            offset + RING_CONTROL_LEN as u64 + capacity <= seg.len() as u64,
            "ring {ring} lies outside the segment"
        );
        // SAFETY: the control block and data area lie within the mapping
        // (asserted just above), so both pointers are in bounds.
        let (ctrl, data) = unsafe {
            let ctrl = seg.base().add(offset as usize);
            (ctrl, ctrl.add(RING_CONTROL_LEN))
        };
        Self {
            _seg: seg,
            ring,
            ctrl,
            data,
            capacity,
        }
    }

    fn counter(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: `offset` is TAIL_OFFSET or HEAD_OFFSET, within the control
        // block; the mapping is page-aligned and the layout puts control
        // blocks at multiples of 512, so the u64 is 8-aligned. The mapping
        // outlives `&self` (we hold the `Arc`). Both processes touch these
        // words only through atomic operations.
        unsafe { AtomicU64::from_ptr(self.ctrl.add(offset).cast()) }
    }

    fn need_wakeup(&self) -> &AtomicU32 {
        // SAFETY: as for `counter`: in bounds, 4-aligned, outlived by the
        // mapping, accessed only atomically.
        unsafe { AtomicU32::from_ptr(self.ctrl.add(NEED_WAKEUP_OFFSET).cast()) }
    }

    /// Copies `dst.len()` bytes from data index `idx`.
    fn copy_out(&self, idx: u64, dst: &mut [u8]) {
        debug_assert!(idx + dst.len() as u64 <= self.capacity);
        // SAFETY: callers pass `idx + len <= capacity` (checked by
        // `check_frame` or by construction), so the source is inside the
        // data area; `dst` is private memory. The peer may be writing these
        // bytes (it must not, but may be hostile): we take one copy and
        // validate only the copy, so a torn read yields bad data, never
        // unsoundness in this process.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(idx as usize), dst.as_mut_ptr(), dst.len())
        }
    }

    /// Copies `src` to data index `idx`.
    fn copy_in(&self, idx: u64, src: &[u8]) {
        debug_assert!(idx + src.len() as u64 <= self.capacity);
        // SAFETY: callers ensure `idx + len <= capacity` (the producer only
        // writes records it has checked to fit before the end of the data
        // area), so the destination is inside the writable mapping; `src`
        // is private memory and cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.add(idx as usize), src.len())
        }
    }
}

// === impl Producer ===

/// The writing end of a ring.
pub struct Producer {
    mem: RingMem,
    tail: u64,
    head_cache: u64,
    max_record: u64,
}

impl Producer {
    pub(crate) fn new(seg: Arc<Segment>, layout: &Layout, ring: RingId) -> Self {
        let mem = RingMem::new(seg, layout, ring);
        let tail = mem.counter(TAIL_OFFSET).load(Ordering::Acquire);
        let head_cache = mem.counter(HEAD_OFFSET).load(Ordering::Acquire);
        Self {
            max_record: max_record(mem.capacity),
            mem,
            tail,
            head_cache,
        }
    }

    /// The largest payload (bytes after the 8-byte record header) a record
    /// on this ring may carry.
    pub fn max_payload(&self) -> usize {
        self.max_record as usize - RECORD_HEADER_LEN
    }

    /// This producer's position (bytes ever written).
    pub fn position(&self) -> u64 {
        self.tail
    }

    /// Which ring this writes.
    pub fn ring(&self) -> RingId {
        self.mem.ring
    }

    /// The consumer's published position, checked against ours.
    pub fn consumer_position(&mut self) -> Result<u64, RingError> {
        let head = self.mem.counter(HEAD_OFFSET).load(Ordering::Acquire);
        if head < self.head_cache || head > self.tail {
            return Err(RingError::BadCounter {
                ring: self.mem.ring,
                counter: "head",
                value: head,
                expected: format!("between {} and {}", self.head_cache, self.tail),
            });
        }
        self.head_cache = head;
        Ok(head)
    }

    /// Writes one message record made of `parts` (concatenated) and
    /// publishes it. `Ok(false)` when the ring has no room yet; nothing is
    /// written then.
    pub fn try_write(&mut self, parts: &[&[u8]]) -> Result<bool, RingError> {
        let payload: usize = parts.iter().map(|p| p.len()).sum();
        let length = RECORD_HEADER_LEN + payload;
        let advance = align(length) as u64;
        if advance > self.max_record || length > i32::MAX as usize {
            return Err(RingError::TooLarge {
                ring: self.mem.ring,
                len: length,
                max: self.max_record,
            });
        }
        let cap = self.mem.capacity;
        let idx = self.tail & (cap - 1);
        let to_end = cap - idx;
        let needed = if advance > to_end {
            to_end + advance
        } else {
            advance
        };
        if cap - (self.tail - self.head_cache) < needed {
            let head = self.consumer_position()?;
            if cap - (self.tail - head) < needed {
                return Ok(false);
            }
        }
        let mut idx = idx;
        if advance > to_end {
            let mut pad = [0u8; RECORD_HEADER_LEN];
            pad[0..4].copy_from_slice(&(to_end as i32).to_le_bytes());
            pad[4..8].copy_from_slice(&TYPE_PADDING.to_le_bytes());
            self.mem.copy_in(idx, &pad);
            self.tail += to_end;
            idx = 0;
        }
        let mut hdr = [0u8; RECORD_HEADER_LEN];
        hdr[0..4].copy_from_slice(&(length as i32).to_le_bytes());
        hdr[4..8].copy_from_slice(&TYPE_MESSAGE.to_le_bytes());
        self.mem.copy_in(idx, &hdr);
        let mut at = idx + RECORD_HEADER_LEN as u64;
        for p in parts {
            self.mem.copy_in(at, p);
            at += p.len() as u64;
        }
        let slack = advance as usize - length;
        if slack > 0 {
            self.mem.copy_in(at, &[0u8; 8][..slack]);
        }
        self.tail += advance;
        self.mem
            .counter(TAIL_OFFSET)
            .store(self.tail, Ordering::Release);
        Ok(true)
    }

    /// After publishing: whether the consumer asked to be woken. Issues the
    /// full fence that pairs with the consumer's (store tail; fence; load
    /// flag — against — store flag; fence; load tail).
    pub fn consumer_needs_wakeup(&self) -> bool {
        fence(Ordering::SeqCst);
        self.mem.need_wakeup().load(Ordering::Relaxed) != 0
    }

    /// Test hook for hostile-peer tests: writes raw bytes at the current
    /// tail (clamped to the end of the data area) and publishes a tail of
    /// `tail + advance`, unchecked.
    #[doc(hidden)]
    pub fn hostile_publish_raw(&mut self, bytes: &[u8], advance: u64) {
        let idx = self.tail & (self.mem.capacity - 1);
        let n = bytes.len().min((self.mem.capacity - idx) as usize);
        self.mem.copy_in(idx, &bytes[..n]);
        self.tail = self.tail.wrapping_add(advance);
        self.mem
            .counter(TAIL_OFFSET)
            .store(self.tail, Ordering::Release);
    }

    /// Test hook for hostile-peer tests: stores any value as the tail.
    #[doc(hidden)]
    pub fn hostile_set_tail(&mut self, tail: u64) {
        self.tail = tail;
        self.mem.counter(TAIL_OFFSET).store(tail, Ordering::Release);
    }
}

// === impl Consumer ===

/// The reading end of a ring.
pub struct Consumer {
    mem: RingMem,
    head: u64,
    max_record: u64,
    scratch: Vec<u8>,
}

impl Consumer {
    pub(crate) fn new(seg: Arc<Segment>, layout: &Layout, ring: RingId) -> Self {
        let mem = RingMem::new(seg, layout, ring);
        let head = mem.counter(HEAD_OFFSET).load(Ordering::Acquire);
        Self {
            max_record: max_record(mem.capacity),
            mem,
            head,
            scratch: Vec::with_capacity(4096),
        }
    }

    /// This consumer's position.
    pub fn position(&self) -> u64 {
        self.head
    }

    /// Which ring this reads.
    pub fn ring(&self) -> RingId {
        self.mem.ring
    }

    fn load_tail(&self) -> Result<u64, RingError> {
        let tail = self.mem.counter(TAIL_OFFSET).load(Ordering::Acquire);
        if tail < self.head || tail - self.head > self.mem.capacity {
            return Err(RingError::BadCounter {
                ring: self.mem.ring,
                counter: "tail",
                value: tail,
                expected: format!(
                    "between {} and {}",
                    self.head,
                    self.head + self.mem.capacity
                ),
            });
        }
        Ok(tail)
    }

    /// Whether the producer has published nothing past our position.
    pub fn is_empty(&self) -> Result<bool, RingError> {
        Ok(self.load_tail()? == self.head)
    }

    /// Reads up to `limit` message records, handing each payload (a private
    /// copy) to `f`, then publishes the new head. Returns how many were
    /// read. An error from `f` stops the batch (the head still moves past
    /// the records already handed over).
    pub fn poll<E>(
        &mut self,
        limit: usize,
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<usize, PollError<E>> {
        let tail = self.load_tail().map_err(PollError::Ring)?;
        let cap = self.mem.capacity;
        let mut n = 0;
        let mut result = Ok(());
        while self.head < tail && n < limit {
            let idx = self.head & (cap - 1);
            let mut hdr = [0u8; RECORD_HEADER_LEN];
            let to_end = cap - idx;
            let available = tail - self.head;
            if available < RECORD_HEADER_LEN as u64 {
                result = Err(PollError::Ring(RingError::BadCounter {
                    ring: self.mem.ring,
                    counter: "tail",
                    value: tail,
                    expected: format!("a record boundary after {}", self.head),
                }));
                break;
            }
            self.mem.copy_out(idx, &mut hdr);
            let length = i32::from_le_bytes(hdr[0..4].try_into().expect("4 bytes"));
            let kind = i32::from_le_bytes(hdr[4..8].try_into().expect("4 bytes"));
            match check_frame(length, kind, self.head, to_end, available, self.max_record) {
                Err(error) => {
                    result = Err(PollError::Ring(RingError::BadRecord {
                        ring: self.mem.ring,
                        error,
                    }));
                    break;
                }
                Ok(Frame::Padding { advance }) => self.head += advance,
                Ok(Frame::Message {
                    payload_len,
                    advance,
                }) => {
                    self.scratch.resize(payload_len, 0);
                    let mut scratch = std::mem::take(&mut self.scratch);
                    self.mem
                        .copy_out(idx + RECORD_HEADER_LEN as u64, &mut scratch);
                    self.head += advance;
                    n += 1;
                    let r = f(&scratch);
                    self.scratch = scratch;
                    if let Err(e) = r {
                        result = Err(PollError::Handler(e));
                        break;
                    }
                }
            }
        }
        self.mem
            .counter(HEAD_OFFSET)
            .store(self.head, Ordering::Release);
        result.map(|()| n)
    }

    /// Raises the need-wakeup flag and issues the full fence; the caller
    /// must re-check [`Consumer::is_empty`] before blocking.
    pub fn arm_wakeup(&self) {
        self.mem.need_wakeup().store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Lowers the need-wakeup flag (after waking, before consuming).
    pub fn disarm_wakeup(&self) {
        self.mem.need_wakeup().store(0, Ordering::Relaxed);
    }
}

/// An error from [`Consumer::poll`].
#[derive(Debug)]
pub enum PollError<E> {
    Ring(RingError),
    Handler(E),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Header;

    fn segment(cap: u64) -> (tempfile::TempDir, Arc<Segment>, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(cap, cap).unwrap();
        let header = Header {
            runtime_pid: 1,
            app_pid: 1,
            session_id: 1,
            layout,
        };
        let seg = Segment::create(dir.path(), "weft-test", &header).unwrap();
        (dir, seg, layout)
    }

    fn drain(c: &mut Consumer) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        c.poll::<()>(usize::MAX, |p| {
            out.push(p.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn wraps_with_padding_and_refuses_when_full() {
        let (_d, seg, layout) = segment(4096);
        let mut p = seg.producer(&layout, RingId::AppToRuntime);
        let mut c = seg.consumer(&layout, RingId::AppToRuntime);
        let mut seq = 0u32;
        let mut expect = 0u32;
        for round in 0..2000 {
            let len = (round * 37) % 1500;
            // Fill until full, then drain: wraps many times with every size.
            loop {
                let mut body = vec![(seq % 251) as u8; len];
                body.extend_from_slice(&seq.to_le_bytes());
                if !p.try_write(&[&body]).unwrap() {
                    break;
                }
                seq += 1;
            }
            for rec in drain(&mut c) {
                let n = u32::from_le_bytes(rec[rec.len() - 4..].try_into().unwrap());
                assert_eq!(n, expect);
                assert!(rec[..rec.len() - 4].iter().all(|b| *b == (n % 251) as u8));
                expect += 1;
            }
            assert!(c.is_empty().unwrap());
        }
        assert_eq!(seq, expect);
        assert!(p.position() > 100 * 4096, "wrapped many times");
        assert!(matches!(
            p.try_write(&[&[0u8; 2048]]),
            Err(RingError::TooLarge { .. })
        ));
    }

    #[test]
    fn hostile_counters_are_reported() {
        let (_d, seg, layout) = segment(4096);
        let mut p = seg.producer(&layout, RingId::AppToRuntime);
        let mut c = seg.consumer(&layout, RingId::AppToRuntime);
        p.try_write(&[b"x"]).unwrap();
        drain(&mut c);
        p.hostile_set_tail(0);
        assert!(matches!(
            c.is_empty(),
            Err(RingError::BadCounter {
                counter: "tail",
                ..
            })
        ));
        p.hostile_set_tail(c.position() + 8192);
        assert!(matches!(c.is_empty(), Err(RingError::BadCounter { .. })));
        // A bad length in a published record.
        p.hostile_set_tail(c.position());
        p.hostile_publish_raw(&[0xff, 0xff, 0, 0, 1, 0, 0, 0], 16);
        assert!(matches!(
            c.poll::<()>(10, |_| Ok(())),
            Err(PollError::Ring(RingError::BadRecord { .. }))
        ));
        // The consumer moving its head backwards is caught by the producer.
        let (_d, seg, layout) = segment(4096);
        let mut p = seg.producer(&layout, RingId::RuntimeToApp);
        let mut c = seg.consumer(&layout, RingId::RuntimeToApp);
        for _ in 0..3 {
            p.try_write(&[&[1u8; 1000]]).unwrap();
        }
        drain(&mut c);
        p.consumer_position().unwrap();
        seg.write_bytes(
            (layout.r2a_offset as usize) + HEAD_OFFSET,
            &0u64.to_le_bytes(),
        );
        assert!(matches!(
            p.consumer_position(),
            Err(RingError::BadCounter {
                counter: "head",
                ..
            })
        ));
    }

    #[test]
    fn wakeup_flag_round_trip() {
        let (_d, seg, layout) = segment(4096);
        let mut p = seg.producer(&layout, RingId::AppToRuntime);
        let c = seg.consumer(&layout, RingId::AppToRuntime);
        assert!(!p.consumer_needs_wakeup());
        c.arm_wakeup();
        assert!(c.is_empty().unwrap());
        p.try_write(&[b"x"]).unwrap();
        assert!(p.consumer_needs_wakeup());
        assert!(!c.is_empty().unwrap());
        c.disarm_wakeup();
        assert!(!p.consumer_needs_wakeup());
    }
}
