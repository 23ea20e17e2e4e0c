//! The engine: one group's layers and the FIFO event queue between them.
//!
//! A [`Stack`] is sans-IO, in the manner of quinn-proto's `Connection`: inputs
//! arrive through `handle_*`, `cast`, `send`, `query`, `reply`, `flush` and `leave`; outputs are
//! drained through `poll_*`. After any input a driver calls, in this order:
//!
//! 1. [`Stack::poll_transmit`] until `None`, handing each datagram to the transport;
//! 2. [`Stack::poll_timeout`], arming one timer for the returned deadline;
//! 3. [`Stack::poll_event`] until `None`, handing events to the application.
//!
//! Handlers run to completion: an event a layer emits is queued and
//! dispatched after the handler returns, in FIFO order. Casts loop back at the
//! bottom of the stack, so every layer sees a member's own casts come up like
//! anyone else's. A per-input budget turns a runaway loop between layers into
//! a [`Problem`] instead of a hang.
//!
//! ## Frame
//! Every datagram starts with the engine's frame header, so that a member can
//! tell which group and which stack a datagram belongs to before any layer
//! looks at it:
//! ```text
//! +-------+-------+----------+-------------+------------------------------+
//! | magic | flags | group id | fingerprint | sender (MemberId::encode)    | layer headers ... payload
//! |  1 B  |  1 B  |  4 B BE  |   4 B BE    | family, ip, port, incarnation|
//! +-------+-------+----------+-------------+------------------------------+
//! ```
//! flags bit 0: the datagram was multicast (else sent to one member).

use crate::codec::{fnv1a64, Reader, Writer};
use crate::context::{count_drop, Context, Drops, Queued, Timers};
use crate::event::{AppEvent, Delivery, Down, Problem, SafeTag, Up, Want};
use crate::layer::{Layer, Props, Stats, TimerKey};
use crate::msg::{Msg, Order};
use crate::registry::Registry;
use crate::rng::Rng;
use crate::spec::{SpecError, SpecErrorKind};
use crate::storage::{FsStorage, Storage};
use crate::time::Instant;
use crate::view::{MemberId, View};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// First byte of every frame: protocol family and version 1.
pub const FRAME_MAGIC: u8 = 0xA1;
const FLAG_CAST: u8 = 1;
/// The most bytes the frame header takes.
pub const FRAME_HEADER_MAX: usize = 1 + 1 + 4 + 4 + MemberId::MAX_ENCODED_LEN;
/// The fewest bytes a frame takes: its header with an IPv4 sender of
/// incarnation below 128, and nothing after it.
pub const FRAME_MIN: usize = 1 + 1 + 4 + 4 + MemberId::MIN_ENCODED_LEN;
/// The stack-string name of the layer that handles [`Down::Query`] and
/// [`Down::Reply`]; [`Stack::query`] refuses on a stack without it.
pub const QUERY_LAYER: &str = "QUERY";
/// Dispatches allowed per input before the engine declares a runaway loop.
pub const EVENT_BUDGET: usize = 1 << 20;

/// The group id carried in frames: a 32-bit hash of the group's name.
pub fn group_id(name: &str) -> u32 {
    let h = fnv1a64(name.as_bytes());
    (h ^ (h >> 32)) as u32
}

/// The group id of a datagram, if it starts like a frame. Endpoints use it to
/// hand a datagram to the right stack.
pub fn peek_group(datagram: &[u8]) -> Option<u32> {
    let mut r = Reader::new(datagram);
    if r.u8().ok()? != FRAME_MAGIC {
        return None;
    }
    r.u8().ok()?;
    r.u32().ok()
}

/// Where a datagram goes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Every member of [`Stack::view`] except this one.
    Group,
    /// One member.
    Member(MemberId),
}

/// A datagram for the transport.
#[derive(Clone, Debug, PartialEq)]
pub struct Transmit {
    /// Its destination.
    pub dest: Dest,
    /// The frame: headers in the headroom, payload in the body.
    pub msg: Msg,
}

