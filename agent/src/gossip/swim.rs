//! The SWIM protocol with Lifeguard's refinements, as a state machine that
//! does no I/O and reads no clock: the driver passes the time in, delivers
//! messages, and sends what comes out (the agent over QUIC, the simulation
//! over a simulated network). Like raft-rs's `RawNode`, one owner drives it.
//!
//! - Probe: each period one member (round robin over a shuffled list) is
//!   pinged; without an ack within the timeout, `indirect_probes` others are
//!   asked to ping it; without any ack by the period's end it is suspected.
//! - Suspicion: a suspect is declared dead after a timeout that scales with
//!   log n and shrinks as independent members confirm the suspicion; the
//!   suspect refutes by gossiping a higher incarnation.
//! - Dissemination: updates ride on every message, each sent a multiple of
//!   log n times; gossip rounds push them to a few random members; a
//!   periodic full sync (push-pull) repairs anything gossip lost.
//! - Local health (Lifeguard): a member that misses acks or is suspected
//!   itself slows its probing and waits longer, so an overloaded member does
//!   not accuse healthy ones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::broadcast::Broadcasts;
use ed25519_dalek::SigningKey;

use super::message::{Addr, Body, Message, Meta, NodeId, PublicKey, Record, State, Update};

/// Timing and fan-out; times in milliseconds.
#[derive(Debug, Clone)]
pub struct Config {
    pub probe_interval_ms: u64,
    pub probe_timeout_ms: u64,
    pub indirect_probes: usize,
    pub suspicion_mult: u64,
    pub suspicion_max_mult: u64,
    pub retransmit_mult: u32,
    pub gossip_interval_ms: u64,
    pub gossip_fanout: usize,
    /// Dead members still get gossip this long (so they learn and refute).
    pub gossip_dead_ms: u64,
    /// Updates piggybacked per message.
    pub max_piggyback: usize,
    pub push_pull_interval_ms: u64,
    pub max_awareness: u32,
    /// Dead and left members are forgotten this long after they went.
    pub prune_after_ms: u64,
    /// A member dead this long may come back under a new node key (a host
    /// whose data dir was wiped); before that, and unless it left, its
    /// name stays bound to its old key.
    pub rebind_after_dead_ms: u64,
}

/// Incarnations above this are refused as forged: a member adds one per
/// refutation, so no honest one gets near it, and no arithmetic on an
/// accepted one can overflow.
pub const MAX_INCARNATION: u64 = 1 << 40;
/// Members one agent tracks at most: past it, new names are refused, so no
/// peer can grow the table without bound.
pub const MAX_MEMBERS: usize = 65_536;

impl Default for Config {
    /// memberlist's LAN profile, which Consul uses.
    fn default() -> Self {
        Config {
            probe_interval_ms: 1000,
            probe_timeout_ms: 500,
            indirect_probes: 3,
            suspicion_mult: 4,
            suspicion_max_mult: 6,
            retransmit_mult: 4,
            gossip_interval_ms: 200,
            gossip_fanout: 3,
            gossip_dead_ms: 30_000,
            max_piggyback: 8,
            push_pull_interval_ms: 30_000,
            max_awareness: 8,
            // Consul reaps members after 72 h; a day is plenty for an
            // edge fleet's `member list` to show who went, and when.
            prune_after_ms: 24 * 3_600_000,
            rebind_after_dead_ms: 10 * 60_000,
        }
    }
}

/// A message to send to an address.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub to: Addr,
    pub message: Message,
}

/// A member changed state (as seen here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub id: NodeId,
    pub from: Option<State>,
    pub to: State,
    pub at_ms: u64,
}

struct Member {
    record: Record,
    changed_ms: u64,
    /// The node key its name is bound to here.
    key: PublicKey,
    /// The signed `Alive` its address and metadata come from.
    alive: Update,
    /// The signed statement that made it suspect, dead or left, if it is.
    status: Option<Update>,
}

struct Suspicion {
    incarnation: u64,
    started_ms: u64,
    min_ms: u64,
    max_ms: u64,
    expected: u32,
    confirmations: HashSet<NodeId>,
    deadline_ms: u64,
    /// The timer ran out once and the suspect got a last direct ping.
    last_chance: bool,
}

