//! Running the commands a task is made of, showing each one as it starts.

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::workspace_root;

/// Prints `command` and runs it in the workspace root with inherited stdio; fails if it fails.
pub(crate) fn run(command: &mut Command) -> anyhow::Result<()> {
    command.current_dir(workspace_root());
    eprintln!("+ {}", display(command));
    let status = command
        .status()
        .with_context(|| format!("starting {}", display(command)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(command));
    }
    Ok(())
}

/// Runs `command` quietly and returns whether it succeeded (a probe: `--version` and the like).
pub(crate) fn probe(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `command` quietly and returns its stdout if it succeeded.
pub(crate) fn output(command: &mut Command) -> Option<String> {
    let out = command.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo` as the running cargo (`$CARGO`), falling back to the one on PATH.
pub(crate) fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The command line, for messages.
pub(crate) fn display(command: &Command) -> String {
    let mut parts = vec![command.get_program().to_string_lossy().into_owned()];
    parts.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}
