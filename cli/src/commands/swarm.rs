//! `shoal swarm init|join|join-token|leave|update|inspect|ca|unlock|unlock-key`.

use shoal_api::call::{Call, ClusterCall};
use shoal_api::{
    DaemonHost,
    swarm::{Cluster, InitArgs, JoinArgs, Node, Role, SwarmUpdateArgs},
};

use crate::Failure;
pub(crate) use crate::api::call;

/// A duration as Docker takes it (`5s`, `1m`, `1h`, `2160h0m0s`; a bare number is seconds), in
/// whole seconds.
fn seconds(value: &str) -> Result<u64, String> {
    let invalid = |why: &str| format!("invalid duration {value:?}: {why}");
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse()
            .map_err(|_| invalid("it is too long"))
            .and_then(|s: u64| {
                if s == 0 {
                    Err(invalid("it must be at least 1s"))
                } else {
                    Ok(s)
                }
            });
    }
    let mut total: u64 = 0;
    let mut rest = value;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid("expected e.g. 5s, 1m, 1h or 2160h0m0s"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| invalid("it is too long"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let per = match &rest[..unit_len] {
            "h" => 3600,
            "m" => 60,
            "s" => 1,
            _ => return Err(invalid("the units are h, m and s")),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(per)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| invalid("it is too long"))?;
    }
    if total == 0 {
        return Err(invalid("it must be at least 1s"));
    }
    Ok(total)
}

/// The address flags `init` and `join` share.
#[derive(Debug, clap::Args)]
pub(crate) struct Addrs {
    /// Advertised address (format: <ip|interface>[:port])
    #[arg(long, value_name = "ADDR")]
    advertise_addr: Option<String>,
    /// Listen address (format: <ip|interface>[:port]) (default 0.0.0.0:2377)
    #[arg(long, value_name = "ADDR")]
    listen_addr: Option<String>,
    /// Address or interface to use for data path traffic (format: <ip|interface>)
    #[arg(long, value_name = "ADDR")]
    data_path_addr: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Initialize a swarm: this node becomes its first manager
    Init {
        #[command(flatten)]
        addrs: Addrs,
        /// Port number to use for data path traffic (1024 - 49151) (default 4789)
        #[arg(long, value_name = "PORT")]
        data_path_port: Option<u16>,
        /// Dispatcher heartbeat period (s|m|h) (default 5s)
        #[arg(long, value_name = "DURATION", value_parser = seconds)]
        dispatcher_heartbeat: Option<u64>,
        /// Number of log entries between Raft snapshots (default 10000)
        #[arg(long, value_name = "N")]
        snapshot_interval: Option<u64>,
        /// Validity period for node certificates (h|m|s) (default 2160h0m0s; at least 1h)
        #[arg(long, value_name = "DURATION", value_parser = seconds)]
        cert_expiry: Option<u64>,
        /// Default address pool in CIDR format (default 10.0.0.0/8; repeat or separate with
        /// commas for several)
        #[arg(long, value_name = "CIDR", value_delimiter = ',')]
        default_addr_pool: Vec<String>,
        /// Default address pool subnet mask length (default 24)
        #[arg(long, value_name = "N")]
        default_addr_pool_mask_length: Option<u8>,
        /// Enable manager autolocking (requiring an unlock key to start a stopped manager)
        #[arg(long)]
        autolock: bool,
    },
    /// Join a swarm as a node and/or manager
    Join {
        /// Token for entry into the swarm
        #[arg(long)]
        token: String,
        #[command(flatten)]
        addrs: Addrs,
        /// A manager's address, HOST[:PORT]
        remote: String,
    },
    /// Manage join tokens
    JoinToken {
        /// Only display the token
        #[arg(short, long)]
        quiet: bool,
        /// Rotate join token
        #[arg(long)]
        rotate: bool,
        /// worker or manager
        #[arg(value_parser = ["worker", "manager"])]
        role: String,
    },
    /// Leave the swarm
    Leave {
        /// Force this node to leave the swarm, ignoring warnings
        #[arg(short, long)]
        force: bool,
    },
    /// Update the swarm
    Update {
        /// Dispatcher heartbeat period (s|m|h)
        #[arg(long, value_name = "DURATION", value_parser = seconds)]
        dispatcher_heartbeat: Option<u64>,
        /// Number of log entries between Raft snapshots
        #[arg(long, value_name = "N")]
        snapshot_interval: Option<u64>,
        /// Validity period for node certificates (h|m|s; at least 1h)
        #[arg(long, value_name = "DURATION", value_parser = seconds)]
        cert_expiry: Option<u64>,
        /// Task history retention limit (stopped tasks kept per slot)
        #[arg(long, value_name = "N")]
        task_history_limit: Option<u64>,
        /// Change manager autolocking setting (true|false)
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        autolock: Option<bool>,
    },
    /// Unlock swarm: give a locked manager the unlock key (read from standard input, or asked
    /// for on a terminal)
    Unlock,
    /// Manage the unlock key
    UnlockKey {
        /// Only display the key
        #[arg(short, long)]
        quiet: bool,
        /// Rotate the unlock key
        #[arg(long)]
        rotate: bool,
    },
    /// Display detailed information on the swarm
    Inspect,
    /// Display and rotate the root CA
    Ca {
        /// Rotate the swarm CA: a new root, cross-signed by the current one; every node moves
        /// to it, then certificates under the old root are refused
        #[arg(long)]
        rotate: bool,
        /// Validity period for node certificates (h|m|s; at least 1h)
        #[arg(long, value_name = "DURATION", value_parser = seconds)]
        cert_expiry: Option<u64>,
        /// Exit immediately instead of waiting for the root rotation to converge
        #[arg(short, long)]
        detach: bool,
        /// Suppress progress output
        #[arg(short, long)]
        quiet: bool,
    },
}

