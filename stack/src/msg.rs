//! The message buffer: headers are pushed in front of the payload on the way
//! down and popped on the way up, and the payload itself is never copied.
//!
//! A [`Msg`] is a *headroom* (bytes written by layers on the way down, filled
//! from the back) followed by a body ([`Bytes`], shared, never copied by
//! layers that do not transform it). Logically the message is
//! `headroom ++ body`. On the way up a received datagram is all body, and
//! popping a header just advances the body. Invariant: a header is pushed
//! whole, so it lies entirely in the headroom or entirely in the body, never
//! across both.
//!
//! The headroom lives outside the `Msg`, behind one thin pointer, so that a
//! message stays small (56 bytes: it is moved through the engine's event
//! queue at every layer, and an event carrying one fits the 128 bytes that
//! compile to inline moves rather than calls to `memcpy`): a message
//! without pushed headers carries none, and the first push takes a buffer
//! of [`HEADROOM`] bytes from a per-thread pool that dropped messages return
//! theirs to. In steady state pushing headers allocates nothing.

use crate::codec::{DecodeResult, Malformed, Reader, Writer};
use bytes::{Buf, Bytes, BytesMut};
use std::cell::RefCell;
use std::fmt;

/// Header bytes a pooled headroom buffer holds; headers beyond that grow the
/// buffer (an allocation).
pub const HEADROOM: usize = 128;

/// Headroom buffers a thread keeps for reuse.
const POOL_LIMIT: usize = 4096;

/// A headroom buffer, boxed so that a message holds one pointer to it.
type HeadBuf = Box<Vec<u8>>;

thread_local! {
    static POOL: RefCell<Vec<HeadBuf>> = const { RefCell::new(Vec::new()) };
}

/// A zeroed headroom buffer of at least `len` bytes (`len` = its length).
fn take_buffer(len: usize) -> HeadBuf {
    if len <= HEADROOM {
        if let Some(buf) = POOL.try_with(|p| p.borrow_mut().pop()).ok().flatten() {
            return buf;
        }
    }
    Box::new(vec![0u8; len.max(HEADROOM)])
}

/// Returns a headroom buffer to this thread's pool (buffers that grew past
/// [`HEADROOM`] are freed, so the pool holds one size).
fn give_buffer(buf: HeadBuf) {
    if buf.len() == HEADROOM {
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_LIMIT {
                p.push(buf);
            }
        });
    }
}

/// Per-message flags that travel with a message inside one member's stack (not
/// on the wire: a layer that needs one remote encodes it in its header).
#[derive(Copy, Clone, Default, PartialEq, Eq, Debug)]
pub struct MsgFlags(u8);

impl MsgFlags {
    /// Out of band: reliability and ordering layers pass it without sequencing
    /// it (used for control traffic such as join requests from non-members).
    pub const OOB: MsgFlags = MsgFlags(1);

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: MsgFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Sets the flags of `other`.
    pub fn insert(&mut self, other: MsgFlags) {
        self.0 |= other.0;
    }

    const ORDER_SHIFT: u8 = 1;
    const ORDER_MASK: u8 = 0b11 << Self::ORDER_SHIFT;

    /// The order this cast asked for, if it asked (see [`Order`]).
    pub fn order(self) -> Option<Order> {
        match (self.0 & Self::ORDER_MASK) >> Self::ORDER_SHIFT {
            1 => Some(Order::Fifo),
            2 => Some(Order::Causal),
            3 => Some(Order::Total),
            _ => None,
        }
    }

    /// Records the order this cast asks for (`None`: the stack's strongest).
    pub fn set_order(&mut self, order: Option<Order>) {
        let code = match order {
            None => 0,
            Some(Order::Fifo) => 1,
            Some(Order::Causal) => 2,
            Some(Order::Total) => 3,
        };
        self.0 = (self.0 & !Self::ORDER_MASK) | (code << Self::ORDER_SHIFT);
    }
}

