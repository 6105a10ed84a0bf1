//! The console at `/`: its files as served, then the page in a real browser (the system
//! Chromium driven by Playwright, `tests/console/drive.mjs`) against the gateway binary on its
//! simulator. The script performs the clicks and waits and reports what the page held (chart
//! data, canvas pixel counts, status history, console errors); the assertions are here.
//! Screenshots of every step are kept in `target/console-artifacts/`.

use crate::support::*;
use crate::tools::*;
use serde_json::{Value as Json, json};
use std::time::Duration;

/// One browser at a time: the machines are small and the page's waits are bounded.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Outer hang guard beyond the script's own per-step waits.
const DRIVE_TIMEOUT: Duration = Duration::from_secs(240);
const KEY: &str = "console-test-key-0123456789";

/// Runs one scenario of `drive.mjs` and answers its report; fails with the report (the failing
/// step and what the page showed) when the script failed.
async fn drive(scenario: &str, base: &str, env: &[(&str, &str)]) -> Json {
    let _one_browser = BROWSER.lock().await;
    require_tool("/usr/bin/chromium", "--version", "Chromium (Debian: apt-get install chromium)");
    let node_dir = tokio::task::spawn_blocking(console_node_dir).await.unwrap();
    let artefacts = target_dir().join("console-artifacts");
    let mut command = tokio::process::Command::new("node");
    command
        .arg(repo_path("tests/console/drive.mjs"))
        .args([scenario, &format!("{base}/")])
        .arg(&artefacts)
        .env("CONSOLE_NODE_DIR", &node_dir)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(DRIVE_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("console scenario {scenario} did not finish in {DRIVE_TIMEOUT:?}"))
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Json = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no report from {scenario}:\nstdout: {stdout}\nstderr: {stderr}"));
    assert!(output.status.success(), "console {scenario} failed: {report:#}\nstderr: {stderr}");
    report
}

fn step<'a>(report: &'a Json, name: &str) -> &'a Json {
    report["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no step {name}"))
}

fn numbers(value: &Json) -> Vec<f64> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap_or(f64::NAN)).collect()
}

fn strictly_increasing(xs: &[f64]) -> bool {
    xs.windows(2).all(|w| w[1] > w[0])
}

#[tokio::test]
async fn console_files_are_served_with_their_types_and_open_without_a_key() {
    let mut settings = test_settings();
    settings.auth.api_keys = vec![secrecy::SecretString::from(KEY)];
    let gw = spawn_gateway(settings).await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/uPlot.esm.js", "text/javascript; charset=utf-8"),
        ("/console/uPlot.min.css", "text/css; charset=utf-8"),
        ("/console/uPlot.LICENSE.txt", "text/plain; charset=utf-8"),
    ] {
        let r = gw.http.get(gw.url(path)).timeout(WAIT).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], content_type, "{path}");
        assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
    }
    let license = gw.http.get(gw.url("/console/uPlot.LICENSE.txt")).send().await.unwrap().text().await.unwrap();
    assert!(license.contains("The MIT License"), "{license}");
    let missing = gw.http.get(gw.url("/console/nope.js")).timeout(WAIT).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");
    // The API itself still needs the key.
    let api = gw.http.get(gw.url("/computations")).timeout(WAIT).send().await.unwrap();
    assert_eq!(api.status(), 401);
    gw.stop().await;
}

