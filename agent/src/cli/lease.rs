//! `edgeconf lease`: grant, revoke, keep-alive, timetolive, list.

use anyhow::bail;
use clap::Subcommand;
use etcd_client::LeaseTimeToLiveOptions;
use serde_json::json;

use super::kv::parse_lease_id;
use super::output::{header_json, lossy, print_json, Format};
use super::Client;

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease with a TTL in seconds.
    Grant { ttl: i64 },
    /// Revoke a lease, deleting its keys.
    Revoke { id: String },
    /// Keep a lease alive until interrupted.
    KeepAlive {
        id: String,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Show a lease's remaining time.
    Timetolive {
        id: String,
        /// List the keys attached to the lease.
        #[arg(long)]
        keys: bool,
    },
    /// List all leases.
    List,
}

pub async fn run(client: &Client, format: Format, command: LeaseCommand) -> anyhow::Result<()> {
    let mut etcd = client.etcd().await?;
    match command {
        LeaseCommand::Grant { ttl } => {
            let resp = client.request(etcd.lease_grant(ttl, None)).await?;
            match format {
                Format::Json => print_json(&json!({
                    "header": header_json(resp.header()), "ID": resp.id(), "TTL": resp.ttl(),
                })),
                _ => println!("lease {:x} granted with TTL({}s)", resp.id(), resp.ttl()),
            }
        }
        LeaseCommand::Revoke { id } => {
            let id = parse_lease_id(&id)?;
            let resp = client.request(etcd.lease_revoke(id)).await?;
            match format {
                Format::Json => print_json(&json!({ "header": header_json(resp.header()) })),
                _ => println!("lease {id:x} revoked"),
            }
        }
        LeaseCommand::KeepAlive { id, once } => {
            let id = parse_lease_id(&id)?;
            let (mut keeper, mut stream) = client.request(etcd.lease_keep_alive(id)).await?;
            loop {
                client.request(keeper.keep_alive()).await?;
                let Some(resp) = client.request(stream.message()).await? else {
                    bail!("the agent closed the keep-alive stream");
                };
                if resp.ttl() <= 0 {
                    bail!("lease {id:x} expired or revoked");
                }
                match format {
                    Format::Json => print_json(&json!({
                        "header": header_json(resp.header()), "ID": resp.id(), "TTL": resp.ttl(),
                    })),
                    _ => println!("lease {:x} keepalived with TTL({})", resp.id(), resp.ttl()),
                }
                if once {
                    return Ok(());
                }
                // Renew at a third of the TTL, as etcd clients do.
                let pause = (resp.ttl() as u64 * 1000 / 3).max(500);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
        }
        LeaseCommand::Timetolive { id, keys } => {
            let id = parse_lease_id(&id)?;
            let options = keys.then(|| LeaseTimeToLiveOptions::new().with_keys());
            let resp = client.request(etcd.lease_time_to_live(id, options)).await?;
            let attached: Vec<String> = resp.keys().iter().map(|k| lossy(k)).collect();
            match format {
                Format::Json => print_json(&json!({
                    "header": header_json(resp.header()), "ID": resp.id(), "TTL": resp.ttl(),
                    "granted-ttl": resp.granted_ttl(), "keys": attached,
                })),
                _ if resp.ttl() < 0 => println!("lease {id:x} already expired"),
                _ if keys => println!(
                    "lease {id:x} granted with TTL({}s), remaining({}s), attached keys({:?})",
                    resp.granted_ttl(),
                    resp.ttl(),
                    attached
                ),
                _ => println!(
                    "lease {id:x} granted with TTL({}s), remaining({}s)",
                    resp.granted_ttl(),
                    resp.ttl()
                ),
            }
        }
        LeaseCommand::List => {
            let resp = client.request(etcd.leases()).await?;
            let ids: Vec<i64> = resp.leases().iter().map(|l| l.id()).collect();
            match format {
                Format::Json => print_json(&json!({
                    "header": header_json(resp.header()), "leases": ids,
                })),
                _ => {
                    println!("found {} leases", ids.len());
                    for id in ids {
                        println!("{id:x}");
                    }
                }
            }
        }
    }
    Ok(())
}
