//! Offloads between the kernel and the WireGuard engine's TAP device.
//!
//! The device is opened with `IFF_VNET_HDR` and `TUNSETOFFLOAD` (checksum, TSO4 and, where the
//! kernel has it (6.17 and newer), UDP tunnel GSO). Every frame read then starts with a
//! virtio-net header ([`VNET_HDR_LEN`] bytes), then Ethernet ([`strip_ethernet`] takes it off),
//! and the packet may be:
//!
//! - a plain packet whose last checksum is left to the device (`NEEDS_CSUM`): [`Segments`]
//!   finishes it;
//! - a *super-packet*: a VXLAN datagram carrying up to 64 KB of one TCP stream, headers once,
//!   cut at `gso_size` bytes of TCP payload. [`Segments`] cuts it into the packets the kernel
//!   would have sent one by one (each with its own outer and inner IPv4 length, identification
//!   and checksum, outer UDP length, TCP sequence number, flags and checksum), so that each is
//!   encrypted on its own, as WireGuard requires.
//!
//! One read of 64 KB replaces about 45 reads of one packet each, and the kernel no longer cuts
//! the stream in its own transmit path: that is what the offload buys.
//!
//! ```text
//!  super-packet: [vnet hdr][outer IPv4][UDP][VXLAN][Ethernet][inner IPv4][TCP][payload ........]
//!  segment k:              [outer IPv4][UDP][VXLAN][Ethernet][inner IPv4][TCP][payload k]
//!                           len, id+k,  len                   len, id+k   seq+k·mss, flags,
//!                           checksum                          checksum    checksum
//! ```
//!
//! The other way, [`Coalescer`] merges decrypted packets that continue one TCP stream inside
//! VXLAN back into a super-packet (the header of the first, the payloads end to end, a
//! virtio-net header that says how to cut it again), so that the kernel takes a whole run in one
//! write and walks its receive path (IPv4, UDP, VXLAN) once for it, as GRO does for a NIC. Only
//! consecutive packets merge, so nothing is reordered; anything else is written as it came,
//! behind a zero header. The device is a TAP rather than a TUN for this: an L3 TUN device
//! refuses UDP tunnel GSO writes (`EINVAL`; the kernel's offset checks assume an Ethernet
//! header).

use std::fmt;

/// Bytes of the virtio-net header before each packet (`struct virtio_net_hdr_v1_hash_tunnel`).
pub const VNET_HDR_LEN: usize = 24;

/// Bytes of the Ethernet header before each packet on the TAP device.
pub const ETH_HLEN: usize = 14;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is to be finished.
const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM`: the outer UDP checksum is to be computed.
const F_UDP_TUNNEL_CSUM: u8 = 8;
/// `VIRTIO_NET_HDR_GSO_NONE`.
const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4`.
const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;
/// `VIRTIO_NET_HDR_GSO_ECN`.
const GSO_ECN: u8 = 0x80;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// UDP + VXLAN + inner Ethernet: from the outer UDP header to the inner IPv4 header.
const VXLAN_TO_INNER: usize = 8 + 8 + 14;

/// TCP flags cut by segmentation.
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const CWR: u8 = 0x80;

/// Offsets of a VXLAN datagram carrying one TCP segment, as [`Coalescer`] merges them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stream {
    /// The outer IPv4 header's length (the outer UDP header's offset).
    outer: usize,
    /// The inner IPv4 header's offset.
    inner: usize,
    /// The TCP header's offset.
    tcp: usize,
    /// All headers' length.
    headers: usize,
    /// TCP sequence number.
    seq: u32,
    /// TCP flags.
    flags: u8,
}

impl Stream {
    /// `packet` as a segment that may merge: IPv4 without fragments, UDP, VXLAN, Ethernet,
    /// IPv4 without fragments, TCP with ACK and no flag but PSH, some payload, lengths that
    /// agree.
    fn of(packet: &[u8]) -> Option<Stream> {
        let outer = ipv4_header_len(packet, 0, IPPROTO_UDP).ok()?;
        let inner = outer + VXLAN_TO_INNER;
        let tcp = inner + ipv4_header_len(packet, inner, IPPROTO_TCP).ok()?;
        let headers = tcp + usize::from(*packet.get(tcp + 12)? >> 4) * 4;
        let be16 = |at: usize| usize::from(u16::from_be_bytes([packet[at], packet[at + 1]]));
        let flags = packet.get(tcp + 13).copied()?;
        let whole = be16(2) == packet.len()
            && be16(outer + 4) == packet.len() - outer
            && be16(inner + 2) == packet.len() - inner;
        let unfragmented = be16(6) & 0x3fff == 0 && be16(inner + 6) & 0x3fff == 0;
        (whole
            && unfragmented
            && packet[inner - 2..inner] == [0x08, 0x00]
            && headers >= tcp + 20
            && packet.len() > headers
            && flags & !PSH == ACK)
            .then(|| Stream {
                outer,
                inner,
                tcp,
                headers,
                seq: get32(packet, tcp + 4),
                flags,
            })
    }

