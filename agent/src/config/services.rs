//! `role`, `[labels]`, `[gossip]` and `[[service]]`: how an agent joins the
//! fleet's gossip and which services of its host it announces.
//!
//! Services registered through the API (`edgeconf service register`) take
//! the same shape as a `[[service]]` entry and go through the same checks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// What an agent is in the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A raft voter: stores and orders writes.
    #[default]
    Voter,
    /// A non-voting agent: receives config as a raft learner, which the
    /// leader adds when it sees the agent in gossip.
    Edge,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Voter => "voter",
            Role::Edge => "edge",
        }
    }
}

/// `[gossip]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GossipFile {
    /// Peer addresses (`host:port` or `quic://host:port`) of agents to join
    /// through. Voters default to the other members of `initial_cluster`.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Time between failure-detection probes, e.g. "1s".
    pub probe_interval: Option<String>,
    /// How long a probe waits for its ack, e.g. "500ms".
    pub probe_timeout: Option<String>,
    /// This agent's peer port cannot be reached (NAT, a firewall): it
    /// accepts no peer connections and is reached only over the ones it
    /// dials. Edges only.
    #[serde(default)]
    pub dial_out_only: bool,
}

/// `[gossip]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipSettings {
    pub seeds: Vec<SocketAddr>,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// Accept no peer connections (see [`GossipFile::dial_out_only`]).
    pub dial_out_only: bool,
}

/// One `[[service]]` entry (or one API registration) as written.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub name: String,
    /// Unique on this agent; defaults to the name.
    pub id: Option<String>,
    /// Where clients reach it; defaults to 127.0.0.1.
    pub address: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, rename = "check")]
    pub checks: Vec<ServiceCheckFile>,
}

/// `[[service.check]]` as written: exactly one of `http`, `tcp`, `ttl` and
/// `plugin`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCheckFile {
    /// `http://host:port/path`: passing on the expected status.
    pub http: Option<String>,
    /// The status that passes (default: any 2xx).
    pub expect_status: Option<u16>,
    /// Text the body must contain.
    pub expect_body: Option<String>,
    /// `host:port`: passing when a TCP connection opens.
    pub tcp: Option<String>,
    /// The service itself reports (`edgeconf service pass`): critical when
    /// no report came within this time, e.g. "30s".
    pub ttl: Option<String>,
    /// A health-check `[[plugin]]` by name.
    pub plugin: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
    /// Time between runs (default 10s).
    pub interval: Option<String>,
    /// How long a run may take (default 2s).
    pub timeout: Option<String>,
}

/// A checked service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub checks: Vec<ServiceCheck>,
    /// What it was made from (API registrations are saved in this shape).
    pub source: ServiceFile,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    Http {
        url: String,
        status: Option<u16>,
        body: Option<String>,
    },
    Tcp {
        addr: String,
    },
    Ttl {
        ttl: Duration,
    },
    Plugin {
        plugin: String,
        args: Vec<String>,
        settings: BTreeMap<String, String>,
    },
}

impl CheckKind {
    /// A short name for listings: `http`, `tcp`, `ttl` or `plugin NAME`.
    pub fn describe(&self) -> String {
        match self {
            CheckKind::Http { url, .. } => format!("http {url}"),
            CheckKind::Tcp { addr } => format!("tcp {addr}"),
            CheckKind::Ttl { ttl } => format!("ttl {}", humantime::format_duration(*ttl)),
            CheckKind::Plugin { plugin, .. } => format!("plugin {plugin}"),
        }
    }
}

pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// The longest interval, timeout or ttl a check may have.
pub const MAX_CHECK_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Gossip metadata stays small: at most this many services per agent,
/// tags per service and labels per agent.
pub const MAX_SERVICES: usize = 64;
pub const MAX_TAGS: usize = 16;
pub const MAX_LABELS: usize = 64;

/// A service name, id or tag: 1 to 128 letters, digits, '-', '_' or '.'.
pub fn valid_word(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// An IP address or a DNS host name: safe to write into any config file.
pub fn valid_host(text: &str) -> bool {
    text.parse::<std::net::IpAddr>().is_ok()
        || (!text.is_empty()
            && text.len() <= 253
            && text.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && !part.starts_with('-')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }))
}
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Labels: names and values of letters, digits, `-`, `_`, `.` and `/`.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "has {} labels: at most {MAX_LABELS} are allowed",
            labels.len()
        ));
    }
    let valid = |text: &str| {
        !text.is_empty()
            && text.len() <= 63
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    for (name, value) in labels {
        if !valid(name) || !valid(value) {
            return Err(format!(
                "has {name:?} = {value:?}: names and values must be 1 to 63 letters, digits, '-', '_', '.' or '/'"
            ));
        }
    }
    Ok(())
}

