//! The two signature modes AWS-LC has but `aws-lc-rs` does not reach:
//! Ed25519ph (RFC 8032 HashEdDSA with SHA-512 and an empty context,
//! `ED25519ph_sign_digest`/`ED25519ph_verify_digest`) and ML-DSA over an
//! external message representative μ (FIPS 204 section 6.2; AWS-LC's
//! `EVP_PKEY_sign`/`EVP_PKEY_verify` on an ML-DSA key take μ, where
//! `EVP_DigestSign` takes the message). Also SHAKE256, with which a client
//! computes μ.
//!
//! Like [`crate::xts`], this module calls `aws-lc-sys` directly and is one
//! of the few modules of atrest with `unsafe`; [`crate::asymmetric`] is its
//! only user and does every check AWS's rules need before calling it.
#![allow(unsafe_code)] // FFI to AWS-LC; every block has a SAFETY comment.

use core::ffi::c_int;
use core::ptr::{self, NonNull};

use aws_lc_sys as ffi;
use zeroize::Zeroizing;

use crate::CryptoError;

/// Length of an Ed25519 public key, a seed, and an Ed25519ph input digest
/// (SHA-512) and signature.
const ED25519_PUBLIC: usize = 32;
const ED25519_SEED: usize = 32;
pub(crate) const ED25519PH_DIGEST: usize = 64;
const ED25519_SIGNATURE: usize = 64;

/// Length of ML-DSA's μ (all parameter sets).
pub(crate) const ML_DSA_MU: usize = 64;

/// An owned `EVP_PKEY`, freed on drop.
struct Pkey(NonNull<ffi::EVP_PKEY>);

impl Drop for Pkey {
    fn drop(&mut self) {
        // SAFETY: the pointer came from EVP_parse_*_key and is owned by this
        // value, so it is freed exactly once. AWS-LC clears private key
        // bytes when it frees them (OPENSSL_free zeroes the allocation).
        unsafe { ffi::EVP_PKEY_free(self.0.as_ptr()) }
    }
}

// SAFETY: an EVP_PKEY is reference-counted with atomic operations and never
// modified after parsing here: signing and verifying only read it, through
// a context made per call (EVP_PKEY_CTX_new takes its own reference). This
// is the same contract under which `aws-lc-rs` shares its key pairs between
// threads.
unsafe impl Send for Pkey {}
// SAFETY: as for Send: shared use is read-only (see above).
unsafe impl Sync for Pkey {}

/// Parses DER with `parse` (EVP_parse_private_key or EVP_parse_public_key),
/// which must consume all of `der`.
fn parse(
    der: &[u8],
    parse: unsafe extern "C" fn(*mut ffi::CBS) -> *mut ffi::EVP_PKEY,
    what: &'static str,
) -> Result<Pkey, CryptoError> {
    let mut cbs = ffi::CBS {
        data: der.as_ptr(),
        len: der.len(),
    };
    // SAFETY: `cbs` points into `der`, which outlives the call; the parser
    // reads at most `der.len()` bytes and returns an owned key or null.
    let key = NonNull::new(unsafe { parse(&raw mut cbs) }).ok_or(CryptoError::InvalidKey(what))?;
    let key = Pkey(key);
    if cbs.len != 0 {
        return Err(CryptoError::InvalidKey(what));
    }
    Ok(key)
}

fn parse_private(pkcs8: &[u8]) -> Result<Pkey, CryptoError> {
    parse(
        pkcs8,
        ffi::EVP_parse_private_key,
        "not a PKCS#8 private key",
    )
}

fn parse_public(spki: &[u8]) -> Result<Pkey, CryptoError> {
    parse(
        spki,
        ffi::EVP_parse_public_key,
        "not a DER SubjectPublicKeyInfo",
    )
}

fn key_id(key: &Pkey) -> c_int {
    // SAFETY: `key` is a valid EVP_PKEY; EVP_PKEY_id only reads it.
    unsafe { ffi::EVP_PKEY_id(key.0.as_ptr()) }
}

