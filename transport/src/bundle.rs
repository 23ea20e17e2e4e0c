//! Bundling: the frames a driver round hands to a datagram transport for one
//! destination leave packed into as few datagrams as possible, as JGroups'
//! bundler (in `TP`) and Horus's packing do. Used by [`udp`](crate::udp) and
//! [`ipmc`](crate::ipmc); the wire format and the receiving side are public
//! so that tests and other transports can use them.
//!
//! ## What it guarantees
//! - **Bounded delay, no timer.** Frames given to `send`/`cast` during one
//!   driver round are queued per destination address; at
//!   [`Transport::flush`](strata_stack::runtime::Transport::flush), which the
//!   driver calls once at the end of every round (one pass over its inputs:
//!   at most a batch of commands per group and one batch of datagrams), every
//!   queue leaves. Bundling delays a frame by at most the rest of its round.
//! - **Order.** A destination's frames leave in the order they were queued,
//!   and a bundle hands them out in that order. A frame too large for a
//!   bundle (more than the limit with its length prefix and the marker) goes
//!   alone, in its place in the order.
//! - **No overhead when there is nothing to pack.** A datagram that would
//!   hold a single frame is sent as the plain frame, without the marker or
//!   its length: a quiet group's traffic is exactly as without bundling.
//! - **Size.** A bundle is at most the configured limit in bytes (the
//!   `bundle` field of [`UdpConfig`](crate::udp::UdpConfig) and
//!   [`IpmcConfig`](crate::ipmc::IpmcConfig), default
//!   [`DEFAULT_BUNDLE_BYTES`]; 0 turns bundling off). A frame larger than it
//!   goes alone, unwrapped.
//!
//! ## Wire format
//! ```text
//! +------+-----------------+---------+-----------------+---------+----
//! | 0xBD | length (varint) | frame   | length (varint) | frame   | ...
//! +------+-----------------+---------+-----------------+---------+----
//! ```
//! The marker [`BUNDLE_MAGIC`] (0xBD) is the first byte of no frame (frames
//! start with [`FRAME_MAGIC`], 0xA1) and of no IP multicast discovery
//! datagram ([`DISCOVERY_MAGIC`](crate::ipmc::DISCOVERY_MAGIC), 0xD5). Each
//! length is an unsigned LEB128 varint (one byte up to 127, two up to 16383,
//! three beyond), never zero. A receiver unbundles whatever its own
//! configuration, so members with different limits, or none, interoperate.
//!
//! ## Receiving and bad input
//! [`unbundle`] hands the frames out one by one as [`Bytes`] slices of the
//! datagram: no copy, no allocation per frame. A bundle that is empty, has
//! a truncated or oversized length, a zero length, an entry shorter than
//! the smallest frame ([`FRAME_MIN`] bytes), a length beyond its end
//! (trailing junk ends up here), or an entry that is itself a bundle is
//! malformed: the frames before the fault are kept, the rest is dropped, and
//! the transport counts it (`bundles_malformed`). Nothing a peer sends can
//! make it panic or allocate, and a datagram yields at most
//! 65 507 / ([`FRAME_MIN`] + 1) frames, so a receive batch's bookkeeping
//! stays within about 200 KB per datagram.
//!
//! ## Sending without allocation
//! The sender (`Bundler`) keeps one buffer per destination address (a small map from
//! address to buffer) whose capacity survives from round to round. A frame is
//! copied once into its destination's buffer, after a marker and a length
//! written in front of the first frame of each datagram: if the datagram ends
//! up holding that one frame, it is sent from just after them, so nothing is
//! ever moved or copied twice. After warm-up nothing is allocated per frame
//! or per round. Every [`SWEEP_FLUSHES`] flushes, destinations unused since
//! the last sweep are forgotten (a peer that is gone keeps no memory), and
//! a buffer more than twice as large as both its busiest round since then
//! and `max(2 × limit, 64 KiB)` is shrunk to the larger of the two: a
//! burst's memory is given back, a steady load never reallocates.
//!
//! ## Counters
//! Reported with the transport's: `bundles_sent` (datagrams that are
//! bundles), `frames_bundled` (frames sent inside them), `bundles_received`,
//! `frames_unbundled`, `bundles_malformed`.

