//! The commit journal: an append-only file in front of redb that makes a commit durable
//! with one small sequential write and one `fdatasync`.
//!
//! # Why
//! A durable redb commit is copy-on-write: it rewrites the tail leaf, the branch pages
//! above it, the meta leaf and the header, about 31 KB per commit. At 1,000 messages/s
//! with 256-byte payloads that is 70-120 bytes written per payload byte, which wears an
//! SD card out. The journal writes each commit's changes once, as a frame appended to
//! `journal.log`, plus at most the rewrite of one partly filled 4 KiB page per
//! `fdatasync`.
//!
//! # How
//! Every commit is applied to redb *without* fsync (`Durability::None`, kept in redb's
//! write buffer) and appended to the journal as one frame: the same changes (dead
//! letters, acknowledged prefix, appended records, in that order) with a frame number
//! (`lsn`) that redb also stores in `meta_v1` (`journal_lsn`) in the same transaction.
//! A durable commit `fdatasync`s the journal.
//!
//! Every `checkpoint_bytes` of journal, a commit goes to redb durably (a checkpoint)
//! and the journal is emptied: redb now holds everything the journal held. Records that
//! Kafka acknowledged between two checkpoints never reach redb's file at all.
//!
//! # Recovery
//! Opening the WAL opens redb (which falls back to its last durable commit, the last
//! checkpoint), reads `journal_lsn` from it, and replays the journal's frames with a
//! larger `lsn`, in order, stopping at the first torn or damaged frame (the unsynced
//! tail of a crash). Then it checkpoints and empties the journal. A frame that is
//! complete but does not follow (a gap in `lsn`, or records that would get other
//! sequence numbers than they had) means the files do not belong together: opening
//! fails rather than guessing.
//!
//! # File layout (little-endian)
//! ```text
//! header (16 bytes): "MKGJRNL1" | version u32 (1) | reserved u32 (0)
//! frame:  body length u32 | CRC-32 of body u32 | body
//! body:   lsn u64
//!         dead letters: count u32, then per entry: seq u64 | parked time ms u64 |
//!                       reason length u32 | reason
//!         acknowledged prefix: u64 (u64::MAX = none)
//!         appends: first seq u64 | count u32, then per record: length u32 | record
//!                  value as in `records_v1`
//!         tail (only when the frame has any): count u32, then per entry:
//!                  kind u8 | argument u16 | value u64
//!                  kinds 1-3: MQTT session changes (`session`); 4: records dropped
//!                  by a policy up to sequence `value`, argument = `DropReason`;
//!                  5: dead letter `value` removed, argument 1 = purged by an
//!                  operator, 2 = replayed (its record is among this frame's appends),
//!                  3 = dropped to keep the dead letters under their byte cap
//! ```
//! Version 1 journals (before the tail) have the same frames without it, and are
//! still replayed.

use crate::session::{self, Change};
use crate::DropReason;

/// An entry of a frame's tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// A change to the MQTT session state.
    Session(Change),
    /// Records up to `up_to` dropped by a policy.
    Drop { up_to: u64, reason: DropReason },
    /// Dead letter `seq` removed: purged, replayed (appended again in this frame), or
    /// dropped for the cap.
    DeadLetterGone { seq: u64, how: Gone },
}

/// How a dead letter left the table. FROZEN codes: they are in journal frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub(crate) enum Gone {
    /// An operator purged it.
    Purged = 1,
    /// An operator replayed it: its record is among the frame's appends.
    Replayed = 2,
    /// Dropped, the oldest first, to keep the dead letters under their byte cap.
    OverCap = 3,
}

impl Tail {
    fn encode(self) -> (u8, u16, u64) {
        match self {
            Tail::Session(c) => session::encode(c),
            Tail::Drop { up_to, reason } => (4, reason as u16, up_to),
            Tail::DeadLetterGone { seq, how } => (5, how as u16, seq),
        }
    }

    fn decode(kind: u8, arg: u16, value: u64) -> Result<Self, String> {
        match kind {
            4 => Ok(Tail::Drop {
                up_to: value,
                reason: DropReason::from_code(arg)
                    .ok_or_else(|| format!("unknown drop reason {arg}"))?,
            }),
            5 => Ok(Tail::DeadLetterGone {
                seq: value,
                how: match arg {
                    1 => Gone::Purged,
                    2 => Gone::Replayed,
                    3 => Gone::OverCap,
                    _ => return Err(format!("unknown dead-letter removal {arg}")),
                },
            }),
            k => session::decode(k, arg, value).map(Tail::Session),
        }
    }
}

/// Journal file name inside the WAL directory.
pub const FILE_NAME: &str = "journal.log";

