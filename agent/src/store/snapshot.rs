//! Whole-state copies of the store, for raft snapshots: a follower too far
//! behind the log receives one and replaces its state with it.
//!
//! A copy is a stream, never a value in memory: a header, then one record
//! per row, each a big-endian `u32` length and its postcard bytes, then an
//! end record. The leader writes it to a file, the transport streams the
//! file in chunks, the follower reads it back row by row into one write
//! transaction, so a store of any size costs a few buffers, not its size.

use std::io::{Read, Write};

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::tables::{
    AUTH, AUTH_STATE, CHANGES, CONSENSUS, CONSENSUS_SNAPSHOT, FEED, FEED_CHAIN, KV, LEASES,
    LEASE_KEYS, LIVE, MEMBERS, META, META_APPLIED_INDEX, META_COMPACT_REVISION, META_REVISION,
    SEQUENCES,
};
use super::types::{Result, StoreError};
use super::{Committed, Store};

/// The format of the stream; a copy in another is refused.
const FORMAT: u32 = 1;
/// Largest record: a key and a value of a client request (1.5 MiB) with
/// room to spare.
const MAX_RECORD: usize = 16 << 20;

/// What a copy starts with. Local facts (this member's own id) are not
/// part of it.
#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    applied_index: u64,
    revision: u64,
    compact_revision: u64,
    /// The auth state row, empty when none was ever stored.
    auth: Vec<u8>,
    /// The feed chain value after `revision`.
    feed_chain: crate::feed::Digest,
}

/// One replicated row.
#[derive(Serialize, Deserialize)]
enum Row {
    Kv(Vec<u8>, i64, Vec<u8>),
    Live(Vec<u8>, i64),
    Change(i64, u32, Vec<u8>),
    Lease(i64, i64),
    LeaseKey(i64, Vec<u8>),
    Member(u64, Vec<u8>),
    Sequence(Vec<u8>, u64),
    End,
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("snapshot: {what}"))
}

fn write_record(out: &mut impl Write, record: &impl Serialize) -> Result<()> {
    let bytes = postcard::to_allocvec(record).map_err(|e| corrupt(format!("encoding: {e}")))?;
    out.write_all(&(bytes.len() as u32).to_be_bytes())
        .and_then(|()| out.write_all(&bytes))
        .map_err(|e| corrupt(format!("writing: {e}")))
}

fn read_record<T: serde::de::DeserializeOwned>(
    input: &mut impl Read,
    buf: &mut Vec<u8>,
) -> Result<T> {
    let mut header = [0u8; 4];
    input
        .read_exact(&mut header)
        .map_err(|e| corrupt(format!("reading (cut short?): {e}")))?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_RECORD {
        return Err(corrupt(format!(
            "a record of {len} bytes, over {MAX_RECORD}"
        )));
    }
    buf.resize(len, 0);
    input
        .read_exact(buf)
        .map_err(|e| corrupt(format!("reading (cut short?): {e}")))?;
    postcard::from_bytes(buf).map_err(|e| corrupt(format!("decoding: {e}")))
}

impl Store {
    /// Writes a consistent copy of the replicated state to `out` and returns
    /// the raft index it reflects.
    pub fn write_snapshot(&self, out: &mut impl Write) -> Result<u64> {
        let txn = self.db().begin_read()?;
        let meta = txn.open_table(META)?;
        let get = |name| -> Result<u64> { Ok(meta.get(name)?.map(|v| v.value()).unwrap_or(0)) };
        let header = Header {
            format: FORMAT,
            applied_index: get(META_APPLIED_INDEX)?,
            revision: get(META_REVISION)?,
            compact_revision: get(META_COMPACT_REVISION)?,
            auth: match txn.open_table(AUTH)?.get(AUTH_STATE)? {
                Some(state) => state.value().to_vec(),
                None => Vec::new(),
            },
            feed_chain: super::tables::read_feed_chain(&txn.open_table(FEED)?)?,
        };
        write_record(out, &header)?;
        for row in txn.open_table(KV)?.iter()? {
            let (k, v) = row?;
            let (key, rev) = k.value();
            write_record(out, &Row::Kv(key.to_vec(), rev, v.value().to_vec()))?;
        }
        for row in txn.open_table(LIVE)?.iter()? {
            let (k, v) = row?;
            write_record(out, &Row::Live(k.value().to_vec(), v.value()))?;
        }
        for row in txn.open_table(CHANGES)?.iter()? {
            let (k, v) = row?;
            let (rev, sub) = k.value();
            write_record(out, &Row::Change(rev, sub, v.value().to_vec()))?;
        }
        for row in txn.open_table(LEASES)?.iter()? {
            let (k, v) = row?;
            write_record(out, &Row::Lease(k.value(), v.value()))?;
        }
        for row in txn.open_table(LEASE_KEYS)?.iter()? {
            let (k, _) = row?;
            let (lease, key) = k.value();
            write_record(out, &Row::LeaseKey(lease, key.to_vec()))?;
        }
        for row in txn.open_table(MEMBERS)?.iter()? {
            let (k, v) = row?;
            write_record(out, &Row::Member(k.value(), v.value().to_vec()))?;
        }
        for row in txn.open_table(SEQUENCES)?.iter()? {
            let (k, v) = row?;
            write_record(out, &Row::Sequence(k.value().to_vec(), v.value()))?;
        }
        write_record(out, &Row::End)?;
        Ok(header.applied_index)
    }

