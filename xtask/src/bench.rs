//! `cargo xtask bench <suite>`: each suite measures its figure and the baseline it is compared
//! with in one run, prints a table and writes `target/bench/<suite>.json` (a flat object of
//! metric name -> number).

use std::{fs, path::PathBuf};

use anyhow::Context as _;

use crate::{
    process::{cargo, run as run_command},
    setup, workspace_root,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Suite {
    /// The XDP packet parser vs an XDP_PASS program, through BPF_PROG_TEST_RUN
    Parser,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Self::Parser => "parser",
        }
    }
}

pub(crate) fn run(suite: Suite) -> anyhow::Result<()> {
    setup::run()?;
    let out = output_path(suite);
    match suite {
        Suite::Parser => run_command(
            cargo()
                .args(["bench", "--package", "shoal-dataplane", "--bench", "parser"])
                .env("SHOAL_BENCH_OUT", &out),
        )?,
    }
    let json = fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    let figures: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("parsing {}", out.display()))?;
    anyhow::ensure!(
        figures.as_object().is_some_and(|o| !o.is_empty()),
        "{} holds no figures",
        out.display()
    );
    println!("{}: {json}", out.display());
    Ok(())
}

fn output_path(suite: Suite) -> PathBuf {
    workspace_root()
        .join("target/bench")
        .join(format!("{}.json", suite.name()))
}
