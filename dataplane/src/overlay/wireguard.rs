//! The WireGuard engine: boringtun's [`Tunn`] state machines with Shoal's own I/O — a TUN device
//! in the tunnel namespace and a UDP socket bound to the data-path address in the node's.
//!
//! Three threads: one reads the TUN device and encrypts towards the peer owning the inner
//! destination address, one receives datagrams and decrypts into the TUN device, one drives the
//! protocol's timers. The I/O sits in [`Io`] (plain `read`/`write`/`sendto`/`recvfrom` on
//! non-blocking descriptors, with large socket buffers) so a batched or offloaded path can
//! replace it without touching the protocol side.
//!
//! **Key rotation without breaking traffic.** A peer's tunnel is a list of *generations*, one per
//! (our key, their key) pair. When either key changes, a new generation is created next to the
//! active one and starts a handshake, while traffic keeps flowing on the active one. Once the new
//! generation has a session it becomes active; the old one stays to decrypt packets still in
//! flight until its keys would expire anyway. A node that installs a new key therefore keeps
//! talking to its peers with the old sessions until each peer has learnt the new public key.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};

use super::keys::Key;
use super::model::WgConfig;

/// How long a replaced generation keeps decrypting: WireGuard's REJECT_AFTER_TIME.
const RETIRE_AFTER: Duration = Duration::from_secs(180);
/// How often the protocol timers run.
const TICK: Duration = Duration::from_millis(250);
/// Socket buffer size: the default 208 KiB drops bursts at Gbit/s rates.
const SOCKET_BUFFER: libc::c_int = 8 << 20;
/// The largest datagram or TUN packet handled.
const MAX_PACKET: usize = 65_535;

/// The engine's descriptors.
#[derive(Debug)]
struct Io {
    tun: OwnedFd,
    udp: UdpSocket,
    /// An eventfd written once to stop the I/O threads.
    stop: OwnedFd,
}

/// One (our key, their key) pair's tunnel.
struct Generation {
    tunn: Tunn,
    index: u32,
    ours: Key,
    theirs: Key,
}

/// A peer's generations.
struct Tunnels {
    active: Generation,
    pending: Option<Generation>,
    retired: Vec<(Generation, Instant)>,
}

impl Tunnels {
    fn all_mut(&mut self) -> impl Iterator<Item = &mut Generation> {
        std::iter::once(&mut self.active)
            .chain(self.pending.as_mut())
            .chain(self.retired.iter_mut().map(|(g, _)| g))
    }

