//! The nats-server `taskwire dev` starts for itself, with its store in the data dir.
//!
//! It runs in a process group of its own: a Ctrl-C in the terminal goes to the whole
//! foreground group, and a nats-server in it would exit at once, before the worker
//! could hand its running tasks back. Dev stops it itself, last.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

use super::DevError;

/// The nats-server this process started.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    /// Its client URL.
    pub url: String,
    pid_file: PathBuf,
}

impl NatsServer {
    /// Starts a nats-server on the port of the previous run if it is free (so workers
    /// in other languages that joined through `<data>/nats-url` find it again), else
    /// on a free one, and waits until it accepts connections.
    pub async fn start(binary: Option<&Path>, data_dir: &Path) -> Result<Self, DevError> {
        let bin = find(binary)?;
        let pid_file = data_dir.join("nats-server.pid");
        kill_stale(&pid_file);
        let conf = data_dir.join("nats.conf");
        // Task inputs up to 1 MiB need more than NATS's default max_payload.
        std::fs::write(&conf, "max_payload: 8MB\n")
            .map_err(|e| DevError::io("writing nats.conf", e))?;
        let url_file = data_dir.join("nats-url");
        let previous = std::fs::read_to_string(&url_file)
            .ok()
            .and_then(|u| u.trim().rsplit(':').next()?.parse::<u16>().ok());
        let port = previous
            .and_then(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
            .or_else(|| std::net::TcpListener::bind("127.0.0.1:0").ok())
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
            .ok_or_else(|| DevError::Nats("no free port for nats-server".into()))?;
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(data_dir.join("nats"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the terminal's process group: see the module's doc.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| DevError::io(format!("starting {}", bin.display()), e))?;
        if let Some(pid) = child.id() {
            let _ = std::fs::write(&pid_file, pid.to_string());
        }
        let url = format!("nats://127.0.0.1:{port}");
        // For workers in other languages (and examples) that join this dev system.
        let _ = std::fs::write(&url_file, &url);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err(DevError::Nats(format!(
                    "nats-server did not start on port {port}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self {
            child,
            url,
            pid_file,
        })
    }

    /// Stops it: SIGTERM lets it flush its store; SIGKILL if it lingers past `patience`.
    pub async fn stop(&mut self, patience: Duration) {
        if let Some(pid) = self.child.id() {
            signal(pid, "-TERM");
            if tokio::time::timeout(patience, self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.kill().await;
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}

/// A nats-server left running by a `taskwire dev` that was killed (its children are
/// not killed with it) holds the store: stop it before starting ours. Only a process
/// whose command line is a nats-server is touched.
fn kill_stale(pid_file: &Path) {
    let Ok(pid) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let pid = pid.trim();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains("nats-server") {
        tracing::info!(pid, "stopping the nats-server of an earlier taskwire dev");
        let _ = std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status();
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// The nats-server to run: the flag, else the project's .venv, else PATH; it must be
/// 2.10 or newer (JetStream features taskwire uses).
fn find(explicit: Option<&Path>) -> Result<PathBuf, DevError> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => vec![
            PathBuf::from(".venv/bin/nats-server"),
            PathBuf::from("nats-server"),
        ],
    };
    let mut seen = Vec::new();
    for c in candidates {
        let Ok(out) = std::process::Command::new(&c).arg("--version").output() else {
            continue;
        };
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if new_enough(&version) {
            return Ok(c);
        }
        seen.push(format!("{} ({version})", c.display()));
    }
    Err(DevError::Nats(format!(
        "no nats-server 2.10 or newer found{}; run scripts/setup (it installs one into .venv) \
         or pass --nats-server",
        if seen.is_empty() {
            String::new()
        } else {
            format!(" (found {})", seen.join(", "))
        }
    )))
}

/// "nats-server: v2.15.1" -> at least 2.10?
fn new_enough(version: &str) -> bool {
    let v = version.rsplit('v').next().unwrap_or("");
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 10)
}

#[cfg(test)]
mod tests {
    #[test]
    fn nats_versions() {
        assert!(super::new_enough("nats-server: v2.15.1"));
        assert!(super::new_enough("nats-server: v2.10.0"));
        assert!(!super::new_enough("nats-server: v2.9.15"));
        assert!(!super::new_enough("garbage"));
    }
}
