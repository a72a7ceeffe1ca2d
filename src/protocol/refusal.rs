//! Typed refusals: instead of reason strings, every refusal is a variant that names the rule it
//! enforces; tests compare them with `assert_eq!`, metrics can count them by [`Refusal::name`],
//! and the reason code and reason string a client receives come from here.

use std::fmt;

use crate::codec::{DecodeError, ReasonCode};

/// Why the broker refuses a CONNECT (CONNACK with an error code) or ends a connection
/// (DISCONNECT with a reason code in 5.0; the socket closed in 3.x).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    // ---- CONNECT admission
    /// The client identifier is longer than `mqtt.max_client_id_len`.
    ClientIdTooLong,
    /// An empty client identifier where the version does not allow one [MQTT-3.1.3-8].
    ClientIdEmpty,
    /// A client identifier the broker keeps for its own sessions (`$rule/…`).
    ClientIdReserved,
    /// MQTT 5 enhanced authentication (an Authentication Method) is not offered.
    EnhancedAuthUnsupported,
    /// The will's QoS is above the broker's maximum QoS.
    WillQosAboveMaximum,
    /// A retained will while `mqtt.retain_available` is off.
    RetainedWillUnsupported,
    /// A will topic starting with `$` (the broker's).
    WillTopicReserved,
    /// A will topic with more levels than `limits.max_topic_levels`.
    WillTopicTooDeep,
    /// The CONNACK cannot be encoded (e.g. response information over 65,535 bytes).
    ConnackUnencodable,
    /// `limits.max_connections` connections are open.
    TooManyConnections,
    /// `limits.max_sessions` sessions exist and this CONNECT would create another.
    TooManySessions,
    /// The session record could not be made durable.
    SessionNotStored,
    /// Wrong username or password, or an invalid token (an authenticator's answer).
    BadCredentials,
    /// Not allowed: a CONNECT an authenticator refuses, or a PUBLISH the authorizer refuses.
    NotAuthorized,
    /// The credentials the connection was admitted with expired (a token's `exp`).
    CredentialsExpired,
    // ---- a connection's packets
    /// A packet that does not decode (its own reason code and clause).
    Malformed(DecodeError),
    /// No whole packet for one and a half times the keep-alive [MQTT-3.1.2-22].
    KeepAliveTimeout,
    /// More acknowledgements waiting than packet identifiers (a client repeating them).
    AckBacklog,
    /// An `ack = "delivered"` sink's target did not confirm a 3.x client's message within
    /// `ack_timeout_ms` (a v5 client gets reason 0x80 on its acknowledgement instead).
    NotConfirmed,
    /// A Subscription Identifier while they are not available.
    SubscriptionIdsUnsupported,
    /// A Session Expiry Interval on DISCONNECT after 0 on CONNECT [MQTT-3.14.2-2].
    SessionExpiryAfterZero,
    /// A second CONNECT [MQTT-3.1.0-2].
    SecondConnect,
    /// AUTH without an Authentication Method on CONNECT.
    AuthWithoutMethod,
    /// A packet only a server may send (CONNACK, SUBACK, UNSUBACK, PINGRESP).
    ServerOnlyPacket,
    /// A Subscription Identifier on a PUBLISH from a client [MQTT-3.3.4-6].
    SubscriptionIdFromClient,
    /// A PUBLISH above the broker's maximum QoS [MQTT-3.2.2-11].
    QosAboveMaximum,
    /// RETAIN while `mqtt.retain_available` is off [MQTT-3.2.2-14].
    RetainUnsupported,
    /// A Topic Alias above the broker's Topic Alias Maximum [MQTT-3.3.2-9].
    TopicAliasAboveMaximum,
    /// A Topic Alias with an empty topic that was never set [MQTT-3.3.4-4] (as a Protocol Error).
    UnknownTopicAlias,
    /// More unacknowledged QoS 1/2 PUBLISH packets than the Receive Maximum [MQTT-3.3.4-9].
    ReceiveMaximumExceeded,
    /// A topic with more levels than `limits.max_topic_levels`.
    TopicTooDeep,
    /// A client's PUBLISH to a `$` topic (5.0; 3.x publishes there are acknowledged and dropped).
    TopicReserved,
    /// A payload that is not UTF-8 although its Payload Format Indicator says so [MQTT-3.3.2-4].
    PayloadNotUtf8,
    /// What was to be acknowledged could not be made durable.
    NotStored,
}

