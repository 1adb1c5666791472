//! This node's membership in a swarm: `swarm init|join|leave`, the certificates and state it
//! keeps in `<data root>/swarm/`, the manager it runs when it is one, and its session with the
//! managers (heartbeats, and acting on a role change).
//!
//! ```text
//!   <data root>/swarm/state.json   node ID, cluster ID, role, addresses, known managers (written last)
//!   <data root>/swarm/certs/       node.crt, node.key (0600), ca.crt
//!   <data root>/swarm/raft/        the raft log and snapshots, sealed with the data key in
//!                                  raft/keys.json (managers; see shoal_control::keys)
//! ```
//!
//! A manager whose data key is sealed with the cluster's unlock key (autolock) starts *locked*:
//! it runs neither raft nor a session until `swarm unlock` gives the key.

use shoal_api::call::{Call, ClusterCall, ManagerCall};
use shoal_api::reason::Reason;
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_api::{
    proto::WireError,
    service::Resources,
    swarm::{
        ALREADY_IN_SWARM, InitArgs, JoinArgs, LocalSwarm, NOT_A_MANAGER, NOT_IN_SWARM,
        NodeDescription, NodeTlsInfo, Platform, Role,
    },
    v1::{
        self, ca_client::CaClient, control_client::ControlClient,
        dispatcher_client::DispatcherClient,
    },
};
use shoal_control::{
    addr::{self, DEFAULT_PORT, Interface},
    ca::{self, JoinToken},
    keys::{DataKey, DataKeys, KeyError, UnlockKey},
    limits,
    manager::{
        Manager, ManagerConfig,
        genesis::{GenesisArgs, genesis},
        protocol::{Forwarded, Heartbeat, HeartbeatReply, JoinReply, JoinRequest, Op, RenewReply},
        wire,
    },
    raft::RaftSettings,
    tls::{self, Credentials},
};
use tokio::{sync::Mutex, task::JoinHandle};
use tonic::{Request, Status};

use crate::NodeFacts;
use crate::tasks::{Worker, session};
use shoal_dataplane::overlay::Key;

/// The node's certificate set under `<data root>/swarm` (a symlink to the current set).
const CERTS: &str = "certs";

/// What a node reports of its certificate: the roots it trusts, its issuer, its expiry.
fn tls_info(credentials: &Credentials) -> NodeTlsInfo {
    let (subject, key) =
        ca::signer_of(&credentials.cert_pem, &credentials.ca_pem).unwrap_or_default();
    NodeTlsInfo {
        trust_root: credentials.ca_pem.clone(),
        cert_issuer_subject: subject,
        cert_issuer_public_key: key,
        cert_expiry: ca::CertFacts::of(&credentials.cert_pem)
            .map(|f| f.expiry())
            .unwrap_or_default(),
    }
}

/// Default VXLAN port (`--data-path-port`).
pub use limits::DEFAULT_DATA_PATH_PORT;
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// What a node keeps about its swarm membership.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    node_id: String,
    cluster_id: String,
    role: Role,
    advertise_addr: SocketAddr,
    listen_addr: SocketAddr,
    data_path_addr: IpAddr,
    managers: Vec<String>,
    raft_id: Option<u64>,
    heartbeat_ms: u64,
    #[serde(default)]
    data_path_port: u16,
}

struct Joined {
    saved: Saved,
    credentials: Credentials,
    manager: Option<Manager>,
    /// The heartbeat session, the assignment stream and the status reports.
    session: Vec<JoinHandle<()>>,
}

/// The node's swarm membership. Clones share it.
#[derive(Clone)]
pub struct SwarmNode {
    /// Wakes the renewal task before its time: the swarm's signing CA changed (a root
    /// rotation), or trust in a new root waits for a certificate under it.
    renew_now: Arc<tokio::sync::Notify>,
    dir: PathBuf,
    facts: NodeFacts,
    state: Arc<Mutex<Option<Joined>>>,
    /// The membership of a manager that restarted locked (autolock), until `swarm unlock`.
    locked: Arc<Mutex<Option<Saved>>>,
    worker: Worker,
}

impl std::fmt::Debug for SwarmNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmNode")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io_status(what: &str) -> impl FnOnce(std::io::Error) -> Status + '_ {
    move |e| Status::internal(format!("{what}: {e}"))
}

/// The node's interfaces and their addresses.
fn interfaces() -> Vec<Interface> {
    let mut found: Vec<Interface> = Vec::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return found;
    };
    for ifaddr in addrs {
        let ip = ifaddr.address.as_ref().and_then(|a| {
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        });
        let entry = match found.iter_mut().find(|i| i.name == ifaddr.interface_name) {
            Some(entry) => entry,
            None => {
                found.push(Interface {
                    name: ifaddr.interface_name.clone(),
                    addrs: Vec::new(),
                });
                found.last_mut().expect("just pushed")
            }
        };
        if let Some(ip) = ip {
            entry.addrs.push(ip);
        }
    }
    found
}

