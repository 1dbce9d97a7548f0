//! Signed config end to end: real agents, the real CLI, etcdctl, and a
//! forged value planted in a follower's store.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cluster::Cluster;
use common::{edgeconf, etcdctl, failed, free_port, ok, run_with_timeout, stdout, Agent, BIN};

/// Operator keys and a fleet identity made with `edgeconf keygen`.
struct Keys {
    admin: PathBuf,
    admin_pub: String,
    team: PathBuf,
    team_pub: String,
    stranger: PathBuf,
    stranger_pub: String,
    fleet: PathBuf,
    fleet_recipient: String,
}

fn keygen(dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = ok(run_with_timeout(
        Command::new(BIN)
            .args(["keygen", "--out", path.to_str().unwrap()])
            .args(extra),
        Duration::from_secs(20),
    ));
    (path, out.trim().to_string())
}

impl Keys {
    fn new(dir: &Path) -> Keys {
        let (admin, admin_pub) = keygen(dir, "admin.key", &[]);
        let (team, team_pub) = keygen(dir, "team.key", &[]);
        let (stranger, stranger_pub) = keygen(dir, "stranger.key", &[]);
        let (fleet, fleet_recipient) = keygen(dir, "fleet.age", &["--secret"]);
        Keys {
            admin,
            admin_pub,
            team,
            team_pub,
            stranger,
            stranger_pub,
            fleet,
            fleet_recipient,
        }
    }

    /// Admin signs anything; the team signs under /app/team/ only; /app/
    /// is protected; other keys take unsigned writes.
    fn toml(&self) -> String {
        format!(
            "[trust]\nkeys = [{:?}]\n\n[[trust.prefix]]\nprefix = \"/app/\"\n\n\
             [[trust.prefix]]\nprefix = \"/app/team/\"\nkeys = [{:?}]\n\n\
             [secrets]\nidentity_files = [{:?}]\nrecipients = [{:?}]\n",
            self.admin_pub,
            self.team_pub,
            self.fleet.display().to_string(),
            self.fleet_recipient
        )
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn start_signed_agent(dir: &Path, keys: &Keys) -> Agent {
    let config = dir.join("agent.toml");
    std::fs::write(&config, keys.toml()).unwrap();
    Agent::start_with(dir, free_port(), &["--config", path(&config)])
}

fn revision(agent: &Agent) -> i64 {
    let json: serde_json::Value = serde_json::from_str(&ok(edgeconf(
        agent,
        &["-w", "json", "get", "/", "--prefix"],
    )))
    .unwrap();
    json["header"]["revision"].as_i64().unwrap()
}

#[test]
fn keygen_writes_private_keys_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "op.key", &[]);
    assert!(public.starts_with("ed25519:"), "{public}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = run_with_timeout(
        Command::new(BIN).args(["keygen", "--out", path(&key)]),
        Duration::from_secs(20),
    );
    assert!(failed(again).contains("already exists"));
    let (_, recipient) = keygen(dir.path(), "fleet.age", &["--secret"]);
    assert!(recipient.starts_with("age1"), "{recipient}");
}

