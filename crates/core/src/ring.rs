//! The fan-out ring: a bounded window of recent chunks that every listener reads by cursor.
//!
//! Contract: the writer [`Ring::push`]es chunks, each getting the next index; a reader holds a
//! cursor (the index it wants next) and asks [`Ring::read`], which hands out the chunks from the
//! cursor to the live edge (at most `max` of them), or tells the reader it fell out of the
//! window and where the live edge is. The ring never grows: a slow reader costs nothing here.

/// What a reader at some cursor gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Chunks `from..to` are ready (fetch them with [`Ring::range`]); advance the cursor to `to`.
    Chunks {
        /// The reader's cursor.
        from: u64,
        /// One past the last ready chunk.
        to: u64,
    },
    /// Nothing new yet: wait for the next push.
    UpToDate,
    /// The cursor fell behind the oldest kept chunk: `missed` chunks are gone. Continue from
    /// `resume`, near the live edge.
    Lagged {
        /// Chunks the reader lost.
        missed: u64,
        /// Where to continue.
        resume: u64,
    },
}

/// A bounded ring of chunks, indexed by a monotonically increasing `u64`.
#[derive(Debug)]
pub struct Ring<T> {
    slots: Vec<Option<T>>,
    head: u64,
}

impl<T> Ring<T> {
    /// A ring that keeps the last `capacity` chunks (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Ring {
            slots: (0..capacity).map(|_| None).collect(),
            head: 0,
        }
    }

    /// Number of chunks kept.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Index the next pushed chunk will get (one past the live edge).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Index of the oldest chunk still kept.
    pub fn tail(&self) -> u64 {
        self.head.saturating_sub(self.slots.len() as u64)
    }

    /// Adds a chunk at the live edge, dropping the oldest when full. Returns its index.
    pub fn push(&mut self, chunk: T) -> u64 {
        let idx = self.head;
        let cap = self.slots.len() as u64;
        self.slots[(idx % cap) as usize] = Some(chunk);
        self.head += 1;
        idx
    }

    /// The chunk at `idx`, if still kept.
    pub fn get(&self, idx: u64) -> Option<&T> {
        if idx < self.tail() || idx >= self.head {
            return None;
        }
        self.slots[(idx % self.slots.len() as u64) as usize].as_ref()
    }

    /// Where a new reader starts: `backlog` chunks behind the live edge (bounded by what is kept).
    pub fn join_cursor(&self, backlog: u64) -> u64 {
        self.head.saturating_sub(backlog).max(self.tail())
    }

    /// Reads from `cursor`: up to `max` chunks (at least one), or why there are none.
    ///
    /// A reader that lagged out of the window resumes `rejoin_backlog` chunks behind the edge.
    pub fn read(&self, cursor: u64, max: usize, rejoin_backlog: u64) -> Read {
        if cursor >= self.head {
            return Read::UpToDate;
        }
        let tail = self.tail();
        if cursor < tail {
            let resume = self.join_cursor(rejoin_backlog);
            return Read::Lagged {
                missed: resume - cursor,
                resume,
            };
        }
        let to = self.head.min(cursor + max.max(1) as u64);
        Read::Chunks { from: cursor, to }
    }

    /// The kept chunks with indices in `from..to`, oldest first.
    pub fn range(&self, from: u64, to: u64) -> impl Iterator<Item = &T> {
        (from..to).filter_map(|i| self.get(i))
    }
}

/// An immutable copy of a ring's newest chunks, published so that readers take no lock: a
/// reader whose cursor is inside it reads from it; one further behind asks the ring itself.
#[derive(Debug, Clone)]
pub struct Window<T> {
    first: u64,
    items: Vec<T>,
}

impl<T: Clone> Window<T> {
    /// The newest `n` chunks of `ring` (fewer if it holds fewer).
    pub fn of(ring: &Ring<T>, n: usize) -> Self {
        let first = ring.head().saturating_sub(n as u64).max(ring.tail());
        Window {
            first,
            items: ring.range(first, ring.head()).cloned().collect(),
        }
    }
}

impl<T> Window<T> {
    /// A window with nothing in it yet.
    pub fn empty() -> Self {
        Window {
            first: 0,
            items: Vec::new(),
        }
    }