use bytes::Bytes;
use socket2::SockAddr;
use std::net::SocketAddr;
use strata_stack::codec::{append_varint, varint_len, Reader};
use strata_stack::engine::{FRAME_MAGIC, FRAME_MIN};
use strata_stack::{Malformed, Stats};

/// First byte of a bundle: neither a frame's (0xA1) nor an IP multicast
/// discovery datagram's (0xD5).
pub const BUNDLE_MAGIC: u8 = 0xBD;
/// The default bundle limit of the UDP and IP multicast transports, in
/// bytes: as fast as larger limits on loopback, one jumbo (9000-byte) frame
/// on a real network, six IP fragments on a 1500-byte one (see
/// docs/transports/udp.md for the measurements and the trade-off).
pub const DEFAULT_BUNDLE_BYTES: usize = 8 << 10;
/// The largest limit: the largest UDP payload over IPv4.
pub const MAX_BUNDLE_BYTES: usize = crate::udp::MAX_DATAGRAM;
/// Every this many flushes, destinations not used since the last sweep are
/// forgotten (their buffers freed).
pub const SWEEP_FLUSHES: u64 = 1024;
/// Capacity a destination's buffer keeps between rounds at the least.
const RETAINED_BYTES: usize = 64 << 10;

const _: () = assert!(BUNDLE_MAGIC != FRAME_MAGIC && BUNDLE_MAGIC != crate::ipmc::DISCOVERY_MAGIC);

/// What [`unbundle`] found in a datagram.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Unbundled {
    /// Frames handed out.
    pub frames: usize,
    /// Why the rest of the datagram was dropped, if it was.
    pub fault: Option<Malformed>,
}

/// Whether `datagram` is a bundle (starts with [`BUNDLE_MAGIC`]).
pub fn is_bundle(datagram: &[u8]) -> bool {
    datagram.first() == Some(&BUNDLE_MAGIC)
}

/// Hands the frames of the bundle `datagram` to `frame`, in order, each a
/// slice of `datagram` (no copy). At the first fault the rest is dropped and
/// the fault returned; the frames before it have been handed out. Never
/// panics, whatever the bytes.
pub fn unbundle(datagram: &Bytes, mut frame: impl FnMut(Bytes)) -> Unbundled {
    let mut frames = 0;
    let fault = (|| {
        let mut r = Reader::new(datagram);
        if r.u8() != Ok(BUNDLE_MAGIC) {
            return Some(Malformed("not_a_bundle"));
        }
        if r.remaining() == 0 {
            return Some(Malformed("empty_bundle"));
        }
        while r.remaining() > 0 {
            let len = match r.varint() {
                Ok(len) => len,
                Err(Malformed("truncated")) => return Some(Malformed("truncated_length")),
                Err(_) => return Some(Malformed("bad_length")),
            };
            if len == 0 {
                return Some(Malformed("zero_length"));
            }
            // No frame is shorter: tiny entries would only multiply the
            // receiver's per-frame bookkeeping (tens of thousands per datagram).
            if len < FRAME_MIN as u64 {
                return Some(Malformed("short_frame"));
            }
            let start = r.consumed();
            if r.bytes(len as usize).is_err() {
                return Some(Malformed("length_beyond_end"));
            }
            if datagram[start] == BUNDLE_MAGIC {
                return Some(Malformed("nested_bundle"));
            }
            frame(datagram.slice(start..start + len as usize));
            frames += 1;
        }
        None
    })();
    Unbundled { frames, fault }
}

/// The bundling counters of a transport.
#[derive(Default, Debug, Clone)]
pub(crate) struct BundleCounters {
    bundles_sent: u64,
    frames_bundled: u64,
    bundles_received: u64,
    frames_unbundled: u64,
    bundles_malformed: u64,
}

