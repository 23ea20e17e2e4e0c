//! Micro-benchmarks of one layer, as its users would run it in a group.
//!
//! A [`LayerBench`] builds one copy of a layer per member of a view of the
//! chosen size and runs a workload through them: the application above
//! casts messages of the chosen size, and a model network below carries
//! every cast to every member (the sender included, as the loopback does) and
//! every send to its destination, FIFO per link. Casts go out in bursts
//! (`burst` messages in flight before the network delivers), so each member
//! sees runs of downward and upward events, and the virtual clock advances by
//! `tick` between bursts so that timers (batching, statuses) fire.
//!
//! The run is recorded at one member, the observer: every event it was
//! handed, in order. A replay ([`LayerBench::replay`], or
//! [`LayerBench::prepare`] then [`Replay::run`]) hands the same events to a
//! fresh copy of the layer and measures the downward and the upward ones
//! separately; since layers are deterministic the replay repeats the
//! recorded run exactly. The recording also counts header bytes: what the
//! layer adds to each application cast it passes down, averaged over every
//! member's casts (a layer that passes the payload on in a new message, as
//! ENCRYPT does, is recognised by emitting one cast for the application's,
//! and charged what the message grew by), and the layer's own control
//! messages. Every cast carries the same payload, one shared [`Bytes`]: a
//! layer that keeps a clone of a payload pays no per-cast promotion of a
//! `Vec`-backed buffer here (see `bytes`), as it may with a real
//! application's payloads.
//!
//! ## Layers that need a formed group
//! A membership layer (VSYNC) starts outside any view and forms one by
//! exchanging messages. [`Workload::settle`] gives every member that much
//! virtual time, with the model network running, before the first cast; the
//! observer's events of that phase are recorded too and handed to the fresh
//! copy *untimed* before every replay, so the timed part starts from the
//! formed group, and [`Recording::views`] says whether the view changed
//! while casts were measured (a steady state has none). A layer that runs
//! above membership and waits for its first view (SAFE) gets it from below
//! with [`Workload::view_from_below`], and settles too. The application
//! above answers a state request ([`Up::StateRequest`]) with an empty state
//! at once.
//!
//! ## Measuring
//! [`Replay::run`] times with the wall clock; [`Replay::run_metered`] reads
//! any counter that only grows instead (a thread's CPU time, a counting
//! allocator's total), before and after each run of events of one
//! direction. [`LayerBench::baseline`] benchmarks a layer that forwards
//! everything: the harness's own cost (moving events, the meter itself),
//! which [`PerMessage::minus`] subtracts from a layer's figures.
//!
//! ```
//! use strata_stack::harness::bench::{LayerBench, Senders, Workload};
//! let bench = LayerBench::baseline();
//! let rec = bench.record(&Workload::new(4, 64, Senders::All, 1000));
//! assert!(rec.complete);
//! let cost = bench.measure(&rec, 3);
//! println!("{:.0} ns down, {:.0} ns up per message", cost.down, cost.up);
//! ```
//!
//! The model network is the layer's neighbourhood in a real stack: for a
//! layer that sits above a reliable FIFO layer (CAUSAL above NAK) or above
//! membership (TOTAL above VSYNC, with the initial view as the only one) it
//! is exactly what the layer relies on. It loses nothing, so a layer that
//! needs loss to do its work is benchmarked on its loss-free path here.

use super::{LayerHarness, Out};
use crate::event::{Down, Up};
use crate::layer::{Layer, Stats};
use crate::msg::Msg;
use crate::time::Instant;
use crate::view::{MemberId, View, ViewId};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Who casts in a workload.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Senders {
    /// The observer alone.
    Observer,
    /// Every member in turn, the observer among them.
    All,
    /// Every member in turn except the observer (it only receives).
    Others,
}

/// What a [`LayerBench`] runs.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Members of the view (at least 2).
    pub members: usize,
    /// Rank, in the initial view, of the member whose events are recorded
    /// (rank 0 is the coordinator: a sequencer, for instance).
    pub observer: usize,
    /// Payload bytes per cast.
    pub size: usize,
    /// Who casts.
    pub senders: Senders,
    /// Casts in all.
    pub casts: usize,
    /// Casts in flight before the network delivers them.
    pub burst: usize,
    /// Virtual time between bursts.
    pub tick: Duration,
    /// Virtual time every member runs, the network delivering what they
    /// send, before the first cast; replayed untimed (see the module doc).
    /// Zero for layers that work in the initial view at once.
    pub settle: Duration,
    /// Hand every member [`Up::View`] before anything else, as a membership
    /// layer below does when it installs its first view (the same members,
    /// counter 1, made by rank 0): for a layer that runs above one and
    /// waits for it (SAFE).
    pub view_from_below: bool,
}

