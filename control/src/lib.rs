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
//! This crate is empty on purpose until the control-plane issue lands (Control plane I: raft
//! store, CA and join tokens, membership); its API types already live in `control/api`
//! (`shoal-api`), which the CLI uses on its own. The layout it will follow is SwarmKit's:
//! `store` (typed objects, `view`/`update` transactions, watches from an index), `raft`,
//! `ca`, `orchestrator`, `scheduler`, `allocator`, `dispatcher`, `api`.
