//! The tokio runtime: drives sans-IO [`Stack`](crate::Stack)s over a real
//! [`Transport`].
//!
//! An [`Endpoint`] is a handle to one driver task. The driver owns the
//! transport and every group's [`Stack`](crate::Stack) on that endpoint; it is
//! the only code that reads the clock, sleeps or touches a socket. Applications talk to it
//! through cheap handles:
//!
//! - [`Endpoint::join`] builds a group's stack and returns a [`Group`] handle
//!   (cast, send, query, reply, flush, stats, view, leave, and the
//!   state-transfer answers `provide_state` and `state_done`) and its [`Events`] stream
//!   (deliveries, views, problems, `Left`).
//! - Datagrams are demultiplexed by the group id in the frame header
//!   ([`peek_group`](crate::engine::peek_group)); frames for a group this
//!   endpoint has not joined, and bytes that are not frames at all, are counted
//!   ([`Endpoint::stats`]) and dropped.
//!
//! ## The driver loop
//! The driver waits for any of: commands from the handles, a batch of datagrams
//! from the transport, and the earliest deadline of all its stacks (one tokio
//! timer). After each wake it feeds the inputs to the stacks, fires due timers,
//! then for every stack drains
//! [`Stack::poll_transmit`](crate::Stack::poll_transmit) to the transport,
//! re-arms the timer from [`Stack::poll_timeout`](crate::Stack::poll_timeout)
//! and moves [`Stack::poll_event`](crate::Stack::poll_event) into the group's
//! bounded events channel: the order the engine documents. Time is nanoseconds since the driver started.
//!
//! ## Bounded buffers and backpressure
//! Nothing a peer or the application does can grow a buffer in the runtime
//! without bound:
//!
//! - **Casts.** Casts, sends, state chunks, flushes and leaves of one group
//!   travel in order through that group's bounded queue ([`CAST_QUEUE`]
//!   commands). [`Group::cast`] resolves once its message is in that queue;
//!   it waits while the queue is full. While a layer holds the send window
//!   closed ([`Stack::can_send`](crate::Stack::can_send) is false) the driver
//!   parks the one cast (or send, or state chunk) it could not hand over and
//!   takes no further command of that group until the window reopens, so the
//!   queue fills and `cast().await` waits: that is the application's
//!   backpressure.
//! - **Events.** Each group's [`Events`] channel holds `event_capacity` events.
//!   When it is full the driver keeps the one event it could not deliver and
//!   stops taking input for that group (its datagrams are dropped and counted
//!   as `app_slow`, as a full socket buffer would; NAK repairs them) until the
//!   application reads. When every group is blocked the driver stops reading
//!   the transport altogether and the OS buffer absorbs or drops the rest.
//!
//! ## Flush and leave
//! [`Group::flush`] passes [`Down::Flush`](crate::Down::Flush) with a fresh
//! token and resolves when [`AppEvent::Flushed`] with that token comes out of
//! the stack; that event is consumed by the runtime, not forwarded to
//! [`Events`]. [`Group::leave`] passes [`Down::Leave`](crate::Down::Leave); the
//! group is removed once [`AppEvent::Left`] has been handed to [`Events`] (it
//! is forwarded), after which every call on the [`Group`] returns
//! [`GroupError::Left`] and the events stream ends after `Left`.
//!
//! ## Queries
//! With a QUERY layer at the top of the stack, [`Group::query`] casts a
//! request and resolves with the [`QueryResult`] once the layer reports the
//! query over (enough replies, the view ruled them out, or the timeout); that
//! [`AppEvent::QueryDone`] is consumed by the runtime, not forwarded to
//! [`Events`]. Every member's application, the caller's included, sees the
//! request as [`AppEvent::Query`] on its [`Events`] and answers with
//! [`Group::reply`]: an application awaiting a query must keep reading its
//! events (from another task) for its own member's answer to go out. Queries
//! and replies travel through the group's command queue in order with its
//! casts, under the same flow control. The rules (want, timeout, view
//! changes) are in docs/layers/QUERY.md.
//!
//! ## Membership
//! With a stack that has a membership layer (one whose descriptor provides
//! [`Props::MEMBERSHIP`](crate::Props::MEMBERSHIP), such as VSYNC),
//! [`JoinConfig::members`] are *seeds*: addresses of any live members,
//! through which the new member joins (it founds the group if none
//! answers). It starts outside any view; its casts are held (the stack
//! applies backpressure) until the first [`AppEvent::View`].
//! [`AppEvent::Block`] announces a view change: casts made after it are held
//! and go out in the next view. A leave completes once the group has
//! installed a view without this member ([`AppEvent::Left`]). Without a
//! membership layer `members` is the group's fixed membership.
//!
//! With no seeds, a stack with a membership layer and a transport that
//! [discovers](Transport::discovers) members (IP multicast), the join first
//! asks the transport who carries the group, for [`JoinConfig::discovery`],
//! and joins through those that answered.
//!
//! ## Transports
//! The driver tells its [`Transport`] which groups it carries
//! ([`Transport::open_group`], [`Transport::close_group`]) and each group's
//! view ([`Transport::set_view`]), and hands group casts to
//! [`Transport::cast`]: a transport may send one multicast datagram, forward
//! along a tree of the view, or unicast to each member. Several groups share
//! one transport; their datagrams are told apart by the group id. A peer the
//! transport lost ([`Transport::poll_lost`]: a TCP connection closed) is
//! reported to each group whose view has it as a suspicion
//! ([`Stack::suspect`](crate::Stack::suspect)), which a membership layer acts
//! on at once.
//!
//! ## State transfer
//! When members join, one old member's stack asks for the application's
//! state ([`AppEvent::StateRequest`]) at a point of its event stream (every
//! delivery of the old view before it, none after), and the joiners load it
//! ([`AppEvent::View`], [`AppEvent::StateBegin`], [`AppEvent::StateChunk`]s,
//! [`AppEvent::StateDone`], then the deliveries of the new view).
//!
//! - With [`JoinConfig::state_transfer`] false (the default) the driver
//!   answers every request itself with an empty state, and none of those four
//!   state events reaches [`Events`]: an application without state joins as
//!   if there were no state transfer.
//! - With it true they are forwarded. The member asked answers with
//!   [`Group::provide_state`] for each chunk (at most [`Group::max_message`]
//!   bytes) and [`Group::state_done`] once, both with the request's token.
//!   They travel in order through the group's command queue with its casts,
//!   under the same flow control: a chunk (or end of state) met by a closed
//!   send window is parked and the queue waits, exactly like a cast. A
//!   joiner drops any partial state when [`AppEvent::StateBegin`] comes again
//!   (a new view started before its state was complete).

