//! Behaviour of the MVCC store on real redb files.

use std::sync::Arc;
use std::time::Duration;

use super::*;

fn open() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store.redb")).unwrap();
    (dir, Arc::new(store))
}

fn run(store: &Store, command: Command) -> Result<Applied> {
    store.apply(Proposal {
        command,
        time_unix_ms: 1_700_000_000_000,
    })
}

fn put(store: &Store, key: &str, value: &str) -> i64 {
    run(store, Command::Put(PutRequest::new(key, value)))
        .unwrap()
        .revision
}

fn get_at(store: &Store, key: &str, revision: i64) -> Option<KeyValue> {
    let mut req = RangeRequest::new(KeyRange::single(key));
    req.revision = revision;
    store.range(&req).unwrap().0.kvs.pop()
}

fn keys(resp: &RangeResponse) -> Vec<String> {
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn prefix(store: &Store, p: &str) -> RangeResponse {
    store
        .range(&RangeRequest::new(KeyRange::prefix(p)))
        .unwrap()
        .0
}

#[test]
fn reads_between_commits_share_one_snapshot_and_a_commit_outdates_it() {
    let (_dir, store) = open();
    put(&store, "a", "1");
    let first = store.views.current(&store.db()).unwrap();
    let again = store.views.current(&store.db()).unwrap();
    assert!(Arc::ptr_eq(&first, &again), "no commit between: one view");
    put(&store, "a", "2");
    let after = store.views.current(&store.db()).unwrap();
    assert!(!Arc::ptr_eq(&first, &after), "a commit outdates the view");
    assert_eq!((first.current, after.current), (1, 2));
    assert_eq!(get_at(&store, "a", 0).unwrap().value, b"2");
    // A view held by a reader across a commit still reads its snapshot.
    let held = store.views.current(&store.db()).unwrap();
    put(&store, "a", "3");
    let (response, current) = range_in(&held, &RangeRequest::new(KeyRange::single("a"))).unwrap();
    assert_eq!((response.kvs[0].value.as_slice(), current), (&b"2"[..], 2));
    assert_eq!(get_at(&store, "a", 0).unwrap().value, b"3");
}

#[test]
fn a_store_closed_while_its_shared_view_is_alive_reopens_whole_without_repair() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = Store::open(&path).unwrap();
    put(&store, "a", "1");
    // Applied without a sync, as a voter applies: the close makes it durable.
    let proposal = Proposal {
        command: Command::Put(PutRequest::new("b", "2")),
        time_unix_ms: 1_700_000_000_000,
    };
    store.apply_batch(&[proposal], 2, false).unwrap();
    assert_eq!(get_at(&store, "b", 0).unwrap().value, b"2");
    drop(store);
    let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = repaired.clone();
    let db = redb::Builder::new()
        .set_repair_callback(move |_| flag.store(true, std::sync::atomic::Ordering::SeqCst))
        .create(&path)
        .unwrap();
    assert!(!repaired.load(std::sync::atomic::Ordering::SeqCst));
    drop(db);
    let store = Store::open(&path).unwrap();
    assert_eq!(get_at(&store, "b", 0).unwrap().value, b"2");
}

#[test]
fn every_write_makes_a_new_revision_and_key_versions_count_up() {
    let (_dir, store) = open();
    assert_eq!(put(&store, "a", "1"), 1);
    assert_eq!(put(&store, "b", "1"), 2);
    assert_eq!(put(&store, "a", "2"), 3);
    let a = get_at(&store, "a", 0).unwrap();
    assert_eq!(
        (
            a.create_revision,
            a.mod_revision,
            a.version,
            a.value.as_slice()
        ),
        (1, 3, 2, &b"2"[..])
    );
}

