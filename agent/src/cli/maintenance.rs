//! etcdctl's maintenance commands: `endpoint health|status|hashkv`,
//! `defrag`, `move-leader`, `alarm list|disarm`.

use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
use serde_json::json;

use super::output::{print_json, print_table, Format};
use super::Client;

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Whether each endpoint commits a read through the cluster and has no
    /// alarm (exit 1 if any does not).
    Health,
    /// One line per endpoint (as `edgeconf status`).
    Status,
    /// Each endpoint's checksum of the history up to --rev (etcd's HashKV):
    /// members at one revision and compaction revision agree unless one
    /// is corrupt.
    Hashkv {
        /// The revision to hash up to (0: the current one).
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlarmCommand {
    /// The alarms in force (NOSPACE, CORRUPT), by member.
    List,
    /// Disarm every alarm in force (after compacting and defragmenting, for
    /// NOSPACE).
    Disarm,
}

pub async fn endpoint(
    client: &Client,
    format: Format,
    command: EndpointCommand,
) -> anyhow::Result<()> {
    match command {
        EndpointCommand::Status => super::status::status(client, format).await,
        EndpointCommand::Health => health(client, format).await,
        EndpointCommand::Hashkv { rev } => hashkv(client, format, rev).await,
    }
}

async fn health(client: &Client, format: Format) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for endpoint in &client.endpoints {
        let one = client.for_endpoint(endpoint);
        let started = Instant::now();
        let verdict = async {
            let mut etcd = one.etcd_at(std::slice::from_ref(endpoint)).await?;
            // As etcdctl: a linearizable read goes through the leader.
            // (A caller who may not read the key still got an answer.)
            if let Err(err) = one.request(etcd.get("health", None)).await {
                if !format!("{err:#}").contains("permission denied") {
                    return Err(err);
                }
            }
            let took = started.elapsed();
            // Listing alarms takes an admin; others see none.
            let active: Vec<String> = one
                .request(etcd.alarm(AlarmAction::Get, AlarmType::None, None))
                .await
                .map(|alarms| {
                    alarms
                        .alarms()
                        .iter()
                        .map(|a| format!("{:?}", a.alarm()).to_uppercase())
                        .collect()
                })
                .unwrap_or_default();
            anyhow::Ok((took, active))
        }
        .await;
        rows.push(match verdict {
            Ok((took, active)) if active.is_empty() => {
                (endpoint.clone(), true, took, String::new())
            }
            Ok((took, active)) => (
                endpoint.clone(),
                false,
                took,
                format!("Active Alarm(s): {}", active.join(", ")),
            ),
            Err(err) => (
                endpoint.clone(),
                false,
                started.elapsed(),
                format!("{err:#}"),
            ),
        });
    }
    match format {
        Format::Json => print_json(&json!(rows
            .iter()
            .map(|(endpoint, healthy, took, error)| json!({
                "endpoint": endpoint,
                "health": healthy,
                "took": format!("{took:?}"),
                "error": (!error.is_empty()).then_some(error),
            }))
            .collect::<Vec<_>>())),
        _ => {
            for (endpoint, healthy, took, error) in &rows {
                if *healthy {
                    println!(
                        "{endpoint} is healthy: successfully committed proposal: took = {took:?}"
                    );
                } else {
                    eprintln!("{endpoint} is unhealthy: failed to commit proposal: {error}");
                }
            }
        }
    }
    if rows.iter().any(|(_, healthy, _, _)| !healthy) {
        bail!("unhealthy cluster");
    }
    Ok(())
}

