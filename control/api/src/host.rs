//! The daemon's address: `-H unix://PATH`, as Docker's `-H`.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

/// Where `shoald` listens and `shoal` connects by default.
pub const DEFAULT_SOCKET: &str = "/run/shoal/shoal.sock";

/// The address of a daemon: a unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonHost {
    path: PathBuf,
}

/// A `-H` value that is not a unix socket address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// `tcp://`, `fd://`, `ssh://`...
    #[error(
        "unsupported daemon address {0:?}: only unix sockets are supported (unix:///path/to/shoal.sock)"
    )]
    Scheme(String),
    /// `unix://` with no path, or a relative one.
    #[error(
        "invalid daemon address {0:?}: expected unix:// followed by an absolute path, e.g. unix://{DEFAULT_SOCKET}"
    )]
    Path(String),
}

impl DaemonHost {
    /// The socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for DaemonHost {
    fn default() -> Self {
        Self::unix(DEFAULT_SOCKET)
    }
}

impl fmt::Display for DaemonHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unix://{}", self.path.display())
    }
}

impl FromStr for DaemonHost {
    type Err = HostError;

    /// `unix:///path`, or a bare absolute path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let path = match s.split_once("://") {
            Some(("unix", path)) => path,
            Some(_) => return Err(HostError::Scheme(s.into())),
            None => s,
        };
        if !path.starts_with('/') || path.len() < 2 {
            return Err(HostError::Path(s.into()));
        }
        Ok(Self::unix(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_addresses_and_bare_paths() {
        let host: DaemonHost = "unix:///run/shoal/shoal.sock".parse().unwrap();
        assert_eq!(host.path(), Path::new("/run/shoal/shoal.sock"));
        assert_eq!(host.to_string(), "unix:///run/shoal/shoal.sock");
        let bare: DaemonHost = "/tmp/x.sock".parse().unwrap();
        assert_eq!(bare.path(), Path::new("/tmp/x.sock"));
        assert_eq!(
            DaemonHost::default().to_string(),
            "unix:///run/shoal/shoal.sock"
        );
    }

    #[test]
    fn refuses_other_schemes_and_relative_paths() {
        assert_eq!(
            "tcp://127.0.0.1:2375".parse::<DaemonHost>(),
            Err(HostError::Scheme("tcp://127.0.0.1:2375".into()))
        );
        for bad in ["unix://", "unix://relative.sock", "shoal.sock", ""] {
            assert_eq!(
                bad.parse::<DaemonHost>(),
                Err(HostError::Path(bad.into())),
                "{bad:?}"
            );
        }
        let message = "tcp://h:1".parse::<DaemonHost>().unwrap_err().to_string();
        assert!(message.contains("only unix sockets"), "{message}");
    }
}
