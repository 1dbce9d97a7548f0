//! The bootstrap configuration: one TOML file whose keys are etcd's flag names
//! in snake_case, overridden by the same settings given as flags.
//!
//! Loading either yields a fully checked [`Config`] or an error that names
//! the file, line and field at fault; nothing starts from a bad file.

pub mod plugins;
pub mod reload;
pub mod render;
pub mod services;
pub mod upkeep;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

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

    fn check(
        file: ConfigFile,
        origin: &Origin,
        source: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let name = file.name.unwrap_or_else(|| DEFAULT_NAME.to_string());
        if name.is_empty() || name.contains(['=', ',']) || name.chars().any(char::is_whitespace) {
            return Err(origin.invalid(
                "name",
                format!("is {name:?}: expected a non-empty name without spaces, '=' or ','"),
            ));
        }
        let data_dir = file
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(origin.invalid("data_dir", "is empty: expected a directory path".into()));
        }

        let client_urls = file
            .listen_client_urls
            .unwrap_or_else(|| vec![DEFAULT_CLIENT_URL.to_string()]);
        let client_scheme = if client_urls.iter().any(|url| url.starts_with("https://")) {
            "https"
        } else {
            "http"
        };
        let listen_client =
            listen_addrs(origin, "listen_client_urls", &client_urls, client_scheme)?;
        let advertise_client_urls = file.advertise_client_urls.unwrap_or(client_urls);
        listen_addrs(
            origin,
            "advertise_client_urls",
            &advertise_client_urls,
            client_scheme,
        )?;
        let client_tls = check_client_tls(
            origin,
            client_scheme == "https",
            file.client_cert_file,
            file.client_key_file,
            file.client_trusted_ca_file,
            file.client_cert_auth.unwrap_or(false),
        )?;
        let allow_insecure_client = file.allow_insecure_client.unwrap_or(false);
        if client_tls.is_none() && !allow_insecure_client {
            if let Some(addr) = listen_client.iter().find(|addr| !addr.ip().is_loopback()) {
                return Err(origin.invalid(
                    "listen_client_urls",
                    format!(
                        "listens on {addr} without TLS: anyone who reaches it could read and change every key. \
                         Use https:// with client_cert_file and client_key_file (see `edgeconf cert`), \
                         or set allow_insecure_client = true to accept the risk"
                    ),
                ));
            }
        }

        let peer_urls = file
            .listen_peer_urls
            .unwrap_or_else(|| vec![DEFAULT_PEER_URL.to_string()]);
        let listen_peer = listen_addrs(origin, "listen_peer_urls", &peer_urls, "quic")?;
        let initial_advertise_peer_urls = file.initial_advertise_peer_urls.unwrap_or(peer_urls);
        listen_addrs(
            origin,
            "initial_advertise_peer_urls",
            &initial_advertise_peer_urls,
            "quic",
        )?;

        let initial_cluster = match file.initial_cluster {
            Some(text) => parse_initial_cluster(origin, &text)?,
            None => vec![(name.clone(), initial_advertise_peer_urls[0].clone())],
        };
        let own: Vec<&String> = initial_cluster
            .iter()
            .filter(|(member, _)| *member == name)
            .map(|(_, url)| url)
            .collect();
        if own.is_empty() {
            return Err(origin.invalid(
                "initial_cluster",
                format!("does not list this agent's name {name:?}: add `{name}=<peer url>`"),
            ));
        }
        if let Some(url) = own
            .iter()
            .find(|url| !initial_advertise_peer_urls.contains(url))
        {
            return Err(origin.invalid(
                "initial_cluster",
                format!(
                    "gives {name}={url}, which is not among initial_advertise_peer_urls {initial_advertise_peer_urls:?}"
                ),
            ));
        }

        let log_level = file.log_level.unwrap_or_else(|| "info".to_string());
        if !is_log_filter(&log_level) {
            return Err(origin.invalid(
                "log_level",
                format!(
                    "is {log_level:?}: expected a level such as \"info\" or \"edgeconf=debug\""
                ),
            ));
        }

        let heartbeat = file.heartbeat_interval.unwrap_or(100);
        if !(10..=10_000).contains(&heartbeat) {
            return Err(origin.invalid(
                "heartbeat_interval",
                format!("is {heartbeat}: expected milliseconds between 10 and 10000"),
            ));
        }
        let election = file.election_timeout.unwrap_or(1000);
        if election < 5 * heartbeat || election > 60_000 {
            return Err(origin.invalid(
                "election_timeout",
                format!(
                    "is {election}: expected milliseconds, at least 5 x heartbeat_interval ({}) and at most 60000",
                    5 * heartbeat
                ),
            ));
        }
        let peer_trust = file.peer_trust.unwrap_or_default();
        let parse_peer_keys = |field: &'static str, keys: &[String]| {
            keys.iter()
                .map(|key| {
                    crate::transport::tls::parse_key(key).map_err(|problem| {
                        origin.invalid(field, format!("in [peer_trust]: {problem}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let voter_keys = parse_peer_keys("voters", &peer_trust.voters)?;
        let mut peer_keys = parse_peer_keys("keys", &peer_trust.keys)?;
        for key in &voter_keys {
            if !peer_keys.contains(key) {
                peer_keys.push(*key);
            }
        }

        // An edge agent serves no followers: it keeps a short raft log.
        let role = file.role.unwrap_or_default();
        let (default_count, default_catchup) = match role {
            Role::Voter => (10_000, 5_000),
            Role::Edge => (1_000, 100),
        };
        let snapshot_count = file.snapshot_count.unwrap_or(default_count);
        if snapshot_count == 0 {
            return Err(origin.invalid(
                "snapshot_count",
                "is 0: expected a positive number of entries".into(),
            ));
        }
        let trust_file = file.trust.unwrap_or_default();
        let pinned_root = check_pinned_root(origin, &trust_file)?;
        let trust = check_trust(origin, trust_file)?;
        let secrets = file.secrets.unwrap_or_default();
        Identities::load(&secrets.identity_files)
            .map_err(|err| origin.invalid("identity_files", format!("in [secrets]: {err}")))?;
        for recipient in &secrets.recipients {
            Recipient::parse(recipient).map_err(|problem| {
                origin.invalid("recipients", format!("in [secrets]: {problem}"))
            })?;
        }
        let listen_metrics = match &file.listen_metrics_url {
            None => None,
            Some(url) => Some(
                listen_addrs(
                    origin,
                    "listen_metrics_url",
                    std::slice::from_ref(url),
                    "http",
                )?[0],
            ),
        };
        let (render_root, render) =
            render::check_entries(source, file.render_root.as_deref(), file.render)?;
        let plugins = plugins::check_sections(source, file.plugin, file.validate, file.check)?;
        let labels = file.labels.unwrap_or_default();
        services::check_labels(&labels).map_err(|problem| origin.invalid("labels", problem))?;
        let own_url = &initial_advertise_peer_urls[0];
        let default_seeds = initial_cluster
            .iter()
            .filter(|(_, url)| url != own_url)
            .filter_map(|(_, url)| url.strip_prefix("quic://")?.parse().ok())
            .collect();
        let gossip = services::check_gossip(file.gossip.unwrap_or_default(), default_seeds, role)
            .map_err(|(field, problem)| origin.invalid(field, problem))?;
        check_peers_trusted(origin, &peer_keys, &initial_cluster, &gossip.seeds)?;
        let sync = check_edge_feed(origin, role, &voter_keys, file.sync)?;
        let max_staleness = match file.max_staleness.as_deref() {
            None => crate::edge::follow::DEFAULT_MAX_STALENESS,
            Some(text) => humantime::parse_duration(text)
                .ok()
                .filter(|limit| *limit >= std::time::Duration::from_secs(1))
                .ok_or_else(|| {
                    origin.invalid(
                        "max_staleness",
                        format!("is {text:?}: expected a duration of at least 1s, such as \"30s\" or \"5m\""),
                    )
                })?,
        };
        let upkeep = upkeep::check(upkeep::UpkeepFields {
            quota_backend_bytes: file.quota_backend_bytes,
            auto_compaction_mode: file.auto_compaction_mode.as_deref(),
            auto_compaction_retention: file.auto_compaction_retention.as_deref(),
            corrupt_check_interval: file.corrupt_check_interval.as_deref(),
        })
        .map_err(|(field, problem)| origin.invalid(field, problem))?;
        let check_plugins: Vec<String> = plugins
            .plugins
            .iter()
            .filter(|p| p.kind == PluginKind::HealthCheck)
            .map(|p| p.name.clone())
            .collect();
        let file_name = source.map_or("command line".to_string(), |p| p.display().to_string());
        let mut services = Vec::new();
        if file.service.len() > services::MAX_SERVICES {
            return Err(origin.invalid(
                "service",
                format!(
                    "has {} entries: an agent announces at most {}",
                    file.service.len(),
                    services::MAX_SERVICES
                ),
            ));
        }
        for (index, service) in file.service.into_iter().enumerate() {
            let location = format!(
                "{file_name}: [[service]] entry {} ({:?})",
                index + 1,
                service.name
            );
            let entry = services::check_service(service, &check_plugins)
                .map_err(services::located(location.clone()))?;
            if services.iter().any(|s: &ServiceEntry| s.id == entry.id) {
                return Err(services::located(location)((
                    "id",
                    format!(
                        "{:?} is used by another [[service]]: give each an id of its own",
                        entry.id
                    ),
                )));
            }
            services.push(entry);
        }
        Ok(Config {
            role,
            sync,
            max_staleness,
            stale_is_unhealthy: file.stale_is_unhealthy.unwrap_or(true),
            upkeep,
            voter_keys,
            labels,
            gossip,
            services,
            source: source.map(Path::to_path_buf),
            listen_metrics,
            render_root,
            render,
            plugins,
            name,
            data_dir,
            listen_client,
            advertise_client_urls,
            listen_peer,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_state: file.initial_cluster_state.unwrap_or_default(),
            log_level,
            heartbeat_interval: std::time::Duration::from_millis(heartbeat),
            election_timeout: std::time::Duration::from_millis(election),
            peer_keys,
            snapshot_count,
            snapshot_catchup_entries: file.snapshot_catchup_entries.unwrap_or(default_catchup),
            client_tls,
            allow_insecure_client,
            trust,
            pinned_root,
            identity_files: secrets.identity_files,
            recipients: secrets.recipients,
        })
    }

    /// The redb file holding the store.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("store.redb")
    }
}

fn listen_addrs(
    origin: &Origin,
    field: &'static str,
    urls: &[String],
    scheme: &str,
) -> Result<Vec<SocketAddr>, ConfigError> {
    if urls.is_empty() {
        return Err(origin.invalid(
            field,
            format!("is empty: expected at least one URL such as \"{scheme}://127.0.0.1:PORT\""),
        ));
    }
    urls.iter()
        .map(|url| socket_addr(url, scheme).map_err(|problem| origin.invalid(field, problem)))
        .collect()
}

/// Parses `scheme://HOST:PORT`, where HOST is an IP address or `localhost`.
pub fn socket_addr(text: &str, scheme: &str) -> Result<SocketAddr, String> {
    let expected = format!("expected \"{scheme}://HOST:PORT\" with an IP address or localhost");
    let url = url::Url::parse(text).map_err(|err| format!("has {text:?}: {err}; {expected}"))?;
    if url.scheme() != scheme {
        return Err(format!(
            "has {text:?} with scheme {:?}; {expected}",
            url.scheme()
        ));
    }
    if !(url.path().is_empty() || url.path() == "/") || url.query().is_some() {
        return Err(format!("has {text:?} with a path or query; {expected}"));
    }
    let port = url
        .port()
        .ok_or_else(|| format!("has {text:?} without a port; {expected}"))?;
    let not_an_ip = || format!("has {text:?} whose host is not an IP address; {expected}");
    let ip = match url.host().ok_or_else(not_an_ip)? {
        url::Host::Ipv4(ip) => IpAddr::V4(ip),
        url::Host::Ipv6(ip) => IpAddr::V6(ip),
        url::Host::Domain("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        // Non-http schemes keep the host opaque: parse it ourselves.
        url::Host::Domain(host) => host.parse().map_err(|_| not_an_ip())?,
    };
    Ok(SocketAddr::new(ip, port))
}

fn parse_initial_cluster(
    origin: &Origin,
    text: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut members: Vec<(String, String)> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, url)) = entry.split_once('=') else {
            return Err(origin.invalid(
                "initial_cluster",
                format!(
                    "has {entry:?}: expected NAME=quic://HOST:PORT entries separated by commas"
                ),
            ));
        };
        socket_addr(url, "quic").map_err(|problem| origin.invalid("initial_cluster", problem))?;
        if members.iter().any(|(_, known)| known == url) {
            return Err(origin.invalid("initial_cluster", format!("lists peer URL {url} twice")));
        }
        members.push((name.to_string(), url.to_string()));
    }
    if members.is_empty() {
        return Err(origin.invalid(
            "initial_cluster",
            "is empty: expected NAME=quic://HOST:PORT entries separated by commas".into(),
        ));
    }
    Ok(members)
}

/// An edge takes the feed only as attested by pinned voter keys, and keeps
/// the prefixes it is told to.
fn check_edge_feed(
    origin: &Origin,
    role: Role,
    voter_keys: &[[u8; 32]],
    sync: Vec<String>,
) -> Result<Vec<Vec<u8>>, ConfigError> {
    if role == Role::Edge && voter_keys.is_empty() {
        return Err(origin.invalid(
            "voters",
            "in [peer_trust] (peer_trust.voters) is empty, but an edge agent applies config only as attested by a voter: \
             list the voters' node keys (`edgeconf node-key --data-dir <its data_dir>` on each voter) in \
             [peer_trust] voters = [\"...\", ...]"
                .into(),
        ));
    }
    if sync.len() > crate::feed::wire::MAX_PREFIXES / 2 {
        return Err(origin.invalid(
            "sync",
            format!(
                "has {} prefixes: at most {} are allowed",
                sync.len(),
                crate::feed::wire::MAX_PREFIXES / 2
            ),
        ));
    }
    sync.into_iter()
        .map(|prefix| {
            if prefix.is_empty() || prefix.len() > crate::feed::wire::MAX_PREFIX_LEN {
                Err(origin.invalid(
                    "sync",
                    format!(
                        "has {prefix:?}: expected a key prefix such as \"/app/\" (1 to 1024 bytes)"
                    ),
                ))
            } else {
                Ok(prefix.into_bytes())
            }
        })
        .collect()
}

/// An agent with peers (other members in `initial_cluster`, or gossip
/// seeds) must pin their node keys: peers admit each other only by pinned
/// keys, so without any they would start, say "ready" and refuse each other
/// forever.
fn check_peers_trusted(
    origin: &Origin,
    peer_keys: &[[u8; 32]],
    initial_cluster: &[(String, String)],
    seeds: &[SocketAddr],
) -> Result<(), ConfigError> {
    if !peer_keys.is_empty() || (initial_cluster.len() < 2 && seeds.is_empty()) {
        return Ok(());
    }
    let peers = if initial_cluster.len() >= 2 {
        let names: Vec<&str> = initial_cluster
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        format!(
            "initial_cluster names {} members ({})",
            names.len(),
            names.join(", ")
        )
    } else {
        format!("it has gossip seeds {seeds:?}")
    };
    Err(origin.invalid(
        "keys",
        format!(
            "in [peer_trust] (peer_trust.keys) is empty, but {peers}: peers admit each other only by pinned node keys, \
             so these members would refuse each other forever. Print each member's key with \
             `edgeconf node-key --data-dir <its data_dir>` and list every one of them in \
             [peer_trust] keys = [\"...\", ...]"
        ),
    ))
}

fn check_pinned_root(
    origin: &Origin,
    file: &TrustFile,
) -> Result<crate::signing::root::PinnedRoot, ConfigError> {
    let mut keys = Vec::new();
    for text in &file.root_keys {
        let key = crate::signing::keys::parse_public_key(text)
            .map_err(|problem| origin.invalid("root_keys", format!("in [trust]: {problem}")))?;
        if keys.contains(&key) {
            return Err(origin.invalid("root_keys", format!("in [trust] lists {text} twice")));
        }
        keys.push(key);
    }
    let threshold = file.root_threshold.unwrap_or(1);
    if !keys.is_empty() && (threshold == 0 || threshold > keys.len()) {
        return Err(origin.invalid(
            "root_threshold",
            format!(
                "in [trust] is {threshold}: expected 1 to {} (the root_keys listed)",
                keys.len()
            ),
        ));
    }
    if keys.is_empty() && file.root_threshold.is_some() {
        return Err(origin.invalid(
            "root_threshold",
            "in [trust] is set but root_keys is empty: list the root keys".into(),
        ));
    }
    Ok(crate::signing::root::PinnedRoot { keys, threshold })
}

fn check_trust(origin: &Origin, file: TrustFile) -> Result<TrustPolicy, ConfigError> {
    let parse_keys = |field: &'static str, keys: &[String], section: &str| {
        keys.iter()
            .map(|key| {
                crate::signing::keys::parse_public_key(key)
                    .map_err(|problem| origin.invalid(field, format!("in {section}: {problem}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let keys = parse_keys("keys", &file.keys, "[trust]")?;
    let mut prefixes: Vec<PrefixTrust> = Vec::new();
    for rule in &file.prefix {
        let section = format!("[[trust.prefix]] {:?}", rule.prefix);
        if rule.prefix.is_empty() {
            return Err(origin.invalid(
                "prefix",
                "in [[trust.prefix]] is empty: to protect every key set [trust] allow_unsigned = false".into(),
            ));
        }
        if prefixes
            .iter()
            .any(|known| known.prefix == rule.prefix.as_bytes())
        {
            return Err(origin.invalid("prefix", format!("{section} is listed twice")));
        }
        let rule_keys = parse_keys("keys", &rule.keys, &section)?;
        if rule_keys.is_empty() && keys.is_empty() {
            return Err(origin.invalid(
                "keys",
                format!("in {section} is empty and [trust] has no keys either: nobody could write under it"),
            ));
        }
        let signers: std::collections::BTreeSet<&[u8; 32]> =
            keys.iter().chain(&rule_keys).collect();
        let threshold = rule.threshold.unwrap_or(1);
        if threshold == 0 || threshold > signers.len() {
            return Err(origin.invalid(
                "threshold",
                format!(
                    "in {section} is {threshold}: expected 1 to {} (the distinct keys that may sign under it, its own and [trust] keys)",
                    signers.len()
                ),
            ));
        }
        prefixes.push(PrefixTrust {
            prefix: rule.prefix.clone().into_bytes(),
            keys: rule_keys,
            threshold,
            on_expiry: rule.on_expiry.unwrap_or_default(),
        });
    }
    let allow_unsigned = file.allow_unsigned.unwrap_or(true);
    if !allow_unsigned && keys.is_empty() {
        return Err(origin.invalid(
            "allow_unsigned",
            "is false but [trust] keys is empty: nobody could write any key outside a [[trust.prefix]]".into(),
        ));
    }
    Ok(TrustPolicy {
        keys,
        prefixes,
        allow_unsigned,
        // Known once the agent has its identity (see `agent.rs`).
        cluster_id: None,
        root_version: 0,
    })
}

fn check_client_tls(
    origin: &Origin,
    https: bool,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    trusted_ca_file: Option<PathBuf>,
    cert_auth: bool,
) -> Result<Option<ClientTls>, ConfigError> {
    let readable = |field: &'static str, path: &PathBuf| {
        std::fs::metadata(path).map(|_| ()).map_err(|err| {
            origin.invalid(
                field,
                format!(
                    "is {}: {err} (make one with `edgeconf cert`)",
                    path.display()
                ),
            )
        })
    };
    if !https {
        if let Some((field, _)) = [
            ("client_cert_file", cert_file.is_some()),
            ("client_key_file", key_file.is_some()),
            ("client_cert_auth", cert_auth),
        ]
        .into_iter()
        .find(|(_, set)| *set)
        {
            return Err(origin.invalid(
                field,
                "is set but listen_client_urls are http://: use https:// URLs to serve clients over TLS".into(),
            ));
        }
        return Ok(None);
    }
    let (Some(cert_file), Some(key_file)) = (cert_file, key_file) else {
        return Err(origin.invalid(
            "listen_client_urls",
            "are https:// but client_cert_file or client_key_file is missing: set both (see `edgeconf cert issue`)".into(),
        ));
    };
    readable("client_cert_file", &cert_file)?;
    readable("client_key_file", &key_file)?;
    if let Some(ca) = &trusted_ca_file {
        readable("client_trusted_ca_file", ca)?;
    } else if cert_auth {
        return Err(origin.invalid(
            "client_cert_auth",
            "is true but client_trusted_ca_file is not set: name the CA that issues client certificates".into(),
        ));
    }
    Ok(Some(ClientTls {
        cert_file,
        key_file,
        trusted_ca_file,
        cert_auth,
    }))
}
