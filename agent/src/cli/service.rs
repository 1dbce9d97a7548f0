//! `edgeconf service`: discovery across the fleet, and registration of the
//! services of the agent's own host.

use clap::Subcommand;
use serde_json::json;

use super::output::{print_json, print_table, Format};
use super::Client;
use crate::api::pb::{
    DeregisterServiceRequest, PassServiceRequest, RegisterServiceRequest, ServiceCheckSpec,
    ServiceInstance, ServicesRequest,
};

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// List service instances across the fleet.
    List {
        /// Only instances of this service.
        name: Option<String>,
        /// Only instances whose checks pass on an alive agent.
        #[arg(long)]
        healthy: bool,
        /// Only instances carrying this tag.
        #[arg(long)]
        tag: Option<String>,
    },
    /// Register (or replace) a service of the agent's host, with at most
    /// one check; it is announced until deregistered or the agent dies.
    Register(Box<RegisterArgs>),
    /// Remove a service registered through the API (by id).
    Deregister { id: String },
    /// Report a service with a ttl check as healthy (a heartbeat).
    Pass {
        id: String,
        /// A note shown as the check's output.
        #[arg(long, default_value = "")]
        note: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// The service's name (what clients discover).
    name: String,
    /// Unique on this agent (default: the name).
    #[arg(long)]
    id: Option<String>,
    /// Where clients reach it (default: 127.0.0.1).
    #[arg(long)]
    address: Option<String>,
    #[arg(long)]
    port: u16,
    /// A tag (repeat for more).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Check: GET this http:// URL.
    #[arg(long)]
    http: Option<String>,
    /// With --http: the status that passes (default any 2xx).
    #[arg(long)]
    expect_status: Option<u16>,
    /// With --http: text the body must contain.
    #[arg(long)]
    expect_body: Option<String>,
    /// Check: open a TCP connection to host:port.
    #[arg(long)]
    tcp: Option<String>,
    /// Check: critical unless `edgeconf service pass` comes within this time.
    #[arg(long)]
    ttl: Option<String>,
    /// Check: run this health-check [[plugin]] of the agent.
    #[arg(long)]
    plugin: Option<String>,
    /// With --plugin: its arguments (repeat for more).
    #[arg(long = "arg")]
    args: Vec<String>,
    /// Time between check runs, e.g. "10s".
    #[arg(long)]
    interval: Option<String>,
    /// How long a check run may take, e.g. "2s".
    #[arg(long)]
    timeout: Option<String>,
}

pub async fn run(client: &Client, format: Format, command: ServiceCommand) -> anyhow::Result<()> {
    let mut edgeconf = client.edgeconf().await?;
    match command {
        ServiceCommand::List { name, healthy, tag } => {
            let request = ServicesRequest {
                name: name.unwrap_or_default(),
                tag: tag.unwrap_or_default(),
                healthy,
            };
            let resp = client
                .request(edgeconf.services(request))
                .await?
                .into_inner();
            print_instances(format, &resp.instances);
        }
        ServiceCommand::Register(register) => {
            let RegisterArgs {
                name,
                id,
                address,
                port,
                tags,
                http,
                expect_status,
                expect_body,
                tcp,
                ttl,
                plugin,
                args,
                interval,
                timeout,
            } = *register;
            let has_check = http.is_some() || tcp.is_some() || ttl.is_some() || plugin.is_some();
            let checks = if has_check {
                vec![ServiceCheckSpec {
                    http: http.unwrap_or_default(),
                    expect_status: expect_status.map_or(0, u32::from),
                    expect_body: expect_body.unwrap_or_default(),
                    tcp: tcp.unwrap_or_default(),
                    ttl: ttl.unwrap_or_default(),
                    plugin: plugin.unwrap_or_default(),
                    args,
                    interval: interval.unwrap_or_default(),
                    timeout: timeout.unwrap_or_default(),
                }]
            } else {
                Vec::new()
            };
            let request = RegisterServiceRequest {
                name,
                id: id.unwrap_or_default(),
                address: address.unwrap_or_default(),
                port: u32::from(port),
                tags,
                checks,
            };
            let resp = client
                .request(edgeconf.register_service(request))
                .await?
                .into_inner();
            match format {
                Format::Json => print_json(&json!({ "id": resp.id })),
                _ => println!("Service {} registered", resp.id),
            }
        }
        ServiceCommand::Deregister { id } => {
            let request = DeregisterServiceRequest { id: id.clone() };
            client.request(edgeconf.deregister_service(request)).await?;
            match format {
                Format::Json => print_json(&json!({ "id": id })),
                _ => println!("Service {id} deregistered"),
            }
        }
        ServiceCommand::Pass { id, note } => {
            let request = PassServiceRequest { id, note };
            client.request(edgeconf.pass_service(request)).await?;
            if format == Format::Json {
                print_json(&json!({ "passed": true }));
            }
        }
    }
    Ok(())
}

fn print_instances(format: Format, instances: &[ServiceInstance]) {
    match format {
        Format::Json => print_json(&json!({
            "instances": instances.iter().map(|i| json!({
                "name": i.name, "id": i.id, "node": i.node, "node_state": i.node_state,
                "address": i.address, "port": i.port, "tags": i.tags,
                "health": i.health, "output": i.output, "healthy": i.healthy,
            })).collect::<Vec<_>>(),
        })),
        Format::Table => print_table(
            &["NAME", "ID", "NODE", "ADDRESS", "TAGS", "HEALTH", "OUTPUT"],
            instances.iter().map(|i| {
                vec![
                    i.name.clone(),
                    i.id.clone(),
                    format!("{} ({})", i.node, i.node_state),
                    format!("{}:{}", i.address, i.port),
                    i.tags.join(","),
                    i.health.clone(),
                    i.output.clone(),
                ]
            }),
        ),
        Format::Simple => {
            for i in instances {
                println!(
                    "{}, {}, {}, {}:{}, {}, {}",
                    i.name,
                    i.id,
                    i.node,
                    i.address,
                    i.port,
                    i.tags.join(","),
                    i.health
                );
            }
        }
    }
}