impl Workload {
    /// `casts` casts of `size` bytes in a view of `members`, observed at rank 1,
    /// in bursts of 64 with 100 µs between bursts, with no settling phase.
    pub fn new(members: usize, size: usize, senders: Senders, casts: usize) -> Self {
        Workload {
            members,
            observer: 1.min(members.saturating_sub(1)),
            size,
            senders,
            casts,
            burst: 64,
            tick: Duration::from_micros(100),
            settle: Duration::ZERO,
            view_from_below: false,
        }
    }

    /// The same workload after `settle` of virtual time for the group to
    /// form (VSYNC needs its `join_timeout_ms` and a round: 2 s is plenty
    /// with its defaults).
    pub fn settled(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The same workload with the initial view passed up from below at the
    /// start ([`Workload::view_from_below`]).
    pub fn with_view_from_below(mut self) -> Self {
        self.view_from_below = true;
        self
    }
}

/// Builds a fresh copy of the layer under test.
pub type MakeLayer = dyn Fn() -> Box<dyn Layer>;

/// One event handed to the observer.
#[derive(Clone, Debug)]
enum Step {
    Down(Down),
    Up(Up),
    Advance(Instant),
}

/// A layer and how to build fresh copies of it.
pub struct LayerBench {
    name: &'static str,
    make: Box<MakeLayer>,
}

/// A workload as the observer saw it, and what it cost on the wire. The
/// counts cover the measured part only (after [`Workload::settle`]).
#[derive(Clone, Debug)]
pub struct Recording {
    observer: MemberId,
    view: Arc<View>,
    steps: Vec<Step>,
    /// Steps of the settling phase, at the front of `steps`: replayed untimed.
    settle_steps: usize,
    /// Application casts the observer passed down.
    pub casts_down: u64,
    /// Application casts the observer delivered upwards (as [`Up::Cast`],
    /// or [`Up::Durable`] from SAFE).
    pub delivered: u64,
    /// Application casts passed down by the layer at every member.
    pub data_sent: u64,
    /// Header bytes those carried, in all.
    pub header_bytes: u64,
    /// Messages of the layer's own (not carrying an application payload)
    /// passed down at every member: announcements, tokens, acknowledgements.
    pub control_sent: u64,
    /// Views ([`Up::View`]) the observer passed up while casts were
    /// measured: zero in a steady state.
    pub views: u64,
    /// Whether every member delivered every cast.
    pub complete: bool,
    /// The observer's layer counters at the end of the recording.
    pub stats: Stats,
    /// Inputs the observer's layer dropped, by reason (a correct layer
    /// on the model network drops none).
    pub drops: Vec<(&'static str, u64)>,
}

impl Recording {
    /// Average header bytes per application cast.
    pub fn header_bytes_per_cast(&self) -> f64 {
        self.header_bytes as f64 / self.data_sent.max(1) as f64
    }

    /// Layer control messages per application cast.
    pub fn control_per_cast(&self) -> f64 {
        self.control_sent as f64 / self.data_sent.max(1) as f64
    }

