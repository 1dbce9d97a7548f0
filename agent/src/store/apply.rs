//! The write path: applies commands inside one redb write transaction.
//!
//! Invariant: a command either fails a check before it writes anything (a
//! request error, returned to its caller while the batch goes on) or writes
//! all it has to. Storage errors abort the whole transaction.

use std::collections::BTreeSet;

use redb::{ReadableTable, ReadableTableMetadata, Table, WriteTransaction};

/// Leases one cluster holds at most (each is a row and an expiry timer on
/// the leader). Unit tests use a small bound to reach it.
const MAX_LEASES: u64 = if cfg!(test) { 16 } else { 100_000 };

use super::read::{event_from_record, for_each_live, get_at, range, resolve_revision};
use super::tables::{
    Record, AUTH, AUTH_STATE, CHANGES, FEED, FEED_CHAIN, KV, LEASES, LEASE_KEYS, LIVE, META,
    META_APPLIED_INDEX, META_COMPACT_REVISION, META_REVISION, SEQUENCES,
};
use crate::auth::{AuthError, AuthState};

use super::types::{
    Applied, Command, CommandResponse, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    DeleteRangeResponse, Event, KeyValue, Proposal, PutRequest, PutResponse, Result, StoreError,
    TxnOp, TxnOpResponse, TxnRequest, TxnResponse,
};

/// The revision a command writes at: all its changes share `main`, each gets
/// its own `sub`, as in etcd.
struct WriteRevision {
    main: i64,
    sub: u32,
    time_unix_ms: i64,
}

pub(crate) struct Writer<'txn> {
    kv: Table<'txn, (&'static [u8], i64), &'static [u8]>,
    live: Table<'txn, &'static [u8], i64>,
    changes: Table<'txn, (i64, u32), &'static [u8]>,
    leases: Table<'txn, i64, i64>,
    lease_keys: Table<'txn, (i64, &'static [u8]), ()>,
    meta: Table<'txn, &'static str, u64>,
    sequences: Table<'txn, &'static [u8], u64>,
    auth_table: Table<'txn, &'static str, &'static [u8]>,
    feed: Table<'txn, &'static str, &'static [u8]>,
    /// The rows written by this batch, in order, for the feed chain.
    feed_log: Vec<(i64, crate::feed::Entry)>,
    /// The auth state as changed by this batch, when it was.
    pub auth: Option<AuthState>,
    pub revision: i64,
    pub compact_revision: i64,
    pub events: Vec<Event>,
}

impl<'txn> Writer<'txn> {
    pub fn open(txn: &'txn WriteTransaction) -> Result<Self> {
        let meta = txn.open_table(META)?;
        let read_meta =
            |name| -> Result<i64> { Ok(meta.get(name)?.map(|v| v.value() as i64).unwrap_or(0)) };
        let revision = read_meta(META_REVISION)?;
        let compact_revision = read_meta(META_COMPACT_REVISION)?;
        Ok(Self {
            kv: txn.open_table(KV)?,
            live: txn.open_table(LIVE)?,
            changes: txn.open_table(CHANGES)?,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_table(LEASE_KEYS)?,
            meta,
            sequences: txn.open_table(SEQUENCES)?,
            auth_table: txn.open_table(AUTH)?,
            feed: txn.open_table(FEED)?,
            feed_log: Vec::new(),
            auth: None,
            revision,
            compact_revision,
            events: Vec::new(),
        })
    }

    /// Records the revision counters and the raft index applied; call once
    /// before committing.
    pub fn finish(&mut self, applied_index: u64) -> Result<()> {
        self.link_feed()?;
        self.meta.insert(META_APPLIED_INDEX, applied_index)?;
        self.meta.insert(META_REVISION, self.revision as u64)?;
        self.meta
            .insert(META_COMPACT_REVISION, self.compact_revision as u64)?;
        Ok(())
    }

    pub fn apply(&mut self, proposal: &Proposal) -> Result<Applied> {
        let mut at = WriteRevision {
            main: self.revision + 1,
            sub: 0,
            time_unix_ms: proposal.time_unix_ms,
        };
        let response = self.apply_command(&proposal.command, &mut at)?;
        if at.sub > 0 {
            self.revision = at.main;
        }
        Ok(Applied {
            revision: self.revision,
            response,
        })
    }

