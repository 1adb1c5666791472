//! Shared by the dataplane's integration tests and benches.
pub mod packets;
