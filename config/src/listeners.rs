//! `[[listeners]]`: TCP, TLS, WebSocket and secure WebSocket listeners. Without any, the broker
//! listens on `[listener] bind` (one TCP listener, 127.0.0.1:1883 by default).
//!
//! This module checks what can be checked without reading files (kinds, required and
//! meaningless fields, ranges, duplicates); the broker's TLS loader checks the certificate,
//! key, CA and CRL files and names the field of the listener that refers to a bad one.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError};

/// What a listener speaks.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    /// MQTT over TCP (conventional port 1883).
    Tcp,
    /// MQTT over TLS (8883).
    Tls,
    /// MQTT over WebSocket (8083).
    Ws,
    /// MQTT over WebSocket over TLS (8084).
    Wss,
}

impl ListenerKind {
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }

    /// The conventional loopback address of a listener of this kind.
    pub fn default_bind(self) -> SocketAddr {
        let port = match self {
            ListenerKind::Tcp => 1883,
            ListenerKind::Tls => 8883,
            ListenerKind::Ws => 8083,
            ListenerKind::Wss => 8084,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Whether connections are TLS (and the TLS fields apply).
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    /// Whether connections are WebSocket (and `path` applies).
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// A TLS protocol version a listener accepts.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum TlsVersion {
    #[serde(rename = "tls1.2")]
    Tls12,
    #[serde(rename = "tls1.3")]
    Tls13,
}

/// Which part of a verified client certificate names the client.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PeerCertAs {
    /// Not used.
    #[default]
    None,
    /// The subject's Common Name.
    Cn,
    /// The whole subject Distinguished Name (RFC 4514 form, e.g. `CN=car-17,O=Fleet`).
    Dn,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerSpec {
    /// Unique; defaults to the kind.
    pub name: Option<String>,
    pub kind: ListenerKind,
    /// Defaults to the kind's conventional port on 127.0.0.1.
    pub bind: Option<SocketAddr>,
    /// Connections this listener holds at most; beyond, a new socket is closed at once, before
    /// any TLS or WebSocket work.
    pub max_connections: usize,
    /// Expect a PROXY protocol v1 or v2 header (from a load balancer) before anything else;
    /// the address it carries becomes the client's peer address.
    pub proxy_protocol: bool,
    /// TLS and WSS: the server's certificate chain, PEM, leaf first.
    pub cert_file: Option<PathBuf>,
    /// TLS and WSS: the server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// TLS and WSS: the CAs client certificates are verified against, PEM.
    pub ca_file: Option<PathBuf>,
    /// TLS and WSS: certificate revocation lists for client certificates, PEM.
    pub crl_file: Option<PathBuf>,
    /// Request a client certificate and verify it against `ca_file`.
    pub verify_peer: bool,
    /// With `verify_peer`: refuse clients that present no certificate.
    pub fail_if_no_peer_cert: bool,
    pub versions: Vec<TlsVersion>,
    /// Time a new connection has for its TLS handshake and WebSocket upgrade (and PROXY
    /// header); then it is closed.
    pub handshake_timeout_ms: u64,
    /// The verified client certificate's CN or DN becomes the username.
    pub peer_cert_as_username: PeerCertAs,
    /// The verified client certificate's CN or DN becomes the client identifier.
    pub peer_cert_as_clientid: PeerCertAs,
    /// WS and WSS: the only path upgraded (others get 404).
    pub path: String,
    /// WS and WSS: take the client's address from the first `X-Forwarded-For` entry (only
    /// behind a proxy that sets it).
    pub x_forwarded_for: bool,
    /// This listener's own `[auth]` (same fields), asked instead of the broker's for the
    /// clients it accepts.
    pub auth: Option<crate::AuthConfig>,
}

impl Default for ListenerSpec {
    fn default() -> Self {
        ListenerSpec {
            name: None,
            kind: ListenerKind::Tcp,
            bind: None,
            max_connections: 100_000,
            proxy_protocol: false,
            cert_file: None,
            key_file: None,
            ca_file: None,
            crl_file: None,
            verify_peer: false,
            fail_if_no_peer_cert: false,
            versions: vec![TlsVersion::Tls13, TlsVersion::Tls12],
            handshake_timeout_ms: 15_000,
            peer_cert_as_username: PeerCertAs::None,
            peer_cert_as_clientid: PeerCertAs::None,
            path: "/mqtt".to_string(),
            x_forwarded_for: false,
            auth: None,
        }
    }
}

impl ListenerSpec {
    /// A plain TCP listener on `bind` (what `[listener]` configures).
    pub fn tcp(bind: SocketAddr) -> ListenerSpec {
        ListenerSpec {
            bind: Some(bind),
            ..ListenerSpec::default()
        }
    }

    /// The listener's name: as configured, else its kind.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.kind.name())
    }

    /// The address it binds.
    pub fn bind(&self) -> SocketAddr {
        self.bind.unwrap_or_else(|| self.kind.default_bind())
    }
}

