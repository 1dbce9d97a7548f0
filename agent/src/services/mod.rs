//! Services of this host: registered from `[[service]]` entries or through
//! the API, checked here, announced to the fleet in this agent's gossip
//! metadata. A registration lives as long as its agent's membership: when
//! the agent dies or leaves, every member drops its services.
//!
//! Discovery ([`discover`]) reads any member's view of the fleet.

pub mod checks;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;

use crate::config::services::{check_service, valid_host, valid_word, MAX_SERVICES};
use crate::config::{CheckKind, ServiceEntry, ServiceFile};
use crate::gossip::{Health, Membership, Record, ServiceState, State};
use crate::plugins::Plugins;

/// Bytes of check output announced by gossip.
const OUTPUT_LIMIT: usize = 200;
/// Where API registrations are kept across restarts.
const REGISTRATIONS_FILE: &str = "services.json";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("service {field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error("service {0:?} is defined in the agent's config file: edit [[service]] there")]
    FromConfig(String),
    #[error("no service {0:?} is registered on this agent (see `edgeconf service list`)")]
    Unknown(String),
    #[error("service {0:?} has no ttl check: only ttl checks take `edgeconf service pass`")]
    NoTtl(String),
    #[error("this agent already announces {0} services, the most it may")]
    TooMany(usize),
    #[error("cannot save registrations to {path}: {error}")]
    Save { path: String, error: std::io::Error },
}

/// The latest result of one check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub check: String,
    /// None until it first ran.
    pub health: Option<Health>,
    pub output: String,
}

struct Local {
    entry: ServiceEntry,
    from_config: bool,
    results: Vec<CheckResult>,
    /// When each ttl check runs out (by check index).
    ttl_deadlines: BTreeMap<usize, Instant>,
    runner: Option<tokio::task::AbortHandle>,
}

/// This agent's services.
pub struct Services {
    membership: Arc<Membership>,
    plugins: Option<Arc<Plugins>>,
    file: PathBuf,
    local: Mutex<BTreeMap<String, Local>>,
    /// Held while a registration changes: the file is written before the
    /// change takes effect, one change at a time.
    changing: Mutex<()>,
}

impl Services {
    /// Starts checking the configured services and the saved API ones.
    pub fn start(
        membership: Arc<Membership>,
        plugins: Option<Arc<Plugins>>,
        data_dir: &std::path::Path,
        configured: Vec<ServiceEntry>,
    ) -> Arc<Services> {
        let services = Arc::new(Services {
            membership,
            plugins,
            file: data_dir.join(REGISTRATIONS_FILE),
            local: Mutex::new(BTreeMap::new()),
            changing: Mutex::new(()),
        });
        for entry in configured {
            services.add(entry, true);
        }
        for file in services.saved() {
            let name = file.name.clone();
            match services.register(file) {
                Ok(_) => {}
                Err(err) => {
                    tracing::error!(service = %name, error = %err, "a saved registration no longer passes its checks; dropped")
                }
            }
        }
        services.publish();
        services
    }

