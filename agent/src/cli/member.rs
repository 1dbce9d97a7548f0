//! `edgeconf member`: the fleet as gossip sees it (every agent), leaving
//! it, and the raft members (list --raft, add, remove, promote, update).

use clap::Subcommand;
use etcd_client::MemberAddOptions;
use serde_json::json;

use crate::api::pb::{GossipMember, LeaveRequest, MembersRequest};

use super::output::{header_json, print_json, print_table, Format};
use super::Client;

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// List every agent of the fleet: state, role, labels, version, address.
    List {
        /// List the raft members instead (as `etcdctl member list` does).
        #[arg(long)]
        raft: bool,
    },
    /// Make the agent at the endpoint leave the fleet gracefully and stop:
    /// others see it as left, not dead.
    Leave,
    /// Add a member; start it afterwards with initial_cluster_state = "existing".
    Add {
        /// The new member's name (it announces it when it starts).
        name: String,
        /// Its peer URL, quic://IP:PORT.
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Add it as a learner (a non-voting member) to promote later.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member (hexadecimal id).
    Remove { id: String },
    /// Promote a learner to a voting member (hexadecimal id).
    Promote { id: String },
    /// Move a member to new peer URLs (hexadecimal id); restart it listening
    /// there afterwards. Its id, name and data stay.
    Update {
        id: String,
        /// Its new peer URLs, quic://IP:PORT.
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
    },
}

fn parse_member_id(text: &str) -> anyhow::Result<u64> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).map_err(|_| {
        anyhow::anyhow!("invalid member ID {text:?}: expected the hexadecimal id shown by `edgeconf member list`")
    })
}

fn member_rows(members: &[etcd_client::Member]) -> Vec<Vec<String>> {
    members
        .iter()
        .map(|m| {
            vec![
                format!("{:x}", m.id()),
                if m.name().is_empty() {
                    "unstarted"
                } else {
                    "started"
                }
                .to_string(),
                m.name().to_string(),
                m.peer_urls().join(","),
                m.client_urls().join(","),
                m.is_learner().to_string(),
            ]
        })
        .collect()
}

fn print_members(
    format: Format,
    header: Option<&etcd_client::ResponseHeader>,
    members: &[etcd_client::Member],
) {
    match format {
        Format::Json => print_json(&json!({
            "header": header_json(header),
            "members": members.iter().map(|m| json!({
                "ID": m.id(), "name": m.name(), "peerURLs": m.peer_urls(),
                "clientURLs": m.client_urls(), "isLearner": m.is_learner(),
            })).collect::<Vec<_>>(),
        })),
        Format::Table => print_table(
            &[
                "ID",
                "STATUS",
                "NAME",
                "PEER ADDRS",
                "CLIENT ADDRS",
                "IS LEARNER",
            ],
            member_rows(members),
        ),
        Format::Simple => {
            for row in member_rows(members) {
                println!("{}", row.join(", "));
            }
        }
    }
}

