//! The overlay planner and the desired-state validation: pure, no root needed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use proptest::prelude::*;
use shoal_dataplane::common::{Host, HostInterface, Mac};
use shoal_dataplane::node::{DesiredState, Resolved};
use shoal_dataplane::overlay::layout::{
    AttachSpec, NetDevice, NetLayout, Tunnel, TunnelState, WayOutLayout,
};
use shoal_dataplane::overlay::{Key, Layout, Observed, plan};

fn host() -> Host {
    Host {
        cpus: vec![0, 1],
        interfaces: vec![
            HostInterface {
                name: "lo".into(),
                mtu: 65536,
                addrs: vec![Ipv4Addr::LOCALHOST],
            },
            HostInterface {
                name: "eth0".into(),
                mtu: 1500,
                addrs: vec![Ipv4Addr::new(172, 20, 1, 11)],
            },
            HostInterface {
                name: "eth1".into(),
                mtu: 1500,
                addrs: vec![Ipv4Addr::new(172, 21, 1, 11)],
            },
        ],
    }
}

fn key(seed: u8) -> Key {
    Key([seed; 32])
}

/// Three nodes' worth of state seen from n1: a plain and an encrypted network, a local task on
/// each, a remote task on each.
fn state() -> serde_json::Value {
    serde_json::json!({
        "node": "n1",
        "data_path": { "addr": "eth1" },
        "wireguard": { "private_key": key(1).to_string() },
        "networks": [
            { "id": "plain", "vni": 4096, "subnet": "10.10.0.0/24" },
            { "id": "secret", "vni": 4097, "subnet": "10.20.0.0/24", "encrypted": true }
        ],
        "attachments": [
            { "task": "t1", "netns": "/run/netns/t1", "network": "plain", "ip": "10.10.0.2" },
            { "task": "t1", "netns": "/run/netns/t1", "network": "secret", "ip": "10.20.0.2", "interface": "eth1" }
        ],
        "endpoints": [
            { "network": "plain", "ip": "10.10.0.3", "node": "n2" },
            { "network": "secret", "ip": "10.20.0.3", "node": "n2", "mac": "02:00:00:00:00:03" }
        ],
        "peers": [
            { "node": "n2", "data_path_addr": "172.21.1.12", "public_key": key(2).public().to_string() },
            { "node": "n3", "data_path_addr": "172.21.1.13", "public_key": key(3).public().to_string() }
        ]
    })
}

fn resolve(value: serde_json::Value) -> Result<Resolved, Vec<(String, String)>> {
    let state = DesiredState::from_json(&value.to_string()).map_err(|e| {
        e.problems
            .into_iter()
            .map(|p| (p.field, p.message))
            .collect::<Vec<_>>()
    })?;
    state.resolve(&host()).map_err(|e| {
        e.problems
            .into_iter()
            .map(|p| (p.field, p.message))
            .collect()
    })
}

#[test]
fn a_valid_state_resolves_to_the_layout_it_describes() {
    let r = resolve(state()).unwrap();
    let data = Ipv4Addr::new(172, 21, 1, 11);
    assert_eq!(r.data_path_addr, data);
    assert_eq!(
        r.layout.tunnel,
        Some(Tunnel {
            addr: data,
            mtu: 1440,
            port: 51820
        })
    );

    let plain = &r.layout.networks["plain"];
    assert_eq!(plain.device.mtu, 1450, "VXLAN takes 50 bytes");
    assert_eq!(plain.device.port, 4789);
    assert_eq!(
        plain.device.gateway,
        "10.10.0.1/24".parse::<Ipv4Net>().unwrap(),
        "first host by default"
    );
    assert!(!plain.device.encrypted);
    let secret = &r.layout.networks["secret"];
    assert_eq!(secret.device.mtu, 1390, "VXLAN 50 and WireGuard 60 more");

    let remote = Ipv4Addr::new(10, 10, 0, 3);
    let docker_mac = Mac([0x02, 0x42, 10, 10, 0, 3]);
    assert_eq!(plain.neigh, BTreeSet::from([(remote, docker_mac)]));
    assert_eq!(
        plain.fdb,
        BTreeSet::from([(docker_mac, Ipv4Addr::new(172, 21, 1, 12))])
    );

    let (veth, spec) = plain.attachments.iter().next().unwrap();
    assert!(veth.starts_with("vt") && veth.len() == 14, "{veth}");
    assert_eq!(spec.interface, "eth0");
    assert_eq!(spec.mtu, 1450);
    assert_eq!(
        secret.attachments.values().next().unwrap().interface,
        "eth1"
    );

    let wg = r.wireguard.unwrap();
    assert_eq!(wg.port, 51820);
    assert_eq!(wg.local, data);
    assert_eq!(wg.peers.len(), 2);
    assert_eq!(wg.peers["n2"].public_key, key(2).public());
}

