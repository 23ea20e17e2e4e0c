//! `--baseline`: the same run with no stack at all, to compare with. Each
//! member sends each message as one plain UDP datagram to each other
//! member, one `send_to` system call per datagram (no batching, no
//! retransmission, no runtime), with the same payload and timestamps; the
//! receivers count and time them as a stack member does.
//!
//! A member counts its own messages as delivered when it sends them (a
//! stack delivers a member's own casts to it too), so that `delivered` and
//! `expected` compare with a stack's run; only datagrams from other members
//! are timed. Lost datagrams stay lost: the result says how many of those
//! expected from others arrived (`loss_percent`). A member is done when its
//! own sending is over and no datagram came for [`IDLE`].
//!
//! Started by the coordinator, the members start together on its `start`.
//! One member per host, they first wait for each other: each sends a small
//! hello (shorter than any payload, so never counted) to every peer every
//! [`HELLO_EVERY`] until it has heard from all of them and all of them have
//! heard from everyone; a member that has started answers every hello.

use super::link::{self, Command};
use super::meter::{cpu_time, peak_rss_mib, Mark, Meter, Pacer};
use super::report::{MemberResult, Row};
use super::wire::{self, Header, PayloadMaker};
use super::{due, print_results, Plan, Progress, Role, CHILD_PROGRESS, HOST_PROGRESS};
use crate::node::{signal_exit, sleep_until, Signals};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant as Clock;

/// Silence after which a member whose own sending is over is done.
const IDLE: Duration = Duration::from_millis(500);
/// How often a member waiting for its peers says hello.
const HELLO_EVERY: Duration = Duration::from_millis(100);
/// The first byte of a hello; the second says whether the sender has heard from every peer.
const HELLO: u8 = b'h';
/// A UDP socket bound at `addr` with the UDP transport's buffers.
fn bind(addr: SocketAddr) -> Result<UdpSocket, String> {
    let socket = strata::transport::udp::bound_socket(addr).map_err(|e| format!("cannot bind {addr}: {e}"))?;
    UdpSocket::from_std(socket).map_err(|e| format!("cannot set up the socket: {e}"))
}

/// What the sending task reports when it is over: when.
type SendEnd = Result<Clock, String>;

/// One baseline member.
struct Raw<'a> {
    plan: &'a Plan,
    index: usize,
    socket: Arc<UdpSocket>,
    /// The other members' addresses.
    peers: Vec<SocketAddr>,
    /// Datagrams from other members (its `expected` is never reached: the
    /// window is decided here, see [`Raw::window`]).
    meter: Meter,
    /// Datagrams expected from other members.
    remote_expected: u64,
    /// Own messages sent (each counts as a delivery to itself).
    sent: Arc<AtomicU64>,
    sender: Option<JoinHandle<SendEnd>>,
    /// When own sending ended (at once for a member that does not send).
    send_end: Option<Clock>,
    /// When the last datagram from another member came (or the start).
    last_rx: Clock,
    /// Sending over and [`IDLE`] passed without a datagram: the numbers are final.
    done: Option<Mark>,
    signals: Signals,
    commands: Option<mpsc::UnboundedReceiver<Command>>,
    /// The slow member's pace.
    pacer: Option<Pacer>,
    progress_lines: Progress,
    buf: Vec<u8>,
}

/// Why [`Raw::pump`] returned.
enum Wake {
    Done,
    Command(Command),
    Signal(i32),
}

