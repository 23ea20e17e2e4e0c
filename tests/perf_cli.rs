//! `strata perf` as scripts use it (docs/strata-perf.md): loopback runs
//! over each transport with `--json` checked key by key, the text summary,
//! `--senders one`, `--baseline`, a slow member, one member per host, a
//! member killed mid-run, a signal, and every refusal of bad arguments.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn strata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata"))
}

/// Runs `strata perf` with `args`, killing it if it is not done in `limit`.
fn perf(args: &[&str], limit: Duration) -> Output {
    let child = strata().arg("perf").args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start strata perf");
    wait(child, limit)
}

/// Waits for `child`, killing it (and failing) after `limit`.
fn wait(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("poll the child").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect its output");
            panic!("strata perf did not end within {limit:?}; stderr: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect its output")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The one JSON line on stdout.
fn json_of(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "--json prints exactly one line; stdout: {stdout}\nstderr: {}", stderr_of(out));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or_else(|| panic!("no number `{key}` in {v}"))
}

/// Every key docs/strata-perf.md promises, with consistent values, for a
/// complete run where each member delivered `each` messages.
fn check_complete(v: &Value, members: usize, stack: &str, transport: &str, casts: u64, each: u64) {
    assert_eq!(v["members"], members as u64, "{v}");
    assert_eq!(v["stack"], stack);
    assert_eq!(v["transport"], transport);
    assert_eq!(v["casts"], casts);
    assert!(v["size"].as_u64().is_some() && v["senders"].is_string(), "{v}");
    assert_eq!(v["complete"], true, "{v}");
    assert!(num(v, "duration_s") > 0.0, "{v}");
    let mean = num(v, "deliveries_per_sec_per_member");
    let min = num(v, "deliveries_per_sec_min");
    assert!(min > 0.0 && min <= mean + 1e-6, "{v}");
    assert!(num(v, "mb_per_sec_per_member") > 0.0, "{v}");
    let lat = &v["latency_us"];
    let (p50, p99, p999, max) = (num(lat, "p50"), num(lat, "p99"), num(lat, "p999"), num(lat, "max"));
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max, "{lat}");
    assert!(num(v, "cpu_us_per_msg") > 0.0, "{v}");
    assert!(num(v, "rss_mib_max") > 0.0, "{v}");
    let rows = v["per_member"].as_array().expect("per_member is a list");
    assert_eq!(rows.len(), members, "{v}");
    for row in rows {
        assert_eq!(row["delivered"], each, "{row}");
        assert_eq!(row["expected"], each, "{row}");
        assert_eq!(row["complete"], true, "{row}");
        for key in ["deliveries_per_sec", "mb_per_sec", "cpu_us_per_msg", "rss_mib", "duration_s"] {
            assert!(num(row, key) > 0.0, "{key} in {row}");
        }
        let lat = &row["latency_us"];
        assert!(num(lat, "p50") <= num(lat, "p99") && num(lat, "p99") <= num(lat, "p999") && num(lat, "p999") <= num(lat, "max"), "{row}");
    }
}

/// A loopback run that must complete; returns its JSON.
fn complete_run(args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend(args);
    let out = perf(&all, Duration::from_secs(60));
    assert!(out.status.success(), "{args:?}: {:?}\nstderr: {}", out.status, stderr_of(&out));
    json_of(&out)
}

#[test]
fn three_members_over_frag_nak_deliver_everything() {
    let v = complete_run(&["--members", "3", "--stack", "FRAG:NAK", "--transport", "udp", "--casts", "2000", "--size", "512", "--group", "t-fragnak"]);
    check_complete(&v, 3, "FRAG:NAK", "udp", 2000, 6000);
    assert_eq!(v["senders"], "all");
    assert_eq!(v["size"], 512);
    // Every sender's casts, its own included.
    assert!(v["per_member"].as_array().unwrap().iter().all(|r| r["sent"] == 2000));
}

#[test]
fn three_members_over_the_total_order_stack_deliver_everything() {
    let v = complete_run(&["--members", "3", "--stack", "FRAG:NAK:CAUSAL:VSYNC:TOTAL", "--casts", "2000", "--group", "t-total"]);
    check_complete(&v, 3, "FRAG:NAK:CAUSAL:VSYNC:TOTAL", "udp", 2000, 6000);
}