    /// `m`, a replay's readings, per application message: downward per
    /// cast the observer passed down, upward (every upward event, control
    /// messages included) per cast it delivered.
    pub fn per_message(&self, m: Metered) -> PerMessage {
        PerMessage { down: m.down as f64 / self.casts_down.max(1) as f64, up: m.up as f64 / self.delivered.max(1) as f64 }
    }
}

/// Time a replay spent in each direction.
#[derive(Copy, Clone, Debug, Default)]
pub struct Timing {
    /// Handling downward events (the application's casts).
    pub down: Duration,
    /// Handling upward events (everything the network delivered).
    pub up: Duration,
    /// The whole timed replay: both directions, the timers the clock
    /// advances fired, and the harness's bookkeeping in between. A bench
    /// that reads its thread's CPU time around [`Replay::run`] can scale
    /// `down` and `up` by CPU time over `whole` to discount preemption.
    pub whole: Duration,
}

/// What a meter read over a replay (see [`Replay::run_metered`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Metered {
    /// Over the runs of downward events.
    pub down: u64,
    /// Over the runs of upward events.
    pub up: u64,
    /// From the first event handed over to the last, clock advances included.
    pub whole: u64,
}

/// A cost per application message, in the unit of whatever was measured
/// (nanoseconds from [`LayerBench::measure`]).
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct PerMessage {
    /// Per cast the observer passed down.
    pub down: f64,
    /// Per cast the observer delivered.
    pub up: f64,
}

impl PerMessage {
    /// This cost less `baseline` (the harness's own, from
    /// [`LayerBench::baseline`] on the same workload). May be slightly
    /// negative for a layer cheaper than the noise.
    pub fn minus(self, baseline: PerMessage) -> PerMessage {
        PerMessage { down: self.down - baseline.down, up: self.up - baseline.up }
    }
}

/// Forwards every event unchanged: the layer of [`LayerBench::baseline`].
#[derive(Copy, Clone, Debug, Default)]
pub struct PassThrough;

impl Layer for PassThrough {}

/// A fresh copy of a layer with a recording's events ready to hand over
/// (from [`LayerBench::prepare`]). Hands them over once.
pub struct Replay {
    harness: LayerHarness,
    steps: std::vec::IntoIter<Step>,
    out: Vec<Out>,
}

impl Replay {
    /// Hands the events over, timing downward and upward events apart with
    /// the wall clock (each run of consecutive events of one direction is
    /// timed as a whole, so the clock's own cost is spread over a run).
    pub fn run(&mut self) -> Timing {
        let origin = std::time::Instant::now();
        let m = self.run_metered(|| origin.elapsed().as_nanos() as u64);
        Timing { down: Duration::from_nanos(m.down), up: Duration::from_nanos(m.up), whole: Duration::from_nanos(m.whole) }
    }

    /// Hands the events over, reading `meter` (any counter that only grows)
    /// before and after each run of consecutive events of one direction and
    /// once at each end; returns the differences summed per direction.
    pub fn run_metered(&mut self, mut meter: impl FnMut() -> u64) -> Metered {
        let mut m = Metered::default();
        let mut steps = self.steps.by_ref().peekable();
        let (h, out) = (&mut self.harness, &mut self.out);
        let first = meter();
        while let Some(step) = steps.peek() {
            match step {
                Step::Advance(_) => {
                    if let Some(Step::Advance(at)) = steps.next() {
                        h.advance_into(at, out);
                        out.clear();
                    }
                }
                Step::Down(_) => {
                    let start = meter();
                    while let Some(Step::Down(ev)) = steps.next_if(|s| matches!(s, Step::Down(_))) {
                        h.down_into(ev, out);
                        out.clear();
                    }
                    m.down += meter().saturating_sub(start);
                }
                Step::Up(_) => {
                    let start = meter();
                    while let Some(Step::Up(ev)) = steps.next_if(|s| matches!(s, Step::Up(_))) {
                        h.up_into(ev, out);
                        out.clear();
                    }
                    m.up += meter().saturating_sub(start);
                }
            }
        }
        m.whole = meter().saturating_sub(first);
        m
    }

    /// The replayed layer's counters.
    pub fn stats(&self) -> Stats {
        self.harness.stats()
    }
}

impl LayerBench {
    /// A bench of the layer `make` builds, named `name` in its stats.
    pub fn new(name: &'static str, make: impl Fn() -> Box<dyn Layer> + 'static) -> Self {
        LayerBench { name, make: Box::new(make) }
    }

    /// A bench of [`PassThrough`], named `BASELINE`: what the harness costs
    /// per message, to subtract from a layer's figures on the same workload.
    pub fn baseline() -> Self {
        LayerBench::new("BASELINE", || Box::new(PassThrough))
    }

    /// The name the layer runs under.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn harness(&self, local: MemberId, view: &Arc<View>) -> LayerHarness {
        LayerHarness::boxed(self.name, (self.make)(), local, view.clone(), 65_000)
    }

