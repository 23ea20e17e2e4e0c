//! Scenarios: everything that decides one simulated run, printable as one
//! line that parses back, plus a seeded generator and a shrinker for
//! property tests.
//!
//! ```text
//! seed=42 members=4 stack=FRAG:NAK loss=0.2 dup=0.05 reorder=0.1 delay_us=100..2000 casts=30
//!   size=1..65536 interval_us=500 quiet_ms=5000 faults=crash(2)@100ms,partition(0.1|2.3)@50ms,cut(3>1)@60ms,heal@400ms
//! seed=7 members=5 stack=FRAG:NAK:VSYNC casts=40 interval_us=10000 quiet_ms=10000
//!   faults=join(4)@1200ms,leave(2)@1500ms,crash(0)@1400ms
//! ```
//! (one line in reality). Fields may come in any order; a missing field
//! takes its default ([`Scenario::default`]). Two fields are written only
//! when they differ from their default, so lines written before they
//! existed read back unchanged: `fifo=0.2` (the share of casts asking for
//! `Order::Fifo` only) and `crash_tail=torn` (what a crash leaves of the
//! unsynced tail of a member's log files, see [`CrashTailMode`]). So are
//! the attacker's fields (see [`super::attack`]): `attack=RATE`
//! (injections per simulated second), `attack_kinds=replay,flip,...` (when
//! not all kinds) and `keep_left=true` (a member that left keeps running,
//! fed every later datagram). So are the routing fields: `tree=K` (group
//! casts travel along the k-ary tree of the sender's view and each member
//! forwards them, as the TCP tree transport does; see [`super::route`])
//! and `link_fifo=true` (the copies from one member to another arrive in
//! the order they were sent, as over a TCP connection), and the tree
//! transport's timing, `stall_ms=` (default 1000) and `retry_ms=` (default
//! 2000). A
//! crashed member starts again with `restart(i)@T`:
//!
//! ```text
//! seed=9 members=3 stack=FRAG:NAK:VSYNC:SAFE(log_dir=/safe) casts=40 interval_us=10000 quiet_ms=10000
//!   faults=crash(0)@1500ms,crash(1)@1500ms,crash(2)@1502ms,restart(1)@1800ms,restart(0)@1900ms,restart(2)@2500ms crash_tail=torn
//! ``` A stack string containing
//! whitespace, a quote or a backslash is written in double quotes with `\"`
//! and `\\` escapes; other stack strings (`FRAG(frag_size=1200):NAK`) are
//! written bare. Members are numbered from 0; member `i` is
//! `MemberId::sim(i)`. Fault times are virtual time since the start, with a
//! unit (`ns`, `us`, `ms`, `s`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use strata_stack::Rng;

use super::attack::AttackKinds;

/// One fault, applied at a virtual time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// When, since the start of the run.
    pub at: Duration,
    /// What.
    pub kind: FaultKind,
}

/// What a fault does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The member stops for good: it sends nothing, receives nothing, its log ends.
    Crash(u16),
    /// Datagrams sent between members of different sets vanish until a heal
    /// (or the next partition). Members listed in no set form one more set together.
    Partition(Vec<Vec<u16>>),
    /// Datagrams from member `from` to member `to` vanish until a heal; the
    /// other direction and every other link still work (a one-way link
    /// failure, or a receiver that drops one sender's traffic). Several cuts
    /// add up; a partition leaves them in force.
    Cut {
        /// The sender whose datagrams vanish.
        from: u16,
        /// The member that no longer gets them.
        to: u16,
    },
    /// Ends the partition and every cut.
    Heal,
    /// A crashed member starts again: the same address, the next
    /// incarnation, the same disk (its log files as the crash left them);
    /// it joins the group through its seeds, the other members, and its
    /// workload goes on with its remaining casts. The member must be down
    /// (crashed, not restarted since) at this time.
    Restart(u16),
    /// The member's stack is built at this time instead of at the start:
    /// before it, the member does not exist (datagrams to it vanish, counted
    /// like those to a crashed member) and its workload starts then.
    Join(u16),
    /// The member's application calls `Stack::leave` and stops casting; once
    /// the stack reports `Left`, the stack is dropped.
    Leave(u16),
}

/// Everything that decides one simulated run.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Seeds the network, the workload and every stack.
    pub seed: u64,
    /// How many members (numbered from 0).
    pub members: u16,
    /// The stack string every member runs.
    pub stack: String,
    /// Probability that one copy of a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram copy that survives is delivered twice.
    pub dup: f64,
    /// Probability that a copy gets an extra delay (1 to 4 times the largest
    /// base delay), which reorders it behind later traffic.
    pub reorder: f64,
    /// Base one-way delay range in microseconds, inclusive.
    pub delay_us: (u64, u64),
    /// Casts per member.
    pub casts: u32,
    /// Payload size range in bytes, inclusive; sizes are drawn log-uniformly.
    pub size: (usize, usize),
    /// Time between one member's casts, in microseconds.
    pub interval_us: u64,
    /// How long the run continues after the last cast and the last fault.
    pub quiet_ms: u64,
    /// Faults, in any order (applied in time order).
    pub faults: Vec<Fault>,
    /// Probability that a cast asks for FIFO order only
    /// (`Stack::cast_ordered(.., Order::Fifo)`) instead of the stack's
    /// strongest order. Written only when not 0.
    pub fifo: f64,
    /// What a crash leaves of the unsynced tail of the member's log files.
    /// Written only when not [`CrashTailMode::Random`].
    pub crash_tail: CrashTailMode,
    /// Injections per simulated second by the attacker on the wire (see
    /// [`super::attack`]); 0, the default, is no attacker. Written only when not 0.
    pub attack: f64,
    /// The kinds of injection the attacker makes. Written only when not all.
    pub attack_kinds: AttackKinds,
    /// Whether a member that left keeps its stack running, fed a copy of
    /// every later datagram by the eavesdropper (see [`super::attack`]).
    /// Written only when set.
    pub keep_left: bool,
    /// The fanout of the tree group casts are routed along (`tree=K`, see
    /// [`super::route`]); 0, the default, sends a group cast straight to
    /// every other member of the sender's view. Written only when not 0.
    pub tree: u16,
    /// Whether the copies sent from one member to another arrive in the
    /// order they were sent (a later copy never overtakes an earlier one:
    /// its arrival is held back to the earlier one's), as on a TCP
    /// connection; loss and duplication still apply. Written only when set.
    pub link_fifo: bool,
    /// With `tree=K`: how long (ms) the tree copies a member sends to
    /// another may be cut by a partition before its transport marks the
    /// other unreachable (the connection's data went unacknowledged: Linux
    /// `TCP_USER_TIMEOUT`, the real transport's `stall_timeout`); see
    /// [`super::route`]. Default [`DEFAULT_STALL_MS`]; written only when not that.
    pub stall_ms: u64,
    /// With `tree=K`: how old (ms) an unreachable mark is before the next
    /// copy to that member is tried directly again (a reconnect; the real
    /// transport's backoff tops out at 2 s). Default [`DEFAULT_RETRY_MS`];
    /// written only when not that.
    pub retry_ms: u64,
}

/// The default `stall_ms`.
pub const DEFAULT_STALL_MS: u64 = 1000;
/// The default `retry_ms`.
pub const DEFAULT_RETRY_MS: u64 = 2000;

/// What a crash does to the bytes a member appended to its log files but
/// did not sync (see `strata_stack::CrashTail`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum CrashTailMode {
    /// Drawn at each crash: lost half the time, else torn after a few bytes.
    #[default]
    Random,
    /// Always lost.
    Lost,
    /// Always torn: 1 to [`MAX_TORN`] bytes of it reach the disk.
    Torn,
}

/// The most bytes of an unsynced tail a torn crash keeps.
pub const MAX_TORN: u64 = 200;

impl fmt::Display for CrashTailMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CrashTailMode::Random => "random",
            CrashTailMode::Lost => "lost",
            CrashTailMode::Torn => "torn",
        })
    }
}

impl FromStr for CrashTailMode {
    type Err = ScenarioError;
    fn from_str(s: &str) -> Result<Self, ScenarioError> {
        match s {
            "random" => Ok(CrashTailMode::Random),
            "lost" => Ok(CrashTailMode::Lost),
            "torn" => Ok(CrashTailMode::Torn),
            _ => err(format!("crash_tail=`{s}`: expected random, lost or torn")),
        }
    }
}

