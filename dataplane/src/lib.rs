//! Shoal's userspace data path: it loads the eBPF programs (`ebpf/programs`, embedded at build time)
//! ([`bpf`]), builds overlay networks ([`overlay`]) and runs the routing mesh ([`mesh`]).
//!
//! ```text
//!   agent ──> node::DesiredState ── resolve ──> overlay: Layout (networks, tunnel, way out)
//!                                  │               -> plan -> Dataplane (rtnetlink) + WireGuard engine
//!                                  └──────────> mesh: MeshPlan -> mesh::Mesh: Maglev tables,
//!                                                  map programming, XDP/TC/cgroup attach (aya)
//!   common: MAC addresses, the node's facts (Host), problems; shared by all three
//! ```
//!
//! Overlays: a declarative desired state, validated, planned against what the kernel holds and
//! applied over rtnetlink (namespaces, bridge, VXLAN, veth, FDB, neighbours), with boringtun's
//! `Tunn` behind Shoal's own TUN/UDP engine for encrypted networks. Start with
//! [`overlay::Dataplane::apply`], which also applies the state's `mesh` section through
//! [`mesh::Mesh::apply`]. For eBPF on its own: [`bpf::Programs::load`] and
//! [`bpf::Programs::test_run`] (BPF_PROG_TEST_RUN).
//! The data plane never talks to raft: it is driven by a desired state handed to it.

pub mod bpf;
pub mod common;
pub mod mesh;
pub mod node;
pub mod overlay;
