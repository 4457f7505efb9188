//! A hierarchical timing wheel: O(1) insert and cancel, expiry in time proportional to
//! the timers that fire (plus the occupied slots passed on the way).
//!
//! Pure code: time is a tick count given by the caller (the shard uses 1 tick = 1 ms),
//! so tests drive it with a simulated clock. Six levels of 64 slots cover 2^36 ticks
//! (795 days at 1 ms); a timer beyond the current rotation waits at its last tick and is
//! re-filed from there.
//!
//! A timer lives at the level of the highest bit in which its deadline differs from the
//! current tick, in the slot those bits name. When the current tick enters a slot's
//! window at level L, that slot's timers are re-filed at lower levels ("cascade"), and
//! level 0 slots fire. Slots are intrusive doubly linked lists in a slab, so cancel
//! unlinks in O(1); a [`TimerId`] carries a generation so a stale id cancels nothing.

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
const NIL: u32 = u32::MAX;
/// Ticks the wheel can represent ahead of now.
pub const HORIZON_TICKS: u64 = 1 << (SLOT_BITS as u64 * LEVELS as u64);
const DUE_LEVEL: u8 = u8::MAX;

/// Handle to cancel a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

#[derive(Debug)]
struct Node<T> {
    value: Option<T>,
    deadline: u64,
    prev: u32,
    next: u32,
    level: u8,
    slot: u8,
    generation: u32,
}

