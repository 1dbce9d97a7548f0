//! The fleet RPCs of the Edgeconf service: gossip membership and the
//! service catalog.

use tonic::{Request, Response, Status};

use super::pb;
use super::Context;
use crate::config::{ServiceCheckFile, ServiceFile};
use crate::services::{discover, Query, ServiceError};

pub(crate) fn members(
    context: &Context,
    request: Request<pb::MembersRequest>,
) -> Result<Response<pb::MembersResponse>, Status> {
    context.caller(&request)?.check_signed_in()?;
    let membership = &context.fleet.membership;
    let members = membership
        .members()
        .into_iter()
        .map(|record| pb::GossipMember {
            name: record.id.to_string(),
            state: record.state.as_str().to_string(),
            role: record.meta.role.clone(),
            labels: record.meta.labels.clone().into_iter().collect(),
            version: record.meta.version.clone(),
            address: record.addr.to_string(),
            client_urls: record.meta.client_urls.clone(),
            incarnation: record.incarnation,
            services: record.meta.services.len() as u32,
        })
        .collect();
    Ok(Response::new(pb::MembersResponse {
        self_: membership.name(),
        members,
    }))
}

pub(crate) fn leave(
    context: &Context,
    request: Request<pb::LeaveRequest>,
) -> Result<Response<pb::LeaveResponse>, Status> {
    context
        .caller(&request)?
        .check_admin("make an agent leave the fleet")?;
    context.fleet.leave.notify_one();
    Ok(Response::new(pb::LeaveResponse {}))
}

pub(crate) fn services(
    context: &Context,
    request: Request<pb::ServicesRequest>,
) -> Result<Response<pb::ServicesResponse>, Status> {
    context.caller(&request)?.check_signed_in()?;
    let request = request.into_inner();
    let query = Query {
        name: Some(request.name).filter(|n| !n.is_empty()),
        tag: Some(request.tag).filter(|t| !t.is_empty()),
        healthy_only: request.healthy,
    };
    let instances = discover(&context.fleet.membership.members(), &query)
        .into_iter()
        .map(|i| pb::ServiceInstance {
            node: i.node,
            node_state: i.node_state,
            id: i.id,
            name: i.name,
            address: i.address,
            port: u32::from(i.port),
            tags: i.tags,
            health: i.health,
            output: i.output,
            healthy: i.healthy,
        })
        .collect();
    Ok(Response::new(pb::ServicesResponse { instances }))
}

pub(crate) fn register(
    context: &Context,
    request: Request<pb::RegisterServiceRequest>,
) -> Result<Response<pb::RegisterServiceResponse>, Status> {
    context.caller(&request)?.check_admin("register services")?;
    let request = request.into_inner();
    let port = u16::try_from(request.port).map_err(|_| {
        Status::invalid_argument(format!(
            "service port: {} is not a port number",
            request.port
        ))
    })?;
    let text = |s: String| Some(s).filter(|s| !s.is_empty());
    let file = ServiceFile {
        name: request.name,
        id: text(request.id),
        address: text(request.address),
        port,
        tags: request.tags,
        checks: request
            .checks
            .into_iter()
            .map(|c| ServiceCheckFile {
                http: text(c.http),
                expect_status: u16::try_from(c.expect_status).ok().filter(|s| *s != 0),
                expect_body: text(c.expect_body),
                tcp: text(c.tcp),
                ttl: text(c.ttl),
                plugin: text(c.plugin),
                args: c.args,
                settings: Default::default(),
                interval: text(c.interval),
                timeout: text(c.timeout),
            })
            .collect(),
    };
    let entry = context
        .fleet
        .services
        .register(file)
        .map_err(service_status)?;
    Ok(Response::new(pb::RegisterServiceResponse { id: entry.id }))
}

pub(crate) fn deregister(
    context: &Context,
    request: Request<pb::DeregisterServiceRequest>,
) -> Result<Response<pb::DeregisterServiceResponse>, Status> {
    context
        .caller(&request)?
        .check_admin("deregister services")?;
    context
        .fleet
        .services
        .deregister(&request.into_inner().id)
        .map_err(service_status)?;
    Ok(Response::new(pb::DeregisterServiceResponse {}))
}

pub(crate) fn pass(
    context: &Context,
    request: Request<pb::PassServiceRequest>,
) -> Result<Response<pb::PassServiceResponse>, Status> {
    context
        .caller(&request)?
        .check_admin("report service health")?;
    let request = request.into_inner();
    context
        .fleet
        .services
        .pass(&request.id, &request.note)
        .map_err(service_status)?;
    Ok(Response::new(pb::PassServiceResponse {}))
}

fn service_status(err: ServiceError) -> Status {
    match err {
        ServiceError::Unknown(_) => Status::not_found(err.to_string()),
        ServiceError::Save { .. } => Status::internal(err.to_string()),
        ServiceError::TooMany(_) => Status::resource_exhausted(err.to_string()),
        _ => Status::invalid_argument(err.to_string()),
    }
}
