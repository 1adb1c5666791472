//! `shoal-hostile`: a misbehaving node, for the hardening tests. It speaks the cluster's own
//! protocol with whatever it is given, where a real `shoald` would never send it.
//!
//! ```text
//! shoal-hostile join --manager IP:PORT --token T --hostname H --data-path-addr A [--wireguard-key K]
//! shoal-hostile heartbeat --manager IP:PORT --certs DIR --hostname H --data-path-addr A [--wireguard-key K]
//! shoal-hostile raft-append --manager IP:PORT --certs DIR --leader RAFT_ID --term T
//! shoal-hostile raft-append-stream --manager IP:PORT --certs DIR --leader RAFT_ID --term T
//! shoal-hostile raft-append-framed --manager IP:PORT --certs DIR --leader RAFT_ID --term T [--claim-bytes N]
//! shoal-hostile raft-vote --manager IP:PORT --certs DIR --candidate RAFT_ID --term T
//! shoal-hostile raft-snapshot --manager IP:PORT --certs DIR --leader RAFT_ID --term T --offset N
//! shoal-hostile conn-flood --manager IP:PORT --token T --connections N --frames F --seconds S
//! shoal-hostile report --manager IP:PORT --certs DIR --task ID
//! shoal-hostile assignments --manager IP:PORT --certs DIR
//! shoal-hostile syn-flood --target IP:PORT --count N
//! ```
//!
//! `syn-flood` sends `N` TCP SYNs from random sources of 100.64.0.0/10 (a raw socket, so the
//! sources are spoofed) as fast as it can, and prints `{"ok":true,"sent":N,"seconds":S}`.
//!
//! `report` says the task is running; `assignments` opens the node's assignment stream and
//! answers with its first message.
//!
//! `conn-flood` plays a client without a certificate: it opens `N` TLS connections and leaves
//! them idle, while `F` tasks send 4 MiB requests to `Ca.Join` and `Dispatcher.Heartbeat`, for
//! `S` seconds; it prints how many connections the manager closed and how its calls ended
//! (`{"ok":true,"connections":N,"unreachable":..,"refused_by_manager":..,"closed_by_manager":..,
//! "held":..,"frames":..,"frames_refused":..,"frame_codes":{CODE:N}}`; `unreachable` counts
//! connections nobody accepted, which says nothing of the manager's limits).
//!
//! The raft calls send openraft's own messages as a manager would: an empty append-entries, a
//! vote request, one snapshot chunk of 1 KiB at `--offset`. `raft-append-stream` sends the
//! append on a gRPC stream of appends and reads its answer; `raft-append-framed` sends it on the
//! appends' own protocol (ALPN `shoal-raft/1`), as a leader does; with `--claim-bytes N` it
//! sends instead only a frame's header claiming `N` bytes, and reads the answer.
//!
//! `DIR` holds a node's `node.crt`, `node.key` and `ca.crt` (its `<data root>/swarm/certs`);
//! every command that takes `--certs DIR` also takes `--ca FILE`, the roots to trust instead of
//! `DIR`'s.
//! Prints one JSON line: `{"ok":true}` or `{"ok":false,"code":"...","error":"...","causes":[...]}`
//! (the errors under a transport error, a TLS alert from the manager among them).

use std::{process::ExitCode, str::FromStr, sync::Arc, time::Duration};

use serde_json::json;
use shoal_api::{
    swarm::{NodeDescription, Platform},
    v1::{self, ca_client::CaClient, dispatcher_client::DispatcherClient},
};
use shoal_control::{
    ca::{self, JoinToken},
    manager::protocol::{Heartbeat, JoinRequest},
    tls::{self, Credentials},
};
use tonic::Status;

const TIMEOUT: Duration = Duration::from_secs(20);

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn required<'a>(args: &'a [String], name: &str) -> Result<&'a str, String> {
    flag(args, name).ok_or_else(|| format!("missing {name}"))
}