const MAGIC: &[u8; 8] = b"MKGJRNL1";
/// 2: frames may end with a tail (session changes, policy drops). Version 1 files
/// are read too.
const VERSION: u32 = 2;
const READABLE_VERSIONS: [u32; 2] = [1, 2];
/// Length of the journal's header: the journal is empty at this length.
pub const HEADER_LEN: u64 = 16;
const FRAME_HEAD: usize = 8;
/// No acknowledged prefix in this frame.
const NO_ACK: u64 = u64::MAX;
/// A frame body larger than this is treated as damage (the WAL's batches are far smaller).
const MAX_BODY: usize = 1 << 30;

/// One frame, decoded (borrowing the file contents).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub lsn: u64,
    /// (seq, parked time ms, reason)
    pub dead_letters: Vec<(u64, u64, &'a str)>,
    pub ack_up_to: Option<u64>,
    pub first_seq: u64,
    /// Encoded record values.
    pub appends: Vec<&'a [u8]>,
    /// The tail: changes to the MQTT session state and policy drops, in order.
    pub tail: Vec<Tail>,
}

/// Builds one frame body in a reusable buffer.
#[derive(Debug, Default)]
pub(crate) struct FrameBuilder {
    buf: Vec<u8>,
    dead_count_at: usize,
    dead_count: u32,
    append_count_at: usize,
    append_count: u32,
    tail_count_at: Option<usize>,
    tail_count: u32,
}

impl FrameBuilder {
    /// Start a frame. The call order is `begin`, `dead_letter`*, `ack_and_first_seq`,
    /// `append`*, `tail`*, `finish`.
    pub fn begin(&mut self, lsn: u64) {
        self.buf.clear();
        self.tail_count_at = None;
        self.tail_count = 0;
        self.buf.extend_from_slice(&[0; FRAME_HEAD]);
        self.buf.extend_from_slice(&lsn.to_le_bytes());
        self.dead_count_at = self.buf.len();
        self.dead_count = 0;
        self.buf.extend_from_slice(&0u32.to_le_bytes());
    }

