//! Reading the log's files in fixed-size blocks: lines backwards (queries,
//! newest first) and forwards (the visitor, verification, recovery), the
//! search of a segment for a seq, and the filters applied while reading.
//!
//! Nothing here holds more than one block, one line (at most [`MAX_LINE`]
//! bytes; a longer one is skipped) and what the caller keeps.

use std::fs::File;
use std::io::{self, BufRead};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;

use memchr::{memchr, memmem, memrchr};

use crate::format::{json_string, parse_record, raw_seq, raw_time};
use crate::storage::Storage;
use crate::{Filter, Record};

/// The block size of every read.
pub(crate) const BLOCK: usize = 64 * 1024;
/// The longest line a reader holds. The writer refuses a record whose line
/// would be longer, so only damage makes one; readers skip it (queries) or
/// report it (verification).
pub(crate) const MAX_LINE: usize = 1 << 20;

/// Positioned reads, of a file or a [`Storage`].
pub(crate) trait ReadAt {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match FileExt::read_at(self, buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

/// A [`Storage`] read through [`ReadAt`].
pub(crate) struct OfStorage<'a, S: ?Sized>(pub(crate) &'a S);

impl<S: Storage + ?Sized> ReadAt for OfStorage<'_, S> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_at(offset, buf)
    }
}

/// Reads `buf.len()` bytes at `offset`, fewer only at the end of the file.
fn read_full(src: &dyn ReadAt, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        let n = src.read_at(offset + at as u64, &mut buf[at..])?;
        if n == 0 {
            break;
        }
        at += n;
    }
    Ok(at)
}

fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the file became shorter while it was read",
    )
}

/// Where the last complete line of `[start, end)` ends (just after its
/// `\n`), or `start` if there is none. What follows it is not a record: a
/// write in progress, a torn one, or the writer's preallocated zeros.
pub(crate) fn complete_end(src: &dyn ReadAt, start: u64, end: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; BLOCK];
    let mut hi = end;
    while hi > start {
        let lo = hi.saturating_sub(BLOCK as u64).max(start);
        let n = usize::try_from(hi - lo).unwrap_or(BLOCK);
        let got = read_full(src, lo, &mut buf[..n])?;
        if let Some(i) = memrchr(b'\n', &buf[..got]) {
            return Ok(lo + i as u64 + 1);
        }
        hi = lo;
    }
    Ok(start)
}

/// Calls `f` on each line of `[start, end)` (without its `\n`), the last
/// first; `end` must be just after a `\n` (or `start`). With `needle`, only
/// on the lines that contain it, found by searching whole blocks (the lines
/// between are never looked at one by one). A line longer than
/// [`MAX_LINE`] is skipped, with a warning naming `what`.
pub(crate) fn lines_back(
    src: &dyn ReadAt,
    (start, end): (u64, u64),
    needle: Option<&[u8]>,
    what: &dyn Fn() -> String,
    mut f: impl FnMut(&[u8]) -> ControlFlow<()>,
) -> io::Result<()> {
    let mut pos = end;
    // The end of a line that begins before `pos`, `\n` included.
    let mut carry: Vec<u8> = Vec::new();
    // The line ending at `pos` was too long: its bytes are being dropped.
    let mut skipping = false;
    let mut block = vec![0u8; BLOCK];
    let mut data: Vec<u8> = Vec::with_capacity(BLOCK + 1024);
    while pos > start {
        let lo = pos.saturating_sub(BLOCK as u64).max(start);
        let n = usize::try_from(pos - lo).unwrap_or(BLOCK);
        if read_full(src, lo, &mut block[..n])? < n {
            return Err(shrank());
        }
        // (Copies, not a resize: in a debug build `resize` writes byte by
        // byte.)
        data.clear();
        data.extend_from_slice(&block[..n]);
        pos = lo;
        if skipping {
            // Up to the last `\n`, the block is lines before the long one.
            match memrchr(b'\n', &data) {
                None => continue,
                Some(j) => {
                    data.truncate(j + 1);
                    skipping = false;
                }
            }
        } else {
            data.extend_from_slice(&carry);
        }
        carry.clear();
        let from = if pos == start {
            0
        } else {
            match memchr(b'\n', &data) {
                Some(k) => k + 1,
                None => {
                    // All of it is inside one line.
                    if data.len() > MAX_LINE {
                        tracing::warn!(file = %what(), offset = pos, "audit query: skipping a line longer than {MAX_LINE} bytes");
                        skipping = true;
                    } else {
                        std::mem::swap(&mut carry, &mut data);
                    }
                    continue;
                }
            }
        };
        carry.extend_from_slice(&data[..from]);
        let mut g = |line: &[u8]| {
            if line.len() > MAX_LINE {
                tracing::warn!(file = %what(), offset = pos, "audit query: skipping a line longer than {MAX_LINE} bytes");
                return ControlFlow::Continue(());
            }
            f(line)
        };
        if each_line_back(&data[from..], needle, &mut g).is_break() {
            return Ok(());
        }
    }
    Ok(())
}

