//! Services II on the lab, items 6–8: what tasks reserve and may use (the scheduler's fit and
//! Docker's explanation, limits in the task's cgroup), placement preferences and the per-node
//! cap, mounts and process options of exec tasks, and `service logs` streamed from the nodes.
//! Needs root.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use shoal_tests::{
    service::{running_per_node, tasks, wait_running},
    swarm::Swarm,
    wait_until,
};

/// A directory of the test's, removed when dropped (even if the test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shoal-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The PID of the process of an exec task (the one whose environment names it).
fn task_pid(id: &str) -> Option<u32> {
    let needle = format!("SHOAL_TASK_ID={id}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            environ
                .split(|b| *b == 0)
                .any(|kv| kv == needle.as_bytes())
                .then_some(pid)
        })
}

/// The memory limit the kernel holds the process `pid` to, read from its cgroup (v1's memory
/// controller, or v2).
fn memory_limit(pid: u32) -> Option<u64> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        let file = if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory/{path}/memory.limit_in_bytes")
        } else if controllers.is_empty() && !path.is_empty() {
            format!("/sys/fs/cgroup/{path}/memory.max")
        } else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(file) {
            return text.trim().parse().ok();
        }
    }
    None
}

fn rows_with(all: &[Value], state: &str) -> Vec<Value> {
    all.iter()
        .filter(|t| {
            t["CurrentState"]
                .as_str()
                .is_some_and(|s| s.starts_with(state))
        })
        .cloned()
        .collect()
}

