//! The change chain: what every voter derives from the committed log, and
//! what a voter signs so that an edge can check a relayed change without
//! trusting the relay.
//!
//! Every revision's changes are summarised as [`Entry`]s (key, kind, the
//! SHA-256 of the value, create revision, version, lease), and the chain
//! links them: `chain(r) = SHA-256(DOMAIN || chain(prev) || postcard(r's
//! entries))`. Applying the same committed log gives every voter the same
//! chain, so a [`Checkpoint`] (cluster id, revision, chain value) signed by
//! any voter's node key vouches for every change up to that revision, in
//! order. An edge that holds a verified chain value and receives the entries
//! that follow it recomputes the chain; a relay that forged, dropped,
//! reordered or replayed a change cannot make the result match a voter's
//! signature.
//!
//! The chain covers every key, so an edge also learns which changes it does
//! *not* need: key names are visible to every edge, values only to edges
//! subscribed to them (and secret values stay encrypted).

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::FeedError;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// Domain separation: these hashes and signatures mean nothing elsewhere.
const CHAIN_DOMAIN: &[u8] = b"edgeconf feed chain v1\0";
const CHECKPOINT_DOMAIN: &[u8] = b"edgeconf feed checkpoint v1\0";

/// The chain value before the first revision.
pub const GENESIS: Digest = [0; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Put,
    Delete,
}

/// One key's change at a revision, as voters attest it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub kind: Kind,
    /// SHA-256 of the stored value: of the signed envelope for signed
    /// values, of the signed delete (or nothing) for a delete.
    pub value_hash: Digest,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl Entry {
    /// The entry of a row the store writes: a put, or a delete's tombstone
    /// (whose value, when not empty, is the signed delete).
    pub fn new(
        key: &[u8],
        kind: Kind,
        value: &[u8],
        create_revision: i64,
        version: i64,
        lease: i64,
    ) -> Self {
        Entry {
            key: key.to_vec(),
            kind,
            value_hash: Sha256::digest(value).into(),
            create_revision,
            version,
            lease,
        }
    }

    pub fn put(key: &[u8], value: &[u8], create_revision: i64, version: i64, lease: i64) -> Self {
        Self::new(key, Kind::Put, value, create_revision, version, lease)
    }

    pub fn delete(key: &[u8]) -> Self {
        Self::new(key, Kind::Delete, b"", 0, 0, 0)
    }

    /// Whether the entry's value is empty, so a batch need not carry it.
    pub fn has_empty_value(&self) -> bool {
        self.value_hash == EMPTY_HASH
    }
}

/// SHA-256 of the empty string.
const EMPTY_HASH: Digest = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Everything that changed at one revision (a put, a delete range, a txn).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub revision: i64,
    pub entries: Vec<Entry>,
}

/// The chain value after `revision`, given the value before it.
pub fn link(previous: &Digest, revision: &Revision) -> Digest {
    let mut hasher = Sha256::new();
    hasher.update(CHAIN_DOMAIN);
    hasher.update(previous);
    hasher.update(postcard::to_stdvec(revision).expect("encoding into memory cannot fail"));
    hasher.finalize().into()
}

/// "The cluster's committed changes up to `revision` chain to `chain`, and
/// when I signed this my newest revision was `head`."
///
/// `head` (never below `revision`) lets a follower that takes a long
/// catch-up in batches report how far behind it is; a relay passes on the
/// voter's claim as signed and cannot raise or lower it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub cluster_id: u64,
    pub revision: i64,
    pub chain: Digest,
    pub head: i64,
    /// The voter's clock when it signed (Unix seconds): the signed
    /// timestamp that tells a follower how fresh its view is. A relay can
    /// withhold newer checkpoints but cannot make an old one look new, so
    /// an edge cut off from the voters (or fed by a lying relay) sees its
    /// newest timestamp age and reports itself stale.
    pub time_unix: u64,
}

/// A checkpoint signed by a voter's node key.
///
/// Sent by: voters (who make them) and any relay (who passes them on).
/// Checked by the receiver: the signer is a voter key it pins, the
/// signature is valid, and the cluster id is its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub signer: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Checkpoint {
    fn message(&self) -> Vec<u8> {
        let mut message = CHECKPOINT_DOMAIN.to_vec();
        message.extend(postcard::to_stdvec(self).expect("encoding into memory cannot fail"));
        message
    }

    pub fn sign(self, key: &SigningKey) -> SignedCheckpoint {
        SignedCheckpoint {
            checkpoint: self,
            signer: key.verifying_key().to_bytes(),
            signature: key.sign(&self.message()).to_bytes().to_vec(),
        }
    }
}

