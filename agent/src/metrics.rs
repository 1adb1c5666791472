//! `shoald --metrics-addr ADDR:PORT`: the node's metrics in Prometheus's text exposition format
//! (version 0.0.4), at `GET /metrics`, written by the `prometheus-client` crate.
//!
//! Two kinds of figure:
//! - **counted as it happens**, in this process: raft proposals and their latency, leader
//!   changes, heartbeats ([`shoal_control::metrics`]), DNS queries and task starts and
//!   failures ([`crate::figures::AgentMetrics`]);
//! - **read at each scrape** ([`Snapshot`]): raft's term and indices, tasks per service and
//!   state and nodes per state from the store (managers only), the routing mesh's per-service
//!   counters from its BPF maps, the WireGuard engine's per-peer figures.
//!
//! docs/observability.md lists every metric.

use std::net::SocketAddr;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use shoal_control::manager::RaftStatus;

use crate::dataplane::NodeDataplane;
use shoal_dataplane::mesh::ServiceStatus;

use crate::figures::{PeerFigures, Snapshot, agent};
use crate::swarm::SwarmNode;

/// Serves `/metrics` on `addr` until the process ends. Binding happens before this returns, so
/// a busy port is the daemon's error at start.
pub(crate) async fn serve(
    addr: SocketAddr,
    swarm: SwarmNode,
    dataplane: NodeDataplane,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (swarm, dataplane) = (swarm.clone(), dataplane.clone());
            async move { scrape(&swarm, &dataplane).await }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

async fn scrape(swarm: &SwarmNode, dataplane: &NodeDataplane) -> axum::response::Response {
    let snapshot = take_snapshot(swarm, dataplane).await;
    match render(snapshot) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics: {e}"),
        )
            .into_response(),
    }
}

/// The exposition of `snapshot` and of the process's counters.
pub(crate) fn render(snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    let control = shoal_control::metrics::control();
    registry.register(
        "shoal_raft_proposals",
        "Change sets this manager proposed to raft, by outcome",
        control.proposals.clone(),
    );
    registry.register(
        "shoal_raft_proposal_duration_seconds",
        "Time from a change set's proposal to its commit being applied on this manager",
        control.proposal_seconds.clone(),
    );
    registry.register(
        "shoal_raft_entries_proposed",
        "Raft entries this manager proposed (each carries one or more change sets)",
        control.raft_entries.clone(),
    );
    registry.register(
        "shoal_raft_leader_changes",
        "Times the raft leader this manager knows of changed",
        control.leader_changes.clone(),
    );
    registry.register(
        "shoal_raft_snapshots",
        "Snapshots this manager's store built or installed",
        control.snapshots.clone(),
    );
    registry.register(
        "shoal_dispatcher_heartbeats",
        "Heartbeats this manager took from nodes",
        control.heartbeats.clone(),
    );
    registry.register(
        "shoal_dispatcher_missed_heartbeats",
        "Nodes this manager marked down after three heartbeat periods without one",
        control.missed_heartbeats.clone(),
    );
    registry.register(
        "shoal_scheduler_placements",
        "Tasks this manager's scheduler gave a node (as leader)",
        control.placements.clone(),
    );
    registry.register(
        "shoal_dispatcher_sessions",
        "Assignment streams this manager serves (one per connected node, on the leader)",
        control.sessions.clone(),
    );
    let agent = agent();
    registry.register(
        "shoal_dns_queries",
        "DNS queries from tasks to the node's resolver, by result",
        agent.dns_queries.clone(),
    );
    registry.register(
        "shoal_task_starts",
        "Tasks this node's executor started",
        agent.task_starts.clone(),
    );
    registry.register(
        "shoal_task_failures",
        "Tasks on this node that failed, by reason",
        agent.task_failures.clone(),
    );
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// What a scrape reads from the node's state now.
async fn take_snapshot(swarm: &SwarmNode, dataplane: &NodeDataplane) -> Snapshot {
    let mut snapshot = Snapshot {
        node: swarm.node_name().to_owned(),
        ..Snapshot::default()
    };
    if let Some(manager) = swarm.manager().await {
        snapshot.raft = Some(manager.raft_status());
        let world = manager
            .store()
            .view(shoal_control::orchestrator::World::read);
        snapshot.read_world(&world);
    }
    dataplane.read_metrics(&mut snapshot).await;
    snapshot
}

/// Writes one metric family: `name`'s descriptor, then one sample per label set.
fn family<'a, M: EncodeMetric + 'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, M)>,
) -> Result<(), std::fmt::Error> {
    // Sentences, as the registry writes the help of the metrics registered with it.
    let help = format!("{help}.");
    let mut metric = encoder.encode_descriptor(name, &help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: i64) -> ConstGauge<i64> {
    ConstGauge::new(v)
}

fn gauge_f(v: f64) -> ConstGauge<f64> {
    ConstGauge::new(v)
}

fn count(v: impl TryInto<i64>) -> ConstGauge<i64> {
    gauge(v.try_into().unwrap_or(i64::MAX))
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        family(
            &mut e,
            "shoal_build_info",
            "The running shoald's version (always 1)",
            MetricType::Gauge,
            [(
                vec![
                    ("version", env!("CARGO_PKG_VERSION").to_owned()),
                    ("node", self.node.clone()),
                ],
                gauge(1),
            )],
        )?;
        if let Some(raft) = &self.raft {
            self.encode_raft(&mut e, raft)?;
            self.encode_store(&mut e)?;
        }
        self.encode_mesh(&mut e)?;
        self.encode_ports(&mut e)?;
        self.encode_vips(&mut e)?;
        self.encode_wireguard(&mut e)?;
        self.encode_overlay(&mut e)
    }
}

