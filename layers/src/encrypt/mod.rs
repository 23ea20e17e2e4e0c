//! # ENCRYPT: authenticated encryption, replay protection, admission and key rotation
//!
//! Everything that passes through ENCRYPT on its way down (the payload and
//! the headers of every layer above it) is sealed with XChaCha20-Poly1305;
//! everything coming up must open, must not be a replay, and must come from
//! a process that proved it holds the group's credential *now*. It runs
//! directly above the transport wherever the stack string names it (the
//! registry places every layer that provides `confidential` there), so every
//! packet the group acts on is protected: NAKs, retransmissions, joins,
//! views and flushes included.
//!
//! * **Keys.** `key_file=PATH` (64 hex digits, as `strata keygen PATH`
//!   writes) or `key_env=NAME` gives the 32-byte pre-shared key; the key
//!   itself never appears in a stack string. The sealing key is derived
//!   from it and the group's name (HKDF-SHA256), so two groups sharing a
//!   key file do not share traffic. A key that cannot be read fails the
//!   build, naming the file or variable.
//! * **Nonces** are `session ‖ counter`: 16 random bytes drawn at start
//!   (from the operating system under the runtime, [`Context::entropy`])
//!   and a 64-bit count of packets sealed since, so they never repeat for a
//!   key, across restarts included.
//! * **Binding.** The associated data holds the outer header and the
//!   frame's addressing: cast or point-to-point, the sender's member id,
//!   the destination's address. A packet replayed to another member, a send
//!   turned into a cast, or a frame whose sender was rewritten fails to open.
//! * **Replays.** Each sender session has a 1024-packet sliding window;
//!   a counter seen before, or older than the window, is dropped, and so is
//!   one sent more than `max_delay_ms` before a packet of the same session
//!   this member already received: a captured packet replayed later is
//!   refused even if the original never arrived (NAK retransmits with
//!   fresh counters, so nothing is lost). A session
//!   this member has not heard before must first answer a **challenge**: a
//!   fresh nonce, sealed, to which only the live holder of that session can
//!   reply. Until it does, its packets are held (bounded; NAK above or
//!   below recovers anything dropped). So packets captured from a process
//!   that has since restarted or died are never delivered, even to a member
//!   that never saw them the first time.
//! * **Rotation** (`identity=PATH`, `trust=PATH`): every process has an
//!   X25519 identity (`strata keygen --identity`); the trust file lists the
//!   public keys allowed in the group. Each member seals its traffic to the
//!   view with a *sender key* it draws afresh whenever a view is installed,
//!   and gives it, sealed with the X25519 key it shares with each
//!   recipient, only to members of that view whose identity it verified.
//!   A member that leaves or is removed never receives the sender keys of
//!   later views, so it cannot read anything sent after the change. Packets
//!   sealed with a key the receiver does not have yet are held until it
//!   arrives (it is pushed at once and pulled on demand), so nothing is
//!   lost across the change. A process outside the view (a joiner) seals
//!   with the *admission key* derived from the pre-shared key and names its
//!   identity; its packets are held until it answers a challenge sealed to
//!   that identity, so only trusted identities can join. In this mode the
//!   challenge response must be sealed with the pairwise key, which proves
//!   the identity, not just the pre-shared key.
//! * **Refusals.** A receiver that gets packets sealed with another group
//!   key, or from an identity it does not trust, answers (at most once a
//!   second per address) with a small unsealed *notice*; the refused
//!   process reports it as an [`Up::Problem`] ("… uses a different group
//!   key") and changes nothing else, since anyone could forge a notice.
//!
//! Header: see `wire.rs`. 29 bytes plus a 17-byte trailer (inner kind and tag);
//! 32 more (the sender's public key) on admission and pairwise packets.
//!
//! | Parameter | Default | Meaning |
//! |---|---|---|
//! | `key_file` | – | file holding the 32-byte pre-shared key as 64 hex digits |
//! | `key_env` | – | environment variable holding it instead |
//! | `identity` | – | this process's X25519 secret (rotation mode) |
//! | `trust` | – | the trusted public keys, one per line (rotation mode) |
//! | `max_sessions` | 1024 | sender sessions remembered (replay windows) |
//! | `max_held` | 512 | packets held awaiting a challenge answer or a key |
//! | `max_delay_ms` | 1000 | a packet sent this long before one already received from its session is stale |
//! | `retry_ms` | 200 | interval of challenge and key-request retries |
//! | `retries` | 10 | retries before held packets are dropped |
//!
//! Bad input never panics and is counted under `dropped`: `truncated`,
//! `bad_kind`, `wrong_key`, `auth_failed`, `replay`, `too_old`,
//! `untrusted`, `unknown_key`, `stale`, `sessions_full`, `held_overflow`, `unverified_expired`,
//! `key_unavailable`, `foreign_challenge`, `bad_response`,
//! `identity_conflict`, `key_refused`, `bad_control`, `unknown_loopback`.

mod keys;
mod replay;
#[cfg(test)]
mod tests;
mod wire;

pub use keys::*;

