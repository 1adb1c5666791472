//! Building, using and tearing down a lab (see the crate docs for the topology).

use std::{
    fmt,
    fs::{self, File},
    io::{self, Read, Write as _},
    net::Ipv4Addr,
    os::unix::{net::UnixStream, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use nix::{
    errno::Errno,
    sys::signal::{Signal, kill},
    unistd::{Pid, Uid},
};
use serde::{Deserialize, Serialize};

use crate::error::{LabError, binary, io_error};
use crate::{Netns, create_mount_ns, in_host, remove_mount_ns, wait_until};

/// Where labs keep their state: one directory per lab, `shoal<ID>/`.
const STATE_ROOT: &str = "/tmp/shoal-lab";
/// The prefix of every name a lab creates.
const PREFIX: &str = "shoal";
/// Lab IDs: the third octet of the lab's subnets.
const IDS: std::ops::RangeInclusive<u8> = 1..=250;
/// The record of a lab inside its directory.
const RECORD: &str = "lab.json";
/// A node's public (control) interface, and its data-path interface.
const PUBLIC_IF: &str = "eth0";
const DATA_IF: &str = "eth1";

/// How many nodes, and whether the lab outlives the process that built it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// Node namespaces (1-239), named `n1`..`nN`.
    pub nodes: usize,
    /// A persistent lab is not removed on drop nor swept: `cargo xtask lab down` removes it.
    pub persistent: bool,
    /// What the lab is for ("test", "lab", "demo"), shown by `lab status`.
    pub purpose: String,
}

impl LabSpec {
    /// A test lab of `nodes` nodes, removed when dropped.
    pub fn nodes(nodes: usize) -> Self {
        Self {
            nodes,
            persistent: false,
            purpose: "test".into(),
        }
    }
}

/// A node or the client: a network namespace with its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// `n1`..`nN`, or `client`.
    pub name: String,
    /// Its network namespace, `shoal<ID>-<name>`.
    pub netns: String,
    /// Its address on the public/control network (interface `eth0`).
    pub public_ip: Ipv4Addr,
    /// Its address on the data network (interface `eth1`); the client has none.
    pub data_ip: Option<Ipv4Addr>,
    /// A node's own mount namespace (see [`crate::create_mount_ns`]): what its daemon mounts
    /// (network namespaces) outlives the daemon, as on a real host.
    #[serde(default)]
    pub mount_ns: Option<PathBuf>,
}

impl Host {
    /// The public/control interface's name inside the namespace.
    pub fn public_if(&self) -> &'static str {
        PUBLIC_IF
    }

    /// The data interface's name inside the namespace (nodes only).
    pub fn data_if(&self) -> &'static str {
        DATA_IF
    }

    /// A command that runs `program` in this host's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command, LabError> {
        in_host(&self.netns, self.mount_ns.as_deref(), program)
            .map_err(io_error(format!("entering {}", self.netns)))
    }
}

/// What a lab is, as written to `lab.json` when it is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    id: u8,
    prefix: String,
    persistent: bool,
    purpose: String,
    /// The process that built it and the boot it ran in: a test lab whose owner is gone is an
    /// orphan.
    owner_pid: u32,
    boot_id: String,
    switch: String,
    nodes: Vec<Host>,
    client: Host,
}

impl Record {
    fn namespaces(&self) -> Vec<String> {
        let mut all: Vec<String> = self.nodes.iter().map(|n| n.netns.clone()).collect();
        all.push(self.client.netns.clone());
        all.push(self.switch.clone());
        all
    }

    fn read(dir: &Path) -> Result<Self, LabError> {
        let path = dir.join(RECORD);
        let text = fs::read_to_string(&path).map_err(|e| LabError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| LabError::Record {
            path,
            reason: e.to_string(),
        })
    }

    fn owner_alive(&self) -> bool {
        boot_id() == self.boot_id
            && !matches!(
                kill(Pid::from_raw(self.owner_pid as i32), None),
                Err(Errno::ESRCH)
            )
    }
}

/// A lab's state as `cargo xtask lab status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabStatus {
    /// `shoal<ID>`.
    pub prefix: String,
    /// Its state directory.
    pub dir: PathBuf,
    /// "test", "lab", "demo"...
    pub purpose: String,
    /// Kept until `lab down`.
    pub persistent: bool,
    /// Whether the process that built it still runs.
    pub owner_alive: bool,
    /// Its nodes, then the client.
    pub hosts: Vec<Host>,
    /// Processes running in its namespaces.
    pub processes: usize,
    /// Namespaces of its record that are missing.
    pub missing_namespaces: Vec<String>,
}

