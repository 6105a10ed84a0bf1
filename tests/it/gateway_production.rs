//! Running it for real: API keys, pass-through tenancy, CORS, `/metrics`, readiness, and a full
//! run whose logs must never contain a token or key.

use crate::support::*;
use secrecy::SecretString;
use serde_json::{Value as Json, json};
use std::collections::HashMap;

const PROGRAM: &str = "data('cpu.utilization').mean(by=['region']).publish('A')";
const KEY: &str = "k3y-0123456789abcdef";

fn empty(builder: axum::http::request::Builder) -> axum::http::Request<axum::body::Body> {
    builder.body(axum::body::Body::empty()).unwrap()
}

#[tokio::test]
async fn api_keys_are_required_when_configured_by_header_or_query() {
    let mut settings = test_settings();
    settings.auth.api_keys = vec![SecretString::from(KEY)];
    let gw = in_process_gateway(settings).await;
    let no_key = gw.get("/computations").await;
    assert_eq!(no_key.status, 401);
    assert_eq!(no_key.header("www-authenticate"), Some("Bearer"));
    assert_eq!(no_key.json()["type"], "/problems/unauthorized");
    let bearer = |key: &str| request("GET", "/computations").header("authorization", format!("Bearer {key}"));
    let wrong = gw.call(empty(bearer("k3y-0123456789abcdeX"))).await;
    assert_eq!(wrong.status, 403);
    assert_eq!(wrong.json()["type"], "/problems/forbidden");
    assert_eq!(gw.call(empty(bearer(KEY))).await.status, 200);
    // Probes stay open.
    assert_eq!(gw.get("/healthz").await.status, 200);
    // EventSource cannot send headers: the query parameter works for streams.
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("program", PROGRAM)
        .append_pair("access_token", KEY)
        .finish();
    let stream = gw.respond(empty(request("GET", &format!("/computations/stream?{query}")))).await;
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    drop(stream);
    // Compat routes are covered too.
    let compat = gw.call(request("POST", "/v2/signalflow/execute").body("data('x').publish()".into()).unwrap()).await;
    assert_eq!(compat.status, 401);
    gw.stop().await;
}

#[tokio::test]
async fn request_ids_are_kept_when_sane_and_made_otherwise() {
    let gw = in_process_gateway(test_settings()).await;
    let with_id = |id: &str| empty(request("GET", "/healthz").header("x-request-id", id));
    let kept = gw.call(with_id("trace-42")).await;
    assert_eq!(kept.header("x-request-id"), Some("trace-42"));
    // Too long, or with spaces: replaced by a new one.
    for unusable in ["x".repeat(65), "two words".to_owned()] {
        let made = gw.call(with_id(&unusable)).await;
        let id = made.header("x-request-id").unwrap();
        assert!(id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()), "{unusable:?} became {id:?}");
    }
    let a = gw.get("/healthz").await;
    let b = gw.get("/no/such/route").await;
    assert_eq!(b.status, 404);
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"), "each request has its own id");
    assert!(b.header("x-request-id").is_some(), "problem answers carry the id too");
    gw.stop().await;
}

#[tokio::test]
async fn pass_through_tenants_never_see_each_other() {
    let mut settings = test_settings();
    settings.tenancy.pass_through = true;
    let gw = spawn_gateway(settings).await;
    let as_tenant = |token: &'static str| {
        let http = gw.http.clone();
        let base = gw.base.clone();
        move |method: reqwest::Method, path: &str| {
            http.request(method, format!("{base}{path}")).header("x-sf-token", token)
        }
    };
    let a = as_tenant("token-of-tenant-a");
    let b = as_tenant("token-of-tenant-b");
    let missing = gw.post_json("/computations", json!({"program": PROGRAM})).await;
    assert_eq!(missing.status(), 401);
    let created = a(reqwest::Method::POST, "/computations").json(&json!({"program": PROGRAM})).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Json>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(a(reqwest::Method::GET, &format!("/computations/{id}")).send().await.unwrap().status(), 200);
    for (method, path) in [
        (reqwest::Method::GET, format!("/computations/{id}")),
        (reqwest::Method::GET, format!("/computations/{id}/events")),
        (reqwest::Method::GET, format!("/computations/{id}/metadata")),
        (reqwest::Method::DELETE, format!("/computations/{id}")),
    ] {
        assert_eq!(b(method.clone(), &path).send().await.unwrap().status(), 404, "{method} {path}");
    }
    let listed: Json = b(reqwest::Method::GET, "/computations").send().await.unwrap().json().await.unwrap();
    assert!(listed["computations"].as_array().unwrap().is_empty());
    // The same program for another tenant is a job of its own: sharing never crosses tenants.
    let other = b(reqwest::Method::POST, "/computations").json(&json!({"program": PROGRAM})).send().await.unwrap();
    assert_eq!(other.status(), 201);
    assert_ne!(other.json::<Json>().await.unwrap()["id"].as_str().unwrap(), id);
    assert_eq!(gw.get_json("/_sim/jobs").await.as_array().unwrap().len(), 2);
    // Each token has its own upstream pool (its own sockets).
    let connections = gw.get_json("/_sim/connections").await;
    assert!(connections.as_array().unwrap().len() >= 2, "{connections}");
    gw.stop().await;
}

