//! An in-process network: a switch of bounded queues, one per address, for
//! tests and benches that want real tasks and a real clock without sockets.
//!
//! It behaves like a quiet LAN running UDP: datagrams between two addresses
//! arrive in the order sent and are never corrupted; a datagram to an address
//! nobody has bound vanishes; a datagram arriving at a full receive queue
//! (default [`DEFAULT_QUEUE_DATAGRAMS`]) is dropped and counted, like a full
//! socket buffer. As over UDP, the frames of one driver round to one
//! destination are bundled into datagrams of up to
//! [`DEFAULT_BUNDLE_BYTES`] (see
//! [`bundle`]; [`MemNetwork::with_bundle`] changes the limit or,
//! with 0, sends every frame as a datagram of its own). A datagram costs one
//! copy when sent (into one `Bytes` shared by every destination of an
//! unbundled frame) and none when received: a bundle's frames are slices of it.

use crate::bundle::{self, BundleCounters, Bundler, DEFAULT_BUNDLE_BYTES};
use crate::counters::{frame_len, join_frame, DatagramCounters};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use strata_stack::runtime::Transport;
use strata_stack::Stats;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// Datagrams an address's receive queue holds before it drops.
pub const DEFAULT_QUEUE_DATAGRAMS: usize = 4096;
/// Datagrams handed to the driver per `poll_recv`.
const RECV_BATCH: usize = 64;
/// Ports handed out for binds to port 0 start here.
const FIRST_AUTO_PORT: u16 = 40_000;

type Datagram = (SocketAddr, Bytes);

struct Port {
    /// Tells a transport's own entry from a later bind of the same address.
    id: u64,
    tx: mpsc::Sender<Datagram>,
}

struct Switch {
    ports: HashMap<SocketAddr, Port>,
    queue_datagrams: usize,
    max_datagram: usize,
    /// The largest bundle, 0 for none.
    bundle: usize,
    next_id: u64,
    next_port: u16,
}

/// An in-process switch. Cloning is cheap; clones are the same network.
#[derive(Clone)]
pub struct MemNetwork {
    switch: Arc<Mutex<Switch>>,
}

impl Default for MemNetwork {
    fn default() -> Self {
        MemNetwork::new()
    }
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemNetwork").field("ports", &self.lock().ports.len()).finish_non_exhaustive()
    }
}

impl MemNetwork {
    /// A network whose receive queues hold [`DEFAULT_QUEUE_DATAGRAMS`],
    /// whose datagrams carry up to 65 507 bytes, as UDP over IPv4, and whose
    /// transports bundle frames into datagrams of up to
    /// [`DEFAULT_BUNDLE_BYTES`], as UDP's do.
    pub fn new() -> MemNetwork {
        MemNetwork::with_limits(DEFAULT_QUEUE_DATAGRAMS, 65_507)
    }

    /// A network with receive queues of `queue_datagrams` (at least 1) and
    /// datagrams of at most `max_datagram` bytes.
    pub fn with_limits(queue_datagrams: usize, max_datagram: usize) -> MemNetwork {
        let switch = Switch {
            ports: HashMap::new(),
            queue_datagrams: queue_datagrams.max(1),
            max_datagram,
            bundle: DEFAULT_BUNDLE_BYTES,
            next_id: 0,
            next_port: FIRST_AUTO_PORT,
        };
        MemNetwork { switch: Arc::new(Mutex::new(switch)) }
    }

