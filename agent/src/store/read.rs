//! Reads over the MVCC tables. Every function takes any readable table, so
//! the same code serves snapshot reads and reads inside a write transaction
//! (a transaction's range sees the puts made before it in that transaction).

use redb::ReadableTable;

use super::tables::Record;
use super::types::{
    Event, EventKind, HistoryEntry, KeyRange, KeyValue, RangeEnd, RangeRequest, RangeResponse,
    Result, SortOrder, SortTarget, StoreError,
};

/// A table of key versions, `(key, mod_revision) -> Record`.
pub(crate) trait KvTable: ReadableTable<(&'static [u8], i64), &'static [u8]> {}
impl<T: ReadableTable<(&'static [u8], i64), &'static [u8]>> KvTable for T {}

/// The index of current versions, `key -> mod_revision`.
pub(crate) trait LiveTable: ReadableTable<&'static [u8], i64> {}
impl<T: ReadableTable<&'static [u8], i64>> LiveTable for T {}

/// A revision log, `(revision, sub) -> key`.
pub(crate) trait ChangeTable: ReadableTable<(i64, u32), &'static [u8]> {}
impl<T: ReadableTable<(i64, u32), &'static [u8]>> ChangeTable for T {}

/// The version of `key` visible at `revision` with its mod revision, or
/// `None` when the key did not exist then.
pub(crate) fn get_at(
    kv: &impl KvTable,
    key: &[u8],
    revision: i64,
) -> Result<Option<(i64, Record)>> {
    Ok(newest_at(kv, key, revision)?.filter(|(_, record)| !record.deleted))
}

/// The newest record of `key` at `revision`, a tombstone included.
pub(crate) fn newest_at(
    kv: &impl KvTable,
    key: &[u8],
    revision: i64,
) -> Result<Option<(i64, Record)>> {
    let mut versions = kv.range((key, 0i64)..=(key, revision))?;
    let Some(entry) = versions.next_back() else {
        return Ok(None);
    };
    let (row_key, bytes) = entry?;
    let mod_revision = row_key.value().1;
    let record = Record::decode(key, mod_revision, bytes.value())?;
    Ok(Some((mod_revision, record)))
}

/// Calls `visit` for every key of `range` that existed at `revision`, in key
/// order. Costs two B-tree seeks per distinct key, however long its history.
pub(crate) fn for_each_live(
    kv: &impl KvTable,
    range: &KeyRange,
    revision: i64,
    mut visit: impl FnMut(&[u8], i64, Record) -> Result<()>,
) -> Result<()> {
    for_each_newest(kv, range, revision, |key, mod_revision, record| {
        if record.deleted {
            return Ok(());
        }
        visit(key, mod_revision, record)
    })
}

/// Calls `visit` with the newest record at `revision` (a tombstone
/// included) of every key of `range` that has one, in key order.
pub(crate) fn for_each_newest(
    kv: &impl KvTable,
    range: &KeyRange,
    revision: i64,
    mut visit: impl FnMut(&[u8], i64, Record) -> Result<()>,
) -> Result<()> {
    if range.end == RangeEnd::Single {
        if let Some((mod_revision, record)) = newest_at(kv, &range.start, revision)? {
            visit(&range.start, mod_revision, record)?;
        }
        return Ok(());
    }
    let mut from = range.start.clone();
    loop {
        let key = {
            let mut rows = kv.range((from.as_slice(), i64::MIN)..)?;
            match rows.next() {
                None => break,
                Some(entry) => entry?.0.value().0.to_vec(),
            }
        };
        if !range.contains(&key) {
            break;
        }
        if let Some((mod_revision, record)) = newest_at(kv, &key, revision)? {
            visit(&key, mod_revision, record)?;
        }
        // The smallest key after `key`: skip the rest of its history.
        from = key;
        from.push(0);
    }
    Ok(())
}

/// Checks that `revision` (0 for "current") can be read and resolves it.
pub(crate) fn resolve_revision(revision: i64, current: i64, compacted: i64) -> Result<i64> {
    match revision {
        0 => Ok(current),
        r if r < 0 => Err(StoreError::InvalidRequest(format!(
            "revision {r} is negative"
        ))),
        r if r > current => Err(StoreError::FutureRevision { current }),
        r if r < compacted => Err(StoreError::Compacted {
            compact_revision: compacted,
        }),
        r => Ok(r),
    }
}

/// Calls `visit` for every existing key of `range` at the current revision,
/// in key order, through the index of current versions: one scan of the
/// index and one lookup per key.
pub(crate) fn for_each_current(
    kv: &impl KvTable,
    live: &impl LiveTable,
    range: &KeyRange,
    mut visit: impl FnMut(&[u8], i64, Record) -> Result<()>,
) -> Result<()> {
    let start = range.start.as_slice();
    let mut fetch = |key: &[u8], mod_revision: i64| -> Result<()> {
        let bytes = kv.get((key, mod_revision))?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "current version of {:?} at revision {mod_revision} is missing",
                String::from_utf8_lossy(key)
            ))
        })?;
        let record = Record::decode(key, mod_revision, bytes.value())?;
        visit(key, mod_revision, record)
    };
    let rows = match &range.end {
        RangeEnd::Single => {
            if let Some(rev) = live.get(start)?.map(|v| v.value()) {
                fetch(start, rev)?;
            }
            return Ok(());
        }
        RangeEnd::Unbounded => live.range(start..)?,
        RangeEnd::Before(end) => live.range(start..end.as_slice())?,
    };
    for row in rows {
        let (key, rev) = row?;
        fetch(key.value(), rev.value())?;
    }
    Ok(())
}

