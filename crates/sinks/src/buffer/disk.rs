//! The disk buffer's I/O: segment files, the ledger, recovery at start, the read cursor and the
//! flusher. The books (what is acknowledged, which segments may go) live in [`super::books`],
//! the bytes in [`super::format`]; this module only moves bytes between them and the files.
//!
//! Layout of `dir`:
//! - `<first seq, 20 digits>.seg`: a segment; records appended in acceptance order.
//! - `ledger`: one 32-byte block, `acked_below` (every record below it acknowledged).
//! - `<seq, 20 digits>.spare`: a finished segment kept to be reused as a new segment (at most
//!   [`SPARES`]; deleted when the buffer closes, and at start, unread, if a crash left one).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::books::{Acks, Retire, Segment, Segments, Spares};
use super::format::{self, Frames, Header, Ledger, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::runs::{Run, Runs};
use crate::telemetry::{
    emit, BufferRecovered, CorruptKind, CorruptRecords, DiskBatchLost, DiskWritesSkipped,
    RecordsReadBack,
};
use crate::{Record, SinkMetrics};

/// The largest frame written or accepted when reading (a record larger is refused as too large).
pub(crate) const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Segment files larger than this are not read at start (this build writes at most 128 MiB
/// plus one record).
const MAX_SEGMENT_FILE: u64 = 256 * 1024 * 1024;
/// The ledger's file name.
pub(crate) const LEDGER_FILE: &str = "ledger";
/// Segment files end in this.
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
/// Spare (finished, kept for reuse) segment files end in this.
const SPARE_SUFFIX: &str = ".spare";
/// Finished segments kept for reuse: a new segment is a spare renamed and written from the start,
/// which spares the kernel freeing a file's pages and blocks and allocating new ones (one
/// segment is enough while the sink keeps up; the second covers a segment finishing late).
const SPARES: usize = 2;
/// Accepted records not yet handed to the kernel are at most this many bytes in the batch (plus
/// one batch being written): beyond it, `append` writes the batch itself before taking more.
/// The batch holds frame heads (~100 bytes a record) and shares the payloads with the memory
/// queue, so its own memory is a small part of this.
pub(crate) const MAX_BATCH: usize = 4 * 1024 * 1024;
/// An accepted record is handed to the kernel at most this long after it was accepted (unless it
/// left the buffer first): how long a `kill -9` may find an accepted record not yet in the page
/// cache. While the batch holds records the writer thread looks at it every [`LOOK`] (woken by
/// the first record when it was idle): fewer, larger writes and no wake-up per batch under a
/// steady load. With `fsync = "interval"` or `"never"` a look writes only the records that were
/// already there at the previous look and are not finished: each record has at least [`LOOK`]
/// to be delivered before its write, and records the sink finishes in that time are never
/// written ([`Log::take`]); the longer it is, the less a sink that keeps up costs the disk. With
/// `fsync = "always"` a look writes the whole batch, every [`LINGER`]. A batch that reaches
/// [`MAX_BATCH`] first is written by `push`.
pub(crate) const LINGER: Duration = Duration::from_millis(1);
/// How often the writer looks at a batch that holds records, when records age
/// (`fsync = "interval"` or `"never"`): two looks make [`LINGER`].
const LOOK: Duration = Duration::from_micros(500);
/// A lingering writer is woken early once the batch holds this much (a burst), so that it
/// rather than `push` writes it.
const WAKE_BYTES: usize = MAX_BATCH / 2;
/// [`WAKE_BYTES`] with `fsync = "always"`: every record is written and synced before it is
/// handed on (under the buffer's lock), so what the writer has not written by then is written
/// there; it is woken early, as before the deadline, to keep that part small.
const WAKE_BYTES_ALWAYS: usize = 64 * 1024;
/// The writer thread retries a failed write after this long.
const WRITE_RETRY: Duration = Duration::from_millis(100);

/// When the disk buffer forces its data to stable storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// Every `fsync_interval` (group commit). The default.
    #[default]
    Interval,
    /// Before any record is handed to the sink (one sync covers every record written so far).
    Always,
    /// Never: the operating system writes back when it likes (survives a crash of the bridge,
    /// not a power cut).
    Never,
}

impl Fsync {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::Interval => "interval",
            Fsync::Always => "always",
            Fsync::Never => "never",
        }
    }
}

/// Why the disk buffer could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// `kind = "disk"` without a directory.
    #[error("buffer.dir: required with kind = \"disk\" (or set [state] dir)")]
    NoDir,
    /// The directory or a file in it could not be created, read or written.
    #[error("buffer.dir {}: {source}", dir.display())]
    Io {
        /// The buffer directory.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A file was written by a newer build, in a format this one does not know.
    #[error("buffer.dir {}: {} was written by a newer disk buffer format (version {found}; this build reads version {}); run the newer build to drain it, or move the directory away", dir.display(), file.display(), format::VERSION)]
    NewerFormat {
        /// The buffer directory.
        dir: PathBuf,
        /// The file.
        file: PathBuf,
        /// Its format version.
        found: u32,
    },
}

/// Why [`Disk::append`] took nothing.
#[derive(Debug)]
pub(crate) enum AppendError {
    /// The disk refuses writes: `when_full` applies.
    Io(std::io::Error),
    /// The batch is full, or the segment is and its last records must be written before the
    /// next one starts: write it out ([`Log::flush`], without the buffer's lock) and try again.
    BatchFull,
}

/// What was recovered at start.
pub(crate) struct Recovered {
    pub next_seq: u64,
    pub events: usize,
    pub bytes: usize,
    pub by_label: Vec<(&'static str, u64)>,
}

/// The open disk buffer. Lives inside the buffer's state, under its lock.
pub(crate) struct Disk {
    dir: PathBuf,
    fsync: Fsync,
    segment_max: u64,
    active: Arc<File>,
    active_len: u64,
    ledger: Arc<File>,
    segments: Segments,
    acks: Acks,
    /// The write-behind batch and its writer thread.
    log: Arc<Log>,
    /// Records on disk only (not in the memory queue), not yet read back: where they are.
    runs: Runs,
    /// A [`ReadBack`] reads the front run (the sink's reader reads without the buffer's lock).
    reading: bool,
    /// Records below this were accepted before this start: reading them is a replay.
    replay_below: u64,
    /// Every record below this is on stable storage (`fsync = "always"`).
    synced_below: u64,
    /// Whether anything was written since the flusher last synced.
    dirty: bool,
    /// Segments rotated away whose last writes are not synced yet (synced by the flusher or,
    /// with `fsync = "always"`, before their records are handed on), and whether a segment was
    /// created since the directory was last synced. Rotation itself never waits for the device.
    /// A segment finished before its sync is taken off the list ([`Disk::retire`]): every
    /// record in it was delivered, so nothing in it needs to reach stable storage (and a
    /// finished segment reused or deleted before write-back costs the device nothing).
    /// Keyed by the segment's first sequence number.
    unsynced: Vec<(u64, Arc<File>)>,
    dir_unsynced: bool,
    /// The ledger value last written, as `FlushWork::run` wrote it (capped at what is written;
    /// unchanged when the write failed): a ledger held back is written again by the next pass.
    ledger_written: Arc<AtomicU64>,
    /// Finished segments waiting for the flusher to delete them.
    doomed: Vec<PathBuf>,
    /// Finished segments kept for reuse.
    spares: Spares,
    metrics: SinkMetrics,
}

fn io_error(dir: &Path) -> impl Fn(std::io::Error) -> BufferError + '_ {
    move |source| BufferError::Io {
        dir: dir.to_owned(),
        source,
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}{SEGMENT_SUFFIX}"))
}

fn spare_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}{SPARE_SUFFIX}"))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A frame found while scanning a whole segment in memory.
struct Found {
    offset: usize,
    len: usize,
    seq: u64,
}

/// The result of scanning one segment's bytes.
#[derive(Default)]
struct Scan {
    frames: Vec<Found>,
    /// Records skipped in the middle (checksum, unparsable, out of order).
    corrupt: u64,
    /// Where a torn tail starts (the data ends cut there).
    torn_at: Option<usize>,
}

/// Whether the bytes at a frame boundary after which no live frame follows end a recycled
/// segment's data cleanly: an end marker (its last write's), or a stale frame (intact, but a
/// record older than the file's name: its first write has not happened). In a fresh segment
/// anything there is a torn tail.
fn clean_end(data: &[u8], first: u64, recycled: bool) -> bool {
    let Some(header) = data.get(..FRAME_HEADER_LEN) else {
        return false;
    };
    if !recycled {
        return false;
    }
    if header == format::END_MARKER {
        return true;
    }
    let header = format::frame_header(header.try_into().unwrap_or(&format::END_MARKER));
    data.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN.saturating_add(header.len))
        .filter(|body| format::body_ok(header, body))
        .and_then(|body| format::body_seq(body).ok())
        .is_some_and(|seq| seq < first)
}