impl Refusal {
    /// The reason code sent (CONNACK, DISCONNECT, or PUBACK/PUBREC where the refusal is
    /// per-message).
    pub fn reason_code(self) -> ReasonCode {
        use Refusal::*;
        match self {
            ClientIdTooLong | ClientIdEmpty | ClientIdReserved => {
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID
            }
            EnhancedAuthUnsupported => ReasonCode::BAD_AUTHENTICATION_METHOD,
            WillQosAboveMaximum | QosAboveMaximum => ReasonCode::QOS_NOT_SUPPORTED,
            RetainedWillUnsupported | RetainUnsupported => ReasonCode::RETAIN_NOT_SUPPORTED,
            WillTopicReserved | WillTopicTooDeep | TopicTooDeep => ReasonCode::TOPIC_NAME_INVALID,
            ConnackUnencodable | NotStored => ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
            NotConfirmed => ReasonCode::UNSPECIFIED_ERROR,
            TooManyConnections => ReasonCode::SERVER_BUSY,
            TooManySessions => ReasonCode::QUOTA_EXCEEDED,
            SessionNotStored => ReasonCode::SERVER_UNAVAILABLE,
            BadCredentials => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            NotAuthorized | CredentialsExpired => ReasonCode::NOT_AUTHORIZED,
            Malformed(e) => e.reason_code(),
            KeepAliveTimeout => ReasonCode::KEEP_ALIVE_TIMEOUT,
            AckBacklog | ReceiveMaximumExceeded => ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
            SubscriptionIdsUnsupported => ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
            SessionExpiryAfterZero
            | SecondConnect
            | AuthWithoutMethod
            | ServerOnlyPacket
            | SubscriptionIdFromClient
            | UnknownTopicAlias => ReasonCode::PROTOCOL_ERROR,
            TopicAliasAboveMaximum => ReasonCode::TOPIC_ALIAS_INVALID,
            TopicReserved => ReasonCode::NOT_AUTHORIZED,
            PayloadNotUtf8 => ReasonCode::PAYLOAD_FORMAT_INVALID,
        }
    }

