//! The simulated attacker: an eavesdropper on the wire that injects
//! replayed, damaged and forged datagrams at random members.
//!
//! With `attack=RATE` in the scenario, the attacker copies every datagram
//! any member transmits (a bounded, uniformly sampled store of
//! [`MAX_CAPTURED`] datagrams over the whole run, so that old traffic stays
//! available long after it was sent, across crashes and restarts of its
//! sender) and, at times drawn from a Poisson process of `RATE` injections
//! per simulated second, hands one datagram straight to a random running
//! member's stack, bypassing loss and partitions. Each injection is one of
//! these [`AttackKind`]s, drawn uniformly among those `attack_kinds=`
//! enables (all by default):
//!
//! * `replay`: a captured datagram, unchanged, to any member (its original
//!   destination or another);
//! * `flip`: a captured datagram with 1 to 8 bits flipped in one byte after
//!   the frame header;
//! * `truncate`: a captured datagram cut to a shorter length (possibly
//!   inside the frame header);
//! * `sender`: a captured datagram whose frame header names another member
//!   as its sender (that member's current incarnation, or a random one);
//! * `forge`: a valid frame header (group id and fingerprint copied from
//!   captured traffic, a real member as sender, cast or point-to-point)
//!   followed by 0..=1500 random bytes, half the time starting with one of
//!   ENCRYPT's packet kinds;
//! * `huge`: a captured datagram with a run of `0xFF` bytes ended by a
//!   varint terminator written early in its body, where lengths, counts
//!   and varints live, or a body that is one kind byte and 0xFF bytes.
//!
//! Everything is drawn from a random stream of its own, forked from the
//! scenario's seed after all the others, so a scenario line replays the
//! attack exactly and a run without `attack=` is unchanged.
//!
//! The run result ([`super::NetStats::attack`], [`AttackStats`]) counts the
//! injections by kind and by what the target's stack did with each,
//! judged from its counters just before and after it handled the datagram
//! (see [`Effect`]); it records the peak of every layer counter of the
//! targets, sampled after each injection (ENCRYPT's `held` and `sessions`
//! gauges among them).
//!
//! ## Members that linger after leaving
//! With `keep_left=true`, a member whose stack reports `Left` keeps running
//! instead of being dropped, and the eavesdropper gives it a copy of every
//! datagram any other member transmits from then on, whatever its
//! destination ([`Lingered`]). Each copy is marked *after the view* when its
//! sender had, when it sent it, installed a view without the lingering
//! member, and it was a cast or went to another member: with ENCRYPT's key
//! rotation, the lingering member must open none of those.

use super::MemberLog;
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use strata_stack::codec::{Reader, Writer};
use strata_stack::engine::FRAME_MAGIC;
use strata_stack::{Instant, LayerStats, MemberId, Rng, Stack};

/// Captured datagrams the attacker keeps (a uniform sample of all traffic).
pub const MAX_CAPTURED: usize = 4096;
/// The largest random body of a forged frame.
pub const MAX_FORGED_BODY: u64 = 1500;
/// ENCRYPT's outer packet kinds (sealed group, admission, pairwise, notice),
/// which forged bodies start with half the time.
const ENCRYPT_KINDS: [u8; 4] = [0x51, 0x52, 0x53, 0x5F];
/// Bytes of the frame header before the sender: magic, flags, group id, fingerprint.
const FRAME_FIXED: usize = 1 + 1 + 4 + 4;

/// What one injection is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AttackKind {
    /// A captured datagram, unchanged.
    Replay,
    /// A captured datagram with bits flipped in one byte after the frame header.
    Flip,
    /// A captured datagram cut short.
    Truncate,
    /// A captured datagram whose frame names another sender.
    Sender,
    /// A valid frame header with a random body.
    Forge,
    /// A captured datagram with huge length-looking fields in its body.
    Huge,
}