    /// The same network, whose transports bound from now on bundle frames
    /// into datagrams of at most `bytes` (capped by the network's
    /// `max_datagram`); 0 sends every frame as a datagram of its own.
    pub fn with_bundle(self, bytes: usize) -> MemNetwork {
        self.lock().bundle = bytes;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Switch> {
        // A panic elsewhere cannot leave the map half-updated: keep going.
        self.switch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A transport at `addr` on this network. Datagrams to unknown addresses vanish; a full
    /// receive queue (bounded) drops, like UDP.
    ///
    /// Port 0 picks a free port. Binding an address that is in use takes it
    /// over: the earlier transport receives nothing more.
    pub fn bind(&self, addr: SocketAddr) -> MemTransport {
        let mut switch = self.lock();
        let mut local = addr;
        if local.port() == 0 {
            loop {
                let port = switch.next_port;
                switch.next_port = switch.next_port.checked_add(1).unwrap_or(FIRST_AUTO_PORT);
                local.set_port(port);
                if !switch.ports.contains_key(&local) {
                    break;
                }
            }
        }
        let (tx, rx) = mpsc::channel(switch.queue_datagrams);
        let id = switch.next_id;
        switch.next_id += 1;
        switch.ports.insert(local, Port { id, tx });
        let bundler = (switch.bundle > 0).then(|| Bundler::new(switch.bundle.min(switch.max_datagram)));
        MemTransport {
            local,
            id,
            net: self.clone(),
            rx,
            routes: HashMap::new(),
            max_datagram: switch.max_datagram,
            bundler,
            inbox: Vec::with_capacity(RECV_BATCH),
            counters: MemCounters::default(),
        }
    }

    fn route(&self, to: &SocketAddr) -> Option<mpsc::Sender<Datagram>> {
        self.lock().ports.get(to).map(|p| p.tx.clone())
    }

    /// Puts raw bytes on the wire from `from` to `to` (for tests that feed an
    /// endpoint garbage). Returns whether the datagram was queued.
    pub fn inject(&self, from: SocketAddr, to: SocketAddr, datagram: Bytes) -> bool {
        self.route(&to).is_some_and(|tx| tx.try_send((from, datagram)).is_ok())
    }
}

#[derive(Default)]
struct MemCounters {
    datagrams: DatagramCounters,
    bundles: BundleCounters,
    no_route: u64,
}

/// One address on a [`MemNetwork`].
pub struct MemTransport {
    local: SocketAddr,
    id: u64,
    net: MemNetwork,
    rx: mpsc::Receiver<Datagram>,
    /// Senders already looked up, so that a send takes no lock.
    routes: HashMap<SocketAddr, mpsc::Sender<Datagram>>,
    max_datagram: usize,
    /// Frames queued per destination until the end of the round (bundling on).
    bundler: Option<Bundler>,
    /// Datagrams just received, before bundles are opened.
    inbox: Vec<Datagram>,
    counters: MemCounters,
}

impl std::fmt::Debug for MemTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemTransport").field("local", &self.local).finish_non_exhaustive()
    }
}

impl MemTransport {
    fn deliver(&mut self, to: SocketAddr, datagram: &Bytes) {
        // Two tries: a cached route may lead to a transport that has since
        // gone, and the address may have been bound again.
        for _ in 0..2 {
            if !self.routes.contains_key(&to) {
                match self.net.route(&to) {
                    Some(tx) => {
                        self.routes.insert(to, tx);
                    }
                    None => break,
                }
            }
            let Some(tx) = self.routes.get(&to) else { break };
            match tx.try_send((self.local, datagram.clone())) {
                Ok(()) => {
                    self.counters.datagrams.sent(datagram.len());
                    return;
                }
                Err(TrySendError::Full(_)) => {
                    self.counters.datagrams.send_dropped();
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    self.routes.remove(&to);
                }
            }
        }
        self.counters.no_route += 1;
    }
}

impl Drop for MemTransport {
    fn drop(&mut self) {
        let mut switch = self.net.lock();
        if switch.ports.get(&self.local).is_some_and(|p| p.id == self.id) {
            switch.ports.remove(&self.local);
        }
    }
}

impl Transport for MemTransport {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>, out: &mut Vec<(SocketAddr, Bytes)>) -> Poll<std::io::Result<()>> {
        let start = out.len();
        loop {
            match self.rx.poll_recv_many(cx, &mut self.inbox, RECV_BATCH) {
                // Zero means the queue was closed: a later bind took the
                // address over. Nothing will ever arrive again.
                Poll::Ready(0) | Poll::Pending => return Poll::Pending,
                Poll::Ready(_) => {
                    for (from, datagram) in self.inbox.drain(..) {
                        self.counters.datagrams.received(datagram.len());
                        bundle::receive(from, datagram, out, &mut self.counters.bundles);
                    }
                    // Only malformed bundles: look again, so that the waker
                    // is registered if the queue is empty.
                    if out.len() > start {
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }

    fn send(&mut self, to: &[SocketAddr], frame: &[&[u8]]) -> std::io::Result<()> {
        let len = frame_len(frame);
        if len > self.max_datagram {
            // The engine never builds such a frame; a raw caller gets UDP's answer.
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "datagram larger than the network's max_datagram"));
        }
        if let Some(bundler) = &mut self.bundler {
            if bundler.push_all(to, frame, len) {
                self.flush();
            }
            return Ok(());
        }
        // Receivers keep the datagram: one fresh buffer per frame, shared by
        // every destination.
        let mut joined = BytesMut::with_capacity(len);
        join_frame(frame, &mut joined);
        let datagram = joined.freeze();
        for &addr in to {
            self.deliver(addr, &datagram);
        }
        Ok(())
    }

    fn flush(&mut self) {
        let Some(mut bundler) = self.bundler.take() else { return };
        bundler.seal(&mut self.counters.bundles);
        for i in 0..bundler.outgoing_len() {
            let (data, _, to) = bundler.outgoing(i);
            // Receivers keep the datagram: one fresh buffer per datagram.
            self.deliver(to, &Bytes::copy_from_slice(data));
        }
        bundler.clear();
        self.bundler = Some(bundler);
    }

    fn stats(&self, out: &mut Stats) {
        self.counters.datagrams.report(out);
        self.counters.bundles.report(out);
        out.add("no_route", self.counters.no_route);
    }
}
