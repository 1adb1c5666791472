//! The data root: created 0700, and locked for the daemon's lifetime so two daemons never share
//! one (`shoald.pid` holds the owner's PID and an exclusive lock).

use std::{
    fs::{self, File, OpenOptions, TryLockError},
    io::{self, Read, Seek, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// The lock file inside the data root.
pub const PID_FILE: &str = "shoald.pid";

/// Why the data root cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataRootError {
    /// Another daemon holds the lock.
    #[error(
        "data root {path} is in use by another shoald{owner}; give each daemon its own --data-root"
    )]
    InUse {
        /// The data root.
        path: PathBuf,
        /// " (pid N)" once the other daemon has written its PID, else empty.
        owner: String,
    },
    /// Creating, opening or locking failed.
    #[error("data root {path}: {what}: {source}")]
    Io {
        /// The data root.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

/// A locked data root; the lock is released when this is dropped (or the process dies).
#[derive(Debug)]
pub(crate) struct DataRoot {
    _pid_file: File,
}

impl DataRoot {
    pub(crate) fn open(path: &Path) -> Result<Self, DataRootError> {
        let io_error = |what| {
            let path = path.to_path_buf();
            move |source| DataRootError::Io { path, what, source }
        };
        // Created 0700 if missing. An existing one is made private too, with everything in it
        // (keys, task environments and logs): 0700 directories, 0600 files.
        if !path.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(io_error("creating it"))?;
        }
        let tightened =
            crate::durable::tighten(path).map_err(io_error("making it private (0700/0600)"))?;
        if !tightened.is_empty() {
            tracing::warn!(
                data_root = %path.display(),
                paths = tightened.len(),
                "group and other permissions removed from the data root and files in it"
            );
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path.join(PID_FILE))
            .map_err(io_error("opening the pid file"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(DataRootError::InUse {
                    path: path.to_path_buf(),
                    owner: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(io_error("locking the pid file")(source));
            }
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io_error("writing the pid file"))?;
        Ok(Self { _pid_file: file })
    }
}