impl BundleCounters {
    pub(crate) fn report(&self, out: &mut Stats) {
        out.add("bundles_sent", self.bundles_sent)
            .add("frames_bundled", self.frames_bundled)
            .add("bundles_received", self.bundles_received)
            .add("frames_unbundled", self.frames_unbundled)
            .add("bundles_malformed", self.bundles_malformed);
    }
}

/// Appends a received datagram to `out`: a bundle as its frames (each with
/// the datagram's source), anything else as it is.
pub(crate) fn receive(from: SocketAddr, datagram: Bytes, out: &mut Vec<(SocketAddr, Bytes)>, counters: &mut BundleCounters) {
    if !is_bundle(&datagram) {
        out.push((from, datagram));
        return;
    }
    counters.bundles_received += 1;
    let got = unbundle(&datagram, |frame| out.push((from, frame)));
    counters.frames_unbundled += got.frames as u64;
    if let Some(fault) = got.fault {
        counters.bundles_malformed += 1;
        tracing::debug!(%from, len = datagram.len(), kept = got.frames, reason = fault.0, "dropped the rest of a malformed bundle");
    }
}

/// One datagram being built in a destination's buffer: it starts at
/// `start` with the marker and the first frame's length (`header` bytes).
struct Datagram {
    start: usize,
    header: usize,
    frames: usize,
    /// Holds a frame that must not share a datagram: one larger than the
    /// limit, or one a receiver would not take as a bundle entry (empty, or
    /// starting with the marker).
    alone: bool,
}

/// The frames queued for one destination.
struct Queue {
    addr: SocketAddr,
    to: SockAddr,
    /// Datagrams back to back, each in wire format (see [`Datagram`]).
    bytes: Vec<u8>,
    datagrams: Vec<Datagram>,
    /// Used since the last sweep.
    used: bool,
    /// The most bytes queued in one round since the last sweep.
    peak: usize,
}

/// One datagram ready to leave: a range of a queue's bytes.
struct Outgoing {
    queue: usize,
    start: usize,
    end: usize,
}

/// Queues frames per destination during a round and packs them into
/// datagrams of at most `limit` bytes (see the module docs).
pub(crate) struct Bundler {
    limit: usize,
    queues: Vec<Queue>,
    index: hashbrown::HashMap<SocketAddr, usize>,
    /// Queues with frames this round, in order of first use.
    active: Vec<usize>,
    /// Bytes in every queue, markers and lengths included.
    queued_bytes: usize,
    /// The datagrams of the flush under way (see [`Bundler::seal`]).
    outgoing: Vec<Outgoing>,
    flushes: u64,
}

impl Bundler {
    /// A bundler making datagrams of at most `limit` bytes (1..=[`MAX_BUNDLE_BYTES`]).
    pub(crate) fn new(limit: usize) -> Bundler {
        debug_assert!(limit > 0, "bundling off is no bundler");
        Bundler {
            limit: limit.min(MAX_BUNDLE_BYTES),
            queues: Vec::new(),
            index: hashbrown::HashMap::new(),
            active: Vec::new(),
            queued_bytes: 0,
            outgoing: Vec::new(),
            flushes: 0,
        }
    }

