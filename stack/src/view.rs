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
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    id: ViewId,
    members: Vec<MemberId>,
    primary: bool,
}

impl View {
    /// A primary view; `members` must be non-empty and free of duplicates (checked).
    pub fn new(id: ViewId, members: Vec<MemberId>) -> Result<Arc<View>, Malformed> {
        View::with_primary(id, members, true)
    }

    /// A view that is primary or not: a membership layer marks the views of
    /// a minority partition non-primary.
    pub fn with_primary(id: ViewId, members: Vec<MemberId>, primary: bool) -> Result<Arc<View>, Malformed> {
        if members.is_empty() {
            return Err(Malformed("empty_view"));
        }
        for (i, m) in members.iter().enumerate() {
            if members[..i].contains(m) {
                return Err(Malformed("duplicate_member"));
            }
        }
        Ok(Arc::new(View { id, members, primary }))
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

    /// The rank of `m`, if it is a member.
    pub fn rank_of(&self, m: &MemberId) -> Option<usize> {
        self.members.iter().position(|x| x == m)
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
    fn initial_view_is_sorted_and_rejects_empty() {
        let v = View::initial(vec![MemberId::sim(3), MemberId::sim(1), MemberId::sim(2), MemberId::sim(1)]).unwrap();
        assert_eq!(v.members(), &[MemberId::sim(1), MemberId::sim(2), MemberId::sim(3)]);
        assert_eq!(v.rank_of(&MemberId::sim(3)), Some(2));
        assert_eq!(v.coordinator(), MemberId::sim(1));
        assert!(View::initial(vec![]).is_err());
    }
}