/// Scans a segment in memory (`first`: the sequence number it is named after): frames in
/// order, damaged ones skipped by searching for the next frame whose checksum holds and whose
/// sequence number follows; a damaged end is a torn tail. Frames below `first` are stale (a
/// recycled file's old records): never taken, and in a recycled segment where they start after
/// the last live frame, or an end marker does, the data ends cleanly. Pure: the tests feed it
/// bytes.
fn scan(data: &[u8], first: u64) -> Scan {
    let recycled = format::is_recycled(data);
    let mut out = Scan::default();
    let mut pos = SEGMENT_HEADER_LEN.min(data.len());
    let mut last: Option<u64> = None;
    let frame_at = |at: usize, last: Option<u64>| -> Option<Found> {
        let header: &[u8; FRAME_HEADER_LEN] =
            data.get(at..at + FRAME_HEADER_LEN)?.try_into().ok()?;
        let header = format::frame_header(header);
        if header.len > MAX_FRAME {
            return None;
        }
        let body = data.get(at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + header.len)?;
        let seq = format::body_seq(body).ok()?;
        if seq < first || last.is_some_and(|l| seq <= l) || !format::body_ok(header, body) {
            return None;
        }
        format::decode(body).ok()?;
        Some(Found {
            offset: at,
            len: FRAME_HEADER_LEN + header.len,
            seq,
        })
    };
    while pos < data.len() {
        if let Some(found) = frame_at(pos, last) {
            pos += found.len;
            last = Some(found.seq);
            out.frames.push(found);
            continue;
        }
        // Damage at `pos`: a later intact frame means a damaged record in the middle.
        let next = (pos + 1..data.len().saturating_sub(FRAME_HEADER_LEN))
            .find_map(|at| frame_at(at, last));
        match next {
            Some(found) => {
                out.corrupt += 1;
                pos = found.offset;
            }
            None => {
                if !clean_end(&data[pos..], first, recycled) {
                    out.torn_at = Some(pos);
                }
                break;
            }
        }
    }
    out
}

