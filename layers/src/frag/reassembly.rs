//! The bounded store of partly received messages ("partials").
//!
//! Everything is kept in `BTreeMap`s so that iteration, and hence eviction
//! and expiry, never depends on a hasher's seed. Each partial carries an
//! arrival sequence number: "oldest" means the partial started first.

use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::time::Duration;
use strata_stack::{Instant, MemberId, View};

/// Names a message being reassembled, among one sender's.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum GroupId {
    /// The id is the message's tag. Cast and point-to-point fragments merge:
    /// a reliability layer retransmits a lost cast point-to-point, with the
    /// same tag and the same bytes.
    Tagged(u64),
    /// The id is the sender FRAG's own counter.
    Untagged {
        /// Whether it came point-to-point.
        send: bool,
        /// The counter value.
        id: u64,
    },
}

/// The shape every fragment of one message agrees on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Fragments in the message.
    pub count: u64,
    /// Bytes in the message.
    pub total_len: u64,
    /// Bytes in every fragment but the last.
    pub frag_len: u64,
}

/// One message being reassembled.
#[derive(Debug)]
pub(crate) struct Partial {
    /// Arrival order among all partials, for eviction.
    seq: u64,
    /// Whether its first fragment came point-to-point: how it is delivered.
    pub send: bool,
    /// What every fragment must agree on.
    pub shape: Shape,
    /// When it last received a new fragment; it expires a timeout after that.
    last_progress: Instant,
    /// Bytes charged against the store's bound.
    charged: u64,
    /// Fragments received, by index: only what arrived, never a slot per
    /// declared fragment.
    fragments: BTreeMap<u64, Bytes>,
}

impl Partial {
    /// Whether fragment `index` is already here.
    pub fn has(&self, index: u64) -> bool {
        self.fragments.contains_key(&index)
    }

    /// The message, in one contiguous buffer (the one copy reassembly costs).
    pub fn assemble(self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.shape.total_len as usize);
        for part in self.fragments.values() {
            buf.extend_from_slice(part);
        }
        debug_assert_eq!(buf.len() as u64, self.shape.total_len, "fragment lengths were checked against the shape");
        buf.freeze()
    }
}

#[derive(Debug, Default)]
struct SenderPartials {
    partials: BTreeMap<GroupId, Partial>,
    by_age: BTreeMap<u64, GroupId>,
}

/// All partials, of all senders.
#[derive(Debug, Default)]
pub(crate) struct Reassembly {
    senders: BTreeMap<MemberId, SenderPartials>,
    by_age: BTreeMap<u64, (MemberId, GroupId)>,
    next_seq: u64,
    bytes: u64,
}

impl Reassembly {
    /// The partial `gid` of `from`.
    pub fn get(&self, from: &MemberId, gid: &GroupId) -> Option<&Partial> {
        self.senders.get(from)?.partials.get(gid)
    }

    /// How many partials there are.
    pub fn len(&self) -> usize {
        self.by_age.len()
    }

    /// Bytes charged by all partials.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// How many partials `from` has.
    pub fn partials_of(&self, from: &MemberId) -> usize {
        self.senders.get(from).map_or(0, |s| s.partials.len())
    }

    /// The partial that started first.
    pub fn oldest(&self) -> Option<(MemberId, GroupId)> {
        self.by_age.values().next().copied()
    }

    /// The partial of `from` that started first.
    pub fn oldest_of(&self, from: &MemberId) -> Option<GroupId> {
        self.senders.get(from)?.by_age.values().next().copied()
    }

    /// Starts an empty partial (the caller checked that none exists).
    pub fn start(&mut self, from: MemberId, gid: GroupId, send: bool, shape: Shape, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let s = self.senders.entry(from).or_default();
        let partial = Partial { seq, send, shape, last_progress: now, charged: 0, fragments: BTreeMap::new() };
        debug_assert!(!s.partials.contains_key(&gid), "callers start a partial only when there is none");
        s.partials.insert(gid, partial);
        s.by_age.insert(seq, gid);
        self.by_age.insert(seq, (from, gid));
    }

    /// Stores fragment `index` of an existing partial, charging `charge`
    /// bytes; returns whether the partial is now complete.
    pub fn add(&mut self, from: &MemberId, gid: &GroupId, index: u64, data: Bytes, charge: u64, now: Instant) -> bool {
        let Some(p) = self.senders.get_mut(from).and_then(|s| s.partials.get_mut(gid)) else {
            debug_assert!(false, "callers add only to a partial they found or started");
            return false;
        };
        p.fragments.insert(index, data);
        p.charged += charge;
        p.last_progress = now;
        self.bytes += charge;
        p.fragments.len() as u64 == p.shape.count
    }

    /// Removes a partial, releasing its bytes.
    pub fn remove(&mut self, from: &MemberId, gid: &GroupId) -> Option<Partial> {
        let s = self.senders.get_mut(from)?;
        let p = s.partials.remove(gid)?;
        s.by_age.remove(&p.seq);
        if s.partials.is_empty() {
            self.senders.remove(from);
        }
        self.by_age.remove(&p.seq);
        self.bytes -= p.charged;
        Some(p)
    }

    /// Drops the partials of senders outside `view`; returns how many.
    pub fn retain_members(&mut self, view: &View) -> u64 {
        let Reassembly { senders, by_age, bytes, .. } = self;
        let mut removed = 0;
        senders.retain(|m, s| {
            if view.contains(m) {
                return true;
            }
            for p in s.partials.values() {
                by_age.remove(&p.seq);
                *bytes -= p.charged;
                removed += 1;
            }
            false
        });
        removed
    }

    /// Drops the partials that received nothing new for `timeout` up to
    /// `now`; returns how many, and when the next one would expire.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> (u64, Option<Instant>) {
        let mut expired: Vec<(MemberId, GroupId)> = Vec::new();
        let mut next: Option<Instant> = None;
        for (from, gid) in self.by_age.values() {
            let Some(p) = self.get(from, gid) else { continue };
            let deadline = p.last_progress + timeout;
            if deadline <= now {
                expired.push((*from, *gid));
            } else {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
            }
        }
        for (from, gid) in &expired {
            self.remove(from, gid);
        }
        (expired.len() as u64, next)
    }
}
