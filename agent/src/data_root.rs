//! The data root: created 0700, and locked for the daemon's lifetime so two daemons never share
//! one (`shoald.pid` holds the owner's PID and an exclusive lock).

use std::{
    fs::{File, TryLockError},
    io::{self, Read, Seek, Write},
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
        crate::durable::private_dir(path).map_err(io_error("creating it"))?;
        let mut file = crate::durable::private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
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
        // Once the root is ours: an existing one is made private too, with everything in it
        // (keys, task environments and logs): 0700 directories, 0600 files.
        let tightened =
            crate::durable::tighten(path).map_err(io_error("making it private (0700/0600)"))?;
        if tightened > 0 {
            tracing::warn!(
                data_root = %path.display(),
                paths = tightened,
                "group and other permissions removed from the data root and files in it"
            );
        }
        Ok(Self { _pid_file: file })
    }
}
