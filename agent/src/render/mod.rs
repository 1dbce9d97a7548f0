//! Materialize: watched keys rendered into local files.
//!
//! A [`Plan`] is the `[[render]]` entries with their templates compiled.
//! [`plain_values`] and [`produce_from`] turn the entry's keys (checked against the trust policy and
//! decrypted) into file bytes; [`runner`] keeps the files current: it
//! renders on changes after a debounce, writes atomically, runs reload
//! commands once per burst, repairs drift and takes live config edits.

pub mod files;
pub mod reload;
mod rollouts;
pub mod runner;
pub mod status;
pub mod template;
mod vanished;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use minijinja::Environment;

use crate::config::{Config, RenderEntry, RenderSource};
use crate::signing::{Checked, Keyring};
use crate::store::{KeyRange, KeyValue};
use template::TemplateEntry;

/// One entry, ready to render.
pub struct Compiled {
    pub entry: RenderEntry,
    template: Option<Environment<'static>>,
    /// The template's text, to tell an edited template from the same one.
    pub template_source: Option<String>,
}

/// Every `[[render]]` entry of a config, compiled.
#[derive(Clone, Default)]
pub struct Plan {
    pub entries: Vec<Arc<Compiled>>,
}

const TEMPLATE_NAME: &str = "template";

impl Plan {
    /// Reads and compiles the templates of `config`; an error names the
    /// entry and the template line.
    pub fn load(config: &Config) -> Result<Plan, String> {
        let mut entries = Vec::new();
        for entry in &config.render {
            let (template, template_source) = match &entry.template {
                None => (None, None),
                Some(path) => {
                    let source = files::read_text(path).map_err(|err| {
                        format!(
                            "[[render]] {}: template {}: {err}",
                            entry.name,
                            path.display()
                        )
                    })?;
                    let env = template::compile(TEMPLATE_NAME, source.clone()).map_err(|err| {
                        format!(
                            "[[render]] {}: template {}: {err}",
                            entry.name,
                            path.display()
                        )
                    })?;
                    (Some(env), Some(source))
                }
            };
            entries.push(Arc::new(Compiled {
                entry: entry.clone(),
                template,
                template_source,
            }));
        }
        Ok(Plan { entries })
    }
}

impl Compiled {
    /// The keys this entry reads.
    /// The keys it renders (none for a service's instances).
    pub fn range(&self) -> Option<KeyRange> {
        match &self.entry.source {
            RenderSource::Key(key) => Some(KeyRange::single(key.clone())),
            RenderSource::Prefix(prefix) => Some(KeyRange::prefix(prefix.clone())),
            RenderSource::Service(_) => None,
        }
    }

    /// Whether it shows service instances (and so follows their health).
    pub fn uses_services(&self) -> bool {
        matches!(self.entry.source, RenderSource::Service(_))
            || self
                .template_source
                .as_deref()
                .is_some_and(|source| source.contains("services"))
    }
}

/// The value of a stored key as a file may show it: checked against the
/// trust policy (signature, signer, sequence) and decrypted if secret.
pub(crate) fn plain_value(
    keyring: &Keyring,
    kv: &KeyValue,
    sequence: Option<u64>,
) -> Result<Vec<u8>, String> {
    let key = String::from_utf8_lossy(&kv.key);
    let checked = keyring.check_stored(&kv.key, &kv.value, sequence);
    if let Ok(Checked::Signed(change)) = &checked {
        // Refused ones fail the check; this one's prefix keeps them. Said
        // once per value.
        static WARNED: std::sync::Mutex<Vec<(Vec<u8>, u64)>> = std::sync::Mutex::new(Vec::new());
        let now = crate::consensus::now_unix_secs();
        let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
        let this = (kv.key.clone(), change.sequence);
        if change.is_expired(now) && !warned.contains(&this) {
            tracing::warn!(key = %key, expires_unix = change.expires_unix, "rendering an expired value: its prefix has on_expiry = \"keep\"; sign it again with a later --expires");
            warned.push(this);
        }
    }
    match checked {
        Ok(Checked::Plain(value)) => Ok(value),
        Ok(Checked::Signed(change)) if change.encrypted => {
            keyring.identities.decrypt(&change.value).map_err(|err| {
                format!("{key}: a secret encrypted to recipients this agent holds no identity of (an audience it is not in?): {err}")
            })
        }
        Ok(Checked::Signed(change)) => Ok(change.value),
        Err(err) => Err(format!("{key} at revision {}: {err}", kv.mod_revision)),
    }
}

