//! `shoal secret create|ls|inspect|rm` and `shoal config create|ls|inspect|rm`.

use shoal_api::call::DataCall;
use std::io::Read as _;

use base64::Engine as _;
use serde::Serialize;
use shoal_api::{
    DaemonHost,
    secret::{DataKind, DataObject, DataSpec},
};

use crate::{Failure, commands::swarm::call, output::Format};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create one from a file or from standard input ("-") as its content
    Create {
        /// Labels (key=value)
        #[arg(short, long)]
        label: Vec<String>,
        /// Its name
        name: String,
        /// The file with its content, or "-" for standard input
        file: String,
    },
    /// List them
    #[command(alias = "list")]
    Ls {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        /// Format the output: json (one object per line), or a Go template
        /// ({{.ID}}, table {{.Name}}\t{{.ID}})
        #[arg(long)]
        format: Option<Format>,
    },
    /// Display detailed information on one or more (a secret's data is never shown)
    Inspect {
        /// Format the output: json, or a Go template ({{.ID}}, {{json .Spec}})
        #[arg(short, long)]
        format: Option<Format>,
        /// Names, IDs or ID prefixes
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove one or more (not while a service uses it)
    #[command(alias = "remove")]
    Rm {
        /// Names, IDs or ID prefixes
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// One `ls --format json` line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    created_at: &'a str,
    updated_at: &'a str,
}

fn read_content(file: &str, kind: DataKind) -> Result<Vec<u8>, Failure> {
    let mut data = Vec::new();
    let limit = kind.max_data() as u64 + 1;
    if file == "-" {
        std::io::stdin().take(limit).read_to_end(&mut data)?;
    } else {
        std::fs::File::open(file)
            .map_err(|e| Failure(format!("error reading content from {file:?}: {e}")))?
            .take(limit)
            .read_to_end(&mut data)?;
    }
    if data.is_empty() || data.len() > kind.max_data() {
        return Err(Failure(format!(
            "{kind} data must be larger than 0 and less than {} bytes",
            kind.max_data()
        )));
    }
    Ok(data)
}

pub(crate) async fn run(
    host: &DaemonHost,
    kind: DataKind,
    command: Command,
) -> Result<(), Failure> {
    match command {
        Command::Create { label, name, file } => {
            let labels = crate::commands::pairs(&label, "label")?
                .into_iter()
                .collect();
            let data = read_content(&file, kind)?;
            let spec = DataSpec {
                name,
                labels,
                data: Some(base64::engine::general_purpose::STANDARD.encode(data)),
            };
            let id: String =
                serde_json::from_value(call(host, DataCall::Create { kind, spec }).await?)?;
            println!("{id}");
        }
        Command::Ls { quiet, format } => {
            let all: Vec<DataObject> =
                serde_json::from_value(call(host, DataCall::List { kind }).await?)?;
            if quiet {
                for o in &all {
                    println!("{}", o.id);
                }
                return Ok(());
            }
            let rows: Vec<Row<'_>> = all
                .iter()
                .map(|o| Row {
                    id: &o.id,
                    name: &o.spec.name,
                    created_at: &o.created_at,
                    updated_at: &o.updated_at,
                })
                .collect();
            if crate::output::print_rows(format.as_ref(), &rows)? {
                return Ok(());
            }
            let cells: Vec<[String; 4]> = rows
                .iter()
                .map(|r| {
                    [
                        r.id.to_owned(),
                        r.name.to_owned(),
                        crate::output::ago(r.created_at),
                        crate::output::ago(r.updated_at),
                    ]
                })
                .collect();
            print!(
                "{}",
                crate::output::table(["ID", "NAME", "CREATED", "UPDATED"], &cells)
            );
        }
        Command::Inspect { format, names } => {
            let found: Vec<DataObject> =
                serde_json::from_value(call(host, DataCall::Inspect { kind, ids: names }).await?)?;
            crate::output::print_objects(format.as_ref(), &found)?;
        }
        Command::Rm { names } => {
            call(
                host,
                DataCall::Remove {
                    kind,
                    ids: names.clone(),
                },
            )
            .await?;
            for n in names {
                println!("{n}");
            }
        }
    }
    Ok(())
}
