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

mod config;
mod probe;
mod updates;

pub use config::{Config, MAX_INCARNATION, MAX_MEMBERS};

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
}