    fn apply_command(
        &mut self,
        command: &Command,
        at: &mut WriteRevision,
    ) -> Result<CommandResponse> {
        let response = match command {
            Command::Put(req) => {
                self.check_put(req)?;
                CommandResponse::Put(self.put(req, at)?)
            }
            Command::DeleteRange(req) => CommandResponse::DeleteRange(self.delete(req, at)?),
            Command::Txn(req) => CommandResponse::Txn(self.txn(req, at)?),
            Command::Compact { revision } => {
                self.compact(*revision)?;
                CommandResponse::Compact
            }
            Command::LeaseGrant { id, ttl } => {
                self.lease_grant(*id, *ttl)?;
                CommandResponse::LeaseGrant { id: *id, ttl: *ttl }
            }
            Command::LeaseRevoke { id } => {
                self.lease_revoke(*id, at)?;
                CommandResponse::LeaseRevoke
            }
            Command::LeaseKeepAlive { id } => CommandResponse::LeaseKeepAlive {
                ttl: self.leases.get(*id)?.map(|ttl| ttl.value()),
            },
            Command::SignedPut { put, sequence } => {
                if put.lease != 0 || put.ignore_value || put.ignore_lease {
                    return Err(StoreError::InvalidRequest(
                        "a signed put cannot take a lease, ignore_value or ignore_lease".into(),
                    ));
                }
                self.check_put(put)?;
                self.advance_sequence(&put.key, *sequence)?;
                CommandResponse::Put(self.put(put, at)?)
            }
            Command::SignedDelete {
                key,
                sequence,
                change,
            } => {
                self.advance_sequence(key, *sequence)?;
                let deleted = match self.current(key)? {
                    Some((rev, record)) => {
                        let prev = record.to_key_value(key, rev);
                        self.delete_key_with(prev, change.clone(), at)?;
                        1
                    }
                    None => 0,
                };
                CommandResponse::DeleteRange(DeleteRangeResponse {
                    deleted,
                    prev_kvs: Vec::new(),
                })
            }
            Command::Auth(command) => {
                let mut state = match self.auth.take() {
                    Some(state) => state,
                    None => read_auth(&self.auth_table)?,
                };
                let outcome = state.apply(command);
                if outcome.is_ok() {
                    let bytes = postcard::to_allocvec(&state).expect("encoding into memory");
                    self.auth_table.insert(AUTH_STATE, bytes.as_slice())?;
                }
                let auth_revision = state.revision;
                self.auth = Some(state);
                outcome?;
                CommandResponse::Auth { auth_revision }
            }
            Command::Authorized {
                auth_revision,
                command,
            } => {
                let current = match &self.auth {
                    Some(state) => state.revision,
                    None => read_auth(&self.auth_table)?.revision,
                };
                if current != *auth_revision {
                    return Err(StoreError::Auth(AuthError::OldRevision));
                }
                self.apply_command(command, at)?
            }
        };
        Ok(response)
    }

    fn current(&self, key: &[u8]) -> Result<Option<(i64, Record)>> {
        get_at(&self.kv, key, i64::MAX)
    }

    fn check_put(&self, req: &PutRequest) -> Result<()> {
        if req.key.is_empty() {
            return Err(StoreError::InvalidRequest("key is not provided".into()));
        }
        if (req.ignore_value || req.ignore_lease) && self.current(&req.key)?.is_none() {
            return Err(StoreError::KeyNotFound(lossy(&req.key)));
        }
        if req.lease != 0 && !req.ignore_lease && self.leases.get(req.lease)?.is_none() {
            return Err(StoreError::LeaseNotFound(req.lease));
        }
        Ok(())
    }

    /// Extends the feed chain with the revisions this batch wrote; every
    /// member applies the same log, so every member gets the same chain.
    fn link_feed(&mut self) -> Result<()> {
        if self.feed_log.is_empty() {
            return Ok(());
        }
        let mut chain = super::tables::read_feed_chain(&self.feed)?;
        let mut log = std::mem::take(&mut self.feed_log).into_iter().peekable();
        while let Some((revision, entry)) = log.next() {
            let mut entries = vec![entry];
            while let Some((_, entry)) = log.next_if(|(next, _)| *next == revision) {
                entries.push(entry);
            }
            chain = crate::feed::chain::link(&chain, &crate::feed::Revision { revision, entries });
        }
        self.feed.insert(FEED_CHAIN, chain.as_slice())?;
        Ok(())
    }

    fn write_row(&mut self, key: &[u8], at: &mut WriteRevision, record: &Record) -> Result<()> {
        self.feed_log
            .push((at.main, super::feed::entry_of(key, record)));
        self.kv.insert((key, at.main), record.encode().as_slice())?;
        self.changes.insert((at.main, at.sub), key)?;
        at.sub += 1;
        Ok(())
    }

