//! `[[plugin]]`, `[[validate]]` and `[[check]]`: which WebAssembly
//! components the agent loads, what each may reach, and where they run.
//! Checked here for shape; components are compiled by `crate::plugins`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// One `[[plugin]]` entry as written in the TOML.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginFile {
    pub name: String,
    /// The `.wasm` component, relative to the TOML file's directory.
    pub path: PathBuf,
    pub kind: PluginKind,
    /// The longest a call may run, e.g. "100ms".
    pub timeout: Option<String>,
    /// The most linear memory an instance may grow to, e.g. "16MiB".
    pub memory: Option<String>,
    #[serde(default)]
    pub capabilities: CapabilitiesFile,
}

/// Which world a plugin targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    Validator,
    HealthCheck,
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginKind::Validator => "validator",
            PluginKind::HealthCheck => "health-check",
        })
    }
}

/// `[plugin.capabilities]`: the host interfaces granted. Nothing by default.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilitiesFile {
    #[serde(default)]
    pub log: bool,
    /// Key prefixes `read-key` may read.
    #[serde(default)]
    pub read_keys: Vec<String>,
    /// `host:port` addresses `tcp.connect` may reach.
    #[serde(default)]
    pub tcp: Vec<String>,
    /// `host:port` addresses `http.get` may fetch from.
    #[serde(default)]
    pub http: Vec<String>,
}

/// `[[validate]]`: a validator plugin bound to a key prefix.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateFile {
    pub prefix: String,
    pub plugin: String,
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// `[[check]]`: a health-check plugin run on an interval.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckFile {
    pub name: String,
    pub plugin: String,
    /// Time between runs, e.g. "10s".
    pub interval: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// A checked `[[plugin]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginEntry {
    pub name: String,
    /// Absolute (joined to the TOML file's directory).
    pub path: PathBuf,
    pub kind: PluginKind,
    pub limits: Limits,
    pub capabilities: Capabilities,
}

/// What one call may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: DEFAULT_TIMEOUT,
            memory: DEFAULT_MEMORY,
        }
    }
}

/// The host interfaces a plugin may use, and where they may reach.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Capabilities {
    pub log: bool,
    pub read_keys: Vec<Vec<u8>>,
    pub tcp: Vec<HostPort>,
    pub http: Vec<HostPort>,
}

