//! Never stuck, never silent: creates that never wait for unrelated ones, a `DELETE` that
//! answers at once, and the loose upstreams seen with the Go client's `FakeBackend` (an error
//! with no channel, a job streaming past its stop, a job starting after the gateway gave up on
//! its channel, a service that sends no `KEEP_ALIVE`), each reproduced by a simulator fault.

use crate::support::*;
use serde_json::{Value as Json, json};
use std::time::{Duration, Instant};

const PROGRAM: &str = "data('cpu.utilization').mean(by=['region']).publish('A')";

async fn set_faults(gw: &Gateway, faults: Json) {
    let r = gw.http.post(gw.url("/_sim/faults")).json(&faults).send().await.unwrap();
    assert!(r.status().is_success(), "setting faults {faults}: {}", r.status());
}

async fn sim_jobs(gw: &Gateway) -> Vec<Json> {
    gw.get_json("/_sim/jobs").await.as_array().unwrap().clone()
}

/// A counter or gauge from `/metrics`.
async fn metric(gw: &Gateway, name: &str) -> f64 {
    let text = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn creates_of_different_programs_never_wait_for_each_other() {
    let mut settings = test_settings();
    // Nothing listens on port 1: every dial is refused, the pool never becomes ready.
    settings.upstream.url = Some("ws://127.0.0.1:1/v2/signalflow/connect".into());
    settings.upstream.connect_timeout = Duration::from_secs(2);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = signalflow_gateway::app::Application::build_with_listener(settings, listener).await.unwrap();
    let ready_wait = app.hub().settings().ready_wait;
    let gw = Gateway::serve(app);
    let began = Instant::now();
    let creates = (0..5).map(|i| {
        let (http, url) = (gw.http.clone(), gw.url("/computations"));
        let program = format!("data('cpu.utilization').mean().scale({i}).publish()");
        tokio::spawn(async move {
            let r = http.post(url).json(&json!({ "program": program })).send().await.unwrap();
            (r.status().as_u16(), began.elapsed())
        })
    });
    let answers: Vec<(u16, Duration)> =
        futures::future::join_all(creates).await.into_iter().map(Result::unwrap).collect();
    assert!(answers.iter().all(|(status, _)| *status == 503), "{answers:?}");
    let slowest = answers.iter().map(|(_, t)| *t).max().unwrap();
    // One at a time, the fifth would answer after five waits; side by side, after one.
    assert!(slowest < ready_wait * 2, "the fifth create answered after {slowest:?} (ready wait {ready_wait:?})");
    gw.stop().await;
}

#[tokio::test]
async fn identical_concurrent_creates_share_one_upstream_execute_and_its_outcome() {
    let gw = spawn_gateway(test_settings()).await;
    set_faults(&gw, json!({"responseDelayMs": 300})).await;
    let creates = (0..20).map(|_| {
        let (http, url) = (gw.http.clone(), gw.url("/computations"));
        tokio::spawn(async move {
            let r = http.post(url).json(&json!({ "program": PROGRAM })).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Json>().await.unwrap()["id"].as_str().unwrap().to_owned())
        })
    });
    let answers: Vec<(u16, String)> =
        futures::future::join_all(creates).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(answers.iter().filter(|(s, _)| *s == 201).count(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|(s, _)| *s == 200).count(), 19, "{answers:?}");
    assert!(answers.iter().all(|(_, id)| *id == answers[0].1), "one id for all: {answers:?}");
    assert_eq!(sim_jobs(&gw).await.len(), 1);
    // The same for a program error: every identical create gets the one 400.
    let creates = (0..5).map(|_| {
        let (http, url) = (gw.http.clone(), gw.url("/computations"));
        tokio::spawn(async move {
            let r = http.post(url).json(&json!({ "program": "dta('x').publish()" })).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Json>().await.unwrap()["type"].as_str().unwrap_or_default().to_owned())
        })
    });
    for (status, slug) in futures::future::join_all(creates).await.into_iter().map(Result::unwrap) {
        assert_eq!((status, slug.as_str()), (400, "/problems/program-error"));
    }
    gw.stop().await;
}