pub async fn run(client: &Client, format: Format, command: MemberCommand) -> anyhow::Result<()> {
    let mut etcd = client.etcd().await?;
    match command {
        MemberCommand::List { raft: true } => {
            let resp = client.request(etcd.member_list()).await?;
            print_members(format, resp.header(), resp.members());
        }
        MemberCommand::List { raft: false } => {
            let mut edgeconf = client.edgeconf().await?;
            let resp = client
                .request(edgeconf.members(MembersRequest {}))
                .await?
                .into_inner();
            print_fleet(format, &resp.self_, &resp.members);
        }
        MemberCommand::Leave => {
            let mut edgeconf = client.edgeconf().await?;
            client.request(edgeconf.leave(LeaveRequest {})).await?;
            match format {
                Format::Json => print_json(&json!({ "left": true })),
                _ => println!("The agent is leaving the fleet and will stop"),
            }
        }
        MemberCommand::Add {
            name,
            peer_urls,
            learner,
        } => {
            let options = learner.then(|| MemberAddOptions::new().with_is_learner());
            let resp = client
                .request(etcd.member_add(peer_urls.clone(), options))
                .await?;
            let id = resp.member().map_or(0, |m| m.id());
            let mut cluster: Vec<String> = resp
                .member_list()
                .iter()
                .filter(|m| m.id() != id && !m.name().is_empty())
                .flat_map(|m| {
                    m.peer_urls()
                        .iter()
                        .map(|u| format!("{}={u}", m.name()))
                        .collect::<Vec<_>>()
                })
                .collect();
            cluster.push(format!("{name}={}", peer_urls[0]));
            match format {
                Format::Json => print_json(&json!({
                    "header": header_json(resp.header()),
                    "ID": id,
                    "initial_cluster": cluster.join(","),
                })),
                _ => {
                    let kind = if learner { "learner" } else { "member" };
                    println!("Added {kind} {name} with ID {id:x}. Start it with:\n");
                    println!("name = \"{name}\"");
                    println!("listen_peer_urls = [\"{}\"]", peer_urls[0]);
                    println!("initial_cluster = \"{}\"", cluster.join(","));
                    println!("initial_cluster_state = \"existing\"");
                }
            }
        }
        MemberCommand::Remove { id } => {
            let id = parse_member_id(&id)?;
            let resp = client.request(etcd.member_remove(id)).await?;
            match format {
                Format::Json => print_json(&json!({ "header": header_json(resp.header()) })),
                _ => println!("Member {id:x} removed"),
            }
        }
        MemberCommand::Update { id, peer_urls } => {
            let id = parse_member_id(&id)?;
            let resp = client
                .request(etcd.member_update(id, peer_urls.clone()))
                .await?;
            match format {
                Format::Json => print_json(&json!({ "header": header_json(resp.header()) })),
                _ => println!(
                    "Member {id:x} updated: peer URLs {}. Restart it with listen_peer_urls = [\"{}\"]",
                    peer_urls.join(","),
                    peer_urls[0]
                ),
            }
        }
        MemberCommand::Promote { id } => {
            let id = parse_member_id(&id)?;
            // Only the leader promotes: find it among the endpoints.
            let mut leader = etcd.clone();
            for endpoint in &client.endpoints {
                let one = client.for_endpoint(endpoint);
                let Ok(mut candidate) = one.etcd().await else {
                    continue;
                };
                if let Ok(status) = one.request(candidate.status()).await {
                    if status
                        .header()
                        .is_some_and(|h| h.member_id() == status.leader())
                    {
                        leader = candidate;
                        break;
                    }
                }
            }
            let resp = client.request(leader.member_promote(id)).await?;
            match format {
                Format::Json => print_json(&json!({ "header": header_json(resp.header()) })),
                _ => println!("Member {id:x} promoted"),
            }
        }
    }
    Ok(())
}

fn print_fleet(format: Format, answered_by: &str, members: &[GossipMember]) {
    let labels = |m: &GossipMember| {
        let mut labels: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        labels.join(",")
    };
    let mut members: Vec<&GossipMember> = members.iter().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    match format {
        Format::Json => print_json(&json!({
            "self": answered_by,
            "members": members.iter().map(|m| json!({
                "name": m.name, "state": m.state, "role": m.role,
                "labels": m.labels, "version": m.version, "address": m.address,
                "client_urls": m.client_urls, "incarnation": m.incarnation,
                "services": m.services,
            })).collect::<Vec<_>>(),
        })),
        Format::Table => print_table(
            &[
                "NAME", "STATE", "ROLE", "ADDRESS", "VERSION", "LABELS", "SERVICES",
            ],
            members.iter().map(|m| {
                vec![
                    m.name.clone(),
                    m.state.clone(),
                    m.role.clone(),
                    m.address.clone(),
                    m.version.clone(),
                    labels(m),
                    m.services.to_string(),
                ]
            }),
        ),
        Format::Simple => {
            for m in members {
                println!(
                    "{}, {}, {}, {}, {}, {}",
                    m.name,
                    m.state,
                    m.role,
                    m.address,
                    m.version,
                    labels(m)
                );
            }
        }
    }
}
