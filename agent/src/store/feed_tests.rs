//! The feed on real redb files: voters that apply the same log share one
//! chain, and an edge store that takes only verified batches and images
//! ends up with exactly the voters' keys under its prefixes.

use std::sync::Arc;

use ed25519_dalek::SigningKey;

use super::*;
use crate::feed::{self, Batch, Checkpoint, Image, Prefixes};

const CLUSTER: u64 = 0xfeed;

fn open() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store.redb")).unwrap();
    (dir, Arc::new(store))
}

fn run(stores: &[&Store], command: Command) {
    for store in stores {
        store
            .apply(Proposal {
                command: command.clone(),
                time_unix_ms: 1_700_000_000_000,
            })
            .unwrap();
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest::new(key, value))
}

fn app() -> Prefixes {
    Prefixes(vec![b"/app/".to_vec()])
}

fn live(store: &Store, prefix: &str) -> Vec<KeyValue> {
    store
        .range(&RangeRequest::new(KeyRange::prefix(prefix)))
        .unwrap()
        .0
        .kvs
}

/// What a voter would send an edge at `after`, with its checkpoint.
fn batch_from(voter: &Store, key: &SigningKey, after: i64) -> Batch {
    let slice = voter.feed_since(after, &app(), 10_000).unwrap().unwrap();
    Batch {
        after,
        revisions: slice.revisions,
        values: slice.values,
        checkpoint: Checkpoint {
            cluster_id: CLUSTER,
            revision: slice.position.revision,
            chain: slice.position.chain,
            head: slice.position.revision,
            time_unix: 0,
        }
        .sign(key),
    }
}

/// An edge's step: verify what came, then store it.
fn follow(edge: &Store, batch: Batch, voter_key: &SigningKey) {
    let accepted = feed::verify_batch(
        &edge.feed_position().unwrap(),
        CLUSTER,
        &[voter_key.verifying_key().to_bytes()],
        &app(),
        batch,
    )
    .unwrap();
    edge.apply_feed(&accepted, &[], 0).unwrap();
}

fn mixed_log() -> Vec<Command> {
    vec![
        put("/app/a", "1"),
        put("/other/secret", "not for this edge"),
        Command::Txn(TxnRequest {
            compare: Vec::new(),
            success: vec![
                TxnOp::Put(PutRequest::new("/app/b", "2")),
                TxnOp::Put(PutRequest::new("/app/c", "3")),
            ],
            failure: Vec::new(),
        }),
        put("/app/a", "1 again"),
        Command::DeleteRange(DeleteRangeRequest {
            range: KeyRange::single("/app/c"),
            prev_kv: false,
        }),
        put("/app/empty", ""),
    ]
}

#[test]
fn voters_share_one_chain_and_an_edge_keeps_exactly_its_prefixes() {
    let ((_a, voter), (_b, other_voter), (_e, edge)) = (open(), open(), open());
    let key = SigningKey::from_bytes(&[1; 32]);
    for command in mixed_log() {
        run(&[&voter, &other_voter], command);
    }
    assert_eq!(
        voter.feed_position().unwrap(),
        other_voter.feed_position().unwrap()
    );
    assert_ne!(voter.feed_position().unwrap().chain, feed::GENESIS);

    follow(&edge, batch_from(&voter, &key, 0), &key);
    assert_eq!(live(&edge, "/app/"), live(&voter, "/app/"));
    assert!(live(&edge, "/other/").is_empty());
    assert_eq!(
        edge.feed_position().unwrap(),
        voter.feed_position().unwrap()
    );
    // History at an old revision is the voter's too.
    let mut at_two = RangeRequest::new(KeyRange::prefix("/app/"));
    at_two.revision = 3;
    assert_eq!(
        edge.range(&at_two).unwrap().0.kvs,
        voter.range(&at_two).unwrap().0.kvs
    );

    // More writes, then the edge catches up from where it is.
    run(&[&voter], put("/app/d", "4"));
    run(&[&voter], put("/other/x", "y"));
    let at = edge.revision();
    follow(&edge, batch_from(&voter, &key, at), &key);
    assert_eq!(live(&edge, "/app/"), live(&voter, "/app/"));
    assert_eq!(edge.revision(), voter.revision());

    // The same batch again is a replay: refused by the follower's checks.
    let replay = batch_from(&voter, &key, at);
    assert!(matches!(
        feed::verify_batch(
            &edge.feed_position().unwrap(),
            CLUSTER,
            &[key.verifying_key().to_bytes()],
            &app(),
            replay
        ),
        Err(feed::FeedError::NotNext { .. })
    ));
}

