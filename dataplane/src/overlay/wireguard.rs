//! The WireGuard engine: boringtun's [`Tunn`] state machines with Shoal's own I/O — a TAP device
//! in the tunnel namespace and a UDP socket bound to the data-path address in the node's.
//!
//! Three threads: one reads the TAP device and encrypts towards the peer owning the inner
//! destination address, one receives datagrams and decrypts into the TAP device, one drives the
//! protocol's timers. The I/O sits in [`Io`], apart from the protocol side:
//!
//! - the TAP device hands over super-packets (TSO and UDP tunnel GSO, see
//!   [`super::offload`]), cut into packets in userspace and encrypted one by one;
//! - encrypted datagrams go out [`BATCH`] at a time with one `sendmmsg`, and a run of them to one
//!   peer as one UDP GSO message (`UDP_SEGMENT`), so the kernel walks its send path once per run;
//! - the socket takes UDP GRO: one `recvmmsg` returns up to [`BATCH`] messages, each possibly
//!   many datagrams the kernel coalesced; decrypted packets that continue one TCP stream are
//!   merged back into super-packets ([`Coalescer`]) and the TAP device takes each in one write;
//! - a peer's tunnels are locked for the protocol only, never across a system call, so the two
//!   I/O threads do not wait on each other's kernel work.
//!
//! **Key rotation without breaking traffic.** A peer's tunnel is a list of *generations*, one per
//! (our key, their key) pair. When either key changes, a new generation is created next to the
//! active one and starts a handshake, while traffic keeps flowing on the active one. Once the new
//! generation has a session it becomes active; the old one stays to decrypt packets still in
//! flight until its keys would expire anyway. A node that installs a new key therefore keeps
//! talking to its peers with the old sessions until each peer has learnt the new public key.
//!
//! **A hostile data network.** What arrives on the UDP socket is checked from the cheapest test
//! up, so that nobody can make the engine do expensive work for free:
//!
//! ```text
//!  datagram ─ parse (type, length) ─ from the address of the peer it names? ─────── no: dropped
//!   initiation: anything left of the peer's budget this second? ───────────────────── no: dropped
//!               MAC1 right for one of our keys? (keyed BLAKE2s, no X25519) ───────── no: dropped
//!               under load (boringtun's RateLimiter, one per key of ours)? ─── cookie reply, or
//!               within the peer's budget this second? ──────────────────────── no: dropped
//!               X25519: whose key is it? the peer at that address? ─────────── no: dropped
//!   everything: the Tunn (AEAD, replay window, timestamps)
//!   decrypted:  IPv4/UDP from the peer to our VXLAN port, on a VNI it shares with us? ── no: dropped
//! ```
//!
//! Every refusal is counted per peer (see [`PeerStatus`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};

use super::affinity::{IoThread, Placement};
use super::keys::Key;
use super::model::WgConfig;
use super::offload::{Coalescer, ETH_HLEN, Segments, VNET_HDR_LEN, VnetHdr, strip_ethernet};

/// How long a replaced generation keeps decrypting: WireGuard's REJECT_AFTER_TIME.
const RETIRE_AFTER: Duration = Duration::from_secs(180);
/// How often the protocol timers run.
const TICK: Duration = Duration::from_millis(250);
/// Socket buffer size: the default 208 KiB drops bursts at Gbit/s rates.
const SOCKET_BUFFER: libc::c_int = 8 << 20;
/// The largest datagram or TAP packet handled.
const MAX_PACKET: usize = 65_535;
/// Datagrams sent with one `sendmmsg`, or received with one `recvmmsg`, at most: under load the
/// engine makes one system call per batch on the socket instead of one per packet.
const BATCH: usize = 32;
/// Datagrams in one UDP GSO message, at most (the kernel's `UDP_MAX_SEGMENTS` is 64 or more).
const GSO_MAX_SEGMENTS: usize = 64;
/// Bytes in one UDP GSO message, at most (one IPv4 datagram's worth, headers aside).
const GSO_MAX_BYTES: usize = 65_000;
/// `UDP_SEGMENT` and `UDP_GRO` (linux/udp.h), options at `SOL_UDP`.
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Room a WireGuard data message takes beyond its packet (header, padding, tag), rounded up.
const WG_OVERHEAD: usize = 64;
/// Aligned words of control-message room per message: one `UDP_SEGMENT` or `UDP_GRO`.
const CONTROL_WORDS: usize = 4;
/// Handshake messages with a valid MAC1 accepted a second, all peers together, before cookies
/// are demanded (boringtun's `RateLimiter` count, kept by the engine alone): boringtun's own
/// device allows 100.
const HANDSHAKE_LOAD_LIMIT: u64 = 100;
/// Initiations from one peer's address that may cost X25519 in one second; the rest are
/// dropped. A genuine peer makes one every two minutes per key pair. (The kernel's WireGuard
/// allows 20 handshake packets a second from one address once it is under load.)
const PEER_HANDSHAKES_PER_SECOND: u32 = 20;
/// Cookie replies sent to one peer's address in one second; beyond that, initiations that would
/// get one are dropped. Bounds what a flood that spoofs a peer's address makes us send to it.
const PEER_COOKIES_PER_SECOND: u32 = 20;
/// The size of a cookie reply.
const COOKIE_REPLY: usize = 64;

/// The engine's descriptors.
#[derive(Debug)]
struct Io {
    tun: OwnedFd,
    /// Whether the TAP device takes super-packets ([`Coalescer`]).
    tun_gso: bool,
    udp: UdpSocket,
    /// An eventfd written once to stop the I/O threads.
    stop: OwnedFd,
    /// Whether runs of datagrams go out as one UDP GSO message (`UDP_SEGMENT`); cleared for
    /// good the first time the kernel refuses one (an egress device without checksum offload).
    gso: AtomicBool,
}

/// One (our key, their key) pair's tunnel.
struct Generation {
    tunn: Tunn,
    index: u32,
    ours: Key,
    theirs: Key,
}

/// A peer's generations, and what they may carry.
struct Tunnels {
    active: Generation,
    pending: Option<Generation>,
    retired: Vec<(Generation, Instant)>,
    /// The VNIs the peer may send into: the encrypted networks it has tasks on, which are the
    /// ones we send it (see [`super::model::WgPeer::vnis`]).
    vnis: BTreeSet<u32>,
    /// Key changes completed with this peer (a pending generation made active).
    rotations: u64,
}

impl Tunnels {
    fn all_mut(&mut self) -> impl Iterator<Item = &mut Generation> {
        std::iter::once(&mut self.active)
            .chain(self.pending.as_mut())
            .chain(self.retired.iter_mut().map(|(g, _)| g))
    }

    /// The generation with local index `index`, and the VNIs (borrowed alongside).
    fn find(&mut self, index: u32) -> Option<(&mut Generation, &BTreeSet<u32>)> {
        let Tunnels {
            active,
            pending,
            retired,
            vnis,
            ..
        } = self;
        std::iter::once(active)
            .chain(pending.as_mut())
            .chain(retired.iter_mut().map(|(g, _)| g))
            .find(|g| g.index == index)
            .map(|g| (g, &*vnis))
    }