/// An allow-listed address: a host name or IP literal (lower case,
/// without brackets) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port` (`[::1]:80` for IPv6).
    pub fn parse(text: &str) -> Result<HostPort, String> {
        let bad = || format!("{text:?} is not host:port (e.g. \"127.0.0.1:8080\" or \"[::1]:80\")");
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
            return Err(bad());
        }
        let port = port.parse().map_err(|_| bad())?;
        Ok(HostPort {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.port == port
            && self
                .host
                .eq_ignore_ascii_case(host.trim_matches(['[', ']']))
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A checked `[[validate]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateEntry {
    pub prefix: Vec<u8>,
    pub plugin: String,
    pub settings: BTreeMap<String, String>,
}

/// A checked `[[check]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckEntry {
    pub name: String,
    pub plugin: String,
    pub interval: Duration,
    pub args: Vec<String>,
    pub settings: BTreeMap<String, String>,
}

/// Every plugin section of a config, checked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PluginSections {
    pub plugins: Vec<PluginEntry>,
    pub validate: Vec<ValidateEntry>,
    pub checks: Vec<CheckEntry>,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
pub const DEFAULT_MEMORY: u64 = 16 << 20;
/// Validators run on the write path (and on the leader's raft thread for
/// forwarded writes): a second is already far too long there.
pub const MAX_VALIDATOR_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// The pooling allocator's slot size bounds every plugin's memory.
pub const MAX_MEMORY: u64 = 256 << 20;
pub const MIN_MEMORY: u64 = 64 << 10;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Checks the plugin sections of `config_path` (None: the command line).
pub fn check_sections(
    config_path: Option<&Path>,
    plugins: Vec<PluginFile>,
    validate: Vec<ValidateFile>,
    checks: Vec<CheckFile>,
) -> Result<PluginSections, ConfigError> {
    let file = config_path.map_or("command line".to_string(), |p| p.display().to_string());
    let base = config_path
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut sections = PluginSections::default();
    for (index, plugin) in plugins.into_iter().enumerate() {
        let location = format!("{file}: [[plugin]] entry {} ({:?})", index + 1, plugin.name);
        let checked = check_plugin(&base, plugin, &|field, problem| ConfigError::Invalid {
            location: location.clone(),
            field,
            problem,
        })?;
        if sections.plugins.iter().any(|p| p.name == checked.name) {
            return Err(ConfigError::Invalid {
                location,
                field: "name",
                problem: format!(
                    "{:?} is used by another [[plugin]]: names must be unique",
                    checked.name
                ),
            });
        }
        sections.plugins.push(checked);
    }
    let find = |name: &str, kind: PluginKind| -> Result<(), String> {
        match sections.plugins.iter().find(|p| p.name == name) {
            None => Err(format!("names {name:?}, which no [[plugin]] entry defines")),
            Some(plugin) if plugin.kind != kind => Err(format!(
                "names {name:?}, a {} plugin; this needs a {kind} (see its `kind`)",
                plugin.kind
            )),
            Some(_) => Ok(()),
        }
    };
    for (index, entry) in validate.into_iter().enumerate() {
        let invalid = |field, problem| ConfigError::Invalid {
            location: format!(
                "{file}: [[validate]] entry {} (prefix {:?})",
                index + 1,
                entry.prefix
            ),
            field,
            problem,
        };
        find(&entry.plugin, PluginKind::Validator).map_err(|p| invalid("plugin", p))?;
        sections.validate.push(ValidateEntry {
            prefix: entry.prefix.into_bytes(),
            plugin: entry.plugin,
            settings: entry.settings,
        });
    }
    for (index, entry) in checks.into_iter().enumerate() {
        let invalid = |field, problem| ConfigError::Invalid {
            location: format!("{file}: [[check]] entry {} ({:?})", index + 1, entry.name),
            field,
            problem,
        };
        if entry.name.trim().is_empty() {
            return Err(invalid("name", "is empty: give the check a name".into()));
        }
        if sections.checks.iter().any(|c| c.name == entry.name) {
            return Err(invalid(
                "name",
                "is used by another [[check]]: names must be unique".into(),
            ));
        }
        find(&entry.plugin, PluginKind::HealthCheck).map_err(|p| invalid("plugin", p))?;
        let interval = duration(entry.interval.as_deref(), DEFAULT_INTERVAL)
            .map_err(|p| invalid("interval", p))?;
        if interval < MIN_INTERVAL {
            return Err(invalid(
                "interval",
                format!(
                    "must be at least {}",
                    humantime::format_duration(MIN_INTERVAL)
                ),
            ));
        }
        sections.checks.push(CheckEntry {
            name: entry.name,
            plugin: entry.plugin,
            interval,
            args: entry.args,
            settings: entry.settings,
        });
    }
    Ok(sections)
}

fn check_plugin(
    base: &Path,
    plugin: PluginFile,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<PluginEntry, ConfigError> {
    if plugin.name.trim().is_empty() {
        return Err(invalid("name", "is empty: give the plugin a name".into()));
    }
    let path = base.join(&plugin.path);
    if !path.is_file() {
        return Err(invalid(
            "path",
            format!(
                "{} is not a readable file (build the plugins with ./plugins/build.sh?)",
                path.display()
            ),
        ));
    }
    let limits = Limits::parse(
        plugin.kind,
        plugin.timeout.as_deref(),
        plugin.memory.as_deref(),
    )
    .map_err(|(field, problem)| invalid(field, problem))?;
    let caps = plugin.capabilities;
    let addresses = |list: Vec<String>| -> Result<Vec<HostPort>, String> {
        list.iter().map(|a| HostPort::parse(a)).collect()
    };
    let capabilities = Capabilities {
        log: caps.log,
        read_keys: caps.read_keys.into_iter().map(String::into_bytes).collect(),
        tcp: addresses(caps.tcp).map_err(|p| invalid("tcp", p))?,
        http: addresses(caps.http).map_err(|p| invalid("http", p))?,
    };
    Ok(PluginEntry {
        name: plugin.name,
        path,
        kind: plugin.kind,
        limits,
        capabilities,
    })
}

impl Limits {
    /// Limits from their TOML text (or flags); an error names the field.
    pub fn parse(
        kind: PluginKind,
        timeout: Option<&str>,
        memory: Option<&str>,
    ) -> Result<Limits, (&'static str, String)> {
        let timeout = duration(timeout, DEFAULT_TIMEOUT).map_err(|p| ("timeout", p))?;
        let max = match kind {
            PluginKind::Validator => MAX_VALIDATOR_TIMEOUT,
            PluginKind::HealthCheck => MAX_CHECK_TIMEOUT,
        };
        if timeout.is_zero() || timeout > max {
            return Err((
                "timeout",
                format!(
                    "must be above 0 and at most {} for a {kind}",
                    humantime::format_duration(max)
                ),
            ));
        }
        let memory = match memory {
            None => DEFAULT_MEMORY,
            Some(text) => parse_size(text).ok_or_else(|| {
                (
                    "memory",
                    format!("is {text:?}: expected a size such as \"16MiB\" or \"512KiB\""),
                )
            })?,
        };
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&memory) {
            return Err((
                "memory",
                format!("must be between 64KiB and 256MiB (is {memory} bytes)"),
            ));
        }
        Ok(Limits { timeout, memory })
    }
}

fn duration(text: Option<&str>, default: Duration) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text)
            .map_err(|err| format!("is {text:?}: {err} (expected e.g. \"100ms\" or \"10s\")")),
    }
}

