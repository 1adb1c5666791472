//! `shoal network create|ls|inspect|rm`.

use serde::Serialize;
use shoal_api::call::NetworkCall;
use shoal_api::{
    DaemonHost,
    service::{Driver, ENCRYPTED_OPTION, Ipam, IpamConfig, Network, NetworkSpec},
};

use crate::{
    Failure,
    commands::{pairs, swarm::call},
    output::Format,
};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create a network
    Create {
        /// Driver to manage the network
        #[arg(short, long, default_value = "overlay")]
        driver: String,
        /// Subnet in CIDR format (e.g. 10.1.0.0/24)
        #[arg(long)]
        subnet: Option<String>,
        /// Gateway for the subnet
        #[arg(long)]
        gateway: Option<String>,
        /// Set driver specific options (encrypted, com.docker.network.driver.mtu=N)
        #[arg(short, long, value_name = "KEY[=VALUE]")]
        opt: Vec<String>,
        /// Enable manual container attachment
        #[arg(long)]
        attachable: bool,
        /// Restrict external access to the network
        #[arg(long)]
        internal: bool,
        /// Set metadata on a network (key=value)
        #[arg(long)]
        label: Vec<String>,
        /// The network's name
        name: String,
    },
    /// List networks
    #[command(alias = "list")]
    Ls {
        /// Only display network IDs
        #[arg(short, long)]
        quiet: bool,
        /// Format the output: json (one object per line), or a Go template
        /// ({{.ID}}, table {{.Name}}\t{{.ID}})
        #[arg(long)]
        format: Option<Format>,
    },
    /// Display detailed information on one or more networks
    Inspect {
        /// Format the output: json, or a Go template ({{.ID}}, {{json .Spec}})
        #[arg(short, long)]
        format: Option<Format>,
        /// Networks (name, ID or ID prefix)
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove one or more networks
    #[command(alias = "remove")]
    Rm {
        /// Networks (name, ID or ID prefix)
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

/// One `network ls --format json` line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    driver: &'a str,
    scope: &'static str,
}

pub(crate) async fn run(host: &DaemonHost, command: Command) -> Result<(), Failure> {
    match command {
        Command::Create {
            driver,
            subnet,
            gateway,
            opt,
            attachable,
            internal,
            label,
            name,
        } => {
            let options = pairs(&opt, "option")?;
            if let Some((k, _)) = options
                .iter()
                .find(|(k, v)| k == ENCRYPTED_OPTION && !v.is_empty() && v != "true")
            {
                return Err(Failure(format!(
                    "invalid option {k:?}: encrypted takes no value"
                )));
            }
            let spec = NetworkSpec {
                name,
                labels: pairs(&label, "label")?.into_iter().collect(),
                driver_configuration: Driver {
                    name: driver,
                    options: options
                        .into_iter()
                        .map(|(k, v)| {
                            if k == ENCRYPTED_OPTION {
                                (k, String::new())
                            } else {
                                (k, v)
                            }
                        })
                        .collect(),
                },
                ingress: false,
                internal,
                attachable,
                ipam_options: Ipam {
                    configs: if subnet.is_some() || gateway.is_some() {
                        vec![IpamConfig {
                            subnet: subnet.unwrap_or_default(),
                            gateway: gateway.unwrap_or_default(),
                        }]
                    } else {
                        Vec::new()
                    },
                },
            };
            let id: String = serde_json::from_value(call(host, NetworkCall::Create(spec)).await?)?;
            println!("{id}");
        }
        Command::Ls { quiet, format } => {
            let networks: Vec<Network> =
                serde_json::from_value(call(host, NetworkCall::List).await?)?;
            if quiet {
                for n in &networks {
                    println!("{}", n.id);
                }
                return Ok(());
            }
            let rows: Vec<Row<'_>> = networks
                .iter()
                .map(|n| Row {
                    id: &n.id,
                    name: &n.spec.name,
                    driver: &n.spec.driver_configuration.name,
                    scope: "swarm",
                })
                .collect();
            if crate::output::print_rows(format.as_ref(), &rows)? {
                return Ok(());
            }
            let cells: Vec<[String; 4]> = rows
                .iter()
                .map(|r| {
                    [
                        r.id[..r.id.len().min(12)].to_owned(),
                        r.name.into(),
                        r.driver.into(),
                        r.scope.into(),
                    ]
                })
                .collect();
            print!(
                "{}",
                crate::output::table(["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &cells)
            );
        }
        Command::Inspect { format, networks } => {
            let found: Vec<Network> =
                serde_json::from_value(call(host, NetworkCall::Inspect { ids: networks }).await?)?;
            crate::output::print_objects(format.as_ref(), &found)?;
        }
        Command::Rm { networks } => {
            call(
                host,
                NetworkCall::Remove {
                    ids: networks.clone(),
                },
            )
            .await?;
            for n in networks {
                println!("{n}");
            }
        }
    }
    Ok(())
}
