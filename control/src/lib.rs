//! Shoal's control plane, embedded in every manager's `shoald`: the cluster state in a Raft store
//! (openraft, no external database), and the loops that turn declared services into tasks on
//! nodes. It never touches netlink; `agent` applies what it decides through `dataplane`.
//!
//! ```text
//!   API (tonic, mTLS) ─> raft proposal ─> store commit ─> watch events
//!        │                                                   │
//!        │                 orchestrator ─> allocator ─> scheduler ─> dispatcher ─> agents
//!        └── CA: root at `swarm init`, node certificates, join tokens
//! ```
//!
//! What exists so far: [`ca`], the root CA, node certificates and join tokens (generation,
//! parsing, signing); [`store`], the typed object store (versions are raft indices, stale
//! writes refused, watches from an index), not yet fed by raft; [`addr`], how `--advertise-addr`,
//! `--listen-addr` and `--data-path-addr` resolve. The rest lands with the control-plane issue (Control plane I: raft store,
//! membership, liveness); its API types already live in `control/api` (`shoal-api`). The layout
//! it follows is SwarmKit's: `store` (typed objects, `view`/`update` transactions, watches from an
//! index), `raft`, `ca`, `orchestrator`, `scheduler`, `allocator`, `dispatcher`, `api`.

pub mod addr;
pub mod ca;
pub mod manager;
pub mod raft;
pub mod store;
pub mod tls;
