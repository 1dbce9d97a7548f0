//! The wasmtime engine every plugin shares: pooled instances, an epoch
//! ticker for time limits, and a disk cache of compiled components.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{health_check, validator};
use super::host::HostState;
use super::PluginError;
use crate::config::plugins::MAX_MEMORY;

/// How often the epoch advances: the granularity of time limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Instances alive at once, over all plugins (the pool's size).
pub const MAX_INSTANCES: u32 = 256;
/// What one component may hold of the pool: a component asking for more is
/// refused at load, so no plugin can drain the pool for the others.
const MEMORIES_PER_COMPONENT: u32 = 2;
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const TABLES_PER_COMPONENT: u32 = 16;
/// Bytes of the SHA-256 that ends every cache file.
const CHECKSUM_LEN: usize = 32;

/// The engine, the linker with the host interfaces, and the cache.
pub struct Runtime {
    pub(super) engine: Engine,
    pub(super) linker: Linker<HostState>,
    /// Where compiled components are kept (none: compile every time).
    cache_dir: Option<PathBuf>,
    /// Distinguishes engines whose compiled code is not interchangeable.
    engine_tag: String,
    /// A small runtime of the plugins' own for host calls that wait
    /// (name lookups, connections, HTTP): independent of the caller's
    /// thread, and bounded by the call's time left.
    io: Option<tokio::runtime::Runtime>,
    ticking: Arc<AtomicBool>,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compiled {
    FromCache,
    Compiled(Duration),
}

impl Runtime {
    /// An engine with a pooling allocator and epoch interruption, and its
    /// ticker thread (stopped when the runtime is dropped).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Arc<Runtime>, PluginError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_INSTANCES)
            .total_core_instances(MAX_INSTANCES * 8)
            .total_memories(MAX_INSTANCES * 2)
            .total_tables(MAX_INSTANCES * 8)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .max_memory_size(MAX_MEMORY as usize);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|err| PluginError::Engine(format!("{err:#}")))?;
        let mut linker = Linker::new(&engine);
        linker.allow_shadowing(true);
        let add = |linker: &mut Linker<HostState>| -> wasmtime::Result<()> {
            validator::Validator::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
            health_check::HealthCheck::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
        };
        add(&mut linker).map_err(|err| PluginError::Engine(format!("{err:#}")))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_tag = format!("{:016x}", hasher.finish());
        let ticking = Arc::new(AtomicBool::new(true));
        {
            let (engine, ticking) = (engine.clone(), ticking.clone());
            std::thread::Builder::new()
                .name("plugin-epoch".into())
                .spawn(move || {
                    while ticking.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|err| PluginError::Engine(format!("starting the epoch ticker: {err}")))?;
        }
        if let Some(dir) = &cache_dir {
            crate::private_files::dir(dir).map_err(|err| PluginError::Cache {
                path: dir.clone(),
                message: err.to_string(),
            })?;
        }
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("plugin-io")
            .enable_all()
            .build()
            .map_err(|err| {
                PluginError::Engine(format!("starting the plugin I/O runtime: {err}"))
            })?;
        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache_dir,
            engine_tag,
            io: Some(io),
            ticking,
        }))
    }

    /// The component in `bytes` (read from `path`), from the cache when it
    /// was compiled before by an engine like this one.
    pub fn compile(&self, path: &Path, bytes: &[u8]) -> Result<(Component, Compiled), PluginError> {
        let invalid = |err: wasmtime::Error| PluginError::Invalid {
            path: path.to_path_buf(),
            message: format!("{err:#}"),
        };
        let started = Instant::now();
        let Some(dir) = &self.cache_dir else {
            let component = Component::new(&self.engine, bytes).map_err(invalid)?;
            return Ok((component, Compiled::Compiled(started.elapsed())));
        };
        let cached = dir.join(self.cache_name(&hex(&Sha256::digest(bytes))));
        // Read into memory rather than mapped: a cache file truncated by
        // someone else while mapped would crash the agent (SIGBUS).
        if let Ok(file) = std::fs::read(&cached) {
            match verified(&file) {
                // SAFETY: these bytes are exactly what `precompile_component`
                // produced when the agent wrote this file (below): their
                // SHA-256, written after them, matches. The name binds the
                // source's hash and the engine's settings, and wasmtime
                // checks the header's engine compatibility as well.
                Some(code) => match unsafe { Component::deserialize(&self.engine, code) } {
                    Ok(component) => return Ok((component, Compiled::FromCache)),
                    Err(err) => {
                        tracing::warn!(path = %cached.display(), error = %format!("{err:#}"), "cached plugin unusable; compiling again");
                    }
                },
                None => {
                    tracing::warn!(path = %cached.display(), "cached plugin damaged (checksum); compiling again");
                }
            }
        }
        let serialized = self.engine.precompile_component(bytes).map_err(invalid)?;
        // SAFETY: the bytes come from `precompile_component` just above.
        let component =
            unsafe { Component::deserialize(&self.engine, &serialized) }.map_err(invalid)?;
        let took = started.elapsed();
        let mut file = serialized;
        let checksum = Sha256::digest(&file);
        file.extend_from_slice(&checksum);
        if let Err(err) = write_atomically(dir, &cached, &file) {
            tracing::warn!(path = %cached.display(), error = %err, "could not cache a compiled plugin");
        }
        Ok((component, Compiled::Compiled(took)))
    }

    fn cache_name(&self, source_digest: &str) -> String {
        format!("{source_digest}-{}.cwasm", self.engine_tag)
    }

    /// Deletes cached components of sources other than `keep` (SHA-256 of
    /// the plugin files in use), and temporary files of interrupted writes.
    pub fn prune_cache(&self, keep: &[String]) {
        let Some(dir) = &self.cache_dir else { return };
        let wanted: Vec<String> = keep.iter().map(|digest| self.cache_name(digest)).collect();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale =
                (name.ends_with(".cwasm") && !wanted.contains(&name)) || name.starts_with(".tmp");
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Runs `work` on the plugin I/O runtime and waits for it at most
    /// `budget`, from any thread (a plugin call blocks its own thread).
    /// `None`: out of time.
    pub(super) fn wait_io<T: Send + 'static>(
        &self,
        budget: Duration,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let io = self.io.as_ref()?;
        let (done, outcome) = std::sync::mpsc::sync_channel(1);
        let task = io.spawn(async move {
            let _ = done.send(work.await);
        });
        let result = outcome.recv_timeout(budget).ok();
        task.abort();
        result
    }

    /// Epoch ticks for a time limit: rounded up, plus the tick under way.
    pub fn ticks(limit: Duration) -> u64 {
        (limit.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64) + 1
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
        // Never blocks, so the engine may be dropped on any thread.
        if let Some(io) = self.io.take() {
            io.shutdown_background();
        }
    }
}

/// The compiled code in a cache file, if its trailing SHA-256 matches.
fn verified(file: &[u8]) -> Option<&[u8]> {
    let split = file.len().checked_sub(CHECKSUM_LEN)?;
    let (code, checksum) = file.split_at(split);
    (Sha256::digest(code).as_slice() == checksum).then_some(code)
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|err| err.error)?;
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
