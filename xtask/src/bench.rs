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
    /// iperf3 across two lab nodes: underlay, plain overlay, encrypted overlay, boringtun-cli
    Overlay,
    /// The routing mesh: ns per packet (BPF_PROG_TEST_RUN) and, on a 3-node lab, TCP
    /// connections and UDP packets per second vs nftables DNAT and a userspace proxy
    Mesh,
    /// Replicated writes per second and latency on 3 managers (1 and 64 clients) vs etcd
    Raft,
    /// Scheduler placements per second: 100,000 tasks on 1,000 simulated nodes, in-process
    Sched,
    /// Seconds from `service create --replicas N` to N running on a 3-node lab (N = 10, 100)
    Converge,
    /// What attacks cost: encrypted overlay throughput with and without a flood of 200,000
    /// forged WireGuard handshakes a second (3-node lab)
    Hardening,
    /// Connections per second and round trips from a task to a service VIP, and from a node to
    /// a published port on itself, vs directly to the task (3-node lab)
    Eastwest,
    /// Seconds for a rolling update of 100 tasks (parallelism 10) and the requests it failed,
    /// vs Docker's swarm mode on the same engine
    Update,
    /// Docker Engine API requests per second (`GET /services`, `GET /tasks`) on 100 services
    /// and 1,000 tasks, vs Docker's swarm mode on the same engine
    Api,
    /// What observability costs: the mesh's per-service counters per packet (with vs without,
    /// BPF_PROG_TEST_RUN) and a `/metrics` scrape of a node with 100 services and 1,000 tasks
    Metrics,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Self::Parser => "parser",
            Self::Overlay => "overlay",
            Self::Mesh => "mesh",
            Self::Raft => "raft",
            Self::Sched => "sched",
            Self::Converge => "converge",
            Self::Hardening => "hardening",
            Self::Eastwest => "eastwest",
            Self::Update => "update",
            Self::Api => "api",
            Self::Metrics => "metrics",
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
        Suite::Overlay => {
            // The daemons under test are release builds, like the benchmark itself.
            run_command(cargo().args(["build", "--release", "--bins"]))?;
            let boringtun = boringtun_cli()?;
            run_command(
                cargo()
                    .args(["bench", "--package", "shoal-tests", "--bench", "overlay"])
                    .env("SHOAL_BENCH_OUT", &out)
                    .env("BORINGTUN_CLI", boringtun),
            )?
        }
        Suite::Sched => run_command(
            cargo()
                .args(["bench", "--package", "shoal-control", "--bench", "sched"])
                .env("SHOAL_BENCH_OUT", &out),
        )?,
        Suite::Mesh
        | Suite::Raft
        | Suite::Converge
        | Suite::Hardening
        | Suite::Eastwest
        | Suite::Update
        | Suite::Api
        | Suite::Metrics => {
            run_command(cargo().args(["build", "--release", "--bins"]))?;
            run_command(
                cargo()
                    .args(["bench", "--package", "shoal-tests", "--bench", suite.name()])
                    .env("SHOAL_BENCH_OUT", &out),
            )?
        }
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

/// The baseline WireGuard implementation: stock `boringtun-cli`, installed with `cargo install`
/// when missing.
fn boringtun_cli() -> anyhow::Result<PathBuf> {
    let path = shoal_ebpf_build::cargo_bin_dir().join("boringtun-cli");
    if !path.is_file() {
        eprintln!("bench: installing boringtun-cli (the baseline)");
        run_command(cargo().args(["install", "--locked", "boringtun-cli@0.7.1"]))?;
    }
    Ok(path)
}
