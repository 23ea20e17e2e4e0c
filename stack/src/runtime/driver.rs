//! The driver task: one per endpoint, owning the transport and every group's
//! stack. It is written as one hand-rolled `poll` so that every input source
//! registers the same task waker and no input is ever held in a future that
//! could be cancelled half-way.

use super::{Control, DataCmd, GroupShared, JoinConfig, JoinError, Joined, Transport, WakeSlot, CAST_QUEUE, CLOSED, LEFT, OPEN};
use crate::engine::{group_id, peek_group, BuildError, Dest, LayerStats, Stack, StackConfig};
use crate::event::{AppEvent, QueryResult};
use crate::layer::{Props, Stats};
use crate::msg::Order;
use crate::registry::Registry;
use crate::storage::FsStorage;
use crate::time::Instant;
use crate::view::{MemberId, View};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU8;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;
use tokio::time::Sleep;

/// Commands taken from one queue per round before the driver looks elsewhere.
const BATCH: usize = 64;
/// Received frames whose room the driver keeps between rounds: a batch of
/// bundles can hold thousands of frames, and one such burst must not pin
/// that much memory for good.
const BATCH_RETAINED: usize = 4096;
/// Rounds of work per poll before the driver yields to other tasks.
const MAX_ROUNDS: usize = 32;
/// How often a join in discovery asks the transport again.
const DISCOVERY_PROBE: Duration = Duration::from_millis(100);

/// The endpoint's own counters.
#[derive(Default)]
struct Counters {
    datagrams_in: u64,
    not_a_frame: u64,
    unknown_group: u64,
    app_slow: u64,
    send_errors: u64,
    recv_errors: u64,
    casts_after_leave: u64,
    /// Suspicions passed to stacks because the transport lost a peer.
    peers_lost: u64,
}

/// A join waiting for the transport to discover the group's members.
struct Discovery {
    cfg: JoinConfig,
    reply: oneshot::Sender<Result<Joined, JoinError>>,
    gid: u32,
    next_probe: Instant,
    until: Instant,
}

/// One joined group.
struct GroupState {
    stack: Stack,
    gid: u32,
    /// Ordered commands from the group's handles.
    commands: mpsc::Receiver<DataCmd>,
    /// False once every handle is dropped (the receiver then only says `None`).
    handles: bool,
    events: mpsc::Sender<AppEvent>,
    /// The one event the full events channel could not take. While it is
    /// here the group takes no input.
    pending_event: Option<AppEvent>,
    /// The one cast or send refused by a closed send window. While it is here
    /// the group takes no further commands.
    parked: Option<DataCmd>,
    flushes: VecDeque<(u64, oneshot::Sender<()>)>,
    next_token: u64,
    /// Queries made through [`Group::query`](super::Group::query), by id:
    /// where their result goes.
    queries: HashMap<u64, oneshot::Sender<QueryResult>>,
    leaves: Vec<oneshot::Sender<()>>,
    leaving: bool,
    /// `Left` was handed to the application: remove the group.
    gone: bool,
    /// Whether the application answers state requests itself
    /// ([`JoinConfig::state_transfer`]); if not, the driver does.
    state_transfer: bool,
    shared: Arc<GroupShared>,
    /// The view `peers` was computed from.
    peers_of: Arc<View>,
    /// Addresses of the members of `peers_of` other than this one.
    peers: Vec<SocketAddr>,
}

impl GroupState {
    fn blocked(&self) -> bool {
        self.pending_event.is_some()
    }

    /// Takes commands from the group's queue while the stack accepts them.
    /// Returns whether any was taken.
    fn take_commands(&mut self, cx: &mut Context<'_>, now: Instant, counters: &mut Counters) -> bool {
        if !self.handles || self.blocked() || self.parked.is_some() {
            return false;
        }
        let mut taken = 0;
        while taken < BATCH && self.parked.is_none() {
            match self.commands.poll_recv(cx) {
                Poll::Ready(Some(cmd)) => {
                    taken += 1;
                    self.apply(cmd, now, counters);
                }
                Poll::Ready(None) => {
                    self.handles = false;
                    // Nobody can command the group or hear from it any more.
                    if self.events.is_closed() && !self.leaving {
                        self.leaving = true;
                        self.stack.leave(now);
                    }
                    return true;
                }
                Poll::Pending => break,
            }
        }
        taken > 0
    }

