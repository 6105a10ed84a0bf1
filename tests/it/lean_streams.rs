//! The lean event-stream path (`http::serve`), over raw sockets: the same answers as hyper's
//! path for the same requests (API keys, CORS, request ids, the problem format, the request
//! counters), keep-alive after it, and a stream whose client stops reading closed after
//! `connections.stall_timeout`.

use crate::support::*;
use secrecy::SecretString;
use serde_json::{Value as Json, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "lean-path-test-key-0123456789";
const ORIGIN: &str = "https://app.example.com";

fn settings(lean: bool) -> signalflow_gateway::config::Settings {
    let mut s = test_settings();
    s.connections.lean_streams = lean;
    s.auth.api_keys = vec![SecretString::from(KEY)];
    s.cors.allowed_origins = vec![ORIGIN.to_owned()];
    s
}

/// A response read off a socket: status, headers (names lower-case) and the body (de-chunked
/// for sized answers; the raw bytes read so far for streams).
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Reads one response head, then its body: `content-length` bytes, or for a chunked stream
/// until the bytes read contain `until`.
async fn read_response(stream: &mut TcpStream, leftover: &mut Vec<u8>, until: &str) -> Raw {
    let read = async {
        let head_end = loop {
            if let Some(at) = leftover.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a response head: {:?}", String::from_utf8_lossy(leftover));
            leftover.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8(leftover[..head_end].to_vec()).unwrap();
        leftover.drain(..head_end);
        let mut lines = head.lines();
        let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> =
            lines.filter_map(|l| l.split_once(": ")).map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned())).collect();
        let length = headers.iter().find(|(n, _)| n == "content-length").map(|(_, v)| v.parse::<usize>().unwrap());
        let done = |bytes: &[u8]| match length {
            Some(n) => bytes.len() >= n,
            None => String::from_utf8_lossy(bytes).contains(until),
        };
        while !done(leftover) {
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed in a body");
            leftover.extend_from_slice(&buf[..n]);
        }
        let body: Vec<u8> = match length {
            Some(n) => leftover.drain(..n).collect(),
            None => std::mem::take(leftover),
        };
        Raw { status, headers, body }
    };
    tokio::time::timeout(WAIT, read).await.expect("a response in time")
}

/// Sends `request` on a new connection and reads the response.
async fn exchange(gw: &Gateway, request: &str, until: &str) -> Raw {
    let mut stream = TcpStream::connect(gw.base.trim_start_matches("http://")).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(&mut stream, &mut Vec::new(), until).await
}

fn stream_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\nOrigin: {ORIGIN}\r\nX-Request-Id: lean-parity-1\r\n{extra}\r\n"
    )
}

