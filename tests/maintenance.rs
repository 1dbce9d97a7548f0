//! etcd's maintenance with real agents and etcdctl: HashKV equal on every
//! member and a corrupted member caught (fault injection), move-leader,
//! the backend quota reached then recovered by compaction, defragmentation
//! and disarm, and auto-compaction observed.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::fleet::{http_get, wait_until};
use common::{edgeconf, etcdctl, failed, free_port, ok, run_with_timeout, Agent, BIN};

fn member_ids(agent: &Agent) -> Vec<(String, String)> {
    let list = ok(etcdctl(agent, &["member", "list"]));
    // "8e9e05c52164694d, started, n1, quic://..., http://..., false"
    list.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(", ").collect();
            (fields[2].to_string(), fields[0].to_string())
        })
        .collect()
}

fn hashkv(agent: &Agent, revision: i64) -> (u64, i64) {
    let out = ok(etcdctl(
        agent,
        &[
            "-w",
            "json",
            "endpoint",
            "hashkv",
            "--rev",
            &revision.to_string(),
        ],
    ));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hashed = &json[0]["HashKV"];
    (
        hashed["hash"].as_u64().unwrap(),
        hashed["compact_revision"].as_i64().unwrap_or(0),
    )
}

#[test]
fn members_agree_on_hashkv_a_corrupted_member_is_alarmed_and_leadership_moves() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(dir.path(), 3);
    let metrics: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for (i, port) in metrics.iter().enumerate() {
        cluster.member_head[i] = format!(
            "corrupt_check_interval = \"1s\"\nlisten_metrics_url = \"http://127.0.0.1:{port}\""
        );
    }
    let initial = cluster.initial_cluster(0..3);
    for i in 0..3 {
        cluster.write_config(i, &initial, "new");
        cluster.run(i);
    }
    let leader = cluster.wait_for_leader();
    let agent = |i: usize| cluster.agents[i].as_ref().unwrap();
    for i in 0..20 {
        ok(etcdctl(
            agent(leader),
            &["put", &format!("/k{}", i % 6), &format!("v{i}")],
        ));
    }
    ok(etcdctl(agent(leader), &["compact", "8"]));
    let read = ok(etcdctl(agent(leader), &["-w", "json", "get", "/k0"]));
    let revision = serde_json::from_str::<serde_json::Value>(&read).unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();
    let at = revision.to_string();
    wait_until(
        "every member applied the writes",
        Duration::from_secs(10),
        || {
            (0..3).all(|i| {
                etcdctl(
                    agent(i),
                    &["get", "/k0", "--consistency", "s", "--rev", &at],
                )
                .status
                .success()
            })
        },
    );
    let hashes: Vec<(u64, i64)> = (0..3).map(|i| hashkv(agent(i), revision)).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    assert_eq!(hashes[0].1, 8);
    let table = ok(edgeconf(
        agent(0),
        &["-w", "table", "endpoint", "hashkv", "--rev", &at],
    ));
    assert!(table.contains(&hashes[0].0.to_string()), "{table}");
    assert!(ok(etcdctl(agent(leader), &["alarm", "list"]))
        .trim()
        .is_empty());

    // Observability: latency histograms per RPC, WAL fsync, apply and
    // store sync; leader changes; each follower's lag and reachability;
    // the process.
    let scraped = http_get(metrics[leader], "/metrics");
    for series in [
        "edgeconf_grpc_request_duration_seconds_bucket{method=\"/etcdserverpb.KV/Put\",le=\"+Inf\"} 20",
        "edgeconf_wal_fsync_duration_seconds_count ",
        "edgeconf_apply_duration_seconds_count ",
        "edgeconf_store_sync_duration_seconds_count ",
        "edgeconf_leader_changes_total ",
        "edgeconf_raft_peer_lag_entries{member=",
        "edgeconf_raft_peer_reachable{member=",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(scraped.contains(series), "/metrics lacks {series}: {scraped}");
    }

    // Bit rot in a follower's store: the leader's next comparison catches
    // it and raises CORRUPT for that member alone.
    let follower = (leader + 1) % 3;
    let ids = member_ids(agent(leader));
    let follower_id = &ids
        .iter()
        .find(|(name, _)| *name == cluster.slots[follower].name)
        .unwrap()
        .1;
    std::fs::write(cluster.slots[follower].data_dir.join("fault-corrupt"), "").unwrap();
    let took = wait_until("the leader raises CORRUPT", Duration::from_secs(15), || {
        ok(etcdctl(agent(leader), &["alarm", "list"])).contains("alarm:CORRUPT")
    });
    let alarms = ok(etcdctl(agent(leader), &["alarm", "list"]));
    let follower_decimal = u64::from_str_radix(follower_id, 16).unwrap().to_string();
    assert_eq!(
        alarms.trim(),
        format!("memberID:{follower_decimal} alarm:CORRUPT"),
        "{alarms}"
    );
    eprintln!("CORRUPT raised {took:?} after the fault");
    assert_ne!(hashkv(agent(follower), revision).0, hashes[0].0);
    let scraped = http_get(metrics[leader], "/metrics");
    assert!(
        scraped.contains(&format!(
            "edgeconf_alarm{{alarm=\"CORRUPT\",member=\"{follower_id}\"}} 1"
        )),
        "{scraped}"
    );
    let health = failed(edgeconf(agent(follower), &["endpoint", "health"]));
    assert!(health.contains("unhealthy"), "{health}");
    ok(etcdctl(agent(leader), &["alarm", "disarm"]));

    // Leadership moves to the third member on request: etcdctl asks the
    // leader; edgeconf asks a follower, which passes it to the leader.
    let third = 3 - leader - follower;
    let third_id = &ids
        .iter()
        .find(|(name, _)| *name == cluster.slots[third].name)
        .unwrap()
        .1;
    let moved = ok(etcdctl(agent(leader), &["move-leader", third_id]));
    assert!(moved.contains("Leadership transferred"), "{moved}");
    assert_eq!(cluster.wait_for_leader(), third);
    ok(edgeconf(agent(leader), &["move-leader", follower_id]));
    assert_eq!(cluster.wait_for_leader(), follower);
}