/// Item 6: reservations the swarm cannot hold leave a task pending with Docker's explanation,
/// a spread preference balances label values, `--replicas-max-per-node` caps each node, and an
/// exec task runs under its memory limit in a cgroup of its own. Item 7: its bind and tmpfs
/// mounts, working directory and hostname apply in its own namespaces. Bad input is refused.
#[test]
fn resources_placement_and_mounts_apply_to_tasks() {
    let swarm = Swarm::up(1, 2);
    let n1 = swarm.managers[0].clone();
    for (node, zone) in [("n1", "a"), ("n2", "a"), ("n3", "b")] {
        swarm.ok(
            &n1,
            &[
                "node",
                "update",
                "--label-add",
                &format!("zone={zone}"),
                node,
            ],
        );
    }
    // More memory than any node has: pending, and why.
    swarm.ok(
        &n1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "big",
            "--reserve-memory",
            "100g",
            "host",
            "sleep",
            "3600",
        ],
    );
    let pending = wait_until("big explained", Duration::from_secs(30), || {
        Ok(tasks(&swarm, &n1, "big").iter().any(|t| {
            t["Error"] == "no suitable node (insufficient resources on 3 nodes)"
                && t["CurrentState"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Pending"))
        }))
    });
    assert!(
        pending.is_ok(),
        "{}",
        swarm.ok(&n1, &["service", "ps", "big"])
    );

    // Four tasks spread over zones a (two nodes) and b (one): two each.
    swarm.ok(
        &n1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "zoned",
            "--replicas",
            "4",
            "--placement-pref",
            "spread=node.labels.zone",
            "host",
            "sleep",
            "3600",
        ],
    );
    wait_running(&swarm, &n1, "zoned", "two tasks per zone", |per| {
        per.values().sum::<usize>() == 4 && per.get("n3") == Some(&2)
    });

    // One per node at most: the fourth waits, and says why.
    swarm.ok(
        &n1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "capped",
            "--replicas",
            "4",
            "--replicas-max-per-node",
            "1",
            "host",
            "sleep",
            "3600",
        ],
    );
    wait_running(&swarm, &n1, "capped", "one per node", |per| {
        per.len() == 3 && per.values().all(|n| *n == 1)
    });
    let explained = wait_until("the fourth explained", Duration::from_secs(30), || {
        Ok(rows_with(&tasks(&swarm, &n1, "capped"), "Pending")
            .iter()
            .any(|t| t["Error"] == "no suitable node (max replicas per node limit exceed)"))
    });
    assert!(
        explained.is_ok(),
        "{}",
        swarm.ok(&n1, &["service", "ps", "capped"])
    );

    // An exec task with a memory limit, mounts, a working directory and a host name.
    let data = TempDir::new("data");
    let scratch = TempDir::new("scratch");
    std::fs::write(data.0.join("greeting"), "hello from the node\n").unwrap();
    let script = format!(
        "pwd; hostname; cat greeting; stat -f -c %T {scratch}; \
         touch {data}/written 2>/dev/null && echo data-writable || echo data-read-only; \
         touch {scratch}/written && echo scratch-writable; sleep 3600",
        scratch = scratch.path(),
        data = data.path(),
    );
    swarm.ok(
        &n1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "limited",
            "--limit-memory",
            "64m",
            "--limit-pids",
            "100",
            "--reserve-cpu",
            "0.1",
            "--mount",
            &format!(
                "type=bind,source={},target={},readonly",
                data.path(),
                data.path()
            ),
            "--mount",
            &format!("type=tmpfs,target={},tmpfs-size=8m", scratch.path()),
            "--workdir",
            data.path(),
            "--hostname",
            "limited-task",
            "--constraint",
            "node.hostname==n1",
            "host",
            "sh",
            "-c",
            &script,
        ],
    );
    wait_running(&swarm, &n1, "limited", "the limited task", |per| {
        per.get("n1") == Some(&1)
    });
    let id = rows_with(&tasks(&swarm, &n1, "limited"), "Running")[0]["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    let pid = task_pid(&id).expect("the task's process");
    assert_eq!(memory_limit(pid), Some(64 << 20));
    let mut logs = String::new();
    let reported = wait_until("the task's report", Duration::from_secs(20), || {
        logs = swarm.ok(&n1, &["service", "logs", "--raw", "limited"]);
        Ok(logs.contains("scratch-writable"))
    });
    assert!(reported.is_ok(), "{logs}");
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(
        lines,
        [
            data.path(),
            "limited-task",
            "hello from the node",
            "tmpfs",
            "data-read-only",
            "scratch-writable"
        ],
        "{logs}"
    );
    // Nothing the task mounted shows on the node.
    assert!(!scratch.0.join("written").exists() && !data.0.join("written").exists());

    // A bind source missing on the node: the task is rejected with Docker's words.
    rejected_for_missing_bind_source(&swarm, &n1, &["host", "sleep", "3600"]);

    // Malformed values are refused, and create nothing.
    let before = swarm.ok(&n1, &["service", "ls", "-q"]).lines().count();
    for (flags, says) in [
        (&["--limit-memory", "12x"][..], "invalid size"),
        (
            &["--limit-memory", "1m"][..],
            "Minimum memory limit allowed is 6MB",
        ),
        (&["--reserve-cpu", "half"][..], "invalid CPUs"),
        (&["--mount", "type=nfs,target=/x"][..], "invalid mount type"),
        (
            &["--mount", "type=bind,target=/x"][..],
            "the source is missing",
        ),
        (
            &["--placement-pref", "pack=node.labels.zone"][..],
            "the only strategy is spread",
        ),
        (&["--stop-signal", "SIGNOPE"][..], "invalid signal"),
        (
            &["--workdir", "relative"][..],
            "needs to be an absolute path",
        ),
        (
            &["--mode", "global", "--replicas-max-per-node", "2"][..],
            "replicated mode",
        ),
    ] {
        let mut args = vec!["service", "create", "--detach"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["host", "sleep", "1"]);
        let out = swarm.fails(&n1, &args);
        assert!(out.contains(says), "{flags:?}: {out}");
    }
    let after = swarm.ok(&n1, &["service", "ls", "-q"]).lines().count();
    assert_eq!(before, after);
}

