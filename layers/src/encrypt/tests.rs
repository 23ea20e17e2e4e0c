//! ENCRYPT on real stacks over a tiny lossless network (`LoopNet`) with an
//! eavesdropper and an attacker, plus decoder and configuration tests. The
//! simulator adds loss, crashes and random attacks (transport/tests/sim_encrypt.rs).

use super::*;
use crate::builtin;
use quickcheck::quickcheck;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use strata_stack::codec::Writer;
use strata_stack::engine::BuildError;
use strata_stack::harness::net::LoopNet;
use strata_stack::harness::LayerHarness;
use strata_stack::{AppEvent, Instant, Stack, StackConfig};

/// A fresh directory for one test's key files.
fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("strata-encrypt-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_key(path: &std::path::Path, byte: u8) -> String {
    std::fs::write(path, format!("{}\n", to_hex(&[byte; 32]))).unwrap();
    path.display().to_string()
}

/// Member `i`'s identity file (secret `i+1` repeated) and its public key.
fn identity(d: &std::path::Path, i: usize) -> (String, PubKey) {
    let path = d.join(format!("id{i}"));
    write_key(&path, i as u8 + 1);
    (path.display().to_string(), public_key(&Secret::from_bytes([i as u8 + 1; 32])))
}

fn trust_file(d: &std::path::Path, keys: &[PubKey]) -> String {
    let path = d.join("trust");
    let text: String = keys.iter().enumerate().map(|(i, k)| format!("{} member{i}\n", to_hex(k))).collect();
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn addr(i: usize) -> std::net::SocketAddr {
    std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 2, 0, i as u8 + 1)), 7000)
}

fn member(i: usize) -> MemberId {
    MemberId::new(addr(i), 1)
}

/// A stack for member `i` of `n`, joining through the others as seeds.
#[allow(clippy::result_large_err)] // as `Stack::new`
fn stack(spec: &str, i: usize, n: usize, now: Instant) -> Result<Stack, BuildError> {
    let seeds = (0..n).filter(|j| *j != i).map(|j| MemberId::new(addr(j), 0)).collect();
    let mut cfg = StackConfig::new("g", member(i), seeds);
    cfg.seed = i as u64;
    Stack::new(&builtin(), spec, cfg, now)
}

fn net(specs: &[String]) -> LoopNet {
    let mut net = LoopNet::new();
    for (i, spec) in specs.iter().enumerate() {
        net.push(stack(spec, i, specs.len(), net.now()).expect("stack builds"));
    }
    net
}

fn views(net: &LoopNet, i: usize) -> Vec<Vec<MemberId>> {
    net.events(i).iter().filter_map(|e| if let AppEvent::View(v) = e { Some(v.members().to_vec()) } else { None }).collect()
}

fn delivered(net: &LoopNet, i: usize) -> Vec<Bytes> {
    net.events(i).iter().filter_map(|e| if let AppEvent::Deliver { body, .. } = e { Some(body.clone()) } else { None }).collect()
}

fn problems(net: &LoopNet, i: usize) -> Vec<String> {
    net.events(i).iter().filter_map(|e| if let AppEvent::Problem(p) = e { Some(p.what.clone()) } else { None }).collect()
}

fn encrypt_stats(net: &LoopNet, i: usize) -> strata_stack::LayerStats {
    net.stack(i).unwrap().stats().into_iter().find(|l| l.name == "ENCRYPT").unwrap()
}

fn dropped(net: &LoopNet, i: usize, reason: &str) -> u64 {
    encrypt_stats(net, i).dropped.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
}

fn cast(net: &mut LoopNet, i: usize, body: &[u8]) {
    let now = net.now();
    net.stack_mut(i).unwrap().cast(now, Bytes::copy_from_slice(body)).unwrap();
    net.settle();
}

/// Forms a group of `specs.len()` members and checks they all see it.
fn formed(specs: &[String]) -> LoopNet {
    let mut net = net(specs);
    net.run_for(Duration::from_secs(3));
    for i in 0..specs.len() {
        let v = net.stack(i).unwrap().view().clone();
        assert_eq!(v.len(), specs.len(), "member {i} is in the full view: {v:?}");
    }
    net
}

