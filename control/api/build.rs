//! Compiles `proto/*.proto` with protox (pure Rust: no `protoc` to install) and generates the
//! prost messages and tonic services.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/shoal/v1/cluster.proto", "proto/shoal/v1/raft.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    Ok(())
}
