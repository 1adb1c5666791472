//! The embedded DNS server: every task finds the services it shares a network with by name, on
//! `127.0.0.11:53` (UDP and TCP) inside its own network namespace, as in Docker.
//!
//! ```text
//!   task ──query──> 127.0.0.11:53 (a socket of shoald's, made inside the task's namespace)
//!        <─answer── Records (from the assignment: the services on the task's networks)
//!                   └─ not a name of the swarm: relayed to the node's resolvers (resolv.conf)
//!                      from the node's namespace; SERVFAIL when none answers in time
//! ```
//!
//! One UDP socket and one TCP listener per task namespace, made by a short-lived thread that
//! enters the namespace with `setns(2)` (a socket stays in the namespace it was made in), then
//! served by tokio tasks in shoald's runtime: no process or thread per task, and the answers come
//! from the assignment in memory, replaced at once when the cluster changes.
//!
//! Names, on the networks the asking task shares with a service (ingress is not one):
//! - `<service>` and each alias: the service's VIP there (`--endpoint-mode vip`) or its running
//!   tasks' addresses (`dnsrr`);
//! - `tasks.<service>` (and `tasks.<alias>`): its running tasks' addresses;
//! - `<service>.<slot>.<task id>` (`<service>.<node id>.<task id>` for a global service): one task;
//! - the reverse (`PTR`) of each of those addresses.
//!
//! Answers carry a TTL of 0: a client that caches would otherwise keep a task that has stopped.
//! Messages are parsed and built by hickory-proto; forwarding relays the query's bytes unchanged.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use shoal_api::service::EndpointMode;
use shoal_control::dispatcher::ReachableService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Where a task finds its resolver, as in Docker.
pub(crate) const ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)), 53);

/// The node's resolvers, for names that are not the swarm's.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// How long a forwarded query may take, all upstreams together, before the task gets SERVFAIL
/// (glibc waits 5 s per try by default: the task hears back well before it gives up).
const FORWARD_BUDGET: Duration = Duration::from_millis(1500);

/// Queries one task may have at the upstreams at once; more get SERVFAIL at once.
const FORWARDS_PER_TASK: usize = 64;

/// TCP connections one task may hold open to its resolver at once.
const TCP_PER_TASK: usize = 16;

/// How long an idle TCP connection to the resolver stays open.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The largest UDP answer without EDNS (RFC 1035).
const UDP_PLAIN_MAX: usize = 512;

/// What the swarm's names resolve to, per network.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Records {
    networks: HashMap<String, Names>,
}

/// One network's names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Names {
    /// Lower-case name (no trailing dot) → addresses.
    forward: HashMap<String, Vec<Ipv4Addr>>,
    /// Address → the name it answers to.
    reverse: HashMap<Ipv4Addr, String>,
}

impl Names {
    fn add(&mut self, name: String, ip: Ipv4Addr) {
        let entry = self.forward.entry(name.to_ascii_lowercase()).or_default();
        if !entry.contains(&ip) {
            entry.push(ip);
        }
    }
}

impl Records {
    /// The names of `services` (the assignment's, each on the networks it shares with the node's
    /// tasks, with its running tasks there).
    pub(crate) fn new(services: &[ReachableService]) -> Self {
        let mut records = Records::default();
        for service in services {
            for on in &service.networks {
                let names = records.networks.entry(on.network_id.clone()).or_default();
                let tasks: Vec<(&str, Ipv4Addr, String)> = service
                    .tasks
                    .iter()
                    .filter(|t| t.network_id == on.network_id)
                    .filter_map(|t| {
                        let ip = t.ip.parse().ok()?;
                        let middle = match t.slot {
                            0 => t.node_id.clone(),
                            slot => slot.to_string(),
                        };
                        Some((t.task_id.as_str(), ip, middle))
                    })
                    .collect();
                let vip: Option<Ipv4Addr> = on.vip.as_deref().and_then(|v| v.parse().ok());
                for name in std::iter::once(&service.name).chain(&on.aliases) {
                    match (service.endpoint_mode, vip) {
                        (EndpointMode::Vip, Some(vip)) => names.add(name.clone(), vip),
                        (EndpointMode::Vip, None) => {}
                        (EndpointMode::Dnsrr, _) => {
                            for (_, ip, _) in &tasks {
                                names.add(name.clone(), *ip);
                            }
                        }
                    }
                    // A name with no address yet (no running task) still answers: NODATA, not
                    // a forward to the upstreams that would leak the swarm's names.
                    names
                        .forward
                        .entry(format!("tasks.{name}").to_ascii_lowercase())
                        .or_default();
                    names.forward.entry(name.to_ascii_lowercase()).or_default();
                    for (_, ip, _) in &tasks {
                        names.add(format!("tasks.{name}"), *ip);
                    }
                }
                if let (EndpointMode::Vip, Some(vip)) = (service.endpoint_mode, vip) {
                    names.reverse.insert(vip, service.name.clone());
                }
                for (task, ip, middle) in &tasks {
                    let name = format!("{}.{middle}.{task}", service.name);
                    names.add(name.clone(), *ip);
                    names.reverse.insert(*ip, name);
                }
            }
        }
        for names in records.networks.values_mut() {
            for ips in names.forward.values_mut() {
                ips.sort();
            }
        }
        records
    }

