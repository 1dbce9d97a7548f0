//! Bootstrap: bad config files are refused before anything starts, with a
//! message naming the file, line and field; good ones and flags work.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{edgeconf, ok, run_with_timeout, stderr, Agent, BIN};

fn agent_with_config(dir: &Path, text: &str) -> std::process::Output {
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    run_with_timeout(
        Command::new(BIN)
            .current_dir(dir)
            .args(["agent", "--config", path.to_str().unwrap()]),
        Duration::from_secs(20),
    )
}

#[test]
fn bad_config_files_are_refused_naming_file_line_and_field() {
    let cases = [
        (
            "name = \"n1\"\ndata_dir = \"d\"\nlisten_clinet_urls = [\"http://127.0.0.1:1\"]\n",
            "line 3",
            "unknown field `listen_clinet_urls`",
        ),
        (
            "data_dir = \"d\"\nlisten_client_urls = [\"http://127.0.0.1\"]\n",
            "agent.toml:2",
            "without a port",
        ),
        (
            "data_dir = \"d\"\nlisten_client_urls = \"http://127.0.0.1:2379\"\n",
            "line 2",
            "listen_client_urls",
        ),
        (
            "data_dir = \"d\"\nname = \"n1\"\ninitial_cluster = \"n2=quic://127.0.0.1:2380\"\n",
            "agent.toml:3",
            "does not list this agent's name",
        ),
        (
            "data_dir = \"d\"\ninitial_cluster_state = \"old\"\n",
            "line 2",
            "expected `new` or `existing`",
        ),
        ("data_dir = \"d\"\nname = [\n", "line 2", "agent.toml"),
        (
            "data_dir = \"d\"\nname = \"n1\"\nlisten_peer_urls = [\"quic://127.0.0.1:3380\"]\n\
             initial_cluster = \"n1=quic://127.0.0.1:3380,n2=quic://127.0.0.1:4380\"\n",
            "peer_trust.keys",
            "edgeconf node-key",
        ),
    ];
    for (text, location, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let output = agent_with_config(dir.path(), text);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{text:?}: {err}");
        assert!(
            err.contains("agent.toml"),
            "{text:?} should name the file: {err}"
        );
        assert!(
            err.contains(location),
            "{text:?} should name {location}: {err}"
        );
        assert!(
            err.contains(expected),
            "{text:?} should say {expected}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            !dir.path().join("d").exists(),
            "nothing may start from a bad file"
        );
    }
}

#[test]
fn a_missing_config_file_is_named() {
    let output = run_with_timeout(
        Command::new(BIN).args(["agent", "--config", "/nonexistent/edgeconf.toml"]),
        Duration::from_secs(20),
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("/nonexistent/edgeconf.toml"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_example_configs_are_valid() {
    // `agent --check` refuses what `agent` refuses: peers without pinned keys.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "name = \"n1\"\nlisten_peer_urls = [\"quic://127.0.0.1:3380\"]\n\
         initial_cluster = \"n1=quic://127.0.0.1:3380,n2=quic://127.0.0.1:4380\"\n",
    )
    .unwrap();
    let checked = run_with_timeout(
        Command::new(BIN).args(["agent", "--check", "--config", path.to_str().unwrap()]),
        Duration::from_secs(20),
    );
    assert!(!checked.status.success());
    assert!(
        stderr(&checked).contains("peer_trust.keys"),
        "{}",
        stderr(&checked)
    );

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let output = run_with_timeout(
                Command::new(BIN).args(["agent", "--check", "--config", path.to_str().unwrap()]),
                Duration::from_secs(20),
            );
            let out = ok(output);
            assert!(out.contains("is valid"), "{}: {out}", path.display());
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no example configs found in {}",
        examples.display()
    );
}

#[test]
fn flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file_port = common::free_port();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        format!("name = \"from-file\"\nlisten_client_urls = [\"http://127.0.0.1:{file_port}\"]\n"),
    )
    .unwrap();
    let flag_port = common::free_port();
    let agent = Agent::start_with(
        dir.path(),
        flag_port,
        &["--config", path.to_str().unwrap(), "--name", "from-flag"],
    );
    // The helper passes --listen-client-urls and --data-dir as flags too.
    let json: serde_json::Value =
        serde_json::from_str(&ok(edgeconf(&agent, &["-w", "json", "status"]))).unwrap();
    assert_eq!(json[0]["endpoint"], agent.endpoint());
    assert!(agent.log().contains("name=from-flag"), "{}", agent.log());
}

#[test]
fn a_second_agent_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Agent::start(dir.path());
    let output = run_with_timeout(
        Command::new(BIN).args([
            "agent",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{}", common::free_port()),
        ]),
        Duration::from_secs(20),
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("in use by another process"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn sigterm_stops_the_agent_cleanly_and_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut agent = Agent::start_with(dir.path(), port, &[]);
    ok(edgeconf(&agent, &["put", "k", "v"]));
    assert!(
        agent.stop(),
        "agent did not exit cleanly on SIGTERM:\n{}",
        agent.log()
    );
    let agent = Agent::start_with(dir.path(), port, &[]);
    assert_eq!(
        ok(edgeconf(&agent, &["get", "k", "--print-value-only"])),
        "v\n"
    );
}

#[test]
fn a_restart_waits_for_the_lock_of_an_agent_still_exiting() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Agent::start(dir.path());
    ok(edgeconf(&first, &["put", "k", "v"]));
    // The second start finds the store locked, waits, and takes it once the
    // first agent is gone.
    let (path, port) = (dir.path().to_path_buf(), common::free_port());
    let second = std::thread::spawn(move || Agent::start_with(&path, port, &[]));
    std::thread::sleep(Duration::from_millis(1500));
    first.kill9();
    let second = second.join().expect("the second agent started");
    assert!(
        second.log().contains("waiting for it to let go"),
        "{}",
        second.log()
    );
    assert_eq!(
        ok(edgeconf(&second, &["get", "k", "--print-value-only"])),
        "v\n"
    );
}

#[test]
fn status_says_when_no_peer_was_ever_reached() {
    let dir = tempfile::tempdir().unwrap();
    // n2's key is pinned, but n2 never runs: n1 starts and can reach no one.
    let n2_key = ok(run_with_timeout(
        Command::new(BIN).args([
            "node-key",
            "--data-dir",
            dir.path().join("n2").to_str().unwrap(),
        ]),
        Duration::from_secs(20),
    ));
    let (port, own, other) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let config = dir.path().join("n1.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"n1\"\ninitial_cluster = \"n1=quic://127.0.0.1:{own},n2=quic://127.0.0.1:{other}\"\n\n[peer_trust]\nkeys = [\"{}\"]\n",
            n2_key.trim()
        ),
    )
    .unwrap();
    let args: Vec<String> = [
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        dir.path().join("n1").to_str().unwrap(),
        "--listen-client-urls",
        &format!("http://127.0.0.1:{port}"),
        "--listen-peer-urls",
        &format!("quic://127.0.0.1:{own}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent = Agent::spawn(dir.path(), dir.path().join("n1"), port, &args);
    let json: serde_json::Value =
        serde_json::from_str(&ok(edgeconf(&agent, &["-w", "json", "status"]))).unwrap();
    let errors = json[0]["errors"].to_string();
    assert!(errors.contains("no peer has ever been reached"), "{json}");
    assert!(errors.contains("edgeconf node-key"), "{json}");
}
