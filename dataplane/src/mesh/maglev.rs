//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016): a lookup table of `M` slots (`M` prime) in which every slot
//! names the backend that serves the flows hashing to it.
//!
//! Each backend derives a permutation of `0..M` from its key alone: `offset = h1(key) % M`,
//! `skip = h2(key) % (M - 1) + 1`, and its `j`-th preference is `(offset + j * skip) % M`. Because
//! `M` is prime and `1 <= skip < M`, that sequence visits every slot exactly once. The table is
//! filled in turns: on its turn a backend claims the first slot of its permutation nobody has
//! claimed yet, and turns go round the backends until every slot is taken. The result spreads the
//! slots almost perfectly evenly (each backend gets `floor(M/N)` or `ceil(M/N)` of them) and is
//! minimally disruptive: when a backend joins or leaves, most slots keep their owner, so most
//! flows keep their backend.
//!
//! Weights (an extension the paper only sketches) decide how often a backend takes a turn: with
//! `W` the largest weight, a backend of weight `w` takes a turn in round `r` (`r = 0, 1, ...`)
//! exactly when `floor((r + 1) * w / W) > floor(r * w / W)`, i.e. `w` turns every `W` rounds, so
//! it ends up with about `w / (sum of weights)` of the slots. When all weights are equal every
//! backend takes a turn every round, which is plain Maglev. Backends of weight 0 take no turns.
//!
//! The table is a pure function of the *set* of backends: keys are hashed with fixed functions
//! (see [`build`]) and the turns within a round go in key order, never in input order, so every
//! machine, build and input order produces the same owner key for every slot.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Cilium's default; a prime >= 100 x 163 backends.
pub const DEFAULT_TABLE_SIZE: u32 = 16381;

/// The largest table size accepted.
pub const MAX_TABLE_SIZE: u32 = 131_071; // prime

/// How many table slots per backend (at least) keep max/avg load <= 1.01.
///
/// With equal weights every backend owns `floor(M/N)` or `ceil(M/N)` slots, so
/// `max / avg <= 1 + N / M`, which is at most 1.01 once `M >= 100 * N`.
pub const SLOTS_PER_BACKEND: u32 = 100;

/// One backend as Maglev sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend<'a> {
    /// The backend's stable identity (e.g. `"10.0.1.7:8080"`); its permutation is derived from
    /// this alone, so it must not change while the backend stays in the set.
    pub key: &'a str,
    /// The backend's relative weight; 0 means the backend owns no slot.
    pub weight: u32,
}

/// Why a lookup table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// The table size must be prime so that every permutation covers the whole table.
    #[error("table size {0} is not a prime number")]
    NotPrime(u32),
    /// Every positive-weight backend needs at least one slot.
    #[error("table size {size} is smaller than {backends} backends")]
    TooSmall {
        /// The requested table size.
        size: u32,
        /// How many backends had to fit (those with a positive weight).
        backends: usize,
    },
    /// The table size exceeds [`MAX_TABLE_SIZE`].
    #[error("table size {0} is larger than the maximum {MAX_TABLE_SIZE}")]
    TooLarge(u32),
}

