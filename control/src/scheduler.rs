//! The scheduler: which node each new task goes to. Pure: nodes and tasks in, decisions out.
//!
//! - **Filters**, as SwarmKit's, each able to explain a rejection:
//!   - the node is Ready and Active (not paused or drained);
//!   - the service's placement constraints (`node.id`, `node.hostname`, `node.role`,
//!     `node.labels.<key>`, `node.platform.os`, `node.platform.arch`, with `==` or `!=`);
//!   - the service's host-mode published ports are free on the node.
//! - **Spread**: among the nodes that pass, the one with the fewest tasks of this service, then
//!   the fewest tasks overall, then the lowest node ID (so the result is deterministic).
//! - **Batches**: identical tasks (same service, same spec) are filtered once and placed one after
//!   another on a heap keyed by those counts.
//!
//! A task no node passes gets Docker's message: `no suitable node (scheduling constraints not
//! satisfied on 2 nodes; 1 node not available for new tasks)`.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap},
    fmt,
    str::FromStr,
};

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
    pub host_ports: BTreeSet<(Protocol, u16)>,
}

impl NodeInfo {
    fn total(&self) -> usize {
        self.tasks.values().sum()
    }
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
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
    pub host_ports: Vec<(Protocol, u16)>,
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
        let mut parts = Vec::new();
        if self.constraints > 0 {
            parts.push(format!(
                "scheduling constraints not satisfied on {}",
                nodes(self.constraints)
            ));
        }
        if self.host_ports > 0 {
            parts.push(format!(
                "host-mode port already in use on {}",
                nodes(self.host_ports)
            ));
        }
        if self.unavailable > 0 {
            parts.push(format!(
                "{} not available for new tasks",
                nodes(self.unavailable)
            ));
        }
        if parts.is_empty() {
            parts.push("no nodes in the swarm".into());
        }
        write!(f, "no suitable node ({})", parts.join("; "))
    }
}

/// The first filter `node` fails for `placement`, if any.
fn rejects(node: &NodeInfo, placement: &Placement) -> Option<fn(&mut Rejections)> {
    if !node.ready || !node.active {
        return Some(|r| r.unavailable += 1);
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
    None
}

/// Places `count` identical tasks of `service` with `placement` on `nodes`, updating the nodes'
/// counts (and host ports) as it goes. Returns the chosen node index per task, in order; the
/// tasks that found no node get the explanation instead.
pub fn place(
    nodes: &mut [NodeInfo],
    service: &str,
    placement: &Placement,
    count: usize,
) -> Vec<Result<usize, Rejections>> {
    let mut rejections = Rejections::default();
    // (fewest of this service, fewest overall, lowest ID) first: a min-heap via Reverse.
    let mut heap = BinaryHeap::new();
    for (index, node) in nodes.iter().enumerate() {
        match rejects(node, placement) {
            Some(count) => count(&mut rejections),
            None => heap.push(Reverse((
                node.tasks.get(service).copied().unwrap_or(0),
                node.total(),
                node.id.clone(),
                index,
            ))),
        }
    }
    let mut placed = Vec::with_capacity(count);
    for _ in 0..count {
        let Some(Reverse((mine, total, id, index))) = heap.pop() else {
            placed.push(Err(rejections));
            continue;
        };
        let node = &mut nodes[index];
        *node.tasks.entry(service.to_owned()).or_default() += 1;
        placed.push(Ok(index));
        if placement.host_ports.is_empty() {
            heap.push(Reverse((mine + 1, total + 1, id, index)));
        } else {
            // Its ports are taken now: the node cannot take another task of this batch.
            node.host_ports.extend(placement.host_ports.iter().copied());
            rejections.host_ports += 1;
        }
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
            host_ports: vec![(Protocol::Tcp, 8080)],
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
            host_ports: vec![(Protocol::Udp, 8080)],
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
