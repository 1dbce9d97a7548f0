//! An in-process simulation of gossip: many [`Swim`] members, the same
//! code the agent runs, over a network with latency and loss, in
//! simulated time (a run of minutes takes seconds).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::message::{Addr, Message, Meta, NodeId, State};
use super::swim::{Config, Outgoing, StateChange, Swim};

/// How often (simulated ms) `run_until` asks whether it is done.
const CHECK_EVERY_MS: u64 = 10;

/// The simulated network.
#[derive(Debug, Clone)]
pub struct Network {
    /// Chance that a message is lost.
    pub loss: f64,
    /// One-way latency, uniform in this range (ms).
    pub latency_ms: (u64, u64),
}

enum Event {
    Deliver { to: usize, message: Message },
    Tick { node: usize },
}

/// Members `n0..nN`, each knowing all the others at the start.
pub struct Sim {
    pub members: Vec<Swim>,
    down: Vec<bool>,
    index: HashMap<Addr, usize>,
    pub network: Network,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Event>,
    next_event: u64,
    scheduled: Vec<u64>,
    rng: StdRng,
    pub now_ms: u64,
    /// Bytes and messages sent since the last [`Sim::reset_traffic`].
    pub bytes: u64,
    pub messages: u64,
    /// Every state change, as (observer, change).
    pub changes: Vec<(usize, StateChange)>,
}

