//! One member of a perf run over a real stack: joins through the runtime
//! (`Endpoint`, `Group`, `Events`, exactly as an application does), waits
//! until the group is whole, casts (from a task of its own) while it takes
//! deliveries, and measures ([`Meter`]).
//!
//! Everything but the casting runs in one task, around [`Member::pump`]:
//! it takes events (at most `--slow-rate` deliveries per second on the slow
//! member), the coordinator's commands, signals, and the progress tick,
//! until what it waits for happens.
//!
//! - Started by the coordinator (loopback): bound → `peers` → join → ready
//!   (with a membership layer: in a view of all N) → `start` → complete →
//!   `finish` → result line, leave (bounded), exit. Stdin ending means the
//!   coordinator is gone: exit at once.
//! - One member per host: bind → join → ready → start → complete or
//!   `--linger` without progress → (complete: flush own casts; fixed
//!   membership: wait for the group to fall silent; membership: leave) →
//!   print the results.

use super::link::{self, Command};
use super::meter::{peak_rss_mib, Meter, Pacer};
use super::report::{MemberResult, Row};
use super::wire::{self, PayloadMaker};
use super::{due, print_results, Plan, Progress, Role, CHILD_PROGRESS, HOST_PROGRESS};
use crate::node::{self, signal_exit, sleep_until, Signals, WRAP_UP};
use serde_json::json;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata::runtime::{Endpoint, Events, Group};
use strata::{AppEvent, Delivery, MemberId, Registry, SafeTag};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant as Clock;

/// Events taken per wake-up of the member's task when several are waiting.
const EVENT_BATCH: usize = 64;
/// A deadline that does not come (for a `--linger` too long to add to a clock).
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// What [`Member::pump`] waits for besides its future.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// A view of all N members (immediate with fixed membership).
    Ready,
    /// Every expected delivery.
    Complete,
    /// Nothing but the future and the commands.
    Nothing,
}

/// Why [`Member::pump`] returned.
enum Wake<T> {
    /// The future finished.
    Done(T),
    /// The goal was reached.
    Reached,
    /// A command from the coordinator.
    Command(Command),
    /// One member per host: `--linger` passed without progress.
    Linger,
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// The events stream ended while the goal was not reached.
    Gone,
}

