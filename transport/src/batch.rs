//! Datagram I/O shared by the UDP and IP multicast transports: receiving
//! into one reusable chunked buffer, and sending, either one system call per
//! datagram or batched (`recvmmsg`/`sendmmsg`, Linux).
//!
//! - **Receive, batched.** One `recvmmsg` reads up to [`RECV_BATCH`]
//!   datagrams. Each datagram gets a slot of the receive chunk (2 KiB at
//!   first: FRAG's default datagram is 1400 bytes) and, after it, a 64 KiB
//!   tail in a reusable arena, so any datagram fits whole. The datagrams
//!   that fit their slot are moved down to lie back to back (one short
//!   in-cache move each) and split off the chunk as before: no allocation
//!   per datagram, and a datagram's `Bytes` shares the chunk. A datagram
//!   longer than its slot is assembled in a buffer of its own (an
//!   allocation) and the slot grows to the next power of two of its length,
//!   so a stack that sends large datagrams pays this only once.
//! - **Receive, one by one.** `recvfrom` straight into the chunk's spare
//!   room (which always holds 64 KiB), split off: no move at all, one system
//!   call per datagram.
//! - **Send, bundled** (the default; see the [`bundle`](crate::bundle)
//!   module). [`Sender::send`] copies the frame into its destination's
//!   buffer; [`Sender::flush`] (the driver calls it once per round) packs
//!   each destination's frames into as few datagrams as its limit allows and
//!   sends all of them: batched, with `sendmmsg` as below, bundles of several
//!   destinations in one call; unbatched, one `sendmsg` each. Everything
//!   queued also goes out at once when [`SEND_QUEUE_BYTES`] are queued.
//! - **Send, batched.** Without bundling, [`Sender::send`] copies the frame
//!   once into a reusable contiguous buffer and queues one entry per
//!   destination; [`Sender::flush`] sends the queue
//!   with `sendmmsg`, [`SEND_BATCH`] datagrams per call. The queue also goes
//!   out when it is full. A partial send is retried from where it stopped; a
//!   full socket buffer (`WouldBlock`) drops the rest of the queue and counts
//!   each as `send_drops`, as the network would; another error is counted
//!   against the one datagram it belongs to and the rest still goes.
//! - **Send, one by one.** Without bundling or batching, one `sendmsg` per
//!   destination at once, the frame's slices gathered by the kernel (no copy).
//!
//! The headers and address arrays of the batched calls live on the stack of
//! the call: nothing is allocated per datagram or per call. The system calls
//! come from `libc` (already a dependency of the workspace): `nix` wraps
//! them too, but its reusable header block holds raw pointers (it is not
//! `Send`, so a transport could not keep it), and `quinn-udp` batches with
//! GSO, which needs every datagram of a batch to go to one destination; our
//! casts fan out to several. Elsewhere than Linux and Android, batching is
//! off whatever the configuration says.

use crate::bundle::{BundleCounters, Bundler};
use crate::counters::{frame_len, join_frame, DatagramCounters};
use bytes::{Bytes, BytesMut};
use socket2::{SockAddr, SockRef};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::task::{Context, Poll};
use strata_stack::Stats;
use tokio::net::UdpSocket;

/// Datagrams read per `poll_recv` (and per `recvmmsg`).
pub const RECV_BATCH: usize = 64;
/// Size of the chunks the receive buffer is carved from.
pub const RECV_CHUNK_BYTES: usize = 256 << 10;
/// Datagrams sent per `sendmmsg`; a queue this long is sent at once.
pub const SEND_BATCH: usize = 64;
/// Frame bytes the send queue (or, bundling, all destinations' queues
/// together) holds before it is sent at once.
pub const SEND_QUEUE_BYTES: usize = 256 << 10;
/// Room kept free in the receive buffer for one unbatched receive: any datagram fits whole.
const RECV_ROOM: usize = 1 << 16;
/// The first slot size of a batched receive.
const FIRST_SLOT: usize = 2 << 10;
/// Room per datagram after its slot in a batched receive: with it any UDP payload fits.
const TAIL: usize = 1 << 16;
/// A batched receive asks for a new chunk when fewer slots than this fit the current one.
const MIN_SLOTS: usize = 8;
/// Errors skipped in one `poll_recv` before it returns what it has.
const RECV_ERRORS_PER_POLL: usize = 16;
/// Slices a frame may have to be sent unbatched without joining them first.
const MAX_SLICES: usize = 4;