async fn hashkv(client: &Client, format: Format, revision: i64) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for endpoint in &client.endpoints {
        let one = client.for_endpoint(endpoint);
        let mut etcd = one.etcd_at(std::slice::from_ref(endpoint)).await?;
        let hashed = one
            .request(etcd.hash_kv(revision))
            .await
            .with_context(|| format!("{endpoint}: HashKV"))?;
        let at = hashed.header().map_or(0, |h| h.revision());
        rows.push((
            endpoint.clone(),
            hashed.hash(),
            hashed.compact_version(),
            at,
        ));
    }
    match format {
        Format::Json => print_json(&json!(rows
            .iter()
            .map(|(endpoint, hash, compact, at)| json!({
                "endpoint": endpoint,
                "hash": hash,
                "compact_revision": compact,
                "revision": at,
            }))
            .collect::<Vec<_>>())),
        Format::Table => print_table(
            &["ENDPOINT", "HASH", "COMPACT REVISION"],
            rows.iter()
                .map(|(endpoint, hash, compact, _)| {
                    vec![endpoint.clone(), hash.to_string(), compact.to_string()]
                })
                .collect::<Vec<_>>(),
        ),
        Format::Simple => {
            for (endpoint, hash, compact, _) in &rows {
                println!("{endpoint}, {hash}, {compact}");
            }
        }
    }
    Ok(())
}

/// Defragments each endpoint's store, one at a time.
pub async fn defrag(client: &Client, format: Format) -> anyhow::Result<()> {
    let mut failed = false;
    for endpoint in &client.endpoints {
        let one = client.for_endpoint(endpoint);
        let done = async {
            let mut etcd = one.etcd_at(std::slice::from_ref(endpoint)).await?;
            one.request(etcd.defragment()).await
        }
        .await;
        match (done, format) {
            (Ok(_), Format::Json) => {
                print_json(&json!({"endpoint": endpoint, "defragmented": true}))
            }
            (Ok(_), _) => println!("Finished defragmenting etcd member[{endpoint}]"),
            (Err(err), _) => {
                failed = true;
                eprintln!("Failed to defragment etcd member[{endpoint}] ({err:#})");
            }
        }
    }
    if failed {
        bail!("defragmentation failed on some endpoints");
    }
    Ok(())
}

/// Hands the leadership to member `target` (hex, as `member list` shows).
pub async fn move_leader(client: &Client, format: Format, target: &str) -> anyhow::Result<()> {
    let id = u64::from_str_radix(target.trim_start_matches("0x"), 16)
        .ok()
        .filter(|id| *id != 0)
        .with_context(|| {
            format!(
                "{target:?} is not a member id: expected the hex id `edgeconf member list` prints"
            )
        })?;
    let mut etcd = client.etcd().await?;
    let before = client.request(etcd.status()).await?.leader();
    client.request(etcd.move_leader(id)).await?;
    match format {
        Format::Json => {
            print_json(&json!({"from": format!("{before:x}"), "to": format!("{id:x}")}))
        }
        _ => println!("Leadership transferred from {before:x} to {id:x}"),
    }
    Ok(())
}

pub async fn alarm(client: &Client, format: Format, command: AlarmCommand) -> anyhow::Result<()> {
    let mut etcd = client.etcd().await?;
    let active = client
        .request(etcd.alarm(AlarmAction::Get, AlarmType::None, None))
        .await?;
    let listed: Vec<(u64, AlarmType)> = active
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect();
    if let AlarmCommand::Disarm = command {
        for (member, alarm) in &listed {
            let mut options = AlarmOptions::new();
            options.with_member(*member);
            client
                .request(etcd.alarm(AlarmAction::Deactivate, *alarm, Some(options)))
                .await?;
        }
    }
    match format {
        Format::Json => print_json(&json!(listed
            .iter()
            .map(|(member, alarm)| json!({
                "member_id": format!("{member:x}"),
                "alarm": format!("{alarm:?}").to_uppercase(),
            }))
            .collect::<Vec<_>>())),
        _ => {
            for (member, alarm) in &listed {
                println!(
                    "memberID:{member} alarm:{}",
                    format!("{alarm:?}").to_uppercase()
                );
            }
        }
    }
    Ok(())
}
