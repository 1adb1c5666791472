//! Whether removing a manager from the raft keeps a quorum: what `node demote`, `node rm` and
//! `swarm leave` check first, as SwarmKit does.

use std::collections::BTreeSet;

/// Checks that after removing `removed` from `voters`, the managers still reachable form a
/// majority of the new membership. `reachable` holds the voters the leader heard from lately,
/// itself included. The error says why, in the user's terms.
pub fn check_removal(
    voters: &BTreeSet<u64>,
    reachable: &BTreeSet<u64>,
    removed: u64,
) -> Result<(), String> {
    if !voters.contains(&removed) {
        return Ok(());
    }
    let remaining: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != removed).collect();
    if remaining.is_empty() {
        return Err("attempting to remove the last manager of the swarm".into());
    }
    let up = remaining.iter().filter(|v| reachable.contains(v)).count();
    let needed = remaining.len() / 2 + 1;
    if up < needed {
        return Err(format!(
            "this would result in a loss of quorum: {} of the remaining {} managers are reachable, and {needed} are needed",
            up,
            remaining.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn three_healthy_managers_can_lose_one() {
        assert!(check_removal(&set(&[1, 2, 3]), &set(&[1, 2, 3]), 3).is_ok());
    }

    #[test]
    fn removing_a_healthy_one_while_another_is_down_loses_quorum() {
        let e = check_removal(&set(&[1, 2, 3]), &set(&[1, 2]), 2).unwrap_err();
        assert!(
            e.contains("1 of the remaining 2 managers are reachable, and 2 are needed"),
            "{e}"
        );
        // Removing the one that is down is fine.
        assert!(check_removal(&set(&[1, 2, 3]), &set(&[1, 2]), 3).is_ok());
    }

    #[test]
    fn the_last_manager_cannot_go() {
        assert!(
            check_removal(&set(&[1]), &set(&[1]), 1)
                .unwrap_err()
                .contains("last manager")
        );
    }

    #[test]
    fn a_non_voter_is_not_checked() {
        assert!(check_removal(&set(&[1]), &set(&[1]), 7).is_ok());
    }
}
