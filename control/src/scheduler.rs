//! The scheduler: which node each new task goes to. Pure: nodes and tasks in, decisions out.
//!
//! - **Filters**, as SwarmKit's, each able to explain a rejection:
//!   - the node is Ready and Active (not paused or drained);
//!   - the service's placement constraints (`node.id`, `node.hostname`, `node.role`,
//!     `node.labels.<key>`, `node.platform.os`, `node.platform.arch`, with `==` or `!=`);
//!   - the node has the CPUs and memory the task reserves left (`--reserve-cpu`,
//!     `--reserve-memory`: what the node reported, less what its other tasks reserve);
//!   - the service's placement constraints (`node.id`, `node.hostname`, `node.role`,
//!     `node.labels.<key>`, `node.platform.os`, `node.platform.arch`, with `==` or `!=`);
//!   - the service's host-mode published ports are free on the node;
//!   - the node runs fewer than `--replicas-max-per-node` tasks of the service.
//! - **Preferences** (`--placement-pref spread=node.labels.zone`, several in order): tasks are
//!   spread evenly over the values of each label first (nodes without it count as one more
//!   value), then over the nodes within.
//! - **Spread**: among the nodes that pass, the one with the fewest tasks of this service, then
//!   the fewest tasks overall, then the lowest node ID (so the result is deterministic).
//! - **Batches**: identical tasks (same service, same spec) are filtered once and placed one after
//!   another on a heap keyed by those counts (a scan per task when there are preferences).
//!
//! A task no node passes gets Docker's message, the most common reason first: `no suitable node
//! (scheduling constraints not satisfied on 2 nodes; 1 node not available for new tasks)`,
//! `no suitable node (insufficient resources on 3 nodes)`.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap},
    fmt,
    str::FromStr,
};

use shoal_api::service::PortProtocol;

/// What the scheduler knows of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node ID.
    pub id: String,
    /// Host name.
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// `node update --label-add`.
    pub labels: BTreeMap<String, String>,
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `x86_64`.
    pub arch: String,
    /// Ready (heartbeating).
    pub ready: bool,
    /// Availability Active (not Pause or Drain).
    pub active: bool,
    /// Tasks already on the node, per service.
    pub tasks: HashMap<String, usize>,
    /// Host-mode published ports in use on the node: (protocol, port).
    pub host_ports: BTreeSet<(PortProtocol, u16)>,
    /// What is left to reserve: what the node reported less its tasks' reservations.
    pub available: Resources,
}

impl NodeInfo {
    fn total(&self) -> usize {
        self.tasks.values().sum()
    }

    fn count(&self, service: &str) -> usize {
        self.tasks.get(service).copied().unwrap_or(0)
    }
}

/// CPUs (in billionths) and memory (bytes): a node's capacity, or what a task reserves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU time, in billionths of a CPU.
    pub nano_cpus: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
}

impl Resources {
    fn holds(&self, want: &Resources) -> bool {
        self.nano_cpus >= want.nano_cpus && self.memory_bytes >= want.memory_bytes
    }

    /// Takes `used` off what is left.
    pub fn take(&mut self, used: &Resources) {
        self.nano_cpus -= used.nano_cpus;
        self.memory_bytes -= used.memory_bytes;
    }
}

/// One placement constraint: `node.<field> == | != value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    field: Field,
    equal: bool,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Id,
    Hostname,
    Role,
    Label(String),
    Os,
    Arch,
}

/// A constraint that does not parse; the message says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid constraint {constraint:?}: {reason}")]
pub struct ConstraintError {
    constraint: String,
    reason: &'static str,
}

impl FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(text: &str) -> Result<Self, ConstraintError> {
        let error = |reason| ConstraintError {
            constraint: text.to_owned(),
            reason,
        };
        let (key, value, equal) = if let Some((k, v)) = text.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = text.split_once("==") {
            (k, v, true)
        } else {
            return Err(error("expected KEY==VALUE or KEY!=VALUE"));
        };
        let (key, value) = (key.trim(), value.trim());
        if value.is_empty() {
            return Err(error("the value is empty"));
        }
        if value.contains("==") || value.contains("!=") {
            return Err(error("more than one operator"));
        }
        let field = match key {
            "node.id" => Field::Id,
            "node.hostname" => Field::Hostname,
            "node.role" => {
                if value != "manager" && value != "worker" {
                    return Err(error("node.role is manager or worker"));
                }
                Field::Role
            }
            "node.platform.os" => Field::Os,
            "node.platform.arch" => Field::Arch,
            key => match key.strip_prefix("node.labels.") {
                Some(label) if !label.is_empty() => Field::Label(label.to_owned()),
                Some(_) => return Err(error("node.labels. needs a label name")),
                None => {
                    return Err(error(
                        "the key must be node.id, node.hostname, node.role, node.labels.<name>, node.platform.os or node.platform.arch",
                    ));
                }
            },
        };
        Ok(Self {
            field,
            equal,
            value: value.to_owned(),
        })
    }
}

