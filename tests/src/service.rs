//! Services on a lab swarm, as the tests look at them: tasks per node, who answers a published
//! port, waiting for a service to run where it should.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::{
    Host, binary,
    mesh::{answers, labtool},
    swarm::Swarm,
    wait_until,
};

/// `service create FLAGS... host <shoal-labtool> serve --port 80` on `on`: a service whose
/// tasks answer with their names on port 80 (exec executor). Its output, or a panic.
pub fn create_serve(swarm: &Swarm, on: &Host, flags: &[&str]) -> String {
    let tool = labtool_path();
    let mut args = vec!["service", "create"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["host", &tool, "serve", "--port", "80"]);
    swarm.ok(on, &args)
}

/// `service ps SERVICE --format json` rows; none while the call fails (a leader election).
pub fn tasks(swarm: &Swarm, on: &Host, service: &str) -> Vec<Value> {
    let Ok(out) = swarm.lab.shoal(
        on,
        &["service", "ps", service, "--format", "json", "--no-trunc"],
    ) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Running tasks (desired running) per node name.
pub fn running_per_node(swarm: &Swarm, on: &Host, service: &str) -> BTreeMap<String, usize> {
    let mut per = BTreeMap::new();
    for t in tasks(swarm, on, service) {
        if t["DesiredState"] == "Running"
            && t["CurrentState"]
                .as_str()
                .is_some_and(|s| s.starts_with("Running"))
        {
            *per.entry(t["Node"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    per
}

pub fn wait_running(
    swarm: &Swarm,
    on: &Host,
    service: &str,
    what: &str,
    check: impl Fn(&BTreeMap<String, usize>) -> bool,
) {
    let mut last = BTreeMap::new();
    let waited = wait_until(what, Duration::from_secs(60), || {
        last = running_per_node(swarm, on, service);
        Ok(check(&last))
    });
    if let Err(e) = waited {
        let ps = swarm.ok(on, &["service", "ps", service]);
        panic!("{e}: running per node {last:?}\n{ps}");
    }
}

/// The names that answer `count` requests to `ip:port` from the client.
pub fn who_answers(swarm: &Swarm, ip: &str, port: u16, count: usize) -> Vec<String> {
    let target = format!("{ip}:{port}");
    let count = count.to_string();
    let out = labtool(
        swarm.lab.client(),
        &[
            "ask",
            "--target",
            &target,
            "--count",
            &count,
            "--timeout-ms",
            "2000",
        ],
    )
    .expect("ask runs");
    answers(&out)
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .collect()
}

/// Waits (up to 30 s) until all `count` requests to `ip:port` are answered, and returns who
/// answered. A task reported running reaches every node's mesh a moment later (the
/// dispatcher sends each node the new backends), so a test asks until the mesh has them.
pub fn wait_answers(swarm: &Swarm, ip: &str, port: u16, count: usize) -> Vec<String> {
    let mut answered = Vec::new();
    let waited = wait_until(
        &format!("{count} answers from {ip}:{port}"),
        Duration::from_secs(30),
        || {
            answered = who_answers(swarm, ip, port, count);
            Ok(answered.len() == count)
        },
    );
    if let Err(e) = waited {
        panic!("{e}: answered {answered:?}");
    }
    answered
}

pub fn labtool_path() -> String {
    binary("shoal-labtool")
        .expect("shoal-labtool is built")
        .display()
        .to_string()
}
