//! The attacker of tests/node_encrypt.rs: a UDP socket of its own that
//! captures whatever the nodes send it, and the datagrams it crafts from
//! what it captured (replays, bit flips, truncations, rewritten senders,
//! forgeries, broken sender ids, forged notices). It knows the wire only
//! as an outsider can: the engine's frame header (`Stack::handle_datagram`,
//! `MemberId::encode`) and ENCRYPT's outer header, both in clear.
//!
//! Self-contained (std and `strata` only), so it can be included with
//! `#[path]` or as `node_support::encrypt`.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use strata::codec::{Reader, Writer};
use strata::MemberId;

/// The engine's frame magic (stack/src/engine.rs).
pub const FRAME_MAGIC: u8 = 0xA1;
/// The frame flag of a cast (else a point-to-point send).
pub const FLAG_CAST: u8 = 1;
/// ENCRYPT's outer kinds (layers/src/encrypt/wire.rs).
pub const SEALED_GROUP: u8 = 0x51;
pub const NOTICE: u8 = 0x5F;
/// A notice's reason "another key".
pub const NOTICE_WRONG_KEY: u8 = 1;
/// ENCRYPT's outer header of a group-sealed packet: kind, key id, session, counter.
pub const OUTER_LEN: usize = 1 + 4 + 16 + 8;
/// The inner kind byte and the Poly1305 tag that follow the outer header.
pub const SEALED_MIN_TAIL: usize = 1 + 16;

/// SplitMix64: a small, seedable generator, so a failing attack can be
/// replayed from the seed the test prints.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the bias is irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// A datagram as `Stack::handle_datagram` reads it: the frame header, then
/// the body (ENCRYPT's packet when ENCRYPT is the bottom layer).
#[derive(Clone, Debug)]
pub struct Frame {
    pub flags: u8,
    pub group: u32,
    pub fingerprint: u32,
    pub sender: MemberId,
    pub body: Vec<u8>,
}

impl Frame {
    /// Parses a frame; `None` for anything else.
    pub fn parse(data: &[u8]) -> Option<Frame> {
        let mut r = Reader::new(data);
        if r.u8().ok()? != FRAME_MAGIC {
            return None;
        }
        let flags = r.u8().ok()?;
        let group = r.u32().ok()?;
        let fingerprint = r.u32().ok()?;
        let sender = MemberId::decode(&mut r).ok()?;
        Some(Frame { flags, group, fingerprint, sender, body: r.rest().to_vec() })
    }

    /// The bytes before the sender's id: magic, flags, group, fingerprint.
    pub fn head(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(FRAME_MAGIC).u8(self.flags).u32(self.group).u32(self.fingerprint);
        w.as_slice().to_vec()
    }

    /// The wire form, with `body` in place of the frame's own.
    pub fn encode_with(&self, sender: MemberId, body: &[u8]) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(&self.head());
        sender.encode(&mut w);
        w.bytes(body);
        w.as_slice().to_vec()
    }

    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(self.sender, &self.body)
    }

    /// The ENCRYPT key id of a group-sealed body.
    pub fn key_id(&self) -> Option<[u8; 4]> {
        (self.body.first() == Some(&SEALED_GROUP) && self.body.len() >= OUTER_LEN + SEALED_MIN_TAIL).then(|| self.body[1..5].try_into().unwrap())
    }
}

/// The datagrams the attacker received, with their source address.
pub type Captured = Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

