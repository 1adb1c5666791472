//! `shoal-raft-load`: the replicated-write load of `cargo xtask bench raft`, the same client for
//! Shoal and for etcd.
//!
//! ```text
//! shoal-raft-load shoal --target IP:PORT --certs DIR --clients C --seconds S
//! shoal-raft-load etcd  --target IP:PORT --clients C --seconds S
//! shoal-raft-load etcd-leader --endpoints IP:PORT,IP:PORT,...
//! shoal-raft-load shoal|etcd ... --first-write
//! shoal-raft-load etcd|etcd-leader ... --certs DIR
//! ```
//!
//! `C` tasks each write one new key (64-byte value) at a time, for `S` seconds, over one HTTP/2
//! connection: to Shoal, a `Put` through the cluster API (mutual TLS with the manager
//! certificate in `DIR`: `node.crt`, `node.key`, `ca.crt`); to etcd, `KV.Put` over gRPC. A write
//! counts when it is acknowledged, which for both means committed by a majority with fsync.
//! Prints `{"writes":N,"errors":E,"seconds":S,"per_s":R,"mean_ms":..,"p50_ms":..,"p90_ms":..,"p99_ms":..}`.
//! `etcd-leader` prints the endpoint of the etcd member that leads (from `Maintenance.Status`).
//! With `--certs DIR`, etcd is called over mutual TLS as Shoal is (a client certificate in `DIR`,
//! the server's verified against `DIR/ca.crt` as `swarm-manager`).
//! With `--first-write` (after a leader is killed), one writer tries until a write is
//! acknowledged (each try given 1 s, 10 ms between tries) and prints `{"ms": M}`, the time
//! from its start to that acknowledgement.

use shoal_api::call::ClusterCall;
use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use shoal_api::v1::control_client::ControlClient;
use shoal_control::{
    manager::protocol::{Forwarded, Op},
    tls::{self, Credentials},
};
use tonic::{codegen::http::uri::PathAndQuery, transport::Channel};

/// etcd's `PutRequest` (only the fields written).
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// etcd's `PutResponse` (fields ignored).
#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    cluster_id: u64,
    #[prost(uint64, tag = "2")]
    member_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(uint64, tag = "4")]
    leader: u64,
}

#[derive(Clone)]
enum Target {
    Shoal(ControlClient<Channel>),
    Etcd(tonic::client::Grpc<Channel>),
}

impl Target {
    async fn put(&mut self, key: String, value: String) -> Result<(), String> {
        match self {
            Target::Shoal(client) => {
                let forwarded = Forwarded {
                    op: Op::User {
                        call: ClusterCall::Put {
                            name: key,
                            data: value,
                        }
                        .into(),
                        node_id: String::new(),
                    },
                    caller: None,
                    from: String::new(),
                    hops: 0,
                };
                client
                    .call(shoal_api::v1::Forwarded::from(forwarded))
                    .await
                    .map(drop)
                    .map_err(|s| s.message().to_owned())
            }
            Target::Etcd(grpc) => {
                grpc.ready().await.map_err(|e| e.to_string())?;
                let request = PutRequest {
                    key: key.into_bytes(),
                    value: value.into_bytes(),
                };
                grpc.unary::<_, PutResponse, _>(
                    tonic::Request::new(request),
                    PathAndQuery::from_static("/etcdserverpb.KV/Put"),
                    tonic_prost::ProstCodec::default(),
                )
                .await
                .map(drop)
                .map_err(|s| s.message().to_owned())
            }
        }
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Result<&'a str, String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .ok_or_else(|| format!("missing {name}"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A channel over mutual TLS with the certificate, key and roots in `certs` (`node.crt`,
/// `node.key`, `ca.crt`).
fn tls_channel(target: &str, certs: &str) -> Result<Channel, String> {
    let dir = std::path::PathBuf::from(certs);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).map_err(|e| format!("{f}: {e}"));
    let credentials = Credentials {
        cert_pem: read("node.crt")?,
        key_pem: read("node.key")?,
        ca_pem: read("ca.crt")?,
    };
    let config = credentials.client_config().map_err(|e| e.to_string())?;
    tls::channel(target, config, Duration::from_secs(30)).map_err(|e| e.to_string())
}

/// Over mutual TLS with `certs`, or in plain text without.
async fn channel(target: &str, certs: Option<&str>) -> Result<Channel, String> {
    match certs {
        Some(certs) => tls_channel(target, certs),
        None => plain_channel(target).await,
    }
}

async fn plain_channel(target: &str) -> Result<Channel, String> {
    tonic::transport::Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("connecting to {target}: {e}"))
}

