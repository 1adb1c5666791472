//! The routing mesh's programs, run in the kernel through BPF_PROG_TEST_RUN with maps programmed
//! by `Mesh::program` from a plan: verdicts and output bytes for every parser fixture cut at every
//! length (truncated headers, IPv4 options, fragments, VLAN tags, IPv6, TCP and UDP to published
//! and unpublished ports), rewrites with valid checksums that pick the backend the userspace
//! model picks, the way back, connection affinity across backend changes, and a service without
//! backends.
//!
//! Needs root (CAP_BPF); CI runs as root. Nothing is attached to any interface.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use shoal_abi::mesh::{self as abi, FlowKey, csum, flow_hash};
use shoal_abi::parse::Counter;
use shoal_abi::programs::{TC_MESH_ENTRY, TC_MESH_REPLY, XDP_MESH};
use shoal_abi::wire::{ETH_HLEN, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP};
use shoal_dataplane::bpf::XdpVerdict;
use shoal_dataplane::common::Mac;
use shoal_dataplane::mesh::Mesh;
use shoal_dataplane::mesh::maglev;
use shoal_dataplane::mesh::model::{
    BackendPlan, MeshPlan, PortPlan, Protocol, ServicePlan, TunnelPlan,
};
use support::packets;

/// `shoal0`'s index as the maps are told (nothing is attached in these tests).
const INGRESS_IFINDEX: u32 = 7;
const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const INGRESS_ADDR: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const TC_ACT_OK: i32 = 0;
const TC_ACT_REDIRECT: i32 = 7;

fn backend(last: u8) -> BackendPlan {
    let addr = Ipv4Addr::new(10, 255, 0, last);
    BackendPlan {
        addr,
        mac: Mac::from_ip(addr),
        task: format!("web.{last}"),
        weight: 1,
        local: last.is_multiple_of(2),
        vtep: None,
    }
}

fn service(
    ports: &[(Protocol, u16, u16)],
    backends: Vec<BackendPlan>,
    client_ip: bool,
) -> ServicePlan {
    ServicePlan {
        table_size: maglev::DEFAULT_TABLE_SIZE,
        ports: ports
            .iter()
            .map(|&(protocol, published, target)| PortPlan {
                protocol,
                published,
                target,
                host: false,
                client_ip,
            })
            .collect(),
        backends,
    }
}

/// web: 8080/tcp -> 80 and 53/udp -> 5353 over six backends; keep: 9090/tcp with the client's
/// address kept; empty: 7070/tcp without backends.
fn plan(web_backends: Vec<BackendPlan>) -> MeshPlan {
    let mut services = BTreeMap::new();
    services.insert(
        "web".to_owned(),
        service(
            &[(Protocol::Tcp, 8080, 80), (Protocol::Udp, 53, 5353)],
            web_backends,
            false,
        ),
    );
    services.insert(
        "keep".to_owned(),
        service(
            &[(Protocol::Tcp, 9090, 90)],
            vec![backend(31), backend(32)],
            true,
        ),
    );
    services.insert(
        "empty".to_owned(),
        service(&[(Protocol::Tcp, 7070, 70)], Vec::new(), false),
    );
    MeshPlan {
        network: "ingress".into(),
        subnet: "10.255.0.0/16".parse().expect("subnet"),
        addr: INGRESS_ADDR,
        mac: Mac::from_ip(INGRESS_ADDR),
        interfaces: Vec::new(),
        local_addrs: BTreeSet::from([NODE]),
        tunnel: None,
        services,
    }
}

fn six() -> Vec<BackendPlan> {
    (11..=16).map(backend).collect()
}

fn mesh(plan: &MeshPlan) -> Mesh {
    let mut mesh = Mesh::load().unwrap_or_else(|e| {
        panic!("loading the eBPF object failed ({e}); these tests need root (CAP_BPF)")
    });
    // `shoal0` takes native XDP redirects (the mesh attaches XDP_PASS to its peer).
    mesh.set_xdp_egress(BTreeSet::from([INGRESS_IFINDEX]))
        .expect("the egress map");
    mesh.program(plan, INGRESS_IFINDEX)
        .expect("programming the maps");
    mesh
}

/// The userspace model of a service's balancing: the backend it picks for a flow.
fn model(plan: &MeshPlan, service: &str) -> impl Fn(&FlowKey) -> Ipv4Addr {
    let s = plan.services[service].clone();
    let keys: Vec<String> = s.backends.iter().map(|b| b.addr.to_string()).collect();
    let input: Vec<maglev::Backend<'_>> = keys
        .iter()
        .zip(&s.backends)
        .map(|(k, b)| maglev::Backend {
            key: k,
            weight: b.weight,
        })
        .collect();
    let table = maglev::build(&input, s.table_size).expect("table");
    move |key| {
        let slot = maglev::lookup(&table, flow_hash(key)).expect("non-empty table");
        s.backends[slot as usize].addr
    }
}

/// TCP flags.
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
/// The client's initial sequence number in [`frame`]'s SYNs.
const CLIENT_ISN: u32 = 7;

/// A well-formed Ethernet/IPv4/TCP-or-UDP frame with correct checksums; TCP is a SYN with
/// sequence number [`CLIENT_ISN`].
fn frame(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    proto: u8,
    ip_options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    tcp_frame(src, dst, proto, (SYN, CLIENT_ISN, 0), ip_options, payload)
}

/// A backend's SYN-ACK to [`frame`]'s SYN (or a UDP datagram).
fn syn_ack(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), proto: u8, payload: &[u8]) -> Vec<u8> {
    tcp_frame(
        src,
        dst,
        proto,
        (SYN | ACK, 1000, CLIENT_ISN + 1),
        &[],
        payload,
    )
}