mod driver;

use crate::engine::{BuildError, LayerStats};
use crate::event::{AppEvent, QueryResult, SafeTag, Want};
use crate::layer::Stats;
use crate::msg::Order;
use crate::registry::Registry;
use crate::view::{MemberId, View};
use bytes::Bytes;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Commands of one group that may wait in its queue (casts, sends, flushes,
/// leaves) before the driver takes them; `Group::cast` waits when it is full.
pub const CAST_QUEUE: usize = 128;
/// How long a join with no seeds looks for members by default, over a
/// transport that discovers them: long enough for several probes and their
/// answers, well under VSYNC's default `join_timeout_ms`.
pub const DEFAULT_DISCOVERY: Duration = Duration::from_millis(500);
/// Commands addressed to the endpoint (join, stats, view, shutdown) that may wait.
const CONTROL_QUEUE: usize = 64;

/// Carries datagrams for an [`Endpoint`]. Implementations are best effort,
/// like UDP: a datagram that does not fit a full buffer is dropped and counted.
///
/// The driver tells the transport which groups it carries and what their
/// views are, so that a transport can route a cast its own way: one
/// multicast datagram (IP multicast), forwarding along a spanning tree of
/// the view (TCP tree), or one unicast per member (UDP, the default). Only
/// the first four methods are required.
///
/// The driver calls, in each round: [`Transport::poll_recv`], then for each
/// group [`Transport::set_view`] if its view changed, [`Transport::cast`] and
/// [`Transport::send`] for its transmits, then [`Transport::flush`] once,
/// then [`Transport::poll_lost`].
pub trait Transport: Send + 'static {
    /// Where this transport receives (point-to-point); a member's id is this address.
    fn local_addr(&self) -> SocketAddr;
    /// Largest datagram it carries.
    fn max_datagram(&self) -> usize;
    /// Receives a batch of datagrams (appends to `out`); Pending when none.
    /// Each comes with the address of the member that sent it, as far as the
    /// transport knows (a forwarded cast: the neighbour it came from).
    fn poll_recv(&mut self, cx: &mut Context<'_>, out: &mut Vec<(SocketAddr, Bytes)>) -> Poll<std::io::Result<()>>;
    /// Sends one frame (given as slices, concatenated) to each address in `to`. Best effort like UDP:
    /// a full socket buffer may drop (count it); never blocks the driver for long.
    fn send(&mut self, to: &[SocketAddr], frame: &[&[u8]]) -> std::io::Result<()>;
    /// Casts one frame of group `gid` to every other member of its view;
    /// `peers` are their addresses (the view last given to
    /// [`Transport::set_view`], this endpoint left out). The default sends
    /// it to each of them.
    fn cast(&mut self, gid: u32, peers: &[SocketAddr], frame: &[&[u8]]) -> std::io::Result<()> {
        let _ = gid;
        self.send(peers, frame)
    }
    /// A group named `name` (wire id `gid`) is now carried: before its
    /// stack sends anything, and before discovery. An error fails the join.
    fn open_group(&mut self, gid: u32, name: &str) -> std::io::Result<()> {
        let _ = (gid, name);
        Ok(())
    }
    /// The group is no longer carried (left, or the join failed).
    fn close_group(&mut self, gid: u32) {
        let _ = gid;
    }
    /// The group's view changed: `members` are its members' addresses in
    /// rank order (rank 0 is the coordinator), this endpoint's included if it
    /// is a member.
    fn set_view(&mut self, gid: u32, members: &[SocketAddr]) {
        let _ = (gid, members);
    }
    /// Called once at the end of each round of the driver: sends that a
    /// transport queued to batch them go out now.
    fn flush(&mut self) {}
    /// Appends the peers this transport lost its connection to since the
    /// last call (a TCP connection closed, reset or refused). The driver
    /// reports each to the groups whose view contains it as a suspicion
    /// ([`Stack::suspect`](crate::Stack::suspect)).
    fn poll_lost(&mut self, out: &mut Vec<SocketAddr>) {
        let _ = out;
    }
    /// Whether this transport can find the members of a group by itself
    /// ([`Transport::discover`]). A join with no seeds, on a stack with a
    /// membership layer, then first spends
    /// [`JoinConfig::discovery`] looking for members.
    fn discovers(&self) -> bool {
        false
    }
    /// Asks who carries group `gid` (IP multicast: one datagram to the
    /// group's address). Called a few times during discovery.
    fn discover(&mut self, gid: u32) {
        let _ = gid;
    }
    /// The addresses that answered [`Transport::discover`] for `gid` so far.
    fn discovered(&self, gid: u32) -> Vec<SocketAddr> {
        let _ = gid;
        Vec::new()
    }
    /// Appends the transport's counters (datagrams and bytes sent and
    /// received, drops). Shown by [`Endpoint::stats`].
    fn stats(&self, out: &mut Stats) {
        let _ = out;
    }
}

/// How to join a group.
#[derive(Clone, Debug)]
pub struct JoinConfig {
    /// The group's name (its id on the wire is a hash of it).
    pub group: String,
    /// The stack string, bottom layer first.
    pub stack: String,
    /// This member's incarnation (0 for static membership).
    pub incarnation: u64,
    /// With a membership layer in the stack: seeds, the addresses of any
    /// live members to join through (none: found the group; incarnations are
    /// ignored for routing). Without one: the group's fixed membership, this
    /// member included or not.
    pub members: Vec<MemberId>,
    /// Seeds the layers' random numbers.
    pub seed: u64,
    /// How many events the [`Events`] channel holds before the driver stops
    /// taking input for the group (at least 1).
    pub event_capacity: usize,
    /// How long a join with no seeds looks for members over a transport
    /// that [`discovers`](Transport::discovers) them (IP multicast) before
    /// it builds the stack with those found as seeds. Only for stacks with a
    /// membership layer; zero turns discovery off.
    pub discovery: Duration,
    /// Whether the application takes part in state transfer (see the module
    /// docs): `true` forwards [`AppEvent::StateRequest`],
    /// [`AppEvent::StateBegin`], [`AppEvent::StateChunk`] and
    /// [`AppEvent::StateDone`] and expects [`Group::provide_state`] and
    /// [`Group::state_done`] answers; `false` (the default) has the driver
    /// answer every request with an empty state and forward none of them.
    pub state_transfer: bool,
}

impl JoinConfig {
    /// A configuration with incarnation 0, no other members, seed 0, room
    /// for 1024 events, [`DEFAULT_DISCOVERY`] and no state transfer.
    pub fn new(group: impl Into<String>, stack: impl Into<String>) -> Self {
        JoinConfig {
            group: group.into(),
            stack: stack.into(),
            incarnation: 0,
            members: Vec::new(),
            seed: 0,
            event_capacity: 1024,
            discovery: DEFAULT_DISCOVERY,
            state_transfer: false,
        }
    }
}

/// Why [`Endpoint::join`] failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The stack string or the configuration is wrong.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// This endpoint is already a member of a group of that name.
    #[error("this endpoint has already joined group `{0}`; leave it first")]
    DuplicateGroup(String),
    /// The endpoint's driver has stopped.
    #[error("the endpoint has shut down")]
    Closed,
}

