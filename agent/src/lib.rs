//! `shoald`, the daemon every Shoal node runs. It serves the Docker Engine API on its unix socket
//! (engine/: what `shoal` and the docker CLI send), keeps the node's swarm membership ([`swarm`]: init, join,
//! leave, the heartbeat session, the manager it runs when it is one), and hosts the node's data
//! plane (`shoal dataplane apply|inspect`, dataplane.rs), and runs the tasks the managers assign it
//! (tasks/: the `exec` and `docker` executors). Off by default: Prometheus metrics on
//! `--metrics-addr` (metrics.rs) and a live web view of the swarm on `--ui-addr` (ui/, managers).
//!
//! ```text
//!   shoal, docker ──HTTP──> unix socket (0660) ──> Engine API (engine/), /shoal/v1/ (Shoal's own)
//!                                             ├── node facts (node.rs): name, kernel, OS, CPUs
//!                                             ├── swarm (swarm.rs): membership, session, manager
//!                                             └── data plane (dataplane.rs): overlays, WireGuard
//!   --metrics-addr ──HTTP──> /metrics (metrics.rs)      --ui-addr ──HTTP──> page, state, watch (ui/)
//!   data root (0700): shoald.pid, locked while the daemon runs; netns/ holds the overlays' namespaces;
//!   swarm/ holds the node's certificates, its membership and (managers) the raft store
//! ```
//!
//! Start with [`run`]: it takes a [`Config`] and a shutdown future (so tests run a daemon
//! in-process), locks the data root, binds the socket and serves until the future resolves.

mod data_root;
mod dataplane;
mod dns;
mod durable;
mod engine;
mod figures;
mod metrics;
mod node;
mod socket;
pub mod swarm;
mod tasks;
mod ui;

pub use tasks::ExecutorKind;
pub use tasks::docker::DEFAULT_DOCKER_HOST;

use std::{future::Future, path::PathBuf};

use shoal_api::DaemonHost;

pub use data_root::DataRootError;
pub use node::{NodeFacts, host_name};
pub use socket::SocketError;

/// Where `shoald` keeps its state by default.
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/shoal";

