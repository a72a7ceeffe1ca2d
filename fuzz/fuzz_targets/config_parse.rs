//! Arbitrary bytes as a configuration file: parsing and validating never panic, and a refusal
//! always says something (tests/config_props.rs checks that it names the field).
#![no_main]

use keelmq_config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(config) => {
            if let Err(e) = config.validate() {
                assert!(!e.to_string().is_empty());
            }
        }
        Err(message) => assert!(!message.is_empty()),
    }
});