impl AttackKind {
    /// Every kind, in the order of [`AttackStats::kinds`].
    pub const ALL: [AttackKind; 6] = [AttackKind::Replay, AttackKind::Flip, AttackKind::Truncate, AttackKind::Sender, AttackKind::Forge, AttackKind::Huge];

    /// Its name in `attack_kinds=`.
    pub fn name(self) -> &'static str {
        match self {
            AttackKind::Replay => "replay",
            AttackKind::Flip => "flip",
            AttackKind::Truncate => "truncate",
            AttackKind::Sender => "sender",
            AttackKind::Forge => "forge",
            AttackKind::Huge => "huge",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The kinds an attack injects (`attack_kinds=replay,flip` or `all`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AttackKinds(u8);

impl AttackKinds {
    /// Every kind.
    pub const ALL: AttackKinds = AttackKinds(0b11_1111);
    /// Replays only (for stacks where ENCRYPT sits above layers whose headers travel in clear).
    pub const REPLAY_ONLY: AttackKinds = AttackKinds(1);

    /// Whether `kind` is enabled.
    pub fn contains(self, kind: AttackKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// The enabled kinds, in order.
    pub fn iter(self) -> impl Iterator<Item = AttackKind> {
        AttackKind::ALL.into_iter().filter(move |k| self.contains(*k))
    }
}

impl Default for AttackKinds {
    fn default() -> Self {
        AttackKinds::ALL
    }
}

impl fmt::Display for AttackKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == AttackKinds::ALL {
            return f.write_str("all");
        }
        let names: Vec<&str> = self.iter().map(AttackKind::name).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for AttackKinds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(AttackKinds::ALL);
        }
        let mut bits = 0;
        for name in s.split(',') {
            let kind = AttackKind::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
                format!("attack_kinds=`{s}`: unknown kind `{name}` (expected all, or a comma list of replay, flip, truncate, sender, forge, huge)")
            })?;
            bits |= kind.bit();
        }
        Ok(AttackKinds(bits))
    }
}

/// What the target's stack did with one datagram, judged from its counters
/// (summed over its layers) just before and just after it handled the
/// datagram, in this order of precedence.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A layer's `opened` counter grew (ENCRYPT authenticated it: an
    /// authentic packet, e.g. a replay the receiver had not seen).
    Opened,
    /// A drop counter of the engine or of a layer grew.
    Dropped,
    /// A layer's `held` gauge grew (ENCRYPT holds it for a challenge or a key).
    Held,
    /// A layer's `notices_received` grew (an unsealed ENCRYPT notice, which changes nothing).
    Noticed,
    /// None of these moved.
    Absorbed,
}

/// Injections of one kind, by what became of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Handed to a running stack.
    pub reached: u64,
    /// By [`Effect`].
    pub opened: u64,
    /// See [`Effect::Dropped`].
    pub dropped: u64,
    /// See [`Effect::Held`].
    pub held: u64,
    /// See [`Effect::Noticed`].
    pub noticed: u64,
    /// See [`Effect::Absorbed`].
    pub absorbed: u64,
}

impl Effects {
    pub(crate) fn count(&mut self, e: Effect) {
        self.reached += 1;
        match e {
            Effect::Opened => self.opened += 1,
            Effect::Dropped => self.dropped += 1,
            Effect::Held => self.held += 1,
            Effect::Noticed => self.noticed += 1,
            Effect::Absorbed => self.absorbed += 1,
        }
    }
}

/// The injections of one kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindStats {
    /// Injections drawn.
    pub injected: u64,
    /// Injections that found no running member, or nothing captured yet to build from.
    pub missed: u64,
    /// What the others did.
    pub effects: Effects,
}

/// A member that kept running after it left (`keep_left=true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lingered {
    /// Its index.
    pub member: usize,
    /// When its stack reported `Left`.
    pub left_at: Instant,
    /// Its layers' counters at that moment.
    pub stats_at_left: Vec<LayerStats>,
    /// Copies of other members' datagrams given to it while it ran after leaving.
    pub fed: Effects,
    /// Those whose sender had installed a view without it when it sent
    /// them, casts and datagrams to other members (not those to it).
    pub after_view: Effects,
}

