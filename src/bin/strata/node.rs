//! `strata node`: one member of a group over UDP, IP multicast or a TCP
//! tree, writing a delivery log.
//! docs/strata-node.md is the specification; scripts rely on it exactly.
//!
//! The run, in order:
//! 1. Validate everything before touching the network: the arguments, and the
//!    stack string by building the stack once, dry (layers are sans-IO, so a
//!    throw-away build costs nothing and runs every layer's own checks).
//! 2. Bind, check that the log can be written, join (building the real
//!    stack: SAFE opens its durable log here, and a failure ends the run
//!    before the log exists), empty the log; log `start`. With fixed membership (no
//!    layer provides `membership`) log `view` for the initial view (the
//!    engine emits no event for it). With a membership layer (VSYNC) the
//!    peers are seeds and every view, the first included, comes as an event.
//! 3. Cast N payloads (on a schedule with `--rate`, else as fast as
//!    `Group::cast` accepts) while receiving; `send` is logged before each
//!    cast and `deliver` as each delivery is taken from the events stream.
//! 4. Once every member of the current view is complete (fixed membership:
//!    N of its casts delivered; membership: N of its casts known, from
//!    deliveries or from the state loaded on joining, [`Known`]), flush (own
//!    casts stable). With fixed membership, then wait until the group falls
//!    silent (no datagram for three status periods, [`quiet_period`]): a
//!    peer whose acknowledgement from this member was lost asks again, and
//!    must find it still running; then take the stats, leave, log `stats`
//!    and `stop`. With a membership layer, take the stats, then leave (a
//!    membership operation: the group installs a view without this member)
//!    and wait for `Left`, bounded by `--linger`.
//!
//! With SAFE (a durable layer) deliveries carry their tag; once a delivery's
//! line is written the node tells the group it is done with it
//! (`Group::done`, from a task of its own, [`spawn_done`]). With a
//! `log_dir`, the layer announces this incarnation's replay (the messages
//! it redelivers after a total failure, [`Replay`]); completion waits for
//! the announcement and the replayed deliveries too.
//!
//! With `--leave-after`, at that time after the start the node stops casting
//! and waiting and leaves at once (reason `left`).
//!
//! Whenever `--linger` passes without a delivery, a view or a completed cast,
//! the node stops waiting and goes straight to `stats` and `stop` (exit 0). A
//! SIGINT or SIGTERM does the same and exits 128 + the signal's number.
//! Beyond the documented fields, `stop` says why the run ended: `"reason"` is
//! `done` (all delivered, own casts stable, and with a membership layer the
//! leave completed), `unstable` (all delivered, but the flush gave up after
//! `--linger`), `left` (`--leave-after`), `linger` or `signal`.
//! Everything that writes the log runs on one task (the runtime's driver
//! aside), so log lines come out in the order things happened and `t` never
//! decreases. (State answers go out from a task of their own: they log nothing.)

use crate::jsonl::{json_str, JsonLog, Line};
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use strata::layers::safe;
use strata::runtime::{Endpoint, Events, Group, GroupError, JoinConfig};
use strata::transport::bundle::MAX_BUNDLE_BYTES;
use strata::transport::ipmc::{IpmcConfig, IpmcTransport};
use strata::transport::payload;
use strata::transport::tcptree::{tree_info, Closing, TcpTreeConfig, TcpTreeTransport};
use strata::transport::udp::{UdpConfig, UdpTransport, MAX_DATAGRAM};
use strata::{AppEvent, Delivery, Instant, LayerStats, MemberId, ParamValue, Props, Registry, SafeTag, Stack, StackConfig, View};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant as Clock;

/// The largest `--size` accepted: far above any sensible test, low enough
/// that a typo cannot make every cast allocate gigabytes.
const MAX_SIZE: usize = 64 << 20;
/// The longest `--linger` accepted (about 31 years: "forever").
const MAX_LINGER_SECS: f64 = 1e9;
/// Bytes of a payload searched for the `|` that ends its id.
const ID_SCAN: usize = 128;
/// How long the best-effort calls at the end (stats, leave) may take.
pub(crate) const WRAP_UP: Duration = Duration::from_secs(2);
/// The shortest silence taken to mean that the group has settled.
const QUIET_MIN: Duration = Duration::from_millis(200);

/// The transports `strata node` (and `strata perf`) can use (docs/transports/).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// One UDP socket; casts are unicast to every member.
    Udp,
    /// Casts as one IP multicast datagram, the rest by UDP unicast; members
    /// are discovered by multicast when no peers are given.
    Ipmc,
    /// TCP connections along a k-ary spanning tree of the view; casts are
    /// forwarded along it.
    Tcptree,
}

impl TransportKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TransportKind::Udp => "udp",
            TransportKind::Ipmc => "ipmc",
            TransportKind::Tcptree => "tcptree",
        }
    }
}

/// The largest `--fanout` accepted.
const MAX_FANOUT: usize = 64;

/// Options of `strata node` (docs/strata-node.md).
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// The group to join.
    #[arg(long, value_name = "NAME")]
    group: String,
    /// The stack string, bottom layer first (see `strata layers`).
    #[arg(long, value_name = "SPEC")]
    stack: String,
    /// The transport.
    #[arg(long, value_enum, value_name = "TRANSPORT", default_value_t = TransportKind::Udp)]
    transport: TransportKind,
    /// Where this member receives; its member id is this address.
    #[arg(long, value_name = "IP:PORT")]
    bind: SocketAddr,
    /// The other members' addresses: the full initial membership (omit for a
    /// group of one); with a membership layer (VSYNC), seeds: any live
    /// members to join through (omit to found the group).
    #[arg(long, value_name = "IP:PORT,...", value_delimiter = ',')]
    peers: Vec<SocketAddr>,
    /// How many messages this member casts (every member of a run uses the same N).
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    casts: u64,
    /// Payload size of each cast, in bytes.
    #[arg(long, allow_negative_numbers = true, value_name = "BYTES", value_parser = parse_size)]
    size: usize,
    /// Casts per second (default: as fast as the stack accepts).
    #[arg(long, allow_negative_numbers = true, value_name = "MSGS_PER_SEC", value_parser = parse_rate)]
    rate: Option<f64>,
    /// The JSON-lines log (created, or emptied if it exists).
    #[arg(long, value_name = "FILE")]
    log: PathBuf,
    /// Give up after this many seconds without a delivery or progress (fractions allowed).
    #[arg(long, allow_negative_numbers = true, value_name = "SECS", default_value = "10", value_parser = parse_linger)]
    linger: f64,
    /// Stop casting and leave the group this many seconds after the start (fractions allowed).
    #[arg(long, allow_negative_numbers = true, value_name = "SECS", value_parser = parse_leave_after)]
    leave_after: Option<f64>,
    #[command(flatten)]
    transport_opts: TransportOpts,
}

