//! Results: one member's raw numbers ([`MemberResult`], sent from a member
//! process to the coordinator with its latency histogram), and the run's
//! summary built from them, as one JSON object or as readable text.

use super::hist::Histogram;
use serde_json::{json, Value};

/// One member's raw numbers.
pub struct MemberResult {
    pub index: usize,
    pub addr: String,
    pub pid: u32,
    pub delivered: u64,
    pub expected: u64,
    /// Own casts (baseline: messages) made.
    pub sent: u64,
    pub complete: bool,
    /// Seconds from the start signal to the expected-th delivery (or the
    /// latest delivery if it did not come).
    pub window_s: f64,
    /// CPU seconds (user + system) over the window.
    pub cpu_s: f64,
    pub rss_mib: Option<f64>,
    pub latency: Histogram,
    /// Baseline only: datagrams expected from the other members, and received.
    pub remote: Option<(u64, u64)>,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn number(x: Option<f64>) -> Value {
    x.filter(|x| x.is_finite()).map_or(Value::Null, |x| json!(round3(x)))
}

/// `{"p50":..,"p99":..,"p999":..,"max":..}` in microseconds (nulls without samples).
fn latency_json(h: &Histogram) -> Value {
    let us = |q: f64| number(h.quantile(q).map(|ns| ns as f64 / 1000.0));
    let max = (h.len() > 0).then(|| h.max() as f64 / 1000.0);
    json!({"p50": us(0.5), "p99": us(0.99), "p999": us(0.999), "max": number(max)})
}

fn loss_percent(expected: u64, received: u64) -> f64 {
    if expected == 0 {
        0.0
    } else {
        100.0 * expected.saturating_sub(received) as f64 / expected as f64
    }
}

impl MemberResult {
    /// Deliveries per second over the window (0 for an empty window).
    pub fn per_sec(&self) -> f64 {
        if self.window_s > 0.0 {
            self.delivered as f64 / self.window_s
        } else {
            0.0
        }
    }

    /// CPU microseconds per delivery (`None` without deliveries).
    pub fn cpu_us_per_msg(&self) -> Option<f64> {
        (self.delivered > 0).then(|| self.cpu_s * 1e6 / self.delivered as f64)
    }

    /// The `result` line a member process sends (histogram included).
    pub fn to_wire(&self) -> Value {
        json!({
            "ev": "result", "index": self.index, "addr": self.addr, "pid": self.pid,
            "delivered": self.delivered, "expected": self.expected, "sent": self.sent, "complete": self.complete,
            "window_s": self.window_s, "cpu_s": self.cpu_s, "rss_mib": self.rss_mib,
            "remote": self.remote.map(|(e, r)| json!([e, r])), "hist": self.latency.to_sparse(),
        })
    }

    /// Reads a `result` line; `None` if something is missing.
    pub fn from_wire(v: &Value) -> Option<MemberResult> {
        let u = |k: &str| v.get(k).and_then(Value::as_u64);
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        let remote = match v.get("remote") {
            Some(Value::Array(pair)) => Some((pair.first()?.as_u64()?, pair.get(1)?.as_u64()?)),
            _ => None,
        };
        Some(MemberResult {
            index: u("index")? as usize,
            addr: v.get("addr")?.as_str()?.to_string(),
            pid: u("pid")? as u32,
            delivered: u("delivered")?,
            expected: u("expected")?,
            sent: u("sent")?,
            complete: v.get("complete")?.as_bool()?,
            window_s: f("window_s")?,
            cpu_s: f("cpu_s")?,
            rss_mib: f("rss_mib"),
            latency: Histogram::from_sparse(v.get("hist")?)?,
            remote,
        })
    }
}

/// One member's row of the summary: its result, or what is known of a
/// member that gave none (it died).
pub struct Row {
    pub index: usize,
    pub addr: String,
    pub pid: u32,
    /// Deliveries last reported (a member without a result).
    pub delivered: u64,
    pub expected: u64,
    pub result: Option<MemberResult>,
}

impl Row {
    pub fn of(result: MemberResult) -> Row {
        Row { index: result.index, addr: result.addr.clone(), pid: result.pid, delivered: result.delivered, expected: result.expected, result: Some(result) }
    }

