//! Linearizable reads: ReadIndex rounds and the readers waiting on them.
//!
//! Readers that arrive together share one round: one context, one ReadIndex
//! ask to raft. When raft answers with the commit index the round was asked
//! at, its readers wait until this member has applied that far.
//!
//! Every round, a first ask or a retry, carries a context never used
//! before. raft-rs's leader counts heartbeat acknowledgements by context,
//! and once a quorum acknowledges one it releases every read queued before
//! it. A context asked again after its first round was answered would be
//! queued behind newer reads; an acknowledgement of its first heartbeat
//! still on its way (a paused or slow leader takes it in late) would then
//! release those newer reads at an index from before they were asked, even
//! though another leader may have committed writes since: a stale read.
//! etcd had this bug (etcd-io/etcd#20418) and fixed it the same way.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::ProposeError;

pub(super) type ReadReply = oneshot::Sender<Result<(), ProposeError>>;

pub(super) struct ReadRounds {
    /// Contexts are this member's id and a counter: the leader keys every
    /// member's rounds by context alone, so two members' must never meet.
    member: u64,
    /// The next counter (from a random start: contexts of an earlier run of
    /// this member, still answered by a leader, must not match this run's).
    next: u64,
    /// Rounds raft has not answered: context -> (when asked, readers).
    asked: HashMap<Vec<u8>, (Instant, Vec<ReadReply>)>,
    /// Readers of answered rounds, with the index they wait for.
    waiting: Vec<(u64, ReadReply)>,
}

impl ReadRounds {
    pub fn new(member: u64) -> ReadRounds {
        ReadRounds {
            member,
            next: rand::random::<u64>() >> 1,
            asked: HashMap::new(),
            waiting: Vec::new(),
        }
    }

    /// A new round for `readers`: the context to ask raft's ReadIndex with.
    pub fn start(&mut self, readers: Vec<ReadReply>) -> Vec<u8> {
        let mut ctx = self.member.to_be_bytes().to_vec();
        ctx.extend_from_slice(&self.next.to_be_bytes());
        self.next += 1;
        self.asked.insert(ctx.clone(), (Instant::now(), readers));
        ctx
    }

    /// raft drops a ReadIndex silently when there is no leader, or the
    /// leader has not committed an entry of its term yet; an ask or its
    /// answer may be lost. Rounds unanswered for `patience` are merged
    /// into one new round under a new context (never the old one: see the
    /// module's comment), returned to ask again with. Readers who gave up
    /// (timed out) are forgotten.
    pub fn retry(&mut self, patience: Duration) -> Option<Vec<u8>> {
        let mut due = Vec::new();
        self.asked.retain(|_, (asked, readers)| {
            readers.retain(|reply| !reply.is_closed());
            if asked.elapsed() >= patience {
                due.append(readers);
            }
            !readers.is_empty()
        });
        (!due.is_empty()).then(|| self.start(due))
    }

    /// raft answered the round `ctx` with the commit index `index`. An
    /// answer to a round retried under another context is ignored.
    pub fn answered(&mut self, ctx: &[u8], index: u64) {
        if let Some((_, readers)) = self.asked.remove(ctx) {
            self.waiting
                .extend(readers.into_iter().map(|reply| (index, reply)));
        }
    }

    /// Whether readers have their read index and wait for the apply.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// This member has applied through `applied`: the readers waiting for
    /// no more than that may read now.
    pub fn release(&mut self, applied: u64) {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.waiting = waiting;
        for (_, reply) in ready {
            let _ = reply.send(Ok(()));
        }
    }
}

#[cfg(test)]
mod tests;