#[test]
fn a_peer_may_send_only_into_the_encrypted_networks_it_has_endpoints_on() {
    let wg = resolve(state()).unwrap().wireguard.unwrap();
    assert_eq!(wg.vxlan_port, 4789);
    assert_eq!(
        wg.peers["n2"].vnis,
        BTreeSet::from([4097]),
        "n2 has a task on secret (and one on plain, which does not travel in WireGuard)"
    );
    assert!(wg.peers["n3"].vnis.is_empty(), "n3 has no task anywhere");
}

#[test]
fn plain_vxlan_is_accepted_from_the_usable_peers_when_a_network_is_plain() {
    let filter = resolve(state()).unwrap().vxlan_filter.unwrap();
    assert_eq!(filter.port, 4789);
    assert_eq!(
        filter.peers,
        BTreeSet::from([Ipv4Addr::new(172, 21, 1, 12), Ipv4Addr::new(172, 21, 1, 13)])
    );
    // A peer left out is not let in.
    let mut s = state();
    s["peers"][1]["data_path_addr"] = "172.21.1.11".into();
    let filter = resolve(s).unwrap().vxlan_filter.unwrap();
    assert_eq!(
        filter.peers,
        BTreeSet::from([Ipv4Addr::new(172, 21, 1, 12)])
    );
    // With every network encrypted there is no plain VXLAN to filter.
    let mut s = state();
    s["networks"][0]["encrypted"] = true.into();
    assert_eq!(resolve(s).unwrap().vxlan_filter, None);
}

#[test]
fn a_state_without_encrypted_networks_needs_no_tunnel_nor_key() {
    let mut s = state();
    s["networks"][1]["encrypted"] = false.into();
    s.as_object_mut().unwrap().remove("wireguard");
    let r = resolve(s).unwrap();
    assert_eq!(r.layout.tunnel, None);
    assert_eq!(r.wireguard, None);
    assert_eq!(r.layout.networks["secret"].device.mtu, 1450);
}