fn role(name: &str) -> Role {
    if name == "manager" {
        Role::Manager
    } else {
        Role::Worker
    }
}

/// The current join token of `role`.
async fn token(host: &DaemonHost, role: Role) -> Result<String, Failure> {
    let token = call(
        host,
        ClusterCall::JoinToken {
            role,
            rotate: false,
        },
    )
    .await?;
    Ok(token.as_str().unwrap_or_default().to_owned())
}

/// The cluster's unlock key (a new one with `rotate`); empty while autolock is off.
async fn unlock_key(host: &DaemonHost, rotate: bool) -> Result<String, Failure> {
    let answer = call(host, ClusterCall::UnlockKey { rotate }).await?;
    Ok(answer["UnlockKey"].as_str().unwrap_or_default().to_owned())
}

fn print_unlock_key(key: &str) {
    println!(
        "To unlock a swarm manager after it restarts, run the `shoal swarm unlock`\ncommand and provide the following key:\n\n    {key}\n\nPlease remember to store this key in a password manager, since without it you\nwill not be able to restart the manager."
    );
}

/// The unlock key from standard input: asked for on a terminal, else read whole.
fn read_unlock_key() -> Result<String, Failure> {
    use std::io::{BufRead as _, IsTerminal as _, Read as _};
    let stdin = std::io::stdin();
    let mut key = String::new();
    if stdin.is_terminal() {
        eprint!("Enter unlock key: ");
        stdin.lock().read_line(&mut key)?;
    } else {
        stdin.lock().read_to_string(&mut key)?;
    }
    Ok(key.trim().to_owned())
}

async fn print_join_command(host: &DaemonHost, which: Role) -> Result<(), Failure> {
    let token = token(host, which).await?;
    let info = crate::commands::info::local(host).await?;
    let manager = info.managers.first().cloned().unwrap_or_default();
    println!(
        "To add a {which} to this swarm, run the following command:\n\n    shoal swarm join --token {} {manager}\n",
        token
    );
    Ok(())
}

