//! Templates: minijinja, with the keys of an entry in the context and
//! filters to read JSON and TOML values.
//!
//! The context of every template:
//! - `key`, `value`: the entry's key and its value (for a `key` entry);
//! - `prefix`: the entry's prefix (for a `prefix` entry);
//! - `kvs`: a map of every key read to its value, in key order;
//! - `entries`: the same as a list of `{key, value, name}`, where `name` is
//!   the key without the prefix.
//!
//! Filters: `fromjson` and `fromtoml` parse a value into data.

use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value};
use serde::Serialize;

/// One key and its value as a template sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateEntry {
    pub key: String,
    pub name: String,
    pub value: String,
}

fn fromjson(text: &str) -> Result<Value, Error> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|err| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("fromjson: not JSON: {err}"),
        )
    })?;
    Ok(Value::from_serialize(value))
}

fn fromtoml(text: &str) -> Result<Value, Error> {
    // Only the message and the position: the error's own text quotes the
    // input line, which may be a decrypted secret.
    let value: toml::Value = toml::from_str(text).map_err(|err| {
        let at = err
            .span()
            .map(|span| format!(" at byte {}", span.start))
            .unwrap_or_default();
        Error::new(
            ErrorKind::InvalidOperation,
            format!("fromtoml: not TOML{at}: {}", err.message()),
        )
    })?;
    Ok(Value::from_serialize(value))
}

/// An environment holding one compiled template, named `name`.
pub fn compile(name: &str, source: String) -> Result<Environment<'static>, String> {
    let mut env = Environment::new();
    // A missing variable or key is an error, not an empty string: a config
    // file silently missing a value is worse than the last good file.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.add_filter("fromjson", fromjson);
    env.add_filter("fromtoml", fromtoml);
    env.add_template_owned(name.to_string(), source)
        .map_err(|err| describe(&err))?;
    Ok(env)
}

/// What a template sees.
pub struct Inputs<'a> {
    /// The key of a `key` entry.
    pub single: Option<&'a TemplateEntry>,
    /// The prefix of a `prefix` entry.
    pub prefix: Option<&'a str>,
    pub entries: &'a [TemplateEntry],
    /// Every service instance of the fleet.
    pub services: &'a [crate::services::Instance],
    /// The service of a `service` entry.
    pub service: Option<&'a str>,
}

/// Renders template `name` of `env` over `inputs`.
pub fn render(env: &Environment<'static>, name: &str, inputs: Inputs) -> Result<String, String> {
    let template = env.get_template(name).map_err(|err| describe(&err))?;
    let kvs: std::collections::BTreeMap<&str, &str> = inputs
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    let instances: Vec<&crate::services::Instance> = inputs
        .services
        .iter()
        .filter(|i| inputs.service == Some(i.name.as_str()))
        .collect();
    let healthy: Vec<&crate::services::Instance> =
        instances.iter().copied().filter(|i| i.healthy).collect();
    let context = minijinja::context! {
        key => inputs.single.map(|e| e.key.clone()),
        value => inputs.single.map(|e| e.value.clone()),
        prefix => inputs.prefix,
        kvs => kvs,
        entries => inputs.entries,
        services => inputs.services,
        service => inputs.service,
        instances => instances,
        healthy => healthy,
    };
    template.render(context).map_err(|err| describe(&err))
}

/// One line naming the template, the line and what went wrong.
fn describe(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
