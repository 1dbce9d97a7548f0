//! TLS on the client API: handshakes accepted and refused, certificates
//! rotated on disk, and plain listeners beyond loopback refused.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{failed, free_port, ok, run_with_timeout, stderr, Agent, BIN};

fn edgeconf_cli(args: &[&str]) -> Output {
    run_with_timeout(Command::new(BIN).args(args), Duration::from_secs(30))
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// A CA in `dir/pki` with certificates for the agent (n1) and a user.
fn pki(dir: &Path) {
    let pki = path(dir, "pki");
    ok(edgeconf_cli(&["cert", "ca", "--out-dir", &pki]));
    for (name, ip) in [("n1", true), ("e1", true), ("alice", false)] {
        let mut args = vec![
            "cert",
            "issue",
            "--ca-dir",
            &pki,
            "--out-dir",
            &pki,
            "--name",
            name,
        ];
        if ip {
            args.extend(["--ip", "127.0.0.1"]);
        }
        ok(edgeconf_cli(&args));
    }
}

fn start_tls_agent(dir: &Path, cert_auth: bool) -> Agent {
    pki(dir);
    let port = free_port();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "client_cert_file = {:?}\nclient_key_file = {:?}\nclient_trusted_ca_file = {:?}\nclient_cert_auth = {cert_auth}\n",
            path(dir, "pki/n1.crt"),
            path(dir, "pki/n1.key"),
            path(dir, "pki/ca.crt"),
        ),
    )
    .unwrap();
    let url = format!("https://127.0.0.1:{port}");
    Agent::start_with(
        dir,
        port,
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen-client-urls",
            &url,
        ],
    )
}

fn tls_args(agent: &Agent, dir: &Path, with_cert: bool) -> Vec<String> {
    let mut args = vec![
        "--endpoints".to_string(),
        agent.endpoint(),
        "--cacert".to_string(),
        path(dir, "pki/ca.crt"),
    ];
    if with_cert {
        args.extend([
            "--cert".to_string(),
            path(dir, "pki/alice.crt"),
            "--key".to_string(),
            path(dir, "pki/alice.key"),
        ]);
    }
    args
}

fn run(base: &[String], args: &[&str]) -> Output {
    let mut all: Vec<&str> = base.iter().map(String::as_str).collect();
    all.extend(args);
    edgeconf_cli(&all)
}

#[test]
fn mutual_tls_admits_certified_clients_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_tls_agent(dir.path(), true);
    let with_cert = tls_args(&agent, dir.path(), true);
    assert_eq!(ok(run(&with_cert, &["put", "/a", "1"])), "OK\n");
    assert_eq!(
        ok(run(&with_cert, &["get", "/a", "--print-value-only"])),
        "1\n"
    );
    // No client certificate, or no TLS at all: refused at the handshake.
    let err = failed(run(&tls_args(&agent, dir.path(), false), &["get", "/a"]));
    assert!(err.contains("--cert/--key"), "{err}");
    let err = failed(edgeconf_cli(&[
        "--endpoints",
        &agent.endpoint(),
        "get",
        "/a",
    ]));
    assert!(err.contains("https://"), "{err}");
    assert!(agent.log().contains("client TLS handshake refused"));
    // etcdctl with the same files, with and without the scheme (etcdctl
    // sends `https://...` on as the request's authority in `endpoint
    // status`).
    let etcdctl = |endpoint: &str, cert: bool, args: &[&str]| {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint])
            .args([
                "--dial-timeout",
                "2s",
                "--cacert",
                &path(dir.path(), "pki/ca.crt"),
            ]);
        if cert {
            command.args(["--cert", &path(dir.path(), "pki/alice.crt")]);
            command.args(["--key", &path(dir.path(), "pki/alice.key")]);
        }
        command.args(args);
        run_with_timeout(&mut command, Duration::from_secs(30))
    };
    let get = ["get", "/a", "--print-value-only"];
    for endpoint in [format!("https://{}", agent.endpoint()), agent.endpoint()] {
        assert_eq!(ok(etcdctl(&endpoint, true, &get)), "1\n");
        let status = ok(etcdctl(&endpoint, true, &["endpoint", "status"]));
        assert!(status.contains(&endpoint), "{status}");
        let health = etcdctl(&endpoint, true, &["endpoint", "health"]);
        assert!(
            stderr(&health).contains("is healthy"),
            "{}",
            stderr(&health)
        );
        assert!(!etcdctl(&endpoint, false, &get).status.success());
    }
}

