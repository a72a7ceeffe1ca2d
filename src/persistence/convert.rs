//! Conversions between the broker's in-memory values and their stored forms. Expiry instants
//! become wall-clock times on the way out and instants again on the way in, so that a message
//! expiry and a session expiry keep counting across a restart.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::time::Instant;

use super::records::{StoredMessage, StoredSubscription, StoredWill};
use crate::codec::{
    LastWill, PublishProperties, QoS, RetainHandling, SubscriptionOptions, WillProperties,
};
use crate::session::Message;

/// Milliseconds since the Unix epoch: the wall clock, for what is stored and must mean the same
/// after a restart (disconnect times, will due times, message expiry). Not monotonic.
/// The lowest message id a broker starting now gives out: the wall clock in milliseconds
/// shifted left by 20 bits. Ids given out before a restart but never logged (QoS 0 messages,
/// events) are below it as long as the broker gave out fewer than 2^20 ids per millisecond
/// and the clock did not go back, so an id stays unique across restarts even where the log
/// cannot tell (a sink's `${id}` that a target deduplicates on).
pub fn message_id_floor() -> u64 {
    wall_clock_ms().saturating_mul(1 << 20)
}

pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wall-clock time (ms) of a monotonic instant.
pub fn instant_to_ms(at: Instant) -> u64 {
    let now = Instant::now();
    let wall = wall_clock_ms();
    if at >= now {
        wall + at.duration_since(now).as_millis() as u64
    } else {
        wall.saturating_sub(now.duration_since(at).as_millis() as u64)
    }
}

/// The monotonic instant of a wall-clock time (ms), clamped to what `Instant` can express.
pub fn ms_to_instant(ms: u64) -> Instant {
    let now = Instant::now();
    let wall = wall_clock_ms();
    if ms >= wall {
        now + Duration::from_millis(ms - wall)
    } else {
        now.checked_sub(Duration::from_millis(wall - ms))
            .unwrap_or(now)
    }
}

/// A will waiting for its delay since the disconnect at `disconnected_at_ms`, due at
/// `due_at_ms` (both ms since the Unix epoch).
pub fn store_will(w: &LastWill, disconnected_at_ms: u64, due_at_ms: u64) -> StoredWill {
    let p = &w.properties;
    StoredWill {
        topic: w.topic.to_string(),
        payload: w.payload.to_vec(),
        qos: w.qos as u8,
        retain: w.retain,
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.as_ref().map(|b| b.to_vec()),
        user_properties: p.user_properties.clone(),
        due_at_ms,
        disconnected_at_ms,
    }
}

/// The will of [`store_will`] again (its delay is spent: `due_at_ms` says when it is due).
pub fn restore_will(s: &StoredWill) -> LastWill {
    LastWill {
        topic: s.topic.as_str().into(),
        payload: Bytes::from(s.payload.clone()),
        qos: QoS::from_u8(s.qos).unwrap_or(QoS::AtLeastOnce),
        retain: s.retain,
        properties: WillProperties {
            will_delay_interval: None,
            payload_format_indicator: s.payload_format_indicator,
            message_expiry_interval: s.message_expiry_interval,
            content_type: s.content_type.clone(),
            response_topic: s.response_topic.clone(),
            correlation_data: s.correlation_data.clone().map(Bytes::from),
            user_properties: s.user_properties.clone(),
        },
    }
}

pub fn store_message(m: &Message) -> StoredMessage {
    let p = &m.properties;
    StoredMessage {
        id: m.id,
        topic: m.topic.to_string(),
        payload: m.payload.to_vec(),
        qos: m.qos as u8,
        retain: m.retain,
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.as_ref().map(|b| b.to_vec()),
        user_properties: p.user_properties.clone(),
        expires_at_ms: m.expires_at.map(instant_to_ms),
        publisher: m.publisher.as_ref().map(|c| c.to_string()),
    }
}

pub fn restore_message(s: StoredMessage) -> Arc<Message> {
    restore_message_in(s, &mut std::collections::HashMap::new())
}

/// [`restore_message`], sharing publisher ids through `publishers`: a million retained
/// messages of ten publishers then hold ten ids.
pub fn restore_message_in(
    s: StoredMessage,
    publishers: &mut std::collections::HashMap<String, crate::router::ClientId>,
) -> Arc<Message> {
    let publisher = s.publisher.map(|p| match publishers.get(&p) {
        Some(id) => id.clone(),
        None => {
            let id: crate::router::ClientId = p.as_str().into();
            publishers.insert(p, id.clone());
            id
        }
    });
    Arc::new(Message {
        id: s.id,
        topic: s.topic.into(),
        payload: Bytes::from(s.payload),
        qos: QoS::from_u8(s.qos).unwrap_or(QoS::AtMostOnce),
        retain: s.retain,
        properties: Message::properties_of(PublishProperties {
            payload_format_indicator: s.payload_format_indicator,
            content_type: s.content_type,
            response_topic: s.response_topic,
            correlation_data: s.correlation_data.map(Bytes::from),
            user_properties: s.user_properties,
            ..Default::default()
        }),
        expires_at: s.expires_at_ms.map(ms_to_instant),
        publisher,
        rules: Default::default(),
    })
}

pub fn store_subscription(o: &SubscriptionOptions, identifier: Option<u32>) -> StoredSubscription {
    let options = o.qos as u8
        | (o.no_local as u8) << 2
        | (o.retain_as_published as u8) << 3
        | (o.retain_handling as u8) << 4;
    StoredSubscription {
        options,
        identifier,
    }
}

pub fn restore_subscription(s: &StoredSubscription) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::from_u8(s.options & 3).unwrap_or(QoS::AtMostOnce),
        no_local: s.options & 0x04 != 0,
        retain_as_published: s.options & 0x08 != 0,
        retain_handling: match (s.options >> 4) & 3 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscribe,
            _ => RetainHandling::Never,
        },
    }
}
