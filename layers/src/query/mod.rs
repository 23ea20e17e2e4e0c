//! # QUERY: cast a request, collect the members' replies
//!
//! A member casts a *query* and waits for replies from every member, from
//! `k` members or from a majority, for at most a timeout: ISIS's `bcast`
//! with `n_replies` and Isis2's `Query`. The query travels as an ordinary
//! cast, so it is ordered by the layers below like any other (with TOTAL
//! below it is Isis2's `OrderedQuery`); replies travel point-to-point to the
//! querier.
//!
//! * **Asking.** [`Down::Query`] `{ id, msg, want, timeout }` casts `msg`
//!   with a REQUEST header carrying `id`. Every member, the querier
//!   included (its cast loops back like any cast), delivers it as
//!   [`Up::Query`] `{ from, id, msg }` in cast order, and its application
//!   answers with [`Down::Reply`] `{ to: from, id, msg }`, sent to the
//!   querier alone.
//! * **Who is asked.** The members of the view in which the querier's own
//!   layer delivers its query: VSYNC delivers a cast to every survivor in
//!   the same view, so that is the view every member got it in. Members that
//!   join later never get the query and are not asked. Replies that arrive
//!   before the querier's own delivery (possible with TOTAL below) are kept
//!   if they come from members of its current view.
//! * **When it ends.** The query ends with [`Up::QueryDone`] and a
//!   [`QueryResult`] at the first of:
//!   - *Complete*: `want` is met. [`Want::All`]: every asked member still in
//!     the view replied. [`Want::Count`]`(k)`: `k` replies arrived (from
//!     asked members, including some that left after replying; `Count(0)`
//!     completes at once). [`Want::Majority`]: more than half of the asked
//!     members still in the view replied, that is a majority of the view at
//!     the time the query completes, not counting members that joined after
//!     the query (they were never asked) and counting only their replies.
//!   - *Impossible*: every asked member still in the view replied and
//!     `want` is not met (`Count(k)` above the members left, or a
//!     majority after replies of departed members no longer count), or this
//!     member left the group ([`Up::Left`]) with the query open. So `All`
//!     with members gone is Complete once everyone left has answered.
//!   - *TimedOut*: `timeout` passed (a timer on the virtual clock, from the
//!     [`Down::Query`]). Without a membership layer the view never changes,
//!     so a crashed member is only ever given up on by the timeout.
//!
//!   The result holds the replies in arrival order (one per member), the
//!   view the members were asked in, and `missing`: the members of that
//!   view without a reply, in rank order (departed, or not answered yet).
//! * **View changes.** On [`Up::View`] the querier stops waiting for asked
//!   members not in the new view and re-evaluates its open queries. A reply
//!   point-to-point in flight across the view change may be forgotten by the
//!   reliability layer below (NAK resets its channels per view), so the
//!   querier also sends REASK to each asked member it still waits for; a
//!   member keeps its last `reply_cache` replies and sends again the one
//!   asked for if it sent it in an earlier view (one sent in the current view
//!   is already reliable). A REASK for a reply not given yet is ignored: the
//!   application's reply will come in the new view.
//! * **Other traffic.** Ordinary casts and sends pass with a DATA header.
//!
//! ## What it needs below
//! Reliable FIFO casts and sends (NAK); a membership layer (VSYNC) for
//! departed members to be given up on before the timeout. It provides no
//! new property, so it goes at the top: `FRAG:NAK:VSYNC:QUERY`,
//! `FRAG:NAK:CAUSAL:VSYNC:TOTAL:QUERY`, or without membership `FRAG:NAK:QUERY`.
//!
//! ## Header
//! One kind byte, then for three of the kinds the query's id:
//! ```text
//!  data:     | 0 u8 | payload ...            ordinary cast or send
//!  request:  | 1 u8 | id varint | payload    a query (cast)
//!  reply:    | 2 u8 | id varint | payload    an answer (send to the querier)
//!  reask:    | 3 u8 | id varint |            "send your answer again" (send)
//! ```
//! `want` and the timeout are the querier's business and stay local.
//!
//! ## Parameters
//! | name | default | meaning |
//! |---|---|---|
//! | `reply_cache` | 64 | replies kept to send again when a querier asks after a view change (0: none) |
//!
//! ## Bad input
//! Headers are decoded into a typed value or dropped and counted by reason:
//! `truncated`, `unknown_kind`, a varint that overflows, `request_as_send`,
//! `reply_as_cast`, `reask_as_cast`, `reask_trailing_bytes`. Replies are
//! checked against the open queries: a second reply from a member
//! (`duplicate_reply`), one from a member not asked (`reply_not_asked`,
//! `reply_not_member`), one for a query that ended lately (`late_reply`)
//! or that this member never made (`unknown_query`) are dropped and
//! counted. A query whose id is already open is refused (`duplicate_query_id`,
//! with a [`Up::Problem`]). State per query is bounded by the view's size;
//! the reply cache by `reply_cache`.