impl Disk {
    /// Opens (creating) the buffer directory, recovers what is in it, and starts a new segment.
    pub(crate) fn open(
        dir: &Path,
        fsync: Fsync,
        max_bytes: usize,
        metrics: SinkMetrics,
    ) -> Result<(Disk, Recovered), BufferError> {
        let started = Instant::now();
        let err = io_error(dir);
        std::fs::create_dir_all(dir).map_err(&err)?;
        let ledger_path = dir.join(LEDGER_FILE);
        let mut acked_below = 0;
        match std::fs::read(&ledger_path) {
            Ok(bytes) => match format::read_ledger(&bytes) {
                Ledger::AckedBelow(n) => acked_below = n,
                Ledger::Newer(found) => {
                    return Err(BufferError::NewerFormat {
                        dir: dir.to_owned(),
                        file: ledger_path,
                        found,
                    })
                }
                Ledger::Unreadable => tracing::warn!(file = %ledger_path.display(),
                    "disk buffer: ledger unreadable; every record on disk is delivered again (duplicates possible)"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        let mut spares = Spares::new(SPARES);
        for entry in std::fs::read_dir(dir).map_err(&err)? {
            let path = entry.map_err(&err)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let number = |suffix: &str| name.strip_suffix(suffix)?.parse::<u64>().ok();
            if let Some(first) = number(SEGMENT_SUFFIX) {
                names.push((first, path));
            } else if number(SPARE_SUFFIX).is_some() {
                // Left by a crash. Never reused: its records were not scanned, so sequence
                // numbers given from now on could reach theirs, and a stale frame must always
                // be older than the segment it is found in.
                let _ = std::fs::remove_file(&path);
            }
        }
        names.sort_unstable();
        // Refuse a newer format before touching anything.
        for (_, path) in &names {
            let mut head = [0u8; SEGMENT_HEADER_LEN];
            let n = File::open(path)
                .and_then(|mut f| read_full(&mut f, &mut head))
                .map_err(&err)?;
            if let Header::Newer(found) = format::check_segment_header(&head[..n]) {
                return Err(BufferError::NewerFormat {
                    dir: dir.to_owned(),
                    file: path.clone(),
                    found,
                });
            }
        }

        let mut segments = Segments::default();
        // Sequence numbers at or above the ledger's with no record on disk (damaged, or in a
        // file that is not ours) are finished at once: otherwise the acknowledged prefix would
        // stop at the first of them for good, and with it the ledger and every later segment's
        // deletion. `recovered_end`: every number below it is live or finished.
        let mut acks = Acks::new(acked_below);
        let mut recovered_end = acked_below;
        let mut next_seq = acked_below;
        let mut events = 0usize;
        let mut bytes = 0usize;
        let mut by_label: Vec<(&'static str, u64)> = Vec::new();
        let mut runs = Runs::default();
        let mut data = Vec::new();
        let last_index = names.len().saturating_sub(1);
        for (index, (first, path)) in names.iter().enumerate() {
            data.clear();
            let len = std::fs::metadata(path).map_err(&err)?.len();
            if len > MAX_SEGMENT_FILE {
                // Not one of ours (ours stay under 128 MiB): never read it into memory.
                tracing::warn!(file = %path.display(), bytes = len,
                    "disk buffer: segment file far larger than any this build writes; left in place and ignored");
                continue;
            }
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(&err)?;
            match format::check_segment_header(&data) {
                Header::Current => {}
                Header::Newer(found) => {
                    return Err(BufferError::NewerFormat {
                        dir: dir.to_owned(),
                        file: path.clone(),
                        found,
                    })
                }
                Header::Foreign if data.len() < SEGMENT_HEADER_LEN && index == last_index => {
                    // Created, then the crash came before its header was written.
                    if !data.is_empty() {
                        emit(
                            &metrics,
                            CorruptRecords {
                                kind: CorruptKind::TornTail,
                                count: 1,
                                path,
                            },
                        );
                    }
                    let _ = std::fs::remove_file(path);
                    continue;
                }
                Header::Foreign => {
                    tracing::warn!(file = %path.display(),
                        "disk buffer: not a segment of this format; left in place and ignored");
                    continue;
                }
            }
            let found = scan(&data, *first);
            if found.corrupt > 0 {
                emit(
                    &metrics,
                    CorruptRecords {
                        kind: CorruptKind::Checksum,
                        count: found.corrupt,
                        path,
                    },
                );
            }
            if let Some(at) = found.torn_at {
                emit(
                    &metrics,
                    CorruptRecords {
                        kind: CorruptKind::TornTail,
                        count: 1,
                        path,
                    },
                );
                let _ = at;
            }
            let live: Vec<&Found> = found
                .frames
                .iter()
                .filter(|f| f.seq >= acked_below)
                .collect();
            if live.is_empty() {
                // Nothing left to deliver: a spare, or deleted. Only a file with frames may become
                // a spare: they raise the next sequence number past its name, so its old frames
                // (below the name) stay below every segment it may be reused as. A file without
                // frames may be named above every number given from now on.
                let kept = !found.frames.is_empty()
                    && spares.retire() == Retire::Keep
                    && std::fs::rename(path, spare_path(dir, *first)).is_ok();
                if kept {
                    spares.kept(*first);
                } else {
                    let _ = std::fs::remove_file(path);
                }
                if let Some(last) = found.frames.last() {
                    next_seq = next_seq.max(last.seq + 1);
                }
                continue;
            }
            let rewritten = found.corrupt > 0 || found.torn_at.is_some();
            if rewritten {
                // Rewrite the segment with its intact frames only, so the reader never meets the
                // damage again (written aside, then renamed over: a crash leaves one or the other).
                let tmp = path.with_extension("seg.tmp");
                let mut clean = Vec::with_capacity(data.len());
                clean.extend_from_slice(&format::segment_header());
                for f in &found.frames {
                    clean.extend_from_slice(&data[f.offset..f.offset + f.len]);
                }
                let mut file = File::create(&tmp).map_err(&err)?;
                file.write_all(&clean).map_err(&err)?;
                file.sync_data().map_err(&err)?;
                std::fs::rename(&tmp, path).map_err(&err)?;
            }
            // The live records are read back first, as one run: where they are in the file now
            // (a rewritten file holds the intact frames one after the other).
            let mut at = SEGMENT_HEADER_LEN as u64;
            let mut run: Option<Run> = None;
            for f in &found.frames {
                let offset = if rewritten { at } else { f.offset as u64 };
                at += f.len as u64;
                if f.seq < acked_below {
                    continue;
                }
                for missing in recovered_end..f.seq {
                    acks.finish(missing);
                }
                recovered_end = recovered_end.max(f.seq + 1);
                events += 1;
                bytes += f.len;
                let body = &data[f.offset + FRAME_HEADER_LEN..f.offset + f.len];
                let label = format::decode(body).map_or("other", |(_, r)| r.headers.event_label);
                match by_label.iter_mut().find(|(l, _)| *l == label) {
                    Some((_, n)) => *n += 1,
                    None => by_label.push((label, 1)),
                }
                match run.as_mut() {
                    Some(run) => {
                        run.bytes = offset + f.len as u64 - run.offset;
                        run.end = f.seq + 1;
                        run.records += 1;
                    }
                    None => {
                        run = Some(Run {
                            segment: *first,
                            offset,
                            bytes: f.len as u64,
                            next: f.seq,
                            end: f.seq + 1,
                            records: 1,
                        })
                    }
                }
            }
            if let Some(run) = run {
                runs.recovered(run);
            }
            let end = found.frames.last().map_or(*first, |f| f.seq + 1);
            next_seq = next_seq.max(end);
            segments.push(Segment { first: *first, end });
        }
        for missing in recovered_end..next_seq {
            acks.finish(missing);
        }
        let segment_max = (max_bytes as u64 / 16).clamp(64 * 1024, 128 * 1024 * 1024);
        let active_path = segment_path(dir, next_seq);
        let active = create_segment(&active_path, fsync).map_err(&err)?;
        let ledger = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&ledger_path)
            .map_err(&err)?;
        ledger
            .write_all_at(&format::ledger(acked_below), 0)
            .map_err(&err)?;
        if fsync != Fsync::Never {
            ledger.sync_data().map_err(&err)?;
            File::open(dir).and_then(|d| d.sync_all()).map_err(&err)?;
        }
        segments.push(Segment {
            first: next_seq,
            end: next_seq,
        });
        emit(
            &metrics,
            BufferRecovered {
                dir,
                records: events as u64,
                bytes: bytes as u64,
                segments: segments.len() - 1,
                elapsed: started.elapsed(),
            },
        );
        let active = Arc::new(active);
        let wake_bytes = match fsync {
            Fsync::Always => WAKE_BYTES_ALWAYS,
            Fsync::Interval | Fsync::Never => WAKE_BYTES,
        };
        let log = Log::start(
            active.clone(),
            next_seq,
            wake_bytes,
            fsync != Fsync::Always,
            metrics.clone(),
        );
        let disk = Disk {
            dir: dir.to_owned(),
            fsync,
            segment_max,
            active,
            active_len: SEGMENT_HEADER_LEN as u64,
            ledger: Arc::new(ledger),
            segments,
            acks,
            log,
            runs,
            reading: false,
            replay_below: next_seq,
            synced_below: next_seq,
            dirty: false,
            unsynced: Vec::new(),
            dir_unsynced: false,
            ledger_written: Arc::new(AtomicU64::new(acked_below)),
            doomed: Vec::new(),
            spares,
            metrics,
        };
        Ok((
            disk,
            Recovered {
                next_seq,
                events,
                bytes,
                by_label,
            },
        ))
    }

    /// Tests: makes every following write fail (as a full disk would), or work again.
    #[cfg(test)]
    pub(crate) fn fail_writes(&mut self, fail: bool) {
        let reopen = |path: &Path| {
            let file = if fail {
                File::open(path)
            } else {
                OpenOptions::new().write(true).open(path)
            };
            Arc::new(file.expect("reopen a segment"))
        };
        let path = segment_path(&self.dir, self.segments.active().map_or(0, |s| s.first));
        self.active = reopen(&path);
        let mut batch = self.log.lock_batch();
        batch.file = self.active.clone();
        // A failed write retries on its segment behind the new handle too (it may be an
        // earlier segment, when a rotation came between): found by its inode.
        let mut io = locked(&self.log.io);
        if let Some(failed) = io.failed.as_mut() {
            use std::os::unix::fs::MetadataExt;
            let ino = failed.file.metadata().map(|m| m.ino()).ok();
            let path = std::fs::read_dir(&self.dir)
                .expect("list the buffer directory")
                .flatten()
                .map(|entry| entry.path())
                .find(|path| std::fs::metadata(path).map(|m| m.ino()).ok() == ino);
            if let Some(path) = path {
                failed.file = reopen(&path);
            }
        }
    }

    /// Tests: every following write takes `ms` milliseconds longer (a slow disk).
    #[cfg(test)]
    pub(crate) fn slow_writes(&self, ms: u64) {
        self.log.slow_ms.store(ms, Ordering::SeqCst);
    }

    /// Tests: while held, the writer thread writes nothing (batches wait for a flush).
    #[cfg(test)]
    pub(crate) fn hold_writer(&self, hold: bool) {
        self.log.held.store(hold, Ordering::SeqCst);
    }

    /// Tests: the segments rotated away and not synced yet (their first sequence numbers).
    #[cfg(test)]
    pub(crate) fn unsynced_segments(&self) -> Vec<u64> {
        self.unsynced.iter().map(|(first, _)| *first).collect()
    }

    /// Tests: whether the writer found the disk refusing writes.
    #[cfg(test)]
    pub(crate) fn failing(&self) -> bool {
        self.log.failing.load(Ordering::SeqCst)
    }

    /// Writes every accepted record now (errors are the writer's to report and retry).
    pub(crate) fn write_out(&self) {
        let _ = self.log.flush();
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The write-behind log, to write a full batch out without the buffer's lock.
    pub(crate) fn log(&self) -> Arc<Log> {
        self.log.clone()
    }

    /// Records on disk only, waiting to be read back.
    pub(crate) fn spilled(&self) -> u64 {
        self.runs.records()
    }

    /// Whether the next record must go to disk only (see [`Runs::spill`]).
    pub(crate) fn spill(&mut self, queued: usize, size: usize, window: usize) -> bool {
        self.runs.spill(queued, size, window)
    }

    /// Whether the oldest record not taken is on disk only (read it back before taking the
    /// memory queue's front, record `queue_front`).
    pub(crate) fn disk_first(&self, queue_front: Option<u64>) -> bool {
        self.runs.disk_first(queue_front)
    }

    /// Appends record `seq` (`size`: its [`format::framed_len`]) to the write-behind batch; the
    /// writer thread hands it to the kernel at most [`LINGER`] later, unless it is finished first
    /// (the writer is woken only by the first record of a batch, or by [`WAKE_BYTES`]
    /// (`fsync = "always"`: [`WAKE_BYTES_ALWAYS`]); under load batches grow). A batch is never
    /// larger than [`MAX_BATCH`]: past it this takes nothing and answers [`AppendError::BatchFull`] (the
    /// caller writes the batch with [`Disk::log`] outside the buffer's lock, then tries again);
    /// so does a record that starts a new segment while the batch holds records. `spill` (as
    /// [`Disk::spill`] said): the record is not kept in memory, the reader must read it back
    /// from disk. Fails (and takes nothing)
    /// while the disk refuses writes: the records already accepted are kept in memory and
    /// retried in order.
    pub(crate) fn append(
        &mut self,
        seq: u64,
        record: &Record,
        size: usize,
        spill: bool,
    ) -> Result<(), AppendError> {
        if let Some(error) = self.log.failure() {
            return Err(AppendError::Io(error));
        }
        let mut batch = self.log.lock_batch();
        if batch.frames.len() >= MAX_BATCH {
            return Err(AppendError::BatchFull);
        }
        let size = size as u64;
        let needs_rotation = self.active_len + size > self.segment_max
            && self.active_len > SEGMENT_HEADER_LEN as u64;
        if needs_rotation {
            if !batch.frames.is_empty() {
                // The old segment's last records go first, written by the caller without the
                // buffer's lock (as a full batch is); then the rotation waits for nothing.
                return Err(AppendError::BatchFull);
            }
            drop(batch);
            self.rotate(seq).map_err(AppendError::Io)?;
            batch = self.log.lock_batch();
        }
        // Where the record lands in the file. Records that leave the buffer before their write
        // comes are not written ([`Log::take`]), so this is the batch's offset plus what it holds:
        // exact as long as nothing in the batch is dropped, which `keep_all` ensures while any
        // record is on disk only (a run's offsets must be where its records are).
        let at = batch.at + batch.frames.len() as u64;
        if batch.frames.is_empty() {
            batch.first_at = Some(Instant::now());
        }
        let before = batch.frames.len();
        // Sealed (checksummed) by whoever writes the batch, outside the buffer's lock; a long
        // payload is not copied here but by the kernel, from where it is.
        batch.frames.push(seq, record);
        debug_assert_eq!((batch.frames.len() - before) as u64, size);
        batch.end_seq = seq + 1;
        batch.keep_all = spill || self.runs.records() > 0;
        // A lingering writer writes at its deadline: woken only by a burst (each wake-up costs
        // the producer a futex wake).
        let wake = match batch.writer {
            Writer::Idle => true,
            Writer::Lingering => batch.frames.len() >= batch.wake_bytes,
            Writer::Busy => false,
        };
        if wake {
            batch.writer = Writer::Busy;
            self.log.wake.notify_one();
        }
        drop(batch);
        self.active_len += size;
        self.segments.appended(seq);
        self.dirty = true;
        if spill {
            let segment = self.segments.active().map_or(seq, |s| s.first);
            self.runs.spilled(seq, segment, at, size);
        }
        Ok(())
    }

    /// Starts segment `first`; the batch is empty (`append` has it written first). A write to
    /// the old segment may still be under way: it carries its own file, and whatever writes
    /// next waits for it (`io`), so the old segment's records are written before the new
    /// one's. The syncs of the old segment and of the directory are left to the flusher
    /// (`fsync = "always"`: to `ensure_synced`, before any of these records is handed on).
    /// Nothing here waits for the device but creating or renaming a file.
    fn rotate(&mut self, first: u64) -> std::io::Result<()> {
        let path = segment_path(&self.dir, first);
        let (file, recycled) = match self.reuse_spare(&path) {
            Some(file) => (file, true),
            None => (create_segment(&path, Fsync::Never)?, false),
        };
        let old_first = self.segments.active().map_or(first, |s| s.first);
        let old = std::mem::replace(&mut self.active, Arc::new(file));
        if self.fsync != Fsync::Never {
            self.unsynced.push((old_first, old));
            self.dir_unsynced = true;
        }
        {
            let mut batch = self.log.lock_batch();
            batch.file = self.active.clone();
            batch.at = SEGMENT_HEADER_LEN as u64;
            batch.marker = recycled;
        }
        self.active_len = SEGMENT_HEADER_LEN as u64;
        self.segments.push(Segment { first, end: first });
        Ok(())
    }

    /// Reads spilled records back (up to `max` of them, or `max_bytes`), in order, handing each
    /// to `push`, all under the buffer's lock. Damage met here (the files changed under us) is
    /// counted, skipped, and its records released through `lost`. Returns the records read.
    /// The sink's reader does the same without the lock ([`Disk::start_read`],
    /// [`ReadBack::run`], [`Disk::finish_read`]); this is for whoever needs a record now.
    pub(crate) fn fill(
        &mut self,
        max: usize,
        max_bytes: usize,
        push: &mut dyn FnMut(u64, usize, Record),
        lost: &mut dyn FnMut(u64),
    ) -> usize {
        let mut count = 0;
        while count < max {
            let Some(mut job) = self.start_read(max - count, max_bytes) else {
                break;
            };
            job.run();
            let (n, go_on) = self.finish_read(job, push, lost);
            count += n;
            if !go_on {
                break;
            }
        }
        count
    }

    /// Takes the front run's place, to read its records back without the buffer's lock: `None`
    /// when nothing is spilled or a read-back is under way already.
    pub(crate) fn start_read(&mut self, max: usize, max_bytes: usize) -> Option<ReadBack> {
        if self.reading {
            return None;
        }
        let run = self.runs.front()?;
        self.reading = true;
        Some(ReadBack {
            path: segment_path(&self.dir, run.segment),
            run,
            log: self.log.clone(),
            max: max.min(usize::try_from(run.records).unwrap_or(usize::MAX)),
            max_bytes,
            got: Vec::new(),
            frames: 0,
            consumed: 0,
            corrupt: 0,
            end: None,
        })
    }

    /// Takes back the front run and the records a [`ReadBack`] read, in order, through `push`;
    /// returns how many, and whether reading should go on now.
    pub(crate) fn finish_read(
        &mut self,
        job: ReadBack,
        push: &mut dyn FnMut(u64, usize, Record),
        lost: &mut dyn FnMut(u64),
    ) -> (usize, bool) {
        let ReadBack {
            path,
            got,
            frames,
            consumed,
            corrupt,
            end,
            ..
        } = job;
        self.reading = false;
        if corrupt > 0 {
            emit(
                &self.metrics,
                CorruptRecords {
                    kind: CorruptKind::Checksum,
                    count: corrupt,
                    path: &path,
                },
            );
        }
        // The front run is the one read (only a read-back changes it); it may have grown since.
        self.runs
            .consumed(frames, consumed, got.last().map(|(seq, _, _)| *seq));
        let count = got.len();
        let replayed = got
            .iter()
            .filter(|(seq, _, _)| *seq < self.replay_below)
            .count() as u64;
        for (seq, size, record) in got {
            push(seq, size, record);
        }
        if count > 0 {
            emit(
                &self.metrics,
                RecordsReadBack {
                    count: count as u64,
                    replayed,
                },
            );
        }
        let go_on = match end {
            // Stopped at its limits: more next time (`fill` goes on only if all it met was
            // damage).
            None => count == 0,
            Some(ReadEnd::WriteFailed) => false,
            Some(ReadEnd::Broken) => {
                self.skip_run(lost);
                true
            }
            Some(ReadEnd::Short) => {
                tracing::error!(file = %path.display(),
                    "disk buffer: fewer records on disk than written; the rest of them is skipped");
                self.skip_run(lost);
                true
            }
            Some(ReadEnd::Unreadable(error)) => {
                tracing::error!(file = %path.display(), %error, "disk buffer: cannot read a segment; its records are skipped");
                self.skip_run(lost);
                true
            }
        };
        (count, go_on && self.runs.records() > 0)
    }

    /// Gives up on the rest of the front run: its unread records are lost (reported).
    fn skip_run(&mut self, lost: &mut dyn FnMut(u64)) {
        let Some(run) = self.runs.pop_front() else {
            return;
        };
        let mut left = run.records;
        for seq in run.next..run.end {
            if left == 0 {
                break;
            }
            if !self.acks.is_done(seq) {
                left -= 1;
                lost(seq);
            }
        }
    }

    /// Every record below this is written to its segment (so survives a crash of the process)
    /// or left the buffer for good.
    pub(crate) fn safe_below(&self) -> u64 {
        self.log.written_end().max(self.acks.below())
    }

    /// A record left the buffer for good (acknowledged, rejected or dropped).
    pub(crate) fn finish(&mut self, seq: u64) {
        if self.acks.finish(seq) {
            let below = self.acks.below();
            self.log.finished_below.store(below, Ordering::Release);
            for segment in self.segments.take_finished(below) {
                self.retire(segment.first);
            }
        }
    }

    /// Segment `first` is finished: kept as a spare (renamed so) or left to the flusher to
    /// delete. Its records may vanish before the ledger says they are acknowledged: they were.
    fn retire(&mut self, first: u64) {
        self.unsynced.retain(|(segment, _)| *segment != first);
        let path = segment_path(&self.dir, first);
        if self.spares.retire() == Retire::Keep {
            match std::fs::rename(&path, spare_path(&self.dir, first)) {
                Ok(()) => {
                    self.spares.kept(first);
                    return;
                }
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "disk buffer: cannot keep a finished segment for reuse; deleted instead");
                }
            }
        }
        self.doomed.push(path);
    }

    /// A spare made ready to be the segment at `path`: its header and an end marker written
    /// (so its old frames are stale from the start), then renamed. `None` when there is none
    /// (or it cannot be reused: it is deleted then).
    fn reuse_spare(&mut self, path: &Path) -> Option<File> {
        while let Some(spare) = self.spares.take() {
            let spare = spare_path(&self.dir, spare);
            let reused = OpenOptions::new()
                .write(true)
                .open(&spare)
                .and_then(|file| {
                    let mut start = [0u8; SEGMENT_HEADER_LEN + FRAME_HEADER_LEN];
                    start[..SEGMENT_HEADER_LEN].copy_from_slice(&format::recycled_segment_header());
                    start[SEGMENT_HEADER_LEN..].copy_from_slice(&format::END_MARKER);
                    file.write_all_at(&start, 0)?;
                    std::fs::rename(&spare, path)?;
                    Ok(file)
                });
            match reused {
                Ok(file) => return Some(file),
                Err(error) => {
                    tracing::warn!(file = %spare.display(), %error, "disk buffer: cannot reuse a spare segment; deleted");
                    self.doomed.push(spare);
                }
            }
        }
        None
    }

    /// `fsync = "always"`: makes sure record `seq` is on stable storage before it is handed on.
    pub(crate) fn ensure_synced(&mut self, seq: u64, next_seq: u64) {
        if self.fsync == Fsync::Always && seq >= self.synced_below {
            // Group commit: one write and one sync for every record accepted so far.
            if let Err(error) = self.log.flush() {
                tracing::error!(dir = %self.dir.display(), %error, "disk buffer: write failed before fsync");
            }
            // Under the lock, whatever the flusher is doing: segments rotated away, the directory
            // if a segment was created, and the active segment.
            let mut files = unsynced_files(std::mem::take(&mut self.unsynced));
            files.push(self.active.clone());
            self.dirty = false;
            let work = SyncWork {
                files,
                dir: std::mem::take(&mut self.dir_unsynced).then(|| self.dir.clone()),
            };
            work.run(&self.dir);
            self.synced_below = next_seq;
        }
    }

    /// What the flusher must do now (taken under the lock, done outside it).
    pub(crate) fn flush_work(&mut self) -> FlushWork {
        let acked_below = self.acks.below();
        FlushWork {
            dir: self.dir.clone(),
            log: self.log.clone(),
            sync: self.flusher_syncs(),
            ledger: (acked_below != self.ledger_written.load(Ordering::Acquire))
                .then(|| (self.ledger.clone(), acked_below)),
            ledger_written: self.ledger_written.clone(),
            sync_ledger: self.fsync != Fsync::Never,
            delete: std::mem::take(&mut self.doomed),
        }
    }

    /// What the flusher syncs now: segments rotated away, the directory if a segment was
    /// created, the active segment if written since. With `fsync = "always"` the books stay
    /// `ensure_synced`'s (it syncs under the lock before records are handed on, and must not
    /// count on a sync the flusher may still be running): the flusher syncs copies.
    fn flusher_syncs(&mut self) -> SyncWork {
        let path = self.dir.clone();
        match self.fsync {
            Fsync::Never => SyncWork::default(),
            Fsync::Interval => {
                let mut files = unsynced_files(std::mem::take(&mut self.unsynced));
                if std::mem::take(&mut self.dirty) {
                    files.push(self.active.clone());
                }
                SyncWork {
                    files,
                    dir: std::mem::take(&mut self.dir_unsynced).then_some(path),
                }
            }
            Fsync::Always => {
                let mut files = unsynced_files(self.unsynced.clone());
                if self.dirty {
                    files.push(self.active.clone());
                }
                SyncWork {
                    files,
                    dir: self.dir_unsynced.then_some(path),
                }
            }
        }
    }

    /// The flusher's period.
    pub(crate) fn interval(&self, configured: Duration) -> Duration {
        match self.fsync {
            Fsync::Interval => configured,
            Fsync::Always | Fsync::Never => configured.max(Duration::from_millis(100)),
        }
    }
}

/// A read-back of spilled records, done without the buffer's lock: the front run is noted
/// ([`Disk::start_read`]), a prefix of it is read with one `pread` into one buffer, checked and
/// decoded, the payloads slices of that buffer ([`ReadBack::run`]), then handed over in order
/// ([`Disk::finish_read`]). Meanwhile new records go to memory or to later runs: the order holds.
pub(crate) struct ReadBack {
    run: Run,
    path: PathBuf,
    log: Arc<Log>,
    max: usize,
    max_bytes: usize,
    got: Vec<(u64, usize, Record)>,
    /// Frames consumed (records read and damaged ones skipped), and their bytes.
    frames: u64,
    consumed: u64,
    corrupt: u64,
    end: Option<ReadEnd>,
}

/// Why a read-back stopped before its limits.
enum ReadEnd {
    /// A length that cannot be, or a record that is not the run's: nothing readable follows.
    Broken,
    /// The file ends before the run does.
    Short,
    /// The segment could not be opened or read.
    Unreadable(std::io::Error),
    /// Writing the batch out failed: the records are not on disk yet (retried later).
    WriteFailed,
}

impl ReadBack {
    /// Reads (no lock held): writes the batch out first, so only written records are read.
    pub(crate) fn run(&mut self) {
        if self.log.flush().is_err() {
            self.end = Some(ReadEnd::WriteFailed);
            return;
        }
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(error) => {
                self.end = Some(ReadEnd::Unreadable(error));
                return;
            }
        };
        let mut want = self.run.bytes.min(self.max_bytes as u64);
        // At most twice: a first frame larger than `max_bytes` is read again, whole.
        for attempt in 0..2 {
            let mut buf = vec![0u8; usize::try_from(want).unwrap_or(usize::MAX)];
            match file.read_exact_at(&mut buf, self.run.offset) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                    self.end = Some(ReadEnd::Short);
                    return;
                }
                Err(error) => {
                    self.end = Some(ReadEnd::Unreadable(error));
                    return;
                }
            }
            let larger = self.parse(&Bytes::from(buf));
            if self.frames > 0 || self.end.is_some() {
                // Progress (the rest of the run next time), or the end of it.
                return;
            }
            match larger {
                Some(larger) if attempt == 0 && larger > want && larger <= self.run.bytes => {
                    want = larger;
                }
                // Nothing readable where the run says its records are.
                _ => break,
            }
        }
        self.end = Some(ReadEnd::Broken);
    }

    /// Takes the frames of `buf` (the run's bytes from its start); returns the size of the
    /// first frame that did not fit, if one did not.
    fn parse(&mut self, buf: &Bytes) -> Option<u64> {
        let mut pos = 0usize;
        while self.got.len() < self.max {
            let header: &[u8; FRAME_HEADER_LEN] =
                buf.get(pos..pos + FRAME_HEADER_LEN)?.try_into().ok()?;
            let header = format::frame_header(header);
            let size = FRAME_HEADER_LEN + header.len;
            if header.len > MAX_FRAME {
                self.end = Some(ReadEnd::Broken);
                return None;
            }
            let Some(body) = buf.get(pos + FRAME_HEADER_LEN..pos + size) else {
                return Some(size as u64);
            };
            pos += size;
            self.frames += 1;
            self.consumed += size as u64;
            if !format::body_ok(header, body) {
                self.corrupt += 1;
                continue;
            }
            match format::decode_shared(buf, body) {
                Ok((seq, record)) if (self.run.next..self.run.end).contains(&seq) => {
                    self.got.push((seq, size, record));
                }
                Ok(_) => {
                    // Not a record of this run: the file is not what was written.
                    self.frames -= 1;
                    self.consumed -= size as u64;
                    self.end = Some(ReadEnd::Broken);
                    return None;
                }
                Err(_) => self.corrupt += 1,
            }
        }
        None
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Err(error) = self.log.flush() {
            let bytes = self.log.unwritten();
            emit(
                &self.metrics,
                DiskBatchLost {
                    dir: &self.dir,
                    error: &error,
                    bytes,
                },
            );
        }
        let mut work = self.flush_work();
        let spares = self.spares.take_all();
        work.delete
            .extend(spares.into_iter().map(|s| spare_path(&self.dir, s)));
        work.run();
        self.log.close();
    }
}

