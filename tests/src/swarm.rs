//! A swarm on the lab: `shoald` on every node, `swarm init` on n1, the other nodes joined as
//! managers or workers with tokens read from n1, as a user would type it.

use std::time::Duration;

use serde_json::Value;

use crate::{Host, Lab, LabSpec, output_text, wait_until};

/// A lab whose nodes form a swarm: `managers` first (n1 initializes), then `workers`.
#[derive(Debug)]
pub struct Swarm {
    /// The lab.
    pub lab: Lab,
    /// The managers, n1 first.
    pub managers: Vec<Host>,
    /// The workers.
    pub workers: Vec<Host>,
}

impl Swarm {
    /// Starts the daemons without forming a swarm.
    pub fn daemons(nodes: usize) -> Self {
        Self::daemons_with(nodes, &[])
    }

    /// [`Swarm::daemons`], each `shoald` started with `shoald` flags too.
    pub fn daemons_with(nodes: usize, shoald: &[&str]) -> Self {
        let mut lab = Lab::up(LabSpec::nodes(nodes)).expect("lab up");
        if !shoald.is_empty() {
            lab.set_shoald_args(shoald);
        }
        lab.spawn_shoald_all().expect("shoald starts on every node");
        Self {
            lab,
            managers: Vec::new(),
            workers: Vec::new(),
        }
    }

    /// `managers` + `workers` nodes in one swarm, every node Ready.
    pub fn up(managers: usize, workers: usize) -> Self {
        Self::up_with(managers, workers, &[])
    }

    /// [`Swarm::up`] with more `swarm init` flags (e.g. `--dispatcher-heartbeat 1s`).
    pub fn up_with(managers: usize, workers: usize, init: &[&str]) -> Self {
        Self::up_with_daemons(managers, workers, init, &[])
    }

    /// [`Swarm::up_with`], each `shoald` started with `shoald` flags too (e.g.
    /// `--executor docker`).
    pub fn up_with_daemons(
        managers: usize,
        workers: usize,
        init: &[&str],
        shoald: &[&str],
    ) -> Self {
        Self::up_with_spare(managers, workers, 0, init, shoald)
    }

    /// [`Swarm::up_with_daemons`] on a lab with `spare` more nodes, whose daemons run but which
    /// have not joined (the last nodes of the lab).
    pub fn up_with_spare(
        managers: usize,
        workers: usize,
        spare: usize,
        init: &[&str],
        shoald: &[&str],
    ) -> Self {
        let mut swarm = Self::daemons_with(managers + workers + spare, shoald);
        let nodes = swarm.lab.nodes().to_vec();
        let first = nodes[0].clone();
        let mut args = vec!["swarm", "init", "--advertise-addr", "eth0"];
        args.extend_from_slice(init);
        swarm.ok(&first, &args);
        swarm.managers.push(first.clone());
        let manager_token = swarm.ok(&first, &["swarm", "join-token", "-q", "manager"]);
        let worker_token = swarm.ok(&first, &["swarm", "join-token", "-q", "worker"]);
        let remote = format!("{}:2377", first.public_ip);
        for (n, node) in nodes.iter().enumerate().take(managers + workers).skip(1) {
            let token = if n < managers {
                &manager_token
            } else {
                &worker_token
            };
            swarm.ok(
                node,
                &[
                    "swarm",
                    "join",
                    "--token",
                    token.trim(),
                    "--advertise-addr",
                    "eth0",
                    &remote,
                ],
            );
            if n < managers {
                swarm.managers.push(node.clone());
            } else {
                swarm.workers.push(node.clone());
            }
        }
        swarm.wait_nodes(&first, "every node Ready", |nodes| {
            nodes.len() == managers + workers && nodes.iter().all(|n| n["Status"] == "Ready")
        });
        swarm
    }

    /// Runs `shoal args` on `host`; its standard output, or a panic with everything it said.
    pub fn ok(&self, host: &Host, args: &[&str]) -> String {
        let out = self.lab.shoal(host, args).expect("run shoal");
        assert!(
            out.status.success(),
            "shoal {} on {} failed:\n{}",
            args.join(" "),
            host.name,
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `shoal args` on `host`, which must fail; its standard error.
    pub fn fails(&self, host: &Host, args: &[&str]) -> String {
        let out = self.lab.shoal(host, args).expect("run shoal");
        assert!(
            !out.status.success(),
            "shoal {} on {} succeeded but should not have:\n{}",
            args.join(" "),
            host.name,
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// [`Swarm::ok`] for a command line written as one string (`"service scale web=3"`),
    /// split at whitespace: for arguments without spaces of their own.
    pub fn ok_line(&self, host: &Host, line: &str) -> String {
        self.ok(host, &line.split_whitespace().collect::<Vec<_>>())
    }

    /// [`Swarm::fails`] for a command line written as one string, split at whitespace.
    pub fn fails_line(&self, host: &Host, line: &str) -> String {
        self.fails(host, &line.split_whitespace().collect::<Vec<_>>())
    }

    /// `node ls --format json` on `host`, one object per node; empty if the call fails.
    pub fn nodes(&self, host: &Host) -> Vec<Value> {
        let Ok(out) = self.lab.shoal(host, &["node", "ls", "--format", "json"]) else {
            return Vec::new();
        };
        if !out.status.success() {
            return Vec::new();
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The row of `node ls` for the node named `name`, as `host` sees it.
    pub fn node(&self, host: &Host, name: &str) -> Option<Value> {
        self.nodes(host).into_iter().find(|n| n["Hostname"] == name)
    }

    /// Waits (up to 60 s) until `check` holds for `node ls` on `host`.
    pub fn wait_nodes(&self, host: &Host, what: &str, check: impl Fn(&[Value]) -> bool) {
        let mut last = Vec::new();
        let waited = wait_until(what, Duration::from_secs(60), || {
            last = self.nodes(host);
            Ok(check(&last))
        });
        if let Err(e) = waited {
            panic!("{e}; node ls on {}: {last:#?}", host.name);
        }
    }

    /// The manager `node ls` calls Leader, as `host` sees it.
    pub fn leader(&self, host: &Host) -> Option<String> {
        self.nodes(host)
            .into_iter()
            .find(|n| n["ManagerStatus"] == "Leader")
            .and_then(|n| n["Hostname"].as_str().map(str::to_owned))
    }

    /// `shoal info --format json` on `host`.
    pub fn info(&self, host: &Host) -> Value {
        serde_json::from_str(&self.ok(host, &["info", "--format", "json"])).expect("info is JSON")
    }

    /// How far `host`'s replica of the store has caught up (managers only).
    pub fn store_index(&self, host: &Host) -> u64 {
        self.info(host)["Swarm"]["StoreIndex"].as_u64().unwrap_or(0)
    }

    /// `node inspect name` on `host`: the node object.
    pub fn inspect(&self, host: &Host, name: &str) -> Value {
        let out = self.ok(host, &["node", "inspect", name]);
        let all: Value = serde_json::from_str(&out).expect("inspect is JSON");
        all[0].clone()
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Host {
        self.lab
            .nodes()
            .iter()
            .find(|h| h.name == name)
            .cloned()
            .expect("a node of the lab")
    }

    /// Cuts (`up == false`) or restores `host`'s public/control link at the switch.
    pub fn control_link(&self, host: &Host, up: bool) {
        let state = if up { "up" } else { "down" };
        let out = std::process::Command::new("ip")
            .args([
                "-n",
                self.lab.switch(),
                "link",
                "set",
                &format!("p-{}", host.name),
                state,
            ])
            .output()
            .expect("run ip");
        assert!(out.status.success(), "{}", output_text(&out));
    }
}
