//! Loopback mode's coordinator: starts the member processes, tells them
//! each other's addresses, starts them together once all are ready,
//! follows their progress (a line on stderr every second), tells them to
//! finish once every one is complete, and prints the merged results.
//!
//! It gives up (exit 1, results with `complete: false`) when a member dies
//! or reports an error, or when `--linger` passes without progress anywhere
//! (a member bound, became ready, or delivered something). Every member
//! dies with it: each is started with `PR_SET_PDEATHSIG` (SIGKILL when this
//! process ends, however it ends) in a process group of its own (a Ctrl-C
//! at the terminal reaches this process only, which kills the members and
//! exits 128 + the signal), and the [`Members`] guard kills whatever is
//! left when the coordinator returns.

use super::link::Command;
use super::report::{MemberResult, Row};
use super::{print_results, progress_line, Plan, Progress, HOST_PROGRESS};
use crate::node::{signal_exit, sleep_until, Signals, TransportKind};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, ExitCode, ExitStatus, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant as Clock;

/// How long the members have, once told to finish, to send their results.
const RESULTS_WAIT: Duration = Duration::from_secs(5);
/// How long the members have after their results to leave and exit.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// What a member's reader thread passes on.
enum Heard {
    /// A line of its stdout, parsed.
    Line(usize, Value),
    /// Its stdout ended (it exited, or is about to).
    Closed(usize),
}

/// One member process and what is known of it.
struct MemberProc {
    index: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    addr: Option<SocketAddr>,
    ready: bool,
    delivered: u64,
    done: bool,
    closed: bool,
    status: Option<ExitStatus>,
    result: Option<MemberResult>,
}

impl MemberProc {
    fn tell(&mut self, cmd: &Command) {
        if let Some(stdin) = &mut self.stdin {
            // A member that is gone cannot be told; its end is noticed anyway.
            let _ = stdin.write_all(cmd.line().as_bytes()).and_then(|()| stdin.flush());
        }
    }

    /// Its exit status, waiting up to `limit` for it.
    async fn status(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Clock::now() + limit;
        while self.status.is_none() {
            match self.child.try_wait() {
                Ok(Some(status)) => self.status = Some(status),
                Ok(None) if Clock::now() < until => tokio::time::sleep(Duration::from_millis(10)).await,
                _ => break,
            }
        }
        self.status
    }

    fn describe_exit(&self) -> String {
        match self.status {
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(sig)) => format!("was killed by signal {sig}"),
                _ => "ended".to_string(),
            },
            None => "closed its output".to_string(),
        }
    }
}

/// Every member process; dropping it kills those still running.
struct Members(Vec<MemberProc>);

impl Drop for Members {
    fn drop(&mut self) {
        for m in &mut self.0 {
            m.stdin = None;
            if m.status.is_none() && matches!(m.child.try_wait(), Ok(None)) {
                let _ = m.child.kill();
            }
            let _ = m.child.wait();
        }
    }
}

/// Starts member `index`: this program, `perf`, the same options, `--member I`.
fn spawn(index: usize, extra: &[String], tx: &mpsc::UnboundedSender<Heard>) -> Result<MemberProc, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program to start the members: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1)).args(extra).arg("--member").arg(index.to_string());
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Not in the terminal's process group: a Ctrl-C is for the coordinator,
    // which ends the members itself.
    cmd.process_group(0);
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The coordinator may have died before the prctl: then go at once.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot start member {index}: {e}"))?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let lines = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Value>(&line) {
                Ok(v) => {
                    if lines.send(Heard::Line(index, v)).is_err() {
                        return;
                    }
                }
                Err(_) => tracing::warn!("member {index} wrote something that is not a report: {line:?}"),
            }
        }
        let _ = lines.send(Heard::Closed(index));
    });
    // A member's diagnostics, each line marked with the member.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("perf: member {index}: {line}");
        }
    });
    let stdin = child.stdin.take();
    Ok(MemberProc { index, child, stdin, pid, addr: None, ready: false, delivered: 0, done: false, closed: false, status: None, result: None })
}

/// Runs a loopback run.
pub fn run(plan: &Plan) -> Result<ExitCode, String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(coordinate(plan))
}

/// Why the run ended.
enum End {
    Complete,
    Failed(String),
    Signal(i32),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Binding,
    Joining,
    Running,
}

