//! What a plugin instance sees of the host: the imported interfaces, each
//! answering only what the plugin's capabilities grant, and the memory cap.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

use super::bindings::{health_check, http, keys, log, settings, tcp};
use super::runtime::Runtime;
use crate::config::Capabilities;

/// The longest log line kept, and the most lines one call may log.
const LOG_LINE_MAX: usize = 4096;
const LOG_LINES_PER_CALL: u32 = 64;
/// HTTP bodies handed to a plugin are cut here.
const HTTP_BODY_MAX: usize = 64 << 10;

/// Reads keys for `read-key`: the agent's store (checked and decrypted as
/// for rendering) or, for `edgeconf plugin test`, values given on the
/// command line.
pub trait KeyReader: Send + Sync {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
}

/// Keys given as a map (`edgeconf plugin test --kv`).
impl KeyReader for BTreeMap<String, Vec<u8>> {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        Ok(self.get(String::from_utf8_lossy(key).as_ref()).cloned())
    }
}

/// What one call runs with, besides the plugin itself.
#[derive(Clone, Default)]
pub struct CallContext {
    /// The `settings` table of the binding that runs the plugin.
    pub settings: Arc<BTreeMap<String, String>>,
    pub keys: Option<Arc<dyn KeyReader>>,
}

/// The store data of one instance.
pub struct HostState {
    plugin: Arc<str>,
    grants: Arc<Capabilities>,
    context: CallContext,
    runtime: Arc<Runtime>,
    /// When the call's time is up (host calls are cut short to it).
    deadline: Instant,
    memory_cap: usize,
    /// Linear memory of every memory of the instance, together.
    memory_used: usize,
    /// Set when the instance asked for more memory than its cap.
    pub memory_exceeded: bool,
    log_lines: u32,
}

impl HostState {
    pub fn new(
        plugin: Arc<str>,
        grants: Arc<Capabilities>,
        context: CallContext,
        runtime: Arc<Runtime>,
        deadline: Instant,
        memory_cap: u64,
    ) -> Self {
        HostState {
            plugin,
            grants,
            context,
            runtime,
            deadline,
            memory_cap: usize::try_from(memory_cap).unwrap_or(usize::MAX),
            memory_used: 0,
            memory_exceeded: false,
            log_lines: 0,
        }
    }

    /// `timeout_ms` cut to the time left in the call.
    fn budget(&self, timeout_ms: u32) -> Result<Duration, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the plugin's time limit is used up".into());
        }
        Ok(Duration::from_millis(timeout_ms.into()).min(left))
    }

    fn refuse(&self, what: &str, target: &str, grant: &str) -> String {
        tracing::warn!(plugin = %self.plugin, target, "plugin refused {what}: not granted");
        format!("{what} {target} is not allowed for plugin {}: grant it in [plugin.capabilities] {grant}", self.plugin)
    }
}

impl wasmtime::ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The cap is for the instance, over all its memories.
        let used = self.memory_used + desired.saturating_sub(current);
        if used > self.memory_cap {
            self.memory_exceeded = true;
            wasmtime::bail!("memory limit of {} bytes reached", self.memory_cap);
        }
        self.memory_used = used;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        if !self.grants.log {
            return;
        }
        self.log_lines += 1;
        if self.log_lines > LOG_LINES_PER_CALL {
            if self.log_lines == LOG_LINES_PER_CALL + 1 {
                tracing::warn!(plugin = %self.plugin, "plugin logs too much: further lines of this call are dropped");
            }
            return;
        }
        let mut message = message;
        if message.len() > LOG_LINE_MAX {
            let mut cut = LOG_LINE_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let plugin = &*self.plugin;
        match level {
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl settings::Host for HostState {
    fn get(&mut self, name: String) -> Option<String> {
        self.context.settings.get(&name).cloned()
    }
}

impl keys::Host for HostState {
    fn read_key(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let granted = self
            .grants
            .read_keys
            .iter()
            .any(|prefix| key.as_bytes().starts_with(prefix));
        if !granted {
            return Err(self.refuse("reading key", &key, "read_keys"));
        }
        match &self.context.keys {
            Some(reader) => reader.read(key.as_bytes()),
            None => Err("no key-value store is available to this call".into()),
        }
    }
}

impl tcp::Host for HostState {
    fn connect(&mut self, host: String, port: u16, timeout_ms: u32) -> Result<u64, String> {
        let target = format!("{host}:{port}");
        if !self.grants.tcp.iter().any(|a| a.allows(&host, port)) {
            return Err(self.refuse("connecting to", &target, "tcp"));
        }
        let budget = self.budget(timeout_ms)?;
        // Name lookup and connection together, bounded by the budget; the
        // connection goes to the very address that was checked.
        let connect = async move {
            let started = Instant::now();
            let addr = resolve_granted(&host, port).await?;
            tokio::net::TcpStream::connect(addr)
                .await
                .map(|_| started.elapsed().as_micros() as u64)
                .map_err(|err| err.to_string())
        };
        match self.runtime.wait_io(budget, connect) {
            Some(Ok(micros)) => Ok(micros),
            Some(Err(err)) => Err(format!("connecting to {target}: {err}")),
            None => Err(format!(
                "connecting to {target}: timed out after {budget:?}"
            )),
        }
    }
}

impl http::Host for HostState {
    fn get(&mut self, url: String, timeout_ms: u32) -> Result<http::Response, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|err| format!("{url:?} is not a URL: {err}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "{url}: only http:// is supported by http.get, not {other}://"
                ))
            }
            None => {
                return Err(format!(
                    "{url:?} has no scheme: write http://host:port/path"
                ))
            }
        }
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(80);
        if !self.grants.http.iter().any(|a| a.allows(&host, port)) {
            return Err(self.refuse("fetching", &url, "http"));
        }
        let budget = self.budget(timeout_ms)?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(format!(
                "{url}: user names and passwords in URLs are not supported"
            ));
        }
        let fetch = async move {
            let addr = resolve_granted(&host, port)
                .await
                .map_err(|err| format!("{uri}: {err}"))?;
            fetch_from(addr, uri, host).await
        };
        let (status, body) = self
            .runtime
            .wait_io(budget, fetch)
            .ok_or_else(|| format!("{url}: timed out after {budget:?}"))??;
        Ok(http::Response { status, body })
    }
}