#[cfg(test)]
mod tests;

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use strata_stack::codec::{DecodeResult, Malformed, Reader, MAX_VARINT_LEN};
use strata_stack::event::{QueryOutcome, QueryResult, Want};
use strata_stack::{
    Context, Down, Instant, Layer, LayerDescriptor, MemberId, Msg, ParamKind, ParamSpec, Params, Problem, Props, Stats, TimerKey, Up, View, ViewId,
};

/// The `QUERY` descriptor.
pub const QUERY: LayerDescriptor = LayerDescriptor {
    name: "QUERY",
    summary: "queries: cast a request, collect replies from all, k or a majority of the members, with a timeout",
    requires: Props::RELIABLE.union(Props::FIFO),
    provides: Props::NONE,
    params: &[ParamSpec {
        name: "reply_cache",
        kind: ParamKind::U64 { min: 0, max: 65_536 },
        default: "64",
        doc: "replies kept to send again when a querier asks after a view change (0: none)",
        wire: false,
    }],
    max_header_len: |_| 1 + MAX_VARINT_LEN,
    build: |p| Ok(Box::new(Query::new(p))),
};

/// Message kinds (the first header byte).
mod kind {
    pub const DATA: u8 = 0;
    pub const REQUEST: u8 = 1;
    pub const REPLY: u8 = 2;
    pub const REASK: u8 = 3;
}

/// A decoded header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Header {
    Data,
    Request(u64),
    Reply(u64),
    Reask(u64),
}

impl Header {
    fn decode(r: &mut Reader<'_>) -> DecodeResult<Header> {
        match r.u8()? {
            kind::DATA => Ok(Header::Data),
            kind::REQUEST => Ok(Header::Request(r.varint()?)),
            kind::REPLY => Ok(Header::Reply(r.varint()?)),
            kind::REASK => Ok(Header::Reask(r.varint()?)),
            _ => Err(Malformed("unknown_kind")),
        }
    }

    fn push(self, msg: &mut Msg) {
        match self {
            Header::Data => msg.push(&[kind::DATA]),
            Header::Request(id) => msg.push_with(|w| {
                w.u8(kind::REQUEST).varint(id);
            }),
            Header::Reply(id) => msg.push_with(|w| {
                w.u8(kind::REPLY).varint(id);
            }),
            Header::Reask(id) => msg.push_with(|w| {
                w.u8(kind::REASK).varint(id);
            }),
        }
    }
}

/// The one timer: the earliest deadline of the open queries.
const TIMER_DEADLINE: TimerKey = 0;

/// Ids of recently ended queries remembered, to tell a late reply from an
/// unsolicited one.
const RECENTLY_ENDED: usize = 64;

/// Where one asked member stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Asked {
    /// In the view, no reply yet.
    Waiting,
    /// In the view, replied.
    Replied,
    /// Left the view; `replied` says whether it answered first.
    Departed { replied: bool },
}

/// The members a query was delivered to, once the querier's own delivery
/// has fixed them.
#[derive(Debug)]
struct Round {
    view: Arc<View>,
    /// By rank in `view`.
    asked: Vec<Asked>,
    /// Members in the view not replied yet.
    waiting: usize,
    /// Members still in the view.
    present: usize,
    /// Members still in the view that replied.
    replied_present: usize,
}

impl Round {
    /// The members of `view`, those in `replies` already answered.
    fn new(view: Arc<View>, replies: &[(MemberId, Bytes)]) -> Round {
        let asked: Vec<Asked> = view.members().iter().map(|m| if replies.iter().any(|(r, _)| r == m) { Asked::Replied } else { Asked::Waiting }).collect();
        let replied_present = asked.iter().filter(|a| **a == Asked::Replied).count();
        Round { present: asked.len(), waiting: asked.len() - replied_present, replied_present, asked, view }
    }

