//! The transmission phase: 28-byte requests ([`Request::parse`]), simple
//! replies and structured reply chunks.

use crate::{ProtoError, be_u16, be_u32, be_u64};

/// `NBD_REQUEST_MAGIC`.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_SIMPLE_REPLY_MAGIC`.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Command flags.
pub mod cflag {
    /// `NBD_CMD_FLAG_FUA`.
    pub const FUA: u16 = 1;
    /// `NBD_CMD_FLAG_NO_HOLE`.
    pub const NO_HOLE: u16 = 1 << 1;
    /// `NBD_CMD_FLAG_DF`.
    pub const DF: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_REQ_ONE`.
    pub const REQ_ONE: u16 = 1 << 3;
    /// `NBD_CMD_FLAG_FAST_ZERO`.
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Command types.
pub mod cmd {
    /// `NBD_CMD_READ`.
    pub const READ: u16 = 0;
    /// `NBD_CMD_WRITE`.
    pub const WRITE: u16 = 1;
    /// `NBD_CMD_DISC`.
    pub const DISC: u16 = 2;
    /// `NBD_CMD_FLUSH`.
    pub const FLUSH: u16 = 3;
    /// `NBD_CMD_TRIM`.
    pub const TRIM: u16 = 4;
    /// `NBD_CMD_CACHE`.
    pub const CACHE: u16 = 5;
    /// `NBD_CMD_WRITE_ZEROES`.
    pub const WRITE_ZEROES: u16 = 6;
    /// `NBD_CMD_BLOCK_STATUS`.
    pub const BLOCK_STATUS: u16 = 7;
}

/// Error values of replies (Linux errno numbers, as the protocol fixes).
pub mod errno {
    /// `EPERM`: the export is read-only.
    pub const EPERM: u32 = 1;
    /// `EIO`.
    pub const EIO: u32 = 5;
    /// `ENOMEM`.
    pub const ENOMEM: u32 = 12;
    /// `EINVAL`: a malformed or out-of-range request.
    pub const EINVAL: u32 = 22;
    /// `ENOSPC`.
    pub const ENOSPC: u32 = 28;
    /// `EOVERFLOW`: a request too long to answer.
    pub const EOVERFLOW: u32 = 75;
    /// `ENOTSUP`: a command or flag not negotiated.
    pub const ENOTSUP: u32 = 95;
    /// `ESHUTDOWN`: the server is shutting down (or the disk was locked).
    pub const ESHUTDOWN: u32 = 108;

    /// The error to answer for a failed I/O of this kind, among those the
    /// protocol allows: the one mapping from [`std::io::ErrorKind`] to a
    /// reply's error, never from an error's message.
    ///
    /// | kind | errno |
    /// |---|---|
    /// | `StorageFull`, `QuotaExceeded`, `FileTooLarge` | `ENOSPC` |
    /// | `PermissionDenied`, `ReadOnlyFilesystem` | `EPERM` |
    /// | `InvalidInput` | `EINVAL` |
    /// | `OutOfMemory` | `ENOMEM` |
    /// | any other | `EIO` |
    #[must_use]
    pub fn of_kind(kind: std::io::ErrorKind) -> u32 {
        use std::io::ErrorKind as K;
        match kind {
            K::StorageFull | K::QuotaExceeded | K::FileTooLarge => ENOSPC,
            K::PermissionDenied | K::ReadOnlyFilesystem => EPERM,
            K::InvalidInput => EINVAL,
            K::OutOfMemory => ENOMEM,
            _ => EIO,
        }
    }
}

/// Structured reply chunk types.
pub mod chunk {
    /// `NBD_REPLY_TYPE_NONE`.
    pub const NONE: u16 = 0;
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    pub const OFFSET_DATA: u16 = 1;
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
    pub const OFFSET_HOLE: u16 = 2;
    /// `NBD_REPLY_TYPE_ERROR`.
    pub const ERROR: u16 = (1 << 15) | 1;
    /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
    pub const ERROR_OFFSET: u16 = (1 << 15) | 2;
    /// `NBD_REPLY_FLAG_DONE`.
    pub const FLAG_DONE: u16 = 1;
}

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read `length` bytes.
    Read,
    /// Write the `length` bytes that follow the header.
    Write {
        /// Durable before the reply.
        fua: bool,
    },
    /// Disconnect after the requests in flight.
    Disc,
    /// Make every completed write durable.
    Flush,
    /// The range may read as anything afterwards (atrest: zeros).
    Trim {
        /// Durable before the reply.
        fua: bool,
    },
    /// Make the range read as zeros.
    WriteZeroes {
        /// Durable before the reply.
        fua: bool,
        /// Allocate (do not punch a hole).
        no_hole: bool,
        /// Fail rather than be slow.
        fast_zero: bool,
    },
    /// A command this server does not implement (answer `ENOTSUP`
    /// or `EINVAL`); `CACHE` and `BLOCK_STATUS` among them.
    Unsupported(u16),
}

/// A transmission-phase request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The client's cookie (handle), echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length (for WRITE, the payload that follows).
    pub length: u32,
    /// The command.
    pub command: Command,
}

/// Why a well-framed request cannot be served: answered with `errno`, the
/// connection goes on (unless the payload of a write cannot be skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The cookie to answer.
    pub cookie: u64,
    /// The error to answer.
    pub errno: u32,
    /// Why, for a structured error or the log.
    pub reason: String,
    /// Payload bytes to read and discard (a refused WRITE's data).
    pub skip: u32,
}

impl Request {
    /// The header's length on the wire.
    pub const LEN: usize = 28;

    /// Parses a header. A bad magic or a short buffer is a [`ProtoError`]
    /// (the connection cannot go on); flags that do not belong to the
    /// command, or are not known, are a [`Refusal`] to answer with
    /// `EINVAL`.
    pub fn parse(b: &[u8]) -> Result<Result<Self, Refusal>, ProtoError> {
        let magic = be_u32(b, 0)?;
        if magic != REQUEST_MAGIC {
            return Err(ProtoError::BadMagic(u64::from(magic)));
        }
        let flags = be_u16(b, 4)?;
        let ty = be_u16(b, 6)?;
        let cookie = be_u64(b, 8)?;
        let offset = be_u64(b, 16)?;
        let length = be_u32(b, 24)?;
        let refuse = |reason: String| {
            Ok(Err(Refusal {
                cookie,
                errno: errno::EINVAL,
                reason,
                skip: if ty == cmd::WRITE { length } else { 0 },
            }))
        };
        let allowed = match ty {
            cmd::WRITE | cmd::TRIM => cflag::FUA,
            cmd::WRITE_ZEROES => cflag::FUA | cflag::NO_HOLE | cflag::FAST_ZERO,
            // FUA is valid on every command once SEND_FUA is advertised
            // (clients send it on READ and FLUSH; it changes nothing there).
            cmd::READ | cmd::FLUSH => cflag::FUA,
            cmd::DISC => 0,
            _ => cflag::FUA | cflag::NO_HOLE | cflag::DF | cflag::REQ_ONE | cflag::FAST_ZERO,
        };
        if flags & !allowed != 0 {
            return refuse(format!(
                "command {ty} does not take flags {:#x}",
                flags & !allowed
            ));
        }
        if offset.checked_add(u64::from(length)).is_none() {
            return refuse(format!("offset {offset} + length {length} overflows"));
        }
        let fua = flags & cflag::FUA != 0;
        let command = match ty {
            cmd::READ => Command::Read,
            cmd::WRITE => Command::Write { fua },
            cmd::DISC => Command::Disc,
            cmd::FLUSH => Command::Flush,
            cmd::TRIM => Command::Trim { fua },
            cmd::WRITE_ZEROES => Command::WriteZeroes {
                fua,
                no_hole: flags & cflag::NO_HOLE != 0,
                fast_zero: flags & cflag::FAST_ZERO != 0,
            },
            other => Command::Unsupported(other),
        };
        Ok(Ok(Self {
            cookie,
            offset,
            length,
            command,
        }))
    }

    /// Encodes the header (for clients and tests).
    #[must_use]
    pub fn encode(flags: u16, ty: u16, cookie: u64, offset: u64, length: u32) -> [u8; 28] {
        let mut out = [0u8; 28];
        out[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&flags.to_be_bytes());
        out[6..8].copy_from_slice(&ty.to_be_bytes());
        out[8..16].copy_from_slice(&cookie.to_be_bytes());
        out[16..24].copy_from_slice(&offset.to_be_bytes());
        out[24..].copy_from_slice(&length.to_be_bytes());
        out
    }
}

/// A simple reply header (the data of a successful READ follows it).
#[must_use]
pub fn simple_reply(cookie: u64, errno: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&errno.to_be_bytes());
    out[8..].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// A structured reply chunk header; `len` bytes of payload follow.
#[must_use]
pub fn chunk_header(flags: u16, ty: u16, cookie: u64, len: u32) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&ty.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..].copy_from_slice(&len.to_be_bytes());
    out
}

/// A final `NBD_REPLY_TYPE_ERROR` chunk with a message (cut to 4 KiB).
#[must_use]
pub fn structured_error(cookie: u64, errno: u32, message: &str) -> Vec<u8> {
    let mut msg = message.as_bytes();
    if msg.len() > 4096 {
        let mut end = 4096;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        msg = &msg[..end];
    }
    let len = u16::try_from(msg.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(26 + msg.len());
    out.extend_from_slice(&chunk_header(
        chunk::FLAG_DONE,
        chunk::ERROR,
        cookie,
        6 + u32::from(len),
    ));
    out.extend_from_slice(&errno.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_refuse_what_does_not_belong() {
        let r = Request::parse(&Request::encode(cflag::FUA, cmd::WRITE, 7, 4096, 512)).unwrap();
        assert_eq!(
            r,
            Ok(Request {
                cookie: 7,
                offset: 4096,
                length: 512,
                command: Command::Write { fua: true }
            })
        );
        let z =
            Request::parse(&Request::encode(cflag::NO_HOLE, cmd::WRITE_ZEROES, 1, 0, 8)).unwrap();
        assert_eq!(
            z.unwrap().command,
            Command::WriteZeroes {
                fua: false,
                no_hole: true,
                fast_zero: false
            }
        );
        assert_eq!(
            Request::parse(&Request::encode(0, cmd::BLOCK_STATUS, 1, 0, 8))
                .unwrap()
                .unwrap()
                .command,
            Command::Unsupported(cmd::BLOCK_STATUS)
        );
        // FUA on a read or a flush is accepted (and changes nothing).
        assert_eq!(
            Request::parse(&Request::encode(cflag::FUA, cmd::READ, 9, 0, 1))
                .unwrap()
                .unwrap()
                .command,
            Command::Read
        );
        assert_eq!(
            Request::parse(&Request::encode(cflag::FUA, cmd::FLUSH, 9, 0, 0))
                .unwrap()
                .unwrap()
                .command,
            Command::Flush
        );
        // NO_HOLE on a read or a write, unknown bits: EINVAL, and a refused
        // write says how much payload to skip.
        let bad = Request::parse(&Request::encode(cflag::NO_HOLE, cmd::WRITE, 9, 0, 100)).unwrap();
        assert_eq!(bad.as_ref().unwrap_err().skip, 100);
        assert_eq!(bad.unwrap_err().errno, errno::EINVAL);
        assert!(
            Request::parse(&Request::encode(cflag::NO_HOLE, cmd::READ, 9, 0, 1))
                .unwrap()
                .is_err()
        );
        assert!(
            Request::parse(&Request::encode(1 << 9, cmd::FLUSH, 9, 0, 0))
                .unwrap()
                .is_err()
        );
        // Offset + length overflowing.
        assert!(
            Request::parse(&Request::encode(0, cmd::READ, 9, u64::MAX, 2))
                .unwrap()
                .is_err()
        );
        // Framing errors end the connection.
        let mut m = Request::encode(0, cmd::READ, 1, 0, 1);
        m[0] = 0;
        assert!(matches!(Request::parse(&m), Err(ProtoError::BadMagic(_))));
        for n in 0..28 {
            assert!(matches!(
                Request::parse(&Request::encode(0, cmd::READ, 1, 0, 1)[..n]),
                Err(ProtoError::Incomplete(_))
            ));
        }
    }

    /// Every kind the mapping names, and a few it does not (`EIO`).
    #[test]
    fn errno_of_kind_covers_each_kind() {
        use std::io::ErrorKind as K;
        for (kind, want) in [
            (K::StorageFull, errno::ENOSPC),
            (K::QuotaExceeded, errno::ENOSPC),
            (K::FileTooLarge, errno::ENOSPC),
            (K::PermissionDenied, errno::EPERM),
            (K::ReadOnlyFilesystem, errno::EPERM),
            (K::InvalidInput, errno::EINVAL),
            (K::OutOfMemory, errno::ENOMEM),
            (K::Other, errno::EIO),
            (K::NotFound, errno::EIO),
            (K::UnexpectedEof, errno::EIO),
            (K::InvalidData, errno::EIO),
            (K::TimedOut, errno::EIO),
        ] {
            assert_eq!(errno::of_kind(kind), want, "{kind:?}");
        }
        // An OS error goes by its kind: ENOSPC (28) and EDQUOT (122) from
        // the pool's file system are both ENOSPC to the client, EROFS (30)
        // is EPERM.
        for (os, want) in [
            (28, errno::ENOSPC),
            (122, errno::ENOSPC),
            (30, errno::EPERM),
        ] {
            let e = std::io::Error::from_raw_os_error(os);
            assert_eq!(errno::of_kind(e.kind()), want, "{e}");
        }
    }

    #[test]
    fn replies_encode() {
        let s = simple_reply(0xdead, errno::EIO);
        assert_eq!(&s[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&s[4..8], &5u32.to_be_bytes());
        assert_eq!(&s[8..], &0xdeadu64.to_be_bytes());
        let e = structured_error(3, errno::ESHUTDOWN, "key disabled");
        assert_eq!(e.len(), 20 + 6 + 12);
        assert_eq!(&e[16..20], &18u32.to_be_bytes());
        let long = "é".repeat(3000);
        let e = structured_error(3, errno::EIO, &long);
        assert!(e.len() <= 20 + 6 + 4096);
        assert!(std::str::from_utf8(&e[26..]).is_ok());
    }
}