/// The options of one transport or another, shared by `strata node` and
/// `strata perf` (checked against `--transport` by [`transport_plan`]).
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct TransportOpts {
    /// ipmc: the group's multicast address and port (default: derived from the group name, in 239.0.0.0/8).
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) mcast_addr: Option<SocketAddrV4>,
    /// ipmc: the multicast TTL (hops a cast may cross; 1 keeps it on the local network).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=255))]
    pub(crate) mcast_ttl: Option<u32>,
    /// ipmc: the interface (its IPv4 address) multicast goes out and is received on (default: the --bind address).
    #[arg(long, value_name = "IP")]
    pub(crate) mcast_if: Option<Ipv4Addr>,
    /// tcptree: children per member in the spanning tree (default 2).
    #[arg(long, value_name = "K", value_parser = parse_fanout)]
    pub(crate) fanout: Option<usize>,
    /// udp, ipmc: pack the frames sent to one destination in one round into datagrams of at most BYTES (0: off; default 8192).
    #[arg(long, value_name = "BYTES", value_parser = parse_bundle)]
    pub(crate) bundle: Option<usize>,
}

pub(crate) fn parse_bundle(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(b) if b <= MAX_BUNDLE_BYTES => Ok(b),
        _ => Err(format!("expected a number of bytes from 0 (off) to {MAX_BUNDLE_BYTES}, got `{text}`")),
    }
}

pub(crate) fn parse_fanout(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(k) if (1..=MAX_FANOUT).contains(&k) => Ok(k),
        _ => Err(format!("expected a number of children from 1 to {MAX_FANOUT}, got `{text}`")),
    }
}

pub(crate) fn parse_size(text: &str) -> Result<usize, String> {
    let size: usize = text.parse().map_err(|_| format!("expected a number of bytes, got `{text}`"))?;
    if size > MAX_SIZE {
        return Err(format!("{size} bytes is more than the {MAX_SIZE} allowed"));
    }
    Ok(size)
}

pub(crate) fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("expected a positive number of casts per second, got `{text}`")),
    }
}

fn parse_leave_after(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.0..=MAX_LINGER_SECS).contains(&s) => Ok(s),
        _ => Err(format!("expected a number of seconds from 0 to {MAX_LINGER_SECS}, got `{text}`")),
    }
}

pub(crate) fn parse_linger(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= MAX_LINGER_SECS => Ok(s),
        _ => Err(format!("expected a number of seconds above 0 and at most {MAX_LINGER_SECS}, got `{text}`")),
    }
}

/// The transport to bind, with its checked options.
pub(crate) enum TransportPlan {
    Udp(UdpConfig),
    Ipmc(IpmcConfig),
    Tcptree(TcpTreeConfig),
}

impl TransportPlan {
    pub(crate) fn kind(&self) -> TransportKind {
        match self {
            TransportPlan::Udp(_) => TransportKind::Udp,
            TransportPlan::Ipmc(_) => TransportKind::Ipmc,
            TransportPlan::Tcptree(_) => TransportKind::Tcptree,
        }
    }

    /// How long the transport itself may keep a live member unheard: over
    /// the TCP tree a connection that stalls under loss is broken after
    /// `stall_timeout` and made again within `connect_timeout`, and frames
    /// queued on it are lost meanwhile. Datagram transports lose a datagram,
    /// not a stretch of time.
    pub(crate) fn longest_outage(&self) -> Duration {
        match self {
            TransportPlan::Udp(_) | TransportPlan::Ipmc(_) => Duration::ZERO,
            TransportPlan::Tcptree(c) => c.longest_outage(),
        }
    }

    /// The largest datagram the transport carries.
    pub(crate) fn max_datagram(&self) -> usize {
        match self {
            TransportPlan::Udp(_) | TransportPlan::Ipmc(_) => MAX_DATAGRAM,
            TransportPlan::Tcptree(c) => c.max_frame,
        }
    }
}

/// Checks the transport options against `--transport` and `--bind`
/// (`group` names the group whose multicast address `--mcast-addr` sets).
pub(crate) fn transport_plan(kind: TransportKind, opts: &TransportOpts, bind: SocketAddr, group: &str) -> Result<TransportPlan, String> {
    let misplaced = |flag: &str, wants: TransportKind| format!("{flag} is an option of --transport {}, not {}", wants.name(), kind.name());
    if kind != TransportKind::Ipmc {
        if opts.mcast_addr.is_some() {
            return Err(misplaced("--mcast-addr", TransportKind::Ipmc));
        }
        if opts.mcast_ttl.is_some() {
            return Err(misplaced("--mcast-ttl", TransportKind::Ipmc));
        }
        if opts.mcast_if.is_some() {
            return Err(misplaced("--mcast-if", TransportKind::Ipmc));
        }
    }
    if kind != TransportKind::Tcptree && opts.fanout.is_some() {
        return Err(misplaced("--fanout", TransportKind::Tcptree));
    }
    if kind == TransportKind::Tcptree && opts.bundle.is_some() {
        return Err(format!("--bundle is an option of --transport udp and ipmc, not {} (TCP packs frames into segments itself)", kind.name()));
    }
    Ok(match kind {
        TransportKind::Udp => {
            let mut config = UdpConfig::default();
            if let Some(bytes) = opts.bundle {
                config.bundle = bytes;
            }
            TransportPlan::Udp(config)
        }
        TransportKind::Ipmc => {
            if !bind.is_ipv4() {
                return Err(format!("--bind {bind}: --transport ipmc needs an IPv4 address"));
            }
            let mut config = IpmcConfig::default();
            if let Some(bytes) = opts.bundle {
                config.bundle = bytes;
            }
            if let Some(addr) = opts.mcast_addr {
                if !addr.ip().is_multicast() || addr.port() == 0 {
                    return Err(format!("--mcast-addr {addr}: expected a multicast address (224.0.0.0/4, best 239.0.0.0/8) and a port"));
                }
                config.addresses.insert(group.to_string(), addr);
            }
            if let Some(ttl) = opts.mcast_ttl {
                config.ttl = ttl;
            }
            if let Some(interface) = opts.mcast_if {
                if interface.is_multicast() || interface.is_broadcast() {
                    return Err(format!("--mcast-if {interface}: expected the address of a local interface"));
                }
                config.interface = Some(interface);
            }
            TransportPlan::Ipmc(config)
        }
        TransportKind::Tcptree => {
            let mut config = TcpTreeConfig::default();
            if let Some(k) = opts.fanout {
                config.fanout = k;
            }
            TransportPlan::Tcptree(config)
        }
    })
}

/// A checked request.
struct Plan {
    group: String,
    stack: String,
    transport: TransportPlan,
    bind: SocketAddr,
    /// This member first, then the peers (seeds with a membership layer).
    members: Vec<MemberId>,
    /// Whether a layer of the stack provides membership (VSYNC): the peers
    /// are seeds, views come and go, leaving is a protocol.
    membership: bool,
    casts: u64,
    size: usize,
    rate: Option<f64>,
    log: PathBuf,
    linger: Duration,
    /// How long the group must stay silent after the flush before this
    /// member leaves (`None`: nobody can need anything from it, or a
    /// membership layer makes the leave a protocol of its own).
    quiet: Option<Duration>,
    /// `--leave-after`.
    leave_after: Option<Duration>,
    /// The durable log of the stack's SAFE layer, if it has a `log_dir`.
    safe_log: Option<PathBuf>,
}

