//! What the node's network devices can take, as the kernel says it: which devices take native
//! XDP redirects, and which driver runs each.
//!
//! A native XDP redirect into a device that cannot take XDP frames is dropped after the program
//! has returned, where the program cannot see it. A veth, the link of nodes run as containers and
//! of most test rigs, takes them only while its peer runs an XDP program or has GRO on, and its
//! peer is often in a namespace the node cannot see. The kernel knows, and says so in the netdev
//! generic netlink family (`dev-get`, attribute `xdp-features`, flag `ndo-xmit`): for a veth it
//! follows the peer's program and GRO setting. That flag decides which connections XDP may
//! redirect natively (`MESH_EGRESS`); the others take the TC entry.

use std::collections::BTreeMap;
use std::io;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, Nla, NlaBuffer, NlasIterator, Parseable, ParseableParametrized,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

/// `NETDEV_CMD_DEV_GET` (include/uapi/linux/netdev.h).
const NETDEV_CMD_DEV_GET: u8 = 1;
/// `NETDEV_A_DEV_IFINDEX`.
const NETDEV_A_DEV_IFINDEX: u16 = 1;
/// `NETDEV_A_DEV_XDP_FEATURES`.
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
/// `NETDEV_XDP_ACT_NDO_XMIT`: the device takes frames redirected by XDP.
const NETDEV_XDP_ACT_NDO_XMIT: u64 = 1 << 2;

/// A netdev family message (`Documentation/netlink/specs/netdev.yaml`): the `dev-get` request
/// and its replies.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Netdev {
    cmd: u8,
    attrs: Vec<NetdevAttr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NetdevAttr {
    Ifindex(u32),
    XdpFeatures(u64),
    Other(DefaultNla),
}

impl Nla for NetdevAttr {
    fn value_len(&self) -> usize {
        match self {
            Self::Ifindex(_) => 4,
            Self::XdpFeatures(_) => 8,
            Self::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::Ifindex(_) => NETDEV_A_DEV_IFINDEX,
            Self::XdpFeatures(_) => NETDEV_A_DEV_XDP_FEATURES,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Ifindex(v) => buffer.copy_from_slice(&v.to_ne_bytes()),
            Self::XdpFeatures(v) => buffer.copy_from_slice(&v.to_ne_bytes()),
            Self::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for NetdevAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let value = buf.value();
        Ok(match (buf.kind(), value.len()) {
            (NETDEV_A_DEV_IFINDEX, 4) => {
                Self::Ifindex(u32::from_ne_bytes(value.try_into().expect("4 bytes")))
            }
            (NETDEV_A_DEV_XDP_FEATURES, 8) => {
                Self::XdpFeatures(u64::from_ne_bytes(value.try_into().expect("8 bytes")))
            }
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

impl GenlFamily for Netdev {
    fn family_name() -> &'static str {
        "netdev"
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for Netdev {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer);
    }
}

impl ParseableParametrized<[u8], GenlHeader> for Netdev {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| NetdevAttr::parse(&nla)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            cmd: header.cmd,
            attrs,
        })
    }
}

/// A generic netlink socket of the current network namespace.
struct Genl {
    socket: Socket,
    seq: u32,
}

impl Genl {
    fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends `payload` and collects the replies (one, or a dump's).
    fn request<F>(&mut self, payload: GenlMessage<F>, flags: u16) -> io::Result<Vec<F>>
    where
        F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + std::fmt::Debug,
    {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        message.finalize();
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut replies = Vec::new();
        loop {
            let (bytes, _) = self.socket.recv_from_full()?;
            let mut at = 0;
            while at < bytes.len() {
                let reply = NetlinkMessage::<GenlMessage<F>>::deserialize(&bytes[at..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a netlink message of length 0",
                    ));
                }
                at += len;
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m.payload);
                        if flags & NLM_F_DUMP == 0 {
                            return Ok(replies);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => {
                        return Err(e.to_io());
                    }
                    _ => {}
                }
            }
        }
    }

    /// The ID the kernel gave the family named `name`.
    fn family(&mut self, name: &str) -> io::Result<u16> {
        let request = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(name.to_owned())],
        });
        self.request(request, 0)?
            .into_iter()
            .flat_map(|reply| reply.nlas)
            .find_map(|attr| match attr {
                GenlCtrlAttrs::FamilyId(id) => Some(id),
                _ => None,
            })
            .ok_or_else(|| io::Error::other(format!("no generic netlink family {name}")))
    }
}

/// The devices of the current network namespace that take native XDP redirects, by ifindex:
/// `true` when the kernel lists `ndo-xmit` among their XDP features.
pub fn xdp_frames_taken() -> io::Result<BTreeMap<u32, bool>> {
    let mut genl = Genl::open()?;
    let family = genl.family(Netdev::family_name()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("the kernel's netdev netlink family (Linux 6.3 or later): {e}"),
        )
    })?;
    let mut request = GenlMessage::from_payload(Netdev {
        cmd: NETDEV_CMD_DEV_GET,
        attrs: Vec::new(),
    });
    request.set_resolved_family_id(family);
    let mut devices = BTreeMap::new();
    for reply in genl.request(request, NLM_F_DUMP)? {
        let mut ifindex = None;
        let mut features = 0;
        for attr in reply.attrs {
            match attr {
                NetdevAttr::Ifindex(i) => ifindex = Some(i),
                NetdevAttr::XdpFeatures(f) => features = f,
                NetdevAttr::Other(_) => {}
            }
        }
        if let Some(i) = ifindex {
            devices.insert(i, features & NETDEV_XDP_ACT_NDO_XMIT != 0);
        }
    }
    Ok(devices)
}

/// `SIOCETHTOOL` (linux/sockios.h).
const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// `ETHTOOL_GDRVINFO` (linux/ethtool.h).
const ETHTOOL_GDRVINFO: u32 = 3;

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The driver of interface `name` (`veth`, `bridge`, `mlx5_core`, ...), as `ethtool -i` shows it.
pub fn driver(name: &str) -> io::Result<String> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name} is too long"),
        ));
    }
    // SAFETY: plain integers and byte arrays: all-zero is valid.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above (a name and a union of integers and pointers).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *to = from as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: a socket call with no pointers.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `request` and the `info` it points at live across the call, which fills `info`.
    let rc = unsafe { libc::ioctl(socket, SIOCETHTOOL, &raw mut request) };
    let result = if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
        Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
    };
    // SAFETY: the descriptor was opened above and is closed once.
    unsafe { libc::close(socket) };
    result
}
