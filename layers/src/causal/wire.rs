//! CAUSAL's wire header (the layout is drawn in the module essay): a kind
//! byte, and for a causal cast the entries of its vector timestamp that
//! changed since its sender's previous causal cast.
//!
//! An entry is a rank and its *growth*: how much that member's count grew,
//! minus one (an entry that changed grew by at least one). A header with
//! entries has two sections. The ranks travel as a list (count, then each
//! rank as the gap after the previous one) or as a bitmap over the view.
//! The growths then follow in rank order as varints, or once for all (when
//! every entry grew by the same amount, as when members cast in turn), or
//! packed two bits apiece (0, 1, 2, or 3 for "a varint follows the packed
//! bytes"). The kind byte names the two forms; the encoder picks the
//! shortest of each, so a header never exceeds [`max_len`] for the view's
//! size.

use smallvec::{smallvec, SmallVec};
use strata_stack::codec::{varint_len, DecodeResult, Malformed, Reader, Writer, MAX_VARINT_LEN};

/// Message kinds (the first header byte).
pub(super) mod kind {
    /// A causal cast whose timestamp equals its sender's previous causal
    /// cast's, apart from the sender's own entry.
    pub const SAME: u8 = 0x01;
    /// A cast that asked for FIFO order only: no dependencies.
    pub const FIFO: u8 = 0x02;
    /// A point-to-point message: not ordered.
    pub const SEND: u8 = 0x03;
    /// An out-of-band cast: not ordered, not counted.
    pub const OOB_CAST: u8 = 0x04;
    /// An out-of-band send.
    pub const OOB_SEND: u8 = 0x05;

    /// Causal casts with entries: `ENTRIES | ranks form | growths form`.
    pub const ENTRIES: u8 = 0x10;
    /// Ranks as a bitmap over the view (else a list).
    pub const BITMAP: u8 = 0x04;
    /// Growths: a varint each.
    pub const EACH: u8 = 0x00;
    /// Growths: one varint for all.
    pub const ONE: u8 = 0x01;
    /// Growths: two bits each, varints for the large ones after them.
    pub const PACKED: u8 = 0x02;

    // The six forms by name (the encoder composes them from the bits).
    #[cfg(test)]
    pub const LIST: u8 = ENTRIES | EACH;
    #[cfg(test)]
    pub const LIST_ONE: u8 = ENTRIES | ONE;
    #[cfg(test)]
    pub const LIST_PACKED: u8 = ENTRIES | PACKED;
    #[cfg(test)]
    pub const MAP: u8 = ENTRIES | BITMAP | EACH;
    #[cfg(test)]
    pub const MAP_ONE: u8 = ENTRIES | BITMAP | ONE;
    #[cfg(test)]
    pub const MAP_PACKED: u8 = ENTRIES | BITMAP | PACKED;

    /// Whether a kind carries entries.
    pub const fn has_entries(k: u8) -> bool {
        k & !(BITMAP | 0x03) == ENTRIES && k & 0x03 != 0x03
    }

    /// Whether a kind is a cast that counts in its sender's entry.
    pub const fn is_counted_cast(k: u8) -> bool {
        k == SAME || k == FIFO || has_entries(k)
    }
}

/// One changed entry of a timestamp: a rank and that member's count, as an
/// absolute number of its casts delivered (after decoding), or its growth
/// (while encoding).
pub(super) type Entry = (u32, u64);

/// Bytes of the bitmap over a view of `members` members.
const fn bitmap_len(members: usize) -> usize {
    members.div_ceil(8)
}

/// The largest growth a packed code holds; code 3 says a varint follows.
const PACKED_MAX: u64 = 2;

/// The most bytes a causal header takes in a view of at most `members`
/// members: the bitmap form with every other member's entry grown by the
/// most a varint holds, a varint each. The encoder never writes a longer
/// one (it picks the shortest ranks form and the shortest growths form,
/// and these are at most the bitmap and a varint each); every other kind
/// is one byte.
pub const fn max_len(members: usize) -> usize {
    1 + bitmap_len(members) + members.saturating_sub(1) * MAX_VARINT_LEN
}

