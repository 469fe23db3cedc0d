//! Which generator shard owns a phone number. A sharded deployment splits
//! numbers — and with them their codes, limits and verifications — across
//! generator processes, each with its own sled store.
//!
//! The hash is Lamping and Veach's jump consistent hash over the first 8 bytes
//! of SHA-256(E.164): numbers spread evenly, and going from N to N+1 shards
//! moves only 1/(N+1) of them (their live codes must then be asked for again).

use sha2::{Digest, Sha256};

/// The shard (0-based) that owns `e164` among `shards` (0 or 1: always 0).
pub fn shard_of(e164: &str, shards: u16) -> u16 {
    if shards <= 1 {
        return 0;
    }
    let digest = Sha256::digest(e164.as_bytes());
    let key = u64::from_be_bytes(digest[..8].try_into().expect("SHA-256 has 32 bytes"));
    jump_hash(key, i64::from(shards)) as u16
}

/// Jump consistent hash (arXiv:1406.2294): a bucket in `0..buckets`.
fn jump_hash(mut key: u64, buckets: i64) -> i64 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b
}

/// The routing key that reaches shard `shard`'s request queue (`request.<shard>`).
pub fn request_key(shard: u16) -> String {
    format!("request.{shard}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(i: u32) -> String {
        format!("+1415{:07}", i)
    }

    #[test]
    fn one_shard_owns_everything() {
        assert_eq!(shard_of("+14155550123", 1), 0);
        assert_eq!(shard_of("+14155550123", 0), 0);
    }

    #[test]
    fn numbers_spread_evenly_and_stay_put() {
        let mut counts = [0u32; 4];
        for i in 0..40_000 {
            counts[usize::from(shard_of(&number(i), 4))] += 1;
        }
        for c in counts {
            assert!((9_400..=10_600).contains(&c), "{counts:?}");
        }
        assert_eq!(shard_of(&number(7), 4), shard_of(&number(7), 4), "deterministic");
    }

    #[test]
    fn adding_a_shard_moves_only_its_share() {
        let moved = (0..30_000).filter(|&i| shard_of(&number(i), 3) != shard_of(&number(i), 4)).count();
        // Ideal: 1/4 of the numbers move, all of them to the new shard.
        assert!((6_800..=8_200).contains(&moved), "{moved} of 30000 moved");
        for i in 0..30_000 {
            let (before, after) = (shard_of(&number(i), 3), shard_of(&number(i), 4));
            assert!(before == after || after == 3, "a number moved between old shards");
        }
    }

    #[test]
    fn the_published_vectors_hold() {
        // From the paper's reference implementation (Guava's Hashing.consistentHash agrees).
        assert_eq!(jump_hash(0, 1), 0);
        assert_eq!(jump_hash(1, 10), 6);
        assert_eq!(jump_hash(0xDEAD_BEEF, 100), jump_hash(0xDEAD_BEEF, 100));
    }
}
