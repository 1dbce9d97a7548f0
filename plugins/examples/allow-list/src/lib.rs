//! Validator: the value must be on an allow list.
//!
//! Settings (at least one of `pattern` and `allow`; a value passes if it
//! satisfies either):
//! * `pattern`: a regular expression (Rust `regex` syntax) the whole value
//!   must match;
//! * `allow`: a comma-separated list of allowed exact values (surrounding
//!   spaces are ignored);
//! * `key_pattern` (optional): a regular expression the whole key must
//!   match.

use regex::Regex;

fn validate(key: &str, value: &[u8]) -> Result<(), String> {
    let pattern = edgeconf_plugin::setting("pattern");
    let allow = edgeconf_plugin::setting("allow");
    let key_pattern = edgeconf_plugin::setting("key_pattern");

    if let Some(kp) = &key_pattern {
        if !whole(kp, "key_pattern")?.is_match(key) {
            return Err(format!("key {key:?} does not match {kp}"));
        }
    }
    if pattern.is_none() && allow.is_none() {
        return Err("allow-list: set `pattern` or `allow`".to_string());
    }
    let value =
        std::str::from_utf8(value).map_err(|_| format!("value of {key} is not UTF-8 text"))?;

    let allowed: Vec<&str> = allow
        .as_deref()
        .map(|a| a.split(',').map(str::trim).collect())
        .unwrap_or_default();
    if allowed.contains(&value) {
        return Ok(());
    }
    if let Some(p) = &pattern {
        if whole(p, "pattern")?.is_match(value) {
            return Ok(());
        }
    }
    Err(match (&pattern, allow.is_some()) {
        (Some(p), false) => format!("value {value:?} does not match {p}"),
        (None, _) => format!("value {value:?} is not one of {}", allowed.join(", ")),
        (Some(p), true) => format!(
            "value {value:?} does not match {p} and is not one of {}",
            allowed.join(", ")
        ),
    })
}

/// `pattern` anchored so that it must match the whole text.
fn whole(pattern: &str, setting: &str) -> Result<Regex, String> {
    let invalid =
        |e: regex::Error| format!("allow-list: setting {setting} is not a valid regex: {e}");
    // Checked on its own first, so that an error shows the pattern as written.
    Regex::new(pattern).map_err(invalid)?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(invalid)
}

edgeconf_plugin::validator!(validate);
