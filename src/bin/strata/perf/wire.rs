//! The front of every `strata perf` payload: what a receiver needs to time
//! a delivery without asking the sender.
//!
//! ```text
//!  0               8               16      20
//! +---------------+---------------+-------+----------------------+
//! | send time ns  | host id       |sender | filler up to --size  |
//! +---------------+---------------+-------+----------------------+
//!   u64 LE          u64 LE          u32 LE
//! ```
//!
//! The send time is the sender's `CLOCK_MONOTONIC` ([`monotonic_ns`]), which
//! only means something on the sender's host: a receiver times a delivery
//! only when the host id is its own. The host id is a hash of the kernel's
//! boot id, the same in every process and network namespace of one boot of
//! one machine, which is exactly where `CLOCK_MONOTONIC` is shared.

use crate::jsonl::monotonic_ns;
use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of the header; `--size` may not be smaller.
pub const HEADER_LEN: usize = 20;

/// The header of one payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The sender's `CLOCK_MONOTONIC` just before the cast, in nanoseconds.
    pub sent_ns: u64,
    /// The sender's host ([`host_id`]).
    pub host: u64,
    /// The sender's index in the run.
    pub sender: u32,
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.sent_ns.to_le_bytes());
        out[8..16].copy_from_slice(&self.host.to_le_bytes());
        out[16..20].copy_from_slice(&self.sender.to_le_bytes());
    }

    /// Reads the header at the front of `payload`; `None` if it is too short.
    pub fn read(payload: &[u8]) -> Option<Header> {
        let head: &[u8; HEADER_LEN] = payload.get(..HEADER_LEN)?.try_into().ok()?;
        let u64_at =
            |at: usize| u64::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3], head[at + 4], head[at + 5], head[at + 6], head[at + 7]]);
        Some(Header { sent_ns: u64_at(0), host: u64_at(8), sender: u32::from_le_bytes([head[16], head[17], head[18], head[19]]) })
    }
}

/// Builds payloads of one size for one sender: the header stamped now,
/// then filler copied from a template made once.
pub struct PayloadMaker {
    template: Vec<u8>,
    host: u64,
    sender: u32,
    /// Payloads are carved from here, as many as fit [`CHUNK_BYTES`] (at least one).
    chunk: BytesMut,
}

/// The buffer payloads share: the stack clones each payload it keeps for
/// retransmission, and a clone of a carved (shared) buffer is a reference
/// count, where one of a payload built from its own `Vec` allocates
/// (`bytes` moves it to shared storage). A buffer is freed once all of its
/// payloads are stable, so it is kept small next to the send window.
const CHUNK_BYTES: usize = 256 << 10;

impl PayloadMaker {
    /// Payloads of `size` bytes (at least [`HEADER_LEN`]) from `sender` on `host`.
    pub fn new(size: usize, host: u64, sender: u32) -> PayloadMaker {
        debug_assert!(size >= HEADER_LEN, "the plan refuses smaller sizes");
        // Filler that is not all zeros, so that no layer or link can shrink it.
        let template = (0..size.max(HEADER_LEN)).map(|j| (j as u64).wrapping_mul(31) as u8).collect();
        PayloadMaker { template, host, sender, chunk: BytesMut::new() }
    }

    /// The header for a payload sent now.
    pub fn header_now(&self) -> Header {
        Header { sent_ns: monotonic_ns(), host: self.host, sender: self.sender }
    }

    /// A payload stamped now. The stack keeps it until the cast is stable,
    /// so it is never reused: each is carved from a buffer shared with the
    /// next few (one allocation per [`CHUNK_BYTES`] of payloads).
    pub fn make(&mut self) -> Bytes {
        let len = self.template.len();
        if self.chunk.capacity() < len {
            self.chunk = BytesMut::with_capacity(len.max(CHUNK_BYTES / len * len));
        }
        let header = self.header_now();
        self.chunk.put_slice(&self.template);
        header.write(&mut self.chunk[..HEADER_LEN]);
        self.chunk.split().freeze()
    }

    /// Stamps the template in place and returns it (for the baseline, which
    /// hands the bytes to the kernel at once).
    pub fn stamp(&mut self) -> &[u8] {
        let header = self.header_now();
        header.write(&mut self.template[..HEADER_LEN]);
        &self.template
    }
}

/// This host's id: a hash of `/proc/sys/kernel/random/boot_id` (or of the
/// host name if that cannot be read; 0 if neither can).
pub fn host_id() -> u64 {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").or_else(|_| std::fs::read_to_string("/etc/hostname")).unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        0
    } else {
        strata::codec::fnv1a64(text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_short_payloads_have_none() {
        let h = Header { sent_ns: 0x0102_0304_0506_0708, host: u64::MAX - 5, sender: 77 };
        let mut buf = [0u8; 24];
        h.write(&mut buf);
        assert_eq!(Header::read(&buf), Some(h));
        assert_eq!(Header::read(&buf[..HEADER_LEN]), Some(h));
        assert_eq!(Header::read(&buf[..HEADER_LEN - 1]), None);
        assert_eq!(Header::read(&[]), None);
    }

    #[test]
    fn payloads_are_carved_from_shared_buffers_and_never_overlap() {
        let mut maker = PayloadMaker::new(100, 9, 3);
        let per_chunk = CHUNK_BYTES / 100;
        let payloads: Vec<Bytes> = (0..2 * per_chunk + 5).map(|_| maker.make()).collect();
        for (k, p) in payloads.iter().enumerate() {
            assert_eq!(p.len(), 100);
            assert_eq!(Header::read(p).map(|h| (h.host, h.sender)), Some((9, 3)), "payload {k}");
            assert_eq!(&p[HEADER_LEN..], &maker.template[HEADER_LEN..], "payload {k}'s filler");
        }
        // Within a buffer, each payload follows the previous one.
        for pair in payloads[..per_chunk].windows(2) {
            assert_eq!(pair[1].as_ptr(), pair[0].as_ptr().wrapping_add(100));
        }
        // A payload larger than a buffer gets one to itself, no more.
        let mut big = PayloadMaker::new(CHUNK_BYTES * 2, 9, 3);
        assert_eq!(big.make().len(), CHUNK_BYTES * 2);
        assert_eq!(big.chunk.capacity(), 0);
        let stamps: Vec<u64> = payloads.iter().map(|p| Header::read(p).unwrap().sent_ns).collect();
        assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "stamped in order");
    }

    #[test]
    fn payloads_have_the_size_and_a_fresh_stamp() {
        let mut maker = PayloadMaker::new(100, 9, 3);
        let before = monotonic_ns();
        let p = maker.make();
        assert_eq!(p.len(), 100);
        let h = Header::read(&p).unwrap();
        assert_eq!((h.host, h.sender), (9, 3));
        assert!(h.sent_ns >= before && h.sent_ns <= monotonic_ns());
        assert_eq!(p[50], (50u64 * 31) as u8);
        let stamped = maker.stamp().to_vec();
        assert_eq!(stamped.len(), 100);
        assert!(Header::read(&stamped).unwrap().sent_ns >= h.sent_ns);
        assert_eq!(PayloadMaker::new(HEADER_LEN, 1, 0).make().len(), HEADER_LEN);
    }

    #[test]
    fn the_host_id_is_stable_within_a_boot() {
        assert_eq!(host_id(), host_id());
    }
}
