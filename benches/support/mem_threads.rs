//! A group whose members each run on a thread of their own with a
//! single-threaded tokio runtime, over the in-process transport
//! (`MemNetwork`: bounded queues, frames bundled as over UDP by default),
//! through the public runtime API as an application uses it: for the
//! whole-stack benches on the real clock (`benches/stacks.rs`) and
//! `examples/mem_group.rs`. The caller's thread forms the group once, then
//! drives it burst by burst over channels (a command per member, an answer
//! from each), and shuts it down at the end.

use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use strata::runtime::{Endpoint, Events, Group, JoinConfig};
use strata::transport::mem::MemNetwork;
use strata::{AppEvent, MemberId, Props, Registry};
use tokio::sync::mpsc;

/// Events taken from a group at a time.
const EVENT_BATCH: usize = 256;
/// Room in each member's events channel.
const EVENT_CAPACITY: usize = 8192;
/// How long a member waits for the group to form, or for its next delivery
/// in a burst, before it gives up and reports why.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long the bench's thread waits for an answer: longer than
/// [`PATIENCE`], so that a member that gives up is the one that explains.
const ANSWER_LIMIT: Duration = Duration::from_secs(20);

/// A member's answer at each step (joined; sees the whole group; delivered a
/// whole burst): which member, and when it got there, or why it could not.
type Answer = Result<(usize, Instant), String>;

/// What every member of the group shares.
struct Setup {
    label: String,
    spec: String,
    members: usize,
    net: MemNetwork,
    registry: Arc<Registry>,
    /// With a membership layer, member 0 founds the group and the others
    /// join through it; without one, every member starts in the fixed view
    /// of all of them.
    membership: bool,
    /// What every cast carries.
    body: Bytes,
}

fn addr(index: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + index as u16))
}

/// A formed group of `members` member threads, idle between bursts (they
/// keep reading their events, so the group stays healthy).
pub struct ThreadedGroup {
    label: String,
    /// Each member's commands: the casts of its next burst. Closing the
    /// channel shuts the member down.
    commands: Vec<mpsc::UnboundedSender<usize>>,
    answers: std_mpsc::Receiver<Answer>,
    threads: Vec<JoinHandle<()>>,
}

impl ThreadedGroup {
    /// Starts the members of a `spec` group on `net` and returns once every
    /// one sees a view of all of them, or why the group did not form.
    pub fn form(label: &str, spec: &str, members: usize, body: &Bytes, net: MemNetwork) -> Result<ThreadedGroup, String> {
        let registry = strata::builtin_registry();
        let resolved = registry.resolve(spec).map_err(|e| format!("{label}: {e}"))?;
        let membership = resolved.layers.iter().any(|(d, _)| d.provides.contains(Props::MEMBERSHIP));
        let setup =
            Arc::new(Setup { label: label.to_string(), spec: spec.to_string(), members, net, registry: Arc::new(registry), membership, body: body.clone() });
        let (answer, answers) = std_mpsc::channel();
        let mut this = ThreadedGroup { label: label.to_string(), commands: Vec::new(), answers, threads: Vec::new() };
        // Every member answers twice before its first burst: joined, whole view.
        let mut pending = 2 * members;
        for index in 0..members {
            this.spawn(index, &setup, answer.clone());
            if index == 0 && membership {
                // The others join through the founder: it must be there first.
                this.wait(1, "found the group")?;
                pending -= 1;
            }
        }
        this.wait(pending, "join and see the whole group")?;
        Ok(this)
    }

    fn spawn(&mut self, index: usize, setup: &Arc<Setup>, answer: std_mpsc::Sender<Answer>) {
        let (command, commands) = mpsc::unbounded_channel();
        let setup = setup.clone();
        let thread = std::thread::Builder::new()
            .name(format!("member {index}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
                rt.block_on(member(index, &setup, commands, answer));
            })
            .expect("a member thread");
        self.commands.push(command);
        self.threads.push(thread);
    }

