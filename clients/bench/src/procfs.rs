//! What /proc says about the deployment's processes: CPU time and resident memory;
//! and this process's open-files limit, which the processes it starts inherit.

use crate::results::Results;

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory of a process, in MB.
pub fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The soft limit on open files (sockets included) of this process and so of the
/// deployment it starts; None if unlimited or unknown.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// CPU seconds used so far by each of `processes` (role, pid; a role may have several),
/// the database server and this benchmark client: where the machine's two cores go
/// during a workload.
pub fn cpu_by_part(processes: &[(&'static str, u32)]) -> Vec<(&'static str, f64)> {
    let mut parts: Vec<(&'static str, f64)> = Vec::new();
    let mut add = |name: &'static str, secs: f64| match parts.iter_mut().find(|(n, _)| *n == name) {
        Some((_, s)) => *s += secs,
        None => parts.push((name, secs)),
    };
    for (role, pid) in processes {
        add(role, cpu_secs(*pid));
    }
    add("bench client", cpu_secs(std::process::id()));
    let mut db = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            db += cpu_secs(pid);
        }
    }
    add("postgres (all)", db);
    parts
}

/// CPU use by part from a moment on: [`CpuSince::report`] adds each part's share of a
/// core since [`CpuSince::now`].
pub struct CpuSince {
    processes: Vec<(&'static str, u32)>,
    before: Vec<(&'static str, f64)>,
    started: std::time::Instant,
}

impl CpuSince {
    /// From now on, for `processes` (a deployment's `pids()`) and the rest.
    pub fn now(processes: Vec<(&'static str, u32)>) -> Self {
        Self {
            before: cpu_by_part(&processes),
            processes,
            started: std::time::Instant::now(),
        }
    }

    pub fn report(self, r: &mut Results, workload: &'static str, db: &'static str) {
        let after = cpu_by_part(&self.processes);
        let wall = self.started.elapsed().as_secs_f64();
        for ((name, b), (_, a)) in self.before.iter().zip(&after) {
            r.add(
                workload,
                db,
                format!("CPU {name}"),
                (a - b) / wall * 100.0,
                "% of a core",
            );
        }
    }
}
