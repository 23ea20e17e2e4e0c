//! Events that move between layers, and what the application sees.
//!
//! Both enums are `#[non_exhaustive]`: later layers add events, so a layer's
//! `match` ends with an arm that forwards whatever it does not handle.

use crate::msg::Msg;
use crate::view::{MemberId, View};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// An event travelling down, from the application towards the network.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Down {
    /// Multicast `msg` to every member of the current view.
    Cast(Msg),
    /// Send `msg` to one member.
    Send {
        /// The destination.
        to: MemberId,
        /// The message.
        msg: Msg,
    },
    /// A new view, passed down by the membership layer so that the layers
    /// below it reset their per-view state.
    View(Arc<View>),
    /// The application asks to be told (by [`Up::Flushed`] with the same
    /// token) once every message it cast so far is stable.
    Flush {
        /// Echoed in the answer.
        token: u64,
    },
    /// The member leaves the group.
    Leave,
    /// A chunk of the application's state for the joiners named by the
    /// [`Up::StateRequest`] with this token.
    StateChunk {
        /// The request's token.
        token: u64,
        /// The chunk.
        data: Bytes,
    },
    /// The state for the request with this token is complete.
    StateDone {
        /// The request's token.
        token: u64,
    },
    /// Sent by the membership layer during a flush to the reliability layer:
    /// obtain the casts of `sender` numbered below `upto` (counted from the
    /// start of the view) that this member lacks, from `holder`, which has
    /// them. `sender` is leaving the view and may not answer itself. The
    /// recovered casts arrive as if `sender` had sent them, headers and all,
    /// so the layers between (CAUSAL) order them as usual.
    Recover {
        /// Whose casts.
        sender: MemberId,
        /// One past the last one wanted.
        upto: u64,
        /// Who has them.
        holder: MemberId,
    },
    /// Sent by a layer that holds casts back (CAUSAL, waiting for their
    /// causal predecessors) to the reliability layer below it: of the casts
    /// of `from` that the reliability layer passed up in the current view,
    /// `count` are held above and not yet delivered. The reliability layer
    /// acknowledges only the casts delivered past the holding layer, so a
    /// sender whose casts pile up here runs out of send window (flow
    /// control) instead of the holding layer running out of room, and the
    /// casts the held ones wait for get through. A later report replaces an
    /// earlier one; a new view starts from 0.
    ///
    /// Only a hold that casts *already sent* end (a missing predecessor,
    /// which retransmission brings) may be reported: a hold waiting for a
    /// future cast (a sequencer's order) could close the window of the very
    /// sender it waits for.
    Holding {
        /// Whose casts.
        from: MemberId,
        /// How many are held.
        count: u64,
    },
    /// Cast `msg` as query `id` and collect replies until `want` is met, the
    /// view rules it out, or `timeout` passes; answered by
    /// [`Up::QueryDone`] with the same id. Handled by a query layer (QUERY);
    /// see docs/layers/QUERY.md for the rules.
    Query {
        /// Chosen by the caller, unique among its queries in flight; echoed
        /// in the replies and the result.
        id: u64,
        /// The request.
        msg: Msg,
        /// How many replies complete the query.
        want: Want,
        /// How long to wait for them, from now.
        timeout: Duration,
    },
    /// The application has finished applying the durable message `tag`
    /// (delivered with [`Up::Durable`]); a log may forget it once every
    /// member is done with it. Handled by SAFE.
    Done(SafeTag),
    /// Answer query `id` of member `to` (from an [`Up::Query`]).
    Reply {
        /// The member that asked.
        to: MemberId,
        /// The query's id.
        id: u64,
        /// The answer.
        msg: Msg,
    },
}

/// An event travelling up, from the network towards the application.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Up {
    /// A multicast message from `from`.
    Cast {
        /// The member that cast it.
        from: MemberId,
        /// The message.
        msg: Msg,
    },
    /// A point-to-point message from `from`.
    Send {
        /// The sender.
        from: MemberId,
        /// The message.
        msg: Msg,
    },
    /// A view was installed.
    View(Arc<View>),
    /// A view change has started: hold casts until the next view.
    Block,
    /// Every message this member cast before the matching [`Down::Flush`] is stable.
    Flushed {
        /// The token of the flush request.
        token: u64,
    },
    /// The first `count` casts of `from` in the current view are stable:
    /// every member of the view has received them. Reported by a reliability
    /// layer (NAK) for layers above it (a flush, a log's garbage collector);
    /// the application does not see it.
    Stable {
        /// Whose casts.
        from: MemberId,
        /// How many of them, counted from the start of the view.
        count: u64,
    },
    /// A member is suspected to have failed.
    Suspect(MemberId),
    /// Messages from `from` were given up on: they will never be delivered.
    Lost {
        /// Whose messages.
        from: MemberId,
        /// How many.
        count: u64,
    },
    /// A layer hit a condition the application should hear about.
    Problem(Problem),
    /// This member has left the group.
    Left,
    /// Members are joining: the application's state at this point of its
    /// event stream (after every delivery of the old view, before the new
    /// view) is to be sent to them, as [`Down::StateChunk`]s and a
    /// [`Down::StateDone`] carrying `token`.
    StateRequest {
        /// Echoed in the chunks.
        token: u64,
        /// Who receives the state.
        joiners: Vec<MemberId>,
    },
    /// This member, just admitted, starts loading the group's state: forget
    /// any partial state loaded before.
    StateBegin,
    /// The next chunk of the group's state.
    StateChunk(Bytes),
    /// The state is complete; deliveries of the current view follow.
    StateDone,
    /// A query cast by `from` (a [`Down::Query`] there) to be answered
    /// with [`Down::Reply`] carrying `from` and `id`. Delivered in the
    /// order of casts, like the cast it travelled as.
    Query {
        /// The member that asked.
        from: MemberId,
        /// The query's id, to echo in the reply.
        id: u64,
        /// The request.
        msg: Msg,
    },
    /// A query this member cast is over: the replies it got and why it ended.
    QueryDone(QueryResult),
    /// A durable (uniform, totally ordered) message, delivered by SAFE with
    /// its identity; the application passes `tag` back in [`Down::Done`]
    /// once it has applied it.
    Durable {
        /// Who cast it, in which view, with which id.
        tag: SafeTag,
        /// The message.
        msg: Msg,
        /// Whether this is a redelivery after a total failure (announced by
        /// [`Up::Replay`]): the application may have applied it before.
        replayed: bool,
    },
    /// After a total failure, the messages a restarted group is about to
    /// deliver again, in order (their [`Up::Durable`] deliveries follow,
    /// marked `replayed`): every message accepted before the failure that
    /// some member had not finished.
    Replay(Vec<(SafeTag, Bytes)>),
}

