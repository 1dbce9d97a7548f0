//! A history of operations on registers, as concurrent clients saw them:
//! what each asked, when it asked (invoke), when the answer came
//! (complete), and the answer, on one monotonic clock.
//!
//! An operation whose answer never came (a timeout, a dropped connection,
//! a member killed mid-request) is [`Outcome::Unknown`]: it may have taken
//! effect at any time after its invocation, or never. One that certainly
//! had no effect (refused before it was proposed) is [`Outcome::Failed`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What a client asked of one register (a key). Written values are unique
/// across a history, so a read names the write it saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write(u64),
    /// Compare-and-set: `new` if the register holds `expected`.
    Cas {
        expected: u64,
        new: u64,
    },
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A read's value (`None`: the key did not exist).
    Read(Option<u64>),
    /// A write was acknowledged.
    Written,
    /// A compare-and-set was acknowledged: whether it swapped.
    Cas(bool),
    /// Certainly no effect.
    Failed,
    /// No answer: it may or may not have taken effect.
    Unknown,
}

/// One operation of one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub client: usize,
    pub key: String,
    pub op: Op,
    pub outcome: Outcome,
    /// Nanoseconds since the recorder started.
    pub invoked: u64,
    pub completed: u64,
    /// The store revision of an acknowledged write (0 otherwise).
    pub revision: i64,
}

impl Entry {
    /// Whether the store acknowledged a change by this operation.
    pub fn acknowledged_write(&self) -> Option<u64> {
        match (self.op, self.outcome) {
            (Op::Write(value), Outcome::Written) => Some(value),
            (Op::Cas { new, .. }, Outcome::Cas(true)) => Some(new),
            _ => None,
        }
    }
}

/// Shared by the clients of a run: each records its operations here.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            entries: Arc::default(),
        }
    }

    /// Now, on the history's clock: take it just before sending a request
    /// (its invocation) and just after its answer (its completion).
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn record(&self, entry: Entry) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
    }

    /// Everything recorded so far, in invocation order.
    pub fn history(&self) -> History {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        entries.sort_by_key(|e| (e.invoked, e.client));
        History { entries }
    }
}

/// A finished history.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub entries: Vec<Entry>,
}

/// How many operations ended which way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
}

impl History {
    /// The history of each key: registers are independent, so a history
    /// is linearizable if and only if each key's is.
    pub fn by_key(&self) -> BTreeMap<&str, Vec<&Entry>> {
        let mut keys: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
        for entry in &self.entries {
            keys.entry(entry.key.as_str()).or_default().push(entry);
        }
        keys
    }

    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for entry in &self.entries {
            match entry.outcome {
                Outcome::Failed => counts.failed += 1,
                Outcome::Unknown => counts.unknown += 1,
                _ => counts.ok += 1,
            }
        }
        counts
    }
}
