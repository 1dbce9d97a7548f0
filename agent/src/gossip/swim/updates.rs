//! Membership updates: checking that an update is authentic, applying it,
//! and refuting what others say about this member.

use super::*;

impl Swim {
    /// Someone says this member is suspect or dead: refute with a higher
    /// incarnation (and, per Lifeguard, take it as a sign of own slowness).
    pub(super) fn refute(&mut self, incarnation: u64) {
        if self.left {
            return;
        }
        if incarnation < self.incarnation {
            // Already refuted, but someone still holds an older view of
            // this member (it missed the refutation): gossip the current
            // one again, first in the next message (often the ack to a
            // last-chance ping from that very member).
            self.broadcasts.push(self.alive_update());
            return;
        }
        self.incarnation = incarnation.saturating_add(1);
        self.awareness = (self.awareness + 1).min(self.config.max_awareness);
        self.broadcasts.push(self.alive_update());
    }

    pub(super) fn set_state(&mut self, id: &NodeId, state: State, incarnation: u64, now_ms: u64) {
        let Some(member) = self.members.get_mut(id) else {
            return;
        };
        let from = member.record.state;
        member.record.state = state;
        member.record.incarnation = incarnation;
        self.revision += 1;
        if from != state {
            member.changed_ms = now_ms;
            self.changes.push(StateChange {
                id: id.clone(),
                from: Some(from),
                to: state,
                at_ms: now_ms,
            });
        }
    }