    /// Waits for `n` answers: when each member (by index) got there, or
    /// the reason one gave up.
    fn wait(&self, n: usize, what: &str) -> Result<Vec<(usize, Instant)>, String> {
        (0..n)
            .map(|_| match self.answers.recv_timeout(ANSWER_LIMIT) {
                Ok(Ok(at)) => Ok(at),
                Ok(Err(why)) => Err(format!("{}: {why}", self.label)),
                Err(std_mpsc::RecvTimeoutError::Timeout) => Err(format!("{}: the members did not {what} within {ANSWER_LIMIT:?}", self.label)),
                Err(std_mpsc::RecvTimeoutError::Disconnected) => Err(format!("{}: every member thread ended before they could {what}", self.label)),
            })
            .collect()
    }

    /// One burst: every member casts `casts` messages at once. Returns, for
    /// each member, the time from the start signal until it had delivered
    /// all of them (every member's, its own included), or why one could not.
    pub fn burst(&self, casts: usize) -> Result<Vec<Duration>, String> {
        let start = Instant::now();
        for (index, command) in self.commands.iter().enumerate() {
            command.send(casts).map_err(|_| format!("{}: member {index} has stopped", self.label))?;
        }
        let mut took = vec![Duration::ZERO; self.commands.len()];
        for (index, at) in self.wait(self.commands.len(), "deliver a burst")? {
            took[index] = at.saturating_duration_since(start);
        }
        Ok(took)
    }

