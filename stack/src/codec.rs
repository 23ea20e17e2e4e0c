//! Wire helpers shared by every header: a bounds-checked reader, a small writer,
//! LEB128 varints, and [`Malformed`], the one error a decoder returns.
//!
//! Decoders never index without checking a length and never allocate from a
//! length read off the wire without first comparing it with what is left.

use smallvec::SmallVec;
use std::fmt;

/// Why an input was rejected. The reason is static so that counting a drop
/// never allocates.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed input: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// Result of a decoder.
pub type DecodeResult<T> = Result<T, Malformed>;

/// A cursor over received bytes. Every read checks the remaining length.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The unread part.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> DecodeResult<u8> {
        let b = *self.buf.get(self.pos).ok_or(Malformed("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads exactly `n` bytes.
    pub fn bytes(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(Malformed("truncated"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> DecodeResult<[u8; N]> {
        let s = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self) -> DecodeResult<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self) -> DecodeResult<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> DecodeResult<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads an unsigned LEB128 varint of at most 10 bytes that fits in a u64.
    pub fn varint(&mut self) -> DecodeResult<u64> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            let low = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(Malformed("varint_overflow"));
            }
            value |= low << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Malformed("varint_too_long"))
    }

    /// Reads a varint and checks it is at most `max`: use it for every count or
    /// length that sizes an allocation or a loop.
    pub fn varint_max(&mut self, max: u64, what: &'static str) -> DecodeResult<u64> {
        let v = self.varint()?;
        if v > max {
            return Err(Malformed(what));
        }
        Ok(v)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> DecodeResult<()> {
        if self.remaining() != 0 {
            return Err(Malformed("trailing_bytes"));
        }
        Ok(())
    }
}

/// A scratch buffer that encoders write into; inline up to 64 bytes.
#[derive(Default, Debug, Clone)]
pub struct Writer {
    buf: SmallVec<[u8; 64]>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// What was written.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes written.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Forgets what was written.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Writes one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// Writes raw bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Writes a big-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// Writes a big-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// Writes a big-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// Writes an unsigned LEB128 varint (1 to 10 bytes).
    pub fn varint(&mut self, v: u64) -> &mut Self {
        let mut buf = [0u8; MAX_VARINT_LEN];
        let n = put_varint(&mut buf, v);
        self.buf.extend_from_slice(&buf[..n]);
        self
    }
}

/// Appends `v` to `out` as an unsigned LEB128 varint (what
/// [`Reader::varint`] reads).
pub fn append_varint(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; MAX_VARINT_LEN];
    let n = put_varint(&mut buf, v);
    out.extend_from_slice(&buf[..n]);
}

/// Writes `v` as an unsigned LEB128 varint at the start of `out`, which
/// has room for [`varint_len`]`(v)` bytes (at most [`MAX_VARINT_LEN`]);
/// returns its length.
pub fn put_varint(out: &mut [u8], mut v: u64) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        out[i] = v as u8 | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

/// Bytes a varint of `v` takes.
pub const fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// The most bytes any varint takes.
pub const MAX_VARINT_LEN: usize = 10;

/// 64-bit FNV-1a, used for group ids, stack fingerprints and payload checks.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Decodes a rare, variable-size control payload with bincode under a size
/// limit, so a hostile length can never make it allocate more than `limit`.
pub fn decode_control<T: serde::de::DeserializeOwned>(data: &[u8], limit: usize) -> DecodeResult<T> {
    if data.len() > limit {
        return Err(Malformed("control_too_large"));
    }
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(data, control_config()).map_err(|_| Malformed("bad_control"))?;
    if used != data.len() {
        return Err(Malformed("control_trailing_bytes"));
    }
    Ok(value)
}

/// Encodes a control payload (see [`decode_control`]).
pub fn encode_control<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, control_config()).expect("encoding into a Vec cannot fail")
}

fn control_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 1 << 20 }>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    quickcheck! {
        fn varint_roundtrips(v: u64) -> bool {
            let mut w = Writer::new();
            w.varint(v);
            let mut r = Reader::new(w.as_slice());
            let mut appended = vec![7];
            append_varint(&mut appended, v);
            w.len() == varint_len(v) && r.varint() == Ok(v) && r.remaining() == 0 && appended[1..] == *w.as_slice()
        }

        fn reader_never_panics(data: Vec<u8>) -> bool {
            let mut r = Reader::new(&data);
            let _ = r.varint();
            let _ = r.u32();
            let _ = r.bytes(7);
            let _ = r.varint_max(10, "big");
            true
        }
    }

    #[test]
    fn overlong_varints_are_rejected() {
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
        assert!(Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]).varint().is_err());
        assert_eq!(Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).varint(), Ok(u64::MAX));
        assert!(Reader::new(&[0x80]).varint().is_err());
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    }
}
