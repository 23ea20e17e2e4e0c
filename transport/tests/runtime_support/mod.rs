//! Shared by the runtime tests: small test-only layers, a registry holding
//! them, and helpers that await deliveries and check per-sender order.
#![allow(dead_code)]

use bytes::Bytes;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use strata_stack::runtime::{Events, Group};
use strata_stack::{AppEvent, Context, Delivery, Down, Layer, LayerDescriptor, MemberId, Msg, ParamKind, ParamSpec, Props, Registry, Up};
use strata_transport::payload;

/// The longest any test waits for an event before it fails (a safety net
/// against hangs, far above what a loaded machine needs).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Forwards everything.
struct Pass;
impl Layer for Pass {}

/// `PASS`: a layer that does nothing (the smallest valid stack).
pub const PASS: LayerDescriptor = LayerDescriptor {
    name: "PASS",
    summary: "test: forwards everything",
    requires: Props::NONE,
    provides: Props::NONE,
    params: &[],
    max_header_len: |_| 0,
    build: |_| Ok(Box::new(Pass)),
};

/// Closes the send window after casting a message whose body is `close`;
/// reopens it when a message whose body is `open` arrives from another member.
struct Gate;
impl Layer for Gate {
    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        if let Down::Cast(msg) = &ev {
            if &msg.body()[..] == b"close" {
                cx.set_backpressure(true);
            }
        }
        cx.down(ev);
    }
    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        if let Up::Cast { from, msg } = &ev {
            if *from != cx.local() && &msg.body()[..] == b"open" {
                cx.set_backpressure(false);
            }
        }
        cx.up(ev);
    }
}

/// `GATE`: a send window the test opens and closes with messages.
pub const GATE: LayerDescriptor = LayerDescriptor {
    name: "GATE",
    summary: "test: `close` closes the send window, `open` from a peer reopens it",
    requires: Props::NONE,
    provides: Props::NONE,
    params: &[],
    max_header_len: |_| 0,
    build: |_| Ok(Box::new(Gate)),
};

/// Closes the send window after every cast and reopens it `pause_ms` later.
struct Pace {
    pause_ms: u64,
}
impl Layer for Pace {
    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        if matches!(ev, Down::Cast(_)) {
            cx.set_backpressure(true);
            let at = cx.now() + Duration::from_millis(self.pause_ms);
            cx.set_timer(0, at);
        }
        cx.down(ev);
    }
    fn timeout(&mut self, cx: &mut Context<'_>, _key: u32) {
        cx.set_backpressure(false);
    }
}

/// `PACE(pause_ms=1)`: one cast per `pause_ms`, enforced by backpressure.
pub const PACE: LayerDescriptor = LayerDescriptor {
    name: "PACE",
    summary: "test: closes the window after each cast, reopens it after pause_ms",
    requires: Props::NONE,
    provides: Props::NONE,
    params: &[ParamSpec { name: "pause_ms", kind: ParamKind::U64 { min: 0, max: 1000 }, default: "1", doc: "pause after each cast", wire: false }],
    max_header_len: |_| 0,
    build: |p| Ok(Box::new(Pace { pause_ms: p.u64("pause_ms") })),
};

/// Plays a membership layer's part in state transfer, driven by messages:
/// - its own cast `ask:TOKEN` is delivered, then followed by
///   `StateRequest { token: TOKEN }`;
/// - the answers are turned into casts: a chunk into `chunk:TOKEN:` and the
///   chunk's bytes, the end into `state-done:TOKEN`;
/// - a cast `load` (from anyone) is delivered, then followed by `StateBegin`,
///   `StateChunk("s1")`, `StateChunk("s2")`, `StateDone`.
struct Ask;
impl Layer for Ask {
    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        let Up::Cast { from, msg } = &ev else { return cx.up(ev) };
        let (from, body) = (*from, msg.body().clone());
        cx.up(ev);
        if from == cx.local() {
            if let Some(token) = body.strip_prefix(b"ask:").and_then(|t| std::str::from_utf8(t).ok()?.parse().ok()) {
                cx.up(Up::StateRequest { token, joiners: vec![from] });
            }
        }
        if &body[..] == b"load" {
            cx.up(Up::StateBegin);
            cx.up(Up::StateChunk(Bytes::from_static(b"s1")));
            cx.up(Up::StateChunk(Bytes::from_static(b"s2")));
            cx.up(Up::StateDone);
        }
    }
    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::StateChunk { token, data } => {
                let mut body = format!("chunk:{token}:").into_bytes();
                body.extend_from_slice(&data);
                cx.down(Down::Cast(Msg::new(Bytes::from(body))));
            }
            Down::StateDone { token } => cx.down(Down::Cast(Msg::new(Bytes::from(format!("state-done:{token}"))))),
            ev => cx.down(ev),
        }
    }
}

