//! Shoal's API surface, shared by the `shoal` CLI, the `shoald` daemon and the tests: the protobuf
//! messages and gRPC services (generated from `proto/` by tonic + prost), the daemon address
//! ([`DaemonHost`], `-H unix://PATH`), and the client that reaches a daemon over its unix socket.
//!
//! ```text
//!   shoal (cli) ──connect()──> unix socket ──> shoald: v1::daemon_server::Daemon
//!                    └── ConnectError: "Cannot connect to the Shoal daemon at unix://... Is shoald running?"
//! ```
//!
//! This crate holds types only, no policy: the CLI depends on it and on nothing else of Shoal.

mod client;
mod host;
pub mod logs;
pub mod secret;
pub mod service;
pub mod swarm;

pub use client::{ConnectError, connect, is_unreachable};
pub use host::{DEFAULT_SOCKET, DaemonHost, HostError};

/// Version 1 of the API (protobuf package `shoal.v1`).
pub mod v1 {
    #![expect(
        unused_qualifications,
        clippy::all,
        clippy::allow_attributes,
        reason = "generated code"
    )]
    tonic::include_proto!("shoal.v1");
}
