//! The routing mesh on a lab, before the control plane exists: an ingress network, backend tasks
//! (bare namespaces running `shoal-labtool serve`, which answers with its name), services with
//! published ports, each node's desired state derived from that and applied through `shoal
//! dataplane apply`. Used by the mesh tests and `cargo xtask bench mesh`.

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::error::{binary, io_error};
use crate::overlay::{Net, Overlay, Task, apply_each};
use crate::{Lab, LabError, wait_until};

/// The ingress network: VNI 4100, 10.255.0.0/24. Nodes are `10.255.0.<2 + index>`, tasks from
/// `.11` up.
pub const INGRESS: Net = Net {
    id: "ingress",
    vni: 4100,
    octet: 255,
    encrypted: false,
};

/// The port backend tasks listen on (TCP and UDP).
pub const TARGET_PORT: u16 = 80;

/// A service: its published ports (JSON, as the state file takes them) and its backends.
#[derive(Debug, Clone)]
pub struct Service {
    /// Its name.
    pub name: &'static str,
    /// Published ports, e.g. `json!({"published": 8080, "target": 80})`.
    pub ports: Vec<Value>,
    /// Task names.
    pub backends: Vec<&'static str>,
    /// `snat` or `preserve`.
    pub client_ip: &'static str,
}

impl Service {
    /// A service publishing `published`/tcp and `published`/udp on the backends' port 80.
    pub fn web(name: &'static str, published: u16, backends: Vec<&'static str>) -> Self {
        Self {
            name,
            ports: vec![
                json!({ "published": published, "target": TARGET_PORT }),
                json!({ "published": published, "target": TARGET_PORT, "protocol": "udp" }),
            ],
            backends,
            client_ip: "snat",
        }
    }
}

/// Backend tasks on the ingress network and the services they make up.
#[derive(Debug)]
pub struct Mesh {
    /// The ingress network and the tasks on it.
    pub overlay: Overlay,
    /// The services.
    pub services: Vec<Service>,
}