use bytes::Bytes;
use hashbrown::{HashMap, HashSet};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use replay::{Refusal, ReplayWindow};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strata_stack::codec::Reader;
use strata_stack::{Context, Down, Instant, Layer, LayerDescriptor, MemberId, Msg, ParamKind, ParamSpec, Params, Problem, Props, Stats, TimerKey, Up, View};
use wire::*;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// The descriptor for stack strings.
pub const ENCRYPT: LayerDescriptor = LayerDescriptor {
    name: "ENCRYPT",
    summary: "authenticated encryption of everything above it: non-members cannot read, forge, replay or join; sender keys rotate with views",
    requires: Props::NONE,
    provides: Props::CONFIDENTIAL,
    params: &[
        ParamSpec { name: "key_file", kind: ParamKind::Str, default: "", doc: "file holding the 32-byte pre-shared key as 64 hex digits", wire: false },
        ParamSpec { name: "key_env", kind: ParamKind::Str, default: "", doc: "environment variable holding the key instead of a file", wire: false },
        ParamSpec { name: "identity", kind: ParamKind::Str, default: "", doc: "this process's X25519 secret (64 hex digits): rotation mode", wire: false },
        ParamSpec { name: "trust", kind: ParamKind::Str, default: "", doc: "file of trusted X25519 public keys, one per line: rotation mode", wire: false },
        ParamSpec {
            name: "max_sessions",
            kind: ParamKind::U64 { min: 8, max: 1 << 20 },
            default: "1024",
            doc: "sender sessions (replay windows) remembered",
            wire: false,
        },
        ParamSpec {
            name: "max_held",
            kind: ParamKind::U64 { min: 1, max: 1 << 20 },
            default: "512",
            doc: "packets held awaiting a challenge answer or a key",
            wire: false,
        },
        ParamSpec {
            name: "max_delay_ms",
            kind: ParamKind::U64 { min: 10, max: 3_600_000 },
            default: "1000",
            doc: "a packet sent this long before one already received from its session is refused as stale",
            wire: false,
        },
        ParamSpec {
            name: "retry_ms",
            kind: ParamKind::U64 { min: 1, max: 60_000 },
            default: "200",
            doc: "challenge and key-request retry interval",
            wire: false,
        },
        ParamSpec { name: "retries", kind: ParamKind::U64 { min: 1, max: 1000 }, default: "10", doc: "retries before held packets are dropped", wire: false },
    ],
    max_header_len: |_| MAX_OVERHEAD,
    build,
};

/// Bytes held in total, whatever `max_held` says.
const MAX_HELD_BYTES: usize = 8 << 20;
/// Sender keys remembered per member (the current one and in-flight ones).
const KEYS_PER_MEMBER: usize = 4;
/// Own sender keys remembered (answering requests for in-flight packets).
const OWN_KEYS: usize = 3;
/// Problems reported once per (address, reason); this many remembered.
const MAX_REPORTED: usize = 64;
const NOTICE_INTERVAL: Duration = Duration::from_secs(1);
const RETRY_TIMER: TimerKey = 1;

fn build(p: &Params) -> Result<Box<dyn Layer>, String> {
    let key = match (p.str("key_file"), p.str("key_env")) {
        ("", "") => return Err("give the pre-shared key with key_file=PATH or key_env=NAME".into()),
        (file, "") => KeySource::File(file.to_string()),
        ("", env) => KeySource::Env(env.to_string()),
        _ => return Err("key_file and key_env are exclusive".into()),
    };
    let identity = match (p.str("identity"), p.str("trust")) {
        ("", "") => None,
        (id, trust) if !id.is_empty() && !trust.is_empty() => Some((id.to_string(), trust.to_string())),
        _ => return Err("identity and trust go together (rotation mode needs both)".into()),
    };
    Ok(Box::new(Encrypt::new(Config {
        key,
        identity,
        max_sessions: p.u64("max_sessions") as usize,
        max_held: p.u64("max_held") as usize,
        max_delay: Duration::from_millis(p.u64("max_delay_ms")),
        retry: Duration::from_millis(p.u64("retry_ms")),
        retries: p.u64("retries") as u32,
    })))
}

enum KeySource {
    File(String),
    Env(String),
}

struct Config {
    key: KeySource,
    identity: Option<(String, String)>,
    max_sessions: usize,
    max_held: usize,
    max_delay: Duration,
    retry: Duration,
    retries: u32,
}

/// The running layer.
pub struct Encrypt {
    cfg: Config,
    rng: ChaCha20Rng,
    session: Session,
    counter: u64,
    mode: Mode,
    /// Sender sessions heard from, by member and session.
    peers: HashMap<(MemberId, Session), Peer>,
    /// Sealed packets waiting for the sender key they name (rotation).
    awaiting_key: VecDeque<AwaitingKey>,
    /// Plaintexts of own casts and sends to self, by counter, until the
    /// engine loops them back.
    loopback: VecDeque<(u64, Msg)>,
    held_count: usize,
    held_bytes: usize,
    /// The last view passed down (the initial one until then): its members
    /// get this member's sender key.
    view: Arc<View>,
    /// Use counter for least-recently-used eviction of sessions.
    tick: u64,
    reported: VecDeque<(SocketAddr, u8)>,
    notices_sent: VecDeque<(SocketAddr, Instant)>,
    n: Counters,
}

#[derive(Default)]
struct Counters {
    sealed: u64,
    opened: u64,
    bytes_sealed: u64,
    challenges_sent: u64,
    sessions_verified: u64,
    keys_sent: u64,
    keys_received: u64,
    key_requests_sent: u64,
    rotations: u64,
    notices_sent: u64,
    notices_received: u64,
}

enum Mode {
    /// One key for everything: the pre-shared key, derived for the group.
    Shared(SealKey),
    Rotating(Box<Rotation>),
}