    /// Bytes queued, markers and lengths included.
    #[cfg(test)]
    fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Queues `frame` (its slices, `len` bytes in all) for `to`.
    pub(crate) fn push(&mut self, to: SocketAddr, frame: &[&[u8]], len: usize) {
        let i = match self.index.get(&to) {
            Some(&i) => i,
            None => {
                self.queues.push(Queue { addr: to, to: SockAddr::from(to), bytes: Vec::new(), datagrams: Vec::new(), used: false, peak: 0 });
                self.index.insert(to, self.queues.len() - 1);
                self.queues.len() - 1
            }
        };
        let q = &mut self.queues[i];
        if q.datagrams.is_empty() {
            self.active.push(i);
        }
        q.used = true;
        let entry = varint_len(len as u64) + len;
        let before = q.bytes.len();
        // A receiver takes no entry shorter than a frame, nor one that starts with the marker.
        let first = frame.iter().find(|s| !s.is_empty()).map(|s| s[0]);
        let bundleable = len >= FRAME_MIN && first != Some(BUNDLE_MAGIC);
        match q.datagrams.last_mut() {
            Some(d) if bundleable && !d.alone && before - d.start + entry <= self.limit => d.frames += 1,
            _ => {
                let alone = !bundleable || 1 + entry > self.limit;
                q.datagrams.push(Datagram { start: before, header: 1 + varint_len(len as u64), frames: 1, alone });
                q.bytes.push(BUNDLE_MAGIC);
            }
        }
        append_varint(&mut q.bytes, len as u64);
        for s in frame {
            q.bytes.extend_from_slice(s);
        }
        self.queued_bytes += q.bytes.len() - before;
    }

    /// Queues `frame` (`len` bytes in all) for each address in `to`; returns
    /// whether so much is queued ([`SEND_QUEUE_BYTES`](crate::batch::SEND_QUEUE_BYTES))
    /// that it should leave now rather than at the end of the round.
    pub(crate) fn push_all(&mut self, to: &[SocketAddr], frame: &[&[u8]], len: usize) -> bool {
        for &addr in to {
            self.push(addr, frame, len);
        }
        self.queued_bytes > crate::batch::SEND_QUEUE_BYTES
    }

    /// Lists the datagrams of everything queued, in order per destination,
    /// and counts the bundles among them. Then [`Bundler::outgoing`] gives
    /// them, and [`Bundler::clear`] forgets them once they are sent.
    pub(crate) fn seal(&mut self, counters: &mut BundleCounters) {
        self.outgoing.clear();
        for &i in &self.active {
            let q = &self.queues[i];
            for (k, d) in q.datagrams.iter().enumerate() {
                let end = q.datagrams.get(k + 1).map_or(q.bytes.len(), |next| next.start);
                let start = if d.frames == 1 {
                    d.start + d.header
                } else {
                    counters.bundles_sent += 1;
                    counters.frames_bundled += d.frames as u64;
                    d.start
                };
                self.outgoing.push(Outgoing { queue: i, start, end });
            }
        }
    }

    /// Datagrams listed by the last [`Bundler::seal`].
    pub(crate) fn outgoing_len(&self) -> usize {
        self.outgoing.len()
    }

    /// Datagram `n` of the last [`Bundler::seal`] and where it goes.
    pub(crate) fn outgoing(&self, n: usize) -> (&[u8], &SockAddr, SocketAddr) {
        let o = &self.outgoing[n];
        let q = &self.queues[o.queue];
        (&q.bytes[o.start..o.end], &q.to, q.addr)
    }

    /// Empties every queue (they were sent), keeping their buffers, and
    /// now and then forgets destinations no longer used.
    pub(crate) fn clear(&mut self) {
        for &i in &self.active {
            let q = &mut self.queues[i];
            q.peak = q.peak.max(q.bytes.len());
            q.bytes.clear();
            q.datagrams.clear();
        }
        self.active.clear();
        self.outgoing.clear();
        self.queued_bytes = 0;
        self.flushes += 1;
        if self.flushes.is_multiple_of(SWEEP_FLUSHES) {
            self.sweep();
        }
    }

    /// Forgets the destinations unused since the last sweep, and gives
    /// back the memory of past bursts.
    fn sweep(&mut self) {
        debug_assert!(self.active.is_empty(), "sweeps happen between rounds");
        let forget = self.queues.iter().any(|q| !q.used);
        if forget {
            self.queues.retain(|q| q.used);
            self.index.clear();
        }
        let retained = (2 * self.limit).max(RETAINED_BYTES);
        for (i, q) in self.queues.iter_mut().enumerate() {
            // Within twice what it needs, a buffer is left alone: shrinking
            // it to the byte would only make the next busy round grow it.
            let keep = q.peak.max(retained);
            if q.bytes.capacity() > 2 * keep {
                q.bytes.shrink_to(keep);
            }
            q.used = false;
            q.peak = 0;
            if forget {
                self.index.insert(q.addr, i);
            }
        }
    }