    /// Makes the pending generation active once it has a session.
    fn promote(&mut self, node: &str) {
        if let Some(pending) = &self.pending
            && pending.tunn.stats().0.is_some()
        {
            self.rotations += 1;
            let new = self.pending.take().expect("checked above");
            let old = std::mem::replace(&mut self.active, new);
            tracing::info!(
                peer = node,
                "WireGuard keys rotated; the previous session keeps decrypting for a while"
            );
            self.retired.push((old, Instant::now()));
        }
    }
}

struct PeerState {
    node: String,
    addr: Ipv4Addr,
    endpoint: SocketAddr,
    tunnels: Mutex<Tunnels>,
    /// Handshake work spent on this peer's address in the current second.
    budget: Budget,
    refused: Refusals,
    /// Handshake messages from the peer (initiations and responses) its session took.
    handshakes: AtomicU64,
}

/// What one peer's address may cost us in handshakes per second; reset by the timer thread.
#[derive(Debug, Default)]
struct Budget {
    handshakes: AtomicU32,
    cookies: AtomicU32,
}

impl Budget {
    fn take(used: &AtomicU32, limit: u32) -> bool {
        used.fetch_add(1, Ordering::Relaxed) < limit
    }

    fn handshake(&self) -> bool {
        Self::take(&self.handshakes, PEER_HANDSHAKES_PER_SECOND)
    }

    fn cookie(&self) -> bool {
        Self::take(&self.cookies, PEER_COOKIES_PER_SECOND)
    }

    /// Whether nothing more from this address can be answered this second: then even its
    /// MAC1 is not worth checking.
    fn spent(&self) -> bool {
        self.handshakes.load(Ordering::Relaxed) >= PEER_HANDSHAKES_PER_SECOND
            && self.cookies.load(Ordering::Relaxed) >= PEER_COOKIES_PER_SECOND
    }

    fn reset(&self) {
        self.handshakes.store(0, Ordering::Relaxed);
        self.cookies.store(0, Ordering::Relaxed);
    }
}

/// What the engine refused from a peer's address, since the peer was configured.
#[derive(Debug, Default)]
struct Refusals {
    bad_mac1: AtomicU64,
    cookie_replies: AtomicU64,
    handshakes_limited: AtomicU64,
    packets: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One of our private keys with its X25519 forms, derived once rather than per handshake, and
/// its handshake rate limiter.
struct OurKey {
    key: Key,
    secret: boringtun::x25519::StaticSecret,
    public: boringtun::x25519::PublicKey,
    /// Checks MAC1 and the load for handshakes addressed to this key, and hands out cookies:
    /// the engine decides before any `Tunn` sees the message.
    limiter: Arc<RateLimiter>,
    /// The limiter every `Tunn` made with the key gets: it never reports load (the engine has
    /// decided already), so a handshake is counted once and a `Tunn` never asks for a cookie.
    tunn_limiter: Arc<RateLimiter>,
}

impl OurKey {
    fn new(key: &Key) -> OurKey {
        let secret = key.secret();
        let public = boringtun::x25519::PublicKey::from(&secret);
        OurKey {
            key: key.clone(),
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_LOAD_LIMIT)),
            tunn_limiter: Arc::new(RateLimiter::new(&public, u64::MAX)),
            public,
            secret,
        }
    }
}

#[derive(Default)]
struct Peers {
    by_addr: HashMap<Ipv4Addr, Arc<PeerState>>,
    /// Tunn indexes (24 bits) to their peer.
    by_index: HashMap<u32, Arc<PeerState>>,
    /// (our key, their key) of every live (active or pending) generation, to its peer and
    /// index: where an initiation goes once X25519 has told whose it is.
    by_keys: HashMap<(Key, Key), (Arc<PeerState>, u32)>,
    /// Our current key first, then older ones while live generations still use them.
    keys: Vec<Arc<OurKey>>,
}

struct Shared {
    io: Io,
    /// Set when the engine stops: the I/O loops check it on every packet, not only when idle.
    stopping: AtomicBool,
    peers: RwLock<Peers>,
    next_index: AtomicU32,
    port: u16,
    /// Our data-path address: the only inner destination accepted.
    local: Ipv4Addr,
    /// The VXLAN port: the only inner UDP destination port accepted.
    vxlan_port: AtomicU16,
    /// Datagrams from an address that is not the data-path address of the peer they name (or,
    /// for an initiation, of any peer).
    not_from_a_peer: AtomicU64,
    /// Reads from the TAP device that could not be cut into packets ([`Segments::new`]).
    offload_refused: AtomicU64,
    /// The CPUs the two I/O threads are pinned to, if any (`WgConfig::cpus`).
    placement: Placement,
}

/// A running WireGuard engine. Dropping it stops its threads and closes the TAP device.
pub struct Engine {
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
    ticker: Option<mpsc::Sender<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("io", &self.shared.io)
            .finish_non_exhaustive()
    }
}

/// One peer as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's node name.
    pub node: String,
    /// The public key the active session was made with.
    pub public_key: Key,
    /// Time since the active session's handshake, if it has one.
    pub last_handshake: Option<Duration>,
    /// Whether a key change is still waiting for its handshake.
    pub rotating: bool,
    /// Bytes sent and received over the active session.
    pub tx_bytes: usize,
    /// Bytes received.
    pub rx_bytes: usize,
    /// The VNIs accepted from it.
    pub vnis: Vec<u32>,
    /// Handshake initiations from its address with a MAC1 wrong for our keys: dropped before
    /// any X25519.
    pub bad_mac1: u64,
    /// Initiations from its address answered with a cookie reply (we were under load and they
    /// carried no valid MAC2).
    pub cookie_replies: u64,
    /// Initiations from its address dropped over its per-second budget.
    pub handshakes_limited: u64,
    /// Decrypted packets refused: not IPv4/UDP from the peer to our VXLAN port on a VNI it may
    /// send into.
    pub refused_packets: u64,
    /// Handshake messages from it (initiations and responses) that a session took.
    pub handshakes: u64,
    /// Key changes completed with it.
    pub rotations: u64,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Sets the `int` socket option `option` at `level`.
fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its length is passed alongside.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Waits until `fd` is readable; false when the engine is stopping.
fn wait_readable(fd: RawFd, stop: RawFd) -> bool {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n >= 0 {
            return fds[1].revents == 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

impl Io {
    fn read_tun(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(self.tun.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes `packet` (IPv4) to the TAP device behind its virtio-net header `hdr` (whose
    /// offsets count from the packet) and an Ethernet header to the device itself.
    fn write_tun(&self, hdr: VnetHdr, packet: &[u8]) {
        let Some(hdr) = hdr.moved(ETH_HLEN as i32) else {
            return;
        };
        let hdr = hdr.to_bytes();
        static ETHERNET: [u8; ETH_HLEN] = {
            let mut e = [0_u8; ETH_HLEN];
            let mut i = 0;
            while i < 6 {
                e[i] = TAP_MAC[i];
                e[6 + i] = PEER_MAC[i];
                i += 1;
            }
            e[12] = 0x08;
            e
        };
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: ETHERNET.as_ptr() as *mut libc::c_void,
                iov_len: ETH_HLEN,
            },
            libc::iovec {
                iov_base: packet.as_ptr() as *mut libc::c_void,
                iov_len: packet.len(),
            },
        ];
        // SAFETY: the three buffers are valid for reads of their lengths for the call; the
        // kernel only reads them.
        let n = unsafe { libc::writev(self.tun.as_raw_fd(), iov.as_ptr(), 3) };
        if n < 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "write to the TAP device");
        }
    }

    fn send(&self, datagram: &[u8], to: SocketAddr) {
        if let Err(e) = self.udp.send_to(datagram, to) {
            tracing::debug!(error = %e, %to, "WireGuard send");
        }
    }

    /// Sends each `(offset, length, to)` of `ready` (datagrams laid end to end in `buf`) with
    /// as few `sendmmsg` calls as the kernel allows. A run of datagrams to one peer, all of one
    /// length but the last (which may be shorter), goes out as one UDP GSO message: the kernel
    /// takes it through its stack once and cuts it as late as it can (on the wire, or never on
    /// a veth to a socket that takes GRO). As with [`Io::send`], what the socket cannot take now
    /// (its buffer full) is dropped, as a NIC drops: WireGuard's peers and TCP recover.
    fn send_many(&self, buf: &[u8], ready: &[(usize, usize, SocketAddrV4)]) {
        debug_assert!(ready.len() <= BATCH);
        let gso = self.gso.load(Ordering::Relaxed);
        // (first datagram, datagrams, bytes) of each message.
        let mut all_runs = [(0_usize, 0_usize, 0_usize); BATCH];
        let mut used = 0;
        for (i, &(offset, len, to)) in ready.iter().enumerate() {
            if let Some((first, count, bytes)) = all_runs[..used].last_mut() {
                let (start, size, dest) = ready[*first];
                let last = ready[*first + *count - 1];
                if gso
                    && dest == to
                    && start + *bytes == offset
                    && last.1 == size
                    && len <= size
                    && *count < GSO_MAX_SEGMENTS
                    && *bytes + len <= GSO_MAX_BYTES
                {
                    *count += 1;
                    *bytes += len;
                    continue;
                }
            }
            all_runs[used] = (i, 1, len);
            used += 1;
        }
        let runs = &all_runs[..used];
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut addrs: [libc::sockaddr_in; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let mut controls = [[0_u64; CONTROL_WORDS]; BATCH];
        for (m, &(first, count, bytes)) in runs.iter().enumerate() {
            let (offset, size, to) = ready[first];
            addrs[m] = sockaddr_in(to);
            iovs[m] = libc::iovec {
                iov_base: buf[offset..offset + bytes].as_ptr() as *mut libc::c_void,
                iov_len: bytes,
            };
            let hdr = &mut msgs[m].msg_hdr;
            hdr.msg_name = (&raw mut addrs[m]).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdr.msg_iov = &raw mut iovs[m];
            hdr.msg_iovlen = 1;
            if count > 1 {
                hdr.msg_control = controls[m].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE only computes a size.
                hdr.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
                // SAFETY: the control buffer is `CONTROL_WORDS` aligned words, more than
                // CMSG_SPACE(2); CMSG_FIRSTHDR points into it and the header and its data are
                // written inside it.
                unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(hdr);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    libc::CMSG_DATA(cmsg)
                        .cast::<u16>()
                        .write_unaligned(size as u16);
                }
            }
        }
        let mut sent = 0;
        while sent < runs.len() {
            // SAFETY: `msgs[sent..runs.len()]` point into `addrs`, `iovs`, `controls` and `buf`,
            // all alive and unmoved for the duration of the call.
            let n = unsafe {
                libc::sendmmsg(
                    self.udp.as_raw_fd(),
                    msgs[sent..].as_mut_ptr(),
                    (runs.len() - sent) as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // The kernel cannot segment for this route: never again, and these go out
                    // one by one.
                    Some(libc::EIO | libc::EINVAL) if gso && runs[sent].1 > 1 => {
                        tracing::info!(error = %e, "UDP GSO refused; WireGuard sends datagram by datagram");
                        self.gso.store(false, Ordering::Relaxed);
                        self.send_many(buf, &ready[runs[sent].0..]);
                        return;
                    }
                    _ => {}
                }
                tracing::debug!(error = %e, dropped = runs.len() - sent, "WireGuard send");
                return;
            }
            sent += n as usize;
        }
    }

    /// Receives up to [`BATCH`] messages into `buffers` with one `recvmmsg`: how many, with
    /// each one's length, sender and, when the kernel coalesced datagrams (UDP GRO), the size
    /// they are to be cut at, in `got`.
    fn recv_many(&self, buffers: &mut [Vec<u8>], got: &mut [Received; BATCH]) -> io::Result<usize> {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut addrs: [libc::sockaddr_in; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let mut controls = [[0_u64; CONTROL_WORDS]; BATCH];
        let count = buffers.len().min(BATCH);
        for i in 0..count {
            iovs[i] = libc::iovec {
                iov_base: buffers[i].as_mut_ptr().cast(),
                iov_len: buffers[i].len(),
            };
            let hdr = &mut msgs[i].msg_hdr;
            hdr.msg_name = (&raw mut addrs[i]).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdr.msg_iov = &raw mut iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = controls[i].as_mut_ptr().cast();
            hdr.msg_controllen = size_of::<[u64; CONTROL_WORDS]>() as _;
        }
        // SAFETY: `msgs[..count]` point into `addrs`, `iovs`, `controls` and `buffers`, all
        // alive, unmoved and writable for the duration of the call.
        let n = unsafe {
            libc::recvmmsg(
                self.udp.as_raw_fd(),
                msgs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let addr = addrs[i];
            let len = msgs[i].msg_len as usize;
            let mut segment = len.max(1);
            let hdr = &msgs[i].msg_hdr;
            // SAFETY: the kernel wrote `msg_controllen` bytes of control messages into the
            // control buffer; the CMSG_* macros walk them within that length.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                        let size = libc::CMSG_DATA(cmsg).cast::<libc::c_int>().read_unaligned();
                        if size > 0 {
                            segment = size as usize;
                        }
                    }
                    cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
                }
            }
            got[i] = Received {
                len,
                segment,
                from: SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
                    u16::from_be(addr.sin_port),
                )),
            };
        }
        Ok(n)
    }
}

/// One message [`Io::recv_many`] received: `len` bytes from `from`, datagrams of `segment`
/// bytes each (the last may be shorter).
#[derive(Debug, Clone, Copy)]
struct Received {
    len: usize,
    segment: usize,
    from: SocketAddr,
}

impl Received {
    const NONE: Self = Self {
        len: 0,
        segment: 1,
        from: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
    };
}