/// Checks what clap cannot: addresses usable as member ids, and a stack
/// string that builds. Returns the one-line reason otherwise.
fn plan(args: NodeArgs, registry: &Registry) -> Result<Plan, String> {
    if args.group.is_empty() {
        return Err("--group must not be empty".into());
    }
    let transport = transport_plan(args.transport, &args.transport_opts, args.bind, &args.group)?;
    if args.bind.ip().is_unspecified() {
        return Err(format!("--bind {}: give the address peers reach this member at (it is its member id), not an unspecified address", args.bind));
    }
    let membership = provides_membership(registry, &args.stack);
    if args.bind.port() == 0 && !args.peers.is_empty() && !membership {
        return Err(format!("--bind {}: port 0 cannot be a member id that peers know in advance; give a port", args.bind));
    }
    let members: Vec<MemberId> = member_addrs(args.bind, &args.peers)?.into_iter().map(|a| MemberId::new(a, 0)).collect();
    // The real build opens a durable log (and fails on a bad `log_dir`) in `run_node`.
    let dry = dry_build(registry, &args.stack, &args.group, &members, &transport)?;
    // The id text `M:k|` may make a payload longer than --size.
    let longest = args.size.max(payload::make("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", u64::MAX, 0).len());
    check_size_fits(&dry, args.size, longest, transport.max_datagram())?;
    let quiet = (members.len() > 1 && !membership).then(|| quiet_period(registry, &args.stack, &transport));
    let linger = Duration::try_from_secs_f64(args.linger).map_err(|e| format!("--linger {}: {e}", args.linger))?;
    let leave_after = match args.leave_after {
        Some(secs) => Some(Duration::try_from_secs_f64(secs).map_err(|e| format!("--leave-after {secs}: {e}"))?),
        None => None,
    };
    let safe_log = safe_log_file(registry, &args.stack, &args.group);
    Ok(Plan {
        group: args.group,
        stack: args.stack,
        transport,
        bind: args.bind,
        members,
        membership,
        casts: args.casts,
        size: args.size,
        rate: args.rate,
        log: args.log,
        linger,
        quiet,
        leave_after,
        safe_log,
    })
}

/// The file of the SAFE layer's durable log (`<log_dir>/<group>.safelog`),
/// if the stack has SAFE with a `log_dir`.
fn safe_log_file(registry: &Registry, stack: &str, group: &str) -> Option<PathBuf> {
    let resolved = registry.resolve(stack).ok()?;
    resolved.layers.iter().find_map(|(desc, params)| match params.get("log_dir") {
        Some(ParamValue::Str(dir)) if desc.name == safe::SAFE.name && !dir.is_empty() => Some(Path::new(dir).join(safe::log_file_name(group))),
        _ => None,
    })
}

/// `bind` then the distinct `peers`, each checked to be an address a member
/// can receive at, of `bind`'s IP family.
pub(crate) fn member_addrs(bind: SocketAddr, peers: &[SocketAddr]) -> Result<Vec<SocketAddr>, String> {
    let mut addrs = vec![bind];
    for peer in peers {
        if peer.ip().is_unspecified() || peer.port() == 0 {
            return Err(format!("--peers: {peer} is not an address a member can receive at"));
        }
        if peer.is_ipv4() != bind.is_ipv4() {
            return Err(format!("--peers: {peer} and --bind {bind} are of different IP families; one socket cannot reach both"));
        }
        if !addrs.contains(peer) {
            addrs.push(*peer);
        }
    }
    Ok(addrs)
}

/// Builds the stack once, dry, for its checks: the parser's and every
/// layer's own, with the datagram limit of the transport the real stack
/// will run over (`members[0]` is this member). Its storage is in memory: a
/// layer with a durable log (SAFE) must not write the real one for a stack
/// that is thrown away.
pub(crate) fn dry_build(registry: &Registry, stack: &str, group: &str, members: &[MemberId], transport: &TransportPlan) -> Result<Stack, String> {
    let config = StackConfig {
        group: group.to_string(),
        local: members[0],
        members: members.to_vec(),
        seed: 0,
        max_datagram: transport.max_datagram(),
        storage: Arc::new(strata::MemStorage::new()),
        entropy: [0; 32],
    };
    Stack::new(registry, stack, config, Instant::ZERO).map_err(|e| e.to_string())
}

/// Whether a layer of the stack provides membership (false for a stack
/// string that does not resolve: the dry build reports that).
pub(crate) fn provides_membership(registry: &Registry, stack: &str) -> bool {
    registry.resolve(stack).is_ok_and(|r| r.layers.iter().any(|(desc, _)| desc.provides.contains(Props::MEMBERSHIP)))
}

/// Refuses a `--size` larger than the stack carries (one datagram without
/// FRAG, FRAG's `max_msg_size` with it): every such cast would be refused.
/// `longest` is the longest payload `--size` leads to.
pub(crate) fn check_size_fits(stack: &Stack, size: usize, longest: usize, max_datagram: usize) -> Result<(), String> {
    let room = stack.max_message();
    if longest > room {
        let hint = if room < max_datagram { "; put FRAG in the stack or raise its max_msg_size" } else { "" };
        return Err(format!("--size {size}: this stack carries messages of at most {room} bytes{hint}"));
    }
    Ok(())
}

/// The silence that shows a group has settled: a few periods of the
/// slowest periodic status any layer of the stack declares (`status_ms`;
/// NAK sends one while anything is unacknowledged), or [`QUIET_MIN`], plus
/// the longest a live member can go unheard because of the transport
/// ([`TransportPlan::longest_outage`]): a member that still needs an
/// acknowledgement must be heard asking before this one exits.
pub(crate) fn quiet_period(registry: &Registry, stack: &str, transport: &TransportPlan) -> Duration {
    let status_ms = |params: &strata::Params| match params.get("status_ms") {
        Some(ParamValue::U64(ms)) => Some(*ms),
        _ => None,
    };
    let slowest = registry.resolve(stack).map(|r| r.layers.iter().filter_map(|(_, params)| status_ms(params)).max().unwrap_or(0)).unwrap_or(0);
    QUIET_MIN.max(Duration::from_millis(slowest.saturating_mul(3))) + transport.longest_outage()
}

/// Runs `strata node`; `Err` is the one-line reason for a failure.
pub fn run(args: NodeArgs) -> Result<ExitCode, String> {
    let registry = strata::builtin_registry();
    let plan = plan(args, &registry)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(run_node(plan, registry))
}

