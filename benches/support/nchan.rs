//! The reference SSE fan-out server for the side-by-side bench: nginx with the nchan module
//! (Debian: `apt-get install -y nginx-light libnginx-mod-nchan`), run as the current user from
//! the shared configuration (`../shared/bench/nchan/nginx.conf`, used unchanged) with its own
//! pid file, logs and temp paths in a fresh run directory. Stopped (SIGTERM, fast shutdown) and
//! its run directory removed on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `libnginx-mod-nchan` puts the module the configuration loads.
pub const MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";
/// The address the shared configuration listens on.
pub const ADDR: &str = "127.0.0.1:8090";
/// How to install it.
pub const INSTALL: &str = "apt-get install -y nginx-light libnginx-mod-nchan";

pub struct Nchan {
    pub child: Child,
    run_dir: PathBuf,
}

/// The nginx binary, if nginx and the nchan module are both installed; otherwise why not.
pub fn locate() -> Result<PathBuf, String> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].iter().map(PathBuf::from).find(|p| p.exists());
    let Some(nginx) = nginx else {
        return Err(format!("nginx is not installed (no /usr/sbin/nginx); install it with: {INSTALL}"));
    };
    if !Path::new(MODULE).exists() {
        return Err(format!("the nchan module is not installed (no {MODULE}); install it with: {INSTALL}"));
    }
    Ok(nginx)
}

impl Nchan {
    /// Starts nginx in the foreground from the configuration template `conf` (its `@RUN_DIR@`
    /// replaced) and waits until it accepts connections on [`ADDR`].
    pub fn start(nginx: &Path, conf: &Path, label: &str) -> Result<Nchan, String> {
        let template = std::fs::read_to_string(conf).map_err(|e| format!("reading {}: {e}", conf.display()))?;
        if std::net::TcpListener::bind(ADDR).is_err() {
            return Err(format!("{ADDR} is already in use: stop whatever listens there first"));
        }
        let run_dir = std::env::temp_dir().join(format!("sfgw-nchan-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir).map_err(|e| format!("creating {}: {e}", run_dir.display()))?;
        let conf_path = run_dir.join("nginx.conf");
        std::fs::write(&conf_path, template.replace("@RUN_DIR@", &run_dir.display().to_string()))
            .map_err(|e| format!("writing {}: {e}", conf_path.display()))?;
        // The workers run as the user that starts the bench (nginx would switch root's workers
        // to `nobody`).
        let globals = if is_root() { "daemon off; user root root;" } else { "daemon off;" };
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&run_dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(run_dir.join("startup-error.log"))
            .args(["-g", globals])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", nginx.display()))?;
        let mut nchan = Nchan { child, run_dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = nchan.child.try_wait() {
                let log = std::fs::read_to_string(nchan.run_dir.join("error.log")).unwrap_or_default();
                return Err(format!("nginx exited at start ({status}): {log}"));
            }
            if TcpStream::connect(ADDR).is_ok() {
                return Ok(nchan);
            }
            if Instant::now() > deadline {
                return Err(format!("nginx did not listen on {ADDR} within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        pids.extend(children(master));
        pids
    }
}

/// The processes whose parent is `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1));
            ppid.and_then(|p| p.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)) == Some("0")
}

impl Drop for Nchan {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}