/// The write-behind log: records encoded into an in-memory batch under the buffer's lock,
/// written to the active segment by a dedicated thread (many records per `pwritev`), or by the
/// buffer itself when it needs them on disk now (reading back, `fsync = "always"`, the
/// flusher, rotation, a full batch). Lock order: the buffer's state, then `batch`, then `io`;
/// whoever holds `io` writes, so writes happen in order and never overlap.
pub(crate) struct Log {
    batch: Mutex<Batch>,
    /// Wakes the writer thread (only when it said it sleeps: `Batch::idle`).
    wake: Condvar,
    io: Mutex<Io>,
    /// The last write failed: nothing new is accepted until a retry succeeds.
    failing: AtomicBool,
    /// Every record below this has left the buffer for good (the books' acknowledged prefix,
    /// published by [`Disk::finish`]): such records still in the batch are not written.
    finished_below: AtomicU64,
    metrics: SinkMetrics,
    /// Tests: every write first sleeps this many milliseconds (a slow disk), holding `io`.
    #[cfg(test)]
    slow_ms: std::sync::atomic::AtomicU64,
    /// Tests: the writer thread leaves batches alone ([`Disk::hold_writer`]).
    #[cfg(test)]
    held: AtomicBool,
}

struct Batch {
    /// Encoded frames not yet handed to a writer (checksums blank until written).
    frames: Frames,
    /// The active segment and the offset `frames` start at in it.
    file: Arc<File>,
    at: u64,
    /// The active segment is a recycled file (old frames beyond the new ones): every write ends
    /// with an end marker, which the next write overwrites.
    marker: bool,
    /// The sequence number after the last record in `bytes`.
    end_seq: u64,
    /// When the writer's next look is due from: when the first record of an empty batch was
    /// accepted, or the writer's last look if records were left (`None` while it is empty). The
    /// writer looks at this plus [`Batch::period`].
    first_at: Option<Instant>,
    /// Records age ([`LOOK`]): a look writes only those below `aged_below`.
    ages: bool,
    /// The batch's `end_seq` at the writer's previous look: records below it have waited one
    /// [`LOOK`] at least.
    aged_below: u64,
    /// A lingering writer is woken once the batch holds this much ([`WAKE_BYTES`], or
    /// [`WAKE_BYTES_ALWAYS`]).
    wake_bytes: usize,
    /// What the writer thread does (whether a record must wake it).
    writer: Writer,
    /// Write every record in the batch, finished or not: records are on disk only (spilled or
    /// recovered), and the offsets the reader reads them at count every byte before them.
    keep_all: bool,
    closed: bool,
}

