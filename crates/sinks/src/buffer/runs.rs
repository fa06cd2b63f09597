//! Which accepted records wait on disk only, and where, without I/O.
//!
//! Every record of the disk buffer is written to a segment; most are also kept in memory (the
//! queue, up to the memory window) and handed on from there. A record that does not fit in the
//! window is *spilled*: it is on disk only, and is read back when the sink gets to it. Spilled
//! records form *runs*: consecutive records in one segment, in acceptance order. The read side
//! is the memory queue and this queue of runs, merged by sequence number: the oldest record not
//! taken is the queue's front or the front run's next record, whichever is older. Records
//! accepted while a run waits go back into memory as soon as the window has room again, so only
//! what overflowed the window is read back (before, spilling was sticky: once one record
//! spilled, every later one did until the reader caught up).
//!
//! The disk adapter ([`super::disk`]) asks [`Runs::spill`] where a record goes, tells it where
//! spilled records were written ([`Runs::spilled`]) and what a read-back consumed
//! ([`Runs::consumed`]); this module only keeps the books.

use std::collections::VecDeque;

/// Consecutive spilled records of one segment, not yet read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    /// The segment (its file is named after this sequence number).
    pub segment: u64,
    /// Where the next unread frame starts in the segment.
    pub offset: u64,
    /// Bytes of the unread frames, from `offset`.
    pub bytes: u64,
    /// The sequence number of the next unread record (a lower bound: a run recovered at start
    /// may have gaps where damaged records were dropped).
    pub next: u64,
    /// One past the run's last sequence number.
    pub end: u64,
    /// Unread records.
    pub records: u64,
}

/// The runs, oldest first, and the spill decision.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    list: VecDeque<Run>,
    /// Unread records in all runs.
    records: u64,
    /// The last record was spilled: records keep spilling until the window has room for a
    /// stretch of records again (an eighth of it), so runs do not shrink to single records
    /// when the window sits at its edge.
    spilling: bool,
}

impl Runs {
    /// Whether a record of `size` bytes goes to disk only, `queued` bytes being in memory and
    /// `window` the memory bound. Called once per accepted record, in order.
    pub(crate) fn spill(&mut self, queued: usize, size: usize, window: usize) -> bool {
        let limit = if self.spilling {
            window - window / 8
        } else {
            window
        };
        self.spilling = queued + size > limit;
        self.spilling
    }

    /// A record whose [`Runs::spill`] said so was written: record `seq`, `size` bytes at
    /// `offset` of `segment`. Extends the last run when it follows it there.
    pub(crate) fn spilled(&mut self, seq: u64, segment: u64, offset: u64, size: u64) {
        self.records += 1;
        if let Some(last) = self.list.back_mut() {
            if last.segment == segment && last.end == seq && last.offset + last.bytes == offset {
                last.end = seq + 1;
                last.bytes += size;
                last.records += 1;
                return;
            }
        }
        self.list.push_back(Run {
            segment,
            offset,
            bytes: size,
            next: seq,
            end: seq + 1,
            records: 1,
        });
    }

    /// A run found on disk at start (older than anything accepted after it).
    pub(crate) fn recovered(&mut self, run: Run) {
        if run.records > 0 {
            self.records += run.records;
            self.list.push_back(run);
        }
    }

    /// Unread records in all runs.
    pub(crate) fn records(&self) -> u64 {
        self.records
    }

    /// The oldest run.
    pub(crate) fn front(&self) -> Option<Run> {
        self.list.front().copied()
    }

    /// Whether the oldest record not taken is on disk: the front run starts before
    /// `queue_front` (the sequence number of the memory queue's first record, if any).
    pub(crate) fn disk_first(&self, queue_front: Option<u64>) -> bool {
        self.list
            .front()
            .is_some_and(|run| queue_front.is_none_or(|q| run.next < q))
    }

    /// A read-back consumed `frames` frames (`bytes` bytes) at the front run's start, the last
    /// of them record `last` (`None` when none parsed). Returns the run when it is used up.
    pub(crate) fn consumed(&mut self, frames: u64, bytes: u64, last: Option<u64>) -> Option<Run> {
        let run = self.list.front_mut()?;
        let frames = frames.min(run.records);
        run.offset += bytes;
        run.bytes = run.bytes.saturating_sub(bytes);
        run.records -= frames;
        self.records -= frames;
        if let Some(last) = last {
            run.next = run.next.max(last + 1);
        }
        if run.bytes == 0 || run.records == 0 {
            return self.pop_front();
        }
        None
    }

