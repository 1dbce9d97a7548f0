//! The follower's checks: whether a relayed batch or image may be applied.
//!
//! A follower holds a verified [`Position`] (a revision and the chain value
//! after it). [`verify_batch`] accepts a batch only if it starts at that
//! position, its revisions chain to a checkpoint signed by a pinned voter,
//! and it carries exactly the values of the subscribed keys it changes,
//! each matching its attested hash. [`verify_image`] accepts a voter-signed
//! image of the subscribed prefixes, newer than the position, for a
//! follower too far behind for batches. Neither changes anything: the caller
//! stores what was accepted and then moves to the new position.

use ed25519_dalek::{Signer as _, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::chain::{check_voter_signature, link, Digest, Revision, SignedCheckpoint};
use super::{key_text, FeedError};

const IMAGE_DOMAIN: &[u8] = b"edgeconf feed image v1\0";

/// The prefixes an agent keeps (from its `[[render]]` entries, its plugins'
/// `read_keys` and `sync`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prefixes(pub Vec<Vec<u8>>);

impl Prefixes {
    pub fn covers(&self, key: &[u8]) -> bool {
        self.0.iter().any(|prefix| key.starts_with(prefix))
    }

    /// Whether every key `other` covers is covered here.
    pub fn covers_all(&self, other: &Prefixes) -> bool {
        other.0.iter().all(|prefix| self.covers(prefix))
    }

    /// A short name for the set (order and duplicates aside): agents with
    /// the same group can relay the feed to each other.
    pub fn group(&self) -> String {
        let mut prefixes = self.0.clone();
        prefixes.sort();
        prefixes.dedup();
        let digest = Sha256::digest(
            postcard::to_stdvec(&prefixes).expect("encoding into memory cannot fail"),
        );
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn texts(&self) -> Vec<String> {
        self.0.iter().map(|p| key_text(p)).collect()
    }
}

/// Where a follower stands: every change up to `revision` is applied and
/// chains to `chain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub revision: i64,
    pub chain: Digest,
}

/// A value a batch carries for an attested put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    pub revision: i64,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// What a peer sends a follower: the changes after `after`, the values of
/// the follower's keys among them, and a voter's checkpoint at the end.
///
/// Sent by: a voter, or any agent relaying what it verified itself.
/// Checked by the receiver: everything, with [`verify_batch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub after: i64,
    pub revisions: Vec<Revision>,
    pub values: Vec<Value>,
    pub checkpoint: SignedCheckpoint,
}

/// A verified batch: the new position and, in order, the changes to
/// subscribed keys (revision, entry, value; the value of a delete is its
/// signed delete, or empty). The batch's revisions and checkpoint are
/// kept too, so this agent can relay them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub position: Position,
    pub changes: Vec<(i64, super::Entry, Vec<u8>)>,
    pub revisions: Vec<Revision>,
    pub checkpoint: SignedCheckpoint,
}

/// Checks `batch` against the follower's position, cluster, pinned voter
/// keys and prefixes.
pub fn verify_batch(
    position: &Position,
    cluster_id: u64,
    voters: &[[u8; 32]],
    prefixes: &Prefixes,
    batch: Batch,
) -> Result<Accepted, FeedError> {
    let checkpoint = *batch.checkpoint.verify(cluster_id, voters)?;
    if batch.after != position.revision {
        return Err(FeedError::NotNext {
            after: batch.after,
            ours: position.revision,
        });
    }
    let mut chain = position.chain;
    let mut last = position.revision;
    for revision in &batch.revisions {
        if revision.revision <= last {
            return Err(FeedError::Misordered {
                revision: revision.revision,
            });
        }
        last = revision.revision;
        chain = link(&chain, revision);
    }
    if last != checkpoint.revision {
        return Err(FeedError::EndMismatch {
            last,
            checkpoint: checkpoint.revision,
        });
    }
    if chain != checkpoint.chain {
        return Err(FeedError::ChainMismatch { revision: last });
    }

    // The chain is a voter's; now the values must be exactly those of the
    // subscribed puts, each with its attested hash.
    let mut values: std::collections::HashMap<(i64, Vec<u8>), Vec<u8>> = Default::default();
    for value in batch.values {
        let slot = (value.revision, value.key);
        if values.insert(slot.clone(), value.value).is_some() {
            return Err(FeedError::UnexpectedValue {
                revision: slot.0,
                key: key_text(&slot.1),
            });
        }
    }
    let mut changes = Vec::new();
    for revision in &batch.revisions {
        for entry in &revision.entries {
            if !prefixes.covers(&entry.key) {
                continue;
            }
            // Puts and signed deletes carry a value; it must be the
            // attested one.
            let value = if entry.has_empty_value() {
                Vec::new()
            } else {
                let slot = (revision.revision, entry.key.clone());
                let value = values
                    .remove(&slot)
                    .ok_or_else(|| FeedError::MissingValue {
                        revision: revision.revision,
                        key: key_text(&entry.key),
                    })?;
                if <[u8; 32]>::from(Sha256::digest(&value)) != entry.value_hash {
                    return Err(FeedError::ValueMismatch {
                        revision: revision.revision,
                        key: key_text(&entry.key),
                    });
                }
                value
            };
            changes.push((revision.revision, entry.clone(), value));
        }
    }
    if let Some(((revision, key), _)) = values.into_iter().next() {
        return Err(FeedError::UnexpectedValue {
            revision,
            key: key_text(&key),
        });
    }
    Ok(Accepted {
        position: Position {
            revision: last,
            chain,
        },
        changes,
        revisions: batch.revisions,
        checkpoint: batch.checkpoint,
    })
}

