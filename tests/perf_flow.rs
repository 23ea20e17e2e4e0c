//! Flow control keeps every member's memory bounded when one member falls
//! behind (issue 8): `strata perf` runs 3 members over UDP on loopback with
//! `FRAG:NAK:CAUSAL:VSYNC:TOTAL` and 16 KiB casts (each is 12 datagrams),
//! and the member of index 2 takes its deliveries at [`SLOW_RATE`] a second,
//! far below what the others could take (tens of thousands a second here).
//! Nothing is dropped for the slow member: NAK's send window (at most
//! `max_unstable` messages and `max_unstable_bytes` bytes not yet
//! acknowledged by every member) closes at each sender, so the group moves
//! at the slow member's pace and nobody buffers without bound.
//!
//! The default run lasts about [`DEFAULT_SECS`] seconds. For the issue's
//! ten-minute run: `STRATA_FLOW_MINUTES=10 cargo test --release --test
//! perf_flow -- --nocapture` (it prints the results object).
//!
//! Checked: the run completes (every member delivered every cast: none was
//! given up on), peak resident memory of every member stays at or below
//! 256 MiB, and the slow member really was slow (its delivery rate at most
//! [`SLOW_RATE`], so the others' casts were held back by flow control).

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Deliveries per second the slow member takes.
const SLOW_RATE: u64 = 1000;
/// Length of the default run.
const DEFAULT_SECS: u64 = 20;
const MEMBERS: u64 = 3;
const SIZE: u64 = 16 * 1024;
const RSS_LIMIT_MIB: f64 = 256.0;

#[test]
fn a_slow_member_keeps_every_members_memory_bounded() {
    let secs = match std::env::var("STRATA_FLOW_MINUTES") {
        Ok(m) => m.parse::<u64>().expect("STRATA_FLOW_MINUTES is a whole number of minutes") * 60,
        Err(_) => DEFAULT_SECS,
    };
    // The slow member delivers MEMBERS × casts messages at SLOW_RATE.
    let casts = secs * SLOW_RATE / MEMBERS;
    let args = [
        "perf",
        "--members",
        &MEMBERS.to_string(),
        "--stack",
        "FRAG:NAK:CAUSAL:VSYNC:TOTAL",
        "--transport",
        "udp",
        "--size",
        &SIZE.to_string(),
        "--casts",
        &casts.to_string(),
        "--slow-member",
        "2",
        "--slow-rate",
        &SLOW_RATE.to_string(),
        "--linger",
        "20",
        "--json",
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_strata")).args(args).stdin(Stdio::null()).output().expect("run strata perf");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "strata perf failed ({}); stderr:\n{stderr}", out.status);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(v["complete"], true, "{v}");

    let rss = v["rss_mib_max"].as_f64().expect("rss_mib_max");
    assert!(rss > 0.0 && rss <= RSS_LIMIT_MIB, "peak RSS {rss} MiB exceeds {RSS_LIMIT_MIB} MiB: {v}");

    let members = v["per_member"].as_array().expect("per_member");
    assert_eq!(members.len() as u64, MEMBERS, "{v}");
    for m in members {
        assert_eq!(m["delivered"], m["expected"], "every member delivered every cast: {m}");
        let member_rss = m["rss_mib"].as_f64().expect("a member's peak RSS");
        assert!(member_rss <= RSS_LIMIT_MIB, "{m}");
    }
    // The slow member took deliveries no faster than it was told to (a
    // little slack for the clock), so flow control held the others back.
    let slow_rate = members[2]["deliveries_per_sec"].as_f64().expect("the slow member's delivery rate");
    assert!(slow_rate <= SLOW_RATE as f64 * 1.1, "the slow member delivered {slow_rate}/s, above {SLOW_RATE}/s: {v}");
    let elapsed = v["duration_s"].as_f64().expect("duration_s");
    assert!(elapsed >= Duration::from_secs(secs).as_secs_f64() * 0.9, "the run lasted {elapsed} s, less than the slow member needs: {v}");
}
