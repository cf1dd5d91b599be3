//! The built binaries as child processes, for tests that kill or signal them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{connect, eventually, free_port, venv_bin, wait_serving, workspace_bin};

/// The `taskwire-api` binary as a child process, killed on drop.
#[derive(Debug)]
pub struct ApiProcess {
    pub addr: SocketAddr,
    proc: Proc,
}

impl ApiProcess {
    /// Starts it on a free port with extra environment, and waits until it answers.
    pub async fn spawn(nats_url: &str, db_url: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut child = Command::new(workspace_bin("taskwire-api"));
        child
            .args([
                "--listen",
                &addr.to_string(),
                "--admin-listen",
                "off",
                "--nats-url",
                nats_url,
                "--database-url",
                db_url,
            ])
            .args([
                "--nats-timeout",
                "2s",
                "--outbox-lease",
                "3s",
                "--outbox-poll",
                "100ms",
            ])
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        let p = Self {
            addr,
            proc: Proc::spawn(&mut child, "taskwire-api"),
        };
        eventually("the api process answers", || async move {
            let mut c = connect(addr).await.ok()?;
            c.list_tasks(taskwire::pb::v1::ListTasksRequest::default())
                .await
                .ok()
        })
        .await;
        p
    }

    /// Waits for it to exit by itself (e.g. an injected abort) and returns its status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.proc.wait_exit().await
    }
}

/// A binary of this workspace running as a child process; killed on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    what: &'static str,
}

impl Proc {
    /// Starts `cmd`; `what` names it in failures.
    pub fn spawn(cmd: &mut Command, what: &'static str) -> Self {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{what} starts: {e}"));
        Self { child, what }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process dies at once, whatever it holds.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {}", self.what);
    }

    /// Waits for it to exit by itself; returns its status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let what = self.what;
        eventually(&format!("{what} exits"), || {
            let status = self.child.try_wait().expect("try_wait");
            async move { status }
        })
        .await
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `taskwire-worker` binary as a child process (built-in kinds), for tests that
/// kill it. Killed on drop.
#[derive(Debug)]
pub struct WorkerProcess {
    proc: Proc,
    /// Its admin listener (/metrics), on a free port.
    pub admin: SocketAddr,
}

impl WorkerProcess {
    pub fn spawn(nats_url: &str, args: &[&str]) -> Self {
        Self::spawn_with_env(nats_url, args, &[])
    }

    /// As [`WorkerProcess::spawn`], with extra environment.
    pub fn spawn_with_env(nats_url: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = Command::new(workspace_bin("taskwire-worker"));
        cmd.args(["--admin-listen", &admin.to_string(), "--nats-url", nats_url]);
        // Short waits, unless the test sets its own.
        for (flag, value) in [("--ack-wait", "2s"), ("--backoff-base", "200ms")] {
            if !args.contains(&flag) {
                cmd.args([flag, value]);
            }
        }
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null());
        Self {
            proc: Proc::spawn(&mut cmd, "taskwire-worker"),
            admin,
        }
    }

