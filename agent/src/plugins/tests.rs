//! Unit tests against the components `plugins/build.sh` builds from the
//! sources in `plugins/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::validators::{Rejection, Validators};
use super::*;
use crate::config::{Capabilities, HostPort, Limits, PluginEntry, PluginKind, ValidateEntry};
use crate::signing::{Identities, Keyring, TrustPolicy};
use crate::store::{Command, PutRequest, TxnOp, TxnRequest};

fn wasm(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the plugins with ./plugins/build.sh (./setup.sh does)",
        path.display()
    );
    path
}

fn load(
    name: &str,
    kind: PluginKind,
    limits: Limits,
    grants: Capabilities,
) -> Result<Plugin, PluginError> {
    let path = wasm(name);
    let bytes = std::fs::read(&path).unwrap();
    Plugin::load(
        &Runtime::new(None)?,
        name,
        &path,
        &bytes,
        kind,
        limits,
        grants,
    )
}

fn validator(name: &str) -> Plugin {
    load(
        name,
        PluginKind::Validator,
        Limits::default(),
        Capabilities::default(),
    )
    .unwrap()
}

fn settings(pairs: &[(&str, &str)]) -> CallContext {
    CallContext {
        settings: Arc::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        keys: None,
    }
}

const SCHEMA: &str =
    r#"{"type":"object","required":["max"],"properties":{"max":{"type":"integer","maximum":100}}}"#;

#[test]
fn a_validator_accepts_and_refuses() {
    let plugin = validator("json-schema");
    let context = settings(&[("schema", SCHEMA)]);
    assert_eq!(
        plugin.validate(&context, "/a", br#"{"max":100}"#),
        Ok(Ok(()))
    );
    let refused = plugin
        .validate(&context, "/a", br#"{"max":101}"#)
        .unwrap()
        .unwrap_err();
    assert!(refused.contains("100"), "{refused}");
    assert!(plugin.validate(&context, "/a", b"{").unwrap().is_err());
    assert_eq!(plugin.digest.len(), 64);
}

#[test]
fn loops_memory_bombs_and_traps_fail_their_own_call() {
    let fast = Limits {
        timeout: std::time::Duration::from_millis(20),
        ..Limits::default()
    };
    let spin = load("spin", PluginKind::Validator, fast, Capabilities::default()).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        spin.validate(&settings(&[]), "/k", b"v"),
        Err(CallError::Timeout(fast.timeout))
    );
    // Bounded by the limit plus an epoch tick or two (loose: shared CI).
    assert!(started.elapsed() < std::time::Duration::from_secs(2));

    let small = Limits {
        memory: 2 << 20,
        ..Limits::default()
    };
    let hog = load(
        "memory-hog",
        PluginKind::Validator,
        small,
        Capabilities::default(),
    )
    .unwrap();
    assert_eq!(
        hog.validate(&settings(&[]), "/k", b"v"),
        Err(CallError::Memory(2 << 20))
    );

    let trap = validator("trap");
    assert!(matches!(
        trap.validate(&settings(&[]), "/k", b"v"),
        Err(CallError::Trap(_))
    ));
    // Each call has its own instance: a failed one leaves nothing behind.
    assert_eq!(
        spin.validate(&settings(&[]), "/k", b"v"),
        Err(CallError::Timeout(fast.timeout))
    );
    assert!(matches!(
        trap.validate(&settings(&[]), "/k", b"v"),
        Err(CallError::Trap(_))
    ));
}

#[test]
fn imports_need_their_grant_and_kinds_must_match() {
    let err = load(
        "net-probe",
        PluginKind::Validator,
        Limits::default(),
        Capabilities::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("edgeconf:plugin/http") && err.contains("http = [\"host:port\"]"),
        "{err}"
    );
    let granted = Capabilities {
        http: vec![HostPort::parse("127.0.0.1:1").unwrap()],
        ..Capabilities::default()
    };
    let probe = load(
        "net-probe",
        PluginKind::Validator,
        Limits::default(),
        granted,
    )
    .unwrap();
    // Not on the allow list: refused by the host, no connection tried.
    let refused = probe
        .validate(&settings(&[("url", "http://127.0.0.1:2/")]), "/k", b"v")
        .unwrap()
        .unwrap_err();
    assert!(
        refused.contains("not allowed for plugin net-probe"),
        "{refused}"
    );

    let err = load(
        "json-schema",
        PluginKind::HealthCheck,
        Limits::default(),
        Capabilities::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("not a health-check plugin"), "{err}");
    let err = load(
        "tcp-check",
        PluginKind::Validator,
        Limits::default(),
        Capabilities {
            tcp: vec![HostPort::parse("127.0.0.1:1").unwrap()],
            ..Capabilities::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("not a validator plugin"), "{err}");
}

#[test]
fn compiled_code_is_cached_by_content_and_engine() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let entry = PluginEntry {
        name: "v".into(),
        path: wasm("allow-list"),
        kind: PluginKind::Validator,
        limits: Limits::default(),
        capabilities: Capabilities::default(),
    };
    let first = Plugins::load(std::slice::from_ref(&entry), Some(cache.clone())).unwrap();
    assert!(matches!(
        first.get("v").unwrap().compiled,
        Compiled::Compiled(_)
    ));
    let second = Plugins::load(std::slice::from_ref(&entry), Some(cache.clone())).unwrap();
    assert_eq!(second.get("v").unwrap().compiled, Compiled::FromCache);
    // A damaged cache file is compiled again, not trusted.
    for file in std::fs::read_dir(&cache).unwrap() {
        std::fs::write(file.unwrap().path(), b"garbage").unwrap();
    }
    let third = Plugins::load(std::slice::from_ref(&entry), Some(cache.clone())).unwrap();
    assert!(matches!(
        third.get("v").unwrap().compiled,
        Compiled::Compiled(_)
    ));
    let context = settings(&[("allow", "a,b")]);
    assert_eq!(third.validate("v", &context, "/k", b"a"), Ok(Ok(())));
}

#[test]
fn reload_swaps_good_files_and_keeps_the_old_on_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.wasm");
    std::fs::copy(wasm("allow-list"), &path).unwrap();
    let entry = PluginEntry {
        name: "v".into(),
        path: path.clone(),
        kind: PluginKind::Validator,
        limits: Limits::default(),
        capabilities: Capabilities {
            log: true,
            ..Capabilities::default()
        },
    };
    let plugins = Plugins::load(&[entry], None).unwrap();
    let context = settings(&[("allow", "yes")]);
    let before = plugins.get("v").unwrap();
    assert!(!plugins.reload("v").unwrap(), "same file, no reload");
    std::fs::copy(wasm("reject-all"), &path).unwrap();
    assert!(plugins.reload("v").unwrap());
    assert!(plugins
        .validate("v", &context, "/k", b"yes")
        .unwrap()
        .is_err());
    // A call holding the old plugin finishes on it.
    assert_eq!(before.validate(&context, "/k", b"yes"), Ok(Ok(())));
    std::fs::write(&path, b"not wasm").unwrap();
    assert!(plugins.reload("v").is_err());
    assert!(plugins.infos()[0].stats.reload_error.is_some());
    assert!(plugins
        .validate("v", &context, "/k", b"yes")
        .unwrap()
        .is_err());
}