impl fmt::Display for LabStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lifetime = if self.persistent {
            "persistent".to_string()
        } else if self.owner_alive {
            "owned by a running process".to_string()
        } else {
            "orphaned (owner gone)".to_string()
        };
        writeln!(
            f,
            "{} ({}, {lifetime}), {} processes, state in {}",
            self.prefix,
            self.purpose,
            self.processes,
            self.dir.display()
        )?;
        for host in &self.hosts {
            let data = host
                .data_ip
                .map(|ip| format!("  data {ip}"))
                .unwrap_or_default();
            writeln!(
                f,
                "  {:<7} netns {:<14} public {}{data}",
                host.name, host.netns, host.public_ip
            )?;
        }
        if !self.missing_namespaces.is_empty() {
            writeln!(
                f,
                "  missing namespaces: {}",
                self.missing_namespaces.join(", ")
            )?;
        }
        Ok(())
    }
}

/// A running lab. Dropping a non-persistent lab tears it down.
#[derive(Debug)]
pub struct Lab {
    record: Record,
    dir: PathBuf,
    children: Vec<Child>,
    torn_down: bool,
    /// Flags every `shoald` of the lab is started with (see [`Lab::set_shoald_args`]).
    shoald_args: Vec<String>,
}

impl Lab {
    /// Builds a lab: claims a free ID, creates the namespaces, the two switches and the links,
    /// and addresses every host. Sweeps orphaned test labs first. All of it happens under the
    /// labs' lock, so a concurrent sweep never sees a lab half-built.
    pub fn up(spec: LabSpec) -> Result<Self, LabError> {
        if !Uid::effective().is_root() {
            return Err(LabError::NotRoot);
        }
        if !(1..=239).contains(&spec.nodes) {
            return Err(LabError::Nodes(spec.nodes));
        }
        let _lock = LabsLock::take()?;
        remove_labs(|record| !record.persistent && !record.owner_alive())?;
        let (id, dir) = claim_id()?;
        let prefix = format!("{PREFIX}{id}");
        let host = |name: &str, index: u8, data: bool| Host {
            name: name.to_string(),
            netns: format!("{prefix}-{name}"),
            public_ip: Ipv4Addr::new(172, 20, id, index),
            data_ip: data.then(|| Ipv4Addr::new(172, 21, id, index)),
            mount_ns: data.then(|| dir.join(format!("{name}.mnt"))),
        };
        let record = Record {
            id,
            prefix: prefix.clone(),
            persistent: spec.persistent,
            purpose: spec.purpose,
            owner_pid: std::process::id(),
            boot_id: boot_id(),
            switch: format!("{prefix}-sw"),
            nodes: (1..=spec.nodes)
                .map(|i| host(&format!("n{i}"), 10 + i as u8, true))
                .collect(),
            client: host("client", 2, false),
        };
        let mut lab = Self {
            record,
            dir,
            children: Vec::new(),
            torn_down: false,
            // The lab's tasks are host commands unless a test chooses docker.
            shoald_args: vec!["--executor".to_owned(), "exec".to_owned()],
        };
        let json = serde_json::to_string_pretty(&lab.record).expect("a record serialises");
        let built = fs::write(lab.dir.join(RECORD), json)
            .map_err(io_error("writing the lab record"))
            .and_then(|()| lab.build());
        if let Err(e) = built {
            // Persistent or not, a lab that failed to come up is removed.
            lab.torn_down = true;
            let _ = teardown(&lab.record, &lab.dir, Vec::new());
            return Err(e);
        }
        Ok(lab)
    }

    fn build(&self) -> Result<(), LabError> {
        let r = &self.record;
        // Leftovers of a lab that had this ID and died before removing its namespaces.
        for ns in r.namespaces() {
            remove_netns(&ns)?;
        }
        let mut root = String::new();
        for ns in r.namespaces().iter().rev() {
            root += &format!("netns add {ns}\n");
        }
        ip_batch(None, &root)?;

        let mut switch = String::from(
            "link set lo up\n\
             link add br-pub type bridge\n\
             link add br-data type bridge\n\
             link set br-pub up\n\
             link set br-data up\n",
        );
        for node in &r.nodes {
            for (port, bridge, inside) in [("p", "br-pub", PUBLIC_IF), ("d", "br-data", DATA_IF)] {
                let port = format!("{port}-{}", node.name);
                switch += &format!(
                    "link add {port} type veth peer name {inside} netns {ns}\n\
                     link set {port} master {bridge} up\n",
                    ns = node.netns
                );
            }
        }
        switch += &format!(
            "link add p-client type veth peer name {PUBLIC_IF} netns {}\n\
             link set p-client master br-pub up\n",
            r.client.netns
        );
        ip_batch(Some(&r.switch), &switch)?;

        for host in r.nodes.iter().chain([&r.client]) {
            let mut inside = format!(
                "link set lo up\n\
                 addr add {}/24 dev {PUBLIC_IF}\n\
                 link set {PUBLIC_IF} up\n",
                host.public_ip
            );
            if let Some(data_ip) = host.data_ip {
                inside += &format!(
                    "addr add {data_ip}/24 dev {DATA_IF}\n\
                     link set {DATA_IF} up\n"
                );
            }
            ip_batch(Some(&host.netns), &inside)?;
        }
        for node in &r.nodes {
            let file = node.mount_ns.as_deref().expect("nodes have one");
            File::create(file).map_err(io_error(format!("creating {}", file.display())))?;
            create_mount_ns(&node.netns, file).map_err(io_error(format!("node {}", node.name)))?;
        }
        Ok(())
    }

