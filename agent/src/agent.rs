//! `edgeconf agent`: wires the layers together and runs until a signal.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::api;
use crate::config::ClusterState;
use crate::config::Config;
use crate::config::Role;
use crate::consensus::{Compaction, Identity, Member, Node, NodeSettings, RaftRuntime};
use crate::gossip::{Membership, Meta};
use crate::signing::{Identities, Keyring, KeyringCell, Recipient};
use crate::store::{Store, StoreError};
use crate::transport::{NodeKey, Transport};

/// How long in-flight requests get to finish once a stop is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an agent whose consensus stopped keeps answering /health (red)
/// before it exits.
const FAILED_HEALTH_GRACE: Duration = Duration::from_secs(1);

/// How long a start waits for a store still locked by a process that is
/// exiting (a restart right after `kill -9`).
const STORE_LOCK_PATIENCE: Duration = Duration::from_secs(5);

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
    crate::private_files::dir(&config.data_dir).with_context(|| {
        format!(
            "cannot create data_dir {} (mode 0700): choose a directory this user can own",
            config.data_dir.display()
        )
    })?;
    let store_path = config.store_path();
    let store = Store::open_waiting(&store_path, STORE_LOCK_PATIENCE).map_err(|err| match err {
        StoreError::Storage(redb::Error::DatabaseAlreadyOpen) => anyhow::anyhow!(
            "store {} is in use by another process (waited {}s for it to let go): is an agent already running with data_dir {}?",
            store_path.display(),
            STORE_LOCK_PATIENCE.as_secs(),
            config.data_dir.display()
        ),
        err => anyhow::anyhow!("cannot open store {}: {err}", store_path.display()),
    })?;
    let store = Arc::new(store);
    let node_key = NodeKey::load_or_create(&config.data_dir)?;
    // A voter's transport runs on its raft thread (`consensus::runtime`).
    let raft_runtime = match config.role {
        Role::Voter => Some(RaftRuntime::start().context("cannot start the raft thread")?),
        Role::Edge => None,
    };
    let transport = {
        let _on_raft_thread = raft_runtime
            .as_ref()
            .map(|runtime| runtime.handle().enter());
        Transport::start(
            config.listen_peer[0],
            &node_key,
            &config.peer_keys,
            config.gossip.dial_out_only,
        )?
    };
    if config.role == Role::Voter && !config.voter_keys.is_empty() {
        // Raft only from the listed voters' keys (see `transport::senders`).
        transport.senders().pin(&config.voter_keys);
        if !config.voter_keys.contains(&node_key.public_key_raw()) {
            tracing::warn!("this voter's own node key is not in [peer_trust] voters: list it on every voter, or its peers refuse its raft messages");
        }
    }
    let (stop, stopped) = watch::channel(false);
    let membership = start_gossip(&config, &store, &transport, &node_key, stopped.clone())?;
    let identity = match config.role {
        // An edge is no raft member: its identity is its node key.
        Role::Edge => crate::edge::agent::identity(&store, &membership, &node_key).await?,
        Role::Voter => load_identity(&store, &config)?,
    };
    let identity = Identity {
        cluster_id: store.meta_or_insert("cluster_id", identity.cluster_id)?,
        member_id: store.meta_or_insert("member_id", identity.member_id)?,
    };
    membership.update_meta(|meta| meta.cluster = format!("{:x}", identity.cluster_id));
    let member = Member {
        name: config.name.clone(),
        peer_urls: config.initial_advertise_peer_urls.clone(),
        client_urls: config.advertise_client_urls.clone(),
    };
    let keyring = Arc::new(KeyringCell::new(keyring(&config, identity.cluster_id)?));
    // The newest trust root in the store, before anything reads with it.
    crate::trust_root::refresh(&store, &keyring);
    let leave_request = Arc::new(tokio::sync::Notify::new());
    let plugins = load_plugins(&config, &store, &keyring, stopped.clone()).await?;
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
    let (node, raft_thread) = match raft_runtime {
        Some(raft_runtime) => start_voter(
            &config,
            &store,
            &transport,
            api::admission::LeaderChecks::new(&store, &keyring, &plugins, client_tls.clone()),
            identity,
            member,
            raft_runtime,
        )?,
        None => Node::start_follower(
            store.clone(),
            identity,
            member,
            transport.clone(),
            "this is an edge agent, not a raft member: it takes config from the voters' feed; \
             send writes to a voter's client URL (see `edgeconf member list`)"
                .to_string(),
        )?,
    };
    crate::edge::agent::serve(&config, &store, &transport, identity.cluster_id, &node_key)?;
    let feed = (config.role == Role::Edge).then(|| {
        crate::edge::agent::follow(
            &config,
            &store,
            &transport,
            &membership,
            identity.cluster_id,
            stopped.clone(),
        )
    });

    let services = crate::services::Services::start(
        membership.clone(),
        plugins.plugins.clone(),
        &config.data_dir,
        config.services.clone(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    // One budget for password hashing, shared by every listener.
    let renders = Arc::new(crate::render::status::RenderStatus::default());
    let shared = api::Shared {
        passwords: Arc::new(api::auth::PasswordWork::new()),
        renders: renders.clone(),
        plugins: plugins.clone(),
        membership: membership.clone(),
        services: services.clone(),
        leave: leave_request.clone(),
        feed: feed.clone(),
        quota_bytes: config.upkeep.quota_bytes,
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
    if config.role == Role::Voter {
        let node = node.clone();
        tasks.spawn(async move { node.publish_self().await });
    }
    if config.role == Role::Voter {
        let (node, membership, stopped) = (node.clone(), membership.clone(), stopped.clone());
        let settings = config.upkeep.clone();
        tasks.spawn(async move { crate::upkeep::run(node, membership, settings, stopped).await });
    }
    {
        let (store, keyring, stopped) = (store.clone(), keyring.clone(), stopped.clone());
        tasks.spawn(async move { crate::trust_root::follow(store, keyring, stopped).await });
    }
    #[cfg(unix)]
    {
        let (keyring, reload, cluster_id) = (keyring.clone(), reload.clone(), identity.cluster_id);
        let (store, running) = (store.clone(), config.clone());
        let live = Reloadable {
            membership: membership.clone(),
            services: services.clone(),
            plugins: plugins.reload.clone(),
            transport: transport.clone(),
        };
        // Installed now, before systemd hears READY: a SIGHUP from then on
        // reloads (its default action would end the process).
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        tasks.spawn(async move {
            let Ok(hangups) = hangups else {
                tracing::warn!("cannot install a SIGHUP handler: reload the config by restarting");
                return;
            };
            reload_on_hangup(
                hangups,
                running,
                live,
                keyring,
                cluster_id,
                move || reload(),
                move |fresh| {
                    let root = crate::trust_root::newest_root(&store, &fresh);
                    fresh.with_root(root)
                },
            )
            .await
        });
    }
    if let Some(addr) = config.listen_metrics {
        let sources = crate::metrics::Sources {
            node: node.clone(),
            renders: renders.clone(),
            plugins: plugins.clone(),
            membership: membership.clone(),
            services: services.clone(),
            feed: feed.clone(),
        };
        let stopped = stopped.clone();
        tasks.spawn(async move {
            if let Err(err) = crate::metrics::serve(addr, sources, stopped).await {
                tracing::error!(error = %err, "metrics server failed");
            }
        });
    }
    {
        let (node, keyring, membership, stopped) = (
            node.clone(),
            keyring.clone(),
            membership.clone(),
            stopped.clone(),
        );
        tasks.spawn(async move {
            crate::rollout::controller::run(node, keyring, membership, stopped).await
        });
    }
    // Always: besides the files, the renderer tells the fleet which
    // rollouts this agent takes part in.
    {
        let runner = crate::render::runner::Runner::new(
            node.clone(),
            keyring.clone(),
            renders,
            render_plan,
            config.source.clone(),
            Box::new(move || reload()),
            Some(config.data_dir.join("render-reloads-pending")),
        )
        .with_validators(plugins.validators.clone())
        .with_membership(membership.clone());
        let stopped = stopped.clone();
        tasks.spawn(async move { runner.run(stopped).await });
    }
    if let (Some(loaded), Some(plugin_reload)) = (&plugins.plugins, &plugins.reload) {
        let (loaded, stop_watching) = (loaded.clone(), stopped.clone());
        tasks.spawn(async move { crate::plugins::watch::run(loaded, stop_watching).await });
        plugin_reload.run_checks(config.plugins.checks.clone());
        let announced = (plugins.checks.clone(), membership.clone(), stopped.clone());
        tasks.spawn(async move {
            let (status, membership, stopped) = announced;
            crate::plugins::checks::announce(status, membership, stopped).await
        });
    }
    if crate::fault::enabled() {
        let (node, data_dir) = (node.clone(), config.data_dir.clone());
        tasks.spawn(crate::fault::watch_switches(node, data_dir));
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
    // systemd's Type=notify: started once every listener serves.
    tell_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);

    let mut failure = None;
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = leave_request.notified() => {
            tracing::info!("leaving the fleet (edgeconf member leave)");
            membership.leave().await;
        }
        reason = node.failed() => {
            tracing::error!(%reason, "consensus stopped: this agent stops serving and exits");
            failure = Some(reason);
        }
    }
    if failure.is_some() {
        // /health answers 503 "consensus stopped" meanwhile: a prober or
        // load balancer sees red before the ports close.
        tokio::time::sleep(FAILED_HEALTH_GRACE).await;
    }
    tracing::info!("stopping: finishing in-flight requests");
    tell_systemd(&[sd_notify::NotifyState::Stopping]);
    let _ = stop.send(true);
    // Watch streams never end by themselves: give requests a moment, then
    // drop what is left. Acknowledged writes are already durable.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    node.stop();
    if let Some(reason) = failure {
        anyhow::bail!(
            "consensus stopped ({reason}); the agent exited so that its supervisor restarts it \
             (if it fails the same way again, see the log above for what to do)"
        );
    }
    Ok(raft_thread)
}

/// Compiles the `[[plugin]]` components (compiled code is cached in the data
/// dir) and binds the `[[validate]]` entries. A plugin that cannot be used
/// stops the start: an agent must not run without a validator it was
/// told to apply.
async fn load_plugins(
    config: &Config,
    store: &Arc<Store>,
    keyring: &Arc<KeyringCell>,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<crate::plugins::AgentPlugins> {
    use crate::plugins::{reload::PluginReload, AgentPlugins, Plugins, StoreKeys};
    if config.plugins.plugins.is_empty() {
        return Ok(AgentPlugins::default());
    }
    let entries = config.plugins.plugins.clone();
    let cache = config.data_dir.join("plugin-cache");
    let plugins = tokio::task::spawn_blocking(move || Plugins::load(&entries, Some(cache)))
        .await
        .context("loading plugins")??;
    let plugins = Arc::new(plugins);
    let (validators, checks) = (Arc::default(), Arc::default());
    let reload = Arc::new(PluginReload::new(
        plugins.clone(),
        Arc::clone(&validators),
        Arc::new(StoreKeys {
            store: store.clone(),
            keyring: keyring.clone(),
        }),
        Arc::clone(&checks),
        stopped,
    ));
    reload.bind_validators(&config.plugins.validate);
    Ok(AgentPlugins {
        plugins: Some(plugins),
        validators,
        checks,
        reload: Some(reload),
    })
}

/// The ids this member was born with; derived from the config only once.
fn load_identity(store: &Store, config: &Config) -> anyhow::Result<Identity> {
    let derived = Identity::derive(&config.name, &config.initial_cluster);
    Ok(Identity {
        cluster_id: store.meta("cluster_id")?.unwrap_or(derived.cluster_id),
        member_id: store.meta("member_id")?.unwrap_or(derived.member_id),
    })
}

/// Joins the fleet's gossip on the peer endpoint.
fn start_gossip(
    config: &Config,
    store: &Store,
    transport: &Transport,
    node_key: &NodeKey,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<Arc<Membership>> {
    let peer_url = config.initial_advertise_peer_urls[0].clone();
    let addr = peer_url
        .strip_prefix("quic://")
        .and_then(|a| a.parse().ok())
        .unwrap_or(config.listen_peer[0]);
    let meta = Meta {
        role: config.role.as_str().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        labels: config.labels.clone(),
        cluster: store
            .meta("cluster_id")?
            .map(|id| format!("{id:x}"))
            .unwrap_or_default(),
        peer_url,
        client_urls: config.advertise_client_urls.clone(),
        services: Vec::new(),
        rollouts: Vec::new(),
        checks: Vec::new(),
        feed_group: String::new(),
        dials_out: config.gossip.dial_out_only,
        store: Default::default(),
    };
    let settings = crate::gossip::Config {
        probe_interval_ms: config.gossip.probe_interval.as_millis() as u64,
        probe_timeout_ms: config.gossip.probe_timeout.as_millis() as u64,
        ..crate::gossip::Config::default()
    };
    Ok(Membership::start(
        transport,
        settings,
        crate::gossip::membership::Identity {
            name: &config.name,
            key: node_key.signing_key()?,
            trusted: &config.peer_keys,
        },
        addr,
        meta,
        &config.gossip.seeds,
        stopped,
    ))
}

/// Starts raft on a voter, with the leader's checks of forwarded commands.
fn start_voter(
    config: &Config,
    store: &Arc<Store>,
    transport: &Arc<Transport>,
    checks: api::admission::LeaderChecks,
    identity: Identity,
    member: Member,
    runtime: RaftRuntime,
) -> anyhow::Result<(Arc<Node>, JoinHandle<()>)> {
    Ok(Node::start(
        store.clone(),
        NodeSettings {
            data_dir: &config.data_dir,
            identity,
            member,
            initial_cluster: &config.initial_cluster,
            join_existing: config.initial_cluster_state == ClusterState::Existing,
            transport: transport.clone(),
            heartbeat: config.heartbeat_interval,
            election_ticks: (config.election_timeout.as_millis()
                / config.heartbeat_interval.as_millis().max(1))
                as usize,
            compaction: Compaction {
                every_entries: config.snapshot_count,
                retain: config.snapshot_catchup_entries,
            },
            admission: checks.admission,
            screening: checks.screening,
            runtime,
        },
    )?)
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

/// The trust policy and secret keys from the config; new signed writes
/// must be bound to `cluster_id`.
fn keyring(config: &Config, cluster_id: u64) -> anyhow::Result<Keyring> {
    let identities = Identities::load(&config.identity_files)?;
    let recipients = config
        .recipients
        .iter()
        .map(|text| Recipient::parse(text).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !identities.is_empty() {
        tracing::info!(files = ?identities.files(), "secret identities loaded");
    }
    let mut trust = config.trust.clone();
    trust.cluster_id = Some(cluster_id);
    Ok(Keyring::new(trust, identities, recipients).with_pinned(config.pinned_root.clone()))
}

/// On SIGHUP, takes `[trust]` and `[secrets]` from the config file again, so
/// operator keys rotate without downtime. A config that does not load is
/// refused with its error, and the running keys stay.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    mut running: Config,
    live: Reloadable,
    keyring: Arc<KeyringCell>,
    cluster_id: u64,
    reload: impl Fn() -> anyhow::Result<Config> + Send + 'static,
    under_root: impl Fn(Keyring) -> Keyring + Send + 'static,
) {
    while hangups.recv().await.is_some() {
        let fresh_config = reload();
        let fresh_keyring = fresh_config
            .as_ref()
            .map_err(|err| anyhow::anyhow!("{err:#}"))
            .and_then(|config| self::keyring(config, cluster_id));
        if let (Ok(fresh), Ok(_)) = (&fresh_config, &fresh_keyring) {
            let restart = crate::config::reload::needs_restart(&running, fresh);
            if !restart.is_empty() {
                tracing::warn!(settings = %restart.join(", "), "these settings changed and take effect after a restart (systemctl restart edgeconf)");
            }
            if fresh.labels != running.labels {
                let labels = fresh.labels.clone();
                live.membership.update_meta(|meta| meta.labels = labels);
                tracing::info!(labels = ?fresh.labels, "reloaded [labels]");
            }
            if fresh.services != running.services {
                let changed = live.services.reconfigure(fresh.services.clone());
                tracing::info!(changed, "reloaded [[service]] entries");
            }
            if fresh.peer_keys != running.peer_keys
                || (running.role == Role::Voter && fresh.voter_keys != running.voter_keys)
            {
                reload_peer_trust(&live, &running, fresh);
                running.peer_keys = fresh.peer_keys.clone();
                if running.role == Role::Voter {
                    running.voter_keys = fresh.voter_keys.clone();
                }
            }
            if let Some(plugins) = &live.plugins {
                let reloaded = plugins.apply(&running.plugins, &fresh.plugins);
                if !reloaded.is_empty() {
                    tracing::info!(sections = %reloaded.join(", "), validators = fresh.plugins.validate.len(), checks = fresh.plugins.checks.len(), "reloaded plugin bindings");
                    running.plugins.validate = fresh.plugins.validate.clone();
                    running.plugins.checks = fresh.plugins.checks.clone();
                }
            }
            running.labels = fresh.labels.clone();
            running.services = fresh.services.clone();
        }
        match fresh_keyring {
            Ok(fresh) => {
                tracing::info!(
                    trusted_keys = fresh.trust.keys.len(),
                    trusted_prefixes = fresh.trust.prefixes.len(),
                    identities = fresh.identities.files().len(),
                    "reloaded [trust] and [secrets] from the config"
                );
                keyring.set(under_root(fresh));
            }
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "config reload refused; keeping the running trust policy and keys");
            }
        }
    }
}

/// `[peer_trust]` on SIGHUP: handshakes and gossip records take the new
/// keys at once, and connections of keys no longer listed close; on a
/// voter, raft is taken from the new `voters`. (An edge's `voters`, whose
/// attestations it takes, need a restart: `config::reload` says so.)
#[cfg(unix)]
fn reload_peer_trust(live: &Reloadable, running: &Config, fresh: &Config) {
    let closed = live.transport.set_trusted(&fresh.peer_keys);
    live.membership.set_trusted(&fresh.peer_keys);
    if running.role == Role::Voter && fresh.voter_keys != running.voter_keys {
        if fresh.voter_keys.is_empty() {
            live.transport.senders().unpin();
        } else {
            live.transport.senders().pin(&fresh.voter_keys);
        }
    }
    tracing::info!(
        keys = fresh.peer_keys.len(),
        voters = fresh.voter_keys.len(),
        closed_connections = closed,
        "reloaded [peer_trust]"
    );
}

/// What a SIGHUP changes besides the keyring.
#[cfg(unix)]
struct Reloadable {
    membership: Arc<crate::gossip::Membership>,
    services: Arc<crate::services::Services>,
    /// None without `[[plugin]]` entries at start.
    plugins: Option<Arc<crate::plugins::reload::PluginReload>>,
    transport: Arc<Transport>,
}

/// Tells systemd (a `Type=notify` unit) how the agent is doing; does
/// nothing unless systemd started it (`$NOTIFY_SOCKET`).
fn tell_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(err) = sd_notify::notify(state) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}
