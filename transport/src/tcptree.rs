//! TCP tree: members keep TCP connections only along a spanning tree of each
//! group's view, casts travel down and up that tree, and point-to-point
//! traffic uses a direct connection opened on demand.
//!
//! - **The tree.** One `k`-ary tree per view by rank ([`crate::tree`]),
//!   rooted at rank 0, the coordinator: every member computes the same tree
//!   from the view alone, with no extra agreement, and the root is the one
//!   member VSYNC already keeps stable across most view changes (joiners are
//!   appended, so ranks near the root move least). A cast leaves its sender
//!   on all its tree edges; each member hands it up and forwards it on every
//!   edge but the one it logically came in on, only if the cast's view tag
//!   equals its own tag for that group ([`wire_tag`]: the view's members and
//!   the fanout), so trees of different views or different fanouts never
//!   form a cycle. A cast with another tag, or for a group this endpoint
//!   does not carry, is handed up and not forwarded (the driver counts
//!   unknown groups). [`Transport::set_view`] rebuilds a group's tree; this
//!   member opens connections to its new neighbours with higher addresses at
//!   once (the lower address of a pair connects), the others as soon as
//!   something is sent.
//! - **Routing around lost members.** The tree is only rebuilt on a new
//!   view, and the membership needs the old view's casts to install one, so
//!   a member does the forwarding of a tree neighbour it cannot reach
//!   ([`tree::next_hops`]): the copy goes to that neighbour's other
//!   neighbours, marked as coming from it. So every copy carries the rank it
//!   logically came from, and that rank, not the connection it arrived on,
//!   says which edge not to forward it on (a copy routed around a lost
//!   member arrives from a non-neighbour). A from rank outside the view or
//!   equal to the receiver's own is handed up and not forwarded
//!   (`not_forwarded_bad_from`). A peer is unreachable (marked, by address,
//!   whatever the group) from the moment its connection is lost (below) until
//!   a connection to it is established again; frames already queued on a
//!   connection that breaks are dropped and counted (`unsent_dropped`), not
//!   routed again: the reliability layer repairs them. Every
//!   [`RECONNECT_BACKOFF_MIN`], unreachable tree neighbours whose backoff is
//!   over are connected to again, so a healed partition restores the edge.
//! - **Connections.** One reader and writer per connection run in a tokio
//!   task; received frames reach [`Transport::poll_recv`] through one bounded
//!   channel ([`INBOUND_EVENTS`]), so a slow driver stops the readers and TCP
//!   pushes back on the senders. A connection is used in both directions: the
//!   connecting side opens it with a hello naming its listening address (its
//!   member address), which the accepting side validates. If both sides of a
//!   pair connect at once, each keeps sending on the connection it had first
//!   and reads from both. A connection that is neither a tree edge of some
//!   group nor used for [`TcpTreeConfig::idle_close`] is closed with a
//!   goodbye, which the other side does not take for a failure.
//! - **Suspicion.** A connection lost without a goodbye (end of stream, reset,
//!   error), a connection that stalls (what it sent unacknowledged for
//!   [`TcpTreeConfig::stall_timeout`], Linux `TCP_USER_TIMEOUT`: how a
//!   partitioned or frozen peer shows), or a connect that is refused or times
//!   out marks the peer unreachable: it is routed around at once, and
//!   connected to again after a backoff (growing from
//!   [`RECONNECT_BACKOFF_MIN`] to [`RECONNECT_BACKOFF_MAX`]; what is sent to
//!   it point-to-point meanwhile is dropped and counted, `send_drops`). A
//!   connection that comes up again ends the outage unreported: under heavy
//!   segment loss TCP's retransmission backoff stalls connections to live
//!   peers. A failed connect (a killed member's port refuses at once), or
//!   an outage longer than [`TcpTreeConfig::longest_outage`], reports the
//!   peer through [`Transport::poll_lost`], once per outage; the driver turns
//!   that into a suspicion for each group whose view has it.
//! - **Framing.** After the hello, each direction carries
//!   `length u32 BE | kind u8 | ...`, the length counting what follows it:
//!   kind `P` (point-to-point) carries a stack frame, kind `C` (tree cast) a
//!   view tag u64 BE, the rank it comes from u32 BE, then a stack frame, kind
//!   `G` (goodbye) nothing. A frame is at most [`TcpTreeConfig::max_frame`]
//!   bytes ([`Transport::max_datagram`]).
//! - **Bounds.** Each connection's outgoing queue holds at most
//!   [`TcpTreeConfig::out_queue_bytes`]; a frame that does not fit is dropped
//!   and counted (`send_drops`), as a full socket buffer drops a datagram, and
//!   the reliability layer repairs it. A reader never buffers more than one
//!   frame plus one read; at most [`TcpTreeConfig::max_connections`]
//!   connections are open at once.
//! - **Bad input.** A hello that is not one (`bad_hello`) or does not come in
//!   time (`hello_timeout`), a length above the maximum (`frame_too_long`),
//!   an unknown kind (`bad_kind`), or bytes that are not a stack frame where
//!   one is expected (`not_a_frame`): counted, and the connection closed (its
//!   write side first, so the peer reads the end of stream). A protocol error
//!   is not reported as a lost peer.
//!
//! Casts are zero-copy along the tree: a frame is built once per cast into a
//! shared buffer, and a forwarded cast is the received stack frame, queued to
//! each further neighbour behind a 17-byte header written for that copy (the
//! from rank differs per copy).

use crate::counters::{frame_len, join_frame, DatagramCounters};
use crate::tree;
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use strata_stack::engine::peek_group;
use strata_stack::runtime::Transport;
use strata_stack::Stats;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// Events (frames, connections opened and closed) the connection tasks may
/// queue for the driver before their readers wait.
pub const INBOUND_EVENTS: usize = 512;
/// The first wait before connecting again to a peer that was lost.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait before connecting again to a peer that was lost.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Frames handed to the driver per `poll_recv`.
const RECV_BATCH: usize = 64;
/// Bytes the frame-building buffer is carved from.
const SEND_CHUNK_BYTES: usize = 256 << 10;
/// Bytes a reader asks the socket for at least.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Bytes a writer gathers into one write.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// How long a closing connection waits for the peer's end of stream, and
/// how much it reads and discards meanwhile.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 << 10;
/// Pause after a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The length prefix.
const LEN_BYTES: usize = 4;
/// A point-to-point frame: a stack frame follows.
const KIND_P: u8 = b'P';
/// A tree cast: a view tag (u64 BE), the rank it comes from (u32 BE) and a
/// stack frame follow.
const KIND_C: u8 = b'C';
/// An orderly close: nothing follows, nothing more will come.
const KIND_G: u8 = b'G';
/// Bytes before the stack frame in a tree cast (length, kind, tag, from rank).
const CAST_HEADER: usize = LEN_BYTES + 1 + 8 + 4;
/// Where the from rank sits in a tree cast.
const CAST_FROM: usize = LEN_BYTES + 1 + 8;
/// Bytes before the stack frame in a point-to-point frame (length, kind).
const P2P_HEADER: usize = LEN_BYTES + 1;
/// What a goodbye looks like on the wire.
const GOODBYE: [u8; 5] = [0, 0, 0, 1, KIND_G];