/// A listener problem: `listeners[i].field`.
fn bad(i: usize, field: &str, problem: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::Listener {
        field: format!("listeners[{i}].{field}"),
        problem: problem.into(),
    })
}

impl Config {
    /// The listeners to start: `[[listeners]]`, or one TCP listener on `[listener] bind`.
    pub fn effective_listeners(&self) -> Vec<ListenerSpec> {
        match self.listeners.is_empty() {
            true => vec![ListenerSpec::tcp(self.listener.bind)],
            false => self.listeners.clone(),
        }
    }

    pub(super) fn validate_listeners(&self) -> Result<(), ConfigError> {
        if !self.listeners.is_empty() && self.listener != Default::default() {
            return Err(ConfigError::Invalid {
                field: "listener.bind",
                problem: "set either [listener] or [[listeners]], not both".into(),
            });
        }
        let mut names = std::collections::HashSet::new();
        let mut binds = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            validate_one(i, l)?;
            if !names.insert(l.name()) {
                return bad(i, "name", format!("{:?} names two listeners", l.name()));
            }
            if l.bind().port() != 0 && !binds.insert(l.bind()) {
                return bad(i, "bind", format!("{} is bound by two listeners", l.bind()));
            }
        }
        Ok(())
    }
}

/// The checks of one listener that need no file.
fn validate_one(i: usize, l: &ListenerSpec) -> Result<(), ConfigError> {
    if l.name().is_empty() || l.name().contains(['/', '+', '#']) {
        return bad(i, "name", "must be non-empty, without '/', '+' or '#'");
    }
    if l.max_connections == 0 {
        return bad(i, "max_connections", "must be at least 1");
    }
    if l.handshake_timeout_ms == 0 {
        return bad(i, "handshake_timeout_ms", "must be at least 1");
    }
    if l.kind.is_tls() {
        validate_tls(i, l)?;
    } else {
        let tls_fields = [
            ("cert_file", l.cert_file.is_some()),
            ("key_file", l.key_file.is_some()),
            ("ca_file", l.ca_file.is_some()),
            ("crl_file", l.crl_file.is_some()),
            ("verify_peer", l.verify_peer),
            ("fail_if_no_peer_cert", l.fail_if_no_peer_cert),
            (
                "peer_cert_as_username",
                l.peer_cert_as_username != PeerCertAs::None,
            ),
            (
                "peer_cert_as_clientid",
                l.peer_cert_as_clientid != PeerCertAs::None,
            ),
        ];
        if let Some((field, _)) = tls_fields.iter().find(|(_, set)| *set) {
            return bad(i, field, "applies only to kind \"tls\" or \"wss\"");
        }
    }
    if l.kind.is_websocket() {
        if !l.path.starts_with('/') {
            return bad(i, "path", "must start with '/'");
        }
    } else if l.x_forwarded_for {
        return bad(
            i,
            "x_forwarded_for",
            "applies only to kind \"ws\" or \"wss\"",
        );
    }
    Ok(())
}