fn description(args: &[String]) -> Result<NodeDescription, String> {
    Ok(NodeDescription {
        hostname: required(args, "--hostname")?.to_owned(),
        platform: Platform {
            architecture: "x86_64".into(),
            os: "linux".into(),
        },
        data_path_addr: required(args, "--data-path-addr")?.to_owned(),
        wireguard_public_key: flag(args, "--wireguard-key").unwrap_or_default().to_owned(),
        executor: "exec".into(),
        ..Default::default()
    })
}

/// `--certs DIR`'s certificate and key, trusting `--ca FILE` if given (else `DIR`'s roots): a
/// node's saved certificate can then be presented to managers whose roots it no longer shares,
/// so that what refuses it is the manager, not this client.
fn credentials(args: &[String]) -> Result<Credentials, String> {
    let read = |path: String| std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"));
    let dir = required(args, "--certs")?;
    Ok(Credentials {
        cert_pem: read(format!("{dir}/node.crt"))?,
        key_pem: read(format!("{dir}/node.key"))?,
        ca_pem: read(flag(args, "--ca").map_or_else(|| format!("{dir}/ca.crt"), str::to_owned))?,
    })
}

/// A channel to `--manager` as the node whose credentials [`credentials`] reads.
fn node_channel(args: &[String]) -> Result<tonic::transport::Channel, String> {
    let config = credentials(args)?
        .client_config()
        .map_err(|e| e.to_string())?;
    tls::channel(required(args, "--manager")?, config, TIMEOUT).map_err(|e| e.to_string())
}

/// `message` with the tool's deadline.
fn deadline<M>(message: M) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(TIMEOUT);
    request
}

/// What the manager answered: `Ok(())` or its status.
type Answer = Result<(), Status>;

async fn join(args: &[String]) -> Result<Answer, String> {
    let manager = required(args, "--manager")?;
    let token_text = required(args, "--token")?;
    let token = JoinToken::from_str(token_text).map_err(|e| e.to_string())?;
    let config = tls::join_client(&token.digest).map_err(|e| e.to_string())?;
    let channel = tls::channel(manager, config, TIMEOUT).map_err(|e| e.to_string())?;
    let (csr, _key) = ca::node_request().map_err(|e| e.to_string())?;
    let request = JoinRequest {
        token: token_text.to_owned(),
        csr,
        description: description(args)?,
        advertise_addr: format!("{}:2377", required(args, "--data-path-addr")?),
    };
    Ok(CaClient::new(channel)
        .join(deadline(request.into()))
        .await
        .map(drop))
}

async fn heartbeat(args: &[String]) -> Result<Answer, String> {
    let channel = node_channel(args)?;
    let beat = Heartbeat {
        description: description(args)?,
        mesh: Default::default(),
    };
    Ok(DispatcherClient::new(channel)
        .heartbeat(deadline(beat.into()))
        .await
        .map(drop))
}

fn number(args: &[String], name: &str) -> Result<u64, String> {
    required(args, name)?
        .parse()
        .map_err(|e| format!("{name}: {e}"))
}

/// One raft call with `DIR`'s certificate; the answer openraft itself would see.
async fn raft(args: &[String], which: &str) -> Result<Answer, String> {
    use openraft::{LogId, SnapshotMeta, StoredMembership, Vote};
    use shoal_api::v1::raft_client::RaftClient;
    use shoal_control::raft::TypeConfig;
    let channel = node_channel(args)?;
    let mut client = RaftClient::new(channel);
    let term = number(args, "--term")?;
    let answer = match which {
        "append" | "append-stream" | "append-framed" => {
            let rpc = openraft::raft::AppendEntriesRequest::<TypeConfig> {
                vote: Vote::new_committed(term, number(args, "--leader")?),
                prev_log_id: None,
                entries: Vec::new(),
                leader_commit: None,
            };
            let message = shoal_control::raft::wire::to_append(&rpc);
            if which == "append" {
                client.append_entries(message).await.map(drop)
            } else if which == "append-framed" {
                framed_append(args, &message).await?
            } else {
                match client
                    .append_entries_stream(tokio_stream::iter([message]))
                    .await
                {
                    Ok(replies) => replies.into_inner().message().await.map(drop),
                    Err(status) => Err(status),
                }
            }
        }
        "vote" => {
            let rpc = openraft::raft::VoteRequest::<u64> {
                vote: Vote::new(term, number(args, "--candidate")?),
                last_log_id: Some(LogId::new(
                    openraft::CommittedLeaderId::new(term, 0),
                    1 << 40,
                )),
            };
            client
                .vote(shoal_control::raft::wire::to_vote_request(&rpc))
                .await
                .map(drop)
        }
        _ => {
            let rpc = openraft::raft::InstallSnapshotRequest::<TypeConfig> {
                vote: Vote::new_committed(term, number(args, "--leader")?),
                meta: SnapshotMeta {
                    last_log_id: None,
                    last_membership: StoredMembership::default(),
                    snapshot_id: "hostile".into(),
                },
                offset: number(args, "--offset")?,
                data: vec![0; 1024],
                done: false,
            };
            client
                .install_snapshot(shoal_control::raft::wire::to_snapshot(rpc))
                .await
                .map(drop)
        }
    };
    Ok(answer)
}