#[test]
fn old_revisions_stay_readable_and_deletes_reset_the_version() {
    let (_dir, store) = open();
    put(&store, "k", "v1");
    put(&store, "k", "v2");
    let del = run(
        &store,
        Command::DeleteRange(DeleteRangeRequest {
            range: KeyRange::single("k"),
            prev_kv: true,
        }),
    )
    .unwrap();
    assert_eq!(del.revision, 3);
    match del.response {
        CommandResponse::DeleteRange(resp) => {
            assert_eq!(resp.deleted, 1);
            assert_eq!(resp.prev_kvs[0].value, b"v2");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(get_at(&store, "k", 1).unwrap().value, b"v1");
    assert_eq!(get_at(&store, "k", 2).unwrap().value, b"v2");
    assert!(get_at(&store, "k", 3).is_none());
    put(&store, "k", "v3");
    let k = get_at(&store, "k", 0).unwrap();
    assert_eq!((k.create_revision, k.version), (4, 1));
}

#[test]
fn deleting_nothing_does_not_bump_the_revision() {
    let (_dir, store) = open();
    put(&store, "a", "1");
    let del = run(
        &store,
        Command::DeleteRange(DeleteRangeRequest {
            range: KeyRange::single("missing"),
            prev_kv: false,
        }),
    )
    .unwrap();
    assert_eq!(del.revision, 1);
}

#[test]
fn ranges_by_prefix_interval_limit_sort_and_count() {
    let (_dir, store) = open();
    for (k, v) in [
        ("/app/b", "2"),
        ("/app/a", "3"),
        ("/app/c", "1"),
        ("/apq", "x"),
        ("/z", "y"),
    ] {
        put(&store, k, v);
    }
    assert_eq!(
        keys(&prefix(&store, "/app/")),
        ["/app/a", "/app/b", "/app/c"]
    );

    let interval = KeyRange::from_etcd(b"/app/b".to_vec(), b"/apq".to_vec());
    let resp = store.range(&RangeRequest::new(interval)).unwrap().0;
    assert_eq!(keys(&resp), ["/app/b", "/app/c"]);

    let everything = KeyRange::from_etcd(vec![0], vec![0]);
    assert_eq!(
        store.range(&RangeRequest::new(everything)).unwrap().0.count,
        5
    );

    let mut limited = RangeRequest::new(KeyRange::prefix("/app/"));
    limited.limit = 2;
    let resp = store.range(&limited).unwrap().0;
    assert_eq!(
        (keys(&resp), resp.more, resp.count),
        (vec!["/app/a".into(), "/app/b".into()], true, 3)
    );

    let mut by_value = RangeRequest::new(KeyRange::prefix("/app/"));
    by_value.sort_target = SortTarget::Value;
    by_value.sort_order = SortOrder::Descend;
    by_value.limit = 1;
    assert_eq!(keys(&store.range(&by_value).unwrap().0), ["/app/a"]);

    let mut keys_only = RangeRequest::new(KeyRange::prefix("/app/"));
    keys_only.keys_only = true;
    assert!(store
        .range(&keys_only)
        .unwrap()
        .0
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty()));

    let mut count_only = RangeRequest::new(KeyRange::prefix("/app/"));
    count_only.count_only = true;
    let resp = store.range(&count_only).unwrap().0;
    assert_eq!((resp.kvs.len(), resp.count, resp.more), (0, 3, false));
}

#[test]
fn a_prefix_of_ff_bytes_has_no_upper_end() {
    assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
    assert_eq!(prefix_end(b"\xff\xff"), None);
    assert!(KeyRange::prefix(&b"\xff"[..]).contains(b"\xff\xff\x01"));
}

#[test]
fn txn_compares_choose_the_branch_and_reads_see_earlier_writes() {
    let (_dir, store) = open();
    put(&store, "k", "v1");
    let txn = |target, result| {
        Command::Txn(TxnRequest {
            compare: vec![Compare {
                range: KeyRange::single("k"),
                result,
                target,
            }],
            success: vec![
                TxnOp::Put(PutRequest::new("k", "won")),
                TxnOp::Range(RangeRequest::new(KeyRange::single("k"))),
            ],
            failure: vec![TxnOp::Range(RangeRequest::new(KeyRange::single("k")))],
        })
    };
    let cases = [
        (
            CompareTarget::Value(b"v1".to_vec()),
            CompareResult::Equal,
            true,
        ),
        (
            CompareTarget::Value(b"v0".to_vec()),
            CompareResult::Greater,
            true,
        ),
        (CompareTarget::Version(100), CompareResult::Less, true),
        (CompareTarget::Create(1), CompareResult::NotEqual, false),
        (CompareTarget::Mod(999), CompareResult::Equal, false),
        (CompareTarget::Lease(0), CompareResult::Equal, true),
    ];
    for (target, result, expect) in cases {
        let before = store.revision();
        let applied = run(&store, txn(target.clone(), result)).unwrap();
        let CommandResponse::Txn(resp) = applied.response else {
            panic!("not a txn response")
        };
        assert_eq!(resp.succeeded, expect, "{target:?} {result:?}");
        if expect {
            assert_eq!(applied.revision, before + 1);
            let TxnOpResponse::Range(read) = &resp.responses[1] else {
                panic!("not a range")
            };
            assert_eq!(read.kvs[0].value, b"won");
            put(&store, "k", "v1");
        } else {
            assert_eq!(
                applied.revision, before,
                "a read-only branch writes nothing"
            );
        }
    }
}

#[test]
fn txn_value_compare_on_a_missing_key_fails_but_version_zero_matches() {
    let (_dir, store) = open();
    let create_if_absent = |target| {
        Command::Txn(TxnRequest {
            compare: vec![Compare {
                range: KeyRange::single("new"),
                result: CompareResult::Equal,
                target,
            }],
            success: vec![TxnOp::Put(PutRequest::new("new", "x"))],
            failure: vec![],
        })
    };
    let value = run(&store, create_if_absent(CompareTarget::Value(vec![]))).unwrap();
    assert!(matches!(
        value.response,
        CommandResponse::Txn(TxnResponse {
            succeeded: false,
            ..
        })
    ));
    let version = run(&store, create_if_absent(CompareTarget::Version(0))).unwrap();
    assert!(matches!(
        version.response,
        CommandResponse::Txn(TxnResponse {
            succeeded: true,
            ..
        })
    ));
}

#[test]
fn a_failing_txn_op_leaves_the_store_unchanged() {
    let (_dir, store) = open();
    put(&store, "a", "1");
    let bad = Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![
            TxnOp::Put(PutRequest::new("a", "2")),
            TxnOp::Put(PutRequest {
                lease: 42,
                ..PutRequest::new("b", "1")
            }),
        ],
        failure: vec![],
    });
    assert!(matches!(
        run(&store, bad),
        Err(StoreError::LeaseNotFound(42))
    ));
    let dup = Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![
            TxnOp::Put(PutRequest::new("a", "2")),
            TxnOp::Put(PutRequest::new("a", "3")),
        ],
        failure: vec![],
    });
    assert!(matches!(run(&store, dup), Err(StoreError::DuplicateKey(_))));
    assert_eq!(store.revision(), 1);
    assert_eq!(get_at(&store, "a", 0).unwrap().value, b"1");
}

