//! `cargo xtask`: the project's tasks, in Rust so they run wherever cargo does.
//!
//! ```text
//!   setup        install what is missing (apt packages, nightly rust-src, bpf-linker, nextest)
//!   build-ebpf   build the eBPF object (dataplane/build.rs does the same on every build)
//!   test         setup, fmt, clippy, the whole suite with nextest, then a leftovers check
//!   lab          up | down | status: nodes in network namespaces (shoal_tests::Lab)
//!   demo         the main job: a 3-node lab with shoald on every node
//!   bench        <suite>: a figure and its baseline, measured in one run -> target/bench/<suite>.json
//!   arch         the architecture's measures: no function over 120 lines, no import circle
//! ```

mod arch;
mod bench;
mod lab;
mod process;
mod setup;
mod test;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Shoal's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what the build and the tests need and is missing (apt packages, nightly rust-src,
    /// bpf-linker, cargo-nextest); a second run only checks
    Setup,
    /// Build the eBPF programs (nightly + bpf-linker) into target/ebpf
    BuildEbpf,
    /// Run the whole test suite as CI does: setup, fmt, clippy, unit + eBPF + lab tests
    Test {
        /// Extra arguments for `cargo nextest run` (e.g. a test name filter)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        nextest_args: Vec<String>,
    },
    /// Bring labs up, down, or show them
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
    /// The main job: a 3-node lab with shoald in every node, and `shoal info` from each
    Demo {
        /// Remove the demo lab instead
        #[arg(long)]
        down: bool,
        /// Number of nodes
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Run a benchmark suite and write target/bench/<suite>.json
    Bench {
        /// The suite
        suite: bench::Suite,
    },
    /// Check the architecture's measures: no function over 120 lines and no import circle
    /// between the files of a crate (test code excepted); fails if there is one
    Arch,
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain on one line, without a backtrace: these errors are for people.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup => setup::run(),
        Task::BuildEbpf => {
            let root = workspace_root();
            let object = shoal_ebpf_build::build(
                &root,
                &root.join("target/ebpf"),
                shoal_ebpf_build::Output::Inherit,
            )?;
            println!("built {}", object.display());
            Ok(())
        }
        Task::Test { nextest_args } => test::run(&nextest_args),
        Task::Lab { command } => lab::run(command),
        Task::Demo { down, nodes } => lab::demo(down, nodes),
        Task::Bench { suite } => bench::run(suite),
        Task::Arch => arch::run(),
    }
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ is inside the workspace")
        .to_path_buf()
}
