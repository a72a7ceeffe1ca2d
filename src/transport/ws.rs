//! MQTT over WebSocket (`ws` and `wss` listeners): the HTTP upgrade, on the configured path
//! only and with an MQTT subprotocol, and [`WsStream`], which presents the binary messages as
//! one byte stream to the connection task (an MQTT packet may span messages and a message may
//! hold several packets [MQTT-6.0.0-2, MQTT-6.0.0-3]; `keelmq_tools::ws`).

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub use keelmq_tools::ws::WsStream;

/// The subprotocols MQTT clients ask for (MQTT 3.1.1 and 5.0 use `mqtt`; older clients the
/// others).
pub const SUBPROTOCOLS: [&str; 5] = ["mqtt", "mqttv3.1", "mqtt-v3", "mqtt-v3.1.1", "mqtt-v5"];

/// Bytes a WebSocket connection reads from the socket at a time; kept small, since idle
/// connections hold it (tungstenite's default is 128 KiB).
const READ_BUFFER: usize = 4 * 1024;

/// What an accepted upgrade request carried.
#[derive(Debug, Default)]
pub struct Upgrade {
    pub headers: Vec<(String, String)>,
}

/// Why an upgrade was refused (answered with an HTTP error, then closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeRefusal {
    WrongPath,
    NoSubprotocol,
}

/// The subprotocol to answer with: the first of the client's offers that is an MQTT one.
pub fn choose_subprotocol(offered: &str) -> Option<&'static str> {
    offered.split(',').map(str::trim).find_map(|p| {
        SUBPROTOCOLS
            .iter()
            .find(|s| s.eq_ignore_ascii_case(p))
            .copied()
    })
}

/// The upgrade decision for a request: the path must be `path` and an MQTT subprotocol
/// offered.
fn decide(req: &Request, path: &str) -> Result<&'static str, UpgradeRefusal> {
    if req.uri().path() != path {
        return Err(UpgradeRefusal::WrongPath);
    }
    let offered = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(choose_subprotocol);
    offered.ok_or(UpgradeRefusal::NoSubprotocol)
}

fn error_response(status: StatusCode, why: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why.to_string()));
    *response.status_mut() = status;
    response
}

/// Performs the WebSocket upgrade on `stream`: frames are limited to `max_packet` plus a
/// little, so that one message costs at most one maximum-size packet of memory.
// The callback's error type is tungstenite's (an HTTP response), not ours to box.
#[allow(clippy::result_large_err)]
pub async fn accept<S>(
    stream: S,
    path: &str,
    max_packet: usize,
) -> Result<(WebSocketStream<S>, Upgrade), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut upgrade = Upgrade::default();
    let mut refused = None;
    let callback = |req: &Request, mut response: Response| match decide(req, path) {
        Ok(protocol) => {
            upgrade.headers = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let value = HeaderValue::from_static(protocol);
            response
                .headers_mut()
                .insert("sec-websocket-protocol", value);
            Ok(response)
        }
        Err(why) => {
            refused = Some(why);
            Err(match why {
                UpgradeRefusal::WrongPath => error_response(StatusCode::NOT_FOUND, "not found"),
                UpgradeRefusal::NoSubprotocol => error_response(
                    StatusCode::BAD_REQUEST,
                    "an MQTT subprotocol (Sec-WebSocket-Protocol: mqtt) is required",
                ),
            })
        }
    };
    let limit = max_packet + 1024;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await;
    match (ws, refused) {
        (Ok(ws), _) => Ok((ws, upgrade)),
        (Err(_), Some(why)) => Err(format!("upgrade refused: {why:?}")),
        (Err(e), None) => Err(format!("upgrade failed: {e}")),
    }
}

/// The client's address from an `X-Forwarded-For` header (its first entry).
pub fn forwarded_for(headers: &[(String, String)]) -> Option<std::net::IpAddr> {
    let (_, value) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-for"))?;
    value.split(',').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_subprotocols_are_chosen_from_offers() {
        assert_eq!(choose_subprotocol("mqtt"), Some("mqtt"));
        assert_eq!(choose_subprotocol("chat, MQTTv3.1"), Some("mqttv3.1"));
        assert_eq!(choose_subprotocol("mqtt-v5,mqtt"), Some("mqtt-v5"));
        assert_eq!(choose_subprotocol("chat"), None);
        assert_eq!(choose_subprotocol(""), None);
    }

    #[test]
    fn forwarded_for_takes_the_first_entry() {
        let h = vec![(
            "X-Forwarded-For".to_string(),
            "10.1.2.3, 192.168.0.1".to_string(),
        )];
        assert_eq!(forwarded_for(&h), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(forwarded_for(&[]), None);
        let junk = vec![("x-forwarded-for".to_string(), "nonsense".to_string())];
        assert_eq!(forwarded_for(&junk), None);
    }
}