/// [`frame`] with the TCP flags, sequence and acknowledgement numbers given.
fn tcp_frame(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    proto: u8,
    (flags, seq, ack): (u8, u32, u32),
    ip_options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    if proto == IPPROTO_TCP {
        l4.extend_from_slice(&seq.to_be_bytes());
        l4.extend_from_slice(&ack.to_be_bytes());
        l4.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    let check_at = if proto == IPPROTO_TCP { 16 } else { 6 };
    let sum = l4_checksum(src.0, dst.0, proto, &l4);
    l4[check_at..check_at + 2].copy_from_slice(&sum.to_ne_bytes());

    let header_len = 20 + ip_options.len();
    let mut ip = vec![0x40 | (header_len / 4) as u8, 0];
    ip.extend_from_slice(&((header_len + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    ip.extend_from_slice(ip_options);
    let sum = csum::compute(&ip);
    ip[10..12].copy_from_slice(&sum.to_ne_bytes());

    let mut f = Vec::new();
    f.extend_from_slice(&NODE_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    f
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut data = Vec::new();
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&[0, proto]);
    data.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    data.extend_from_slice(l4);
    csum::compute(&data)
}

/// A frame's addresses, ports and MACs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    dmac: [u8; 6],
    smac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
}

/// Reads a frame built by [`frame`] (no VLAN), checking both checksums.
fn read(f: &[u8]) -> Seen {
    let ihl = usize::from(f[14] & 0x0f) * 4;
    assert_eq!(csum::compute(&f[14..14 + ihl]), 0, "IPv4 checksum");
    let ip = |at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
    let (src, dst) = (ip(26), ip(30));
    let l4 = &f[14 + ihl..];
    let proto = f[23];
    let check = if proto == IPPROTO_TCP { 16 } else { 6 };
    if !(proto == IPPROTO_UDP && l4[check..check + 2] == [0, 0]) {
        let mut zeroed = l4.to_vec();
        zeroed[check..check + 2].copy_from_slice(&[0, 0]);
        let expected = l4_checksum(src, dst, proto, &zeroed);
        let expected = if proto == IPPROTO_UDP && expected == 0 {
            0xffff
        } else {
            expected
        };
        assert_eq!(
            u16::from_ne_bytes([l4[check], l4[check + 1]]),
            expected,
            "L4 checksum"
        );
    }
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    Seen {
        dmac: f[0..6].try_into().expect("6 bytes"),
        smac: f[6..12].try_into().expect("6 bytes"),
        src: (src, port(0)),
        dst: (dst, port(2)),
    }
}

fn flow(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), proto: u8) -> FlowKey {
    FlowKey {
        saddr: abi::addr(src.0.octets()),
        daddr: abi::addr(dst.0.octets()),
        sport: abi::port(src.1),
        dport: abi::port(dst.1),
        proto,
        pad: [0; 3],
    }
}

fn client(i: u16) -> (Ipv4Addr, u16) {
    (Ipv4Addr::new(192, 168, 1, 10 + (i % 7) as u8), 20_000 + i)
}

#[test]
fn every_fixture_at_every_length_is_balanced_only_when_whole_ipv4_tcp_or_udp_to_a_published_port() {
    // The parser's fixtures go from 10.0.0.1 to 10.0.0.2 (this node), TCP to 8080 and UDP to 53:
    // both published here.
    let plan = plan(six());
    let mut mesh = mesh(&plan);
    let backends: BTreeSet<Ipv4Addr> = six().iter().map(|b| b.addr).collect();
    let mut redirected = 0;
    for fixture in packets::all() {
        let bytes = fixture.bytes();
        // The kernel refuses XDP test input shorter than an Ethernet header.
        for len in ETH_HLEN..=bytes.len() {
            let packet = &bytes[..len];
            let expected = fixture.expect(len);
            let balanced = matches!(expected.outcome, Counter::Tcp | Counter::Udp)
                && !expected.features.contains(&Counter::Vlan)
                && expected.features.contains(&Counter::Ipv4);
            let run = mesh
                .programs()
                .test_run(XDP_MESH, packet, 1)
                .unwrap_or_else(|e| panic!("{} cut at {len}: {e}", fixture.name));
            if balanced {
                assert_eq!(
                    run.verdict,
                    XdpVerdict::Redirect,
                    "{} cut at {len}",
                    fixture.name
                );
                let ihl = usize::from(run.output[14] & 0x0f) * 4;
                let dst = Ipv4Addr::new(
                    run.output[30],
                    run.output[31],
                    run.output[32],
                    run.output[33],
                );
                assert!(
                    backends.contains(&dst),
                    "{} cut at {len}: sent to {dst}",
                    fixture.name
                );
                assert_eq!(
                    run.output[26..30],
                    INGRESS_ADDR.octets(),
                    "{}: translated source",
                    fixture.name
                );
                let target =
                    u16::from_be_bytes([run.output[14 + ihl + 2], run.output[14 + ihl + 3]]);
                let proto = run.output[23];
                assert_eq!(
                    target,
                    if proto == IPPROTO_TCP { 80 } else { 5353 },
                    "{}",
                    fixture.name
                );
                assert_eq!(
                    run.output.len(),
                    packet.len(),
                    "{}: length kept",
                    fixture.name
                );
                redirected += 1;
            } else {
                assert_eq!(
                    run.verdict,
                    XdpVerdict::Pass,
                    "{} cut at {len}",
                    fixture.name
                );
                assert_eq!(
                    run.output, packet,
                    "{} cut at {len}: must pass untouched",
                    fixture.name
                );
            }
        }
    }
    assert!(redirected > 10, "only {redirected} packets were balanced");
}

#[test]
fn balanced_packets_have_valid_checksums_and_go_where_the_userspace_model_says() {
    let plan = plan(six());
    let mut mesh = mesh(&plan);
    let pick = model(&plan, "web");
    for i in 0..600 {
        for (proto, port, target) in [(IPPROTO_TCP, 8080, 80), (IPPROTO_UDP, 53, 5353)] {
            let src = client(i);
            let packet = frame(src, (NODE, port), proto, &[], b"hello mesh");
            let run = mesh.programs().test_run(XDP_MESH, &packet, 1).expect("run");
            assert_eq!(run.verdict, XdpVerdict::Redirect);
            let seen = read(&run.output);
            let expected = pick(&flow(src, (NODE, port), proto));
            assert_eq!(
                seen.dst,
                (expected, target),
                "flow {i}/{proto}: the kernel and the model disagree"
            );
            assert_eq!(seen.src.0, INGRESS_ADDR);
            assert!(seen.src.1 >= abi::NAT_PORT_MIN);
            assert_eq!(seen.dmac, Mac::from_ip(expected).0);
            assert_eq!(seen.smac, Mac::from_ip(INGRESS_ADDR).0);

            // The backend's reply, on its way back through shoal0.
            let reply = syn_ack((expected, target), seen.src, proto, b"hello client");
            let (code, out) = mesh
                .programs()
                .tc_test_run(TC_MESH_REPLY, &reply)
                .expect("reply run");
            assert_eq!(
                code, TC_ACT_REDIRECT,
                "flow {i}/{proto}: the reply must be translated"
            );
            let back = read(&out);
            assert_eq!(
                back.src,
                (NODE, port),
                "the reply comes from the address and port the client used"
            );
            assert_eq!(back.dst, src);
            assert_eq!(back.dmac, CLIENT_MAC);
            assert_eq!(back.smac, NODE_MAC);
        }
    }
    let status = mesh.status().expect("counters");
    assert_eq!(status["web"].stats.packets, 1200);
    assert_eq!(status["web"].stats.reply_packets, 1200);
    assert_eq!(status["web"].stats.connections, 1200);
    assert_eq!(status["web"].backends, 6);
    // Each published port counts its own connections, packets and replies.
    let ports: Vec<(String, u16, &str, [u64; 3])> = mesh
        .port_status()
        .expect("port counters")
        .into_iter()
        .map(|p| {
            let s = p.stats;
            (
                p.service,
                p.port,
                p.protocol,
                [s.connections, s.packets, s.reply_packets],
            )
        })
        .collect();
    for (port, protocol) in [(53, "udp"), (8080, "tcp")] {
        assert!(
            ports.contains(&("web".to_owned(), port, protocol, [600, 600, 600])),
            "{ports:?}"
        );
    }
    // Unrelated traffic on shoal0 is left alone.
    let other = frame(
        (Ipv4Addr::new(10, 255, 0, 11), 80),
        (INGRESS_ADDR, 999),
        IPPROTO_TCP,
        &[],
        b"",
    );
    let (code, out) = mesh
        .programs()
        .tc_test_run(TC_MESH_REPLY, &other)
        .expect("run");
    assert_eq!((code, out), (TC_ACT_OK, other));
}

#[test]
fn ipv4_options_are_balanced_and_a_zero_udp_checksum_stays_zero() {
    let plan = plan(six());
    let mut mesh = mesh(&plan);
    // Record route (7), length 7, pointer 4, one empty slot, then end of options.
    let options = [7, 7, 4, 0, 0, 0, 0, 0];
    let packet = frame(client(1), (NODE, 8080), IPPROTO_TCP, &options, b"x");
    let run = mesh.programs().test_run(XDP_MESH, &packet, 1).expect("run");
    assert_eq!(run.verdict, XdpVerdict::Redirect);
    let seen = read(&run.output);
    assert_eq!(seen.dst.1, 80);
    assert_eq!(run.output[34..42], options, "options are carried over");

    let mut packet = frame(client(2), (NODE, 53), IPPROTO_UDP, &[], b"query");
    packet[40..42].copy_from_slice(&[0, 0]);
    let run = mesh.programs().test_run(XDP_MESH, &packet, 1).expect("run");
    assert_eq!(run.verdict, XdpVerdict::Redirect);
    assert_eq!(run.output[40..42], [0, 0]);
    read(&run.output);
}

#[test]
fn unpublished_ports_other_addresses_and_empty_services_pass_to_the_stack() {
    let plan = plan(six());
    let mut mesh = mesh(&plan);
    let cases = [
        (
            "unpublished TCP port",
            frame(client(1), (NODE, 8081), IPPROTO_TCP, &[], b""),
        ),
        (
            "unpublished UDP port",
            frame(client(1), (NODE, 8080), IPPROTO_UDP, &[], b""),
        ),
        (
            "published port, another address",
            frame(
                client(1),
                (Ipv4Addr::new(10, 0, 0, 9), 8080),
                IPPROTO_TCP,
                &[],
                b"",
            ),
        ),
        (
            "service without backends",
            frame(client(1), (NODE, 7070), IPPROTO_TCP, &[], b""),
        ),
    ];
    for (what, packet) in cases {
        let run = mesh.programs().test_run(XDP_MESH, &packet, 1).expect("run");
        assert_eq!(run.verdict, XdpVerdict::Pass, "{what}");
        assert_eq!(run.output, packet, "{what}");
        // The TC entry behind XDP lets it go on too.
        let (verdict, out) = mesh
            .programs()
            .tc_test_run(TC_MESH_ENTRY, &packet)
            .expect("run");
        assert_eq!((verdict, out), (TC_ACT_OK, packet), "{what}");
    }
    // Counted once, by the TC entry.
    assert_eq!(mesh.status().expect("counters")["empty"].stats.refused, 1);
    let ports = mesh.port_status().expect("port counters");
    let empty = ports.iter().find(|p| p.service == "empty").expect("7070");
    assert_eq!((empty.port, empty.stats.refused), (7070, 1), "{ports:?}");
}

#[test]
fn client_ip_mode_keeps_the_source_and_translates_replies_by_client_flow() {
    let plan = plan(six());
    let mut mesh = mesh(&plan);
    let src = client(3);
    let packet = frame(src, (NODE, 9090), IPPROTO_TCP, &[], b"");
    let run = mesh.programs().test_run(XDP_MESH, &packet, 1).expect("run");
    assert_eq!(run.verdict, XdpVerdict::Redirect);
    let seen = read(&run.output);
    assert_eq!(
        seen.src, src,
        "the backend sees the client's own address and port"
    );
    assert_eq!(seen.dst.1, 90);
    let reply = syn_ack(seen.dst, src, IPPROTO_TCP, b"");
    let (code, out) = mesh
        .programs()
        .tc_test_run(TC_MESH_REPLY, &reply)
        .expect("run");
    assert_eq!(code, TC_ACT_REDIRECT);
    assert_eq!(read(&out).src, (NODE, 9090));
}

#[test]
fn connections_keep_their_backend_while_others_come_and_go_and_move_only_when_theirs_goes() {
    let first = plan(six());
    let mut mesh = mesh(&first);
    let backend_of = |mesh: &mut Mesh, i: u16| {
        let packet = frame(client(i), (NODE, 8080), IPPROTO_TCP, &[], b"");
        let run = mesh.programs().test_run(XDP_MESH, &packet, 1).expect("run");
        assert_eq!(run.verdict, XdpVerdict::Redirect);
        read(&run.output).dst.0
    };
    let before: Vec<Ipv4Addr> = (0..300).map(|i| backend_of(&mut mesh, i)).collect();

    // Add two backends and remove one (.13): only .13's connections move.
    let mut changed: Vec<BackendPlan> = six()
        .into_iter()
        .filter(|b| b.addr.octets()[3] != 13)
        .collect();
    changed.extend([backend(17), backend(18)]);
    let second = plan(changed);
    mesh.program(&second, INGRESS_IFINDEX)
        .expect("reprogramming");
    let pick = model(&second, "web");
    let removed = Ipv4Addr::new(10, 255, 0, 13);
    for (i, old) in before.iter().enumerate() {
        let now = backend_of(&mut mesh, i as u16);
        if *old == removed {
            assert_ne!(now, removed, "flow {i} still goes to the removed backend");
            let key = flow(client(i as u16), (NODE, 8080), IPPROTO_TCP);
            assert_eq!(
                now,
                pick(&key),
                "flow {i} re-balanced against the new table"
            );
        } else {
            assert_eq!(now, *old, "flow {i} lost its backend although it stayed");
        }
    }
    // New flows follow the new table.
    for i in 1000..1200 {
        let key = flow(client(i), (NODE, 8080), IPPROTO_TCP);
        assert_eq!(backend_of(&mut mesh, i), pick(&key));
    }
}

#[test]
fn an_unpublished_port_stops_at_once_and_a_changed_target_applies_to_existing_connections() {
    let first = plan(six());
    let mut mesh = mesh(&first);
    let to_keep = frame(client(4), (NODE, 9090), IPPROTO_TCP, &[], b"");
    let to_web = frame(client(4), (NODE, 8080), IPPROTO_TCP, &[], b"");
    for packet in [&to_keep, &to_web] {
        let run = mesh.programs().test_run(XDP_MESH, packet, 1).expect("run");
        assert_eq!(run.verdict, XdpVerdict::Redirect);
    }

    // `keep` goes away and web's TCP port now leads to 8000: the established flows follow.
    let mut second = plan(six());
    second.services.remove("keep");
    let web = second.services.get_mut("web").expect("web");
    web.ports[0].target = 8000;
    mesh.program(&second, INGRESS_IFINDEX)
        .expect("reprogramming");
    let run = mesh
        .programs()
        .test_run(XDP_MESH, &to_keep, 1)
        .expect("run");
    assert_eq!(
        run.verdict,
        XdpVerdict::Pass,
        "an unpublished port must not be forwarded"
    );
    assert_eq!(run.output, to_keep);
    let run = mesh.programs().test_run(XDP_MESH, &to_web, 1).expect("run");
    assert_eq!(run.verdict, XdpVerdict::Redirect);
    assert_eq!(read(&run.output).dst.1, 8000);
    // The gone port's counters went with it; web's kept theirs.
    let ports = mesh.port_status().expect("port counters");
    assert!(ports.iter().all(|p| p.service != "keep"), "{ports:?}");
    let web_tcp = ports
        .iter()
        .find(|p| (p.service.as_str(), p.port) == ("web", 8080))
        .expect("web's 8080");
    // Its first packet, and the re-balance under the new target.
    assert_eq!(web_tcp.stats.connections, 2, "{ports:?}");
    // Published again, `keep` counts from nothing (its slot was given back and zeroed).
    mesh.program(&first, INGRESS_IFINDEX)
        .expect("reprogramming");
    let keep = mesh.port_status().expect("port counters");
    let keep = keep
        .iter()
        .find(|p| p.service == "keep")
        .expect("keep again");
    assert_eq!(keep.stats.connections, 0);
}

/// A network namespace of its own for one test, removed on drop (also after a failure).
struct ScratchNetns {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl ScratchNetns {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("shoal-test-{name}-{}", std::process::id()));
        let file = shoal_dataplane::overlay::netns::create(&path).expect("a network namespace");
        Self { path, file }
    }

    /// Runs `ip ARGS` inside.
    fn ip(&self, args: &str) {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .arg("ip")
            .args(args.split_whitespace())
            .output()
            .expect("nsenter runs");
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        let _ = shoal_dataplane::overlay::netns::remove(&self.path);
    }
}

#[test]
fn a_remote_backend_gets_the_frame_encapsulated_in_vxlan_to_its_node() {
    let (ns, plan) = remote_backends();
    let (verdict, inner, out) = shoal_dataplane::overlay::netns::within(&ns.file, || {
        std::fs::write("/proc/sys/net/ipv4/conf/lo/forwarding", "1")?;
        let mut mesh = mesh(&plan);
        let data0 = nix::net::if_::if_nametoindex("data0").map_err(std::io::Error::from)?;
        mesh.set_xdp_egress(BTreeSet::from([INGRESS_IFINDEX, data0]))
            .expect("the egress map");
        let packet = frame(
            client(5),
            (NODE, 8080),
            IPPROTO_TCP,
            &[],
            b"through the tunnel",
        );
        let run = mesh.programs().test_run(XDP_MESH, &packet, 1).expect("run");
        let tunneled = mesh.status().expect("counters")["web"].stats.tunneled;
        assert_eq!(tunneled, 1);
        Ok((run.verdict, packet, run.output))
    })
    .expect("inside the namespace");
    assert_eq!(verdict, XdpVerdict::Redirect);
    assert_encapsulated(&inner, &out);
}

#[test]
fn the_tc_entry_encapsulates_as_xdp_does_where_the_data_interface_takes_no_xdp_frames() {
    let (ns, plan) = remote_backends();
    let (xdp, tc, inner, out) = shoal_dataplane::overlay::netns::within(&ns.file, || {
        std::fs::write("/proc/sys/net/ipv4/conf/lo/forwarding", "1")?;
        // data0 is not listed: it takes no XDP frames.
        let mut mesh = mesh(&plan);
        let packet = frame(client(6), (NODE, 8080), IPPROTO_TCP, &[], b"by tc");
        let run = mesh.programs().test_run(XDP_MESH, &packet, 1).expect("run");
        let (tc, out) = mesh
            .programs()
            .tc_test_run(TC_MESH_ENTRY, &packet)
            .expect("run");
        let web = mesh.status().expect("counters")["web"].stats;
        assert_eq!(
            (web.egress_handoffs, web.tunneled, web.tc_packets),
            (1, 1, 1)
        );
        Ok((run.verdict, tc, packet, out))
    })
    .expect("inside the namespace");
    assert_eq!(xdp, XdpVerdict::Pass);
    assert_eq!(tc, TC_ACT_REDIRECT);
    assert_encapsulated(&inner, &out);
}

/// A namespace where the backends' node (192.0.2.2) is reachable on `data0` with a known
/// next-hop MAC, and a plan whose backends all run there.
fn remote_backends() -> (ScratchNetns, MeshPlan) {
    let ns = ScratchNetns::new("encap");
    ns.ip("link set lo up");
    ns.ip("link add data0 type veth peer name data1");
    ns.ip("link set data0 address 02:00:00:00:da:01");
    ns.ip("addr add 192.0.2.1/24 dev data0");
    ns.ip("link set data0 up");
    ns.ip("link set data1 up");
    ns.ip("neigh add 192.0.2.2 lladdr 02:00:00:00:da:02 dev data0 nud permanent");
    let vtep = Ipv4Addr::new(192, 0, 2, 2);
    let remote: Vec<BackendPlan> = (11..=16)
        .map(|last| BackendPlan {
            vtep: Some(vtep),
            local: false,
            ..backend(last)
        })
        .collect();
    let mut plan = plan(remote);
    plan.tunnel = Some(TunnelPlan {
        local: Ipv4Addr::new(192, 0, 2, 1),
        port: 4789,
        vni: 0x01_02_03,
    });
    (ns, plan)
}

/// `out` is `inner`, rewritten, in VXLAN from 192.0.2.1 to 192.0.2.2 (VNI 0x010203).
fn assert_encapsulated(inner: &[u8], out: &[u8]) {
    assert_eq!(out.len(), inner.len() + abi::TUNNEL_OVERHEAD);
    // Outer Ethernet: to the next hop, from data0, IPv4.
    assert_eq!(out[0..6], [2, 0, 0, 0, 0xda, 2]);
    assert_eq!(out[6..12], [2, 0, 0, 0, 0xda, 1]);
    assert_eq!(out[12..14], [0x08, 0x00]);
    // Outer IPv4: valid checksum, UDP, from this node's data address to the backend's node.
    assert_eq!(csum::compute(&out[14..34]), 0, "outer IPv4 checksum");
    assert_eq!(out[14], 0x45);
    assert_eq!(
        u16::from_be_bytes([out[16], out[17]]) as usize,
        out.len() - 14
    );
    assert_eq!(out[23], IPPROTO_UDP);
    assert_eq!(out[26..30], [192, 0, 2, 1]);
    assert_eq!(out[30..34], [192, 0, 2, 2]);
    // UDP to 4789 from the ephemeral range, length, no checksum; VXLAN with the I flag and VNI.
    assert!(u16::from_be_bytes([out[34], out[35]]) >= 49_152);
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 4789);
    assert_eq!(
        u16::from_be_bytes([out[38], out[39]]) as usize,
        out.len() - 34
    );
    assert_eq!(out[40..42], [0, 0]);
    assert_eq!(out[42..50], [0x08, 0, 0, 0, 0x01, 0x02, 0x03, 0]);
    // Inside: the frame as the bridge path would have carried it.
    let seen = read(&out[abi::TUNNEL_OVERHEAD..]);
    assert_eq!(seen.src.0, INGRESS_ADDR);
    assert_eq!(seen.dst.1, 80);
    assert_eq!(seen.dmac, Mac::from_ip(seen.dst.0).0);
    assert_eq!(seen.smac, Mac::from_ip(INGRESS_ADDR).0);
}

