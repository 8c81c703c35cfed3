//! Reading a segment front to back against the chain and the head; shared
//! by open (which repairs) and `verify` (which only reports).

use std::io::{self, BufRead};

use crate::format::{Chain, raw_time};
use crate::read::{Line, MAX_LINE, next_line};
use crate::segment::TimeRange;

/// The first line that is not a good record.
#[derive(Debug)]
pub(crate) struct Bad {
    /// Its line number: the seq it should have.
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
    /// The seq of the last good record before the first bad line (the
    /// chain's start if there is none).
    pub(crate) good: u64,
    /// The mac of that record.
    pub(crate) prev: [u8; 64],
    /// Bytes of the good records in this segment.
    pub(crate) offset: u64,
    pub(crate) bad: Option<Bad>,
}

/// Reads one segment's lines until the first bad one, continuing `chain`.
/// With `head = Some((seq, mac))`, the record at `seq` (if it is in this
/// segment) must also have that mac. `times` gets the time of each good
/// record.
pub(crate) fn scan<R: BufRead>(
    mut reader: R,
    chain: &mut Chain,
    head: Option<(u64, [u8; 64])>,
    mut times: Option<&mut TimeRange>,
) -> io::Result<Scan> {
    let mut offset = 0u64;
    let mut prev = chain.prev;
    let mut line = Line::default();
    let bad = loop {
        if !next_line(&mut reader, &mut line)? {
            break None;
        }
        let no = chain.next_seq;
        if !line.newline {
            break Some(Bad {
                line: no,
                reason: "incomplete line (no newline at the end of the file)".into(),
                incomplete: true,
                debris: true,
                zeros: line.all_nul(),
            });
        }
        let checked = if line.cut {
            Err(format!(
                "unparsable line (not a record: longer than {MAX_LINE} bytes)"
            ))
        } else {
            chain.check(&line.bytes)
        };
        if let Err(reason) = checked {
            break Some(Bad {
                line: no,
                reason,
                incomplete: false,
                debris: line.has_nul(),
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
        if let Some(t) = times.as_deref_mut() {
            t.add(raw_time(&line.bytes));
        }
        offset += line.len;
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