/// `f` on each line of `region` (whole lines, each ending in `\n`), the
/// last first; with `needle`, only on the lines holding it.
fn each_line_back(
    region: &[u8],
    needle: Option<&[u8]>,
    f: &mut impl FnMut(&[u8]) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let line_start = |p: usize| memrchr(b'\n', &region[..p]).map_or(0, |i| i + 1);
    match needle {
        None => {
            let mut end = region.len();
            while end > 0 {
                let s = line_start(end - 1);
                f(&region[s..end - 1])?;
                end = s;
            }
        }
        Some(needle) => {
            // Found forwards (the forward search is the vectorised one),
            // taken last first; a hit inside a line already seen is
            // skipped.
            let hits: Vec<usize> = memmem::find_iter(region, needle).collect();
            let mut seen_from = region.len();
            for &p in hits.iter().rev() {
                if p >= seen_from {
                    continue;
                }
                let s = line_start(p);
                let e = memchr(b'\n', &region[p..]).map_or(region.len(), |i| p + i);
                f(&region[s..e])?;
                seen_from = s;
            }
        }
    }
    ControlFlow::Continue(())
}

/// One line read forwards by [`next_line`].
#[derive(Default)]
pub(crate) struct Line {
    /// Its bytes, without the `\n`; only the first [`MAX_LINE`] + 1 when it
    /// is longer (`cut`).
    pub(crate) bytes: Vec<u8>,
    /// Bytes it took in the file, `\n` included.
    pub(crate) len: u64,
    /// It ended with a `\n` (else it is the end of the file).
    pub(crate) newline: bool,
    /// It was longer than [`MAX_LINE`]; the rest was dropped.
    pub(crate) cut: bool,
    dropped_nul: bool,
    dropped_other: bool,
}

impl Line {
    /// Whether it holds a NUL byte.
    pub(crate) fn has_nul(&self) -> bool {
        self.dropped_nul || memchr(0, &self.bytes).is_some()
    }

    /// Whether it is NUL bytes only.
    pub(crate) fn all_nul(&self) -> bool {
        !self.dropped_other && self.bytes.iter().all(|&b| b == 0)
    }
}

/// Reads the next line into `line`; false at the end of the input.
pub(crate) fn next_line<R: BufRead>(r: &mut R, line: &mut Line) -> io::Result<bool> {
    line.bytes.clear();
    line.len = 0;
    line.newline = false;
    line.cut = false;
    line.dropped_nul = false;
    line.dropped_other = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let (chunk, done) = match memchr(b'\n', buf) {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        let room = (MAX_LINE + 1).saturating_sub(line.bytes.len());
        let (keep, drop) = chunk.split_at(chunk.len().min(room));
        line.bytes.extend_from_slice(keep);
        if !drop.is_empty() {
            line.cut = true;
            line.dropped_nul |= memchr(0, drop).is_some();
            line.dropped_other |= drop.iter().any(|&b| b != 0);
        }
        let used = chunk.len() + usize::from(done);
        line.len += used as u64;
        r.consume(used);
        if done {
            line.newline = true;
            break;
        }
    }
    if line.bytes.len() > MAX_LINE {
        line.cut = true;
    }
    Ok(line.len > 0)
}