/// Fills `out` with a raw key of exactly its length, copied out of `key`
/// with `get` (EVP_PKEY_get_raw_private_key or EVP_PKEY_get_raw_public_key).
fn raw(
    key: &Pkey,
    get: unsafe extern "C" fn(*const ffi::EVP_PKEY, *mut u8, *mut usize) -> c_int,
    out: &mut [u8],
) -> Result<(), CryptoError> {
    let mut len = out.len();
    // SAFETY: `out` is writable for `len` bytes; the function writes at most
    // `len` bytes (or fails) and stores the length it wrote in `len`.
    let ok = unsafe { get(key.0.as_ptr(), out.as_mut_ptr(), &raw mut len) };
    if ok != 1 || len != out.len() {
        return Err(CryptoError::InvalidKey("a raw key of another length"));
    }
    Ok(())
}

/// An Ed25519 private key in the form AWS-LC's Ed25519ph takes: the seed
/// followed by the public key, in memory cleared on drop.
pub(crate) struct Ed25519phKey(Zeroizing<[u8; ED25519_SEED + ED25519_PUBLIC]>);

impl Ed25519phKey {
    /// The key of an Ed25519 PKCS#8 DER private key.
    pub(crate) fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, CryptoError> {
        let key = parse_private(pkcs8)?;
        if key_id(&key) != ffi::EVP_PKEY_ED25519 {
            return Err(CryptoError::InvalidKey("not an Ed25519 private key"));
        }
        let mut seed = Zeroizing::new([0u8; ED25519_SEED]);
        raw(&key, ffi::EVP_PKEY_get_raw_private_key, &mut *seed)?;
        let mut public = [0u8; ED25519_PUBLIC];
        raw(&key, ffi::EVP_PKEY_get_raw_public_key, &mut public)?;
        let mut both = Zeroizing::new([0u8; ED25519_SEED + ED25519_PUBLIC]);
        both[..ED25519_SEED].copy_from_slice(&*seed);
        both[ED25519_SEED..].copy_from_slice(&public);
        Ok(Self(both))
    }

    /// The Ed25519ph signature (empty context) of a SHA-512 `digest`.
    pub(crate) fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if digest.len() != ED25519PH_DIGEST {
            return Err(CryptoError::InputLength {
                len: digest.len(),
                reason: "an Ed25519ph digest is a 64-byte SHA-512 digest",
            });
        }
        let mut sig = vec![0u8; ED25519_SIGNATURE];
        // SAFETY: `sig` is writable for the 64 bytes written; `digest` is 64
        // readable bytes (checked above); the private key is 64 bytes; a null
        // context of length 0 is the empty context.
        let ok = unsafe {
            ffi::ED25519ph_sign_digest(
                sig.as_mut_ptr(),
                digest.as_ptr(),
                self.0.as_ptr(),
                ptr::null(),
                0,
            )
        };
        if ok != 1 {
            return Err(CryptoError::Library("ED25519ph_sign_digest"));
        }
        Ok(sig)
    }
}

/// Whether `sig` is the Ed25519ph signature (empty context) of the SHA-512
/// `digest` by the Ed25519 public key `spki` (DER SubjectPublicKeyInfo).
pub(crate) fn ed25519ph_verify_digest(
    spki: &[u8],
    digest: &[u8],
    sig: &[u8],
) -> Result<bool, CryptoError> {
    let key = parse_public(spki)?;
    if key_id(&key) != ffi::EVP_PKEY_ED25519 {
        return Err(CryptoError::InvalidKey("not an Ed25519 public key"));
    }
    let mut public = [0u8; ED25519_PUBLIC];
    raw(&key, ffi::EVP_PKEY_get_raw_public_key, &mut public)?;
    if digest.len() != ED25519PH_DIGEST {
        return Err(CryptoError::InputLength {
            len: digest.len(),
            reason: "an Ed25519ph digest is a 64-byte SHA-512 digest",
        });
    }
    if sig.len() != ED25519_SIGNATURE {
        return Ok(false);
    }
    // SAFETY: `digest` and `sig` are 64 readable bytes each (checked above),
    // `public` 32; a null context of length 0 is the empty context.
    let ok = unsafe {
        ffi::ED25519ph_verify_digest(
            digest.as_ptr(),
            sig.as_ptr(),
            public.as_ptr(),
            ptr::null(),
            0,
        )
    };
    Ok(ok == 1)
}

