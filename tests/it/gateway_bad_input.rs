//! Hostile and out-of-range requests: each gets a 4xx problem body (or, on the SignalFlow
//! compat API, its own JSON error shape) naming what is wrong, and the gateway stays healthy
//! with the computations it was already running untouched.
//!
//! Plain request/answer behaviour, so the router is called in process (no HTTP socket); the
//! upstream and the simulator behind it are real.

use crate::support::*;
use serde_json::{Value as Json, json};

const PROGRAM: &str = "data('cpu.utilization').mean(by=['region']).publish('A')";

/// One hostile request and what it must get.
struct Case {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
    status: u16,
    slug: &'static str,
    /// The `field` member a validation problem must name.
    field: Option<&'static str>,
}

const JSON: (&str, &str) = ("content-type", "application/json");

fn post(body: impl Into<String>, status: u16, slug: &'static str) -> Case {
    Case {
        method: "POST",
        path: "/computations".into(),
        headers: vec![JSON],
        body: body.into(),
        status,
        slug,
        field: None,
    }
}

/// A create whose body names `field` as out of range or malformed.
fn bad_field(body: Json, field: &'static str) -> Case {
    Case { field: Some(field), ..post(body.to_string(), 400, "invalid-request") }
}

fn get(path: impl Into<String>, status: u16, slug: &'static str) -> Case {
    Case { method: "GET", path: path.into(), headers: vec![], body: String::new(), status, slug, field: None }
}

/// A one-shot stream whose query names `field` as invalid.
fn bad_query(query: &str, field: &'static str) -> Case {
    Case { field: Some(field), ..get(format!("/computations/stream?{query}"), 400, "invalid-request") }
}

