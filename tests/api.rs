//! The etcd v3 API of a real agent process, through a real gRPC client (the
//! `etcd-client` crate) and the Edgeconf service's generated client.

mod common;

use std::time::Duration;

use common::{etcd_client, Agent};
use edgeconf::api::pb::{edgeconf_client::EdgeconfClient, HistoryRequest};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, SortOrder, SortTarget,
    Txn, TxnOp, WatchOptions,
};

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn put_get_delete_with_revisions_prefixes_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let mut client = etcd_client(&agent).await;

    let first = client.put("/app/a", "1", None).await.unwrap();
    let header = first.header().unwrap();
    assert_eq!(header.revision(), 1);
    assert!(header.raft_term() >= 1);
    assert_ne!(header.cluster_id(), 0);
    assert_ne!(header.member_id(), 0);

    client.put("/app/b", "2", None).await.unwrap();
    let replaced = client
        .put("/app/a", "3", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(replaced.prev_key().unwrap().value(), b"1");

    let all = client
        .get("/app/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(all.count(), 2);
    let a = &all.kvs()[0];
    assert_eq!((a.key(), a.value()), (&b"/app/a"[..], &b"3"[..]));
    assert_eq!(
        (a.create_revision(), a.mod_revision(), a.version()),
        (1, 3, 2)
    );

    let old = client
        .get("/app/a", Some(GetOptions::new().with_revision(1)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"1");

    let sorted = client
        .get(
            "/app/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Value, SortOrder::Descend)
                    .with_limit(1),
            ),
        )
        .await
        .unwrap();
    assert_eq!(sorted.kvs()[0].key(), b"/app/a");
    assert!(sorted.more());

    let deleted = client
        .delete(
            "/app/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 2);
    assert_eq!(deleted.prev_kvs().len(), 2);
    assert_eq!(deleted.header().unwrap().revision(), 4);
    let empty = client
        .get("/app/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(empty.count(), 0);

    let future = client
        .get("/app/a", Some(GetOptions::new().with_revision(99)))
        .await
        .unwrap_err();
    assert!(future.to_string().contains("future revision"), "{future}");
}

#[tokio::test]
async fn txn_compare_and_swap_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let mut client = etcd_client(&agent).await;
    client.put("lock", "free", None).await.unwrap();

    // etcd's limit: 128 operations of each kind in one transaction.
    let puts = |n: usize| -> Vec<TxnOp> {
        (0..n)
            .map(|i| TxnOp::put(format!("many/{i}"), "v", None))
            .collect()
    };
    client.txn(Txn::new().and_then(puts(128))).await.unwrap();
    let refused = client
        .txn(Txn::new().and_then(puts(129)))
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("etcdserver: too many operations in txn request"),
        "{refused}"
    );

    let cas = |expect: &str, new: &str| {
        Txn::new()
            .when([Compare::value("lock", CompareOp::Equal, expect)])
            .and_then([TxnOp::put("lock", new, None), TxnOp::get("lock", None)])
            .or_else([TxnOp::get("lock", None)])
    };
    let won = client.txn(cas("free", "mine")).await.unwrap();
    assert!(won.succeeded());
    let lost = client.txn(cas("free", "theirs")).await.unwrap();
    assert!(!lost.succeeded());
    let value = client.get("lock", None).await.unwrap();
    assert_eq!(value.kvs()[0].value(), b"mine");

    let created_if_absent = client
        .txn(
            Txn::new()
                .when([Compare::version("new", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("new", "x", None)]),
        )
        .await
        .unwrap();
    assert!(created_if_absent.succeeded());

    let revision = client
        .get("lock", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(revision, None).await.unwrap();
    let compacted = client
        .get("lock", Some(GetOptions::new().with_revision(1)))
        .await
        .unwrap_err();
    assert!(compacted.to_string().contains("compacted"), "{compacted}");
}

#[tokio::test]
async fn watch_replays_from_a_revision_then_streams_live_with_prev_kv() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let mut client = etcd_client(&agent).await;
    client.put("/w/a", "1", None).await.unwrap();
    client.put("/other", "x", None).await.unwrap();
    client.put("/w/a", "2", None).await.unwrap();

    let mut stream = client
        .watch(
            "/w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(1)
                    .with_prev_key(),
            ),
        )
        .await
        .unwrap();
    let mut writer = etcd_client(&agent).await;
    writer.put("/w/b", "3", None).await.unwrap();
    writer.delete("/w/a", None).await.unwrap();

    let mut events = Vec::new();
    while events.len() < 4 {
        let response = tokio::time::timeout(TIMEOUT, stream.message())
            .await
            .expect("events within the timeout")
            .unwrap()
            .expect("stream open");
        for e in response.events() {
            let kv = e.kv().unwrap();
            events.push((
                e.event_type(),
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
                e.prev_kv()
                    .map(|p| String::from_utf8_lossy(p.value()).into_owned()),
            ));
        }
    }
    assert_eq!(
        events,
        [
            (EventType::Put, "/w/a".into(), 1, None),
            (EventType::Put, "/w/a".into(), 3, Some("1".into())),
            (EventType::Put, "/w/b".into(), 4, None),
            (EventType::Delete, "/w/a".into(), 5, Some("2".into())),
        ]
    );
}

#[tokio::test]
async fn watching_a_compacted_revision_is_canceled_with_the_compact_revision() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let mut client = etcd_client(&agent).await;
    for i in 0..5 {
        client.put("k", i.to_string(), None).await.unwrap();
    }
    client.compact(4, None).await.unwrap();
    let mut stream = client
        .watch("k", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .unwrap();
    let mut canceled = None;
    while canceled.is_none() {
        let response = next(&mut stream).await;
        if response.canceled() {
            canceled = Some(response.compact_revision());
        }
    }
    assert_eq!(canceled, Some(4));
}

#[tokio::test]
async fn leases_keep_keys_alive_and_delete_them_when_they_expire_or_are_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let mut client = etcd_client(&agent).await;

    let short = client.lease_grant(1, None).await.unwrap().id();
    client
        .put("ephemeral", "x", Some(PutOptions::new().with_lease(short)))
        .await
        .unwrap();
    let kept = client.lease_grant(2, None).await.unwrap().id();
    client
        .put("kept", "x", Some(PutOptions::new().with_lease(kept)))
        .await
        .unwrap();
    let (mut keeper, mut responses) = client.lease_keep_alive(kept).await.unwrap();

    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        keeper.keep_alive().await.unwrap();
        let renewed = responses.message().await.unwrap().unwrap();
        assert_eq!(renewed.ttl(), 2);
        let gone = client.get("ephemeral", None).await.unwrap().count() == 0;
        if gone {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a 1s lease did not expire"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(client.get("kept", None).await.unwrap().count(), 1);
    let ttl = client.lease_time_to_live(short, None).await.unwrap();
    assert_eq!(ttl.ttl(), -1, "an expired lease reports TTL -1");

    let leases = client.leases().await.unwrap();
    assert_eq!(
        leases.leases().iter().map(|l| l.id()).collect::<Vec<_>>(),
        [kept]
    );
    client.lease_revoke(kept).await.unwrap();
    assert_eq!(client.get("kept", None).await.unwrap().count(), 0);
    let missing = client.lease_revoke(kept).await.unwrap_err();
    assert!(missing.to_string().contains("lease not found"), "{missing}");
}

#[tokio::test]
async fn history_lists_every_retained_revision_with_time_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let mut client = etcd_client(&agent).await;
    client.put("cfg", "one", None).await.unwrap();
    client.put("other", "x", None).await.unwrap();
    client.put("cfg", "three", None).await.unwrap();
    client.delete("cfg", None).await.unwrap();

    let mut edgeconf = EdgeconfClient::connect(agent.url()).await.unwrap();
    let history = edgeconf
        .history(HistoryRequest {
            key: b"cfg".to_vec(),
            with_values: true,
        })
        .await
        .unwrap()
        .into_inner();
    let summary: Vec<_> = history
        .revisions
        .iter()
        .map(|r| {
            (
                r.revision,
                r.version,
                r.deleted,
                r.value_size,
                r.value.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, 1, false, 3, b"one".to_vec()),
            (3, 2, false, 5, b"three".to_vec()),
            (4, 0, true, 0, Vec::new()),
        ]
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(history
        .revisions
        .iter()
        .all(|r| (now_ms - r.time_unix_ms).abs() < 60_000));
    assert_eq!(history.header.unwrap().revision, 4);
}

#[tokio::test]
async fn status_reports_the_member_as_leader_with_revision_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let mut client = etcd_client(&agent).await;
    client.put("a", "1", None).await.unwrap();
    let status = client.status().await.unwrap();
    let header = status.header().unwrap();
    assert_eq!(status.leader(), header.member_id());
    assert!(status.raft_term() >= 1);
    assert_eq!(header.revision(), 1);
    assert!(status.db_size() > 0);
    let members = client.member_list().await.unwrap();
    assert_eq!(members.members().len(), 1);
    assert_eq!(members.members()[0].id(), header.member_id());
}

