//! Per-layer micro-benchmarks: every built-in layer alone (every layer of
//! `strata_layers::BUILTIN`, so a new one is benchmarked too), in views of
//! 8 and 64 members, every member casting 64-byte messages in turn,
//! measured at a member of rank 1 (not the sequencer, not the first token
//! holder).
//!
//! For each layer and view size it reports the time per message on the way
//! down (the application's casts) and on the way up (everything the model
//! network delivered, layer control messages included, per application
//! message), and prints the header bytes the layer adds per message and the
//! control messages it sends per message. `BASELINE`, a layer that forwards
//! everything, measures the harness's own cost per message (moving events
//! through the queue, reading the clock), which the other figures include;
//! the table printed at the end gives every figure with and without it
//! (criterion's own lines give each figure's spread).
//!
//! How each layer runs alone:
//!
//! - `VSYNC` in steady state: the members start as VSYNC does, outside any
//!   view, and form the group during a settling phase of 3 s of virtual time
//!   (the harness's `Workload::settle`, replayed untimed before every timed
//!   replay); the bench checks that the view holds every member and did not
//!   change while casts were measured. Heartbeats are its control messages.
//! - `TOTAL` and `TOKEN` run in the static initial view that a membership
//!   layer would otherwise install; the model network is the reliable FIFO
//!   network VSYNC gives them. `TOTAL-sequencer` is TOTAL observed at rank
//!   0, the sequencer, which orders every cast and announces the order.
//! - `SAFE` (memory only, no `log_dir`) cannot start alone: it waits for
//!   a view from the membership layer below and then runs a SYNC round
//!   before it is live. The harness plays that layer's part
//!   (`Workload::view_from_below`: every member gets the group's first
//!   view from below) and lets the round finish in a settling phase of
//!   50 ms. Deliveries count as done at once (no log), so the application
//!   sends no `Done`.
//! - `ENCRYPT` with a pre-shared key (`key_env`, set by the bench); each
//!   member's first cast costs a challenge round at every other member
//!   (a challenge and an answer), counted as control messages.
//! - `QUERY` passes ordinary casts (its DATA header): the workload casts,
//!   it does not query.
//! - `LOSS` with `percent=0`: the cost of deciding not to drop.
//!
//! Times are the thread's CPU time for a whole replay, shared between the
//! directions by the time-stamp counter read around each run of events (see
//! `per_message`), so that a replay during which another process took the
//! CPU (builds on a 2-core machine) is not charged for it. The table's
//! figures are medians over criterion's samples.
//!
//! `cargo bench --bench layers` (about 2 min 15 s on 2 cores);
//! `cargo bench --bench layers -- CAUSAL` for one layer, `-- 'NAK|TOTAL'`
//! for several (the baseline is measured for the table in any case).
//! Results and what they say: docs/ordering.md, "Measured".
//! The harness is `strata_stack::harness::bench`, usable for your own layers:
//! see `examples/bench_custom_layer.rs`.

use criterion::{criterion_group, criterion_main, Criterion};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;
use strata_layers::{debug::loss::LOSS, encrypt::ENCRYPT, safe::SAFE, total::TOTAL, vsync::VSYNC};
use strata_stack::harness::bench::{LayerBench, PerMessage, Recording, Senders, Workload};
use strata_stack::{LayerDescriptor, ParamValue, Params};

const SIZE: usize = 64;
const CASTS: usize = 20_000;
const VIEWS: [usize; 2] = [8, 64];
/// Virtual time for VSYNC to form its group: `join_timeout_ms` (1 s) for
/// the first member to found it, then the rounds that admit the others.
const VSYNC_SETTLE: Duration = Duration::from_secs(3);
/// Virtual time for SAFE's first view to become live: its SYNC round.
const SAFE_SETTLE: Duration = Duration::from_millis(50);
/// The environment variable ENCRYPT reads its key from in this bench.
const KEY_ENV: &str = "STRATA_LAYERS_BENCH_KEY";

/// One benchmarked layer (`None`: the baseline), the parameters it gets
/// other than its defaults, and how its group starts.
struct Case {
    /// The row's name: the layer's, or the layer's and the observer's role.
    name: &'static str,
    desc: Option<LayerDescriptor>,
    set: Vec<(&'static str, ParamValue)>,
    settle: Duration,
    view_from_below: bool,
    /// The rank recorded (1 unless said otherwise).
    observer: usize,
}

impl Case {
    fn of(desc: Option<LayerDescriptor>) -> Case {
        Case { name: desc.map_or("BASELINE", |d| d.name), desc, set: Vec::new(), settle: Duration::ZERO, view_from_below: false, observer: 1 }
    }

