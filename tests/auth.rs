//! etcd's Auth API on real agents: users, roles and every kind of key
//! permission through etcdctl and the edgeconf CLI, filtered watches,
//! admin-only RPCs, replication through leader changes and restarts, and
//! sign-in floods.

mod common;

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{edgeconf, etcdctl, failed, ok, Agent};

/// `edgeconf --user USER ARGS`.
fn cli(agent: &Agent, user: &str, args: &[&str]) -> Output {
    let mut all = vec!["--user", user];
    all.extend(args);
    edgeconf(agent, &all)
}

/// `etcdctl --user USER ARGS`.
fn ctl(agent: &Agent, user: &str, args: &[&str]) -> Output {
    let mut all = vec!["--user", user];
    all.extend(args);
    etcdctl(agent, &all)
}

#[track_caller]
fn denied(output: Output) {
    let err = failed(output);
    assert!(err.contains("permission denied"), "{err}");
}

/// Users and roles, made while auth is still off:
/// - `ro` reads every key under `/app/`;
/// - `wo` writes the one key `/w`;
/// - `rg` reads and writes the range [`/r/a`, `/r/m`).
fn create_users(run: impl Fn(&[&str]) -> Output) {
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "reader"],
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "/app/",
            "--prefix",
        ],
        &["role", "add", "writer"],
        &["role", "grant-permission", "writer", "write", "/w"],
        &["role", "add", "ranged"],
        &[
            "role",
            "grant-permission",
            "ranged",
            "readwrite",
            "/r/a",
            "/r/m",
        ],
        &["user", "add", "ro:ropw"],
        &["user", "grant-role", "ro", "reader"],
        &["user", "add", "wo", "--new-user-password", "wopw"],
        &["user", "grant-role", "wo", "writer"],
        &["user", "add", "rg:rgpw"],
        &["user", "grant-role", "rg", "ranged"],
        &["put", "/app/a", "1"],
        &["put", "/other", "2"],
        &["auth", "enable"],
    ] {
        ok(run(args));
    }
}

