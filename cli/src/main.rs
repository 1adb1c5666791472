//! `shoal`, the command line for Shoal: Docker's `swarm | node | service | network | secret |
//! config | stack | info` verbs,
//! sent to the local `shoald` over its unix socket (`-H unix://PATH`, or `$SHOAL_HOST`).
//!
//! ```text
//!   main.rs (clap) ──> commands/<verb>.rs ──> api.rs ──HTTP/1.1 (Docker's Engine API)──> shoald
//!                            └── output.rs: human tables, --format json, sizes
//! ```
//!
//! Errors go to stderr as the user should read them ("Cannot connect to the Shoal daemon at ...
//! Is shoald running?") and the exit status is 1.

mod api;
mod commands;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_api::DaemonHost;

/// Shoal: a container networking appliance with Docker Swarm's interface.
#[derive(Debug, Parser)]
#[command(name = "shoal", version)]
struct Cli {
    /// Daemon socket to connect to (unix://PATH)
    #[arg(
        short = 'H',
        long = "host",
        value_name = "ADDR",
        env = "SHOAL_HOST",
        default_value_t,
        global = true
    )]
    host: DaemonHost,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Display system-wide information
    Info(commands::info::Args),
    /// Get real-time events from the swarm (on a manager)
    Events(commands::events::Args),
    /// Manage the swarm
    #[command(subcommand)]
    Swarm(commands::swarm::Command),
    /// Manage swarm nodes
    #[command(subcommand)]
    Node(commands::node::Command),
    /// Manage swarm services
    #[command(subcommand)]
    Service(commands::service::Command),
    /// Manage swarm networks
    #[command(subcommand)]
    Network(commands::network::Command),
    /// Manage stacks (a compose file's services, networks, secrets and configs)
    #[command(subcommand)]
    Stack(commands::stack::Command),
    /// Manage swarm secrets
    #[command(subcommand)]
    Secret(commands::secret::Command),
    /// Manage swarm configs
    #[command(subcommand)]
    Config(commands::secret::Command),
    /// Drive this node's data plane directly (until the control plane does)
    #[command(subcommand)]
    Dataplane(commands::dataplane::Command),
}

/// An error the way the user reads it.
#[derive(Debug)]
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Self(e.to_string())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Output piped into `head` ends quietly, as other command-line tools do, instead of
    // panicking on a closed pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread writes.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => commands::info::run(&cli.host, args).await,
        Command::Events(args) => commands::events::run(&cli.host, args).await,
        Command::Swarm(command) => commands::swarm::run(&cli.host, command).await,
        Command::Node(command) => commands::node::run(&cli.host, command).await,
        Command::Service(command) => commands::service::run(&cli.host, command).await,
        Command::Network(command) => commands::network::run(&cli.host, command).await,
        Command::Stack(command) => commands::stack::run(&cli.host, command).await,
        Command::Secret(command) => {
            commands::secret::run(&cli.host, shoal_api::secret::DataKind::Secret, command).await
        }
        Command::Config(command) => {
            commands::secret::run(&cli.host, shoal_api::secret::DataKind::Config, command).await
        }
        Command::Dataplane(command) => commands::dataplane::run(&cli.host, command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