#[test]
fn a_drained_backend_keeps_its_connections_and_gets_no_new_ones() {
    let first = plan(six());
    let mut mesh = mesh(&first);
    let drained = Ipv4Addr::new(10, 255, 0, 13);
    let to = |i: u16| frame(client(i), (NODE, 8080), IPPROTO_TCP, &[], b"");
    let mut on_drained = Vec::new();
    for i in 0..300 {
        let run = mesh.programs().test_run(XDP_MESH, &to(i), 1).expect("run");
        if read(&run.output).dst.0 == drained {
            on_drained.push(i);
        }
    }
    assert!(!on_drained.is_empty());

    let second = plan(
        six()
            .into_iter()
            .map(|b| BackendPlan {
                weight: if b.addr == drained { 0 } else { 1 },
                ..b
            })
            .collect(),
    );
    mesh.program(&second, INGRESS_IFINDEX)
        .expect("reprogramming");
    for &i in &on_drained {
        let run = mesh.programs().test_run(XDP_MESH, &to(i), 1).expect("run");
        assert_eq!(
            read(&run.output).dst.0,
            drained,
            "flow {i} left the drained backend"
        );
    }
    for i in 1000..1300 {
        let run = mesh.programs().test_run(XDP_MESH, &to(i), 1).expect("run");
        assert_ne!(
            read(&run.output).dst.0,
            drained,
            "new flow {i} sent to a drained backend"
        );
    }
}