/// What the attacker did in one run (all zero without `attack=` or `keep_left=`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttackStats {
    /// Datagrams it saw on the wire.
    pub captured: u64,
    /// Per kind, in the order of [`AttackKind::ALL`].
    pub kinds: [KindStats; 6],
    /// The highest value of each `(layer, counter)` of the targets' stacks,
    /// sampled after every injection.
    pub peaks: BTreeMap<(&'static str, &'static str), u64>,
    /// Members that ran on after leaving.
    pub lingered: Vec<Lingered>,
}

impl AttackStats {
    /// The injections of `kind`.
    pub fn of(&self, kind: AttackKind) -> &KindStats {
        &self.kinds[kind as usize]
    }

    /// Injections drawn, over all kinds.
    pub fn injected(&self) -> u64 {
        self.kinds.iter().map(|k| k.injected).sum()
    }

    /// Injections that reached a running stack, over all kinds.
    pub fn reached(&self) -> u64 {
        self.kinds.iter().map(|k| k.effects.reached).sum()
    }

    /// One line: per kind `name=reached/injected(opened,dropped,held,noticed,absorbed)`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = AttackKind::ALL
            .iter()
            .map(|&k| {
                let s = self.of(k);
                let e = &s.effects;
                format!("{}={}/{}(o{} d{} h{} n{} a{})", k.name(), e.reached, s.injected, e.opened, e.dropped, e.held, e.noticed, e.absorbed)
            })
            .collect();
        format!("captured={} {}", self.captured, parts.join(" "))
    }
}

/// One captured datagram.
struct Captured {
    from: usize,
    data: Bytes,
}

/// A datagram waiting to be handed to a lingering member.
pub(crate) struct Feed {
    pub to: usize,
    pub data: Bytes,
    pub after_view: bool,
}

/// The attacker's state during a run.
pub(crate) struct Attacker {
    rng: Rng,
    /// Injections per second; 0 = eavesdrop only (for lingering members).
    rate: f64,
    kinds: Vec<AttackKind>,
    captured: Vec<Captured>,
    next_at: Option<Instant>,
    pub feeds: VecDeque<Feed>,
    /// Index into `stats.lingered` of each lingering member.
    pub lingering: BTreeMap<usize, usize>,
    pub stats: AttackStats,
}

/// One injection to make now.
pub(crate) struct Injection {
    pub kind: AttackKind,
    pub to: usize,
    pub data: Bytes,
}

impl Attacker {
    pub fn new(rng: Rng, rate: f64, kinds: AttackKinds) -> Attacker {
        let mut a = Attacker {
            rng,
            rate,
            kinds: kinds.iter().collect(),
            captured: Vec::new(),
            next_at: None,
            feeds: VecDeque::new(),
            lingering: BTreeMap::new(),
            stats: AttackStats::default(),
        };
        if rate > 0.0 && !a.kinds.is_empty() {
            a.next_at = Some(Instant::ZERO + a.interval());
        }
        a
    }

    /// An exponentially distributed gap of mean `1/rate` seconds.
    fn interval(&mut self) -> Duration {
        // Uniform in (0, 1]: never ln(0).
        let u = (self.rng.below(1 << 53) + 1) as f64 / (1u64 << 53) as f64;
        Duration::from_secs_f64((-u.ln() / self.rate).min(3600.0))
    }

