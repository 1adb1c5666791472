//! `cargo xtask setup`: checks each requirement and installs only what is missing, so a second
//! run takes seconds.
//!
//! - apt packages the tests use (the lab's `ip` and `ping`, `bpftool` for the leftovers check,
//!   `tcpdump` for the overlay captures, `iperf3` for the overlay benchmark, the Docker Engine for
//!   the `docker` executor, Prometheus for the metrics test, Chromium for the web view's);
//! - the nightly toolchain with `rust-src` (`-Z build-std=core` for `bpfel-unknown-none`);
//! - `bpf-linker`, built against the nightly's own libLLVM as MACHINE.md describes: the library is
//!   linked into `$CARGO_HOME/shoal-llvm/<major>/lib` and the binary lands in `$CARGO_HOME/bin`;
//!   it is rebuilt only when it no longer runs (a nightly update moved its libLLVM);
//! - `cargo-nextest`.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use shoal_ebpf_build::{
    TOOLCHAIN, bpf_linker_version, cargo_bin_dir, check_toolchain, has_rust_src, nightly_sysroot,
};

use crate::process::{cargo, is_root, output, probe, run as run_command};

/// Debian packages the build and the tests need, and what for.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip: the lab's namespaces, links and addresses"),
    ("iputils-ping", "ping: reachability checks in the lab"),
    (
        "bpftool",
        "bpftool: checking no BPF program is left after the tests",
    ),
    (
        "tcpdump",
        "tcpdump: the overlay tests' captures on the data and public interfaces",
    ),
    ("iperf3", "iperf3: the overlay benchmark"),
    ("curl", "curl: the routing mesh tests' HTTP client"),
    (
        "nftables",
        "nft: plain overlays' VXLAN filter, and the routing mesh benchmark's baseline",
    ),
    (
        "ethtool",
        "ethtool: the lab's public links compute checksums as wires do",
    ),
    ("etcd-server", "etcd: the raft benchmark's baseline"),
    (
        "docker.io",
        "dockerd: the docker executor's test and the demo's containers",
    ),
    (
        "prometheus",
        "prometheus and promtool: the metrics test scrapes the lab's nodes",
    ),
    (
        "chromium",
        "chromium: the web view's test loads the page headless and takes screenshots",
    ),
];

/// The bpf-linker release that matches the machine's LLVM 22 (see MACHINE.md).
const BPF_LINKER: &str = "bpf-linker@0.13.0";

pub(crate) fn run() -> anyhow::Result<()> {
    apt_packages()?;
    nightly_with_rust_src()?;
    bpf_linker()?;
    nextest()?;
    check_toolchain().context("the eBPF toolchain is still incomplete after setup")?;
    eprintln!("setup: everything is in place");
    Ok(())
}

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f", "${Status}", package]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(package, _)| !installed(package))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        eprintln!("setup: apt packages present ({})", names(APT_PACKAGES));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "apt packages missing: {} (run `cargo xtask setup` as root, or apt-get install them)",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    let apt = |args: &[&str]| {
        let mut command = Command::new("apt-get");
        command
            .args(["-q", "-y", "-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    run_command(&mut apt(&["update"]))?;
    run_command(apt(&["install", "--no-install-recommends"]).args(&missing))?;
    Ok(())
}

fn names(packages: &[(&str, &str)]) -> String {
    packages
        .iter()
        .map(|(p, _)| *p)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The nightly toolchain's sysroot, if it is installed.
fn sysroot() -> anyhow::Result<Option<PathBuf>> {
    nightly_sysroot().map_err(|missing| anyhow::anyhow!("{missing}: install rustup first"))
}

fn nightly_with_rust_src() -> anyhow::Result<()> {
    let Some(sysroot) = sysroot()? else {
        eprintln!("setup: installing the {TOOLCHAIN} toolchain with rust-src");
        return run_command(Command::new("rustup").args([
            "toolchain",
            "install",
            TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    };
    if has_rust_src(&sysroot) {
        eprintln!("setup: {TOOLCHAIN} toolchain with rust-src present");
        return Ok(());
    }
    eprintln!("setup: adding rust-src to {TOOLCHAIN}");
    run_command(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        TOOLCHAIN,
    ]))
}

/// The nightly's libLLVM (`libLLVM.so.22.1-rust-1.97.0-nightly`) and its major version.
fn nightly_llvm() -> anyhow::Result<(PathBuf, u32)> {
    let lib = sysroot()?
        .context("the nightly toolchain is not installed")?
        .join("lib");
    let llvm = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let name = llvm
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let major = name
        .trim_start_matches("libLLVM.so.")
        .split(['.', '-'])
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no LLVM version in {name}"))?;
    Ok((llvm, major))
}

fn bpf_linker() -> anyhow::Result<()> {
    let why = match bpf_linker_version() {
        Ok(version) => {
            eprintln!("setup: {version} present");
            return Ok(());
        }
        Err(why) => why,
    };
    let (llvm, major) = nightly_llvm()?;
    eprintln!(
        "setup: bpf-linker {why}: building {BPF_LINKER} against {} (LLVM {major}; 1-4 minutes)",
        llvm.display()
    );
    // An LLVM "prefix" made of the nightly's own library; the binary's rpath points here.
    let prefix = cargo_home().join("shoal-llvm").join(major.to_string());
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for link in [
        lib.join("libLLVM.so"),
        lib.join(llvm.file_name().expect("a file")),
    ] {
        let _ = fs::remove_file(&link);
        symlink(&llvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    run_command(
        cargo()
            .args(["install", BPF_LINKER, "--locked", "--force"])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix)
            .env_remove("CARGO_TARGET_DIR"),
    )?;
    match bpf_linker_version() {
        Ok(version) => {
            eprintln!(
                "setup: {version} installed in {}",
                cargo_bin_dir().display()
            );
            Ok(())
        }
        Err(why) => bail!("bpf-linker was built but {why}"),
    }
}

fn cargo_home() -> PathBuf {
    cargo_bin_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn nextest() -> anyhow::Result<()> {
    if probe(cargo().args(["nextest", "--version"])) {
        eprintln!("setup: cargo-nextest present");
        return Ok(());
    }
    eprintln!("setup: installing cargo-nextest");
    run_command(cargo().args(["install", "cargo-nextest", "--locked"]))
}
