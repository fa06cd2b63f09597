//! The disk buffer's bytes: segment and ledger headers, record framing, record encoding.
//!
//! Everything is little-endian. A segment is a 16-byte header (`VXSEGMNT`, format version,
//! flags: bit 0 set in a recycled segment, other bits reserved) followed by frames; a frame is `len: u32`, `crc32(body): u32`, then `len` bytes of
//! body. The body holds every field of a [`Record`] except `accepted_at` (an `Instant`, which
//! means nothing after a restart: replayed records get a fresh one). The ledger is one 32-byte
//! block: `VXLEDGER`, version, reserved, `acked_below: u64`, `crc32` of the first 24 bytes.
//! A recycled segment (a finished segment file renamed and written again from the start; flag
//! [`RECYCLED`] in its header) ends its new frames with [`END_MARKER`]; its old frames beyond
//! that are *stale*: their sequence numbers are below the one the file is now named after,
//! which tells them from live ones. (A build that predates recycling ignores the flag and reads
//! such a file correctly, counting the stale end as a torn tail.)
//! Pure functions, no I/O: the disk adapter reads and writes these bytes.

use std::time::Instant;

use bytes::Bytes;
use voxsig_protocol::EventKind;

use crate::{EventId, Headers, Record};

/// The on-disk format version this build writes and reads. A directory written by a newer
/// version is refused with a clear error (never rewritten).
pub(crate) const VERSION: u32 = 1;
/// Segment file header: magic, version, flags.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"VXSEGMNT";
/// Segment header flag: a recycled file (ends with [`END_MARKER`], stale frames beyond).
pub(crate) const RECYCLED: u32 = 1;
pub(crate) const SEGMENT_HEADER_LEN: usize = 16;
/// Frame header: body length and its CRC-32.
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// Written after the last frame of a recycled segment (a finished segment file reused for new
/// records, whose old frames lie beyond the new ones): a zero frame header, which no frame has
/// (a body holds at least its sequence number). The next write starts where it is, so it only
/// ever stands after the last frame. Fresh segment files end at their last frame instead.
pub(crate) const END_MARKER: [u8; FRAME_HEADER_LEN] = [0; FRAME_HEADER_LEN];
pub(crate) const LEDGER_MAGIC: &[u8; 8] = b"VXLEDGER";
pub(crate) const LEDGER_LEN: usize = 32;
/// Fixed part of a body: seq, received_at_ms, account_id, flags, six lengths.
const BODY_FIXED: usize = 8 + 8 + 8 + 1 + 6 * 4;

const HAS_ACCOUNT: u8 = 1;
const HAS_KEY: u8 = 2;
const HAS_EVENT_ID: u8 = 4;
const REPLAYED: u8 = 8;

/// The header of a new segment.
pub(crate) fn segment_header() -> [u8; SEGMENT_HEADER_LEN] {
    segment_header_with(0)
}

/// The header of a recycled segment.
pub(crate) fn recycled_segment_header() -> [u8; SEGMENT_HEADER_LEN] {
    segment_header_with(RECYCLED)
}

fn segment_header_with(flags: u32) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&flags.to_le_bytes());
    h
}

/// Whether a segment header (already found [`Header::Current`]) is a recycled segment's.
pub(crate) fn is_recycled(header: &[u8]) -> bool {
    header
        .get(12..16)
        .and_then(|f| f.try_into().ok())
        .is_some_and(|f| u32::from_le_bytes(f) & RECYCLED != 0)
}

/// What a segment or ledger header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// Ours, at this version.
    Current,
    /// Written by a newer build: its format is unknown here.
    Newer(u32),
    /// Not a header of ours (wrong magic, too short, version 0).
    Foreign,
}

fn check_header(bytes: &[u8], magic: &[u8; 8]) -> Header {
    if bytes.len() < 12 || &bytes[..8] != magic {
        return Header::Foreign;
    }
    match u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) {
        VERSION => Header::Current,
        v if v > VERSION => Header::Newer(v),
        _ => Header::Foreign,
    }
}

/// Classifies a segment's first bytes.
pub(crate) fn check_segment_header(bytes: &[u8]) -> Header {
    check_header(bytes, SEGMENT_MAGIC)
}