    /// Whether `a` and `b`, both of this shape, have the same headers but for what differs
    /// between the segments of one stream (lengths, identifications, checksums, sequence
    /// numbers, the PSH flag).
    fn same_headers(&self, a: &[u8], b: &[u8]) -> bool {
        let varying = [
            (2, 4),
            (10, 2),
            (self.outer + 4, 4),
            (self.inner + 2, 4),
            (self.inner + 10, 2),
            (self.tcp + 4, 4),
            (self.tcp + 13, 1),
            (self.tcp + 16, 2),
        ];
        let mut from = 0;
        for (at, len) in varying {
            if a[from..at] != b[from..at] {
                return false;
            }
            from = at + len;
        }
        a[from..self.headers] == b[from..self.headers]
    }
}

/// ACK, the only TCP flag (with PSH) a merged segment may carry.
const ACK: u8 = 0x10;
/// The largest super-packet: its outer IPv4 total length must fit 16 bits.
const SUPER_PACKET_MAX: usize = 65_535;

/// Merges runs of decrypted packets of one TCP stream inside VXLAN into super-packets for the
/// TAP device (see the module docs). [`Coalescer::push`] each packet in arrival order,
/// [`Coalescer::flush`] when a batch is done; `write(header, packet)` gets what to write.
#[derive(Debug)]
pub struct Coalescer {
    /// Whether the device takes UDP tunnel GSO writes; when not, every packet goes out alone.
    enabled: bool,
    /// The super-packet being built.
    buf: Vec<u8>,
    held: Option<Held>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    stream: Stream,
    /// Payload bytes per segment: the first segment's.
    mss: usize,
    /// The sequence number the next segment must have.
    next_seq: u32,
    segments: usize,
    /// A segment shorter than `mss`, or with PSH, ended it.
    closed: bool,
}

impl Coalescer {
    /// A coalescer for a device that takes UDP tunnel GSO writes (`enabled`), or one that
    /// passes every packet on alone.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            buf: Vec::with_capacity(SUPER_PACKET_MAX),
            held: None,
        }
    }

    /// Takes `packet`: merged into the super-packet held, or written (after what is held) on
    /// its own, or held to start a new super-packet.
    pub fn push(&mut self, packet: &[u8], write: &mut impl FnMut(VnetHdr, &[u8])) {
        let stream = if self.enabled {
            Stream::of(packet)
        } else {
            None
        };
        let Some(stream) = stream else {
            self.flush(write);
            write(VnetHdr::default(), packet);
            return;
        };
        let payload = packet.len() - stream.headers;
        if let Some(held) = &mut self.held
            && !held.closed
            && held.stream.headers == stream.headers
            && held.next_seq == stream.seq
            && payload <= held.mss
            && self.buf.len() + payload <= SUPER_PACKET_MAX
            && held.stream.same_headers(&self.buf, packet)
        {
            self.buf.extend_from_slice(&packet[stream.headers..]);
            held.next_seq = stream.seq.wrapping_add(payload as u32);
            held.segments += 1;
            if stream.flags & PSH != 0 {
                self.buf[stream.tcp + 13] |= PSH;
            }
            held.closed = payload < held.mss || stream.flags & PSH != 0;
            return;
        }
        self.flush(write);
        self.buf.clear();
        self.buf.extend_from_slice(packet);
        self.held = Some(Held {
            stream,
            mss: payload,
            next_seq: stream.seq.wrapping_add(payload as u32),
            segments: 1,
            closed: stream.flags & PSH != 0,
        });
    }

    /// Writes what is held.
    pub fn flush(&mut self, write: &mut impl FnMut(VnetHdr, &[u8])) {
        let Some(held) = self.held.take() else {
            return;
        };
        if held.segments == 1 {
            write(VnetHdr::default(), &self.buf);
            return;
        }
        let s = held.stream;
        let len = self.buf.len();
        let out = &mut self.buf;
        put16(out, 2, len as u16);
        put16(out, 10, 0);
        let sum = checksum(&out[..s.outer], 0);
        put16(out, 10, sum);
        put16(out, s.outer + 4, (len - s.outer) as u16);
        // No outer UDP checksum (legal over IPv4): the packet came through WireGuard, which
        // authenticated every byte, and the kernel does not check a checksummed-by-device
        // packet's outer checksum anyway.
        put16(out, s.outer + 6, 0);
        let inner_len = s.tcp - s.inner;
        put16(out, s.inner + 2, (len - s.inner) as u16);
        put16(out, s.inner + 10, 0);
        let sum = checksum(&out[s.inner..s.tcp], 0);
        put16(out, s.inner + 10, sum);
        // The pseudo-header sum, as a stack leaves it for a device that checksums.
        let pseudo = pseudo_header(&out[s.inner..s.inner + inner_len], IPPROTO_TCP, len - s.tcp);
        put16(out, s.tcp + 16, !checksum(&[], pseudo));
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4,
            hdr_len: s.headers as u16,
            gso_size: held.mss as u16,
            csum_start: s.tcp as u16,
            csum_offset: 16,
            outer_th_offset: s.outer as u16,
            inner_nh_offset: s.inner as u16,
        };
        write(hdr, out);
    }
}

