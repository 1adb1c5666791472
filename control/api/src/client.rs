//! Reaching a daemon over its unix socket: HTTP/1.1 requests of the API `shoald` serves there
//! (Docker's Engine API, and Shoal's own operations under [`SHOAL_PREFIX`]), the same requests
//! the docker CLI and every other client make.

use std::{error::Error as _, io};

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use tokio::net::UnixStream;

use crate::DaemonHost;

/// Where Shoal's operations with no Docker equivalent live (`dataplane apply|inspect`).
pub const SHOAL_PREFIX: &str = "/shoal/v1";

/// Why `shoal` could not reach `shoald`; the messages are what the user reads.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing listens on the socket (or it does not exist), or the daemon went away.
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

/// A request that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The daemon answered with an error: its status and `{"message"}`, worded as the docker
    /// CLI words it.
    #[error("Error response from daemon: {message}")]
    Daemon {
        /// The HTTP status.
        status: StatusCode,
        /// What the daemon said.
        message: String,
    },
    /// The answer could not be read.
    #[error("reading the daemon's answer: {0}")]
    Answer(String),
}

impl ClientError {
    /// The daemon's status, when it answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Daemon { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of the daemon at one address: one connection per request.
#[derive(Debug, Clone)]
pub struct Client {
    host: DaemonHost,
}

impl Client {
    /// A client of the daemon at `host` (nothing is dialled until a request).
    pub fn new(host: &DaemonHost) -> Self {
        Self { host: host.clone() }
    }

    /// `GET path`, the JSON answer.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        json(self.send(Method::GET, path, None).await?).await
    }

    /// `POST path` with `body` as JSON; the JSON answer (`null` when it has none).
    pub async fn post<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Value, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Answer(e.to_string()))?;
        json(self.send(Method::POST, path, Some(body)).await?).await
    }

    /// `POST path` with `body` as it is.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> Result<Value, ClientError> {
        json(self.send(Method::POST, path, Some(body)).await?).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        json(self.send(Method::DELETE, path, None).await?).await
    }

    /// `GET path`, the answer's body as it streams in (logs).
    pub async fn stream(&self, path: &str) -> Result<Incoming, ClientError> {
        Ok(self.send(Method::GET, path, None).await?.into_body())
    }

    /// Sends one request on a connection of its own; an error status is read into
    /// [`ClientError::Daemon`].
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = UnixStream::connect(self.host.path())
            .await
            .map_err(|e| self.unreachable(e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.gone(&e))?;
        tokio::spawn(async move {
            // Ends when the answer has been read (or the daemon hangs up).
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "shoald")
            .header(
                hyper::header::USER_AGENT,
                concat!("shoal/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Answer(format!("building the request for {path}: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.gone(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.gone(&e))?
            .to_bytes();
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
        Err(ClientError::Daemon { status, message })
    }

    fn unreachable(&self, error: io::Error) -> ClientError {
        let host = self.host.clone();
        ClientError::Connect(match error.kind() {
            io::ErrorKind::PermissionDenied => ConnectError::PermissionDenied { host },
            _ => ConnectError::NotRunning {
                host,
                source: Some(error),
            },
        })
    }

    /// The daemon went away between the connect and its answer.
    fn gone(&self, error: &hyper::Error) -> ClientError {
        ClientError::Connect(ConnectError::NotRunning {
            host: self.host.clone(),
            source: io_cause(error),
        })
    }
}

/// An answer's JSON body; `null` for an empty one.
async fn json(response: Response<Incoming>) -> Result<Value, ClientError> {
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Answer(e.to_string()))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Answer(e.to_string()))
}

/// The `io::Error` at the bottom of a transport error, copied out.
fn io_cause(error: &hyper::Error) -> Option<io::Error> {
    let mut cause = error.source();
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io::Error::new(io.kind(), io.to_string()));
        }
        cause = e.source();
    }
    None
}

/// `text` escaped for a URL's path segment or query value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_reads_like_docker() {
        let host = DaemonHost::unix("/nonexistent/shoal-test.sock");
        let err = Client::new(&host).get("/_ping").await.unwrap_err();
        assert!(
            matches!(err, ClientError::Connect(ConnectError::NotRunning { .. })),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "Cannot connect to the Shoal daemon at unix:///nonexistent/shoal-test.sock. Is shoald running?"
        );
    }

    #[test]
    fn names_and_filters_are_escaped() {
        assert_eq!(escape("web.1"), "web.1");
        assert_eq!(
            escape(r#"{"name":["a b"]}"#),
            "%7B%22name%22%3A%5B%22a%20b%22%5D%7D"
        );
    }
}