/// How the daemon is set up (`shoald`'s flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// `--data-root`: the daemon's state; one daemon per data root.
    pub data_root: PathBuf,
    /// `-H`: the socket the local API is served on.
    pub host: DaemonHost,
    /// `--hostname`: the node's name (defaults to the host's name).
    pub hostname: String,
    /// `--executor`: how tasks run.
    pub executor: ExecutorKind,
    /// `--docker-host`: the Docker Engine the `docker` executor uses (`unix://PATH`).
    pub docker_host: String,
    /// `--metrics-addr`: where Prometheus metrics are served (`None`: not served).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `--ui-addr`: where the web view is served (`None`: not served).
    pub ui_addr: Option<std::net::SocketAddr>,
    /// `--wireguard-cpus`: the CPUs the WireGuard engine's encrypting and decrypting threads are
    /// pinned to (one for both, or one each); empty: not pinned.
    pub wireguard_cpus: Vec<usize>,
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The data root could not be created or is in use.
    #[error(transparent)]
    DataRoot(#[from] DataRootError),
    /// The socket could not be bound.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The executor cannot run tasks (the Docker Engine does not answer).
    #[error("--executor {executor}: {reason}")]
    Executor {
        /// The executor's name.
        executor: &'static str,
        /// Why.
        reason: String,
    },
    /// State kept in the data root cannot be read back.
    #[error("{reason}")]
    State {
        /// What cannot be read, and why.
        reason: String,
    },
    /// The metrics or web view address could not be bound.
    #[error("--{flag} {addr}: {source}")]
    Listen {
        /// The flag.
        flag: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--wireguard-cpus` names CPUs the daemon cannot pin to.
    #[error("--wireguard-cpus: {reason}")]
    WireguardCpus {
        /// What is wrong with the list.
        reason: String,
    },
    /// The gRPC server failed.
    #[error("serving the API on {host}: {source}")]
    Serve {
        /// The socket.
        host: DaemonHost,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// Raises the open-file limit to what the system allows: the cluster API's connections, the
/// tasks' namespaces and raft's files all take descriptors (the cluster API keeps out of a
/// reserve, so raft's writes never fail with EMFILE).
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "raising the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "reading the open-file limit"),
    }
}

/// `--wireguard-cpus`: one or two CPUs, each one the daemon may run on. Checked at start, so
/// that a wrong list stops the daemon rather than every desired state the data plane is given.
fn check_wireguard_cpus(cpus: &[usize]) -> Result<(), DaemonError> {
    use shoal_dataplane::overlay::affinity;
    let allowed = affinity::allowed_cpus().map_err(|e| DaemonError::WireguardCpus {
        reason: format!("reading the CPUs this process may run on: {e}"),
    })?;
    affinity::check(cpus, &allowed).map_err(|reason| DaemonError::WireguardCpus { reason })
}

/// How long requests in flight may go on once the daemon is asked to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the daemon until `shutdown` resolves, then removes its socket.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    // Whatever the daemon creates is its own: keys, the raft log, task state and logs.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    raise_open_file_limit();
    check_wireguard_cpus(&config.wireguard_cpus)?;
    let _lock = data_root::DataRoot::open(&config.data_root)?;
    let executor = tasks::Executor::new(config.executor, &config.docker_host)
        .await
        .map_err(|reason| DaemonError::Executor {
            executor: config.executor.name(),
            reason,
        })?;
    let (listener, socket_file) = socket::bind(&config.host)?;
    let facts = NodeFacts::gather(&config);
    tracing::info!(
        host = %config.host,
        data_root = %config.data_root.display(),
        name = %facts.name,
        "shoald {} serving",
        env!("CARGO_PKG_VERSION")
    );
    let dataplane = dataplane::NodeDataplane::new(&config.data_root);
    dataplane.restore().await;
    dataplane.collect_expired_flows();
    let worker = tasks::Worker::new(
        &config.data_root,
        executor,
        dataplane.clone(),
        config.wireguard_cpus.clone(),
    );
    worker
        .restore()
        .await
        .map_err(|reason| DaemonError::State { reason })?;
    let worker_saves = worker.clone();
    let swarm = swarm::SwarmNode::new(&config.data_root, facts.clone(), worker);
    if let Err(e) = swarm.restore().await {
        // The daemon still serves: `shoal swarm leave --force` is the way out.
        tracing::error!("resuming the swarm membership: {e}");
    }
    if let Some(addr) = config.metrics_addr {
        metrics::serve(addr, swarm.clone(), dataplane.clone())
            .await
            .map_err(|source| DaemonError::Listen {
                flag: "metrics-addr",
                addr,
                source,
            })?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    if let Some(addr) = config.ui_addr {
        ui::serve(addr, swarm.clone())
            .await
            .map_err(|source| DaemonError::Listen {
                flag: "ui-addr",
                addr,
                source,
            })?;
        tracing::info!(%addr, "serving the web view");
    }
    // One API on the socket: Docker's Engine API, Shoal's own operations under `/shoal/v1/`.
    let app = engine::router(facts, swarm.clone(), dataplane);
    // On shutdown, requests in flight get [`SHUTDOWN_GRACE`] to end; streams that do not (a
    // client following logs, which end only when the swarm stops below) are then cut.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stopping.send(true);
    });
    let asked = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let serving = axum::serve(listener, app).with_graceful_shutdown(asked(stop.clone()));
    let served = tokio::select! {
        served = serving.into_future() => served,
        () = async {
            asked(stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(
                "connections still open {}s after the shutdown began: closed",
                SHUTDOWN_GRACE.as_secs()
            );
            Ok(())
        }
    };
    drop(socket_file);
    swarm.shutdown().await;
    worker_saves.flush().await;
    tracing::info!("shoald stopped");
    served.map_err(|source| DaemonError::Serve {
        host: config.host.clone(),
        source,
    })
}
