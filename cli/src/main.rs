//! `shoal`, the command line for Shoal: Docker's `swarm | node | service | network | secret |
//! config | stack | info | events` verbs, and `completion` for the shell,
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
    /// Print a completion script for a shell: `source <(shoal completion bash)`, or write it
    /// where the shell reads completions (zsh: a directory on $fpath as `_shoal`; fish:
    /// ~/.config/fish/completions/shoal.fish)
    Completion {
        /// The shell: bash, zsh or fish (also elvish, powershell)
        shell: clap_complete::Shell,
    },
}

/// The completion script of `shell` for `shoal`.
fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(
        shell,
        &mut <Cli as clap::CommandFactory>::command(),
        "shoal",
        &mut script,
    );
    script
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
        Command::Completion { shell } => {
            use std::io::Write as _;
            // A closed pipe (`| head`) ends the command quietly.
            let _ = std::io::stdout().write_all(&completion(shell));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bash_completion_is_a_script_bash_reads_and_knows_every_verb() {
        let script = completion(clap_complete::Shell::Bash);
        let text = String::from_utf8(script.clone()).unwrap();
        for verb in ["swarm", "node", "service", "events", "completion", "stack"] {
            assert!(text.contains(verb), "no {verb} in the bash completion");
        }
        let mut bash = std::process::Command::new("bash")
            .arg("-n")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(bash.stdin.as_mut().unwrap(), &script).unwrap();
        let checked = bash.wait_with_output().unwrap();
        assert!(
            checked.status.success(),
            "{}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }

    #[test]
    fn zsh_and_fish_get_their_own_scripts() {
        let zsh = String::from_utf8(completion(clap_complete::Shell::Zsh)).unwrap();
        assert!(zsh.starts_with("#compdef shoal"), "{}", &zsh[..40]);
        let fish = String::from_utf8(completion(clap_complete::Shell::Fish)).unwrap();
        assert!(fish.contains("complete -c shoal"), "{}", &fish[..80]);
    }
}
