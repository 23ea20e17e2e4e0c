//! SAFE's headers: one kind byte, then varints (see the module essay).

use smallvec::SmallVec;
use std::net::SocketAddr;
use strata_stack::codec::MAX_VARINT_LEN;
use strata_stack::{DecodeResult, Malformed, MemberId, Reader, SafeTag, Writer};

pub(super) mod kind {
    pub const DATA: u8 = 1;
    pub const PLAIN: u8 = 2;
    pub const PROPOSE: u8 = 3;
    pub const ACK: u8 = 4;
    pub const GC: u8 = 5;
    pub const NEWVIEW: u8 = 6;
    pub const ENTRY: u8 = 7;
    pub const SYNC: u8 = 8;
    pub const SYNC_ENTRY: u8 = 9;
    pub const STATE: u8 = 10;
}

/// The `acceptors` parameter's bound.
pub(super) const MAX_ACCEPTORS: usize = 64;

/// Most member addresses a SYNC names.
pub(super) const MAX_MEMBERS: usize = 1 << 16;

/// A proposal's references to casts (inline up to 8: a header is decoded
/// for every message, so it stays small; a bigger batch allocates once).
pub(super) type Refs = SmallVec<[Ref; 8]>;

/// A cast named by a proposal: the sender's rank in the view, the view
/// counter it was cast in, its id.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) struct Ref {
    pub rank: u32,
    pub view: u64,
    pub id: u64,
}

#[derive(Debug, PartialEq)]
pub(super) enum Header {
    /// A durable cast: the counter of the view it was cast in, its id.
    Data { view: u64, id: u64 },
    /// A cast delivered at once after the sender's durable casts up to id
    /// `after` (0 for sends and out-of-band casts).
    Plain { after: u64 },
    /// The leader puts the referenced casts at slots `first..`.
    Propose { ballot: u64, first: u64, refs: Refs },
    /// Every slot up to `upto` is held (and logged, by an acceptor) here;
    /// every slot up to `done` is finished by its application.
    Ack { ballot: u64, upto: u64, done: u64 },
    /// Every member is done with every slot up to `slot`.
    Gc { ballot: u64, slot: u64 },
    /// The leader's sequence for a new view follows in `count` entries;
    /// every slot up to `base` is finished (where a recovering member starts).
    NewView { ballot: u64, count: u64, replay: bool, base: u64 },
    /// One slot of a NEWVIEW; the payload is the body.
    Entry { ballot: u64, slot: u64, tag: SafeTag },
    /// A recovering member's log follows in `count` entries: its latest
    /// view (ballot and members in rank order), GC point, completeness.
    Sync { ballot: u64, last_view: u64, members: Vec<SocketAddr>, gc: u64, count: u64, complete: bool },
    /// One entry of a SYNC; the payload is the body.
    SyncEntry { ballot: u64, slot: u64, entry_ballot: u64, tag: SafeTag },
    /// SAFE's part of a state transfer: whether the provider is live, the
    /// last slot its application state includes, the GC point, and how many
    /// chunks follow (ENTRY headers with bodies: the provider's undelivered
    /// slots, and with slot 0 its casts not yet proposed).
    State { live: bool, delivered: u64, gc: u64, count: u64 },
}

/// The longest header carried in front of a body (ENTRY, SYNC_ENTRY).
pub(super) const MAX_BODY_HEADER: usize = 1 + 4 * MAX_VARINT_LEN + tag_max_len();

const fn tag_max_len() -> usize {
    MemberId::MAX_ENCODED_LEN + 2 * MAX_VARINT_LEN
}

pub(super) fn encode_tag(w: &mut Writer, tag: &SafeTag) {
    tag.sender.encode(w);
    w.varint(tag.view).varint(tag.id);
}

fn decode_tag(r: &mut Reader<'_>) -> DecodeResult<SafeTag> {
    let sender = MemberId::decode(r)?;
    Ok(SafeTag { sender, view: r.varint()?, id: r.varint()? })
}

impl Header {
    pub(super) fn encode(&self, w: &mut Writer) {
        match self {
            Header::Data { view, id } => {
                w.u8(kind::DATA).varint(*view).varint(*id);
            }
            Header::Plain { after } => {
                w.u8(kind::PLAIN).varint(*after);
            }
            Header::Propose { ballot, first, refs } => {
                w.u8(kind::PROPOSE).varint(*ballot).varint(*first).varint(refs.len() as u64);
                for r in refs {
                    w.varint(u64::from(r.rank)).varint(r.view).varint(r.id);
                }
            }
            Header::Ack { ballot, upto, done } => {
                w.u8(kind::ACK).varint(*ballot).varint(*upto).varint(*done);
            }
            Header::Gc { ballot, slot } => {
                w.u8(kind::GC).varint(*ballot).varint(*slot);
            }
            Header::NewView { ballot, count, replay, base } => {
                w.u8(kind::NEWVIEW).varint(*ballot).varint(*count).u8(u8::from(*replay)).varint(*base);
            }
            Header::Entry { ballot, slot, tag } => {
                w.u8(kind::ENTRY).varint(*ballot).varint(*slot);
                encode_tag(w, tag);
            }
            Header::Sync { ballot, last_view, members, gc, count, complete } => {
                w.u8(kind::SYNC).varint(*ballot).varint(*last_view).varint(members.len() as u64);
                for a in members {
                    MemberId::new(*a, 0).encode(w);
                }
                w.varint(*gc).varint(*count).u8(u8::from(*complete));
            }
            Header::SyncEntry { ballot, slot, entry_ballot, tag } => {
                w.u8(kind::SYNC_ENTRY).varint(*ballot).varint(*slot).varint(*entry_ballot);
                encode_tag(w, tag);
            }
            Header::State { live, delivered, gc, count } => {
                w.u8(kind::STATE).u8(u8::from(*live)).varint(*delivered).varint(*gc).varint(*count);
            }
        }
    }

