//! The spanning tree a TCP-tree transport routes a group's casts along: a
//! k-ary tree over the view's members by rank, rooted at rank 0 (the
//! coordinator). Rank `r` has parent `(r - 1) / k` and children
//! `k r + 1 ..= k r + k`.
//!
//! One tree per view, whoever sends: a cast leaves its sender on every tree
//! edge it has (to its parent and its children), and each member forwards it
//! on every edge but the one it came in on. So a member keeps connections to
//! at most `k + 1` others however many members cast, and a cast crosses each
//! edge once. Trees rooted at each sender would reach everyone in fewer
//! hops (at most the depth, rather than twice the depth) but would, across
//! senders, connect every member to almost every other, which is what a tree
//! transport exists to avoid.
//!
//! Members route by their own view. While a view change is under way two
//! members may hold different views, so forwarded casts carry the
//! [`view_tag`] of the sender's tree and a member forwards only casts whose
//! tag is its own: trees of different views never combine into a cycle.
//! Whatever is not forwarded then, the reliability layer repairs.
//!
//! ## Routing around a lost member
//! A tree is only rebuilt when a view is installed, and installing a view
//! needs the old view's casts (heartbeats, the reliability layer's status)
//! to reach the members that remain. So a member that cannot reach a tree
//! neighbour (its connection was lost or refused, or stalled) does that
//! neighbour's forwarding itself: the copy goes to each of the lost
//! member's other neighbours, as if it came from the lost member, and on
//! past any of those that are lost too ([`next_hops`]). Every copy carries
//! the rank it logically came from, and a member forwards to its neighbours
//! but that one. Each reachable member still gets each cast once, and a
//! member talks to at most the neighbours of the neighbours it lost.

use std::net::SocketAddr;
use std::ops::Range;

/// Where one member sits in the tree of a view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// This member's rank.
    pub rank: usize,
    /// Its parent's rank (none for the root).
    pub parent: Option<usize>,
    /// Its children's ranks.
    pub children: Range<usize>,
    /// How many edges lie between it and the root.
    pub level: usize,
    /// The depth of the whole tree (edges from the root to the deepest member).
    pub depth: usize,
}

/// The position of rank `rank` in the `k`-ary tree of `n` members (`k` is
/// taken as at least 1; `rank` must be below `n`).
pub fn position(rank: usize, n: usize, k: usize) -> Position {
    let k = k.max(1);
    let parent = if rank == 0 { None } else { Some((rank - 1) / k) };
    let first = rank.saturating_mul(k).saturating_add(1).min(n);
    let last = rank.saturating_mul(k).saturating_add(k).saturating_add(1).min(n);
    Position { rank, parent, children: first..last, level: level(rank, k), depth: n.checked_sub(1).map_or(0, |last| level(last, k)) }
}

/// Edges between rank `rank` and the root.
fn level(mut rank: usize, k: usize) -> usize {
    let mut level = 0;
    while rank > 0 {
        rank = (rank - 1) / k;
        level += 1;
    }
    level
}

/// The ranks this member exchanges casts with: its parent, then its children.
pub fn neighbours(rank: usize, n: usize, k: usize) -> impl Iterator<Item = usize> {
    let p = position(rank, n, k);
    p.parent.into_iter().chain(p.children)
}

/// Where a copy goes next from rank `me`, which got it from rank `from`
/// (`None`: `me` is its sender): to each tree neighbour but `from`, and,
/// for a neighbour that is `unreachable`, to that neighbour's own next hops
/// instead (recursively). Appends `(to, as_from)` pairs to `out`: send the
/// copy to rank `to` marked as coming from rank `as_from`.
pub fn next_hops(me: usize, from: Option<usize>, n: usize, k: usize, unreachable: impl Fn(usize) -> bool, out: &mut Vec<(usize, usize)>) {
    // (member whose forwarding is being done, where its copy came from);
    // on the stack unless many lost members are routed around at once.
    let mut work: smallvec::SmallVec<[(usize, Option<usize>); 8]> = smallvec::smallvec![(me, from)];
    while let Some((at, came_from)) = work.pop() {
        for nb in neighbours(at, n, k).filter(|nb| Some(*nb) != came_from) {
            if nb != me && unreachable(nb) {
                work.push((nb, Some(at)));
            } else {
                out.push((nb, at));
            }
        }
    }
}

