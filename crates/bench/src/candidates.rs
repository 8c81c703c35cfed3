//! The AES-256-XTS implementations that were measured and rejected, kept so
//! that `xts-bench` can show the measurement behind the choice of AWS-LC.
//!
//! Both use the same sector convention as [`atrest_crypto::xts::Xts256`]: the
//! tweak of a sector is its number as a 128-bit little-endian integer, and the
//! 64-byte key is the data key followed by the tweak key. Neither is used
//! outside the benchmark.

use aes::Aes256;
use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};

/// RustCrypto `xts-mode` 0.5 over `aes` 0.8 (AES-NI, one block at a time).
pub struct XtsModeAes08(xts_mode::Xts128<aes08::Aes256>);

impl XtsModeAes08 {
    /// Expands a 64-byte XTS key.
    pub fn new(key: &[u8; 64]) -> anyhow::Result<Self> {
        use aes08::cipher::KeyInit as _;
        let data = aes08::Aes256::new_from_slice(&key[..32])
            .map_err(|e| anyhow::anyhow!("aes 0.8 key: {e}"))?;
        let tweak = aes08::Aes256::new_from_slice(&key[32..])
            .map_err(|e| anyhow::anyhow!("aes 0.8 key: {e}"))?;
        Ok(Self(xts_mode::Xts128::new(data, tweak)))
    }

    /// Encrypts whole sectors in place, the first being `first_sector`.
    pub fn encrypt_sectors(&self, first_sector: u64, sector_len: usize, data: &mut [u8]) {
        self.0.encrypt_area(
            data,
            sector_len,
            u128::from(first_sector),
            xts_mode::get_tweak_default,
        );
    }

    /// Decrypts whole sectors in place.
    pub fn decrypt_sectors(&self, first_sector: u64, sector_len: usize, data: &mut [u8]) {
        self.0.decrypt_area(
            data,
            sector_len,
            u128::from(first_sector),
            xts_mode::get_tweak_default,
        );
    }
}

/// A straightforward XTS over RustCrypto `aes` 0.9, whose VAES-256/512
/// backends are chosen at run time: per sector, the tweak is encrypted once,
/// the sector's tweaks are written to a buffer (multiplying by x in
/// GF(2^128)), XORed in, the whole sector goes through `encrypt_blocks` (so
/// the wide backend sees many blocks at once), and the tweaks are XORed again.
/// No ciphertext stealing: sectors are whole blocks.
pub struct NaiveXtsAes09 {
    data: Aes256,
    tweak: Aes256,
    tweaks: Vec<u128>,
}

impl NaiveXtsAes09 {
    /// Expands a 64-byte XTS key.
    pub fn new(key: &[u8; 64]) -> anyhow::Result<Self> {
        let data =
            Aes256::new_from_slice(&key[..32]).map_err(|e| anyhow::anyhow!("aes 0.9 key: {e}"))?;
        let tweak =
            Aes256::new_from_slice(&key[32..]).map_err(|e| anyhow::anyhow!("aes 0.9 key: {e}"))?;
        Ok(Self {
            data,
            tweak,
            tweaks: Vec::new(),
        })
    }

    /// Encrypts whole sectors in place, the first being `first_sector`.
    pub fn encrypt_sectors(
        &mut self,
        first_sector: u64,
        sector_len: usize,
        data: &mut [u8],
    ) -> anyhow::Result<()> {
        self.sectors(true, first_sector, sector_len, data)
    }

    /// Decrypts whole sectors in place.
    pub fn decrypt_sectors(
        &mut self,
        first_sector: u64,
        sector_len: usize,
        data: &mut [u8],
    ) -> anyhow::Result<()> {
        self.sectors(false, first_sector, sector_len, data)
    }

    fn sectors(
        &mut self,
        encrypt: bool,
        first_sector: u64,
        sector_len: usize,
        data: &mut [u8],
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            sector_len >= 16
                && sector_len.is_multiple_of(16)
                && data.len().is_multiple_of(sector_len),
            "sectors must be whole blocks and the data whole sectors"
        );
        let blocks_per_sector = sector_len / 16;
        self.tweaks.resize(blocks_per_sector, 0);
        for (i, sector) in data.chunks_exact_mut(sector_len).enumerate() {
            // The sector's first tweak: E_k2(sector number, little-endian).
            let mut t = Array::from(u128::from(first_sector + i as u64).to_le_bytes());
            self.tweak.encrypt_block(&mut t);
            let mut t = u128::from_le_bytes(t.into());
            for slot in &mut self.tweaks {
                *slot = t;
                t = (t << 1) ^ ((t >> 127) * 0x87);
            }
            xor_tweaks(sector, &self.tweaks);
            let (blocks, rest) = Array::slice_as_chunks_mut(sector);
            debug_assert!(rest.is_empty());
            if encrypt {
                self.data.encrypt_blocks(blocks);
            } else {
                self.data.decrypt_blocks(blocks);
            }
            xor_tweaks(sector, &self.tweaks);
        }
        Ok(())
    }
}

fn xor_tweaks(sector: &mut [u8], tweaks: &[u128]) {
    for (block, t) in sector.chunks_exact_mut(16).zip(tweaks) {
        let mut b = [0u8; 16];
        b.copy_from_slice(block);
        let x = u128::from_le_bytes(b) ^ t;
        block.copy_from_slice(&x.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atrest_crypto::XtsKey;
    use atrest_crypto::xts::Xts256;

    fn check(sector_len: usize) {
        let key = XtsKey::generate().unwrap();
        let mut reference = Xts256::new(&key).unwrap();
        let xm = XtsModeAes08::new(key.expose()).unwrap();
        let mut naive = NaiveXtsAes09::new(key.expose()).unwrap();
        let plain: Vec<u8> = (0..8 * sector_len).map(|i| (i * 7 % 253) as u8).collect();
        let mut expected = plain.clone();
        reference
            .encrypt_sectors(u64::from(u32::MAX) + 3, sector_len, &mut expected)
            .unwrap();
        let mut a = plain.clone();
        xm.encrypt_sectors(u64::from(u32::MAX) + 3, sector_len, &mut a);
        assert_eq!(a, expected);
        let mut b = plain.clone();
        naive
            .encrypt_sectors(u64::from(u32::MAX) + 3, sector_len, &mut b)
            .unwrap();
        assert_eq!(b, expected);
        xm.decrypt_sectors(u64::from(u32::MAX) + 3, sector_len, &mut a);
        naive
            .decrypt_sectors(u64::from(u32::MAX) + 3, sector_len, &mut b)
            .unwrap();
        assert_eq!(a, plain);
        assert_eq!(b, plain);
    }

    #[test]
    fn candidates_match_atrest_on_4k_sectors() {
        check(4096);
    }

    #[test]
    fn candidates_match_atrest_on_512_byte_sectors() {
        check(512);
    }
}
