//! `strata perf`: throughput, latency, CPU and memory of a stack over a
//! real transport, measured through the runtime an application uses
//! (`Endpoint`, `Group`, `Events`). docs/strata-perf.md is the
//! specification; scripts rely on it exactly. JGroups' UPerf and MPerf are
//! the model.
//!
//! Two ways to run:
//! - **Loopback** (no `--bind`): this process coordinates ([`parent`]). It
//!   starts one member process per member (`strata perf ... --member I`, a
//!   hidden option), each binding a free port on 127.0.0.1; they report on
//!   their stdout and take commands on their stdin ([`link`]). Once all are
//!   ready it tells them to start, follows their progress, tells them to
//!   finish when every one is complete (or the run is given up), and merges
//!   their results.
//! - **One member per host** (`--bind`): this process is one member, as in
//!   `strata node`, and prints its own results.
//!
//! A member ([`member`], or [`baseline`] for plain UDP without a stack)
//! casts payloads that carry their send time ([`wire`]), and counts and
//! times every delivery without allocating ([`meter`], [`hist`]). The
//! numbers are summarised by [`report`].

mod baseline;
mod hist;
mod link;
mod member;
mod meter;
mod parent;
mod report;
mod wire;

use crate::node::{self, TransportKind, TransportOpts, TransportPlan};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;
use strata::transport::udp::MAX_DATAGRAM;
use strata::{MemberId, Registry};
use tokio::time::Instant as Clock;

/// The stack measured when `--stack` is not given.
const DEFAULT_STACK: &str = "FRAG:NAK:CAUSAL:VSYNC:TOTAL";
/// The largest group accepted.
const MAX_MEMBERS: usize = 1000;
/// The most member processes loopback mode starts.
const MAX_LOOPBACK_MEMBERS: usize = 64;

/// Which members cast.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Senders {
    /// Every member casts --casts messages.
    All,
    /// Only the first member casts (loopback: index 0; one member per host: the lowest address).
    One,
}

impl Senders {
    fn name(self) -> &'static str {
        match self {
            Senders::All => "all",
            Senders::One => "one",
        }
    }
}

/// Options of `strata perf` (docs/strata-perf.md).
#[derive(clap::Args, Debug)]
pub struct PerfArgs {
    /// Members of the group (loopback: processes started; one member per host: the group size to wait for).
    #[arg(long, value_name = "N", default_value = "3", value_parser = parse_members)]
    members: usize,
    /// The stack string, bottom layer first (see `strata layers`).
    #[arg(long, value_name = "SPEC", default_value = DEFAULT_STACK)]
    stack: String,
    /// The transport.
    #[arg(long, value_enum, value_name = "TRANSPORT", default_value_t = TransportKind::Udp)]
    transport: TransportKind,
    /// Payload size of each cast, in bytes (at least the 20-byte header).
    #[arg(long, allow_negative_numbers = true, value_name = "BYTES", default_value = "1024", value_parser = node::parse_size)]
    size: usize,
    /// Messages each sender casts.
    #[arg(long, allow_negative_numbers = true, value_name = "K", default_value = "10000", value_parser = parse_casts)]
    casts: u64,
    /// Which members cast.
    #[arg(long, value_enum, value_name = "WHO", default_value_t = Senders::All)]
    senders: Senders,
    /// Print the results as one JSON object (one line) instead of text.
    #[arg(long)]
    json: bool,
    /// The group's name.
    #[arg(long, value_name = "NAME", default_value = "perf")]
    group: String,
    /// Casts per second of each sender (default: as fast as the stack accepts).
    #[arg(long, allow_negative_numbers = true, value_name = "MSGS_PER_SEC", value_parser = node::parse_rate)]
    rate: Option<f64>,
    /// Give up after this many seconds without progress anywhere (fractions allowed).
    #[arg(long, allow_negative_numbers = true, value_name = "SECS", default_value = "10", value_parser = node::parse_linger)]
    linger: f64,
    /// Be one member of a group spread over hosts, receiving here (its member id).
    #[arg(long, value_name = "IP:PORT")]
    bind: Option<SocketAddr>,
    /// With --bind: the members' addresses (fixed membership: all N, --bind included or not; with a membership layer: seeds).
    #[arg(long, value_name = "IP:PORT,...", value_delimiter = ',')]
    peers: Vec<SocketAddr>,
    #[command(flatten)]
    transport_opts: TransportOpts,
    /// No stack: each message is one plain UDP datagram to each other member (raw, unbatched UDP to compare with).
    #[arg(long)]
    baseline: bool,
    /// The member (by index: 0 .. N-1; one member per host: the position of its --bind among the sorted --bind and --peers) whose application takes deliveries slowly (with --slow-rate).
    #[arg(long, value_name = "INDEX")]
    slow_member: Option<usize>,
    /// Deliveries per second the slow member takes at most (with --slow-member).
    #[arg(long, allow_negative_numbers = true, value_name = "MSGS_PER_SEC", value_parser = node::parse_rate)]
    slow_rate: Option<f64>,
    /// Internal: run as member I of a loopback run started by `strata perf`.
    #[arg(long, value_name = "I", hide = true)]
    member: Option<usize>,
}

