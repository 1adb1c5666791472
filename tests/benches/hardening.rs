//! `cargo xtask bench hardening`: what Shoal's defences cost, and what attacks cost Shoal. Each
//! section measures its figures and the baseline they are compared with in the same run, and adds
//! them to one flat object written to `$SHOAL_BENCH_OUT` (default `target/bench/hardening.json`).
//! Needs root, iperf3, and release builds of `shoald`, `shoal` and `shoal-labtool` (the xtask
//! builds them).
//!
//! Sections (add one by writing a function and listing it in [`SECTIONS`];
//! `SHOAL_BENCH_SECTIONS=name,name` runs only those):
//! - **handshake flood**: iperf3 task to task over an encrypted overlay from n1 to n2, while n3
//!   sends n2's WireGuard port 200,000 forged handshake initiations a second with a valid MAC1
//!   (`handshake_flood_enc_gbps`), and alone just before and just after
//!   (`enc_gbps_no_flood`, their mean, so that a drift during the run does not pass for the
//!   flood's effect); the flood rate reached, the cookie replies it drew and n2's receive
//!   thread's CPU time during the flood come with them. The same datagrams at the same rate to
//!   a UDP port nobody listens on (`closed_port_flood_enc_gbps`) show what the flood costs this
//!   machine before any engine sees it. Then what a flood does to handshakes:
//!   seconds from n1 installing a new key until n2's session with n1 uses it, under the same
//!   flood (`handshake_flood_rekey_seconds`) and without (`rekey_seconds_no_flood`); a
//!   rotation that does not finish within 60 s counts as 60.
//! - **SYN flood**: a one-replica service published through the mesh on n1, and the same task
//!   behind nftables DNAT and masquerade (Linux conntrack) on another port of n1; 400,000
//!   spoofed SYNs at each, then seconds until a real client is served
//!   (`syn_flood_served_after_s`, baseline `nft_syn_flood_served_after_s`), and the mesh's
//!   counters for it.
//! - **connection flood**: replicated writes on 3 managers (64 clients, 5 s) alone
//!   (`raft_writes_per_s`), then while a client without a certificate holds 1,100 idle TLS
//!   connections to the leader and sends it 4 MiB requests
//!   (`raft_writes_per_s_during_conn_flood`); the leader's resident memory before
//!   (`rss_mib_no_flood`) and at most during the flood (`conn_flood_rss_mib`).

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use shoal_tests::overlay::{
    Net, Overlay, Task, WgKey, bench_output, iperf, kernel_counters, write_figures,
};
use shoal_tests::service::{create_serve, tasks, who_answers};
use shoal_tests::{Lab, LabSpec, binary, output_text, wait_until};

/// The figures so far: metric name -> number.
type Figures = Map<String, Value>;

/// A section: its name, and what measures it.
type Section = (&'static str, fn(&mut Figures));

/// The sections, in the order they run.
const SECTIONS: &[Section] = &[
    ("handshake flood", handshake_flood),
    ("SYN flood", syn_flood),
    ("connection flood", conn_flood),
];

/// Seconds of each iperf3 run.
const SECONDS: u32 = 5;
/// Forged initiations a second.
const FLOOD_RATE: u32 = 200_000;
/// A UDP port nothing listens on.
const CLOSED_PORT: u16 = 9;
/// The longest a key rotation is waited for.
const REKEY_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let out = bench_output("hardening");
    let mut figures = Figures::new();
    // `SHOAL_BENCH_SECTIONS="SYN flood,connection flood"` runs only those.
    let only = std::env::var("SHOAL_BENCH_SECTIONS").ok();
    for (name, section) in SECTIONS {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|s| s.trim() == *name))
        {
            continue;
        }
        println!("== {name}");
        section(&mut figures);
    }
    write_figures(&out, &figures).expect("writing the figures");
}

