//! Arbitrary bytes into a server-side decoder (version learnt from CONNECT) and a 5.0 decoder.
//! Nothing may panic; whatever decodes must re-encode and decode to the same packet.
#![no_main]

use bytes::BytesMut;
use keelmq_codec::{encode, Decoder, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for mut decoder in [
        Decoder::new(1 << 16),
        Decoder::with_version(ProtocolVersion::V5, 1 << 16),
    ] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decoder.decode(&mut buf) {
            let v = decoder.version().unwrap_or(ProtocolVersion::V3_1_1);
            let mut out = BytesMut::new();
            encode(&packet, v, &mut out).expect("a decoded packet re-encodes");
            let again = Decoder::with_version(v, 1 << 16).decode(&mut out);
            assert_eq!(
                again,
                Ok(Some(packet)),
                "re-encoded packet decodes to itself"
            );
        }
    }
});
