//! `shoald` as a process: its socket (parent directory created, mode 0660, removed on SIGTERM,
//! a stale one replaced, a live one refused), its data root (0700, one daemon per data root) and
//! its executor (`--executor docker` without an engine is refused).

use std::{
    fs,
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shoald(data_root: &Path, socket: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shoald"));
    command
        .arg("--data-root")
        .arg(data_root)
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(["--hostname", "testnode"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Starts a daemon and waits (with a deadline) until its socket accepts connections.
fn start(data_root: &Path, socket: &Path) -> Daemon {
    let mut daemon = Daemon {
        child: shoald(data_root, socket).spawn().expect("shoald starts"),
    };
    shoal_tests::wait_until("shoald to listen", Duration::from_secs(20), || {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return Err(format!("shoald exited early: {status}"));
        }
        Ok(UnixStream::connect(socket).is_ok())
    })
    .unwrap();
    daemon
}

/// Runs a daemon expected to refuse to start.
fn refused(data_root: &Path, socket: &Path) -> Output {
    let out = shoald(data_root, socket).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    out
}

fn paths() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data_root = dir.path().join("data");
    let socket = dir.path().join("run/shoal/shoal.sock");
    (dir, data_root, socket)
}

#[test]
fn socket_is_created_0660_with_its_directory_and_removed_on_sigterm() {
    let (_dir, data_root, socket) = paths();
    let mut daemon = start(&data_root, &socket);
    let mode = fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");
    // The directory shoald made for it lets the socket's group reach it (despite shoald's
    // umask of 077).
    let dir_mode = fs::metadata(socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o755, "socket directory mode {dir_mode:o}");
    let root_mode = fs::metadata(&data_root).unwrap().permissions().mode() & 0o777;
    assert_eq!(root_mode, 0o700, "data root mode {root_mode:o}");

    kill(Pid::from_raw(daemon.child.id() as i32), Signal::SIGTERM).unwrap();
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket outlived the daemon");
}

#[test]
fn a_second_daemon_on_the_same_socket_or_data_root_is_refused() {
    let (dir, data_root, socket) = paths();
    let _first = start(&data_root, &socket);

    let out = refused(&dir.path().join("other-data"), &socket);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another shoald is already listening on unix://"),
        "{stderr}"
    );

    let out = refused(&data_root, &dir.path().join("other.sock"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is in use by another shoald"), "{stderr}");
    // The refused daemon did not leave a socket behind.
    assert!(!dir.path().join("other.sock").exists());
}

#[test]
fn a_stale_socket_left_by_a_killed_daemon_is_replaced() {
    let (_dir, data_root, socket) = paths();
    let mut first = start(&data_root, &socket);
    first.child.kill().unwrap(); // SIGKILL: no cleanup
    first.child.wait().unwrap();
    assert!(socket.exists(), "SIGKILL leaves the socket file");
    let _second = start(&data_root, &socket);
}

#[test]
fn an_existing_data_root_is_made_private() {
    let (_dir, data_root, socket) = paths();
    fs::create_dir_all(data_root.join("swarm")).unwrap();
    fs::set_permissions(&data_root, fs::Permissions::from_mode(0o755)).unwrap();
    let key = data_root.join("swarm/wireguard.key");
    fs::write(&key, "secret").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let _daemon = start(&data_root, &socket);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_root), 0o700, "the data root");
    assert_eq!(mode(&data_root.join("swarm")), 0o700, "a directory in it");
    assert_eq!(mode(&key), 0o600, "a key in it");
    assert_eq!(mode(&data_root.join("shoald.pid")), 0o600, "the pid file");
    assert_eq!(mode(&socket), 0o660, "the socket keeps its mode");
}

#[test]
fn a_path_that_is_not_a_socket_is_left_alone() {
    let (dir, data_root, _) = paths();
    let file = dir.path().join("precious.txt");
    fs::write(&file, "keep me").unwrap();
    let out = refused(&data_root, &file);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn help_and_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_shoald"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("shoald {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(env!("CARGO_BIN_EXE_shoald"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--data-root", "-H, --host", "--hostname"] {
        assert!(help.contains(flag), "{flag} missing from\n{help}");
    }
}

#[test]
fn the_docker_executor_without_an_engine_is_refused_with_the_reason() {
    let (dir, data_root, socket) = paths();
    let engine = dir.path().join("no-docker.sock");
    let out = shoald(&data_root, &socket)
        .args(["--executor", "docker", "--docker-host"])
        .arg(format!("unix://{}", engine.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "--executor docker: cannot reach the Docker Engine at unix://{}",
            engine.display()
        )),
        "{stderr}"
    );
    assert!(!socket.exists(), "a refused daemon left its socket");

    let out = shoald(&data_root, &socket)
        .args(["--executor", "podman"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown executor \"podman\": docker, exec"),
        "{out:?}"
    );
}
