//! Shoal's userspace data path: it loads the eBPF programs (`ebpf/programs`, embedded at build time)
//! and programs their maps ([`bpf`]), and it builds overlay networks ([`overlay`]): a declarative
//! desired state, validated, planned against what the kernel holds and applied over rtnetlink
//! (namespaces, bridge, VXLAN, veth, FDB, neighbours), with boringtun's `Tunn` behind Shoal's own
//! TUN/UDP engine for encrypted networks.
//!
//! ```text
//!   agent ──> dataplane ──> bpf::Programs ──> kernel (BPF syscalls via aya)
//!                  │              └── map layouts from shoal-abi (shared with ebpf/programs)
//!                  └──> overlay: DesiredState -> Layout -> plan -> Dataplane (rtnetlink) + WireGuard engine
//! ```
//!
//! For overlays start with [`overlay`] and [`overlay::Dataplane::apply`]. For eBPF start with [`bpf`]: [`bpf::Programs::load`], running a program on a packet with
//! [`bpf::Programs::test_run`] (BPF_PROG_TEST_RUN), and reading the parser's counters.
//! The data plane never talks to raft: it is driven by a desired state handed to it.

pub mod bpf;
pub mod mesh;
pub mod overlay;
