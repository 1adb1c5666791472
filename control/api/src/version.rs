//! What every object the managers keep carries: the raft index it was last changed at.

use serde::{Deserialize, Serialize};

/// The raft index an object was last changed at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The index.
    #[serde(rename = "Index")]
    pub index: u64,
}
