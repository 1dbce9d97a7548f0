//! `[[check]]`: health-check plugins run on their interval. Results are
//! kept for status and metrics; a change of status is logged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::host::{CallContext, KeyReader};
use super::{now_unix_ms, HealthStatus, Plugins};
use crate::config::CheckEntry;

pub use crate::gossip::Health;

impl From<HealthStatus> for Health {
    fn from(status: HealthStatus) -> Self {
        match status {
            HealthStatus::Passing => Health::Passing,
            HealthStatus::Warning => Health::Warning,
            HealthStatus::Critical => Health::Critical,
        }
    }
}

/// The latest result of one check.
#[derive(Debug, Clone)]
pub struct CheckState {
    pub plugin: String,
    pub interval: Duration,
    /// None until the first run ends.
    pub health: Option<Health>,
    pub output: String,
    pub runs: u64,
    /// Runs in which the plugin itself failed (timeout, memory, trap).
    pub plugin_failures: u64,
    pub checked_unix_ms: i64,
    /// When `health` last changed.
    pub since_unix_ms: i64,
}

/// Every check's latest result, by name.
#[derive(Default)]
pub struct CheckStatus(Mutex<BTreeMap<String, CheckState>>);

impl CheckStatus {
    pub fn snapshot(&self) -> BTreeMap<String, CheckState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets the results of checks no longer configured.
    pub fn retain(&self, names: &[&str]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| names.contains(&name.as_str()));
    }

    fn record(&self, entry: &CheckEntry, health: Health, output: String, plugin_failed: bool) {
        let now = now_unix_ms();
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let state = all.entry(entry.name.clone()).or_insert_with(|| CheckState {
            plugin: entry.plugin.clone(),
            interval: entry.interval,
            health: None,
            output: String::new(),
            runs: 0,
            plugin_failures: 0,
            checked_unix_ms: 0,
            since_unix_ms: now,
        });
        if state.health != Some(health) {
            let from = state.health.map_or("unknown", Health::as_str);
            match health {
                Health::Passing => {
                    tracing::info!(check = %entry.name, from, to = health.as_str(), %output, "health check changed")
                }
                _ => {
                    tracing::warn!(check = %entry.name, from, to = health.as_str(), %output, "health check changed")
                }
            }
            state.since_unix_ms = now;
        }
        state.health = Some(health);
        state.output = output;
        state.runs += 1;
        state.plugin_failures += u64::from(plugin_failed);
        state.checked_unix_ms = now;
    }
}

/// Runs every check until `stop` turns true.
pub async fn run(
    plugins: Arc<Plugins>,
    entries: Vec<CheckEntry>,
    keys: Option<Arc<dyn KeyReader>>,
    status: Arc<CheckStatus>,
    stop: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for entry in entries {
        let (plugins, keys, status, mut stop) =
            (plugins.clone(), keys.clone(), status.clone(), stop.clone());
        tasks.spawn(async move {
            let context = CallContext {
                settings: Arc::new(entry.settings.clone()),
                keys,
            };
            let mut ticks = tokio::time::interval(entry.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                let (plugins, context, args, name) = (
                    plugins.clone(),
                    context.clone(),
                    entry.args.clone(),
                    entry.plugin.clone(),
                );
                let outcome =
                    tokio::task::spawn_blocking(move || plugins.check(&name, &context, &args))
                        .await;
                match outcome {
                    Ok(Ok(result)) => {
                        status.record(&entry, result.status.into(), result.output, false)
                    }
                    Ok(Err(err)) => status.record(
                        &entry,
                        Health::Critical,
                        format!("plugin {} {err}", entry.plugin),
                        true,
                    ),
                    Err(err) => status.record(
                        &entry,
                        Health::Critical,
                        format!("the check task failed: {err}"),
                        true,
                    ),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// How often the agent's check results are compared with what it
/// announces in gossip.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// How much of a check's output travels in gossip.
const ANNOUNCED_OUTPUT: usize = 200;

/// Announces the checks' results in this agent's gossip metadata (a change
/// spreads to the fleet; rollout gates count critical checks).
pub async fn announce(
    status: Arc<CheckStatus>,
    membership: Arc<crate::gossip::Membership>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(ANNOUNCE_EVERY);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let checks: Vec<crate::gossip::AgentCheck> = status
            .snapshot()
            .into_iter()
            .filter_map(|(name, state)| {
                let health = state.health?;
                // A passing check's output may change every run; only a
                // change of health is worth an announcement.
                let output = match health {
                    Health::Passing => String::new(),
                    _ => state.output.chars().take(ANNOUNCED_OUTPUT).collect(),
                };
                Some(crate::gossip::AgentCheck {
                    name,
                    health,
                    output,
                })
            })
            .collect();
        membership.update_meta(|meta| meta.checks = checks);
    }
}