    /// `shoal<ID>`: the prefix of everything this lab creates.
    pub fn prefix(&self) -> &str {
        &self.record.prefix
    }

    /// The lab's ID (1-250), the third octet of its subnets.
    pub fn id(&self) -> u8 {
        self.record.id
    }

    /// The lab's state directory (node data roots, sockets, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The nodes, `n1`..`nN`.
    pub fn nodes(&self) -> &[Host] {
        &self.record.nodes
    }

    /// The client (on the public network only).
    pub fn client(&self) -> &Host {
        &self.record.client
    }

    /// Every namespace of the lab: nodes, client, then the switch.
    pub fn namespaces(&self) -> Vec<String> {
        self.record.namespaces()
    }

    /// The processes running in the lab's namespaces.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.record.namespaces())
    }

    /// A host's own directory in the lab (its daemon's data root, socket and log live here).
    pub fn host_dir(&self, host: &Host) -> PathBuf {
        self.dir.join(&host.name)
    }

    /// The socket of the `shoald` started by [`Lab::spawn_shoald`] on `host`.
    pub fn socket(&self, host: &Host) -> PathBuf {
        self.host_dir(host).join("shoal.sock")
    }

    /// Runs `program args` in `host`'s namespace to completion.
    pub fn run(&self, host: &Host, program: &str, args: &[&str]) -> Result<Output, LabError> {
        let mut command = host.command(program)?;
        command.args(args);
        command
            .output()
            .map_err(io_error(format!("running {program} in {}", host.netns)))
    }

    /// Starts `command` (built with [`Host::command`]) in its own process group; the lab stops it
    /// when it is torn down.
    pub fn spawn(&mut self, mut command: Command) -> Result<u32, LabError> {
        command.process_group(0);
        let child = command
            .spawn()
            .map_err(io_error(format!("starting {:?}", command.get_program())))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Sets the flags of every `shoald` started from now on; `--executor exec` goes with them
    /// unless they name an executor (e.g. `--executor docker`).
    pub fn set_shoald_args(&mut self, args: &[&str]) {
        self.shoald_args = args.iter().map(|a| (*a).to_owned()).collect();
        if !args.contains(&"--executor") {
            self.shoald_args
                .extend(["--executor".to_owned(), "exec".to_owned()]);
        }
    }

    /// Starts `shoald` in every node, as [`Lab::spawn_shoald`] does.
    pub fn spawn_shoald_all(&mut self) -> Result<(), LabError> {
        for node in self.nodes().to_vec() {
            self.spawn_shoald(&node)?;
        }
        Ok(())
    }

    /// Starts `shoald` in `host`'s namespace with its own data root, socket and log under
    /// [`Lab::host_dir`], and waits until it accepts connections.
    pub fn spawn_shoald(&mut self, host: &Host) -> Result<u32, LabError> {
        let dir = self.host_dir(host);
        fs::create_dir_all(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
        let log_path = dir.join("shoald.log");
        let log = File::create(&log_path)
            .map_err(io_error(format!("creating {}", log_path.display())))?;
        let socket = self.socket(host);
        let mut command = host.command(binary("shoald")?)?;
        command
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--hostname", &host.name])
            .args(&self.shoald_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_error("duplicating the log"))?)
            .stderr(log);
        let pid = self.spawn(command)?;
        let child = self.children.last_mut().expect("just spawned");
        wait_until(
            &format!("shoald on {} to accept connections", host.name),
            Duration::from_secs(20),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    return Err(format!("shoald exited ({status}): {log}"));
                }
                Ok(UnixStream::connect(&socket).is_ok())
            },
        )
        .map_err(LabError::Timeout)?;
        Ok(pid)
    }

    /// The lines of `host`'s `shoald` log (since it was last started) where Shoal reports an
    /// error (openraft's own lines are its business: it logs every failed RPC as an error).
    pub fn daemon_errors(&self, host: &Host) -> Vec<String> {
        fs::read_to_string(self.host_dir(host).join("shoald.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" ERROR shoal"))
            .map(str::to_owned)
            .collect()
    }

    /// The PID of the `shoald` started on `host`.
    pub fn shoald_pid(&self, host: &Host) -> Result<i32, LabError> {
        let marker = format!("--hostname\0{}\0", host.name);
        // A daemon stopped earlier and not reaped yet can still show its command line while it
        // exits: the live one is the newest that is not a zombie.
        let stat = |p: i32| fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let live = |p: i32| {
            let stat = stat(p);
            let state = stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3));
            !matches!(state, Some("Z" | "X") | None)
        };
        let started = |p: i32| {
            let stat = stat(p);
            stat.rfind(')')
                .and_then(|i| stat.get(i + 2..))
                .and_then(|rest| rest.split(' ').nth(19))
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0)
        };
        self.pids()
            .into_iter()
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.contains("shoald") && format!("{c}\0").contains(&marker))
                    && live(*p)
            })
            .max_by_key(|p| started(*p))
            .ok_or_else(|| LabError::Io {
                what: format!("finding shoald on {}", host.name),
                source: io::Error::from(io::ErrorKind::NotFound),
            })
    }

    /// The resident memory of `host`'s `shoald`, in MiB.
    pub fn shoald_rss_mib(&self, host: &Host) -> Result<f64, LabError> {
        let pid = self.shoald_pid(host)?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(io_error(format!("reading /proc/{pid}/status")))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                io_error(format!("reading VmRSS from /proc/{pid}/status"))(io::Error::other(
                    "no VmRSS line",
                ))
            })?;
        Ok(kib / 1024.0)
    }

    /// SIGKILLs `host`'s `shoald` and waits until its data root is free (its last thread gone)
    /// and its socket removed, so [`Lab::spawn_shoald`] can start a new one.
    pub fn kill_shoald(&self, host: &Host) -> Result<(), LabError> {
        self.signal_shoald(host, Signal::SIGKILL)
    }

    /// Asks `host`'s `shoald` to stop (SIGTERM), as a service manager does, and waits (up to
    /// 20 s) until it has, as [`Lab::kill_shoald`] does.
    pub fn stop_shoald(&self, host: &Host) -> Result<(), LabError> {
        self.signal_shoald(host, Signal::SIGTERM)
    }

    fn signal_shoald(&self, host: &Host, signal: Signal) -> Result<(), LabError> {
        let pid = self.shoald_pid(host)?;
        let _ = kill(Pid::from_raw(pid), signal);
        let pid_path = self.host_dir(host).join("data/shoald.pid");
        let pid_file =
            File::open(&pid_path).map_err(io_error(format!("opening {}", pid_path.display())))?;
        wait_until(
            &format!("shoald on {} to exit", host.name),
            Duration::from_secs(20),
            || Ok(pid_file.try_lock().is_ok()),
        )
        .map_err(|e| {
            // What the daemon was doing, for whoever reads the failure.
            let log =
                fs::read_to_string(self.host_dir(host).join("shoald.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            LabError::Io {
                what: format!(
                    "{e}\n--- the last lines of its log ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ),
                source: io::Error::from(io::ErrorKind::TimedOut),
            }
        })?;
        let _ = pid_file.unlock();
        let _ = fs::remove_file(self.socket(host));
        Ok(())
    }

    /// The namespace of the switches (bridges `br-pub` and `br-data`; node `n`'s ports are
    /// `p-<n>` and `d-<n>`).
    pub fn switch(&self) -> &str {
        &self.record.switch
    }

    /// Makes the lab's links behave as physical wires and NICs do: both of
    /// [`Lab::gro_on_switch_ports`] and [`Lab::checksums_on_the_wire`]. The lab's links are plain
    /// veth pairs by default, as a new user's rig (nodes run as containers) is; this is the
    /// opt-in "wire-like" variant the benchmarks use, under which the routing mesh takes its
    /// native XDP path.
    pub fn wire_like_nics(&self) -> Result<(), LabError> {
        self.gro_on_switch_ports()?;
        self.checksums_on_the_wire()
    }

    /// The links a benchmark measures on: wire-like ([`Lab::wire_like_nics`]) unless
    /// `SHOAL_BENCH_LINKS=plain` keeps the plain veth pairs of a new user's rig. Whether they
    /// are wire-like; an unknown value is an error, before any link changed.
    pub fn bench_links(&self) -> Result<bool, LabError> {
        match std::env::var("SHOAL_BENCH_LINKS").as_deref() {
            Err(_) | Ok("wire-like") => self.wire_like_nics().map(|()| true),
            Ok("plain") => Ok(false),
            Ok(other) => Err(LabError::BenchLinks(other.to_owned())),
        }
    }

    /// GRO on the switch's ports: the nodes' veths then take native XDP redirects (their peer
    /// runs NAPI), as a physical NIC with XDP support does.
    pub fn gro_on_switch_ports(&self) -> Result<(), LabError> {
        for node in self.nodes() {
            for port in [format!("p-{}", node.name), format!("d-{}", node.name)] {
                let mut ethtool = crate::in_netns(self.switch(), "ethtool")
                    .map_err(io_error(format!("entering {}", self.switch())))?;
                run_checked(ethtool.args(["-K", &port, "gro", "on"]))?;
            }
        }
        Ok(())
    }

    /// Transmit checksum offload off on every host's public interface: checksums are complete
    /// on the wire, as a physical NIC delivers them (a veth otherwise passes on the checksums
    /// its sender left to offload).
    pub fn checksums_on_the_wire(&self) -> Result<(), LabError> {
        let hosts: Vec<_> = self
            .nodes()
            .iter()
            .chain([self.client()])
            .cloned()
            .collect();
        for host in hosts {
            run_checked(
                host.command("ethtool")?
                    .args(["-K", host.public_if(), "tx", "off"]),
            )?;
        }
        Ok(())
    }

    /// Runs `shoal -H <host's socket> args` in `host`'s namespace.
    pub fn shoal(&self, host: &Host, args: &[&str]) -> Result<Output, LabError> {
        self.shoal_command(host, args)?
            .output()
            .map_err(io_error(format!("running shoal in {}", host.netns)))
    }

    /// [`Lab::shoal`], killed when it has not finished within `limit`: a command that may wait
    /// on the cluster (`swarm ca --rotate` waits for every node) fails the test with what it
    /// printed so far, instead of hanging it.
    pub fn shoal_within(
        &self,
        host: &Host,
        args: &[&str],
        limit: Duration,
    ) -> Result<Output, LabError> {
        let what = format!("running shoal {} in {}", args.join(" "), host.netns);
        let mut child = self
            .shoal_command(host, args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_error(what.clone()))?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let deadline = crate::wait::Deadline::after(limit);
        let finished = loop {
            if let Some(status) = child.try_wait().map_err(io_error(what.clone()))? {
                break Some(status);
            }
            if deadline.passed() {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (stdout, stderr) = (
            stdout.join().unwrap_or_default(),
            stderr.join().unwrap_or_default(),
        );
        match finished {
            Some(status) => Ok(Output {
                status,
                stdout,
                stderr,
            }),
            None => Err(LabError::Command {
                command: format!("shoal {}", args.join(" ")),
                status: format!("killed: not finished within {limit:?}"),
                stderr: format!(
                    "stdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                ),
            }),
        }
    }

    /// The `shoal` command [`Lab::shoal`] runs, to spawn (one that follows, say).
    pub fn shoal_command(&self, host: &Host, args: &[&str]) -> Result<Command, LabError> {
        let mut command = host.command(binary("shoal")?)?;
        command
            .arg("-H")
            .arg(format!("unix://{}", self.socket(host).display()))
            .args(args);
        Ok(command)
    }

    /// Tears the lab down and reports anything left behind.
    pub fn down(mut self) -> Result<(), LabError> {
        self.torn_down = true;
        let children = std::mem::take(&mut self.children);
        teardown(&self.record, &self.dir, children)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.torn_down || self.record.persistent {
            return;
        }
        let children = std::mem::take(&mut self.children);
        if let Err(e) = teardown(&self.record, &self.dir, children) {
            eprintln!("lab teardown: {e}");
        }
    }
}

/// Claims a free ID by creating its state directory (atomic: `mkdir` fails if it exists).
fn claim_id() -> Result<(u8, PathBuf), LabError> {
    let ids: Vec<u8> = IDS.collect();
    let start = (std::process::id() as usize).wrapping_mul(7919) % ids.len();
    for offset in 0..ids.len() {
        let id = ids[(start + offset) % ids.len()];
        let dir = Path::new(STATE_ROOT).join(format!("{PREFIX}{id}"));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(format!("creating {}", dir.display()))(e)),
        }
    }
    Err(LabError::NoFreeId)
}

/// Tears a lab down: [`clear_namespaces`], then its state directory.
fn teardown(record: &Record, dir: &Path, children: Vec<Child>) -> Result<(), LabError> {
    // The lab's own namespaces and any a test made with its prefix (tasks).
    let mut namespaces = record.namespaces();
    for (prefix, ns) in lab_namespaces() {
        if prefix == record.prefix && !namespaces.contains(&ns) {
            namespaces.push(ns);
        }
    }
    let mount_ns: Vec<PathBuf> = record
        .nodes
        .iter()
        .filter_map(|n| n.mount_ns.clone())
        .collect();
    let data_roots: Vec<PathBuf> = record
        .nodes
        .iter()
        .map(|n| dir.join(&n.name).join("data"))
        .collect();
    let mut errors = clear_namespaces(&namespaces, &mount_ns, &data_roots, children);
    // Containers of the `docker` executor live in the engine, outside the lab's namespaces.
    errors.extend(crate::docker::remove_containers(&data_roots));
    // With their processes gone, the nodes' mount namespaces take the daemons' mounts with them.
    for file in record.nodes.iter().filter_map(|n| n.mount_ns.as_deref()) {
        if let Err(e) = remove_mount_ns(file) {
            errors.push(e.to_string());
        }
    }
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        errors.push(format!("removing {}: {e}", dir.display()));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(LabError::Leftovers {
            prefix: record.prefix.clone(),
            leftovers: errors.join("; "),
        })
    }
}

/// Stops every process in `namespaces` (SIGTERM, then SIGKILL), reaps `children`, deletes the
/// namespaces (their links go with them) and returns what could not be removed.
fn clear_namespaces(
    namespaces: &[String],
    mount_ns: &[PathBuf],
    data_roots: &[PathBuf],
    mut children: Vec<Child>,
) -> Vec<String> {
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let running: Vec<i32> = pids_in(namespaces)
            .into_iter()
            .chain(pids_in_mount_ns(mount_ns))
            .chain(pids_of_exec_tasks(data_roots))
            .chain(children.iter().map(|c| c.id() as i32))
            .collect();
        for pid in &running {
            let _ = kill(Pid::from_raw(*pid), signal);
        }
        let gone = wait_until(
            "the lab's processes to exit",
            Duration::from_secs(5),
            || {
                children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
                Ok(children.is_empty()
                    && pids_in(namespaces).is_empty()
                    && pids_in_mount_ns(mount_ns).is_empty()
                    && pids_of_exec_tasks(data_roots).is_empty())
            },
        );
        if gone.is_ok() {
            break;
        }
    }
    for mut child in children {
        let _ = child.wait();
    }
    let mut errors = Vec::new();
    // A process that survived SIGKILL would keep its namespace (and its links) alive.
    let survivors = pids_in(namespaces);
    if !survivors.is_empty() {
        errors.push(format!("processes {survivors:?} survived SIGKILL"));
    }
    for ns in namespaces {
        if let Err(e) = remove_netns(ns) {
            errors.push(e.to_string());
        }
    }
    errors.extend(remove_task_cgroups(data_roots));
    errors
}

