//! The gateway over real sockets, against its built-in simulator: SSE streams as a browser's
//! EventSource sees them, sharing, late joiners, Last-Event-ID replay, DELETE, slow
//! subscribers, upstream loss, bad input, limits, and SIGTERM.

use crate::support::*;
use serde_json::{Value as Json, json};
use std::collections::HashSet;
use std::time::Duration;

/// Two series (one per region), 1 s resolution.
const PROGRAM: &str = "data('cpu.utilization').mean(by=['region']).publish('A')";

pub fn stream_path(params: &[(&str, &str)]) -> String {
    let url = reqwest::Url::parse_with_params("http://x/computations/stream", params).unwrap();
    format!("{}?{}", url.path(), url.query().unwrap_or(""))
}

/// Every data point's series has had its metadata earlier in `events`.
pub fn assert_metadata_before_data(events: &[Sse]) {
    let mut known = HashSet::new();
    for e in events {
        match e.event.as_str() {
            "metadata" => {
                known.insert(e.data["tsId"].as_str().unwrap().to_owned());
            }
            "data" => {
                for p in e.data["data"].as_array().unwrap() {
                    let tsid = p["tsId"].as_str().unwrap();
                    assert!(known.contains(tsid), "data for {tsid} before its metadata");
                }
            }
            _ => {}
        }
    }
}

fn assert_ids_increase(events: &[Sse]) {
    let ids: Vec<u64> = events.iter().filter_map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "ids strictly increase: {ids:?}");
}