struct Rotation {
    admit: SealKey,
    secret: StaticSecret,
    public: PubKey,
    trust: HashSet<PubKey>,
    pair_keys: HashMap<PubKey, SealKey>,
    /// This member's sender keys, newest first, with the view each was
    /// drawn for (its members may have it).
    own: SmallVec<[OwnKey; OWN_KEYS]>,
    /// Other members' sender keys, by member and key id.
    peer_keys: HashMap<(MemberId, u32), (SealKey, u64)>,
    /// Identities proven by a pairwise-sealed packet: first binding wins.
    member_pub: HashMap<MemberId, PubKey>,
    /// Outstanding requests for a member's key: (member, key id) → tries.
    requests: HashMap<(MemberId, u32), u32>,
}

impl Rotation {
    /// The pairwise key with identity `peer`, computed once.
    fn pair_key(&mut self, peer: PubKey) -> &SealKey {
        let (secret, public) = (&self.secret, self.public);
        self.pair_keys.entry(peer).or_insert_with(|| {
            let shared = secret.diffie_hellman(&PublicKey::from(peer));
            let (lo, hi) = if public <= peer { (public, peer) } else { (peer, public) };
            let mut ikm = Zeroizing::new([0u8; 96]);
            ikm[..32].copy_from_slice(shared.as_bytes());
            ikm[32..64].copy_from_slice(&lo);
            ikm[64..].copy_from_slice(&hi);
            SealKey::new(derive(ikm.as_ref(), "pair", ""))
        })
    }
}

/// Which key seals or opens a packet (resolved by [`Encrypt::key`]).
#[derive(Copy, Clone)]
enum KeyRef {
    /// The pre-shared group key.
    Shared,
    /// This member's current sender key.
    Own,
    /// The admission key.
    Admit,
    /// Member `.0`'s sender key with id `.1`.
    Peer(MemberId, u32),
    /// The pairwise key with this identity.
    Pair(PubKey),
}

struct OwnKey {
    key: SealKey,
    raw: Zeroizing<[u8; 32]>,
    view: Arc<View>,
}

struct Peer {
    window: ReplayWindow,
    /// Freshness: counters up to `stale_below` were sent before a packet
    /// received at least `max_delay` ago; `mark` is the candidate for the
    /// next such bound (the highest counter at `mark_at`).
    stale_below: u64,
    mark: u64,
    mark_at: Instant,
    verified: bool,
    challenge: Option<([u8; NONCE_LEN], u32)>,
    /// The identity its packets claim (admission, pairwise) and whether a
    /// pairwise packet proved it.
    public: Option<PubKey>,
    proven: bool,
    held: Vec<(bool, Bytes)>,
    last_used: u64,
}

struct AwaitingKey {
    from: MemberId,
    key_id: u32,
    cast: bool,
    packet: Bytes,
}

/// Where a sealed packet goes.
#[derive(Copy, Clone)]
enum Dest {
    Cast,
    To(MemberId),
}

impl Encrypt {
    fn new(cfg: Config) -> Self {
        Encrypt {
            cfg,
            rng: ChaCha20Rng::from_seed([0; 32]),
            session: [0; SESSION_LEN],
            counter: 0,
            mode: Mode::Shared(SealKey::new([0; 32])),
            peers: HashMap::new(),
            awaiting_key: VecDeque::new(),
            loopback: VecDeque::new(),
            held_count: 0,
            held_bytes: 0,
            view: View::initial(vec![MemberId::sim(0)]).expect("a one-member view is valid"),
            tick: 0,
            reported: VecDeque::new(),
            notices_sent: VecDeque::new(),
            n: Counters::default(),
        }
    }

    fn load_keys(&self, group: &str) -> Result<Mode, String> {
        let psk = match &self.cfg.key {
            KeySource::File(path) => read_key_file(std::path::Path::new(path))?,
            KeySource::Env(name) => read_key_env(name)?,
        };
        let Some((id_path, trust_path)) = &self.cfg.identity else {
            return Ok(Mode::Shared(SealKey::new(derive(psk.bytes(), "group", group))));
        };
        let identity = read_key_file(std::path::Path::new(id_path)).map_err(|e| e.replacen("key file", "identity file", 1))?;
        let trust: HashSet<PubKey> = read_trust_file(std::path::Path::new(trust_path))?.into_iter().collect();
        let secret = StaticSecret::from(*identity.bytes());
        let public = PublicKey::from(&secret).to_bytes();
        if !trust.contains(&public) {
            return Err(format!("trust file {trust_path} does not list this process's own public key {}", to_hex(&public)));
        }
        Ok(Mode::Rotating(Box::new(Rotation {
            admit: SealKey::new(derive(psk.bytes(), "admit", group)),
            secret,
            public,
            trust,
            pair_keys: HashMap::new(),
            own: SmallVec::new(),
            peer_keys: HashMap::new(),
            member_pub: HashMap::new(),
            requests: HashMap::new(),
        })))
    }

    fn rotating(&mut self) -> Option<&mut Rotation> {
        match &mut self.mode {
            Mode::Rotating(r) => Some(r),
            Mode::Shared(_) => None,
        }
    }

    /// Draws a fresh sender key for `view` (rotation mode) and pushes it to
    /// the members whose identity this member has verified.
    fn rotate(&mut self, cx: &mut Context<'_>, view: Arc<View>) {
        if !matches!(self.mode, Mode::Rotating(_)) {
            return;
        }
        let mut raw = Zeroizing::new([0u8; 32]);
        self.rng.fill_bytes(raw.as_mut());
        let key = SealKey::new(*raw);
        let id = key.id;
        let local = cx.local();
        let peers = &self.peers;
        let verified: Vec<MemberId> =
            view.members().iter().copied().filter(|m| *m != local && peers.iter().any(|((pm, _), p)| pm == m && p.verified && p.proven)).collect();
        let Mode::Rotating(rot) = &mut self.mode else { unreachable!() };
        rot.own.insert(0, OwnKey { key, raw, view });
        rot.own.truncate(OWN_KEYS);
        self.n.rotations += 1;
        for m in verified {
            self.send_key(cx, m, id);
        }
    }

