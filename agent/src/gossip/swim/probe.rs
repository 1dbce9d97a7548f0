//! Failure detection: whom to probe each period, indirect probes through
//! others, suspicions that expire into deaths, and picking random members
//! to gossip to.

use rand::Rng;

use super::*;

impl Swim {
    pub(super) fn start_probe(&mut self, now_ms: u64, out: &mut Vec<Outgoing>) {
        let Some(target) = self.next_target() else {
            self.probe = None;
            return;
        };
        let Some(addr) = self.members.get(&target).map(|m| m.record.addr.clone()) else {
            return;
        };
        self.seq += 1;
        let seq = self.seq;
        self.probe = Some(Probe {
            seq,
            target: target.clone(),
            indirect_at_ms: now_ms + self.config.probe_timeout_ms * u64::from(self.awareness + 1),
            indirect_sent: false,
            acked: false,
        });
        // Buddy system: a suspect hears of its suspicion first.
        let message = self.message(Body::Ping { seq, target });
        out.push(Outgoing { to: addr, message });
    }

    pub(super) fn send_indirect(&mut self, now_ms: u64, out: &mut Vec<Outgoing>) {
        let Some(probe) = self.probe.as_mut() else {
            return;
        };
        probe.indirect_sent = true;
        let (seq, target) = (probe.seq, probe.target.clone());
        let Some(target_addr) = self.members.get(&target).map(|m| m.record.addr.clone()) else {
            return;
        };
        // Only voters hold connections from a member that dials out.
        let voters_only = self
            .members
            .get(&target)
            .is_some_and(|m| m.record.meta.dials_out);
        let helpers = self.random_members_of(
            self.config.indirect_probes,
            now_ms,
            Some(&target),
            voters_only,
        );
        for addr in helpers {
            let message = self.message(Body::PingReq {
                seq,
                target: target.clone(),
                target_addr: target_addr.clone(),
            });
            out.push(Outgoing { to: addr, message });
        }
    }