    /// Writes a put that [`Self::check_put`] accepted.
    fn put(&mut self, req: &PutRequest, at: &mut WriteRevision) -> Result<PutResponse> {
        let prev = self.current(&req.key)?;
        let prev_record = prev.as_ref().map(|(_, record)| record);
        let value = match prev_record {
            Some(record) if req.ignore_value => record.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match prev_record {
            Some(record) if req.ignore_lease => record.lease,
            _ => req.lease,
        };
        let record = Record {
            deleted: false,
            create_revision: prev_record.map_or(at.main, |r| r.create_revision),
            version: prev_record.map_or(1, |r| r.version + 1),
            lease,
            time_unix_ms: at.time_unix_ms,
            value,
        };
        self.write_row(&req.key, at, &record)?;
        self.live.insert(req.key.as_slice(), at.main)?;
        if let Some(old_lease) = prev_record
            .map(|r| r.lease)
            .filter(|&l| l != 0 && l != lease)
        {
            self.lease_keys.remove((old_lease, req.key.as_slice()))?;
        }
        if lease != 0 {
            self.lease_keys.insert((lease, req.key.as_slice()), ())?;
        }
        let prev_kv = prev.map(|(rev, record)| record.to_key_value(&req.key, rev));
        self.events.push(event_from_record(
            &req.key,
            at.main,
            &record,
            prev_kv.clone(),
        ));
        Ok(PutResponse {
            prev_kv: prev_kv.filter(|_| req.prev_kv),
        })
    }

    fn delete(
        &mut self,
        req: &DeleteRangeRequest,
        at: &mut WriteRevision,
    ) -> Result<DeleteRangeResponse> {
        let mut doomed = Vec::new();
        for_each_live(&self.kv, &req.range, i64::MAX, |key, rev, record| {
            doomed.push(record.to_key_value(key, rev));
            Ok(())
        })?;
        for prev in &doomed {
            self.delete_key(prev.clone(), at)?;
        }
        Ok(DeleteRangeResponse {
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { Vec::new() },
        })
    }

    /// Records `sequence` as the key's latest, refusing one not above it.
    /// Call before writing anything for the command.
    fn advance_sequence(&mut self, key: &[u8], sequence: u64) -> Result<()> {
        let stored = self.sequences.get(key)?.map_or(0, |s| s.value());
        if sequence <= stored {
            return Err(StoreError::StaleSequence {
                key: lossy(key),
                sequence,
                stored,
            });
        }
        self.sequences.insert(key, sequence)?;
        Ok(())
    }

    fn delete_key(&mut self, prev: KeyValue, at: &mut WriteRevision) -> Result<()> {
        self.delete_key_with(prev, Vec::new(), at)
    }

    /// Deletes a key, keeping `note` (a signed delete) as the tombstone's value.
    fn delete_key_with(
        &mut self,
        prev: KeyValue,
        note: Vec<u8>,
        at: &mut WriteRevision,
    ) -> Result<()> {
        let mut tombstone = Record::tombstone(at.time_unix_ms);
        tombstone.value = note;
        self.write_row(&prev.key, at, &tombstone)?;
        self.live.remove(prev.key.as_slice())?;
        if prev.lease != 0 {
            self.lease_keys.remove((prev.lease, prev.key.as_slice()))?;
        }
        let key = prev.key.clone();
        self.events
            .push(event_from_record(&key, at.main, &tombstone, Some(prev)));
        Ok(())
    }

    fn txn(&mut self, req: &TxnRequest, at: &mut WriteRevision) -> Result<TxnResponse> {
        let mut succeeded = true;
        for compare in &req.compare {
            if !self.compare(compare)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        self.check_txn_ops(ops)?;
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                TxnOp::Range(range_req) => {
                    // Reads see this transaction's own earlier writes.
                    let current = if at.sub > 0 { at.main } else { self.revision };
                    TxnOpResponse::Range(range(
                        &self.kv,
                        range_req,
                        current,
                        self.compact_revision,
                    )?)
                }
                TxnOp::Put(put_req) => TxnOpResponse::Put(self.put(put_req, at)?),
                TxnOp::DeleteRange(del_req) => {
                    TxnOpResponse::DeleteRange(self.delete(del_req, at)?)
                }
            });
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }

