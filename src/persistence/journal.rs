//! The journal: every WAL [`Record`] the broker writes is built here, by a named operation on
//! broker-level values, so that the broker never spells a record out and the mapping from what
//! happened to what is logged is in one place. Which operations share a commit, and whether the
//! broker waits for it, stays the broker's decision (see ARCHITECTURE.md, "The durability
//! contract as built").

use crate::codec::{LastWill, SubscriptionOptions};
use crate::session::{Delivery, Message, PacketId};

use super::convert::{store_message, store_subscription, store_will};
use super::records::{Record, SessionRecord};

/// A persistent session's record: protocol level, expiry, and when its connection closed
/// (wall-clock ms), so that expiry counts across a restart.
pub fn session(client: &str, protocol: u8, expiry: u32, disconnected_at_ms: Option<u64>) -> Record {
    Record::Session(SessionRecord {
        client: client.to_string(),
        protocol,
        expiry_interval: expiry,
        disconnected_at_ms,
    })
}

/// The session left the store (ended, expired, or discarded by Clean Start).
pub fn session_removed(client: &str) -> Record {
    Record::SessionRemove {
        client: client.to_string(),
    }
}

/// A will now waits for its delay: due at `due_ms`, for the session disconnected at `at_ms`.
pub fn will_waiting(client: &str, will: &LastWill, at_ms: u64, due_ms: u64) -> Record {
    Record::WillSet {
        client: client.to_string(),
        will: store_will(will, at_ms, due_ms),
    }
}

/// The waiting will is gone: published, or cancelled by a resuming connection.
pub fn will_cleared(client: &str) -> Record {
    Record::WillClear {
        client: client.to_string(),
    }
}

/// A message body, logged once per commit however many sessions it is queued for.
pub fn message(message: &Message) -> Record {
    Record::Message(store_message(message))
}

/// The username a persistent session belongs to (logged with its session record).
pub fn session_owner(client: &str, username: Option<&str>) -> Record {
    Record::SessionOwner {
        client: client.to_string(),
        username: username.map(str::to_string),
    }
}

/// A delivery queued for a persistent session under `packet_id` (its body in the same commit
/// or an earlier one).
pub fn enqueued(client: &str, packet_id: PacketId, delivery: &Delivery) -> Record {
    Record::Enqueue {
        client: client.to_string(),
        packet_id,
        message_id: delivery.message.id,
        qos: delivery.qos as u8,
        retain: delivery.retain,
        subscription_ids: delivery.subscription_ids.clone(),
        shared_group: delivery.shared_group.as_ref().map(|g| g.to_string()),
    }
}

/// The delivery of `message_id` under `packet_id` left a session's queue (acknowledged,
/// expired, refused, moved or undeliverable). Naming the message keeps a later delivery that
/// reused the packet id — its `Enqueue` may reach the log first — from being removed with it.
pub fn dequeued(client: &str, packet_id: PacketId, message_id: u64) -> Record {
    Record::DequeueMessage {
        client: client.to_string(),
        packet_id,
        message_id,
    }
}

/// [`dequeued`] for each `(packet id, message id)` of `removed`.
pub fn dequeued_all(
    client: &str,
    removed: impl IntoIterator<Item = (PacketId, u64)>,
) -> Vec<Record> {
    removed
        .into_iter()
        .map(|(packet_id, message_id)| dequeued(client, packet_id, message_id))
        .collect()
}

/// The subscriber sent PUBREC for `packet_id`: a restart re-sends PUBREL, never the PUBLISH.
pub fn pubrec_received(client: &str, packet_id: PacketId) -> Record {
    Record::PubRec {
        client: client.to_string(),
        packet_id,
    }
}

/// The publisher's QoS 2 `packet_id` awaits PUBREL: a re-send is a duplicate.
pub fn inbound_qos2_received(client: &str, packet_id: u16) -> Record {
    Record::InboundQos2 {
        client: client.to_string(),
        packet_id,
    }
}

/// The publisher's QoS 2 `packet_id` was answered PUBREC 0x80 (see `Record::InboundRefused`).
pub fn inbound_qos2_refused(client: &str, packet_id: u16) -> Record {
    Record::InboundRefused {
        client: client.to_string(),
        packet_id,
    }
}

/// The publisher released its QoS 2 `packet_id` (PUBREL).
pub fn inbound_qos2_released(client: &str, packet_id: u16) -> Record {
    Record::InboundRelease {
        client: client.to_string(),
        packet_id,
    }
}

/// A retained update: the message, or its topic's deletion when the payload is empty.
pub fn retained(message: &Message) -> Record {
    if message.payload.is_empty() {
        Record::RetainDelete {
            topic: message.topic.to_string(),
        }
    } else {
        Record::RetainSet(store_message(message))
    }
}

/// A subscription of a persistent session, new or replaced.
pub fn subscribed(
    client: &str,
    filter: &str,
    options: &SubscriptionOptions,
    identifier: Option<u32>,
) -> Record {
    Record::Subscribe {
        client: client.to_string(),
        filter: filter.to_string(),
        subscription: store_subscription(options, identifier),
    }
}

/// A subscription removed.
pub fn unsubscribed(client: &str, filter: &str) -> Record {
    Record::Unsubscribe {
        client: client.to_string(),
        filter: filter.to_string(),
    }
}

/// Output `index` of `message_id` was published by the consumer `client` (same commit).
pub fn produced(client: &str, message_id: u64, index: u32) -> Record {
    Record::Produced {
        client: client.to_string(),
        message_id,
        index,
    }
}
