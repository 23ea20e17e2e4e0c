//! Tree routing of group casts (`tree=K` in a scenario): the forwarding of
//! the TCP tree transport ([`crate::tree`]), done by each member's
//! simulated transport.
//!
//! Without `tree=`, a group transmit is one copy per other member of the
//! sender's view, straight to it. With `tree=K`:
//!
//! * each view has one `K`-ary tree over its members by rank, rooted at
//!   rank 0; a member's *route* is its stack's bottom view
//!   ([`Stack::view`]), that view's [`view_tag`] and its tree neighbours
//!   there (parent, then children), as member indices;
//! * a group transmit leaves its sender as one copy per next hop (its tree
//!   neighbours, unless it routes around one: below), tagged with the
//!   sender's view tag;
//! * every tree copy carries the rank it logically comes from (`as_from`,
//!   `TreeCopy` (`net.rs`)); when a tagged copy arrives at a running
//!   member, its transport first forwards it, if the tag is its own
//!   view's tag and `as_from` is one of its tree neighbours (else it
//!   counts it in [`NetStats::not_forwarded`](super::NetStats::not_forwarded)),
//!   then hands it to the stack. Each hop is a copy of its own
//!   ([`super::net`]: its own loss, delay, duplication, partition cut); a
//!   crashed member forwards nothing;
//! * a member sends and forwards with [`next_hops`]: to each neighbour but
//!   `as_from`, and for a neighbour its transport has marked unreachable,
//!   to that neighbour's own next hops instead, marked as coming from it
//!   (routing around a lost member, as the real transport does);
//! * a member whose own view does not contain it (it has no place in the
//!   tree) sends its casts straight to every member of that view, untagged,
//!   and such copies are not forwarded;
//! * point-to-point transmits (`Dest::Member`) go straight to their member.
//!
//! Unreachable marks (kept by the simulator per member, by member index,
//! which stands for the address) model the real transport's: a member
//! marks another when its connection to it breaks after a crash (told one
//! base delay later: every running member that had it as a tree neighbour
//! or had a tree copy go to or come from it), when a connect to a member
//! that is down is refused (at once, and that copy is routed around), or
//! when a partition has cut its copies on the edge for `stall_ms` (the
//! TCP user timeout). A mark younger than `retry_ms` routes around the
//! member; after that the next copy tries it directly (a reconnect),
//! which renews the mark if it fails and clears it otherwise; a copy
//! arriving from the marked member also clears it. A new mark is reported
//! as the runtime's driver reports `poll_lost`: [`Stack::suspect`] of the
//! member of the marking member's view at that address, if any.
//!
//! Per-hop duplication and reordering (without `link_fifo=true`) have no
//! counterpart over TCP; they are kept as a harsher model: the layers above
//! must survive them over UDP anyway, and every TCP schedule is one the
//! reordering network can also produce. `link_fifo=true` gives each
//! ordered pair of members a FIFO link instead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use strata_stack::{Stack, View};

use crate::tree::{neighbours, next_hops, view_tag};

/// How one member routes tree casts in its current view.
pub(crate) struct Route {
    /// The view it was computed for (recomputed when the stack's bottom view changes).
    view: Arc<View>,
    /// The view's tag, which this member's casts carry and forwarded casts must match.
    pub tag: u64,
    /// Its rank in that view (the first rank with its address), if it is in it.
    pub rank: Option<usize>,
    /// The member index at each rank: `None` for an address that is no
    /// member of the run.
    pub by_rank: Vec<Option<usize>>,
    /// Its tree neighbours, parent first: member indices, `None` for an
    /// address that is no member of the run; one per address, never itself.
    pub neighbours: Vec<Option<usize>>,
    fanout: usize,
    /// This member's index.
    me: usize,
}

impl Route {
    /// The route of member `me` (at `local`) in `view`, with `index`
    /// mapping addresses to member indices.
    pub fn new(me: usize, local: SocketAddr, view: &Arc<View>, fanout: usize, index: &BTreeMap<SocketAddr, usize>) -> Route {
        let addrs: Vec<SocketAddr> = view.members().iter().map(|m| m.addr()).collect();
        let rank = addrs.iter().position(|a| *a == local);
        let mut out: Vec<Option<usize>> = Vec::new();
        if let Some(rank) = rank {
            // As the real transport: one edge per address, none to itself.
            for r in neighbours(rank, addrs.len(), fanout).filter(|r| addrs[*r] != local) {
                let nb = index.get(&addrs[r]).copied();
                if nb.is_none() || !out.contains(&nb) {
                    out.push(nb);
                }
            }
        }
        let by_rank = addrs.iter().map(|a| index.get(a).copied()).collect();
        Route { view: view.clone(), tag: view_tag(&addrs), rank, by_rank, neighbours: out, fanout, me }
    }

    /// Whether member `i` is one of its neighbours.
    pub fn has_neighbour(&self, i: usize) -> bool {
        self.neighbours.contains(&Some(i))
    }

    /// Whether a copy that logically came from rank `as_from` is one this
    /// member forwards: it is in the view and `as_from` is one of its tree
    /// neighbours there.
    pub fn forwards_from(&self, as_from: usize) -> bool {
        self.rank.is_some_and(|me| as_from != me && as_from < self.by_rank.len() && neighbours(me, self.by_rank.len(), self.fanout).any(|r| r == as_from))
    }