impl CrashTailMode {
    /// The tail of one crash, drawn from `rng` (which it leaves alone unless
    /// there is something to draw).
    pub fn draw(self, rng: &mut Rng) -> strata_stack::CrashTail {
        use strata_stack::CrashTail;
        let torn = |rng: &mut Rng| CrashTail::Torn(rng.between(1, MAX_TORN) as usize);
        match self {
            CrashTailMode::Lost => CrashTail::Lost,
            CrashTailMode::Torn => torn(rng),
            CrashTailMode::Random if rng.below(2) == 0 => CrashTail::Lost,
            CrashTailMode::Random => torn(rng),
        }
    }
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            seed: 0,
            members: 3,
            stack: "FRAG:NAK".into(),
            loss: 0.0,
            dup: 0.0,
            reorder: 0.0,
            delay_us: (100, 1000),
            casts: 10,
            size: (1, 1000),
            interval_us: 1000,
            quiet_ms: 5000,
            faults: Vec::new(),
            fifo: 0.0,
            crash_tail: CrashTailMode::Random,
            attack: 0.0,
            attack_kinds: AttackKinds::ALL,
            keep_left: false,
            tree: 0,
            link_fifo: false,
            stall_ms: DEFAULT_STALL_MS,
            retry_ms: DEFAULT_RETRY_MS,
        }
    }
}

/// A scenario line that does not parse, or describes an impossible run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad scenario: {0}")]
pub struct ScenarioError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ScenarioError> {
    Err(ScenarioError(msg.into()))
}

impl Scenario {
    /// Whether the run has no crash, partition, join or leave: the runs on
    /// which completeness and empty buffers are required.
    pub fn is_fault_free(&self) -> bool {
        self.faults.iter().all(|f| f.kind == FaultKind::Heal)
    }

    /// Whether member `i` is crashed by some fault.
    pub fn crashes(&self, i: u16) -> bool {
        self.faults.iter().any(|f| f.kind == FaultKind::Crash(i))
    }

    /// Whether some member restarts (`restart(i)@T`).
    pub fn has_restarts(&self) -> bool {
        self.faults.iter().any(|f| matches!(f.kind, FaultKind::Restart(_)))
    }

    /// When member `i` joins (`join(i)@T`), if it starts late.
    pub fn join_time(&self, i: u16) -> Option<Duration> {
        self.faults.iter().find(|f| f.kind == FaultKind::Join(i)).map(|f| f.at)
    }

    /// When member `i` is told to leave (`leave(i)@T`), if it is.
    pub fn leave_time(&self, i: u16) -> Option<Duration> {
        self.faults.iter().find(|f| f.kind == FaultKind::Leave(i)).map(|f| f.at)
    }

    /// The faults sorted by time (stable, so equal times keep their written order).
    pub fn faults_in_order(&self) -> Vec<Fault> {
        let mut f = self.faults.clone();
        f.sort_by_key(|f| f.at);
        f
    }

    /// Checks that the scenario describes a possible run.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.members == 0 {
            return err("members must be at least 1");
        }
        for (name, p) in [("loss", self.loss), ("dup", self.dup), ("reorder", self.reorder), ("fifo", self.fifo)] {
            if !(0.0..=1.0).contains(&p) {
                return err(format!("{name}={p} is not a probability in 0..=1"));
            }
        }
        if !(self.attack.is_finite() && (0.0..=1e6).contains(&self.attack)) {
            return err(format!("attack={} is not a rate in 0..=1000000 injections per second", self.attack));
        }
        if self.attack_kinds.iter().next().is_none() {
            return err("attack_kinds names no kind");
        }
        if self.delay_us.0 > self.delay_us.1 {
            return err(format!("delay_us={}..{} is an empty range", self.delay_us.0, self.delay_us.1));
        }
        if self.size.0 > self.size.1 {
            return err(format!("size={}..{} is an empty range", self.size.0, self.size.1));
        }
        for f in &self.faults {
            match &f.kind {
                FaultKind::Crash(i) | FaultKind::Join(i) | FaultKind::Leave(i) | FaultKind::Restart(i) if *i >= self.members => {
                    return err(format!("{} names no member (members={})", f.kind, self.members))
                }
                FaultKind::Cut { from, to } if *from >= self.members || *to >= self.members || from == to => {
                    return err(format!("{} needs two different members (members={})", f.kind, self.members))
                }
                FaultKind::Partition(sets) => {
                    let mut seen = Vec::new();
                    for &i in sets.iter().flatten() {
                        if i >= self.members {
                            return err(format!("partition names member {i}, but members={}", self.members));
                        }
                        if seen.contains(&i) {
                            return err(format!("partition lists member {i} twice"));
                        }
                        seen.push(i);
                    }
                }
                _ => {}
            }
        }
        for i in 0..self.members {
            let of = |kind: FaultKind| self.faults.iter().filter(move |f| f.kind == kind).map(|f| f.at);
            for (what, kind) in [("join", FaultKind::Join(i)), ("leave", FaultKind::Leave(i))] {
                if of(kind).count() > 1 {
                    return err(format!("{what}({i}) appears more than once (a member joins and leaves at most once)"));
                }
            }
            if let Some(join) = self.join_time(i) {
                for (what, at) in of(FaultKind::Crash(i)).map(|t| ("crash", t)).chain(self.leave_time(i).map(|t| ("leave", t))) {
                    if at <= join {
                        return err(format!("{what}({i})@{} is not after join({i})@{}: the member does not exist yet", fmt_duration(at), fmt_duration(join)));
                    }
                }
            }
            if let Some(leave) = self.leave_time(i) {
                if let Some(crash) = of(FaultKind::Crash(i)).find(|&c| c <= leave) {
                    return err(format!("leave({i})@{} comes after crash({i})@{}: a crashed member cannot leave", fmt_duration(leave), fmt_duration(crash)));
                }
            }
            self.validate_restarts(i)?;
        }
        Ok(())
    }

    /// A restart needs a member that is down: crashed, not restarted since,
    /// and not gone for good (left).
    fn validate_restarts(&self, i: u16) -> Result<(), ScenarioError> {
        // When the member went down, if it is down.
        let mut down: Option<Duration> = None;
        let mut left: Option<Duration> = None;
        for f in self.faults_in_order() {
            match f.kind {
                FaultKind::Crash(j) if j == i => down = down.or(Some(f.at)),
                FaultKind::Leave(j) if j == i => left = Some(f.at),
                FaultKind::Restart(j) if j == i => {
                    let at = fmt_duration(f.at);
                    if let Some(l) = left {
                        return err(format!("restart({i})@{at} comes after leave({i})@{}: a member that left does not come back", fmt_duration(l)));
                    }
                    match down {
                        None => return err(format!("restart({i})@{at}: member {i} is not down (no crash({i}) since it started or last restarted)")),
                        Some(c) if c >= f.at => return err(format!("restart({i})@{at} is not after crash({i})@{}", fmt_duration(c))),
                        Some(_) => down = None,
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Roughly when the workload ends if nothing slows it down.
    pub fn nominal_end(&self) -> Duration {
        let casts = Duration::from_micros(self.interval_us.saturating_mul(u64::from(self.casts) + 1));
        let faults = self.faults.iter().map(|f| f.at).max().unwrap_or_default();
        casts.max(faults)
    }
}

fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    let (ms, us) = (ns / 1_000_000, ns / 1_000);
    if ms * 1_000_000 == ns {
        format!("{ms}ms")
    } else if us * 1_000 == ns {
        format!("{us}us")
    } else {
        format!("{ns}ns")
    }
}

fn parse_duration(s: &str) -> Result<Duration, ScenarioError> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| ScenarioError(format!("bad time `{s}`: expected digits and a unit (ns, us, ms, s)")))?;
    Ok(match unit {
        "ns" => Duration::from_nanos(n),
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        _ => return err(format!("bad time `{s}`: unit must be ns, us, ms or s")),
    })
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Crash(i) => write!(f, "crash({i})"),
            FaultKind::Join(i) => write!(f, "join({i})"),
            FaultKind::Leave(i) => write!(f, "leave({i})"),
            FaultKind::Restart(i) => write!(f, "restart({i})"),
            FaultKind::Heal => write!(f, "heal"),
            FaultKind::Cut { from, to } => write!(f, "cut({from}>{to})"),
            FaultKind::Partition(sets) => {
                let sets: Vec<String> = sets.iter().map(|s| s.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(".")).collect();
                write!(f, "partition({})", sets.join("|"))
            }
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.kind, fmt_duration(self.at))
    }
}