#[test]
fn validators_check_every_write_of_a_command() {
    let entry = PluginEntry {
        name: "modes".into(),
        path: wasm("allow-list"),
        kind: PluginKind::Validator,
        limits: Limits::default(),
        capabilities: Capabilities::default(),
    };
    let plugins = Arc::new(Plugins::load(&[entry], None).unwrap());
    let bindings = [ValidateEntry {
        prefix: b"/mode/".to_vec(),
        plugin: "modes".into(),
        settings: BTreeMap::from([("allow".to_string(), "on,off".to_string())]),
    }];
    let validators = Validators::new(plugins, &bindings, None);
    let keyring = Keyring::new(TrustPolicy::default(), Identities::none(), Vec::new());
    let put = |key: &str, value: &str| {
        PutRequest::new(key.as_bytes().to_vec(), value.as_bytes().to_vec())
    };

    assert!(validators
        .check_command(&Command::Put(put("/mode/a", "on")), &keyring)
        .is_ok());
    assert!(validators
        .check_command(&Command::Put(put("/other", "maybe")), &keyring)
        .is_ok());
    let txn = Command::Txn(TxnRequest {
        compare: Vec::new(),
        success: vec![TxnOp::Put(put("/mode/a", "on"))],
        failure: vec![TxnOp::Put(put("/mode/b", "maybe"))],
    });
    let wrapped = Command::Authorized {
        auth_revision: 1,
        command: Box::new(txn),
    };
    assert!(validators.touches(&wrapped));
    match validators.check_command(&wrapped, &keyring) {
        Err(Rejection::Refused { plugin, key, .. }) => {
            assert_eq!((plugin.as_str(), key.as_str()), ("modes", "/mode/b"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A put that keeps its value is not asked about.
    let keep = PutRequest {
        ignore_value: true,
        ..put("/mode/a", "")
    };
    assert!(validators
        .check_command(&Command::Put(keep), &keyring)
        .is_ok());
}
