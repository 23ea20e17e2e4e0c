//! # SAFE's durable log
//!
//! Each member with a `log_dir` keeps one append-only file of what it
//! accepted: the messages at their positions of the sequence ([`Record::Entry`]),
//! the views in which it became an acceptor ([`Record::View`]) and the
//! garbage-collection point ([`Record::Gc`]). SAFE acknowledges a message
//! only after its record is synced, and after a total failure rebuilds the
//! sequence from these files. This module only encodes, decodes and writes;
//! what the records mean is SAFE's business (see `mod.rs`).
//!
//! ## What it guarantees
//! * **Durability by group commit.** [`DurableLog::push`] encodes a record into
//!   a reused write buffer; [`DurableLog::commit`] appends the whole batch with
//!   one write and, when asked, one `fsync`. Once `commit(true)` returns, every
//!   record pushed before it survives a crash.
//! * **Nothing wrong is ever read back.** Every record carries its length and a
//!   CRC-32 of its contents. [`scan`] returns the longest prefix of intact
//!   records and stops at the first bad one, saying why ([`Damage`]). It never
//!   panics and never allocates from a length it read: whatever the bytes.
//! * **New records never follow garbage.** [`DurableLog::open`] cuts a damaged
//!   file back to its good prefix (atomically, with `replace`) before anything
//!   is appended, so a later scan does not stop at old damage and lose what
//!   came after it.
//! * **Compaction is atomic.** [`DurableLog::rewrite`] replaces the file as a
//!   whole: after a crash it holds the old records or the new ones, never a
//!   mix.
//! * **Someone else's file is left alone.** A file that does not start with
//!   the SAFE header is refused (`InvalidData`) without a byte written.
//!
//! ## Format (all of it; `docs/safe-log.md` has worked examples)
//! ```text
//! file:    | magic "STRSAFE" 7 bytes | format version u8 = 1 | record* |
//! record:  | 0xA5 u8 | len u32 LE | crc32 u32 LE | kind u8 | payload (len - 1 bytes) |
//!            len counts kind + payload (>= 1, <= MAX_RECORD_LEN); crc32 (IEEE) covers kind + payload
//! ENTRY 1: | slot varint | ballot varint | sender (MemberId) | view varint | id varint | body len varint | body |
//! VIEW  2: | ballot varint | count varint | address* |
//! GC    3: | slot varint |
//! MemberId: | family u8 (4|6) | ip 4|16 bytes | port u16 BE | incarnation varint |
//! address:  | family u8 (4|6) | ip 4|16 bytes | port u16 BE |
//! ```
//! Varints are unsigned LEB128 ([`strata_stack::codec`]). A payload must be
//! consumed exactly: trailing bytes make a record undecodable.
//!
//! ## Torn tail or corruption
//! A crash during a write leaves a *prefix* of what was appended: complete
//! records, then at most one cut-short record, then nothing. Such a torn tail
//! was never synced, so nothing in it was ever acknowledged; it is expected
//! after a crash and reported as [`Damage::TornTail`]. Anything else is
//! [`Damage::Corrupt`]: a record whose length is 0 or beyond the maximum,
//! whose checksum fails with whole bytes after it, whose checksummed contents
//! do not decode, or a bad record (wrong marker, cut short, or failing its
//! checksum at the very end) followed somewhere by an intact record (a
//! flipped bit in a length field makes a record seem to run past the end:
//! the intact record after it shows that it was not the last write). Both stop
//! the scan; the caller reports them.
//!
//! ## Costs
//! Encoding an entry copies its body once, into the write buffer (and computes
//! its checksum); the buffer is reused, so a warm log allocates nothing per
//! record. Decoding, which only happens at recovery, copies each body into a
//! fresh [`Bytes`]. A record takes 9 bytes of framing plus its fields: an
//! entry with an IPv4 sender and numbers below 2^21 costs 20 to 30 bytes on
//! top of its body.

use bytes::Bytes;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use strata_stack::{LogFile, MemberId, Reader, SafeTag, Stats, Writer};

/// The file header: format name, then format version.
const MAGIC: [u8; 8] = *b"STRSAFE\x01";
/// The byte that starts every record (a cheap first check when resynchronising).
const MARKER: u8 = 0xA5;
/// Marker, length, checksum.
const RECORD_HEADER_LEN: usize = 9;
/// The longest `len` of a record: FRAG's largest message (2^30 bytes) plus the
/// fields of an entry, with room to spare. A longer length field is corruption.
const MAX_RECORD_LEN: usize = (1 << 30) + 4096;
/// An address takes at least this many bytes (family, IPv4, port).
const MIN_ADDRESS_LEN: usize = 1 + 4 + 2;
/// The write buffer keeps at most this much capacity between commits, so one
/// huge message does not pin its size for the life of the log.
const QUEUE_KEEP_BYTES: usize = 4 << 20;
/// How many bytes classifying one damaged tail may checksum while looking for
/// an intact record after it. Past it the damage is called corruption, the
/// louder of the two answers.
const RESYNC_BUDGET_BYTES: usize = 1 << 30;

mod kind {
    pub const ENTRY: u8 = 1;
    pub const VIEW: u8 = 2;
    pub const GC: u8 = 3;
}

/// One accepted message at a position of the sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub slot: u64,
    pub ballot: u64,
    pub tag: SafeTag,
    pub body: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// A message accepted in `ballot` at `slot`.
    Entry(Entry),
    /// This member installed view `ballot` (a view counter) as SAFE saw it: its members, in rank order (the acceptors are the first of them).
    View { ballot: u64, members: Vec<SocketAddr> },
    /// Every position up to and including `slot` is finished by every member: forget it.
    Gc { slot: u64 },
}

/// What reading a log found wrong. Offsets are byte offsets in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Damage {
    /// The last record is incomplete or fails its checksum and nothing follows it: a write cut short by a crash.
    /// Expected after a crash; the record was never synced, so never acknowledged.
    TornTail { offset: u64, bytes: u64 },
    /// A record before the end fails its checksum or cannot be decoded (a flipped bit, overwritten bytes):
    /// records from `offset` on are not trusted.
    Corrupt { offset: u64, ignored_bytes: u64, reason: &'static str },
}

