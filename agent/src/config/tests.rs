use super::*;
use crate::signing::OnExpiry;

fn load_text(text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), ConfigFile::default())
}

fn message(text: &str) -> String {
    load_text(text).unwrap_err().to_string()
}

/// A `[peer_trust]` section with one key, for configs that have peers.
fn pinned_peer() -> String {
    let key = crate::transport::tls::format_key(&[7u8; 32]);
    format!("\n[peer_trust]\nkeys = [\"{key}\"]\n")
}

#[test]
fn peers_without_pinned_keys_are_refused_with_how_to_get_them() {
    let cluster = message(
        "name = \"n1\"\nlisten_peer_urls = [\"quic://127.0.0.1:3380\"]\n\
         initial_cluster = \"n1=quic://127.0.0.1:3380,n2=quic://127.0.0.1:4380,n3=quic://127.0.0.1:5380\"\n",
    );
    for expected in [
        "peer_trust.keys",
        "edgeconf node-key",
        "3 members (n1, n2, n3)",
    ] {
        assert!(
            cluster.contains(expected),
            "{expected:?} missing from: {cluster}"
        );
    }
    let edge = message("role = \"edge\"\n[gossip]\nseeds = [\"127.0.0.1:4380\"]\n");
    assert!(
        edge.contains("peer_trust.keys") && edge.contains("127.0.0.1:4380"),
        "{edge}"
    );
    // A single member needs no peers; with a key it has nothing to refuse.
    assert!(load_text("name = \"alone\"\n").is_ok());
}

#[test]
fn no_file_gives_a_single_local_node() {
    let config = Config::load(None, ConfigFile::default()).unwrap();
    assert_eq!(config.name, "default");
    assert_eq!(config.data_dir, PathBuf::from("edgeconf.data"));
    assert_eq!(config.listen_client, ["127.0.0.1:2379".parse().unwrap()]);
    assert_eq!(
        config.initial_cluster,
        [("default".to_string(), "quic://127.0.0.1:2380".to_string())]
    );
    // etcd's defaults: a store sync (and log compaction) every 100,000
    // entries, 5,000 entries kept for followers behind.
    assert_eq!(
        (config.snapshot_count, config.snapshot_catchup_entries),
        (100_000, 5_000)
    );
}

