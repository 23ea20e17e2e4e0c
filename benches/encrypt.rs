//! What ENCRYPT costs: two real `Stack`s, `ENCRYPT(key_file=K):NAK` against
//! `NAK` alone, on an in-process, lossless, zero-latency network with a
//! virtual clock (`LoopNet`, no tokio, no sockets), and the raw AEAD
//! (XChaCha20-Poly1305, in place, detached tag) on the same sizes as the
//! floor.
//!
//! - `encrypt/stack/<size>/<stack>`: time for member 0 to cast a burst
//!   of 100 messages (the virtual clock advancing 100 µs per 10 casts, so
//!   NAK's status timers run) until both members delivered all of them
//!   (member 0 its own casts through the loopback, which ENCRYPT opens too).
//!   Reported as bytes of application payload per second.
//! - `encrypt/aead/<size>/{seal,open}`: one `encrypt_in_place_detached` (or
//!   `decrypt_in_place_detached` of a sealed copy) with associated data of
//!   the size ENCRYPT binds to a cast.
//!
//! Times are this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall
//! time, so that builds running beside the bench on a small machine do not
//! count. Sizes: 64 B, 1 KiB, 8 KiB. The two members are a static view (no
//! membership layer); before measuring, each casts once and ENCRYPT's
//! challenge round verifies each member's session at the other, so the
//! timed bursts never wait for a challenge. Afterwards the bench prints, per
//! stack and size, the ENCRYPT packets sealed and opened and the heap
//! allocations (a counting global allocator) per application message, the
//! network harness's own included.
//!
//! `cargo bench --bench encrypt`; `cargo bench --bench encrypt -- aead` for the floor only.

use bytes::Bytes;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use strata_stack::harness::alloc::{thread_allocations, CountingAllocator};
use strata_stack::harness::net::LoopNet;
use strata_stack::{MemberId, Stack, StackConfig};

/// Counts heap allocations (reallocations included) per thread; the
/// members, the network and the cipher all run on the bench's thread.
#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// This thread's CPU time: the bench measures it instead of wall time so
/// that other processes sharing the (2-core) machine do not inflate the
/// figures; everything measured runs on this thread.
#[derive(Clone, Copy)]
struct ThreadCpu(Duration);

impl ThreadCpu {
    fn now() -> ThreadCpu {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid timespec to write; this clock exists on Linux.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is readable");
        ThreadCpu(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    fn elapsed(self) -> Duration {
        ThreadCpu::now().0.saturating_sub(self.0)
    }
}

const SIZES: [usize; 3] = [64, 1024, 8192];
const BURST: usize = 100;
/// Casts between two advances of the virtual clock in a burst.
const CASTS_PER_TICK: usize = 10;
const TICK: Duration = Duration::from_micros(100);
/// Virtual time after which an undelivered burst is a bug.
const DELIVERY_LIMIT: Duration = Duration::from_secs(30);
/// Bursts run outside criterion to count allocations and ENCRYPT packets.
const COUNTED_BURSTS: usize = 20;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 2, 0, i as u8 + 1)), 7000)
}

/// The benchmarked pair: member 0 casts, member 1 receives.
struct Pair {
    net: LoopNet,
    encrypted: bool,
}

impl Pair {
    /// Starts both members (a static view of the two) and has each cast
    /// once, so that with ENCRYPT each has verified the other's session.
    fn form(spec: &str) -> Pair {
        let mut net = LoopNet::new();
        net.record = false;
        let registry = strata_layers::builtin();
        let members: Vec<MemberId> = (0..2).map(|i| MemberId::new(addr(i), 1)).collect();
        for (i, local) in members.iter().enumerate() {
            let mut cfg = StackConfig::new("encbench", *local, members.clone());
            cfg.seed = i as u64;
            let stack = Stack::new(&registry, spec, cfg, net.now()).unwrap_or_else(|e| panic!("{spec} builds: {e}"));
            net.push(stack);
        }
        let mut pair = Pair { net, encrypted: spec.starts_with("ENCRYPT") };
        for i in 0..2 {
            pair.cast(i, Bytes::from_static(b"hello"));
        }
        pair.run_until_delivered([2, 2]);
        if pair.encrypted {
            for i in 0..2 {
                assert_eq!(pair.encrypt_counter(i, "sessions_verified"), 1, "member {i} verified the other's session before measuring");
            }
        }
        pair
    }

    fn stack(&self, i: usize) -> &Stack {
        self.net.stack(i).expect("no member crashes in the bench")
    }

    fn encrypt_counter(&self, i: usize, name: &str) -> u64 {
        let stats = self.stack(i).stats();
        stats.iter().find(|l| l.name == "ENCRYPT").and_then(|l| l.counters.get(name)).unwrap_or(0)
    }

    /// What ENCRYPT dropped at either member (must stay empty).
    fn encrypt_drops(&self) -> Vec<(&'static str, u64)> {
        (0..2).flat_map(|i| self.stack(i).stats().into_iter().filter(|l| l.name == "ENCRYPT").flat_map(|l| l.dropped)).collect()
    }

    /// Casts `body` at member `i`, letting the network run while its send window is closed.
    fn cast(&mut self, i: usize, body: Bytes) {
        if let Err(e) = self.net.cast_when_open(i, body, TICK, 10_000) {
            panic!("member {i} refused casts for 1 s of virtual time: {e}");
        }
    }

