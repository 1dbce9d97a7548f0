//! The task that keeps rendered files current.
//!
//! It waits until this member has caught up with the cluster, renders
//! every entry once, then follows the store's commits: a change to an
//! entry's keys marks it dirty until its debounce window ends (the window
//! starts at the first change, so a burst costs one render and latency is
//! bounded). Reload commands run once per window however many entries
//! name them, in tasks of their own, and are retried with backoff.
//! `notify` reports edits of the files (drift) and of the TOML file.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::{broadcast, mpsc};

use super::status::RenderStatus;
use super::{files, produce, Compiled, Plan};
use crate::config::{Config, OnDrift};
use crate::consensus::Node;
use crate::signing::KeyringCell;
use crate::store::RangeRequest;

const RELOAD_BACKOFF_START: Duration = Duration::from_secs(1);
const RELOAD_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Reads the TOML file again (the agent's config loader).
pub type ConfigReloader = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

pub struct Runner {
    node: Arc<Node>,
    keyring: Arc<KeyringCell>,
    status: Arc<RenderStatus>,
    plan: Plan,
    config_path: Option<PathBuf>,
    reload_config: ConfigReloader,
    /// What was last written to each destination, to tell drift from our
    /// own writes.
    written: HashMap<PathBuf, Vec<u8>>,
    /// Entries waiting for their debounce window to end, by index in plan.
    dirty: HashMap<usize, Instant>,
    /// Reload commands that failed and wait for another try.
    retries: HashMap<String, Retry>,
    /// The config file's text when last looked at: one edit raises several
    /// events, and only a new text is worth loading (or refusing) again.
    config_text: Option<String>,
}

struct Retry {
    at: Instant,
    backoff: Duration,
    timeout: Duration,
    dests: Vec<String>,
}

/// The outcome of one reload command, reported back to the loop.
struct Reloaded {
    command: String,
    timeout: Duration,
    dests: Vec<String>,
    outcome: Result<(), String>,
}

impl Runner {
    pub fn new(
        node: Arc<Node>,
        keyring: Arc<KeyringCell>,
        status: Arc<RenderStatus>,
        plan: Plan,
        config_path: Option<PathBuf>,
        reload_config: ConfigReloader,
    ) -> Self {
        Self {
            node,
            keyring,
            status,
            plan,
            config_path,
            reload_config,
            written: HashMap::new(),
            dirty: HashMap::new(),
            retries: HashMap::new(),
            config_text: None,
        }
    }

    pub async fn run(mut self, mut stopped: tokio::sync::watch::Receiver<bool>) {
        // Subscribe first: nothing committed after the initial render's
        // read can be missed.
        let mut commits = self.node.store().subscribe();
        let (fs_sender, mut fs_events) = mpsc::unbounded_channel::<PathBuf>();
        let mut watcher = match notify::recommended_watcher(
            move |event: notify::Result<notify::Event>| {
                // Reads are not changes (and the agent's own reads of the
                // files would otherwise report themselves forever).
                let event = event
                    .ok()
                    .filter(|e| !matches!(e.kind, notify::EventKind::Access(_)));
                if let Some(event) = event {
                    for path in event.paths {
                        let _ = fs_sender.send(path);
                    }
                }
            },
        ) {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                tracing::error!(error = %err, "cannot watch rendered files; drift and config edits will not be noticed");
                None
            }
        };
        let mut watched = BTreeSet::new();
        self.watch_dirs(&mut watcher, &mut watched);

        tokio::select! {
            _ = self.catch_up() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let (reload_sender, mut reloads) = mpsc::unbounded_channel::<Reloaded>();
        let all: Vec<usize> = (0..self.plan.entries.len()).collect();
        self.render(&all, true, &reload_sender);

        loop {
            let next = self
                .dirty
                .values()
                .chain(self.retries.values().map(|r| &r.at))
                .min()
                .copied();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                commit = commits.recv() => match commit {
                    Ok(commit) => {
                        for event in &commit.events {
                            self.mark(|compiled| compiled.range().contains(&event.kv.key));
                        }
                        // A snapshot installed: anything may have changed.
                        if commit.replaced {
                            self.mark(|_| true);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.mark(|_| true),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some(path) = fs_events.recv() => {
                    if self.config_path.as_deref().is_some_and(|c| same_file(c, &path)) {
                        self.reload_plan();
                        self.watch_dirs(&mut watcher, &mut watched);
                    } else {
                        self.check_drift(&path, &reload_sender);
                    }
                }
                Some(reloaded) = reloads.recv() => self.reloaded(reloaded),
                _ = sleep => {
                    let now = Instant::now();
                    let due: Vec<usize> = self.dirty.iter().filter(|(_, at)| **at <= now).map(|(i, _)| *i).collect();
                    for index in &due {
                        self.dirty.remove(index);
                    }
                    if !due.is_empty() {
                        self.render(&due, false, &reload_sender);
                    }
                    let retry: Vec<String> = self.retries.iter().filter(|(_, r)| r.at <= now).map(|(c, _)| c.clone()).collect();
                    for command in retry {
                        if let Some(retry) = self.retries.get_mut(&command) {
                            retry.at = now + RELOAD_BACKOFF_MAX * 10; // until it reports back
                            spawn_reload(command, retry.timeout, retry.dests.clone(), &reload_sender);
                        }
                    }
                }
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Waits until this member has a leader and has applied everything the
    /// cluster committed before now, so nothing renders stale or empty.
    async fn catch_up(&self) {
        let mut logged = false;
        loop {
            match self.node.read_index().await {
                Ok(()) => return,
                Err(err) => {
                    if !logged {
                        tracing::info!(error = %err, "waiting to catch up with the cluster before rendering");
                        logged = true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    fn mark(&mut self, matches: impl Fn(&Compiled) -> bool) {
        let now = Instant::now();
        for (index, compiled) in self.plan.entries.iter().enumerate() {
            if matches(compiled) {
                self.dirty
                    .entry(index)
                    .or_insert(now + compiled.entry.debounce);
            }
        }
    }

    /// Renders `indexes`; files that changed have their reload commands
    /// run, each command once.
    fn render(
        &mut self,
        indexes: &[usize],
        startup: bool,
        reloads: &mpsc::UnboundedSender<Reloaded>,
    ) {
        let mut commands: Vec<(String, Duration, Vec<String>)> = Vec::new();
        for &index in indexes {
            let Some(compiled) = self.plan.entries.get(index).cloned() else {
                continue;
            };
            if self.render_one(&compiled, startup) {
                if let Some(command) = &compiled.entry.reload {
                    let dest = compiled.entry.dest.display().to_string();
                    match commands.iter_mut().find(|(c, _, _)| c == command) {
                        Some((_, timeout, dests)) => {
                            *timeout = (*timeout).max(compiled.entry.reload_timeout);
                            dests.push(dest);
                        }
                        None => commands.push((
                            command.clone(),
                            compiled.entry.reload_timeout,
                            vec![dest],
                        )),
                    }
                }
            }
        }
        for (command, timeout, dests) in commands {
            self.retries.remove(&command);
            spawn_reload(command, timeout, dests, reloads);
        }
    }

    /// Renders one entry; true when its file changed.
    fn render_one(&mut self, compiled: &Compiled, startup: bool) -> bool {
        let entry = &compiled.entry;
        let dest = entry.dest.display().to_string();
        let store = self.node.store();
        let outcome = store
            .range_with_sequences(&RangeRequest::new(compiled.range()))
            .map_err(|err| format!("reading the store: {err}"))
            .and_then(|(response, revision, sequences)| {
                produce(compiled, &self.keyring.get(), &response.kvs, &sequences)
                    .map(|content| (content, revision))
            });
        let (content, revision) = match outcome {
            Ok(rendered) => rendered,
            Err(err) => {
                tracing::error!(entry = %entry.name, dest = %dest, error = %err, "render failed; the last good file stays");
                self.status.update(&dest, &entry.name, |s| {
                    s.renders += 1;
                    s.error = Some(err);
                });
                return false;
            }
        };
        let current = files::read(&entry.dest).unwrap_or(None);
        let unchanged = current.as_deref() == Some(content.as_slice())
            && files::has_attributes(&entry.dest, entry);
        let written = if unchanged {
            Ok(false)
        } else {
            files::write(entry, &content).map(|()| true)
        };
        match written {
            Ok(changed) => {
                if startup || changed {
                    tracing::info!(entry = %entry.name, dest = %dest, bytes = content.len(), revision, changed, "rendered");
                }
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                self.status.update(&dest, &entry.name, |s| {
                    s.renders += 1;
                    s.writes += u64::from(changed);
                    s.revision = revision;
                    s.rendered_unix_ms = now_ms;
                    s.bytes = content.len() as u64;
                    s.error = None;
                });
                self.written.insert(entry.dest.clone(), content);
                changed
            }
            Err(err) => {
                let err = format!("writing {dest}: {err}");
                tracing::error!(entry = %entry.name, error = %err, "render failed; the last good file stays");
                self.status.update(&dest, &entry.name, |s| {
                    s.renders += 1;
                    s.error = Some(err);
                });
                false
            }
        }
    }

    /// A rendered file changed on disk: if it is not what we wrote, put it
    /// back (or report it).
    fn check_drift(&mut self, path: &Path, reloads: &mpsc::UnboundedSender<Reloaded>) {
        let Some(index) = self
            .plan
            .entries
            .iter()
            .position(|c| same_file(&c.entry.dest, path))
        else {
            return;
        };
        let compiled = self.plan.entries[index].clone();
        let entry = &compiled.entry;
        let Some(expected) = self.written.get(&entry.dest).cloned() else {
            return;
        };
        let current = files::read(&entry.dest).unwrap_or(None);
        if current.as_deref() == Some(expected.as_slice()) {
            return;
        }
        let dest = entry.dest.display().to_string();
        let what = if current.is_none() {
            "deleted"
        } else {
            "edited"
        };
        match entry.on_drift {
            OnDrift::Report => {
                tracing::warn!(entry = %entry.name, dest = %dest, "rendered file {what} by hand (on_drift = \"report\": left as it is)");
                self.status.update(&dest, &entry.name, |s| {
                    s.drift = Some(format!("{what} by hand"));
                });
            }
            OnDrift::Restore => {
                tracing::warn!(entry = %entry.name, dest = %dest, "rendered file {what} by hand: restoring it");
                match files::write(entry, &expected) {
                    Ok(()) => {
                        self.status
                            .update(&dest, &entry.name, |s| s.drift_repairs += 1);
                        // The program may have read the edited file.
                        if let Some(command) = &entry.reload {
                            spawn_reload(
                                command.clone(),
                                entry.reload_timeout,
                                vec![dest],
                                reloads,
                            );
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

    fn reloaded(&mut self, reloaded: Reloaded) {
        for dest in &reloaded.dests {
            self.status.update(dest, dest, |s| {
                s.reloads += 1;
                match &reloaded.outcome {
                    Ok(()) => s.reload_error = None,
                    Err(err) => {
                        s.reload_failures += 1;
                        s.reload_error = Some(err.clone());
                    }
                }
            });
        }
        match reloaded.outcome {
            Ok(()) => {
                tracing::info!(command = %reloaded.command, "reload command succeeded");
                self.retries.remove(&reloaded.command);
            }
            Err(err) => {
                let backoff = self
                    .retries
                    .get(&reloaded.command)
                    .map_or(RELOAD_BACKOFF_START, |r| {
                        (r.backoff * 2).min(RELOAD_BACKOFF_MAX)
                    });
                tracing::error!(command = %reloaded.command, error = %err, retry_in = ?backoff, "reload command failed");
                self.retries.insert(
                    reloaded.command,
                    Retry {
                        at: Instant::now() + backoff,
                        backoff,
                        timeout: reloaded.timeout,
                        dests: reloaded.dests,
                    },
                );
            }
        }
    }

    /// The TOML file changed: take its `[[render]]` entries if they are
    /// valid, keep the running ones if not.
    fn reload_plan(&mut self) {
        let text = self
            .config_path
            .as_deref()
            .and_then(|path| std::fs::read_to_string(path).ok());
        if text.is_some() && text == self.config_text {
            return;
        }
        self.config_text = text;
        let plan = (self.reload_config)()
            .map_err(|err| format!("{err:#}"))
            .and_then(|config| Plan::load(&config));
        let plan = match plan {
            Ok(plan) => plan,
            Err(err) => {
                tracing::error!(error = %err, "config file edit refused; the running [[render]] entries stay");
                return;
            }
        };
        let old: Vec<_> = self.plan.entries.iter().map(|c| c.entry.clone()).collect();
        let new: Vec<_> = plan.entries.iter().map(|c| c.entry.clone()).collect();
        if old == new && !templates_changed(&self.plan, &plan) {
            return;
        }
        tracing::info!(
            entries = new.len(),
            "config file edited: [[render]] entries reloaded (other settings need a restart)"
        );
        let dests: Vec<String> = new.iter().map(|e| e.dest.display().to_string()).collect();
        self.status.retain(&dests);
        self.written
            .retain(|dest, _| new.iter().any(|e| &e.dest == dest));
        self.plan = plan;
        self.dirty.clear();
        let now = Instant::now();
        for index in 0..self.plan.entries.len() {
            self.dirty.insert(index, now);
        }
    }

    /// Watches the directories of every destination and of the TOML file
    /// (directories, so renames and re-creations are seen).
    fn watch_dirs(
        &self,
        watcher: &mut Option<notify::RecommendedWatcher>,
        watched: &mut BTreeSet<PathBuf>,
    ) {
        let Some(watcher) = watcher else { return };
        let dirs = self
            .plan
            .entries
            .iter()
            .filter_map(|c| c.entry.dest.parent().map(Path::to_path_buf))
            .chain(self.config_path.iter().filter_map(|p| {
                std::fs::canonicalize(p)
                    .ok()?
                    .parent()
                    .map(Path::to_path_buf)
            }));
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
                    tracing::warn!(dir = %dir.display(), error = %err, "cannot watch directory for drift")
                }
            }
        }
    }
}

/// Templates are compared by content: an edited template file re-renders.
fn templates_changed(old: &Plan, new: &Plan) -> bool {
    let read = |plan: &Plan| -> Vec<Option<String>> {
        plan.entries
            .iter()
            .map(|c| {
                c.entry
                    .template
                    .as_ref()
                    .and_then(|p| files::read_text(p).ok())
            })
            .collect()
    };
    read(old) != read(new)
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || std::fs::canonicalize(a)
            .ok()
            .zip(std::fs::canonicalize(b).ok())
            .is_some_and(|(a, b)| a == b)
}

/// Runs `command` with `sh -c` in a task of its own, killed at `timeout`.
fn spawn_reload(
    command: String,
    timeout: Duration,
    dests: Vec<String>,
    reloads: &mpsc::UnboundedSender<Reloaded>,
) {
    let reloads = reloads.clone();
    tokio::spawn(async move {
        let outcome = run_reload(&command, timeout).await;
        let _ = reloads.send(Reloaded {
            command,
            timeout,
            dests,
            outcome,
        });
    });
}

async fn run_reload(command: &str, timeout: Duration) -> Result<(), String> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("cannot start sh: {err}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "did not finish within {} (killed)",
            humantime::format_duration(timeout)
        )),
        Ok(Err(err)) => Err(format!("cannot wait for it: {err}")),
        Ok(Ok(output)) if output.status.success() => Ok(()),
        Ok(Ok(output)) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: String = stderr
                .trim()
                .lines()
                .last()
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            Err(format!(
                "{}{}",
                output.status,
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {tail}")
                }
            ))
        }
    }
}
