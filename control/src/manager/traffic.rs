//! The routing mesh's traffic as the leader hears it: each node's heartbeat carries its mesh's
//! per-service counters (connections and bytes since the programs were loaded); the leader keeps
//! each node's last sample and the rate between its last two, in memory only (nothing of it is
//! raft state). The web view shows these rates: connections per second per service and entry
//! node.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::protocol::MeshCounters;

/// A service's rates at one entry node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// New connections per second (one per request for HTTP/1.0-style clients).
    pub connections_per_s: f64,
    /// Bytes per second toward the tasks.
    pub bytes_per_s: f64,
}

#[derive(Debug)]
struct Sample {
    at: Instant,
    counters: BTreeMap<String, MeshCounters>,
    rates: BTreeMap<String, Rate>,
}

/// Every node's last sample and rates.
#[derive(Debug, Default)]
pub struct Traffic {
    nodes: HashMap<String, Sample>,
}

impl Traffic {
    /// Takes `node`'s counters, sampled at `at`.
    pub fn record(&mut self, node: &str, at: Instant, counters: BTreeMap<String, MeshCounters>) {
        let rates = match self.nodes.get(node) {
            Some(last) if at > last.at => {
                let seconds = (at - last.at).as_secs_f64();
                counters
                    .iter()
                    .map(|(service, now)| {
                        let before = last.counters.get(service).copied().unwrap_or_default();
                        // A counter that went down was reset (the node's daemon restarted).
                        let delta = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
                        (
                            service.clone(),
                            Rate {
                                connections_per_s: delta(now.connections, before.connections)
                                    as f64
                                    / seconds,
                                bytes_per_s: delta(now.bytes, before.bytes) as f64 / seconds,
                            },
                        )
                    })
                    .collect()
            }
            _ => BTreeMap::new(),
        };
        self.nodes.insert(
            node.to_owned(),
            Sample {
                at,
                counters,
                rates,
            },
        );
    }

    /// The rates per node and service, of the nodes heard from within `fresh` of `now`.
    pub fn rates(&self, now: Instant, fresh: Duration) -> BTreeMap<String, BTreeMap<String, Rate>> {
        self.nodes
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.at) <= fresh)
            .map(|(node, s)| (node.clone(), s.rates.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(connections: u64, bytes: u64) -> BTreeMap<String, MeshCounters> {
        [(
            "web".to_owned(),
            MeshCounters {
                connections,
                bytes,
                packets: 0,
            },
        )]
        .into_iter()
        .collect()
    }

    #[test]
    fn rates_are_the_change_between_two_samples_over_their_interval() {
        let mut t = Traffic::default();
        let start = Instant::now();
        t.record("n1", start, counters(100, 1_000));
        assert_eq!(t.rates(start, Duration::from_secs(15))["n1"].len(), 0);
        t.record("n1", start + Duration::from_secs(5), counters(150, 6_000));
        let rate = t.rates(start, Duration::from_secs(15))["n1"]["web"];
        assert_eq!(rate.connections_per_s, 10.0);
        assert_eq!(rate.bytes_per_s, 1_000.0);
    }

    #[test]
    fn a_reset_counter_counts_from_zero_and_a_silent_node_drops_out() {
        let mut t = Traffic::default();
        let start = Instant::now();
        t.record("n1", start, counters(100, 0));
        t.record("n1", start + Duration::from_secs(2), counters(4, 0));
        let later = start + Duration::from_secs(2);
        assert_eq!(
            t.rates(later, Duration::from_secs(15))["n1"]["web"].connections_per_s,
            2.0
        );
        assert!(
            t.rates(later + Duration::from_secs(60), Duration::from_secs(15))
                .is_empty()
        );
    }
}
