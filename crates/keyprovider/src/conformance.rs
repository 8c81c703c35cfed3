//! The conformance suite every provider passes: one list of checks, run
//! against a live provider and one of its keys. `atrest provider check`
//! runs it (operators use it to test a configuration before relying on it),
//! and the interop tests run it against a second atrest server, moto's
//! server, PyKMIP, and the Azure Key Vault and Vault transit fakes.
//!
//! The suite never changes the remote key. Revocation (disabling the key
//! at the provider) is proven by the interop tests, which can.

use atrest_crypto::SecretBytes;

use crate::{KeyProvider, MAX_DATA_KEY, ProviderError};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// What was seen (an error, or a summary).
    pub detail: String,
}

/// A key name the provider certainly does not have, in a shape it accepts.
#[must_use]
pub fn missing_key(kind: &str) -> String {
    let r = SecretBytes::random(16).map_or_else(|_| "0".repeat(32), |b| hex::encode(b.expose()));
    match kind {
        // A key id is a UUID.
        "aws-kms" => format!(
            "{}-{}-4{}-8{}-{}",
            &r[..8],
            &r[8..12],
            &r[13..16],
            &r[17..20],
            &r[20..32]
        ),
        _ => format!("atrest-conformance-missing-{}", &r[..16]),
    }
}

/// Runs every check against `key` (which must exist and be enabled) and
/// `missing` (which must not exist).
pub fn run(p: &dyn KeyProvider, key: &str, missing: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let mut check = |name: &'static str, r: Result<String, String>| {
        out.push(match r {
            Ok(detail) => Check {
                name,
                passed: true,
                detail,
            },
            Err(detail) => Check {
                name,
                passed: false,
                detail,
            },
        });
    };

    check(
        "describe: the key exists and is enabled",
        match p.describe(key) {
            Ok(d) if d.enabled && !d.id.is_empty() => Ok(format!("{} ({})", d.id, d.state)),
            Ok(d) => Err(format!("described as {d:?}")),
            Err(e) => Err(e.to_string()),
        },
    );

    check("wrap and unwrap data keys of 1, 16, 32 and 64 bytes", {
        let mut r = Ok("all round-tripped".to_owned());
        for n in [1usize, 16, 32, MAX_DATA_KEY] {
            if let Err(e) = round_trip(p, key, n) {
                r = Err(format!("{n} bytes: {e}"));
                break;
            }
        }
        r
    });

    check(
        "a wrapped key does not contain the data key",
        (|| {
            let dk = SecretBytes::random(32).map_err(|e| e.to_string())?;
            let w = p.wrap(key, dk.expose()).map_err(|e| e.to_string())?;
            if w.windows(16)
                .any(|win| dk.expose().windows(16).any(|d| d == win))
            {
                return Err("16 bytes of the data key appear in the wrapped key".into());
            }
            Ok(format!("{} bytes wrapped", w.len()))
        })(),
    );

    check(
        "wrapping twice gives two keys that both unwrap",
        (|| {
            let dk = SecretBytes::random(32).map_err(|e| e.to_string())?;
            let a = p.wrap(key, dk.expose()).map_err(|e| e.to_string())?;
            let b = p.wrap(key, dk.expose()).map_err(|e| e.to_string())?;
            for w in [&a, &b] {
                if p.unwrap(key, w).map_err(|e| e.to_string())? != dk {
                    return Err("a wrapped key unwrapped to other bytes".into());
                }
            }
            Ok(String::new())
        })(),
    );

    check(
        "an altered, truncated or empty wrapped key is refused as invalid",
        (|| {
            let dk = SecretBytes::random(32).map_err(|e| e.to_string())?;
            let w = p.wrap(key, dk.expose()).map_err(|e| e.to_string())?;
            let mut flipped = w.clone();
            let mid = flipped.len() / 2;
            flipped[mid] ^= 0x40;
            let cases: [(&str, Vec<u8>); 3] = [
                ("altered", flipped),
                ("truncated", w[..w.len() / 2].to_vec()),
                ("empty", Vec::new()),
            ];
            for (what, bad) in cases {
                match p.unwrap(key, &bad) {
                    Err(ProviderError::InvalidCiphertext(_)) => {}
                    Ok(_) => return Err(format!("the {what} wrapped key was accepted")),
                    Err(e) => {
                        return Err(format!("the {what} wrapped key: {e} (expected invalid)"));
                    }
                }
            }
            Ok(String::new())
        })(),
    );

    check(
        "a data key of 0 or 65 bytes is refused before any call",
        (|| {
            for n in [0usize, MAX_DATA_KEY + 1] {
                match p.wrap(key, &vec![7u8; n]) {
                    Err(ProviderError::Config(_)) => {}
                    other => return Err(format!("{n} bytes: {other:?}")),
                }
            }
            Ok(String::new())
        })(),
    );

    check(
        "a missing key is reported as not found",
        match p.describe(missing) {
            Err(ProviderError::NotFound(m)) => Ok(m),
            other => Err(format!("describe({missing}) gave {other:?}")),
        },
    );

    check(
        "wrapping under a missing key is refused as not found or refused",
        match p.wrap(missing, &[1u8; 32]) {
            Err(e) if e.revokes() => Ok(e.to_string()),
            other => Err(format!("wrap under {missing} gave {other:?}")),
        },
    );

    check(
        "the health check passes",
        p.check(key)
            .map(|d| format!("{} {}", d.id, d.state))
            .map_err(|e| e.to_string()),
    );
    out
}

fn round_trip(p: &dyn KeyProvider, key: &str, n: usize) -> Result<(), String> {
    let dk = SecretBytes::random(n).map_err(|e| e.to_string())?;
    let w = p.wrap(key, dk.expose()).map_err(|e| e.to_string())?;
    let back = p.unwrap(key, &w).map_err(|e| e.to_string())?;
    if back != dk {
        return Err("unwrapped to other bytes".into());
    }
    Ok(())
}
