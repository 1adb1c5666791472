//! `cargo xtask bench converge`: seconds from `service create --replicas N` to N tasks running,
//! for N = 10 and N = 100, each measured [`RUNS`] times (the median is the figure):
//!
//! - `converge_{10,100}_s`: Shoal on a 3-manager lab with the `exec` executor (each task: a
//!   network namespace, its overlay plumbing, `shoal-labtool serve`);
//! - `converge_docker_{10,100}_s`: the same lab with the `docker` executor (each task a
//!   container of the machine's Docker Engine, image imported from a rootfs holding
//!   `shoal-labtool`);
//! - `baseline_swarm_{10,100}_s`: Docker's own swarm mode on that same engine (one node), the
//!   same image and command, `docker service create` until `docker service ls` says N/N.
//!
//! The clock starts before `service create --detach` and stops at the first poll (every 20 ms)
//! whose `service ls` reports N/N: orchestration, allocation, scheduling, dispatch, the executor
//! and the status reports back through raft are all inside it. The service is removed, and its
//! tasks gone, before the next run.
//!
//! The Docker parts are skipped (and said so) when no engine can be started, or when the engine
//! is already part of a swarm (the bench does not touch a swarm it did not make). Anchors (not
//! measurable here): Nomad placed 3,750 containers/s end to end in its 1M-container test;
//! Kubernetes' pod start-up objective is p99 <= 5 s. Writes `$SHOAL_BENCH_OUT` (default
//! `target/bench/converge.json`). Needs root and release builds (the xtask builds them).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use shoal_tests::{binary, docker, swarm::Swarm};

/// Measurements per figure.
const RUNS: usize = 3;
/// The image the container runs use.
const IMAGE: &str = "shoal-labtool:bench";

/// Seconds until `done` holds, polled every 20 ms (300 s at most).
fn until(what: &str, mut done: impl FnMut() -> bool) -> f64 {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed().as_secs_f64();
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{what}: not within 300 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One Shoal run: create, time to N/N, remove, wait until its tasks are gone.
fn shoal_run(swarm: &Swarm, name: &str, replicas: usize, command: &[&str]) -> f64 {
    let n1 = swarm.managers[0].clone();
    let want = format!("\"Replicas\":\"{replicas}/{replicas}\"");
    let named = format!("\"Name\":\"{name}\"");
    let count = replicas.to_string();
    let mut args = vec!["service", "create", "--detach", "--name", name];
    args.extend(["--replicas", &count]);
    args.extend(command);
    let start = Instant::now();
    swarm.ok(&n1, &args);
    until(&format!("{replicas} tasks of {name} running"), || {
        swarm
            .lab
            .shoal(&n1, &["service", "ls", "--format", "json"])
            .is_ok_and(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|l| l.contains(&named) && l.contains(&want))
            })
    });
    let seconds = start.elapsed().as_secs_f64();
    swarm.ok(&n1, &["service", "rm", name]);
    until(&format!("{name}'s tasks gone"), || {
        swarm
            .lab
            .shoal(&n1, &["node", "ps", "n1", "n2", "n3", "-q"])
            .is_ok_and(|out| out.stdout.is_empty())
    });
    seconds
}

/// One Docker swarm-mode run on the engine, the same way.
fn swarm_mode_run(name: &str, replicas: usize) -> f64 {
    let count = replicas.to_string();
    let want = format!("{replicas}/{replicas}");
    let filter = format!("name={name}");
    let start = Instant::now();
    docker::docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        name,
        "--replicas",
        &count,
        IMAGE,
        "/shoal-labtool",
        "serve",
        "--port",
        "80",
        "--name",
        name,
    ])
    .expect("docker service create");
    until(&format!("{replicas} tasks of {name} running"), || {
        docker::docker(&[
            "service",
            "ls",
            "--filter",
            &filter,
            "--format",
            "{{.Replicas}}",
        ])
        .is_ok_and(|out| out.trim() == want)
    });
    let seconds = start.elapsed().as_secs_f64();
    docker::docker(&["service", "rm", name]).expect("docker service rm");
    let label = format!("label=com.docker.swarm.service.name={name}");
    until(&format!("{name}'s containers gone"), || {
        docker::docker(&["ps", "-aq", "--filter", &label]).is_ok_and(|out| out.trim().is_empty())
    });
    seconds
}

