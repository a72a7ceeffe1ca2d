//! The records KeelMQ writes to its write-ahead log, and the values it keeps in the state
//! store.
//!
//! # Encoding
//! A WAL record's type byte is the format version of its payload ([`RECORD_V1`],
//! [`RECORD_V2`], [`RECORD_V3`] or [`RECORD_V4`]), which is the list of [`Record`]s of one commit encoded with `postcard` (a documented, stable, compact
//! serde format: varint integers, length-prefixed strings and byte strings, enum variants as
//! varint indices). One commit is one WAL record, so it is atomic: a crash can never keep the
//! "packet id awaiting PUBREL" of a message and lose the message's deliveries.
//! State-store values are [`VALUE_V1`] followed by the `postcard` encoding of the value type.
//! New fields or variants get a new version byte; old versions stay readable.
//!
//! Every record describes a change by its final value (set or delete) so that replaying it on
//! the image reproduces the state exactly; queue order comes from the order of application.

use serde::{Deserialize, Serialize};

/// WAL record type: a postcard-encoded list of [`Record`]s (one commit), format 1.
pub const RECORD_V1: u8 = 1;
/// Format 2: format 1 plus the variants [`Record::WillSet`] and [`Record::WillClear`]. Only a
/// commit that holds one of them is written as format 2, so a log without pending wills stays
/// readable by a build that knows only format 1.
pub const RECORD_V2: u8 = 2;
/// Format 3: format 2 plus the variants [`Record::DequeueMessage`], which names the message it
/// removes, and [`Record::SessionOwner`]. Only a commit that holds one is written as format 3.
pub const RECORD_V3: u8 = 3;
/// Format 4: format 3 plus [`Record::Produced`]. Only a commit that holds one is written as
/// format 4.
pub const RECORD_V4: u8 = 4;
/// Format 5: format 4 plus [`Record::InboundRefused`], and packet ids of queue entries above
/// 65,535 (a broker-internal reader's). Only a commit that holds one is written as format 5.
pub const RECORD_V5: u8 = 5;
/// First byte of every state-store value: format 1.
pub const VALUE_V1: u8 = 1;

/// A message body as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: u64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    pub user_properties: Vec<(String, String)>,
    /// Wall-clock expiry in milliseconds since the Unix epoch, so that expiry holds across
    /// restarts.
    pub expires_at_ms: Option<u64>,
    pub publisher: Option<String>,
}

/// A will waiting for its Will Delay Interval after its connection closed (§3.1.3.2), kept
/// so that a restart still publishes it when it is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWill {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub payload_format_indicator: Option<u8>,
    /// Counted from publication, as in the CONNECT.
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    pub user_properties: Vec<(String, String)>,
    /// When it is due: ms since the Unix epoch (wall clock, so it holds across a restart).
    pub due_at_ms: u64,
    /// The disconnect it belongs to: the `disconnected_at_ms` of the session record logged with
    /// it. A stored will whose session record says otherwise is stale (the session was resumed
    /// by a build that did not log wills) and is dropped.
    pub disconnected_at_ms: u64,
}

/// A persistent session's own record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub client: String,
    /// Protocol level: 3, 4 or 5.
    pub protocol: u8,
    pub expiry_interval: u32,
    /// When the last connection closed (ms since the Unix epoch); `None` while connected.
    pub disconnected_at_ms: Option<u64>,
}

/// A subscription as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    /// Subscription options byte as on the wire (§3.8.3.1).
    pub options: u8,
    pub identifier: Option<u32>,
}

/// An outbound delivery of a persistent session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDelivery {
    /// Position in the session's queue (order of application).
    pub order: u64,
    pub message_id: u64,
    pub qos: u8,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    pub shared_group: Option<String>,
    /// The client sent PUBREC: PUBREL is due, never the PUBLISH again.
    pub awaiting_pubcomp: bool,
    /// When the message expires (ms since the Unix epoch), so that an offline queue can drop
    /// it without reading its body. Stored after the other fields (see [`encode_delivery`]).
    #[serde(skip)]
    pub expires_at_ms: Option<u64>,
}

