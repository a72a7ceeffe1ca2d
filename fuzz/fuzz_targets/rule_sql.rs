//! Arbitrary bytes as rule SQL: compiling never panics, an error names a line and column, and a
//! rule that compiles prints to SQL that compiles to the same statement; applying it to a
//! sample message never panics.
#![no_main]

use keelmq_rules::Rule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    match Rule::compile(sql) {
        Ok(rule) => {
            let printed = rule.statement().to_string();
            let again = Rule::compile(&printed).expect("printed SQL compiles");
            assert_eq!(again.statement().to_string(), printed);
            let input = serde_json::json!({
                "clientid": "c", "topic": "t/a", "qos": 1,
                "payload": "{\"a\": [1, 2, {\"b\": \"x\"}], \"n\": 3.5}"
            });
            if let serde_json::Value::Object(m) = input {
                let _ = rule.apply(&m);
            }
        }
        Err(e) => assert!(e.line >= 1 && e.column >= 1),
    }
});