#[test]
fn compaction_keeps_the_state_at_its_revision_and_refuses_older_reads() {
    let (_dir, store) = open();
    put(&store, "a", "1"); // 1
    put(&store, "a", "2"); // 2
    put(&store, "b", "1"); // 3
    run(
        &store,
        Command::DeleteRange(DeleteRangeRequest {
            range: KeyRange::single("b"),
            prev_kv: false,
        }),
    )
    .unwrap(); // 4
    put(&store, "a", "3"); // 5
    run(&store, Command::Compact { revision: 4 }).unwrap();

    assert_eq!(get_at(&store, "a", 4).unwrap().value, b"2");
    assert_eq!(get_at(&store, "a", 0).unwrap().value, b"3");
    let mut old = RangeRequest::new(KeyRange::single("a"));
    old.revision = 3;
    assert!(matches!(
        store.range(&old),
        Err(StoreError::Compacted {
            compact_revision: 4
        })
    ));
    let history: Vec<i64> = store
        .history(b"a")
        .unwrap()
        .entries
        .iter()
        .map(|e| e.revision)
        .collect();
    assert_eq!(history, [2, 5]);
    // The delete at revision 4 is the compaction point: it stays replayable.
    assert_eq!(store.history(b"b").unwrap().entries.len(), 1);
    assert!(matches!(
        run(&store, Command::Compact { revision: 3 }),
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        run(&store, Command::Compact { revision: 99 }),
        Err(StoreError::FutureRevision { current: 5 })
    ));
}