    fn apply(&mut self, cmd: DataCmd, now: Instant, counters: &mut Counters) {
        match cmd {
            // Dropping a query's result sender answers GroupError::Left.
            DataCmd::Cast(..) | DataCmd::Send(..) | DataCmd::StateChunk(..) | DataCmd::StateDone(_) | DataCmd::Query(..) | DataCmd::Reply(..)
                if self.leaving =>
            {
                counters.casts_after_leave += 1
            }
            DataCmd::Cast(..) | DataCmd::Send(..) | DataCmd::StateChunk(..) | DataCmd::StateDone(_) | DataCmd::Query(..) | DataCmd::Reply(..)
                if !self.stack.can_send() =>
            {
                self.parked = Some(cmd)
            }
            DataCmd::Cast(body, order) => {
                let accepted = match order {
                    None => self.stack.cast(now, body),
                    Some(order) => self.stack.cast_ordered(now, body, order),
                };
                debug_assert!(accepted.is_ok(), "can_send was checked just before");
            }
            DataCmd::Send(to, body) => {
                let accepted = self.stack.send(now, to, body);
                debug_assert!(accepted.is_ok(), "can_send was checked just before");
            }
            DataCmd::StateChunk(token, chunk) => {
                let accepted = self.stack.provide_state(now, token, Some(chunk));
                debug_assert!(accepted.is_ok(), "can_send was checked just before");
            }
            DataCmd::Query(body, want, timeout, reply) => match self.stack.query(now, body, want, timeout) {
                Ok(id) => {
                    self.queries.insert(id, reply);
                }
                // Group::query checked size and the QUERY layer, and
                // can_send was checked just before: dropping `reply` fails
                // the call rather than losing it silently.
                Err(e) => debug_assert!(false, "query refused: {e}"),
            },
            DataCmd::Reply(to, id, body) => {
                let accepted = self.stack.reply(now, to, id, body);
                debug_assert!(accepted.is_ok(), "can_send was checked just before");
            }
            DataCmd::StateDone(token) => {
                let accepted = self.stack.provide_state(now, token, None);
                debug_assert!(accepted.is_ok(), "the end of a state is never refused");
            }
            DataCmd::Done(tag) => {
                let accepted = self.stack.done(now, tag);
                debug_assert!(accepted.is_ok(), "Group::done checked for a durable layer");
            }
            DataCmd::Flush(reply) => {
                if self.leaving {
                    // Dropping `reply` answers GroupError::Left (the status says so).
                    return;
                }
                let token = self.next_token;
                self.next_token += 1;
                self.flushes.push_back((token, reply));
                self.stack.flush(now, token);
            }
            DataCmd::Leave(reply) => {
                self.leaves.push(reply);
                if !self.leaving {
                    self.leaving = true;
                    self.stack.leave(now);
                }
            }
        }
    }

    /// Retries the parked cast once the window has reopened. Returns whether
    /// the group can take commands again.
    fn retry_parked(&mut self, now: Instant, counters: &mut Counters) -> bool {
        if self.parked.is_some() && self.stack.can_send() {
            if let Some(cmd) = self.parked.take() {
                self.apply(cmd, now, counters);
            }
            return self.parked.is_none();
        }
        false
    }

    /// Tells the transport the view the stack now routes by, if it changed.
    fn update_view(&mut self, transport: &mut impl Transport) {
        if Arc::ptr_eq(&self.peers_of, self.stack.view()) {
            return;
        }
        self.peers_of = self.stack.view().clone();
        let local = self.stack.local();
        self.peers.clear();
        self.peers.extend(self.peers_of.members().iter().filter(|m| **m != local).map(MemberId::addr));
        let members: Vec<SocketAddr> = self.peers_of.members().iter().map(MemberId::addr).collect();
        transport.set_view(self.gid, &members);
    }

    /// Hands every datagram the stack wants sent to the transport.
    fn drain_transmits(&mut self, transport: &mut impl Transport, counters: &mut Counters) {
        while let Some(t) = self.stack.poll_transmit() {
            // A view takes effect at the bottom of the stack before the
            // transmits that follow it; route those by it.
            self.update_view(transport);
            let frame = t.msg.as_slices();
            let sent = match t.dest {
                Dest::Group if self.peers.is_empty() => Ok(()),
                Dest::Group => transport.cast(self.gid, &self.peers, &frame),
                Dest::Member(m) => transport.send(&[m.addr()], &frame),
            };
            if let Err(e) = sent {
                counters.send_errors += 1;
                tracing::debug!(error = %e, "send failed");
            }
        }
    }

