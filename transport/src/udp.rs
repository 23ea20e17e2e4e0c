//! UDP: one socket, unicast to every member (a cast to `n` members is `n - 1`
//! datagrams of the same frame).
//!
//! - **Buffers.** The socket asks for [`SOCKET_BUFFER_BYTES`] of receive and
//!   send buffer (the OS caps it at `net.core.rmem_max`/`wmem_max`); failing
//!   to get them is not an error, only more drops under bursts.
//! - **Batching** ([`UdpConfig::batch`], on by default; Linux and Android).
//!   Up to [`RECV_BATCH`] datagrams are read per `recvmmsg`; sends are
//!   queued during a driver round and leave together with `sendmmsg` when
//!   the driver calls [`Transport::flush`] (or, without bundling, when
//!   [`SEND_BATCH`] datagrams are queued). Off, it is one `recvfrom` and one
//!   `sendmsg` per datagram.
//!   docs/transports/udp.md has the measured difference.
//! - **Bundling** ([`UdpConfig::bundle`], on by default). Frames handed
//!   over for one destination during a driver round leave packed into
//!   datagrams of at most `bundle` bytes when the driver calls
//!   [`Transport::flush`]; a lone frame leaves plain. Bundles received are
//!   handed to the driver frame by frame, as slices of the datagram. The
//!   [`bundle`] module has the format and the rules.
//! - **Receive.** Datagrams are read into the spare room of one reusable
//!   `BytesMut` and split off: no allocation per datagram. A datagram's
//!   `Bytes` keeps its chunk of the buffer ([`RECV_CHUNK_BYTES`]) alive until
//!   every datagram cut from that chunk is dropped.
//! - **Send.** The socket is non-blocking and the driver never waits for it:
//!   a full send buffer (`WouldBlock`) drops the datagram and counts it
//!   (`send_drops`), as the network would; a reliability layer repairs it.
//!   Other errors, such as `ECONNREFUSED` left behind by an ICMP
//!   port-unreachable from a dead peer, are counted and ignored.
//!
//! The details of both paths are in the `batch` module's docs.

use crate::batch::{self, IoCounters, Receiver, Sender};
pub use crate::batch::{RECV_BATCH, RECV_CHUNK_BYTES, SEND_BATCH};
use crate::bundle;
pub use crate::bundle::DEFAULT_BUNDLE_BYTES;
use bytes::Bytes;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use strata_stack::runtime::Transport;
use strata_stack::Stats;
use tokio::net::UdpSocket;

/// Receive and send buffer the socket asks the OS for.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;

/// How a [`UdpTransport`] works.
#[derive(Clone, Debug)]
pub struct UdpConfig {
    /// Batch system calls (`recvmmsg`/`sendmmsg`) where the OS has them.
    /// Default true; false sends each datagram with its own `sendmsg` (at
    /// once without bundling; at `flush` with it) and reads each with its
    /// own `recvfrom`.
    pub batch: bool,
    /// Bundle the frames sent to one destination in one driver round into
    /// datagrams of at most this many bytes (at most [`MAX_DATAGRAM`]; a
    /// larger frame goes alone). Default [`DEFAULT_BUNDLE_BYTES`]; 0 sends
    /// each frame as its own datagram. Bundles are received whatever this says.
    pub bundle: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig { batch: true, bundle: DEFAULT_BUNDLE_BYTES }
    }
}

/// A UDP socket driven by tokio, as a [`Transport`].
pub struct UdpTransport {
    socket: UdpSocket,
    local: SocketAddr,
    receiver: Receiver,
    sender: Sender,
    counters: IoCounters,
    /// Datagrams just read, before bundles are opened.
    scratch: Vec<(SocketAddr, Bytes)>,
}

impl std::fmt::Debug for UdpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpTransport")
            .field("local", &self.local)
            .field("batched", &self.sender.batched())
            .field("bundled", &self.sender.bundles())
            .finish_non_exhaustive()
    }
}

/// A non-blocking UDP socket with large buffers (best effort), not yet bound.
pub(crate) fn udp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer only means more drops under bursts.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A non-blocking UDP socket bound at `addr`, with the buffers this
/// transport asks for: for tools that compare plain UDP with it.
pub fn bound_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = udp_socket(addr)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

impl UdpTransport {
    /// Binds a UDP socket with the default configuration (batched). Port 0
    /// lets the OS pick; [`Transport::local_addr`] tells which.
    pub async fn bind(addr: SocketAddr) -> io::Result<UdpTransport> {
        UdpTransport::bind_with(addr, UdpConfig::default()).await
    }

    /// Binds a UDP socket (SO_REUSEADDR off; 4 MiB SO_RCVBUF/SO_SNDBUF, best
    /// effort) configured by `config`.
    pub async fn bind_with(addr: SocketAddr, config: UdpConfig) -> io::Result<UdpTransport> {
        UdpTransport::from_std_with(bound_socket(addr)?, config)
    }

    /// Wraps a socket bound elsewhere (it is made non-blocking), batched.
    /// Must be called inside a tokio runtime.
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<UdpTransport> {
        UdpTransport::from_std_with(socket, UdpConfig::default())
    }

    /// Wraps a socket bound elsewhere (it is made non-blocking), configured
    /// by `config`. Must be called inside a tokio runtime.
    pub fn from_std_with(socket: std::net::UdpSocket, config: UdpConfig) -> io::Result<UdpTransport> {
        socket.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(socket)?;
        let local = socket.local_addr()?;
        Ok(UdpTransport {
            socket,
            local,
            receiver: Receiver::new(config.batch),
            sender: Sender::new(config.batch, config.bundle),
            counters: IoCounters::default(),
            scratch: Vec::with_capacity(RECV_BATCH),
        })
    }
}

impl Transport for UdpTransport {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn max_datagram(&self) -> usize {
        MAX_DATAGRAM
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>, out: &mut Vec<(SocketAddr, Bytes)>) -> Poll<io::Result<()>> {
        let start = out.len();
        let polled = self.receiver.poll_recv(&self.socket, cx, &mut self.counters, &mut self.scratch, RECV_BATCH);
        for (from, data) in self.scratch.drain(..) {
            bundle::receive(from, data, out, &mut self.counters.bundles);
        }
        match polled {
            // Only malformed bundles, and the socket's waker is not
            // registered: come back for what may be waiting.
            Poll::Ready(Ok(())) if out.len() == start => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            polled => polled,
        }
    }

    fn send(&mut self, to: &[SocketAddr], frame: &[&[u8]]) -> io::Result<()> {
        self.sender.send(&self.socket, to, frame, &mut self.counters);
        Ok(())
    }

    fn flush(&mut self) {
        self.sender.flush(&self.socket, &mut self.counters);
    }

    fn stats(&self, out: &mut Stats) {
        self.counters.report(out);
        batch::report_buffers(&self.socket, out);
    }
}