/// Where a plugin granted `host:port` by name may connect: the name is
/// resolved once, here, and the connection goes to that address (so a DNS
/// answer that changes between a check and the connect cannot move it). A
/// name must not resolve to this host or its link (loopback, unspecified,
/// link-local, multicast): that is DNS rebinding, the way a granted outside
/// name reaches the agent's own API. Granting the address itself (or
/// `localhost`) allows it.
async fn resolve_granted(host: &str, port: u16) -> Result<SocketAddr, String> {
    let bare = host.trim_matches(['[', ']']);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addr = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|err| format!("resolving {bare}: {err}"))?
        .next()
        .ok_or_else(|| format!("{bare} resolves to no address"))?;
    check_resolved(bare, addr)
}

/// The rule of [`resolve_granted`] for a name and what it resolved to.
fn check_resolved(name: &str, addr: SocketAddr) -> Result<SocketAddr, String> {
    if !name.eq_ignore_ascii_case("localhost") && is_local(addr.ip()) {
        return Err(format!(
            "{name} resolves to {}, an address of this host or its link: refused (DNS \
             rebinding); if that is meant, grant the address itself ({addr})",
            addr.ip()
        ));
    }
    Ok(addr)
}

/// Loopback, unspecified, link-local or multicast (v4, v6, v4-mapped v6).
fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_unspecified() || v4.is_link_local() || v4.is_multicast()
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_local(IpAddr::V4(v4)),
            None => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (v6.segments()[0] & 0xffc0) == 0xfe80
            }
        },
    }
}

/// GETs `uri` from `host:port`: the status and the first 64 KiB of body.
pub async fn fetch(uri: hyper::Uri, host: String, port: u16) -> Result<(u16, Vec<u8>), String> {
    let url = uri.to_string();
    let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|err| format!("{url}: {err}"))?
        .next()
        .ok_or_else(|| format!("{url}: {host} resolves to no address"))?;
    fetch_from(addr, uri, host).await
}

/// GETs `uri` from `addr` (`host` names it in the request).
async fn fetch_from(
    addr: SocketAddr,
    uri: hyper::Uri,
    host: String,
) -> Result<(u16, Vec<u8>), String> {
    let url = uri.to_string();
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|err| format!("{url}: {err}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|err| format!("{url}: {err}"))?;
    let connection = tokio::spawn(connection);
    let authority = match (host.contains(':'), uri.port_u16()) {
        (true, Some(port)) => format!("[{host}]:{port}"),
        (true, None) => format!("[{host}]"),
        (false, Some(port)) => format!("{host}:{port}"),
        (false, None) => host.clone(),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "edgeconf-plugin")
        .body(Empty::<Bytes>::new())
        .map_err(|err| format!("{url}: {err}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| format!("{url}: {err}"))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while bytes.len() < HTTP_BODY_MAX {
        match body.frame().await {
            None => break,
            Some(Err(err)) => return Err(format!("{url}: reading the body: {err}")),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
            }
        }
    }
    bytes.truncate(HTTP_BODY_MAX);
    connection.abort();
    Ok((status, bytes))
}

impl health_check::edgeconf::plugin::health::Host for HostState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_granted_name_may_not_resolve_to_this_host_or_its_link() {
        let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 80);
        for local in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "169.254.1.1",
            "::1",
            "::ffff:127.0.0.1",
            "fe80::1",
            "224.0.0.1",
        ] {
            let refused = check_resolved("config.example", at(local)).unwrap_err();
            assert!(refused.contains("DNS rebinding"), "{local}: {refused}");
            assert!(refused.contains("grant the address itself"), "{refused}");
        }
        for outside in ["10.0.0.7", "192.168.1.2", "93.184.216.34", "2001:db8::1"] {
            assert_eq!(
                check_resolved("config.example", at(outside)),
                Ok(at(outside))
            );
        }
        assert_eq!(
            check_resolved("LocalHost", at("127.0.0.1")),
            Ok(at("127.0.0.1"))
        );
    }

    #[tokio::test]
    async fn granted_addresses_are_used_as_they_are() {
        assert_eq!(
            resolve_granted("[::1]", 8080).await,
            Ok("[::1]:8080".parse().unwrap())
        );
        assert_eq!(
            resolve_granted("127.0.0.1", 1).await,
            Ok("127.0.0.1:1".parse().unwrap())
        );
    }
}
