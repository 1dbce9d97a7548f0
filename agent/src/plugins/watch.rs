//! Plugin files are watched: a replaced `.wasm` is loaded and swapped in
//! (calls under way finish on the old one); a file that does not load is
//! refused and the old plugin keeps running.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};

use super::Plugins;

/// Changes are gathered this long before reloading: a copy in progress
/// sends several events.
const SETTLE: Duration = Duration::from_millis(200);
/// A directory that never goes quiet still gets its reload after this.
const MAX_SETTLE: Duration = Duration::from_secs(2);

/// Reloads plugins whose files change, until `stop` turns true.
pub async fn run(plugins: Arc<Plugins>, mut stop: watch::Receiver<bool>) {
    let files = plugins.files();
    let (events, mut changed) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads are not changes, but a file closed after writing is the
        // clearest sign a copy is complete.
        let relevant = |kind: &EventKind| !matches!(kind, EventKind::Access(access) if *access != AccessKind::Close(AccessMode::Write));
        if let Ok(event) = event {
            if relevant(&event.kind) {
                let _ = events.send(event.paths);
            }
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch plugin files; changes need a restart");
            return;
        }
    };
    let dir_of = |path: &Path| match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dirs: BTreeSet<PathBuf> = files.iter().map(|(_, path)| dir_of(path)).collect();
    for dir in &dirs {
        if let Err(err) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot watch a plugin directory; changes need a restart");
        }
    }
    // Any change in a plugin's directory rereads that plugin: a symlink
    // swapped above it (`ln -sfn`, Kubernetes' `..data`) names other
    // paths, and an unchanged file costs only its hash.
    let names_in = |paths: &[PathBuf]| -> BTreeSet<String> {
        files
            .iter()
            .filter(|(_, file)| {
                let dir = dir_of(file);
                paths
                    .iter()
                    .any(|p| p == file || p.parent() == Some(dir.as_path()) || *p == dir)
            })
            .map(|(name, _)| name.clone())
            .collect()
    };
    loop {
        let first = tokio::select! {
            paths = changed.recv() => match paths {
                Some(paths) => paths,
                None => return,
            },
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let mut names = names_in(&first);
        if names.is_empty() {
            continue;
        }
        // Gather until the directory is quiet for a moment.
        let latest = tokio::time::Instant::now() + MAX_SETTLE;
        let settle = tokio::time::sleep(SETTLE);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                paths = changed.recv() => match paths {
                    Some(paths) => {
                        let more = names_in(&paths);
                        if !more.is_empty() {
                            names.extend(more);
                            let next = tokio::time::Instant::now() + SETTLE;
                            settle.as_mut().reset(next.min(latest));
                        }
                    }
                    None => return,
                },
                _ = &mut settle => break,
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
        let plugins = plugins.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for name in names {
                // A refused file is logged and counted by `reload`.
                let _ = plugins.reload(&name);
            }
        })
        .await;
    }
}
