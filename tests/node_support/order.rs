//! The logs of one `strata node` run read into the simulator's `Outcome`,
//! so that the simulator's own checks (`check::causal_order`,
//! `check::total_order`, ...) judge runs over real sockets too.
//!
//! A node's log holds everything the causal check needs: a `send` line is
//! written just before its cast, so every `deliver` line above it was
//! delivered before the cast (a delivery the stack made while the send line
//! was being written is missed, which only makes the check weaker), and
//! `t` is `CLOCK_MONOTONIC`, one clock for every process on the host.

use super::payload;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strata::codec::fnv1a64;
use strata::transport::sim::{CastRecord, Delivered, Entry, MemberLog, MsgId, NetStats, Outcome, Scenario};
use strata::{Delivery, Instant, LayerStats, MemberId, View, ViewId};

/// A member id from its address text (incarnations are not logged with ids).
fn member_id(text: &str) -> Result<MemberId, String> {
    let addr: SocketAddr = text.parse().map_err(|e| format!("`{text}` is not an address: {e}"))?;
    Ok(MemberId::new(addr, 0))
}

/// A view id from its text, `COUNTER@CREATOR`.
fn view_id(text: &str) -> Result<ViewId, String> {
    let (counter, creator) = text.split_once('@').ok_or_else(|| format!("`{text}` is not a view id"))?;
    Ok(ViewId { counter: counter.parse().map_err(|e| format!("`{text}`: {e}"))?, creator: member_id(creator)? })
}

fn text<'a>(l: &'a Value, key: &str) -> Result<&'a str, String> {
    l[key].as_str().ok_or_else(|| format!("`{key}` is not a string in {l}"))
}

fn at(l: &Value) -> Result<Instant, String> {
    let t = l["t"].as_u64().ok_or_else(|| format!("no integer `t` in {l}"))?;
    Ok(Instant::ZERO + Duration::from_nanos(t))
}

/// One node's log as the simulator's `MemberLog`: `send` lines become its
/// casts, `deliver`, `view`, `block` and `state` lines its log (a `state`
/// line becomes `StateBegin` and `StateLoaded` with every cast its counts
/// cover). `killed`: the node was killed (it stopped at its last line).
pub fn member_log(me: &str, lines: &[Value], size: usize, killed: bool) -> Result<MemberLog, String> {
    let id = member_id(me)?;
    let mut casts = Vec::new();
    let mut log = Vec::new();
    for l in lines {
        match l["ev"].as_str().unwrap_or("") {
            "send" => {
                let (member, k) = payload::split_id(text(l, "id")?).ok_or_else(|| format!("a bad id in {l}"))?;
                if member != me || k != casts.len() as u64 {
                    return Err(format!("send line out of sequence: {l}"));
                }
                let body = payload::make(me, k, size);
                casts.push(CastRecord { k, at: at(l)?, len: body.len(), hash: fnv1a64(&body) });
            }
            "deliver" => {
                let id = text(l, "id")?;
                let parsed = payload::split_id(id).map(|(m, k)| (m.to_string(), k));
                let hash = u64::from_str_radix(text(l, "fnv")?, 16).map_err(|e| format!("bad fnv ({e}) in {l}"))?;
                let len = l["len"].as_u64().ok_or_else(|| format!("no `len` in {l}"))? as usize;
                // Intact if it is exactly the payload its id prescribes.
                let intact = parsed.as_ref().is_some_and(|(m, k)| {
                    let body = payload::make(m, *k, size);
                    body.len() == len && fnv1a64(&body) == hash
                });
                log.push(Entry::Deliver(Delivered { at: at(l)?, from: member_id(text(l, "from")?)?, kind: Delivery::Cast, id: parsed, len, hash, intact }));
            }
            "view" => {
                let members: Vec<MemberId> = l["members"]
                    .as_array()
                    .ok_or_else(|| format!("no `members` in {l}"))?
                    .iter()
                    .map(|m| m.as_str().ok_or("a member is not a string").map_err(String::from).and_then(member_id))
                    .collect::<Result<_, _>>()?;
                let primary = l["primary"].as_bool().ok_or_else(|| format!("no `primary` in {l}"))?;
                let view = View::with_primary(view_id(text(l, "view")?)?, members, primary).map_err(|e| format!("{e:?}: {l}"))?;
                log.push(Entry::View { at: at(l)?, view });
            }
            "block" => log.push(Entry::Block { at: at(l)? }),
            "state" => {
                let counts = l["counts"].as_object().ok_or_else(|| format!("no `counts` in {l}"))?;
                let mut known: BTreeSet<MsgId> = BTreeSet::new();
                for (m, n) in counts {
                    let n = n.as_u64().ok_or_else(|| format!("a count is not an integer in {l}"))?;
                    known.extend((0..n).map(|k| (m.clone(), k)));
                }
                let t = at(l)?;
                // The load began right after the view (deliveries wait behind it).
                log.push(Entry::StateBegin { at: t });
                log.push(Entry::StateLoaded { at: t, chunks: 1, bytes: 0, known: Arc::new(known) });
            }
            _ => {}
        }
    }
    let last = lines.last().map(at).transpose()?.unwrap_or(Instant::ZERO);
    Ok(MemberLog {
        id,
        name: me.to_string(),
        started_at: Some(Instant::ZERO),
        crashed_at: killed.then_some(last),
        left_at: None,
        casts,
        backpressured: 0,
        log,
        stats: Vec::new(),
        engine: LayerStats { name: "engine", counters: Default::default(), dropped: Vec::new() },
    })
}

