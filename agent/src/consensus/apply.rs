//! Applying committed entries on the raft thread: normal entries in one
//! store transaction per batch, membership changes one by one, and the
//! answers to this member's waiting clients (a plain put's before the
//! store applies it, see [`crate::store::foresee`]; the others' after).
//! Under load, rounds of plain puts are held for a later round's
//! transaction (`held_applies`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType};
use raft_proto::ConfChangeI;

use super::entries::{Body, ConfContext, EntryData};
use super::raft_loop::RaftLoop;
use super::ProposeError;
use crate::store::{Applied, CommandResponse, MemberChange, Proposal};

impl RaftLoop {
    /// Applies committed entries: normal entries in one store transaction,
    /// membership changes one by one.
    pub(super) fn apply(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        let Some(through) = entries.last().map(|entry| entry.index) else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        // Asked first of the whole round, so that a round at light load is
        // applied without being decoded twice.
        if self.held.should_hold(entries.len(), now) {
            if let Some(round) = plain_round(&entries, self.id) {
                if self.held.should_hold(round.len(), now) && self.hold(round, through, now) {
                    return Ok(());
                }
            }
        }
        self.apply_held()?;
        self.apply_entries(entries)
            .map_err(|err| self.unappliable(err))
    }

    /// Applies the plain puts held for a later round (`held_applies`):
    /// before anything else is applied, before linearizable readers are
    /// released, when the window ends, and before the store is replaced
    /// or the loop stops.
    pub(super) fn apply_held(&mut self) -> Result<(), String> {
        let Some(taken) = self.held.take(std::time::Instant::now()) else {
            return Ok(());
        };
        let foreseen = taken.revision;
        // Their clients were answered when they were held.
        let mut batch = taken.proposals.into_iter().map(|p| (None, p)).collect();
        self.flush(&mut batch, taken.through)
            .map_err(|err| self.unappliable(err))?;
        if self.store.revision() != foreseen {
            tracing::error!(
                foreseen,
                applied = self.store.revision(),
                "held puts' clients were answered before their apply, and the apply did \
                 otherwise; please report this as a bug"
            );
            debug_assert!(
                false,
                "foreseen {foreseen}, applied {}",
                self.store.revision()
            );
            self.store.settle_promises();
        }
        Ok(())
    }

    /// Holds a round of plain puts if their outcomes are all foreseen,
    /// and answers this member's clients among them. Returns whether it
    /// held them.
    fn hold(
        &mut self,
        round: Vec<(Option<u64>, Proposal)>,
        through: u64,
        now: std::time::Instant,
    ) -> bool {
        let after = self
            .held
            .revision()
            .unwrap_or_else(|| self.store.revision());
        let foreseen = crate::store::foresee(
            after,
            self.store.auth().revision,
            round.iter().map(|(_, proposal)| &proposal.command),
        );
        if foreseen.len() != round.len() {
            return false;
        }
        let (origins, proposals): (Vec<Option<u64>>, Vec<Proposal>) = round.into_iter().unzip();
        self.answer(&origins, &foreseen);
        let revision = foreseen.last().map_or(after, |applied| applied.revision);
        crate::telemetry::APPLIES_HELD.fetch_add(proposals.len() as u64, Ordering::Relaxed);
        self.held.hold(proposals, through, revision, now);
        true
    }

