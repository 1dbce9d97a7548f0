//! A hostile peer against real agents: it holds a node key every voter
//! trusts (a stolen edge key) and speaks the real transport (QUIC, mutual
//! TLS, raft frames). Every attack must leave the cluster unharmed, be
//! logged, and be counted in `/metrics`.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::fleet::{http_get, json, wait_until};
use common::{edgeconf, ok};
use edgeconf::transport::{NodeKey, Transport};
use raft::eraftpb::{Entry, Message, MessageType};

const VOTERS: usize = 3;

fn status(cluster: &Cluster, i: usize) -> serde_json::Value {
    let agent = cluster.agents[i].as_ref().unwrap();
    json(ok(edgeconf(agent, &["-w", "json", "status"])))[0].clone()
}

fn message(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut message = Message::default();
    message.set_msg_type(kind);
    message.from = from;
    message.to = to;
    message.term = term;
    message
}

/// A cluster of `slots` slots whose first `VOTERS` run as voters, each
/// serving metrics on the returned port. The slots past them are never
/// started: their keys are trusted by every voter, as an edge's is, and
/// the attacker holds them.
fn voters(dir: &std::path::Path, slots: usize) -> (Cluster, Vec<u16>) {
    voters_with(dir, slots, "")
}

/// [`voters`] with `extra` TOML in every voter's config.
fn voters_with(dir: &std::path::Path, slots: usize, extra: &str) -> (Cluster, Vec<u16>) {
    let mut cluster = Cluster::new(dir, slots);
    cluster.extra_config = extra.to_string();
    let metrics: Vec<u16> = (0..VOTERS).map(|_| common::free_port()).collect();
    for (i, port) in metrics.iter().enumerate() {
        // Stores compared every second: a forged report would raise CORRUPT.
        cluster.member_head[i] = format!(
            "listen_metrics_url = \"http://127.0.0.1:{port}\"\ncorrupt_check_interval = \"1s\""
        );
    }
    let initial = cluster.initial_cluster(0..VOTERS);
    for i in 0..VOTERS {
        cluster.write_config(i, &initial, "new");
        cluster.run(i);
    }
    (cluster, metrics)
}

/// Where slot `i` listens for peers.
fn peer_addr(cluster: &Cluster, i: usize) -> std::net::SocketAddr {
    cluster.slots[i]
        .peer_url
        .trim_start_matches("quic://")
        .parse()
        .unwrap()
}

/// The real transport, run with slot `slot`'s stolen node key (call from
/// within a runtime).
fn hostile(cluster: &Cluster, slot: usize) -> (std::sync::Arc<Transport>, NodeKey) {
    let stolen = NodeKey::load_or_create(&cluster.slots[slot].data_dir).unwrap();
    let transport = Transport::start(
        format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap(),
        &stolen,
        &voter_keys(cluster),
        false,
    )
    .unwrap();
    (transport, stolen)
}

/// Lets a hostile transport send raft messages (what it receives is
/// dropped).
fn deaf_to_raft(cluster: &Cluster, transport: &Transport) {
    let dir = cluster.slots[0].data_dir.with_file_name("attacker");
    let snapshots = edgeconf::transport::SnapshotDir::open(&dir).unwrap();
    transport.attach_raft(std::sync::Arc::new(|_| {}), std::sync::Arc::new(snapshots));
}

/// The voters' node keys (the ones every agent trusts).
fn voter_keys(cluster: &Cluster) -> Vec<[u8; 32]> {
    (0..VOTERS)
        .map(|i| {
            NodeKey::load_or_create(&cluster.slots[i].data_dir)
                .unwrap()
                .public_key_raw()
        })
        .collect()
}