    fn send_key(&mut self, cx: &mut Context<'_>, to: MemberId, id: u32) {
        let Mode::Rotating(rot) = &self.mode else { return };
        let Some(public) = rot.member_pub.get(&to).copied() else { return };
        let Some(own) = rot.own.iter().find(|k| k.key.id == id) else { return };
        let mut body = [0u8; 36];
        body[..4].copy_from_slice(&id.to_le_bytes());
        body[4..].copy_from_slice(own.raw.as_ref());
        let body = Zeroizing::new(body);
        self.n.keys_sent += 1;
        self.seal_pair(cx, to, public, KEY, &[body.as_ref()]);
    }

    // ----- sealing -----

    fn binding(cx: &Context<'_>, dest: Dest) -> Binding {
        match dest {
            Dest::Cast => Binding::cast(cx.local()),
            Dest::To(to) => Binding::send(cx.local(), to.addr()),
        }
    }

    /// Seals data or a control message for `dest` with the key the mode
    /// and the destination call for: the shared key; in rotation mode this
    /// member's sender key for data to its view, the pairwise key for a
    /// destination whose identity is proven, the admission key otherwise.
    fn seal(&mut self, cx: &Context<'_>, dest: Dest, inner: u8, parts: &[&[u8]]) -> Bytes {
        let in_view = match dest {
            Dest::Cast => true,
            Dest::To(to) => to == cx.local() || self.view.contains(&to),
        };
        let (key, kind, sender_pub) = match &self.mode {
            Mode::Shared(_) => (KeyRef::Shared, SEALED_GROUP, None),
            Mode::Rotating(rot) => {
                let peer_pub = match dest {
                    Dest::To(to) => rot.member_pub.get(&to).copied(),
                    Dest::Cast => None,
                };
                match (in_view && inner == DATA, peer_pub) {
                    (true, _) => (KeyRef::Own, SEALED_GROUP, None),
                    (false, Some(p)) => (KeyRef::Pair(p), SEALED_PAIR, Some(rot.public)),
                    (false, None) => (KeyRef::Admit, SEALED_ADMIT, Some(rot.public)),
                }
            }
        };
        self.seal_with(key, kind, sender_pub, Self::binding(cx, dest), inner, parts)
    }

    /// Seals `inner ‖ parts` with `key` under a fresh counter.
    fn seal_with(&mut self, key: KeyRef, kind: u8, sender_pub: Option<PubKey>, binding: Binding, inner: u8, parts: &[&[u8]]) -> Bytes {
        self.counter += 1;
        let (session, counter) = (self.session, self.counter);
        let key = self.key(key).expect("a member holds every key it seals with");
        // Pairwise packets name the key by the sender's public key instead.
        let key_id = if kind == SEALED_PAIR { 0 } else { key.id };
        let sealed = seal(key, &Outer { kind, key_id, sender_pub, session, counter }, &binding, inner, parts);
        self.n.sealed += 1;
        self.n.bytes_sealed += sealed.len() as u64;
        sealed
    }

    /// The key `r` names, if this member holds it.
    fn key(&mut self, r: KeyRef) -> Option<&SealKey> {
        match (&mut self.mode, r) {
            (Mode::Shared(key), KeyRef::Shared) => Some(key),
            (Mode::Rotating(rot), KeyRef::Own) => rot.own.first().map(|k| &k.key),
            (Mode::Rotating(rot), KeyRef::Admit) => Some(&rot.admit),
            (Mode::Rotating(rot), KeyRef::Peer(m, id)) => rot.peer_keys.get(&(m, id)).map(|(k, _)| k),
            (Mode::Rotating(rot), KeyRef::Pair(p)) => Some(rot.pair_key(p)),
            _ => None,
        }
    }

    /// Seals a control message to `to` with the pairwise key of identity `public`.
    fn seal_pair(&mut self, cx: &mut Context<'_>, to: MemberId, public: PubKey, inner: u8, parts: &[&[u8]]) {
        let Mode::Rotating(rot) = &self.mode else { return };
        let own_pub = rot.public;
        let sealed = self.seal_with(KeyRef::Pair(public), SEALED_PAIR, Some(own_pub), Binding::send(cx.local(), to.addr()), inner, parts);
        cx.down(Down::Send { to, msg: Msg::new(sealed) });
    }

    /// Sends a control message: pairwise when the destination's identity
    /// is known (required in rotation mode for challenges, responses and
    /// keys), under the shared key otherwise.
    fn send_control(&mut self, cx: &mut Context<'_>, to: MemberId, public: Option<PubKey>, inner: u8, parts: &[&[u8]]) {
        match (&self.mode, public) {
            (Mode::Rotating(_), Some(p)) => self.seal_pair(cx, to, p, inner, parts),
            _ => {
                let sealed = self.seal(cx, Dest::To(to), inner, parts);
                cx.down(Down::Send { to, msg: Msg::new(sealed) });
            }
        }
    }

    fn seal_down(&mut self, cx: &mut Context<'_>, dest: Dest, msg: Msg) {
        let [head, body] = msg.as_slices();
        let sealed = self.seal(cx, dest, DATA, &[head, body]);
        let mut out = Msg::new(sealed);
        *out.flags_mut() = msg.flags();
        out.set_tag(msg.tag());
        // The engine loops casts (and sends to self) back up: keep the
        // plaintext for that copy rather than open what was just sealed.
        if matches!(dest, Dest::Cast) || matches!(dest, Dest::To(to) if to == cx.local()) {
            self.loopback.push_back((self.counter, msg));
        }
        match dest {
            Dest::Cast => cx.down(Down::Cast(out)),
            Dest::To(to) => cx.down(Down::Send { to, msg: out }),
        }
    }

