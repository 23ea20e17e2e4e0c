//! The test payload format shared by `strata node`, `strata perf` and the
//! simulator, so that a delivery log can be checked without the sender's help.
//!
//! The k-th cast (k from 0) of member `M` is the UTF-8 text `M:k|` followed by
//! filler up to the requested size; the filler byte at payload offset `j` is
//! `(j*31 + k) mod 256`. If the size is smaller than the text, the payload is
//! the text alone. `M` may contain `:`, so an id `M:k` splits at its last colon.

use bytes::{BufMut, Bytes, BytesMut};

/// The payload of member `member`'s `k`-th cast, `size` bytes long (or the
/// text alone if that is longer).
pub fn make(member: &str, k: u64, size: usize) -> Bytes {
    let text = format!("{member}:{k}|");
    let len = size.max(text.len());
    let mut b = BytesMut::with_capacity(len);
    b.put_slice(text.as_bytes());
    for j in text.len()..len {
        b.put_u8(filler(j, k));
    }
    b.freeze()
}

fn filler(j: usize, k: u64) -> u8 {
    ((j as u64).wrapping_mul(31).wrapping_add(k) % 256) as u8
}

/// The id text `M:k` at the start of a payload, if it has one.
pub fn id(payload: &[u8]) -> Option<&str> {
    let end = payload.iter().position(|&b| b == b'|')?;
    std::str::from_utf8(&payload[..end]).ok()
}

/// Splits an id `M:k` at its last colon into member and index.
pub fn split_id(id: &str) -> Option<(&str, u64)> {
    let (member, k) = id.rsplit_once(':')?;
    Some((member, k.parse().ok()?))
}

/// Whether `payload` is exactly what [`make`] produces for its own id and length.
pub fn is_intact(payload: &[u8]) -> bool {
    let Some((member, k)) = id(payload).and_then(split_id) else { return false };
    make(member, k, payload.len())[..] == payload[..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_id_and_check_their_filler() {
        let p = make("127.0.0.1:7001", 5, 40);
        assert_eq!(p.len(), 40);
        assert_eq!(id(&p), Some("127.0.0.1:7001:5"));
        assert_eq!(split_id("127.0.0.1:7001:5"), Some(("127.0.0.1:7001", 5)));
        assert_eq!(p[20], ((20 * 31 + 5) % 256) as u8);
        assert!(is_intact(&p));
        let mut bad = p.to_vec();
        bad[30] ^= 1;
        assert!(!is_intact(&bad));
        assert_eq!(&make("m", 12, 1)[..], b"m:12|");
        assert!(!is_intact(b"garbage"));
    }
}