#[test]
fn a_peer_with_a_trusted_key_cannot_speak_raft_for_a_member_or_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, metrics) = voters(dir.path(), VOTERS + 1);
    let leader = cluster.wait_for_leader();
    ok(edgeconf(
        cluster.agents[leader].as_ref().unwrap(),
        &["put", "/app/config", "before"],
    ));
    let before = status(&cluster, leader);
    let term = before["raft_term"].as_u64().unwrap();
    let id = |i: usize| edgeconf::consensus::member_id(&cluster.slots[i].peer_url);
    let addr = |i: usize| peer_addr(&cluster, i);
    let followers: Vec<usize> = (0..VOTERS).filter(|&i| i != leader).collect();

    let (f1, f2) = (followers[0], followers[1]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let attacker = |slot: usize, targets: &[usize]| {
            let (transport, _) = hostile(&cluster, slot);
            deaf_to_raft(&cluster, &transport);
            transport.set_peers(
                &targets
                    .iter()
                    .map(|&i| (id(i), addr(i)))
                    .collect::<Vec<_>>(),
            );
            transport
        };
        // An edge's stolen key: trusted for gossip and the feed, a member
        // of nothing. A follower's stolen key: a member, but only itself.
        let edge = attacker(VOTERS, &followers);
        let follower = attacker(f2, &[f1, leader]);
        for _ in 0..20 {
            let mut forged = Vec::new();
            for &f in &followers {
                forged.extend(forgeries(id(leader), id(f), id(other(&followers, f)), term));
                // Messages as itself: not a member.
                forged.push(message(MessageType::MsgHeartbeat, 0xbad, id(f), term + 1));
            }
            edge.send(forged);
            // As the leader, to the other follower: the key is f2's.
            let as_leader = forgeries(id(leader), id(f1), id(leader), term);
            follower.send(as_leader[..2].to_vec());
            // As itself, to the leader: a membership change proposed
            // through raft (the leader takes them only from its API).
            follower.send(vec![add_member_proposal(id(f2), id(leader), term)]);
            // ...and a move of the other follower to the attacker's address
            // (etcd's MemberUpdate is the leader's API's alone).
            let mut moved = message(MessageType::MsgPropose, id(f2), id(leader), 0);
            let change = edgeconf::store::MemberChange::UpdatePeerUrls {
                id: id(f1),
                peer_urls: vec!["quic://127.0.0.1:9".into()],
            };
            moved.entries = vec![Entry {
                data: edgeconf::consensus::forwarded_member_change(id(f2), 1, change).into(),
                ..Default::default()
            }]
            .into();
            follower.send(vec![moved]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        edge.close();
        follower.close();

        // Raw frames with the follower's key (a member, so its raft
        // connection is admitted): a message claiming 2 GiB, an append of
        // 20 MiB (only snapshots may be that big), then 100 frames in
        // parallel (they queue behind the 16 streams a member may have).
        let configs = edgeconf::transport::tls::quic_configs(
            &NodeKey::load_or_create(&cluster.slots[f2].data_dir).unwrap(),
            &voter_keys(&cluster),
        )
        .unwrap();
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let raw = client
            .connect_with(configs.raft_client.clone(), addr(f1), edgeconf::transport::tls::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let frame = |message: &Message| {
            use protobuf::Message as _;
            let bytes = message.write_to_bytes().unwrap();
            let mut frame = (bytes.len() as u32).to_be_bytes().to_vec();
            frame.extend(bytes);
            frame
        };
        let mut huge = raw.open_uni().await.unwrap();
        huge.write_all(&(2u32 << 30).to_be_bytes()).await.unwrap();
        let _ = huge.write_all(&[0; 1024]).await;
        let _ = huge.finish();
        let mut big = message(MessageType::MsgAppend, id(f2), id(f1), term);
        big.context = vec![0u8; 20 << 20].into();
        let mut stream = raw.open_uni().await.unwrap();
        let _ = stream.write_all(&frame(&big)).await;
        let _ = stream.finish();
        // Read whole (it might have been a snapshot), then refused.
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.stopped()).await;
        // Snapshots as itself (a member may send one): a copy whose bytes
        // do not match their digest, one cut short, and one announcing
        // 16 GiB. Each is refused before raft sees it; the partial copy
        // is removed.
        let hostile_snapshot = |bytes: u64, sent: usize| {
            let mut snapshot = message(MessageType::MsgSnapshot, id(f2), id(f1), term);
            let reference = edgeconf::transport::SnapshotRef {
                applied: 1_000_000,
                bytes,
                sha256: [7; 32],
            };
            snapshot.mut_snapshot().data = reference.encode().into();
            snapshot.mut_snapshot().mut_metadata().index = 1_000_000;
            snapshot.mut_snapshot().mut_metadata().term = term;
            let raw = raw.clone();
            let mut bytes = frame(&snapshot);
            bytes.extend(vec![0xab; sent]);
            async move {
                let mut stream = raw.open_uni().await.unwrap();
                let _ = stream.write_all(&bytes).await;
                let _ = stream.finish();
                tokio::time::timeout(Duration::from_secs(10), stream.stopped()).await
            }
        };
        // (All bytes may be acknowledged before the refusal: it shows in
        // the counts below.)
        let invalid = || {
            let text = http_get(metrics[f1], "/metrics");
            metric(&text, "edgeconf_raft_refused_total{reason=\"snapshot_invalid\"} ").unwrap_or(0)
        };
        for (refused, (bytes, sent)) in [(3 << 20, 3 << 20), (3 << 20, 1 << 20), (16 << 30, 1 << 20)]
            .into_iter()
            .enumerate()
        {
            let _ = hostile_snapshot(bytes, sent).await;
            // One copy is received at a time: wait for the refusal.
            let deadline = Instant::now() + Duration::from_secs(10);
            while refused < 2 && invalid() <= refused as u64 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let small = frame(&message(MessageType::MsgHeartbeatResponse, id(f2), id(f1), term));
        let parallel: Vec<_> = (0..100)
            .map(|_| {
                let (raw, small) = (raw.clone(), small.clone());
                tokio::spawn(async move {
                    let mut stream = raw.open_uni().await.ok()?;
                    stream.write_all(&small).await.ok()?;
                    stream.finish().ok()?;
                    stream.stopped().await.ok()
                })
            })
            .collect();
        let done = tokio::time::timeout(Duration::from_secs(20), async {
            let mut finished = 0;
            for task in parallel {
                if matches!(task.await, Ok(Some(_))) {
                    finished += 1;
                }
            }
            finished
        })
        .await;
        assert_eq!(done, Ok(100), "every small frame was read");
        raw.close(0u32.into(), b"done");

        // A flood of connections with the edge's key: past its share, each
        // is closed at the handshake.
        let configs = edgeconf::transport::tls::quic_configs(
            &NodeKey::load_or_create(&cluster.slots[VOTERS].data_dir).unwrap(),
            &voter_keys(&cluster),
        )
        .unwrap();
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut flood = Vec::new();
        for _ in 0..edgeconf::transport::limits::CONNECTIONS_PER_KEY + 8 {
            let connecting = client
                .connect_with(configs.feed_client.clone(), addr(f1), edgeconf::transport::tls::SERVER_NAME)
                .unwrap();
            flood.push(connecting.await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let refused = flood
            .iter()
            .filter(|c| {
                matches!(c.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(close)) if &close.reason[..] == b"too many connections")
            })
            .count();
        assert_eq!(refused, 8, "connections past the share are closed");
        drop(flood);
        client.close(0u32.into(), b"done");
    });

    // Unharmed: every voter runs, the leader and term stand, writes work
    // and the stored value is the real one.
    for i in 0..VOTERS {
        assert!(
            !cluster.agents[i].as_mut().unwrap().exited(),
            "n{} exited",
            i + 1
        );
    }
    let after = status(&cluster, leader);
    assert_eq!(after["raft_term"], before["raft_term"], "{after}");
    assert_eq!(cluster.wait_for_leader(), leader);
    ok(edgeconf(
        cluster.agents[leader].as_ref().unwrap(),
        &["put", "/app/config", "after"],
    ));
    for i in 0..VOTERS {
        wait_until(
            "every voter has the real value",
            Duration::from_secs(10),
            || {
                ok(edgeconf(
                    cluster.agents[i].as_ref().unwrap(),
                    &[
                        "get",
                        "/app/config",
                        "--print-value-only",
                        "--consistency",
                        "s",
                    ],
                )) == "after\n"
            },
        );
    }
    // Logged and counted: the edge key is turned away at the connection
    // (on both followers: it is no voter key), the follower's key when it speaks for the leader.
    let count = |f: usize, reason: &str| -> u64 {
        let text = http_get(metrics[f], "/metrics");
        let line = format!("edgeconf_raft_refused_total{{reason=\"{reason}\"}} ");
        metric(&text, &line).unwrap_or(0)
    };
    assert_eq!(
        count(f1, "snapshot_invalid"),
        2,
        "{}",
        http_get(metrics[f1], "/metrics")
    );
    let received = cluster.slots[f1].data_dir.join("snapshots/in");
    assert_eq!(
        std::fs::read_dir(&received).unwrap().count(),
        0,
        "no refused copy is kept in {}",
        received.display()
    );
    assert!(
        count(f1, "oversized") >= 3,
        "{}",
        http_get(metrics[f1], "/metrics")
    );
    assert!(
        count(f1, "impersonation") >= 20,
        "{}",
        http_get(metrics[f1], "/metrics")
    );
    for &f in &followers {
        // The voters list the voter keys: the edge key is pinned out.
        assert!(
            count(f, "not_a_voter_key") >= 1,
            "{}",
            http_get(metrics[f], "/metrics")
        );
        let log = cluster.agents[f].as_ref().unwrap().log();
        assert!(
            log.contains("refused a raft connection from a key that speaks for no member"),
            "{log}"
        );
        assert!(!log.contains("panicked"), "{log}");
    }
    let log = cluster.agents[f1].as_ref().unwrap().log();
    assert!(
        log.contains("refused raft messages claiming to be a member"),
        "{log}"
    );
    // No membership change got in.
    let members = json(ok(edgeconf(
        cluster.agents[leader].as_ref().unwrap(),
        &["-w", "json", "member", "list"],
    )));
    assert_eq!(
        members["members"].as_array().unwrap().len(),
        VOTERS,
        "{members}"
    );
    let log = cluster.agents[leader].as_ref().unwrap().log();
    assert!(
        log.contains("refused a membership change forwarded by a follower"),
        "{log}"
    );
    assert!(
        log.contains("refused a member record change forwarded by a follower"),
        "{log}"
    );
    let raft = ok(edgeconf(
        cluster.agents[leader].as_ref().unwrap(),
        &["-w", "simple", "member", "list", "--raft"],
    ));
    assert!(raft.contains(&cluster.slots[f1].peer_url), "{raft}");
    assert!(
        !raft.contains("127.0.0.1:9,") && !raft.contains("127.0.0.1:9 "),
        "{raft}"
    );
}

#[test]
fn a_follower_cannot_propose_what_its_clients_may_not() {
    use edgeconf::auth::{AuthCommand, Credential};
    use edgeconf::store::{Command, PutRequest};

    let dir = tempfile::tempdir().unwrap();
    let (cluster, metrics) = voters(dir.path(), VOTERS);
    let leader = cluster.wait_for_leader();
    let followers: Vec<usize> = (0..VOTERS).filter(|&i| i != leader).collect();
    let (f1, f2) = (followers[0], followers[1]);
    let agent = |i: usize| cluster.agents[i].as_ref().unwrap();
    // Set up through a follower: auth changes go to the leader's API.
    for args in [
        &["put", "/app/config", "before"][..],
        &["user", "add", "root:rootpw"],
        &["auth", "enable"],
    ] {
        ok(edgeconf(agent(f1), args));
    }
    let root = |i: usize, args: &[&str]| {
        let mut all = vec!["--user", "root:rootpw"];
        all.extend_from_slice(args);
        edgeconf(agent(i), &all)
    };
    ok(root(f1, &["put", "/app/config", "real"]));
    // A key on a lease: revoking the lease would delete it.
    let granted = ok(root(f1, &["lease", "grant", "600"]));
    let lease_hex = granted.split_whitespace().nth(1).unwrap().to_string();
    let lease = i64::from_str_radix(&lease_hex, 16).unwrap();
    ok(root(
        f1,
        &["put", "/app/leased", "kept", "--lease", &lease_hex],
    ));

    let id = |i: usize| edgeconf::consensus::member_id(&cluster.slots[i].peer_url);
    let mut proposals = Vec::new();
    {
        let put =
            |key: &str| Command::Put(PutRequest::new(key.as_bytes().to_vec(), b"owned".to_vec()));
        // The auth revision is a small number: try each, so that one of
        // them is the leader's current one.
        let mut seq = 0;
        for auth_revision in 0..16 {
            let attempts = [
                (Command::Auth(AuthCommand::Disable), Credential::None),
                (put("/app/config"), Credential::None),
                (
                    put("/app/config"),
                    Credential::Token("edgeconf1.Zm9yZ2Vk.dGFn".into()),
                ),
                (put("_edgeconf/rollout/progress/r1"), Credential::None),
                (Command::Compact { revision: 2 }, Credential::None),
            ];
            let authorized = attempts.map(|(command, credential)| {
                let command = Command::Authorized {
                    auth_revision,
                    command: Box::new(command),
                };
                (command, credential)
            });
            proposals.push(forwarded(id(f2), id(leader), seq + 1, authorized));
            seq += 5;
        }
        // And a write with no auth revision at all, and a lease revoke (it
        // deletes the lease's keys) with no credential.
        let bare = (put("/app/config"), Credential::None);
        proposals.push(forwarded(id(f2), id(leader), seq + 1, [bare]));
        let revoke = (Command::LeaseRevoke { id: lease }, Credential::None);
        proposals.push(forwarded(id(f2), id(leader), seq + 2, [revoke]));
    }
    // f2's stolen key: a member, speaking as itself to the leader.
    send_as(&cluster, f2, leader, proposals);

    // Auth is still on (an anonymous read is refused), the value is the
    // real one on every member, nothing was compacted, and the leader
    // says why it refused.
    let anonymous = edgeconf(agent(leader), &["get", "/app/config"]);
    assert!(!anonymous.status.success(), "auth was disabled");
    for i in 0..VOTERS {
        wait_until(
            "every voter has the real value",
            Duration::from_secs(10),
            || {
                ok(root(
                    i,
                    &[
                        "get",
                        "/app/config",
                        "--print-value-only",
                        "--consistency",
                        "s",
                    ],
                )) == "real\n"
            },
        );
    }
    // Compacted at 2, revision 1 would be gone.
    ok(root(leader, &["get", "/app/config", "--rev", "1"]));
    let leased = ok(root(leader, &["get", "/app/leased", "--print-value-only"]));
    assert_eq!(leased, "kept\n", "the lease was revoked");
    // Refused entries are counted: in each of the 16 rounds at least the
    // auth change, the compaction and the record rewrite (the writes pass
    // this check when stamped with an older auth revision, and are refused
    // where they apply), then the bare write and the revoke.
    let refused = forwarded_refused(metrics[leader]);
    assert!((16 * 3 + 2..=16 * 5 + 2).contains(&refused), "{refused}");
    let log = agent(leader).log();
    for reason in [
        "an auth change (followers send these",
        "a compaction (followers send these",
        "the client may not",
        "does not check out on the leader",
        "_edgeconf/",
        "without the auth revision",
        "a lease revoke the client may not make",
    ] {
        assert!(
            log.contains("refused a command forwarded by a follower") && log.contains(reason),
            "{reason}: {log}"
        );
    }
    // Followers' own clients are unharmed: writes through a follower still
    // reach the log, checked again by the leader.
    ok(root(f2, &["put", "/app/config", "after"]));
    let value = ok(root(leader, &["get", "/app/config", "--print-value-only"]));
    assert_eq!(value, "after\n");
    // ... and so are their lease revokes, with the client's credential.
    ok(root(f2, &["lease", "revoke", &lease_hex]));
    let gone = ok(root(leader, &["get", "/app/leased", "--print-value-only"]));
    assert_eq!(gone, "", "the revoked lease's key is deleted");
}

/// A follower's stolen key cannot forward writes that skip what the
/// leader's API checks of signed config: an unsigned write under a
/// protected prefix, a change signed by a key the cluster does not trust,
/// a change whose value was swapped after signing, and a correctly signed
/// change to a key under a rollout.
#[test]
fn a_follower_cannot_forward_writes_that_skip_signatures_or_rollouts() {
    use edgeconf::signing::{keys, root, Op, SignedChange};
    use edgeconf::store::{Command, PutRequest};

    let dir = tempfile::tempdir().unwrap();
    let operator_key = dir.path().join("operator.key");
    let public = common::keygen(&operator_key);
    let trust = format!("[trust]\nkeys = [{public:?}]\n[[trust.prefix]]\nprefix = \"/app/\"\n");
    let (cluster, metrics) = voters_with(dir.path(), VOTERS, &trust);
    let leader = cluster.wait_for_leader();
    let followers: Vec<usize> = (0..VOTERS).filter(|&i| i != leader).collect();
    let f2 = followers[1];
    let agent = |i: usize| cluster.agents[i].as_ref().unwrap();
    let sign_key = operator_key.to_str().unwrap();
    ok(edgeconf(
        agent(leader),
        &["put", "--sign-key", sign_key, "/app/config", "real"],
    ));
    // A rollout of /app/rolled that stays in its first stage (60 s bake).
    ok(edgeconf(
        agent(leader),
        &[
            "rollout",
            "start",
            "--key",
            "/app/rolled",
            "--sign-key",
            sign_key,
            "--value",
            "staged",
        ],
    ));

    let operator = keys::read_signing_key(&operator_key).unwrap();
    let stranger = keys::generate_signing_key().unwrap();
    let ours = status(&cluster, leader)["header"]["cluster_id"]
        .as_u64()
        .unwrap();
    let signed_for =
        |cluster_id: u64, signer: &ed25519_dalek::SigningKey, key: &str, value: &str| {
            let change = SignedChange::sign(
                signer,
                key.as_bytes().to_vec(),
                Op::Put,
                1_000,
                false,
                value.as_bytes().to_vec(),
                edgeconf::signing::Binding {
                    cluster_id,
                    root_version: 0,
                },
            )
            .unwrap();
            Command::SignedPut {
                put: PutRequest::new(key.as_bytes().to_vec(), change.to_stored()),
                sequence: 1_000,
            }
        };
    let signed = |signer: &ed25519_dalek::SigningKey, key: &str, value: &str| {
        signed_for(ours, signer, key, value)
    };
    // Signed by the operator, then the value swapped in the stored bytes.
    let swapped = {
        let Command::SignedPut { mut put, sequence } = signed(&operator, "/app/config", "evil!")
        else {
            unreachable!()
        };
        let at = put.value.windows(5).position(|w| w == b"evil!").unwrap();
        put.value[at..at + 5].copy_from_slice(b"owned");
        Command::SignedPut { put, sequence }
    };
    let attempts = [
        Command::Put(PutRequest::new(b"/app/config".to_vec(), b"owned".to_vec())),
        signed(&stranger, "/app/config", "owned"),
        swapped,
        signed(&operator, "/app/rolled", "skips the stages"),
        // The operator's real signature, made for another cluster.
        signed_for(ours ^ 1, &operator, "/app/config", "replayed"),
        // A trust root naming the stranger, signed by the stranger.
        Command::Put(PutRequest::new(root::root_key(1), {
            let stranger_pub = stranger.verifying_key().to_bytes();
            let mut forged = root::SignedRoot::new(root::Root {
                cluster_id: ours,
                version: 1,
                expires_unix: u64::MAX,
                root_keys: vec![stranger_pub],
                root_threshold: 1,
                keys: vec![stranger_pub],
                prefixes: Vec::new(),
                allow_unsigned: true,
                audiences: Vec::new(),
            });
            forged.sign(&stranger).unwrap();
            forged.to_stored()
        })),
    ];
    let id = |i: usize| edgeconf::consensus::member_id(&cluster.slots[i].peer_url);
    let anonymous = attempts.map(|command| (command, edgeconf::auth::Credential::None));
    send_as(
        &cluster,
        f2,
        leader,
        vec![forwarded(id(f2), id(leader), 1, anonymous)],
    );

    // Every voter keeps the real value; the rolled key holds no value
    // that skipped the stages; the leader says why it refused each.
    for i in 0..VOTERS {
        let get = |key: &str| {
            ok(edgeconf(
                agent(i),
                &["get", key, "--print-value-only", "--consistency", "s"],
            ))
        };
        wait_until("the real value stands", Duration::from_secs(10), || {
            get("/app/config") == "real\n"
        });
        assert!(!get("/app/config").contains("replayed"));
        assert!(!get("/app/rolled").contains("skips the stages"));
    }
    let refused = forwarded_refused(metrics[leader]);
    assert_eq!(refused, 6);
    let log = agent(leader).log();
    for reason in [
        "unsigned writes are refused",
        "is not trusted",
        "bad signature",
        "is being rolled out",
        "not for this cluster",
        "trust roots cannot be written",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("refused a command forwarded by a follower")
                    && l.contains(reason)),
            "{reason}: {log}"
        );
    }
}

