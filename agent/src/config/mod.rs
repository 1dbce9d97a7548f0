//! The bootstrap configuration: one TOML file whose keys are etcd's flag names
//! in snake_case, overridden by the same settings given as flags.
//!
//! Loading either yields a fully checked [`Config`] or an error that names
//! the file, line and field at fault; nothing starts from a bad file.

mod check;
pub mod plugins;
pub mod reload;
pub mod render;
pub mod services;
pub mod upkeep;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use check::socket_addr;
pub use plugins::{
    Capabilities, CheckEntry, HostPort, Limits, PluginEntry, PluginKind, PluginSections,
    ValidateEntry,
};
pub use render::{AtomicMode, OnDrift, RenderEntry, RenderFile, RenderSource};
pub use services::{
    CheckKind, GossipSettings, Role, ServiceCheck, ServiceCheckFile, ServiceEntry, ServiceFile,
};

use crate::signing::{Identities, PrefixTrust, Recipient, TrustPolicy};

/// Whether `filter` is a log filter: directives separated by commas, each a
/// level (`info`), a target (`edgeconf::transport`, all its events) or
/// `target=level`.
pub fn is_log_filter(filter: &str) -> bool {
    let is_target = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
    };
    let is_level = |l: &str| l.parse::<tracing::level_filters::LevelFilter>().is_ok();
    filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .all(|directive| match directive.split_once('=') {
            Some((target, level)) => is_target(target) && is_level(level),
            None => is_level(directive) || is_target(directive),
        })
}

#[cfg(test)]
mod tests;

/// The file as written. Every field is optional: defaults fill the gaps.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub name: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub listen_client_urls: Option<Vec<String>>,
    pub advertise_client_urls: Option<Vec<String>>,
    pub listen_peer_urls: Option<Vec<String>>,
    pub initial_advertise_peer_urls: Option<Vec<String>>,
    pub initial_cluster: Option<String>,
    pub initial_cluster_state: Option<ClusterState>,
    /// A tracing filter such as `info` or `edgeconf=debug`.
    pub log_level: Option<String>,
    /// Milliseconds between leader heartbeats (raft's tick).
    pub heartbeat_interval: Option<u64>,
    /// Milliseconds without a leader before a follower campaigns.
    pub election_timeout: Option<u64>,
    pub peer_trust: Option<PeerTrust>,
    /// Applied entries between store syncs that let the raft log be compacted.
    pub snapshot_count: Option<u64>,
    /// Log entries kept behind for slow followers after a compaction.
    pub snapshot_catchup_entries: Option<u64>,
    /// The client API's certificate and key (PEM), for https:// client URLs.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to.
    pub client_trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate from `client_trusted_ca_file`.
    pub client_cert_auth: Option<bool>,
    /// Allow plain http:// client URLs on addresses other than loopback.
    pub allow_insecure_client: Option<bool>,
    /// Operator keys that sign config, and what they protect.
    pub trust: Option<TrustFile>,
    /// Identities that decrypt secrets, and the fleet's recipients.
    pub secrets: Option<SecretsFile>,
    /// `http://HOST:PORT` serving /metrics and /health (off when unset).
    pub listen_metrics_url: Option<String>,
    /// The directory every rendered file must stay in.
    pub render_root: Option<PathBuf>,
    /// `[[render]]`: keys materialized into files.
    #[serde(default)]
    pub render: Vec<RenderFile>,
    /// `[[plugin]]`: WebAssembly components and what they may reach.
    #[serde(default)]
    pub plugin: Vec<plugins::PluginFile>,
    /// `[[validate]]`: validator plugins bound to key prefixes.
    #[serde(default)]
    pub validate: Vec<plugins::ValidateFile>,
    /// `[[check]]`: health-check plugins run on an interval.
    #[serde(default)]
    pub check: Vec<plugins::CheckFile>,
    /// "voter" (default) or "edge".
    pub role: Option<Role>,
    /// Key prefixes an edge keeps besides those its `[[render]]` entries and
    /// plugins read.
    #[serde(default)]
    pub sync: Vec<String>,
    /// An edge whose newest verified voter timestamp is older than this
    /// reports itself stale (default "30s").
    pub max_staleness: Option<String>,
    /// A stale edge answers /health with 503 (default true).
    pub stale_is_unhealthy: Option<bool>,
    /// etcd's backend quota: past it, NOSPACE (0: 2 GiB).
    pub quota_backend_bytes: Option<u64>,
    /// etcd's auto-compaction: "periodic" (default) or "revision".
    pub auto_compaction_mode: Option<String>,
    /// How much history to keep ("1h", "72" hours, or "1000" revisions;
    /// default "0": off).
    pub auto_compaction_retention: Option<String>,
    /// How often voters compare history checksums (default "60s"; "0s":
    /// off).
    pub corrupt_check_interval: Option<String>,
    /// `[labels]`: what this agent announces about itself (for selectors).
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    /// `[gossip]`: seeds and timing of the fleet membership.
    pub gossip: Option<services::GossipFile>,
    /// `[[service]]`: services of this host, announced by gossip.
    #[serde(default)]
    pub service: Vec<ServiceFile>,
}