    /// A copy in memory, for tests (raft streams copies through files).
    #[cfg(test)]
    pub fn snapshot_data(&self) -> Result<(u64, Vec<u8>)> {
        let mut bytes = Vec::new();
        let applied = self.write_snapshot(&mut bytes)?;
        Ok((applied, bytes))
    }

    /// Replaces the replicated state with the copy read from `input`,
    /// durably, together with `consensus` (the consensus layer's
    /// description of that snapshot), so a crash right after leaves enough
    /// to bring the raft log in line. A copy that is cut short or damaged
    /// changes nothing.
    pub fn restore_snapshot(&self, mut input: impl Read, consensus: &[u8]) -> Result<u64> {
        let mut buf = Vec::new();
        let header: Header = read_record(&mut input, &mut buf)?;
        if header.format != FORMAT {
            return Err(corrupt(format!(
                "format {} (this edgeconf reads {FORMAT}): upgrade the members to one version",
                header.format
            )));
        }
        let _order = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let txn = self.begin_write()?;
        {
            let mut kv = txn.open_table(KV)?;
            let mut live = txn.open_table(LIVE)?;
            let mut changes = txn.open_table(CHANGES)?;
            let mut leases = txn.open_table(LEASES)?;
            let mut lease_keys = txn.open_table(LEASE_KEYS)?;
            let mut members = txn.open_table(MEMBERS)?;
            let mut sequences = txn.open_table(SEQUENCES)?;
            let mut auth = txn.open_table(AUTH)?;
            kv.retain(|_, _| false)?;
            live.retain(|_, _| false)?;
            changes.retain(|_, _| false)?;
            leases.retain(|_, _| false)?;
            lease_keys.retain(|_, _| false)?;
            members.retain(|_, _| false)?;
            sequences.retain(|_, _| false)?;
            auth.retain(|_, _| false)?;
            loop {
                match read_record(&mut input, &mut buf)? {
                    Row::Kv(key, rev, value) => {
                        kv.insert((key.as_slice(), rev), value.as_slice())?;
                    }
                    Row::Live(key, rev) => {
                        live.insert(key.as_slice(), rev)?;
                    }
                    Row::Change(rev, sub, key) => {
                        changes.insert((rev, sub), key.as_slice())?;
                    }
                    Row::Lease(id, ttl) => {
                        leases.insert(id, ttl)?;
                    }
                    Row::LeaseKey(id, key) => {
                        lease_keys.insert((id, key.as_slice()), ())?;
                    }
                    Row::Member(id, record) => {
                        members.insert(id, record.as_slice())?;
                    }
                    Row::Sequence(key, sequence) => {
                        sequences.insert(key.as_slice(), sequence)?;
                    }
                    Row::End => break,
                }
            }
            if !header.auth.is_empty() {
                auth.insert(AUTH_STATE, header.auth.as_slice())?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(META_APPLIED_INDEX, header.applied_index)?;
            txn.open_table(CONSENSUS)?
                .insert(CONSENSUS_SNAPSHOT, consensus)?;
            meta.insert(META_REVISION, header.revision)?;
            txn.open_table(FEED)?
                .insert(FEED_CHAIN, header.feed_chain.as_slice())?;
            meta.insert(META_COMPACT_REVISION, header.compact_revision)?;
        }
        txn.commit()?;
        self.reload_auth()?;
        // Wake watchers: they replay whatever they miss from the new state.
        self.publish(Committed {
            revision: header.revision as i64,
            events: Vec::new(),
            replaced: true,
        });
        Ok(header.applied_index)
    }
}

/// What a copy holds, read without restoring it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopySummary {
    pub revision: i64,
    pub compact_revision: i64,
    /// Keys alive at `revision`.
    pub keys: u64,
    /// Stored revisions of keys (history included).
    pub kv_rows: u64,
}

/// Reads a whole copy from `input`, checking that every record decodes.
pub fn summarize_copy(mut input: impl Read) -> Result<CopySummary> {
    let mut buf = Vec::new();
    let header: Header = read_record(&mut input, &mut buf)?;
    if header.format != FORMAT {
        return Err(corrupt(format!(
            "format {} (this edgeconf reads {FORMAT})",
            header.format
        )));
    }
    let mut summary = CopySummary {
        revision: header.revision as i64,
        compact_revision: header.compact_revision as i64,
        keys: 0,
        kv_rows: 0,
    };
    loop {
        match read_record(&mut input, &mut buf)? {
            Row::Kv(..) => summary.kv_rows += 1,
            Row::Live(..) => summary.keys += 1,
            Row::End => return Ok(summary),
            _ => {}
        }
    }
}

impl Store {
    /// What `restore_snapshot` was last given as `consensus`.
    pub fn installed_snapshot(&self) -> Result<Option<Vec<u8>>> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(CONSENSUS)?;
        let value = table.get(CONSENSUS_SNAPSHOT)?.map(|v| v.value().to_vec());
        Ok(value)
    }
}
