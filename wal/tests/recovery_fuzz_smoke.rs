//! The fuzz target's property (tests/support/recovery_check.rs) on seeded random inputs, so it
//! runs in every `cargo test` and not only under cargo-fuzz: random bytes, bytes that start
//! with a valid header, and valid segments with random mutations.

mod common;
#[path = "support/recovery_check.rs"]
mod recovery_check;

use common::{seed, soak, Rng};
use recovery_check::{check_recovery_bytes, valid_segment};

#[test]
fn arbitrary_segment_bytes_never_panic_or_yield_unverified_records() {
    let mut rng = Rng::new(seed("recovery_fuzz_smoke"));
    let cases = if soak() { 5000 } else { 150 };
    for _ in 0..cases {
        let len = rng.below(400) as usize;
        let data = match rng.below(3) {
            0 => rng.bytes(len),
            1 => {
                let mut d = valid_segment(1, 1, 0);
                d.extend(rng.bytes(len));
                d
            }
            _ => {
                let mut d = valid_segment(1, 1 + rng.below(5), 1 + rng.below(8));
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(d.len() as u64) as usize;
                    d[at] ^= 1 << rng.below(8);
                }
                d.truncate(d.len() - rng.below(d.len() as u64 / 2) as usize);
                d
            }
        };
        check_recovery_bytes(&data);
    }
}