#[test]
fn signed_writes_are_accepted_shown_and_every_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let agent = start_signed_agent(dir.path(), &keys);
    let admin = path(&keys.admin);

    // Signed on the client, verified on the agent, shown with its signer.
    ok(edgeconf(
        &agent,
        &["put", "--sign-key", admin, "/app/port", "8080"],
    ));
    let shown = ok(edgeconf(&agent, &["get", "/app/port"]));
    assert!(
        shown.starts_with("/app/port\n8080\n# signed by "),
        "{shown}"
    );
    assert!(
        shown.contains(&keys.admin_pub) && shown.contains("verified"),
        "{shown}"
    );
    assert_eq!(
        ok(edgeconf(
            &agent,
            &["get", "/app/port", "--print-value-only"]
        )),
        "8080\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(edgeconf(&agent, &["-w", "json", "get", "/app/port"]))).unwrap();
    assert_eq!(
        json["kvs"][0]["signature"]["signer"],
        keys.admin_pub.as_str()
    );
    assert_eq!(json["kvs"][0]["signature"]["verified"], true);
    // The team key signs under its own prefix.
    ok(edgeconf(
        &agent,
        &["put", "--sign-key", path(&keys.team), "/app/team/x", "1"],
    ));

    // Offline signing for this cluster, submitted later.
    let cluster_id = cluster_id_of(&agent);
    let change = ok(run_with_timeout(
        Command::new(BIN).args([
            "sign",
            "--key-file",
            admin,
            "--cluster-id",
            &cluster_id,
            "/app/port",
            "9090",
        ]),
        Duration::from_secs(20),
    ));
    let change_file = dir.path().join("change.json");
    std::fs::write(&change_file, &change).unwrap();
    ok(edgeconf(&agent, &["put", "--signed", path(&change_file)]));
    assert_eq!(
        ok(edgeconf(
            &agent,
            &["get", "/app/port", "--print-value-only"]
        )),
        "9090\n"
    );

    let before = revision(&agent);
    let refused = |args: &[&str], expected: &str| {
        let err = failed(edgeconf(&agent, args));
        assert!(err.contains(expected), "{args:?}: {err}");
    };
    // Unsigned, unknown signer, a signer outside its prefix.
    refused(&["put", "/app/port", "1"], "unsigned writes are refused");
    refused(
        &["put", "--sign-key", path(&keys.stranger), "/app/port", "1"],
        "is not trusted for \"/app/port\"",
    );
    refused(
        &["put", "--sign-key", path(&keys.team), "/app/port", "1"],
        "is not trusted",
    );
    // The old change again, after a newer write: a replay.
    ok(edgeconf(
        &agent,
        &["put", "--sign-key", admin, "/app/port", "7070"],
    ));
    let before = before + 1;
    refused(&["put", "--signed", path(&change_file)], "replayed change");
    // Tampered: another value, another key, a flipped signature byte.
    let mut tampered: serde_json::Value = serde_json::from_str(&change).unwrap();
    tampered["value"] = "6666".into();
    tampered["sequence"] = 1_000_000_000_000_000u64.into();
    let tampered_file = dir.path().join("tampered.json");
    std::fs::write(&tampered_file, tampered.to_string()).unwrap();
    refused(&["put", "--signed", path(&tampered_file)], "bad signature");
    let mut moved: serde_json::Value = serde_json::from_str(&change).unwrap();
    moved["key"] = "/app/other".into();
    std::fs::write(&tampered_file, moved.to_string()).unwrap();
    refused(&["put", "--signed", path(&tampered_file)], "bad signature");
    let mut flipped: serde_json::Value = serde_json::from_str(&change).unwrap();
    let signature = flipped["signatures"][0]["signature"]
        .as_str()
        .unwrap()
        .to_string();
    let flipped_char = if signature.starts_with('A') { "B" } else { "A" };
    flipped["signatures"][0]["signature"] = format!("{flipped_char}{}", &signature[1..]).into();
    std::fs::write(&tampered_file, flipped.to_string()).unwrap();
    refused(&["put", "--signed", path(&tampered_file)], "bad signature");
    std::fs::write(&tampered_file, "{\"format\": \"edgeconf-signed-change/1\"").unwrap();
    refused(
        &["put", "--signed", path(&tampered_file)],
        "not a signed change",
    );
    // Deletes and rollbacks are writes too.
    refused(&["del", "/app/port"], "unsigned writes are refused");
    refused(&["del", "/app/", "--prefix"], "unsigned writes are refused");
    refused(
        &["rollback", "/app/port", "--to-rev", "1"],
        "unsigned writes are refused",
    );
    assert_eq!(
        revision(&agent),
        before,
        "a refused write changed the store"
    );
    assert_eq!(
        ok(edgeconf(
            &agent,
            &["get", "/app/port", "--print-value-only"]
        )),
        "7070\n"
    );

    // A signed rollback, then a signed delete; history shows who did each.
    ok(edgeconf(
        &agent,
        &[
            "rollback",
            "/app/port",
            "--to-rev",
            "1",
            "--sign-key",
            admin,
        ],
    ));
    assert_eq!(
        ok(edgeconf(
            &agent,
            &["get", "/app/port", "--print-value-only"]
        )),
        "8080\n"
    );
    assert_eq!(
        ok(edgeconf(&agent, &["del", "--sign-key", admin, "/app/port"])),
        "1\n"
    );
    let history = ok(edgeconf(&agent, &["history", "/app/port"]));
    let rows: Vec<&str> = history.lines().skip(1).collect();
    assert_eq!(rows.len(), 5, "{history}");
    assert!(rows.iter().all(|row| row.contains("verified")), "{history}");
    assert!(rows[4].contains("DELETE"), "{history}");
    // Unprotected keys stay open to plain writes.
    ok(edgeconf(&agent, &["put", "/free/x", "1"]));
    ok(edgeconf(&agent, &["verify", "/", "--prefix"]));
}