const FIN: u8 = 0x01;
const RST: u8 = 0x04;

/// The flow `key` as the programs keep it, and whether it is established.
fn kept(mesh: &mut Mesh, key: &FlowKey) -> Option<(abi::Conn, bool)> {
    mesh.flows()
        .expect("the flows")
        .into_iter()
        .find(|f| f.key == *key)
        .map(|f| (f.conn, f.established))
}

/// Sends `packet` through the entry program; its verdict and output.
fn entry(mesh: &mut Mesh, packet: &[u8]) -> (XdpVerdict, Vec<u8>) {
    let run = mesh.programs().test_run(XDP_MESH, packet, 1).expect("run");
    (run.verdict, run.output)
}

/// Sends a backend's packet through the way back; its TC verdict and output.
fn way_back(mesh: &mut Mesh, packet: &[u8]) -> (i32, Vec<u8>) {
    mesh.programs()
        .tc_test_run(TC_MESH_REPLY, packet)
        .expect("reply run")
}

#[test]
fn only_a_syn_opens_a_tcp_flow_and_a_flow_lives_by_its_state() {
    let plan = plan(six());
    let mut mesh = mesh(&plan);
    let src = client(1);
    let key = flow(src, (NODE, 8080), IPPROTO_TCP);
    // An ACK of no flow: left to the stack by XDP and by the TC entry behind it (which counts
    // it), no state kept.
    let ack = tcp_frame(src, (NODE, 8080), IPPROTO_TCP, (ACK, 100, 1), &[], b"");
    assert_eq!(entry(&mut mesh, &ack).0, XdpVerdict::Pass);
    let (code, _) = mesh
        .programs()
        .tc_test_run(TC_MESH_ENTRY, &ack)
        .expect("entry run");
    assert_eq!(code, TC_ACT_OK);
    assert_eq!(kept(&mut mesh, &key), None);
    assert_eq!(mesh.status().expect("counters")["web"].stats.untracked, 1);

    // SYN, SYN-ACK, ACK: a handshake, then an established flow with a 5-day expiry.
    let (verdict, out) = entry(&mut mesh, &frame(src, (NODE, 8080), IPPROTO_TCP, &[], b""));
    assert_eq!(verdict, XdpVerdict::Redirect);
    let seen = read(&out);
    let (conn, established) = kept(&mut mesh, &key).expect("the flow");
    assert_eq!((conn.state, established), (abi::state::TCP_SYN_SENT, false));
    let (code, _) = way_back(&mut mesh, &syn_ack(seen.dst, seen.src, IPPROTO_TCP, b""));
    assert_eq!(code, TC_ACT_REDIRECT);
    assert_eq!(
        kept(&mut mesh, &key).expect("the flow").0.state,
        abi::state::TCP_SYN_RECV
    );
    let (verdict, _) = entry(
        &mut mesh,
        &tcp_frame(src, (NODE, 8080), IPPROTO_TCP, (ACK, 8, 1001), &[], b""),
    );
    assert_eq!(verdict, XdpVerdict::Redirect);
    let (conn, established) = kept(&mut mesh, &key).expect("the flow");
    assert_eq!(
        (conn.state, established),
        (abi::state::TCP_ESTABLISHED, true)
    );
    let timeouts = abi::Timeouts::DEFAULT;
    assert!(conn.expires - conn.born >= timeouts.tcp_established - 1);

    // FIN from each side: closed, expiring within the closed timeout.
    entry(
        &mut mesh,
        &tcp_frame(
            src,
            (NODE, 8080),
            IPPROTO_TCP,
            (FIN | ACK, 8, 1001),
            &[],
            b"",
        ),
    );
    assert_eq!(
        kept(&mut mesh, &key).expect("the flow").0.state,
        abi::state::TCP_CLOSING
    );
    way_back(
        &mut mesh,
        &tcp_frame(
            seen.dst,
            seen.src,
            IPPROTO_TCP,
            (FIN | ACK, 1001, 9),
            &[],
            b"",
        ),
    );
    let (conn, _) = kept(&mut mesh, &key).expect("the flow");
    assert_eq!(conn.state, abi::state::TCP_CLOSED);
    assert!(conn.expires <= conn.born + timeouts.tcp_closed + 1);

    // Once closed flows expire at once, the flow and its way back are both gone, and the same
    // tuple's next SYN is a new flow.
    mesh.set_timeouts(abi::Timeouts {
        tcp_closed: 0,
        ..timeouts
    })
    .expect("timeouts");
    entry(
        &mut mesh,
        &tcp_frame(src, (NODE, 8080), IPPROTO_TCP, (RST, 9, 0), &[], b""),
    );
    assert!(mesh.collect_expired().expect("collected") >= 1);
    assert_eq!(kept(&mut mesh, &key), None);
    let (code, _) = way_back(
        &mut mesh,
        &tcp_frame(seen.dst, seen.src, IPPROTO_TCP, (ACK, 1001, 9), &[], b""),
    );
    assert_eq!(code, TC_ACT_OK, "a closed flow's way back is gone with it");
    let (verdict, _) = entry(&mut mesh, &frame(src, (NODE, 8080), IPPROTO_TCP, &[], b""));
    assert_eq!(verdict, XdpVerdict::Redirect);
    assert_eq!(
        kept(&mut mesh, &key).map(|(c, e)| (c.state, e)),
        Some((abi::state::TCP_SYN_SENT, false))
    );
}

