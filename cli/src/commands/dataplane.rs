//! `shoal dataplane apply|inspect`: drive a node's data plane directly with a desired state, the
//! way the control plane will (see docs/dataplane.md for the state's fields).

use std::io::Read;
use std::path::PathBuf;

use shoal_api::{
    DaemonHost, connect,
    v1::{DataplaneApplyRequest, DataplaneInspectRequest, daemon_client::DaemonClient},
};

use crate::{Failure, commands::rpc_failure};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Converge this node's data plane to the desired state in FILE ("-" for standard input)
    Apply {
        /// A JSON desired state
        file: PathBuf,
        /// Print nothing but errors
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show what the data plane holds, read back from the kernel, as JSON
    Inspect,
}

pub(crate) async fn run(host: &DaemonHost, command: Command) -> Result<(), Failure> {
    match command {
        Command::Apply { file, quiet } => {
            let state_json = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| Failure(format!("reading the state from standard input: {e}")))?;
                text
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| Failure(format!("reading {}: {e}", file.display())))?
            };
            let mut client = DaemonClient::new(connect(host).await?);
            let changes = client
                .dataplane_apply(DataplaneApplyRequest { state_json })
                .await
                .map_err(|status| rpc_failure(host, &status))?
                .into_inner()
                .changes;
            if !quiet {
                if changes.is_empty() {
                    println!(
                        "The data plane already matches {}: nothing changed.",
                        file.display()
                    );
                } else {
                    for change in &changes {
                        println!("{change}");
                    }
                    println!(
                        "{} change{} applied.",
                        changes.len(),
                        if changes.len() == 1 { "" } else { "s" }
                    );
                }
            }
            Ok(())
        }
        Command::Inspect => {
            let mut client = DaemonClient::new(connect(host).await?);
            let json = client
                .dataplane_inspect(DataplaneInspectRequest {})
                .await
                .map_err(|status| rpc_failure(host, &status))?
                .into_inner()
                .json;
            println!("{json}");
            Ok(())
        }
    }
}
