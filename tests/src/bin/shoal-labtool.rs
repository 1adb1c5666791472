//! `shoal-labtool`: the lab's stand-in tasks and load generators, one small binary with
//! subcommands, used by `tests/tests/mesh.rs` and the mesh benchmark.
//!
//! - `serve` is the stand-in service task a node runs: it answers HTTP requests, TCP lines and UDP
//!   datagrams with its name, so a client can tell which backend a request landed on.
//! - `ask` and `hold` are the clients the tests judge by: one request per source port (to check
//!   load balancing and flow affinity), or one long-lived connection (to check that established
//!   flows survive changes).
//! - `udp-flood` / `udp-sink` and `tcp-rate` are the load generators of the benchmark (packets per
//!   second, connections per second); `tcp-proxy` is the userspace-proxy baseline they compare to.
//! - `wg-flood` and `vxlan-send` play an attacker on the data network (the hardening tests and
//!   benchmark): forged WireGuard handshake initiations at a set rate, and hand-made VXLAN frames
//!   for a chosen VNI, sent in the clear or through a node's own WireGuard tunnel.
//!
//! Everything is std threads and blocking sockets; `libc` is used where std has no API (socket
//! options before `bind`, `recvmmsg`/`sendmmsg`). Readiness lines (`serving ...`, `listening`,
//! `proxying`) are printed and flushed once the sockets are bound, so a caller can wait for them
//! instead of sleeping. Results are printed as one JSON line on stdout.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::mem;
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream,
    UdpSocket,
};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::ptr;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

const USAGE: &str = "\
shoal-labtool: the Shoal lab's stand-in tasks and load generators

usage: shoal-labtool <subcommand> [--flag value ...]

subcommands:
  serve --name NAME --port P [--addr 0.0.0.0]
      Stand-in service on TCP and UDP port P, runs until killed. HTTP requests (GET/HEAD/POST)
      get `200 OK` with body `NAME\\n`; other TCP connections get `NAME\\n` per line received;
      UDP datagrams get `NAME\\n`, except those starting with byte 0x00 (counted, not answered).
      Prints `serving NAME on P` once bound.
      With --upstream HOST:PORT (a name is resolved at each request), an HTTP request is
      answered `NAME -> <the upstream's name>`: a front tier calling a back tier.
  resolve --name NAME [--server 127.0.0.11:53] [--type A] [--tcp] [--timeout-ms 2000]
      One DNS query (A, AAAA or PTR; PTR takes an address as NAME). Prints
      `<RCODE> <answer> ...` (answers sorted), or `TIMEOUT`; exits 0 either way.
  dns-rate --name NAME [--server 127.0.0.11:53] [--seconds 3] [--window 8]
      A queries over UDP for S seconds with `window` in flight. Prints
      {\"queries\":N,\"lost\":L,\"qps\":R,\"p50_us\":M,\"p99_us\":P}.
  udp-sink --port P [--idle-ms 1000] [--max-seconds 60]
      Counts datagrams on UDP port P until none arrived for idle-ms after the first one (or
      max-seconds since start). Prints `listening` once bound, then
      {\"packets\":N,\"seconds\":S,\"pps\":R} (S from the first to the last datagram).
  udp-flood --target IP:PORT --seconds S [--size 18] [--flows 64] [--sport-base 20000]
      Sends size-byte datagrams starting with 0x00 from `flows` source ports
      sport-base..sport-base+flows, round robin, for S seconds.
      Prints {\"sent\":N,\"seconds\":S,\"pps\":R}.
  tcp-rate --target IP:PORT --seconds S [--concurrency 16]
      C threads doing connect / `GET / HTTP/1.0` / read to EOF / close for S seconds.
      Prints {\"completed\":N,\"errors\":E,\"seconds\":S,\"per_s\":R}.
  tcp-proxy --listen IP:PORT --backends IP:PORT[,IP:PORT...]
      Userspace TCP proxy (the baseline): round robin over the backends, two copy threads per
      connection. Prints `proxying` once listening; runs until killed.
  ask --target IP:PORT|NAME:PORT [--udp] [--sports A-B | --count N] [--timeout-ms 2000]
      [--interval-ms 0]
      One request per source port A..=B (or N requests from ephemeral ports, default 1), one
      after the other: HTTP GET over TCP, or the datagram `?` with --udp. Prints one line per
      request: `<sport> <name>` or `<sport> ERROR <message>`; exits 0 either way. With
      --interval-ms, waits that long before each request.
  hold --target IP:PORT --seconds S [--interval-ms 100]
      One TCP connection; every interval writes `ping\\n` and prints the reply as
      `<elapsed_ms> <name>`. Prints `done <count>` at the end; on any error (2 s timeouts)
      prints `ERROR <message>` and exits 1.
  tcp-rr --target IP:PORT [--count 10000]
      One TCP connection, `count` round trips of the line `ping` (answered by `serve`), one at a
      time. Prints {\"count\":N,\"p50_us\":M,\"p99_us\":P}.
  wg-flood --target IP:PORT --public-key KEY --seconds S [--rate 200000] [--kind mixed] [--from IP]
      Forged WireGuard traffic at `rate` datagrams a second: handshake initiations with random
      bodies whose MAC1 is right for the responder's public key KEY (base64), or wrong, or
      random junk (`--kind valid-mac1|bad-mac1|junk|mixed`, mixed: the three in turn). Counts
      the cookie replies that come back. Prints
      {\"sent\":N,\"seconds\":S,\"pps\":R,\"cookie_replies\":C}.
  vxlan-send --to IP[:PORT] --vni N --inner-dst IP:PORT --payload TEXT [--inner-src IP]
             [--count 1] [--from IP]
      Sends `count` VXLAN frames (port 4789 by default) from `from` (any local address): a
      UDP datagram holding TEXT to inner-dst, as a VXLAN device would carry it for a task on
      the network with VNI N (Ethernet addresses derived from the inner addresses as Docker
      does; inner source .254 of the destination's /24 by default). Prints {\"sent\":N}.

Exit status: 0 success, 1 runtime error (`error: ...` on stderr), 2 usage error.
";

/// Datagrams per `recvmmsg`/`sendmmsg` call.
const BATCH: usize = 64;
/// Receive buffer per datagram in `udp-sink`.
const SINK_BUF: usize = 2048;
/// The request `tcp-rate` and `ask` send.
const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
/// Connect and I/O timeout of the load generators and of `hold`.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Cap on the request head `serve` reads before answering anyway.
const MAX_HEAD: usize = 64 * 1024;

/// Sink packets (`0x00 ...`) `serve` received and did not answer.
static SINK_PACKETS: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Error {
    /// Bad command line: exit 2.
    Usage(String),
    /// Failure while running: exit 1.
    Run(String),
}

type Result<T, E = Error> = std::result::Result<T, E>;

impl Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(msg) | Self::Run(msg) => f.write_str(msg),
        }
    }
}

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

/// Adds what was being done to an I/O error.
trait Context<T> {
    fn context(self, what: impl Display) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|e| Error::Run(format!("{what}: {e}")))
    }
}

/// Prints one line on stdout and flushes it (callers wait for readiness lines).
fn say(line: impl Display) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

/// The JSON line `udp-sink` prints.
#[derive(Debug, Serialize)]
struct SinkReport {
    packets: u64,
    seconds: f64,
    pps: f64,
}

/// The JSON line `udp-flood` prints.
#[derive(Debug, Serialize)]
struct FloodReport {
    sent: u64,
    seconds: f64,
    pps: f64,
}

/// The JSON line `tcp-rate` prints.
#[derive(Debug, Serialize)]
struct RateReport {
    completed: u64,
    errors: u64,
    seconds: f64,
    per_s: f64,
}

fn json(report: &impl Serialize) -> Result<String> {
    serde_json::to_string(report).map_err(|e| Error::Run(format!("encoding JSON: {e}")))
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        round(count as f64 / seconds, 1)
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// The flags of one subcommand: `--flag value` (or `--flag=value`) and bare switches.
#[derive(Debug, Default)]
struct Flags {
    values: HashMap<String, String>,
    switches: HashSet<String>,
}

impl Flags {
    /// Parses `args` allowing only the `valued` flags and the `switches` (names without `--`).
    fn parse(args: &[String], valued: &[&str], switches: &[&str]) -> Result<Self> {
        let mut flags = Self::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(usage(format!("unexpected argument `{arg}`")));
            };
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (flag, None),
            };
            if switches.contains(&name) {
                if inline.is_some() {
                    return Err(usage(format!("--{name} takes no value")));
                }
                if !flags.switches.insert(name.to_string()) {
                    return Err(usage(format!("--{name} given twice")));
                }
            } else if valued.contains(&name) {
                let value = match inline {
                    Some(value) => value,
                    None => match it.next() {
                        Some(value) if !value.starts_with("--") => value.clone(),
                        _ => return Err(usage(format!("--{name} needs a value"))),
                    },
                };
                if flags.values.insert(name.to_string(), value).is_some() {
                    return Err(usage(format!("--{name} given twice")));
                }
            } else {
                return Err(usage(format!("unknown flag `{arg}`")));
            }
        }
        Ok(flags)
    }

    fn get<T: FromStr>(&self, name: &str) -> Result<Option<T>>
    where
        T::Err: Display,
    {
        self.values
            .get(name)
            .map(|raw| {
                raw.parse()
                    .map_err(|e| usage(format!("--{name} `{raw}`: {e}")))
            })
            .transpose()
    }

    fn required<T: FromStr>(&self, name: &str) -> Result<T>
    where
        T::Err: Display,
    {
        self.get(name)?
            .ok_or_else(|| usage(format!("--{name} is required")))
    }

    fn or<T: FromStr>(&self, name: &str, default: T) -> Result<T>
    where
        T::Err: Display,
    {
        Ok(self.get(name)?.unwrap_or(default))
    }

    fn has(&self, name: &str) -> bool {
        self.switches.contains(name)
    }

    /// `--seconds`-like flags: a positive, finite number of seconds (fractions allowed).
    fn seconds(&self, name: &str, default: Option<f64>) -> Result<Duration> {
        let secs: f64 = match default {
            Some(default) => self.or(name, default)?,
            None => self.required(name)?,
        };
        if secs.is_nan() || secs <= 0.0 {
            return Err(usage(format!("--{name} must be positive")));
        }
        Duration::try_from_secs_f64(secs).map_err(|e| usage(format!("--{name}: {e}")))
    }

    /// Integer flags that must be at least `min`.
    fn at_least<T: FromStr + PartialOrd + Display + Copy>(
        &self,
        name: &str,
        default: T,
        min: T,
    ) -> Result<T>
    where
        T::Err: Display,
    {
        let value = self.or(name, default)?;
        if value < min {
            return Err(usage(format!("--{name} must be at least {min}")));
        }
        Ok(value)
    }
}