/// The cgroup hierarchies exec tasks' cgroups (`shoal-<task>`) are made in: v2's root and the
/// v1 controllers' roots.
pub const CGROUP_ROOTS: [&str; 4] = [
    "/sys/fs/cgroup",
    "/sys/fs/cgroup/memory",
    "/sys/fs/cgroup/cpu",
    "/sys/fs/cgroup/pids",
];

/// Removes the cgroups of the lab's exec tasks (those with a namespace or a log under its data
/// roots): a node's `shoald` killed, or stopped together with its tasks, leaves them behind.
fn remove_task_cgroups(data_roots: &[PathBuf]) -> Vec<String> {
    let mut errors = Vec::new();
    let tasks: std::collections::BTreeSet<String> = data_roots
        .iter()
        .flat_map(|root| ["tasks/netns", "tasks/logs"].map(|dir| root.join(dir)))
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    for task in tasks {
        for root in CGROUP_ROOTS {
            let dir = Path::new(root).join(format!("shoal-{task}"));
            match fs::remove_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    errors.push(format!("removing cgroup {}: {e}", dir.display()));
                }
                _ => {}
            }
        }
    }
    errors
}

/// Deletes a named namespace if it exists (its links go with it once its processes are gone).
fn remove_netns(name: &str) -> Result<(), LabError> {
    let netns = Netns::named(name);
    if !netns.exists() {
        return Ok(());
    }
    match run_checked(Command::new("ip").args(["netns", "del", name])) {
        // Another process (a concurrent sweep) removed it first.
        Err(_) if !netns.exists() => Ok(()),
        result => result,
    }
}