/// A range read inside a write transaction (a transaction's own reads).
pub(crate) fn range(
    kv: &impl KvTable,
    req: &RangeRequest,
    current: i64,
    compacted: i64,
) -> Result<RangeResponse> {
    range_with(req, current, compacted, |revision, visit| {
        for_each_live(kv, &req.range, revision, visit)
    })
}

/// Evaluates a range request over `scan`, which visits the keys of the
/// range as of the revision it is given, in key order.
pub(crate) fn range_with(
    req: &RangeRequest,
    current: i64,
    compacted: i64,
    scan: impl FnOnce(i64, &mut dyn FnMut(&[u8], i64, Record) -> Result<()>) -> Result<()>,
) -> Result<RangeResponse> {
    let revision = resolve_revision(req.revision, current, compacted)?;
    let limit = usize::try_from(req.limit.max(0)).unwrap_or(usize::MAX);
    let natural_order = matches!(
        (req.sort_order, req.sort_target),
        (SortOrder::None | SortOrder::Ascend, SortTarget::Key)
    );
    let mut kvs = Vec::new();
    let mut count = 0i64;
    scan(revision, &mut |key, mod_revision, record| {
        count += 1;
        // In key order, keys past the limit only need counting.
        let wanted = !req.count_only && (!natural_order || limit == 0 || kvs.len() < limit);
        if wanted {
            let mut kv = record.to_key_value(key, mod_revision);
            if req.keys_only {
                kv.value.clear();
            }
            kvs.push(kv);
        }
        Ok(())
    })?;
    if !natural_order {
        sort(&mut kvs, req.sort_order, req.sort_target);
    }
    if limit > 0 {
        kvs.truncate(limit);
    }
    let more = !req.count_only && (kvs.len() as i64) < count;
    Ok(RangeResponse { kvs, more, count })
}

fn sort(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    // etcd sorts ascending when a target is given without an order.
    kvs.sort_by(|a, b| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    });
    if order == SortOrder::Descend {
        kvs.reverse();
    }
}

pub(crate) fn history(kv: &impl KvTable, key: &[u8]) -> Result<Vec<HistoryEntry>> {
    let mut entries = Vec::new();
    for entry in kv.range((key, i64::MIN)..=(key, i64::MAX))? {
        let (row_key, bytes) = entry?;
        let revision = row_key.value().1;
        let record = Record::decode(key, revision, bytes.value())?;
        entries.push(HistoryEntry {
            revision,
            create_revision: record.create_revision,
            version: record.version,
            lease: record.lease,
            deleted: record.deleted,
            time_unix_ms: record.time_unix_ms,
            value: record.value,
        });
    }
    Ok(entries)
}

/// The events on `range` in revisions `from..=to`, in commit order. Stops at a
/// revision boundary once `max_events` are collected and returns the last
/// revision it covered completely, so callers can page through history.
pub(crate) fn events_between(
    kv: &impl KvTable,
    changes: &impl ChangeTable,
    range: &KeyRange,
    from: i64,
    to: i64,
    max_events: usize,
) -> Result<(Vec<Event>, i64)> {
    let mut events = Vec::new();
    for entry in changes.range((from, 0u32)..=(to, u32::MAX))? {
        let (row_key, key) = entry?;
        let revision = row_key.value().0;
        if events.len() >= max_events {
            if let Some(last) = events.last().map(|e: &Event| e.kv.mod_revision) {
                if revision > last {
                    return Ok((events, last));
                }
            }
        }
        let key = key.value();
        if !range.contains(key) {
            continue;
        }
        let bytes = kv.get((key, revision))?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "revision log names key {:?} at revision {revision} but its record is missing",
                String::from_utf8_lossy(key)
            ))
        })?;
        let record = Record::decode(key, revision, bytes.value())?;
        let prev_kv = get_at(kv, key, revision - 1)?.map(|(rev, prev)| prev.to_key_value(key, rev));
        events.push(event_from_record(key, revision, &record, prev_kv));
    }
    Ok((events, to))
}

pub(crate) fn event_from_record(
    key: &[u8],
    revision: i64,
    record: &Record,
    prev_kv: Option<KeyValue>,
) -> Event {
    if record.deleted {
        Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_vec(),
                mod_revision: revision,
                ..KeyValue::default()
            },
            prev_kv,
        }
    } else {
        Event {
            kind: EventKind::Put,
            kv: record.to_key_value(key, revision),
            prev_kv,
        }
    }
}