/// One live key in an image, or the tombstone of a signed delete (its value
/// the signed delete change: the receiver's renderers verify it before a
/// key leaves a file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageKv {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub deleted: bool,
}

/// Every live key under some prefixes at a revision, for a follower too far
/// behind (or new): it replaces what the follower kept under them.
///
/// Sent by: a voter only (it signs the image with its node key); relays may
/// pass one on unchanged. Checked by the receiver with [`verify_image`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub cluster_id: u64,
    pub revision: i64,
    pub chain: Digest,
    pub prefixes: Prefixes,
    pub kvs: Vec<ImageKv>,
    pub signer: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

#[derive(Serialize)]
struct ImageHeader<'a> {
    cluster_id: u64,
    revision: i64,
    chain: &'a Digest,
    prefixes: &'a Prefixes,
    contents: Digest,
}

impl Image {
    /// A voter's image, signed with its node key.
    pub fn sign(
        position: Position,
        cluster_id: u64,
        prefixes: Prefixes,
        kvs: Vec<ImageKv>,
        key: &SigningKey,
    ) -> Image {
        let mut image = Image {
            cluster_id,
            revision: position.revision,
            chain: position.chain,
            prefixes,
            kvs,
            signer: key.verifying_key().to_bytes(),
            signature: Vec::new(),
        };
        image.signature = key.sign(&image.message()).to_bytes().to_vec();
        image
    }

    fn message(&self) -> Vec<u8> {
        let contents: Digest = Sha256::digest(
            postcard::to_stdvec(&self.kvs).expect("encoding into memory cannot fail"),
        )
        .into();
        let header = ImageHeader {
            cluster_id: self.cluster_id,
            revision: self.revision,
            chain: &self.chain,
            prefixes: &self.prefixes,
            contents,
        };
        let mut message = IMAGE_DOMAIN.to_vec();
        message.extend(postcard::to_stdvec(&header).expect("encoding into memory cannot fail"));
        message
    }
}

/// Checks `image` for a follower at `position`: signed by a pinned voter,
/// for this cluster, covering the follower's prefixes, newer than what it
/// has. Returns the position it moves the follower to.
pub fn verify_image(
    position: &Position,
    cluster_id: u64,
    voters: &[[u8; 32]],
    prefixes: &Prefixes,
    image: &Image,
) -> Result<Position, FeedError> {
    if image.cluster_id != cluster_id {
        return Err(FeedError::WrongCluster {
            theirs: image.cluster_id,
            ours: cluster_id,
        });
    }
    check_voter_signature(
        &image.signer,
        &image.signature,
        &image.message(),
        voters,
        FeedError::ImageMismatch,
    )?;
    if image.revision <= position.revision {
        return Err(FeedError::OldImage {
            image: image.revision,
            ours: position.revision,
        });
    }
    if !image.prefixes.covers_all(prefixes) {
        return Err(FeedError::ImagePrefixes {
            theirs: image.prefixes.texts(),
            ours: prefixes.texts(),
        });
    }
    Ok(Position {
        revision: image.revision,
        chain: image.chain,
    })
}