/// The ledger block for `acked_below`.
pub(crate) fn ledger(acked_below: u64) -> [u8; LEDGER_LEN] {
    let mut b = [0u8; LEDGER_LEN];
    b[..8].copy_from_slice(LEDGER_MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&acked_below.to_le_bytes());
    let crc = crc32fast::hash(&b[..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

/// What a ledger file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ledger {
    /// Every record below this sequence number was acknowledged.
    AckedBelow(u64),
    /// Written by a newer build.
    Newer(u32),
    /// Torn or not ours: nothing is known to be acknowledged (replay all; duplicates, no loss).
    Unreadable,
}

/// Reads a ledger block.
pub(crate) fn read_ledger(bytes: &[u8]) -> Ledger {
    match check_header(bytes, LEDGER_MAGIC) {
        Header::Newer(v) => return Ledger::Newer(v),
        Header::Foreign => return Ledger::Unreadable,
        Header::Current => {}
    }
    if bytes.len() < 28 {
        return Ledger::Unreadable;
    }
    let crc = u32::from_le_bytes(bytes[24..28].try_into().unwrap_or_default());
    if crc != crc32fast::hash(&bytes[..24]) {
        return Ledger::Unreadable;
    }
    Ledger::AckedBelow(u64::from_le_bytes(
        bytes[16..24].try_into().unwrap_or_default(),
    ))
}

/// The framed size of `record` on disk.
pub(crate) fn framed_len(record: &Record) -> usize {
    FRAME_HEADER_LEN
        + BODY_FIXED
        + record.topic.len()
        + record.key.as_ref().map_or(0, String::len)
        + record.headers.event.len()
        + record.headers.event_id.as_ref().map_or(0, EventId::len)
        + record.headers.event_label.len()
        + record.payload.len()
}

/// Appends the frame of `record` (sequence number `seq`) to `out`, sealed (tests; the buffer
/// encodes into [`Frames`] and seals when it writes).
#[cfg(test)]
pub(crate) fn encode(seq: u64, record: &Record, out: &mut Vec<u8>) {
    let mut frames = Frames::default();
    frames.push(seq, record);
    frames.seal();
    for slice in frames.slices() {
        out.extend_from_slice(slice);
    }
}

/// Payloads at least this long are kept by reference in [`Frames`] and written from where they
/// are; shorter ones are copied beside their frame's head (an I/O slice of their own would cost
/// more than the copy).
pub(crate) const BY_REFERENCE: usize = 256;

/// Frames waiting to be written, in order, with their checksums blank (zero) until [`Frames::seal`].
///
/// A frame's *head* (frame header, body up to the payload) is encoded into one buffer; a payload
/// of at least [`BY_REFERENCE`] bytes is not copied: it is kept by reference (`Bytes`) and goes
/// after its head on disk ([`Frames::slices`], one vectored write). The disk buffer encodes
/// under its lock, so what that lock covers is the heads alone; the checksums and the copy of
/// the payloads into the kernel happen on the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    /// The heads, and short payloads in place.
    heads: Vec<u8>,
    /// Payloads kept by reference: each follows `heads[..at]` (its frame's head) on disk.
    payloads: Vec<(usize, Bytes)>,
    /// The framed length of every frame: what the slices add up to.
    len: usize,
}

impl Frames {
    /// Bytes on disk.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties, keeping the buffers' capacity.
    pub(crate) fn clear(&mut self) {
        self.heads.clear();
        self.payloads.clear();
        self.len = 0;
    }

    /// Heap bytes held apart from the payloads (to decide whether to keep an emptied one).
    pub(crate) fn capacity(&self) -> usize {
        self.heads.capacity() + self.payloads.capacity() * std::mem::size_of::<(usize, Bytes)>()
    }

    /// Appends the frame of `record` (sequence number `seq`), unsealed; it takes
    /// [`framed_len`] bytes.
    pub(crate) fn push(&mut self, seq: u64, record: &Record) {
        let start = self.heads.len();
        let by_reference = record.payload.len() >= BY_REFERENCE;
        let heads = &mut self.heads;
        heads.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        let h = &record.headers;
        let mut flags = 0;
        if h.account_id.is_some() {
            flags |= HAS_ACCOUNT;
        }
        if record.key.is_some() {
            flags |= HAS_KEY;
        }
        if h.event_id.is_some() {
            flags |= HAS_EVENT_ID;
        }
        if h.replayed {
            flags |= REPLAYED;
        }
        let key = record.key.as_deref().unwrap_or("");
        heads.extend_from_slice(&seq.to_le_bytes());
        heads.extend_from_slice(&h.received_at_ms.to_le_bytes());
        heads.extend_from_slice(&h.account_id.unwrap_or(0).to_le_bytes());
        heads.push(flags);
        let mut write_parts = |event_id: &str| {
            let parts: [&[u8]; 6] = [
                record.topic.as_bytes(),
                key.as_bytes(),
                h.event.as_bytes(),
                event_id.as_bytes(),
                h.event_label.as_bytes(),
                &record.payload,
            ];
            for part in parts {
                heads.extend_from_slice(&(part.len() as u32).to_le_bytes());
            }
            // The payload is the last part: by reference, it follows the head.
            let in_head = if by_reference { 5 } else { 6 };
            for part in &parts[..in_head] {
                heads.extend_from_slice(part);
            }
        };
        match &h.event_id {
            Some(id) => id.with_text(write_parts),
            None => write_parts(""),
        }
        let mut framed = self.heads.len() - start;
        if by_reference {
            self.payloads
                .push((self.heads.len(), record.payload.clone()));
            framed += record.payload.len();
        }
        let body_len = (framed - FRAME_HEADER_LEN) as u32;
        self.heads[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
        self.len += framed;
    }

    /// Moves every frame of `other` after these (`other` is left empty).
    pub(crate) fn append(&mut self, other: &mut Frames) {
        let shift = self.heads.len();
        self.heads.append(&mut other.heads);
        self.payloads
            .extend(other.payloads.drain(..).map(|(at, p)| (at + shift, p)));
        self.len += std::mem::take(&mut other.len);
    }

    /// The frame whose head starts at `heads[at]`, its payload (if kept by reference) being
    /// `payloads[payload]`: `None` past the last frame.
    fn frame_at(&self, at: usize, payload: usize) -> Option<FrameAt> {
        let header = self.heads.get(at..at + FRAME_HEADER_LEN)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let body_end = at + FRAME_HEADER_LEN + len;
        // A payload kept by reference is this frame's when it goes before the body's end
        // (the next frame's head, and so its payload, starts at the body's end or later).
        let by_reference = self
            .payloads
            .get(payload)
            .is_some_and(|(after, _)| *after < body_end);
        let head_end = if by_reference {
            self.payloads[payload].0
        } else {
            body_end
        };
        // The body starts with the sequence number.
        let seq = self
            .heads
            .get(at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + 8)?;
        Some(FrameAt {
            head_end,
            by_reference,
            seq: u64::from_le_bytes(seq.try_into().ok()?),
            framed: FRAME_HEADER_LEN + len,
        })
    }

    /// Fills in the checksum of every frame. Sealing sealed frames again changes nothing.
    pub(crate) fn seal(&mut self) {
        let (mut at, mut payload) = (0, 0);
        while let Some(frame) = self.frame_at(at, payload) {
            let Some(head) = self.heads.get(at + FRAME_HEADER_LEN..frame.head_end) else {
                debug_assert!(false, "a partial frame to seal");
                return;
            };
            let mut crc = crc32fast::Hasher::new();
            crc.update(head);
            if frame.by_reference {
                crc.update(&self.payloads[payload].1);
                payload += 1;
            }
            self.heads[at + 4..at + 8].copy_from_slice(&crc.finalize().to_le_bytes());
            at = frame.head_end;
        }
    }

    /// Drops the frames at the front whose sequence number is below `seq`: records that left
    /// the buffer (delivered, rejected or dropped) before they were written need no place on
    /// disk. Returns how many frames went, and their bytes.
    pub(crate) fn drop_below(&mut self, seq: u64) -> (u64, usize) {
        let prefix = self.prefix_below(seq);
        if prefix.count > 0 {
            self.heads.drain(..prefix.at);
            self.payloads.drain(..prefix.payloads);
            for (after, _) in &mut self.payloads {
                *after -= prefix.at;
            }
            self.len -= prefix.bytes;
        }
        (prefix.count, prefix.bytes)
    }

    /// Moves the frames from the first whose sequence number is `seq` or more on (to the end)
    /// into `rest`, which must be empty; the frames before it stay. `rest`'s buffers are reused
    /// (and these keep theirs), so a writer that splits every batch allocates nothing.
    pub(crate) fn split_below(&mut self, seq: u64, rest: &mut Frames) {
        debug_assert!(rest.is_empty(), "split into frames that hold some");
        let prefix = self.prefix_below(seq);
        rest.heads.extend_from_slice(&self.heads[prefix.at..]);
        self.heads.truncate(prefix.at);
        rest.payloads.extend(
            self.payloads
                .drain(prefix.payloads..)
                .map(|(after, p)| (after - prefix.at, p)),
        );
        rest.len = self.len - prefix.bytes;
        self.len = prefix.bytes;
    }

    /// The sequence number of the first frame, if any.
    pub(crate) fn first_seq(&self) -> Option<u64> {
        self.frame_at(0, 0).map(|frame| frame.seq)
    }

    /// The frames at the front whose sequence number is below `seq`.
    fn prefix_below(&self, seq: u64) -> Prefix {
        let mut prefix = Prefix::default();
        while let Some(frame) = self.frame_at(prefix.at, prefix.payloads) {
            if frame.seq >= seq {
                break;
            }
            prefix.payloads += usize::from(frame.by_reference);
            prefix.count += 1;
            prefix.bytes += frame.framed;
            prefix.at = frame.head_end;
        }
        prefix
    }

    /// The bytes to write, in order: heads and payloads (no empty slice).
    pub(crate) fn slices(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.payloads.iter().map(|(after, _)| *after));
        let ends = self
            .payloads
            .iter()
            .map(|(after, payload)| (*after, &payload[..]))
            .chain(std::iter::once((self.heads.len(), &[][..])));
        starts
            .zip(ends)
            .flat_map(|(from, (to, payload))| [&self.heads[from..to], payload])
            .filter(|slice| !slice.is_empty())
    }
}

/// Frames at the front of [`Frames`]: where their heads end, how many payloads by reference
/// they have, how many they are and their bytes on disk.
#[derive(Default)]
struct Prefix {
    at: usize,
    payloads: usize,
    count: u64,
    bytes: usize,
}

/// Where one frame of [`Frames`] is.
struct FrameAt {
    /// Where its head ends in `heads` (the next frame's head starts there).
    head_end: usize,
    /// Its payload is the next of `payloads`.
    by_reference: bool,
    seq: u64,
    /// Its bytes on disk.
    framed: usize,
}

/// A frame header: the body's length and checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub len: usize,
    pub crc: u32,
}

