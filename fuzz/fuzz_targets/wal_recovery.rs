//! Arbitrary bytes as WAL segment files into the recovery reader (the pure segment scanner and
//! the full open + read path on the in-memory file system, in every recovery mode). Nothing may
//! panic, and every record returned must verify against the bytes it was read from.
//! The property lives in wal/tests/support/recovery_check.rs, shared with a regular test.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../../wal/tests/support/recovery_check.rs");

fuzz_target!(|data: &[u8]| {
    check_recovery_bytes(data);
});