fn shared_spec(key: &str, above: &str) -> String {
    format!("ENCRYPT(key_file={key}):NAK{above}")
}

#[test]
fn members_with_the_key_talk_and_the_wire_shows_no_payload() {
    let d = dir("talk");
    let key = write_key(&d.join("k"), 7);
    let specs: Vec<String> = (0..3).map(|_| shared_spec(&key, ":VSYNC")).collect();
    let mut net = formed(&specs);
    net.capture = true;
    let secret = b"attack at dawn, bring the cheese";
    for i in 0..3 {
        cast(&mut net, i, secret);
    }
    net.run_for(Duration::from_millis(500));
    for i in 0..3 {
        assert_eq!(delivered(&net, i).iter().filter(|b| b.as_ref() == secret).count(), 3, "member {i} delivers all three");
        let s = encrypt_stats(&net, i);
        assert!(s.counters.get("opened").unwrap() > 0 && s.counters.get("sessions_verified").unwrap() >= 2, "{s:?}");
    }
    assert!(!net.wire().is_empty());
    for c in net.wire() {
        assert!(!c.data.windows(8).any(|w| w == &secret[..8]), "plaintext on the wire");
    }
}

/// The frame header of a datagram and the rest.
fn split_frame(data: &[u8]) -> (Vec<u8>, MemberId, Vec<u8>) {
    let mut r = Reader::new(data);
    let head: Vec<u8> = r.bytes(10).unwrap().to_vec();
    let from = MemberId::decode(&mut r).unwrap();
    (head, from, r.rest().to_vec())
}

fn frame(head: &[u8], from: MemberId, rest: &[u8]) -> Bytes {
    let mut w = Writer::new();
    w.bytes(head);
    from.encode(&mut w);
    w.bytes(rest);
    Bytes::copy_from_slice(w.as_slice())
}

/// Everything an attacker without the key can do to a formed group of 3:
/// junk, forged frames, bit flips, truncations, oversized lengths,
/// rewritten senders, replays. Nothing is delivered, no view changes,
/// nothing panics, the held state stays bounded, and each is counted.
#[test]
fn an_attacker_without_the_key_changes_nothing() {
    let d = dir("attack");
    let key = write_key(&d.join("k"), 9);
    let specs: Vec<String> = (0..3).map(|_| shared_spec(&key, ":VSYNC")).collect();
    let mut net = formed(&specs);
    net.capture = true;
    for i in 0..3 {
        cast(&mut net, i, format!("m{i}").as_bytes());
    }
    net.run_for(Duration::from_millis(300));
    let captured: Vec<_> = net.wire().to_vec();
    let before: Vec<(usize, usize)> = (0..3).map(|i| (delivered(&net, i).len(), views(&net, i).len())).collect();
    let mut rng = strata_stack::Rng::new(42);
    let sample = &captured[captured.len() - 1].data;
    let (head, _, _) = split_frame(sample);
    let mut injected = 0;
    for c in &captured {
        let targets: Vec<usize> = (0..3).filter(|j| *j != c.from).collect();
        let (_, from, rest) = split_frame(&c.data);
        for &t in &targets {
            // Replays, as is.
            net.inject(t, c.data.clone());
            // Bit flips anywhere after the frame header.
            for _ in 0..8 {
                let mut bytes = rest.clone();
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
                net.inject(t, frame(&head, from, &bytes));
            }
            // Truncations.
            for cut in [0, 1, 4, 20, rest.len() / 2, rest.len() - 1] {
                net.inject(t, frame(&head, from, &rest[..cut.min(rest.len())]));
            }
            // Another member as the sender.
            let other = member((c.from + 1) % 3);
            net.inject(t, frame(&head, other, &rest));
            injected += 16;
        }
    }
    // Forged packets: random bodies under every sealed kind, and huge
    // claimed lengths in what follows the header.
    for kind in [wire::SEALED_GROUP, wire::SEALED_ADMIT, wire::SEALED_PAIR, wire::NOTICE, 0, 0xFF] {
        for _ in 0..20 {
            let mut body = vec![kind];
            body.extend((0..rng.below(200)).map(|_| rng.next_u64() as u8));
            net.inject(0, frame(&head, member(1), &body));
            injected += 1;
        }
    }
    let mut huge = vec![wire::SEALED_GROUP];
    huge.extend_from_slice(&[0xFF; 64]);
    net.inject(0, frame(&head, member(2), &huge));
    // A forged NAK-style request and view would have to open first: any
    // sealed packet with the wrong key is refused.
    net.run_for(Duration::from_secs(5));
    for (i, &(d0, v0)) in before.iter().enumerate() {
        assert_eq!(delivered(&net, i).len(), d0, "member {i} delivered nothing new");
        assert_eq!(views(&net, i).len(), v0, "member {i} saw no view change");
        let s = encrypt_stats(&net, i);
        assert_eq!(s.counters.get("held"), Some(0), "nothing stays held at {i}");
        assert!(s.counters.get("sessions").unwrap() <= 4, "no session for forgeries at {i}: {s:?}");
    }
    let total_dropped: u64 = (0..3).map(|i| encrypt_stats(&net, i).dropped.iter().map(|(_, n)| n).sum::<u64>()).sum();
    let engine_dropped: u64 = (0..3).map(|i| net.stack(i).unwrap().engine_stats().dropped.iter().map(|(_, n)| n).sum::<u64>()).sum();
    assert!(total_dropped + engine_dropped >= injected as u64, "every injected packet is counted: {total_dropped}+{engine_dropped} of {injected}");
    for reason in ["replay", "auth_failed", "truncated", "bad_kind"] {
        assert!((0..3).map(|i| dropped(&net, i, reason)).sum::<u64>() > 0, "some {reason}");
    }
    // The group still works.
    cast(&mut net, 0, b"after");
    for i in 0..3 {
        assert_eq!(delivered(&net, i).last().map(|b| b.as_ref()), Some(&b"after"[..]));
    }
}

