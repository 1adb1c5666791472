//! Bounds on every number and string a client or a node sends, checked at the manager before
//! anything is written, with errors that say which bound and why. One misbehaving client or
//! node can then only be refused, never grow the store, a raft entry or every node's routing
//! mesh past what the cluster can carry.
//!
//! | what | bound |
//! |---|---|
//! | replicas of a service | [`MAX_REPLICAS`]; [`MAX_MESH_BACKENDS`] when published through the mesh |
//! | services | [`MAX_SERVICES`] |
//! | published ports of a service | [`MAX_PORTS`]; all of the swarm's: [`MESH_MAX_FRONTENDS`] |
//! | the mesh's Maglev tables | [`MESH_TABLE_CAPACITY`] slots, half of it in use at most |
//! | `--dispatcher-heartbeat` | 1 s to [`MAX_HEARTBEAT_S`] |
//! | names, images, labels, env, args, constraints | [`Strings`] |
//! | a node's description | hostname, platform, executor: [`MAX_SHORT`]; the address and key parsed |
//! | a task report | [`MAX_REPORT_UPDATES`] updates, messages [`MAX_MESSAGE`] bytes |
//! | one raft entry | [`MAX_ENTRY_BYTES`]; the reconciler writes [`MAX_CHANGES_PER_PASS`] changes a pass |

use std::net::IpAddr;

use tonic::Status;

/// Tasks of one replicated service, at most.
pub const MAX_REPLICAS: u64 = 10_000;
/// Services in the swarm, at most (every node's routing mesh indexes them).
pub const MAX_SERVICES: usize = 1_000;
/// Published ports of one service, at most.
pub const MAX_PORTS: usize = 64;
/// Networks one service attaches to, at most.
pub const MAX_NETWORKS: usize = 16;
/// Placement constraints of one service, at most.
pub const MAX_CONSTRAINTS: usize = 64;
/// `--mount`s of one service, at most.
pub const MAX_MOUNTS: usize = 64;
/// The smallest `--limit-memory` a task may have (Docker's).
pub const MIN_MEMORY_LIMIT: u64 = 6 * 1024 * 1024;
/// `--env` entries of one service, at most.
pub const MAX_ENV: usize = 1_024;
/// `COMMAND ARG...` words, at most.
pub const MAX_ARGS: usize = 1_024;
/// Labels on one object, at most.
pub const MAX_LABELS: usize = 256;
/// A label key, a hostname, a platform string: bytes, at most.
pub const MAX_SHORT: usize = 255;
/// Interfaces a node reports the routing mesh's path for (`NodeDescription::mesh_paths`).
pub const MAX_MESH_PATHS: usize = 64;
/// An image reference: bytes, at most.
pub const MAX_IMAGE: usize = 512;
/// One env entry, one argument, one label value: bytes, at most.
pub const MAX_VALUE: usize = 32 * 1024;
/// All of a service's env entries and arguments together: bytes, at most.
pub const MAX_SPEC_TEXT: usize = 256 * 1024;
/// A task's status message or error, as a node reports it: bytes, at most.
pub const MAX_MESSAGE: usize = 4 * 1024;
/// Task status updates in one report, at most.
pub const MAX_REPORT_UPDATES: usize = 1_024;
/// `--dispatcher-heartbeat`, seconds, at most (one day).
pub const MAX_HEARTBEAT_S: u64 = 86_400;
/// `--snapshot-interval`, at most.
pub const MAX_SNAPSHOT_INTERVAL: u64 = 100_000_000;
/// A raft entry's payload, at most: far below the 64 MiB a raft message may carry.
pub const MAX_ENTRY_BYTES: usize = 8 << 20;
/// Changes the reconciler writes in one pass, at most (it goes on at the next pass).
pub const MAX_CHANGES_PER_PASS: usize = 1_000;
/// How often a node's description may be rewritten in the store, at most: once per this many
/// seconds (a heartbeat is still taken as a sign of life).
pub const DESCRIPTION_REWRITE_S: u64 = 10;

