//! Output formats shared by the commands: etcdctl's `simple` and `json`,
//! and a `table` for people.

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Simple,
    Json,
    Table,
}

pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A header as etcdctl prints it in JSON.
pub fn header_json(header: Option<&etcd_client::ResponseHeader>) -> Value {
    match header {
        Some(h) => json!({
            "cluster_id": h.cluster_id(),
            "member_id": h.member_id(),
            "revision": h.revision(),
            "raft_term": h.raft_term(),
        }),
        None => Value::Null,
    }
}

/// A key-value as etcdctl prints it in JSON: key and value in base64, zero
/// fields left out.
pub fn kv_json(kv: &etcd_client::KeyValue) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("key".into(), base64(kv.key()).into());
    for (name, number) in [
        ("create_revision", kv.create_revision()),
        ("mod_revision", kv.mod_revision()),
        ("version", kv.version()),
        ("lease", kv.lease()),
    ] {
        if number != 0 {
            object.insert(name.into(), number.into());
        }
    }
    if !kv.value().is_empty() {
        object.insert("value".into(), base64(kv.value()).into());
    }
    Value::Object(object)
}

pub fn print_json(value: &Value) {
    println!("{value}");
}

pub fn print_table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(headers.to_vec());
    for row in rows {
        table.add_row(row);
    }
    println!("{table}");
}

/// RFC 3339 time of a Unix timestamp in milliseconds.
pub fn format_time(unix_ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// Byte counts as etcdctl shows database sizes.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{size:.1} {}", UNITS[unit])
    }
}
