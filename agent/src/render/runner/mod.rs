//! The task that keeps rendered files current.
//!
//! It waits until this member has caught up with the cluster, renders
//! every entry once, then follows the store's commits: a change to an
//! entry's keys marks it dirty until its debounce window ends (the window
//! starts at the first change, so a burst costs one render and latency is
//! bounded). Reload commands go through [`Reloads`]: one run at a time per
//! command, retried with backoff. `notify` reports edits of the files
//! (drift), of the TOML file and of the templates.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::{broadcast, mpsc};

use super::reload::{Finished, Reloads};
use super::rollouts::RolloutValues;
use super::status::RenderStatus;
use super::vanished::{protected, RenderedKeys};
use super::{files, plain_values, produce_with, Compiled, Plan};
use crate::config::{Config, OnDrift};
use crate::consensus::Node;
use crate::gossip::Membership;
use crate::plugins::validators::ValidatorsCell;
use crate::rollout::stored::is_rollout_key;
use crate::services::{discover, Instance, Query};
use crate::signing::{Keyring, KeyringCell};
use crate::store::{KeyValue, RangeRequest};

mod entry;
mod watching;

/// How soon a render that failed for a passing reason (a write error, a
/// store read error) is tried again.
const RETRY_RENDER: Duration = Duration::from_secs(5);
/// How often the runner looks for a replaced keyring (SIGHUP).
const KEYRING_CHECK: Duration = Duration::from_secs(1);
/// How long the config file and templates must be quiet before an edit
/// is read (a file read in the middle of a save may be cut short).
const CONFIG_SETTLE: Duration = Duration::from_millis(150);

/// Reads the TOML file again (the agent's config loader).
pub type ConfigReloader = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

pub struct Runner {
    node: Arc<Node>,
    keyring: Arc<KeyringCell>,
    status: Arc<RenderStatus>,
    plan: Plan,
    config_path: Option<PathBuf>,
    reload_config: ConfigReloader,
    /// Where reload commands still owed are recorded across restarts.
    pending_file: Option<PathBuf>,
    /// What was last written to each destination (and whether it held a
    /// decrypted secret, which sets its default mode), to tell drift from
    /// our own writes.
    written: HashMap<PathBuf, (Vec<u8>, bool)>,
    /// The protected keys last written into each file: one leaves a file
    /// only behind a verified signed delete.
    rendered_keys: RenderedKeys,
    /// Hand edits already reported (`on_drift = "report"`), by content.
    reported: HashMap<PathBuf, Option<Vec<u8>>>,
    /// Entries waiting for their debounce window to end, by index in plan.
    dirty: HashMap<usize, Instant>,
    /// The last refused config edit, so one edit is reported once.
    refused: Option<String>,
    /// Validator plugins every value passes before it is rendered.
    validators: Arc<ValidatorsCell>,
    /// The fleet's membership, for templates that show services and for
    /// this agent's name and labels in rollouts.
    membership: Option<Arc<Membership>>,
    /// New values of rollouts this agent is in the stage of.
    rollouts: RolloutValues,
    /// Why the last entry rendered failed.
    last_failure: Option<String>,
}

/// The outcome of rendering one entry.
enum Rendered {
    Changed,
    Unchanged,
    /// Failed for a reason of the content (template, signature, missing
    /// key): wait for the next change.
    Refused,
    /// Failed for a passing reason: try again soon.
    Failed,
}

impl Runner {
    pub fn new(
        node: Arc<Node>,
        keyring: Arc<KeyringCell>,
        status: Arc<RenderStatus>,
        plan: Plan,
        config_path: Option<PathBuf>,
        reload_config: ConfigReloader,
        pending_file: Option<PathBuf>,
    ) -> Self {
        Self {
            node,
            keyring,
            status,
            plan,
            config_path,
            reload_config,
            pending_file,
            written: HashMap::new(),
            rendered_keys: RenderedKeys::default(),
            reported: HashMap::new(),
            dirty: HashMap::new(),
            refused: None,
            validators: Arc::default(),
            membership: None,
            rollouts: RolloutValues::default(),
            last_failure: None,
        }
    }

    /// Values pass these validator plugins before they are rendered.
    pub fn with_validators(mut self, validators: Arc<ValidatorsCell>) -> Self {
        self.validators = validators;
        self
    }

    /// Templates see the fleet's service instances from `membership`, and
    /// render again when they change.
    pub fn with_membership(mut self, membership: Arc<Membership>) -> Self {
        self.membership = Some(membership);
        self
    }

