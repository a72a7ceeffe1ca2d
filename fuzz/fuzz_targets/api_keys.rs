//! Arbitrary bytes as the HTTP API's key file: parsing never panics, a refusal names a line of
//! the text, and what parses renders to text that parses to the same keys.
#![no_main]

use keelmq_auth::api_keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match api_keys::parse(text) {
        Ok(keys) => assert_eq!(api_keys::parse(&api_keys::render(&keys)), Ok(keys)),
        Err(e) => assert!(e.line >= 1 && e.line <= text.lines().count()),
    }
});
