//! The first CLI <-> daemon slice on the lab: `shoald` in every node namespace with its own data
//! root and socket, and `shoal info` from each node answered by that node's daemon. Needs root.

use shoal_tests::{Lab, LabSpec};

#[test]
fn every_node_runs_shoald_and_shoal_info_answers_from_it() {
    let mut lab = Lab::up(LabSpec::nodes(3)).expect("lab up");
    lab.spawn_shoald_all().expect("shoald starts in every node");
    let nodes = lab.nodes().to_vec();
    for node in &nodes {
        let out = lab.shoal(node, &["info"]).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in [
            format!(" Name: {}", node.name),
            " Swarm: inactive".to_string(),
            format!(" Server Version: {}", env!("CARGO_PKG_VERSION")),
            format!(
                " Shoal Root Dir: {}",
                lab.host_dir(node).join("data").display()
            ),
        ] {
            assert!(
                stdout.lines().any(|l| l == line),
                "{line:?} missing from\n{stdout}"
            );
        }

        let out = lab.shoal(node, &["info", "--format", "json"]).unwrap();
        assert!(out.status.success());
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["Name"], node.name.as_str());
        assert_eq!(json["Swarm"]["LocalNodeState"], "inactive");
    }
    assert_eq!(lab.pids().len(), nodes.len(), "one shoald per node");
}
