//! The engine's contract: framing, loopback, demultiplexing checks, timers,
//! backpressure and the runaway-loop budget.

use bytes::Bytes;
use strata_stack::harness::Tag;
use strata_stack::{
    AppEvent, Context, Delivery, Dest, Down, Instant, Layer, LayerDescriptor, MemberId, Msg, ParamKind, ParamSpec, Props, Registry, SpecErrorKind, Stack,
    StackConfig, Up,
};

/// Arms two timers at init and reports each firing as a problem event.
struct Ticker;
impl Layer for Ticker {
    fn init(&mut self, cx: &mut Context<'_>) {
        cx.set_timer(2, Instant::from_millis(20));
        cx.set_timer(1, Instant::from_millis(10));
        cx.set_timer(3, Instant::from_millis(30));
        cx.cancel_timer(3);
    }
    fn timeout(&mut self, cx: &mut Context<'_>, key: u32) {
        cx.up(Up::Problem(strata_stack::Problem { layer: "TICK", what: format!("{key}@{:?}", cx.now()) }));
    }
}

/// Closes the send window after two casts; a flush reopens it.
struct Window(u32);
impl Layer for Window {
    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::Cast(msg) => {
                self.0 += 1;
                cx.set_backpressure(self.0 >= 2);
                cx.down(Down::Cast(msg));
            }
            Down::Flush { .. } => {
                self.0 = 0;
                cx.set_backpressure(false);
            }
            ev => cx.down(ev),
        }
    }
}

/// Bounces every flush answer back down: an endless loop between layer and bottom.
struct Bouncer;
impl Layer for Bouncer {
    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        match ev {
            Up::Flushed { token } => cx.down(Down::Flush { token }),
            ev => cx.up(ev),
        }
    }
}

const WIDE: &[ParamSpec] = &[ParamSpec { name: "bytes", kind: ParamKind::U64 { min: 0, max: 1 << 20 }, default: "8", doc: "header size", wire: true }];

fn registry() -> Registry {
    let mut r = Registry::new();
    let d = |name, build: fn(&strata_stack::Params) -> Result<Box<dyn Layer>, String>| LayerDescriptor {
        name,
        summary: "test",
        requires: Props::NONE,
        provides: Props::NONE,
        params: WIDE,
        max_header_len: |p| p.u64("bytes") as usize,
        build,
    };
    r.register(d("TAG", |_| Ok(Box::new(Tag)))).unwrap();
    r.register(d("TICK", |_| Ok(Box::new(Ticker)))).unwrap();
    r.register(d("WINDOW", |_| Ok(Box::new(Window(0))))).unwrap();
    r.register(d("BOUNCE", |_| Ok(Box::new(Bouncer)))).unwrap();
    r
}

fn pair(spec: &str) -> (Stack, Stack) {
    let (a, b) = (MemberId::sim(1), MemberId::sim(2));
    let r = registry();
    let sa = Stack::new(&r, spec, StackConfig::new("g", a, vec![a, b]), Instant::ZERO).unwrap();
    let sb = Stack::new(&r, spec, StackConfig::new("g", b, vec![a, b]), Instant::ZERO).unwrap();
    (sa, sb)
}

fn events(s: &mut Stack) -> Vec<AppEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

#[test]
fn a_cast_loops_back_and_reaches_the_other_member_intact() {
    let (mut a, mut b) = pair("TAG");
    a.cast(Instant::ZERO, Bytes::from_static(b"hello")).unwrap();
    let t = a.poll_transmit().expect("one datagram");
    assert_eq!(t.dest, Dest::Group);
    assert!(a.poll_transmit().is_none());
    let own = AppEvent::Deliver { from: a.local(), kind: Delivery::Cast, body: Bytes::from_static(b"hello") };
    assert_eq!(events(&mut a), vec![own.clone()]);
    b.handle_datagram(Instant::ZERO, t.msg.to_bytes());
    assert_eq!(events(&mut b), vec![own]);
}

#[test]
fn a_send_goes_to_one_member_and_to_self_without_the_network() {
    let (mut a, mut b) = pair("TAG");
    a.send(Instant::ZERO, b.local(), Bytes::from_static(b"p2p")).unwrap();
    let t = a.poll_transmit().unwrap();
    assert_eq!(t.dest, Dest::Member(b.local()));
    b.handle_datagram(Instant::ZERO, t.msg.to_bytes());
    assert_eq!(events(&mut b), vec![AppEvent::Deliver { from: a.local(), kind: Delivery::Send, body: Bytes::from_static(b"p2p") }]);
    a.send(Instant::ZERO, a.local(), Bytes::from_static(b"me")).unwrap();
    assert!(a.poll_transmit().is_none());
    assert_eq!(events(&mut a), vec![AppEvent::Deliver { from: a.local(), kind: Delivery::Send, body: Bytes::from_static(b"me") }]);
}