    /// One past the newest chunk.
    pub fn head(&self) -> u64 {
        self.first + self.items.len() as u64
    }

    /// Index of the oldest chunk held.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The chunks from `cursor` to the live edge, or `None` when `cursor` is older than the
    /// window (ask the ring).
    pub fn since(&self, cursor: u64) -> Option<&[T]> {
        if cursor < self.first {
            return None;
        }
        let at = (cursor - self.first).min(self.items.len() as u64) as usize;
        Some(&self.items[at..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reader_gets_chunks_in_order_then_waits() {
        let mut r = Ring::new(4);
        for i in 0..3 {
            r.push(i);
        }
        assert_eq!(r.read(0, 10, 1), Read::Chunks { from: 0, to: 3 });
        assert_eq!(r.range(0, 3).collect::<Vec<_>>(), vec![&0, &1, &2]);
        assert_eq!(r.read(1, 1, 1), Read::Chunks { from: 1, to: 2 });
        assert_eq!(r.read(3, 10, 1), Read::UpToDate);
    }

    #[test]
    fn lagging_listener_skips_to_live_edge_and_counts_the_gap() {
        let mut r = Ring::new(4);
        for i in 0..10 {
            r.push(i);
        }
        // Kept: 6..10. A reader at 2 lost 2..9 and resumes one chunk behind the edge.
        assert_eq!(r.tail(), 6);
        assert_eq!(
            r.read(2, 10, 1),
            Read::Lagged {
                missed: 7,
                resume: 9
            }
        );
        assert_eq!(r.read(9, 10, 1), Read::Chunks { from: 9, to: 10 });
    }

    #[test]
    fn wrap_around_keeps_indices_consistent() {
        let mut r = Ring::new(3);
        for i in 0u64..1000 {
            assert_eq!(r.push(i), i);
            assert_eq!(r.get(i), Some(&i));
            if i >= 3 {
                assert_eq!(r.get(i - 3), None);
            }
        }
        assert_eq!(r.join_cursor(2), 998);
        assert_eq!(r.join_cursor(100), 997);
    }

    #[test]
    fn window_holds_the_newest_chunks_and_sends_older_readers_to_the_ring() {
        let mut r = Ring::new(8);
        assert_eq!(Window::of(&r, 3).since(0), Some(&[][..]));
        for i in 0..10u64 {
            r.push(i);
        }
        let w = Window::of(&r, 3);
        assert_eq!((w.first(), w.head()), (7, 10));
        assert_eq!(w.since(8), Some(&[8, 9][..]));
        assert_eq!(w.since(10), Some(&[][..]));
        assert_eq!(w.since(12), Some(&[][..]));
        assert_eq!(w.since(6), None);
        let all = Window::of(&r, 100);
        assert_eq!((all.first(), all.head()), (2, 10));
    }

    proptest! {
        /// Whatever the interleaving of pushes and reads, a reader sees every index exactly once
        /// either as a chunk or inside a counted gap, and never out of order.
        #[test]
        fn every_chunk_is_delivered_or_counted_missing(
            ops in prop::collection::vec((0usize..6, 1usize..5), 1..200),
            cap in 1usize..8,
        ) {
            let mut r = Ring::new(cap);
            let mut cursor = 0u64;
            let mut seen = 0u64;
            let mut missed = 0u64;
            let mut last: Option<u64> = None;
            for (pushes, max) in ops {
                for _ in 0..pushes {
                    let h = r.head();
                    r.push(h);
                }
                match r.read(cursor, max, 1) {
                    Read::Chunks { from, to } => {
                        let c: Vec<&u64> = r.range(from, to).collect();
                        prop_assert_eq!(c.len() as u64, to - from);
                        for &&v in &c {
                            prop_assert!(last.is_none_or(|l| v > l));
                            last = Some(v);
                        }
                        seen += c.len() as u64;
                        cursor += c.len() as u64;
                    }
                    Read::UpToDate => prop_assert_eq!(cursor, r.head()),
                    Read::Lagged { missed: m, resume } => {
                        missed += m;
                        cursor = resume;
                    }
                }
            }
            prop_assert_eq!(seen + missed, cursor);
        }
    }
}
