//! `service logs`: what the CLI asks and the lines it gets back, as they cross the daemon's
//! socket, the managers and the nodes' log sessions.

use serde::{Deserialize, Serialize};

/// One `shoal service logs` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsQuery {
    /// A service (name, ID or ID prefix) or a task (ID or ID prefix).
    pub target: String,
    /// `-f`: go on with new lines until the caller hangs up.
    #[serde(default)]
    pub follow: bool,
    /// `--tail N`: the last N lines of each task (`None`: all).
    #[serde(default)]
    pub tail: Option<u64>,
    /// `--since`: only lines from then on (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
}

/// Which of the task's outputs a line came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    #[default]
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// As stored.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One line a task wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The task.
    pub task_id: String,
    /// When it was written (RFC 3339, nanoseconds).
    pub time: String,
    /// Standard output or error.
    pub stream: Stream,
    /// The line, without its newline.
    pub text: String,
}

/// Lines in the order each task wrote them, and what could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    /// The lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<LogLine>,
    /// Nodes or tasks whose logs are not available, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}
