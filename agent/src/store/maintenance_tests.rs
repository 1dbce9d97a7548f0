//! Checksums, defragmentation and compaction's signed tombstones, on real
//! redb files.

use std::sync::Arc;

use super::*;

fn open(dir: &tempfile::TempDir, name: &str) -> Arc<Store> {
    Arc::new(Store::open(&dir.path().join(name)).unwrap())
}

fn run(store: &Store, command: Command) {
    store
        .apply(Proposal {
            command,
            time_unix_ms: 1_700_000_000_000,
        })
        .unwrap();
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest::new(key, value))
}

#[test]
fn members_that_applied_the_same_log_have_the_same_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (open(&dir, "a.redb"), open(&dir, "b.redb"));
    for store in [&a, &b] {
        for i in 0..20 {
            run(store, put(&format!("/k{}", i % 7), &format!("v{i}")));
        }
        run(store, Command::Compact { revision: 10 });
    }
    let (ha, hb) = (a.hash_kv(0).unwrap(), b.hash_kv(0).unwrap());
    assert_eq!(ha, hb);
    assert_eq!((ha.revision, ha.compact_revision), (20, 10));
    assert_eq!(a.hash_kv(15).unwrap(), b.hash_kv(15).unwrap());
    assert_ne!(a.hash_kv(15).unwrap().hash, ha.hash);
    assert_eq!(a.hash().unwrap(), b.hash().unwrap());
    // Revisions compacted away or not reached are errors, as in etcd.
    assert!(matches!(a.hash_kv(5), Err(StoreError::Compacted { .. })));
    assert!(matches!(
        a.hash_kv(21),
        Err(StoreError::FutureRevision { .. })
    ));

    // A value changed in place (bit rot) changes the checksum at every
    // revision from the changed one on; reads show the changed value.
    let changed = b.inject_corruption().unwrap().unwrap();
    assert_eq!(changed, b"/k5");
    assert_ne!(a.hash_kv(0).unwrap(), b.hash_kv(0).unwrap());
    assert_eq!(a.hash_kv(19).unwrap(), b.hash_kv(19).unwrap());
}

#[test]
fn compaction_keeps_the_tombstones_of_signed_deletes_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "s.redb");
    run(&store, put("/signed", "v"));
    run(&store, put("/plain", "v"));
    run(
        &store,
        Command::SignedDelete {
            key: b"/signed".to_vec(),
            sequence: 1,
            change: b"the signed delete".to_vec(),
        },
    );
    run(
        &store,
        Command::DeleteRange(DeleteRangeRequest {
            range: KeyRange::single("/plain"),
            prev_kv: false,
        }),
    );
    run(&store, put("/later", "v"));
    run(&store, Command::Compact { revision: 5 });
    let signed = store.history(b"/signed").unwrap().entries;
    assert_eq!(signed.len(), 1, "{signed:?}");
    assert!(signed[0].deleted && signed[0].value == b"the signed delete");
    assert!(store.history(b"/plain").unwrap().entries.is_empty());
    // Written again, then compacted past that write: the old proof goes
    // with the rest of the key's history.
    run(&store, put("/signed", "back"));
    run(&store, put("/later", "again"));
    run(&store, Command::Compact { revision: 7 });
    let signed = store.history(b"/signed").unwrap().entries;
    assert_eq!(signed.len(), 1, "{signed:?}");
    assert!(!signed[0].deleted);
}

#[test]
fn defragmenting_gives_space_back_and_keeps_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "d.redb");
    let big = "x".repeat(4096);
    for i in 0..2000 {
        run(&store, put(&format!("/k{}", i % 50), &big));
    }
    let revision = store.revision();
    run(&store, Command::Compact { revision });
    store.sync().unwrap();
    let before = store.hash_kv(0).unwrap();
    // A read leaves its snapshot shared for the next reads: defragmenting
    // must not wait for it.
    store
        .range(&RangeRequest::new(KeyRange::single("/k1")))
        .unwrap();
    let done = store.defragment().unwrap();
    assert!(
        done.bytes_after < done.bytes_before,
        "{} -> {}",
        done.bytes_before,
        done.bytes_after
    );
    assert_eq!(store.hash_kv(0).unwrap(), before);
    let (response, _) = store
        .range(&RangeRequest::new(KeyRange::prefix("/k")))
        .unwrap();
    assert_eq!(response.kvs.len(), 50);
    // Writes go on afterwards.
    run(&store, put("/after", "v"));
    assert_eq!(store.revision(), revision + 1);
}
