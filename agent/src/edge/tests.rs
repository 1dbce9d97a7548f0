//! A follower against a voter and a hostile relay on real QUIC sockets: the
//! relay holds a pinned node key and speaks the real feed protocol, but
//! forges, reorders, drops or replays batches. Each lie is refused and
//! counted, and the follower converges through the voter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::follow::{FollowStatus, Follower};
use super::serve::FeedServer;
use crate::feed::wire::Reply;
use crate::feed::Prefixes;
use crate::store::{Command, KeyRange, Proposal, PutRequest, RangeRequest, Store};
use crate::transport::{NodeKey, Transport};

const CLUSTER: u64 = 0xabc;

struct Agent {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    key: NodeKey,
}

fn agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("store.redb")).unwrap());
    let key = NodeKey::load_or_create(dir.path()).unwrap();
    Agent {
        _dir: dir,
        store,
        key,
    }
}

fn listen(agent: &Agent, trusted: &[&Agent]) -> (Arc<Transport>, SocketAddr) {
    let keys: Vec<[u8; 32]> = trusted.iter().map(|a| a.key.public_key_raw()).collect();
    let transport =
        Transport::start("127.0.0.1:0".parse().unwrap(), &agent.key, &keys, false).unwrap();
    let addr = transport.local_addr().unwrap();
    (transport, addr)
}

fn write(store: &Store, command: Command) {
    store
        .apply(Proposal {
            command,
            time_unix_ms: 1,
        })
        .unwrap();
}

fn put(store: &Store, key: &str, value: &str) {
    write(store, Command::Put(PutRequest::new(key, value)));
}