pub(crate) async fn run(host: &DaemonHost, command: Command) -> Result<(), Failure> {
    match command {
        Command::Init {
            addrs:
                Addrs {
                    advertise_addr,
                    listen_addr,
                    data_path_addr,
                },
            data_path_port,
            dispatcher_heartbeat,
            snapshot_interval,
            cert_expiry,
            default_addr_pool,
            default_addr_pool_mask_length,
            autolock,
        } => {
            init(
                host,
                InitArgs {
                    advertise_addr,
                    listen_addr,
                    data_path_addr,
                    data_path_port,
                    dispatcher_heartbeat_s: dispatcher_heartbeat,
                    snapshot_interval,
                    cert_expiry_s: cert_expiry,
                    default_addr_pool,
                    default_addr_pool_mask_length,
                    autolock,
                },
            )
            .await?;
        }
        Command::Join {
            token,
            addrs:
                Addrs {
                    advertise_addr,
                    listen_addr,
                    data_path_addr,
                },
            remote,
        } => {
            join(
                host,
                JoinArgs {
                    token,
                    remote,
                    advertise_addr,
                    listen_addr,
                    data_path_addr,
                },
            )
            .await?;
        }
        Command::JoinToken {
            quiet,
            rotate,
            role: which,
        } => join_token(host, role(&which), quiet, rotate).await?,
        Command::Leave { force } => {
            call(host, Call::Leave { force }).await?;
            println!("Node left the swarm.");
        }
        Command::Update {
            dispatcher_heartbeat,
            snapshot_interval,
            cert_expiry,
            task_history_limit,
            autolock,
        } => {
            update(
                host,
                SwarmUpdateArgs {
                    dispatcher_heartbeat_s: dispatcher_heartbeat,
                    snapshot_interval,
                    cert_expiry_s: cert_expiry,
                    task_history_limit,
                    autolock,
                    ca_force_rotate: None,
                    version: None,
                },
            )
            .await?;
        }
        Command::Unlock => unlock(host).await?,
        Command::UnlockKey { quiet, rotate } => manage_unlock_key(host, quiet, rotate).await?,
        Command::Ca {
            rotate,
            cert_expiry,
            detach,
            quiet,
        } => ca(host, rotate, cert_expiry, detach, quiet).await?,
        Command::Inspect => {
            let cluster: Cluster = serde_json::from_value(call(host, ClusterCall::Inspect).await?)?;
            println!("{}", serde_json::to_string_pretty(&[cluster])?);
        }
    }
    Ok(())
}

/// `swarm init`: this node becomes the first manager; prints how others join (and the unlock
/// key with autolock).
async fn init(host: &DaemonHost, args: InitArgs) -> Result<(), Failure> {
    let autolock = args.autolock;
    let node = call(host, Call::Init(args)).await?;
    println!(
        "Swarm initialized: current node ({}) is now a manager.\n",
        node.as_str().unwrap_or_default()
    );
    print_join_command(host, Role::Worker).await?;
    println!(
        "To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n"
    );
    if autolock {
        print_unlock_key(&unlock_key(host, false).await?);
    }
    Ok(())
}

/// `swarm join`: joins a swarm and says as what.
async fn join(host: &DaemonHost, args: JoinArgs) -> Result<(), Failure> {
    let joined = call(host, Call::Join(args)).await?;
    match joined.as_str() {
        Some("manager") => println!("This node joined a swarm as a manager."),
        _ => println!("This node joined a swarm as a worker."),
    }
    Ok(())
}

/// `swarm join-token`: prints the join token of `which` (or the command that uses it), rotated
/// first with `rotate`.
async fn join_token(
    host: &DaemonHost,
    which: Role,
    quiet: bool,
    rotate: bool,
) -> Result<(), Failure> {
    if rotate {
        call(
            host,
            ClusterCall::JoinToken {
                role: which,
                rotate: true,
            },
        )
        .await?;
        if !quiet {
            println!("Successfully rotated {which} join token.\n");
        }
    }
    if quiet {
        println!("{}", token(host, which).await?);
    } else {
        print_join_command(host, which).await?;
    }
    Ok(())
}

/// `swarm update`: changes the cluster's settings; prints the unlock key when autolock is
/// turned on.
async fn update(host: &DaemonHost, args: SwarmUpdateArgs) -> Result<(), Failure> {
    let autolock = args.autolock;
    let was_locking = if autolock == Some(true) {
        !unlock_key(host, false).await?.is_empty()
    } else {
        false
    };
    call(host, ClusterCall::Update(args)).await?;
    println!("Swarm updated.");
    if autolock == Some(true) && !was_locking {
        print_unlock_key(&unlock_key(host, false).await?);
    }
    Ok(())
}