impl FromStr for Fault {
    type Err = ScenarioError;
    fn from_str(s: &str) -> Result<Fault, ScenarioError> {
        let (kind, at) = s.rsplit_once('@').ok_or_else(|| ScenarioError(format!("fault `{s}` lacks `@time`")))?;
        let at = parse_duration(at)?;
        let inner = |name: &str| kind.strip_prefix(name).and_then(|r| r.strip_prefix('(')).and_then(|r| r.strip_suffix(')'));
        let index = |t: &str| t.parse::<u16>().map_err(|_| ScenarioError(format!("bad member index `{t}` in fault `{s}`")));
        let kind = if kind == "heal" {
            FaultKind::Heal
        } else if let Some(i) = inner("crash") {
            FaultKind::Crash(index(i)?)
        } else if let Some(i) = inner("join") {
            FaultKind::Join(index(i)?)
        } else if let Some(i) = inner("leave") {
            FaultKind::Leave(index(i)?)
        } else if let Some(i) = inner("restart") {
            FaultKind::Restart(index(i)?)
        } else if let Some(link) = inner("cut") {
            let (from, to) = link.split_once('>').ok_or_else(|| ScenarioError(format!("fault `{s}`: a cut names a link as cut(from>to)")))?;
            FaultKind::Cut { from: index(from)?, to: index(to)? }
        } else if let Some(sets) = inner("partition") {
            let sets = sets.split('|').map(|set| if set.is_empty() { Ok(Vec::new()) } else { set.split('.').map(index).collect() });
            FaultKind::Partition(sets.collect::<Result<_, _>>()?)
        } else {
            return err(format!("unknown fault `{kind}`: expected crash(i), restart(i), join(i), leave(i), partition(a.b|c.d), cut(a>b) or heal"));
        };
        Ok(Fault { at, kind })
    }
}

fn needs_quotes(s: &str) -> bool {
    s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '\'')
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seed={} members={} stack=", self.seed, self.members)?;
        if needs_quotes(&self.stack) {
            write!(f, "\"")?;
            for c in self.stack.chars() {
                if c == '"' || c == '\\' {
                    write!(f, "\\")?;
                }
                write!(f, "{c}")?;
            }
            write!(f, "\"")?;
        } else {
            write!(f, "{}", self.stack)?;
        }
        write!(
            f,
            " loss={} dup={} reorder={} delay_us={}..{} casts={} size={}..{} interval_us={} quiet_ms={} faults=",
            self.loss, self.dup, self.reorder, self.delay_us.0, self.delay_us.1, self.casts, self.size.0, self.size.1, self.interval_us, self.quiet_ms
        )?;
        if self.faults.is_empty() {
            write!(f, "none")?;
        } else {
            let faults: Vec<String> = self.faults.iter().map(|x| x.to_string()).collect();
            write!(f, "{}", faults.join(","))?;
        }
        // Only when set, so that older lines print as they always did.
        if self.fifo != 0.0 {
            write!(f, " fifo={}", self.fifo)?;
        }
        if self.crash_tail != CrashTailMode::Random {
            write!(f, " crash_tail={}", self.crash_tail)?;
        }
        if self.attack != 0.0 {
            write!(f, " attack={}", self.attack)?;
        }
        if self.attack_kinds != AttackKinds::ALL {
            write!(f, " attack_kinds={}", self.attack_kinds)?;
        }
        if self.keep_left {
            write!(f, " keep_left=true")?;
        }
        if self.tree != 0 {
            write!(f, " tree={}", self.tree)?;
        }
        if self.link_fifo {
            write!(f, " link_fifo=true")?;
        }
        if self.stall_ms != DEFAULT_STALL_MS {
            write!(f, " stall_ms={}", self.stall_ms)?;
        }
        if self.retry_ms != DEFAULT_RETRY_MS {
            write!(f, " retry_ms={}", self.retry_ms)?;
        }
        Ok(())
    }
}

/// Splits a scenario line into `key=value` pairs, honouring double quotes.
fn fields(line: &str) -> Result<Vec<(String, String)>, ScenarioError> {
    let mut out = Vec::new();
    let mut chars = line.trim().chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        loop {
            match chars.next() {
                Some('=') => break,
                Some(c) if !c.is_whitespace() => key.push(c),
                _ => return err(format!("field `{key}` has no `=value`")),
            }
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(|| ScenarioError(format!("unterminated quote in field `{key}`")))?),
                    Some(c) => value.push(c),
                    None => return err(format!("unterminated quote in field `{key}`")),
                }
            }
            if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                return err(format!("text after the closing quote of field `{key}`"));
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        out.push((key, value));
    }
}

fn parse_num<T: FromStr>(key: &str, v: &str) -> Result<T, ScenarioError> {
    v.parse().map_err(|_| ScenarioError(format!("{key}=`{v}` is not a number")))
}

fn parse_range<T: FromStr>(key: &str, v: &str) -> Result<(T, T), ScenarioError> {
    let (a, b) = v.split_once("..").ok_or_else(|| ScenarioError(format!("{key}=`{v}` is not a range lo..hi")))?;
    Ok((parse_num(key, a)?, parse_num(key, b)?))
}

impl FromStr for Scenario {
    type Err = ScenarioError;
    /// Parses a line written by `Display` (or by hand), then validates it.
    fn from_str(line: &str) -> Result<Scenario, ScenarioError> {
        let mut s = Scenario::default();
        let mut seen: Vec<String> = Vec::new();
        for (key, v) in fields(line)? {
            if seen.contains(&key) {
                return err(format!("field `{key}` appears twice"));
            }
            match key.as_str() {
                "seed" => s.seed = parse_num(&key, &v)?,
                "members" => s.members = parse_num(&key, &v)?,
                "stack" => s.stack = v,
                "loss" => s.loss = parse_num(&key, &v)?,
                "dup" => s.dup = parse_num(&key, &v)?,
                "reorder" => s.reorder = parse_num(&key, &v)?,
                "delay_us" => s.delay_us = parse_range(&key, &v)?,
                "casts" => s.casts = parse_num(&key, &v)?,
                "size" => s.size = parse_range(&key, &v)?,
                "interval_us" => s.interval_us = parse_num(&key, &v)?,
                "quiet_ms" => s.quiet_ms = parse_num(&key, &v)?,
                "fifo" => s.fifo = parse_num(&key, &v)?,
                "crash_tail" => s.crash_tail = v.parse()?,
                "attack" => s.attack = parse_num(&key, &v)?,
                "attack_kinds" => s.attack_kinds = v.parse().map_err(ScenarioError)?,
                "keep_left" => s.keep_left = parse_num(&key, &v)?,
                "tree" => s.tree = parse_num(&key, &v)?,
                "link_fifo" => s.link_fifo = parse_num(&key, &v)?,
                "stall_ms" => s.stall_ms = parse_num(&key, &v)?,
                "retry_ms" => s.retry_ms = parse_num(&key, &v)?,
                "faults" => {
                    s.faults = if v == "none" || v.is_empty() { Vec::new() } else { split_faults(&v).into_iter().map(str::parse).collect::<Result<_, _>>()? }
                }
                _ => {
                    return err(format!(
                        "unknown field `{key}` (known: seed members stack loss dup reorder delay_us casts size interval_us quiet_ms faults fifo crash_tail attack attack_kinds keep_left tree link_fifo stall_ms retry_ms)"
                    ))
                }
            }
            seen.push(key);
        }
        s.validate()?;
        Ok(s)
    }
}

/// Splits a fault list at the commas outside parentheses.
fn split_faults(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in v.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&v[start..]);
    out
}

