//! Replay after a total failure (SAFE with a `log_dir`).
//!
//! **Per incarnation.** With a `log_dir`, every incarnation gets at most one
//! `AppEvent::Replay` ([`Entry::Replay`]), before any durable delivery of
//! that incarnation; a survivor at the end (see [`super::uniform`]) must
//! have got it (its SAFE became live). An incarnation that starts after
//! another of its era got its replay joins a live group: its list is
//! empty. Without a `log_dir` a replay, if any, is empty. A replay list holds no tag twice, and each entry is a
//! cast that was made (its payload intact, byte for byte the cast its id
//! names, cast by the tag's sender before the replay). The incarnation's
//! deliveries marked `replayed` are the list, in order, before any other
//! durable delivery: all of it if the incarnation survives, a prefix if it
//! crashed or left first, each with the list's payload.
//!
//! **Per total failure** (the end of an era followed by another, see
//! [`Outcome::eras`]). The failed era's *final view* is the highest primary
//! view any of its incarnations installed. Then:
//!
//! * the non-empty replay lists of the next era are all equal (an
//!   incarnation that joins the group once it is live again gets an empty
//!   one, and the state instead);
//! * every message that some incarnation of the final view delivered
//!   durably before the failure (since its last state transfer, if it was
//!   readmitted) and did not call `done` for is in every
//!   non-empty list, and in some list if any incarnation of the next era
//!   got a replay (the group cannot have forgotten it: its logs drop a
//!   message only once every member is done with it);
//! * the list keeps the order of the failed era (`uniform.rs`, `global_order`):
//!   two messages delivered one before the other there come in that order.
//!   Messages accepted but never delivered before the failure may appear
//!   anywhere.

use super::uniform::{era_lives, global_order, split_at_end, survivor, tag_text, NamedLife};
use crate::sim::{Entry, Era, Outcome, Replayed};
use std::collections::{BTreeMap, BTreeSet};
use strata_stack::{Delivery, Instant, SafeTag, ViewId};

/// Checks every incarnation's replay, then every total failure's.
pub fn check(o: &Outcome) -> Result<(), String> {
    let logged = logs_to_disk(&o.scenario.stack);
    let eras = o.eras();
    for era in &eras {
        let lives = era_lives(o, era);
        // When SAFE first became live in the era (the first replay), and where.
        let live_from = lives.iter().filter_map(|l| replays(l).first().map(|r| (r.1, l.who()))).min();
        for l in &lives {
            if let (Some((live_at, first)), Some((_, at, list))) = (&live_from, replays(l).first()) {
                // Unless the primary was lost meanwhile (some member fell
                // into a non-primary view): then a group re-formed around
                // the late starter recovers from the logs, legitimately.
                let primary_lost = lives
                    .iter()
                    .any(|o2| o2.life.log.iter().any(|e| matches!(e, Entry::View { at: t, view } if !view.is_primary() && *t > *live_at && *t < *at)));
                if l.life.started_at > *live_at && !list.is_empty() && !primary_lost {
                    return Err(format!(
                        "{} started at {:?}, after SAFE became live at {first} ({live_at:?}), so it joined a live group, but its replay at {at:?} lists {} messages (the first {})",
                        l.who(),
                        l.life.started_at,
                        list.len(),
                        tag_text(&list[0].tag, &list[0].id)
                    ));
                }
            }
            per_incarnation(o, l, logged)?;
        }
    }
    for pair in eras.windows(2) {
        after_failure(o, &pair[0], &pair[1])?;
    }
    Ok(())
}

/// Whether the stack string gives SAFE a `log_dir`.
pub fn logs_to_disk(stack: &str) -> bool {
    let mut depth = 0i32;
    stack
        .split(|c: char| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            c == ':' && depth == 0
        })
        .filter_map(|layer| {
            let (name, params) = layer.split_once('(').unwrap_or((layer, ""));
            (name.trim() == "SAFE").then_some(params.trim_end_matches(')'))
        })
        .any(|params| params.split(',').any(|p| p.split_once('=').is_some_and(|(k, v)| k.trim() == "log_dir" && !v.trim().is_empty())))
}

/// The replays of an incarnation: (position in its log, when, the list).
fn replays<'a>(l: &NamedLife<'a>) -> Vec<(usize, Instant, &'a Vec<Replayed>)> {
    l.life.log.iter().enumerate().filter_map(|(n, e)| if let Entry::Replay { at, messages } = e { Some((n, *at, messages)) } else { None }).collect()
}