/// Applies `edit` to the valid state and returns the fields the problems name.
fn problems(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<(String, String)> {
    let mut s = state();
    edit(&mut s);
    resolve(s).expect_err("the edited state must be refused")
}

fn assert_names(problems: &[(String, String)], field: &str, words: &str) {
    assert!(
        problems
            .iter()
            .any(|(f, m)| f == field && m.contains(words)),
        "expected a problem with {field} saying {words:?}, got {problems:#?}"
    );
}

#[test]
fn bad_input_is_refused_naming_the_field() {
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "networks[1].subnet",
            "overlaps",
            Box::new(|s| s["networks"][1]["subnet"] = "10.10.0.128/25".into()),
        ),
        (
            "networks[1].vni",
            "already used",
            Box::new(|s| s["networks"][1]["vni"] = 4096.into()),
        ),
        (
            "networks[0].vni",
            "not a VNI",
            Box::new(|s| s["networks"][0]["vni"] = 0.into()),
        ),
        (
            "networks[0].subnet",
            "host bits",
            Box::new(|s| s["networks"][0]["subnet"] = "10.10.0.1/24".into()),
        ),
        (
            "networks[0].gateway",
            "not a host address",
            Box::new(|s| s["networks"][0]["gateway"] = "10.99.0.1".into()),
        ),
        (
            "networks[0].mtu",
            "does not fit",
            Box::new(|s| s["networks"][0]["mtu"] = 1451.into()),
        ),
        (
            "networks[1].mtu",
            "encrypted",
            Box::new(|s| s["networks"][1]["mtu"] = 1400.into()),
        ),
        (
            "networks[0].id",
            "not a network ID",
            Box::new(|s| s["networks"][0]["id"] = "a/b".into()),
        ),
        (
            "attachments[0].ip",
            "outside the network's subnet",
            Box::new(|s| s["attachments"][0]["ip"] = "10.20.0.9".into()),
        ),
        (
            "attachments[0].ip",
            "gateway",
            Box::new(|s| s["attachments"][0]["ip"] = "10.10.0.1".into()),
        ),
        (
            "endpoints[0].ip",
            "already used by attachments[0]",
            Box::new(|s| s["endpoints"][0]["ip"] = "10.10.0.2".into()),
        ),
        (
            "attachments[0].mac",
            "not a MAC",
            Box::new(|s| s["attachments"][0]["mac"] = "02:42".into()),
        ),
        (
            "attachments[0].network",
            "no network",
            Box::new(|s| s["attachments"][0]["network"] = "nope".into()),
        ),
        (
            "attachments[1].interface",
            "already used",
            Box::new(|s| s["attachments"][1]["interface"] = "eth0".into()),
        ),
        (
            "attachments[0].netns",
            "absolute",
            Box::new(|s| s["attachments"][0]["netns"] = "t1".into()),
        ),
        (
            "wireguard.private_key",
            "not a WireGuard key",
            Box::new(|s| s["wireguard"]["private_key"] = "c2hvcnQ=".into()),
        ),
        (
            "wireguard.private_key",
            "needs a WireGuard private key",
            Box::new(|s| {
                s.as_object_mut().unwrap().remove("wireguard");
            }),
        ),
        (
            "endpoints[0].node",
            "no node",
            Box::new(|s| s["endpoints"][0]["node"] = "n9".into()),
        ),
        (
            "data_path.addr",
            "neither an IPv4 address nor an interface",
            Box::new(|s| s["data_path"]["addr"] = "eth9".into()),
        ),
        (
            "data_path.addr",
            "not an address of this node",
            Box::new(|s| s["data_path"]["addr"] = "172.21.1.99".into()),
        ),
        (
            "data_path.port",
            "between 1 and 65535",
            Box::new(|s| s["data_path"]["port"] = 0.into()),
        ),
    ];
    for (field, words, edit) in cases {
        assert_names(&problems(edit), field, words);
    }
}

/// One bad peer is left out with what it carries (its endpoints); everything else applies.
#[test]
fn a_bad_peer_is_left_out_and_the_rest_applies() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "peers[0].public_key",
            "not a WireGuard key",
            Box::new(|s| s["peers"][0]["public_key"] = "not base64!".into()),
        ),
        (
            "peers[0].data_path_addr",
            "IPv6",
            Box::new(|s| s["peers"][0]["data_path_addr"] = "fd00::12".into()),
        ),
        (
            "peers[0].data_path_addr",
            "claimed by 2 peers",
            Box::new(|s| s["peers"][1]["data_path_addr"] = "172.21.1.12".into()),
        ),
        (
            "peers[0].data_path_addr",
            "own data-path address",
            Box::new(|s| s["peers"][0]["data_path_addr"] = "172.21.1.11".into()),
        ),
        (
            "peers[0].public_key",
            "claimed by 2 peers",
            Box::new(|s| s["peers"][1]["public_key"] = key(2).public().to_string().into()),
        ),
        (
            "peers[0].public_key",
            "own WireGuard public key",
            Box::new(|s| s["peers"][0]["public_key"] = key(1).public().to_string().into()),
        ),
        (
            "peers[0].node",
            "listed more than once",
            Box::new(|s| s["peers"][1]["node"] = "n2".into()),
        ),
    ];
    for (field, words, edit) in cases {
        let mut s = state();
        edit(&mut s);
        let r = resolve(s).unwrap_or_else(|e| panic!("{field}: the state was refused: {e:?}"));
        assert!(
            r.left_out
                .iter()
                .any(|p| p.field == field && p.message.contains(words)),
            "{field} ({words}): {:?}",
            r.left_out
        );
        // n2's endpoints are left out too; the local tasks and networks are all there.
        assert!(r.left_out.iter().any(|p| p.field == "endpoints[0].node"));
        assert_eq!(r.layout.networks.len(), 2, "{field}");
        assert_eq!(r.layout.networks["plain"].attachments.len(), 1, "{field}");
        assert!(r.layout.networks["plain"].fdb.is_empty(), "{field}");
        assert!(
            r.wireguard
                .as_ref()
                .is_some_and(|w| !w.peers.contains_key("n2")),
            "{field}"
        );
    }
    // A peer without a key is left out of encrypted networks only.
    let mut s = state();
    s["peers"][0].as_object_mut().unwrap().remove("public_key");
    let r = resolve(s).expect("applies");
    assert_eq!(r.layout.networks["plain"].fdb.len(), 1);
    assert!(r.layout.networks["secret"].fdb.is_empty());
    assert!(
        r.left_out
            .iter()
            .any(|p| p.field == "endpoints[1].node" && p.message.contains("no public_key")),
        "{:?}",
        r.left_out
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let found = problems(|s| {
        s["networks"][1]["vni"] = 4096.into();
        s["attachments"][0]["ip"] = "10.99.0.2".into();
        s["data_path"]["addr"] = "eth9".into();
    });
    assert_names(&found, "networks[1].vni", "already used");
    assert_names(&found, "attachments[0].ip", "outside");
    assert_names(&found, "data_path.addr", "eth9");
}