#[test]
fn the_quota_refuses_writes_until_compaction_defrag_and_disarm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "quota_backend_bytes = 4194304\n").unwrap();
    let agent = Agent::start_with(
        dir.path(),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );
    let value = "x".repeat(100 * 1024);
    let mut refused = None;
    for i in 0..200 {
        let put = etcdctl(&agent, &["put", &format!("/big/{i}"), &value]);
        if !put.status.success() {
            refused = Some(String::from_utf8_lossy(&put.stderr).into_owned());
            break;
        }
    }
    let refused = refused.expect("the quota was never reached");
    assert!(refused.contains("database space exceeded"), "{refused}");
    wait_until("NOSPACE is raised", Duration::from_secs(10), || {
        ok(etcdctl(&agent, &["alarm", "list"])).contains("alarm:NOSPACE")
    });
    // Deletes and compaction still work; small writes do not.
    let small = failed(etcdctl(&agent, &["put", "/small", "1"]));
    assert!(small.contains("database space exceeded"), "{small}");
    let lease = failed(etcdctl(&agent, &["lease", "grant", "60"]));
    assert!(lease.contains("database space exceeded"), "{lease}");
    ok(etcdctl(&agent, &["del", "/big/", "--prefix"]));
    let status = ok(etcdctl(&agent, &["-w", "json", "endpoint", "status"]));
    let revision = serde_json::from_str::<serde_json::Value>(&status).unwrap()[0]["Status"]
        ["header"]["revision"]
        .as_i64()
        .unwrap();
    ok(etcdctl(&agent, &["compact", &revision.to_string()]));
    let defrag = ok(etcdctl(&agent, &["defrag"]));
    assert!(defrag.contains("Finished defragmenting"), "{defrag}");
    ok(etcdctl(&agent, &["alarm", "disarm"]));
    ok(etcdctl(&agent, &["put", "/small", "1"]));
    assert!(ok(etcdctl(&agent, &["alarm", "list"])).trim().is_empty());
}

