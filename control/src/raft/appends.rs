//! Raft's appends on a protocol of their own: a leader's messages to a follower as length-framed
//! protobuf on a TLS connection of the cluster port, chosen in the handshake (ALPN
//! [`ALPN`]), with no HTTP/2 beneath them.
//!
//! Appends are what a write waits on (two per write and follower: the entries, then the new
//! commit index) and they are strictly one at a time per follower, so they need none of what
//! HTTP/2 gives gRPC: no streams to multiplex, no flow control, no headers. On this protocol
//! a message is one TLS record written by the task that sends it, and read by the task that
//! answers it; over gRPC each crossed the HTTP/2 connection's own task on both sides.
//!
//! ```text
//!  leader (PeerClient)                                  follower (cluster port)
//!  TLS handshake: ALPN shoal-raft/1, manager cert ───>  the port's limits; the certificate is a
//!                                                       manager's whose node is a raft member,
//!                                                       or one refusal and close
//!  [1][len u32][AppendEntriesRequest]  ─────────────>   checked (raft/guard.rs), appended
//!                         <─────────────  [1][len u32][AppendEntriesReply]
//!                         <─────────────  [2][len u32][AppendRefusal], then close
//! ```
//!
//! This module is the protocol: its frames, the leader's connection, the follower's reads and
//! answers. The follower's service is `super::network::RaftService::serve_appends`.
//!
//! - A frame is a kind byte, a big-endian length and a protobuf message of `raft.proto`. A
//!   length over the bound (the largest raft message; a reply is small) is refused before
//!   anything is read into memory.
//! - A refusal carries a gRPC status code and what was wrong, as the gRPC stream's would; the
//!   follower closes the connection after it, and the leader opens another for its next append.
//! - A follower closes a connection silent for [`IDLE`] (a leader sends a heartbeat on it every
//!   heartbeat interval), one that takes no answer for as long, and every connection when its
//!   manager stops.
//! - A manager that does not speak the protocol refuses it in the handshake; the leader then
//!   uses the gRPC stream (`Raft.AppendEntriesStream`) to it.

use std::{sync::Arc, time::Duration};

use prost::Message as _;
use rustls::ClientConfig;
use shoal_api::v1;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};
use tonic::Status;

/// The protocol's name in the TLS handshake.
pub use crate::tls::RAFT_APPENDS_ALPN as ALPN;

/// A frame carrying an append (leader to follower) or its answer (follower to leader).
const MESSAGE: u8 = 1;
/// A frame carrying an [`v1::AppendRefusal`]; the connection closes after it.
const REFUSAL: u8 = 2;
/// A frame's kind byte and length.
const HEADER: usize = 5;
/// The largest answer a leader reads: an append's reply is a few dozen bytes, a refusal a line.
const MAX_REPLY: usize = 64 << 10;
/// How long a follower keeps a connection on which nothing arrives.
pub const IDLE: Duration = Duration::from_secs(30);

/// A frame that cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum FrameError {
    /// A kind this side does not know.
    #[error("a frame of unknown kind {0}")]
    Kind(u8),
    /// A length over what this side reads.
    #[error("a frame of {len} bytes, over the {max} accepted")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The bound.
        max: usize,
    },
}

/// `message` framed as `kind`.
fn frame(kind: u8, message: &impl prost::Message) -> Vec<u8> {
    let len = message.encoded_len();
    let mut out = Vec::with_capacity(HEADER + len);
    out.push(kind);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    message
        .encode(&mut out)
        .expect("a Vec grows to whatever is encoded");
    out
}

/// A frame's kind and length from its header, when the kind is one of `kinds` and the length
/// at most `max`.
fn header(bytes: [u8; HEADER], kinds: &[u8], max: usize) -> Result<(u8, usize), FrameError> {
    let kind = bytes[0];
    if !kinds.contains(&kind) {
        return Err(FrameError::Kind(kind));
    }
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok((kind, len))
}

/// Why reading a frame ended.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Reads one frame of one of `kinds`, at most `max` bytes long: its kind and body.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    kinds: &[u8],
    max: usize,
) -> Result<(u8, Vec<u8>), ReadError> {
    let mut head = [0; HEADER];
    reader.read_exact(&mut head).await?;
    let (kind, len) = header(head, kinds, max)?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await?;
    Ok((kind, body))
}

/// Writes `bytes` (whole frames) and flushes them: one TLS record for a small message. A peer
/// that takes nothing for [`IDLE`] fails the write (it cannot hold the writer for good).
async fn write_frames<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    let write = async {
        writer.write_all(bytes).await?;
        writer.flush().await
    };
    tokio::time::timeout(IDLE, write).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the peer took nothing for {}s", IDLE.as_secs()),
        ))
    })
}

