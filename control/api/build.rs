//! Compiles `proto/*.proto` with protox (pure Rust: no `protoc` to install) and generates the
//! prost messages and tonic services.

/// Messages that get `PartialOrd` and `Ord` besides prost's derives (which include `Eq` and
/// `Hash` where the fields allow).
const ORDERED: [&str; 5] = [
    "RemoteEndpoint",
    "PeerNode",
    "MeshBackend",
    "ServiceOnNetwork",
    "ReachableTask",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/shoal/v1/cluster.proto", "proto/shoal/v1/raft.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let mut config = tonic_prost_build::configure().emit_rerun_if_changed(false);
    // Messages of plain fields that the dispatcher uses as they are generated: it sorts and
    // deduplicates them.
    for message in ORDERED {
        config =
            config.type_attribute(format!(".shoal.v1.{message}"), "#[derive(PartialOrd, Ord)]");
    }
    config.compile_fds(descriptors)?;
    Ok(())
}
