//! AES-256-XTS (IEEE 1619, NIST SP 800-38E) for sector encryption.
//!
//! Backed by AWS-LC's `EVP_aes_256_xts`, which on CPUs with VAES and AVX-512
//! runs a 512-bit-wide implementation (about 2x OpenSSL 3.0 on the same core;
//! see `docs/benchmarks.md`). `aws-lc-rs` does not expose XTS, so this module
//! calls `aws-lc-sys` directly. With `lcsig` and `memlock` (this crate) and
//! `atrest-localattach`'s `sys`, it is one of the four modules of atrest
//! with `unsafe`; every other crate forbids it.
//!
//! The tweak of a sector is its sector number as a 128-bit little-endian
//! integer (the "plain64" convention of dm-crypt and the data-unit sequence
//! number of IEEE 1619).
#![allow(unsafe_code)] // FFI to AWS-LC; every block has a SAFETY comment.

use core::ffi::c_int;
use core::ptr::{self, NonNull};

use aws_lc_sys as ffi;

use crate::{CryptoError, XtsKey};

/// AES block length; the smallest data unit XTS accepts.
pub const BLOCK_LEN: usize = 16;

/// Largest data unit: IEEE 1619 allows at most 2^20 blocks per data unit.
pub const MAX_DATA_UNIT: usize = BLOCK_LEN << 20;

/// An AES-256-XTS cipher with its key schedules expanded, one context per
/// direction. Not `Sync`: give each thread its own (see [`Xts256::try_clone`]).
pub struct Xts256 {
    enc: NonNull<ffi::EVP_CIPHER_CTX>,
    dec: NonNull<ffi::EVP_CIPHER_CTX>,
    /// The pages of both contexts and their key schedules, locked in RAM
    /// where the system allows (see [`Xts256::memory_locked`]).
    locked: Vec<crate::memlock::Locked>,
}

/// Bytes locked from a context's `cipher_data`: AWS-LC's XTS context (two
/// AES key schedules and the XTS state) is about 520 bytes.
const SCHEDULE_LOCK_LEN: usize = 1024;

/// Locks a context and its key schedule in memory.
fn lock_ctx(ctx: NonNull<ffi::EVP_CIPHER_CTX>) -> [crate::memlock::Locked; 2] {
    // SAFETY: `ctx` is a valid, initialised context owned by the caller;
    // reading its `cipher_data` pointer does not modify it.
    let data = unsafe { (*ctx.as_ptr()).cipher_data } as usize;
    [
        crate::memlock::Locked::new(ctx.as_ptr() as usize, size_of::<ffi::EVP_CIPHER_CTX>()),
        crate::memlock::Locked::new(data, if data == 0 { 0 } else { SCHEDULE_LOCK_LEN }),
    ]
}

// SAFETY: the two contexts are owned exclusively by this value and reachable
// only through `&mut self` (or `&self` for a read-only copy), so moving the
// owner to another thread moves all access with it. AWS-LC contexts have no
// thread affinity.
unsafe impl Send for Xts256 {}

impl core::fmt::Debug for Xts256 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Xts256(<redacted>)")
    }
}

fn new_ctx() -> Result<NonNull<ffi::EVP_CIPHER_CTX>, CryptoError> {
    // SAFETY: EVP_CIPHER_CTX_new has no preconditions; it returns an owned,
    // initialised context or null on allocation failure.
    NonNull::new(unsafe { ffi::EVP_CIPHER_CTX_new() })
        .ok_or(CryptoError::Library("EVP_CIPHER_CTX_new"))
}

fn free_ctx(ctx: NonNull<ffi::EVP_CIPHER_CTX>) {
    // SAFETY: `ctx` came from EVP_CIPHER_CTX_new and is freed exactly once.
    // EVP_CIPHER_CTX_free wipes the key schedule before freeing it.
    unsafe { ffi::EVP_CIPHER_CTX_free(ctx.as_ptr()) }
}

