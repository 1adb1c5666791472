//! Reaching a daemon over its unix socket.

use std::{error::Error as _, io};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use crate::DaemonHost;

/// Why `shoal` could not reach `shoald`; the messages are what the user reads.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing listens on the socket (or it does not exist).
    #[error("Cannot connect to the Shoal daemon at {host}. Is shoald running?")]
    NotRunning {
        /// The address tried.
        host: DaemonHost,
        /// What the connect failed with.
        #[source]
        source: Option<io::Error>,
    },
    /// The socket exists but this user may not open it (it is mode 0660).
    #[error(
        "permission denied while trying to connect to the Shoal daemon socket at {host}: run as root or as a member of the socket's group"
    )]
    PermissionDenied {
        /// The address tried.
        host: DaemonHost,
    },
}

/// Opens a gRPC channel to the daemon at `host`.
pub async fn connect(host: &DaemonHost) -> Result<Channel, ConnectError> {
    let path = host.path().to_path_buf();
    // tonic needs a URI; the connector ignores it and dials the socket.
    Endpoint::from_static("http://shoald")
        .connect_with_connector(service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| {
            let io = io_cause(&e);
            match io.as_ref().map(io::Error::kind) {
                Some(io::ErrorKind::PermissionDenied) => {
                    ConnectError::PermissionDenied { host: host.clone() }
                }
                _ => ConnectError::NotRunning {
                    host: host.clone(),
                    source: io,
                },
            }
        })
}

/// Whether an RPC failed because the daemon went away (it stopped between connect and call).
pub fn is_unreachable(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
}

/// The `io::Error` at the bottom of a transport error, copied out.
fn io_cause(error: &tonic::transport::Error) -> Option<io::Error> {
    let mut cause = error.source();
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io::Error::new(io.kind(), io.to_string()));
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_reads_like_docker() {
        let host = DaemonHost::unix("/nonexistent/shoal-test.sock");
        let err = connect(&host).await.unwrap_err();
        assert!(matches!(err, ConnectError::NotRunning { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "Cannot connect to the Shoal daemon at unix:///nonexistent/shoal-test.sock. Is shoald running?"
        );
    }
}