#[test]
fn every_permission_kind_holds_through_etcdctl_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    create_users(|args| edgeconf(&agent, args));
    let status = ok(edgeconf(&agent, &["auth", "status"]));
    assert!(status.contains("Authentication Status: true"), "{status}");

    // No credentials, or wrong ones.
    let err = failed(edgeconf(&agent, &["get", "/app/a"]));
    assert!(
        err.contains("user name is empty") && err.contains("--user"),
        "{err}"
    );
    let err = failed(etcdctl(&agent, &["get", "/app/a"]));
    assert!(err.contains("user name is empty"), "{err}");
    let err = failed(cli(&agent, "ro:wrong", &["get", "/app/a"]));
    assert!(err.contains("authentication failed"), "{err}");
    let err = failed(ctl(&agent, "nobody:pw", &["get", "/app/a"]));
    assert!(err.contains("authentication failed"), "{err}");

    // Read-only on a prefix: reads inside, nothing else.
    for run in [cli, ctl] {
        assert_eq!(
            ok(run(
                &agent,
                "ro:ropw",
                &["get", "/app/a", "--print-value-only"]
            )),
            "1\n"
        );
        ok(run(&agent, "ro:ropw", &["get", "/app/", "--prefix"]));
        denied(run(&agent, "ro:ropw", &["put", "/app/a", "x"]));
        denied(run(&agent, "ro:ropw", &["del", "/app/a"]));
        denied(run(&agent, "ro:ropw", &["get", "/other"]));
        denied(run(&agent, "ro:ropw", &["get", "/", "--prefix"]));
        denied(run(&agent, "ro:ropw", &["get", "/app/a", "--from-key"]));
    }

    // Write-only on one key: writes it, cannot read it back or write others.
    for run in [cli, ctl] {
        ok(run(&agent, "wo:wopw", &["put", "/w", "v"]));
        denied(run(&agent, "wo:wopw", &["get", "/w"]));
        denied(run(&agent, "wo:wopw", &["put", "/w2", "v"]));
        // Asking for the previous value is a read.
        denied(run(&agent, "wo:wopw", &["put", "/w", "v", "--prev-kv"]));
    }

    // Read-write on a range: inside works, the end is exclusive.
    for run in [cli, ctl] {
        ok(run(&agent, "rg:rgpw", &["put", "/r/b", "1"]));
        ok(run(&agent, "rg:rgpw", &["get", "/r/a", "/r/m"]));
        ok(run(&agent, "rg:rgpw", &["del", "/r/b"]));
        denied(run(&agent, "rg:rgpw", &["put", "/r/m", "1"]));
        denied(run(&agent, "rg:rgpw", &["get", "/r/a", "/r/z"]));
    }

    // A put attaching a lease needs write on the lease's other keys too
    // (revoking the lease would delete them).
    let lease_of = |out: String| out.split_whitespace().nth(1).unwrap().to_string();
    let root_lease = lease_of(ok(cli(&agent, "root:rootpw", &["lease", "grant", "600"])));
    ok(cli(
        &agent,
        "root:rootpw",
        &["put", "/other/leased", "x", "--lease", &root_lease],
    ));
    denied(cli(
        &agent,
        "rg:rgpw",
        &["put", "/r/c", "1", "--lease", &root_lease],
    ));
    let own_lease = lease_of(ok(cli(&agent, "rg:rgpw", &["lease", "grant", "600"])));
    ok(cli(
        &agent,
        "rg:rgpw",
        &["put", "/r/c", "1", "--lease", &own_lease],
    ));
    denied(cli(&agent, "rg:rgpw", &["lease", "revoke", &root_lease]));

    // Admin-only: users, roles, members, compaction.
    let member_id = ok(ctl(&agent, "root:rootpw", &["member", "list"]))
        .split(',')
        .next()
        .unwrap()
        .to_string();
    denied(ctl(&agent, "ro:ropw", &["member", "remove", &member_id]));
    denied(cli(&agent, "ro:ropw", &["member", "remove", &member_id]));
    denied(cli(&agent, "ro:ropw", &["user", "add", "eve:pw"]));
    denied(ctl(
        &agent,
        "ro:ropw",
        &["role", "grant-permission", "reader", "readwrite", "/"],
    ));
    denied(cli(&agent, "ro:ropw", &["compact", "1"]));
    // Maintenance is an admin's: defragmenting, backups, checksums,
    // alarms, moving the lead.
    denied(ctl(&agent, "ro:ropw", &["defrag"]));
    denied(ctl(&agent, "ro:ropw", &["alarm", "list"]));
    denied(ctl(&agent, "ro:ropw", &["endpoint", "hashkv"]));
    let image = agent.data_dir.with_file_name("denied.db");
    denied(ctl(
        &agent,
        "ro:ropw",
        &["snapshot", "save", image.to_str().unwrap()],
    ));
    denied(ctl(&agent, "ro:ropw", &["move-leader", &member_id]));
    // Locks write their queue: a reader may not take one on /app/.
    denied(cli(&agent, "ro:ropw", &["lock", "/app/jobs", "--", "true"]));
    denied(cli(&agent, "ro:ropw", &["user", "list"]));
    // Users may look at their own account and roles.
    let own = ok(cli(&agent, "ro:ropw", &["user", "get", "ro"]));
    assert!(own.contains("reader"), "{own}");
    denied(cli(&agent, "ro:ropw", &["user", "get", "wo"]));
    let role = ok(ctl(&agent, "root:rootpw", &["role", "get", "ranged"]));
    assert!(role.contains("[/r/a, /r/m)"), "{role}");
    let users = ok(cli(&agent, "root:rootpw", &["user", "list"]));
    assert_eq!(users, "ro\nrg\nroot\nwo\n".replace("ro\nrg", "rg\nro"));

    // Revoking takes effect at once; the root user and role stay.
    ok(cli(
        &agent,
        "root:rootpw",
        &["role", "revoke-permission", "reader", "/app/", "--prefix"],
    ));
    denied(cli(&agent, "ro:ropw", &["get", "/app/a"]));
    let err = failed(cli(&agent, "root:rootpw", &["user", "delete", "root"]));
    assert!(err.contains("invalid auth management"), "{err}");
    let err = failed(cli(
        &agent,
        "root:rootpw",
        &["user", "revoke-role", "root", "root"],
    ));
    assert!(err.contains("invalid auth management"), "{err}");

    // Denials are logged with the user and the key.
    let log = agent.log();
    assert!(
        log.contains("permission denied")
            && log.contains("user=\"ro\"")
            && log.contains("key=/other"),
        "{log}"
    );

    // Disabling auth opens the API again.
    ok(cli(&agent, "root:rootpw", &["auth", "disable"]));
    assert_eq!(
        ok(edgeconf(&agent, &["get", "/other", "--print-value-only"])),
        "2\n"
    );
}

