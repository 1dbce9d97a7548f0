//! Replication: real agent processes forming raft clusters over QUIC on
//! loopback. Leader kills, restarts, membership changes and a minority that
//! must not commit.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{local_state, wait_for_revision, Cluster, TIMEOUT};
use common::{free_port, ok, run_with_timeout, Agent, BIN};
use etcd_client::{GetOptions, MemberAddOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_any_member_replicate_and_reads_are_linearizable() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    for i in 0..3 {
        let mut client = cluster.client(i).await;
        client
            .put(format!("/k/{i}"), format!("from n{}", i + 1), None)
            .await
            .unwrap();
        // A linearizable read on another member sees the write at once.
        let mut other = cluster.client((i + 1) % 3).await;
        let read = other.get(format!("/k/{i}"), None).await.unwrap();
        assert_eq!(read.kvs()[0].value(), format!("from n{}", i + 1).as_bytes());
    }
    for i in 0..3 {
        wait_for_revision(&cluster, i, 3).await;
        let state = local_state(&cluster, i, "/k/").await;
        assert_eq!(state.len(), 3, "member {i}: {state:?}");
        assert_eq!(state["/k/2"], ("from n3".to_string(), 3));
    }
    let members = cluster.client(0).await.member_list().await.unwrap();
    let mut names: Vec<&str> = members.members().iter().map(|m| m.name()).collect();
    names.sort();
    assert_eq!(names, ["n1", "n2", "n3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());

    // Writers use every endpoint; a dead one's requests fail and they go on.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let endpoints = cluster.all_endpoints();
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(3));
            let mut client = etcd_client::Client::connect(endpoints, Some(options))
                .await
                .unwrap();
            let mut seq = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let key = format!("/acked/{w}/{seq:05}");
                seq += 1;
                match client.put(key.clone(), key.clone(), None).await {
                    Ok(_) => acked.lock().unwrap().push(key),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    cluster.kill9(leader);
    let new_leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let election = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(
        election < Duration::from_secs(5),
        "election took {election:?}"
    );
    eprintln!(
        "new leader n{} elected {election:?} after kill -9",
        new_leader + 1
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for writer in writers {
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .unwrap()
            .unwrap();
    }

    // The last acknowledged write is visible to a linearizable read at once.
    let last = acked.lock().unwrap().last().cloned().unwrap();
    let mut client = cluster.client(new_leader).await;
    assert_eq!(client.get(last.clone(), None).await.unwrap().count(), 1);

    // The CLI, given every endpoint, skips the dead one.
    let all: Vec<String> = (0..3).map(|i| cluster.endpoint(i)).collect();
    let cli = tokio::task::block_in_place(|| {
        run_with_timeout(
            Command::new(BIN).args([
                "--endpoints",
                &all.join(","),
                "put",
                "/cli/after-kill",
                "ok",
            ]),
            Duration::from_secs(30),
        )
    });
    assert_eq!(ok(cli), "OK\n");

    tokio::task::block_in_place(|| cluster.run(leader));
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "only {} puts acknowledged", acked.len());
    let revision = client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut states = Vec::new();
    for i in 0..3 {
        wait_for_revision(&cluster, i, revision).await;
        states.push(local_state(&cluster, i, "/acked/").await);
    }
    for key in &acked {
        let on_first = states[0]
            .get(key)
            .unwrap_or_else(|| panic!("acknowledged {key} lost"));
        for (i, state) in states.iter().enumerate() {
            assert_eq!(
                state.get(key),
                Some(on_first),
                "member {i} disagrees on {key}"
            );
        }
    }
    assert_eq!(states[0], states[1]);
    assert_eq!(states[1], states[2]);
    eprintln!(
        "{} acknowledged puts present with equal revisions on all 3 members",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_cluster_restart_keeps_data_revisions_and_members() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    let mut client = cluster.client(0).await;
    for i in 0..20 {
        client
            .put(format!("/r/{i:02}"), i.to_string(), None)
            .await
            .unwrap();
    }
    let before = local_state(&cluster, 0, "/r/").await;
    let members_before = client.member_list().await.unwrap().members().len();
    for i in 0..3 {
        tokio::task::block_in_place(|| cluster.stop(i));
    }
    for i in 0..3 {
        tokio::task::block_in_place(|| cluster.run(i));
    }
    tokio::task::block_in_place(|| cluster.wait_for_leader());
    let mut client = cluster.client(1).await;
    let read = client
        .get("/r/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(read.count(), 20);
    assert_eq!(read.header().unwrap().revision(), 20);
    for i in 0..3 {
        wait_for_revision(&cluster, i, 20).await;
        assert_eq!(local_state(&cluster, i, "/r/").await, before);
    }
    assert_eq!(
        client.member_list().await.unwrap().members().len(),
        members_before
    );
    client.put("/r/after", "restart", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_catches_up_by_snapshot_is_promoted_and_a_member_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 4));
    let mut client = cluster.client(0).await;
    // Enough writes that the log is compacted past what a newcomer needs.
    for i in 0..600 {
        client.put(format!("/s/{i:04}"), "v", None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let added = client
        .member_add(
            [cluster.slots[3].peer_url.clone()],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap();
    let new_id = added.member().unwrap().id();
    let initial = cluster.initial_cluster(0..4);
    cluster.write_config(3, &initial, "existing");
    tokio::task::block_in_place(|| cluster.run(3));
    wait_for_revision(&cluster, 3, 600).await;
    assert_eq!(local_state(&cluster, 3, "/s/").await.len(), 600);
    let log = cluster.agents[3].as_ref().unwrap().log();
    assert!(
        log.contains("installed a snapshot"),
        "the learner should catch up by snapshot:\n{log}"
    );
    // Streamed as a file in chunks, checked before raft saw it, removed
    // once installed.
    assert!(log.contains("received a snapshot copy, verified"), "{log}");
    let received = cluster.slots[3].data_dir.join("snapshots/in");
    assert_eq!(std::fs::read_dir(&received).unwrap().count(), 0);

    // Promotion is the leader's, once it sees the learner in sync.
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    // The leader built the copy off its raft thread.
    let log = cluster.agents[leader].as_ref().unwrap().log();
    assert!(
        log.contains("built a snapshot for followers behind the log"),
        "{log}"
    );
    let mut client = cluster.client(leader).await;
    let deadline = Instant::now() + TIMEOUT;
    while let Err(err) = client.member_promote(new_id).await {
        assert!(err.to_string().contains("not in sync"), "{err}");
        assert!(
            Instant::now() < deadline,
            "the learner never got in sync: {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The newcomer publishes its name with a proposal of its own, which
    // may still be on its way when the promotion lands.
    let deadline = Instant::now() + TIMEOUT;
    let members = loop {
        let members = client.member_list().await.unwrap();
        let promoted = members.members().iter().find(|m| m.id() == new_id).unwrap();
        assert!(!promoted.is_learner());
        if promoted.name() == "n4" {
            break members;
        }
        assert!(
            Instant::now() < deadline,
            "the newcomer never published its name: {:?}",
            promoted.name()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Remove n1; the other three carry on.
    let n1 = members
        .members()
        .iter()
        .find(|m| m.name() == "n1")
        .unwrap()
        .id();
    let mut survivor = cluster.client(1).await;
    survivor.member_remove(n1).await.unwrap();
    cluster.kill9(0);
    // Like any etcd client, retry while the survivors elect a leader.
    let deadline = Instant::now() + TIMEOUT;
    while let Err(err) = survivor.put("/s/after-remove", "ok", None).await {
        assert!(
            Instant::now() < deadline,
            "no write after removing n1: {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed = survivor.member_list().await.unwrap();
    assert_eq!(listed.members().len(), 3);
    assert!(listed.members().iter().all(|m| m.id() != n1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_minority_cannot_commit_and_the_majority_goes_on() {
    // The partition is fault injection in the transport: with
    // EDGECONF_FAULT_INJECTION set (the test helper sets it), a file
    // `fault-partition` in a member's data dir makes it drop all peer
    // traffic, in and out, while its process keeps running. Here the leader
    // is cut off, the hardest case: it must stop committing.
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let mut client = cluster.client(leader).await;
    client.put("/p/before", "1", None).await.unwrap();
    let switch = cluster.slots[leader].data_dir.join("fault-partition");
    std::fs::write(&switch, "").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(10));
    let mut minority = etcd_client::Client::connect(
        [format!("http://{}", cluster.endpoint(leader))],
        Some(options),
    )
    .await
    .unwrap();
    let write = minority.put("/p/minority", "lost", None).await;
    assert!(write.is_err(), "a minority must not commit: {write:?}");

    // The majority elects a new leader and goes on.
    let mut majority = cluster.client((leader + 1) % 3).await;
    let deadline = Instant::now() + TIMEOUT;
    let revision = loop {
        match majority.put("/p/majority", "ok", None).await {
            Ok(put) => break put.header().unwrap().revision(),
            Err(err) => assert!(
                Instant::now() < deadline,
                "the majority never committed: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let read = minority.get("/p/before", None).await;
    assert!(
        read.is_err(),
        "a linearizable read needs a quorum: {read:?}"
    );
    let local = minority
        .get("/p/before", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(local.count(), 1, "serializable reads still answer locally");

    // Heal: the old leader follows the new one and drops what it could not commit.
    std::fs::remove_file(&switch).unwrap();
    wait_for_revision(&cluster, leader, revision).await;
    let state = local_state(&cluster, leader, "/p/").await;
    assert!(state.contains_key("/p/majority"), "{state:?}");
    assert!(!state.contains_key("/p/minority"), "{state:?}");
    for i in 0..3 {
        wait_for_revision(&cluster, i, revision).await;
        assert_eq!(local_state(&cluster, i, "/p/").await, state);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_on_a_follower_sees_every_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let follower = (leader + 1) % 3;
    let mut watcher = cluster.client(follower).await;
    let mut stream = watcher
        .watch(
            "/w/",
            Some(
                etcd_client::WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(1),
            ),
        )
        .await
        .unwrap();
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut client = cluster.client(leader).await;
        writers.push(tokio::spawn(async move {
            for i in 0..25 {
                client.put(format!("/w/{w}/{i}"), "v", None).await.unwrap();
            }
        }));
    }
    let mut revisions = Vec::new();
    while revisions.len() < 200 {
        let response = tokio::time::timeout(TIMEOUT, stream.message())
            .await
            .expect("events keep coming")
            .unwrap()
            .expect("stream open");
        revisions.extend(
            response
                .events()
                .iter()
                .map(|e| e.kv().unwrap().mod_revision()),
        );
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(
        revisions,
        (1..=200).collect::<Vec<i64>>(),
        "every event once, in revision order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_with_an_untrusted_key_is_refused_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    // A stranger with its own key claims a new cluster with n1 and campaigns.
    let rogue_dir = dir.path().join("rogue");
    let rogue_peer = format!("quic://127.0.0.1:{}", free_port());
    let trusted: Vec<String> = cluster
        .slots
        .iter()
        .map(|s| format!("{:?}", s.key))
        .collect();
    let config = dir.path().join("rogue.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"rogue\"\ndata_dir = {:?}\nlisten_client_urls = [\"http://127.0.0.1:{}\"]\n\
             listen_peer_urls = [{rogue_peer:?}]\ninitial_cluster = \"rogue={rogue_peer},n1={}\"\n\
             heartbeat_interval = 50\nelection_timeout = 500\n[peer_trust]\nkeys = [{}]\n",
            rogue_dir.display().to_string(),
            free_port(),
            cluster.slots[0].peer_url,
            trusted.join(", ")
        ),
    )
    .unwrap();
    let rogue_port = free_port();
    let args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--listen-client-urls".to_string(),
        format!("http://127.0.0.1:{rogue_port}"),
    ];
    let _rogue =
        tokio::task::block_in_place(|| Agent::spawn(dir.path(), rogue_dir, rogue_port, &args));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let log = cluster.agents[0].as_ref().unwrap().log();
        if log.contains("refused a peer whose key is not in peer_trust.keys") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n1 did not refuse the stranger:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The cluster is unaffected.
    let mut client = cluster.client(0).await;
    client.put("/still", "fine", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_lists_adds_and_removes_members() {
    let found = Command::new("etcdctl").arg("version").output().is_ok();
    assert!(found, "etcdctl is not installed: run ./setup.sh");
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 4));
    // Through a follower: it passes membership changes to the leader's
    // client API (the leader takes none forwarded through raft).
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let etcdctl = |args: &[&str]| {
        ok(run_with_timeout(
            Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &cluster.endpoint(follower)])
                .args(args),
            Duration::from_secs(30),
        ))
    };
    let listed = etcdctl(&["member", "list"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(
        listed.lines().all(|l| l.contains(", started, n")),
        "{listed}"
    );

    // etcd tools only take http peer URLs: the agent reads them as QUIC.
    let peer = cluster.slots[3].peer_url.replace("quic://", "http://");
    let added = etcdctl(&["member", "add", "n4", "--learner", "--peer-urls", &peer]);
    assert!(added.contains("added to cluster"), "{added}");
    let id = added.split_whitespace().nth(1).unwrap().to_string();
    let listed = etcdctl(&["member", "list"]);
    assert!(
        listed.contains(&format!("{id}, unstarted, , {}", cluster.slots[3].peer_url)),
        "{listed}"
    );
    // A learner that never started is not promoted: it holds no log.
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let promote = run_with_timeout(
        Command::new("etcdctl").env("ETCDCTL_API", "3").args([
            "--endpoints",
            &cluster.endpoint(leader),
            "member",
            "promote",
            &id,
        ]),
        Duration::from_secs(30),
    );
    assert!(!promote.status.success());
    let refusal = String::from_utf8_lossy(&promote.stderr).into_owned();
    assert!(refusal.contains("not in sync"), "{refusal}");
    let removed = etcdctl(&["member", "remove", &id]);
    assert!(removed.contains("removed from cluster"), "{removed}");
    assert_eq!(etcdctl(&["member", "list"]).lines().count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_update_moves_a_member_to_a_new_peer_url_and_it_keeps_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let (moved, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let etcdctl = |endpoint: String, args: &[&str]| {
        run_with_timeout(
            Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &endpoint])
                .args(args),
            Duration::from_secs(30),
        )
    };
    let listed = ok(etcdctl(cluster.endpoint(other), &["member", "list"]));
    let name = cluster.slots[moved].name.clone();
    let id = listed
        .lines()
        .find(|l| l.contains(&format!(", {name}, ")))
        .and_then(|l| l.split(", ").next())
        .unwrap()
        .to_string();

    // Refused with the reason: another member's URL, an unknown member.
    let taken = etcdctl(
        cluster.endpoint(other),
        &[
            "member",
            "update",
            &id,
            "--peer-urls",
            &cluster.slots[leader].peer_url.replace("quic://", "http://"),
        ],
    );
    assert!(!taken.status.success());
    let why = String::from_utf8_lossy(&taken.stderr);
    assert!(why.contains("is already member"), "{why}");
    let unknown = etcdctl(
        cluster.endpoint(other),
        &[
            "member",
            "update",
            "1234",
            "--peer-urls",
            "http://127.0.0.1:9",
        ],
    );
    assert!(!unknown.status.success());
    let why = String::from_utf8_lossy(&unknown.stderr);
    assert!(why.contains("not found"), "{why}");

    // etcdctl through a follower (passed on to the leader), as etcd tools
    // spell peer URLs (http://, read as QUIC).
    let port = free_port();
    let new_url = format!("quic://127.0.0.1:{port}");
    let updated = ok(etcdctl(
        cluster.endpoint(other),
        &[
            "member",
            "update",
            &id,
            "--peer-urls",
            &format!("http://127.0.0.1:{port}"),
        ],
    ));
    assert!(updated.contains("updated in cluster"), "{updated}");

    // Restarted at its new address, it keeps its id and follows writes.
    tokio::task::block_in_place(|| cluster.stop(moved));
    cluster.slots[moved].peer_url = new_url.clone();
    let initial = cluster.initial_cluster(0..3);
    cluster.write_config(moved, &initial, "new");
    tokio::task::block_in_place(|| cluster.run(moved));
    let mut client = cluster.client(leader).await;
    let put = client.put("/moved", "here", None).await.unwrap();
    let revision = put.header().unwrap().revision();
    wait_for_revision(&cluster, moved, revision).await;
    for i in 0..3 {
        let listed = ok(etcdctl(cluster.endpoint(i), &["member", "list"]));
        assert!(
            listed.contains(&format!("{id}, started, {name}, {new_url}")),
            "member list on {}: {listed}",
            cluster.slots[i].name
        );
    }
    // Raft reaches it both ways at the new address: it can lead.
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    ok(etcdctl(cluster.endpoint(leader), &["move-leader", &id]));
    let now = tokio::task::block_in_place(|| cluster.wait_for_leader());
    assert_eq!(now, moved, "the moved member did not take the lead");
    let mut client = cluster.client(other).await;
    client.put("/led-by-moved", "yes", None).await.unwrap();
    let read = client.get("/led-by-moved", None).await.unwrap();
    assert_eq!(read.kvs()[0].value(), b"yes");
}

/// A follower sends its clients' writes to the leader itself (not through
/// its raft thread) and answers each once applied. Writes through both
/// followers all land, in order, and they go on being answered while the
/// leader moves: each either succeeds or fails in bounded time, and every
/// acknowledged one is on every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_followers_are_answered_while_the_leader_moves() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let followers = [(leader + 1) % 3, (leader + 2) % 3];
    let mut last = 0;
    for n in 0..40 {
        let f = followers[n % 2];
        let put = cluster
            .client(f)
            .await
            .put(format!("/f/{n}"), format!("via {f}"), None)
            .await
            .unwrap();
        let revision = put.header().unwrap().revision();
        assert!(revision > last, "revisions go up: {revision} after {last}");
        last = revision;
        // Answered after the follower applied it: its own store has it.
        let local = cluster
            .client(f)
            .await
            .get(
                format!("/f/{n}"),
                Some(GetOptions::new().with_serializable()),
            )
            .await
            .unwrap();
        assert_eq!(local.kvs()[0].mod_revision(), revision);
    }

    // Now move the leader to each follower in turn while both followers'
    // clients keep writing.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, f) in followers.into_iter().enumerate() {
        let (endpoint, acknowledged, stop) =
            (cluster.endpoint(f), acknowledged.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut client = etcd_client::Client::connect([format!("http://{endpoint}")], None)
                .await
                .unwrap();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let key = format!("/m/{w}/{n}");
                let started = Instant::now();
                let put = client.put(key.clone(), "v", None).await;
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "a write through member {f} took {:?}",
                    started.elapsed()
                );
                if put.is_ok() {
                    acknowledged.lock().unwrap().push(key);
                }
                n += 1;
            }
        }));
    }
    for target in followers {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let current = tokio::task::block_in_place(|| cluster.wait_for_leader());
        let mut client = cluster.client(current).await;
        let members = client.member_list().await.unwrap();
        let id = members
            .members()
            .iter()
            .find(|m| m.name() == cluster.slots[target].name)
            .unwrap()
            .id();
        client.move_leader(id).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 20,
        "too few writes were acknowledged: {}",
        acknowledged.len()
    );
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let revision = cluster
        .client(leader)
        .await
        .get("/m/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    for i in 0..3 {
        wait_for_revision(&cluster, i, revision).await;
        let state = local_state(&cluster, i, "/m/").await;
        for key in &acknowledged {
            assert!(state.contains_key(key), "member {i} lacks {key}");
        }
    }
}

/// A leader sends a round's appends to a peer as one message, and a round
/// of large values must still fit what a peer's transport takes (16 MiB a
/// message): 32 clients each put 1 MiB at once, and every write commits and
/// reaches every member. The leader's disk is made slow (fault injection:
/// each WAL sync 200 ms longer), so that the writes pile up into one round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_round_of_large_values_commits_on_every_member() {
    const CLIENTS: usize = 32;
    const VALUE: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let slow_disk = cluster.slots[leader].data_dir.join("fault-disk");
    std::fs::write(&slow_disk, "slow").unwrap();
    let agent = |i: usize| cluster.agents[i].as_ref().unwrap();
    agent(leader).wait_for_log("Slow", TIMEOUT);
    let start = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let mut writers = Vec::new();
    for c in 0..CLIENTS {
        let (endpoint, start) = (cluster.endpoint(leader), start.clone());
        writers.push(tokio::spawn(async move {
            let mut client = etcd_client::Client::connect([format!("http://{endpoint}")], None)
                .await
                .unwrap();
            start.wait().await;
            let value = vec![b'a' + (c % 26) as u8; VALUE];
            tokio::time::timeout(TIMEOUT, client.put(format!("/big/{c}"), value, None))
                .await
                .unwrap_or_else(|_| panic!("put {c} was not answered within {TIMEOUT:?}"))
                .unwrap_or_else(|e| panic!("put {c} failed: {e}"))
                .header()
                .unwrap()
                .revision()
        }));
    }
    let mut last = 0;
    for writer in writers {
        last = last.max(writer.await.unwrap());
    }
    std::fs::remove_file(&slow_disk).unwrap();
    for i in 0..3 {
        // Raft recovers from a dropped append by sending it again, so the
        // writes would still commit: that no member dropped one is the check.
        let log = agent(i).log();
        assert!(!log.contains("dropped a raft frame"), "member {i}:\n{log}");
        wait_for_revision(&cluster, i, last).await;
        let mut client = cluster.client(i).await;
        for c in 0..CLIENTS {
            let got = client
                .get(
                    format!("/big/{c}"),
                    Some(GetOptions::new().with_serializable()),
                )
                .await
                .unwrap();
            let value = got.kvs()[0].value();
            assert_eq!(value.len(), VALUE, "member {i}, /big/{c}");
            assert!(value.iter().all(|&b| b == b'a' + (c % 26) as u8));
        }
    }
}

/// A leader's own read round goes to one follower only (the one it heard
/// from last, `consensus::read_quorum`). Here that follower dies just after
/// a read of its own; the leader's next rounds are still answered, by the
/// next tick's heartbeats to every member and then by the follower alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_go_on_when_the_follower_a_round_was_sent_to_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let mut client = cluster.client(leader).await;
    client.put("/r/k", "v", None).await.unwrap();
    let doomed = (leader + 1) % 3;
    let mut at_doomed = cluster.client(doomed).await;
    for _ in 0..20 {
        at_doomed.get("/r/k", None).await.unwrap();
    }
    cluster.kill9(doomed);
    let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(3));
    let mut reader = etcd_client::Client::connect(
        [format!("http://{}", cluster.endpoint(leader))],
        Some(options),
    )
    .await
    .unwrap();
    for i in 0..50 {
        let read = reader.get("/r/k", None).await;
        let read = read.unwrap_or_else(|err| panic!("read {i} after the kill: {err}"));
        assert_eq!(read.kvs()[0].value(), b"v");
    }
}