/// Reads the first 64 bytes of the line at `at` and returns its seq.
fn seq_at(src: &dyn ReadAt, at: u64) -> io::Result<Option<u64>> {
    let mut head = [0u8; 64];
    let n = read_full(src, at, &mut head)?;
    Ok(raw_seq(&head[..n]))
}

/// The start of the first line that begins after `at` and before `hi`.
fn next_line_start(src: &dyn ReadAt, at: u64, hi: u64) -> io::Result<Option<u64>> {
    let mut buf = [0u8; 4096];
    let mut p = at;
    while p < hi && p - at <= MAX_LINE as u64 {
        let n = read_full(src, p, &mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(i) = memchr(b'\n', &buf[..n]) {
            let s = p + i as u64 + 1;
            return Ok((s < hi).then_some(s));
        }
        p += n as u64;
    }
    Ok(None)
}

/// Bisects `[start, end)` (whole lines, seqs increasing) for the lines
/// with seq below `target`: returns `(lo, hi)`, line starts (or the
/// bounds), such that every line before `lo` has a seq below `target` and
/// every line with a seq below `target` begins before `hi`. An unreadable
/// line stops the search early (the bounds are then only wider).
pub(crate) fn bisect(
    src: &dyn ReadAt,
    start: u64,
    end: u64,
    target: u64,
) -> io::Result<(u64, u64)> {
    let (mut lo, mut hi) = (start, end);
    while hi - lo > BLOCK as u64 {
        let mid = lo + (hi - lo) / 2;
        let Some(ls) = next_line_start(src, mid, hi)? else {
            break;
        };
        match seq_at(src, ls)? {
            Some(s) if s >= target => hi = ls,
            Some(_) => lo = ls,
            None => break,
        }
    }
    Ok((lo, hi))
}

/// The line of record `seq` in `[start, end)`, if it is there.
pub(crate) fn find_line(
    src: &dyn ReadAt,
    start: u64,
    end: u64,
    seq: u64,
) -> io::Result<Option<Vec<u8>>> {
    let (lo, _) = bisect(src, start, end, seq)?;
    let mut reader = io::BufReader::with_capacity(
        BLOCK,
        io::Read::take(AtReader { src, offset: lo }, end - lo),
    );
    let mut line = Line::default();
    while next_line(&mut reader, &mut line)? {
        match raw_seq(&line.bytes) {
            Some(s) if s == seq && line.newline && !line.cut => {
                return Ok(Some(std::mem::take(&mut line.bytes)));
            }
            Some(s) if s > seq => return Ok(None),
            _ => {}
        }
    }
    Ok(None)
}

/// Reads a [`ReadAt`] sequentially from an offset.
pub(crate) struct AtReader<'a> {
    pub(crate) src: &'a dyn ReadAt,
    pub(crate) offset: u64,
}

impl io::Read for AtReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read_at(self.offset, buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// A [`Filter`] applied to lines as they are read.
pub(crate) struct Matcher<'f> {
    filter: &'f Filter,
    /// `"field":"value"` for every field the filter wants equal, the most
    /// selective first. Every line the writer makes for a matching record
    /// holds each of them, and a line that does not hold one cannot match
    /// (a string value holds no unescaped `"`, so they appear nowhere
    /// else); lines without them are dropped before any parse.
    needles: Vec<Vec<u8>>,
}