    fn workload(&self, members: usize) -> Workload {
        let w = Workload { observer: self.observer, ..Workload::new(members, SIZE, Senders::All, CASTS) }.settled(self.settle);
        if self.view_from_below {
            w.with_view_from_below()
        } else {
            w
        }
    }

    fn bench(&self) -> LayerBench {
        let Some(desc) = self.desc else { return LayerBench::baseline() };
        let mut params = Params::defaults(desc.params).expect("defaults are valid");
        for (name, value) in &self.set {
            params.set(name, value.clone());
        }
        LayerBench::new(desc.name, move || (desc.build)(&params).unwrap_or_else(|e| panic!("{} builds: {e}", desc.name)))
    }
}

/// The baseline, then every built-in layer in `strata layers` order (TOTAL
/// also at its sequencer).
fn cases() -> Vec<Case> {
    let mut cases = vec![Case::of(None)];
    for &desc in strata_layers::BUILTIN {
        if desc.name == TOTAL.name {
            cases.push(Case { name: "TOTAL-sequencer", observer: 0, ..Case::of(Some(desc)) });
        }
        let mut case = Case::of(Some(desc));
        if desc.name == ENCRYPT.name {
            case.set.push(("key_env", ParamValue::Str(KEY_ENV.into())));
        } else if desc.name == VSYNC.name {
            case.settle = VSYNC_SETTLE;
        } else if desc.name == SAFE.name {
            (case.settle, case.view_from_below) = (SAFE_SETTLE, true);
        } else if desc.name == LOSS.name {
            case.set.push(("percent", ParamValue::U64(0)));
        }
        cases.push(case);
    }
    cases
}

/// This thread's CPU time, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write; this clock exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is readable");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A cheap counter that grows at a constant rate: the time-stamp counter
/// (a few nanoseconds to read, against tens for the system clock), so that
/// reading it around each run of events costs little next to a layer's work.
#[cfg(target_arch = "x86_64")]
fn ticks() -> u64 {
    // SAFETY: RDTSC exists on every x86-64 processor and only reads a counter.
    unsafe { std::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn ticks() -> u64 {
    use std::sync::OnceLock;
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
}

/// Times `iters` messages in one direction by replaying `rec` as often as
/// needed; records the per-message figure in `samples`.
///
/// Each replay reads [`ticks`] around every run of events of one direction
/// and the thread's CPU time around the whole: a direction costs its share
/// of the ticks times the CPU time (or the wall time, if smaller). Time
/// another process took the CPU for is not CPU time, so builds sharing the
/// machine do not inflate the figures.
fn per_message(bench: &LayerBench, rec: &Recording, iters: u64, down: bool, samples: &RefCell<Vec<f64>>) -> Duration {
    let per_replay = if down { rec.casts_down } else { rec.delivered }.max(1);
    let (mut spent, mut done) = (0.0f64, 0u64);
    while done < iters {
        let mut replay = bench.prepare(rec);
        let (wall, cpu) = (std::time::Instant::now(), thread_cpu_ns());
        let m = replay.run_metered(ticks);
        let cpu = (thread_cpu_ns() - cpu).min(wall.elapsed().as_nanos() as u64);
        spent += cpu as f64 * if down { m.down } else { m.up } as f64 / m.whole.max(1) as f64;
        done += per_replay;
        drop(replay);
    }
    samples.borrow_mut().push(spent / done as f64);
    Duration::from_nanos((spent * iters as f64 / done as f64) as u64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One row of the final table.
struct Row {
    header_bytes: f64,
    control: f64,
    cost: PerMessage,
}

fn layers(c: &mut Criterion) {
    // SAFETY: set before any other thread of this process reads the environment.
    unsafe { std::env::set_var(KEY_ENV, "5a".repeat(32)) };
    let mut rows: BTreeMap<(usize, usize), (&'static str, Row)> = BTreeMap::new();
    for (i, case) in cases().iter().enumerate() {
        let name = case.name;
        // The baseline always runs: the table subtracts it.
        if name != "BASELINE" && !filter_matches(name) {
            continue;
        }
        let bench = case.bench();
        for members in VIEWS {
            let rec = bench.record(&case.workload(members));
            assert!(rec.complete, "{name} with {members} members did not deliver every cast everywhere");
            assert!(rec.drops.is_empty(), "{name} with {members} members dropped {:?} on a perfect network", rec.drops);
            assert_eq!(rec.views, 0, "{name} with {members} members changed views while casts were measured");
            if name == "VSYNC" {
                assert_eq!(rec.stats.get("members"), Some(members as u64), "VSYNC formed a view of every member while settling");
            }
            println!(
                "{name} members={members}: {:.2} header bytes per message, {:.3} control messages per message",
                rec.header_bytes_per_cast(),
                rec.control_per_cast()
            );
            let (down, up) = (RefCell::new(Vec::new()), RefCell::new(Vec::new()));
            let mut g = c.benchmark_group(format!("{name}/{members}"));
            g.bench_function("down", |b| b.iter_custom(|iters| per_message(&bench, &rec, iters, true, &down)));
            g.bench_function("up", |b| b.iter_custom(|iters| per_message(&bench, &rec, iters, false, &up)));
            g.finish();
            let (mut down, mut up) = (down.into_inner(), up.into_inner());
            if down.is_empty() || up.is_empty() {
                // Criterion's filter left this one out (the baseline): measure it for the table.
                let (d, u) = (RefCell::new(Vec::new()), RefCell::new(Vec::new()));
                for _ in 0..10 {
                    per_message(&bench, &rec, 1, true, &d);
                    per_message(&bench, &rec, 1, false, &u);
                }
                (down, up) = (d.into_inner(), u.into_inner());
            }
            let cost = PerMessage { down: median(down), up: median(up) };
            rows.insert((members, i), (name, Row { header_bytes: rec.header_bytes_per_cast(), control: rec.control_per_cast(), cost }));
        }
    }
    print_table(&rows);
}

/// Whether the command line's filter (criterion's first free argument: a
/// layer name, a benchmark id such as `NAK/8/up`, or alternatives such as
/// `NAK|CAUSAL`) names `layer`: layers it leaves out are not even recorded.
fn filter_matches(layer: &str) -> bool {
    filter_of(std::env::args().skip(1)).is_none_or(|f| f.split('|').any(|alt| alt.split('/').next().is_some_and(|first| layer.contains(first))))
}

/// Criterion's options that take a value in the next argument.
const CRITERION_VALUE_OPTIONS: [&str; 17] = [
    "--warm-up-time",
    "--measurement-time",
    "--sample-size",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--save-baseline",
    "-s",
    "--baseline",
    "-b",
    "--baseline-lenient",
    "--load-baseline",
    "--profile-time",
    "--plotting-backend",
    "--output-format",
    "--color",
];

/// The first argument that is neither an option nor an option's value.
fn filter_of(mut args: impl Iterator<Item = String>) -> Option<String> {
    while let Some(arg) = args.next() {
        if !arg.starts_with('-') {
            return Some(arg);
        }
        if CRITERION_VALUE_OPTIONS.contains(&arg.as_str()) {
            args.next();
        }
    }
    None
}

fn print_table(rows: &BTreeMap<(usize, usize), (&'static str, Row)>) {
    println!();
    println!("| layer | members | header bytes / msg | control msgs / msg | down ns | up ns | down ns − BASELINE | up ns − BASELINE |");
    println!("|---|---|---|---|---|---|---|---|");
    for (&(members, _), (name, row)) in rows {
        let base = rows.iter().find(|((m, _), (n, _))| *m == members && *n == "BASELINE").map(|(_, (_, r))| r.cost);
        let net = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
        let (net_down, net_up) = match base {
            Some(b) if *name != "BASELINE" => (Some(row.cost.minus(b).down), Some(row.cost.minus(b).up)),
            _ => (None, None),
        };
        println!(
            "| {name} | {members} | {:.2} | {:.3} | {:.0} | {:.0} | {} | {} |",
            row.header_bytes,
            row.control,
            row.cost.down,
            row.cost.up,
            net(net_down),
            net(net_up)
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_millis(1000)).sample_size(20).nresamples(10_000).without_plots();
    targets = layers
}
criterion_main!(benches);