/// Parses a frame header.
pub(crate) fn frame_header(bytes: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
    FrameHeader {
        len: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize,
        crc: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    }
}

/// Whether a body matches its header's checksum.
pub(crate) fn body_ok(header: FrameHeader, body: &[u8]) -> bool {
    body.len() == header.len && crc32fast::hash(body) == header.crc
}

/// A body passed its checksum but does not parse: treated like a checksum failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed record body")]
pub(crate) struct Malformed;

/// The sequence number of a body (checksum already verified).
pub(crate) fn body_seq(body: &[u8]) -> Result<u64, Malformed> {
    Ok(u64::from_le_bytes(
        body.get(..8)
            .ok_or(Malformed)?
            .try_into()
            .map_err(|_| Malformed)?,
    ))
}

/// Decodes a checked body back into its sequence number and record. `accepted_at` is now.
pub(crate) fn decode(body: &[u8]) -> Result<(u64, Record), Malformed> {
    decode_with(body, Bytes::copy_from_slice)
}

/// [`decode`] of a body inside `buf`: the payload is a slice of `buf` (no copy, no allocation).
pub(crate) fn decode_shared(buf: &Bytes, body: &[u8]) -> Result<(u64, Record), Malformed> {
    decode_with(body, |payload| buf.slice_ref(payload))
}

