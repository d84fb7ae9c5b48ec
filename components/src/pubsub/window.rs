//! The messages of one partition handed out to its current owner and not
//! yet committed, shared by the backends so that strict and pipelined
//! delivery, RETRY and commits behave the same everywhere.
//!
//! A window holds, in offset order, every message handed out past the
//! partition's committed position, each with the id of its hand-out and
//! whether it was acked. At most `limit` are held: with a limit of 1 the
//! next message is handed out only after the previous one was acked
//! (strict); with N up to N are out at once (pipelined).
//!
//! * An ack (SUCCESS or DROP) marks its message; the acked messages at the
//!   front then leave the window, and the committed position moves past
//!   them — never past a message that is not acked.
//! * A RETRY of message n takes n and everything after it out of the
//!   window (acked or not): the backend hands them out again, from n, in
//!   order, after the backoff. Acks of the hand-outs taken out are
//!   recognised by their id and ignored.
//!
//! Offsets need not be contiguous (Kafka may skip some): the window never
//! computes one, the backend says which offset it hands out.

use std::collections::{BTreeMap, VecDeque};

use super::Ack;

#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: i64,
    id: u64,
    acked: bool,
}

/// What an ack did to a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Not a current hand-out of this window (an earlier owner's, or one
    /// taken out by a RETRY): nothing changed.
    Stale,
    /// Acked. `committed` is the new committed position (the offset after
    /// the last message that left the window) when the front moved, and
    /// `popped` how many messages left.
    Acked {
        popped: usize,
        committed: Option<i64>,
    },
    /// RETRY: the message and everything after it were taken out; the
    /// window now holds `len()` messages and the next hand-out is the
    /// retried message.
    Rewound,
}

/// One partition's handed-out, uncommitted messages.
#[derive(Debug)]
pub struct Window {
    slots: VecDeque<Slot>,
    limit: usize,
    /// Retries so far of messages still in or past the window.
    retries: BTreeMap<i64, u32>,
}

impl Window {
    /// An empty window holding at most `limit` (at least 1) messages.
    pub fn new(limit: usize) -> Self {
        Self {
            slots: VecDeque::with_capacity(limit.clamp(1, 64)),
            limit: limit.max(1),
            retries: BTreeMap::new(),
        }
    }

    /// Messages handed out and not committed.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Nothing handed out awaits an ack.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Another message may be handed out.
    pub fn has_room(&self) -> bool {
        self.slots.len() < self.limit
    }

    /// How many times `offset` was retried (its `attempt` on the next hand-out).
    pub fn attempt(&self, offset: i64) -> u32 {
        if self.retries.is_empty() {
            return 0;
        }
        self.retries.get(&offset).copied().unwrap_or(0)
    }

    /// Records the hand-out of `offset` (greater than every offset held)
    /// with a fresh `id`.
    pub fn hand_out(&mut self, offset: i64, id: u64) {
        debug_assert!(self.has_room());
        debug_assert!(self.slots.back().is_none_or(|s| s.offset < offset));
        self.slots.push_back(Slot {
            offset,
            id,
            acked: false,
        });
    }

    /// Applies the verdict on the hand-out `id` of `offset`.
    pub fn settle(&mut self, offset: i64, id: u64, ack: Ack) -> Settled {
        let Some(idx) = self.position(offset, id) else {
            return Settled::Stale;
        };
        match ack {
            Ack::Success | Ack::Drop => {
                self.slots[idx].acked = true;
                let mut popped = 0;
                let mut committed = None;
                while let Some(front) = self.slots.front() {
                    if !front.acked {
                        break;
                    }
                    committed = Some(front.offset + 1);
                    if !self.retries.is_empty() {
                        self.retries.remove(&front.offset);
                    }
                    self.slots.pop_front();
                    popped += 1;
                }
                Settled::Acked { popped, committed }
            }
            Ack::Retry => {
                *self.retries.entry(offset).or_insert(0) += 1;
                self.slots.truncate(idx);
                Settled::Rewound
            }
        }
    }

