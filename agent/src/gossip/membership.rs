//! Runs the SWIM state machine for a live agent: its timers on tokio, its
//! messages over the peer endpoint's gossip protocol.
//!
//! Every member is addressed by its peer address (`host:port`), which is
//! also where raft reaches it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::{Message, Meta, Outgoing, Record, State, Swim};
use crate::transport::{GossipNet, Transport};

/// How long a leaving member keeps gossiping its departure.
const LEAVE_PROPAGATION: Duration = Duration::from_millis(1500);
/// How often a member that dials out checks its connections to the voters
/// (they close after 5 s idle; the held ones send keep-alives).
const HOLD_INTERVAL: Duration = Duration::from_secs(1);

/// Who this agent is on the gossip network.
pub struct Identity<'a> {
    pub name: &'a str,
    /// Its node key: it signs what this agent says of itself and others.
    pub key: ed25519_dalek::SigningKey,
    /// The node keys a member's name may be bound to (the trusted peers).
    pub trusted: &'a [[u8; 32]],
}

/// This agent's view of the fleet.
pub struct Membership {
    swim: Mutex<Swim>,
    net: Arc<GossipNet>,
    /// Wakes the timer task when deadlines may have moved.
    wake: Notify,
    /// The swim revision: grows whenever any record changes.
    revision: watch::Sender<u64>,
    epoch: Instant,
}