impl Constraint {
    /// Whether `node` satisfies the constraint. Values compare case-insensitively except
    /// labels, as in SwarmKit; a missing label never equals.
    pub fn matches(&self, node: &NodeInfo) -> bool {
        let found = match &self.field {
            Field::Id => Some(node.id.as_str()),
            Field::Hostname => Some(node.hostname.as_str()),
            Field::Role => Some(node.role.as_str()),
            Field::Os => Some(node.os.as_str()),
            Field::Arch => Some(node.arch.as_str()),
            Field::Label(key) => node.labels.get(key).map(String::as_str),
        };
        let same = match (&self.field, found) {
            (_, None) => false,
            (Field::Label(_), Some(v)) => v == self.value,
            (_, Some(v)) => v.eq_ignore_ascii_case(&self.value),
        };
        same == self.equal
    }
}

/// What identical tasks ask of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// `--constraint`, all of which must hold.
    pub constraints: Vec<Constraint>,
    /// Host-mode published ports: each task needs them free on its node.
    pub host_ports: Vec<(PortProtocol, u16)>,
    /// `--reserve-cpu`, `--reserve-memory` of each task.
    pub reservation: Resources,
    /// `--replicas-max-per-node` (0: no limit).
    pub max_per_node: usize,
    /// `--placement-pref spread=node.labels.<name>`: the label names, outermost first.
    pub spread_over: Vec<String>,
}

/// Why nodes were passed over, counted per filter (in SwarmKit's order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rejections {
    /// Not Ready, or not Active.
    pub unavailable: usize,
    /// A constraint failed.
    pub constraints: usize,
    /// A host-mode port is taken.
    pub host_ports: usize,
    /// Not enough CPUs or memory left to reserve.
    pub resources: usize,
    /// The node has `--replicas-max-per-node` tasks of the service already.
    pub max_replicas: usize,
}

impl fmt::Display for Rejections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes = |n: usize| {
            if n == 1 {
                "1 node".to_owned()
            } else {
                format!("{n} nodes")
            }
        };
        // SwarmKit's filter order, then the most frequent reason first (a stable sort).
        let mut parts = [
            (
                self.unavailable,
                format!("{} not available for new tasks", nodes(self.unavailable)),
            ),
            (
                self.resources,
                format!("insufficient resources on {}", nodes(self.resources)),
            ),
            (
                self.constraints,
                format!(
                    "scheduling constraints not satisfied on {}",
                    nodes(self.constraints)
                ),
            ),
            (
                self.host_ports,
                format!(
                    "host-mode port already in use on {}",
                    nodes(self.host_ports)
                ),
            ),
            (
                self.max_replicas,
                "max replicas per node limit exceed".to_owned(),
            ),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .collect::<Vec<_>>();
        parts.sort_by_key(|(n, _)| Reverse(*n));
        let mut parts: Vec<String> = parts.into_iter().map(|(_, text)| text).collect();
        if parts.is_empty() {
            parts.push("no nodes in the swarm".into());
        }
        write!(f, "no suitable node ({})", parts.join("; "))
    }
}

/// The first filter `node` fails for one more task of `service` with `placement`, if any.
fn rejects(node: &NodeInfo, service: &str, placement: &Placement) -> Option<fn(&mut Rejections)> {
    if !node.ready || !node.active {
        return Some(|r| r.unavailable += 1);
    }
    if !node.available.holds(&placement.reservation) {
        return Some(|r| r.resources += 1);
    }
    if !placement.constraints.iter().all(|c| c.matches(node)) {
        return Some(|r| r.constraints += 1);
    }
    if placement
        .host_ports
        .iter()
        .any(|p| node.host_ports.contains(p))
    {
        return Some(|r| r.host_ports += 1);
    }
    if placement.max_per_node > 0 && node.count(service) >= placement.max_per_node {
        return Some(|r| r.max_replicas += 1);
    }
    None
}

