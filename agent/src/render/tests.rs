//! Producing file bytes from keys: templates, filters, prefixes, required
//! keys, and what errors say.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::{AtomicMode, OnDrift};

fn compiled(source: RenderSource, template: Option<&str>, required: bool) -> Arc<Compiled> {
    let entry = RenderEntry {
        name: "test".into(),
        root: PathBuf::from("/tmp"),
        source,
        template: template.map(|_| PathBuf::from("/tmp/t.j2")),
        dest: PathBuf::from("/tmp/out"),
        mode: 0o644,
        mode_set: false,
        owner: None,
        group: None,
        reload: None,
        check: None,
        reload_timeout: Duration::from_secs(1),
        debounce: Duration::from_millis(1),
        on_drift: OnDrift::Restore,
        atomic: AtomicMode::Rename,
        required,
    };
    Arc::new(Compiled {
        entry,
        template: template.map(|t| template::compile(TEMPLATE_NAME, t.to_string()).unwrap()),
        template_source: template.map(str::to_string),
    })
}

fn kv(key: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
    (key.as_bytes().to_vec(), value.as_bytes().to_vec())
}

fn text(result: Result<Vec<u8>, String>) -> String {
    String::from_utf8(result.unwrap()).unwrap()
}

#[test]
fn raw_values_are_written_as_they_are() {
    let entry = compiled(RenderSource::Key(b"/k".to_vec()), None, true);
    let binary = (b"/k".to_vec(), vec![0, 159, 146, 150]);
    assert_eq!(
        produce_from(&entry, &[binary]).unwrap(),
        vec![0, 159, 146, 150]
    );
}

#[test]
fn templates_read_json_and_toml_values() {
    let json = compiled(
        RenderSource::Key(b"/app".to_vec()),
        Some("port={{ (value | fromjson).port }} key={{ key }}"),
        true,
    );
    assert_eq!(
        text(produce_from(&json, &[kv("/app", r#"{"port": 80}"#)])),
        "port=80 key=/app"
    );
    let toml = compiled(
        RenderSource::Key(b"/app".to_vec()),
        Some("{{ (value | fromtoml).server.host }}"),
        true,
    );
    assert_eq!(
        text(produce_from(&toml, &[kv("/app", "[server]\nhost = \"h\"")])),
        "h"
    );
}

#[test]
fn prefixes_list_every_key_with_its_short_name() {
    let entry = compiled(
        RenderSource::Prefix(b"/up/".to_vec()),
        Some("{% for e in entries %}{{ e.name }}={{ e.value }};{% endfor %}{{ kvs['/up/b'] }}"),
        true,
    );
    let out = text(produce_from(&entry, &[kv("/up/a", "1"), kv("/up/b", "2")]));
    assert_eq!(out, "a=1;b=2;2");
    // No keys: the list is empty, and a lookup of a missing one fails.
    assert!(produce_from(&entry, &[]).unwrap_err().contains("undefined"));
    let list_only = compiled(
        RenderSource::Prefix(b"/up/".to_vec()),
        Some("{% for e in entries %}{{ e.name }}{% endfor %}"),
        true,
    );
    assert_eq!(text(produce_from(&list_only, &[])), "");
}

#[test]
fn missing_keys_and_bad_values_are_errors_that_say_why() {
    let required = compiled(RenderSource::Key(b"/k".to_vec()), None, true);
    let err = produce_from(&required, &[]).unwrap_err();
    assert!(
        err.contains("\"/k\" does not exist") && err.contains("required = false"),
        "{err}"
    );
    let optional = compiled(
        RenderSource::Key(b"/k".to_vec()),
        Some("[{{ value }}]"),
        false,
    );
    assert_eq!(text(produce_from(&optional, &[])), "[]");

    let strict = compiled(
        RenderSource::Key(b"/k".to_vec()),
        Some("{{ missing }}"),
        true,
    );
    let err = produce_from(&strict, &[kv("/k", "v")]).unwrap_err();
    assert!(err.contains("undefined"), "{err}");

    let secret_toml = compiled(
        RenderSource::Key(b"/k".to_vec()),
        Some("{{ value | fromtoml }}"),
        true,
    );
    let err = produce_from(&secret_toml, &[kv("/k", "password = hunter2 oops")]).unwrap_err();
    assert!(
        err.contains("fromtoml") && !err.contains("hunter2"),
        "{err}"
    );
}

#[test]
fn broken_templates_do_not_compile() {
    let err = template::compile("t", "{% for %}".into()).err().unwrap();
    assert!(err.contains("syntax error"), "{err}");
}