/// What a client sees from one gateway for the stream requests below, and what `/metrics`
/// counted for them.
async fn observe(lean: bool) -> Vec<(String, u16, Vec<(String, String)>, Option<Json>)> {
    let gw = spawn_gateway(settings(lean)).await;
    let created = gw
        .http
        .post(gw.url("/computations"))
        .bearer_auth(KEY)
        .json(&json!({"program": "data('cpu.utilization').publish()"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Json>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let events = format!("/computations/{id}/events");
    let cases = [
        ("no key", stream_request(&events, "")),
        ("wrong key", stream_request(&events, "Authorization: Bearer not-the-key-at-all-000\r\n")),
        (
            "unknown computation",
            stream_request("/computations/nope/events", &format!("Authorization: Bearer {KEY}\r\n")),
        ),
        ("bad Last-Event-ID", stream_request(&events, &format!("Authorization: Bearer {KEY}\r\nLast-Event-ID: x\r\n"))),
        ("stream, key in the query", stream_request(&format!("{events}?access_token={KEY}"), "")),
    ];
    let mut seen = Vec::new();
    for (name, request) in cases {
        let raw = exchange(&gw, &request, "retry: ").await;
        let headers: Vec<(String, String)> = [
            "content-type",
            "cache-control",
            "x-accel-buffering",
            "x-request-id",
            "access-control-allow-origin",
            "vary",
            "www-authenticate",
            "transfer-encoding",
            "content-length",
        ]
        .iter()
        .filter_map(|h| raw.header(h).map(|v| (h.to_string(), v.to_owned())))
        .collect();
        assert!(raw.header("date").is_some(), "{name}: a Date header");
        let body = (raw.status != 200).then(|| serde_json::from_slice(&raw.body).unwrap());
        if raw.status == 200 {
            assert!(String::from_utf8_lossy(&raw.body).contains("retry: "), "{name}: the stream's prelude");
        }
        seen.push((name.to_owned(), raw.status, headers, body));
    }
    let metrics = gw.http.get(gw.url("/metrics")).bearer_auth(KEY).send().await.unwrap().text().await.unwrap();
    let mut counted: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("sfgw_http_requests_total{") && l.contains("/events"))
        .map(str::to_owned)
        .collect();
    counted.sort();
    seen.push(("counted".to_owned(), 0, counted.into_iter().map(|l| (l, String::new())).collect(), None));
    let lean_streams = metrics
        .lines()
        .find(|l| l.starts_with("sfgw_lean_streams_total "))
        .expect("the lean stream counter")
        .to_owned();
    // Every one of the five was answered by the path under test, not by hyper on both runs.
    let expected = if lean { " 5" } else { " 0" };
    assert!(lean_streams.ends_with(expected), "{lean_streams}");
    gw.stop().await;
    seen
}

#[tokio::test]
async fn a_stream_request_gets_the_same_answer_on_the_lean_path_as_from_hyper() {
    let lean = observe(true).await;
    let hyper = observe(false).await;
    let statuses: Vec<u16> = lean.iter().map(|s| s.1).collect();
    assert_eq!(statuses, [401, 403, 404, 400, 200, 0]);
    for (l, h) in lean.iter().zip(&hyper) {
        assert_eq!(l, h, "{}: the lean path answers as hyper does", l.0);
    }
    // What the parity covers, spelled out: CORS, the request id, the problem format.
    let (_, _, headers, body) = &lean[0];
    assert!(headers.contains(&("access-control-allow-origin".to_owned(), ORIGIN.to_owned())), "{headers:?}");
    assert!(headers.contains(&("x-request-id".to_owned(), "lean-parity-1".to_owned())), "{headers:?}");
    assert!(headers.contains(&("content-type".to_owned(), "application/problem+json".to_owned())), "{headers:?}");
    assert_eq!(body.as_ref().unwrap()["status"], 401);
    let (_, _, headers, _) = &lean[4];
    assert!(headers.contains(&("transfer-encoding".to_owned(), "chunked".to_owned())), "{headers:?}");
    assert!(headers.contains(&("content-type".to_owned(), "text/event-stream".to_owned())), "{headers:?}");
}

#[tokio::test]
async fn after_a_lean_answer_the_connection_serves_the_next_request() {
    let gw = spawn_gateway(settings(true)).await;
    let mut stream = TcpStream::connect(gw.base.trim_start_matches("http://")).await.unwrap();
    // Two requests in one write: the second is read with the first's head and kept for hyper.
    let first = stream_request("/computations/nope/events", &format!("Authorization: Bearer {KEY}\r\n"));
    let second = "GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n";
    stream.write_all(format!("{first}{second}").as_bytes()).await.unwrap();
    let mut leftover = Vec::new();
    let not_found = read_response(&mut stream, &mut leftover, "").await;
    assert_eq!(not_found.status, 404);
    let health = read_response(&mut stream, &mut leftover, "").await;
    assert_eq!(health.status, 200, "{:?}", String::from_utf8_lossy(&health.body));
    // And a third, sent after the answers, on the same connection.
    stream.write_all(second.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut stream, &mut leftover, "").await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn a_lean_stream_whose_client_stops_reading_is_closed_after_the_stall_timeout() {
    let mut s = settings(true);
    s.connections.stall_timeout = Duration::from_millis(500);
    // Neither the hub's stall policy (two heartbeats) nor its queue bound closes the socket:
    // only the write timeout can.
    s.stream.heartbeat = Duration::from_secs(60);
    s.limits.subscriber_queue = 8192;
    let gw = spawn_gateway(s).await;
    // ~3,000 batches (~7 MB): far more than the socket buffers hold.
    let body = json!({"program": "data('cpu.utilization').publish()", "start": "-3010s", "stop": "-10s"});
    let created = gw.http.post(gw.url("/computations")).bearer_auth(KEY).json(&body).send().await.unwrap();
    let id = created.json::<Json>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(gw.base.trim_start_matches("http://").parse().unwrap()).await.unwrap();
    let request = stream_request(&format!("/computations/{id}/events"), &format!("Authorization: Bearer {KEY}\r\n"));
    stalled.write_all(request.as_bytes()).await.unwrap();
    let stalled_closes = || async {
        let metrics = gw.http.get(gw.url("/metrics")).bearer_auth(KEY).send().await.unwrap().text().await.unwrap();
        metrics.lines().any(|l| l == "sfgw_lean_streams_stalled_total 1")
    };
    eventually("the stalled stream is closed by the write timeout", stalled_closes).await;
    eventually("its subscription is gone", || async {
        let read = gw.http.get(gw.url(&format!("/computations/{id}"))).bearer_auth(KEY).send().await.unwrap();
        read.json::<Json>().await.unwrap()["subscribers"] == 0
    })
    .await;
    // The client finds the connection closed, the stream cut short (no final chunk).
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, stalled.read_to_end(&mut got)).await.expect("the server closed the socket");
    assert!(!got.ends_with(b"0\r\n\r\n"), "the stream was cut, not ended");
    gw.stop().await;
}

#[tokio::test]
async fn a_kept_alive_connection_takes_stream_after_stream_on_the_lean_path_then_hands_over() {
    let gw = spawn_gateway(settings(true)).await;
    let mut stream = TcpStream::connect(gw.base.trim_start_matches("http://")).await.unwrap();
    let mut leftover = Vec::new();
    // A bounded stream (its range is in the past): it ends, with the last chunk, on a
    // connection that stays open; then the same request again, as a reconnecting client sends.
    let path = "/computations/stream?program=data(%27cpu.utilization%27).publish()&start=-20s&stop=-10s";
    let request = stream_request(path, &format!("Authorization: Bearer {KEY}\r\n"));
    for _ in 0..2 {
        stream.write_all(request.as_bytes()).await.unwrap();
        let raw = read_response(&mut stream, &mut leftover, "\r\n0\r\n\r\n").await;
        assert_eq!(raw.status, 200);
        assert_eq!(raw.header("transfer-encoding"), Some("chunked"));
        let body = String::from_utf8_lossy(&raw.body).into_owned();
        assert!(body.ends_with("\r\n0\r\n\r\n"), "the stream ends with the last chunk: {body}");
        assert!(body.contains("END_OF_CHANNEL"), "{body}");
    }
    // Then a plain request: hyper's, on the same connection.
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut stream, &mut leftover, "").await.status, 200);
    let metrics = gw.http.get(gw.url("/metrics")).bearer_auth(KEY).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "sfgw_lean_streams_total 2"), "both streams were lean:\n{metrics}");
    gw.stop().await;
}