    /// Applies the `[[service]]` entries of a reloaded config: entries gone
    /// stop, new or changed ones start (their checks from scratch),
    /// unchanged ones keep running; API registrations stay. Returns how
    /// many changed.
    pub fn reconfigure(self: &Arc<Self>, configured: Vec<ServiceEntry>) -> usize {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = self
            .lock()
            .iter()
            .filter(|(id, local)| {
                local.from_config && !configured.iter().any(|entry| &entry.id == *id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut changed = gone.len();
        for id in gone {
            if let Some(runner) = self.lock().remove(&id).and_then(|s| s.runner) {
                runner.abort();
            }
        }
        for entry in configured {
            let same = self
                .lock()
                .get(&entry.id)
                .is_some_and(|local| local.from_config && local.entry == entry);
            if !same {
                changed += 1;
                self.add(entry, true);
            }
        }
        if changed > 0 {
            self.publish();
        }
        changed
    }

    /// Registers (or replaces) a service through the API.
    pub fn register(self: &Arc<Self>, file: ServiceFile) -> Result<ServiceEntry, ServiceError> {
        let entry = check_service(file, &self.check_plugins())
            .map_err(|(field, problem)| ServiceError::Invalid { field, problem })?;
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let mut saved = {
            let local = self.lock();
            match local.get(&entry.id) {
                Some(existing) if existing.from_config => {
                    return Err(ServiceError::FromConfig(entry.id))
                }
                None if local.len() >= MAX_SERVICES => {
                    return Err(ServiceError::TooMany(local.len()))
                }
                _ => {}
            }
            api_registrations(&local)
        };
        saved.retain(|file| file.id.as_ref().unwrap_or(&file.name) != &entry.id);
        saved.push(entry.source.clone());
        self.save(&saved)?;
        self.add(entry.clone(), false);
        self.publish();
        tracing::info!(service = %entry.id, name = %entry.name, "service registered");
        Ok(entry)
    }

    /// Removes a service registered through the API.
    pub fn deregister(&self, id: &str) -> Result<(), ServiceError> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let mut saved = {
            let local = self.lock();
            match local.get(id) {
                None => return Err(ServiceError::Unknown(id.to_string())),
                Some(service) if service.from_config => {
                    return Err(ServiceError::FromConfig(id.to_string()))
                }
                Some(_) => {}
            }
            api_registrations(&local)
        };
        saved.retain(|file| file.id.as_deref().unwrap_or(&file.name) != id);
        self.save(&saved)?;
        if let Some(runner) = self.lock().remove(id).and_then(|s| s.runner) {
            runner.abort();
        }
        self.publish();
        tracing::info!(service = %id, "service deregistered");
        Ok(())
    }

    /// A ttl check's heartbeat: its service's ttl checks pass until their
    /// ttl runs out again.
    pub fn pass(&self, id: &str, note: &str) -> Result<(), ServiceError> {
        {
            let mut local = self.lock();
            let service = local
                .get_mut(id)
                .ok_or_else(|| ServiceError::Unknown(id.to_string()))?;
            let ttls: Vec<(usize, std::time::Duration)> = service
                .entry
                .checks
                .iter()
                .enumerate()
                .filter_map(|(i, check)| match check.kind {
                    CheckKind::Ttl { ttl } => Some((i, ttl)),
                    _ => None,
                })
                .collect();
            if ttls.is_empty() {
                return Err(ServiceError::NoTtl(id.to_string()));
            }
            for (index, ttl) in ttls {
                // Check durations are at most a day: this cannot overflow.
                let deadline = Instant::now().checked_add(ttl).unwrap_or_else(Instant::now);
                service.ttl_deadlines.insert(index, deadline);
                service.results[index].health = Some(Health::Passing);
                service.results[index].output = note.to_string();
            }
        }
        self.publish();
        Ok(())
    }

    /// This agent's services with their checks' latest results.
    pub fn local(&self) -> Vec<(ServiceEntry, Vec<CheckResult>)> {
        self.lock()
            .values()
            .map(|s| (s.entry.clone(), s.results.clone()))
            .collect()
    }

    fn add(self: &Arc<Self>, entry: ServiceEntry, from_config: bool) {
        let results = entry
            .checks
            .iter()
            .map(|check| CheckResult {
                check: check.kind.describe(),
                health: None,
                output: String::new(),
            })
            .collect();
        let runner = (!entry.checks.is_empty())
            .then(|| tokio::spawn(checks::run(self.clone(), entry.clone())).abort_handle());
        let previous = self.lock().insert(
            entry.id.clone(),
            Local {
                entry,
                from_config,
                results,
                ttl_deadlines: BTreeMap::new(),
                runner,
            },
        );
        if let Some(runner) = previous.and_then(|p| p.runner) {
            runner.abort();
        }
    }

    /// Records a check result (from the check runner); announces a change.
    fn record(&self, id: &str, index: usize, health: Health, output: String) {
        let changed = {
            let mut local = self.lock();
            let Some(result) = local.get_mut(id).and_then(|s| s.results.get_mut(index)) else {
                return;
            };
            let changed = result.health != Some(health);
            if changed {
                tracing::info!(service = %id, check = %result.check, health = health.as_str(), output = %output, "service check changed");
            }
            result.health = Some(health);
            result.output = output;
            changed
        };
        if changed {
            self.publish();
        }
    }

    /// When ttl check `index` of service `id` runs out, if it has passed.
    fn ttl_deadline(&self, id: &str, index: usize) -> Option<Instant> {
        self.lock().get(id)?.ttl_deadlines.get(&index).copied()
    }

    /// Announces every service's current health by gossip.
    fn publish(&self) {
        let states: Vec<ServiceState> = self
            .lock()
            .values()
            .map(|local| {
                let worst = local
                    .results
                    .iter()
                    .max_by_key(|r| severity(r.health))
                    .filter(|r| r.health != Some(Health::Passing));
                let (health, output) = match worst {
                    None => (Health::Passing, String::new()),
                    Some(result) => (
                        result.health.unwrap_or(Health::Critical),
                        match result.health {
                            None => format!("{}: not run yet", result.check),
                            Some(_) => format!("{}: {}", result.check, result.output),
                        },
                    ),
                };
                ServiceState {
                    id: local.entry.id.clone(),
                    name: local.entry.name.clone(),
                    address: local.entry.address.clone(),
                    port: local.entry.port,
                    tags: local.entry.tags.clone(),
                    health,
                    output: truncate(output, OUTPUT_LIMIT),
                }
            })
            .collect();
        self.membership.update_meta(|meta| meta.services = states);
    }

    fn check_plugins(&self) -> Vec<String> {
        self.plugins
            .as_ref()
            .map(|p| {
                p.infos()
                    .into_iter()
                    .filter(|info| info.kind == crate::config::PluginKind::HealthCheck)
                    .map(|info| info.name)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn saved(&self) -> Vec<ServiceFile> {
        let Ok(text) = std::fs::read_to_string(&self.file) else {
            return Vec::new();
        };
        serde_json::from_str(&text).unwrap_or_else(|err| {
            tracing::error!(file = %self.file.display(), error = %err, "cannot read saved service registrations; starting without them");
            Vec::new()
        })
    }

    /// Writes the API registrations atomically.
    fn save(&self, files: &[ServiceFile]) -> Result<(), ServiceError> {
        let text = serde_json::to_vec_pretty(files).expect("registrations serialize");
        let save_error = |error| ServiceError::Save {
            path: self.file.display().to_string(),
            error,
        };
        let dir = self.file.parent().unwrap_or(std::path::Path::new("."));
        let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(save_error)?;
        std::io::Write::write_all(&mut temp, &text).map_err(save_error)?;
        temp.as_file().sync_all().map_err(save_error)?;
        temp.persist(&self.file).map_err(|e| save_error(e.error))?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Local>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn api_registrations(local: &BTreeMap<String, Local>) -> Vec<ServiceFile> {
    local
        .values()
        .filter(|s| !s.from_config)
        .map(|s| s.entry.source.clone())
        .collect()
}

fn severity(health: Option<Health>) -> u8 {
    match health {
        Some(Health::Passing) => 0,
        Some(Health::Warning) => 1,
        Some(Health::Critical) => 2,
        None => 3,
    }
}

fn truncate(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// One service instance somewhere in the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instance {
    /// The agent it runs beside.
    pub node: String,
    /// That agent's gossip state (alive or suspect).
    pub node_state: String,
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub health: String,
    pub output: String,
    /// Its checks pass and its agent is not suspect.
    pub healthy: bool,
}

/// What discovery asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub name: Option<String>,
    pub tag: Option<String>,
    pub healthy_only: bool,
}

/// The service instances of the fleet as `members` shows them, sorted by
/// name, node and id. Services of dead or departed agents are gone.
pub fn discover(members: &[Record], query: &Query) -> Vec<Instance> {
    let mut out = Vec::new();
    for member in members {
        if matches!(member.state, State::Dead | State::Left) {
            continue;
        }
        for service in &member.meta.services {
            // Whatever another agent announces is checked again before it
            // can reach a rendered file.
            let sound = valid_word(&service.name)
                && valid_word(&service.id)
                && valid_host(&service.address)
                && service.tags.iter().all(|t| valid_word(t));
            if !sound {
                tracing::debug!(member = %member.id, service = ?service.name, "ignored a malformed service announcement");
                continue;
            }
            if query.name.as_ref().is_some_and(|n| *n != service.name)
                || query
                    .tag
                    .as_ref()
                    .is_some_and(|t| !service.tags.contains(t))
            {
                continue;
            }
            let healthy = service.health == Health::Passing && member.state == State::Alive;
            if query.healthy_only && !healthy {
                continue;
            }
            out.push(Instance {
                node: member.id.to_string(),
                node_state: member.state.as_str().to_string(),
                id: service.id.clone(),
                name: service.name.clone(),
                address: service.address.clone(),
                port: service.port,
                tags: service.tags.clone(),
                health: service.health.as_str().to_string(),
                output: service.output.clone(),
                healthy,
            });
        }
    }
    out.sort_by(|a, b| (&a.name, &a.node, &a.id).cmp(&(&b.name, &b.node, &b.id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::Meta;

    fn member(name: &str, state: State, services: &[(&str, &str, Health)]) -> Record {
        let services = services
            .iter()
            .map(|(id, tag, health)| ServiceState {
                id: id.to_string(),
                name: "web".into(),
                address: "127.0.0.1".into(),
                port: 80,
                tags: vec![tag.to_string()],
                health: *health,
                output: String::new(),
            })
            .collect();
        Record::for_test(
            name,
            state,
            Meta {
                services,
                ..Meta::default()
            },
        )
    }

    #[test]
    fn discovery_drops_departed_agents_and_filters_health_and_tags() {
        let members = [
            member("a", State::Alive, &[("w1", "blue", Health::Passing)]),
            member("b", State::Alive, &[("w2", "green", Health::Critical)]),
            member("c", State::Suspect, &[("w3", "blue", Health::Passing)]),
            member("d", State::Dead, &[("w4", "blue", Health::Passing)]),
            member("e", State::Left, &[("w5", "blue", Health::Passing)]),
        ];
        let ids = |query: Query| -> Vec<String> {
            discover(&members, &query)
                .into_iter()
                .map(|i| format!("{}@{}", i.id, i.node))
                .collect()
        };
        assert_eq!(ids(Query::default()), ["w1@a", "w2@b", "w3@c"]);
        let healthy = Query {
            healthy_only: true,
            ..Query::default()
        };
        // A suspect agent's instance is not healthy, whatever its checks say.
        assert_eq!(ids(healthy), ["w1@a"]);
        let blue = Query {
            tag: Some("blue".into()),
            ..Query::default()
        };
        assert_eq!(ids(blue), ["w1@a", "w3@c"]);
        let other = Query {
            name: Some("db".into()),
            ..Query::default()
        };
        assert!(ids(other).is_empty());
    }

    #[test]
    fn long_outputs_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short".into(), 10), "short");
        let cut = truncate("é".repeat(300), 201);
        assert!(cut.len() <= 204 && cut.ends_with('…'));
    }
}