impl Suspicion {
    /// Lifeguard: from `max` down to `min` as confirmations come in.
    fn recompute(&mut self) {
        if self.last_chance {
            // The last-chance pings are out: wait for their acks.
            return;
        }
        let confirmed = self.confirmations.len() as f64;
        let fraction = if self.expected == 0 {
            1.0
        } else {
            ((confirmed + 1.0).ln() / (f64::from(self.expected) + 1.0).ln()).min(1.0)
        };
        let span = (self.max_ms - self.min_ms) as f64;
        let timeout = (self.max_ms as f64 - span * fraction).max(self.min_ms as f64) as u64;
        self.deadline_ms = self.started_ms + timeout;
    }
}

struct Probe {
    seq: u64,
    target: NodeId,
    indirect_at_ms: u64,
    indirect_sent: bool,
    acked: bool,
}

/// A ping we send for another member's ping-req.
struct Relay {
    origin_seq: u64,
    origin_addr: Addr,
    expires_ms: u64,
}

pub struct Swim {
    config: Config,
    me: NodeId,
    /// This member's node key: it signs what this member says.
    signing: SigningKey,
    public: PublicKey,
    /// Keys a member's name may be bound to (`None`: any key).
    trusted: Option<HashSet<PublicKey>>,
    /// This member's own signed `Left`, once it left.
    own_left: Option<Update>,
    /// Updates and messages refused, by reason.
    refused: BTreeMap<&'static str, u64>,
    addr: Addr,
    incarnation: u64,
    meta: Arc<Meta>,
    members: HashMap<NodeId, Member>,
    /// The member each node key was last bound to (checked against
    /// `members` when read: an entry may be stale).
    names_by_key: HashMap<[u8; 32], NodeId>,
    /// Every member ever known (for O(1) random picks; states are checked).
    known: Vec<NodeId>,
    ring: Vec<NodeId>,
    ring_at: usize,
    probe: Option<Probe>,
    relays: HashMap<u64, Relay>,
    suspicions: HashMap<NodeId, Suspicion>,
    broadcasts: Broadcasts,
    /// Lifeguard's local health multiplier: 0 is healthy.
    awareness: u32,
    seq: u64,
    rng: StdRng,
    next_probe_ms: u64,
    next_gossip_ms: u64,
    next_sync_ms: u64,
    left: bool,
    /// Counts changes to any record (state, address or metadata), this
    /// member's own included: watchers compare it to see news.
    revision: u64,
    /// State changes since the driver last drained them.
    pub changes: Vec<StateChange>,
}

impl Swim {
    /// A member named `me` that signs with `key`.
    pub fn new(
        config: Config,
        me: NodeId,
        addr: Addr,
        meta: Meta,
        key: SigningKey,
        now_ms: u64,
        seed: u64,
    ) -> Swim {
        let mut rng = StdRng::seed_from_u64(seed);
        // Spread the members' timers so they do not all fire together.
        let jitter = |rng: &mut StdRng, interval: u64| rng.random_range(0..interval.max(1));
        let next_probe_ms = now_ms + jitter(&mut rng, config.probe_interval_ms);
        let next_gossip_ms = now_ms + jitter(&mut rng, config.gossip_interval_ms);
        let next_sync_ms =
            now_ms + config.push_pull_interval_ms + jitter(&mut rng, config.push_pull_interval_ms);
        Swim {
            config,
            me,
            public: key.verifying_key().to_bytes(),
            signing: key,
            trusted: None,
            own_left: None,
            refused: BTreeMap::new(),
            addr,
            incarnation: 1,
            meta: Arc::new(meta),
            members: HashMap::new(),
            names_by_key: HashMap::new(),
            known: Vec::new(),
            ring: Vec::new(),
            ring_at: 0,
            probe: None,
            relays: HashMap::new(),
            suspicions: HashMap::new(),
            broadcasts: Broadcasts::default(),
            awareness: 0,
            seq: 0,
            rng,
            next_probe_ms,
            next_gossip_ms,
            next_sync_ms,
            left: false,
            revision: 0,
            changes: Vec::new(),
        }
    }

    pub fn id(&self) -> &NodeId {
        &self.me
    }

