//! Builds the eBPF object (`ebpf/programs`) with the nightly toolchain and bpf-linker and puts it in
//! `OUT_DIR`, where `src/bpf.rs` embeds it: a plain `cargo build` needs no manual step. When the
//! toolchain is missing, the build stops with an error naming `cargo xtask setup`.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process,
};

use shoal_ebpf_build::{Output, build, sources};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("dataplane/ lives in the workspace");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    for source in sources(workspace) {
        println!("cargo:rerun-if-changed={}", source.display());
    }
    let target_dir = cargo_target_dir(&out_dir)
        .unwrap_or_else(|| out_dir.clone())
        .join("ebpf");
    match build(workspace, &target_dir, Output::Stderr) {
        Ok(object) => {
            let dest = out_dir.join("shoal.bpf.o");
            if let Err(e) = fs::copy(&object, &dest) {
                eprintln!(
                    "error: copying {} to {}: {e}",
                    object.display(),
                    dest.display()
                );
                process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            process::exit(1);
        }
    }
}

/// The target directory of the outer build: the nearest ancestor of `OUT_DIR` holding cargo's
/// `CACHEDIR.TAG` (works with `CARGO_TARGET_DIR`, `--target-dir` and `build.target-dir` alike).
fn cargo_target_dir(out_dir: &Path) -> Option<PathBuf> {
    out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
}