/// Sends `message` on the appends' own protocol with `--certs DIR`'s certificate: the
/// follower's answer, or its refusal (a failed connection as `Unavailable`).
async fn framed_append(
    args: &[String],
    message: &v1::AppendEntriesRequest,
) -> Result<Answer, String> {
    use shoal_control::raft::appends;
    let config = credentials(args)?
        .client_config()
        .map_err(|e| e.to_string())?;
    let manager = required(args, "--manager")?;
    let mut conn =
        match appends::AppendsConn::open(manager, appends::client_config(&config), TIMEOUT).await {
            Ok(conn) => conn,
            Err(e) => return Ok(Err(Status::unavailable(e.to_string()))),
        };
    Ok(match flag(args, "--claim-bytes") {
        Some(_) => {
            let claimed = u32::try_from(number(args, "--claim-bytes")?)
                .map_err(|_| "--claim-bytes: at most 2^32 - 1".to_owned())?;
            // A message's kind byte, then the length: nothing of the body follows.
            let mut header = vec![1];
            header.extend_from_slice(&claimed.to_be_bytes());
            match conn.send_bytes(&header).await {
                Ok(()) => conn.answer().await.map(drop),
                Err(status) => Err(status),
            }
        }
        None => conn.exchange(message).await.map(drop),
    })
}

/// How an idle connection without a certificate ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idle {
    /// No TCP connection: nobody listens (not the manager's refusal).
    Unreachable,
    /// The manager refused it before TLS was up (reset or closed it during the handshake).
    Refused,
    /// TLS came up; the manager closed it later.
    Closed,
    /// Still open when the flood ended.
    Held,
}

/// Opens one TLS connection without a certificate and holds it idle until `until`.
async fn idle_connection(
    manager: std::net::SocketAddr,
    config: Arc<tokio_rustls::rustls::ClientConfig>,
    until: tokio::time::Instant,
) -> Idle {
    use tokio::io::AsyncReadExt;
    let Ok(tcp) = tokio::net::TcpStream::connect(manager).await else {
        return Idle::Unreachable;
    };
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(tls::MANAGER_NAME)
        .expect("a valid DNS name");
    let Ok(mut stream) = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
    else {
        return Idle::Refused;
    };
    let mut byte = [0_u8; 1];
    // The manager sends nothing to a client that says nothing: a read ends only when it closes.
    match tokio::time::timeout_at(until, stream.read(&mut byte)).await {
        Ok(_) => Idle::Closed,
        Err(_) => Idle::Held,
    }
}