impl Raw<'_> {
    fn delivered(&self) -> u64 {
        self.meter.delivered + self.sent.load(Ordering::Relaxed)
    }

    fn start(&mut self) {
        self.meter.start();
        let now = Clock::now();
        self.last_rx = now;
        self.progress_lines.restart(self.delivered());
        if !self.plan.casts_from(self.index) {
            self.send_end = Some(now);
            return;
        }
        let mut maker = PayloadMaker::new(self.plan.size, wire::host_id(), self.index as u32);
        let (socket, peers, sent, casts, rate) = (self.socket.clone(), self.peers.clone(), self.sent.clone(), self.plan.casts, self.plan.rate);
        self.sender = Some(tokio::spawn(async move {
            let began = Clock::now();
            let mut refused = 0u64;
            for k in 0..casts {
                if rate.is_some() {
                    sleep_until(due(began, k, rate)).await;
                }
                let payload = maker.stamp();
                for peer in &peers {
                    // One system call per datagram; a peer that is gone
                    // (ICMP port unreachable) does not stop the others.
                    match socket.send_to(payload, *peer).await {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                        Err(e) => return Err(format!("cannot send to {peer}: {e}")),
                    }
                }
                sent.store(k + 1, Ordering::Relaxed);
            }
            if refused > 0 {
                tracing::warn!(refused, "datagrams refused by their receivers (a member gone?)");
            }
            Ok(Clock::now())
        }));
    }

    /// Takes datagrams until sending is over and the member has been idle
    /// for [`IDLE`], or a command or signal comes.
    async fn pump(&mut self, until_done: bool) -> Result<Wake, String> {
        loop {
            if until_done && self.done.is_some() {
                return Ok(Wake::Done);
            }
            let now = Clock::now();
            let gate = self.pacer.as_ref().and_then(|p| p.wait_until(now));
            let idle_at = match (self.meter.started, self.send_end, self.done) {
                (Some(_), Some(_), None) => Some(self.last_rx + IDLE),
                _ => None,
            };
            tokio::select! {
                biased;
                sig = self.signals.recv() => return Ok(Wake::Signal(sig)),
                cmd = link::next(&mut self.commands) => return Ok(Wake::Command(cmd)),
                end = link::sending_ended(&mut self.sender) => {
                    self.sender = None;
                    self.send_end = Some(end?);
                }
                _ = sleep_until(gate), if gate.is_some() => {}
                got = self.socket.recv_from(&mut self.buf), if gate.is_none() => match got {
                    Ok((len, from)) => self.receive(len, from).await,
                    Err(e) => tracing::debug!("receive error: {e}"),
                },
                _ = self.progress_lines.tick.tick() => self.report_progress(),
                _ = sleep_until(idle_at), if idle_at.is_some() => {
                    if self.last_rx + IDLE <= Clock::now() {
                        self.done = Some(Mark::now());
                        self.report_progress();
                    }
                }
            }
        }
    }

    async fn receive(&mut self, len: usize, from: SocketAddr) {
        let data = &self.buf[..len];
        if len < wire::HEADER_LEN {
            // A hello from a peer still waiting for the others: answer it.
            if data.first() == Some(&HELLO) && self.peers.contains(&from) {
                let _ = self.socket.send_to(&[HELLO, 1], from).await;
            }
            return;
        }
        // Counted even before this member's own start: a peer may start a
        // moment earlier, and its first datagrams are part of the run.
        if !self.peers.contains(&from) {
            return;
        }
        let now = self.meter.count(Header::read(data));
        self.last_rx = now;
        if let Some(pacer) = &mut self.pacer {
            pacer.took(now);
        }
    }

    fn report_progress(&mut self) {
        let Some(start) = self.meter.started else { return };
        let (delivered, sent) = (self.delivered(), self.sent.load(Ordering::Relaxed));
        let (child, done) = (self.commands.is_some(), self.done.is_some());
        self.progress_lines.member_line(child, start.at, delivered, self.plan.expected(), sent, done);
    }

    /// Start to the later of the last datagram and the end of own sending;
    /// CPU until done (or now).
    fn window(&self) -> (Duration, Duration) {
        let Some(start) = self.meter.started else { return (Duration::ZERO, Duration::ZERO) };
        let end = [self.meter.last_delivery, self.send_end].into_iter().flatten().max().unwrap_or(start.at);
        let cpu = self.done.map_or_else(cpu_time, |d| d.cpu);
        (end.saturating_duration_since(start.at), cpu.saturating_sub(start.cpu))
    }

    fn result(&mut self, addr: SocketAddr) -> MemberResult {
        let (window, cpu) = self.window();
        MemberResult {
            index: self.index,
            addr: addr.to_string(),
            pid: std::process::id(),
            delivered: self.delivered(),
            expected: self.plan.expected(),
            sent: self.sent.load(Ordering::Relaxed),
            complete: self.done.is_some(),
            window_s: window.as_secs_f64(),
            cpu_s: cpu.as_secs_f64(),
            rss_mib: peak_rss_mib(),
            latency: std::mem::take(&mut self.meter.latency),
            remote: Some((self.remote_expected, self.meter.delivered)),
        }
    }

    fn stop_sending(&mut self) {
        if let Some(sender) = self.sender.take() {
            sender.abort();
        }
    }
}

/// Runs this process's baseline member.
pub async fn run(plan: &Plan) -> Result<ExitCode, String> {
    let signals = Signals::new().map_err(|e| format!("cannot handle signals: {e}"))?;
    match &plan.role {
        Role::Child { index } => run_child(plan, *index, signals).await,
        Role::Host { bind, members, index, .. } => {
            let peers = members.iter().map(|m| m.addr()).filter(|a| a != bind).collect();
            run_host(plan, *bind, peers, *index, signals).await
        }
        Role::Coordinator => Err("internal: the coordinator is not a member".into()),
    }
}

fn member<'a>(
    plan: &'a Plan,
    index: usize,
    socket: UdpSocket,
    peers: Vec<SocketAddr>,
    signals: Signals,
    commands: Option<mpsc::UnboundedReceiver<Command>>,
) -> Raw<'a> {
    let progress_lines = Progress::every(if commands.is_some() { CHILD_PROGRESS } else { HOST_PROGRESS });
    let senders_among_peers = match plan.senders {
        super::Senders::All => peers.len() as u64,
        super::Senders::One => u64::from(!plan.casts_from(index)),
    };
    let now = Clock::now();
    Raw {
        plan,
        index,
        socket: Arc::new(socket),
        peers,
        meter: Meter::new(u64::MAX, wire::host_id()),
        remote_expected: senders_among_peers * plan.casts,
        sent: Arc::new(AtomicU64::new(0)),
        sender: None,
        send_end: None,
        last_rx: now,
        done: None,
        signals,
        commands,
        pacer: plan.slow_rate_of(index).map(Pacer::new),
        progress_lines,
        buf: vec![0; 65_536],
    }
}

