//! ENCRYPT's packet format and its sealing: key derivation, the outer
//! header, and XChaCha20-Poly1305 over the inner message.
//!
//! ```text
//! outer (authenticated, in clear)                         sealed
//! ┌──────┬────────┬─────────────┬─────────┬──────────┐ ┌──────┬─────────┐┌─────┐
//! │ kind │ key id │ [sender pub]│ session │ counter  │ │ what │ payload ││ tag │
//! │  u8  │  u32   │  32 (PAIR,  │   16    │ u64 LE   │ │  u8  │   ...   ││ 16  │
//! │      │        │   ADMIT)    │         │          │ │      │         ││     │
//! └──────┴────────┴─────────────┴─────────┴──────────┘ └──────┴─────────┘└─────┘
//! ```
//!
//! The nonce is `session ‖ counter` (24 bytes): the session is 16 random
//! bytes drawn when the layer starts and the counter counts the packets it
//! sealed since, so a nonce never repeats for a key, restarts included. The
//! associated data is the outer header plus the frame's addressing:
//! whether it was cast, the sender's member id and, for a point-to-point
//! packet, the destination's address. A packet moved to another member, a
//! send turned into a cast or a sender rewritten in the frame fails to open.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use smallvec::SmallVec;
use strata_stack::codec::{DecodeResult, Malformed, Reader, Writer};
use strata_stack::MemberId;
use zeroize::Zeroize;

/// Sealed with a group key: the pre-shared one, or a member's sender key
/// of its current view (rotation mode).
pub const SEALED_GROUP: u8 = 0x51;
/// Sealed with the admission key (rotation mode): from a process that
/// shares no sender key with the receiver yet. Carries the sender's
/// public key, which the receiver must trust.
pub const SEALED_ADMIT: u8 = 0x52;
/// Sealed with the key two identities agree on (X25519 of the sender's
/// secret and the receiver's public key): proves who sent it.
pub const SEALED_PAIR: u8 = 0x53;
/// Not sealed: a receiver's advisory "I cannot admit you" (wrong key,
/// untrusted identity). It changes nothing; the receiver of a notice
/// reports it as a problem.
pub const NOTICE: u8 = 0x5F;

/// Inner kinds.
pub const DATA: u8 = 0;
pub const CHALLENGE: u8 = 1;
pub const RESPONSE: u8 = 2;
pub const KEY_REQUEST: u8 = 3;
pub const KEY: u8 = 4;

/// Notice reasons.
pub const NOTICE_WRONG_KEY: u8 = 1;
pub const NOTICE_UNTRUSTED: u8 = 2;

pub const SESSION_LEN: usize = 16;
pub const PUB_LEN: usize = 32;
pub const TAG_LEN: usize = 16;
pub const NONCE_LEN: usize = 16;
const GROUP_HEADER_LEN: usize = 1 + 4 + SESSION_LEN + 8;
/// The most bytes ENCRYPT adds to a message: the outer header with a
/// public key, the inner kind and the tag.
pub const MAX_OVERHEAD: usize = GROUP_HEADER_LEN + PUB_LEN + 1 + TAG_LEN;

/// A session: the random half of this member's nonces.
pub type Session = [u8; SESSION_LEN];
/// An X25519 public key.
pub type PubKey = [u8; PUB_LEN];

/// HKDF-SHA256 of `ikm` for `label` and the group's name: one 32-byte key.
pub fn derive(ikm: &[u8], label: &str, group: &str) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(b"strata-encrypt-v1"), ikm);
    let mut out = [0u8; 32];
    let mut info: SmallVec<[u8; 64]> = SmallVec::new();
    info.extend_from_slice(label.as_bytes());
    info.push(0);
    info.extend_from_slice(group.as_bytes());
    hk.expand(&info, &mut out).expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// A key ready to seal and open, with its public 32-bit id: a hash of the
/// key, so a receiver tells "another key" from "a forged packet".
pub struct SealKey {
    cipher: XChaCha20Poly1305,
    pub id: u32,
}

impl SealKey {
    pub fn new(mut key: [u8; 32]) -> SealKey {
        let id_bytes = derive(&key, "key-id", "");
        let id = u32::from_le_bytes([id_bytes[0], id_bytes[1], id_bytes[2], id_bytes[3]]);
        let cipher = XChaCha20Poly1305::new((&key).into());
        key.zeroize();
        SealKey { cipher, id }
    }
}

/// The addressing a packet is bound to (see the module doc).
pub struct Binding {
    pub cast: bool,
    pub from: MemberId,
    /// The destination's address, for a point-to-point packet.
    pub to: Option<std::net::SocketAddr>,
}

impl Binding {
    pub fn cast(from: MemberId) -> Self {
        Binding { cast: true, from, to: None }
    }
    pub fn send(from: MemberId, to: std::net::SocketAddr) -> Self {
        Binding { cast: false, from, to: Some(to) }
    }
    fn write(&self, w: &mut Writer) {
        w.u8(u8::from(self.cast));
        self.from.encode(w);
        if let Some(to) = self.to {
            MemberId::new(to, 0).encode(w);
        }
    }
}

/// The outer header of a sealed packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Outer {
    pub kind: u8,
    pub key_id: u32,
    pub sender_pub: Option<PubKey>,
    pub session: Session,
    pub counter: u64,
}