    fn json(&self, size: usize) -> Value {
        let mut row = json!({"index": self.index, "addr": self.addr, "pid": self.pid, "delivered": self.delivered, "expected": self.expected});
        let o = row.as_object_mut().expect("an object");
        match &self.result {
            Some(r) => {
                o.insert("sent".into(), json!(r.sent));
                o.insert("complete".into(), json!(r.complete));
                o.insert("duration_s".into(), number(Some(r.window_s)));
                o.insert("deliveries_per_sec".into(), number(Some(r.per_sec())));
                o.insert("mb_per_sec".into(), number(Some(r.per_sec() * size as f64 / 1e6)));
                o.insert("latency_us".into(), latency_json(&r.latency));
                o.insert("latency_samples".into(), json!(r.latency.len()));
                o.insert("cpu_us_per_msg".into(), number(r.cpu_us_per_msg()));
                o.insert("rss_mib".into(), number(r.rss_mib));
                if let Some((e, got)) = r.remote {
                    o.insert("loss_percent".into(), number(Some(loss_percent(e, got))));
                }
            }
            None => {
                o.insert("complete".into(), json!(false));
                for key in ["sent", "duration_s", "deliveries_per_sec", "mb_per_sec", "latency_us", "latency_samples", "cpu_us_per_msg", "rss_mib"] {
                    o.insert(key.into(), Value::Null);
                }
            }
        }
        row
    }
}

/// What the run was.
pub struct RunInfo {
    pub members: usize,
    pub stack: String,
    pub transport: &'static str,
    pub size: usize,
    pub casts: u64,
    pub senders: &'static str,
    pub rate: Option<f64>,
    pub baseline: bool,
    pub group: String,
}

/// The run's numbers, from every row.
pub struct Summary {
    pub complete: bool,
    pub duration_s: f64,
    pub per_sec_mean: f64,
    pub per_sec_min: f64,
    pub latency: Histogram,
    pub cpu_us_per_msg: Option<f64>,
    pub rss_mib_max: Option<f64>,
    pub loss_percent: Option<f64>,
}

impl Summary {
    /// Means and extremes over the members that reported a result; the run
    /// is complete only if every member did and is complete.
    pub fn of(rows: &[Row]) -> Summary {
        let results: Vec<&MemberResult> = rows.iter().filter_map(|r| r.result.as_ref()).collect();
        let complete = !rows.is_empty() && rows.iter().all(|r| r.result.as_ref().is_some_and(|r| r.complete));
        let mean = |xs: &[f64]| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
        let rates: Vec<f64> = results.iter().map(|r| r.per_sec()).collect();
        let cpus: Vec<f64> = results.iter().filter_map(|r| r.cpu_us_per_msg()).collect();
        let mut latency = Histogram::default();
        for r in &results {
            latency.merge(&r.latency);
        }
        let remote = results.iter().filter_map(|r| r.remote).fold(None, |acc: Option<(u64, u64)>, (e, g)| {
            let (ae, ag) = acc.unwrap_or((0, 0));
            Some((ae + e, ag + g))
        });
        Summary {
            complete,
            duration_s: results.iter().map(|r| r.window_s).fold(0.0, f64::max),
            per_sec_mean: mean(&rates).unwrap_or(0.0),
            per_sec_min: rates.iter().copied().reduce(f64::min).unwrap_or(0.0),
            latency,
            cpu_us_per_msg: mean(&cpus),
            rss_mib_max: results.iter().filter_map(|r| r.rss_mib).reduce(f64::max),
            loss_percent: remote.map(|(e, g)| loss_percent(e, g)),
        }
    }

