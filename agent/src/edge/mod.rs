//! The edge tier: agents that are not raft members follow the voters'
//! change feed through any peer, and serve it on to others.
//!
//! [`serve`] answers pulls (voters from their committed store, everyone
//! else from what it verified); [`follow`] is a follower's loop;
//! [`sources`] chooses whom to pull from. What makes a relayed change safe
//! to apply is decided in `crate::feed` alone; this module never applies
//! anything the feed's checks did not accept, and never proposes to raft.

pub mod agent;
pub mod follow;
pub mod serve;
pub mod sources;
#[cfg(test)]
mod tests;