fn parse_members(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_MEMBERS).contains(&n) => Ok(n),
        _ => Err(format!("expected a number of members from 1 to {MAX_MEMBERS}, got `{text}`")),
    }
}

fn parse_casts(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(k) if k >= 1 => Ok(k),
        _ => Err(format!("expected a positive number of casts, got `{text}`")),
    }
}

/// What this process is in the run.
pub(crate) enum Role {
    /// Loopback mode: starts and coordinates the member processes.
    Coordinator,
    /// Loopback mode: member `index`, started by the coordinator.
    Child { index: usize },
    /// One member per host.
    Host {
        bind: SocketAddr,
        /// This member first, then the others (seeds with a membership layer).
        members: Vec<MemberId>,
        /// This member's index: its rank among the addresses of --bind and --peers.
        index: usize,
        /// Whether it casts (with `--senders one`: the lowest address).
        sender: bool,
    },
}

/// A checked request.
pub(crate) struct Plan {
    pub members: usize,
    pub stack: String,
    /// Whether a layer of the stack provides membership (VSYNC).
    pub membership: bool,
    pub kind: TransportKind,
    pub transport: TransportPlan,
    pub size: usize,
    pub casts: u64,
    pub senders: Senders,
    pub json: bool,
    pub group: String,
    pub rate: Option<f64>,
    pub linger: Duration,
    pub baseline: bool,
    /// The slow member's index and the deliveries per second it takes.
    pub slow: Option<(usize, f64)>,
    /// One member per host, fixed membership: the silence that shows the
    /// group has settled (see `node::quiet_period`).
    pub quiet: Option<Duration>,
    pub role: Role,
}

impl Plan {
    /// Deliveries each member makes in a complete run.
    pub fn expected(&self) -> u64 {
        match self.senders {
            Senders::All => self.casts.saturating_mul(self.members as u64),
            Senders::One => self.casts,
        }
    }

    /// Whether member `index` casts (loopback numbering).
    pub fn casts_from(&self, index: usize) -> bool {
        match &self.role {
            Role::Host { sender, .. } => *sender,
            _ => self.senders == Senders::All || index == 0,
        }
    }

    /// How fast member `index` takes deliveries, if it is the slow one.
    pub fn slow_rate_of(&self, index: usize) -> Option<f64> {
        self.slow.filter(|(i, _)| *i == index).map(|(_, r)| r)
    }

    pub fn info(&self) -> report::RunInfo {
        report::RunInfo {
            members: self.members,
            stack: if self.baseline { "none".into() } else { self.stack.clone() },
            transport: self.kind.name(),
            size: self.size,
            casts: self.casts,
            senders: self.senders.name(),
            rate: self.rate,
            baseline: self.baseline,
            group: self.group.clone(),
        }
    }
}