/// `[trust]`: operator public keys (as `edgeconf keygen` prints them),
/// globally and per key prefix.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustFile {
    /// Keys trusted to sign any key.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Whether keys outside every `[[trust.prefix]]` take unsigned writes.
    pub allow_unsigned: Option<bool>,
    /// `[[trust.prefix]]`: keys under `prefix` need a signature by one of
    /// `keys` (or a global key).
    #[serde(default)]
    pub prefix: Vec<TrustPrefixFile>,
    /// Root keys: a threshold of them vouches for the first trust root in
    /// the store, whose policy then replaces this section's.
    #[serde(default)]
    pub root_keys: Vec<String>,
    /// How many of `root_keys` must sign the first root (default 1).
    pub root_threshold: Option<usize>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustPrefixFile {
    pub prefix: String,
    #[serde(default)]
    pub keys: Vec<String>,
    /// How many distinct trusted keys must sign a change under `prefix`
    /// (default 1).
    pub threshold: Option<usize>,
    /// What becomes of a value under `prefix` once it expires: `refuse`
    /// (the default) or `keep`.
    pub on_expiry: Option<crate::signing::OnExpiry>,
}

/// `[secrets]`: age identities this agent decrypts with, and the recipients
/// new secrets are encrypted to.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsFile {
    #[serde(default)]
    pub identity_files: Vec<PathBuf>,
    #[serde(default)]
    pub recipients: Vec<String>,
}

/// Which peers may connect: their node keys, as `edgeconf node-key` prints.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTrust {
    #[serde(default)]
    pub keys: Vec<String>,
    /// The voters' node keys: an edge applies the feed only as attested by
    /// one of these (they are admitted as peers too).
    #[serde(default)]
    pub voters: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    #[default]
    New,
    Existing,
}

/// The client API's TLS files, checked to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: Option<PathBuf>,
    /// Clients must present a certificate from `trusted_ca_file`.
    pub cert_auth: bool,
}

/// A checked configuration, ready to start an agent from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client: Vec<SocketAddr>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer: Vec<SocketAddr>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// `(name, peer url)` of every initial member.
    pub initial_cluster: Vec<(String, String)>,
    pub initial_cluster_state: ClusterState,
    pub log_level: String,
    pub heartbeat_interval: std::time::Duration,
    pub election_timeout: std::time::Duration,
    /// Raw ed25519 keys of the peers admitted.
    pub peer_keys: Vec<[u8; 32]>,
    pub snapshot_count: u64,
    pub snapshot_catchup_entries: u64,
    /// TLS on the client API (every client URL is https:// when set).
    pub client_tls: Option<ClientTls>,
    /// Plain client URLs on non-loopback addresses, allowed explicitly.
    pub allow_insecure_client: bool,
    pub trust: TrustPolicy,
    /// Root keys pinned by `[trust] root_keys`: they vouch for the first
    /// trust root in the store (see `signing::root`).
    pub pinned_root: crate::signing::root::PinnedRoot,
    /// Files holding the age identities that decrypt secrets.
    pub identity_files: Vec<PathBuf>,
    /// `age1...` recipients new secrets are encrypted to.
    pub recipients: Vec<String>,
    /// Where /metrics and /health are served, if anywhere.
    pub listen_metrics: Option<SocketAddr>,
    /// The TOML file this came from (watched for live `[[render]]` edits).
    pub source: Option<PathBuf>,
    /// Canonical `render_root`, when there are `[[render]]` entries.
    pub render_root: Option<PathBuf>,
    pub render: Vec<RenderEntry>,
    pub plugins: PluginSections,
    pub role: Role,
    /// `sync` prefixes (an edge's explicit subscription).
    pub sync: Vec<Vec<u8>>,
    /// See the file's `max_staleness` and `stale_is_unhealthy`.
    pub max_staleness: std::time::Duration,
    pub stale_is_unhealthy: bool,
    /// Quota, auto-compaction and corruption checks.
    pub upkeep: crate::upkeep::Settings,
    /// Raw ed25519 keys of the voters, whose feed checkpoints edges accept.
    pub voter_keys: Vec<[u8; 32]>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub gossip: GossipSettings,
    pub services: Vec<ServiceEntry>,
}

pub const DEFAULT_NAME: &str = "default";
pub const DEFAULT_DATA_DIR: &str = "edgeconf.data";
pub const DEFAULT_CLIENT_URL: &str = "http://127.0.0.1:2379";
pub const DEFAULT_PEER_URL: &str = "quic://127.0.0.1:2380";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{location}: `{field}` {problem}")]
    Invalid {
        location: String,
        field: &'static str,
        problem: String,
    },
}

