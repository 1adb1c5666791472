//! What the control plane counts as it goes, for `shoald --metrics-addr`: the figures the store
//! cannot give back afterwards (how many proposals, how long each took, how often the leader
//! changed, heartbeats and missed ones). What the store *does* hold (tasks per state, nodes) is
//! read from it at each scrape instead, by the daemon.
//!
//! One set per process: a daemon runs one manager at most, and counters only go up, so tests
//! that start several managers in one process read sums, never wrong figures.

use std::sync::LazyLock;

use prometheus_client::metrics::{
    counter::Counter,
    family::Family,
    gauge::Gauge,
    histogram::{Histogram, exponential_buckets},
};

/// A label set of one label.
pub type Label = [(&'static str, &'static str); 1];

/// The control plane's counters.
#[derive(Debug)]
pub struct ControlMetrics {
    /// Change sets proposed by this manager, by outcome (`committed`, `refused`, `failed`).
    pub proposals: Family<Label, Counter>,
    /// How long a change set took from proposal to its commit being applied here.
    pub proposal_seconds: Histogram,
    /// Raft entries this manager proposed (each carries one or more change sets).
    pub raft_entries: Counter,
    /// Times the leader this manager knows of changed (none counts as a leader).
    pub leader_changes: Counter,
    /// Snapshots this manager's state machine built or installed.
    pub snapshots: Counter,
    /// Heartbeats this manager took from nodes.
    pub heartbeats: Counter,
    /// Nodes this manager marked down after three periods without a heartbeat.
    pub missed_heartbeats: Counter,
    /// Assignment streams this manager serves now (one per connected node, on the leader).
    pub sessions: Gauge,
    /// Tasks this manager's scheduler gave a node (as leader).
    pub placements: Counter,
}

impl ControlMetrics {
    fn new() -> Self {
        Self {
            proposals: Family::default(),
            // 0.5 ms to about 4 s.
            proposal_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 14)),
            raft_entries: Counter::default(),
            leader_changes: Counter::default(),
            snapshots: Counter::default(),
            heartbeats: Counter::default(),
            missed_heartbeats: Counter::default(),
            sessions: Gauge::default(),
            placements: Counter::default(),
        }
    }
}

/// The process's control-plane counters.
pub fn control() -> &'static ControlMetrics {
    static METRICS: LazyLock<ControlMetrics> = LazyLock::new(ControlMetrics::new);
    &METRICS
}

/// Decrements [`ControlMetrics::sessions`] when dropped: held by each assignment stream.
#[derive(Debug)]
pub struct SessionGuard(());

impl SessionGuard {
    /// Counts one more session until the guard drops.
    pub fn open() -> Self {
        control().sessions.inc();
        Self(())
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        control().sessions.dec();
    }
}