    /// Makes the pending generation active once it has a session.
    fn promote(&mut self, node: &str) {
        if let Some(pending) = &self.pending
            && pending.tunn.stats().0.is_some()
        {
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
}

/// One of our private keys with its X25519 forms, derived once rather than per handshake.
struct OurKey {
    key: Key,
    secret: boringtun::x25519::StaticSecret,
    public: boringtun::x25519::PublicKey,
}

impl OurKey {
    fn new(key: &Key) -> OurKey {
        let secret = key.secret();
        OurKey {
            key: key.clone(),
            public: boringtun::x25519::PublicKey::from(&secret),
            secret,
        }
    }
}

#[derive(Default)]
struct Peers {
    by_addr: HashMap<Ipv4Addr, Arc<PeerState>>,
    /// Tunn indexes (24 bits) to their peer.
    by_index: HashMap<u32, Arc<PeerState>>,
    /// Our current key first, then the previous one while generations still use it.
    keys: Vec<OurKey>,
}

struct Shared {
    io: Io,
    /// Set when the engine stops: the I/O loops check it on every packet, not only when idle.
    stopping: AtomicBool,
    peers: RwLock<Peers>,
    next_index: AtomicU32,
    port: u16,
}

/// A running WireGuard engine. Dropping it stops its threads and closes the TUN device.
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
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn set_buffer(fd: RawFd, option: libc::c_int) -> io::Result<()> {
    let size = SOCKET_BUFFER;
    // SAFETY: `size` outlives the call and its length is passed alongside.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw const size).cast(),
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

    fn write_tun(&self, packet: &[u8]) {
        // SAFETY: `packet` is valid for reads of its length.
        let n = unsafe { libc::write(self.tun.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "write to the TUN device");
        }
    }

    fn send(&self, datagram: &[u8], to: SocketAddr) {
        if let Err(e) = self.udp.send_to(datagram, to) {
            tracing::debug!(error = %e, %to, "WireGuard send");
        }
    }
}

impl Engine {
    /// Starts the engine on `tun` (a TUN device opened in the tunnel namespace) with a UDP socket
    /// bound to the configuration's data-path address and port.
    pub fn start(tun: OwnedFd, config: &WgConfig) -> io::Result<Engine> {
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
            set_buffer(udp.as_raw_fd(), option)?;
        }
        // SAFETY: eventfd has no memory arguments; the result is checked before use.
        let stop = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `stop` is a fresh descriptor nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let mut seed = [0u8; 4];
        seed.copy_from_slice(&Key::generate()?.0[..4]);
        let shared = Arc::new(Shared {
            io: Io { tun, udp, stop },
            stopping: AtomicBool::new(false),
            peers: RwLock::new(Peers::default()),
            next_index: AtomicU32::new(u32::from_le_bytes(seed) & 0x00ff_ffff),
            port: config.port,
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
                    while let Err(mpsc::RecvTimeoutError::Timeout) = ticks.recv_timeout(TICK) {
                        timer_shared.tick();
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

    /// The peers and their sessions.
    pub fn status(&self) -> Vec<PeerStatus> {
        let peers = self.shared.peers.read().expect("peers lock");
        let mut out: Vec<PeerStatus> = peers
            .by_addr
            .values()
            .map(|p| {
                let t = p.tunnels.lock().expect("tunnel lock");
                let (last_handshake, tx_bytes, rx_bytes, ..) = t.active.tunn.stats();
                PeerStatus {
                    node: p.node.clone(),
                    public_key: t.active.theirs.clone(),
                    last_handshake,
                    rotating: t.pending.is_some(),
                    tx_bytes,
                    rx_bytes,
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
    fn new_generation(&self, ours: &Key, theirs: &Key) -> Generation {
        let index = self.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
        Generation {
            tunn: Tunn::new(ours.secret(), theirs.as_public(), None, None, index, None),
            index,
            ours: ours.clone(),
            theirs: theirs.clone(),
        }
    }

    fn configure(&self, config: &WgConfig) {
        let mut peers = self.peers.write().expect("peers lock");
        if peers.keys.first().map(|k| &k.key) != Some(&config.private_key) {
            peers.keys = vec![OurKey::new(&config.private_key)];
        }
        let mut kept = HashMap::new();
        let mut buf = vec![0u8; 256];
        for (node, want) in &config.peers {
            let endpoint = SocketAddr::new(IpAddr::V4(want.addr), self.port);
            let existing = peers
                .by_addr
                .values()
                .find(|p| p.node == *node && p.addr == want.addr)
                .cloned();
            let peer = match existing {
                None => {
                    let generation = self.new_generation(&config.private_key, &want.public_key);
                    Arc::new(PeerState {
                        node: node.clone(),
                        addr: want.addr,
                        endpoint,
                        tunnels: Mutex::new(Tunnels {
                            active: generation,
                            pending: None,
                            retired: Vec::new(),
                        }),
                    })
                }
                Some(peer) => {
                    let mut t = peer.tunnels.lock().expect("tunnel lock");
                    if t.active.ours == config.private_key && t.active.theirs == want.public_key {
                        // Back to the active keys: a pending change is no longer wanted.
                        if let Some(replaced) = t.pending.take() {
                            t.retired.push((replaced, Instant::now()));
                        }
                    }
                    let current = t.pending.as_ref().unwrap_or(&t.active);
                    if current.ours != config.private_key || current.theirs != want.public_key {
                        let mut generation =
                            self.new_generation(&config.private_key, &want.public_key);
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

    /// Finds the peer and generation a handshake initiation is meant for.
    fn handshake_target(
        &self,
        init: &boringtun::noise::HandshakeInit<'_>,
    ) -> Option<(Arc<PeerState>, u32)> {
        let peers = self.peers.read().expect("peers lock");
        for OurKey {
            key: ours,
            secret,
            public,
        } in &peers.keys
        {
            let Ok(half) = parse_handshake_anon(secret, public, init) else {
                continue;
            };
            let theirs = Key(half.peer_static_public);
            for peer in peers.by_addr.values() {
                let t = peer.tunnels.lock().expect("tunnel lock");
                // Retired generations only finish their sessions: a replaced key must not be
                // able to start a new one.
                let mut live = std::iter::once(&t.active).chain(t.pending.as_ref());
                if let Some(g) = live.find(|g| g.ours == *ours && g.theirs == theirs) {
                    return Some((peer.clone(), g.index));
                }
            }
        }
        None
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

    fn encrypt_loop(&self) {
        let mut packet = vec![0u8; MAX_PACKET];
        let mut out = vec![0u8; MAX_PACKET + 64];
        let tun = self.io.tun.as_raw_fd();
        while let Some(n) = self.next(tun, "reading the TUN device", || {
            self.io.read_tun(&mut packet)
        }) {
            let packet = &packet[..n];
            // Only IPv4 is routed into the tunnel.
            if n < 20 || packet[0] >> 4 != 4 {
                continue;
            }
            let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
            let Some(peer) = self
                .peers
                .read()
                .expect("peers lock")
                .by_addr
                .get(&dst)
                .cloned()
            else {
                continue;
            };
            let mut t = peer.tunnels.lock().expect("tunnel lock");
            if let TunnResult::WriteToNetwork(datagram) =
                t.active.tunn.encapsulate(packet, &mut out)
            {
                self.io.send(datagram, peer.endpoint);
            }
        }
    }

    fn decrypt_loop(&self) {
        let mut datagram = vec![0u8; MAX_PACKET];
        let mut out = vec![0u8; MAX_PACKET];
        let udp = self.io.udp.as_raw_fd();
        while let Some((n, from)) = self.next(udp, "receiving WireGuard datagrams", || {
            self.io.udp.recv_from(&mut datagram)
        }) {
            let datagram = &datagram[..n];
            let target = match Tunn::parse_incoming_packet(datagram) {
                Ok(Packet::HandshakeInit(init)) => self.handshake_target(&init),
                Ok(Packet::HandshakeResponse(p)) => self.peer_by_index(p.receiver_idx),
                Ok(Packet::PacketCookieReply(p)) => self.peer_by_index(p.receiver_idx),
                Ok(Packet::PacketData(p)) => self.peer_by_index(p.receiver_idx),
                Err(_) => None,
            };
            let Some((peer, index)) = target else {
                continue;
            };
            let mut t = peer.tunnels.lock().expect("tunnel lock");
            let Some(generation) = t.all_mut().find(|g| g.index == index) else {
                continue;
            };
            let mut result = generation
                .tunn
                .decapsulate(Some(from.ip()), datagram, &mut out);
            loop {
                match result {
                    TunnResult::WriteToNetwork(reply) => {
                        self.io.send(reply, peer.endpoint);
                        // Send whatever was queued while the handshake was under way.
                        result = generation.tunn.decapsulate(None, &[], &mut out);
                        continue;
                    }
                    TunnResult::WriteToTunnelV4(inner, src) => {
                        // Cryptokey routing: a peer may only send from its own address.
                        if src == peer.addr {
                            self.io.write_tun(inner);
                        }
                    }
                    TunnResult::WriteToTunnelV6(..) | TunnResult::Done => {}
                    TunnResult::Err(e) => {
                        tracing::debug!(peer = peer.node, error = ?e, "WireGuard packet refused")
                    }
                }
                break;
            }
            t.promote(&peer.node);
        }
    }

    fn tick(&self) {
        let peers: Vec<Arc<PeerState>> = self
            .peers
            .read()
            .expect("peers lock")
            .by_addr
            .values()
            .cloned()
            .collect();
        let mut buf = vec![0u8; MAX_PACKET];
        let mut forget = false;
        for peer in peers {
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

    /// Rebuilds the index map and the keys a handshake may be addressed to (the current one
    /// first, then any a live generation still uses) from the generations.
    fn reindex(&self) {
        let mut peers = self.peers.write().expect("peers lock");
        let mut indexes = HashMap::new();
        let mut keys: Vec<OurKey> = std::mem::take(&mut peers.keys);
        keys.truncate(1);
        for p in peers.by_addr.values() {
            let mut t = p.tunnels.lock().expect("tunnel lock");
            for g in t.all_mut() {
                indexes.insert(g.index, p.clone());
            }
            for g in std::iter::once(&t.active).chain(t.pending.as_ref()) {
                if !keys.iter().any(|k| k.key == g.ours) {
                    keys.push(OurKey::new(&g.ours));
                }
            }
        }
        peers.by_index = indexes;
        peers.keys = keys;
    }
}

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens a new TUN device named `name` in the calling thread's network namespace. The device
/// lives as long as the returned descriptor.
pub fn open_tun(name: &str) -> io::Result<OwnedFd> {
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
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is laid out as and outlives.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &raw mut req) })
        .map_err(|e| io::Error::new(e.kind(), format!("creating TUN device {name}: {e}")))?;
    Ok(fd)
}
