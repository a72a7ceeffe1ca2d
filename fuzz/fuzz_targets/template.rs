//! Arbitrary bytes as a `${…}` template of a rule action or a sink: parsing never panics, an
//! error names a position, and what parses prints to a template that parses to the same text
//! and renders the same. As a sink's SQL template: never panics, and a statement that parses
//! has a parameter for every placeholder outside quotes and a value for every parameter.
#![no_main]

use keelmq_rules::eval::Env;
use keelmq_rules::template::{SqlTemplate, Template};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match Template::parse(source) {
        Ok(t) => {
            let printed = t.to_string();
            let again = Template::parse(&printed).expect("a printed template parses");
            assert_eq!(again.to_string(), printed);
            let fields = serde_json::json!({"clientid": "c", "payload": "{\"a\": 1}"});
            if let serde_json::Value::Object(m) = fields {
                assert_eq!(again.render(&m), t.render(&m));
            }
        }
        Err(e) => assert!(e.line >= 1 && e.column >= 1),
    }
    if let Ok(sql) = SqlTemplate::parse(source) {
        assert!(!sql.statement.contains("${"), "{}", sql.statement);
        let values = sql.values(&mut Env::new(serde_json::Map::new()));
        for n in 1..=values.len() {
            assert!(sql.statement.contains(&format!("${n}")), "${n} in {}", sql.statement);
        }
    }
});