/// Creates `nosource`, bound to a path no node has, running `program`: its task is rejected
/// with Docker's words.
fn rejected_for_missing_bind_source(swarm: &Swarm, on: &shoal_tests::Host, program: &[&str]) {
    let mut args = vec![
        "service",
        "create",
        "--detach",
        "--name",
        "nosource",
        "--mount",
        "type=bind,source=/nonexistent/shoal,target=/mnt",
    ];
    args.extend_from_slice(program);
    swarm.ok(on, &args);
    let rejected = wait_until("nosource rejected", Duration::from_secs(30), || {
        Ok(tasks(swarm, on, "nosource").iter().any(|t| {
            t["CurrentState"]
                .as_str()
                .is_some_and(|s| s.starts_with("Rejected"))
                && t["Error"].as_str().is_some_and(|e| {
                    e.contains("bind source path does not exist: /nonexistent/shoal")
                })
        }))
    });
    assert!(
        rejected.is_ok(),
        "{}",
        swarm.ok(on, &["service", "ps", "nosource"])
    );
}

/// The prefix and text of a `service logs` line: `chatty.2.<id>@n3 ... | text`.
fn split_line(line: &str) -> Option<(String, String)> {
    let (prefix, text) = line.split_once(" | ")?;
    Some((prefix.trim().to_owned(), text.to_owned()))
}

/// The node of a prefix (`...@n3`) and the counter of a `line N` text.
fn node_and_count(prefix: &str, text: &str) -> Option<(String, u64)> {
    let node = prefix.rsplit_once('@')?.1.to_owned();
    let count = text.strip_prefix("line ")?.parse().ok()?;
    Some((node, count))
}

/// Item 8: `service logs` gets the lines of the tasks on every node through the leader:
/// `--tail 5` five per task, `-f` the new lines as they come, and the logs of a node whose
/// daemon restarted go on.
#[test]
fn service_logs_stream_from_every_node() {
    let mut swarm = Swarm::up(1, 2);
    let n1 = swarm.managers[0].clone();
    swarm.ok(
        &n1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "chatty",
            "--replicas",
            "3",
            "--replicas-max-per-node",
            "1",
            "host",
            "sh",
            "-c",
            "echo starting >&2; i=0; while :; do echo \"line $i\"; i=$((i+1)); sleep 0.2; done",
        ],
    );
    wait_running(&swarm, &n1, "chatty", "one task per node", |per| {
        per.len() == 3
    });
    std::thread::sleep(Duration::from_secs(3));
    let last_seen = |out: &str| -> BTreeMap<String, Vec<u64>> {
        let mut per: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for line in out.lines() {
            if let Some((node, n)) = split_line(line).and_then(|(p, t)| node_and_count(&p, &t)) {
                per.entry(node).or_default().push(n);
            }
        }
        per
    };
    let tail = swarm.ok(&n1, &["service", "logs", "--tail", "5", "chatty"]);
    let per = last_seen(&tail);
    assert_eq!(
        per.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["n1".to_owned(), "n2".into(), "n3".into()]),
        "{tail}"
    );
    for (node, counts) in &per {
        assert_eq!(counts.len(), 5, "{node}: {tail}");
        assert!(
            counts.windows(2).all(|w| w[1] == w[0] + 1),
            "{node}: {tail}"
        );
    }
    // Each line is prefixed with the task's name, its short ID and its node, as Docker does.
    let first = tail.lines().next().unwrap();
    let (prefix, _) = split_line(first).unwrap();
    let (name, node) = prefix.split_once('@').unwrap();
    let parts: Vec<&str> = name.split('.').collect();
    assert!(
        parts.len() == 3 && parts[0] == "chatty" && parts[2].len() == 12,
        "{first}"
    );
    assert!(node.starts_with('n'), "{first}");
    // The stderr line is there too (on the command's stderr).
    let all = swarm
        .lab
        .shoal(&n1, &["service", "logs", "--no-task-ids", "chatty"])
        .unwrap();
    let stderr = String::from_utf8_lossy(&all.stderr);
    assert_eq!(stderr.matches("| starting").count(), 3, "{stderr}");

    // Follow: new lines from all three nodes, past what --tail showed.
    let mut follow = swarm
        .lab
        .shoal_command(&n1, &["service", "logs", "-f", "--tail", "0", "chatty"])
        .unwrap()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut followed: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while followed.len() < 3 && std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500))
            && let Some((node, n)) = split_line(&line).and_then(|(p, t)| node_and_count(&p, &t))
        {
            followed.insert(node, n);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(followed.len(), 3, "followed {followed:?}");
    for (node, n) in &followed {
        assert!(n > per[node].last().unwrap(), "{node}: {n} after {per:?}");
    }

    // A worker's daemon restarts: its task's lines are still there, and new ones keep coming.
    let n2 = swarm.host("n2");
    swarm.lab.kill_shoald(&n2).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    swarm.lab.spawn_shoald(&n2).unwrap();
    let before = per["n2"].last().copied().unwrap();
    let resumed = wait_until(
        "n2's logs after its restart",
        Duration::from_secs(60),
        || {
            let out = swarm.ok(&n1, &["service", "logs", "chatty"]);
            let counts = last_seen(&out).remove("n2").unwrap_or_default();
            // Every line from the start, none lost across the restart, and newer ones.
            Ok(counts.first() == Some(&0)
                && counts.windows(2).all(|w| w[1] == w[0] + 1)
                && counts.last().is_some_and(|n| *n > before + 10))
        },
    );
    assert!(
        resumed.is_ok(),
        "{}",
        swarm.ok(&n1, &["service", "ps", "chatty"])
    );
    assert!(running_per_node(&swarm, &n1, "chatty").len() == 3);
    // Bad input.
    let out = swarm.fails(&n1, &["service", "logs", "--tail", "some", "chatty"]);
    assert!(out.contains("invalid tail"), "{out}");
    let out = swarm.fails(&n1, &["service", "logs", "--since", "yesterday", "chatty"]);
    assert!(out.contains("invalid since"), "{out}");
    let out = swarm.fails(&n1, &["service", "logs", "nothing-here"]);
    assert!(out.contains("no such task or service"), "{out}");

    // A client following logs does not keep the daemon it asks from stopping when asked
    // (SIGTERM, as a service manager stops it): open streams are cut after a grace period.
    let mut follow = swarm
        .lab
        .shoal_command(&n1, &["service", "logs", "-f", "--tail", "1", "chatty"])
        .unwrap()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert!(lines.next().is_some_and(|l| l.is_ok()), "following");
    let stopped = swarm.lab.stop_shoald(&n1);
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(stopped.is_ok(), "shoald did not stop: {stopped:?}");
}

