//! Sealed segments: their names (which say what they hold), the range of
//! times a segment's records carry, and a consistent listing of a log's
//! files for readers that run beside a live writer.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use crate::format::is_canonical_time;
use crate::{AuditError, LOG_FILE, io_err};

/// A sealed segment's file name is `audit-<first>-<last>[-<min>-<max>].log`.
pub(crate) const SEGMENT_PREFIX: &str = "audit-";
pub(crate) const SEGMENT_SUFFIX: &str = ".log";

/// What a sealed segment's name says: the seqs of its first and last
/// records, and the least and greatest `time` among its records (in the
/// canonical form), when every one of them is in that form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) times: Option<(String, String)>,
}

impl Segment {
    /// The file name: seqs as 20 digits (so names sort by seq), times
    /// compacted to `YYYYMMDDTHHMMSSmmmZ`.
    pub(crate) fn file_name(&self) -> String {
        match &self.times {
            Some((min, max)) => format!(
                "{SEGMENT_PREFIX}{:020}-{:020}-{}-{}{SEGMENT_SUFFIX}",
                self.first,
                self.last,
                compact(min),
                compact(max)
            ),
            None => format!(
                "{SEGMENT_PREFIX}{:020}-{:020}{SEGMENT_SUFFIX}",
                self.first, self.last
            ),
        }
    }