    /// How many tasks it is running now (its `taskwire_worker_slots{state="used"}`),
    /// or None if its /metrics does not answer in time or has no such series yet.
    pub async fn tasks_running(&self) -> Option<u64> {
        // None while the process is starting (its admin listener not bound yet).
        let body = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            crate::try_http_get(self.admin, "/metrics"),
        )
        .await
        .ok()?
        .ok()?
        .1;
        body.lines()
            .find_map(|l| l.strip_prefix("taskwire_worker_slots{state=\"used\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    }

    /// SIGKILL: the process dies at once, whatever it holds.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM: a graceful shutdown.
    pub fn terminate(&self) {
        self.proc.signal("TERM");
    }

    /// Waits for it to exit by itself; returns its status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.proc.wait_exit().await
    }
}

/// `taskwire dev` as a child process on a free port with the given data dir, in a
/// process group of its own, as a shell runs a job: [`DevProcess::interrupt`] sends
/// SIGINT to the whole group, as Ctrl-C in a terminal does.
#[derive(Debug)]
pub struct DevProcess {
    pub addr: SocketAddr,
    /// Its admin listener: /metrics, /livez, /readyz.
    pub admin: SocketAddr,
    proc: Proc,
    data_dir: PathBuf,
}

impl DevProcess {
    pub async fn spawn(data_dir: &Path) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = Command::new(workspace_bin("taskwire"));
        cmd.args([
            "dev",
            "--listen",
            &addr.to_string(),
            "--web-listen",
            "127.0.0.1:0",
            "--admin-listen",
            &admin.to_string(),
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--nats-server")
        .arg(venv_bin("nats-server"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let proc = Proc::spawn(&mut cmd, "taskwire dev");
        wait_serving(addr).await;
        Self {
            addr,
            admin,
            proc,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// SIGKILL to dev alone: its nats-server is orphaned.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Ctrl-C: SIGINT to dev's whole process group, as a terminal sends it.
    pub fn interrupt(&self) {
        let group = format!("-{}", self.proc.id());
        let status = Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -INT -- {group}");
    }

    /// Waits (up to `PATIENCE`) for dev to exit; returns its status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.proc.wait_exit().await
    }

    /// The pid of the nats-server dev started (from its pid file).
    pub fn nats_pid(&self) -> Option<u32> {
        nats_pid(&self.data_dir)
    }
}

/// The pid in a dev data dir's nats-server pid file.
pub fn nats_pid(data_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join("nats-server.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a process is alive (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

impl Drop for DevProcess {
    /// Stops it as Ctrl-C would; if it is already dead (a test killed it), its
    /// orphaned nats-server is stopped through the pid file, so no test leaves one.
    fn drop(&mut self) {
        if !self.proc.exited() {
            self.proc.signal("INT");
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while !self.proc.exited() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.proc.kill();
        if let Some(pid) = self.nats_pid() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("nats-server") {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Runs the `taskwire` CLI with `args` (blocking; call from spawn_blocking).
pub fn cli(args: &[&str]) -> std::process::Output {
    Command::new(workspace_bin("taskwire"))
        .args(args)
        .env_remove("TASKWIRE_ADDR")
        .output()
        .expect("taskwire runs")
}

/// A taskwire service binary (`taskwire-api`, `-watch`, `-recorder`, `-worker`) as a
/// child process that can be killed, stopped and started again with the same
/// arguments and ports, as an operator's supervisor would. Every one gets an admin
/// listener on a free port; api and watch also a gRPC one. Killed on drop.
#[derive(Debug)]
pub struct ServiceProcess {
    bin: &'static str,
    args: Vec<String>,
    /// Its gRPC listener (api, watch).
    pub addr: Option<SocketAddr>,
    /// Its admin listener: /metrics, /readyz.
    pub admin: SocketAddr,
    proc: Option<Proc>,
}

impl ServiceProcess {
    /// Starts `bin` with `args` after the listeners and `--nats-url`, and waits until
    /// its /readyz says ready.
    pub async fn start(bin: &'static str, nats_url: &str, args: &[&str]) -> Self {
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let serves_grpc = matches!(bin, "taskwire-api" | "taskwire-watch");
        let addr = serves_grpc.then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let mut all = vec![
            "--admin-listen".to_string(),
            admin.to_string(),
            "--nats-url".to_string(),
            nats_url.to_string(),
        ];
        if let Some(addr) = addr {
            all.extend(["--listen".to_string(), addr.to_string()]);
        }
        all.extend(args.iter().map(|a| a.to_string()));
        let mut p = Self {
            bin,
            args: all,
            addr,
            admin,
            proc: None,
        };
        p.spawn().await;
        p
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(workspace_bin(self.bin));
        cmd.args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        self.proc = Some(Proc::spawn(&mut cmd, self.bin));
        let admin = self.admin;
        eventually(&format!("{} is ready", self.bin), || async move {
            // Not listening yet, or not ready: ask again.
            let ready = tokio::time::timeout(
                Duration::from_secs(1),
                crate::try_http_get(admin, "/readyz"),
            )
            .await;
            matches!(ready, Ok(Ok((200, _)))).then_some(())
        })
        .await;
    }

    /// kill -9: it dies at once, whatever it holds.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGTERM, and waits for it to exit (a graceful stop).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut p = self.proc.take().expect("running");
        p.signal("TERM");
        p.wait_exit().await
    }

    /// Starts it again with the same arguments and ports.
    pub async fn restart(&mut self) {
        assert!(self.proc.is_none(), "{} still runs", self.bin);
        self.spawn().await;
    }
}
