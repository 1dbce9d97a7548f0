//! A follower against honest and hostile relays: every way a relay can lie
//! about a batch is refused, and the honest batch is then accepted.

use ed25519_dalek::SigningKey;

use super::follow::ImageKv;
use super::*;

const CLUSTER: u64 = 0xc1;

/// A voter's view: the committed revisions, their values and chain.
struct Voter {
    key: SigningKey,
    log: Vec<(Revision, Vec<Value>)>,
    chain: Vec<Digest>,
}

impl Voter {
    fn new(seed: u8) -> Self {
        Voter {
            key: SigningKey::from_bytes(&[seed; 32]),
            log: Vec::new(),
            chain: vec![GENESIS],
        }
    }

    fn pinned(&self) -> Vec<[u8; 32]> {
        vec![self.key.verifying_key().to_bytes()]
    }

    fn put(&mut self, key: &str, value: &str) {
        let revision = self.log.len() as i64 + 1;
        let entry = Entry::put(key.as_bytes(), value.as_bytes(), revision, 1, 0);
        self.commit(
            vec![entry],
            vec![Value {
                revision,
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
            }],
        );
    }

    fn delete(&mut self, key: &str) {
        self.commit(vec![Entry::delete(key.as_bytes())], Vec::new());
    }

    /// A delete that keeps a signed note as its tombstone's value.
    fn signed_delete(&mut self, key: &str, note: &str) {
        let revision = self.log.len() as i64 + 1;
        let entry = Entry::new(key.as_bytes(), Kind::Delete, note.as_bytes(), 0, 0, 0);
        let value = Value {
            revision,
            key: key.as_bytes().to_vec(),
            value: note.as_bytes().to_vec(),
        };
        self.commit(vec![entry], vec![value]);
    }

    fn commit(&mut self, entries: Vec<Entry>, values: Vec<Value>) {
        let revision = Revision {
            revision: self.log.len() as i64 + 1,
            entries,
        };
        let next = chain::link(self.chain.last().unwrap(), &revision);
        self.chain.push(next);
        self.log.push((revision, values));
    }

    fn position(&self, revision: i64) -> Position {
        Position {
            revision,
            chain: self.chain[revision as usize],
        }
    }

    fn checkpoint(&self, revision: i64) -> SignedCheckpoint {
        Checkpoint {
            cluster_id: CLUSTER,
            revision,
            chain: self.chain[revision as usize],
            head: self.log.len() as i64,
            time_unix: 0,
        }
        .sign(&self.key)
    }

    /// The honest batch of everything after `after`, with the values under
    /// `prefixes`.
    fn batch(&self, after: i64, prefixes: &Prefixes) -> Batch {
        let slice = &self.log[after as usize..];
        Batch {
            after,
            revisions: slice.iter().map(|(r, _)| r.clone()).collect(),
            values: slice
                .iter()
                .flat_map(|(_, v)| v.iter().filter(|v| prefixes.covers(&v.key)).cloned())
                .collect(),
            checkpoint: self.checkpoint(self.log.len() as i64),
        }
    }
}

fn app() -> Prefixes {
    Prefixes(vec![b"/app/".to_vec()])
}

fn fleet() -> Voter {
    let mut voter = Voter::new(1);
    voter.put("/app/a", "1");
    voter.put("/other/x", "secret-of-another-group");
    voter.put("/app/b", "2");
    voter.delete("/app/a");
    voter
}

fn verify(voter: &Voter, at: i64, batch: Batch) -> Result<Accepted, FeedError> {
    verify_batch(&voter.position(at), CLUSTER, &voter.pinned(), &app(), batch)
}

