//! Whole stacks on one lossless, zero-latency network with a virtual clock.
//!
//! [`LoopNet`] moves every datagram a stack transmits to the stacks it is
//! addressed to at once, and fires timers in deadline order, so a test or a
//! bench drives several real [`Stack`]s without sockets, threads or a
//! simulator. It plays a simple application too: it answers state requests
//! with an empty state and (by default) calls [`Stack::done`] for every
//! durable delivery. Loss, delay and partitions are the simulator's
//! business (`strata_transport::sim`).

use crate::engine::{Dest, Refused, Stack};
use crate::event::{AppEvent, Delivery};
use crate::time::Instant;
use std::net::SocketAddr;
use std::time::Duration;

/// Stacks on one perfect network; see the module docs.
#[derive(Debug)]
pub struct LoopNet {
    now: Instant,
    slots: Vec<Slot>,
    /// Call `done` for every durable delivery (default true).
    pub auto_done: bool,
    /// Keep every application event for [`LoopNet::events`] (default true;
    /// benches turn it off and read [`LoopNet::delivered`]).
    pub record: bool,
    /// Keep a copy of every datagram sent, in [`LoopNet::wire`] (default
    /// false): what an eavesdropper sees, for tests that replay or tamper.
    pub capture: bool,
    wire: Vec<Captured>,
}

/// A datagram seen on a [`LoopNet`] with `capture` on.
#[derive(Clone, Debug)]
pub struct Captured {
    /// The index of the member that sent it.
    pub from: usize,
    /// Where it went.
    pub dest: Dest,
    /// The whole datagram, frame header included.
    pub data: bytes::Bytes,
}

#[derive(Debug)]
struct Slot {
    addr: SocketAddr,
    stack: Option<Stack>,
    events: Vec<AppEvent>,
    delivered: u64,
}

impl Default for LoopNet {
    fn default() -> Self {
        LoopNet { now: Instant::ZERO, slots: Vec::new(), auto_done: true, record: true, capture: false, wire: Vec::new() }
    }
}

impl LoopNet {
    /// An empty network at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Adds a member at `stack`'s address; returns its index.
    pub fn push(&mut self, stack: Stack) -> usize {
        self.slots.push(Slot { addr: stack.local().addr(), stack: Some(stack), events: Vec::new(), delivered: 0 });
        self.settle();
        self.slots.len() - 1
    }

    /// Replaces member `i`'s stack: `None` crashes it, `Some` restarts it
    /// (at the same address). Its recorded events and delivery count start
    /// again; the old ones are returned.
    pub fn set(&mut self, i: usize, stack: Option<Stack>) -> Vec<AppEvent> {
        let slot = &mut self.slots[i];
        slot.stack = stack;
        slot.delivered = 0;
        let old = std::mem::take(&mut slot.events);
        self.settle();
        old
    }

    /// How many members there are (crashed ones included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there is no member.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Member `i`'s stack, unless it crashed.
    pub fn stack(&self, i: usize) -> Option<&Stack> {
        self.slots[i].stack.as_ref()
    }

    /// Member `i`'s stack, to cast or query it.
    pub fn stack_mut(&mut self, i: usize) -> Option<&mut Stack> {
        self.slots[i].stack.as_mut()
    }

    /// Member `i`'s application events since it (re)started, if recorded.
    pub fn events(&self, i: usize) -> &[AppEvent] {
        &self.slots[i].events
    }

    /// How many messages member `i` delivered since it (re)started.
    pub fn delivered(&self, i: usize) -> u64 {
        self.slots[i].delivered
    }

    /// Moves every datagram and event until nothing moves at this instant.
    pub fn settle(&mut self) {
        let now = self.now;
        let (mut out, mut dones, mut states) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let mut moved = false;
            for i in 0..self.slots.len() {
                let slot = &mut self.slots[i];
                let Some(stack) = slot.stack.as_mut() else { continue };
                while let Some(t) = stack.poll_transmit() {
                    out.push(t);
                }
                while let Some(ev) = stack.poll_event() {
                    match &ev {
                        AppEvent::Deliver { kind, .. } => {
                            slot.delivered += 1;
                            if let (Delivery::Safe { tag, .. }, true) = (kind, self.auto_done) {
                                dones.push(*tag);
                            }
                        }
                        AppEvent::StateRequest { token, .. } => states.push(*token),
                        _ => {}
                    }
                    if self.record {
                        slot.events.push(ev);
                    }
                }
                for token in states.drain(..) {
                    // The application's state is empty; layers add their own parts.
                    stack.provide_state(now, token, None).expect("the end of a state is never refused");
                    moved = true;
                }
                for tag in dones.drain(..) {
                    stack.done(now, tag).expect("a durable delivery comes from a durable stack");
                    moved = true;
                }
                for t in out.drain(..) {
                    moved = true;
                    let data = t.msg.to_bytes();
                    if self.capture {
                        self.wire.push(Captured { from: i, dest: t.dest, data: data.clone() });
                    }
                    for (j, other) in self.slots.iter_mut().enumerate() {
                        let to_j = match t.dest {
                            Dest::Group => j != i,
                            Dest::Member(m) => m.addr() == other.addr,
                        };
                        if let (true, Some(s)) = (to_j, other.stack.as_mut()) {
                            s.handle_datagram(now, data.clone());
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Casts `body` at member `i`. While its send window is closed
    /// ([`Refused::Backpressure`]), runs the network for `tick` and tries
    /// again, `tries` times at most.
    pub fn cast_when_open(&mut self, i: usize, body: bytes::Bytes, tick: Duration, tries: u32) -> Result<(), Refused> {
        for _ in 0..tries {
            let now = self.now;
            let Some(stack) = self.slots[i].stack.as_mut() else { panic!("casting at member {i}, which crashed") };
            match stack.cast(now, body.clone()) {
                Err(Refused::Backpressure) => self.run_for(tick),
                result => return result,
            }
        }
        Err(Refused::Backpressure)
    }

    /// Every datagram sent since `capture` was turned on, in order.
    pub fn wire(&self) -> &[Captured] {
        &self.wire
    }

    /// Hands `data` to member `i` as if it had arrived from the network
    /// (an attacker's datagram), then lets everything settle.
    pub fn inject(&mut self, i: usize, data: bytes::Bytes) {
        let now = self.now;
        if let Some(s) = self.slots[i].stack.as_mut() {
            s.handle_datagram(now, data);
        }
        self.settle();
    }

    /// Fires the earliest due timers, moving the clock to them, if one is
    /// due by `limit`; returns whether one was.
    pub fn fire_next_timer(&mut self, limit: Instant) -> bool {
        match self.slots.iter().filter_map(|s| s.stack.as_ref()?.poll_timeout()).min() {
            Some(due) if due <= limit => {
                self.now = self.now.max(due);
                for s in self.slots.iter_mut().filter_map(|s| s.stack.as_mut()) {
                    if s.poll_timeout().is_some_and(|d| d <= self.now) {
                        s.handle_timeout(self.now);
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// Runs until `t`, firing timers in order.
    pub fn run_until(&mut self, t: Instant) {
        loop {
            self.settle();
            if !self.fire_next_timer(t) {
                break;
            }
        }
        self.now = self.now.max(t);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }
}
