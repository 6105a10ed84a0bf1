//! TLS on the gateway and the simulator, with a throwaway CA made for each test: HTTPS and WSS
//! on the gateway's one port, HTTP/2 by ALPN with several SSE computations streaming over one
//! connection, a certificate reload, and the simulator serving `wss://`.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use signalflow_gateway::protocol::messages::ServerMessage;
use signalflow_gateway::tls::{self, SelfSigned};
use std::path::PathBuf;
use std::sync::Arc;

/// A fresh CA and server certificate for localhost / 127.0.0.1, written under `target/`.
pub struct TestCa {
    pub dir: PathBuf,
    pub set: SelfSigned,
}

impl TestCa {
    pub fn new() -> Self {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/test-tls")
            .join(format!("{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let set = tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
        std::fs::write(dir.join("ca.pem"), &set.ca_pem).unwrap();
        std::fs::write(dir.join("cert.pem"), &set.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &set.key_pem).unwrap();
        TestCa { dir, set }
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A rustls client trusting only this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = rustls::pki_types::CertificateDer::from_pem_slice(self.set.ca_pem.as_bytes()).unwrap();
        roots.add(ca).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    pub fn reqwest(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.set.ca_pem.as_bytes()).unwrap();
        reqwest::Client::builder().tls_certs_only([ca]).build().unwrap()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

use rustls::pki_types::pem::PemObject;

/// A gateway serving HTTPS with `ca`'s certificate; returns it and its https base URL.
pub async fn tls_gateway(ca: &TestCa) -> (Gateway, String) {
    let mut settings = test_settings();
    settings.tls.cert_file = Some(ca.file("cert.pem"));
    settings.tls.key_file = Some(ca.file("key.pem"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = signalflow_gateway::app::Application::build_with_listener(settings, listener).await.unwrap();
    assert!(app.is_tls());
    let port = app.local_addr().unwrap().port();
    let gateway = Gateway::serve(app);
    let base = format!("https://localhost:{port}");
    let client = ca.reqwest();
    eventually("gateway ready over TLS", || {
        let (client, url) = (client.clone(), format!("{base}/readyz"));
        async move { client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    (gateway, base)
}

#[tokio::test]
async fn the_gateway_serves_https_with_h2_by_alpn_and_http1_and_plain_http_is_refused() {
    let ca = TestCa::new();
    let (gateway, base) = tls_gateway(&ca).await;
    let client = ca.reqwest();
    let h2 = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!((h2.status().as_u16(), h2.version()), (200, reqwest::Version::HTTP_2));
    let h1 = ca.reqwest_http1().get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!((h1.status().as_u16(), h1.version()), (200, reqwest::Version::HTTP_11));
    // A client that does not trust the CA fails the handshake.
    assert!(reqwest::Client::new().get(format!("{base}/healthz")).send().await.is_err());
    // Plain HTTP on the TLS port is not served.
    let plain = base.replacen("https://", "http://", 1);
    assert!(reqwest::Client::new().get(format!("{plain}/healthz")).timeout(WAIT).send().await.is_err());
    gateway.stop().await;
}

impl TestCa {
    fn reqwest_http1(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.set.ca_pem.as_bytes()).unwrap();
        reqwest::Client::builder().tls_certs_only([ca]).http1_only().build().unwrap()
    }
}

/// Eight SSE computations over ONE HTTP/2 connection (a hyper h2 client on one TLS stream):
/// each streams its own data. Over HTTP/1.1 a browser would stop at six.
#[tokio::test]
async fn several_sse_computations_stream_over_one_h2_connection() {
    let ca = TestCa::new();
    let (gateway, base) = tls_gateway(&ca).await;
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(&[b"h2"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the server chose h2");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let mut streams = Vec::new();
    for i in 0..8 {
        let program = format!("data('cpu.utilization').sum().scale({}).publish('s{i}')", i + 1);
        let query: String = query_value(&program);
        let request = hyper::Request::get(format!("{base}/computations/stream?program={query}&resolution=1000"))
            .header("accept", "text/event-stream")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let mut sender = sender.clone();
        let response = tokio::time::timeout(WAIT, sender.send_request(request)).await.unwrap().unwrap();
        assert_eq!(response.status(), 200, "stream {i}");
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        streams.push(response.into_body());
    }
    // Every stream (all open at once on the one connection) delivers data.
    for (i, body) in streams.iter_mut().enumerate() {
        let mut text = String::new();
        while !text.contains("event: data\n") {
            let frame = tokio::time::timeout(WAIT, body.frame()).await.unwrap().unwrap().unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
        assert!(text.contains("event: metadata\n"), "stream {i}: {text}");
    }
    let list = ca
        .reqwest()
        .get(format!("{base}/computations"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(list["computations"].as_array().unwrap().len(), 8, "eight computations");
    gateway.stop().await;
}

#[tokio::test]
async fn websocket_clients_connect_over_wss_and_a_reload_serves_the_new_certificate() {
    let ca = TestCa::new();
    let (gateway, base) = tls_gateway(&ca).await;
    let url = base.replacen("https://", "wss://", 1) + "/v2/signalflow/connect";
    let mut client = WsClient::connect_tls(&url, ca.client_config(&[])).await;
    client.send(json!({ "type": "authenticate", "token": "t" })).await;
    assert!(matches!(client.next_message().await, ServerMessage::Authenticated(_)));
    client
        .send(json!({ "type": "execute", "channel": "c", "program": "data('cpu.utilization').max().publish()" }))
        .await;
    let first = client.next_message().await;
    assert!(matches!(first, ServerMessage::Control(_)), "{first:?}");
    gateway.stop().await;

    // Reload: a Tls whose files change serves the new certificate to new connections.
    let other = TestCa::new();
    let cert = ca.dir.join("reload-cert.pem");
    let key = ca.dir.join("reload-key.pem");
    std::fs::write(&cert, &ca.set.cert_pem).unwrap();
    std::fs::write(&key, &ca.set.key_pem).unwrap();
    let tls = tls::Tls::load(&cert, &key).unwrap();
    let sim = spawn_tls_simulator(tls.clone()).await;
    assert!(sim.ws_url().starts_with("wss://"));
    let jobs_url = format!("{}/jobs", sim.control_url().replacen("127.0.0.1", "localhost", 1));
    assert!(ca.reqwest().get(&jobs_url).send().await.unwrap().status().is_success());
    std::fs::write(&cert, &other.set.cert_pem).unwrap();
    std::fs::write(&key, &other.set.key_pem).unwrap();
    tls.reload().unwrap();
    assert!(other.reqwest().get(&jobs_url).send().await.unwrap().status().is_success(), "the new certificate");
    assert!(ca.reqwest().get(&jobs_url).send().await.is_err(), "the old CA no longer matches");
    // A broken file keeps the current certificate.
    std::fs::write(&key, "not a key").unwrap();
    assert!(tls.reload().is_err());
    assert!(other.reqwest().get(&jobs_url).send().await.unwrap().status().is_success());
    // The simulator speaks wss:// to the crate's own client.
    let ws = sim.ws_url().replacen("127.0.0.1", "localhost", 1);
    let mut client = WsClient::connect_tls(&ws, other.client_config(&[])).await;
    client.send(json!({ "type": "authenticate", "token": "t" })).await;
    assert!(matches!(client.next_message().await, ServerMessage::Authenticated(_)));
    sim.shutdown().await.unwrap();
}

/// The binary: `serve` with `tls.*` from the environment answers over HTTPS, and `kill -HUP`
/// makes it serve renewed files.
#[tokio::test]
async fn the_gateway_binary_reloads_its_certificate_on_sighup() {
    use tokio::io::AsyncBufReadExt;
    let ca = TestCa::new();
    let renewed = TestCa::new();
    let (cert, key) = (ca.dir.join("served-cert.pem"), ca.dir.join("served-key.pem"));
    std::fs::write(&cert, &ca.set.cert_pem).unwrap();
    std::fs::write(&key, &ca.set.key_pem).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_signalflow-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("SFGW_TLS__CERT_FILE", &cert)
        .env("SFGW_TLS__KEY_FILE", &key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().expect("a listening line");
        if let Some(rest) = line.strip_prefix("signalflow-gateway listening on ") {
            break rest.trim().replacen("127.0.0.1", "localhost", 1);
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    assert!(base.starts_with("https://"), "{base}");
    let healthz = format!("{base}/healthz");
    eventually("serving the first certificate", || {
        let (client, url) = (ca.reqwest(), healthz.clone());
        async move { client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    std::fs::write(&cert, &renewed.set.cert_pem).unwrap();
    std::fs::write(&key, &renewed.set.key_pem).unwrap();
    let pid = child.id().unwrap().to_string();
    let status = tokio::process::Command::new("kill").args(["-HUP", &pid]).status().await.unwrap();
    assert!(status.success());
    eventually("serving the renewed certificate", || {
        let (client, url) = (renewed.reqwest(), healthz.clone());
        async move { client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    assert!(ca.reqwest().get(&healthz).send().await.is_err(), "the old certificate is gone");
    child.kill().await.unwrap();
}