/// Why a stack refused a cast or a send.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A layer's send window is closed: retry once it reopens (see
    /// [`Stack::can_send`]).
    #[error("the stack's send window is full; retry after it drains")]
    Backpressure,
    /// The cast asked for an order no layer of the stack provides.
    #[error("this stack does not provide {order:?} order")]
    OrderUnavailable {
        /// The order asked for.
        order: Order,
    },
    /// The message is larger than the stack carries ([`Stack::max_message`]).
    #[error("a {len}-byte message exceeds the stack's limit of {max} bytes")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The stack's limit.
        max: usize,
    },
    /// A query or a reply on a stack without a query layer (QUERY).
    #[error("this stack has no QUERY layer; add QUERY at the top of the stack string")]
    QueryUnavailable,
    /// [`Stack::done`] on a stack without a durable layer (SAFE).
    #[error("this stack has no durable layer; done() needs SAFE in the stack string")]
    DoneUnavailable,
}

/// Why a stack could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The stack string is wrong.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The configuration is wrong.
    #[error("bad stack configuration: {0}")]
    Config(String),
    /// A layer could not start (its log cannot be opened, say).
    #[error("{layer}: {reason}")]
    Init {
        /// The layer.
        layer: &'static str,
        /// Why.
        reason: String,
    },
}

/// What a stack needs besides its stack string.
#[derive(Clone)]
pub struct StackConfig {
    /// The group's name.
    pub group: String,
    /// This member.
    pub local: MemberId,
    /// The initial membership (this member is added if missing). Members are
    /// ranked in sorted order so that every member computes the same view.
    pub members: Vec<MemberId>,
    /// Seeds every layer's random numbers.
    pub seed: u64,
    /// The largest datagram the transport carries.
    pub max_datagram: usize,
    /// Where layers keep durable logs (SAFE's `log_dir`).
    pub storage: Arc<dyn Storage>,
    /// Seeds the layers' *secret* random numbers (ENCRYPT's keys and
    /// nonces, through [`Context::entropy`]). [`StackConfig::new`] derives
    /// it from `seed`, which makes runs reproducible and the value guessable;
    /// the runtime fills it from the operating system, and so must anyone
    /// who runs a stack with a cryptographic layer on a real network.
    pub entropy: [u8; 32],
}

impl fmt::Debug for StackConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackConfig").field("group", &self.group).field("local", &self.local).field("members", &self.members).finish_non_exhaustive()
    }
}

impl StackConfig {
    /// A configuration with a 64 KiB datagram limit and seed 0.
    pub fn new(group: impl Into<String>, local: MemberId, members: Vec<MemberId>) -> Self {
        StackConfig { group: group.into(), local, members, seed: 0, max_datagram: 65_507, storage: Arc::new(FsStorage), entropy: [0; 32] }
    }

    /// The reproducible entropy used when `entropy` is left zero: a
    /// function of `seed` and this member.
    fn effective_entropy(&self) -> [u8; 32] {
        if self.entropy != [0; 32] {
            return self.entropy;
        }
        let mut rng = Rng::new(self.seed ^ fnv1a64(format!("{:?}/entropy", self.local).as_bytes()));
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        out
    }
}

/// The counters of one layer (or of the engine, named `engine`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerStats {
    /// The layer's stack-string name.
    pub name: &'static str,
    /// What the layer reports.
    pub counters: Stats,
    /// Inputs dropped, by reason.
    pub dropped: Vec<(&'static str, u64)>,
}

struct Slot {
    name: &'static str,
    layer: Box<dyn Layer>,
    view: Arc<View>,
    rng: Rng,
    timers: Timers,
    drops: Drops,
    backpressure: bool,
    max_payload: usize,
}

/// Counters kept by the engine itself.
#[derive(Default, Clone, Debug)]
struct EngineCounters {
    datagrams_in: u64,
    datagrams_out: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// One group's protocol stack at one member.
pub struct Stack {
    slots: Vec<Slot>,
    queue: VecDeque<Queued>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<AppEvent>,
    local: MemberId,
    group: String,
    group_id: u32,
    fingerprint: u32,
    canonical: String,
    max_datagram: usize,
    max_message: usize,
    view: Arc<View>,
    now: Instant,
    drops: Drops,
    counters: EngineCounters,
    frame_cast: Writer,
    frame_send: Writer,
    /// What the layers provide together (`None` for a stack built from bare layers).
    provides: Option<Props>,
    /// Whether a layer named `QUERY` handles queries and replies.
    has_query: bool,
    /// The id of the next [`Stack::query`].
    next_query_id: u64,
    storage: Arc<dyn Storage>,
    entropy: [u8; 32],
    /// Why a layer's init refused to run (see [`Context::refuse`]).
    refusal: Option<String>,
    /// See [`Stack::set_app_behind`].
    app_behind: bool,
}

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack").field("group", &self.group).field("local", &self.local).field("stack", &self.canonical).finish_non_exhaustive()
    }
}