/// Packets captured from a member that has since restarted are not
/// delivered to a member that never saw them: their session cannot answer
/// the challenge.
#[test]
fn replayed_packets_of_a_dead_session_are_never_delivered() {
    let d = dir("dead");
    let key = write_key(&d.join("k"), 3);
    let spec = format!("ENCRYPT(key_file={key},retries=3):NAK");
    // Static membership of 3: no VSYNC to interfere.
    let mut net = LoopNet::new();
    let all: Vec<MemberId> = (0..3).map(member).collect();
    let build = |i: usize, now: Instant, seed: u64| {
        let mut cfg = StackConfig::new("g", member(i), all.clone());
        cfg.seed = seed;
        Stack::new(&builtin(), &spec, cfg, now).unwrap()
    };
    net.push(build(0, Instant::ZERO, 1));
    net.push(build(1, Instant::ZERO, 2));
    net.capture = true;
    cast(&mut net, 0, b"old");
    net.run_for(Duration::from_millis(100));
    let old: Vec<Bytes> = net.wire().iter().filter(|c| c.from == 0).map(|c| c.data.clone()).collect();
    assert_eq!(delivered(&net, 1).len(), 1);
    // Member 0 restarts (new session); member 2 starts and never saw "old".
    net.set(0, Some(build(0, net.now(), 3)));
    net.push(build(2, net.now(), 4));
    for p in &old {
        net.inject(2, p.clone());
        net.inject(1, p.clone());
    }
    net.run_for(Duration::from_secs(3));
    assert!(delivered(&net, 2).is_empty(), "the late member delivers nothing replayed: {:?}", delivered(&net, 2));
    assert_eq!(delivered(&net, 1).len(), 1, "the member that saw it delivers it once");
    assert!(dropped(&net, 2, "unverified_expired") > 0, "{:?}", encrypt_stats(&net, 2));
    assert!(dropped(&net, 1, "replay") > 0);
    assert!(dropped(&net, 0, "foreign_challenge") > 0, "the new incarnation ignores challenges to the old session");
    // The restarted member talks to both.
    cast(&mut net, 0, b"new");
    net.run_for(Duration::from_millis(500));
    assert_eq!(delivered(&net, 2), vec![Bytes::from_static(b"new")]);
}