impl SignedCheckpoint {
    /// Checks the signature and signer against the voters this agent pins,
    /// and the cluster against its own.
    pub fn verify(&self, cluster_id: u64, voters: &[[u8; 32]]) -> Result<&Checkpoint, FeedError> {
        if self.checkpoint.cluster_id != cluster_id {
            return Err(FeedError::WrongCluster {
                theirs: self.checkpoint.cluster_id,
                ours: cluster_id,
            });
        }
        check_voter_signature(
            &self.signer,
            &self.signature,
            &self.checkpoint.message(),
            voters,
            FeedError::BadSignature,
        )?;
        if self.checkpoint.head < self.checkpoint.revision {
            return Err(FeedError::HeadBehind {
                head: self.checkpoint.head,
                revision: self.checkpoint.revision,
            });
        }
        Ok(&self.checkpoint)
    }
}

/// Checks that `signer` is a pinned voter and signed `message`; a signature
/// that does not verify is reported as `mismatch`.
pub(super) fn check_voter_signature(
    signer: &[u8; 32],
    signature: &[u8],
    message: &[u8],
    voters: &[[u8; 32]],
    mismatch: FeedError,
) -> Result<(), FeedError> {
    if !voters.contains(signer) {
        return Err(FeedError::UnknownSigner(
            crate::signing::keys::format_public_key(signer),
        ));
    }
    let key = VerifyingKey::from_bytes(signer).map_err(|_| FeedError::BadSignature)?;
    let signature = Signature::from_slice(signature).map_err(|_| FeedError::BadSignature)?;
    key.verify(message, &signature).map_err(|_| mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn the_empty_hash_is_the_hash_of_nothing() {
        assert_eq!(<[u8; 32]>::from(Sha256::digest(b"")), EMPTY_HASH);
        assert!(Entry::delete(b"/a").has_empty_value());
        assert!(!Entry::put(b"/a", b"1", 1, 1, 0).has_empty_value());
    }

    #[test]
    fn the_chain_depends_on_every_entry_and_their_order() {
        let a = Revision {
            revision: 1,
            entries: vec![Entry::put(b"/a", b"1", 1, 1, 0)],
        };
        let b = Revision {
            revision: 2,
            entries: vec![Entry::delete(b"/a")],
        };
        let ab = link(&link(&GENESIS, &a), &b);
        let ba = link(&link(&GENESIS, &b), &a);
        assert_ne!(ab, ba);
        let mut forged = a.clone();
        forged.entries[0].value_hash[0] ^= 1;
        assert_ne!(link(&GENESIS, &a), link(&GENESIS, &forged));
        // Deterministic: every voter computes the same value.
        assert_eq!(ab, link(&link(&GENESIS, &a.clone()), &b.clone()));
    }

    #[test]
    fn checkpoints_verify_only_for_pinned_voters_of_this_cluster() {
        let voter = key(1);
        let pinned = [voter.verifying_key().to_bytes()];
        let checkpoint = Checkpoint {
            cluster_id: 7,
            revision: 3,
            chain: [9; 32],
            head: 5,
            time_unix: 0,
        };
        let signed = checkpoint.sign(&voter);
        assert_eq!(signed.verify(7, &pinned).unwrap(), &checkpoint);
        assert!(matches!(
            signed.verify(8, &pinned),
            Err(FeedError::WrongCluster { theirs: 7, ours: 8 })
        ));
        // A trusted key that is not a voter's (an edge's, say) is refused.
        let stranger = checkpoint.sign(&key(2));
        assert!(matches!(
            stranger.verify(7, &pinned),
            Err(FeedError::UnknownSigner(_))
        ));
        // A voter's signature moved onto another checkpoint is refused.
        let mut moved = signed.clone();
        moved.checkpoint.revision = 4;
        assert!(matches!(
            moved.verify(7, &pinned),
            Err(FeedError::BadSignature)
        ));
        let mut truncated = signed;
        truncated.signature.truncate(10);
        assert!(matches!(
            truncated.verify(7, &pinned),
            Err(FeedError::BadSignature)
        ));
        // A relay cannot lower the voter's head claim, and a voter that
        // claims a head below its own checkpoint is refused.
        let mut lowered = checkpoint.sign(&voter);
        lowered.checkpoint.head = 3;
        assert!(matches!(
            lowered.verify(7, &pinned),
            Err(FeedError::BadSignature)
        ));
        // Nor make an old checkpoint look fresh.
        let mut refreshed = checkpoint.sign(&voter);
        refreshed.checkpoint.time_unix += 3600;
        assert!(matches!(
            refreshed.verify(7, &pinned),
            Err(FeedError::BadSignature)
        ));
        let behind = Checkpoint {
            head: 2,
            ..checkpoint
        }
        .sign(&voter);
        assert!(matches!(
            behind.verify(7, &pinned),
            Err(FeedError::HeadBehind {
                head: 2,
                revision: 3
            })
        ));
    }
}
