//! `shoal swarm init|join|join-token|leave|update|inspect`.

use serde_json::Value;
use shoal_api::{
    DaemonHost, connect,
    swarm::{Call, Cluster, InitArgs, JoinArgs, Role, UpdateArgs},
    v1::{Frame, daemon_client::DaemonClient},
};

use crate::{Failure, commands::rpc_failure};

/// Sends one swarm call to the local daemon.
pub(crate) async fn call(host: &DaemonHost, call: &Call) -> Result<Value, Failure> {
    let mut client = DaemonClient::new(connect(host).await?);
    let json = serde_json::to_vec(call)?;
    let reply = client
        .swarm(Frame { json })
        .await
        .map_err(|status| rpc_failure(host, &status))?
        .into_inner();
    Ok(serde_json::from_slice(&reply.json)?)
}

/// A duration as Docker takes it (`5s`, `1m`, `500ms`, `1h`), in whole seconds.
fn seconds(value: &str) -> Result<u64, String> {
    let (number, unit) = value
        .find(|c: char| !c.is_ascii_digit())
        .map_or((value, "s"), |at| value.split_at(at));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {value:?}: expected e.g. 5s, 1m or 1h"))?;
    let s = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => {
            return Err(format!(
                "invalid duration {value:?}: the unit must be s, m or h"
            ));
        }
    };
    if s == 0 {
        return Err(format!(
            "invalid duration {value:?}: it must be at least 1s"
        ));
    }
    Ok(s)
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
    },
    /// Display detailed information on the swarm
    Inspect,
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
        &Call::JoinToken {
            role,
            rotate: false,
        },
    )
    .await?;
    Ok(token.as_str().unwrap_or_default().to_owned())
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
        } => {
            let node = call(
                host,
                &Call::Init(InitArgs {
                    advertise_addr,
                    listen_addr,
                    data_path_addr,
                    data_path_port,
                    dispatcher_heartbeat_s: dispatcher_heartbeat,
                    snapshot_interval,
                }),
            )
            .await?;
            println!(
                "Swarm initialized: current node ({}) is now a manager.\n",
                node.as_str().unwrap_or_default()
            );
            print_join_command(host, Role::Worker).await?;
            println!(
                "To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n"
            );
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
            let joined = call(
                host,
                &Call::Join(JoinArgs {
                    token,
                    remote,
                    advertise_addr,
                    listen_addr,
                    data_path_addr,
                }),
            )
            .await?;
            match joined.as_str() {
                Some("manager") => println!("This node joined a swarm as a manager."),
                _ => println!("This node joined a swarm as a worker."),
            }
        }
        Command::JoinToken {
            quiet,
            rotate,
            role: which,
        } => {
            let which = role(&which);
            if rotate {
                call(
                    host,
                    &Call::JoinToken {
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
        }
        Command::Leave { force } => {
            call(host, &Call::Leave { force }).await?;
            println!("Node left the swarm.");
        }
        Command::Update {
            dispatcher_heartbeat,
            snapshot_interval,
        } => {
            call(
                host,
                &Call::Update(UpdateArgs {
                    dispatcher_heartbeat_s: dispatcher_heartbeat,
                    snapshot_interval,
                }),
            )
            .await?;
            println!("Swarm updated.");
        }
        Command::Inspect => {
            let cluster: Cluster = serde_json::from_value(call(host, &Call::Inspect).await?)?;
            println!("{}", serde_json::to_string_pretty(&[cluster])?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(seconds("5s"), Ok(5));
        assert_eq!(seconds("2m"), Ok(120));
        assert_eq!(seconds("7"), Ok(7));
        assert!(seconds("0s").unwrap_err().contains("at least 1s"));
        assert!(seconds("5x").unwrap_err().contains("unit"));
        assert!(seconds("fast").unwrap_err().contains("invalid duration"));
    }
}
