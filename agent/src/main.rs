//! `shoald`: the Shoal daemon. See the `shoal_agent` library for what it does.

use std::{
    io::{IsTerminal, stderr},
    path::PathBuf,
    process::ExitCode,
};

use clap::Parser;
use shoal_agent::{Config, DEFAULT_DATA_ROOT};
use shoal_api::DaemonHost;
use tokio::signal::unix::{SignalKind, signal};

/// The Shoal daemon: one per node. It serves the local API that `shoal` talks to.
#[derive(Debug, Parser)]
#[command(name = "shoald", version)]
struct Args {
    /// Root directory of the daemon's persistent state
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_ROOT)]
    data_root: PathBuf,

    /// Socket to serve the local API on (unix://PATH)
    #[arg(
        short = 'H',
        long = "host",
        value_name = "ADDR",
        env = "SHOAL_HOST",
        default_value_t
    )]
    host: DaemonHost,

    /// Name of this node (default: the host's name)
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,

    /// How tasks run: docker (containers of the Docker Engine at --docker-host, network mode
    /// none), exec (COMMAND from the host, run as root in a namespace of its own: opt-in only),
    /// none, or auto (the default: docker if the engine answers, else none)
    #[arg(long, value_name = "EXECUTOR", default_value = "auto")]
    executor: shoal_agent::ExecutorKind,

    /// The Docker Engine's socket, for --executor docker (unix://PATH)
    #[arg(long, value_name = "ADDR", env = "DOCKER_HOST", default_value = shoal_agent::DEFAULT_DOCKER_HOST)]
    docker_host: String,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off by default). Nothing there is
    /// secret, but it tells how the cluster runs: bind it to an address only your monitoring
    /// reaches
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,

    /// Serve a live web view of the swarm at http://ADDR:PORT/ (managers; off by default). It
    /// can drain and activate nodes only when ADDR is a loopback address; read-only otherwise
    #[arg(long, value_name = "ADDR:PORT")]
    ui_addr: Option<std::net::SocketAddr>,

    /// Pin the WireGuard engine's encrypting and decrypting threads: CPU (both on it) or
    /// CPU,CPU (one each). Pinned, decrypted packets stay in order through the kernel's per-CPU
    /// queues; the threads can no longer move to an idle CPU. Default: not pinned
    #[arg(long, value_name = "CPU[,CPU]", value_delimiter = ',', num_args = 1)]
    wireguard_cpus: Vec<usize>,

    /// Log level: error, warn, info, debug or trace
    #[arg(short = 'l', long, value_name = "LEVEL", default_value = "info")]
    log_level: tracing_subscriber::filter::LevelFilter,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_max_level(args.log_level)
        .with_ansi(stderr().is_terminal())
        .with_writer(stderr)
        .init();
    let config = Config {
        hostname: args.hostname.unwrap_or_else(shoal_agent::host_name),
        data_root: args.data_root,
        host: args.host,
        executor: args.executor,
        docker_host: args.docker_host,
        metrics_addr: args.metrics_addr,
        ui_addr: args.ui_addr,
        wireguard_cpus: args.wireguard_cpus,
    };
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(e) => {
            eprintln!("shoald: installing a SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    };
    match shoal_agent::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Every error's message already carries its cause ("...: binding: Permission denied").
            eprintln!("shoald: {e}");
            ExitCode::FAILURE
        }
    }
}