    /// The engine's loopback of this member's own packet `counter` (frames
    /// from the network that claim this member as sender are dropped
    /// before any layer): the plaintext kept when it was sealed.
    fn loop_back(&mut self, cx: &mut Context<'_>, cast: bool, counter: u64) {
        // Loopbacks come in the order of sealing; older entries were lost below.
        while self.loopback.front().is_some_and(|(c, _)| *c < counter) {
            self.loopback.pop_front();
        }
        match self.loopback.front() {
            Some((c, _)) if *c == counter => {
                let (_, msg) = self.loopback.pop_front().expect("just seen");
                cx.up(if cast { Up::Cast { from: cx.local(), msg } } else { Up::Send { from: cx.local(), msg } });
            }
            _ => cx.drop_malformed("unknown_loopback"),
        }
    }

    // ----- opening -----

    fn receive(&mut self, cx: &mut Context<'_>, from: MemberId, cast: bool, packet: Bytes) {
        let Some(&kind) = packet.first() else { return cx.drop_malformed("truncated") };
        if kind == NOTICE {
            return self.on_notice(cx, from, &packet);
        }
        let mut r = Reader::new(&packet);
        let outer = match Outer::decode(&mut r) {
            Ok(o) => o,
            Err(e) if e.0 == "bad_kind" => return cx.drop_malformed("bad_kind"),
            Err(_) => return cx.drop_malformed("truncated"),
        };
        let outer_len = r.consumed();
        if packet.len() < outer_len + 1 + TAG_LEN {
            return cx.drop_malformed("truncated");
        }
        if from == cx.local() {
            return self.loop_back(cx, cast, outer.counter);
        }
        // A counter this session already used is refused before any work.
        if let Some(peer) = self.peers.get(&(from, outer.session)) {
            if let Err(refusal) = peer.window.check(outer.counter) {
                return cx.drop_malformed(refusal_reason(refusal));
            }
        }
        let binding = if cast { Binding::cast(from) } else { Binding::send(from, cx.local().addr()) };
        let Some(key) = self.key_for(cx, from, cast, &outer, &packet) else { return };
        let key = self.key(key).expect("key_for names a key this member holds");
        let Some((inner, body)) = open(key, &outer, outer_len, &packet, &binding) else { return cx.drop_malformed("auth_failed") };
        self.n.opened += 1;
        let max_delay = self.cfg.max_delay;
        let now = cx.now();
        let Some(peer) = self.peer(from, outer.session, now) else { return cx.drop_malformed("sessions_full") };
        if outer.counter <= peer.stale_below {
            return cx.drop_malformed("stale");
        }
        peer.window.record(outer.counter);
        if now.saturating_since(peer.mark_at) >= max_delay {
            peer.stale_below = peer.mark;
            peer.mark = peer.window.top();
            peer.mark_at = now;
        }
        if let Some(claimed) = outer.sender_pub {
            if let Err(reason) = self.bind_identity(from, outer.session, claimed, outer.kind == SEALED_PAIR) {
                return cx.drop_malformed(reason);
            }
        }
        match inner {
            DATA => self.on_data(cx, from, outer.session, cast, body),
            CHALLENGE => self.on_challenge(cx, from, &outer, &body),
            RESPONSE => self.on_response(cx, from, &outer, &body),
            KEY_REQUEST => self.on_key_request(cx, from, &outer, &body),
            KEY => self.on_key(cx, from, &outer, &body),
            _ => cx.drop_malformed("bad_control"),
        }
    }

    /// The key that opens `outer`, if this member has it; otherwise the
    /// packet was counted, held or answered with a notice.
    fn key_for(&mut self, cx: &mut Context<'_>, from: MemberId, cast: bool, outer: &Outer, packet: &Bytes) -> Option<KeyRef> {
        let (wanted, ours, group) = match (&self.mode, outer.kind) {
            (Mode::Shared(key), SEALED_GROUP) => (KeyRef::Shared, key.id, "group"),
            (Mode::Rotating(rot), SEALED_GROUP) => {
                if rot.peer_keys.contains_key(&(from, outer.key_id)) {
                    return Some(KeyRef::Peer(from, outer.key_id));
                }
                if !self.view.contains(&from) {
                    cx.drop_malformed("unknown_key");
                    return None;
                }
                self.await_key(cx, from, outer.key_id, cast, packet.clone());
                return None;
            }
            (Mode::Rotating(rot), SEALED_ADMIT | SEALED_PAIR) => {
                let claimed = outer.sender_pub.expect("decoded with a public key");
                if !rot.trust.contains(&claimed) {
                    let admit_id = rot.admit.id;
                    self.refuse_sender(cx, from, NOTICE_UNTRUSTED, admit_id, "untrusted");
                    let what = format!("{from} claims identity {} which the trust file does not list", to_hex(&claimed));
                    self.report(cx, from.addr(), NOTICE_UNTRUSTED, what);
                    return None;
                }
                if outer.kind == SEALED_PAIR {
                    return Some(KeyRef::Pair(claimed));
                }
                (KeyRef::Admit, rot.admit.id, "admission")
            }
            _ => {
                cx.drop_malformed("bad_kind");
                return None;
            }
        };
        if outer.key_id != ours {
            self.refuse_sender(cx, from, NOTICE_WRONG_KEY, ours, "wrong_key");
            let what = format!("packets from {from} are sealed with another {group} key (key id {:08x}, ours {ours:08x}): it cannot join", outer.key_id);
            self.report(cx, from.addr(), NOTICE_WRONG_KEY, what);
            return None;
        }
        Some(wanted)
    }