    pub fn dead_letter(&mut self, seq: u64, parked_at_ms: u64, reason: &str) {
        self.buf.extend_from_slice(&seq.to_le_bytes());
        self.buf.extend_from_slice(&parked_at_ms.to_le_bytes());
        self.buf
            .extend_from_slice(&(reason.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(reason.as_bytes());
        self.dead_count += 1;
    }

    pub fn ack_and_first_seq(&mut self, ack_up_to: Option<u64>, first_seq: u64) {
        let at = self.dead_count_at;
        self.buf[at..at + 4].copy_from_slice(&self.dead_count.to_le_bytes());
        self.buf
            .extend_from_slice(&ack_up_to.unwrap_or(NO_ACK).to_le_bytes());
        self.buf.extend_from_slice(&first_seq.to_le_bytes());
        self.append_count_at = self.buf.len();
        self.append_count = 0;
        self.buf.extend_from_slice(&0u32.to_le_bytes());
    }

    /// Append one record value; returns its range in the frame.
    #[cfg(test)]
    pub fn append(&mut self, value: &[u8]) -> std::ops::Range<usize> {
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        let start = self.buf.len();
        self.buf.extend_from_slice(value);
        self.append_count += 1;
        start..self.buf.len()
    }

    /// Append one record value that `fill` writes at the end of the buffer; returns its
    /// range in the frame.
    pub fn append_with<E>(
        &mut self,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<std::ops::Range<usize>, E> {
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        let start = self.buf.len();
        if let Err(e) = fill(&mut self.buf) {
            self.buf.truncate(len_at);
            return Err(e);
        }
        let len = (self.buf.len() - start) as u32;
        self.buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        self.append_count += 1;
        Ok(start..self.buf.len())
    }

    /// Add a tail entry (after every append).
    pub fn tail(&mut self, entry: Tail) {
        if self.tail_count_at.is_none() {
            self.tail_count_at = Some(self.buf.len());
            self.buf.extend_from_slice(&0u32.to_le_bytes());
        }
        let (kind, arg, value) = entry.encode();
        self.buf.push(kind);
        self.buf.extend_from_slice(&arg.to_le_bytes());
        self.buf.extend_from_slice(&value.to_le_bytes());
        self.tail_count += 1;
    }

    /// Close the frame: the whole frame (head and body), ready to write.
    pub fn finish(&mut self) -> &[u8] {
        let at = self.append_count_at;
        self.buf[at..at + 4].copy_from_slice(&self.append_count.to_le_bytes());
        if let Some(at) = self.tail_count_at {
            self.buf[at..at + 4].copy_from_slice(&self.tail_count.to_le_bytes());
        }
        let body = &self.buf[FRAME_HEAD..];
        let len = body.len() as u32;
        let crc = crc32fast::hash(body);
        self.buf[0..4].copy_from_slice(&len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        &self.buf
    }

    /// The frame bytes so far (for slicing the appended values by their range).
    #[cfg(test)]
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Drop a big buffer after an unusually large frame.
    pub fn shrink(&mut self) {
        if self.buf.capacity() > 8 << 20 {
            self.buf = Vec::new();
        }
    }
}

/// Why reading frames stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Clean end of the file.
    Clean,
    /// A torn or damaged frame at this offset (the unsynced tail of a crash); the bytes
    /// from here on are ignored.
    Torn { offset: u64, reason: String },
}

/// Decode the frames of a whole journal file. `Err` when the header is not a journal's.
pub(crate) fn decode_all(data: &[u8]) -> Result<(Vec<(u64, Frame<'_>)>, End), String> {
    if data.is_empty() {
        return Ok((Vec::new(), End::Clean));
    }
    if data.len() < HEADER_LEN as usize {
        // A crash while creating the file: nothing was ever synced after the header.
        return Ok((
            Vec::new(),
            End::Torn {
                offset: 0,
                reason: "short header".into(),
            },
        ));
    }
    if &data[..8] != MAGIC {
        return Err("not a journal file (bad magic)".into());
    }
    let version = u32::from_le_bytes(data[8..12].try_into().unwrap());
    if !READABLE_VERSIONS.contains(&version) {
        return Err(format!(
            "journal version {version}; this build reads {READABLE_VERSIONS:?}"
        ));
    }
    let mut frames = Vec::new();
    let mut at = HEADER_LEN as usize;
    loop {
        if at == data.len() {
            return Ok((frames, End::Clean));
        }
        match decode_frame(&data[at..]) {
            Ok((frame, used)) => {
                frames.push((at as u64, frame));
                at += used;
            }
            Err(reason) => {
                return Ok((
                    frames,
                    End::Torn {
                        offset: at as u64,
                        reason,
                    },
                ))
            }
        }
    }
}

/// Decode the frame at the start of `data`; returns it and its length.
fn decode_frame(data: &[u8]) -> Result<(Frame<'_>, usize), String> {
    if data.len() < FRAME_HEAD {
        return Err("truncated frame head".into());
    }
    let len = u32::from_le_bytes(data[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(data[4..8].try_into().unwrap());
    if len > MAX_BODY {
        return Err(format!("frame length {len} is implausible"));
    }
    let Some(body) = data.get(FRAME_HEAD..FRAME_HEAD + len) else {
        return Err(format!(
            "frame of {len} bytes runs past the end of the file"
        ));
    };
    if crc32fast::hash(body) != crc {
        return Err("frame checksum mismatch".into());
    }
    Ok((parse_body(body)?, FRAME_HEAD + len))
}

/// Parse a whole frame (as [`FrameBuilder::finish`] returns it) without checking its
/// checksum: for applying a frame that was just built.
pub(crate) fn parse_frame_unchecked(frame: &[u8]) -> Result<Frame<'_>, String> {
    parse_body(frame.get(FRAME_HEAD..).ok_or("truncated frame head")?)
}

fn parse_body(body: &[u8]) -> Result<Frame<'_>, String> {
    let mut r = Reader { data: body, at: 0 };
    let lsn = r.u64()?;
    let dead_count = r.u32()?;
    let mut dead_letters = Vec::new();
    for _ in 0..dead_count {
        let seq = r.u64()?;
        let time = r.u64()?;
        let n = r.u32()? as usize;
        let reason =
            std::str::from_utf8(r.bytes(n)?).map_err(|_| "dead-letter reason is not UTF-8")?;
        dead_letters.push((seq, time, reason));
    }
    let ack = r.u64()?;
    let first_seq = r.u64()?;
    let count = r.u32()?;
    let mut appends = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let n = r.u32()? as usize;
        appends.push(r.bytes(n)?);
    }
    let mut tail = Vec::new();
    if r.at < body.len() {
        let count = r.u32()?;
        for _ in 0..count {
            let kind = r.bytes(1)?[0];
            let arg = u16::from_le_bytes(r.bytes(2)?.try_into().unwrap());
            let value = r.u64()?;
            tail.push(Tail::decode(kind, arg, value)?);
        }
    }
    if r.at != body.len() {
        return Err("frame has trailing bytes".into());
    }
    Ok(Frame {
        lsn,
        dead_letters,
        ack_up_to: (ack != NO_ACK).then_some(ack),
        first_seq,
        appends,
        tail,
    })
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).ok_or("length overflow")?;
        let out = self
            .data
            .get(self.at..end)
            .ok_or("field past the frame end")?;
        self.at = end;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().unwrap()))
    }
}

mod file;
pub(crate) use file::Journal;

#[cfg(test)]
mod tests;