    /// Runs `w` and records it at the observer. Panics on a workload that
    /// names an observer outside the view (a bug in the bench itself).
    pub fn record(&self, w: &Workload) -> Recording {
        assert!(w.members >= 2 && w.observer < w.members && w.burst > 0, "a workload needs two members and an observer among them");
        let ids: Vec<MemberId> = (0..w.members as u16).map(MemberId::sim).collect();
        let view = View::initial(ids.clone()).expect("distinct members");
        let members: Vec<LayerHarness> = ids.iter().map(|&m| self.harness(m, &view)).collect();
        let rec = Recording {
            observer: ids[w.observer],
            view: view.clone(),
            steps: Vec::new(),
            settle_steps: 0,
            casts_down: 0,
            delivered: 0,
            data_sent: 0,
            header_bytes: 0,
            control_sent: 0,
            views: 0,
            complete: false,
            stats: Stats::default(),
            drops: Vec::new(),
        };
        let mut model = Model {
            w,
            ids,
            members,
            payload: Bytes::from(vec![0x5a; w.size]),
            wire: VecDeque::new(),
            app: VecDeque::new(),
            out: Vec::new(),
            delivered: vec![0; w.members],
            rec,
            now: Instant::ZERO,
        };

        // The group forms; what it costs is not measured.
        for r in 0..w.members {
            model.out.extend(model.members[r].init_output().iter().cloned());
            model.route(r, false);
        }
        if w.view_from_below {
            let first = View::new(ViewId { counter: 1, creator: model.ids[0] }, model.ids.clone()).expect("distinct members");
            for r in 0..w.members {
                let ev = Up::View(first.clone());
                if r == w.observer {
                    model.rec.steps.push(Step::Up(ev.clone()));
                }
                model.members[r].up_into(ev, &mut model.out);
                model.route(r, false);
            }
        }
        while model.now < Instant::ZERO + w.settle {
            model.deliver();
            model.tick();
        }
        model.deliver();
        let rec = &mut model.rec;
        rec.settle_steps = rec.steps.len();
        (rec.data_sent, rec.header_bytes, rec.control_sent, rec.views) = (0, 0, 0, 0);
        model.delivered.iter_mut().for_each(|d| *d = 0);

        let senders: Vec<usize> = match w.senders {
            Senders::Observer => vec![w.observer],
            Senders::All => (0..w.members).collect(),
            Senders::Others => (0..w.members).filter(|&r| r != w.observer).collect(),
        };
        let mut cast = 0usize;
        let mut quiet_ticks = 0;
        while quiet_ticks < 50 {
            for _ in 0..w.burst {
                if cast == w.casts {
                    break;
                }
                let r = senders[cast % senders.len()];
                model.app_cast(r);
                cast += 1;
            }
            let busy = model.deliver();
            model.tick();
            quiet_ticks = if cast == w.casts && !busy && model.wire.is_empty() { quiet_ticks + 1 } else { 0 };
        }
        let mut rec = model.rec;
        rec.delivered = model.delivered[w.observer];
        rec.complete = model.delivered.iter().all(|&d| d == w.casts as u64);
        rec.stats = model.members[w.observer].stats();
        rec.drops = model.members[w.observer].drops().to_vec();
        rec
    }

    /// A fresh copy of the layer at the observer, handed the settling
    /// phase's events already (untimed), with the measured events cloned and
    /// ready: everything before [`Replay::run`] starts its clock.
    pub fn prepare(&self, rec: &Recording) -> Replay {
        let mut harness = self.harness(rec.observer, &rec.view);
        let mut out = Vec::with_capacity(256);
        for step in &rec.steps[..rec.settle_steps] {
            match step.clone() {
                Step::Down(ev) => harness.down_into(ev, &mut out),
                Step::Up(ev) => harness.up_into(ev, &mut out),
                Step::Advance(at) => harness.advance_into(at, &mut out),
            }
            out.clear();
        }
        // Cloned now, before any clock starts: the replay consumes its events.
        let steps: Vec<Step> = rec.steps[rec.settle_steps..].to_vec();
        Replay { harness, steps: steps.into_iter(), out }
    }

    /// Hands `rec`'s events to a fresh copy of the layer, timing downward and
    /// upward events apart ([`LayerBench::prepare`], then [`Replay::run`]).
    pub fn replay(&self, rec: &Recording) -> Timing {
        self.prepare(rec).run()
    }

    /// Nanoseconds per message in each direction: the median over
    /// `replays` replays of `rec` (wall clock; at least one replay).
    pub fn measure(&self, rec: &Recording, replays: usize) -> PerMessage {
        let (mut down, mut up): (Vec<f64>, Vec<f64>) = (0..replays.max(1))
            .map(|_| {
                let t = self.replay(rec);
                let m = Metered { down: t.down.as_nanos() as u64, up: t.up.as_nanos() as u64, whole: t.whole.as_nanos() as u64 };
                let p = rec.per_message(m);
                (p.down, p.up)
            })
            .unzip();
        PerMessage { down: median(&mut down), up: median(&mut up) }
    }
}

