//! Properties of the Maglev lookup table (`mesh::maglev`): balance, minimal disruption, weights,
//! zero-weight backends and order independence. Pure, no root needed.

use proptest::prelude::*;
use proptest::sample::Index;
use shoal_dataplane::mesh::maglev::{
    Backend, MAX_TABLE_SIZE, SLOTS_PER_BACKEND, build, is_prime, next_prime,
};

/// Extra share of the table (beyond the ideal `1/K`) that may change owner when one backend
/// joins or leaves a set of `K` equal-weight backends at `M = next_prime(100 * K)`.
///
/// Measured with plain Maglev (this module) over 1000 random key sets for every `K` in `2..=120`
/// (119 000 removals; removing a backend from `K` and adding it to `K - 1` compare the same two
/// tables, so that covers additions too), the worst excess `changed / M - 1 / K` was:
///
/// | `K`        | worst excess | worst total change, in units of `M / K` |
/// |------------|--------------|-----------------------------------------|
/// | 2..=10     | 0.377 (K=3)  | 2.2                                     |
/// | 11..=30    | 0.130        | 2.7                                     |
/// | 31..=60    | 0.055        | 3.2                                     |
/// | 61..=90    | 0.039        | 3.6                                     |
/// | 91..=120   | 0.028        | 4.0 (K=109)                             |
///
/// (the mean total change grows from about 1.1 `M / K` for small `K` to 2.7 `M / K` near 120).
/// The tail at small `K` comes from backends whose skips are equal or opposite: their
/// permutations walk the same cycle, their claims interleave along it, and a change ripples
/// around the whole cycle (every K=3 case above 0.15 excess in a 6000-case sample was one).
/// The worst excess scales like `(1 + ln K) / K`, and that margin is at least 1.86 times the
/// worst measured excess at every `K`. For `K <= 3` it exceeds the table: with so few backends a
/// skip collision can re-home most of it (71% at worst, measured), so only larger sets are
/// really constrained.
fn disruption_margin(k: usize) -> f64 {
    let k = k as f64;
    (1.0 + k.ln()) / k
}

/// A set of `n` distinct keys.
fn keys(n: impl Into<prop::collection::SizeRange>) -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_set("[a-z0-9.:-]{1,24}", n).prop_map(|s| s.into_iter().collect())
}

/// Up to 120 distinct keys, each with a weight from `weights`.
fn weighted_keys(
    weights: std::ops::RangeInclusive<u32>,
) -> impl Strategy<Value = (Vec<String>, Vec<u32>)> {
    keys(1..=120).prop_flat_map(move |ks| {
        let n = ks.len();
        (Just(ks), prop::collection::vec(weights.clone(), n))
    })
}

fn with_weights<'a>(keys: &'a [String], weights: &[u32]) -> Vec<Backend<'a>> {
    keys.iter()
        .zip(weights)
        .map(|(k, &weight)| Backend { key: k, weight })
        .collect()
}

fn equal(keys: &[String]) -> Vec<Backend<'_>> {
    keys.iter().map(|k| Backend { key: k, weight: 1 }).collect()
}

fn table_size(backends: usize) -> u32 {
    next_prime(SLOTS_PER_BACKEND * u32::try_from(backends).expect("few backends"))
}

/// Slots owned per backend index.
fn counts(table: &[u32], n: usize) -> Vec<u64> {
    let mut c = vec![0; n];
    for &e in table {
        c[e as usize] += 1;
    }
    c
}

/// The owner key of every slot.
fn owners<'a>(table: &[u32], backends: &[Backend<'a>]) -> Vec<&'a str> {
    table.iter().map(|&i| backends[i as usize].key).collect()
}