    /// Everything that could make a transaction's branch fail, checked before
    /// its first write.
    fn check_txn_ops(&self, ops: &[TxnOp]) -> Result<()> {
        let mut put_keys = BTreeSet::new();
        for op in ops {
            match op {
                TxnOp::Put(put) => {
                    self.check_put(put)?;
                    if !put_keys.insert(put.key.as_slice()) {
                        return Err(StoreError::DuplicateKey(lossy(&put.key)));
                    }
                }
                TxnOp::Range(range_req) => {
                    resolve_revision(range_req.revision, self.revision, self.compact_revision)?;
                }
                TxnOp::DeleteRange(_) => {}
            }
        }
        for op in ops {
            if let TxnOp::DeleteRange(del) = op {
                if let Some(key) = put_keys.iter().find(|key| del.range.contains(key)) {
                    return Err(StoreError::DuplicateKey(lossy(key)));
                }
            }
        }
        Ok(())
    }

    fn compare(&self, compare: &Compare) -> Result<bool> {
        let mut kvs = Vec::new();
        for_each_live(&self.kv, &compare.range, i64::MAX, |key, rev, record| {
            kvs.push(record.to_key_value(key, rev));
            Ok(())
        })?;
        if kvs.is_empty() {
            // A missing key has version, revisions and lease 0 but no value.
            if matches!(compare.target, CompareTarget::Value(_)) {
                return Ok(false);
            }
            kvs.push(KeyValue::default());
        }
        Ok(kvs.iter().all(|kv| compare_one(kv, compare)))
    }

    fn compact(&mut self, revision: i64) -> Result<()> {
        if revision <= self.compact_revision {
            return Err(StoreError::Compacted {
                compact_revision: self.compact_revision,
            });
        }
        if revision > self.revision {
            return Err(StoreError::FutureRevision {
                current: self.revision,
            });
        }
        let mut touched = BTreeSet::new();
        for entry in self.changes.range(..(revision, 0u32))? {
            touched.insert(entry?.1.value().to_vec());
        }
        for key in &touched {
            // Keep the version visible at `revision` so reads there still
            // work, unless it is a tombstone older than `revision`. A
            // tombstone that holds a signed delete stays too: it is what
            // renderers (and edges, through feed images) verify before a
            // protected key leaves a file. One row per deleted key, until
            // the key is written again.
            let mut doomed = Vec::new();
            for entry in self
                .kv
                .range((key.as_slice(), i64::MIN)..=(key.as_slice(), revision))?
            {
                let (row_key, bytes) = entry?;
                let rev = row_key.value().1;
                let record = Record::decode(key, rev, bytes.value())?;
                doomed.push((rev, record.deleted && record.value.is_empty()));
            }
            if let Some(&(rev, bare_tombstone)) = doomed.last() {
                if rev == revision || !bare_tombstone {
                    doomed.pop();
                }
            }
            for (rev, _) in doomed {
                self.kv.remove((key.as_slice(), rev))?;
            }
        }
        self.changes.retain_in(..(revision, 0u32), |_, _| false)?;
        self.compact_revision = revision;
        Ok(())
    }

    fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<()> {
        if id <= 0 || ttl <= 0 {
            return Err(StoreError::InvalidRequest(format!(
                "lease id and TTL must be positive (got id {id}, TTL {ttl})"
            )));
        }
        if self.leases.get(id)?.is_some() {
            return Err(StoreError::LeaseExists(id));
        }
        // Applied on every member alike, so the bound is the same everywhere.
        if self.leases.len()? >= MAX_LEASES {
            return Err(StoreError::InvalidRequest(format!(
                "too many leases: {MAX_LEASES} are granted, the most one cluster holds; revoke leases no longer used"
            )));
        }
        self.leases.insert(id, ttl)?;
        Ok(())
    }

    fn lease_revoke(&mut self, id: i64, at: &mut WriteRevision) -> Result<()> {
        if self.leases.get(id)?.is_none() {
            return Err(StoreError::LeaseNotFound(id));
        }
        let mut keys = Vec::new();
        for entry in self
            .lease_keys
            .range((id, &[][..])..(id.saturating_add(1), &[][..]))?
        {
            keys.push(entry?.0.value().1.to_vec());
        }
        for key in keys {
            if let Some((rev, record)) = self.current(&key)? {
                self.delete_key(record.to_key_value(&key, rev), at)?;
            }
        }
        self.leases.remove(id)?;
        Ok(())
    }
}

fn compare_one(kv: &KeyValue, compare: &Compare) -> bool {
    let ordering = match &compare.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
    };
    match compare.result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

pub(crate) fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// The stored auth state (the default, disabled, when none was stored).
pub(crate) fn read_auth(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<AuthState> {
    match table.get(AUTH_STATE)? {
        Some(bytes) => postcard::from_bytes(bytes.value())
            .map_err(|err| StoreError::Corrupt(format!("auth state: {err}"))),
        None => Ok(AuthState::default()),
    }
}