impl Batch {
    /// How much longer the writer waits before it looks at the batch: until
    /// [`Batch::period`] after `first_at`, unless it holds `wake_bytes`. `None`: look now.
    fn linger(&self) -> Option<Duration> {
        linger(
            self.frames.len(),
            self.wake_bytes,
            self.first_at.map(|at| at + self.period()),
            Instant::now(),
        )
    }

    /// How long the writer waits between looks while the batch holds records.
    fn period(&self) -> Duration {
        if self.ages {
            LOOK
        } else {
            LINGER
        }
    }

    /// The records a look of the writer writes: those below this (and not finished).
    fn due_below(&self) -> u64 {
        if self.ages {
            self.aged_below
        } else {
            u64::MAX
        }
    }

    /// A look took what was due: what is left has aged, and the next look is a period away.
    fn looked(&mut self, now: Instant) {
        self.aged_below = self.end_seq;
        self.first_at = (!self.frames.is_empty()).then_some(now);
    }
}

/// [`Batch::linger`] without the clock: a batch of `bytes` to be looked at at `due`, at `now`.
fn linger(bytes: usize, wake_bytes: usize, due: Option<Instant>, now: Instant) -> Option<Duration> {
    if bytes >= wake_bytes {
        return None;
    }
    let wait = due?.checked_duration_since(now)?;
    (!wait.is_zero()).then_some(wait)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// Waits for the first record.
    Idle,
    /// Waits for its next look ([`Batch::linger`]), or for `Batch::wake_bytes`.
    Lingering,
    /// Writing, or woken: it looks at the batch before it waits again.
    Busy,
}