#[tokio::test]
async fn sharing_a_running_computation_answers_while_other_creates_wait_for_the_upstream() {
    let mut settings = test_settings();
    settings.upstream.connect_timeout = Duration::from_secs(3);
    let gw = spawn_gateway(settings).await;
    let r = gw.post_json("/computations", json!({"program": PROGRAM})).await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Json>().await.unwrap()["id"].as_str().unwrap().to_owned();
    // The upstream goes away and refuses the gateway's token when it comes back.
    set_faults(&gw, json!({"rejectAuth": true})).await;
    gw.http.post(gw.url("/_sim/connections/kill")).send().await.unwrap();
    let ready = gw.url("/readyz");
    eventually("the gateway sees the upstream gone", || async {
        gw.http.get(&ready).send().await.unwrap().status() == 503
    })
    .await;
    let (http, url) = (gw.http.clone(), gw.url("/computations"));
    let waiting = tokio::spawn(async move {
        let r = http.post(url).json(&json!({"program": "data('memory.utilization').publish()"})).send().await;
        r.unwrap().status().as_u16()
    });
    // Give the other create time to reach its wait for the upstream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shared = gw.post_json("/computations", json!({"program": PROGRAM})).await;
    assert!(!waiting.is_finished(), "the unrelated create is still waiting for the upstream");
    assert_eq!(shared.status(), 200);
    assert_eq!(shared.json::<Json>().await.unwrap()["id"], id.as_str());
    assert_eq!(waiting.await.unwrap(), 503);
    gw.stop().await;
}

#[tokio::test]
async fn delete_answers_once_the_stop_is_sent_and_the_stream_still_ends_with_the_reason() {
    let mut settings = test_settings();
    settings.upstream.stop_wait = Duration::from_secs(2);
    let gw = spawn_gateway(settings).await;
    set_faults(&gw, json!({"ignoreStopRequests": true})).await;
    let r = gw.post_json("/computations", json!({"program": PROGRAM})).await;
    let id = r.json::<Json>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let mut stream = gw.sse(&format!("/computations/{id}/events"), None).await;
    stream.until_data(1).await;
    let deleted = gw.http.delete(gw.url(&format!("/computations/{id}?reason=enough"))).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    // The service has not confirmed (it never will): the answer did not wait for it.
    assert_eq!(deleted.json::<Json>().await.unwrap()["status"], "stopping");
    assert_eq!(gw.get_json(&format!("/computations/{id}")).await["status"], "stopping");
    let end = stream.until(is_terminal).await;
    let terminal = end.last().unwrap();
    assert_eq!(terminal.data["event"], "CHANNEL_ABORT");
    assert_eq!(terminal.data["abortInfo"]["sf_job_abortReason"], "enough");
    assert_eq!(gw.get_json(&format!("/computations/{id}")).await["status"], "aborted");
    gw.stop().await;
}

#[tokio::test]
async fn an_error_without_a_channel_reaches_the_one_execute_waiting_for_its_start() {
    let gw = spawn_gateway(test_settings()).await;
    set_faults(&gw, json!({"channellessErrors": true})).await;
    let r = gw.post_json("/computations", json!({"program": "data('cpu.utilization').publish(label="})).await;
    assert_eq!(r.status(), 400);
    let problem: Json = r.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/program-error", "{problem}");
    assert!(problem["line"].as_i64().is_some(), "{problem}");
    assert_eq!(metric(&gw, "sfgw_upstream_channelless_errors_total").await, 1.0);
    gw.stop().await;
}