#[test]
fn a_peer_with_a_trusted_key_cannot_speak_for_another_member_in_gossip() {
    use edgeconf::gossip::message::Body;
    use edgeconf::gossip::{Message as Gossip, Meta, Update};

    let dir = tempfile::tempdir().unwrap();
    let (cluster, metrics) = voters(dir.path(), VOTERS + 1);
    cluster.wait_for_leader();
    let name = |i: usize| cluster.slots[i].name.clone();
    let addr = |i: usize| peer_addr(&cluster, i);
    let alive_everywhere = |count: usize| {
        let line = format!("edgeconf_gossip_members{{state=\"alive\"}} {count}");
        metrics
            .iter()
            .all(|&port| http_get(port, "/metrics").lines().any(|l| l == line))
    };
    wait_until(
        "every voter sees the others",
        Duration::from_secs(10),
        || alive_everywhere(VOTERS),
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The never-started slot's key: trusted by every voter, as an
        // edge's is.
        let (transport, stolen) = hostile(&cluster, VOTERS);
        let signing = stolen.signing_key().unwrap();
        transport.attach_gossip(std::sync::Arc::new(|_, _, _| {}));
        let me: std::sync::Arc<str> = name(VOTERS).into();
        let my_addr: std::sync::Arc<str> = transport.local_addr().unwrap().to_string().into();
        let forged_meta = Meta {
            role: "voter".into(),
            // n3's store, said to differ from the leader's at revision 1.
            store: edgeconf::gossip::StoreReport {
                db_size: 1,
                hash: 0xbad,
                revision: 1,
                compact_revision: 0,
            },
            services: vec![edgeconf::gossip::ServiceState {
                id: "db".into(),
                name: "db".into(),
                address: "10.6.6.6".into(),
                port: 5432,
                tags: Vec::new(),
                health: edgeconf::gossip::Health::Passing,
                output: String::new(),
            }],
            ..Meta::default()
        };
        let forgeries = vec![
            // "n1 left" at u64::MAX, signed by the attacker.
            Update::Left {
                id: name(0).into(),
                incarnation: u64::MAX,
                sig: Vec::new(),
            }
            .signed(&signing),
            // "n2 left", in n2's name.
            Update::Left {
                id: name(1).into(),
                incarnation: 50,
                sig: Vec::new(),
            }
            .signed(&signing),
            // n3 announcing a database it does not run, under the
            // attacker's key.
            Update::Alive {
                id: name(2).into(),
                incarnation: 50,
                addr: my_addr.clone(),
                meta: std::sync::Arc::new(forged_meta),
                key: stolen.public_key_raw(),
                sig: Vec::new(),
            }
            .signed(&signing),
            // "n1 is dead, says n2".
            Update::Dead {
                id: name(0).into(),
                incarnation: 1,
                from: name(1).into(),
                sig: Vec::new(),
            }
            .signed(&signing),
        ];
        for _ in 0..5 {
            for i in 0..VOTERS {
                let honest = Gossip {
                    from: me.clone(),
                    from_addr: my_addr.clone(),
                    body: Body::Gossip,
                    updates: forgeries.clone(),
                };
                transport.gossip().send(addr(i), honest.encode());
                // A message in another voter's name over this connection.
                let impostor = Gossip {
                    from: name((i + 1) % VOTERS).into(),
                    from_addr: addr((i + 1) % VOTERS).to_string().into(),
                    body: Body::Gossip,
                    updates: Vec::new(),
                };
                transport.gossip().send(addr(i), impostor.encode());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        transport.close();
    });

    // Unharmed: every voter still sees the three alive, nobody runs the
    // forged database, and each refusal is counted and logged.
    tokio::task::block_in_place(|| std::thread::sleep(Duration::from_secs(3)));
    assert!(alive_everywhere(VOTERS));
    for (i, &port) in metrics.iter().enumerate() {
        let text = http_get(port, "/metrics");
        // n3 takes the announcement in its own name as a bad signature.
        let reasons: &[&str] = if i == 2 {
            &["impossible_incarnation", "bad_signature", "impersonation"]
        } else {
            &[
                "impossible_incarnation",
                "bad_signature",
                "key_changed",
                "impersonation",
            ]
        };
        for reason in reasons {
            let line = format!("edgeconf_gossip_refused_total{{reason=\"{reason}\"}} ");
            let count = metric(&text, &line).unwrap_or(0);
            assert!(count >= 1, "n{}: {reason} not counted:\n{text}", i + 1);
        }
        let agent = cluster.agents[i].as_ref().unwrap();
        let services = ok(edgeconf(agent, &["-w", "json", "service", "list"]));
        assert!(!services.contains("10.6.6.6"), "{services}");
        // The forged store report raised no alarm on anyone.
        let alarms = ok(edgeconf(agent, &["alarm", "list"]));
        assert!(!alarms.contains("CORRUPT"), "n{}: {alarms}", i + 1);
        let log = agent.log();
        assert!(
            log.contains("refused a gossip update with a bad signature"),
            "{log}"
        );
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// A follower's stolen key cannot tell the other follower that entries
/// are durable on the leader (`consensus::leader_persisted`): only the
/// leader of the receiver's term may, and a notice from any other member
/// is dropped and counted. The leader's own notices work meanwhile: puts
/// through a follower are answered from them.
#[test]
fn a_follower_cannot_tell_another_what_the_leader_has_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, metrics) = voters(dir.path(), VOTERS);
    let (leader, f1, f2) = leader_and_followers(&cluster);
    let agent = |i: usize| cluster.agents[i].as_ref().unwrap();
    let counter = |i: usize, line: &str| counter(metrics[i], line);
    let inferred = |i: usize| counter(i, "edgeconf_commits_inferred_total ");
    let forged = |i: usize| counter(i, "edgeconf_raft_refused_total{reason=\"forged_notice\"} ");

    // Sequential puts through f1: each is answered once f1 and the leader
    // both hold it, and every member has it.
    for n in 0..20 {
        ok(edgeconf(agent(f1), &["put", "/app/seq", &n.to_string()]));
    }
    assert!(inferred(f1) >= 1, "{}", http_get(metrics[f1], "/metrics"));
    for i in 0..VOTERS {
        let value = ok(edgeconf(
            agent(i),
            &["get", "/app/seq", "--print-value-only"],
        ));
        assert_eq!(value, "19\n", "member {i}");
    }

    // f2's key, as itself, to f1: "my log is durable through a far index",
    // in f1's term and the next. (As the leader it cannot even speak: the
    // transport refuses a key speaking for another member.)
    let term = status(&cluster, leader)["raft_term"].as_u64().unwrap();
    let id = |i: usize| edgeconf::consensus::member_id(&cluster.slots[i].peer_url);
    let notices: Vec<Message> = (0..20)
        .map(|n| edgeconf::consensus::persisted_notice(id(f2), id(f1), term + n % 2, u64::MAX / 2))
        .collect();
    send_forged(&cluster, &metrics, f2, f1, notices, "forged_notice");

    // Unharmed: writes through either follower still reach every member.
    ok(edgeconf(agent(f2), &["put", "/app/seq", "after"]));
    for i in 0..VOTERS {
        wait_until(
            "every member has the write",
            Duration::from_secs(10),
            || {
                ok(edgeconf(
                    agent(i),
                    &[
                        "get",
                        "/app/seq",
                        "--print-value-only",
                        "--consistency",
                        "s",
                    ],
                )) == "after\n"
            },
        );
    }
    assert_eq!(forged(leader), 0);
}

/// A follower's linearizable read is answered by the leader at once when
/// the two of them are a quorum (`consensus::read_asks`), so a follower
/// takes a read answer only from the leader of its term: one from another
/// member, however it names the read, is dropped and counted, and reads
/// go on seeing every write.
#[test]
fn a_follower_takes_read_answers_only_from_its_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, metrics) = voters(dir.path(), VOTERS);
    let (leader, f1, f2) = leader_and_followers(&cluster);
    let agent = |i: usize| cluster.agents[i].as_ref().unwrap();
    let counter = |i: usize, line: &str| counter(metrics[i], line);
    let forged = |i: usize| {
        counter(
            i,
            "edgeconf_raft_refused_total{reason=\"forged_read_answer\"} ",
        )
    };
    let read_at = |i: usize| {
        ok(edgeconf(
            agent(i),
            &["get", "/app/read", "--print-value-only"],
        ))
    };

    ok(edgeconf(agent(leader), &["put", "/app/read", "1"]));
    assert_eq!(read_at(f1), "1\n");
    assert!(
        counter(leader, "edgeconf_reads_witnessed_total ") >= 1,
        "{}",
        http_get(metrics[leader], "/metrics")
    );

    // f2's key, as itself, to f1: "your reads may be served at index 1",
    // for the rounds f1 would start next (a context is the asker's id and
    // a counter), in f1's term and the next.
    let term = status(&cluster, leader)["raft_term"].as_u64().unwrap();
    let id = |i: usize| edgeconf::consensus::member_id(&cluster.slots[i].peer_url);
    let answers: Vec<Message> = (0..20u64)
        .map(|n| {
            let mut answer = message(MessageType::MsgReadIndexResp, id(f2), id(f1), term + n % 2);
            answer.index = 1;
            let mut ctx = id(f1).to_be_bytes().to_vec();
            ctx.extend_from_slice(&n.to_be_bytes());
            answer.entries = vec![Entry {
                data: ctx.into(),
                ..Default::default()
            }]
            .into();
            answer
        })
        .collect();
    send_forged(&cluster, &metrics, f2, f1, answers, "forged_read_answer");

    // Unharmed: f1's linearizable reads still see the newest write.
    ok(edgeconf(agent(leader), &["put", "/app/read", "2"]));
    assert_eq!(read_at(f1), "2\n");
    assert_eq!(forged(leader), 0);
}