/// A key and its plain value.
pub type PlainKv = (Vec<u8>, Vec<u8>);

/// The plain values of these keys (with the latest signed sequence of
/// each, as the store gives them): checked and decrypted.
pub fn plain_values(
    keyring: &Keyring,
    kvs: &[KeyValue],
    sequences: &[Option<u64>],
) -> Result<Vec<PlainKv>, String> {
    let mut plain = Vec::with_capacity(kvs.len());
    for (index, kv) in kvs.iter().enumerate() {
        let value = plain_value(keyring, kv, sequences.get(index).copied().flatten())?;
        plain.push((kv.key.clone(), value));
    }
    Ok(plain)
}

/// The bytes of the entry's file for keys and their plain values (checked
/// and decrypted already), in key order.
pub fn produce_from(compiled: &Compiled, plain: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<u8>, String> {
    produce_with(compiled, plain, &[])
}

/// [`produce_from`] with the fleet's service instances (the `services`
/// template variable; `instances` and `healthy` for a `service` entry).
pub fn produce_with(
    compiled: &Compiled,
    plain: &[(Vec<u8>, Vec<u8>)],
    services: &[crate::services::Instance],
) -> Result<Vec<u8>, String> {
    let mut entries = Vec::with_capacity(plain.len());
    for (key, value) in plain {
        let value = value.clone();
        let key = String::from_utf8_lossy(key).into_owned();
        let name = match &compiled.entry.source {
            RenderSource::Prefix(prefix) => key
                .strip_prefix(String::from_utf8_lossy(prefix).as_ref())
                .unwrap_or(&key)
                .to_string(),
            RenderSource::Key(_) | RenderSource::Service(_) => key.clone(),
        };
        entries.push((
            TemplateEntry {
                key,
                name,
                value: String::from_utf8_lossy(&value).into_owned(),
            },
            value,
        ));
    }
    let single = match &compiled.entry.source {
        RenderSource::Key(key) => match entries.first() {
            Some(found) => Some(found),
            None if compiled.entry.required => {
                return Err(format!(
                    "key {:?} does not exist (the last good file stays; set required = false to render it as empty)",
                    String::from_utf8_lossy(key)
                ))
            }
            None => None,
        },
        RenderSource::Prefix(_) | RenderSource::Service(_) => None,
    };
    let Some(env) = &compiled.template else {
        // A raw value: the bytes as stored (binary values stay binary).
        return Ok(single.map(|(_, raw)| raw.clone()).unwrap_or_default());
    };
    let prefix = match &compiled.entry.source {
        RenderSource::Prefix(prefix) => Some(String::from_utf8_lossy(prefix).into_owned()),
        RenderSource::Key(_) | RenderSource::Service(_) => None,
    };
    let empty = TemplateEntry {
        key: String::new(),
        name: String::new(),
        value: String::new(),
    };
    let single = match &compiled.entry.source {
        RenderSource::Key(_) => Some(single.map_or(&empty, |(entry, _)| entry)),
        RenderSource::Prefix(_) | RenderSource::Service(_) => None,
    };
    let listed: Vec<TemplateEntry> = entries.iter().map(|(entry, _)| entry.clone()).collect();
    let service = match &compiled.entry.source {
        RenderSource::Service(name) => Some(name.as_str()),
        _ => None,
    };
    template::render(
        env,
        TEMPLATE_NAME,
        template::Inputs {
            single,
            prefix: prefix.as_deref(),
            entries: &listed,
            services,
            service,
        },
    )
    .map(String::into_bytes)
    .map_err(|err| {
        format!(
            "template {}: {err}",
            compiled
                .entry
                .template
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        )
    })
}
