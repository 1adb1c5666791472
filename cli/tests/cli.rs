//! `shoal` as a user runs it: help, version, the error when no daemon answers, and `shoal info`
//! against a real daemon (run in-process on a unix socket in a temporary directory).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::Duration,
};

use shoal_agent::Config;
use shoal_api::DaemonHost;
use tokio::sync::oneshot;

fn shoal(host: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["-H", host])
        .args(args)
        .env_remove("SHOAL_HOST")
        .output()
        .unwrap()
}

/// A daemon serving on `socket` until dropped.
/// A daemon's configuration for these tests: no executor, nothing served but the socket.
fn config(data_root: PathBuf, socket: &Path) -> Config {
    Config {
        data_root,
        host: DaemonHost::unix(socket),
        hostname: "cli-test-node".into(),
        executor: shoal_agent::ExecutorKind::None,
        docker_host: shoal_agent::DEFAULT_DOCKER_HOST.into(),
        metrics_addr: None,
        ui_addr: None,
        wireguard_cpus: Vec::new(),
    }
}

struct InProcessDaemon {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl InProcessDaemon {
    fn start(data_root: PathBuf, socket: &Path) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let config = config(data_root, socket);
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime
                .block_on(shoal_agent::run(config, async {
                    let _ = stopped.await;
                }))
                .unwrap();
        });
        shoal_tests::wait_until("the daemon to listen", Duration::from_secs(20), || {
            if thread.is_finished() {
                return Err("the daemon thread ended (it panicked: see above)".into());
            }
            Ok(std::os::unix::net::UnixStream::connect(socket).is_ok())
        })
        .unwrap();
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for InProcessDaemon {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.thread.take().unwrap().join();
    }
}

#[test]
fn info_shows_the_daemon_version_name_and_swarm_state() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("shoal.sock");
    let _daemon = InProcessDaemon::start(dir.path().join("data"), &socket);
    let host = format!("unix://{}", socket.display());

    let out = shoal(&host, &["info"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "Server:".to_string(),
        format!(" Server Version: {}", env!("CARGO_PKG_VERSION")),
        " Swarm: inactive".to_string(),
        " Name: cli-test-node".to_string(),
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} missing from\n{stdout}"
        );
    }

    let out = shoal(&host, &["info", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["Name"], "cli-test-node");
    assert_eq!(json["Swarm"]["LocalNodeState"], "inactive");

    // SHOAL_HOST works like DOCKER_HOST.
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("info")
        .env("SHOAL_HOST", &host)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l == " Name: cli-test-node"),
        "{stdout}"
    );
}

#[test]
fn without_a_daemon_the_error_says_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let host = format!("unix://{}", dir.path().join("none.sock").display());
    let out = shoal(&host, &["info"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("Cannot connect to the Shoal daemon at {host}. Is shoald running?")
    );
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let out = shoal("tcp://127.0.0.1:2375", &["info"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("only unix sockets are supported"),
        "{stderr}"
    );

    let out = shoal(
        "unix:///run/shoal/shoal.sock",
        &["info", "--format", "{{.Name"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("template parsing error"));
}

#[test]
fn help_and_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("shoal {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("info"), "{help}");
    assert!(help.contains("-H, --host"), "{help}");
}

/// `--wireguard-cpus` naming a CPU the daemon may not run on, or three of them, stops the
/// daemon at start with what was wrong.
#[test]
fn wireguard_cpus_the_daemon_cannot_pin_to_are_its_error_at_start() {
    for (cpus, said) in [
        (vec![0, 100_000], "CPU 100000 is not one shoald may run on"),
        (vec![0, 0, 0], "3 CPUs listed"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            wireguard_cpus: cpus,
            ..config(dir.path().join("data"), &dir.path().join("shoal.sock"))
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let error = runtime
            .block_on(shoal_agent::run(config, std::future::pending()))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("--wireguard-cpus: ") && error.contains(said),
            "{error}"
        );
        assert!(
            !dir.path().join("data").exists(),
            "nothing was created before the flag was checked"
        );
    }
}

#[test]
fn a_busy_metrics_or_ui_port_is_the_daemon_s_error_at_start() {
    for flag in ["metrics-addr", "ui-addr"] {
        let dir = tempfile::tempdir().unwrap();
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = busy.local_addr().unwrap();
        let config = Config {
            metrics_addr: (flag == "metrics-addr").then_some(addr),
            ui_addr: (flag == "ui-addr").then_some(addr),
            ..config(dir.path().join("data"), &dir.path().join("shoal.sock"))
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let error = runtime
            .block_on(shoal_agent::run(config, std::future::pending()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("--{flag} {addr}")) && error.contains("in use"),
            "{error}"
        );
    }
}
