//! The `strata` binary's argument handling: every bad request to `strata node`
//! fails up front with a non-zero status and one line naming the problem, and
//! `strata layers` shows every built-in layer with its parameters.

mod node_support;

use node_support::*;
use std::net::UdpSocket;

/// Runs `strata node` with `args` and checks that it failed cleanly: non-zero
/// status, exactly one stderr line `strata node: ...` containing every one of
/// `mentions`, no panic, nothing on stdout. Returns that line.
fn refused(args: &[&str], mentions: &[&str]) -> String {
    let mut full = vec!["node"];
    full.extend(args);
    let out = run(&full);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "strata {full:?} succeeded: {stderr}");
    assert!(!stderr.contains("panicked"), "strata {full:?} panicked: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "strata {full:?} should print one line, printed: {stderr:?}");
    assert!(stderr.starts_with("strata node: ") && stderr.ends_with('\n'), "{stderr:?}");
    for m in mentions {
        assert!(stderr.contains(m), "strata {full:?}: {stderr:?} does not mention {m:?}");
    }
    assert!(out.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    stderr
}

/// Valid arguments except for what the test replaces; `log` in `dir`.
fn args_with<'a>(log: &'a str, replace: &[(&'a str, &'a str)], drop: &[&str]) -> Vec<&'a str> {
    let mut base: Vec<(&str, &str)> = vec![
        ("--group", "g"),
        ("--stack", "LOSS(percent=0)"),
        ("--transport", "udp"),
        ("--bind", "127.0.0.1:0"),
        ("--casts", "1"),
        ("--size", "10"),
        ("--log", log),
        ("--linger", "0.2"),
    ];
    for (k, v) in replace {
        match base.iter_mut().find(|(bk, _)| bk == k) {
            Some(slot) => slot.1 = v,
            None => base.push((k, v)),
        }
    }
    base.retain(|(k, _)| !drop.contains(k));
    base.into_iter().flat_map(|(k, v)| [k, v]).collect()
}

/// Runs a one-member group with the base arguments changed by `replace`;
/// returns its log, checked to start and stop with its one delivery.
fn run_alone(name: &str, replace: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let dir = scratch_dir(name);
    let log = dir.join("ok.jsonl");
    let log = log.to_str().unwrap();
    let mut args = vec!["node"];
    args.extend(args_with(log, replace, &[]));
    let out = run(&args);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = read_log(std::path::Path::new(log)).unwrap();
    assert_eq!(lines.first().unwrap()["ev"], "start");
    assert_eq!(lines.last().unwrap()["ev"], "stop");
    assert_eq!(lines.last().unwrap()["delivered"], 1);
    let _ = std::fs::remove_dir_all(&dir);
    lines
}

#[test]
fn the_base_arguments_work() {
    // The refusals below differ from this run in one argument only.
    let lines = run_alone("cli-base", &[]);
    assert_eq!(lines[0]["transport"], "udp");
    assert_eq!(lines[0]["bundle"], 8192, "bundling is on by default");
}

#[test]
fn every_transport_says_at_start_what_it_uses() {
    let lines = run_alone("cli-ipmc", &[("--transport", "ipmc"), ("--mcast-addr", "239.77.1.2:23456"), ("--mcast-ttl", "2")]);
    let start = &lines[0];
    assert_eq!(start["transport"], "ipmc");
    assert_eq!(start["mcast_addr"], "239.77.1.2:23456");
    assert_eq!(start["mcast_ttl"], 2);
    assert_eq!(start["mcast_if"], "127.0.0.1", "the default interface is the bind address's");
    assert_eq!(start["bundle"], 8192);
    let lines = run_alone("cli-ipmc-default", &[("--transport", "ipmc"), ("--bundle", "0")]);
    assert_eq!(lines[0]["bundle"], 0, "--bundle 0 turns bundling off");
    let addr: std::net::SocketAddrV4 = lines[0]["mcast_addr"].as_str().unwrap().parse().unwrap();
    assert_eq!(addr.ip().octets()[0], 239, "the default is administratively scoped: {addr}");

    let lines = run_alone("cli-tcptree", &[("--transport", "tcptree"), ("--fanout", "3")]);
    let start = &lines[0];
    assert_eq!(start["transport"], "tcptree");
    assert_eq!(start["fanout"], 3);
    assert_eq!(start["tree_root"], "coordinator");
    // A group of one is the root of its tree, alone.
    assert_eq!(start["tree"], serde_json::json!({"parent": null, "children": [], "level": 0, "depth": 0}));
    let view = lines.iter().find(|l| l["ev"] == "view").unwrap();
    assert_eq!(view["tree"], start["tree"]);
}