/// A UDP socket on loopback that records everything sent to it (from a
/// thread of its own) and sends whatever it is told.
pub struct Attacker {
    socket: UdpSocket,
    captured: Captured,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Attacker {
    pub fn bind() -> Attacker {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the attacker's socket");
        let receiver = socket.try_clone().expect("clone the attacker's socket");
        receiver.set_read_timeout(Some(Duration::from_millis(20))).expect("set a read timeout");
        let captured: Captured = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (captured, stop) = (captured.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = receiver.recv_from(&mut buf) {
                        captured.lock().unwrap().push((from, buf[..n].to_vec()));
                    }
                }
            })
        };
        Attacker { socket, captured, stop, thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("the attacker's address")
    }

    /// Everything received so far.
    pub fn captured(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.captured.lock().unwrap().clone()
    }

    /// Sends one datagram; whether the kernel took it.
    pub fn send(&self, to: SocketAddr, data: &[u8]) -> bool {
        self.socket.send_to(data, to).is_ok()
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the kernel says of the IPv4 UDP socket bound to `addr`: bytes
/// waiting in its receive queue, and datagrams dropped because the queue
/// was full (since the socket was opened). `None` if there is no such
/// socket (or no /proc).
pub fn socket_queue(addr: SocketAddr) -> Option<(u64, u64)> {
    let IpAddr::V4(ip) = addr.ip() else { return None };
    // /proc/net/udp prints the address as the in-memory u32, so little-endian hex on x86.
    let local = format!("{:08X}:{:04X}", u32::from_ne_bytes(ip.octets()), addr.port());
    let text = std::fs::read_to_string("/proc/net/udp").ok()?;
    text.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.get(1) != Some(&local.as_str()) {
            return None;
        }
        let rx_queue = u64::from_str_radix(cols.get(4)?.split(':').nth(1)?, 16).ok()?;
        let drops = cols.last()?.parse().ok()?;
        Some((rx_queue, drops))
    })
}

/// Waits (up to `limit`) until the socket at `addr` has fewer than
/// `bytes` queued: the attacker paces itself so that what it sends is
/// read, not dropped by the kernel, and the stats can account for it.
pub fn wait_for_room(addr: SocketAddr, bytes: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while socket_queue(addr).is_some_and(|(queued, _)| queued >= bytes) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// `data` with bit `bit` (counted from the first byte's lowest) inverted.
pub fn flip_bit(data: &[u8], bit: usize) -> Vec<u8> {
    let mut out = data.to_vec();
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

/// A group-sealed ENCRYPT packet that names the group's real key id, with
/// a random session and counter and `len` random bytes of "ciphertext"
/// (at least the inner kind and tag): a valid header, a body nobody sealed.
pub fn forged_sealed(key_id: [u8; 4], rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = vec![SEALED_GROUP];
    out.extend_from_slice(&key_id);
    out.extend(rng.bytes(16 + 8 + len.max(SEALED_MIN_TAIL)));
    out
}

/// `len` random bytes that do not start like a notice (a notice is not
/// dropped but reported: those are counted apart, [`notice`]).
pub fn random_body(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = rng.bytes(len);
    if out.first() == Some(&NOTICE) {
        out[0] = 0;
    }
    out
}

/// An unsealed ENCRYPT notice "I cannot admit you: another key", as a
/// member sends it to a refused process. Anyone can forge one.
pub fn notice(key_id: [u8; 4]) -> Vec<u8> {
    let mut out = vec![NOTICE, NOTICE_WRONG_KEY];
    out.extend_from_slice(&key_id);
    out
}

/// A frame header followed by a sender id whose length fields lie:
/// `variant % 4` picks an incarnation varint of 11 bytes, a varint whose
/// tenth byte overflows a u64, an IPv6 family tag with three address
/// bytes, or an unknown family tag. The engine must drop each as `bad_sender`.
pub fn broken_sender(template: &Frame, variant: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = template.head();
    let port = template.sender.addr().port().to_be_bytes();
    match variant % 4 {
        0 => {
            out.extend_from_slice(&[4, 127, 0, 0, 1]);
            out.extend_from_slice(&port);
            out.extend_from_slice(&[0xFF; 11]);
        }
        1 => {
            out.extend_from_slice(&[4, 127, 0, 0, 1]);
            out.extend_from_slice(&port);
            out.extend_from_slice(&[0xFF; 9]);
            out.push(0x7F);
        }
        2 => out.extend_from_slice(&[6, 0, 0, 0]),
        _ => out.push(9),
    }
    // Random trailing bytes where the body would start (none for the
    // truncated IPv6 id, which must fail for lack of address bytes).
    if variant % 4 != 2 {
        let n = rng.below(64);
        out.extend(rng.bytes(n));
    }
    out
}
