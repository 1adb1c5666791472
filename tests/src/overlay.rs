//! Overlays on a lab, before the control plane exists: networks and tasks (bare network
//! namespaces) described once, each node's desired state derived from that, and applied through
//! `shoal dataplane apply` the way a user would. Used by the overlay tests and `cargo xtask bench
//! overlay`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::error::io_error;
use crate::lab::{ip_batch, run_checked};
use crate::{Host, Lab, LabError, Netns, in_netns, wait_until, within};

/// A WireGuard key pair, base64 as `wg` prints keys. (The lab library does not depend on the
/// data plane: `xtask` uses it before the eBPF toolchain exists.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgKey {
    /// The private key.
    pub private: String,
    /// Its public key.
    pub public: String,
}

impl WgKey {
    /// A new random key pair.
    pub fn generate() -> WgKey {
        let secret = x25519_dalek::StaticSecret::random();
        let public = x25519_dalek::PublicKey::from(&secret);
        WgKey {
            private: STANDARD.encode(secret.to_bytes()),
            public: STANDARD.encode(public.as_bytes()),
        }
    }
}

/// An overlay network.
#[derive(Debug, Clone)]
pub struct Net {
    /// Its ID.
    pub id: &'static str,
    /// Its VNI.
    pub vni: u32,
    /// Its subnet is `10.<octet>.0.0/24`.
    pub octet: u8,
    /// Whether it is encrypted.
    pub encrypted: bool,
}

impl Net {
    /// The address `10.<octet>.0.<host>`.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.octet, 0, host)
    }
}

/// The two networks the overlay tests and benchmark use: `plain` (VNI 4096, 10.10.0.0/24) and
/// `secret` (VNI 4097, 10.20.0.0/24, encrypted).
pub fn plain_and_secret() -> Vec<Net> {
    vec![
        Net {
            id: "plain",
            vni: 4096,
            octet: 10,
            encrypted: false,
        },
        Net {
            id: "secret",
            vni: 4097,
            octet: 20,
            encrypted: true,
        },
    ]
}

/// A task: a network namespace `<lab prefix>-<name>` on a node, on some networks.
#[derive(Debug, Clone)]
pub struct Task {
    /// Its name.
    pub name: &'static str,
    /// The node (index into the lab's nodes).
    pub node: usize,
    /// Its networks and its host number on each (`10.<octet>.0.<host>`).
    pub on: Vec<(&'static str, u8)>,
}

/// Networks and tasks on a lab, with a WireGuard key per node.
#[derive(Debug)]
pub struct Overlay {
    /// The networks.
    pub nets: Vec<Net>,
    /// The tasks.
    pub tasks: Vec<Task>,
    /// Each node's key pair.
    pub keys: Vec<WgKey>,
    prefix: String,
}

impl Overlay {
    /// Creates the tasks' namespaces (the lab removes them with itself) and the nodes' keys.
    pub fn new(lab: &Lab, nets: Vec<Net>, tasks: Vec<Task>) -> Result<Overlay, LabError> {
        let overlay = Overlay {
            keys: lab.nodes().iter().map(|_| WgKey::generate()).collect(),
            nets,
            tasks,
            prefix: lab.prefix().to_owned(),
        };
        for task in &overlay.tasks {
            let name = overlay.netns(task.name);
            run_checked(Command::new("ip").args(["netns", "add", &name]))?;
            ip_batch(Some(&name), "link set lo up\n")?;
        }
        Ok(overlay)
    }

    /// The namespace name of a task.
    pub fn netns(&self, task: &str) -> String {
        format!("{}-{task}", self.prefix)
    }

    /// A network by ID.
    pub fn net(&self, id: &str) -> &Net {
        self.nets
            .iter()
            .find(|n| n.id == id)
            .expect("a known network")
    }

    /// A task's address on a network.
    pub fn ip(&self, task: &str, net: &str) -> Ipv4Addr {
        let t = self
            .tasks
            .iter()
            .find(|t| t.name == task)
            .expect("a known task");
        let host =
            t.on.iter()
                .find(|(n, _)| *n == net)
                .expect("the task is on the network")
                .1;
        self.net(net).ip(host)
    }