    /// Moves the stack's events into the application's channel until it is
    /// full, answering the state requests of an application that does not
    /// take part in state transfer. Returns whether the group was blocked
    /// and no longer is, or the stack was given input (its new transmits
    /// and events need another round).
    fn drain_events(&mut self, now: Instant) -> bool {
        let was_blocked = self.blocked();
        let mut answered = false;
        loop {
            let Some(mut ev) = self.pending_event.take().or_else(|| self.stack.poll_event()) else { break };
            if let AppEvent::Flushed { token } = ev {
                if let Some(i) = self.flushes.iter().position(|(t, _)| *t == token) {
                    if let Some((_, reply)) = self.flushes.remove(i) {
                        let _ = reply.send(());
                    }
                    continue;
                }
            }
            if let AppEvent::QueryDone(result) = ev {
                match self.queries.remove(&result.id) {
                    // The caller may have stopped waiting; either way the
                    // result was for it alone.
                    Some(reply) => {
                        let _ = reply.send(result);
                        continue;
                    }
                    None => ev = AppEvent::QueryDone(result),
                }
            }
            if !self.state_transfer {
                match ev {
                    AppEvent::StateRequest { token, .. } => {
                        // An empty state: the end, at once. Never refused.
                        let _ = self.stack.provide_state(now, token, None);
                        answered = true;
                        continue;
                    }
                    AppEvent::StateBegin | AppEvent::StateChunk(_) | AppEvent::StateDone => continue,
                    _ => {}
                }
            }
            let left = matches!(ev, AppEvent::Left);
            match self.events.try_send(ev) {
                Ok(()) => self.gone |= left,
                Err(TrySendError::Full(ev)) => {
                    self.pending_event = Some(ev);
                    break;
                }
                // The application dropped its stream: events go nowhere,
                // and nobody will answer a state request but the driver.
                Err(TrySendError::Closed(ev)) => {
                    self.gone |= left;
                    if let AppEvent::StateRequest { token, .. } = ev {
                        let _ = self.stack.provide_state(now, token, None);
                        answered = true;
                    }
                }
            }
        }
        // While the application is behind the driver reads nothing for it:
        // tell the layers, so that no failure detector reads the silence
        // as the other members' failure.
        self.stack.set_app_behind(self.blocked());
        (was_blocked && !self.blocked()) || answered
    }

    /// Ends the group: handles see `status`; waiting flushes and leaves are
    /// answered (a leave that got its `Left` succeeded).
    fn finish(self, status: u8) {
        self.shared.set(status);
        if status == LEFT {
            for reply in self.leaves {
                let _ = reply.send(());
            }
        }
        // Dropping the remaining reply senders fails the waiting calls with
        // the error the status names.
    }
}

pub(crate) struct Driver<T: Transport> {
    transport: T,
    registry: Arc<Registry>,
    control: mpsc::Receiver<Control>,
    epoch: tokio::time::Instant,
    groups: BTreeMap<u64, GroupState>,
    by_gid: HashMap<u32, u64>,
    next_key: u64,
    batch: Vec<(SocketAddr, Bytes)>,
    /// Joins waiting for discovery, in the order they were asked for.
    discoveries: Vec<Discovery>,
    /// Scratch for [`Transport::poll_lost`].
    lost: Vec<SocketAddr>,
    sleep: Pin<Box<Sleep>>,
    sleep_at: Option<Instant>,
    wake: Arc<WakeSlot>,
    counters: Counters,
    local: SocketAddr,
}

impl<T: Transport> Driver<T> {
    pub(crate) fn new(transport: T, registry: Arc<Registry>, control: mpsc::Receiver<Control>, wake: Arc<WakeSlot>) -> Self {
        let epoch = tokio::time::Instant::now();
        Driver {
            local: transport.local_addr(),
            transport,
            registry,
            control,
            epoch,
            groups: BTreeMap::new(),
            by_gid: HashMap::new(),
            next_key: 0,
            batch: Vec::with_capacity(BATCH),
            discoveries: Vec::new(),
            lost: Vec::new(),
            sleep: Box::pin(tokio::time::sleep_until(epoch)),
            sleep_at: None,
            wake,
            counters: Counters::default(),
        }
    }