    /// Destinations with a buffer (for tests).
    #[cfg(test)]
    fn destinations(&self) -> usize {
        self.queues.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn frame(i: usize, len: usize) -> Vec<u8> {
        let mut f = vec![(i % 251) as u8; len];
        f[0] = FRAME_MAGIC;
        f
    }

    /// Seals and returns every datagram as (destination, bytes), then clears.
    fn drain(b: &mut Bundler, counters: &mut BundleCounters) -> Vec<(SocketAddr, Vec<u8>)> {
        b.seal(counters);
        let out = (0..b.outgoing_len()).map(|n| b.outgoing(n)).map(|(d, _, a)| (a, d.to_vec())).collect();
        b.clear();
        out
    }

    /// The frames of a datagram as a receiver sees them.
    fn frames_of(datagram: &[u8]) -> Vec<Vec<u8>> {
        if !is_bundle(datagram) {
            return vec![datagram.to_vec()];
        }
        let mut out = Vec::new();
        let got = unbundle(&Bytes::copy_from_slice(datagram), |f| out.push(f.to_vec()));
        assert_eq!(got.fault, None);
        out
    }

    #[test]
    fn a_lone_frame_is_sent_plain_and_many_are_packed_within_the_limit() {
        let mut b = Bundler::new(1000);
        let mut c = BundleCounters::default();
        b.push(addr(1), &[&frame(0, 100)], 100);
        let out = drain(&mut b, &mut c);
        assert_eq!(out, vec![(addr(1), frame(0, 100))]);
        assert_eq!((c.bundles_sent, c.frames_bundled), (0, 0));

        for i in 0..20 {
            let f = frame(i, 100);
            b.push(addr(1), &[&f[..10], &f[10..]], 100);
        }
        let out = drain(&mut b, &mut c);
        // 1 + 9 × (1 + 100) = 910 <= 1000 < 1011: nine frames per bundle.
        assert_eq!(out.iter().map(|(_, d)| d.len()).collect::<Vec<_>>(), vec![910, 910, 203]);
        let got: Vec<Vec<u8>> = out.iter().flat_map(|(_, d)| frames_of(d)).collect();
        assert_eq!(got, (0..20).map(|i| frame(i, 100)).collect::<Vec<_>>());
        assert_eq!((c.bundles_sent, c.frames_bundled), (3, 20));
        assert_eq!(b.queued_bytes(), 0);
    }

    #[test]
    fn a_round_that_queues_more_than_the_send_queue_asks_to_leave_early() {
        let mut b = Bundler::new(DEFAULT_BUNDLE_BYTES);
        let f = frame(0, 1000);
        let to = [addr(1), addr(2)];
        // Each frame is queued twice, 1002 bytes or so each time.
        let mut pushes = 0;
        while !b.push_all(&to, &[&f], f.len()) {
            pushes += 1;
            assert!(b.queued_bytes() <= crate::batch::SEND_QUEUE_BYTES);
        }
        assert!(b.queued_bytes() > crate::batch::SEND_QUEUE_BYTES);
        assert_eq!(pushes, crate::batch::SEND_QUEUE_BYTES / 2 / 1002, "{} bytes queued", b.queued_bytes());
    }

    #[test]
    fn frames_too_large_or_not_bundleable_go_alone_in_order() {
        let mut b = Bundler::new(300);
        let mut c = BundleCounters::default();
        let odd = [BUNDLE_MAGIC, 1, 2];
        let frames = [frame(0, 50), frame(1, 299), frame(2, 50), frame(3, 50), odd.to_vec(), frame(5, 50), frame(6, 1000), Vec::new(), frame(8, 50)];
        for f in &frames {
            b.push(addr(7), &[f], f.len());
        }
        let out = drain(&mut b, &mut c);
        let sizes: Vec<usize> = out.iter().map(|(_, d)| d.len()).collect();
        // 50 alone (299 does not fit after it); 299 alone, plain; 50 + 50;
        // the marker-led frame alone; 50; 1000 alone; the empty one alone; 50.
        assert_eq!(sizes, vec![50, 299, 1 + 51 + 51, 3, 50, 1000, 0, 50]);
        // The marker-led frame is sent as it is (a receiver drops it as a bad bundle).
        let got: Vec<Vec<u8>> = out.iter().flat_map(|(_, d)| if d.is_empty() || d[..] == odd { vec![d.clone()] } else { frames_of(d) }).collect();
        assert_eq!(got, frames);
        assert_eq!((c.bundles_sent, c.frames_bundled), (1, 2));
    }

    #[test]
    fn destinations_are_kept_apart_in_order_of_first_use() {
        let mut b = Bundler::new(16 << 10);
        let mut c = BundleCounters::default();
        for i in 0..10 {
            for port in [3, 1, 2] {
                b.push(addr(port), &[&frame(i + port as usize, 60)], 60);
            }
        }
        let out = drain(&mut b, &mut c);
        assert_eq!(out.iter().map(|(a, _)| a.port()).collect::<Vec<_>>(), vec![3, 1, 2]);
        for (a, d) in &out {
            let want: Vec<Vec<u8>> = (0..10).map(|i| frame(i + a.port() as usize, 60)).collect();
            assert_eq!(frames_of(d), want);
        }
    }

    #[test]
    fn buffers_keep_their_capacity_and_idle_destinations_are_forgotten() {
        let mut b = Bundler::new(1000);
        let mut c = BundleCounters::default();
        b.push(addr(1), &[&frame(0, 100)], 100);
        b.push(addr(2), &[&frame(0, 100)], 100);
        drain(&mut b, &mut c);
        let cap = b.queues[0].bytes.capacity();
        assert!(cap >= 100);
        for _ in 1..SWEEP_FLUSHES {
            b.push(addr(1), &[&frame(0, 100)], 100);
            drain(&mut b, &mut c);
        }
        // The sweep at flush 1024 saw both used (port 2 in the first round).
        assert_eq!(b.destinations(), 2);
        for _ in 0..SWEEP_FLUSHES {
            b.push(addr(1), &[&frame(0, 100)], 100);
            drain(&mut b, &mut c);
        }
        assert_eq!(b.destinations(), 1, "port 2 was idle for a whole sweep period");
        assert_eq!(b.queues[0].bytes.capacity(), cap, "the buffer was reused, not reallocated");
        b.push(addr(2), &[&frame(5, 100)], 100);
        assert_eq!(drain(&mut b, &mut c), vec![(addr(2), frame(5, 100))]);
    }

    #[test]
    fn a_burst_buffer_shrinks_back_and_a_steady_one_keeps_its_size() {
        let mut b = Bundler::new(1000);
        let mut c = BundleCounters::default();
        let round = |b: &mut Bundler, c: &mut BundleCounters, port: u16, frames: usize| {
            for i in 0..frames {
                b.push(addr(port), &[&frame(i, 100)], 100);
            }
            assert_eq!(drain(b, c).len(), frames.div_ceil(9));
        };
        // Port 1: one burst of 2000 frames, then small rounds. Port 2: 1000 frames each round.
        round(&mut b, &mut c, 1, 2000);
        round(&mut b, &mut c, 2, 1000);
        let (burst, steady) = (b.queues[0].bytes.capacity(), b.queues[1].bytes.capacity());
        assert!(burst > RETAINED_BYTES && steady > RETAINED_BYTES);
        while !b.flushes.is_multiple_of(SWEEP_FLUSHES) {
            round(&mut b, &mut c, 1, 10);
            round(&mut b, &mut c, 2, 1000);
        }
        assert_eq!(b.queues[0].bytes.capacity(), burst, "the burst was in this sweep period");
        while !b.flushes.is_multiple_of(SWEEP_FLUSHES) || b.flushes == SWEEP_FLUSHES {
            round(&mut b, &mut c, 1, 10);
            round(&mut b, &mut c, 2, 1000);
        }
        assert!(b.queues[0].bytes.capacity() <= RETAINED_BYTES, "the burst's memory was given back");
        assert_eq!(b.queues[1].bytes.capacity(), steady, "a steady load keeps its buffer");
    }

    #[test]
    fn unbundle_keeps_frames_before_a_fault() {
        let entry = |f: &[u8]| [&[f.len() as u8][..], f].concat();
        let (a, b) = (frame(1, FRAME_MIN), frame(2, FRAME_MIN + 1));
        let good = |tail: &[u8]| Bytes::from([&[BUNDLE_MAGIC][..], &entry(&a), &entry(&b), tail].concat());
        let mut nested = frame(3, FRAME_MIN);
        nested[0] = BUNDLE_MAGIC;
        let short = frame(4, FRAME_MIN - 1);
        let cases: [(Vec<u8>, usize, Option<&str>); 8] = [
            (vec![], 2, None),
            (vec![0x80], 2, Some("truncated_length")),
            (vec![0], 2, Some("zero_length")),
            (vec![FRAME_MIN as u8 + 5, FRAME_MAGIC], 2, Some("length_beyond_end")),
            (entry(&nested), 2, Some("nested_bundle")),
            (entry(&short), 2, Some("short_frame")),
            (vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], 2, Some("bad_length")),
            ([entry(&a), vec![0]].concat(), 3, Some("zero_length")),
        ];
        for (tail, frames, fault) in cases {
            let d = good(&tail);
            let mut got = Vec::new();
            let u = unbundle(&d, |f| got.push(f));
            assert_eq!(u, Unbundled { frames, fault: fault.map(Malformed) }, "tail {tail:?}");
            assert_eq!((&got[0][..], &got[1][..]), (&a[..], &b[..]));
        }
        for bad in [&[][..], &[BUNDLE_MAGIC], &[FRAME_MAGIC, 1, 1]] {
            let u = unbundle(&Bytes::copy_from_slice(bad), |_| panic!("no frame in {bad:?}"));
            assert_eq!(u.frames, 0);
            assert!(u.fault.is_some());
        }
    }