    /// Node `node`'s desired state: every network, its tasks as attachments, the others' as
    /// endpoints, every other node as a peer.
    pub fn state(&self, lab: &Lab, node: usize) -> Value {
        let nodes = lab.nodes();
        let networks: Vec<Value> = self
            .nets
            .iter()
            .map(|n| json!({ "id": n.id, "vni": n.vni, "subnet": format!("10.{}.0.0/24", n.octet), "encrypted": n.encrypted }))
            .collect();
        let mut attachments = Vec::new();
        let mut endpoints = Vec::new();
        for t in &self.tasks {
            for (net, host) in &t.on {
                let ip = self.net(net).ip(*host).to_string();
                if t.node == node {
                    attachments.push(json!({
                        "task": t.name,
                        "netns": Netns::named(self.netns(t.name)).path(),
                        "network": net,
                        "ip": ip,
                        "interface": format!("ov-{net}"),
                    }));
                } else {
                    endpoints.push(json!({ "network": net, "ip": ip, "node": nodes[t.node].name }));
                }
            }
        }
        let peers: Vec<Value> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != node)
            .map(|(i, n)| {
                json!({
                    "node": n.name,
                    "data_path_addr": n.data_ip.expect("nodes have a data address"),
                    "public_key": self.keys[i].public,
                })
            })
            .collect();
        json!({
            "node": nodes[node].name,
            "data_path": { "addr": nodes[node].data_if() },
            "wireguard": { "private_key": self.keys[node].private },
            "networks": networks,
            "attachments": attachments,
            "endpoints": endpoints,
            "peers": peers,
        })
    }

    /// Applies node `node`'s state from [`Overlay::state`].
    pub fn apply(&self, lab: &Lab, node: usize) -> Result<Output, LabError> {
        apply(lab, node, &self.state(lab, node))
    }

    /// Applies every node's state, failing on the first refusal.
    pub fn apply_all(&self, lab: &Lab) -> Result<(), String> {
        apply_each(lab, |node| self.state(lab, node))
    }

    /// A command run inside a task's namespace.
    pub fn command(&self, task: &str, program: &str) -> Command {
        in_netns(&self.netns(task), program).expect("the task's namespace exists")
    }