impl Xts256 {
    /// Expands `key` (data key || tweak key). Keys whose halves are equal are
    /// refused, as SP 800-38E requires.
    pub fn new(key: &XtsKey) -> Result<Self, CryptoError> {
        let k = key.expose();
        if crate::ct_eq(&k[..32], &k[32..]) {
            return Err(CryptoError::XtsKeyHalvesEqual);
        }
        let enc = new_ctx()?;
        let dec = match new_ctx() {
            Ok(d) => d,
            Err(e) => {
                free_ctx(enc);
                return Err(e);
            }
        };
        let mut this = Self {
            enc,
            dec,
            locked: Vec::new(),
        };
        // SAFETY: both contexts are valid and owned by `this`; the cipher is a
        // static AWS-LC object; the key pointer is valid for 64 bytes (the XTS
        // key length of EVP_aes_256_xts) for the duration of the call and is
        // copied into the schedule; a null IV is allowed at init.
        let ok = unsafe {
            ffi::EVP_EncryptInit_ex(
                this.enc.as_ptr(),
                ffi::EVP_aes_256_xts(),
                ptr::null_mut(),
                k.as_ptr(),
                ptr::null(),
            ) == 1
                && ffi::EVP_DecryptInit_ex(
                    this.dec.as_ptr(),
                    ffi::EVP_aes_256_xts(),
                    ptr::null_mut(),
                    k.as_ptr(),
                    ptr::null(),
                ) == 1
        };
        if ok {
            this.lock_memory();
            Ok(this)
        } else {
            Err(CryptoError::Library("EVP_aes_256_xts key setup"))
        }
    }

    fn lock_memory(&mut self) {
        self.locked.extend(lock_ctx(self.enc));
        self.locked.extend(lock_ctx(self.dec));
    }

    /// Whether the key schedules are locked in RAM (`mlock`), so they are
    /// never written to swap. False where `RLIMIT_MEMLOCK` or privileges
    /// do not allow it; the schedules are wiped on drop either way.
    #[must_use]
    pub fn memory_locked(&self) -> bool {
        self.locked.iter().all(crate::memlock::Locked::is_locked)
    }

    /// A second cipher with the same key, for another thread.
    pub fn try_clone(&self) -> Result<Self, CryptoError> {
        let enc = new_ctx()?;
        let dec = match new_ctx() {
            Ok(d) => d,
            Err(e) => {
                free_ctx(enc);
                return Err(e);
            }
        };
        let mut copy = Self {
            enc,
            dec,
            locked: Vec::new(),
        };
        // SAFETY: all four contexts are valid; source contexts are only read.
        let ok = unsafe {
            ffi::EVP_CIPHER_CTX_copy(copy.enc.as_ptr(), self.enc.as_ptr()) == 1
                && ffi::EVP_CIPHER_CTX_copy(copy.dec.as_ptr(), self.dec.as_ptr()) == 1
        };
        if ok {
            copy.lock_memory();
            Ok(copy)
        } else {
            Err(CryptoError::Library("EVP_CIPHER_CTX_copy"))
        }
    }

    /// Encrypts one data unit in place under `tweak`. The unit is 16 bytes to
    /// 16 MiB long; lengths that are not a multiple of 16 use ciphertext
    /// stealing.
    pub fn encrypt(&mut self, tweak: &[u8; 16], data: &mut [u8]) -> Result<(), CryptoError> {
        Self::apply(self.enc, true, tweak, data)
    }

    /// Decrypts one data unit in place under `tweak`.
    pub fn decrypt(&mut self, tweak: &[u8; 16], data: &mut [u8]) -> Result<(), CryptoError> {
        Self::apply(self.dec, false, tweak, data)
    }

    /// Encrypts consecutive sectors of `sector_len` bytes in place, the first
    /// being sector number `first_sector`.
    pub fn encrypt_sectors(
        &mut self,
        first_sector: u64,
        sector_len: usize,
        data: &mut [u8],
    ) -> Result<(), CryptoError> {
        Self::sectors(self.enc, true, first_sector, sector_len, Io::InPlace(data))
    }

    /// Encrypts consecutive sectors of `src` into `dst` (of the same
    /// length), the first being sector number `first_sector`: the same
    /// ciphertext as [`Xts256::encrypt_sectors`] on a copy of `src`, without
    /// the copy.
    pub fn encrypt_sectors_to(
        &mut self,
        first_sector: u64,
        sector_len: usize,
        src: &[u8],
        dst: &mut [u8],
    ) -> Result<(), CryptoError> {
        if src.len() != dst.len() {
            return Err(CryptoError::InputLength {
                len: dst.len(),
                reason: "the output must be as long as the input",
            });
        }
        Self::sectors(
            self.enc,
            true,
            first_sector,
            sector_len,
            Io::Apart(src, dst),
        )
    }

