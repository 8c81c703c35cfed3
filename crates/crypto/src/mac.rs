//! HMAC (RFC 2104) with SHA-224, SHA-256, SHA-384 and SHA-512: the MACs of
//! the key service's HMAC keys (`GenerateMac`, `VerifyMac`).
//!
//! A MAC is always the full output of the hash; verification compares in
//! constant time and refuses a truncated tag.

use aws_lc_rs::hmac;

/// The HMAC algorithms (AWS KMS's `MacAlgorithmSpec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacAlgorithm {
    /// HMAC-SHA-224: 28-byte MACs.
    HmacSha224,
    /// HMAC-SHA-256: 32-byte MACs.
    HmacSha256,
    /// HMAC-SHA-384: 48-byte MACs.
    HmacSha384,
    /// HMAC-SHA-512: 64-byte MACs.
    HmacSha512,
}

impl MacAlgorithm {
    /// Every algorithm.
    pub const ALL: [MacAlgorithm; 4] = [
        Self::HmacSha224,
        Self::HmacSha256,
        Self::HmacSha384,
        Self::HmacSha512,
    ];

    fn aws_lc(self) -> hmac::Algorithm {
        match self {
            Self::HmacSha224 => hmac::HMAC_SHA224,
            Self::HmacSha256 => hmac::HMAC_SHA256,
            Self::HmacSha384 => hmac::HMAC_SHA384,
            Self::HmacSha512 => hmac::HMAC_SHA512,
        }
    }

    /// The length of a MAC, in bytes.
    #[must_use]
    pub fn mac_len(self) -> usize {
        match self {
            Self::HmacSha224 => 28,
            Self::HmacSha256 => 32,
            Self::HmacSha384 => 48,
            Self::HmacSha512 => 64,
        }
    }
}

/// The MAC of `message` under `key`.
#[must_use]
pub fn generate(alg: MacAlgorithm, key: &[u8], message: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(alg.aws_lc(), key);
    hmac::sign(&key, message).as_ref().to_vec()
}

/// Whether `mac` is the MAC of `message` under `key`, compared in constant
/// time. A truncated or extended MAC does not verify.
#[must_use]
pub fn verify(alg: MacAlgorithm, key: &[u8], message: &[u8], mac: &[u8]) -> bool {
    if mac.len() != alg.mac_len() {
        return false;
    }
    let key = hmac::Key::new(alg.aws_lc(), key);
    hmac::verify(&key, message, mac).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4231_case_2() {
        // Key "Jefe", data "what do ya want for nothing?".
        let mac = generate(
            MacAlgorithm::HmacSha256,
            b"Jefe",
            b"what do ya want for nothing?",
        );
        assert_eq!(
            mac,
            [
                0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
                0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9,
                0x64, 0xec, 0x38, 0x43
            ]
        );
    }

    #[test]
    fn round_trip_and_refusals() {
        for alg in MacAlgorithm::ALL {
            let key = [7u8; 40];
            let mac = generate(alg, &key, b"message");
            assert_eq!(mac.len(), alg.mac_len());
            assert!(verify(alg, &key, b"message", &mac));
            assert!(!verify(alg, &key, b"messagf", &mac));
            assert!(!verify(alg, &[8u8; 40], b"message", &mac));
            assert!(!verify(alg, &key, b"message", &mac[..mac.len() - 1]));
            let mut longer = mac.clone();
            longer.push(0);
            assert!(!verify(alg, &key, b"message", &longer));
            let mut flipped = mac.clone();
            flipped[0] ^= 1;
            assert!(!verify(alg, &key, b"message", &flipped));
            for other in MacAlgorithm::ALL.into_iter().filter(|o| *o != alg) {
                assert!(!verify(other, &key, b"message", &mac));
            }
        }
    }
}
