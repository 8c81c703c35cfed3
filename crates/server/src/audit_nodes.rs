//! The audit trail across nodes: each node keeps its own chain; these are
//! the pure parts of seeing them together (what a chain's state is against
//! the head its node published, the merge of several nodes' records into
//! pages, the sum of their metering).
//!
//! Each node publishes in its registry record (`NodeRecord::extra`) the
//! head of its chain ([`HEAD`]: seq and mac of its last durable record) and
//! its metering ([`METERING`]) at every heartbeat.

use std::collections::BTreeMap;

use atrest_audit::{Head, Record};
use serde::Serialize;

use crate::internal::VerifyAnswer;
use crate::trail::Usage;

/// The name of the chain head in `NodeRecord::extra`.
pub const HEAD: &str = "audit_head";
/// The name, in `NodeRecord::extra`, of a head the node published in an
/// earlier run that its chain no longer held when it started again.
pub const LOST: &str = "audit_head_lost";
/// The name of the metering snapshot in `NodeRecord::extra`.
pub const METERING: &str = "metering";

/// A node's chain, as verification finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChainState {
    /// The whole chain verifies and reaches the head its node published.
    Ok,
    /// A record is bad, or the chain holds another record where its node
    /// published its head.
    Damaged,
    /// The chain verifies but ends before the head its node published:
    /// records were cut from its end (or the chain is gone).
    Truncated,
    /// The node is registered but did not answer: its chain was not checked.
    Unreachable,
}

/// What a chain's verification and its published head say together
/// (and the head it lost, if it started without one it had published).
#[must_use]
pub fn classify(
    v: &VerifyAnswer,
    published: Option<&Head>,
    lost: Option<&Head>,
) -> (ChainState, Option<String>) {
    if let Some((_, why)) = &v.first_bad {
        return (ChainState::Damaged, Some(why.clone()));
    }
    if let Some(lost) = lost {
        return (
            ChainState::Truncated,
            Some(format!(
                "when the node last started, its chain no longer held record {} that it had \
                 published as its head (the chain was cut back)",
                lost.seq
            )),
        );
    }
    let Some(head) = published else {
        return (ChainState::Ok, None);
    };
    if v.good < head.seq {
        return (
            ChainState::Truncated,
            Some(format!(
                "the chain ends at record {}, but its node published record {} as its head",
                v.good, head.seq
            )),
        );
    }
    if v.mac_at.as_deref() != Some(head.mac.as_str()) {
        return (
            ChainState::Damaged,
            Some(format!(
                "record {} is not the one its node published as its head (the chain was \
                 replaced from there)",
                head.seq
            )),
        );
    }
    (ChainState::Ok, None)
}