    /// Decrypts consecutive sectors in place; the inverse of
    /// [`Xts256::encrypt_sectors`].
    pub fn decrypt_sectors(
        &mut self,
        first_sector: u64,
        sector_len: usize,
        data: &mut [u8],
    ) -> Result<(), CryptoError> {
        Self::sectors(self.dec, false, first_sector, sector_len, Io::InPlace(data))
    }

    fn sectors(
        ctx: NonNull<ffi::EVP_CIPHER_CTX>,
        encrypt: bool,
        first_sector: u64,
        sector_len: usize,
        mut io: Io<'_>,
    ) -> Result<(), CryptoError> {
        let len = io.len();
        if sector_len < BLOCK_LEN
            || !sector_len.is_multiple_of(BLOCK_LEN)
            || sector_len > MAX_DATA_UNIT
        {
            return Err(CryptoError::InputLength {
                len: sector_len,
                reason: "sector length must be a multiple of 16 between 16 bytes and 16 MiB",
            });
        }
        if !len.is_multiple_of(sector_len) {
            return Err(CryptoError::InputLength {
                len,
                reason: "data must be a whole number of sectors",
            });
        }
        let count = (len / sector_len) as u64;
        if count > 0 && first_sector.checked_add(count - 1).is_none() {
            return Err(CryptoError::InputLength {
                len,
                reason: "sector numbers overflow 64 bits",
            });
        }
        for i in 0..len / sector_len {
            let tweak = u128::from(first_sector + i as u64).to_le_bytes();
            let at = i * sector_len;
            let unit = match &mut io {
                Io::InPlace(data) => Io::InPlace(&mut data[at..at + sector_len]),
                Io::Apart(src, dst) => {
                    Io::Apart(&src[at..at + sector_len], &mut dst[at..at + sector_len])
                }
            };
            Self::apply_io(ctx, encrypt, &tweak, unit)?;
        }
        Ok(())
    }

    fn apply(
        ctx: NonNull<ffi::EVP_CIPHER_CTX>,
        encrypt: bool,
        tweak: &[u8; 16],
        data: &mut [u8],
    ) -> Result<(), CryptoError> {
        Self::apply_io(ctx, encrypt, tweak, Io::InPlace(data))
    }

    fn apply_io(
        ctx: NonNull<ffi::EVP_CIPHER_CTX>,
        encrypt: bool,
        tweak: &[u8; 16],
        io: Io<'_>,
    ) -> Result<(), CryptoError> {
        let n = io.len();
        if !(BLOCK_LEN..=MAX_DATA_UNIT).contains(&n) {
            return Err(CryptoError::InputLength {
                len: n,
                reason: "an XTS data unit is 16 bytes to 16 MiB",
            });
        }
        // MAX_DATA_UNIT < c_int::MAX, so the cast is exact.
        let len = n as c_int;
        let mut out_len: c_int = 0;
        let (input, p): (*const u8, *mut u8) = match io {
            Io::InPlace(data) => (data.as_ptr(), data.as_mut_ptr()),
            Io::Apart(src, dst) => (src.as_ptr(), dst.as_mut_ptr()),
        };
        // SAFETY: `ctx` is a live context owned by the caller's `Xts256`, keyed
        // at construction; only the IV (16 bytes at `tweak`) is replaced here.
        // `input` is valid for reads and `p` for writes of `len` bytes (both
        // slices have length `n`, checked by `Io::len` for `Apart`). They are
        // either the same buffer (exact aliasing, which AWS-LC permits) or two
        // buffers that cannot overlap (a shared and an exclusive borrow).
        // AWS-LC writes exactly `len` bytes for XTS and reports them in
        // `out_len`.
        let ok = unsafe {
            if encrypt {
                ffi::EVP_EncryptInit_ex(
                    ctx.as_ptr(),
                    ptr::null(),
                    ptr::null_mut(),
                    ptr::null(),
                    tweak.as_ptr(),
                ) == 1
                    && ffi::EVP_EncryptUpdate(ctx.as_ptr(), p, &mut out_len, input, len) == 1
            } else {
                ffi::EVP_DecryptInit_ex(
                    ctx.as_ptr(),
                    ptr::null(),
                    ptr::null_mut(),
                    ptr::null(),
                    tweak.as_ptr(),
                ) == 1
                    && ffi::EVP_DecryptUpdate(ctx.as_ptr(), p, &mut out_len, input, len) == 1
            }
        };
        if ok && out_len == len {
            Ok(())
        } else {
            Err(CryptoError::Library("EVP aes-256-xts"))
        }
    }
}

