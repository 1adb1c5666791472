//! One module per top-level verb.

pub(crate) mod dataplane;
pub(crate) mod events;
pub(crate) mod info;
pub(crate) mod logs;
pub(crate) mod network;
pub(crate) mod node;
pub(crate) mod pretty;
pub(crate) mod secret;
pub(crate) mod service;
pub(crate) mod stack;
pub(crate) mod swarm;
pub(crate) mod task_flags;
pub(crate) mod text;

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