/// Bounds within which [`Scenario::generate`] draws scenarios.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranges {
    /// The stack every generated scenario runs.
    pub stack: String,
    /// Fewest and most members.
    pub members: (u16, u16),
    /// Largest loss probability.
    pub max_loss: f64,
    /// Largest duplication probability.
    pub max_dup: f64,
    /// Largest reordering probability.
    pub max_reorder: f64,
    /// Smallest and largest payload.
    pub size: (usize, usize),
    /// Most casts per member.
    pub max_casts: u32,
    /// Caps the bytes a run moves, `members * (members-1) * casts * mean size`,
    /// so that one case stays fast: runs with many members and large
    /// messages get fewer casts.
    pub budget_bytes: u64,
    /// Whether to generate crashes and partitions (with heals) the FRAG:NAK
    /// way: up to two, of any member, at any time of the workload.
    pub faults: bool,
    /// The quiet period of every scenario.
    pub quiet_ms: u64,
    /// The time between one member's casts, drawn uniformly in µs; `None`
    /// draws the FRAG:NAK mix (bursts of 0–1 ms up to 5–6 ms).
    pub interval_us: Option<(u64, u64)>,
    /// Membership faults (below) fall from this time on (ms): a membership
    /// layer needs a while to form the group, and faults before that hit
    /// no traffic.
    pub settle_ms: u64,
    /// Most members that start late (`join(i)@T`, a quarter of them while the
    /// group forms, the rest during the traffic). At least one member starts at 0.
    pub max_joins: u16,
    /// Most members told to leave (`leave(i)@T`).
    pub max_leaves: u16,
    /// Most crashes (`crash(i)@T`). Crashes, leaves and the minority of a
    /// partition together always stay fewer than half the members that start
    /// at 0, so that a majority survives; the first crash is often the first
    /// coordinator (the lowest member that starts at 0), and a second one
    /// often comes while the group handles the first.
    pub max_crashes: u16,
    /// Whether to split a minority off (`partition(..)@T`) and heal it later.
    pub partitions: bool,
    /// Whether a crashed member may start again (`restart(i)@T`, half of
    /// them, 0.2 to 4 s after the crash: while the group still has the old
    /// incarnation in its view, or after it removed it). For stacks that
    /// keep state across a crash (SAFE).
    pub restarts: bool,
    /// Whether to end with a total failure: every member up crashes (at one
    /// instant or within up to 20 ms), then every member restarts (all at
    /// once or staggered over up to 1 s). For SAFE with a `log_dir`.
    pub total_failure: bool,
    /// Largest share of casts asking for FIFO order only (`fifo=`); drawn
    /// like the loss, zero a quarter of the time.
    pub max_fifo: f64,
    /// Whether a third of the scenarios route group casts along a tree
    /// (`tree=K`, K in 1..=3), half of those over FIFO links
    /// (`link_fifo=true`): the TCP tree transport's way, so that every
    /// property is checked over it too. Their loss is per hop, scaled down
    /// so that a cast between the two members farthest apart in the tree
    /// (all members in the view) is lost with at most the probability
    /// drawn: a chain of 8 at 30% per hop would lose 92% end to end, far
    /// beyond what the UDP scenarios test (and than a TCP transport drops).
    pub trees: bool,
}

impl Ranges {
    /// The ranges of the FRAG:NAK property: 2..=8 members, loss up to 30%,
    /// duplication up to 10%, reordering up to 20%, payloads of 1 B..=64 KiB,
    /// no faults.
    pub fn new(stack: impl Into<String>) -> Ranges {
        Ranges {
            stack: stack.into(),
            members: (2, 8),
            max_loss: 0.30,
            max_dup: 0.10,
            max_reorder: 0.20,
            size: (1, 65_536),
            max_casts: 40,
            budget_bytes: 6_000_000,
            faults: false,
            quiet_ms: 5000,
            interval_us: None,
            settle_ms: 0,
            max_joins: 0,
            max_leaves: 0,
            max_crashes: 0,
            partitions: false,
            restarts: false,
            total_failure: false,
            max_fifo: 0.0,
            trees: false,
        }
    }

    /// The ranges of the VSYNC property: 2..=8 members, loss up to 20%,
    /// duplication up to 5%, reordering up to 10%, payloads of 1 B..=8 KiB,
    /// a cast every 1–20 ms, up to two late joiners, one leaver, three
    /// crashes and one partition with its heal, from 1.1 s on (VSYNC forms
    /// the group after its 1 s `join_timeout_ms`), and a quiet period of
    /// 10 s: long enough to suspect a crashed member (1.5 s), rejoin a
    /// healed minority (probes every 1 s) and transfer state; a third of
    /// them over a tree ([`Ranges::trees`]).
    pub fn vsync(stack: impl Into<String>) -> Ranges {
        Ranges {
            max_loss: 0.20,
            max_dup: 0.05,
            max_reorder: 0.10,
            size: (1, 8192),
            budget_bytes: 3_000_000,
            quiet_ms: 10_000,
            interval_us: Some((1000, 20_000)),
            settle_ms: 1100,
            max_joins: 2,
            max_leaves: 1,
            max_crashes: 3,
            partitions: true,
            trees: true,
            ..Ranges::new(stack)
        }
    }

    /// The ranges of the SAFE properties: those of [`Ranges::vsync`] with
    /// 2..=7 members, crashed members restarting ([`Ranges::restarts`]), and
    /// up to a fifth of the casts asking for FIFO order only. Set
    /// [`Ranges::total_failure`] for the total-failure family.
    pub fn safe(stack: impl Into<String>) -> Ranges {
        Ranges { members: (2, 7), restarts: true, max_fifo: 0.2, ..Ranges::vsync(stack) }
    }

    /// Whether any membership fault (join, leave, counted crashes, partitions) is drawn.
    fn membership_faults(&self) -> bool {
        self.max_joins > 0 || self.max_leaves > 0 || self.max_crashes > 0 || self.partitions
    }
}

/// A member at some moment, by the faults.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Life {
    /// Running.
    Up,
    /// Crashed, may restart.
    Down,
    /// Not started yet, or left.
    Gone,
}

/// Mean of a log-uniform draw over `lo..=hi` (what [`super::workload`] draws).
pub(crate) fn mean_size(lo: usize, hi: usize) -> f64 {
    let (lo, hi) = (lo.max(1) as f64, hi.max(1) as f64);
    if hi - lo < 1.0 {
        return lo;
    }
    (hi - lo) / (hi / lo).ln()
}

/// The most edges between two members of the `k`-ary tree of `n` members.
pub(crate) fn tree_diameter(n: usize, k: usize) -> usize {
    let k = k.max(1);
    let mut longest = 0;
    for a in 0..n {
        for b in a + 1..n {
            // A parent's rank is below its children's: lifting the higher
            // rank meets at the common ancestor.
            let (mut x, mut y, mut edges) = (a, b, 0);
            while x != y {
                if x > y {
                    x = (x - 1) / k;
                } else {
                    y = (y - 1) / k;
                }
                edges += 1;
            }
            longest = longest.max(edges);
        }
    }
    longest
}

/// The loss per hop that loses `end_to_end` over `hops` hops, rounded
/// down to a step of 0.001.
pub(crate) fn per_hop_loss(end_to_end: f64, hops: usize) -> f64 {
    if hops <= 1 || end_to_end <= 0.0 {
        return end_to_end;
    }
    ((1.0 - (1.0 - end_to_end).powf(1.0 / hops as f64)) * 1000.0).floor() / 1000.0
}

/// A probability drawn in steps of 0.001 (so that it prints short), zero a quarter of the time.
fn draw_p(rng: &mut Rng, max: f64) -> f64 {
    if max <= 0.0 || rng.below(4) == 0 {
        return 0.0;
    }
    rng.between(0, (max * 1000.0).round() as u64) as f64 / 1000.0
}

