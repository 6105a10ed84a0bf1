//! Opening a websocket to the SignalFlow service: the URL (from a realm or given in full), an
//! optional HTTP CONNECT egress proxy, TLS with rustls (webpki roots plus the platform's), and
//! the websocket handshake — all inside the connect timeout.

use base64::Engine;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest proxy response header accepted.
const MAX_PROXY_RESPONSE: usize = 8 * 1024;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("invalid upstream URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("timed out after {0:?} connecting")]
    Timeout(Duration),
    #[error("connecting: {0}")]
    Io(#[from] std::io::Error),
    #[error("proxy refused the tunnel: {0}")]
    Proxy(String),
    #[error("websocket handshake: {0}")]
    Handshake(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// The websocket URL for a realm (`us0`, `us1`, `eu0`, …).
pub fn url_for_realm(realm: &str) -> String {
    format!("wss://stream.{realm}.signalfx.com/v2/signalflow/connect")
}

/// Completes a user-given URL: a bare host gets `/v2/signalflow/connect`, a base ending in
/// `/v2/signalflow` gets `/connect`; `http(s)` schemes become `ws(s)`.
pub fn normalize_url(url: &str) -> Result<String, DialError> {
    let bad = |reason: &str| DialError::Url { url: url.to_owned(), reason: reason.to_owned() };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("missing scheme (ws:// or wss://)"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        _ => return Err(bad("scheme must be ws, wss, http or https")),
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if authority.is_empty() {
        return Err(bad("missing host"));
    }
    let path = path.trim_end_matches('/');
    let path = if path.is_empty() {
        "v2/signalflow/connect".to_owned()
    } else if path.ends_with("v2/signalflow") {
        format!("{path}/connect")
    } else {
        path.to_owned()
    };
    let full = format!("{scheme}://{authority}/{path}");
    full.parse::<Uri>().map_err(|e| bad(&e.to_string()))?;
    Ok(full)
}

/// How to dial.
#[derive(Debug, Clone)]
pub struct DialOptions {
    pub url: String,
    pub connect_timeout: Duration,
    pub max_message_bytes: usize,
    /// `http://[user:pass@]host:port`; `None` consults `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`.
    pub proxy: Option<String>,
    pub user_agent: String,
}

/// Opens the websocket (TCP, proxy tunnel, TLS, handshake) within the connect timeout.
pub async fn dial(options: &DialOptions) -> Result<WsStream, DialError> {
    tokio::time::timeout(options.connect_timeout, dial_inner(options))
        .await
        .map_err(|_| DialError::Timeout(options.connect_timeout))?
}

async fn dial_inner(options: &DialOptions) -> Result<WsStream, DialError> {
    let bad = |reason: &str| DialError::Url { url: options.url.clone(), reason: reason.to_owned() };
    let uri: Uri =
        options.url.parse().map_err(|e: tokio_tungstenite::tungstenite::http::uri::InvalidUri| bad(&e.to_string()))?;
    let secure = uri.scheme_str() == Some("wss");
    let host = uri.host().ok_or_else(|| bad("missing host"))?.to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let mut request = options.url.as_str().into_client_request()?;
    if let Ok(agent) = HeaderValue::from_str(&options.user_agent) {
        request.headers_mut().insert("user-agent", agent);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(options.max_message_bytes))
        .max_frame_size(Some(options.max_message_bytes));
    let proxy = options.proxy.clone().or_else(|| proxy_from_env(secure, &host));
    let tcp = match proxy.as_deref().filter(|p| !p.is_empty() && *p != "none") {
        Some(proxy) => tunnel(proxy, &host, port).await?,
        None => TcpStream::connect((host.as_str(), port)).await?,
    };
    tcp.set_nodelay(true)?;
    let connector = if secure { Some(Connector::Rustls(tls_config()?)) } else { None };
    let (ws, _response) =
        tokio_tungstenite::client_async_tls_with_config(request, tcp, Some(config), connector).await?;
    Ok(ws)
}

/// The rustls client configuration: webpki roots plus the platform's certificate store, built
/// once with an explicit crypto provider (no process-wide default needed).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, DialError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            tracing::debug!(platform_roots = added, "loaded TLS roots");
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(DialError::Tls)
}

/// `HTTPS_PROXY` (for wss) or `HTTP_PROXY` (for ws), upper or lower case, unless `NO_PROXY`
/// names the host (a suffix match, `*` for every host).
fn proxy_from_env(secure: bool, host: &str) -> Option<String> {
    let get = |name: &str| std::env::var(name).or_else(|_| std::env::var(name.to_lowercase())).ok();
    let proxy = if secure { get("HTTPS_PROXY") } else { get("HTTP_PROXY") }.or_else(|| get("ALL_PROXY"))?;
    let no_proxy = get("NO_PROXY").unwrap_or_default();
    let bypass = no_proxy.split(',').map(str::trim).filter(|s| !s.is_empty()).any(|entry| {
        let entry = entry.trim_start_matches('.');
        entry == "*" || host == entry || host.ends_with(&format!(".{entry}"))
    });
    (!bypass).then_some(proxy)
}

/// Opens a TCP connection through an HTTP CONNECT proxy.
async fn tunnel(proxy: &str, host: &str, port: u16) -> Result<TcpStream, DialError> {
    let uri: Uri = proxy.parse().map_err(|_| DialError::Proxy(format!("invalid proxy URL {:?}", redact(proxy))))?;
    let proxy_host = uri.host().ok_or_else(|| DialError::Proxy("proxy URL has no host".into()))?;
    let proxy_port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let mut stream = TcpStream::connect((proxy_host, proxy_port)).await?;
    let mut request = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    if let Some((userinfo, _)) = uri.authority().map(|a| a.as_str()).and_then(|a| a.rsplit_once('@')) {
        let encoded = base64::engine::general_purpose::STANDARD.encode(userinfo);
        request.push_str(&format!("Proxy-Authorization: Basic {encoded}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    // Byte by byte so nothing after the header (the tunnelled TLS) is consumed.
    while !response.ends_with(b"\r\n\r\n") {
        if response.len() >= MAX_PROXY_RESPONSE {
            return Err(DialError::Proxy("response header too long".into()));
        }
        if stream.read(&mut byte).await? == 0 {
            return Err(DialError::Proxy("proxy closed the connection".into()));
        }
        response.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&response);
    let status_line = status_line.lines().next().unwrap_or("");
    match status_line.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(stream),
        _ => Err(DialError::Proxy(status_line.to_owned())),
    }
}

/// A proxy URL without its credentials, for messages.
pub fn redact(url: &str) -> String {
    match url.split_once("://").and_then(|(s, rest)| rest.rsplit_once('@').map(|(_, host)| (s, host))) {
        Some((scheme, host)) => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_completed_the_way_each_client_builds_them() {
        assert_eq!(url_for_realm("us1"), "wss://stream.us1.signalfx.com/v2/signalflow/connect");
        assert_eq!(normalize_url("ws://127.0.0.1:9090").unwrap(), "ws://127.0.0.1:9090/v2/signalflow/connect");
        assert_eq!(normalize_url("wss://h/v2/signalflow").unwrap(), "wss://h/v2/signalflow/connect");
        assert_eq!(normalize_url("https://h/v2/signalflow/").unwrap(), "wss://h/v2/signalflow/connect");
        assert_eq!(normalize_url("ws://h:1/connect").unwrap(), "ws://h:1/connect");
        assert!(normalize_url("h:1").is_err());
        assert!(normalize_url("ftp://h").is_err());
        assert!(normalize_url("ws:///x").is_err());
    }

    #[test]
    fn proxy_credentials_are_redacted() {
        assert_eq!(redact("http://user:secret@proxy:3128"), "http://***@proxy:3128");
        assert_eq!(redact("http://proxy:3128"), "http://proxy:3128");
    }
}
