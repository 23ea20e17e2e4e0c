//! FRAG's tests: exact outputs through `LayerHarness`, round trips under
//! shuffling and duplication, the memory bounds, and hostile input.

use super::header::{max_fragment_header_len, FragHeader, Header};
use super::*;
use bytes::Bytes;
use quickcheck::{quickcheck, TestResult};
use strata_stack::codec::{Reader, Writer};
use strata_stack::harness::{LayerHarness, Out};
use strata_stack::{Instant, MsgFlags, ParamValue, Rng, View};

const A: u16 = 0;
const B: u16 = 1;
const C: u16 = 2;

fn m(n: u16) -> MemberId {
    MemberId::sim(n)
}

fn params(pairs: &[(&'static str, u64)]) -> Params {
    let mut p = Params::defaults(FRAG.params).unwrap();
    for (name, value) in pairs {
        p.set(name, ParamValue::U64(*value));
    }
    p
}

fn harness_with(local: u16, pairs: &[(&'static str, u64)], max_payload: usize) -> LayerHarness {
    let view = View::initial(vec![m(A), m(B), m(C)]).unwrap();
    let layer = (FRAG.build)(&params(pairs)).unwrap();
    LayerHarness::boxed("FRAG", layer, m(local), view, max_payload)
}

fn harness(local: u16) -> LayerHarness {
    harness_with(local, &[], 65_000)
}

/// A payload whose bytes depend on their position and on `seed`.
fn payload(len: usize, seed: u8) -> Bytes {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).wrapping_add((i >> 8) as u8)).collect::<Vec<u8>>().into()
}

fn tagged(body: Bytes, tag: u64) -> Msg {
    let mut msg = Msg::new(body);
    msg.set_tag(Some(tag));
    msg
}

/// The messages a harness passed down, as the wire carries them.
fn wire(out: Vec<Out>) -> Vec<Msg> {
    out.into_iter()
        .map(|o| match o {
            Out::Down(Down::Cast(msg)) | Out::Down(Down::Send { msg, .. }) => Msg::new(msg.to_bytes()),
            other => panic!("expected a message going down, got {other:?}"),
        })
        .collect()
}

fn cast_from(from: u16, msg: Msg) -> Up {
    Up::Cast { from: m(from), msg }
}

fn send_from(from: u16, msg: Msg) -> Up {
    Up::Send { from: m(from), msg }
}

fn stat(h: &LayerHarness, name: &str) -> u64 {
    h.stats().get(name).unwrap_or_else(|| panic!("no stat {name}"))
}

fn decode(msg: &Msg) -> Header {
    Header::decode(&mut Reader::new(msg.front()), 1 << 30).expect("a header FRAG wrote")
}

fn frag_bytes(h: FragHeader, payload: &[u8]) -> Msg {
    let mut w = Writer::new();
    h.encode(&mut w);
    w.bytes(payload);
    Msg::new(Bytes::copy_from_slice(w.as_slice()))
}

fn fh(tagged: bool, id: u64, index: u64, count: u64, total_len: u64) -> FragHeader {
    FragHeader { tagged, id, index, count, total_len }
}

#[test]
fn a_small_message_goes_whole_behind_one_byte_and_comes_back() {
    let mut a = harness(A);
    let body = payload(100, 1);
    let mut expected = Msg::new(body.clone());
    expected.push(&[0]);
    assert_eq!(a.down(Down::Cast(Msg::new(body.clone()))), vec![Out::Down(Down::Cast(expected.clone()))]);

    let mut b = harness(B);
    let got = b.up(cast_from(A, Msg::new(expected.to_bytes())));
    assert_eq!(got, vec![Out::Up(cast_from(A, Msg::new(body.clone())))]);
    let got = b.up(send_from(A, Msg::new(expected.to_bytes())));
    assert_eq!(got, vec![Out::Up(send_from(A, Msg::new(body)))]);
    assert_eq!(stat(&a, "sent_whole"), 1);
    assert_eq!(stat(&b, "delivered_whole"), 2);
}

#[test]
fn a_large_message_is_cut_into_exact_fragments() {
    // frag_size 64, untagged, 100 bytes: worst header 5, count 2, header 5,
    // so L = 59 and the fragments carry 59 and 41 bytes.
    let mut a = harness_with(A, &[("frag_size", 64)], 65_000);
    let body = payload(100, 2);
    let out = a.down(Down::Send { to: m(B), msg: Msg::new(body.clone()) });
    let frag = |index: u8, range: std::ops::Range<usize>| {
        let mut f = Msg::new(body.slice(range));
        f.push(&[0x01, 0, index, 2, 100]);
        Out::Down(Down::Send { to: m(B), msg: f })
    };
    assert_eq!(out, vec![frag(0, 0..59), frag(1, 59..100)]);
    // The next untagged message gets the next id.
    let out = wire(a.down(Down::Cast(Msg::new(body))));
    assert_eq!(out[0].front()[..2], [0x01, 1]);
    assert_eq!((stat(&a, "fragmented"), stat(&a, "sent_fragments")), (2, 4));
}

#[test]
fn fragments_share_the_payload_and_keep_flags() {
    let mut a = harness(A);
    let body = payload(5000, 3);
    let mut msg = Msg::new(body.clone());
    msg.flags_mut().insert(MsgFlags::OOB);
    let out = a.down(Down::Cast(msg));
    assert_eq!(out.len(), 4);
    for o in &out {
        let Out::Down(Down::Cast(f)) = o else { panic!("{o:?}") };
        assert!(f.flags().contains(MsgFlags::OOB));
        let start = body.as_ptr() as usize;
        let at = f.body().as_ptr() as usize;
        assert!(at >= start && at < start + body.len(), "fragments are slices of the message, not copies");
    }
}

/// Sends `body` (tagged if `tag` is set) from a harness with `frag_size` and
/// `max_payload`, checks every fragment's size and header, feeds the
/// fragments to a receiver in the order `order` gives (indices into the
/// fragment list, repeats allowed) and returns the receiver's outputs.
fn round_trip(body: &Bytes, tag: Option<u64>, frag_size: u64, max_payload: usize, order: impl Fn(usize) -> Vec<usize>) -> (Vec<Out>, LayerHarness) {
    let pairs = [("frag_size", frag_size)];
    let mut a = harness_with(A, &pairs, max_payload);
    let mut msg = Msg::new(body.clone());
    msg.set_tag(tag);
    let fragments = wire(a.down(Down::Cast(msg)));
    let limit = (frag_size as usize).min(max_payload);
    let max_header = (FRAG.max_header_len)(&params(&pairs));
    for f in &fragments {
        assert!(f.len() <= limit, "a {}-byte fragment exceeds {limit}", f.len());
        let header_len = match decode(f) {
            Header::Whole => 1,
            Header::Fragment(h) => {
                assert_eq!((h.tagged, h.total_len, h.count), (tag.is_some(), body.len() as u64, fragments.len() as u64));
                h.encoded_len()
            }
        };
        assert!(header_len <= max_header);
    }
    let mut b = harness_with(B, &pairs, max_payload);
    let mut out = Vec::new();
    for i in order(fragments.len()) {
        out.extend(b.up(cast_from(A, fragments[i].clone())));
    }
    (out, b)
}

fn expect_one_delivery(out: &[Out], body: &Bytes, tag: Option<u64>) {
    let mut expected = Msg::new(body.clone());
    if body.len() + 1 > 1400 {
        expected.set_tag(tag);
    }
    assert_eq!(out.len(), 1, "exactly one delivery");
    let Out::Up(Up::Cast { from, msg }) = &out[0] else { panic!("{:?}", out[0]) };
    assert_eq!(*from, m(A));
    assert!(msg.to_bytes() == *body, "the bytes that were sent");
    assert_eq!(msg.tag(), expected.tag());
}

/// The fragment indices `0..n` in a random order (Fisher-Yates with the
/// stack's seeded rng), with `dups` repeats of fragments already seen
/// inserted before the last one. (A repeat after the message completed would
/// start a new partial: FRAG does not suppress duplicate messages, see
/// `a_late_duplicate_starts_a_partial_that_expires`.)
fn shuffled(n: usize, seed: u64, dups: usize) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    if n < 2 {
        return order;
    }
    for _ in 0..dups {
        let at = 1 + rng.below(order.len() as u64 - 1) as usize;
        let repeat = order[rng.below(at as u64) as usize];
        order.insert(at, repeat);
    }
    order
}

#[test]
fn every_interesting_size_round_trips_shuffled_with_duplicates() {
    for size in [0, 1, 1398, 1399, 1400, 1401, 65_536, 1 << 20] {
        for tag in [None, Some(0xdead_beef_u64 << 20)] {
            let body = payload(size, size as u8);
            let (out, b) = round_trip(&body, tag, 1400, 65_000, |n| shuffled(n, size as u64, n / 3));
            expect_one_delivery(&out, &body, tag);
            assert_eq!((stat(&b, "partials"), stat(&b, "partial_bytes")), (0, 0), "size {size}");
            assert!(b.drops().is_empty(), "{:?}", b.drops());
        }
    }
}

#[test]
fn a_small_max_payload_caps_fragments_below_frag_size() {
    let body = payload(10_000, 9);
    let (out, _) = round_trip(&body, Some(u64::MAX), 1400, 300, |n| (0..n).rev().collect());
    expect_one_delivery(&out, &body, Some(u64::MAX));
}

quickcheck! {
    fn any_message_round_trips_in_any_order(size: u32, frag_size: u16, seed: u64, dups: u8, tag: Option<u64>) -> TestResult {
        let size = (size % 70_000) as usize;
        let frag_size = 64 + u64::from(frag_size) % 3000;
        let body = payload(size, seed as u8);
        let (out, b) = round_trip(&body, tag, frag_size, 65_000, |n| shuffled(n, seed, usize::from(dups) % (n + 1)));
        if out.len() != 1 || b.stats().get("partials") != Some(0) {
            return TestResult::error(format!("size {size} frag_size {frag_size}: {} outputs", out.len()));
        }
        let Out::Up(Up::Cast { msg, .. }) = &out[0] else { return TestResult::failed() };
        let whole = size < frag_size as usize;
        TestResult::from_bool(msg.to_bytes() == body && msg.tag() == if whole { None } else { tag })
    }

    fn random_bytes_never_panic_nor_hold_more_than_arrived(datagrams: Vec<Vec<u8>>, as_send: bool) -> bool {
        let mut b = harness_with(B, &[("max_msg_size", 4096), ("max_reassembly_bytes", 8192)], 65_000);
        let mut arrived = 0u64;
        for d in datagrams {
            arrived += d.len().max(64) as u64;
            let msg = Msg::new(d.into());
            let out = b.up(if as_send { send_from(A, msg) } else { cast_from(A, msg) });
            if out.len() > 1 {
                return false;
            }
        }
        stat(&b, "partial_bytes") <= arrived.min(8192)
    }

    fn random_fragment_headers_are_checked(id: u64, index: u16, count: u16, total: u16, len: u16) -> bool {
        // Small numbers, so that valid shapes come up often.
        let mut b = harness_with(B, &[("max_msg_size", 4096), ("max_reassembly_bytes", 8192), ("frag_size", 256)], 65_000);
        let h = fh(id & 1 == 0, id, u64::from(index % 40), u64::from(count % 40), u64::from(total % 5000));
        let body = vec![7u8; usize::from(len % 300)];
        let out = b.up(cast_from(A, frag_bytes(h, &body)));
        let dropped: u64 = b.drops().iter().map(|(_, n)| n).sum();
        // Either dropped and counted, or stored (a shape of 2+ fragments never completes with one).
        out.is_empty() && dropped + stat(&b, "partials") == 1 && stat(&b, "partial_bytes") <= (body.len() as u64).max(64)
    }
}

#[test]
fn a_retransmission_fills_the_holes_of_the_original() {
    let mut a = harness(A);
    let body = payload(64 * 1024, 4);
    let tag = 77;
    let first = wire(a.down(Down::Cast(tagged(body.clone(), tag))));
    // NAK retransmits a lost cast point-to-point, with the identical bytes and tag.
    let second = wire(a.down(Down::Send { to: m(B), msg: tagged(body.clone(), tag) }));
    assert_eq!(first.len(), 48);
    assert_eq!(first, second, "the same message is cut the same way");

    let mut b = harness(B);
    let mut out = Vec::new();
    for i in 0..first.len() {
        // Even fragments from the cast, odd ones from the retransmission.
        out.extend(if i % 2 == 0 { b.up(cast_from(A, first[i].clone())) } else { b.up(send_from(A, second[i].clone())) });
    }
    expect_one_delivery(&out, &body, Some(tag));
    assert_eq!((stat(&b, "reassembled"), stat(&b, "partials")), (1, 0));
}

#[test]
fn casts_sends_and_id_spaces_do_not_collide() {
    // Two senders' FRAGs both start their counters at 0; feed them as if one
    // member had sent an untagged cast, an untagged send and a tagged cast,
    // all with group id 0, and interleave the fragments.
    let bodies = [payload(3000, 10), payload(4000, 11), payload(3500, 12)];
    let cast = wire(harness(A).down(Down::Cast(Msg::new(bodies[0].clone()))));
    let send = wire(harness(A).down(Down::Send { to: m(B), msg: Msg::new(bodies[1].clone()) }));
    let tagged_cast = wire(harness(A).down(Down::Cast(tagged(bodies[2].clone(), 0))));
    let mut b = harness(B);
    let mut out = Vec::new();
    for i in 0..3 {
        out.extend(b.up(cast_from(A, cast[i].clone())));
        out.extend(b.up(send_from(A, send[i].clone())));
        out.extend(b.up(cast_from(A, tagged_cast[i].clone())));
    }
    assert_eq!(
        out,
        vec![
            Out::Up(cast_from(A, Msg::new(bodies[0].clone()))),
            Out::Up(send_from(A, Msg::new(bodies[1].clone()))),
            Out::Up(cast_from(A, tagged(bodies[2].clone(), 0))),
        ]
    );
    assert!(b.drops().is_empty());
}

#[test]
fn own_senders_are_kept_apart() {
    let body_a = payload(3000, 13);
    let body_c = payload(3000, 14);
    let from_a = wire(harness(A).down(Down::Cast(Msg::new(body_a.clone()))));
    let from_c = wire(harness(C).down(Down::Cast(Msg::new(body_c.clone()))));
    let mut b = harness(B);
    let mut out = Vec::new();
    for i in 0..3 {
        out.extend(b.up(cast_from(A, from_a[i].clone())));
        out.extend(b.up(cast_from(C, from_c[i].clone())));
    }
    assert_eq!(out, vec![Out::Up(cast_from(A, Msg::new(body_a))), Out::Up(cast_from(C, Msg::new(body_c)))]);
}

#[test]
fn duplicates_are_counted_not_dropped() {
    let fragments = wire(harness(A).down(Down::Cast(Msg::new(payload(3000, 5)))));
    let mut b = harness(B);
    assert!(b.up(cast_from(A, fragments[0].clone())).is_empty());
    assert!(b.up(cast_from(A, fragments[0].clone())).is_empty());
    assert_eq!(stat(&b, "duplicate_fragments"), 1);
    assert!(b.drops().is_empty());
    assert_eq!(stat(&b, "partial_bytes"), fragments[0].len() as u64 - 6);
}

/// The first `k` fragments of `n` messages of `size` bytes from `from`.
fn first_fragments(from: u16, n: usize, size: usize, k: usize) -> Vec<Vec<Msg>> {
    let mut a = harness(from);
    (0..n).map(|i| wire(a.down(Down::Cast(Msg::new(payload(size, i as u8))))).into_iter().take(k).collect()).collect()
}

#[test]
fn a_sender_holds_at_most_max_partials_per_sender() {
    let mut b = harness_with(B, &[("max_partials_per_sender", 4)], 65_000);
    let msgs = {
        let mut a = harness(A);
        (0..10).map(|i| wire(a.down(Down::Cast(Msg::new(payload(3000, i)))))).collect::<Vec<_>>()
    };
    for m in &msgs {
        assert!(b.up(cast_from(A, m[0].clone())).is_empty());
        assert!(stat(&b, "partials") <= 4);
    }
    assert_eq!((stat(&b, "partials"), stat(&b, "evicted")), (4, 6));
    // Another sender has its own allowance.
    for m in first_fragments(C, 3, 3000, 1) {
        b.up(cast_from(C, m[0].clone()));
    }
    assert_eq!((stat(&b, "partials"), stat(&b, "evicted")), (7, 6));
    // The four newest of A complete; the evicted ones restart from scratch.
    let mut delivered = 0;
    for m in &msgs[6..] {
        for f in &m[1..] {
            delivered += b.up(cast_from(A, f.clone())).len();
        }
    }
    assert_eq!(delivered, 4);
    for f in &msgs[0][1..] {
        assert!(b.up(cast_from(A, f.clone())).is_empty(), "the evicted message lost its first fragment");
    }
}

#[test]
fn held_bytes_stay_within_max_reassembly_bytes() {
    let bound = 8192;
    let pairs = [("max_msg_size", 4096), ("max_reassembly_bytes", bound), ("frag_size", 1000)];
    let mut a = harness_with(A, &pairs, 65_000);
    let mut b = harness_with(B, &pairs, 65_000);
    let msgs: Vec<Vec<Msg>> = (0..6).map(|i| wire(a.down(Down::Cast(Msg::new(payload(4000, i)))))).collect();
    assert_eq!(msgs[0].len(), 5);
    // All but the last fragment of each: about 3900 bytes per partial, so
    // the third partial pushes the first out, and so on.
    for m in &msgs {
        for f in &m[..4] {
            assert!(b.up(cast_from(A, f.clone())).is_empty());
            assert!(stat(&b, "partial_bytes") <= bound);
        }
    }
    assert!(stat(&b, "partial_bytes_max") <= bound);
    assert_eq!((stat(&b, "partials"), stat(&b, "evicted")), (2, 4));
    // The two newest complete.
    assert_eq!(b.up(cast_from(A, msgs[4][4].clone())).len(), 1);
    assert_eq!(b.up(cast_from(A, msgs[5][4].clone())).len(), 1);
    assert!(b.up(cast_from(A, msgs[0][4].clone())).is_empty());
    assert_eq!(stat(&b, "reassembled"), 2);
}

#[test]
fn stalled_partials_expire_with_one_timer() {
    let mut b = harness_with(B, &[("reassembly_timeout_ms", 10_000)], 65_000);
    let msgs = first_fragments(A, 3, 5000, 2);
    let ms = Instant::from_millis;
    b.up(cast_from(A, msgs[0][0].clone()));
    assert_eq!(b.next_timer(), Some(ms(10_000)));
    b.advance(ms(4_000));
    b.up(cast_from(A, msgs[1][0].clone()));
    b.advance(ms(8_000));
    // Progress on the first partial postpones its expiry.
    b.up(cast_from(A, msgs[0][1].clone()));
    b.up(cast_from(A, msgs[2][0].clone()));
    assert_eq!(b.next_timer(), Some(ms(10_000)), "one timer, not one per message");
    assert!(b.advance(ms(10_000)).is_empty());
    assert_eq!((stat(&b, "expired"), stat(&b, "partials")), (0, 3));
    assert_eq!(b.next_timer(), Some(ms(14_000)));
    b.advance(ms(14_000));
    assert_eq!((stat(&b, "expired"), stat(&b, "partials")), (1, 2));
    b.advance(ms(18_000));
    assert_eq!((stat(&b, "expired"), stat(&b, "partials"), stat(&b, "partial_bytes")), (3, 0, 0));
    assert_eq!(b.next_timer(), None);
}

#[test]
fn a_late_duplicate_starts_a_partial_that_expires() {
    // FRAG does not remember completed messages: a reliability layer above
    // may need a retransmission of one it dropped (a message of a view it has
    // not installed yet), and FRAG cannot tell that from a late duplicate.
    let mut b = harness(B);
    let fragments = wire(harness(A).down(Down::Cast(tagged(payload(3000, 6), 5))));
    let delivered: usize = fragments.iter().map(|f| b.up(cast_from(A, f.clone())).len()).sum();
    assert_eq!(delivered, 1);
    assert!(b.up(cast_from(A, fragments[1].clone())).is_empty());
    assert_eq!(stat(&b, "partials"), 1);
    assert_eq!(b.next_timer(), Some(Instant::from_millis(2_000)), "the default idle timeout");
    b.advance(Instant::from_millis(2_000));
    assert_eq!((stat(&b, "partials"), stat(&b, "expired")), (0, 1));
}

#[test]
fn completing_the_last_partial_disarms_the_timer() {
    let mut b = harness(B);
    let fragments = wire(harness(A).down(Down::Cast(Msg::new(payload(2000, 6)))));
    b.up(cast_from(A, fragments[0].clone()));
    assert!(b.next_timer().is_some());
    b.up(cast_from(A, fragments[1].clone()));
    assert_eq!(b.next_timer(), None);
}

#[test]
fn a_view_change_drops_partials_of_departed_members() {
    let mut b = harness(B);
    let from_a = first_fragments(A, 2, 3000, 1);
    let from_c = first_fragments(C, 3, 3000, 1);
    for m in &from_a {
        b.up(cast_from(A, m[0].clone()));
    }
    for m in &from_c {
        b.up(cast_from(C, m[0].clone()));
    }
    let view = View::initial(vec![m(A), m(B)]).unwrap();
    assert_eq!(b.down(Down::View(view.clone())), vec![Out::Down(Down::View(view.clone()))]);
    assert_eq!((stat(&b, "partials"), stat(&b, "departed")), (2, 3));
    let alone = View::initial(vec![m(B)]).unwrap();
    assert_eq!(b.up(Up::View(alone.clone())), vec![Out::Up(Up::View(alone))]);
    assert_eq!((stat(&b, "partials"), stat(&b, "departed"), stat(&b, "partial_bytes")), (0, 5, 0));
    assert_eq!(b.next_timer(), None);
}

#[test]
fn other_events_pass_through_unchanged() {
    let mut h = harness(A);
    assert_eq!(h.down(Down::Flush { token: 3 }), vec![Out::Down(Down::Flush { token: 3 })]);
    assert_eq!(h.down(Down::Leave), vec![Out::Down(Down::Leave)]);
    assert_eq!(h.up(Up::Block), vec![Out::Up(Up::Block)]);
    assert_eq!(h.up(Up::Suspect(m(C))), vec![Out::Up(Up::Suspect(m(C)))]);
}

#[test]
fn a_message_over_max_msg_size_is_refused_with_a_problem() {
    let mut a = harness_with(A, &[("max_msg_size", 1024), ("max_reassembly_bytes", 4096)], 65_000);
    let out = a.down(Down::Cast(Msg::new(payload(1025, 0))));
    let expected = Problem { layer: "FRAG", what: "a 1025-byte message exceeds max_msg_size (1024 bytes); it was not sent".into() };
    assert_eq!(out, vec![Out::Up(Up::Problem(expected))]);
    assert_eq!(a.down(Down::Send { to: m(B), msg: Msg::new(payload(1024, 0)) }).len(), 1);
    assert_eq!((stat(&a, "too_large"), stat(&a, "sent_whole"), stat(&a, "sent_fragments")), (1, 1, 0));
}

#[test]
fn a_datagram_too_small_for_any_fragment_is_refused() {
    let mut a = harness_with(A, &[], 14);
    let out = a.down(Down::Cast(tagged(payload(100, 0), u64::MAX)));
    assert!(matches!(&out[..], [Out::Up(Up::Problem(_))]), "{out:?}");
    assert_eq!(stat(&a, "too_large"), 1);
}

#[test]
fn hostile_headers_are_dropped_by_reason() {
    let mut b = harness_with(B, &[("frag_size", 1000)], 65_000);
    let max = 16 * 1024 * 1024;
    let cases: Vec<(Msg, &str)> = vec![
        (Msg::empty(), "bad_header"),
        (Msg::new(Bytes::from_static(&[0x02, 0, 0, 2, 10])), "bad_kind"),
        (Msg::new(Bytes::from_static(&[0xff])), "bad_kind"),
        (Msg::new(Bytes::from_static(&[0x05, 0, 0, 2, 10])), "bad_kind"),
        (Msg::new(Bytes::from_static(&[0x01, 0, 0])), "bad_header"),
        (Msg::new(Bytes::from_static(&[0x03, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])), "bad_header"),
        (frag_bytes(fh(false, 0, 0, 0, 10), &[1; 5]), "bad_count"),
        (frag_bytes(fh(false, 0, 0, 1, 10), &[1; 10]), "bad_count"),
        (frag_bytes(fh(false, 0, 0, u64::MAX, 10), &[1; 5]), "bad_count"),
        (frag_bytes(fh(false, 0, 0, 11, 10), &[1; 1]), "bad_count"),
        (frag_bytes(fh(false, 0, 2, 2, 10), &[1; 5]), "bad_index"),
        (frag_bytes(fh(false, 0, u64::MAX, 2, 10), &[1; 5]), "bad_index"),
        (frag_bytes(fh(true, 0, 0, 2, max + 1), &[1; 5]), "total_too_large"),
        (frag_bytes(fh(true, 0, 0, 2, 1 << 30), &[1; 5]), "total_too_large"),
        (frag_bytes(fh(true, 0, 0, 2, u64::MAX), &[1; 5]), "total_too_large"),
        // Lengths that no cut of the message explains.
        (frag_bytes(fh(false, 0, 0, 2, 10), &[]), "bad_length"),
        (frag_bytes(fh(false, 0, 0, 2, 10), &[1; 4]), "bad_length"),
        (frag_bytes(fh(false, 0, 0, 2, 10), &[1; 10]), "bad_length"),
        (frag_bytes(fh(false, 0, 1, 2, 10), &[1; 6]), "bad_length"),
        (frag_bytes(fh(false, 0, 2, 3, 10), &[1; 3]), "bad_length"),
        (frag_bytes(fh(false, 0, 0, 2, 2000), &[1; 1000]), "bad_length"),
    ];
    for (msg, reason) in cases {
        let before = b.dropped(reason);
        let shown = format!("{msg:?}");
        assert!(b.up(cast_from(A, msg)).is_empty(), "{shown}");
        assert_eq!(b.dropped(reason), before + 1, "{shown} should be dropped as {reason}: {:?}", b.drops());
    }
    assert_eq!(stat(&b, "partials"), 0);
}

#[test]
fn a_fragment_contradicting_its_partial_is_dropped() {
    let mut b = harness(B);
    // Fragment 0 of 3 with 40 bytes fixes the shape: total 100, L 40.
    assert!(b.up(cast_from(A, frag_bytes(fh(false, 9, 0, 3, 100), &[1; 40]))).is_empty());
    // Each of these is consistent on its own, but not with that shape: another
    // total; another count; L = 45; a last fragment implying L = 35.
    let conflicting = [(fh(false, 9, 1, 3, 101), 40), (fh(false, 9, 1, 2, 80), 40), (fh(false, 9, 1, 3, 100), 45), (fh(false, 9, 2, 3, 100), 30)];
    for (h, len) in conflicting {
        assert!(b.up(cast_from(A, frag_bytes(h, &vec![2; len]))).is_empty());
    }
    assert_eq!(b.dropped("conflicting_fragment"), 4, "{:?}", b.drops());
    assert_eq!(stat(&b, "partial_bytes"), 64, "40 bytes, charged at least 64");
    // The honest rest completes it.
    assert!(b.up(cast_from(A, frag_bytes(fh(false, 9, 2, 3, 100), &[3; 20]))).is_empty());
    let out = b.up(cast_from(A, frag_bytes(fh(false, 9, 1, 3, 100), &[2; 40])));
    let expected: Vec<u8> = [[1u8; 40].as_slice(), &[2; 40], &[3; 20]].concat();
    assert_eq!(out, vec![Out::Up(cast_from(A, Msg::new(expected.into())))]);
}

#[test]
fn a_huge_declared_length_costs_only_what_arrived() {
    let mut b = harness(B);
    let max = 16 * 1024 * 1024u64;
    // A first fragment of a claimed 16 MiB message: only its 1000 bytes are held.
    let h = fh(true, 1, 0, max.div_ceil(1000), max);
    assert!(b.up(cast_from(A, frag_bytes(h, &[0; 1000]))).is_empty());
    assert_eq!((stat(&b, "partials"), stat(&b, "partial_bytes")), (1, 1000));
    // The last fragment of another such message.
    let h = fh(true, 2, max.div_ceil(1000) - 1, max.div_ceil(1000), max);
    assert!(b.up(cast_from(A, frag_bytes(h, &vec![0; (max % 1000) as usize]))).is_empty());
    assert_eq!((stat(&b, "partials"), stat(&b, "partial_bytes")), (2, 1000 + (max % 1000).max(64)));
    // A tiny fragment is charged its bookkeeping.
    let h = fh(false, 3, 0, 10, 10);
    assert!(b.up(cast_from(A, frag_bytes(h, &[0; 1]))).is_empty());
    assert_eq!(stat(&b, "partial_bytes"), 1000 + (max % 1000).max(64) + 64);
    assert!(b.drops().is_empty(), "{:?}", b.drops());
}

#[test]
fn the_descriptor_matches_the_headers_written() {
    let p = Params::defaults(FRAG.params).unwrap();
    assert!((FRAG.build)(&p).is_ok());
    let max = p.u64("max_msg_size");
    assert_eq!((FRAG.max_header_len)(&p), 1 + 10 + 4 + 4 + 4);
    let worst = fh(true, u64::MAX, max - 1, max, max);
    assert_eq!(worst.encoded_len(), max_fragment_header_len(max));
    assert_eq!(FRAG.provides, Props::LARGE_MESSAGES);
    assert_eq!(FRAG.requires, Props::NONE);
    let refused = (FRAG.build)(&params(&[("max_msg_size", 1 << 20), ("max_reassembly_bytes", 1 << 20)]));
    assert!(refused.is_err_and(|e| e.contains("twice")));
}

#[test]
fn header_lengths_are_as_documented() {
    let mut a = harness(A);
    let untagged = wire(a.down(Down::Cast(Msg::new(payload(65_536, 0)))));
    let tagged_out = wire(a.down(Down::Cast(tagged(payload(65_536, 0), u64::MAX))));
    let header_len = |f: &Msg| match decode(f) {
        Header::Fragment(h) => h.encoded_len(),
        Header::Whole => 1,
    };
    assert_eq!(untagged.iter().map(header_len).max(), Some(7));
    assert_eq!(tagged_out.iter().map(header_len).max(), Some(16));
}

/// Two engines over the registry's FRAG: a large cast reaches the other
/// member and comes back to the sender through the loopback, once each.
#[test]
fn a_stack_of_frag_carries_a_large_cast() {
    use strata_stack::{AppEvent, Stack, StackConfig};
    let registry = crate::builtin();
    let members = vec![m(A), m(B)];
    let now = Instant::ZERO;
    let mut a = Stack::new(&registry, "FRAG(frag_size=1200)", StackConfig::new("g", m(A), members.clone()), now).unwrap();
    let mut b = Stack::new(&registry, "FRAG(frag_size=1200)", StackConfig::new("g", m(B), members), now).unwrap();
    let body = payload(100_000, 42);
    a.cast(now, body.clone()).unwrap();
    let mut datagrams = 0;
    while let Some(t) = a.poll_transmit() {
        assert!(t.msg.len() <= 1200 + strata_stack::engine::FRAME_HEADER_MAX);
        b.handle_datagram(now, t.msg.to_bytes());
        datagrams += 1;
    }
    assert_eq!(datagrams, 100_000usize.div_ceil(1200 - 7));
    for s in [&mut a, &mut b] {
        let ev = s.poll_event();
        assert!(matches!(&ev, Some(AppEvent::Deliver { from, body: got, .. }) if *from == m(A) && *got == body), "{ev:?}");
        assert_eq!(s.poll_event(), None);
    }
}