impl Snapshot {
    /// Writes raft's term, leadership, indices and voters (a manager's).
    fn encode_raft(
        &self,
        e: &mut DescriptorEncoder<'_>,
        raft: &RaftStatus,
    ) -> Result<(), std::fmt::Error> {
        use MetricType::Gauge as G;
        let node = || vec![("node", self.node.clone())];
        let one = |v: u64| [(node(), count(v))];
        family(
            e,
            "shoal_raft_term",
            "The raft term this manager is in",
            G,
            one(raft.term),
        )?;
        family(
            e,
            "shoal_raft_leader",
            "1 if this manager leads raft, else 0",
            G,
            one(u64::from(raft.leads)),
        )?;
        family(
            e,
            "shoal_raft_has_leader",
            "1 if this manager knows of a leader, else 0",
            G,
            one(u64::from(raft.leader.is_some())),
        )?;
        family(
            e,
            "shoal_raft_last_log_index",
            "The index of the last entry in this manager's raft log",
            G,
            one(raft.last_log_index),
        )?;
        family(
            e,
            "shoal_raft_commit_index",
            "The last commit index raft told this manager's log",
            G,
            one(raft.commit_index),
        )?;
        family(
            e,
            "shoal_raft_applied_index",
            "The index of the last committed entry applied to this manager's store",
            G,
            one(raft.applied_index),
        )?;
        family(
            e,
            "shoal_raft_snapshot_index",
            "The index this manager's last snapshot covers",
            G,
            one(raft.snapshot_index),
        )?;
        family(
            e,
            "shoal_raft_voters",
            "Raft members that vote",
            G,
            one(raft.voters as u64),
        )
    }