/// Where a setting came from, for error messages.
struct Origin<'a> {
    file: Option<(&'a Path, &'a str)>,
}

impl Origin<'_> {
    fn invalid(&self, field: &'static str, problem: String) -> ConfigError {
        let location = match self.file {
            Some((path, text)) => match line_of(text, field) {
                Some(line) => format!("{}:{line}", path.display()),
                None => format!("{} (or its --flag)", path.display()),
            },
            None => "command line".to_string(),
        };
        ConfigError::Invalid {
            location,
            field,
            problem,
        }
    }
}

/// The 1-based line where `field` is set in a TOML text, if it is.
fn line_of(text: &str, field: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(field)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|index| index + 1)
}

impl ConfigFile {
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: err.to_string().trim_end().to_string(),
        })
    }

    /// Settings present in `overrides` replace those of `self`.
    pub fn overridden_by(self, overrides: ConfigFile) -> ConfigFile {
        ConfigFile {
            name: overrides.name.or(self.name),
            data_dir: overrides.data_dir.or(self.data_dir),
            listen_client_urls: overrides.listen_client_urls.or(self.listen_client_urls),
            advertise_client_urls: overrides
                .advertise_client_urls
                .or(self.advertise_client_urls),
            listen_peer_urls: overrides.listen_peer_urls.or(self.listen_peer_urls),
            initial_advertise_peer_urls: overrides
                .initial_advertise_peer_urls
                .or(self.initial_advertise_peer_urls),
            initial_cluster: overrides.initial_cluster.or(self.initial_cluster),
            initial_cluster_state: overrides
                .initial_cluster_state
                .or(self.initial_cluster_state),
            log_level: overrides.log_level.or(self.log_level),
            heartbeat_interval: overrides.heartbeat_interval.or(self.heartbeat_interval),
            election_timeout: overrides.election_timeout.or(self.election_timeout),
            peer_trust: overrides.peer_trust.or(self.peer_trust),
            snapshot_count: overrides.snapshot_count.or(self.snapshot_count),
            snapshot_catchup_entries: overrides
                .snapshot_catchup_entries
                .or(self.snapshot_catchup_entries),
            client_cert_file: overrides.client_cert_file.or(self.client_cert_file),
            client_key_file: overrides.client_key_file.or(self.client_key_file),
            client_trusted_ca_file: overrides
                .client_trusted_ca_file
                .or(self.client_trusted_ca_file),
            client_cert_auth: overrides.client_cert_auth.or(self.client_cert_auth),
            allow_insecure_client: overrides
                .allow_insecure_client
                .or(self.allow_insecure_client),
            trust: overrides.trust.or(self.trust),
            secrets: overrides.secrets.or(self.secrets),
            render_root: overrides.render_root.or(self.render_root),
            listen_metrics_url: overrides.listen_metrics_url.or(self.listen_metrics_url),
            render: if overrides.render.is_empty() {
                self.render
            } else {
                overrides.render
            },
            plugin: if overrides.plugin.is_empty() {
                self.plugin
            } else {
                overrides.plugin
            },
            validate: if overrides.validate.is_empty() {
                self.validate
            } else {
                overrides.validate
            },
            check: if overrides.check.is_empty() {
                self.check
            } else {
                overrides.check
            },
            role: overrides.role.or(self.role),
            max_staleness: overrides.max_staleness.or(self.max_staleness),
            stale_is_unhealthy: overrides.stale_is_unhealthy.or(self.stale_is_unhealthy),
            quota_backend_bytes: overrides.quota_backend_bytes.or(self.quota_backend_bytes),
            auto_compaction_mode: overrides.auto_compaction_mode.or(self.auto_compaction_mode),
            auto_compaction_retention: overrides
                .auto_compaction_retention
                .or(self.auto_compaction_retention),
            corrupt_check_interval: overrides
                .corrupt_check_interval
                .or(self.corrupt_check_interval),
            sync: if overrides.sync.is_empty() {
                self.sync
            } else {
                overrides.sync
            },
            labels: overrides.labels.or(self.labels),
            gossip: overrides.gossip.or(self.gossip),
            service: if overrides.service.is_empty() {
                self.service
            } else {
                overrides.service
            },
        }
    }
}

impl Config {
    /// Loads `path` (if any), applies `overrides` (the flags) and checks the
    /// result.
    pub fn load(path: Option<&Path>, overrides: ConfigFile) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Self::check(overrides, &Origin { file: None }, None);
        };
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let file = ConfigFile::parse(path, &text)?;
        Self::check(
            file.overridden_by(overrides),
            &Origin {
                file: Some((path, &text)),
            },
            Some(path),
        )
    }

    /// The redb file holding the store.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("store.redb")
    }
}
