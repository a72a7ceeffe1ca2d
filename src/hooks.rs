//! The hooks features plug into, each with an allow-all default and called at exactly one
//! place:
//!
//! - [`Authenticator`] (async), called once per CONNECT after admission and before the session
//!   is touched (`broker::connection::accept`): it sees the [`ConnInfo`] and the CONNECT and
//!   returns an [`Identity`] or a [`Refusal`];
//! - [`Authorizer`] (synchronous), called for every PUBLISH after topic-alias resolution on the
//!   pipelined path (`Connection::on_publish`) and for every SUBSCRIBE filter
//!   (`Broker::subscribe_one`); the broker holds it behind a lock-free-to-read `Arc` it can
//!   swap at run time (hot reload of rules);
//! - [`PublishRules`] (synchronous), asked for the outputs of every publish while it is planned
//!   (`Broker::plan_publish`): the rule engine's inline rules, whose outputs share the
//!   message's commit;
//! - the event sink ([`Event`]s through bounded channels, [`crate::broker::Broker::events`]):
//!   messages are reported only once durable and visible (`Broker::reveal`), so a listener
//!   never sees a message a crash could take back; a full channel drops the event and counts it
//!   (`events_dropped`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::codec::{Connect, QoS};
use crate::protocol::Refusal;
use crate::router::ClientId;
use crate::session::Message;
use crate::transport::ConnInfo;

/// Who a connection is, as its authenticator established it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub username: Option<String>,
    /// Bypasses authorization.
    pub superuser: bool,
    /// The client's own rules (a token's ACL claim, the HTTP authenticator's answer): asked
    /// before the authorizer; what they do not decide, the authorizer does.
    pub rules: Option<Arc<keelmq_auth::Acl>>,
    /// When the credentials stop being valid (a token's `exp`): the connection is closed then.
    pub expires_at: Option<std::time::SystemTime>,
    /// The client's address, set by the broker (what rules see as `peerhost`).
    pub peerhost: Option<std::net::IpAddr>,
}

/// The one authorization decision, for every PUBLISH, SUBSCRIBE filter and will: a superuser
/// may; else the client's own rules decide if they can; else the authorizer.
pub fn authorize(
    authorizer: &dyn Authorizer,
    client: &Client<'_>,
    action: keelmq_auth::Action,
    topic: &str,
    qos: QoS,
    retain: bool,
) -> bool {
    let identity = client.identity;
    if identity.superuser {
        return true;
    }
    if let Some(rules) = &identity.rules {
        let who = keelmq_auth::Who {
            client_id: client.client_id,
            username: identity.username.as_deref(),
        };
        match rules.check(who, action, topic) {
            keelmq_auth::Decision::Allow => return true,
            keelmq_auth::Decision::Deny => return false,
            keelmq_auth::Decision::NoMatch => {}
        }
    }
    match action {
        keelmq_auth::Action::Publish => authorizer.may_publish(client, topic, qos, retain),
        keelmq_auth::Action::Subscribe => authorizer.may_subscribe(client, topic, qos),
    }
}

/// What an authenticator returns: boxed, so that authenticators can be trait objects.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Identity, Refusal>> + Send + 'a>>;

/// Decides whether a CONNECT may attach a session.
pub trait Authenticator: Send + Sync {
    fn authenticate<'a>(&'a self, info: &'a ConnInfo, connect: &'a Connect) -> AuthFuture<'a>;
}

/// Decides what an authenticated client may publish and subscribe to.
pub trait Authorizer: Send + Sync {
    fn may_publish(&self, client: &Client<'_>, topic: &str, qos: QoS, retain: bool) -> bool;
    fn may_subscribe(&self, client: &Client<'_>, filter: &str, qos: QoS) -> bool;
}

/// Rules evaluated on the publish path (the rule engine's inline topic rules): what they make
/// of a message is planned, logged and made visible together with the message itself
/// (`Broker::plan_publish`), so an acknowledged message has its outputs and a crash can
/// neither lose nor repeat one.
pub trait PublishRules: Send + Sync {
    /// The messages the rules make of `message`; empty when no rule reads its topic. Called
    /// once per publish (a held publish is retried with the same outputs). `queued_for`: the
    /// broker's durable consumer sessions (client ids) this publish queues `message` for; a
    /// rule whose own consumer session is among them leaves the message to it, so a rule
    /// moving between a consumer and inline reads every message exactly one way.
    fn outputs(
        &self,
        broker: &crate::broker::Broker,
        message: &Message,
        queued_for: &[ClientId],
    ) -> Vec<Message>;
}

/// The client an authorization question is about.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub client_id: &'a str,
    pub identity: &'a Identity,
}

/// Lets every client in (anonymous unless it sent a username) and everything through.
#[derive(Debug, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate<'a>(&'a self, _info: &'a ConnInfo, connect: &'a Connect) -> AuthFuture<'a> {
        let identity = Identity {
            username: connect.username.clone(),
            ..Identity::default()
        };
        Box::pin(std::future::ready(Ok(identity)))
    }
}