/// Why a [`Group`] call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The endpoint's driver has stopped.
    #[error("the endpoint has shut down")]
    Closed,
    /// This member has left the group (or is leaving it).
    #[error("this member has left the group")]
    Left,
    /// The message is larger than the group's stack carries
    /// ([`Group::max_message`]); nothing was sent.
    #[error("a {len}-byte message exceeds the stack's limit of {max} bytes")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The stack's limit.
        max: usize,
    },
    /// The cast asked for an order the group's stack does not provide.
    #[error("this group's stack does not provide {order:?} order")]
    OrderUnavailable {
        /// The order asked for.
        order: Order,
    },
    /// A query or reply on a group whose stack has no QUERY layer.
    #[error("this group's stack has no QUERY layer; add QUERY at the top of the stack string")]
    QueryUnavailable,
    /// [`Group::done`] on a group whose stack has no durable layer.
    #[error("this group's stack has no durable layer; done() needs SAFE in the stack string")]
    DoneUnavailable,
}

// Group status, shared by the handles and the driver.
const OPEN: u8 = 0;
const LEAVING: u8 = 1;
const LEFT: u8 = 2;
const CLOSED: u8 = 3;

/// What a group's handles and its driver state share.
pub(crate) struct GroupShared {
    status: AtomicU8,
}

