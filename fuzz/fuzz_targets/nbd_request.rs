//! Any bytes as transmission-phase request headers: parsed, refused with
//! an errno, or a framing error; never a panic; what parses re-encodes to
//! the same header.
#![no_main]

use atrest_nbd::transmit::{Command, Request, cflag, cmd};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for header in data.chunks(Request::LEN) {
        match Request::parse(header) {
            Err(_) => return,
            Ok(Err(refusal)) => assert_ne!(refusal.errno, 0),
            Ok(Ok(r)) => {
                let sent = u16::from_be_bytes([header[4], header[5]]);
                let (ty, flags) = match r.command {
                    // FUA is accepted and ignored on READ and FLUSH.
                    Command::Read => (cmd::READ, sent & cflag::FUA),
                    Command::Write { fua } => (cmd::WRITE, if fua { cflag::FUA } else { 0 }),
                    Command::Disc => (cmd::DISC, 0),
                    Command::Flush => (cmd::FLUSH, sent & cflag::FUA),
                    Command::Trim { fua } => (cmd::TRIM, if fua { cflag::FUA } else { 0 }),
                    Command::WriteZeroes {
                        fua,
                        no_hole,
                        fast_zero,
                    } => (
                        cmd::WRITE_ZEROES,
                        (if fua { cflag::FUA } else { 0 })
                            | (if no_hole { cflag::NO_HOLE } else { 0 })
                            | (if fast_zero { cflag::FAST_ZERO } else { 0 }),
                    ),
                    Command::Unsupported(t) => (t, sent),
                };
                assert_eq!(
                    Request::encode(flags, ty, r.cookie, r.offset, r.length)[..],
                    header[..]
                );
            }
        }
    }
});