/// Why the node stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Everything delivered, own casts stable (and, with a membership
    /// layer, the leave completed).
    Done,
    /// Everything delivered, but own casts were not stable after `--linger`.
    Unstable,
    /// `--leave-after` came: the node leaves (`left` once it has).
    Leaving,
    /// `--linger` passed without progress before everything was delivered
    /// (or before the group confirmed the leave).
    Linger,
    /// SIGINT or SIGTERM (the number).
    Signal(i32),
}

impl Ending {
    fn name(self) -> &'static str {
        match self {
            Ending::Done => "done",
            Ending::Unstable => "unstable",
            Ending::Leaving => "left",
            Ending::Linger => "linger",
            Ending::Signal(_) => "signal",
        }
    }
}

/// What a wait in [`Receiver::wait`] ended with.
enum Outcome<T> {
    /// The awaited future finished.
    Ready(T),
    /// Every member of the current view is complete.
    Complete,
    /// `--linger` passed without progress.
    Linger,
    /// `--leave-after` passed.
    Leave,
    /// A signal arrived.
    Signal(i32),
    /// The events stream ended while deliveries were still awaited.
    Gone,
}

/// The exit status of a run ended by signal `sig`: 128 + its number.
pub(crate) fn signal_exit(sig: i32) -> ExitCode {
    ExitCode::from(128u8.saturating_add(sig as u8))
}

/// SIGINT and SIGTERM.
pub(crate) struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    pub(crate) fn new() -> std::io::Result<Signals> {
        Ok(Signals { int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())? })
    }

    pub(crate) async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
        }
    }
}

/// State shared by the caster and the receiver (one task: plain cells).
struct Shared {
    log: JsonLog,
    /// Deliveries logged so far.
    delivered: Cell<u64>,
    /// When the last delivery, view or completed cast happened.
    progress: Cell<Clock>,
}

/// The node's application state with a membership layer, and what it sends
/// joiners: per sender (by address), how many of its casts this node knows
/// were made. A delivery of `M:k` shows that M made k + 1 casts (its casts
/// are delivered in order); a state loaded on joining tells of casts made
/// before this member was there, which it does not deliver. The state is the
/// JSON object of these counts.
#[derive(Default)]
struct Known {
    counts: BTreeMap<String, u64>,
}

impl Known {
    fn get(&self, member: &str) -> u64 {
        self.counts.get(member).copied().unwrap_or(0)
    }

    fn raise(&mut self, member: &str, count: u64) {
        let slot = self.counts.entry(member.to_string()).or_insert(0);
        *slot = (*slot).max(count);
    }

    fn to_json(&self) -> String {
        let object: serde_json::Map<String, serde_json::Value> = self.counts.iter().map(|(m, n)| (m.clone(), (*n).into())).collect();
        serde_json::Value::Object(object).to_string()
    }
}

/// With SAFE and a `log_dir`: the replay of this incarnation. The layer
/// announces one (possibly empty) before any durable delivery; the
/// announced messages are then delivered again, marked `replayed`.
#[derive(Default)]
struct Replay {
    /// Whether an announcement is awaited at all (SAFE with a `log_dir`).
    expected: bool,
    /// Whether it came.
    announced: bool,
    /// Replayed deliveries announced and not delivered yet.
    outstanding: usize,
    /// The durable log was not empty at the start (a restart): an empty
    /// announcement is logged too (otherwise only a non-empty one).
    restart: bool,
}

impl Replay {
    /// Nothing of the replay is still to come.
    fn settled(&self) -> bool {
        !self.expected || (self.announced && self.outstanding == 0)
    }
}

/// Takes events, logs deliveries and views, and decides completion.
struct Receiver<'a> {
    shared: &'a Shared,
    /// The transport, for what `view` lines say about it.
    facts: &'a TransportFacts,
    /// This member.
    me: MemberId,
    group: Group,
    events: Events,
    events_open: bool,
    /// The current view (none yet: a membership layer has not admitted this member).
    view: Option<Arc<View>>,
    membership: bool,
    /// Cast deliveries per sender.
    from: HashMap<MemberId, u64>,
    /// With a membership layer: casts known per sender.
    known: Known,
    /// A state being loaded (chunks so far), between StateBegin and StateDone.
    loading: Option<Vec<u8>>,
    /// `Left` came.
    left: bool,
    /// With SAFE: the tags of applied durable deliveries, on their way to
    /// `Group::done` (see [`spawn_done`]); started at the first one.
    done: Option<mpsc::UnboundedSender<SafeTag>>,
    replay: Replay,
    casts: u64,
    linger: Duration,
    /// When `--leave-after` ends the run.
    leave_at: Option<Clock>,
    signals: Signals,
}

