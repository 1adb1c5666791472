//! Shoal's userspace data path: it loads the eBPF programs (`ebpf/programs`, embedded at build time)
//! and programs their maps; the netlink executor for overlays (veth, bridge, VXLAN, FDB) and the
//! WireGuard engine join it with the data-plane issues.
//!
//! ```text
//!   agent ──> dataplane ──> bpf::Programs ──> kernel (BPF syscalls via aya)
//!                  │              └── map layouts from shoal-abi (shared with ebpf/programs)
//!                  └──> (next) planner + netlink executor, WireGuard
//! ```
//!
//! Start with [`bpf`]: [`bpf::Programs::load`], running a program on a packet with
//! [`bpf::Programs::test_run`] (BPF_PROG_TEST_RUN), and reading the parser's counters.
//! The data plane never talks to raft: it is driven by a desired state handed to it.

pub mod bpf;
pub mod overlay;