    /// Whether `from` gets an answer to one ping to `to` on `net` (payload `size`, don't fragment).
    pub fn ping(&self, from: &str, to: &str, net: &str, size: usize) -> bool {
        self.command(from, "ping")
            .args(["-c", "1", "-W", "2", "-M", "do", "-s", &size.to_string()])
            .arg(self.ip(to, net).to_string())
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

/// `program` in the network namespace `name` of `host`'s daemon (`wg`, the tunnel; `ov-<ID>`,
/// a network's). The namespace is mounted in the node's own mount namespace, which the command
/// joins first: `nsenter` then finds it there.
pub fn in_daemon_netns(
    lab: &Lab,
    host: &Host,
    name: &str,
    program: impl AsRef<std::ffi::OsStr>,
) -> Command {
    let ns = lab.host_dir(host).join("data/netns").join(name);
    let mut command = host.command("nsenter").expect("the node's namespaces");
    command.arg(format!("--net={}", ns.display())).arg(program);
    command
}

/// `program` in the tunnel namespace of `host`'s daemon (where the encrypted networks' VXLAN
/// sockets and the WireGuard engine's TAP device live).
pub fn in_tunnel(lab: &Lab, host: &Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
    in_daemon_netns(lab, host, "wg", program)
}

/// A CPU mask as the kernel prints one (`rps_cpus`: hexadecimal words separated by commas), as
/// a bit set; `None` when it is not one.
pub fn cpu_mask_bits(text: &str) -> Option<u128> {
    u128::from_str_radix(&text.trim().replace(',', ""), 16).ok()
}

/// Makes every task veth of `host`'s overlay networks (their ends on the networks' bridges)
/// steer what the task sends by flow to one of the CPUs of `mask` (RPS; the kernel's
/// hexadecimal CPU mask), as the engine's TAP does for what it decrypts: a task's stream then
/// keeps its order whatever CPU its socket sends from. Shoal does not do this itself (it costs
/// CPU on every packet a task sends); the overlay benchmark uses it to tell the reordering the
/// task's own veth causes from the rest. Written through a sysfs mounted inside each network's
/// namespace, and read back; finding no task veth is an error.
pub fn steer_task_veths(lab: &Lab, host: &Host, mask: &str) -> Result<(), String> {
    let failed = |what: String| format!("steering the task veths on {}: {what}", host.name);
    let listed = host
        .command("ls")
        .map_err(|e| failed(e.to_string()))?
        .arg(lab.host_dir(host).join("data/netns"))
        .output()
        .map_err(|e| failed(e.to_string()))?;
    let mut steered = 0;
    for name in String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|n| n.starts_with("ov-"))
    {
        let out = in_daemon_netns(lab, host, name, "unshare")
            .args(["--mount", "sh", "-ec"])
            .arg(format!(
                "mount -t sysfs sysfs /sys; for q in /sys/class/net/vt*/queues/rx-0/rps_cpus; \
                 do [ -e \"$q\" ] || continue; echo {mask} > \"$q\"; cat \"$q\"; done"
            ))
            .output()
            .map_err(|e| failed(format!("{name}: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let read: Vec<&str> = text.lines().collect();
        if !out.status.success() || read.iter().any(|m| cpu_mask_bits(m) != cpu_mask_bits(mask)) {
            return Err(failed(format!(
                "{name}: read back {read:?}, wanted {mask}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        steered += read.len();
    }
    if steered == 0 {
        return Err(failed("no task veth found".into()));
    }
    Ok(())
}

/// Writes `state` to the node's directory and runs `shoal dataplane apply` on it.
pub fn apply(lab: &Lab, node: usize, state: &Value) -> Result<Output, LabError> {
    let host = &lab.nodes()[node];
    let path: PathBuf = lab.host_dir(host).join("state.json");
    std::fs::create_dir_all(lab.host_dir(host)).map_err(io_error(format!(
        "creating {}",
        lab.host_dir(host).display()
    )))?;
    std::fs::write(&path, serde_json::to_string_pretty(state).expect("JSON"))
        .map_err(io_error(format!("writing {}", path.display())))?;
    lab.shoal(host, &["dataplane", "apply", &path.to_string_lossy()])
}

/// Applies `state(node)` on every node in turn, failing on the first refusal.
pub fn apply_each(lab: &Lab, state: impl Fn(usize) -> Value) -> Result<(), String> {
    for node in 0..lab.nodes().len() {
        let out = apply(lab, node, &state(node)).map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "apply on node {node}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

/// FNV-1a over a byte stream.
#[derive(Debug, Clone, Copy)]
pub struct Checksum(pub u64);

impl Default for Checksum {
    fn default() -> Self {
        Checksum(0xcbf2_9ce4_8422_2325)
    }
}

impl Checksum {
    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Sends `chunks` chunks of 64 KiB of pseudo-random bytes over TCP from the task namespace
/// `client` to `server_ip:port` in `server`, `pause` between chunks, and compares the checksum
/// the server computed with the client's. Either side stalling for 20 s is an error.
pub fn transfer(
    server: &str,
    server_ip: Ipv4Addr,
    client: &str,
    chunks: usize,
    pause: Duration,
) -> Result<u64, String> {
    let addr = SocketAddr::from((server_ip, 5201));
    let listener = within(server, || TcpListener::bind(addr))
        .map_err(|e| format!("listening on {addr}: {e}"))?;
    let receiver = std::thread::spawn(move || -> Result<(u64, u64), String> {
        // Never wait for a client that failed to connect.
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() > deadline {
                        return Err("no connection within 20 s".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let mut sum = Checksum::default();
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return Ok((sum.0, total)),
                Ok(n) => {
                    sum.update(&buf[..n]);
                    total += n as u64;
                }
                Err(e) => return Err(format!("receiving after {total} bytes: {e}")),
            }
        }
    });
    let sent = (|| -> Result<(u64, u64), String> {
        let mut stream = within(client, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        })
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let mut sum = Checksum::default();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut chunk = vec![0u8; 1 << 16];
        for i in 0..chunks {
            for b in chunk.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            sum.update(&chunk);
            stream
                .write_all(&chunk)
                .map_err(|e| format!("sending chunk {i}: {e}"))?;
            std::thread::sleep(pause);
        }
        Ok((sum.0, (chunks as u64) << 16))
    })();
    let received = receiver
        .join()
        .map_err(|_| "the receiver panicked".to_string())?;
    let (sent, received) = (sent?, received?);
    if sent != received {
        return Err(format!(
            "sent {} bytes (checksum {:x}), received {} (checksum {:x})",
            sent.1, sent.0, received.1, received.0
        ));
    }
    Ok(sent.1)
}

/// One iperf3 measurement, Gbit/s received: starts a one-off server with `server()` bound to
/// `ip`, then runs the client `client()` against it for `seconds` with `streams` parallel streams
/// (retrying while the server starts). Used by the overlay and hardening benchmarks.
pub fn iperf(
    server: &dyn Fn() -> Command,
    client: &dyn Fn() -> Command,
    ip: Ipv4Addr,
    streams: u32,
    seconds: u32,
) -> Result<f64, String> {
    iperf_run(server, client, ip, streams, seconds).map(|run| run.gbps)
}

/// What one iperf3 TCP run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfRun {
    /// Received, Gbit/s.
    pub gbps: f64,
    /// TCP segments the senders retransmitted.
    pub retransmits: u64,
}

/// [`iperf`], with the senders' retransmits.
pub fn iperf_run(
    server: &dyn Fn() -> Command,
    client: &dyn Fn() -> Command,
    ip: Ipv4Addr,
    streams: u32,
    seconds: u32,
) -> Result<IperfRun, String> {
    let mut server = server()
        .args(["-s", "-1", "-B"])
        .arg(ip.to_string())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the iperf3 server (cargo xtask setup installs it): {e}"))?;
    let mut result = None;
    let waited = wait_until("iperf3 to connect", Duration::from_secs(10), || {
        let out = client()
            .args(["-c", &ip.to_string(), "-J"])
            .args(["-t", &seconds.to_string(), "-P", &streams.to_string()])
            .output()
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            result = Some(IperfRun {
                gbps: bps / 1e9,
                retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            });
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(false)
    });
    let _ = server.kill();
    let _ = server.wait();
    waited?;
    result.ok_or_else(|| "iperf3 gave no figure".to_owned())
}

/// The kernel's protocol counters in the text of `/proc/net/netstat` and `/proc/net/snmp`
/// (each group a line of names, then a line of values), as `Group.Name` (`Udp.RcvbufErrors`).
pub fn kernel_counters(text: &str) -> std::collections::BTreeMap<String, i64> {
    let lines: Vec<&str> = text.lines().collect();
    let mut all = std::collections::BTreeMap::new();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((group, names)), Some((_, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            all.insert(format!("{group}.{n}"), v.parse().unwrap_or(0));
        }
    }
    all
}

/// Where a benchmark writes its figures: `$SHOAL_BENCH_OUT`, else `target/bench/<suite>.json`.
pub fn bench_output(suite: &str) -> PathBuf {
    std::env::var_os("SHOAL_BENCH_OUT").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/bench")
                .join(format!("{suite}.json"))
        },
        PathBuf::from,
    )
}

/// The last line of `output` that is a JSON object (the load generators' report), or null.
pub fn last_json(output: &[u8]) -> Value {
    let text = String::from_utf8_lossy(output);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("{}");
    serde_json::from_str(line).unwrap_or(Value::Null)
}

/// The median of `values` (the upper one of an even count); panics on none.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Writes a benchmark's figures (a flat object: metric name -> number) to `path`.
pub fn write_figures(
    path: &std::path::Path,
    figures: &serde_json::Map<String, Value>,
) -> Result<(), LabError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
    }
    let text = serde_json::to_string_pretty(&Value::Object(figures.clone())).expect("JSON");
    std::fs::write(path, text).map_err(io_error(format!("writing {}", path.display())))
}

#[cfg(test)]
mod counter_tests {
    use super::kernel_counters;

    #[test]
    fn kernel_counters_pair_each_name_with_its_value_by_group() {
        let text = "TcpExt: SyncookiesSent TCPDSACKRecvSegs\nTcpExt: 0 96\n\
                    Udp: InDatagrams RcvbufErrors\nUdp: 12 -3\n";
        let all = kernel_counters(text);
        assert_eq!(all["TcpExt.TCPDSACKRecvSegs"], 96);
        assert_eq!(all["Udp.RcvbufErrors"], -3);
        assert_eq!(all.len(), 4);
    }
}