#[test]
fn json_mistakes_name_where_they_are() {
    let found = problems(|s| s["networks"][0]["vnii"] = 1.into());
    assert!(found[0].0.starts_with("line 1 column"), "{found:?}");
    assert!(found[0].1.contains("unknown field `vnii`"), "{found:?}");
}

#[test]
fn the_data_path_can_be_named_by_address() {
    let r = resolve({
        let mut s = state();
        s["data_path"]["addr"] = "172.21.1.11".into();
        s
    })
    .unwrap();
    assert_eq!(
        r.layout.networks["plain"].device.local,
        Ipv4Addr::new(172, 21, 1, 11)
    );
}

/// A port's own `client_ip` wins over the service's, `mode: host` always keeps the client, and
/// `snat` with `mode: host` is refused; an attachment with `replies_via_gateway` gets its
/// network's gateway for its replies (and a veth name of its own).
#[test]
fn client_ip_is_chosen_per_port_and_replies_go_through_the_gateway_when_asked() {
    let mut value = state();
    value["attachments"][0]["replies_via_gateway"] = serde_json::json!(true);
    value["mesh"] = serde_json::json!({
        "ingress": { "network": "plain", "ip": "10.10.0.9" },
        "services": [{
            "name": "web",
            "ports": [
                { "published": 8080, "target": 80 },
                { "published": 8081, "target": 80, "client_ip": "preserve" },
                { "published": 8082, "target": 80, "mode": "host" }
            ],
            "backends": [{ "task": "t1", "network": "plain", "ip": "10.10.0.2" }]
        }, {
            "name": "keep",
            "client_ip": "preserve",
            "ports": [
                { "published": 9090, "target": 80 },
                { "published": 9091, "target": 80, "client_ip": "snat" }
            ]
        }]
    });
    let resolved = resolve(value.clone()).expect("a valid state");
    let mesh = resolved.mesh.expect("a mesh");
    let keeps = |service: &str| -> Vec<(u16, bool)> {
        mesh.services[service]
            .ports
            .iter()
            .map(|p| (p.published, p.client_ip))
            .collect()
    };
    assert_eq!(keeps("web"), [(8080, false), (8081, true), (8082, true)]);
    assert_eq!(keeps("keep"), [(9090, true), (9091, false)]);
    let plain = &resolved.layout.networks["plain"];
    let t1 = plain
        .attachments
        .values()
        .find(|a| a.task == "t1")
        .expect("t1 on plain");
    assert_eq!(t1.reply_gateway, Some("10.10.0.1".parse().unwrap()));
    assert_eq!(t1.default_route, None);

    value["mesh"]["services"][0]["ports"][2]["client_ip"] = serde_json::json!("snat");
    let problems = resolve(value).expect_err("snat with mode host");
    assert_names(
        &problems,
        "mesh.services[0].ports[2].client_ip",
        "always keeps the client's address",
    );
}

