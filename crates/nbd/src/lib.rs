//! The NBD protocol, fixed newstyle (the protocol document of the NBD
//! project, `doc/proto.md`), and a server for it.
//!
//! Owns: the wire format ([`negotiate`], [`transmit`]: the messages of the
//! handshake, of option negotiation and of the transmission phase, parsed
//! from bytes into typed values and encoded back, with no I/O) and the
//! protocol's state machine over a socket ([`server`]). Knows nothing of
//! disks, keys, principals or certificates: exports come from a
//! [`server::Backend`], and TLS from a [`server::StartTls`]. Every parser
//! takes untrusted bytes and answers a [`ProtoError`] for anything
//! malformed, never panics, and never allocates more than the limits below
//! allow.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod negotiate;
pub mod server;
pub mod transmit;

/// `NBDMAGIC`, the first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic, and the magic of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flags the server sends.
pub mod handshake {
    /// `NBD_FLAG_FIXED_NEWSTYLE`.
    pub const FIXED_NEWSTYLE: u16 = 1;
    /// `NBD_FLAG_NO_ZEROES`.
    pub const NO_ZEROES: u16 = 2;
    /// Client flag `NBD_FLAG_C_FIXED_NEWSTYLE`.
    pub const C_FIXED_NEWSTYLE: u32 = 1;
    /// Client flag `NBD_FLAG_C_NO_ZEROES`.
    pub const C_NO_ZEROES: u32 = 2;
}

/// The longest option payload accepted (the protocol's recommendation for
/// servers is to refuse what they will not process; names are at most
/// 4096 bytes, and an info request list at most a few entries).
pub const MAX_OPTION_LEN: u32 = 8 * 1024;
/// The longest export name accepted (the protocol's limit).
pub const MAX_NAME_LEN: u32 = 4096;

/// A malformed or unacceptable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// More bytes are needed to parse the message.
    #[error("incomplete message: {0} more bytes needed")]
    Incomplete(usize),
    /// A magic number that is not the protocol's.
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    /// A length beyond what this server accepts.
    #[error("{what} of {len} bytes is too long (at most {max})")]
    TooLong {
        /// What was too long.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A message whose fields contradict each other or the protocol.
    #[error("invalid message: {0}")]
    Invalid(String),
}

fn be_u16(b: &[u8], at: usize) -> Result<u16, ProtoError> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_be_bytes)
        .ok_or(ProtoError::Incomplete(at + 2 - b.len().min(at + 2)))
}

fn be_u32(b: &[u8], at: usize) -> Result<u32, ProtoError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(ProtoError::Incomplete(at + 4 - b.len().min(at + 4)))
}

fn be_u64(b: &[u8], at: usize) -> Result<u64, ProtoError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(ProtoError::Incomplete(at + 8 - b.len().min(at + 8)))
}
