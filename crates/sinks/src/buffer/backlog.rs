//! The memory buffer's backlog: payloads kept in blocks the operating system gets back when the
//! backlog drains (issue 11: "memory ... is returned after a backlog drains").
//!
//! Outside a backlog each record keeps the payload allocation the router made for it: records
//! pass through quickly and the allocator reuses that memory. In a backlog (the broker away or
//! slower than the source) thousands of records are held at once; as separate small heap
//! allocations, spread over the allocator's per-thread arenas among longer-lived ones, glibc
//! keeps their pages after the drain (measured: nothing of a 16 MiB backlog given back 10 s
//! after it drained; docs/BENCHMARKS.md). So while the buffer holds a backlog, each payload is
//! copied into the current *block* and kept as a slice of it; a block is one allocation larger
//! than glibc's highest dynamic mmap threshold (32 MiB on 64-bit, `mallopt(3)`), so it is a
//! mapping of its own: only the pages written are resident, and the whole mapping is returned
//! (`munmap`) when its last record has left the buffer. A block takes at most `fill` bytes of
//! payloads, so one record still waiting cannot keep more than that resident; when the backlog
//! ends the current block is let go (freed once its last records are delivered).
//!
//! A full block is kept as *spent*: once its last slice is gone (its records delivered or
//! dropped) the next block reuses its mapping from the start, so a backlog that lasts (a source
//! outrunning the broker at full rate) writes into pages it already has instead of faulting
//! fresh ones in and unmapping old ones (at full rate `Backlog::keep` fell from 16.7% of the
//! bridge's CPU samples to 5.5%; docs/BENCHMARKS.md). Other free spent blocks are let go then, so no more than one block's
//! pages wait unused; all are let go with the current one when the backlog ends.
//!
//! No I/O and no clock: [`Backlog::level`] is told the bytes held after every change (under the
//! buffer's lock), [`Backlog::keep`] is asked for each accepted payload (before it).

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The address space each block reserves: above glibc's largest dynamic mmap threshold, so a
/// block never comes from (nor returns to) the heap. Unwritten pages cost no memory.
const BLOCK_RESERVE: usize = 32 * 1024 * 1024 + 64 * 1024;
/// The smallest and largest payload bytes one block takes.
const MIN_FILL: usize = 256 * 1024;
const MAX_FILL: usize = 16 * 1024 * 1024;

/// Whether the buffer holds a backlog, and the blocks its payloads are kept in.
pub(crate) struct Backlog {
    /// A backlog starts when this many bytes are held…
    on_at: usize,
    /// …and ends when the bytes held are back at or below this (hysteresis: a level hovering
    /// around `on_at` does not start a block per record).
    off_at: usize,
    /// Read without the lock on every accepted record; changed only under `blocks`' lock.
    active: AtomicBool,
    blocks: Mutex<Blocks>,
}

struct Blocks {
    /// Payload bytes one block takes before the next one starts.
    fill: usize,
    /// The unwritten rest of the current block (empty: no current block).
    block: BytesMut,
    /// Payload bytes written into the current block.
    filled: usize,
    /// Blocks started so far (new mappings).
    started: u64,
    /// Full blocks, oldest first, kept to be reused once their last slice is gone.
    spent: VecDeque<BytesMut>,
    /// At most this many spent blocks (as many as a full buffer fills, and two).
    max_spent: usize,
    /// Blocks reused so far.
    reused: u64,
}

impl Backlog {
    /// The backlog of a memory buffer of `max_bytes`: from an eighth of it held until a quarter
    /// of that again; blocks of a sixteenth (256 KiB to 16 MiB), so the resident overhead of
    /// partly delivered blocks stays a small part of `max_bytes`.
    pub(crate) fn new(max_bytes: usize) -> Self {
        let on_at = (max_bytes / 8).max(1);
        let fill = (max_bytes / 16).clamp(MIN_FILL, MAX_FILL);
        Backlog {
            on_at,
            off_at: on_at / 4,
            active: AtomicBool::new(false),
            blocks: Mutex::new(Blocks {
                fill,
                block: BytesMut::new(),
                filled: 0,
                started: 0,
                spent: VecDeque::new(),
                max_spent: max_bytes / fill + 2,
                reused: 0,
            }),
        }
    }

