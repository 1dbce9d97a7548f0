//! `edgeconf lock` and `edgeconf elect`, as etcdctl's: both hold a lease
//! (kept alive while the command runs), take the lock or lead through the
//! agent's Lock and Election services, and let go on exit or Ctrl-C.

use anyhow::Context as _;
use clap::Args;
use etcd_client::{LockOptions, ResignOptions};

use super::output::lossy;
use super::Client;

/// The lease a lock or a candidacy is held on: it ends 60 s after this
/// process stops renewing it (a crash), at once when it exits cleanly.
const TTL: i64 = 60;

#[derive(Debug, Args)]
pub struct LockArgs {
    pub name: String,
    /// Run this while holding the lock, then release it (exit with its
    /// status); without one, hold it until Ctrl-C.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ElectArgs {
    pub name: String,
    /// The value to lead with (not with --listen).
    #[arg(required_unless_present = "listen")]
    pub value: Option<String>,
    /// Print each leader's value as it changes, without campaigning.
    #[arg(short, long)]
    pub listen: bool,
}

/// Grants a lease and keeps it alive in the background; the task ends
/// when the lease can no longer be renewed (the lock or lead is lost).
async fn held_lease(client: &Client) -> anyhow::Result<(i64, tokio::task::JoinHandle<()>)> {
    let mut etcd = client.etcd().await?;
    let lease = client.request(etcd.lease_grant(TTL, None)).await?.id();
    let (mut keeper, mut responses) = client.request(etcd.lease_keep_alive(lease)).await?;
    let renew = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs((TTL / 3) as u64)).await;
            let renewed = keeper.keep_alive().await.is_ok()
                && matches!(responses.message().await, Ok(Some(r)) if r.ttl() > 0);
            if !renewed {
                return;
            }
        }
    });
    Ok((lease, renew))
}

/// Waits for Ctrl-C; fails if the lease ends first.
async fn hold(renew: &mut tokio::task::JoinHandle<()>, what: &str) -> anyhow::Result<()> {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = renew => anyhow::bail!("the lease behind the {what} could not be renewed: it is lost"),
    }
}

async fn let_go(client: &Client, lease: i64, renew: tokio::task::JoinHandle<()>) {
    renew.abort();
    if let Ok(mut etcd) = client.etcd().await {
        let _ = client.request(etcd.lease_revoke(lease)).await;
    }
}

pub async fn lock(client: &Client, args: LockArgs) -> anyhow::Result<()> {
    let (lease, mut renew) = held_lease(client).await?;
    let mut etcd = client.etcd().await?;
    let held = tokio::select! {
        held = etcd.lock(args.name.clone(), Some(LockOptions::new().with_lease(lease))) => held,
        _ = tokio::signal::ctrl_c() => {
            let_go(client, lease, renew).await;
            anyhow::bail!("interrupted while waiting for the lock");
        }
    };
    let held = match held {
        Ok(held) => held,
        Err(err) => {
            let_go(client, lease, renew).await;
            return Err(client.describe(err));
        }
    };
    let outcome = match args.command.split_first() {
        None => {
            println!("{}", lossy(held.key()));
            hold(&mut renew, "lock").await
        }
        Some((program, rest)) => {
            let status = tokio::process::Command::new(program)
                .args(rest)
                .status()
                .await
                .with_context(|| format!("cannot run {program}"));
            match status {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(anyhow::anyhow!("{program} exited with {status}")),
                Err(err) => Err(err),
            }
        }
    };
    let _ = etcd.unlock(held.key()).await;
    let_go(client, lease, renew).await;
    outcome
}

pub async fn elect(client: &Client, args: ElectArgs) -> anyhow::Result<()> {
    let mut etcd = client.etcd().await?;
    if args.listen {
        let mut stream = client.request(etcd.observe(args.name.clone())).await?;
        loop {
            tokio::select! {
                message = stream.message() => match message.map_err(|err| client.describe(err))? {
                    Some(leader) => {
                        if let Some(kv) = leader.kv() {
                            println!("{}\n{}", lossy(kv.key()), lossy(kv.value()));
                        }
                    }
                    None => anyhow::bail!("the agent closed the observation"),
                },
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }
    let value = args.value.unwrap_or_default();
    let (lease, mut renew) = held_lease(client).await?;
    let won = tokio::select! {
        won = etcd.campaign(args.name.clone(), value.clone(), lease) => won,
        _ = tokio::signal::ctrl_c() => {
            let_go(client, lease, renew).await;
            return Ok(());
        }
    };
    let won = match won {
        Ok(won) => won,
        Err(err) => {
            let_go(client, lease, renew).await;
            return Err(client.describe(err));
        }
    };
    let mut outcome = Ok(());
    if let Some(leader) = won.leader() {
        println!("{}\n{value}", lossy(leader.key()));
        outcome = hold(&mut renew, "lead").await;
        let _ = etcd
            .resign(Some(ResignOptions::new().with_leader(leader.clone())))
            .await;
    }
    let_go(client, lease, renew).await;
    outcome
}