#[test]
fn a_full_file_loads_and_flags_override_it() {
    let text = r#"
name = "n1"
data_dir = "/tmp/n1"
listen_client_urls = ["http://127.0.0.1:3379"]
listen_peer_urls = ["quic://127.0.0.1:3380"]
initial_cluster = "n1=quic://127.0.0.1:3380,n2=quic://127.0.0.1:4380"
initial_cluster_state = "existing"
"#;
    let text = &format!("{text}{}", pinned_peer());
    let config = load_text(text).unwrap();
    assert_eq!(config.initial_cluster.len(), 2);
    assert_eq!(config.initial_cluster_state, ClusterState::Existing);
    assert_eq!(config.advertise_client_urls, ["http://127.0.0.1:3379"]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let flags = ConfigFile {
        data_dir: Some("/tmp/elsewhere".into()),
        ..ConfigFile::default()
    };
    let config = Config::load(Some(&path), flags).unwrap();
    assert_eq!(config.data_dir, PathBuf::from("/tmp/elsewhere"));
}

#[test]
fn an_unknown_key_is_an_error_naming_line_and_key() {
    let msg = message("name = \"n1\"\nnmae = \"typo\"\n");
    assert!(msg.contains("agent.toml"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
    assert!(msg.contains("unknown field `nmae`"), "{msg}");
}

#[test]
fn malformed_toml_names_the_line() {
    let msg = message("name = \"n1\"\nlisten_client_urls = [\"http://127.0.0.1:2379\"\n");
    assert!(msg.contains("line 2") || msg.contains("line 3"), "{msg}");
}

#[test]
fn a_wrong_type_is_an_error_naming_the_field() {
    let msg = message("listen_client_urls = \"http://127.0.0.1:2379\"\n");
    assert!(msg.contains("listen_client_urls"), "{msg}");
    assert!(msg.contains("line 1"), "{msg}");
}

#[test]
fn bad_values_name_file_line_field_and_what_is_expected() {
    let cases = [
        (
            "name = \"a\"\nlisten_client_urls = [\"ftp://127.0.0.1:1\"]\n",
            ":2: `listen_client_urls`",
            "http://HOST:PORT",
        ),
        (
            "listen_client_urls = [\"http://127.0.0.1\"]\n",
            ":1: `listen_client_urls`",
            "without a port",
        ),
        (
            "listen_peer_urls = [\"quic://example.com:1\"]\n",
            ":1: `listen_peer_urls`",
            "not an IP address",
        ),
        (
            "name = \"n1\"\ninitial_cluster = \"n2=quic://127.0.0.1:2380\"\n",
            ":2: `initial_cluster`",
            "does not list",
        ),
        (
            "initial_cluster = \"nonsense\"\n",
            ":1: `initial_cluster`",
            "NAME=quic://",
        ),
        (
            "initial_cluster_state = \"maybe\"\n",
            "line 1",
            "unknown variant `maybe`",
        ),
        ("name = \"\"\n", ":1: `name`", "non-empty"),
        ("log_level = \"[\"\n", ":1: `log_level`", "expected a level"),
    ];
    for (text, location, expected) in cases {
        let msg = message(text);
        assert!(msg.contains(location), "{text:?} gave {msg}");
        assert!(msg.contains(expected), "{text:?} gave {msg}");
    }
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let err = Config::load(
        Some(Path::new("/nonexistent/edgeconf.toml")),
        ConfigFile::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent/edgeconf.toml"), "{err}");
}

const KEY: &str = "ed25519:0txUac/yeByjBE5cna0LtcOo6eUORa0G0jUtXcaywDc=";

#[test]
fn trust_and_secrets_load_into_a_policy() {
    let text = format!(
        r#"
[trust]
keys = ["{KEY}"]
allow_unsigned = false

[[trust.prefix]]
prefix = "/app/"
keys = []
on_expiry = "keep"

[secrets]
recipients = ["age16p7w25nvqemft6ggg3vjzuthclz8ha7ulvswfwy5a3chtk3vaf8s057jr7"]
"#
    );
    let config = load_text(&text).unwrap();
    assert_eq!(config.trust.keys.len(), 1);
    assert!(!config.trust.allow_unsigned);
    assert_eq!(config.trust.prefixes[0].prefix, b"/app/");
    assert_eq!(config.trust.threshold(b"/app/x"), 1);
    assert_eq!(config.trust.on_expiry(b"/app/x"), OnExpiry::Keep);
    assert_eq!(config.trust.on_expiry(b"/elsewhere"), OnExpiry::Refuse);
    assert!(config.trust.is_protected(b"/elsewhere"));
    assert_eq!(config.recipients.len(), 1);
    // Without [trust], nothing is protected.
    assert!(!load_text("").unwrap().trust.is_protected(b"/app/x"));
}

#[test]
fn bad_trust_and_secrets_name_the_field_and_what_to_do() {
    let cases = [
        ("[trust]\nkeys = [\"ed25519:nope\"]\n", ":2: `keys` in [trust]", "an ed25519 key has 32"),
        ("[trust]\nallow_unsigned = false\n", ":2: `allow_unsigned`", "nobody could write"),
        (
            "[[trust.prefix]]\nprefix = \"/app/\"\n",
            "`keys` in [[trust.prefix]] \"/app/\"",
            "nobody could write under it",
        ),
        (
            &format!("[trust]\nkeys = [\"{KEY}\"]\n[[trust.prefix]]\nprefix = \"\"\n"),
            "`prefix`",
            "allow_unsigned = false",
        ),
        (
            &format!("[trust]\nkeys = [\"{KEY}\"]\n[[trust.prefix]]\nprefix = \"/a\"\n[[trust.prefix]]\nprefix = \"/a\"\n"),
            "`prefix`",
            "listed twice",
        ),
        (
            &format!("[trust]\nkeys = [\"{KEY}\"]\n[[trust.prefix]]\nprefix = \"/a\"\nthreshold = 2\n"),
            "`threshold` in [[trust.prefix]] \"/a\"",
            "is 2: expected 1 to 1",
        ),
        (
            &format!("[trust]\nkeys = [\"{KEY}\"]\n[[trust.prefix]]\nprefix = \"/a\"\nthreshold = 0\n"),
            "`threshold`",
            "is 0: expected 1 to 1",
        ),
        ("[trust]\nkey = []\n", "unknown field `key`", "expected one of"),
        (
            &format!("[trust]\nkeys = [\"{KEY}\"]\n[[trust.prefix]]\nprefix = \"/a\"\non_expiry = \"drop\"\n"),
            "on_expiry",
            "expected `refuse` or `keep`",
        ),
        ("[secrets]\nrecipients = [\"age1nope\"]\n", ":2: `recipients`", "not an age recipient"),
        (
            "[secrets]\nidentity_files = [\"/nonexistent/fleet.age\"]\n",
            ":2: `identity_files`",
            "cannot read identity file /nonexistent/fleet.age",
        ),
    ];
    for (text, location, problem) in cases {
        let err = message(text);
        assert!(
            err.contains(location) && err.contains(problem),
            "{text:?}: {err}"
        );
    }
}

#[test]
fn fleet_settings_load_with_defaults() {
    let text = r#"
name = "n1"
listen_peer_urls = ["quic://127.0.0.1:3380"]
initial_cluster = "n1=quic://127.0.0.1:3380,n2=quic://127.0.0.1:4380,n3=quic://127.0.0.1:5380"

[labels]
region = "eu"

[[service]]
name = "web"
port = 8080
tags = ["v1"]
  [[service.check]]
  http = "http://127.0.0.1:8080/health"
  expect_status = 200
  interval = "1s"
  [[service.check]]
  ttl = "30s"
"#;
    let config = load_text(&format!("{text}{}", pinned_peer())).unwrap();
    assert_eq!(config.role, Role::Voter);
    assert_eq!(config.labels["region"], "eu");
    // Voters gossip with the other initial members unless told otherwise.
    assert_eq!(
        config.gossip.seeds,
        [
            "127.0.0.1:4380".parse().unwrap(),
            "127.0.0.1:5380".parse().unwrap()
        ]
    );
    let web = &config.services[0];
    assert_eq!(
        (web.id.as_str(), web.address.as_str()),
        ("web", "127.0.0.1")
    );
    assert_eq!(web.checks.len(), 2);
    assert_eq!(web.checks[0].interval, std::time::Duration::from_secs(1));
    assert!(matches!(web.checks[1].kind, CheckKind::Ttl { .. }));
}

#[test]
fn bad_fleet_settings_name_the_field() {
    let edge_alone = message("role = \"edge\"\n");
    assert!(
        edge_alone.contains("`seeds`") && edge_alone.contains("edge"),
        "{edge_alone}"
    );
    let role = message("role = \"king\"\n");
    assert!(role.contains("role"), "{role}");
    let label = message("[labels]\n\"bad label\" = \"x\"\n");
    assert!(label.contains("`labels`"), "{label}");
    let seed = message("[gossip]\nseeds = [\"nowhere\"]\n");
    assert!(
        seed.contains("`seeds`") && seed.contains("nowhere"),
        "{seed}"
    );
    let nat_voter = message("[gossip]\ndial_out_only = true\n");
    assert!(
        nat_voter.contains("`dial_out_only`") && nat_voter.contains("voter"),
        "{nat_voter}"
    );
    let timing = message("[gossip]\nprobe_interval = \"100ms\"\nprobe_timeout = \"200ms\"\n");
    assert!(timing.contains("`probe_timeout`"), "{timing}");
    let two = message("[[service]]\nname = \"web\"\nport = 80\n[[service.check]]\ntcp = \"127.0.0.1:80\"\nttl = \"5s\"\n");
    assert!(
        two.contains("[[service]] entry 1 (\"web\")") && two.contains("exactly one"),
        "{two}"
    );
    let plugin =
        message("[[service]]\nname = \"web\"\nport = 80\n[[service.check]]\nplugin = \"nope\"\n");
    assert!(
        plugin.contains("`plugin`") && plugin.contains("nope"),
        "{plugin}"
    );
    let twice =
        message("[[service]]\nname = \"web\"\nport = 80\n[[service]]\nname = \"web\"\nport = 81\n");
    assert!(twice.contains("`id`"), "{twice}");
    let url =
        message("[[service]]\nname = \"web\"\nport = 80\n[[service.check]]\nhttp = \"ftp://x\"\n");
    assert!(url.contains("`http`"), "{url}");
    // Whatever a service announces may end up in rendered files.
    let injected = message("[[service]]\nname = \"web\"\nport = 80\naddress = \"1.2.3.4; evil\"\n");
    assert!(injected.contains("`address`"), "{injected}");
    let forever =
        message("[[service]]\nname = \"web\"\nport = 80\n[[service.check]]\nttl = \"500000y\"\n");
    assert!(
        forever.contains("`ttl`") && forever.contains("24h"),
        "{forever}"
    );
}

#[test]
fn log_filters_are_levels_targets_and_target_levels() {
    for good in [
        "info",
        "edgeconf=debug,info",
        "warn,edgeconf::transport=trace",
        "OFF",
        "",
    ] {
        assert!(super::is_log_filter(good), "{good:?} refused");
    }
    for bad in ["[", "edgeconf=loud", "=info", "edgeconf[span]=debug"] {
        assert!(!super::is_log_filter(bad), "{bad:?} taken");
    }
}