/// `(name, node, host number)` of each task.
pub type TaskSpec = (&'static str, usize, u8);

impl Mesh {
    /// Creates the tasks' namespaces (on the ingress network only) and starts a responder in
    /// each; see [`Mesh::over`].
    pub fn new(
        lab: &mut Lab,
        tasks: &[TaskSpec],
        services: Vec<Service>,
    ) -> Result<Mesh, LabError> {
        let overlay = Overlay::new(
            lab,
            vec![INGRESS],
            tasks
                .iter()
                .map(|&(name, node, host)| Task {
                    name,
                    node,
                    on: vec![(INGRESS.id, host)],
                })
                .collect(),
        )?;
        let responders: Vec<&str> = tasks.iter().map(|t| t.0).collect();
        Self::over(lab, overlay, &responders, services)
    }

    /// The mesh over an existing overlay (which must include [`INGRESS`]): starts a responder
    /// in each of `responders`. The lab's links stay as they are (plain veth pairs unless the
    /// caller made them wire-like).
    pub fn over(
        lab: &mut Lab,
        overlay: Overlay,
        responders: &[&str],
        services: Vec<Service>,
    ) -> Result<Mesh, LabError> {
        let mesh = Mesh { overlay, services };
        for name in responders {
            mesh.start(lab, name)?;
        }
        Ok(mesh)
    }

    /// Starts task `name`'s responder (TCP and UDP on [`TARGET_PORT`], answering with its name).
    pub fn start(&self, lab: &mut Lab, name: &str) -> Result<(), LabError> {
        let mut command = self
            .overlay
            .command(name, &binary("shoal-labtool")?.to_string_lossy());
        command.args(["serve", "--name", name, "--port", &TARGET_PORT.to_string()]);
        // Its output goes to a file: a lab that outlives its creator (the demo) must not hold
        // the creator's terminal or pipe open.
        let log_path = lab.dir().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(io_error(format!("creating {}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io_error(format!("opening {}", log_path.display())))?;
        command.stdout(log).stderr(log2);
        lab.spawn(command)?;
        Ok(())
    }

    /// Node `node`'s address on the ingress network.
    pub fn node_ingress_ip(node: usize) -> Ipv4Addr {
        INGRESS.ip(2 + node as u8)
    }

    /// Node `node`'s desired state: the overlay's, the other nodes' ingress addresses as
    /// endpoints, and the mesh with every service whose backends are `running`.
    pub fn state(&self, lab: &Lab, node: usize) -> Value {
        let mut state = self.overlay.state(lab, node);
        // Tasks reply to outside clients through the ingress gateway (client-IP mode needs it).
        if let Some(attachments) = state["attachments"].as_array_mut() {
            for a in attachments
                .iter_mut()
                .filter(|a| a["network"] == INGRESS.id)
            {
                a["default_route"] = json!(true);
            }
        }
        let endpoints = state["endpoints"].as_array_mut().expect("an array");
        for (i, other) in lab.nodes().iter().enumerate() {
            if i != node {
                endpoints.push(json!({
                    "network": INGRESS.id,
                    "ip": Self::node_ingress_ip(i).to_string(),
                    "node": other.name,
                }));
            }
        }
        let services: Vec<Value> = self
            .services
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "ports": s.ports,
                    "client_ip": s.client_ip,
                    "backends": s.backends.iter().map(|b| json!({
                        "task": b,
                        "network": INGRESS.id,
                        "ip": self.overlay.ip(b, INGRESS.id).to_string(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        state["mesh"] = json!({
            "ingress": { "network": INGRESS.id, "ip": Self::node_ingress_ip(node).to_string() },
            "interfaces": [lab.nodes()[node].public_if()],
            "services": services,
        });
        state
    }

    /// Applies every node's state, failing on the first refusal.
    pub fn apply_all(&self, lab: &Lab) -> Result<(), String> {
        apply_each(lab, |node| self.state(lab, node))
    }

    /// Waits until the responder of every task on the ingress network listens.
    pub fn wait_ready(&self) -> Result<(), String> {
        let on_ingress = self
            .overlay
            .tasks
            .iter()
            .filter(|t| t.on.iter().any(|(net, _)| *net == INGRESS.id));
        for task in on_ingress {
            wait_until(
                &format!("task {}'s responder", task.name),
                Duration::from_secs(10),
                || {
                    Ok(self
                        .overlay
                        .command(task.name, "ss")
                        .args(["-ltnH", &format!("sport = :{TARGET_PORT}")])
                        .output()
                        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("LISTEN")))
                },
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Runs `during` while a client in `client`'s namespace asks each of `targets` (`IP:PORT`)
/// twenty times a second (one HTTP request at a time, 2 s timeout); what `during` returned and
/// every answer (`Err`: what went wrong with that request).
pub fn asking_throughout<T>(
    client: &crate::Host,
    targets: &[String],
    during: impl FnOnce() -> T,
) -> (T, Vec<Result<String, String>>) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let askers: Vec<_> = targets
            .iter()
            .map(|target| {
                let stop = &stop;
                s.spawn(move || {
                    let mut all = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let args = [
                            "ask",
                            "--target",
                            target,
                            "--count",
                            "10",
                            "--interval-ms",
                            "50",
                            "--timeout-ms",
                            "2000",
                        ];
                        match labtool(client, &args) {
                            Ok(out) => all.extend(answers(&out).into_iter().map(|(_, a)| a)),
                            Err(e) => all.push(Err(format!("running the client: {e}"))),
                        }
                    }
                    all
                })
            })
            .collect();
        let result = during();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let asked = askers
            .into_iter()
            .flat_map(|a| a.join().unwrap_or_default())
            .collect();
        (result, asked)
    })
}

/// Runs `shoal-labtool ARGS` in `host`'s namespace.
pub fn labtool(host: &crate::Host, args: &[&str]) -> Result<Output, LabError> {
    let mut command: Command = host.command(binary("shoal-labtool")?)?;
    command.args(args);
    command.output().map_err(io_error(format!(
        "running shoal-labtool {}",
        args.join(" ")
    )))
}

/// The answers of `shoal-labtool ask` lines: `(source port, Ok(name) | Err(message))`.
pub fn answers(out: &Output) -> Vec<(u16, Result<String, String>)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (port, rest) = line.split_once(' ')?;
            let port = port.parse().ok()?;
            Some(match rest.strip_prefix("ERROR ") {
                Some(e) => (port, Err(e.to_owned())),
                None => (port, Ok(rest.trim().to_owned())),
            })
        })
        .collect()
}