#[test]
fn a_member_with_another_key_never_joins_and_is_told_why() {
    let d = dir("wrongkey");
    let good = write_key(&d.join("good"), 1);
    let bad = write_key(&d.join("bad"), 2);
    let mut specs: Vec<String> = (0..2).map(|_| shared_spec(&good, ":VSYNC")).collect();
    specs.push(shared_spec(&bad, ":VSYNC"));
    let mut net = net(&specs);
    net.run_for(Duration::from_secs(5));
    for i in 0..2 {
        assert_eq!(net.stack(i).unwrap().view().members(), &[member(0), member(1)], "the good members form a group without it");
        assert!(dropped(&net, i, "wrong_key") > 0);
    }
    assert_eq!(net.stack(2).unwrap().view().len(), 1, "the member with the wrong key is alone");
    let told = problems(&net, 2);
    assert!(told.iter().any(|p| p.contains("different key")), "it hears why: {told:?}");
    assert!(problems(&net, 0).iter().any(|p| p.contains("another group key")), "{:?}", problems(&net, 0));
}

#[test]
fn a_missing_or_bad_key_fails_the_build_naming_the_file() {
    let d = dir("badfile");
    let missing = d.join("nope").display().to_string();
    let Err(err) = stack(&format!("ENCRYPT(key_file={missing}):NAK"), 0, 1, Instant::ZERO) else { panic!("a missing key file is refused") };
    let text = err.to_string();
    assert!(matches!(err, BuildError::Init { layer: "ENCRYPT", .. }) && text.contains(&missing), "{text}");
    let short = d.join("short");
    std::fs::write(&short, "abcd\n").unwrap();
    let text = stack(&format!("ENCRYPT(key_file={}):NAK", short.display()), 0, 1, Instant::ZERO).err().unwrap().to_string();
    assert!(text.contains(&short.display().to_string()) && text.contains("64 hex digits"), "{text}");
    let text = stack("ENCRYPT(key_env=STRATA_TEST_NO_SUCH_VARIABLE):NAK", 0, 1, Instant::ZERO).err().unwrap().to_string();
    assert!(text.contains("STRATA_TEST_NO_SUCH_VARIABLE"), "{text}");
    let text = stack("ENCRYPT:NAK", 0, 1, Instant::ZERO).err().unwrap().to_string();
    assert!(text.contains("key_file"), "{text}");
    let key = write_key(&d.join("k"), 1);
    let text = stack(&format!("ENCRYPT(key_file={key},key_env=X):NAK"), 0, 1, Instant::ZERO).err().unwrap().to_string();
    assert!(text.contains("exclusive"), "{text}");
    let text = stack(&format!("ENCRYPT(key_file={key},identity={key}):NAK"), 0, 1, Instant::ZERO).err().unwrap().to_string();
    assert!(text.contains("go together"), "{text}");
}

#[test]
fn the_key_can_come_from_the_environment() {
    std::env::set_var("STRATA_TEST_ENCRYPT_KEY", to_hex(&[5; 32]));
    let d = dir("env");
    let file = write_key(&d.join("k"), 5);
    let specs = vec!["ENCRYPT(key_env=STRATA_TEST_ENCRYPT_KEY):NAK:VSYNC".to_string(), shared_spec(&file, ":VSYNC")];
    let mut net = formed(&specs);
    cast(&mut net, 1, b"x");
    assert_eq!(delivered(&net, 0).len(), 1, "a key from the environment equals the same key from a file");
}

fn rotation_specs(d: &std::path::Path, n: usize, trusted: usize) -> Vec<String> {
    let key = write_key(&d.join("k"), 11);
    let ids: Vec<(String, PubKey)> = (0..n).map(|i| identity(d, i)).collect();
    let trust = trust_file(d, &ids.iter().take(trusted).map(|(_, p)| *p).collect::<Vec<_>>());
    ids.iter().map(|(id, _)| format!("ENCRYPT(key_file={key},identity={id},trust={trust}):NAK:VSYNC")).collect()
}