/// Writes the header of a causal cast by the member of rank `me`, whose
/// delivered counts are `now`, when its previous causal cast carried
/// `last` (both indexed by rank, the same length: the view's size).
/// `changed` is scratch space (so encoding allocates nothing once warm).
pub(super) fn encode_causal(w: &mut Writer, changed: &mut Vec<Entry>, me: usize, now: &[u64], last: &[u64]) {
    debug_assert_eq!(now.len(), last.len(), "both vectors span the view");
    let n = now.len();
    changed.clear();
    for (j, (&a, &b)) in now.iter().zip(last).enumerate() {
        if a != b && j != me {
            debug_assert!(a > b, "a member's delivered counts only grow within a view");
            changed.push((j as u32, a - b - 1));
        }
    }
    let Some(&(_, first_growth)) = changed.first() else {
        w.u8(kind::SAME);
        return;
    };
    let count = changed.len();
    // What each form costs.
    let (mut gaps, mut each, mut packed_large) = (0usize, 0usize, 0usize);
    let mut prev = None;
    let mut one = true;
    for &(j, g) in changed.iter() {
        gaps += varint_len(rank_gap(prev, j));
        prev = Some(j);
        each += varint_len(g);
        if g > PACKED_MAX {
            packed_large += varint_len(g);
        }
        one &= g == first_growth;
    }
    let as_list = varint_len(count as u64) + gaps <= bitmap_len(n);
    let packed = count.div_ceil(4) + packed_large;
    let growths = if one && count > 1 {
        kind::ONE
    } else if packed < each {
        kind::PACKED
    } else {
        kind::EACH
    };
    w.u8(kind::ENTRIES | if as_list { 0 } else { kind::BITMAP } | growths);
    if as_list {
        w.varint(count as u64);
        let mut prev = None;
        for &(j, _) in changed.iter() {
            w.varint(rank_gap(prev, j));
            prev = Some(j);
        }
    } else {
        let mut bitmap: SmallVec<[u8; 32]> = smallvec![0; bitmap_len(n)];
        for &(j, _) in changed.iter() {
            bitmap[j as usize / 8] |= 1 << (j % 8);
        }
        w.bytes(&bitmap);
    }
    match growths {
        kind::ONE => {
            w.varint(first_growth);
        }
        kind::PACKED => {
            for quad in changed.chunks(4) {
                let byte = quad.iter().enumerate().fold(0u8, |b, (i, &(_, g))| b | (g.min(PACKED_MAX + 1) as u8) << (2 * i));
                w.u8(byte);
            }
            for &(_, g) in changed.iter().filter(|e| e.1 > PACKED_MAX) {
                w.varint(g);
            }
        }
        _ => {
            for &(_, g) in changed.iter() {
                w.varint(g);
            }
        }
    }
}

/// The first rank is sent as is, each later one as the gap after the previous.
fn rank_gap(prev: Option<u32>, rank: u32) -> u64 {
    match prev {
        None => u64::from(rank),
        Some(p) => u64::from(rank - p - 1),
    }
}

