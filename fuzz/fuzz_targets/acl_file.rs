//! Arbitrary bytes as an ACL file: parsing never panics, a refusal names its line, and every
//! parsed file answers questions about arbitrary topics and names without panicking.
#![no_main]

use keelmq_auth::{Acl, Action, Who};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The last line, a comment, doubles as the question: a topic, a client id and a username.
    let last = text.lines().last().unwrap_or("");
    let question = last.strip_prefix('#').unwrap_or(last);
    match Acl::parse(text) {
        Ok(acl) => {
            for username in [None, Some(question)] {
                let who = Who {
                    client_id: question,
                    username,
                };
                for action in [Action::Publish, Action::Subscribe] {
                    let _ = acl.check(who, action, question);
                    let _ = acl.check(who, action, "a/+/#");
                }
            }
        }
        Err(e) => assert!(e.line >= 1),
    }
});
