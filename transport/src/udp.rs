//! UDP: one socket, unicast to every member (a cast to `n` members is `n - 1`
//! sends of the same frame).
//!
//! - **Buffers.** The socket asks for [`SOCKET_BUFFER_BYTES`] of receive and
//!   send buffer (the OS caps it at `net.core.rmem_max`/`wmem_max`); failing
//!   to get them is not an error, only more drops under bursts.
//! - **Receive.** Up to [`RECV_BATCH`] datagrams per poll, read straight into
//!   the spare room of one reusable `BytesMut` and split off: no allocation
//!   per datagram. A datagram's `Bytes` keeps its chunk of the buffer
//!   ([`RECV_CHUNK_BYTES`]) alive until every datagram cut from that chunk is
//!   dropped.
//! - **Send.** Each frame goes out with one `sendmsg` per destination, its
//!   slices gathered by the kernel (no copy here). The socket is non-blocking
//!   and the driver never waits for it: a full send buffer (`WouldBlock`)
//!   drops the datagram and counts it, as the network would; a reliability
//!   layer repairs it. Other errors, such as `ECONNREFUSED` left behind by an
//!   ICMP port-unreachable from a dead peer, are counted and ignored.

use crate::counters::{frame_len, join_frame, DatagramCounters};
use bytes::{Bytes, BytesMut};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::task::{Context, Poll};
use strata_stack::runtime::Transport;
use strata_stack::Stats;
use tokio::net::UdpSocket;

/// Receive and send buffer the socket asks the OS for.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// Datagrams handed to the driver per `poll_recv`.
pub const RECV_BATCH: usize = 64;
/// Size of the chunks the receive buffer is carved from.
pub const RECV_CHUNK_BYTES: usize = 256 << 10;
/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
/// Room kept free in the receive buffer: any datagram fits whole.
const RECV_ROOM: usize = 1 << 16;
/// Errors skipped in one `poll_recv` before it returns what it has.
const RECV_ERRORS_PER_POLL: usize = 16;
/// Slices a frame may have to be sent without joining them first.
const MAX_SLICES: usize = 4;

#[derive(Default)]
struct UdpCounters {
    datagrams: DatagramCounters,
    send_errors: u64,
    recv_errors: u64,
}

/// A UDP socket driven by tokio, as a [`Transport`].
pub struct UdpTransport {
    socket: UdpSocket,
    local: SocketAddr,
    recv_buf: BytesMut,
    /// Frames with more slices than `MAX_SLICES` are joined here.
    join_buf: Vec<u8>,
    counters: UdpCounters,
}

impl std::fmt::Debug for UdpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpTransport").field("local", &self.local).finish_non_exhaustive()
    }
}

impl UdpTransport {
    /// Binds a UDP socket (SO_REUSEADDR off; large SO_RCVBUF/SO_SNDBUF via socket2, e.g. 4 MiB, best effort).
    /// Port 0 lets the OS pick; [`Transport::local_addr`] tells which.
    pub async fn bind(addr: SocketAddr) -> io::Result<UdpTransport> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        // Best effort: a smaller buffer only means more drops under bursts.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        UdpTransport::from_std(socket.into())
    }

    /// Wraps a socket bound elsewhere (it is made non-blocking). Must be
    /// called inside a tokio runtime.
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<UdpTransport> {
        socket.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(socket)?;
        let local = socket.local_addr()?;
        Ok(UdpTransport { socket, local, recv_buf: BytesMut::new(), join_buf: Vec::new(), counters: UdpCounters::default() })
    }

    fn send_one(&mut self, to: SocketAddr, slices: &[IoSlice<'_>], len: usize) {
        let result = SockRef::from(&self.socket).send_to_vectored(slices, &SockAddr::from(to));
        match result {
            Ok(_) => self.counters.datagrams.sent(len),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.counters.datagrams.send_dropped(),
            Err(e) => {
                self.counters.send_errors += 1;
                tracing::debug!(error = %e, %to, "udp send failed");
            }
        }
    }
}

/// Errors a receive can return because of something a peer did (an ICMP
/// error for an earlier send), after which the socket still works.
fn transient(e: &io::Error) -> bool {
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

impl Transport for UdpTransport {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn max_datagram(&self) -> usize {
        MAX_DATAGRAM
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>, out: &mut Vec<(SocketAddr, Bytes)>) -> Poll<io::Result<()>> {
        let mut got = 0;
        let mut errors = 0;
        while got < RECV_BATCH {
            if self.recv_buf.capacity() - self.recv_buf.len() < RECV_ROOM {
                self.recv_buf.reserve(RECV_CHUNK_BYTES);
            }
            match self.socket.try_recv_buf_from(&mut self.recv_buf) {
                Ok((n, from)) => {
                    got += 1;
                    self.counters.datagrams.received(n);
                    out.push((from, self.recv_buf.split_to(n).freeze()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if got > 0 {
                        break;
                    }
                    // Registers the waker, or says the socket became readable meanwhile.
                    match self.socket.poll_recv_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) if transient(&e) => {
                    self.recv_buf.clear();
                    self.counters.recv_errors += 1;
                    tracing::debug!(error = %e, "udp receive error ignored");
                    errors += 1;
                    if errors >= RECV_ERRORS_PER_POLL {
                        // Let the driver run; it polls again.
                        cx.waker().wake_by_ref();
                        return if got > 0 { Poll::Ready(Ok(())) } else { Poll::Pending };
                    }
                }
                Err(e) => {
                    self.recv_buf.clear();
                    self.counters.recv_errors += 1;
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn send(&mut self, to: &[SocketAddr], frame: &[&[u8]]) -> io::Result<()> {
        let len = frame_len(frame);
        if frame.len() <= MAX_SLICES {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            for (slot, s) in slices.iter_mut().zip(frame) {
                *slot = IoSlice::new(s);
            }
            let slices = &slices[..frame.len()];
            for &addr in to {
                self.send_one(addr, slices, len);
            }
        } else {
            let mut joined = std::mem::take(&mut self.join_buf);
            joined.clear();
            join_frame(frame, &mut joined);
            for &addr in to {
                self.send_one(addr, &[IoSlice::new(&joined)], len);
            }
            self.join_buf = joined;
        }
        Ok(())
    }

    fn stats(&self, out: &mut Stats) {
        let c = &self.counters;
        c.datagrams.report(out);
        out.add("send_errors", c.send_errors).add("recv_errors", c.recv_errors);
        let sock = SockRef::from(&self.socket);
        if let Ok(n) = sock.recv_buffer_size() {
            out.add("rcvbuf_bytes", n as u64);
        }
        if let Ok(n) = sock.send_buffer_size() {
            out.add("sndbuf_bytes", n as u64);
        }
    }
}
