use super::*;
use proptest::prelude::*;

const FILE: &str = "\
# anonymous
topic read public/#

user alice
topic readwrite fleet/alice/#
topic deny fleet/alice/secret
topic write $SYS/broker/x

user bob
topic fleet/bob/#

pattern write devices/%c/up
pattern read users/%u/#
pattern deny devices/%c/locked
";

fn who<'a>(client_id: &'a str, username: Option<&'a str>) -> Who<'a> {
    Who {
        client_id,
        username,
    }
}

#[test]
fn mosquitto_sections_and_patterns_decide() {
    let acl = Acl::parse(FILE).unwrap();
    let (alice, anon) = (who("car-1", Some("alice")), who("car-2", None));
    use Action::*;
    use Decision::*;
    let cases = [
        (alice, Publish, "fleet/alice/pos", Allow),
        (alice, Subscribe, "fleet/alice/#", Deny), // could receive fleet/alice/secret
        (alice, Subscribe, "fleet/alice/+/x", Allow),
        (alice, Subscribe, "fleet/alice/pos", Allow),
        (alice, Publish, "fleet/alice/secret", Deny),
        (alice, Publish, "fleet/bob/pos", NoMatch),
        (alice, Subscribe, "public/#", NoMatch), // anonymous rules are not alice's
        (anon, Subscribe, "public/#", Allow),
        (anon, Subscribe, "public/a/+", Allow),
        // `#` could receive devices/car-2/locked, which a pattern denies this client.
        (anon, Subscribe, "#", Deny),
        (anon, Subscribe, "other/#", NoMatch),
        (anon, Publish, "public/a", NoMatch),
        (who("bob-1", Some("bob")), Publish, "fleet/bob/x", Allow), // readwrite by default
        (alice, Publish, "devices/car-1/up", Allow),
        (alice, Publish, "devices/car-2/up", NoMatch),
        (anon, Publish, "devices/car-2/up", Allow),
        (alice, Subscribe, "users/alice/inbox", Allow),
        (anon, Subscribe, "users/alice/inbox", NoMatch), // %u needs a username
        (alice, Publish, "devices/car-1/locked", Deny),
        (alice, Subscribe, "devices/+/locked", Deny), // could receive its own locked topic
        (alice, Subscribe, "devices/other/locked", NoMatch),
        (alice, Publish, "$SYS/broker/x", Allow),
    ];
    for (w, action, topic, expected) in cases {
        assert_eq!(
            acl.check(w, action, topic),
            expected,
            "{w:?} {action:?} {topic}"
        );
    }
}

#[test]
fn names_cannot_widen_a_pattern() {
    let acl = Acl::parse("pattern readwrite devices/%c/#\npattern read u/%u\n").unwrap();
    use Action::*;
    for id in ["+", "#", "a/b", "x+"] {
        let w = who(id, Some("+"));
        assert_eq!(
            acl.check(w, Subscribe, "devices/+/#"),
            Decision::NoMatch,
            "{id}"
        );
        assert_eq!(
            acl.check(w, Subscribe, "devices/#"),
            Decision::NoMatch,
            "{id}"
        );
        assert_eq!(acl.check(w, Subscribe, "u/+"), Decision::NoMatch);
    }
    let w = who("car", None);
    assert_eq!(acl.check(w, Subscribe, "devices/car/#"), Decision::Allow);
    assert_eq!(acl.check(w, Subscribe, "devices/+/#"), Decision::NoMatch);
    // Another client's %c rule is not this client's.
    assert_eq!(acl.check(w, Publish, "devices/other/x"), Decision::NoMatch);
}

#[test]
fn wildcards_and_dollar_topics() {
    let acl = Acl::parse("topic read #\ntopic deny $SYS/secret\n").unwrap();
    let w = who("c", None);
    assert_eq!(acl.check(w, Action::Subscribe, "a/+/b"), Decision::Allow);
    assert_eq!(
        acl.check(w, Action::Subscribe, "#"),
        Decision::Allow,
        "# misses $ topics"
    );
    assert_eq!(
        acl.check(w, Action::Subscribe, "$SYS/broker/uptime"),
        Decision::NoMatch
    );
    assert_eq!(acl.check(w, Action::Subscribe, "$SYS/#"), Decision::Deny);
}

