//! Harness for the tests that run outside programs against the gateway (the console in a
//! browser, the examples): the gateway binary as a process on port 0, the toolchains they need
//! (with a clear message when one is missing), and what they install under `target/`, prepared
//! once and safely when test threads or test processes race.

#![allow(dead_code)]

use crate::support::{WAIT, eventually};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::AsyncBufReadExt;

/// The cargo target directory (`<target>/debug/signalflow-gateway` is the binary under test).
pub fn target_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_signalflow-gateway"));
    bin.parent().and_then(Path::parent).expect("the binary is in <target>/<profile>/").to_path_buf()
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The `signalflow-gateway serve` binary on port 0 with its built-in simulator; killed on drop.
pub struct GatewayProcess {
    pub base: String,
    child: tokio::process::Child,
}

impl GatewayProcess {
    pub async fn spawn(env: &[(&str, &str)]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_signalflow-gateway"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway binary starts");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let base = loop {
            let line = tokio::time::timeout(WAIT, lines.next_line())
                .await
                .expect("the gateway prints its address in time")
                .expect("stdout")
                .expect("a listening line before the gateway exits");
            if let Some(rest) = line.strip_prefix("signalflow-gateway listening on ") {
                break rest.trim().to_owned();
            }
        };
        // The rest of stdout is not read: drain it so the gateway never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let ready = format!("{base}/readyz");
        let http = reqwest::Client::new();
        eventually("gateway process ready", || {
            let (http, ready) = (http.clone(), ready.clone());
            async move { http.get(&ready).send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        GatewayProcess { base, child }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Panics with what to install when `program` cannot run (`program --version` is tried).
pub fn require_tool(program: &str, version_arg: &str, install: &str) {
    let ok = std::process::Command::new(program)
        .arg(version_arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "`{program}` is needed by this test and cannot be run; install it: {install}");
}

/// Runs `f` holding an exclusive lock on `target/<name>.lock`: test threads of this process and
/// other test processes (e.g. two `cargo test` runs) prepare a directory one at a time.
pub fn with_target_lock<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let dir = target_dir();
    std::fs::create_dir_all(&dir).expect("target dir");
    let file = std::fs::File::create(dir.join(format!("{name}.lock"))).expect("lock file");
    file.lock().expect("lock");
    let out = f();
    drop(file);
    out
}

/// `target/console-node`, with the pinned `playwright-core` of `tests/console/package-lock.json`
/// installed by `npm ci` (the npm package only: the browser is the system Chromium). Done once;
/// redone when the checked-in lock file changes.
pub fn console_node_dir() -> PathBuf {
    npm_ci_dir("console-node", "tests/console")
}

/// `target/node-signalfx`, with the pinned npm `signalfx` (the official Node.js SignalFlow
/// client) of `tests/node-signalfx/package-lock.json`.
pub fn node_signalfx_dir() -> PathBuf {
    npm_ci_dir("node-signalfx", "tests/node-signalfx")
}

/// `target/<name>` with the packages of `<source>/package-lock.json` installed by `npm ci`, once
/// (under a lock: test threads and processes race), and again when the lock file changes.
fn npm_ci_dir(name: &str, source: &str) -> PathBuf {
    with_target_lock(name, || {
        let dir = target_dir().join(name);
        let lock =
            std::fs::read(repo_path(&format!("{source}/package-lock.json"))).expect("checked-in package-lock.json");
        // Written only after a successful install: a failed one is redone.
        let marker = dir.join("installed-package-lock.json");
        let installed = std::fs::read(&marker).is_ok_and(|l| l == lock);
        if !installed {
            require_tool("node", "--version", "Node.js 20 or later (Debian: apt-get install nodejs npm)");
            require_tool("npm", "--version", "npm (Debian: apt-get install npm)");
            std::fs::create_dir_all(&dir).expect("npm dir");
            std::fs::copy(repo_path(&format!("{source}/package.json")), dir.join("package.json"))
                .expect("package.json");
            std::fs::write(dir.join("package-lock.json"), &lock).expect("package-lock.json");
            let status = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .status()
                .expect("npm runs");
            assert!(
                status.success(),
                "`npm ci` in {} failed ({status}); is the npm registry reachable?",
                dir.display()
            );
            std::fs::write(&marker, &lock).expect("install marker");
        }
        dir
    })
}

/// A reverse proxy that serves `upstream` under `prefix` (as nginx's
/// `location /prefix/ { proxy_pass http://upstream/; }` does), streaming response bodies so
/// event streams pass through. Answers the proxied base URL, `http://addr/prefix/`.
pub async fn spawn_prefix_proxy(upstream: String, prefix: &'static str) -> String {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use futures::StreamExt;

    let client = reqwest::Client::new();
    let handler = move |request: Request| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
            let Some(rest) = path_and_query.strip_prefix(prefix) else {
                return (StatusCode::NOT_FOUND, "outside the proxied prefix").into_response();
            };
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
            let mut forward = client.request(parts.method, format!("{upstream}{rest}")).body(body);
            for (name, value) in parts.headers.iter().filter(|(n, _)| *n != "host") {
                forward = forward.header(name, value);
            }
            match forward.send().await {
                Ok(answer) => {
                    let mut response = Response::builder().status(answer.status());
                    for (name, value) in answer.headers() {
                        response = response.header(name, value);
                    }
                    let stream = answer.bytes_stream().map(|chunk| chunk.map_err(std::io::Error::other));
                    response.body(Body::from_stream(stream)).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
                }
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
    format!("http://{addr}{prefix}")
}
