//! Connections from the CLI to agents, and errors worded for people.

use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use etcd_client::ConnectOptions;
use std::path::PathBuf;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::api::auth::pb::auth_client::AuthClient;
use crate::api::auth::pb::AuthenticateRequest;
use crate::api::pb::edgeconf_client::EdgeconfClient;

pub struct Client {
    pub endpoints: Vec<String>,
    dial_timeout: Duration,
    command_timeout: Duration,
    tls: TlsFiles,
    /// `--user NAME:PASSWORD`, signed in with before each command.
    credentials: Option<(String, String)>,
}

/// Adds the sign-in token, if any, to every request.
#[derive(Clone)]
pub struct TokenInterceptor(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("token", token.clone());
        }
        Ok(request)
    }
}

pub type EdgeconfConn = EdgeconfClient<InterceptedService<Channel, TokenInterceptor>>;
pub type AuthConn = AuthClient<InterceptedService<Channel, TokenInterceptor>>;

/// What an agent answers a sign-in with while auth is disabled; commands
/// then go on without a token, as etcdctl's do.
const AUTH_NOT_ENABLED: &str = "authentication is not enabled";

/// `--cacert`, `--cert` and `--key`, as etcdctl names them.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    fn enabled(&self, endpoint: &str) -> bool {
        self.cacert.is_some() || self.cert.is_some() || endpoint.starts_with("https://")
    }

    fn config(&self) -> anyhow::Result<ClientTlsConfig> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path)
                .map_err(|err| anyhow!("cannot read the {what} {}: {err}", path.display()))
        };
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &self.cacert {
            config = config.ca_certificate(Certificate::from_pem(read(ca, "CA certificate")?));
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            config = config.identity(Identity::from_pem(
                read(cert, "client certificate")?,
                read(key, "client key")?,
            ));
        }
        Ok(config)
    }
}

/// `HOST:PORT` or a URL, as a URL with the scheme TLS calls for.
fn endpoint_url(endpoint: &str, tls: bool) -> String {
    let bare = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    format!("{}://{bare}", if tls { "https" } else { "http" })
}

impl Client {
    pub fn new(endpoints: &[String], dial_timeout: Duration, command_timeout: Duration) -> Self {
        Self {
            endpoints: endpoints.to_vec(),
            dial_timeout,
            command_timeout,
            tls: TlsFiles::default(),
            credentials: None,
        }
    }

    /// Signs in as `user` with `password` before each command.
    pub fn with_user(mut self, credentials: Option<(String, String)>) -> Self {
        self.credentials = credentials;
        self
    }

    pub fn with_tls(mut self, tls: TlsFiles) -> Self {
        self.tls = tls;
        self
    }

    /// The same settings, for one endpoint.
    pub fn for_endpoint(&self, endpoint: &str) -> Client {
        Client::new(
            &[endpoint.to_string()],
            self.dial_timeout,
            self.command_timeout,
        )
        .with_tls(self.tls.clone())
        .with_user(self.credentials.clone())
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
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.dial_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let tls = endpoints.iter().any(|e| self.tls.enabled(e));
        if tls {
            options = options.with_tls(self.tls.config()?);
        }
        let endpoints: Vec<String> = endpoints.iter().map(|e| endpoint_url(e, tls)).collect();
        if let Some((user, password)) = &self.credentials {
            let signed_in = options.clone().with_user(user, password);
            match etcd_client::Client::connect(&endpoints, Some(signed_in)).await {
                Err(err) if err.to_string().contains(AUTH_NOT_ENABLED) => {}
                connected => return connected.map_err(|err| self.describe(err)),
            }
        }
        etcd_client::Client::connect(endpoints, Some(options))
            .await
            .map_err(|err| self.describe(err))
    }

    /// A client of the Edgeconf service on the first endpoint that answers,
    /// signed in when `--user` is given.
    pub async fn edgeconf(&self) -> anyhow::Result<EdgeconfConn> {
        let (channel, token) = self.signed_in_channel().await?;
        Ok(EdgeconfClient::with_interceptor(channel, token))
    }

    /// A client of etcd's Auth service, signed in when `--user` is given.
    pub async fn auth(&self) -> anyhow::Result<AuthConn> {
        let (channel, token) = self.signed_in_channel().await?;
        Ok(AuthClient::with_interceptor(channel, token))
    }