    /// `None` if `name` is not named like a segment (`audit-*.log`); else
    /// the segment, or what is wrong with the name.
    pub(crate) fn parse(name: &str) -> Option<Result<Self, String>> {
        let inner = name
            .strip_prefix(SEGMENT_PREFIX)?
            .strip_suffix(SEGMENT_SUFFIX)?;
        let bad = || format!("{name} is named like a sealed segment of the log but is not one");
        let parts: Vec<&str> = inner.split('-').collect();
        let seq = |s: &str| {
            (s.len() == 20 && s.bytes().all(|c| c.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        let parsed = match parts.as_slice() {
            [first, last] => seq(first).zip(seq(last)).map(|(f, l)| (f, l, None)),
            [first, last, min, max] => seq(first)
                .zip(seq(last))
                .zip(expand(min).zip(expand(max)))
                .map(|((f, l), times)| (f, l, Some(times))),
            _ => None,
        };
        Some(match parsed {
            Some((first, last, times))
                if first >= 1
                    && first <= last
                    && times.as_ref().is_none_or(|(min, max)| min <= max) =>
            {
                Ok(Self { first, last, times })
            }
            _ => Err(bad()),
        })
    }

    /// Whether a record at or after `since` and before `until` may be in
    /// it: only if its time range (when its name has one) meets them.
    pub(crate) fn may_hold_times(&self, since: Option<&str>, until: Option<&str>) -> bool {
        let Some((min, max)) = &self.times else {
            return true;
        };
        since.is_none_or(|s| max.as_str() >= s) && until.is_none_or(|u| min.as_str() < u)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` → `YYYYMMDDTHHMMSSmmmZ` (the argument is
/// canonical).
fn compact(t: &str) -> String {
    t.chars()
        .filter(|c| !matches!(c, '-' | ':' | '.'))
        .collect()
}

/// `YYYYMMDDTHHMMSSmmmZ` → `YYYY-MM-DDTHH:MM:SS.mmmZ`, if it is that.
fn expand(c: &str) -> Option<String> {
    let b = c.as_bytes();
    if b.len() != 19 || b[8] != b'T' || b[18] != b'Z' {
        return None;
    }
    let s = |r: std::ops::Range<usize>| c.get(r);
    let t = format!(
        "{}-{}-{}T{}:{}:{}.{}Z",
        s(0..4)?,
        s(4..6)?,
        s(6..8)?,
        s(9..11)?,
        s(11..13)?,
        s(13..15)?,
        s(15..18)?
    );
    is_canonical_time(t.as_bytes()).then_some(t)
}

/// The least and greatest `time` of a run of records, and whether every
/// one was canonical (only then can a segment's name carry the range).
#[derive(Debug, Clone, Default)]
pub(crate) struct TimeRange {
    min: Vec<u8>,
    max: Vec<u8>,
    records: u64,
    odd: bool,
}

impl TimeRange {
    /// Counts a record whose time is `t` (`None`: not readable as a
    /// canonical time).
    pub(crate) fn add(&mut self, t: Option<&[u8]>) {
        match t {
            Some(t) if is_canonical_time(t) => {
                if self.records == 0 || t < self.min.as_slice() {
                    self.min.clear();
                    self.min.extend_from_slice(t);
                }
                if self.records == 0 || t > self.max.as_slice() {
                    self.max.clear();
                    self.max.extend_from_slice(t);
                }
            }
            _ => self.odd = true,
        }
        self.records += 1;
    }

    /// The range for a segment's name: `None` if there were no records or
    /// one had a time not in the canonical form.
    pub(crate) fn times(&self) -> Option<(String, String)> {
        if self.odd || self.records == 0 {
            return None;
        }
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Some((s(&self.min), s(&self.max)))
    }
}

/// The segments among `names`, sorted by seq, and the names that look like
/// segments but are not, each with what is wrong.
pub(crate) fn segments_of(names: impl IntoIterator<Item = String>) -> (Vec<Segment>, Vec<String>) {
    let mut segments = Vec::new();
    let mut bad = Vec::new();
    for name in names {
        match Segment::parse(&name) {
            None => {}
            Some(Ok(s)) => segments.push(s),
            Some(Err(why)) => bad.push(why),
        }
    }
    segments.sort_by_key(|s| s.first);
    bad.sort();
    (segments, bad)
}

/// Checks that the segments' names follow each other from record 1 without
/// a gap or an overlap; else the first seq that is missing or twice, and
/// why.
pub(crate) fn check_sequence(segments: &[Segment]) -> Result<(), (u64, String)> {
    let mut next = 1;
    for s in segments {
        if s.first != next {
            let why = if s.first > next {
                format!(
                    "records {next} to {} are in no segment (a sealed segment is missing)",
                    s.first - 1
                )
            } else {
                format!(
                    "segment {} begins at record {}, inside an earlier segment",
                    s.file_name(),
                    s.first
                )
            };
            return Err((next.min(s.first), why));
        }
        next = s.last + 1;
    }
    Ok(())
}

/// A log's files as one consistent moment saw them: the sealed segments and
/// the active file (`None` if there is none), opened for reading.
pub(crate) struct Snapshot {
    pub(crate) segments: Vec<Segment>,
    /// Names that look like segments but are not, with what is wrong.
    pub(crate) bad_names: Vec<String>,
    pub(crate) active: Option<File>,
}

/// How often a reader lists again when a rotation came between its two
/// listings.
const SNAPSHOT_ATTEMPTS: usize = 20;

/// Lists the segments, opens the active file, and lists again: if the
/// listings agree, no rotation came between (a rotation adds a segment
/// before it makes the new active file), so the active file opened is the
/// one that continues the listed segments. A rotation that comes later
/// renames the open file to a segment the snapshot does not list, which
/// still reads on through the open file.
pub(crate) fn snapshot(dir: &Path) -> Result<Snapshot, AuditError> {
    let name = || dir.display().to_string();
    let list = || -> Result<(Vec<Segment>, Vec<String>), AuditError> {
        let mut names = Vec::new();
        for e in fs::read_dir(dir).map_err(|e| io_err(name(), e))? {
            if let Some(n) = e.map_err(|e| io_err(name(), e))?.file_name().to_str() {
                names.push(n.to_owned());
            }
        }
        Ok(segments_of(names))
    };
    let path = dir.join(LOG_FILE);
    for _ in 0..SNAPSHOT_ATTEMPTS {
        let before = list()?;
        let active = match File::open(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(path.display().to_string(), e)),
        };
        let after = list()?;
        if before == after {
            if active.is_none() && before.0.is_empty() {
                return Err(io_err(path.display().to_string(), "no audit log here"));
            }
            return Ok(Snapshot {
                segments: before.0,
                bad_names: before.1,
                active,
            });
        }
    }
    Err(io_err(
        name(),
        "the log rotated during every attempt to list it",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_seq() {
        let s = Segment {
            first: 1,
            last: 1234,
            times: Some((
                "2026-11-22T07:12:00.123Z".into(),
                "2026-11-22T08:00:59.999Z".into(),
            )),
        };
        let name = s.file_name();
        assert_eq!(
            name,
            "audit-00000000000000000001-00000000000000001234-20261122T071200123Z-20261122T080059999Z.log"
        );
        assert_eq!(Segment::parse(&name), Some(Ok(s)));
        let plain = Segment {
            first: 1235,
            last: 1235,
            times: None,
        };
        assert_eq!(Segment::parse(&plain.file_name()), Some(Ok(plain.clone())));
        assert!(name < plain.file_name());
        for bad in [
            "audit-1-2.log",
            "audit-00000000000000000002-00000000000000000001.log",
            "audit-00000000000000000000-00000000000000000001.log",
            "audit-00000000000000000001-00000000000000000002-x-y.log",
            "audit-00000000000000000001-00000000000000000002-20261122T080059999Z-20261122T071200123Z.log",
            "audit-00000000000000000001-00000000000000000002-20261122X071200123Z-20261122T080059999Z.log",
            "audit-99999999999999999999-99999999999999999999.log",
            "audit-.log",
        ] {
            assert!(matches!(Segment::parse(bad), Some(Err(_))), "{bad}");
        }
        for other in ["audit.log", "audit.head", "audit-1.log.tmp", "notes.txt"] {
            assert_eq!(Segment::parse(other), None, "{other}");
        }
    }

    #[test]
    fn time_ranges_and_skipping() {
        let mut r = TimeRange::default();
        assert_eq!(r.times(), None);
        r.add(Some(b"2026-11-22T07:00:01.000Z"));
        r.add(Some(b"2026-11-22T07:00:00.500Z"));
        r.add(Some(b"2026-11-22T07:00:02.000Z"));
        let (min, max) = r.times().unwrap();
        assert_eq!(
            (min.as_str(), max.as_str()),
            ("2026-11-22T07:00:00.500Z", "2026-11-22T07:00:02.000Z")
        );
        let s = Segment {
            first: 1,
            last: 3,
            times: Some((min, max)),
        };
        assert!(s.may_hold_times(None, None));
        assert!(s.may_hold_times(Some("2026-11-22T07:00:02.000Z"), None));
        assert!(!s.may_hold_times(Some("2026-11-22T07:00:02.001Z"), None));
        assert!(s.may_hold_times(None, Some("2026-11-22T07:00:00.501Z")));
        assert!(!s.may_hold_times(None, Some("2026-11-22T07:00:00.500Z")));
        assert!(s.may_hold_times(Some("2026-11-22"), Some("2026-11-23")));
        assert!(!s.may_hold_times(Some("2026-11-23"), None));
        r.add(Some(b"yesterday"));
        assert_eq!(r.times(), None);
        let mut r = TimeRange::default();
        r.add(None);
        assert_eq!(r.times(), None);
    }

    #[test]
    fn sequence_gaps_and_overlaps() {
        let seg = |first, last| Segment {
            first,
            last,
            times: None,
        };
        assert!(check_sequence(&[]).is_ok());
        assert!(check_sequence(&[seg(1, 5), seg(6, 6), seg(7, 20)]).is_ok());
        assert_eq!(check_sequence(&[seg(2, 5)]).unwrap_err().0, 1);
        assert_eq!(check_sequence(&[seg(1, 5), seg(8, 9)]).unwrap_err().0, 6);
        assert_eq!(check_sequence(&[seg(1, 5), seg(5, 9)]).unwrap_err().0, 5);
    }
}
