use super::*;

fn load_text(text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), ConfigFile::default())
}

fn message(text: &str) -> String {
    load_text(text).unwrap_err().to_string()
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