/// Sends 4 MiB requests without a certificate until `until`: how many, and how many ended in
/// each status code.
async fn large_frames(
    channel: tonic::transport::Channel,
    until: tokio::time::Instant,
) -> (u64, std::collections::BTreeMap<String, u64>) {
    let junk = "x".repeat(4 << 20);
    let mut sent = 0;
    let mut codes = std::collections::BTreeMap::new();
    let mut ca = CaClient::new(channel.clone()).max_encoding_message_size(8 << 20);
    let mut dispatcher = DispatcherClient::new(channel).max_encoding_message_size(8 << 20);
    while tokio::time::Instant::now() < until {
        let join = v1::JoinRequest {
            csr: junk.clone(),
            ..Default::default()
        };
        let beat = v1::Heartbeat {
            description: Some(v1::NodeDescription {
                hostname: junk.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        for answer in [
            ca.join(join).await.map(drop),
            dispatcher.heartbeat(beat).await.map(drop),
        ] {
            sent += 1;
            let code = match answer {
                Ok(()) => "Ok".to_owned(),
                Err(status) => format!("{:?}", status.code()),
            };
            *codes.entry(code).or_default() += 1;
        }
    }
    (sent, codes)
}

async fn conn_flood(args: &[String]) -> Result<serde_json::Value, String> {
    let manager: std::net::SocketAddr = required(args, "--manager")?
        .parse()
        .map_err(|e| format!("--manager: {e}"))?;
    let token = JoinToken::from_str(required(args, "--token")?).map_err(|e| e.to_string())?;
    let config = tls::join_client(&token.digest).map_err(|e| e.to_string())?;
    let connections = number(args, "--connections")?;
    // One descriptor per connection: as many as the system lets this process have.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let frames = number(args, "--frames")?;
    let until = tokio::time::Instant::now() + Duration::from_secs(number(args, "--seconds")?);
    let idle: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(idle_connection(manager, config.clone(), until)))
        .collect();
    let senders: Vec<_> = (0..frames)
        .map(|_| {
            let channel = tls::channel(&manager.to_string(), config.clone(), TIMEOUT)
                .map_err(|e| e.to_string());
            tokio::spawn(async move {
                match channel {
                    Ok(channel) => large_frames(channel, until).await,
                    Err(_) => (0, std::collections::BTreeMap::new()),
                }
            })
        })
        .collect();
    let (mut unreachable, mut refused_conns, mut closed, mut held) = (0_u64, 0_u64, 0_u64, 0_u64);
    for task in idle {
        match task.await.unwrap_or(Idle::Unreachable) {
            Idle::Unreachable => unreachable += 1,
            Idle::Refused => refused_conns += 1,
            Idle::Closed => closed += 1,
            Idle::Held => held += 1,
        }
    }
    let (mut sent, mut codes) = (0, std::collections::BTreeMap::<String, u64>::new());
    for task in senders {
        let (s, c) = task.await.unwrap_or_default();
        sent += s;
        for (code, n) in c {
            *codes.entry(code).or_default() += n;
        }
    }
    Ok(json!({
        "ok": true,
        "connections": connections,
        "unreachable": unreachable,
        "refused_by_manager": refused_conns,
        "closed_by_manager": closed,
        "held": held,
        "frames": sent,
        "frames_refused": sent - codes.get("Ok").copied().unwrap_or_default(),
        "frame_codes": codes,
    }))
}

/// A task report, or the first message of the assignment stream, with `DIR`'s certificate.
async fn as_node(args: &[String], which: &str) -> Result<Answer, String> {
    use shoal_api::service::{TaskState, TaskStatus};
    let channel = node_channel(args)?;
    let mut client = DispatcherClient::new(channel);
    if which == "report" {
        let report = shoal_control::manager::protocol::StatusReport {
            updates: vec![(
                required(args, "--task")?.to_owned(),
                TaskStatus {
                    state: TaskState::Running,
                    message: "started".into(),
                    ..Default::default()
                },
            )],
        };
        return Ok(client.report(deadline(report.into())).await.map(drop));
    }
    let mut stream = match client
        .assignments(deadline(v1::AssignmentsRequest {}))
        .await
    {
        Ok(stream) => stream.into_inner(),
        Err(status) => return Ok(Err(status)),
    };
    Ok(match stream.message().await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Status::cancelled("the stream ended")),
        Err(status) => Err(status),
    })
}

