//! Members and views.

use crate::codec::{DecodeResult, Malformed, Reader, Writer};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// A process in a group: the address it receives on plus an incarnation that
/// tells a restarted process from its earlier self.
///
/// It displays as its address alone (`127.0.0.1:7001`, `[::1]:7001`); the
/// incarnation is part of its identity but is logged separately.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberId {
    addr: SocketAddr,
    incarnation: u64,
}

impl MemberId {
    /// The most bytes [`MemberId::encode`] writes.
    pub const MAX_ENCODED_LEN: usize = 1 + 16 + 2 + crate::codec::MAX_VARINT_LEN;
    /// The fewest bytes [`MemberId::encode`] writes (IPv4, incarnation below 128).
    pub const MIN_ENCODED_LEN: usize = 1 + 4 + 2 + 1;

    /// A member at `addr` in its `incarnation`.
    pub const fn new(addr: SocketAddr, incarnation: u64) -> Self {
        MemberId { addr, incarnation }
    }

    /// A member for tests and the simulator: `10.0.<n/256>.<n%256>:7000`, incarnation 0.
    pub fn sim(n: u16) -> Self {
        let ip = Ipv4Addr::new(10, 0, (n >> 8) as u8, n as u8);
        MemberId::new(SocketAddr::new(IpAddr::V4(ip), 7000), 0)
    }

    /// Where it receives datagrams.
    pub const fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Which start of the process at that address this is.
    pub const fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Appends the wire form: family tag, address, port, incarnation (varint).
    pub fn encode(&self, w: &mut Writer) {
        match self.addr.ip() {
            IpAddr::V4(ip) => {
                w.u8(4).bytes(&ip.octets());
            }
            IpAddr::V6(ip) => {
                w.u8(6).bytes(&ip.octets());
            }
        }
        w.u16(self.addr.port()).varint(self.incarnation);
    }

    /// Reads the wire form written by [`MemberId::encode`].
    pub fn decode(r: &mut Reader<'_>) -> DecodeResult<Self> {
        let ip = match r.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
            _ => return Err(Malformed("bad_address_family")),
        };
        let port = r.u16()?;
        let incarnation = r.varint()?;
        Ok(MemberId::new(SocketAddr::new(ip, port), incarnation))
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.addr, self.incarnation)
    }
}

/// Names a view. Ids are totally ordered: by counter, then by the member that
/// created the view (so concurrent proposals in a partition never compare equal).
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct ViewId {
    /// Grows by at least one with every view a group installs.
    pub counter: u64,
    /// The member that made the view (its coordinator).
    pub creator: MemberId,
}

impl fmt::Display for ViewId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.counter, self.creator)
    }
}

/// A group's membership at one moment: an id and the members in rank order
/// (rank 0 is the coordinator).
///
/// [`View::rank_of`] is what layers call per message (every arriving
/// message names its sender by id, and layers keep their state by rank), so
/// a view carries an index built once, when it is made: a lookup costs one
/// multiplication, a probe or two and one comparison of ids, in a view of 3
/// as of 300.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ViewFields", into = "ViewFields")]
pub struct View {
    id: ViewId,
    members: Vec<MemberId>,
    primary: bool,
    index: RankIndex,
}

/// What a view is made of, as it is (de)serialized; deserializing checks
/// it as [`View::with_primary`] does and builds the index.
#[derive(Clone, Serialize, Deserialize)]
struct ViewFields {
    id: ViewId,
    members: Vec<MemberId>,
    primary: bool,
}

impl TryFrom<ViewFields> for View {
    type Error = &'static str;
    fn try_from(f: ViewFields) -> Result<View, &'static str> {
        View::build(f.id, f.members, f.primary).map_err(|Malformed(reason)| reason)
    }
}

impl From<View> for ViewFields {
    fn from(v: View) -> ViewFields {
        ViewFields { id: v.id, members: v.members, primary: v.primary }
    }
}