    /// Forgets dead and left members once `prune_after_ms` has passed.
    pub(super) fn prune(&mut self, now_ms: u64) {
        let grace = self.config.prune_after_ms;
        let gone: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| matches!(m.record.state, State::Dead | State::Left))
            .filter(|(_, m)| now_ms.saturating_sub(m.changed_ms) >= grace)
            .map(|(id, _)| id.clone())
            .collect();
        if gone.is_empty() {
            return;
        }
        for id in &gone {
            if let Some(member) = self.members.remove(id) {
                if self.names_by_key.get(&member.key) == Some(id) {
                    self.names_by_key.remove(&member.key);
                }
            }
            self.suspicions.remove(id);
            tracing::info!(member = %id, "forgot a member that has been dead or gone for a day");
        }
        self.known.retain(|id| self.members.contains_key(id));
        self.revision += 1;
    }

    pub(super) fn refuse(&mut self, reason: &'static str) {
        *self.refused.entry(reason).or_default() += 1;
    }

    /// Whether the member that makes `update`'s statement signed it: the
    /// key its name is bound to (an `Alive` of a name not yet bound binds
    /// it to its key, if trusted; a name is bound anew only after the
    /// member it named left, by its own signed word, or has been dead for
    /// `rebind_after_dead_ms`).
    pub(super) fn authentic(&mut self, update: &Update, now_ms: u64) -> bool {
        let signer = update.signer();
        let key = if *signer == self.me {
            Some(self.public)
        } else if let Update::Alive { id, key, .. } = update {
            let rebind_after = self.config.rebind_after_dead_ms;
            let bound = self.members.get(id).map(|m| {
                let free = match m.record.state {
                    State::Left => true,
                    State::Dead => now_ms.saturating_sub(m.changed_ms) >= rebind_after,
                    State::Alive | State::Suspect => false,
                };
                (m.key, free)
            });
            match bound {
                Some((bound, false)) if bound != *key => {
                    self.refuse("key_changed");
                    tracing::warn!(member = %id, "refused a gossip announcement of a member under another node key than the one its name is bound to");
                    return false;
                }
                _ if self.trusted.as_ref().is_some_and(|t| !t.contains(key)) => {
                    self.refuse("untrusted_key");
                    tracing::warn!(member = %id, "refused a gossip announcement of a member whose node key is not trusted");
                    return false;
                }
                // A new binding: one node key speaks for one live member,
                // so a stolen key cannot fill the table with made-up names.
                Some((bound, _)) if bound == *key => Some(*key),
                _ if *key == self.public
                    || self.names_by_key.get(key).is_some_and(|other| {
                        other != id
                            && self.members.get(other).is_some_and(|m| {
                                m.key == *key
                                    && matches!(m.record.state, State::Alive | State::Suspect)
                            })
                    }) =>
                {
                    self.refuse("key_has_another_name");
                    tracing::warn!(member = %id, "refused a gossip announcement under a node key that another live member is bound to");
                    return false;
                }
                _ => Some(*key),
            }
        } else {
            self.members.get(signer).map(|m| m.key)
        };
        let Some(key) = key else {
            // A statement by a member not known here yet: it comes again.
            self.refuse("unknown_signer");
            return false;
        };
        if !update.verify(&key) {
            self.refuse("bad_signature");
            tracing::warn!(member = %update.subject(), signer = %signer, "refused a gossip update with a bad signature (forged, or spoken for another member)");
            return false;
        }
        true
    }

    /// Applies an update if it is news; news is gossiped on.
    ///
    /// Sent by: any member, about any member (SWIM's gossip is hearsay),
    /// but each statement is signed by the member that makes it. Checked
    /// here, before anything changes: the signature ([`Swim::authentic`]),
    /// incarnations within [`MAX_INCARNATION`] and the table within
    /// [`MAX_MEMBERS`]; a suspicion is taken only about an incarnation the
    /// subject announced here; a member's own state is only ever refuted,
    /// and its incarnation jumps only past statements it signed itself.
    pub fn apply(&mut self, update: Update, now_ms: u64) {
        if update.incarnation() > MAX_INCARNATION {
            self.refuse("impossible_incarnation");
            tracing::warn!(member = %update.subject(), incarnation = update.incarnation(), "refused a gossip update with an impossible incarnation (forged)");
            return;
        }
        if *update.subject() == self.me {
            self.apply_about_me(&update, now_ms);
            return;
        }
        let news = match (&update, self.members.get(update.subject())) {
            (Update::Alive { .. }, None) => true,
            (_, None) => false,
            (Update::Alive { incarnation, .. }, Some(member)) => {
                *incarnation > member.record.incarnation
            }
            (
                Update::Suspect {
                    incarnation, from, ..
                },
                Some(member),
            ) => {
                let record = &member.record;
                let confirmed = record.state == State::Suspect
                    && *incarnation == record.incarnation
                    && self
                        .suspicions
                        .get(update.subject())
                        .is_none_or(|s| s.confirmations.contains(from));
                matches!(record.state, State::Alive | State::Suspect)
                    && *incarnation == record.incarnation
                    && !confirmed
            }
            (Update::Dead { incarnation, .. }, Some(member)) => {
                !matches!(member.record.state, State::Dead | State::Left)
                    && *incarnation == member.record.incarnation
            }
            (Update::Left { incarnation, .. }, Some(member)) => {
                member.record.state != State::Left && *incarnation >= member.record.incarnation
            }
        };
        if !news || !self.authentic(&update, now_ms) {
            return;
        }
        match &update {
            Update::Alive {
                id,
                incarnation,
                addr,
                meta,
                key,
                ..
            } => {
                let full = self.members.len() >= MAX_MEMBERS;
                match self.members.get_mut(id) {
                    None if full => {
                        self.refuse("table_full");
                        tracing::warn!(member = %id, "refused a new gossip member: {MAX_MEMBERS} are known already");
                        return;
                    }
                    None => {
                        self.revision += 1;
                        self.known.push(id.clone());
                        self.names_by_key.insert(*key, id.clone());
                        self.members.insert(
                            id.clone(),
                            Member {
                                record: Record {
                                    id: id.clone(),
                                    addr: addr.clone(),
                                    incarnation: *incarnation,
                                    state: State::Alive,
                                    meta: meta.clone(),
                                },
                                changed_ms: now_ms,
                                key: *key,
                                alive: update.clone(),
                                status: None,
                            },
                        );
                        self.changes.push(StateChange {
                            id: id.clone(),
                            from: None,
                            to: State::Alive,
                            at_ms: now_ms,
                        });
                    }
                    Some(member) => {
                        member.record.addr = addr.clone();
                        member.record.meta = meta.clone();
                        member.key = *key;
                        self.names_by_key.insert(*key, id.clone());
                        member.alive = update.clone();
                        member.status = None;
                        self.suspicions.remove(id);
                        self.set_state(id, State::Alive, *incarnation, now_ms);
                    }
                }
            }
            Update::Suspect {
                id,
                incarnation,
                from,
                ..
            } => {
                let n = self.live_count() as f64;
                let Some(member) = self.members.get_mut(id) else {
                    return;
                };
                if member.record.state == State::Suspect {
                    // A confirmation: shortens the timeout if independent.
                    let Some(suspicion) = self.suspicions.get_mut(id) else {
                        return;
                    };
                    suspicion.confirmations.insert(from.clone());
                    suspicion.recompute();
                } else {
                    member.status = Some(update.clone());
                    let min_ms = (self.config.suspicion_mult as f64
                        * n.log10().max(1.0)
                        * self.config.probe_interval_ms as f64)
                        as u64;
                    let expected = if n as u64 > self.config.suspicion_mult {
                        (self.config.suspicion_mult - 2) as u32
                    } else {
                        0
                    };
                    let mut suspicion = Suspicion {
                        incarnation: *incarnation,
                        started_ms: now_ms,
                        min_ms,
                        max_ms: min_ms * self.config.suspicion_max_mult,
                        expected,
                        confirmations: HashSet::new(),
                        deadline_ms: 0,
                        last_chance: false,
                    };
                    if *from != self.me {
                        suspicion.confirmations.insert(from.clone());
                    }
                    suspicion.recompute();
                    self.suspicions.insert(id.clone(), suspicion);
                    self.set_state(id, State::Suspect, *incarnation, now_ms);
                }
            }
            Update::Dead {
                id,
                incarnation,
                from,
                ..
            } => {
                if let Some(member) = self.members.get_mut(id) {
                    member.status = Some(update.clone());
                }
                self.suspicions.remove(id);
                let state = if from == id { State::Left } else { State::Dead };
                self.set_state(id, state, *incarnation, now_ms);
            }
            Update::Left {
                id, incarnation, ..
            } => {
                if let Some(member) = self.members.get_mut(id) {
                    member.status = Some(update.clone());
                }
                self.suspicions.remove(id);
                self.set_state(id, State::Left, *incarnation, now_ms);
            }
        }
        self.broadcasts.push(update);
    }

    /// Someone says something about this member. Its own signed words from
    /// an earlier run (an `Alive` or `Left` at a higher incarnation) move
    /// its incarnation past them; a suspicion or death is refuted one past
    /// its own incarnation, never past one it did not sign (so a stolen
    /// key cannot push it to the limit where it could no longer refute).
    pub(super) fn apply_about_me(&mut self, update: &Update, now_ms: u64) {
        match update {
            Update::Alive { incarnation, .. } | Update::Left { incarnation, .. } => {
                if *incarnation > self.incarnation && !self.left && self.authentic(update, now_ms) {
                    self.refute(*incarnation);
                }
            }
            Update::Suspect { incarnation, .. } | Update::Dead { incarnation, .. } => {
                if !self.authentic(update, now_ms) {
                    return;
                }
                self.refute((*incarnation).min(self.incarnation));
            }
        }
    }
}
