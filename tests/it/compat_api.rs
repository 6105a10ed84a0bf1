//! The SignalFlow REST/SSE compatibility API (`/v2/signalflow/…`) at the byte level: the
//! stream's framing (`event:` and one `data: ` line, no ids), one data event per publish block,
//! the terminal message before every close, stop/keepalive/attach by handle, and errors with a
//! `Content-Type` of exactly `application/json`.

use crate::support::*;
use futures::StreamExt;
use serde_json::{Value as Json, json};
use std::pin::Pin;

/// Two publish blocks: `A` has one series per region (2), `B` a single series.
const TWO_BLOCKS: &str = "A = data('cpu.utilization').mean(by=['region']).publish('A')\n\
                          B = data('memory.utilization').max().publish('B')";
const START: i64 = 1_700_000_000_000;

/// One event as it travelled.
#[derive(Debug, Clone)]
struct Event {
    name: String,
    data: Json,
}

impl Event {
    fn control(&self) -> Option<&str> {
        (self.name == "control-message").then(|| self.data["event"].as_str()).flatten()
    }
}

/// Reads an SSE body block by block, checking the framing of each.
struct RawSse {
    body: Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: Vec<u8>,
}

impl RawSse {
    fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        RawSse { body: Box::pin(response.bytes_stream()), buffer: Vec::new() }
    }

    /// The next event (comment blocks skipped), or `None` when the server closed the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("UTF-8");
                let lines: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
                if lines.iter().all(|l| l.starts_with(':')) {
                    continue;
                }
                let [event, data] = lines[..] else { panic!("exactly `event:` and one `data:` line: {text:?}") };
                let name = event.strip_prefix("event: ").unwrap_or_else(|| panic!("event line: {text:?}"));
                let data = data.strip_prefix("data: ").unwrap_or_else(|| panic!("data line: {text:?}"));
                assert!(!data.starts_with(' '), "one space after `data:`: {text:?}");
                let data = serde_json::from_str(data).unwrap_or_else(|e| panic!("JSON data ({e}): {text:?}"));
                return Some(Event { name: name.to_owned(), data });
            }
            match tokio::time::timeout(WAIT, self.body.next()).await.expect("hang guard: no SSE bytes") {
                Some(chunk) => self.buffer.extend_from_slice(&chunk.expect("body chunk")),
                None => {
                    assert!(self.buffer.is_empty(), "a partial event at the end: {:?}", self.buffer);
                    return None;
                }
            }
        }
    }

    async fn until(&mut self, done: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            let stop = done(&e);
            out.push(e);
            if stop {
                return out;
            }
        }
        panic!("the stream ended early: {out:?}");
    }

    /// Everything up to the close, which must come right after the terminal message.
    async fn rest(&mut self) -> Vec<Event> {
        let events = self.until(|e| matches!(e.control(), Some("END_OF_CHANNEL" | "CHANNEL_ABORT"))).await;
        assert!(self.next().await.is_none(), "the stream closes after its terminal message");
        events
    }
}

fn data_sizes(events: &[Event]) -> Vec<(i64, usize)> {
    let sizes = events.iter().filter(|e| e.name == "data");
    sizes.map(|e| (e.data["logicalTimestampMs"].as_i64().unwrap(), e.data["data"].as_array().unwrap().len())).collect()
}

/// Sends with a hang guard on the answer's head only: a stream may outlive any fixed timeout
/// (`RawSse` guards each read).
async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    tokio::time::timeout(WAIT, request.send()).await.expect("hang guard: no answer").unwrap()
}

async fn execute(gw: &Gateway, query: &str, program: &str) -> reqwest::Response {
    let request = gw.http.post(gw.url(&format!("/v2/signalflow/execute{query}")));
    send(request.header("content-type", "text/plain").header("x-sf-token", "client-token").body(program.to_owned()))
        .await
}

async fn post(gw: &Gateway, path: &str) -> reqwest::Response {
    send(gw.http.post(gw.url(path))).await
}