    /// Writes the store's tasks per service and state, and its nodes per state (a manager's).
    fn encode_store(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use MetricType::Gauge as G;
        let service = |name: &String| vec![("service", name.clone())];
        family(
            e,
            "shoal_service_desired_tasks",
            "Tasks a replicated service asks for",
            G,
            self.services
                .iter()
                .filter_map(|(name, s)| Some((service(name), count(s.desired?)))),
        )?;
        family(
            e,
            "shoal_service_tasks",
            "A service's tasks meant to run, by their current state",
            G,
            self.services.iter().flat_map(|(name, s)| {
                s.states.iter().map(move |(state, n)| {
                    (
                        vec![("service", name.clone()), ("state", (*state).to_owned())],
                        count(*n),
                    )
                })
            }),
        )?;
        family(
            e,
            "shoal_service_running_tasks",
            "A service's tasks running now",
            G,
            self.services.iter().map(|(name, s)| {
                (
                    service(name),
                    count(s.states.get("running").copied().unwrap_or(0)),
                )
            }),
        )?;
        family(
            e,
            "shoal_service_unschedulable_tasks",
            "A service's tasks waiting for a node that can take them",
            G,
            self.services
                .iter()
                .map(|(name, s)| (service(name), count(s.unschedulable))),
        )?;
        family(
            e,
            "shoal_nodes",
            "Nodes in the swarm, by state and availability",
            G,
            self.nodes.iter().map(|((state, availability), n)| {
                (
                    vec![
                        ("state", state.clone()),
                        ("availability", availability.clone()),
                    ],
                    count(*n),
                )
            }),
        )
    }