/// Rotation: after member 2 leaves, the others' traffic is sealed with
/// sender keys it never receives; replayed to it, nothing opens.
#[test]
fn a_departed_member_cannot_read_traffic_after_the_rotation() {
    let d = dir("rotate");
    let specs = rotation_specs(&d, 3, 3);
    let mut net = formed(&specs);
    cast(&mut net, 0, b"before");
    net.run_for(Duration::from_millis(200));
    for i in 0..3 {
        assert_eq!(delivered(&net, i).len(), 1, "member {i} reads traffic while a member");
    }
    let now = net.now();
    net.stack_mut(2).unwrap().leave(now);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.stack(0).unwrap().view().members(), &[member(0), member(1)]);
    // Keep member 2's stack (it left, but holds every key it ever had)
    // aside, and show it everything sent from now on.
    let departed = encrypt_stats(&net, 2);
    net.capture = true;
    for k in 0..5 {
        cast(&mut net, 0, format!("after{k}").as_bytes());
        cast(&mut net, 1, format!("after{k}").as_bytes());
    }
    net.run_for(Duration::from_millis(500));
    assert_eq!(delivered(&net, 1).len(), 11, "the remaining members lose nothing across the rotation");
    let later: Vec<Bytes> = net.wire().iter().map(|c| c.data.clone()).collect();
    assert!(!later.is_empty());
    let delivered_before = delivered(&net, 2).len();
    for p in later {
        net.inject(2, p);
    }
    net.run_for(Duration::from_secs(3));
    assert_eq!(delivered(&net, 2).len(), delivered_before, "nothing sent after the rotation opens at the departed member");
    let after = encrypt_stats(&net, 2);
    assert_eq!(after.counters.get("keys_received"), departed.counters.get("keys_received"), "it got no new key");
    assert!(encrypt_stats(&net, 0).counters.get("rotations").unwrap() >= 3);
    assert!(dropped(&net, 0, "key_refused") > 0 || dropped(&net, 1, "key_refused") > 0 || dropped(&net, 2, "unknown_key") > 0);
}

#[test]
fn an_identity_missing_from_the_trust_file_cannot_join() {
    let d = dir("untrusted");
    let specs = rotation_specs(&d, 3, 2);
    // Member 2's own key is not in the shared trust file: its build fails
    // locally (it would not trust itself); give it a trust file with all.
    let mut specs = specs;
    let all: Vec<PubKey> = (0..3).map(|i| identity(&d, i).1).collect();
    let own_trust = d.join("trust-all");
    std::fs::write(&own_trust, all.iter().map(|k| format!("{}\n", to_hex(k))).collect::<String>()).unwrap();
    specs[2] = specs[2].replace(&d.join("trust").display().to_string(), &own_trust.display().to_string());
    let net = {
        let mut net = net(&specs);
        net.run_for(Duration::from_secs(5));
        net
    };
    assert_eq!(net.stack(0).unwrap().view().members(), &[member(0), member(1)]);
    assert_eq!(net.stack(2).unwrap().view().len(), 1);
    assert!(dropped(&net, 0, "untrusted") > 0);
    assert!(problems(&net, 2).iter().any(|p| p.contains("trust file")), "{:?}", problems(&net, 2));
}

#[test]
fn a_trust_file_without_the_own_identity_is_refused() {
    let d = dir("selftrust");
    let specs = rotation_specs(&d, 3, 2);
    let text = stack(&specs[2], 2, 3, Instant::ZERO).err().unwrap().to_string();
    assert!(text.contains("own public key"), "{text}");
}

fn harness() -> LayerHarness {
    let d = dir("harness");
    let key = write_key(&d.join("k"), 1);
    let mut p = Params::defaults(ENCRYPT.params).unwrap();
    p.set("key_file", strata_stack::ParamValue::Str(key));
    let view = View::initial(vec![member(0), member(1)]).unwrap();
    LayerHarness::boxed("ENCRYPT", (ENCRYPT.build)(&p).unwrap(), member(0), view, 65_000)
}