/// The delivery order one cast asks for, as Isis2's `Send`, `CausalSend` and
/// `OrderedSend`. A cast that asks for nothing gets the strongest order the
/// stack provides. A stack accepts a request only for an order it provides
/// (see [`Stack::cast_ordered`](crate::Stack::cast_ordered)); ordering
/// layers stronger than the request relax to it where that cannot weaken the
/// guarantees of other casts, and otherwise deliver more strongly than asked
/// (docs/ordering.md lists every combination).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Order {
    /// Per-sender order only.
    Fifo,
    /// Causal order (needs CAUSAL in the stack).
    Causal,
    /// One order at every member (needs TOTAL or TOKEN).
    Total,
}

/// A message moving through a stack.
pub struct Msg {
    // The headroom's data is head[start..]; head[..start] is free space.
    // Without a buffer yet, start == 0.
    head: Option<HeadBuf>,
    body: Bytes,
    // `tag` is meaningful only when `tagged`; kept apart (not an `Option`)
    // so that a message packs into 56 bytes.
    tag: u64,
    start: u32,
    tagged: bool,
    flags: MsgFlags,
}

// The module docs' size; the engine's queue asserts what it needs of it.
const _: () = assert!(std::mem::size_of::<Msg>() == 56);

impl Clone for Msg {
    fn clone(&self) -> Msg {
        let mut out = Msg { head: None, start: 0, body: self.body.clone(), tag: self.tag, tagged: self.tagged, flags: self.flags };
        if self.head_len() > 0 {
            out.push(self.head());
        }
        out
    }
}

impl Drop for Msg {
    fn drop(&mut self) {
        if let Some(head) = self.head.take() {
            give_buffer(head);
        }
    }
}

impl Msg {
    /// A message whose payload is `body`.
    pub fn new(body: Bytes) -> Self {
        Msg { head: None, start: 0, body, tag: 0, tagged: false, flags: MsgFlags::default() }
    }

    /// An empty message (for control traffic whose content is all header).
    pub fn empty() -> Self {
        Msg::new(Bytes::new())
    }

    /// Total length: headers pushed so far plus body.
    pub fn len(&self) -> usize {
        self.head_len() + self.body.len()
    }

    /// Whether the message has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes in the headroom.
    pub fn head_len(&self) -> usize {
        self.head.as_ref().map_or(0, |h| h.len() - self.start as usize)
    }