impl GroupShared {
    fn set(&self, status: u8) {
        // LEFT and CLOSED are final; LEAVING never overrides them.
        let _ =
            self.status.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| if s >= LEFT || (status == LEAVING && s != OPEN) { None } else { Some(status) });
    }
    fn get(&self) -> u8 {
        self.status.load(Ordering::Acquire)
    }
}

/// Lets a reading application wake a driver that stopped taking input
/// because an events channel was full.
pub(crate) struct WakeSlot {
    armed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl WakeSlot {
    fn new() -> Self {
        WakeSlot { armed: AtomicBool::new(false), waker: Mutex::new(None) }
    }

    /// Called by the driver before it re-checks its blocked channels: a read
    /// after this point wakes it.
    pub(crate) fn arm(&self, waker: &Waker) {
        {
            let mut slot = self.waker.lock().unwrap_or_else(|e| e.into_inner());
            if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
                *slot = Some(waker.clone());
            }
        }
        self.armed.store(true, Ordering::SeqCst);
        // Pairs with the fence in `notify`: either the driver's re-check sees
        // the freed slot, or the reader sees `armed`.
        fence(Ordering::SeqCst);
    }

    /// Called by [`Events`] after each event it takes.
    fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.armed.load(Ordering::SeqCst) && self.armed.swap(false, Ordering::SeqCst) {
            if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                w.wake_by_ref();
            }
        }
    }
}

/// A group's ordered commands.
pub(crate) enum DataCmd {
    Cast(Bytes, Option<Order>),
    Send(MemberId, Bytes),
    Flush(oneshot::Sender<()>),
    Leave(oneshot::Sender<()>),
    StateChunk(u64, Bytes),
    StateDone(u64),
    /// A query and where its result goes.
    Query(Bytes, Want, Duration, oneshot::Sender<QueryResult>),
    /// A reply: to whom, which query.
    Reply(MemberId, u64, Bytes),
    /// The application finished a durable message.
    Done(SafeTag),
}

/// What the driver hands back for a successful join.
pub(crate) struct Joined {
    name: String,
    key: u64,
    local: MemberId,
    max_message: usize,
    orders: Vec<Order>,
    /// Whether the stack has a QUERY layer.
    queries: bool,
    /// Whether the stack has a durable layer (SAFE).
    durable: bool,
    data: mpsc::Sender<DataCmd>,
    events: mpsc::Receiver<AppEvent>,
    shared: Arc<GroupShared>,
}