    /// Shuts every member's endpoint down and joins the threads.
    pub fn shutdown(mut self) {
        // Closing the command channels is the members' signal to stop.
        self.commands.clear();
        for thread in self.threads.drain(..) {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// One member's life: joins, answers at each step, runs a burst per
/// command, and shuts its endpoint down once the commands end (or it gave up).
async fn member(index: usize, setup: &Arc<Setup>, mut commands: mpsc::UnboundedReceiver<usize>, answer: std_mpsc::Sender<Answer>) {
    let endpoint = Endpoint::new(setup.net.bind(addr(index)), setup.registry.clone());
    match Member::join(index, setup, &endpoint, &answer).await {
        Ok(mut member) => {
            while let Some(casts) = member.idle(&mut commands).await {
                // The bench's thread has gone if this fails: nobody to tell.
                let _ = answer.send(member.burst(casts).await.map(|at| (index, at)));
            }
        }
        Err(why) => {
            let _ = answer.send(Err(why));
        }
    }
    endpoint.shutdown().await;
}

/// A member of the formed group.
struct Member {
    index: usize,
    setup: Arc<Setup>,
    endpoint: Endpoint,
    group: Group,
    events: Events,
    batch: Vec<AppEvent>,
    /// Deliveries so far, and how many there are to be once the current
    /// burst is through.
    delivered: u64,
    target: u64,
    /// What a steady group should not see (a view change, messages given
    /// up on), noticed while idle and reported at the next burst.
    trouble: Option<String>,
}

impl Member {
    /// Joins (answering once joined) and waits for a view of every member
    /// (answering again).
    async fn join(index: usize, setup: &Arc<Setup>, endpoint: &Endpoint, answer: &std_mpsc::Sender<Answer>) -> Result<Member, String> {
        let mut cfg = JoinConfig::new("bench", setup.spec.clone());
        cfg.incarnation = u64::from(setup.membership);
        cfg.seed = index as u64;
        cfg.event_capacity = EVENT_CAPACITY;
        cfg.members = match (setup.membership, index) {
            (false, _) => (0..setup.members).map(|j| MemberId::new(addr(j), 0)).collect(),
            (true, 0) => Vec::new(),
            (true, _) => vec![MemberId::new(addr(0), 1)],
        };
        let (group, mut events) = endpoint.join(cfg).await.map_err(|e| format!("member {index} could not join: {e}"))?;
        let _ = answer.send(Ok((index, Instant::now())));
        // Without a membership layer the view is whole from the start.
        if setup.membership {
            let whole = async {
                while let Some(ev) = events.next().await {
                    if matches!(&ev, AppEvent::View(v) if v.len() == setup.members) {
                        return Ok(());
                    }
                }
                Err(format!("member {index}: the group closed before it formed"))
            };
            tokio::time::timeout(PATIENCE, whole).await.map_err(|_| format!("member {index}: no view of {} members within {PATIENCE:?}", setup.members))??;
        }
        let _ = answer.send(Ok((index, Instant::now())));
        Ok(Member {
            index,
            setup: setup.clone(),
            endpoint: endpoint.clone(),
            group,
            events,
            batch: Vec::with_capacity(EVENT_BATCH),
            delivered: 0,
            target: 0,
            trouble: None,
        })
    }

    /// Reads events until the next command; `None` once the commands end.
    async fn idle(&mut self, commands: &mut mpsc::UnboundedReceiver<usize>) -> Option<usize> {
        loop {
            tokio::select! {
                command = commands.recv() => return command,
                taken = self.events.next_many(&mut self.batch, EVENT_BATCH) => {
                    if taken == 0 {
                        self.trouble.get_or_insert_with(|| format!("member {}: the group closed", self.index));
                        return commands.recv().await;
                    }
                    self.take_batch();
                }
            }
        }
    }

    /// Casts `casts` messages from a task of its own (a cast may wait for
    /// the send window, which only reopens while events are read) and reads
    /// until every member's casts of this burst are delivered here. Answers
    /// when that happened.
    async fn burst(&mut self, casts: usize) -> Result<Instant, String> {
        if let Some(trouble) = self.trouble.take() {
            return Err(trouble);
        }
        self.target += (casts * self.setup.members) as u64;
        let caster = tokio::spawn(cast(self.index, self.group.clone(), self.setup.body.clone(), casts));
        match self.deliver_all().await {
            Ok(()) => {
                let done = Instant::now();
                caster.await.map_err(|e| format!("member {}: the caster: {e}", self.index))??;
                Ok(done)
            }
            Err(why) => {
                caster.abort();
                Err(why)
            }
        }
    }

    /// Reads events until `target` deliveries (some may have come while
    /// idle: the other members start a burst as soon as they hear of it);
    /// gives up after [`PATIENCE`] without one.
    async fn deliver_all(&mut self) -> Result<(), String> {
        let mut deadline = tokio::time::Instant::now() + PATIENCE;
        while self.delivered < self.target {
            match tokio::time::timeout_at(deadline, self.events.next_many(&mut self.batch, EVENT_BATCH)).await {
                Ok(0) => return Err(format!("member {}: the group closed after {} of {} deliveries", self.index, self.delivered, self.target)),
                Ok(_) => {
                    if self.take_batch() {
                        deadline = tokio::time::Instant::now() + PATIENCE;
                    }
                    if let Some(trouble) = self.trouble.take() {
                        return Err(trouble);
                    }
                }
                Err(_) => return Err(self.stalled().await),
            }
        }
        // No other burst starts before this member answers: more is a duplicate.
        if self.delivered > self.target {
            return Err(format!("member {}: {} deliveries of {} casts", self.index, self.delivered, self.target));
        }
        Ok(())
    }

    /// Takes the events in `batch`: counts deliveries (true if there were
    /// any) and notes what a steady group should not see.
    fn take_batch(&mut self) -> bool {
        let before = self.delivered;
        for ev in self.batch.drain(..) {
            match ev {
                AppEvent::Deliver { .. } => self.delivered += 1,
                AppEvent::View(v) if v.len() != self.setup.members => {
                    self.trouble.get_or_insert_with(|| format!("member {}: the view changed to {} members", self.index, v.len()));
                }
                AppEvent::Lost { from, count } => {
                    self.trouble.get_or_insert_with(|| format!("member {}: {count} messages of {from:?} were given up on", self.index));
                }
                AppEvent::Problem(p) => eprintln!("{}: member {}: {}: {}", self.setup.label, self.index, p.layer, p.what),
                _ => {}
            }
        }
        self.delivered > before
    }

    /// Why a burst stalled, with the group's and the endpoint's counters.
    async fn stalled(&self) -> String {
        let group = self.group.stats().await.map(|s| format!("{s:#?}")).unwrap_or_default();
        let endpoint = self.endpoint.stats().await.map(|s| format!("{s:#?}")).unwrap_or_default();
        format!("member {}: no delivery for {PATIENCE:?} after {} of {}\n{group}\n{endpoint}", self.index, self.delivered, self.target)
    }
}

/// Casts `casts` copies of `body`, each as soon as the group takes it.
async fn cast(index: usize, group: Group, body: Bytes, casts: usize) -> Result<(), String> {
    for k in 0..casts {
        group.cast(body.clone()).await.map_err(|e| format!("member {index}: cast {k} of {casts}: {e}"))?;
    }
    Ok(())
}