    /// Runs, timer by timer, until each member delivered its `target`.
    fn run_until_delivered(&mut self, target: [u64; 2]) {
        let limit = self.net.now() + DELIVERY_LIMIT;
        loop {
            self.net.settle();
            let delivered = [self.net.delivered(0), self.net.delivered(1)];
            if delivered[0] >= target[0] && delivered[1] >= target[1] {
                assert_eq!(delivered, target, "each cast delivered once at each member");
                return;
            }
            assert!(self.net.fire_next_timer(limit), "undelivered after {DELIVERY_LIMIT:?} of virtual time: {delivered:?} of {target:?}");
        }
    }

    /// Member 0 casts `BURST` copies of `body`; returns once both delivered them.
    fn burst(&mut self, body: &Bytes) {
        let target = [self.net.delivered(0) + BURST as u64, self.net.delivered(1) + BURST as u64];
        for k in 0..BURST {
            self.cast(0, body.clone());
            if (k + 1) % CASTS_PER_TICK == 0 {
                self.net.run_for(TICK);
            }
        }
        self.run_until_delivered(target);
    }
}

/// A fresh pre-shared key file for the run, removed on drop.
struct KeyFile(PathBuf);

impl KeyFile {
    fn new() -> KeyFile {
        let path = std::env::temp_dir().join(format!("strata-encbench-{}.key", std::process::id()));
        let key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(151).wrapping_add(7));
        strata_layers::encrypt::write_key_file(&path, &key).expect("the temporary directory is writable");
        KeyFile(path)
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn stacks(c: &mut Criterion) {
    let key = KeyFile::new();
    let specs = [("NAK", "NAK".to_string()), ("ENCRYPT:NAK", format!("ENCRYPT(key_file={}):NAK", key.0.display()))];
    for size in SIZES {
        let body = Bytes::from(vec![0x5a; size]);
        let mut g = c.benchmark_group(format!("encrypt/stack/{size}"));
        g.throughput(Throughput::Bytes((BURST * size) as u64));
        for (label, spec) in &specs {
            let mut pair = Pair::form(spec);
            g.bench_function(BenchmarkId::from_parameter(label), |b| {
                b.iter_custom(|iters| {
                    let start = ThreadCpu::now();
                    for _ in 0..iters {
                        pair.burst(&body);
                    }
                    start.elapsed()
                })
            });
            report_counts(label, size, &mut pair, &body);
        }
        g.finish();
    }
}

/// Runs `COUNTED_BURSTS` more bursts and prints allocations and ENCRYPT
/// packets per application message.
fn report_counts(label: &str, size: usize, pair: &mut Pair, body: &Bytes) {
    let sealed = |p: &Pair| p.encrypt_counter(0, "sealed") + p.encrypt_counter(1, "sealed");
    let opened = |p: &Pair| p.encrypt_counter(0, "opened") + p.encrypt_counter(1, "opened");
    let (sealed0, opened0) = (sealed(pair), opened(pair));
    let allocs0 = thread_allocations();
    for _ in 0..COUNTED_BURSTS {
        pair.burst(body);
    }
    let allocs = thread_allocations() - allocs0;
    let messages = (COUNTED_BURSTS * BURST) as f64;
    let mut line = format!("{label} {size} B: {:.2} allocations per message (both members and the network)", allocs as f64 / messages);
    if pair.encrypted {
        let drops = pair.encrypt_drops();
        assert!(drops.is_empty(), "ENCRYPT dropped nothing on a perfect network: {drops:?}");
        line += &format!(
            ", ENCRYPT sealed {:.3} and opened {:.3} packets per message",
            (sealed(pair) - sealed0) as f64 / messages,
            (opened(pair) - opened0) as f64 / messages
        );
    }
    println!("{line}");
}

/// The associated data ENCRYPT binds to a cast: the 29-byte outer header,
/// the cast flag and the sender's member id (8 bytes for IPv4).
const AAD_LEN: usize = 29 + 1 + 8;

fn aead(c: &mut Criterion) {
    let cipher = XChaCha20Poly1305::new(&[0x42u8; 32].into());
    let aad = [0x17u8; AAD_LEN];
    let nonce_of = |counter: u64| {
        let mut n = [0x33u8; 24];
        n[16..].copy_from_slice(&counter.to_le_bytes());
        XNonce::from(n)
    };
    for size in SIZES {
        let mut g = c.benchmark_group(format!("encrypt/aead/{size}"));
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0x5au8; size];
        let mut counter = 0u64;
        g.bench_function("seal", |b| {
            b.iter_custom(|iters| {
                let start = ThreadCpu::now();
                for _ in 0..iters {
                    counter += 1;
                    black_box(cipher.encrypt_in_place_detached(&nonce_of(counter), &aad, &mut buf).expect("seals"));
                }
                start.elapsed()
            })
        });
        let plain = vec![0x5au8; size];
        let mut sealed = plain.clone();
        let tag: Tag = cipher.encrypt_in_place_detached(&nonce_of(0), &aad, &mut sealed).expect("seals");
        g.bench_function("open", |b| {
            b.iter_custom(|iters| {
                let start = ThreadCpu::now();
                for _ in 0..iters {
                    buf.copy_from_slice(&sealed);
                    cipher.decrypt_in_place_detached(&nonce_of(0), &aad, black_box(&mut buf), &tag).expect("opens");
                }
                start.elapsed()
            })
        });
        assert_eq!(buf, plain, "open restores the plaintext");
        let allocs0 = thread_allocations();
        for k in 0..1000 {
            cipher.encrypt_in_place_detached(&nonce_of(k), &aad, &mut buf).expect("seals");
        }
        println!("raw AEAD {size} B: {} allocations per 1000 seals", thread_allocations() - allocs0);
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(20);
    targets = stacks, aead
}
criterion_main!(benches);