    /// The addresses `name` has on the first of `networks` that knows it.
    fn lookup(&self, networks: &[String], name: &str) -> Option<&[Ipv4Addr]> {
        networks
            .iter()
            .filter_map(|n| self.networks.get(n))
            .find_map(|names| names.forward.get(name))
            .map(Vec::as_slice)
    }

    /// The name `ip` answers to on the first of `networks` that knows it.
    fn reverse(&self, networks: &[String], ip: Ipv4Addr) -> Option<&str> {
        networks
            .iter()
            .filter_map(|n| self.networks.get(n))
            .find_map(|names| names.reverse.get(&ip))
            .map(String::as_str)
    }
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not a name of the swarm: relay it to the upstreams.
    Forward(Message),
    /// Not a DNS message at all: say nothing.
    Drop,
}

/// `1.2.0.10.in-addr.arpa` → 10.0.2.1.
fn arpa_v4(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut octets: Vec<u8> = rest
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if octets.len() != 4 {
        return None;
    }
    octets.reverse();
    Some(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
}

/// A reply to `request` with `code` and no records.
fn error_reply(request: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata = Metadata::response_from_request(&request.metadata);
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = code;
    reply.add_queries(request.queries.iter().cloned());
    reply
}

/// Encodes `reply`, truncated (TC set, the client retries over TCP) when it is over `limit`.
fn encode(reply: &Message, limit: Option<usize>) -> Reply {
    match reply.to_vec() {
        Ok(bytes) if limit.is_none_or(|l| bytes.len() <= l) => Reply::Answer(bytes),
        Ok(_) => match reply.truncate().to_vec() {
            Ok(bytes) => Reply::Answer(bytes),
            Err(_) => Reply::Drop,
        },
        Err(_) => Reply::Drop,
    }
}

/// Answers `query` from `records` for a task on `networks`; `udp`: it came by datagram (answers
/// over its size limit are truncated).
fn answer(records: &Records, networks: &[String], query: &[u8], udp: bool) -> Reply {
    let request = match Message::from_vec(query) {
        Ok(request) => request,
        // A header that parses gets FORMERR with its ID; anything shorter is not DNS.
        Err(_) if query.len() >= 12 => {
            let mut reply =
                Message::response(u16::from_be_bytes([query[0], query[1]]), OpCode::Query);
            reply.metadata.response_code = ResponseCode::FormErr;
            return encode(&reply, None);
        }
        Err(_) => return Reply::Drop,
    };
    if request.metadata.message_type != MessageType::Query {
        return Reply::Drop;
    }
    if request.metadata.op_code != OpCode::Query {
        return encode(&error_reply(&request, ResponseCode::NotImp), None);
    }
    let [question] = request.queries.as_slice() else {
        return encode(&error_reply(&request, ResponseCode::FormErr), None);
    };
    let limit = udp.then(|| {
        request.edns.as_ref().map_or(UDP_PLAIN_MAX, |e| {
            usize::from(e.max_payload()).max(UDP_PLAIN_MAX)
        })
    });
    let ascii = question.name().to_ascii().to_ascii_lowercase();
    let name = ascii.strip_suffix('.').unwrap_or(&ascii);
    let class_in = question.query_class() == DNSClass::IN;
    let qtype = question.query_type();
    let mut reply = error_reply(&request, ResponseCode::NoError);
    reply.metadata.authoritative = true;
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        reply.set_edns(edns);
    }
    if let Some(ip) = arpa_v4(name).filter(|_| class_in) {
        let Some(target) = records.reverse(networks, ip) else {
            return Reply::Forward(request);
        };
        if matches!(qtype, RecordType::PTR | RecordType::ANY)
            && let Ok(target) = Name::from_ascii(format!("{target}."))
        {
            reply.add_answer(Record::from_rdata(
                question.name().clone(),
                0,
                RData::PTR(PTR(target)),
            ));
        }
        return encode(&reply, limit);
    }
    let Some(ips) = records.lookup(networks, name).filter(|_| class_in) else {
        return Reply::Forward(request);
    };
    if matches!(qtype, RecordType::A | RecordType::ANY) {
        for ip in ips {
            reply.add_answer(Record::from_rdata(
                question.name().clone(),
                0,
                RData::A(A(*ip)),
            ));
        }
    }
    // Other types of a swarm name (AAAA among them): NOERROR with no records, so a client asking
    // for both families uses the A.
    encode(&reply, limit)
}