impl Stack {
    /// Builds a stack from a stack string, checks that the layers' headers fit
    /// a datagram, and runs every layer's `init`, bottom first.
    pub fn new(registry: &Registry, spec: &str, config: StackConfig, now: Instant) -> Result<Stack, BuildError> {
        let resolved = registry.resolve(spec)?;
        let mut layers = Vec::with_capacity(resolved.layers.len());
        for (i, (desc, params)) in resolved.layers.iter().enumerate() {
            let layer =
                (desc.build)(params).map_err(|reason| SpecError::new(SpecErrorKind::Refused { layer: desc.name.into(), reason }, spec, resolved.columns[i]))?;
            layers.push((desc.name, layer, (desc.max_header_len)(params)));
        }
        let total: usize = FRAME_HEADER_MAX + layers.iter().map(|l| l.2).sum::<usize>();
        if total >= config.max_datagram {
            return Err(SpecError::new(SpecErrorKind::HeadersTooLarge { total, limit: config.max_datagram }, spec, 0).into());
        }
        let provides = resolved.layers.iter().fold(Props::NONE, |p, (d, _)| p.union(d.provides));
        let mut stack = Stack::assemble(layers, config, resolved.canonical(), resolved.fingerprint(), now)?;
        stack.provides = Some(provides);
        Ok(stack)
    }