/// `A-B` (inclusive, A <= B) or a single port `A`; port 0 is not a source port.
fn parse_port_range(raw: &str) -> Result<(u16, u16), String> {
    let (a, b) = raw.split_once('-').unwrap_or((raw, raw));
    let parse = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u16>() {
            Ok(0) => Err("port 0 is not allowed".to_string()),
            Ok(p) => Ok(p),
            Err(e) => Err(format!("`{s}`: {e}")),
        }
    };
    let (a, b) = (parse(a)?, parse(b)?);
    if a > b {
        return Err(format!("empty range {a}-{b}"));
    }
    Ok((a, b))
}

/// `IP:PORT[,IP:PORT...]`.
fn parse_addr_list(raw: &str) -> Result<Vec<SocketAddr>, String> {
    raw.split(',')
        .map(|s| {
            s.trim()
                .parse::<SocketAddr>()
                .map_err(|e| format!("`{s}`: {e}"))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Protocol helpers
// ---------------------------------------------------------------------------------------------

/// How `serve` treats a TCP connection, decided from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Http,
    Lines,
}

const HTTP_METHODS: [&[u8]; 3] = [b"GET ", b"HEAD", b"POST"];

/// The mode for a connection that started with `prefix`, or `None` if more bytes are needed.
fn classify(prefix: &[u8]) -> Option<Mode> {
    if prefix.len() >= 4 {
        let http = HTTP_METHODS.iter().any(|m| prefix.starts_with(m));
        return Some(if http { Mode::Http } else { Mode::Lines });
    }
    let could_be_http = HTTP_METHODS.iter().any(|m| m.starts_with(prefix));
    if prefix.contains(&b'\n') || !could_be_http {
        Some(Mode::Lines)
    } else {
        None
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The first line of the body of an HTTP reply with status 200 (the name `serve` answers with).
fn http_body_first_line(reply: &[u8]) -> Result<String, String> {
    let Some(head_end) = find(reply, b"\r\n\r\n") else {
        return Err(format!(
            "no HTTP header end in {} byte reply: {:?}",
            reply.len(),
            String::from_utf8_lossy(&reply[..reply.len().min(80)])
        ));
    };
    let head = String::from_utf8_lossy(&reply[..head_end]);
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/") || status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("unexpected status line {status:?}"));
    }
    let body = &reply[head_end + 4..];
    let line = body.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line)
        .trim_end_matches('\r')
        .to_string();
    if line.is_empty() {
        return Err("empty body".to_string());
    }
    Ok(line)
}

/// The first line of a datagram or line reply, without its line end.
fn first_line(reply: &[u8]) -> String {
    let line = reply.split(|&b| b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(line)
        .trim_end_matches('\r')
        .to_string()
}

fn unspecified_for(addr: &SocketAddr) -> IpAddr {
    match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets (libc where std has no API)
// ---------------------------------------------------------------------------------------------

mod sys {
    use super::*;

    /// A `sendmmsg`/`recvmmsg` header for one buffer, `iov`.
    pub(crate) fn message_header(iov: &mut libc::iovec) -> libc::mmsghdr {
        // SAFETY: mmsghdr is a plain C struct; all-zero (null pointers, zero lengths) is valid.
        let mut hdr: libc::mmsghdr = unsafe { mem::zeroed() };
        hdr.msg_hdr.msg_iov = ptr::from_mut(iov);
        hdr.msg_hdr.msg_iovlen = 1;
        hdr
    }

    pub(crate) fn socket(addr: &SocketAddr, ty: libc::c_int) -> io::Result<OwnedFd> {
        let domain = match addr {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        // SAFETY: a plain system call with integer arguments.
        let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub(crate) fn set_option<T: Copy>(
        fd: BorrowedFd<'_>,
        level: libc::c_int,
        name: libc::c_int,
        value: T,
    ) -> io::Result<()> {
        let len = libc::socklen_t::try_from(size_of::<T>())
            .map_err(|_| io::Error::other("socket option value too large"))?;
        // SAFETY: `value` is alive for the call and `len` is its exact size; the kernel only reads
        // it, and `fd` is a valid descriptor borrowed for the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                ptr::from_ref(&value).cast(),
                len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn reuse_addr(fd: BorrowedFd<'_>) -> io::Result<()> {
        set_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1 as libc::c_int)
    }

    /// Sets a socket buffer size, first with the privileged `*FORCE` option (ignores the sysctl
    /// cap; we run as root in the lab), falling back to the plain one.
    pub(crate) fn buffer_size(
        fd: BorrowedFd<'_>,
        force: libc::c_int,
        plain: libc::c_int,
        bytes: libc::c_int,
    ) -> io::Result<()> {
        set_option(fd, libc::SOL_SOCKET, force, bytes)
            .or_else(|_| set_option(fd, libc::SOL_SOCKET, plain, bytes))
    }

    fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: sockaddr_storage is a plain C struct for which all-zero bytes are valid.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than sockaddr_in and aligned for any sockaddr.
                unsafe { ptr::write(ptr::from_mut(&mut storage).cast(), sin) };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than sockaddr_in6 and aligned for any
                // sockaddr.
                unsafe { ptr::write(ptr::from_mut(&mut storage).cast(), sin6) };
                size_of::<libc::sockaddr_in6>()
            }
        };
        // Both sizes are a few dozen bytes.
        (storage, len as libc::socklen_t)
    }

    pub(crate) fn bind(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
        let (storage, len) = sockaddr(addr);
        // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the duration of the call.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), ptr::from_ref(&storage).cast(), len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn listen(fd: BorrowedFd<'_>, backlog: libc::c_int) -> io::Result<()> {
        // SAFETY: a plain system call on a valid descriptor.
        let rc = unsafe { libc::listen(fd.as_raw_fd(), backlog) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// connect(2) with a timeout on a not yet connected stream socket (std only has this for
    /// sockets it creates itself, which cannot be bound first).
    pub(crate) fn connect_timeout(
        stream: &TcpStream,
        addr: &SocketAddr,
        timeout: Duration,
    ) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let (storage, len) = sockaddr(addr);
        // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the duration of the call.
        let rc = unsafe { libc::connect(stream.as_raw_fd(), ptr::from_ref(&storage).cast(), len) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(err);
            }
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection timed out",
                    ));
                }
                let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
                let mut pfd = libc::pollfd {
                    fd: stream.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: `pfd` is one valid pollfd, alive for the duration of the call.
                let n = unsafe { libc::poll(&mut pfd, 1, ms) };
                if n < 0 {
                    let err = io::Error::last_os_error();
                    if err.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(err);
                }
                if n > 0 {
                    break;
                }
            }
            if let Some(err) = stream.take_error()? {
                return Err(err);
            }
        }
        stream.set_nonblocking(false)
    }
}