quickcheck! {
    fn random_bytes_never_panic(data: Vec<u8>, cast: bool) -> bool {
        let mut h = harness();
        let msg = Msg::new(Bytes::from(data));
        let out = h.up(if cast { Up::Cast { from: member(1), msg } } else { Up::Send { from: member(1), msg } });
        // Nothing unauthenticated is ever passed up.
        out.iter().all(|o| !matches!(o, strata_stack::harness::Out::Up(Up::Cast { .. } | Up::Send { .. })))
    }
}

#[test]
fn written_above_nak_it_still_runs_at_the_bottom() {
    let d = dir("placement");
    let key = write_key(&d.join("k"), 4);
    let s = stack(&format!("FRAG:NAK:ENCRYPT(key_file={key}):CAUSAL:VSYNC:TOTAL"), 0, 1, Instant::ZERO).unwrap();
    assert_eq!(s.canonical(), format!("ENCRYPT(key_file={key}):FRAG:NAK:CAUSAL:VSYNC:TOTAL"));
    let names: Vec<&str> = s.stats().iter().map(|l| l.name).collect();
    assert_eq!(names[0], "ENCRYPT", "the bottom layer: {names:?}");
}

/// A packet that never reached a member, replayed to it long after its
/// sender's later packets did, is refused as stale (NAK would have sent it
/// again with a fresh counter).
#[test]
fn a_captured_packet_replayed_late_is_stale_even_if_never_seen() {
    let d = dir("stale");
    let key = write_key(&d.join("k"), 6);
    let spec = format!("ENCRYPT(key_file={key},max_delay_ms=100)");
    let all: Vec<MemberId> = (0..3).map(member).collect();
    let build = |i: usize, now: Instant| {
        let mut cfg = StackConfig::new("g", member(i), all.clone());
        cfg.seed = i as u64;
        Stack::new(&builtin(), &spec, cfg, now).unwrap()
    };
    let mut net = LoopNet::new();
    for i in 0..3 {
        net.push(build(i, Instant::ZERO));
    }
    cast(&mut net, 0, b"first");
    net.set(2, None);
    net.capture = true;
    cast(&mut net, 0, b"missed by 2");
    let missed = net.wire().last().unwrap().data.clone();
    net.set(2, Some(build(2, net.now())));
    for k in 0..5 {
        cast(&mut net, 0, format!("later{k}").as_bytes());
        net.run_for(Duration::from_millis(100));
    }
    let before = delivered(&net, 2).len();
    net.inject(2, missed);
    net.run_for(Duration::from_millis(500));
    assert_eq!(delivered(&net, 2).len(), before, "the late replay is not delivered");
    assert_eq!(dropped(&net, 2, "stale"), 1, "{:?}", encrypt_stats(&net, 2));
}

/// Two members of a fixed group on a shared key, each having cast once so
/// that each verified the other's session; capture on.
fn verified_pair(test: &str, params: &str) -> (LoopNet, String, Vec<u8>) {
    let d = dir(test);
    let key = write_key(&d.join("k"), 8);
    let spec = format!("ENCRYPT(key_file={key}{params})");
    let all: Vec<MemberId> = (0..2).map(member).collect();
    let mut net = LoopNet::new();
    for i in 0..2 {
        let mut cfg = StackConfig::new("g", member(i), all.clone());
        cfg.seed = i as u64;
        net.push(Stack::new(&builtin(), &spec, cfg, Instant::ZERO).unwrap());
    }
    net.capture = true;
    cast(&mut net, 0, b"a");
    cast(&mut net, 1, b"b");
    net.run_for(Duration::from_millis(100));
    for i in 0..2 {
        assert_eq!(delivered(&net, i).len(), 2);
        assert_eq!(encrypt_stats(&net, i).counters.get("sessions_verified"), Some(1));
    }
    let (head, _, _) = split_frame(&net.wire()[0].data);
    (net, key, head)
}

/// A packet that opens with the group key (the test knows it), claiming a
/// fresh session of member `from`: what a replay of a long-dead process
/// looks like.
fn sealed_from_new_session(head: &[u8], from: MemberId, session: u8, body: &[u8]) -> Bytes {
    let key = SealKey::new(derive(&[8; 32], "group", "g"));
    let outer = Outer { kind: SEALED_GROUP, key_id: key.id, sender_pub: None, session: [session; SESSION_LEN], counter: 1 };
    frame(head, from, &seal(&key, &outer, &Binding::cast(from), DATA, &[body]))
}