#[test]
fn etcdctl_is_held_to_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let agent = start_signed_agent(dir.path(), &keys);
    ok(edgeconf(
        &agent,
        &["put", "--sign-key", path(&keys.admin), "/app/port", "8080"],
    ));
    // etcd clients read the value itself.
    assert_eq!(
        ok(etcdctl(&agent, &["get", "/app/port"])),
        "/app/port\n8080\n"
    );
    for args in [
        vec!["put", "/app/port", "1"],
        vec!["del", "/app/port"],
        vec!["del", "/", "--prefix"],
    ] {
        let err = failed(etcdctl(&agent, &args));
        assert!(
            err.contains("unsigned writes are refused"),
            "{args:?}: {err}"
        );
    }
    let txn = run_with_timeout(
        Command::new("sh").arg("-c").arg(format!(
            "printf '\\n\\nput /app/port 1\\n\\n' | ETCDCTL_API=3 etcdctl --endpoints {} txn",
            agent.endpoint()
        )),
        Duration::from_secs(30),
    );
    let out = format!("{}{}", stdout(&txn), String::from_utf8_lossy(&txn.stderr));
    assert!(out.contains("unsigned writes are refused"), "{out}");
    assert_eq!(
        ok(etcdctl(&agent, &["get", "/app/port", "--print-value-only"])),
        "8080\n"
    );
    ok(etcdctl(&agent, &["put", "/free/x", "1"]));
}

#[test]
fn secrets_are_stored_encrypted_and_only_identity_holders_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let agent = start_signed_agent(dir.path(), &keys);
    let plaintext = "s3cr3t-db-password-8d1f";
    ok(edgeconf(
        &agent,
        &[
            "put",
            "--sign-key",
            path(&keys.admin),
            "--encrypt",
            "/app/db/password",
            plaintext,
        ],
    ));
    let shown = ok(edgeconf(&agent, &["get", "/app/db/password"]));
    assert!(
        shown.contains("-----BEGIN AGE ENCRYPTED FILE-----"),
        "{shown}"
    );
    assert!(!shown.contains(plaintext), "{shown}");
    assert!(shown.contains("secret, verified"), "{shown}");
    let checked = ok(edgeconf(&agent, &["verify", "/app/db/password"]));
    assert!(
        checked.contains("secret (this agent decrypts it)"),
        "{checked}"
    );
    // Enough writes for the store to be synced and the log compacted.
    for i in 0..30 {
        ok(edgeconf(&agent, &["put", "/free/filler", &i.to_string()]));
    }
    let mut agent = agent;
    assert!(agent.stop());
    let mut files = vec![agent.data_dir.clone()];
    let mut checked = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes
                .windows(plaintext.len())
                .any(|w| w == plaintext.as_bytes()),
            "{} holds the secret in plaintext",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} files in the data dir");

    // An agent without the identity still verifies it, but cannot decrypt.
    let other = tempfile::tempdir().unwrap();
    let config = other.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[trust]\nkeys = [{:?}]\n[secrets]\nrecipients = [{:?}]\n",
            keys.admin_pub, keys.fleet_recipient
        ),
    )
    .unwrap();
    let agent = Agent::start_with(other.path(), free_port(), &["--config", path(&config)]);
    ok(edgeconf(
        &agent,
        &[
            "put",
            "--sign-key",
            path(&keys.admin),
            "--encrypt",
            "/s",
            plaintext,
        ],
    ));
    let shown = ok(edgeconf(&agent, &["verify", "/s"]));
    assert!(shown.contains("secret, verified"), "{shown}");
    assert!(!shown.contains("decrypts"), "{shown}");
}

