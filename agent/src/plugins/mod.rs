//! WebAssembly plugins: validators on the write and render paths, and
//! health checks, as components of the worlds in `wit/plugin.wit`.
//!
//! [`Runtime`] is the shared engine (pooled instances, epoch deadlines,
//! a disk cache of compiled code). [`Plugin`] is one checked component;
//! [`Plugins`] holds the configured ones by name and swaps in a new build
//! when its file changes ([`watch`]), while calls under way finish on the
//! old one. [`validators`] and [`checks`] put them to work.

pub mod bindings;
pub mod checks;
pub mod host;
mod keys;
mod plugin;
pub mod reload;
mod runtime;
pub mod validators;
pub mod watch;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

pub use bindings::{HealthResult, HealthStatus};
pub use host::{CallContext, KeyReader};
pub use keys::StoreKeys;
pub use plugin::{CallError, Plugin};
pub use runtime::{Compiled, Runtime};

use crate::config::PluginEntry;

/// What an agent runs of its plugins, shared by the API, the renderer and
/// metrics. Empty when the config has no `[[plugin]]`.
#[derive(Clone, Default)]
pub struct AgentPlugins {
    pub plugins: Option<Arc<Plugins>>,
    pub validators: Arc<validators::ValidatorsCell>,
    pub checks: Arc<checks::CheckStatus>,
    /// What binds `[[validate]]` and runs `[[check]]` over `plugins`, at
    /// start and on SIGHUP (None without plugins).
    pub reload: Option<Arc<reload::PluginReload>>,
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read plugin {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("plugin {path} cannot be used: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("plugin cache {path}: {message}")]
    Cache { path: PathBuf, message: String },
    #[error("starting the WebAssembly engine: {0}")]
    Engine(String),
}

/// Counters and the last problem of one plugin, for status and metrics.
#[derive(Debug, Clone, Default)]
pub struct PluginStats {
    pub calls: u64,
    /// Calls that produced no verdict (timeout, memory, trap).
    pub failures: u64,
    /// Validator refusals.
    pub refusals: u64,
    pub last_failure: Option<String>,
    pub reloads: u64,
    /// Why the newest file on disk is not the one running, if it is not.
    pub reload_error: Option<String>,
    pub loaded_unix_ms: i64,
}

/// One configured plugin as status shows it.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    pub name: String,
    pub kind: crate::config::PluginKind,
    pub path: PathBuf,
    pub digest: String,
    pub stats: PluginStats,
}

struct Slot {
    entry: PluginEntry,
    current: RwLock<Arc<Plugin>>,
    stats: Mutex<PluginStats>,
}

/// The configured plugins, by name.
pub struct Plugins {
    runtime: Arc<Runtime>,
    slots: BTreeMap<String, Slot>,
}

impl Plugins {
    /// Loads every entry; the first that cannot be used fails the whole
    /// set (an agent must not start without a validator it was told to
    /// run). `cache_dir` keeps compiled code across restarts.
    pub fn load(
        entries: &[PluginEntry],
        cache_dir: Option<PathBuf>,
    ) -> Result<Plugins, PluginError> {
        let runtime = Runtime::new(cache_dir)?;
        let mut slots = BTreeMap::new();
        let mut digests = Vec::new();
        for entry in entries {
            let bytes = read(&entry.path)?;
            let plugin = load_entry(&runtime, entry, &bytes)?;
            log_loaded(&plugin, &entry.path, "loaded");
            digests.push(plugin.digest.clone());
            slots.insert(
                entry.name.clone(),
                Slot {
                    entry: entry.clone(),
                    current: RwLock::new(Arc::new(plugin)),
                    stats: Mutex::new(PluginStats {
                        loaded_unix_ms: now_unix_ms(),
                        ..PluginStats::default()
                    }),
                },
            );
        }
        runtime.prune_cache(&digests);
        Ok(Plugins { runtime, slots })
    }

    /// The plugin running under `name` now.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        let slot = self.slots.get(name)?;
        Some(read_lock(&slot.current).clone())
    }