    /// The session's state, created if new (evicting the least recently
    /// used, unverified ones first); `None` if the table is full of
    /// sessions that may not be evicted.
    fn peer(&mut self, from: MemberId, session: Session, now: Instant) -> Option<&mut Peer> {
        self.tick += 1;
        let tick = self.tick;
        if !self.peers.contains_key(&(from, session)) && self.peers.len() >= self.cfg.max_sessions {
            // A verified session of a current member is never evicted: its
            // replay window would go with it.
            let view = &self.view;
            let victim =
                self.peers.iter().filter(|((m, _), p)| !(p.verified && view.contains(m))).min_by_key(|(_, p)| (p.verified, p.last_used)).map(|(k, _)| *k)?;
            if let Some(evicted) = self.peers.remove(&victim) {
                self.release_held_count(&evicted.held);
            }
        }
        let peer = self.peers.entry((from, session)).or_insert_with(|| Peer {
            window: ReplayWindow::default(),
            stale_below: 0,
            mark: 0,
            mark_at: now,
            verified: false,
            challenge: None,
            public: None,
            proven: false,
            held: Vec::new(),
            last_used: tick,
        });
        peer.last_used = tick;
        Some(peer)
    }

    fn release_held_count(&mut self, held: &[(bool, Bytes)]) {
        self.held_count -= held.len();
        self.held_bytes -= held.iter().map(|(_, b)| b.len()).sum::<usize>();
    }