#[tokio::test]
async fn one_stream_holds_at_most_1024_watchers() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let mut client = etcd_client(&agent).await;
    let mut stream = client.watch("w0", None).await.unwrap();
    for n in 1..1025 {
        stream.watch(format!("w{n}"), None).await.unwrap();
    }
    // Every one of the first 1,024 is created; the next is canceled.
    let (mut created, mut refused) = (0, None);
    while refused.is_none() {
        let response = next(&mut stream).await;
        if response.canceled() {
            refused = Some(response.cancel_reason().to_string());
        } else if response.created() {
            created += 1;
        }
    }
    assert_eq!(created, 1024);
    let reason = refused.unwrap();
    assert!(reason.contains("the most one stream may hold"), "{reason}");
    // The stream still works for the watchers it holds.
    client.put("w7", "x", None).await.unwrap();
    let event = tokio::time::timeout(TIMEOUT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.events()[0].kv().unwrap().key(), b"w7");
}

/// The next watch response, within the timeout.
async fn next(stream: &mut etcd_client::WatchStream) -> etcd_client::WatchResponse {
    tokio::time::timeout(TIMEOUT, stream.message())
        .await
        .expect("a response within the timeout")
        .unwrap()
        .expect("stream open")
}

#[tokio::test]
async fn the_lock_and_election_services_queue_contenders_by_create_revision() {
    use etcd_client::{LockOptions, ProclaimOptions, ResignOptions};
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let mut client = etcd_client(&agent).await;
    let lease = |client: &mut etcd_client::Client| {
        let mut client = client.clone();
        async move { client.lease_grant(30, None).await.unwrap().id() }
    };

    // Lock: the first holder gets its key at once; the second waits until
    // the first unlocks.
    let (l1, l2) = (lease(&mut client).await, lease(&mut client).await);
    let held = client
        .lock("jobs", Some(LockOptions::new().with_lease(l1)))
        .await
        .unwrap();
    assert_eq!(held.key(), format!("jobs/{l1:x}").as_bytes());
    let mut waiter = client.clone();
    let second = tokio::spawn(async move {
        waiter
            .lock("jobs", Some(LockOptions::new().with_lease(l2)))
            .await
            .unwrap()
            .key()
            .to_vec()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second got the lock while the first held it"
    );
    client.unlock(held.key()).await.unwrap();
    let key = tokio::time::timeout(TIMEOUT, second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(key, format!("jobs/{l2:x}").as_bytes());
    // No lease, no lock.
    let err = client.lock("jobs", None).await.unwrap_err().to_string();
    assert!(err.contains("needs a lease"), "{err}");
    // Edgeconf's own records are not a lock's to write (an alarm, here).
    let l3 = lease(&mut client).await;
    let err = client
        .lock("_edgeconf/alarm", Some(LockOptions::new().with_lease(l3)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("_edgeconf/"), "{err}");
    // A waiter whose client goes away leaves the queue at once.
    let (l4, l5) = (lease(&mut client).await, lease(&mut client).await);
    let held = client
        .lock("queue", Some(LockOptions::new().with_lease(l4)))
        .await
        .unwrap();
    let mut waiter = client.clone();
    let gone = tokio::spawn(async move {
        let _ = waiter
            .lock("queue", Some(LockOptions::new().with_lease(l5)))
            .await;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gone.abort();
    let waiting = format!("queue/{l5:x}");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let left = client.get(waiting.as_str(), None).await.unwrap();
        if left.kvs().is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cancelled waiter stayed queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.unlock(held.key()).await.unwrap();

    // Election: the first candidate leads, a proclaim changes its value,
    // the second leads once it resigns; observers see each leader.
    let (e1, e2) = (lease(&mut client).await, lease(&mut client).await);
    let mut observe = client.observe("web").await.unwrap();
    let won = client.campaign("web", "p1", e1).await.unwrap();
    let leader = won.leader().unwrap().clone();
    let seen = tokio::time::timeout(TIMEOUT, observe.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"p1");
    client
        .proclaim(
            "p1-v2",
            Some(ProclaimOptions::new().with_leader(leader.clone())),
        )
        .await
        .unwrap();
    let now = client.leader("web").await.unwrap();
    assert_eq!(now.kv().unwrap().value(), b"p1-v2");
    let mut other = client.clone();
    let challenger = tokio::spawn(async move { other.campaign("web", "p2", e2).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!challenger.is_finished(), "two leaders at once");
    client
        .resign(Some(ResignOptions::new().with_leader(leader.clone())))
        .await
        .unwrap();
    let second = tokio::time::timeout(TIMEOUT, challenger)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        second.leader().unwrap().key(),
        format!("web/{e2:x}").as_bytes()
    );
    assert_eq!(
        client.leader("web").await.unwrap().kv().unwrap().value(),
        b"p2"
    );
    // The old leader can no longer proclaim.
    let err = client
        .proclaim("stale", Some(ProclaimOptions::new().with_leader(leader)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not leader"), "{err}");
    let mut values = Vec::new();
    while values.last().map(Vec::as_slice) != Some(b"p2".as_slice()) {
        let seen = tokio::time::timeout(TIMEOUT, observe.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        values.push(seen.kv().unwrap().value().to_vec());
    }
    assert!(values.contains(&b"p1-v2".to_vec()), "{values:?}");
}
