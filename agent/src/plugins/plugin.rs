//! One loaded plugin: its compiled component, checked against what it may
//! import, and calls into it. Every call gets a fresh instance from the
//! pool (a few microseconds), so nothing leaks from one call to the next
//! and a trapped instance is simply dropped.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Store, Trap};

use super::bindings::{health_check::HealthCheckPre, validator::ValidatorPre, HealthResult};
use super::host::{CallContext, HostState};
use super::runtime::{hex, Compiled, Runtime};
use super::PluginError;
use crate::config::{Capabilities, Limits, PluginKind};

/// A plugin ready to call.
pub struct Plugin {
    pub name: Arc<str>,
    pub kind: PluginKind,
    /// SHA-256 of the `.wasm` file.
    pub digest: String,
    pub limits: Limits,
    pub compiled: Compiled,
    grants: Arc<Capabilities>,
    entry: Entry,
    runtime: Arc<Runtime>,
}

enum Entry {
    Validator(ValidatorPre<HostState>),
    HealthCheck(HealthCheckPre<HostState>),
}

/// Why a call produced no verdict. The plugin is at fault; the agent goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("ran past its time limit of {0:?} and was stopped")]
    Timeout(Duration),
    #[error("went over its memory limit of {0} bytes and was stopped")]
    Memory(u64),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("could not be started: {0}")]
    Instantiate(String),
}

/// The interfaces a component may import, and the grant each needs.
const INTERFACES: &[(&str, Option<&str>)] = &[
    ("log", Some("log = true")),
    ("keys", Some("read_keys = [\"/prefix/\"]")),
    ("tcp", Some("tcp = [\"host:port\"]")),
    ("http", Some("http = [\"host:port\"]")),
    ("settings", None),
    ("health", None),
];

impl Plugin {
    /// Compiles (or takes from the cache) the component in `bytes` and
    /// checks that it is a `kind` plugin importing only what is granted.
    pub fn load(
        runtime: &Arc<Runtime>,
        name: &str,
        path: &Path,
        bytes: &[u8],
        kind: PluginKind,
        limits: Limits,
        grants: Capabilities,
    ) -> Result<Plugin, PluginError> {
        let (component, compiled) = runtime.compile(path, bytes)?;
        check_imports(runtime, &component, &grants).map_err(|message| PluginError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        let invalid = |err: wasmtime::Error| PluginError::Invalid {
            path: path.to_path_buf(),
            message: format!("{err:#}"),
        };
        let pre = runtime
            .linker
            .instantiate_pre(&component)
            .map_err(invalid)?;
        let entry = match kind {
            PluginKind::Validator => Entry::Validator(ValidatorPre::new(pre).map_err(|err| {
                PluginError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("not a validator plugin (kind = \"validator\" needs the `validator` world, exporting `validate`): {err:#}"),
                }
            })?),
            PluginKind::HealthCheck => Entry::HealthCheck(HealthCheckPre::new(pre).map_err(|err| {
                PluginError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("not a health-check plugin (kind = \"health-check\" needs the `health-check` world, exporting `check`): {err:#}"),
                }
            })?),
        };
        Ok(Plugin {
            name: name.into(),
            kind,
            digest: hex(&Sha256::digest(bytes)),
            limits,
            compiled,
            grants: Arc::new(grants),
            entry,
            runtime: runtime.clone(),
        })
    }

    /// Runs a validator: `Ok(Err(message))` is a refusal.
    pub fn validate(
        &self,
        context: &CallContext,
        key: &str,
        value: &[u8],
    ) -> Result<Result<(), String>, CallError> {
        let Entry::Validator(pre) = &self.entry else {
            return Err(CallError::Instantiate(format!(
                "{} is a {} plugin, not a validator",
                self.name, self.kind
            )));
        };
        let mut store = self.store(context);
        let outcome = pre
            .instantiate(&mut store)
            .map_err(Failure::Start)
            .and_then(|instance| {
                instance
                    .call_validate(&mut store, key, value)
                    .map_err(Failure::Run)
            });
        outcome.map_err(|failure| self.classify(failure, store.data()))
    }

    /// Runs a health check.
    pub fn check(&self, context: &CallContext, args: &[String]) -> Result<HealthResult, CallError> {
        let Entry::HealthCheck(pre) = &self.entry else {
            return Err(CallError::Instantiate(format!(
                "{} is a {} plugin, not a health check",
                self.name, self.kind
            )));
        };
        let mut store = self.store(context);
        let outcome = pre
            .instantiate(&mut store)
            .map_err(Failure::Start)
            .and_then(|instance| instance.call_check(&mut store, args).map_err(Failure::Run));
        outcome.map_err(|failure| self.classify(failure, store.data()))
    }

    /// Times one instantiation (for benchmarks).
    pub fn time_instantiate(&self) -> Result<Duration, CallError> {
        let mut store = self.store(&CallContext::default());
        let started = Instant::now();
        let outcome = match &self.entry {
            Entry::Validator(pre) => pre.instantiate(&mut store).map(drop),
            Entry::HealthCheck(pre) => pre.instantiate(&mut store).map(drop),
        };
        let took = started.elapsed();
        outcome.map_err(|err| self.classify(Failure::Start(err), store.data()))?;
        Ok(took)
    }

    fn store(&self, context: &CallContext) -> Store<HostState> {
        let state = HostState::new(
            self.name.clone(),
            self.grants.clone(),
            context.clone(),
            self.runtime.clone(),
            Instant::now() + self.limits.timeout,
            self.limits.memory,
        );
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|state| state);
        // The deadline covers instantiation (start functions) and the call.
        store.set_epoch_deadline(Runtime::ticks(self.limits.timeout));
        store.epoch_deadline_trap();
        store
    }

    fn classify(&self, failure: Failure, state: &HostState) -> CallError {
        let (err, starting) = match failure {
            Failure::Start(err) => (err, true),
            Failure::Run(err) => (err, false),
        };
        if state.memory_exceeded {
            return CallError::Memory(self.limits.memory);
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Timeout(self.limits.timeout),
            Some(trap) => CallError::Trap(trap.to_string()),
            None if starting => CallError::Instantiate(format!("{err:#}")),
            None => CallError::Trap(format!("{err:#}")),
        }
    }
}

enum Failure {
    Start(wasmtime::Error),
    Run(wasmtime::Error),
}

/// Every import must be one of ours, and granted.
fn check_imports(
    runtime: &Runtime,
    component: &Component,
    grants: &Capabilities,
) -> Result<(), String> {
    for (name, _) in component.component_type().imports(&runtime.engine) {
        let interface = name
            .strip_prefix("edgeconf:plugin/")
            .and_then(|rest| rest.split('@').next())
            .and_then(|iface| INTERFACES.iter().find(|(known, _)| *known == iface));
        let Some((interface, grant)) = interface else {
            return Err(format!(
                "imports {name}, which edgeconf does not provide: plugins get only the edgeconf:plugin interfaces (no WASI; build for wasm32-unknown-unknown, see plugins/README.md)"
            ));
        };
        let granted = match *interface {
            "log" => grants.log,
            "keys" => !grants.read_keys.is_empty(),
            "tcp" => !grants.tcp.is_empty(),
            "http" => !grants.http.is_empty(),
            _ => true,
        };
        if !granted {
            return Err(format!(
                "imports {name}, which its [[plugin]] entry does not grant: add {} to [plugin.capabilities]",
                grant.unwrap_or_default()
            ));
        }
    }
    Ok(())
}