fn handshake_flood(figures: &mut Figures) {
    let mut lab = Lab::up(LabSpec {
        purpose: "bench hardening".into(),
        ..LabSpec::nodes(3)
    })
    .expect("lab up");
    lab.spawn_shoald_all().expect("shoald starts in every node");
    let secret = Net {
        id: "secret",
        vni: 4097,
        octet: 20,
        encrypted: true,
    };
    let mut o = Overlay::new(
        &lab,
        vec![secret],
        vec![
            Task {
                name: "t1",
                node: 0,
                on: vec![("secret", 2)],
            },
            Task {
                name: "t2",
                node: 1,
                on: vec![("secret", 3)],
            },
        ],
    )
    .expect("tasks");
    o.apply_all(&lab).expect("overlays applied");
    let ip = o.ip("t2", "secret");
    let server = || o.command("t2", "iperf3");
    let client = || o.command("t1", "iperf3");
    wait_until("the encrypted network", Duration::from_secs(20), || {
        Ok(o.ping("t1", "t2", "secret", 56))
    })
    .expect("t1 reaches t2");

    let before = iperf(&server, &client, ip, 1, SECONDS).expect("iperf3 runs");

    // The flood lasts the whole iperf3 run: it starts first and ends after it.
    let flooder = flood(&lab, &o, 51820, SECONDS + 3);
    let rx = receive_thread(&lab, 1);
    let drops = rcvbuf_errors(&lab, 1);
    std::thread::sleep(Duration::from_secs(1));
    let flooded = iperf(&server, &client, ip, 1, SECONDS).expect("iperf3 runs under the flood");
    let out = flooder.wait_with_output().expect("the flood ends");
    let (rx_cpu, rx_wakeups) = {
        let now = receive_thread(&lab, 1);
        (now.0 - rx.0, now.1 - rx.1)
    };
    let drops = rcvbuf_errors(&lab, 1) - drops;
    assert!(out.status.success(), "wg-flood: {}", output_text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("wg-flood's report");
    let after = iperf(&server, &client, ip, 1, SECONDS).expect("iperf3 runs");
    let quiet = (before + after) / 2.0;

    let flooder = flood(&lab, &o, CLOSED_PORT, SECONDS + 3);
    std::thread::sleep(Duration::from_secs(1));
    let closed = iperf(&server, &client, ip, 1, SECONDS).expect("iperf3 runs under the flood");
    let out = flooder.wait_with_output().expect("the flood ends");
    let closed_report: Value = serde_json::from_slice(&out.stdout).expect("wg-flood's report");

    let rekey_quiet = rekey_seconds(&lab, &mut o);
    let mut flooder = flood(&lab, &o, 51820, REKEY_TIMEOUT.as_secs() as u32 + 5);
    std::thread::sleep(Duration::from_secs(1));
    let rekey_flooded = rekey_seconds(&lab, &mut o);
    // Ours, started above: stopped by its own handle.
    let _ = flooder.kill();
    let _ = flooder.wait();

    println!("{:<40} {:>10}", "encrypted overlay, Gbit/s", "1 stream");
    println!("{:<40} {before:>10.2}", "no flood, before");
    println!(
        "{:<40} {flooded:>10.2}",
        format!("{} forged initiations/s", report["pps"])
    );
    println!("{:<40} {after:>10.2}", "no flood, after");
    println!(
        "{:<40} {closed:>10.2}",
        format!("{} datagrams/s to a closed port", closed_report["pps"])
    );
    println!(
        "kept {:.0} % of the throughput; {} cookie replies; while the flood ({} s) and iperf3 ran, n2's receive thread used {rx_cpu:.2} s of CPU and slept {rx_wakeups} times, and n2's kernel dropped {drops} datagrams on full socket buffers",
        100.0 * flooded / quiet,
        report["cookie_replies"],
        report["seconds"]
    );
    println!(
        "a key rotation took {rekey_quiet:.2} s without the flood, {rekey_flooded:.2} s under it"
    );
    figures.insert("enc_gbps_no_flood".into(), json!(quiet));
    figures.insert("enc_gbps_no_flood_before".into(), json!(before));
    figures.insert("enc_gbps_no_flood_after".into(), json!(after));
    figures.insert("handshake_flood_enc_gbps".into(), json!(flooded));
    figures.insert("handshake_flood_kept".into(), json!(flooded / quiet));
    figures.insert("handshake_flood_pps".into(), report["pps"].clone());
    figures.insert(
        "handshake_flood_cookie_replies".into(),
        report["cookie_replies"].clone(),
    );
    figures.insert("closed_port_flood_enc_gbps".into(), json!(closed));
    figures.insert("closed_port_flood_pps".into(), closed_report["pps"].clone());
    figures.insert("handshake_flood_rx_cpu_seconds".into(), json!(rx_cpu));
    figures.insert("handshake_flood_rx_wakeups".into(), json!(rx_wakeups));
    figures.insert("handshake_flood_rcvbuf_drops".into(), json!(drops));
    figures.insert("rekey_seconds_no_flood".into(), json!(rekey_quiet));
    figures.insert("handshake_flood_rekey_seconds".into(), json!(rekey_flooded));
    lab.down().expect("lab down");
}

/// Starts n3 sending n2's UDP `port` forged initiations with a valid MAC1 for `seconds`; its
/// report comes on its standard output.
fn flood(lab: &Lab, o: &Overlay, port: u16, seconds: u32) -> Child {
    let (n2, n3) = (&lab.nodes()[1], &lab.nodes()[2]);
    let mut flooder = n3
        .command(binary("shoal-labtool").expect("shoal-labtool is built"))
        .expect("n3's namespace");
    flooder
        .args(["wg-flood", "--kind", "valid-mac1", "--target"])
        .arg(format!("{}:{port}", n2.data_ip.unwrap()))
        .args(["--public-key", &o.keys[1].public])
        .args(["--rate", &FLOOD_RATE.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .stdout(Stdio::piped());
    flooder.spawn().expect("shoal-labtool runs")
}

/// Gives n1 a new key (its peers learn the public key first, then n1 installs it) and returns the
/// seconds from n1's apply until n2's session with n1 uses the new key, at most
/// [`REKEY_TIMEOUT`].
fn rekey_seconds(lab: &Lab, o: &mut Overlay) -> f64 {
    o.keys[0] = WgKey::generate();
    for node in [1, 2] {
        let out = o.apply(lab, node).expect("apply");
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let start = Instant::now();
    let out = o.apply(lab, 0).expect("apply");
    assert!(out.status.success(), "{}", output_text(&out));
    let new_key = o.keys[0].public.clone();
    let rotated = wait_until("n2 to use n1's new key", REKEY_TIMEOUT, || {
        let out = lab
            .shoal(&lab.nodes()[1], &["dataplane", "inspect"])
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        Ok(v["wireguard_peers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| {
                p["node"] == "n1" && p["public_key"] == new_key.as_str() && p["rotating"] == false
            }))
    });
    match rotated {
        Ok(()) => start.elapsed().as_secs_f64(),
        Err(_) => REKEY_TIMEOUT.as_secs_f64(),
    }
}

/// The WireGuard engine's receive thread (`shoal-wg-rx`) of node `node`'s `shoald` so far: CPU
/// seconds (user + system), and how often it went to sleep (voluntary context switches).
fn receive_thread(lab: &Lab, node: usize) -> (f64, u64) {
    let pid = lab
        .shoald_pid(&lab.nodes()[node])
        .expect("the node's shoald");
    // SAFETY: sysconf has no memory arguments.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let thread = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("its threads")
        .filter_map(|t| Some(t.ok()?.path()))
        .find(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == "shoal-wg-rx"))
        .expect("the engine's receive thread");
    let stat = std::fs::read_to_string(thread.join("stat")).expect("its stat");
    // The fields after the parenthesised name: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let cpu = (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / ticks;
    let status = std::fs::read_to_string(thread.join("status")).expect("its status");
    let sleeps = status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    (cpu, sleeps)
}

/// UDP datagrams node `node`'s kernel has dropped because a socket's buffer was full.
fn rcvbuf_errors(lab: &Lab, node: usize) -> u64 {
    let out = lab
        .run(&lab.nodes()[node], "cat", &["/proc/net/snmp"])
        .expect("reading /proc/net/snmp");
    let counters = kernel_counters(&String::from_utf8_lossy(&out.stdout));
    counters
        .get("Udp.RcvbufErrors")
        .map_or(0, |&n| u64::try_from(n).unwrap_or(0))
}

/// The spoofed SYNs of the SYN-flood section.
const SYN_FLOOD: &str = "400000";
/// The idle connections without a certificate of the connection-flood section.
const IDLE_CONNECTIONS: &str = "1100";

/// Runs `program args` in the client's namespace to completion; its JSON answer.
fn client_json(lab: &Lab, program: &str, args: &[&str]) -> Value {
    let mut command = lab
        .client()
        .command(binary(program).expect("built"))
        .expect("the client's namespace");
    let out = command.args(args).output().expect("runs");
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        output_text(&out)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON answer")
}

/// Seconds from the end of a flood of spoofed SYNs at `target` until a real client is served
/// (an HTTP request answered), asking every 50 ms; 60 when it never is.
fn served_after_flood(lab: &Lab, target: &str) -> f64 {
    let flood = client_json(
        lab,
        "shoal-hostile",
        &["syn-flood", "--target", target, "--count", SYN_FLOOD],
    );
    println!("   {flood}");
    let ended = Instant::now();
    while ended.elapsed() < Duration::from_secs(60) {
        let out = shoal_tests::mesh::labtool(
            lab.client(),
            &[
                "ask",
                "--target",
                target,
                "--count",
                "1",
                "--timeout-ms",
                "250",
            ],
        )
        .expect("ask runs");
        if shoal_tests::mesh::answers(&out)
            .iter()
            .any(|(_, r)| r.is_ok())
        {
            return ended.elapsed().as_secs_f64();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    60.0
}

/// A one-replica service published through the mesh on n1, and the same task behind nftables
/// DNAT and masquerade (Linux conntrack) on another port of n1; 400,000 spoofed SYNs at each,
/// then how long until a real client is served (`syn_flood_served_after_s`, baseline
/// `nft_syn_flood_served_after_s`).
fn syn_flood(figures: &mut Figures) {
    let swarm = shoal_tests::swarm::Swarm::up(1, 1);
    let n1 = swarm.host("n1");
    create_serve(
        &swarm,
        &n1,
        &[
            "--detach",
            "--name",
            "web",
            "--replicas",
            "1",
            "--publish",
            "8080:80",
            "--constraint",
            "node.hostname==n1",
        ],
    );
    let ip = n1.public_ip.to_string();
    wait_until("web to answer through n1", Duration::from_secs(60), || {
        Ok(who_answers(&swarm, &ip, 8080, 1).len() == 1)
    })
    .expect("web answers");
    // The task's address on the ingress network, for the nftables path.
    let task = tasks(&swarm, &n1, "web")
        .into_iter()
        .find(|t| t["DesiredState"] == "Running")
        .and_then(|t| t["ID"].as_str().map(str::to_owned))
        .expect("web's task");
    // Its address on the ingress network, from inside its namespace.
    let netns = swarm.lab.host_dir(&n1).join("data/tasks/netns").join(&task);
    let out = swarm
        .lab
        .run(
            &n1,
            "nsenter",
            &[
                &format!("--net={}", netns.display()),
                "ip",
                "-4",
                "-o",
                "addr",
                "show",
                "eth0",
            ],
        )
        .expect("nsenter runs");
    let backend = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("the task's ingress address: {}", output_text(&out)));
    let rules = swarm.lab.dir().join("nft-syn-flood.conf");
    std::fs::write(
        &rules,
        format!(
            "table ip bench {{\n chain pre {{\n  type nat hook prerouting priority -100;\n  tcp dport 9080 dnat to {backend}:80\n }}\n chain post {{\n  type nat hook postrouting priority 100;\n  ip daddr {backend} tcp dport 80 masquerade\n }}\n}}\n"
        ),
    )
    .expect("the rules");
    let out = swarm
        .lab
        .run(&n1, "nft", &["-f", rules.to_str().expect("a UTF-8 path")])
        .expect("nft runs");
    assert!(out.status.success(), "{}", output_text(&out));
    let mesh = served_after_flood(&swarm.lab, &format!("{ip}:8080"));
    println!("   mesh: served {mesh:.2} s after the flood");
    let nft = served_after_flood(&swarm.lab, &format!("{ip}:9080"));
    println!("   nftables DNAT: served {nft:.2} s after the flood");
    figures.insert("syn_flood_served_after_s".into(), json!(round(mesh)));
    figures.insert("nft_syn_flood_served_after_s".into(), json!(round(nft)));
    let dp: Value = serde_json::from_str(&swarm.ok(&n1, &["dataplane", "inspect"])).expect("JSON");
    let web = &dp["mesh"]["services"]["web"];
    for key in ["taken_over", "stale", "dropped"] {
        figures.insert(format!("syn_flood_{key}"), web[key].clone());
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Replicated writes on 3 managers (64 clients, 5 s) alone (`raft_writes_per_s`), then while a
/// client without a certificate holds 1,100 idle TLS connections to the leader and sends it
/// 4 MiB requests (`raft_writes_per_s_during_conn_flood`); the leader's resident memory before
/// (`rss_mib_no_flood`) and at most during the flood (`conn_flood_rss_mib`).
fn conn_flood(figures: &mut Figures) {
    let swarm = shoal_tests::swarm::Swarm::up(3, 0);
    let n1 = swarm.host("n1");
    let leader = swarm.host(&swarm.leader(&n1).expect("a leader"));
    let target = format!("{}:2377", leader.public_ip);
    let certs = swarm.lab.host_dir(&leader).join("data/swarm/certs");
    let certs = certs.to_str().expect("a UTF-8 path").to_owned();
    let writes = |lab: &Lab| {
        client_json(
            lab,
            "shoal-raft-load",
            &[
                "shoal",
                "--target",
                &target,
                "--certs",
                &certs,
                "--clients",
                "64",
                "--seconds",
                "5",
            ],
        )
    };
    let alone = writes(&swarm.lab);
    println!("   writes alone: {alone}");
    let rss_before = swarm
        .lab
        .shoald_rss_mib(&leader)
        .expect("the leader's memory");
    let token = swarm.ok(&n1, &["swarm", "join-token", "-q", "worker"]);
    let mut flood = swarm
        .lab
        .client()
        .command(binary("shoal-hostile").expect("built"))
        .expect("the client's namespace");
    flood
        .args([
            "conn-flood",
            "--manager",
            &target,
            "--token",
            token.trim(),
            "--connections",
            IDLE_CONNECTIONS,
            "--frames",
            "4",
            "--seconds",
            "12",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let flood: Child = flood.spawn().expect("the flood starts");
    std::thread::sleep(Duration::from_secs(3));
    let during = std::thread::scope(|scope| {
        let sampling = scope.spawn(|| {
            let mut peak = rss_before;
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until {
                peak = peak.max(swarm.lab.shoald_rss_mib(&leader).unwrap_or(0.0));
                std::thread::sleep(Duration::from_millis(200));
            }
            peak
        });
        let during = writes(&swarm.lab);
        (during, sampling.join().expect("sampling"))
    });
    let (during, peak) = during;
    let report = flood.wait_with_output().expect("the flood ends");
    println!(
        "   writes during the flood: {during}; flood: {}",
        String::from_utf8_lossy(&report.stdout).trim()
    );
    figures.insert("raft_writes_per_s".into(), alone["per_s"].clone());
    figures.insert(
        "raft_writes_per_s_during_conn_flood".into(),
        during["per_s"].clone(),
    );
    figures.insert(
        "raft_write_errors_during_conn_flood".into(),
        during["errors"].clone(),
    );
    figures.insert("rss_mib_no_flood".into(), json!(round(rss_before)));
    figures.insert("conn_flood_rss_mib".into(), json!(round(peak)));
}
