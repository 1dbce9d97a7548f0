//! The `edgeconf` command line. Every command except `agent` is a client of
//! the API, with etcdctl's flags, output formats and exit codes.

mod auth;
pub mod bench;
mod cert;
mod client;
mod concurrency;
mod generate;
mod kv;
mod lease;
mod maintenance;
mod member;
mod output;
mod plugin;
mod render;
mod rollout;
mod service;
mod signing;
mod snapshot;
mod status;
mod trust;
mod txn;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{ClusterState, ConfigFile};

pub use client::Client;
pub use output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "edgeconf",
    version,
    about = "Configuration agent for edge fleets",
    max_term_width = 100
)]
pub struct Cli {
    /// Agents to talk to, comma-separated HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "EDGECONF_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,

    /// Output format.
    #[arg(short = 'w', long = "write-out", global = true, value_enum, default_value_t = Format::Simple)]
    pub format: Format,

    /// How long to wait for a connection.
    #[arg(long, global = true, default_value = "2s", value_parser = humantime::parse_duration)]
    pub dial_timeout: Duration,

    /// How long to wait for a request (not watches or keep-alives).
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    pub command_timeout: Duration,

    /// CA certificate (PEM) to verify agents with; turns TLS on.
    #[arg(long, global = true, env = "EDGECONF_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), for agents with client_cert_auth.
    #[arg(
        long = "cert",
        id = "client_cert",
        global = true,
        env = "EDGECONF_CERT",
        requires = "client_key"
    )]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM). (`plugin test` takes
    /// `--key` as the key to validate.)
    #[arg(long = "key", id = "client_key", global = true, env = "EDGECONF_KEY")]
    pub key: Option<PathBuf>,

    /// Sign in as NAME, with NAME:PASSWORD or --password, when the agents
    /// have authentication enabled.
    #[arg(long = "user", id = "auth_user", global = true, env = "EDGECONF_USER")]
    pub user: Option<String>,
    /// The password for --user.
    #[arg(
        long = "password",
        id = "auth_password",
        global = true,
        env = "EDGECONF_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// `--user` and `--password` as a name and a password.
    fn credentials(&self) -> anyhow::Result<Option<(String, String)>> {
        let Some(user) = &self.user else {
            return Ok(None);
        };
        let (name, password) = match (user.split_once(':'), &self.password) {
            (Some((name, password)), _) => (name.to_string(), password.to_string()),
            (None, Some(password)) => (user.clone(), password.clone()),
            (None, None) => anyhow::bail!(
                "--user {user} needs a password: --user {user}:PASSWORD or --password PASSWORD"
            ),
        };
        if name.is_empty() {
            anyhow::bail!("--user needs a user name before the ':'");
        }
        Ok(Some((name, password)))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an agent.
    Agent(AgentArgs),
    /// Write a key.
    Put(kv::PutArgs),
    /// Read a key or a range of keys.
    Get(kv::GetArgs),
    /// Delete a key or a range of keys.
    Del(kv::DelArgs),
    /// Stream changes to a key or a range of keys.
    Watch(watch::WatchArgs),
    /// Show every retained revision of a key.
    History(kv::HistoryArgs),
    /// Write the value a key had at an earlier revision as a new revision.
    Rollback(kv::RollbackArgs),
    /// Discard history below a revision.
    Compact(kv::CompactArgs),
    /// Grant, revoke, keep alive and inspect leases.
    #[command(subcommand)]
    Lease(lease::LeaseCommand),
    /// Turn authentication on or off, or show whether it is on.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Add, delete, list and inspect users; change passwords; grant roles.
    #[command(subcommand)]
    User(auth::UserCommand),
    /// Add, delete, list and inspect roles; grant key permissions.
    #[command(subcommand)]
    Role(auth::RoleCommand),
    /// List the fleet's agents, leave it; list, add, remove and promote
    /// raft members.
    #[command(subcommand)]
    Member(member::MemberCommand),
    /// Discover service instances; register the services of this host.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Roll a new value out to the fleet in stages, gated on health.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Print this agent's node key (creating it if needed), for peer_trust.keys.
    NodeKey {
        /// The agent's data directory.
        #[arg(long, default_value = crate::config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Make a CA and certificates for TLS on the client API.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Create an operator signing key (or, with --secret, an age identity).
    Keygen(signing::KeygenArgs),
    /// Sign a change offline; prints JSON for `edgeconf put --signed`.
    Sign(signing::SignArgs),
    /// Re-check stored values against the agent's trust policy.
    Verify(signing::VerifyArgs),
    /// Trust roots: who may sign what, signed by root keys, in the store.
    #[command(subcommand)]
    Trust(trust::TrustCommand),
    /// Run a WebAssembly plugin locally: a validator on a value, or a
    /// health check once.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Show what the [[render]] entries of a config would write (a diff).
    Render(render::RenderArgs),
    /// Show the status of each endpoint and of its rendered files.
    Status,
    /// Measure throughput and latency of a workload against the endpoints.
    Bench(bench::BenchArgs),
    /// Run a transaction read from standard input (or typed with -i), as
    /// etcdctl txn.
    Txn(txn::TxnArgs),
    /// Take a lock (run a command while holding it, or hold it until
    /// Ctrl-C), as etcdctl lock.
    Lock(concurrency::LockArgs),
    /// Campaign in an election (or --listen to its leaders), as etcdctl
    /// elect.
    Elect(concurrency::ElectArgs),
    /// Endpoint checks: health, status, hashkv.
    #[command(subcommand)]
    Endpoint(maintenance::EndpointCommand),
    /// Defragment each endpoint's store (after a compaction, to give the
    /// space back).
    Defrag,
    /// Hand the cluster's leadership to member ID (hex).
    MoveLeader { id: String },
    /// Backup images: save one from an endpoint, check one, restore one
    /// into the data dir of a new cluster's member.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// List or disarm alarms (NOSPACE, CORRUPT).
    #[command(subcommand)]
    Alarm(maintenance::AlarmCommand),
    /// Print the shell completion script for SHELL (bash, zsh, fish, ...).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, or write one per command into --out-dir.
    Man {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

/// `edgeconf agent`: the TOML file, and the same settings as flags, which
/// win over the file.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The bootstrap TOML file.
    #[arg(long, short = 'c', env = "EDGECONF_CONFIG")]
    pub config: Option<PathBuf>,
    /// Check the configuration, print what it resolves to and exit.
    #[arg(long)]
    pub check: bool,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated http://HOST:PORT URLs to serve clients on.
    #[arg(long, value_delimiter = ',')]
    pub listen_client_urls: Option<Vec<String>>,
    #[arg(long, value_delimiter = ',')]
    pub advertise_client_urls: Option<Vec<String>>,
    /// Comma-separated quic://HOST:PORT URLs for peers.
    #[arg(long, value_delimiter = ',')]
    pub listen_peer_urls: Option<Vec<String>>,
    #[arg(long, value_delimiter = ',')]
    pub initial_advertise_peer_urls: Option<Vec<String>>,
    /// NAME=quic://HOST:PORT,... of the initial members.
    #[arg(long)]
    pub initial_cluster: Option<String>,
    #[arg(long, value_enum)]
    pub initial_cluster_state: Option<ClusterState>,
    /// Log filter, e.g. info or edgeconf=debug.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Milliseconds between leader heartbeats.
    #[arg(long)]
    pub heartbeat_interval: Option<u64>,
    /// Milliseconds without a leader before an election.
    #[arg(long)]
    pub election_timeout: Option<u64>,
    /// Applied entries between compactions of the raft log.
    #[arg(long)]
    pub snapshot_count: Option<u64>,
    /// Log entries kept for slow followers after a compaction.
    #[arg(long)]
    pub snapshot_catchup_entries: Option<u64>,
}

/// How the agent writes its log (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl AgentArgs {
    /// The flags as a config layer that overrides the file.
    pub fn overrides(&self) -> ConfigFile {
        ConfigFile {
            name: self.name.clone(),
            data_dir: self.data_dir.clone(),
            listen_client_urls: self.listen_client_urls.clone(),
            advertise_client_urls: self.advertise_client_urls.clone(),
            listen_peer_urls: self.listen_peer_urls.clone(),
            initial_advertise_peer_urls: self.initial_advertise_peer_urls.clone(),
            initial_cluster: self.initial_cluster.clone(),
            initial_cluster_state: self.initial_cluster_state,
            log_level: self.log_level.clone(),
            heartbeat_interval: self.heartbeat_interval,
            election_timeout: self.election_timeout,
            peer_trust: None,
            snapshot_count: self.snapshot_count,
            snapshot_catchup_entries: self.snapshot_catchup_entries,
            client_cert_file: None,
            client_key_file: None,
            client_trusted_ca_file: None,
            client_cert_auth: None,
            allow_insecure_client: None,
            trust: None,
            secrets: None,
            render_root: None,
            listen_metrics_url: None,
            render: Vec::new(),
            plugin: Vec::new(),
            validate: Vec::new(),
            check: Vec::new(),
            role: None,
            sync: Vec::new(),
            max_staleness: None,
            stale_is_unhealthy: None,
            quota_backend_bytes: None,
            auto_compaction_mode: None,
            auto_compaction_retention: None,
            corrupt_check_interval: None,
            labels: None,
            gossip: None,
            service: Vec::new(),
        }
    }
}

/// Runs a client command.
pub async fn run_client(cli: Cli) -> anyhow::Result<()> {
    if let Command::Plugin(command) = cli.command {
        let key = cli.key.map(|k| k.to_string_lossy().into_owned());
        return plugin::run(cli.format, command, key).await;
    }
    // `rollout start --key KEY` names the key to roll out, unless a client
    // certificate is given (its key is then --key; KEY goes as an argument).
    let mut rollout_key = None;
    let mut cli = cli;
    if matches!(cli.command, Command::Rollout(_)) && cli.cert.is_none() {
        rollout_key = cli.key.take().map(|k| k.to_string_lossy().into_owned());
    }
    if cli.key.is_some() && cli.cert.is_none() {
        anyhow::bail!(
            "--key is the client certificate's private key: give the certificate with --cert too"
        );
    }
    let tls = client::TlsFiles {
        cacert: cli.cacert.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
    };
    let client = Client::new(&cli.endpoints, cli.dial_timeout, cli.command_timeout)
        .with_tls(tls)
        .with_user(cli.credentials()?);
    let format = cli.format;
    match cli.command {
        Command::Agent(_) => anyhow::bail!("`agent` runs an agent; it is not a client command"),
        Command::Put(args) => kv::put(&client, format, args).await,
        Command::Get(args) => kv::get(&client, format, args).await,
        Command::Del(args) => kv::del(&client, format, args).await,
        Command::Watch(args) => watch::watch(&client, format, args).await,
        Command::History(args) => kv::history(&client, format, args).await,
        Command::Rollback(args) => kv::rollback(&client, format, args).await,
        Command::Compact(args) => kv::compact(&client, format, args).await,
        Command::Lease(command) => lease::run(&client, format, command).await,
        Command::Member(command) => member::run(&client, format, command).await,
        Command::Service(command) => service::run(&client, format, command).await,
        Command::Rollout(command) => rollout::run(&client, format, command, rollout_key).await,
        Command::Auth(command) => auth::auth(&client, format, command).await,
        Command::User(command) => auth::user(&client, format, command).await,
        Command::Role(command) => auth::role(&client, format, command).await,
        Command::NodeKey { data_dir } => {
            let key = crate::transport::NodeKey::load_or_create(&data_dir)?;
            println!("{}", key.public_key());
            Ok(())
        }
        Command::Keygen(args) => signing::keygen(format, args),
        Command::Cert(command) => cert::run(command),
        Command::Sign(args) => signing::sign(args),
        Command::Verify(args) => signing::verify(&client, format, args).await,
        Command::Trust(command) => trust::run(&client, format, command).await,
        Command::Status => status::status(&client, format).await,
        Command::Render(args) => render::render(&client, args).await,
        Command::Plugin(_) => unreachable!("handled above"),
        Command::Bench(args) => bench::bench(&client, format, args).await,
        Command::Txn(args) => txn::txn(&client, format, args).await,
        Command::Lock(args) => concurrency::lock(&client, args).await,
        Command::Elect(args) => concurrency::elect(&client, args).await,
        Command::Endpoint(command) => maintenance::endpoint(&client, format, command).await,
        Command::Defrag => maintenance::defrag(&client, format).await,
        Command::Snapshot(command) => snapshot::run(&client, format, command).await,
        Command::MoveLeader { id } => maintenance::move_leader(&client, format, &id).await,
        Command::Alarm(command) => maintenance::alarm(&client, format, command).await,
        Command::Completion { shell } => generate::completion(shell),
        Command::Man { out_dir } => generate::man(out_dir.as_deref()),
    }
}