/// One change to the durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Create or update a persistent session.
    Session(SessionRecord),
    /// The session ended: remove it with its subscriptions, queue and inbound ids.
    SessionRemove {
        client: String,
    },
    Subscribe {
        client: String,
        filter: String,
        subscription: StoredSubscription,
    },
    Unsubscribe {
        client: String,
        filter: String,
    },
    /// A message body that queue entries refer to.
    Message(StoredMessage),
    /// A delivery queued for a session under `packet_id` (its order is assigned on apply).
    Enqueue {
        client: String,
        /// A [`crate::session::PacketId`]: postcard writes u16 and u32 alike (varint), so
        /// logs written when it was a u16 read the same.
        packet_id: u32,
        message_id: u64,
        qos: u8,
        retain: bool,
        subscription_ids: Vec<u32>,
        shared_group: Option<String>,
    },
    /// The delivery under `packet_id` is complete (PUBACK, PUBCOMP) or removed. Written by
    /// older builds; [`Record::DequeueMessage`] replaces it.
    Dequeue {
        client: String,
        packet_id: u32,
    },
    /// The client PUBRECed the delivery under `packet_id`.
    PubRec {
        client: String,
        packet_id: u32,
    },
    /// Inbound QoS 2 `packet_id` was accepted and awaits PUBREL.
    InboundQos2 {
        client: String,
        packet_id: u16,
    },
    /// Inbound QoS 2 `packet_id` was released (PUBCOMP is due).
    InboundRelease {
        client: String,
        packet_id: u16,
    },
    /// Set the retained message of its topic.
    RetainSet(StoredMessage),
    RetainDelete {
        topic: String,
    },
    /// (Format 2.) The session's connection closed and its will waits for its delay.
    WillSet {
        client: String,
        will: StoredWill,
    },
    /// (Format 2.) The session's waiting will is gone: published (in the same commit as its
    /// deliveries) or cancelled by a resuming connection.
    WillClear {
        client: String,
    },
    /// (Format 3.) The delivery of `message_id` under `packet_id` is complete (PUBACK, PUBCOMP)
    /// or removed. A delivery of another message under that packet id stays: the id was freed
    /// in memory before this record reached the log, and a new delivery that took it may have
    /// reached the log first.
    DequeueMessage {
        client: String,
        packet_id: u32,
        message_id: u64,
    },
    /// (Format 3.) The username the session belongs to (`None`: a client without one). While
    /// authentication is configured, only that username (or a superuser) may resume, take
    /// over or replace the session.
    SessionOwner {
        client: String,
        username: Option<String>,
    },
    /// (Format 4.) A durable consumer of the session (a rule) published output `index` of the
    /// message `message_id` it was delivered; logged in the same commit as that output. It
    /// lasts until the delivery of `message_id` leaves the session's queue, so processing the
    /// message again after a crash skips the outputs already published.
    Produced {
        client: String,
        message_id: u64,
        index: u32,
    },
    /// (Format 5.) Inbound QoS 2 `packet_id` was answered PUBREC 0x80 (an `ack = "delivered"`
    /// sink did not confirm its message): it no longer awaits PUBREL, and a re-send of it
    /// with DUP is that message again (answered 0x80 again, never routed); a PUBLISH under it
    /// without DUP is a new message.
    InboundRefused {
        client: String,
        packet_id: u16,
    },
}

/// A record or value that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown format version {0}")]
    Version(u8),
    #[error("empty value")]
    Empty,
    #[error("postcard: {0}")]
    Postcard(#[from] postcard::Error),
}

impl Record {
    /// Encodes the records of one commit as one WAL payload.
    pub fn encode_batch(records: &[Record]) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail.
        postcard::to_stdvec(records).unwrap_or_default()
    }

    /// The format a record needs.
    fn version(&self) -> u8 {
        match self {
            Record::Enqueue { packet_id, .. }
            | Record::Dequeue { packet_id, .. }
            | Record::PubRec { packet_id, .. }
            | Record::DequeueMessage { packet_id, .. }
                if *packet_id > u32::from(u16::MAX) =>
            {
                RECORD_V5
            }
            Record::WillSet { .. } | Record::WillClear { .. } => RECORD_V2,
            Record::DequeueMessage { .. } | Record::SessionOwner { .. } => RECORD_V3,
            Record::Produced { .. } => RECORD_V4,
            Record::InboundRefused { .. } => RECORD_V5,
            _ => RECORD_V1,
        }
    }

    /// The WAL record type to write `records` under: the highest format one of them needs.
    pub fn batch_version(records: &[Record]) -> u8 {
        records
            .iter()
            .map(Record::version)
            .max()
            .unwrap_or(RECORD_V1)
    }

    /// Decodes one WAL record: the records of one commit. Each format is the next one without
    /// its added variants, so one decoder reads all; a record holding a variant newer than its
    /// format is refused.
    pub fn decode_batch(record_type: u8, payload: &[u8]) -> Result<Vec<Record>, DecodeError> {
        if !(RECORD_V1..=RECORD_V5).contains(&record_type) {
            return Err(DecodeError::Version(record_type));
        }
        let records: Vec<Record> = postcard::from_bytes(payload)?;
        if Self::batch_version(&records) > record_type {
            return Err(DecodeError::Version(record_type));
        }
        Ok(records)
    }
}