#[test]
fn watchers_only_see_keys_they_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    create_users(|args| edgeconf(&agent, args));
    let out_path = dir.path().join("watch.out");
    let mut watcher = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &agent.endpoint(), "--user", "ro:ropw"])
        .args(["watch", "--prefix", "/"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let read_out = || {
        let mut text = String::new();
        std::fs::File::open(&out_path)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    };
    let root = |args: &[&str]| ok(cli(&agent, "root:rootpw", args));
    // Write until the watch is running and shows a readable key.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !read_out().contains("/app/ready") {
        assert!(
            Instant::now() < deadline,
            "watch never started: {}",
            read_out()
        );
        root(&["put", "/app/ready", "1"]);
        std::thread::sleep(Duration::from_millis(300));
    }
    root(&["put", "/other", "hidden"]);
    root(&["put", "/app/after", "shown"]);
    while !read_out().contains("/app/after") {
        assert!(
            Instant::now() < deadline,
            "event never came: {}",
            read_out()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    let seen = read_out();
    assert!(
        !seen.contains("/other") && !seen.contains("hidden"),
        "{seen}"
    );
}

/// Signs in as `user` against the agent at `endpoint`.
async fn signed_in(
    endpoint: String,
    user: &str,
    password: &str,
) -> Result<etcd_client::Client, etcd_client::Error> {
    let options = etcd_client::ConnectOptions::new()
        .with_user(user, password)
        .with_timeout(Duration::from_secs(30));
    etcd_client::Client::connect([format!("http://{endpoint}")], Some(options)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_holds_on_every_member_through_a_leader_kill_and_a_full_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    let run = |cluster: &Cluster, i: usize, args: &[&str]| {
        let mut command = Command::new(common::BIN);
        command
            .args(["--endpoints", &cluster.endpoint(i)])
            .args(args);
        tokio::task::block_in_place(|| {
            common::run_with_timeout(&mut command, Duration::from_secs(30))
        })
    };
    create_users(|args| run(&cluster, 0, args));

    // Every member enforces the same users and roles.
    for i in 0..3 {
        denied(run(
            &cluster,
            i,
            &["--user", "ro:ropw", "put", "/app/a", "x"],
        ));
        ok(run(&cluster, i, &["--user", "ro:ropw", "get", "/app/a"]));
    }

    // A token from one member works on the others: they share the key.
    let mut on_first = signed_in(cluster.endpoint(0), "ro", "ropw").await.unwrap();
    on_first.get("/app/a", None).await.unwrap();

    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    tokio::task::block_in_place(|| cluster.kill9(leader));
    tokio::task::block_in_place(|| cluster.wait_for_leader());
    let survivor = (leader + 1) % 3;
    ok(run(
        &cluster,
        survivor,
        &["--user", "root:rootpw", "user", "add", "late:latepw"],
    ));
    ok(run(
        &cluster,
        survivor,
        &[
            "--user",
            "root:rootpw",
            "user",
            "grant-role",
            "late",
            "ranged",
        ],
    ));
    denied(run(
        &cluster,
        survivor,
        &["--user", "ro:ropw", "get", "/other"],
    ));

    // The killed member comes back and catches up on the auth change.
    tokio::task::block_in_place(|| cluster.run(leader));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run(
        &cluster,
        leader,
        &["--user", "late:latepw", "put", "/r/b", "1"],
    )
    .status
    .success()
    {
        assert!(
            Instant::now() < deadline,
            "member {leader} never learned user late"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A full restart keeps it all: auth on, users, roles, passwords.
    for i in 0..3 {
        tokio::task::block_in_place(|| cluster.stop(i));
    }
    for i in 0..3 {
        tokio::task::block_in_place(|| cluster.run(i));
    }
    tokio::task::block_in_place(|| cluster.wait_for_leader());
    for i in 0..3 {
        let err = failed(run(&cluster, i, &["get", "/app/a"]));
        assert!(err.contains("user name is empty"), "{err}");
        ok(run(&cluster, i, &["--user", "ro:ropw", "get", "/app/a"]));
        denied(run(
            &cluster,
            i,
            &["--user", "late:latepw", "get", "/app/a"],
        ));
        let err = failed(run(&cluster, i, &["--user", "ro:wrong", "get", "/app/a"]));
        assert!(err.contains("authentication failed"), "{err}");
    }

    // A new password voids tokens signed in with the old one.
    let mut client = signed_in(cluster.endpoint(1), "ro", "ropw").await.unwrap();
    client.get("/app/a", None).await.unwrap();
    ok(run(
        &cluster,
        2,
        &[
            "--user",
            "root:rootpw",
            "user",
            "passwd",
            "ro",
            "--new-user-password",
            "fresh",
        ],
    ));
    // (A client that signs in again with the old password fails too.)
    let err = client.get("/app/a", None).await.unwrap_err().to_string();
    assert!(err.contains("invalid auth token"), "{err}");
    let Err(err) = signed_in(cluster.endpoint(1), "ro", "ropw").await else {
        panic!("signed in with the old password");
    };
    assert!(err.to_string().contains("authentication failed"), "{err}");
    ok(run(&cluster, 0, &["--user", "ro:fresh", "get", "/app/a"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_bad_passwords_gets_errors_without_starving_signed_in_clients() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    tokio::task::block_in_place(|| create_users(|args| edgeconf(&agent, args)));
    let mut reader = signed_in(agent.endpoint(), "ro", "ropw").await.unwrap();

    // 32 attackers, 8 wrong passwords each, all at once.
    let started = Instant::now();
    let mut attackers = Vec::new();
    for attacker in 0..32 {
        let endpoint = format!("http://{}", agent.endpoint());
        attackers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut auth = etcd_client::Client::connect([endpoint], None)
                .await
                .unwrap()
                .auth_client();
            for attempt in 0..8 {
                let result = auth
                    .authenticate("ro".to_string(), format!("guess-{attacker}-{attempt}"))
                    .await;
                outcomes.push(result.map(|_| ()).map_err(|err| err.to_string()));
            }
            outcomes
        }));
    }
    // Meanwhile a signed-in client reads; its token needs no hashing.
    let mut reads = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        reader.get("/app/a", None).await.unwrap();
        reads.push(start.elapsed());
    }
    let reads_done = started.elapsed();
    let mut failures = 0;
    for attacker in attackers {
        for outcome in attacker.await.unwrap() {
            let err = outcome.expect_err("a wrong password signed in");
            assert!(
                err.contains("authentication failed") || err.contains("too many requests"),
                "{err}"
            );
            failures += 1;
        }
    }
    let flood_done = started.elapsed();
    reads.sort();
    println!(
        "256 bad sign-ins took {flood_done:?}; 20 reads meanwhile: median {:?}, max {:?}, all done after {reads_done:?}",
        reads[10], reads[19]
    );
    assert_eq!(failures, 256);
    assert!(
        reads_done < flood_done,
        "the reads waited for the flood: {reads_done:?} vs {flood_done:?}"
    );
}