    /// When the attacker next acts: now if a lingering member has a copy waiting.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        if self.feeds.is_empty() {
            self.next_at
        } else {
            Some(now)
        }
    }

    /// Sees one datagram `data` that member `from` transmitted; `after_view`
    /// tells, per lingering member, whether `from` had a view without it.
    pub fn capture(&mut self, from: usize, data: &Bytes, after_view: impl Fn(usize) -> bool) {
        self.stats.captured += 1;
        for &to in self.lingering.keys() {
            if to != from {
                self.feeds.push_back(Feed { to, data: data.clone(), after_view: after_view(to) });
            }
        }
        if self.rate <= 0.0 {
            return;
        }
        let c = Captured { from, data: data.clone() };
        if self.captured.len() < MAX_CAPTURED {
            self.captured.push(c);
        } else {
            // Reservoir sampling: every datagram seen so far is kept with equal probability.
            let slot = self.rng.below(self.stats.captured);
            if let Some(s) = self.captured.get_mut(slot as usize) {
                *s = c;
            }
        }
    }

    /// The injection due at `now`, if one is; `running` lists the members
    /// with a stack, `logs` gives their current ids. Schedules the next.
    pub fn inject(&mut self, now: Instant, running: &[usize], logs: &[MemberLog]) -> Option<Option<Injection>> {
        let at = self.next_at.filter(|t| *t <= now)?;
        self.next_at = Some(at + self.interval());
        let kind = self.kinds[self.rng.below(self.kinds.len() as u64) as usize];
        let stats = &mut self.stats.kinds[kind as usize];
        stats.injected += 1;
        if running.is_empty() || self.captured.is_empty() {
            stats.missed += 1;
            return Some(None);
        }
        let to = running[self.rng.below(running.len() as u64) as usize];
        let pick = self.rng.below(self.captured.len() as u64) as usize;
        let (from, original) = (self.captured[pick].from, self.captured[pick].data.clone());
        let data = match kind {
            AttackKind::Replay => original,
            AttackKind::Flip => self.flip(&original),
            AttackKind::Truncate => original.slice(..self.rng.below(original.len() as u64) as usize),
            AttackKind::Sender => self.resend(&original, from, logs),
            AttackKind::Forge => self.forge(&original, logs),
            AttackKind::Huge => self.huge(&original),
        };
        Some(Some(Injection { kind, to, data }))
    }

    fn flip(&mut self, original: &Bytes) -> Bytes {
        let start = header_len(original).unwrap_or(FRAME_FIXED).min(original.len());
        let mut data = BytesMut::from(&original[..]);
        if start < data.len() {
            let at = self.rng.between(start as u64, data.len() as u64 - 1) as usize;
            data[at] ^= self.rng.between(1, 255) as u8;
        } else if let Some(last) = data.last_mut() {
            *last ^= 1;
        }
        data.freeze()
    }

    /// A random member's id: its current incarnation, or a random one.
    fn some_member(&mut self, logs: &[MemberLog], not: Option<usize>) -> MemberId {
        let n = logs.len() as u64;
        let mut m = self.rng.below(n) as usize;
        if Some(m) == not && n > 1 {
            m = (m + 1 + self.rng.below(n - 1) as usize) % n as usize;
        }
        let id = logs[m].id;
        match self.rng.below(4) {
            0 => MemberId::new(id.addr(), self.rng.next_u64() >> self.rng.below(64)),
            _ => id,
        }
    }

    fn resend(&mut self, original: &Bytes, from: usize, logs: &[MemberLog]) -> Bytes {
        let Some(end) = header_len(original) else { return original.clone() };
        let sender = self.some_member(logs, Some(from));
        let mut w = Writer::new();
        sender.encode(&mut w);
        let mut out = BytesMut::with_capacity(original.len() + 16);
        out.put_slice(&original[..FRAME_FIXED]);
        out.put_slice(w.as_slice());
        out.put_slice(&original[end..]);
        out.freeze()
    }

    fn forge(&mut self, original: &Bytes, logs: &[MemberLog]) -> Bytes {
        let sender = self.some_member(logs, None);
        let mut out = BytesMut::with_capacity(64);
        let fixed = &original[..FRAME_FIXED.min(original.len())];
        out.put_slice(fixed);
        if fixed.len() == FRAME_FIXED {
            // Cast or point-to-point at random.
            out[1] = self.rng.below(2) as u8;
        }
        let mut w = Writer::new();
        sender.encode(&mut w);
        out.put_slice(w.as_slice());
        // Log-uniform-ish length: many short bodies, some long ones.
        let cap = self.rng.between(1, MAX_FORGED_BODY);
        let len = self.rng.below(cap + 1);
        for n in 0..len {
            let b = if n == 0 && self.rng.below(2) == 0 { ENCRYPT_KINDS[self.rng.below(4) as usize] } else { self.rng.below(256) as u8 };
            out.put_u8(b);
        }
        out.freeze()
    }

    fn huge(&mut self, original: &Bytes) -> Bytes {
        let start = header_len(original).unwrap_or(original.len().min(FRAME_FIXED));
        let mut out = BytesMut::from(&original[..start]);
        let body = &original[start..];
        if self.rng.below(3) == 0 || body.is_empty() {
            // A kind byte and nothing but 0xFF.
            out.put_u8(body.first().copied().unwrap_or(ENCRYPT_KINDS[0]));
            out.put_bytes(0xFF, self.rng.between(8, 64) as usize);
        } else {
            let mut body = BytesMut::from(body);
            let at = self.rng.below(body.len().min(48) as u64) as usize;
            let run = self.rng.between(4, 10) as usize;
            if body.len() < at + run + 1 {
                body.resize(at + run + 1, 0);
            }
            body[at..at + run].fill(0xFF);
            body[at + run] = 0x01;
            out.put_slice(&body);
        }
        out.freeze()
    }
}

