//! What gossip members send each other. Every message carries piggybacked
//! membership updates; the encoding is postcard (sizes are what the
//! simulation counts as bytes on the wire).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A member's name: unique in the fleet (the agent's `name`).
pub type NodeId = Arc<str>;
/// Where a member listens for gossip (`host:port`).
pub type Addr = Arc<str>;

/// What a member says about itself; travels with its `Alive` updates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// "voter" or "edge".
    pub role: String,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    /// The raft cluster's id (hex): an edge agent learns it from voters.
    pub cluster: String,
    /// Where raft reaches this member (`quic://host:port`).
    pub peer_url: String,
    /// Where clients reach it.
    pub client_urls: Vec<String>,
    /// The services of its host and their health.
    pub services: Vec<ServiceState>,
    /// The rollouts whose new value this agent renders (it is in their
    /// current stage), and whether rendering it worked.
    pub rollouts: Vec<RolloutMark>,
    /// The agent's own health checks (`[[check]]`), for rollout gates.
    pub checks: Vec<AgentCheck>,
    /// An edge's feed subscription group (see `edge::sources`): agents of
    /// one group relay the feed to each other. Empty on voters.
    pub feed_group: String,
    /// This member cannot be dialed (`[gossip] dial_out_only`, behind
    /// NAT): only voters, to which it holds connections, send to it.
    pub dials_out: bool,
    /// A voter's store, for the leader's upkeep (quota and corruption
    /// alarms). The leader reads it only from records whose name and peer
    /// URL are a raft voter's.
    pub store: StoreReport,
}

/// What a voter says of its store: its size, and its history checksum
/// (etcd's HashKV) at a revision (0: none taken yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreReport {
    pub db_size: u64,
    pub hash: u32,
    pub revision: i64,
    pub compact_revision: i64,
}

/// The latest result of one of an agent's `[[check]]` entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCheck {
    pub name: String,
    pub health: Health,
    /// What it said (cut to a few hundred bytes).
    pub output: String,
}

/// One rollout an agent takes part in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutMark {
    pub id: String,
    /// Empty when the new value rendered; otherwise why it did not.
    pub error: String,
}

/// A health verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    Passing,
    Warning,
    Critical,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }
}

/// One service instance as its agent announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    /// The worst result of its checks (passing when it has none).
    pub health: Health,
    /// What the failing check said (cut to a few hundred bytes).
    pub output: String,
}

/// A member's node key (ed25519, raw).
pub type PublicKey = [u8; 32];

/// A change in one member's state, at one incarnation. Newer incarnations
/// win; at equal incarnation, dead beats suspect beats alive.
///
/// Each is signed by the member that makes the statement (its
/// [`Update::signer`]): `Alive` and `Left` by their subject, `Suspect` and
/// `Dead` by the member that suspects. Gossip relays them as they are, so
/// no member can speak for another; `sig` is over [`Update::signed_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    Alive {
        id: NodeId,
        incarnation: u64,
        addr: Addr,
        meta: Arc<Meta>,
        /// The subject's node key: the name is bound to it where first
        /// seen (and only if the key is trusted).
        key: PublicKey,
        sig: Vec<u8>,
    },
    Suspect {
        id: NodeId,
        incarnation: u64,
        /// Who suspects it: independent suspicions shorten the timeout.
        from: NodeId,
        sig: Vec<u8>,
    },
    Dead {
        id: NodeId,
        incarnation: u64,
        from: NodeId,
        sig: Vec<u8>,
    },
    /// The member left on purpose (`edgeconf member leave`).
    Left {
        id: NodeId,
        incarnation: u64,
        sig: Vec<u8>,
    },
}

/// Separates gossip signatures from every other use of a node key.
const SIGNING_CONTEXT: &[u8] = b"edgeconf-gossip-update/1";