#[tokio::test]
async fn console_charts_a_demo_rides_out_an_upstream_kill_and_stops_with_the_reason() {
    let gw = GatewayProcess::spawn(&[]).await;
    let report = drive("demo", &gw.base, &[]).await;
    assert_eq!(report["consoleErrors"], json!([]), "console errors");

    let run = step(&report, "run-demo");
    let chart = &run["view"]["charts"]["cpu"];
    assert_eq!(chart["series"], json!(["region=us-east-1", "region=us-west-2"]));
    let x = numbers(&chart["data"][0]);
    assert!(x.len() >= 30, "{x:?}");
    // The x axis is the logical timestamps: one per second of the 1 s resolution, in order.
    assert!(x.windows(2).all(|w| w[1] - w[0] == 1.0), "{x:?}");
    for series in &chart["data"].as_array().unwrap()[1..] {
        let ys = numbers(series);
        assert!(ys.iter().all(|y| (0.0..=100.0).contains(y)), "cpu values: {ys:?}");
    }
    let drawn = numbers(&run["pixels"]["counts"]);
    assert!(drawn.iter().all(|n| *n > 200.0), "each series draws its line on the canvas: {drawn:?}");

    // The latest-values table sorts by a column header, by click or by keyboard. Values change
    // live between the two reads, so each read is checked for its own order.
    let sorted = step(&report, "sort-latest");
    let up = numbers(&sorted["ascending"]["order"]);
    let down = numbers(&sorted["descending"]["order"]);
    assert_eq!((up.len(), sorted["ascending"]["ariaSort"].as_str()), (2, Some("ascending")), "{sorted}");
    assert_eq!((down.len(), sorted["descending"]["ariaSort"].as_str()), (2, Some("descending")), "{sorted}");
    assert!(up[0] <= up[1] && down[0] >= down[1], "{sorted}");

    let kill = step(&report, "upstream-kill");
    let states: Vec<&str> =
        kill["view"]["history"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    let lost = states.iter().position(|s| *s == "upstream-disconnected").expect("showed the disconnect");
    let resumed = states.iter().position(|s| *s == "resumed").expect("showed the resume");
    assert!(lost < resumed, "{states:?}");
    let resumed_text = kill["view"]["history"][resumed]["text"].as_str().unwrap();
    assert!(resumed_text.contains("gap"), "{resumed_text}");
    let x_after = numbers(&kill["view"]["charts"]["cpu"]["data"][0]);
    assert!(x_after.last().unwrap() > &(kill["before"].as_f64().unwrap() + 2.0), "the chart went on");
    assert!(strictly_increasing(&x_after), "no timestamp twice after the resume: {x_after:?}");
    assert!(numbers(&kill["pixels"]["counts"]).iter().all(|n| *n > 200.0));

    let stop = step(&report, "stop");
    assert_eq!(stop["view"]["state"], "ended");
    assert_eq!(stop["view"]["status"], "Ended: stopped from the console");
    let id = stop["id"].as_str().unwrap();
    let state: Json = reqwest::get(gw.url(&format!("/computations/{id}"))).await.unwrap().json().await.unwrap();
    assert_eq!(state["status"], "aborted");
    assert_eq!(state["abort"]["reason"], "stopped from the console");
}

const DETECT_PROGRAM: &str = "cpu = data('cpu.utilization').mean(by=['region'])\ncpu.publish('cpu')\n\
                              detect(when(cpu > 47, lasting='5s')).publish('cpu high')";
const START: i64 = 1_700_000_000_000;
const STOP: i64 = START + 720_000;

#[tokio::test]
async fn console_link_reproduces_the_view_and_the_view_is_the_gateways_result() {
    let gw = GatewayProcess::spawn(&[]).await;
    let (start, stop) = (START.to_string(), STOP.to_string());
    let env = [("CONSOLE_PROGRAM", DETECT_PROGRAM), ("CONSOLE_START", &start), ("CONSOLE_STOP", &stop)];
    let report = drive("share", &gw.base, &env).await;
    assert_eq!(report["consoleErrors"], json!([]), "console errors");
    let first = &step(&report, "run-bounded")["view"];
    let shared = step(&report, "open-shared");
    let second = &shared["view"];
    assert_eq!(first["status"], "Ended: end of channel (the stop time was reached)");
    assert_eq!(second["status"], first["status"]);
    assert_eq!(second["form"], json!({"program": DETECT_PROGRAM, "start": start, "stop": stop, "resolution": "1s"}));
    assert_eq!(second["charts"], first["charts"], "the link reproduces the charts");
    assert_eq!(second["markers"], first["markers"], "and the detect() markers");
    // Opening the first page's (ended) computation from the list shows the same view again.
    let reopened = &step(&report, "open-from-list")["view"];
    assert_eq!(reopened["charts"], first["charts"], "reopened from the list");
    assert_eq!(reopened["markers"], first["markers"]);
    assert_eq!(reopened["form"]["program"], DETECT_PROGRAM);

    // What the page charted is exactly the gateway's whole result for the same query.
    let whole: Json = reqwest::Client::new()
        .post(gw.url("/computations?wait=true"))
        .json(&json!({"program": DETECT_PROGRAM, "start": START, "stop": STOP, "resolution": "1s"}))
        .timeout(WAIT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chart = &first["charts"]["cpu"];
    let x = numbers(&chart["data"][0]);
    assert_eq!(x.len(), 720);
    for (i, name) in chart["series"].as_array().unwrap().iter().enumerate() {
        let region = name.as_str().unwrap().strip_prefix("region=").unwrap();
        let series = whole["series"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["properties"]["region"] == region && s["properties"]["sf_streamLabel"] == "cpu")
            .unwrap_or_else(|| panic!("no {region} series in {whole:#}"));
        let points = series["points"].as_array().unwrap();
        let expected_x: Vec<f64> = points.iter().map(|p| p[0].as_f64().unwrap() / 1000.0).collect();
        let expected_y: Vec<f64> = points.iter().map(|p| p[1].as_f64().unwrap()).collect();
        assert_eq!(x, expected_x, "{region}: timestamps");
        assert_eq!(numbers(&chart["data"][i + 1]), expected_y, "{region}: values");
    }
    let expected_markers: Vec<Json> = whole["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| json!({"t": e["timestampMs"], "anomalous": e["properties"]["is"] == "anomalous"}))
        .collect();
    assert!(!expected_markers.is_empty(), "the query has detect() events");
    assert_eq!(first["markers"], json!(expected_markers));
    let pixels = &shared["pixels"];
    assert!(numbers(&pixels["counts"]).iter().all(|n| *n > 200.0), "{pixels}");
    assert!(numbers(&pixels["markers"]).iter().all(|n| *n > 50.0), "anomalous and ok markers drawn: {pixels}");
}

/// Behind a reverse proxy that serves the gateway under `/sfgw/`: every URL the page uses must
/// be relative, and a wrong one would show up as a failed load (a console error).
#[tokio::test]
async fn console_under_a_base_path_asks_for_the_api_key_once_and_sends_it_in_the_query_only_for_event_source() {
    let gw = GatewayProcess::spawn(&[("SFGW_AUTH__API_KEYS", KEY)]).await;
    let proxied = spawn_prefix_proxy(gw.base.clone(), "/sfgw").await;
    let report = drive("key", &proxied, &[("CONSOLE_API_KEY", KEY)]).await;
    // The first call without a key is answered 401, which Chromium logs; nothing else may be.
    let errors: Vec<&str> = report["consoleErrors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert!(errors.iter().all(|e| e.contains("status of 401")), "{errors:?}");
    let asked = step(&report, "load-and-ask");
    assert_eq!(asked["prompts"], 1, "asked once");
    assert_eq!(asked["dialogOpen"], false);
    assert_eq!(asked["storedKeyMatches"], true, "kept in sessionStorage");
    assert!(numbers(&asked["view"]["charts"]["cpu"]["data"][0]).len() >= 10);
    let with_token: Vec<&str> = asked["withToken"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(!with_token.is_empty());
    assert!(
        with_token.iter().all(|p| p.starts_with("/sfgw/computations/") && p.ends_with("/events")),
        "access_token only on the event stream: {with_token:?}"
    );
}