async fn create(gw: &Gateway, body: Json) -> (u16, Json) {
    let r = gw.post_json("/computations", body).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn a_one_shot_stream_opens_like_an_event_source_would() {
    let gw = spawn_gateway(test_settings()).await;
    let mut stream = gw.sse(&stream_path(&[("program", PROGRAM), ("start", "-5s")]), None).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    assert_eq!(stream.headers["cache-control"], "no-cache");
    assert_eq!(stream.headers["x-accel-buffering"], "no");
    assert!(stream.headers.get("content-encoding").is_none(), "never compressed");
    let events = stream.until_data(7).await;
    assert_eq!((events[0].event.as_str(), events[0].data["event"].as_str()), ("control-message", Some("JOB_START")));
    assert_metadata_before_data(&events);
    assert_ids_increase(&events);
    let data: Vec<&Sse> = events.iter().filter(|e| e.event == "data").collect();
    assert!(data.iter().all(|e| e.data["data"].as_array().unwrap().len() == 2), "one merged batch per timestamp");
    let ts = data_timestamps(&events);
    assert!(ts.windows(2).all(|w| w[1] == w[0] + 1000), "{ts:?}");
    gw.stop().await;
}

#[tokio::test]
async fn identical_requests_share_one_upstream_job_unless_asked_not_to() {
    let gw = spawn_gateway(test_settings()).await;
    let (s1, c1) = create(&gw, json!({"program": PROGRAM})).await;
    let (s2, c2) = create(&gw, json!({"program": format!("{PROGRAM}\n\n")})).await;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(c1["id"], c2["id"]);
    assert_eq!(gw.get_json("/_sim/jobs").await.as_array().unwrap().len(), 1);
    let (s3, c3) = create(&gw, json!({"program": PROGRAM, "share": false})).await;
    assert_eq!(s3, 201);
    assert_ne!(c3["id"], c1["id"]);
    assert_eq!(gw.get_json("/_sim/jobs").await.as_array().unwrap().len(), 2);
    let listed = gw.get_json("/computations").await;
    assert_eq!(listed["computations"].as_array().unwrap().len(), 2);
    let path = format!("/computations/{}", c1["id"].as_str().unwrap());
    // The resolution is reported after the job's first interval.
    eventually("resolution known", || async { gw.get_json(&path).await["resolutionMs"] == 1000 }).await;
    let read = gw.get_json(&path).await;
    assert_eq!(read["sharedBy"], 1);
    assert_eq!(read["status"], "running");
    gw.stop().await;
}

#[tokio::test]
async fn a_late_joiner_gets_the_metadata_before_any_data() {
    let mut settings = test_settings();
    // A small ring evicts the original metadata events: the joiner needs the snapshot.
    settings.limits.replay_events = 4;
    let gw = spawn_gateway(settings).await;
    let (_, c) = create(&gw, json!({"program": PROGRAM})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    let mut first = gw.sse(&format!("/computations/{id}/events"), None).await;
    first.until_data(6).await;
    let mut late = gw.sse(&format!("/computations/{id}/events"), None).await;
    let events = late.until_data(2).await;
    assert_metadata_before_data(&events);
    let snapshot: Vec<&Sse> = events.iter().take_while(|e| e.event == "metadata").collect();
    assert_eq!(snapshot.len(), 2, "both series' metadata first: {events:?}");
    assert!(snapshot.iter().all(|e| e.id.is_none()), "snapshot events carry no id");
    gw.stop().await;
}

#[tokio::test]
async fn last_event_id_replays_exactly_the_missed_events() {
    let gw = spawn_gateway(test_settings()).await;
    let (_, c) = create(&gw, json!({"program": PROGRAM, "start": "-40s", "stop": "-10s"})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    let all = gw.sse(&format!("/computations/{id}/events"), None).await.rest().await;
    assert!(is_terminal(all.last().unwrap()), "{:?}", all.last());
    assert_eq!(data_timestamps(&all).len(), 30);
    let cut = all[12].id.unwrap();
    let resumed = gw.sse(&format!("/computations/{id}/events"), Some(cut)).await.rest().await;
    let replayed: Vec<(u64, &str, &Json)> =
        resumed.iter().filter_map(|e| e.id.map(|i| (i, e.event.as_str(), &e.data))).collect();
    let expected: Vec<(u64, &str, &Json)> =
        all.iter().filter_map(|e| e.id.filter(|i| *i > cut).map(|i| (i, e.event.as_str(), &e.data))).collect();
    assert_eq!(replayed, expected);
    assert_metadata_before_data(&resumed);
    // Seen everything: nothing more will come, so a browser must stop reconnecting.
    let last = all.last().unwrap().id.unwrap();
    let done = gw
        .http
        .get(gw.url(&format!("/computations/{id}/events")))
        .header("last-event-id", last.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 204);
    // The query-parameter form is the same.
    let by_query = gw.sse(&format!("/computations/{id}/events?lastEventId={cut}"), None).await.rest().await;
    assert_eq!(by_query.iter().filter(|e| e.id.is_some()).count(), expected.len());
    gw.stop().await;
}

#[tokio::test]
async fn an_id_older_than_the_ring_gets_replay_incomplete_and_the_state() {
    let mut settings = test_settings();
    settings.limits.replay_events = 5;
    let gw = spawn_gateway(settings).await;
    let (_, c) = create(&gw, json!({"program": PROGRAM, "start": "-40s", "stop": "-10s"})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    gw.sse(&format!("/computations/{id}/events"), None).await.rest().await;
    let events = gw.sse(&format!("/computations/{id}/events"), Some(1)).await.rest().await;
    let notice = events.iter().find(|e| e.event == "gateway").expect("a gateway notice");
    assert_eq!(notice.data["event"], "REPLAY_INCOMPLETE");
    assert!(notice.data["oldestId"].as_u64().unwrap() > 2);
    assert_eq!(notice.data["status"], "ENDED");
    assert!(is_terminal(events.last().unwrap()));
    gw.stop().await;
}

#[tokio::test]
async fn delete_ends_every_stream_with_the_reason() {
    let gw = spawn_gateway(test_settings()).await;
    let (_, c) = create(&gw, json!({"program": PROGRAM})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    let mut a = gw.sse(&format!("/computations/{id}/events"), None).await;
    let mut b = gw.sse(&format!("/computations/{id}/events"), None).await;
    a.until_data(1).await;
    b.until_data(1).await;
    let r = gw.http.delete(gw.url(&format!("/computations/{id}?reason=maintenance%20window"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The answer does not wait for the service to confirm the stop.
    let body: Json = r.json().await.unwrap();
    assert!(matches!(body["status"].as_str(), Some("stopping" | "aborted")), "{body}");
    for stream in [&mut a, &mut b] {
        let rest = stream.rest().await;
        let last = rest.last().unwrap();
        assert_eq!(last.data["event"], "CHANNEL_ABORT");
        assert_eq!(last.data["abortInfo"]["sf_job_abortReason"], "maintenance window");
    }
    let read = gw.get_json(&format!("/computations/{id}")).await;
    assert_eq!((&read["status"], &read["abort"]["reason"]), (&json!("aborted"), &json!("maintenance window")));
    let again = gw.http.delete(gw.url(&format!("/computations/{id}"))).send().await.unwrap();
    assert_eq!(again.status(), 409);
    eventually("the upstream job is gone", || async { gw.get_json("/_sim/jobs").await.as_array().unwrap().is_empty() })
        .await;
    gw.stop().await;
}

#[tokio::test]
async fn a_stalled_subscriber_is_dropped_without_slowing_a_fast_one() {
    let mut settings = test_settings();
    settings.limits.subscriber_queue = 32;
    settings.stream.heartbeat = Duration::from_millis(300);
    // The default linger: when the fast client is dropped as too slow too, its reconnect must find
    // the computation still there, however loaded the machine (500 ms was not always enough).
    settings.stream.linger = Duration::from_secs(10);
    let gw = spawn_gateway(settings).await;
    // ~3,000 batches of 48 points (~7 MB): more than the stalled client's socket buffers hold.
    let body = json!({"program": "data('cpu.utilization').publish()", "start": "-3010s", "stop": "-10s"});
    let (_, c) = create(&gw, body).await;
    let id = c["id"].as_str().unwrap().to_owned();
    // The stalled client: a raw socket that sends its request and never reads.
    let mut stalled = tokio::net::TcpStream::connect(gw.base.trim_start_matches("http://")).await.unwrap();
    let request = format!("GET /computations/{id}/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stalled, request.as_bytes()).await.unwrap();
    // The fast client may itself be disconnected during the burst (this is a debug build) and,
    // like an EventSource, resumes with Last-Event-ID: it still gets every timestamp once.
    let (events, _reconnects) = gw.sse_following(&format!("/computations/{id}/events")).await;
    let ts = data_timestamps(&events);
    let notices: Vec<&Sse> = events.iter().filter(|e| e.event == "gateway").collect();
    assert_eq!(ts.len(), 3000, "ended with {:?}; notices {notices:?}", events.last());
    assert!(ts.windows(2).all(|w| w[1] == w[0] + 1000));
    assert_eq!(events.last().unwrap().data["event"], "END_OF_CHANNEL");
    // The stalled one was disconnected, not waited for.
    let read = gw.get_json(&format!("/computations/{id}")).await;
    assert_eq!(read["subscribers"], 0);
    let mut drained = Vec::new();
    let _ = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut drained)).await;
    let text = String::from_utf8_lossy(&drained);
    assert!(!text.contains("END_OF_CHANNEL"), "the stalled client never got the end");
    gw.stop().await;
}

#[tokio::test]
async fn killed_upstream_sockets_show_notices_and_no_duplicate_timestamp() {
    let gw = spawn_gateway(test_settings()).await;
    let mut stream = gw.sse(&stream_path(&[("program", PROGRAM)]), None).await;
    let mut events = stream.until_data(2).await;
    assert!(gw.post_json("/_sim/connections/kill", json!({})).await.status().is_success());
    let mut resumed = false;
    let mut after = 0;
    while !(resumed && after >= 2) {
        let e = stream.next().await.expect("the stream continues");
        resumed |= e.event == "gateway" && e.data["event"] == "UPSTREAM_RESUMED";
        after += usize::from(resumed && e.event == "data");
        events.push(e);
    }
    let kinds: Vec<&str> =
        events.iter().filter(|e| e.event == "gateway").map(|e| e.data["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["UPSTREAM_DISCONNECTED", "UPSTREAM_RESUMED"]);
    let notice = events.iter().find(|e| e.data["event"] == "UPSTREAM_RESUMED").unwrap();
    assert_eq!(notice.data["gapMs"], 0);
    let ts = data_timestamps(&events);
    assert!(ts.windows(2).all(|w| w[1] == w[0] + 1000), "no duplicate and no hole: {ts:?}");
    gw.stop().await;
}

#[tokio::test]
async fn limits_on_computations_and_subscribers_answer_429() {
    let mut settings = test_settings();
    settings.limits.max_computations = 2;
    settings.limits.max_subscribers_per_computation = 1;
    let gw = spawn_gateway(settings).await;
    let (_, c) = create(&gw, json!({"program": PROGRAM})).await;
    create(&gw, json!({"program": PROGRAM, "share": false})).await;
    let r = gw.post_json("/computations", json!({"program": PROGRAM, "share": false})).await;
    assert_eq!(r.status(), 429);
    // Sharing still works at the limit: it starts nothing.
    assert_eq!(gw.post_json("/computations", json!({"program": PROGRAM})).await.status(), 200);
    let id = c["id"].as_str().unwrap();
    let mut first = gw.sse(&format!("/computations/{id}/events"), None).await;
    first.until_data(1).await;
    let second = gw.http.get(gw.url(&format!("/computations/{id}/events"))).send().await.unwrap();
    assert_eq!(second.status(), 429);
    gw.stop().await;
}

#[tokio::test]
async fn metadata_endpoints_serve_the_cache() {
    let gw = spawn_gateway(test_settings()).await;
    let (_, c) = create(&gw, json!({"program": PROGRAM})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    eventually("metadata cached", || async {
        gw.get_json(&format!("/computations/{id}/metadata")).await["series"].as_array().unwrap().len() == 2
    })
    .await;
    let all = gw.get_json(&format!("/computations/{id}/metadata")).await;
    let first = &all["series"][0];
    let one = gw.get_json(&format!("/computations/{id}/metadata/{}", first["tsId"].as_str().unwrap())).await;
    assert_eq!(&one, first);
    assert_eq!(one["properties"]["sf_streamLabel"], "A");
    gw.stop().await;
}

#[tokio::test]
async fn sigterm_with_open_streams_exits_zero_promptly() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_signalflow-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().expect("a listening line");
        if let Some(rest) = line.strip_prefix("signalflow-gateway listening on ") {
            break rest.to_owned();
        }
    };
    let gw_client = reqwest::Client::new();
    let url = format!("{addr}{}", stream_path(&[("program", PROGRAM)]));
    let response = gw_client.get(url).header("accept", "text/event-stream").send().await.unwrap();
    let mut stream = {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        response.bytes_stream().eventsource().boxed()
    };
    loop {
        let e = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut stream)).await.unwrap().unwrap().unwrap();
        if e.event == "data" {
            break;
        }
    }
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut last = None;
    while let Ok(Some(Ok(e))) = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut stream)).await {
        last = Some(e);
    }
    let last = last.expect("events after SIGTERM");
    assert_eq!(last.event, "gateway");
    assert!(last.data.contains("SHUTTING_DOWN"), "{}", last.data);
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exits in bounded time").unwrap();
    assert!(status.success(), "{status:?}");
}
