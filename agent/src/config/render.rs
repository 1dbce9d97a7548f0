//! `render_root` and the `[[render]]` entries: which keys become which
//! files. Checked here for shape and for where files may go; templates are
//! compiled by the renderer (`crate::render`).

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// One `[[render]]` entry as written in the TOML.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderFile {
    /// A name for logs and status; the destination path if not given.
    pub name: Option<String>,
    /// Render one key...
    pub key: Option<String>,
    /// ...or every key under a prefix (needs a template).
    pub prefix: Option<String>,
    /// ...or the instances of a service across the fleet (needs a
    /// template; re-rendered when one becomes healthy or unhealthy).
    pub service: Option<String>,
    /// A minijinja template file, relative to the TOML file's directory.
    /// Without one, the key's value is written as it is.
    pub template: Option<PathBuf>,
    /// Where to write, relative to `render_root` (or absolute inside it).
    pub dest: PathBuf,
    /// Octal permission bits, e.g. "0640".
    pub mode: Option<String>,
    /// User and group (names or numeric ids) to own the file.
    pub owner: Option<String>,
    pub group: Option<String>,
    /// A command run with `sh -c` after the file changes.
    pub reload: Option<String>,
    /// A command that validates the new content before it replaces the
    /// file: `{}` is replaced by the path of a temporary file holding it;
    /// a non-zero exit keeps the last good file (like confd's check_cmd).
    pub check: Option<String>,
    /// How long the reload command may run, e.g. "10s".
    pub reload_timeout: Option<String>,
    /// How long to gather changes before rendering, e.g. "200ms".
    pub debounce: Option<String>,
    pub on_drift: Option<OnDrift>,
    pub atomic: Option<AtomicMode>,
    /// For a `key`: whether a missing key is an error (the last file
    /// stays) rather than an empty value. Default true.
    pub required: Option<bool>,
}

/// What to do when someone changes or deletes a rendered file by hand.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDrift {
    #[default]
    Restore,
    Report,
}

/// How a file is replaced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AtomicMode {
    /// A temporary file in the same directory renamed over the old one:
    /// readers see the old file or the new one, never a mix.
    #[default]
    Rename,
    /// Overwrite the same inode (bind-mounted files): readers that open the
    /// file afresh see a whole file; one reading while it is written may
    /// see old and new bytes mixed.
    InPlace,
}

/// What is rendered: one key, every key under a prefix, or a service's
/// instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderSource {
    Key(Vec<u8>),
    Prefix(Vec<u8>),
    Service(String),
}

/// A checked `[[render]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderEntry {
    pub name: String,
    /// The canonical `render_root`, checked again at every write.
    pub root: PathBuf,
    pub source: RenderSource,
    pub template: Option<PathBuf>,
    /// Absolute, inside `render_root`.
    pub dest: PathBuf,
    /// The file's permission bits (see [`RenderEntry::for_content`]).
    pub mode: u32,
    /// `mode` was set in the config (else it is the 0644 default).
    pub mode_set: bool,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub reload: Option<String>,
    pub check: Option<String>,
    pub reload_timeout: Duration,
    pub debounce: Duration,
    pub on_drift: OnDrift,
    pub atomic: AtomicMode,
    pub required: bool,
}

/// The mode of a file holding a decrypted secret when its entry sets none.
pub const SECRET_MODE: u32 = 0o600;

impl RenderEntry {
    /// The entry as it applies to a file whose content does (or does not)
    /// hold a decrypted secret: without a `mode` of its own, such a file is
    /// [`SECRET_MODE`] rather than 0644.
    pub fn for_content(&self, holds_secret: bool) -> std::borrow::Cow<'_, RenderEntry> {
        if holds_secret && !self.mode_set {
            std::borrow::Cow::Owned(RenderEntry {
                mode: SECRET_MODE,
                ..self.clone()
            })
        } else {
            std::borrow::Cow::Borrowed(self)
        }
    }
}