/// Runs `ip -batch -` (in `netns` when given) with `commands` on stdin.
pub(crate) fn ip_batch(netns: Option<&str>, commands: &str) -> Result<(), LabError> {
    let mut command = Command::new("ip");
    if let Some(ns) = netns {
        command.args(["-n", ns]);
    }
    command
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(io_error("starting ip"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(commands.as_bytes())
        .map_err(io_error("writing to ip -batch"))?;
    let output = child
        .wait_with_output()
        .map_err(io_error("waiting for ip"))?;
    succeeded(format!("{command:?} <<< {commands:?}"), &output)
}

pub(crate) fn run_checked(command: &mut Command) -> Result<(), LabError> {
    let output = command
        .output()
        .map_err(io_error(format!("running {command:?}")))?;
    succeeded(format!("{command:?}"), &output)
}

/// A command's standard output then its standard error, as text (for assertion messages).
pub fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn succeeded(command: String, output: &Output) -> Result<(), LabError> {
    if output.status.success() {
        return Ok(());
    }
    Err(LabError::Command {
        command,
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().into(),
    })
}

/// The processes in any of `namespaces`.
fn pids_in(namespaces: &[String]) -> Vec<i32> {
    namespaces
        .iter()
        .flat_map(|ns| Netns::named(ns.as_str()).pids())
        .collect()
}

/// The processes in the nodes' mount namespaces: their daemons, and the tasks those started
/// (which run in network namespaces of their own).
fn pids_in_mount_ns(files: &[PathBuf]) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let wanted: Vec<(u64, u64)> = files
        .iter()
        .filter_map(|f| fs::metadata(f).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let me = std::process::id() as i32;
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let mnt = fs::metadata(format!("/proc/{pid}/ns/mnt")).ok()?;
            (wanted.contains(&(mnt.dev(), mnt.ino())) && pid != me).then_some(pid)
        })
        .collect()
}

