//! `cargo xtask test`: the whole suite, as CI runs it (`.ci/run`).
//!
//! setup -> fmt check -> clippy (-D warnings) -> the architecture's measures (`cargo xtask
//! arch`) -> nextest over the workspace (unit tests, eBPF
//! fixtures through BPF_PROG_TEST_RUN, lab tests) -> doc tests -> nothing of the project left:
//! no lab (directory or namespace), no new link in the root namespace, no process running one of
//! the project's binaries, no BPF program named `shoal_*`, no container of a Shoal task.

use std::{fs, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::{
    process::{cargo, output, run as run_command},
    setup,
};

pub(crate) fn run(nextest_args: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    if !crate::process::is_root() {
        bail!(
            "the suite needs root: the lab creates network namespaces and the eBPF tests load programs"
        );
    }
    setup::run()?;
    let links_before = root_links()?;
    // Labs left by an earlier run that was killed.
    let swept = shoal_tests::sweep_orphans()?;
    if !swept.is_empty() {
        eprintln!("test: removed orphaned labs {}", swept.join(", "));
    }
    run_command(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run_command(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    crate::arch::run()?;
    // The lab tests start `shoald` and `shoal` from target/debug.
    run_command(cargo().args(["build", "--bins"]))?;
    let suite = run_command(
        cargo()
            .args(["nextest", "run", "--no-fail-fast"])
            .args(nextest_args),
    );
    let doc = if nextest_args.is_empty() {
        run_command(cargo().args(["test", "--doc", "--workspace", "--exclude", "shoal-ebpf"]))
    } else {
        Ok(())
    };
    let leftovers = leftovers(&links_before);
    eprintln!("test: finished in {:.0?}", started.elapsed());
    suite?;
    doc?;
    leftovers
}

/// Cgroups of exec tasks (`shoal-<task>` under a cgroup hierarchy) that outlived their task:
/// reported, and removed when empty.
fn task_cgroups() -> Vec<String> {
    let mut found = Vec::new();
    for root in shoal_tests::CGROUP_ROOTS {
        let Ok(entries) = fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("shoal-") {
                let path = entry.path();
                let removed = fs::remove_dir(&path).is_ok();
                found.push(format!(
                    "cgroup {}{}",
                    path.display(),
                    if removed { " (now removed)" } else { "" }
                ));
            }
        }
    }
    found
}

/// The links of the root namespace, by name.
fn root_links() -> anyhow::Result<Vec<String>> {
    shoal_tests::links(None, None).context("listing the root namespace's links")
}

/// Live processes (not zombies) running an executable from the workspace's target directory,
/// other than this one.
fn project_processes() -> Vec<String> {
    let target = crate::workspace_root().join("target");
    let me = std::process::id().to_string();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|entry| {
            let pid = entry.ok()?.file_name().into_string().ok()?;
            if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            exe.starts_with(&target)
                .then(|| format!("process {pid} ({})", exe.display()))
        })
        .collect()
}

/// Fails if the suite left anything of the project behind (see the module docs).
fn leftovers(links_before: &[String]) -> anyhow::Result<()> {
    let mut found = Vec::new();
    // A test killed by its timeout cannot drop its lab: report it, and remove it.
    found.extend(
        shoal_tests::sweep_orphans()?
            .into_iter()
            .map(|prefix| format!("lab {prefix} of a killed test (now removed)")),
    );
    let labs = shoal_tests::labs();
    found.extend(
        labs.iter()
            .filter(|lab| !lab.persistent)
            .map(|lab| format!("lab {}", lab.prefix)),
    );
    // Namespaces and mounts of a lab that no persistent lab (`lab up`, `demo`) owns.
    let kept: Vec<&str> = labs
        .iter()
        .filter(|lab| lab.persistent)
        .map(|lab| lab.prefix.as_str())
        .collect();
    found.extend(
        shoal_tests::Netns::list()
            .into_iter()
            .filter(|ns| {
                ns.starts_with("shoal") && !kept.iter().any(|k| ns.starts_with(&format!("{k}-")))
            })
            .map(|ns| format!("namespace {ns}")),
    );
    let programs = output(Command::new("bpftool").args(["prog", "show", "--json"]))
        .context("running bpftool prog show")?;
    let programs: serde_json::Value =
        serde_json::from_str(&programs).context("parsing bpftool's JSON")?;
    let links_after = root_links()?;
    found.extend(
        links_after
            .iter()
            .filter(|link| !links_before.contains(link))
            .map(|link| format!("link {link} in the root namespace")),
    );
    found.extend(project_processes());
    found.extend(task_cgroups());
    // Containers of the docker executor whose lab is gone.
    found.extend(
        shoal_tests::docker::task_containers()
            .into_iter()
            .filter(|c| {
                !kept
                    .iter()
                    .any(|k| c.contains(&format!(" /tmp/shoal-lab/{k}/")))
            })
            .map(|c| format!("container {c}")),
    );
    // Mount points a lab or a daemon left (nodes' mount namespaces, overlay namespaces).
    found.extend(
        fs::read_to_string("/proc/self/mountinfo")
            .context("reading /proc/self/mountinfo")?
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|target| {
                target.starts_with("/tmp/shoal-lab/")
                    && !kept
                        .iter()
                        .any(|k| target.starts_with(&format!("/tmp/shoal-lab/{k}/")))
            })
            .map(|target| format!("mount {target}")),
    );
    found.extend(
        programs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .filter(|name| name.starts_with("shoal_"))
            .map(|name| format!("BPF program {name}")),
    );
    if found.is_empty() {
        eprintln!(
            "test: nothing of the project is left (labs, namespaces, mounts, root links, processes, BPF programs)"
        );
        Ok(())
    } else {
        bail!("the tests left {}", found.join(", "))
    }
}