/// An error answer: exactly `application/json`, `{"code", "message", "errorType"}`.
async fn error(response: reqwest::Response, status: u16, error_type: &str) -> Json {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Json = response.json().await.unwrap();
    assert_eq!((&body["code"], &body["errorType"]), (&json!(status), &json!(error_type)), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    body
}

#[tokio::test]
async fn compat_execute_streams_one_data_event_per_block_and_ends_with_the_channel() {
    let gw = spawn_gateway(test_settings()).await;
    // Python's parameters as it sends them; the ignored ones too.
    let query = format!(
        "?start={START}&stop={}&resolution=1000&persistent=False&immediate=False&disableAllMetricPublishes=True\
         &withDerivedMetadata=true&resolutionAdjustable=false&compress=true",
        START + 5_000
    );
    let mut stream = RawSse::new(execute(&gw, &query, TWO_BLOCKS).await);
    let events = stream.rest().await;

    assert_eq!(events[0].control(), Some("JOB_START"));
    let handle = events[0].data["handle"].as_str().unwrap();
    assert_eq!(handle.len(), 11);
    assert!(events[0].data["timestampMs"].is_i64());
    let sizes = data_sizes(&events);
    let expected: Vec<(i64, usize)> = (0..5).flat_map(|i| [(START + i * 1000, 2), (START + i * 1000, 1)]).collect();
    assert_eq!(sizes, expected, "one data event per publish block per timestamp");
    for e in events.iter().filter(|e| e.name == "data") {
        let keys: Vec<&String> = e.data.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["logicalTimestampMs", "data"]);
    }
    let metadata: Vec<&Event> = events.iter().filter(|e| e.name == "metadata").collect();
    assert_eq!(metadata.len(), 3);
    assert!(metadata.iter().all(|m| m.data["properties"]["computationId"] == handle && m.data["tsId"].is_string()));
    // The first information message follows the first timestamp's data events: the clients
    // count a timestamp's data messages up to it.
    let first_info = events.iter().position(|e| e.name == "message").unwrap();
    let second_data = events.iter().enumerate().filter(|(_, e)| e.name == "data").nth(1).unwrap().0;
    assert!(first_info > second_data, "{events:?}");
    assert!(events.iter().all(|e| e.name != "gateway"));
    let last = events.last().unwrap();
    assert_eq!(last.control(), Some("END_OF_CHANNEL"));
    assert!(last.data["timestampMs"].is_i64());

    // A JSON body works the same.
    let url = gw.url(&format!("/v2/signalflow/execute?start={START}&stop={}", START + 2_000));
    let response = send(gw.http.post(url).json(&json!({ "program": TWO_BLOCKS }))).await;
    let events = RawSse::new(response).rest().await;
    assert_eq!(events[0].control(), Some("JOB_START"));
    assert_eq!(data_sizes(&events).len(), 4);
    assert_eq!(events.last().unwrap().control(), Some("END_OF_CHANNEL"));
    gw.stop().await;
}

#[tokio::test]
async fn compat_errors_are_exactly_application_json() {
    let mut settings = test_settings();
    settings.limits.max_computations = 1;
    settings.limits.max_program_bytes = 200;
    let gw = spawn_gateway(settings).await;

    let body = error(execute(&gw, "", "dta('x').publish()").await, 400, "ANALYTICS_PROGRAM_NAME_ERROR").await;
    assert_eq!(body["message"], "Unknown function 'dta'");
    assert_eq!(body["context"], json!({ "line": 1, "column": 1 }));
    let body = error(execute(&gw, "", "").await, 400, "INVALID_REQUEST").await;
    assert!(body["message"].as_str().unwrap().contains("program"), "{body}");
    error(execute(&gw, "?immediate=maybe", TWO_BLOCKS).await, 400, "INVALID_REQUEST").await;
    error(execute(&gw, "?start=yesterday", TWO_BLOCKS).await, 400, "INVALID_REQUEST").await;
    error(execute(&gw, "", &"x".repeat(300)).await, 413, "PROGRAM_TOO_LARGE").await;
    let no_program = gw.post_json("/v2/signalflow/execute", json!({ "text": TWO_BLOCKS })).await;
    error(no_program, 400, "INVALID_REQUEST").await;
    error(send(gw.http.get(gw.url("/v2/signalflow/execute"))).await, 405, "METHOD_NOT_ALLOWED").await;
    for path in ["stop", "keepalive", "attach"] {
        let body = error(post(&gw, &format!("/v2/signalflow/AAAAAAAAAAE/{path}")).await, 404, "NOT_FOUND").await;
        assert!(body["message"].as_str().unwrap().contains("AAAAAAAAAAE"), "{body}");
    }

    // The computation limit: a second execute while the first runs is 429.
    let mut live = RawSse::new(execute(&gw, "", TWO_BLOCKS).await);
    live.until(|e| e.control() == Some("JOB_START")).await;
    error(execute(&gw, "", TWO_BLOCKS).await, 429, "LIMIT_REACHED").await;
    gw.stop().await;
}