/// A 64-bit tag naming a view's member list (FNV-1a over the addresses in
/// rank order): two members forward each other's casts only under equal tags.
pub fn view_tag(members: &[SocketAddr]) -> u64 {
    // 18 bytes per member: IPv6 (or IPv4-mapped) address and port.
    let mut bytes = Vec::with_capacity(members.len() * 18);
    for a in members {
        let ip = match a.ip() {
            std::net::IpAddr::V4(ip) => ip.to_ipv6_mapped(),
            std::net::IpAddr::V6(ip) => ip,
        };
        bytes.extend_from_slice(&ip.octets());
        bytes.extend_from_slice(&a.port().to_be_bytes());
    }
    strata_stack::codec::fnv1a64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    #[test]
    fn a_binary_tree_of_six_has_depth_two() {
        assert_eq!(position(0, 6, 2), Position { rank: 0, parent: None, children: 1..3, level: 0, depth: 2 });
        assert_eq!(position(2, 6, 2), Position { rank: 2, parent: Some(0), children: 5..6, level: 1, depth: 2 });
        assert_eq!(position(5, 6, 2), Position { rank: 5, parent: Some(2), children: 6..6, level: 2, depth: 2 });
        assert_eq!(neighbours(1, 6, 2).collect::<Vec<_>>(), vec![0, 3, 4]);
    }

    #[test]
    fn a_lost_neighbour_is_routed_around() {
        // 0 - {1, 2}; 1 - {3, 4}; 2 - {5}
        let hops = |me, from, lost: &[usize]| {
            let mut out = Vec::new();
            next_hops(me, from, 6, 2, |r| lost.contains(&r), &mut out);
            out.sort();
            out
        };
        assert_eq!(hops(0, None, &[]), vec![(1, 0), (2, 0)]);
        assert_eq!(hops(0, None, &[1]), vec![(2, 0), (3, 1), (4, 1)]);
        assert_eq!(hops(3, None, &[1]), vec![(0, 1), (4, 1)]);
        assert_eq!(hops(3, None, &[1, 0]), vec![(2, 0), (4, 1)]);
        assert_eq!(hops(4, Some(1), &[]), vec![]);
    }

    #[test]
    fn a_group_of_one_is_a_root_alone() {
        assert_eq!(position(0, 1, 3), Position { rank: 0, parent: None, children: 1..1, level: 0, depth: 0 });
    }

    quickcheck! {
        // Parent and child links agree, every member but the root has a
        // parent, and flooding from any member reaches every other once.
        fn the_tree_spans_the_view(n: u8, k: u8, from: u8) -> bool {
            let n = usize::from(n % 40) + 1;
            let k = usize::from(k % 5) + 1;
            let from = usize::from(from) % n;
            for r in 0..n {
                let p = position(r, n, k);
                if p.children.clone().any(|c| position(c, n, k).parent != Some(r)) || (r > 0) != p.parent.is_some() || p.level > p.depth {
                    return false;
                }
            }
            let mut reached = vec![0u32; n];
            let mut stack = vec![(from, usize::MAX)];
            reached[from] = 1;
            while let Some((at, came_from)) = stack.pop() {
                for next in neighbours(at, n, k).filter(|x| *x != came_from) {
                    reached[next] += 1;
                    stack.push((next, at));
                }
            }
            reached.iter().all(|c| *c == 1)
        }

        // With any set of lost members (never the sender), flooding by
        // `next_hops` reaches every member that is not lost exactly once.
        fn routing_around_lost_members_reaches_the_rest_once(n: u8, k: u8, from: u8, lost: Vec<u8>) -> bool {
            let n = usize::from(n % 40) + 1;
            let k = usize::from(k % 5) + 1;
            let from = usize::from(from) % n;
            let lost: Vec<usize> = lost.into_iter().map(|r| usize::from(r) % n).filter(|r| *r != from).collect();
            let mut reached = vec![0u32; n];
            reached[from] = 1;
            let mut work = vec![(from, None)];
            let mut hops = Vec::new();
            while let Some((at, came_from)) = work.pop() {
                hops.clear();
                next_hops(at, came_from, n, k, |r| lost.contains(&r), &mut hops);
                for &(to, as_from) in &hops {
                    reached[to] += 1;
                    work.push((to, Some(as_from)));
                }
            }
            (0..n).all(|r| reached[r] == u32::from(!lost.contains(&r)))
        }
    }
}