impl Receiver<'_> {
    /// Drives `fut` while taking events, until it finishes, or (if
    /// `until_complete`) every expected delivery happened, or `--linger`
    /// passes without progress, or `--leave-after` comes, or a signal arrives.
    async fn wait<F: Future>(&mut self, fut: F, until_complete: bool) -> Result<Outcome<F::Output>, String> {
        let mut fut = pin!(fut);
        loop {
            if until_complete {
                if self.complete() {
                    return Ok(Outcome::Complete);
                }
                if !self.events_open {
                    return Ok(Outcome::Gone);
                }
            }
            let idle_until = self.shared.progress.get().checked_add(self.linger);
            tokio::select! {
                // Events before casts: a reader that keeps up keeps the driver taking input.
                biased;
                sig = self.signals.recv() => return Ok(Outcome::Signal(sig)),
                _ = sleep_until(self.leave_at), if self.leave_at.is_some() => return Ok(Outcome::Leave),
                ev = self.events.next(), if self.events_open => match ev {
                    Some(ev) => self.handle(ev)?,
                    None => self.events_open = false,
                },
                out = &mut fut => return Ok(Outcome::Ready(out)),
                _ = sleep_until(idle_until) => {
                    if self.shared.progress.get().checked_add(self.linger).is_some_and(|at| at <= Clock::now()) {
                        return Ok(Outcome::Linger);
                    }
                }
            }
        }
    }

    /// Takes the events left after the stream's last awaited one (after a
    /// leave: the deliveries queued before `Left`), until it ends or `limit`.
    async fn drain(&mut self, limit: Duration) -> Result<(), String> {
        let until = Clock::now() + limit;
        while self.events_open {
            match tokio::time::timeout_at(until, self.events.next()).await {
                Ok(Some(ev)) => self.handle(ev)?,
                Ok(None) => self.events_open = false,
                Err(_) => break,
            }
        }
        Ok(())
    }

    fn complete(&self) -> bool {
        let Some(view) = &self.view else { return false };
        if self.membership {
            // A minority partition delivers nothing: it cannot be complete.
            // Replayed deliveries are awaited like the casts of the run.
            self.replay.settled() && view.is_primary() && view.members().iter().all(|m| self.known.get(&m.to_string()) >= self.casts)
        } else {
            view.members().iter().all(|m| self.from.get(m).copied().unwrap_or(0) >= self.casts)
        }
    }

    fn view_text(&self) -> String {
        self.view.as_ref().map(|v| v.id().to_string()).unwrap_or_default()
    }

    fn handle(&mut self, ev: AppEvent) -> Result<(), String> {
        match ev {
            AppEvent::Deliver { from, kind: kind @ (Delivery::Cast | Delivery::Safe { .. }), body } => {
                let fnv = format!("{:016x}", strata::codec::fnv1a64(&body));
                let id = payload_id(&body);
                let mut line = Line::new("deliver")
                    .str("view", &self.view_text())
                    .str("from", &from.to_string())
                    .str("id", &id)
                    .u64("len", body.len() as u64)
                    .str("fnv", &fnv);
                let replayed = matches!(kind, Delivery::Safe { replayed: true, .. });
                if let Delivery::Safe { tag, .. } = kind {
                    line = line.str("tag", &tag.to_string());
                    if replayed {
                        line = line.bool("replay", true);
                    }
                }
                self.shared.log.write(line).map_err(log_error)?;
                self.shared.delivered.set(self.shared.delivered.get() + 1);
                *self.from.entry(from).or_insert(0) += 1;
                if let Delivery::Safe { tag, .. } = kind {
                    // The line is written: the message is applied.
                    let done = self.done.get_or_insert_with(|| spawn_done(self.group.clone()));
                    let _ = done.send(tag);
                    if replayed {
                        self.replay.outstanding = self.replay.outstanding.saturating_sub(1);
                    }
                }
                if let Some((member, k)) = payload::split_id(&id) {
                    // Only a sender's own payloads count for it, and a
                    // replayed one is a cast of an earlier run, not of this one.
                    if member == from.to_string() && !replayed {
                        self.known.raise(member, k.saturating_add(1));
                    }
                }
                self.shared.progress.set(Clock::now());
            }
            AppEvent::Replay { messages } => {
                self.replay.announced = true;
                self.replay.outstanding += messages.len();
                if !messages.is_empty() || self.replay.restart {
                    let line = Line::new("replay")
                        .str("view", &self.view_text())
                        .strs("ids", messages.iter().map(|(_, body)| payload_id(body)))
                        .strs("tags", messages.iter().map(|(tag, _)| tag.to_string()));
                    self.shared.log.write(line).map_err(log_error)?;
                }
                self.shared.progress.set(Clock::now());
            }
            AppEvent::Deliver { from, kind: Delivery::Send, body } => {
                tracing::debug!(%from, len = body.len(), "ignored a point-to-point message");
            }
            AppEvent::View(view) => {
                if self.view.as_ref().is_none_or(|v| v.id() != view.id()) {
                    self.shared.log.write(view_line(&view, self.facts, self.me)).map_err(log_error)?;
                    self.view = Some(view);
                    self.shared.progress.set(Clock::now());
                }
            }
            AppEvent::Block => {
                self.shared.log.write(Line::new("block").str("view", &self.view_text())).map_err(log_error)?;
            }
            AppEvent::StateRequest { token, joiners } => {
                // The state as of this point of the stream, sent from a task
                // of its own: the chunks may wait for the send window while
                // this task must go on reading events.
                let state = bytes::Bytes::from(self.known.to_json());
                tracing::debug!(token, ?joiners, len = state.len(), "providing state");
                let group = self.group.clone();
                tokio::spawn(async move {
                    let max = group.max_message().max(1);
                    let mut at = 0;
                    while at < state.len() {
                        let end = (at + max).min(state.len());
                        if let Err(e) = group.provide_state(token, state.slice(at..end)).await {
                            tracing::debug!("state chunk not sent: {e}");
                            return;
                        }
                        at = end;
                    }
                    if let Err(e) = group.state_done(token).await {
                        tracing::debug!("end of state not sent: {e}");
                    }
                });
            }
            AppEvent::StateBegin => self.loading = Some(Vec::new()),
            AppEvent::StateChunk(chunk) => match &mut self.loading {
                Some(buf) => buf.extend_from_slice(&chunk),
                None => tracing::warn!("a state chunk outside a state transfer"),
            },
            AppEvent::StateDone => {
                let buf = self.loading.take().unwrap_or_default();
                match serde_json::from_slice::<BTreeMap<String, u64>>(&buf) {
                    Ok(counts) => {
                        for (member, n) in &counts {
                            self.known.raise(member, *n);
                        }
                        let mut object = String::from("{");
                        for (i, (member, n)) in counts.iter().enumerate() {
                            if i > 0 {
                                object.push(',');
                            }
                            object.push_str(&format!("{}:{n}", json_str(member)));
                        }
                        object.push('}');
                        self.shared.log.write(Line::new("state").str("view", &self.view_text()).raw("counts", &object)).map_err(log_error)?;
                    }
                    Err(e) => tracing::warn!(len = buf.len(), "the group's state does not parse: {e}"),
                }
                self.shared.progress.set(Clock::now());
            }
            AppEvent::Left => self.left = true,
            AppEvent::Lost { from, count } => tracing::warn!(%from, count, "the stack gave up on messages"),
            AppEvent::Problem(p) => {
                // Also in the log: a refused join (ENCRYPT's "uses a
                // different key") must be visible to whoever reads it.
                tracing::warn!(layer = p.layer, "{}", p.what);
                self.shared.log.write(Line::new("problem").str("layer", p.layer).str("what", &p.what)).map_err(log_error)?;
            }
            AppEvent::Suspect(m) => tracing::info!(member = %m, "suspected"),
            other => tracing::debug!(event = ?other, "event"),
        }
        Ok(())
    }
}

/// Passes the tags of applied durable deliveries to `Group::done`, in order,
/// from a task of its own: a call may wait for room in the group's command
/// queue, which the driver empties only while the application takes its
/// events, so the task that takes them must not wait for it.
pub(crate) fn spawn_done(group: Group) -> mpsc::UnboundedSender<SafeTag> {
    let (tx, mut rx) = mpsc::unbounded_channel::<SafeTag>();
    tokio::spawn(async move {
        while let Some(tag) = rx.recv().await {
            if let Err(e) = group.done(tag).await {
                tracing::debug!("done({tag}) not passed on: {e}");
                return;
            }
        }
    });
    tx
}

/// Sleeps until `at`; forever for `None`.
pub(crate) async fn sleep_until(at: Option<Clock>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn log_error(e: std::io::Error) -> String {
    format!("cannot write the log: {e}")
}

/// The id text at the start of a payload (up to its first `|`), or `?`.
fn payload_id(body: &[u8]) -> Cow<'_, str> {
    let head = &body[..body.len().min(ID_SCAN)];
    match head.iter().position(|&b| b == b'|') {
        Some(end) => String::from_utf8_lossy(&head[..end]),
        None => Cow::Borrowed("?"),
    }
}