impl Outer {
    fn encode(&self, w: &mut Writer) {
        w.u8(self.kind).u32(self.key_id);
        if let Some(p) = &self.sender_pub {
            w.bytes(p);
        }
        w.bytes(&self.session).u64(self.counter);
    }

    /// Reads the outer header of a sealed packet (`kind` is its first byte).
    pub fn decode(r: &mut Reader<'_>) -> DecodeResult<Outer> {
        let kind = r.u8()?;
        let key_id = r.u32()?;
        let sender_pub = match kind {
            SEALED_GROUP => None,
            SEALED_ADMIT | SEALED_PAIR => Some(r.array::<PUB_LEN>()?),
            _ => return Err(Malformed("bad_kind")),
        };
        let session = r.array::<SESSION_LEN>()?;
        let counter = r.u64()?;
        Ok(Outer { kind, key_id, sender_pub, session, counter })
    }

    fn nonce(&self) -> XNonce {
        let mut n = [0u8; 24];
        n[..SESSION_LEN].copy_from_slice(&self.session);
        n[SESSION_LEN..].copy_from_slice(&self.counter.to_le_bytes());
        n.into()
    }
}

fn aad(outer_bytes: &[u8], binding: &Binding) -> SmallVec<[u8; 128]> {
    let mut w = Writer::new();
    binding.write(&mut w);
    let mut out: SmallVec<[u8; 128]> = SmallVec::new();
    out.extend_from_slice(outer_bytes);
    out.extend_from_slice(w.as_slice());
    out
}

/// Seals `inner_kind ‖ parts...` under `key` with `outer` (whose key id
/// must be `key`'s): the whole datagram payload ENCRYPT passes down.
pub fn seal(key: &SealKey, outer: &Outer, binding: &Binding, inner_kind: u8, parts: &[&[u8]]) -> bytes::Bytes {
    let mut head = Writer::new();
    outer.encode(&mut head);
    let plain_len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut buf = bytes::BytesMut::with_capacity(head.len() + plain_len + TAG_LEN);
    buf.extend_from_slice(head.as_slice());
    buf.extend_from_slice(&[inner_kind]);
    for p in parts {
        buf.extend_from_slice(p);
    }
    let ad = aad(head.as_slice(), binding);
    let tag =
        key.cipher.encrypt_in_place_detached(&outer.nonce(), &ad, &mut buf[head.len()..]).expect("XChaCha20-Poly1305 seals any message a datagram can hold");
    buf.extend_from_slice(&tag);
    buf.freeze()
}

/// Opens a packet whose outer header `outer` took the first `outer_len`
/// bytes of `packet`: the inner kind and the payload, or `None` if it does
/// not authenticate.
pub fn open(key: &SealKey, outer: &Outer, outer_len: usize, packet: &[u8], binding: &Binding) -> Option<(u8, bytes::Bytes)> {
    if packet.len() < outer_len + 1 + TAG_LEN {
        return None;
    }
    let (sealed, tag) = packet[outer_len..].split_at(packet.len() - outer_len - TAG_LEN);
    let mut buf = bytes::BytesMut::from(sealed);
    let ad = aad(&packet[..outer_len], binding);
    key.cipher.decrypt_in_place_detached(&outer.nonce(), &ad, &mut buf, Tag::from_slice(tag)).ok()?;
    let kind = buf[0];
    // Advancing the owned buffer, unlike slicing the frozen one, allocates nothing.
    bytes::Buf::advance(&mut buf, 1);
    Some((kind, buf.freeze()))
}

/// A notice: `NOTICE ‖ reason ‖ the sender's key id`.
pub fn notice(reason: u8, key_id: u32) -> bytes::Bytes {
    let mut w = Writer::new();
    w.u8(NOTICE).u8(reason).u32(key_id);
    bytes::Bytes::copy_from_slice(w.as_slice())
}

/// Challenge: a fresh nonce and the session it is addressed to.
pub fn challenge_body(nonce: &[u8; NONCE_LEN], target: &Session) -> [u8; NONCE_LEN + SESSION_LEN] {
    let mut out = [0u8; NONCE_LEN + SESSION_LEN];
    out[..NONCE_LEN].copy_from_slice(nonce);
    out[NONCE_LEN..].copy_from_slice(target);
    out
}

pub fn decode_challenge(body: &[u8]) -> DecodeResult<([u8; NONCE_LEN], Session)> {
    let mut r = Reader::new(body);
    let nonce = r.array::<NONCE_LEN>()?;
    let target = r.array::<SESSION_LEN>()?;
    r.finish()?;
    Ok((nonce, target))
}

pub fn decode_response(body: &[u8]) -> DecodeResult<[u8; NONCE_LEN]> {
    let mut r = Reader::new(body);
    let nonce = r.array::<NONCE_LEN>()?;
    r.finish()?;
    Ok(nonce)
}

pub fn decode_key_request(body: &[u8]) -> DecodeResult<u32> {
    let mut r = Reader::new(body);
    // Little-endian, as `Encrypt::request_key` writes it.
    let id = u32::from_le_bytes(r.array::<4>()?);
    r.finish()?;
    Ok(id)
}

pub fn decode_key(body: &[u8]) -> DecodeResult<[u8; 32]> {
    let mut r = Reader::new(body);
    let key = r.array::<32>()?;
    r.finish()?;
    Ok(key)
}