/// The group a recording runs: every member's copy of the layer, the
/// model network between them, and the application above them.
struct Model<'w> {
    w: &'w Workload,
    ids: Vec<MemberId>,
    members: Vec<LayerHarness>,
    payload: Bytes,
    /// In flight: (destination, source, message, cast?), FIFO.
    wire: VecDeque<(usize, usize, Msg, bool)>,
    /// The application's answers, (member, event), to hand down in order.
    app: VecDeque<(usize, Down)>,
    out: Vec<Out>,
    /// Application casts delivered, per member.
    delivered: Vec<u64>,
    rec: Recording,
    now: Instant,
}

impl Model<'_> {
    /// Member `r`'s application casts the payload.
    fn app_cast(&mut self, r: usize) {
        let ev = Down::Cast(Msg::new(self.payload.clone()));
        if r == self.w.observer {
            self.rec.steps.push(Step::Down(ev.clone()));
            self.rec.casts_down += 1;
        }
        self.members[r].down_into(ev, &mut self.out);
        self.route(r, true);
    }

    /// Hands member `r` what its application answered, in order.
    fn answer(&mut self) {
        while let Some((r, ev)) = self.app.pop_front() {
            if r == self.w.observer {
                self.rec.steps.push(Step::Down(ev.clone()));
            }
            self.members[r].down_into(ev, &mut self.out);
            self.route(r, false);
        }
    }

    /// Routes what member `from` emitted (`app_cast`: while handling an
    /// application cast): downward messages onto the wire, application
    /// casts counted as delivered, state requests answered (with an empty
    /// state), views at the observer counted.
    fn route(&mut self, from: usize, app_cast: bool) {
        let is_data = |m: &Msg| m.body().as_ptr() == self.payload.as_ptr() && m.body().len() == self.payload.len();
        // A layer that transforms the payload (ENCRYPT) passes a cast on
        // as a new message: the one cast it emits for the application's.
        let mut casts = self.out.iter().filter(|o| matches!(o, Out::Down(Down::Cast(_))));
        let transformed = app_cast && casts.clone().count() == 1 && !casts.any(|o| matches!(o, Out::Down(Down::Cast(m)) if is_data(m)));
        let size = self.w.size;
        // Delivered copies crossed the model wire (copied): known by content.
        let is_payload = |m: &Msg| m.head_len() == 0 && m.body().len() == size && m.body().iter().all(|b| *b == 0x5a);
        for o in self.out.drain(..) {
            match o {
                Out::Down(Down::Cast(msg)) => {
                    if is_data(&msg) {
                        self.rec.data_sent += 1;
                        self.rec.header_bytes += msg.head_len() as u64;
                    } else if transformed {
                        self.rec.data_sent += 1;
                        self.rec.header_bytes += msg.len().saturating_sub(size) as u64;
                    } else {
                        self.rec.control_sent += 1;
                    }
                    let bytes = Msg::new(msg.to_bytes());
                    for to in 0..self.w.members {
                        self.wire.push_back((to, from, bytes.clone(), true));
                    }
                }
                Out::Down(Down::Send { to, msg }) => {
                    self.rec.control_sent += 1;
                    if let Some(to) = self.ids.iter().position(|m| *m == to) {
                        self.wire.push_back((to, from, Msg::new(msg.to_bytes()), false));
                    }
                }
                Out::Up(Up::Cast { msg, .. } | Up::Durable { msg, .. }) if is_payload(&msg) => self.delivered[from] += 1,
                Out::Up(Up::View(_)) if from == self.w.observer => self.rec.views += 1,
                Out::Up(Up::StateRequest { token, .. }) => self.app.push_back((from, Down::StateDone { token })),
                _ => {}
            }
        }
    }

    /// Hands every message on the wire to its destination, recording the
    /// observer's, until the wire is empty; returns whether there were any.
    fn deliver(&mut self) -> bool {
        let busy = !self.wire.is_empty();
        self.answer();
        while let Some((to, from, msg, is_cast)) = self.wire.pop_front() {
            let ev = if is_cast { Up::Cast { from: self.ids[from], msg } } else { Up::Send { from: self.ids[from], msg } };
            if to == self.w.observer {
                self.rec.steps.push(Step::Up(ev.clone()));
            }
            self.members[to].up_into(ev, &mut self.out);
            self.route(to, false);
            self.answer();
        }
        busy
    }

    /// Advances every member's clock by one tick.
    fn tick(&mut self) {
        self.now += self.w.tick;
        self.rec.steps.push(Step::Advance(self.now));
        for r in 0..self.w.members {
            self.members[r].advance_into(self.now, &mut self.out);
            self.route(r, false);
        }
        self.answer();
    }
}

