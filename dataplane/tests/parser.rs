//! The XDP packet parser, run in the kernel through BPF_PROG_TEST_RUN on a table of packet fixtures:
//! well-formed TCP/UDP over IPv4/IPv6, VLAN tags, IPv4 options, IPv6 extension headers,
//! fragments, malformed headers, and every fixture cut at every length. For each run: the verdict
//! is XDP_PASS, the packet comes back unchanged, and the per-CPU counters moved exactly as the
//! fixture says. That the programs load at all means the verifier accepted every access.
//!
//! Needs root (CAP_BPF); CI runs as root.

mod support;

use std::io::ErrorKind;

use shoal_abi::{
    bench::{FRAME_LEN, SPORT_OFFSET, TxFrame},
    parse::{Counter, ParseStats},
    programs::{XDP_BENCH_SINK, XDP_BENCH_TX, XDP_PARSE, XDP_PASS},
    wire::ETH_HLEN,
};
use shoal_dataplane::bpf::{BpfError, Programs, XdpVerdict};
use support::packets::{self, Expected, Fixture};

fn programs() -> Programs {
    Programs::load().unwrap_or_else(|e| {
        panic!("loading the eBPF object failed ({e}); these tests need root (CAP_BPF)")
    })
}

/// Runs the parser on `packet` and returns how its counters moved.
fn parse_once(programs: &mut Programs, packet: &[u8]) -> Result<ParseStats, String> {
    let before = programs.parse_stats().map_err(|e| e.to_string())?;
    let run = programs
        .test_run(XDP_PARSE, packet, 1)
        .map_err(|e| e.to_string())?;
    let after = programs.parse_stats().map_err(|e| e.to_string())?;
    if run.verdict != XdpVerdict::Pass {
        return Err(format!("verdict {:?}, expected Pass", run.verdict));
    }
    if run.output != packet {
        return Err("the packet came back modified".into());
    }
    Ok(after.since(&before))
}

/// The counter deltas `expected` stands for.
fn deltas(expected: &Expected) -> ParseStats {
    let mut stats = ParseStats::default();
    stats.counts[Counter::Packets.index()] = 1;
    stats.counts[expected.outcome.index()] += 1;
    for feature in &expected.features {
        stats.counts[feature.index()] += 1;
    }
    stats
}

/// The kind of the `io::Error` at the bottom of `error`'s source chain.
fn error_kind(error: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cause = e.source();
    }
    None
}

fn describe(stats: &ParseStats) -> String {
    Counter::ALL
        .iter()
        .filter(|c| stats.get(**c) != 0)
        .map(|c| format!("{}={}", c.name(), stats.get(*c)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn check(programs: &mut Programs, fixture: &Fixture, len: usize, failures: &mut Vec<String>) {
    let packet = &fixture.bytes()[..len];
    let want = deltas(&fixture.expect(len));
    match parse_once(programs, packet) {
        Ok(got) if got == want => {}
        Ok(got) => failures.push(format!(
            "{} cut to {len} B: counters moved [{}], expected [{}]",
            fixture.name,
            describe(&got),
            describe(&want)
        )),
        Err(e) => failures.push(format!("{} cut to {len} B: {e}", fixture.name)),
    }
}

#[test]
fn verifier_accepts_every_program() {
    let mut programs = programs();
    for name in [XDP_PARSE, XDP_PASS, XDP_BENCH_TX, XDP_BENCH_SINK] {
        programs
            .xdp(name)
            .unwrap_or_else(|e| panic!("{name} was rejected: {e}"));
    }
}

/// The benchmarks' programs: the generator sends its template, flow after flow; the sink counts
/// and drops VXLAN datagrams only (ARP and other UDP pass, uncounted).
#[test]
fn the_bench_sink_counts_and_drops_vxlan_only() {
    let mut programs = programs();
    let udp_to = |port: u16| {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, 0, 50, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0xc0, 0x00]);
        f.extend_from_slice(&port.to_be_bytes());
        f.extend_from_slice(&[0, 30, 0, 0]);
        f.resize(64, 0);
        f
    };
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.resize(60, 0);
    // The generator writes its template over whatever frame it is given (live-frames mode
    // recycles frames others rewrote) and rotates the source port over `flows` ports.
    let template = TxFrame {
        bytes: udp_to(4789)[..FRAME_LEN].try_into().expect("60 bytes"),
        flows: 4,
        pad: 0,
    };
    programs.set_bench_frame(&template).expect("template");
    let mut sports = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let tx = programs
            .test_run(XDP_BENCH_TX, &[0xee; FRAME_LEN], 1)
            .expect("runs");
        assert_eq!(tx.verdict, XdpVerdict::Tx);
        let sport = u16::from_be_bytes([tx.output[SPORT_OFFSET], tx.output[SPORT_OFFSET + 1]]);
        assert!((0xc000..0xc004).contains(&sport), "source port {sport:#x}");
        sports.insert(sport);
        let mut expected = template.bytes;
        expected[SPORT_OFFSET..SPORT_OFFSET + 2].copy_from_slice(&sport.to_be_bytes());
        assert_eq!(tx.output, expected);
    }
    assert!(sports.len() > 1, "one flow only: {sports:x?}");
    for (packet, verdict, counted) in [
        (udp_to(4789), XdpVerdict::Drop, 1),
        (udp_to(53), XdpVerdict::Pass, 0),
        (arp, XdpVerdict::Pass, 0),
        (udp_to(4789)[..40].to_vec(), XdpVerdict::Pass, 0),
    ] {
        let before = programs.bench_sink_packets().expect("count");
        let run = programs.test_run(XDP_BENCH_SINK, &packet, 1).expect("runs");
        let after = programs.bench_sink_packets().expect("count");
        assert_eq!(
            (run.verdict, after - before),
            (verdict, counted),
            "{packet:02x?}"
        );
    }
}