#[test]
fn an_honest_batch_gives_the_subscribed_changes_in_order() {
    let voter = fleet();
    let accepted = verify(&voter, 0, voter.batch(0, &app())).unwrap();
    assert_eq!(accepted.position, voter.position(4));
    let seen: Vec<(i64, &[u8], Kind, &[u8])> = accepted
        .changes
        .iter()
        .map(|(rev, entry, value)| (*rev, &entry.key[..], entry.kind, &value[..]))
        .collect();
    assert_eq!(
        seen,
        [
            (1, &b"/app/a"[..], Kind::Put, &b"1"[..]),
            (3, b"/app/b", Kind::Put, b"2"),
            (4, b"/app/a", Kind::Delete, b""),
        ]
    );
    // The other group's value never reached this follower.
    assert!(!voter
        .batch(0, &app())
        .values
        .iter()
        .any(|v| v.key.starts_with(b"/other/")));
    // Caught up from the middle, and a batch with nothing new (a freshness
    // beat) keeps the position.
    assert_eq!(
        verify(&voter, 2, voter.batch(2, &app())).unwrap().position,
        voter.position(4)
    );
    let beat = verify(&voter, 4, voter.batch(4, &app())).unwrap();
    assert_eq!((beat.position, beat.changes.len()), (voter.position(4), 0));
}

#[test]
fn a_forged_value_is_refused() {
    let voter = fleet();
    let mut batch = voter.batch(0, &app());
    batch.values[0].value = b"evil".to_vec();
    assert!(matches!(
        verify(&voter, 0, batch),
        Err(FeedError::ValueMismatch { revision: 1, .. })
    ));
    // Forging the attested hash as well breaks the chain.
    let mut batch = voter.batch(0, &app());
    batch.values[0].value = b"evil".to_vec();
    batch.revisions[0].entries[0] = Entry::put(b"/app/a", b"evil", 1, 1, 0);
    assert!(matches!(
        verify(&voter, 0, batch),
        Err(FeedError::ChainMismatch { revision: 4 })
    ));
}

#[test]
fn dropped_changes_and_values_are_refused() {
    let voter = fleet();
    // Dropping a whole revision (the delete) breaks the chain.
    let mut batch = voter.batch(0, &app());
    batch.revisions.remove(3);
    batch.checkpoint = voter.checkpoint(4);
    assert!(matches!(
        verify(&voter, 0, batch),
        Err(FeedError::EndMismatch {
            last: 3,
            checkpoint: 4
        })
    ));
    let mut batch = voter.batch(0, &app());
    batch.revisions.remove(1);
    assert!(matches!(
        verify(&voter, 0, batch),
        Err(FeedError::ChainMismatch { .. })
    ));
    // Keeping the change but withholding its value.
    let mut batch = voter.batch(0, &app());
    batch.values.remove(1);
    assert!(matches!(
        verify(&voter, 0, batch),
        Err(FeedError::MissingValue { revision: 3, .. })
    ));
    // A delete cannot be turned into nothing either (deletes are attested).
    let mut batch = voter.batch(0, &app());
    batch.revisions[3].entries.clear();
    assert!(matches!(
        verify(&voter, 0, batch),
        Err(FeedError::ChainMismatch { .. })
    ));
}

#[test]
fn reordered_and_replayed_batches_are_refused() {
    let voter = fleet();
    let mut batch = voter.batch(0, &app());
    batch.revisions.swap(0, 2);
    assert!(matches!(
        verify(&voter, 0, batch),
        Err(FeedError::Misordered { .. })
    ));
    // Swapping the contents but keeping the revision numbers.
    let mut batch = voter.batch(0, &app());
    let (first, third) = (
        batch.revisions[0].entries.clone(),
        batch.revisions[2].entries.clone(),
    );
    batch.revisions[0].entries = third;
    batch.revisions[2].entries = first;
    assert!(verify(&voter, 0, batch).is_err());
    // An old batch replayed to a follower that is past it.
    let old = voter.batch(0, &app());
    assert!(matches!(
        verify(&voter, 4, old),
        Err(FeedError::NotNext { after: 0, ours: 4 })
    ));
    // An old batch relabelled as following the follower's revision.
    let mut old = voter.batch(0, &app());
    old.after = 4;
    assert!(matches!(
        verify(&voter, 4, old),
        Err(FeedError::Misordered { revision: 1 })
    ));
}