/// A TCP listener with SO_REUSEADDR and a long backlog (for connection-rate runs).
fn tcp_listen(addr: &SocketAddr) -> io::Result<TcpListener> {
    let fd = sys::socket(addr, libc::SOCK_STREAM)?;
    sys::reuse_addr(fd.as_fd())?;
    sys::bind(fd.as_fd(), addr)?;
    sys::listen(fd.as_fd(), 4096)?;
    Ok(TcpListener::from(fd))
}

/// A TCP connection from `sport` (0: ephemeral, but bound before connecting so the port is known
/// even if connecting fails). SO_LINGER {on, 0}: closing sends RST and leaves no TIME_WAIT, so the
/// same source port can be used again at once.
fn tcp_socket_from(target: &SocketAddr, sport: u16) -> io::Result<TcpStream> {
    let fd = sys::socket(target, libc::SOCK_STREAM)?;
    sys::reuse_addr(fd.as_fd())?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    sys::set_option(fd.as_fd(), libc::SOL_SOCKET, libc::SO_LINGER, linger)?;
    sys::bind(fd.as_fd(), &SocketAddr::new(unspecified_for(target), sport))?;
    Ok(TcpStream::from(fd))
}

/// A UDP socket bound to `local`, optionally with SO_REUSEADDR.
fn udp_bind(local: &SocketAddr, reuse: bool) -> io::Result<UdpSocket> {
    let fd = sys::socket(local, libc::SOCK_DGRAM)?;
    if reuse {
        sys::reuse_addr(fd.as_fd())?;
    }
    sys::bind(fd.as_fd(), local)?;
    Ok(UdpSocket::from(fd))
}

fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR | libc::ECONNREFUSED)
    )
}

// ---------------------------------------------------------------------------------------------
// serve
// ---------------------------------------------------------------------------------------------

/// Exits at once on SIGTERM, as a well-behaved server does: as a container's PID 1 the signal
/// would otherwise be ignored, and every stop would wait out the grace period.
fn exit_on_sigterm() {
    extern "C" fn exit_now(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) }
    }
    // SAFETY: installs a handler that only calls an async-signal-safe function.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            exit_now as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