/// Where the frame header of `data` ends, if it has one.
pub fn header_len(data: &[u8]) -> Option<usize> {
    let mut r = Reader::new(data);
    if r.u8().ok()? != FRAME_MAGIC {
        return None;
    }
    r.u8().ok()?;
    r.u32().ok()?;
    r.u32().ok()?;
    MemberId::decode(&mut r).ok()?;
    Some(r.consumed())
}

/// The counters an [`Effect`] is judged from.
#[derive(Copy, Clone, Default)]
pub(crate) struct Gauges {
    drops: u64,
    opened: u64,
    held: u64,
    notices: u64,
}

impl Gauges {
    pub fn of(stack: &Stack) -> Gauges {
        Gauges::from_stats(&stack.stats(), &stack.engine_stats())
    }

    pub fn from_stats(layers: &[LayerStats], engine: &LayerStats) -> Gauges {
        let mut g = Gauges { drops: engine.dropped.iter().map(|(_, n)| n).sum(), ..Gauges::default() };
        for l in layers {
            g.drops += l.dropped.iter().map(|(_, n)| n).sum::<u64>();
            g.opened += l.counters.get("opened").unwrap_or(0);
            g.held += l.counters.get("held").unwrap_or(0);
            g.notices += l.counters.get("notices_received").unwrap_or(0);
        }
        g
    }

    /// What happened between `self` and `after`.
    pub fn effect(self, after: Gauges) -> Effect {
        if after.opened > self.opened {
            Effect::Opened
        } else if after.drops > self.drops {
            Effect::Dropped
        } else if after.held > self.held {
            Effect::Held
        } else if after.notices > self.notices {
            Effect::Noticed
        } else {
            Effect::Absorbed
        }
    }
}