/// Commands addressed to the endpoint.
pub(crate) enum Control {
    Join(JoinConfig, oneshot::Sender<Result<Joined, JoinError>>),
    Stats(u64, oneshot::Sender<Option<Vec<LayerStats>>>),
    View(u64, oneshot::Sender<Option<Arc<View>>>),
    EndpointStats(oneshot::Sender<LayerStats>),
    Shutdown(oneshot::Sender<()>),
}

/// A handle to one driver task: a transport and the groups joined over it.
/// Cloning is cheap; every clone talks to the same driver.
#[derive(Clone)]
pub struct Endpoint {
    control: mpsc::Sender<Control>,
    local: SocketAddr,
    wake: Arc<WakeSlot>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint").field("local", &self.local).finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Spawns the driver task on the current tokio runtime (panics outside
    /// one, as `tokio::spawn` does). `registry` resolves stack strings.
    ///
    /// The driver runs until [`Endpoint::shutdown`], or until every
    /// `Endpoint` and [`Group`] handle is dropped.
    pub fn new(transport: impl Transport, registry: Arc<Registry>) -> Endpoint {
        let local = transport.local_addr();
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let wake = Arc::new(WakeSlot::new());
        let span = tracing::debug_span!("endpoint", %local);
        let driver_wake = wake.clone();
        tokio::spawn(
            async move {
                let mut driver = driver::Driver::new(transport, registry, control_rx, driver_wake);
                std::future::poll_fn(|cx| driver.poll_drive(cx)).await;
                tracing::debug!("driver stopped");
            }
            .instrument(span),
        );
        Endpoint { control, local, wake }
    }

    /// Where the transport receives.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Joins a group: builds its stack (this member is
    /// `MemberId::new(local_addr, cfg.incarnation)`, datagrams are limited to
    /// the transport's `max_datagram`) and returns its handle and events.
    pub async fn join(&self, cfg: JoinConfig) -> Result<(Group, Events), JoinError> {
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::Join(cfg, tx)).await.map_err(|_| JoinError::Closed)?;
        let joined = rx.await.map_err(|_| JoinError::Closed)??;
        let group = Group {
            inner: Arc::new(GroupHandle {
                name: joined.name,
                key: joined.key,
                local: joined.local,
                max_message: joined.max_message,
                orders: joined.orders,
                queries: joined.queries,
                durable: joined.durable,
                data: joined.data,
                control: self.control.clone(),
                shared: joined.shared,
            }),
        };
        Ok((group, Events { rx: joined.events, wake: self.wake.clone() }))
    }

    /// The endpoint's own counters and the transport's: datagrams received,
    /// and those dropped because they were not frames (`not_a_frame`), were for
    /// a group not joined here (`unknown_group`), or arrived while the group's
    /// application was not reading (`app_slow`), send and receive errors.
    pub async fn stats(&self) -> Result<LayerStats, GroupError> {
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::EndpointStats(tx)).await.map_err(|_| GroupError::Closed)?;
        rx.await.map_err(|_| GroupError::Closed)
    }

    /// Stops the driver: every group ends (its calls return
    /// [`GroupError::Closed`], its events stream ends) without running any
    /// leave protocol. Returns once the driver has stopped; a no-op if it
    /// already has.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct GroupHandle {
    name: String,
    key: u64,
    local: MemberId,
    max_message: usize,
    /// The orders the stack provides, for [`Group::cast_ordered`].
    orders: Vec<Order>,
    /// Whether the stack has a QUERY layer, for [`Group::query`] and [`Group::reply`].
    queries: bool,
    /// Whether the stack has a durable layer, for [`Group::done`].
    durable: bool,
    data: mpsc::Sender<DataCmd>,
    control: mpsc::Sender<Control>,
    shared: Arc<GroupShared>,
}

/// A handle to one group joined on an [`Endpoint`]. Cloning is cheap; every
/// clone addresses the same group, and the commands of one clone are applied
/// in the order they were made.
#[derive(Clone)]
pub struct Group {
    inner: Arc<GroupHandle>,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group").field("name", &self.inner.name).field("local", &self.inner.local).finish_non_exhaustive()
    }
}