    /// Builds a stack from layers constructed by the caller, outside any
    /// registry (for tests and benches). `max_header_len` bounds each layer's
    /// header; the fingerprint covers the names only.
    pub fn from_layers(layers: Vec<(&'static str, Box<dyn Layer>)>, max_header_len: usize, config: StackConfig, now: Instant) -> Result<Stack, BuildError> {
        let names: Vec<&str> = layers.iter().map(|l| l.0).collect();
        let canonical = names.join(":");
        let h = fnv1a64(canonical.as_bytes());
        let layers = layers.into_iter().map(|(n, l)| (n, l, max_header_len)).collect();
        Stack::assemble(layers, config, canonical, (h ^ (h >> 32)) as u32, now)
    }

    fn assemble(
        layers: Vec<(&'static str, Box<dyn Layer>, usize)>,
        config: StackConfig,
        canonical: String,
        fingerprint: u32,
        now: Instant,
    ) -> Result<Stack, BuildError> {
        let mut members = config.members.clone();
        if !members.contains(&config.local) {
            members.push(config.local);
        }
        let view = View::initial(members).map_err(|e| BuildError::Config(e.0.into()))?;
        let entropy = config.effective_entropy();
        let mut rng = Rng::new(config.seed ^ fnv1a64(format!("{:?}", config.local).as_bytes()));
        let mut slots = Vec::with_capacity(layers.len());
        let mut below = FRAME_HEADER_MAX;
        // What a layer accepts from above: its own bound, or what fits below
        // once its header is added.
        let mut max_message = config.max_datagram.saturating_sub(FRAME_HEADER_MAX);
        for (name, layer, header_len) in layers {
            max_message = layer.max_message_len().unwrap_or(max_message.saturating_sub(header_len));
            slots.push(Slot {
                name,
                layer,
                view: view.clone(),
                rng: rng.fork(),
                timers: Timers::new(),
                drops: Drops::new(),
                backpressure: false,
                max_payload: config.max_datagram.saturating_sub(below),
            });
            below += header_len;
        }
        let group_id = group_id(&config.group);
        let frame = |flags: u8| {
            let mut w = Writer::new();
            w.u8(FRAME_MAGIC).u8(flags).u32(group_id).u32(fingerprint);
            config.local.encode(&mut w);
            w
        };
        let mut stack = Stack {
            slots,
            queue: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            local: config.local,
            group_id,
            fingerprint,
            canonical,
            max_datagram: config.max_datagram,
            max_message,
            view,
            now,
            drops: Drops::new(),
            counters: EngineCounters::default(),
            frame_cast: frame(FLAG_CAST),
            frame_send: frame(0),
            provides: None,
            has_query: false,
            next_query_id: 0,
            storage: config.storage,
            entropy,
            refusal: None,
            app_behind: false,
            group: config.group,
        };
        stack.has_query = stack.slots.iter().any(|s| s.name == QUERY_LAYER);
        // Every layer is initialised before any event moves, so none sees
        // an event (a view from a membership layer's init) before its init.
        for p in 1..=stack.slots.len() {
            stack.with_layer(p, |layer, cx| layer.init(cx));
            if let Some(reason) = stack.refusal.take() {
                return Err(BuildError::Init { layer: stack.slots[p - 1].name, reason });
            }
        }
        stack.run();
        Ok(stack)
    }

    /// This member.
    pub fn local(&self) -> MemberId {
        self.local
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The group id frames carry.
    pub fn group_id(&self) -> u32 {
        self.group_id
    }

    /// The fingerprint frames carry.
    pub fn fingerprint(&self) -> u32 {
        self.fingerprint
    }

    /// The stack string in canonical form.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The view the bottom of the stack uses to address casts: the initial
    /// membership until a membership layer passes a new view down.
    pub fn view(&self) -> &Arc<View> {
        &self.view
    }

    /// Tells the layers whether the application is behind (see
    /// [`Context::app_behind`]): the runtime sets it while the application's
    /// events channel is full and it reads no datagrams for the group.
    pub fn set_app_behind(&mut self, behind: bool) {
        self.app_behind = behind;
    }

    /// Whether casts and sends are accepted now.
    pub fn can_send(&self) -> bool {
        !self.slots.iter().any(|s| s.backpressure)
    }

    /// A datagram arrived. Frames for another group or another stack, and
    /// malformed ones, are counted and dropped.
    pub fn handle_datagram(&mut self, now: Instant, data: Bytes) {
        self.now = self.now.max(now);
        self.counters.datagrams_in += 1;
        self.counters.bytes_in += data.len() as u64;
        let mut r = Reader::new(&data);
        let header = (|| {
            if r.u8()? != FRAME_MAGIC {
                return Err(crate::Malformed("bad_magic"));
            }
            let flags = r.u8()?;
            if r.u32()? != self.group_id {
                return Err(crate::Malformed("wrong_group"));
            }
            if r.u32()? != self.fingerprint {
                return Err(crate::Malformed("wrong_stack"));
            }
            let from = MemberId::decode(&mut r).map_err(|_| crate::Malformed("bad_sender"))?;
            Ok((flags, from))
        })();
        let (flags, from) = match header {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(reason = e.0, "dropped datagram");
                count_drop(&mut self.drops, e.0);
                return;
            }
        };
        if from == self.local {
            count_drop(&mut self.drops, "own_frame");
            return;
        }
        let consumed = r.consumed();
        let msg = Msg::new(data.slice(consumed..));
        let ev = if flags & FLAG_CAST != 0 { Up::Cast { from, msg } } else { Up::Send { from, msg } };
        self.queue.push_back(Queued::Up(1, ev));
        self.run();
    }

    /// Reports that the transport lost its connection to `member` (a TCP
    /// connection closed or refused): passed up from the bottom of the stack
    /// as [`Up::Suspect`], as a failure detector's suspicion would be. A
    /// membership layer treats it as its own suspicion; without one it
    /// reaches the application as [`AppEvent::Suspect`].
    pub fn suspect(&mut self, now: Instant, member: MemberId) {
        self.now = self.now.max(now);
        if member == self.local {
            return;
        }
        self.queue.push_back(Queued::Up(1, Up::Suspect(member)));
        self.run();
    }

    /// Fires every timer due at `now`, earliest first.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        loop {
            let mut due: Option<(Instant, usize, TimerKey)> = None;
            for (i, slot) in self.slots.iter().enumerate() {
                for &(key, deadline) in &slot.timers {
                    if deadline <= now && due.is_none_or(|(d, p, k)| (deadline, i + 1, key) < (d, p, k)) {
                        due = Some((deadline, i + 1, key));
                    }
                }
            }
            let Some((_, p, key)) = due else { break };
            self.slots[p - 1].timers.retain(|(k, _)| *k != key);
            self.with_layer(p, |layer, cx| layer.timeout(cx, key));
            self.run();
        }
    }