/// The hello: magic, version, address family (4 or 6), address, port BE.
const HELLO_MAGIC: [u8; 4] = *b"STTR";
const HELLO_VERSION: u8 = 1;

/// How a TCP tree transport behaves. All members of a group must use the
/// same `fanout` (a different one gives a different tree; their casts are
/// then handed up but not forwarded).
#[derive(Clone, Debug)]
pub struct TcpTreeConfig {
    /// `k`: children per member in the tree (at least 1). Default 2.
    pub fanout: usize,
    /// The largest stack frame carried ([`Transport::max_datagram`]); a
    /// longer length on the wire closes the connection. Default 65 507, as UDP.
    pub max_frame: usize,
    /// Bytes queued per connection before further frames to it are dropped.
    /// Default 2 MiB.
    pub out_queue_bytes: usize,
    /// Connections that are not a tree edge of any group are closed after
    /// this long without traffic. Default 10 s.
    pub idle_close: Duration,
    /// How long a connect, or an accepted connection's hello, may take.
    /// Default 2 s.
    pub connect_timeout: Duration,
    /// Connections open at once (accepted and connected); beyond it
    /// accepts are closed at once and new connects refused. Default 1024.
    pub max_connections: usize,
    /// How long data sent on a connection may stay unacknowledged before
    /// the connection is broken (Linux `TCP_USER_TIMEOUT`; ignored
    /// elsewhere): how a partitioned or frozen peer shows. The peer is
    /// routed around at once and connected to again; it is reported lost
    /// if that connect fails or it stays unreachable for
    /// [`TcpTreeConfig::longest_outage`]. Default 1 s.
    pub stall_timeout: Duration,
}

impl TcpTreeConfig {
    /// The longest a live peer can stay cut off by a broken connection:
    /// `stall_timeout` to notice, `connect_timeout` to connect again. A
    /// peer still unreachable this long after its connection broke is
    /// reported lost even without a failed connect.
    pub fn longest_outage(&self) -> Duration {
        self.stall_timeout + self.connect_timeout
    }
}

impl Default for TcpTreeConfig {
    fn default() -> Self {
        TcpTreeConfig {
            fanout: 2,
            max_frame: 65_507,
            out_queue_bytes: 2 << 20,
            idle_close: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            max_connections: 1024,
            stall_timeout: Duration::from_secs(1),
        }
    }
}

/// Where one member sits in a group's tree, with addresses: for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeInfo {
    /// This member's rank in the view.
    pub rank: usize,
    /// Its parent (none for the root, the coordinator).
    pub parent: Option<SocketAddr>,
    /// Its children.
    pub children: Vec<SocketAddr>,
    /// Edges between it and the root.
    pub level: usize,
    /// Edges between the root and the deepest member.
    pub depth: usize,
    /// The tag its casts carry ([`wire_tag`]).
    pub tag: u64,
}

impl fmt::Display for TreeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {} level {}/{} parent ", self.rank, self.level, self.depth)?;
        match self.parent {
            Some(p) => write!(f, "{p}")?,
            None => write!(f, "none (root)")?,
        }
        write!(f, " children [")?;
        for (i, c) in self.children.iter().enumerate() {
            write!(f, "{}{c}", if i > 0 { " " } else { "" })?;
        }
        write!(f, "] tag {:016x}", self.tag)
    }
}

/// The position of `me` in the `k`-ary tree of `members` (rank order), or
/// none if `me` is not among them.
pub fn tree_info(members: &[SocketAddr], me: SocketAddr, k: usize) -> Option<TreeInfo> {
    let rank = members.iter().position(|m| *m == me)?;
    let p = tree::position(rank, members.len(), k);
    Some(TreeInfo {
        rank,
        parent: p.parent.map(|r| members[r]),
        children: p.children.map(|r| members[r]).collect(),
        level: p.level,
        depth: p.depth,
        tag: wire_tag(members, k),
    })
}

