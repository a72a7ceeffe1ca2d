//! Protocol policy without I/O: decisions a connection makes about the packets it receives,
//! taken by plain functions over values (configuration, packets) and returning what to do, so
//! that they are unit-tested without sockets or sleeps (like [`crate::session`]).
//!
//! - [`refusal`]: [`Refusal`], every reason the broker refuses a CONNECT, a packet or a
//!   connection, with the reason code it sends and the spec clause behind it;
//! - [`admission`]: CONNECT admission ([`admission::admit`]): client identifier, will,
//!   session expiry and keep-alive, before any session is touched;
//! - [`connack`]: the CONNACK — a refusal in the client's version, or the acceptance with the
//!   broker's capabilities;
//! - [`aliases`]: a connection's topic aliases, inbound and outbound;
//! - [`publish`]: the checks of an inbound PUBLISH (packet, content, Receive Maximum) and its
//!   acknowledgement;
//! - [`requests`]: SUBSCRIBE, UNSUBSCRIBE and DISCONNECT policy;
//! - [`acks`]: the acknowledgement FIFO that keeps acknowledgements in order while their
//!   records become durable.
//!
//! `crate::broker::connection` keeps the socket loop and buffers and calls these.

pub mod acks;
pub mod admission;
pub mod aliases;
pub mod connack;
pub mod publish;
pub mod refusal;
pub mod requests;

pub use refusal::Refusal;

use crate::codec::QoS;
use crate::config::Config;

/// The highest QoS the broker grants.
pub fn max_qos(cfg: &Config) -> QoS {
    QoS::from_u8(cfg.mqtt.max_qos).unwrap_or(QoS::ExactlyOnce)
}
