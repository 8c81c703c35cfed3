//! The handshake and option haggling (fixed newstyle).
//!
//! The server sends [`greeting`]; the client answers 4 bytes of flags
//! ([`client_flags`]); then each option is a 16-byte header
//! ([`OptionHeader::parse`]) and a payload ([`ClientOption::parse`]), each
//! answered with replies built here.

use crate::{
    IHAVEOPT, MAX_NAME_LEN, MAX_OPTION_LEN, NBD_MAGIC, ProtoError, REPLY_MAGIC, be_u16, be_u32,
    be_u64, handshake,
};

/// Option codes.
pub mod opt {
    /// `NBD_OPT_EXPORT_NAME`.
    pub const EXPORT_NAME: u32 = 1;
    /// `NBD_OPT_ABORT`.
    pub const ABORT: u32 = 2;
    /// `NBD_OPT_LIST`.
    pub const LIST: u32 = 3;
    /// `NBD_OPT_STARTTLS`.
    pub const STARTTLS: u32 = 5;
    /// `NBD_OPT_INFO`.
    pub const INFO: u32 = 6;
    /// `NBD_OPT_GO`.
    pub const GO: u32 = 7;
    /// `NBD_OPT_STRUCTURED_REPLY`.
    pub const STRUCTURED_REPLY: u32 = 8;
}

/// Option reply types.
pub mod rep {
    /// `NBD_REP_ACK`.
    pub const ACK: u32 = 1;
    /// `NBD_REP_SERVER`.
    pub const SERVER: u32 = 2;
    /// `NBD_REP_INFO`.
    pub const INFO: u32 = 3;
    /// `NBD_REP_ERR_UNSUP`.
    pub const ERR_UNSUP: u32 = (1 << 31) | 1;
    /// `NBD_REP_ERR_POLICY`.
    pub const ERR_POLICY: u32 = (1 << 31) | 2;
    /// `NBD_REP_ERR_INVALID`.
    pub const ERR_INVALID: u32 = (1 << 31) | 3;
    /// `NBD_REP_ERR_PLATFORM`.
    pub const ERR_PLATFORM: u32 = (1 << 31) | 4;
    /// `NBD_REP_ERR_TLS_REQD`.
    pub const ERR_TLS_REQD: u32 = (1 << 31) | 5;
    /// `NBD_REP_ERR_UNKNOWN`.
    pub const ERR_UNKNOWN: u32 = (1 << 31) | 6;
    /// `NBD_REP_ERR_SHUTDOWN`.
    pub const ERR_SHUTDOWN: u32 = (1 << 31) | 7;
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`.
    pub const ERR_BLOCK_SIZE_REQD: u32 = (1 << 31) | 8;
    /// `NBD_REP_ERR_TOO_BIG`.
    pub const ERR_TOO_BIG: u32 = (1 << 31) | 9;
}

/// `NBD_INFO_*` types.
pub mod info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// `NBD_INFO_NAME`.
    pub const NAME: u16 = 1;
    /// `NBD_INFO_DESCRIPTION`.
    pub const DESCRIPTION: u16 = 2;
    /// `NBD_INFO_BLOCK_SIZE`: minimum, preferred, maximum.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags.
pub mod tflag {
    /// `NBD_FLAG_HAS_FLAGS`.
    pub const HAS_FLAGS: u16 = 1;
    /// `NBD_FLAG_READ_ONLY`.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_FLAG_SEND_FLUSH`.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_FLAG_SEND_FUA`.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_FLAG_ROTATIONAL`.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// `NBD_FLAG_SEND_TRIM`.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_FLAG_SEND_WRITE_ZEROES`.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_FLAG_SEND_DF`.
    pub const SEND_DF: u16 = 1 << 7;
    /// `NBD_FLAG_CAN_MULTI_CONN`.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// The server's first 18 bytes.
#[must_use]
pub fn greeting() -> [u8; 18] {
    let mut out = [0u8; 18];
    out[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&(handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES).to_be_bytes());
    out
}

/// The client's flags, as agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    /// The client speaks fixed newstyle.
    pub fixed_newstyle: bool,
    /// No 124 zero bytes after `NBD_OPT_EXPORT_NAME`'s reply.
    pub no_zeroes: bool,
}

/// Parses the client's 4 flag bytes. Unknown bits are refused (the server
/// must then close the connection).
pub fn client_flags(b: &[u8]) -> Result<ClientFlags, ProtoError> {
    let f = be_u32(b, 0)?;
    let known = handshake::C_FIXED_NEWSTYLE | handshake::C_NO_ZEROES;
    if f & !known != 0 {
        return Err(ProtoError::Invalid(format!("unknown client flags {f:#x}")));
    }
    Ok(ClientFlags {
        fixed_newstyle: f & handshake::C_FIXED_NEWSTYLE != 0,
        no_zeroes: f & handshake::C_NO_ZEROES != 0,
    })
}