    /// Records the identity a packet of `(from, session)` claims; a
    /// pairwise packet proves it. A member or session bound to another
    /// identity is refused.
    fn bind_identity(&mut self, from: MemberId, session: Session, claimed: PubKey, proven: bool) -> Result<(), &'static str> {
        let Mode::Rotating(rot) = &mut self.mode else { return Ok(()) };
        if rot.member_pub.get(&from).is_some_and(|p| *p != claimed) {
            return Err("identity_conflict");
        }
        let peer = self.peers.get_mut(&(from, session)).expect("the session was just recorded");
        if peer.public.is_some_and(|p| p != claimed) {
            return Err("identity_conflict");
        }
        peer.public = Some(claimed);
        if proven {
            peer.proven = true;
            rot.member_pub.insert(from, claimed);
            if rot.member_pub.len() > self.cfg.max_sessions {
                // Bound it like the sessions: forget identities of non-members.
                let view = &self.view;
                rot.member_pub.retain(|m, _| view.contains(m) || *m == from);
            }
        }
        Ok(())
    }

    fn on_data(&mut self, cx: &mut Context<'_>, from: MemberId, session: Session, cast: bool, body: Bytes) {
        let peer = self.peers.get_mut(&(from, session)).expect("the session was just recorded");
        if peer.verified {
            return deliver(cx, from, cast, body);
        }
        if self.held_count >= self.cfg.max_held || self.held_bytes + body.len() > MAX_HELD_BYTES {
            return cx.drop_malformed("held_overflow");
        }
        self.held_count += 1;
        self.held_bytes += body.len();
        peer.held.push((cast, body));
        if peer.challenge.is_none() {
            self.challenge(cx, from, session);
        }
    }

    fn challenge(&mut self, cx: &mut Context<'_>, from: MemberId, session: Session) {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut nonce);
        let Some(peer) = self.peers.get_mut(&(from, session)) else { return };
        let tries = peer.challenge.map_or(0, |(_, t)| t + 1);
        peer.challenge = Some((nonce, tries));
        let public = peer.public;
        if matches!(self.mode, Mode::Rotating(_)) && public.is_none() {
            // Nobody to seal the challenge to: the session stays unverified.
            return;
        }
        self.n.challenges_sent += 1;
        self.send_control(cx, from, public, CHALLENGE, &[&challenge_body(&nonce, &session)]);
        self.arm_retry(cx);
    }

    fn on_challenge(&mut self, cx: &mut Context<'_>, from: MemberId, outer: &Outer, body: &[u8]) {
        let Ok((nonce, target)) = decode_challenge(body) else { return cx.drop_malformed("bad_control") };
        if target != self.session {
            return cx.drop_malformed("foreign_challenge");
        }
        let rotating = matches!(self.mode, Mode::Rotating(_));
        if rotating && outer.kind != SEALED_PAIR {
            return cx.drop_malformed("bad_control");
        }
        self.send_control(cx, from, outer.sender_pub, RESPONSE, &[&nonce]);
    }

    fn on_response(&mut self, cx: &mut Context<'_>, from: MemberId, outer: &Outer, body: &[u8]) {
        let Ok(nonce) = decode_response(body) else { return cx.drop_malformed("bad_control") };
        let rotating = matches!(self.mode, Mode::Rotating(_));
        let peer = self.peers.get_mut(&(from, outer.session)).expect("the session was just recorded");
        let matches = peer.challenge.is_some_and(|(n, _)| n == nonce) && (!rotating || (outer.kind == SEALED_PAIR && peer.proven));
        if !matches {
            return cx.drop_malformed("bad_response");
        }
        peer.verified = true;
        peer.challenge = None;
        let held = std::mem::take(&mut peer.held);
        self.n.sessions_verified += 1;
        self.release_held_count(&held);
        for (cast, body) in held {
            deliver(cx, from, cast, body);
        }
        // A member of the view whose identity is now proven gets this
        // member's current sender key without asking.
        if rotating && self.view.contains(&from) {
            if let Some(id) = self.rotating().and_then(|r| r.own.first().map(|k| k.key.id)) {
                self.send_key(cx, from, id);
            }
        }
    }

    fn await_key(&mut self, cx: &mut Context<'_>, from: MemberId, key_id: u32, cast: bool, packet: Bytes) {
        if self.held_count >= self.cfg.max_held || self.held_bytes + packet.len() > MAX_HELD_BYTES {
            return cx.drop_malformed("held_overflow");
        }
        self.held_count += 1;
        self.held_bytes += packet.len();
        self.awaiting_key.push_back(AwaitingKey { from, key_id, cast, packet });
        let Mode::Rotating(rot) = &mut self.mode else { return };
        if !rot.requests.contains_key(&(from, key_id)) {
            rot.requests.insert((from, key_id), 0);
            self.request_key(cx, from, key_id);
        }
    }

    fn request_key(&mut self, cx: &mut Context<'_>, from: MemberId, key_id: u32) {
        let public = self.rotating().and_then(|r| r.member_pub.get(&from).copied());
        self.n.key_requests_sent += 1;
        self.send_control(cx, from, public, KEY_REQUEST, &[&key_id.to_le_bytes()]);
        self.arm_retry(cx);
    }

    fn on_key_request(&mut self, cx: &mut Context<'_>, from: MemberId, outer: &Outer, body: &[u8]) {
        let Ok(id) = decode_key_request(body) else { return cx.drop_malformed("bad_control") };
        let peer = self.peers.get(&(from, outer.session)).expect("the session was just recorded");
        let (verified, proven) = (peer.verified, peer.proven);
        let in_view = self.view.contains(&from);
        let Mode::Rotating(rot) = &self.mode else { return cx.drop_malformed("bad_control") };
        let Some(own) = rot.own.iter().find(|k| k.key.id == id) else { return cx.drop_malformed("key_refused") };
        if !in_view || !own.view.contains(&from) {
            return cx.drop_malformed("key_refused");
        }
        if !(verified && proven) {
            // Prove the identity first; the requester asks again.
            let session = outer.session;
            if self.peers.get(&(from, session)).is_some_and(|p| p.challenge.is_none()) {
                self.challenge(cx, from, session);
            }
            return cx.drop_malformed("key_refused");
        }
        self.send_key(cx, from, id);
    }

    fn on_key(&mut self, cx: &mut Context<'_>, from: MemberId, outer: &Outer, body: &[u8]) {
        if outer.kind != SEALED_PAIR || body.len() != 36 {
            return cx.drop_malformed("bad_control");
        }
        let id = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
        let Ok(raw) = decode_key(&body[4..]) else { return cx.drop_malformed("bad_control") };
        let key = SealKey::new(raw);
        if key.id != id {
            return cx.drop_malformed("bad_control");
        }
        self.tick += 1;
        let tick = self.tick;
        let Mode::Rotating(rot) = &mut self.mode else { return cx.drop_malformed("bad_control") };
        rot.requests.remove(&(from, id));
        if !rot.peer_keys.contains_key(&(from, id)) {
            let mine: Vec<(u32, u64)> = rot.peer_keys.iter().filter(|((m, _), _)| *m == from).map(|((_, k), (_, t))| (*k, *t)).collect();
            if mine.len() >= KEYS_PER_MEMBER {
                if let Some((oldest, _)) = mine.iter().min_by_key(|(_, t)| *t) {
                    rot.peer_keys.remove(&(from, *oldest));
                }
            }
            rot.peer_keys.insert((from, id), (key, tick));
        }
        self.n.keys_received += 1;
        // Packets that waited for it go through the whole check again.
        let (ready, waiting): (Vec<_>, Vec<_>) = self.awaiting_key.drain(..).partition(|a| a.from == from && a.key_id == id);
        self.awaiting_key = waiting.into();
        for a in ready {
            self.held_count -= 1;
            self.held_bytes -= a.packet.len();
            self.receive(cx, a.from, a.cast, a.packet);
        }
    }

    fn on_notice(&mut self, cx: &mut Context<'_>, from: MemberId, packet: &[u8]) {
        let mut r = Reader::new(packet);
        let parsed = (|| Ok::<_, strata_stack::Malformed>((r.u8()?, r.u8()?, r.u32()?)))();
        let Ok((_, reason, their_id)) = parsed else { return cx.drop_malformed("truncated") };
        if r.finish().is_err() {
            return cx.drop_malformed("truncated");
        }
        self.n.notices_received += 1;
        let what = match reason {
            NOTICE_WRONG_KEY => format!("{from} cannot admit this member: it uses a different key (its key id {their_id:08x}); check key_file"),
            NOTICE_UNTRUSTED => format!("{from} cannot admit this member: its trust file does not list this member's identity"),
            _ => return cx.drop_malformed("bad_control"),
        };
        self.report(cx, from.addr(), reason, what);
    }

    /// Counts a refused packet and tells its sender, at most once a second
    /// per address.
    fn refuse_sender(&mut self, cx: &mut Context<'_>, from: MemberId, reason: u8, our_id: u32, counter: &'static str) {
        cx.drop_malformed(counter);
        if self.is_verified_member(from) {
            // A member this one already talks to: the packet was damaged
            // or forged in its name; it gets no notice.
            return;
        }
        let now = cx.now();
        self.notices_sent.retain(|(_, at)| now.saturating_since(*at) < NOTICE_INTERVAL);
        if self.notices_sent.iter().any(|(a, _)| *a == from.addr()) || self.notices_sent.len() >= MAX_REPORTED {
            return;
        }
        self.notices_sent.push_back((from.addr(), now));
        self.n.notices_sent += 1;
        cx.down(Down::Send { to: from, msg: Msg::new(notice(reason, our_id)) });
    }

    /// Whether `from` is in the view and has a verified session here.
    fn is_verified_member(&self, from: MemberId) -> bool {
        self.view.contains(&from) && self.peers.iter().any(|((m, _), p)| *m == from && p.verified)
    }

    /// Reports `what` once per (address, reason), and for the first
    /// `MAX_REPORTED` of those only: notices can be forged, and must not
    /// flood the application.
    fn report(&mut self, cx: &mut Context<'_>, addr: SocketAddr, reason: u8, what: String) {
        let about_member = self.view.members().iter().any(|m| m.addr() == addr && self.is_verified_member(*m));
        if about_member || self.reported.contains(&(addr, reason)) || self.reported.len() >= MAX_REPORTED {
            return;
        }
        self.reported.push_back((addr, reason));
        tracing::warn!(layer = "ENCRYPT", "{what}");
        cx.up(Up::Problem(Problem { layer: "ENCRYPT", what }));
    }

    fn arm_retry(&mut self, cx: &mut Context<'_>) {
        if cx.timer(RETRY_TIMER).is_none() {
            cx.set_timer(RETRY_TIMER, cx.now() + self.cfg.retry);
        }
    }

    fn retry(&mut self, cx: &mut Context<'_>) {
        let retries = self.cfg.retries;
        // Challenges: ask again, or give up on the session's held packets.
        let pending: Vec<((MemberId, Session), u32)> = self.peers.iter().filter_map(|(k, p)| p.challenge.map(|(_, t)| (*k, t))).collect();
        for ((from, session), tries) in pending {
            if tries + 1 >= retries {
                let peer = self.peers.get_mut(&(from, session)).expect("listed above");
                peer.challenge = None;
                let held = std::mem::take(&mut peer.held);
                for _ in &held {
                    cx.drop_malformed("unverified_expired");
                }
                self.release_held_count(&held);
            } else {
                self.challenge(cx, from, session);
            }
        }
        let requests: Vec<((MemberId, u32), u32)> = self.rotating().map(|r| r.requests.iter().map(|(k, t)| (*k, *t)).collect()).unwrap_or_default();
        for ((from, id), tries) in requests {
            if tries + 1 >= retries || !self.view.contains(&from) {
                if let Some(r) = self.rotating() {
                    r.requests.remove(&(from, id));
                }
                let before = self.awaiting_key.len();
                let mut freed = 0;
                self.awaiting_key.retain(|a| {
                    let keep = !(a.from == from && a.key_id == id);
                    if !keep {
                        freed += a.packet.len();
                    }
                    keep
                });
                let dropped = before - self.awaiting_key.len();
                self.held_count -= dropped;
                self.held_bytes -= freed;
                for _ in 0..dropped {
                    cx.drop_malformed("key_unavailable");
                }
            } else {
                if let Some(r) = self.rotating() {
                    r.requests.insert((from, id), tries + 1);
                }
                self.request_key(cx, from, id);
            }
        }
        let busy = self.peers.values().any(|p| p.challenge.is_some()) || self.rotating().is_some_and(|r| !r.requests.is_empty());
        if busy {
            self.arm_retry(cx);
        }
    }
}

