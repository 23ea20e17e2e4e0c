//! FRAG's wire header (the layout is drawn in the module essay) and the checks
//! that tie a fragment's header to its payload length.

use strata_stack::codec::{varint_len, DecodeResult, Malformed, Reader, Writer, MAX_VARINT_LEN};

/// Kind byte of a message that travels in one piece.
pub(crate) const KIND_WHOLE: u8 = 0x00;
/// Kind bit of a fragment.
pub(crate) const KIND_FRAGMENT: u8 = 0x01;
/// Kind bit set on a fragment whose group id is the message's tag (else it is
/// FRAG's own counter): the two id spaces never meet.
pub(crate) const FLAG_TAGGED: u8 = 0x02;
/// Bytes of the whole-message header.
pub(crate) const WHOLE_HEADER_LEN: usize = 1;

/// A decoded FRAG header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// The rest is the whole message.
    Whole,
    /// The rest is one fragment of a larger message.
    Fragment(FragHeader),
}

/// The header of one fragment. After [`Header::decode`]: `2 <= count <=
/// total_len <= max_msg_size` and `index < count`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct FragHeader {
    /// Whether `id` is the message's tag.
    pub tagged: bool,
    /// Names the message among its sender's fragmented messages.
    pub id: u64,
    /// Position of this fragment, from 0.
    pub index: u64,
    /// Fragments in the message.
    pub count: u64,
    /// Bytes in the whole message.
    pub total_len: u64,
}

impl FragHeader {
    /// Appends the wire form.
    pub fn encode(&self, w: &mut Writer) {
        let kind = KIND_FRAGMENT | if self.tagged { FLAG_TAGGED } else { 0 };
        w.u8(kind).varint(self.id).varint(self.index).varint(self.count).varint(self.total_len);
    }

    /// Bytes [`FragHeader::encode`] writes.
    #[cfg(test)]
    pub fn encoded_len(&self) -> usize {
        1 + varint_len(self.id) + varint_len(self.index) + varint_len(self.count) + varint_len(self.total_len)
    }

    /// Checks that a payload of `len` bytes can be fragment `index` of a
    /// message cut into `count` fragments of one common length `L` (the last
    /// one shorter or equal), and returns `L`. Every fragment, the last
    /// included, determines `L`, so this needs no state: a first fragment
    /// cannot make the receiver believe in a shape its own bytes contradict.
    pub fn fragment_len(&self, len: u64, max_len: u64) -> DecodeResult<u64> {
        let bad = Err(Malformed("bad_length"));
        if len == 0 || len > max_len || len > self.total_len {
            return bad;
        }
        if self.index + 1 < self.count {
            // ceil(total_len / L) must be count.
            let l = len;
            if (self.count - 1) * l >= self.total_len || self.count * l < self.total_len {
                return bad;
            }
            Ok(l)
        } else {
            // The last fragment holds total_len - (count-1) * L, in 1..=L.
            let rest = self.total_len - len;
            let l = rest / (self.count - 1);
            if l * (self.count - 1) != rest || l < len || l > max_len {
                return bad;
            }
            Ok(l)
        }
    }
}

impl Header {
    /// Reads a header, or says why the input is not one. `max_msg_size` bounds
    /// every count and length, so nothing decoded here can size a large
    /// allocation.
    pub fn decode(r: &mut Reader<'_>, max_msg_size: u64) -> DecodeResult<Header> {
        let bad_header = |_| Malformed("bad_header");
        let kind = r.u8().map_err(bad_header)?;
        if kind == KIND_WHOLE {
            return Ok(Header::Whole);
        }
        if kind & !(KIND_FRAGMENT | FLAG_TAGGED) != 0 || kind & KIND_FRAGMENT == 0 {
            return Err(Malformed("bad_kind"));
        }
        let id = r.varint().map_err(bad_header)?;
        let index = r.varint().map_err(bad_header)?;
        let count = r.varint().map_err(bad_header)?;
        let total_len = r.varint().map_err(bad_header)?;
        if total_len > max_msg_size {
            return Err(Malformed("total_too_large"));
        }
        if count < 2 || count > total_len {
            return Err(Malformed("bad_count"));
        }
        if index >= count {
            return Err(Malformed("bad_index"));
        }
        Ok(Header::Fragment(FragHeader { tagged: kind & FLAG_TAGGED != 0, id, index, count, total_len }))
    }
}

/// The longest fragment header for messages of at most `max_msg_size` bytes:
/// kind, a 64-bit id, then index, count and total length.
pub(crate) const fn max_fragment_header_len(max_msg_size: u64) -> usize {
    1 + MAX_VARINT_LEN + varint_len(max_msg_size.saturating_sub(1)) + 2 * varint_len(max_msg_size)
}

/// The common payload length `L` of the fragments of a `total_len`-byte
/// message with group id `id`, such that every fragment, header included,
/// takes at most `budget` bytes; `None` if not even one payload byte fits.
///
/// It starts from the worst header (index, count and total as long as
/// `total_len`'s varint) and then tightens once with the real count: a
/// larger `L` can only lower the count, so the tightened header still bounds
/// every fragment's header.
pub(crate) fn fragment_payload_len(budget: usize, id: u64, total_len: usize) -> Option<usize> {
    let fixed = 1 + varint_len(id);
    let total_varint = varint_len(total_len as u64);
    let worst = fixed + 3 * total_varint;
    if budget <= worst {
        return None;
    }
    let count = total_len.div_ceil(budget - worst).max(1) as u64;
    let header = fixed + varint_len(count - 1) + varint_len(count) + total_varint;
    Some(budget - header)
}
