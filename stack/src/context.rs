//! The context a layer handler runs in: everything it may know of, and do to,
//! the outside world.

use crate::event::{Down, Up};
use crate::layer::TimerKey;
use crate::rng::Rng;
use crate::storage::{LogFile, Storage};
use crate::time::Instant;
use crate::view::{MemberId, View};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::Arc;

/// An event queued by a handler, with the position it goes to. Positions: 0 is
/// below the bottom layer (the network), layers are 1..=n bottom first, n+1 is
/// above the top layer (the application).
#[derive(Debug)]
pub(crate) enum Queued {
    Down(usize, Down),
    Up(usize, Up),
}

// Every event moves through the queue at every layer: up to 128 bytes the
// compiler moves it inline, beyond that each move is a call to `memcpy`
// (18% of a threaded in-process run's samples when queued events were 144
// bytes, 4% since).
const _: () = assert!(std::mem::size_of::<Queued>() <= 128, "keep queued events within 128 bytes");

/// One layer's armed timers: at most one deadline per key.
pub(crate) type Timers = SmallVec<[(TimerKey, Instant); 4]>;

/// One layer's dropped-input counters, by reason.
pub(crate) type Drops = SmallVec<[(&'static str, u64); 4]>;

pub(crate) fn count_drop(drops: &mut Drops, reason: &'static str) {
    match drops.iter_mut().find(|(r, _)| *r == reason) {
        Some(slot) => slot.1 += 1,
        None => drops.push((reason, 1)),
    }
}

/// Handed to every [`Layer`](crate::Layer) handler. Emissions are queued and
/// dispatched after the handler returns (run to completion, FIFO between
/// adjacent layers), so a handler never re-enters another.
pub struct Context<'a> {
    pub(crate) position: usize,
    pub(crate) name: &'static str,
    pub(crate) now: Instant,
    pub(crate) local: MemberId,
    pub(crate) view: &'a Arc<View>,
    pub(crate) rng: &'a mut Rng,
    pub(crate) queue: &'a mut VecDeque<Queued>,
    pub(crate) timers: &'a mut Timers,
    pub(crate) drops: &'a mut Drops,
    pub(crate) backpressure: &'a mut bool,
    pub(crate) max_payload: usize,
    pub(crate) storage: &'a dyn Storage,
    pub(crate) entropy: &'a [u8; 32],
    pub(crate) group: &'a str,
    pub(crate) refusal: &'a mut Option<String>,
    pub(crate) app_behind: bool,
}

impl<'a> Context<'a> {
    /// Passes an event to the layer below (or the network).
    pub fn down(&mut self, ev: Down) {
        self.queue.push_back(Queued::Down(self.position - 1, ev));
    }

    /// Passes an event to the layer above (or the application).
    pub fn up(&mut self, ev: Up) {
        self.queue.push_back(Queued::Up(self.position + 1, ev));
    }

    /// The current (virtual) time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// This member.
    pub fn local(&self) -> MemberId {
        self.local
    }

    /// The last view this layer saw (the initial view until a view event
    /// reaches it).
    pub fn view(&self) -> &Arc<View> {
        self.view
    }

    /// This member's seeded random numbers.
    pub fn rng(&mut self) -> &mut Rng {
        self.rng
    }

    /// Arms timer `key` to fire at `deadline`, replacing an earlier deadline for the same key.
    pub fn set_timer(&mut self, key: TimerKey, deadline: Instant) {
        match self.timers.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = deadline,
            None => self.timers.push((key, deadline)),
        }
    }

    /// Disarms timer `key` (no-op if it is not armed).
    pub fn cancel_timer(&mut self, key: TimerKey) {
        self.timers.retain(|(k, _)| *k != key);
    }

    /// The deadline of timer `key`, if armed.
    pub fn timer(&self, key: TimerKey) -> Option<Instant> {
        self.timers.iter().find(|(k, _)| *k == key).map(|(_, d)| *d)
    }

    /// The most bytes a message passed down from this layer may hold (its
    /// headers included) for the datagram below to fit the transport. FRAG
    /// sizes fragments by it; layers above FRAG may ignore it.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Counts (and traces) an input this layer dropped because it was
    /// malformed, hostile or stale. Counters appear in the layer's stats
    /// under `dropped`.
    pub fn drop_malformed(&mut self, reason: &'static str) {
        tracing::debug!(layer = self.name, reason, "dropped input");
        count_drop(self.drops, reason);
    }

    /// Opens (`false`) or closes (`true`) this layer's send window. While any
    /// layer's window is closed, the stack refuses new casts and sends with
    /// [`Refused::Backpressure`](crate::Refused::Backpressure).
    pub fn set_backpressure(&mut self, on: bool) {
        *self.backpressure = on;
    }

    /// Opens the log file `name` in `dir` from the stack's [`Storage`]
    /// (files for real stacks, memory in tests and the simulator).
    pub fn open_log(&mut self, dir: &str, name: &str) -> std::io::Result<Box<dyn LogFile>> {
        self.storage.open(dir, name)
    }

    /// Called from [`Layer::init`](crate::Layer::init): the layer cannot
    /// run (its log cannot be opened...), and building the stack fails with
    /// `reason`. Ignored after init.
    pub fn refuse(&mut self, reason: impl Into<String>) {
        self.refusal.get_or_insert_with(|| reason.into());
    }

    /// 32 secret random bytes for this layer, to seed a cryptographic
    /// generator (keys, nonces, challenges) in [`Layer::init`](crate::Layer::init).
    /// Each layer of a stack gets different bytes. They come from the
    /// operating system under the runtime, and from the seed in the
    /// simulator and tests (see [`StackConfig::entropy`](crate::StackConfig::entropy)).
    /// [`Context::rng`] is for protocol choices, never for secrets.
    pub fn entropy(&self) -> [u8; 32] {
        let mut out = *self.entropy;
        for (b, p) in out.iter_mut().zip((self.position as u64).to_le_bytes()) {
            *b ^= p;
        }
        out
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        self.group
    }

    /// Whether the application is behind: it has not taken the events the
    /// stack delivered, so the runtime reads no more datagrams for this
    /// group until it does. Silence from other members then says nothing
    /// about them (their datagrams wait unread), so a failure detector must
    /// not count it. Always false in the simulator and the harnesses unless
    /// a test sets it.
    pub fn app_behind(&self) -> bool {
        self.app_behind
    }

    /// The stack-string name of this layer.
    pub fn layer_name(&self) -> &'static str {
        self.name
    }
}
