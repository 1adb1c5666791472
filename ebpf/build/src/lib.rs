//! Builds Shoal's eBPF object (`ebpf/programs`) for `bpfel-unknown-none`: the one piece of code that
//! knows how, shared by `dataplane/build.rs` (so a plain `cargo build` embeds the object) and
//! `cargo xtask build-ebpf` / `cargo xtask setup` (so people can build and check it by hand).
//!
//! ```text
//!   dataplane/build.rs ─┐                        rustup run nightly cargo build
//!                       ├─> shoal-ebpf-build ──>   -p shoal-ebpf --target bpfel-unknown-none
//!   xtask build-ebpf  ──┘      │                   -Z build-std=core --release   (linker: bpf-linker)
//!                              └─ check_toolchain(): nightly + rust-src + a working bpf-linker,
//!                                 or an error naming `cargo xtask setup`
//! ```
//!
//! The programs crate is a member of the workspace (one `Cargo.lock`) but is built by a nested cargo
//! in its own target directory (`<target>/ebpf`): the outer cargo holds the lock on the main one.

use std::{
    env,
    ffi::OsString,
    fmt, io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The target the programs are built for.
pub const TARGET: &str = "bpfel-unknown-none";
/// The toolchain that builds them (`-Z build-std` is nightly-only).
pub const TOOLCHAIN: &str = "nightly";
/// The package holding the programs.
pub const PACKAGE: &str = "shoal-ebpf";
/// The binary target of [`PACKAGE`]: the object file's name.
pub const OBJECT: &str = "shoal";
/// The one command that installs everything this crate needs.
pub const SETUP_COMMAND: &str = "cargo xtask setup";

/// A part of the eBPF toolchain that is not there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// `rustup` is not on `PATH`.
    Rustup,
    /// No nightly toolchain.
    Nightly,
    /// The nightly toolchain has no `rust-src` (needed by `-Z build-std=core`).
    RustSrc,
    /// `bpf-linker` is absent or does not run (it links against the nightly's libLLVM).
    BpfLinker(String),
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rustup => write!(f, "rustup is not on PATH"),
            Self::Nightly => write!(f, "the {TOOLCHAIN} toolchain is not installed"),
            Self::RustSrc => write!(f, "the {TOOLCHAIN} toolchain has no rust-src component"),
            Self::BpfLinker(why) => write!(f, "bpf-linker {why}"),
        }
    }
}

/// Why the object could not be built.
#[derive(Debug)]
pub enum Error {
    /// Part of the toolchain is missing: run [`SETUP_COMMAND`].
    Toolchain(Vec<Missing>),
    /// A command could not be started.
    Spawn(String, io::Error),
    /// The nested cargo build failed (its output went to stderr).
    Build(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Toolchain(missing) => {
                write!(f, "the eBPF toolchain is incomplete: ")?;
                for (i, m) in missing.iter().enumerate() {
                    write!(f, "{}{m}", if i == 0 { "" } else { "; " })?;
                }
                write!(f, ". Install it with: {SETUP_COMMAND}")
            }
            Self::Spawn(what, e) => write!(f, "could not run {what}: {e}"),
            Self::Build(what) => write!(f, "building the eBPF programs failed: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Spawn(_, e) => Some(e),
            _ => None,
        }
    }
}

/// `$CARGO_HOME/bin`, where `cargo install` puts `bpf-linker`.
pub fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// `PATH` with [`cargo_bin_dir`] in front, so `bpf-linker` is found even when the caller's `PATH`
/// lacks it.
pub fn path_with_cargo_bin() -> OsString {
    let mut dirs = vec![cargo_bin_dir()];
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    env::join_paths(dirs).unwrap_or_default()
}

/// What cargo (or clippy) sets for a build script and its own compiler: inherited by a nested
/// cargo, it would point it at the outer toolchain (clippy's wrapper, stable rustc), change its
/// flags, or make the build look different from one started by xtask and rebuild for nothing.
/// User configuration (`CARGO_HOME`, `CARGO_HTTP_*`, registries, `CARGO_BUILD_JOBS`...) is kept.
fn set_by_outer_build(key: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "CARGO_PKG_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "CARGO_MANIFEST_",
        "CARGO_BIN_",
        "DEP_",
    ];
    const KEYS: &[&str] = &[
        "CARGO",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_CRATE_NAME",
        "CARGO_TARGET_DIR",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_RUSTC",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "RUSTDOC",
        "RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CLIPPY_ARGS",
        "CLIPPY_CONF_DIR",
        "HOST",
        "TARGET",
        "OUT_DIR",
        "OPT_LEVEL",
        "PROFILE",
        "DEBUG",
        "NUM_JOBS",
    ];
    KEYS.contains(&key) || PREFIXES.iter().any(|p| key.starts_with(p))
}