/// `to` as the C socket address.
fn sockaddr_in(to: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

impl Engine {
    /// Starts the engine on `tun` (the device [`open_tun`] opened in the tunnel namespace) with a
    /// UDP socket bound to the configuration's data-path address and port.
    pub fn start(tun: TunDevice, config: &WgConfig) -> io::Result<Engine> {
        let udp = UdpSocket::bind(SocketAddrV4::new(config.local, config.port)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "binding the WireGuard socket to {}:{}: {e}",
                    config.local, config.port
                ),
            )
        })?;
        udp.set_nonblocking(true)?;
        for option in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            set_int_option(udp.as_raw_fd(), libc::SOL_SOCKET, option, SOCKET_BUFFER)?;
        }
        // Coalesced datagrams in one receive where the kernel can (5.0 and newer); one by one
        // otherwise.
        if let Err(e) = set_int_option(udp.as_raw_fd(), libc::SOL_UDP, UDP_GRO, 1) {
            tracing::info!(error = %e, "no UDP GRO: WireGuard receives datagram by datagram");
        }
        // SAFETY: eventfd has no memory arguments; the result is checked before use.
        let stop = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `stop` is a fresh descriptor nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let mut seed = [0u8; 4];
        seed.copy_from_slice(&Key::generate()?.0[..4]);
        let shared = Arc::new(Shared {
            io: Io {
                tun: tun.fd,
                tun_gso: tun.udp_tunnel_gso,
                udp,
                stop,
                gso: AtomicBool::new(true),
            },
            stopping: AtomicBool::new(false),
            peers: RwLock::new(Peers::default()),
            next_index: AtomicU32::new(u32::from_le_bytes(seed) & 0x00ff_ffff),
            port: config.port,
            local: config.local,
            vxlan_port: AtomicU16::new(config.vxlan_port),
            not_from_a_peer: AtomicU64::new(0),
            offload_refused: AtomicU64::new(0),
            placement: Placement::new()?,
        });
        shared.configure(config);

        let (ticker, ticks) = mpsc::channel::<()>();
        // Built first, so that if a thread cannot be spawned, dropping it stops the others.
        let mut engine = Engine {
            shared: shared.clone(),
            threads: Vec::new(),
            ticker: Some(ticker),
        };
        for (name, work) in [
            ("shoal-wg-tx", Shared::encrypt_loop as fn(&Shared)),
            ("shoal-wg-rx", Shared::decrypt_loop as fn(&Shared)),
        ] {
            let shared = shared.clone();
            engine.threads.push(
                thread::Builder::new()
                    .name(name.into())
                    .spawn(move || work(&shared))?,
            );
        }
        let timer_shared = shared.clone();
        engine.threads.push(
            thread::Builder::new()
                .name("shoal-wg-timers".into())
                .spawn(move || {
                    let mut second = Instant::now();
                    while let Err(mpsc::RecvTimeoutError::Timeout) = ticks.recv_timeout(TICK) {
                        let new_second = second.elapsed() >= Duration::from_secs(1);
                        if new_second {
                            second = Instant::now();
                        }
                        timer_shared.tick(new_second);
                    }
                })?,
        );
        Ok(engine)
    }

    /// Applies a new configuration: peers added or removed, keys changed (see the module docs).
    pub fn configure(&self, config: &WgConfig) {
        self.shared.configure(config);
    }

    /// The UDP port the engine's socket is bound to.
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// Datagrams dropped because they did not come from the data-path address of the peer they
    /// name (for a handshake initiation: of any peer).
    pub fn not_from_a_peer(&self) -> u64 {
        self.shared.not_from_a_peer.load(Ordering::Relaxed)
    }

    /// Reads from the TAP device dropped because they could not be cut into packets (an
    /// offload the engine did not ask for, or headers that are not what the offload says).
    pub fn offload_refused(&self) -> u64 {
        self.shared.offload_refused.load(Ordering::Relaxed)
    }

    /// The peers and their sessions.
    pub fn status(&self) -> Vec<PeerStatus> {
        let peers = self.shared.peers.read().expect("peers lock");
        let mut out: Vec<PeerStatus> = peers
            .by_addr
            .values()
            .map(|p| {
                let t = p.tunnels.lock().expect("tunnel lock");
                let (last_handshake, tx_bytes, rx_bytes, ..) = t.active.tunn.stats();
                let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
                PeerStatus {
                    node: p.node.clone(),
                    public_key: t.active.theirs.clone(),
                    last_handshake,
                    rotating: t.pending.is_some(),
                    tx_bytes,
                    rx_bytes,
                    vnis: t.vnis.iter().copied().collect(),
                    bad_mac1: read(&p.refused.bad_mac1),
                    cookie_replies: read(&p.refused.cookie_replies),
                    handshakes_limited: read(&p.refused.handshakes_limited),
                    refused_packets: read(&p.refused.packets),
                    handshakes: read(&p.handshakes),
                    rotations: t.rotations,
                }
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.ticker.take();
        self.shared.stopping.store(true, Ordering::Relaxed);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one`, which outlives the call, to our own eventfd.
        unsafe { libc::write(self.shared.io.stop.as_raw_fd(), (&raw const one).cast(), 8) };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn new_generation(&self, ours: &OurKey, theirs: &Key) -> Generation {
        let index = self.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
        Generation {
            tunn: Tunn::new(
                ours.secret.clone(),
                theirs.as_public(),
                None,
                None,
                index,
                Some(ours.tunn_limiter.clone()),
            ),
            index,
            ours: ours.key.clone(),
            theirs: theirs.clone(),
        }
    }

    fn configure(&self, config: &WgConfig) {
        self.placement.pin(&config.cpus);
        let refused = refused_keys(config);
        let mut peers = self.peers.write().expect("peers lock");
        self.vxlan_port.store(config.vxlan_port, Ordering::Relaxed);
        // The current key goes first; a key we rotate back to keeps its limiter.
        if peers.keys.first().map(|k| &k.key) != Some(&config.private_key) {
            let ours = match peers.keys.iter().position(|k| k.key == config.private_key) {
                Some(i) => peers.keys.remove(i),
                None => Arc::new(OurKey::new(&config.private_key)),
            };
            peers.keys.insert(0, ours);
        }
        let ours = peers.keys[0].clone();
        let mut kept = HashMap::new();
        let mut buf = vec![0u8; 256];
        for (node, want) in &config.peers {
            if refused.contains(&want.public_key) {
                tracing::error!(
                    peer = node,
                    "WireGuard peer refused: its public key is this node's own or another peer's too"
                );
                continue;
            }
            let endpoint = SocketAddr::new(IpAddr::V4(want.addr), self.port);
            let existing = peers
                .by_addr
                .values()
                .find(|p| p.node == *node && p.addr == want.addr)
                .cloned();
            let peer = match existing {
                None => {
                    let generation = self.new_generation(&ours, &want.public_key);
                    Arc::new(PeerState {
                        node: node.clone(),
                        addr: want.addr,
                        endpoint,
                        tunnels: Mutex::new(Tunnels {
                            active: generation,
                            pending: None,
                            retired: Vec::new(),
                            vnis: want.vnis.clone(),
                            rotations: 0,
                        }),
                        budget: Budget::default(),
                        refused: Refusals::default(),
                        handshakes: AtomicU64::new(0),
                    })
                }
                Some(peer) => {
                    let mut t = peer.tunnels.lock().expect("tunnel lock");
                    t.vnis.clone_from(&want.vnis);
                    if t.active.ours == config.private_key && t.active.theirs == want.public_key {
                        // Back to the active keys: a pending change is no longer wanted.
                        if let Some(replaced) = t.pending.take() {
                            t.retired.push((replaced, Instant::now()));
                        }
                    }
                    let current = t.pending.as_ref().unwrap_or(&t.active);
                    if current.ours != config.private_key || current.theirs != want.public_key {
                        let mut generation = self.new_generation(&ours, &want.public_key);
                        if let TunnResult::WriteToNetwork(init) =
                            generation.tunn.format_handshake_initiation(&mut buf, true)
                        {
                            self.io.send(init, endpoint);
                        }
                        if let Some(replaced) = t.pending.replace(generation) {
                            t.retired.push((replaced, Instant::now()));
                        }
                    }
                    drop(t);
                    peer
                }
            };
            kept.insert(want.addr, peer);
        }
        peers.by_addr = kept;
        drop(peers);
        self.reindex();
    }

    /// The peer and generation index a packet's receiver index names.
    fn peer_by_index(&self, receiver_idx: u32) -> Option<(Arc<PeerState>, u32)> {
        let index = receiver_idx >> 8;
        let peers = self.peers.read().expect("peers lock");
        peers.by_index.get(&index).map(|peer| (peer.clone(), index))
    }

    /// Finds the peer and generation a handshake initiation is meant for, if it deserves an
    /// answer: from a peer's address, with a MAC1 for one of our keys, within the load limit
    /// (otherwise it gets a cookie reply) and the peer's budget; then one X25519 (with the key
    /// MAC1 named) tells whose static key it carries, which must be that peer's.
    fn handshake_target(
        &self,
        from: SocketAddr,
        datagram: &[u8],
        init: &boringtun::noise::HandshakeInit<'_>,
    ) -> Option<(Arc<PeerState>, u32)> {
        let peers = self.peers.read().expect("peers lock");
        // Shoal's peers do not roam: an initiation from any other address is nobody's.
        let peer = match from.ip() {
            IpAddr::V4(ip) => peers.by_addr.get(&ip),
            IpAddr::V6(_) => None,
        };
        let Some(peer) = peer else {
            count(&self.not_from_a_peer);
            return None;
        };
        if peer.budget.spent() {
            count(&peer.refused.handshakes_limited);
            return None;
        }
        let mut reply = [0u8; COOKIE_REPLY];
        match admit(&peers.keys, from.ip(), datagram, &mut reply) {
            Admission::BadMac1 => {
                count(&peer.refused.bad_mac1);
                None
            }
            Admission::Cookie(len) => {
                if peer.budget.cookie() {
                    self.io.send(&reply[..len], from);
                    count(&peer.refused.cookie_replies);
                } else {
                    count(&peer.refused.handshakes_limited);
                }
                None
            }
            Admission::Admit(k) => {
                if !peer.budget.handshake() {
                    count(&peer.refused.handshakes_limited);
                    return None;
                }
                let ours = &peers.keys[k];
                let half = parse_handshake_anon(&ours.secret, &ours.public, init).ok()?;
                let (target, index) = peers
                    .by_keys
                    .get(&(ours.key.clone(), Key(half.peer_static_public)))?;
                if !Arc::ptr_eq(target, peer) {
                    // A peer's key, but sent from another peer's address.
                    count(&self.not_from_a_peer);
                    return None;
                }
                Some((target.clone(), *index))
            }
            Admission::Malformed => None,
        }
    }

    /// The next result of `read` on the non-blocking `fd`, waiting while there is none; `None`
    /// once the engine stops or the descriptor fails (which stops this loop, and is logged).
    fn next<T>(&self, fd: RawFd, what: &str, mut read: impl FnMut() -> io::Result<T>) -> Option<T> {
        while !self.stopping.load(Ordering::Relaxed) {
            match read() {
                Ok(r) => return Some(r),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait_readable(fd, self.io.stop.as_raw_fd()) {
                        return None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::error!(error = %e, "{what}; the WireGuard engine stops");
                    return None;
                }
            }
        }
        None
    }

    /// Reads the TAP device and sends each packet, encrypted, to the peer owning its inner
    /// destination: the first read waited for, then whatever else the device holds. A read is
    /// one packet or a super-packet, cut into the packets it stands for ([`Segments`]); the
    /// encrypted datagrams go out [`BATCH`] at a time with one `sendmmsg`.
    fn encrypt_loop(&self) {
        let _running = self.placement.started(IoThread::Encrypting);
        let mut read_buf = vec![0u8; VNET_HDR_LEN + ETH_HLEN + MAX_PACKET];
        let mut segment = vec![0u8; MAX_PACKET];
        // The datagrams of one batch, end to end (so that runs of them go out as one message).
        let mut out = vec![0u8; BATCH * 2048 + MAX_PACKET + WG_OVERHEAD];
        let mut pos = 0;
        let mut ready = Vec::with_capacity(BATCH);
        let tun = self.io.tun.as_raw_fd();
        while let Some(first) = self.next(tun, "reading the TAP device", || {
            self.io.read_tun(&mut read_buf)
        }) {
            let mut read = Some(first);
            while let Some(n) = read {
                let Some(start) = strip_ethernet(&mut read_buf[..n]) else {
                    read = self.io.read_tun(&mut read_buf).ok();
                    continue;
                };
                let mut segments = match Segments::new(&read_buf[start..n]) {
                    Ok(segments) => segments,
                    Err(e) => {
                        tracing::debug!(error = %e, "packet from the TAP device dropped");
                        count(&self.offload_refused);
                        read = self.io.read_tun(&mut read_buf).ok();
                        continue;
                    }
                };
                while let Some(len) = segments.next_into(&mut segment) {
                    if ready.len() == BATCH || out.len() - pos < len + WG_OVERHEAD {
                        self.io.send_many(&out, &ready);
                        ready.clear();
                        pos = 0;
                    }
                    if let Some((offset, len, to)) =
                        self.encrypt_one(&segment[..len], &mut out[pos..])
                    {
                        ready.push((pos + offset, len, to));
                        pos += offset + len;
                    }
                }
                // Errors other than "nothing more" surface at the next waiting read.
                read = self.io.read_tun(&mut read_buf).ok();
            }
            self.io.send_many(&out, &ready);
            ready.clear();
            pos = 0;
        }
    }

    /// `packet` encrypted into `out` for the peer owning its destination: where in `out` the
    /// datagram is, its length, and where it goes. `None` for what is not routed into the
    /// tunnel.
    fn encrypt_one(&self, packet: &[u8], out: &mut [u8]) -> Option<(usize, usize, SocketAddrV4)> {
        // Only IPv4 is routed into the tunnel.
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            return None;
        }
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        let peer = self
            .peers
            .read()
            .expect("peers lock")
            .by_addr
            .get(&dst)
            .cloned()?;
        let SocketAddr::V4(to) = peer.endpoint else {
            return None;
        };
        let start = out.as_ptr() as usize;
        let mut t = peer.tunnels.lock().expect("tunnel lock");
        match t.active.tunn.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(datagram) => {
                Some((datagram.as_ptr() as usize - start, datagram.len(), to))
            }
            _ => None,
        }
    }

    /// Receives datagrams, up to [`BATCH`] messages with one `recvmmsg` (each may hold several
    /// datagrams the kernel coalesced), and decrypts each datagram.
    fn decrypt_loop(&self) {
        let _running = self.placement.started(IoThread::Decrypting);
        let mut buffers = vec![vec![0u8; MAX_PACKET]; BATCH];
        let mut got = [Received::NONE; BATCH];
        let mut out = vec![0u8; MAX_PACKET];
        let mut coalescer = Coalescer::new(self.io.tun_gso);
        let udp = self.io.udp.as_raw_fd();
        while let Some(n) = self.next(udp, "receiving WireGuard datagrams", || {
            self.io.recv_many(&mut buffers, &mut got)
        }) {
            for (buffer, received) in buffers.iter().zip(&got[..n]) {
                for datagram in buffer[..received.len].chunks(received.segment) {
                    self.decrypt_one(datagram, received.from, &mut out, &mut coalescer);
                }
            }
            coalescer.flush(&mut |hdr, packet| self.io.write_tun(hdr, packet));
        }
    }

    /// One datagram from `from`, checked and decrypted into the TAP device (see the module
    /// docs for the order of the checks).
    fn decrypt_one(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        out: &mut [u8],
        coalescer: &mut Coalescer,
    ) {
        let parsed = Tunn::parse_incoming_packet(datagram);
        let handshake = matches!(
            parsed,
            Ok(Packet::HandshakeInit(_) | Packet::HandshakeResponse(_))
        );
        let target = match parsed {
            Ok(Packet::HandshakeInit(init)) => self.handshake_target(from, datagram, &init),
            Ok(Packet::HandshakeResponse(p)) => self.peer_by_index(p.receiver_idx),
            Ok(Packet::PacketCookieReply(p)) => self.peer_by_index(p.receiver_idx),
            Ok(Packet::PacketData(p)) => self.peer_by_index(p.receiver_idx),
            Err(_) => None,
        };
        let Some((peer, index)) = target else {
            return;
        };
        if from.ip() != IpAddr::V4(peer.addr) {
            count(&self.not_from_a_peer);
            return;
        }
        let vxlan_port = self.vxlan_port.load(Ordering::Relaxed);
        // The tunnels' lock is held for the protocol only: the packet goes to the TAP device
        // (where the kernel's whole receive path runs) after it is released, so that the
        // encrypting thread is not kept waiting meanwhile.
        let delivered = {
            let mut t = peer.tunnels.lock().expect("tunnel lock");
            let Some((generation, vnis)) = t.find(index) else {
                return;
            };
            let base = out.as_ptr() as usize;
            let mut result = generation.tunn.decapsulate(Some(from.ip()), datagram, out);
            if handshake && !matches!(result, TunnResult::Err(_)) {
                count(&peer.handshakes);
            }
            let delivered = loop {
                match result {
                    TunnResult::WriteToNetwork(reply) => {
                        self.io.send(reply, peer.endpoint);
                        // Send whatever was queued while the handshake was under way.
                        result = generation.tunn.decapsulate(None, &[], out);
                        continue;
                    }
                    TunnResult::WriteToTunnelV4(inner, src) => {
                        // Cryptokey routing: a peer may only send from its own address, and
                        // only VXLAN of the encrypted networks it has tasks on.
                        if src == peer.addr
                            && vxlan_vni(inner, self.local, vxlan_port)
                                .is_some_and(|vni| vnis.contains(&vni))
                        {
                            break Some((inner.as_ptr() as usize - base, inner.len()));
                        }
                        count(&peer.refused.packets);
                    }
                    TunnResult::WriteToTunnelV6(..) => count(&peer.refused.packets),
                    TunnResult::Done => {}
                    TunnResult::Err(e) => {
                        tracing::debug!(peer = peer.node, error = ?e, "WireGuard packet refused")
                    }
                }
                break None;
            };
            t.promote(&peer.node);
            delivered
        };
        if let Some((at, len)) = delivered {
            coalescer.push(&out[at..at + len], &mut |hdr, packet| {
                self.io.write_tun(hdr, packet)
            });
        }
    }

    /// The protocol timers, every [`TICK`]; `new_second` when a second has passed since the
    /// handshake budgets were last reset.
    fn tick(&self, new_second: bool) {
        let peers: Vec<Arc<PeerState>> = {
            let peers = self.peers.read().expect("peers lock");
            // Acts once a second has passed since its last reset, whenever it is called.
            for k in &peers.keys {
                k.limiter.reset_count();
            }
            peers.by_addr.values().cloned().collect()
        };
        let mut buf = vec![0u8; MAX_PACKET];
        let mut forget = false;
        for peer in peers {
            if new_second {
                peer.budget.reset();
            }
            let mut t = peer.tunnels.lock().expect("tunnel lock");
            let before = t.retired.len();
            t.retired
                .retain(|(_, since)| since.elapsed() < RETIRE_AFTER);
            forget |= t.retired.len() != before;
            let Tunnels {
                active, pending, ..
            } = &mut *t;
            // A pending generation carries no traffic, so nothing would restart its handshake
            // once boringtun gives up on it (after 90 s without an answer): keep trying.
            if let Some(p) = pending.as_mut()
                && p.tunn.stats().0.is_none()
                && let TunnResult::WriteToNetwork(init) =
                    p.tunn.format_handshake_initiation(&mut buf, false)
            {
                self.io.send(init, peer.endpoint);
            }
            for g in std::iter::once(active).chain(pending.as_mut()) {
                if let TunnResult::WriteToNetwork(datagram) = g.tunn.update_timers(&mut buf) {
                    self.io.send(datagram, peer.endpoint);
                }
            }
            t.promote(&peer.node);
        }
        if forget {
            self.reindex();
        }
    }

    /// Rebuilds the index maps and the keys a handshake may be addressed to (the current one
    /// first, then any a live generation still uses) from the generations. Two peers whose live
    /// generations have the same key pair accept no handshake at all: which one made it could
    /// not be told (`configure` refuses such peers in the first place).
    fn reindex(&self) {
        let mut peers = self.peers.write().expect("peers lock");
        let mut indexes = HashMap::new();
        let mut by_keys: HashMap<(Key, Key), (Arc<PeerState>, u32)> = HashMap::new();
        let mut clashes = HashSet::new();
        for p in peers.by_addr.values() {
            let mut t = p.tunnels.lock().expect("tunnel lock");
            for g in t.all_mut() {
                indexes.insert(g.index, p.clone());
            }
            for g in std::iter::once(&t.active).chain(t.pending.as_ref()) {
                let pair = (g.ours.clone(), g.theirs.clone());
                if let Some((other, _)) = by_keys.insert(pair.clone(), (p.clone(), g.index))
                    && !Arc::ptr_eq(&other, p)
                {
                    tracing::error!(
                        peer = p.node,
                        other = other.node,
                        "two WireGuard peers use one key; neither accepts handshakes"
                    );
                    clashes.insert(pair);
                }
            }
        }
        for pair in &clashes {
            by_keys.remove(pair);
        }
        let live: HashSet<&Key> = by_keys.keys().map(|(ours, _)| ours).collect();
        let keys: Vec<Arc<OurKey>> = peers
            .keys
            .iter()
            .enumerate()
            .filter(|(i, k)| *i == 0 || live.contains(&k.key))
            .map(|(_, k)| k.clone())
            .collect();
        peers.keys = keys;
        peers.by_index = indexes;
        peers.by_keys = by_keys;
    }
}

/// The keys of peers `configure` refuses: our own public key, and any key two peers claim.
/// With either, a handshake could not tell which node made it.
fn refused_keys(config: &WgConfig) -> HashSet<Key> {
    let mut seen = HashSet::new();
    let mut refused = HashSet::from([config.private_key.public()]);
    for peer in config.peers.values() {
        if !seen.insert(&peer.public_key) {
            refused.insert(peer.public_key.clone());
        }
    }
    refused
}

/// What becomes of a handshake initiation, decided before any X25519.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Its MAC1 is right for our key at this index and the load allows it.
    Admit(usize),
    /// We are under load and it carries no valid MAC2: the cookie reply to send back is this
    /// long.
    Cookie(usize),
    /// Its MAC1 is right for none of our keys.
    BadMac1,
    /// Not a handshake message.
    Malformed,
}

/// Checks an initiation against each of our keys (one keyed BLAKE2s each), then the load of the
/// key it was made for; a cookie reply is written into `reply`.
fn admit(
    keys: &[Arc<OurKey>],
    from: IpAddr,
    datagram: &[u8],
    reply: &mut [u8; COOKIE_REPLY],
) -> Admission {
    for (i, k) in keys.iter().enumerate() {
        match k.limiter.verify_packet(Some(from), datagram, reply) {
            Ok(_) => return Admission::Admit(i),
            Err(TunnResult::WriteToNetwork(cookie)) => return Admission::Cookie(cookie.len()),
            Err(TunnResult::Err(WireGuardError::InvalidMac)) => {}
            Err(_) => return Admission::Malformed,
        }
    }
    Admission::BadMac1
}

/// The VNI of a decrypted packet if it is what a peer's VXLAN socket sends us: a whole (not
/// fragmented) IPv4 datagram to `local`, UDP to `port`, with a VXLAN header carrying a VNI.
/// Encrypted overlays' MTUs are set so that their frames never fragment.
fn vxlan_vni(packet: &[u8], local: Ipv4Addr, port: u16) -> Option<u32> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet[0] >> 4 != 4 || ihl < 20 || packet.len() < ihl + 8 + 8 {
        return None;
    }
    let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff;
    if packet[9] != 17 || fragment != 0 || packet[16..20] != local.octets() {
        return None;
    }
    let udp = &packet[ihl..];
    let vxlan = &udp[8..];
    if u16::from_be_bytes([udp[2], udp[3]]) != port || vxlan[0] & 0x08 == 0 {
        return None;
    }
    Some(u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]))
}

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETOFFLOAD`: `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUNSETVNETHDRSZ`: `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `TUNSETVNETLE`: `_IOW('T', 220, int)`.
const TUNSETVNETLE: libc::c_ulong = 0x4004_54dc;
/// `TUN_F_*` offloads (linux/if_tun.h).
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_UDP_TUNNEL_GSO: libc::c_uint = 0x080;
const TUN_F_UDP_TUNNEL_GSO_CSUM: libc::c_uint = 0x100;

/// The MAC address of the engine's TAP device: frames written to it are addressed to it.
pub const TAP_MAC: [u8; 6] = [0x02, 0x73, 0x68, 0x6f, 0x61, 0x6c];
/// The source address of those frames (nothing answers to it: the device takes no ARP).
const PEER_MAC: [u8; 6] = [0x02, 0x73, 0x68, 0x6f, 0x61, 0x6d];

/// The engine's device: a TAP device (Ethernet frames, so that the kernel takes super-packets
/// written to it; see [`super::offload`]), without ARP, addressed [`TAP_MAC`].
#[derive(Debug)]
pub struct TunDevice {
    /// The device's descriptor: the device lives as long as it.
    pub fd: OwnedFd,
    /// Whether the kernel took UDP tunnel GSO: super-packets come in and go out.
    pub udp_tunnel_gso: bool,
}

/// Opens a new TAP device named `name` in the calling thread's network namespace, with
/// virtio-net headers and the offloads the kernel has (see [`super::offload`]).
pub fn open_tun(name: &str) -> io::Result<TunDevice> {
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name}: interface name too long"),
        ));
    }
    // SAFETY: the path is a NUL-terminated literal.
    let fd = cvt(unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    })
    .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/net/tun: {e}")))?;
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is laid out as and outlives.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &raw mut req) })
        .map_err(|e| io::Error::new(e.kind(), format!("creating TAP device {name}: {e}")))?;
    let setting = |what: &str| {
        let what = what.to_owned();
        move |e: io::Error| io::Error::new(e.kind(), format!("TAP device {name}: {what}: {e}"))
    };
    for (request, value, what) in [
        (
            TUNSETVNETHDRSZ,
            VNET_HDR_LEN as libc::c_int,
            "virtio-net header size",
        ),
        (TUNSETVNETLE, 1, "little-endian virtio-net headers"),
    ] {
        // SAFETY: both requests read one int, which `value` is and outlives the call.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &raw const value) })
            .map_err(setting(what))?;
    }
    // The most the kernel has, in order: UDP tunnel GSO (6.17 and newer) hands over whole
    // VXLAN super-packets; TSO4 and checksums alone still spare the engine nothing but are
    // harmless; none at all is the plain device.
    let mut refused = None;
    for (offloads, udp_tunnel_gso) in [
        (
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_UDP_TUNNEL_GSO | TUN_F_UDP_TUNNEL_GSO_CSUM,
            true,
        ),
        (TUN_F_CSUM | TUN_F_TSO4, false),
    ] {
        // SAFETY: TUNSETOFFLOAD takes the flags as the argument itself.
        match cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD as _, offloads) }) {
            Ok(_) => {
                tracing::debug!(device = name, offloads, "TAP offloads");
                return Ok(TunDevice { fd, udp_tunnel_gso });
            }
            Err(e) => refused = Some(e),
        }
    }
    tracing::info!(
        device = name,
        error = ?refused,
        "the kernel takes no TAP offloads: the WireGuard engine moves one packet at a time"
    );
    Ok(TunDevice {
        fd,
        udp_tunnel_gso: false,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs::File;

    use super::*;
    use crate::overlay::model::WgPeer;

    const LOCAL: Ipv4Addr = Ipv4Addr::new(172, 21, 1, 11);
    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(172, 21, 1, 12));

    /// What a peer's VXLAN socket sends us: IPv4 (with `options` words of options) / UDP to
    /// `port` / VXLAN with `vni` / a few bytes of frame.
    fn vxlan_packet(options: usize, port: u16, vni: u32) -> Vec<u8> {
        let ihl = 5 + options;
        let mut p = vec![0u8; ihl * 4 + 8 + 8 + 14];
        p[0] = 0x40 | ihl as u8;
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[6] = 0x40; // don't fragment
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[172, 21, 1, 12]);
        p[16..20].copy_from_slice(&LOCAL.octets());
        let udp = ihl * 4;
        p[udp..udp + 2].copy_from_slice(&40000u16.to_be_bytes());
        p[udp + 2..udp + 4].copy_from_slice(&port.to_be_bytes());
        let vni = vni.to_be_bytes();
        p[udp + 8] = 0x08;
        p[udp + 12..udp + 15].copy_from_slice(&vni[1..]);
        p
    }

    #[test]
    fn only_whole_vxlan_datagrams_to_our_address_and_port_carry_a_vni() {
        assert_eq!(
            vxlan_vni(&vxlan_packet(0, 4789, 4097), LOCAL, 4789),
            Some(4097)
        );
        assert_eq!(
            vxlan_vni(&vxlan_packet(2, 4789, 0xff_ffff), LOCAL, 4789),
            Some(0xff_ffff)
        );
        assert_eq!(vxlan_vni(&vxlan_packet(0, 4789, 4097), LOCAL, 4790), None);
        assert_eq!(
            vxlan_vni(&vxlan_packet(0, 53, 4097), LOCAL, 53),
            Some(4097),
            "any port set"
        );
        type Edit = fn(&mut Vec<u8>);
        let refused: [(&str, Edit); 8] = [
            ("IPv6", |p| p[0] = 0x65),
            ("a header shorter than 20 bytes", |p| p[0] = 0x44),
            ("TCP", |p| p[9] = 6),
            ("another destination", |p| p[19] = 99),
            ("a first fragment", |p| p[6] = 0x20),
            ("a later fragment", |p| p[7] = 0x10),
            ("no VNI flag", |p| p[28] = 0),
            ("a truncated VXLAN header", |p| p.truncate(20 + 8 + 7)),
        ];
        for (what, edit) in refused {
            let mut p = vxlan_packet(0, 4789, 4097);
            edit(&mut p);
            assert_eq!(vxlan_vni(&p, LOCAL, 4789), None, "{what}");
        }
        // No length of a valid packet's prefix makes it read out of bounds.
        let p = vxlan_packet(1, 4789, 4097);
        for len in 0..p.len() {
            let _ = vxlan_vni(&p[..len], LOCAL, 4789);
        }
    }

    fn key(seed: u8) -> Key {
        Key([seed; 32])
    }

    /// A genuine initiation from `from` to `to` (boringtun computes its MAC1).
    fn initiation(from: &Key, to: &Key) -> Vec<u8> {
        let mut tunn = Tunn::new(from.secret(), to.public().as_public(), None, None, 1, None);
        let mut buf = [0u8; 256];
        match tunn.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("no initiation"),
        }
    }

    #[test]
    fn mac1_is_checked_before_any_work_and_a_loaded_key_answers_with_cookies() {
        let ours = [
            Arc::new(OurKey::new(&key(1))),
            Arc::new(OurKey::new(&key(2))),
        ];
        let mut reply = [0u8; COOKIE_REPLY];
        // Made for our second (older) key: MAC1 says so.
        let init = initiation(&key(9), &key(2));
        assert_eq!(admit(&ours, PEER, &init, &mut reply), Admission::Admit(1));
        // A wrong MAC1 is refused, however many, and does not use up the load budget.
        let mut bad = initiation(&key(9), &key(1));
        bad[WG_MAC1] ^= 1;
        for _ in 0..1_000 {
            assert_eq!(admit(&ours, PEER, &bad, &mut reply), Admission::BadMac1);
        }
        // Made for a key we do not hold.
        let stranger = initiation(&key(9), &key(3));
        assert_eq!(
            admit(&ours, PEER, &stranger, &mut reply),
            Admission::BadMac1
        );
        // The same valid initiation again and again (MAC1 covers no time): admitted up to the
        // limit, then answered with a cookie reply for its sender index.
        let init = initiation(&key(9), &key(1));
        for i in 0..HANDSHAKE_LOAD_LIMIT {
            assert_eq!(
                admit(&ours, PEER, &init, &mut reply),
                Admission::Admit(0),
                "{i}"
            );
        }
        assert_eq!(
            admit(&ours, PEER, &init, &mut reply),
            Admission::Cookie(COOKIE_REPLY)
        );
        assert_eq!(reply[..4], [3, 0, 0, 0], "a cookie reply");
        assert_eq!(reply[4..8], init[4..8], "to the initiation's sender index");
        // The other key has its own count.
        let init = initiation(&key(9), &key(2));
        assert_eq!(admit(&ours, PEER, &init, &mut reply), Admission::Admit(1));
    }

    /// Where MAC1 starts in an initiation.
    const WG_MAC1: usize = 116;

    #[test]
    fn a_peer_with_our_own_key_or_another_peer_s_is_refused() {
        let peer = |seed: u8, host: u8| WgPeer {
            addr: Ipv4Addr::new(172, 21, 1, host),
            public_key: key(seed).public(),
            vnis: BTreeSet::new(),
        };
        let config = WgConfig {
            private_key: key(1),
            local: LOCAL,
            port: 51820,
            vxlan_port: 4789,
            cpus: Vec::new(),
            peers: BTreeMap::from([
                ("n2".to_owned(), peer(2, 12)),
                ("n3".to_owned(), peer(3, 13)),
                ("n4".to_owned(), peer(3, 14)),
                ("n5".to_owned(), peer(1, 15)),
            ]),
        };
        assert_eq!(
            refused_keys(&config),
            HashSet::from([key(1).public(), key(3).public()])
        );
    }

    #[test]
    fn budgets_allow_a_few_handshakes_and_cookies_a_second() {
        let budget = Budget::default();
        assert!((0..PEER_HANDSHAKES_PER_SECOND).all(|_| budget.handshake()));
        assert!(!budget.handshake());
        assert!((0..PEER_COOKIES_PER_SECOND).all(|_| budget.cookie()));
        assert!(!budget.cookie());
        assert!(budget.spent());
        budget.reset();
        assert!(!budget.spent());
        assert!(budget.handshake() && budget.cookie());
    }

    /// An `Io` whose socket is `udp`, with no device behind it (`/dev/null`).
    fn socket_io(udp: UdpSocket) -> Io {
        let null = || OwnedFd::from(File::open("/dev/null").expect("/dev/null"));
        Io {
            tun: null(),
            tun_gso: false,
            udp,
            stop: null(),
            gso: AtomicBool::new(true),
        }
    }

    /// Three datagrams end to end in one buffer (100, 100 and 60 bytes), all to `to`.
    fn run_of_three(to: SocketAddrV4) -> (Vec<u8>, Vec<(usize, usize, SocketAddrV4)>) {
        let buf: Vec<u8> = (0..260_u32).map(|i| (i / 100) as u8 + 1).collect();
        (buf, vec![(0, 100, to), (100, 100, to), (200, 60, to)])
    }

    fn local(socket: &UdpSocket) -> SocketAddrV4 {
        match socket.local_addr().expect("bound") {
            SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_run_goes_out_as_one_gso_message_and_a_gro_socket_takes_it_whole() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        set_int_option(receiver.as_raw_fd(), libc::SOL_UDP, UDP_GRO, 1).unwrap();
        receiver.set_nonblocking(true).unwrap();
        let rx = socket_io(receiver);
        let tx = socket_io(UdpSocket::bind("127.0.0.1:0").unwrap());
        let (buf, ready) = run_of_three(local(&rx.udp));
        tx.send_many(&buf, &ready);
        assert!(tx.gso.load(Ordering::Relaxed));
        let mut buffers = vec![vec![0u8; MAX_PACKET]; BATCH];
        let mut got = [Received::NONE; BATCH];
        let n = rx.recv_many(&mut buffers, &mut got).expect("a message");
        assert_eq!(n, 1, "one message for the run");
        assert_eq!((got[0].len, got[0].segment), (260, 100));
        let cut: Vec<&[u8]> = buffers[0][..260].chunks(got[0].segment).collect();
        assert_eq!(cut, vec![&buf[..100], &buf[100..200], &buf[200..]]);
    }

    #[test]
    fn a_refused_gso_send_goes_out_datagram_by_datagram_from_then_on() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let to = local(&receiver);
        // A socket without UDP checksums: the kernel refuses its GSO sends (EINVAL), as it
        // refuses them (EIO) where it cannot checksum.
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        set_int_option(udp.as_raw_fd(), libc::SOL_SOCKET, libc::SO_NO_CHECK, 1).unwrap();
        let tx = socket_io(udp);
        let (buf, ready) = run_of_three(to);
        for round in 0..2 {
            tx.send_many(&buf, &ready);
            assert!(!tx.gso.load(Ordering::Relaxed), "round {round}");
            let mut datagram = [0u8; 512];
            for expected in [&buf[..100], &buf[100..200], &buf[200..]] {
                let n = receiver.recv(&mut datagram).expect("a datagram");
                assert_eq!(&datagram[..n], expected, "round {round}");
            }
        }
    }
}
