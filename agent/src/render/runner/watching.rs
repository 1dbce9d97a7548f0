//! Changes on disk: rendered files edited behind the agent's back (drift),
//! and the directories watched to see them and the inputs (the TOML file,
//! the templates).

use super::*;

impl Runner {
    /// A rendered file changed on disk: if it is not what we wrote, put it
    /// back (or report it).
    pub(super) fn check_drift(&mut self, path: &Path, reloads: &mut Reloads) {
        let Some(compiled) = self
            .plan
            .entries
            .iter()
            .find(|c| same_file(&c.entry.dest, path))
            .cloned()
        else {
            return;
        };
        let Some((expected, held_secret)) = self.written.get(&compiled.entry.dest).cloned() else {
            return;
        };
        let applied = compiled.entry.for_content(held_secret);
        let entry = &*applied;
        let current = files::read(&entry.dest).unwrap_or(None);
        let same = current.as_deref() == Some(expected.as_slice());
        if same && files::has_attributes(&entry.dest, entry) {
            return;
        }
        let dest = entry.dest.display().to_string();
        let what = match (&current, same) {
            (None, _) => "deleted",
            (Some(_), true) => "given another mode or owner",
            (Some(_), false) => "edited",
        };
        match entry.on_drift {
            OnDrift::Report => {
                if self.reported.get(&entry.dest) == Some(&current) {
                    return;
                }
                tracing::warn!(entry = %entry.name, dest = %dest, "rendered file {what} by hand (on_drift = \"report\": left as it is)");
                self.status.update(&dest, &entry.name, |s| {
                    s.drift = Some(format!("{what} by hand"));
                });
                self.reported.insert(entry.dest.clone(), current);
            }
            OnDrift::Restore => {
                tracing::warn!(entry = %entry.name, dest = %dest, "rendered file {what} by hand: restoring it");
                match files::write(entry, &expected) {
                    Ok(()) => {
                        self.status.update(&dest, &entry.name, |s| {
                            s.drift_repairs += 1;
                            s.drift = None;
                        });
                        // The program may have read the edited file.
                        if let Some(command) = &entry.reload {
                            reloads.request(command, entry.reload_timeout, vec![dest]);
                        }
                    }
                    Err(err) => {
                        tracing::error!(dest = %dest, error = %err, "cannot restore the rendered file");
                        self.status.update(&dest, &entry.name, |s| {
                            s.error = Some(format!("restoring after drift: {err}"));
                        });
                    }
                }
            }
        }
    }

    /// True for the TOML file and the templates.
    pub(super) fn is_input(&self, path: &Path) -> bool {
        self.config_path
            .as_deref()
            .is_some_and(|c| same_file(c, path))
            || self.plan.entries.iter().any(|c| {
                c.entry
                    .template
                    .as_deref()
                    .is_some_and(|t| same_file(t, path))
            })
    }

    /// Watches the directories of every destination, every template and
    /// the TOML file (directories, so renames and re-creations are seen;
    /// the TOML file's both as given and resolved, for symlinked configs).
    pub(super) fn watch_dirs(
        &self,
        watcher: &mut Option<notify::RecommendedWatcher>,
        watched: &mut BTreeSet<PathBuf>,
    ) {
        let Some(watcher) = watcher else { return };
        let parent = |p: &Path| p.parent().map(Path::to_path_buf);
        let mut dirs: Vec<PathBuf> = Vec::new();
        for compiled in &self.plan.entries {
            dirs.extend(parent(&compiled.entry.dest));
            dirs.extend(compiled.entry.template.as_deref().and_then(parent));
        }
        if let Some(config) = &self.config_path {
            dirs.extend(std::path::absolute(config).ok().as_deref().and_then(parent));
            dirs.extend(
                std::fs::canonicalize(config)
                    .ok()
                    .as_deref()
                    .and_then(parent),
            );
        }
        for dir in dirs {
            if watched.contains(&dir) {
                continue;
            }
            let _ = std::fs::create_dir_all(&dir);
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                Err(err) => {
                    tracing::warn!(dir = %dir.display(), error = %err, "cannot watch directory for changes")
                }
            }
        }
    }
}

pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || std::fs::canonicalize(a)
            .ok()
            .zip(std::fs::canonicalize(b).ok())
            .is_some_and(|(a, b)| a == b)
}
