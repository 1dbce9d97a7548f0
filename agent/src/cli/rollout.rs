//! `edgeconf rollout`: start a staged rollout, follow it, list past ones,
//! pause, resume, abort or promote one.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};

use super::output::{format_time, print_json, print_table, Format};
use super::{signing, Client};
use crate::api::pb;
use crate::consensus::now_unix_ms;
use crate::rollout::status::RolloutView;
use crate::rollout::{Plan, PlanBody, SignedPlan};
use crate::signing::{keys, Op};

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a staged rollout of a new value for one key: `--key KEY`
    /// (or KEY as an argument).
    Start(StartArgs),
    /// Show a rollout; without ID, those under way (or the latest one).
    Status(StatusArgs),
    /// Every rollout, oldest first: the history.
    List,
    /// Hold the current stage (unhealthy agents still roll it back).
    Pause(ControlArgs),
    /// Carry on after a pause; the stage's gate starts again.
    Resume(ControlArgs),
    /// Stop it: every agent goes back to the stored value.
    Abort(ControlArgs),
    /// Skip to the last stage (100%); its gate still applies.
    Promote(ControlArgs),
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The key to roll out (the same as --key KEY).
    pub target: Option<String>,
    /// The operator key to sign the plan and the value with.
    #[arg(long, short = 's')]
    pub sign_key: PathBuf,
    /// The new value.
    #[arg(long, conflicts_with = "file")]
    pub value: Option<String>,
    /// Read the new value from this file.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Only agents whose labels match, e.g. 'region=eu,tier!=canary'.
    #[arg(long, default_value = "")]
    pub selector: String,
    /// Percentages of the selected agents, rising to 100.
    #[arg(long, default_value = "1,10,50,100")]
    pub stages: String,
    /// How long each stage must stay healthy (choose it longer than the
    /// health checks' interval).
    #[arg(long, default_value = "60s")]
    pub gate: String,
    /// The share of a stage's agents that may be unhealthy.
    #[arg(long, default_value = "0%")]
    pub max_unhealthy: String,
    /// The new value's sequence (default: above the stored one).
    #[arg(long)]
    pub seq: Option<u64>,
    /// Follow the rollout until it ends; exit 1 unless it completes.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    pub id: Option<String>,
    /// Follow it until it ends; exit 1 unless it completes.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    pub id: String,
    /// Why, kept in the rollout's events.
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `target` is the key from `--key` (the global flag) when not given as
/// an argument.
pub async fn run(
    client: &Client,
    format: Format,
    command: RolloutCommand,
    target: Option<String>,
) -> anyhow::Result<()> {
    match command {
        RolloutCommand::Start(args) => start(client, format, args, target).await,
        RolloutCommand::Status(args) => status(client, format, args).await,
        RolloutCommand::List => {
            let views = fetch(client, pb::RolloutsRequest::default()).await?;
            print_list(format, &views);
            Ok(())
        }
        RolloutCommand::Pause(args) => control(client, format, "pause", args).await,
        RolloutCommand::Resume(args) => control(client, format, "resume", args).await,
        RolloutCommand::Abort(args) => control(client, format, "abort", args).await,
        RolloutCommand::Promote(args) => control(client, format, "promote", args).await,
    }
}

