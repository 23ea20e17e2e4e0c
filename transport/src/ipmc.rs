//! IP multicast: a group cast is one datagram to the group's multicast
//! address, whatever the size of the view; point-to-point sends are UDP
//! unicast, exactly as [`udp`](crate::udp).
//!
//! - **Sockets.** One unicast socket (the member's address: its id, the
//!   destination of sends, and the source of everything this transport
//!   sends, casts included) with `IP_MULTICAST_IF`, `IP_MULTICAST_TTL` and
//!   `IP_MULTICAST_LOOP` set from [`IpmcConfig`]. One receive socket per
//!   multicast address:port in use, bound to it with `SO_REUSEADDR` and
//!   `SO_REUSEPORT` (so that several processes on one host each receive
//!   every datagram) and a membership (`IP_ADD_MEMBERSHIP`) on the
//!   interface. Groups that map to the same address:port share a socket; it
//!   is closed (and the membership left) when the last of them closes.
//! - **Addresses.** A group's address is [`IpmcConfig::addresses`]'s entry
//!   for its name if there is one, else [`group_address`] of the name: every
//!   member computes the same without configuration.
//! - **Receive.** Datagrams on a multicast socket whose source is this
//!   transport's own unicast address are its own looped-back casts: dropped
//!   and counted (`own_multicast`; not a drop reason). Datagrams of other
//!   groups that share the address reach the driver, which counts them as
//!   `unknown_group`.
//! - **Discovery** ([`Transport::discover`]). A probe is a 6-byte datagram,
//!   not a frame (frames start with 0xA1):
//!
//!   ```text
//!   +------+------+-----------------+
//!   | 0xD5 | kind | group id u32 BE |   kind 1 = probe, 2 = answer
//!   +------+------+-----------------+
//!   ```
//!
//!   A probe goes to the group's multicast address. A transport that carries
//!   the group (the group is open: joined, or itself in discovery) answers a
//!   probe from anyone else with an answer sent unicast to the probe's
//!   source, and notes the prober; the prober notes whoever answers. Both
//!   lists ([`Transport::discovered`]) hold at most [`MAX_DISCOVERED`]
//!   addresses per group. Discovery datagrams never reach the driver;
//!   malformed ones (wrong length or kind) are counted
//!   (`malformed_discovery`) and dropped.
//! - **Bundling** ([`IpmcConfig::bundle`], on by default): as
//!   [`udp`](crate::udp). The casts of one driver round to a group's
//!   multicast address leave packed into as few datagrams as the limit
//!   allows (groups that share an address share its bundles: the driver
//!   tells their frames apart by group id), and so do the sends to each
//!   unicast destination. Discovery datagrams are never bundled. A bundle
//!   received is opened after the own-cast and discovery checks (which look
//!   at the whole datagram). See the [`bundle`] module.
//! - **Batching, buffers, errors**: as [`udp`](crate::udp) (the same code).
//!
//! Counters: those of UDP (bundling's included), and `cast_calls` (casts the driver handed
//! over), `casts_multicast` (those sent to the group's multicast address,
//! bundled or not; the rest went unicast to each peer),
//! `unicast_datagrams` (point-to-point frames handed to the sender, one per destination; with bundling several may share a datagram),
//! `own_multicast`, `discovery_probes_sent`, `discovery_probes_received`,
//! `discovery_answers_sent`, `discovery_answers_received`,
//! `malformed_discovery`, `multicast_sockets`.

use crate::batch::{self, IoCounters, Receiver, Sender};
use crate::bundle::{self, DEFAULT_BUNDLE_BYTES};
use crate::udp::{udp_socket, MAX_DATAGRAM, RECV_BATCH, SOCKET_BUFFER_BYTES};
use bytes::Bytes;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::task::{Context, Poll};
use strata_stack::codec::fnv1a64;
use strata_stack::runtime::Transport;
use strata_stack::Stats;
use tokio::net::UdpSocket;