const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);
const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest debounce or reload timeout an entry may ask for.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Checks the entries of `config_path` (None: no file) against `root`.
pub fn check_entries(
    config_path: Option<&Path>,
    root: Option<&Path>,
    entries: Vec<RenderFile>,
) -> Result<(Option<PathBuf>, Vec<RenderEntry>), ConfigError> {
    let file = config_path.map_or("command line".to_string(), |p| p.display().to_string());
    let base = config_path
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let configured_root = root.map(|root| base.join(root));
    let root = match root {
        None if entries.is_empty() => return Ok((None, Vec::new())),
        None => {
            return Err(ConfigError::Invalid {
                location: file,
                field: "render_root",
                problem: "is not set: [[render]] entries need a directory their files must stay in (e.g. render_root = \"/etc/myapp\")".into(),
            })
        }
        Some(root) => {
            let root = base.join(root);
            std::fs::canonicalize(&root).map_err(|err| ConfigError::Invalid {
                location: file.clone(),
                field: "render_root",
                problem: format!("{} cannot be used: {err} (create the directory first)", root.display()),
            })?
        }
    };
    let mut checked: Vec<RenderEntry> = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let location = format!(
            "{file}: [[render]] entry {} (dest {:?})",
            index + 1,
            entry.dest
        );
        let invalid = |field: &'static str, problem: String| ConfigError::Invalid {
            location: location.clone(),
            field,
            problem,
        };
        let mut entry = entry;
        // An absolute dest under the root as written (which may be a
        // symlink to the canonical one) is taken relative to it.
        if let Some(rest) = configured_root
            .as_deref()
            .and_then(|configured| entry.dest.strip_prefix(configured).ok())
        {
            entry.dest = rest.to_path_buf();
        }
        let entry = check_entry(&base, &root, entry, &invalid)?;
        let clobbers = |path: &Path| std::fs::canonicalize(path).is_ok_and(|p| p == entry.dest);
        if config_path.is_some_and(clobbers) || entry.template.as_deref().is_some_and(clobbers) {
            return Err(invalid(
                "dest",
                "is the config file or a template itself: the agent would overwrite its own input"
                    .into(),
            ));
        }
        if let Some(other) = checked.iter().find(|e| e.dest == entry.dest) {
            return Err(invalid(
                "dest",
                format!(
                    "{} is also the dest of entry {:?}: one file, one entry",
                    entry.dest.display(),
                    other.name
                ),
            ));
        }
        checked.push(entry);
    }
    Ok((Some(root), checked))
}

fn check_entry(
    base: &Path,
    root: &Path,
    entry: RenderFile,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<RenderEntry, ConfigError> {
    let source = match (entry.key, entry.prefix) {
        (None, None) if entry.service.is_some() => {
            if entry.template.is_none() {
                return Err(invalid(
                    "service",
                    "needs a template: write how each instance appears in the file".into(),
                ));
            }
            RenderSource::Service(entry.service.unwrap_or_default())
        }
        (Some(_), _) | (_, Some(_)) if entry.service.is_some() => {
            return Err(invalid(
                "service",
                "is set together with `key` or `prefix`: choose one source".into(),
            ))
        }
        (Some(key), None) if !key.is_empty() => RenderSource::Key(key.into_bytes()),
        (None, Some(prefix)) => {
            if entry.template.is_none() {
                return Err(invalid(
                    "prefix",
                    "needs a template: many keys do not make one file by themselves".into(),
                ));
            }
            RenderSource::Prefix(prefix.into_bytes())
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "key",
                "and `prefix` are both set: choose one".into(),
            ))
        }
        _ => {
            return Err(invalid(
                "key",
                "is missing: set `key` (one key), `prefix` (a template over many) or `service` (its instances)".into(),
            ))
        }
    };
    let dest = confine(root, &entry.dest).map_err(|problem| invalid("dest", problem))?;
    let mode = match &entry.mode {
        None => 0o644,
        Some(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o7777)
            .ok_or_else(|| {
                invalid(
                    "mode",
                    format!("is {text:?}: expected octal permission bits such as \"0640\""),
                )
            })?,
    };
    let owner = match &entry.owner {
        None => None,
        Some(name) => Some(lookup_id("/etc/passwd", name).ok_or_else(|| {
            invalid(
                "owner",
                format!("{name:?} is not a user on this host (or a numeric uid)"),
            )
        })?),
    };
    let group = match &entry.group {
        None => None,
        Some(name) => Some(lookup_id("/etc/group", name).ok_or_else(|| {
            invalid(
                "group",
                format!("{name:?} is not a group on this host (or a numeric gid)"),
            )
        })?),
    };
    let duration = |field: &'static str, text: &Option<String>, default: Duration| match text {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text).map_err(|err| {
            invalid(
                field,
                format!("is {text:?}: {err} (expected e.g. \"250ms\" or \"10s\")"),
            )
        }),
    };
    let reload_timeout = duration(
        "reload_timeout",
        &entry.reload_timeout,
        DEFAULT_RELOAD_TIMEOUT,
    )?;
    if reload_timeout.is_zero() || reload_timeout > MAX_WAIT {
        return Err(invalid(
            "reload_timeout",
            format!(
                "must be above 0 and at most {}",
                humantime::format_duration(MAX_WAIT)
            ),
        ));
    }
    let debounce = duration("debounce", &entry.debounce, DEFAULT_DEBOUNCE)?;
    if debounce > MAX_WAIT {
        return Err(invalid(
            "debounce",
            format!("must be at most {}", humantime::format_duration(MAX_WAIT)),
        ));
    }
    if entry.reload.as_deref().is_some_and(|r| r.trim().is_empty()) {
        return Err(invalid(
            "reload",
            "is empty: give a command, or leave it out".into(),
        ));
    }
    if let Some(check) = &entry.check {
        if !check.contains("{}") {
            return Err(invalid(
                "check",
                format!("is {check:?}: put {{}} where the new file's path goes, e.g. \"nginx -t -c {{}}\""),
            ));
        }
    }
    let template = entry.template.map(|t| base.join(t));
    if let Some(template) = &template {
        if !template.is_file() {
            return Err(invalid(
                "template",
                format!("{} is not a readable file", template.display()),
            ));
        }
    }
    Ok(RenderEntry {
        name: entry.name.unwrap_or_else(|| dest.display().to_string()),
        root: root.to_path_buf(),
        source,
        template,
        dest,
        mode,
        mode_set: entry.mode.is_some(),
        owner,
        group,
        reload: entry.reload,
        check: entry.check,
        reload_timeout,
        debounce,
        on_drift: entry.on_drift.unwrap_or_default(),
        atomic: entry.atomic.unwrap_or_default(),
        required: entry.required.unwrap_or(true),
    })
}