#[test]
fn checkpoints_from_non_voters_and_other_clusters_are_refused() {
    let voter = fleet();
    // An edge's node key is trusted on the network, but it is not a voter.
    let mut edge = Voter::new(9);
    edge.log = voter.log.clone();
    edge.chain = voter.chain.clone();
    assert!(matches!(
        verify(&voter, 0, edge.batch(0, &app())),
        Err(FeedError::UnknownSigner(_))
    ));
    let mut batch = voter.batch(0, &app());
    batch.checkpoint = Checkpoint {
        cluster_id: CLUSTER + 1,
        ..batch.checkpoint.checkpoint
    }
    .sign(&voter.key);
    assert!(matches!(
        verify(&voter, 0, batch),
        Err(FeedError::WrongCluster { .. })
    ));
    // A relay that forges the whole history must also forge a signature.
    let mut liar = Voter::new(1);
    liar.put("/app/a", "evil");
    let mut batch = liar.batch(0, &app());
    batch.checkpoint.signer = voter.pinned()[0];
    batch.checkpoint.signature[0] ^= 1;
    assert!(matches!(
        verify(&voter, 0, batch),
        Err(FeedError::BadSignature)
    ));
}

#[test]
fn signed_deletes_carry_their_attested_note() {
    let mut voter = fleet();
    voter.signed_delete("/app/b", "signed-delete");
    let accepted = verify(&voter, 4, voter.batch(4, &app())).unwrap();
    assert_eq!(accepted.changes[0].2, b"signed-delete");
    let mut batch = voter.batch(4, &app());
    batch.values.clear();
    assert!(matches!(
        verify(&voter, 4, batch),
        Err(FeedError::MissingValue { revision: 5, .. })
    ));
}

#[test]
fn values_no_change_calls_for_are_refused() {
    let voter = fleet();
    let mut batch = voter.batch(0, &app());
    batch.values.push(Value {
        revision: 4,
        key: b"/app/a".to_vec(),
        value: b"resurrected".to_vec(),
    });
    assert!(matches!(
        verify(&voter, 0, batch),
        Err(FeedError::UnexpectedValue { revision: 4, .. })
    ));
    let mut batch = voter.batch(0, &app());
    let twice = batch.values[0].clone();
    batch.values.push(twice);
    assert!(matches!(
        verify(&voter, 0, batch),
        Err(FeedError::UnexpectedValue { revision: 1, .. })
    ));
}

fn image_of(voter: &Voter, revision: i64, prefixes: Prefixes) -> Image {
    let kvs = vec![ImageKv {
        key: b"/app/b".to_vec(),
        value: b"2".to_vec(),
        create_revision: 3,
        mod_revision: 3,
        version: 1,
        lease: 0,
        deleted: false,
    }];
    Image::sign(voter.position(revision), CLUSTER, prefixes, kvs, &voter.key)
}

#[test]
fn images_must_be_signed_newer_and_cover_the_subscription() {
    let voter = fleet();
    let check = |at: i64, image: &Image| {
        verify_image(&voter.position(at), CLUSTER, &voter.pinned(), &app(), image)
    };
    let image = image_of(&voter, 4, app());
    assert_eq!(check(1, &image).unwrap(), voter.position(4));
    // Batches then follow on from the image's position.
    let mut more = fleet();
    more.put("/app/c", "3");
    assert!(verify(&more, 4, more.batch(4, &app())).is_ok());
    // An old image cannot roll a follower back.
    assert!(matches!(
        check(4, &image),
        Err(FeedError::OldImage { image: 4, ours: 4 })
    ));
    let mut tampered = image.clone();
    tampered.kvs[0].value = b"evil".to_vec();
    assert!(matches!(check(1, &tampered), Err(FeedError::ImageMismatch)));
    // A relay can neither pass a key off as a signed delete's tombstone
    // nor leave a tombstone (or a key) out: the signature covers both.
    let mut marked = image.clone();
    marked.kvs[0].deleted = true;
    assert!(matches!(check(1, &marked), Err(FeedError::ImageMismatch)));
    let mut dropped = image.clone();
    dropped.kvs.clear();
    assert!(matches!(check(1, &dropped), Err(FeedError::ImageMismatch)));
    let narrow = image_of(&voter, 4, Prefixes(vec![b"/app/b".to_vec()]));
    assert!(matches!(
        check(1, &narrow),
        Err(FeedError::ImagePrefixes { .. })
    ));
    let wide = image_of(&voter, 4, Prefixes(vec![b"/".to_vec()]));
    assert!(check(1, &wide).is_ok());
    let mut foreign = image;
    foreign.signer = [3; 32];
    assert!(matches!(
        check(1, &foreign),
        Err(FeedError::UnknownSigner(_))
    ));
}
