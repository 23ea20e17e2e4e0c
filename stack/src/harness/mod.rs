//! Drive one layer by hand and see exactly what it emits.
//!
//! [`LayerHarness`] wraps a single [`Layer`] with a context like the engine's.
//! Each call returns the complete list of events the layer emitted, in order,
//! so a test asserts a layer's whole output rather than a sample of it (the
//! style of openraft's engine tests). Timers are fired only by
//! [`LayerHarness::advance`], so time is entirely in the test's hands.

pub mod alloc;
pub mod bench;
pub mod net;
mod tag;

pub use tag::{Tag, TAG_BYTE};

use crate::context::{Context, Drops, Queued, Timers};
use crate::event::{Down, Up};
use crate::layer::{Layer, Stats};
use crate::rng::Rng;
use crate::storage::{MemStorage, Storage};
use crate::time::Instant;
use crate::view::{MemberId, View};
use std::collections::VecDeque;
use std::sync::Arc;

/// One event a layer emitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Passed to the layer below.
    Down(Down),
    /// Passed to the layer above.
    Up(Up),
}

/// Reproducible, per-member entropy for a layer under test.
fn harness_entropy(local: MemberId) -> [u8; 32] {
    let mut rng = Rng::new(crate::codec::fnv1a64(format!("{local:?}/entropy").as_bytes()));
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    out
}

/// A single layer in a test rig.
pub struct LayerHarness {
    layer: Box<dyn Layer>,
    name: &'static str,
    now: Instant,
    local: MemberId,
    view: Arc<View>,
    rng: Rng,
    queue: VecDeque<Queued>,
    timers: Timers,
    drops: Drops,
    backpressure: bool,
    max_payload: usize,
    init_output: Vec<Out>,
    storage: Arc<dyn Storage>,
    entropy: [u8; 32],
    refusal: Option<String>,
    app_behind: bool,
}

impl LayerHarness {
    /// Wraps `layer` at member `local` in `view`, at time zero, and runs its
    /// `init` (see [`LayerHarness::init_output`]).
    pub fn new(layer: impl Layer, local: MemberId, view: Arc<View>) -> Self {
        Self::boxed("LAYER", Box::new(layer), local, view, 65_000)
    }

    /// Like [`LayerHarness::new`] for a boxed layer, with its stats name and
    /// the payload limit its context reports.
    pub fn boxed(name: &'static str, layer: Box<dyn Layer>, local: MemberId, view: Arc<View>, max_payload: usize) -> Self {
        Self::with_storage(name, layer, local, view, max_payload, Arc::new(MemStorage::new()))
    }

    /// Like [`LayerHarness::boxed`], with the storage the layer's logs live
    /// in (a fresh [`MemStorage`] otherwise). Keep a clone of a
    /// [`MemStorage`] to crash it and restart a layer on the same disk.
    pub fn with_storage(name: &'static str, layer: Box<dyn Layer>, local: MemberId, view: Arc<View>, max_payload: usize, storage: Arc<dyn Storage>) -> Self {
        let mut h = LayerHarness {
            layer,
            name,
            now: Instant::ZERO,
            local,
            view,
            rng: Rng::new(0x5eed),
            queue: VecDeque::new(),
            timers: Timers::new(),
            drops: Drops::new(),
            backpressure: false,
            max_payload,
            init_output: Vec::new(),
            storage,
            entropy: harness_entropy(local),
            refusal: None,
            app_behind: false,
        };
        let mut init = Vec::new();
        h.call(|l, cx| l.init(cx), &mut init);
        h.init_output = init;
        h
    }

    /// Why the layer's `init` refused to run ([`Context::refuse`]), if it did.
    pub fn refusal(&self) -> Option<&str> {
        self.refusal.as_deref()
    }

    /// What `init` emitted.
    pub fn init_output(&self) -> &[Out] {
        &self.init_output
    }

    /// Hands the layer an event from above; returns everything it emitted.
    pub fn down(&mut self, ev: Down) -> Vec<Out> {
        let mut out = Vec::new();
        self.down_into(ev, &mut out);
        out
    }

    /// Like [`LayerHarness::down`], appending to `out` (no allocation once
    /// `out` has room: for benches).
    pub fn down_into(&mut self, ev: Down, out: &mut Vec<Out>) {
        if let Down::View(v) = &ev {
            self.view = v.clone();
        }
        self.call(|l, cx| l.down(cx, ev), out)
    }

    /// Hands the layer an event from below; returns everything it emitted.
    pub fn up(&mut self, ev: Up) -> Vec<Out> {
        let mut out = Vec::new();
        self.up_into(ev, &mut out);
        out
    }

    /// Like [`LayerHarness::up`], appending to `out`.
    pub fn up_into(&mut self, ev: Up, out: &mut Vec<Out>) {
        if let Up::View(v) = &ev {
            self.view = v.clone();
        }
        self.call(|l, cx| l.up(cx, ev), out)
    }

    /// Moves time to `to`, firing every timer due by then in deadline order;
    /// returns everything emitted.
    pub fn advance(&mut self, to: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        self.advance_into(to, &mut out);
        out
    }

    /// Like [`LayerHarness::advance`], appending to `out`.
    pub fn advance_into(&mut self, to: Instant, out: &mut Vec<Out>) {
        loop {
            let due = self.timers.iter().filter(|(_, d)| *d <= to).min_by_key(|(k, d)| (*d, *k)).copied();
            let Some((key, deadline)) = due else { break };
            self.now = self.now.max(deadline);
            self.timers.retain(|(k, _)| *k != key);
            self.call(|l, cx| l.timeout(cx, key), out);
        }
        self.now = self.now.max(to);
    }

    /// The current time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The earliest armed deadline.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.iter().map(|(_, d)| *d).min()
    }

    /// Inputs the layer dropped, by reason.
    pub fn drops(&self) -> &[(&'static str, u64)] {
        &self.drops
    }

    /// How many inputs were dropped for `reason`.
    pub fn dropped(&self, reason: &str) -> u64 {
        self.drops.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
    }

    /// The layer's counters.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        self.layer.stats(&mut s);
        s
    }

    /// Sets what [`Context::app_behind`] says from now on.
    pub fn set_app_behind(&mut self, behind: bool) {
        self.app_behind = behind;
    }

    /// Whether the layer holds its send window closed.
    pub fn backpressure(&self) -> bool {
        self.backpressure
    }

    /// The view the layer's context reports.
    pub fn view(&self) -> &Arc<View> {
        &self.view
    }

    fn call(&mut self, f: impl FnOnce(&mut dyn Layer, &mut Context<'_>), out: &mut Vec<Out>) {
        let mut cx = Context {
            position: 1,
            name: self.name,
            now: self.now,
            local: self.local,
            view: &self.view,
            rng: &mut self.rng,
            queue: &mut self.queue,
            timers: &mut self.timers,
            drops: &mut self.drops,
            backpressure: &mut self.backpressure,
            max_payload: self.max_payload,
            storage: self.storage.as_ref(),
            entropy: &self.entropy,
            group: "harness",
            refusal: &mut self.refusal,
            app_behind: self.app_behind,
        };
        f(self.layer.as_mut(), &mut cx);
        out.extend(self.queue.drain(..).map(|q| match q {
            Queued::Down(_, ev) => Out::Down(ev),
            Queued::Up(_, ev) => Out::Up(ev),
        }));
    }
}