/// What a socket's I/O counts: reported under the same names by every
/// datagram transport.
#[derive(Default, Debug)]
pub(crate) struct IoCounters {
    pub(crate) datagrams: DatagramCounters,
    pub(crate) send_errors: u64,
    pub(crate) recv_errors: u64,
    /// System calls that sent (`sendmsg` or `sendmmsg`).
    pub(crate) send_syscalls: u64,
    /// System calls that received at least one datagram.
    pub(crate) recv_syscalls: u64,
    /// Datagrams longer than their receive slot (assembled apart).
    pub(crate) recv_oversized: u64,
    pub(crate) bundles: BundleCounters,
}

impl IoCounters {
    pub(crate) fn report(&self, out: &mut Stats) {
        self.datagrams.report(out);
        out.add("send_errors", self.send_errors)
            .add("recv_errors", self.recv_errors)
            .add("send_syscalls", self.send_syscalls)
            .add("recv_syscalls", self.recv_syscalls)
            .add("recv_oversized", self.recv_oversized);
        self.bundles.report(out);
    }
}

/// Whether batched system calls exist here.
pub(crate) const BATCH_SUPPORTED: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Errors a receive can return because of something a peer did (an ICMP
/// error for an earlier send), after which the socket still works.
pub(crate) fn transient(e: &io::Error) -> bool {
    if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted) {
        return true;
    }
    // EMSGSIZE, ENETUNREACH, EHOSTUNREACH (their ErrorKinds are newer than our MSRV).
    #[cfg(target_os = "linux")]
    if matches!(e.raw_os_error(), Some(90 | 101 | 113)) {
        return true;
    }
    false
}

/// The receiving half: the chunked buffer datagrams are cut from, shared by
/// every socket of a transport (they are read one after the other).
pub(crate) struct Receiver {
    batch: bool,
    chunk: BytesMut,
    /// The slot each datagram of a batched receive gets in `chunk`.
    slot: usize,
    /// `RECV_BATCH` tails of `TAIL` bytes, allocated at the first batched receive.
    tails: Vec<u8>,
    /// Per datagram of the last `recvmmsg`: its source and where it is.
    landed: Vec<(Option<SocketAddr>, Landed)>,
}

/// Where a datagram of a batched receive ended up.
enum Landed {
    /// In the chunk, this long, right after the previous one.
    Inline(usize),
    /// Assembled in its own buffer.
    Apart(Bytes),
}

impl Receiver {
    pub(crate) fn new(batch: bool) -> Receiver {
        Receiver { batch: batch && BATCH_SUPPORTED, chunk: BytesMut::new(), slot: FIRST_SLOT, tails: Vec::new(), landed: Vec::with_capacity(RECV_BATCH) }
    }