/// Why a packet read from the TAP device could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffloadError {
    /// Shorter than its virtio-net header, or than the headers it says it has.
    Truncated,
    /// A segmentation the engine never asked for (`gso_type`).
    UnsupportedGso(u8),
    /// Headers that are not what the segmentation says (not IPv4, not UDP/TCP, a zero
    /// `gso_size`, a checksum position outside the packet).
    Malformed(&'static str),
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "packet shorter than its headers"),
            Self::UnsupportedGso(t) => write!(f, "segmentation type {t:#x} was not asked for"),
            Self::Malformed(what) => write!(f, "malformed offloaded packet: {what}"),
        }
    }
}

impl std::error::Error for OffloadError {}

/// The fields of a virtio-net header the engine uses (little-endian on the wire: the engine sets
/// `TUNSETVNETLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers repeated in each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksummed part starts.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum goes.
    pub csum_offset: u16,
    /// UDP tunnel GSO: offset of the outer UDP header.
    pub outer_th_offset: u16,
    /// UDP tunnel GSO: offset of the inner IP header.
    pub inner_nh_offset: u16,
}

impl VnetHdr {
    /// Reads the header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, OffloadError> {
        let b = bytes.get(..VNET_HDR_LEN).ok_or(OffloadError::Truncated)?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            outer_th_offset: le(20),
            inner_nh_offset: le(22),
        })
    }

    /// The header as written before a packet.
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0_u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (at, value) in [
            (2, self.hdr_len),
            (4, self.gso_size),
            (6, self.csum_start),
            (8, self.csum_offset),
            (20, self.outer_th_offset),
            (22, self.inner_nh_offset),
        ] {
            b[at..at + 2].copy_from_slice(&value.to_le_bytes());
        }
        b
    }
}

impl VnetHdr {
    /// The header for the same packet behind `by` more bytes of link-layer header (fewer when
    /// negative); `None` when an offset would fall outside 16 bits.
    pub fn moved(self, by: i32) -> Option<Self> {
        let shift = |v: u16| u16::try_from(i32::from(v) + by).ok();
        let mut h = self;
        if h.flags & F_NEEDS_CSUM != 0 {
            h.csum_start = shift(h.csum_start)?;
        }
        if h.gso_type != GSO_NONE {
            h.hdr_len = shift(h.hdr_len)?;
            if h.gso_type & GSO_UDP_TUNNEL_IPV4 != 0 {
                h.outer_th_offset = shift(h.outer_th_offset)?;
                h.inner_nh_offset = shift(h.inner_nh_offset)?;
            }
        }
        Some(h)
    }
}

/// Makes a frame read from the TAP device (virtio-net header, Ethernet, IPv4) into what
/// [`Segments::new`] reads (virtio-net header, IPv4), in place: the header moves up over the
/// Ethernet header, its offsets with it. Returns where that now starts in `read`; `None` for a
/// frame that is not IPv4 (the tunnel namespace's IPv6 chatter, which has nowhere to go).
pub fn strip_ethernet(read: &mut [u8]) -> Option<usize> {
    let ethertype = read.get(VNET_HDR_LEN + 12..VNET_HDR_LEN + ETH_HLEN)?;
    if ethertype != [0x08, 0x00] {
        return None;
    }
    let hdr = VnetHdr::parse(read).ok()?.moved(-(ETH_HLEN as i32))?;
    read[ETH_HLEN..ETH_HLEN + VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
    Some(ETH_HLEN)
}

/// The packets one read from the TAP device stands for, produced one at a time into a buffer
/// of the caller's ([`Segments::next_into`]).
#[derive(Debug)]
pub struct Segments<'a> {
    packet: &'a [u8],
    plan: Plan,
    next: usize,
}

