//! One module per top-level verb.

pub(crate) mod dataplane;
pub(crate) mod info;
pub(crate) mod logs;
pub(crate) mod network;
pub(crate) mod node;
pub(crate) mod secret;
pub(crate) mod service;
pub(crate) mod stack;
pub(crate) mod swarm;
pub(crate) mod task_flags;

use shoal_api::{ConnectError, DaemonHost, is_unreachable};

use crate::Failure;

/// The daemon's answer to a failed RPC, worded for the user.
pub(crate) fn rpc_failure(host: &DaemonHost, status: &tonic::Status) -> Failure {
    if is_unreachable(status) {
        Failure(
            ConnectError::NotRunning {
                host: host.clone(),
                source: None,
            }
            .to_string(),
        )
    } else {
        Failure(format!("Error response from daemon: {}", status.message()))
    }
}