/// One member's state.
struct Member<'a> {
    plan: &'a Plan,
    index: usize,
    group: Group,
    events: Events,
    events_open: bool,
    /// Whether a view of all N members was installed (or membership is fixed).
    ready: bool,
    meter: Meter,
    /// Own casts made, counted by the caster task.
    sent: Arc<AtomicU64>,
    caster: Option<JoinHandle<Result<(), String>>>,
    pacer: Option<Pacer>,
    /// With SAFE: the tags of deliveries, on their way to `Group::done`.
    done: Option<mpsc::UnboundedSender<SafeTag>>,
    signals: Signals,
    /// The coordinator's commands (loopback member processes only).
    commands: Option<mpsc::UnboundedReceiver<Command>>,
    /// The last delivery or view (for `--linger`, one member per host).
    progress: Clock,
    progress_lines: Progress,
    /// Fires at the `--linger` deadline as it was when armed; re-armed
    /// from there (one timer, not one per event).
    linger_timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Member<'_> {
    fn child(&self) -> bool {
        self.commands.is_some()
    }

    /// Takes events, commands and ticks while `fut` runs, until it
    /// finishes, `goal` is reached, a command or a signal comes, or (one
    /// member per host) `--linger` passes without progress.
    async fn pump<F: Future>(&mut self, fut: F, goal: Goal) -> Result<Wake<F::Output>, String> {
        let mut fut = pin!(fut);
        loop {
            match goal {
                Goal::Ready if self.ready => return Ok(Wake::Reached),
                Goal::Complete if self.meter.complete() => return Ok(Wake::Reached),
                Goal::Ready | Goal::Complete if !self.events_open => return Ok(Wake::Gone),
                _ => {}
            }
            let gate = self.pacer.as_ref().and_then(|p| p.wait_until(Clock::now()));
            let host = !self.child();
            tokio::select! {
                biased;
                sig = self.signals.recv() => return Ok(Wake::Signal(sig)),
                cmd = link::next(&mut self.commands) => return Ok(Wake::Command(cmd)),
                result = link::sending_ended(&mut self.caster) => {
                    self.caster = None;
                    result?;
                }
                _ = sleep_until(gate), if gate.is_some() => {}
                ev = self.events.next(), if self.events_open && gate.is_none() => match ev {
                    Some(ev) => {
                        self.handle(ev);
                        self.handle_waiting();
                    }
                    None => self.events_open = false,
                },
                out = &mut fut => return Ok(Wake::Done(out)),
                _ = self.progress_lines.tick.tick() => self.report_progress(),
                _ = &mut self.linger_timer, if host => {
                    let at = self.linger_deadline();
                    if at <= Clock::now() {
                        return Ok(Wake::Linger);
                    }
                    self.linger_timer.as_mut().reset(at);
                }
            }
        }
    }

    /// When `--linger` runs out if nothing happens (far away for a
    /// `--linger` too long to add).
    fn linger_deadline(&self) -> Clock {
        self.progress.checked_add(self.plan.linger).unwrap_or_else(|| self.progress + FOREVER)
    }

    /// Handles the events already waiting, up to [`EVENT_BATCH`] (not on
    /// the slow member, which takes them one by one).
    fn handle_waiting(&mut self) {
        if self.pacer.is_some() {
            return;
        }
        for _ in 0..EVENT_BATCH {
            match self.events.try_next() {
                Some(ev) => self.handle(ev),
                None => break,
            }
        }
    }

    fn handle(&mut self, ev: AppEvent) {
        match ev {
            AppEvent::Deliver { kind: kind @ (Delivery::Cast | Delivery::Safe { .. }), body, .. } => {
                let was_complete = self.meter.complete();
                let now = match self.meter.deliver(&body) {
                    Some(at) => at,
                    None => {
                        tracing::debug!(len = body.len(), "a delivery that is not a perf payload");
                        Clock::now()
                    }
                };
                self.progress = now;
                if let Delivery::Safe { tag, .. } = kind {
                    let group = &self.group;
                    let _ = self.done.get_or_insert_with(|| node::spawn_done(group.clone())).send(tag);
                }
                if let Some(pacer) = &mut self.pacer {
                    pacer.took(now);
                }
                if !was_complete && self.meter.complete() && self.meter.started.is_some() && self.child() {
                    // The coordinator learns at once, not at the next tick.
                    self.report_progress();
                }
            }
            AppEvent::View(view) => {
                tracing::debug!(view = %view.id(), members = view.members().len(), "view");
                if view.is_primary() && view.members().len() >= self.plan.members {
                    self.ready = true;
                }
                self.progress = Clock::now();
            }
            AppEvent::Lost { from, count } => tracing::warn!(%from, count, "the stack gave up on messages"),
            AppEvent::Problem(p) => tracing::warn!(layer = p.layer, "{}", p.what),
            AppEvent::Suspect(m) => tracing::info!(member = %m, "suspected"),
            other => tracing::trace!(event = ?other, "event"),
        }
    }

    /// The start signal: the window opens and, on a sender, casting begins.
    fn start(&mut self) {
        self.meter.start();
        let now = Clock::now();
        self.progress = now;
        self.progress_lines.restart(self.meter.delivered);
        if !self.plan.casts_from(self.index) {
            return;
        }
        let mut maker = PayloadMaker::new(self.plan.size, wire::host_id(), self.index as u32);
        let (group, sent, casts, rate) = (self.group.clone(), self.sent.clone(), self.plan.casts, self.plan.rate);
        self.caster = Some(tokio::spawn(async move {
            let began = Clock::now();
            for k in 0..casts {
                if rate.is_some() {
                    // Deadlines from the start: a late cast is caught up on.
                    sleep_until(due(began, k, rate)).await;
                }
                group.cast(maker.make()).await.map_err(|e| format!("cast {k} failed: {e}"))?;
                sent.store(k + 1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }

    /// A progress report: a line to the coordinator, or (on its own) a
    /// line on stderr. Nothing before the start.
    fn report_progress(&mut self) {
        let Some(start) = self.meter.started else { return };
        let (child, sent, done) = (self.child(), self.sent.load(Ordering::Relaxed), self.meter.complete());
        self.progress_lines.member_line(child, start.at, self.meter.delivered, self.meter.expected, sent, done);
    }

    /// The member's numbers (its latency samples move into the result).
    fn result(&mut self, addr: SocketAddr) -> MemberResult {
        let (window, cpu) = self.meter.window();
        MemberResult {
            index: self.index,
            addr: addr.to_string(),
            pid: std::process::id(),
            delivered: self.meter.delivered,
            expected: self.meter.expected,
            sent: self.sent.load(Ordering::Relaxed),
            complete: self.meter.complete(),
            window_s: window.as_secs_f64(),
            cpu_s: cpu.as_secs_f64(),
            rss_mib: peak_rss_mib(),
            latency: std::mem::take(&mut self.meter.latency),
            remote: None,
        }
    }

    fn stop_casting(&mut self) {
        if let Some(caster) = self.caster.take() {
            caster.abort();
        }
    }
}

/// Runs this process's member.
pub async fn run(plan: &Plan, registry: Registry) -> Result<ExitCode, String> {
    let signals = Signals::new().map_err(|e| format!("cannot handle signals: {e}"))?;
    match &plan.role {
        Role::Child { index } => run_child(plan, *index, registry, signals).await,
        Role::Host { bind, members, index, .. } => run_host(plan, *bind, members, *index, registry, signals).await,
        Role::Coordinator => Err("internal: the coordinator is not a member".into()),
    }
}

/// Joins and builds the member's state (not ready, not started).
async fn join<'a>(
    plan: &'a Plan,
    endpoint: &Endpoint,
    members: &[MemberId],
    index: usize,
    signals: Signals,
    commands: Option<mpsc::UnboundedReceiver<Command>>,
) -> Result<Member<'a>, String> {
    let cfg = node::join_config(&plan.group, &plan.stack, members, plan.membership);
    let (group, events) = endpoint.join(cfg).await.map_err(|e| e.to_string())?;
    let progress_lines = Progress::every(if commands.is_some() { CHILD_PROGRESS } else { HOST_PROGRESS });
    let now = Clock::now();
    Ok(Member {
        plan,
        index,
        group,
        events,
        events_open: true,
        ready: !plan.membership,
        meter: Meter::new(plan.expected(), wire::host_id()),
        sent: Arc::new(AtomicU64::new(0)),
        caster: None,
        pacer: plan.slow_rate_of(index).map(Pacer::new),
        done: None,
        signals,
        commands,
        progress: now,
        progress_lines,
        linger_timer: Box::pin(tokio::time::sleep_until(now.checked_add(plan.linger).unwrap_or(now + FOREVER))),
    })
}

/// A member process of a loopback run (see the module docs and `link`).
async fn run_child(plan: &Plan, index: usize, registry: Registry, mut signals: Signals) -> Result<ExitCode, String> {
    let mut commands = link::commands();
    let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let (endpoint, facts) = node::bind_endpoint(&plan.transport, bind, &plan.group, registry).await?;
    let me = endpoint.local_addr();
    let peers = match link::await_peers(me, index, plan.members, &mut commands, &mut signals).await? {
        Ok(peers) => peers,
        Err(code) => return Ok(code),
    };
    let mut members = vec![MemberId::new(me, 0)];
    members.extend(peers.iter().filter(|a| **a != me).map(|a| MemberId::new(*a, 0)));
    let mut m = join(plan, &endpoint, &members, index, signals, Some(commands)).await?;

    #[derive(PartialEq)]
    enum Phase {
        Joining,
        Waiting,
        Running,
        Complete,
    }
    let mut phase = Phase::Joining;
    loop {
        let goal = match phase {
            Phase::Joining => Goal::Ready,
            Phase::Running => Goal::Complete,
            Phase::Waiting | Phase::Complete => Goal::Nothing,
        };
        match m.pump(std::future::pending::<()>(), goal).await? {
            Wake::Reached if phase == Phase::Joining => {
                link::report(json!({"ev": "ready"}));
                phase = Phase::Waiting;
            }
            Wake::Reached => phase = Phase::Complete,
            Wake::Command(Command::Start) if phase == Phase::Waiting => {
                m.start();
                phase = Phase::Running;
            }
            Wake::Command(Command::Finish) => break,
            Wake::Command(Command::Closed) => return Ok(ExitCode::FAILURE),
            Wake::Command(_) => {}
            Wake::Signal(sig) => return Ok(signal_exit(sig)),
            Wake::Gone => return Err("the group ended under this member".into()),
            Wake::Linger | Wake::Done(()) => {}
        }
    }
    m.stop_casting();
    link::report(m.result(me).to_wire());
    // Everybody is complete (or the run is over): nobody needs anything from
    // this member. With a membership layer it leaves (bounded), as an
    // application would; the coordinator no longer waits for anything.
    if plan.membership {
        let group = m.group.clone();
        let _ = m.pump(tokio::time::timeout(WRAP_UP, group.leave()), Goal::Nothing).await;
    }
    node::shut_down(&endpoint, &facts).await;
    Ok(ExitCode::SUCCESS)
}

/// One member per host: runs, completes as `strata node` does, prints its results.
async fn run_host(plan: &Plan, bind: SocketAddr, members: &[MemberId], index: usize, registry: Registry, signals: Signals) -> Result<ExitCode, String> {
    let (endpoint, facts) = node::bind_endpoint(&plan.transport, bind, &plan.group, registry).await?;
    let mut m = join(plan, &endpoint, members, index, signals, None).await?;
    let mut ending: Option<String> = None;
    let mut signal = None;
    match m.pump(std::future::pending::<()>(), Goal::Ready).await? {
        Wake::Reached => m.start(),
        Wake::Signal(sig) => signal = Some(sig),
        Wake::Linger => ending = Some(format!("no view of all {} members within --linger ({} s)", plan.members, plan.linger.as_secs_f64())),
        Wake::Gone => ending = Some("the group ended before it was whole".into()),
        Wake::Done(()) | Wake::Command(_) => {}
    }
    if ending.is_none() && signal.is_none() {
        match m.pump(std::future::pending::<()>(), Goal::Complete).await? {
            Wake::Reached => {}
            Wake::Signal(sig) => signal = Some(sig),
            Wake::Linger => {
                ending = Some(format!(
                    "no delivery for --linger ({} s): delivered {} of {}; stopping",
                    plan.linger.as_secs_f64(),
                    m.meter.delivered,
                    m.meter.expected
                ))
            }
            Wake::Gone => ending = Some(format!("the group ended after {} of {} deliveries", m.meter.delivered, m.meter.expected)),
            Wake::Done(()) | Wake::Command(_) => {}
        }
    }
    // The numbers are taken now: what follows is not part of the window.
    let result = m.result(bind);
    m.stop_casting();
    if ending.is_none() && signal.is_none() {
        signal = wrap_up(&mut m, &endpoint, plan).await?;
    }
    node::shut_down(&endpoint, &facts).await;
    print_results(plan, &[Row::of(result)]);
    if let Some(sig) = signal {
        eprintln!("strata perf: stopped by signal {sig}");
        return Ok(signal_exit(sig));
    }
    match ending {
        Some(what) => {
            eprintln!("strata perf: {what}");
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// After a complete run, as `strata node` does: flush (own casts stable);
/// with fixed membership wait until the group falls silent (a peer may
/// still need this member's acknowledgements), then leave; with a
/// membership layer leave (a view change). Each wait is bounded by
/// `--linger`. Returns the signal that cut it short, if any.
async fn wrap_up(m: &mut Member<'_>, endpoint: &Endpoint, plan: &Plan) -> Result<Option<i32>, String> {
    let group = m.group.clone();
    m.progress = Clock::now();
    match m.pump(group.flush(), Goal::Nothing).await? {
        Wake::Signal(sig) => return Ok(Some(sig)),
        Wake::Done(Err(e)) => tracing::warn!("flush failed: {e}"),
        Wake::Linger => tracing::warn!("own casts not stable after --linger; stopping anyway"),
        _ => {}
    }
    if let Some(quiet) = plan.quiet {
        m.progress = Clock::now();
        if let Wake::Signal(sig) = m.pump(node::settle(endpoint, quiet), Goal::Nothing).await? {
            return Ok(Some(sig));
        }
    }
    m.progress = Clock::now();
    let limit = if plan.membership { plan.linger } else { WRAP_UP };
    match m.pump(tokio::time::timeout(limit, group.leave()), Goal::Nothing).await? {
        Wake::Signal(sig) => Ok(Some(sig)),
        Wake::Done(Ok(Ok(()))) => Ok(None),
        _ => {
            if plan.membership {
                tracing::warn!("the group did not confirm the leave within --linger");
            }
            Ok(None)
        }
    }
}