/// Checks `[gossip]`; `default_seeds` are used when none are written.
pub fn check_gossip(
    file: GossipFile,
    default_seeds: Vec<SocketAddr>,
    role: Role,
) -> Result<GossipSettings, (&'static str, String)> {
    let mut seeds = Vec::new();
    for seed in &file.seeds {
        let text = seed.strip_prefix("quic://").unwrap_or(seed);
        let addr = text.parse::<SocketAddr>().map_err(|_| {
            (
                "seeds",
                format!(
                    "in [gossip] has {seed:?}: expected a peer address such as \"127.0.0.1:2380\""
                ),
            )
        })?;
        seeds.push(addr);
    }
    if seeds.is_empty() {
        seeds = default_seeds;
    }
    if file.dial_out_only && role == Role::Voter {
        return Err((
            "dial_out_only",
            "in [gossip] is true, but this agent is a voter, which raft peers and edges must be able to dial: \
             use it only on agents with role = \"edge\""
                .into(),
        ));
    }
    if seeds.is_empty() && role == Role::Edge {
        return Err((
            "seeds",
            "in [gossip] is empty, but an agent with role = \"edge\" joins through seeds: \
             list the peer address of one or more voters"
                .into(),
        ));
    }
    let duration = |field: &'static str, text: &Option<String>, default: Duration| match text {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text)
            .ok()
            .filter(|d| *d >= Duration::from_millis(10) && *d <= Duration::from_secs(60))
            .ok_or_else(|| {
                (
                    field,
                    format!(
                        "in [gossip] is {text:?}: expected a duration from \"10ms\" to \"60s\""
                    ),
                )
            }),
    };
    let probe_interval = duration(
        "probe_interval",
        &file.probe_interval,
        Duration::from_secs(1),
    )?;
    let probe_timeout = duration(
        "probe_timeout",
        &file.probe_timeout,
        Duration::from_millis(500),
    )?;
    if probe_timeout >= probe_interval {
        return Err((
            "probe_timeout",
            format!(
                "in [gossip] is {probe_timeout:?}, not shorter than probe_interval {probe_interval:?}"
            ),
        ));
    }
    Ok(GossipSettings {
        seeds,
        probe_interval,
        probe_timeout,
        dial_out_only: file.dial_out_only,
    })
}

/// Checks one service; `plugins` are the names of health-check plugins.
/// Errors name the field at fault.
pub fn check_service(
    file: ServiceFile,
    plugins: &[String],
) -> Result<ServiceEntry, (&'static str, String)> {
    let word = valid_word;
    if !word(&file.name) {
        return Err((
            "name",
            format!(
                "is {:?}: expected letters, digits, '-', '_' or '.'",
                file.name
            ),
        ));
    }
    let id = file.id.clone().unwrap_or_else(|| file.name.clone());
    if !word(&id) {
        return Err((
            "id",
            format!("is {id:?}: expected letters, digits, '-', '_' or '.'"),
        ));
    }
    if file.port == 0 {
        return Err((
            "port",
            "is 0: expected the port the service listens on".into(),
        ));
    }
    let address = file
        .address
        .clone()
        .unwrap_or_else(|| "127.0.0.1".to_string());
    if !valid_host(&address) {
        return Err((
            "address",
            format!("is {address:?}: expected an IP address or a host name"),
        ));
    }
    if file.tags.len() > MAX_TAGS {
        return Err((
            "tags",
            format!(
                "has {} tags: at most {MAX_TAGS} are allowed",
                file.tags.len()
            ),
        ));
    }
    if let Some(tag) = file.tags.iter().find(|tag| !word(tag)) {
        return Err((
            "tags",
            format!("has {tag:?}: expected letters, digits, '-', '_' or '.'"),
        ));
    }
    let checks = file
        .checks
        .iter()
        .map(|check| check_one(check, plugins))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ServiceEntry {
        id,
        name: file.name.clone(),
        address,
        port: file.port,
        tags: file.tags.clone(),
        checks,
        source: file,
    })
}

fn check_one(
    check: &ServiceCheckFile,
    plugins: &[String],
) -> Result<ServiceCheck, (&'static str, String)> {
    let duration = |field: &'static str, text: &Option<String>, default: Duration| {
        match text {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text)
            .ok()
            .filter(|d| *d >= Duration::from_millis(10) && *d <= MAX_CHECK_DURATION)
            .ok_or_else(|| {
                (
                    field,
                    format!("in [[service.check]] is {text:?}: expected a duration such as \"10s\" (from 10ms to 24h)"),
                )
            }),
    }
    };
    let interval = duration("interval", &check.interval, DEFAULT_CHECK_INTERVAL)?;
    let timeout = duration("timeout", &check.timeout, DEFAULT_CHECK_TIMEOUT)?;
    let given = [
        check.http.is_some(),
        check.tcp.is_some(),
        check.ttl.is_some(),
        check.plugin.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err((
            "check",
            "must set exactly one of http, tcp, ttl and plugin".into(),
        ));
    }
    let kind = if let Some(url) = &check.http {
        let uri: hyper::Uri = url
            .parse()
            .ok()
            .filter(|u: &hyper::Uri| u.scheme_str() == Some("http") && u.host().is_some())
            .ok_or_else(|| {
                (
                    "http",
                    format!("in [[service.check]] is {url:?}: expected http://host:port/path"),
                )
            })?;
        drop(uri);
        CheckKind::Http {
            url: url.clone(),
            status: check.expect_status,
            body: check.expect_body.clone(),
        }
    } else if let Some(addr) = &check.tcp {
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err((
                "tcp",
                format!("in [[service.check]] is {addr:?}: expected host:port"),
            ));
        }
        CheckKind::Tcp { addr: addr.clone() }
    } else if check.ttl.is_some() {
        CheckKind::Ttl {
            ttl: duration("ttl", &check.ttl, DEFAULT_CHECK_INTERVAL)?,
        }
    } else {
        let plugin = check.plugin.clone().unwrap_or_default();
        if !plugins.contains(&plugin) {
            return Err((
                "plugin",
                format!(
                    "in [[service.check]] is {plugin:?}, which is not a health-check [[plugin]] of this agent (known: {plugins:?})"
                ),
            ));
        }
        CheckKind::Plugin {
            plugin,
            args: check.args.clone(),
            settings: check.settings.clone(),
        }
    };
    Ok(ServiceCheck {
        kind,
        interval,
        timeout,
    })
}

/// Turns a field error into a config error located at `location`.
pub fn located(location: String) -> impl Fn((&'static str, String)) -> ConfigError {
    move |(field, problem)| ConfigError::Invalid {
        location: location.clone(),
        field,
        problem,
    }
}