impl Damage {
    /// Where the good prefix of the file ends.
    pub(crate) fn offset(&self) -> u64 {
        match self {
            Damage::TornTail { offset, .. } | Damage::Corrupt { offset, .. } => *offset,
        }
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::TornTail { offset, bytes } => {
                write!(f, "torn tail: {bytes} bytes at offset {offset} dropped (a write cut short by a crash, never acknowledged)")
            }
            Damage::Corrupt { offset, ignored_bytes, reason } => {
                write!(f, "corrupt record at offset {offset} ({reason}): it and the {ignored_bytes} bytes from it on are ignored")
            }
        }
    }
}

/// The result of reading a whole log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Scan {
    pub records: Vec<Record>,
    pub damage: Option<Damage>,
}

/// Decodes a whole file. Never panics, whatever the bytes; stops at the first bad record.
/// An empty file is an empty scan. A file whose header is not a SAFE log header is an Err with a clear reason,
/// since appending to someone else's file would destroy it. A file that is a strict prefix of the header
/// (a crash while the header was written) is an empty scan with a torn tail.
pub(crate) fn scan(data: &[u8]) -> Result<Scan, String> {
    if data.len() < MAGIC.len() {
        let damage = (!data.is_empty()).then_some(Damage::TornTail { offset: 0, bytes: data.len() as u64 });
        if !MAGIC.starts_with(data) {
            return Err("not a SAFE log (bad header)".to_string());
        }
        return Ok(Scan { records: Vec::new(), damage });
    }
    let (name, version) = MAGIC.split_at(MAGIC.len() - 1);
    if &data[..name.len()] != name {
        return Err("not a SAFE log (bad header)".to_string());
    }
    let found = data[name.len()];
    if found != version[0] {
        return Err(format!("SAFE log format version {found} is not supported (this build reads version {})", version[0]));
    }
    let mut records = Vec::new();
    let mut pos = MAGIC.len();
    while pos < data.len() {
        match read_record(data, pos) {
            Ok((record, next)) => {
                records.push(record);
                pos = next;
            }
            Err(bad) => return Ok(Scan { records, damage: Some(classify(data, pos, bad)) }),
        }
    }
    Ok(Scan { records, damage: None })
}

/// Why the record at some offset is not usable.
enum Bad {
    /// No write of ours cut short could look like this: corruption, whatever follows.
    Corrupt(&'static str),
    /// Looks like the cut-short end of the last write, unless an intact record follows.
    TailLike(&'static str),
}

/// Reads the record at `pos` (`pos < data.len()`): the record and where the next one starts.
fn read_record(data: &[u8], pos: usize) -> Result<(Record, usize), Bad> {
    let rest = &data[pos..];
    let mut r = Reader::new(rest);
    if r.u8() != Ok(MARKER) {
        return Err(Bad::TailLike("bad record marker"));
    }
    let (Ok(len), Ok(crc)) = (r.array::<4>(), r.array::<4>()) else {
        return Err(Bad::TailLike("truncated record header"));
    };
    let (len, crc) = (u32::from_le_bytes(len) as usize, u32::from_le_bytes(crc));
    if len == 0 {
        return Err(Bad::Corrupt("empty record"));
    }
    if len > MAX_RECORD_LEN {
        return Err(Bad::Corrupt("record length beyond the maximum"));
    }
    let Ok(payload) = r.bytes(len) else {
        return Err(Bad::TailLike("truncated record"));
    };
    if crc32fast::hash(payload) != crc {
        return Err(if r.remaining() == 0 { Bad::TailLike("checksum mismatch") } else { Bad::Corrupt("checksum mismatch") });
    }
    let record = decode_payload(payload).map_err(Bad::Corrupt)?;
    Ok((record, pos + RECORD_HEADER_LEN + len))
}

fn classify(data: &[u8], pos: usize, bad: Bad) -> Damage {
    let (offset, bytes) = (pos as u64, (data.len() - pos) as u64);
    match bad {
        Bad::TailLike(_) if !intact_record_after(data, pos + 1) => Damage::TornTail { offset, bytes },
        Bad::TailLike(reason) | Bad::Corrupt(reason) => Damage::Corrupt { offset, ignored_bytes: bytes, reason },
    }
}

/// Whether an intact record (marker, sane length, known kind, matching checksum)
/// starts anywhere at or after `from`. Gives up with `true` past the budget.
fn intact_record_after(data: &[u8], from: usize) -> bool {
    let mut budget = RESYNC_BUDGET_BYTES;
    let mut p = from;
    while let Some(skip) = data.get(p..).and_then(|rest| rest.iter().position(|&b| b == MARKER)) {
        p += skip;
        let mut r = Reader::new(&data[p + 1..]);
        if let (Ok(len), Ok(crc)) = (r.array::<4>(), r.array::<4>()) {
            let len = u32::from_le_bytes(len) as usize;
            if (1..=MAX_RECORD_LEN).contains(&len) {
                if let Ok(payload) = r.bytes(len) {
                    if (kind::ENTRY..=kind::GC).contains(&payload[0]) {
                        if len > budget {
                            return true;
                        }
                        budget -= len;
                        if crc32fast::hash(payload) == u32::from_le_bytes(crc) {
                            return true;
                        }
                    }
                }
            }
        } else {
            // Too few bytes left for any record header.
            return false;
        }
        p += 1;
    }
    false
}

fn decode_payload(payload: &[u8]) -> Result<Record, &'static str> {
    const UNDECODABLE: &str = "undecodable record";
    let mut r = Reader::new(payload);
    let record = match r.u8().map_err(|_| UNDECODABLE)? {
        kind::ENTRY => {
            let decode = |r: &mut Reader<'_>| -> Result<Entry, strata_stack::Malformed> {
                let slot = r.varint()?;
                let ballot = r.varint()?;
                let sender = MemberId::decode(r)?;
                let view = r.varint()?;
                let id = r.varint()?;
                let left = r.remaining() as u64;
                let body_len = r.varint_max(left, "body_beyond_record")? as usize;
                let body = Bytes::copy_from_slice(r.bytes(body_len)?);
                Ok(Entry { slot, ballot, tag: SafeTag { sender, view, id }, body })
            };
            Record::Entry(decode(&mut r).map_err(|_| UNDECODABLE)?)
        }
        kind::VIEW => {
            let decode = |r: &mut Reader<'_>| -> Result<Record, strata_stack::Malformed> {
                let ballot = r.varint()?;
                // Bounded by the bytes present, so the allocation is too.
                let most = (r.remaining() / MIN_ADDRESS_LEN) as u64;
                let count = r.varint_max(most, "too_many_addresses")? as usize;
                let mut members = Vec::with_capacity(count);
                for _ in 0..count {
                    members.push(decode_address(r)?);
                }
                Ok(Record::View { ballot, members })
            };
            decode(&mut r).map_err(|_| UNDECODABLE)?
        }
        kind::GC => Record::Gc { slot: r.varint().map_err(|_| UNDECODABLE)? },
        _ => return Err("unknown record kind"),
    };
    r.finish().map_err(|_| UNDECODABLE)?;
    Ok(record)
}

