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

/// `KEY=VALUE` flags (`--label`, `--opt`): a bare `KEY` has an empty value; a key is required.
pub(crate) fn pairs(values: &[String], what: &str) -> Result<Vec<(String, String)>, Failure> {
    values
        .iter()
        .map(|v| {
            let (k, v) = v.split_once('=').unwrap_or((v.as_str(), ""));
            if k.is_empty() {
                return Err(Failure(format!("invalid {what} {v:?}: it needs a key")));
            }
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

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