/// An ML-DSA private key that signs an external μ.
pub(crate) struct MlDsaMuKey(Pkey);

/// Checks that `key` is an ML-DSA key of the parameter set `nid`.
fn require_ml_dsa(key: &Pkey, nid: c_int) -> Result<(), CryptoError> {
    // SAFETY: `key` is a valid EVP_PKEY; both calls only read it (the second
    // returns 0 for a key that is not PQDSA).
    let (id, set) = unsafe {
        (
            ffi::EVP_PKEY_id(key.0.as_ptr()),
            ffi::EVP_PKEY_pqdsa_get_type(key.0.as_ptr()),
        )
    };
    if id != ffi::EVP_PKEY_PQDSA || set != nid {
        return Err(CryptoError::InvalidKey(
            "not an ML-DSA key of this parameter set",
        ));
    }
    Ok(())
}

/// An owned `EVP_PKEY_CTX`, freed on drop.
struct PkeyCtx(NonNull<ffi::EVP_PKEY_CTX>);

impl PkeyCtx {
    fn new(key: &Pkey) -> Result<Self, CryptoError> {
        // SAFETY: `key` is valid; the context takes its own reference to it
        // and is owned by the returned value.
        NonNull::new(unsafe { ffi::EVP_PKEY_CTX_new(key.0.as_ptr(), ptr::null_mut()) })
            .map(Self)
            .ok_or(CryptoError::Library("EVP_PKEY_CTX_new"))
    }
}

impl Drop for PkeyCtx {
    fn drop(&mut self) {
        // SAFETY: the context came from EVP_PKEY_CTX_new and is freed once.
        unsafe { ffi::EVP_PKEY_CTX_free(self.0.as_ptr()) }
    }
}

impl MlDsaMuKey {
    /// The key of an ML-DSA PKCS#8 DER private key of the parameter set
    /// `nid` (`NID_MLDSA44`, `NID_MLDSA65`, `NID_MLDSA87`).
    pub(crate) fn from_pkcs8(nid: c_int, pkcs8: &[u8]) -> Result<Self, CryptoError> {
        let key = parse_private(pkcs8)?;
        require_ml_dsa(&key, nid)?;
        Ok(Self(key))
    }

    /// The ML-DSA signature of the 64-byte message representative `mu`
    /// (hedged, as AWS-LC's ML-DSA signing of a message is).
    pub(crate) fn sign_mu(&self, mu: &[u8], sig_len: usize) -> Result<Vec<u8>, CryptoError> {
        if mu.len() != ML_DSA_MU {
            return Err(bad_mu(mu.len()));
        }
        let ctx = PkeyCtx::new(&self.0)?;
        let mut sig = vec![0u8; sig_len];
        let mut len = sig_len;
        // SAFETY: `ctx` is a fresh context on an ML-DSA private key; `sig` is
        // writable for `len` bytes (the parameter set's signature length),
        // and `mu` is 64 readable bytes. EVP_PKEY_sign on a PQDSA key takes
        // μ ("DIGEST sign mode" in AWS-LC's p_pqdsa.c).
        let ok = unsafe {
            ffi::EVP_PKEY_sign_init(ctx.0.as_ptr()) == 1
                && ffi::EVP_PKEY_sign(
                    ctx.0.as_ptr(),
                    sig.as_mut_ptr(),
                    &raw mut len,
                    mu.as_ptr(),
                    mu.len(),
                ) == 1
        };
        if !ok || len != sig_len {
            clear_errors();
            return Err(CryptoError::Library("ML-DSA signing of mu"));
        }
        Ok(sig)
    }
}

