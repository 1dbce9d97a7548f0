//! The edge feed: how committed changes reach agents that are not raft
//! members, through any peer, without trusting that peer.
//!
//! Voters derive a hash chain from the committed log ([`chain`]) and sign
//! checkpoints of it with their node keys. Any agent may relay the chain's
//! entries, the values it holds and the checkpoints it has seen; a follower
//! ([`follow`]) applies a relayed batch only if it extends the chain value
//! it already verified and ends at a checkpoint signed by a voter it pins.
//!
//! This module is pure: it never touches the network or the disk, so every
//! refusal is tested here with hostile batches (see `tests.rs`).

pub mod chain;
pub mod follow;
#[cfg(test)]
mod tests;
pub mod wire;

pub use chain::{Checkpoint, Digest, Entry, Kind, Revision, SignedCheckpoint, GENESIS};
pub use follow::{
    verify_batch, verify_image, Accepted, Batch, Image, ImageKv, Position, Prefixes, Value,
};

/// Why a relayed batch or image was refused. Each names what the relay got
/// wrong; the follower keeps its position and asks another peer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FeedError {
    #[error("checkpoint is for cluster {theirs:x}, this agent is in cluster {ours:x}")]
    WrongCluster { theirs: u64, ours: u64 },
    #[error("checkpoint signed by {0}, which is not a voter key this agent pins")]
    UnknownSigner(String),
    #[error("checkpoint signature does not verify")]
    BadSignature,
    #[error(
        "checkpoint for revision {revision} says its voter's newest revision was {head}, below it"
    )]
    HeadBehind { head: i64, revision: i64 },
    #[error("batch follows revision {after}, but this agent is at revision {ours} (replayed or out of order)")]
    NotNext { after: i64, ours: i64 },
    #[error(
        "revision {revision} is out of order in the batch (each must be above the one before)"
    )]
    Misordered { revision: i64 },
    #[error("batch ends at revision {last}, its checkpoint is for revision {checkpoint}")]
    EndMismatch { last: i64, checkpoint: i64 },
    #[error("the changes up to revision {revision} do not chain to the voter's checkpoint (forged, dropped or reordered changes)")]
    ChainMismatch { revision: i64 },
    #[error("revision {revision} changes {key:?}, a subscribed key, but the batch carries no value for it")]
    MissingValue { revision: i64, key: String },
    #[error(
        "the value of {key:?} at revision {revision} does not match the hash the voters attest"
    )]
    ValueMismatch { revision: i64, key: String },
    #[error("the batch carries a value for {key:?} at revision {revision} that no attested change calls for")]
    UnexpectedValue { revision: i64, key: String },
    #[error("image is at revision {image}, not after this agent's revision {ours} (an old image replayed)")]
    OldImage { image: i64, ours: i64 },
    #[error("image covers prefixes {theirs:?}, this agent subscribes to {ours:?}")]
    ImagePrefixes {
        theirs: Vec<String>,
        ours: Vec<String>,
    },
    #[error("image contents do not match the hash its voter signed")]
    ImageMismatch,
}

impl FeedError {
    /// A short label for the refusal counter (`edgeconf_feed_refused_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            FeedError::WrongCluster { .. } => "wrong_cluster",
            FeedError::UnknownSigner(_) => "unknown_signer",
            FeedError::BadSignature => "bad_signature",
            FeedError::HeadBehind { .. } => "head_behind",
            FeedError::NotNext { .. } => "not_next",
            FeedError::Misordered { .. } => "misordered",
            FeedError::EndMismatch { .. } => "end_mismatch",
            FeedError::ChainMismatch { .. } => "chain_mismatch",
            FeedError::MissingValue { .. } => "missing_value",
            FeedError::ValueMismatch { .. } => "value_mismatch",
            FeedError::UnexpectedValue { .. } => "unexpected_value",
            FeedError::OldImage { .. } => "old_image",
            FeedError::ImagePrefixes { .. } => "image_prefixes",
            FeedError::ImageMismatch => "image_mismatch",
        }
    }
}

/// A key as text for messages (keys are bytes; most are UTF-8).
fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}