/// The WireGuard port of encrypted overlays on every node (`DEFAULT_WIREGUARD_PORT`).
pub const WIREGUARD_PORT: u16 = 51_820;

/// Slots in every node's Maglev table space (the mesh's map).
pub const MESH_TABLE_CAPACITY: u64 = shoal_abi::mesh::TABLE_CAPACITY as u64;
/// Published (protocol, port) pairs every node's mesh can hold (the mesh's map).
pub const MESH_MAX_FRONTENDS: usize = shoal_abi::mesh::MAX_FRONTENDS as usize;
/// Slots a Maglev table gives each backend, at least (`SLOTS_PER_BACKEND`).
pub const MESH_SLOTS_PER_BACKEND: u64 = 100;
/// The Maglev table sizes a published service can have, smallest first: primes, the largest
/// the mesh's maximum (`MAX_TABLE_SIZE`).
pub const MESH_TABLE_SIZES: [u32; 8] =
    [1_021, 2_039, 4_093, 8_191, 16_381, 32_749, 65_521, 131_071];
/// Running tasks of a service published through the routing mesh, at most: its table must hold
/// [`MESH_SLOTS_PER_BACKEND`] slots per task.
pub const MAX_MESH_BACKENDS: u64 =
    MESH_TABLE_SIZES[MESH_TABLE_SIZES.len() - 1] as u64 / MESH_SLOTS_PER_BACKEND;

/// The Maglev table size for `backends` running tasks: the smallest of [`MESH_TABLE_SIZES`]
/// holding [`MESH_SLOTS_PER_BACKEND`] slots each; `None` past [`MAX_MESH_BACKENDS`].
pub fn mesh_table_size(backends: u64) -> Option<u32> {
    let needed = backends.saturating_mul(MESH_SLOTS_PER_BACKEND);
    MESH_TABLE_SIZES
        .iter()
        .copied()
        .find(|size| u64::from(*size) >= needed)
}

/// Checks one string: at most `max` bytes, and no control characters.
pub fn check_str(what: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(Status::invalid_argument(format!(
            "{what} is {} bytes long: at most {max} are allowed",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Status::invalid_argument(format!(
            "{what} contains the control character {c:?}"
        )));
    }
    Ok(())
}

/// Checks a list: at most `max` entries.
pub fn check_count(what: &str, count: usize, max: usize) -> Result<(), Status> {
    if count > max {
        return Err(Status::invalid_argument(format!(
            "{count} {what} given: at most {max} are allowed"
        )));
    }
    Ok(())
}

/// `--dispatcher-heartbeat`: 1 s to a day.
pub fn check_heartbeat(seconds: u64) -> Result<(), Status> {
    if !(1..=MAX_HEARTBEAT_S).contains(&seconds) {
        return Err(Status::invalid_argument(format!(
            "--dispatcher-heartbeat must be between 1s and {MAX_HEARTBEAT_S}s (a day), not {seconds}s"
        )));
    }
    Ok(())
}

/// `--snapshot-interval`: 1 to [`MAX_SNAPSHOT_INTERVAL`] entries.
pub fn check_snapshot_interval(entries: u64) -> Result<(), Status> {
    if !(1..=MAX_SNAPSHOT_INTERVAL).contains(&entries) {
        return Err(Status::invalid_argument(format!(
            "--snapshot-interval must be between 1 and {MAX_SNAPSHOT_INTERVAL}, not {entries}"
        )));
    }
    Ok(())
}

/// The data-path (VXLAN) port of a swarm that says none (IANA's).
pub const DEFAULT_DATA_PATH_PORT: u16 = 4789;

/// The ports a data-path (VXLAN) port may be: not a well-known one, not an ephemeral one.
pub const DATA_PATH_PORTS: std::ops::RangeInclusive<u16> = 1024..=49151;

/// Checks labels: at most [`MAX_LABELS`], keys non-empty and at most [`MAX_SHORT`] bytes,
/// values at most [`MAX_VALUE`].
pub fn check_labels<'a>(
    what: &str,
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), Status> {
    let mut count = 0;
    for (key, value) in labels {
        count += 1;
        if key.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{what}: a label needs a key"
            )));
        }
        check_str(&format!("{what} key {key:.40?}"), key, MAX_SHORT)?;
        check_str(&format!("{what} {key:.40?}'s value"), value, MAX_VALUE)?;
    }
    check_count(what, count, MAX_LABELS)
}