impl Group {
    /// This member.
    pub fn local(&self) -> MemberId {
        self.inner.local
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn error(&self) -> GroupError {
        match self.inner.shared.get() {
            CLOSED => GroupError::Closed,
            _ => GroupError::Left,
        }
    }

    fn check_open(&self) -> Result<(), GroupError> {
        match self.inner.shared.get() {
            OPEN => Ok(()),
            _ => Err(self.error()),
        }
    }

    async fn submit(&self, cmd: DataCmd) -> Result<(), GroupError> {
        self.check_open()?;
        self.inner.data.send(cmd).await.map_err(|_| self.error())
    }

    /// Casts `body` to the group. Resolves once the message is queued for the
    /// stack, in order with this group's other commands; waits while the queue
    /// is full, which it becomes while the stack applies backpressure.
    /// A body larger than [`Group::max_message`] is refused at once.
    pub async fn cast(&self, body: Bytes) -> Result<(), GroupError> {
        self.check_size(&body)?;
        self.submit(DataCmd::Cast(body, None)).await
    }

    /// Casts `body` asking for `order` (see [`Order`] and docs/ordering.md),
    /// queued like [`Group::cast`]. Refused at once if the stack does not
    /// provide that order.
    pub async fn cast_ordered(&self, body: Bytes, order: Order) -> Result<(), GroupError> {
        self.check_size(&body)?;
        if !self.inner.orders.contains(&order) {
            return Err(GroupError::OrderUnavailable { order });
        }
        self.submit(DataCmd::Cast(body, Some(order))).await
    }

    /// Sends `body` to one member, queued like [`Group::cast`].
    pub async fn send(&self, to: MemberId, body: Bytes) -> Result<(), GroupError> {
        self.check_size(&body)?;
        self.submit(DataCmd::Send(to, body)).await
    }

    /// The largest body [`Group::cast`] and [`Group::send`] accept (see
    /// [`Stack::max_message`](crate::Stack::max_message)).
    pub fn max_message(&self) -> usize {
        self.inner.max_message
    }

    fn check_size(&self, body: &Bytes) -> Result<(), GroupError> {
        match body.len() {
            len if len > self.inner.max_message => Err(GroupError::TooLarge { len, max: self.inner.max_message }),
            _ => Ok(()),
        }
    }

    /// Resolves when every message cast so far is stable (the stack answers
    /// [`AppEvent::Flushed`] for this request's token; that event is not
    /// forwarded to [`Events`]).
    pub async fn flush(&self) -> Result<(), GroupError> {
        let (tx, rx) = oneshot::channel();
        self.submit(DataCmd::Flush(tx)).await?;
        rx.await.map_err(|_| self.error())
    }

    /// Casts `body` as a query and resolves with its result: the replies,
    /// the view they were asked in, who is missing and why it ended (see the
    /// module docs and docs/layers/QUERY.md). Queued like [`Group::cast`];
    /// the timeout runs from when the stack takes the query. Refused at once
    /// if the body is larger than [`Group::max_message`] or the stack has no
    /// QUERY layer. Fails with [`GroupError::Left`] if the member leaves
    /// before the query is cast.
    pub async fn query(&self, body: Bytes, want: Want, timeout: Duration) -> Result<QueryResult, GroupError> {
        self.check_size(&body)?;
        self.check_queries()?;
        let (tx, rx) = oneshot::channel();
        self.submit(DataCmd::Query(body, want, timeout, tx)).await?;
        rx.await.map_err(|_| self.error())
    }

    /// Answers query `id` of member `to` (an [`AppEvent::Query`]), queued
    /// like [`Group::send`].
    pub async fn reply(&self, to: MemberId, id: u64, body: Bytes) -> Result<(), GroupError> {
        self.check_size(&body)?;
        self.check_queries()?;
        self.submit(DataCmd::Reply(to, id, body)).await
    }

    /// Tells the group's durable layer (SAFE) that the application has
    /// finished applying the message `tag` (a delivery of kind
    /// [`Delivery::Safe`](crate::Delivery::Safe)): logs forget a message
    /// once every member is done with it. Queued in order with casts.
    pub async fn done(&self, tag: SafeTag) -> Result<(), GroupError> {
        if !self.inner.durable {
            return Err(GroupError::DoneUnavailable);
        }
        self.submit(DataCmd::Done(tag)).await
    }

    fn check_queries(&self) -> Result<(), GroupError> {
        if self.inner.queries {
            Ok(())
        } else {
            Err(GroupError::QueryUnavailable)
        }
    }

    /// Sends the next chunk of the application's state in answer to
    /// [`AppEvent::StateRequest`] `token` (see the module docs; needs
    /// [`JoinConfig::state_transfer`]). Queued in order with casts and flow
    /// controlled like them: resolves once the chunk is in the group's queue.
    /// A chunk larger than [`Group::max_message`] is refused at once.
    pub async fn provide_state(&self, token: u64, chunk: Bytes) -> Result<(), GroupError> {
        self.check_size(&chunk)?;
        self.submit(DataCmd::StateChunk(token, chunk)).await
    }

    /// Ends the state for [`AppEvent::StateRequest`] `token`, after the
    /// chunks queued before it (see [`Group::provide_state`]).
    pub async fn state_done(&self, token: u64) -> Result<(), GroupError> {
        self.submit(DataCmd::StateDone(token)).await
    }

    /// All layers' stats, bottom first, then the engine's
    /// ([`Stack::stats`](crate::Stack::stats) and
    /// [`Stack::engine_stats`](crate::Stack::engine_stats)).
    pub async fn stats(&self) -> Result<Vec<LayerStats>, GroupError> {
        let (tx, rx) = oneshot::channel();
        self.inner.control.send(Control::Stats(self.inner.key, tx)).await.map_err(|_| GroupError::Closed)?;
        rx.await.map_err(|_| GroupError::Closed)?.ok_or_else(|| self.error())
    }

    /// The current view at the bottom of the stack. With a membership layer,
    /// until the group admits this member that is the engine's initial view
    /// (this member and its seeds), not a view of the group: wait for
    /// [`AppEvent::View`] instead.
    pub async fn view(&self) -> Result<Arc<View>, GroupError> {
        let (tx, rx) = oneshot::channel();
        self.inner.control.send(Control::View(self.inner.key, tx)).await.map_err(|_| GroupError::Closed)?;
        rx.await.map_err(|_| GroupError::Closed)?.ok_or_else(|| self.error())
    }

    /// Leaves the group, after the commands queued before it. Resolves once
    /// the stack has answered [`AppEvent::Left`] and that event has been handed
    /// to [`Events`]; from the call on, other calls return [`GroupError::Left`].
    pub async fn leave(&self) -> Result<(), GroupError> {
        self.check_open()?;
        let (tx, rx) = oneshot::channel();
        // Other clones' calls fail from now on; this one's Leave still goes in.
        self.inner.shared.set(LEAVING);
        self.inner.data.send(DataCmd::Leave(tx)).await.map_err(|_| self.error())?;
        match rx.await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.error()),
        }
    }
}