    /// Where the current hand-out `id` of `offset` sits.
    fn position(&self, offset: i64, id: u64) -> Option<usize> {
        let first = self.slots.front()?.offset;
        if offset < first {
            return None;
        }
        // Offsets are contiguous on most partitions: try the direct index first.
        let guess = usize::try_from(offset - first).ok()?;
        let idx = match self.slots.get(guess) {
            Some(s) if s.offset == offset => guess,
            _ => self
                .slots
                .binary_search_by_key(&offset, |s| s.offset)
                .ok()?,
        };
        let s = &self.slots[idx];
        (s.id == id && !s.acked).then_some(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_window_takes_one_and_commits_it() {
        let mut w = Window::new(1);
        assert!(w.has_room() && w.is_empty());
        w.hand_out(10, 1);
        assert!(!w.has_room());
        assert_eq!(w.settle(10, 2, Ack::Success), Settled::Stale, "wrong id");
        assert_eq!(
            w.settle(10, 1, Ack::Success),
            Settled::Acked {
                popped: 1,
                committed: Some(11)
            }
        );
        assert!(w.is_empty());
        assert_eq!(w.settle(10, 1, Ack::Success), Settled::Stale, "acked twice");
    }

    #[test]
    fn commits_only_the_acked_prefix() {
        let mut w = Window::new(4);
        for (i, off) in [5, 6, 7, 8].into_iter().enumerate() {
            w.hand_out(off, i as u64 + 1);
        }
        assert!(!w.has_room());
        // Later ones acked first: nothing commits past the unacked 5.
        assert_eq!(
            w.settle(7, 3, Ack::Success),
            Settled::Acked {
                popped: 0,
                committed: None
            }
        );
        assert_eq!(
            w.settle(6, 2, Ack::Drop),
            Settled::Acked {
                popped: 0,
                committed: None
            }
        );
        assert_eq!(w.len(), 4);
        assert_eq!(
            w.settle(5, 1, Ack::Success),
            Settled::Acked {
                popped: 3,
                committed: Some(8)
            }
        );
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn retry_rewinds_to_the_retried_message_and_drops_later_hand_outs() {
        let mut w = Window::new(8);
        for off in 0..5 {
            w.hand_out(off, 100 + off as u64);
        }
        assert_eq!(
            w.settle(3, 103, Ack::Success),
            Settled::Acked {
                popped: 0,
                committed: None
            }
        );
        assert_eq!(w.settle(2, 102, Ack::Retry), Settled::Rewound);
        assert_eq!(w.len(), 2, "0 and 1 stay out, 2.. are handed out again");
        assert_eq!(w.attempt(2), 1);
        assert_eq!(w.attempt(3), 0);
        // Acks of the hand-outs taken out are stale.
        assert_eq!(w.settle(4, 104, Ack::Success), Settled::Stale);
        assert_eq!(w.settle(2, 102, Ack::Success), Settled::Stale);
        // Redelivery of 2 and 3 with new ids.
        w.hand_out(2, 200);
        w.hand_out(3, 201);
        assert_eq!(
            w.settle(0, 100, Ack::Success),
            Settled::Acked {
                popped: 1,
                committed: Some(1)
            }
        );
        assert_eq!(w.settle(2, 200, Ack::Retry), Settled::Rewound);
        assert_eq!(w.attempt(2), 2);
        w.hand_out(2, 300);
        assert_eq!(
            w.settle(1, 101, Ack::Success),
            Settled::Acked {
                popped: 1,
                committed: Some(2)
            }
        );
        assert_eq!(
            w.settle(2, 300, Ack::Success),
            Settled::Acked {
                popped: 1,
                committed: Some(3)
            }
        );
        assert_eq!(w.attempt(2), 0, "forgotten once committed");
        assert!(w.is_empty());
    }

    #[test]
    fn offsets_with_gaps() {
        let mut w = Window::new(3);
        w.hand_out(10, 1);
        w.hand_out(13, 2);
        w.hand_out(20, 3);
        assert_eq!(w.settle(14, 2, Ack::Success), Settled::Stale);
        assert_eq!(
            w.settle(13, 2, Ack::Success),
            Settled::Acked {
                popped: 0,
                committed: None
            }
        );
        assert_eq!(
            w.settle(10, 1, Ack::Success),
            Settled::Acked {
                popped: 2,
                committed: Some(14)
            }
        );
        assert_eq!(w.settle(20, 3, Ack::Retry), Settled::Rewound);
        assert!(w.is_empty());
        assert_eq!(w.attempt(20), 1);
    }
}