impl Sim {
    pub fn new(n: usize, config: Config, network: Network, seed: u64) -> Sim {
        let ids: Vec<NodeId> = (0..n).map(|i| Arc::from(format!("n{i}"))).collect();
        let addrs: Vec<Addr> = (0..n)
            .map(|i| Arc::from(format!("10.0.{}.{}:7946", i / 250, i % 250)))
            .collect();
        let meta = Arc::new(Meta {
            role: "edge".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            labels: [("region".to_string(), "eu".to_string())].into(),
            // As big as a real edge agent's: ids, URLs and one service.
            cluster: "9c3e1f0a7b2d4e6f".into(),
            peer_url: "quic://10.0.0.1:2380".into(),
            client_urls: vec!["http://127.0.0.1:2379".into()],
            services: vec![crate::gossip::ServiceState {
                id: "web".into(),
                name: "web".into(),
                address: "10.0.0.1".into(),
                port: 8080,
                tags: vec!["v1".into()],
                health: crate::gossip::Health::Passing,
                output: String::new(),
            }],
            rollouts: Vec::new(),
            checks: Vec::new(),
            feed_group: "5f3a9c1e".into(),
            dials_out: false,
            store: Default::default(),
        });
        let mut members: Vec<Swim> = (0..n)
            .map(|i| {
                let member_seed = seed.wrapping_mul(31).wrapping_add(i as u64);
                Swim::new(
                    config.clone(),
                    ids[i].clone(),
                    addrs[i].clone(),
                    (*meta).clone(),
                    sim_key(member_seed),
                    0,
                    member_seed,
                )
            })
            .collect();
        let announcements: Vec<_> = members.iter().map(Swim::announcement).collect();
        for (i, member) in members.iter_mut().enumerate() {
            for (j, announcement) in announcements.iter().enumerate() {
                if i != j {
                    member.add_known(announcement.clone(), 0);
                }
            }
        }
        let index = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (a.clone(), i))
            .collect();
        let mut sim = Sim {
            members,
            down: vec![false; n],
            index,
            network,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_event: 0,
            scheduled: vec![u64::MAX; n],
            rng: StdRng::seed_from_u64(seed),
            now_ms: 0,
            bytes: 0,
            messages: 0,
            changes: Vec::new(),
        };
        for node in 0..n {
            sim.reschedule(node);
        }
        sim
    }

    fn push(&mut self, at_ms: u64, event: Event) {
        self.next_event += 1;
        self.events.insert(self.next_event, event);
        self.queue.push(Reverse((at_ms, self.next_event)));
    }

    fn reschedule(&mut self, node: usize) {
        let deadline = self.members[node].next_deadline().max(self.now_ms);
        if deadline != self.scheduled[node] {
            self.scheduled[node] = deadline;
            self.push(deadline, Event::Tick { node });
        }
    }

    fn send(&mut self, outgoing: Vec<Outgoing>) {
        for Outgoing { to, message } in outgoing {
            self.messages += 1;
            self.bytes += message.wire_size() as u64;
            if self.rng.random::<f64>() < self.network.loss {
                continue;
            }
            let Some(&to) = self.index.get(&to) else {
                continue;
            };
            let (low, high) = self.network.latency_ms;
            let latency = self.rng.random_range(low..=high.max(low));
            self.push(self.now_ms + latency, Event::Deliver { to, message });
        }
    }

    fn after(&mut self, node: usize, outgoing: Vec<Outgoing>) {
        for change in self.members[node].changes.drain(..) {
            self.changes.push((node, change));
        }
        self.send(outgoing);
        self.reschedule(node);
    }

    /// Runs until `until_ms`, or until `done` holds (checked after each
    /// event); returns whether `done` held.
    pub fn run_until(&mut self, until_ms: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        // `done` looks at every member: asking it after every event would
        // make a run quadratic in the fleet's size.
        let mut checked_ms = self.now_ms;
        while let Some(Reverse((at_ms, id))) = self.queue.peek().copied() {
            if at_ms > until_ms {
                break;
            }
            self.queue.pop();
            let Some(event) = self.events.remove(&id) else {
                continue;
            };
            self.now_ms = at_ms;
            match event {
                Event::Tick { node } => {
                    if self.scheduled[node] != at_ms || self.down[node] {
                        continue;
                    }
                    self.scheduled[node] = u64::MAX;
                    let outgoing = self.members[node].tick(at_ms);
                    self.after(node, outgoing);
                }
                Event::Deliver { to, message } => {
                    if self.down[to] {
                        continue;
                    }
                    let outgoing = self.members[to].receive(message, None, at_ms);
                    self.after(to, outgoing);
                }
            }
            if self.now_ms >= checked_ms + CHECK_EVERY_MS {
                checked_ms = self.now_ms;
                if done(self) {
                    return true;
                }
            }
        }
        self.now_ms = self.now_ms.max(until_ms);
        done(self)
    }

    /// Stops a member dead: no more messages, no goodbye.
    pub fn kill(&mut self, node: usize) {
        self.down[node] = true;
    }

    /// A member leaves on purpose.
    pub fn leave(&mut self, node: usize) {
        let outgoing = self.members[node].leave(self.now_ms);
        self.after(node, outgoing);
        self.down[node] = true;
    }

    /// Members not killed or gone.
    pub fn up(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.members.len()).filter(|i| !self.down[*i])
    }

    /// How many running members see `subject` in `state`.
    pub fn seen_as(&self, subject: usize, state: State) -> usize {
        let id = self.members[subject].id().clone();
        self.up()
            .filter(|i| {
                *i != subject
                    && self.members[*i]
                        .record_of(&id)
                        .is_some_and(|r| r.state == state)
            })
            .count()
    }

    pub fn reset_traffic(&mut self) {
        self.bytes = 0;
        self.messages = 0;
    }

    /// Changes observed about members that are in fact running.
    pub fn false_changes(&self, to: State) -> usize {
        self.changes
            .iter()
            .filter(|(_, change)| change.to == to)
            .filter(|(_, change)| {
                let subject = self.members.iter().position(|m| *m.id() == change.id);
                subject.is_some_and(|s| !self.down[s])
            })
            .count()
    }
}

/// A member's node key in the simulation, from its seed.
pub fn sim_key(seed: u64) -> ed25519_dalek::SigningKey {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    ed25519_dalek::SigningKey::from_bytes(&bytes)
}