#[tokio::test]
async fn cors_preflights_are_answered_for_allowed_origins_only() {
    let mut settings = test_settings();
    settings.cors.allowed_origins = vec!["https://app.example".into()];
    let gw = in_process_gateway(settings).await;
    let preflight = |origin: &str| {
        empty(
            request("OPTIONS", "/computations")
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type"),
        )
    };
    let allowed = gw.call(preflight("https://app.example")).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.header("access-control-allow-origin"), Some("https://app.example"));
    assert!(allowed.header("access-control-allow-methods").unwrap().contains("POST"));
    assert!(allowed.header("access-control-allow-headers").unwrap().contains("content-type"));
    assert_eq!(allowed.header("access-control-max-age"), Some("600"));
    // Another origin's preflight gets no allowed origin, so the browser refuses the call; the
    // request itself is never run.
    let refused = gw.call(preflight("https://evil.example")).await;
    assert!(refused.header("access-control-allow-origin").is_none());
    let simple = |origin: &str| empty(request("GET", "/computations").header("origin", origin));
    let allowed = gw.call(simple("https://app.example")).await;
    assert_eq!(allowed.header("access-control-allow-origin"), Some("https://app.example"));
    assert!(allowed.header("vary").unwrap().contains("origin"));
    let other = gw.call(simple("https://evil.example")).await;
    assert_eq!(other.status, 200);
    assert!(other.header("access-control-allow-origin").is_none());
    gw.stop().await;
}

/// `name{labels} value` lines of a Prometheus text exposition, by `name{labels}`.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("malformed line {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("malformed value in {line:?}"));
        assert!(samples.insert(key.to_owned(), value).is_none(), "duplicate sample {key}");
    }
    samples
}