fn decode_with(
    body: &[u8],
    payload: impl FnOnce(&[u8]) -> Bytes,
) -> Result<(u64, Record), Malformed> {
    let fixed = body.get(..BODY_FIXED).ok_or(Malformed)?;
    let u64_at = |i: usize| u64::from_le_bytes(fixed[i..i + 8].try_into().unwrap_or_default());
    let seq = u64_at(0);
    let received_at_ms = u64_at(8) as i64;
    let account = u64_at(16);
    let flags = fixed[24];
    let mut lens = [0usize; 6];
    for (i, len) in lens.iter_mut().enumerate() {
        let at = 25 + i * 4;
        *len = u32::from_le_bytes(fixed[at..at + 4].try_into().unwrap_or_default()) as usize;
    }
    let mut rest = &body[BODY_FIXED..];
    let mut take = |n: usize| -> Result<&[u8], Malformed> {
        if rest.len() < n {
            return Err(Malformed);
        }
        let (part, tail) = rest.split_at(n);
        rest = tail;
        Ok(part)
    };
    let borrowed = |b| std::str::from_utf8(b).map_err(|_| Malformed);
    let text = |b| borrowed(b).map(str::to_owned);
    let topic = text(take(lens[0])?)?;
    let key = text(take(lens[1])?)?;
    // Borrowed: a catalogued event name and a bridge-made event id need no allocation.
    let event = borrowed(take(lens[2])?)?;
    let event_id = borrowed(take(lens[3])?)?;
    let label = borrowed(take(lens[4])?)?;
    let payload = payload(take(lens[5])?);
    Ok((
        seq,
        Record {
            topic,
            key: (flags & HAS_KEY != 0).then_some(key),
            payload,
            headers: Headers {
                event: Headers::event_name(EventKind::from_name(event), event),
                event_label: static_label(label),
                account_id: (flags & HAS_ACCOUNT != 0).then_some(account),
                received_at_ms,
                event_id: (flags & HAS_EVENT_ID != 0).then(|| EventId::parse(event_id)),
                replayed: flags & REPLAYED != 0,
            },
            accepted_at: Instant::now(),
        },
    ))
}