fn bad_mu(len: usize) -> CryptoError {
    CryptoError::InputLength {
        len,
        reason: "an ML-DSA external mu is 64 bytes",
    }
}

/// Whether `sig` is the ML-DSA signature of μ `mu` by the public key `spki`
/// (DER SubjectPublicKeyInfo) of the parameter set `nid`.
pub(crate) fn ml_dsa_verify_mu(
    nid: c_int,
    spki: &[u8],
    mu: &[u8],
    sig: &[u8],
) -> Result<bool, CryptoError> {
    let key = parse_public(spki)?;
    require_ml_dsa(&key, nid)?;
    if mu.len() != ML_DSA_MU {
        return Err(bad_mu(mu.len()));
    }
    let ctx = PkeyCtx::new(&key)?;
    // SAFETY: `ctx` is a fresh context on an ML-DSA public key; `sig` and
    // `mu` are readable for their lengths. A signature of the wrong length
    // is refused by AWS-LC (returns 0), not read past.
    let ok = unsafe {
        ffi::EVP_PKEY_verify_init(ctx.0.as_ptr()) == 1
            && ffi::EVP_PKEY_verify(
                ctx.0.as_ptr(),
                sig.as_ptr(),
                sig.len(),
                mu.as_ptr(),
                mu.len(),
            ) == 1
    };
    if !ok {
        clear_errors();
    }
    Ok(ok)
}

/// The raw (FIPS 204 encoded) public key in the ML-DSA public key `spki`
/// (DER SubjectPublicKeyInfo) of the parameter set `nid`, `len` bytes long.
pub(crate) fn ml_dsa_raw_public(
    nid: c_int,
    spki: &[u8],
    len: usize,
) -> Result<Vec<u8>, CryptoError> {
    let key = parse_public(spki)?;
    require_ml_dsa(&key, nid)?;
    let mut out = vec![0u8; len];
    raw(&key, ffi::EVP_PKEY_get_raw_public_key, &mut out)?;
    Ok(out)
}

/// SHAKE256 of the concatenation of `parts`, `out.len()` bytes of it.
pub(crate) fn shake256(parts: &[&[u8]], out: &mut [u8]) -> Result<(), CryptoError> {
    // SAFETY: EVP_MD_CTX_new has no preconditions; it returns an owned
    // context or null.
    let ctx = NonNull::new(unsafe { ffi::EVP_MD_CTX_new() })
        .ok_or(CryptoError::Library("EVP_MD_CTX_new"))?;
    // SAFETY: `ctx` is a valid context; each part is readable for its
    // length; `out` is writable for `out.len()` bytes; the context is freed
    // once, at the end, whatever the result.
    let ok = unsafe {
        let mut ok =
            ffi::EVP_DigestInit_ex(ctx.as_ptr(), ffi::EVP_shake256(), ptr::null_mut()) == 1;
        for p in parts {
            ok = ok && ffi::EVP_DigestUpdate(ctx.as_ptr(), p.as_ptr().cast(), p.len()) == 1;
        }
        ok = ok && ffi::EVP_DigestFinalXOF(ctx.as_ptr(), out.as_mut_ptr(), out.len()) == 1;
        ffi::EVP_MD_CTX_free(ctx.as_ptr());
        ok
    };
    if ok {
        Ok(())
    } else {
        Err(CryptoError::Library("SHAKE256"))
    }
}

/// Drops the errors a refused signature leaves on AWS-LC's thread-local
/// error queue.
fn clear_errors() {
    // SAFETY: ERR_clear_error has no preconditions.
    unsafe { ffi::ERR_clear_error() }
}