/// `dest` as an absolute path inside `root` (already canonical), or why not:
/// no `..`, and no symlink on the way that leads out.
pub fn confine(root: &Path, dest: &Path) -> Result<PathBuf, String> {
    if dest.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{} contains \"..\": give a path inside render_root without it",
            dest.display()
        ));
    }
    let joined = root.join(dest);
    if !joined.starts_with(root) || joined == root {
        return Err(format!(
            "{} is outside render_root {}",
            dest.display(),
            root.display()
        ));
    }
    if joined.file_name().is_none() {
        return Err(format!("{} names no file", dest.display()));
    }
    // Walk the path below the root: each part that exists (a symlink
    // counts, even a dangling one) must be a directory resolving inside
    // the root, and the last a file or nothing yet.
    let relative = joined.strip_prefix(root).expect("checked above");
    let parts: Vec<_> = relative.components().collect();
    let mut at = root.to_path_buf();
    for (index, part) in parts.iter().enumerate() {
        at.push(part);
        let Ok(meta) = at.symlink_metadata() else {
            break; // Not there yet: created later inside a checked parent.
        };
        let last = index + 1 == parts.len();
        if meta.file_type().is_symlink() {
            if last {
                return Err(format!(
                    "{} is a symlink: the agent writes regular files only",
                    joined.display()
                ));
            }
            let resolved = std::fs::canonicalize(&at).map_err(|err| {
                format!(
                    "{} is a symlink that does not resolve ({err})",
                    at.display()
                )
            })?;
            if !resolved.starts_with(root) {
                return Err(format!(
                    "{} leads outside render_root {} through a symlink ({} is {})",
                    dest.display(),
                    root.display(),
                    at.display(),
                    resolved.display()
                ));
            }
        } else if last && meta.is_dir() {
            return Err(format!(
                "{} is a directory: give a file path",
                joined.display()
            ));
        } else if !last && !meta.is_dir() {
            return Err(format!(
                "{} is a file, so {} cannot be under it",
                at.display(),
                dest.display()
            ));
        }
    }
    Ok(joined)
}

/// A numeric id, or the id of `name` in an `/etc/passwd`-style file.
fn lookup_id(table: &str, name: &str) -> Option<u32> {
    if let Ok(id) = name.parse() {
        return Some(id);
    }
    let text = std::fs::read_to_string(table).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then(|| fields.nth(1)?.parse().ok())?
    })
}