/// Raises `peaks` to the counters in `layers`.
pub(crate) fn record_peaks(peaks: &mut BTreeMap<(&'static str, &'static str), u64>, layers: &[LayerStats]) {
    for l in layers {
        for &(name, value) in &l.counters.entries {
            let peak = peaks.entry((l.name, name)).or_insert(0);
            *peak = (*peak).max(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_print_and_parse() {
        assert_eq!(AttackKinds::ALL.to_string(), "all");
        assert_eq!("all".parse::<AttackKinds>().unwrap(), AttackKinds::ALL);
        assert_eq!("replay".parse::<AttackKinds>().unwrap(), AttackKinds::REPLAY_ONLY);
        let two: AttackKinds = "forge,flip".parse().unwrap();
        assert_eq!(two.to_string(), "flip,forge");
        assert!(two.contains(AttackKind::Flip) && !two.contains(AttackKind::Replay));
        assert!("replay,nope".parse::<AttackKinds>().unwrap_err().contains("unknown kind `nope`"));
    }

    #[test]
    fn injections_follow_the_rate_and_build_frames_that_parse_or_are_cut() {
        let logs: Vec<MemberLog> = (0..3u16).map(|i| MemberLog { started_at: Some(Instant::ZERO), ..MemberLog::new(MemberId::sim(i)) }).collect();
        let mut frame = Writer::new();
        frame.u8(FRAME_MAGIC).u8(1).u32(7).u32(9);
        MemberId::sim(0).encode(&mut frame);
        frame.bytes(&[0x51; 80]);
        let frame = Bytes::from(frame.as_slice().to_vec());
        let hdr = header_len(&frame).unwrap();
        let mut a = Attacker::new(Rng::new(5), 100.0, AttackKinds::ALL);
        a.capture(0, &frame, |_| false);
        let mut count = [0u64; 6];
        let end = Instant::ZERO + Duration::from_secs(10);
        let mut now = Instant::ZERO;
        while let Some(at) = a.next_due(now).filter(|t| *t <= end) {
            now = at;
            let inj = a.inject(now, &[0, 1, 2], &logs).unwrap().unwrap();
            count[inj.kind as usize] += 1;
            match inj.kind {
                AttackKind::Replay => assert_eq!(inj.data, frame),
                AttackKind::Flip => {
                    assert_eq!(inj.data.len(), frame.len());
                    assert_eq!(&inj.data[..hdr], &frame[..hdr], "the frame header is kept");
                    assert_ne!(inj.data, frame);
                }
                AttackKind::Truncate => assert!(inj.data.len() < frame.len() && frame.starts_with(&inj.data)),
                AttackKind::Sender | AttackKind::Forge => {
                    let end = header_len(&inj.data).expect("a valid frame header");
                    assert_eq!(&inj.data[2..FRAME_FIXED], &frame[2..FRAME_FIXED], "group id and fingerprint copied");
                    if inj.kind == AttackKind::Sender {
                        assert_eq!(&inj.data[end..], &frame[hdr..]);
                        assert_ne!(&inj.data[FRAME_FIXED..end], &frame[FRAME_FIXED..hdr]);
                    }
                }
                AttackKind::Huge => assert!(inj.data[hdr..].windows(4).any(|w| w == [0xFF; 4])),
            }
        }
        let total: u64 = count.iter().sum();
        assert!((800..1200).contains(&total), "about 100/s for 10 s: {total}");
        assert!(count.iter().all(|&c| c > 100), "every kind drawn: {count:?}");
        assert_eq!(a.stats.injected(), total);
    }

    #[test]
    fn replay_only_injects_replays_and_the_store_stays_bounded() {
        let mut a = Attacker::new(Rng::new(1), 50.0, AttackKinds::REPLAY_ONLY);
        for n in 0..(MAX_CAPTURED as u64 * 2) {
            a.capture(0, &Bytes::from(n.to_le_bytes().to_vec()), |_| false);
        }
        assert_eq!(a.captured.len(), MAX_CAPTURED);
        let old = a.captured.iter().filter(|c| u64::from_le_bytes(c.data[..8].try_into().unwrap()) < MAX_CAPTURED as u64).count();
        assert!(old > MAX_CAPTURED / 4, "old traffic stays available: {old}");
        let now = Instant::ZERO + Duration::from_secs(5);
        let logs = [];
        while let Some(injection) = a.inject(now, &[], &logs) {
            assert!(injection.is_none(), "no running member: nothing to inject into");
        }
        assert!(a.stats.of(AttackKind::Replay).missed > 100 && a.stats.injected() == a.stats.of(AttackKind::Replay).injected);
    }
}