/// A handshake that ends before it completes (a client's FIN or RST after its SYN, a backend's
/// reset) is closed where it is: it never takes room in the established maps, which nothing
/// evicts. A new SYN on a closed flow's tuple starts a new flow, whose SYN-ACK must acknowledge
/// the new SYN. A new flow whose way back is gone (evicted, or claimed by another flow) is gone.
#[test]
fn a_handshake_that_ends_early_is_never_established_and_its_tuple_opens_again() {
    let plan = plan(six());
    let mut mesh = mesh(&plan);
    let established = |mesh: &mut Mesh| {
        mesh.flows()
            .expect("the flows")
            .iter()
            .filter(|f| f.established)
            .count()
    };
    // SYN then FIN, SYN then RST (what a blind flood can send): closed, with the new ones.
    for (i, end) in [(3, FIN), (4, RST)] {
        let src = client(i);
        let key = flow(src, (NODE, 8080), IPPROTO_TCP);
        entry(&mut mesh, &frame(src, (NODE, 8080), IPPROTO_TCP, &[], b""));
        let (verdict, _) = entry(
            &mut mesh,
            &tcp_frame(src, (NODE, 8080), IPPROTO_TCP, (end, 8, 0), &[], b""),
        );
        assert_eq!(verdict, XdpVerdict::Redirect, "the backend hears of it");
        assert_eq!(
            kept(&mut mesh, &key).map(|(c, e)| (c.state, e)),
            Some((abi::state::TCP_CLOSED, false))
        );
    }
    assert_eq!(established(&mut mesh), 0);

    // The same tuple's next SYN: a new flow, following the new sequence number.
    let src = client(3);
    let key = flow(src, (NODE, 8080), IPPROTO_TCP);
    let (verdict, out) = entry(
        &mut mesh,
        &tcp_frame(src, (NODE, 8080), IPPROTO_TCP, (SYN, 500, 0), &[], b""),
    );
    assert_eq!(verdict, XdpVerdict::Redirect);
    let (conn, established_now) = kept(&mut mesh, &key).expect("a new flow");
    assert_eq!(
        (conn.state, conn.isn, established_now),
        (abi::state::TCP_SYN_SENT, 500, false)
    );
    // The backend refuses it: its reset (acknowledging this SYN) reaches the client, and the
    // flow is closed.
    let seen = read(&out);
    let (code, out) = way_back(
        &mut mesh,
        &tcp_frame(
            seen.dst,
            seen.src,
            IPPROTO_TCP,
            (RST | ACK, 0, 501),
            &[],
            b"",
        ),
    );
    assert_eq!(code, TC_ACT_REDIRECT, "the backend's reset is delivered");
    assert_eq!(read(&out).dst, src);
    assert_eq!(
        kept(&mut mesh, &key).map(|(c, e)| (c.state, e)),
        Some((abi::state::TCP_CLOSED, false))
    );

    // A handshake whose way back went: its next packet is the stack's, and it is forgotten.
    let src = client(5);
    let key = flow(src, (NODE, 8080), IPPROTO_TCP);
    let (_, out) = entry(&mut mesh, &frame(src, (NODE, 8080), IPPROTO_TCP, &[], b""));
    let seen = read(&out);
    let back = flow(seen.dst, seen.src, IPPROTO_TCP);
    {
        let map = mesh
            .programs()
            .ebpf_mut()
            .map_mut(abi::REPLIES_NEW_MAP)
            .expect("the map");
        let mut replies: aya::maps::HashMap<_, FlowKey, abi::Rewrite> =
            aya::maps::HashMap::try_from(map).expect("a hash map");
        replies.remove(&back).expect("the way back was there");
    }
    let (verdict, _) = entry(
        &mut mesh,
        &tcp_frame(src, (NODE, 8080), IPPROTO_TCP, (ACK, 8, 1001), &[], b""),
    );
    assert_eq!(verdict, XdpVerdict::Pass);
    assert_eq!(kept(&mut mesh, &key), None);
    assert_eq!(established(&mut mesh), 0);
}