#[test]
fn revoking_a_lease_deletes_its_keys_in_one_revision() {
    let (_dir, store) = open();
    run(&store, Command::LeaseGrant { id: 7, ttl: 10 }).unwrap();
    for key in ["x", "y"] {
        run(
            &store,
            Command::Put(PutRequest {
                lease: 7,
                ..PutRequest::new(key, "v")
            }),
        )
        .unwrap();
    }
    put(&store, "z", "unleased");
    let lease = store.lease(7).unwrap().unwrap();
    assert_eq!((lease.ttl, lease.keys.len()), (10, 2));
    let revoked = run(&store, Command::LeaseRevoke { id: 7 }).unwrap();
    assert_eq!(revoked.revision, 4);
    assert_eq!(keys(&prefix(&store, "")), ["z"]);
    assert!(store.lease(7).unwrap().is_none());
    assert!(matches!(
        run(&store, Command::LeaseRevoke { id: 7 }),
        Err(StoreError::LeaseNotFound(7))
    ));
}

#[test]
fn moving_a_key_to_another_lease_detaches_it_from_the_first() {
    let (_dir, store) = open();
    run(&store, Command::LeaseGrant { id: 1, ttl: 10 }).unwrap();
    run(&store, Command::LeaseGrant { id: 2, ttl: 10 }).unwrap();
    let leased = |lease| {
        Command::Put(PutRequest {
            lease,
            ..PutRequest::new("k", "v")
        })
    };
    run(&store, leased(1)).unwrap();
    run(&store, leased(2)).unwrap();
    run(&store, Command::LeaseRevoke { id: 1 }).unwrap();
    assert!(
        get_at(&store, "k", 0).is_some(),
        "revoking lease 1 must not delete k"
    );
}

#[test]
fn state_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let store = Store::open(&path).unwrap();
        put(&store, "a", "1");
        put(&store, "a", "2");
        run(&store, Command::LeaseGrant { id: 3, ttl: 5 }).unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.revision(), 2);
    assert_eq!(get_at(&store, "a", 1).unwrap().value, b"1");
    assert_eq!(store.leases().unwrap(), [(3, 5)]);
}

#[tokio::test]
async fn watch_replays_history_then_streams_live_events_once() {
    let (_dir, store) = open();
    put(&store, "/w/a", "1"); // 1
    put(&store, "/other", "x"); // 2
    put(&store, "/w/a", "2"); // 3
    let mut watcher = store.watch(KeyRange::prefix("/w/"), 1);
    let replayed = watcher.next().await.unwrap();
    assert_eq!(
        replayed
            .iter()
            .map(|e| e.kv.mod_revision)
            .collect::<Vec<_>>(),
        [1, 3]
    );
    assert_eq!(replayed[1].prev_kv.as_ref().unwrap().value, b"1");

    let writer = store.clone();
    tokio::task::spawn_blocking(move || {
        put(&writer, "/w/b", "live");
        run(
            &writer,
            Command::DeleteRange(DeleteRangeRequest {
                range: KeyRange::single("/w/a"),
                prev_kv: false,
            }),
        )
        .unwrap();
    });
    let mut live = Vec::new();
    while live.len() < 2 {
        let events = tokio::time::timeout(Duration::from_secs(5), watcher.next())
            .await
            .expect("live events arrive")
            .unwrap();
        live.extend(events);
    }
    assert_eq!(live[0].kind, EventKind::Put);
    assert_eq!(live[0].kv.key, b"/w/b");
    assert_eq!(live[1].kind, EventKind::Delete);
    assert_eq!(live[1].kv.mod_revision, 5);
}

#[tokio::test]
async fn a_watcher_that_lags_behind_the_live_channel_catches_up_from_disk() {
    let (_dir, store) = open();
    let mut watcher = store.watch(KeyRange::single("k"), 0);
    let total = watch::LIVE_CAPACITY as i64 + 50;
    for i in 0..total {
        put(&store, "k", &i.to_string());
    }
    let mut seen = Vec::new();
    while seen.len() < total as usize {
        seen.extend(
            watcher
                .next()
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.kv.mod_revision),
        );
    }
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
}

#[tokio::test]
async fn watching_from_a_compacted_revision_reports_the_compact_revision() {
    let (_dir, store) = open();
    for i in 0..5 {
        put(&store, "k", &i.to_string());
    }
    run(&store, Command::Compact { revision: 4 }).unwrap();
    let mut watcher = store.watch(KeyRange::single("k"), 2);
    assert!(matches!(
        watcher.next().await,
        Err(StoreError::Compacted {
            compact_revision: 4
        })
    ));
    let mut from_compact = store.watch(KeyRange::single("k"), 4);
    let events = from_compact.next().await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(),
        [4, 5]
    );
}