/// Encodes a queue entry: [`encode_value`] of its fields, then — only if its message expires —
/// the expiry as a postcard `Option<u64>`. A value without that trailer has no expiry, and a
/// reader that predates it decodes the fields and ignores the rest.
pub fn encode_delivery(d: &StoredDelivery) -> Vec<u8> {
    let mut out = encode_value(d);
    if d.expires_at_ms.is_some() {
        out.extend(postcard::to_stdvec(&d.expires_at_ms).unwrap_or_default());
    }
    out
}

/// Decodes what [`encode_delivery`] wrote (or a value written before the expiry trailer).
pub fn decode_delivery(bytes: &[u8]) -> Result<StoredDelivery, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&VALUE_V1, rest)) => {
            let (mut d, trailer): (StoredDelivery, &[u8]) = postcard::take_from_bytes(rest)?;
            if !trailer.is_empty() {
                d.expires_at_ms = postcard::from_bytes(trailer)?;
            }
            Ok(d)
        }
        Some((&v, _)) => Err(DecodeError::Version(v)),
    }
}

/// Encodes a state-store value: version byte, then postcard.
pub fn encode_value<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VALUE_V1];
    out.extend(postcard::to_stdvec(value).unwrap_or_default());
    out
}

pub fn decode_value<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&VALUE_V1, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&v, _)) => Err(DecodeError::Version(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refusals_and_wide_packet_ids_need_format_5() {
        let refused = Record::InboundRefused {
            client: "c".into(),
            packet_id: 4,
        };
        let wide = Record::DequeueMessage {
            client: "c".into(),
            packet_id: 70_000,
            message_id: 1,
        };
        let narrow = Record::DequeueMessage {
            client: "c".into(),
            packet_id: 7,
            message_id: 1,
        };
        assert_eq!(
            Record::batch_version(std::slice::from_ref(&refused)),
            RECORD_V5
        );
        assert_eq!(
            Record::batch_version(std::slice::from_ref(&wide)),
            RECORD_V5
        );
        assert_eq!(
            Record::batch_version(std::slice::from_ref(&narrow)),
            RECORD_V3
        );
        let batch = vec![refused, wide];
        let encoded = Record::encode_batch(&batch);
        assert_eq!(Record::decode_batch(RECORD_V5, &encoded).unwrap(), batch);
        assert!(Record::decode_batch(RECORD_V4, &encoded).is_err());
    }

    proptest! {
        /// A queue entry's expiry trailer round-trips, a value written without it (by a build
        /// that predates it) reads as "no expiry", and such a build reads a value with it.
        #[test]
        fn queue_entries_carry_their_expiry_compatibly(
            order in any::<u64>(),
            message_id in any::<u64>(),
            ids in proptest::collection::vec(any::<u32>(), 0..4),
            group in proptest::option::of("[a-z]{1,8}"),
            expires in proptest::option::of(any::<u64>()),
        ) {
            let d = StoredDelivery {
                order,
                message_id,
                qos: 2,
                retain: false,
                subscription_ids: ids,
                shared_group: group,
                awaiting_pubcomp: false,
                expires_at_ms: expires,
            };
            prop_assert_eq!(decode_delivery(&encode_delivery(&d)).unwrap(), d.clone());
            let old = StoredDelivery { expires_at_ms: None, ..d.clone() };
            prop_assert_eq!(decode_delivery(&encode_value(&d)).unwrap(), old.clone());
            prop_assert_eq!(decode_value::<StoredDelivery>(&encode_delivery(&d)).unwrap(), old);
        }
    }

    fn message() -> impl Strategy<Value = StoredMessage> {
        (
            any::<u64>(),
            "[a-z/]{1,20}",
            proptest::collection::vec(any::<u8>(), 0..64),
            0u8..3,
            any::<bool>(),
            proptest::option::of("[ -~]{0,10}"),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(id, topic, payload, qos, retain, ct, exp)| StoredMessage {
                id,
                topic,
                payload,
                qos,
                retain,
                payload_format_indicator: None,
                content_type: ct,
                response_topic: None,
                correlation_data: None,
                user_properties: vec![("k".into(), "v".into())],
                expires_at_ms: exp,
                publisher: Some("p".into()),
            })
    }

    proptest! {
        #[test]
        fn records_round_trip(m in message(), pid in 0u32..=65_535, client in "[a-z0-9]{0,12}") {
            for r in [
                Record::Message(m.clone()),
                Record::RetainSet(m.clone()),
                Record::Enqueue { client: client.clone(), packet_id: pid, message_id: m.id, qos: 2,
                    retain: false, subscription_ids: vec![1, 268_435_455], shared_group: Some("g".into()) },
                Record::PubRec { client: client.clone(), packet_id: pid },
                Record::Session(SessionRecord { client: client.clone(), protocol: 5,
                    expiry_interval: u32::MAX, disconnected_at_ms: Some(1) }),
            ] {
                let batch = vec![r.clone(), r];
                prop_assert_eq!(Record::batch_version(&batch), RECORD_V1);
                prop_assert_eq!(Record::decode_batch(RECORD_V1, &Record::encode_batch(&batch)).unwrap(), batch);
            }
            let will = StoredWill {
                topic: m.topic.clone(), payload: m.payload.clone(), qos: m.qos, retain: m.retain,
                payload_format_indicator: Some(1), message_expiry_interval: Some(30),
                content_type: m.content_type.clone(), response_topic: Some("r".into()),
                correlation_data: Some(vec![1, 2]), user_properties: m.user_properties.clone(),
                due_at_ms: m.expires_at_ms.unwrap_or(0),
                disconnected_at_ms: m.id,
            };
            let batch = vec![
                Record::WillSet { client: client.clone(), will },
                Record::Message(m.clone()),
                Record::WillClear { client: client.clone() },
            ];
            prop_assert_eq!(Record::batch_version(&batch), RECORD_V2);
            let encoded = Record::encode_batch(&batch);
            prop_assert_eq!(Record::decode_batch(RECORD_V2, &encoded).unwrap(), batch);
            prop_assert!(Record::decode_batch(RECORD_V1, &encoded).is_err(), "format 1 has no wills");
            let batch = vec![
                Record::DequeueMessage { client: client.clone(), packet_id: pid, message_id: m.id },
                Record::SessionOwner { client: client.clone(), username: Some(m.topic.clone()) },
                Record::SessionOwner { client: client.clone(), username: None },
                Record::WillClear { client: client.clone() },
            ];
            prop_assert_eq!(Record::batch_version(&batch), RECORD_V3);
            let encoded = Record::encode_batch(&batch);
            prop_assert_eq!(Record::decode_batch(RECORD_V3, &encoded).unwrap(), batch);
            prop_assert!(Record::decode_batch(RECORD_V2, &encoded).is_err(), "format 2 has no DequeueMessage");
            let batch = vec![
                Record::Produced { client: client.clone(), message_id: m.id, index: pid },
                Record::Message(m.clone()),
                Record::DequeueMessage { client: client.clone(), packet_id: pid, message_id: m.id },
            ];
            prop_assert_eq!(Record::batch_version(&batch), RECORD_V4);
            let encoded = Record::encode_batch(&batch);
            prop_assert_eq!(Record::decode_batch(RECORD_V4, &encoded).unwrap(), batch);
            prop_assert!(Record::decode_batch(RECORD_V3, &encoded).is_err(), "format 3 has no Produced");
            prop_assert_eq!(decode_value::<StoredMessage>(&encode_value(&m)).unwrap(), m);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Record::decode_batch(RECORD_V1, &bytes);
            let _ = Record::decode_batch(RECORD_V2, &bytes);
            let _ = Record::decode_batch(RECORD_V3, &bytes);
            let _ = Record::decode_batch(RECORD_V4, &bytes);
            let _ = decode_value::<StoredWill>(&bytes);
            let _ = decode_value::<StoredMessage>(&bytes);
            let _ = decode_value::<StoredDelivery>(&bytes);
            let _ = decode_delivery(&bytes);
            let _ = decode_value::<SessionRecord>(&bytes);
        }
    }

    #[test]
    fn versions_are_checked() {
        assert!(matches!(
            Record::decode_batch(6, &[]),
            Err(DecodeError::Version(6))
        ));
        assert!(matches!(
            decode_value::<SessionRecord>(&[9, 0]),
            Err(DecodeError::Version(9))
        ));
        assert!(matches!(
            decode_value::<SessionRecord>(&[]),
            Err(DecodeError::Empty)
        ));
    }
}
