//! Printing tasks and events: for people (a line or a progress bar) and, with --json,
//! for scripts (one JSON object per line, field names as in the contract).

use prost_types::Timestamp;
use serde_json::{Value, json};
use taskwire::{
    json::value_to_json,
    pb::v1::{Progress, Task, TaskError, TaskEvent, TaskState},
};

pub fn state_name(state: i32) -> &'static str {
    TaskState::try_from(state).map_or("TASK_STATE_UNKNOWN", |s| s.as_str_name())
}

/// A short name for people: "RUNNING".
pub fn short_state(state: i32) -> &'static str {
    state_name(state).trim_start_matches("TASK_STATE_")
}

fn progress(p: &Option<Progress>) -> Value {
    p.as_ref().map_or(
        Value::Null,
        |p| json!({"fraction": p.fraction, "message": p.message}),
    )
}

fn error(e: &Option<TaskError>) -> Value {
    e.as_ref().map_or(
        Value::Null,
        |e| json!({"code": e.code, "message": e.message, "retryable": e.retryable}),
    )
}

fn value(v: &Option<prost_types::Value>) -> Value {
    v.as_ref()
        .and_then(|v| value_to_json(Some(v)).ok())
        .unwrap_or(Value::Null)
}

pub fn event_json(e: &TaskEvent) -> Value {
    let mut v = json!({
        "task_id": e.task_id,
        "seq": e.seq,
        "time": e.time.as_ref().map(rfc3339),
        "state": state_name(e.state),
        "progress": progress(&e.progress),
        "attempt": e.attempt,
        "output": value(&e.output),
        "error": error(&e.error),
        "message": e.message,
    });
    // A tree watch's events say where in the tree they are.
    if !e.kind.is_empty() {
        v["parent_id"] = json!(e.parent_id);
        v["kind"] = json!(e.kind);
    }
    v
}

pub fn task_json(t: &Task) -> Value {
    json!({
        "id": t.id,
        "kind": t.kind,
        "state": state_name(t.state),
        "progress": progress(&t.progress),
        "input": value(&t.input),
        "output": value(&t.output),
        "error": error(&t.error),
        "attempt": t.attempt,
        "max_attempts": t.max_attempts,
        "run": t.run,
        "run_at": t.run_at.as_ref().map(rfc3339),
        "labels": t.labels,
        "created_at": t.created_at.as_ref().map(rfc3339),
        "started_at": t.started_at.as_ref().map(rfc3339),
        "finished_at": t.finished_at.as_ref().map(rfc3339),
        "updated_at": t.updated_at.as_ref().map(rfc3339),
        "last_seq": t.last_seq,
        "parent_id": Some(&t.parent_id).filter(|p| !p.is_empty()),
        "children": t.children.as_ref().map(|c| json!({
            "total": c.total, "active": c.active, "succeeded": c.succeeded,
            "failed": c.failed, "cancelled": c.cancelled,
        })),
    })
}

/// A task as one line for people.
pub fn task_line(t: &Task) -> String {
    let pct = t.progress.as_ref().map_or(0.0, |p| p.fraction * 100.0);
    let mut line = format!(
        "{}  {:<10} {:<16} {:>5.1}%  attempt {}/{}",
        t.id,
        short_state(t.state),
        t.kind,
        pct,
        t.attempt,
        t.max_attempts
    );
    if t.run > 1 {
        line += &format!("  run {}", t.run);
    }
    if let Some(c) = t.children.as_ref().filter(|c| c.total > 0) {
        line += &format!(
            "  children {}/{} done ({} failed, {} cancelled)",
            c.total - c.active,
            c.total,
            c.failed,
            c.cancelled
        );
    }
    if !t.parent_id.is_empty() {
        line += &format!("  parent {}", t.parent_id);
    }
    if let Some(e) = &t.error {
        line += &format!("  error {}: {}", e.code, e.message);
    }
    line
}

/// One attempt of a task's history as JSON (scripts).
pub fn attempt_json(a: &taskwire::pb::v1::Attempt) -> Value {
    json!({
        "run": a.run,
        "attempt": a.attempt,
        "started_at": a.started_at.as_ref().map(rfc3339),
        "ended_at": a.ended_at.as_ref().map(rfc3339),
        "outcome": outcome(a.outcome),
        "error": error(&a.error),
        "worker": a.worker,
    })
}

