//! The store's own request, response and error types.
//!
//! They mirror etcd's MVCC model but carry no protocol types: the API layer
//! converts between these and the etcd protobuf messages.

use serde::{Deserialize, Serialize};

/// One version of a key, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A committed change to one key. `prev_kv` is always filled when the key
/// existed before; watchers that did not ask for it drop it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For a delete: the key and the deleting revision, other fields zero.
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

/// A set of keys with etcd's `key`/`range_end` conventions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: RangeEnd,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RangeEnd {
    /// Exactly the key `start`.
    Single,
    /// Every key `>= start`.
    Unbounded,
    /// Keys in `[start, end)`.
    Before(Vec<u8>),
}

impl KeyRange {
    /// Builds a range from etcd's wire form: an empty `range_end` means one
    /// key, `"\0"` means "to the end", anything else is an exclusive end.
    pub fn from_etcd(key: Vec<u8>, range_end: Vec<u8>) -> Self {
        let end = match range_end.as_slice() {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            _ => RangeEnd::Before(range_end),
        };
        Self { start: key, end }
    }

    pub fn single(key: impl Into<Vec<u8>>) -> Self {
        Self {
            start: key.into(),
            end: RangeEnd::Single,
        }
    }

    /// All keys starting with `prefix` (etcd's `--prefix`).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let start = prefix.into();
        let end = match prefix_end(&start) {
            Some(end) => RangeEnd::Before(end),
            None => RangeEnd::Unbounded,
        };
        Self { start, end }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            RangeEnd::Single => key == self.start.as_slice(),
            RangeEnd::Unbounded => key >= self.start.as_slice(),
            RangeEnd::Before(end) => key >= self.start.as_slice() && key < end.as_slice(),
        }
    }

    pub fn overlaps(&self, other: &KeyRange) -> bool {
        let below_end = |key: &[u8], range: &KeyRange| match &range.end {
            RangeEnd::Single => key <= range.start.as_slice(),
            RangeEnd::Unbounded => true,
            RangeEnd::Before(end) => key < end.as_slice(),
        };
        // Two ranges overlap when each one starts before the other ends.
        below_end(&self.start, other) && below_end(&other.start, self)
    }
}

/// The smallest key greater than every key with this prefix, or `None` when
/// the prefix is all `0xff` (or empty): then the range has no upper end.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    pub range: KeyRange,
    /// At most this many keys; 0 means no limit.
    pub limit: i64,
    /// Read at this revision; 0 means the current one.
    pub revision: i64,
    pub keys_only: bool,
    pub count_only: bool,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
}

impl RangeRequest {
    pub fn new(range: KeyRange) -> Self {
        Self {
            range,
            limit: 0,
            revision: 0,
            keys_only: false,
            count_only: false,
            sort_order: SortOrder::None,
            sort_target: SortTarget::Key,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` allowed.
    pub more: bool,
    /// How many keys matched, ignoring `limit`.
    pub count: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

impl PutRequest {
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    pub range: KeyRange,
    pub prev_kv: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Vec<u8>),
    Lease(i64),
}

/// One guard of a transaction: every key in `range` must satisfy it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub range: KeyRange,
    pub result: CompareResult,
    pub target: CompareTarget,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOpResponse {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub responses: Vec<TxnOpResponse>,
}

/// A change to the store. Commands are the unit of the write path: the
/// consensus layer orders them and the store applies them one by one, so
/// every replica that applies the same commands reaches the same state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact {
        revision: i64,
    },
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    /// Renews a lease; changes nothing stored, but every member applies it
    /// in order, so all agree the lease is alive.
    LeaseKeepAlive {
        id: i64,
    },
    /// A put whose value is a signed change. Applied only when `sequence`
    /// is above the key's stored sequence, so a replay never lands even
    /// when two copies race to the leader.
    SignedPut {
        put: PutRequest,
        sequence: u64,
    },
    /// A signed delete of one key; `change` (the signed change) is kept as
    /// the tombstone's value, so history shows who deleted it.
    SignedDelete {
        key: Vec<u8>,
        sequence: u64,
        change: Vec<u8>,
    },
    /// A change to users, roles or permissions; no key changes.
    Auth(crate::auth::AuthCommand),
    /// A client's command, checked against the auth state at
    /// `auth_revision` by the member that took it: applied only if the
    /// auth state is still that one, so a permission revoked meanwhile
    /// (on any member) cannot be outrun. (Last, so older logs decode.)
    Authorized {
        auth_revision: u64,
        command: Box<Command>,
    },
}

impl Command {
    /// The command itself, without an [`Command::Authorized`] wrapper.
    pub fn unwrapped(&self) -> &Command {
        match self {
            Command::Authorized { command, .. } => command.unwrapped(),
            command => command,
        }
    }
}

/// A command together with the facts the proposer fixed for it, so that
/// applying it is deterministic (no clock reads inside the store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub command: Command,
    pub time_unix_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact,
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke,
    /// The lease's TTL, or `None` when it no longer exists.
    LeaseKeepAlive {
        ttl: Option<i64>,
    },
    /// The auth revision after the change.
    Auth {
        auth_revision: u64,
    },
}

/// The outcome of one applied command and the store revision after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub revision: i64,
    pub response: CommandResponse,
}

/// One retained revision of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub revision: i64,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub deleted: bool,
    pub time_unix_ms: i64,
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    pub entries: Vec<HistoryEntry>,
    pub compact_revision: i64,
    pub revision: i64,
}

/// Errors of the store. The messages of request errors follow etcd's, so
/// etcd clients recognise them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "mvcc: required revision has been compacted (compacted at revision {compact_revision})"
    )]
    Compacted { compact_revision: i64 },
    #[error("mvcc: required revision is a future revision (current revision is {current})")]
    FutureRevision { current: i64 },
    /// etcd's NOSPACE: a write that takes space while the quota is reached.
    #[error("mvcc: database space exceeded ({0}); compact, defragment (`edgeconf defrag`), then disarm the alarm (`etcdctl alarm disarm`)")]
    NoSpace(String),
    #[error("requested lease not found (lease {0:x})")]
    LeaseNotFound(i64),
    #[error("lease already exists (lease {0:x})")]
    LeaseExists(i64),
    #[error("key not found: {0:?} (ignore_value/ignore_lease need an existing key)")]
    KeyNotFound(String),
    #[error("duplicate key given in txn request: {0:?}")]
    DuplicateKey(String),
    #[error("replayed change to {key:?}: sequence {sequence} is not above the stored sequence {stored}; sign it again with a higher --seq")]
    StaleSequence {
        key: String,
        sequence: u64,
        stored: u64,
    },
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("storage error: {0}")]
    Storage(#[from] redb::Error),
}

impl StoreError {
    /// True for errors of the request itself, which leave the store unchanged
    /// and let other commands of the same batch go on.
    pub fn is_request_error(&self) -> bool {
        !matches!(self, StoreError::Corrupt(_) | StoreError::Storage(_))
    }
}

macro_rules! storage_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(err: $t) -> Self {
                StoreError::Storage(err.into())
            }
        }
    )*};
}
storage_error_from!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