/// The one's complement sum of `data` as 16-bit big-endian words, folded.
fn ones_sum(data: &[u8], mut sum: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// A TCP SYN from `src` to `dst`, IPv4 header included, checksums right.
fn syn_packet(src: (std::net::Ipv4Addr, u16), dst: std::net::SocketAddrV4, seq: u32) -> [u8; 40] {
    let mut p = [0_u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40_u16.to_be_bytes());
    p[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.0.octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip_check = !(ones_sum(&p[..20], 0) as u16);
    p[10..12].copy_from_slice(&ip_check.to_be_bytes());
    p[20..22].copy_from_slice(&src.1.to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x02;
    p[34..36].copy_from_slice(&64_240_u16.to_be_bytes());
    let mut pseudo = [0_u8; 12];
    pseudo[..4].copy_from_slice(&p[12..16]);
    pseudo[4..8].copy_from_slice(&p[16..20]);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20_u16.to_be_bytes());
    let tcp_check = !(ones_sum(&p[20..40], ones_sum(&pseudo, 0)) as u16);
    p[36..38].copy_from_slice(&tcp_check.to_be_bytes());
    p
}

fn syn_flood(args: &[String]) -> Result<serde_json::Value, String> {
    let target: std::net::SocketAddrV4 = required(args, "--target")?
        .parse()
        .map_err(|e| format!("--target: {e}"))?;
    let count = number(args, "--count")?;
    // SAFETY: a plain socket(2) call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(format!("a raw socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(target.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let started = std::time::Instant::now();
    let mut sent = 0_u64;
    while sent < count {
        // xorshift64: a spoofed source address, port and sequence number per SYN.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bits = state as u32;
        let src = std::net::Ipv4Addr::from(0x6440_0000 | (bits & 0x003f_ffff));
        let sport = 1024 + ((state >> 32) as u16 % 60_000);
        let packet = syn_packet((src, sport), target, (state >> 16) as u32);
        // SAFETY: the buffer and the address live for the call, their lengths given.
        let n = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
            {
                std::thread::yield_now();
                continue;
            }
            return Err(format!("sending a SYN: {e}"));
        }
        sent += 1;
    }
    Ok(json!({ "ok": true, "sent": sent, "seconds": started.elapsed().as_secs_f64() }))
}

async fn run(args: &[String]) -> Result<Answer, String> {
    match args.first().map(String::as_str) {
        Some("report") => as_node(&args[1..], "report").await,
        Some("assignments") => as_node(&args[1..], "assignments").await,
        Some("join") => join(&args[1..]).await,
        Some("heartbeat") => heartbeat(&args[1..]).await,
        Some("raft-append") => raft(&args[1..], "append").await,
        Some("raft-append-stream") => raft(&args[1..], "append-stream").await,
        Some("raft-append-framed") => raft(&args[1..], "append-framed").await,
        Some("raft-vote") => raft(&args[1..], "vote").await,
        Some("raft-snapshot") => raft(&args[1..], "snapshot").await,
        _ => Err(
            "usage: shoal-hostile join|heartbeat|raft-append|raft-append-stream|raft-vote|raft-snapshot|report|assignments|conn-flood|syn-flood ... (see the source's header)"
                .into(),
        ),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The floods report figures of their own.
    let report = match args.first().map(String::as_str) {
        Some("syn-flood") => Some(syn_flood(&args[1..])),
        Some("conn-flood") => Some(conn_flood(&args[1..]).await),
        _ => None,
    };
    if let Some(report) = report {
        return match report {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shoal-hostile: {e}");
                ExitCode::from(2)
            }
        };
    }
    match run(&args).await {
        Ok(answer) => {
            let line = match answer {
                Ok(()) => json!({ "ok": true }),
                Err(status) => {
                    // What lies under a transport error (a TLS alert the manager sent, ...).
                    let mut causes = Vec::new();
                    let mut source = std::error::Error::source(&status);
                    while let Some(cause) = source {
                        causes.push(cause.to_string());
                        source = cause.source();
                    }
                    json!({
                        "ok": false,
                        "code": format!("{:?}", status.code()),
                        "error": status.message(),
                        "causes": causes,
                    })
                }
            };
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal-hostile: {e}");
            ExitCode::from(2)
        }
    }
}