/// `swarm unlock`: gives a locked manager the unlock key.
async fn unlock(host: &DaemonHost) -> Result<(), Failure> {
    let state = crate::commands::info::local(host).await?.state;
    match state.as_str() {
        "locked" => {}
        "inactive" => return Err(Failure("This node is not part of a swarm".into())),
        _ => return Err(Failure("Error: swarm is not locked".into())),
    }
    let key = read_unlock_key()?;
    call(host, Call::Unlock { key }).await?;
    Ok(())
}

/// `swarm unlock-key`: prints the unlock key, rotated first with `rotate`.
async fn manage_unlock_key(host: &DaemonHost, quiet: bool, rotate: bool) -> Result<(), Failure> {
    if rotate {
        let key = unlock_key(host, true).await?;
        if !quiet {
            println!("Successfully rotated manager unlock key.\n");
            print_unlock_key(&key);
        } else {
            println!("{key}");
        }
        return Ok(());
    }
    let key = unlock_key(host, false).await?;
    if key.is_empty() {
        return Err(Failure("no unlock key is set".into()));
    }
    if quiet {
        println!("{key}");
    } else {
        print_unlock_key(&key);
    }
    Ok(())
}

/// `swarm ca`: prints the root CA, rotated first with `rotate` (waiting for the rotation to
/// converge unless `detach`).
async fn ca(
    host: &DaemonHost,
    rotate: bool,
    cert_expiry: Option<u64>,
    detach: bool,
    quiet: bool,
) -> Result<(), Failure> {
    let cluster: Cluster = serde_json::from_value(
        call(
            host,
            ClusterCall::Ca {
                rotate,
                cert_expiry_s: cert_expiry,
            },
        )
        .await?,
    )?;
    if rotate && !detach {
        let done = rotation_progress(host, quiet).await?;
        print!("{}", done.tls_info.trust_root);
    } else {
        print!("{}", cluster.tls_info.trust_root);
    }
    Ok(())
}

/// How far a root rotation has come: nodes whose certificate the new root's key signed, and
/// nodes that trust only the new root (none until the rotation is over).
fn rotated(cluster: &Cluster, nodes: &[Node]) -> (usize, usize) {
    let certificates = nodes
        .iter()
        .filter(|n| {
            n.description.tls_info.cert_issuer_public_key == cluster.tls_info.cert_issuer_public_key
        })
        .count();
    let roots = if cluster.root_rotation_in_progress {
        0
    } else {
        nodes
            .iter()
            .filter(|n| n.description.tls_info.trust_root == cluster.tls_info.trust_root)
            .count()
    };
    (certificates, roots)
}

/// Waits until a root rotation has converged, showing Docker's progress lines; the cluster at
/// the end.
async fn rotation_progress(host: &DaemonHost, quiet: bool) -> Result<Cluster, Failure> {
    use std::io::IsTerminal as _;
    let terminal = std::io::stdout().is_terminal();
    let mut last = None;
    loop {
        let cluster: Cluster = serde_json::from_value(call(host, ClusterCall::Inspect).await?)?;
        let nodes: Vec<Node> = serde_json::from_value(call(host, ClusterCall::NodeList).await?)?;
        let (certificates, roots) = rotated(&cluster, &nodes);
        let total = nodes.len();
        let finished =
            !cluster.root_rotation_in_progress && certificates == total && roots == total;
        let lines = format!(
            "desired root digest: {}\n  rotated TLS certificates:  {certificates}/{total} nodes\n  rotated CA certificates:   {roots}/{total} nodes\n",
            cluster.tls_info.digest
        );
        if !quiet && last.as_ref() != Some(&lines) {
            if terminal && last.is_some() {
                // Back over the three lines to redraw them.
                print!("\x1b[3A\x1b[J");
            }
            print!("{lines}");
            last = Some(lines);
        }
        if finished {
            return Ok(cluster);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(seconds("5s"), Ok(5));
        assert_eq!(seconds("2m"), Ok(120));
        assert_eq!(seconds("7"), Ok(7));
        assert_eq!(seconds("2160h0m0s"), Ok(2160 * 3600));
        assert_eq!(seconds("1h30m"), Ok(5400));
        assert!(seconds("0s").unwrap_err().contains("at least 1s"));
        assert!(seconds("5x").unwrap_err().contains("units"));
        assert!(seconds("fast").unwrap_err().contains("invalid duration"));
        assert!(
            seconds("99999999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
        assert!(
            seconds("9999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
    }
}