impl Authorizer for AllowAll {
    fn may_publish(&self, _: &Client<'_>, _: &str, _: QoS, _: bool) -> bool {
        true
    }

    fn may_subscribe(&self, _: &Client<'_>, _: &str, _: QoS) -> bool {
        true
    }
}

/// Something that happened, for the event sink (the rule engine's `$events/…` read these).
#[derive(Debug, Clone)]
pub enum Event {
    /// A session was attached to a connection (the CONNACK is being sent).
    Connected {
        client_id: ClientId,
        peer: std::net::SocketAddr,
        info: Arc<ConnectedInfo>,
    },
    /// A connection detached from its session, for `reason` (EMQX's names: `normal`,
    /// `takenover`, `sock_closed`, `shutdown`, or the refusal that closed it).
    Disconnected {
        client_id: ClientId,
        reason: &'static str,
    },
    /// A CONNACK went out: 0 (accepted) or the reason code of the refusal.
    ConnAck {
        client_id: Arc<str>,
        username: Option<String>,
        peer: std::net::SocketAddr,
        reason_code: u8,
    },
    /// The authentication chain decided about a CONNECT.
    Authenticated {
        client_id: Arc<str>,
        username: Option<String>,
        peer: std::net::SocketAddr,
        allowed: bool,
        superuser: bool,
    },
    /// An authorization decision (`action`: `publish` or `subscribe`).
    Authorized {
        client_id: Arc<str>,
        username: Option<String>,
        topic: String,
        action: &'static str,
        allowed: bool,
    },
    Subscribed {
        client_id: ClientId,
        filter: String,
        qos: QoS,
    },
    Unsubscribed {
        client_id: ClientId,
        filter: String,
    },
    /// A message is durable and visible to its subscribers (`deliveries` sessions).
    Published {
        message: Arc<Message>,
        deliveries: usize,
    },
    /// A delivery left for its subscriber: written to its connection (or taken by an
    /// in-process session). `packet_id` 0 for QoS 0.
    Delivered {
        client_id: ClientId,
        message: Arc<Message>,
        packet_id: crate::session::PacketId,
        qos: QoS,
    },
    /// A QoS 1/2 delivery was acknowledged by its subscriber (PUBACK, or PUBCOMP).
    Acked {
        client_id: ClientId,
        packet_id: crate::session::PacketId,
        message: Arc<Message>,
    },
    /// A copy was not queued for a subscriber whose queue was full.
    Dropped {
        client_id: ClientId,
        message: Arc<Message>,
    },
}

/// A set of [`Event`] kinds: what an event channel receives ([`crate::broker::Broker::events_of`]).
/// Events of a kind no channel wants are never built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKinds(pub u32);

impl EventKinds {
    pub const CONNECTED: EventKinds = EventKinds(1);
    pub const DISCONNECTED: EventKinds = EventKinds(1 << 1);
    pub const CONNACK: EventKinds = EventKinds(1 << 2);
    pub const AUTHENTICATED: EventKinds = EventKinds(1 << 3);
    pub const AUTHORIZED: EventKinds = EventKinds(1 << 4);
    pub const SUBSCRIBED: EventKinds = EventKinds(1 << 5);
    pub const UNSUBSCRIBED: EventKinds = EventKinds(1 << 6);
    pub const PUBLISHED: EventKinds = EventKinds(1 << 7);
    pub const DELIVERED: EventKinds = EventKinds(1 << 8);
    pub const ACKED: EventKinds = EventKinds(1 << 9);
    pub const DROPPED: EventKinds = EventKinds(1 << 10);
    pub const ALL: EventKinds = EventKinds((1 << 11) - 1);
    pub const NONE: EventKinds = EventKinds(0);

    pub fn union(self, other: EventKinds) -> EventKinds {
        EventKinds(self.0 | other.0)
    }

    pub fn contains(self, other: EventKinds) -> bool {
        self.0 & other.0 != 0
    }
}

/// What a CONNECT said, for [`Event::Connected`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedInfo {
    pub username: Option<String>,
    /// The listener's address the client connected to.
    pub sockname: std::net::SocketAddr,
    /// Protocol level: 3, 4 or 5.
    pub protocol: u8,
    pub keep_alive: u16,
    pub clean_start: bool,
    pub expiry_interval: u32,
}