    /// The probe period ended: no ack at all means suspicion.
    pub(super) fn finish_probe(&mut self, now_ms: u64) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        if probe.acked {
            return;
        }
        self.awareness = (self.awareness + 1).min(self.config.max_awareness);
        let Some(member) = self.members.get(&probe.target) else {
            return;
        };
        if member.record.state != State::Alive {
            return;
        }
        let update = Update::Suspect {
            id: probe.target.clone(),
            incarnation: member.record.incarnation,
            from: self.me.clone(),
            sig: Vec::new(),
        }
        .signed(&self.signing);
        self.apply(update, now_ms);
    }

    /// A suspicion that runs out first gets a last chance: two direct
    /// pings (loss rarely takes both) telling the suspect it is suspected,
    /// so that, if alive, it refutes in its ack. Members that heard of a
    /// suspicion by gossip and missed the refutation (lossy networks) then
    /// rarely declare a live member dead. Only if that fails too, within a
    /// probe timeout, is the member dead.
    ///
    /// A member behind NAT is probed by the voters alone, and only they can
    /// give it a last chance: a member that cannot reach the suspect waits
    /// for their verdict (a `Dead`, or the suspect's refutation) instead of
    /// declaring it dead on its own timer. Otherwise an edge that missed a
    /// refutation (gossip reaches edges behind NAT only through the voters
    /// and their own probes) declared a live member dead.
    pub(super) fn expire_suspicions(&mut self, now_ms: u64, out: &mut Vec<Outgoing>) {
        let expired: Vec<(NodeId, u64, bool)> = self
            .suspicions
            .iter()
            .filter(|(_, s)| s.deadline_ms <= now_ms)
            .map(|(id, s)| (id.clone(), s.incarnation, s.last_chance))
            .collect();
        for (id, incarnation, had_last_chance) in expired {
            if self.members.get(&id).is_some_and(|m| !self.can_reach(m)) {
                if let Some(suspicion) = self.suspicions.get_mut(&id) {
                    suspicion.deadline_ms = now_ms + suspicion.max_ms;
                }
                continue;
            }
            let addr = self.members.get(&id).map(|m| m.record.addr.clone());
            if let (false, Some(addr)) = (had_last_chance, addr) {
                if let Some(suspicion) = self.suspicions.get_mut(&id) {
                    suspicion.last_chance = true;
                    suspicion.deadline_ms = now_ms + self.config.probe_timeout_ms;
                }
                self.seq += 1;
                let seq = self.seq;
                for _ in 0..2 {
                    let mut message = self.message(Body::Ping {
                        seq,
                        target: id.clone(),
                    });
                    let suspect = Update::Suspect {
                        id: id.clone(),
                        incarnation,
                        from: self.me.clone(),
                        sig: Vec::new(),
                    };
                    message.updates.insert(0, suspect.signed(&self.signing));
                    out.push(Outgoing {
                        to: addr.clone(),
                        message,
                    });
                }
                continue;
            }
            self.suspicions.remove(&id);
            let update = Update::Dead {
                id,
                incarnation,
                from: self.me.clone(),
                sig: Vec::new(),
            }
            .signed(&self.signing);
            self.apply(update, now_ms);
        }
    }

    /// The next member to probe: round robin over a shuffled list.
    pub(super) fn next_target(&mut self) -> Option<NodeId> {
        for _ in 0..2 {
            while self.ring_at < self.ring.len() {
                let id = self.ring[self.ring_at].clone();
                self.ring_at += 1;
                let probeable = self.members.get(&id).is_some_and(|m| {
                    matches!(m.record.state, State::Alive | State::Suspect) && self.can_reach(m)
                });
                if probeable {
                    return Some(id);
                }
            }
            self.ring = self
                .members
                .iter()
                .filter(|(_, m)| matches!(m.record.state, State::Alive | State::Suspect))
                .filter(|(_, m)| self.can_reach(m))
                .map(|(id, _)| id.clone())
                .collect();
            // Shuffle (Fisher-Yates).
            for i in (1..self.ring.len()).rev() {
                let j = self.rng.random_range(0..=i);
                self.ring.swap(i, j);
            }
            self.ring_at = 0;
        }
        None
    }

    /// Up to `count` addresses of distinct random members that are alive,
    /// suspect, or dead for less than `gossip_dead_ms`; never `except`.
    pub(super) fn random_members(
        &mut self,
        count: usize,
        now_ms: u64,
        except: Option<&NodeId>,
    ) -> Vec<Addr> {
        self.random_members_of(count, now_ms, except, false)
    }

    /// [`Swim::random_members`], only voters if `voters_only`.
    pub(super) fn random_members_of(
        &mut self,
        count: usize,
        now_ms: u64,
        except: Option<&NodeId>,
        voters_only: bool,
    ) -> Vec<Addr> {
        let mut picked: Vec<Addr> = Vec::with_capacity(count);
        if self.known.is_empty() {
            return picked;
        }
        let mut chosen: HashSet<usize> = HashSet::new();
        for _ in 0..count * 4 {
            if picked.len() == count {
                break;
            }
            let index = self.rng.random_range(0..self.known.len());
            if !chosen.insert(index) {
                continue;
            }
            let id = &self.known[index];
            if Some(id) == except {
                continue;
            }
            let Some(member) = self.members.get(id) else {
                continue;
            };
            let eligible = self.can_reach(member)
                && (!voters_only || member.record.meta.role == "voter")
                && match member.record.state {
                    State::Alive | State::Suspect => true,
                    State::Dead => {
                        now_ms.saturating_sub(member.changed_ms) < self.config.gossip_dead_ms
                    }
                    State::Left => false,
                };
            if eligible {
                picked.push(member.record.addr.clone());
            }
        }
        picked
    }

    pub(super) fn random_alive(&mut self, except: Option<&NodeId>) -> Option<Addr> {
        for _ in 0..16 {
            if self.known.is_empty() {
                return None;
            }
            let id = &self.known[self.rng.random_range(0..self.known.len())];
            if Some(id) == except {
                continue;
            }
            if let Some(member) = self
                .members
                .get(id)
                .filter(|m| m.record.state == State::Alive && self.can_reach(m))
            {
                return Some(member.record.addr.clone());
            }
        }
        None
    }

    /// Whether this member may send to `member`: one that dials out (is
    /// behind NAT) is reached only by the voters it holds connections to.
    pub(super) fn can_reach(&self, member: &Member) -> bool {
        !member.record.meta.dials_out || self.meta.role == "voter"
    }
}