/// The median of `v` (not empty).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Context;
    use crate::TimerKey;

    /// Pushes a 3-byte header down and pops it up.
    struct Hdr;
    impl Layer for Hdr {
        fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
            match ev {
                Down::Cast(mut m) => {
                    m.push(&[1, 2, 3]);
                    cx.down(Down::Cast(m));
                }
                other => cx.down(other),
            }
        }
        fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
            match ev {
                Up::Cast { from, mut msg } => {
                    if msg.advance(3).is_ok() {
                        cx.up(Up::Cast { from, msg });
                    }
                }
                other => cx.up(other),
            }
        }
    }

    #[test]
    fn a_recording_counts_headers_and_deliveries_and_replays() {
        let bench = LayerBench::new("HDR", || Box::new(Hdr));
        let rec = bench.record(&Workload::new(4, 64, Senders::All, 100));
        assert!(rec.complete);
        assert_eq!(rec.data_sent, 100);
        assert_eq!(rec.header_bytes_per_cast(), 3.0);
        assert_eq!(rec.control_sent, 0);
        assert_eq!(rec.casts_down, 25);
        assert_eq!(rec.delivered, 100);
        assert_eq!(rec.views, 0);
        let t = bench.replay(&rec);
        assert!(t.down > Duration::ZERO && t.up > Duration::ZERO);
        assert!(t.whole >= t.down + t.up);
    }

    /// Passes nothing until a 3-member "group" has exchanged one hello per
    /// member (sends, answered by nobody) after 1 ms; then forwards, and
    /// counts what it handled once formed.
    struct Forming {
        heard: usize,
        formed_at_events: Option<u64>,
        events: u64,
    }
    const HELLO: TimerKey = 0;
    impl Layer for Forming {
        fn init(&mut self, cx: &mut Context<'_>) {
            cx.set_timer(HELLO, cx.now() + Duration::from_millis(1));
        }
        fn timeout(&mut self, cx: &mut Context<'_>, _key: TimerKey) {
            for m in cx.view().members().to_vec() {
                if m != cx.local() {
                    cx.down(Down::Send { to: m, msg: Msg::empty() });
                }
            }
        }
        fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
            self.events += 1;
            match ev {
                Up::Send { .. } => {
                    self.heard += 1;
                    if self.heard == cx.view().len() - 1 {
                        self.formed_at_events = Some(self.events);
                        let view = cx.view().clone();
                        cx.up(Up::View(view));
                    }
                }
                other => cx.up(other),
            }
        }
        fn stats(&self, out: &mut Stats) {
            out.add("heard", self.heard as u64).add("events", self.events);
        }
    }

    #[test]
    fn the_settling_phase_is_replayed_untimed_and_not_counted() {
        let bench = LayerBench::new("FORMING", || Box::new(Forming { heard: 0, formed_at_events: None, events: 0 }));
        let rec = bench.record(&Workload::new(3, 16, Senders::All, 30).settled(Duration::from_millis(5)));
        assert!(rec.complete);
        assert_eq!(rec.views, 0, "the view formed while settling");
        assert_eq!(rec.control_sent, 0, "hellos went out while settling: not counted");
        assert_eq!(rec.stats.get("heard"), Some(2));
        let mut replay = bench.prepare(&rec);
        assert_eq!(replay.stats().get("heard"), Some(2), "the settling phase was handed over before the run");
        let before = replay.stats().get("events").unwrap();
        // A meter that counts its own readings: two per run of events, plus the two ends.
        let mut readings = 0u64;
        let m = replay.run_metered(|| {
            readings += 1;
            readings
        });
        assert_eq!(replay.stats().get("events"), Some(before + 30), "the measured part is the 30 casts coming up");
        assert!(m.down > 0 && m.up > 0 && m.whole > m.down + m.up);
    }

    #[test]
    fn the_baseline_measures_and_subtracts() {
        let base = LayerBench::baseline();
        assert_eq!(base.name(), "BASELINE");
        let rec = base.record(&Workload::new(2, 8, Senders::All, 200));
        assert!(rec.complete);
        assert_eq!(rec.header_bytes, 0);
        let cost = base.measure(&rec, 3);
        assert!(cost.down > 0.0 && cost.up > 0.0);
        let net = cost.minus(cost);
        assert_eq!((net.down, net.up), (0.0, 0.0));
        assert_eq!(rec.per_message(Metered { down: 100, up: 400, whole: 0 }), PerMessage { down: 1.0, up: 2.0 });
    }
}
