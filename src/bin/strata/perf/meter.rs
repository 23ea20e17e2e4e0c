//! What one member measures: deliveries counted and timed as they are
//! taken, the window from the start signal to the last expected delivery,
//! the process's CPU time over that window and its peak resident memory.

use super::hist::Histogram;
use super::wire::Header;
use crate::jsonl::monotonic_ns;
use std::time::Duration;
use tokio::time::Instant as Clock;

/// User plus system CPU time of this process so far (every thread).
pub fn cpu_time() -> Duration {
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_SELF always exists.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The peak resident set of this process (`VmHWM`) in MiB, if the kernel tells.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

/// A point of the run: when, and how much CPU the process had used.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    pub at: Clock,
    pub cpu: Duration,
}

impl Mark {
    pub fn now() -> Mark {
        Mark { at: Clock::now(), cpu: cpu_time() }
    }
}

/// One member's counts and clocks.
pub struct Meter {
    /// Deliveries this member must make for the run to be complete.
    pub expected: u64,
    /// Deliveries of perf payloads so far.
    pub delivered: u64,
    /// The start signal.
    pub started: Option<Mark>,
    /// The expected-th delivery.
    pub finished: Option<Mark>,
    /// The latest delivery.
    pub last_delivery: Option<Clock>,
    /// Latencies of deliveries from senders on this host.
    pub latency: Histogram,
    /// This host's id.
    host: u64,
}

impl Meter {
    pub fn new(expected: u64, host: u64) -> Meter {
        Meter { expected, delivered: 0, started: None, finished: None, last_delivery: None, latency: Histogram::default(), host }
    }

    /// Counts the delivery of `payload` and returns when it was counted;
    /// `None` (and nothing counted) if it is not a perf payload.
    pub fn deliver(&mut self, payload: &[u8]) -> Option<Clock> {
        let header = Header::read(payload)?;
        Some(self.count(Some(header)))
    }

    /// Counts one delivery, now (returned): with its header it is timed if
    /// the sender is on this host; without, it is not.
    pub fn count(&mut self, header: Option<Header>) -> Clock {
        if let Some(h) = header.filter(|h| h.host == self.host) {
            self.latency.record(monotonic_ns().saturating_sub(h.sent_ns));
        }
        self.delivered += 1;
        let now = Clock::now();
        self.last_delivery = Some(now);
        if self.delivered == self.expected {
            self.finished = Some(Mark { at: now, cpu: cpu_time() });
        }
        now
    }

    pub fn complete(&self) -> bool {
        self.delivered >= self.expected
    }

    /// Marks the start signal (once).
    pub fn start(&mut self) {
        if self.started.is_none() {
            self.started = Some(Mark::now());
        }
    }

    /// The measured window and the CPU time spent in it: start to the
    /// expected-th delivery if there was one, else start to the latest
    /// delivery (CPU until now). Zero before the start.
    pub fn window(&self) -> (Duration, Duration) {
        let Some(start) = self.started else { return (Duration::ZERO, Duration::ZERO) };
        let end = match (self.finished, self.last_delivery) {
            (Some(end), _) => end,
            (None, Some(last)) => Mark { at: last.max(start.at), cpu: cpu_time() },
            (None, None) => Mark::now(),
        };
        (end.at.saturating_duration_since(start.at), end.cpu.saturating_sub(start.cpu))
    }
}

/// The slow member's application: takes deliveries at `rate` per second on
/// average. Deadlines advance by the interval from the previous one, not
/// from now, because the timer cannot sleep less than a millisecond: a
/// late delivery is caught up on, as long as the debt is at most [`Pacer::SLACK`]
/// (a member that had nothing to take does not save up a burst).
pub struct Pacer {
    interval: Duration,
    next: Clock,
}

impl Pacer {
    /// The most time a slow member may catch up on at once.
    const SLACK: Duration = Duration::from_millis(10);

    pub fn new(rate: f64) -> Pacer {
        Pacer { interval: Duration::from_secs_f64(1.0 / rate), next: Clock::now() }
    }

    /// When the next delivery may be taken, if that is later than `now`.
    pub fn wait_until(&self, now: Clock) -> Option<Clock> {
        (self.next > now).then_some(self.next)
    }

    /// A delivery was taken at `now`.
    pub fn took(&mut self, now: Clock) {
        let floor = now.checked_sub(Self::SLACK).unwrap_or(now);
        self.next = self.next.max(floor) + self.interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::wire::PayloadMaker;

    #[test]
    fn the_process_reports_cpu_and_memory() {
        let before = cpu_time();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_time() > before);
        assert!(peak_rss_mib().is_some_and(|m| m > 0.5), "{:?}", peak_rss_mib());
    }

    #[test]
    fn the_pacer_keeps_the_average_rate_without_saving_up() {
        let mut pacer = Pacer::new(1000.0);
        let t0 = Clock::now();
        assert_eq!(pacer.wait_until(t0), None, "the first delivery at once");
        for _ in 0..5 {
            pacer.took(t0);
        }
        // Five taken at once: the next is due about 5 ms after the start, minus the slack allowed.
        let due = pacer.wait_until(t0).expect("must wait");
        assert!(due <= t0 + Duration::from_millis(5) && due > t0, "{:?}", due - t0);
        // After a long pause, at most the slack is caught up on.
        let later = t0 + Duration::from_secs(1);
        pacer.took(later);
        let due = pacer.next;
        assert!(due >= later - Pacer::SLACK && due <= later, "{:?}", later - due);
    }

    #[tokio::test]
    async fn deliveries_are_counted_timed_and_finish_the_window() {
        let mut meter = Meter::new(2, 42);
        meter.start();
        assert!(meter.deliver(b"short").is_none());
        assert!(meter.deliver(&PayloadMaker::new(64, 42, 0).make()).is_some());
        assert!(!meter.complete() && meter.finished.is_none());
        assert!(meter.deliver(&PayloadMaker::new(64, 7, 1).make()).is_some(), "another host's payload counts");
        assert!(meter.complete() && meter.finished.is_some());
        assert_eq!(meter.latency.len(), 1, "only the same host's payload is timed");
        meter.count(None);
        assert_eq!(meter.delivered, 3);
        let (window, _) = meter.window();
        assert!(window <= meter.finished.unwrap().at - meter.started.unwrap().at);
    }
}
