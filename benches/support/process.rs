//! The gateway as its own process, for the load tools: started from the release binary,
//! stopped with SIGTERM on drop, and measured from /proc.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Gateway {
    pub child: Child,
    /// `host:port` it listens on.
    pub addr: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Starts `binary serve` on a free port with `env` added (logs at `warn`), and waits for
    /// the line that says where it listens.
    pub fn start(binary: &str, env: &[(&str, String)]) -> Gateway {
        let mut command = Command::new(binary);
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
        Gateway { child, addr }
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