fn refusal_reason(r: Refusal) -> &'static str {
    match r {
        Refusal::Replay => "replay",
        Refusal::TooOld => "too_old",
    }
}

fn deliver(cx: &mut Context<'_>, from: MemberId, cast: bool, body: Bytes) {
    let msg = Msg::new(body);
    cx.up(if cast { Up::Cast { from, msg } } else { Up::Send { from, msg } });
}

impl Layer for Encrypt {
    fn init(&mut self, cx: &mut Context<'_>) {
        self.rng = ChaCha20Rng::from_seed(cx.entropy());
        self.rng.fill_bytes(&mut self.session);
        self.view = cx.view().clone();
        match self.load_keys(cx.group()) {
            Ok(mode) => self.mode = mode,
            Err(reason) => return cx.refuse(reason),
        }
        let view = self.view.clone();
        self.rotate(cx, view);
    }

    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::Cast(msg) => self.seal_down(cx, Dest::Cast, msg),
            Down::Send { to, msg } => self.seal_down(cx, Dest::To(to), msg),
            Down::View(v) => {
                self.view = v.clone();
                self.rotate(cx, v.clone());
                cx.down(Down::View(v));
            }
            other => cx.down(other),
        }
    }

    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        match ev {
            Up::Cast { from, msg } => self.receive(cx, from, true, msg.into_body()),
            Up::Send { from, msg } => self.receive(cx, from, false, msg.into_body()),
            other => cx.up(other),
        }
    }

    fn timeout(&mut self, cx: &mut Context<'_>, key: TimerKey) {
        if key == RETRY_TIMER {
            self.retry(cx);
        }
    }

    fn stats(&self, out: &mut Stats) {
        let n = &self.n;
        out.add("sealed", n.sealed).add("opened", n.opened).add("bytes_sealed", n.bytes_sealed);
        out.add("sessions", self.peers.len() as u64).add("sessions_verified", n.sessions_verified).add("challenges_sent", n.challenges_sent);
        out.add("held", self.held_count as u64).add("held_bytes", self.held_bytes as u64);
        out.add("rotations", n.rotations).add("keys_sent", n.keys_sent).add("keys_received", n.keys_received).add("key_requests_sent", n.key_requests_sent);
        out.add("notices_sent", n.notices_sent).add("notices_received", n.notices_received);
    }
}