    /// Members not in `view` leave the round.
    fn shrink_to(&mut self, view: &View) {
        for (i, m) in self.view.members().iter().enumerate() {
            if view.contains(m) {
                continue;
            }
            match self.asked[i] {
                Asked::Waiting => {
                    self.waiting -= 1;
                    self.present -= 1;
                    self.asked[i] = Asked::Departed { replied: false };
                }
                Asked::Replied => {
                    self.replied_present -= 1;
                    self.present -= 1;
                    self.asked[i] = Asked::Departed { replied: true };
                }
                Asked::Departed { .. } => {}
            }
        }
    }
}

/// An open query at the querier.
#[derive(Debug)]
struct Pending {
    want: Want,
    deadline: Instant,
    /// `None` until the querier's own layer delivers the query.
    round: Option<Round>,
    /// In arrival order, one per member.
    replies: Vec<(MemberId, Bytes)>,
}

impl Pending {
    /// How the query ends now, if it does.
    fn verdict(&self) -> Option<QueryOutcome> {
        let met = match self.want {
            Want::Count(k) => self.replies.len() >= k,
            Want::All => self.round.as_ref().is_some_and(|r| r.waiting == 0),
            Want::Majority => self.round.as_ref().is_some_and(|r| r.replied_present * 2 > r.present),
        };
        if met {
            Some(QueryOutcome::Complete)
        } else if self.round.as_ref().is_some_and(|r| r.waiting == 0) {
            Some(QueryOutcome::Impossible)
        } else {
            None
        }
    }
}

/// A reply this member sent, kept to answer a REASK.
#[derive(Debug)]
struct SentReply {
    to: MemberId,
    id: u64,
    /// The view it went out in.
    view: ViewId,
    body: Bytes,
}

/// The QUERY layer.
#[derive(Debug)]
pub struct Query {
    /// Open queries of this member, by id.
    pending: BTreeMap<u64, Pending>,
    /// Their deadlines, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Ids of the queries that ended last, oldest first.
    recently_ended: VecDeque<u64>,
    /// The last replies sent, oldest first, at most `reply_cache_len`.
    reply_cache: VecDeque<SentReply>,
    reply_cache_len: usize,
    /// This member left the group: no more queries.
    left: bool,
    queries_sent: u64,
    queries_delivered: u64,
    replies_sent: u64,
    replies_received: u64,
    complete: u64,
    timed_out: u64,
    impossible: u64,
    reasks_sent: u64,
    replies_resent: u64,
    reasks_unanswered: u64,
}

impl Query {
    /// A layer with these parameters (see [`QUERY`]).
    pub fn new(p: &Params) -> Query {
        let reply_cache_len = p.u64("reply_cache") as usize;
        Query {
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            recently_ended: VecDeque::with_capacity(RECENTLY_ENDED),
            reply_cache: VecDeque::with_capacity(reply_cache_len),
            reply_cache_len,
            left: false,
            queries_sent: 0,
            queries_delivered: 0,
            replies_sent: 0,
            replies_received: 0,
            complete: 0,
            timed_out: 0,
            impossible: 0,
            reasks_sent: 0,
            replies_resent: 0,
            reasks_unanswered: 0,
        }
    }

    // ---- the querier ---------------------------------------------------------

    fn query(&mut self, cx: &mut Context<'_>, id: u64, mut msg: Msg, want: Want, timeout: Duration) {
        if self.pending.contains_key(&id) {
            cx.drop_malformed("duplicate_query_id");
            let what = format!("query id {id} is already in flight; the new query was not cast");
            return cx.up(Up::Problem(Problem { layer: "QUERY", what }));
        }
        let deadline = cx.now() + timeout;
        let pending = Pending { want, deadline, round: None, replies: Vec::new() };
        if self.left {
            // Nobody to ask: end it at once, with nobody asked.
            return self.end(cx, id, pending, QueryOutcome::Impossible);
        }
        Header::Request(id).push(&mut msg);
        cx.down(Down::Cast(msg));
        self.queries_sent += 1;
        self.pending.insert(id, pending);
        self.deadlines.insert((deadline, id));
        self.settle(cx, id);
        self.arm(cx);
    }

    /// The querier's own layer delivered its query `id`: the members of the
    /// current view are the ones asked.
    fn delivered_own(&mut self, cx: &mut Context<'_>, id: u64) {
        let Some(p) = self.pending.get_mut(&id) else { return };
        if p.round.is_some() {
            return;
        }
        p.round = Some(Round::new(cx.view().clone(), &p.replies));
        self.settle(cx, id);
        self.arm(cx);
    }