#[tokio::test]
async fn a_request_head_that_never_completes_is_closed_after_the_head_timeout() {
    let mut s = settings(true);
    s.connections.head_timeout = Duration::from_millis(300);
    let gw = spawn_gateway(s).await;
    for lean_path in [true, false] {
        let mut stream = TcpStream::connect(gw.base.trim_start_matches("http://")).await.unwrap();
        // The lean path holds a head that could still become an event stream; hyper gets one
        // that cannot (another method).
        let start: &[u8] = if lean_path {
            b"GET /computations/x/events HTTP/1.1\r\nAccept: text/event-stream\r\n"
        } else {
            b"POST /computations HTTP/1.1\r\n"
        };
        stream.write_all(start).await.unwrap();
        let mut got = Vec::new();
        let closed = tokio::time::timeout(WAIT, stream.read_to_end(&mut got)).await;
        assert!(closed.is_ok(), "lean path {lean_path}: the connection was not closed");
    }
    gw.stop().await;
}

#[tokio::test]
async fn an_empty_content_length_is_hypers_to_refuse() {
    let gw = spawn_gateway(settings(true)).await;
    let request =
        stream_request("/computations/nope/events", &format!("Authorization: Bearer {KEY}\r\nContent-Length:\r\n"));
    let raw = exchange(&gw, &request, "").await;
    assert_eq!(raw.status, 400, "{:?}", String::from_utf8_lossy(&raw.body));
    gw.stop().await;
}