/// Counts `reply` in `shoal_dns_queries_total` by its result, and hands it back.
fn counted(reply: Reply) -> Reply {
    let result = match &reply {
        // The response code: the low four bits of the header's fourth byte.
        Reply::Answer(bytes) => match bytes.get(3).map(|b| b & 0x0f) {
            Some(0) => "answered",
            Some(3) => "nxdomain",
            Some(2) => "failed",
            _ => "refused",
        },
        Reply::Forward(_) => "forwarded",
        Reply::Drop => "dropped",
    };
    crate::figures::agent()
        .dns_queries
        .get_or_create(&[("result", result)])
        .inc();
    reply
}

/// The node's resolvers, from resolv.conf (re-read when it changes).
#[derive(Debug, Default)]
struct Upstreams {
    read: Option<(Option<std::time::SystemTime>, Vec<SocketAddr>)>,
}

/// The `nameserver` lines of a resolv.conf (glibc's 127.0.0.1 when there is none), never the
/// embedded server itself.
fn nameservers(text: &str) -> Vec<SocketAddr> {
    let mut servers: Vec<SocketAddr> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            // `fe80::1%eth0`: the zone is the node's, not usable here; take the address.
            let word = words.next()?;
            let ip: IpAddr = word.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .filter(|s| *s != ADDR)
        .take(3)
        .collect();
    if servers.is_empty() {
        servers.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
    }
    servers
}

impl Upstreams {
    fn current(&mut self) -> Vec<SocketAddr> {
        let modified = std::fs::metadata(HOST_RESOLV_CONF)
            .and_then(|m| m.modified())
            .ok();
        match &self.read {
            Some((when, servers)) if *when == modified && modified.is_some() => servers.clone(),
            _ => {
                let text = std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default();
                let servers = nameservers(&text);
                self.read = Some((modified, servers.clone()));
                servers
            }
        }
    }
}

/// The `/etc/resolv.conf` a task sees: the embedded server, with the node's search domains and
/// options, and `ndots:0` unless the node sets it (a single-label name is a service's: ask for it
/// as it is first), as Docker writes it.
pub(crate) fn task_resolv_conf(host: &str) -> String {
    let (search, options) = resolv_settings(host);
    let mut out = format!(
        "# Written by shoald: the swarm's embedded DNS server.\nnameserver {}\n",
        ADDR.ip()
    );
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    out.push_str(&format!("options {}\n", options.join(" ")));
    out
}

/// The node's search domains and options (with `ndots:0` added unless it sets ndots).
pub(crate) fn resolv_settings(host: &str) -> (Vec<String>, Vec<String>) {
    let mut search = Vec::new();
    let mut options = Vec::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            // The last `search` or `domain` line wins, as in glibc.
            Some("search" | "domain") => search = words.map(str::to_owned).collect(),
            Some("options") => options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    if !options.iter().any(|o| o.starts_with("ndots:")) {
        options.push("ndots:0".into());
    }
    (search, options)
}