    fn on_reply(&mut self, cx: &mut Context<'_>, from: MemberId, id: u64, body: Bytes) {
        let Some(p) = self.pending.get_mut(&id) else {
            return cx.drop_malformed(if self.recently_ended.contains(&id) { "late_reply" } else { "unknown_query" });
        };
        if p.replies.iter().any(|(m, _)| *m == from) {
            return cx.drop_malformed("duplicate_reply");
        }
        match &mut p.round {
            Some(round) => {
                let Some(rank) = round.view.rank_of(&from) else { return cx.drop_malformed("reply_not_asked") };
                match round.asked[rank] {
                    Asked::Waiting => {
                        round.asked[rank] = Asked::Replied;
                        round.waiting -= 1;
                        round.replied_present += 1;
                    }
                    // Removed from the view, yet it answered (a member
                    // suspected by mistake): its answer is one more reply.
                    Asked::Departed { replied: false } => round.asked[rank] = Asked::Departed { replied: true },
                    Asked::Replied | Asked::Departed { replied: true } => return cx.drop_malformed("duplicate_reply"),
                }
            }
            // Not delivered here yet: only members of the view can have it.
            None if !cx.view().contains(&from) => return cx.drop_malformed("reply_not_member"),
            None => {}
        }
        p.replies.push((from, body));
        self.replies_received += 1;
        self.settle(cx, id);
        self.arm(cx);
    }

    fn on_view(&mut self, cx: &mut Context<'_>, view: &Arc<View>) {
        let local = cx.local();
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            let Some(round) = self.pending.get_mut(&id).and_then(|p| p.round.as_mut()) else { continue };
            if round.view.id() == view.id() {
                continue;
            }
            round.shrink_to(view);
            self.settle(cx, id);
            let Some(round) = self.pending.get(&id).and_then(|p| p.round.as_ref()) else { continue };
            // Replies sent in an older view may have been forgotten with it.
            for (m, _) in round.view.members().iter().zip(&round.asked).filter(|(m, a)| **a == Asked::Waiting && **m != local) {
                let mut msg = Msg::empty();
                Header::Reask(id).push(&mut msg);
                cx.down(Down::Send { to: *m, msg });
                self.reasks_sent += 1;
            }
        }
        self.arm(cx);
    }

    /// Ends query `id` if its verdict is in.
    fn settle(&mut self, cx: &mut Context<'_>, id: u64) {
        let Some(outcome) = self.pending.get(&id).and_then(Pending::verdict) else { return };
        if let Some(p) = self.pending.remove(&id) {
            self.deadlines.remove(&(p.deadline, id));
            self.end(cx, id, p, outcome);
        }
    }

    /// Reports a query that is over (already out of `pending`).
    fn end(&mut self, cx: &mut Context<'_>, id: u64, p: Pending, outcome: QueryOutcome) {
        let (view, missing) = match p.round {
            Some(round) => {
                let missing = round
                    .view
                    .members()
                    .iter()
                    .zip(&round.asked)
                    .filter(|(_, a)| matches!(a, Asked::Waiting | Asked::Departed { replied: false }))
                    .map(|(m, _)| *m)
                    .collect();
                (round.view, missing)
            }
            None => {
                let view = cx.view().clone();
                let missing = view.members().iter().filter(|m| !p.replies.iter().any(|(r, _)| r == *m)).copied().collect();
                (view, missing)
            }
        };
        match outcome {
            QueryOutcome::Complete => self.complete += 1,
            QueryOutcome::TimedOut => self.timed_out += 1,
            QueryOutcome::Impossible => self.impossible += 1,
        }
        if self.recently_ended.len() == RECENTLY_ENDED {
            self.recently_ended.pop_front();
        }
        self.recently_ended.push_back(id);
        cx.up(Up::QueryDone(QueryResult { id, replies: p.replies, view, missing, outcome }));
    }

    /// Arms the timer for the earliest open deadline.
    fn arm(&self, cx: &mut Context<'_>) {
        match self.deadlines.first() {
            Some(&(deadline, _)) => cx.set_timer(TIMER_DEADLINE, deadline),
            None => cx.cancel_timer(TIMER_DEADLINE),
        }
    }

    fn on_left(&mut self, cx: &mut Context<'_>) {
        self.left = true;
        self.deadlines.clear();
        for (id, p) in std::mem::take(&mut self.pending) {
            self.end(cx, id, p, QueryOutcome::Impossible);
        }
        self.arm(cx);
    }

    // ---- the members asked ---------------------------------------------------

    fn reply(&mut self, cx: &mut Context<'_>, to: MemberId, id: u64, mut msg: Msg) {
        if self.reply_cache_len > 0 {
            if self.reply_cache.len() == self.reply_cache_len {
                self.reply_cache.pop_front();
            }
            self.reply_cache.push_back(SentReply { to, id, view: cx.view().id(), body: msg.body().clone() });
        }
        Header::Reply(id).push(&mut msg);
        cx.down(Down::Send { to, msg });
        self.replies_sent += 1;
    }

    fn on_reask(&mut self, cx: &mut Context<'_>, from: MemberId, id: u64) {
        let current = cx.view().id();
        // A reply sent in the current view is on its way reliably.
        let Some(sent) = self.reply_cache.iter().rev().find(|s| s.to == from && s.id == id) else {
            self.reasks_unanswered += 1;
            return;
        };
        if sent.view == current {
            return;
        }
        let mut msg = Msg::new(sent.body.clone());
        Header::Reply(id).push(&mut msg);
        cx.down(Down::Send { to: from, msg });
        self.replies_resent += 1;
    }

    // ---- dispatch ------------------------------------------------------------

    fn receive(&mut self, cx: &mut Context<'_>, from: MemberId, mut msg: Msg, cast: bool) {
        let header = match msg.pop_with(Header::decode) {
            Ok(h) => h,
            Err(e) => return cx.drop_malformed(e.0),
        };
        match (header, cast) {
            (Header::Data, true) => cx.up(Up::Cast { from, msg }),
            (Header::Data, false) => cx.up(Up::Send { from, msg }),
            (Header::Request(id), true) => {
                self.queries_delivered += 1;
                if from == cx.local() {
                    self.delivered_own(cx, id);
                }
                cx.up(Up::Query { from, id, msg });
            }
            (Header::Request(_), false) => cx.drop_malformed("request_as_send"),
            (Header::Reply(id), false) => self.on_reply(cx, from, id, msg.into_body()),
            (Header::Reply(_), true) => cx.drop_malformed("reply_as_cast"),
            (Header::Reask(id), false) if msg.is_empty() => self.on_reask(cx, from, id),
            (Header::Reask(_), false) => cx.drop_malformed("reask_trailing_bytes"),
            (Header::Reask(_), true) => cx.drop_malformed("reask_as_cast"),
        }
    }
}

