//! Connections from the CLI to agents, and errors worded for people.

use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use etcd_client::ConnectOptions;
use tonic::transport::{Channel, Endpoint};

use crate::api::pb::edgeconf_client::EdgeconfClient;

pub struct Client {
    pub endpoints: Vec<String>,
    dial_timeout: Duration,
    command_timeout: Duration,
}

impl Client {
    pub fn new(endpoints: &[String], dial_timeout: Duration, command_timeout: Duration) -> Self {
        Self {
            endpoints: endpoints.to_vec(),
            dial_timeout,
            command_timeout,
        }
    }

    /// The same settings, for one endpoint.
    pub fn for_endpoint(&self, endpoint: &str) -> Client {
        Client::new(
            &[endpoint.to_string()],
            self.dial_timeout,
            self.command_timeout,
        )
    }

    /// An etcd client on the first endpoint that accepts a connection, so a
    /// member that is down does not fail the command. (The client library
    /// connects lazily, so reachability is checked here first.)
    pub async fn etcd(&self) -> anyhow::Result<etcd_client::Client> {
        for endpoint in &self.endpoints {
            let address = endpoint
                .trim_start_matches("http://")
                .trim_start_matches("https://");
            let reachable =
                tokio::time::timeout(self.dial_timeout, tokio::net::TcpStream::connect(address))
                    .await;
            if matches!(reachable, Ok(Ok(_))) {
                return self.etcd_at(std::slice::from_ref(endpoint)).await;
            }
        }
        Err(anyhow!(
            "cannot reach any of {}; is `edgeconf agent` running? check --endpoints",
            self.endpoints.join(",")
        ))
    }

    pub async fn etcd_at(&self, endpoints: &[String]) -> anyhow::Result<etcd_client::Client> {
        let options = ConnectOptions::new()
            .with_connect_timeout(self.dial_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        etcd_client::Client::connect(endpoints, Some(options))
            .await
            .map_err(|err| self.describe(err))
    }

    /// A client of the Edgeconf service on the first endpoint that answers.
    pub async fn edgeconf(&self) -> anyhow::Result<EdgeconfClient<Channel>> {
        let mut last_error = None;
        for endpoint in &self.endpoints {
            let url = if endpoint.contains("://") {
                endpoint.clone()
            } else {
                format!("http://{endpoint}")
            };
            let channel = Endpoint::from_shared(url)
                .map_err(|err| anyhow!("invalid endpoint {endpoint:?}: {err}"))?
                .connect_timeout(self.dial_timeout)
                .connect()
                .await;
            match channel {
                Ok(channel) => return Ok(EdgeconfClient::new(channel)),
                Err(err) => last_error = Some(format!("{endpoint}: {err}")),
            }
        }
        Err(anyhow!(
            "no agent reachable at {} ({}); is `edgeconf agent` running? check --endpoints",
            self.endpoints.join(","),
            last_error.unwrap_or_default()
        ))
    }

    /// Runs one request within the command timeout.
    pub async fn request<T, E: Into<RequestError>>(
        &self,
        request: impl Future<Output = Result<T, E>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(self.command_timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(self.describe(err)),
            Err(_) => Err(anyhow!(
                "no answer from {} within {} (is `edgeconf agent` running? check --endpoints, or raise --command-timeout)",
                self.endpoints.join(","),
                humantime::format_duration(self.command_timeout)
            )),
        }
    }

    /// One line a person can act on, from whatever the client library said.
    pub fn describe(&self, err: impl Into<RequestError>) -> anyhow::Error {
        match err.into() {
            RequestError::Status(status) => status_error(&status, &self.endpoints),
            RequestError::Etcd(etcd_client::Error::GRpcStatus(status)) => {
                status_error(&status, &self.endpoints)
            }
            RequestError::Etcd(etcd_client::Error::TransportError(err)) => anyhow!(
                "cannot reach {}: {err}; is `edgeconf agent` running? check --endpoints",
                self.endpoints.join(",")
            ),
            RequestError::Etcd(err) => anyhow!("{err}"),
        }
    }
}

fn status_error(status: &tonic::Status, endpoints: &[String]) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unavailable => anyhow!(
            "cannot reach {}: {}; is `edgeconf agent` running? check --endpoints",
            endpoints.join(","),
            status.message()
        ),
        _ => anyhow!("{}", status.message()),
    }
}

/// The errors client requests fail with.
pub enum RequestError {
    Etcd(etcd_client::Error),
    Status(tonic::Status),
}

impl From<etcd_client::Error> for RequestError {
    fn from(err: etcd_client::Error) -> Self {
        RequestError::Etcd(err)
    }
}

impl From<tonic::Status> for RequestError {
    fn from(status: tonic::Status) -> Self {
        RequestError::Status(status)
    }
}
