//! Protocol policy without I/O: decisions a connection makes about the packets it receives,
//! taken by plain functions over values (configuration, packets) and returning what to do, so
//! that they are unit-tested without sockets or sleeps (like [`crate::session`]).
//!
//! - [`refusal`]: [`Refusal`], every reason the broker refuses a CONNECT, a packet or a
//!   connection, with the reason code it sends and the spec clause behind it;
//! - [`admission`]: CONNECT admission ([`admission::admit`]): client identifier, will,
//!   session expiry and keep-alive, before any session is touched;
//! - [`aliases`]: a connection's topic aliases, inbound and outbound;
//! - [`publish`]: the checks of an inbound PUBLISH that need neither session nor socket.
//!
//! `crate::broker::connection` keeps the socket loop and buffers and calls these.

pub mod admission;
pub mod aliases;
pub mod publish;
pub mod refusal;

pub use refusal::Refusal;

use crate::codec::QoS;
use crate::config::Config;

/// The highest QoS the broker grants.
pub fn max_qos(cfg: &Config) -> QoS {
    QoS::from_u8(cfg.mqtt.max_qos).unwrap_or(QoS::ExactlyOnce)
}