impl Layer for Query {
    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::Cast(mut msg) => {
                Header::Data.push(&mut msg);
                cx.down(Down::Cast(msg));
            }
            Down::Send { to, mut msg } => {
                Header::Data.push(&mut msg);
                cx.down(Down::Send { to, msg });
            }
            Down::Query { id, msg, want, timeout } => self.query(cx, id, msg, want, timeout),
            Down::Reply { to, id, msg } => self.reply(cx, to, id, msg),
            other => cx.down(other),
        }
    }

    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        match ev {
            Up::Cast { from, msg } => self.receive(cx, from, msg, true),
            Up::Send { from, msg } => self.receive(cx, from, msg, false),
            Up::View(view) => {
                cx.up(Up::View(view.clone()));
                self.on_view(cx, &view);
            }
            Up::Left => {
                self.on_left(cx);
                cx.up(Up::Left);
            }
            other => cx.up(other),
        }
    }

    fn timeout(&mut self, cx: &mut Context<'_>, key: TimerKey) {
        if key != TIMER_DEADLINE {
            return;
        }
        let now = cx.now();
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(p) = self.pending.remove(&id) {
                self.end(cx, id, p, QueryOutcome::TimedOut);
            }
        }
        self.arm(cx);
    }

    fn stats(&self, out: &mut Stats) {
        out.add("queries_sent", self.queries_sent)
            .add("queries_delivered", self.queries_delivered)
            .add("pending", self.pending.len() as u64)
            .add("complete", self.complete)
            .add("timed_out", self.timed_out)
            .add("impossible", self.impossible)
            .add("replies_sent", self.replies_sent)
            .add("replies_received", self.replies_received)
            .add("reasks_sent", self.reasks_sent)
            .add("replies_resent", self.replies_resent)
            .add("reasks_unanswered", self.reasks_unanswered)
            .add("reply_cache", self.reply_cache.len() as u64);
    }
}