#[test]
fn a_udp_flow_becomes_a_stream_when_both_sides_speak() {
    let plan = plan(six());
    let mut mesh = mesh(&plan);
    let src = client(2);
    let key = flow(src, (NODE, 53), IPPROTO_UDP);
    let (_, out) = entry(
        &mut mesh,
        &frame(src, (NODE, 53), IPPROTO_UDP, &[], b"query"),
    );
    let seen = read(&out);
    assert_eq!(
        kept(&mut mesh, &key).expect("flow").0.state,
        abi::state::UDP_NEW
    );
    way_back(
        &mut mesh,
        &syn_ack(seen.dst, seen.src, IPPROTO_UDP, b"answer"),
    );
    assert_eq!(
        kept(&mut mesh, &key).expect("flow").0.state,
        abi::state::UDP_REPLIED
    );
    entry(
        &mut mesh,
        &frame(src, (NODE, 53), IPPROTO_UDP, &[], b"more"),
    );
    let (conn, established) = kept(&mut mesh, &key).expect("flow");
    assert_eq!((conn.state, established), (abi::state::UDP_STREAM, true));
}

/// A one-backend service flooded with spoofed SYNs from more sources than it has translated
/// ports: with handshakes that never yield, exhaustion is counted; with the default (a
/// handshake yields its port when every candidate is held) a real client is served at once,
/// and a backend's packet of a flood flow whose port the client took never reaches the client.
#[test]
fn a_syn_flood_cannot_starve_a_service_nor_send_a_reply_to_the_wrong_client() {
    let one = vec![backend(11)];
    let plan = plan(one);
    let mut mesh = mesh(&plan);
    mesh.set_timeouts(abi::Timeouts {
        takeover: 3_600,
        ..abi::Timeouts::DEFAULT
    })
    .expect("timeouts");
    let spoofed = |i: u32| {
        let [a, b, c, d] = (0x0b00_0000 + i).to_be_bytes();
        (Ipv4Addr::new(a, b, c, d), 1024 + (i % 60_000) as u16)
    };
    // 70,000 handshakes against 64,512 ports: the last ones find every candidate held.
    for i in 0..70_000 {
        entry(
            &mut mesh,
            &frame(spoofed(i), (NODE, 8080), IPPROTO_TCP, &[], b""),
        );
    }
    let stats = mesh.status().expect("counters")["web"].stats;
    assert!(stats.dropped > 0, "port exhaustion is counted: {stats:?}");
    assert!(
        stats.connections >= 55_000,
        "most ports are used: {stats:?}"
    );

    // The flood's handshakes yield their ports: a real client is served at once.
    mesh.set_timeouts(abi::Timeouts::DEFAULT).expect("timeouts");
    let real = (Ipv4Addr::new(192, 168, 7, 7), 40_000);
    let real_isn = 5_000;
    let (verdict, out) = entry(
        &mut mesh,
        &tcp_frame(
            real,
            (NODE, 8080),
            IPPROTO_TCP,
            (SYN, real_isn, 0),
            &[],
            b"",
        ),
    );
    assert_eq!(verdict, XdpVerdict::Redirect, "the real client is balanced");
    let seen = read(&out);
    let stats = mesh.status().expect("counters")["web"].stats;
    assert!(stats.taken_over >= 1, "{stats:?}");

    // The port's earlier holder (a flood flow, its SYN acknowledged with the flood's sequence
    // number) answers late: the packet is not delivered (the stack resets it).
    let stale = tcp_frame(
        seen.dst,
        seen.src,
        IPPROTO_TCP,
        (SYN | ACK, 9_999, CLIENT_ISN + 1),
        &[],
        b"",
    );
    let (code, out) = way_back(&mut mesh, &stale);
    assert_eq!(
        (code, out),
        (TC_ACT_OK, stale),
        "a stale answer reaches no client"
    );
    assert!(mesh.status().expect("counters")["web"].stats.stale >= 1);
    // The real client's own SYN-ACK goes to it.
    let own = tcp_frame(
        seen.dst,
        seen.src,
        IPPROTO_TCP,
        (SYN | ACK, 777, real_isn + 1),
        &[],
        b"",
    );
    let (code, out) = way_back(&mut mesh, &own);
    assert_eq!(code, TC_ACT_REDIRECT);
    assert_eq!(read(&out).dst, real);
}