#[test]
fn transport_options_are_checked() {
    let log = "/tmp/strata-never-written.jsonl";
    refused(&args_with(log, &[("--fanout", "3")], &[]), &["--fanout", "tcptree", "udp"]);
    refused(&args_with(log, &[("--transport", "tcptree"), ("--mcast-ttl", "3")], &[]), &["--mcast-ttl", "ipmc"]);
    refused(&args_with(log, &[("--mcast-addr", "239.1.2.3:4000")], &[]), &["--mcast-addr", "ipmc"]);
    refused(&args_with(log, &[("--mcast-if", "127.0.0.1")], &[]), &["--mcast-if", "ipmc"]);
    refused(&args_with(log, &[("--transport", "tcptree"), ("--fanout", "0")], &[]), &["--fanout", "0"]);
    refused(&args_with(log, &[("--transport", "tcptree"), ("--fanout", "many")], &[]), &["--fanout", "many"]);
    refused(&args_with(log, &[("--transport", "ipmc"), ("--mcast-addr", "10.0.0.1:4000")], &[]), &["--mcast-addr", "multicast"]);
    refused(&args_with(log, &[("--transport", "ipmc"), ("--mcast-addr", "239.1.2.3")], &[]), &["--mcast-addr"]);
    refused(&args_with(log, &[("--transport", "ipmc"), ("--mcast-ttl", "256")], &[]), &["--mcast-ttl", "256"]);
    refused(&args_with(log, &[("--transport", "ipmc"), ("--mcast-if", "239.1.2.3")], &[]), &["--mcast-if"]);
    refused(&args_with(log, &[("--transport", "ipmc"), ("--bind", "[::1]:0")], &[]), &["--bind", "IPv4"]);
    refused(&args_with(log, &[("--transport", "tcptree"), ("--bundle", "4096")], &[]), &["--bundle", "tcptree"]);
    refused(&args_with(log, &[("--bundle", "65508")], &[]), &["--bundle", "65508"]);
    refused(&args_with(log, &[("--bundle", "lots")], &[]), &["--bundle", "lots"]);
    assert!(!std::path::Path::new(log).exists(), "a refused run must not create its log");
}

#[test]
fn missing_group_is_refused() {
    refused(&args_with("/tmp/strata-never-written.jsonl", &[], &["--group"]), &["--group"]);
    refused(&args_with("/tmp/strata-never-written.jsonl", &[("--group", "")], &[]), &["--group"]);
}

#[test]
fn bad_bind_addresses_are_refused() {
    let log = "/tmp/strata-never-written.jsonl";
    refused(&args_with(log, &[("--bind", "localhost")], &[]), &["--bind", "localhost"]);
    refused(&args_with(log, &[("--bind", "127.0.0.1:99999")], &[]), &["--bind"]);
    refused(&args_with(log, &[("--bind", "0.0.0.0:7000")], &[]), &["--bind", "0.0.0.0:7000"]);
    // TEST-NET-1: no host has it, so binding it fails.
    refused(&args_with(log, &[("--bind", "192.0.2.1:7000")], &[]), &["cannot bind", "192.0.2.1:7000"]);
    // An address another socket holds.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    refused(&args_with(log, &[("--bind", &addr)], &[]), &["cannot bind", &addr]);
    refused(&args_with(log, &[("--peers", "127.0.0.1:7000,nonsense")], &[]), &["--peers", "nonsense"]);
    refused(&args_with(log, &[("--bind", "127.0.0.1:7001"), ("--peers", "[::1]:7002")], &[]), &["--peers", "[::1]:7002"]);
    assert!(!std::path::Path::new(log).exists(), "a refused run must not create its log");
}