/// The node's resolv.conf as it is now (empty when there is none).
pub(crate) fn host_resolv_conf() -> String {
    std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default()
}

/// What every task's server shares.
#[derive(Debug, Default)]
struct Shared {
    records: RwLock<Arc<Records>>,
    upstreams: std::sync::Mutex<Upstreams>,
}

impl Shared {
    fn records(&self) -> Arc<Records> {
        self.records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn upstreams(&self) -> Vec<SocketAddr> {
        self.upstreams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current()
    }
}

/// One task's server: its networks, and the tokio tasks serving its sockets.
#[derive(Debug)]
struct Server {
    networks: Arc<RwLock<Vec<String>>>,
    serving: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for task in &self.serving {
            task.abort();
        }
    }
}

/// The node's embedded DNS: a server in each plugged task's namespace.
#[derive(Debug, Default)]
pub(crate) struct Dns {
    shared: Arc<Shared>,
    servers: tokio::sync::Mutex<BTreeMap<PathBuf, Server>>,
}

/// A task the node serves names to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Asker {
    /// Its network namespace.
    pub netns: PathBuf,
    /// Its networks, in the order it was attached to them (ingress left out).
    pub networks: Vec<String>,
}

impl Dns {
    /// Serves `records` to `askers` from now on: a server is started in each new namespace and
    /// stopped in each that is gone. A namespace where the sockets cannot be made is logged and
    /// tried again at the next update.
    pub(crate) async fn update(&self, records: Records, askers: Vec<Asker>) {
        {
            let mut current = self
                .shared
                .records
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if **current != records {
                *current = Arc::new(records);
            }
        }
        let mut servers = self.servers.lock().await;
        servers.retain(|netns, _| askers.iter().any(|a| &a.netns == netns));
        for asker in askers {
            if let Some(server) = servers.get(&asker.netns) {
                let mut networks = server.networks.write().unwrap_or_else(|e| e.into_inner());
                if *networks != asker.networks {
                    *networks = asker.networks;
                }
                continue;
            }
            match self.start(&asker).await {
                Ok(server) => {
                    servers.insert(asker.netns, server);
                }
                Err(e) => tracing::warn!(
                    netns = %asker.netns.display(),
                    error = %e,
                    "starting a task's DNS server on {ADDR} (tried again at the next change)"
                ),
            }
        }
    }

    /// Binds the sockets in the task's namespace and serves them.
    async fn start(&self, asker: &Asker) -> std::io::Result<Server> {
        let netns = asker.netns.clone();
        let (udp, tcp) = tokio::task::spawn_blocking(move || bind_in(&netns))
            .await
            .map_err(std::io::Error::other)??;
        let udp = Arc::new(UdpSocket::from_std(udp)?);
        let tcp = TcpListener::from_std(tcp)?;
        let networks = Arc::new(RwLock::new(asker.networks.clone()));
        let serving = vec![
            tokio::spawn(serve_udp(udp, self.shared.clone(), networks.clone())),
            tokio::spawn(serve_tcp(tcp, self.shared.clone(), networks.clone())),
        ];
        Ok(Server { networks, serving })
    }
}

/// The UDP socket and TCP listener on [`ADDR`] inside `netns`, non-blocking.
fn bind_in(netns: &Path) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let ns = shoal_dataplane::overlay::netns::open(netns)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is not a network namespace", netns.display()),
        )
    })?;
    shoal_dataplane::overlay::netns::within(&ns, || {
        let udp = std::net::UdpSocket::bind(ADDR)?;
        let tcp = std::net::TcpListener::bind(ADDR)?;
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })
}