/// Frames taken from the batch, to be written at `at` in `file` (followed by an end marker
/// when `marker`: the file is a recycled one).
struct Chunk {
    frames: Frames,
    file: Arc<File>,
    marker: bool,
    at: u64,
    end_seq: u64,
}

#[derive(Default)]
struct Io {
    /// A chunk whose write failed: written (first) by the next attempt.
    failed: Option<Chunk>,
    error: Option<std::io::ErrorKind>,
    /// Every record below this is written.
    written_end: u64,
    /// A written chunk's buffers, reused.
    spare: Frames,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Log {
    fn start(
        file: Arc<File>,
        next_seq: u64,
        wake_bytes: usize,
        ages: bool,
        metrics: SinkMetrics,
    ) -> Arc<Log> {
        let log = Arc::new(Log {
            batch: Mutex::new(Batch {
                frames: Frames::default(),
                file,
                at: SEGMENT_HEADER_LEN as u64,
                marker: false,
                end_seq: next_seq,
                first_at: None,
                ages,
                aged_below: next_seq,
                wake_bytes,
                writer: Writer::Busy,
                keep_all: false,
                closed: false,
            }),
            wake: Condvar::new(),
            io: Mutex::new(Io {
                written_end: next_seq,
                ..Io::default()
            }),
            failing: AtomicBool::new(false),
            finished_below: AtomicU64::new(0),
            metrics,
            #[cfg(test)]
            slow_ms: std::sync::atomic::AtomicU64::new(0),
            #[cfg(test)]
            held: AtomicBool::new(false),
        });
        let writer = log.clone();
        let spawned = std::thread::Builder::new()
            .name("voxsig-buffer-write".into())
            .spawn(move || writer.run());
        if let Err(error) = spawned {
            // Without it batches are written when full and by the flusher: bounded, later.
            tracing::error!(%error, "disk buffer: cannot start the writer thread");
        }
        log
    }

    /// Tests: how long a held writer waits before it looks again.
    #[cfg(test)]
    fn held(&self) -> Option<Duration> {
        self.held
            .load(Ordering::SeqCst)
            .then_some(Duration::from_millis(1))
    }

    #[cfg(not(test))]
    fn held(&self) -> Option<Duration> {
        None
    }

    fn lock_batch(&self) -> MutexGuard<'_, Batch> {
        locked(&self.batch)
    }

    /// The writer thread: writes whatever is pending per wake-up.
    fn run(&self) {
        let mut batch = self.lock_batch();
        loop {
            if batch.closed {
                return;
            }
            if self.failing.load(Ordering::SeqCst) {
                batch = self
                    .wake
                    .wait_timeout(batch, WRITE_RETRY)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            } else if batch.frames.is_empty() {
                batch.writer = Writer::Idle;
                batch = self.wake.wait(batch).unwrap_or_else(|p| p.into_inner());
                batch.writer = Writer::Busy;
                continue;
            } else if let Some(wait) = batch.linger().or_else(|| self.held()) {
                batch.writer = Writer::Lingering;
                batch = self
                    .wake
                    .wait_timeout(batch, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                batch.writer = Writer::Busy;
                // The deadline again: the batch may have been written (and begun anew) meanwhile.
                continue;
            }
            if batch.closed {
                return;
            }
            let _ = self.look(batch);
            batch = self.lock_batch();
        }
    }

    /// One look of the writer: writes what is due ([`Batch::due_below`]) and not finished.
    fn look(&self, mut batch: MutexGuard<'_, Batch>) -> std::io::Result<()> {
        let mut io = locked(&self.io);
        let below = batch.due_below();
        let chunk = self.take(&mut batch, &mut io, below);
        drop(batch);
        self.write(&mut io, chunk)
    }

    /// Tests: one look of the writer, now (with the writer held, tests decide when it looks).
    #[cfg(test)]
    pub(crate) fn look_now(&self) -> std::io::Result<()> {
        self.look(self.lock_batch())
    }

    /// Takes the batch's records below `below` to write them; the others stay, and have aged
    /// ([`Batch::looked`]). Its records that already left the buffer (a prefix: delivered while
    /// they waited for their write, the common case when the sink keeps up) are dropped, unless
    /// `keep_all`: they need no place on disk, and a crash cannot lose what was delivered. They
    /// count as written. Nothing is taken while a failed write to an earlier segment waits to
    /// be retried: that one goes first, alone.
    fn take(&self, batch: &mut Batch, io: &mut Io, below: u64) -> Option<Chunk> {
        if batch.frames.is_empty() {
            return None;
        }
        if io
            .failed
            .as_ref()
            .is_some_and(|failed| !Arc::ptr_eq(&failed.file, &batch.file))
        {
            return None;
        }
        if !batch.keep_all {
            let below = self.finished_below.load(Ordering::Acquire);
            let (records, _) = batch.frames.drop_below(below);
            if records > 0 {
                emit(&self.metrics, DiskWritesSkipped { records });
            }
        }
        let mut frames = std::mem::replace(&mut batch.frames, std::mem::take(&mut io.spare));
        frames.split_below(below, &mut batch.frames);
        batch.looked(Instant::now());
        let chunk = Chunk {
            file: batch.file.clone(),
            marker: batch.marker,
            at: batch.at,
            // Every record below the first one left is in the chunk, or finished (dropped
            // above, which may pass `below`), or written before.
            end_seq: batch.frames.first_seq().unwrap_or(batch.end_seq),
            frames,
        };
        batch.at += chunk.frames.len() as u64;
        Some(chunk)
    }

    /// Writes a failed chunk again (first), then `chunk` (in the same file: [`Log::take`]
    /// takes nothing while a failed chunk of another file waits).
    fn write(&self, io: &mut Io, mut chunk: Option<Chunk>) -> std::io::Result<()> {
        if let Some(new) = chunk.as_mut() {
            // Checksums, here rather than under the buffer's lock (a failed chunk was sealed
            // before its first attempt).
            new.frames.seal();
        }
        let chunk = match (io.failed.take(), chunk) {
            (Some(mut failed), Some(mut chunk)) => {
                failed.frames.append(&mut chunk.frames);
                failed.end_seq = chunk.end_seq;
                Some(failed)
            }
            (failed, chunk) => failed.or(chunk),
        };
        let Some(mut chunk) = chunk else {
            return Ok(());
        };
        if chunk.frames.is_empty() {
            // Everything due was finished: nothing to write (an end marker is where it was).
            io.written_end = io.written_end.max(chunk.end_seq);
            io.spare = chunk.frames;
            return Ok(());
        }
        #[cfg(test)]
        std::thread::sleep(Duration::from_millis(self.slow_ms.load(Ordering::SeqCst)));
        let marker: &[u8] = if chunk.marker {
            &format::END_MARKER
        } else {
            &[]
        };
        let written = write_slices_at(&chunk.file, chunk.frames.slices().chain([marker]), chunk.at);
        match written {
            Ok(()) => {
                io.written_end = io.written_end.max(chunk.end_seq);
                io.error = None;
                self.failing.store(false, Ordering::SeqCst);
                // The payloads go now; the buffers stay for the next chunk.
                chunk.frames.clear();
                if chunk.frames.capacity() <= 4 * MAX_BATCH {
                    io.spare = chunk.frames;
                }
                Ok(())
            }
            Err(error) => {
                io.error = Some(error.kind());
                io.failed = Some(chunk);
                self.failing.store(true, Ordering::SeqCst);
                Err(error)
            }
        }
    }

    /// Writes everything accepted so far, now (waiting for a write in progress).
    pub(crate) fn flush(&self) -> std::io::Result<()> {
        loop {
            let mut batch = self.lock_batch();
            let mut io = locked(&self.io);
            let chunk = self.take(&mut batch, &mut io, u64::MAX);
            // Held back behind a failed write to an earlier segment: once that one is written,
            // the batch goes too (the caller counts on everything accepted being written).
            let held_back = chunk.is_none() && !batch.frames.is_empty();
            drop(batch);
            self.write(&mut io, chunk)?;
            if !held_back {
                return Ok(());
            }
        }
    }

    /// The error of the last write while writes fail.
    fn failure(&self) -> Option<std::io::Error> {
        if !self.failing.load(Ordering::SeqCst) {
            return None;
        }
        let kind = locked(&self.io).error.unwrap_or(std::io::ErrorKind::Other);
        Some(std::io::Error::from(kind))
    }

    /// Bytes accepted and not written (a failed chunk and the batch).
    fn unwritten(&self) -> usize {
        let batch = self.lock_batch().frames.len();
        batch
            + locked(&self.io)
                .failed
                .as_ref()
                .map_or(0, |c| c.frames.len())
    }

    /// Every record below this is written.
    fn written_end(&self) -> u64 {
        locked(&self.io).written_end
    }

    fn close(&self) {
        self.lock_batch().closed = true;
        self.wake.notify_one();
    }
}

/// I/O slices per `pwritev` (the kernel's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Writes `slices`, one after the other, into `file` at `at`: one `pwritev` per [`IOV_MAX`]
/// slices (and again after a short write).
fn write_slices_at<'a>(
    file: &File,
    slices: impl Iterator<Item = &'a [u8]>,
    mut at: u64,
) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'a>> = slices
        .filter(|s| !s.is_empty())
        .map(std::io::IoSlice::new)
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = rest.len().min(IOV_MAX);
        match rustix::io::pwritev(file, &rest[..n], at) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                at += written as u64;
                std::io::IoSlice::advance_slices(&mut rest, written);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(())
}

