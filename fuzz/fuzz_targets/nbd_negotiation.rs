//! Any bytes as the client's side of NBD option negotiation: client flags,
//! then option headers and payloads, parsed as the server parses them.
//! Never a panic; a parsed INFO/GO request re-encodes to the same bytes;
//! no payload beyond the limit is ever accepted.
#![no_main]

use atrest_nbd::negotiate::{ClientOption, OptionHeader, client_flags};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if client_flags(data).is_err() {
        return;
    }
    let mut rest = data.get(4..).unwrap_or_default();
    while rest.len() >= OptionHeader::LEN {
        let Ok(h) = OptionHeader::parse(&rest[..OptionHeader::LEN]) else {
            return;
        };
        assert!(h.len <= atrest_nbd::MAX_OPTION_LEN);
        rest = &rest[OptionHeader::LEN..];
        let n = (h.len as usize).min(rest.len());
        let payload = &rest[..n];
        if let Ok(ClientOption::Go(r) | ClientOption::Info(r)) =
            ClientOption::parse(h.option, payload)
        {
            let mut again = (r.name.len() as u32).to_be_bytes().to_vec();
            again.extend_from_slice(r.name.as_bytes());
            again.extend_from_slice(&(r.requests.len() as u16).to_be_bytes());
            for q in &r.requests {
                again.extend_from_slice(&q.to_be_bytes());
            }
            assert_eq!(again, payload);
        }
        rest = &rest[n..];
    }
});