#[test]
fn foreign_and_malformed_frames_are_counted_not_delivered() {
    let (mut a, mut b) = pair("TAG");
    let r = registry();
    let mut other_group = Stack::new(&r, "TAG", StackConfig::new("h", a.local(), vec![a.local(), b.local()]), Instant::ZERO).unwrap();
    let mut other_stack = Stack::new(&r, "TAG(bytes=9)", StackConfig::new("g", a.local(), vec![a.local(), b.local()]), Instant::ZERO).unwrap();
    for s in [&mut other_group, &mut other_stack, &mut a] {
        s.cast(Instant::ZERO, Bytes::from_static(b"xyz")).unwrap();
    }
    let good = a.poll_transmit().unwrap().msg.to_bytes();
    b.handle_datagram(Instant::ZERO, other_group.poll_transmit().unwrap().msg.to_bytes());
    b.handle_datagram(Instant::ZERO, other_stack.poll_transmit().unwrap().msg.to_bytes());
    b.handle_datagram(Instant::ZERO, Bytes::from_static(b"garbage"));
    b.handle_datagram(Instant::ZERO, good.slice(..good.len() - 1)); // payload cut short, headers intact
    b.handle_datagram(Instant::ZERO, good.slice(..12)); // cut inside the sender id
    let mut corrupt = good.to_vec();
    let tag_at = corrupt.len() - 4;
    corrupt[tag_at] = 0;
    b.handle_datagram(Instant::ZERO, Bytes::from(corrupt));
    // Only the truncated-payload frame is well formed at every level.
    assert_eq!(events(&mut b).len(), 1);
    let engine = b.engine_stats();
    for reason in ["wrong_group", "wrong_stack", "bad_magic", "bad_sender"] {
        assert!(engine.dropped.contains(&(reason, 1)), "{reason}: {:?}", engine.dropped);
    }
    assert_eq!(b.stats()[0].dropped, vec![("bad_tag", 1)]);
    // A frame claiming to come from the receiver itself is refused too.
    b.handle_datagram(Instant::ZERO, {
        let mut s = Stack::new(&r, "TAG", StackConfig::new("g", b.local(), vec![a.local(), b.local()]), Instant::ZERO).unwrap();
        s.cast(Instant::ZERO, Bytes::new()).unwrap();
        s.poll_transmit().unwrap().msg.to_bytes()
    });
    assert!(b.engine_stats().dropped.contains(&("own_frame", 1)));
}

