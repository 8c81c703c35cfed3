//! Any operation with any body: the key service answers with a result or a
//! client error, never a panic and never a server fault.
#![no_main]

use atrest_kms::Operation;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let f = common::fixture();
    let op = Operation::ALL[usize::from(selector) % Operation::ALL.len()];
    // Bodies that name "K" are pointed at the real key, so deep paths run.
    let text = String::from_utf8_lossy(body).replace("\"K\"", &format!("\"{}\"", f.key_id));
    for input in [body, text.as_bytes()] {
        if let Err(e) = f.call(op, input) {
            assert!(!e.is_server_fault(), "{op:?}: {e:?}");
        }
    }
});