/// Maps a stored metrics label back to the `&'static str` the catalogue owns (`"other"` for
/// anything it does not know, so a label read from disk can never grow the label set).
pub(crate) fn static_label(label: &str) -> &'static str {
    EventKind::from_name(label).name().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::record;

    fn roundtrip(record: &Record) -> Record {
        let mut out = Vec::new();
        encode(42, record, &mut out);
        assert_eq!(out.len(), framed_len(record));
        let header = frame_header(out[..8].try_into().unwrap());
        let body = &out[FRAME_HEADER_LEN..];
        assert!(body_ok(header, body));
        let (seq, decoded) = decode(body).unwrap();
        assert_eq!(seq, 42);
        assert_eq!(body_seq(body), Ok(42));
        decoded
    }

    #[test]
    fn a_shared_decode_slices_the_payload_out_of_the_read_buffer() {
        let record = record("t", 7);
        let mut out = vec![0u8; 3]; // the frame somewhere inside a larger read
        encode(7, &record, &mut out);
        let buf = Bytes::from(out);
        let body = &buf[3 + FRAME_HEADER_LEN..];
        let (seq, shared) = decode_shared(&buf, body).unwrap();
        let (_, copied) = decode(body).unwrap();
        assert_eq!(seq, 7);
        assert_eq!(shared.payload, copied.payload);
        assert_eq!(shared.topic, copied.topic);
        let inside = buf.as_ptr_range();
        assert!(
            inside.contains(&shared.payload.as_ptr()),
            "a slice, not a copy"
        );
    }

    #[test]
    fn every_field_survives_except_the_instant() {
        let mut full = record("voxsig/1/message.created", 7);
        full.headers.event_id = Some("ev-1".into());
        full.headers.replayed = true;
        full.headers.account_id = Some(u64::MAX);
        full.headers.received_at_ms = -5;
        let back = roundtrip(&full);
        assert_eq!(back.topic, full.topic);
        assert_eq!(back.key, full.key);
        assert_eq!(back.payload, full.payload);
        assert_eq!(back.headers, full.headers);
        // The catalogue's label (a `&'static str`; optimised builds may keep two copies of the
        // same literal, so compare the text, not the address).
        assert_eq!(
            back.headers.event_label,
            EventKind::from_name("message.created").name().unwrap()
        );

        let mut bare = record("t", 1);
        bare.key = None;
        bare.headers.account_id = None;
        bare.headers.event = "custom.thing".into();
        bare.headers.event_label = "other";
        bare.payload = Bytes::new();
        let back = roundtrip(&bare);
        assert_eq!(back.headers, bare.headers);
        assert_eq!(back.key, None);
        // An empty key is not a missing key.
        bare.key = Some(String::new());
        assert_eq!(roundtrip(&bare).key, Some(String::new()));
    }

    /// Records with payloads on both sides of [`BY_REFERENCE`] (and empty ones).
    fn mixed(n: u64) -> Vec<Record> {
        (0..n)
            .map(|i| {
                let mut r = record(&format!("t/{i}"), i);
                let len = [0, 1, BY_REFERENCE - 1, BY_REFERENCE, 1_200][i as usize % 5];
                r.payload = Bytes::from(vec![b'a' + (i % 26) as u8; len]);
                r
            })
            .collect()
    }

    fn joined(frames: &Frames) -> Vec<u8> {
        let mut out = Vec::new();
        for slice in frames.slices() {
            assert!(!slice.is_empty());
            out.extend_from_slice(slice);
        }
        assert_eq!(out.len(), frames.len());
        out
    }

    #[test]
    fn frames_sealed_together_equal_frames_encoded_one_by_one() {
        let records = mixed(11);
        let (mut one_by_one, mut frames) = (Vec::new(), Frames::default());
        for (i, r) in records.iter().enumerate() {
            encode(i as u64, r, &mut one_by_one);
            frames.push(i as u64, r);
        }
        assert_eq!(frames.len(), records.iter().map(framed_len).sum::<usize>());
        assert_ne!(joined(&frames), one_by_one, "checksums are left blank");
        frames.seal();
        assert_eq!(joined(&frames), one_by_one);
        frames.seal();
        assert_eq!(joined(&frames), one_by_one, "sealing twice changes nothing");
        // Every frame reads back.
        let mut at = 0;
        for (i, r) in records.iter().enumerate() {
            let header = frame_header(one_by_one[at..at + 8].try_into().unwrap());
            let body = &one_by_one[at + 8..at + 8 + header.len];
            assert!(body_ok(header, body), "frame {i}");
            let (seq, back) = decode(body).unwrap();
            assert_eq!((seq, &back.payload), (i as u64, &r.payload));
            at += 8 + header.len;
        }
        assert_eq!(at, one_by_one.len());
    }

    #[test]
    fn appended_frames_seal_and_write_as_if_pushed_in_one() {
        let records = mixed(13);
        let (mut whole, mut first, mut second) =
            (Frames::default(), Frames::default(), Frames::default());
        for (i, r) in records.iter().enumerate() {
            whole.push(i as u64, r);
            if i < 7 { &mut first } else { &mut second }.push(i as u64, r);
        }
        first.seal();
        first.append(&mut second);
        assert!(second.is_empty() && second.slices().next().is_none());
        first.seal();
        whole.seal();
        assert_eq!(joined(&first), joined(&whole));
        first.clear();
        assert!(first.is_empty() && first.slices().next().is_none());
    }

    #[test]
    fn frames_dropped_below_a_sequence_number_write_as_if_never_pushed() {
        // Frames 10..21 of every payload shape (in place, by reference, empty); each case drops
        // below `seq` and must leave exactly the frames from there on, sealing and writing as
        // if only they had been pushed.
        let records = mixed(11);
        let cases: [(u64, u64); 7] = [
            (0, 0),
            (10, 0),
            (11, 1),
            (13, 3),
            (14, 4),
            (20, 10),
            (u64::MAX, 11),
        ];
        for (below, dropped) in cases {
            let (mut frames, mut rest) = (Frames::default(), Frames::default());
            for (i, r) in records.iter().enumerate() {
                let seq = 10 + i as u64;
                frames.push(seq, r);
                if seq >= below {
                    rest.push(seq, r);
                }
            }
            let before = frames.len();
            let (count, bytes) = frames.drop_below(below);
            assert_eq!(
                (count, bytes),
                (dropped, before - rest.len()),
                "below {below}"
            );
            assert_eq!(frames.len(), rest.len(), "below {below}");
            frames.seal();
            rest.seal();
            assert_eq!(joined(&frames), joined(&rest), "below {below}");
            assert_eq!(frames.drop_below(below), (0, 0), "again, below {below}");
        }
        // Frames are dropped from the front only: a lower number behind a higher one stays.
        let mut frames = Frames::default();
        frames.push(5, &records[4]);
        frames.push(3, &records[4]);
        assert_eq!(frames.drop_below(4), (0, 0));
    }

    #[test]
    fn frames_split_at_a_sequence_number_write_as_if_pushed_apart() {
        // Frames 10..21 of every payload shape; each case splits at `seq` into a prefix and a
        // rest that must seal and write as if each had been pushed alone, and whose lengths add
        // up; the split reuses the rest's buffers (split twice into the same one).
        let records = mixed(11);
        let mut rest = Frames::default();
        for at in [0, 10, 11, 13, 14, 20, 21, u64::MAX] {
            for _ in 0..2 {
                let (mut frames, mut head, mut tail) =
                    (Frames::default(), Frames::default(), Frames::default());
                for (i, r) in records.iter().enumerate() {
                    let seq = 10 + i as u64;
                    frames.push(seq, r);
                    if seq < at {
                        head.push(seq, r);
                    } else {
                        tail.push(seq, r);
                    }
                }
                let whole = frames.len();
                rest.clear();
                frames.split_below(at, &mut rest);
                assert_eq!(frames.len(), head.len(), "at {at}");
                assert_eq!(rest.len(), tail.len(), "at {at}");
                assert_eq!(frames.len() + rest.len(), whole, "at {at}");
                for f in [&mut frames, &mut rest, &mut head, &mut tail] {
                    f.seal();
                }
                assert_eq!(joined(&frames), joined(&head), "at {at}");
                assert_eq!(joined(&rest), joined(&tail), "at {at}");
                // What was split off is whole frames: dropping them all finds each one.
                let tail_count = records.len() as u64 - at.saturating_sub(10).min(11);
                assert_eq!(rest.drop_below(u64::MAX).0, tail_count, "at {at}");
                assert!(rest.is_empty(), "at {at}");
            }
        }
    }

    #[test]
    fn long_payloads_are_written_from_where_they_are_short_ones_are_copied() {
        let records = mixed(5);
        let mut frames = Frames::default();
        for (i, r) in records.iter().enumerate() {
            frames.push(i as u64, r);
        }
        let from_records = |slice: &[u8]| {
            records
                .iter()
                .any(|r| !r.payload.is_empty() && r.payload.as_ptr() == slice.as_ptr())
        };
        let shared: Vec<usize> = frames
            .slices()
            .filter(|s| from_records(s))
            .map(<[u8]>::len)
            .collect();
        assert_eq!(shared, [BY_REFERENCE, 1_200]);
        // The heads of frames 0-3 (their short payloads in place), payload 3, head 4, payload 4.
        assert_eq!(frames.slices().count(), 4);
    }

    #[test]
    fn unknown_labels_become_other() {
        assert_eq!(static_label("message.created"), "message.created");
        assert_eq!(static_label("x\u{7}evil"), "other");
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum_and_short_bodies_do_not_parse() {
        let mut out = Vec::new();
        encode(1, &record("t", 1), &mut out);
        let header = frame_header(out[..8].try_into().unwrap());
        for i in FRAME_HEADER_LEN..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x10;
            assert!(!body_ok(header, &bad[FRAME_HEADER_LEN..]), "byte {i}");
        }
        let body = &out[FRAME_HEADER_LEN..];
        for cut in 0..body.len() {
            assert_eq!(
                decode(&body[..cut]).map(|_| ()),
                Err(Malformed),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn headers_and_ledger_versions() {
        assert_eq!(check_segment_header(&segment_header()), Header::Current);
        assert_eq!(
            check_segment_header(&recycled_segment_header()),
            Header::Current
        );
        assert!(is_recycled(&recycled_segment_header()));
        assert!(!is_recycled(&segment_header()) && !is_recycled(b"short"));
        let mut newer = segment_header();
        newer[8] = 9;
        assert_eq!(check_segment_header(&newer), Header::Newer(9));
        assert_eq!(check_segment_header(b"garbage"), Header::Foreign);
        assert_eq!(read_ledger(&ledger(77)), Ledger::AckedBelow(77));
        let mut torn = ledger(77);
        torn[17] ^= 1;
        assert_eq!(read_ledger(&torn), Ledger::Unreadable);
        assert_eq!(read_ledger(&[]), Ledger::Unreadable);
        let mut newer = ledger(1);
        newer[8] = 2;
        assert_eq!(read_ledger(&newer), Ledger::Newer(2));
    }
}