/// The leader of the voters, and its two followers.
fn leader_and_followers(cluster: &Cluster) -> (usize, usize, usize) {
    let leader = cluster.wait_for_leader();
    let followers: Vec<usize> = (0..VOTERS).filter(|&i| i != leader).collect();
    (leader, followers[0], followers[1])
}

/// Sends `messages`, half of them in `to`'s term and half in the next,
/// from slot `from` with its stolen key, and checks that `to` counts the
/// half of its term as refused for `reason`, and does not panic.
fn send_forged(
    cluster: &Cluster,
    metrics: &[u16],
    from: usize,
    to: usize,
    messages: Vec<Message>,
    reason: &str,
) {
    let line = format!("edgeconf_raft_refused_total{{reason=\"{reason}\"}} ");
    let refused = || counter(metrics[to], &line);
    let of_the_term = messages.len() as u64 / 2;
    send_as(cluster, from, to, messages);
    wait_until(
        &format!("member {to} counts the forged messages"),
        Duration::from_secs(10),
        || refused() >= of_the_term,
    );
    assert_eq!(
        refused(),
        of_the_term,
        "only the ones of its term are forged"
    );
    let log = cluster.agents[to].as_ref().unwrap().log();
    assert!(!log.contains("panicked"), "{log}");
}

/// The counter on the `/metrics` line of the server on `port` that starts
/// with `line`, 0 while there is none.
fn counter(port: u16, line: &str) -> u64 {
    metric(&http_get(port, "/metrics"), line).unwrap_or(0)
}