/// First byte of a discovery datagram (never a frame's: those start with 0xA1).
pub const DISCOVERY_MAGIC: u8 = 0xD5;
/// Length of a discovery datagram: magic, kind, group id.
const DISCOVERY_LEN: usize = 6;
const KIND_PROBE: u8 = 1;
const KIND_ANSWER: u8 = 2;
/// Addresses noted per group by discovery.
pub const MAX_DISCOVERED: usize = 64;
/// Ports [`group_address`] picks from: below Linux's ephemeral range (32768..).
pub const GROUP_PORTS: std::ops::Range<u16> = 20_000..30_000;

/// How an [`IpmcTransport`] sends and receives multicast.
#[derive(Clone, Debug)]
pub struct IpmcConfig {
    /// The interface multicast leaves by and is received on (by its IPv4
    /// address). `None`: the unicast bind address, or the kernel's choice if
    /// that is 0.0.0.0.
    pub interface: Option<Ipv4Addr>,
    /// IP_MULTICAST_TTL: 1 keeps casts on the local network.
    pub ttl: u32,
    /// IP_MULTICAST_LOOP: whether casts are also delivered on this host, so
    /// that several members on one host hear each other. Default true.
    pub loopback: bool,
    /// Multicast address and port per group name, instead of [`group_address`].
    pub addresses: BTreeMap<String, SocketAddrV4>,
    /// Batch system calls, as [`UdpConfig::batch`](crate::udp::UdpConfig::batch). Default true.
    pub batch: bool,
    /// Largest bundle in bytes, as [`UdpConfig::bundle`](crate::udp::UdpConfig::bundle):
    /// per driver round, one bundle (or as few as fit) per multicast address
    /// and per unicast destination. Default [`DEFAULT_BUNDLE_BYTES`]; 0 turns
    /// bundling off.
    pub bundle: usize,
}

impl Default for IpmcConfig {
    fn default() -> Self {
        IpmcConfig { interface: None, ttl: 1, loopback: true, addresses: BTreeMap::new(), batch: true, bundle: DEFAULT_BUNDLE_BYTES }
    }
}

/// The default multicast address and port of group `name`.
///
/// From the 64-bit FNV-1a hash `h` of the name's UTF-8 bytes: the address
/// is `239.a.b.c` with `a = 1 + (h mod 254)`, skipping 128 (so `a` is one
/// of 1..=127, 129..=254, 255 taking 128's place), `b = (h >> 8) mod 256`,
/// `c = (h >> 16) mod 256`, and the port is `20000 + ((h >> 32) mod 10000)`.
/// 239.0.0.0/8 is administratively scoped (RFC 2365); with `a` never 0 or
/// 128 the address's MAC never aliases 224.0.0.x (link-local control
/// traffic, which switches flood), and the port lies below Linux's
/// ephemeral range, so no outgoing socket is given it by chance.
pub fn group_address(name: &str) -> SocketAddrV4 {
    let h = fnv1a64(name.as_bytes());
    let a = match 1 + (h % 254) as u8 {
        128 => 255,
        a => a,
    };
    let ip = Ipv4Addr::new(239, a, (h >> 8) as u8, (h >> 16) as u8);
    let span = u64::from(GROUP_PORTS.end - GROUP_PORTS.start);
    let port = GROUP_PORTS.start + ((h >> 32) % span) as u16;
    SocketAddrV4::new(ip, port)
}

/// Multicast-specific counters.
#[derive(Default, Debug)]
struct McCounters {
    cast_calls: u64,
    casts_multicast: u64,
    unicast_datagrams: u64,
    own_multicast: u64,
    probes_sent: u64,
    probes_received: u64,
    answers_sent: u64,
    answers_received: u64,
    malformed_discovery: u64,
}

/// A group this transport carries.
struct OpenGroup {
    addr: SocketAddrV4,
    /// Who answered our probes or probed us.
    discovered: Vec<SocketAddr>,
}

/// A receive socket bound to a multicast address:port.
struct McastSocket {
    addr: SocketAddrV4,
    socket: UdpSocket,
    /// Open groups that use it.
    users: usize,
}