    fn blocks(&self) -> MutexGuard<'_, Blocks> {
        // Every field stays consistent across a panic elsewhere: recover from poisoning.
        self.blocks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The buffer now holds `held` bytes: a backlog starts or ends here. When it ends, the
    /// current block is let go.
    pub(crate) fn level(&self, held: usize) {
        let active = self.active.load(Ordering::Relaxed);
        if !active && held >= self.on_at {
            let _blocks = self.blocks();
            self.active.store(true, Ordering::Relaxed);
        } else if active && held <= self.off_at {
            let mut blocks = self.blocks();
            self.active.store(false, Ordering::Relaxed);
            blocks.retire();
        }
    }

    /// Whether a backlog is on.
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// The payload to hold: during a backlog a copy in the current block (unless it is too
    /// large for one, then its own allocation stays), otherwise `payload` itself.
    pub(crate) fn keep(&self, payload: Bytes) -> Bytes {
        if !self.is_active() {
            return payload;
        }
        let mut blocks = self.blocks();
        // Checked again under the lock: a backlog that ended meanwhile starts no block.
        if !self.is_active() || payload.len() > blocks.fill / 4 || payload.is_empty() {
            return payload;
        }
        blocks.copy(&payload)
    }

    /// Blocks started so far.
    #[cfg(test)]
    pub(crate) fn blocks_started(&self) -> u64 {
        self.blocks().started
    }

    /// Blocks reused so far.
    #[cfg(test)]
    pub(crate) fn blocks_reused(&self) -> u64 {
        self.blocks().reused
    }
}

impl Blocks {
    fn copy(&mut self, payload: &[u8]) -> Bytes {
        if self.filled + payload.len() > self.fill || self.block.capacity() < payload.len() {
            self.next_block();
        }
        self.block.extend_from_slice(payload);
        self.filled += payload.len();
        // The slice shares the block's allocation; the block's rest stays writable here.
        self.block.split().freeze()
    }

    /// The current block is full: it starts again in place if none of its records is held
    /// any more; else the first spent block none of whose records is held (its mapping taken
    /// back from the start), else a new one, and the full block becomes spent.
    fn next_block(&mut self) {
        self.filled = 0;
        // Every record of the full block was dropped already (a full buffer's `drop_newest`):
        // it starts again, and no second block waits idle beside it.
        if self.block.capacity() > 0 && self.block.try_reclaim(BLOCK_RESERVE) {
            self.reused += 1;
            return;
        }
        // Free spent blocks (`try_reclaim` fails, taking nothing, while a slice of a block is
        // alive): the first is reused, the others let go (freed now, as before reuse).
        let mut reused = None;
        self.spent.retain_mut(|block| {
            if !block.try_reclaim(BLOCK_RESERVE) {
                return true;
            }
            if reused.is_none() {
                reused = Some(std::mem::take(block));
            }
            false
        });
        let full = std::mem::replace(
            &mut self.block,
            match reused {
                Some(block) => {
                    self.reused += 1;
                    block
                }
                None => {
                    self.started += 1;
                    BytesMut::with_capacity(BLOCK_RESERVE)
                }
            },
        );
        if full.capacity() > 0 {
            self.spent.push_back(full);
            if self.spent.len() > self.max_spent {
                // Let go: freed when its last slice is.
                self.spent.pop_front();
            }
        }
    }