#[test]
fn operator_keys_rotate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let config = dir.path().join("agent.toml");
    let trust = |keys: &[&str]| {
        let quoted: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
        format!(
            "[trust]\nkeys = [{}]\nallow_unsigned = false\n",
            quoted.join(", ")
        )
    };
    std::fs::write(&config, trust(&[&keys.admin_pub])).unwrap();
    let agent = Agent::start_with(dir.path(), free_port(), &["--config", path(&config)]);
    let (old, new) = (path(&keys.admin), path(&keys.team));
    ok(edgeconf(&agent, &["put", "--sign-key", old, "/a", "1"]));
    ok(edgeconf(&agent, &["put", "--sign-key", old, "/b", "1"]));

    // 1. Trust the new key beside the old one.
    std::fs::write(&config, trust(&[&keys.admin_pub, &keys.team_pub])).unwrap();
    agent.signal("HUP");
    wait_until(|| {
        edgeconf(&agent, &["put", "--sign-key", new, "/a", "2"])
            .status
            .success()
    });
    // A broken edit is refused; the running policy stays.
    std::fs::write(&config, "[trust]\nkeys = [\"nonsense\"]\n").unwrap();
    agent.signal("HUP");
    wait_until(|| agent.log().contains("config reload refused"));
    ok(edgeconf(&agent, &["put", "--sign-key", new, "/a", "3"]));

    // 2. Re-sign what the old key signed; 3. drop the old key.
    ok(edgeconf(&agent, &["put", "--sign-key", new, "/b", "1"]));
    std::fs::write(&config, trust(&[&keys.team_pub])).unwrap();
    agent.signal("HUP");
    wait_until(|| {
        !edgeconf(&agent, &["put", "--sign-key", old, "/c", "1"])
            .status
            .success()
    });
    ok(edgeconf(&agent, &["verify", "/", "--prefix"]));
    assert_eq!(
        ok(edgeconf(&agent, &["get", "/b", "--print-value-only"])),
        "1\n"
    );
}

fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in time"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A compromised peer (here: someone with the follower's disk) plants a
/// forged value and an older signed value; the follower refuses to serve
/// either, while the rest of the cluster is unaffected.
#[test]
fn forged_values_in_a_followers_store_are_refused_there() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let mut cluster = Cluster::start_with(dir.path(), 3, 3, &keys.toml());
    let leader = cluster.wait_for_leader();
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let endpoints: Vec<String> = (0..3).map(|i| cluster.endpoint(i)).collect();
    let at = |i: usize, args: &[&str]| {
        run_with_timeout(
            Command::new(BIN)
                .arg("--endpoints")
                .arg(&endpoints[i])
                .args(args),
            Duration::from_secs(30),
        )
    };
    let admin = path(&keys.admin);
    ok(at(
        leader,
        &["put", "--sign-key", admin, "/app/port", "8080"],
    ));
    ok(at(
        leader,
        &["put", "--sign-key", admin, "/app/host", "edge-1"],
    ));
    ok(at(
        leader,
        &["put", "--sign-key", admin, "/app/host", "edge-2"],
    ));
    wait_until(|| {
        stdout(&at(follower, &["get", "/app/host", "--consistency", "s"])).contains("edge-2")
    });

    // Plant the values while the follower is down, keeping its applied
    // index so raft has nothing to say about it.
    cluster.stop(follower);
    let store_path = cluster.slots[follower].data_dir.join("store.redb");
    {
        let store = edgeconf::store::Store::open(&store_path).unwrap();
        let stranger = edgeconf::signing::keys::read_signing_key(&keys.stranger).unwrap();
        // Bound to this very cluster: only the signer is wrong.
        let binding = edgeconf::signing::Binding {
            cluster_id: store.meta("cluster_id").unwrap().unwrap(),
            root_version: 0,
        };
        let forged = edgeconf::signing::SignedChange::sign(
            &stranger,
            b"/app/port".to_vec(),
            edgeconf::signing::Op::Put,
            i64::MAX as u64,
            false,
            b"6666".to_vec(),
            binding,
        )
        .unwrap();
        let history = store.history(b"/app/host").unwrap();
        let older = history.entries[0].value.clone();
        let plant = |key: &str, value: Vec<u8>| {
            let proposal = edgeconf::store::Proposal {
                command: edgeconf::store::Command::Put(edgeconf::store::PutRequest::new(
                    key, value,
                )),
                time_unix_ms: 0,
            };
            let applied = store.applied_index().unwrap();
            store.apply_batch(&[proposal], applied, true).unwrap();
        };
        plant("/app/port", forged.to_stored());
        plant("/app/host", older);
    }
    cluster.run(follower);

    let err = failed(at(follower, &["get", "/app/port", "--consistency", "s"]));
    assert!(
        err.contains("refusing to serve") && err.contains("not trusted"),
        "{err}"
    );
    let err = failed(at(follower, &["get", "/app/host", "--consistency", "s"]));
    assert!(
        err.contains("refusing to serve") && err.contains("replayed"),
        "{err}"
    );
    let report = at(
        follower,
        &["verify", "/app/", "--prefix", "--consistency", "s"],
    );
    let text = stdout(&report);
    assert!(
        text.contains("/app/port: signed by") && text.contains("NOT VERIFIED"),
        "{text}"
    );
    assert!(failed(report).contains("2 of 2 values do not verify"));
    // The others still serve the signed values.
    let good = (0..3).find(|&i| i != follower).unwrap();
    assert_eq!(
        ok(at(good, &["get", "/app/port", "--print-value-only"])),
        "8080\n"
    );
}

/// A follower configured to trust a key the leader does not: the follower
/// accepts the write, the leader refuses to take it into the log.
#[test]
fn the_leader_checks_what_followers_forward() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let mut cluster = Cluster::start_with(dir.path(), 3, 3, &keys.toml());
    let leader = cluster.wait_for_leader();
    let follower = (0..3).find(|&i| i != leader).unwrap();
    // The follower, restarted trusting the stranger's key for everything.
    let stranger_pub = keys.stranger_pub.clone();
    cluster.stop(follower);
    cluster.extra_config = keys.toml().replace(
        &format!("keys = [{:?}]", keys.admin_pub),
        &format!("keys = [{:?}, {stranger_pub:?}]", keys.admin_pub),
    );
    assert!(cluster.extra_config.contains(&stranger_pub));
    cluster.write_config(follower, &cluster.initial_cluster(0..3), "existing");
    cluster.run(follower);
    let leader = cluster.wait_for_leader();
    assert_ne!(leader, follower, "the permissive member became leader");

    let write = run_with_timeout(
        Command::new(BIN)
            .args(["--endpoints", &cluster.endpoint(follower)])
            .args(["--command-timeout", "10s"])
            .args([
                "put",
                "--sign-key",
                path(&keys.stranger),
                "/app/port",
                "6666",
            ]),
        Duration::from_secs(30),
    );
    assert!(
        !write.status.success(),
        "the leader took a forwarded forged write"
    );
    let log = cluster.agents[leader].as_ref().unwrap().log();
    assert!(
        log.contains("refused a command forwarded by a follower"),
        "{log}"
    );
    let get = ok(run_with_timeout(
        Command::new(BIN)
            .args(["--endpoints", &cluster.endpoint(leader)])
            .args(["get", "/app/port"]),
        Duration::from_secs(30),
    ));
    assert_eq!(get, "", "the forged value landed");
}