    /// Reads `name`'s file again and swaps it in if it changed and loads.
    /// A file that fails keeps the old plugin running. `Ok(false)`: the
    /// file is the one already running.
    pub fn reload(&self, name: &str) -> Result<bool, PluginError> {
        let Some(slot) = self.slots.get(name) else {
            return Ok(false);
        };
        let outcome = read(&slot.entry.path).and_then(|bytes| {
            let digest = runtime::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            if digest == read_lock(&slot.current).digest {
                return Ok(None);
            }
            load_entry(&self.runtime, &slot.entry, &bytes).map(Some)
        });
        let mut stats = lock(&slot.stats);
        match outcome {
            Ok(None) => {
                stats.reload_error = None;
                Ok(false)
            }
            Ok(Some(plugin)) => {
                log_loaded(&plugin, &slot.entry.path, "reloaded");
                *slot.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(plugin);
                stats.reloads += 1;
                stats.reload_error = None;
                stats.loaded_unix_ms = now_unix_ms();
                drop(stats);
                let digests: Vec<String> = self
                    .slots
                    .values()
                    .map(|slot| read_lock(&slot.current).digest.clone())
                    .collect();
                self.runtime.prune_cache(&digests);
                Ok(true)
            }
            Err(err) => {
                tracing::error!(plugin = name, error = %err, "refused a new plugin file; the previous one keeps running");
                stats.reload_error = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Runs validator `name` and counts the outcome.
    pub fn validate(
        &self,
        name: &str,
        context: &CallContext,
        key: &str,
        value: &[u8],
    ) -> Result<Result<(), String>, CallError> {
        let plugin = self.get(name).ok_or_else(|| unknown(name))?;
        let outcome = plugin.validate(context, key, value);
        self.count(name, &outcome, |verdict| verdict.is_err());
        outcome
    }

    /// Runs health check `name` and counts the outcome.
    pub fn check(
        &self,
        name: &str,
        context: &CallContext,
        args: &[String],
    ) -> Result<HealthResult, CallError> {
        let plugin = self.get(name).ok_or_else(|| unknown(name))?;
        let outcome = plugin.check(context, args);
        self.count(name, &outcome, |_| false);
        outcome
    }

    fn count<T>(&self, name: &str, outcome: &Result<T, CallError>, refused: impl Fn(&T) -> bool) {
        let Some(slot) = self.slots.get(name) else {
            return;
        };
        let mut stats = lock(&slot.stats);
        stats.calls += 1;
        match outcome {
            Ok(verdict) => stats.refusals += u64::from(refused(verdict)),
            Err(err) => {
                stats.failures += 1;
                stats.last_failure = Some(err.to_string());
            }
        }
    }

    /// Every plugin with its counters, by name.
    pub fn infos(&self) -> Vec<PluginInfo> {
        self.slots
            .iter()
            .map(|(name, slot)| PluginInfo {
                name: name.clone(),
                kind: slot.entry.kind,
                path: slot.entry.path.clone(),
                digest: read_lock(&slot.current).digest.clone(),
                stats: lock(&slot.stats).clone(),
            })
            .collect()
    }

    /// `(name, file)` of every plugin, for the watcher.
    pub fn files(&self) -> Vec<(String, PathBuf)> {
        self.slots
            .iter()
            .map(|(name, slot)| (name.clone(), slot.entry.path.clone()))
            .collect()
    }
}

fn load_entry(
    runtime: &Arc<Runtime>,
    entry: &PluginEntry,
    bytes: &[u8],
) -> Result<Plugin, PluginError> {
    Plugin::load(
        runtime,
        &entry.name,
        &entry.path,
        bytes,
        entry.kind,
        entry.limits,
        entry.capabilities.clone(),
    )
}

fn log_loaded(plugin: &Plugin, path: &Path, what: &str) {
    match plugin.compiled {
        Compiled::FromCache => {
            tracing::info!(plugin = %plugin.name, kind = %plugin.kind, path = %path.display(), digest = %&plugin.digest[..16], "plugin {what} (compiled code from the cache)")
        }
        Compiled::Compiled(took) => {
            tracing::info!(plugin = %plugin.name, kind = %plugin.kind, path = %path.display(), digest = %&plugin.digest[..16], compile_ms = took.as_millis() as u64, "plugin {what} (compiled)")
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, PluginError> {
    std::fs::read(path).map_err(|error| PluginError::Read {
        path: path.to_path_buf(),
        error,
    })
}

fn unknown(name: &str) -> CallError {
    CallError::Instantiate(format!("no plugin named {name:?} is loaded"))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