/// A UDP datagram to a published port that answers a socket of the node itself (connected to
/// its sender) is the node's, not the mesh's.
#[test]
fn replies_to_the_node_s_own_udp_sockets_are_not_captured() {
    let ns = ScratchNetns::new("own-udp");
    ns.ip("link set lo up");
    ns.ip(&format!("addr add {NODE}/32 dev lo"));
    ns.ip("route add 192.168.1.0/24 dev lo");
    let peer = client(3);
    let (own, other) = shoal_dataplane::overlay::netns::within(&ns.file, || {
        let mut mesh = mesh(&plan(six()));
        // The node's own resolver socket, on the published port 53, talking to `peer`.
        let socket = std::net::UdpSocket::bind((NODE, 53))?;
        socket.connect(peer)?;
        let own = entry(
            &mut mesh,
            &frame(peer, (NODE, 53), IPPROTO_UDP, &[], b"answer"),
        )
        .0;
        // Another sender on the same port is a client of the service.
        let other = entry(
            &mut mesh,
            &frame(client(4), (NODE, 53), IPPROTO_UDP, &[], b"query"),
        )
        .0;
        Ok((own, other))
    })
    .expect("inside the namespace");
    assert_eq!(own, XdpVerdict::Pass);
    assert_eq!(other, XdpVerdict::Redirect);
}