    /// Casts `body` to the group.
    pub fn cast(&mut self, now: Instant, body: Bytes) -> Result<(), Refused> {
        self.input(now, Down::Cast(Msg::new(body)))
    }

    /// Casts `body` asking for `order` (see [`Order`]): refused with
    /// [`Refused::OrderUnavailable`] unless a layer of the stack provides
    /// that order (a stack built by [`Stack::from_layers`] accepts any).
    pub fn cast_ordered(&mut self, now: Instant, body: Bytes, order: Order) -> Result<(), Refused> {
        self.check_order(order)?;
        let mut msg = Msg::new(body);
        msg.flags_mut().set_order(Some(order));
        self.input(now, Down::Cast(msg))
    }

    /// Whether this stack provides `order`.
    pub fn check_order(&self, order: Order) -> Result<(), Refused> {
        let needs = match order {
            Order::Fifo => Props::FIFO,
            Order::Causal => Props::CAUSAL,
            Order::Total => Props::TOTAL,
        };
        match self.provides {
            Some(p) if !p.contains(needs) => Err(Refused::OrderUnavailable { order }),
            _ => Ok(()),
        }
    }

    /// Sends `body` to one member.
    pub fn send(&mut self, now: Instant, to: MemberId, body: Bytes) -> Result<(), Refused> {
        self.input(now, Down::Send { to, msg: Msg::new(body) })
    }

    /// Casts `body` as a query and collects replies (see
    /// [`Down::Query`] and docs/layers/QUERY.md): the result comes as
    /// [`AppEvent::QueryDone`] with the returned id. Refused like a cast
    /// (size, backpressure), and with [`Refused::QueryUnavailable`] on a
    /// stack without a QUERY layer.
    pub fn query(&mut self, now: Instant, body: Bytes, want: Want, timeout: Duration) -> Result<u64, Refused> {
        self.check_query()?;
        let id = self.next_query_id;
        self.input(now, Down::Query { id, msg: Msg::new(body), want, timeout })?;
        self.next_query_id += 1;
        Ok(id)
    }

    /// Answers query `id` of member `to` ([`AppEvent::Query`]). Refused like
    /// a send, and with [`Refused::QueryUnavailable`] on a stack without a
    /// QUERY layer.
    pub fn reply(&mut self, now: Instant, to: MemberId, id: u64, body: Bytes) -> Result<(), Refused> {
        self.check_query()?;
        self.input(now, Down::Reply { to, id, msg: Msg::new(body) })
    }

    /// Tells the durable layer (SAFE) that the application has finished
    /// applying the message `tag` ([`Delivery::Safe`]): once every member
    /// is done with a message, the logs forget it. Never refused for
    /// backpressure; [`Refused::DoneUnavailable`] on a stack without a
    /// layer that provides `uniform`.
    pub fn done(&mut self, now: Instant, tag: SafeTag) -> Result<(), Refused> {
        if !self.provides_all(Props::UNIFORM) {
            return Err(Refused::DoneUnavailable);
        }
        self.input(now, Down::Done(tag))
    }

    /// Whether the stack's layers together provide `props` (false for a
    /// stack built from bare layers).
    pub fn provides_all(&self, props: Props) -> bool {
        self.provides.is_some_and(|p| p.contains(props))
    }

    /// Whether this stack has a QUERY layer to handle queries and replies.
    pub fn check_query(&self) -> Result<(), Refused> {
        if self.has_query {
            Ok(())
        } else {
            Err(Refused::QueryUnavailable)
        }
    }

    /// The largest cast or send this stack carries: bounded by the
    /// transport's datagram and the layers' headers, or by a layer that sets
    /// its own bound (FRAG).
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Passes any downward event in at the top, subject to backpressure and
    /// the size limit for casts and sends (used by layers' tests and by the
    /// runtime).
    pub fn input(&mut self, now: Instant, ev: Down) -> Result<(), Refused> {
        let len = match &ev {
            Down::Cast(msg) | Down::Send { msg, .. } | Down::Query { msg, .. } | Down::Reply { msg, .. } => Some(msg.len()),
            Down::StateChunk { data, .. } => Some(data.len()),
            _ => None,
        };
        if let Some(len) = len {
            if len > self.max_message {
                return Err(Refused::TooLarge { len, max: self.max_message });
            }
            if !self.can_send() {
                return Err(Refused::Backpressure);
            }
        }
        self.now = self.now.max(now);
        self.queue.push_back(Queued::Down(self.slots.len(), ev));
        self.run();
        Ok(())
    }