fn encode_address(w: &mut Writer, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => w.u8(4).bytes(&ip.octets()),
        IpAddr::V6(ip) => w.u8(6).bytes(&ip.octets()),
    };
    w.u16(addr.port());
}

fn decode_address(r: &mut Reader<'_>) -> Result<SocketAddr, strata_stack::Malformed> {
    let ip = match r.u8()? {
        4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
        6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
        _ => return Err(strata_stack::Malformed("bad_address_family")),
    };
    Ok(SocketAddr::new(ip, r.u16()?))
}

/// Appends `record`, framed, to `out`. The fields go through `scratch` (reused);
/// an entry's body is copied once, straight into `out`.
fn encode_record(out: &mut Vec<u8>, scratch: &mut Writer, record: &Record) {
    scratch.clear();
    let body: &[u8] = match record {
        Record::Entry(e) => {
            scratch.u8(kind::ENTRY).varint(e.slot).varint(e.ballot);
            e.tag.sender.encode(scratch);
            scratch.varint(e.tag.view).varint(e.tag.id).varint(e.body.len() as u64);
            &e.body
        }
        Record::View { ballot, members } => {
            scratch.u8(kind::VIEW).varint(*ballot).varint(members.len() as u64);
            for addr in members {
                encode_address(scratch, addr);
            }
            &[]
        }
        Record::Gc { slot } => {
            scratch.u8(kind::GC).varint(*slot);
            &[]
        }
    };
    let len = scratch.len() + body.len();
    // SAFE logs what the stack carries, and FRAG caps messages at 2^30 bytes:
    // a longer record would be written but refused as corrupt when read back.
    assert!(len <= MAX_RECORD_LEN, "a SAFE log record of {len} bytes exceeds the format's maximum of {MAX_RECORD_LEN}");
    let start = out.len();
    out.reserve(RECORD_HEADER_LEN + len);
    out.push(MARKER);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // the checksum, once the contents are in place
    out.extend_from_slice(scratch.as_slice());
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out[start + RECORD_HEADER_LEN..]);
    out[start + 5..start + RECORD_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// The open log of one member.
pub(crate) struct DurableLog {
    file: Box<dyn LogFile>,
    /// Records pushed since the last commit, encoded and framed.
    queue: Vec<u8>,
    /// How many records `queue` holds.
    queued_records: u64,
    /// Fields of the record being encoded (reused).
    scratch: Writer,
    /// Bytes in the file after the last commit or rewrite.
    len: u64,
    /// Whether something was appended since the last sync.
    unsynced: bool,
    /// A write or sync failed: the file's tail is unknown, so nothing more is
    /// appended until a rewrite has replaced the whole file.
    failed: bool,
    records_written: u64,
    bytes_written: u64,
    syncs: u64,
    rewrites: u64,
    bytes_rewritten: u64,
}

impl DurableLog {
    /// Reads the file, and if the scan found damage rewrites the file to its good prefix (with `replace`),
    /// so that new records never follow garbage. Writes the file header into an empty file (synced).
    /// Returns the log and the scan (the caller reports damage). A file that is not a SAFE log is an
    /// `InvalidData` error naming the file, and is left untouched.
    pub fn open(file: Box<dyn LogFile>) -> io::Result<(DurableLog, Scan)> {
        let mut log = DurableLog {
            file,
            queue: Vec::new(),
            queued_records: 0,
            scratch: Writer::new(),
            len: 0,
            unsynced: false,
            failed: false,
            records_written: 0,
            bytes_written: 0,
            syncs: 0,
            rewrites: 0,
            bytes_rewritten: 0,
        };
        let data = log.file.read_all()?;
        let scan = scan(&data).map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {reason}", log.file.describe())))?;
        log.len = data.len() as u64;
        if data.is_empty() {
            log.file.append(&MAGIC)?;
            log.file.sync()?;
            log.len = MAGIC.len() as u64;
            log.bytes_written += log.len;
            log.syncs += 1;
        } else if let Some(damage) = &scan.damage {
            // The offset is within the file; below the header only for a torn header.
            let good = &data[..damage.offset() as usize];
            let good = if good.len() < MAGIC.len() { &MAGIC[..] } else { good };
            log.file.replace(good)?;
            log.len = good.len() as u64;
            log.rewrites += 1;
            log.bytes_rewritten += log.len;
        }
        Ok((log, scan))
    }

    /// Queues a record (encoded into the write buffer; nothing reaches the file yet).
    pub fn push(&mut self, rec: &Record) {
        encode_record(&mut self.queue, &mut self.scratch, rec);
        self.queued_records += 1;
    }

    /// Writes the queued records and, if `fsync`, makes them durable (along with anything appended
    /// unsynced before). Group commit: the caller pushes a batch, then syncs once.
    /// After an error the queued records are dropped (they may be partly in the file) and every
    /// further commit fails until a successful [`DurableLog::rewrite`].
    pub fn commit(&mut self, fsync: bool) -> io::Result<()> {
        if self.failed {
            self.clear_queue();
            return Err(io::Error::other(format!("{}: an earlier write failed; nothing more is appended until the log is rewritten", self.describe())));
        }
        if !self.queue.is_empty() {
            let appended = self.file.append(&self.queue);
            let (bytes, records) = (self.queue.len() as u64, self.queued_records);
            self.clear_queue();
            if let Err(e) = appended {
                self.failed = true;
                return Err(e);
            }
            self.len += bytes;
            self.bytes_written += bytes;
            self.records_written += records;
            self.unsynced = true;
        }
        if fsync && self.unsynced {
            // After a failed fsync the kernel may have dropped the dirty pages:
            // what is on disk is unknown.
            if let Err(e) = self.file.sync() {
                self.failed = true;
                return Err(e);
            }
            self.syncs += 1;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Rewrites the whole log as exactly `records` (atomically, via `replace`): compaction after GC.
    /// Records queued by `push` and not yet committed stay queued: they follow at the next commit.
    pub fn rewrite<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) -> io::Result<()> {
        let mut data = MAGIC.to_vec();
        for record in records {
            encode_record(&mut data, &mut self.scratch, record);
        }
        if let Err(e) = self.file.replace(&data) {
            // The file holds the old or the new contents; which is unknown.
            self.failed = true;
            return Err(e);
        }
        self.failed = false;
        self.unsynced = false;
        self.len = data.len() as u64;
        self.rewrites += 1;
        self.bytes_rewritten += self.len;
        Ok(())
    }

    /// Bytes in the file (after the last commit/rewrite).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Where the file is (for messages).
    pub fn describe(&self) -> String {
        self.file.describe()
    }

    /// Counters: records_written and bytes_written (appended by commits; the bytes include the header
    /// of a new file), syncs, rewrites and bytes_rewritten (whole-file replacements, repairs at open included).
    pub fn stats(&self, out: &mut Stats) {
        out.add("records_written", self.records_written)
            .add("bytes_written", self.bytes_written)
            .add("syncs", self.syncs)
            .add("rewrites", self.rewrites)
            .add("bytes_rewritten", self.bytes_rewritten);
    }

    fn clear_queue(&mut self) {
        self.queue.clear();
        self.queued_records = 0;
        if self.queue.capacity() > QUEUE_KEEP_BYTES {
            self.queue.shrink_to(QUEUE_KEEP_BYTES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};
    use strata_stack::{CrashTail, FsStorage, MemStorage, Storage};

    const DIR: &str = "logs";
    const NAME: &str = "g.safelog";

    fn tag(sender: u16, view: u64, id: u64) -> SafeTag {
        SafeTag { sender: MemberId::sim(sender), view, id }
    }

    fn entry(slot: u64, body: &[u8]) -> Record {
        Record::Entry(Entry { slot, ballot: 3, tag: tag(slot as u16 % 5, 2, slot + 1), body: Bytes::copy_from_slice(body) })
    }

    /// One record of each kind, IPv6 and a large incarnation included.
    fn every_kind() -> Vec<Record> {
        let v6: SocketAddr = "[2001:db8::7]:9000".parse().unwrap();
        vec![
            entry(1, b"hello"),
            Record::Entry(Entry {
                slot: u64::MAX,
                ballot: u64::MAX,
                tag: SafeTag { sender: MemberId::new(v6, u64::MAX), view: u64::MAX, id: u64::MAX },
                body: Bytes::new(),
            }),
            Record::View { ballot: 7, members: vec![MemberId::sim(1).addr(), v6, MemberId::sim(300).addr()] },
            Record::View { ballot: 8, members: Vec::new() },
            Record::Gc { slot: 0 },
            Record::Gc { slot: 1 << 40 },
        ]
    }

    fn encode_file(records: &[Record]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let mut scratch = Writer::new();
        for r in records {
            encode_record(&mut out, &mut scratch, r);
        }
        out
    }

    /// Where each record starts in `encode_file(records)`, and where the file ends.
    fn boundaries(records: &[Record]) -> Vec<usize> {
        (0..=records.len()).map(|k| encode_file(&records[..k]).len()).collect()
    }

    fn open(disk: &MemStorage) -> (DurableLog, Scan) {
        DurableLog::open(disk.open(DIR, NAME).unwrap()).unwrap()
    }

    fn stat(log: &DurableLog, name: &str) -> u64 {
        let mut s = Stats::default();
        log.stats(&mut s);
        s.get(name).unwrap()
    }

    /// Records from seeds, for quickcheck: every kind, any numbers, bodies of any bytes.
    fn records_from(seeds: &[(u8, u64, u64, Vec<u8>)]) -> Vec<Record> {
        seeds
            .iter()
            .map(|(k, a, b, bytes)| match k % 3 {
                0 => Record::Entry(Entry {
                    slot: *a,
                    ballot: *b,
                    tag: SafeTag { sender: MemberId::new(MemberId::sim(*k as u16).addr(), *b), view: a / 3, id: a ^ b },
                    body: Bytes::copy_from_slice(bytes),
                }),
                1 => {
                    Record::View {
                        ballot: *a,
                        members: bytes
                            .iter()
                            .map(|&n| {
                                if n % 2 == 0 {
                                    MemberId::sim(n.into()).addr()
                                } else {
                                    SocketAddr::new(Ipv6Addr::from(*b as u128 * n as u128).into(), n.into())
                                }
                            })
                            .collect(),
                    }
                }
                _ => Record::Gc { slot: *a },
            })
            .collect()
    }

    #[test]
    fn every_record_kind_round_trips() {
        let disk = MemStorage::new();
        let (mut log, first) = open(&disk);
        assert_eq!(first, Scan { records: Vec::new(), damage: None });
        assert_eq!(disk.durable(DIR, NAME).unwrap(), MAGIC, "a new file gets its header, synced");
        for r in every_kind() {
            log.push(&r);
        }
        log.commit(true).unwrap();
        assert_eq!(log.len(), disk.durable(DIR, NAME).unwrap().len() as u64);
        assert_eq!(disk.durable(DIR, NAME).unwrap(), encode_file(&every_kind()));
        drop(log);
        let (log, again) = open(&disk);
        assert_eq!(again, Scan { records: every_kind(), damage: None });
        assert_eq!(stat(&log, "rewrites"), 0, "a clean file is not rewritten");
        assert_eq!(log.describe(), format!("mem:{DIR}/{NAME}"));
    }

    #[test]
    fn the_format_is_the_documented_one() {
        // The examples of docs/safe-log.md, byte for byte.
        let gc = [0xa5, 0x03, 0x00, 0x00, 0x00, 0x82, 0xf5, 0xbb, 0x11, 0x03, 0xac, 0x02];
        assert_eq!(encode_file(&[Record::Gc { slot: 300 }]), [&MAGIC[..], &gc].concat());
        assert_eq!(&MAGIC, b"STRSAFE\x01");
        // An entry: kind, slot 1, ballot 3, sender 10.0.0.1:7000 incarnation 0, view 2, id 2, body length 2, body.
        let entry_bytes = [
            0xa5, 0x10, 0x00, 0x00, 0x00, 0x38, 0x4f, 0x50, 0xc1, 0x01, 0x01, 0x03, 0x04, 0x0a, 0x00, 0x00, 0x01, 0x1b, 0x58, 0x00, 0x02, 0x02, 0x02, b'h',
            b'i',
        ];
        assert_eq!(encode_file(&[entry(1, b"hi")]), [&MAGIC[..], &entry_bytes].concat());
        // A view: kind, ballot 5, two addresses (10.0.0.1:7000 and [::1]:9000).
        let view = Record::View { ballot: 5, members: vec![MemberId::sim(1).addr(), "[::1]:9000".parse().unwrap()] };
        let mut payload = vec![0x02, 0x05, 0x02, 0x04, 0x0a, 0x00, 0x00, 0x01, 0x1b, 0x58, 0x06];
        payload.extend_from_slice(&[0; 15]);
        payload.extend_from_slice(&[0x01, 0x23, 0x28]);
        assert_eq!(&encode_file(&[view])[MAGIC.len() + RECORD_HEADER_LEN..], &payload[..]);
    }

    #[test]
    fn many_records_and_big_bodies_round_trip() {
        let disk = MemStorage::new();
        let (mut log, _) = open(&disk);
        let mut expected = Vec::new();
        for slot in 0..5000u64 {
            let body: Vec<u8> = (0..slot % 97).map(|i| (i * slot) as u8).collect();
            expected.push(entry(slot, &body));
        }
        let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        expected.push(entry(5000, &big));
        expected.push(entry(5001, &big[..1 << 20]));
        expected.push(Record::Gc { slot: 4000 });
        for batch in expected.chunks(64) {
            for r in batch {
                log.push(r);
            }
            log.commit(true).unwrap();
        }
        assert!(log.queue.capacity() <= QUEUE_KEEP_BYTES, "the write buffer gives back what a big message took");
        drop(log);
        let (_, scan) = open(&disk);
        assert_eq!(scan.damage, None);
        assert!(scan.records == expected, "{} records read back, {} written", scan.records.len(), expected.len());
    }

    #[test]
    fn group_commit_appends_once_and_syncs_once() {
        let disk = MemStorage::new();
        let (mut log, _) = open(&disk);
        assert_eq!((stat(&log, "syncs"), stat(&log, "bytes_written")), (1, 8), "the header of a new file");
        for slot in 0..50 {
            log.push(&entry(slot, b"batched"));
        }
        assert_eq!(disk.durable(DIR, NAME).unwrap().len(), 8, "push writes nothing");
        assert_eq!(log.len(), 8);
        log.commit(true).unwrap();
        assert_eq!(stat(&log, "syncs"), 2, "one sync for the whole batch");
        assert_eq!(stat(&log, "records_written"), 50);
        assert_eq!(stat(&log, "bytes_written"), log.len());
        assert_eq!(disk.durable(DIR, NAME).unwrap().len() as u64, log.len(), "durable once committed");

        log.commit(true).unwrap();
        assert_eq!(stat(&log, "syncs"), 2, "nothing new: no sync");
        log.push(&Record::Gc { slot: 10 });
        log.commit(false).unwrap();
        assert_eq!(stat(&log, "syncs"), 2, "commit(false) does not sync");
        assert!((disk.durable(DIR, NAME).unwrap().len() as u64) < log.len(), "appended, not yet durable");
        log.commit(true).unwrap();
        assert_eq!(stat(&log, "syncs"), 3, "a later commit(true) syncs what commit(false) appended");
        assert_eq!(disk.durable(DIR, NAME).unwrap().len() as u64, log.len());
    }

    #[test]
    fn a_warm_log_reuses_its_write_buffer() {
        let disk = MemStorage::new();
        let (mut log, _) = open(&disk);
        let record = entry(9, &[7; 300]);
        log.push(&record);
        log.commit(false).unwrap();
        let (ptr, capacity) = (log.queue.as_ptr(), log.queue.capacity());
        for _ in 0..100 {
            log.push(&record);
            log.commit(false).unwrap();
        }
        assert_eq!((log.queue.as_ptr(), log.queue.capacity()), (ptr, capacity), "the same buffer every time");
    }

    #[test]
    fn a_torn_write_at_every_cut_is_found_and_repaired() {
        let synced = [entry(1, b"one"), Record::View { ballot: 1, members: vec![MemberId::sim(1).addr()] }, entry(2, b"two")];
        let batch = vec![entry(3, b"three"), Record::Gc { slot: 1 }, entry(4, &[0xA5; 40])];
        let all: Vec<Record> = synced.iter().chain(&batch).cloned().collect();
        let ends = boundaries(&all);
        let synced_len = ends[synced.len()];
        for cut in 0..=ends[all.len()] - synced_len {
            let disk = MemStorage::new();
            let (mut log, _) = open(&disk);
            synced.iter().for_each(|r| log.push(r));
            log.commit(true).unwrap();
            batch.iter().for_each(|r| log.push(r));
            log.commit(false).unwrap();
            disk.crash(CrashTail::Torn(cut));
            drop(log);

            let (mut log, scan) = open(&disk);
            let file_end = synced_len + cut;
            let complete = ends.iter().rposition(|&e| e <= file_end).unwrap();
            assert_eq!(scan.records, all[..complete], "cut {cut}: every complete record, nothing else");
            let good = ends[complete];
            let expected = (good < file_end).then_some(Damage::TornTail { offset: good as u64, bytes: (file_end - good) as u64 });
            assert_eq!(scan.damage, expected, "cut {cut}");
            assert_eq!(log.len(), good as u64, "cut {cut}: the torn record is cut off");

            log.push(&Record::Gc { slot: 99 });
            log.commit(true).unwrap();
            drop(log);
            let (_, after) = open(&disk);
            assert_eq!(after.damage, None, "cut {cut}: the repaired log scans clean");
            assert_eq!(after.records.len(), complete + 1);
            assert_eq!(after.records.last(), Some(&Record::Gc { slot: 99 }));
        }
    }

    /// The record that byte `at` belongs to, given the record boundaries.
    fn record_at(ends: &[usize], at: usize) -> usize {
        ends.iter().rposition(|&e| e <= at).unwrap()
    }

    /// Checks that a damaged copy of `records` is never read as something else:
    /// the header is refused, or the scan keeps exactly the records before the
    /// damaged one and reports it (as corruption unless it is the last).
    fn damage_is_caught(records: &[Record], damaged: &[u8], at: usize) -> Result<(), String> {
        let scan = match scan(damaged) {
            Err(reason) if at < MAGIC.len() => return if reason.contains("SAFE log") { Ok(()) } else { Err(reason) },
            Err(reason) => return Err(format!("byte {at}: refused ({reason})")),
            Ok(_) if at < MAGIC.len() => return Err(format!("byte {at}: a damaged header was accepted")),
            Ok(scan) => scan,
        };
        let ends = boundaries(records);
        let k = record_at(&ends, at);
        if scan.records != records[..k] {
            return Err(format!("byte {at} (record {k}): read {} records, expected the {k} before it", scan.records.len()));
        }
        let bytes = (damaged.len() - ends[k]) as u64;
        match scan.damage {
            Some(Damage::Corrupt { offset, ignored_bytes, .. }) if offset == ends[k] as u64 && ignored_bytes == bytes => Ok(()),
            Some(Damage::TornTail { offset, bytes: b }) if k + 1 == records.len() && offset == ends[k] as u64 && b == bytes => Ok(()),
            other => Err(format!("byte {at} (record {k} of {}): {other:?}", records.len())),
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_never_applied_silently() {
        let records =
            vec![entry(1, b"first body"), Record::View { ballot: 2, members: vec![MemberId::sim(1).addr(), MemberId::sim(2).addr()] }, Record::Gc { slot: 1 }];
        let file = encode_file(&records);
        let mut corrupt = 0;
        for at in 0..file.len() {
            for bit in 0..8 {
                let mut damaged = file.clone();
                damaged[at] ^= 1 << bit;
                damage_is_caught(&records, &damaged, at).unwrap();
                corrupt += matches!(scan(&damaged), Ok(Scan { damage: Some(Damage::Corrupt { .. }), .. })) as usize;
            }
        }
        let first_two = boundaries(&records)[2] - MAGIC.len();
        assert!(corrupt >= first_two * 8, "every flip before the last record is corruption ({corrupt})");
    }

    #[test]
    fn a_corrupt_record_in_the_middle_is_reported_and_cut_at_open() {
        let records: Vec<Record> = (0..5).map(|s| entry(s, b"payload")).collect();
        let ends = boundaries(&records);
        let mut file = encode_file(&records);
        file[ends[2] + 12] ^= 0x10; // inside the checksum of record 2
        let disk = MemStorage::new();
        disk.set(DIR, NAME, file.clone());
        let (mut log, scan) = open(&disk);
        assert_eq!(scan.records, records[..2]);
        assert_eq!(scan.damage, Some(Damage::Corrupt { offset: ends[2] as u64, ignored_bytes: (file.len() - ends[2]) as u64, reason: "checksum mismatch" }));
        assert_eq!(disk.durable(DIR, NAME).unwrap(), file[..ends[2]], "cut back to the good prefix");
        assert_eq!(stat(&log, "rewrites"), 1);
        log.push(&entry(9, b"after"));
        log.commit(true).unwrap();
        drop(log);
        let (_, again) = open(&disk);
        assert_eq!(again.damage, None);
        assert_eq!(again.records, [&records[..2], &[entry(9, b"after")][..]].concat());
    }

    #[test]
    fn a_length_running_past_the_end_is_corruption_when_a_record_follows() {
        let records: Vec<Record> = (0..3).map(|s| entry(s, b"body")).collect();
        let ends = boundaries(&records);
        let mut file = encode_file(&records);
        file[ends[0] + 3] = 0x10; // record 0 now claims about a megabyte
        let s = scan(&file).unwrap();
        assert_eq!(s.records, []);
        assert!(matches!(s.damage, Some(Damage::Corrupt { offset: 8, reason: "truncated record", .. })), "{:?}", s.damage);
        // The same record alone at the end looks like a torn write.
        let alone = &file[..ends[1]];
        assert_eq!(scan(alone).unwrap().damage, Some(Damage::TornTail { offset: 8, bytes: (ends[1] - 8) as u64 }));
    }

    #[test]
    fn zeros_after_the_last_record_are_a_torn_tail() {
        // Some file systems extend a file before its data reaches the disk.
        let records = vec![entry(1, b"x")];
        let mut file = encode_file(&records);
        let good = file.len();
        file.extend_from_slice(&[0; 4096]);
        assert_eq!(scan(&file).unwrap(), Scan { records, damage: Some(Damage::TornTail { offset: good as u64, bytes: 4096 }) });
    }

    #[test]
    fn a_hostile_length_is_not_an_allocation() {
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&[MARKER, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, kind::ENTRY]);
        file.extend_from_slice(&[0x55; 64]);
        let s = scan(&file).unwrap();
        assert_eq!(s.damage, Some(Damage::Corrupt { offset: 8, ignored_bytes: 74, reason: "record length beyond the maximum" }));

        // Within the maximum but far past the end: the start of a torn record.
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&[MARKER]);
        file.extend_from_slice(&(MAX_RECORD_LEN as u32).to_le_bytes());
        file.extend_from_slice(&[0; 4]);
        file.extend_from_slice(&[kind::VIEW, 1, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(scan(&file).unwrap().damage, Some(Damage::TornTail { offset: 8, bytes: 16 }));

        // A view whose address count is huge, inside a record whose checksum is right.
        let payload = [kind::VIEW, 1, 0xff, 0xff, 0xff, 0xff, 0x0f];
        let mut file = MAGIC.to_vec();
        file.push(MARKER);
        file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        file.extend_from_slice(&payload);
        assert_eq!(scan(&file).unwrap().damage, Some(Damage::Corrupt { offset: 8, ignored_bytes: 16, reason: "undecodable record" }));
    }

    #[test]
    fn rewrite_then_crash_leaves_old_or_new_never_a_mix() {
        let old: Vec<Record> = (0..20).map(|s| entry(s, b"old")).collect();
        let new = vec![Record::Gc { slot: 15 }, entry(16, b"old"), entry(17, b"old")];
        let disk = MemStorage::new();
        let (mut log, _) = open(&disk);
        old.iter().for_each(|r| log.push(r));
        log.commit(true).unwrap();
        let queued = entry(21, b"queued");
        log.push(&queued);
        log.rewrite(&new).unwrap();
        assert_eq!(log.len(), encode_file(&new).len() as u64);
        assert_eq!(stat(&log, "rewrites"), 1);
        disk.crash(CrashTail::Lost);
        drop(log);
        let (mut log, scan) = open(&disk);
        assert_eq!(scan, Scan { records: new.clone(), damage: None }, "exactly the new contents");

        // Queued records survive a rewrite and follow it.
        log.rewrite(&old).unwrap();
        log.push(&queued);
        log.rewrite(&new).unwrap();
        log.commit(true).unwrap();
        drop(log);
        let (_, scan) = open(&disk);
        assert_eq!(scan.records, [&new[..], &[queued][..]].concat());

        // A crash before the rewrite leaves the old contents.
        let disk = MemStorage::new();
        let (mut log, _) = open(&disk);
        old.iter().for_each(|r| log.push(r));
        log.commit(true).unwrap();
        disk.crash(CrashTail::Torn(usize::MAX));
        assert!(log.rewrite(&new).is_err(), "a crashed log writes nothing");
        drop(log);
        assert_eq!(open(&disk).1, Scan { records: old, damage: None });
    }

    #[test]
    fn a_foreign_file_is_refused_and_left_untouched() {
        for (content, hint) in [
            (b"#!/bin/sh\necho this is not a log\n".to_vec(), "bad header"),
            (b"STRSAFE\x02\xa5\x01\x00\x00\x00".to_vec(), "format version 2 is not supported"),
            (b"ST\x00".to_vec(), "bad header"),
            (vec![0xA5; 100], "bad header"),
        ] {
            let disk = MemStorage::new();
            disk.set(DIR, NAME, content.clone());
            let err = DurableLog::open(disk.open(DIR, NAME).unwrap()).err().expect("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            let text = err.to_string();
            assert!(text.contains(hint) && text.contains(NAME), "{text}");
            assert_eq!(disk.durable(DIR, NAME).unwrap(), content, "untouched");
        }
    }

    #[test]
    fn a_torn_header_is_repaired() {
        let disk = MemStorage::new();
        disk.set(DIR, NAME, MAGIC[..5].to_vec());
        let (mut log, scan) = open(&disk);
        assert_eq!(scan, Scan { records: Vec::new(), damage: Some(Damage::TornTail { offset: 0, bytes: 5 }) });
        assert_eq!(disk.durable(DIR, NAME).unwrap(), MAGIC);
        log.push(&Record::Gc { slot: 1 });
        log.commit(true).unwrap();
        drop(log);
        assert_eq!(open(&disk).1, Scan { records: vec![Record::Gc { slot: 1 }], damage: None });
    }

    /// A file whose appends, syncs or replaces fail on demand.
    struct Flaky {
        data: Vec<u8>,
        fail_append: bool,
        fail_sync: bool,
    }

    struct FlakyFile(std::sync::Arc<std::sync::Mutex<Flaky>>);

    impl FlakyFile {
        fn lock(&self) -> std::sync::MutexGuard<'_, Flaky> {
            self.0.lock().unwrap()
        }
    }

    impl LogFile for FlakyFile {
        fn read_all(&mut self) -> io::Result<Vec<u8>> {
            Ok(self.lock().data.clone())
        }
        fn append(&mut self, data: &[u8]) -> io::Result<()> {
            let mut f = self.lock();
            if f.fail_append {
                // Part of it got there.
                f.data.extend_from_slice(&data[..data.len() / 2]);
                return Err(io::Error::other("disk full"));
            }
            f.data.extend_from_slice(data);
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            if self.lock().fail_sync {
                return Err(io::Error::other("EIO"));
            }
            Ok(())
        }
        fn replace(&mut self, data: &[u8]) -> io::Result<()> {
            self.lock().data = data.to_vec();
            Ok(())
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    #[test]
    fn a_failed_write_stops_appends_until_a_rewrite() {
        for fail_sync in [false, true] {
            let file = std::sync::Arc::new(std::sync::Mutex::new(Flaky { data: Vec::new(), fail_append: false, fail_sync: false }));
            let (mut log, _) = DurableLog::open(Box::new(FlakyFile(file.clone()))).unwrap();
            log.push(&entry(1, b"kept"));
            log.commit(true).unwrap();
            {
                let mut f = file.lock().unwrap();
                f.fail_append = !fail_sync;
                f.fail_sync = fail_sync;
            }
            log.push(&entry(2, b"lost"));
            assert!(log.commit(true).is_err());
            {
                let mut f = file.lock().unwrap();
                f.fail_append = false;
                f.fail_sync = false;
            }
            let len_before = file.lock().unwrap().data.len();
            log.push(&entry(3, b"refused"));
            let err = log.commit(true).unwrap_err();
            assert!(err.to_string().contains("earlier write failed"), "{err}");
            assert_eq!(file.lock().unwrap().data.len(), len_before, "nothing appended after a failure");

            log.rewrite(&[entry(1, b"kept")]).unwrap();
            log.push(&entry(4, b"after"));
            log.commit(true).unwrap();
            assert_eq!(scan(&file.lock().unwrap().data).unwrap(), Scan { records: vec![entry(1, b"kept"), entry(4, b"after")], damage: None });
        }
    }

    #[test]
    fn fs_storage_round_trip_torn_tail_and_rewrite() {
        let dir = std::env::temp_dir().join(format!("strata-safelog-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir); // left by an earlier failed run with this pid
        let d = dir.to_str().unwrap();
        let records = every_kind();
        let (mut log, scan0) = DurableLog::open(FsStorage.open(d, NAME).unwrap()).unwrap();
        assert_eq!(scan0.records, []);
        records.iter().for_each(|r| log.push(r));
        log.commit(true).unwrap();
        assert!(log.describe().ends_with(NAME));
        drop(log);

        // A write cut short, as a crash would leave it.
        let path = dir.join(NAME);
        let torn = &encode_file(&[entry(5, b"never synced")])[MAGIC.len()..][..12];
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(torn).unwrap();
            f.sync_all().unwrap();
        }
        let (mut log, scan1) = DurableLog::open(FsStorage.open(d, NAME).unwrap()).unwrap();
        assert_eq!(scan1.records, records);
        assert!(matches!(scan1.damage, Some(Damage::TornTail { bytes: 12, .. })), "{:?}", scan1.damage);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), log.len(), "repaired on disk");

        log.rewrite(&records[2..]).unwrap();
        log.push(&Record::Gc { slot: 5 });
        log.commit(true).unwrap();
        drop(log);
        let (_, scan2) = DurableLog::open(FsStorage.open(d, NAME).unwrap()).unwrap();
        assert_eq!(scan2, Scan { records: [&records[2..], &[Record::Gc { slot: 5 }][..]].concat(), damage: None });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn random_records_round_trip() {
        fn prop(seeds: Vec<(u8, u64, u64, Vec<u8>)>) -> bool {
            let records = records_from(&seeds);
            scan(&encode_file(&records)) == Ok(Scan { records, damage: None })
        }
        QuickCheck::new().tests(500).quickcheck(prop as fn(Vec<(u8, u64, u64, Vec<u8>)>) -> bool);
    }

    #[test]
    fn random_bytes_never_panic() {
        fn prop(tail: Vec<u8>, with_header: bool) -> bool {
            let data = if with_header { [&MAGIC[..], &tail].concat() } else { tail };
            match scan(&data) {
                Ok(Scan { damage: Some(d), .. }) => {
                    let (offset, bytes) = match d {
                        Damage::TornTail { offset, bytes } => (offset, bytes),
                        Damage::Corrupt { offset, ignored_bytes, .. } => (offset, ignored_bytes),
                    };
                    offset + bytes == data.len() as u64 && bytes > 0
                }
                Ok(Scan { damage: None, .. }) => true,
                Err(_) => !with_header,
            }
        }
        QuickCheck::new().tests(3000).quickcheck(prop as fn(Vec<u8>, bool) -> bool);
    }

    #[test]
    fn random_records_after_a_valid_header_never_panic() {
        // Bytes that look like records (right marker, small lengths) reach the decoders.
        fn prop(pieces: Vec<(u8, Vec<u8>, bool)>) -> bool {
            let mut data = MAGIC.to_vec();
            for (kind, payload, good_crc) in &pieces {
                let mut p = vec![kind % 4];
                p.extend_from_slice(payload);
                data.push(MARKER);
                data.extend_from_slice(&(p.len() as u32).to_le_bytes());
                let crc = if *good_crc { crc32fast::hash(&p) } else { 0 };
                data.extend_from_slice(&crc.to_le_bytes());
                data.extend_from_slice(&p);
            }
            let s = scan(&data).unwrap();
            s.records.len() <= pieces.len()
        }
        QuickCheck::new().tests(3000).quickcheck(prop as fn(Vec<(u8, Vec<u8>, bool)>) -> bool);
    }

    #[test]
    fn a_damaged_byte_in_a_random_log_is_never_applied_silently() {
        fn prop(seeds: Vec<(u8, u64, u64, Vec<u8>)>, at: usize, xor: u8) -> TestResult {
            let records = records_from(&seeds);
            let mut file = encode_file(&records);
            if xor == 0 || records.is_empty() {
                return TestResult::discard();
            }
            let at = at % file.len();
            file[at] ^= xor;
            match damage_is_caught(&records, &file, at) {
                Ok(()) => TestResult::passed(),
                Err(why) => TestResult::error(why),
            }
        }
        QuickCheck::new().tests(2000).quickcheck(prop as fn(Vec<(u8, u64, u64, Vec<u8>)>, usize, u8) -> TestResult);
    }
}