/// A refusal as its frame.
fn refusal(status: &Status) -> Vec<u8> {
    frame(
        REFUSAL,
        &v1::AppendRefusal {
            code: status.code() as i32,
            message: status.message().to_owned(),
        },
    )
}

/// A leader's connection to one follower.
#[derive(Debug)]
pub struct AppendsConn {
    stream: BufReader<tokio_rustls::client::TlsStream<TcpStream>>,
}

impl AppendsConn {
    /// Opens the protocol to the manager at `addr` with `config` (whose ALPN is [`ALPN`] alone).
    pub async fn open(
        addr: &str,
        config: Arc<ClientConfig>,
        timeout: Duration,
    ) -> std::io::Result<Self> {
        let stream = crate::tls::connect(addr, config, timeout).await?;
        Ok(Self {
            stream: BufReader::new(stream),
        })
    }

    /// Sends `message` and reads its answer: the reply, or the follower's refusal (and any
    /// failure of the connection) as a status; after an error the connection is not used again.
    pub async fn exchange(
        &mut self,
        message: &v1::AppendEntriesRequest,
    ) -> Result<v1::AppendEntriesReply, Status> {
        self.send(message).await?;
        self.answer().await
    }

    /// Sends `message`.
    pub async fn send(&mut self, message: &v1::AppendEntriesRequest) -> Result<(), Status> {
        self.send_bytes(&frame(MESSAGE, message)).await
    }

    /// Sends `bytes` as they are: whole frames, or what a misbehaving leader sends (the
    /// hardening tests' `shoal-hostile`).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), Status> {
        write_frames(&mut self.stream, bytes)
            .await
            .map_err(|e| lost(&e))
    }

    /// Reads the answer to what was sent last: the reply, or the follower's refusal (and any
    /// failure of the connection) as a status.
    pub async fn answer(&mut self) -> Result<v1::AppendEntriesReply, Status> {
        let (kind, body) = read_frame(&mut self.stream, &[MESSAGE, REFUSAL], MAX_REPLY)
            .await
            .map_err(|e| match e {
                ReadError::Io(e) => lost(&e),
                ReadError::Frame(e) => Status::internal(format!("the follower's answer: {e}")),
            })?;
        let undecodable =
            |e: prost::DecodeError| Status::internal(format!("the follower's answer: {e}"));
        if kind == REFUSAL {
            let refused = v1::AppendRefusal::decode(body.as_slice()).map_err(undecodable)?;
            return Err(Status::new(refused.code.into(), refused.message));
        }
        v1::AppendEntriesReply::decode(body.as_slice()).map_err(undecodable)
    }
}

/// The connection failed under a message.
fn lost(e: &dyn std::fmt::Display) -> Status {
    Status::unavailable(format!("the appends' connection: {e}"))
}

/// Whether opening the protocol failed because the manager does not speak it (it refused the
/// ALPN in the handshake).
pub fn not_spoken(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
            )
        })
}

/// `config` speaking this protocol only.
pub fn client_config(config: &ClientConfig) -> Arc<ClientConfig> {
    let mut config = config.clone();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Arc::new(config)
}

/// The next append on a follower's connection, at most `max` bytes: `None` when the leader
/// closed it, it broke, or it stayed silent for [`IDLE`]; a frame or message that cannot be
/// taken is the refusal to send.
pub async fn next_append<R: AsyncRead + Unpin>(
    conn: &mut R,
    max: usize,
) -> Result<Option<v1::AppendEntriesRequest>, Status> {
    let body = match tokio::time::timeout(IDLE, read_frame(conn, &[MESSAGE], max)).await {
        Ok(Ok((_, body))) => body,
        Ok(Err(ReadError::Frame(e))) => return Err(Status::invalid_argument(e.to_string())),
        // Closed, broken or silent: nothing to answer.
        Ok(Err(ReadError::Io(_))) | Err(_) => return Ok(None),
    };
    v1::AppendEntriesRequest::decode(body.as_slice())
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("decoding the raft message: {e}")))
}

/// Sends a follower's answer to an append.
pub async fn send_reply<W: AsyncWrite + Unpin>(
    conn: &mut W,
    reply: &v1::AppendEntriesReply,
) -> std::io::Result<()> {
    write_frames(conn, &frame(MESSAGE, reply)).await
}

/// How long a follower reads what a leader still sends once it has closed its side.
const LINGER: Duration = Duration::from_secs(2);