#[test]
fn timers_fire_in_deadline_order_and_replace_or_cancel() {
    let r = registry();
    let m = MemberId::sim(1);
    let mut s = Stack::new(&r, "TICK", StackConfig::new("g", m, vec![m]), Instant::ZERO).unwrap();
    assert_eq!(s.poll_timeout(), Some(Instant::from_millis(10)));
    s.handle_timeout(Instant::from_millis(5));
    assert!(events(&mut s).is_empty());
    s.handle_timeout(Instant::from_millis(25));
    let fired: Vec<String> = events(&mut s)
        .into_iter()
        .map(|e| match e {
            AppEvent::Problem(p) => p.what,
            e => panic!("unexpected {e:?}"),
        })
        .collect();
    assert_eq!(fired, vec!["1@0.025000000s", "2@0.025000000s"]);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn backpressure_refuses_casts_until_the_window_reopens() {
    let r = registry();
    let m = MemberId::sim(1);
    let mut s = Stack::new(&r, "WINDOW", StackConfig::new("g", m, vec![m]), Instant::ZERO).unwrap();
    assert!(s.cast(Instant::ZERO, Bytes::new()).is_ok());
    assert!(s.cast(Instant::ZERO, Bytes::new()).is_ok());
    assert!(!s.can_send());
    assert_eq!(s.cast(Instant::ZERO, Bytes::new()), Err(strata_stack::Refused::Backpressure));
    s.flush(Instant::ZERO, 1);
    assert!(s.can_send());
    assert_eq!(events(&mut s).len(), 2, "the two accepted casts, nothing of the refused one");
}

#[test]
fn a_runaway_loop_becomes_a_problem_not_a_hang() {
    let r = registry();
    let m = MemberId::sim(1);
    let mut s = Stack::new(&r, "BOUNCE", StackConfig::new("g", m, vec![m]), Instant::ZERO).unwrap();
    s.flush(Instant::ZERO, 7);
    let evs = events(&mut s);
    assert!(matches!(&evs[..], [AppEvent::Problem(p)] if p.layer == "engine"), "{evs:?}");
    assert!(s.engine_stats().dropped.contains(&("event_budget", 1)));
}

#[test]
fn messages_over_the_datagram_limit_are_refused_at_the_top() {
    let r = registry();
    let (a, b) = (MemberId::sim(1), MemberId::sim(2));
    let mut cfg = StackConfig::new("g", a, vec![a, b]);
    cfg.max_datagram = 100;
    let mut s = Stack::new(&r, "TAG", cfg, Instant::ZERO).unwrap();
    let max = s.max_message();
    assert!(max < 100 - strata_stack::engine::FRAME_HEADER_MAX, "the frame and TAG's header take room: {max}");
    assert_eq!(s.cast(Instant::ZERO, Bytes::from(vec![0u8; max + 1])), Err(strata_stack::Refused::TooLarge { len: max + 1, max }));
    assert!(s.poll_transmit().is_none() && events(&mut s).is_empty(), "nothing entered the stack");
    s.cast(Instant::ZERO, Bytes::from(vec![0u8; max])).unwrap();
    let t = s.poll_transmit().expect("the largest message fits one datagram");
    assert!(t.msg.len() <= 100, "{} bytes", t.msg.len());
}

#[test]
fn bad_stacks_are_refused_at_build_time() {
    let r = registry();
    let m = MemberId::sim(1);
    let err = Stack::new(&r, "TAG:NOPE", StackConfig::new("g", m, vec![m]), Instant::ZERO).unwrap_err();
    assert!(err.to_string().contains("unknown layer `NOPE`"), "{err}");
    let err = Stack::new(&r, "TAG(bytes=70000)", StackConfig::new("g", m, vec![m]), Instant::ZERO).unwrap_err();
    assert!(matches!(err, strata_stack::BuildError::Spec(ref e) if matches!(e.kind, SpecErrorKind::HeadersTooLarge { .. })), "{err}");
}

#[test]
fn messages_keep_their_body_shared_through_the_stack() {
    let (mut a, _) = pair("TAG:TAG:TAG");
    let body = Bytes::from(vec![9u8; 4096]);
    a.cast(Instant::ZERO, body.clone()).unwrap();
    let t = a.poll_transmit().unwrap();
    assert_eq!(t.msg.body().as_ptr(), body.as_ptr(), "no layer copied the payload");
    match a.poll_event() {
        Some(AppEvent::Deliver { body: got, .. }) => assert_eq!(got.as_ptr(), body.as_ptr()),
        e => panic!("{e:?}"),
    }
    let _ = Msg::empty();
}

/// Random datagrams, raw and behind a valid frame header (so that they reach
/// the layers): no panic, every one counted, and nothing delivered that does
/// not carry TAG's byte.
#[test]
fn random_datagrams_never_panic_and_are_counted() {
    fn prop(tail: Vec<u8>, framed: bool) -> bool {
        let (mut a, mut b) = pair("TAG");
        let data = if framed {
            a.cast(Instant::ZERO, Bytes::new()).unwrap();
            let mut frame = a.poll_transmit().unwrap().msg.to_bytes().to_vec();
            frame.truncate(frame.len() - 1); // drop TAG's byte: the tail replaces it
            frame.extend_from_slice(&tail);
            frame
        } else {
            tail.clone()
        };
        b.handle_datagram(Instant::ZERO, Bytes::from(data));
        let delivered = events(&mut b).iter().filter(|e| matches!(e, AppEvent::Deliver { .. })).count();
        let counted = b.engine_stats().counters.get("datagrams_in") == Some(1);
        counted && (delivered == 0 || (framed && tail.first() == Some(&strata_stack::harness::TAG_BYTE)))
    }
    quickcheck::QuickCheck::new().tests(2000).quickcheck(prop as fn(Vec<u8>, bool) -> bool);
}

/// Random stack strings get a build error or a stack, never a panic.
#[test]
fn random_stack_strings_never_panic() {
    fn prop(text: String, pieces: Vec<u8>) -> bool {
        // Mix free text with the grammar's own tokens, so that the parser's
        // deeper paths are reached too.
        const TOKENS: [&str; 10] = ["TAG", "TICK", ":", "(", ")", "bytes", "=", ",", "70000", "8"];
        let spec: String = pieces.iter().map(|p| TOKENS[*p as usize % TOKENS.len()]).collect::<String>() + &text;
        let m = MemberId::sim(1);
        let _ = Stack::new(&registry(), &spec, StackConfig::new("g", m, vec![m]), Instant::ZERO);
        true
    }
    quickcheck::QuickCheck::new().tests(2000).quickcheck(prop as fn(String, Vec<u8>) -> bool);
}