#[tokio::test]
async fn a_bounded_computation_ends_at_its_stop_when_the_upstream_streams_past_it() {
    let gw = spawn_gateway(test_settings()).await;
    set_faults(&gw, json!({"ignoreStopTime": true})).await;
    let now = signalflow_gateway::clock::now_ms() / 1000 * 1000;
    let (start, stop) = (now - 10_000, now - 5_000);
    let path = crate::gateway_core::stream_path(&[
        ("program", PROGRAM),
        ("start", &start.to_string()),
        ("stop", &stop.to_string()),
        ("resolution", "1s"),
    ]);
    let mut stream = gw.sse(&path, None).await;
    let events = stream.rest().await;
    let timestamps = crate::support::data_timestamps(&events);
    assert_eq!(timestamps, (start..stop).step_by(1000).collect::<Vec<_>>());
    let notice = events.iter().find(|e| e.event == "gateway" && e.data["event"] == "STOP_ENFORCED");
    let notice = notice.unwrap_or_else(|| panic!("a notice says why: {events:?}"));
    assert_eq!(notice.data["stopMs"], stop);
    let last = events.last().unwrap();
    assert_eq!((last.event.as_str(), &last.data["event"]), ("control-message", &json!("END_OF_CHANNEL")));
    // The job that ignored its stop is stopped upstream.
    eventually("the job is stopped upstream", || async { sim_jobs(&gw).await.is_empty() }).await;
    // ?wait=true ends too, with exactly the range asked for (its own job: through the cache,
    // a range past the fresh edge would be read from a standing tail computation).
    let r = gw
        .post_json(
            "/computations?wait=true",
            json!({"program": PROGRAM, "start": start, "stop": stop, "resolution": 1000, "cache": false}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let result: Json = r.json().await.unwrap();
    for series in result["series"].as_array().unwrap() {
        let ts: Vec<i64> = series["points"].as_array().unwrap().iter().map(|p| p[0].as_i64().unwrap()).collect();
        assert_eq!(ts, (start..stop).step_by(1000).collect::<Vec<_>>(), "nothing at or after the stop time");
    }
    assert_eq!(metric(&gw, "sfgw_upstream_stops_enforced_total").await, 2.0);
    gw.stop().await;
}

#[tokio::test]
async fn a_job_that_starts_after_the_gateway_gave_up_on_its_channel_is_stopped() {
    let mut settings = test_settings();
    settings.stream.start_wait = Duration::from_millis(100);
    settings.upstream.stop_wait = Duration::from_millis(200);
    let gw = spawn_gateway(settings).await;
    set_faults(&gw, json!({"responseDelayMs": 1500, "ignoreDetach": true})).await;
    let r = gw.post_json("/computations", json!({"program": PROGRAM})).await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Json>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(gw.http.delete(gw.url(&format!("/computations/{id}"))).send().await.unwrap().status(), 200);
    // The gateway gives up after its stop wait and detaches; the service ignores the detach
    // and starts the job anyway, on a channel nobody routes any more.
    eventually("the computation ended", || async {
        gw.get_json(&format!("/computations/{id}")).await["status"] == "aborted"
    })
    .await;
    eventually("the late job started", || async {
        metric(&gw, "sfgw_upstream_orphan_jobs_stopped_total").await == 1.0
    })
    .await;
    eventually("the orphan job is stopped upstream", || async { sim_jobs(&gw).await.is_empty() }).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_silent_but_healthy_upstream_is_pinged_not_redialled() {
    let mut settings = test_settings();
    settings.upstream.read_timeout = Duration::from_millis(800);
    settings.simulator.keepalive_interval = Duration::from_secs(3600);
    let gw = spawn_gateway(settings).await;
    set_faults(&gw, json!({"pauseKeepalive": true})).await;
    let sockets = || async {
        let all = gw.get_json("/_sim/connections").await;
        all.as_array().unwrap().iter().map(|c| (c["id"].clone(), c["remoteAddr"].clone())).collect::<Vec<_>>()
    };
    let before = sockets().await;
    // Several read timeouts of silence, each bridged by a ping (sent at half the timeout).
    eventually("three pings on the silent socket", || async { metric(&gw, "sfgw_upstream_pings_total").await >= 3.0 })
        .await;
    assert_eq!(metric(&gw, "sfgw_upstream_reconnects_total").await, 0.0);
    assert_eq!(sockets().await, before, "the same socket throughout");
    gw.stop().await;
}