/// Places `count` identical tasks of `service` with `placement` on `nodes`, updating the nodes'
/// counts, host ports and resources as it goes. Returns the chosen node index per task, in
/// order; the tasks that found no node get the explanation instead.
pub fn place(
    nodes: &mut [NodeInfo],
    service: &str,
    placement: &Placement,
    count: usize,
) -> Vec<Result<usize, Rejections>> {
    if !placement.spread_over.is_empty() {
        return place_by_preference(nodes, service, placement, count);
    }
    let mut rejections = Rejections::default();
    // (fewest of this service, fewest overall, lowest ID) first: a min-heap via Reverse.
    let mut heap = BinaryHeap::new();
    for (index, node) in nodes.iter().enumerate() {
        match rejects(node, service, placement) {
            Some(count) => count(&mut rejections),
            None => heap.push(Reverse((
                node.count(service),
                node.total(),
                node.id.clone(),
                index,
            ))),
        }
    }
    let mut placed = Vec::with_capacity(count);
    for _ in 0..count {
        let Some(Reverse((_, _, id, index))) = heap.pop() else {
            placed.push(Err(rejections));
            continue;
        };
        assign(&mut nodes[index], service, placement);
        placed.push(Ok(index));
        // The node may take another task of the batch, or now fails a filter (its ports are
        // taken, its resources or the per-node limit reached).
        let node = &nodes[index];
        match rejects(node, service, placement) {
            Some(count) => count(&mut rejections),
            None => heap.push(Reverse((node.count(service), node.total(), id, index))),
        }
    }
    placed
}

/// Books one task of `service` on `node`.
fn assign(node: &mut NodeInfo, service: &str, placement: &Placement) {
    *node.tasks.entry(service.to_owned()).or_default() += 1;
    node.host_ports.extend(placement.host_ports.iter().copied());
    node.available.take(&placement.reservation);
}