/// The processes of the nodes' `exec` tasks. Each runs in a mount namespace of its own (copied
/// from its node's, so not found by [`pids_in_mount_ns`]) where its network namespace is mounted
/// under `<data root>/tasks/netns/`: a process whose network namespace is one mounted there, as
/// its own root shows it, is a task of these nodes.
fn pids_of_exec_tasks(data_roots: &[PathBuf]) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    if data_roots.is_empty() {
        return Vec::new();
    }
    let host_mnt = fs::metadata("/proc/self/ns/mnt")
        .map(|m| (m.dev(), m.ino()))
        .ok();
    let me = std::process::id() as i32;
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let mnt = fs::metadata(format!("/proc/{pid}/ns/mnt")).ok()?;
            if pid == me || Some((mnt.dev(), mnt.ino())) == host_mnt {
                return None;
            }
            let net = fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
            let net = (net.dev(), net.ino());
            let root = PathBuf::from(format!("/proc/{pid}/root"));
            data_roots
                .iter()
                .filter_map(|data| {
                    let relative = data.strip_prefix("/").unwrap_or(data);
                    fs::read_dir(root.join(relative).join("tasks/netns")).ok()
                })
                .flatten()
                .filter_map(|e| e.ok()?.metadata().ok())
                .any(|m| (m.dev(), m.ino()) == net)
                .then_some(pid)
        })
        .collect()
}

