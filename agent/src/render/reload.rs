//! Reload commands: at most one run of each command at a time, requests
//! made while it runs folded into one more run, failures retried with
//! backoff.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A run that ended.
pub struct Finished {
    pub command: String,
    pub outcome: Result<(), String>,
}

/// What the runner should record about a finished run.
pub struct Report {
    pub dests: Vec<String>,
    pub outcome: Result<(), String>,
    /// When it is tried again, after a failure.
    pub retry_in: Option<Duration>,
}

#[derive(Default)]
struct CommandState {
    running: bool,
    /// Asked for again while running: run once more when it ends.
    rerun: bool,
    timeout: Duration,
    dests: BTreeSet<String>,
    failures: u32,
    retry_at: Option<Instant>,
}

pub struct Reloads {
    finished: mpsc::UnboundedSender<Finished>,
    commands: HashMap<String, CommandState>,
    /// Where commands asked for and not yet succeeded are kept, so a
    /// restart runs a reload the stop cut off (the file is already new
    /// then, and rendering alone would not ask for it again).
    pending_file: Option<PathBuf>,
}

impl Reloads {
    pub fn new(pending_file: Option<PathBuf>) -> (Self, mpsc::UnboundedReceiver<Finished>) {
        let (finished, receiver) = mpsc::unbounded_channel();
        let reloads = Self {
            finished,
            commands: HashMap::new(),
            pending_file,
        };
        (reloads, receiver)
    }

    /// Commands left pending by the previous run of the agent.
    pub fn left_pending(&self) -> Vec<String> {
        self.pending_file
            .as_deref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .map(|text| {
                text.lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes the commands not yet run successfully (atomically; a failure
    /// only loses the resume-after-restart, so it is logged).
    fn save_pending(&self) {
        let Some(path) = &self.pending_file else {
            return;
        };
        let mut pending: Vec<&str> = self
            .commands
            .iter()
            .filter(|(_, s)| s.running || s.rerun || s.retry_at.is_some())
            .map(|(c, _)| c.as_str())
            .filter(|c| !c.contains('\n'))
            .collect();
        pending.sort_unstable();
        let text: String = pending.iter().map(|c| format!("{c}\n")).collect();
        let written = path
            .parent()
            .ok_or_else(|| std::io::Error::other("no directory"))
            .and_then(|dir| {
                let mut temp = tempfile::NamedTempFile::new_in(dir)?;
                std::io::Write::write_all(&mut temp, text.as_bytes())?;
                temp.as_file().sync_all()?;
                temp.persist(path).map_err(|err| err.error)?;
                Ok(())
            });
        if let Err(err) = written {
            tracing::warn!(file = %path.display(), error = %err, "cannot record pending reload commands");
        }
    }

    /// Asks for `command` to run (once) because `dests` changed.
    pub fn request(&mut self, command: &str, timeout: Duration, dests: Vec<String>) {
        let state = self.commands.entry(command.to_string()).or_default();
        state.timeout = state.timeout.max(timeout);
        state.dests.extend(dests);
        // A new request supersedes a pending retry.
        state.retry_at = None;
        if state.running {
            state.rerun = true;
        } else {
            state.running = true;
            spawn(command.to_string(), state.timeout, self.finished.clone());
        }
        self.save_pending();
    }

    /// Records a finished run; starts the folded rerun if one was asked for.
    pub fn finished(&mut self, finished: Finished) -> Option<Report> {
        let state = self.commands.get_mut(&finished.command)?;
        state.running = false;
        let dests: Vec<String> = state.dests.iter().cloned().collect();
        let retry_in = match &finished.outcome {
            Ok(()) => {
                state.failures = 0;
                None
            }
            Err(_) => {
                state.failures += 1;
                let backoff = BACKOFF_START
                    .saturating_mul(1 << (state.failures - 1).min(6))
                    .min(BACKOFF_MAX);
                state.retry_at = Some(Instant::now() + backoff);
                Some(backoff)
            }
        };
        if std::mem::take(&mut state.rerun) {
            state.retry_at = None;
            state.running = true;
            spawn(
                finished.command.clone(),
                state.timeout,
                self.finished.clone(),
            );
        } else if retry_in.is_none() {
            state.dests.clear();
        }
        self.save_pending();
        Some(Report {
            dests,
            outcome: finished.outcome,
            retry_in,
        })
    }

    /// True while `command` runs or waits to run.
    pub fn is_active(&self, command: &str) -> bool {
        self.commands
            .get(command)
            .is_some_and(|s| s.running || s.rerun || s.retry_at.is_some())
    }

    /// The next retry, if any is waiting.
    pub fn next_retry(&self) -> Option<Instant> {
        self.commands.values().filter_map(|s| s.retry_at).min()
    }

    /// Starts the retries that are due.
    pub fn retry_due(&mut self, now: Instant) {
        for (command, state) in &mut self.commands {
            if state.retry_at.is_some_and(|at| at <= now) && !state.running {
                state.retry_at = None;
                state.running = true;
                spawn(command.clone(), state.timeout, self.finished.clone());
            }
        }
    }

    /// Forgets commands no entry names any more (unless running).
    pub fn retain(&mut self, configured: &HashSet<String>) {
        self.commands
            .retain(|command, state| state.running || configured.contains(command));
    }
}

fn spawn(command: String, timeout: Duration, finished: mpsc::UnboundedSender<Finished>) {
    tokio::spawn(async move {
        let outcome = run(&command, timeout).await;
        let _ = finished.send(Finished { command, outcome });
    });
}

/// Runs `command` with `sh -c` in a process group of its own; at the
/// timeout the whole group is killed. Standard error goes to a file, not a
/// pipe, so a daemon that keeps it open does not hold the wait.
pub(crate) async fn run(command: &str, timeout: Duration) -> Result<(), String> {
    let mut stderr =
        tempfile::tempfile().map_err(|err| format!("cannot make a file for stderr: {err}"))?;
    let stderr_for_child = stderr
        .try_clone()
        .map_err(|err| format!("cannot make a file for stderr: {err}"))?;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr_for_child)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("cannot start sh: {err}"))?;
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(err)) => return Err(format!("cannot wait for it: {err}")),
        Err(_) => {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) with a negative pid signals a process
                // group; it touches no memory of ours.
                unsafe {
                    libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
            return Err(format!(
                "did not finish within {} (its process group was killed)",
                humantime::format_duration(timeout)
            ));
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut text = String::new();
    let _ = stderr.seek(SeekFrom::Start(0));
    let _ = stderr.take(64 * 1024).read_to_string(&mut text);
    let tail: String = text
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    Err(if tail.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {tail}")
    })
}