    /// The one JSON object of `--json`.
    pub fn json(&self, info: &RunInfo, rows: &[Row]) -> Value {
        let mut out = json!({
            "members": info.members,
            "stack": info.stack,
            "transport": info.transport,
            "size": info.size,
            "casts": info.casts,
            "senders": info.senders,
            "rate": info.rate,
            "baseline": info.baseline,
            "group": info.group,
            "complete": self.complete,
            "duration_s": number(Some(self.duration_s)),
            "deliveries_per_sec_per_member": number(Some(self.per_sec_mean)),
            "deliveries_per_sec_min": number(Some(self.per_sec_min)),
            "mb_per_sec_per_member": number(Some(self.per_sec_mean * info.size as f64 / 1e6)),
            "latency_us": latency_json(&self.latency),
            "latency_samples": self.latency.len(),
            "cpu_us_per_msg": number(self.cpu_us_per_msg),
            "rss_mib_max": number(self.rss_mib_max),
            "per_member": rows.iter().map(|r| r.json(info.size)).collect::<Vec<_>>(),
        });
        if let Some(loss) = self.loss_percent {
            out.as_object_mut().expect("an object").insert("loss_percent".into(), number(Some(loss)));
        }
        out
    }

    /// The readable summary: a few lines, then one per member.
    pub fn text(&self, info: &RunInfo, rows: &[Row]) -> String {
        let us = |ns: Option<u64>| ns.map_or_else(|| "-".to_string(), |ns| format!("{:.1}", ns as f64 / 1000.0));
        let lat = |h: &Histogram| {
            if h.len() == 0 {
                "no samples (no sender on this host)".to_string()
            } else {
                format!("p50 {} us, p99 {} us, p99.9 {} us, max {} us", us(h.quantile(0.5)), us(h.quantile(0.99)), us(h.quantile(0.999)), us(Some(h.max())))
            }
        };
        let opt = |x: Option<f64>, unit: &str| x.map_or_else(|| "-".to_string(), |x| format!("{x:.2}{unit}"));
        let mut out = String::new();
        let rate = info.rate.map_or_else(String::new, |r| format!(", {r} casts/s per sender"));
        let stack = if info.baseline { "plain UDP datagrams (baseline)".to_string() } else { format!("stack {}", info.stack) };
        out.push_str(&format!(
            "strata perf: {} {}, {stack}, over {}, {} B x {} casts, senders {}{rate}: {}\n",
            info.members,
            if info.members == 1 { "member" } else { "members" },
            info.transport,
            info.size,
            info.casts,
            info.senders,
            if self.complete { "complete" } else { "INCOMPLETE" }
        ));
        out.push_str(&format!(
            "  throughput  {:.0} deliveries/s per member (min {:.0}), {:.2} MB/s per member, longest window {:.3} s\n",
            self.per_sec_mean,
            self.per_sec_min,
            self.per_sec_mean * info.size as f64 / 1e6,
            self.duration_s
        ));
        out.push_str(&format!("  latency     {} ({} samples)\n", lat(&self.latency), self.latency.len()));
        out.push_str(&format!("  cpu         {} per message (mean over members)\n", opt(self.cpu_us_per_msg, " us")));
        out.push_str(&format!("  memory      peak RSS {} (max over members)\n", opt(self.rss_mib_max, " MiB")));
        if let Some(loss) = self.loss_percent {
            out.push_str(&format!("  loss        {loss:.3}% of datagrams between members\n"));
        }
        for row in rows {
            match &row.result {
                Some(r) => out.push_str(&format!(
                    "  member {} {} (pid {}): {}/{} delivered{} in {:.3} s, {:.0}/s, cpu {}/msg, rss {}, {}\n",
                    row.index,
                    row.addr,
                    row.pid,
                    r.delivered,
                    r.expected,
                    if r.complete { "" } else { " (incomplete)" },
                    r.window_s,
                    r.per_sec(),
                    opt(r.cpu_us_per_msg(), " us"),
                    opt(r.rss_mib, " MiB"),
                    lat(&r.latency)
                )),
                None => out.push_str(&format!(
                    "  member {} {} (pid {}): no result ({} of {} delivered when last heard of)\n",
                    row.index, row.addr, row.pid, row.delivered, row.expected
                )),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(index: usize, delivered: u64, window_s: f64, samples: &[u64]) -> MemberResult {
        let mut latency = Histogram::default();
        for s in samples {
            latency.record(*s);
        }
        MemberResult {
            index,
            addr: format!("127.0.0.1:{}", 7000 + index),
            pid: 100 + index as u32,
            delivered,
            expected: 300,
            sent: 100,
            complete: delivered >= 300,
            window_s,
            cpu_s: 0.5,
            rss_mib: Some(10.0 + index as f64),
            latency,
            remote: None,
        }
    }

    #[test]
    fn results_travel_whole() {
        let mut r = result(2, 300, 1.5, &[1000, 2000, 3_000_000]);
        r.remote = Some((200, 190));
        let back = MemberResult::from_wire(&serde_json::from_str(&r.to_wire().to_string()).unwrap()).unwrap();
        assert_eq!((back.index, back.addr.as_str(), back.pid, back.delivered, back.complete), (2, "127.0.0.1:7002", 102, 300, true));
        assert_eq!((back.window_s, back.cpu_s, back.rss_mib, back.remote), (1.5, 0.5, Some(12.0), Some((200, 190))));
        assert_eq!((back.latency.len(), back.latency.max()), (3, 3_000_000));
        assert!(MemberResult::from_wire(&json!({"ev": "result"})).is_none());
    }

    #[test]
    fn the_summary_means_mins_and_maxes_over_members() {
        let rows = vec![Row::of(result(0, 300, 1.0, &[1000; 10])), Row::of(result(1, 300, 2.0, &[5000; 10]))];
        let s = Summary::of(&rows);
        assert!(s.complete);
        assert_eq!((s.per_sec_mean, s.per_sec_min, s.duration_s), (225.0, 150.0, 2.0));
        assert_eq!(s.rss_mib_max, Some(11.0));
        let cpu = s.cpu_us_per_msg.unwrap();
        assert!((cpu - 0.5e6 / 300.0).abs() < 1e-6, "{cpu}");
        let info = run_info(1000);
        let v = s.json(&info, &rows);
        assert_eq!(v["mb_per_sec_per_member"], json!(0.225));
        assert_eq!(v["latency_us"]["max"], json!(5.0));
        assert_eq!(v["per_member"][1]["deliveries_per_sec"], json!(150.0));
        assert!(v.get("loss_percent").is_none());
        let text = s.text(&info, &rows);
        assert!(text.starts_with("strata perf: 2 members") && text.contains("complete") && text.lines().count() == 7, "{text}");
    }

    /// A run of 2 members casting 150 messages of `size` bytes over `NAK`.
    fn run_info(size: usize) -> RunInfo {
        RunInfo { members: 2, stack: "NAK".into(), transport: "udp", size, casts: 150, senders: "all", rate: None, baseline: false, group: "g".into() }
    }

    #[test]
    fn a_member_without_a_result_makes_the_run_incomplete() {
        let rows = vec![Row::of(result(0, 300, 1.0, &[])), Row { index: 1, addr: "127.0.0.1:7001".into(), pid: 9, delivered: 12, expected: 300, result: None }];
        let s = Summary::of(&rows);
        assert!(!s.complete);
        let info = run_info(100);
        let v = s.json(&info, &rows);
        assert_eq!(v["complete"], json!(false));
        assert_eq!(v["per_member"][1]["delivered"], json!(12));
        assert!(v["per_member"][1]["deliveries_per_sec"].is_null());
        assert!(v["latency_us"]["p50"].is_null(), "no samples anywhere");
        assert!(s.text(&info, &rows).contains("no result"));
    }
}