#[test]
fn an_agent_run_as_an_unprivileged_user_keeps_its_files_private() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "render_root = {:?}\n{}\n\
             [[render]]\nkey = \"/app/db/password\"\ndest = \"password\"\n\n\
             [[render]]\nkey = \"/app/db/password\"\ndest = \"password-0640\"\nmode = \"0640\"\n\n\
             [[render]]\nkey = \"/app/name\"\ndest = \"name\"\n",
            path(&out),
            keys.toml()
        ),
    )
    .unwrap();
    // As root, the agent runs as nobody and owns what it needs.
    let user = (std::fs::metadata(dir.path()).unwrap().uid() == 0).then_some((65534, 65534));
    if let Some((uid, gid)) = user {
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            std::os::unix::fs::chown(entry.unwrap().path(), Some(uid), Some(gid)).unwrap();
        }
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    }
    let data_dir = dir.path().join("data");
    let port = free_port();
    let args: Vec<String> = [
        "--data-dir",
        path(&data_dir),
        "--listen-peer-urls",
        &format!("quic://127.0.0.1:{}", free_port()),
        "--listen-client-urls",
        &format!("http://127.0.0.1:{port}"),
        "--config",
        path(&config),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut agent = Agent::spawn_as(dir.path(), data_dir.clone(), port, &args, user);
    let sign = ["put", "--sign-key", path(&keys.admin)];
    ok(edgeconf(
        &agent,
        &[&sign[..], &["--encrypt", "/app/db/password", "s3cr3t"]].concat(),
    ));
    ok(edgeconf(
        &agent,
        &[&sign[..], &["/app/name", "web"]].concat(),
    ));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ["name", "password", "password-0640"]
        .iter()
        .any(|f| !out.join(f).exists())
    {
        assert!(std::time::Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::read_to_string(out.join("password")).unwrap(),
        "s3cr3t"
    );
    // A decrypted secret is 0600 unless its entry says otherwise; the rest
    // keep the 0644 default.
    assert_eq!(mode(&out.join("password")), 0o600);
    assert_eq!(mode(&out.join("password-0640")), 0o640);
    assert_eq!(mode(&out.join("name")), 0o644);
    assert!(
        agent
            .log()
            .contains("holds a decrypted secret: written with mode 0600"),
        "{}",
        agent.log()
    );

    // The data dir is 0700; everything in it is for the agent's user only.
    assert_eq!(mode(&data_dir), 0o700);
    let mut pending = vec![data_dir.clone()];
    let mut seen = Vec::new();
    while let Some(p) = pending.pop() {
        let meta = std::fs::metadata(&p).unwrap();
        if let Some((uid, _)) = user {
            assert_eq!(meta.uid(), uid, "{} is not the agent user's", p.display());
        }
        assert_eq!(
            mode(&p) & 0o077,
            0,
            "{} is mode {:o}",
            p.display(),
            mode(&p)
        );
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        seen.push(p.file_name().unwrap().to_string_lossy().into_owned());
    }
    for expected in [
        "store.redb",
        "raft.redb",
        "raft-wal",
        "node.key",
        "snapshots",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "no {expected} in {seen:?}"
        );
    }
    assert!(seen.iter().any(|s| s.ends_with(".wal")), "{seen:?}");
    assert!(agent.stop());
}