/// A way out resolves to its bridge's gateway and one veth per task, the task's default route
/// through it; bad input names the field, and a removal takes the veths before the bridge.
#[test]
fn the_way_out_is_checked_and_planned() {
    let with_way_out = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut value = state();
        value["way_out"] = serde_json::json!({
            "subnet": "172.18.0.0/16",
            "attachments": [
                { "task": "t1", "netns": "/run/netns/t1", "ip": "172.18.0.2", "interface": "eth2" },
                { "task": "t2", "netns": "/run/netns/t2", "ip": "172.18.0.3", "interface": "eth0" }
            ]
        });
        edit(&mut value);
        value
    };
    let layout = resolve(with_way_out(&|_| {}))
        .expect("a valid way out")
        .layout;
    let way_out = layout.way_out.clone().expect("a way out");
    assert_eq!(way_out.gateway, "172.18.0.1/16".parse().unwrap());
    assert_eq!(way_out.attachments.len(), 2);
    for (veth, spec) in &way_out.attachments {
        assert!(veth.starts_with("vg"), "{veth}");
        assert_eq!(spec.default_route, Some(Ipv4Addr::new(172, 18, 0, 1)));
    }
    for (edit, field, words) in [
        (
            serde_json::json!({ "subnet": "10.10.0.0/16" }),
            "way_out.subnet",
            "overlaps the subnet of network \"plain\"",
        ),
        (
            serde_json::json!({ "subnet": "172.21.0.0/16" }),
            "way_out.subnet",
            "holds an address of the node's interface eth1",
        ),
        (
            serde_json::json!({ "subnet": "172.18.0.1/16" }),
            "way_out.subnet",
            "without host bits",
        ),
        (
            serde_json::json!({ "attachments": [{ "task": "t1", "netns": "/run/netns/t1", "ip": "172.19.0.2", "interface": "eth2" }] }),
            "way_out.attachments[0].ip",
            "outside",
        ),
        (
            serde_json::json!({ "attachments": [{ "task": "t1", "netns": "/run/netns/t1", "ip": "172.18.0.1", "interface": "eth2" }] }),
            "way_out.attachments[0].ip",
            "gateway",
        ),
        (
            serde_json::json!({ "attachments": [{ "task": "t1", "netns": "/run/netns/t1", "ip": "172.18.0.2", "interface": "eth1" }] }),
            "way_out.attachments[0].interface",
            "already used by attachments[1]",
        ),
    ] {
        let value = with_way_out(&|v| {
            for (k, x) in edit.as_object().unwrap() {
                v["way_out"][k] = x.clone();
            }
        });
        let problems = resolve(value).expect_err("refused");
        assert_names(&problems, field, words);
    }
    // A task whose default route is on an overlay already cannot also have a way out.
    let value = with_way_out(&|v| v["attachments"][0]["default_route"] = serde_json::json!(true));
    assert_names(
        &resolve(value).expect_err("refused"),
        "way_out.attachments[0].netns",
        "default route is through attachments[0] already",
    );
    // Removing everything: the way out's veths leave before its bridge does.
    let ops: Vec<String> = plan(&Layout::default(), &layout.observed())
        .iter()
        .map(ToString::to_string)
        .collect();
    let position = |prefix: &str| ops.iter().position(|o| o.starts_with(prefix)).unwrap();
    assert!(
        position("way out: detach") < position("way out: delete"),
        "{ops:#?}"
    );
}

