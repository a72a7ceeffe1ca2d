//! What a rule's `FROM` names: topic filters (messages) or `$events/…` (client and message
//! events), with EMQX 5's names and the later slash forms (`$events/client/connected`).

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
    if from.starts_with("$bridges/") {
        return Err(format!(
            "\"{from}\": data bridge sources are not available in this version"
        ));
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
        assert!(parse("$bridges/mqtt:x").is_err());
        assert!(parse("a/#/b").is_err());
        assert!(parse("a/b+").is_err());
        assert!(parse("").is_err());
        assert_eq!(event_field("session_subscribed"), "session.subscribed");
    }
}
