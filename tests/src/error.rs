//! What goes wrong in the lab ([`LabError`]), and where the project's binaries are
//! ([`binary`]): what the lab, the Docker Engine's helpers and the benchmarks share.

use std::io;
use std::path::{Path, PathBuf};

/// What went wrong building, using or removing a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab creates network namespaces: it needs root.
    #[error("the lab needs root: it creates network namespaces (run as root or with sudo)")]
    NotRoot,
    /// A lab spec that cannot be built.
    #[error("a lab has 1 to 239 nodes, not {0}")]
    Nodes(usize),
    /// `lab down` of a lab that does not exist.
    #[error("there is no lab {0}: `cargo xtask lab status` lists them")]
    NoSuchLab(String),
    /// Every ID is taken.
    #[error("no free lab ID in 1-250: remove old labs with `cargo xtask lab down --all`")]
    NoFreeId,
    /// `SHOAL_BENCH_LINKS` names no kind of link.
    #[error(
        "SHOAL_BENCH_LINKS is {0:?}: it takes `wire-like` (the default) or `plain` (veth pairs)"
    )]
    BenchLinks(String),
    /// A command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation.
        what: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A binary of the project is not built.
    #[error(
        "{name} is not built ({path}): run `cargo build --bins` first (`cargo xtask test` does)"
    )]
    NotBuilt {
        /// The binary.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A wait timed out.
    #[error("{0}")]
    Timeout(String),
    /// Teardown left something behind.
    #[error("lab {prefix} was not fully removed: {leftovers}")]
    Leftovers {
        /// The lab.
        prefix: String,
        /// What is left.
        leftovers: String,
    },
    /// A lab record that cannot be read.
    #[error("lab record {path}: {reason}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

pub(crate) fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// The path of the project's binary `name` (`shoald`, `shoal`): `$SHOAL_BIN_DIR/<name>` if set,
/// else next to the running executable's profile directory (`target/<profile>/<name>`).
pub fn binary(name: &str) -> Result<PathBuf, LabError> {
    let path = match std::env::var_os("SHOAL_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => {
            let exe =
                std::env::current_exe().map_err(io_error("finding the running executable"))?;
            // target/debug/deps/<test> or target/debug/<xtask>: the profile directory is the
            // first ancestor that is not `deps`.
            let profile_dir = exe
                .ancestors()
                .skip(1)
                .find(|d| d.file_name().is_some_and(|n| n != "deps"))
                .unwrap_or(Path::new("."));
            profile_dir.join(name)
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::NotBuilt {
            name: name.into(),
            path,
        })
    }
}
