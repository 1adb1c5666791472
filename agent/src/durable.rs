//! Files the daemon keeps: written whole or not at all, durable once written, readable by root
//! only.
//!
//! - Written by `shoal_control::durable::write_durable` with [`FILE_MODE`]: a temporary file
//!   with a name no other writer uses, fsync, rename over the target, fsync of the directory.
//! - [`Latest`]: a file rewritten often (the node's tasks): callers hand over the newest text and
//!   go on; one writer thread of its own writes the newest it has, so concurrent saves never
//!   share a temporary file and the async runtime never waits for an fsync.
//! - [`tighten`]: the data root and what it holds, 0700 directories and 0600 files, also when
//!   they were made by an earlier version or by hand.

use std::{
    fs::{self, OpenOptions},
    io,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
};

use shoal_control::durable::write_durable;

/// Mode of every file the daemon writes.
pub(crate) use shoal_control::durable::FILE_MODE;

/// Mode of every directory the daemon makes.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Options for a file only the daemon reads: created 0600, never opened through a symlink
/// (std opens every file close-on-exec).
pub(crate) fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW);
    options
}

/// Makes `dir` (and its parents) with mode 0700 where missing, and sets `dir` itself to 0700.
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
}

/// Takes group and other permissions away from `root` and everything under it: directories
/// 0700, regular files 0600 at most. Symlinks are not followed, and nothing else (sockets,
/// namespace mounts) is touched. How many paths it changed.
pub(crate) fn tighten(root: &Path) -> io::Result<usize> {
    let mut changed = 0;
    let mut pending = vec![root.to_path_buf()];
    let root_dev = fs::symlink_metadata(root)?.dev();
    while let Some(path) = pending.pop() {
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mode = meta.mode() & 0o7777;
        let file_type = meta.file_type();
        // Another file system mounted here (a namespace file, a tmpfs): not ours to change.
        if meta.dev() != root_dev {
            continue;
        }
        let wanted = if file_type.is_dir() {
            for entry in fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
            mode & 0o700
        } else if file_type.is_file() {
            mode & 0o600
        } else {
            continue;
        };
        if wanted != mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(wanted))?;
            changed += 1;
        }
    }
    Ok(changed)
}

#[derive(Debug, Default)]
struct Pending {
    /// Texts handed over so far (the sequence number of the newest).
    handed: u64,
    /// The newest text handed over, and its sequence number.
    next: Option<(u64, String)>,
    /// The last sequence number written (or failed).
    done: u64,
    /// Set when the owner is gone: the thread writes what it has and ends.
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    pending: Mutex<Pending>,
    wake: Condvar,
}

/// A file rewritten often, by one writer thread of its own (see the module's notes). Clones
/// share the writer; the thread ends when the last clone is dropped, after writing what is left.
#[derive(Debug, Clone)]
pub(crate) struct Latest {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

#[derive(Debug)]
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.0.wake.notify_all();
    }
}

impl Latest {
    /// A writer for `path`.
    pub(crate) fn new(path: PathBuf) -> Self {
        let shared = Arc::new(Shared {
            path,
            pending: Mutex::default(),
            wake: Condvar::new(),
        });
        let thread = shared.clone();
        std::thread::Builder::new()
            .name("shoald-save".into())
            .spawn(move || writer(&thread))
            .expect("spawning the save thread");
        Self {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        }
    }

    /// Hands `text` over to be written; returns at once. A newer text (the last one handed
    /// over: callers hand texts over in the order of the state they describe) replaces one not
    /// yet written.
    pub(crate) fn save(&self, text: String) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending.handed += 1;
        pending.next = Some((pending.handed, text));
        drop(pending);
        self.shared.wake.notify_all();
    }

    /// Waits until everything handed over so far is written (or has failed and been logged).
    pub(crate) fn flush(&self) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let wanted = pending.handed;
        while pending.done < wanted {
            pending = self
                .shared
                .wake
                .wait(pending)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn writer(shared: &Shared) {
    loop {
        let (sequence, text) = {
            let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(next) = pending.next.take() {
                    break next;
                }
                if pending.closed {
                    return;
                }
                pending = shared.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
            }
        };
        // The directory is made when it is missing (the first save, or after someone removed
        // it), not before every write.
        let written = match write_durable(&shared.path, text.as_bytes(), FILE_MODE) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => shared
                .path
                .parent()
                .map_or(Ok(()), private_dir)
                .and_then(|()| write_durable(&shared.path, text.as_bytes(), FILE_MODE)),
            other => other,
        };
        if let Err(e) = written {
            tracing::error!(path = %shared.path.display(), error = %e, "writing a state file");
        }
        let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.done = pending.done.max(sequence);
        drop(pending);
        shared.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_saves_all_land_and_the_newest_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("tasks.json");
        let latest = Latest::new(path.clone());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let latest = latest.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        latest.save(format!("{t}-{i}"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("saver");
        }
        latest.save("last".into());
        latest.flush();
        assert_eq!(fs::read_to_string(&path).expect("read"), "last");
        assert_eq!(
            fs::metadata(path.parent().expect("dir"))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }

    #[test]
    fn tighten_takes_group_and_other_bits_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("swarm/certs")).expect("dirs");
        fs::set_permissions(root.join("swarm/certs"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(root.join("swarm"), fs::Permissions::from_mode(0o775)).expect("chmod");
        let key = root.join("swarm/certs/node.key");
        fs::write(&key, "secret").expect("key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
        let changed = tighten(&root).expect("tighten");
        assert_eq!(changed, 4);
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("swarm")), 0o700);
        assert_eq!(mode(&root.join("swarm/certs")), 0o700);
        assert_eq!(mode(&key), 0o600);
        assert_eq!(tighten(&root).expect("again"), 0);
    }
}