/// An exclusive lock on the labs' state root, held while a lab is claimed and built and while
/// labs are swept or removed: a sweep never sees a lab half-built.
struct LabsLock(#[expect(dead_code, reason = "held for its lock")] File);

impl LabsLock {
    fn take() -> Result<Self, LabError> {
        fs::create_dir_all(STATE_ROOT).map_err(io_error(format!("creating {STATE_ROOT}")))?;
        let path = Path::new(STATE_ROOT).join(".lock");
        let file = File::create(&path).map_err(io_error(format!("opening {}", path.display())))?;
        file.lock()
            .map_err(io_error(format!("locking {}", path.display())))?;
        Ok(Self(file))
    }
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The lab directories (`shoal<ID>`) under the state root.
fn lab_dirs() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(STATE_ROOT) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_lab_prefix)
        })
        .collect();
    dirs.sort();
    dirs
}

/// `shoal<digits>`.
fn is_lab_prefix(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// Namespaces named like a lab's (`shoal<digits>-...`), with the lab prefix they carry.
fn lab_namespaces() -> Vec<(String, String)> {
    Netns::list()
        .into_iter()
        .filter_map(|ns| {
            let (prefix, _) = ns.split_once('-')?;
            is_lab_prefix(prefix).then(|| (prefix.to_string(), ns.clone()))
        })
        .collect()
}

/// Every lab on the machine.
pub fn labs() -> Vec<LabStatus> {
    lab_dirs()
        .into_iter()
        .filter_map(|dir| {
            let record = Record::read(&dir).ok()?;
            let namespaces = record.namespaces();
            Some(LabStatus {
                prefix: record.prefix.clone(),
                purpose: record.purpose.clone(),
                persistent: record.persistent,
                owner_alive: record.owner_alive(),
                hosts: record
                    .nodes
                    .iter()
                    .chain([&record.client])
                    .cloned()
                    .collect(),
                processes: pids_in(&namespaces).len(),
                missing_namespaces: namespaces
                    .into_iter()
                    .filter(|ns| !Netns::named(ns.as_str()).exists())
                    .collect(),
                dir,
            })
        })
        .collect()
}

/// Removes test labs whose owner is gone (killed before it could drop its [`Lab`]), and lab
/// namespaces that belong to no lab directory. Returns the prefixes removed.
pub fn sweep_orphans() -> Result<Vec<String>, LabError> {
    let _lock = LabsLock::take()?;
    remove_labs(|record| !record.persistent && !record.owner_alive())
}

/// Removes every lab, persistent or not, and every namespace named like one. Returns the prefixes
/// removed.
pub fn down_all() -> Result<Vec<String>, LabError> {
    let _lock = LabsLock::take()?;
    remove_labs(|_| true)
}

/// Removes the labs whose record matches `doomed` (and unreadable records, and namespaces no
/// record claims). Called with the labs' lock held.
fn remove_labs(doomed: impl Fn(&Record) -> bool) -> Result<Vec<String>, LabError> {
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    let mut claimed = Vec::new();
    for dir in lab_dirs() {
        let prefix = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        match Record::read(&dir) {
            Ok(record) if doomed(&record) => {
                if let Err(e) = teardown(&record, &dir, Vec::new()) {
                    errors.push(e.to_string());
                }
                removed.push(prefix);
            }
            Ok(_) => claimed.push(prefix),
            // Claiming an ID and writing its record happen under the lock: a directory without a
            // readable record is what a crashed `Lab::up` left.
            Err(_) => {
                if let Err(e) = fs::remove_dir_all(&dir)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    errors.push(format!("removing {}: {e}", dir.display()));
                }
                removed.push(prefix);
            }
        }
    }
    // Namespaces no lab owns: stop what runs in them and delete them.
    let unclaimed: Vec<(String, String)> = lab_namespaces()
        .into_iter()
        .filter(|(prefix, _)| !claimed.contains(prefix))
        .collect();
    let namespaces: Vec<String> = unclaimed.iter().map(|(_, ns)| ns.clone()).collect();
    errors.extend(clear_namespaces(&namespaces, &[], &[], Vec::new()));
    for (prefix, _) in unclaimed {
        if !removed.contains(&prefix) {
            removed.push(prefix);
        }
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(LabError::Leftovers {
            prefix: removed.join(", "),
            leftovers: errors.join("; "),
        })
    }
}