#[test]
fn with_one_sender_each_member_delivers_its_casts() {
    let v = complete_run(&["--members", "3", "--stack", "FRAG:NAK", "--casts", "1500", "--senders", "one", "--group", "t-one"]);
    check_complete(&v, 3, "FRAG:NAK", "udp", 1500, 1500);
    assert_eq!(v["senders"], "one");
    let sent: Vec<u64> = v["per_member"].as_array().unwrap().iter().map(|r| r["sent"].as_u64().unwrap()).collect();
    assert_eq!(sent, [1500, 0, 0], "only member 0 casts");
}

#[test]
fn tcptree_and_ipmc_runs_complete() {
    let v = complete_run(&["--members", "3", "--stack", "FRAG:NAK", "--transport", "tcptree", "--fanout", "1", "--casts", "500", "--group", "t-tree"]);
    check_complete(&v, 3, "FRAG:NAK", "tcptree", 500, 1500);
    // The coordinator picks a multicast address of the run's own.
    let v = complete_run(&["--members", "3", "--stack", "FRAG:NAK:VSYNC", "--transport", "ipmc", "--casts", "500", "--group", "t-ipmc"]);
    check_complete(&v, 3, "FRAG:NAK:VSYNC", "ipmc", 500, 1500);
}

#[test]
fn the_baseline_sends_plain_datagrams_and_reports_loss() {
    let v = complete_run(&["--members", "3", "--baseline", "--casts", "1000", "--size", "256", "--rate", "20000"]);
    assert_eq!(v["baseline"], true);
    assert_eq!(v["stack"], "none");
    assert_eq!(v["complete"], true, "{v}");
    let loss = num(&v, "loss_percent");
    assert!((0.0..=100.0).contains(&loss), "{v}");
    assert!(num(&v, "deliveries_per_sec_per_member") > 0.0 && num(&v, "cpu_us_per_msg") > 0.0 && num(&v, "rss_mib_max") > 0.0, "{v}");
    for key in ["p50", "p99", "p999", "max"] {
        assert!(v["latency_us"][key].is_number(), "{v}");
    }
    for row in v["per_member"].as_array().unwrap() {
        assert_eq!(row["expected"], 3000, "own messages count as delivered, as with a stack: {row}");
        assert!(row["delivered"].as_u64().unwrap() >= 1000, "{row}");
        assert!(row["loss_percent"].is_number(), "{row}");
    }
}

#[test]
fn a_slow_member_is_kept_to_its_rate_and_the_run_completes() {
    let v = complete_run(&["--members", "3", "--stack", "FRAG:NAK", "--casts", "400", "--slow-member", "1", "--slow-rate", "2000", "--group", "t-slow"]);
    check_complete(&v, 3, "FRAG:NAK", "udp", 400, 1200);
    let slow = &v["per_member"][1];
    // 1200 deliveries at 2000 per second take at least about 0.6 s.
    assert!(num(slow, "duration_s") >= 0.5, "{slow}");
    assert!(num(slow, "deliveries_per_sec") <= 2400.0, "{slow}");
}

#[test]
fn the_text_output_is_a_summary_with_a_line_per_member() {
    let out = perf(&["--members", "2", "--stack", "FRAG:NAK", "--casts", "300", "--group", "t-text"], Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("strata perf: 2 members, stack FRAG:NAK, over udp"), "{text}");
    assert!(text.lines().next().unwrap().ends_with(": complete"), "{text}");
    for needle in ["deliveries/s per member", "MB/s per member", "p50", "p99.9", "per message", "peak RSS"] {
        assert!(text.contains(needle), "no {needle:?} in {text}");
    }
    assert_eq!(text.lines().filter(|l| l.trim_start().starts_with("member ")).count(), 2, "{text}");
    assert!(text.contains("600/600 delivered"), "{text}");
    // Progress and diagnostics go to stderr, never to stdout.
    assert!(!text.contains("perf: ") || text.lines().all(|l| !l.starts_with("perf: ")), "{text}");
}