/// The tag a tree cast carries: [`tree::view_tag`] of the members, mixed
/// with the fanout, so that members forward only casts routed by the very
/// tree they route by.
pub fn wire_tag(members: &[SocketAddr], k: usize) -> u64 {
    tree::view_tag(members) ^ (k.max(1) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Counted by the connection tasks.
#[derive(Default)]
struct TaskCounters {
    accepts: AtomicU64,
    accept_errors: AtomicU64,
    over_connection_limit: AtomicU64,
    connect_failures: AtomicU64,
    bad_hello: AtomicU64,
    hello_timeout: AtomicU64,
    frame_too_long: AtomicU64,
    bad_kind: AtomicU64,
    not_a_frame: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the transport and its tasks share.
struct Shared {
    counters: TaskCounters,
    /// Connection tasks alive (connecting, in hello, open or closing).
    live: AtomicUsize,
    /// Signalled when the last connection task ends ([`Closing`]).
    all_ended: tokio::sync::Notify,
    next_id: AtomicU64,
    max_connections: usize,
    connect_timeout: Duration,
    stall_timeout: Duration,
    /// The longest length field accepted.
    max_len: usize,
    /// This side's hello.
    hello: Bytes,
}

/// Holds one place among the live connections while a task runs.
struct LiveGuard(Arc<Shared>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_ended.notify_waiters();
        }
    }
}

/// How long a connection task, once its transport is dropped, goes on
/// writing the frames still queued for it before it ends.
const FLUSH_AFTER_DROP: Duration = Duration::from_millis(300);

/// Waits until a dropped transport's connections have written what was
/// queued for them ([`TcpTreeTransport::closing`]).
#[derive(Clone)]
pub struct Closing(Arc<Shared>);

impl Closing {
    /// Resolves once every connection task has ended, or after `limit`.
    /// Sends are asynchronous here: a process that exits right after
    /// shutting its endpoint down would otherwise lose its last frames
    /// (a leave's view messages, say).
    pub async fn wait(&self, limit: Duration) {
        let all_ended = async {
            loop {
                let notified = self.0.all_ended.notified();
                if self.0.live.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, all_ended).await;
    }
}

/// Ends when the transport is gone and the connection has had
/// [`FLUSH_AFTER_DROP`] to write what was queued (its queue's sender went
/// with the transport, so the writer drains it and closes).
async fn transport_gone(events: &mpsc::Sender<Event>) {
    events.closed().await;
    tokio::time::sleep(FLUSH_AFTER_DROP).await;
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// This side closed it (idle, or no longer needed).
    Local,
    /// The peer said goodbye.
    Goodbye,
    /// The peer broke the protocol (counted by reason).
    Protocol,
    /// End of stream without a goodbye, reset or error: the peer is lost.
    Lost,
    /// The connect failed or timed out.
    ConnectFailed,
}

/// What the tasks tell the transport.
enum Event {
    /// A whole wire frame (length, kind and the rest), already checked.
    Frame { id: u64, from: SocketAddr, wire: Bytes },
    /// An outgoing connection is up and its hello sent.
    Connected { id: u64 },
    /// An accepted connection said hello as `peer`.
    Accepted { id: u64, peer: SocketAddr, out: OutQueue },
    /// A connection ended, with `unsent` frames still in its queue (dropped).
    Closed { id: u64, peer: SocketAddr, cause: Cause, unsent: usize },
}

/// One frame on its way out: its header, written per copy, and its stack
/// frame, shared by every copy (a cast to several neighbours, a forwarded
/// cast: the received bytes).
struct Wire {
    head: [u8; CAST_HEADER],
    head_len: u8,
    body: Bytes,
}

impl Wire {
    fn point_to_point(body: Bytes) -> Wire {
        let mut w = Wire { head: [0; CAST_HEADER], head_len: P2P_HEADER as u8, body };
        w.head[..LEN_BYTES].copy_from_slice(&((P2P_HEADER - LEN_BYTES + w.body.len()) as u32).to_be_bytes());
        w.head[LEN_BYTES] = KIND_P;
        w
    }

    fn cast(tag: u64, from_rank: u32, body: Bytes) -> Wire {
        let mut w = Wire { head: [0; CAST_HEADER], head_len: CAST_HEADER as u8, body };
        w.head[..LEN_BYTES].copy_from_slice(&((CAST_HEADER - LEN_BYTES + w.body.len()) as u32).to_be_bytes());
        w.head[LEN_BYTES] = KIND_C;
        w.head[P2P_HEADER..CAST_FROM].copy_from_slice(&tag.to_be_bytes());
        w.head[CAST_FROM..CAST_HEADER].copy_from_slice(&from_rank.to_be_bytes());
        w
    }

    fn goodbye() -> Wire {
        let mut w = Wire { head: [0; CAST_HEADER], head_len: GOODBYE.len() as u8, body: Bytes::new() };
        w.head[..GOODBYE.len()].copy_from_slice(&GOODBYE);
        w
    }

    fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    fn len(&self) -> usize {
        usize::from(self.head_len) + self.body.len()
    }
}

/// What a connection's queue holds: bytes (its bound) and frames not yet
/// written (dropped, and counted, if the connection ends first).
#[derive(Default)]
struct QueueLevel {
    bytes: AtomicUsize,
    frames: AtomicUsize,
}

/// The sending end of a connection's queue, bounded in bytes.
struct OutQueue {
    tx: mpsc::UnboundedSender<Wire>,
    level: Arc<QueueLevel>,
}

impl OutQueue {
    fn new() -> (OutQueue, mpsc::UnboundedReceiver<Wire>, Arc<QueueLevel>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let level = Arc::new(QueueLevel::default());
        (OutQueue { tx, level: level.clone() }, rx, level)
    }

    /// Queues `wire` unless the queue is full or the connection gone.
    fn push(&self, wire: Wire, limit: usize) -> bool {
        let len = wire.len();
        // Only the transport adds, so the check cannot be overtaken.
        if self.level.bytes.load(Ordering::Relaxed) + len > limit {
            return false;
        }
        self.level.bytes.fetch_add(len, Ordering::Relaxed);
        self.level.frames.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(wire).is_err() {
            self.level.bytes.fetch_sub(len, Ordering::Relaxed);
            self.level.frames.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// One connection as the transport sees it.
struct Conn {
    peer: SocketAddr,
    out: OutQueue,
    /// Last frame queued to it or received from it.
    last_active: Instant,
    /// Connected (or accepted) and said hello.
    established: bool,
}

/// A group's tree, as this member routes by it.
#[derive(Default)]
struct GroupTree {
    members: Vec<SocketAddr>,
    tag: u64,
    /// This member's rank, if it is in the view.
    rank: Option<usize>,
    /// Parent and children.
    neighbours: Vec<SocketAddr>,
}

/// A peer this endpoint cannot reach now: routed around, and no new
/// connection to it before `until`; reported lost once the outage is
/// confirmed (see `lose`). Cleared when a connection to it is established.
struct Unreachable {
    until: Instant,
    backoff: Duration,
    /// When the peer went from reachable to unreachable.
    since: Instant,
    /// Whether [`Transport::poll_lost`] reported it (once per outage).
    reported: bool,
}

impl Unreachable {
    /// Reports `peer`'s outage to [`Transport::poll_lost`] (into `lost`), once.
    fn report(&mut self, peer: SocketAddr, lost: &mut Vec<SocketAddr>) {
        if !self.reported {
            self.reported = true;
            tracing::debug!(%peer, "tcptree lost a peer");
            lost.push(peer);
        }
    }
}

/// Counted by the transport itself.
#[derive(Default)]
struct Counters {
    datagrams: DatagramCounters,
    connects: u64,
    connects_off_tree: u64,
    connections_lost: u64,
    idle_closed: u64,
    casts_sent: u64,
    casts_direct: u64,
    sends: u64,
    casts_forwarded: u64,
    casts_rerouted: u64,
    not_forwarded_other_view: u64,
    not_forwarded_bad_from: u64,
    unsent_dropped: u64,
    send_too_long: u64,
    refused_over_limit: u64,
}

/// A TCP tree transport (see the module docs). Dropping it closes the
/// listener and every connection and ends their tasks.
pub struct TcpTreeTransport {
    local: SocketAddr,
    config: TcpTreeConfig,
    shared: Arc<Shared>,
    events: mpsc::Receiver<Event>,
    /// Handed to the tasks of outgoing connections.
    events_tx: mpsc::Sender<Event>,
    accept_task: AbortHandle,
    conns: HashMap<u64, Conn>,
    /// The connection frames to a peer go out on.
    by_peer: HashMap<SocketAddr, u64>,
    groups: HashMap<u32, GroupTree>,
    /// Tree neighbours in any group: their connections are kept open.
    tree_peers: HashSet<SocketAddr>,
    unreachable: HashMap<SocketAddr, Unreachable>,
    lost: Vec<SocketAddr>,
    /// Frames are built here and split off, so a frame costs no allocation of its own.
    out_buf: BytesMut,
    /// Scratch for the peers to connect to.
    scratch: Vec<SocketAddr>,
    /// Scratch for a cast's next hops by rank, then by address.
    hops: Vec<(usize, usize)>,
    route: Vec<(SocketAddr, u32)>,
    /// The wall clock at the start of the driver's round.
    now: Instant,
    next_idle_scan: Instant,
    next_probe: Instant,
    counters: Counters,
}

impl fmt::Debug for TcpTreeTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTreeTransport").field("local", &self.local).field("connections", &self.conns.len()).finish_non_exhaustive()
    }
}

impl TcpTreeTransport {
    /// Listens on `addr` (port 0 lets the OS pick; [`Transport::local_addr`]
    /// tells which, and is this member's address: bind a concrete IP the
    /// other members can reach, not 0.0.0.0). Must be called inside a tokio
    /// runtime.
    pub async fn bind(addr: SocketAddr, config: TcpTreeConfig) -> io::Result<TcpTreeTransport> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        if config.max_frame == 0 || config.max_frame > (u32::MAX as usize) - CAST_HEADER {
            return Err(invalid("max_frame must be between 1 and 4 GiB"));
        }
        if config.max_connections == 0 {
            return Err(invalid("max_connections must be at least 1"));
        }
        let mut config = config;
        config.fanout = config.fanout.max(1);
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            counters: TaskCounters::default(),
            live: AtomicUsize::new(0),
            all_ended: tokio::sync::Notify::new(),
            next_id: AtomicU64::new(0),
            max_connections: config.max_connections,
            connect_timeout: config.connect_timeout,
            stall_timeout: config.stall_timeout,
            max_len: config.max_frame + CAST_HEADER - LEN_BYTES,
            hello: encode_hello(local),
        });
        let (events_tx, events) = mpsc::channel(INBOUND_EVENTS);
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone(), events_tx.clone())).abort_handle();
        let now = Instant::now();
        Ok(TcpTreeTransport {
            local,
            config,
            shared,
            events,
            events_tx,
            accept_task,
            conns: HashMap::new(),
            by_peer: HashMap::new(),
            groups: HashMap::new(),
            tree_peers: HashSet::new(),
            unreachable: HashMap::new(),
            lost: Vec::new(),
            out_buf: BytesMut::new(),
            scratch: Vec::new(),
            hops: Vec::new(),
            route: Vec::new(),
            now,
            next_idle_scan: now,
            next_probe: now,
            counters: Counters::default(),
        })
    }

    /// A handle to wait, after the transport is dropped (its endpoint shut
    /// down), until its connections have written what was queued.
    pub fn closing(&self) -> Closing {
        Closing(self.shared.clone())
    }

    /// The configuration in use.
    pub fn config(&self) -> &TcpTreeConfig {
        &self.config
    }

    /// This member's place in group `gid`'s tree, as last given by
    /// [`Transport::set_view`]; none if the group is not carried or this
    /// member is not in its view.
    pub fn tree_of(&self, gid: u32) -> Option<TreeInfo> {
        let g = self.groups.get(&gid)?;
        tree_info(&g.members, self.local, self.config.fanout)
    }

    /// Copies `frame` into the shared building buffer and cuts it off, to
    /// be shared by every copy sent.
    fn build(&mut self, frame: &[&[u8]], len: usize) -> Bytes {
        if self.out_buf.capacity() < len {
            self.out_buf.reserve(len.max(SEND_CHUNK_BYTES));
        }
        join_frame(frame, &mut self.out_buf);
        self.out_buf.split().freeze()
    }

    /// Fills `self.route` with where a cast of group `gid` goes next from
    /// this member, which got it from rank `from` (`None`: its sender),
    /// routing around unreachable members: (peer, rank the copy is marked as
    /// coming from). Returns this member's rank and the tag, or none if this
    /// member is not in the group's view.
    fn plan_route(&mut self, gid: u32, from: Option<usize>) -> Option<(usize, u64)> {
        let g = self.groups.get(&gid)?;
        let rank = g.rank?;
        let unreachable = &self.unreachable;
        let members = &g.members;
        self.hops.clear();
        tree::next_hops(rank, from, members.len(), self.config.fanout, |r| unreachable.contains_key(&members[r]), &mut self.hops);
        self.route.clear();
        // Ranks fit in u32: `set_view` refuses larger views.
        self.route.extend(self.hops.iter().map(|&(to, as_from)| (members[to], as_from as u32)));
        Some((rank, g.tag))
    }

    /// Queues a copy of a cast to each hop of `route`; counts copies sent on
    /// behalf of a lost member.
    fn send_route(&mut self, route: &[(SocketAddr, u32)], rank: usize, tag: u64, body: &Bytes, forwarded: bool) {
        for &(peer, as_from) in route {
            if self.queue_to(peer, Wire::cast(tag, as_from, body.clone())) {
                self.counters.datagrams.sent(body.len());
                if forwarded {
                    self.counters.casts_forwarded += 1;
                }
                if as_from as usize != rank {
                    self.counters.casts_rerouted += 1;
                }
            }
        }
    }

    /// Queues a wire frame to `peer`, connecting first if need be. Counts
    /// a drop and returns false if it cannot be queued.
    fn queue_to(&mut self, peer: SocketAddr, wire: Wire) -> bool {
        let limit = self.config.out_queue_bytes;
        let id = match self.by_peer.get(&peer) {
            Some(id) => *id,
            None => match self.connect(peer) {
                Some(id) => id,
                None => {
                    self.counters.datagrams.send_dropped();
                    return false;
                }
            },
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            debug_assert!(false, "by_peer names only connections in the table");
            return false;
        };
        if conn.out.push(wire, limit) {
            conn.last_active = self.now;
            true
        } else {
            self.counters.datagrams.send_dropped();
            false
        }
    }

    /// Opens a connection to `peer` unless it is in its backoff or too many
    /// are open; frames can be queued to it at once.
    fn connect(&mut self, peer: SocketAddr) -> Option<u64> {
        if self.unreachable.get(&peer).is_some_and(|u| self.now < u.until) {
            return None;
        }
        if self.shared.live.load(Ordering::Relaxed) >= self.config.max_connections {
            self.counters.refused_over_limit += 1;
            return None;
        }
        self.shared.live.fetch_add(1, Ordering::Relaxed);
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (out, rx, queued) = OutQueue::new();
        self.counters.connects += 1;
        if !self.tree_peers.contains(&peer) {
            self.counters.connects_off_tree += 1;
        }
        tracing::debug!(%peer, id, "tcptree connecting");
        tokio::spawn(outgoing(LiveGuard(self.shared.clone()), self.events_tx.clone(), id, peer, rx, queued));
        self.conns.insert(id, Conn { peer, out, last_active: self.now, established: false });
        self.by_peer.insert(peer, id);
        Some(id)
    }

    /// Closes a connection this side no longer needs: a goodbye, then the
    /// end of its queue (its task writes what is queued and closes).
    fn close(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else { return };
        self.unlink(id, conn.peer);
        let _ = conn.out.push(Wire::goodbye(), usize::MAX);
    }

    /// Forgets `id` as the way to `peer`; another open connection to the
    /// same peer, if any, takes its place. Returns whether one did.
    fn unlink(&mut self, id: u64, peer: SocketAddr) -> bool {
        if self.by_peer.get(&peer) == Some(&id) {
            self.by_peer.remove(&peer);
            if let Some((other, _)) = self.conns.iter().find(|(_, c)| c.peer == peer) {
                self.by_peer.insert(peer, *other);
            }
        }
        self.conns.values().any(|c| c.peer == peer)
    }

    /// Marks `peer` unreachable (routed around from now on). A broken
    /// connection is not yet a lost peer: a stall under heavy segment loss
    /// breaks connections to live peers, so the peer is reported only when
    /// a connect to it fails too, or when it stays unreachable for
    /// [`TcpTreeConfig::longest_outage`].
    fn lose(&mut self, peer: SocketAddr, cause: Cause) {
        let now = self.now;
        let u = match self.unreachable.entry(peer) {
            Entry::Occupied(e) => {
                let u = e.into_mut();
                u.backoff = (u.backoff * 2).min(RECONNECT_BACKOFF_MAX);
                u.until = now + u.backoff;
                u
            }
            Entry::Vacant(e) => {
                self.counters.connections_lost += 1;
                tracing::debug!(%peer, ?cause, "tcptree cannot reach a peer");
                e.insert(Unreachable { until: now + RECONNECT_BACKOFF_MIN, backoff: RECONNECT_BACKOFF_MIN, since: now, reported: false })
            }
        };
        if cause == Cause::ConnectFailed {
            u.report(peer, &mut self.lost);
        }
    }

    /// Reports the peers unreachable for [`TcpTreeConfig::longest_outage`]
    /// since their connection broke that no failed connect reported yet (a
    /// fallback: a reconnect normally ends within `connect_timeout`, but one
    /// may not be tried, as when `max_connections` are open).
    fn report_overdue(&mut self) {
        let (now, outage) = (self.now, self.config.longest_outage());
        for (peer, u) in &mut self.unreachable {
            if now.saturating_duration_since(u.since) >= outage {
                u.report(*peer, &mut self.lost);
            }
        }
    }

    fn handle(&mut self, ev: Event, out: &mut Vec<(SocketAddr, Bytes)>) -> bool {
        match ev {
            Event::Frame { id, from, wire } => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.last_active = self.now;
                }
                let frame = if wire[LEN_BYTES] == KIND_C {
                    // The reader checked that the whole cast header is there.
                    let tag = u64::from_be_bytes(wire[P2P_HEADER..CAST_FROM].try_into().unwrap_or_default());
                    let as_from = u32::from_be_bytes(wire[CAST_FROM..CAST_HEADER].try_into().unwrap_or_default());
                    let frame = wire.slice(CAST_HEADER..);
                    self.forward(tag, as_from, &frame);
                    frame
                } else {
                    wire.slice(P2P_HEADER..)
                };
                self.counters.datagrams.received(frame.len());
                out.push((from, frame));
                return true;
            }
            Event::Connected { id } => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.established = true;
                    self.unreachable.remove(&c.peer);
                }
            }
            Event::Accepted { id, peer, out } => {
                tracing::debug!(%peer, id, "tcptree accepted");
                self.conns.insert(id, Conn { peer, out, last_active: self.now, established: true });
                self.by_peer.entry(peer).or_insert(id);
                self.unreachable.remove(&peer);
            }
            Event::Closed { id, peer, cause, unsent } => {
                // Absent: this side closed it already.
                if self.conns.remove(&id).is_some() {
                    tracing::debug!(%peer, id, ?cause, unsent, "tcptree connection closed");
                    // Lost with the connection; not routed again: NAK repairs them.
                    self.counters.unsent_dropped += unsent as u64;
                    for _ in 0..unsent {
                        self.counters.datagrams.send_dropped();
                    }
                    let others = self.unlink(id, peer);
                    if matches!(cause, Cause::Lost | Cause::ConnectFailed) && !others {
                        self.lose(peer, cause);
                    }
                }
            }
        }
        false
    }

    /// Forwards a received tree cast (its stack frame `frame`), which
    /// logically came from rank `as_from`, on every tree edge but that one,
    /// routing around unreachable members, if it was routed by this
    /// member's tree of its group. The connection it arrived on does not
    /// matter: a copy routed around a lost member comes from a non-neighbour.
    fn forward(&mut self, tag: u64, as_from: u32, frame: &Bytes) {
        let Some(gid) = peek_group(frame) else { return };
        let Some(g) = self.groups.get(&gid) else { return };
        let Some(rank) = g.rank.filter(|_| g.tag == tag) else {
            self.counters.not_forwarded_other_view += 1;
            return;
        };
        let as_from = as_from as usize;
        if as_from >= g.members.len() || as_from == rank {
            // Same tree, yet from no rank that could have sent it here.
            self.counters.not_forwarded_bad_from += 1;
            return;
        }
        if self.plan_route(gid, Some(as_from)).is_some() {
            let route = std::mem::take(&mut self.route);
            self.send_route(&route, rank, tag, frame, true);
            self.route = route;
        }
    }

    fn recompute_tree_peers(&mut self) {
        self.tree_peers.clear();
        for g in self.groups.values() {
            self.tree_peers.extend(g.neighbours.iter().copied());
        }
    }

    /// Closes connections idle for `idle_close` that are not tree edges,
    /// and forgets lost peers whose backoff ended long ago.
    fn idle_scan(&mut self) {
        let idle = self.config.idle_close;
        let now = self.now;
        let stale: Vec<u64> = self
            .conns
            .iter()
            .filter(|(id, c)| {
                let edge = self.tree_peers.contains(&c.peer) && self.by_peer.get(&c.peer) == Some(id);
                c.established && !edge && now.saturating_duration_since(c.last_active) >= idle
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.counters.idle_closed += 1;
            self.close(id);
        }
        // A mark stays while some view has the peer (it is routed around
        // until a connection to it is established again); others are only
        // a backoff, forgotten once long over.
        let groups = &self.groups;
        self.unreachable.retain(|peer, u| now.saturating_duration_since(u.until) < idle || groups.values().any(|g| g.members.contains(peer)));
    }

    /// Connects again to unreachable peers whose backoff is over, tree
    /// neighbours always and others until they are reported: if the
    /// connection is established they are reachable again (a stall under
    /// loss, or a partition healed before the membership removed them),
    /// unreported; if not, the backoff grows and a failed connect reports
    /// them.
    fn probe(&mut self) {
        let now = self.now;
        let mut due = std::mem::take(&mut self.scratch);
        due.clear();
        due.extend(
            self.unreachable
                .iter()
                .filter(|(peer, u)| now >= u.until && (self.tree_peers.contains(*peer) || !u.reported) && !self.by_peer.contains_key(*peer))
                .map(|(peer, _)| *peer),
        );
        for peer in due.drain(..) {
            self.connect(peer);
        }
        self.scratch = due;
    }
}