/// The value of the `/metrics` line that starts with `line` (its name and
/// labels, then a space), if `text` has one.
fn metric(text: &str, line: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line))
        .map(|n| n.trim().parse().unwrap())
}

/// `edgeconf_forwarded_refused_total` as the metrics on `port` say.
fn forwarded_refused(port: u16) -> u64 {
    let text = http_get(port, "/metrics");
    metric(&text, "edgeconf_forwarded_refused_total ")
        .unwrap_or_else(|| panic!("no edgeconf_forwarded_refused_total in {text}"))
}

/// Sends `messages` to `leader` over the real transport with slot `from`'s
/// stolen node key, and gives the leader a second to take them in.
fn send_as(cluster: &Cluster, from: usize, leader: usize, messages: Vec<Message>) {
    let leader_id = edgeconf::consensus::member_id(&cluster.slots[leader].peer_url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (transport, _) = hostile(cluster, from);
        deaf_to_raft(cluster, &transport);
        transport.set_peers(&[(leader_id, peer_addr(cluster, leader))]);
        for message in messages {
            transport.send(vec![message]);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        transport.close();
    });
}

/// A follower's `MsgPropose` to the leader, as raft forwards one, of
/// `commands` with their clients' credentials, numbered from `first_seq`.
fn forwarded(
    from: u64,
    leader: u64,
    first_seq: u64,
    commands: impl IntoIterator<Item = (edgeconf::store::Command, edgeconf::auth::Credential)>,
) -> Message {
    let mut proposal = message(MessageType::MsgPropose, from, leader, 0);
    for (seq, (command, credential)) in (first_seq..).zip(commands) {
        proposal.entries.push(Entry {
            data: edgeconf::consensus::forwarded_entry(from, seq, command, credential).into(),
            ..Default::default()
        });
    }
    proposal
}