/// The head a node's registry record publishes, if it does.
#[must_use]
pub fn published_head(extra: &BTreeMap<String, serde_json::Value>) -> Option<Head> {
    extra
        .get(HEAD)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// The head a node's registry record says its chain lost, if any.
#[must_use]
pub fn lost_head(extra: &BTreeMap<String, serde_json::Value>) -> Option<Head> {
    extra
        .get(LOST)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// The metering a node's registry record publishes (none if it does not).
#[must_use]
pub fn published_usage(extra: &BTreeMap<String, serde_json::Value>) -> Vec<Usage> {
    extra
        .get(METERING)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// The rows of several nodes' metering added up, sorted, optionally of
/// one account.
#[must_use]
pub fn sum_usage(all: impl IntoIterator<Item = Usage>, account: Option<&str>) -> Vec<Usage> {
    let mut rows: BTreeMap<(String, String, String), Usage> = BTreeMap::new();
    for u in all {
        if account.is_some_and(|a| a != u.account) {
            continue;
        }
        let row = rows
            .entry((u.account.clone(), u.region.clone(), u.operation.clone()))
            .or_insert_with(|| Usage {
                success: 0,
                error: 0,
                ..u.clone()
            });
        row.success += u.success;
        row.error += u.error;
    }
    rows.into_values().collect()
}

/// Where a page of the merged trail stopped, per node: that node's records
/// with a seq below the number are still to come (0: none). A node absent
/// from the cursor starts from its newest record. Written
/// `<node id>:<seq>` joined by `,`.
pub type Cursor = BTreeMap<String, u64>;

/// Reads a cursor.
pub fn parse_cursor(s: &str) -> Result<Cursor, String> {
    let bad = || format!("'cursor' is not a cursor this API gave: {s:?}");
    let mut out = Cursor::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (node, seq) = part.rsplit_once(':').ok_or_else(bad)?;
        if node.is_empty()
            || node.len() > 64
            || !node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad());
        }
        let seq: u64 = seq.parse().map_err(|_| bad())?;
        if out.insert(node.to_owned(), seq).is_some() {
            return Err(bad());
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// Writes a cursor.
#[must_use]
pub fn format_cursor(c: &Cursor) -> String {
    c.iter()
        .map(|(n, s)| format!("{n}:{s}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One page of several nodes' records merged by time, newest first.
#[derive(Debug)]
pub struct Page {
    /// The records, newest first, each with its node set.
    pub records: Vec<Record>,
    /// Where the next older page starts, if there are older records.
    pub next: Option<Cursor>,
}

/// Merges the nodes' records (each node's newest first by seq, as many as
/// `limit + 1` if it has them, after the cursor's seq for that node) into
/// the page of the `limit` newest by time. Each node's records are taken in
/// its chain's order, so paging on with the cursor neither skips nor
/// repeats any record, even where a node's times are not in order. A node
/// that gave no record keeps its place in the cursor (`start`), so that the
/// next page does not reach back past it to records newer than this page.
#[must_use]
pub fn merge(nodes: Vec<(String, Vec<Record>)>, start: &Cursor, limit: usize) -> Page {
    let mut lists: Vec<(String, std::collections::VecDeque<Record>, bool)> = nodes
        .into_iter()
        .map(|(id, records)| {
            // Fewer than asked: the node has no more than these.
            let full = records.len() > limit;
            (id, records.into(), full)
        })
        .collect();
    let mut out = Vec::with_capacity(limit);
    let mut cursor = start.clone();
    while out.len() < limit {
        // The newest next record; ties by node id (then each node's order).
        let best = lists
            .iter()
            .enumerate()
            .filter_map(|(i, (id, l, _))| l.front().map(|r| (i, id, r)))
            .max_by(|a, b| {
                a.2.entry
                    .time
                    .cmp(&b.2.entry.time)
                    .then_with(|| b.1.cmp(a.1))
            })
            .map(|(i, _, _)| i);
        let Some(i) = best else { break };
        let (id, list, _) = &mut lists[i];
        let Some(mut r) = list.pop_front() else { break };
        cursor.insert(id.clone(), r.seq);
        if r.entry.node.is_none() {
            r.entry.node = Some(id.clone());
        }
        out.push(r);
    }
    let mut more = false;
    for (id, list, full) in &lists {
        match list.front() {
            // Not reached on this page: pinned just above its newest
            // unread record.
            Some(r) => {
                more = true;
                let e = cursor.entry(id.clone()).or_insert(r.seq + 1);
                *e = (*e).min(r.seq + 1);
            }
            // Every record it gave is on this page, and it has no more.
            None if !*full => {
                cursor.insert(id.clone(), 0);
            }
            None => more = true,
        }
    }
    Page {
        records: out,
        next: more.then_some(cursor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atrest_audit::Entry;

    fn rec(seq: u64, time: &str) -> Record {
        Record {
            seq,
            entry: Entry {
                time: time.into(),
                operation: "Decrypt".into(),
                result: "Success".into(),
                ..Entry::default()
            },
            prev: String::new(),
            mac: String::new(),
        }
    }

    /// A node's records, `seq` from 1, at the given seconds.
    fn chain(secs: &[u32]) -> Vec<Record> {
        secs.iter()
            .enumerate()
            .map(|(i, s)| rec(i as u64 + 1, &format!("2026-01-01T00:00:{s:02}.000Z")))
            .collect()
    }

    /// What a node would answer: newest first by seq, below the cursor.
    fn answer(all: &[Record], id: &str, c: &Cursor, limit: usize) -> Vec<Record> {
        let before = c.get(id).copied().unwrap_or(u64::MAX);
        all.iter()
            .rev()
            .filter(|r| r.seq < before)
            .take(limit + 1)
            .cloned()
            .collect()
    }

    #[test]
    fn paging_over_nodes_neither_skips_nor_repeats() {
        // Node b's times are slightly out of order, as times may be.
        let a = chain(&[1, 3, 5, 7, 9, 11, 13]);
        let b = chain(&[2, 4, 3, 8, 10, 12, 14, 15, 16]);
        let c: Vec<Record> = Vec::new();
        for limit in 1..=6 {
            let mut cursor = Cursor::new();
            let mut seen = Vec::new();
            let mut pages = 0;
            loop {
                let page = merge(
                    vec![
                        ("a".into(), answer(&a, "a", &cursor, limit)),
                        ("b".into(), answer(&b, "b", &cursor, limit)),
                        ("c".into(), answer(&c, "c", &cursor, limit)),
                    ],
                    &cursor,
                    limit,
                );
                assert!(page.records.len() <= limit);
                for r in &page.records {
                    seen.push((r.entry.node.clone().unwrap(), r.seq));
                }
                pages += 1;
                match page.next {
                    Some(next) => cursor = parse_cursor(&format_cursor(&next)).unwrap(),
                    None => break,
                }
                assert!(pages < 100);
            }
            let mut sorted = seen.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), seen.len(), "limit {limit}: a record repeated");
            assert_eq!(
                seen.len(),
                a.len() + b.len(),
                "limit {limit}: a record skipped"
            );
        }
    }

    #[test]
    fn a_page_is_newest_first_and_names_each_node() {
        let a = chain(&[1, 3, 5]);
        let b = chain(&[2, 4, 6]);
        let none = Cursor::new();
        let page = merge(
            vec![
                ("a".into(), answer(&a, "a", &none, 4)),
                ("b".into(), answer(&b, "b", &none, 4)),
            ],
            &none,
            4,
        );
        let got: Vec<(String, u64)> = page
            .records
            .iter()
            .map(|r| (r.entry.node.clone().unwrap(), r.seq))
            .collect();
        assert_eq!(
            got,
            vec![
                ("b".into(), 3),
                ("a".into(), 3),
                ("b".into(), 2),
                ("a".into(), 2)
            ]
        );
        let next = page.next.unwrap();
        assert_eq!(next.get("a"), Some(&2));
        assert_eq!(next.get("b"), Some(&2));
    }

    #[test]
    fn a_node_that_gave_nothing_keeps_its_place() {
        // Node b's records are all older than a's page: on the next page b
        // starts from the newest it had, not from records written since.
        let a = chain(&[10, 11, 12]);
        let b = chain(&[1, 2]);
        let none = Cursor::new();
        let page = merge(
            vec![
                ("a".into(), answer(&a, "a", &none, 2)),
                ("b".into(), answer(&b, "b", &none, 2)),
            ],
            &none,
            2,
        );
        let next = page.next.unwrap();
        assert_eq!(next.get("b"), Some(&3), "b pinned above its newest");
        assert_eq!(next.get("a"), Some(&2));
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let c: Cursor = [("n-1".to_owned(), 5), ("n-2".to_owned(), 0)].into();
        assert_eq!(parse_cursor(&format_cursor(&c)).unwrap(), c);
        for bad in ["", "x", "a:b", "a:1,a:2", ":3", "a b:1", "a:-1"] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chains_are_classified_against_their_published_head() {
        let head = Head {
            seq: 5,
            mac: "m5".into(),
        };
        let v = |good, first_bad: Option<(u64, String)>, mac: Option<&str>| VerifyAnswer {
            good,
            first_bad,
            mac_at: mac.map(str::to_owned),
        };
        let c = |v: &VerifyAnswer, h: Option<&Head>| classify(v, h, None).0;
        assert_eq!(c(&v(7, None, Some("m5")), Some(&head)), ChainState::Ok);
        assert_eq!(c(&v(7, None, None), None), ChainState::Ok);
        assert_eq!(c(&v(4, None, None), Some(&head)), ChainState::Truncated);
        assert_eq!(c(&v(0, None, None), Some(&head)), ChainState::Truncated);
        assert_eq!(
            c(&v(7, None, Some("other")), Some(&head)),
            ChainState::Damaged
        );
        assert_eq!(
            c(&v(2, Some((3, "bad mac".into())), None), Some(&head)),
            ChainState::Damaged
        );
        // A head lost at a restart stays reported, whatever the chain
        // holds since.
        let (state, why) = classify(&v(9, None, Some("m5")), Some(&head), Some(&head));
        assert_eq!(state, ChainState::Truncated);
        assert!(why.unwrap().contains("record 5"));
    }

    #[test]
    fn usage_adds_up_over_nodes() {
        let u = |account: &str, op: &str, success, error| Usage {
            account: account.into(),
            region: "us-east-1".into(),
            operation: op.into(),
            success,
            error,
        };
        let all = vec![
            u("1", "Decrypt", 2, 1),
            u("1", "Encrypt", 1, 0),
            u("1", "Decrypt", 3, 0),
            u("2", "Decrypt", 1, 1),
        ];
        assert_eq!(
            sum_usage(all.clone(), None),
            vec![
                u("1", "Decrypt", 5, 1),
                u("1", "Encrypt", 1, 0),
                u("2", "Decrypt", 1, 1)
            ]
        );
        assert_eq!(sum_usage(all, Some("2")), vec![u("2", "Decrypt", 1, 1)]);
    }
}