impl Drop for TcpTreeTransport {
    fn drop(&mut self) {
        // The connection tasks end when `events` is dropped (they wait on
        // `closed()`); the listener closes with its task.
        self.accept_task.abort();
    }
}

impl Transport for TcpTreeTransport {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn max_datagram(&self) -> usize {
        self.config.max_frame
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>, out: &mut Vec<(SocketAddr, Bytes)>) -> Poll<io::Result<()>> {
        self.now = Instant::now();
        let mut got = 0;
        while got < RECV_BATCH {
            match self.events.poll_recv(cx) {
                Poll::Ready(Some(ev)) => got += usize::from(self.handle(ev, out)),
                // Unreachable while `events_tx` lives; nothing more will come.
                Poll::Ready(None) => break,
                Poll::Pending if got == 0 => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn send(&mut self, to: &[SocketAddr], frame: &[&[u8]]) -> io::Result<()> {
        let len = frame_len(frame);
        if len > self.config.max_frame {
            self.counters.send_too_long += 1;
            return Ok(());
        }
        let body = self.build(frame, len);
        for &peer in to {
            self.counters.sends += 1;
            if self.queue_to(peer, Wire::point_to_point(body.clone())) {
                self.counters.datagrams.sent(len);
            }
        }
        Ok(())
    }

    fn cast(&mut self, gid: u32, peers: &[SocketAddr], frame: &[&[u8]]) -> io::Result<()> {
        let len = frame_len(frame);
        if len > self.config.max_frame {
            self.counters.send_too_long += 1;
            return Ok(());
        }
        let Some((rank, tag)) = self.plan_route(gid, None) else {
            // Not in its own view (cannot happen through the driver): straight to each peer.
            self.counters.casts_direct += 1;
            return self.send(peers, frame);
        };
        let body = self.build(frame, len);
        self.counters.casts_sent += 1;
        let route = std::mem::take(&mut self.route);
        self.send_route(&route, rank, tag, &body, false);
        self.route = route;
        Ok(())
    }

    fn open_group(&mut self, gid: u32, _name: &str) -> io::Result<()> {
        self.groups.entry(gid).or_default();
        Ok(())
    }

    fn close_group(&mut self, gid: u32) {
        if self.groups.remove(&gid).is_some() {
            self.recompute_tree_peers();
        }
    }

    fn set_view(&mut self, gid: u32, members: &[SocketAddr]) {
        self.now = Instant::now();
        let k = self.config.fanout;
        let g = self.groups.entry(gid).or_default();
        g.members.clear();
        g.members.extend_from_slice(members);
        g.tag = wire_tag(members, k);
        // Ranks travel as u32: a larger view (never seen) is not routed by.
        g.rank = members.iter().position(|m| *m == self.local).filter(|_| members.len() <= u32::MAX as usize);
        g.neighbours.clear();
        if let Some(rank) = g.rank {
            for r in tree::neighbours(rank, members.len(), k) {
                let n = members[r];
                if n != self.local && !g.neighbours.contains(&n) {
                    g.neighbours.push(n);
                }
            }
        }
        if let Some(info) = tree_info(members, self.local, k) {
            tracing::debug!(gid, tree = %info, "tcptree view");
        }
        let mut eager = std::mem::take(&mut self.scratch);
        eager.clear();
        eager.extend(g.neighbours.iter().copied().filter(|n| *n > self.local));
        self.recompute_tree_peers();
        for peer in eager.drain(..) {
            if !self.by_peer.contains_key(&peer) {
                self.connect(peer);
            }
        }
        self.scratch = eager;
    }

    fn flush(&mut self) {
        self.now = Instant::now();
        if self.now >= self.next_idle_scan {
            self.idle_scan();
            self.next_idle_scan = self.now + (self.config.idle_close / 4).max(Duration::from_millis(10));
        }
        if self.now >= self.next_probe && !self.unreachable.is_empty() {
            self.report_overdue();
            self.probe();
            self.next_probe = self.now + RECONNECT_BACKOFF_MIN;
        }
    }

    fn poll_lost(&mut self, out: &mut Vec<SocketAddr>) {
        out.append(&mut self.lost);
    }

    fn stats(&self, out: &mut Stats) {
        let c = &self.counters;
        let t = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        c.datagrams.report(out);
        out.add("connections_open", self.conns.values().filter(|c| c.established).count() as u64)
            .add("peers_connected", self.by_peer.len() as u64)
            .add("connects", c.connects)
            .add("connects_off_tree", c.connects_off_tree)
            .add("connect_failures", load(&t.connect_failures))
            .add("accepts", load(&t.accepts))
            .add("connections_lost", c.connections_lost)
            .add("idle_closed", c.idle_closed)
            .add("casts_sent", c.casts_sent)
            .add("casts_direct", c.casts_direct)
            .add("sends", c.sends)
            .add("casts_forwarded", c.casts_forwarded)
            .add("casts_rerouted", c.casts_rerouted)
            .add("peers_unreachable", self.unreachable.len() as u64)
            .add("unsent_dropped", c.unsent_dropped)
            .add("not_forwarded_other_view", c.not_forwarded_other_view)
            .add("not_forwarded_bad_from", c.not_forwarded_bad_from)
            .add("frame_too_long", load(&t.frame_too_long))
            .add("bad_kind", load(&t.bad_kind))
            .add("bad_hello", load(&t.bad_hello))
            .add("hello_timeout", load(&t.hello_timeout))
            .add("not_a_frame", load(&t.not_a_frame))
            .add("send_too_long", c.send_too_long)
            .add("over_connection_limit", load(&t.over_connection_limit) + c.refused_over_limit)
            .add("accept_errors", load(&t.accept_errors));
    }
}

// ---------------------------------------------------------------------------
// The hello.
// ---------------------------------------------------------------------------

fn encode_hello(addr: SocketAddr) -> Bytes {
    let mut b = BytesMut::with_capacity(24);
    b.put_slice(&HELLO_MAGIC);
    b.put_u8(HELLO_VERSION);
    match addr.ip() {
        IpAddr::V4(ip) => {
            b.put_u8(4);
            b.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            b.put_u8(6);
            b.put_slice(&ip.octets());
        }
    }
    b.put_u16(addr.port());
    b.freeze()
}

enum HelloError {
    /// Not a hello, or an address no member can have.
    Bad,
    /// The connection failed first.
    Io,
}

/// Reads and checks the peer's hello: its member address.
async fn read_hello(stream: &mut TcpStream) -> Result<SocketAddr, HelloError> {
    let mut head = [0u8; 6];
    stream.read_exact(&mut head).await.map_err(|_| HelloError::Io)?;
    if head[..4] != HELLO_MAGIC || head[4] != HELLO_VERSION {
        return Err(HelloError::Bad);
    }
    let ip = match head[5] {
        4 => {
            let mut a = [0u8; 4];
            stream.read_exact(&mut a).await.map_err(|_| HelloError::Io)?;
            IpAddr::V4(Ipv4Addr::from(a))
        }
        6 => {
            let mut a = [0u8; 16];
            stream.read_exact(&mut a).await.map_err(|_| HelloError::Io)?;
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => return Err(HelloError::Bad),
    };
    let port = stream.read_u16().await.map_err(|_| HelloError::Io)?;
    if port == 0 || ip.is_unspecified() || ip.is_multicast() {
        return Err(HelloError::Bad);
    }
    Ok(SocketAddr::new(ip, port))
}

// ---------------------------------------------------------------------------
// The tasks.
// ---------------------------------------------------------------------------

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, events: mpsc::Sender<Event>) {
    loop {
        let accepted = tokio::select! {
            _ = events.closed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, from)) => {
                if shared.live.load(Ordering::Relaxed) >= shared.max_connections {
                    bump(&shared.counters.over_connection_limit);
                    tracing::debug!(%from, "tcptree refused a connection: too many open");
                    continue;
                }
                bump(&shared.counters.accepts);
                shared.live.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(incoming(LiveGuard(shared.clone()), events.clone(), stream));
            }
            Err(e) => {
                bump(&shared.counters.accept_errors);
                tracing::debug!(error = %e, "tcptree accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Facts a connection's reader needs.
struct Link<'a> {
    shared: &'a Shared,
    events: &'a mpsc::Sender<Event>,
    id: u64,
    peer: SocketAddr,
}

async fn incoming(guard: LiveGuard, events: mpsc::Sender<Event>, mut stream: TcpStream) {
    let shared = guard.0.clone();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let work = async {
        let _ = stream.set_nodelay(true);
        set_stall_timeout(&stream, shared.stall_timeout);
        let peer = match tokio::time::timeout(shared.connect_timeout, read_hello(&mut stream)).await {
            Ok(Ok(peer)) => peer,
            Ok(Err(HelloError::Io)) => return,
            Ok(Err(HelloError::Bad)) => {
                bump(&shared.counters.bad_hello);
                tracing::debug!("tcptree closed a connection: bad hello");
                close_politely(stream).await;
                return;
            }
            Err(_) => {
                bump(&shared.counters.hello_timeout);
                tracing::debug!("tcptree closed a connection: no hello in time");
                close_politely(stream).await;
                return;
            }
        };
        let (out, rx, level) = OutQueue::new();
        if events.send(Event::Accepted { id, peer, out }).await.is_err() {
            return;
        }
        let link = Link { shared: &shared, events: &events, id, peer };
        let cause = run(stream, &link, rx, &level).await;
        let unsent = level.frames.load(Ordering::Relaxed);
        let _ = events.send(Event::Closed { id, peer, cause, unsent }).await;
    };
    tokio::select! {
        _ = transport_gone(&events) => {}
        _ = work => {}
    }
    drop(guard);
}

async fn outgoing(guard: LiveGuard, events: mpsc::Sender<Event>, id: u64, peer: SocketAddr, rx: mpsc::UnboundedReceiver<Wire>, level: Arc<QueueLevel>) {
    let shared = guard.0.clone();
    let work = async {
        let connected = tokio::time::timeout(shared.connect_timeout, async {
            let mut stream = TcpStream::connect(peer).await?;
            stream.set_nodelay(true)?;
            set_stall_timeout(&stream, shared.stall_timeout);
            stream.write_all(&shared.hello).await?;
            io::Result::Ok(stream)
        })
        .await;
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                bump(&shared.counters.connect_failures);
                tracing::debug!(%peer, error = %e, "tcptree connect failed");
                drop(rx);
                return Cause::ConnectFailed;
            }
            Err(_) => {
                bump(&shared.counters.connect_failures);
                tracing::debug!(%peer, "tcptree connect timed out");
                drop(rx);
                return Cause::ConnectFailed;
            }
        };
        if events.send(Event::Connected { id }).await.is_err() {
            return Cause::Local;
        }
        let link = Link { shared: &shared, events: &events, id, peer };
        run(stream, &link, rx, &level).await
    };
    tokio::select! {
        _ = transport_gone(&events) => {}
        cause = work => {
            // The queue's receiver is gone: no frame can be added to the count.
            let unsent = level.frames.load(Ordering::Relaxed);
            let _ = events.send(Event::Closed { id, peer, cause, unsent }).await;
        }
    }
    drop(guard);
}

/// Runs an open connection until it ends: frames in to the transport,
/// queued frames out.
async fn run(stream: TcpStream, link: &Link<'_>, mut rx: mpsc::UnboundedReceiver<Wire>, level: &QueueLevel) -> Cause {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::new();
    let cause = {
        let reader = read_frames(&mut rd, &mut buf, link);
        let writer = write_frames(&mut wr, &mut rx, level);
        tokio::pin!(reader, writer);
        tokio::select! {
            cause = &mut reader => cause,
            written = &mut writer => match written {
                Err(_) => Cause::Lost,
                // This side closed: let the peer read the goodbye and close its end.
                Ok(()) => {
                    let _ = tokio::time::timeout(LINGER, &mut reader).await;
                    Cause::Local
                }
            },
        }
    };
    // What is still queued is dropped with the connection (counted by the caller).
    drop(rx);
    if cause == Cause::Protocol {
        // The end of stream first, so the peer reads it rather than a reset.
        let _ = wr.shutdown().await;
        drain(&mut rd).await;
    }
    cause
}

/// Reads frames, checks them and passes them on, until the connection ends
/// or breaks the protocol.
async fn read_frames(rd: &mut OwnedReadHalf, buf: &mut BytesMut, link: &Link<'_>) -> Cause {
    let c = &link.shared.counters;
    loop {
        // Every whole frame in the buffer.
        let need = loop {
            if buf.len() < LEN_BYTES {
                break LEN_BYTES;
            }
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > link.shared.max_len {
                bump(&c.frame_too_long);
                tracing::debug!(peer = %link.peer, len, "tcptree closed a connection: frame too long");
                return Cause::Protocol;
            }
            if buf.len() < LEN_BYTES + len {
                break LEN_BYTES + len;
            }
            let body = &buf[LEN_BYTES..LEN_BYTES + len];
            let frame_ok = match body.first() {
                Some(&KIND_G) if len == 1 => return Cause::Goodbye,
                Some(&KIND_P) => peek_group(&body[1..]).is_some(),
                Some(&KIND_C) => len >= CAST_HEADER - LEN_BYTES && peek_group(&body[CAST_HEADER - LEN_BYTES..]).is_some(),
                _ => {
                    bump(&c.bad_kind);
                    tracing::debug!(peer = %link.peer, "tcptree closed a connection: bad frame kind");
                    return Cause::Protocol;
                }
            };
            if !frame_ok {
                bump(&c.not_a_frame);
                tracing::debug!(peer = %link.peer, "tcptree closed a connection: not a stack frame");
                return Cause::Protocol;
            }
            let wire = buf.split_to(LEN_BYTES + len).freeze();
            if link.events.send(Event::Frame { id: link.id, from: link.peer, wire }).await.is_err() {
                return Cause::Local;
            }
        };
        // Room for the rest of this frame and then some, never more.
        let room = need.saturating_sub(buf.len()).max(READ_CHUNK_BYTES);
        if buf.capacity() - buf.len() < room {
            buf.reserve(room);
        }
        match rd.read_buf(buf).await {
            Ok(0) => return Cause::Lost,
            Ok(_) => {}
            Err(_) => return Cause::Lost,
        }
    }
}

/// Writes queued frames, several per system call, until the queue ends
/// (this side closed: shuts the write side down) or a write fails.
async fn write_frames(wr: &mut OwnedWriteHalf, rx: &mut mpsc::UnboundedReceiver<Wire>, level: &QueueLevel) -> io::Result<()> {
    let mut batch = Vec::with_capacity(WRITE_BATCH_BYTES);
    loop {
        let Some(first) = rx.recv().await else {
            wr.shutdown().await?;
            return Ok(());
        };
        batch.clear();
        batch.extend_from_slice(first.head());
        let mut frames = 1;
        // A large frame goes out alone, its body as it is; small ones are gathered.
        if first.body.len() >= WRITE_BATCH_BYTES / 2 {
            wr.write_all(&batch).await?;
            wr.write_all(&first.body).await?;
            level.bytes.fetch_sub(first.len(), Ordering::Relaxed);
            level.frames.fetch_sub(frames, Ordering::Relaxed);
            continue;
        }
        batch.extend_from_slice(&first.body);
        while batch.len() < WRITE_BATCH_BYTES / 2 {
            match rx.try_recv() {
                Ok(more) => {
                    batch.extend_from_slice(more.head());
                    batch.extend_from_slice(&more.body);
                    frames += 1;
                }
                Err(_) => break,
            }
        }
        wr.write_all(&batch).await?;
        level.bytes.fetch_sub(batch.len(), Ordering::Relaxed);
        level.frames.fetch_sub(frames, Ordering::Relaxed);
    }
}

/// Breaks the connection when what it sent stays unacknowledged for
/// `timeout` (a partitioned or frozen peer), rather than after the kernel's
/// retransmissions give up (about 15 minutes).
fn set_stall_timeout(stream: &TcpStream, timeout: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout)) {
        tracing::debug!(error = %e, "tcptree could not set TCP_USER_TIMEOUT");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
    let _ = (stream, timeout);
}

/// Shuts the write side, then reads and discards what the peer still sends
/// (bounded in time and bytes), so that it reads an end of stream, not a reset.
async fn close_politely(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    drain(&mut stream).await;
}

async fn drain(rd: &mut (impl AsyncRead + Unpin)) {
    let mut scratch = [0u8; 4096];
    let mut total = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while total < LINGER_BYTES {
            match rd.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i))).collect()
    }

    /// Runs `t` as a driver would (receive, flush) until `done` holds;
    /// false if `limit` passes first.
    async fn drive(t: &mut TcpTreeTransport, limit: Duration, mut done: impl FnMut(&mut TcpTreeTransport) -> bool) -> bool {
        let end = Instant::now() + limit;
        let mut got = Vec::new();
        loop {
            std::future::poll_fn(|cx| {
                let _ = t.poll_recv(cx, &mut got);
                Poll::Ready(())
            })
            .await;
            got.clear();
            t.flush();
            if done(t) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn connected(t: &TcpTreeTransport, peer: SocketAddr) -> bool {
        t.by_peer.get(&peer).and_then(|id| t.conns.get(id)).is_some_and(|c| c.established)
    }

    /// Breaks `t`'s connection to `peer` as a stall would (`TCP_USER_TIMEOUT`).
    fn stall(t: &mut TcpTreeTransport, peer: SocketAddr) {
        let id = t.by_peer[&peer];
        t.handle(Event::Closed { id, peer, cause: Cause::Lost, unsent: 0 }, &mut Vec::new());
    }

    #[tokio::test]
    async fn a_broken_connection_is_reported_only_if_the_peer_stays_unreachable() {
        let config = TcpTreeConfig { stall_timeout: Duration::from_millis(100), connect_timeout: Duration::from_millis(200), ..TcpTreeConfig::default() };
        let outage = config.longest_outage();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut a = TcpTreeTransport::bind(loopback, config.clone()).await.unwrap();
        let b = TcpTreeTransport::bind(loopback, config).await.unwrap();
        let b_addr = b.local_addr();
        let frame = [0xA1, 0, 0, 0, 0, 7];
        a.send(&[b_addr], &[&frame]).unwrap();
        assert!(drive(&mut a, Duration::from_secs(5), |a| connected(a, b_addr)).await, "a connects to b");

        // A stall to a live peer: routed around, connected again, never reported.
        stall(&mut a, b_addr);
        assert!(a.unreachable.contains_key(&b_addr), "routed around from the stall on");
        assert!(drive(&mut a, Duration::from_secs(5), |a| connected(a, b_addr)).await, "a connects to b again");
        assert!(!a.unreachable.contains_key(&b_addr));
        assert!(!drive(&mut a, outage * 2, |a| !a.lost.is_empty()).await, "a live peer is not reported: {:?}", a.lost);
        assert_eq!(a.counters.connections_lost, 1);

        // The peer is gone: the connect after the break is refused, and the
        // peer is reported, once.
        drop(b);
        let broken = drive(&mut a, Duration::from_secs(5), |a| !connected(a, b_addr)).await;
        if !broken {
            stall(&mut a, b_addr);
        }
        let mut lost = Vec::new();
        assert!(
            drive(&mut a, Duration::from_secs(5), |a| {
                a.poll_lost(&mut lost);
                !lost.is_empty()
            })
            .await,
            "the gone peer is reported"
        );
        assert!(
            !drive(&mut a, outage * 2, |a| {
                a.poll_lost(&mut lost);
                lost.len() > 1
            })
            .await,
            "reported once: {lost:?}"
        );
        assert_eq!(lost, vec![b_addr]);
    }

    #[tokio::test]
    async fn a_peer_unreachable_for_the_longest_outage_is_reported_once_without_a_failed_connect() {
        let config = TcpTreeConfig::default();
        let outage = config.longest_outage();
        let mut a = TcpTreeTransport::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await.unwrap();
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        a.lose(peer, Cause::Lost);
        let mut lost = Vec::new();
        a.now += outage - Duration::from_millis(1);
        a.report_overdue();
        a.poll_lost(&mut lost);
        assert!(lost.is_empty(), "within the longest outage a stall is not a loss");
        a.now += Duration::from_millis(1);
        a.report_overdue();
        a.report_overdue();
        a.poll_lost(&mut lost);
        assert_eq!(lost, vec![peer], "reported once the outage outlasts the longest a live peer can be cut off");
        a.now += outage;
        a.report_overdue();
        a.poll_lost(&mut lost);
        assert_eq!(lost, vec![peer], "once per outage");
    }

    #[test]
    fn tree_info_names_parent_and_children_by_address() {
        let m = addrs(6);
        let info = tree_info(&m, m[1], 2).unwrap();
        assert_eq!(info.rank, 1);
        assert_eq!(info.parent, Some(m[0]));
        assert_eq!(info.children, vec![m[3], m[4]]);
        assert_eq!((info.level, info.depth), (1, 2));
        assert_eq!(tree_info(&m, m[0], 2).unwrap().parent, None);
        assert_eq!(tree_info(&m, SocketAddr::from(([10, 0, 0, 1], 1)), 2), None);
        assert!(info.to_string().contains("children [127.0.0.1:9003 127.0.0.1:9004]"));
    }

    #[test]
    fn the_tag_depends_on_members_order_and_fanout() {
        let m = addrs(4);
        let mut swapped = m.clone();
        swapped.swap(0, 1);
        assert_ne!(wire_tag(&m, 2), wire_tag(&swapped, 2));
        assert_ne!(wire_tag(&m, 2), wire_tag(&m, 3));
        assert_eq!(wire_tag(&m, 2), wire_tag(&m.clone(), 2));
    }

    #[test]
    fn a_cast_carries_its_tag_and_from_rank_before_the_shared_frame() {
        let body = Bytes::from_static(&[0xA1, 0, 0, 0, 0, 7]);
        let w = Wire::cast(0x0102_0304_0506_0708, 3, body.clone());
        assert_eq!(w.head(), &[0, 0, 0, 19, b'C', 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 3]);
        assert_eq!(w.len(), CAST_HEADER + body.len());
        assert_eq!(w.body.as_ptr(), body.as_ptr(), "copies share the frame");
        assert_eq!(Wire::point_to_point(body.clone()).head(), &[0, 0, 0, 7, b'P']);
        assert_eq!(Wire::goodbye().head(), &GOODBYE);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn every_connection_gets_the_stall_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        set_stall_timeout(&stream, Duration::from_millis(1500));
        assert_eq!(socket2::SockRef::from(&stream).tcp_user_timeout().unwrap(), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn a_hello_names_the_listening_address() {
        let h = encode_hello(SocketAddr::from(([127, 0, 0, 1], 4242)));
        assert_eq!(&h[..], &[b'S', b'T', b'T', b'R', 1, 4, 127, 0, 0, 1, 0x10, 0x92]);
    }
}