impl Scenario {
    /// A random scenario within `r`, entirely decided by `rng`.
    pub fn generate(rng: &mut Rng, r: &Ranges) -> Scenario {
        let seed = rng.next_u64();
        let members = rng.between(u64::from(r.members.0), u64::from(r.members.1.max(r.members.0))) as u16;
        let (lo, hi) = r.size;
        // Bias the size range so that small-only, around-a-fragment and
        // large-only runs all occur, besides the full range.
        let size = match rng.below(8) {
            0..=3 => (lo, hi),
            4 => (lo, hi.min(64).max(lo)),
            5 => (lo, hi.min(1500).max(lo)),
            6 => (lo.max(1000).min(hi), hi.min(3000).max(lo)),
            _ => (lo.max(hi.saturating_sub(hi / 8)), hi),
        };
        let n = f64::from(members);
        let per_cast = (n * (n - 1.0).max(1.0) * mean_size(size.0, size.1)).max(1.0);
        let affordable = ((r.budget_bytes as f64 / per_cast) as u32).clamp(1, r.max_casts.max(1));
        let casts = rng.between(1, u64::from(affordable)) as u32;
        let delay_lo = rng.between(20, 500);
        let delay_us = (delay_lo, delay_lo + rng.between(0, 3000));
        let interval_us = match r.interval_us {
            None => [0, 100, 1000, 5000][rng.below(4) as usize] + rng.below(1000),
            Some((lo, hi)) => rng.between(lo, hi.max(lo)),
        };
        let mut s = Scenario {
            seed,
            members,
            stack: r.stack.clone(),
            loss: draw_p(rng, r.max_loss),
            dup: draw_p(rng, r.max_dup),
            reorder: draw_p(rng, r.max_reorder),
            delay_us,
            casts,
            size,
            interval_us,
            quiet_ms: r.quiet_ms,
            faults: Vec::new(),
            ..Scenario::default()
        };
        if r.faults {
            let span = s.nominal_end().as_millis().max(1) as u64;
            for _ in 0..rng.below(3) {
                let at = Duration::from_millis(rng.below(span + 1));
                if rng.below(2) == 0 {
                    s.faults.push(Fault { at, kind: FaultKind::Crash(rng.below(u64::from(members)) as u16) });
                } else {
                    let mut sets = vec![Vec::new(), Vec::new()];
                    for i in 0..members {
                        sets[rng.below(2) as usize].push(i);
                    }
                    s.faults.push(Fault { at, kind: FaultKind::Partition(sets) });
                    s.faults.push(Fault { at: at + Duration::from_millis(rng.between(1, span)), kind: FaultKind::Heal });
                }
            }
        }
        if r.membership_faults() {
            s.membership_faults(rng, r);
        }
        // Drawn only when asked for, so that the other generators draw as they always did.
        if r.restarts {
            s.restart_some(rng);
        }
        if r.total_failure {
            s.total_failure(rng, r);
        }
        if r.restarts || r.total_failure {
            s.crash_tail = [CrashTailMode::Random, CrashTailMode::Random, CrashTailMode::Torn, CrashTailMode::Lost][rng.below(4) as usize];
        }
        if r.max_fifo > 0.0 {
            s.fifo = draw_p(rng, r.max_fifo);
        }
        if r.trees && rng.below(3) == 0 {
            s.tree = rng.between(1, 3) as u16;
            s.link_fifo = rng.below(2) == 0;
            // Loss compounds hop by hop: keep it, between the two members
            // farthest apart in the tree, within the loss drawn.
            s.loss = per_hop_loss(s.loss, tree_diameter(usize::from(members), usize::from(s.tree)));
        }
        s
    }

    /// Restarts half the crashed members, 0.2 to 4 s after their crash.
    fn restart_some(&mut self, rng: &mut Rng) {
        let crashes: Vec<Fault> = self.faults.iter().filter(|f| matches!(f.kind, FaultKind::Crash(_))).cloned().collect();
        for c in crashes {
            let FaultKind::Crash(i) = c.kind else { continue };
            if rng.below(2) == 0 && !self.faults.iter().any(|f| f.kind == FaultKind::Restart(i)) {
                self.faults.push(Fault { at: c.at + Duration::from_millis(rng.between(200, 4000)), kind: FaultKind::Restart(i) });
            }
        }
    }

    /// At a random time during the traffic, every member up crashes,
    /// within `spread`; then every member that did not leave restarts,
    /// within `stagger` of the last crash. Half the time the failure comes
    /// after the other faults (often once the traffic is over, when the
    /// members have finished most messages), else after the joins only,
    /// and the faults drawn for later are dropped (a member down then stays
    /// down until the restart).
    fn total_failure(&mut self, rng: &mut Rng, r: &Ranges) {
        let ms = Duration::from_millis;
        let span = (self.interval_us.saturating_mul(u64::from(self.casts)) / 1000).max(500);
        let after = |kinds: fn(&FaultKind) -> bool| self.faults.iter().filter(|f| kinds(&f.kind)).map(|f| f.at).max().unwrap_or_default();
        let (all, joins) = (after(|_| true), after(|k| matches!(k, FaultKind::Join(_))));
        let last = if rng.below(2) == 0 { all } else { joins };
        let at = ms(rng.between(r.settle_ms, r.settle_ms + span)).max(last + ms(rng.between(100, 1500)));
        self.faults.retain(|f| f.at < at);
        let spread = [0, 0, 5, 20][rng.below(4) as usize];
        let stagger = [1, 10, 200, 1000][rng.below(4) as usize];
        let mut end = at;
        let mut back = Vec::new();
        for i in 0..self.members {
            match self.state_at(i, at) {
                Life::Up => {
                    let crash = at + ms(rng.below(spread + 1));
                    end = end.max(crash);
                    self.faults.push(Fault { at: crash, kind: FaultKind::Crash(i) });
                    back.push(i);
                }
                Life::Down => back.push(i),
                Life::Gone => {}
            }
        }
        for i in back {
            self.faults.push(Fault { at: end + ms(rng.between(1, stagger)), kind: FaultKind::Restart(i) });
        }
    }

    /// Whether member `i` is up at `at` by the faults (those at `at` included).
    fn state_at(&self, i: u16, at: Duration) -> Life {
        let mut state = if self.join_time(i).is_some() { Life::Gone } else { Life::Up };
        for f in self.faults_in_order().into_iter().take_while(|f| f.at <= at) {
            state = match f.kind {
                FaultKind::Join(j) | FaultKind::Restart(j) if j == i => Life::Up,
                FaultKind::Crash(j) if j == i => Life::Down,
                FaultKind::Leave(j) if j == i => Life::Gone,
                _ => state,
            };
        }
        state
    }

    /// Draws the joins, crashes, partition and leaves of [`Ranges`] (see its fields).
    fn membership_faults(&mut self, rng: &mut Rng, r: &Ranges) {
        let n = self.members;
        let ms = Duration::from_millis;
        let settle = r.settle_ms;
        // The traffic runs for about casts * interval once the group formed.
        let span = (self.interval_us.saturating_mul(u64::from(self.casts)) / 1000).max(500);
        let during = |rng: &mut Rng| ms(rng.between(settle, settle + span));
        // Members not yet crashed or leaving (a late joiner may crash or leave after its join).
        let mut free: Vec<u16> = (0..n).collect();
        let take = |rng: &mut Rng, free: &mut Vec<u16>| free.remove(rng.below(free.len() as u64) as usize);

        // Late joiners; at least one member starts at 0.
        let mut joined: Vec<(u16, Duration)> = Vec::new();
        if r.max_joins > 0 && n > 1 && rng.below(2) == 0 {
            let mut starters: Vec<u16> = (0..n).collect();
            for _ in 0..rng.between(1, u64::from(r.max_joins.min(n - 1))) {
                let i = take(rng, &mut starters);
                let at = if rng.below(4) == 0 { ms(rng.between(1, settle.max(1))) } else { during(rng) };
                joined.push((i, at));
                self.faults.push(Fault { at, kind: FaultKind::Join(i) });
            }
        }
        let founders = n - joined.len() as u16;
        // Crashes, leaves and a partition's minority take members away from
        // the primary: keep them fewer than half the founders.
        let mut budget = founders.saturating_sub(1) / 2;
        let join_of = |i: u16| joined.iter().find(|(j, _)| *j == i).map(|(_, at)| *at);
        // A late joiner's fault comes after its join.
        let after_join = |rng: &mut Rng, i: u16, at: Duration| match join_of(i) {
            Some(j) if at <= j => j + ms(rng.between(1, 2000)),
            _ => at,
        };

        if r.max_crashes > 0 && budget > 0 && rng.below(3) != 0 {
            let crashes = rng.between(1, u64::from(r.max_crashes.min(budget))) as u16;
            budget -= crashes;
            let mut first = None;
            for c in 0..crashes {
                // The first coordinator: the lowest member that starts at 0.
                let coordinator = (0..n).find(|i| join_of(*i).is_none()).filter(|i| free.contains(i));
                let i = match coordinator {
                    Some(i) if c == 0 && rng.below(2) == 0 => {
                        free.retain(|m| *m != i);
                        i
                    }
                    _ => take(rng, &mut free),
                };
                let at = match first {
                    // A second crash while the group handles the first: right
                    // away (both are suspected together), or once the first
                    // is suspected (1.5 s), i.e. during the flush.
                    Some(t) => match rng.below(4) {
                        0 | 1 => t + ms(rng.between(0, 300)),
                        2 => t + ms(rng.between(1500, 1800)),
                        _ => during(rng),
                    },
                    None => during(rng),
                };
                let at = after_join(rng, i, at);
                first = first.or(Some(at));
                self.faults.push(Fault { at, kind: FaultKind::Crash(i) });
            }
        }
        if r.partitions && budget > 0 && n > 1 && rng.below(3) == 0 {
            let size = rng.between(1, u64::from(budget)) as u16;
            budget -= size;
            let mut minority = Vec::new();
            let mut others: Vec<u16> = (0..n).collect();
            for _ in 0..size {
                minority.push(take(rng, &mut others));
            }
            minority.sort_unstable();
            let at = during(rng);
            self.faults.push(Fault { at, kind: FaultKind::Partition(vec![others, minority]) });
            self.faults.push(Fault { at: at + ms(rng.between(200, 5000)), kind: FaultKind::Heal });
        }
        // A leave is clean (the leaver takes part in the flush), so without
        // crashes or partitions any member but the last may leave.
        let calm = !self.faults.iter().any(|f| matches!(f.kind, FaultKind::Crash(_) | FaultKind::Partition(_)));
        let leaves = if calm { founders.saturating_sub(1) } else { budget };
        if r.max_leaves > 0 && leaves > 0 && rng.below(3) == 0 {
            for _ in 0..rng.between(1, u64::from(r.max_leaves.min(leaves))) {
                if free.is_empty() {
                    break;
                }
                let i = take(rng, &mut free);
                let at = during(rng);
                let at = after_join(rng, i, at);
                self.faults.push(Fault { at, kind: FaultKind::Leave(i) });
            }
        }
    }