fn cmd_serve(flags: &Flags) -> Result<ExitCode> {
    // A service task names itself after its service and slot (or its task ID).
    let name: String = match flags.or("name", String::new())? {
        name if !name.is_empty() => name,
        _ => match (
            std::env::var("SHOAL_SERVICE_NAME"),
            std::env::var("SHOAL_TASK_SLOT"),
            std::env::var("SHOAL_TASK_ID"),
        ) {
            (Ok(service), Ok(slot), _) if slot != "0" => format!("{service}.{slot}"),
            (_, _, Ok(task)) => task,
            _ => return Err(usage("--name is required outside a Shoal task")),
        },
    };
    if name.is_empty() || name.contains(['\n', '\r']) {
        return Err(usage("--name must be one non-empty line"));
    }
    let port: u16 = flags.required("port")?;
    let ip: IpAddr = flags.or("addr", IpAddr::V4(Ipv4Addr::UNSPECIFIED))?;
    if let Some(upstream) = flags.get::<String>("upstream")? {
        let _ = UPSTREAM.set(upstream);
    }
    exit_on_sigterm();

    let tcp_addr = SocketAddr::new(ip, port);
    let listener = tcp_listen(&tcp_addr).context(format!("binding TCP {tcp_addr}"))?;
    // With --port 0 the UDP socket takes the port the kernel gave the TCP one.
    let port = listener.local_addr().context("TCP local address")?.port();
    let udp_addr = SocketAddr::new(ip, port);
    let udp = udp_bind(&udp_addr, false).context(format!("binding UDP {udp_addr}"))?;

    let name_line: &'static [u8] = Box::leak(format!("{name}\n").into_bytes().into_boxed_slice());
    thread::Builder::new()
        .name("udp".into())
        .spawn(move || serve_udp(&udp, name_line))
        .context("starting the UDP thread")?;
    say(format_args!("serving {name} on {port}"))?;

    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let spawned = thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || serve_conn(stream, name_line));
                if let Err(e) = spawned {
                    eprintln!("serve: starting a connection thread: {e}");
                }
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("serve: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `serve --upstream`: the service a front tier asks on each HTTP request.
static UPSTREAM: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn serve_udp(socket: &UdpSocket, name_line: &[u8]) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                if n > 0 && buf[0] == 0 {
                    SINK_PACKETS.fetch_add(1, Ordering::Relaxed);
                } else if let Err(e) = socket.send_to(name_line, from) {
                    eprintln!("serve: UDP reply to {from}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("serve: UDP receive: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn serve_conn(stream: TcpStream, name_line: &[u8]) {
    let peer = stream.peer_addr().ok();
    if let Err(e) = serve_conn_inner(&stream, name_line) {
        // Resets are normal: `ask` closes with SO_LINGER 0.
        if !matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ) {
            eprintln!("serve: connection from {peer:?}: {e}");
        }
    }
}

/// read(2) retrying on EINTR.
fn read_some(mut stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

fn serve_conn_inner(stream: &TcpStream, name_line: &[u8]) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut have = 0;
    let mut eof = false;
    let mode = loop {
        if let Some(mode) = classify(&buf[..have]) {
            break mode;
        }
        let n = read_some(stream, &mut buf[have..])?;
        if n == 0 {
            eof = true;
            break Mode::Lines;
        }
        have += n;
    };
    match mode {
        Mode::Http => serve_http(stream, buf[..have].to_vec(), name_line),
        Mode::Lines => serve_lines(stream, &mut buf, have, eof, name_line),
    }
}

fn serve_http(mut stream: &TcpStream, mut head: Vec<u8>, name_line: &[u8]) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    while find(&head, b"\r\n\r\n").is_none() && head.len() < MAX_HEAD {
        let n = read_some(stream, &mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    // `GET /peer`: the name, then the address the connection came from (what the routing
    // mesh's client-IP mode is about).
    let body = if head.starts_with(b"GET /peer") {
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "unknown".to_owned(), |a| a.ip().to_string());
        let mut body = name_line.strip_suffix(b"\n").unwrap_or(name_line).to_vec();
        body.extend_from_slice(format!(" {peer}\n").as_bytes());
        body
    } else if let Some(upstream) = UPSTREAM.get() {
        // A front tier: its own name, then the answer of the upstream it asked by name.
        let name = name_line.strip_suffix(b"\n").unwrap_or(name_line);
        let answer = resolve_target(upstream)
            .map_err(|e| e.to_string())
            .and_then(|target| ask_tcp(&target, 0, IO_TIMEOUT).1)
            .unwrap_or_else(|e| format!("ERROR {e}"));
        let mut body = name.to_vec();
        body.extend_from_slice(format!(" -> {answer}\n").as_bytes());
        body
    } else {
        name_line.to_vec()
    };
    let mut reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    // A HEAD reply carries the headers only.
    if !head.starts_with(b"HEAD") {
        reply.extend_from_slice(&body);
    }
    stream.write_all(&reply)?;
    // Close our side first (the client reads to EOF, so TIME_WAIT stays here, not on the client's
    // ephemeral ports), then drain what the client still sends so closing does not reset the
    // reply away.
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    while read_some(stream, &mut chunk)? > 0 {}
    Ok(())
}

fn serve_lines(
    mut stream: &TcpStream,
    buf: &mut [u8],
    mut have: usize,
    mut eof: bool,
    name_line: &[u8],
) -> io::Result<()> {
    let mut out = Vec::new();
    loop {
        let lines = buf[..have].iter().filter(|&&b| b == b'\n').count();
        if lines > 0 {
            out.clear();
            for _ in 0..lines {
                out.extend_from_slice(name_line);
            }
            stream.write_all(&out)?;
        }
        if eof {
            return Ok(());
        }
        have = read_some(stream, buf)?;
        eof = have == 0;
    }
}

// ---------------------------------------------------------------------------------------------
// udp-sink
// ---------------------------------------------------------------------------------------------

fn cmd_udp_sink(flags: &Flags) -> Result<ExitCode> {
    let port: u16 = flags.required("port")?;
    let idle = Duration::from_millis(flags.at_least("idle-ms", 1000u64, 1)?);
    let max = flags.seconds("max-seconds", Some(60.0))?;

    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    let socket = udp_bind(&addr, false).context(format!("binding UDP {addr}"))?;
    sys::buffer_size(
        socket.as_fd(),
        libc::SO_RCVBUFFORCE,
        libc::SO_RCVBUF,
        32 << 20,
    )
    .context("setting SO_RCVBUF")?;
    let start = Instant::now();
    say("listening")?;

    let mut bufs = vec![0u8; BATCH * SINK_BUF];
    let mut iovs: Vec<libc::iovec> = bufs
        .chunks_mut(SINK_BUF)
        .map(|chunk| libc::iovec {
            iov_base: chunk.as_mut_ptr().cast(),
            iov_len: chunk.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iovs.iter_mut().map(sys::message_header).collect();

    let mut packets: u64 = 0;
    let mut first: Option<Instant> = None;
    let mut last = start;
    loop {
        let deadline = match first {
            Some(_) => (last + idle).min(start + max),
            None => start + max,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        let mut pfd = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd, alive for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err).context("poll");
        }
        // Drain everything queued, a batch at a time.
        loop {
            // SAFETY: `hdrs` holds BATCH initialised headers, each pointing at its own iovec in
            // `iovs`, which points into `bufs`; all three outlive the call and are not otherwise
            // accessed meanwhile. No timeout pointer is passed.
            let n = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if is_transient(&err) {
                    break;
                }
                return Err(err).context("recvmmsg");
            }
            if n == 0 {
                break;
            }
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            packets += n as u64;
        }
    }
    // The buffers the headers point into must live until here.
    drop(hdrs);
    drop(iovs);
    drop(bufs);

    let seconds = first.map_or(0.0, |first| (last - first).as_secs_f64());
    say(json(&SinkReport {
        packets,
        seconds: round(seconds, 3),
        pps: rate(packets, seconds),
    })?)?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// udp-flood
// ---------------------------------------------------------------------------------------------

fn cmd_udp_flood(flags: &Flags) -> Result<ExitCode> {
    let target: SocketAddr = flags.required("target")?;
    let duration = flags.seconds("seconds", None)?;
    let size: usize = flags.at_least("size", 18, 1)?;
    if size > 65507 {
        return Err(usage("--size must be at most 65507"));
    }
    let flows: u32 = flags.at_least("flows", 64, 1)?;
    let sport_base: u16 = flags.at_least("sport-base", 20000, 1)?;
    if u32::from(sport_base) + flows > 65536 {
        return Err(usage("--sport-base + --flows exceeds port 65535"));
    }

    let mut sockets = Vec::new();
    for i in 0..flows {
        // In range: checked above.
        let sport = (u32::from(sport_base) + i) as u16;
        let local = SocketAddr::new(unspecified_for(&target), sport);
        let socket = udp_bind(&local, true).context(format!("binding UDP {local}"))?;
        sys::buffer_size(
            socket.as_fd(),
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            4 << 20,
        )
        .context("setting SO_SNDBUF")?;
        socket
            .connect(target)
            .context(format!("connecting UDP {local} to {target}"))?;
        sockets.push(socket);
    }

    let mut payload = vec![0u8; size];
    for (i, b) in payload.iter_mut().enumerate().skip(1) {
        *b = i as u8;
    }
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let mut hdrs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| sys::message_header(&mut iov)).collect();

    let start = Instant::now();
    let deadline = start + duration;
    let mut sent: u64 = 0;
    'run: loop {
        for socket in &sockets {
            if Instant::now() >= deadline {
                break 'run;
            }
            // SAFETY: `hdrs` holds BATCH initialised headers (connected sockets: no address),
            // all pointing at `iov`, which points into `payload`; all outlive the call and the
            // kernel only reads the data.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if is_transient(&err) {
                    continue;
                }
                return Err(err).context(format!("sendmmsg to {target}"));
            }
            sent += n as u64;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // The payload the headers point into must live until here.
    drop(hdrs);
    drop(payload);

    say(json(&FloodReport {
        sent,
        seconds: round(seconds, 3),
        pps: rate(sent, seconds),
    })?)?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// tcp-rate
// ---------------------------------------------------------------------------------------------

fn cmd_tcp_rate(flags: &Flags) -> Result<ExitCode> {
    let target: SocketAddr = flags.required("target")?;
    let duration = flags.seconds("seconds", None)?;
    let concurrency: usize = flags.at_least("concurrency", 16, 1)?;

    let completed = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let seen: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let start = Instant::now();
    let deadline = start + duration;

    let worker = || {
        while Instant::now() < deadline {
            match exchange(&target) {
                Ok(()) => {
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                Err(msg) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    // A poisoned lock only means another worker panicked while printing.
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    if seen.len() < 3 && !seen.contains(&msg) {
                        eprintln!("tcp-rate: {msg}");
                        seen.push(msg);
                    }
                }
            }
        }
    };
    thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        for i in 0..concurrency {
            let handle = thread::Builder::new()
                .name(format!("rate-{i}"))
                .spawn_scoped(scope, worker)
                .context("starting a worker thread")?;
            handles.push(handle);
        }
        for handle in handles {
            handle
                .join()
                .map_err(|_| Error::Run("a worker thread panicked".into()))?;
        }
        Ok(())
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let completed = completed.load(Ordering::Relaxed);

    say(json(&RateReport {
        completed,
        errors: errors.load(Ordering::Relaxed),
        seconds: round(seconds, 3),
        per_s: rate(completed, seconds),
    })?)?;
    Ok(ExitCode::SUCCESS)
}

/// One connect / request / read-to-EOF / close.
fn exchange(target: &SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(target, IO_TIMEOUT)
        .map_err(|e| format!("connect {target}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("socket options: {e}"))?;
    stream
        .write_all(HTTP_REQUEST)
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::with_capacity(256);
    stream
        .read_to_end(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    if find(&reply, b"200 OK").is_none() {
        return Err(format!(
            "reply without `200 OK`: {:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(60)])
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// tcp-proxy
// ---------------------------------------------------------------------------------------------

fn cmd_tcp_proxy(flags: &Flags) -> Result<ExitCode> {
    let listen: SocketAddr = flags.required("listen")?;
    let raw: String = flags.required("backends")?;
    let backends = parse_addr_list(&raw).map_err(|e| usage(format!("--backends {e}")))?;
    let backends: &'static [SocketAddr] = Box::leak(backends.into_boxed_slice());

    let listener = tcp_listen(&listen).context(format!("binding TCP {listen}"))?;
    say("proxying")?;
    let mut next = 0usize;
    for conn in listener.incoming() {
        match conn {
            Ok(client) => {
                let backend = backends[next % backends.len()];
                next = next.wrapping_add(1);
                let spawned = thread::Builder::new()
                    .name("proxy".into())
                    .spawn(move || proxy_conn(&client, &backend));
                if let Err(e) = spawned {
                    eprintln!("tcp-proxy: starting a connection thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("tcp-proxy: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn proxy_conn(client: &TcpStream, backend: &SocketAddr) {
    let upstream = match TcpStream::connect_timeout(backend, IO_TIMEOUT) {
        Ok(upstream) => upstream,
        Err(e) => {
            eprintln!("tcp-proxy: connect {backend}: {e}");
            return;
        }
    };
    // Latency matters more than segment count for a proxy; failing to set it is harmless.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    thread::scope(|scope| {
        let spawned = thread::Builder::new()
            .name("proxy-up".into())
            .spawn_scoped(scope, || pipe(client, &upstream));
        if let Err(e) = spawned {
            eprintln!("tcp-proxy: starting a copy thread: {e}");
            return;
        }
        pipe(&upstream, client);
    });
}

/// Copies `from` to `to` until EOF, then half-closes `to`; on an error tears both down so the
/// other direction's thread ends too.
fn pipe(mut from: &TcpStream, mut to: &TcpStream) {
    match io::copy(&mut from, &mut to) {
        Ok(_) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        Err(_) => {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ask
// ---------------------------------------------------------------------------------------------

/// `IP:PORT` or `NAME:PORT`, the name resolved as the task's programs resolve it (its
/// /etc/resolv.conf).
fn resolve_target(raw: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = raw.parse() {
        return Ok(addr);
    }
    raw.to_socket_addrs()
        .map_err(|e| Error::Run(format!("resolving {raw}: {e}")))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| Error::Run(format!("{raw} has no IPv4 address")))
}

fn cmd_ask(flags: &Flags) -> Result<ExitCode> {
    let target = resolve_target(&flags.required::<String>("target")?)?;
    let udp = flags.has("udp");
    let timeout = Duration::from_millis(flags.at_least("timeout-ms", 2000u64, 1)?);
    let sports: Vec<u16> = match (flags.get::<String>("sports")?, flags.get::<u32>("count")?) {
        (Some(_), Some(_)) => return Err(usage("give --sports or --count, not both")),
        (Some(raw), None) => {
            let (a, b) = parse_port_range(&raw).map_err(|e| usage(format!("--sports {e}")))?;
            (a..=b).collect()
        }
        (None, count) => {
            let count = count.unwrap_or(1);
            if count == 0 {
                return Err(usage("--count must be at least 1"));
            }
            vec![0; count as usize]
        }
    };

    let interval = Duration::from_millis(flags.or("interval-ms", 0u64)?);
    for sport in sports {
        if !interval.is_zero() {
            thread::sleep(interval);
        }
        let (sport, answer) = if udp {
            ask_udp(&target, sport, timeout)
        } else {
            ask_tcp(&target, sport, timeout)
        };
        match answer {
            Ok(name) => say(format_args!("{sport} {name}"))?,
            Err(msg) => say(format_args!("{sport} ERROR {msg}"))?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Returns the source port actually used and the name (or what went wrong).
fn ask_tcp(target: &SocketAddr, sport: u16, timeout: Duration) -> (u16, Result<String, String>) {
    let stream = match tcp_socket_from(target, sport) {
        Ok(stream) => stream,
        Err(e) => return (sport, Err(format!("bind port {sport}: {e}"))),
    };
    let sport = stream.local_addr().map_or(sport, |a| a.port());
    let answer = (|| {
        sys::connect_timeout(&stream, target, timeout)
            .map_err(|e| format!("connect {target}: {e}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| format!("socket options: {e}"))?;
        (&stream)
            .write_all(HTTP_REQUEST)
            .map_err(|e| format!("write: {e}"))?;
        let mut reply = Vec::new();
        (&stream)
            .read_to_end(&mut reply)
            .map_err(|e| format!("read: {e}"))?;
        http_body_first_line(&reply)
    })();
    (sport, answer)
}

fn ask_udp(target: &SocketAddr, sport: u16, timeout: Duration) -> (u16, Result<String, String>) {
    let local = SocketAddr::new(unspecified_for(target), sport);
    let socket = match udp_bind(&local, true) {
        Ok(socket) => socket,
        Err(e) => return (sport, Err(format!("bind port {sport}: {e}"))),
    };
    let sport = socket.local_addr().map_or(sport, |a| a.port());
    let answer = (|| {
        socket
            .send_to(b"?", target)
            .map_err(|e| format!("send to {target}: {e}"))?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no reply within {} ms", timeout.as_millis()));
            }
            socket
                .set_read_timeout(Some(left))
                .map_err(|e| format!("socket options: {e}"))?;
            match socket.recv_from(&mut buf) {
                Ok((n, from)) if from == *target => return Ok(first_line(&buf[..n])),
                Ok((n, from)) => {
                    return Err(format!(
                        "reply from unexpected source {from}: {}",
                        first_line(&buf[..n])
                    ));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(format!("receive: {e}")),
            }
        }
    })();
    (sport, answer)
}

// ---------------------------------------------------------------------------------------------
// hold
// ---------------------------------------------------------------------------------------------

fn cmd_hold(flags: &Flags) -> Result<ExitCode> {
    let target: SocketAddr = flags.required("target")?;
    let duration = flags.seconds("seconds", None)?;
    let interval = Duration::from_millis(flags.at_least("interval-ms", 100u64, 1)?);

    let mut count: u64 = 0;
    match hold(&target, duration, interval, &mut count) {
        Ok(()) => {
            say(format_args!("done {count}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(msg) => {
            say(format_args!("ERROR {msg}"))?;
            Ok(ExitCode::from(1))
        }
    }
}

fn hold(
    target: &SocketAddr,
    duration: Duration,
    interval: Duration,
    count: &mut u64,
) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(target, IO_TIMEOUT)
        .map_err(|e| format!("connect {target}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| format!("socket options: {e}"))?;
    let mut reader = BufReader::new(
        stream
            .try_clone()
            .map_err(|e| format!("cloning the socket: {e}"))?,
    );
    let start = Instant::now();
    let end = start + duration;
    let mut tick = start;
    let mut line = String::new();
    while tick < end {
        let now = Instant::now();
        if tick > now {
            thread::sleep(tick - now);
        }
        stream
            .write_all(b"ping\n")
            .map_err(|e| format!("write after {} replies: {e}", *count))?;
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| format!("read after {} replies: {e}", *count))?;
        if n == 0 {
            return Err(format!("connection closed after {} replies", *count));
        }
        *count += 1;
        let elapsed = start.elapsed().as_millis();
        say(format_args!("{elapsed} {}", line.trim_end())).map_err(|e| e.to_string())?;
        // The next tick on the interval grid; if we fell behind, go again right away.
        tick += interval;
        tick = tick.max(Instant::now().min(end));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// tcp-rr
// ---------------------------------------------------------------------------------------------

fn cmd_tcp_rr(flags: &Flags) -> Result<ExitCode> {
    let target = resolve_target(&flags.required::<String>("target")?)?;
    let count: usize = flags.at_least("count", 10_000usize, 1)?;
    let mut rtts = tcp_rr(&target, count).map_err(Error::Run)?;
    rtts.sort_unstable_by(f64::total_cmp);
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
    say(format_args!(
        "{{\"count\":{},\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
        rtts.len(),
        at(0.5),
        at(0.99)
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Round trips of one line on one connection: each one's time in microseconds.
fn tcp_rr(target: &SocketAddr, count: usize) -> Result<Vec<f64>, String> {
    let mut stream = TcpStream::connect_timeout(target, IO_TIMEOUT)
        .map_err(|e| format!("connect {target}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| format!("socket options: {e}"))?;
    let mut reader = BufReader::new(
        stream
            .try_clone()
            .map_err(|e| format!("cloning the socket: {e}"))?,
    );
    let mut line = String::new();
    let mut rtts = Vec::with_capacity(count);
    for i in 0..count {
        let start = Instant::now();
        stream
            .write_all(b"ping\n")
            .map_err(|e| format!("write after {i} replies: {e}"))?;
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| format!("read after {i} replies: {e}"))?;
        if n == 0 {
            return Err(format!("connection closed after {i} replies"));
        }
        rtts.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(rtts)
}

// ---------------------------------------------------------------------------------------------
// wg-flood
// ---------------------------------------------------------------------------------------------

/// A WireGuard handshake initiation: type 1, 148 bytes (the whitepaper, section 5.4.2).
const WG_INITIATION: u8 = 1;
const WG_INITIATION_LEN: usize = 148;
/// Where MAC1 sits in an initiation; it covers every byte before it.
const WG_MAC1_AT: usize = 116;
/// A cookie reply: type 3, 64 bytes.
const WG_COOKIE_REPLY: u8 = 3;
const WG_COOKIE_REPLY_LEN: usize = 64;
/// Distinct datagrams `wg-flood` prepares and then sends in turn (a multiple of BATCH).
const FLOOD_POOL: usize = 16 * BATCH;

/// What `wg-flood` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FloodKind {
    /// Initiations whose MAC1 is right for the responder's key: they pass the first check and
    /// reach the responder's load check (and, unprotected, its X25519).
    ValidMac1,
    /// Initiations with a wrong MAC1.
    BadMac1,
    /// Random bytes of random length.
    Junk,
    /// The three in turn.
    Mixed,
}

impl FromStr for FloodKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "valid-mac1" => Ok(Self::ValidMac1),
            "bad-mac1" => Ok(Self::BadMac1),
            "junk" => Ok(Self::Junk),
            "mixed" => Ok(Self::Mixed),
            _ => Err("want valid-mac1, bad-mac1, junk or mixed".into()),
        }
    }
}

/// xorshift64: cheap filler for packet bodies (no secrecy needed).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// The key initiators compute MAC1 with: BLAKE2s-256("mac1----" || the responder's public key).
fn mac1_key(responder: &[u8; 32]) -> [u8; 32] {
    use blake2::Digest as _;
    blake2::Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(responder)
        .finalize()
        .into()
}

/// An initiation with a random body (sender index, ephemeral key, encrypted static key and
/// timestamp) and MAC2 zero; MAC1 is keyed BLAKE2s-128 over the first 116 bytes with `mac1_key`,
/// or random when there is none. MAC1 covers no time, so such a datagram passes MAC1 as often as
/// it is sent again.
fn forged_initiation(rng: &mut XorShift, mac1_key: Option<&[u8; 32]>) -> Vec<u8> {
    use blake2::digest::{FixedOutput as _, KeyInit as _, Update as _};
    let mut m = vec![0u8; WG_INITIATION_LEN];
    m[0] = WG_INITIATION;
    rng.fill(&mut m[4..WG_MAC1_AT + 16]);
    if let Some(key) = mac1_key {
        let mut mac = blake2::Blake2sMac::<blake2::digest::consts::U16>::new_from_slice(key)
            .expect("a 32-byte key fits BLAKE2s");
        mac.update(&m[..WG_MAC1_AT]);
        m[WG_MAC1_AT..WG_MAC1_AT + 16].copy_from_slice(&mac.finalize_fixed());
    }
    m
}

/// 1 to 200 random bytes.
fn junk(rng: &mut XorShift) -> Vec<u8> {
    let mut m = vec![0u8; 1 + (rng.next() % 200) as usize];
    rng.fill(&mut m);
    m
}

/// The datagrams `wg-flood` sends in turn: FLOOD_POOL of `kind` (the three kinds in turn for
/// `mixed`), MAC1 keyed with `responder`'s public key.
fn flood_pool(kind: FloodKind, responder: &[u8; 32]) -> Vec<Vec<u8>> {
    let key = mac1_key(responder);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    (0..FLOOD_POOL)
        .map(|i| {
            let kind = match kind {
                FloodKind::Mixed => {
                    [FloodKind::ValidMac1, FloodKind::BadMac1, FloodKind::Junk][i % 3]
                }
                other => other,
            };
            match kind {
                FloodKind::BadMac1 => forged_initiation(&mut rng, None),
                FloodKind::Junk => junk(&mut rng),
                _ => forged_initiation(&mut rng, Some(&key)),
            }
        })
        .collect()
}

/// Counts the cookie replies that come back on `receiver` into `replies`, until `done`.
fn count_cookie_replies(receiver: &UdpSocket, done: &AtomicBool, replies: &AtomicU64) {
    let mut buf = [0u8; 256];
    while !done.load(Ordering::Relaxed) {
        if let Ok(n) = receiver.recv(&mut buf)
            && n == WG_COOKIE_REPLY_LEN
            && buf[0] == WG_COOKIE_REPLY
        {
            replies.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends the datagrams `hdrs` point at, in turn, on the connected `socket` for `duration`, at
/// `per_second` (a batch at a time); how many were sent, and in how many seconds.
fn send_paced(
    socket: &UdpSocket,
    hdrs: &mut [libc::mmsghdr],
    target: SocketAddr,
    duration: Duration,
    per_second: u64,
) -> Result<(u64, f64)> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut sent: u64 = 0;
    let mut at = 0;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // Paced: what is due by now, a batch at a time.
        let due = (per_second as f64 * (now - start).as_secs_f64()) as u64;
        if sent >= due {
            thread::sleep(Duration::from_micros(100));
            continue;
        }
        let n = (due - sent).min(BATCH as u64).min((FLOOD_POOL - at) as u64) as usize;
        // SAFETY: `hdrs[at..at + n]` are initialised headers (connected socket: no address),
        // each pointing at its own iovec, which points into the pool; the caller keeps all of
        // them alive past the call, and the kernel only reads the data.
        let rc = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                hdrs[at..].as_mut_ptr(),
                n as libc::c_uint,
                0,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if is_transient(&err) {
                continue;
            }
            return Err(err).context(format!("sendmmsg to {target}"));
        }
        sent += rc as u64;
        at = (at + rc as usize) % FLOOD_POOL;
    }
    Ok((sent, start.elapsed().as_secs_f64()))
}

/// The JSON line `wg-flood` prints.
#[derive(Debug, Serialize)]
struct WgFloodReport {
    sent: u64,
    seconds: f64,
    pps: f64,
    /// Cookie replies (type 3, 64 bytes) that came back to the flooding socket.
    cookie_replies: u64,
}

fn cmd_wg_flood(flags: &Flags) -> Result<ExitCode> {
    let target: SocketAddr = flags.required("target")?;
    let key: String = flags.required("public-key")?;
    let responder: [u8; 32] = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| {
                usage("--public-key: want the base64 of a 32-byte key, as `wg pubkey` prints")
            })?
    };
    let duration = flags.seconds("seconds", None)?;
    let per_second: u64 = flags.at_least("rate", 200_000, 1)?;
    let kind: FloodKind = flags.or("kind", FloodKind::Mixed)?;
    let from: IpAddr = flags.or("from", unspecified_for(&target))?;

    let mut pool = flood_pool(kind, &responder);

    let socket =
        udp_bind(&SocketAddr::new(from, 0), false).context(format!("binding UDP {from}"))?;
    sys::buffer_size(
        socket.as_fd(),
        libc::SO_SNDBUFFORCE,
        libc::SO_SNDBUF,
        4 << 20,
    )
    .context("setting SO_SNDBUF")?;
    socket
        .connect(target)
        .context(format!("connecting UDP to {target}"))?;
    let replies = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let receiver = socket.try_clone().context("cloning the socket")?;
    receiver
        .set_read_timeout(Some(Duration::from_millis(100)))
        .context("setting a read timeout")?;

    let mut iovs: Vec<libc::iovec> = pool
        .iter_mut()
        .map(|p| libc::iovec {
            iov_base: p.as_mut_ptr().cast(),
            iov_len: p.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iovs.iter_mut().map(sys::message_header).collect();

    let (sent, seconds) = thread::scope(|scope| -> Result<(u64, f64)> {
        scope.spawn(|| count_cookie_replies(&receiver, &done, &replies));
        let result = send_paced(&socket, &mut hdrs, target, duration, per_second);
        // Replies still in flight get a moment to arrive.
        thread::sleep(Duration::from_millis(200));
        done.store(true, Ordering::Relaxed);
        result
    })?;
    // The buffers the headers point into must live until here.
    drop(hdrs);
    drop(iovs);
    drop(pool);

    say(json(&WgFloodReport {
        sent,
        seconds: round(seconds, 3),
        pps: rate(sent, seconds),
        cookie_replies: replies.load(Ordering::Relaxed),
    })?)?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// vxlan-send
// ---------------------------------------------------------------------------------------------

/// The VXLAN port (IANA).
const VXLAN_PORT: u16 = 4789;
/// The inner UDP source port of `vxlan-send`'s frames.
const VXLAN_SEND_SPORT: u16 = 40000;

/// Docker's MAC for an IPv4 address: `02:42` followed by the address.
fn docker_mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// The ones' complement sum of `bytes` as 16-bit big-endian words, folded and inverted.
fn ipv4_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A VXLAN payload (the 8-byte header, then the frame) holding Ethernet / IPv4 / UDP from
/// `src` to `dst` (UDP checksum 0: none, which IPv4 allows) with `payload`.
fn vxlan_frame(
    vni: u32,
    src: Ipv4Addr,
    dst: SocketAddrV4,
    dst_mac: [u8; 6],
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + 14 + 20 + 8 + payload.len());
    // VXLAN: the I flag, reserved, the VNI, reserved.
    let vni = vni.to_be_bytes();
    f.extend_from_slice(&[0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0]);
    // Ethernet.
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&docker_mac(src));
    f.extend_from_slice(&[0x08, 0x00]);
    // IPv4: no options, don't fragment, TTL 64, UDP.
    let total = u16::try_from(20 + 8 + payload.len()).expect("a payload under 64 KiB");
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let checksum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    f.extend_from_slice(&ip);
    // UDP.
    f.extend_from_slice(&VXLAN_SEND_SPORT.to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&(total - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// The JSON line `vxlan-send` prints.
#[derive(Debug, Serialize)]
struct VxlanSendReport {
    sent: u64,
}

fn cmd_vxlan_send(flags: &Flags) -> Result<ExitCode> {
    let to: String = flags.required("to")?;
    let to: SocketAddr = match to.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, VXLAN_PORT),
        Err(_) => to.parse().map_err(|e| usage(format!("--to `{to}`: {e}")))?,
    };
    let vni: u32 = flags.required("vni")?;
    if !(1..=0x00ff_ffff).contains(&vni) {
        return Err(usage("--vni must be 1 to 16777215"));
    }
    let inner_dst: SocketAddrV4 = flags.required("inner-dst")?;
    let [a, b, c, _] = inner_dst.ip().octets();
    let inner_src: Ipv4Addr = flags.or("inner-src", Ipv4Addr::new(a, b, c, 254))?;
    let payload: String = flags.required("payload")?;
    let count: u64 = flags.at_least("count", 1, 1)?;
    let from: IpAddr = flags.or("from", unspecified_for(&to))?;

    let frame = vxlan_frame(
        vni,
        inner_src,
        inner_dst,
        docker_mac(*inner_dst.ip()),
        payload.as_bytes(),
    );
    let socket =
        udp_bind(&SocketAddr::new(from, 0), false).context(format!("binding UDP {from}"))?;
    for _ in 0..count {
        socket
            .send_to(&frame, to)
            .context(format!("sending to {to}"))?;
    }
    say(json(&VxlanSendReport { sent: count })?)?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

/// A subcommand: its name, its flags (values, switches) and what runs it.
type Command = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    fn(&Flags) -> Result<ExitCode>,
);

const COMMANDS: &[Command] = &[
    (
        "serve",
        &["name", "port", "addr", "upstream"],
        &[],
        cmd_serve,
    ),
    (
        "resolve",
        &["name", "server", "type", "timeout-ms"],
        &["tcp"],
        cmd_resolve,
    ),
    (
        "dns-rate",
        &["name", "server", "seconds", "window"],
        &[],
        cmd_dns_rate,
    ),
    (
        "udp-sink",
        &["port", "idle-ms", "max-seconds"],
        &[],
        cmd_udp_sink,
    ),
    (
        "udp-flood",
        &["target", "seconds", "size", "flows", "sport-base"],
        &[],
        cmd_udp_flood,
    ),
    (
        "tcp-rate",
        &["target", "seconds", "concurrency"],
        &[],
        cmd_tcp_rate,
    ),
    ("tcp-proxy", &["listen", "backends"], &[], cmd_tcp_proxy),
    (
        "ask",
        &["target", "sports", "count", "timeout-ms", "interval-ms"],
        &["udp"],
        cmd_ask,
    ),
    ("hold", &["target", "seconds", "interval-ms"], &[], cmd_hold),
    ("tcp-rr", &["target", "count"], &[], cmd_tcp_rr),
    (
        "wg-flood",
        &["target", "public-key", "seconds", "rate", "kind", "from"],
        &[],
        cmd_wg_flood,
    ),
    (
        "vxlan-send",
        &[
            "to",
            "vni",
            "inner-dst",
            "inner-src",
            "payload",
            "count",
            "from",
        ],
        &[],
        cmd_vxlan_send,
    ),
];

fn run(args: &[String]) -> Result<ExitCode> {
    if args.iter().any(|a| a == "-h" || a == "--help") || args.first().is_some_and(|a| a == "help")
    {
        print!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let Some((sub, rest)) = args.split_first() else {
        return Err(usage("missing subcommand"));
    };
    let Some((_, valued, switches, command)) = COMMANDS.iter().find(|(name, ..)| name == sub)
    else {
        return Err(usage(format!("unknown subcommand `{sub}`")));
    };
    let flags = Flags::parse(rest, valued, switches)?;
    command(&flags)
}

fn main() -> ExitCode {
    let args: Result<Vec<String>> = std::env::args_os()
        .skip(1)
        .map(|a| {
            a.into_string()
                .map_err(|a| usage(format!("argument {a:?} is not UTF-8")))
        })
        .collect();
    match args.and_then(|args| run(&args)) {
        Ok(code) => code,
        Err(Error::Usage(msg)) => {
            eprintln!("error: {msg}\n(see `shoal-labtool --help`)");
            ExitCode::from(2)
        }
        Err(Error::Run(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_parse_values_switches_and_inline_values() {
        let flags = Flags::parse(
            &args("--target 10.0.0.1:80 --udp --count=3"),
            &["target", "count"],
            &["udp"],
        )
        .expect("valid flags");
        let target: SocketAddr = flags.required("target").expect("target");
        assert_eq!(target, "10.0.0.1:80".parse().expect("addr"));
        assert_eq!(flags.or("count", 1u32), Ok(3));
        assert_eq!(flags.or("timeout-ms", 2000u64), Ok(2000));
        assert!(flags.has("udp"));
    }

    #[test]
    fn flags_reject_bad_input_as_usage_errors() {
        let parse = |s: &str| Flags::parse(&args(s), &["port"], &["udp"]).map(|_| ());
        for bad in [
            "--bogus 1",
            "--port",
            "--port --udp",
            "--port 1 --port 2",
            "--udp=yes",
            "stray",
        ] {
            assert!(matches!(parse(bad), Err(Error::Usage(_))), "{bad}");
        }
        let flags = Flags::parse(&args("--port x"), &["port"], &[]).expect("parses");
        assert!(matches!(
            flags.required::<u16>("port"),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            flags.required::<u16>("other"),
            Err(Error::Usage(_))
        ));
    }

    #[test]
    fn subcommands_are_checked() {
        assert!(matches!(run(&args("frobnicate")), Err(Error::Usage(_))));
        assert!(matches!(run(&[]), Err(Error::Usage(_))));
        assert!(matches!(
            run(&args("ask --target 127.0.0.1:1 --sports 5-6 --count 2")),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            run(&args("udp-flood --target 127.0.0.1:1 --seconds 0")),
            Err(Error::Usage(_))
        ));
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("40000-40003"), Ok((40000, 40003)));
        assert_eq!(parse_port_range("5"), Ok((5, 5)));
        assert!(parse_port_range("9-8").is_err());
        assert!(parse_port_range("0-8").is_err());
        assert!(parse_port_range("1-70000").is_err());
        assert!(parse_port_range("a-b").is_err());
    }

    #[test]
    fn address_lists() {
        let list = parse_addr_list("10.0.0.1:80,[::1]:81").expect("valid list");
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].port(), 81);
        assert!(parse_addr_list("10.0.0.1:80,").is_err());
        assert!(parse_addr_list("10.0.0.1").is_err());
    }

    #[test]
    fn http_body_extraction() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nweb-2\nmore";
        assert_eq!(http_body_first_line(ok), Ok("web-2".to_string()));
        let crlf = b"HTTP/1.0 200 OK\r\n\r\nweb-1\r\n";
        assert_eq!(http_body_first_line(crlf), Ok("web-1".to_string()));
        assert!(http_body_first_line(b"HTTP/1.1 503 Unavailable\r\n\r\nno\n").is_err());
        assert!(http_body_first_line(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(http_body_first_line(b"HTTP/1.1 200 OK\r\nX: y").is_err());
        assert!(http_body_first_line(b"").is_err());
    }

    #[test]
    fn connection_classification() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET /"), Some(Mode::Http));
        assert_eq!(classify(b"HEAD / HTTP/1.0"), Some(Mode::Http));
        assert_eq!(classify(b"POST"), Some(Mode::Http));
        assert_eq!(classify(b"ping\n"), Some(Mode::Lines));
        assert_eq!(classify(b"GETX"), Some(Mode::Lines));
        assert_eq!(classify(b"x"), Some(Mode::Lines));
        assert_eq!(classify(b"G\n"), Some(Mode::Lines));
    }

    #[test]
    fn first_lines() {
        assert_eq!(first_line(b"web-1\n"), "web-1");
        assert_eq!(first_line(b"web-1\r\nx"), "web-1");
        assert_eq!(first_line(b"web-1"), "web-1");
    }

    #[test]
    fn forged_initiations_pass_or_fail_mac1_as_boringtun_checks_it() {
        use boringtun::noise::errors::WireGuardError;
        use boringtun::noise::rate_limiter::RateLimiter;
        use boringtun::noise::{Packet, TunnResult};
        let responder =
            boringtun::x25519::PublicKey::from(&boringtun::x25519::StaticSecret::from([7u8; 32]));
        let limiter = RateLimiter::new(&responder, 1_000);
        let key = mac1_key(responder.as_bytes());
        let mut rng = XorShift(1);
        let mut reply = [0u8; 64];
        for _ in 0..16 {
            let valid = forged_initiation(&mut rng, Some(&key));
            assert_eq!(valid.len(), 148);
            assert!(matches!(
                limiter.verify_packet(None, &valid, &mut reply),
                Ok(Packet::HandshakeInit(_))
            ));
            let bad = forged_initiation(&mut rng, None);
            assert!(matches!(
                limiter.verify_packet(None, &bad, &mut reply),
                Err(TunnResult::Err(WireGuardError::InvalidMac))
            ));
            assert!((1..=200).contains(&junk(&mut rng).len()));
        }
    }

    #[test]
    fn vxlan_frames_are_laid_out_as_the_kernel_reads_them() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 20, 0, 2), 7000);
        let f = vxlan_frame(
            0x01_1001,
            Ipv4Addr::new(10, 20, 0, 254),
            dst,
            docker_mac(*dst.ip()),
            b"hi",
        );
        assert_eq!(f.len(), 8 + 14 + 20 + 8 + 2);
        assert_eq!(f[..8], [0x08, 0, 0, 0, 0x01, 0x10, 0x01, 0]);
        assert_eq!(f[8..14], [0x02, 0x42, 10, 20, 0, 2]);
        assert_eq!(f[14..20], [0x02, 0x42, 10, 20, 0, 254]);
        let ip = &f[22..42];
        assert_eq!(ip[0], 0x45);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 30);
        assert_eq!(ipv4_checksum(ip), 0, "the header checksum is right");
        let udp = &f[42..50];
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 7000);
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]), 10);
        assert_eq!(&f[50..], b"hi");
    }

    #[test]
    fn rates() {
        assert_eq!(rate(10, 0.0), 0.0);
        assert_eq!(rate(3, 2.0), 1.5);
        assert_eq!(round(1.23456, 3), 1.235);
    }
}

// ---------------------------------------------------------------------------------------------
// resolve, dns-rate
// ---------------------------------------------------------------------------------------------

/// A query for `name` of type `qtype` (PTR: `name` is an address).
fn dns_query(name: &str, qtype: &str) -> Result<hickory_proto::op::Message> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let (qname, qtype) = match qtype.to_ascii_uppercase().as_str() {
        "A" => (Name::from_ascii(name), RecordType::A),
        "AAAA" => (Name::from_ascii(name), RecordType::AAAA),
        "PTR" => {
            let ip: Ipv4Addr = name
                .parse()
                .map_err(|e| usage(format!("--name must be an IPv4 address for PTR: {e}")))?;
            (Ok(Name::from(ip)), RecordType::PTR)
        }
        other => return Err(usage(format!("--type {other}: A, AAAA or PTR"))),
    };
    let qname = qname.map_err(|e| usage(format!("--name {name}: {e}")))?;
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(qname, qtype));
    Ok(query)
}

fn cmd_resolve(flags: &Flags) -> Result<ExitCode> {
    use hickory_proto::op::Message;
    use hickory_proto::rr::RData;
    let name: String = flags.required("name")?;
    let server: SocketAddr = flags.or("server", SocketAddr::from(([127, 0, 0, 11], 53)))?;
    let qtype: String = flags.or("type", "A".to_owned())?;
    let timeout = Duration::from_millis(flags.at_least("timeout-ms", 2000u64, 1)?);
    let query = dns_query(&name, &qtype)?;
    let bytes = query
        .to_vec()
        .map_err(|e| Error::Run(format!("encoding the query: {e}")))?;
    let reply = if flags.has("tcp") {
        (|| -> io::Result<Vec<u8>> {
            let mut stream = TcpStream::connect_timeout(&server, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            stream.write_all(&framed)?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len)?;
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut reply)?;
            Ok(reply)
        })()
    } else {
        (|| -> io::Result<Vec<u8>> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(timeout))?;
            socket.send_to(&bytes, server)?;
            let mut buf = vec![0u8; 65_535];
            loop {
                let (n, _) = socket.recv_from(&mut buf)?;
                if n >= 2 && buf[..2] == bytes[..2] {
                    return Ok(buf[..n].to_vec());
                }
            }
        })()
    };
    let reply = match reply {
        Ok(reply) => reply,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            say("TIMEOUT")?;
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(Error::Run(format!("asking {server}: {e}"))),
    };
    let message = Message::from_vec(&reply)
        .map_err(|e| Error::Run(format!("the reply does not decode: {e}")))?;
    let mut answers: Vec<String> = message
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            RData::PTR(p) => p.0.to_ascii(),
            other => format!("{other}"),
        })
        .collect();
    answers.sort();
    let mut line = format!("{:?}", message.metadata.response_code).to_ascii_uppercase();
    if message.metadata.truncation {
        line.push_str(" TRUNCATED");
    }
    for answer in answers {
        line.push(' ');
        line.push_str(&answer);
    }
    say(line)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct DnsRate {
    queries: u64,
    lost: u64,
    qps: f64,
    p50_us: f64,
    p99_us: f64,
}

fn cmd_dns_rate(flags: &Flags) -> Result<ExitCode> {
    let name: String = flags.required("name")?;
    let server: SocketAddr = flags.or("server", SocketAddr::from(([127, 0, 0, 11], 53)))?;
    let duration = flags.seconds("seconds", Some(3.0))?;
    let window: usize = flags.at_least("window", 8usize, 1)?;
    let mut query = dns_query(&name, "A")?
        .to_vec()
        .map_err(|e| Error::Run(format!("encoding the query: {e}")))?;
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
    socket
        .connect(server)
        .context(format!("connecting to {server}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .context("socket options")?;
    // In flight: ID → when it was sent.
    let mut in_flight: HashMap<u16, Instant> = HashMap::new();
    let mut next_id: u16 = 0;
    let mut latencies: Vec<f64> = Vec::new();
    let mut lost = 0u64;
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut send = |in_flight: &mut HashMap<u16, Instant>, query: &mut Vec<u8>| -> Result<()> {
        next_id = next_id.wrapping_add(1);
        query[..2].copy_from_slice(&next_id.to_be_bytes());
        in_flight.insert(next_id, Instant::now());
        socket.send(query).context("sending a query")?;
        Ok(())
    };
    while start.elapsed() < duration {
        while in_flight.len() < window {
            send(&mut in_flight, &mut query)?;
        }
        match socket.recv(&mut buf) {
            Ok(n) if n >= 2 => {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                if let Some(sent) = in_flight.remove(&id) {
                    latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // Nothing for 500 ms: what is in flight is lost.
                lost += in_flight.len() as u64;
                in_flight.clear();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Run(format!("receiving: {e}"))),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if latencies.is_empty() {
        return Err(Error::Run(format!("no answer from {server}")));
    }
    latencies.sort_unstable_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let result = DnsRate {
        queries: latencies.len() as u64,
        lost,
        qps: latencies.len() as f64 / seconds,
        p50_us: at(0.5),
        p99_us: at(0.99),
    };
    say(serde_json::to_string(&result).map_err(|e| Error::Run(e.to_string()))?)?;
    Ok(ExitCode::SUCCESS)
}
