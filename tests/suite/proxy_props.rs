//! Property tests of the PROXY protocol parser (`keelmq_codec::proxy`): v1 lines and v2
//! headers built from arbitrary addresses parse back to them; arbitrary bytes never panic; a
//! header cut short never parses as a different one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use keelmq::codec::proxy::{self, ProxiedAddrs};
use proptest::prelude::*;

fn v4() -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 4]>(), any::<u16>())
        .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
}

fn v6() -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 16]>(), any::<u16>())
        .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
}

fn header16(bytes: &[u8]) -> [u8; 16] {
    bytes[..16].try_into().unwrap()
}

proptest! {
    #[test]
    fn v1_lines_round_trip(src in v4(), dst in v4()) {
        let line = format!("PROXY TCP4 {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port());
        prop_assert_eq!(proxy::version(line.as_bytes()), Ok(proxy::Version::V1));
        let parsed = proxy::parse_v1(line.as_bytes()).unwrap();
        prop_assert_eq!(parsed, Some(ProxiedAddrs { source: src, destination: dst }));
    }

    #[test]
    fn v1_ipv6_lines_round_trip(src in v6(), dst in v6()) {
        let line = format!("PROXY TCP6 {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port());
        let parsed = proxy::parse_v1(line.as_bytes()).unwrap();
        prop_assert_eq!(parsed, Some(ProxiedAddrs { source: src, destination: dst }));
    }

    #[test]
    fn v2_headers_round_trip_and_cuts_are_refused(
        (src, dst) in prop_oneof![(v4(), v4()), (v6(), v6())],
        cut in 0usize..36,
    ) {
        let addrs = ProxiedAddrs { source: src, destination: dst };
        let bytes = proxy::encode_v2(&addrs);
        let header = header16(&bytes);
        prop_assert_eq!(proxy::v2_body_len(&header), Ok(bytes.len() - 16));
        prop_assert_eq!(proxy::parse_v2(&header, &bytes[16..]), Ok(Some(addrs)));
        let body = &bytes[16..];
        let short = &body[..cut.min(body.len().saturating_sub(1))];
        prop_assert!(proxy::parse_v2(&header, short).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = proxy::version(&data);
        let _ = proxy::parse_v1(&data);
        if data.len() >= 16 {
            let _ = proxy::parse_v2(&header16(&data), &data[16..]);
        }
    }
}