fn app(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (response, _) = store
        .range(&RangeRequest::new(KeyRange::prefix("/app/")))
        .unwrap();
    response
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Lie {
    Forge,
    Reorder,
    Drop,
    Replay,
    /// Claims the voter's head is where the batch ends (hiding how far
    /// behind the follower is).
    LowerHead,
}

/// Runs a follower with the liar first and the voter second; returns its
/// refusals once it has converged on the voter.
async fn follow_past(lie: Lie) -> std::collections::BTreeMap<&'static str, u64> {
    let (voter, liar, edge) = (agent(), agent(), agent());
    put(&voter.store, "/app/a", "1");
    put(&voter.store, "/other/x", "not for this edge");
    put(&voter.store, "/app/b", "2");
    let voter_server = FeedServer::new(
        voter.store.clone(),
        CLUSTER,
        Some(voter.key.signing_key().unwrap()),
    );
    let (voter_net, voter_addr) = listen(&voter, &[&edge]);
    voter_net.attach_feed(voter_server.handler());

    // What the liar captured earlier, to replay.
    let pull = |after| crate::feed::wire::Pull {
        cluster_id: CLUSTER,
        after,
        prefixes: Prefixes(vec![b"/app/".to_vec()]),
        wait_ms: 0,
    };
    let old = voter_server
        .answer(edge.key.public_key_raw(), &pull(0).encode())
        .await;
    let Reply::Batch(old) = old else {
        panic!("expected a batch")
    };
    if matches!(lie, Lie::Replay) {
        // The follower already has what the old batch holds.
        let accepted = crate::feed::verify_batch(
            &edge.store.feed_position().unwrap(),
            CLUSTER,
            &[voter.key.public_key_raw()],
            &Prefixes(vec![b"/app/".to_vec()]),
            old.clone(),
        )
        .unwrap();
        edge.store.apply_feed(&accepted, &[], 0).unwrap();
    }
    put(&voter.store, "/app/a", "3");
    write(
        &voter.store,
        Command::DeleteRange(crate::store::DeleteRangeRequest {
            range: KeyRange::single("/app/b"),
            prev_kv: false,
        }),
    );

    let (liar_net, liar_addr) = listen(&liar, &[&edge]);
    let honest = voter_server.clone();
    liar_net.attach_feed(Arc::new(move |peer, request| {
        let (honest, old) = (honest.clone(), old.clone());
        Box::pin(async move {
            let Reply::Batch(mut batch) = honest.answer(peer, &request).await else {
                panic!("the voter has a batch")
            };
            match lie {
                Lie::Forge => batch.values[0].value = b"evil".to_vec(),
                Lie::Reorder => batch.revisions.swap(0, 1),
                Lie::Drop => {
                    let last = batch.revisions.len() - 1;
                    batch.revisions.remove(last - 1);
                }
                Lie::Replay => batch = old,
                Lie::LowerHead => batch.checkpoint.checkpoint.head -= 1,
            }
            Reply::Batch(batch).encode()
        })
    }));

    let (edge_net, _) = listen(&edge, &[&voter, &liar]);
    let status = Arc::new(FollowStatus::default());
    let follower = Follower {
        store: edge.store.clone(),
        net: edge_net.feed().clone(),
        cluster_id: CLUSTER,
        voters: vec![voter.key.public_key_raw()],
        prefixes: Prefixes(vec![b"/app/".to_vec()]),
        sources: Box::new(move || vec![liar_addr, voter_addr]),
        status: status.clone(),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(follower.run(stopped));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while edge.store.revision() < voter.store.revision() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{lie:?}: the follower did not converge (at {}, voter at {})",
            edge.store.revision(),
            voter.store.revision()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app(&edge.store), app(&voter.store), "{lie:?}");
    assert_eq!(app(&edge.store), [(b"/app/a".to_vec(), b"3".to_vec())]);
    assert!(
        status
            .last_contact_unix_ms
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    // The voter signed its head; the edge is there.
    assert_eq!(
        status.known_head.load(std::sync::atomic::Ordering::Relaxed),
        voter.store.revision()
    );
    assert_eq!(status.revisions_behind(), 0);
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
    status.refused()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_forges_a_value_is_refused_and_the_voter_is_followed() {
    let refused = follow_past(Lie::Forge).await;
    assert_eq!(refused.get("value_mismatch"), Some(&1), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_reorders_changes_is_refused() {
    let refused = follow_past(Lie::Reorder).await;
    assert_eq!(refused.get("misordered"), Some(&1), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_drops_a_change_is_refused() {
    let refused = follow_past(Lie::Drop).await;
    assert_eq!(refused.get("chain_mismatch"), Some(&1), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_replays_an_old_batch_is_refused() {
    let refused = follow_past(Lie::Replay).await;
    assert_eq!(refused.get("not_next"), Some(&1), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_changes_the_voters_head_is_refused() {
    let refused = follow_past(Lie::LowerHead).await;
    assert_eq!(refused.get("bad_signature"), Some(&1), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_relays_to_another_edge_over_quic() {
    let (voter, first, second) = (agent(), agent(), agent());
    put(&voter.store, "/app/a", "1");
    put(&voter.store, "/other/x", "y");
    let (voter_net, voter_addr) = listen(&voter, &[&first]);
    voter_net.attach_feed(
        FeedServer::new(
            voter.store.clone(),
            CLUSTER,
            Some(voter.key.signing_key().unwrap()),
        )
        .handler(),
    );
    let (first_net, first_addr) = listen(&first, &[&voter, &second]);
    first_net.attach_feed(FeedServer::new(first.store.clone(), CLUSTER, None).handler());
    // The second edge cannot reach the voter at all: only the first edge.
    let (second_net, _) = listen(&second, &[&first]);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for (store, net, source) in [
        (first.store.clone(), first_net.clone(), voter_addr),
        (second.store.clone(), second_net.clone(), first_addr),
    ] {
        let follower = Follower {
            store,
            net: net.feed().clone(),
            cluster_id: CLUSTER,
            voters: vec![voter.key.public_key_raw()],
            prefixes: Prefixes(vec![b"/app/".to_vec()]),
            sources: Box::new(move || vec![source]),
            status: Arc::new(FollowStatus::default()),
        };
        tokio::spawn(follower.run(stopped.clone()));
    }
    // A change made while both wait in their long polls reaches both.
    tokio::time::sleep(Duration::from_millis(300)).await;
    put(&voter.store, "/app/a", "2");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while second.store.revision() < voter.store.revision() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay did not deliver"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app(&second.store), app(&voter.store));
    assert_eq!(
        second.store.feed_position().unwrap(),
        voter.store.feed_position().unwrap()
    );
    let _ = stop.send(true);
}

#[test]
fn an_edge_is_stale_without_a_recent_voter_timestamp() {
    use std::sync::atomic::Ordering;
    let status = FollowStatus::new(Duration::from_secs(30), true);
    let problem = status.staleness().unwrap();
    assert!(problem.contains("no voter timestamp"), "{problem}");
    let now = crate::consensus::now_unix_ms() / 1000;
    status.voter_time_unix.store(now - 5, Ordering::Relaxed);
    assert_eq!(status.staleness(), None);
    status.voter_time_unix.store(now - 90, Ordering::Relaxed);
    let problem = status.staleness().unwrap();
    assert!(problem.contains("s old (limit 30 s)"), "{problem}");
    // A voter clock ahead of this host's is no fresher than now.
    status.voter_time_unix.store(now + 3600, Ordering::Relaxed);
    assert_eq!(status.seconds_since_voter_time(), Some(0.0));
}