/// The 16-byte header of a client option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option code.
    pub option: u32,
    /// The payload length that follows.
    pub len: u32,
}

impl OptionHeader {
    /// The header's length on the wire.
    pub const LEN: usize = 16;

    /// Parses a header. A payload longer than [`MAX_OPTION_LEN`] is
    /// refused before it is read (the server answers and closes).
    pub fn parse(b: &[u8]) -> Result<Self, ProtoError> {
        let magic = be_u64(b, 0)?;
        if magic != IHAVEOPT {
            return Err(ProtoError::BadMagic(magic));
        }
        let option = be_u32(b, 8)?;
        let len = be_u32(b, 12)?;
        if len > MAX_OPTION_LEN {
            return Err(ProtoError::TooLong {
                what: "option payload",
                len: u64::from(len),
                max: u64::from(MAX_OPTION_LEN),
            });
        }
        Ok(Self { option, len })
    }
}

/// The export an `NBD_OPT_INFO` or `NBD_OPT_GO` asks about, and the
/// information it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name (empty: the default export).
    pub name: String,
    /// `NBD_INFO_*` types requested.
    pub requests: Vec<u16>,
}

/// A parsed client option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME` (ends negotiation; no error reply possible).
    ExportName(String),
    /// `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_STARTTLS`.
    StartTls,
    /// `NBD_OPT_INFO`.
    Info(InfoRequest),
    /// `NBD_OPT_GO`.
    Go(InfoRequest),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// An option this server does not know (answer [`rep::ERR_UNSUP`]).
    Unsupported(u32),
}

fn name(b: &[u8]) -> Result<String, ProtoError> {
    if b.len() > MAX_NAME_LEN as usize {
        return Err(ProtoError::TooLong {
            what: "export name",
            len: b.len() as u64,
            max: u64::from(MAX_NAME_LEN),
        });
    }
    String::from_utf8(b.to_vec())
        .map_err(|_| ProtoError::Invalid("the export name is not UTF-8".into()))
}

fn empty(option: &str, payload: &[u8]) -> Result<(), ProtoError> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err(ProtoError::Invalid(format!(
            "{option} takes no data, got {} bytes",
            payload.len()
        )))
    }
}

impl ClientOption {
    /// Parses `option`'s `payload` (exactly the header's length).
    pub fn parse(option: u32, payload: &[u8]) -> Result<Self, ProtoError> {
        Ok(match option {
            opt::EXPORT_NAME => Self::ExportName(name(payload)?),
            opt::ABORT => {
                // The client may send data with ABORT; it is ignored.
                Self::Abort
            }
            opt::LIST => {
                empty("NBD_OPT_LIST", payload)?;
                Self::List
            }
            opt::STARTTLS => {
                empty("NBD_OPT_STARTTLS", payload)?;
                Self::StartTls
            }
            opt::STRUCTURED_REPLY => {
                empty("NBD_OPT_STRUCTURED_REPLY", payload)?;
                Self::StructuredReply
            }
            opt::INFO | opt::GO => {
                let len = be_u32(payload, 0)? as usize;
                let rest = &payload[4..];
                if len > rest.len() {
                    return Err(ProtoError::Invalid(format!(
                        "export name of {len} bytes in {} bytes of data",
                        rest.len()
                    )));
                }
                let name = name(&rest[..len])?;
                let rest = &rest[len..];
                let n = usize::from(be_u16(rest, 0)?);
                let list = &rest[2..];
                if list.len() != n * 2 {
                    return Err(ProtoError::Invalid(format!(
                        "{n} information requests in {} bytes",
                        list.len()
                    )));
                }
                let requests = list
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                let req = InfoRequest { name, requests };
                if option == opt::GO {
                    Self::Go(req)
                } else {
                    Self::Info(req)
                }
            }
            other => Self::Unsupported(other),
        })
    }
}

/// An option reply: header and data.
#[must_use]
pub fn reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// `NBD_REP_SERVER` for one export of `NBD_OPT_LIST`.
#[must_use]
pub fn reply_server(name: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(4 + name.len());
    data.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    reply(opt::LIST, rep::SERVER, &data)
}

/// `NBD_INFO_EXPORT`: size and transmission flags.
#[must_use]
pub fn info_export(option: u32, size: u64, flags: u16) -> Vec<u8> {
    let mut data = Vec::with_capacity(12);
    data.extend_from_slice(&info::EXPORT.to_be_bytes());
    data.extend_from_slice(&size.to_be_bytes());
    data.extend_from_slice(&flags.to_be_bytes());
    reply(option, rep::INFO, &data)
}

/// `NBD_INFO_BLOCK_SIZE`.
#[must_use]
pub fn info_block_size(option: u32, min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut data = Vec::with_capacity(14);
    data.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    for v in [min, preferred, max] {
        data.extend_from_slice(&v.to_be_bytes());
    }
    reply(option, rep::INFO, &data)
}

