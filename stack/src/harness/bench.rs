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
//! handed, in order. [`Recording::replay`] hands the same events to a fresh
//! copy of the layer and times the downward and the upward ones separately;
//! since layers are deterministic the replay repeats the recorded run
//! exactly. The recording also counts header bytes: what the layer adds to
//! each application cast it passes down, averaged over every member's casts.
//!
//! The model network is the layer's neighbourhood in a real stack: for a
//! layer that sits above a reliable FIFO layer (CAUSAL above NAK) or above
//! membership (TOTAL above VSYNC) it is exactly what the layer relies on. A
//! layer that needs loss, or a membership protocol below, is benchmarked
//! whole-stack instead.

use super::{LayerHarness, Out};
use crate::event::{Down, Up};
use crate::layer::Layer;
use crate::msg::Msg;
use crate::time::Instant;
use crate::view::{MemberId, View};
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
    /// Rank of the member whose events are recorded (rank 0 is the
    /// coordinator: a sequencer, for instance).
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
}

impl Workload {
    /// `casts` casts of `size` bytes in a view of `members`, observed at rank 1,
    /// in bursts of 64 with 100 µs between bursts.
    pub fn new(members: usize, size: usize, senders: Senders, casts: usize) -> Self {
        Workload { members, observer: 1.min(members - 1), size, senders, casts, burst: 64, tick: Duration::from_micros(100) }
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

/// A workload as the observer saw it, and what it cost on the wire.
#[derive(Clone, Debug)]
pub struct Recording {
    observer: MemberId,
    view: Arc<View>,
    steps: Vec<Step>,
    /// Application casts the observer passed down.
    pub casts_down: u64,
    /// Application casts the observer delivered upwards.
    pub delivered: u64,
    /// Application casts passed down by the layer at every member.
    pub data_sent: u64,
    /// Header bytes those carried, in all.
    pub header_bytes: u64,
    /// Messages of the layer's own (not carrying an application payload)
    /// passed down at every member: announcements, tokens, acknowledgements.
    pub control_sent: u64,
    /// Whether every member delivered every cast.
    pub complete: bool,
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
}

/// Time a replay spent in each direction.
#[derive(Copy, Clone, Debug, Default)]
pub struct Timing {
    /// Handling downward events (the application's casts).
    pub down: Duration,
    /// Handling upward events (everything the network delivered).
    pub up: Duration,
}

impl LayerBench {
    /// A bench of the layer `make` builds, named `name` in its stats.
    pub fn new(name: &'static str, make: impl Fn() -> Box<dyn Layer> + 'static) -> Self {
        LayerBench { name, make: Box::new(make) }
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
        let mut members: Vec<LayerHarness> = ids.iter().map(|&m| self.harness(m, &view)).collect();
        let payload = Bytes::from(vec![0x5a; w.size]);
        let is_data = |m: &Msg| m.body().as_ptr() == payload.as_ptr() && m.body().len() == payload.len();
        // Delivered copies crossed the model wire (copied): known by content.
        let is_payload = |m: &Msg| m.head_len() == 0 && m.body().len() == w.size && m.body().iter().all(|b| *b == 0x5a);

        let mut rec = Recording {
            observer: ids[w.observer],
            view: view.clone(),
            steps: Vec::new(),
            casts_down: 0,
            delivered: 0,
            data_sent: 0,
            header_bytes: 0,
            control_sent: 0,
            complete: false,
        };
        let mut delivered = vec![0u64; w.members];
        // In flight: (destination, source, message, cast?).
        let mut wire: VecDeque<(usize, usize, Msg, bool)> = VecDeque::new();
        let mut out = Vec::new();
        let mut now = Instant::ZERO;
        let senders: Vec<usize> = match w.senders {
            Senders::Observer => vec![w.observer],
            Senders::All => (0..w.members).collect(),
            Senders::Others => (0..w.members).filter(|&r| r != w.observer).collect(),
        };

        // Routes what member `from` emitted: downward messages onto the wire,
        // upward application casts counted as delivered.
        let route = |from: usize, out: &mut Vec<Out>, wire: &mut VecDeque<(usize, usize, Msg, bool)>, rec: &mut Recording, delivered: &mut [u64]| {
            for o in out.drain(..) {
                match o {
                    Out::Down(Down::Cast(msg)) => {
                        if is_data(&msg) {
                            rec.data_sent += 1;
                            rec.header_bytes += msg.head_len() as u64;
                        } else {
                            rec.control_sent += 1;
                        }
                        let bytes = Msg::new(msg.to_bytes());
                        for to in 0..w.members {
                            wire.push_back((to, from, bytes.clone(), true));
                        }
                    }
                    Out::Down(Down::Send { to, msg }) => {
                        rec.control_sent += 1;
                        if let Some(to) = ids.iter().position(|m| *m == to) {
                            wire.push_back((to, from, Msg::new(msg.to_bytes()), false));
                        }
                    }
                    Out::Up(Up::Cast { msg, .. }) if is_payload(&msg) => delivered[from] += 1,
                    _ => {}
                }
            }
        };

        let mut cast = 0usize;
        let mut quiet_ticks = 0;
        while quiet_ticks < 50 {
            for _ in 0..w.burst {
                if cast == w.casts {
                    break;
                }
                let r = senders[cast % senders.len()];
                let ev = Down::Cast(Msg::new(payload.clone()));
                if r == w.observer {
                    rec.steps.push(Step::Down(ev.clone()));
                    rec.casts_down += 1;
                }
                members[r].down_into(ev, &mut out);
                route(r, &mut out, &mut wire, &mut rec, &mut delivered);
                cast += 1;
            }
            let busy = !wire.is_empty();
            while let Some((to, from, msg, is_cast)) = wire.pop_front() {
                let ev = if is_cast { Up::Cast { from: ids[from], msg } } else { Up::Send { from: ids[from], msg } };
                if to == w.observer {
                    rec.steps.push(Step::Up(ev.clone()));
                }
                members[to].up_into(ev, &mut out);
                route(to, &mut out, &mut wire, &mut rec, &mut delivered);
            }
            now += w.tick;
            rec.steps.push(Step::Advance(now));
            for (r, m) in members.iter_mut().enumerate() {
                m.advance_into(now, &mut out);
                route(r, &mut out, &mut wire, &mut rec, &mut delivered);
            }
            quiet_ticks = if cast == w.casts && !busy && wire.is_empty() { quiet_ticks + 1 } else { 0 };
        }
        rec.delivered = delivered[w.observer];
        rec.complete = delivered.iter().all(|&d| d == w.casts as u64);
        rec
    }

    /// Hands `rec`'s events to a fresh copy of the layer, timing downward and
    /// upward events apart (each run of consecutive events of one direction
    /// is timed as a whole, so the clock's own cost is spread over a burst).
    pub fn replay(&self, rec: &Recording) -> Timing {
        let mut h = self.harness(rec.observer, &rec.view);
        // Cloned before the clock starts: the replay consumes its events.
        let mut steps = rec.steps.clone().into_iter().peekable();
        let mut out = Vec::with_capacity(256);
        let mut t = Timing::default();
        while let Some(first) = steps.peek() {
            match first {
                Step::Advance(_) => {
                    if let Some(Step::Advance(at)) = steps.next() {
                        h.advance_into(at, &mut out);
                        out.clear();
                    }
                }
                Step::Down(_) => {
                    let start = std::time::Instant::now();
                    while let Some(Step::Down(ev)) = steps.next_if(|s| matches!(s, Step::Down(_))) {
                        h.down_into(ev, &mut out);
                        out.clear();
                    }
                    t.down += start.elapsed();
                }
                Step::Up(_) => {
                    let start = std::time::Instant::now();
                    while let Some(Step::Up(ev)) = steps.next_if(|s| matches!(s, Step::Up(_))) {
                        h.up_into(ev, &mut out);
                        out.clear();
                    }
                    t.up += start.elapsed();
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Context;

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
        let t = bench.replay(&rec);
        assert!(t.down > Duration::ZERO && t.up > Duration::ZERO);
    }
}
