//! The node's data plane as the daemon hosts it: one [`Dataplane`] per daemon, created on first
//! use (it needs root), its namespaces under `<data root>/netns`, applies serialised. The last
//! state applied in full is kept in `<data root>/dataplane-state.json` and applied again when the
//! daemon starts: the WireGuard engine and the routing mesh's programs live in the daemon, and
//! come back without anyone applying again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use shoal_dataplane::mesh::{EntryPath, Mesh};
use shoal_dataplane::node::DesiredState;
use shoal_dataplane::overlay::layout::{ObservedNet, TunnelState};
use shoal_dataplane::overlay::{ApplyError, Dataplane};
use tokio::sync::Mutex;
use tonic::Status;

/// The daemon's data plane. Clones share it.
#[derive(Debug, Clone)]
pub(crate) struct NodeDataplane {
    root: PathBuf,
    saved: PathBuf,
    inner: Arc<Mutex<Option<Dataplane>>>,
    /// The mesh's path on each interface, as of the last apply (read without waiting for one).
    mesh_paths: Arc<std::sync::Mutex<BTreeMap<String, String>>>,
}

impl NodeDataplane {
    pub(crate) fn new(data_root: &std::path::Path) -> Self {
        Self {
            root: data_root.join("netns"),
            saved: data_root.join("dataplane-state.json"),
            inner: Arc::new(Mutex::new(None)),
            mesh_paths: Arc::default(),
        }
    }