/// Checks what clap cannot; returns the one-line reason otherwise.
fn plan(args: PerfArgs, registry: &Registry) -> Result<Plan, String> {
    if args.group.is_empty() {
        return Err("--group must not be empty".into());
    }
    let n = args.members;
    if args.size < wire::HEADER_LEN {
        return Err(format!(
            "--size {}: every payload starts with a {}-byte header (send time, host, sender); the minimum is {}",
            args.size,
            wire::HEADER_LEN,
            wire::HEADER_LEN
        ));
    }
    let slow = match (args.slow_member, args.slow_rate) {
        (Some(index), Some(rate)) if index < n => Some((index, rate)),
        (Some(index), Some(_)) => return Err(format!("--slow-member {index}: members are numbered 0 to {} (--members {n})", n - 1)),
        (None, None) => None,
        (Some(_), None) => return Err("--slow-member needs --slow-rate (deliveries per second it takes)".into()),
        (None, Some(_)) => return Err("--slow-rate needs --slow-member (which member is slow)".into()),
    };
    if args.baseline && args.transport != TransportKind::Udp {
        return Err(format!("--baseline sends plain UDP datagrams: it needs --transport udp, not {}", args.transport.name()));
    }
    if args.baseline && args.transport_opts.bundle.is_some() {
        return Err("--bundle: --baseline sends one plain datagram per message, unbundled (that is what it measures)".into());
    }
    if args.baseline && args.size > MAX_DATAGRAM {
        return Err(format!("--size {}: --baseline sends each message as one UDP datagram, at most {MAX_DATAGRAM} bytes", args.size));
    }
    if !args.peers.is_empty() && args.bind.is_none() {
        return Err("--peers needs --bind (one member per host); without --bind all members run on loopback".into());
    }
    let membership = !args.baseline && node::provides_membership(registry, &args.stack);
    let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let role = match (args.bind, args.member) {
        (Some(_), Some(_)) => return Err("--member is internal to loopback runs; it does not go with --bind".into()),
        (None, Some(index)) if index >= n => return Err(format!("--member {index}: out of range for --members {n}")),
        (None, Some(index)) => Role::Child { index },
        (None, None) if n > MAX_LOOPBACK_MEMBERS => {
            return Err(format!("--members {n}: loopback mode starts one process per member, at most {MAX_LOOPBACK_MEMBERS}; use --bind for more"))
        }
        (None, None) => Role::Coordinator,
        (Some(bind), None) => host_role(&args, bind, membership)?,
    };
    let bind = match &role {
        Role::Host { bind, .. } => *bind,
        _ => loopback,
    };
    let transport = node::transport_plan(args.transport, &args.transport_opts, bind, &args.group)?;
    if !args.baseline {
        // The dry build: the stack string and every layer's own checks, and
        // whether a payload of --size fits.
        let members: Vec<MemberId> = match &role {
            Role::Host { members, .. } => members.clone(),
            _ => (1..=n as u16).map(|p| MemberId::new(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p), 0)).collect(),
        };
        let dry = node::dry_build(registry, &args.stack, &args.group, &members, &transport)?;
        node::check_size_fits(&dry, args.size, args.size, transport.max_datagram())?;
    }
    let linger = Duration::try_from_secs_f64(args.linger).map_err(|e| format!("--linger {}: {e}", args.linger))?;
    let quiet = match &role {
        Role::Host { members, .. } if members.len() > 1 && !membership && !args.baseline => Some(node::quiet_period(registry, &args.stack, &transport)),
        _ => None,
    };
    Ok(Plan {
        members: n,
        stack: args.stack,
        membership,
        kind: args.transport,
        transport,
        size: args.size,
        casts: args.casts,
        senders: args.senders,
        json: args.json,
        group: args.group,
        rate: args.rate,
        linger,
        baseline: args.baseline,
        slow,
        quiet,
        role,
    })
}

/// The role of one member per host: its members list, index and whether it casts.
fn host_role(args: &PerfArgs, bind: SocketAddr, membership: bool) -> Result<Role, String> {
    let n = args.members;
    if bind.ip().is_unspecified() || bind.port() == 0 {
        return Err(format!("--bind {bind}: give the address and port peers reach this member at (it is its member id)"));
    }
    let addrs = node::member_addrs(bind, &args.peers)?;
    if !membership && addrs.len() != n {
        let what = if args.baseline { "--baseline".to_string() } else { format!("fixed membership (no layer of {} provides membership)", args.stack) };
        return Err(format!("--members {n}: with {what}, --bind and --peers must name exactly {n} distinct addresses, got {}", addrs.len()));
    }
    if membership && addrs.len() > n {
        return Err(format!("--members {n}: --bind and --peers name {} distinct addresses, more than the group's size", addrs.len()));
    }
    let mut sorted = addrs.clone();
    sorted.sort();
    let index = sorted.iter().position(|a| *a == bind).unwrap_or(0);
    let sender = args.senders == Senders::All || index == 0;
    Ok(Role::Host { bind, members: addrs.into_iter().map(|a| MemberId::new(a, 0)).collect(), index, sender })
}

