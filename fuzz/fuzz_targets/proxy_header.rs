//! The PROXY protocol header parser on arbitrary bytes: never panics; whatever parses as v2
//! re-encodes to a header that parses to the same addresses.
#![no_main]

use keelmq_codec::proxy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = proxy::version(data);
    if data.len() <= proxy::V1_MAX_LEN {
        let _ = proxy::parse_v1(data);
    }
    if data.len() >= 16 {
        let header: [u8; 16] = data[..16].try_into().unwrap();
        if let Ok(Some(addrs)) = proxy::parse_v2(&header, &data[16..]) {
            let again = proxy::encode_v2(&addrs);
            let header: [u8; 16] = again[..16].try_into().unwrap();
            assert_eq!(proxy::parse_v2(&header, &again[16..]), Ok(Some(addrs)));
        }
    }
});