/// `1234`, `64KiB`, `16MiB`, `1GiB` (K, M, G and KB, MB, GB count in 1024s too).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_addresses() {
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("512 KiB"), Some(512 << 10));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1.5MiB"), None);
        assert_eq!(parse_size("lots"), None);
        let v6 = HostPort::parse("[::1]:80").unwrap();
        assert!(v6.allows("::1", 80) && v6.allows("[::1]", 80) && !v6.allows("::1", 81));
        assert_eq!(v6.to_string(), "[::1]:80");
        assert!(HostPort::parse("LocalHost:8080")
            .unwrap()
            .allows("localhost", 8080));
        assert!(HostPort::parse("127.0.0.1").is_err());
        assert!(HostPort::parse(":80").is_err());
        assert!(HostPort::parse("http://x:80").is_err());
    }

    #[test]
    fn limits_are_bounded() {
        let v = PluginKind::Validator;
        assert_eq!(Limits::parse(v, None, None).unwrap(), Limits::default());
        assert_eq!(Limits::parse(v, Some("2s"), None).unwrap_err().0, "timeout");
        assert!(Limits::parse(PluginKind::HealthCheck, Some("2s"), None).is_ok());
        assert_eq!(
            Limits::parse(v, None, Some("1GiB")).unwrap_err().0,
            "memory"
        );
        assert_eq!(Limits::parse(v, Some("0s"), None).unwrap_err().0, "timeout");
    }

    #[test]
    fn bindings_name_plugins_of_the_right_kind() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("v.wasm"), b"").unwrap();
        let config = dir.path().join("agent.toml");
        let plugin = |name: &str, kind| PluginFile {
            name: name.into(),
            path: "v.wasm".into(),
            kind,
            timeout: None,
            memory: None,
            capabilities: CapabilitiesFile::default(),
        };
        let validate = |plugin: &str| ValidateFile {
            prefix: "/app/".into(),
            plugin: plugin.into(),
            settings: BTreeMap::new(),
        };
        let ok = check_sections(
            Some(&config),
            vec![plugin("v", PluginKind::Validator)],
            vec![validate("v")],
            vec![],
        )
        .unwrap();
        assert_eq!(ok.plugins[0].path, dir.path().join("v.wasm"));
        let err = check_sections(
            Some(&config),
            vec![plugin("h", PluginKind::HealthCheck)],
            vec![validate("h")],
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("[[validate]] entry 1") && err.contains("health-check plugin"),
            "{err}"
        );
        let err = check_sections(Some(&config), vec![], vec![validate("nope")], vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no [[plugin]] entry defines"), "{err}");
        let mut missing = plugin("m", PluginKind::Validator);
        missing.path = "missing.wasm".into();
        let err = check_sections(Some(&config), vec![missing], vec![], vec![])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`path`") && err.contains("missing.wasm"),
            "{err}"
        );
    }
}