/// The logs of one run, `(address, lines, killed)` per node, as an
/// `Outcome` of `stack` with `casts` casts of `size` bytes per member.
pub fn outcome(stack: &str, casts: u64, size: usize, nodes: &[(&str, &[Value], bool)]) -> Result<Outcome, String> {
    let members: Vec<MemberLog> = nodes.iter().map(|(me, lines, killed)| member_log(me, lines, size, *killed)).collect::<Result<_, _>>()?;
    let end = members.iter().flat_map(|m| m.log.last().map(Entry::at)).max().unwrap_or(Instant::ZERO);
    let scenario = Scenario { members: members.len() as u16, stack: stack.to_string(), casts: casts as u32, size: (size, size), ..Scenario::default() };
    Ok(Outcome { scenario, members, net: NetStats::default(), quiet_from: Some(end), end, steps: 0, digest: 0, truncated: None })
}

/// Every member delivered the same sequence in every view they all
/// installed (`check::total_order` compares common messages pairwise; this
/// is the plain statement for a run where all stay). Returns how many
/// deliveries the shared views held.
pub fn same_sequence_in_shared_views(o: &Outcome) -> Result<usize, String> {
    let sequences = |m: &MemberLog| -> Vec<(ViewId, Vec<MsgId>)> {
        let mut out: Vec<(ViewId, Vec<MsgId>)> = Vec::new();
        for e in &m.log {
            match e {
                Entry::View { view, .. } => out.push((view.id(), Vec::new())),
                Entry::Deliver(d) => {
                    if let (Some(last), Some(id)) = (out.last_mut(), &d.id) {
                        last.1.push(id.clone());
                    }
                }
                _ => {}
            }
        }
        out
    };
    let all: Vec<Vec<(ViewId, Vec<MsgId>)>> = o.members.iter().map(sequences).collect();
    let mut shared = 0;
    for (view, seq) in &all[0] {
        let others: Vec<Option<&Vec<MsgId>>> = all[1..].iter().map(|s| s.iter().find(|(v, _)| v == view).map(|(_, q)| q)).collect();
        if others.iter().any(Option::is_none) {
            continue;
        }
        for (i, other) in others.into_iter().flatten().enumerate() {
            if other != seq {
                let at = seq.iter().zip(other).position(|(a, b)| a != b).unwrap_or(seq.len().min(other.len()));
                return Err(format!(
                    "{} and {} delivered different sequences in view {view}: {} and {} messages, first difference at position {at}: {:?} vs {:?}",
                    o.members[0].name,
                    o.members[i + 1].name,
                    seq.len(),
                    other.len(),
                    seq.get(at),
                    other.get(at)
                ));
            }
        }
        shared += seq.len();
    }
    Ok(shared)
}