/// Whether `n` is a prime number (deterministic trial division; 0 and 1 are not prime).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    // Every prime above 3 is 6k - 1 or 6k + 1. `d * d` is computed in u64 so it cannot overflow
    // near u32::MAX.
    let n64 = u64::from(n);
    let mut d: u64 = 5;
    while d * d <= n64 {
        if n64.is_multiple_of(d) || n64.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// The smallest prime >= n (n <= MAX_TABLE_SIZE).
///
/// Larger `n` work too, as long as a prime >= `n` fits in a `u32`; above the largest `u32` prime
/// (4 294 967 291) that prime itself is returned.
pub fn next_prime(n: u32) -> u32 {
    const LARGEST_U32_PRIME: u32 = 4_294_967_291;
    if n > LARGEST_U32_PRIME {
        return LARGEST_U32_PRIME;
    }
    // Terminates: LARGEST_U32_PRIME >= n is prime.
    (n..=LARGEST_U32_PRIME)
        .find(|&c| is_prime(c))
        .unwrap_or(LARGEST_U32_PRIME)
}

/// Builds the lookup table: `size` entries, each the index (into `backends`) of the backend owning
/// that slot.
///
/// Backends with weight 0 own no slot; if no backend has a positive weight the table is empty
/// (`Vec::new()`). The size is checked even then: it must be prime ([`MaglevError::NotPrime`]),
/// at most [`MAX_TABLE_SIZE`] ([`MaglevError::TooLarge`]) and at least the number of
/// positive-weight backends ([`MaglevError::TooSmall`]).
///
/// Weighted: over the fill, each backend takes turns in proportion to its weight (a backend of
/// weight `w` takes `w` turns every `max weight` rounds, see the module docs), so weight `w` gets
/// about `w / (sum of all weights)` of the slots. Equal weights give plain Maglev.
///
/// Deterministic: the same backends (same keys, weights, order) and size give the same table on
/// every machine and build. A key's permutation comes from two fixed hashes of its UTF-8 bytes:
/// 64-bit FNV-1a (prime `0x100000001b3`) started from two different offset bases — the standard
/// `0xcbf29ce484222325` for the offset and `0x9e3779b97f4a7c15` for the skip — each followed by
/// the MurmurHash3 `fmix64` finalizer so that every output bit depends on every input bit. Then
/// `offset = h1 % size` and `skip = h2 % (size - 1) + 1`.
///
/// Order independence: the table does not depend on the order of `backends` other than through
/// the indices it stores. Within each round the turns go in ascending key order (ties, i.e. the
/// same key listed twice, broken by weight and then by index), so the same set of backends in a
/// different order maps every slot to the same *key*.
pub fn build(backends: &[Backend<'_>], size: u32) -> Result<Vec<u32>, MaglevError> {
    if size > MAX_TABLE_SIZE {
        return Err(MaglevError::TooLarge(size));
    }
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    // Entries are u32 indices; a slice too long to be indexed by them certainly has more backends
    // than the (at most MAX_TABLE_SIZE) slots.
    if u32::try_from(backends.len()).is_err() {
        return Err(MaglevError::TooSmall {
            size,
            backends: backends.len(),
        });
    }
    // `len <= u32::MAX`, so the index range never reaches its end.
    let mut live: Vec<(u32, Backend<'_>)> = backends
        .iter()
        .zip(0_u32..)
        .filter(|(b, _)| b.weight > 0)
        .map(|(b, i)| (i, *b))
        .collect();
    if live.is_empty() {
        return Ok(Vec::new());
    }
    if live.len() > size as usize {
        return Err(MaglevError::TooSmall {
            size,
            backends: live.len(),
        });
    }
    live.sort_unstable_by(|(ia, a), (ib, b)| {
        a.key
            .cmp(b.key)
            .then(a.weight.cmp(&b.weight))
            .then(ia.cmp(ib))
    });
    let turns: Vec<(Permutation, u32)> = live
        .iter()
        .map(|(_, b)| (Permutation::new(b.key, size), b.weight))
        .collect();
    let table = fill(turns, size);
    // `fill` stores positions into `live`; translate them back to indices into `backends`.
    Ok(table
        .into_iter()
        .map(|pos| live.get(pos as usize).map_or(u32::MAX, |(i, _)| *i))
        .collect())
}

/// The slot for a flow hash: `hash % table.len()`; None if the table is empty.
///
/// Returns the entry stored in that slot, i.e. the index (into the `backends` given to [`build`])
/// of the backend that serves the flow.
pub fn lookup(table: &[u32], hash: u32) -> Option<u32> {
    let slot = u64::from(hash).checked_rem(table.len() as u64)?;
    table.get(usize::try_from(slot).ok()?).copied()
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// The standard FNV-1a 64 offset basis; seeds the hash behind a key's offset.
const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// A second offset basis (the 64-bit golden ratio); seeds the hash behind a key's skip.
const SKIP_BASIS: u64 = 0x9e37_79b9_7f4a_7c15;

/// 64-bit FNV-1a of `bytes`, started from `basis`.
fn fnv1a64(basis: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(basis, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// MurmurHash3's 64-bit finalizer: a bijection that lets every input bit affect every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// `h % m`, which always fits in a `u32`.
fn reduce(h: u64, m: u32) -> u32 {
    // Lossless: the remainder is < m <= u32::MAX.
    (h % u64::from(m)) as u32
}

/// A backend's walk through its preference list `(offset + j * skip) % M`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Permutation {
    /// The next preference (slot) to try.
    next: u32,
    /// The step between preferences, in `1..M`.
    skip: u32,
}

impl Permutation {
    /// The permutation of `0..m` (`m` prime, >= 2) for `key`.
    fn new(key: &str, m: u32) -> Self {
        let h1 = fmix64(fnv1a64(OFFSET_BASIS, key.as_bytes()));
        let h2 = fmix64(fnv1a64(SKIP_BASIS, key.as_bytes()));
        Self {
            next: reduce(h1, m),
            skip: reduce(h2, m - 1) + 1,
        }
    }
}

/// Marks a slot nobody has claimed yet (slots hold positions < `MAX_TABLE_SIZE`).
const EMPTY: u32 = u32::MAX;

/// The round in which a backend of weight `w` (1 <= `w` <= `w_max`) takes its `k`-th turn
/// (`k >= 1`): the smallest `r` with `floor((r + 1) * w / w_max) >= k`, i.e.
/// `ceil(k * w_max / w) - 1`. No overflow: `k <= MAX_TABLE_SIZE + 1` and `w_max < 2^32`.
fn turn_round(k: u64, w: u64, w_max: u64) -> u64 {
    (k * w_max).div_ceil(w) - 1
}

/// Fills a table of `m` slots (`m` prime, `1 <= turns.len() <= m`, every weight > 0) and returns,
/// per slot, the position in `turns` of its owner. Turns are taken in order of (round, position).
fn fill(turns: Vec<(Permutation, u32)>, m: u32) -> Vec<u32> {
    let w_max = turns.iter().map(|&(_, w)| u64::from(w)).max().unwrap_or(1);
    let (mut perms, weights): (Vec<Permutation>, Vec<u64>) =
        turns.into_iter().map(|(p, w)| (p, u64::from(w))).unzip();
    let mut table = vec![EMPTY; m as usize];
    // How many turns each backend has taken so far.
    let mut taken = vec![0_u64; perms.len()];
    // The pending turn of every backend, smallest (round, position) first.
    let mut queue: BinaryHeap<Reverse<(u64, u32)>> = weights
        .iter()
        .zip(0_u32..)
        .map(|(&w, pos)| Reverse((turn_round(1, w, w_max), pos)))
        .collect();
    let mut filled: u32 = 0;
    while filled < m {
        // The queue always holds one pending turn per backend.
        let Some(Reverse((_, pos))) = queue.pop() else {
            break;
        };
        let p = pos as usize;
        let (Some(perm), Some(&w), Some(count)) =
            (perms.get_mut(p), weights.get(p), taken.get_mut(p))
        else {
            break;
        };
        // Claim the first free slot of this backend's permutation. One exists (the table is not
        // full) and the permutation reaches every slot within `m` steps, so this ends.
        loop {
            let slot = perm.next as usize;
            perm.next = if perm.next >= m - perm.skip {
                perm.next - (m - perm.skip)
            } else {
                perm.next + perm.skip
            };
            if let Some(entry) = table.get_mut(slot)
                && *entry == EMPTY
            {
                *entry = pos;
                break;
            }
        }
        filled += 1;
        *count += 1;
        queue.push(Reverse((turn_round(*count + 1, w, w_max), pos)));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends<'a>(keys: &[&'a str]) -> Vec<Backend<'a>> {
        keys.iter().map(|&key| Backend { key, weight: 1 }).collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &e in table {
            c[e as usize] += 1;
        }
        c
    }

    /// Plain Maglev straight from the paper's pseudocode, for cross-checking `fill`.
    fn naive(perms: &[Permutation], m: u32) -> Vec<u32> {
        let mut table = vec![EMPTY; m as usize];
        let mut next = vec![0_u64; perms.len()];
        let mut filled = 0;
        loop {
            for (i, p) in perms.iter().enumerate() {
                let mut c = (u64::from(p.next) + next[i] * u64::from(p.skip)) % u64::from(m);
                while table[c as usize] != EMPTY {
                    next[i] += 1;
                    c = (u64::from(p.next) + next[i] * u64::from(p.skip)) % u64::from(m);
                }
                table[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
    }

    #[test]
    fn paper_example() {
        // Table 1 of the paper: M = 7, B0 (offset 3, skip 4), B1 (0, 2), B2 (3, 1).
        let perms = [
            Permutation { next: 3, skip: 4 },
            Permutation { next: 0, skip: 2 },
            Permutation { next: 3, skip: 1 },
        ];
        let table = fill(perms.iter().map(|&p| (p, 1)).collect(), 7);
        assert_eq!(table, vec![1, 0, 1, 0, 2, 2, 0]);
        // B1 removed, worked by hand: B0 walks 3 0 4 1 5 2 6, B2 walks 3 4 5 6 0 1 2. Turns:
        // B0:3, B2:4, B0:0, B2:5, B0:(4 taken) 1, B2:6, B0:(5 taken) 2. B1's slots 0 and 2 go to
        // B0, which keeps 1 and 3 but loses 6 to B2 (B2 reaches it first this time): the small
        // extra disruption Maglev trades for balance.
        let table = fill(vec![(perms[0], 1), (perms[2], 1)], 7);
        assert_eq!(table, vec![0, 0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn fnv_reference_vectors() {
        assert_eq!(fnv1a64(OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn golden_table() {
        // Pins the hash and the fill: any change here changes every deployed table.
        let bs = backends(&["a", "b", "c"]);
        let table = build(&bs, 13).expect("valid");
        assert_eq!(table.len(), 13);
        assert_eq!(table, GOLDEN_ABC_13.to_vec());
    }

    /// Cross-checked against an independent (Python) implementation of the documented hashes.
    const GOLDEN_ABC_13: [u32; 13] = [1, 0, 0, 2, 1, 1, 0, 0, 1, 2, 2, 0, 2];

    #[test]
    fn matches_naive_plain_maglev() {
        let mut keys: Vec<String> = (0..37)
            .map(|i| format!("10.0.{}.{}:80", i / 7, i))
            .collect();
        // Sorted, so that `build` (which fills in key order) and `naive` see the same order.
        keys.sort();
        let bs: Vec<Backend<'_>> = keys.iter().map(|k| Backend { key: k, weight: 3 }).collect();
        for m in [37, 41, 1021, 4099] {
            let perms: Vec<Permutation> = keys.iter().map(|k| Permutation::new(k, m)).collect();
            assert_eq!(build(&bs, m).expect("valid"), naive(&perms, m));
        }
    }

    #[test]
    fn single_backend_owns_everything() {
        let table = build(&backends(&["only"]), 7).expect("valid");
        assert_eq!(table, vec![0; 7]);
        let table = build(&backends(&["only"]), 2).expect("valid");
        assert_eq!(table, vec![0; 2]);
    }

    #[test]
    fn equal_weights_floor_or_ceil() {
        let keys: Vec<String> = (0..10).map(|i| format!("backend-{i}")).collect();
        let bs: Vec<Backend<'_>> = keys.iter().map(|k| Backend { key: k, weight: 1 }).collect();
        for m in [11, 13, 97, 1009] {
            let table = build(&bs, m).expect("valid");
            let c = counts(&table, bs.len());
            let lo = m as usize / bs.len();
            assert!(c.iter().all(|&x| x == lo || x == lo + 1), "{m}: {c:?}");
        }
    }

    #[test]
    fn empty_and_zero_weight() {
        assert_eq!(build(&[], 7), Ok(Vec::new()));
        let zero = [
            Backend {
                key: "a",
                weight: 0,
            },
            Backend {
                key: "b",
                weight: 0,
            },
        ];
        assert_eq!(build(&zero, 7), Ok(Vec::new()));
        // The size is still validated.
        assert_eq!(build(&[], 8), Err(MaglevError::NotPrime(8)));
        let mixed = [
            Backend {
                key: "a",
                weight: 0,
            },
            Backend {
                key: "b",
                weight: 5,
            },
            Backend {
                key: "c",
                weight: 0,
            },
        ];
        assert_eq!(build(&mixed, 7), Ok(vec![1; 7]));
        // Zero-weight backends do not count towards TooSmall.
        assert_eq!(build(&mixed, 2), Ok(vec![1; 2]));
    }

    #[test]
    fn errors() {
        let bs = backends(&["a", "b", "c"]);
        assert_eq!(build(&bs, 0), Err(MaglevError::NotPrime(0)));
        assert_eq!(build(&bs, 1), Err(MaglevError::NotPrime(1)));
        assert_eq!(build(&bs, 9), Err(MaglevError::NotPrime(9)));
        assert_eq!(
            build(&bs, 2),
            Err(MaglevError::TooSmall {
                size: 2,
                backends: 3
            })
        );
        assert!(build(&bs, 3).is_ok());
        assert_eq!(
            build(&bs, MAX_TABLE_SIZE + 1),
            Err(MaglevError::TooLarge(MAX_TABLE_SIZE + 1))
        );
        assert_eq!(build(&bs, u32::MAX), Err(MaglevError::TooLarge(u32::MAX)));
        assert!(build(&bs, MAX_TABLE_SIZE).is_ok());
        assert_eq!(
            MaglevError::TooLarge(131_072).to_string(),
            "table size 131072 is larger than the maximum 131071"
        );
        assert_eq!(
            MaglevError::TooSmall {
                size: 2,
                backends: 3
            }
            .to_string(),
            "table size 2 is smaller than 3 backends"
        );
        assert_eq!(
            MaglevError::NotPrime(9).to_string(),
            "table size 9 is not a prime number"
        );
    }

    #[test]
    fn order_independent() {
        let keys = ["d", "a", "c", "b", "e", "zz", "y"];
        let mut bs: Vec<Backend<'_>> = keys
            .iter()
            .zip(1..)
            .map(|(&key, weight)| Backend { key, weight })
            .collect();
        let want: Vec<&str> = build(&bs, 101)
            .expect("valid")
            .iter()
            .map(|&i| bs[i as usize].key)
            .collect();
        bs.reverse();
        let rev: Vec<&str> = build(&bs, 101)
            .expect("valid")
            .iter()
            .map(|&i| bs[i as usize].key)
            .collect();
        assert_eq!(want, rev);
        bs.rotate_left(3);
        let rot: Vec<&str> = build(&bs, 101)
            .expect("valid")
            .iter()
            .map(|&i| bs[i as usize].key)
            .collect();
        assert_eq!(want, rot);
    }

    #[test]
    fn weight_two_gets_twice() {
        let bs = [
            Backend {
                key: "heavy",
                weight: 2,
            },
            Backend {
                key: "light",
                weight: 1,
            },
        ];
        let m = 3001;
        let c = counts(&build(&bs, m).expect("valid"), 2);
        assert_eq!(c[0] + c[1], m as usize);
        // Turns alternate 2:1, so the split is exact up to the last partial round.
        assert!(c[0].abs_diff(2 * c[1]) <= 2, "{c:?}");
        // Scaling all weights changes nothing.
        let scaled = [
            Backend {
                key: "heavy",
                weight: 200,
            },
            Backend {
                key: "light",
                weight: 100,
            },
        ];
        assert_eq!(build(&bs, m), build(&scaled, m));
    }

    #[test]
    fn extreme_weights_terminate() {
        let bs = [
            Backend {
                key: "huge",
                weight: u32::MAX,
            },
            Backend {
                key: "tiny",
                weight: 1,
            },
        ];
        let c = counts(&build(&bs, MAX_TABLE_SIZE).expect("valid"), 2);
        // "tiny" takes its first turn in round u32::MAX - 1, long after the table is full.
        assert_eq!(c, vec![MAX_TABLE_SIZE as usize, 0]);
    }

    #[test]
    fn lookup_uses_modulo() {
        assert_eq!(lookup(&[], 5), None);
        let table = [4, 7, 9];
        assert_eq!(lookup(&table, 0), Some(4));
        assert_eq!(lookup(&table, 5), Some(9));
        assert_eq!(lookup(&table, u32::MAX), Some(4)); // 4294967295 % 3 == 0
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..50).filter(|&n| is_prime(n)).collect();
        assert_eq!(
            small,
            [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]
        );
        assert!(is_prime(DEFAULT_TABLE_SIZE));
        assert!(is_prime(MAX_TABLE_SIZE));
        assert!(is_prime(4_294_967_291));
        assert!(!is_prime(u32::MAX));
        assert_eq!(next_prime(0), 2);
        assert_eq!(next_prime(14), 17);
        assert_eq!(next_prime(17), 17);
        assert_eq!(next_prime(16380), DEFAULT_TABLE_SIZE);
        assert_eq!(next_prime(MAX_TABLE_SIZE), MAX_TABLE_SIZE);
        assert_eq!(next_prime(u32::MAX), 4_294_967_291);
    }
}