    /// Asks for [`AppEvent::Flushed`] with `token` once every message cast so
    /// far is stable (answered at once by a stack with no reliability layer).
    pub fn flush(&mut self, now: Instant, token: u64) {
        let _ = self.input(now, Down::Flush { token });
    }

    /// Answers [`AppEvent::StateRequest`] `token`: `Some(chunk)` sends the
    /// next chunk of the state (at most [`Stack::max_message`] bytes,
    /// refused with backpressure like a cast), `None` ends it.
    pub fn provide_state(&mut self, now: Instant, token: u64, chunk: Option<Bytes>) -> Result<(), Refused> {
        match chunk {
            Some(data) => self.input(now, Down::StateChunk { token, data }),
            None => self.input(now, Down::StateDone { token }),
        }
    }

    /// Leaves the group.
    pub fn leave(&mut self, now: Instant) {
        let _ = self.input(now, Down::Leave);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next deadline at which [`Stack::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots.iter().flat_map(|s| s.timers.iter().map(|(_, d)| *d)).min()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<AppEvent> {
        self.events.pop_front()
    }

    /// Every layer's counters, bottom first.
    pub fn stats(&self) -> Vec<LayerStats> {
        self.slots
            .iter()
            .map(|s| {
                let mut counters = Stats::default();
                s.layer.stats(&mut counters);
                LayerStats { name: s.name, counters, dropped: s.drops.to_vec() }
            })
            .collect()
    }

    /// The engine's own counters (datagrams and bytes in and out, and frames
    /// dropped before any layer saw them).
    pub fn engine_stats(&self) -> LayerStats {
        let c = &self.counters;
        let mut counters = Stats::default();
        counters.add("datagrams_in", c.datagrams_in).add("datagrams_out", c.datagrams_out).add("bytes_in", c.bytes_in).add("bytes_out", c.bytes_out);
        counters.add("transmit_queue", self.transmits.len() as u64).add("event_queue", self.events.len() as u64);
        LayerStats { name: "engine", counters, dropped: self.drops.to_vec() }
    }

    fn with_layer(&mut self, p: usize, f: impl FnOnce(&mut dyn Layer, &mut Context<'_>)) {
        let (layer, mut cx) = self.layer_at(p);
        f(layer, &mut cx);
    }

    /// Layer `p` (1 = bottom) and the context its handlers get.
    #[inline]
    fn layer_at(&mut self, p: usize) -> (&mut dyn Layer, Context<'_>) {
        let slot = &mut self.slots[p - 1];
        let cx = Context {
            position: p,
            name: slot.name,
            now: self.now,
            local: self.local,
            view: &slot.view,
            rng: &mut slot.rng,
            queue: &mut self.queue,
            timers: &mut slot.timers,
            drops: &mut slot.drops,
            backpressure: &mut slot.backpressure,
            max_payload: slot.max_payload,
            storage: self.storage.as_ref(),
            entropy: &self.entropy,
            group: &self.group,
            refusal: &mut self.refusal,
            app_behind: self.app_behind,
        };
        (slot.layer.as_mut(), cx)
    }

    fn run(&mut self) {
        let mut budget = EVENT_BUDGET;
        let top = self.slots.len() + 1;
        while let Some(q) = self.queue.pop_front() {
            budget -= 1;
            if budget == 0 {
                let dropped = self.queue.len();
                self.queue.clear();
                count_drop(&mut self.drops, "event_budget");
                let what = format!("more than {EVENT_BUDGET} events for one input; {dropped} queued events dropped (a loop between layers?)");
                tracing::warn!("{what}");
                self.events.push_back(AppEvent::Problem(Problem { layer: "engine", what }));
                return;
            }
            match q {
                Queued::Down(0, ev) => self.bottom(ev),
                Queued::Up(p, ev) if p == top => self.top(ev),
                Queued::Down(p, ev) => {
                    if let Down::View(v) = &ev {
                        self.slots[p - 1].view = v.clone();
                    }
                    let (layer, mut cx) = self.layer_at(p);
                    layer.down(&mut cx, ev);
                }
                Queued::Up(p, ev) => {
                    if let Up::View(v) = &ev {
                        self.slots[p - 1].view = v.clone();
                    }
                    let (layer, mut cx) = self.layer_at(p);
                    layer.up(&mut cx, ev);
                }
            }
        }
    }

    fn transmit(&mut self, dest: Dest, mut msg: Msg) {
        msg.push(if dest == Dest::Group { self.frame_cast.as_slice() } else { self.frame_send.as_slice() });
        if msg.len() > self.max_datagram {
            count_drop(&mut self.drops, "too_large");
            let what =
                format!("a {}-byte datagram exceeds the transport's {} bytes; put FRAG in the stack or lower its frag_size", msg.len(), self.max_datagram);
            self.events.push_back(AppEvent::Problem(Problem { layer: "engine", what }));
            return;
        }
        self.counters.datagrams_out += 1;
        self.counters.bytes_out += msg.len() as u64;
        self.transmits.push_back(Transmit { dest, msg });
    }

    fn bottom(&mut self, ev: Down) {
        match ev {
            Down::Cast(msg) => {
                if self.view.len() > 1 {
                    self.transmit(Dest::Group, msg.clone());
                }
                self.queue.push_back(Queued::Up(1, Up::Cast { from: self.local, msg }));
            }
            Down::Send { to, msg } => {
                if to == self.local {
                    self.queue.push_back(Queued::Up(1, Up::Send { from: self.local, msg }));
                } else {
                    self.transmit(Dest::Member(to), msg);
                }
            }
            Down::View(v) => self.view = v,
            Down::Flush { token } => self.queue.push_back(Queued::Up(1, Up::Flushed { token })),
            Down::Leave => self.queue.push_back(Queued::Up(1, Up::Left)),
            // No membership layer asked for state: nobody to send it to.
            Down::StateChunk { .. } | Down::StateDone { .. } => count_drop(&mut self.drops, "state_without_membership"),
            // No reliability layer to recover with (the membership layer requires one).
            Down::Recover { .. } => count_drop(&mut self.drops, "recover_without_reliability"),
            // No reliability layer to slow the senders down: nothing to do.
            Down::Holding { .. } => {}
            // `Stack::query` and `Stack::reply` refuse these without a QUERY
            // layer; only raw `input` gets here.
            // `Stack::done` refuses this without a durable layer.
            Down::Done(_) => count_drop(&mut self.drops, "done_without_safe"),
            Down::Query { .. } | Down::Reply { .. } => {
                count_drop(&mut self.drops, "query_without_query_layer");
                let what = "a query or reply reached the bottom of the stack: add QUERY to the stack string".to_string();
                self.events.push_back(AppEvent::Problem(Problem { layer: "engine", what }));
            }
        }
    }

    fn top(&mut self, ev: Up) {
        let ev = match ev {
            Up::Cast { from, msg } => AppEvent::Deliver { from, kind: Delivery::Cast, body: msg.into_body() },
            Up::Send { from, msg } => AppEvent::Deliver { from, kind: Delivery::Send, body: msg.into_body() },
            Up::View(v) => AppEvent::View(v),
            Up::Block => AppEvent::Block,
            Up::Flushed { token } => AppEvent::Flushed { token },
            Up::Stable { .. } => return,
            Up::Suspect(m) => AppEvent::Suspect(m),
            Up::Lost { from, count } => AppEvent::Lost { from, count },
            Up::Problem(p) => AppEvent::Problem(p),
            Up::Left => AppEvent::Left,
            Up::StateRequest { token, joiners } => AppEvent::StateRequest { token, joiners },
            Up::StateBegin => AppEvent::StateBegin,
            Up::StateChunk(data) => AppEvent::StateChunk(data),
            Up::StateDone => AppEvent::StateDone,
            Up::Query { from, id, msg } => AppEvent::Query { from, id, body: msg.into_body() },
            Up::QueryDone(result) => AppEvent::QueryDone(result),
            Up::Durable { tag, msg, replayed } => AppEvent::Deliver { from: tag.sender, kind: Delivery::Safe { tag, replayed }, body: msg.into_body() },
            Up::Replay(messages) => AppEvent::Replay { messages },
        };
        self.events.push_back(ev);
    }
}