/// A frame whose L4 checksum was left to offload, as a local sender's arrives on a veth: the
/// field holds the folded pseudo-header sum.
fn partial(mut f: Vec<u8>) -> Vec<u8> {
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let proto = f[23];
    let l4_len = (f.len() - 14 - ihl) as u16;
    let addr = |at: usize| u32::from_ne_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
    let sum = csum::pseudo_header(addr(26), addr(30), proto, l4_len);
    let check = 14 + ihl + if proto == IPPROTO_TCP { 16 } else { 6 };
    f[check..check + 2].copy_from_slice(&sum.to_ne_bytes());
    f
}

#[test]
fn a_checksum_left_to_offload_is_not_redirected_by_xdp_but_by_the_tc_entry() {
    let plan = plan(six());
    let mut mesh = mesh(&plan);
    let pick = model(&plan, "web");
    for (i, proto, port) in [(1, IPPROTO_TCP, 8080), (2, IPPROTO_UDP, 53)] {
        let packet = partial(frame(
            client(i),
            (NODE, port),
            proto,
            &[],
            b"left to offload",
        ));
        let run = mesh.programs().test_run(XDP_MESH, &packet, 1).expect("run");
        assert_eq!(run.verdict, XdpVerdict::Pass);
        assert_eq!(run.output, packet, "passed on untouched");
        let (verdict, out) = mesh
            .programs()
            .tc_test_run(TC_MESH_ENTRY, &packet)
            .expect("run");
        assert_eq!(verdict, TC_ACT_REDIRECT);
        // Rewritten towards the model's backend (the checksum helpers' handling of a partial
        // checksum needs a real skb: the lab tests cover it).
        let dst = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
        assert_eq!(dst, pick(&flow(client(i), (NODE, port), proto)));
        assert_eq!(out[26..30], INGRESS_ADDR.octets());
    }
    let web = mesh.status().expect("counters")["web"].stats;
    assert_eq!(
        (web.checksum_handoffs, web.tc_packets, web.packets),
        (2, 2, 2)
    );
    // A complete checksum is redirected by XDP itself.
    let packet = frame(client(3), (NODE, 8080), IPPROTO_TCP, &[], b"complete");
    let run = mesh.programs().test_run(XDP_MESH, &packet, 1).expect("run");
    assert_eq!(run.verdict, XdpVerdict::Redirect);
}

#[test]
fn a_connection_whose_egress_takes_no_xdp_frames_is_balanced_by_the_tc_entry() {
    let plan = plan(six());
    let mut mesh = mesh(&plan);
    // Nothing takes XDP frames: every connection's packets are left to TC.
    mesh.set_xdp_egress(BTreeSet::new())
        .expect("the egress map");
    mesh.program(&plan, INGRESS_IFINDEX).expect("programming");
    let pick = model(&plan, "web");
    for i in 0..20 {
        let (proto, port, target) = if i % 2 == 0 {
            (IPPROTO_TCP, 8080, 80)
        } else {
            (IPPROTO_UDP, 53, 5353)
        };
        let packet = frame(client(i), (NODE, port), proto, &[], b"hello");
        let run = mesh.programs().test_run(XDP_MESH, &packet, 1).expect("run");
        assert_eq!(run.verdict, XdpVerdict::Pass);
        assert_eq!(run.output, packet);
        let (verdict, out) = mesh
            .programs()
            .tc_test_run(TC_MESH_ENTRY, &packet)
            .expect("run");
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let seen = read(&out);
        assert_eq!(seen.dst.0, pick(&flow(client(i), (NODE, port), proto)));
        assert_eq!(seen.dst.1, target);
        assert_eq!(seen.src.0, INGRESS_ADDR);
        assert_eq!(seen.dmac, Mac::from_ip(seen.dst.0).0);
        assert_eq!(seen.smac, Mac::from_ip(INGRESS_ADDR).0);
    }
    let web = mesh.status().expect("counters")["web"].stats;
    assert_eq!((web.egress_handoffs, web.tc_packets), (20, 20));
}