/// The wheel. `T` is what a timer carries (a waker, a request id).
#[derive(Debug)]
pub struct TimingWheel<T> {
    /// The next tick not yet processed.
    now: u64,
    heads: [[u32; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    /// Timers inserted with a deadline already passed: fire at the next advance.
    due_head: u32,
    nodes: Vec<Node<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> TimingWheel<T> {
    /// An empty wheel whose current tick is `now`.
    pub fn new(now: u64) -> Self {
        Self {
            now,
            heads: [[NIL; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            due_head: NIL,
            nodes: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// Timers pending.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next tick the wheel has not processed.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Adds a timer that fires at the first `advance` reaching `deadline`.
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerId {
        let index = match self.free.pop() {
            Some(i) => {
                let n = &mut self.nodes[i as usize];
                n.value = Some(value);
                n.deadline = deadline;
                i
            }
            None => {
                self.nodes.push(Node {
                    value: Some(value),
                    deadline,
                    prev: NIL,
                    next: NIL,
                    level: 0,
                    slot: 0,
                    generation: 0,
                });
                (self.nodes.len() - 1) as u32
            }
        };
        self.len += 1;
        self.file(index);
        TimerId {
            index,
            generation: self.nodes[index as usize].generation,
        }
    }

    /// Removes a pending timer and returns its value; `None` if it fired or was
    /// cancelled already.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let node = self.nodes.get(id.index as usize)?;
        if node.generation != id.generation || node.value.is_none() {
            return None;
        }
        self.unlink(id.index);
        Some(self.release(id.index))
    }

    /// Processes every tick up to and including `to`, pushing the values of the timers
    /// that fire onto `fired` (in deadline order, by slot).
    pub fn advance(&mut self, to: u64, fired: &mut Vec<T>) {
        while self.due_head != NIL {
            let i = self.due_head;
            self.unlink(i);
            fired.push(self.release(i));
        }
        while self.now <= to {
            let Some(t) = self.next_event() else {
                self.now = to + 1;
                break;
            };
            if t > to {
                self.now = to + 1;
                break;
            }
            self.now = t;
            // Cascade from the top: a slot whose window starts at t moves down.
            for level in (1..LEVELS).rev() {
                let shift = SLOT_BITS as u64 * level as u64;
                if t & ((1u64 << shift) - 1) == 0 {
                    let slot = ((t >> shift) & SLOT_MASK) as usize;
                    self.cascade(level, slot);
                }
            }
            let slot = (t & SLOT_MASK) as usize;
            let mut refile = NIL;
            while self.heads[0][slot] != NIL {
                let i = self.heads[0][slot];
                self.unlink(i);
                if self.nodes[i as usize].deadline > t {
                    // Filed at a rotation's end: file again from the next tick.
                    self.nodes[i as usize].next = refile;
                    refile = i;
                } else {
                    fired.push(self.release(i));
                }
            }
            self.now = t + 1;
            while refile != NIL {
                let i = refile;
                refile = self.nodes[i as usize].next;
                self.file(i);
            }
        }
    }

    /// The earliest tick at which `advance` may have something to do, if any timer is
    /// pending (a lower bound on the next deadline).
    pub fn next_event(&self) -> Option<u64> {
        if self.due_head != NIL {
            return Some(self.now);
        }
        let mut best: Option<u64> = None;
        for level in 0..LEVELS {
            let occ = self.occupied[level];
            if occ == 0 {
                continue;
            }
            let shift = SLOT_BITS as u64 * level as u64;
            let current = ((self.now >> shift) & SLOT_MASK) as u32;
            // Occupied slots at or after the current one in this rotation.
            let ahead = occ & (u64::MAX << current);
            let (slot, wrap) = if ahead != 0 {
                (ahead.trailing_zeros() as u64, 0)
            } else {
                (occ.trailing_zeros() as u64, 1u64)
            };
            let window = shift + SLOT_BITS as u64;
            let base = if window >= 64 {
                0
            } else {
                (self.now >> window << window).wrapping_add(wrap << window)
            };
            let start = (base + (slot << shift)).max(self.now);
            best = Some(best.map_or(start, |b| b.min(start)));
        }
        best
    }

    fn file(&mut self, index: u32) {
        let deadline = self.nodes[index as usize].deadline;
        if deadline < self.now {
            self.push_front(index, DUE_LEVEL, 0);
            return;
        }
        // Past the current top-level rotation the slot index would wrap onto slots
        // not yet reached: file such a timer at the rotation's last tick instead; it
        // is re-filed from there.
        let d = deadline.min(self.now | (HORIZON_TICKS - 1));
        let masked = (d ^ self.now) | SLOT_MASK;
        let significant = 63 - masked.leading_zeros();
        let level = ((significant / SLOT_BITS) as usize).min(LEVELS - 1);
        let slot = ((d >> (SLOT_BITS as usize * level)) & SLOT_MASK) as u8;
        self.push_front(index, level as u8, slot);
    }

    fn push_front(&mut self, index: u32, level: u8, slot: u8) {
        let head = if level == DUE_LEVEL {
            self.due_head
        } else {
            self.heads[level as usize][slot as usize]
        };
        {
            let n = &mut self.nodes[index as usize];
            n.level = level;
            n.slot = slot;
            n.prev = NIL;
            n.next = head;
        }
        if head != NIL {
            self.nodes[head as usize].prev = index;
        }
        if level == DUE_LEVEL {
            self.due_head = index;
        } else {
            self.heads[level as usize][slot as usize] = index;
            self.occupied[level as usize] |= 1 << slot;
        }
    }

    fn unlink(&mut self, index: u32) {
        let (prev, next, level, slot) = {
            let n = &self.nodes[index as usize];
            (n.prev, n.next, n.level, n.slot)
        };
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else if level == DUE_LEVEL {
            self.due_head = next;
        } else {
            self.heads[level as usize][slot as usize] = next;
            if next == NIL {
                self.occupied[level as usize] &= !(1 << slot);
            }
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn release(&mut self, index: u32) -> T {
        let n = &mut self.nodes[index as usize];
        n.generation = n.generation.wrapping_add(1);
        let v = n.value.take().expect("live timer has a value");
        self.free.push(index);
        self.len -= 1;
        v
    }

    fn cascade(&mut self, level: usize, slot: usize) {
        while self.heads[level][slot] != NIL {
            let i = self.heads[level][slot];
            self.unlink(i);
            self.file(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn fires_at_deadline_not_before() {
        let mut w = TimingWheel::new(0);
        w.insert(10, "a");
        w.insert(5, "b");
        let mut out = Vec::new();
        w.advance(4, &mut out);
        assert!(out.is_empty());
        w.advance(5, &mut out);
        assert_eq!(out, vec!["b"]);
        w.advance(9, &mut out);
        assert_eq!(out, vec!["b"]);
        w.advance(10, &mut out);
        assert_eq!(out, vec!["b", "a"]);
        assert!(w.is_empty());
    }

    #[test]
    fn cancel_removes_and_stale_ids_do_nothing() {
        let mut w = TimingWheel::new(0);
        let a = w.insert(100, 1);
        let b = w.insert(100, 2);
        assert_eq!(w.cancel(a), Some(1));
        assert_eq!(w.cancel(a), None, "second cancel");
        let mut out = Vec::new();
        w.advance(100, &mut out);
        assert_eq!(out, vec![2]);
        assert_eq!(w.cancel(b), None, "cancel after fire");
        // The slab slot is reused with a new generation: the old id stays dead.
        let c = w.insert(200, 3);
        assert!(
            c.index == a.index || c.index == b.index,
            "freed slots are reused"
        );
        assert_eq!(w.cancel(a), None);
        assert_eq!(w.cancel(c), Some(3));
    }

    #[test]
    fn far_future_timers_cascade_down_the_levels() {
        let mut w = TimingWheel::new(0);
        let deadlines = [
            63u64,
            64,
            4095,
            4096,
            262_143,
            262_144,
            1 << 30,
            (1 << 36) - 1,
        ];
        for d in deadlines {
            w.insert(d, d);
        }
        let mut out = Vec::new();
        for d in deadlines {
            w.advance(d - 1, &mut out);
            assert!(!out.contains(&d), "{d} fired early");
            w.advance(d, &mut out);
            assert!(out.contains(&d), "{d} did not fire at its deadline");
        }
        assert!(w.is_empty());
    }

    #[test]
    fn timers_past_the_horizon_are_refiled() {
        let mut w = TimingWheel::new(7);
        let d = 7 + HORIZON_TICKS * 2 + 12345;
        w.insert(d, ());
        let mut out = Vec::new();
        w.advance(d - 1, &mut out);
        assert!(out.is_empty());
        w.advance(d, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn past_deadlines_fire_at_the_next_advance() {
        let mut w = TimingWheel::new(1000);
        let id = w.insert(3, "late");
        w.insert(2, "later");
        assert_eq!(w.next_event(), Some(1000));
        assert_eq!(w.cancel(id), Some("late"));
        let mut out = Vec::new();
        w.advance(1000, &mut out);
        assert_eq!(out, vec!["later"]);
    }

    #[test]
    fn many_timers() {
        let mut w = TimingWheel::new(0);
        let mut ids = Vec::new();
        for i in 0..100_000u64 {
            ids.push(w.insert((i * 7919) % 1_000_000, i));
        }
        for id in ids.iter().step_by(2) {
            assert!(w.cancel(*id).is_some());
        }
        let mut out = Vec::new();
        w.advance(1_000_000, &mut out);
        assert_eq!(out.len(), 50_000);
        assert!(out.iter().all(|i| i % 2 == 1));
    }

    proptest! {
        /// Against a model: every timer fires exactly once, at the first advance whose
        /// target reaches its deadline, unless cancelled first.
        #[test]
        fn matches_a_model(
            start in 0u64..1_000_000,
            ops in proptest::collection::vec((0u8..3, 0u64..300_000, any::<prop::sample::Index>()), 1..300),
        ) {
            let mut w = TimingWheel::new(start);
            let mut model: BTreeMap<usize, u64> = BTreeMap::new();
            let mut ids = Vec::new();
            let mut now = start;
            let mut fired = Vec::new();
            for (kind, x, pick) in ops {
                match kind {
                    0 => {
                        let k = ids.len();
                        let deadline = now + x;
                        ids.push(w.insert(deadline, k));
                        model.insert(k, deadline);
                    }
                    1 if !ids.is_empty() => {
                        let k = pick.index(ids.len());
                        prop_assert_eq!(w.cancel(ids[k]).is_some(), model.remove(&k).is_some());
                    }
                    _ => {
                        let to = now + x / 10;
                        fired.clear();
                        w.advance(to, &mut fired);
                        let mut expect: Vec<usize> = model.iter().filter(|(_, d)| **d <= to).map(|(k, _)| *k).collect();
                        expect.sort();
                        let mut got = fired.clone();
                        got.sort();
                        prop_assert_eq!(&got, &expect);
                        for k in expect { model.remove(&k); }
                        now = to + 1;
                    }
                }
                prop_assert_eq!(w.len(), model.len());
                if let (Some(next), Some(min)) = (w.next_event(), model.values().min()) {
                    prop_assert!(next <= (*min).max(now), "next event {} after earliest deadline {}", next, min);
                }
            }
        }
    }
}
