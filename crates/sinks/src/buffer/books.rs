//! The disk buffer's books, without I/O: which sequence numbers are finished (acknowledged,
//! rejected or dropped), how far the persisted acknowledged position may advance, and which
//! segments hold nothing unfinished any more. The disk adapter feeds it and performs what it
//! answers (write the ledger, delete files).

use std::collections::VecDeque;

/// Finished sequence numbers. Records finish out of order (a broker acknowledges packets in any
/// order, a requeued record comes back later); the contiguous prefix is what the ledger keeps.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    /// Every sequence number below this is finished.
    below: u64,
    /// `done[i]`: whether `below + i` is finished.
    done: VecDeque<bool>,
}

impl Acks {
    pub(crate) fn new(below: u64) -> Self {
        Acks {
            below,
            done: VecDeque::new(),
        }
    }

    /// Every sequence number below this one is finished.
    pub(crate) fn below(&self) -> u64 {
        self.below
    }

    /// Whether `seq` is finished.
    pub(crate) fn is_done(&self, seq: u64) -> bool {
        seq < self.below
            || self
                .done
                .get((seq - self.below) as usize)
                .copied()
                .unwrap_or(false)
    }

    /// Marks `seq` finished; returns whether the prefix advanced.
    pub(crate) fn finish(&mut self, seq: u64) -> bool {
        if seq < self.below {
            return false;
        }
        if seq == self.below && self.done.is_empty() {
            // In order (the common case): no entry to add and take away again.
            self.below += 1;
            return true;
        }
        let at = (seq - self.below) as usize;
        if self.done.len() <= at {
            self.done.resize(at + 1, false);
        }
        self.done[at] = true;
        let before = self.below;
        while self.done.front() == Some(&true) {
            self.done.pop_front();
            self.below += 1;
        }
        if self.done.is_empty() && self.done.capacity() > 4096 {
            self.done.shrink_to_fit();
        }
        self.below != before
    }
}

/// One segment file: the sequence numbers it may hold are `first..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    /// The sequence number the file is named after (its first record, when it has one).
    pub first: u64,
    /// One past the last sequence number written to it (grows while it is the active one).
    pub end: u64,
}

/// The segments on disk, oldest first; the last one is the one being written.
#[derive(Debug, Default)]
pub(crate) struct Segments {
    list: VecDeque<Segment>,
}

impl Segments {
    /// Adds a segment after the others.
    pub(crate) fn push(&mut self, segment: Segment) {
        self.list.push_back(segment);
    }

    /// The segment being written.
    pub(crate) fn active(&self) -> Option<Segment> {
        self.list.back().copied()
    }

    /// A record `seq` was appended to the active segment.
    pub(crate) fn appended(&mut self, seq: u64) {
        if let Some(last) = self.list.back_mut() {
            last.end = last.end.max(seq + 1);
        }
    }

    /// Removes and returns the segments, never the active one, whose every record is below
    /// `acked_below`: their files can be deleted.
    pub(crate) fn take_finished(&mut self, acked_below: u64) -> Vec<Segment> {
        let mut out = Vec::new();
        while self.list.len() > 1 && self.list.front().is_some_and(|s| s.end <= acked_below) {
            out.extend(self.list.pop_front());
        }
        out
    }

    /// How many segments there are.
    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }
}

/// Finished segment files kept for reuse (*spares*) instead of deleted: a new segment takes one
/// (renamed, written again from the start) rather than a new file, so the kernel neither frees
/// the old file's pages and blocks nor allocates new ones. At most `max` are kept (the disk holds
/// that many segments beyond the records); the rest are deleted. Each spare is known by the
/// sequence number it was named after when it held records.
#[derive(Debug)]
pub(crate) struct Spares {
    max: usize,
    list: Vec<u64>,
}

/// What becomes of a finished segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retire {
    /// Keep it as a spare (rename it so; [`Spares::kept`] once that worked).
    Keep,
    /// Delete it: enough spares are kept.
    Delete,
}

impl Spares {
    pub(crate) fn new(max: usize) -> Self {
        Spares {
            max,
            list: Vec::new(),
        }
    }

    /// A segment is finished: whether to keep it as a spare or delete it.
    pub(crate) fn retire(&self) -> Retire {
        if self.list.len() < self.max {
            Retire::Keep
        } else {
            Retire::Delete
        }
    }

    /// A segment became a spare (its file renamed as such).
    pub(crate) fn kept(&mut self, first: u64) {
        self.list.push(first);
    }

    /// A spare for a new segment: the most recently kept (the likeliest to be in the page
    /// cache still).
    pub(crate) fn take(&mut self) -> Option<u64> {
        self.list.pop()
    }

    /// Every spare (the buffer closes: they are deleted).
    pub(crate) fn take_all(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_advances_only_over_contiguous_finished_records() {
        // (finish seq, expected below afterwards, whether it advanced)
        let steps: &[(u64, u64, bool)] = &[
            (12, 10, false),
            (11, 10, false),
            (10, 13, true),
            (10, 13, false),
            (3, 13, false),
            (14, 13, false),
            (13, 15, true),
            // In order, nothing pending (the fast path), then a gap again.
            (15, 16, true),
            (16, 17, true),
            (18, 17, false),
            (17, 19, true),
        ];
        let mut acks = Acks::new(10);
        for &(seq, below, advanced) in steps {
            assert_eq!(acks.finish(seq), advanced, "finishing {seq}");
            assert_eq!(acks.below(), below, "after finishing {seq}");
        }
        assert!(acks.is_done(18) && acks.is_done(0) && !acks.is_done(19) && !acks.is_done(900));
    }

    #[test]
    fn only_fully_acknowledged_inactive_segments_are_deleted() {
        let mut segs = Segments::default();
        segs.push(Segment { first: 0, end: 100 });
        segs.push(Segment {
            first: 100,
            end: 200,
        });
        segs.push(Segment {
            first: 200,
            end: 200,
        });
        segs.appended(250);
        assert_eq!(
            segs.active(),
            Some(Segment {
                first: 200,
                end: 251
            })
        );
        assert!(segs.take_finished(99).is_empty());
        assert_eq!(
            segs.take_finished(150),
            vec![Segment { first: 0, end: 100 }]
        );
        // Everything acknowledged: the active segment stays.
        assert_eq!(
            segs.take_finished(1000),
            vec![Segment {
                first: 100,
                end: 200
            }]
        );
        assert_eq!(segs.len(), 1);
    }

    #[test]
    fn finished_segments_are_kept_as_spares_up_to_the_limit_and_reused_newest_first() {
        enum Op {
            Retire(u64, Retire),
            Take(Option<u64>),
        }
        use Op::{Retire as R, Take as T};
        let steps = [
            T(None),
            R(0, Retire::Keep),
            R(100, Retire::Keep),
            R(200, Retire::Delete),
            T(Some(100)),
            R(300, Retire::Keep),
            T(Some(300)),
            T(Some(0)),
            T(None),
        ];
        let mut spares = Spares::new(2);
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                R(first, expected) => {
                    let answer = spares.retire();
                    assert_eq!(answer, expected, "step {i}");
                    if answer == Retire::Keep {
                        spares.kept(first);
                    }
                }
                T(expected) => assert_eq!(spares.take(), expected, "step {i}"),
            }
        }
        spares.kept(7);
        spares.kept(8);
        assert_eq!(spares.take_all(), [7, 8]);
        assert_eq!(spares.take(), None);
        // No spares at all: every finished segment is deleted.
        assert_eq!(Spares::new(0).retire(), Retire::Delete);
    }
}