impl<'f> Matcher<'f> {
    pub(crate) fn new(filter: &'f Filter) -> Self {
        let mut needles = Vec::new();
        for (field, value) in [
            ("key_arn", &filter.key_arn),
            ("principal", &filter.principal),
            ("account", &filter.account),
            ("operation", &filter.operation),
        ] {
            if let Some(v) = value {
                let mut n = Vec::with_capacity(v.len() + field.len() + 6);
                n.push(b'"');
                n.extend_from_slice(field.as_bytes());
                n.extend_from_slice(b"\":");
                json_string(&mut n, v);
                needles.push(n);
            }
        }
        Self { filter, needles }
    }

    /// The filter's `before`.
    pub(crate) fn before(&self) -> Option<u64> {
        self.filter.before
    }

    /// What to search whole blocks for.
    pub(crate) fn needle(&self) -> Option<&[u8]> {
        self.needles.first().map(Vec::as_slice)
    }

    /// The record of `line` if it matches. A line holding a NUL byte is a
    /// write in progress (part of it read before the write over the
    /// preallocated zeros); one that does not parse is skipped, with a
    /// warning naming `what`.
    pub(crate) fn record(&self, line: &[u8], what: &dyn Fn() -> String) -> Option<Record> {
        let f = self.filter;
        if memchr(0, line).is_some() {
            return None;
        }
        if let Some(before) = f.before
            && raw_seq(line).is_some_and(|s| s >= before)
        {
            return None;
        }
        if (f.since.is_some() || f.until.is_some())
            && let Some(t) = raw_time(line)
            && (f.since.as_ref().is_some_and(|s| t < s.as_bytes())
                || f.until.as_ref().is_some_and(|u| t >= u.as_bytes()))
        {
            return None;
        }
        if self.needles.iter().any(|n| memmem::find(line, n).is_none()) {
            return None;
        }
        match parse_record(line) {
            Ok(r) => f.matches(&r).then_some(r),
            Err(e) => {
                let seq = raw_seq(line);
                tracing::warn!(file = %what(), ?seq, error = %e, "audit query: skipping an unparsable line");
                None
            }
        }
    }
}

