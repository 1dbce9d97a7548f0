//! SIGHUP for plugins: the `[[validate]]` bindings and the `[[check]]`
//! entries change without a restart, over the plugins loaded at start. A
//! changed `[[plugin]]` list needs a restart (`crate::config::reload` says
//! so); a plugin's file reloads by itself when it changes (`watch`).

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::checks::{self, CheckStatus};
use super::host::KeyReader;
use super::validators::{Validators, ValidatorsCell};
use super::Plugins;
use crate::config::{CheckEntry, PluginSections, ValidateEntry};

/// The plugins' parts a reload replaces.
pub struct PluginReload {
    plugins: Arc<Plugins>,
    validators: Arc<ValidatorsCell>,
    keys: Arc<dyn KeyReader>,
    status: Arc<CheckStatus>,
    stopped: watch::Receiver<bool>,
    /// The task running the checks in force.
    checks: Mutex<Option<AbortHandle>>,
}

impl PluginReload {
    pub fn new(
        plugins: Arc<Plugins>,
        validators: Arc<ValidatorsCell>,
        keys: Arc<dyn KeyReader>,
        status: Arc<CheckStatus>,
        stopped: watch::Receiver<bool>,
    ) -> PluginReload {
        PluginReload {
            plugins,
            validators,
            keys,
            status,
            stopped,
            checks: Mutex::new(None),
        }
    }

    /// Binds `entries` as the `[[validate]]` bindings in force.
    pub fn bind_validators(&self, entries: &[ValidateEntry]) {
        let validators = (!entries.is_empty()).then(|| {
            Arc::new(Validators::new(
                self.plugins.clone(),
                entries,
                Some(self.keys.clone()),
            ))
        });
        self.validators.set(validators);
    }

    /// Runs `entries` as the checks (stopping the ones before, and
    /// forgetting the results of checks no longer listed).
    pub fn run_checks(&self, entries: Vec<CheckEntry>) {
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        self.status.retain(&names);
        let task = tokio::spawn(checks::run(
            self.plugins.clone(),
            entries,
            Some(self.keys.clone()),
            self.status.clone(),
            self.stopped.clone(),
        ));
        let before = self
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task.abort_handle());
        if let Some(before) = before {
            before.abort();
        }
    }

    /// Applies the `[[validate]]` and `[[check]]` entries of `fresh` where
    /// they differ from `running`, when the `[[plugin]]` list is the same.
    /// Returns the sections it reloaded.
    pub fn apply(&self, running: &PluginSections, fresh: &PluginSections) -> Vec<&'static str> {
        let mut reloaded = Vec::new();
        if fresh.plugins != running.plugins {
            return reloaded;
        }
        if fresh.validate != running.validate {
            self.bind_validators(&fresh.validate);
            reloaded.push("[[validate]]");
        }
        if fresh.checks != running.checks {
            self.run_checks(fresh.checks.clone());
            reloaded.push("[[check]]");
        }
        reloaded
    }
}
