//! The PROXY protocol header (HAProxy, versions 1 and 2) a load balancer sends before the
//! client's bytes, to tell the broker the client's real address. Pure parsing; the listener
//! reads exactly the header's bytes (never more) and calls these.
//!
//! - v1: a text line `PROXY TCP4|TCP6|UNKNOWN <src> <dst> <sport> <dport>\r\n`, at most
//!   [`V1_MAX_LEN`] bytes.
//! - v2: a 16-byte fixed header (the signature [`V2_SIGNATURE`], version and command, family,
//!   length) and `length` bytes of addresses and TLVs (TLVs are skipped).
//!
//! `LOCAL` commands (health checks) and `UNKNOWN`/`UNSPEC` families carry no client address:
//! `Ok(None)`, and the socket's own peer address stands.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest v1 line, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// The first 12 bytes of a v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v2 address block the broker accepts (addresses and TLVs).
pub const V2_MAX_BODY: usize = 1024;

/// A header that is not a valid PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PROXY protocol header: {0}")]
pub struct ProxyError(pub &'static str);

/// The client and the address it connected to, as the proxy saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxiedAddrs {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// Which version a header starting with these (at least 6) bytes is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The version of the header that starts with `prefix` (its first 6 bytes or more).
pub fn version(prefix: &[u8]) -> Result<Version, ProxyError> {
    if prefix.starts_with(b"PROXY ") {
        Ok(Version::V1)
    } else if prefix.len() >= 6 && V2_SIGNATURE.starts_with(&prefix[..prefix.len().min(12)]) {
        Ok(Version::V2)
    } else {
        Err(ProxyError("neither a v1 nor a v2 signature"))
    }
}

/// Parses a v1 line, CRLF included.
pub fn parse_v1(line: &[u8]) -> Result<Option<ProxiedAddrs>, ProxyError> {
    if line.len() > V1_MAX_LEN {
        return Err(ProxyError("v1 line longer than 107 bytes"));
    }
    let text = line
        .strip_suffix(b"\r\n")
        .ok_or(ProxyError("v1 line does not end with CRLF"))?;
    let text = std::str::from_utf8(text).map_err(|_| ProxyError("v1 line is not ASCII"))?;
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(ProxyError("v1 line does not start with PROXY"));
    }
    let family = fields
        .next()
        .ok_or(ProxyError("v1 line without a family"))?;
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let mut next = || {
        fields
            .next()
            .ok_or(ProxyError("v1 line with too few fields"))
    };
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(ProxyError("v1 line with too many fields"));
    }
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        let ip: IpAddr = s.parse().map_err(|_| ProxyError("v1 address"))?;
        match (family, ip) {
            ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
            _ => Err(ProxyError("v1 address does not match its family")),
        }
    };
    let port = |s: &str| -> Result<u16, ProxyError> {
        if s.is_empty() || (s.len() > 1 && s.starts_with('0')) {
            return Err(ProxyError("v1 port"));
        }
        s.parse().map_err(|_| ProxyError("v1 port"))
    };
    Ok(Some(ProxiedAddrs {
        source: SocketAddr::new(ip(src)?, port(sport)?),
        destination: SocketAddr::new(ip(dst)?, port(dport)?),
    }))
}

/// The length of the address block that follows a v2 fixed header (checked against
/// [`V2_MAX_BODY`]).
pub fn v2_body_len(header: &[u8; 16]) -> Result<usize, ProxyError> {
    if header[..12] != V2_SIGNATURE {
        return Err(ProxyError("v2 signature"));
    }
    if header[12] >> 4 != 2 {
        return Err(ProxyError("v2 version is not 2"));
    }
    let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
    if len > V2_MAX_BODY {
        return Err(ProxyError("v2 address block longer than 1024 bytes"));
    }
    Ok(len)
}