fn validate_tls(i: usize, l: &ListenerSpec) -> Result<(), ConfigError> {
    if l.cert_file.is_none() {
        return bad(i, "cert_file", "is required for a TLS listener");
    }
    if l.key_file.is_none() {
        return bad(i, "key_file", "is required for a TLS listener");
    }
    if l.versions.is_empty() {
        return bad(
            i,
            "versions",
            "must name at least one of \"tls1.3\", \"tls1.2\"",
        );
    }
    if l.fail_if_no_peer_cert && !l.verify_peer {
        return bad(i, "fail_if_no_peer_cert", "requires verify_peer = true");
    }
    if l.verify_peer && l.ca_file.is_none() {
        return bad(i, "ca_file", "is required with verify_peer = true");
    }
    if !l.verify_peer {
        let names = [
            ("crl_file", l.crl_file.is_some()),
            (
                "peer_cert_as_username",
                l.peer_cert_as_username != PeerCertAs::None,
            ),
            (
                "peer_cert_as_clientid",
                l.peer_cert_as_clientid != PeerCertAs::None,
            ),
        ];
        if let Some((field, _)) = names.iter().find(|(_, set)| *set) {
            return bad(i, field, "requires verify_peer = true");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        let config = Config::parse(text).unwrap();
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn without_listeners_the_legacy_bind_is_one_tcp_listener() {
        let c = Config::parse("[listener]\nbind = \"127.0.0.1:1999\"\n").unwrap();
        let l = c.effective_listeners();
        assert_eq!(l.len(), 1);
        assert_eq!(
            (l[0].kind, l[0].bind(), l[0].name()),
            (ListenerKind::Tcp, "127.0.0.1:1999".parse().unwrap(), "tcp")
        );
    }

    #[test]
    fn kinds_get_their_conventional_ports_and_names() {
        let text = "[[listeners]]\nkind = \"tcp\"\n[[listeners]]\nkind = \"tls\"\ncert_file = \"c\"\nkey_file = \"k\"\n[[listeners]]\nkind = \"ws\"\n[[listeners]]\nkind = \"wss\"\ncert_file = \"c\"\nkey_file = \"k\"\n";
        let c = Config::parse(text).unwrap();
        c.validate().unwrap();
        let ports: Vec<_> = c
            .effective_listeners()
            .iter()
            .map(|l| (l.name().to_string(), l.bind().port()))
            .collect();
        assert_eq!(
            ports,
            [
                ("tcp".into(), 1883),
                ("tls".into(), 8883),
                ("ws".into(), 8083),
                ("wss".into(), 8084)
            ]
        );
    }

    #[test]
    fn bad_listeners_name_the_field() {
        let tls = "[[listeners]]\nkind = \"tls\"\n";
        assert!(
            error(tls).contains("listeners[0].cert_file"),
            "{}",
            error(tls)
        );
        let e = error(&format!(
            "{tls}cert_file = \"c\"\nkey_file = \"k\"\nfail_if_no_peer_cert = true\n"
        ));
        assert!(e.contains("listeners[0].fail_if_no_peer_cert"), "{e}");
        let e = error(&format!(
            "{tls}cert_file = \"c\"\nkey_file = \"k\"\nverify_peer = true\n"
        ));
        assert!(e.contains("listeners[0].ca_file"), "{e}");
        let e = error("[[listeners]]\nkind = \"tcp\"\ncert_file = \"c\"\n");
        assert!(
            e.contains("listeners[0].cert_file") && e.contains("only"),
            "{e}"
        );
        let e = error("[[listeners]]\nbind = \"127.0.0.1:1000\"\n[[listeners]]\nname = \"b\"\nbind = \"127.0.0.1:1000\"\n");
        assert!(e.contains("listeners[1].bind"), "{e}");
        let e = error(
            "[[listeners]]\nkind = \"ws\"\n[[listeners]]\nkind = \"ws\"\nbind = \"127.0.0.1:1\"\n",
        );
        assert!(e.contains("listeners[1].name"), "{e}");
        let e = error("[[listeners]]\nkind = \"ws\"\npath = \"mqtt\"\n");
        assert!(e.contains("listeners[0].path"), "{e}");
        let e = error("[listener]\nbind = \"127.0.0.1:1999\"\n[[listeners]]\nkind = \"ws\"\n");
        assert!(e.contains("listener.bind"), "{e}");
        let e = Config::parse("[[listeners]]\nkind = \"quic\"\n").unwrap_err();
        assert!(e.contains("kind"), "{e}");
        let e =
            Config::parse("[[listeners]]\nkind = \"tls\"\nversions = [\"ssl3\"]\n").unwrap_err();
        assert!(e.contains("ssl3"), "{e}");
    }

    #[test]
    fn ephemeral_ports_may_repeat() {
        let c = Config::parse("[[listeners]]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n").unwrap();
        c.validate().unwrap();
    }
}
