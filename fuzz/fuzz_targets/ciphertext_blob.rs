//! Any bytes as a ciphertext blob, raw and as a mutation of a real blob:
//! Decrypt refuses them with a client error and never panics.
#![no_main]

use atrest_kms::Operation;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let _ = atrest_kms::blob::parse(data);
    let f = common::fixture();
    // Overlay the input on a genuine blob so the header often parses.
    let body = format!(
        r#"{{"KeyId":"{}","Plaintext":"AAECAwQFBgcICQ=="}}"#,
        f.key_id
    );
    let out = f
        .call(Operation::Encrypt, body.as_bytes())
        .expect("encrypt");
    let text = String::from_utf8_lossy(&out);
    let i = text.find("\"CiphertextBlob\":\"").expect("blob") + 18;
    let j = text[i..].find('"').expect("end") + i;
    let mut blob = B64.decode(&text[i..j]).expect("base64");
    for (k, b) in data.iter().enumerate() {
        if let Some(slot) = blob.get_mut(k) {
            *slot ^= b;
        } else {
            blob.push(*b);
        }
    }
    for candidate in [data.to_vec(), blob] {
        let req = format!(r#"{{"CiphertextBlob":"{}"}}"#, B64.encode(&candidate));
        match f.call(Operation::Decrypt, req.as_bytes()) {
            Ok(_) => assert!(data.iter().all(|b| *b == 0), "a changed blob decrypted"),
            Err(e) => assert!(!e.is_server_fault(), "{e:?}"),
        }
    }
});