async fn coordinate(plan: &Plan) -> Result<ExitCode, String> {
    let mut signals = Signals::new().map_err(|e| format!("cannot handle signals: {e}"))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut extra = Vec::new();
    if plan.kind == TransportKind::Ipmc && !std::env::args_os().any(|a| a.to_str().is_some_and(|a| a == "--mcast-addr" || a.starts_with("--mcast-addr="))) {
        // A multicast address of this run's own, so that concurrent runs of
        // the same group name on this host do not hear each other.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let addr = strata::transport::ipmc::group_address(&format!("{}/perf/{}/{nanos}", plan.group, std::process::id()));
        extra.extend(["--mcast-addr".to_string(), addr.to_string()]);
    }
    let mut members = Members(Vec::with_capacity(plan.members));
    for index in 0..plan.members {
        members.0.push(spawn(index, &extra, &tx)?);
    }
    drop(tx);
    let expected = plan.expected();
    let mut phase = Phase::Binding;
    let mut progress = Clock::now();
    let mut started: Option<Clock> = None;
    let mut progress_lines = Progress::every(HOST_PROGRESS);
    let end = loop {
        let all = |members: &Members, f: fn(&MemberProc) -> bool| members.0.iter().all(f);
        if phase == Phase::Binding && all(&members, |m| m.addr.is_some()) {
            let addrs: Vec<SocketAddr> = members.0.iter().filter_map(|m| m.addr).collect();
            let peers = Command::Peers(addrs);
            members.0.iter_mut().for_each(|m| m.tell(&peers));
            phase = Phase::Joining;
        }
        if phase == Phase::Joining && all(&members, |m| m.ready) {
            let pids: Vec<String> = members.0.iter().map(|m| m.pid.to_string()).collect();
            let noun = if plan.members == 1 { "member" } else { "members" };
            eprintln!("perf: {} {noun} ready (pids {}); starting", plan.members, pids.join(","));
            members.0.iter_mut().for_each(|m| m.tell(&Command::Start));
            let now = Clock::now();
            (started, progress) = (Some(now), now);
            progress_lines.restart(0);
            phase = Phase::Running;
        }
        if phase == Phase::Running && all(&members, |m| m.done) {
            break End::Complete;
        }
        let give_up = progress.checked_add(plan.linger);
        tokio::select! {
            biased;
            sig = signals.recv() => break End::Signal(sig),
            heard = rx.recv() => match heard {
                Some(Heard::Line(i, v)) => {
                    if let Some(failed) = take_line(&mut members.0[i], &v, &mut progress) {
                        break End::Failed(failed);
                    }
                }
                Some(Heard::Closed(i)) => {
                    let m = &mut members.0[i];
                    m.closed = true;
                    m.status(Duration::from_secs(1)).await;
                    break End::Failed(format!(
                        "member {i} (pid {}) {} before completing ({} of {expected} delivered)",
                        m.pid,
                        m.describe_exit(),
                        m.delivered
                    ));
                }
                None => break End::Failed("every member's output closed".into()),
            },
            _ = progress_lines.tick.tick(), if phase == Phase::Running => {
                let now = Clock::now();
                let delivered: Vec<u64> = members.0.iter().map(|m| m.delivered).collect();
                let rate = progress_lines.rate(delivered.iter().sum(), now) / plan.members as f64;
                let elapsed = started.map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
                eprintln!("{}", progress_line(elapsed, &delivered, expected, rate));
            }
            _ = sleep_until(give_up) => {
                if give_up.is_some_and(|at| at <= Clock::now()) {
                    break End::Failed(stalled(plan, phase, &members.0, expected));
                }
            }
        }
    };
    let signal = match end {
        End::Signal(sig) => Some(sig),
        // Complete or given up: every member still there reports and leaves.
        _ => {
            members.0.iter_mut().for_each(|m| m.tell(&Command::Finish));
            collect_results(&mut members.0, &mut rx, &mut signals).await
        }
    };
    if let Some(sig) = signal {
        drop(members);
        eprintln!("strata perf: stopped by signal {sig}; the members were killed");
        return Ok(signal_exit(sig));
    }
    let rows: Vec<Row> = members
        .0
        .iter_mut()
        .map(|m| match m.result.take() {
            Some(r) => Row::of(r),
            None => {
                Row { index: m.index, addr: m.addr.map_or_else(String::new, |a| a.to_string()), pid: m.pid, delivered: m.delivered, expected, result: None }
            }
        })
        .collect();
    let summary = print_results(plan, &rows);
    // Let them leave and exit; the guard kills any that does not in time.
    let until = Clock::now() + EXIT_WAIT;
    for m in &mut members.0 {
        m.status(until.saturating_duration_since(Clock::now())).await;
    }
    drop(members);
    match end {
        End::Failed(what) => {
            eprintln!("strata perf: {what}");
            Ok(ExitCode::FAILURE)
        }
        _ if !summary.complete => {
            eprintln!("strata perf: a member reported an incomplete run");
            Ok(ExitCode::FAILURE)
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Takes one report of a member; returns a reason to give up, if it is one.
fn take_line(m: &mut MemberProc, v: &Value, progress: &mut Clock) -> Option<String> {
    match v.get("ev").and_then(Value::as_str) {
        Some("bound") => {
            m.addr = v.get("addr").and_then(Value::as_str).and_then(|a| a.parse().ok());
            if m.addr.is_none() {
                return Some(format!("member {} reported no usable address: {v}", m.index));
            }
            *progress = Clock::now();
        }
        Some("ready") => {
            m.ready = true;
            *progress = Clock::now();
        }
        Some("progress") => {
            let delivered = v.get("delivered").and_then(Value::as_u64).unwrap_or(m.delivered);
            if delivered != m.delivered {
                *progress = Clock::now();
            }
            m.delivered = delivered;
            m.done = v.get("done").and_then(Value::as_bool).unwrap_or(false);
        }
        Some("result") => match MemberResult::from_wire(v) {
            Some(r) => {
                m.delivered = r.delivered;
                m.result = Some(r);
            }
            None => return Some(format!("member {} sent a result that does not parse", m.index)),
        },
        Some("error") => {
            let what = v.get("what").and_then(Value::as_str).unwrap_or("?");
            return Some(format!("member {}: {what}", m.index));
        }
        _ => tracing::warn!("member {} sent an unknown report: {v}", m.index),
    }
    None
}

/// The reason for giving up after `--linger` without progress.
fn stalled(plan: &Plan, phase: Phase, members: &[MemberProc], expected: u64) -> String {
    let secs = plan.linger.as_secs_f64();
    match phase {
        Phase::Binding => {
            let n = members.iter().filter(|m| m.addr.is_some()).count();
            format!("only {n} of {} members bound their transport within --linger ({secs} s)", members.len())
        }
        Phase::Joining => {
            let n = members.iter().filter(|m| m.ready).count();
            let what = if plan.membership { "were in a view of all members" } else { "had joined" };
            format!("only {n} of {} members {what} within --linger ({secs} s)", members.len())
        }
        Phase::Running => {
            let slowest = members.iter().min_by_key(|m| m.delivered).map_or(0, |m| m.index);
            let m = &members[slowest];
            format!("no progress for --linger ({secs} s); slowest member {slowest} delivered {} of {expected}; giving up", m.delivered)
        }
    }
}

/// Waits for the result of every member whose output is still open,
/// bounded by [`RESULTS_WAIT`]; returns a signal that came meanwhile.
async fn collect_results(members: &mut [MemberProc], rx: &mut mpsc::UnboundedReceiver<Heard>, signals: &mut Signals) -> Option<i32> {
    let until = Clock::now() + RESULTS_WAIT;
    let mut ignored = Clock::now();
    while members.iter().any(|m| m.result.is_none() && !m.closed) {
        tokio::select! {
            biased;
            sig = signals.recv() => return Some(sig),
            heard = rx.recv() => match heard {
                Some(Heard::Line(i, v)) => {
                    let _ = take_line(&mut members[i], &v, &mut ignored);
                }
                Some(Heard::Closed(i)) => members[i].closed = true,
                None => break,
            },
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_of_a_member_is_described() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let mut m =
            MemberProc { index: 0, child, stdin: None, pid: 1, addr: None, ready: false, delivered: 0, done: false, closed: false, status: None, result: None };
        assert_eq!(m.describe_exit(), "closed its output");
        m.status = Some(ExitStatus::from_raw(9));
        assert_eq!(m.describe_exit(), "was killed by signal 9");
        m.status = Some(ExitStatus::from_raw(1 << 8));
        assert_eq!(m.describe_exit(), "exited with status 1");
        let _ = m.child.wait();
    }
}
