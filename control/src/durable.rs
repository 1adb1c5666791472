//! Files a node keeps (raft's vote, snapshots and key files; the daemon's credentials, tasks and
//! keys): written whole or not at all, and durable once written.
//!
//! [`write_durable`] writes a temporary file under a name no other writer uses (created
//! exclusively, never through a symlink, with the file's mode from the start), fsyncs it, renames
//! it over the target and fsyncs the directory, so the rename survives a crash. A failed write
//! leaves the target as it was and removes its temporary file.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// A name no other writer uses: a random base chosen once per process (a PID repeats across
/// restarts, in a container it is always 1; a crash may leave a name behind), and a counter.
pub fn unique_name() -> String {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = BASE.get_or_init(|| {
        crate::ca::random_u64().unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id())
        })
    });
    format!("{base:016x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn temporary_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", unique_name()))
}

/// The mode of every file a node writes: what it keeps is its own (0600).
pub const FILE_MODE: u32 = 0o600;

/// Writes `bytes` to `path` atomically and durably, the file created with `mode`.
pub fn write_durable(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temporary_for(path);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// fsyncs a directory, so a rename or a new file in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
        write_durable(path, bytes, FILE_MODE)
    }

    #[test]
    fn a_written_file_is_private_and_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write(&path, b"one").expect("write");
        write(&path, b"two").expect("write again");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert_eq!(
            fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n != "state.json")
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn a_symlink_in_place_of_the_temporary_file_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, "untouched").expect("victim");
        // Whatever name comes next, a symlink there would be refused (create_new + O_NOFOLLOW):
        // plant one under the next name and check the write still lands only in the target.
        let target = dir.path().join("tasks.json");
        let probe = unique_name();
        let (base, n) = probe.rsplit_once('-').expect("base-counter");
        let next = n.parse::<u64>().expect("counter") + 1;
        let planted = target.with_file_name(format!(".tasks.json.{base}-{next}.tmp"));
        std::os::unix::fs::symlink(&victim, &planted).expect("symlink");
        let result = write(&target, b"data");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "untouched");
        // Either it failed (the planted name was taken) or another test took that name first.
        if result.is_ok() {
            assert_eq!(fs::read(&target).expect("read"), b"data");
        }
    }
}