/// One attempt of a task's history as a line for people.
pub fn attempt_line(a: &taskwire::pb::v1::Attempt) -> String {
    let took = match (&a.started_at, &a.ended_at) {
        (Some(s), Some(e)) => {
            let us =
                taskwire::json::timestamp_to_micros(e) - taskwire::json::timestamp_to_micros(s);
            format!("{:.3}s", us as f64 / 1e6)
        }
        _ => "-".into(),
    };
    let mut line = format!(
        "run {} attempt {}  {:<9} {:>9}  started {}  {}",
        a.run,
        a.attempt,
        outcome(a.outcome),
        took,
        a.started_at.as_ref().map_or("-".into(), rfc3339),
        if a.worker.is_empty() { "-" } else { &a.worker },
    );
    if let Some(e) = &a.error {
        line += &format!("  error {}: {}", e.code, e.message);
    }
    line
}

/// An attempt's outcome: its end state, RUNNING while it runs, LOST when its worker
/// vanished (the next attempt took over).
fn outcome(state: i32) -> &'static str {
    match TaskState::try_from(state) {
        Ok(TaskState::Unspecified) => "LOST",
        _ => short_state(state),
    }
}

/// RFC 3339 in UTC with microseconds, e.g. 2026-11-25T02:51:22.260488Z.
pub fn rfc3339(ts: &Timestamp) -> String {
    let days = ts.seconds.div_euclid(86_400);
    let secs = ts.seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        ts.nanos / 1000
    )
}

/// One kind's queue as one JSON object (scripts).
pub fn kind_json(k: &taskwire::pb::v1::KindStats) -> Value {
    json!({
        "kind": k.kind,
        "waiting": k.waiting,
        "running": k.running,
        "max_running": (k.max_running > 0).then_some(k.max_running),
        "oldest_waiting_seconds": k.oldest_waiting.as_ref().map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9),
        "succeeded": k.succeeded,
        "failed": k.failed,
        "finished_per_minute": k.finished_per_minute,
    })
}

/// The kinds as a table for people, with a sparkline of tasks finished per minute.
pub fn kinds_table(stats: &taskwire::pb::v1::GetQueueStatsResponse) -> String {
    let mut out = format!(
        "{:<28} {:>8} {:>8} {:>10} {:>10} {:>8}  finished/min (last {} min)\n",
        "KIND", "WAITING", "RUNNING", "OLDEST", "SUCCEEDED", "FAILED", stats.window_minutes
    );
    for k in &stats.kinds {
        let oldest = k.oldest_waiting.as_ref().map_or("-".to_string(), |d| {
            let s = d.seconds as f64 + f64::from(d.nanos) / 1e9;
            if s < 60.0 {
                format!("{s:.1}s")
            } else if s < 3600.0 {
                format!("{:.1}m", s / 60.0)
            } else {
                format!("{:.1}h", s / 3600.0)
            }
        });
        // A kind with a limit on tasks running at once shows it: `2/2` is full.
        let running = match k.max_running {
            0 => k.running.to_string(),
            max => format!("{}/{max}", k.running),
        };
        out += &format!(
            "{:<28} {:>8} {:>8} {:>10} {:>10} {:>8}  {}\n",
            k.kind,
            k.waiting,
            running,
            oldest,
            k.succeeded,
            k.failed,
            sparkline(&k.finished_per_minute)
        );
    }
    out
}

/// `▁▂▃▅▇`-style bars, scaled to the largest value (blank for zero).
fn sparkline(values: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|&v| match v {
            0 => ' ',
            v => BARS[((v * 7).div_ceil(max.max(1)) as usize).min(7)],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        let ts = Timestamp {
            seconds: 1_795_575_082,
            nanos: 260_488_000,
        };
        assert_eq!(rfc3339(&ts), "2026-11-25T02:51:22.260488Z");
        assert_eq!(
            rfc3339(&Timestamp {
                seconds: 0,
                nanos: 0
            }),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339(&Timestamp {
                seconds: 951_782_400,
                nanos: 0
            }),
            "2000-02-29T00:00:00.000000Z"
        );
    }
}