impl Update {
    /// Who makes the statement, and so signs it.
    pub fn signer(&self) -> &NodeId {
        match self {
            Update::Alive { id, .. } | Update::Left { id, .. } => id,
            Update::Suspect { from, .. } | Update::Dead { from, .. } => from,
        }
    }

    /// The bytes `sig` covers: the update without its signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.sig_mut().clear();
        let mut bytes = SIGNING_CONTEXT.to_vec();
        bytes.extend(postcard::to_allocvec(&unsigned).unwrap_or_default());
        bytes
    }

    /// Signs the update with `key` (the signer's own).
    pub fn signed(mut self, key: &ed25519_dalek::SigningKey) -> Update {
        use ed25519_dalek::Signer as _;
        let signature = key.sign(&self.signed_bytes());
        *self.sig_mut() = signature.to_bytes().to_vec();
        self
    }

    /// Whether `key` signed this update.
    pub fn verify(&self, key: &PublicKey) -> bool {
        let (Ok(key), Ok(sig)) = (
            ed25519_dalek::VerifyingKey::from_bytes(key),
            ed25519_dalek::Signature::from_slice(self.sig()),
        ) else {
            return false;
        };
        key.verify_strict(&self.signed_bytes(), &sig).is_ok()
    }

    fn sig(&self) -> &[u8] {
        match self {
            Update::Alive { sig, .. }
            | Update::Suspect { sig, .. }
            | Update::Dead { sig, .. }
            | Update::Left { sig, .. } => sig,
        }
    }

    fn sig_mut(&mut self) -> &mut Vec<u8> {
        match self {
            Update::Alive { sig, .. }
            | Update::Suspect { sig, .. }
            | Update::Dead { sig, .. }
            | Update::Left { sig, .. } => sig,
        }
    }

    pub fn incarnation(&self) -> u64 {
        match self {
            Update::Alive { incarnation, .. }
            | Update::Suspect { incarnation, .. }
            | Update::Dead { incarnation, .. }
            | Update::Left { incarnation, .. } => *incarnation,
        }
    }

    pub fn subject(&self) -> &NodeId {
        match self {
            Update::Alive { id, .. }
            | Update::Suspect { id, .. }
            | Update::Dead { id, .. }
            | Update::Left { id, .. } => id,
        }
    }
}

/// One member's full record, for anti-entropy syncs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: NodeId,
    pub addr: Addr,
    pub incarnation: u64,
    pub state: State,
    pub meta: Arc<Meta>,
}

#[cfg(test)]
impl Record {
    /// A member named `name` in `state`, for tests of what reads records.
    pub fn for_test(name: &str, state: State, meta: Meta) -> Record {
        Record {
            id: name.into(),
            addr: "127.0.0.1:1".into(),
            incarnation: 1,
            state,
            meta: Arc::new(meta),
        }
    }
}

/// A member's state as others see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Alive,
    Suspect,
    Dead,
    Left,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Alive => "alive",
            State::Suspect => "suspect",
            State::Dead => "dead",
            State::Left => "left",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Are you there? (`target` guards against a reused address.)
    Ping { seq: u64, target: NodeId },
    /// Probe `target` for me and tell me if it answers.
    PingReq {
        seq: u64,
        target: NodeId,
        target_addr: Addr,
    },
    /// An answer to a ping, or a relayed one to a ping-req.
    Ack { seq: u64 },
    /// Updates only.
    Gossip,
    /// Anti-entropy: my whole table, as the signed updates that made each
    /// record (a member's latest `Alive`, then what changed its state
    /// since); `reply` asks for theirs back.
    Sync { updates: Vec<Update>, reply: bool },
}

/// A message with its sender and piggybacked updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub from_addr: Addr,
    pub body: Body,
    pub updates: Vec<Update>,
}

impl Message {
    /// Encoded size in bytes.
    pub fn wire_size(&self) -> usize {
        postcard::to_allocvec(self).map_or(0, |bytes| bytes.len())
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}
