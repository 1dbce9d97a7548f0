//! Gossip membership (SWIM with Lifeguard's refinements): every agent,
//! voter or edge, learns who is alive, suspect, dead or gone, with their
//! labels, without loading the raft group.
//!
//! [`swim::Swim`] is the protocol as a pure state machine (no I/O, no
//! clock); [`sim`] drives many of them over a simulated lossy network,
//! for tests and for the figures in BENCHMARKS.md.

pub mod broadcast;
pub mod membership;
pub mod message;
pub mod sim;
pub mod swim;

#[cfg(test)]
mod tests;

pub use membership::Membership;
pub use message::{
    Addr, AgentCheck, Health, Message, Meta, NodeId, Record, RolloutMark, ServiceState, State,
    StoreReport, Update,
};
pub use swim::{Config, Outgoing, StateChange, Swim};