#[test]
fn a_follower_behind_compaction_gets_an_image_then_batches() {
    let ((_a, voter), (_e, edge)) = (open(), open());
    let key = SigningKey::from_bytes(&[1; 32]);
    for command in mixed_log() {
        run(&[&voter], command);
    }
    run(&[&voter], Command::Compact { revision: 5 });
    assert_eq!(
        voter.feed_since(0, &app(), 10_000).unwrap(),
        Err(SliceRefusal::Compacted { compacted: 5 })
    );
    assert_eq!(
        voter.feed_since(7, &app(), 2).unwrap(),
        Err(SliceRefusal::Ahead { current: 6 })
    );
    assert_eq!(
        voter.feed_since(5, &app(), 0).unwrap(),
        Err(SliceRefusal::TooFarBehind { behind: 1 })
    );
    // The edge had a key the image no longer has: it goes.
    edge.apply(Proposal {
        command: put("/app/gone", "x"),
        time_unix_ms: 0,
    })
    .unwrap();
    let stale_position = feed::Position {
        revision: 1,
        chain: edge.feed_position().unwrap().chain,
    };
    let (position, kvs) = voter.feed_image(&app()).unwrap();
    let image = Image::sign(position, CLUSTER, app(), kvs, &key);
    let verified = feed::verify_image(
        &stale_position,
        CLUSTER,
        &[key.verifying_key().to_bytes()],
        &app(),
        &image,
    )
    .unwrap();
    edge.install_feed_image(&verified, &app(), &image.kvs, &[], 0)
        .unwrap();
    assert_eq!(live(&edge, "/app/"), live(&voter, "/app/"));
    // A watcher resuming from before the image sees what it brought, each
    // change at its own revision, and the delete of what it dropped.
    let (events, through) = edge
        .events_between(&KeyRange::prefix("/app/"), 2, edge.revision(), 100)
        .unwrap();
    assert_eq!(through, 6);
    let seen: Vec<(String, i64, bool)> = events
        .iter()
        .map(|e| {
            let key = String::from_utf8(e.kv.key.clone()).unwrap();
            (key, e.kv.mod_revision, e.kind == EventKind::Delete)
        })
        .collect();
    let want = [
        ("/app/b", 3, false),
        ("/app/a", 4, false),
        ("/app/gone", 6, true),
        ("/app/empty", 6, false),
    ];
    assert_eq!(seen, want.map(|(k, r, d)| (k.to_string(), r, d)).to_vec());
    assert_eq!(
        edge.feed_position().unwrap(),
        voter.feed_position().unwrap()
    );

    run(&[&voter], put("/app/after", "image"));
    let at = edge.revision();
    follow(&edge, batch_from(&voter, &key, at), &key);
    assert_eq!(live(&edge, "/app/"), live(&voter, "/app/"));
}

#[test]
fn a_raft_snapshot_carries_the_chain() {
    let ((_a, voter), (_b, restored)) = (open(), open());
    for command in mixed_log() {
        run(&[&voter], command);
    }
    let (_, data) = voter.snapshot_data().unwrap();
    restored
        .restore_snapshot(data.as_slice(), b"consensus")
        .unwrap();
    assert_eq!(
        restored.feed_position().unwrap(),
        voter.feed_position().unwrap()
    );
    // And both go on to the same chain.
    run(&[&voter, &restored], put("/app/z", "26"));
    assert_eq!(
        restored.feed_position().unwrap(),
        voter.feed_position().unwrap()
    );
}

#[test]
fn lease_expiry_and_signed_deletes_are_on_the_chain() {
    let ((_a, voter), (_e, edge)) = (open(), open());
    let key = SigningKey::from_bytes(&[1; 32]);
    run(&[&voter], Command::LeaseGrant { id: 7, ttl: 60 });
    let mut leased = PutRequest::new("/app/leased", "v");
    leased.lease = 7;
    run(&[&voter], Command::Put(leased));
    run(&[&voter], Command::LeaseRevoke { id: 7 });
    follow(&edge, batch_from(&voter, &key, 0), &key);
    assert!(live(&edge, "/app/").is_empty());
    assert_eq!(
        edge.feed_position().unwrap(),
        voter.feed_position().unwrap()
    );
}

#[test]
fn an_image_carries_the_signed_deletes_of_keys_it_drops() {
    let ((_a, voter), (_e, edge)) = (open(), open());
    let key = SigningKey::from_bytes(&[1; 32]);
    for name in ["/app/kept", "/app/signed", "/app/unsigned"] {
        run(&[&voter, &edge], put(name, "v"));
    }
    run(
        &[&voter],
        Command::SignedDelete {
            key: b"/app/signed".to_vec(),
            sequence: 1,
            change: b"the signed delete".to_vec(),
        },
    );
    run(
        &[&voter],
        Command::DeleteRange(DeleteRangeRequest {
            range: KeyRange::single("/app/unsigned"),
            prev_kv: false,
        }),
    );
    let (position, kvs) = voter.feed_image(&app()).unwrap();
    let deleted: Vec<&[u8]> = kvs
        .iter()
        .filter(|kv| kv.deleted)
        .map(|kv| kv.key.as_slice())
        .collect();
    assert_eq!(deleted, [b"/app/signed".as_slice()]);
    let stale = feed::Position {
        revision: 1,
        chain: edge.feed_position().unwrap().chain,
    };
    let image = Image::sign(position, CLUSTER, app(), kvs, &key);
    let verified = feed::verify_image(
        &stale,
        CLUSTER,
        &[key.verifying_key().to_bytes()],
        &app(),
        &image,
    )
    .unwrap();
    edge.install_feed_image(&verified, &app(), &image.kvs, &[], 0)
        .unwrap();
    assert_eq!(live(&edge, "/app/"), live(&voter, "/app/"));
    let newest = |name: &str| {
        edge.history(name.as_bytes())
            .unwrap()
            .entries
            .pop()
            .unwrap()
    };
    let signed = newest("/app/signed");
    assert!(signed.deleted);
    assert_eq!(signed.value, b"the signed delete");
    let unsigned = newest("/app/unsigned");
    assert!(unsigned.deleted && unsigned.value.is_empty());
}