/// Reads the lines of `[0, end)` of `src` forwards and calls `f` on the
/// record of each; lines that are no record (a NUL byte, too long,
/// unparsable) are skipped, with a warning naming `what`.
pub(crate) fn records_forward(
    src: &dyn ReadAt,
    end: u64,
    what: &dyn Fn() -> String,
    f: &mut dyn FnMut(&Record),
) -> io::Result<u64> {
    let mut reader =
        io::BufReader::with_capacity(BLOCK, io::Read::take(AtReader { src, offset: 0 }, end));
    let mut line = Line::default();
    let mut n = 0;
    while next_line(&mut reader, &mut line)? {
        if !line.newline {
            break;
        }
        if line.cut || line.has_nul() {
            tracing::warn!(file = %what(), "audit log: skipping a line that is no record");
            continue;
        }
        match parse_record(&line.bytes) {
            Ok(r) => {
                f(&r);
                n += 1;
            }
            Err(e) => {
                tracing::warn!(file = %what(), seq = ?raw_seq(&line.bytes), error = %e, "audit log: skipping an unparsable line");
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(n: usize, width: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 1..=n {
            let body = format!("{{\"seq\":{i},\"x\":\"{}\"}}", "a".repeat(i % width));
            out.extend_from_slice(body.as_bytes());
            out.push(b'\n');
        }
        out
    }

    struct Mem(Vec<u8>);
    impl ReadAt for Mem {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            let off = usize::try_from(offset).unwrap().min(self.0.len());
            let n = buf.len().min(self.0.len() - off);
            buf[..n].copy_from_slice(&self.0[off..off + n]);
            Ok(n)
        }
    }

    fn back(data: &[u8], needle: Option<&[u8]>) -> Vec<Vec<u8>> {
        let src = Mem(data.to_vec());
        let end = complete_end(&src, 0, data.len() as u64).unwrap();
        let mut out = Vec::new();
        lines_back(&src, (0, end), needle, &|| "mem".into(), |l| {
            out.push(l.to_vec());
            ControlFlow::Continue(())
        })
        .unwrap();
        out
    }

    #[test]
    fn backwards_reads_every_line_across_blocks() {
        for (n, width) in [(0, 1), (1, 1), (3, 5), (5000, 90), (300, 1000)] {
            let data = lines_of(n, width);
            let want: Vec<Vec<u8>> = data
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .rev()
                .map(<[u8]>::to_vec)
                .collect();
            assert_eq!(back(&data, None), want, "{n}");
            // A torn tail and preallocated zeros are no lines.
            let mut tail = data.clone();
            tail.extend_from_slice(b"{\"seq\":9999,\"x\":");
            tail.resize(tail.len() + 3 * BLOCK + 17, 0);
            assert_eq!(back(&tail, None), want, "{n}");
            // With a needle, exactly the lines holding it.
            let needle = b"\"x\":\"aaa\"";
            let with: Vec<Vec<u8>> = want
                .iter()
                .filter(|l| memmem::find(l, needle).is_some())
                .cloned()
                .collect();
            assert_eq!(back(&data, Some(needle)), with, "{n}");
        }
    }

    #[test]
    fn backwards_skips_an_overlong_line() {
        let mut data = lines_of(10, 3);
        let mut long = b"{\"seq\":11,\"x\":\"".to_vec();
        long.resize(long.len() + MAX_LINE + 5 * BLOCK + 3, b'b');
        long.extend_from_slice(b"\"}\n");
        data.extend_from_slice(&long);
        data.extend_from_slice(b"{\"seq\":12}\n");
        let got = back(&data, None);
        assert_eq!(got.len(), 11);
        assert_eq!(got[0], b"{\"seq\":12}");
        assert_eq!(got[1], b"{\"seq\":10,\"x\":\"a\"}");
    }

    #[test]
    fn bisect_and_find() {
        let data = lines_of(20_000, 300);
        let src = Mem(data.clone());
        let end = data.len() as u64;
        for target in [1, 2, 777, 10_000, 19_999, 20_000, 20_001, 50_000] {
            let (lo, hi) = bisect(&src, 0, end, target).unwrap();
            assert!(lo <= hi && hi <= end);
            // Every line before lo is below target; every line below
            // target begins before hi.
            let mut at = 0u64;
            for l in data.split_inclusive(|&b| b == b'\n') {
                let s = raw_seq(l).unwrap();
                if at < lo {
                    assert!(s < target, "{target}: {s} before {lo}");
                }
                if s < target {
                    assert!(at < hi, "{target}: {s} at {at} >= {hi}");
                }
                at += l.len() as u64;
            }
            let found = find_line(&src, 0, end, target).unwrap();
            if (1..=20_000).contains(&target) {
                assert_eq!(raw_seq(&found.unwrap()), Some(target));
            } else {
                assert!(found.is_none());
            }
        }
    }

    #[test]
    fn forward_lines_flag_what_they_are() {
        let mut data = b"abc\n\0\0x\n".to_vec();
        data.resize(data.len() + MAX_LINE + 10, b'y');
        data.extend_from_slice(b"\n\0\0\0");
        let mut r = io::BufReader::with_capacity(16, &data[..]);
        let mut l = Line::default();
        assert!(next_line(&mut r, &mut l).unwrap());
        assert_eq!(
            (l.bytes.as_slice(), l.newline, l.cut),
            (&b"abc"[..], true, false)
        );
        assert!(next_line(&mut r, &mut l).unwrap());
        assert!(l.has_nul() && !l.all_nul() && l.newline);
        assert!(next_line(&mut r, &mut l).unwrap());
        assert!(l.cut && l.newline && !l.has_nul());
        assert_eq!(l.len, MAX_LINE as u64 + 11);
        assert!(next_line(&mut r, &mut l).unwrap());
        assert!(!l.newline && l.all_nul());
        assert!(!next_line(&mut r, &mut l).unwrap());
    }
}