    /// Only these keys may be bound to a member's name (the peer keys the
    /// agent trusts); without a call, any key may.
    pub fn set_trusted(&mut self, keys: impl IntoIterator<Item = PublicKey>) {
        self.trusted = Some(keys.into_iter().collect());
    }

    /// Updates and messages refused so far, by reason.
    pub fn refused(&self) -> &BTreeMap<&'static str, u64> {
        &self.refused
    }

    /// This member's signed announcement of itself.
    pub fn announcement(&self) -> Update {
        self.alive_update()
    }

    pub fn awareness(&self) -> u32 {
        self.awareness
    }

    /// What this member says about itself.
    pub fn meta(&self) -> &Arc<Meta> {
        &self.meta
    }

    /// Grows whenever a record changes.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// This member's record followed by every other known one.
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::with_capacity(self.members.len() + 1);
        out.push(self.own_record());
        out.extend(self.members.values().map(|m| m.record.clone()));
        out
    }

    /// The record of member `id` as seen here (not this member's own).
    pub fn record_of(&self, id: &str) -> Option<&Record> {
        self.members.get(id).map(|m| &m.record)
    }

    /// The state of `id` as seen here.
    pub fn state_of(&self, id: &str) -> Option<State> {
        if *self.me == *id {
            return Some(if self.left { State::Left } else { State::Alive });
        }
        self.members.get(id).map(|m| m.record.state)
    }

    /// Members believed alive or suspect, this one included.
    pub fn live_count(&self) -> usize {
        1 + self
            .members
            .values()
            .filter(|m| matches!(m.record.state, State::Alive | State::Suspect))
            .count()
    }

    fn own_record(&self) -> Record {
        Record {
            id: self.me.clone(),
            addr: self.addr.clone(),
            incarnation: self.incarnation,
            state: if self.left { State::Left } else { State::Alive },
            meta: self.meta.clone(),
        }
    }

    fn alive_update(&self) -> Update {
        Update::Alive {
            id: self.me.clone(),
            incarnation: self.incarnation,
            addr: self.addr.clone(),
            meta: self.meta.clone(),
            key: self.public,
            sig: Vec::new(),
        }
        .signed(&self.signing)
    }

    /// Learns a member from its signed announcement without gossiping
    /// about it (a simulation's start).
    pub fn add_known(&mut self, alive: Update, now_ms: u64) {
        let Update::Alive {
            id,
            incarnation,
            addr,
            meta,
            key,
            ..
        } = &alive
        else {
            return;
        };
        if *id == self.me || !alive.verify(key) {
            return;
        }
        if !self.members.contains_key(id) {
            self.known.push(id.clone());
        }
        let record = Record {
            id: id.clone(),
            addr: addr.clone(),
            incarnation: *incarnation,
            state: State::Alive,
            meta: meta.clone(),
        };
        let key = *key;
        self.names_by_key.insert(key, id.clone());
        self.members.insert(
            id.clone(),
            Member {
                record,
                changed_ms: now_ms,
                key,
                alive,
                status: None,
            },
        );
    }

    /// Every record as the signed updates that made it, for a full sync.
    fn sync_updates(&self) -> Vec<Update> {
        let mut out = Vec::with_capacity(self.members.len() + 2);
        out.push(self.alive_update());
        out.extend(self.own_left.clone());
        for member in self.members.values() {
            out.push(member.alive.clone());
            out.extend(member.status.clone());
        }
        out
    }

    /// Joins through `seeds` (addresses): a full sync with each.
    pub fn join(&mut self, seeds: &[Addr]) -> Vec<Outgoing> {
        self.broadcasts.push(self.alive_update());
        let updates = self.sync_updates();
        let mut out = Vec::new();
        let own = self.addr.clone();
        for seed in seeds.iter().filter(|seed| **seed != own) {
            let message = self.message(Body::Sync {
                updates: updates.clone(),
                reply: true,
            });
            out.push(Outgoing {
                to: seed.clone(),
                message,
            });
        }
        out
    }

    /// Changes what this member says about itself.
    pub fn set_meta(&mut self, meta: Meta) {
        if self.left {
            // An Alive now would outrank the Left being gossiped.
            return;
        }
        self.revision += 1;
        self.meta = Arc::new(meta);
        self.incarnation += 1;
        self.broadcasts.push(self.alive_update());
    }

    /// Leaves on purpose: tells a few members at once; gossip does the rest.
    pub fn leave(&mut self, now_ms: u64) -> Vec<Outgoing> {
        self.revision += 1;
        self.left = true;
        self.incarnation += 1;
        let update = Update::Left {
            id: self.me.clone(),
            incarnation: self.incarnation,
            sig: Vec::new(),
        }
        .signed(&self.signing);
        self.own_left = Some(update.clone());
        self.broadcasts.push(update);
        self.leave_gossip(now_ms)
    }

    /// One more round of telling random members that this one left (a
    /// member that left runs no timers of its own).
    pub fn leave_gossip(&mut self, now_ms: u64) -> Vec<Outgoing> {
        if !self.left {
            return Vec::new();
        }
        let targets = self.random_members(self.config.gossip_fanout * 2, now_ms, None);
        targets
            .into_iter()
            .map(|addr| Outgoing {
                to: addr,
                message: self.message(Body::Gossip),
            })
            .collect()
    }

    /// The earliest time `tick` has something to do.
    pub fn next_deadline(&self) -> u64 {
        let mut next = self
            .next_probe_ms
            .min(self.next_gossip_ms)
            .min(self.next_sync_ms);
        if let Some(probe) = &self.probe {
            if !probe.acked && !probe.indirect_sent {
                next = next.min(probe.indirect_at_ms);
            }
        }
        for suspicion in self.suspicions.values() {
            next = next.min(suspicion.deadline_ms);
        }
        next
    }

    /// Runs the timers due at `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if self.left {
            return out;
        }
        self.expire_suspicions(now_ms, &mut out);
        self.prune(now_ms);
        self.relays.retain(|_, relay| relay.expires_ms > now_ms);
        if let Some(probe) = &self.probe {
            if !probe.acked && !probe.indirect_sent && now_ms >= probe.indirect_at_ms {
                self.send_indirect(now_ms, &mut out);
            }
        }
        if now_ms >= self.next_probe_ms {
            self.finish_probe(now_ms);
            self.start_probe(now_ms, &mut out);
            self.next_probe_ms =
                now_ms + self.config.probe_interval_ms * u64::from(self.awareness + 1);
        }
        if now_ms >= self.next_gossip_ms {
            self.next_gossip_ms = now_ms + self.config.gossip_interval_ms;
            if !self.broadcasts.is_empty() {
                for addr in self.random_members(self.config.gossip_fanout, now_ms, None) {
                    let message = self.message(Body::Gossip);
                    if message.updates.is_empty() {
                        break;
                    }
                    out.push(Outgoing { to: addr, message });
                }
            }
        }
        if now_ms >= self.next_sync_ms {
            self.next_sync_ms = now_ms + self.push_pull_interval();
            if let Some(addr) = self.random_alive(None) {
                let updates = self.sync_updates();
                out.push(Outgoing {
                    to: addr,
                    message: self.message(Body::Sync {
                        updates,
                        reply: true,
                    }),
                });
            }
        }
        out
    }

    /// Handles a message from another member, which came over a
    /// connection authenticated with `sender_key` (`None`: not known, as
    /// in the simulation).
    ///
    /// Sent by: any member with a trusted key. Checked here: the sender's
    /// name is bound to the key it came with (else the message is dropped
    /// as an impersonation), and every update it carries is signed by the
    /// member that makes the statement (see [`Swim::apply`]).
    pub fn receive(
        &mut self,
        message: Message,
        sender_key: Option<PublicKey>,
        now_ms: u64,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if self.left {
            return out;
        }
        if let Some(sender) = sender_key {
            let bound = if message.from == self.me {
                Some(self.public)
            } else {
                self.members.get(&message.from).map(|m| m.key)
            };
            if bound.is_some_and(|bound| bound != sender) {
                self.refuse("impersonation");
                tracing::warn!(member = %message.from, "refused a gossip message from a key that is not the one this member's name is bound to");
                return out;
            }
        }
        for update in message.updates {
            self.apply(update, now_ms);
        }
        match message.body {
            Body::Ping { seq, target } => {
                if target == self.me {
                    out.push(Outgoing {
                        to: message.from_addr,
                        message: self.message(Body::Ack { seq }),
                    });
                }
            }
            Body::PingReq {
                seq,
                target,
                target_addr,
            } => {
                self.seq += 1;
                let relay_seq = self.seq;
                self.relays.insert(
                    relay_seq,
                    Relay {
                        origin_seq: seq,
                        origin_addr: message.from_addr,
                        expires_ms: now_ms + self.config.probe_timeout_ms * 2,
                    },
                );
                out.push(Outgoing {
                    to: target_addr,
                    message: self.message(Body::Ping {
                        seq: relay_seq,
                        target,
                    }),
                });
            }
            Body::Ack { seq } => {
                if let Some(probe) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    if !probe.acked {
                        probe.acked = true;
                        self.awareness = self.awareness.saturating_sub(1);
                    }
                } else if let Some(relay) = self.relays.remove(&seq) {
                    out.push(Outgoing {
                        to: relay.origin_addr,
                        message: self.message(Body::Ack {
                            seq: relay.origin_seq,
                        }),
                    });
                }
            }
            Body::Gossip => {}
            Body::Sync { updates, reply } => {
                for update in updates {
                    self.apply(update, now_ms);
                }
                if reply {
                    let updates = self.sync_updates();
                    out.push(Outgoing {
                        to: message.from_addr,
                        message: self.message(Body::Sync {
                            updates,
                            reply: false,
                        }),
                    });
                }
            }
        }
        out
    }

    fn message(&mut self, body: Body) -> Message {
        let limit = self.retransmit_limit();
        let priority = self.probe.as_ref().map(|p| p.target.clone());
        let updates = self
            .broadcasts
            .take(self.config.max_piggyback, limit, priority.as_ref());
        Message {
            from: self.me.clone(),
            from_addr: self.addr.clone(),
            body,
            updates,
        }
    }

    fn retransmit_limit(&self) -> u32 {
        let n = self.live_count() as f64;
        self.config.retransmit_mult * ((n + 1.0).log10().ceil() as u32).max(1)
    }

    fn push_pull_interval(&self) -> u64 {
        // memberlist's scaling: rarer syncs in large clusters.
        let n = self.live_count();
        let scale = if n <= 32 {
            1
        } else {
            ((n as f64).log2() - 5.0).ceil() as u64 + 1
        };
        self.config.push_pull_interval_ms * scale
    }

    fn start_probe(&mut self, now_ms: u64, out: &mut Vec<Outgoing>) {
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

    fn send_indirect(&mut self, now_ms: u64, out: &mut Vec<Outgoing>) {
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
    fn finish_probe(&mut self, now_ms: u64) {
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
    fn expire_suspicions(&mut self, now_ms: u64, out: &mut Vec<Outgoing>) {
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
    fn next_target(&mut self) -> Option<NodeId> {
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
    fn random_members(&mut self, count: usize, now_ms: u64, except: Option<&NodeId>) -> Vec<Addr> {
        self.random_members_of(count, now_ms, except, false)
    }

    /// [`Swim::random_members`], only voters if `voters_only`.
    fn random_members_of(
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

    fn random_alive(&mut self, except: Option<&NodeId>) -> Option<Addr> {
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
    fn can_reach(&self, member: &Member) -> bool {
        !member.record.meta.dials_out || self.meta.role == "voter"
    }

    /// Someone says this member is suspect or dead: refute with a higher
    /// incarnation (and, per Lifeguard, take it as a sign of own slowness).
    fn refute(&mut self, incarnation: u64) {
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

    fn set_state(&mut self, id: &NodeId, state: State, incarnation: u64, now_ms: u64) {
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
    fn prune(&mut self, now_ms: u64) {
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

    fn refuse(&mut self, reason: &'static str) {
        *self.refused.entry(reason).or_default() += 1;
    }

    /// Whether the member that makes `update`'s statement signed it: the
    /// key its name is bound to (an `Alive` of a name not yet bound binds
    /// it to its key, if trusted; a name is bound anew only after the
    /// member it named left, by its own signed word, or has been dead for
    /// `rebind_after_dead_ms`).
    fn authentic(&mut self, update: &Update, now_ms: u64) -> bool {
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
    fn apply_about_me(&mut self, update: &Update, now_ms: u64) {
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