/// The files of [`Disk::unsynced`] entries.
fn unsynced_files(unsynced: Vec<(u64, Arc<File>)>) -> Vec<Arc<File>> {
    unsynced.into_iter().map(|(_, file)| file).collect()
}

fn create_segment(path: &Path, fsync: Fsync) -> std::io::Result<File> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(&format::segment_header())?;
    if fsync != Fsync::Never {
        file.sync_data()?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(file)
}

/// Files (and the directory) to sync.
#[derive(Default)]
struct SyncWork {
    files: Vec<Arc<File>>,
    dir: Option<PathBuf>,
}

impl SyncWork {
    fn run(self, dir: &Path) {
        for file in self.files {
            if let Err(error) = file.sync_data() {
                tracing::error!(dir = %dir.display(), %error, "disk buffer: fsync failed");
            }
        }
        if let Some(path) = self.dir {
            if let Err(error) = File::open(&path).and_then(|d| d.sync_all()) {
                tracing::error!(dir = %dir.display(), %error, "disk buffer: fsync of the directory failed");
            }
        }
    }
}

/// Writes what is pending, syncs, writes the ledger and deletes finished segments, outside the
/// buffer's lock.
pub(crate) struct FlushWork {
    dir: PathBuf,
    log: Arc<Log>,
    sync: SyncWork,
    /// The ledger and the acknowledged prefix at the time the work was taken.
    ledger: Option<(Arc<File>, u64)>,
    /// Told what the ledger says once written ([`Disk::flush_work`] compares with it).
    ledger_written: Arc<AtomicU64>,
    sync_ledger: bool,
    delete: Vec<PathBuf>,
}