/// Service VIPs resolve to their backends, sorted and once each; a VIP outside its network,
/// on an unknown network or listed twice, and a backend outside the network, are refused by
/// field.
#[test]
fn service_vips_are_checked_against_their_networks() {
    let mut value = state();
    value["vips"] = serde_json::json!([
        { "service": "api", "network": "plain", "vip": "10.10.0.100",
          "backends": ["10.10.0.12", "10.10.0.11", "10.10.0.12"] },
        { "service": "db", "network": "secret", "vip": "10.20.0.100" }
    ]);
    let vips = resolve(value.clone()).expect("valid VIPs").vips;
    assert_eq!(vips.len(), 2);
    assert_eq!(vips[0].vip, Ipv4Addr::new(10, 10, 0, 100));
    assert_eq!(
        vips[0].backends,
        [Ipv4Addr::new(10, 10, 0, 11), Ipv4Addr::new(10, 10, 0, 12)]
    );
    assert!(vips[1].backends.is_empty(), "a VIP without running tasks");
    for (edit, field, words) in [
        (
            serde_json::json!({ "vip": "10.99.0.1" }),
            "vips[0].vip",
            "outside the network's subnet",
        ),
        (
            serde_json::json!({ "network": "nosuch" }),
            "vips[0].network",
            "no network \"nosuch\"",
        ),
        (
            serde_json::json!({ "backends": ["10.20.0.2"] }),
            "vips[0].backends[0]",
            "outside",
        ),
        (
            serde_json::json!({ "vip": "10.20.0.100", "network": "secret" }),
            "vips[1].vip",
            "listed twice",
        ),
    ] {
        let mut bad = value.clone();
        for (k, x) in edit.as_object().unwrap() {
            bad["vips"][0][k] = x.clone();
        }
        assert_names(&resolve(bad).expect_err("refused"), field, words);
    }
}

#[test]
fn a_changed_attachment_gets_a_new_veth_name() {
    let spec = AttachSpec {
        task: "t".into(),
        netns: "/run/netns/t".into(),
        interface: "eth0".into(),
        addr: "10.0.0.2/24".parse().unwrap(),
        mac: Mac([2, 0, 0, 0, 0, 2]),
        mtu: 1450,
        default_route: None,
        reply_gateway: None,
    };
    let mut other = spec.clone();
    other.mtu = 1400;
    assert_ne!(spec.veth_name(), other.veth_name());
    assert_eq!(spec.veth_name(), spec.clone().veth_name());
}

// ---- the planner ----

const IDS: [&str; 3] = ["a", "b", "c"];

fn arb_layout() -> impl Strategy<Value = Layout> {
    let net = (
        1u32..4,
        any::<bool>(),
        prop::sample::select(vec![1400u32, 1450]),
        prop::collection::btree_set(0u8..4, 0..3),
        prop::collection::btree_set(0u8..4, 0..3),
        prop::collection::btree_set(0u8..4, 0..3),
    );
    (
        prop::collection::vec(prop::option::of(net), 3),
        prop::sample::select(vec![
            Ipv4Addr::new(172, 21, 0, 1),
            Ipv4Addr::new(172, 21, 0, 2),
        ]),
        prop::sample::select(vec![1440u32, 1400]),
        // The way out: absent, or one of two gateways with some of four tasks.
        prop::option::of((0u8..2, prop::collection::btree_set(0u8..4, 0..3))),
    )
        .prop_map(|(nets, local, tunnel_mtu, way_out)| {
            let mut layout = Layout::default();
            let mut vnis = BTreeSet::new();
            for (id, net) in IDS.iter().zip(nets) {
                let Some((vni, encrypted, mtu, fdb, neigh, tasks)) = net else {
                    continue;
                };
                if !vnis.insert(vni) {
                    continue;
                }
                let host = |i: u8| Ipv4Addr::new(10, vni as u8, 0, 10 + i);
                let mac = |i: u8| Mac([2, 0, vni as u8, 0, 0, i]);
                let attachments: BTreeMap<String, AttachSpec> = tasks
                    .iter()
                    .map(|&t| {
                        let spec = AttachSpec {
                            task: format!("t{t}"),
                            netns: format!("/run/netns/t{t}").into(),
                            interface: format!("eth{vni}"),
                            addr: Ipv4Net::new(host(t + 100), 24).unwrap(),
                            mac: mac(t + 100),
                            mtu,
                            default_route: None,
                            reply_gateway: None,
                        };
                        (spec.veth_name(), spec)
                    })
                    .collect();
                layout.networks.insert(
                    (*id).to_owned(),
                    NetLayout {
                        device: NetDevice {
                            vni,
                            local,
                            port: 4789,
                            mtu,
                            encrypted,
                            gateway: Ipv4Net::new(host(0), 24).unwrap(),
                        },
                        fdb: fdb
                            .iter()
                            .map(|&i| (mac(i), Ipv4Addr::new(172, 21, 0, 10 + i)))
                            .collect(),
                        neigh: neigh.iter().map(|&i| (host(i), mac(i))).collect(),
                        attachments,
                    },
                );
            }
            if layout.networks.values().any(|n| n.device.encrypted) {
                layout.tunnel = Some(Tunnel {
                    addr: local,
                    mtu: tunnel_mtu,
                    port: 51820,
                });
            }
            layout.way_out = way_out.map(|(subnet, tasks)| {
                let gateway = Ipv4Addr::new(172, 18 + subnet, 0, 1);
                WayOutLayout {
                    gateway: Ipv4Net::new(gateway, 16).unwrap(),
                    attachments: tasks
                        .iter()
                        .map(|&t| {
                            let spec = AttachSpec {
                                task: format!("t{t}"),
                                netns: format!("/run/netns/t{t}").into(),
                                interface: "eth9".into(),
                                addr: Ipv4Net::new(Ipv4Addr::new(172, 18 + subnet, 0, 10 + t), 16)
                                    .unwrap(),
                                mac: Mac([2, 0, 0, 0, 9, t]),
                                mtu: 1500,
                                default_route: Some(gateway),
                                reply_gateway: None,
                            };
                            (spec.way_out_veth_name(), spec)
                        })
                        .collect(),
                }
            });
            layout
        })
}