/// The identity of a durable message, as Isis2's completion tags: who cast
/// it, the view it was cast in (the view's counter) and the sender's
/// message number. It is the same at every member and across a restart
/// from the log.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SafeTag {
    /// The member that cast it.
    pub sender: MemberId,
    /// The counter of the view it was cast in.
    pub view: u64,
    /// The sender's message number (from 1, over its incarnation).
    pub id: u64,
}

impl std::fmt::Display for SafeTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}/{}/{}", self.sender, self.sender.incarnation(), self.view, self.id)
    }
}

/// How many replies a query waits for (see [`Down::Query`]). Only members
/// of the view in which the query was delivered are asked; members that
/// leave that view are no longer waited for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Want {
    /// Every member asked that is still in the view.
    All,
    /// This many replies (from any members asked, including ones that
    /// replied and left since). `Count(0)` completes at once.
    Count(usize),
    /// More than half of the members asked that are still in the view when
    /// the query completes: a majority of the current view, not counting
    /// members that joined after the query (they were never asked).
    Majority,
}

/// Why a query ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum QueryOutcome {
    /// Enough replies arrived.
    Complete,
    /// The timeout passed first.
    TimedOut,
    /// Every member still in the view answered and `want` is not met (more
    /// replies asked for than members left), or this member left the group.
    Impossible,
}

/// The end of a query (see [`Up::QueryDone`]).
#[derive(Clone, Debug, PartialEq)]
pub struct QueryResult {
    /// The query's id.
    pub id: u64,
    /// The replies, in the order they arrived: one per member at most.
    pub replies: Vec<(MemberId, Bytes)>,
    /// The view the members were asked in (the view the query was delivered
    /// in; the view current at the end if it was never delivered).
    pub view: Arc<View>,
    /// The members of `view` that did not reply, in rank order: members
    /// that left the view before answering, and members whose answer had
    /// not arrived when the query ended.
    pub missing: Vec<MemberId>,
    /// Why it ended.
    pub outcome: QueryOutcome,
}

/// Something a layer or the engine reports instead of panicking or hanging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The layer (or `"engine"`).
    pub layer: &'static str,
    /// What happened.
    pub what: String,
}

/// How a delivered message was addressed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Multicast to the group.
    Cast,
    /// Sent to this member alone.
    Send,
    /// A durable cast (SAFE): uniform, totally ordered, logged.
    Safe {
        /// Its identity, for [`Stack::done`](crate::Stack::done).
        tag: SafeTag,
        /// A redelivery after a total failure (see [`AppEvent::Replay`]).
        replayed: bool,
    },
}

/// What a stack hands to its application.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AppEvent {
    /// A message was delivered.
    Deliver {
        /// The sender.
        from: MemberId,
        /// Cast or point-to-point.
        kind: Delivery,
        /// The payload, as the sender passed it.
        body: Bytes,
    },
    /// A view was installed.
    View(Arc<View>),
    /// A view change has started.
    Block,
    /// A flush completed.
    Flushed {
        /// The token given to the flush.
        token: u64,
    },
    /// A member is suspected.
    Suspect(MemberId),
    /// Messages were given up on.
    Lost {
        /// Whose messages.
        from: MemberId,
        /// How many.
        count: u64,
    },
    /// A layer reported a problem.
    Problem(Problem),
    /// The member has left the group.
    Left,
    /// Members are joining: send them the application's state as of this
    /// point in the event stream (every delivery before this event is in it,
    /// none after), with [`Stack::provide_state`](crate::Stack::provide_state)
    /// and this token.
    StateRequest {
        /// Pass it back with the state.
        token: u64,
        /// Who receives the state.
        joiners: Vec<MemberId>,
    },
    /// This member was admitted and starts loading the group's state: drop
    /// any partial state loaded before.
    StateBegin,
    /// The next chunk of the group's state.
    StateChunk(Bytes),
    /// The state is complete: deliveries of the current view follow.
    StateDone,
    /// A member asks a query: answer it with
    /// [`Stack::reply`](crate::Stack::reply) and `from`, `id`.
    Query {
        /// The member that asked.
        from: MemberId,
        /// The query's id.
        id: u64,
        /// The request.
        body: Bytes,
    },
    /// A query this member made with [`Stack::query`](crate::Stack::query)
    /// is over.
    QueryDone(QueryResult),
    /// The group restarted after a total failure: these durable messages
    /// (identity and body, in order) are redelivered next, each as a
    /// [`AppEvent::Deliver`] of kind [`Delivery::Safe`] with `replayed`.
    /// The application skips those it had applied.
    Replay {
        /// The messages, in delivery order.
        messages: Vec<(SafeTag, Bytes)>,
    },
}