    /// Any frames, any limit: every datagram is within the limit unless it
    /// is one plain frame, and a receiver gets the frames back, in order.
    #[test]
    fn bundles_round_trip_any_frames_within_any_limit() {
        fn prop(frames: Vec<Vec<u8>>, limit: u16, split: u8) -> bool {
            let limit = usize::from(limit % 3000) + 1;
            let mut b = Bundler::new(limit);
            let mut c = BundleCounters::default();
            for f in &frames {
                let cut = (split as usize).min(f.len());
                b.push(addr(9), &[&f[..cut], &f[cut..]], f.len());
            }
            let out = drain(&mut b, &mut c);
            let mut got = Vec::new();
            for (_, d) in &out {
                if is_bundle(d) && !frames.iter().any(|f| f == d) {
                    assert!(d.len() <= limit, "a bundle of {} bytes over the limit {limit}", d.len());
                    let u = unbundle(&Bytes::copy_from_slice(d), |f| got.push(f.to_vec()));
                    assert!(u.fault.is_none() && u.frames >= 2, "{u:?}");
                } else {
                    assert!(d.len() <= limit || frames.iter().any(|f| f == d));
                    got.push(d.clone());
                }
            }
            got == frames && c.frames_bundled as usize + out.len() - c.bundles_sent as usize == frames.len()
        }
        quickcheck::QuickCheck::new().tests(1000).quickcheck(prop as fn(Vec<Vec<u8>>, u16, u8) -> bool);
    }
}
