//! Where a rollout stands. The leader writes it to the replicated store at
//! every step, so the next leader carries on from it and every agent reads
//! from it which value to render.

use serde::{Deserialize, Serialize};

/// How many events a rollout keeps (the first ones and the latest).
const MAX_EVENTS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Advancing through its stages.
    Running,
    /// Holding its stage: agents in it keep the new value, nothing
    /// advances, and unhealthy agents still roll it back.
    Paused,
    /// The new value is stored for every agent.
    Completed,
    /// The gate failed: every agent is back on the stored value.
    RolledBack,
    /// Stopped by an operator (or a forced write): every agent is back on
    /// the stored value.
    Aborted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Completed => "completed",
            Status::RolledBack => "rolled_back",
            Status::Aborted => "aborted",
        }
    }

    /// Whether agents in the stage render the new value.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }
}

/// How the agents of the current stage are doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Agents the selector picks (not counting those that left).
    pub selected: usize,
    /// Of those, agents in the current stage.
    pub in_stage: usize,
    /// Agents in the stage that render the new value.
    pub updated: usize,
    /// Agents in the stage that render it and are healthy.
    pub healthy: usize,
    /// Agents in the stage that failed to render it, have a critical
    /// service, or went down after taking it.
    pub failing: usize,
    /// Agents in the stage that were down before they took it; they
    /// converge when they come back, and are not held against it.
    pub down: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub unix_ms: i64,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub status: Status,
    /// Index into the plan's stages.
    pub stage: usize,
    /// Agents whose bucket is below it are in the stage; 0 until the
    /// leader opens the first stage.
    pub threshold: u32,
    pub stage_started_unix_ms: i64,
    /// When every healthy agent of the stage had the new value: the gate
    /// time counts from here.
    pub gate_started_unix_ms: Option<i64>,
    pub finished_unix_ms: Option<i64>,
    /// Why it stopped, or what stopped it.
    pub reason: String,
    /// The counts when it last changed step.
    pub counts: Counts,
    /// The last gate passed and the new value is being stored: nothing
    /// can stop it any more (a leader that dies meanwhile finishes it).
    #[serde(default)]
    pub completing: bool,
    pub events: Vec<Event>,
}

impl Progress {
    pub fn new(now_ms: i64) -> Progress {
        let mut progress = Progress {
            status: Status::Running,
            stage: 0,
            threshold: 0,
            stage_started_unix_ms: now_ms,
            gate_started_unix_ms: None,
            finished_unix_ms: None,
            reason: String::new(),
            counts: Counts::default(),
            completing: false,
            events: Vec::new(),
        };
        progress.log(now_ms, "started".to_string());
        progress
    }

    pub fn log(&mut self, unix_ms: i64, what: String) {
        if self.events.len() >= MAX_EVENTS {
            // Keep the first events (how it began) and the latest.
            self.events.remove(MAX_EVENTS / 2);
        }
        self.events.push(Event { unix_ms, what });
    }

    /// Ends the rollout.
    pub fn finish(&mut self, status: Status, reason: String, now_ms: i64) {
        self.status = status;
        self.finished_unix_ms = Some(now_ms);
        self.log(now_ms, format!("{}: {reason}", status.as_str()));
        self.reason = reason;
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("progress encodes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Progress, String> {
        serde_json::from_slice(bytes).map_err(|err| format!("unreadable rollout progress: {err}"))
    }
}