/// Bytes a node's report text may take: longer text is cut (on a character boundary) by the
/// node before it sends, so that the manager's bound is never what loses a report.
pub fn clip(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// What is wrong with a node's data-path address, if anything: it must be a unicast IPv4
/// address (overlays are IPv4 only).
pub fn data_path_problem(addr: &str) -> Option<String> {
    match addr.parse::<IpAddr>() {
        Err(_) => Some(format!("{addr:?} is not an IP address")),
        Ok(IpAddr::V6(_)) => Some(format!(
            "{addr} is IPv6: the data path is IPv4 only; give --data-path-addr an IPv4 address"
        )),
        Ok(IpAddr::V4(ip))
            if ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_multicast()
                || ip.is_broadcast() =>
        {
            Some(format!(
                "{ip} cannot carry the data path (not a unicast address)"
            ))
        }
        Ok(IpAddr::V4(_)) => None,
    }
}

/// What is wrong with a WireGuard public key as a node advertises it, if anything: base64 of
/// 32 bytes, as `wg pubkey` prints it (44 characters).
pub fn public_key_problem(key: &str) -> Option<String> {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    match decoded {
        Ok(bytes) if bytes.len() == 32 && key.len() == 44 => None,
        _ => Some(format!(
            "{:.60?} is not a WireGuard public key (44 characters of base64 for 32 bytes)",
            key
        )),
    }
}

/// The most stopped tasks kept per slot (`swarm update --task-history-limit`): each is an object
/// in every manager's store and in every `service ps`.
pub const MAX_TASK_HISTORY: u64 = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sizes_are_primes_and_grow_with_the_backends() {
        let is_prime = |n: u32| {
            n > 1
                && (2..)
                    .take_while(|d| d * d <= n)
                    .all(|d| !n.is_multiple_of(d))
        };
        assert!(MESH_TABLE_SIZES.iter().all(|s| is_prime(*s)));
        assert_eq!(mesh_table_size(0), Some(1_021));
        assert_eq!(mesh_table_size(10), Some(1_021));
        assert_eq!(mesh_table_size(11), Some(2_039));
        assert_eq!(mesh_table_size(MAX_MESH_BACKENDS), Some(131_071));
        assert_eq!(mesh_table_size(MAX_MESH_BACKENDS + 1), None);
    }

    #[test]
    fn strings_are_bounded_and_free_of_control_characters() {
        assert!(check_str("hostname", "n1", 8).is_ok());
        let long = check_str("hostname", "n123456789", 8).unwrap_err();
        assert!(long.message().contains("at most 8"), "{}", long.message());
        let control = check_str("hostname", "n1\n", 8).unwrap_err();
        assert!(control.message().contains("control character"));
        let mut text = "héllo".to_owned();
        clip(&mut text, 2);
        assert_eq!(text, "h");
    }

    #[test]
    fn data_path_addresses_are_unicast_ipv4() {
        assert_eq!(data_path_problem("172.20.1.11"), None);
        for bad in [
            "fd00::1",
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "eth0",
        ] {
            assert!(data_path_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn public_keys_are_32_bytes_of_base64() {
        assert_eq!(
            public_key_problem("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            None
        );
        assert!(public_key_problem("c2hvcnQ=").is_some());
        assert!(public_key_problem("not base64 at all!").is_some());
    }
}