    /// Where a copy goes next from this member (see [`next_hops`]), having
    /// logically come from rank `from` (`None`: this member sends it), with
    /// `lost(i)` saying whether member `i` is marked unreachable here. A
    /// rank holding this member's own address (an older incarnation of it
    /// still in the view) is routed around too. Appends `(member, as_from
    /// rank)` pairs to `out` (`None`: an address outside the run); nothing
    /// if this member is not in the view.
    pub fn hops(&self, from: Option<usize>, lost: impl Fn(usize) -> bool, scratch: &mut Vec<(usize, usize)>, out: &mut Vec<(Option<usize>, usize)>) {
        let Some(me) = self.rank else { return };
        scratch.clear();
        let unreachable = |r: usize| match self.by_rank[r] {
            Some(m) if m == self.me => true,
            Some(m) => lost(m),
            None => false,
        };
        next_hops(me, from, self.by_rank.len(), self.fanout, unreachable, scratch);
        for &(to, as_from) in scratch.iter() {
            let member = self.by_rank[to];
            // One copy per address (two incarnations of a member in one view share its connection).
            if member.is_none() || !out.iter().any(|(m, _)| *m == member) {
                out.push((member, as_from));
            }
        }
    }
}

/// Every member's route, kept while its view stays the same.
pub(crate) struct Router {
    fanout: usize,
    routes: Vec<Option<Route>>,
}

impl Router {
    /// The router of `members` members for a `fanout`-ary tree.
    pub fn new(members: usize, fanout: u16) -> Router {
        Router { fanout: usize::from(fanout.max(1)), routes: (0..members).map(|_| None).collect() }
    }

    /// Member `i`'s route in its stack's current bottom view.
    pub fn route(&mut self, i: usize, stack: &Stack, index: &BTreeMap<SocketAddr, usize>) -> &Route {
        let view = stack.view();
        let slot = &mut self.routes[i];
        // A new view is a new `Arc`: comparing pointers keeps this O(1) per copy.
        if !slot.as_ref().is_some_and(|r| Arc::ptr_eq(&r.view, view)) {
            *slot = Some(Route::new(i, stack.local().addr(), view, self.fanout, index));
        }
        slot.as_ref().expect("set above")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_stack::{MemberId, ViewId};

    fn view(members: &[u16]) -> Arc<View> {
        let ids: Vec<MemberId> = members.iter().map(|&i| MemberId::sim(i)).collect();
        View::new(ViewId { counter: 1, creator: ids[0] }, ids).unwrap()
    }

    fn index(n: u16) -> BTreeMap<SocketAddr, usize> {
        (0..n).map(|i| (MemberId::sim(i).addr(), usize::from(i))).collect()
    }

    #[test]
    fn routes_follow_ranks_not_member_indices() {
        // Rank 0 is member 4 here: the tree follows the view's order.
        let v = view(&[4, 0, 1, 2, 3]);
        let of = |i: u16| Route::new(usize::from(i), MemberId::sim(i).addr(), &v, 2, &index(6));
        assert_eq!(of(4).neighbours, vec![Some(0), Some(1)]);
        assert_eq!(of(0).neighbours, vec![Some(4), Some(2), Some(3)]);
        assert_eq!(of(3).neighbours, vec![Some(0)]);
        assert!(of(3).rank == Some(4) && of(3).has_neighbour(0) && !of(3).has_neighbour(4));
        // Not in the view: no place in the tree.
        let outside = of(5);
        assert!(outside.rank.is_none() && outside.neighbours.is_empty());
        // The tag is the view's, whoever computes it.
        assert_eq!(of(4).tag, of(5).tag);
        assert_ne!(of(4).tag, Route::new(4, MemberId::sim(4).addr(), &view(&[4, 0, 1, 2]), 2, &index(6)).tag);
        // An address outside the run is kept as `None`.
        let partial = Route::new(0, MemberId::sim(0).addr(), &view(&[0, 1, 2]), 2, &index(2));
        assert_eq!(partial.neighbours, vec![Some(1), None]);
    }

    #[test]
    fn hops_go_around_lost_members_by_member_index() {
        // Ranks 0..6 are members 4, 0, 1, 2, 3, 5: 4 -> {0, 1}, 0 -> {2, 3}, 1 -> {5}.
        let v = view(&[4, 0, 1, 2, 3, 5]);
        let hops = |i: u16, from: Option<usize>, lost: &[usize]| {
            let (mut scratch, mut out) = (Vec::new(), Vec::new());
            Route::new(usize::from(i), MemberId::sim(i).addr(), &v, 2, &index(6)).hops(from, |m| lost.contains(&m), &mut scratch, &mut out);
            out.sort();
            out
        };
        assert_eq!(hops(4, None, &[]), vec![(Some(0), 0), (Some(1), 0)]);
        // Member 0 (rank 1) lost: its children (members 2, 3) get the copy as from rank 1.
        assert_eq!(hops(4, None, &[0]), vec![(Some(1), 0), (Some(2), 1), (Some(3), 1)]);
        // Forwarding a copy from rank 0 (member 4): on to the children only.
        assert_eq!(hops(0, Some(0), &[]), vec![(Some(2), 1), (Some(3), 1)]);
        // Outside the view: nowhere (the caller sends directly).
        let mut out = Vec::new();
        Route::new(7, MemberId::sim(7).addr(), &v, 2, &index(8)).hops(None, |_| false, &mut Vec::new(), &mut out);
        assert!(out.is_empty());
        // An older incarnation of the sender in the view is routed around like a lost member.
        let twice =
            View::new(ViewId { counter: 1, creator: MemberId::sim(0) }, vec![MemberId::sim(0), MemberId::new(MemberId::sim(1).addr(), 1), MemberId::sim(1)])
                .unwrap();
        let mut out = Vec::new();
        Route::new(1, MemberId::sim(1).addr(), &twice, 1, &index(2)).hops(None, |_| false, &mut Vec::new(), &mut out);
        assert_eq!(out, vec![(Some(0), 1)]);
    }
}