    /// The spec clause the refusal enforces, or `""` for a limit of this broker.
    pub fn clause(self) -> &'static str {
        use Refusal::*;
        match self {
            ClientIdEmpty => "[MQTT-3.1.3-8]",
            Malformed(e) => e.clause(),
            KeepAliveTimeout => "[MQTT-3.1.2-22]",
            SessionExpiryAfterZero => "[MQTT-3.14.2-2]",
            SecondConnect => "[MQTT-3.1.0-2]",
            SubscriptionIdFromClient => "[MQTT-3.3.4-6]",
            QosAboveMaximum => "[MQTT-3.2.2-11]",
            RetainUnsupported => "[MQTT-3.2.2-14]",
            TopicAliasAboveMaximum => "[MQTT-3.3.2-9]",
            UnknownTopicAlias => "[MQTT-3.3.4-4]",
            ReceiveMaximumExceeded => "[MQTT-3.3.4-9]",
            PayloadNotUtf8 => "[MQTT-3.3.2-4]",
            _ => "",
        }
    }

    /// A short, stable, snake_case name: a metrics label.
    pub fn name(self) -> &'static str {
        use Refusal::*;
        match self {
            ClientIdTooLong => "client_id_too_long",
            ClientIdReserved => "client_id_reserved",
            ClientIdEmpty => "client_id_empty",
            EnhancedAuthUnsupported => "enhanced_auth_unsupported",
            WillQosAboveMaximum => "will_qos_above_maximum",
            RetainedWillUnsupported => "retained_will_unsupported",
            WillTopicReserved => "will_topic_reserved",
            WillTopicTooDeep => "will_topic_too_deep",
            ConnackUnencodable => "connack_unencodable",
            TooManyConnections => "too_many_connections",
            TooManySessions => "too_many_sessions",
            SessionNotStored => "session_not_stored",
            BadCredentials => "bad_credentials",
            NotAuthorized => "not_authorized",
            CredentialsExpired => "credentials_expired",
            Malformed(_) => "malformed",
            KeepAliveTimeout => "keep_alive_timeout",
            AckBacklog => "ack_backlog",
            NotConfirmed => "not_confirmed",
            SubscriptionIdsUnsupported => "subscription_ids_unsupported",
            SessionExpiryAfterZero => "session_expiry_after_zero",
            SecondConnect => "second_connect",
            AuthWithoutMethod => "auth_without_method",
            ServerOnlyPacket => "server_only_packet",
            SubscriptionIdFromClient => "subscription_id_from_client",
            QosAboveMaximum => "qos_above_maximum",
            RetainUnsupported => "retain_unsupported",
            TopicAliasAboveMaximum => "topic_alias_above_maximum",
            UnknownTopicAlias => "unknown_topic_alias",
            ReceiveMaximumExceeded => "receive_maximum_exceeded",
            TopicTooDeep => "topic_too_deep",
            TopicReserved => "topic_reserved",
            PayloadNotUtf8 => "payload_not_utf8",
            NotStored => "not_stored",
        }
    }

    fn describe(self) -> &'static str {
        use Refusal::*;
        match self {
            ClientIdTooLong => "client identifier too long",
            ClientIdReserved => "client identifier reserved for the broker ($rule/…)",
            ClientIdEmpty => "empty client identifier",
            EnhancedAuthUnsupported => "enhanced authentication is not supported",
            WillQosAboveMaximum => "will QoS above the maximum QoS",
            RetainedWillUnsupported => "retained wills are not supported",
            WillTopicReserved => "will topics starting with $ are reserved",
            WillTopicTooDeep => "will topic has too many levels",
            ConnackUnencodable => "the CONNACK cannot be encoded",
            TooManyConnections => "too many connections",
            TooManySessions => "too many sessions",
            SessionNotStored => "the session could not be stored",
            BadCredentials => "bad user name or password",
            NotAuthorized => "not authorized",
            CredentialsExpired => "credentials expired",
            Malformed(_) => "malformed packet",
            KeepAliveTimeout => "keep alive timeout",
            AckBacklog => "more acknowledgements waiting than packet identifiers",
            NotConfirmed => "a sink's target did not confirm the message in time",
            SubscriptionIdsUnsupported => "subscription identifiers are not supported",
            SessionExpiryAfterZero => "session expiry set on DISCONNECT after 0 on CONNECT",
            SecondConnect => "second CONNECT",
            AuthWithoutMethod => "AUTH without an authentication method",
            ServerOnlyPacket => "packet only a server may send",
            SubscriptionIdFromClient => "subscription identifier from a client",
            QosAboveMaximum => "QoS above the maximum QoS",
            RetainUnsupported => "retain is not supported",
            TopicAliasAboveMaximum => "topic alias above the topic alias maximum",
            UnknownTopicAlias => "unknown topic alias",
            ReceiveMaximumExceeded => {
                "more unacknowledged QoS 1/2 PUBLISH than the Receive Maximum"
            }
            TopicTooDeep => "too many topic levels",
            TopicReserved => "$ topics are reserved",
            PayloadNotUtf8 => "payload is not UTF-8 as its format indicator says",
            NotStored => "could not be stored",
        }
    }
}

/// The reason string sent with the refusal: what happened, and the clause it breaks.
impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.clause()) {
            (Refusal::Malformed(e), _) => write!(f, "{e}"),
            (_, "") => f.write_str(self.describe()),
            (_, clause) => write!(f, "{} {clause}", self.describe()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_their_reason_codes_and_clauses() {
        assert_eq!(
            Refusal::TooManySessions.reason_code(),
            ReasonCode::QUOTA_EXCEEDED
        );
        assert_eq!(
            Refusal::WillTopicReserved.reason_code(),
            ReasonCode::TOPIC_NAME_INVALID
        );
        assert_eq!(
            Refusal::SecondConnect.reason_code(),
            ReasonCode::PROTOCOL_ERROR
        );
        assert_eq!(
            Refusal::SecondConnect.to_string(),
            "second CONNECT [MQTT-3.1.0-2]"
        );
        assert_eq!(Refusal::TooManySessions.to_string(), "too many sessions");
        let e = DecodeError::TopicAliasZero;
        assert_eq!(Refusal::Malformed(e).reason_code(), e.reason_code());
        assert_eq!(Refusal::Malformed(e).clause(), e.clause());
        // Every refusal is an error code.
        for r in [
            Refusal::ClientIdTooLong,
            Refusal::ConnackUnencodable,
            Refusal::KeepAliveTimeout,
            Refusal::AckBacklog,
            Refusal::TopicReserved,
            Refusal::NotStored,
        ] {
            assert!(r.reason_code().is_error(), "{r:?}");
            assert!(!r.name().is_empty());
        }
    }
}