async fn start(
    client: &Client,
    format: Format,
    args: StartArgs,
    target: Option<String>,
) -> anyhow::Result<()> {
    let key = args.target.clone().or(target).ok_or_else(|| {
        anyhow!("rollout start needs the key to roll out: --key KEY (or KEY as an argument)")
    })?;
    // Checked here too, for errors before anything is signed.
    Plan::parse(
        &args.stages,
        &args.gate,
        &args.max_unhealthy,
        &args.selector,
    )?;
    let value = match (&args.value, &args.file) {
        (Some(value), None) => value.clone().into_bytes(),
        (None, Some(path)) => std::fs::read(path)
            .with_context(|| format!("--file {}: cannot read it", path.display()))?,
        _ => bail!("rollout start needs the new value: --value VALUE or --file FILE"),
    };
    let sequence = match args.seq {
        Some(sequence) => sequence,
        None => {
            let inspected = signing::inspect(client, &key, None, 0, false).await?;
            signing::default_sequence(
                inspected
                    .get(key.as_bytes())
                    .map_or(0, |k| k.latest_sequence),
            )
        }
    };
    let binding = signing::cluster_binding(client).await?;
    let change = signing::make_change(
        &args.sign_key,
        binding,
        &key,
        Op::Put,
        value,
        sequence,
        &signing::Terms::default(),
    )?;
    let operator = keys::read_signing_key(&args.sign_key)?;
    let body = PlanBody {
        key: key.clone(),
        change: change.to_json(),
        selector: args.selector.clone(),
        stages: args.stages.clone(),
        gate: args.gate.clone(),
        max_unhealthy: args.max_unhealthy.clone(),
        created_unix_ms: now_unix_ms(),
    };
    let signed = SignedPlan::sign(&operator, &body);
    let mut edgeconf = client.edgeconf().await?;
    let id = client
        .request(edgeconf.rollout_start(pb::RolloutStartRequest {
            plan: signed.to_bytes(),
        }))
        .await?
        .into_inner()
        .id;
    match format {
        Format::Json if !args.wait => print_json(&serde_json::json!({ "id": id, "key": key })),
        Format::Json => {}
        _ => println!(
            "rollout {id} started: {key:?} in stages {} with a {} gate",
            args.stages, args.gate
        ),
    }
    if args.wait {
        return follow(client, format, &id).await;
    }
    Ok(())
}

async fn fetch(client: &Client, request: pb::RolloutsRequest) -> anyhow::Result<Vec<RolloutView>> {
    let mut edgeconf = client.edgeconf().await?;
    let response = client
        .request(edgeconf.rollouts(request))
        .await?
        .into_inner();
    response
        .rollouts
        .iter()
        .map(|text| serde_json::from_str(text).context("the agent sent an unreadable rollout"))
        .collect()
}

async fn status(client: &Client, format: Format, args: StatusArgs) -> anyhow::Result<()> {
    if let Some(id) = &args.id {
        if args.wait {
            return follow(client, format, id).await;
        }
        let request = pb::RolloutsRequest {
            id: id.clone(),
            ..Default::default()
        };
        let view = fetch(client, request)
            .await?
            .pop()
            .ok_or_else(|| anyhow!("no rollout {id}"))?;
        print_view(format, &view);
        return Ok(());
    }
    let all = fetch(client, pb::RolloutsRequest::default()).await?;
    let mut shown: Vec<RolloutView> = all.iter().filter(|v| v.is_active()).cloned().collect();
    if shown.is_empty() {
        shown.extend(all.last().cloned());
    }
    if args.wait {
        match shown.as_slice() {
            [one] => return follow(client, format, &one.id).await,
            [] => bail!("no rollouts to follow"),
            _ => bail!("several rollouts are under way: give the ID to follow"),
        }
    }
    match format {
        Format::Json => print_json(&serde_json::to_value(&shown)?),
        _ if shown.is_empty() => println!("no rollouts"),
        _ => shown.iter().for_each(|view| print_view(format, view)),
    }
    Ok(())
}