impl Membership {
    /// Joins through `seeds` and keeps running until `stop`.
    pub fn start(
        transport: &Transport,
        config: super::Config,
        identity: Identity<'_>,
        addr: SocketAddr,
        meta: Meta,
        seeds: &[SocketAddr],
        mut stop: watch::Receiver<bool>,
    ) -> Arc<Membership> {
        let epoch = Instant::now();
        let seed = rand::random();
        let mut swim = Swim::new(
            config,
            identity.name.into(),
            addr.to_string().into(),
            meta,
            identity.key,
            0,
            seed,
        );
        swim.set_trusted(identity.trusted.iter().copied());
        let membership = Arc::new(Membership {
            swim: Mutex::new(swim),
            net: transport.gossip().clone(),
            wake: Notify::new(),
            revision: watch::channel(0).0,
            epoch,
        });
        {
            let membership = Arc::downgrade(&membership);
            transport.attach_gossip(Arc::new(move |bytes, via, key| {
                if let Some(membership) = membership.upgrade() {
                    membership.receive(&bytes, via, key);
                }
            }));
        }
        let seeds: Vec<super::Addr> = seeds.iter().map(|s| s.to_string().into()).collect();
        let joined = membership.lock().join(&seeds);
        membership.send(joined);
        let timers = membership.clone();
        tokio::spawn(async move {
            let mut rejoin = tokio::time::interval(Duration::from_secs(5));
            let mut hold = tokio::time::interval(HOLD_INTERVAL);
            loop {
                let deadline = timers.lock().next_deadline();
                let wait = Duration::from_millis(deadline.saturating_sub(timers.now_ms()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = timers.wake.notified() => continue,
                    _ = rejoin.tick() => timers.rejoin_if_alone(&seeds),
                    _ = hold.tick() => timers.hold_voters(),
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                let now = timers.now_ms();
                let out = timers.lock().tick(now);
                timers.send(out);
                timers.publish();
                timers.net.prune();
            }
        });
        membership
    }

    /// Every member this agent knows of, itself first.
    pub fn members(&self) -> Vec<Record> {
        self.lock().records()
    }

    /// This agent's name.
    pub fn name(&self) -> String {
        self.lock().id().to_string()
    }

    /// Trusts exactly `keys` from now on for members' records (on SIGHUP).
    pub fn set_trusted(&self, keys: &[[u8; 32]]) {
        self.lock().set_trusted(keys.iter().copied());
    }

    /// Changes what this agent announces; the change spreads by gossip.
    pub fn update_meta(&self, change: impl FnOnce(&mut Meta)) {
        {
            let mut swim = self.lock();
            let mut meta = swim.meta().as_ref().clone();
            change(&mut meta);
            if **swim.meta() == meta {
                return;
            }
            swim.set_meta(meta);
        }
        self.publish();
        self.wake.notify_one();
    }

    /// Leaves on purpose: tells some members and keeps gossiping the news
    /// for a moment; others mark this agent left, not dead.
    pub async fn leave(&self) {
        let out = {
            let now = self.now_ms();
            self.lock().leave(now)
        };
        self.send(out);
        self.publish();
        // A left member stops its own timers; push the news a few more
        // times by hand.
        for _ in 0..5 {
            tokio::time::sleep(LEAVE_PROPAGATION / 5).await;
            let now = self.now_ms();
            let out = self.lock().leave_gossip(now);
            self.send(out);
        }
    }

    /// Notified whenever any member's record changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// The state of member `name`.
    pub fn state_of(&self, name: &str) -> Option<State> {
        self.lock().state_of(name)
    }

    /// Lifeguard's local health score (0 is healthy).
    pub fn awareness(&self) -> u32 {
        self.lock().awareness()
    }

    /// Gossip updates and messages refused so far, by reason.
    pub fn refused(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.lock().refused().clone()
    }

    /// Takes a message that came over a connection to `via`, made with the
    /// node key `key`.
    fn receive(&self, bytes: &[u8], via: SocketAddr, key: [u8; 32]) {
        let Ok(message) = Message::decode(bytes) else {
            tracing::debug!(bytes = bytes.len(), "dropped an undecodable gossip message");
            return;
        };
        let now = self.now_ms();
        let (from, from_addr) = (message.from.clone(), message.from_addr.clone());
        let out = {
            let mut swim = self.lock();
            let out = swim.receive(message, Some(key), now);
            // A member behind NAT is reached over the connection it
            // dialed from, whatever address it announces.
            let dials_out = swim.record_of(&from).is_some_and(|r| r.meta.dials_out);
            if let (true, Ok(announced)) = (dials_out, from_addr.parse()) {
                self.net.alias(announced, via);
            }
            out
        };
        self.send(out);
        self.publish();
        self.wake.notify_one();
    }

    /// A member that heard from nobody (its seeds were down when it
    /// started) tries them again.
    fn rejoin_if_alone(&self, seeds: &[super::Addr]) {
        let out = {
            let mut swim = self.lock();
            if swim.live_count() > 1 || seeds.is_empty() {
                return;
            }
            swim.join(seeds)
        };
        self.send(out);
    }

    /// A member that dials out keeps a connection to every voter it knows
    /// of, so that they can probe it and gossip to it.
    fn hold_voters(&self) {
        let voters: Vec<SocketAddr> = {
            let swim = self.lock();
            if !swim.meta().dials_out {
                return;
            }
            swim.records()
                .into_iter()
                .filter(|r| r.meta.role == "voter")
                .filter(|r| matches!(r.state, State::Alive | State::Suspect))
                .filter_map(|r| r.addr.parse().ok())
                .collect()
        };
        self.net.hold(&voters);
    }

    fn send(&self, out: Vec<Outgoing>) {
        for Outgoing { to, message } in out {
            match to.parse::<SocketAddr>() {
                Ok(addr) => self.net.send(addr, message.encode()),
                Err(_) => tracing::debug!(%to, "cannot gossip to a member with a bad address"),
            }
        }
    }

    fn publish(&self) {
        let (revision, changes) = {
            let mut swim = self.lock();
            (swim.revision(), std::mem::take(&mut swim.changes))
        };
        for change in changes {
            match change.to {
                State::Alive if change.from.is_none() => {
                    tracing::info!(member = %change.id, "member joined")
                }
                State::Alive => tracing::info!(member = %change.id, "member alive again"),
                State::Suspect => tracing::info!(member = %change.id, "member suspect"),
                State::Dead => tracing::warn!(member = %change.id, "member dead"),
                State::Left => tracing::info!(member = %change.id, "member left"),
            }
        }
        self.revision.send_if_modified(|current| {
            let changed = *current != revision;
            *current = revision;
            changed
        });
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> MutexGuard<'_, Swim> {
        self.swim.lock().unwrap_or_else(|e| e.into_inner())
    }
}