/// Removes the lab with prefix `shoal<ID>` (or just `<ID>`), and returns its prefix.
pub fn down(prefix: &str) -> Result<String, LabError> {
    let prefix = if prefix.starts_with(PREFIX) {
        prefix.to_string()
    } else {
        format!("{PREFIX}{prefix}")
    };
    let dir = Path::new(STATE_ROOT).join(&prefix);
    let _lock = LabsLock::take()?;
    if !dir.is_dir() {
        return Err(LabError::NoSuchLab(prefix));
    }
    let record = Record::read(&dir)?;
    teardown(&record, &dir, Vec::new())?;
    Ok(prefix)
}

/// Reads a child's pipe to its end on a thread of its own (so the child never blocks on a full
/// pipe); what it read, from the join.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_prefixes_are_shoal_and_digits() {
        assert!(is_lab_prefix("shoal1"));
        assert!(is_lab_prefix("shoal250"));
        assert!(!is_lab_prefix("shoal"));
        assert!(!is_lab_prefix("shoalx"));
        assert!(!is_lab_prefix("shoal1a"));
        assert!(!is_lab_prefix("other1"));
    }

    #[test]
    fn a_record_lists_its_namespaces_switch_last() {
        let host = |name: &str| Host {
            name: name.into(),
            netns: format!("shoal9-{name}"),
            public_ip: Ipv4Addr::new(172, 20, 9, 11),
            data_ip: None,
            mount_ns: None,
        };
        let record = Record {
            id: 9,
            prefix: "shoal9".into(),
            persistent: false,
            purpose: "test".into(),
            owner_pid: 1,
            boot_id: String::new(),
            switch: "shoal9-sw".into(),
            nodes: vec![host("n1"), host("n2")],
            client: host("client"),
        };
        assert_eq!(
            record.namespaces(),
            ["shoal9-n1", "shoal9-n2", "shoal9-client", "shoal9-sw"]
        );
        // A record from another boot is an orphan, whoever has the PID now.
        assert!(!record.owner_alive());
        // Of this boot: alive while its owner runs, an orphan once it has exited.
        let record = Record {
            owner_pid: std::process::id(),
            boot_id: boot_id(),
            ..record
        };
        assert!(record.owner_alive());
        let mut exited = Command::new("true").spawn().unwrap();
        exited.wait().unwrap();
        let record = Record {
            owner_pid: exited.id(),
            ..record
        };
        assert!(!record.owner_alive());
    }
}