    pub async fn run(mut self, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut fleet = match &self.membership {
            Some(membership) => membership.subscribe(),
            None => tokio::sync::watch::channel(0).1,
        };
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
        let (mut reloads, mut finished) = Reloads::new(self.pending_file.clone());
        let owed = reloads.left_pending();
        let mut keyring = self.keyring.get();
        self.refresh_rollouts();
        let all: Vec<usize> = (0..self.plan.entries.len()).collect();
        self.render(&all, true, &mut reloads).await;
        self.publish_rollouts(&reloads);
        // Reloads the last run of the agent asked for and did not finish
        // (it stopped or crashed after writing the file).
        let owed: Vec<String> = owed.into_iter().filter(|c| !reloads.is_active(c)).collect();
        for command in owed {
            let naming: Vec<&Compiled> = self
                .plan
                .entries
                .iter()
                .map(|c| &**c)
                .filter(|c| c.entry.reload.as_ref() == Some(&command))
                .collect();
            if let Some(timeout) = naming.iter().map(|c| c.entry.reload_timeout).max() {
                tracing::info!(command = %command, "running a reload left pending before the restart");
                let dests = naming
                    .iter()
                    .map(|c| c.entry.dest.display().to_string())
                    .collect();
                reloads.request(&command, timeout, dests);
            }
        }
        let mut keyring_check = tokio::time::interval(KEYRING_CHECK);
        // When the config file or a template was last changed, plus
        // CONFIG_SETTLE: the time to read it again.
        let mut config_edited: Option<Instant> = None;

        loop {
            let next = self
                .dirty
                .values()
                .copied()
                .chain(reloads.next_retry())
                .chain(config_edited)
                .min();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            // Renders run after the select: its other branches (the stop
            // signal's guard among them) must not live across their awaits.
            let mut time_is_up = false;
            tokio::select! {
                commit = commits.recv() => match commit {
                    Ok(commit) => {
                        for event in &commit.events {
                            self.mark(|compiled| {
                                compiled.range().is_some_and(|r| r.contains(&event.kv.key))
                            });
                        }
                        let rollouts = commit.events.iter().any(|e| is_rollout_key(&e.kv.key));
                        // A rollout moved: entries render again if what
                        // this agent renders changed.
                        if (rollouts || commit.replaced) && self.refresh_rollouts() {
                            self.mark(|compiled| compiled.range().is_some());
                        }
                        // A snapshot installed: anything may have changed.
                        if commit.replaced {
                            self.mark(|_| true);
                        }
                        if rollouts || commit.replaced {
                            self.publish_rollouts(&reloads);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.refresh_rollouts();
                        self.mark(|_| true);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some(path) = fs_events.recv() => {
                    // A watched directory that was removed lost its watch:
                    // make it again (restores re-create the directory).
                    if watched.contains(&path) && !path.is_dir() {
                        watched.remove(&path);
                        self.watch_dirs(&mut watcher, &mut watched);
                    }
                    if self.is_input(&path) {
                        // An editor's save is several events, and a file
                        // read between them may be cut short: read it once
                        // it has been quiet a moment.
                        config_edited = Some(Instant::now() + CONFIG_SETTLE);
                    } else {
                        self.check_drift(&path, &mut reloads);
                    }
                }
                Some(done) = finished.recv() => {
                    self.finished(&mut reloads, done);
                    self.publish_rollouts(&reloads);
                }
                Ok(()) = fleet.changed() => self.mark(|compiled| compiled.uses_services()),
                _ = keyring_check.tick() => {
                    // New trust or secret keys (SIGHUP): what was rendered
                    // under the old ones is checked again.
                    let current = self.keyring.get();
                    if !Arc::ptr_eq(&current, &keyring) {
                        keyring = current;
                        self.refresh_rollouts();
                        self.mark(|_| true);
                    }
                }
                _ = sleep => time_is_up = true,
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            if time_is_up {
                let now = Instant::now();
                if config_edited.is_some_and(|at| at <= now) {
                    config_edited = None;
                    if self.reload_plan(&mut reloads) {
                        self.watch_dirs(&mut watcher, &mut watched);
                    }
                }
                let due = self.take_due(now);
                if !due.is_empty() {
                    self.render(&due, false, &mut reloads).await;
                    self.publish_rollouts(&reloads);
                }
                reloads.retry_due(now);
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

    /// The dirty entries whose window has ended, and with them any other
    /// dirty entry naming the same reload command, so that command runs
    /// once for the change even when the entries' windows differ.
    fn take_due(&mut self, now: Instant) -> Vec<usize> {
        let mut due: Vec<usize> = self
            .dirty
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(index, _)| *index)
            .collect();
        let commands: HashSet<&String> = due
            .iter()
            .filter_map(|&i| self.plan.entries[i].entry.reload.as_ref())
            .collect();
        let companions: Vec<usize> = self
            .dirty
            .keys()
            .copied()
            .filter(|i| !due.contains(i))
            .filter(|&i| {
                self.plan.entries[i]
                    .entry
                    .reload
                    .as_ref()
                    .is_some_and(|c| commands.contains(c))
            })
            .collect();
        due.extend(companions);
        for index in &due {
            self.dirty.remove(index);
        }
        due.sort_unstable();
        due
    }

    /// Renders `indexes`; files that changed have their reload commands
    /// asked for (each command runs once for them all).
    async fn render(&mut self, indexes: &[usize], startup: bool, reloads: &mut Reloads) {
        let mut commands: Vec<(String, Duration, Vec<String>)> = Vec::new();
        for &index in indexes {
            let Some(compiled) = self.plan.entries.get(index).cloned() else {
                continue;
            };
            match self.render_one(index, &compiled, startup).await {
                Rendered::Changed => {
                    let entry = &compiled.entry;
                    if let Some(command) = &entry.reload {
                        let dest = entry.dest.display().to_string();
                        match commands.iter_mut().find(|(c, _, _)| c == command) {
                            Some((_, timeout, dests)) => {
                                *timeout = (*timeout).max(entry.reload_timeout);
                                dests.push(dest);
                            }
                            None => {
                                commands.push((command.clone(), entry.reload_timeout, vec![dest]))
                            }
                        }
                    }
                }
                Rendered::Failed => {
                    self.dirty.insert(index, Instant::now() + RETRY_RENDER);
                }
                Rendered::Unchanged | Rendered::Refused => {}
            }
        }
        for (command, timeout, dests) in commands {
            reloads.request(&command, timeout, dests);
        }
    }

    fn finished(&mut self, reloads: &mut Reloads, done: Finished) {
        let command = done.command.clone();
        let Some(report) = reloads.finished(done) else {
            return;
        };
        let indexes: Vec<usize> = (0..self.plan.entries.len())
            .filter(|&i| self.plan.entries[i].entry.reload.as_ref() == Some(&command))
            .collect();
        self.rollouts.reloaded(&indexes, &report.outcome);
        match (&report.outcome, report.retry_in) {
            (Ok(()), _) => tracing::info!(command = %command, "reload command succeeded"),
            (Err(err), retry_in) => {
                tracing::error!(command = %command, error = %err, retry_in = ?retry_in, "reload command failed")
            }
        }
        for dest in &report.dests {
            self.status.update_existing(dest, |s| {
                s.reloads += 1;
                match &report.outcome {
                    Ok(()) => s.reload_error = None,
                    Err(err) => {
                        s.reload_failures += 1;
                        s.reload_error = Some(err.clone());
                    }
                }
            });
        }
    }

    /// The TOML file or a template changed: take the new entries if they
    /// load, keep the running ones if not. True when the plan changed.
    fn reload_plan(&mut self, reloads: &mut Reloads) -> bool {
        let plan = (self.reload_config)()
            .map_err(|err| format!("{err:#}"))
            .and_then(|config| Plan::load(&config));
        let plan = match plan {
            Ok(plan) => plan,
            Err(err) => {
                if self.refused.as_ref() != Some(&err) {
                    tracing::error!(error = %err, "config file edit refused; the running [[render]] entries stay");
                    self.refused = Some(err);
                }
                return false;
            }
        };
        self.refused = None;
        let same = plan.entries.len() == self.plan.entries.len()
            && plan
                .entries
                .iter()
                .zip(&self.plan.entries)
                .all(|(a, b)| a.entry == b.entry && a.template_source == b.template_source);
        if same {
            return false;
        }
        tracing::info!(
            entries = plan.entries.len(),
            "config file or template edited: [[render]] entries reloaded (other settings need a restart)"
        );
        let dests: Vec<String> = plan
            .entries
            .iter()
            .map(|c| c.entry.dest.display().to_string())
            .collect();
        self.status.retain(&dests);
        self.written
            .retain(|dest, _| plan.entries.iter().any(|c| &c.entry.dest == dest));
        let commands: HashSet<String> = plan
            .entries
            .iter()
            .filter_map(|c| c.entry.reload.clone())
            .collect();
        reloads.retain(&commands);
        let sources: Vec<_> = plan
            .entries
            .iter()
            .map(|c| (c.entry.dest.clone(), c.range()))
            .collect();
        self.rendered_keys.retain_unchanged(&sources);
        self.plan = plan;
        self.rollouts.forget();
        self.dirty.clear();
        let now = Instant::now();
        for index in 0..self.plan.entries.len() {
            self.dirty.insert(index, now);
        }
        true
    }

    /// Reads the rollouts under way again; true when this agent's new
    /// values changed.
    fn refresh_rollouts(&mut self) -> bool {
        match &self.membership {
            Some(membership) => {
                self.rollouts
                    .refresh(self.node.store(), &self.keyring.get().trust, membership)
            }
            None => false,
        }
    }

    /// Tells the fleet which rollouts this agent renders, and how.
    fn publish_rollouts(&self, reloads: &Reloads) {
        if let Some(membership) = &self.membership {
            let reloading = |command: &str| reloads.is_active(command);
            self.rollouts
                .publish(&self.plan, &self.dirty, reloading, membership);
        }
    }
}