#[derive(Debug, Clone, Copy)]
enum Plan {
    /// One packet, its checksum finished at `at` over `from..` when `Some`.
    Whole { csum: Option<(usize, usize)> },
    /// TCP segmentation.
    Tcp(TcpPlan),
}

#[derive(Debug, Clone, Copy)]
struct TcpPlan {
    /// The outer IPv4 header's length, when the stream is inside VXLAN.
    outer: Option<usize>,
    /// Whether the outer UDP checksum is computed.
    outer_csum: bool,
    /// Offset of the inner IPv4 header.
    inner: usize,
    /// Offset of the TCP header.
    tcp: usize,
    /// Length of all headers.
    headers: usize,
    /// Payload bytes per segment.
    mss: usize,
    /// Segments in all.
    count: usize,
}

impl<'a> Segments<'a> {
    /// The packets `read` (virtio-net header, then the packet) stands for.
    pub fn new(read: &'a [u8]) -> Result<Self, OffloadError> {
        let hdr = VnetHdr::parse(read)?;
        let packet = &read[VNET_HDR_LEN..];
        let plan = match hdr.gso_type & !GSO_ECN {
            GSO_NONE => {
                let csum = (hdr.flags & F_NEEDS_CSUM != 0)
                    .then(|| {
                        let from = usize::from(hdr.csum_start);
                        let at = from + usize::from(hdr.csum_offset);
                        (at + 2 <= packet.len())
                            .then_some((from, at))
                            .ok_or(OffloadError::Malformed("checksum outside the packet"))
                    })
                    .transpose()?;
                Plan::Whole { csum }
            }
            GSO_TCPV4 => Plan::Tcp(tcp_plan(packet, None, hdr)?),
            t if t == GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4 => {
                let outer = ipv4_header_len(packet, 0, IPPROTO_UDP)?;
                Plan::Tcp(tcp_plan(packet, Some(outer), hdr)?)
            }
            other => return Err(OffloadError::UnsupportedGso(other)),
        };
        Ok(Self {
            packet,
            plan,
            next: 0,
        })
    }

    /// How many packets this read stands for.
    pub fn count(&self) -> usize {
        match self.plan {
            Plan::Whole { .. } => 1,
            Plan::Tcp(plan) => plan.count,
        }
    }

    /// Writes the next packet into `out` (which must hold the largest one: the headers and one
    /// segment's payload) and returns its length; `None` when all were produced.
    pub fn next_into(&mut self, out: &mut [u8]) -> Option<usize> {
        if self.next >= self.count() {
            return None;
        }
        let k = self.next;
        self.next += 1;
        match self.plan {
            Plan::Whole { csum } => {
                let len = self.packet.len();
                out[..len].copy_from_slice(self.packet);
                if let Some((from, at)) = csum {
                    let sum = checksum(&out[from..len], 0);
                    out[at..at + 2].copy_from_slice(&nonzero(sum).to_be_bytes());
                }
                Some(len)
            }
            Plan::Tcp(plan) => Some(plan.segment(self.packet, k, out)),
        }
    }
}

impl TcpPlan {
    /// Segment `k` of `packet` into `out`; its length.
    fn segment(&self, packet: &[u8], k: usize, out: &mut [u8]) -> usize {
        let payload = &packet[self.headers..];
        let start = k * self.mss;
        let chunk = &payload[start..(start + self.mss).min(payload.len())];
        let len = self.headers + chunk.len();
        out[..self.headers].copy_from_slice(&packet[..self.headers]);
        out[self.headers..len].copy_from_slice(chunk);
        let k16 = k as u16;
        let inner_len = self.tcp - self.inner;
        set_ipv4(out, self.inner, inner_len, len - self.inner, k16);
        let t = self.tcp;
        let seq = get32(packet, t + 4).wrapping_add((k * self.mss) as u32);
        out[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        if k + 1 < self.count {
            out[t + 13] &= !(FIN | PSH);
        }
        if k > 0 {
            out[t + 13] &= !CWR;
        }
        put16(out, t + 16, 0);
        let sum = checksum(
            &out[t..len],
            pseudo_header(&out[self.inner..self.tcp], IPPROTO_TCP, len - t),
        );
        put16(out, t + 16, nonzero(sum));
        // The outer headers last: their UDP checksum covers the inner packet as now written.
        if let Some(outer) = self.outer {
            set_ipv4(out, 0, outer, len, k16);
            let udp = outer;
            put16(out, udp + 4, (len - udp) as u16);
            put16(out, udp + 6, 0);
            if self.outer_csum {
                let sum = checksum(
                    &out[udp..len],
                    pseudo_header(&out[..outer], IPPROTO_UDP, len - udp),
                );
                put16(out, udp + 6, nonzero(sum));
            }
        }
        len
    }
}

/// The segmentation of a TCP super-packet (inside VXLAN when `outer` is the outer IPv4 header's
/// length).
fn tcp_plan(packet: &[u8], outer: Option<usize>, hdr: VnetHdr) -> Result<TcpPlan, OffloadError> {
    let inner = match outer {
        Some(outer) => outer + VXLAN_TO_INNER,
        None => 0,
    };
    if let Some(outer) = outer {
        // The inner frame must be IPv4 (Ethernet type at the end of the inner Ethernet header).
        let ethertype = packet
            .get(inner - 2..inner)
            .ok_or(OffloadError::Truncated)?;
        if ethertype != [0x08, 0x00] || packet.len() < outer + 8 {
            return Err(OffloadError::Malformed("the tunnel does not carry IPv4"));
        }
    }
    let tcp = inner + ipv4_header_len(packet, inner, IPPROTO_TCP)?;
    let tcp_len = usize::from(packet.get(tcp + 12).ok_or(OffloadError::Truncated)? >> 4) * 4;
    let headers = tcp + tcp_len;
    if tcp_len < 20 || packet.len() < headers {
        return Err(OffloadError::Truncated);
    }
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(OffloadError::Malformed("zero segment size"));
    }
    let payload = packet.len() - headers;
    Ok(TcpPlan {
        outer,
        outer_csum: hdr.flags & F_UDP_TUNNEL_CSUM != 0,
        inner,
        tcp,
        headers,
        mss,
        count: payload.div_ceil(mss).max(1),
    })
}