/// Checks that `strata perf args` fails as a bad request: status 2, one
/// stderr line `strata perf: ...` mentioning every one of `mentions`,
/// nothing on stdout, no member started.
fn refused(args: &[&str], mentions: &[&str]) {
    let out = perf(args, Duration::from_secs(20));
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {:?} {stderr}", out.status);
    assert_eq!(stderr.lines().count(), 1, "{args:?}: one line expected: {stderr:?}");
    assert!(stderr.starts_with("strata perf: "), "{args:?}: {stderr:?}");
    for m in mentions {
        assert!(stderr.contains(m), "{args:?}: {stderr:?} does not mention {m:?}");
    }
    assert!(out.stdout.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    refused(&["--transport", "smoke"], &["smoke", "udp", "ipmc", "tcptree"]);
    refused(&["--size", "1"], &["--size 1", "20"]);
    refused(&["--members", "0"], &["--members", "0"]);
    refused(&["--slow-member", "1"], &["--slow-member", "--slow-rate"]);
    refused(&["--slow-rate", "100"], &["--slow-member"]);
    refused(&["--slow-member", "5", "--slow-rate", "100"], &["--slow-member 5"]);
    refused(&["--baseline", "--transport", "tcptree"], &["--baseline", "udp"]);
    refused(&["--baseline", "--bundle", "4096"], &["--bundle", "--baseline"]);
    refused(&["--members"], &["--members"]);
    refused(&["--casts"], &["--casts"]);
    refused(&["--casts", "0"], &["--casts", "0"]);
    refused(&["--rate", "-3"], &["--rate"]);
    refused(&["--linger", "0"], &["--linger"]);
    refused(&["--stack", "FRAG:NOPE"], &["NOPE"]);
    refused(&["--stack", "NAK", "--size", "200000"], &["--size 200000"]);
    refused(&["--fanout", "2"], &["--fanout", "tcptree"]);
    refused(&["--transport", "tcptree", "--bundle", "4096"], &["--bundle", "tcptree"]);
    refused(&["--bundle", "70000"], &["--bundle", "70000"]);
    refused(&["--peers", "127.0.0.1:7000"], &["--peers", "--bind"]);
    refused(&["--stack", "FRAG:NAK", "--bind", "127.0.0.1:7000", "--peers", "127.0.0.1:7001"], &["--members 3", "exactly 3"]);
    refused(&["--bind", "0.0.0.0:7000"], &["--bind"]);
    refused(&["--members", "65"], &["--members 65", "64"]);
}

#[test]
fn the_member_option_is_hidden() {
    let out = strata().args(["perf", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--slow-member") && help.contains("--baseline") && help.contains("--senders"), "{help}");
    assert!(!help.contains("--member "), "{help}");
}

/// Starts a loopback run that would take long, and returns it with the
/// member pids from its `perf: N members ready (pids ...)` line and a
/// reader of the rest of its stderr.
fn start_long_run(group: &str, linger: &str) -> (Child, Vec<i32>, std::thread::JoinHandle<String>) {
    let mut child = strata()
        .args(["perf", "--json", "--members", "3", "--stack", "FRAG:NAK", "--casts", "1000000", "--rate", "500", "--linger", linger, "--group", group])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let pids = loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("strata perf ended before its members were ready: {seen}");
        }
        seen.push_str(&line);
        if let Some(list) = line.split("(pids ").nth(1).and_then(|rest| rest.split(')').next()) {
            break list.split(',').map(|p| p.parse::<i32>().unwrap()).collect::<Vec<_>>();
        }
    };
    let rest = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    (child, pids, rest)
}

fn alive(pid: i32) -> bool {
    // A zombie is dead too (its parent is gone and has not reaped it yet).
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

#[test]
fn a_killed_member_ends_the_run_incomplete() {
    let (child, pids, rest) = start_long_run("t-kill", "3");
    assert_eq!(pids.len(), 3);
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    // SAFETY: plain kill(2) of a member process this test's child started.
    assert_eq!(unsafe { libc::kill(pids[1], libc::SIGKILL) }, 0);
    let out = wait(child, Duration::from_secs(3 + 10));
    assert!(killed_at.elapsed() < Duration::from_secs(3 + 5), "took {:?}", killed_at.elapsed());
    let stderr = rest.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let v = json_of(&out);
    assert_eq!(v["complete"], false, "{v}");
    let rows = v["per_member"].as_array().unwrap();
    assert!(rows[1]["deliveries_per_sec"].is_null(), "the dead member sent no result: {}", rows[1]);
    assert_eq!(rows[0]["complete"], false);
    let reason: Vec<&str> = stderr.lines().filter(|l| l.starts_with("strata perf: ")).collect();
    assert_eq!(reason.len(), 1, "{stderr}");
    assert!(reason[0].contains("member 1") && reason[0].contains("signal 9"), "{stderr}");
    assert!(pids.iter().all(|p| !alive(*p)), "members left running: {pids:?}");
}

#[test]
fn sigterm_kills_the_members_and_exits_143() {
    let (child, pids, rest) = start_long_run("t-term", "30");
    // SAFETY: plain kill(2) of this test's child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = wait(child, Duration::from_secs(10));
    let stderr = rest.join().unwrap();
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(stderr.contains("strata perf: stopped by signal 15"), "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "members left running: {pids:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn members_of_a_coordinator_killed_with_sigkill_exit_on_their_own() {
    // No handler runs on SIGKILL: the members learn it from the end of
    // their command pipe.
    let (mut child, pids, rest) = start_long_run("t-kill9", "30");
    // SAFETY: plain kill(2) of this test's child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "members left running: {pids:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The members held the other end of its stderr: it ends with them.
    rest.join().unwrap();
}

/// `n` loopback addresses whose ports were free a moment ago.
fn free_addrs(n: usize) -> Vec<String> {
    let sockets: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    sockets.iter().map(|s| s.local_addr().unwrap().to_string()).collect()
}

/// Three `strata perf --bind ... --peers ...` processes on loopback; each
/// prints its own result (one row), complete, exit 0.
fn one_member_per_host(stack: &str, extra: &[&str], each: u64) {
    for attempt in 0..3 {
        let addrs = free_addrs(3);
        let peers = addrs.join(",");
        let children: Vec<Child> = addrs
            .iter()
            .map(|bind| {
                strata()
                    .args(["perf", "--json", "--members", "3", "--stack", stack, "--casts", "500", "--bind", bind, "--peers", &peers])
                    .args(extra)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<Output> = children.into_iter().map(|c| wait(c, Duration::from_secs(60))).collect();
        if attempt < 2 && outs.iter().any(|o| stderr_of(o).contains("in use")) {
            continue;
        }
        let mut indexes = Vec::new();
        for (out, bind) in outs.iter().zip(&addrs) {
            assert!(out.status.success(), "{bind}: {:?} {}", out.status, stderr_of(out));
            let v = json_of(out);
            assert_eq!(v["complete"], true, "{v}");
            assert_eq!(v["members"], 3);
            let rows = v["per_member"].as_array().unwrap();
            assert_eq!(rows.len(), 1, "its own row only: {v}");
            assert_eq!(rows[0]["addr"], bind.as_str());
            assert_eq!(rows[0]["delivered"], each, "{v}");
            indexes.push(rows[0]["index"].as_u64().unwrap());
            if extra.contains(&"--baseline") {
                assert!(v["loss_percent"].is_number(), "{v}");
            } else {
                assert!(num(&v, "deliveries_per_sec_per_member") > 0.0 && v["latency_us"]["p50"].is_number(), "{v}");
            }
        }
        indexes.sort();
        assert_eq!(indexes, [0, 1, 2], "indexes are ranks of the addresses");
        return;
    }
}

#[test]
fn one_member_per_host_runs_on_loopback() {
    one_member_per_host("FRAG:NAK", &[], 1500);
    one_member_per_host("FRAG:NAK:CAUSAL:VSYNC:TOTAL", &[], 1500);
}

#[test]
fn one_member_per_host_baseline_meets_its_peers_first() {
    one_member_per_host("FRAG:NAK", &["--baseline", "--rate", "5000"], 1500);
}

#[test]
fn one_member_whose_peers_never_come_gives_up_after_linger() {
    let addrs = free_addrs(3);
    let peers = addrs.join(",");
    let began = Instant::now();
    let out = perf(&["--json", "--stack", "FRAG:NAK", "--casts", "10", "--bind", &addrs[0], "--peers", &peers, "--linger", "0.5"], Duration::from_secs(20));
    assert!(began.elapsed() < Duration::from_secs(8), "took {:?} with --linger 0.5", began.elapsed());
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let v = json_of(&out);
    assert_eq!(v["complete"], false, "{v}");
    assert_eq!(v["per_member"][0]["delivered"], 10, "only its own casts: {v}");
    assert_eq!(v["per_member"][0]["expected"], 30);
    let reason: Vec<&str> = stderr.lines().filter(|l| l.starts_with("strata perf: ")).collect();
    assert!(reason.len() == 1 && reason[0].contains("--linger") && reason[0].contains("10 of 30"), "{stderr}");
}