/// Any state the kernel can be found in: a layout as applied, possibly after a restart (the TUN
/// device gone, its namespace left), possibly with a tunnel nothing uses any more, possibly with
/// bridge netfilter turned on in some networks (`br_netfilter` loaded after they were made).
fn arb_observed() -> impl Strategy<Value = Observed> {
    (arb_layout(), 0u8..3, any::<u8>()).prop_map(|(layout, restart, netfilter)| {
        let mut observed = layout.observed();
        for (i, net) in observed.networks.values_mut().enumerate() {
            net.bridge_netfilter = netfilter & (1 << (i % 8)) != 0;
        }
        match (restart, observed.tunnel) {
            (1, TunnelState::Up(_)) => observed.tunnel = TunnelState::NamespaceOnly,
            (2, TunnelState::Absent) => observed.tunnel = TunnelState::NamespaceOnly,
            _ => {}
        }
        observed
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any state can be reached from any other, by a plan whose every step the kernel accepts
    /// (nothing is created twice, nothing is removed while something depends on it), and once it
    /// is applied there is nothing left to do.
    #[test]
    fn any_state_reaches_any_other(desired in arb_layout(), observed in arb_observed()) {
        let ops = plan(&desired, &observed);
        let mut kernel = observed.clone();
        for op in &ops {
            kernel.apply(op).map_err(TestCaseError::fail)?;
        }
        prop_assert_eq!(&kernel, &desired.observed());
        prop_assert_eq!(plan(&desired, &kernel), vec![]);
    }

    /// Applying the same state twice changes nothing the second time.
    #[test]
    fn an_applied_state_plans_nothing(desired in arb_layout()) {
        prop_assert_eq!(plan(&desired, &desired.observed()), vec![]);
    }
}

#[test]
fn after_a_restart_the_tunnel_is_rebuilt_without_touching_the_networks() {
    let desired = resolve(state()).unwrap().layout;
    let mut observed = desired.observed();
    observed.tunnel = TunnelState::NamespaceOnly;
    let ops = plan(&desired, &observed);
    assert_eq!(
        ops,
        vec![shoal_dataplane::overlay::LayoutStep::CreateTunnel(
            desired.tunnel.unwrap()
        )]
    );
}

#[test]
fn removing_everything_detaches_tasks_before_networks_and_networks_before_the_tunnel() {
    let desired = resolve(state()).unwrap().layout;
    let ops: Vec<String> = plan(&Layout::default(), &desired.observed())
        .iter()
        .map(ToString::to_string)
        .collect();
    let position = |prefix: &str| ops.iter().position(|o| o.starts_with(prefix)).unwrap();
    assert!(
        position("network secret: detach") < position("network secret: delete"),
        "{ops:#?}"
    );
    assert!(
        position("network secret: delete") < position("tunnel: delete"),
        "{ops:#?}"
    );
    assert_eq!(
        ops.len(),
        5,
        "two detaches, two networks, the tunnel: {ops:#?}"
    );
}
