//! TOKEN's wire header (the layouts are drawn in the module essay): one kind
//! byte, then, for the kinds that take part in the ordering protocol, the
//! view tag and the kind's fields.

use strata_stack::codec::{DecodeResult, Malformed, Reader, Writer, MAX_VARINT_LEN};

/// Message kinds (the first header byte). The common case comes first.
pub(super) mod kind {
    /// A cast stamped with its global sequence number.
    pub const DATA: u8 = 1;
    /// A cast that asked for FIFO order only: not stamped.
    pub const UNORDERED: u8 = 2;
    /// A token pass.
    pub const PASS: u8 = 3;
    /// A token pass whose sender still has casts queued (it wants the token back).
    pub const PASS_WANTING: u8 = 4;
    /// A member that is not the holder has casts queued.
    pub const WANT: u8 = 5;
    /// A point-to-point message: passes unordered.
    pub const SEND: u8 = 6;
    /// An out-of-band cast: passes unordered, at once.
    pub const OOB: u8 = 7;
}

/// Bytes of a view tag.
pub(super) const TAG_LEN: usize = 4;

/// The most header bytes a message carrying a payload gets (a stamped cast).
/// Passes and wants are longer at most but carry no payload, so they always
/// fit where a payload-carrying message fits.
pub(super) const MAX_DATA_HEADER: usize = 1 + TAG_LEN + MAX_VARINT_LEN;

/// A token pass.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) struct Pass {
    /// How many passes the view saw before this one.
    pub round: u64,
    /// The rank of the new holder (the layer checks it against the view,
    /// once it knows the pass belongs to the current one).
    pub to: u64,
    /// The next global sequence number: the new holder stamps from here.
    pub next: u64,
    /// The old holder still has casts queued and wants the token back.
    pub still_wants: bool,
}

/// A decoded header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Header {
    /// A stamped cast: the payload follows.
    Data { tag: u32, seq: u64 },
    /// An unordered (FIFO-only) cast: the payload follows.
    Unordered { tag: u32 },
    /// A token pass (no payload).
    Pass { tag: u32, pass: Pass },
    /// A request for the token, made after its sender processed `seen` passes (no payload).
    Want { tag: u32, seen: u64 },
    /// A point-to-point message: the payload follows.
    Send,
    /// An out-of-band cast: the payload follows.
    Oob,
}

impl Header {
    /// Appends the wire form.
    pub fn encode(&self, w: &mut Writer) {
        match *self {
            Header::Data { tag, seq } => {
                w.u8(kind::DATA).u32(tag).varint(seq);
            }
            Header::Unordered { tag } => {
                w.u8(kind::UNORDERED).u32(tag);
            }
            Header::Pass { tag, pass } => {
                let k = if pass.still_wants { kind::PASS_WANTING } else { kind::PASS };
                w.u8(k).u32(tag).varint(pass.round).varint(pass.to).varint(pass.next);
            }
            Header::Want { tag, seen } => {
                w.u8(kind::WANT).u32(tag).varint(seen);
            }
            Header::Send => {
                w.u8(kind::SEND);
            }
            Header::Oob => {
                w.u8(kind::OOB);
            }
        }
    }

    /// Reads a header.
    pub fn decode(r: &mut Reader<'_>) -> DecodeResult<Header> {
        let k = r.u8().map_err(|_| Malformed("empty"))?;
        Ok(match k {
            kind::DATA => Header::Data { tag: r.u32()?, seq: r.varint()? },
            kind::UNORDERED => Header::Unordered { tag: r.u32()? },
            kind::PASS | kind::PASS_WANTING => {
                let (tag, round, to, next) = (r.u32()?, r.varint()?, r.varint()?, r.varint()?);
                Header::Pass { tag, pass: Pass { round, to, next, still_wants: k == kind::PASS_WANTING } }
            }
            kind::WANT => Header::Want { tag: r.u32()?, seen: r.varint()? },
            kind::SEND => Header::Send,
            kind::OOB => Header::Oob,
            _ => return Err(Malformed("unknown_kind")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;
    use strata_stack::codec::varint_len;

    fn roundtrip(h: Header) -> (usize, DecodeResult<Header>) {
        let mut w = Writer::new();
        h.encode(&mut w);
        let mut r = Reader::new(w.as_slice());
        let back = Header::decode(&mut r);
        assert_eq!(r.remaining(), 0, "{h:?} left bytes behind");
        (w.len(), back)
    }

    #[test]
    fn headers_are_small_and_roundtrip() {
        let tag = 0xdead_beef;
        let cases = [
            (Header::Data { tag, seq: 0 }, 6),
            (Header::Data { tag, seq: 127 }, 6),
            (Header::Data { tag, seq: 128 }, 7),
            (Header::Data { tag, seq: u64::MAX }, MAX_DATA_HEADER),
            (Header::Unordered { tag }, 5),
            (Header::Pass { tag, pass: Pass { round: 3, to: 2, next: 40, still_wants: false } }, 8),
            (Header::Pass { tag, pass: Pass { round: 300, to: 1, next: 20_000, still_wants: true } }, 1 + 4 + 2 + 1 + 3),
            (Header::Want { tag, seen: 5 }, 6),
            (Header::Send, 1),
            (Header::Oob, 1),
        ];
        for (h, len) in cases {
            assert_eq!(roundtrip(h), (len, Ok(h)), "{h:?}");
        }
    }

    quickcheck! {
        fn decoding_never_panics_and_reencodes_what_it_read(bytes: Vec<u8>) -> bool {
            let mut r = Reader::new(&bytes);
            match Header::decode(&mut r) {
                Ok(h) => {
                    let mut w = Writer::new();
                    h.encode(&mut w);
                    // A varint may be read in a longer form than it is written.
                    w.len() <= r.consumed() && Header::decode(&mut Reader::new(w.as_slice())) == Ok(h)
                }
                Err(_) => true,
            }
        }

        fn data_headers_take_five_bytes_plus_the_varint(seq: u64) -> bool {
            roundtrip(Header::Data { tag: 7, seq }).0 == 1 + TAG_LEN + varint_len(seq)
        }
    }
}
