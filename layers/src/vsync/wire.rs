//! VSYNC's wire format: a one-byte kind, then either application data
//! (zero-copy, the payload follows), a state chunk, or a bincode control
//! payload.
//!
//! ```text
//!  data cast / data send:  | kind u8 | payload ...
//!  state chunk:            | kind u8 | chunk ...
//!  control:                | kind u8 | bincode(Control), at most MAX_CONTROL bytes
//! ```

use serde::{Deserialize, Serialize};
use strata_stack::codec::{decode_control, encode_control, DecodeResult, Malformed};
use strata_stack::{MemberId, Msg, MsgFlags, ViewId};

/// Message kinds (the first header byte).
pub(super) mod kind {
    pub const CAST: u8 = 1;
    pub const SEND: u8 = 2;
    // 3 was a departed sender's cast fetched from a holder; NAK relays those now.
    pub const STATE_CHUNK: u8 = 4;
    pub const CONTROL: u8 = 5;
}

/// The largest control payload accepted: views and cuts of a few thousand
/// members fit; a hostile length never makes the decoder allocate more.
pub(super) const MAX_CONTROL: usize = 256 * 1024;

/// Orders view-change rounds: a participant answers only the highest
/// round it has seen, as a Paxos acceptor answers only its highest ballot.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(super) struct Ballot {
    pub number: u64,
    pub coordinator: MemberId,
}

/// What a view-change round decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Outcome {
    /// Install this view. `state_to` are the members that must receive the
    /// application's state (joiners, and members still loading it), from
    /// `provider`.
    Install { id: ViewId, members: Vec<MemberId>, primary: bool, state_to: Vec<MemberId>, provider: Option<MemberId> },
    /// Every member leaves the view and joins the group that `into` belong to
    /// (a merge), or simply ends (everyone was leaving).
    Dissolve { into: Vec<MemberId> },
}

/// A round a participant has completed its flush for (Paxos's "accepted
/// value"): a later round must decide the same outcome with the same cut.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Accepted {
    pub ballot: Ballot,
    pub outcome: Outcome,
    /// Per sender (by rank in the old view): how many of its casts the view delivers.
    pub cut: Vec<u64>,
    /// The members that flushed to that cut.
    pub flushed: Vec<MemberId>,
}

/// Control messages. The comment on each names how it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Control {
    /// Out of band, cast every `heartbeat_ms` to the view.
    Heartbeat { view: ViewId },
    /// Out of band, from a member outside any view to its seeds, every `join_retry_ms`.
    /// (Passed on by a member to its coordinator, hence the joiner's id.)
    Join { joiner: MemberId, last_counter: u64 },
    /// Out of band, answer to a join: a view of the group exists (primary or
    /// not), its coordinator is named.
    JoinAck { coordinator: MemberId, primary: bool },
    /// Out of band, from a leaving member to its coordinator until it is out.
    Leave { member: MemberId },
    /// Out of band, from a member to its coordinator: members it suspects.
    Suspect(Vec<MemberId>),
    /// Reliable, coordinator to participants: a round starts; block.
    Flush { ballot: Ballot, view: ViewId, participants: Vec<MemberId> },
    /// Reliable, participant to a coordinator whose round it will not answer:
    /// it promised a higher ballot (the coordinator retries above it).
    Reject { promised: Ballot },
    /// Reliable, participant to coordinator: what it holds.
    FlushState { ballot: Ballot, sent: u64, loading: bool, available: Vec<u64>, accepted: Option<Accepted> },
    /// Reliable, coordinator to participants: the decided outcome and cut.
    Cut { ballot: Ballot, accepted: Accepted, holders: Vec<Option<MemberId>> },
    /// Reliable, participant to coordinator: flushed to the cut.
    FlushOk { ballot: Ballot },
    /// Out of band, to every member concerned: the outcome of the round run in view `from`.
    View { from: ViewId, ballot: Ballot, outcome: Outcome },
    /// Out of band: the view `id` was installed here.
    ViewAck { id: ViewId },
    /// Out of band: send me your view (a heartbeat showed a newer one).
    ViewRequest,
    /// Reliable, state provider to a member loading state: the state is complete.
    StateDone,
    /// Out of band, coordinator to addresses outside its view: a view of the
    /// same group exists here (finds partitions that healed and groups
    /// founded concurrently).
    Probe { view: ViewId, members: Vec<MemberId>, primary: bool },
    /// Out of band, answer to a probe from a view that should be absorbed: join us.
    Invite { members: Vec<MemberId>, primary: bool },
}

/// A control message ready to go down (flagged out of band when `oob`).
pub(super) fn control(c: &Control, oob: bool) -> Msg {
    let body = encode_control(c);
    let mut msg = Msg::new(bytes::Bytes::from(body));
    msg.push(&[kind::CONTROL]);
    if oob {
        msg.flags_mut().insert(MsgFlags::OOB);
    }
    msg
}

/// Decodes a control payload (the kind byte already popped).
pub(super) fn decode(msg: &Msg) -> DecodeResult<Control> {
    let data = msg.to_bytes();
    let c: Control = decode_control(&data, MAX_CONTROL)?;
    // Reject shapes no honest member sends before any handler sees them.
    match &c {
        Control::Flush { participants, .. } if participants.is_empty() => Err(Malformed("empty_participants")),
        Control::Cut { accepted, holders, .. } if accepted.cut.len() != holders.len() => Err(Malformed("cut_holders_mismatch")),
        Control::View { outcome: Outcome::Install { members, .. }, .. } if members.is_empty() => Err(Malformed("empty_view")),
        _ => Ok(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip_and_garbage_is_refused() {
        let m = MemberId::sim(1);
        let b = Ballot { number: 3, coordinator: m };
        let c = Control::Flush { ballot: b, view: ViewId { counter: 2, creator: m }, participants: vec![m] };
        let mut msg = control(&c, false);
        assert_eq!(msg.pop_with(|r| r.u8()), Ok(kind::CONTROL));
        assert_eq!(decode(&msg), Ok(c));
        assert!(decode(&Msg::new(bytes::Bytes::from_static(&[0xff; 40]))).is_err());
        let empty = Control::Flush { ballot: b, view: ViewId { counter: 2, creator: m }, participants: vec![] };
        let mut msg = control(&empty, false);
        msg.pop_with(|r| r.u8()).unwrap();
        assert_eq!(decode(&msg), Err(Malformed("empty_participants")));
    }
}
