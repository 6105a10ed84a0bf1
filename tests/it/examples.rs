//! `examples/`: each program runs against the gateway binary on its simulator, and its output
//! must show data points with their series' dimensions, an exact resume after the dropped
//! connection (`Last-Event-ID`: the next timestamp, nothing twice, nothing lost), and the stop,
//! which the gateway confirms. A missing toolchain fails with what to install.

use crate::tools::*;
use serde_json::Value as Json;
use std::time::Duration;

/// Two at a time: each starts a process or a compiler on a small shared machine.
static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
/// A hang guard (the Go one compiles first), not a timing assertion.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug)]
struct Point {
    id: u64,
    t: i64,
    dims: String,
}

/// Runs `program args…` with `GATEWAY` set and checks what it printed.
async fn run_example(program: &str, args: &[&str], env: &[(&str, String)]) {
    let _slot = SLOTS.acquire().await.unwrap();
    let gw = GatewayProcess::spawn(&[]).await;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(repo_path(""))
        .env("GATEWAY", &gw.base)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish in {RUN_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{program} {args:?} failed ({}):\n{stdout}\n{stderr}", output.status);
    let id = check_output(&stdout);
    let state: Json = reqwest::get(gw.url(&format!("/computations/{id}"))).await.unwrap().json().await.unwrap();
    assert_eq!(state["status"], "aborted", "{state}");
    assert_eq!(state["abort"]["reason"], "example done", "{state}");
}

fn parse_point(line: &str) -> Option<Point> {
    let rest = line.strip_prefix("data id=")?;
    let (id, rest) = rest.split_once(" t=")?;
    let (t, rest) = rest.split_once(' ')?;
    let (dims, value) = rest.rsplit_once(" value=")?;
    value.parse::<f64>().ok()?;
    Some(Point { id: id.parse().ok()?, t: t.parse().ok()?, dims: dims.to_owned() })
}

/// Checks the shape every example prints; answers the stopped computation's id.
fn check_output(stdout: &str) -> String {
    let lines: Vec<&str> = stdout.lines().collect();
    let resumed_at = lines.iter().position(|l| l.starts_with("resumed after id ")).expect(stdout);
    let last_id: u64 = lines[resumed_at]["resumed after id ".len()..].trim().parse().expect(stdout);
    let points = |range: &[&str]| -> Vec<Point> {
        range.iter().map(|l| parse_point(l).unwrap_or_else(|| panic!("not a data line: {l:?}\n{stdout}"))).collect()
    };
    let before = points(&lines[..resumed_at]);
    let stop_line = lines.last().expect(stdout);
    let id = stop_line.strip_prefix("stopped ").unwrap_or_else(|| panic!("ends with the stop: {stdout}")).trim();
    let after = points(&lines[resumed_at + 1..lines.len() - 1]);

    for (part, count) in [(&before, 3), (&after, 2)] {
        let timestamps: std::collections::BTreeSet<i64> = part.iter().map(|p| p.t).collect();
        assert_eq!(timestamps.len(), count, "{count} data events: {stdout}");
        // cpu.utilization by region in the demo inventory: two series per timestamp.
        for t in timestamps {
            let mut dims: Vec<&str> = part.iter().filter(|p| p.t == t).map(|p| p.dims.as_str()).collect();
            dims.sort();
            assert_eq!(dims, ["region=us-east-1", "region=us-west-2"], "dimensions at {t}: {stdout}");
        }
    }
    assert_eq!(before.iter().map(|p| p.id).max(), Some(last_id), "resumes after the last id it saw: {stdout}");
    assert!(after.iter().all(|p| p.id > last_id), "only newer events after the resume: {stdout}");
    let last_t = before.iter().map(|p| p.t).max().unwrap();
    let first_t = after.iter().map(|p| p.t).min().unwrap();
    assert_eq!(first_t, last_t + 1000, "the resume continues at the next timestamp: {stdout}");
    id.to_owned()
}

#[tokio::test]
async fn example_curl_and_jq() {
    require_tool("curl", "--version", "curl (Debian: apt-get install curl)");
    require_tool("jq", "--version", "jq (Debian: apt-get install jq)");
    run_example("bash", &["examples/curl.sh"], &[]).await;
}

#[tokio::test]
async fn example_python_requests() {
    // The interop virtualenv (tests/interop/requirements.txt lists `requests`), prepared once.
    let python = tokio::task::spawn_blocking(crate::support::interop_venv_python).await.unwrap();
    let has_requests = std::process::Command::new(&python).args(["-c", "import requests"]).status();
    assert!(
        has_requests.is_ok_and(|s| s.success()),
        "{python}: `requests` is missing (tests/interop/requirements.txt)"
    );
    run_example(&python, &["examples/python.py"], &[]).await;
}

#[tokio::test]
async fn example_node_fetch() {
    require_tool("node", "--version", "Node.js 18 or later (Debian: apt-get install nodejs)");
    run_example("node", &["examples/node.mjs"], &[]).await;
}

#[tokio::test]
async fn example_go_net_http() {
    require_tool("go", "version", "Go (Debian: apt-get install golang-go)");
    let cache = target_dir().join("go-cache").display().to_string();
    run_example("go", &["run", "examples/go/main.go"], &[("GOCACHE", cache)]).await;
}

#[tokio::test]
async fn example_ruby_net_http() {
    require_tool("ruby", "--version", "Ruby (Debian: apt-get install ruby)");
    run_example("ruby", &["examples/ruby.rb"], &[]).await;
}
