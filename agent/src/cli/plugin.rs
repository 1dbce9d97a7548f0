//! `edgeconf plugin test|check`: run a plugin locally, outside any
//! cluster, with the same engine, limits and capability checks as an agent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use clap::{Args, Subcommand};

use super::output::Format;
use crate::config::{Capabilities, HostPort, Limits, PluginKind};
use crate::plugins::checks::Health;
use crate::plugins::{CallContext, KeyReader, Plugin, Runtime};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a validator on one value: exit 0 when accepted, 1 when refused.
    Test(TestArgs),
    /// Run a health check once: exit 0 passing, 1 warning, 2 critical,
    /// 3 when the plugin itself failed.
    Check(CheckArgs),
}

/// What both commands share: the component and what it is granted.
#[derive(Debug, Args)]
pub struct PluginArgs {
    /// The plugin component (.wasm).
    pub path: PathBuf,
    /// A setting the plugin reads, NAME=VALUE (repeatable).
    #[arg(long = "setting", value_name = "NAME=VALUE")]
    pub settings: Vec<String>,
    /// A key the plugin may read with read-key, KEY=VALUE (repeatable).
    #[arg(long = "kv", value_name = "KEY=VALUE")]
    pub kvs: Vec<String>,
    /// Allow tcp.connect to HOST:PORT (repeatable).
    #[arg(long = "allow-tcp", value_name = "HOST:PORT")]
    pub allow_tcp: Vec<String>,
    /// Allow http.get from HOST:PORT (repeatable).
    #[arg(long = "allow-http", value_name = "HOST:PORT")]
    pub allow_http: Vec<String>,
    /// Time limit per call, e.g. "100ms".
    #[arg(long)]
    pub timeout: Option<String>,
    /// Memory limit, e.g. "16MiB".
    #[arg(long)]
    pub memory: Option<String>,
}

/// `--key KEY` (the global flag, which elsewhere names a client key file)
/// is the key to validate.
#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub plugin: PluginArgs,
    /// The value to validate...
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    pub value: Option<String>,
    /// ...or read it from a file.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub plugin: PluginArgs,
    /// The check's arguments (after `--` if they start with a dash).
    #[arg(long = "args", num_args = 0.., allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub async fn run(
    format: Format,
    command: PluginCommand,
    key: Option<String>,
) -> anyhow::Result<()> {
    match command {
        PluginCommand::Test(args) => {
            let key = key.ok_or_else(|| {
                anyhow!("plugin test needs --key KEY: the key the value is written to")
            })?;
            test(format, args, key).await
        }
        PluginCommand::Check(args) => check(format, args).await,
    }
}

/// Loads the plugin as `kind` and builds the context of its calls.
fn load(args: &PluginArgs, kind: PluginKind) -> anyhow::Result<(Plugin, CallContext)> {
    let limits = Limits::parse(kind, args.timeout.as_deref(), args.memory.as_deref())
        .map_err(|(field, problem)| anyhow!("--{field} {problem}"))?;
    let pairs = |flag: &str, list: &[String]| -> anyhow::Result<BTreeMap<String, String>> {
        list.iter()
            .map(|pair| {
                pair.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| anyhow!("--{flag} {pair:?}: expected NAME=VALUE"))
            })
            .collect()
    };
    let addresses = |flag: &str, list: &[String]| -> anyhow::Result<Vec<HostPort>> {
        list.iter()
            .map(|a| HostPort::parse(a).map_err(|p| anyhow!("--{flag}: {p}")))
            .collect()
    };
    let kvs = pairs("kv", &args.kvs)?;
    let grants = Capabilities {
        log: true,
        read_keys: kvs.keys().map(|k| k.clone().into_bytes()).collect(),
        tcp: addresses("allow-tcp", &args.allow_tcp)?,
        http: addresses("allow-http", &args.allow_http)?,
    };
    let bytes = std::fs::read(&args.path)
        .with_context(|| format!("cannot read plugin {}", args.path.display()))?;
    let name = args
        .path
        .file_stem()
        .map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
    let runtime = Runtime::new(None)?;
    let plugin = Plugin::load(&runtime, &name, &args.path, &bytes, kind, limits, grants)?;
    let keys: BTreeMap<String, Vec<u8>> =
        kvs.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    let context = CallContext {
        settings: Arc::new(pairs("setting", &args.settings)?),
        keys: Some(Arc::new(keys) as Arc<dyn KeyReader>),
    };
    Ok((plugin, context))
}

async fn test(format: Format, args: TestArgs, key: String) -> anyhow::Result<()> {
    let value = match (&args.value, &args.file) {
        (Some(value), _) => value.clone().into_bytes(),
        (None, Some(file)) => {
            std::fs::read(file).with_context(|| format!("cannot read --file {}", file.display()))?
        }
        (None, None) => anyhow::bail!("give the value to test with --value or --file"),
    };
    let plugin_args = args.plugin;
    let validated = key.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let (plugin, context) = load(&plugin_args, PluginKind::Validator)?;
        let verdict = plugin.validate(&context, &validated, &value);
        Ok::<_, anyhow::Error>((plugin.name.to_string(), verdict))
    })
    .await??;
    let (name, verdict) = outcome;
    let verdict = verdict.map_err(|err| anyhow!("plugin {name} {err}"))?;
    if let Format::Json = format {
        let json = match &verdict {
            Ok(()) => serde_json::json!({ "key": key, "accepted": true }),
            Err(message) => {
                serde_json::json!({ "key": key, "accepted": false, "message": message })
            }
        };
        println!("{json}");
        if verdict.is_err() {
            std::process::exit(1);
        }
        return Ok(());
    }
    match verdict {
        Ok(()) => {
            println!("accepted: {key}");
            Ok(())
        }
        Err(message) => Err(anyhow!("rejected by plugin {name}: {message}")),
    }
}

async fn check(format: Format, args: CheckArgs) -> anyhow::Result<()> {
    let outcome = tokio::task::spawn_blocking(move || {
        let (plugin, context) = load(&args.plugin, PluginKind::HealthCheck)?;
        let result = plugin.check(&context, &args.args);
        Ok::<_, anyhow::Error>((plugin.name.to_string(), result))
    })
    .await??;
    let (name, result) = outcome;
    let (health, output, code) = match result {
        Ok(result) => {
            let health = Health::from(result.status);
            let code = match health {
                Health::Passing => 0,
                Health::Warning => 1,
                Health::Critical => 2,
            };
            (health.as_str(), result.output, code)
        }
        Err(err) => ("unknown", format!("plugin {name} {err}"), 3),
    };
    match format {
        Format::Json => println!(
            "{}",
            serde_json::json!({ "status": health, "output": output })
        ),
        _ => println!("{health}: {output}"),
    }
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}