fn cases(id: &str) -> Vec<Case> {
    let p = PROGRAM;
    let mut cases = vec![
        // The body itself.
        post("{", 400, "malformed-json"),
        post("", 400, "malformed-json"),
        post("nul\u{0}", 400, "malformed-json"),
        post(r#"{"program":"x",}"#, 400, "malformed-json"),
        post("{}", 400, "invalid-request"),
        post("[1]", 400, "invalid-request"),
        post("null", 400, "invalid-request"),
        post("42", 400, "invalid-request"),
        post(r#""data('x').publish()""#, 400, "invalid-request"),
        post(r#"{"program":"x","bogus":1}"#, 400, "invalid-request"),
        post(r#"{"program":7}"#, 400, "invalid-request"),
        post(r#"{"program":"x","immediate":"yes"}"#, 400, "invalid-request"),
        post(r#"{"program":"x","share":1}"#, 400, "invalid-request"),
        post(r#"{"program":"x","timezone":5}"#, 400, "invalid-request"),
        post(format!(r#"{{"program":"{}"}}"#, "x".repeat(4000)), 413, "body-too-large"),
        post(format!(r#"{{"program":"{}"}}"#, "x".repeat(600)), 413, "program-too-large"),
        post(r#"{"program":"dta('x').publish()"}"#, 400, "program-error"),
        post(r#"{"program":"data('x').publish("}"#, 400, "program-error"),
        Case { headers: vec![("content-type", "text/plain")], ..post("{}", 415, "unsupported-media-type") },
        Case { headers: vec![], ..post("{}", 415, "unsupported-media-type") },
        Case { headers: vec![("content-type", "application/jsonx")], ..post("{}", 415, "unsupported-media-type") },
        Case {
            path: "/computations?wait=maybe".into(),
            field: Some("wait"),
            ..post(json!({"program": p}).to_string(), 400, "invalid-request")
        },
        Case {
            path: "/computations?colour=red".into(),
            ..post(json!({"program": p}).to_string(), 400, "invalid-request")
        },
        // Fields out of range or malformed: the problem names the field.
        bad_field(json!({"program": "  \n "}), "program"),
        bad_field(json!({"program": p, "start": "yesterday"}), "start"),
        bad_field(json!({"program": p, "start": true}), "start"),
        bad_field(json!({"program": p, "start": 1.5}), "start"),
        bad_field(json!({"program": p, "start": "-11y"}), "start"),
        bad_field(json!({"program": p, "start": "+20y"}), "start"),
        bad_field(json!({"program": p, "start": "1066-10-14T09:00:00Z"}), "start"),
        bad_field(json!({"program": p, "start": i64::MIN}), "start"),
        bad_field(json!({"program": p, "stop": i64::MAX}), "stop"),
        bad_field(json!({"program": p, "stop": "9999-12-31T23:59:59Z"}), "stop"),
        bad_field(json!({"program": p, "start": "-1m", "stop": "-2m"}), "stop"),
        bad_field(json!({"program": p, "start": "-1m", "stop": "-1m"}), "stop"),
        bad_field(json!({"program": p, "resolution": "fast"}), "resolution"),
        bad_field(json!({"program": p, "resolution": 1e15}), "resolution"),
        bad_field(json!({"program": p, "resolution": 1_000_000_000_000_000i64}), "resolution"),
        bad_field(json!({"program": p, "resolution": 0}), "resolution"),
        bad_field(json!({"program": p, "resolution": 999}), "resolution"),
        bad_field(json!({"program": p, "resolution": -1000}), "resolution"),
        bad_field(json!({"program": p, "resolution": "2d"}), "resolution"),
        bad_field(json!({"program": p, "resolution": "500ms"}), "resolution"),
        bad_field(json!({"program": p, "maxDelay": "1h"}), "maxDelay"),
        bad_field(json!({"program": p, "maxDelay": -1}), "maxDelay"),
        bad_field(json!({"program": p, "maxDelay": 900_001}), "maxDelay"),
        bad_field(json!({"program": p, "maxDelay": [1]}), "maxDelay"),
        bad_field(json!({"program": p, "timezone": "Mars/Olympus"}), "timezone"),
        bad_field(json!({"program": p, "timezone": "Europe/Paris; DROP"}), "timezone"),
        bad_field(json!({"program": p, "timezone": "Europe/Atlantis"}), "timezone"),
        bad_field(json!({"program": p, "timezone": "../../etc/passwd"}), "timezone"),
        bad_field(json!({"program": p, "timezone": "x".repeat(65)}), "timezone"),
        // Ids, paths and methods.
        get("/computations/nope", 404, "not-found"),
        get("/computations/nope/events", 404, "not-found"),
        get("/computations/nope/metadata", 404, "not-found"),
        get(format!("/computations/{id}/metadata/not-a-tsid"), 400, "invalid-request"),
        get(format!("/computations/{id}/metadata/AAAAAAAAAAE"), 404, "not-found"),
        Case {
            headers: vec![("last-event-id", "abc")],
            field: Some("Last-Event-ID"),
            ..get(format!("/computations/{id}/events"), 400, "invalid-request")
        },
        Case {
            headers: vec![("last-event-id", "-1")],
            field: Some("Last-Event-ID"),
            ..get(format!("/computations/{id}/events"), 400, "invalid-request")
        },
        Case {
            field: Some("Last-Event-ID"),
            ..get(format!("/computations/{id}/events?lastEventId=1e3"), 400, "invalid-request")
        },
        Case {
            headers: vec![("last-event-id", "99999999999999999999999")],
            field: Some("Last-Event-ID"),
            ..get(format!("/computations/{id}/events"), 400, "invalid-request")
        },
        Case { method: "DELETE", ..get("/computations/nope", 404, "not-found") },
        Case { method: "DELETE", ..get("/computations", 405, "method-not-allowed") },
        Case { method: "PUT", ..get(format!("/computations/{id}"), 405, "method-not-allowed") },
        Case { method: "POST", ..get("/computations/stream", 405, "method-not-allowed") },
        Case {
            method: "DELETE",
            field: Some("reason"),
            ..get(format!("/computations/{id}?reason={}", "r".repeat(1100)), 400, "invalid-request")
        },
        get("/nope", 404, "not-found"),
        get("/computations/%ZZ", 404, "not-found"),
        // The one-shot stream's query string.
        bad_query("", "program"),
        bad_query("program=", "program"),
        bad_query("program=x&immediate=maybe", "immediate"),
        bad_query("program=x&share=perhaps", "share"),
        bad_query("program=x&start=soon", "start"),
        bad_query("program=x&start=-20y", "start"),
        bad_query("program=x&resolution=1e15", "resolution"),
        bad_query("program=x&resolution=10", "resolution"),
        bad_query("program=x&maxDelay=16m", "maxDelay"),
        bad_query("program=x&timezone=Mars%2FOlympus", "timezone"),
        bad_query("program=x&lastEventId=x", "Last-Event-ID"),
        get("/computations/stream?program=x&colour=red", 400, "invalid-request"),
        get("/computations/stream?program=%FF", 400, "program-error"),
    ];
    // The same program error on the one-shot stream is answered before any byte streams.
    cases.push(get("/computations/stream?program=dta(%27x%27).publish()", 400, "program-error"));
    cases
}

#[tokio::test]
async fn every_bad_request_gets_its_problem_body_and_the_server_stays_healthy() {
    let mut settings = test_settings();
    settings.limits.max_body_bytes = 2048;
    settings.limits.max_program_bytes = 512;
    let gw = in_process_gateway(settings).await;
    let created = gw.post_json("/computations", json!({"program": PROGRAM})).await.json();
    let id = created["id"].as_str().unwrap().to_owned();
    let cases = cases(&id);
    assert!(cases.len() >= 60, "the table keeps at least 60 cases, has {}", cases.len());
    for case in cases {
        let mut builder = request(case.method, &case.path);
        for (k, v) in &case.headers {
            builder = builder.header(*k, *v);
        }
        let answer = gw.call(builder.body(axum::body::Body::from(case.body.clone())).unwrap()).await;
        let what =
            format!("{} {} {:?} {}", case.method, case.path, case.headers, &case.body[..case.body.len().min(60)]);
        assert_eq!(answer.status, case.status, "{what}");
        assert_eq!(answer.header("content-type"), Some("application/problem+json"), "{what}");
        let problem = answer.json();
        assert_eq!(problem["type"], format!("/problems/{}", case.slug), "{what}: {problem}");
        assert_eq!(problem["status"], case.status, "{what}");
        assert!(problem["title"].is_string() && problem["detail"].is_string(), "{what}: {problem}");
        if let Some(field) = case.field {
            assert_eq!(problem["field"], field, "{what}: {problem}");
        }
        if case.slug == "program-error" {
            assert!(problem["line"].as_i64().is_some() && problem["column"].as_i64().is_some(), "{what}: {problem}");
        }
    }
    assert_eq!(gw.get("/healthz").await.status, 200);
    let r = gw.post_json("/computations", json!({"program": "data('memory.utilization').max().publish()"})).await;
    assert_eq!(r.status, 201);
    // The computation created before is untouched.
    assert_eq!(gw.get(&format!("/computations/{id}")).await.json()["status"], "running");
    gw.stop().await;
}

#[tokio::test]
async fn the_compat_api_applies_the_same_bounds_in_its_own_error_shape() {
    let gw = in_process_gateway(test_settings()).await;
    for (query, field) in [
        ("resolution=1000000000000000", "resolution"),
        ("resolution=10", "resolution"),
        ("maxDelay=3600000", "maxDelay"),
        ("timezone=Mars%2FOlympus", "timezone"),
        ("start=-20y", "start"),
        ("stop=253402300799000", "stop"),
    ] {
        let execute = request("POST", &format!("/v2/signalflow/execute?{query}")).header("content-type", "text/plain");
        let answer = gw.call(execute.body(axum::body::Body::from(PROGRAM)).unwrap()).await;
        assert_eq!(answer.status, 400, "{query}");
        let body = answer.json();
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(&format!("{field}:")), "{query}: {body}");
    }
    assert_eq!(gw.get("/healthz").await.status, 200);
    gw.stop().await;
}