/// Parses a v2 header: its fixed part and the `v2_body_len` bytes after it.
pub fn parse_v2(header: &[u8; 16], body: &[u8]) -> Result<Option<ProxiedAddrs>, ProxyError> {
    if v2_body_len(header)? != body.len() {
        return Err(ProxyError("v2 address block length"));
    }
    match header[12] & 0x0F {
        0 => return Ok(None), // LOCAL: the proxy's own connection (a health check)
        1 => {}
        _ => return Err(ProxyError("v2 command")),
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match header[13] {
        // TCP or UDP over IPv4
        0x11 | 0x12 => {
            let b = body
                .get(..12)
                .ok_or(ProxyError("v2 IPv4 block too short"))?;
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            Ok(Some(ProxiedAddrs {
                source: SocketAddr::new(ip(&b[0..4]), port(&b[8..10])),
                destination: SocketAddr::new(ip(&b[4..8]), port(&b[10..12])),
            }))
        }
        // TCP or UDP over IPv6
        0x21 | 0x22 => {
            let b = body
                .get(..36)
                .ok_or(ProxyError("v2 IPv6 block too short"))?;
            let ip = |b: &[u8]| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(b);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Ok(Some(ProxiedAddrs {
                source: SocketAddr::new(ip(&b[0..16]), port(&b[32..34])),
                destination: SocketAddr::new(ip(&b[16..32]), port(&b[34..36])),
            }))
        }
        // UNSPEC or UNIX: no client address to report
        0x00 | 0x31 | 0x32 => Ok(None),
        _ => Err(ProxyError("v2 family")),
    }
}

/// A v2 header (PROXY command) for `addrs`, as a proxy would send it (for tests and tools).
pub fn encode_v2(addrs: &ProxiedAddrs) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    let (family, mut body) = match (addrs.source.ip(), addrs.destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (0x11, [s.octets(), d.octets()].concat()),
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            (0x21, [v6(s), v6(d)].concat())
        }
    };
    body.extend_from_slice(&addrs.source.port().to_be_bytes());
    body.extend_from_slice(&addrs.destination.port().to_be_bytes());
    out.push(family);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(s: &str, d: &str) -> ProxiedAddrs {
        ProxiedAddrs {
            source: s.parse().unwrap(),
            destination: d.parse().unwrap(),
        }
    }

    #[test]
    fn v1_lines() {
        let a = parse_v1(b"PROXY TCP4 192.168.0.1 10.0.0.1 56324 1883\r\n").unwrap();
        assert_eq!(a, Some(addrs("192.168.0.1:56324", "10.0.0.1:1883")));
        let a = parse_v1(b"PROXY TCP6 ::1 ::2 1 2\r\n").unwrap();
        assert_eq!(a, Some(addrs("[::1]:1", "[::2]:2")));
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n"), Ok(None));
        for bad in [
            &b"PROXY TCP4 ::1 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn v2_round_trips_and_refuses() {
        for a in [
            addrs("1.2.3.4:5", "6.7.8.9:1883"),
            addrs("[2001:db8::1]:7", "[::1]:8883"),
        ] {
            let bytes = encode_v2(&a);
            let header: [u8; 16] = bytes[..16].try_into().unwrap();
            assert_eq!(version(&bytes[..6]), Ok(Version::V2));
            assert_eq!(v2_body_len(&header), Ok(bytes.len() - 16));
            assert_eq!(parse_v2(&header, &bytes[16..]), Ok(Some(a)));
        }
        let mut local = encode_v2(&addrs("1.2.3.4:5", "6.7.8.9:1"));
        local[12] = 0x20;
        let header: [u8; 16] = local[..16].try_into().unwrap();
        assert_eq!(parse_v2(&header, &local[16..]), Ok(None));
        let mut long = header;
        long[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert!(v2_body_len(&long).is_err());
        assert!(version(b"GET / HTTP/1.1").is_err());
        assert_eq!(version(b"PROXY TCP4"), Ok(Version::V1));
    }
}