    async fn signed_in_channel(&self) -> anyhow::Result<(Channel, TokenInterceptor)> {
        let channel = self.channel().await?;
        let Some((name, password)) = self.credentials.clone() else {
            return Ok((channel, TokenInterceptor(None)));
        };
        let mut auth = AuthClient::new(channel.clone());
        let answer = self
            .request(auth.authenticate(AuthenticateRequest { name, password }))
            .await;
        let token = match answer {
            Ok(response) => Some(response.into_inner().token.parse().map_err(|err| {
                anyhow!("the agent answered the sign-in with an unusable token: {err}")
            })?),
            Err(err) if err.to_string().contains(AUTH_NOT_ENABLED) => None,
            Err(err) => return Err(err),
        };
        Ok((channel, TokenInterceptor(token)))
    }

    /// A channel to the first endpoint that answers.
    async fn channel(&self) -> anyhow::Result<Channel> {
        let mut last_error = None;
        for endpoint in &self.endpoints {
            let tls = self.tls.enabled(endpoint);
            let mut channel = Endpoint::from_shared(endpoint_url(endpoint, tls))
                .map_err(|err| anyhow!("invalid endpoint {endpoint:?}: {err}"))?
                .connect_timeout(self.dial_timeout);
            if tls {
                channel = channel.tls_config(self.tls.config()?)?;
            }
            let channel = channel.connect().await;
            match channel {
                Ok(channel) => return Ok(channel),
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
        let tls = self.endpoints.iter().any(|e| self.tls.enabled(e));
        match err.into() {
            // Agents answer requests with specific codes; Unknown and
            // Cancelled come from the connection itself, most often a TLS
            // mismatch (a plain client on an https:// port sees either).
            RequestError::Status(status) | RequestError::Etcd(etcd_client::Error::GRpcStatus(status))
                if matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled)
                    || status.message().contains("h2 protocol error") =>
            {
                anyhow!(
                    "connection to {} failed: {} (an agent serving https:// needs --cacert, and --cert/--key when it checks client certificates)",
                    self.endpoints.join(","),
                    status.message()
                )
            }
            RequestError::Status(status) => self.status_error(&status),
            RequestError::Etcd(etcd_client::Error::GRpcStatus(status)) => {
                self.status_error(&status)
            }
            RequestError::Etcd(etcd_client::Error::TransportError(err)) => anyhow!(
                "cannot reach {}: {err}; is `edgeconf agent` running? check --endpoints \
                 (an agent serving https:// needs --cacert, and --cert/--key when it checks client certificates)",
                self.endpoints.join(",")
            ),
            RequestError::Etcd(err) if err.to_string().contains("h2 protocol error") => anyhow!(
                "connection to {} failed: {err} (an agent serving https:// needs --cacert, and --cert/--key when it checks client certificates)",
                self.endpoints.join(",")
            ),
            // Connection-level failures with TLS on are most often a
            // missing or wrong certificate.
            RequestError::Etcd(err) if tls => anyhow!(
                "connection to {} failed: {err} (check --cacert, and --cert/--key when the agent checks client certificates)",
                self.endpoints.join(",")
            ),
            RequestError::Etcd(err) => anyhow!("{err}"),
        }
    }
}

impl Client {
    fn status_error(&self, status: &tonic::Status) -> anyhow::Error {
        let message = status.message();
        let user = self.credentials.as_ref().map(|(user, _)| user.as_str());
        let hint = match (status.code(), user) {
            (tonic::Code::PermissionDenied, Some(user)) => format!(
                " (user {user:?} lacks a role that allows this; see `edgeconf user get {user}`)"
            ),
            (tonic::Code::PermissionDenied, None) => {
                " (the client certificate's user lacks a role that allows this)".to_string()
            }
            _ if message.contains("user name is empty") => {
                " (authentication is enabled: pass --user NAME[:PASSWORD], or a client certificate whose common name is a user)".to_string()
            }
            _ if message.contains("authentication failed") => {
                " (check the name and password given with --user)".to_string()
            }
            _ if message.contains("invalid auth token") => {
                " (the sign-in expired or the password changed; run the command again)".to_string()
            }
            _ => String::new(),
        };
        if hint.is_empty() {
            status_error(status, &self.endpoints)
        } else {
            anyhow!("{message}{hint}")
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
        // What a TLS mismatch looks like from the client's side.
        tonic::Code::Unknown
            if status.message().contains("transport error")
                || status.message().contains("h2 protocol error") =>
        {
            anyhow!(
                "connection to {} failed: {} (an agent serving https:// needs --cacert, and --cert/--key when it checks client certificates)",
                endpoints.join(","),
                status.message()
            )
        }
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
