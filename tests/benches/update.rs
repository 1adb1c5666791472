//! `cargo xtask bench update`: how long a rolling update of 100 tasks takes, and what it costs
//! the clients of the service.
//!
//! - `update_100_tasks_s`: on a 3-manager lab with the `exec` executor, a service of 100 tasks
//!   published on 8080; `service update --env-add V=2 --update-parallelism 10 --update-delay 0s`
//!   (stop-first, Docker's default), timed from the command's start to its end (the CLI waits,
//!   as Docker's does, until the update is completed, which includes the 5 s monitor period).
//! - `failed_requests_during_update` (goal 0) of `requests_during_update`: a client asking
//!   every node's 8080 twenty times a second throughout.
//! - `docker_update_100_tasks_s`: the same update through Docker's swarm mode on the machine's
//!   engine (one node, the same image and command, no published port: the engine runs without
//!   iptables), timed the same way. Skipped (and said so) without an engine, or when it is
//!   already part of a swarm.
//!
//! One run of each. Writes `$SHOAL_BENCH_OUT` (default `target/bench/update.json`). Needs root
//! and release builds (the xtask builds them).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shoal_tests::mesh::{answers, asking_throughout, labtool};
use shoal_tests::{binary, docker, swarm::Swarm, wait_until};

const REPLICAS: usize = 100;
const IMAGE: &str = "shoal-labtool:bench";

/// Waits until `service ls` says `want` of `name` run.
fn shoal_running(swarm: &Swarm, name: &str) {
    let n1 = swarm.managers[0].clone();
    let want = format!("\"Replicas\":\"{REPLICAS}/{REPLICAS}\"");
    let named = format!("\"Name\":\"{name}\"");
    let waited = wait_until("the service running", Duration::from_secs(300), || {
        Ok(swarm
            .lab
            .shoal(&n1, &["service", "ls", "--format", "json"])
            .is_ok_and(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|l| l.contains(&named) && l.contains(&want))
            }))
    });
    assert!(waited.is_ok(), "{waited:?}");
}

fn shoal_figures(results: &mut BTreeMap<String, f64>) {
    let tool = binary("shoal-labtool")
        .expect("built")
        .display()
        .to_string();
    let swarm = Swarm::up(3, 0);
    let n1 = swarm.managers[0].clone();
    let count = REPLICAS.to_string();
    swarm.ok(
        &n1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "web",
            "--replicas",
            &count,
            "--publish",
            "8080:80",
            "host",
            &tool,
            "serve",
            "--port",
            "80",
        ],
    );
    shoal_running(&swarm, "web");
    let targets: Vec<String> = swarm
        .lab
        .nodes()
        .iter()
        .map(|n| format!("{}:8080", n.public_ip))
        .collect();
    let client = swarm.lab.client().clone();
    for target in &targets {
        let ready = wait_until("every node answers", Duration::from_secs(60), || {
            let out =
                labtool(&client, &["ask", "--target", target, "--count", "20"]).expect("ask runs");
            Ok(answers(&out).iter().all(|(_, a)| a.is_ok()))
        });
        assert!(ready.is_ok(), "{target}: {ready:?}");
    }
    let (seconds, asked) = asking_throughout(&client, &targets, || {
        let start = Instant::now();
        swarm.ok(
            &n1,
            &[
                "service",
                "update",
                "--env-add",
                "V=2",
                "--update-parallelism",
                "10",
                "--update-delay",
                "0s",
                "web",
            ],
        );
        start.elapsed().as_secs_f64()
    });
    let failed: Vec<&String> = asked.iter().filter_map(|a| a.as_ref().err()).collect();
    println!(
        "update_100_tasks_s {seconds:.2}; {} requests during it, {} failed",
        asked.len(),
        failed.len()
    );
    for why in failed.iter().take(10) {
        println!("  failed: {why}");
    }
    results.insert("update_100_tasks_s".into(), seconds);
    results.insert("requests_during_update".into(), asked.len() as f64);
    results.insert("failed_requests_during_update".into(), failed.len() as f64);
}

/// Docker's swarm mode on the engine, if it is not in a swarm already; leaves it as found.
fn docker_figures(results: &mut BTreeMap<String, f64>) {
    let state =
        docker::docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).unwrap_or_default();
    if state.trim() != "inactive" {
        println!("docker_update: skipped, the engine's swarm state is {state:?}");
        return;
    }
    let had_gwbridge = docker::docker(&["network", "ls", "-q", "--filter", "name=docker_gwbridge"])
        .is_ok_and(|out| !out.trim().is_empty());
    docker::docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]).expect("docker swarm init");
    let count = REPLICAS.to_string();
    docker::docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        "bench",
        "--replicas",
        &count,
        IMAGE,
        "/shoal-labtool",
        "serve",
        "--port",
        "80",
        "--name",
        "bench",
    ])
    .expect("docker service create");
    let want = format!("{REPLICAS}/{REPLICAS}");
    let waited = wait_until("docker's service running", Duration::from_secs(300), || {
        Ok(docker::docker(&[
            "service",
            "ls",
            "--filter",
            "name=bench",
            "--format",
            "{{.Replicas}}",
        ])
        .is_ok_and(|out| out.trim() == want))
    });
    assert!(waited.is_ok(), "{waited:?}");
    let start = Instant::now();
    docker::docker(&[
        "service",
        "update",
        "--env-add",
        "V=2",
        "--update-parallelism",
        "10",
        "--update-delay",
        "0s",
        "bench",
    ])
    .expect("docker service update");
    let seconds = start.elapsed().as_secs_f64();
    println!("docker_update_100_tasks_s {seconds:.2}");
    results.insert("docker_update_100_tasks_s".into(), seconds);
    docker::docker(&["service", "rm", "bench"]).expect("docker service rm");
    let _ = wait_until("docker's containers gone", Duration::from_secs(120), || {
        Ok(docker::docker(&[
            "ps",
            "-aq",
            "--filter",
            "label=com.docker.swarm.service.name=bench",
        ])
        .is_ok_and(|out| out.trim().is_empty()))
    });
    docker::docker(&["swarm", "leave", "--force"]).expect("docker swarm leave");
    if !had_gwbridge {
        let _ = docker::docker(&["network", "rm", "docker_gwbridge"]);
    }
}

fn main() {
    let out = std::env::var("SHOAL_BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench/update.json").into()
    });
    let mut results = BTreeMap::new();
    shoal_figures(&mut results);
    match docker::Engine::ensure() {
        Ok(engine) => {
            docker::import_labtool_image(IMAGE).expect("the image is imported");
            docker_figures(&mut results);
            drop(engine);
        }
        Err(e) => println!("docker_update: skipped, no Docker Engine ({e})"),
    }
    if let (Some(ours), Some(docker)) = (
        results.get("update_100_tasks_s"),
        results.get("docker_update_100_tasks_s"),
    ) {
        let ratio = ours / docker;
        println!("Shoal / Docker: {ratio:.3}");
        results.insert("update_ratio_to_docker".into(), ratio);
    }
    let json = serde_json::to_string_pretty(&results).expect("figures serialize");
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).expect("the output directory");
    }
    std::fs::write(&out, json).expect("figures written");
    println!("wrote {out}");
}
