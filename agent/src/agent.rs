//! `edgeconf agent`: wires the layers together and runs until a signal.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::api;
use crate::config::ClusterState;
use crate::config::Config;
use crate::consensus::{Compaction, Identity, Member, Node, NodeSettings};
use crate::signing::{Identities, Keyring, KeyringCell, Recipient};
use crate::store::{Store, StoreError};
use crate::transport::NodeKey;

/// How long in-flight requests get to finish once a stop is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Set in the environment to let tests partition an agent from its peers.
const FAULT_INJECTION_ENV: &str = "EDGECONF_FAULT_INJECTION";
/// With fault injection on, this file in the data dir cuts the agent off
/// from its peers while it exists.
const PARTITION_SWITCH: &str = "fault-partition";

/// Runs the agent until SIGINT or SIGTERM. Returns the raft thread: join it
/// after the runtime is dropped, to close the store cleanly.
/// `reload` reads the config again; on SIGHUP the agent takes the trust
/// policy and secret keys from it (other settings need a restart).
pub async fn run(
    config: Config,
    reload: impl Fn() -> anyhow::Result<Config> + Send + Sync + 'static,
) -> anyhow::Result<JoinHandle<()>> {
    let render_plan = crate::render::Plan::load(&config).map_err(anyhow::Error::msg)?;
    let reload = Arc::new(reload);
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create data_dir {}: choose a writable directory",
            config.data_dir.display()
        )
    })?;
    let store_path = config.store_path();
    let store = Store::open(&store_path).map_err(|err| match err {
        StoreError::Storage(redb::Error::DatabaseAlreadyOpen) => anyhow::anyhow!(
            "store {} is in use by another process: is an agent already running with data_dir {}?",
            store_path.display(),
            config.data_dir.display()
        ),
        err => anyhow::anyhow!("cannot open store {}: {err}", store_path.display()),
    })?;
    let store = Arc::new(store);
    let identity = load_identity(&store, &config)?;
    let member = Member {
        name: config.name.clone(),
        peer_urls: config.initial_advertise_peer_urls.clone(),
        client_urls: config.advertise_client_urls.clone(),
    };
    let keyring = Arc::new(KeyringCell::new(keyring(&config)?));
    let plugins = load_plugins(&config, &store, &keyring).await?;
    let node_key = NodeKey::load_or_create(&config.data_dir)?;
    let listeners = api::bind(&config.listen_client).await?;
    let client_tls = match &config.client_tls {
        Some(files) => Some(Arc::new(
            api::tls::ClientTlsFiles::load(files.clone()).map_err(anyhow::Error::msg)?,
        )),
        None => {
            if config.allow_insecure_client
                && config.listen_client.iter().any(|a| !a.ip().is_loopback())
            {
                tracing::warn!(clients = ?config.listen_client, "serving clients without TLS beyond loopback (allow_insecure_client = true): anyone who reaches the port can read and change every key");
            }
            None
        }
    };
    let (node, raft_thread) = Node::start(
        store.clone(),
        &node_key,
        NodeSettings {
            data_dir: &config.data_dir,
            identity,
            member,
            initial_cluster: &config.initial_cluster,
            join_existing: config.initial_cluster_state == ClusterState::Existing,
            listen_peer: config.listen_peer[0],
            trusted_keys: &config.peer_keys,
            heartbeat: config.heartbeat_interval,
            election_ticks: (config.election_timeout.as_millis()
                / config.heartbeat_interval.as_millis().max(1))
                as usize,
            compaction: Compaction {
                every_entries: config.snapshot_count,
                retain: config.snapshot_catchup_entries,
            },
            admission: {
                let keyring = keyring.clone();
                Arc::new(move |command| {
                    keyring
                        .get()
                        .trust
                        .admit(command)
                        .map_err(|err| err.to_string())
                })
            },
            screening: plugins.validators.clone().map(|validators| {
                let keyring = keyring.clone();
                Arc::new(move |command: &crate::store::Command| {
                    validators
                        .check_command(command, &keyring.get())
                        .map_err(|err| err.to_string())
                }) as crate::consensus::Admission
            }),
        },
    )?;

    let (stop, stopped) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    // One budget for password hashing, shared by every listener.
    let renders = Arc::new(crate::render::status::RenderStatus::default());
    let shared = api::Shared {
        passwords: Arc::new(api::auth::PasswordWork::new()),
        renders: renders.clone(),
        plugins: plugins.clone(),
    };
    for listener in listeners {
        let (node, keyring, stopped) = (node.clone(), keyring.clone(), stopped.clone());
        let (tls, shared) = (client_tls.clone(), shared.clone());
        tasks.spawn(async move {
            if let Err(err) = api::serve(node, keyring, listener, tls, shared, stopped).await {
                tracing::error!(error = %err, "client API server failed");
            }
        });
    }
    {
        let node = node.clone();
        let stopped = stopped.clone();
        tasks.spawn(async move { node.expire_leases(stopped).await });
    }
    {
        let node = node.clone();
        tasks.spawn(async move { node.publish_self().await });
    }
    #[cfg(unix)]
    {
        let (keyring, reload) = (keyring.clone(), reload.clone());
        tasks.spawn(async move { reload_on_hangup(keyring, move || reload()).await });
    }
    if let Some(addr) = config.listen_metrics {
        let sources = crate::metrics::Sources {
            node: node.clone(),
            renders: renders.clone(),
            plugins: plugins.clone(),
        };
        let stopped = stopped.clone();
        tasks.spawn(async move {
            if let Err(err) = crate::metrics::serve(addr, sources, stopped).await {
                tracing::error!(error = %err, "metrics server failed");
            }
        });
    }
    if config.source.is_some() || !render_plan.entries.is_empty() {
        let runner = crate::render::runner::Runner::new(
            node.clone(),
            keyring.clone(),
            renders,
            render_plan,
            config.source.clone(),
            Box::new(move || reload()),
            Some(config.data_dir.join("render-reloads-pending")),
        )
        .with_validators(plugins.validators.clone());
        let stopped = stopped.clone();
        tasks.spawn(async move { runner.run(stopped).await });
    }
    if let Some(loaded) = &plugins.plugins {
        let (loaded, stop_watching) = (loaded.clone(), stopped.clone());
        tasks.spawn(async move { crate::plugins::watch::run(loaded, stop_watching).await });
        if !config.plugins.checks.is_empty() {
            let keys: Arc<dyn crate::plugins::KeyReader> = Arc::new(crate::plugins::StoreKeys {
                store: store.clone(),
                keyring: keyring.clone(),
            });
            let (loaded, checks, status) = (
                plugins.plugins.clone().expect("checked above"),
                config.plugins.checks.clone(),
                plugins.checks.clone(),
            );
            let stopped = stopped.clone();
            tasks.spawn(async move {
                crate::plugins::checks::run(loaded, checks, Some(keys), status, stopped).await
            });
        }
    }
    if std::env::var_os(FAULT_INJECTION_ENV).is_some() {
        let (node, switch) = (node.clone(), config.data_dir.join(PARTITION_SWITCH));
        tasks.spawn(async move { watch_fault_switch(node, switch).await });
    }
    tracing::info!(
        name = %config.name,
        member_id = format_args!("{:x}", identity.member_id),
        cluster_id = format_args!("{:x}", identity.cluster_id),
        clients = ?config.listen_client,
        peers = ?config.listen_peer,
        node_key = %node_key.public_key(),
        data_dir = %config.data_dir.display(),
        revision = store.revision(),
        "edgeconf agent ready"
    );

    shutdown_signal().await;
    tracing::info!("stopping: finishing in-flight requests");
    let _ = stop.send(true);
    // Watch streams never end by themselves: give requests a moment, then
    // drop what is left. Acknowledged writes are already durable.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    node.stop();
    Ok(raft_thread)
}

