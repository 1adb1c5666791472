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
//! The modules: [`store`], the typed object store (versions are raft indices, change sets
//! applied whole or refused, watches from an index); [`raft`], openraft over a durable log and
//! snapshots, with batched proposals and mutual-TLS transport; [`orchestrator`], the leader's
//! reconcile pass (orchestrate, reap, trim history, allocate, schedule) over the store's view,
//! with [`scheduler`] and [`allocator`]; [`dispatcher`], each node's assignment computed from
//! the store; [`ca`], the root CA, node certificates and join tokens; [`tls`], the rustls
//! configurations (pinned-digest join, role names) and the peer identity every service checks;
//! [`manager`], a manager: its gRPC services, forwarding to the leader, the user's calls,
//! membership, liveness; [`addr`], how `--advertise-addr`, `--listen-addr` and
//! `--data-path-addr` resolve; [`durable`], the one writer of durable files; [`events`] and
//! [`metrics`], what the managers show of themselves. Start with [`manager::Manager`];
//! docs/control.md has the design and the measurements, docs/life-of-a-service.md one service
//! followed end to end.

pub mod addr;
pub mod allocator;
pub mod ca;
pub mod dispatcher;
pub mod durable;
pub mod events;
pub mod keys;
pub mod limits;
pub mod manager;
pub mod metrics;
pub mod orchestrator;
pub mod raft;
pub mod scheduler;
pub mod store;
pub mod tls;