#[tokio::test]
async fn a_metrics_scrape_parses_and_counts_what_happened() {
    let gw = spawn_gateway(test_settings()).await;
    let created = gw.post_json("/computations", json!({"program": PROGRAM})).await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Json>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let mut stream = gw.sse(&format!("/computations/{id}/events"), None).await;
    stream.until_data(2).await;
    let response = gw.http.get(gw.url("/metrics")).send().await.unwrap();
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let m = parse_metrics(&response.text().await.unwrap());
    assert_eq!(m[r#"sfgw_http_requests_total{method="POST",route="/computations",status="201"}"#], 1.0);
    assert_eq!(m["sfgw_sse_subscribers"], 1.0);
    assert_eq!(m[r#"sfgw_computations{state="running"}"#], 1.0);
    assert!(m["sfgw_upstream_sockets"] >= 1.0);
    assert_eq!(m["sfgw_upstream_ready"], 1.0);
    assert!(m["sfgw_upstream_job_starts_total"] >= 1.0);
    assert!(m["sfgw_events_sent_total"] >= 2.0);
    assert!(m["sfgw_fanout_latency_seconds_count"] >= 2.0);
    assert_eq!(m[r#"sfgw_fanout_latency_seconds_bucket{le="+Inf"}"#], m["sfgw_fanout_latency_seconds_count"]);
    assert_eq!(m[r#"sfgw_subscribers_dropped_total{reason="queue_full"}"#], 0.0);
    assert_eq!(m["sfgw_computations_created_total"], 1.0);
    gw.stop().await;
}

#[tokio::test]
async fn readiness_flips_when_the_upstream_goes_away_and_comes_back() {
    let gw = spawn_gateway(test_settings()).await;
    let ready = || async { gw.http.get(gw.url("/readyz")).send().await.unwrap().status().as_u16() };
    assert_eq!(ready().await, 200);
    assert!(gw.post_json("/_sim/faults", json!({"rejectAuth": true})).await.status().is_success());
    assert!(gw.post_json("/_sim/connections/kill", json!({})).await.status().is_success());
    eventually("not ready while the upstream refuses", || async { ready().await == 503 }).await;
    let body: Json = gw.http.get(gw.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["ready"], false);
    assert!(gw.http.delete(gw.url("/_sim/faults")).send().await.unwrap().status().is_success());
    eventually("ready again", || async { ready().await == 200 }).await;
    gw.stop().await;
}

#[tokio::test]
async fn tokens_and_keys_never_appear_in_logs_metrics_or_errors() {
    use tokio::io::AsyncReadExt;
    let secret_token = "UPSTREAM-T0KEN-must-not-leak";
    let secret_key = "API-KEY-must-not-leak-0123";
    let tenant_token = "TENANT-T0KEN-must-not-leak";
    let sim = spawn_default_simulator().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_signalflow-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream-url", &sim.ws_url(), "--token", secret_token])
        .env("SFGW_AUTH__API_KEYS", secret_key)
        .env("SFGW_LOG_FORMAT", "json")
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Both pipes are drained all along: at trace level the gateway writes far more than a pipe
    // holds, and a full pipe would block it.
    let drain = |mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                 tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>| {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        })
    };
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel();
    let (err_tx, mut err_rx) = tokio::sync::mpsc::unbounded_channel();
    let out_task = drain(Box::new(child.stdout.take().unwrap()), out_tx);
    let err_task = drain(Box::new(child.stderr.take().unwrap()), err_tx);
    let mut out = Vec::new();
    let addr = loop {
        let chunk = tokio::time::timeout(WAIT, out_rx.recv()).await.unwrap().expect("gateway exited");
        out.extend_from_slice(&chunk);
        let text = String::from_utf8_lossy(&out);
        if let Some(line) = text.lines().find(|l| l.starts_with("signalflow-gateway listening on ")) {
            break line.trim_start_matches("signalflow-gateway listening on ").trim().to_owned();
        }
    };
    let http = reqwest::Client::new();
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth(secret_key).header("x-sf-token", tenant_token);
    let mut seen = String::new();
    let created =
        auth(http.post(format!("{addr}/computations"))).json(&json!({"program": PROGRAM})).send().await.unwrap();
    seen.push_str(&created.text().await.unwrap());
    let bad = auth(http.post(format!("{addr}/computations")))
        .json(&json!({"program": "dta('x').publish()"}))
        .send()
        .await
        .unwrap();
    seen.push_str(&bad.text().await.unwrap());
    let wrong_key = http.get(format!("{addr}/computations?access_token={secret_key}x")).send().await.unwrap();
    seen.push_str(&wrong_key.text().await.unwrap());
    let url = format!(
        "{addr}/computations/stream?program=data(%27cpu.utilization%27).max().publish()&access_token={secret_key}"
    );
    let mut stream =
        SseClient::from_response(http.get(url).header("accept", "text/event-stream").send().await.unwrap());
    stream.until_data(1).await;
    seen.push_str(&auth(http.get(format!("{addr}/metrics"))).send().await.unwrap().text().await.unwrap());
    seen.push_str(&auth(http.get(format!("{addr}/computations"))).send().await.unwrap().text().await.unwrap());
    drop(stream);
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(tokio::time::timeout(WAIT, child.wait()).await.unwrap().unwrap().success());
    tokio::time::timeout(WAIT, out_task).await.unwrap().unwrap();
    tokio::time::timeout(WAIT, err_task).await.unwrap().unwrap();
    while let Ok(chunk) = out_rx.try_recv() {
        out.extend_from_slice(&chunk);
    }
    let mut err = Vec::new();
    while let Ok(chunk) = err_rx.try_recv() {
        err.extend_from_slice(&chunk);
    }
    let logs = format!("{}{}", String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
    assert!(logs.contains("\"request\"") || logs.contains("request"), "the run was logged:\n{logs}");
    assert!(logs.lines().count() > 20, "trace-level logs were captured");
    for secret in [secret_token, secret_key, tenant_token] {
        assert!(!logs.contains(secret), "{secret} appeared in the logs");
        assert!(!seen.contains(secret), "{secret} appeared in a response");
    }
    sim.shutdown().await.unwrap();
}
