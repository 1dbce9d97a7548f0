//! Plugin files are watched: a replaced `.wasm` is loaded and swapped in
//! (calls under way finish on the old one); a file that does not load is
//! refused and the old plugin keeps running.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};

use super::Plugins;

/// Changes are gathered this long before reloading: a copy in progress
/// sends several events.
const SETTLE: Duration = Duration::from_millis(200);

/// Reloads plugins whose files change, until `stop` turns true.
pub async fn run(plugins: Arc<Plugins>, mut stop: watch::Receiver<bool>) {
    let files = plugins.files();
    let (events, mut changed) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if !matches!(event.kind, notify::EventKind::Access(_)) {
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
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|(_, path)| path.parent().map(PathBuf::from))
        .collect();
    for dir in dirs {
        if let Err(err) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot watch a plugin directory; changes need a restart");
        }
    }
    let names_of = |paths: &[PathBuf]| -> BTreeSet<String> {
        files
            .iter()
            .filter(|(_, file)| {
                paths
                    .iter()
                    .any(|p| p == file || p.file_name() == file.file_name())
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
        let mut names = names_of(&first);
        if names.is_empty() {
            continue;
        }
        let settle = tokio::time::sleep(SETTLE);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                paths = changed.recv() => match paths {
                    Some(paths) => names.extend(names_of(&paths)),
                    None => return,
                },
                _ = &mut settle => break,
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