/// Shows the rollout's progress until it ends.
async fn follow(client: &Client, format: Format, id: &str) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new_spinner();
    if format == Format::Json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    let request = pb::RolloutsRequest {
        id: id.to_string(),
        ..Default::default()
    };
    let view = loop {
        let view = fetch(client, request.clone())
            .await?
            .pop()
            .ok_or_else(|| anyhow!("no rollout {id}"))?;
        if !view.is_active() {
            break view;
        }
        bar.set_message(format!(
            "{} {}: stage {}/{} ({}), {} in stage, {} updated, {} healthy, {} failing",
            view.id,
            view.status,
            view.stage,
            view.stages.len(),
            view.stage_percent(),
            view.counts.in_stage,
            view.counts.updated,
            view.counts.healthy,
            view.counts.failing
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    bar.finish_and_clear();
    print_view(format, &view);
    if view.status != "completed" {
        bail!("rollout {} {}: {}", view.id, view.status, view.reason);
    }
    Ok(())
}

async fn control(
    client: &Client,
    format: Format,
    action: &str,
    args: ControlArgs,
) -> anyhow::Result<()> {
    let view = control_request(client, action, &args.id, &args.reason).await?;
    print_view(format, &view);
    Ok(())
}

pub async fn control_request(
    client: &Client,
    action: &str,
    id: &str,
    reason: &str,
) -> anyhow::Result<RolloutView> {
    let mut edgeconf = client.edgeconf().await?;
    let response = client
        .request(edgeconf.rollout_control(pb::RolloutControlRequest {
            id: id.to_string(),
            action: action.to_string(),
            reason: reason.to_string(),
        }))
        .await?
        .into_inner();
    serde_json::from_str(&response.rollout).context("the agent sent an unreadable rollout")
}

/// Aborts every rollout under way on `key` (`put --force`).
pub async fn abort_on_key(client: &Client, key: &str, reason: &str) -> anyhow::Result<Vec<String>> {
    let request = pb::RolloutsRequest {
        key: key.to_string(),
        active: true,
        ..Default::default()
    };
    let mut aborted = Vec::new();
    for view in fetch(client, request).await? {
        match control_request(client, "abort", &view.id, reason).await {
            Ok(_) => aborted.push(view.id),
            // It finished meanwhile: the key is free.
            Err(err) if format!("{err:#}").contains("cannot be aborted") => {}
            Err(err) => return Err(err),
        }
    }
    Ok(aborted)
}

fn ago(unix_ms: i64) -> String {
    let elapsed =
        Duration::from_millis(now_unix_ms().saturating_sub(unix_ms).max(0) as u64 / 1000 * 1000);
    humantime::format_duration(elapsed).to_string()
}

fn print_view(format: Format, view: &RolloutView) {
    match format {
        Format::Json => print_json(&serde_json::to_value(view).expect("a view encodes")),
        Format::Table => print_list(format, std::slice::from_ref(view)),
        Format::Simple => {
            println!("rollout {}  {:?}  {}", view.id, view.key, view.status);
            println!(
                "  stage {} of {} ({}), in stage {}; gate {}, max unhealthy {}{}",
                view.stage,
                view.stages.len(),
                view.stage_percent(),
                ago(view.stage_started_unix_ms),
                view.gate,
                view.max_unhealthy,
                if view.selector.is_empty() {
                    String::new()
                } else {
                    format!(", selector {}", view.selector)
                }
            );
            let c = &view.counts;
            println!(
                "  agents: {} selected, {} in stage, {} updated, {} healthy, {} failing, {} down",
                c.selected, c.in_stage, c.updated, c.healthy, c.failing, c.down
            );
            if let Some(finished) = view.finished_unix_ms {
                println!("  finished {}: {}", format_time(finished), view.reason);
            }
            for failing in &view.failing {
                println!("  failing: {failing}");
            }
            if !view.pending.is_empty() {
                println!(
                    "  waiting for (not rendering the new value yet): {}",
                    view.pending.join(", ")
                );
            }
            if !view.plan_problem.is_empty() {
                println!("  plan problem: {}", view.plan_problem);
            }
        }
    }
}

fn print_list(format: Format, views: &[RolloutView]) {
    let rows = views.iter().map(|v| {
        vec![
            v.id.clone(),
            v.key.clone(),
            v.status.clone(),
            format!("{}/{} ({})", v.stage, v.stages.len(), v.stage_percent()),
            format!(
                "{}/{}/{}",
                v.counts.in_stage, v.counts.healthy, v.counts.failing
            ),
            format_time(v.created_unix_ms),
            v.reason.clone(),
        ]
    });
    match format {
        Format::Json => print_json(&serde_json::to_value(views).expect("views encode")),
        Format::Table => print_table(
            &[
                "ID",
                "KEY",
                "STATUS",
                "STAGE",
                "IN STAGE/HEALTHY/FAILING",
                "STARTED",
                "REASON",
            ],
            rows,
        ),
        Format::Simple => {
            for row in rows {
                println!("{}", row.join(", "));
            }
        }
    }
}