#[tokio::test]
async fn stop_by_handle_ends_every_open_compat_stream_with_channel_abort() {
    let gw = spawn_gateway(test_settings()).await;
    let mut stream = RawSse::new(execute(&gw, "?resolution=1000", TWO_BLOCKS).await);
    let start = stream.until(|e| e.control() == Some("JOB_START")).await;
    let handle = start[0].data["handle"].as_str().unwrap().to_owned();
    let head = stream.until(|e| e.name == "data").await;
    assert!(head.iter().any(|e| e.name == "metadata"));

    let keepalive = post(&gw, &format!("/v2/signalflow/{handle}/keepalive")).await;
    assert_eq!(keepalive.status(), 200);
    assert_eq!(keepalive.headers()["content-type"], "application/json");
    assert_eq!(keepalive.text().await.unwrap(), "{}");
    // Attaching while the replay ring holds the whole job: the stream as it began.
    let mut attached = RawSse::new(post(&gw, &format!("/v2/signalflow/{handle}/attach")).await);
    let replayed = attached.until(|e| e.name == "data").await;
    assert_eq!((replayed[0].control(), &replayed[0].data["handle"]), (Some("JOB_START"), &json!(handle)));
    assert_eq!(data_sizes(&replayed)[0], data_sizes(&head)[0], "from the first timestamp");
    assert_eq!(replayed.iter().filter(|e| e.control() == Some("JOB_START")).count(), 1, "{replayed:?}");

    let stop = post(&gw, &format!("/v2/signalflow/{handle}/stop?reason=bye%20now")).await;
    assert_eq!(stop.status(), 200);
    assert_eq!(stop.text().await.unwrap(), "{}");
    for events in [stream.rest().await, attached.rest().await] {
        let abort = events.last().unwrap();
        assert_eq!(abort.control(), Some("CHANNEL_ABORT"));
        assert_eq!(abort.data["abortInfo"], json!({ "sf_job_abortState": "STOPPED", "sf_job_abortReason": "bye now" }));
    }
    // Stopping an ended computation is not an error; it is held (and found) until retention ends.
    assert_eq!(post(&gw, &format!("/v2/signalflow/{handle}/stop")).await.status(), 200);
    assert_eq!(gw.get_json("/computations").await["computations"][0]["status"], "aborted");
    gw.stop().await;
}

#[tokio::test]
async fn attach_after_the_ring_lost_the_start_still_gives_the_handle_and_an_info_message() {
    let mut settings = test_settings();
    settings.limits.replay_events = 4;
    let gw = spawn_gateway(settings).await;
    let mut stream = RawSse::new(execute(&gw, "?resolution=1000", TWO_BLOCKS).await);
    let start = stream.until(|e| e.control() == Some("JOB_START")).await;
    let handle = start[0].data["handle"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        stream.until(|e| e.name == "data").await;
    }

    let mut attached = RawSse::new(post(&gw, &format!("/v2/signalflow/{handle}/attach")).await);
    let head = attached.until(|e| e.name == "message").await;
    let names: Vec<&str> = head.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["control-message", "metadata", "metadata", "metadata", "data", "data", "message"]);
    assert_eq!((head[0].control(), &head[0].data["handle"]), (Some("JOB_START"), &json!(handle)));
    let sizes = data_sizes(&head);
    assert_eq!((sizes[0].0, sizes[0].1, sizes[1].1), (sizes[1].0, 2, 1), "one timestamp's two blocks: {sizes:?}");
    let info = &head[6].data["message"];
    assert_eq!(
        (&info["messageCode"], &info["contents"]["resolutionMs"]),
        (&json!("JOB_RUNNING_RESOLUTION"), &json!(1000))
    );
    // Afterwards the stream is the computation's own.
    assert_eq!(data_sizes(&attached.until(|e| e.name == "data").await).len(), 1);
    assert_eq!(post(&gw, &format!("/v2/signalflow/{handle}/stop")).await.status(), 200);
    assert_eq!(attached.rest().await.last().unwrap().control(), Some("CHANNEL_ABORT"));
    gw.stop().await;
}

#[tokio::test]
async fn gateway_shutdown_ends_a_compat_stream_with_channel_abort() {
    let gw = spawn_gateway(test_settings()).await;
    let mut stream = RawSse::new(execute(&gw, "", TWO_BLOCKS).await);
    stream.until(|e| e.name == "data").await;
    let stopping = tokio::spawn(gw.stop());
    let events = stream.rest().await;
    let abort = events.last().unwrap();
    assert_eq!(abort.control(), Some("CHANNEL_ABORT"));
    assert_eq!(abort.data["abortInfo"]["sf_job_abortReason"], "the gateway is shutting down");
    assert!(events.iter().all(|e| e.name != "gateway"), "{events:?}");
    tokio::time::timeout(WAIT, stopping).await.expect("hang guard").unwrap();
}
