//! `shoal-hostile`: a misbehaving node, for the hardening tests. It speaks the cluster's own
//! protocol with whatever it is given, where a real `shoald` would never send it.
//!
//! ```text
//! shoal-hostile join --manager IP:PORT --token T --hostname H --data-path-addr A [--wireguard-key K]
//! shoal-hostile heartbeat --manager IP:PORT --certs DIR --hostname H --data-path-addr A [--wireguard-key K]
//! shoal-hostile raft-append --manager IP:PORT --certs DIR --leader RAFT_ID --term T
//! shoal-hostile raft-vote --manager IP:PORT --certs DIR --candidate RAFT_ID --term T
//! shoal-hostile raft-snapshot --manager IP:PORT --certs DIR --leader RAFT_ID --term T --offset N
//! ```
//!
//! The raft calls send openraft's own messages as a manager would: an empty append-entries, a
//! vote request, one snapshot chunk of 1 KiB at `--offset`.
//!
//! `DIR` holds a node's `node.crt`, `node.key` and `ca.crt` (its `<data root>/swarm/certs`).
//! Prints one JSON line: `{"ok":true}` or `{"ok":false,"code":"...","error":"..."}`.

use std::{process::ExitCode, str::FromStr, time::Duration};

use serde_json::json;
use shoal_api::{
    swarm::{NodeDescription, Platform},
    v1::{Frame, ca_client::CaClient, dispatcher_client::DispatcherClient},
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

fn credentials(dir: &str) -> Result<Credentials, String> {
    let read = |name: &str| {
        std::fs::read_to_string(format!("{dir}/{name}")).map_err(|e| format!("{dir}/{name}: {e}"))
    };
    Ok(Credentials {
        cert_pem: read("node.crt")?,
        key_pem: read("node.key")?,
        ca_pem: read("ca.crt")?,
    })
}

fn frame<T: serde::Serialize>(value: &T) -> Result<tonic::Request<Frame>, String> {
    let json = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(Frame { json });
    request.set_timeout(TIMEOUT);
    Ok(request)
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
        .join(frame(&request)?)
        .await
        .map(drop))
}

async fn heartbeat(args: &[String]) -> Result<Answer, String> {
    let manager = required(args, "--manager")?;
    let credentials = credentials(required(args, "--certs")?)?;
    let config = credentials.client_config().map_err(|e| e.to_string())?;
    let channel = tls::channel(manager, config, TIMEOUT).map_err(|e| e.to_string())?;
    let beat = Heartbeat {
        description: description(args)?,
    };
    Ok(DispatcherClient::new(channel)
        .heartbeat(frame(&beat)?)
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
    let manager = required(args, "--manager")?;
    let credentials = credentials(required(args, "--certs")?)?;
    let config = credentials.client_config().map_err(|e| e.to_string())?;
    let channel = tls::channel(manager, config, TIMEOUT).map_err(|e| e.to_string())?;
    let mut client = RaftClient::new(channel);
    let term = number(args, "--term")?;
    let answer = match which {
        "append" => {
            let rpc = openraft::raft::AppendEntriesRequest::<TypeConfig> {
                vote: Vote::new_committed(term, number(args, "--leader")?),
                prev_log_id: None,
                entries: Vec::new(),
                leader_commit: None,
            };
            client.append_entries(frame(&rpc)?).await
        }
        "vote" => {
            let rpc = openraft::raft::VoteRequest::<u64> {
                vote: Vote::new(term, number(args, "--candidate")?),
                last_log_id: Some(LogId::new(
                    openraft::CommittedLeaderId::new(term, 0),
                    1 << 40,
                )),
            };
            client.vote(frame(&rpc)?).await
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
            client.install_snapshot(frame(&rpc)?).await
        }
    };
    Ok(answer.map(drop))
}

async fn run(args: &[String]) -> Result<Answer, String> {
    match args.first().map(String::as_str) {
        Some("join") => join(&args[1..]).await,
        Some("heartbeat") => heartbeat(&args[1..]).await,
        Some("raft-append") => raft(&args[1..], "append").await,
        Some("raft-vote") => raft(&args[1..], "vote").await,
        Some("raft-snapshot") => raft(&args[1..], "snapshot").await,
        _ => Err(
            "usage: shoal-hostile join|heartbeat|raft-append|raft-vote|raft-snapshot ... (see the source's header)"
                .into(),
        ),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(answer) => {
            let line = match answer {
                Ok(()) => json!({ "ok": true }),
                Err(status) => json!({
                    "ok": false,
                    "code": format!("{:?}", status.code()),
                    "error": status.message(),
                }),
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
