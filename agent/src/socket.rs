//! The local API socket: parent directory created, mode 0660, removed on shutdown. Ownership of
//! the path is a lock on `<socket>.lock` held for the daemon's lifetime, so two daemons never
//! race for one socket: the holder may replace a stale socket file (left by a killed daemon), and
//! anyone else is told another daemon listens there.

use std::{
    fs::{self, File, TryLockError},
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
};

use shoal_api::DaemonHost;
use tokio::net::UnixListener;

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another daemon answers on it.
    #[error("another shoald is already listening on {0}")]
    InUse(DaemonHost),
    /// Something that is not a socket is in the way.
    #[error("cannot listen on {0}: the path exists and is not a socket")]
    NotASocket(DaemonHost),
    /// Creating the directory, removing a stale socket, binding or setting the mode failed.
    #[error("cannot listen on {host}: {what}: {source}")]
    Io {
        /// The socket.
        host: DaemonHost,
        /// The step that failed.
        what: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

/// Owns the socket path: dropping it removes the socket file, then releases the lock.
#[derive(Debug)]
pub(crate) struct SocketFile {
    host: DaemonHost,
    _lock: File,
}

/// Binds `host`'s path with mode 0660, creating its parent directory (0755) if needed.
pub(crate) fn bind(host: &DaemonHost) -> Result<(UnixListener, SocketFile), SocketError> {
    let path = host.path();
    let io_error = |what| {
        let host = host.clone();
        move |source| SocketError::Io { host, what, source }
    };
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io_error("creating its directory"))?;
        // The process's umask (077) narrowed the mode: the socket's group must reach it.
        fs::set_permissions(parent, fs::Permissions::from_mode(0o755))
            .map_err(io_error("setting its directory's mode to 0755"))?;
    }
    let lock = lock(host)?;
    remove_stale(host, path)?;
    let listener = bind_0660(path).map_err(io_error("binding"))?;
    let file = SocketFile {
        host: host.clone(),
        _lock: lock,
    };
    // Already 0660 from its creation; said again in case the file system ignores the umask.
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .map_err(io_error("setting its mode to 0660"))?;
    let listener = UnixListener::from_std(listener).map_err(io_error("listening"))?;
    Ok((listener, file))
}

/// Binds `path` so that the socket is 0660 from the moment it exists: on a thread of its own
/// whose umask (unshared from the process's) is 0117.
fn bind_0660(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).map_err(io::Error::from)?;
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("the binding thread panicked")))
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(self.host.path())
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(host = %self.host, "removing the socket: {e}");
        }
    }
}

/// `<socket>.lock`, locked: the right to the socket's path.
fn lock(host: &DaemonHost) -> Result<File, SocketError> {
    let mut path = PathBuf::from(host.path()).into_os_string();
    path.push(".lock");
    // Never through a symlink someone planted in the socket's directory.
    let file = crate::durable::private_file()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| SocketError::Io {
            host: host.clone(),
            what: "opening its lock file",
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(SocketError::InUse(host.clone())),
        Err(TryLockError::Error(source)) => Err(SocketError::Io {
            host: host.clone(),
            what: "locking its lock file",
            source,
        }),
    }
}

/// With the path's lock held: removes a socket nobody answers on (left by a daemon that was
/// killed); refuses to touch a live socket or anything that is not a socket.
fn remove_stale(host: &DaemonHost, path: &Path) -> Result<(), SocketError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Io {
                host: host.clone(),
                what: "inspecting the path",
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(host.clone()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        // A daemon that predates the lock file, or something else that is not ours.
        Ok(_) => Err(SocketError::InUse(host.clone())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path).map_err(|source| SocketError::Io {
                host: host.clone(),
                what: "removing a stale socket",
                source,
            })
        }
        Err(source) => Err(SocketError::Io {
            host: host.clone(),
            what: "checking whether a daemon listens on it",
            source,
        }),
    }
}