#[test]
fn sessions_that_cannot_prove_themselves_are_bounded_and_never_evict_a_verified_member() {
    let (mut net, _, head) = verified_pair("bounds", ",max_sessions=8,max_held=4,retries=3");
    for s in 0..50u8 {
        net.inject(0, sealed_from_new_session(&head, member(1), s, b"from the past"));
        let stats = encrypt_stats(&net, 0);
        assert!(stats.counters.get("sessions").unwrap() <= 8, "{stats:?}");
        assert!(stats.counters.get("held").unwrap() <= 4, "{stats:?}");
    }
    assert!(dropped(&net, 0, "held_overflow") > 0, "{:?}", encrypt_stats(&net, 0));
    // The real member 1 is still verified: its next cast goes up at once.
    cast(&mut net, 1, b"still here");
    assert_eq!(delivered(&net, 0).last().map(|b| b.as_ref()), Some(&b"still here"[..]));
    assert_eq!(encrypt_stats(&net, 0).counters.get("sessions_verified"), Some(1), "no new verification was needed");
    // Member 1 ignores the challenges to sessions it does not own, so the
    // held packets expire and none is delivered.
    net.run_for(Duration::from_secs(3));
    assert!(dropped(&net, 1, "foreign_challenge") > 0);
    assert!(dropped(&net, 0, "unverified_expired") > 0);
    assert_eq!(encrypt_stats(&net, 0).counters.get("held"), Some(0));
    assert!(delivered(&net, 0).iter().all(|b| b.as_ref() != b"from the past"));
}

#[test]
fn notices_are_rate_limited_and_problem_reports_bounded() {
    let (mut net, _, head) = verified_pair("notices", "");
    // A third process with another key, in the same fixed group.
    let d = dir("notices-other");
    let other = write_key(&d.join("k"), 9);
    let mut cfg = StackConfig::new("g", member(2), (0..3).map(member).collect());
    cfg.seed = 2;
    net.push(Stack::new(&builtin(), &format!("ENCRYPT(key_file={other})"), cfg, net.now()).unwrap());
    for k in 0..50 {
        cast(&mut net, 2, format!("x{k}").as_bytes());
    }
    assert_eq!(dropped(&net, 0, "wrong_key"), 50);
    assert_eq!(encrypt_stats(&net, 0).counters.get("notices_sent"), Some(1), "one notice a second per address");
    net.run_for(Duration::from_millis(1100));
    cast(&mut net, 2, b"again");
    assert_eq!(encrypt_stats(&net, 0).counters.get("notices_sent"), Some(2));
    // Forged notices: one problem per (address, reason), at most 64, and
    // none about a member this one has verified.
    let before = problems(&net, 0).len();
    net.inject(0, frame(&head, member(1), &notice(NOTICE_WRONG_KEY, 1)));
    assert_eq!(problems(&net, 0).len(), before, "nothing reported about a verified member");
    for i in 0..200u16 {
        let forger = MemberId::new(std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, (i >> 8) as u8, i as u8)), 7000), 1);
        net.inject(0, frame(&head, forger, &notice(NOTICE_WRONG_KEY, 1)));
    }
    assert_eq!(problems(&net, 0).len(), MAX_REPORTED, "reports stop at the bound");
    assert_eq!(encrypt_stats(&net, 0).counters.get("notices_received"), Some(201));
}

#[test]
fn own_casts_come_back_without_being_opened() {
    let (mut net, _, _) = verified_pair("loopback", "");
    let opened = encrypt_stats(&net, 0).counters.get("opened").unwrap();
    cast(&mut net, 0, b"mine");
    assert_eq!(delivered(&net, 0).last().map(|b| b.as_ref()), Some(&b"mine"[..]));
    assert_eq!(encrypt_stats(&net, 0).counters.get("opened").unwrap(), opened, "the loopback copy is the kept plaintext");
    assert_eq!(encrypt_stats(&net, 1).counters.get("opened").unwrap(), opened + 1);
}