#[test]
fn rotated_certificates_are_used_by_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_tls_agent(dir.path(), false);
    let trusting_old = tls_args(&agent, dir.path(), false);
    ok(run(&trusting_old, &["put", "/a", "1"]));
    // A new CA and agent certificate, moved into place atomically.
    let fresh = dir.path().join("fresh");
    ok(edgeconf_cli(&[
        "cert",
        "ca",
        "--out-dir",
        fresh.to_str().unwrap(),
    ]));
    ok(edgeconf_cli(&[
        "cert",
        "issue",
        "--ca-dir",
        fresh.to_str().unwrap(),
        "--out-dir",
        fresh.to_str().unwrap(),
        "--name",
        "n1",
        "--ip",
        "127.0.0.1",
    ]));
    std::fs::rename(fresh.join("n1.key"), dir.path().join("pki/n1.key")).unwrap();
    std::fs::rename(fresh.join("n1.crt"), dir.path().join("pki/n1.crt")).unwrap();
    // Clients trusting only the old CA are now refused; the new CA works.
    let mut trusting_new = trusting_old.clone();
    trusting_new[3] = fresh.join("ca.crt").display().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !run(&trusting_new, &["get", "/a"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "new certificate never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!run(&trusting_old, &["get", "/a"]).status.success());
    assert!(agent.log().contains("client TLS files changed"));
}

#[test]
fn plain_client_listeners_beyond_loopback_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let url = format!("http://0.0.0.0:{port}");
    let out = edgeconf_cli(&["agent", "--check", "--listen-client-urls", &url]);
    let err = failed(out);
    assert!(
        err.contains("without TLS") && err.contains("allow_insecure_client"),
        "{err}"
    );
    let config = dir.path().join("open.toml");
    std::fs::write(
        &config,
        format!("listen_client_urls = [{url:?}]\nallow_insecure_client = true\n"),
    )
    .unwrap();
    ok(edgeconf_cli(&[
        "agent",
        "--check",
        "--config",
        config.to_str().unwrap(),
    ]));
    // https without certificate files is refused too.
    let https = format!("https://127.0.0.1:{port}");
    let err = failed(edgeconf_cli(&[
        "agent",
        "--check",
        "--listen-client-urls",
        &https,
    ]));
    assert!(err.contains("client_cert_file"), "{err}");
}

#[test]
fn a_client_certificate_common_name_signs_in_as_that_user() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_tls_agent(dir.path(), true);
    let alice = tls_args(&agent, dir.path(), true);
    for args in [
        &["put", "/a", "1"][..],
        &["user", "add", "root:rootpw"],
        &["user", "add", "alice", "--no-password"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "/a"],
        &["user", "grant-role", "alice", "reader"],
        &["auth", "enable"],
    ] {
        ok(run(&alice, args));
    }
    // The certificate (CN alice) is the user: it may read /a, not write it.
    assert_eq!(ok(run(&alice, &["get", "/a", "--print-value-only"])), "1\n");
    let err = failed(run(&alice, &["put", "/a", "2"]));
    assert!(err.contains("permission denied"), "{err}");
    // A user without a password cannot sign in with one.
    let err = failed(run(&alice, &["--user", "alice:guess", "get", "/a"]));
    assert!(err.contains("authentication failed"), "{err}");
    // Credentials given with --user win over the certificate.
    ok(run(&alice, &["--user", "root:rootpw", "put", "/a", "2"]));
    assert_eq!(ok(run(&alice, &["get", "/a", "--print-value-only"])), "2\n");
}

/// An edge forwards a write to a voter that serves only https://: it checks
/// the voter's certificate against its CA and presents its own.
#[test]
fn an_edge_forwards_writes_to_a_tls_voter() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let key = |name: &str| {
        let data = dir.path().join(name);
        let out = ok(edgeconf_cli(&[
            "node-key",
            "--data-dir",
            data.to_str().unwrap(),
        ]));
        format!("{:?}", out.trim())
    };
    let (voter_key, edge_key) = (key("v"), key("e"));
    let tls = |cert: &str| {
        format!(
            "client_cert_file = {:?}\nclient_key_file = {:?}\nclient_trusted_ca_file = {:?}\n",
            path(dir.path(), &format!("pki/{cert}.crt")),
            path(dir.path(), &format!("pki/{cert}.key")),
            path(dir.path(), "pki/ca.crt"),
        )
    };
    let start = |name: &str, toml: String| {
        let (port, peer) = (free_port(), free_port());
        let config = dir.path().join(format!("{name}.toml"));
        let toml = toml.replace("PEER", &peer.to_string());
        std::fs::write(&config, toml).unwrap();
        let args: Vec<String> = [
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            dir.path().join(name).to_str().unwrap(),
            "--listen-client-urls",
            &format!("https://127.0.0.1:{port}"),
            "--listen-peer-urls",
            &format!("quic://127.0.0.1:{peer}"),
        ]
        .map(String::from)
        .to_vec();
        (
            Agent::spawn(dir.path(), dir.path().join(name), port, &args),
            peer,
        )
    };
    let (voter, voter_peer) = start(
        "v",
        format!(
            "name = \"n1\"\n{}[peer_trust]\nkeys = [{voter_key}, {edge_key}]\n",
            tls("n1")
        ),
    );
    let (edge, _) = start(
        "e",
        format!(
            "name = \"e1\"\nrole = \"edge\"\nsync = [\"/app/\"]\n{}\
             [gossip]\nseeds = [\"127.0.0.1:{voter_peer}\"]\n\
             [peer_trust]\nkeys = [{voter_key}]\nvoters = [{voter_key}]\n",
            tls("e1")
        ),
    );
    let on = |agent: &Agent| {
        vec![
            "--endpoints".to_string(),
            format!("https://{}", agent.endpoint()),
            "--cacert".to_string(),
            path(dir.path(), "pki/ca.crt"),
        ]
    };
    // The edge learns the voter's client URL by gossip: retry until then.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let put = run(&on(&edge), &["put", "/app/x", "through-tls"]);
        if put.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edge did not forward: {}\n{}",
            stderr(&put),
            edge.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = ok(run(&on(&voter), &["get", "/app/x", "--print-value-only"]));
    assert_eq!(got, "through-tls\n");
}