/// The group's events (deliveries, views, ...). Bounded: when the application does not read,
/// the driver stops taking input for that group (network input is then dropped by the OS
/// or the transport, and NAK repairs it) rather than buffering without bound.
///
/// The stream ends after [`AppEvent::Left`], or when the endpoint shuts down.
pub struct Events {
    rx: mpsc::Receiver<AppEvent>,
    wake: Arc<WakeSlot>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").field("queued", &self.rx.len()).finish_non_exhaustive()
    }
}

impl Events {
    /// The next event; `None` once the group is gone.
    pub async fn next(&mut self) -> Option<AppEvent> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// The next event if one is waiting now.
    pub fn try_next(&mut self) -> Option<AppEvent> {
        let ev = self.rx.try_recv().ok();
        if ev.is_some() {
            self.wake.notify();
        }
        ev
    }

    /// Waits for the next event, then appends it and up to `limit - 1`
    /// more that are waiting now to `out`, in order; returns how many it
    /// appended, 0 once the group is gone (or if `limit` is 0). One call
    /// costs about what one [`Events::next`] does, so an application that
    /// takes deliveries by the thousand should take them this way.
    pub async fn next_many(&mut self, out: &mut Vec<AppEvent>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        let n = std::future::poll_fn(|cx| self.rx.poll_recv_many(cx, out, limit)).await;
        if n > 0 {
            self.wake.notify();
        }
        n
    }

    /// Polls for the next event.
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<AppEvent>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(_)) = &polled {
            self.wake.notify();
        }
        polled
    }
}

impl futures_core::Stream for Events {
    type Item = AppEvent;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<AppEvent>> {
        self.get_mut().poll_event(cx)
    }
}