/// Fault injection for partition tests (only with `EDGECONF_FAULT_INJECTION`
/// set): drops all peer traffic while `switch` exists, so a live agent can
/// be cut off from the others and healed without touching the network.
async fn watch_fault_switch(node: Arc<Node>, switch: std::path::PathBuf) {
    tracing::warn!(switch = %switch.display(), "fault injection enabled");
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        node.transport().set_isolated(switch.exists());
    }
}

/// Compiles the `[[plugin]]` components (compiled code is cached in the data
/// dir) and binds the `[[validate]]` entries. A plugin that cannot be used
/// stops the start: an agent must not run without a validator it was
/// told to apply.
async fn load_plugins(
    config: &Config,
    store: &Arc<Store>,
    keyring: &Arc<KeyringCell>,
) -> anyhow::Result<crate::plugins::AgentPlugins> {
    use crate::plugins::{validators::Validators, AgentPlugins, KeyReader, Plugins, StoreKeys};
    if config.plugins.plugins.is_empty() {
        return Ok(AgentPlugins::default());
    }
    let entries = config.plugins.plugins.clone();
    let cache = config.data_dir.join("plugin-cache");
    let plugins = tokio::task::spawn_blocking(move || Plugins::load(&entries, Some(cache)))
        .await
        .context("loading plugins")??;
    let plugins = Arc::new(plugins);
    let keys: Arc<dyn KeyReader> = Arc::new(StoreKeys {
        store: store.clone(),
        keyring: keyring.clone(),
    });
    let validators = (!config.plugins.validate.is_empty()).then(|| {
        Arc::new(Validators::new(
            plugins.clone(),
            &config.plugins.validate,
            Some(keys),
        ))
    });
    Ok(AgentPlugins {
        plugins: Some(plugins),
        validators,
        checks: Default::default(),
    })
}

/// The ids this member was born with; derived from the config only once.
fn load_identity(store: &Store, config: &Config) -> anyhow::Result<Identity> {
    let derived = Identity::derive(&config.name, &config.initial_cluster);
    Ok(Identity {
        cluster_id: store.meta_or_insert("cluster_id", derived.cluster_id)?,
        member_id: store.meta_or_insert("member_id", derived.member_id)?,
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The trust policy and secret keys from the config.
fn keyring(config: &Config) -> anyhow::Result<Keyring> {
    let identities = Identities::load(&config.identity_files)?;
    let recipients = config
        .recipients
        .iter()
        .map(|text| Recipient::parse(text).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !identities.is_empty() {
        tracing::info!(files = ?identities.files(), "secret identities loaded");
    }
    Ok(Keyring::new(config.trust.clone(), identities, recipients))
}

/// On SIGHUP, takes `[trust]` and `[secrets]` from the config file again, so
/// operator keys rotate without downtime. A config that does not load is
/// refused with its error, and the running keys stay.
#[cfg(unix)]
async fn reload_on_hangup(
    keyring: Arc<KeyringCell>,
    reload: impl Fn() -> anyhow::Result<Config> + Send + 'static,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install a SIGHUP handler: reload the config by restarting");
        return;
    };
    while hangups.recv().await.is_some() {
        match reload().and_then(|config| self::keyring(&config)) {
            Ok(fresh) => {
                tracing::info!(
                    trusted_keys = fresh.trust.keys.len(),
                    trusted_prefixes = fresh.trust.prefixes.len(),
                    identities = fresh.identities.files().len(),
                    "reloaded [trust] and [secrets] from the config"
                );
                keyring.set(fresh);
            }
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "config reload refused; keeping the running trust policy and keys");
            }
        }
    }
}
