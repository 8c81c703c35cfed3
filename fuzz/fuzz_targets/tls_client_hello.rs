//! Any bytes as the start of a TLS connection, as the NBD server's STARTTLS
//! router reads them: a verdict, a request for more bytes, or an error;
//! never a panic, and the verdict of a prefix never contradicts the whole.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = atrest_tlspsk::client_hello_offers_psk(data);
    if let Some(Ok(verdict)) = whole {
        // Once decided, more bytes do not change the answer.
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0u8; 16]);
        if let Some(Ok(v)) = atrest_tlspsk::client_hello_offers_psk(&longer) {
            assert_eq!(v, verdict);
        }
    }
    let _ = atrest_tlspsk::parse_client_hello(data);
});