impl FlushWork {
    pub(crate) fn run(self) {
        // What the writer thread has not written yet is written now (so a flusher period bounds
        // how long an accepted record can stay in memory only), before the sync covers it.
        let _ = self.log.flush();
        self.sync.run(&self.dir);
        // The ledger never passes what is written.
        let written = self.log.written_end();
        if let Some((ledger, below)) = self.ledger.map(|(l, b)| (l, b.min(written))) {
            let written = ledger
                .write_all_at(&format::ledger(below), 0)
                .and_then(|()| {
                    if self.sync_ledger {
                        ledger.sync_data()
                    } else {
                        Ok(())
                    }
                });
            match written {
                Ok(()) => self.ledger_written.store(below, Ordering::Release),
                Err(error) => {
                    tracing::error!(dir = %self.dir.display(), %error,
                        "disk buffer: cannot write the ledger (acknowledged records may be delivered again)");
                }
            }
        }
        for path in self.delete {
            if let Err(error) = std::fs::remove_file(&path) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %path.display(), %error, "disk buffer: cannot delete a finished segment");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::record;

    fn segment(seqs: &[u64]) -> (Vec<u8>, Vec<usize>) {
        let mut data = format::segment_header().to_vec();
        let mut offsets = Vec::new();
        for &seq in seqs {
            offsets.push(data.len());
            format::encode(seq, &record("t", seq), &mut data);
        }
        (data, offsets)
    }

    fn seqs(scan: &Scan) -> Vec<u64> {
        scan.frames.iter().map(|f| f.seq).collect()
    }

    #[test]
    fn the_writer_waits_until_its_next_look_is_due_or_a_burst() {
        let t0 = Instant::now();
        let us = Duration::from_micros;
        // Times in twentieths of `LINGER`.
        let l = LINGER.as_micros() as u64 / 20;
        // (bytes in the batch, look due at t0 + this, now = t0 + this, expected wait)
        let cases: &[(usize, Option<u64>, u64, Option<u64>)] = &[
            (1_300, Some(20 * l), 0, Some(20 * l)),
            (1_300, Some(20 * l), 15 * l, Some(5 * l)),
            (1_300, Some(20 * l), 20 * l, None),
            (1_300, Some(20 * l), 500 * l, None),
            (1_300, Some(30 * l), 15 * l, Some(15 * l)),
            // A burst: looked at at once.
            (WAKE_BYTES - 1, Some(20 * l), l, Some(19 * l)),
            (WAKE_BYTES, Some(20 * l), l, None),
            (MAX_BATCH, Some(20 * l), l, None),
            // No look due (a batch with records always has one): at once.
            (1_300, None, 0, None),
        ];
        for &(bytes, due, now, want) in cases {
            let got = linger(bytes, WAKE_BYTES, due.map(|f| t0 + us(f)), t0 + us(now));
            assert_eq!(
                got,
                want.map(us),
                "{bytes} bytes, due at {due:?}, now {now}"
            );
        }
        // `fsync = "always"`: the burst comes sooner.
        assert_eq!(
            linger(WAKE_BYTES_ALWAYS, WAKE_BYTES_ALWAYS, Some(t0), t0),
            None
        );
        assert_eq!(
            linger(
                WAKE_BYTES_ALWAYS - 1,
                WAKE_BYTES_ALWAYS,
                Some(t0 + LINGER),
                t0
            ),
            Some(LINGER)
        );
    }

    /// A batch's looks: records age at one look and are due at the next, so each waits one
    /// [`LOOK`] at least, and at most two ([`LINGER`]); with `fsync = "always"` everything is
    /// due at every look, a [`LINGER`] apart.
    #[test]
    fn records_are_due_at_the_second_look_after_they_were_accepted() {
        let file = Arc::new(tempfile::tempfile().unwrap());
        let r = crate::testing::record("t", 1);
        let t0 = Instant::now();
        let mut batch = Batch {
            frames: Frames::default(),
            file,
            at: SEGMENT_HEADER_LEN as u64,
            marker: false,
            end_seq: 10,
            first_at: None,
            ages: true,
            aged_below: 10,
            wake_bytes: WAKE_BYTES,
            writer: Writer::Busy,
            keep_all: false,
            closed: false,
        };
        let push = |batch: &mut Batch, seq: u64, now: Instant| {
            if batch.frames.is_empty() {
                batch.first_at = Some(now);
            }
            batch.frames.push(seq, &r);
            batch.end_seq = seq + 1;
        };
        // 10 and 11 accepted: the first look is due a LOOK after 10, and nothing is due yet.
        push(&mut batch, 10, t0);
        push(&mut batch, 11, t0 + LOOK / 2);
        assert_eq!(batch.first_at, Some(t0));
        assert_eq!(batch.due_below(), 10);
        batch.looked(t0 + LOOK);
        // 12 after the first look: the second look (a LOOK later) takes 10 and 11, not 12.
        push(&mut batch, 12, t0 + LOOK + LOOK / 4);
        assert_eq!(batch.first_at, Some(t0 + LOOK));
        assert_eq!(batch.due_below(), 12);
        let mut rest = Frames::default();
        batch.frames.split_below(batch.due_below(), &mut rest);
        batch.frames = rest;
        batch.looked(t0 + 2 * LOOK);
        assert_eq!(batch.due_below(), 13);
        assert_eq!(batch.first_at, Some(t0 + 2 * LOOK));
        // Empty after the third look: no look is due until the next record.
        batch.frames.clear();
        batch.looked(t0 + 3 * LOOK);
        assert_eq!(batch.first_at, None);
        assert_eq!(batch.period(), LOOK);
        assert_eq!(2 * LOOK, LINGER);
        // `fsync = "always"`: everything is due, a LINGER after the first record.
        batch.ages = false;
        push(&mut batch, 13, t0);
        assert_eq!(batch.due_below(), u64::MAX);
        assert_eq!(batch.period(), LINGER);
    }

    #[test]
    fn a_clean_segment_scans_whole() {
        let (data, _) = segment(&[5, 6, 7]);
        let s = scan(&data, 0);
        assert_eq!(seqs(&s), [5, 6, 7]);
        assert_eq!((s.corrupt, s.torn_at), (0, None));
    }

    #[test]
    fn a_torn_tail_is_found_at_every_cut() {
        let (data, offsets) = segment(&[1, 2, 3]);
        for cut in offsets[2] + 1..data.len() {
            let s = scan(&data[..cut], 0);
            assert_eq!(seqs(&s), [1, 2], "cut at {cut}");
            assert_eq!(s.torn_at, Some(offsets[2]));
            assert_eq!(s.corrupt, 0);
        }
    }

    #[test]
    fn a_flipped_byte_in_the_middle_loses_that_record_only() {
        let (data, offsets) = segment(&[1, 2, 3, 4]);
        for i in offsets[1]..offsets[2] {
            let mut bad = data.clone();
            bad[i] ^= 0x40;
            let s = scan(&bad, 0);
            assert_eq!(seqs(&s), [1, 3, 4], "flipped byte {i}");
            assert_eq!((s.corrupt, s.torn_at), (1, None), "flipped byte {i}");
        }
    }

    /// A recycled segment: the frames of `old` (its first use), overwritten from the header on
    /// by the frames of `new`, then an end marker (unless `marker` is false).
    fn recycled(old: &[u64], new: &[u64], marker: bool) -> Vec<u8> {
        let (mut data, _) = segment(old);
        let (mut fresh, _) = segment(new);
        fresh[..SEGMENT_HEADER_LEN].copy_from_slice(&format::recycled_segment_header());
        if marker {
            fresh.extend_from_slice(&format::END_MARKER);
        }
        if data.len() < fresh.len() {
            data.resize(fresh.len(), 0);
        }
        data[..fresh.len()].copy_from_slice(&fresh);
        data
    }

    #[test]
    fn a_recycled_segment_keeps_its_new_frames_and_ignores_the_stale_ones() {
        let old: Vec<u64> = (10..30).collect();
        // (new frames written, then an end marker or not, a torn tail right after the new
        // frames): the new frames are always what is found, the stale ones never.
        let cases: &[(&[u64], bool, bool)] = &[
            // Clean ends: the marker after the new frames, or right after the header.
            (&[100, 101, 102], true, false),
            (&[], true, false),
            // No marker (a crash before the first write reached the disk): a stale frame (below
            // the name) right after the header ends the data cleanly too.
            (&[], false, false),
            // No marker after new frames: whatever stands there is not a frame boundary of
            // the old data, so this is a torn tail (as a crash cutting the last write is).
            (&[100, 101, 102], false, true),
        ];
        for (i, &(new, marker, torn)) in cases.iter().enumerate() {
            let data = recycled(&old, new, marker);
            let s = scan(&data, 100);
            assert_eq!(seqs(&s), new, "case {i}");
            assert_eq!(s.corrupt, 0, "case {i}");
            let end = segment(new).0.len();
            assert_eq!(s.torn_at, torn.then_some(end), "case {i}");
            // Without the name's bound the stale frames would pass for records.
            if new.is_empty() {
                assert!(seqs(&scan(&data, 0)).ends_with(&old[1..]), "case {i}");
            }
        }
    }

    #[test]
    fn damage_in_a_recycled_segment_is_found_as_in_a_fresh_one() {
        let old: Vec<u64> = (10..30).collect();
        let (_, offsets) = segment(&[100, 101, 102, 103]);
        let data = recycled(&old, &[100, 101, 102, 103], true);
        // A flipped byte in a middle record: that record only.
        let mut bad = data.clone();
        bad[offsets[1] + 20] ^= 0x40;
        let s = scan(&bad, 100);
        assert_eq!(seqs(&s), [100, 102, 103]);
        assert_eq!((s.corrupt, s.torn_at), (1, None));
        // The last write cut short (no marker, its last frame torn): a torn tail there, and
        // the stale frames beyond are never taken.
        let cut = offsets[3] + 30;
        let mut torn = recycled(&old, &[100, 101, 102], false);
        let (whole, _) = segment(&[100, 101, 102, 103]);
        torn[..cut].copy_from_slice(&whole[..cut]);
        let s = scan(&torn, 100);
        assert_eq!(seqs(&s), [100, 101, 102]);
        assert_eq!((s.corrupt, s.torn_at), (0, Some(offsets[3])));
    }

    #[test]
    fn frames_of_more_slices_than_one_pwritev_takes_land_whole_and_in_order() {
        // 1,500 records with payloads kept by reference: ~3,000 slices, three `pwritev`s.
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("s"))
            .unwrap();
        let (mut frames, mut expected) = (Frames::default(), Vec::new());
        for seq in 0..1_500u64 {
            let mut r = record("t", seq);
            r.payload = Bytes::from(vec![(seq % 251) as u8; format::BY_REFERENCE + seq as usize]);
            frames.push(seq, &r);
            format::encode(seq, &r, &mut expected);
        }
        assert!(frames.slices().count() > 2 * IOV_MAX);
        frames.seal();
        let at = 100;
        write_slices_at(&file, frames.slices().chain([&b"tail"[..]]), at).unwrap();
        let written = std::fs::read(dir.path().join("s")).unwrap();
        assert_eq!(written.len(), at as usize + expected.len() + 4);
        assert!(written[..at as usize].iter().all(|&b| b == 0));
        assert!(written[at as usize..][..expected.len()] == expected[..]);
        assert_eq!(&written[written.len() - 4..], b"tail");
        // Nothing to write is no write at all.
        write_slices_at(&file, [&[][..], &[][..]].into_iter(), 1 << 40).unwrap();
        assert_eq!(file.metadata().unwrap().len(), written.len() as u64);
    }

    #[test]
    fn garbage_after_good_frames_is_a_torn_tail() {
        let (mut data, offsets) = segment(&[1, 2]);
        let end = data.len();
        data.extend_from_slice(&[0u8; 100]);
        let s = scan(&data, 0);
        assert_eq!(seqs(&s), [1, 2]);
        assert_eq!(s.torn_at, Some(end));
        let _ = offsets;
    }
}