fn resolve(value: Option<&str>, flag: &'static str, port: u16) -> Result<SocketAddr, Status> {
    addr::resolve(value, &interfaces(), flag, port)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// `--listen-addr` (all addresses on the advertise port by default) and `--data-path-addr` (the
/// advertise address by default), as `init` and `join` take them.
fn listen_and_data_path(
    listen: Option<&str>,
    data_path: Option<&str>,
    advertise: SocketAddr,
) -> Result<(SocketAddr, IpAddr), Status> {
    let listen = match listen {
        None => SocketAddr::new(IpAddr::from([0, 0, 0, 0]), advertise.port()),
        Some(value) => resolve(Some(value), "listen-addr", DEFAULT_PORT)?,
    };
    let data_path = match data_path {
        None => advertise.ip(),
        Some(value) => resolve(Some(value), "data-path-addr", 0)?.ip(),
    };
    if let Some(problem) = limits::data_path_problem(&data_path.to_string()) {
        return Err(Status::invalid_argument(format!(
            "--data-path-addr: {problem}"
        )));
    }
    Ok((listen, data_path))
}

/// `--default-addr-pool` and `--default-addr-pool-mask-length` checked, and the ingress
/// network's subnet: the first subnet of the pools that no route of this host covers or lies
/// in (the ingress network must not shadow a network the host reaches).
fn address_pools(
    pools: &[String],
    mask_length: Option<u8>,
) -> Result<(Vec<String>, u32, ipnet::Ipv4Net), Status> {
    use shoal_control::allocator::{self, Allocator};
    let subnet_len = mask_length.unwrap_or(allocator::DEFAULT_SUBNET_LEN);
    let parsed = allocator::parse_pools(pools, subnet_len).map_err(Status::invalid_argument)?;
    let given = if parsed.is_empty() {
        if mask_length.is_some() {
            return Err(Status::invalid_argument(
                "--default-addr-pool-mask-length needs --default-addr-pool",
            ));
        }
        Allocator::default()
    } else {
        Allocator::new(parsed.clone(), subnet_len)
    };
    let routes = crate::tasks::way_out::host_routes(None);
    let ingress = given
        .free_subnet(|s| routes.iter().any(|r| allocator::overlaps(r, &s)))
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "no /{subnet_len} subnet of the address pool ({}) is free of this host's routes: give --default-addr-pool a range the host does not use",
                if parsed.is_empty() {
                    allocator::DEFAULT_POOL.to_owned()
                } else {
                    pools.join(", ")
                }
            ))
        })?;
    let size = if parsed.is_empty() {
        0
    } else {
        u32::from(subnet_len)
    };
    Ok((
        parsed.iter().map(ToString::to_string).collect(),
        size,
        ingress,
    ))
}