/// Decodes the entries of a header of kind `k` (one with entries; the kind
/// byte already read) of a cast by the member of rank `sender`, whose
/// previous causal cast carried `row` (indexed by rank, the view's size).
/// Appends the changed entries, with their new absolute values, to `out`
/// (on an error, what it appended is meaningless); changes nothing else.
pub(super) fn decode_entries(r: &mut Reader<'_>, k: u8, sender: usize, row: &[u64], out: &mut Vec<Entry>) -> DecodeResult<()> {
    if !kind::has_entries(k) {
        return Err(Malformed("unknown_kind"));
    }
    let n = row.len();
    let first = out.len();
    let mut take = |rank: u64| -> DecodeResult<()> {
        if rank >= n as u64 {
            return Err(Malformed("rank_out_of_view"));
        }
        if rank as usize == sender {
            // Implicit: a sender's own entry is its cast's position in its stream.
            return Err(Malformed("own_entry"));
        }
        out.push((rank as u32, 0));
        Ok(())
    };
    if k & kind::BITMAP == 0 {
        let count = r.varint_max(n.saturating_sub(1) as u64, "too_many_entries")?;
        let mut next = 0u64; // the least rank the next entry may have
        for _ in 0..count {
            let rank = next.checked_add(r.varint()?).ok_or(Malformed("rank_out_of_view"))?;
            take(rank)?;
            next = rank + 1;
        }
    } else {
        let bitmap = r.bytes(bitmap_len(n))?;
        for (byte, &bits) in bitmap.iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                take((byte * 8) as u64 + u64::from(bits.trailing_zeros()))?;
                bits &= bits - 1;
            }
        }
    }
    let entries = &mut out[first..];
    match k & 0x03 {
        kind::ONE => {
            let g = r.varint()?;
            entries.iter_mut().for_each(|e| e.1 = g);
        }
        kind::PACKED => {
            let codes = r.bytes(entries.len().div_ceil(4))?;
            for (i, e) in entries.iter_mut().enumerate() {
                let code = u64::from(codes[i / 4] >> (2 * (i % 4)) & 0x03);
                e.1 = if code <= PACKED_MAX { code } else { r.varint()? };
            }
        }
        _ => {
            for e in entries.iter_mut() {
                e.1 = r.varint()?;
            }
        }
    }
    for e in entries.iter_mut() {
        e.1 = row[e.0 as usize].checked_add(e.1).and_then(|v| v.checked_add(1)).ok_or(Malformed("entry_overflow"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    fn encode(me: usize, now: &[u64], last: &[u64]) -> Vec<u8> {
        let mut w = Writer::new();
        encode_causal(&mut w, &mut Vec::new(), me, now, last);
        w.as_slice().to_vec()
    }

    fn decode(bytes: &[u8], sender: usize, row: &[u64]) -> DecodeResult<(u8, Vec<Entry>)> {
        let mut r = Reader::new(bytes);
        let k = r.u8()?;
        let mut out = Vec::new();
        if k != kind::SAME {
            decode_entries(&mut r, k, sender, row, &mut out)?;
        }
        r.finish()?;
        Ok((k, out))
    }

    #[test]
    fn the_kinds_are_distinct() {
        let all = [
            kind::SAME,
            kind::FIFO,
            kind::SEND,
            kind::OOB_CAST,
            kind::OOB_SEND,
            kind::LIST,
            kind::LIST_ONE,
            kind::LIST_PACKED,
            kind::MAP,
            kind::MAP_ONE,
            kind::MAP_PACKED,
        ];
        for (i, k) in all.iter().enumerate() {
            assert!(!all[..i].contains(k));
            assert_eq!(kind::has_entries(*k), i >= 5, "{k:#x}");
            assert_eq!(kind::is_counted_cast(*k), !(2..5).contains(&i), "{k:#x}");
        }
        assert!(!kind::has_entries(kind::ENTRIES | 0x03) && !kind::has_entries(0x18) && !kind::has_entries(0x30));
    }

    #[test]
    fn each_form_is_used_where_it_is_shortest() {
        // Three members, member 0 casting after one cast of member 1: a
        // one-byte bitmap and a one-byte growth.
        assert_eq!(encode(0, &[5, 1, 0], &[4, 0, 0]), vec![kind::MAP, 0b010, 0]);
        assert_eq!(encode(0, &[5, 1, 0], &[3, 1, 0]), vec![kind::SAME], "the own entry is never sent");
        // Twenty members, one entry grown by 300: the list is shorter than a
        // 3-byte bitmap.
        let mut now = vec![0u64; 20];
        now[17] = 300;
        assert_eq!(encode(2, &now, &[0; 20]), vec![kind::LIST, 1, 17, 0xab, 0x02]);
        // All nineteen others changed by the same amount (members casting
        // in turn): the bitmap and one growth.
        let now: Vec<u64> = (0..20).map(|j| if j == 2 { 0 } else { 4 }).collect();
        let bytes = encode(2, &now, &[0; 20]);
        assert_eq!(bytes, vec![kind::MAP_ONE, 0b1111_1011, 0xff, 0x0f, 3]);
        let (_, entries) = decode(&bytes, 2, &[0; 20]).unwrap();
        assert_eq!(entries.len(), 19);
        assert!(entries.iter().all(|&(j, v)| j != 2 && v == 4));
        // By small, different amounts: two bits each.
        let now: Vec<u64> = (0..20).map(|j| if j == 2 { 0 } else { 1 + j % 2 }).collect();
        let bytes = encode(2, &now, &[0; 20]);
        assert_eq!((bytes[0], bytes.len()), (kind::MAP_PACKED, 1 + 3 + 5));
        assert_eq!(bytes[4], 0b00_01_01_00, "ranks 0, 1, 3, 4 grew by 1, 2, 2, 1: codes 0, 1, 1, 0");
        assert_eq!(decode(&bytes, 2, &[0; 20]).unwrap().1.len(), 19);
        // Mostly small, one large: packed, the large one after the codes.
        let mut now = now;
        now[19] = 1000;
        let bytes = encode(2, &now, &[0; 20]);
        assert_eq!((bytes[0], bytes.len()), (kind::MAP_PACKED, 1 + 3 + 5 + 2));
        assert_eq!(&bytes[9..], &[0xe7, 0x07], "999 as a varint");
        // A few, sparse: a list of ranks, then one growth or two bits each.
        let mut now = vec![0u64; 20];
        now[5] = 1;
        now[9] = 1;
        assert_eq!(encode(0, &now, &[0; 20]), vec![kind::LIST_ONE, 2, 5, 3, 0]);
        now[9] = 2;
        assert_eq!(encode(0, &now, &[0; 20]), vec![kind::LIST_PACKED, 2, 5, 3, 0b0100]);
        now[9] = 200;
        assert_eq!(encode(0, &now, &[0; 20]), vec![kind::LIST, 2, 5, 3, 0, 0xc7, 0x01]);
    }

    #[test]
    fn hostile_entries_are_refused() {
        let row = [0u64, 7, 1];
        assert_eq!(decode(&[kind::LIST, 3, 0, 0, 0, 0, 0, 0], 0, &row), Err(Malformed("too_many_entries")));
        assert_eq!(decode(&[kind::LIST, 1, 3, 0], 0, &row), Err(Malformed("rank_out_of_view")));
        assert_eq!(decode(&[kind::LIST, 2, 2, 0, 0, 0], 0, &row), Err(Malformed("rank_out_of_view")), "ranks strictly increase");
        assert_eq!(decode(&[kind::LIST, 1, 0, 0], 0, &row), Err(Malformed("own_entry")));
        assert_eq!(decode(&[kind::LIST, 1, 2, 0], 0, &[0, 7, u64::MAX]), Err(Malformed("entry_overflow")));
        assert_eq!(decode(&[kind::LIST, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0], 0, &row), Err(Malformed("rank_out_of_view")));
        assert_eq!(decode(&[kind::LIST, 1, 1], 0, &row), Err(Malformed("truncated")));
        assert_eq!(decode(&[kind::MAP, 0b1000, 0], 0, &row), Err(Malformed("rank_out_of_view")));
        assert_eq!(decode(&[kind::MAP, 0b001, 0], 0, &row), Err(Malformed("own_entry")));
        assert_eq!(decode(&[kind::MAP], 0, &row), Err(Malformed("truncated")));
        assert_eq!(decode(&[kind::MAP, 0b010, 4], 0, &row), Ok((kind::MAP, vec![(1, 12)])));
        assert_eq!(decode(&[kind::LIST_ONE, 2, 1, 0], 0, &row), Err(Malformed("truncated")), "the common growth is missing");
        assert_eq!(decode(&[kind::MAP_ONE, 0b110, 0], 0, &[0, 1, u64::MAX]), Err(Malformed("entry_overflow")));
        assert_eq!(decode(&[kind::MAP_ONE, 0b110, 1], 0, &row), Ok((kind::MAP_ONE, vec![(1, 9), (2, 3)])));
        assert_eq!(decode(&[kind::MAP_PACKED, 0b110], 0, &row), Err(Malformed("truncated")), "the codes are missing");
        assert_eq!(decode(&[kind::MAP_PACKED, 0b110, 0b1111, 0xc8, 0x01], 0, &row), Err(Malformed("truncated")), "a large growth is missing");
        assert_eq!(decode(&[kind::MAP_PACKED, 0b110, 0b1110, 0xc8, 0x01], 0, &row), Ok((kind::MAP_PACKED, vec![(1, 10), (2, 202)])));
        assert_eq!(decode(&[kind::ENTRIES | 0x03, 0], 0, &row), Err(Malformed("unknown_kind")));
    }

    quickcheck! {
        fn entries_roundtrip_within_the_bound(me: u8, rows: Vec<(u64, u16)>) -> bool {
            let n = rows.len().clamp(1, 300);
            let me = usize::from(me) % n;
            let last: Vec<u64> = (0..n).map(|j| rows.get(j).map_or(0, |r| r.0 >> 2)).collect();
            // Growths of 0 (unchanged), 1 (often: one growth for all), 2 or 3
            // (packed), or more (escapes, varints).
            let grow = |r: &(u64, u16)| match r.1 % 8 {
                0 | 1 => 0,
                2..=4 => 1,
                5 => 2,
                6 => 3,
                _ => u64::from(r.1),
            };
            let now: Vec<u64> = (0..n).map(|j| last[j] + rows.get(j).map_or(0, grow)).collect();
            let bytes = encode(me, &now, &last);
            let Ok((_, entries)) = decode(&bytes, me, &last) else { return false };
            let mut rebuilt = last.clone();
            for (j, v) in entries {
                rebuilt[j as usize] = v;
            }
            rebuilt[me] = now[me];
            bytes.len() <= max_len(n) && rebuilt == now
        }

        fn random_entries_never_panic(k: u8, sender: u8, row: Vec<u64>, bytes: Vec<u8>) -> bool {
            let mut out = Vec::new();
            let sender = usize::from(sender) % row.len().max(1);
            let _ = decode_entries(&mut Reader::new(&bytes), k, sender, &row, &mut out);
            out.len() < row.len().max(1)
        }
    }
}