/// An open-addressed table from member to rank. Each id is folded into one
/// 64-bit key; keys may collide, ids decide. No seeded hasher is involved
/// and nothing iterates the table, so no order reaches the wire.
#[derive(Clone, PartialEq, Eq, Default)]
struct RankIndex {
    /// Rank + 1, or 0 for an empty slot. The length is a power of two at
    /// least twice the number of members.
    slots: Vec<u32>,
    /// `64 - log2(slots.len())`: the top bits of the mixed key pick the slot.
    shift: u32,
}

/// Folds a member id into 64 bits (not unique: a lookup compares ids too).
fn rank_key(m: &MemberId) -> u64 {
    let addr = match m.addr {
        SocketAddr::V4(a) => u64::from(a.ip().to_bits()),
        SocketAddr::V6(a) => {
            let bits = a.ip().to_bits();
            (bits as u64) ^ ((bits >> 64) as u64).rotate_left(17)
        }
    };
    (addr << 16 | u64::from(m.addr.port())) ^ m.incarnation.rotate_left(29)
}

/// Spreads a key over a table of `64 - shift` bits (Fibonacci hashing).
fn rank_slot(key: u64, shift: u32) -> usize {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> shift) as usize
}

impl RankIndex {
    /// The index of `members`, or the first member listed twice.
    fn new(members: &[MemberId]) -> Result<RankIndex, MemberId> {
        let len = (members.len() * 2).next_power_of_two().max(2);
        let shift = 64 - len.trailing_zeros();
        let mut slots = vec![0u32; len];
        for (rank, m) in members.iter().enumerate() {
            let mut i = rank_slot(rank_key(m), shift);
            while slots[i] != 0 {
                if members[slots[i] as usize - 1] == *m {
                    return Err(*m);
                }
                i = (i + 1) & (len - 1);
            }
            slots[i] = rank as u32 + 1;
        }
        Ok(RankIndex { slots, shift })
    }

    #[inline]
    fn get(&self, members: &[MemberId], m: &MemberId) -> Option<usize> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut i = rank_slot(rank_key(m), self.shift);
        loop {
            let rank = match self.slots[i] {
                0 => return None,
                s => s as usize - 1,
            };
            if members[rank] == *m {
                return Some(rank);
            }
            i = (i + 1) & mask;
        }
    }
}

impl View {
    /// A primary view; `members` must be non-empty and free of duplicates (checked).
    pub fn new(id: ViewId, members: Vec<MemberId>) -> Result<Arc<View>, Malformed> {
        View::with_primary(id, members, true)
    }

    /// A view that is primary or not: a membership layer marks the views of
    /// a minority partition non-primary.
    pub fn with_primary(id: ViewId, members: Vec<MemberId>, primary: bool) -> Result<Arc<View>, Malformed> {
        View::build(id, members, primary).map(Arc::new)
    }

    fn build(id: ViewId, members: Vec<MemberId>, primary: bool) -> Result<View, Malformed> {
        if members.is_empty() {
            return Err(Malformed("empty_view"));
        }
        let index = RankIndex::new(&members).map_err(|_| Malformed("duplicate_member"))?;
        Ok(View { id, members, primary, index })
    }

    /// The first view of a group whose membership is fixed in advance: the
    /// members sorted, so that every member computes the same ranks; counter 0.
    pub fn initial(mut members: Vec<MemberId>) -> Result<Arc<View>, Malformed> {
        members.sort();
        members.dedup();
        let creator = *members.first().ok_or(Malformed("empty_view"))?;
        View::new(ViewId { counter: 0, creator }, members)
    }

    /// Its id.
    pub fn id(&self) -> ViewId {
        self.id
    }

    /// Members in rank order.
    pub fn members(&self) -> &[MemberId] {
        &self.members
    }