    /// Gives up on the front run (unreadable): returns it, with the records it still had.
    pub(crate) fn pop_front(&mut self) -> Option<Run> {
        let run = self.list.pop_front()?;
        self.records -= run.records;
        Some(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of a scenario, on a model of the buffer: a memory queue (sequence numbers)
    /// beside the runs, a window of `WINDOW` bytes, records of `SIZE` bytes.
    #[derive(Debug, Clone, Copy)]
    enum Op {
        /// Accept `n` records.
        Push(u64),
        /// Take `n` records (oldest first; reading back from disk what comes first).
        Take(usize),
        /// Hand a taken record back (requeue): it goes in at its place.
        Requeue(u64),
        /// Rotate to a new segment.
        Rotate,
    }

    const WINDOW: usize = 800;
    const SIZE: usize = 100;
    /// Records read back at once.
    const READ: u64 = 3;

    struct Model {
        runs: Runs,
        queue: VecDeque<u64>,
        next_seq: u64,
        segment: u64,
        offset: u64,
        taken: Vec<u64>,
        read_back: u64,
        /// Accepted and not taken: the next take must be the oldest of them.
        waiting: std::collections::BTreeSet<u64>,
    }

    impl Model {
        fn new() -> Self {
            Model {
                runs: Runs::default(),
                queue: VecDeque::new(),
                next_seq: 0,
                segment: 0,
                offset: 16,
                taken: Vec::new(),
                read_back: 0,
                waiting: Default::default(),
            }
        }

        fn run(&mut self, op: Op) {
            match op {
                Op::Push(n) => {
                    for _ in 0..n {
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        self.waiting.insert(seq);
                        let queued = self.queue.len() * SIZE;
                        if self.runs.spill(queued, SIZE, WINDOW) {
                            self.runs
                                .spilled(seq, self.segment, self.offset, SIZE as u64);
                        } else {
                            self.queue.push_back(seq);
                        }
                        self.offset += SIZE as u64;
                    }
                }
                Op::Take(n) => {
                    for _ in 0..n {
                        if self.runs.disk_first(self.queue.front().copied()) {
                            // Read back a prefix of the front run: its records go before every
                            // queued record except older (requeued) ones.
                            let run = self.runs.front().unwrap();
                            let count = READ.min(run.records);
                            let seqs: Vec<u64> = (run.next..run.next + count).collect();
                            self.runs
                                .consumed(count, count * SIZE as u64, seqs.last().copied());
                            self.read_back += count;
                            let at = self.queue.partition_point(|&q| q < seqs[0]);
                            for (i, s) in seqs.into_iter().enumerate() {
                                self.queue.insert(at + i, s);
                            }
                        }
                        match self.queue.pop_front() {
                            Some(seq) => {
                                assert_eq!(self.waiting.pop_first(), Some(seq), "oldest first");
                                self.taken.push(seq);
                            }
                            None => break,
                        }
                    }
                }
                Op::Requeue(seq) => {
                    self.taken.retain(|&t| t != seq);
                    self.waiting.insert(seq);
                    let at = self.queue.partition_point(|&q| q < seq);
                    self.queue.insert(at, seq);
                }
                Op::Rotate => {
                    self.segment = self.next_seq;
                    self.offset = 16;
                }
            }
        }
    }

    #[test]
    fn records_come_out_in_acceptance_order_and_only_the_overflow_is_read_back() {
        use Op::*;
        // (name, steps): every scenario ends with everything taken.
        let cases: &[(&str, &[Op])] = &[
            ("fits in the window", &[Push(8), Take(8)]),
            ("overflow spills", &[Push(10), Take(10)]),
            (
                "spilling, then memory again once the window has room",
                &[Push(10), Take(1), Push(1), Take(2), Push(3), Take(30)],
            ),
            (
                "interleaved spill and refill",
                &[
                    Push(12),
                    Take(5),
                    Push(6),
                    Take(2),
                    Push(9),
                    Take(4),
                    Push(3),
                    Take(100),
                ],
            ),
            (
                "a run split by a rotation",
                &[
                    Push(9),
                    Rotate,
                    Push(3),
                    Take(2),
                    Rotate,
                    Push(4),
                    Take(100),
                ],
            ),
            (
                "requeue of a record read back and of one from memory",
                &[
                    Push(12),
                    Take(9),
                    Requeue(8),
                    Requeue(3),
                    Push(2),
                    Take(100),
                ],
            ),
            (
                "requeue while a run is at the front",
                &[Push(14), Take(3), Requeue(1), Take(100)],
            ),
        ];
        for (name, ops) in cases {
            let mut m = Model::new();
            for &op in *ops {
                m.run(op);
            }
            // Everything taken at the end, in order, each once.
            let mut want: Vec<u64> = (0..m.next_seq).collect();
            let mut got = m.taken.clone();
            assert_eq!(m.runs.records(), 0, "{name}: runs drained");
            assert!(m.queue.is_empty(), "{name}: queue drained");
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "{name}: every record once");
        }
        // Order: without requeues, the taken order is the acceptance order.
        for (name, ops) in cases.iter().filter(|c| !c.0.starts_with("requeue")) {
            let mut m = Model::new();
            for &op in *ops {
                m.run(op);
            }
            let want: Vec<u64> = (0..m.next_seq).collect();
            assert_eq!(m.taken, want, "{name}: acceptance order");
        }
    }

    #[test]
    fn only_what_overflowed_is_read_back() {
        use Op::*;
        // (steps, records read back)
        let cases: &[(&[Op], u64)] = &[
            (&[Push(8), Take(8)], 0),
            // 8 fit, 2 spill; taking frees room but the next records still go to memory.
            (&[Push(10), Take(100)], 2),
            // A stall: 8 in memory, 12 spill. The sink takes 4 (room for 4 = half the window,
            // more than an eighth): the next 4 go to memory, not behind the run on disk.
            (&[Push(20), Take(4), Push(4), Take(100)], 12),
            // Sticky spilling would have read back 12 + 4 here.
            (&[Push(20), Take(6), Push(6), Take(100)], 12),
        ];
        for (i, (ops, read_back)) in cases.iter().enumerate() {
            let mut m = Model::new();
            for &op in *ops {
                m.run(op);
            }
            assert_eq!(m.read_back, *read_back, "case {i}");
            assert_eq!(m.taken, (0..m.next_seq).collect::<Vec<_>>(), "case {i}");
        }
    }

    #[test]
    fn runs_extend_only_when_contiguous() {
        let mut runs = Runs::default();
        runs.spilled(10, 0, 100, 50);
        runs.spilled(11, 0, 150, 50);
        assert_eq!(
            runs.front().map(|r| (r.next, r.end, r.bytes)),
            Some((10, 12, 100))
        );
        runs.spilled(13, 0, 250, 50); // 12 went to memory: a new run
        runs.spilled(14, 14, 16, 50); // a new segment: a new run
        assert_eq!(runs.records(), 4);
        assert!(runs.disk_first(Some(12)));
        assert!(runs.disk_first(None));
        assert!(!runs.disk_first(Some(9)));
        assert_eq!(runs.consumed(1, 50, Some(10)), None);
        assert_eq!(
            runs.front().map(|r| (r.next, r.offset, r.records)),
            Some((11, 150, 1))
        );
        let used = runs.consumed(1, 50, Some(11)).unwrap();
        assert_eq!((used.next, used.end, used.records), (12, 12, 0));
        assert_eq!(runs.front().map(|r| r.next), Some(13));
        let gone = runs.pop_front().unwrap();
        assert_eq!((gone.next, gone.end, gone.records), (13, 14, 1));
        assert_eq!(runs.records(), 1);
    }

    #[test]
    fn spilling_has_hysteresis() {
        let mut runs = Runs::default();
        // (bytes queued, spills?)
        let steps = [
            (700, false),
            (800, true),  // 800 + 100 > 800
            (700, true),  // spilling: needs 700 + 100 <= 700
            (600, false), // room for an eighth again
            (700, false),
        ];
        for (i, (queued, spill)) in steps.into_iter().enumerate() {
            assert_eq!(runs.spill(queued, 100, 800), spill, "step {i}");
        }
    }
}