    /// Writes the routing mesh's counters and backends per service.
    fn encode_mesh(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter as C, Gauge as G};
        let mesh = |pick: fn(&ServiceStatus) -> u64| {
            self.mesh
                .iter()
                .map(move |(name, s)| (vec![("service", name.clone())], counter(pick(s))))
        };
        for (name, help, pick) in [
            (
                "shoal_mesh_packets",
                "Client packets the routing mesh on this node sent on to a service's task",
                (|s: &ServiceStatus| s.stats.packets) as fn(&ServiceStatus) -> u64,
            ),
            ("shoal_mesh_bytes", "Their bytes (Ethernet frames)", |s| {
                s.stats.bytes
            }),
            (
                "shoal_mesh_reply_packets",
                "Reply packets the mesh sent back to clients",
                |s| s.stats.reply_packets,
            ),
            ("shoal_mesh_reply_bytes", "Their bytes", |s| {
                s.stats.reply_bytes
            }),
            (
                "shoal_mesh_connections",
                "Connections the mesh balanced over a service's tasks",
                |s| s.stats.connections,
            ),
            (
                "shoal_mesh_refused_packets",
                "Packets to a published port of a service without tasks (refused)",
                |s| s.stats.refused,
            ),
            (
                "shoal_mesh_dropped_packets",
                "New flows dropped because no translation port was free",
                |s| s.stats.dropped,
            ),
            (
                "shoal_mesh_tunneled_packets",
                "Client packets encapsulated straight to the task's node",
                |s| s.stats.tunneled,
            ),
            (
                "shoal_mesh_tc_packets",
                "Client packets balanced by the TC entry rather than XDP",
                |s| s.stats.tc_packets,
            ),
        ] {
            family(e, name, help, C, mesh(pick))?;
        }
        family(
            e,
            "shoal_mesh_backends",
            "Tasks the mesh balances a service's new connections over",
            G,
            self.mesh
                .iter()
                .map(|(name, s)| (vec![("service", name.clone())], count(s.backends))),
        )
    }

    /// Writes the routing mesh's counters per published port.
    fn encode_ports(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let port = |p: &shoal_dataplane::mesh::PortStatus| {
            vec![
                ("service", p.service.clone()),
                ("port", p.port.to_string()),
                ("protocol", p.protocol.to_owned()),
            ]
        };
        type Pick = fn(&shoal_dataplane::mesh::PortStats) -> u64;
        let per_port: [(&str, &str, Pick); 8] = [
            (
                "shoal_mesh_port_packets",
                "Client packets to one published port the mesh sent on to a task",
                |s| s.packets,
            ),
            (
                "shoal_mesh_port_bytes",
                "Their bytes (Ethernet frames)",
                |s| s.bytes,
            ),
            (
                "shoal_mesh_port_reply_packets",
                "Reply packets from one published port sent back to clients",
                |s| s.reply_packets,
            ),
            ("shoal_mesh_port_reply_bytes", "Their bytes", |s| {
                s.reply_bytes
            }),
            (
                "shoal_mesh_port_connections",
                "Connections the mesh balanced for one published port",
                |s| s.connections,
            ),
            (
                "shoal_mesh_port_refused_packets",
                "Packets to one published port while its service had no task (refused)",
                |s| s.refused,
            ),
            (
                "shoal_mesh_port_dropped",
                "New flows to one published port dropped because no translation port was free",
                |s| s.dropped,
            ),
            (
                "shoal_mesh_port_tunneled_packets",
                "Client packets to one published port encapsulated straight to the task's node",
                |s| s.tunneled,
            ),
        ];
        for (name, help, pick) in per_port {
            family(
                e,
                name,
                help,
                MetricType::Counter,
                self.ports
                    .iter()
                    .map(|p| (port(p), counter(pick(&p.stats)))),
            )?;
        }
        Ok(())
    }

    /// Writes what the service VIPs translated for this node's tasks, and the mesh's entry
    /// path on each public interface.
    fn encode_vips(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter as C, Gauge as G};
        family(
            e,
            "shoal_vip_connections",
            "Connections (and unconnected datagrams) from this node's tasks to a service VIP, sent to one of its running tasks",
            C,
            self.vips
                .iter()
                .map(|(name, s)| (vec![("service", name.clone())], counter(s.connections))),
        )?;
        family(
            e,
            "shoal_vip_no_backend",
            "Connections from this node's tasks to a service VIP while the service had no running task",
            C,
            self.vips
                .iter()
                .map(|(name, s)| (vec![("service", name.clone())], counter(s.no_backend))),
        )?;
        family(
            e,
            "shoal_mesh_interface_entry",
            "How the mesh takes packets in on a public interface (1 for the path in use)",
            G,
            self.entries.iter().map(|(interface, path)| {
                (
                    vec![
                        ("interface", interface.clone()),
                        ("path", (*path).to_owned()),
                    ],
                    gauge(1),
                )
            }),
        )
    }

    /// Writes the WireGuard engine's figures per peer.
    fn encode_wireguard(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter as C, Gauge as G};
        let peer = |p: &PeerFigures| vec![("peer", p.node.clone())];
        family(
            e,
            "shoal_wireguard_sent_bytes",
            "Bytes the WireGuard engine sent to a peer (resets when the peer's session is replaced)",
            C,
            self.peers.iter().map(|p| (peer(p), counter(p.tx_bytes))),
        )?;
        family(
            e,
            "shoal_wireguard_received_bytes",
            "Bytes the WireGuard engine received from a peer (resets as the sent bytes do)",
            C,
            self.peers.iter().map(|p| (peer(p), counter(p.rx_bytes))),
        )?;
        family(
            e,
            "shoal_wireguard_last_handshake_age_seconds",
            "Time since the last completed handshake with a peer",
            G,
            self.peers
                .iter()
                .filter_map(|p| Some((peer(p), gauge_f(p.last_handshake_seconds?)))),
        )?;
        family(
            e,
            "shoal_wireguard_session_up",
            "1 while a peer's session is usable (a handshake within WireGuard's 180 s), else 0",
            G,
            self.peers.iter().map(|p| {
                let up = p.last_handshake_seconds.is_some_and(|age| age < 180.0);
                (peer(p), gauge(i64::from(up)))
            }),
        )?;
        family(
            e,
            "shoal_wireguard_rotating",
            "1 while a peer's keys are being rotated",
            G,
            self.peers
                .iter()
                .map(|p| (peer(p), gauge(i64::from(p.rotating)))),
        )?;
        family(
            e,
            "shoal_wireguard_handshakes_limited",
            "Handshakes from a peer refused by the rate limit",
            C,
            self.peers
                .iter()
                .map(|p| (peer(p), counter(p.handshakes_limited))),
        )?;
        family(
            e,
            "shoal_wireguard_cookie_replies",
            "Cookie replies sent to a peer under load",
            C,
            self.peers
                .iter()
                .map(|p| (peer(p), counter(p.cookie_replies))),
        )?;
        family(
            e,
            "shoal_wireguard_refused_packets",
            "Packets from a peer that did not authenticate",
            C,
            self.peers
                .iter()
                .map(|p| (peer(p), counter(p.refused_packets))),
        )?;
        family(
            e,
            "shoal_wireguard_handshakes",
            "Handshake messages from a peer (initiations and responses) that a session took",
            C,
            self.peers.iter().map(|p| (peer(p), counter(p.handshakes))),
        )?;
        family(
            e,
            "shoal_wireguard_key_rotations",
            "Key changes completed with a peer",
            C,
            self.peers.iter().map(|p| (peer(p), counter(p.rotations))),
        )
    }

    /// Writes the overlay networks' VXLAN counters, and the encrypted networks per peer.
    fn encode_overlay(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter as C, Gauge as G};
        let network = |pick: fn(&shoal_dataplane::overlay::layout::NetworkCounters) -> u64| {
            self.networks
                .iter()
                .map(move |(id, c)| (vec![("network", id.clone())], counter(pick(c))))
        };
        family(
            e,
            "shoal_overlay_sent_packets",
            "Frames this node's tasks sent to other nodes on an overlay network (inside VXLAN)",
            C,
            network(|c| c.tx_packets),
        )?;
        family(
            e,
            "shoal_overlay_sent_bytes",
            "Their bytes",
            C,
            network(|c| c.tx_bytes),
        )?;
        family(
            e,
            "shoal_overlay_received_packets",
            "Frames this node's tasks received from other nodes on an overlay network",
            C,
            network(|c| c.rx_packets),
        )?;
        family(
            e,
            "shoal_overlay_received_bytes",
            "Their bytes",
            C,
            network(|c| c.rx_bytes),
        )?;
        family(
            e,
            "shoal_overlay_encrypted_networks",
            "Encrypted overlay networks a peer carries",
            G,
            self.peers
                .iter()
                .map(|p| (vec![("peer", p.node.clone())], count(p.networks))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use shoal_dataplane::mesh::ServiceStats;

    use crate::figures::ServiceTasks;

    fn sample() -> Snapshot {
        let mut snapshot = Snapshot {
            node: "n1".into(),
            raft: Some(RaftStatus {
                term: 3,
                leader: Some(1),
                leads: true,
                last_log_index: 40,
                commit_index: 39,
                applied_index: 39,
                snapshot_index: 0,
                voters: 3,
            }),
            ..Snapshot::default()
        };
        snapshot.services.insert(
            "web".into(),
            ServiceTasks {
                desired: Some(3),
                states: [("running", 2), ("pending", 1)].into_iter().collect(),
                unschedulable: 1,
            },
        );
        snapshot.nodes.insert(("ready".into(), "active".into()), 3);
        snapshot.mesh.insert(
            "web".into(),
            ServiceStatus {
                backends: 2,
                table_size: 251,
                stats: ServiceStats {
                    packets: 10,
                    bytes: 1_000,
                    connections: 2,
                    ..ServiceStats::default()
                },
            },
        );
        snapshot.entries.insert("eth0".into(), "xdp");
        snapshot.ports.push(shoal_dataplane::mesh::PortStatus {
            service: "web".into(),
            port: 8080,
            protocol: "tcp",
            stats: shoal_dataplane::mesh::PortStats {
                connections: 2,
                packets: 9,
                ..Default::default()
            },
        });
        snapshot.vips.insert(
            "api".into(),
            shoal_dataplane::mesh::VipStats {
                connections: 4,
                no_backend: 1,
            },
        );
        snapshot.peers.push(PeerFigures {
            node: "n2".into(),
            tx_bytes: 5,
            last_handshake_seconds: Some(1.5),
            networks: 1,
            rotations: 2,
            ..PeerFigures::default()
        });
        snapshot.networks.insert(
            "net1".into(),
            shoal_dataplane::overlay::layout::NetworkCounters {
                tx_packets: 7,
                ..Default::default()
            },
        );
        snapshot
    }

    /// The families of an exposition: name → (HELP seen, TYPE), and every sample's family.
    fn families(text: &str) -> (BTreeMap<String, (bool, String)>, Vec<String>) {
        let mut families: BTreeMap<String, (bool, String)> = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                families.entry(name).or_default().0 = true;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap().to_owned();
                families.entry(name).or_default().1 = parts.next().unwrap().to_owned();
            } else if !line.starts_with('#') && !line.is_empty() {
                let name = line.split(['{', ' ']).next().unwrap();
                samples.push(name.to_owned());
            }
        }
        (families, samples)
    }

    #[test]
    fn every_metric_has_help_and_type_and_follows_the_naming_conventions() {
        agent().task_starts.inc();
        shoal_control::metrics::control()
            .proposal_seconds
            .observe(0.002);
        let text = render(sample()).unwrap();
        let (families, samples) = families(&text);
        assert!(families.len() > 30, "{text}");
        for (name, (help, kind)) in &families {
            assert!(*help, "{name} has no HELP:\n{text}");
            assert!(!kind.is_empty(), "{name} has no TYPE:\n{text}");
            assert!(name.starts_with("shoal_"), "{name}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
        for sample in &samples {
            let family = families.keys().any(|f| {
                sample == f
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| sample.strip_suffix(suffix) == Some(f))
            });
            assert!(family, "{sample} has no HELP/TYPE of its own:\n{text}");
        }
    }

    #[test]
    fn the_snapshot_shows_what_the_node_holds() {
        let text = render(sample()).unwrap();
        for line in [
            "shoal_raft_term{node=\"n1\"} 3",
            "shoal_raft_leader{node=\"n1\"} 1",
            "shoal_raft_commit_index{node=\"n1\"} 39",
            "shoal_service_desired_tasks{service=\"web\"} 3",
            "shoal_service_tasks{service=\"web\",state=\"running\"} 2",
            "shoal_service_tasks{service=\"web\",state=\"pending\"} 1",
            "shoal_service_unschedulable_tasks{service=\"web\"} 1",
            "shoal_nodes{state=\"ready\",availability=\"active\"} 3",
            "shoal_mesh_packets_total{service=\"web\"} 10",
            "shoal_mesh_bytes_total{service=\"web\"} 1000",
            "shoal_mesh_connections_total{service=\"web\"} 2",
            "shoal_mesh_interface_entry{interface=\"eth0\",path=\"xdp\"} 1",
            "shoal_vip_connections_total{service=\"api\"} 4",
            "shoal_mesh_port_connections_total{service=\"web\",port=\"8080\",protocol=\"tcp\"} 2",
            "shoal_mesh_port_packets_total{service=\"web\",port=\"8080\",protocol=\"tcp\"} 9",
            "shoal_vip_no_backend_total{service=\"api\"} 1",
            "shoal_wireguard_sent_bytes_total{peer=\"n2\"} 5",
            "shoal_wireguard_last_handshake_age_seconds{peer=\"n2\"} 1.5",
            "shoal_wireguard_key_rotations_total{peer=\"n2\"} 2",
            "shoal_wireguard_session_up{peer=\"n2\"} 1",
            "shoal_overlay_sent_packets_total{network=\"net1\"} 7",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn a_worker_shows_no_raft_or_store_figures() {
        let mut snapshot = sample();
        snapshot.raft = None;
        let text = render(snapshot).unwrap();
        assert!(!text.contains("shoal_raft_term"), "{text}");
        assert!(!text.contains("shoal_service_tasks"), "{text}");
        assert!(
            text.contains("shoal_mesh_packets_total{service=\"web\"} 10"),
            "{text}"
        );
    }
}