#[test]
fn batches_apply_in_order_and_a_bad_command_fails_alone() {
    let (_dir, store) = open();
    let proposals: Vec<Proposal> = [
        Command::Put(PutRequest::new("a", "1")),
        Command::Put(PutRequest {
            lease: 9,
            ..PutRequest::new("b", "1")
        }),
        Command::Put(PutRequest::new("a", "2")),
    ]
    .into_iter()
    .map(|command| Proposal {
        command,
        time_unix_ms: 0,
    })
    .collect();
    let outcomes = store.apply_batch(&proposals, 1, true).unwrap();
    assert_eq!(outcomes[0].as_ref().unwrap().revision, 1);
    assert!(matches!(outcomes[1], Err(StoreError::LeaseNotFound(9))));
    assert_eq!(outcomes[2].as_ref().unwrap().revision, 2);
}

#[test]
fn a_snapshot_restores_history_leases_and_the_applied_index_elsewhere() {
    let (_dir, source) = open();
    put(&source, "a", "1");
    put(&source, "a", "2");
    run(&source, Command::LeaseGrant { id: 5, ttl: 9 }).unwrap();
    let (applied, data) = source.snapshot_data().unwrap();
    assert_eq!(applied, 3);

    let (_dir2, target) = open();
    put(&target, "stale", "x");
    assert_eq!(
        target.restore_snapshot(data.as_slice(), b"meta").unwrap(),
        3
    );
    assert_eq!(
        target.installed_snapshot().unwrap().as_deref(),
        Some(&b"meta"[..])
    );
    assert_eq!(target.revision(), 2);
    assert_eq!(target.applied_index().unwrap(), 3);
    assert!(get_at(&target, "stale", 0).is_none());
    assert_eq!(get_at(&target, "a", 1).unwrap().value, b"1");
    assert_eq!(target.leases().unwrap(), [(5, 9)]);
}

#[test]
fn a_snapshot_cut_short_or_damaged_changes_nothing() {
    let (_dir, source) = open();
    for i in 0..50 {
        put(&source, &format!("k{i}"), "v");
    }
    let (_, data) = source.snapshot_data().unwrap();
    let (_dir2, target) = open();
    put(&target, "mine", "kept");
    // (Damage inside a record is the transport's digest to catch.)
    let mut damaged = data.clone();
    damaged[..4].copy_from_slice(&u32::MAX.to_be_bytes());
    for bad in [
        &data[..data.len() - 1],
        &data[..data.len() / 2],
        &damaged[..],
        &[][..],
    ] {
        let err = target.restore_snapshot(bad, b"").unwrap_err();
        assert!(err.to_string().contains("snapshot"), "{err}");
        assert_eq!(get_at(&target, "mine", 0).unwrap().value, b"kept");
        assert_eq!(target.revision(), 1);
    }
    target.restore_snapshot(data.as_slice(), b"").unwrap();
    assert_eq!(target.revision(), 50);
}

#[tokio::test]
async fn a_watcher_reads_the_gap_a_restored_snapshot_leaves() {
    let (_dir, source) = open();
    put(&source, "a", "1");
    put(&source, "a", "2");
    put(&source, "b", "3");
    let (_, data) = source.snapshot_data().unwrap();

    let (_dir2, target) = open();
    let mut watcher = target.watch(KeyRange::prefix(""), 1);
    let restoring = target.clone();
    tokio::task::spawn_blocking(move || restoring.restore_snapshot(data.as_slice(), b"").unwrap());
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let events = tokio::time::timeout(Duration::from_secs(5), watcher.next())
            .await
            .expect("the restored history is delivered")
            .unwrap();
        seen.extend(events.into_iter().map(|e| e.kv.mod_revision));
    }
    assert_eq!(seen, [1, 2, 3]);
}