/// Where a call reads and writes: one buffer, or a source and a destination
/// of the same length.
enum Io<'a> {
    InPlace(&'a mut [u8]),
    Apart(&'a [u8], &'a mut [u8]),
}

impl Io<'_> {
    /// The length of the data; for `Apart`, the shorter of the two (callers
    /// check that they are equal first).
    fn len(&self) -> usize {
        match self {
            Io::InPlace(d) => d.len(),
            Io::Apart(s, d) => s.len().min(d.len()),
        }
    }
}

impl Drop for Xts256 {
    fn drop(&mut self) {
        free_ctx(self.enc);
        free_ctx(self.dec);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_schedules_are_locked_in_memory_where_allowed() {
        let key = XtsKey::generate().unwrap();
        let x = Xts256::new(&key).unwrap();
        let c = x.try_clone().unwrap();
        // As root (CI) mlock is allowed; elsewhere it may not be.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert!(x.memory_locked() && c.memory_locked());
        }
        drop(x);
        drop(c);
    }

    use super::*;

    fn key(bytes: &[u8]) -> XtsKey {
        XtsKey::from_slice(bytes).unwrap()
    }

    #[test]
    fn equal_halves_are_refused() {
        assert_eq!(
            Xts256::new(&key(&[7u8; 64])).unwrap_err(),
            CryptoError::XtsKeyHalvesEqual
        );
    }

    #[test]
    fn lengths_are_checked() {
        let mut x = Xts256::new(&XtsKey::generate().unwrap()).unwrap();
        let t = [0u8; 16];
        assert!(matches!(
            x.encrypt(&t, &mut [0u8; 15]),
            Err(CryptoError::InputLength { .. })
        ));
        assert!(matches!(
            x.decrypt(&t, &mut []),
            Err(CryptoError::InputLength { .. })
        ));
        let mut big = vec![0u8; MAX_DATA_UNIT + 16];
        assert!(x.encrypt(&t, &mut big).is_err());
        assert!(x.encrypt_sectors(0, 4096, &mut [0u8; 4095]).is_err());
        assert!(x.encrypt_sectors(0, 500, &mut [0u8; 1000]).is_err());
        assert!(x.encrypt_sectors(u64::MAX, 512, &mut [0u8; 1024]).is_err());
        assert!(x.encrypt_sectors(u64::MAX, 512, &mut [0u8; 512]).is_ok());
        assert!(x.encrypt_sectors(0, 512, &mut []).is_ok());
    }

    #[test]
    fn sectors_match_single_units_and_round_trip() {
        let mut x = Xts256::new(&XtsKey::generate().unwrap()).unwrap();
        let plain: Vec<u8> = (0..4 * 4096).map(|i| (i * 31 % 251) as u8).collect();
        let mut multi = plain.clone();
        x.encrypt_sectors(1000, 4096, &mut multi).unwrap();
        for (i, chunk) in plain.chunks(4096).enumerate() {
            let mut one = chunk.to_vec();
            x.encrypt(&u128::from(1000 + i as u64).to_le_bytes(), &mut one)
                .unwrap();
            assert_eq!(one, multi[i * 4096..(i + 1) * 4096]);
        }
        // Out of place: the same ciphertext, the source untouched.
        let mut apart = vec![0u8; plain.len()];
        x.encrypt_sectors_to(1000, 4096, &plain, &mut apart)
            .unwrap();
        assert_eq!(apart, multi);
        assert!(
            x.encrypt_sectors_to(1000, 4096, &plain, &mut apart[..4096])
                .is_err()
        );
        assert!(
            x.encrypt_sectors_to(0, 4096, &plain[..100], &mut apart[..100])
                .is_err()
        );
        // A clone on another thread decrypts what this one encrypted.
        let mut clone = x.try_clone().unwrap();
        let handle = std::thread::spawn(move || {
            clone.decrypt_sectors(1000, 4096, &mut multi).unwrap();
            multi
        });
        assert_eq!(handle.join().unwrap(), plain);
    }
}