    /// Simpler scenarios to try when this one fails, simplest first: fewer
    /// faults (a partition goes with its heal, a crash with the restart
    /// after it; a heal is never dropped alone), fewer members, fewer casts, smaller payloads, less loss,
    /// duplication and reordering. The seed stays.
    pub fn shrink(&self) -> Vec<Scenario> {
        let mut out = Vec::new();
        // (Dropping a crash strands the restart after it: such candidates are skipped.)
        let mut push = |s: Scenario| {
            if s != *self && !out.contains(&s) && s.validate().is_ok() {
                out.push(s);
            }
        };
        // A partition goes with the heal that ends it; a heal alone stays
        // (dropping it would turn a healed split into a permanent one).
        let in_order = self.faults_in_order();
        for (n, f) in in_order.iter().enumerate() {
            if f.kind == FaultKind::Heal {
                continue;
            }
            let mut drop = vec![f];
            if matches!(f.kind, FaultKind::Partition(_)) {
                let next_split = in_order[n + 1..].iter().find(|g| matches!(g.kind, FaultKind::Partition(_) | FaultKind::Heal));
                drop.extend(next_split.filter(|g| g.kind == FaultKind::Heal));
            }
            // A crash goes with the restart that follows it.
            if let FaultKind::Crash(i) = f.kind {
                drop.extend(in_order[n + 1..].iter().find(|g| g.kind == FaultKind::Restart(i)));
            }
            let mut s = self.clone();
            for d in drop {
                if let Some(k) = s.faults.iter().position(|g| g == d) {
                    s.faults.remove(k);
                }
            }
            push(s);
        }
        if self.members > 2 {
            push(self.with_members(2));
            push(self.with_members(self.members - 1));
        }
        for casts in [1, self.casts / 2, self.casts.saturating_sub(1)] {
            if casts >= 1 && casts < self.casts {
                push(Scenario { casts, ..self.clone() });
            }
        }
        let (lo, hi) = self.size;
        for hi in [lo, lo.max(hi / 2)] {
            push(Scenario { size: (lo, hi), ..self.clone() });
        }
        if self.loss > 0.0 {
            push(Scenario { loss: 0.0, ..self.clone() });
            push(Scenario { loss: (self.loss * 500.0).floor() / 1000.0, ..self.clone() });
        }
        if self.dup > 0.0 {
            push(Scenario { dup: 0.0, ..self.clone() });
        }
        if self.reorder > 0.0 {
            push(Scenario { reorder: 0.0, ..self.clone() });
        }
        if self.fifo > 0.0 {
            push(Scenario { fifo: 0.0, ..self.clone() });
        }
        if self.attack > 0.0 {
            push(Scenario { attack: 0.0, ..self.clone() });
            push(Scenario { attack: (self.attack * 500.0).floor() / 1000.0, ..self.clone() });
        }
        // Direct casts and reordering links: whether a failure needs the tree.
        if self.tree != 0 {
            push(Scenario { tree: 0, link_fifo: false, ..self.clone() });
        }
        if self.link_fifo {
            push(Scenario { link_fifo: false, ..self.clone() });
        }
        out
    }