    /// Reads a header; `max_refs` bounds a proposal (the `batch_msgs` parameter).
    pub(super) fn decode(r: &mut Reader<'_>, max_refs: usize) -> DecodeResult<Header> {
        let flag = |r: &mut Reader<'_>| match r.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Malformed("bad_flag")),
        };
        Ok(match r.u8()? {
            kind::DATA => Header::Data { view: r.varint()?, id: r.varint()? },
            kind::PLAIN => Header::Plain { after: r.varint()? },
            kind::PROPOSE => {
                let (ballot, first) = (r.varint()?, r.varint()?);
                let n = r.varint_max(max_refs as u64, "too_many_refs")? as usize;
                if n == 0 {
                    return Err(Malformed("empty_proposal"));
                }
                let mut refs = Refs::new();
                for _ in 0..n {
                    let rank = u32::try_from(r.varint()?).map_err(|_| Malformed("bad_rank"))?;
                    refs.push(Ref { rank, view: r.varint()?, id: r.varint()? });
                }
                r.finish()?;
                Header::Propose { ballot, first, refs }
            }
            kind::ACK => {
                let h = Header::Ack { ballot: r.varint()?, upto: r.varint()?, done: r.varint()? };
                r.finish()?;
                h
            }
            kind::GC => {
                let h = Header::Gc { ballot: r.varint()?, slot: r.varint()? };
                r.finish()?;
                h
            }
            kind::NEWVIEW => {
                let h = Header::NewView { ballot: r.varint()?, count: r.varint()?, replay: flag(r)?, base: r.varint()? };
                r.finish()?;
                h
            }
            kind::ENTRY => Header::Entry { ballot: r.varint()?, slot: r.varint()?, tag: decode_tag(r)? },
            kind::SYNC => {
                let (ballot, last_view) = (r.varint()?, r.varint()?);
                // Bounded by the bytes present too (an address takes at least 8).
                let n = r.varint_max((MAX_MEMBERS as u64).min(r.remaining() as u64 / 8), "too_many_members")? as usize;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(MemberId::decode(r)?.addr());
                }
                let h = Header::Sync { ballot, last_view, members, gc: r.varint()?, count: r.varint()?, complete: flag(r)? };
                r.finish()?;
                h
            }
            kind::SYNC_ENTRY => Header::SyncEntry { ballot: r.varint()?, slot: r.varint()?, entry_ballot: r.varint()?, tag: decode_tag(r)? },
            kind::STATE => {
                let h = Header::State { live: flag(r)?, delivered: r.varint()?, gc: r.varint()?, count: r.varint()? };
                r.finish()?;
                h
            }
            _ => return Err(Malformed("unknown_kind")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    fn round_trip(h: Header) {
        let mut w = Writer::new();
        h.encode(&mut w);
        let mut r = Reader::new(w.as_slice());
        assert_eq!(Header::decode(&mut r, 32).unwrap(), h);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn every_kind_round_trips() {
        let tag = SafeTag { sender: MemberId::sim(3), view: 7, id: 1 << 40 };
        let addr = MemberId::sim(2).addr();
        round_trip(Header::Data { view: 9, id: 300 });
        round_trip(Header::Plain { after: 0 });
        round_trip(Header::Propose { ballot: 4, first: 17, refs: [Ref { rank: 0, view: 2, id: 1 }, Ref { rank: 3, view: 4, id: 99 }].into_iter().collect() });
        round_trip(Header::Ack { ballot: 4, upto: 18, done: 2 });
        round_trip(Header::Gc { ballot: 4, slot: 3 });
        round_trip(Header::NewView { ballot: 5, count: 2, replay: true, base: 6 });
        round_trip(Header::Entry { ballot: 5, slot: 1, tag });
        round_trip(Header::Sync { ballot: 5, last_view: 4, members: vec![addr], gc: 1, count: 3, complete: false });
        round_trip(Header::SyncEntry { ballot: 5, slot: 2, entry_ballot: 4, tag });
        round_trip(Header::State { live: true, delivered: 8, gc: 3, count: 2 });
        let mut w = Writer::new();
        Header::Entry {
            ballot: u64::MAX,
            slot: u64::MAX,
            tag: SafeTag { sender: MemberId::new("[::1]:1".parse().unwrap(), u64::MAX), view: u64::MAX, id: u64::MAX },
        }
        .encode(&mut w);
        assert!(w.len() <= MAX_BODY_HEADER);
    }

    quickcheck! {
        fn random_bytes_never_panic(data: Vec<u8>) -> bool {
            let _ = Header::decode(&mut Reader::new(&data), 32);
            true
        }
    }
}