/// Why `strata perf` failed.
pub enum Failure {
    /// Bad arguments (exit 2).
    Usage(String),
    /// Something else (exit 1).
    Run(String),
}

/// Runs `strata perf`.
pub fn run(args: PerfArgs) -> Result<ExitCode, Failure> {
    let registry = strata::builtin_registry();
    let plan = plan(args, &registry).map_err(Failure::Usage)?;
    if let Role::Coordinator = plan.role {
        return parent::run(&plan).map_err(Failure::Run);
    }
    let child = matches!(plan.role, Role::Child { .. });
    // One thread per member process: on a small machine, worker threads of
    // several member processes only contend for the same cores (measured:
    // less CPU per message, a shorter tail and more at peak than 2 workers).
    let result =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("cannot start the async runtime: {e}")).and_then(|runtime| {
            runtime.block_on(async {
                if plan.baseline {
                    baseline::run(&plan).await
                } else {
                    member::run(&plan, registry).await
                }
            })
        });
    match result {
        Ok(code) => Ok(code),
        // A member process tells its coordinator, which names it in its own line.
        Err(what) if child => {
            link::report(serde_json::json!({"ev": "error", "what": what}));
            Ok(ExitCode::FAILURE)
        }
        Err(what) => Err(Failure::Run(what)),
    }
}

/// Prints the results of a run on stdout (`--json`: one line).
pub(crate) fn print_results(plan: &Plan, rows: &[report::Row]) -> report::Summary {
    let summary = report::Summary::of(rows);
    let info = plan.info();
    if plan.json {
        println!("{}", summary.json(&info, rows));
    } else {
        print!("{}", summary.text(&info, rows));
    }
    summary
}

/// How often a member process reports its progress to the coordinator.
pub(crate) const CHILD_PROGRESS: Duration = Duration::from_millis(250);
/// How often a member on its own prints its progress line.
pub(crate) const HOST_PROGRESS: Duration = Duration::from_secs(1);

/// Progress lines every `period`: the tick, and the deliveries at the
/// previous line for the rate since.
pub(crate) struct Progress {
    pub(crate) tick: tokio::time::Interval,
    last: (u64, Clock),
}

impl Progress {
    pub(crate) fn every(period: Duration) -> Progress {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Progress { tick, last: (0, Clock::now()) }
    }

    /// Counts from `delivered`, now (the start); the next line a period later.
    pub(crate) fn restart(&mut self, delivered: u64) {
        self.last = (delivered, Clock::now());
        self.tick.reset();
    }

    /// Deliveries per second since the previous line; this line is the next one's start.
    pub(crate) fn rate(&mut self, delivered: u64, now: Clock) -> f64 {
        let (before, at) = std::mem::replace(&mut self.last, (delivered, now));
        let secs = now.saturating_duration_since(at).as_secs_f64();
        if secs > 0.0 {
            delivered.saturating_sub(before) as f64 / secs
        } else {
            0.0
        }
    }

    /// A member's line: to the coordinator (a `progress` report) or, on
    /// its own host, on stderr.
    pub(crate) fn member_line(&mut self, to_coordinator: bool, started: Clock, delivered: u64, expected: u64, sent: u64, done: bool) {
        if to_coordinator {
            link::report(serde_json::json!({"ev": "progress", "delivered": delivered, "expected": expected, "sent": sent, "done": done}));
        } else {
            let now = Clock::now();
            let rate = self.rate(delivered, now);
            eprintln!("{}", progress_line(now.saturating_duration_since(started), &[delivered], expected, rate));
        }
    }
}