/// `ASK`: state requests and state loading driven by messages (see `Ask`).
pub const ASK: LayerDescriptor = LayerDescriptor {
    name: "ASK",
    summary: "test: `ask:TOKEN` asks this member for its state, `load` makes it load one; answers become casts",
    requires: Props::NONE,
    provides: Props::NONE,
    params: &[],
    max_header_len: |_| 0,
    build: |_| Ok(Box::new(Ask)),
};

/// A registry of the test layers.
pub fn test_registry() -> Arc<Registry> {
    let mut r = Registry::new();
    for d in [PASS, GATE, PACE, ASK] {
        r.register(d).expect("test layer names are unique");
    }
    Arc::new(r)
}

/// The next event, failing the test after [`PATIENCE`].
pub async fn next_event(events: &mut Events) -> Option<AppEvent> {
    match tokio::time::timeout(PATIENCE, events.next()).await {
        Ok(ev) => ev,
        Err(_) => panic!("no event within {PATIENCE:?}"),
    }
}

/// Awaits `n` cast deliveries, skipping other events; returns them as
/// (sender, body) in delivery order.
pub async fn deliveries(events: &mut Events, n: usize) -> Vec<(MemberId, Bytes)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next_event(events).await {
            Some(AppEvent::Deliver { from, kind: Delivery::Cast, body }) => out.push((from, body)),
            Some(AppEvent::Problem(p)) => panic!("problem from {}: {}", p.layer, p.what),
            Some(_) => {}
            None => panic!("events ended after {} of {n} deliveries", out.len()),
        }
    }
    out
}

/// Casts payloads `0..k` of `size` bytes, in order.
pub async fn cast_payloads(group: &Group, k: u64, size: usize) {
    cast_range(group, 0..k, size).await
}

/// Casts payloads `range` of `size` bytes, in order.
pub async fn cast_range(group: &Group, range: std::ops::Range<u64>, size: usize) {
    let me = group.local().to_string();
    for i in range {
        group.cast(payload::make(&me, i, size)).await.expect("cast");
    }
}

/// Checks that `got` holds exactly payloads `0..k` of every member in
/// `senders`, intact, each sender's in order.
pub fn check_fifo(got: &[(MemberId, Bytes)], senders: &[MemberId], k: u64) {
    check_range(got, senders, 0..k)
}

/// Checks that `got` holds exactly payloads `range` of every member in
/// `senders`, intact, each sender's in order.
pub fn check_range(got: &[(MemberId, Bytes)], senders: &[MemberId], range: std::ops::Range<u64>) {
    let mut next: BTreeMap<String, u64> = senders.iter().map(|m| (m.to_string(), range.start)).collect();
    for (from, body) in got {
        assert!(payload::is_intact(body), "corrupt payload from {from}");
        let id = payload::id(body).expect("payload id");
        let (member, i) = payload::split_id(id).expect("payload id");
        assert_eq!(member, from.to_string(), "payload names its sender");
        let expected = next.get_mut(member).unwrap_or_else(|| panic!("delivery from unexpected sender {member}"));
        assert_eq!(i, *expected, "per-sender order of {member}");
        *expected += 1;
    }
    for (member, n) in next {
        assert_eq!(n, range.end, "deliveries from {member}");
    }
}

/// Polls `fut` once: whether it is still pending.
pub async fn is_pending<F: Future>(fut: &mut Pin<&mut F>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_pending())).await
}
