//! What the mesh and metrics benchmarks share: the routing mesh's programs loaded in this
//! process with one UDP service of six remote backends, run through BPF_PROG_TEST_RUN.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use shoal_dataplane::common::Mac;
use shoal_dataplane::mesh::maglev::DEFAULT_TABLE_SIZE;
use shoal_dataplane::mesh::model::{BackendPlan, MeshPlan, PortPlan, Protocol, ServicePlan};
use shoal_dataplane::mesh::{Mesh, MeshError};

/// An Ethernet/IPv4/UDP frame of 60 bytes from `sport` to 10.0.0.2:`dport`.
pub fn udp_frame(sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&[192, 168, 1, 10, 10, 0, 0, 2]);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 26, 0, 0]);
    f.resize(60, 0);
    f
}

/// `loaded` (the programs, as [`Mesh::load`] or [`Mesh::load_without_counters`] gave them)
/// with service `web` published on UDP 53 of 10.0.0.2 over six backends on other nodes, and
/// interface 7 (`shoal0` here) taking native XDP redirects, as on a node: XDP carries the packet.
pub fn programmed(loaded: Result<Mesh, MeshError>) -> Mesh {
    let backends: Vec<BackendPlan> = (11..17)
        .map(|last| {
            let addr = Ipv4Addr::new(10, 255, 0, last);
            BackendPlan {
                addr,
                mac: Mac::from_ip(addr),
                task: format!("web{last}"),
                weight: 1,
                local: false,
                vtep: None,
            }
        })
        .collect();
    let plan = MeshPlan {
        network: "ingress".into(),
        subnet: "10.255.0.0/24".parse().expect("subnet"),
        addr: Ipv4Addr::new(10, 255, 0, 2),
        mac: Mac::from_ip(Ipv4Addr::new(10, 255, 0, 2)),
        interfaces: Vec::new(),
        local_addrs: BTreeSet::from([Ipv4Addr::new(10, 0, 0, 2)]),
        tunnel: None,
        services: BTreeMap::from([(
            "web".to_owned(),
            ServicePlan {
                table_size: DEFAULT_TABLE_SIZE,
                ports: vec![PortPlan {
                    protocol: Protocol::Udp,
                    published: 53,
                    target: 53,
                    host: false,
                    client_ip: false,
                }],
                backends,
            },
        )]),
    };
    let mut mesh = loaded.unwrap_or_else(|e| panic!("loading the programs: {e} (needs root)"));
    mesh.set_xdp_egress(BTreeSet::from([7]))
        .expect("egress map");
    mesh.program(&plan, 7).expect("maps");
    mesh
}