/// Items 6–8 for docker tasks: limits, mounts and process options reach the engine (read back
/// with `docker inspect`), a bind source missing on the node is refused before the engine is
/// asked, and `service logs` reads a running container's log from the engine and a removed
/// container's from the copy its node kept.
#[test]
fn docker_tasks_get_limits_mounts_and_logs_through_the_engine() {
    let engine = shoal_tests::docker::Engine::ensure().expect("a Docker Engine runs");
    let image = "shoal-labtool:lab";
    shoal_tests::docker::import_labtool_image(image).expect("the image is imported");
    let swarm = Swarm::up_with_daemons(1, 0, &[], &["--executor", "docker"]);
    let n1 = swarm.managers[0].clone();
    let data = TempDir::new("docker-data");
    let secret = data.path().to_owned() + "-secret";
    std::fs::write(&secret, "docker-secret-value").unwrap();
    swarm.ok(&n1, &["secret", "create", "s1", &secret]);
    swarm.ok(&n1, &["config", "create", "c1", &secret]);
    let _ = std::fs::remove_file(&secret);
    swarm.ok(
        &n1,
        &[
            "service",
            "create",
            "--name",
            "cfg",
            "--secret",
            "source=s1,target=token,uid=1000,mode=0400",
            "--config",
            "source=c1,target=/etc/app.conf",
            "--limit-memory",
            "64m",
            "--limit-cpu",
            "0.5",
            "--limit-pids",
            "64",
            "--mount",
            &format!("type=bind,source={},target=/data,readonly", data.path()),
            "--mount",
            "type=tmpfs,target=/scratch,tmpfs-size=8m",
            "--read-only",
            "--hostname",
            "cfg-task",
            "--workdir",
            "/data",
            "--user",
            "1000:1000",
            "--stop-signal",
            "SIGINT",
            "--stop-grace-period",
            "3s",
            "--init",
            image,
            "/shoal-labtool",
            "serve",
            "--name",
            "cfg",
            "--port",
            "8000",
        ],
    );
    wait_running(&swarm, &n1, "cfg", "the container", |per| {
        per.values().sum::<usize>() == 1
    });
    let container = shoal_tests::docker::docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        "label=io.shoal.service.name=cfg",
    ])
    .expect("docker ps")
    .trim()
    .to_owned();
    let inspected: Value = serde_json::from_str(
        &shoal_tests::docker::docker(&["inspect", &container]).expect("docker inspect"),
    )
    .unwrap();
    let c = &inspected[0];
    let host = &c["HostConfig"];
    assert_eq!(host["Memory"], 64 << 20, "{host}");
    assert_eq!(host["NanoCpus"], 500_000_000, "{host}");
    assert_eq!(host["PidsLimit"], 64, "{host}");
    assert_eq!(host["ReadonlyRootfs"], true, "{host}");
    assert_eq!(host["Init"], true, "{host}");
    let mounts: BTreeMap<String, String> = host["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["Target"].as_str().unwrap().to_owned(),
                m["Type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        BTreeMap::from([
            ("/data".to_owned(), "bind".to_owned()),
            ("/scratch".to_owned(), "tmpfs".to_owned()),
            ("/run/secrets".to_owned(), "bind".to_owned()),
            ("/etc/app.conf".to_owned(), "bind".to_owned()),
        ])
    );
    // The secret and the config: files on a tmpfs of the node, with their owner and mode.
    let source_of = |target: &str| {
        host["Mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["Target"] == target)
            .and_then(|m| m["Source"].as_str())
            .unwrap()
            .to_owned()
    };
    let token = std::path::Path::new(&source_of("/run/secrets")).join("token");
    assert!(token.starts_with("/dev/shm/"), "{}", token.display());
    assert_eq!(
        std::fs::read_to_string(&token).unwrap(),
        "docker-secret-value"
    );
    let meta = std::fs::metadata(&token).unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o400, 1000));
    let task_files = token.parent().unwrap().parent().unwrap().to_owned();
    assert_eq!(
        std::fs::read_to_string(source_of("/etc/app.conf")).unwrap(),
        "docker-secret-value"
    );
    let config = &c["Config"];
    assert_eq!(config["Hostname"], "cfg-task");
    assert_eq!(config["WorkingDir"], "/data");
    assert_eq!(config["User"], "1000:1000");
    assert_eq!(config["StopSignal"], "SIGINT");
    assert_eq!(config["StopTimeout"], 3);

    // The running container's log, from the engine.
    let mut out = String::new();
    let logged = wait_until(
        "the container's first line",
        Duration::from_secs(20),
        || {
            out = swarm.ok(&n1, &["service", "logs", "cfg"]);
            Ok(out.contains("| serving cfg on 8000"))
        },
    );
    assert!(logged.is_ok(), "{out}");
    // Killed, replaced: the old container is gone, its line is still there, with the new one's.
    shoal_tests::docker::docker(&["kill", &container]).expect("docker kill");
    let kept = wait_until("both containers' lines", Duration::from_secs(60), || {
        out = swarm.ok(&n1, &["service", "logs", "cfg"]);
        Ok(out.matches("| serving cfg on 8000").count() == 2)
    });
    assert!(
        kept.is_ok(),
        "{out}\n{}",
        swarm.ok(&n1, &["service", "ps", "cfg"])
    );

    // A bind source the node lacks: rejected before the engine makes anything.
    rejected_for_missing_bind_source(
        &swarm,
        &n1,
        &[image, "/shoal-labtool", "serve", "--port", "80"],
    );
    swarm.ok(&n1, &["service", "rm", "cfg", "nosource"]);
    let gone = wait_until("the containers removed", Duration::from_secs(60), || {
        Ok(shoal_tests::docker::task_containers().is_empty() && !task_files.exists())
    });
    assert!(gone.is_ok(), "{:?}", shoal_tests::docker::task_containers());
    drop(swarm);
    drop(engine);
}
