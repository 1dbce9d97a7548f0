//! What a client reads after its own writes, on every member of a real
//! three-member cluster. A member answers a plain put as soon as its entry
//! commits, while its store is still applying it (`store::foresee`); these
//! tests hold it to etcd's promise that the member then serves that write.

mod common;

use common::cluster::{Cluster, TIMEOUT};
use etcd_client::{GetOptions, WatchOptions};

/// Puts `value` at `key`, a key no one else writes, then reads it back
/// serializably through the same client: the read is at or past the
/// put's revision and holds the value. Returns the put's revision.
async fn put_and_read_own(client: &mut etcd_client::Client, key: &str, value: &str) -> i64 {
    let put = client.put(key, value, None).await.unwrap();
    let written = put.header().unwrap().revision();
    let read = client
        .get(key, Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert!(
        read.header().unwrap().revision() >= written,
        "{key}: read at {:?} after a put at {written}",
        read.header()
    );
    assert_eq!(read.kvs()[0].value(), value.as_bytes(), "{key}");
    assert_eq!(read.kvs()[0].mod_revision(), written, "{key}");
    written
}

/// Opens a watch and waits for its `created` reply: the watch starts at
/// the revision current when the member takes the request, and
/// etcd-client returns once the call is open, before that.
async fn watch_created(
    client: &mut etcd_client::Client,
    key: &str,
    options: Option<WatchOptions>,
) -> etcd_client::WatchStream {
    let mut stream = client.watch(key, options).await.unwrap();
    let created = tokio::time::timeout(TIMEOUT, stream.message())
        .await
        .expect("the watch is created")
        .unwrap()
        .expect("the stream stays open");
    assert!(created.created(), "{created:?}");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_serializable_read_after_a_put_sees_it_on_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    for member in 0..3 {
        let mut client = cluster.client(member).await;
        let key = format!("/ryw/{member}");
        for n in 0..100 {
            let written = put_and_read_own(&mut client, &key, &n.to_string()).await;
            // The revision the put named can be read at once.
            let at = client
                .get(
                    key.as_str(),
                    Some(GetOptions::new().with_serializable().with_revision(written)),
                )
                .await
                .unwrap_or_else(|e| panic!("member {member}: reading revision {written}: {e}"));
            assert_eq!(at.kvs()[0].value(), n.to_string().as_bytes());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_opened_after_a_put_starts_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    for member in 0..3 {
        let mut client = cluster.client(member).await;
        for n in 0..30 {
            let key = format!("/watch/{member}/{n}");
            let before = client.put(key.as_str(), "before", None).await.unwrap();
            let mut stream = watch_created(&mut client, &key, None).await;
            let after = client.put(key.as_str(), "after", None).await.unwrap();
            let mut seen = Vec::new();
            while seen.is_empty() {
                let response = tokio::time::timeout(TIMEOUT, stream.message())
                    .await
                    .expect("the second put is seen")
                    .unwrap()
                    .expect("the stream stays open");
                seen.extend(
                    response
                        .events()
                        .iter()
                        .map(|e| e.kv().unwrap().mod_revision()),
                );
            }
            assert_eq!(
                seen,
                [after.header().unwrap().revision()],
                "member {member}: the watch opened after the put at {}",
                before.header().unwrap().revision()
            );
        }
    }
}

/// Under load a member holds rounds of plain puts for a later round's
/// store transaction (`consensus::held_applies`), after their clients were
/// answered. Every client still reads its own write on its member, a
/// linearizable read on another member sees every last write, and a watch
/// opened before the load sees every put once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn puts_held_under_load_are_read_and_watched_in_order() {
    const CLIENTS: usize = 48;
    const PUTS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(dir.path(), 3);
    let metrics: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    for (i, port) in metrics.iter().enumerate() {
        cluster.member_head[i] = format!("listen_metrics_url = \"http://127.0.0.1:{port}\"");
    }
    let initial = cluster.initial_cluster(0..3);
    tokio::task::block_in_place(|| {
        for i in 0..3 {
            cluster.write_config(i, &initial, "new");
            cluster.run(i);
        }
        cluster.wait_for_leader();
    });
    let mut watcher = cluster.client(2).await;
    let mut stream = watch_created(
        &mut watcher,
        "/held/",
        Some(WatchOptions::new().with_prefix()),
    )
    .await;

    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let mut client = cluster.client(n % 3).await;
        tasks.push(tokio::spawn(async move {
            let key = format!("/held/{n:02}");
            for value in 0..PUTS {
                put_and_read_own(&mut client, &key, &value.to_string()).await;
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("the clients finish")
            .unwrap();
    }

    let held: u64 = metrics
        .iter()
        .map(|port| {
            let text = common::fleet::http_get(*port, "/metrics");
            text.lines()
                .find_map(|line| line.strip_prefix("edgeconf_applies_held_total "))
                .expect("the metric is served")
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert!(held > 0, "no member held a round: the load did not test it");

    let mut reader = cluster.client(1).await;
    let all = reader
        .get("/held/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(all.kvs().len(), CLIENTS);
    for kv in all.kvs() {
        assert_eq!(kv.value(), (PUTS - 1).to_string().as_bytes(), "{kv:?}");
    }

    let mut seen: std::collections::HashMap<Vec<u8>, usize> = Default::default();
    let mut last_revision = 0;
    let mut events = 0;
    while events < CLIENTS * PUTS {
        let response = tokio::time::timeout(TIMEOUT, stream.message())
            .await
            .expect("every put is watched")
            .unwrap()
            .expect("the stream stays open");
        for event in response.events() {
            let kv = event.kv().unwrap();
            assert!(
                kv.mod_revision() > last_revision,
                "events in revision order"
            );
            last_revision = kv.mod_revision();
            let next = seen.entry(kv.key().to_vec()).or_default();
            assert_eq!(kv.value(), next.to_string().as_bytes(), "{kv:?}");
            *next += 1;
            events += 1;
        }
    }
    assert_eq!(events, CLIENTS * PUTS);
}

/// A follower answers a put once it and the leader have both stored it,
/// before the leader has counted its acknowledgement
/// (`consensus::leader_persisted`). A linearizable read that starts after
/// that answer must see the put, on any member, even while the leader has
/// not yet heard the acknowledgement: here it never hears it until the
/// fault is lifted (the third member is cut off, so the follower's
/// acknowledgement is the only one that can commit the put).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_linearizable_read_sees_a_put_the_leader_has_not_counted_yet() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let mut at_leader = cluster.client(leader).await;
    let before = at_leader.put("/lin/k", "old", None).await.unwrap();
    for i in 0..3 {
        common::cluster::wait_for_revision(&cluster, i, before.header().unwrap().revision()).await;
    }
    let partition = cluster.slots[other].data_dir.join("fault-partition");
    let drop_acks = cluster.slots[follower].data_dir.join("fault-drop-acks");
    std::fs::write(&partition, "").unwrap();
    std::fs::write(&drop_acks, "").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let mut at_follower = cluster.client(follower).await;
    tokio::time::timeout(TIMEOUT, at_follower.put("/lin/k", "new", None))
        .await
        .expect("the follower answers the put it and the leader hold")
        .unwrap();
    let read = tokio::spawn(async move { at_leader.get("/lin/k", None).await });
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let early = read.is_finished();
    std::fs::remove_file(&drop_acks).unwrap();
    let read = tokio::time::timeout(TIMEOUT, read)
        .await
        .expect("the read is answered once the leader commits")
        .unwrap()
        .unwrap();
    assert_eq!(
        read.kvs()[0].value(),
        b"new",
        "a linearizable read after the put's answer (answered {}) missed it",
        if early {
            "before the leader counted the put"
        } else {
            "after"
        }
    );
    assert!(
        !early,
        "the leader answered a read before it could count the put"
    );
    std::fs::remove_file(&partition).unwrap();
}