fn per_incarnation(o: &Outcome, l: &NamedLife<'_>, logged: bool) -> Result<(), String> {
    let who = l.who();
    let got = replays(l);
    if got.len() > 1 {
        let times: Vec<String> = got.iter().map(|(_, at, m)| format!("{at:?} ({} messages)", m.len())).collect();
        return Err(format!("{who} got {} replays, at {}: one per incarnation", got.len(), times.join(", ")));
    }
    let replay = got.first().copied();
    let list: &[Replayed] = replay.map_or(&[], |(_, _, m)| m.as_slice());
    if !logged && !list.is_empty() {
        return Err(format!("{who} got a replay of {} messages at {:?}, but SAFE has no log_dir", list.len(), replay.map(|r| r.1).unwrap_or_default()));
    }
    let durable: Vec<(usize, &crate::sim::Delivered, SafeTag, bool)> = l
        .life
        .log
        .iter()
        .enumerate()
        .filter_map(|(n, e)| match e {
            Entry::Deliver(d) => match d.kind {
                Delivery::Safe { tag, replayed } => Some((n, d, tag, replayed)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    if logged {
        if let Some(&(n, d, tag, _)) = durable.first() {
            match replay {
                None => return Err(format!("{who} delivered {} at {:?} without a Replay first (SAFE has a log_dir)", tag_text(&tag, &d.id), d.at)),
                Some((r, at, _)) if r > n => {
                    return Err(format!("{who} delivered {} at {:?} before its Replay at {at:?}", tag_text(&tag, &d.id), d.at));
                }
                Some(_) => {}
            }
        }
        if replay.is_none() && survivor(o, l) && o.truncated.is_none() && !split_at_end(o) {
            return Err(format!(
                "{who} is alive in primary view {} at the end ({:?}) but never got a Replay: its SAFE never became live",
                l.life.last_view().map(|v| v.id().to_string()).unwrap_or_default(),
                o.end
            ));
        }
    }
    // The list: no duplicate, every entry a cast that was made.
    let mut seen = BTreeSet::new();
    let at = replay.map(|r| r.1).unwrap_or_default();
    for r in list {
        if !seen.insert(r.tag) {
            return Err(format!("{who}'s replay at {at:?} lists {} twice", tag_text(&r.tag, &r.id)));
        }
        let Some((sender, k)) = &r.id else {
            return Err(format!("{who}'s replay at {at:?} lists {} with a {}-byte payload without an id", r.tag, r.len));
        };
        if !r.intact {
            return Err(format!("{who}'s replay at {at:?} lists {} with corrupt bytes", tag_text(&r.tag, &r.id)));
        }
        if *sender != r.tag.sender.addr().to_string() {
            return Err(format!("{who}'s replay at {at:?} lists {}: the tag names {} but the payload {sender}", tag_text(&r.tag, &r.id), r.tag.sender));
        }
        let cast = o.index_of(sender).and_then(|s| o.members[s].casts.get(*k as usize));
        match cast {
            None => return Err(format!("{who}'s replay at {at:?} lists {}, which was never cast", tag_text(&r.tag, &r.id))),
            Some(c) if (c.len, c.hash) != (r.len, r.hash) || c.at >= at => {
                return Err(format!(
                    "{who}'s replay at {at:?} lists {} as {} bytes with fnv {:016x}, but it was cast at {:?} as {} bytes with fnv {:016x}",
                    tag_text(&r.tag, &r.id),
                    r.len,
                    r.hash,
                    c.at,
                    c.len,
                    c.hash
                ));
            }
            Some(_) => {}
        }
    }
    // The deliveries marked replayed: the list, in order, before the others.
    let mut replayed = 0;
    let mut fresh: Option<(&crate::sim::Delivered, SafeTag)> = None;
    for &(_, d, tag, is_replayed) in &durable {
        if !is_replayed {
            fresh = fresh.or(Some((d, tag)));
            continue;
        }
        if let Some((f, ftag)) = fresh {
            return Err(format!(
                "{who} delivered {} (replayed) at {:?} after {} (not replayed) at {:?}",
                tag_text(&tag, &d.id),
                d.at,
                tag_text(&ftag, &f.id),
                f.at
            ));
        }
        match list.get(replayed) {
            None => {
                return Err(format!(
                    "{who} delivered {} at {:?} as replayed, but its replay list has only {} messages",
                    tag_text(&tag, &d.id),
                    d.at,
                    list.len()
                ))
            }
            Some(r) if r.tag != tag || r.id != d.id || r.hash != d.hash => {
                return Err(format!(
                    "{who}'s replayed delivery {replayed} is {} at {:?}, but its replay list says {}",
                    tag_text(&tag, &d.id),
                    d.at,
                    tag_text(&r.tag, &r.id)
                ));
            }
            Some(_) => {}
        }
        replayed += 1;
    }
    if replayed < list.len() && survivor(o, l) && o.truncated.is_none() {
        let r = &list[replayed];
        return Err(format!(
            "{who} survives to the end ({:?}) but delivered only {replayed} of the {} messages of its replay at {at:?}; the first missing is {}",
            o.end,
            list.len(),
            tag_text(&r.tag, &r.id)
        ));
    }
    Ok(())
}

fn after_failure(o: &Outcome, failed: &Era, next: &Era) -> Result<(), String> {
    let failed_at = failed.failed_at.unwrap_or(next.from);
    let before = era_lives(o, failed);
    let after = era_lives(o, next);
    // The non-empty lists of the next era agree.
    let lists: Vec<(String, Instant, &Vec<Replayed>)> = after.iter().flat_map(|l| replays(l).into_iter().map(move |(_, at, m)| (l.who(), at, m))).collect();
    let full: Vec<&(String, Instant, &Vec<Replayed>)> = lists.iter().filter(|(_, _, m)| !m.is_empty()).collect();
    if let Some((a, a_at, first)) = full.first() {
        for (b, b_at, other) in &full[1..] {
            if first.iter().map(|r| r.tag).ne(other.iter().map(|r| r.tag)) {
                let n = first.iter().zip(other.iter()).take_while(|(x, y)| x.tag == y.tag).count();
                let at_n = |l: &Vec<Replayed>| l.get(n).map_or_else(|| "the end of the list".to_string(), |r| tag_text(&r.tag, &r.id));
                return Err(format!(
                    "after the total failure at {failed_at:?}, {a} (at {a_at:?}) and {b} (at {b_at:?}) got different replays ({} and {} messages): at position {n}, {} and {}",
                    first.len(),
                    other.len(),
                    at_n(first),
                    at_n(other)
                ));
            }
        }
    }
    // What the failed era's final view delivered and did not finish.
    let final_view: Option<ViewId> = before
        .iter()
        .flat_map(|l| l.life.log.iter())
        .filter_map(|e| match e {
            Entry::View { view, .. } if view.is_primary() => Some(view.id()),
            _ => None,
        })
        .max();
    let members: Vec<strata_stack::MemberId> = before
        .iter()
        .flat_map(|l| l.life.log.iter())
        .find_map(|e| match e {
            Entry::View { view, .. } if Some(view.id()) == final_view => Some(view.members().to_vec()),
            _ => None,
        })
        .unwrap_or_default();
    let mut unfinished: BTreeMap<SafeTag, (String, Instant, Option<crate::sim::MsgId>)> = BTreeMap::new();
    for l in before.iter().filter(|l| members.contains(&l.life.id)) {
        let done: BTreeSet<SafeTag> = l.life.log.iter().filter_map(|e| if let Entry::Done { tag, .. } = e { Some(*tag) } else { None }).collect();
        // Only since its last state transfer: a member removed and readmitted
        // was not asked for its `done` while it was out.
        let log = l.life.log;
        let since =
            (0..log.len()).rev().find(|&n| matches!(log[n], Entry::View { .. }) && matches!(log.get(n + 1), Some(Entry::StateBegin { .. }))).unwrap_or(0);
        let recent = NamedLife { life: crate::sim::Life { log: &log[since..], ..l.life.clone() }, ..l.clone() };
        for (d, tag, _) in recent.life.safe_deliveries() {
            if !done.contains(&tag) {
                unfinished.entry(tag).or_insert_with(|| (l.who(), d.at, d.id.clone()));
            }
        }
    }
    for (tag, (who, at, id)) in &unfinished {
        let why = || {
            format!("{who} (in the final view {}) delivered it at {at:?} and had not called done for it", final_view.map(|v| v.to_string()).unwrap_or_default())
        };
        for (b, b_at, list) in &full {
            if !list.iter().any(|r| r.tag == *tag) {
                return Err(format!("after the total failure at {failed_at:?}, {b}'s replay at {b_at:?} lacks {}: {}", tag_text(tag, id), why()));
            }
        }
        if full.is_empty() {
            if let Some((b, b_at, _)) = lists.first() {
                return Err(format!(
                    "after the total failure at {failed_at:?}, every replay is empty ({b}'s at {b_at:?}...), but {} is lost: {}",
                    tag_text(tag, id),
                    why()
                ));
            }
        }
    }
    // The lists keep the failed era's order.
    let Ok(runs) = global_order(&before) else { return Ok(()) }; // (uniform reports it)
    let place: BTreeMap<SafeTag, (usize, usize)> =
        runs.iter().enumerate().flat_map(|(r, run)| run.iter().enumerate().map(move |(n, t)| (*t, (r, n)))).collect();
    for (b, b_at, list) in &full {
        let mut last: BTreeMap<usize, (usize, &Replayed)> = BTreeMap::new();
        for r in list.iter() {
            let Some(&(run, n)) = place.get(&r.tag) else { continue };
            if let Some((m, prev)) = last.get(&run) {
                if *m > n {
                    return Err(format!(
                        "after the total failure at {failed_at:?}, {b}'s replay at {b_at:?} lists {} before {}, but they were delivered the other way round before the failure",
                        tag_text(&prev.tag, &prev.id),
                        tag_text(&r.tag, &r.id)
                    ));
                }
            }
            last.insert(run, (n, r));
        }
    }
    Ok(())
}
