//! Any bytes as a KMIP response (TTLV): the decoder and the message reader
//! refuse them with a typed error and never panic; what decodes re-encodes
//! to bytes that decode to the same item.
#![no_main]

use atrest_keyprovider::ttlv::{Item, read_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(item) = Item::decode(data) {
        let bytes = item.encode().expect("a decoded item encodes");
        assert_eq!(Item::decode(&bytes).expect("re-decodes"), item);
    }
    let mut r = std::io::Cursor::new(data);
    if let Ok(Ok(msg)) = read_message(&mut r) {
        let _ = Item::decode(msg.expose());
    }
});