/// [`place`] with spread preferences: each task goes to the eligible node whose label values
/// hold the fewest tasks of the service, level by level, then by the usual spread order.
fn place_by_preference(
    nodes: &mut [NodeInfo],
    service: &str,
    placement: &Placement,
    count: usize,
) -> Vec<Result<usize, Rejections>> {
    // Each node's group at each level: its values of the labels down to that level (a node
    // without the label is in the group of those without it).
    let groups: Vec<Vec<Vec<Option<String>>>> = nodes
        .iter()
        .map(|node| {
            (1..=placement.spread_over.len())
                .map(|depth| {
                    placement.spread_over[..depth]
                        .iter()
                        .map(|label| node.labels.get(label).cloned())
                        .collect()
                })
                .collect()
        })
        .collect();
    let mut in_group: HashMap<&[Option<String>], usize> = HashMap::new();
    for (node, levels) in nodes.iter().zip(&groups) {
        for group in levels {
            *in_group.entry(group.as_slice()).or_default() += node.count(service);
        }
    }
    let mut placed = Vec::with_capacity(count);
    for _ in 0..count {
        let mut rejections = Rejections::default();
        let mut best: Option<(Vec<usize>, usize, usize, &str, usize)> = None;
        for (index, node) in nodes.iter().enumerate() {
            if let Some(count) = rejects(node, service, placement) {
                count(&mut rejections);
                continue;
            }
            let levels = groups[index]
                .iter()
                .map(|g| in_group[g.as_slice()])
                .collect();
            let key = (
                levels,
                node.count(service),
                node.total(),
                node.id.as_str(),
                index,
            );
            if best.as_ref().is_none_or(|b| key < *b) {
                best = Some(key);
            }
        }
        let Some((.., index)) = best else {
            placed.push(Err(rejections));
            continue;
        };
        assign(&mut nodes[index], service, placement);
        for group in &groups[index] {
            *in_group.get_mut(group.as_slice()).expect("counted above") += 1;
        }
        placed.push(Ok(index));
    }
    placed
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn node(id: &str, role: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            hostname: format!("host-{id}"),
            role: role.into(),
            labels: BTreeMap::new(),
            os: "linux".into(),
            arch: "x86_64".into(),
            ready: true,
            active: true,
            tasks: HashMap::new(),
            host_ports: BTreeSet::new(),
            available: Resources {
                nano_cpus: 2_000_000_000,
                memory_bytes: 1 << 30,
            },
        }
    }

    fn placed_on(nodes: &[NodeInfo], results: &[Result<usize, Rejections>]) -> Vec<String> {
        results
            .iter()
            .map(|r| nodes[*r.as_ref().unwrap()].id.clone())
            .collect()
    }

    #[test]
    fn constraints_parse_as_docker_takes_them_and_say_what_is_wrong() {
        assert!("node.role==manager".parse::<Constraint>().is_ok());
        assert!("node.labels.zone != a".parse::<Constraint>().is_ok());
        assert!("node.platform.os==linux".parse::<Constraint>().is_ok());
        for (bad, says) in [
            ("node.role=manager", "expected KEY==VALUE"),
            ("node.role==boss", "manager or worker"),
            ("node.colour==red", "the key must be"),
            ("node.labels.==x", "needs a label name"),
            ("node.id==", "the value is empty"),
            ("node.id==a==b", "more than one operator"),
        ] {
            let e = bad.parse::<Constraint>().unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn six_tasks_spread_two_per_node_and_constraints_hold() {
        let mut nodes = vec![
            node("a", "manager"),
            node("b", "worker"),
            node("c", "worker"),
        ];
        let results = place(&mut nodes, "web", &Placement::default(), 6);
        let mut on = placed_on(&nodes, &results);
        on.sort();
        assert_eq!(on, ["a", "a", "b", "b", "c", "c"]);
        let managers = Placement {
            constraints: vec!["node.role==manager".parse().unwrap()],
            ..Default::default()
        };
        let results = place(&mut nodes, "db", &managers, 3);
        assert_eq!(placed_on(&nodes, &results), ["a", "a", "a"]);
    }

    #[test]
    fn spread_counts_this_service_first_then_all_tasks() {
        let mut nodes = vec![node("a", "worker"), node("b", "worker")];
        nodes[0].tasks.insert("other".into(), 5);
        // Both have no "web": the one with fewer tasks overall wins.
        let results = place(&mut nodes, "web", &Placement::default(), 1);
        assert_eq!(placed_on(&nodes, &results), ["b"]);
        let results = place(&mut nodes, "web", &Placement::default(), 1);
        assert_eq!(placed_on(&nodes, &results), ["a"]);
    }

    #[test]
    fn rejections_are_explained_as_docker_does() {
        let mut nodes = vec![
            node("a", "worker"),
            node("b", "worker"),
            node("c", "manager"),
        ];
        nodes[2].active = false;
        let placement = Placement {
            constraints: vec!["node.role==manager".parse().unwrap()],
            ..Default::default()
        };
        let results = place(&mut nodes, "web", &placement, 1);
        assert_eq!(
            results[0].unwrap_err().to_string(),
            "no suitable node (scheduling constraints not satisfied on 2 nodes; 1 node not available for new tasks)"
        );
    }

    #[test]
    fn a_host_port_takes_one_task_per_node() {
        let mut nodes = vec![node("a", "worker"), node("b", "worker")];
        let placement = Placement {
            host_ports: vec![(PortProtocol::Tcp, 8080)],
            ..Default::default()
        };
        let results = place(&mut nodes, "web", &placement, 3);
        assert!(results[0].is_ok() && results[1].is_ok());
        assert_eq!(
            results[2].unwrap_err().to_string(),
            "no suitable node (host-mode port already in use on 2 nodes)"
        );
        // Another protocol on the same number is free.
        let udp = Placement {
            host_ports: vec![(PortProtocol::Udp, 8080)],
            ..Default::default()
        };
        assert!(place(&mut nodes, "dns", &udp, 2).iter().all(Result::is_ok));
    }

    #[test]
    fn a_label_constraint_is_exact_and_a_missing_label_never_equals() {
        let mut nodes = [node("a", "worker"), node("b", "worker")];
        nodes[0].labels.insert("zone".into(), "Eu".into());
        let eu: Constraint = "node.labels.zone==Eu".parse().unwrap();
        let not_eu: Constraint = "node.labels.zone!=Eu".parse().unwrap();
        let lower: Constraint = "node.labels.zone==eu".parse().unwrap();
        assert!(eu.matches(&nodes[0]) && !eu.matches(&nodes[1]));
        assert!(!not_eu.matches(&nodes[0]) && not_eu.matches(&nodes[1]));
        assert!(!lower.matches(&nodes[0]));
        let host: Constraint = "node.hostname==HOST-A".parse().unwrap();
        assert!(host.matches(&nodes[0]));
    }

    #[test]
    fn reservations_fit_into_what_nodes_have_left_and_say_when_they_do_not() {
        let mut nodes = vec![node("a", "worker"), node("b", "worker")];
        nodes[1].available.memory_bytes = 256 << 20;
        let half_gig = Placement {
            reservation: Resources {
                nano_cpus: 500_000_000,
                memory_bytes: 512 << 20,
            },
            ..Default::default()
        };
        // Only a has 512 MiB, and only twice.
        let results = place(&mut nodes, "db", &half_gig, 3);
        assert_eq!(results[0], Ok(0));
        assert_eq!(results[1], Ok(0));
        assert_eq!(
            results[2].unwrap_err().to_string(),
            "no suitable node (insufficient resources on 2 nodes)"
        );
        assert_eq!(nodes[0].available.memory_bytes, 0);
        assert_eq!(nodes[0].available.nano_cpus, 1_000_000_000);
        let too_many_cpus = Placement {
            reservation: Resources {
                nano_cpus: 3_000_000_000,
                memory_bytes: 0,
            },
            constraints: vec!["node.id==b".parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(
            place(&mut nodes, "big", &too_many_cpus, 1)[0]
                .unwrap_err()
                .to_string(),
            "no suitable node (insufficient resources on 2 nodes)"
        );
    }

    #[test]
    fn replicas_max_per_node_caps_each_node() {
        let mut nodes = vec![node("a", "worker"), node("b", "worker")];
        let one_each = Placement {
            max_per_node: 1,
            ..Default::default()
        };
        let results = place(&mut nodes, "web", &one_each, 3);
        assert!(results[0].is_ok() && results[1].is_ok());
        assert_eq!(
            results[2].unwrap_err().to_string(),
            "no suitable node (max replicas per node limit exceed)"
        );
        nodes[0].active = false;
        nodes[1].tasks.clear();
        let results = place(&mut nodes, "api", &one_each, 2);
        assert_eq!(
            results[1].unwrap_err().to_string(),
            "no suitable node (1 node not available for new tasks; max replicas per node limit exceed)"
        );
    }

    #[test]
    fn a_spread_preference_balances_label_values_before_nodes() {
        // Zone x has three nodes, zone y one, and one node has no zone.
        let mut nodes: Vec<NodeInfo> = ["x1", "x2", "x3", "y1", "z"]
            .iter()
            .map(|id| node(id, "worker"))
            .collect();
        for n in &mut nodes[..4] {
            let zone = n.id[..1].to_owned();
            n.labels.insert("zone".into(), zone);
        }
        let spread = Placement {
            spread_over: vec!["zone".into()],
            ..Default::default()
        };
        let results = place(&mut nodes, "web", &spread, 6);
        let on = placed_on(&nodes, &results);
        let per_zone = |zone: &str| on.iter().filter(|n| n.starts_with(zone)).count();
        // Two per value (x, y, no zone), whatever the number of nodes behind each.
        assert_eq!((per_zone("x"), per_zone("y"), per_zone("z")), (2, 2, 2));
        // Within zone x, the two went to different nodes.
        let mut x: Vec<&String> = on.iter().filter(|n| n.starts_with('x')).collect();
        x.dedup();
        assert_eq!(x.len(), 2);
    }

    proptest! {
        /// Without constraints, replicas spread evenly: node counts of a service differ by at
        /// most one, and every task is placed.
        #[test]
        fn spread_is_even(nodes in 1_usize..40, tasks in 0_usize..400) {
            let mut all: Vec<NodeInfo> = (0..nodes).map(|i| node(&format!("n{i:03}"), "worker")).collect();
            let results = place(&mut all, "web", &Placement::default(), tasks);
            prop_assert!(results.iter().all(Result::is_ok));
            let counts: Vec<usize> = all.iter().map(|n| n.tasks.get("web").copied().unwrap_or(0)).collect();
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            prop_assert!(max - min <= 1, "{counts:?}");
            prop_assert_eq!(counts.iter().sum::<usize>(), tasks);
        }

        /// Every placement satisfies every constraint, on a Ready and Active node.
        #[test]
        fn placements_satisfy_the_filters(
            roles in prop::collection::vec(any::<bool>(), 1..30),
            down in prop::collection::vec(any::<bool>(), 30),
            want_manager in any::<bool>(),
            tasks in 1_usize..60,
        ) {
            let mut all: Vec<NodeInfo> = roles
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let mut n = node(&format!("n{i:03}"), if *m { "manager" } else { "worker" });
                    n.ready = !down[i];
                    n
                })
                .collect();
            let role = if want_manager { "manager" } else { "worker" };
            let placement = Placement {
                constraints: vec![format!("node.role=={role}").parse().unwrap()],
                ..Default::default()
            };
            let eligible = all.iter().filter(|n| n.ready && n.role == role).count();
            let results = place(&mut all, "web", &placement, tasks);
            for result in &results {
                match result {
                    Ok(i) => prop_assert!(all[*i].ready && all[*i].role == role),
                    Err(why) => {
                        prop_assert_eq!(eligible, 0);
                        prop_assert_eq!(why.constraints + why.unavailable, all.len());
                    }
                }
            }
        }
    }
}