/// The median, minimum and maximum of `RUNS` runs of `run`, under `figure`.
fn measure(results: &mut BTreeMap<String, f64>, figure: &str, mut run: impl FnMut(usize) -> f64) {
    let mut runs: Vec<f64> = (0..RUNS).map(&mut run).collect();
    runs.sort_by(f64::total_cmp);
    println!(
        "{figure:<28} {:>8.2} s  (runs: {})",
        runs[RUNS / 2],
        runs.iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    results.insert(format!("{figure}_s"), runs[RUNS / 2]);
    results.insert(format!("{figure}_min_s"), runs[0]);
    results.insert(format!("{figure}_max_s"), runs[RUNS - 1]);
}

fn shoal_figures(results: &mut BTreeMap<String, f64>, executor: &str, command: &[&str]) {
    let (prefix, shoald): (&str, &[&str]) = match executor {
        "exec" => ("converge", &[]),
        _ => ("converge_docker", &["--executor", "docker"]),
    };
    let swarm = Swarm::up_with_daemons(3, 0, &[], shoald);
    for replicas in [10, 100] {
        measure(results, &format!("{prefix}_{replicas}"), |i| {
            shoal_run(&swarm, &format!("s{replicas}x{i}"), replicas, command)
        });
    }
    drop(swarm);
}

/// Docker's swarm mode on the engine, if it is not in a swarm already; leaves it as found.
fn swarm_mode_figures(results: &mut BTreeMap<String, f64>) {
    let state =
        docker::docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).unwrap_or_default();
    if state.trim() != "inactive" {
        println!("baseline_swarm: skipped, the engine's swarm state is {state:?}");
        return;
    }
    let had_gwbridge = docker::docker(&["network", "ls", "-q", "--filter", "name=docker_gwbridge"])
        .is_ok_and(|out| !out.trim().is_empty());
    docker::docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]).expect("docker swarm init");
    for replicas in [10, 100] {
        measure(results, &format!("baseline_swarm_{replicas}"), |i| {
            swarm_mode_run(&format!("d{replicas}x{i}"), replicas)
        });
    }
    docker::docker(&["swarm", "leave", "--force"]).expect("docker swarm leave");
    if !had_gwbridge {
        let _ = docker::docker(&["network", "rm", "docker_gwbridge"]);
    }
}

fn main() {
    let out = std::env::var("SHOAL_BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench/converge.json").into()
    });
    let tool = binary("shoal-labtool")
        .expect("built")
        .display()
        .to_string();
    let mut results = BTreeMap::new();
    println!("{:<28} {:>10}", "figure (median)", "value");
    shoal_figures(
        &mut results,
        "exec",
        &["host", &tool, "serve", "--port", "80"],
    );
    match docker::Engine::ensure() {
        Ok(engine) => {
            docker::import_labtool_image(IMAGE).expect("the image is imported");
            shoal_figures(
                &mut results,
                "docker",
                &[IMAGE, "/shoal-labtool", "serve", "--port", "80"],
            );
            swarm_mode_figures(&mut results);
            let _ = docker::docker(&["image", "rm", IMAGE]);
            drop(engine);
        }
        Err(e) => println!("converge_docker, baseline_swarm: skipped, no Docker Engine: {e}"),
    }
    if let Some(hundred) = results.get("converge_100_s").copied() {
        results.insert("converge_100_tasks_per_s".into(), 100.0 / hundred);
    }
    println!("anchors: Nomad 3,750 containers/s end to end; Kubernetes pod start-up p99 <= 5 s");
    std::fs::create_dir_all(std::path::Path::new(&out).parent().expect("a directory"))
        .expect("create the output directory");
    std::fs::write(&out, serde_json::to_string_pretty(&results).expect("JSON"))
        .expect("write the results");
}
