//! Latest values for pollers: `/computations/{id}/latest` and `/latest?program=…`, as JSON and
//! as Prometheus text (parsed by PyPI `prometheus_client`, a scraper's own parser), sharing one
//! computation between polls, lingering while polled and stopping after the idle timeout.

use crate::support::*;
use serde_json::{Value as Json, json};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const PROGRAM: &str = "data('cpu.utilization').mean(by=['region']).publish('cpu.by region')";

/// Parses Prometheus text with `prometheus_client` in the interop virtualenv.
async fn parse_prometheus(text: &str) -> Json {
    let python = tokio::task::spawn_blocking(interop_venv_python).await.unwrap();
    let script = format!("{}/tests/interop/prometheus_parse.py", env!("CARGO_MANIFEST_DIR"));
    let mut child = tokio::process::Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).await.unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.unwrap().unwrap();
    assert!(
        output.status.success(),
        "prometheus_client refused the text:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

async fn jobs_running(gw: &Gateway) -> usize {
    gw.get_json("/_sim/jobs").await.as_array().unwrap().len()
}

#[tokio::test]
async fn latest_of_a_computation_as_json_and_prometheus_text() {
    let gw = spawn_gateway(test_settings()).await;
    let created = gw.post_json("/computations", json!({"program": PROGRAM, "resolution": "1s"})).await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Json>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let path = format!("/computations/{id}/latest");
    let http = gw.http.clone();
    let url = gw.url(&path);
    eventually("both series have a value", || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let v: Json = http.get(&url).send().await.unwrap().json().await.unwrap();
            v["series"].as_array().is_some_and(|s| s.len() == 2)
        }
    })
    .await;
    let latest = gw.get_json(&path).await;
    assert_eq!(latest["id"], id.as_str());
    assert_eq!(latest["resolutionMs"], 1000);
    let newest = latest["logicalTimestampMs"].as_i64().unwrap();
    assert_eq!(newest % 1000, 0);
    let mut regions = Vec::new();
    for s in latest["series"].as_array().unwrap() {
        assert_eq!(s["label"], "cpu.by region");
        assert_eq!(s["metric"], "cpu.utilization");
        assert!(s["value"].is_f64(), "{s}");
        let t = s["logicalTimestampMs"].as_i64().unwrap();
        assert!(t <= newest && t % 1000 == 0);
        assert_eq!(s["dimensions"].as_object().unwrap().len(), 1, "only the dimensions: {s}");
        regions.push(s["dimensions"]["region"].as_str().unwrap().to_owned());
    }
    regions.sort();
    assert_eq!(regions, ["us-east-1", "us-west-2"]);

    let response = gw.http.get(gw.url(&format!("{path}?format=prometheus"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    let families = parse_prometheus(&text).await;
    let families = families.as_array().unwrap();
    assert_eq!(families.len(), 1, "one metric per publish label: {families:?}");
    assert_eq!(families[0]["name"], "cpu_by_region", "the name sanitised");
    assert_eq!(families[0]["type"], "gauge");
    let samples = families[0]["samples"].as_array().unwrap();
    let mut labels: Vec<&str> = samples.iter().map(|s| s["labels"]["region"].as_str().unwrap()).collect();
    labels.sort();
    assert_eq!(labels, ["us-east-1", "us-west-2"]);
    assert!(samples.iter().all(|s| s["labels"].as_object().unwrap().len() == 1 && s["value"].is_f64()));
    // The logical timestamp, which the parser gives in seconds.
    for s in samples {
        let ms = (s["timestamp"].as_f64().unwrap() * 1000.0).round() as i64;
        assert!(ms % 1000 == 0 && ms >= newest, "{s}");
    }

    for (path, status) in [
        ("/computations/nope/latest".to_owned(), 404),
        (format!("{path}?format=xml"), 400),
        (format!("{path}?other=1"), 400),
    ] {
        assert_eq!(gw.http.get(gw.url(&path)).send().await.unwrap().status(), status, "{path}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn latest_by_program_shares_one_computation_lingers_while_polled_and_stops_when_idle() {
    let mut settings = test_settings();
    settings.stream.idle_timeout = Duration::from_millis(1500);
    let gw = spawn_gateway(settings).await;
    let url = format!("/latest?program={}&resolution=1s", query_value(PROGRAM));
    let first = gw.http.get(gw.url(&url)).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let location = first.headers()["content-location"].to_str().unwrap().to_owned();
    let body: Json = first.json().await.unwrap();
    assert!(!body["series"].as_array().unwrap().is_empty(), "answers once it has values: {body}");
    assert_eq!(location, format!("/computations/{}/latest", body["id"].as_str().unwrap()));
    let started = gw.get_json("/_sim/stats").await["jobsStarted"].as_i64().unwrap();
    // Polled for longer than the idle timeout: the same computation, no new job.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let again: Json = gw.http.get(gw.url(&url)).send().await.unwrap().json().await.unwrap();
        assert_eq!(again["id"], body["id"]);
    }
    let text = gw.http.get(gw.url(&format!("{url}&format=prometheus"))).send().await.unwrap().text().await.unwrap();
    assert_eq!(gw.get_json("/_sim/stats").await["jobsStarted"].as_i64().unwrap(), started);
    assert_eq!(jobs_running(&gw).await, 1);
    // Nobody polls: it stops after the idle timeout.
    eventually("the idle computation stops", || async { jobs_running(&gw).await == 0 }).await;
    let families = parse_prometheus(&text).await;
    assert_eq!(families[0]["samples"].as_array().unwrap().len(), 2, "{families}");

    for (url, status) in [
        ("/latest".to_owned(), 400),
        (format!("/latest?program={}", query_value("data(")), 400),
        (format!("/latest?program={}&format=csv", query_value(PROGRAM)), 400),
    ] {
        let r = gw.http.get(gw.url(&url)).send().await.unwrap();
        assert_eq!(r.status(), status, "{url}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{url}");
    }
    gw.stop().await;
}
