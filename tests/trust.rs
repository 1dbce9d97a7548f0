//! Trust roots with real agents: the first root vouched for by the pinned
//! root keys, operator keys rotated and revoked by root updates with no
//! restart and no TOML edit, and roots with too few signatures, replayed
//! or deleted, refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{edgeconf, failed, free_port, ok, run_with_timeout, Agent, BIN};

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = ok(run_with_timeout(
        Command::new(BIN).args(["keygen", "--out", path.to_str().unwrap()]),
        Duration::from_secs(20),
    ));
    (path, out.trim().to_string())
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs an offline `edgeconf trust ...` command and writes what it prints
/// to `out`.
fn offline(args: &[&str], out: &Path) {
    let text = ok(run_with_timeout(
        Command::new(BIN).arg("trust").args(args),
        Duration::from_secs(20),
    ));
    std::fs::write(out, text).unwrap();
}

/// Signs the root in `unsigned` with each of `keys` in turn, writing the
/// result to `out`.
fn sign_root(unsigned: &Path, keys: &[&Path], out: &Path) {
    let mut from = unsigned.to_path_buf();
    for key in keys {
        offline(&["sign-root", path(&from), "--key-file", path(key)], out);
        from = out.to_path_buf();
    }
}

fn cluster_id_of(agent: &Agent) -> String {
    let line = ok(edgeconf(agent, &["status"]));
    let first = line.lines().next().unwrap_or_default();
    first.trim().split(", ").nth(8).unwrap().to_string()
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn operator_keys_rotate_and_are_revoked_by_signed_root_updates_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (root1, root1_pub) = keygen(d, "root1.key");
    let (root2, root2_pub) = keygen(d, "root2.key");
    let (old, old_pub) = keygen(d, "old.key");
    let (new, new_pub) = keygen(d, "new.key");
    let config = d.join("agent.toml");
    std::fs::write(
        &config,
        format!("[trust]\nroot_keys = [{root1_pub:?}, {root2_pub:?}]\nroot_threshold = 2\n"),
    )
    .unwrap();
    let port = free_port();
    let agent = Agent::start_with(d, port, &["--config", path(&config)]);
    let cluster_id = cluster_id_of(&agent);
    assert!(ok(edgeconf(&agent, &["trust", "status"])).contains("no trust root in force"));

    // Version 1: the old operator key signs everything; unsigned writes refused.
    let v1 = d.join("v1.json");
    offline(
        &[
            "init",
            "--cluster-id",
            &cluster_id,
            "--root-key",
            &root1_pub,
            "--root-key",
            &root2_pub,
            "--root-threshold",
            "2",
            "--operator-key",
            &old_pub,
            "--locked",
        ],
        &v1,
    );
    let once = d.join("v1.once.json");
    offline(&["sign-root", path(&v1), "--key-file", path(&root1)], &once);
    let err = failed(edgeconf(&agent, &["trust", "push", path(&once)]));
    assert!(
        err.contains("pinned in [trust]") && err.contains("1 more needed"),
        "{err}"
    );
    let signed_v1 = d.join("v1.signed.json");
    offline(
        &["sign-root", path(&once), "--key-file", path(&root2)],
        &signed_v1,
    );
    ok(edgeconf(&agent, &["trust", "push", path(&signed_v1)]));
    wait_until("root 1 in force", || {
        ok(edgeconf(&agent, &["trust", "status"])).contains("trust root version 1 in force")
    });
    ok(edgeconf(
        &agent,
        &["put", "--sign-key", path(&old), "/app/a", "1"],
    ));
    let err = failed(edgeconf(&agent, &["put", "/app/b", "1"]));
    assert!(err.contains("unsigned writes are refused"), "{err}");
    let err = failed(edgeconf(
        &agent,
        &["put", "--sign-key", path(&new), "/app/a", "2"],
    ));
    assert!(err.contains("not trusted"), "{err}");

    // Version 2 trusts the new key beside the old one.
    let current = d.join("current.json");
    std::fs::write(&current, ok(edgeconf(&agent, &["trust", "show"]))).unwrap();
    let v2 = d.join("v2.json");
    offline(
        &["add-key", path(&current), "--operator-key", &new_pub],
        &v2,
    );
    // Signed by one root key only: refused, and nothing changes.
    let v2_once = d.join("v2.once.json");
    offline(
        &["sign-root", path(&v2), "--key-file", path(&root1)],
        &v2_once,
    );
    let err = failed(edgeconf(&agent, &["trust", "push", path(&v2_once)]));
    assert!(err.contains("the current root's keys"), "{err}");
    let v2_signed = d.join("v2.signed.json");
    sign_root(&v2_once, &[&root2], &v2_signed);
    ok(edgeconf(&agent, &["trust", "push", path(&v2_signed)]));
    wait_until("the new key is trusted", || {
        edgeconf(&agent, &["put", "--sign-key", path(&new), "/app/a", "2"])
            .status
            .success()
    });

    // Version 3 revokes the old key: its signatures stop counting.
    std::fs::write(&current, ok(edgeconf(&agent, &["trust", "show"]))).unwrap();
    let v3 = d.join("v3.json");
    offline(
        &["revoke-key", path(&current), "--operator-key", &old_pub],
        &v3,
    );
    let v3_signed = d.join("v3.signed.json");
    sign_root(&v3, &[&root1, &root2], &v3_signed);
    ok(edgeconf(&agent, &["trust", "push", path(&v3_signed)]));
    wait_until("the old key is refused", || {
        !edgeconf(&agent, &["put", "--sign-key", path(&old), "/app/c", "1"])
            .status
            .success()
    });
    ok(edgeconf(
        &agent,
        &["put", "--sign-key", path(&new), "/app/c", "1"],
    ));
    ok(edgeconf(&agent, &["verify", "/app/", "--prefix"]));
    // History says who signed each revision, under which root.
    let history = ok(edgeconf(&agent, &["history", "/app/a"]));
    assert!(
        history.contains(&format!("signed by {new_pub} "))
            && history.contains("under trust root 2"),
        "{history}"
    );
    assert!(history.contains("under trust root 1"), "{history}");
    let status = ok(edgeconf(&agent, &["-w", "json", "trust", "status"]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["root_version"], 3, "{status}");
    assert_eq!(
        status["trusted_keys"],
        serde_json::json!([new_pub]),
        "{status}"
    );

    // Replaying an older root, or deleting the roots, is refused.
    let err = failed(edgeconf(&agent, &["trust", "push", path(&v2_signed)]));
    assert!(err.contains("does not follow"), "{err}");
    let err = failed(edgeconf(
        &agent,
        &["del", "_edgeconf/trust/root/", "--prefix"],
    ));
    assert!(err.contains("hold trust roots"), "{err}");
    let status = ok(edgeconf(&agent, &["trust", "status"]));
    assert!(status.contains("trust root version 3 in force"), "{status}");

    // After a restart the agent walks the stored chain to the same root.
    drop(agent);
    let agent = Agent::start_with(d, port, &["--config", path(&config)]);
    let status = ok(edgeconf(&agent, &["trust", "status"]));
    assert!(status.contains("trust root version 3 in force"), "{status}");
    assert!(
        !edgeconf(&agent, &["put", "--sign-key", path(&old), "/app/d", "1"])
            .status
            .success()
    );
}

#[test]
fn a_root_update_reaches_edges_through_the_feed_and_rotates_their_keys() {
    use common::fleet::fleet_with;
    const EDGES: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (root, root_pub) = keygen(d, "root.key");
    let (_, old_pub) = keygen(d, "old.key");
    let (new, new_pub) = keygen(d, "new.key");
    let trust = format!("[trust]\nroot_keys = [{root_pub:?}]\n");
    let extra = vec![trust; 3 + EDGES];
    // Edges keep /app/ (beside the trust roots, which every edge keeps).
    let head = vec!["sync = [\"/app/\"]".to_string(); 3 + EDGES];
    let cluster = fleet_with(d, EDGES, |_| String::new(), "", &extra, &head);
    let agent = |i: usize| cluster.agents[i].as_ref().unwrap();
    let cluster_id = cluster_id_of(agent(0));
    let in_force = |i: usize, version: u64| {
        let status = edgeconf(agent(i), &["-w", "json", "trust", "status"]);
        status.status.success() && {
            let status: serde_json::Value =
                serde_json::from_slice(&status.stdout).unwrap_or_default();
            status["root_version"] == version
        }
    };

    // Version 1 trusts the old key, version 2 only the new one.
    let v1 = d.join("v1.json");
    offline(
        &[
            "init",
            "--cluster-id",
            &cluster_id,
            "--root-key",
            &root_pub,
            "--operator-key",
            &old_pub,
        ],
        &v1,
    );
    offline(&["sign-root", path(&v1), "--key-file", path(&root)], &v1);
    ok(edgeconf(agent(0), &["trust", "push", path(&v1)]));
    let v2 = d.join("v2.json");
    offline(&["add-key", path(&v1), "--operator-key", &new_pub], &v2);
    offline(&["revoke-key", path(&v2), "--operator-key", &old_pub], &v2);
    let v2_text = std::fs::read_to_string(&v2).unwrap();
    // Two edits make version 3; the old root keys sign it.
    assert!(v2_text.contains("\"version\": 3"), "{v2_text}");
    let err = failed(edgeconf(agent(0), &["trust", "push", path(&v2)]));
    assert!(err.contains("expected 2"), "{err}");
    let v2 = d.join("v2b.json");
    offline(&["add-key", path(&v1), "--operator-key", &new_pub], &v2);
    offline(&["sign-root", path(&v2), "--key-file", path(&root)], &v2);
    ok(edgeconf(agent(0), &["trust", "push", path(&v2)]));

    for i in 0..3 + EDGES {
        wait_until(&format!("agent {i} has root 2 in force"), || in_force(i, 2));
    }
    // A value the new key signs verifies on every edge.
    ok(edgeconf(
        agent(0),
        &["put", "--sign-key", path(&new), "/app/x", "1"],
    ));
    for i in 3..3 + EDGES {
        wait_until(&format!("edge {i} has /app/x"), || {
            let get = edgeconf(
                agent(i),
                &["get", "/app/x", "--print-value-only", "--consistency", "s"],
            );
            get.status.success() && get.stdout == b"1\n"
        });
        let verified = ok(edgeconf(
            agent(i),
            &["verify", "/app/x", "--consistency", "s"],
        ));
        assert!(verified.contains("verified"), "{verified}");
    }
}

#[test]
fn an_edge_cut_off_from_voter_timestamps_reports_itself_stale_within_its_limit() {
    use common::fleet::fleet_with;
    let dir = tempfile::tempdir().unwrap();
    let head: Vec<String> = (0..4)
        .map(|i| {
            if i == 3 {
                "max_staleness = \"3s\"".to_string()
            } else {
                String::new()
            }
        })
        .collect();
    let mut cluster = fleet_with(dir.path(), 1, |_| String::new(), "", &[], &head);
    let stale = |cluster: &common::cluster::Cluster| {
        let status = edgeconf(
            cluster.agents[3].as_ref().unwrap(),
            &["-w", "json", "status"],
        );
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
        status[0]["errors"].as_array().is_some_and(|errors| {
            errors
                .iter()
                .any(|e| e.as_str().unwrap_or("").starts_with("stale"))
        })
    };
    wait_until("the edge holds a fresh voter timestamp", || {
        !stale(&cluster)
    });
    // Fresh for longer than the limit while the voters are up.
    std::thread::sleep(Duration::from_secs(4));
    assert!(!stale(&cluster), "a live edge reported itself stale");

    // The edge cut off by fault injection (every peer message dropped, as a
    // relay that withholds the feed would), the voters still up: stale
    // within the limit (plus the time the status takes to answer), fresh
    // again once the partition heals.
    let partition = cluster.slots[3].data_dir.join("fault-partition");
    std::fs::write(&partition, "").unwrap();
    let cut_off = std::time::Instant::now();
    wait_until("the partitioned edge reports itself stale", || {
        stale(&cluster)
    });
    let took = cut_off.elapsed();
    assert!(
        took <= Duration::from_secs(5),
        "stale after {took:?}, limit 3 s"
    );
    let log = cluster.agents[3].as_ref().unwrap().log();
    assert!(log.contains("this edge is stale"), "{log}");
    std::fs::remove_file(&partition).unwrap();
    wait_until("the edge is fresh once the partition heals", || {
        !stale(&cluster)
    });

    // Every voter down: no new timestamps anywhere. Stale again within the
    // limit.
    for i in 0..3 {
        cluster.stop(i);
    }
    let cut_off = std::time::Instant::now();
    wait_until("the edge reports itself stale", || stale(&cluster));
    let took = cut_off.elapsed();
    assert!(
        took <= Duration::from_secs(5),
        "stale after {took:?}, limit 3 s"
    );

    // Voters back: fresh again.
    for i in 0..3 {
        cluster.run(i);
    }
    wait_until("the edge is fresh again", || !stale(&cluster));
}

#[test]
fn an_unsigned_delete_of_a_protected_key_is_refused_everywhere_and_never_rendered() {
    use common::fleet::fleet_with;
    const AGENTS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (operator, operator_pub) = keygen(d, "operator.key");
    let template = d.join("app.j2");
    std::fs::write(
        &template,
        "{% for e in entries %}{{ e.name }}={{ e.value }}\n{% endfor %}",
    )
    .unwrap();
    let file = |i: usize| d.join(format!("app-{i}.conf"));
    let extra: Vec<String> = (0..AGENTS)
        .map(|i| {
            format!(
                "[trust]\nkeys = [{operator_pub:?}]\n[[trust.prefix]]\nprefix = \"/app/\"\nkeys = [{operator_pub:?}]\n\n\
                 [[render]]\nprefix = \"/app/\"\ntemplate = {:?}\ndest = {:?}\ndebounce = \"1ms\"\n",
                path(&template),
                path(&file(i))
            )
        })
        .collect();
    let head = vec![format!("sync = [\"/app/\"]\nrender_root = {:?}", path(d)); AGENTS];
    let cluster = fleet_with(d, AGENTS - 3, |_| String::new(), "", &extra, &head);
    let agent = |i: usize| cluster.agents[i].as_ref().unwrap();
    let rendered = |i: usize| std::fs::read_to_string(file(i)).unwrap_or_default();

    for (key, value) in [("/app/a", "1"), ("/app/b", "2")] {
        ok(edgeconf(
            agent(0),
            &["put", "--sign-key", path(&operator), key, value],
        ));
    }
    for i in 0..AGENTS {
        wait_until(&format!("agent {i} renders both keys"), || {
            rendered(i) == "a=1\nb=2\n"
        });
    }

    // Unsigned deletes, at every agent (voters and the edge, which
    // forward), of the key and of a range reaching it: all refused.
    for i in 0..AGENTS {
        for args in [&["del", "/app/a"][..], &["del", "/app/", "--prefix"][..]] {
            let err = failed(edgeconf(agent(i), args));
            assert!(err.contains("/app/"), "agent {i}: {err}");
        }
    }
    // A signed delete of the other key goes through and reaches every
    // file, while /app/a never left any.
    ok(edgeconf(
        agent(0),
        &["del", "--sign-key", path(&operator), "/app/b"],
    ));
    for i in 0..AGENTS {
        wait_until(&format!("agent {i} drops /app/b"), || {
            rendered(i) == "a=1\n"
        });
        let log = agent(i).log();
        assert!(!log.contains("left the store"), "agent {i}: {log}");
    }
}

/// Makes an age identity file; returns its path and recipient.
fn secret_identity(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = ok(run_with_timeout(
        Command::new(BIN).args(["keygen", "--secret", "--out", path.to_str().unwrap()]),
        Duration::from_secs(20),
    ));
    (path, out.trim().to_string())
}

#[test]
fn audiences_and_expiry_live_in_the_root_and_hold_on_every_agent() {
    use common::fleet::fleet_with;
    const AGENTS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (root, root_pub) = keygen(d, "root.key");
    let (operator, operator_pub) = keygen(d, "operator.key");
    // n4 holds the identity of the "eu" group; n5 only one of its own.
    let (eu, eu_pub) = secret_identity(d, "eu.age");
    let (us, _) = secret_identity(d, "us.age");
    let file = |i: usize, name: &str| d.join(format!("{name}-{i}"));
    let extra: Vec<String> = (0..AGENTS)
        .map(|i| {
            let identity = match i {
                3 => format!("[secrets]\nidentity_files = [{:?}]\n", path(&eu)),
                4 => format!("[secrets]\nidentity_files = [{:?}]\n", path(&us)),
                _ => String::new(),
            };
            let mut text = format!("[trust]\nroot_keys = [{root_pub:?}]\n{identity}");
            for (key, name) in [
                ("/app/secret", "secret"),
                ("/app/short", "short"),
                ("/app/keep/x", "kept"),
            ] {
                text += &format!(
                    "[[render]]\nkey = {key:?}\ndest = {:?}\ndebounce = \"1ms\"\n",
                    path(&file(i, name))
                );
            }
            text
        })
        .collect();
    let head = vec![format!("sync = [\"/app/\"]\nrender_root = {:?}", path(d)); AGENTS];
    let cluster = fleet_with(d, AGENTS - 3, |_| String::new(), "", &extra, &head);
    let agent = |i: usize| cluster.agents[i].as_ref().unwrap();
    let cluster_id = cluster_id_of(agent(0));

    // Four root versions, each signed and pushed in turn: the operator
    // key; the "eu" audience; /app/keep/ as a prefix of its own; values
    // there kept once expired.
    let v1 = d.join("v1.json");
    let args = ["init", "--cluster-id", &cluster_id, "--root-key", &root_pub];
    offline(
        &[&args[..], &["--operator-key", &operator_pub]].concat(),
        &v1,
    );
    let edits: [&[&str]; 3] = [
        &["set-audience", "--name", "eu", "--recipient", &eu_pub],
        &[
            "add-key",
            "--operator-key",
            &operator_pub,
            "--prefix",
            "/app/keep/",
        ],
        &[
            "set-on-expiry",
            "--prefix",
            "/app/keep/",
            "--on-expiry",
            "keep",
        ],
    ];
    let mut current = v1;
    for (n, edit) in edits.iter().enumerate() {
        sign_root(&current, &[&root], &current);
        ok(edgeconf(agent(0), &["trust", "push", path(&current)]));
        let next = d.join(format!("v{}.json", n + 2));
        offline(&[&edit[..1], &[path(&current)], &edit[1..]].concat(), &next);
        current = next;
    }
    sign_root(&current, &[&root], &current);
    ok(edgeconf(agent(0), &["trust", "push", path(&current)]));
    let status = |i: usize| {
        let out = edgeconf(agent(i), &["-w", "json", "trust", "status"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    for i in 0..AGENTS {
        wait_until(&format!("agent {i} has root 4 in force"), || {
            status(i)["root_version"] == 4
        });
    }
    assert_eq!(status(3)["audiences"], serde_json::json!(["eu"]));
    assert_eq!(status(4)["audiences"], serde_json::json!([]));

    // A secret for "eu": n4 renders it; n5 (and the voters, which hold no
    // identity) never see the plaintext, and say why.
    ok(edgeconf(
        agent(0),
        &[
            "put",
            "--sign-key",
            path(&operator),
            "--audience",
            "eu",
            "/app/secret",
            "hunter2",
        ],
    ));
    wait_until("n4 renders the secret", || {
        std::fs::read_to_string(file(3, "secret")).unwrap_or_default() == "hunter2"
    });
    wait_until("n5 says it cannot decrypt", || {
        agent(4).log().contains("holds no identity of")
    });
    for i in [0, 1, 2, 4] {
        let rendered = std::fs::read_to_string(file(i, "secret")).unwrap_or_default();
        assert!(!rendered.contains("hunter2"), "agent {i}: {rendered}");
    }
    let err = failed(edgeconf(
        agent(0),
        &[
            "put",
            "--sign-key",
            path(&operator),
            "--audience",
            "asia",
            "/app/x",
            "1",
        ],
    ));
    assert!(err.contains("no such audience (it has: eu)"), "{err}");

    // Expiry. Already expired: refused. Under /app/ (refuse, the default)
    // an expired value stops being served and the file keeps its last good
    // content; under /app/keep/ it is served and reported.
    let put = |key: &str, value: &str, expires: &str| {
        edgeconf(
            agent(0),
            &[
                "put",
                "--sign-key",
                path(&operator),
                "--expires",
                expires,
                key,
                value,
            ],
        )
    };
    let err = failed(put("/app/short", "late", "0s"));
    assert!(err.contains("expired at"), "{err}");
    ok(put("/app/short", "brief", "3s"));
    ok(put("/app/keep/x", "kept", "3s"));
    wait_until("the edge renders both", || {
        std::fs::read_to_string(file(3, "short")).unwrap_or_default() == "brief"
            && std::fs::read_to_string(file(3, "kept")).unwrap_or_default() == "kept"
    });
    let verify = |key: &str| edgeconf(agent(3), &["verify", key, "--consistency", "s"]);
    let fresh = ok(verify("/app/short"));
    assert!(fresh.contains(", expires 20"), "{fresh}");
    wait_until("the short value is refused once expired", || {
        !verify("/app/short").status.success()
    });
    let get = failed(edgeconf(
        agent(3),
        &["get", "/app/short", "--consistency", "s"],
    ));
    assert!(get.contains("expired at"), "{get}");
    // /app/keep/x was put after /app/short, so it may expire a second later.
    wait_until("the kept value is reported expired", || {
        let kept = verify("/app/keep/x");
        let text = String::from_utf8_lossy(&kept.stdout);
        kept.status.success() && text.contains("EXPIRED at")
    });
    let kept = ok(verify("/app/keep/x"));
    assert!(
        kept.contains("EXPIRED at") && kept.contains("verified"),
        "{kept}"
    );
    ok(edgeconf(
        agent(3),
        &["get", "/app/keep/x", "--consistency", "s"],
    ));
    assert_eq!(std::fs::read_to_string(file(3, "short")).unwrap(), "brief");
}