#[test]
fn complete_fixtures_are_classified() {
    let mut programs = programs();
    let mut failures = Vec::new();
    for fixture in packets::all() {
        let len = fixture.bytes().len();
        check(&mut programs, &fixture, len, &mut failures);
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn fixtures_cut_at_every_length_are_safe_and_classified() {
    let mut programs = programs();
    let mut failures = Vec::new();
    let mut runs = 0;
    for fixture in packets::all() {
        // The kernel refuses XDP test input shorter than an Ethernet header (see below).
        for len in ETH_HLEN..=fixture.bytes().len() {
            check(&mut programs, &fixture, len, &mut failures);
            runs += 1;
        }
    }
    assert!(runs > 1000, "only {runs} runs: the fixture table shrank");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_fixture_table_covers_every_case_the_parser_distinguishes() {
    // The kernel tests above are only as good as this table: it must hold each kind of packet the
    // issue names, and cutting its fixtures must reach every truncation outcome.
    use Counter::*;
    let fixtures = packets::all();
    let complete: Vec<Expected> = fixtures.iter().map(|f| f.expect(f.bytes().len())).collect();
    let has = |outcome: Counter, features: &[Counter]| {
        complete
            .iter()
            .any(|e| e.outcome == outcome && features.iter().all(|f| e.features.contains(f)))
    };
    for (what, outcome, features) in [
        ("TCP over IPv4", Tcp, &[Ipv4][..]),
        ("UDP over IPv4", Udp, &[Ipv4]),
        ("TCP over IPv6", Tcp, &[Ipv6]),
        ("UDP over IPv6", Udp, &[Ipv6]),
        ("VLAN-tagged TCP", Tcp, &[Vlan]),
        ("VLAN-tagged UDP", Udp, &[Vlan]),
        ("IPv4 options", Tcp, &[Ipv4Options]),
        ("IPv4 options", Udp, &[Ipv4Options]),
        ("IPv6 extension headers", Tcp, &[Ipv6Ext]),
        ("IPv4 fragment", Fragment, &[Ipv4]),
        ("IPv6 fragment", Fragment, &[Ipv6, Ipv6Ext]),
        ("non-IP", OtherL3, &[]),
        ("IPv4 neither TCP nor UDP", OtherL4, &[Ipv4]),
        ("IPv6 neither TCP nor UDP", OtherL4, &[Ipv6]),
        ("malformed", Malformed, &[]),
    ] {
        assert!(has(outcome, features), "no fixture for {what}");
    }
    for truncated in [TruncatedL2, TruncatedL3, TruncatedL4] {
        let reached = fixtures
            .iter()
            .any(|f| (ETH_HLEN..f.bytes().len()).any(|len| f.expect(len).outcome == truncated));
        assert!(
            reached,
            "no cut of any fixture ends in {}",
            truncated.name()
        );
    }
}

#[test]
fn shorter_than_ethernet_is_refused_by_the_kernel() {
    // Frames under 14 bytes never reach an XDP program on a real interface, and the kernel's
    // test runner refuses them too; the parser still handles them (TruncatedL2), which the
    // verifier checks on load.
    let mut programs = programs();
    programs.xdp(XDP_PARSE).expect("the parser loads");
    for len in 0..ETH_HLEN {
        let packet = vec![0xff_u8; len];
        match programs.test_run(XDP_PARSE, &packet, 1) {
            Err(e @ BpfError::Program { .. })
                if error_kind(&e) == Some(ErrorKind::InvalidInput) => {}
            other => panic!("{len}-byte input: expected EINVAL from the kernel, got {other:?}"),
        }
    }
}

#[test]
fn random_mutations_pass_unchanged_with_exactly_one_outcome() {
    let mut programs = programs();
    let fixtures = packets::all();
    // xorshift64*, seeded so a failure reproduces.
    let seed = SEED;
    let mut state = seed;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut failures = Vec::new();
    for round in 0..3000 {
        let fixture = &fixtures[next() as usize % fixtures.len()];
        let mut packet = fixture.bytes();
        for _ in 0..1 + next() % 4 {
            let at = next() as usize % packet.len();
            packet[at] = next() as u8;
        }
        let len = ETH_HLEN + next() as usize % (packet.len() - ETH_HLEN + 1);
        packet.truncate(len);
        match parse_once(&mut programs, &packet) {
            Ok(got) => {
                let outcomes: u64 = Counter::ALL
                    .iter()
                    .filter(|c| c.is_outcome())
                    .map(|c| got.get(*c))
                    .sum();
                if got.get(Counter::Packets) != 1 || outcomes != 1 {
                    failures.push(format!(
                        "round {round} (seed {seed:#x}) {packet:02x?}: [{}]",
                        describe(&got)
                    ));
                }
            }
            Err(e) => failures.push(format!("round {round} (seed {seed:#x}): {e}")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The mutation test's seed (change it to explore; a failure prints it).
const SEED: u64 = 0x5eed_5ea1;