    /// Lets the current block and the spent ones go: each is freed when its last slice is
    /// dropped.
    fn retire(&mut self) {
        self.block = BytesMut::new();
        self.spent.clear();
        self.filled = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8 * 1024 * 1024;

    fn payload(n: usize, byte: u8) -> Bytes {
        Bytes::from(vec![byte; n])
    }

    fn in_block(a: &Bytes, b: &Bytes) -> bool {
        // `b` starts where `a` ends: the two were written one after the other into one block.
        a.as_ptr() as usize + a.len() == b.as_ptr() as usize
    }

    #[test]
    fn a_backlog_starts_at_an_eighth_and_ends_at_a_quarter_of_that() {
        let on = MAX / 8;
        let cases: &[(&[usize], bool)] = &[
            (&[0], false),
            (&[on - 1], false),
            (&[on], true),
            (&[on, on - 1], true),
            (&[on, on / 4 + 1], true),
            (&[on, on / 4], false),
            (&[on, 0], false),
            (&[on, 0, on / 2], false),
            (&[on, 0, on], true),
        ];
        for (levels, active) in cases {
            let backlog = Backlog::new(MAX);
            for &held in *levels {
                backlog.level(held);
            }
            assert_eq!(backlog.is_active(), *active, "levels {levels:?}");
        }
    }

    #[test]
    fn outside_a_backlog_a_payload_keeps_its_own_allocation() {
        let backlog = Backlog::new(MAX);
        let p = payload(1300, b'a');
        let kept = backlog.keep(p.clone());
        assert_eq!(kept.as_ptr(), p.as_ptr());
        assert_eq!(backlog.blocks_started(), 0);
    }

    #[test]
    fn in_a_backlog_payloads_are_copied_one_after_another_into_a_block() {
        let backlog = Backlog::new(MAX);
        backlog.level(MAX / 8);
        let a = payload(1300, b'a');
        let b = payload(2400, b'b');
        let ka = backlog.keep(a.clone());
        let kb = backlog.keep(b.clone());
        assert_eq!((ka.clone(), kb.clone()), (a.clone(), b));
        assert_ne!(ka.as_ptr(), a.as_ptr(), "copied");
        assert!(in_block(&ka, &kb));
        assert_eq!(backlog.blocks_started(), 1);
        // The originals can go: the copies stand alone.
        drop(a);
        assert!(ka.iter().all(|&c| c == b'a'));
    }

    #[test]
    fn a_block_takes_at_most_its_fill_and_large_payloads_keep_their_own() {
        let backlog = Backlog::new(MAX);
        let fill = MAX / 16;
        backlog.level(MAX);
        let size = fill / 8;
        let kept: Vec<Bytes> = (0..8)
            .map(|i| backlog.keep(payload(size, i as u8)))
            .collect();
        assert!(kept.windows(2).all(|w| in_block(&w[0], &w[1])));
        assert_eq!(backlog.blocks_started(), 1);
        // The block is full: the next payload starts another.
        let next = backlog.keep(payload(10, 9));
        assert!(!in_block(kept.last().unwrap(), &next));
        assert_eq!(backlog.blocks_started(), 2);
        // Larger than a quarter of a block: not copied.
        let big = payload(fill / 4 + 1, 7);
        assert_eq!(backlog.keep(big.clone()).as_ptr(), big.as_ptr());
        assert_eq!(backlog.blocks_started(), 2);
        for (i, k) in kept.iter().enumerate() {
            assert!(k.iter().all(|&c| c == i as u8), "payload {i} intact");
        }
    }

    #[test]
    fn when_the_backlog_ends_the_block_is_let_go_and_the_next_backlog_starts_another() {
        let backlog = Backlog::new(MAX);
        backlog.level(MAX / 8);
        let first = backlog.keep(payload(100, 1));
        backlog.level(0);
        assert!(
            backlog.blocks().block.capacity() == 0,
            "no block held after the backlog"
        );
        let outside = payload(100, 2);
        assert_eq!(backlog.keep(outside.clone()).as_ptr(), outside.as_ptr());
        backlog.level(MAX / 8);
        let again = backlog.keep(payload(100, 3));
        assert!(!in_block(&first, &again));
        assert_eq!(backlog.blocks_started(), 2);
        assert!(first.iter().all(|&c| c == 1));
    }

    #[test]
    fn a_spent_block_is_reused_once_its_records_are_gone_never_before() {
        let backlog = Backlog::new(MAX);
        let fill = MAX / 16;
        backlog.level(MAX);
        let size = fill / 8;
        let fill_block = |byte: u8| -> Vec<Bytes> {
            (0..8).map(|_| backlog.keep(payload(size, byte))).collect()
        };
        let first = fill_block(1);
        let second = fill_block(2);
        // A third block is needed while the first one's records are still held: a new one.
        let third = fill_block(3);
        assert_eq!((backlog.blocks_started(), backlog.blocks_reused()), (3, 0));
        // The first block's records were delivered: the next block reuses its pages.
        let first_at = first[0].as_ptr();
        drop(first);
        let fourth = fill_block(4);
        assert_eq!((backlog.blocks_started(), backlog.blocks_reused()), (3, 1));
        assert_eq!(
            fourth[0].as_ptr(),
            first_at,
            "written from the mapping's start"
        );
        // The second block's records are still held: the next block is a new one.
        let fifth = fill_block(5);
        assert_eq!((backlog.blocks_started(), backlog.blocks_reused()), (4, 1));
        for (records, byte) in [(&second, 2), (&third, 3), (&fourth, 4), (&fifth, 5)] {
            assert!(records.iter().all(|r| r.iter().all(|&c| c == byte)));
        }
        // Records dropped from two blocks at once: one is reused, the other let go.
        drop((second, third));
        let sixth = fill_block(6);
        assert_eq!((backlog.blocks_started(), backlog.blocks_reused()), (4, 2));
        assert_eq!(
            backlog.blocks().spent.len(),
            2,
            "the fourth and fifth, still held"
        );
        assert!(sixth.iter().all(|r| r.iter().all(|&c| c == 6)));
        // The backlog ends: nothing spent is kept.
        backlog.level(0);
        assert!(backlog.blocks().spent.is_empty());
    }

    #[test]
    fn a_full_block_whose_records_were_all_dropped_starts_again_alone() {
        let backlog = Backlog::new(MAX);
        let size = MAX / 16 / 8;
        backlog.level(MAX);
        // One record held in the first block; every later one dropped at once (a full buffer
        // under `drop_newest`): eight to a block.
        let held = backlog.keep(payload(size, 1));
        let at: Vec<usize> = (0..31)
            .map(|_| backlog.keep(payload(size, 2)).as_ptr() as usize)
            .collect();
        assert_eq!((backlog.blocks_started(), backlog.blocks_reused()), (2, 2));
        assert_eq!(
            at[15], at[7],
            "the second block started again in its own pages"
        );
        assert_eq!(at[23], at[7]);
        assert_eq!(
            backlog.blocks().spent.len(),
            1,
            "only the block still held waits"
        );
        assert!(held.iter().all(|&c| c == 1));
    }

    #[test]
    fn spent_blocks_are_bounded() {
        let backlog = Backlog::new(MAX);
        let fill = MAX / 16;
        backlog.level(MAX);
        // Every record held: no block can be reused, and at most max_spent are kept.
        let held: Vec<Bytes> = (0..40 * 8)
            .map(|_| backlog.keep(payload(fill / 8, 0)))
            .collect();
        let blocks = backlog.blocks();
        assert_eq!(blocks.reused, 0);
        assert_eq!(blocks.spent.len(), blocks.max_spent);
        assert_eq!(blocks.max_spent, 16 + 2);
        drop(blocks);
        drop(held);
    }

    #[test]
    fn tiny_buffers_still_get_sane_thresholds() {
        for max in [0, 1, 100, 4096] {
            let backlog = Backlog::new(max);
            backlog.level(0);
            assert!(!backlog.is_active());
            backlog.level(max.max(1));
            assert!(backlog.is_active());
            // An empty payload is never copied.
            assert!(backlog.keep(Bytes::new()).is_empty());
        }
    }
}
