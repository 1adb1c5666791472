//! `shoal dataplane apply|inspect`: drive a node's data plane directly with a desired state, the
//! way the control plane will (see docs/dataplane.md for the state's fields).

use std::io::Read;
use std::path::PathBuf;

use shoal_api::{DaemonHost, SHOAL_PREFIX};

use crate::Failure;

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
            let answer = crate::api::client(host)
                .post_raw(
                    &format!("{SHOAL_PREFIX}/dataplane/apply"),
                    state_json.into_bytes(),
                )
                .await?;
            let changes: Vec<String> = serde_json::from_value(answer["Changes"].clone())?;
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
            let observed = crate::api::client(host)
                .get(&format!("{SHOAL_PREFIX}/dataplane"))
                .await?;
            println!("{}", serde_json::to_string_pretty(&observed)?);
            Ok(())
        }
    }
}