    fn unappliable(&self, err: String) -> String {
        format!(
            "cannot apply a committed entry: {err}. It stays committed, so every restart stops \
             here too: if a newer edgeconf wrote it, upgrade this agent; otherwise remove this \
             member (`edgeconf member remove {:x}` on a healthy member) and add it back with an \
             empty data dir, so that it starts from a snapshot",
            self.id
        )
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        let mut batch: Vec<(Option<u64>, Proposal)> = Vec::new();
        let mut last = None;
        for entry in entries {
            last = Some(entry.index);
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {}
                EntryType::EntryNormal => match decode_normal(&entry, self.id)? {
                    // `CommandAs` never enters a log (the leader drops the
                    // credential); were one there, it is a command.
                    (mine, Body::Command(proposal) | Body::CommandAs(proposal, _)) => {
                        batch.push((mine, proposal))
                    }
                    (mine, Body::Member(change)) => {
                        self.flush(&mut batch, entry.index - 1)?;
                        self.apply_member(&change, entry.index, mine)?;
                    }
                },
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.flush(&mut batch, entry.index - 1)?;
                    self.apply_conf_change(&entry)?;
                }
            }
        }
        if let Some(last) = last {
            self.flush(&mut batch, last)?;
        }
        Ok(())
    }

    fn flush(
        &mut self,
        batch: &mut Vec<(Option<u64>, Proposal)>,
        through: u64,
    ) -> Result<(), String> {
        if through <= self.applied {
            return Ok(());
        }
        let (origins, proposals): (Vec<Option<u64>>, Vec<Proposal>) = batch.drain(..).unzip();
        let foreseen = self.answer_foreseen(&origins, &proposals);
        let outcomes = crate::telemetry::APPLY
            .time(|| self.store.apply_batch(&proposals, through, false))
            .map_err(|e| {
                format!(
                    "the entries from {} through {through} cannot be applied: {e}",
                    self.applied + 1
                )
            })?;
        self.applied = through;
        let answers = origins.into_iter().zip(&proposals).zip(outcomes);
        for (at, ((origin, proposal), outcome)) in answers.enumerate() {
            if let Ok(applied) = &outcome {
                self.lessor.on_applied(&proposal.command, &applied.response);
            }
            if let Some(foreseen) = foreseen.get(at) {
                if outcome.as_ref().ok() != Some(foreseen) {
                    tracing::error!(
                        ?foreseen,
                        ?outcome,
                        "a put's client was answered before its apply, and the apply did \
                         otherwise; please report this as a bug"
                    );
                    debug_assert!(false, "foreseen {foreseen:?}, applied {outcome:?}");
                    self.store.settle_promises();
                }
                continue;
            }
            if let Some((_, reply)) = origin.and_then(|seq| self.pending.remove(&seq)) {
                let _ = reply.send(outcome.map_err(ProposeError::from));
            }
        }
        Ok(())
    }

    /// Answers this member's clients whose outcomes are known before the
    /// store applies their entries (plain puts, see
    /// [`crate::store::foresee`]), so they do not wait for the store's
    /// commit. Returns the outcomes foreseen, of the batch's first
    /// proposals.
    fn answer_foreseen(&mut self, origins: &[Option<u64>], proposals: &[Proposal]) -> Vec<Applied> {
        if origins.iter().all(Option::is_none) {
            return Vec::new(); // no client of this member waits
        }
        let foreseen = crate::store::foresee(
            self.store.revision(),
            self.store.auth().revision,
            proposals.iter().map(|proposal| &proposal.command),
        );
        if self.answer(origins, &foreseen) {
            // The answers woke the API's threads; when the host has no
            // idle CPU for them, the apply that follows would run first.
            // A single agent answers 19% sooner with this (BENCHMARKS.md).
            std::thread::yield_now();
        }
        foreseen
    }

    /// Answers this member's clients among `origins` with the outcomes
    /// `foreseen` for them, promising the store's readers the last
    /// revision first. Returns whether it answered any.
    fn answer(&mut self, origins: &[Option<u64>], foreseen: &[Applied]) -> bool {
        let mut promised = false;
        for (origin, applied) in origins.iter().zip(foreseen) {
            if let Some((_, reply)) = origin.and_then(|seq| self.pending.remove(&seq)) {
                if !promised {
                    // Before the first answer: its client may read next.
                    let last = foreseen.last().expect("one outcome at least");
                    self.store.promise(last.revision);
                    promised = true;
                }
                let _ = reply.send(Ok(applied.clone()));
            }
        }
        promised
    }

    fn apply_member(
        &mut self,
        change: &MemberChange,
        index: u64,
        mine: Option<u64>,
    ) -> Result<(), String> {
        self.store
            .apply_member_change(change, index)
            .map_err(|e| format!("entry {index} (a member change) cannot be recorded: {e}"))?;
        self.applied = index;
        self.update_peers();
        if let Some((_, reply)) = mine.and_then(|seq| self.pending.remove(&seq)) {
            let _ = reply.send(Ok(self.no_op_applied()));
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), String> {
        let unreadable = |e: protobuf::ProtobufError| {
            format!(
                "entry {} (a membership change) is unreadable: {e}",
                entry.index
            )
        };
        let change = if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
            ConfChangeV2::parse_from_bytes(&entry.data).map_err(unreadable)?
        } else {
            ConfChange::parse_from_bytes(&entry.data)
                .map_err(unreadable)?
                .into_v2()
        };
        let context: Option<ConfContext> = postcard::from_bytes(&entry.context).ok();
        let conf_state = match self.raw.apply_conf_change(&change) {
            Ok(conf_state) => conf_state,
            Err(err) => {
                tracing::warn!(error = %err, "a membership change was refused");
                if let Some(ctx) = &context {
                    if let Some((_, reply)) = (ctx.origin.node == self.id)
                        .then(|| self.pending.remove(&ctx.origin.seq))
                        .flatten()
                    {
                        let _ = reply.send(Err(ProposeError::Failed(err.to_string())));
                    }
                }
                return self.flush(&mut Vec::new(), entry.index);
            }
        };
        self.raw
            .mut_store()
            .set_conf_state(conf_state, entry.index)
            .map_err(|e| {
                format!(
                    "entry {} (a membership change) cannot be recorded: {e}",
                    entry.index
                )
            })?;
        match context {
            Some(ctx) => {
                let mine = (ctx.origin.node == self.id).then_some(ctx.origin.seq);
                self.apply_member(&ctx.member, entry.index, mine)?;
            }
            None => self.flush(&mut Vec::new(), entry.index)?,
        }
        // raft's membership above is already durable; make the store's
        // applied index catch up now, so a restart never replays an older
        // membership change on top of a newer one (only, at worst, this
        // one again, which changes nothing).
        self.store
            .sync()
            .map_err(|e| format!("syncing the store: {e}"))?;
        self.durable_applied = self.applied;
        tracing::info!(voters = ?self.raw.raft.prs().conf().voters().ids().iter().collect::<Vec<_>>(), "membership changed");
        Ok(())
    }

    fn no_op_applied(&self) -> Applied {
        Applied {
            revision: self.store.revision(),
            response: CommandResponse::Compact,
        }
    }

    /// Points the transport at every member but this one.
    pub fn update_peers(&self) {
        let members = match self.store.members() {
            Ok(members) => members,
            Err(err) => {
                tracing::error!(error = %err, "reading members");
                return;
            }
        };
        let peers: Vec<(u64, SocketAddr)> = members
            .into_iter()
            .filter(|(id, _)| *id != self.id)
            .filter_map(|(id, record)| {
                let url = record.peer_urls.first()?;
                let addr = crate::config::socket_addr(url, "quic").ok()?;
                Some((id, addr))
            })
            .collect();
        self.transport.set_peers(&peers);
    }
}

/// The proposals of a round whose entries are all normal commands (or
/// empty), with this member's sequence for its own; `None` when one is
/// anything else (a membership change), or unreadable (`apply_entries`
/// reports it).
fn plain_round(entries: &[Entry], me: u64) -> Option<Vec<(Option<u64>, Proposal)>> {
    let mut round = Vec::with_capacity(entries.len());
    for entry in entries {
        if entry.get_entry_type() != EntryType::EntryNormal {
            return None;
        }
        if entry.data.is_empty() {
            continue;
        }
        match decode_normal(entry, me).ok()? {
            (mine, Body::Command(proposal) | Body::CommandAs(proposal, _)) => {
                round.push((mine, proposal))
            }
            (_, Body::Member(_)) => return None,
        }
    }
    Some(round)
}

/// A normal entry's body, with the proposing member's sequence when that
/// member is `me`.
fn decode_normal(entry: &Entry, me: u64) -> Result<(Option<u64>, Body), String> {
    let data: EntryData = postcard::from_bytes(&entry.data)
        .map_err(|e| format!("entry {} is unreadable: {e}", entry.index))?;
    let mine = (data.origin.node == me).then_some(data.origin.seq);
    Ok((mine, data.body))
}