/// A `view` line; over a TCP tree it gives this member's place in the
/// view's tree.
fn view_line(view: &View, facts: &TransportFacts, me: MemberId) -> Line {
    let line =
        Line::new("view").str("view", &view.id().to_string()).strs("members", view.members().iter().map(|m| m.to_string())).bool("primary", view.is_primary());
    match facts.view_tree(view, me) {
        Some(tree) => line.raw("tree", &tree),
        None => line,
    }
}

/// The `layers` object of the `stats` line: every layer's counters in the
/// order it reports them, then its drops by reason.
fn stats_json(all: &[LayerStats]) -> String {
    let mut out = String::from("{");
    let mut names: Vec<String> = Vec::new();
    for s in all {
        // A stack may hold a layer twice; JSON keys must stay unique.
        let mut name = s.name.to_string();
        let mut n = 1;
        while names.contains(&name) {
            n += 1;
            name = format!("{}#{n}", s.name);
        }
        if !names.is_empty() {
            out.push(',');
        }
        out.push_str(&json_str(&name));
        names.push(name);
        out.push_str(":{");
        let mut seen: Vec<&str> = vec!["dropped"];
        for (key, value) in &s.counters.entries {
            if seen.contains(key) {
                continue;
            }
            seen.push(key);
            out.push_str(&format!("{}:{value},", json_str(key)));
        }
        out.push_str("\"dropped\":{");
        let drops: Vec<String> = s.dropped.iter().map(|(reason, n)| format!("{}:{n}", json_str(reason))).collect();
        out.push_str(&drops.join(","));
        out.push_str("}}");
    }
    out.push('}');
    out
}

/// What the `start` line says about the transport beyond its name.
pub(crate) enum TransportFacts {
    /// `bundle`: the bundling limit (0: off).
    Udp {
        bundle: usize,
    },
    Ipmc {
        group: SocketAddrV4,
        ttl: u32,
        interface: Option<Ipv4Addr>,
        bundle: usize,
    },
    /// `closing`: to let the connections write their last frames at exit.
    Tcptree {
        fanout: usize,
        max_frame: usize,
        closing: Closing,
    },
}

/// Binds the planned transport at `bind` and starts an endpoint on it
/// (`group`: the group whose multicast address the facts give).
pub(crate) async fn bind_endpoint(transport: &TransportPlan, bind: SocketAddr, group: &str, registry: Registry) -> Result<(Endpoint, TransportFacts), String> {
    let bind_error = |e: std::io::Error| format!("cannot bind {bind}: {e}");
    let registry = Arc::new(registry);
    Ok(match transport {
        TransportPlan::Udp(config) => {
            let transport = UdpTransport::bind_with(bind, config.clone()).await.map_err(bind_error)?;
            (Endpoint::new(transport, registry), TransportFacts::Udp { bundle: config.bundle })
        }
        TransportPlan::Ipmc(config) => {
            let transport = IpmcTransport::bind(bind, config.clone()).await.map_err(bind_error)?;
            let facts = TransportFacts::Ipmc { group: transport.address_of(group), ttl: config.ttl, interface: transport.interface(), bundle: config.bundle };
            (Endpoint::new(transport, registry), facts)
        }
        TransportPlan::Tcptree(config) => {
            let transport = TcpTreeTransport::bind(bind, config.clone()).await.map_err(bind_error)?;
            let closing = transport.closing();
            (Endpoint::new(transport, registry), TransportFacts::Tcptree { fanout: config.fanout, max_frame: config.max_frame, closing })
        }
    })
}

impl TransportFacts {
    /// Adds the transport's addresses and shape to the `start` line; the
    /// tree of a fixed membership is known now (with a membership layer
    /// each `view` line gives it).
    fn describe(&self, line: Line, view: Option<&View>, me: MemberId) -> Line {
        match self {
            TransportFacts::Udp { bundle } => line.u64("bundle", *bundle as u64),
            TransportFacts::Ipmc { group, ttl, interface, bundle } => {
                let interface = interface.map_or_else(|| "default".to_string(), |i| i.to_string());
                line.str("mcast_addr", &group.to_string()).u64("mcast_ttl", u64::from(*ttl)).str("mcast_if", &interface).u64("bundle", *bundle as u64)
            }
            TransportFacts::Tcptree { fanout, max_frame, .. } => {
                let line = line.u64("fanout", *fanout as u64).u64("max_frame", *max_frame as u64).str("tree_root", "coordinator");
                match view {
                    Some(view) => line.raw("tree", &tree_json(view, me, *fanout)),
                    None => line,
                }
            }
        }
    }

    /// The tree of `view` around `me`, for a `view` line.
    fn view_tree(&self, view: &View, me: MemberId) -> Option<String> {
        match self {
            TransportFacts::Tcptree { fanout, .. } => Some(tree_json(view, me, *fanout)),
            _ => None,
        }
    }
}

/// `{"parent":ADDR|null,"children":[ADDR,...],"level":L,"depth":D}`: this
/// member's place in the view's k-ary tree (rooted at the coordinator).
fn tree_json(view: &View, me: MemberId, fanout: usize) -> String {
    let members: Vec<SocketAddr> = view.members().iter().map(MemberId::addr).collect();
    let Some(t) = tree_info(&members, me.addr(), fanout) else { return "null".into() };
    let addr = |a: SocketAddr| json_str(&a.to_string());
    let children: Vec<String> = t.children.into_iter().map(addr).collect();
    let parent = t.parent.map_or_else(|| "null".to_string(), addr);
    format!("{{\"parent\":{parent},\"children\":[{}],\"level\":{},\"depth\":{}}}", children.join(","), t.level, t.depth)
}