/// A follower's proposal, as raft forwards one, of a conf change adding a
/// learner the attacker controls.
fn add_member_proposal(from: u64, leader: u64, term: u64) -> Message {
    use protobuf::Message as _;
    let mut single = raft::eraftpb::ConfChangeSingle::default();
    single.set_change_type(raft::eraftpb::ConfChangeType::AddLearnerNode);
    single.node_id = 0xbad;
    let change = raft::eraftpb::ConfChangeV2 {
        changes: vec![single].into(),
        ..Default::default()
    };
    let mut entry = Entry::default();
    entry.set_entry_type(raft::eraftpb::EntryType::EntryConfChangeV2);
    entry.data = change.write_to_bytes().unwrap().into();
    let mut proposal = message(MessageType::MsgPropose, from, leader, term);
    proposal.entries = vec![entry].into();
    proposal
}

fn other(followers: &[usize], f: usize) -> usize {
    followers.iter().copied().find(|&o| o != f).unwrap()
}

/// A heartbeat from `leader` with a commit far past the log (raft-rs would
/// panic on it), an append from `leader` that rewrites the log, and a vote
/// request from `voter` with a huge term (accepted, it would depose the
/// leader), all to `to`.
fn forgeries(leader: u64, to: u64, voter: u64, term: u64) -> Vec<Message> {
    let mut heartbeat = message(MessageType::MsgHeartbeat, leader, to, term);
    heartbeat.commit = u64::MAX / 2;
    let mut append = message(MessageType::MsgAppend, leader, to, term);
    append.index = 1;
    append.log_term = 1;
    append.commit = u64::MAX / 2;
    append.entries = vec![Entry {
        index: 2,
        term,
        data: b"forged".to_vec().into(),
        ..Default::default()
    }]
    .into();
    let mut vote = message(MessageType::MsgRequestVote, voter, to, u64::MAX / 2);
    vote.index = u64::MAX / 2;
    vote.log_term = u64::MAX / 2;
    vec![heartbeat, append, vote]
}