    fn now(&self) -> Instant {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.epoch);
        Instant::from_nanos(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Runs until shutdown (`Ready`), doing at most `MAX_ROUNDS` rounds of
    /// work per call. Every source that returns `Pending` has registered the
    /// task's waker; a source the driver skips on purpose (a blocked or parked
    /// group) is woken through `WakeSlot` or by the driver's own progress.
    pub(crate) fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..MAX_ROUNDS {
            let mut busy = false;
            let now = self.now();

            // Endpoint commands.
            for _ in 0..BATCH {
                match self.control.poll_recv(cx) {
                    Poll::Ready(Some(cmd)) => {
                        busy = true;
                        if let Some(reply) = self.control(cmd, now) {
                            self.stop();
                            let _ = reply.send(());
                            return Poll::Ready(());
                        }
                    }
                    Poll::Ready(None) => {
                        // Every Endpoint and Group handle is gone.
                        self.stop();
                        return Poll::Ready(());
                    }
                    Poll::Pending => break,
                }
            }

            // Group commands.
            for g in self.groups.values_mut() {
                busy |= g.take_commands(cx, now, &mut self.counters);
            }

            // Datagrams, unless every group's application is behind.
            if self.groups.is_empty() || self.groups.values().any(|g| !g.blocked()) {
                match self.transport.poll_recv(cx, &mut self.batch) {
                    Poll::Ready(Ok(())) => {
                        busy |= !self.batch.is_empty();
                        self.deliver_batch(now);
                    }
                    Poll::Ready(Err(e)) => {
                        self.counters.recv_errors += 1;
                        tracing::debug!(error = %e, "receive failed");
                        // No waker was registered: come back after others ran.
                        self.batch.clear();
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    Poll::Pending => {}
                }
            }

            // Timers, outputs, parked casts.
            let now = self.now();
            for g in self.groups.values_mut() {
                if g.stack.poll_timeout().is_some_and(|d| d <= now) {
                    g.stack.handle_timeout(now);
                }
                busy |= g.retry_parked(now, &mut self.counters);
                g.drain_transmits(&mut self.transport, &mut self.counters);
                busy |= g.drain_events(now);
            }
            self.transport.flush();
            busy |= self.report_lost(now);
            busy |= self.run_discoveries(now);
            self.remove_gone();

            // A blocked group resumes when its application reads: arm the
            // wake-up first, then look again, so that no read is missed.
            if self.groups.values().any(GroupState::blocked) {
                self.wake.arm(cx.waker());
                for g in self.groups.values_mut() {
                    busy |= g.blocked() && g.drain_events(now);
                }
                self.remove_gone();
            }

            // The one timer: the earliest deadline of all stacks and discoveries.
            let stacks = self.groups.values().filter_map(|g| g.stack.poll_timeout());
            match stacks.chain(self.discoveries.iter().map(|d| d.next_probe.min(d.until))).min() {
                Some(deadline) => {
                    if self.sleep_at != Some(deadline) {
                        match self.epoch.checked_add(Duration::from_nanos(deadline.as_nanos())) {
                            Some(at) => {
                                self.sleep.as_mut().reset(at);
                                self.sleep_at = Some(deadline);
                            }
                            None => self.sleep_at = None,
                        }
                    }
                    if self.sleep_at.is_some() && self.sleep.as_mut().poll(cx).is_ready() {
                        busy = true;
                    }
                }
                None => self.sleep_at = None,
            }

            if !busy {
                return Poll::Pending;
            }
        }
        // Plenty of work left: let other tasks run first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn deliver_batch(&mut self, now: Instant) {
        for (_from, data) in self.batch.drain(..) {
            self.counters.datagrams_in += 1;
            let Some(gid) = peek_group(&data) else {
                self.counters.not_a_frame += 1;
                tracing::debug!(len = data.len(), "dropped a datagram that is not a frame");
                continue;
            };
            let Some(g) = self.by_gid.get(&gid).and_then(|key| self.groups.get_mut(key)) else {
                self.counters.unknown_group += 1;
                tracing::debug!(gid, "dropped a datagram for a group not joined here");
                continue;
            };
            if g.blocked() {
                self.counters.app_slow += 1;
                continue;
            }
            g.stack.handle_datagram(now, data);
        }
        self.batch.shrink_to(BATCH_RETAINED);
    }

    /// Carries out an endpoint command; a shutdown is returned to the caller,
    /// which stops the driver and then answers it.
    fn control(&mut self, cmd: Control, now: Instant) -> Option<oneshot::Sender<()>> {
        match cmd {
            Control::Join(cfg, reply) => self.start_join(cfg, reply, now),
            Control::Stats(key, reply) => {
                let stats = self.groups.get(&key).map(|g| {
                    let mut all = g.stack.stats();
                    all.push(g.stack.engine_stats());
                    all
                });
                let _ = reply.send(stats);
            }
            Control::View(key, reply) => {
                let _ = reply.send(self.groups.get(&key).map(|g| g.stack.view().clone()));
            }
            Control::EndpointStats(reply) => {
                let _ = reply.send(self.endpoint_stats());
            }
            Control::Shutdown(reply) => return Some(reply),
        }
        None
    }

    /// Joins at once, or first discovers members: with no seeds, a stack
    /// with a membership layer and a transport that discovers.
    fn start_join(&mut self, cfg: JoinConfig, reply: oneshot::Sender<Result<Joined, JoinError>>, now: Instant) {
        if self.groups.values().any(|g| g.stack.group() == cfg.group) || self.discoveries.iter().any(|d| d.cfg.group == cfg.group) {
            let _ = reply.send(Err(JoinError::DuplicateGroup(cfg.group)));
            return;
        }
        let membership = self.registry.resolve(&cfg.stack).is_ok_and(|r| r.layers.iter().any(|(d, _)| d.provides.contains(Props::MEMBERSHIP)));
        if !(cfg.members.is_empty() && membership && !cfg.discovery.is_zero() && self.transport.discovers()) {
            let _ = reply.send(self.join(cfg, now));
            return;
        }
        let gid = group_id(&cfg.group);
        if let Err(e) = self.transport.open_group(gid, &cfg.group) {
            let _ = reply.send(Err(BuildError::Config(format!("the transport cannot carry group `{}`: {e}", cfg.group)).into()));
            return;
        }
        tracing::debug!(group = %cfg.group, "discovering members");
        let until = now + cfg.discovery;
        self.discoveries.push(Discovery { cfg, reply, gid, next_probe: now, until });
    }

    /// Probes for the joins in discovery, and joins those whose time is up
    /// with the members found as seeds. Returns whether any joined.
    fn run_discoveries(&mut self, now: Instant) -> bool {
        let mut joined = false;
        let mut i = 0;
        while i < self.discoveries.len() {
            let d = &mut self.discoveries[i];
            if now >= d.until {
                let Discovery { mut cfg, reply, gid, .. } = self.discoveries.remove(i);
                let local = self.local;
                cfg.members = self.transport.discovered(gid).into_iter().filter(|a| *a != local).map(|a| MemberId::new(a, 0)).collect();
                tracing::debug!(group = %cfg.group, found = cfg.members.len(), "discovery over");
                let _ = reply.send(self.join(cfg, now));
                joined = true;
                continue;
            }
            if now >= d.next_probe {
                self.transport.discover(d.gid);
                d.next_probe = now + DISCOVERY_PROBE;
            }
            i += 1;
        }
        joined
    }

    /// Passes the peers the transport lost to every group whose view has
    /// them, as suspicions. Returns whether there were any.
    fn report_lost(&mut self, now: Instant) -> bool {
        self.transport.poll_lost(&mut self.lost);
        if self.lost.is_empty() {
            return false;
        }
        for addr in self.lost.drain(..) {
            tracing::debug!(peer = %addr, "transport lost a peer");
            for g in self.groups.values_mut() {
                let members: Vec<MemberId> = g.stack.view().members().iter().copied().filter(|m| m.addr() == addr).collect();
                for m in members {
                    self.counters.peers_lost += 1;
                    g.stack.suspect(now, m);
                }
            }
        }
        true
    }

    fn join(&mut self, cfg: JoinConfig, now: Instant) -> Result<Joined, JoinError> {
        if self.groups.values().any(|g| g.stack.group() == cfg.group) {
            return Err(JoinError::DuplicateGroup(cfg.group));
        }
        let gid = group_id(&cfg.group);
        if let Some(other) = self.by_gid.get(&gid).and_then(|k| self.groups.get(k)) {
            let what = format!("group `{}` has the same wire id as joined group `{}`; rename one", cfg.group, other.stack.group());
            return Err(BuildError::Config(what).into());
        }
        if let Err(e) = self.transport.open_group(gid, &cfg.group) {
            return Err(BuildError::Config(format!("the transport cannot carry group `{}`: {e}", cfg.group)).into());
        }
        let joined = self.build_group(cfg, now);
        if joined.is_err() {
            self.transport.close_group(gid);
        }
        joined
    }

    fn build_group(&mut self, cfg: JoinConfig, now: Instant) -> Result<Joined, JoinError> {
        let local = MemberId::new(self.local, cfg.incarnation);
        let config = StackConfig {
            group: cfg.group.clone(),
            local,
            members: cfg.members,
            seed: cfg.seed,
            max_datagram: self.transport.max_datagram(),
            storage: Arc::new(FsStorage),
            entropy: os_entropy(),
        };
        let stack = Stack::new(&self.registry, &cfg.stack, config, now)?;
        let gid = stack.group_id();
        let (data_tx, data_rx) = mpsc::channel(CAST_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(cfg.event_capacity.max(1));
        let shared = Arc::new(GroupShared { status: AtomicU8::new(OPEN) });
        let key = self.next_key;
        self.next_key += 1;
        tracing::debug!(group = %cfg.group, stack = stack.canonical(), %local, "joined");
        let peers_of = stack.view().clone();
        let peers = peers_of.members().iter().filter(|m| **m != local).map(MemberId::addr).collect();
        let members: Vec<SocketAddr> = peers_of.members().iter().map(MemberId::addr).collect();
        self.transport.set_view(gid, &members);
        self.groups.insert(
            key,
            GroupState {
                stack,
                gid,
                commands: data_rx,
                handles: true,
                events: events_tx,
                pending_event: None,
                parked: None,
                flushes: VecDeque::new(),
                next_token: 0,
                queries: HashMap::new(),
                leaves: Vec::new(),
                leaving: false,
                gone: false,
                state_transfer: cfg.state_transfer,
                shared: shared.clone(),
                peers_of,
                peers,
            },
        );
        self.by_gid.insert(gid, key);
        let stack = &self.groups[&key].stack;
        let max_message = stack.max_message();
        let orders = [Order::Fifo, Order::Causal, Order::Total].into_iter().filter(|o| stack.check_order(*o).is_ok()).collect();
        let queries = stack.check_query().is_ok();
        let durable = stack.provides_all(Props::UNIFORM);
        Ok(Joined { name: cfg.group, key, local, max_message, orders, queries, durable, data: data_tx, events: events_rx, shared })
    }

    fn remove_gone(&mut self) {
        let gone: Vec<u64> = self.groups.iter().filter(|(_, g)| g.gone).map(|(k, _)| *k).collect();
        for key in gone {
            if let Some(g) = self.groups.remove(&key) {
                tracing::debug!(group = g.stack.group(), "left");
                self.by_gid.remove(&g.gid);
                self.transport.close_group(g.gid);
                g.finish(LEFT);
            }
        }
    }

    fn stop(&mut self) {
        for (_, g) in std::mem::take(&mut self.groups) {
            self.transport.close_group(g.gid);
            g.finish(CLOSED);
        }
        for d in self.discoveries.drain(..) {
            self.transport.close_group(d.gid);
        }
        self.by_gid.clear();
        self.control.close();
    }

    fn endpoint_stats(&self) -> LayerStats {
        let c = &self.counters;
        let mut counters = Stats::default();
        counters
            .add("groups", self.groups.len() as u64)
            .add("datagrams_in", c.datagrams_in)
            // Errors the transport returned to the driver; a transport
            // reports the ones it absorbs itself as `send_errors`/`recv_errors`.
            .add("transport_send_failures", c.send_errors)
            .add("transport_recv_failures", c.recv_errors)
            .add("peers_lost", c.peers_lost);
        self.transport.stats(&mut counters);
        let mut dropped = Vec::new();
        for (reason, n) in
            [("not_a_frame", c.not_a_frame), ("unknown_group", c.unknown_group), ("app_slow", c.app_slow), ("cast_after_leave", c.casts_after_leave)]
        {
            if n > 0 {
                dropped.push((reason, n));
            }
        }
        LayerStats { name: "endpoint", counters, dropped }
    }
}

/// 32 bytes from the operating system's random source, for the layers'
/// keys and nonces. Without it a cryptographic layer would be predictable,
/// so a failure here is fatal.
fn os_entropy() -> [u8; 32] {
    let mut out = [0u8; 32];
    getrandom::getrandom(&mut out).expect("the operating system's random source failed");
    out
}