/// A command that runs `program` from the nightly toolchain, without what an outer cargo set.
fn nightly(program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, program]);
    for (key, _) in env::vars_os() {
        if key.to_str().is_some_and(set_by_outer_build) {
            cmd.env_remove(key);
        }
    }
    cmd.env("PATH", path_with_cargo_bin());
    cmd
}

/// The nightly toolchain's sysroot, if it is installed (`Err(Missing::Rustup)` without rustup).
pub fn nightly_sysroot() -> Result<Option<PathBuf>, Missing> {
    match nightly("rustc").args(["--print", "sysroot"]).output() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Missing::Rustup),
        Err(_) => Ok(None),
        Ok(out) if !out.status.success() => Ok(None),
        Ok(out) => Ok(Some(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim(),
        ))),
    }
}

/// Whether the toolchain at `sysroot` has `rust-src` (what `-Z build-std=core` compiles).
pub fn has_rust_src(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}

/// Checks that the nightly toolchain, its `rust-src` and a working `bpf-linker` are installed.
pub fn check_toolchain() -> Result<(), Error> {
    let mut missing = Vec::new();
    match nightly_sysroot() {
        Err(m) => missing.push(m),
        Ok(None) => missing.push(Missing::Nightly),
        Ok(Some(sysroot)) if !has_rust_src(&sysroot) => missing.push(Missing::RustSrc),
        Ok(Some(_)) => {}
    }
    if let Err(why) = bpf_linker_version() {
        missing.push(Missing::BpfLinker(why));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Toolchain(missing))
    }
}

/// `bpf-linker --version`, or why it does not run.
pub fn bpf_linker_version() -> Result<String, String> {
    let mut cmd = Command::new("bpf-linker");
    cmd.arg("--version").env("PATH", path_with_cargo_bin());
    match cmd.output() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err("is not installed".into()),
        Err(e) => Err(format!("could not be started: {e}")),
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).trim().into()),
        Ok(out) => Err(format!(
            "does not run ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// The sources whose change must rebuild the object (for `cargo:rerun-if-changed`).
pub fn sources(workspace: &Path) -> Vec<PathBuf> {
    vec![
        workspace.join("ebpf/programs/src"),
        workspace.join("ebpf/programs/Cargo.toml"),
        workspace.join("ebpf/abi/src"),
        workspace.join("ebpf/abi/Cargo.toml"),
        workspace.join("Cargo.lock"),
        // Holds `[profile.release.package.shoal-ebpf]`.
        workspace.join("Cargo.toml"),
    ]
}

/// Where the object of a build in `target_dir` ends up.
pub fn object_path(target_dir: &Path) -> PathBuf {
    target_dir.join(TARGET).join("release").join(OBJECT)
}

/// How the nested cargo's output is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Inherit the caller's stdout/stderr (xtask).
    Inherit,
    /// Send everything to the caller's stderr (a build script: cargo shows it on failure).
    Stderr,
}

/// Builds the programs in `workspace` into `target_dir` and returns the object's path.
pub fn build(workspace: &Path, target_dir: &Path, output: Output) -> Result<PathBuf, Error> {
    check_toolchain()?;
    let mut cmd = nightly("cargo");
    cmd.current_dir(workspace)
        .args([
            "build",
            "--locked",
            "--package",
            PACKAGE,
            "--bin",
            OBJECT,
            "--release",
        ])
        .args(["--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        // BTF makes the verifier's messages and `bpftool prog dump` readable.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        );
    if output == Output::Stderr {
        cmd.stdout(io::stderr()).stderr(Stdio::inherit());
    }
    let command_line = [cmd.get_program()]
        .into_iter()
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let status = cmd
        .status()
        .map_err(|e| Error::Spawn(command_line.clone(), e))?;
    if !status.success() {
        return Err(Error::Build(format!(
            "`{command_line}` exited with {status} (its errors are above)"
        )));
    }
    Ok(object_path(target_dir))
}