/// Reads and drops what the leader still sends, until it closes or [`LINGER`] has passed.
pub async fn linger<R: AsyncRead + Unpin>(conn: &mut R) {
    let drain = async {
        let mut sink = [0; 4096];
        while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Sends a follower's refusal (the connection is to be closed after it).
pub async fn send_refusal<W: AsyncWrite + Unpin>(conn: &mut W, status: &Status) {
    let _ = write_frames(conn, &refusal(status)).await;
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::raft::test_tls::manager_tls;

    #[test]
    fn a_header_outside_the_kinds_or_the_bound_is_refused_before_its_body() {
        let head = |kind: u8, len: u32| {
            let mut h = [kind, 0, 0, 0, 0];
            h[1..].copy_from_slice(&len.to_be_bytes());
            h
        };
        assert_eq!(header(head(1, 10), &[MESSAGE], 10), Ok((1, 10)));
        assert_eq!(
            header(head(1, 11), &[MESSAGE], 10),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        );
        assert_eq!(header(head(2, 1), &[MESSAGE], 10), Err(FrameError::Kind(2)));
        assert_eq!(
            FrameError::TooLarge { len: 11, max: 10 }.to_string(),
            "a frame of 11 bytes, over the 10 accepted"
        );
    }

    /// Opens the protocol against a server offering `protocols`: what the client got, and the
    /// protocol the server agreed.
    async fn open_against(protocols: &[&[u8]]) -> (std::io::Result<AppendsConn>, Option<Vec<u8>>) {
        let live = manager_tls();
        let mut server = (*live.server_config().expect("a server config")).clone();
        server.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepting = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = tokio_rustls::TlsAcceptor::from(Arc::new(server))
                .accept(tcp)
                .await;
            tls.ok()
                .and_then(|t| t.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
        });
        let config = client_config(&live.client_config().expect("a client config"));
        let opened = AppendsConn::open(&addr, config, Duration::from_secs(5)).await;
        (opened, accepting.await.unwrap())
    }

    /// A manager of this version agrees the protocol beside gRPC; one that offers only gRPC
    /// refuses it in the handshake, which the leader tells from any other failure (and then uses
    /// the gRPC stream).
    #[tokio::test]
    async fn a_manager_without_the_protocol_is_told_from_a_broken_connection() {
        let (opened, agreed) = open_against(&[b"h2", ALPN]).await;
        assert!(opened.is_ok(), "{opened:?}");
        assert_eq!(agreed.as_deref(), Some(ALPN));
        let (opened, agreed) = open_against(&[b"h2"]).await;
        let e = opened.expect_err("refused in the handshake");
        assert!(not_spoken(&e), "{e}");
        assert_eq!(agreed, None);
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(!not_spoken(&refused));
    }

    /// A leader that reads no answer cannot hold the follower's task: the write gives up after
    /// [`IDLE`], and so does a read of a frame that never comes.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_takes_nothing_or_sends_nothing_is_given_up() {
        let (mut near, _far) = tokio::io::duplex(8);
        let reply = v1::AppendEntriesReply {
            answer: Some(v1::append_entries_reply::Answer::Success(v1::Empty {})),
        };
        let big = v1::AppendRefusal {
            code: 3,
            message: "x".repeat(1024),
        };
        let refused = write_frames(&mut near, &frame(REFUSAL, &big)).await;
        assert_eq!(
            refused.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::TimedOut)
        );
        let (mut near, _far) = tokio::io::duplex(1024);
        assert!(send_reply(&mut near, &reply).await.is_ok());
        let (mut silent, _far) = tokio::io::duplex(1024);
        assert_eq!(next_append(&mut silent, MAX_REPLY).await.ok(), Some(None));
    }

    proptest! {
        /// Any reply and refusal framed is read back whole, and a stream of frames is read
        /// frame by frame.
        #[test]
        fn frames_read_back_as_written(term in any::<u64>(), code in 0i32..17, text in ".{0,64}") {
            let reply = v1::AppendEntriesReply {
                answer: Some(v1::append_entries_reply::Answer::HigherVote(v1::Vote {
                    term,
                    node_id: 3,
                    committed: true,
                })),
            };
            let refused = v1::AppendRefusal { code, message: text.clone() };
            let mut bytes = frame(MESSAGE, &reply);
            bytes.extend(frame(REFUSAL, &refused));
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (first, second) = runtime.block_on(async {
                let mut reader = bytes.as_slice();
                let first = read_frame(&mut reader, &[MESSAGE, REFUSAL], MAX_REPLY).await.unwrap();
                let second = read_frame(&mut reader, &[MESSAGE, REFUSAL], MAX_REPLY).await.unwrap();
                (first, second)
            });
            prop_assert_eq!(first.0, MESSAGE);
            prop_assert_eq!(v1::AppendEntriesReply::decode(first.1.as_slice()).unwrap(), reply);
            prop_assert_eq!(second.0, REFUSAL);
            prop_assert_eq!(v1::AppendRefusal::decode(second.1.as_slice()).unwrap(), refused);
        }
    }
}
