//! Reading a log front to back against the chain and the head; shared by
//! open (which repairs) and `verify` (which only reports).

use std::io::{self, BufRead};

use atrest_crypto::SecretKey;

use crate::format::Chain;

/// The first line that is not a good record.
#[derive(Debug)]
pub(crate) struct Bad {
    /// Its 1-based line number.
    pub(crate) line: u64,
    pub(crate) reason: String,
    /// Whether it is an incomplete final line (no `\n`).
    pub(crate) incomplete: bool,
    /// Whether it could be left by a crash during a write: incomplete, or
    /// holding a NUL byte (a block the file system had allocated but not
    /// yet written). Nothing else that is wrong can come from a crash.
    pub(crate) debris: bool,
    /// Whether it is an incomplete final line of zeros only: the log's
    /// preallocated space, left by a writer that did not close the log.
    pub(crate) zeros: bool,
}

#[derive(Debug)]
pub(crate) struct Scan {
    /// Good records, from the first, before the first bad line.
    pub(crate) good: u64,
    /// The mac of the last good record.
    pub(crate) prev: [u8; 64],
    /// Bytes of the good records.
    pub(crate) offset: u64,
    pub(crate) bad: Option<Bad>,
}

/// Reads lines until the first bad one. With `head = Some((seq, mac))`, the
/// record at `seq` must also have that mac.
pub(crate) fn scan<R: BufRead>(
    mut reader: R,
    key: &SecretKey<32>,
    head: Option<(u64, [u8; 64])>,
) -> io::Result<Scan> {
    let mut chain = Chain::new(key);
    let mut offset = 0u64;
    let mut prev = chain.prev;
    let mut line = Vec::with_capacity(1024);
    let bad = loop {
        line.clear();
        let got = reader.read_until(b'\n', &mut line)?;
        if got == 0 {
            break None;
        }
        let no = chain.next_seq;
        let Some(body) = line.strip_suffix(b"\n") else {
            break Some(Bad {
                line: no,
                reason: "incomplete line (no newline at the end of the file)".into(),
                incomplete: true,
                debris: true,
                zeros: line.iter().all(|&b| b == 0),
            });
        };
        if let Err(reason) = chain.check(body) {
            break Some(Bad {
                line: no,
                reason,
                incomplete: false,
                debris: body.contains(&0),
                zeros: false,
            });
        }
        if let Some((seq, mac)) = head
            && seq == no
            && chain.prev != mac
        {
            break Some(Bad {
                line: no,
                reason: "its mac differs from the one audit.head names (the record or the head \
                         was replaced)"
                    .into(),
                incomplete: false,
                debris: false,
                zeros: false,
            });
        }
        offset += got as u64;
        prev = chain.prev;
    };
    let good = match &bad {
        Some(b) => b.line - 1,
        None => chain.next_seq - 1,
    };
    Ok(Scan {
        good,
        prev,
        offset,
        bad,
    })
}

/// The reason for a log that ends before the head's record.
pub(crate) fn missing_reason(head_seq: u64, good: u64) -> String {
    format!(
        "missing: audit.head says the log ends with record {head_seq}, but the file ends after \
         record {good} (records were deleted from the end)"
    )
}