#[test]
fn client_rules_deny_per_direction() {
    let acl = Acl::client_rules([
        (Access::ReadWrite, "t/#"),
        (Access::DenyWrite, "t/ro"),
        (Access::DenyRead, "t/wo"),
        (Access::Read, "read"),
    ])
    .unwrap();
    let w = who("c", Some("u"));
    assert_eq!(acl.check(w, Action::Publish, "t/ro"), Decision::Deny);
    assert_eq!(acl.check(w, Action::Subscribe, "t/ro"), Decision::Allow);
    assert_eq!(acl.check(w, Action::Subscribe, "t/wo"), Decision::Deny);
    assert_eq!(acl.check(w, Action::Publish, "t/wo"), Decision::Allow);
    assert_eq!(acl.check(w, Action::Subscribe, "read"), Decision::Allow);
    assert_eq!(acl.check(w, Action::Publish, "x"), Decision::NoMatch);
    assert!(Acl::client_rules([(Access::Read, "a/#/b")]).is_err());
    assert!(Acl::client_rules([(Access::Read, "")]).is_err());
}

#[test]
fn problems_name_their_line() {
    for (text, line) in [
        ("user alice\ntopic read a/#/b\n", 2),
        ("\n\ntopics read a\n", 3),
        ("user\n", 1),
        ("topic read\n", 1),
        ("topic deny a+/b\n", 1),
    ] {
        let e = Acl::parse(text).unwrap_err();
        assert_eq!(e.line, line, "{text:?}: {e}");
    }
}

/// The MQTT matching rule, written plainly, as the reference.
fn matches(filter: &str, topic: &str) -> bool {
    let (f, t): (Vec<&str>, Vec<&str>) = (filter.split('/').collect(), topic.split('/').collect());
    if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
        return false;
    }
    for (i, level) in f.iter().enumerate() {
        if *level == "#" {
            return true;
        }
        match t.get(i) {
            Some(x) if *level == "+" || level == x => {}
            _ => return false,
        }
    }
    f.len() == t.len()
}

fn filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![Just("a"), Just("b"), Just("$s"), Just("+")];
    (proptest::collection::vec(level, 1..4), any::<bool>()).prop_map(|(levels, hash)| {
        let mut f = levels.join("/");
        if hash {
            f.push_str("/#");
        }
        f
    })
}

fn topics() -> Vec<String> {
    let mut out = vec![String::new()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for t in &out {
            for l in ["a", "b", "$s", "c"] {
                next.push(if t.is_empty() {
                    l.to_string()
                } else {
                    format!("{t}/{l}")
                });
            }
        }
        out.extend(next);
    }
    out.retain(|t| !t.is_empty());
    out
}

proptest! {
    #[test]
    fn covers_and_overlaps_agree_with_matching(rule in filter(), asked in filter()) {
        let acl = Acl::parse(&format!("topic read {rule}\n")).unwrap();
        let r = &acl.anonymous[0];
        let w = who("c", None);
        let asked_levels: Vec<&str> = asked.split('/').collect();
        let both: Vec<String> = topics().into_iter().filter(|t| matches(&asked, t)).collect();
        if r.covers(&asked_levels, w) {
            for t in &both {
                prop_assert!(matches(&rule, t), "{rule} covers {asked} but not {t}");
            }
        }
        let shared = both.iter().any(|t| matches(&rule, t));
        if shared {
            prop_assert!(r.overlaps(&asked_levels, w), "{rule} and {asked} share a topic");
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        if let Ok(acl) = Acl::parse(&text) {
            let _ = acl.check(who("c", Some("u")), Action::Subscribe, "a/+/#");
            let _ = acl.check(who("c", None), Action::Publish, "a/b");
        }
    }
}
