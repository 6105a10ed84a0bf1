//! The gateway as its own process, for the load tools: started from the release binary,
//! stopped with SIGTERM on drop, and measured from /proc.
//!
//! `BENCH_GATEWAY_WRAPPER` runs it under another program, e.g. a heap profiler
//! (`BENCH_GATEWAY_WRAPPER="heaptrack -o /tmp/gateway"`); the figures and SIGTERM then still go to
//! the gateway process itself, and the wrapper is waited for.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Gateway {
    pub child: Child,
    /// The gateway's own process (the child's descendant when it runs under a wrapper).
    pub pid: u32,
    /// `host:port` it listens on.
    pub addr: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        let _ = self.child.wait();
    }
}

/// The first process below `root` (breadth first) running `binary`.
fn descendant_running(root: u32, binary: &str) -> Option<u32> {
    let binary = std::fs::canonicalize(binary).ok()?;
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        if std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() == Some(&binary) {
            return Some(pid);
        }
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        queue.splice(0..0, children.split_whitespace().filter_map(|c| c.parse().ok()));
    }
    None
}

impl Gateway {
    /// Starts `binary serve` on a free port with `env` added (logs at `warn`), and waits for
    /// the line that says where it listens.
    pub fn start(binary: &str, env: &[(&str, String)]) -> Gateway {
        let wrapper = std::env::var("BENCH_GATEWAY_WRAPPER").ok().filter(|w| !w.trim().is_empty());
        let mut command = match &wrapper {
            Some(wrapper) => {
                let mut words = wrapper.split_whitespace();
                let mut command = Command::new(words.next().unwrap_or_default());
                command.args(words).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command.args(["serve", "--listen", "127.0.0.1:0"]).env("RUST_LOG", "warn").stdout(Stdio::piped());
        command.stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("starting the gateway");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("gateway output").unwrap();
            if let Some(rest) = line.strip_prefix("signalflow-gateway listening on http://") {
                break rest.to_owned();
            }
        };
        // Keep draining stdout so the gateway never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let pid = if wrapper.is_some() {
            descendant_running(child.id(), binary).expect("the gateway process under the wrapper")
        } else {
            child.id()
        };
        Gateway { child, pid, addr }
    }
}

/// (user + system CPU seconds, RSS bytes) of a process.
pub fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks as f64 / 100.0, rss_kb * 1024)
}