/// IP multicast for casts, UDP unicast for sends, as a [`Transport`].
pub struct IpmcTransport {
    unicast: UdpSocket,
    local: SocketAddr,
    /// The source address of our datagrams as others see them (the unicast
    /// address; with a 0.0.0.0 bind, the IP the kernel picks for multicast).
    own_ip: Option<Ipv4Addr>,
    /// The interface multicast uses (`None`: the kernel's choice).
    interface: Option<Ipv4Addr>,
    config: IpmcConfig,
    receiver: Receiver,
    sender: Sender,
    counters: IoCounters,
    mc: McCounters,
    groups: BTreeMap<u32, OpenGroup>,
    sockets: Vec<McastSocket>,
    /// Datagrams just read, before discovery and own copies are taken out.
    scratch: Vec<(SocketAddr, Bytes)>,
}

impl std::fmt::Debug for IpmcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpmcTransport").field("local", &self.local).field("interface", &self.interface).finish_non_exhaustive()
    }
}

impl IpmcTransport {
    /// Binds the unicast socket (IPv4 only; port 0 lets the OS pick) and
    /// sets its multicast options from `config`. Groups' sockets are opened
    /// when the driver opens the groups. Must be called inside a tokio runtime.
    pub async fn bind(unicast: SocketAddr, config: IpmcConfig) -> io::Result<IpmcTransport> {
        let SocketAddr::V4(v4) = unicast else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "IP multicast needs an IPv4 unicast address"));
        };
        let interface = config.interface.or_else(|| Some(*v4.ip()).filter(|ip| !ip.is_unspecified()));
        let socket = udp_socket(unicast)?;
        if let Some(ip) = interface {
            socket.set_multicast_if_v4(&ip)?;
        }
        socket.set_multicast_ttl_v4(config.ttl)?;
        socket.set_multicast_loop_v4(config.loopback)?;
        socket.bind(&unicast.into())?;
        let std_socket: std::net::UdpSocket = socket.into();
        let unicast = UdpSocket::from_std(std_socket)?;
        let local = unicast.local_addr()?;
        let own_ip = if v4.ip().is_unspecified() { interface.or_else(multicast_source_ip) } else { Some(*v4.ip()) };
        Ok(IpmcTransport {
            unicast,
            local,
            own_ip,
            interface,
            receiver: Receiver::new(config.batch),
            sender: Sender::new(config.batch, config.bundle),
            config,
            counters: IoCounters::default(),
            mc: McCounters::default(),
            groups: BTreeMap::new(),
            sockets: Vec::new(),
            scratch: Vec::with_capacity(RECV_BATCH),
        })
    }

    /// The multicast address and port group `group_name` uses here.
    pub fn address_of(&self, group_name: &str) -> SocketAddrV4 {
        self.config.addresses.get(group_name).copied().unwrap_or_else(|| group_address(group_name))
    }

    /// The interface multicast uses (`None`: the kernel's choice).
    pub fn interface(&self) -> Option<Ipv4Addr> {
        self.interface
    }

    /// One line for logs: the unicast address and the multicast options.
    pub fn describe(&self) -> String {
        let interface = self.interface.map_or_else(|| "kernel's choice".to_string(), |ip| ip.to_string());
        format!("ip multicast from {} (interface {interface}, ttl {}, loopback {})", self.local, self.config.ttl, self.config.loopback)
    }

    /// Whether `from` is this transport's own unicast address.
    fn is_own(&self, from: SocketAddr) -> bool {
        from == self.local || (self.local.ip().is_unspecified() && from.port() == self.local.port() && self.own_ip.map(IpAddr::V4) == Some(from.ip()))
    }

    /// A receive socket bound to `addr` with a membership on the interface.
    fn open_socket(&self, addr: SocketAddrV4) -> io::Result<UdpSocket> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        socket.set_nonblocking(true)?;
        // Bound to the group's address, the socket receives that group's
        // datagrams only, not every group's on the same port.
        socket.bind(&SocketAddr::V4(addr).into())?;
        socket.join_multicast_v4(addr.ip(), &self.interface.unwrap_or(Ipv4Addr::UNSPECIFIED))?;
        UdpSocket::from_std(socket.into())
    }

    /// Moves what is in `scratch` to `out`, taking out discovery datagrams
    /// and (from a multicast socket) our own looped-back casts.
    fn sort_received(&mut self, multicast: bool, out: &mut Vec<(SocketAddr, Bytes)>) {
        let mut scratch = std::mem::take(&mut self.scratch);
        for (from, data) in scratch.drain(..) {
            if multicast && self.is_own(from) {
                self.mc.own_multicast += 1;
            } else if data.first() == Some(&DISCOVERY_MAGIC) {
                self.discovery_datagram(from, &data);
            } else {
                bundle::receive(from, data, out, &mut self.counters.bundles);
            }
        }
        self.scratch = scratch;
    }

    fn discovery_datagram(&mut self, from: SocketAddr, data: &[u8]) {
        let parsed = match data {
            [DISCOVERY_MAGIC, kind @ (KIND_PROBE | KIND_ANSWER), a, b, c, d] => Some((*kind, u32::from_be_bytes([*a, *b, *c, *d]))),
            _ => None,
        };
        let Some((kind, gid)) = parsed else {
            self.mc.malformed_discovery += 1;
            tracing::debug!(%from, len = data.len(), "dropped a malformed discovery datagram");
            return;
        };
        if kind == KIND_PROBE {
            self.mc.probes_received += 1;
        } else {
            self.mc.answers_received += 1;
        }
        let local = self.local;
        let Some(group) = self.groups.get_mut(&gid) else { return };
        if from != local && group.discovered.len() < MAX_DISCOVERED && !group.discovered.contains(&from) {
            group.discovered.push(from);
        }
        if kind == KIND_PROBE {
            let answer = discovery_datagram(KIND_ANSWER, gid);
            // At once, not queued: the driver's round may already have flushed.
            self.sender.send_each(&self.unicast, &[from], &[&answer], &mut self.counters);
            self.mc.answers_sent += 1;
        }
    }
}