/// The agent's cluster id in hex, from `edgeconf status`.
fn cluster_id_of(agent: &Agent) -> String {
    let line = ok(edgeconf(agent, &["status"]));
    line.trim().split(", ").nth(8).unwrap().to_string()
}

/// `edgeconf sign` (offline) for `agent`'s cluster, written to `file`.
fn sign_offline(agent: &Agent, key: &Path, args: &[&str], file: &Path) {
    let cluster_id = cluster_id_of(agent);
    let change = ok(run_with_timeout(
        Command::new(BIN)
            .args(["sign", "--key-file", path(key), "--cluster-id", &cluster_id])
            .args(args),
        Duration::from_secs(20),
    ));
    std::fs::write(file, change).unwrap();
}

/// `edgeconf sign --add`: one more signature on the change in `from`.
fn add_signature(key: &Path, from: &Path, to: &Path) {
    let change = ok(run_with_timeout(
        Command::new(BIN).args(["sign", "--add", path(from), "--key-file", path(key)]),
        Duration::from_secs(20),
    ));
    std::fs::write(to, change).unwrap();
}

#[test]
fn a_two_of_three_prefix_takes_two_signers_and_another_cluster_refuses_the_change() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    // /secure/ needs two of admin (global), team and stranger.
    let toml = format!(
        "[trust]\nkeys = [{:?}]\n\n[[trust.prefix]]\nprefix = \"/secure/\"\nkeys = [{:?}, {:?}]\nthreshold = 2\n",
        keys.admin_pub, keys.team_pub, keys.stranger_pub
    );
    let start = |name: &str| {
        let home = dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        let config = home.join("agent.toml");
        std::fs::write(&config, &toml).unwrap();
        Agent::start_with(&home, free_port(), &["--config", path(&config)])
    };
    let (a, b) = (start("a"), start("b"));
    assert_ne!(cluster_id_of(&a), cluster_id_of(&b));

    // One signature, online or offline, is refused with what is missing.
    let err = failed(edgeconf(
        &a,
        &["put", "--sign-key", path(&keys.team), "/secure/db", "v1"],
    ));
    assert!(
        err.contains("2 of the keys trusted for \"/secure/db\""),
        "{err}"
    );
    assert!(err.contains("1 more needed"), "{err}");
    let once = dir.path().join("once.json");
    sign_offline(&a, &keys.team, &["/secure/db", "v1"], &once);
    let err = failed(edgeconf(&a, &["put", "--signed", path(&once)]));
    assert!(err.contains("1 more needed"), "{err}");
    // The same signer again is still one.
    let again = dir.path().join("again.json");
    add_signature(&keys.team, &once, &again);
    assert!(failed(edgeconf(&a, &["put", "--signed", path(&again)])).contains("1 more needed"));

    // A second trusted signer: accepted, and both are shown.
    let twice = dir.path().join("twice.json");
    add_signature(&keys.admin, &once, &twice);
    ok(edgeconf(&a, &["put", "--signed", path(&twice)]));
    assert_eq!(
        ok(edgeconf(&a, &["get", "/secure/db", "--print-value-only"])),
        "v1\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(edgeconf(&a, &["-w", "json", "get", "/secure/db"]))).unwrap();
    let signature = &json["kvs"][0]["signature"];
    assert_eq!(signature["verified"], true, "{signature}");
    let signers = signature["signer"].as_str().unwrap();
    assert!(
        signers.contains(&keys.team_pub) && signers.contains(&keys.admin_pub),
        "{signers}"
    );
    ok(edgeconf(&a, &["verify", "/secure/", "--prefix"]));

    // The same, fully signed change is refused by another cluster.
    let err = failed(edgeconf(&b, &["put", "--signed", path(&twice)]));
    assert!(
        err.contains(&format!("signed for cluster {}", cluster_id_of(&a))),
        "{err}"
    );
    assert_eq!(
        ok(edgeconf(&b, &["get", "/secure/db", "--print-value-only"])),
        ""
    );
}