async fn run_child(plan: &Plan, index: usize, mut signals: Signals) -> Result<ExitCode, String> {
    let mut commands = link::commands();
    let socket = bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))?;
    let me = socket.local_addr().map_err(|e| format!("cannot read the socket's address: {e}"))?;
    let peers = match link::await_peers(me, index, plan.members, &mut commands, &mut signals).await? {
        Ok(peers) => peers,
        Err(code) => return Ok(code),
    };
    let others = peers.into_iter().filter(|a| *a != me).collect();
    let mut raw = member(plan, index, socket, others, signals, Some(commands));
    link::report(json!({"ev": "ready"}));
    loop {
        match raw.pump(false).await? {
            Wake::Command(Command::Start) => raw.start(),
            Wake::Command(Command::Finish) => break,
            Wake::Command(Command::Closed) => return Ok(ExitCode::FAILURE),
            Wake::Command(Command::Peers(_)) | Wake::Done => {}
            Wake::Signal(sig) => return Ok(signal_exit(sig)),
        }
    }
    raw.stop_sending();
    link::report(raw.result(me).to_wire());
    Ok(ExitCode::SUCCESS)
}

async fn run_host(plan: &Plan, bind_addr: SocketAddr, peers: Vec<SocketAddr>, index: usize, signals: Signals) -> Result<ExitCode, String> {
    let socket = bind(bind_addr)?;
    let mut raw = member(plan, index, socket, peers, signals, None);
    let first = match meet_peers(&mut raw).await? {
        Met::Signal(sig) => return Ok(signal_exit(sig)),
        Met::All => None,
        Met::Data(len, from) => Some((len, from)),
    };
    raw.start();
    if let Some((len, from)) = first {
        // A peer's first payload, still in the buffer.
        raw.receive(len, from).await;
    }
    let signal = match raw.pump(true).await? {
        Wake::Signal(sig) => Some(sig),
        _ => None,
    };
    raw.stop_sending();
    let result = raw.result(bind_addr);
    print_results(plan, &[Row::of(result)]);
    match signal {
        Some(sig) => {
            eprintln!("strata perf: stopped by signal {sig}");
            Ok(signal_exit(sig))
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// How the wait for the peers ended.
enum Met {
    /// Every peer has heard from everyone.
    All,
    /// A peer has started already: its first payload (length, sender) is in the buffer.
    Data(usize, SocketAddr),
    Signal(i32),
}

/// The hello exchange of one member per host (see the module docs);
/// fails after `--linger` without news from a peer.
async fn meet_peers(raw: &mut Raw<'_>) -> Result<Met, String> {
    let n = raw.peers.len();
    let (mut heard, mut ready) = (vec![false; n], vec![false; n]);
    let mut news = Clock::now();
    let mut hello_at = Clock::now();
    loop {
        let heard_all = heard.iter().all(|h| *h);
        if heard_all && ready.iter().all(|r| *r) {
            // Once more, so that a peer that lost the last one hears it.
            for peer in &raw.peers {
                let _ = raw.socket.send_to(&[HELLO, 1], *peer).await;
            }
            return Ok(Met::All);
        }
        if Clock::now() >= hello_at {
            for peer in &raw.peers {
                let _ = raw.socket.send_to(&[HELLO, u8::from(heard_all)], *peer).await;
            }
            hello_at = Clock::now() + HELLO_EVERY;
        }
        let give_up = news + raw.plan.linger;
        tokio::select! {
            sig = raw.signals.recv() => return Ok(Met::Signal(sig)),
            _ = tokio::time::sleep_until(hello_at) => {}
            _ = tokio::time::sleep_until(give_up) => {
                let missing: Vec<String> = raw.peers.iter().zip(&ready).filter(|(_, r)| !**r).map(|(p, _)| p.to_string()).collect();
                return Err(format!("no word from {} within --linger ({} s)", missing.join(", "), raw.plan.linger.as_secs_f64()));
            }
            got = raw.socket.recv_from(&mut raw.buf) => {
                let Ok((len, from)) = got else { continue };
                let Some(i) = raw.peers.iter().position(|p| *p == from) else { continue };
                if len == 2 && raw.buf[0] == HELLO {
                    let was = heard.iter().all(|h| *h);
                    heard[i] = true;
                    ready[i] |= raw.buf[1] == 1;
                    news = Clock::now();
                    if !was && heard.iter().all(|h| *h) {
                        hello_at = Clock::now();
                    }
                } else if len >= wire::HEADER_LEN {
                    // A peer started already, so everyone heard from everyone.
                    return Ok(Met::Data(len, from));
                }
            }
        }
    }
}