async fn run_node(mut plan: Plan, registry: Registry) -> Result<ExitCode, String> {
    let (endpoint, facts) = bind_endpoint(&plan.transport, plan.bind, &plan.group, registry).await?;
    // With port 0 the member id is the port the OS picked.
    plan.members[0] = MemberId::new(endpoint.local_addr(), 0);
    let signals = Signals::new().map_err(|e| format!("cannot handle signals: {e}"))?;
    // Read before the stack opens (and perhaps starts) the durable log.
    let restart = plan.safe_log.as_deref().is_some_and(|file| std::fs::metadata(file).is_ok_and(|m| m.len() > 0));
    // The log must be writable before the node joins (a typo must not make
    // it join a group and vanish), and must not exist if the join fails
    // (SAFE's durable log cannot be opened): probe it, join, then empty it.
    let probe = LogProbe::open(&plan.log)?;
    let mut cfg = join_config(&plan.group, &plan.stack, &plan.members, plan.membership);
    cfg.state_transfer = plan.membership;
    let (group, events) = match endpoint.join(cfg).await {
        Ok(joined) => joined,
        Err(e) => {
            probe.abandon();
            return Err(e.to_string());
        }
    };
    let log = JsonLog::create(&plan.log).map_err(|e| format!("cannot write the log {}: {e}", plan.log.display()))?;
    let me = group.local();
    let me_text = me.to_string();
    let began = Clock::now();

    let shared = Shared { log, delivered: Cell::new(0), progress: Cell::new(began) };
    let view = if plan.membership {
        // Views come as events, the first once the group admits this member.
        None
    } else {
        Some(group.view().await.map_err(|e| format!("the group ended at once: {e}"))?)
    };
    let start = Line::new("start")
        .str("member", &me_text)
        .u64("incarnation", me.incarnation())
        .str("stack", &plan.stack)
        .str("transport", plan.transport.kind().name())
        .str("group", &plan.group)
        .strs("peers", plan.members[1..].iter().map(|m| m.to_string()))
        .u64("casts", plan.casts)
        .u64("size", plan.size as u64)
        .f64("rate", plan.rate)
        .f64("linger", Some(plan.linger.as_secs_f64()))
        .f64("leave_after", plan.leave_after.map(|d| d.as_secs_f64()))
        .u64("pid", u64::from(std::process::id()));
    let start = facts.describe(start, view.as_deref(), me);
    shared.log.write(start).map_err(log_error)?;
    if let Some(view) = &view {
        shared.log.write(view_line(view, &facts, me)).map_err(log_error)?;
    }

    let mut rx = Receiver {
        shared: &shared,
        facts: &facts,
        me,
        group: group.clone(),
        events,
        events_open: true,
        view,
        membership: plan.membership,
        from: HashMap::new(),
        known: Known::default(),
        loading: None,
        left: false,
        done: None,
        replay: Replay { expected: plan.safe_log.is_some(), restart, ..Replay::default() },
        casts: plan.casts,
        linger: plan.linger,
        leave_at: plan.leave_after.and_then(|d| began.checked_add(d)),
        signals,
    };
    let mut ending = exchange(&mut rx, &endpoint, &group, &me_text, &plan).await?;

    // Wrap up: stats first (a group that has left has none), then the leave.
    let mut layers = match tokio::time::timeout(WRAP_UP, group.stats()).await {
        Ok(Ok(stats)) => stats,
        _ => Vec::new(),
    };
    rx.leave_at = None;
    if matches!(ending, Ending::Done | Ending::Unstable | Ending::Leaving) {
        ending = leave(&mut rx, &group, &plan, ending).await?;
    }
    if let Ok(Ok(ep)) = tokio::time::timeout(WRAP_UP, endpoint.stats()).await {
        layers.push(ep);
    }
    shared.log.write(Line::new("stats").raw("layers", &stats_json(&layers))).map_err(log_error)?;
    let delivered = shared.delivered.get();
    shared.log.write(Line::new("stop").u64("delivered", delivered).str("reason", ending.name())).map_err(log_error)?;
    shut_down(&endpoint, &facts).await;

    let secs = began.elapsed().as_secs_f64();
    println!("strata node {me_text}: {} after {secs:.2} s, delivered {delivered} casts", ending.name());
    Ok(match ending {
        Ending::Signal(sig) => signal_exit(sig),
        _ => ExitCode::SUCCESS,
    })
}

/// The node's log, checked writable before the node joins its group.
struct LogProbe {
    path: PathBuf,
    /// The probe created the file (it did not exist).
    created: bool,
}

impl LogProbe {
    /// Opens `path` for appending, creating it if missing, without emptying
    /// an existing file.
    fn open(path: &Path) -> Result<LogProbe, String> {
        let fail = |e: std::io::Error| format!("cannot write the log {}: {e}", path.display());
        let created = match std::fs::OpenOptions::new().append(true).create_new(true).open(path) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::OpenOptions::new().append(true).open(path).map_err(fail)?;
                false
            }
            Err(e) => return Err(fail(e)),
        };
        Ok(LogProbe { path: path.to_path_buf(), created })
    }

    /// The run will not happen: remove the file if the probe created it.
    fn abandon(self) {
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// How a member joins: with a membership layer, `members` after the first
/// (this member) are seeds and the incarnation is fresh; without one,
/// `members` is the fixed membership.
pub(crate) fn join_config(group: &str, stack: &str, members: &[MemberId], membership: bool) -> JoinConfig {
    let mut cfg = JoinConfig::new(group, stack);
    if membership {
        // Seeds only; a restarted process at the same address is a new member.
        cfg.members = members[1..].to_vec();
        cfg.incarnation = incarnation();
    } else {
        cfg.members = members.to_vec();
    }
    cfg
}

/// Stops the endpoint (bounded) and, over a TCP tree, lets the last frames
/// out before the process exits.
pub(crate) async fn shut_down(endpoint: &Endpoint, facts: &TransportFacts) {
    let _ = tokio::time::timeout(WRAP_UP, endpoint.shutdown()).await;
    if let TransportFacts::Tcptree { closing, .. } = facts {
        // Its sends are asynchronous: let the last frames (a leave's view
        // messages) reach the wire before the process exits.
        closing.wait(WRAP_UP).await;
    }
}

/// A fresh incarnation for a member of a group with a membership layer:
/// the wall clock in microseconds, so that a restarted process is told from
/// its earlier self.
fn incarnation() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1).max(1)
}

/// Leaves the group. Without a membership layer the stack answers at once
/// (best effort, bounded). With one, leaving is a view change: wait for
/// `Left` (the group installed a view without this member) while logging
/// the deliveries that come before it, bounded by `--linger`; if it does not
/// come, the run ends with `linger`.
async fn leave(rx: &mut Receiver<'_>, group: &Group, plan: &Plan, ending: Ending) -> Result<Ending, String> {
    let limit = if plan.membership { plan.linger } else { WRAP_UP };
    rx.shared.progress.set(Clock::now());
    match rx.wait(tokio::time::timeout(limit, group.leave()), false).await? {
        Outcome::Ready(Ok(Ok(()))) => {
            // Deliveries queued before `Left` are still in the stream.
            rx.drain(WRAP_UP).await?;
            Ok(ending)
        }
        Outcome::Ready(result) if plan.membership => {
            match result {
                Ok(Err(e)) => tracing::warn!("leave failed: {e}"),
                _ => tracing::warn!("the group did not confirm the leave within --linger"),
            }
            Ok(Ending::Linger)
        }
        Outcome::Linger if plan.membership => {
            tracing::warn!("the group did not confirm the leave within --linger");
            Ok(Ending::Linger)
        }
        Outcome::Signal(sig) => Ok(Ending::Signal(sig)),
        _ => Ok(ending),
    }
}