fn networks_of(networks: &RwLock<Vec<String>>) -> Vec<String> {
    networks.read().unwrap_or_else(|e| e.into_inner()).clone()
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    networks: Arc<RwLock<Vec<String>>>,
) {
    let forwards = Arc::new(Semaphore::new(FORWARDS_PER_TASK));
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!(error = %e, "the DNS server's UDP socket");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let query = &buf[..n];
        match counted(answer(
            &shared.records(),
            &networks_of(&networks),
            query,
            true,
        )) {
            Reply::Answer(bytes) => {
                let _ = socket.send_to(&bytes, from).await;
            }
            Reply::Drop => {}
            Reply::Forward(request) => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else {
                    if let Reply::Answer(bytes) =
                        encode(&error_reply(&request, ResponseCode::ServFail), None)
                    {
                        let _ = socket.send_to(&bytes, from).await;
                    }
                    continue;
                };
                let (socket, shared, query) = (socket.clone(), shared.clone(), query.to_vec());
                tokio::spawn(async move {
                    let bytes = forward(&shared.upstreams(), &request, &query, false).await;
                    let _ = socket.send_to(&bytes, from).await;
                    drop(permit);
                });
            }
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, networks: Arc<RwLock<Vec<String>>>) {
    let connections = Arc::new(Semaphore::new(TCP_PER_TASK));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Over the limit, the newest connection is closed at once.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let (shared, networks) = (shared.clone(), networks.clone());
        tokio::spawn(async move {
            let _ = serve_tcp_connection(stream, &shared, &networks).await;
            drop(permit);
        });
    }
}

/// Reads one length-prefixed message (RFC 1035 4.2.2); `None` at a clean end.
async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