    /// Whether the view belongs to the primary partition: the one partition
    /// that may go on delivering when the network splits (see VSYNC).
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: views are never empty. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The rank of `m`, if it is a member (a lookup in the view's index).
    #[inline]
    pub fn rank_of(&self, m: &MemberId) -> Option<usize> {
        self.index.get(&self.members, m)
    }

    /// Whether `m` is a member.
    pub fn contains(&self, m: &MemberId) -> bool {
        self.rank_of(m).is_some()
    }

    /// The coordinator (rank 0).
    pub fn coordinator(&self) -> MemberId {
        self.members[0]
    }
}

impl fmt::Debug for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "View({} {:?}{})", self.id, self.members, if self.primary { "" } else { " non-primary" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_roundtrip_and_display_as_addresses() {
        let a = MemberId::new("127.0.0.1:7001".parse().unwrap(), 1_700_000_000_000_000);
        let b = MemberId::new("[::1]:9".parse().unwrap(), 0);
        for m in [a, b] {
            let mut w = Writer::new();
            m.encode(&mut w);
            assert!(w.len() <= MemberId::MAX_ENCODED_LEN);
            let mut r = Reader::new(w.as_slice());
            assert_eq!(MemberId::decode(&mut r), Ok(m));
            assert_eq!(r.remaining(), 0);
        }
        assert_eq!(a.to_string(), "127.0.0.1:7001");
        assert_eq!(b.to_string(), "[::1]:9");
        assert!(MemberId::decode(&mut Reader::new(&[5, 1, 2])).is_err());
    }

    #[test]
    fn every_member_is_found_at_its_rank_and_strangers_are_not() {
        for n in [1u16, 2, 3, 8, 64, 300] {
            let members: Vec<MemberId> = (0..n).map(MemberId::sim).collect();
            let v = View::new(ViewId { counter: 1, creator: members[0] }, members.clone()).unwrap();
            for (r, m) in members.iter().enumerate() {
                assert_eq!(v.rank_of(m), Some(r));
            }
            assert_eq!(v.rank_of(&MemberId::sim(n)), None);
            let reincarnated = MemberId::new(members[0].addr(), 1);
            assert!(!v.contains(&reincarnated), "another incarnation is another member");
        }
    }

    #[test]
    fn duplicates_are_refused_and_a_view_survives_serde_checked() {
        let (a, b) = (MemberId::sim(1), MemberId::sim(2));
        let id = ViewId { counter: 3, creator: a };
        assert_eq!(View::new(id, vec![a, b, a]).unwrap_err(), Malformed("duplicate_member"));
        let v = View::with_primary(id, vec![b, a], false).unwrap();
        let bytes = crate::codec::encode_control(&*v);
        let back: View = crate::codec::decode_control(&bytes, 1 << 10).unwrap();
        assert_eq!(back, *v);
        assert_eq!(back.rank_of(&a), Some(1), "the index is rebuilt");
        let dup = crate::codec::encode_control(&ViewFields { id, members: vec![a, a], primary: true });
        assert!(crate::codec::decode_control::<View>(&dup, 1 << 10).is_err(), "a decoded view is checked like a built one");
    }

    quickcheck::quickcheck! {
        fn lookups_agree_with_a_scan(addrs: Vec<(u32, u16, u64)>, probe: (u32, u16, u64), v6: bool) -> bool {
            let make = |(ip, port, inc): (u32, u16, u64)| {
                let ip = if v6 { IpAddr::from(Ipv6Addr::from(u128::from(ip) << 40 | 7)) } else { IpAddr::from(ip.to_be_bytes()) };
                MemberId::new(SocketAddr::new(ip, port), inc % 3)
            };
            let mut members: Vec<MemberId> = addrs.into_iter().map(make).collect();
            members.sort();
            members.dedup();
            let probe = make(probe);
            let Some(&creator) = members.first() else { return true };
            let v = View::new(ViewId { counter: 0, creator }, members.clone()).unwrap();
            members.iter().enumerate().all(|(r, m)| v.rank_of(m) == Some(r)) && v.rank_of(&probe) == members.iter().position(|m| *m == probe)
        }
    }

    #[test]
    fn initial_view_is_sorted_and_rejects_empty() {
        let v = View::initial(vec![MemberId::sim(3), MemberId::sim(1), MemberId::sim(2), MemberId::sim(1)]).unwrap();
        assert_eq!(v.members(), &[MemberId::sim(1), MemberId::sim(2), MemberId::sim(3)]);
        assert_eq!(v.rank_of(&MemberId::sim(3)), Some(2));
        assert_eq!(v.coordinator(), MemberId::sim(1));
        assert!(View::initial(vec![]).is_err());
    }
}