    /// The headroom's bytes (outermost header first).
    pub fn head(&self) -> &[u8] {
        match &self.head {
            Some(h) => &h[self.start as usize..],
            None => &[],
        }
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// A stable identity for retransmissions of the same message, set by a
    /// reliability layer so that layers below it (FRAG) can recognise a resend.
    pub fn tag(&self) -> Option<u64> {
        self.tagged.then_some(self.tag)
    }

    /// Sets the retransmission identity (see [`Msg::tag`]).
    pub fn set_tag(&mut self, tag: Option<u64>) {
        self.tagged = tag.is_some();
        self.tag = tag.unwrap_or(0);
    }

    /// Local flags.
    pub fn flags(&self) -> MsgFlags {
        self.flags
    }

    /// Mutable local flags.
    pub fn flags_mut(&mut self) -> &mut MsgFlags {
        &mut self.flags
    }

    /// The order this cast asked for, if any (see [`Order`]).
    pub fn order(&self) -> Option<Order> {
        self.flags.order()
    }

    /// Pushes `bytes` in front of the message. Allocates only when this
    /// thread's pool of headroom buffers is empty or the headers of one
    /// message exceed [`HEADROOM`] bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        if n == 0 {
            return;
        }
        // Without a buffer `start` is 0, so the first push grows.
        if n > self.start as usize {
            self.grow(n);
        }
        let start = self.start as usize - n;
        let head = self.head.as_mut().expect("grow gave the message a buffer");
        head[start..start + n].copy_from_slice(bytes);
        self.start = start as u32;
    }

    /// Pushes what a [`Writer`] holds.
    pub fn push_writer(&mut self, w: &Writer) {
        self.push(w.as_slice());
    }

    /// Encodes a header with `f` and pushes it.
    pub fn push_with(&mut self, f: impl FnOnce(&mut Writer)) {
        let mut w = Writer::new();
        f(&mut w);
        self.push(w.as_slice());
    }

    #[cold]
    fn grow(&mut self, need: usize) {
        let used = self.head_len();
        if self.head.is_none() && need <= HEADROOM {
            self.head = Some(take_buffer(HEADROOM));
            self.start = HEADROOM as u32;
            return;
        }
        // Room for the new header and as much again in front of it.
        let free = (used + need).max(HEADROOM);
        let mut bigger = take_buffer(free + used);
        let len = bigger.len();
        bigger[len - used..].copy_from_slice(self.head());
        self.start = u32::try_from(len - used).expect("headers of one message fit in 4 GiB");
        if let Some(old) = self.head.replace(bigger) {
            give_buffer(old);
        }
    }

    /// The contiguous bytes at the front: the headroom if any, else the body.
    /// Decoders read the next header from here.
    pub fn front(&self) -> &[u8] {
        if self.head_len() > 0 {
            self.head()
        } else {
            &self.body
        }
    }

    /// Removes `n` bytes from the front (of [`Msg::front`]). Fails, changing
    /// nothing, if the front holds fewer bytes.
    pub fn advance(&mut self, n: usize) -> DecodeResult<()> {
        if self.head_len() > 0 {
            if n > self.head_len() {
                return Err(Malformed("header_crosses_headroom"));
            }
            self.start += n as u32;
        } else {
            if n > self.body.len() {
                return Err(Malformed("truncated"));
            }
            self.body.advance(n);
        }
        Ok(())
    }

    /// Decodes the next header with `f` and removes it, or leaves the message
    /// unchanged and returns the error.
    pub fn pop_with<T>(&mut self, f: impl FnOnce(&mut Reader<'_>) -> DecodeResult<T>) -> DecodeResult<T> {
        let mut r = Reader::new(self.front());
        let v = f(&mut r)?;
        let n = r.consumed();
        self.advance(n)?;
        Ok(v)
    }

    /// The whole message as one contiguous buffer. Free when there are no
    /// pushed headers; otherwise copies once (done by transports and by FRAG
    /// reassembly, never by layers on the fast path).
    pub fn to_bytes(&self) -> Bytes {
        if self.head_len() == 0 {
            return self.body.clone();
        }
        let mut b = BytesMut::with_capacity(self.len());
        b.extend_from_slice(self.head());
        b.extend_from_slice(&self.body);
        b.freeze()
    }

    /// The message as two slices, headroom then body, for vectored sends.
    pub fn as_slices(&self) -> [&[u8]; 2] {
        [self.head(), &self.body]
    }

    /// The body once all headers are popped: the payload an application sees.
    /// Copies only if headroom bytes remain (which a correct stack never leaves).
    pub fn into_body(mut self) -> Bytes {
        if self.head_len() == 0 {
            std::mem::take(&mut self.body)
        } else {
            self.to_bytes()
        }
    }

    /// A message made of bytes `range` of this one's logical contents
    /// (`headroom ++ body`). Body bytes are shared, headroom bytes are copied.
    /// FRAG uses this to cut fragments without copying the payload.
    pub fn slice(&self, start: usize, end: usize) -> Msg {
        debug_assert!(start <= end && end <= self.len(), "slice within the message");
        let hl = self.head_len();
        let mut out = Msg::new(self.body.slice(start.saturating_sub(hl).min(self.body.len())..end.saturating_sub(hl).min(self.body.len())));
        if start < hl {
            out.push(&self.head()[start..end.min(hl)]);
        }
        out
    }
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Msg(head={:02x?}, body={} bytes", self.head(), self.body.len())?;
        if let Some(t) = self.tag() {
            write!(f, ", tag={t}")?;
        }
        write!(f, ")")
    }
}

