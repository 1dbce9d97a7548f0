//! What the renderer did last, per entry: for `edgeconf status`, logs and
//! tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryStatus {
    pub name: String,
    pub dest: String,
    /// The store revision the file was last rendered from.
    pub revision: i64,
    pub rendered_unix_ms: i64,
    pub bytes: u64,
    /// Renders attempted, and how many of them wrote the file.
    pub renders: u64,
    pub writes: u64,
    /// Why the last render failed (the last good file stayed), if it did.
    pub error: Option<String>,
    /// The last reload's outcome, if a reload ran.
    pub reload_error: Option<String>,
    pub reloads: u64,
    pub reload_failures: u64,
    /// Hand edits undone, and the last one reported (`on_drift = "report"`).
    pub drift_repairs: u64,
    pub drift: Option<String>,
}

/// Every entry's status, by destination.
#[derive(Debug, Default)]
pub struct RenderStatus(Mutex<BTreeMap<String, EntryStatus>>);

impl RenderStatus {
    pub fn update(&self, dest: &str, name: &str, change: impl FnOnce(&mut EntryStatus)) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = all.entry(dest.to_string()).or_insert_with(|| EntryStatus {
            name: name.to_string(),
            dest: dest.to_string(),
            ..Default::default()
        });
        change(entry);
    }

    /// Changes an entry that exists (a late report about a file no longer
    /// rendered is dropped).
    pub fn update_existing(&self, dest: &str, change: impl FnOnce(&mut EntryStatus)) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = all.get_mut(dest) {
            change(entry);
        }
    }

    /// Keeps only the entries of the current plan.
    pub fn retain(&self, dests: &[String]) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|dest, _| dests.contains(dest));
    }

    pub fn snapshot(&self) -> Vec<EntryStatus> {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.values().cloned().collect()
    }
}
