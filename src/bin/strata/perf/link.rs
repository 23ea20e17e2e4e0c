//! The line protocol between `strata perf` (loopback mode) and the member
//! processes it starts (`strata perf ... --member I`).
//!
//! A member writes JSON objects, one per line, on its stdout; nothing else
//! goes there (diagnostics go to stderr):
//!
//! | line | when |
//! |---|---|
//! | `{"ev":"bound","addr":"127.0.0.1:P","pid":N}` | its transport is bound |
//! | `{"ev":"ready"}` | joined; with a membership layer, in a view of all N members |
//! | `{"ev":"progress","delivered":D,"expected":E,"sent":S,"done":B}` | every 250 ms after the start, and at once when `done` turns true |
//! | `{"ev":"result",...}` | in answer to `finish` (see `report::MemberResult`) |
//! | `{"ev":"error","what":"..."}` | it cannot go on (then it exits 1) |
//!
//! The coordinator writes commands, one per line, on the member's stdin:
//! `peers A,B,...` (every member's address, by index), `start`, `finish`.
//! The end of stdin means the coordinator is gone: the member exits.

use crate::node::{signal_exit, Signals};
use serde_json::json;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A command from the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Every member's address, by index.
    Peers(Vec<SocketAddr>),
    /// Start casting (and measuring).
    Start,
    /// Every member is complete, or the run is given up: report and leave.
    Finish,
    /// Stdin ended: the coordinator is gone.
    Closed,
}

impl Command {
    /// Parses one line; `None` for anything else.
    pub fn parse(line: &str) -> Option<Command> {
        let line = line.trim();
        match line {
            "start" => Some(Command::Start),
            "finish" => Some(Command::Finish),
            _ => {
                let list = line.strip_prefix("peers ")?;
                list.split(',').map(|a| a.trim().parse().ok()).collect::<Option<Vec<SocketAddr>>>().map(Command::Peers)
            }
        }
    }

    /// The line for this command, newline included.
    pub fn line(&self) -> String {
        match self {
            Command::Peers(addrs) => format!("peers {}\n", addrs.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(",")),
            Command::Start => "start\n".into(),
            Command::Finish => "finish\n".into(),
            Command::Closed => String::new(),
        }
    }
}

/// Reads commands from stdin on a thread of its own (stdin blocks);
/// [`Command::Closed`] comes last.
pub fn commands() -> mpsc::UnboundedReceiver<Command> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match Command::parse(&line) {
                Some(cmd) => {
                    if tx.send(cmd).is_err() {
                        return;
                    }
                }
                None => tracing::warn!("ignored a command from the coordinator: {line:?}"),
            }
        }
        let _ = tx.send(Command::Closed);
    });
    rx
}

/// Writes one report line on stdout (a failed write means the coordinator
/// is gone, which the end of stdin tells too).
pub fn report(value: serde_json::Value) {
    let mut line = value.to_string();
    line.push('\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// The next command, or never when this member has no coordinator (one
/// member per host).
pub async fn next(commands: &mut Option<mpsc::UnboundedReceiver<Command>>) -> Command {
    match commands {
        Some(rx) => rx.recv().await.unwrap_or(Command::Closed),
        None => std::future::pending().await,
    }
}

/// How the task sending a member's casts ended, or never while there is
/// none (a task is taken out of `task` before it is aborted).
pub async fn sending_ended<T>(task: &mut Option<JoinHandle<Result<T, String>>>) -> Result<T, String> {
    match task {
        Some(handle) => match handle.await {
            Ok(end) => end,
            Err(e) => Err(format!("the sending task failed: {e}")),
        },
        None => std::future::pending().await,
    }
}

/// A member's side of the start: reports `me` bound, then waits for the
/// coordinator's `peers` list and checks that it names `me` at `index` of
/// `members`. `Ok(Err(code))`: the run ended first (a signal, `finish`, or
/// the coordinator gone) and the member exits with `code`.
pub async fn await_peers(
    me: SocketAddr,
    index: usize,
    members: usize,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    signals: &mut Signals,
) -> Result<Result<Vec<SocketAddr>, ExitCode>, String> {
    report(json!({"ev": "bound", "addr": me.to_string(), "pid": std::process::id()}));
    let peers = loop {
        tokio::select! {
            sig = signals.recv() => return Ok(Err(signal_exit(sig))),
            cmd = commands.recv() => match cmd {
                Some(Command::Peers(peers)) => break peers,
                Some(Command::Start) => {}
                // Given up before the group formed, or the coordinator is gone.
                Some(Command::Finish | Command::Closed) | None => return Ok(Err(ExitCode::FAILURE)),
            },
        }
    };
    if peers.len() != members || peers.get(index) != Some(&me) {
        return Err(format!("the coordinator's peers {peers:?} do not have this member ({me}) at index {index} of {members}"));
    }
    Ok(Ok(peers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_their_lines() {
        let peers = Command::Peers(vec!["127.0.0.1:5000".parse().unwrap(), "[::1]:6000".parse().unwrap()]);
        for cmd in [peers, Command::Start, Command::Finish] {
            assert_eq!(Command::parse(&cmd.line()), Some(cmd.clone()));
        }
        assert_eq!(Command::parse("peers 127.0.0.1"), None);
        assert_eq!(Command::parse("stop"), None);
    }
}