/// Messages compare by logical content, tag and flags (used by exact-output tests).
impl PartialEq for Msg {
    fn eq(&self, other: &Msg) -> bool {
        self.len() == other.len() && self.tag() == other.tag() && self.flags == other.flags && self.to_bytes() == other.to_bytes()
    }
}

impl Eq for Msg {}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    #[test]
    fn push_then_pop_restores_the_body_without_copying() {
        let body = Bytes::from_static(b"payload");
        let mut m = Msg::new(body.clone());
        m.push(&[1, 2]);
        m.push(&[3]);
        assert_eq!(m.len(), 10);
        assert_eq!(&m.to_bytes()[..], &[3, 1, 2, b'p', b'a', b'y', b'l', b'o', b'a', b'd']);
        assert_eq!(m.pop_with(|r| r.u8()), Ok(3));
        assert_eq!(m.pop_with(|r| r.u16()), Ok(0x0102));
        assert_eq!(m.body().as_ptr(), body.as_ptr());
        assert_eq!(m.into_body(), body);
    }

    #[test]
    fn headroom_grows_past_the_pooled_size() {
        let mut m = Msg::new(Bytes::from_static(b"x"));
        for i in 0..100u8 {
            m.push(&[i, i]);
        }
        assert_eq!(m.head_len(), 200);
        let copy = m.clone();
        for i in (0..100u8).rev() {
            assert_eq!(m.pop_with(|r| r.array::<2>()), Ok([i, i]));
        }
        assert_eq!(&m.into_body()[..], b"x");
        assert_eq!(copy.head_len(), 200);
        assert_eq!(copy.head()[..2], [99, 99]);
    }

    #[test]
    fn headroom_buffers_are_reused_after_the_message_is_dropped() {
        let mut first = Msg::new(Bytes::from_static(b"x"));
        first.push(&[1, 2, 3]);
        let buffer = first.head.as_ref().unwrap().as_ptr();
        drop(first);
        let mut second = Msg::new(Bytes::from_static(b"y"));
        second.push(&[4]);
        assert_eq!(second.head.as_ref().unwrap().as_ptr(), buffer, "the dropped message's buffer was taken from the pool");
        assert_eq!(second.head(), &[4]);
        let copy = second.clone();
        assert_eq!(copy.to_bytes(), second.to_bytes());
    }

    #[test]
    fn an_empty_header_takes_no_buffer() {
        let mut m = Msg::new(Bytes::from_static(b"x"));
        m.push(&[]);
        assert!(m.head.is_none(), "nothing to hold");
        assert_eq!((m.head_len(), m.head(), m.front()), (0, &[][..], &b"x"[..]));
        m.push(&[7]);
        m.push(&[]);
        assert_eq!(m.to_bytes(), Bytes::from_static(b"\x07x"));
    }

    #[test]
    fn the_order_request_shares_the_flags_byte_with_oob() {
        let mut m = Msg::empty();
        m.flags_mut().insert(MsgFlags::OOB);
        assert_eq!(m.order(), None);
        for o in [Some(Order::Fifo), Some(Order::Causal), Some(Order::Total), None] {
            m.flags_mut().set_order(o);
            assert_eq!(m.order(), o);
            assert!(m.flags().contains(MsgFlags::OOB));
        }
    }

    #[test]
    fn a_failed_pop_leaves_the_message_unchanged() {
        let mut m = Msg::new(Bytes::from_static(&[0x80]));
        assert!(m.pop_with(|r| r.varint()).is_err());
        assert_eq!(m.len(), 1);
    }

    quickcheck! {
        fn slices_concatenate_to_the_whole(head: Vec<u8>, body: Vec<u8>, cut: usize) -> bool {
            let mut m = Msg::new(Bytes::from(body));
            m.push(&head);
            let cut = if m.is_empty() { 0 } else { cut % (m.len() + 1) };
            let a = m.slice(0, cut);
            let b = m.slice(cut, m.len());
            let mut joined = a.to_bytes().to_vec();
            joined.extend_from_slice(&b.to_bytes());
            joined == m.to_bytes().to_vec()
        }
    }
}