fn discovery_datagram(kind: u8, gid: u32) -> [u8; DISCOVERY_LEN] {
    let g = gid.to_be_bytes();
    [DISCOVERY_MAGIC, kind, g[0], g[1], g[2], g[3]]
}

/// The source IP the kernel picks for multicast (a 0.0.0.0 bind): that of
/// a socket "connected" to a multicast address. `None` if that fails.
fn multicast_source_ip() -> Option<Ipv4Addr> {
    let probe = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    probe.connect(group_address("strata ipmc source probe")).ok()?;
    match probe.local_addr().ok()? {
        SocketAddr::V4(a) if !a.ip().is_unspecified() => Some(*a.ip()),
        _ => None,
    }
}

impl Transport for IpmcTransport {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn max_datagram(&self) -> usize {
        MAX_DATAGRAM
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>, out: &mut Vec<(SocketAddr, Bytes)>) -> Poll<io::Result<()>> {
        let start = out.len();
        // Whether some socket returned without registering the waker.
        let mut unregistered = false;
        let mut error = None;
        for i in 0..=self.sockets.len() {
            let polled = match i.checked_sub(1) {
                None => self.receiver.poll_recv(&self.unicast, cx, &mut self.counters, &mut self.scratch, RECV_BATCH),
                Some(s) => self.receiver.poll_recv(&self.sockets[s].socket, cx, &mut self.counters, &mut self.scratch, RECV_BATCH),
            };
            match polled {
                Poll::Ready(Ok(())) => unregistered = true,
                Poll::Ready(Err(e)) => {
                    unregistered = true;
                    error.get_or_insert(e);
                }
                Poll::Pending => {}
            }
            self.sort_received(i > 0, out);
        }
        if out.len() > start {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = error {
            return Poll::Ready(Err(e));
        }
        if unregistered {
            // Only discovery or own copies this time, and maybe more waiting.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    fn send(&mut self, to: &[SocketAddr], frame: &[&[u8]]) -> io::Result<()> {
        self.mc.unicast_datagrams += to.len() as u64;
        self.sender.send(&self.unicast, to, frame, &mut self.counters);
        Ok(())
    }

    fn cast(&mut self, gid: u32, peers: &[SocketAddr], frame: &[&[u8]]) -> io::Result<()> {
        self.mc.cast_calls += 1;
        match self.groups.get(&gid) {
            Some(group) => {
                self.mc.casts_multicast += 1;
                self.sender.send(&self.unicast, &[SocketAddr::V4(group.addr)], frame, &mut self.counters);
                Ok(())
            }
            // Not opened (the driver opens every group first): unicast.
            None => self.send(peers, frame),
        }
    }

    fn open_group(&mut self, gid: u32, name: &str) -> io::Result<()> {
        // Opened twice by a join after discovery: once is enough.
        if self.groups.contains_key(&gid) {
            return Ok(());
        }
        let addr = self.address_of(name);
        match self.sockets.iter_mut().find(|s| s.addr == addr) {
            Some(shared) => shared.users += 1,
            None => {
                let socket = self.open_socket(addr)?;
                tracing::debug!(group = name, %addr, "multicast socket opened");
                self.sockets.push(McastSocket { addr, socket, users: 1 });
            }
        }
        self.groups.insert(gid, OpenGroup { addr, discovered: Vec::new() });
        Ok(())
    }

    fn close_group(&mut self, gid: u32) {
        let Some(group) = self.groups.remove(&gid) else { return };
        if let Some(i) = self.sockets.iter().position(|s| s.addr == group.addr) {
            self.sockets[i].users -= 1;
            if self.sockets[i].users == 0 {
                let closing = self.sockets.swap_remove(i);
                let _ = socket2::SockRef::from(&closing.socket).leave_multicast_v4(closing.addr.ip(), &self.interface.unwrap_or(Ipv4Addr::UNSPECIFIED));
                tracing::debug!(addr = %closing.addr, "multicast socket closed");
            }
        }
    }

    fn flush(&mut self) {
        self.sender.flush(&self.unicast, &mut self.counters);
    }

    fn discovers(&self) -> bool {
        true
    }

    fn discover(&mut self, gid: u32) {
        let Some(group) = self.groups.get(&gid) else { return };
        let probe = discovery_datagram(KIND_PROBE, gid);
        let to = SocketAddr::V4(group.addr);
        self.sender.send_each(&self.unicast, &[to], &[&probe], &mut self.counters);
        self.mc.probes_sent += 1;
    }

    fn discovered(&self, gid: u32) -> Vec<SocketAddr> {
        self.groups.get(&gid).map(|g| g.discovered.clone()).unwrap_or_default()
    }

    fn stats(&self, out: &mut Stats) {
        self.counters.report(out);
        let m = &self.mc;
        out.add("cast_calls", m.cast_calls)
            .add("casts_multicast", m.casts_multicast)
            .add("unicast_datagrams", m.unicast_datagrams)
            .add("own_multicast", m.own_multicast)
            .add("discovery_probes_sent", m.probes_sent)
            .add("discovery_probes_received", m.probes_received)
            .add("discovery_answers_sent", m.answers_sent)
            .add("discovery_answers_received", m.answers_received)
            .add("malformed_discovery", m.malformed_discovery)
            .add("multicast_sockets", self.sockets.len() as u64);
        batch::report_buffers(&self.unicast, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_addresses_are_administratively_scoped_and_never_alias_link_local() {
        for i in 0..5000 {
            let a = group_address(&format!("group-{i}"));
            let [first, second, ..] = a.ip().octets();
            assert_eq!(first, 239, "{a}");
            assert!(second != 0 && second != 128, "{a} aliases 224.0.0.x");
            assert!(GROUP_PORTS.contains(&a.port()), "{a}");
        }
        assert_eq!(group_address("chat"), group_address("chat"), "deterministic");
        assert_ne!(group_address("chat"), group_address("chat2"));
    }

    #[test]
    fn group_address_is_stable_across_releases() {
        // Members built from different versions must agree: pin the derivation.
        let h = fnv1a64(b"chat");
        let a = group_address("chat");
        assert_eq!(a.port(), 20_000 + ((h >> 32) % 10_000) as u16);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn discovery_datagrams_are_not_frames() {
        let d = discovery_datagram(KIND_PROBE, 0xA1A1_A1A1);
        assert_eq!(d.len(), DISCOVERY_LEN);
        assert_eq!(strata_stack::engine::peek_group(&d), None);
    }
}