/// The local address the kernel would use to reach `remote`.
fn route_source(remote: SocketAddr) -> Option<IpAddr> {
    let socket = UdpSocket::bind(if remote.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .ok()?;
    socket.connect(remote).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    shoal_control::durable::write_durable(path, text.as_bytes(), crate::durable::FILE_MODE)
}

impl SwarmNode {
    /// The membership kept under `data_root`; call [`SwarmNode::restore`] to resume it.
    pub(crate) fn new(data_root: &Path, facts: NodeFacts, worker: Worker) -> Self {
        Self {
            dir: data_root.join("swarm"),
            facts,
            state: Arc::default(),
            locked: Arc::default(),
            renew_now: Arc::default(),
            worker,
        }
    }

    /// This node's WireGuard key: `<data root>/swarm/wireguard.key` (0600), made on first use.
    /// Only its public half leaves the node.
    fn wireguard_key(&self) -> std::io::Result<Key> {
        let path = self.dir.join("wireguard.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Key::generate()?;
                crate::durable::private_dir(&self.dir)?;
                write_private(&path, &key.to_string())?;
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }

    fn description(
        &self,
        data_path_addr: IpAddr,
        data_path_port: u16,
        credentials: Option<&Credentials>,
    ) -> NodeDescription {
        let tls_info = credentials.map_or_else(NodeTlsInfo::default, tls_info);
        NodeDescription {
            tls_info,
            hostname: self.facts.name.clone(),
            platform: Platform {
                architecture: self.facts.architecture.clone(),
                os: "linux".into(),
            },
            resources: Resources {
                nano_cpus: u64::from(self.facts.ncpu) * 1_000_000_000,
                memory_bytes: self.facts.mem_total,
                pids: 0,
            },
            data_path_addr: data_path_addr.to_string(),
            data_path_port,
            wireguard_public_key: match self.wireguard_key() {
                Ok(key) => key.public().to_string(),
                Err(e) => {
                    tracing::error!(error = %e, "no WireGuard key: encrypted networks will not reach this node");
                    String::new()
                }
            },
            executor: self.worker.executor().to_owned(),
            mesh_paths: self.worker.mesh_paths(),
        }
    }

    /// The node's worker (its executor and tasks).
    /// The node's name.
    pub(crate) fn node_name(&self) -> &str {
        &self.facts.name
    }

    /// The manager this node runs, if it is one and has started it.
    pub(crate) async fn manager(&self) -> Option<Manager> {
        self.state.lock().await.as_ref()?.manager.clone()
    }

    pub(crate) fn worker(&self) -> &Worker {
        &self.worker
    }

    /// Resumes the membership saved on disk: certificates, the manager (raft picks up from its
    /// log), and the session.
    pub async fn restore(&self) -> Result<(), String> {
        let state = self.dir.join("state.json");
        let saved: Saved = match std::fs::read(&state) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", state.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", state.display())),
        };
        if saved.role == Role::Manager && DataKeys::is_sealed(&self.dir.join("raft")) {
            tracing::warn!(node = %saved.node_id, "the swarm is locked: `shoal swarm unlock` (or `docker swarm unlock`) opens it");
            *self.locked.lock().await = Some(saved);
            return Ok(());
        }
        let (credentials, manager) = match (saved.role, saved.raft_id) {
            (Role::Manager, Some(raft_id)) => {
                let keys = self.data_keys(None).map_err(|e| e.message().to_owned())?;
                let credentials = self
                    .read_credentials(Some(keys.key()))
                    .map_err(|e| format!("reading the node's certificates: {e}"))?;
                let manager = self
                    .start_manager(&saved, &credentials, raft_id, keys)
                    .await
                    .map_err(|e| e.message().to_owned())?;
                (credentials, Some(manager))
            }
            _ => (
                self.read_credentials(None)
                    .map_err(|e| format!("reading the node's certificates: {e}"))?,
                None,
            ),
        };
        tracing::info!(node = %saved.node_id, role = %saved.role, "resuming swarm membership");
        let guard = self.state.lock().await;
        self.enter(guard, saved, credentials, manager).await;
        Ok(())
    }

    /// The node's certificate set; a key sealed under autolock is opened with `key` (the
    /// manager's data key).
    fn read_credentials(&self, key: Option<&DataKey>) -> std::io::Result<Credentials> {
        let certs = self.dir.join(CERTS);
        Ok(Credentials {
            cert_pem: std::fs::read_to_string(certs.join("node.crt"))?,
            key_pem: shoal_control::keys::read_key_file(&certs.join("node.key"), key)?,
            ca_pem: std::fs::read_to_string(certs.join("ca.crt"))?,
        })
    }

    /// The manager's data key in its raft directory (made if there is none yet); a sealed one
    /// needs `unlock`.
    fn data_keys(&self, unlock: Option<&UnlockKey>) -> Result<DataKeys, Status> {
        DataKeys::open(&self.dir.join("raft"), unlock).map_err(|e| match e {
            KeyError::InvalidKey | KeyError::Malformed(_) => {
                Status::invalid_argument(e.to_string())
            }
            KeyError::Locked => Status::failed_precondition(e.to_string()),
            e => Status::internal(e.to_string()),
        })
    }

    /// Writes the key, certificate and roots as one set: into a directory of their own, then
    /// `certs` (a symlink) is switched to it in one rename. A crash leaves the old set or the new
    /// one, never a key beside another key's certificate. The key is sealed with `seal` (a
    /// manager's data key under autolock).
    fn write_credentials(
        &self,
        credentials: &Credentials,
        seal: Option<&DataKey>,
    ) -> std::io::Result<()> {
        crate::durable::private_dir(&self.dir)?;
        let name = format!("{CERTS}-{}", shoal_control::durable::unique_name());
        let set = self.dir.join(&name);
        crate::durable::private_dir(&set)?;
        shoal_control::keys::write_key_file(&set.join("node.key"), &credentials.key_pem, seal)?;
        write_private(&set.join("node.crt"), &credentials.cert_pem)?;
        write_private(&set.join("ca.crt"), &credentials.ca_pem)?;
        let link = self.dir.join(CERTS);
        let previous = std::fs::read_link(&link).ok();
        // A directory left by an earlier version: moved aside so the link can take its place.
        if std::fs::symlink_metadata(&link).is_ok_and(|m| m.is_dir()) {
            std::fs::rename(&link, self.dir.join(format!("{CERTS}-before")))?;
        }
        let tmp = self.dir.join(format!("{name}.link"));
        std::os::unix::fs::symlink(&name, &tmp)?;
        std::fs::rename(&tmp, &link)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        for old in previous
            .into_iter()
            .chain([PathBuf::from(format!("{CERTS}-before"))])
        {
            if old != Path::new(&name) {
                let _ = std::fs::remove_dir_all(self.dir.join(old));
            }
        }
        Ok(())
    }

    /// Makes `credentials` the node's: on disk first, then in memory and in the manager it runs,
    /// if any (which keeps trusting the roots its store gives: see
    /// `Manager::update_credentials`).
    fn adopt(&self, joined: &mut Joined, credentials: Credentials) -> std::io::Result<()> {
        let seal = joined
            .manager
            .as_ref()
            .map(Manager::keys)
            .filter(|keys| keys.sealing())
            .map(DataKeys::key);
        self.write_credentials(&credentials, seal)?;
        if let Some(manager) = &joined.manager
            && let Err(e) = manager.update_credentials(&credentials)
        {
            tracing::warn!(error = %e, "serving with the node's new credentials");
        }
        joined.credentials = credentials;
        Ok(())
    }

    fn write_saved(&self, saved: &Saved) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(saved).map_err(std::io::Error::other)?;
        write_private(&self.dir.join("state.json"), &text)
    }

    /// Starts this node's manager over its raft directory, sealed with `keys` (which also keep
    /// the node's TLS key sealed while autolock is on).
    async fn start_manager(
        &self,
        saved: &Saved,
        credentials: &Credentials,
        raft_id: u64,
        keys: DataKeys,
    ) -> Result<Manager, Status> {
        keys.also_seal(self.dir.join(CERTS).join("node.key"))
            .map_err(io_status("sealing the node's key"))?;
        Manager::start(ManagerConfig {
            keys,
            dir: self.dir.join("raft"),
            credentials: credentials.clone(),
            raft_id,
            advertise: saved.advertise_addr,
            listen: saved.listen_addr,
            settings: RaftSettings::default(),
        })
        .await
        .map_err(|e| Status::failed_precondition(e.to_string()))
    }

    /// Carries out a `shoal swarm|node` call: membership and unlocking here, everything else
    /// through this node's manager.
    pub async fn call(&self, call: impl Into<Call>) -> Result<Value, Status> {
        let call = call.into();
        if self.locked.lock().await.is_some() {
            match call {
                Call::Leave { force: true } | Call::Unlock { .. } => {}
                Call::Leave { force: false } => {
                    return Err(Status::failed_precondition(
                        "Swarm is encrypted and locked. Please unlock it first or use `--force` to ignore this message.",
                    ));
                }
                Call::Init(_) | Call::Join(_) | Call::Manager(_) => {
                    return Err(Status::failed_precondition(KeyError::Locked.to_string()));
                }
            }
        }
        match call {
            Call::Init(args) => self.init(args).await,
            Call::Join(args) => self.join(args).await,
            Call::Leave { force } => self.leave(force).await,
            Call::Unlock { key } => self.unlock(&key).await,
            Call::Manager(call) => {
                let (manager, identity) = {
                    let guard = self.state.lock().await;
                    let joined = guard
                        .as_ref()
                        .ok_or_else(|| Status::failed_precondition(NOT_IN_SWARM))?;
                    let manager = joined
                        .manager
                        .clone()
                        .ok_or_else(|| Status::failed_precondition(NOT_A_MANAGER))?;
                    (manager, joined.saved.node_id.clone())
                };
                let me = manager.identity().clone();
                manager
                    .submit(
                        Op::User {
                            call,
                            node_id: identity,
                        },
                        Some(me),
                        "local".into(),
                    )
                    .await
            }
        }
    }

    /// `shoal service logs`, answered by this node's manager (through the leader).
    pub async fn logs(
        &self,
        query: shoal_api::logs::LogsQuery,
    ) -> Result<shoal_control::manager::LogStream, Status> {
        let manager = {
            let guard = self.state.lock().await;
            let joined = guard
                .as_ref()
                .ok_or_else(|| Status::failed_precondition(NOT_IN_SWARM))?;
            joined
                .manager
                .clone()
                .ok_or_else(|| Status::failed_precondition(NOT_A_MANAGER))?
        };
        manager.logs(query).await
    }

    /// What `shoal info` shows of the swarm.
    pub async fn info(&self) -> LocalSwarm {
        let mut info = self.local_state().await;
        if info.is_manager
            && let Ok(nodes) = self.call(ClusterCall::NodeList).await
            && let Ok(nodes) = serde_json::from_value::<Vec<shoal_api::swarm::Node>>(nodes)
        {
            info.node_count = Some(nodes.len());
            info.manager_count = Some(nodes.iter().filter(|n| n.manager_status.is_some()).count());
        }
        info
    }

    /// This node's membership as it knows it, without asking the managers (no node counts):
    /// what every Docker client's `/_ping` reads.
    pub async fn local_state(&self) -> LocalSwarm {
        if let Some(saved) = self.locked.lock().await.as_ref() {
            return LocalSwarm {
                state: "locked".into(),
                node_id: saved.node_id.clone(),
                cluster_id: saved.cluster_id.clone(),
                managers: saved.managers.clone(),
                node_addr: saved.advertise_addr.ip().to_string(),
                ..Default::default()
            };
        }
        let (saved, manager) = {
            let guard = self.state.lock().await;
            match guard.as_ref() {
                None => {
                    return LocalSwarm {
                        state: "inactive".into(),
                        ..Default::default()
                    };
                }
                Some(j) => (j.saved.clone(), j.manager.clone()),
            }
        };
        LocalSwarm {
            state: "active".into(),
            node_id: saved.node_id.clone(),
            cluster_id: saved.cluster_id.clone(),
            is_manager: manager.is_some(),
            managers: saved.managers.clone(),
            node_addr: saved.advertise_addr.ip().to_string(),
            store_index: manager.as_ref().map(|m| m.store().index()),
            raft_term: manager.as_ref().map(|m| m.raft_term()),
            ..Default::default()
        }
    }

    /// `swarm unlock`: opens the data key with `key` and resumes the membership that
    /// [`SwarmNode::restore`] left locked.
    async fn unlock(&self, key: &str) -> Result<Value, Status> {
        let mut locked = self.locked.lock().await;
        let Some(saved) = locked.as_ref() else {
            return Err(Status::failed_precondition(
                if self.state.lock().await.is_some() {
                    "swarm is not locked"
                } else {
                    NOT_IN_SWARM
                },
            ));
        };
        let unlock: UnlockKey = key
            .parse()
            .map_err(|e: KeyError| Status::invalid_argument(e.to_string()))?;
        let raft_id = saved
            .raft_id
            .ok_or_else(|| Status::internal("a locked manager without a raft ID"))?;
        let keys = self.data_keys(Some(&unlock))?;
        let credentials = self
            .read_credentials(Some(keys.key()))
            .map_err(io_status("reading the node's certificates"))?;
        let manager = self
            .start_manager(saved, &credentials, raft_id, keys)
            .await?;
        let saved = locked.take().expect("checked above");
        drop(locked);
        tracing::info!(node = %saved.node_id, "swarm unlocked");
        let guard = self.state.lock().await;
        self.enter(guard, saved, credentials, Some(manager)).await;
        Ok(Value::Null)
    }

    async fn init(&self, args: InitArgs) -> Result<Value, Status> {
        let guard = self.state.lock().await;
        if guard.is_some() {
            return Err(Status::failed_precondition(ALREADY_IN_SWARM));
        }
        let advertise = resolve(
            args.advertise_addr.as_deref(),
            "advertise-addr",
            DEFAULT_PORT,
        )?;
        let (listen, data_path) = listen_and_data_path(
            args.listen_addr.as_deref(),
            args.data_path_addr.as_deref(),
            advertise,
        )?;
        let data_path_port = args.data_path_port.unwrap_or(DEFAULT_DATA_PATH_PORT);
        if !limits::DATA_PATH_PORTS.contains(&data_path_port) {
            return Err(Status::invalid_argument(format!(
                "--data-path-port {data_path_port} is not allowed: use a port from 1024 to 49151"
            )));
        }
        let heartbeat_s = args.dispatcher_heartbeat_s.unwrap_or(5);
        limits::check_heartbeat(heartbeat_s)?;
        limits::check_snapshot_interval(args.snapshot_interval.unwrap_or(10_000))?;
        if let Some(seconds) = args.cert_expiry_s {
            ca::check_cert_expiry(seconds).map_err(Status::invalid_argument)?;
        }
        // The key the description advertises is the one the node keeps.
        let key = self
            .wireguard_key()
            .map_err(io_status("making the node's WireGuard key"))?;
        let (pools, subnet_size, ingress_subnet) =
            address_pools(&args.default_addr_pool, args.default_addr_pool_mask_length)?;
        let first = genesis(GenesisArgs {
            description: self.description(data_path, data_path_port, None),
            advertise: advertise.to_string(),
            data_path_port,
            heartbeat_s,
            snapshot_interval: args.snapshot_interval.unwrap_or(10_000),
            cert_expiry_s: args.cert_expiry_s.unwrap_or(0),
            default_addr_pool: pools,
            subnet_size,
            autolock: args.autolock,
        })
        .map_err(|e| Status::internal(e.to_string()))?;
        let saved = Saved {
            node_id: first.node_id.clone(),
            cluster_id: first.cluster_id.clone(),
            role: Role::Manager,
            advertise_addr: advertise,
            listen_addr: listen,
            data_path_addr: data_path,
            managers: vec![advertise.to_string()],
            raft_id: Some(first.raft_id),
            heartbeat_ms: heartbeat_s * 1000,
            data_path_port,
        };
        self.wipe_keeping(&key)
            .map_err(io_status("clearing the swarm directory"))?;
        self.write_credentials(&first.credentials, None)
            .map_err(io_status("writing the node's certificates"))?;
        let started = async {
            let manager = self
                .start_manager(
                    &saved,
                    &first.credentials,
                    first.raft_id,
                    self.data_keys(None)?,
                )
                .await?;
            if let Err(e) = manager
                .bootstrap(
                    first.cluster.clone(),
                    &first.cluster_id,
                    first.node.clone(),
                    &first.node_id,
                    ingress_subnet,
                )
                .await
            {
                manager.shutdown().await;
                return Err(e);
            }
            Ok(manager)
        }
        .await;
        let manager = match started {
            Ok(manager) => manager,
            Err(e) => {
                let _ = self.wipe();
                return Err(e);
            }
        };
        if let Err(e) = self.write_saved(&saved) {
            manager.shutdown().await;
            let _ = self.wipe();
            return Err(io_status("writing the swarm state")(e));
        }
        tracing::info!(node = %saved.node_id, cluster = %saved.cluster_id, "swarm initialized");
        let node_id = saved.node_id.clone();
        self.enter(guard, saved, first.credentials, Some(manager))
            .await;
        Ok(Value::String(node_id))
    }

    async fn join(&self, args: JoinArgs) -> Result<Value, Status> {
        let guard = self.state.lock().await;
        if guard.is_some() {
            return Err(Status::failed_precondition(ALREADY_IN_SWARM));
        }
        let token = JoinToken::from_str(&args.token)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let remote = remote_addr(&args.remote).await?;
        let advertise = match args.advertise_addr.as_deref() {
            Some(value) => resolve(Some(value), "advertise-addr", DEFAULT_PORT)?,
            None => {
                let ip = route_source(remote).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "no route to {remote}: specify the address to advertise with --advertise-addr"
                    ))
                })?;
                SocketAddr::new(ip, DEFAULT_PORT)
            }
        };
        let (listen, data_path) = listen_and_data_path(
            args.listen_addr.as_deref(),
            args.data_path_addr.as_deref(),
            advertise,
        )?;
        // Check the manager's CA against the token before sending the token's secret.
        let pinned =
            tls::join_client(&token.digest).map_err(|e| Status::internal(e.to_string()))?;
        tls::handshake(remote, pinned.clone(), RPC_TIMEOUT)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "error while joining the swarm through {remote}: {e}"
                ))
            })?;
        let (csr, key_pem) = ca::node_request().map_err(|e| Status::internal(e.to_string()))?;
        // The key the description advertises is the one the node keeps.
        let key = self
            .wireguard_key()
            .map_err(io_status("making the node's WireGuard key"))?;
        let channel = tls::channel(&remote.to_string(), pinned, RPC_TIMEOUT)
            .map_err(|e| Status::internal(e.to_string()))?;
        let request = JoinRequest {
            token: args.token.trim().to_owned(),
            csr,
            description: self.description(data_path, 0, None),
            advertise_addr: advertise.to_string(),
        };
        let reply: JoinReply = typed(CaClient::new(channel).join(deadline(request.into()))).await?;
        if ca::pem_digest(&reply.ca_pem).ok().as_deref() != Some(token.digest.as_str()) {
            return Err(Status::permission_denied(
                "the manager sent a root CA whose digest does not match the join token",
            ));
        }
        let credentials = Credentials {
            cert_pem: reply.cert_pem,
            key_pem,
            ca_pem: reply.ca_pem,
        };
        let raft_id = match reply.role {
            Role::Manager => Some(ca::random_u64().map_err(|e| Status::internal(e.to_string()))?),
            Role::Worker => None,
        };
        let mut managers = reply.managers;
        if managers.is_empty() {
            managers.push(remote.to_string());
        }
        let saved = Saved {
            node_id: reply.node_id.clone(),
            cluster_id: reply.cluster_id,
            role: reply.role,
            advertise_addr: advertise,
            listen_addr: listen,
            data_path_addr: data_path,
            managers,
            raft_id,
            heartbeat_ms: reply.heartbeat_ms,
            data_path_port: reply.data_path_port,
        };
        self.wipe_keeping(&key)
            .map_err(io_status("clearing the swarm directory"))?;
        self.write_credentials(&credentials, None)
            .map_err(io_status("writing the node's certificates"))?;
        let manager = match raft_id {
            None => None,
            Some(raft_id) => match self.become_manager(&saved, &credentials, raft_id).await {
                Ok(manager) => Some(manager),
                Err(e) => {
                    let _ = self.wipe();
                    return Err(e);
                }
            },
        };
        if let Err(e) = self.write_saved(&saved) {
            if let Some(manager) = &manager {
                manager.shutdown().await;
            }
            let _ = self.wipe();
            return Err(io_status("writing the swarm state")(e));
        }
        tracing::info!(node = %saved.node_id, role = %saved.role, "joined the swarm");
        let role = saved.role;
        self.enter(guard, saved, credentials, manager).await;
        Ok(Value::String(role.to_string()))
    }

    /// Starts a manager with an empty raft and asks the leader to add it.
    async fn become_manager(
        &self,
        saved: &Saved,
        credentials: &Credentials,
        raft_id: u64,
    ) -> Result<Manager, Status> {
        let _ = std::fs::remove_dir_all(self.dir.join("raft"));
        let manager = self
            .start_manager(saved, credentials, raft_id, self.data_keys(None)?)
            .await?;
        let identity = manager.identity().clone();
        let tls_config = credentials
            .client_config()
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut last = Reason::NoLeader.status(shoal_api::swarm::NO_LEADER);
        for addr in &saved.managers {
            let Ok(channel) = tls::channel(addr, tls_config.clone(), Duration::from_secs(60))
            else {
                continue;
            };
            let forwarded = Forwarded {
                op: Op::AddManager {
                    raft_id,
                    addr: saved.advertise_addr.to_string(),
                },
                caller: Some(identity.clone()),
                from: saved.advertise_addr.ip().to_string(),
                hops: 0,
            };
            let added = match ControlClient::new(channel)
                .call(deadline(v1::Forwarded::from(forwarded)))
                .await
            {
                Ok(answer) => wire::answer_value(answer.into_inner()),
                Err(status) => Err(status),
            };
            match added {
                Ok(_) => return Ok(manager),
                Err(e) => last = e,
            }
        }
        manager.shutdown().await;
        Err(last)
    }

    async fn leave(&self, force: bool) -> Result<Value, Status> {
        let mut guard = self.state.lock().await;
        let Some(joined) = guard.as_ref() else {
            // A membership on disk that could not be resumed (see the daemon's log), or a
            // locked one: --force is the way out.
            if force && self.dir.join("state.json").exists() {
                self.wipe()
                    .map_err(io_status("removing the swarm directory"))?;
                *self.locked.lock().await = None;
                return Ok(Value::Null);
            }
            return Err(Status::failed_precondition(
                "This node is not part of a swarm",
            ));
        };
        if let Some(manager) = &joined.manager {
            if !force {
                return Err(Status::failed_precondition(
                    "You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm, and removing a manager may cost the swarm its quorum. Demote this node first (shoal node demote), or use `--force` to ignore this message.",
                ));
            }
            // Leave the raft cleanly if that keeps a quorum; with --force, leave regardless.
            let me = manager.identity().clone();
            let demoted = manager
                .submit(
                    Op::User {
                        call: ManagerCall::from(ClusterCall::NodeUpdate {
                            id: joined.saved.node_id.clone(),
                            update: shoal_api::swarm::NodeUpdate {
                                role: Some(Role::Worker),
                                ..Default::default()
                            },
                        }),
                        node_id: joined.saved.node_id.clone(),
                    },
                    Some(me),
                    "local".into(),
                )
                .await;
            if let Err(e) = demoted {
                tracing::warn!(error = %e.message(), "leaving without leaving the raft first");
            }
        }
        let joined = guard.take().expect("checked above");
        for session in joined.session {
            session.abort();
        }
        self.worker.stop_all().await;
        self.worker.set_context(None);
        if let Some(manager) = joined.manager {
            manager.shutdown().await;
        }
        self.wipe()
            .map_err(io_status("removing the swarm directory"))?;
        tracing::info!("left the swarm");
        Ok(Value::Null)
    }

    /// [`SwarmNode::wipe`], then the WireGuard key back in place: a node joining or
    /// initializing keeps the key its description advertised.
    fn wipe_keeping(&self, key: &Key) -> std::io::Result<()> {
        self.wipe()?;
        write_private(&self.dir.join("wireguard.key"), &key.to_string())
    }

    fn wipe(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => crate::durable::private_dir(&self.dir),
        }
    }

    /// Stops the session and the manager (the daemon is stopping); the membership stays on
    /// disk for the next start.
    pub async fn shutdown(&self) {
        let joined = self.state.lock().await.take();
        if let Some(joined) = joined {
            for session in joined.session {
                session.abort();
            }
            if let Some(manager) = joined.manager {
                manager.shutdown().await;
            }
        }
    }

    /// Records the membership and starts the session with the managers.
    async fn enter(
        &self,
        mut guard: tokio::sync::MutexGuard<'_, Option<Joined>>,
        saved: Saved,
        credentials: Credentials,
        manager: Option<Manager>,
    ) {
        let private_key = match self.wireguard_key() {
            Ok(key) => key.to_string(),
            Err(e) => {
                tracing::error!(error = %e, "reading the node's WireGuard key");
                String::new()
            }
        };
        self.worker.set_context(Some(crate::tasks::Context {
            node_id: saved.node_id.clone(),
            data_path_addr: saved.data_path_addr.to_string(),
            private_key,
        }));
        *guard = Some(Joined {
            saved,
            credentials,
            manager,
            session: Vec::new(),
        });
        drop(guard);
        self.spawn_session().await;
    }

    async fn spawn_session(&self) {
        let node = self.clone();
        let renewer = self.clone();
        let handles = vec![
            tokio::spawn(async move { node.session().await }),
            tokio::spawn(async move { renewer.renewals().await }),
            tokio::spawn(session::assignments(self.worker.clone(), self.clone())),
            tokio::spawn(session::reports(self.worker.clone(), self.clone())),
            tokio::spawn(session::logs(self.worker.clone(), self.clone())),
        ];
        if let Some(joined) = self.state.lock().await.as_mut() {
            for old in std::mem::replace(&mut joined.session, handles) {
                old.abort();
            }
        } else {
            for handle in handles {
                handle.abort();
            }
        }
    }

    /// The membership's saved state and credentials as they are now (copies: no lock is held
    /// while they are used); `None` once the node has left.
    async fn membership(&self) -> Option<(Saved, Credentials)> {
        let guard = self.state.lock().await;
        guard
            .as_ref()
            .map(|j| (j.saved.clone(), j.credentials.clone()))
    }

    /// Heartbeats to the managers, one at a time, moving on when one does not answer; acts on
    /// what the leader says back.
    async fn session(&self) {
        let mut next = 0_usize;
        loop {
            let Some((saved, credentials)) = self.membership().await else {
                return;
            };
            let period = Duration::from_millis(saved.heartbeat_ms.max(1000));
            let addr = saved
                .managers
                .get(next % saved.managers.len().max(1))
                .cloned();
            let beat = match addr {
                None => Err(Status::unavailable("no manager known")),
                Some(addr) => self.heartbeat(&addr, &saved, &credentials).await,
            };
            match beat {
                Ok(reply) => {
                    if let Err(e) = self.act_on(reply).await {
                        tracing::warn!(error = %e.message(), "acting on the leader's answer");
                    }
                    tokio::time::sleep(period).await;
                }
                Err(status) if Reason::of(&status) == Some(Reason::NodeRemoved) => {
                    tracing::warn!("{}: leaving the swarm", status.message());
                    let mut guard = self.state.lock().await;
                    let joined = guard.take();
                    if let Some(joined) = &joined {
                        // Not this task itself: it ends below.
                        for other in joined.session.iter().skip(1) {
                            other.abort();
                        }
                    }
                    self.worker.stop_all().await;
                    self.worker.set_context(None);
                    if let Some(manager) = joined.and_then(|joined| joined.manager) {
                        manager.shutdown().await;
                    }
                    let _ = self.wipe();
                    return;
                }
                Err(status) => {
                    tracing::debug!(error = %status.message(), "heartbeat failed; trying the next manager");
                    next += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn heartbeat(
        &self,
        addr: &str,
        saved: &Saved,
        credentials: &Credentials,
    ) -> Result<HeartbeatReply, Status> {
        let config = credentials
            .client_config()
            .map_err(|e| Status::internal(e.to_string()))?;
        let channel =
            tls::channel(addr, config, RPC_TIMEOUT).map_err(|e| Status::internal(e.to_string()))?;
        let heartbeat = Heartbeat {
            description: self.description(
                saved.data_path_addr,
                saved.data_path_port,
                Some(credentials),
            ),
            mesh: self.worker.dataplane().mesh_counters().await,
        };
        typed(DispatcherClient::new(channel).heartbeat(deadline(heartbeat.into()))).await
    }

    async fn act_on(&self, reply: HeartbeatReply) -> Result<(), Status> {
        let mut guard = self.state.lock().await;
        let Some(joined) = guard.as_mut() else {
            return Ok(());
        };
        let mut saved = joined.saved.clone();
        if !reply.managers.is_empty() {
            saved.managers = reply.managers.clone();
        }
        saved.heartbeat_ms = reply.period_ms;
        // A root rotation: a certificate from the CA that signs now, and the roots to trust.
        let (_, issuer_key) =
            ca::signer_of(&joined.credentials.cert_pem, &joined.credentials.ca_pem)
                .unwrap_or_default();
        if !reply.issuer_public_key.is_empty() && reply.issuer_public_key != issuer_key {
            self.renew_now.notify_one();
        }
        if let Some(bundle) = &reply.trust_root
            && *bundle != joined.credentials.ca_pem
        {
            if tls::chain_trusted(&joined.credentials.cert_pem, bundle) {
                let credentials = Credentials {
                    ca_pem: bundle.clone(),
                    ..joined.credentials.clone()
                };
                self.adopt(joined, credentials)
                    .map_err(io_status("writing the swarm's roots"))?;
                tracing::info!("trusting the swarm's roots as the managers give them");
            } else {
                // Its certificate is not under the new roots yet: renew first; the roots come
                // with the next heartbeat.
                self.renew_now.notify_one();
            }
        }
        if reply.role != saved.role {
            tracing::info!(from = %saved.role, to = %reply.role, "the node's role changed");
            if let Some(manager) = joined.manager.take() {
                manager.shutdown().await;
                // The key goes back in the clear before the data key that sealed it goes.
                self.write_credentials(&joined.credentials, None)
                    .map_err(io_status("writing the node's certificates"))?;
                let _ = std::fs::remove_dir_all(self.dir.join("raft"));
            }
            let credentials = self.renew(&saved, &joined.credentials).await?;
            self.adopt(joined, credentials.clone())
                .map_err(io_status("writing the node's certificates"))?;
            saved.role = reply.role;
            saved.raft_id = None;
            if reply.role == Role::Manager {
                let raft_id = ca::random_u64().map_err(|e| Status::internal(e.to_string()))?;
                saved.raft_id = Some(raft_id);
                joined.manager = Some(self.become_manager(&saved, &credentials, raft_id).await?);
            }
        }
        if saved.managers != joined.saved.managers
            || saved.role != joined.saved.role
            || saved.heartbeat_ms != joined.saved.heartbeat_ms
            || saved.raft_id != joined.saved.raft_id
        {
            self.write_saved(&saved)
                .map_err(io_status("writing the swarm state"))?;
            joined.saved = saved;
        }
        Ok(())
    }

    /// Renews the node's certificate at a random point between 50 % and 80 % of its lifetime
    /// (SwarmKit's), or at once when woken ([`SwarmNode::renew_now`]); retries with backoff.
    /// The call to the managers is made without holding the membership.
    async fn renewals(&self) {
        let mut failures: u32 = 0;
        let fraction = ca::renewal_fraction();
        loop {
            let Some((_, credentials)) = self.membership().await else {
                return;
            };
            let wait = match ca::CertFacts::of(&credentials.cert_pem) {
                Ok(facts) => {
                    let at = ca::renewal_time(facts.not_before, facts.not_after, fraction);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64);
                    Duration::from_secs(u64::try_from(at - now).unwrap_or(0))
                }
                Err(_) => Duration::ZERO,
            };
            let wait = if failures > 0 {
                // 5 s, 10 s, 20 s ... up to an hour, whatever the certificate says.
                Duration::from_secs(5 << failures.min(9)).min(Duration::from_secs(3600))
            } else {
                wait
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.renew_now.notified() => {}
            }
            // What holds now (the roots may have changed while waiting).
            let Some((saved, credentials)) = self.membership().await else {
                return;
            };
            match self.renew(&saved, &credentials).await {
                Ok(mut renewed) => {
                    failures = 0;
                    let mut guard = self.state.lock().await;
                    let Some(joined) = guard.as_mut() else {
                        return;
                    };
                    // The roots may have moved on while the managers were asked: keep the
                    // newest the certificate is under.
                    if tls::chain_trusted(&renewed.cert_pem, &joined.credentials.ca_pem) {
                        renewed.ca_pem.clone_from(&joined.credentials.ca_pem);
                    }
                    if let Err(e) = self.adopt(joined, renewed) {
                        failures += 1;
                        tracing::warn!(error = %e, "writing the renewed certificate");
                        continue;
                    }
                    tracing::info!("the node's certificate was renewed");
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e.message(), "renewing the node's certificate");
                }
            }
        }
    }

    /// A certificate for the role the store now gives this node.
    async fn renew(&self, saved: &Saved, current: &Credentials) -> Result<Credentials, Status> {
        let (csr, key_pem) = ca::node_request().map_err(|e| Status::internal(e.to_string()))?;
        let config = current
            .client_config()
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut last = Reason::NoLeader.status(shoal_api::swarm::NO_LEADER);
        for addr in &saved.managers {
            let Ok(channel) = tls::channel(addr, config.clone(), RPC_TIMEOUT) else {
                continue;
            };
            let renewed: Result<RenewReply, Status> = typed(
                CaClient::new(channel).renew(deadline(v1::RenewRequest { csr: csr.clone() })),
            )
            .await;
            match renewed {
                Ok(reply) => {
                    let credentials = Credentials {
                        cert_pem: reply.cert_pem,
                        key_pem,
                        ca_pem: current.ca_pem.clone(),
                    };
                    // Trust, but verify: the certificate is this node's, for this key, under
                    // the roots it trusts.
                    let identity = credentials
                        .identity()
                        .map_err(|e| Status::internal(format!("the renewed certificate: {e}")))?;
                    let refused = if identity.node_id != saved.node_id {
                        Some(format!("it is node {}'s", identity.node_id))
                    } else if !tls::chain_trusted(&credentials.cert_pem, &credentials.ca_pem) {
                        Some("it is not under the roots this node trusts".to_owned())
                    } else {
                        tls::LiveTls::new(&credentials)
                            .err()
                            .map(|e| format!("it does not go with the new key: {e}"))
                    };
                    if let Some(why) = refused {
                        return Err(Status::internal(format!(
                            "the renewed certificate is refused: {why}"
                        )));
                    }
                    return Ok(credentials);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

async fn remote_addr(remote: &str) -> Result<SocketAddr, Status> {
    let with_port = if remote.parse::<SocketAddr>().is_ok()
        || remote
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.ends_with(']') && !h.contains(':') && p.parse::<u16>().is_ok())
    {
        remote.to_owned()
    } else {
        format!("{remote}:{DEFAULT_PORT}")
    };
    let mut found = tokio::net::lookup_host(&with_port).await.map_err(|e| {
        Status::invalid_argument(format!("invalid manager address {remote:?}: {e}"))
    })?;
    found.next().ok_or_else(|| {
        Status::invalid_argument(format!(
            "invalid manager address {remote:?}: it resolves to nothing"
        ))
    })
}

/// `message` with a call's deadline.
fn deadline<M>(message: M) -> Request<M> {
    let mut request = Request::new(message);
    request.set_timeout(RPC_TIMEOUT * 6);
    request
}

/// A typed call's answer, as the manager's message `T`.
async fn typed<M, T: TryFrom<M, Error = WireError>>(
    call: impl Future<Output = Result<tonic::Response<M>, Status>>,
) -> Result<T, Status> {
    let reply = call.await?;
    T::try_from(reply.into_inner()).map_err(wire::unreadable)
}

impl session::Contact for SwarmNode {
    async fn contact(&self) -> Option<(Vec<String>, Credentials)> {
        let guard = self.state.lock().await;
        guard
            .as_ref()
            .map(|j| (j.saved.managers.clone(), j.credentials.clone()))
    }
}