    /// Reads up to `budget` datagrams from `socket` into `out`. `Ready(Ok)`
    /// means at least one was appended; `Pending` means the socket has none
    /// and the task will be woken when it has.
    pub(crate) fn poll_recv(
        &mut self,
        socket: &UdpSocket,
        cx: &mut Context<'_>,
        counters: &mut IoCounters,
        out: &mut Vec<(SocketAddr, Bytes)>,
        budget: usize,
    ) -> Poll<io::Result<()>> {
        let start = out.len();
        let mut errors = 0;
        while out.len() - start < budget {
            let result = if self.batch {
                let want = budget - (out.len() - start);
                socket.try_io(tokio::io::Interest::READABLE, || self.recv_batch(socket, want, counters, out))
            } else {
                self.recv_one(socket, counters, out)
            };
            match result {
                // One batch read what was waiting, most likely: hand it over.
                Ok(_) if self.batch && out.len() > start => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if out.len() > start {
                        break;
                    }
                    // Registers the waker, or says the socket became readable meanwhile.
                    match socket.poll_recv_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) if transient(&e) => {
                    counters.recv_errors += 1;
                    tracing::debug!(error = %e, "udp receive error ignored");
                    errors += 1;
                    if errors >= RECV_ERRORS_PER_POLL {
                        // Let the driver run; it polls again.
                        cx.waker().wake_by_ref();
                        return if out.len() > start { Poll::Ready(Ok(())) } else { Poll::Pending };
                    }
                }
                Err(e) => {
                    counters.recv_errors += 1;
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// One `recvfrom` into the chunk's spare room.
    fn recv_one(&mut self, socket: &UdpSocket, counters: &mut IoCounters, out: &mut Vec<(SocketAddr, Bytes)>) -> io::Result<usize> {
        if self.chunk.capacity() - self.chunk.len() < RECV_ROOM {
            self.chunk.reserve(RECV_CHUNK_BYTES);
        }
        match socket.try_recv_buf_from(&mut self.chunk) {
            Ok((n, from)) => {
                counters.recv_syscalls += 1;
                counters.datagrams.received(n);
                out.push((from, self.chunk.split_to(n).freeze()));
                Ok(1)
            }
            Err(e) => {
                self.chunk.clear();
                Err(e)
            }
        }
    }

    /// One `recvmmsg` of up to `want` datagrams (see the module docs).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn recv_batch(&mut self, socket: &UdpSocket, want: usize, counters: &mut IoCounters, out: &mut Vec<(SocketAddr, Bytes)>) -> io::Result<usize> {
        use socket2::SockAddrStorage;
        use std::os::fd::AsRawFd;

        debug_assert!(self.chunk.is_empty(), "every datagram is split off the chunk before the next receive");
        let want = want.clamp(1, RECV_BATCH);
        let slot = self.slot;
        if self.chunk.capacity() / slot < want.min(MIN_SLOTS) {
            self.chunk.reserve(RECV_CHUNK_BYTES.max(slot * RECV_BATCH));
        }
        let n = want.min(self.chunk.capacity() / slot);
        if self.tails.is_empty() {
            // Zeroed pages cost nothing until a long datagram touches them.
            self.tails = vec![0; RECV_BATCH * TAIL];
        }
        let base = self.chunk.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        let tails = self.tails.as_mut_ptr();

        // SAFETY (all zeroed values below): iovec, sockaddr_storage and
        // mmsghdr are plain C structs for which all zeros (null pointers,
        // zero lengths) is a valid value.
        let mut iovecs: [[libc::iovec; 2]; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let mut names: [libc::sockaddr_storage; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let mut headers: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            // SAFETY: slot i lies within the chunk's spare capacity
            // (n * slot <= capacity), tail i within `tails` (n <= RECV_BATCH).
            iovecs[i] = unsafe {
                [libc::iovec { iov_base: base.add(i * slot).cast(), iov_len: slot }, libc::iovec { iov_base: tails.add(i * TAIL).cast(), iov_len: TAIL }]
            };
            let h = &mut headers[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = iovecs[i].as_mut_ptr();
            h.msg_iovlen = 2;
        }
        // SAFETY: every header points at live buffers of the lengths it
        // states (above), which outlive the call; the socket is non-blocking.
        let rc = unsafe { libc::recvmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), n as _, 0, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = rc as usize;
        counters.recv_syscalls += 1;

        // Move the datagrams that fit their slot down, back to back, in
        // arrival order. Slot i is read before anything is written over it:
        // writes so far end at `inline` <= i * slot.
        let mut inline = 0;
        self.landed.clear();
        for i in 0..got {
            let len = headers[i].msg_len as usize;
            let mut storage = SockAddrStorage::zeroed();
            // SAFETY: sockaddr_storage is the type the kernel filled, and
            // `view_as` checks it fits.
            unsafe { *storage.view_as::<libc::sockaddr_storage>() = names[i] };
            // SAFETY: the kernel wrote a valid address of this length.
            let from = unsafe { SockAddr::new(storage, headers[i].msg_hdr.msg_namelen) }.as_socket();
            counters.datagrams.received(len);
            if len <= slot {
                if inline != i * slot {
                    // SAFETY: both ranges lie in the spare capacity; the
                    // source holds `len` bytes the kernel wrote; `copy` allows overlap.
                    unsafe { std::ptr::copy(base.add(i * slot), base.add(inline), len) };
                }
                inline += len;
                self.landed.push((from, Landed::Inline(len)));
            } else {
                counters.recv_oversized += 1;
                let mut whole = BytesMut::with_capacity(len);
                // SAFETY: the kernel wrote `slot` bytes into slot i and the
                // rest into tail i, neither yet written over.
                whole.extend_from_slice(unsafe { std::slice::from_raw_parts(base.add(i * slot), slot) });
                whole.extend_from_slice(&self.tails[i * TAIL..i * TAIL + (len - slot).min(TAIL)]);
                self.slot = self.slot.max(len.next_power_of_two().min(TAIL));
                self.landed.push((from, Landed::Apart(whole.freeze())));
            }
        }
        // SAFETY: the first `inline` bytes of the spare capacity were written
        // (by the kernel, or moved there from bytes it wrote).
        unsafe { self.chunk.set_len(inline) };
        for (from, landed) in self.landed.drain(..) {
            let data = match landed {
                Landed::Inline(len) => self.chunk.split_to(len).freeze(),
                Landed::Apart(data) => data,
            };
            match from {
                Some(from) => out.push((from, data)),
                // Not an IP address: cannot happen on a UDP socket.
                None => counters.recv_errors += 1,
            }
        }
        Ok(got)
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn recv_batch(&mut self, socket: &UdpSocket, _want: usize, counters: &mut IoCounters, out: &mut Vec<(SocketAddr, Bytes)>) -> io::Result<usize> {
        self.recv_one(socket, counters, out)
    }
}

/// One queued datagram: a range of the queue's bytes and its destination.
struct Queued {
    start: usize,
    len: usize,
    to: SockAddr,
}

/// The sending half of a socket: sends at once, or queues for
/// [`Sender::flush`].
pub(crate) struct Sender {
    batch: bool,
    /// Frames queued per destination, with bundling on.
    bundler: Option<Bundler>,
    /// Frames queued, back to back (batched without bundling).
    bytes: Vec<u8>,
    queued: Vec<Queued>,
    /// Unbatched frames with more slices than `MAX_SLICES` are joined here.
    join_buf: Vec<u8>,
}

impl Sender {
    /// `bundle`: the largest bundle in bytes, 0 for no bundling.
    pub(crate) fn new(batch: bool, bundle: usize) -> Sender {
        let batch = batch && BATCH_SUPPORTED;
        let bundler = (bundle > 0).then(|| Bundler::new(bundle));
        let flat = batch && bundler.is_none();
        let (bytes, queued) = if flat { (Vec::with_capacity(SEND_QUEUE_BYTES), Vec::with_capacity(SEND_BATCH)) } else { (Vec::new(), Vec::new()) };
        Sender { batch, bundler, bytes, queued, join_buf: Vec::new() }
    }

    /// Whether datagrams leave several per system call.
    pub(crate) fn batched(&self) -> bool {
        self.batch
    }

    /// Whether frames are bundled.
    pub(crate) fn bundles(&self) -> bool {
        self.bundler.is_some()
    }

    /// Sends `frame` to each address in `to`, or queues it to.
    pub(crate) fn send(&mut self, socket: &UdpSocket, to: &[SocketAddr], frame: &[&[u8]], counters: &mut IoCounters) {
        if let Some(bundler) = &mut self.bundler {
            if bundler.push_all(to, frame, frame_len(frame)) {
                self.flush(socket, counters);
            }
            return;
        }
        if !self.batch {
            self.send_each(socket, to, frame, counters);
            return;
        }
        let len = frame_len(frame);
        if self.bytes.len() + len > SEND_QUEUE_BYTES {
            self.flush(socket, counters);
        }
        let mut start = self.bytes.len();
        join_frame(frame, &mut self.bytes);
        for &addr in to {
            if self.queued.len() == SEND_BATCH {
                self.flush(socket, counters);
                start = 0;
                join_frame(frame, &mut self.bytes);
            }
            self.queued.push(Queued { start, len, to: SockAddr::from(addr) });
        }
    }

    /// One `sendmsg` per destination, now.
    pub(crate) fn send_each(&mut self, socket: &UdpSocket, to: &[SocketAddr], frame: &[&[u8]], counters: &mut IoCounters) {
        let len = frame_len(frame);
        if frame.len() <= MAX_SLICES {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            for (slot, s) in slices.iter_mut().zip(frame) {
                *slot = IoSlice::new(s);
            }
            for &addr in to {
                send_one(socket, &SockAddr::from(addr), &slices[..frame.len()], len, counters);
            }
        } else {
            let mut joined = std::mem::take(&mut self.join_buf);
            joined.clear();
            join_frame(frame, &mut joined);
            for &addr in to {
                send_one(socket, &SockAddr::from(addr), &[IoSlice::new(&joined)], len, counters);
            }
            self.join_buf = joined;
        }
    }

    /// Sends everything queued.
    pub(crate) fn flush(&mut self, socket: &UdpSocket, counters: &mut IoCounters) {
        if let Some(bundler) = &mut self.bundler {
            bundler.seal(&mut counters.bundles);
            let n = bundler.outgoing_len();
            let sealed: &Bundler = bundler;
            if self.batch {
                send_batched(socket, n, |i| sealed.outgoing(i), counters);
            } else {
                for i in 0..n {
                    let (data, to, _) = sealed.outgoing(i);
                    send_one(socket, to, &[IoSlice::new(data)], data.len(), counters);
                }
            }
            bundler.clear();
        }
        if !self.queued.is_empty() {
            let (bytes, queued) = (&self.bytes, &self.queued);
            send_batched(socket, queued.len(), |i| (&bytes[queued[i].start..queued[i].start + queued[i].len], &queued[i].to, ()), counters);
        }
        self.queued.clear();
        self.bytes.clear();
    }
}

/// Sends datagrams `0..n` (`datagram(i)` gives the bytes and the destination
/// of each) with `sendmmsg`, [`SEND_BATCH`] per call (see the module docs
/// for partial sends and errors).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_batched<'a, T>(socket: &UdpSocket, n: usize, datagram: impl Fn(usize) -> (&'a [u8], &'a SockAddr, T), counters: &mut IoCounters) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let mut next = 0;
    while next < n {
        let batch = (n - next).min(SEND_BATCH);
        // SAFETY: all zeros is a valid iovec and mmsghdr (null pointers, zero lengths).
        let mut iovecs: [libc::iovec; SEND_BATCH] = unsafe { std::mem::zeroed() };
        let mut headers: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..batch {
            let (data, to, _) = datagram(next + i);
            // The kernel only reads through these pointers.
            iovecs[i] = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
            let h = &mut headers[i].msg_hdr;
            h.msg_name = to.as_ptr().cast_mut().cast();
            h.msg_namelen = to.len();
            h.msg_iov = &mut iovecs[i];
            h.msg_iovlen = 1;
        }
        counters.send_syscalls += 1;
        // SAFETY: every header points at live bytes and addresses of the
        // lengths it states, which outlive the call.
        let rc = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), batch as _, 0) };
        if rc > 0 {
            for i in next..next + rc as usize {
                counters.datagrams.sent(datagram(i).0.len());
            }
            next += rc as usize;
            continue;
        }
        let e = if rc == 0 { io::ErrorKind::WouldBlock.into() } else { io::Error::last_os_error() };
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                // The socket buffer is full: what is left is dropped, as the network would.
                for _ in next..n {
                    counters.datagrams.send_dropped();
                }
                return;
            }
            _ => {
                // The error belongs to the first datagram of the batch.
                counters.send_errors += 1;
                tracing::debug!(error = %e, to = ?datagram(next).1.as_socket(), "udp send failed");
                next += 1;
            }
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_batched<'a, T>(_socket: &UdpSocket, _n: usize, _datagram: impl Fn(usize) -> (&'a [u8], &'a SockAddr, T), _counters: &mut IoCounters) {
    unreachable!("batching is off where sendmmsg does not exist")
}

/// One `sendmsg` of `slices` to `to`: counted as sent, dropped (a full
/// buffer) or failed.
pub(crate) fn send_one(socket: &UdpSocket, to: &SockAddr, slices: &[IoSlice<'_>], len: usize, counters: &mut IoCounters) {
    counters.send_syscalls += 1;
    match SockRef::from(socket).send_to_vectored(slices, to) {
        Ok(_) => counters.datagrams.sent(len),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => counters.datagrams.send_dropped(),
        Err(e) => {
            counters.send_errors += 1;
            tracing::debug!(error = %e, to = ?to.as_socket(), "udp send failed");
        }
    }
}

/// Appends the socket's buffer sizes to `out`.
pub(crate) fn report_buffers(socket: &UdpSocket, out: &mut Stats) {
    let sock = SockRef::from(socket);
    if let Ok(n) = sock.recv_buffer_size() {
        out.add("rcvbuf_bytes", n as u64);
    }
    if let Ok(n) = sock.send_buffer_size() {
        out.add("sndbuf_bytes", n as u64);
    }
}
