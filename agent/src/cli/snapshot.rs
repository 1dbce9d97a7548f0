//! `edgeconf snapshot save|status|restore`: backup images, as etcdctl's.
//!
//! An image is the store's consistent copy followed by its SHA-256 (what
//! Maintenance.Snapshot streams). `save` checks the digest before it keeps
//! the file; `status` and `restore` check it before they read anything.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::output::{format_size, print_json, print_table, Format};
use super::Client;
use crate::store::image::verify_image;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save an image of an endpoint's store to FILE.
    Save { file: PathBuf },
    /// Check FILE and show what it holds.
    Status { file: PathBuf },
    /// Build the data dir of a member of a new cluster from FILE.
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    file: PathBuf,
    /// The new member's data dir (created if need be; it must hold no
    /// store or raft log yet).
    #[arg(long)]
    data_dir: PathBuf,
    /// The new member's name (one of --initial-cluster).
    #[arg(long)]
    name: String,
    /// NAME=quic://HOST:PORT,... of the new cluster's members.
    #[arg(long)]
    initial_cluster: String,
}

pub async fn run(client: &Client, format: Format, command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Save { file } => save(client, format, &file).await,
        SnapshotCommand::Status { file } => status(format, &file),
        SnapshotCommand::Restore(args) => restore(format, &args),
    }
}

async fn save(client: &Client, format: Format, file: &Path) -> anyhow::Result<()> {
    if client.endpoints.len() != 1 {
        bail!("snapshot save takes one endpoint (--endpoints HOST:PORT): each member's store is its own");
    }
    let mut partial = file.as_os_str().to_owned();
    partial.push(".part");
    let partial = PathBuf::from(partial);
    // The image holds every key and the auth state: only its owner reads it.
    let mut out = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?
    };
    let received = match receive(client, format, &mut out, &partial).await {
        Ok(received) => received,
        Err(err) => {
            let _ = std::fs::remove_file(&partial);
            return Err(err);
        }
    };
    out.sync_all()
        .and_then(|()| std::fs::rename(&partial, file))
        .with_context(|| format!("cannot write {}", file.display()))?;
    match format {
        Format::Json => print_json(&json!({"file": file, "bytes": received})),
        _ => println!(
            "Snapshot saved at {} ({})",
            file.display(),
            format_size(received)
        ),
    }
    Ok(())
}

/// Streams the image into `out`, checking its digest; returns its size.
async fn receive(
    client: &Client,
    format: Format,
    out: &mut std::fs::File,
    partial: &Path,
) -> anyhow::Result<u64> {
    let mut etcd = client.etcd().await?;
    let mut stream = client.request(etcd.snapshot()).await?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if !matches!(format, Format::Simple) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut received = 0u64;
    let mut hasher = Sha256::new();
    let mut tail: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.message().await? {
        let blob = chunk.blob();
        received += blob.len() as u64;
        bar.set_length(received + chunk.remaining_bytes());
        bar.set_position(received);
        out.write_all(blob)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        // Hash all but the last 32 bytes seen so far: the digest.
        tail.extend_from_slice(blob);
        if tail.len() > 32 {
            let cut = tail.len() - 32;
            hasher.update(&tail[..cut]);
            tail.drain(..cut);
        }
    }
    bar.finish_and_clear();
    if tail.len() != 32 || hasher.finalize().as_slice() != tail.as_slice() {
        bail!("the image received does not match its SHA-256 (the connection broke?); nothing was saved");
    }
    Ok(received)
}

fn status(format: Format, file: &Path) -> anyhow::Result<()> {
    let summary = verify_image(file)?;
    let bytes = std::fs::metadata(file)?.len();
    match format {
        Format::Json => print_json(&json!({
            "revision": summary.revision,
            "compact_revision": summary.compact_revision,
            "totalKey": summary.keys,
            "kvRows": summary.kv_rows,
            "totalSize": bytes,
        })),
        Format::Table => print_table(
            &["REVISION", "COMPACT REVISION", "TOTAL KEYS", "TOTAL SIZE"],
            [vec![
                summary.revision.to_string(),
                summary.compact_revision.to_string(),
                summary.keys.to_string(),
                format_size(bytes),
            ]],
        ),
        Format::Simple => println!(
            "{}, {}, {}, {}",
            summary.revision,
            summary.compact_revision,
            summary.keys,
            format_size(bytes)
        ),
    }
    Ok(())
}

fn restore(format: Format, args: &RestoreArgs) -> anyhow::Result<()> {
    let members: Vec<(&str, &str)> = args
        .initial_cluster
        .split(',')
        .filter_map(|entry| entry.trim().split_once('='))
        .collect();
    if members.is_empty() || members.iter().any(|(_, url)| !url.starts_with("quic://")) {
        bail!(
            "--initial-cluster {:?}: expected NAME=quic://HOST:PORT,...",
            args.initial_cluster
        );
    }
    if !members.iter().any(|(name, _)| *name == args.name) {
        bail!("--name {:?} is not one of --initial-cluster", args.name);
    }
    let dir = &args.data_dir;
    // A node key made beforehand may be there; a store or a raft log not.
    if let Some(found) = ["store.redb", "raft.redb", "raft-wal"]
        .iter()
        .find(|name| dir.join(name).exists())
    {
        bail!(
            "--data-dir {} already holds a member's state ({found}): restore into a new directory (nothing was changed)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::private_files::dir(dir)
        .with_context(|| format!("cannot make {} private", dir.display()))?;
    // Built under another name and renamed at the end: a restore cut
    // short leaves no store a member would start from.
    let building = dir.join("store.redb.restoring");
    let _ = std::fs::remove_file(&building);
    let store = Store::open(&building)?;
    let summary = store.restore_image(&args.file)?;
    let alarms = crate::upkeep::alarms::active(&store)?;
    drop(store);
    std::fs::rename(&building, dir.join("store.redb"))
        .with_context(|| format!("cannot write {}", dir.join("store.redb").display()))?;
    for alarm in &alarms {
        eprintln!(
            "warning: the image holds a {} alarm of member {:x} ({}): once the new cluster runs, disarm it (`etcdctl alarm disarm`) if it no longer holds",
            alarm.alarm.name(),
            alarm.member,
            alarm.reason
        );
    }
    match format {
        Format::Json => print_json(&json!({
            "data_dir": dir,
            "revision": summary.revision,
            "keys": summary.keys,
        })),
        _ => println!(
            "restored revision {} ({} keys) into {}; start the member with --name {} --initial-cluster {} --initial-cluster-state new",
            summary.revision,
            summary.keys,
            dir.display(),
            args.name,
            args.initial_cluster
        ),
    }
    Ok(())
}
