//! What a rule's `FROM` names: topic filters (messages), `$events/…` (client and message
//! events, with EMQX 5's names and the later slash forms such as `$events/client/connected`),
//! or `$bridges/<kind>:<name>` (the messages a data bridge source brings in).

/// The events a rule can read: `(EMQX 5 name, slash form, the `event` field's value)`.
pub const EVENTS: [(&str, &str, &str); 12] = [
    ("message_publish", "message/publish", "message.publish"),
    (
        "message_delivered",
        "message/delivered",
        "message.delivered",
    ),
    ("message_acked", "message/acked", "message.acked"),
    ("message_dropped", "message/dropped", "message.dropped"),
    (
        "delivery_dropped",
        "message/delivery_dropped",
        "delivery.dropped",
    ),
    ("client_connected", "client/connected", "client.connected"),
    (
        "client_disconnected",
        "client/disconnected",
        "client.disconnected",
    ),
    ("client_connack", "client/connack", "client.connack"),
    (
        "client_check_authn_complete",
        "client/check_authn_complete",
        "client.check_authn_complete",
    ),
    (
        "client_check_authz_complete",
        "client/check_authz_complete",
        "client.check_authz_complete",
    ),
    (
        "session_subscribed",
        "session/subscribed",
        "session.subscribed",
    ),
    (
        "session_unsubscribed",
        "session/unsubscribed",
        "session.unsubscribed",
    ),
];

/// One source of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A topic filter: messages published to matching topics.
    Topic(String),
    /// An event, by its EMQX 5 name (`client_connected`).
    Event(&'static str),
    /// The messages source `name` of kind `kind` (`mqtt`, `kafka`) brings in, read through
    /// the topic [`bridge_topic`] names.
    Bridge { kind: &'static str, name: String },
}

/// The kinds of data bridge sources a rule can read.
pub const BRIDGE_KINDS: [&str; 2] = ["mqtt", "kafka"];

/// The topic under which rules read what source `name` of `kind` brings in
/// (`$bridges/mqtt:plant`): besides its local topic, the broker routes each message the
/// source publishes to the subscribers of this topic.
pub fn bridge_topic(kind: &str, name: &str) -> String {
    format!("$bridges/{kind}:{name}")
}

/// The source `from` names, or why it names none.
pub fn parse(from: &str) -> Result<Source, String> {
    if let Some(name) = from.strip_prefix("$events/") {
        return EVENTS
            .iter()
            .find(|(under, slash, _)| *under == name || *slash == name)
            .map(|(under, _, _)| Source::Event(under))
            .ok_or_else(|| format!("unknown event source \"{from}\""));
    }
    if let Some(bridge) = from.strip_prefix("$bridges/") {
        let unknown = || {
            format!(
                "\"{from}\": a bridge source is `$bridges/mqtt:<name>` or `$bridges/kafka:<name>`"
            )
        };
        let (kind, name) = bridge.split_once(':').ok_or_else(unknown)?;
        let kind = BRIDGE_KINDS
            .iter()
            .find(|k| **k == kind)
            .ok_or_else(unknown)?;
        let named = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !named {
            return Err(unknown());
        }
        return Ok(Source::Bridge {
            kind,
            name: name.to_string(),
        });
    }
    valid_filter(from)
        .then(|| Source::Topic(from.to_string()))
        .ok_or_else(|| format!("\"{from}\" is not a topic filter"))
}

/// The `event` field's value of an event (`client.connected`).
pub fn event_field(name: &str) -> &'static str {
    EVENTS
        .iter()
        .find(|(under, _, _)| *under == name)
        .map_or("", |(_, _, field)| field)
}

/// A well-formed MQTT topic filter (§4.7): not empty, no NUL, `#` only as the last level,
/// `+` and `#` only as whole levels.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') || filter.len() > usize::from(u16::MAX) {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_name_topics_or_known_events() {
        assert_eq!(parse("t/+/x/#"), Ok(Source::Topic("t/+/x/#".into())));
        assert_eq!(
            parse("$events/client_connected"),
            Ok(Source::Event("client_connected"))
        );
        assert_eq!(
            parse("$events/client/connected"),
            Ok(Source::Event("client_connected"))
        );
        assert!(parse("$events/nope").is_err());
        assert_eq!(
            parse("$bridges/mqtt:plant_1"),
            Ok(Source::Bridge {
                kind: "mqtt",
                name: "plant_1".into()
            })
        );
        assert_eq!(bridge_topic("kafka", "k"), "$bridges/kafka:k");
        for bad in [
            "$bridges/mqtt:",
            "$bridges/http:x",
            "$bridges/mqtt",
            "$bridges/mqtt:a/b",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("a/#/b").is_err());
        assert!(parse("a/b+").is_err());
        assert!(parse("").is_err());
        assert_eq!(event_field("session_subscribed"), "session.subscribed");
    }
}
