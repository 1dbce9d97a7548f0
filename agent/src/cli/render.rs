//! `edgeconf render --dry-run --config FILE`: what the agent would write
//! for the entries of a config, as diffs against the files on disk.
//!
//! Values come through the API, which checked them against the serving
//! agent's trust policy before answering; secrets are decrypted here with
//! the config's `[secrets]` identities.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use etcd_client::GetOptions;

use super::Client;
use crate::config::{Config, ConfigFile, RenderSource};
use crate::render::{files, produce_with, Plan};
use crate::signing::Identities;

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Only show what would change (the only mode: rendering is the
    /// agent's job).
    #[arg(long, required = true)]
    pub dry_run: bool,
    /// The agent's TOML file, whose [[render]] entries to render.
    #[arg(long, short = 'c')]
    pub config: PathBuf,
}

const AGE_ARMOR: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";

pub async fn render(client: &Client, args: RenderArgs) -> anyhow::Result<()> {
    let config = Config::load(Some(&args.config), ConfigFile::default())?;
    let plan = Plan::load(&config).map_err(anyhow::Error::msg)?;
    if plan.entries.is_empty() {
        println!("{} has no [[render]] entries", args.config.display());
        return Ok(());
    }
    let identities = Identities::load(&config.identity_files)?;
    let mut etcd = client.etcd().await?;
    let services = if plan.entries.iter().any(|c| c.uses_services()) {
        fleet_services(client).await?
    } else {
        Vec::new()
    };
    let mut failed = Vec::new();
    for compiled in &plan.entries {
        let entry = &compiled.entry;
        let source = match &entry.source {
            RenderSource::Key(key) => Some((key.clone(), None)),
            RenderSource::Prefix(prefix) => {
                Some((prefix.clone(), Some(GetOptions::new().with_prefix())))
            }
            RenderSource::Service(_) => None,
        };
        let dest = entry.dest.display().to_string();
        let kvs = match source {
            None => Vec::new(),
            Some((key, options)) => match client.request(etcd.get(key, options)).await {
                Ok(response) => response.kvs().to_vec(),
                Err(err) => {
                    println!("{dest}: would keep the current file: {err}");
                    failed.push(dest);
                    continue;
                }
            },
        };
        let plain: Result<Vec<_>, String> = kvs
            .iter()
            .map(|kv| {
                let value = if kv.value().starts_with(AGE_ARMOR) {
                    identities
                        .decrypt(kv.value())
                        .map_err(|err| format!("{}: {err}", String::from_utf8_lossy(kv.key())))?
                } else {
                    kv.value().to_vec()
                };
                Ok((kv.key().to_vec(), value))
            })
            .collect();
        let plain = match plain {
            Ok(plain) => plain,
            Err(err) => {
                println!("{dest}: would keep the current file: {err}");
                failed.push(dest);
                continue;
            }
        };
        // A file showing a decrypted secret is 0600 unless its entry says.
        let applied = entry.for_content(kvs.iter().any(|kv| kv.value().starts_with(AGE_ARMOR)));
        let entry = &*applied;
        match produce_with(compiled, &plain, &services) {
            Err(err) => {
                println!("{dest}: would keep the current file: {err}");
                failed.push(dest);
            }
            Ok(content) => {
                let current =
                    files::read(&entry.dest).map_err(|err| anyhow!("cannot read {dest}: {err}"))?;
                let same = current.as_deref() == Some(content.as_slice());
                if same && files::has_attributes(&entry.dest, entry) {
                    println!("{dest}: up to date");
                    continue;
                }
                if same {
                    println!(
                        "{dest}: would set mode {:o} and owner/group (content up to date)",
                        entry.mode
                    );
                    continue;
                }
                let old = current
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                let new = String::from_utf8_lossy(&content);
                println!("{dest}: would write {} bytes", content.len());
                let diff = similar::TextDiff::from_lines(old.as_ref(), new.as_ref());
                print!(
                    "{}",
                    diff.unified_diff()
                        .header(&format!("{dest} (on disk)"), &format!("{dest} (rendered)"))
                );
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} entries would not render: {}",
            failed.len(),
            plan.entries.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// The fleet's service instances, as the endpoint's agent sees them.
async fn fleet_services(client: &Client) -> anyhow::Result<Vec<crate::services::Instance>> {
    let mut edgeconf = client.edgeconf().await?;
    let request = crate::api::pb::ServicesRequest::default();
    let response = client.request(edgeconf.services(request)).await?;
    Ok(response
        .into_inner()
        .instances
        .into_iter()
        .map(|i| crate::services::Instance {
            node: i.node,
            node_state: i.node_state,
            id: i.id,
            name: i.name,
            address: i.address,
            port: u16::try_from(i.port).unwrap_or_default(),
            tags: i.tags,
            health: i.health,
            output: i.output,
            healthy: i.healthy,
        })
        .collect())
}