/// The length of the IPv4 header at `at`, checked to carry `proto`.
fn ipv4_header_len(packet: &[u8], at: usize, proto: u8) -> Result<usize, OffloadError> {
    let header = packet.get(at..at + 20).ok_or(OffloadError::Truncated)?;
    let len = usize::from(header[0] & 0x0f) * 4;
    if header[0] >> 4 != 4 || len < 20 {
        return Err(OffloadError::Malformed("not IPv4"));
    }
    if header[9] != proto {
        return Err(OffloadError::Malformed("not the protocol segmented"));
    }
    if packet.len() < at + len {
        return Err(OffloadError::Truncated);
    }
    Ok(len)
}

/// Sets the IPv4 header at `at` (of `header_len` bytes) for a packet of `total` bytes from it,
/// the `k`th of its stream: total length, identification + k, checksum.
fn set_ipv4(out: &mut [u8], at: usize, header_len: usize, total: usize, k: u16) {
    put16(out, at + 2, total as u16);
    let id = u16::from_be_bytes([out[at + 4], out[at + 5]]).wrapping_add(k);
    put16(out, at + 4, id);
    put16(out, at + 10, 0);
    let sum = checksum(&out[at..at + header_len], 0);
    put16(out, at + 10, sum);
}

/// The pseudo-header sum (not folded) for an IPv4 `header`, `proto` and L4 length.
fn pseudo_header(header: &[u8], proto: u8, l4_len: usize) -> u32 {
    let mut sum = 0_u32;
    for i in (12..20).step_by(2) {
        sum += u32::from(u16::from_be_bytes([header[i], header[i + 1]]));
    }
    sum + u32::from(proto) + l4_len as u32
}