    /// The scenario cut down to `members` members, dropping faults on the others.
    fn with_members(&self, members: u16) -> Scenario {
        let mut s = Scenario { members, ..self.clone() };
        s.faults.retain_mut(|f| match &mut f.kind {
            FaultKind::Crash(i) | FaultKind::Join(i) | FaultKind::Leave(i) | FaultKind::Restart(i) => *i < members,
            FaultKind::Cut { from, to } => *from < members && *to < members,
            FaultKind::Partition(sets) => {
                for set in sets.iter_mut() {
                    set.retain(|i| *i < members);
                }
                sets.retain(|set| !set.is_empty());
                true
            }
            FaultKind::Heal => true,
        });
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_line_round_trips() {
        let line = "seed=42 members=4 stack=FRAG:NAK loss=0.2 dup=0.05 reorder=0.1 delay_us=100..2000 casts=30 size=1..65536 interval_us=500 \
                    quiet_ms=5000 faults=crash(2)@100ms,partition(0.1|2.3)@50ms,cut(3>1)@60ms,heal@400ms";
        let s: Scenario = line.parse().unwrap();
        assert_eq!(s.faults[1], Fault { at: Duration::from_millis(50), kind: FaultKind::Partition(vec![vec![0, 1], vec![2, 3]]) });
        assert_eq!(s.faults[2], Fault { at: Duration::from_millis(60), kind: FaultKind::Cut { from: 3, to: 1 } });
        assert_eq!(s.to_string(), line);
        assert!(!s.is_fault_free());
    }

    #[test]
    fn stacks_with_parameters_spaces_and_quotes_round_trip() {
        for stack in ["FRAG(frag_size=1200,x=2):NAK(retransmit_ms=20)", "FRAG : NAK", "A(p=a\"b\\c'd)", ""] {
            let s = Scenario { stack: stack.into(), faults: vec![Fault { at: Duration::from_micros(1500), kind: FaultKind::Heal }], ..Scenario::default() };
            let back: Scenario = s.to_string().parse().unwrap_or_else(|e| panic!("{e}: {s}"));
            assert_eq!(back, s, "{s}");
        }
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let e = |l: &str| l.parse::<Scenario>().unwrap_err().0;
        assert!(e("members=0").contains("at least 1"));
        assert!(e("loss=1.5").contains("probability"));
        assert!(e("members=2 faults=crash(2)@1ms").contains("crash(2)"));
        assert!(e("faults=explode@1ms").contains("unknown fault"));
        assert!(e("faults=heal@1h").contains("unit"));
        assert!(e("colour=blue").contains("unknown field"));
        assert!(e("stack=\"FRAG").contains("unterminated"));
        assert!(e("seed=1 seed=2").contains("twice"));
        assert_eq!("seed=7".parse::<Scenario>().unwrap(), Scenario { seed: 7, ..Scenario::default() });
    }

    #[test]
    fn joins_and_leaves_round_trip_and_are_validated() {
        let line = "seed=7 members=5 stack=FRAG:NAK:VSYNC loss=0 dup=0 reorder=0 delay_us=100..1000 casts=40 size=1..1000 interval_us=10000 \
                    quiet_ms=10000 faults=join(4)@1200ms,leave(2)@1500ms,crash(0)@1400ms,crash(4)@2s";
        let s: Scenario = line.parse().unwrap();
        assert_eq!(s.faults[0], Fault { at: Duration::from_millis(1200), kind: FaultKind::Join(4) });
        assert_eq!(s.faults[1].kind, FaultKind::Leave(2));
        assert_eq!((s.join_time(4), s.join_time(0), s.leave_time(2)), (Some(Duration::from_millis(1200)), None, Some(Duration::from_millis(1500))));
        assert_eq!(s.to_string(), line.replace("@2s", "@2000ms"));
        assert!(!s.is_fault_free());
        let e = |l: &str| l.parse::<Scenario>().unwrap_err().0;
        assert!(e("members=3 faults=join(3)@1ms").contains("join(3) names no member"));
        assert!(e("members=3 faults=leave(5)@1ms").contains("leave(5) names no member"));
        assert!(e("members=3 faults=cut(0>3)@1ms").contains("cut(0>3) needs two different members"));
        assert!(e("members=3 faults=cut(1>1)@1ms").contains("needs two different members"));
        assert!(e("members=3 faults=cut(1)@1ms").contains("cut(from>to)"));
        assert!(e("faults=join(1)@1ms,join(1)@2ms").contains("join(1) appears more than once"));
        assert!(e("faults=leave(1)@1ms,leave(1)@2ms").contains("leave(1) appears more than once"));
        assert!(e("faults=join(1)@5ms,leave(1)@5ms").contains("leave(1)@5ms is not after join(1)@5ms"));
        assert!(e("faults=join(1)@5ms,crash(1)@4ms").contains("crash(1)@4ms is not after join(1)@5ms"));
        assert!(e("faults=crash(1)@4ms,leave(1)@5ms").contains("leave(1)@5ms comes after crash(1)@4ms"));
        assert!(e("faults=part(1)@1ms").contains("join(i), leave(i)"));
        // A crash after a leave is fine (it may hit the member while it leaves).
        "faults=join(1)@1ms,leave(1)@5ms,crash(1)@6ms".parse::<Scenario>().unwrap();
        // Shrinking to fewer members drops their joins and leaves.
        let small = s.with_members(2);
        assert!(small.faults.iter().all(|f| !matches!(f.kind, FaultKind::Join(_) | FaultKind::Leave(_))), "{small}");
        small.validate().unwrap();
    }

    #[test]
    fn the_frag_nak_generator_is_unchanged() {
        // Pinned: the first scenarios `Ranges::new` draws from seed 1 (the
        // FRAG:NAK property's distribution must not move when fields are added).
        let mut rng = Rng::new(1);
        let r = Ranges { faults: true, ..Ranges::new("FRAG:NAK") };
        let lines: Vec<String> = (0..3).map(|_| Scenario::generate(&mut rng, &r).to_string()).collect();
        assert_eq!(lines, PINNED_FRAG_NAK);
    }

    #[test]
    fn generated_vsync_scenarios_keep_a_majority_and_cover_every_fault() {
        let mut rng = Rng::new(2);
        let r = Ranges::vsync("FRAG:NAK:VSYNC");
        let (mut joins, mut leaves, mut partitions, mut coordinator_crashes, mut second_crashes, mut crashes) = (0, 0, 0, 0, 0, 0);
        for _ in 0..1000 {
            let s = Scenario::generate(&mut rng, &r);
            s.validate().unwrap_or_else(|e| panic!("{e}: {s}"));
            assert_eq!(s.to_string().parse::<Scenario>().unwrap(), s);
            assert!((2..=8).contains(&s.members) && s.loss <= 0.2 && s.quiet_ms == 10_000 && (1000..=20_000).contains(&s.interval_us), "{s}");
            let count = |p: fn(&FaultKind) -> bool| s.faults.iter().filter(|f| p(&f.kind)).count();
            let founders = usize::from(s.members) - count(|k| matches!(k, FaultKind::Join(_)));
            let c = count(|k| matches!(k, FaultKind::Crash(_)));
            let minority: usize = s.faults.iter().map(|f| if let FaultKind::Partition(sets) = &f.kind { sets[1].len() } else { 0 }).sum();
            let l = count(|k| matches!(k, FaultKind::Leave(_)));
            assert!(founders >= 1, "{s}");
            if c + minority > 0 {
                assert!(2 * (c + minority + l) < founders, "fewer than half the founders may go: {s}");
            } else {
                assert!(l < founders, "{s}");
            }
            assert_eq!(count(|k| matches!(k, FaultKind::Partition(_))), count(|k| *k == FaultKind::Heal), "{s}");
            let coordinator = (0..s.members).find(|i| s.join_time(*i).is_none()).unwrap();
            let crash_times: Vec<Duration> = s.faults.iter().filter(|f| matches!(f.kind, FaultKind::Crash(_))).map(|f| f.at).collect();
            joins += count(|k| matches!(k, FaultKind::Join(_)));
            leaves += l;
            partitions += usize::from(minority > 0);
            crashes += c;
            coordinator_crashes += usize::from(s.crashes(coordinator));
            second_crashes +=
                usize::from(crash_times.len() >= 2 && crash_times[1] >= crash_times[0] && crash_times[1] <= crash_times[0] + Duration::from_millis(300));
            for smaller in s.shrink() {
                smaller.validate().unwrap_or_else(|e| panic!("{e}: {smaller} from {s}"));
                let splits = smaller.faults.iter().filter(|f| matches!(f.kind, FaultKind::Partition(_))).count();
                let heals = smaller.faults.iter().filter(|f| f.kind == FaultKind::Heal).count();
                assert_eq!(splits, heals, "a shrink keeps each partition with its heal: {smaller} from {s}");
            }
        }
        assert!(joins > 200 && leaves > 50 && partitions > 50 && crashes > 300, "{joins} {leaves} {partitions} {crashes}");
        assert!(coordinator_crashes > 150 && second_crashes > 30, "{coordinator_crashes} {second_crashes}");
    }

    #[test]
    fn generated_scenarios_stay_in_range_and_round_trip() {
        let mut rng = Rng::new(1);
        let r = Ranges { faults: true, ..Ranges::new("FRAG:NAK") };
        for _ in 0..500 {
            let s = Scenario::generate(&mut rng, &r);
            assert!((2..=8).contains(&s.members), "{s}");
            assert!(s.loss <= 0.3 && s.dup <= 0.1 && s.reorder <= 0.2, "{s}");
            assert!(s.size.0 >= 1 && s.size.1 <= 65_536 && s.casts >= 1, "{s}");
            s.validate().unwrap();
            assert_eq!(s.to_string().parse::<Scenario>().unwrap(), s);
            for smaller in s.shrink() {
                smaller.validate().unwrap_or_else(|e| panic!("{e}: {smaller} from {s}"));
                assert!(smaller.members <= s.members && smaller.casts <= s.casts && smaller.loss <= s.loss);
            }
        }
    }

    #[test]
    fn restarts_and_the_new_fields_round_trip_and_are_validated() {
        let line = "seed=9 members=3 stack=FRAG:NAK:VSYNC:SAFE(log_dir=/safe) loss=0 dup=0 reorder=0 delay_us=100..1000 casts=40 size=1..1000 \
                    interval_us=10000 quiet_ms=10000 faults=crash(0)@1500ms,crash(1)@1500ms,crash(2)@1502ms,restart(1)@1800ms,restart(0)@1900ms,restart(2)@2500ms \
                    fifo=0.2 crash_tail=torn";
        let s: Scenario = line.parse().unwrap();
        assert_eq!(s.faults[3], Fault { at: Duration::from_millis(1800), kind: FaultKind::Restart(1) });
        assert_eq!((s.fifo, s.crash_tail), (0.2, CrashTailMode::Torn));
        assert!(s.has_restarts() && !s.is_fault_free());
        assert_eq!(s.to_string(), line);
        // At their defaults the new fields are not written: older lines print as they did.
        let plain = Scenario::default().to_string();
        assert!(!plain.contains("fifo") && !plain.contains("crash_tail") && plain.ends_with("faults=none"), "{plain}");
        assert_eq!("crash_tail=random fifo=0".parse::<Scenario>().unwrap(), Scenario::default());
        assert_eq!("crash_tail=lost".parse::<Scenario>().unwrap().to_string(), format!("{plain} crash_tail=lost"));
        let e = |l: &str| l.parse::<Scenario>().unwrap_err().0;
        assert!(e("faults=restart(1)@5ms").contains("restart(1)@5ms: member 1 is not down"));
        assert!(e("faults=crash(1)@5ms,restart(1)@5ms").contains("restart(1)@5ms is not after crash(1)@5ms"));
        assert!(e("faults=crash(1)@5ms,restart(1)@6ms,restart(1)@7ms").contains("restart(1)@7ms: member 1 is not down"));
        assert!(e("faults=leave(1)@4ms,crash(1)@5ms,restart(1)@6ms").contains("restart(1)@6ms comes after leave(1)@4ms"));
        assert!(e("members=2 faults=restart(2)@1ms").contains("restart(2) names no member"));
        assert!(e("faults=join(1)@5ms,restart(1)@6ms").contains("not down"));
        assert!(e("crash_tail=half").contains("crash_tail=`half`: expected random, lost or torn"));
        assert!(e("fifo=2").contains("fifo=2 is not a probability"));
        // Down twice, up once; crash, restart, crash, restart.
        "faults=crash(1)@5ms,crash(1)@6ms,restart(1)@7ms".parse::<Scenario>().unwrap();
        "faults=join(1)@2ms,crash(1)@5ms,restart(1)@6ms,crash(1)@8ms,restart(1)@9ms".parse::<Scenario>().unwrap();
        // Shrinking drops a crash with its restart, and drops restarts and members cleanly.
        for smaller in s.shrink() {
            smaller.validate().unwrap_or_else(|e| panic!("{e}: {smaller}"));
        }
        assert!(s.shrink().iter().any(|x| x.faults.len() == 4 && !x.faults.iter().any(|f| matches!(f.kind, FaultKind::Crash(0) | FaultKind::Restart(0)))));
        assert_eq!(s.with_members(2).faults.len(), 4);
    }

    #[test]
    fn tree_fields_round_trip_are_written_only_when_set_and_shrink_away() {
        let line = "seed=5 members=7 stack=FRAG:NAK:VSYNC loss=0.1 dup=0 reorder=0 delay_us=100..1000 casts=10 size=1..1000 interval_us=1000 \
                    quiet_ms=5000 faults=crash(1)@2000ms tree=2 link_fifo=true";
        let s: Scenario = line.parse().unwrap();
        assert_eq!((s.tree, s.link_fifo), (2, true));
        assert_eq!(s.to_string(), line);
        let plain = Scenario::default().to_string();
        assert!(!plain.contains("tree") && !plain.contains("link_fifo"), "{plain}");
        assert_eq!("tree=0 link_fifo=false".parse::<Scenario>().unwrap(), Scenario::default());
        assert!("tree=x".parse::<Scenario>().unwrap_err().0.contains("tree=`x` is not a number"));
        let shrunk = s.shrink();
        assert!(shrunk.iter().any(|x| x.tree == 0 && !x.link_fifo));
        assert!(shrunk.iter().any(|x| x.tree == 2 && !x.link_fifo));
    }

    #[test]
    fn the_vsync_ranges_route_a_third_over_trees() {
        let mut rng = Rng::new(5);
        let r = Ranges::vsync("FRAG:NAK:VSYNC");
        let (mut trees, mut fanouts, mut fifo) = (0, [0; 4], 0);
        for _ in 0..900 {
            let s = Scenario::generate(&mut rng, &r);
            assert!(s.tree <= 3 && (s.tree > 0 || !s.link_fifo), "{s}");
            assert_eq!(s.to_string().parse::<Scenario>().unwrap(), s);
            trees += usize::from(s.tree > 0);
            fanouts[usize::from(s.tree)] += 1;
            fifo += usize::from(s.link_fifo);
            if s.tree > 0 {
                let hops = tree_diameter(usize::from(s.members), usize::from(s.tree));
                assert!(1.0 - (1.0 - s.loss).powi(hops as i32) <= r.max_loss + 1e-9, "{s}");
            }
        }
        assert!((240..360).contains(&trees) && fanouts[1..].iter().all(|n| *n > 60) && (90..210).contains(&fifo), "{trees} {fanouts:?} {fifo}");
        assert_eq!(
            [tree_diameter(1, 2), tree_diameter(2, 1), tree_diameter(8, 1), tree_diameter(7, 2), tree_diameter(8, 2), tree_diameter(8, 3)],
            [0, 1, 7, 4, 5, 4]
        );
        assert_eq!((per_hop_loss(0.3, 1), per_hop_loss(0.3, 7), per_hop_loss(0.0, 4)), (0.3, 0.049, 0.0));
        let plain = Ranges::new("FRAG:NAK");
        assert!((0..100).all(|_| Scenario::generate(&mut rng, &plain).tree == 0));
    }

    #[test]
    fn crash_tails_are_drawn_as_the_mode_says() {
        use strata_stack::CrashTail;
        let mut rng = Rng::new(4);
        let draws: Vec<CrashTail> = (0..1000).map(|_| CrashTailMode::Random.draw(&mut rng)).collect();
        let lost = draws.iter().filter(|t| **t == CrashTail::Lost).count();
        assert!((400..600).contains(&lost), "{lost} of 1000 lost");
        assert!(draws.iter().all(|t| match t {
            CrashTail::Torn(n) => (1..=MAX_TORN as usize).contains(n),
            CrashTail::Lost => true,
        }));
        assert!((0..100).all(|_| CrashTailMode::Lost.draw(&mut rng) == CrashTail::Lost));
        assert!((0..100).all(|_| matches!(CrashTailMode::Torn.draw(&mut rng), CrashTail::Torn(_))));
    }

    #[test]
    fn generated_safe_scenarios_restart_crashed_members_and_can_fail_totally() {
        let mut rng = Rng::new(3);
        let r = Ranges::safe("FRAG:NAK:VSYNC:SAFE");
        let (mut restarts, mut fifo, mut torn) = (0, 0, 0);
        for _ in 0..1000 {
            let s = Scenario::generate(&mut rng, &r);
            s.validate().unwrap_or_else(|e| panic!("{e}: {s}"));
            assert_eq!(s.to_string().parse::<Scenario>().unwrap(), s);
            assert!((2..=7).contains(&s.members) && s.fifo <= 0.2, "{s}");
            restarts += s.faults.iter().filter(|f| matches!(f.kind, FaultKind::Restart(_))).count();
            fifo += usize::from(s.fifo > 0.0);
            torn += usize::from(s.crash_tail == CrashTailMode::Torn);
            for smaller in s.shrink() {
                smaller.validate().unwrap_or_else(|e| panic!("{e}: {smaller} from {s}"));
            }
        }
        assert!(restarts > 150 && fifo > 500 && torn > 150, "{restarts} {fifo} {torn}");

        let r = Ranges { total_failure: true, max_leaves: 0, partitions: false, ..Ranges::safe("FRAG:NAK:VSYNC:SAFE(log_dir=/safe)") };
        let (mut together, mut spread, mut staggered, mut earlier_restarts) = (0, 0, 0, 0);
        for _ in 0..1000 {
            let s = Scenario::generate(&mut rng, &r);
            s.validate().unwrap_or_else(|e| panic!("{e}: {s}"));
            assert_eq!(s.to_string().parse::<Scenario>().unwrap(), s);
            assert!(!s.faults.iter().any(|f| matches!(f.kind, FaultKind::Leave(_) | FaultKind::Partition(_))), "{s}");
            // The last restart of each member comes after the last crash of all, and every member is down just before the first of them.
            let faults = s.faults_in_order();
            let last_crash = faults.iter().filter(|f| matches!(f.kind, FaultKind::Crash(_))).map(|f| f.at).max().unwrap();
            let back: Vec<Duration> = faults.iter().filter(|f| matches!(f.kind, FaultKind::Restart(_)) && f.at > last_crash).map(|f| f.at).collect();
            assert_eq!(back.len(), usize::from(s.members), "every member restarts after the total failure: {s}");
            let first_back = *back.iter().min().unwrap();
            assert!((0..s.members).all(|i| s.state_at(i, first_back - Duration::from_nanos(1)) == Life::Down), "{s}");
            assert!(*back.iter().max().unwrap() <= last_crash + Duration::from_millis(1000), "{s}");
            let burst: Vec<Duration> =
                faults.iter().filter(|f| matches!(f.kind, FaultKind::Crash(_)) && f.at + Duration::from_millis(20) >= last_crash).map(|f| f.at).collect();
            assert!(!burst.is_empty(), "{s}");
            let first_of_burst = *burst.iter().min().unwrap();
            together += usize::from(first_of_burst == last_crash);
            spread += usize::from(first_of_burst < last_crash);
            staggered += usize::from(*back.iter().max().unwrap() > first_back + Duration::from_millis(50));
            earlier_restarts += usize::from(faults.iter().any(|f| matches!(f.kind, FaultKind::Restart(_)) && f.at < last_crash));
            for smaller in s.shrink() {
                smaller.validate().unwrap_or_else(|e| panic!("{e}: {smaller} from {s}"));
            }
        }
        assert!(together > 300 && spread > 200 && staggered > 300 && earlier_restarts > 50, "{together} {spread} {staggered} {earlier_restarts}");
    }

    const PINNED_FRAG_NAK: [&str; 3] = [
        "seed=12966619160104079557 members=5 stack=FRAG:NAK loss=0.166 dup=0.096 reorder=0.134 delay_us=355..785 casts=16 size=1..64 interval_us=381 quiet_ms=5000 faults=crash(2)@6ms",
        "seed=845232928428614080 members=2 stack=FRAG:NAK loss=0.257 dup=0.099 reorder=0 delay_us=313..1362 casts=20 size=1..65536 interval_us=311 quiet_ms=5000 faults=crash(1)@2ms,crash(1)@1ms",
        "seed=7084622563335324071 members=5 stack=FRAG:NAK loss=0.154 dup=0.042 reorder=0 delay_us=257..2164 casts=1 size=1..65536 interval_us=538 quiet_ms=5000 faults=partition(1.3|0.2.4)@1ms,heal@2ms",
    ];
}