async fn load(target: Target, clients: usize, seconds: u64) -> serde_json::Value {
    // One write each first, so connection set-up is not measured.
    let mut warm = target.clone();
    let _ = warm.put("warm-up".into(), "x".into()).await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let value = "v".repeat(64);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut target = target.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0_u64;
            let mut i = 0_u64;
            while Instant::now() < deadline {
                let began = Instant::now();
                match target.put(format!("bench-{c}-{i}"), value.clone()).await {
                    Ok(()) => latencies.push(began.elapsed().as_secs_f64() * 1e3),
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.expect("a load task");
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    serde_json::json!({
        "writes": latencies.len(),
        "errors": errors,
        "seconds": elapsed,
        "per_s": latencies.len() as f64 / elapsed,
        "mean_ms": latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
        "p50_ms": percentile(&latencies, 50.0),
        "p90_ms": percentile(&latencies, 90.0),
        "p99_ms": percentile(&latencies, 99.0),
    })
}

/// Milliseconds until one write is acknowledged (a leader elected and committing), at most 60 s.
async fn first_write(mut target: Target) -> Result<serde_json::Value, String> {
    let start = Instant::now();
    let mut last = String::new();
    for i in 0_u64.. {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("no write acknowledged in 60 s: {last}"));
        }
        let put = target.put(format!("failover-{i}"), "x".into());
        match tokio::time::timeout(Duration::from_secs(1), put).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => last = e,
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(serde_json::json!({ "ms": start.elapsed().as_secs_f64() * 1e3 }))
}

async fn run(args: &[String]) -> Result<(), String> {
    let command = args.first().map(String::as_str).unwrap_or_default();
    match command {
        "shoal" | "etcd" => {
            let target_addr = flag(args, "--target")?;
            let certs = flag(args, "--certs").ok();
            let target = if command == "shoal" {
                let certs = certs.ok_or("missing --certs")?;
                Target::Shoal(ControlClient::new(tls_channel(target_addr, certs)?))
            } else {
                Target::Etcd(tonic::client::Grpc::new(channel(target_addr, certs).await?))
            };
            if args.iter().any(|a| a == "--first-write") {
                println!("{}", first_write(target).await?);
                return Ok(());
            }
            let clients: usize = flag(args, "--clients")?
                .parse()
                .map_err(|_| "bad --clients")?;
            let seconds: u64 = flag(args, "--seconds")?
                .parse()
                .map_err(|_| "bad --seconds")?;
            println!("{}", load(target, clients, seconds).await);
            Ok(())
        }
        "etcd-leader" => {
            let certs = flag(args, "--certs").ok();
            for endpoint in flag(args, "--endpoints")?.split(',') {
                let mut grpc = tonic::client::Grpc::new(channel(endpoint, certs).await?);
                grpc.ready().await.map_err(|e| e.to_string())?;
                let status = grpc
                    .unary::<_, StatusResponse, _>(
                        tonic::Request::new(StatusRequest {}),
                        PathAndQuery::from_static("/etcdserverpb.Maintenance/Status"),
                        tonic_prost::ProstCodec::default(),
                    )
                    .await
                    .map_err(|s| format!("{endpoint}: {}", s.message()))?
                    .into_inner();
                if status.header.is_some_and(|h| h.member_id == status.leader) {
                    println!("{endpoint}");
                    return Ok(());
                }
            }
            Err("no etcd member says it leads".into())
        }
        other => Err(format!(
            "unknown subcommand {other:?}: shoal, etcd or etcd-leader"
        )),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