/// When cast `k` of a run paced at `rate` casts a second (from `began`) is
/// due; `None`: unpaced, or too far off to matter.
pub(crate) fn due(began: Clock, k: u64, rate: Option<f64>) -> Option<Clock> {
    let rate = rate?;
    Duration::try_from_secs_f64(k as f64 / rate).ok().and_then(|d| began.checked_add(d))
}

/// `perf: 3.0 s, 41% delivered (slowest member 37%), 120k msgs/s per member`.
pub(crate) fn progress_line(elapsed: Duration, delivered: &[u64], expected: u64, per_sec_per_member: f64) -> String {
    let pct = |d: u64| if expected == 0 { 100.0 } else { 100.0 * d as f64 / expected as f64 };
    let total: u64 = delivered.iter().sum();
    let all = pct(total) / delivered.len().max(1) as f64;
    let slowest = pct(delivered.iter().copied().min().unwrap_or(0));
    let rate = if per_sec_per_member >= 1000.0 { format!("{:.0}k", per_sec_per_member / 1000.0) } else { format!("{per_sec_per_member:.0}") };
    format!("perf: {:.1} s, {all:.0}% delivered (slowest member {slowest:.0}%), {rate} msgs/s per member", elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: PerfArgs,
    }

    fn plan_of(args: &[&str]) -> Result<Plan, String> {
        let cli = Cli::try_parse_from(std::iter::once("perf").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        plan(cli.args, &strata::builtin_registry())
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let p = plan_of(&[]).unwrap();
        assert_eq!((p.members, p.stack.as_str(), p.size, p.casts, p.senders, p.group.as_str()), (3, DEFAULT_STACK, 1024, 10_000, Senders::All, "perf"));
        assert_eq!((p.kind, p.linger, p.membership, p.expected()), (TransportKind::Udp, Duration::from_secs(10), true, 30_000));
        assert!(matches!(p.role, Role::Coordinator));
    }

    #[test]
    fn one_member_per_host_finds_its_index_and_whether_it_casts() {
        let p = plan_of(&["--stack", "FRAG:NAK", "--bind", "127.0.0.1:7002", "--peers", "127.0.0.1:7003,127.0.0.1:7001,127.0.0.1:7002", "--senders", "one"])
            .unwrap();
        match &p.role {
            Role::Host { index, sender, members, .. } => {
                assert_eq!((*index, *sender, members.len()), (1, false, 3));
                assert_eq!(members[0].addr().port(), 7002, "this member first");
            }
            _ => panic!("not a host role"),
        }
        assert_eq!(p.expected(), 10_000);
        assert!(p.quiet.is_some());
        let err = plan_of(&["--stack", "FRAG:NAK", "--bind", "127.0.0.1:7002", "--peers", "127.0.0.1:7003"]).err().unwrap();
        assert!(err.contains("exactly 3") && err.contains("got 2"), "{err}");
        // With a membership layer the peers are seeds.
        assert!(plan_of(&["--bind", "127.0.0.1:7002", "--peers", "127.0.0.1:7003"]).is_ok());
    }

    #[test]
    fn bad_combinations_are_refused_with_a_reason() {
        for (args, needle) in [
            (&["--size", "19"][..], "minimum is 20"),
            (&["--slow-member", "1"], "--slow-rate"),
            (&["--slow-rate", "10"], "--slow-member"),
            (&["--slow-member", "3", "--slow-rate", "10"], "numbered 0 to 2"),
            (&["--baseline", "--transport", "tcptree"], "--transport udp"),
            (&["--baseline", "--size", "70000"], "65507"),
            (&["--peers", "127.0.0.1:7000"], "--bind"),
            (&["--members", "65"], "at most 64"),
            (&["--stack", "NOSUCH"], "NOSUCH"),
            (&["--stack", "NAK", "--size", "100000"], "at most"),
            (&["--fanout", "2"], "tcptree"),
            (&["--group", ""], "--group"),
        ] {
            let err = plan_of(args).err().unwrap_or_else(|| panic!("{args:?} accepted"));
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn progress_lines_say_how_far_the_run_is() {
        let line = progress_line(Duration::from_millis(3000), &[41, 37, 45], 100, 120_400.0);
        assert_eq!(line, "perf: 3.0 s, 41% delivered (slowest member 37%), 120k msgs/s per member");
    }
}