/// The Internet checksum (RFC 1071) of `bytes`, starting from the partial sum `initial`.
pub fn checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut sum = u64::from(initial);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        // Four 16-bit words at once: their big-endian sum, carried later.
        let word = u64::from_be_bytes(c.try_into().expect("eight bytes"));
        sum += (word >> 48) + ((word >> 32) & 0xffff) + ((word >> 16) & 0xffff) + (word & 0xffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for w in &mut rest {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = rest.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A computed checksum of zero is sent as 0xffff (the same in ones' complement; zero means "no
/// checksum" to UDP).
fn nonzero(sum: u16) -> u16 {
    if sum == 0 { 0xffff } else { sum }
}

fn put16(out: &mut [u8], at: usize, value: u16) {
    out[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn get32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Whether the IPv4 header at `at` and its TCP or UDP checksum verify.
    fn verifies(packet: &[u8], at: usize) -> bool {
        let hl = usize::from(packet[at] & 0x0f) * 4;
        if checksum(&packet[at..at + hl], 0) != 0 {
            return false;
        }
        let total = usize::from(u16::from_be_bytes([packet[at + 2], packet[at + 3]]));
        let l4 = &packet[at + hl..at + total];
        if packet[at + 9] == IPPROTO_UDP && l4[6..8] == [0, 0] {
            return true;
        }
        checksum(
            l4,
            pseudo_header(&packet[at..at + hl], packet[at + 9], l4.len()),
        ) == 0
    }

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], total: usize, id: u16) -> Vec<u8> {
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&(total as u16).to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        let sum = checksum(&h, 0);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h
    }

    /// A VXLAN super-packet as the kernel hands it over: headers once, `payload` of one TCP
    /// stream, the inner TCP checksum left partial (pseudo-header sum only).
    fn super_packet(payload: &[u8], mss: u16, flags: u8, outer_csum: bool) -> Vec<u8> {
        let inner_total = 20 + 20 + payload.len();
        let outer_total = 20 + VXLAN_TO_INNER + inner_total;
        let mut hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4,
            gso_size: mss,
            csum_start: (20 + VXLAN_TO_INNER + 20) as u16,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        if outer_csum {
            hdr.flags |= F_UDP_TUNNEL_CSUM;
        }
        let mut p = hdr.to_bytes().to_vec();
        p.extend(ipv4(17, [172, 21, 1, 11], [172, 21, 1, 12], outer_total, 7));
        p.extend_from_slice(&[0xc0, 0x01, 0x12, 0xb5, 0, 0, 0, 0]);
        p.extend_from_slice(&[0x08, 0, 0, 0, 0, 0x10, 0x04, 0]);
        p.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        p.extend(ipv4(6, [10, 0, 1, 2], [10, 0, 1, 3], inner_total, 1000));
        p.extend_from_slice(&[0x9c, 0x40, 0x00, 0x50]);
        p.extend_from_slice(&0xffff_fff0_u32.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        p.extend_from_slice(payload);
        p
    }

    fn segments(read: &[u8]) -> Vec<Vec<u8>> {
        let mut segs = Segments::new(read).expect("a packet the engine takes");
        let mut out = vec![0_u8; 65_600];
        let mut all = Vec::new();
        while let Some(n) = segs.next_into(&mut out) {
            all.push(out[..n].to_vec());
        }
        all
    }

    #[test]
    fn a_super_packet_becomes_the_packets_the_kernel_would_have_sent() {
        let payload: Vec<u8> = (0..4000_u32).map(|i| (i * 7 % 251) as u8).collect();
        // FIN|PSH|ACK|CWR on the stream: FIN and PSH stay on the last, CWR on the first.
        let segs = segments(&super_packet(&payload, 1400, 0x99, false));
        assert_eq!(segs.len(), 3);
        let inner = 20 + VXLAN_TO_INNER;
        let mut joined = Vec::new();
        for (k, s) in segs.iter().enumerate() {
            assert!(verifies(s, 0), "outer headers of segment {k}");
            assert!(verifies(s, inner), "inner headers of segment {k}");
            assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 7 + k as u16, "outer id");
            assert_eq!(
                usize::from(u16::from_be_bytes([s[24], s[25]])),
                s.len() - 20
            );
            assert_eq!(
                u16::from_be_bytes([s[inner + 4], s[inner + 5]]),
                1000 + k as u16
            );
            let t = inner + 20;
            let seq = u32::from_be_bytes(s[t + 4..t + 8].try_into().unwrap());
            assert_eq!(seq, 0xffff_fff0_u32.wrapping_add(1400 * k as u32), "wraps");
            let expected_flags = match k {
                0 => 0x90,
                2 => 0x19,
                _ => 0x10,
            };
            assert_eq!(s[t + 13], expected_flags, "flags of segment {k}");
            joined.extend_from_slice(&s[t + 20..]);
        }
        assert_eq!(joined, payload);
        assert_eq!(segs[2].len(), 20 + VXLAN_TO_INNER + 40 + 1200);
    }

    #[test]
    fn the_outer_udp_checksum_is_computed_when_asked() {
        let segs = segments(&super_packet(&[5; 3000], 1000, 0x10, true));
        assert_eq!(segs.len(), 3);
        for s in &segs {
            assert_ne!(s[26..28], [0, 0]);
            assert!(verifies(s, 0));
        }
    }

    #[test]
    fn a_plain_packet_gets_its_checksum_finished_and_nothing_else() {
        // UDP from 10.0.0.1 to 10.0.0.2 with the pseudo-header sum in its checksum field, as
        // the kernel leaves a packet for a device that checksums.
        let payload = b"hello, tunnel";
        let udp_len = 8 + payload.len();
        let mut ip = ipv4(17, [10, 0, 0, 1], [10, 0, 0, 2], 20 + udp_len, 1);
        let partial = !checksum(&[], pseudo_header(&ip, 17, udp_len));
        ip.extend_from_slice(&[0x30, 0x39, 0x00, 0x35]);
        ip.extend_from_slice(&(udp_len as u16).to_be_bytes());
        ip.extend_from_slice(&partial.to_be_bytes());
        ip.extend_from_slice(payload);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        let mut read = hdr.to_bytes().to_vec();
        read.extend_from_slice(&ip);
        let segs = segments(&read);
        assert_eq!(segs.len(), 1);
        assert!(verifies(&segs[0], 0));
        assert_eq!(segs[0][..26], ip[..26], "only the checksum changes");
        // Without NEEDS_CSUM a packet passes untouched.
        let mut read = VnetHdr::default().to_bytes().to_vec();
        read.extend_from_slice(&ip);
        assert_eq!(segments(&read), vec![ip]);
    }

    #[test]
    fn a_tap_frame_loses_its_ethernet_header_and_keeps_its_offsets_right() {
        let read = super_packet(&[1; 3000], 1000, 0x10, false);
        let hdr = VnetHdr::parse(&read).unwrap();
        // As the TAP device hands it over: the same, behind an Ethernet header.
        let mut frame = hdr.moved(ETH_HLEN as i32).unwrap().to_bytes().to_vec();
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00]);
        frame.extend_from_slice(&read[VNET_HDR_LEN..]);
        let start = strip_ethernet(&mut frame).expect("IPv4");
        assert_eq!(frame[start..], read[..]);
        assert_eq!(segments(&frame[start..]), segments(&read));
        // IPv6 (or ARP) has nowhere to go.
        frame[VNET_HDR_LEN + 12..VNET_HDR_LEN + ETH_HLEN].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(strip_ethernet(&mut frame), None);
    }

    #[test]
    fn what_the_engine_never_asked_for_is_refused_with_the_reason() {
        let mut read = super_packet(&[1; 100], 50, 0x10, false);
        read[1] = 5; // VIRTIO_NET_HDR_GSO_UDP_L4
        assert_eq!(
            Segments::new(&read).unwrap_err(),
            OffloadError::UnsupportedGso(5)
        );
        let read = super_packet(&[1; 100], 0, 0x10, false);
        assert_eq!(
            Segments::new(&read).unwrap_err(),
            OffloadError::Malformed("zero segment size")
        );
        let read = super_packet(&[1; 100], 50, 0x10, false);
        assert_eq!(
            Segments::new(&read[..VNET_HDR_LEN + 60]).unwrap_err(),
            OffloadError::Truncated
        );
        assert_eq!(
            Segments::new(&[0; 10]).unwrap_err(),
            OffloadError::Truncated
        );
    }

    /// What a coalescer fed `packets` writes: (header, packet) per write.
    fn coalesced(packets: &[Vec<u8>], enabled: bool) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut c = Coalescer::new(enabled);
        let mut writes = Vec::new();
        let mut write = |h: VnetHdr, p: &[u8]| writes.push((h, p.to_vec()));
        for p in packets {
            c.push(p, &mut write);
        }
        c.flush(&mut write);
        writes
    }

    /// A written (header, packet) read back as the packets it stands for.
    fn cut(hdr: VnetHdr, packet: &[u8]) -> Vec<Vec<u8>> {
        let mut read = hdr.to_bytes().to_vec();
        read.extend_from_slice(packet);
        segments(&read)
    }

    #[test]
    fn a_run_of_segments_is_written_once_and_cuts_back_into_the_same_segments() {
        let payload: Vec<u8> = (0..10_000_u32).map(|i| (i % 253) as u8).collect();
        let segs = segments(&super_packet(&payload, 1448, 0x18, false));
        assert_eq!(segs.len(), 7);
        let writes = coalesced(&segs, true);
        assert_eq!(writes.len(), 1, "one write for the run");
        let (hdr, packet) = &writes[0];
        assert_eq!(hdr.gso_type, GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4);
        assert_eq!(hdr.gso_size, 1448);
        assert_eq!(usize::from(hdr.hdr_len), 20 + VXLAN_TO_INNER + 40);
        assert_eq!((hdr.outer_th_offset, hdr.inner_nh_offset), (20, 50));
        assert_eq!(packet.len(), 20 + VXLAN_TO_INNER + 40 + payload.len());
        // Cut again the way the kernel would, it gives back the very segments (PSH on the last
        // only, as it came).
        assert_eq!(cut(*hdr, packet), segs);
    }

    #[test]
    fn only_consecutive_segments_merge_and_nothing_is_reordered() {
        let segs = segments(&super_packet(&[9; 6000], 1000, 0x10, false));
        assert_eq!(segs.len(), 6);
        let mut other = segs[0].clone();
        other[20 + VXLAN_TO_INNER + 20 + 3] ^= 1; // another destination port: another stream
        let plain = ipv4(17, [10, 0, 0, 1], [10, 0, 0, 2], 28, 1);
        // 0 1 | other | 2 | plain | 4 5 (3 lost: 4 does not follow 2)
        let packets = vec![
            segs[0].clone(),
            segs[1].clone(),
            other.clone(),
            segs[2].clone(),
            plain.clone(),
            segs[4].clone(),
            segs[5].clone(),
        ];
        let writes = coalesced(&packets, true);
        let back: Vec<Vec<u8>> = writes.iter().flat_map(|(h, p)| cut(*h, p)).collect();
        assert_eq!(back, packets, "the same packets, in the same order");
        let counts: Vec<usize> = writes.iter().map(|(h, p)| cut(*h, p).len()).collect();
        assert_eq!(counts, vec![2, 1, 1, 1, 2]);
        // A plain packet goes out unchanged behind a zero header.
        assert_eq!(writes[3], (VnetHdr::default(), plain));
    }

    #[test]
    fn a_short_segment_or_psh_ends_a_run_and_a_disabled_coalescer_merges_nothing() {
        let segs = segments(&super_packet(&[3; 2500], 1000, 0x10, false));
        let more = segments(&super_packet(&[4; 2000], 1000, 0x18, false));
        // 1000, 1000, 500 (short: ends the run) then a new stream of 1000 and 1000 with PSH.
        let mut packets = segs.clone();
        packets.extend(more.iter().cloned());
        let counts: Vec<usize> = coalesced(&packets, true)
            .iter()
            .map(|(h, p)| cut(*h, p).len())
            .collect();
        assert_eq!(counts, vec![3, 2]);
        let alone = coalesced(&packets, false);
        assert_eq!(alone.len(), 5);
        assert!(alone.iter().all(|(h, _)| *h == VnetHdr::default()));
        assert_eq!(
            alone.into_iter().map(|(_, p)| p).collect::<Vec<_>>(),
            packets
        );
    }

    #[test]
    fn segments_with_an_outer_udp_checksum_merge_into_one_without() {
        let segs = segments(&super_packet(&[7; 4000], 1000, 0x10, true));
        assert!(segs.iter().all(|s| s[26..28] != [0, 0]));
        let writes = coalesced(&segs, true);
        assert_eq!(writes.len(), 1);
        let (hdr, packet) = &writes[0];
        assert_eq!(packet[26..28], [0, 0]);
        let back = cut(*hdr, packet);
        assert_eq!(back.len(), 4);
        for (b, s) in back.iter().zip(&segs) {
            assert!(verifies(b, 0) && verifies(b, 20 + VXLAN_TO_INNER));
            assert_eq!(b[28..], s[28..], "the same but for the outer UDP checksum");
        }
    }

    proptest! {
        /// Any stream cut at any segment size: every segment verifies, none is longer than the
        /// headers and one segment, and the payloads join back into the stream.
        #[test]
        fn segments_verify_and_join_back(
            payload in proptest::collection::vec(any::<u8>(), 1..9000),
            mss in 1_u16..2000,
            outer_csum in any::<bool>(),
        ) {
            let read = super_packet(&payload, mss, 0x18, outer_csum);
            let segs = segments(&read);
            prop_assert_eq!(segs.len(), payload.len().div_ceil(usize::from(mss)));
            let inner = 20 + VXLAN_TO_INNER;
            let mut joined = Vec::new();
            for s in &segs {
                prop_assert!(verifies(s, 0) && verifies(s, inner));
                prop_assert!(s.len() <= inner + 40 + usize::from(mss));
                joined.extend_from_slice(&s[inner + 40..]);
            }
            prop_assert_eq!(joined, payload);
        }

        /// Any stream, cut at any size, merged back: every write cuts back into exactly the
        /// segments that went in, in order.
        #[test]
        fn coalescing_then_cutting_gives_back_the_segments(
            payload in proptest::collection::vec(any::<u8>(), 1..20_000),
            mss in 100_u16..1500,
        ) {
            let segs = segments(&super_packet(&payload, mss, 0x10, false));
            let writes = coalesced(&segs, true);
            let back: Vec<Vec<u8>> = writes.iter().flat_map(|(h, p)| cut(*h, p)).collect();
            prop_assert_eq!(back, segs);
        }

        /// The checksum of any bytes, appended, makes them sum to zero.
        #[test]
        fn checksums_verify(mut bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            if bytes.len() % 2 == 1 {
                bytes.push(0);
            }
            let sum = checksum(&bytes, 0);
            bytes.extend_from_slice(&sum.to_be_bytes());
            prop_assert_eq!(checksum(&bytes, 0), 0);
        }
    }
}