/// `NBD_INFO_NAME`.
#[must_use]
pub fn info_name(option: u32, name: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(2 + name.len());
    data.extend_from_slice(&info::NAME.to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    reply(option, rep::INFO, &data)
}

/// The answer to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zero bytes
/// unless the client asked for none.
#[must_use]
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(134);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(option: u32, len: u32) -> Vec<u8> {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b
    }

    fn go_payload(name: &[u8], reqs: &[u16]) -> Vec<u8> {
        let mut p = u32::try_from(name.len()).unwrap().to_be_bytes().to_vec();
        p.extend_from_slice(name);
        p.extend_from_slice(&u16::try_from(reqs.len()).unwrap().to_be_bytes());
        for r in reqs {
            p.extend_from_slice(&r.to_be_bytes());
        }
        p
    }

    #[test]
    fn greeting_and_flags() {
        let g = greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), 3);
        assert_eq!(
            client_flags(&3u32.to_be_bytes()),
            Ok(ClientFlags {
                fixed_newstyle: true,
                no_zeroes: true
            })
        );
        assert!(matches!(
            client_flags(&4u32.to_be_bytes()),
            Err(ProtoError::Invalid(_))
        ));
        assert!(matches!(
            client_flags(&[0, 0]),
            Err(ProtoError::Incomplete(2))
        ));
    }

    #[test]
    fn option_headers() {
        assert_eq!(
            OptionHeader::parse(&header(opt::GO, 10)),
            Ok(OptionHeader {
                option: opt::GO,
                len: 10
            })
        );
        let mut bad = header(opt::GO, 10);
        bad[0] ^= 1;
        assert!(matches!(
            OptionHeader::parse(&bad),
            Err(ProtoError::BadMagic(_))
        ));
        assert!(matches!(
            OptionHeader::parse(&header(opt::GO, MAX_OPTION_LEN + 1)),
            Err(ProtoError::TooLong { .. })
        ));
        for n in 0..16 {
            assert!(matches!(
                OptionHeader::parse(&header(opt::GO, 1)[..n]),
                Err(ProtoError::Incomplete(_))
            ));
        }
    }

    #[test]
    fn options() {
        assert_eq!(
            ClientOption::parse(opt::GO, &go_payload(b"disk-1", &[info::BLOCK_SIZE])),
            Ok(ClientOption::Go(InfoRequest {
                name: "disk-1".into(),
                requests: vec![3]
            }))
        );
        assert_eq!(
            ClientOption::parse(opt::INFO, &go_payload(b"", &[])),
            Ok(ClientOption::Info(InfoRequest {
                name: String::new(),
                requests: vec![]
            }))
        );
        assert_eq!(
            ClientOption::parse(opt::EXPORT_NAME, b"x"),
            Ok(ClientOption::ExportName("x".into()))
        );
        assert_eq!(ClientOption::parse(opt::LIST, b""), Ok(ClientOption::List));
        assert_eq!(
            ClientOption::parse(42, b"abc"),
            Ok(ClientOption::Unsupported(42))
        );
        // Malformed: data where none belongs, names running past the end,
        // request counts that do not match, names that are not UTF-8.
        assert!(ClientOption::parse(opt::LIST, b"x").is_err());
        assert!(ClientOption::parse(opt::STARTTLS, b"x").is_err());
        assert!(ClientOption::parse(opt::GO, &[0, 0, 0, 9, b'a']).is_err());
        let mut p = go_payload(b"a", &[1, 2]);
        p.pop();
        assert!(ClientOption::parse(opt::GO, &p).is_err());
        assert!(ClientOption::parse(opt::GO, &go_payload(&[0xff, 0xfe], &[])).is_err());
        assert!(ClientOption::parse(opt::GO, &[0, 0]).is_err());
        assert!(ClientOption::parse(opt::EXPORT_NAME, &vec![b'a'; 4097]).is_err());
    }

    #[test]
    fn replies() {
        let r = info_export(opt::GO, 1 << 30, tflag::HAS_FLAGS | tflag::SEND_FLUSH);
        assert_eq!(&r[..8], &REPLY_MAGIC.to_be_bytes());
        assert_eq!(u32::from_be_bytes(r[12..16].try_into().unwrap()), rep::INFO);
        assert_eq!(u32::from_be_bytes(r[16..20].try_into().unwrap()), 12);
        assert_eq!(u64::from_be_bytes(r[22..30].try_into().unwrap()), 1 << 30);
        assert_eq!(info_block_size(opt::GO, 512, 4096, 1 << 25).len(), 20 + 14);
        assert_eq!(export_name_reply(7, 1, false).len(), 134);
        assert_eq!(export_name_reply(7, 1, true).len(), 10);
        let s = reply_server("disk-1");
        assert_eq!(&s[20..24], &6u32.to_be_bytes());
        assert_eq!(&s[24..], b"disk-1");
    }
}