/// The index of current versions must always agree with a read through the
/// full history, whatever mix of writes led there.
#[test]
fn the_current_version_index_agrees_with_history_after_any_writes() {
    let (_dir, store) = open();
    run(&store, Command::LeaseGrant { id: 1, ttl: 60 }).unwrap();
    let mut seed = 7u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    for step in 0..400 {
        let key = format!("k{:02}", next() % 30);
        let command = match next() % 6 {
            0 | 1 => Command::Put(PutRequest::new(key.as_str(), step.to_string())),
            2 => Command::Put(PutRequest {
                lease: 1,
                ..PutRequest::new(key.as_str(), "leased")
            }),
            3 => Command::DeleteRange(DeleteRangeRequest {
                range: KeyRange::prefix(format!("k{}", next() % 3)),
                prev_kv: false,
            }),
            4 => Command::Txn(TxnRequest {
                compare: vec![],
                success: vec![
                    TxnOp::Put(PutRequest::new(key.as_str(), "txn")),
                    TxnOp::DeleteRange(DeleteRangeRequest {
                        range: KeyRange::single(format!("other{step}")),
                        prev_kv: false,
                    }),
                ],
                failure: vec![],
            }),
            _ if step % 50 == 0 => Command::LeaseRevoke { id: 1 },
            _ => Command::Put(PutRequest::new(key.as_str(), "x")),
        };
        let _ = run(&store, command);
        if step % 50 == 0 {
            let _ = run(&store, Command::LeaseGrant { id: 1, ttl: 60 });
        }
        if step % 97 == 0 && store.revision() > 5 {
            run(
                &store,
                Command::Compact {
                    revision: store.revision() - 5,
                },
            )
            .unwrap();
        }
    }
    let all = KeyRange::from_etcd(vec![0], vec![0]);
    let indexed = store.range(&RangeRequest::new(all.clone())).unwrap().0;
    let txn = store.db().begin_read().unwrap();
    let kv = txn.open_table(tables::KV).unwrap();
    let through_history = read::range(&kv, &RangeRequest::new(all), store.revision(), 0).unwrap();
    assert_eq!(indexed, through_history);
    assert!(indexed.count > 0);
}

#[test]
fn a_store_written_before_the_index_existed_gets_it_built_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let store = Store::open(&path).unwrap();
        put(&store, "a", "1");
        put(&store, "b", "2");
        run(
            &store,
            Command::DeleteRange(DeleteRangeRequest {
                range: KeyRange::single("a"),
                prev_kv: false,
            }),
        )
        .unwrap();
        let txn = store.db().begin_write().unwrap();
        txn.delete_table(tables::LIVE).unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(keys(&prefix(&store, "")), ["b"]);
}

#[test]
fn signed_writes_need_a_rising_sequence_that_survives_deletes_and_snapshots() {
    let (_dir, store) = open();
    let signed_put = |key: &str, sequence: u64, value: &str| Command::SignedPut {
        put: PutRequest::new(key, value),
        sequence,
    };
    run(&store, signed_put("/app/x", 5, "v5")).unwrap();
    assert_eq!(store.sequence(b"/app/x").unwrap(), 5);
    for stale in [5, 4] {
        let err = run(&store, signed_put("/app/x", stale, "old")).unwrap_err();
        assert!(
            matches!(err, StoreError::StaleSequence { stored: 5, .. }),
            "{err}"
        );
    }
    assert_eq!(get_at(&store, "/app/x", 0).unwrap().value, b"v5");
    let leased = run(&store, Command::LeaseGrant { id: 9, ttl: 60 });
    assert!(leased.is_ok());
    let mut with_lease = PutRequest::new("/app/x", "v9");
    with_lease.lease = 9;
    let err = run(
        &store,
        Command::SignedPut {
            put: with_lease,
            sequence: 9,
        },
    )
    .unwrap_err();
    assert!(matches!(err, StoreError::InvalidRequest(_)), "{err}");
    assert_eq!(store.sequence(b"/app/x").unwrap(), 5);

    // A signed delete keeps its change as the tombstone's value and raises
    // the sequence, so the old put cannot come back.
    let deleted = run(
        &store,
        Command::SignedDelete {
            key: b"/app/x".to_vec(),
            sequence: 6,
            change: b"delete-change".to_vec(),
        },
    )
    .unwrap();
    assert!(matches!(
        deleted.response,
        CommandResponse::DeleteRange(DeleteRangeResponse { deleted: 1, .. })
    ));
    assert!(get_at(&store, "/app/x", 0).is_none());
    let history = store.history(b"/app/x").unwrap();
    assert_eq!(history.entries.last().unwrap().value, b"delete-change");
    assert!(run(&store, signed_put("/app/x", 6, "again")).is_err());

    let (_, data) = store.snapshot_data().unwrap();
    let (_other_dir, other) = open();
    other.restore_snapshot(data.as_slice(), b"").unwrap();
    assert_eq!(other.sequence(b"/app/x").unwrap(), 6);
    assert!(run(&other, signed_put("/app/x", 6, "again")).is_err());
    run(&other, signed_put("/app/x", 7, "v7")).unwrap();
}