/// How many slots have a different owner key in the two tables.
fn changed(a: &[&str], b: &[&str]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// With `M >= 100 N` no backend owns more than 1% above the average.
    #[test]
    fn balanced(keys in keys(1..=120)) {
        let bs = equal(&keys);
        let m = table_size(bs.len());
        let table = build(&bs, m).expect("valid");
        prop_assert_eq!(table.len(), m as usize);
        let c = counts(&table, bs.len());
        let max = c.iter().copied().max().unwrap_or(0);
        let min = c.iter().copied().min().unwrap_or(0);
        // max / (M / N) <= 1.01, in integers.
        prop_assert!(100 * max * bs.len() as u64 <= 101 * u64::from(m), "max {max} of {m} over {}", bs.len());
        // Plain Maglev: everyone owns floor(M/N) or ceil(M/N).
        prop_assert!(max - min <= 1, "{min}..{max}");
    }

    /// Removing one of `N` backends re-homes its own slots plus only a small margin of others.
    #[test]
    fn removal_disrupts_little(keys in keys(2..=120), gone in any::<Index>()) {
        let before = equal(&keys);
        let n = before.len();
        let m = table_size(n);
        let gone = gone.index(n);
        let mut after = before.clone();
        after.remove(gone);
        let t0 = owners(&build(&before, m).expect("valid"), &before);
        let t1 = owners(&build(&after, m).expect("valid"), &after);
        let removed_key = before[gone].key;
        // Every slot of the removed backend moves, to a backend that still exists.
        prop_assert!(t1.iter().all(|&k| k != removed_key));
        let share = changed(&t0, &t1) as f64 / f64::from(m);
        let bound = 1.0 / n as f64 + disruption_margin(n);
        prop_assert!(share <= bound, "N={n}: {share:.4} of the table changed, bound {bound:.4}");
    }

    /// Adding a backend to `N` takes about `1/(N+1)` of the table, plus a small margin.
    #[test]
    fn addition_disrupts_little(keys in keys(2..=120), new in any::<Index>()) {
        let after = equal(&keys);
        let k = after.len(); // N + 1
        let m = table_size(k);
        let mut before = after.clone();
        let new_key = before.remove(new.index(k)).key;
        let t0 = owners(&build(&before, m).expect("valid"), &before);
        let t1 = owners(&build(&after, m).expect("valid"), &after);
        let share = changed(&t0, &t1) as f64 / f64::from(m);
        let bound = 1.0 / k as f64 + disruption_margin(k);
        prop_assert!(share <= bound, "N+1={k}: {share:.4} of the table changed, bound {bound:.4}");
        // The newcomer gets its share (equal weights: floor or ceil of M/(N+1)).
        let got = t1.iter().filter(|&&o| o == new_key).count();
        prop_assert!(got.abs_diff(m as usize / k) <= 1);
    }

    /// Every slot belongs to a positive-weight backend, and every one of those owns some.
    #[test]
    fn only_positive_weights_own_slots(
        input in weighted_keys(0..=3)
    ) {
        let (keys, weights) = input;
        let bs = with_weights(&keys, &weights);
        let m = table_size(bs.len());
        let table = build(&bs, m).expect("valid");
        if weights.iter().all(|&w| w == 0) {
            prop_assert!(table.is_empty());
        } else {
            prop_assert_eq!(table.len(), m as usize);
            let c = counts(&table, bs.len());
            for (b, &owned) in bs.iter().zip(&c) {
                prop_assert_eq!(b.weight > 0, owned > 0, "{:?} owns {}", b, owned);
            }
        }
    }

    /// A backend of weight `w` owns `w / S` of the table (`S` the sum of the weights).
    ///
    /// Tolerance, proved for the fill's turn rule: after `R` complete rounds backend `i` has taken
    /// `floor(R w_i / W)` turns, and the fill ends inside round `R`, so its count is
    /// `c_i = R w_i / W + e_i` with `-1 < e_i <= 1`. Summing, `R / W = (M - Σe) / S`, hence
    /// `|c_i - M w_i / S| = |e_i - w_i Σe / S| <= 1 + w_i N / S`. With `M >= 100 S` and
    /// `N <= S` that is at most 2% of the ideal `M w_i / S`, which is checked too.
    #[test]
    fn weighted_shares(
        input in weighted_keys(1..=4)
    ) {
        let (keys, weights) = input;
        let bs = with_weights(&keys, &weights);
        let n = bs.len() as u64;
        let s: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let m = next_prime(SLOTS_PER_BACKEND * u32::try_from(s).expect("small"));
        prop_assert!(m <= MAX_TABLE_SIZE);
        let c = counts(&build(&bs, m).expect("valid"), bs.len());
        for (&w, &got) in weights.iter().zip(&c) {
            let w = u64::from(w);
            // |c - M w / S| <= 1 + w N / S, times S.
            let err = (got * s).abs_diff(u64::from(m) * w);
            prop_assert!(err <= s + w * n, "weight {w}: {got} slots of {m}, S={s}, N={n}");
            // Within 2% of the ideal.
            prop_assert!(100 * err <= 2 * u64::from(m) * w, "weight {w}: {got} slots of {m}, S={s}");
        }
    }

    /// The same set of backends in any order maps every slot to the same key.
    #[test]
    fn order_independent(
        input in keys(1..=120)
            .prop_flat_map(|ks| {
                let n = ks.len();
                (Just(ks), prop::collection::vec(0_u32..=4, n))
            })
            .prop_flat_map(|(ks, ws)| {
                let pairs: Vec<(String, u32)> = ks.into_iter().zip(ws).collect();
                (Just(pairs.clone()), Just(pairs).prop_shuffle())
            }),
        size in prop::sample::select(vec![12_007_u32, 16_381, 3_001]),
    ) {
        let (ordered, shuffled) = input;
        let a: Vec<Backend<'_>> = ordered.iter().map(|(k, w)| Backend { key: k, weight: *w }).collect();
        let b: Vec<Backend<'_>> = shuffled.iter().map(|(k, w)| Backend { key: k, weight: *w }).collect();
        let ta = build(&a, size).expect("valid");
        let tb = build(&b, size).expect("valid");
        prop_assert_eq!(owners(&ta, &a), owners(&tb, &b));
        // And building again gives the very same table.
        prop_assert_eq!(build(&a, size).expect("valid"), ta);
    }
}

#[test]
fn primes_match_sieve() {
    const LIMIT: usize = 200_000;
    let mut composite = vec![false; LIMIT + 1];
    composite[0] = true;
    composite[1] = true;
    let mut p = 2;
    while p * p <= LIMIT {
        if !composite[p] {
            let mut q = p * p;
            while q <= LIMIT {
                composite[q] = true;
                q += p;
            }
        }
        p += 1;
    }
    for (n, &c) in composite.iter().enumerate() {
        let n = u32::try_from(n).expect("small");
        assert_eq!(is_prime(n), !c, "is_prime({n})");
    }
    // next_prime(n) is the first sieve prime >= n, wherever the sieve knows one.
    let mut next = None;
    for (n, &c) in composite.iter().enumerate().rev() {
        let n = u32::try_from(n).expect("small");
        if !c {
            next = Some(n);
        }
        if let Some(want) = next {
            assert_eq!(next_prime(n), want, "next_prime({n})");
        }
    }
    assert!(is_prime(MAX_TABLE_SIZE));
    assert_eq!(next_prime(MAX_TABLE_SIZE), MAX_TABLE_SIZE);
}