    /// Every few seconds, gives back the room of the routing mesh's flows that closed or went
    /// silent (the programs already treat them as gone).
    pub(crate) fn collect_expired_flows(&self) {
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let mut guard = inner.lock_owned().await;
                // A walk over the flow maps: blocking work, off the runtime's threads.
                let collected = tokio::task::spawn_blocking(move || {
                    match guard.as_mut().and_then(Dataplane::mesh_mut) {
                        Some(mesh) => mesh.collect_expired().map(drop),
                        None => Ok(()),
                    }
                })
                .await;
                if let Ok(Err(e)) = collected {
                    tracing::warn!(error = %e, "collecting the mesh's expired flows");
                }
            }
        });
    }

    /// The routing mesh's path on each interface it uses, as of the last apply.
    pub(crate) fn mesh_paths(&self) -> BTreeMap<String, String> {
        self.mesh_paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies the last state applied before the daemon stopped, if any, in the background. The
    /// lock is taken first, so an apply that arrives meanwhile runs after it.
    pub(crate) async fn restore(&self) {
        let Ok(state_json) = std::fs::read_to_string(&self.saved) else {
            return;
        };
        let mut state = match DesiredState::from_json(&state_json) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(path = %self.saved.display(), error = %e, "not restoring the data plane");
                return;
            }
        };
        unpin_where_no_longer_allowed(&mut state);
        let mut guard = self.inner.clone().lock_owned().await;
        let root = self.root.clone();
        let paths = self.mesh_paths.clone();
        tokio::spawn(async move {
            let result = match ensure(&mut guard, &root) {
                Ok(dp) => {
                    let applied = dp.apply(&state).await.map_err(|e| e.to_string());
                    remember_paths(dp, &paths);
                    applied
                }
                Err(e) => Err(e.message().to_owned()),
            };
            match result {
                Ok(applied) => tracing::info!(
                    changes = applied.changes.len(),
                    "data plane restored from the last applied state"
                ),
                Err(e) => tracing::error!(error = %e, "restoring the data plane"),
            }
        });
    }

    async fn with<T>(
        &self,
        f: impl AsyncFnOnce(&mut Dataplane) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let mut guard = self.inner.lock().await;
        f(ensure(&mut guard, &self.root)?).await
    }

    /// Applies a desired state given as JSON; the changes made, one line each.
    pub(crate) async fn apply(&self, state_json: &str) -> Result<Vec<String>, Status> {
        let state = DesiredState::from_json(state_json)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.apply_state(state).await
    }

    /// Applies a desired state; the changes made, one line each. The apply runs as its own
    /// task: a caller that goes away mid-apply cannot leave it half done.
    pub(crate) async fn apply_state(&self, state: DesiredState) -> Result<Vec<String>, Status> {
        let inner = self.inner.clone();
        let root = self.root.clone();
        let saved = self.saved.clone();
        let paths = self.mesh_paths.clone();
        let state_json = serde_json::to_string_pretty(&state)
            .map_err(|e| Status::internal(format!("encoding the data-plane state: {e}")))?;
        tokio::spawn(async move {
            let mut guard = inner.lock_owned().await;
            let dp = ensure(&mut guard, &root)?;
            let applied = dp.apply(&state).await;
            remember_paths(dp, &paths);
            match applied {
                Ok(applied) => {
                    let path = saved.clone();
                    tokio::task::spawn_blocking(move || save(&path, &state_json))
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                        .map_err(|e| {
                            Status::internal(format!(
                                "applied, but keeping the state in {} failed: {e}",
                                saved.display()
                            ))
                        })?;
                    Ok(applied.changes)
                }
                Err(e @ ApplyError::Invalid(_)) => Err(Status::invalid_argument(e.to_string())),
                Err(e) => Err(Status::internal(e.to_string())),
            }
        })
        .await
        .map_err(|e| Status::internal(format!("the data-plane apply failed: {e}")))?
    }

    /// The routing mesh's counters per service, for the heartbeat (the leader's traffic view);
    /// none before the mesh runs here.
    pub(crate) async fn mesh_counters(
        &self,
    ) -> BTreeMap<String, shoal_control::manager::protocol::MeshCounters> {
        let guard = self.inner.lock().await;
        let Some(mesh) = guard.as_ref().and_then(Dataplane::mesh) else {
            return BTreeMap::new();
        };
        mesh.status()
            .map(|services| {
                services
                    .into_iter()
                    .map(|(name, s)| {
                        let counters = shoal_control::manager::protocol::MeshCounters {
                            connections: s.stats.connections,
                            packets: s.stats.packets,
                            bytes: s.stats.bytes,
                        };
                        (name, counters)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The routing mesh's and the WireGuard engine's figures, for a metrics scrape. Reads
    /// the maps and the engine as they are; creates nothing (no data plane yet: no figures).
    pub(crate) async fn read_metrics(&self, snapshot: &mut crate::figures::Snapshot) {
        let mut guard = self.inner.lock().await;
        let Some(dp) = guard.as_mut() else {
            return;
        };
        match dp.network_counters().await {
            Ok(networks) => snapshot.networks = networks,
            Err(e) => tracing::warn!(error = %e, "reading the overlays' counters for a scrape"),
        }
        for p in dp.wireguard_status() {
            snapshot.peers.push(crate::figures::PeerFigures {
                node: p.node,
                tx_bytes: p.tx_bytes as u64,
                rx_bytes: p.rx_bytes as u64,
                last_handshake_seconds: p.last_handshake.map(|d| d.as_secs_f64()),
                rotating: p.rotating,
                handshakes_limited: p.handshakes_limited,
                cookie_replies: p.cookie_replies,
                refused_packets: p.refused_packets,
                handshakes: p.handshakes,
                rotations: p.rotations,
                networks: p.vnis.len(),
            });
        }
        let Some(mesh) = dp.mesh() else {
            return;
        };
        match mesh.status() {
            Ok(services) => {
                snapshot.mesh = services;
            }
            Err(e) => tracing::warn!(error = %e, "reading the mesh counters for a scrape"),
        }
        for (name, link) in mesh.links() {
            if let Some(entry) = link.entry {
                snapshot.entries.insert(name, entry.name());
            }
        }
        match mesh.port_status() {
            Ok(ports) => snapshot.ports = ports,
            Err(e) => tracing::warn!(error = %e, "reading the port counters for a scrape"),
        }
        match mesh.vip_status() {
            Ok(vips) => snapshot.vips = vips,
            Err(e) => tracing::warn!(error = %e, "reading the VIP counters for a scrape"),
        }
    }

    /// What the kernel holds, as JSON.
    pub(crate) async fn inspect(&self) -> Result<Value, Status> {
        self.with(async |dp| {
            let observed = dp
                .observe()
                .await
                .map_err(|e| Status::internal(format!("reading the data plane: {e}")))?;
            let tunnel = match observed.tunnel {
                TunnelState::Absent => Value::Null,
                TunnelState::NamespaceOnly => json!({ "state": "namespace only" }),
                TunnelState::Up(t) => {
                    json!({ "state": "up", "addr": t.addr, "mtu": t.mtu, "port": t.port })
                }
            };
            let networks = networks_json(dp, &observed.networks);
            let peers = peers_json(dp);
            let wireguard = match dp.wireguard_not_from_a_peer() {
                Some(n) => json!({ "not_from_a_peer": n }),
                None => Value::Null,
            };
            let vxlan_filter = match dp
                .vxlan_filter()
                .await
                .map_err(|e| Status::internal(format!("reading the VXLAN filter: {e}")))?
            {
                Some((f, refused)) => json!({
                    "port": f.port,
                    "peers": f.peers,
                    "refused_packets": refused.packets,
                }),
                None => Value::Null,
            };
            let mesh = match dp.mesh() {
                None => Value::Null,
                Some(mesh) => mesh_json(mesh)?,
            };
            let left_out: Vec<Value> = dp
                .left_out()
                .iter()
                .map(|p| json!({ "field": p.field, "reason": p.message }))
                .collect();
            Ok(json!({
                "tunnel": tunnel,
                "networks": networks,
                "wireguard": wireguard,
                "wireguard_peers": peers,
                "vxlan_filter": vxlan_filter,
                "mesh": mesh,
                "left_out": left_out,
            }))
        })
        .await
    }
}

/// The overlay networks the kernel holds, by ID, as JSON: each one's namespace, device, FDB,
/// neighbours and veths.
fn networks_json(
    dp: &Dataplane,
    networks: &BTreeMap<String, ObservedNet>,
) -> serde_json::Map<String, Value> {
    networks
        .iter()
        .map(|(id, n)| {
            let d = &n.device;
            (
                id.clone(),
                json!({
                    "namespace": dp.network_namespace(id),
                    "vni": d.vni,
                    "local": d.local,
                    "port": d.port,
                    "mtu": d.mtu,
                    "encrypted": d.encrypted,
                    "gateway": d.gateway.to_string(),
                    "fdb": n.fdb.iter().map(|(mac, dst)| json!({ "mac": mac, "dst": dst })).collect::<Vec<_>>(),
                    "neighbours": n.neigh.iter().map(|(ip, mac)| json!({ "ip": ip, "mac": mac })).collect::<Vec<_>>(),
                    "veths": n.attachments,
                    "bridge_netfilter": n.bridge_netfilter,
                }),
            )
        })
        .collect()
}

/// The WireGuard engine's peers, as JSON.
fn peers_json(dp: &Dataplane) -> Vec<Value> {
    dp.wireguard_status()
        .iter()
        .map(|p| {
            json!({
                "node": p.node,
                "public_key": p.public_key.to_string(),
                "last_handshake_seconds": p.last_handshake.map(|d| d.as_secs_f64()),
                "rotating": p.rotating,
                "tx_bytes": p.tx_bytes,
                "rx_bytes": p.rx_bytes,
                "vnis": p.vnis,
                "bad_mac1": p.bad_mac1,
                "cookie_replies": p.cookie_replies,
                "handshakes_limited": p.handshakes_limited,
                "refused_packets": p.refused_packets,
                "handshakes": p.handshakes,
                "rotations": p.rotations,
            })
        })
        .collect()
}

/// The routing mesh as JSON: its interfaces, services, VIPs, flows and node-local serving.
fn mesh_json(mesh: &Mesh) -> Result<Value, Status> {
    let services = mesh_services_json(mesh)?;
    let interfaces = mesh_interfaces_json(mesh);
    let flows = mesh.flows().unwrap_or_default();
    let established = flows.iter().filter(|f| f.established).count();
    let node_local = match mesh.node_local() {
        Some(Ok(root)) => json!({ "served": true, "cgroup": root }),
        Some(Err(why)) => json!({ "served": false, "reason": why }),
        None => Value::Null,
    };
    let vips: serde_json::Map<String, Value> = mesh
        .vip_status()
        .map_err(|e| Status::internal(format!("reading the VIP counters: {e}")))?
        .into_iter()
        .map(|(name, s)| {
            let counters = json!({
                "connections": s.connections,
                "no_backend": s.no_backend,
            });
            (name, counters)
        })
        .collect();
    Ok(json!({
        "interfaces": interfaces,
        "services": services,
        "vips": vips,
        "flows": { "established": established, "new": flows.len() - established },
        "node_local": node_local,
    }))
}

/// The routing mesh's services, by name, as JSON: backends, table size and counters.
fn mesh_services_json(mesh: &Mesh) -> Result<serde_json::Map<String, Value>, Status> {
    Ok(mesh
        .status()
        .map_err(|e| Status::internal(format!("reading the mesh counters: {e}")))?
        .into_iter()
        .map(|(name, s)| {
            let c = s.stats;
            (
                name,
                json!({
                    "backends": s.backends,
                    "table_size": s.table_size,
                    "packets": c.packets,
                    "bytes": c.bytes,
                    "reply_packets": c.reply_packets,
                    "reply_bytes": c.reply_bytes,
                    "connections": c.connections,
                    "refused": c.refused,
                    "dropped": c.dropped,
                    "tunneled": c.tunneled,
                    "untracked": c.untracked,
                    "stale": c.stale,
                    "full": c.full,
                    "taken_over": c.taken_over,
                    "xdp_packets": c.packets.saturating_sub(c.tc_packets),
                    "tc_packets": c.tc_packets,
                    "checksum_handoffs": c.checksum_handoffs,
                    "egress_handoffs": c.egress_handoffs,
                }),
            )
        })
        .collect())
}

/// The routing mesh's interfaces, by name, as JSON.
fn mesh_interfaces_json(mesh: &Mesh) -> serde_json::Map<String, Value> {
    mesh.links()
        .into_iter()
        .map(|(name, link)| {
            // How balanced packets come in (public interfaces), whether they
            // leave by it, and the path each way.
            let xdp = link.entry.map(|entry| match entry {
                EntryPath::Xdp => "native",
                EntryPath::Tc => "none",
            });
            let summary = link.summary();
            (
                name,
                json!({
                    "driver": link.driver,
                    "takes_xdp_frames": link.takes_xdp_frames,
                    "xdp": xdp,
                    "entry": link.entry.map(EntryPath::name),
                    "egress": link.egress,
                    "path": summary,
                }),
            )
        })
        .collect()
}

/// Writes `text` to `path` atomically and durably, 0600: it holds the WireGuard private key.
fn save(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    shoal_control::durable::write_durable(path, text.as_bytes(), crate::durable::FILE_MODE)
}

/// The data plane, created on first use.
fn ensure<'a>(
    slot: &'a mut Option<Dataplane>,
    root: &std::path::Path,
) -> Result<&'a mut Dataplane, Status> {
    if slot.is_none() {
        let dataplane = Dataplane::new(root).map_err(|e| {
            Status::failed_precondition(format!(
                "starting the data plane under {}: {e}",
                root.display()
            ))
        })?;
        *slot = Some(dataplane);
    }
    Ok(slot.as_mut().expect("set above"))
}

/// Keeps the mesh's path on each interface for the node's description.
fn remember_paths(dp: &Dataplane, paths: &std::sync::Mutex<BTreeMap<String, String>>) {
    let now: BTreeMap<String, String> = dp
        .mesh()
        .map(|mesh| {
            mesh.links()
                .into_iter()
                .map(|(name, link)| (name, link.summary()))
                .collect()
        })
        .unwrap_or_default();
    *paths.lock().unwrap_or_else(|e| e.into_inner()) = now;
}

/// A restored state whose WireGuard CPUs this start of the daemon may no longer use (a smaller
/// cpuset, a CPU taken offline) is restored unpinned rather than refused whole: the networks
/// matter more than where the engine's threads run. The worker's next state says the current
/// `--wireguard-cpus`.
fn unpin_where_no_longer_allowed(state: &mut DesiredState) {
    use shoal_dataplane::overlay::affinity;
    let Some(wireguard) = state.wireguard.as_mut().filter(|w| !w.cpus.is_empty()) else {
        return;
    };
    let allowed = affinity::allowed_cpus().unwrap_or_default();
    if let Err(why) = affinity::check(&wireguard.cpus, &allowed) {
        tracing::warn!(%why, "restoring the data plane with the WireGuard threads unpinned");
        wireguard.cpus.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restored(cpus: &[usize]) -> Vec<usize> {
        let json = serde_json::json!({
            "node": "n1",
            "data_path": { "addr": "eth0" },
            "wireguard": { "private_key": "unused here", "cpus": cpus },
        });
        let mut state = DesiredState::from_json(&json.to_string()).expect("a state");
        unpin_where_no_longer_allowed(&mut state);
        state.wireguard.expect("kept").cpus
    }

    /// A stored pin to a CPU the daemon may still use is restored; one it may no longer use is
    /// dropped, and the rest of the state with it stays.
    #[test]
    fn a_restored_state_keeps_its_pins_only_where_the_daemon_may_still_run() {
        let first = shoal_dataplane::overlay::affinity::allowed_cpus().expect("our CPUs")[0];
        assert_eq!(restored(&[first]), [first]);
        assert_eq!(restored(&[first, 100_000]), Vec::<usize>::new());
    }
}