#[test]
fn ranges_report_the_sequence_of_signed_values_at_the_current_revision() {
    let (_dir, store) = open();
    let mut signed = crate::signing::STORED_MAGIC.to_vec();
    signed.extend_from_slice(b"body");
    run(
        &store,
        Command::SignedPut {
            put: PutRequest::new("/a", signed),
            sequence: 3,
        },
    )
    .unwrap();
    put(&store, "/b", "plain");
    let (resp, _, sequences) = store
        .range_with_sequences(&RangeRequest::new(KeyRange::prefix("/")))
        .unwrap();
    assert_eq!(keys(&resp), ["/a", "/b"]);
    assert_eq!(sequences, [Some(3), None]);
    let mut old = RangeRequest::new(KeyRange::prefix("/"));
    old.revision = 1;
    let (_, _, sequences) = store.range_with_sequences(&old).unwrap();
    assert_eq!(sequences, [None]);
}

#[test]
fn auth_state_is_applied_kept_across_reopen_and_carried_by_snapshots() {
    use crate::auth::{AuthCommand, AuthError};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = Store::open(&path).unwrap();
    put(&store, "/k", "v");
    let user = |name: &str| {
        Command::Auth(AuthCommand::UserAdd {
            name: name.into(),
            password_hash: Some("hash".into()),
        })
    };
    let applied = run(&store, user("alice")).unwrap();
    // Auth changes move the auth revision, not the key revision.
    assert_eq!(applied.revision, 1);
    assert_eq!(applied.response, CommandResponse::Auth { auth_revision: 1 });
    assert!(matches!(
        run(&store, user("alice")),
        Err(StoreError::Auth(AuthError::UserAlreadyExist))
    ));
    assert_eq!(store.auth().revision, 1, "a refused change is not stored");
    drop(store);

    let store = Store::open(&path).unwrap();
    assert!(store.auth().users.contains_key("alice"));
    let (_, data) = store.snapshot_data().unwrap();
    let (_other_dir, other) = open();
    run(&other, user("stale")).unwrap();
    other.restore_snapshot(data.as_slice(), b"").unwrap();
    let restored = other.auth();
    assert!(restored.users.contains_key("alice"));
    assert!(!restored.users.contains_key("stale"));
}

#[test]
fn a_write_checked_against_an_older_auth_state_is_refused() {
    use crate::auth::{AuthCommand, AuthError};
    let (_dir, store) = open();
    let checked_at = store.auth().revision;
    let write = |auth_revision| Command::Authorized {
        auth_revision,
        command: Box::new(Command::Put(PutRequest::new("/k", "v"))),
    };
    run(&store, write(checked_at)).unwrap();
    // Users or roles change between the check and the apply.
    run(
        &store,
        Command::Auth(AuthCommand::RoleAdd { name: "r".into() }),
    )
    .unwrap();
    assert!(matches!(
        run(&store, write(checked_at)),
        Err(StoreError::Auth(AuthError::OldRevision))
    ));
    assert_eq!(store.revision(), 1, "the refused write changed nothing");
    run(&store, write(store.auth().revision)).unwrap();
    assert_eq!(store.revision(), 2);
}

#[test]
fn a_cluster_holds_a_bounded_number_of_leases() {
    let (_dir, store) = open();
    for id in 1..=16 {
        run(&store, Command::LeaseGrant { id, ttl: 10 }).unwrap();
    }
    let refused = run(&store, Command::LeaseGrant { id: 17, ttl: 10 })
        .err()
        .unwrap()
        .to_string();
    assert!(
        refused.contains("too many leases: 16 are granted"),
        "{refused}"
    );
    // Revoking one makes room again.
    run(&store, Command::LeaseRevoke { id: 3 }).unwrap();
    run(&store, Command::LeaseGrant { id: 17, ttl: 10 }).unwrap();
}