#[test]
fn bad_stack_strings_are_refused() {
    let log = "/tmp/strata-never-written.jsonl";
    refused(&args_with(log, &[("--stack", "FOO")], &[]), &["FOO", "column 1"]);
    refused(&args_with(log, &[("--stack", "LOSS:FOO")], &[]), &["FOO", "column 6"]);
    refused(&args_with(log, &[("--stack", "FRAG(frag_size=1)")], &[]), &["FRAG", "frag_size"]);
    refused(&args_with(log, &[("--stack", "LOSS(percent=101)")], &[]), &["percent", "101"]);
    refused(&args_with(log, &[("--stack", "LOSS(")], &[]), &["stack string"]);
    refused(&args_with(log, &[("--stack", "")], &[]), &["empty"]);
}

#[test]
fn unknown_transports_are_refused_naming_the_accepted_ones() {
    refused(&args_with("/tmp/strata-never-written.jsonl", &[("--transport", "tcp")], &[]), &["tcp", "udp", "ipmc", "tcptree"]);
}

#[test]
fn bad_numbers_are_refused() {
    let log = "/tmp/strata-never-written.jsonl";
    refused(&args_with(log, &[("--casts", "many")], &[]), &["--casts", "many"]);
    refused(&args_with(log, &[("--casts", "-1")], &[]), &["--casts"]);
    refused(&args_with(log, &[("--size", "1k")], &[]), &["--size", "1k"]);
    // No layer of LOSS(percent=0) carries messages larger than a datagram.
    refused(&args_with(log, &[("--size", "70000")], &[]), &["--size", "FRAG"]);
    refused(&args_with(log, &[("--size", "5000"), ("--stack", "FRAG(max_msg_size=4096):NAK")], &[]), &["--size", "max_msg_size"]);
    refused(&args_with(log, &[("--rate", "0")], &[]), &["--rate"]);
    refused(&args_with(log, &[("--rate", "fast")], &[]), &["--rate", "fast"]);
    refused(&args_with(log, &[("--linger", "-1")], &[]), &["--linger"]);
    refused(&args_with(log, &[("--linger", "NaN")], &[]), &["--linger"]);
    refused(&args_with(log, &[], &["--casts"]), &["--casts"]);
    refused(&args_with(log, &[("--leave-after", "-1")], &[]), &["--leave-after"]);
    refused(&args_with(log, &[("--leave-after", "soon")], &[]), &["--leave-after", "soon"]);
}

#[test]
fn unwritable_logs_are_refused() {
    let dir = scratch_dir("cli-log");
    let missing = dir.join("no/such/dir/log.jsonl");
    refused(&args_with(missing.to_str().unwrap(), &[], &[]), &["log", "no/such/dir"]);
    // A directory is not a writable file, even for root.
    refused(&args_with(dir.to_str().unwrap(), &[], &[]), &["log"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_flags_fail() {
    refused(&["--group", "g", "--frobnicate"], &["--frobnicate"]);
}

#[test]
fn layers_lists_every_builtin_layer_and_parameter() {
    let out = run(&["layers"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for d in strata::layers::BUILTIN {
        let at = text.lines().position(|l| l.starts_with(d.name)).unwrap_or_else(|| panic!("{} missing from:\n{text}", d.name));
        assert!(text.lines().nth(at).unwrap().contains(d.summary), "{} without its summary", d.name);
        assert!(text.lines().nth(at + 1).unwrap().contains(&format!("provides: {}", d.provides)), "{} without provides", d.name);
        for p in d.params {
            let line = text.lines().skip(at).find(|l| l.trim_start().starts_with(&format!("{} ", p.name)));
            let line = line.unwrap_or_else(|| panic!("{}.{} missing from:\n{text}", d.name, p.name));
            assert!(line.contains(&format!("default {}", p.default)) && line.contains(p.doc), "{}.{}: {line}", d.name, p.name);
        }
    }
}

#[test]
fn layers_json_describes_every_builtin_layer() {
    let out = run(&["layers", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), strata::layers::BUILTIN.len());
    for (d, j) in strata::layers::BUILTIN.iter().zip(layers) {
        assert_eq!(j["name"], d.name);
        assert_eq!(j["summary"], d.summary);
        let params = j["params"].as_array().unwrap();
        assert_eq!(params.len(), d.params.len());
        for (p, jp) in d.params.iter().zip(params) {
            assert_eq!(jp["name"], p.name);
            assert_eq!(jp["default"], p.default);
            assert_eq!(jp["wire"], p.wire);
        }
    }
}
