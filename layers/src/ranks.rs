//! Member-to-rank lookup for the per-message paths of NAK, CAUSAL, TOTAL
//! and VSYNC: every arriving message names its sender by [`MemberId`] and
//! the layers index their state by rank.
//!
//! A general-purpose hash map hashes the whole id (the socket address
//! field by field, then the incarnation) and a linear scan compares whole
//! ids; both cost tens of nanoseconds per message in a view of 64. This
//! index folds each id into one 64-bit key once, when the view is
//! installed, and finds a rank with one multiplication, a probe or two in
//! an open-addressed table at most half full, and one comparison of the
//! whole id (keys may collide; ids decide). No seeded hasher is involved,
//! and nothing iterates the table, so no order reaches the wire.

use std::net::SocketAddr;
use strata_stack::MemberId;

/// The rank of each member of one view.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ranks {
    /// The members in rank order.
    members: Vec<MemberId>,
    /// Open-addressed slots: rank + 1, or 0 for an empty slot. The length is
    /// a power of two at least twice the number of members.
    slots: Vec<u32>,
    /// `64 - log2(slots.len())`: the top bits of the mixed key pick the slot.
    shift: u32,
}

/// Folds a member id into 64 bits (not unique: a lookup compares ids too).
fn key(m: &MemberId) -> u64 {
    let addr = match m.addr() {
        SocketAddr::V4(a) => u64::from(a.ip().to_bits()),
        SocketAddr::V6(a) => {
            let bits = a.ip().to_bits();
            (bits as u64) ^ ((bits >> 64) as u64).rotate_left(17)
        }
    };
    (addr << 16 | u64::from(m.addr().port())) ^ m.incarnation().rotate_left(29)
}

/// Spreads a key over the table (Fibonacci hashing).
fn slot_of(key: u64, shift: u32) -> usize {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> shift) as usize
}

impl Ranks {
    /// The index of `members`, in rank order (distinct, as a view's are).
    pub(crate) fn new(members: &[MemberId]) -> Self {
        let len = (members.len() * 2).next_power_of_two().max(2);
        let shift = 64 - len.trailing_zeros();
        let mut slots = vec![0u32; len];
        for (rank, m) in members.iter().enumerate() {
            let mut i = slot_of(key(m), shift);
            while slots[i] != 0 {
                i = (i + 1) & (len - 1);
            }
            slots[i] = rank as u32 + 1;
        }
        Ranks { members: members.to_vec(), slots, shift }
    }

    /// The rank of `m`, if it is a member.
    #[inline]
    pub(crate) fn get(&self, m: &MemberId) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = slot_of(key(m), self.shift);
        loop {
            let rank = match self.slots[i] {
                0 => return None,
                s => s as usize - 1,
            };
            if self.members[rank] == *m {
                return Some(rank);
            }
            i = (i + 1) & mask;
        }
    }

    /// Whether `m` is a member.
    pub(crate) fn contains(&self, m: &MemberId) -> bool {
        self.get(m).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;
    use std::net::IpAddr;

    #[test]
    fn every_member_is_found_at_its_rank_and_strangers_are_not() {
        for n in [1u16, 2, 3, 8, 64, 300] {
            let members: Vec<MemberId> = (0..n).map(MemberId::sim).collect();
            let ranks = Ranks::new(&members);
            for (r, m) in members.iter().enumerate() {
                assert_eq!(ranks.get(m), Some(r));
            }
            assert_eq!(ranks.get(&MemberId::sim(n)), None);
            let reincarnated = MemberId::new(members[0].addr(), 1);
            assert!(!ranks.contains(&reincarnated), "another incarnation is another member");
        }
        assert_eq!(Ranks::default().get(&MemberId::sim(0)), None);
    }

    quickcheck! {
        fn lookups_agree_with_a_scan(addrs: Vec<(u32, u16, u64)>, probe: (u32, u16, u64), v6: bool) -> bool {
            let make = |(ip, port, inc): (u32, u16, u64)| {
                let ip = if v6 { IpAddr::from(std::net::Ipv6Addr::from(u128::from(ip) << 40 | 7)) } else { IpAddr::from(ip.to_be_bytes()) };
                MemberId::new(SocketAddr::new(ip, port), inc % 3)
            };
            let mut members: Vec<MemberId> = addrs.into_iter().map(make).collect();
            members.sort();
            members.dedup();
            let ranks = Ranks::new(&members);
            let probe = make(probe);
            members.iter().enumerate().all(|(r, m)| ranks.get(m) == Some(r)) && ranks.get(&probe) == members.iter().position(|m| *m == probe)
        }
    }
}