#[test]
fn auto_compaction_by_revision_keeps_the_newest_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "auto_compaction_mode = \"revision\"\nauto_compaction_retention = \"10\"\n",
    )
    .unwrap();
    let agent = Agent::start_with(
        dir.path(),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );
    for i in 0..30 {
        ok(etcdctl(&agent, &["put", "/k", &i.to_string()]));
    }
    wait_until(
        "history before revision 20 is compacted",
        Duration::from_secs(10),
        || {
            let old = etcdctl(&agent, &["get", "/k", "--rev", "5"]);
            String::from_utf8_lossy(&old.stderr).contains("compacted")
        },
    );
    // The newest ten revisions stay readable.
    assert_eq!(
        ok(etcdctl(
            &agent,
            &["get", "/k", "--rev", "21", "--print-value-only"]
        ))
        .trim(),
        "20"
    );
    assert!(agent.log().contains("auto-compacted"));
}

#[test]
fn a_snapshot_restores_a_new_cluster_serving_every_key_at_its_revision() {
    let dir = tempfile::tempdir().unwrap();
    let old = Cluster::start(&dir.path().join("old"), 3, 3);
    let agent = old.agents[0].as_ref().unwrap();
    for i in 0..50 {
        ok(etcdctl(
            agent,
            &["put", &format!("/k/{i:02}"), &format!("v{i}")],
        ));
    }
    ok(etcdctl(agent, &["del", "/k/07"]));
    let before = ok(etcdctl(agent, &["-w", "json", "get", "/k/", "--prefix"]));
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    let image = dir.path().join("backup.db");
    let saved = ok(edgeconf(
        agent,
        &["snapshot", "save", image.to_str().unwrap()],
    ));
    assert!(saved.contains("Snapshot saved"), "{saved}");
    // etcdctl saves the same stream.
    let by_etcdctl = dir.path().join("etcdctl.db");
    ok(etcdctl(
        agent,
        &["snapshot", "save", by_etcdctl.to_str().unwrap()],
    ));
    let status = ok(edgeconf(
        agent,
        &[
            "-w",
            "json",
            "snapshot",
            "status",
            by_etcdctl.to_str().unwrap(),
        ],
    ));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(status["totalKey"].as_u64().unwrap() >= 49, "{status}");
    // A damaged image is refused.
    let mut bytes = std::fs::read(&image).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    let damaged = dir.path().join("damaged.db");
    std::fs::write(&damaged, &bytes).unwrap();
    let err = failed(edgeconf(
        agent,
        &["snapshot", "status", damaged.to_str().unwrap()],
    ));
    assert!(err.contains("does not match"), "{err}");
    drop(old);

    // Three new members from the image, with other names and ports.
    let mut new = Cluster::new(&dir.path().join("new"), 3);
    let initial = new.initial_cluster(0..3);
    for i in 0..3 {
        let slot = &new.slots[i];
        let restored = ok(run_with_timeout(
            std::process::Command::new(BIN).args([
                "snapshot",
                "restore",
                image.to_str().unwrap(),
                "--data-dir",
                slot.data_dir.to_str().unwrap(),
                "--name",
                &slot.name,
                "--initial-cluster",
                &initial,
            ]),
            Duration::from_secs(30),
        ));
        assert!(restored.contains("restored revision"), "{restored}");
        new.write_config(i, &initial, "new");
        new.run(i);
    }
    new.wait_for_leader();
    for i in 0..3 {
        let agent = new.agents[i].as_ref().unwrap();
        let after = ok(etcdctl(agent, &["-w", "json", "get", "/k/", "--prefix"]));
        let after: serde_json::Value = serde_json::from_str(&after).unwrap();
        assert_eq!(after["kvs"], before["kvs"], "member {i}");
        assert_eq!(after["count"].as_i64(), Some(49));
        assert!(
            after["header"]["revision"].as_i64() >= before["header"]["revision"].as_i64(),
            "{after}"
        );
    }
    // The new cluster takes writes, at the next revision.
    let agent = new.agents[0].as_ref().unwrap();
    ok(etcdctl(agent, &["put", "/k/new", "1"]));
}
