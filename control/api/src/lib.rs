//! Shoal's API surface, shared by the `shoal` CLI, the `shoald` daemon and the tests: the objects
//! and calls of the swarm ([`call`], [`swarm`], [`service`], [`secret`], [`logs`]), the protobuf messages
//! and gRPC services between nodes (generated from `proto/` by tonic + prost), the daemon
//! address ([`DaemonHost`], `-H unix://PATH`), and the HTTP client of the API a daemon serves on
//! its unix socket (Docker's Engine API, Shoal's own operations under [`SHOAL_PREFIX`]).
//!
//! ```text
//!   shoal (cli) ──Client──HTTP/1.1──> unix socket ──> shoald: /nodes, /services, ..., /shoal/v1/...
//!                    └── ConnectError: "Cannot connect to the Shoal daemon at unix://... Is shoald running?"
//! ```
//!
//! This crate holds types only, no policy: the CLI depends on it and on nothing else of Shoal.

pub mod call;
mod client;
mod host;
pub mod logs;
pub mod proto;
pub mod reason;
pub mod secret;
pub mod service;
pub mod swarm;
pub mod version;
mod wire;

pub use client::{Client, ClientError, ConnectError, SHOAL_PREFIX, escape};
pub use host::{DEFAULT_SOCKET, DaemonHost, HostError};
pub use hyper::StatusCode;
pub use wire::{unix_nanos, wire_name};

/// Version 1 of the messages between nodes (protobuf package `shoal.v1`).
pub mod v1 {
    #![expect(
        unused_qualifications,
        clippy::allow_attributes,
        reason = "generated code"
    )]
    tonic::include_proto!("shoal.v1");
}
