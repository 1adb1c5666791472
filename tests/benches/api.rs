//! `cargo xtask bench api`: how fast the Docker Engine API answers the calls dashboards and
//! the docker CLI make most, on a swarm of 100 services and 1,000 tasks.
//!
//! - `api_service_ls_per_s`: `GET /services` answered per second by shoald on a one-manager
//!   lab swarm, one client (bollard) asking back to back for 5 s.
//! - `api_tasks_per_s`: `GET /tasks` (all 1,000) the same way.
//! - `docker_service_ls_per_s`, `docker_tasks_per_s`: the same calls on Docker's swarm mode on
//!   the machine's engine, with the same services, in the same run. Skipped (and said so)
//!   without an engine, or when it is already part of a swarm.
//!
//! Each service has 10 replicas and a constraint no node meets, so its tasks stay pending on
//! both systems: the figures are the API's and the store's, not the executors'. One run.
//! Writes `$SHOAL_BENCH_OUT` (default `target/bench/api.json`). Needs root and release builds
//! (the xtask builds them).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use shoal_tests::{docker, swarm::Swarm, wait_until};

const SERVICES: usize = 100;
const REPLICAS: usize = 10;
const MEASURE: Duration = Duration::from_secs(5);
const IMAGE: &str = "shoal-labtool:bench";

/// The flags of every benchmark service (its name and image follow).
fn flags(i: usize) -> Vec<String> {
    [
        "service",
        "create",
        "--detach",
        "--replicas",
        &REPLICAS.to_string(),
        "--constraint",
        "node.labels.bench==nowhere",
        "--name",
        &format!("s{i}"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Requests per second of `ask`, back to back for [`MEASURE`], after a warm-up.
fn rate<F, Fut>(runtime: &tokio::runtime::Runtime, what: &str, ask: F) -> f64
where
    F: Fn() -> Fut,
    Fut: Future<Output = usize>,
{
    runtime.block_on(async {
        for _ in 0..20 {
            ask().await;
        }
        let start = Instant::now();
        let mut done = 0_u64;
        while start.elapsed() < MEASURE {
            ask().await;
            done += 1;
        }
        let per_s = done as f64 / start.elapsed().as_secs_f64();
        println!("{what} {per_s:.1}");
        per_s
    })
}

/// Both figures from the Engine API at `socket`, once it shows every task.
fn measure(results: &mut BTreeMap<String, f64>, prefix: &str, socket: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let client =
        Docker::connect_with_unix(socket, 60, bollard::API_DEFAULT_VERSION).expect("a client");
    let waited = wait_until("every task listed", Duration::from_secs(300), || {
        let tasks = runtime
            .block_on(client.list_tasks(None))
            .map_or(0, |t| t.len());
        Ok(tasks == SERVICES * REPLICAS)
    });
    assert!(waited.is_ok(), "{waited:?}");
    let services = rate(&runtime, &format!("{prefix}_service_ls_per_s"), || async {
        let listed = client.list_services(None).await.expect("services");
        assert_eq!(listed.len(), SERVICES);
        listed.len()
    });
    let tasks = rate(&runtime, &format!("{prefix}_tasks_per_s"), || async {
        let listed = client.list_tasks(None).await.expect("tasks");
        assert_eq!(listed.len(), SERVICES * REPLICAS);
        listed.len()
    });
    results.insert(format!("{prefix}_service_ls_per_s"), services);
    results.insert(format!("{prefix}_tasks_per_s"), tasks);
}

fn shoal_figures(results: &mut BTreeMap<String, f64>) {
    let swarm = Swarm::up(1, 0);
    let n1 = swarm.managers[0].clone();
    for i in 0..SERVICES {
        let mut args = flags(i);
        args.extend(["host".to_owned(), "true".to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        swarm.ok(&n1, &args);
    }
    let socket = swarm.lab.socket(&n1).display().to_string();
    measure(results, "api", &socket);
}

/// Docker's swarm mode on the engine, if it is not in a swarm already; leaves it as found.
fn docker_figures(results: &mut BTreeMap<String, f64>) {
    let state =
        docker::docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).unwrap_or_default();
    if state.trim() != "inactive" {
        println!("docker_api: skipped, the engine's swarm state is {state:?}");
        return;
    }
    let had_gwbridge = docker::docker(&["network", "ls", "-q", "--filter", "name=docker_gwbridge"])
        .is_ok_and(|out| !out.trim().is_empty());
    docker::docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]).expect("docker swarm init");
    for i in 0..SERVICES {
        let mut args = flags(i);
        args.extend([IMAGE.to_owned(), "/shoal-labtool".to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker::docker(&args).expect("docker service create");
    }
    measure(results, "docker", docker::SOCKET);
    docker::docker(&["swarm", "leave", "--force"]).expect("docker swarm leave");
    if !had_gwbridge {
        let _ = docker::docker(&["network", "rm", "docker_gwbridge"]);
    }
}

fn main() {
    let out = std::env::var("SHOAL_BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench/api.json").into()
    });
    let mut results = BTreeMap::new();
    shoal_figures(&mut results);
    match docker::Engine::ensure() {
        Ok(engine) => {
            docker::import_labtool_image(IMAGE).expect("the image is imported");
            docker_figures(&mut results);
            drop(engine);
        }
        Err(e) => println!("docker_api: skipped, no Docker Engine ({e})"),
    }
    for figure in ["service_ls_per_s", "tasks_per_s"] {
        if let (Some(ours), Some(docker)) = (
            results.get(&format!("api_{figure}")),
            results.get(&format!("docker_{figure}")),
        ) {
            let ratio = ours / docker;
            println!("{figure}: Shoal / Docker {ratio:.2}");
            results.insert(format!("{figure}_ratio_to_docker"), ratio);
        }
    }
    let json = serde_json::to_string_pretty(&results).expect("figures serialize");
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).expect("the output directory");
    }
    std::fs::write(&out, json).expect("figures written");
    println!("wrote {out}");
}