/// Casts, receives until complete, then flushes. Returns why it stopped.
async fn exchange(rx: &mut Receiver<'_>, endpoint: &Endpoint, group: &Group, me: &str, plan: &Plan) -> Result<Ending, String> {
    let shared = rx.shared;
    let caster = async {
        let start = Clock::now();
        for k in 0..plan.casts {
            if let Some(rate) = plan.rate {
                // Deadlines from the start, not from the previous cast: a
                // slow cast is caught up on, as far as `cast` lets it.
                let due = Duration::try_from_secs_f64(k as f64 / rate).ok().and_then(|d| start.checked_add(d));
                sleep_until(due).await;
            }
            let body = payload::make(me, k, plan.size);
            shared.log.write(Line::new("send").str("id", &format!("{me}:{k}")).u64("after", shared.delivered.get())).map_err(log_error)?;
            group.cast(body).await.map_err(|e: GroupError| format!("cast {k} failed: {e}"))?;
            shared.progress.set(Clock::now());
        }
        Ok::<(), String>(())
    };
    match rx.wait(caster, false).await? {
        Outcome::Ready(result) => result?,
        Outcome::Linger => return Ok(Ending::Linger),
        Outcome::Leave => return Ok(Ending::Leaving),
        Outcome::Signal(sig) => return Ok(Ending::Signal(sig)),
        Outcome::Complete | Outcome::Gone => {}
    }
    match rx.wait(std::future::pending::<()>(), true).await? {
        Outcome::Complete => {}
        Outcome::Linger => return Ok(Ending::Linger),
        Outcome::Leave => return Ok(Ending::Leaving),
        Outcome::Signal(sig) => return Ok(Ending::Signal(sig)),
        Outcome::Gone => return Err("the endpoint stopped before every cast was delivered".into()),
        Outcome::Ready(()) => unreachable!("pending() never finishes"),
    }
    // Own casts stable: nobody will need a retransmission from this member.
    shared.progress.set(Clock::now());
    match rx.wait(group.flush(), false).await? {
        Outcome::Ready(Ok(())) => {}
        Outcome::Ready(Err(e)) => {
            tracing::warn!("flush failed: {e}");
            return Ok(Ending::Unstable);
        }
        Outcome::Linger => {
            tracing::warn!("own casts not stable after --linger; stopping anyway");
            return Ok(Ending::Unstable);
        }
        Outcome::Leave => return Ok(Ending::Leaving),
        Outcome::Signal(sig) => return Ok(Ending::Signal(sig)),
        Outcome::Complete | Outcome::Gone => return Ok(Ending::Unstable),
    }
    // Others may still need this member's acknowledgements (one can be lost
    // like any datagram, and is repeated only when asked for): stay until the
    // group falls silent, as a reliability layer does once everything is
    // stable. Bounded by --linger like every wait. (Not with a membership
    // layer: its leave is a view change that settles exactly that.)
    if let Some(quiet) = plan.quiet {
        shared.progress.set(Clock::now());
        match rx.wait(settle(endpoint, quiet), false).await? {
            Outcome::Signal(sig) => return Ok(Ending::Signal(sig)),
            Outcome::Leave => return Ok(Ending::Leaving),
            _ => {}
        }
    }
    Ok(Ending::Done)
}

/// Resolves once the endpoint has received no datagram for `quiet`.
pub(crate) async fn settle(endpoint: &Endpoint, quiet: Duration) {
    let mut seen = None;
    let mut since = Clock::now();
    loop {
        let Ok(stats) = endpoint.stats().await else { return };
        let received = stats.counters.get("datagrams_in");
        if received != seen {
            seen = received;
            since = Clock::now();
        } else if since.elapsed() >= quiet {
            return;
        }
        tokio::time::sleep(quiet / 4).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_ids_are_the_text_before_the_bar() {
        assert_eq!(payload_id(&payload::make("[::1]:7001", 12, 100)), "[::1]:7001:12");
        assert_eq!(payload_id(b"no bar here"), "?");
        assert_eq!(payload_id(b""), "?");
        assert_eq!(payload_id(b"\xff\xfe|x"), "\u{fffd}\u{fffd}");
        let far = [b'a'; 500];
        assert_eq!(payload_id(&far), "?");
    }

    #[test]
    fn the_quiet_period_waits_out_nak_status_and_the_transports_outage() {
        let registry = strata::builtin_registry();
        let bind: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let plan = |kind| transport_plan(kind, &TransportOpts::default(), bind, "g").unwrap();
        let udp = quiet_period(&registry, "FRAG:NAK(status_ms=400)", &plan(TransportKind::Udp));
        assert_eq!(udp, Duration::from_millis(1200), "three status periods");
        let tree = quiet_period(&registry, "FRAG:NAK(status_ms=400)", &plan(TransportKind::Tcptree));
        assert_eq!(tree, udp + strata::transport::tcptree::TcpTreeConfig::default().longest_outage());
    }

    #[test]
    fn the_safe_log_is_found_only_with_a_log_dir() {
        let registry = strata::builtin_registry();
        let file = safe_log_file(&registry, "FRAG:NAK:VSYNC:SAFE(acceptors=5,log_dir=/var/lib/x)", "a/b c");
        assert_eq!(file, Some(PathBuf::from("/var/lib/x/a_b_c.safelog")));
        assert_eq!(safe_log_file(&registry, "FRAG:NAK:VSYNC:SAFE", "g"), None);
        assert_eq!(safe_log_file(&registry, "FRAG:NAK:VSYNC", "g"), None);
        assert_eq!(safe_log_file(&registry, "FRAG:NAK:VSYNC:NOSUCH", "g"), None);
    }

    #[test]
    fn the_replay_is_settled_once_announced_and_redelivered() {
        assert!(Replay::default().settled(), "nothing to wait for without a log_dir");
        let mut replay = Replay { expected: true, ..Replay::default() };
        assert!(!replay.settled());
        (replay.announced, replay.outstanding) = (true, 2);
        assert!(!replay.settled());
        replay.outstanding = 0;
        assert!(replay.settled());
    }

    #[test]
    fn an_abandoned_log_probe_removes_only_a_file_it_created() {
        let dir = std::env::temp_dir().join(format!("strata-node-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fresh = dir.join("fresh.jsonl");
        LogProbe::open(&fresh).unwrap().abandon();
        assert!(!fresh.exists());
        let earlier = dir.join("earlier.jsonl");
        std::fs::write(&earlier, "kept\n").unwrap();
        LogProbe::open(&earlier).unwrap().abandon();
        assert_eq!(std::fs::read_to_string(&earlier).unwrap(), "kept\n");
        let refused = LogProbe::open(&dir.join("no/such/dir/x.jsonl")).err().unwrap_or_default();
        assert!(refused.contains("no/such/dir/x.jsonl"), "{refused}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stats_keep_layer_order_and_unique_names() {
        let mut a = strata::Stats::default();
        a.add("sent", 3).add("sent", 4);
        let s = LayerStats { name: "LOSS", counters: a, dropped: vec![("short", 2)] };
        let e = LayerStats { name: "engine", counters: Default::default(), dropped: vec![] };
        let json = stats_json(&[s.clone(), s, e]);
        assert_eq!(json, r#"{"LOSS":{"sent":3,"dropped":{"short":2}},"LOSS#2":{"sent":3,"dropped":{"short":2}},"engine":{"dropped":{}}}"#);
        let _: serde_json::Value = serde_json::from_str(&json).unwrap();
    }
}