async fn write_framed(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let len =
        u16::try_from(bytes.len()).map_err(|_| std::io::Error::other("message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await
}

async fn serve_tcp_connection(
    mut stream: TcpStream,
    shared: &Shared,
    networks: &RwLock<Vec<String>>,
) -> std::io::Result<()> {
    while let Ok(read) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await {
        let Some(query) = read? else {
            return Ok(());
        };
        let bytes = match counted(answer(
            &shared.records(),
            &networks_of(networks),
            &query,
            false,
        )) {
            Reply::Answer(bytes) => bytes,
            Reply::Drop => return Ok(()),
            Reply::Forward(request) => forward(&shared.upstreams(), &request, &query, true).await,
        };
        write_framed(&mut stream, &bytes).await?;
    }
    Ok(())
}

/// Relays `query` to each upstream in turn within [`FORWARD_BUDGET`]; the first answer with
/// the query's ID, or SERVFAIL.
async fn forward(upstreams: &[SocketAddr], request: &Message, query: &[u8], tcp: bool) -> Vec<u8> {
    let deadline = Instant::now() + FORWARD_BUDGET;
    for (i, upstream) in upstreams.iter().enumerate() {
        // Each upstream gets an equal share of what is left.
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / u32::try_from(upstreams.len() - i).unwrap_or(1);
        let asked = async {
            match tcp {
                true => forward_tcp(*upstream, query).await,
                false => forward_udp(*upstream, query).await,
            }
        };
        match tokio::time::timeout(share, asked).await {
            Ok(Ok(reply)) if reply.len() >= 2 && reply[..2] == query[..2] => return reply,
            Ok(Ok(_)) => tracing::debug!(%upstream, "an upstream answered another query's ID"),
            Ok(Err(e)) => tracing::debug!(%upstream, error = %e, "forwarding a DNS query"),
            Err(_) => tracing::debug!(%upstream, "an upstream resolver did not answer in time"),
        }
    }
    match encode(&error_reply(request, ResponseCode::ServFail), None) {
        Reply::Answer(bytes) => bytes,
        _ => Vec::new(),
    }
}

async fn forward_udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = socket.recv(&mut buf).await?;
        // A stray datagram with another ID is not the answer: keep waiting.
        if n >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn forward_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_framed(&mut stream, query).await?;
    read_framed(&mut stream).await?.ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before answering")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use shoal_control::dispatcher::{ReachableTask, ServiceOnNetwork};

    fn task(task: &str, slot: u64, network: &str, ip: &str) -> ReachableTask {
        ReachableTask {
            task_id: task.into(),
            slot,
            node_id: "node1".into(),
            network_id: network.into(),
            ip: ip.into(),
        }
    }

    fn services() -> Vec<ReachableService> {
        vec![
            ReachableService {
                id: "s1".into(),
                name: "api".into(),
                endpoint_mode: EndpointMode::Vip,
                networks: vec![ServiceOnNetwork {
                    network_id: "app".into(),
                    vip: Some("10.0.1.2".into()),
                    aliases: vec!["backend".into()],
                }],
                tasks: vec![
                    task("t1", 1, "app", "10.0.1.5"),
                    task("t2", 2, "app", "10.0.1.6"),
                ],
            },
            ReachableService {
                id: "s2".into(),
                name: "rr".into(),
                endpoint_mode: EndpointMode::Dnsrr,
                networks: vec![ServiceOnNetwork {
                    network_id: "app".into(),
                    vip: None,
                    aliases: vec![],
                }],
                tasks: vec![
                    task("t3", 1, "app", "10.0.1.7"),
                    task("t4", 2, "app", "10.0.1.8"),
                ],
            },
            ReachableService {
                id: "s3".into(),
                name: "db".into(),
                endpoint_mode: EndpointMode::Vip,
                networks: vec![ServiceOnNetwork {
                    network_id: "data".into(),
                    vip: Some("10.0.2.2".into()),
                    aliases: vec![],
                }],
                tasks: vec![task("t5", 0, "data", "10.0.2.5")],
            },
        ]
    }

    fn ask(
        records: &Records,
        networks: &[&str],
        name: &str,
        qtype: RecordType,
        udp: bool,
    ) -> Reply {
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        let networks: Vec<String> = networks.iter().map(|s| (*s).to_owned()).collect();
        answer(records, &networks, &query.to_vec().unwrap(), udp)
    }

    /// The A records of an answer, and its response code.
    fn answered(reply: Reply) -> (ResponseCode, Vec<Ipv4Addr>) {
        let Reply::Answer(bytes) = reply else {
            panic!("not answered: {reply:?}");
        };
        let message = Message::from_vec(&bytes).unwrap();
        let ips = message
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(A(ip)) => Some(*ip),
                _ => None,
            })
            .collect();
        (message.metadata.response_code, ips)
    }

    fn ips(list: &[&str]) -> Vec<Ipv4Addr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn services_resolve_to_their_vip_or_their_tasks_on_a_shared_network() {
        let records = Records::new(&services());
        let on_app = |name: &str| answered(ask(&records, &["app"], name, RecordType::A, true));
        assert_eq!(on_app("api"), (ResponseCode::NoError, ips(&["10.0.1.2"])));
        assert_eq!(on_app("API."), (ResponseCode::NoError, ips(&["10.0.1.2"])));
        assert_eq!(
            on_app("backend"),
            (ResponseCode::NoError, ips(&["10.0.1.2"]))
        );
        assert_eq!(
            on_app("tasks.api"),
            (ResponseCode::NoError, ips(&["10.0.1.5", "10.0.1.6"]))
        );
        assert_eq!(
            on_app("rr"),
            (ResponseCode::NoError, ips(&["10.0.1.7", "10.0.1.8"]))
        );
        assert_eq!(
            on_app("api.2.t2"),
            (ResponseCode::NoError, ips(&["10.0.1.6"]))
        );
        // Global tasks are named after their node.
        let on_data = answered(ask(&records, &["data"], "db.node1.t5", RecordType::A, true));
        assert_eq!(on_data, (ResponseCode::NoError, ips(&["10.0.2.5"])));
        // A service on another network is not the task's to find: the name goes upstream.
        assert!(matches!(
            ask(&records, &["app"], "db", RecordType::A, true),
            Reply::Forward(_)
        ));
        assert!(matches!(
            ask(&records, &["app"], "example.org", RecordType::A, true),
            Reply::Forward(_)
        ));
        // AAAA of a swarm name: no records, no error.
        assert_eq!(
            answered(ask(&records, &["app"], "api", RecordType::AAAA, true)),
            (ResponseCode::NoError, vec![])
        );
    }

    #[test]
    fn a_service_with_no_running_task_answers_no_data_rather_than_going_upstream() {
        let mut services = services();
        services[1].tasks.clear();
        let records = Records::new(&services);
        assert_eq!(
            answered(ask(&records, &["app"], "tasks.rr", RecordType::A, true)),
            (ResponseCode::NoError, vec![])
        );
        assert_eq!(
            answered(ask(&records, &["app"], "rr", RecordType::A, true)),
            (ResponseCode::NoError, vec![])
        );
    }

    #[test]
    fn addresses_resolve_back_to_their_names() {
        let records = Records::new(&services());
        let Reply::Answer(bytes) = ask(
            &records,
            &["app"],
            "6.1.0.10.in-addr.arpa",
            RecordType::PTR,
            true,
        ) else {
            panic!("no answer");
        };
        let message = Message::from_vec(&bytes).unwrap();
        let RData::PTR(PTR(name)) = &message.answers[0].data else {
            panic!("{message:?}");
        };
        assert_eq!(name.to_ascii(), "api.2.t2.");
        assert!(matches!(
            ask(
                &records,
                &["data"],
                "6.1.0.10.in-addr.arpa",
                RecordType::PTR,
                true
            ),
            Reply::Forward(_)
        ));
    }

    #[test]
    fn big_answers_are_truncated_over_udp_and_whole_over_tcp() {
        let mut services = services();
        services[0].tasks = (1..=60)
            .map(|i| task(&format!("t{i}"), i, "app", &format!("10.0.1.{}", 10 + i)))
            .collect();
        let records = Records::new(&services);
        let Reply::Answer(bytes) = ask(&records, &["app"], "tasks.api", RecordType::A, true) else {
            panic!("no answer");
        };
        let message = Message::from_vec(&bytes).unwrap();
        assert!(message.metadata.truncation);
        assert!(bytes.len() <= UDP_PLAIN_MAX);
        let (_, all) = answered(ask(&records, &["app"], "tasks.api", RecordType::A, false));
        assert_eq!(all.len(), 60);
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        let records = Records::new(&services());
        assert_eq!(answer(&records, &[], b"\x01", true), Reply::Drop);
        let mut junk = vec![0x12, 0x34];
        junk.extend_from_slice(&[0xff; 20]);
        let (code, _) = answered(answer(&records, &[], &junk, true));
        assert_eq!(code, ResponseCode::FormErr);
    }

    #[test]
    fn tasks_see_the_embedded_server_with_the_node_s_search_and_options() {
        let host = "# comment\nnameserver 10.1.1.1\nsearch corp.example\noptions edns0\n";
        assert_eq!(
            task_resolv_conf(host),
            "# Written by shoald: the swarm's embedded DNS server.\nnameserver 127.0.0.11\nsearch corp.example\noptions edns0 ndots:0\n"
        );
        assert_eq!(
            nameservers(host),
            vec!["10.1.1.1:53".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            nameservers(""),
            vec!["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            nameservers("nameserver 127.0.0.11\nnameserver fe80::1%eth0\n"),
            vec!["[fe80::1]:53".parse::<SocketAddr>().unwrap()]
        );
    }

    #[tokio::test]
    async fn other_names_are_relayed_to_the_first_upstream_that_answers() {
        let mut query = Message::query();
        query.add_query(Query::query(
            Name::from_ascii("example.org.").unwrap(),
            RecordType::A,
        ));
        let bytes = query.to_vec().unwrap();
        // An upstream that answers NXDOMAIN, after one that never answers.
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addrs = [silent.local_addr().unwrap(), upstream.local_addr().unwrap()];
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            let (n, from) = upstream.recv_from(&mut buf).await.unwrap();
            let request = Message::from_vec(&buf[..n]).unwrap();
            let reply = error_reply(&request, ResponseCode::NXDomain)
                .to_vec()
                .unwrap();
            upstream.send_to(&reply, from).await.unwrap();
        });
        let reply = Message::from_vec(&forward(&addrs, &query, &bytes, false).await).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(reply.metadata.id, query.metadata.id);
        drop(silent);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_gives_servfail() {
        let mut query = Message::query();
        query.add_query(Query::query(
            Name::from_ascii("example.org.").unwrap(),
            RecordType::A,
        ));
        let bytes = query.to_vec().unwrap();
        // Nothing listens on this port of the loopback: refused at once.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let refused = silent.local_addr().unwrap();
        drop(silent);
        let reply = forward(&[refused], &query, &bytes, false).await;
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(reply.metadata.id, query.metadata.id);
    }
}
