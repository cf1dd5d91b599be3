//! Prometheus metrics: one recorder per process (the `metrics` facade with the
//! Prometheus exporter), rendered at `/metrics` on the admin listener. Every name
//! taskwire exports is a constant here, with its help text, so docs, the Grafana
//! dashboard and the alert rules can be checked against one list
//! (`tests/e2e/metrics.rs`).
//!
//! Conventions: base units (`_seconds`, `_bytes`), counters end in `_total`, labels are
//! bounded (`kind` is a kind some worker serves, else `unserved`; `service`, `method`,
//! `code` come from the contract; never a task id).

use std::sync::OnceLock;

use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
/// The `metrics` macros, so services record through this module alone.
pub use ::metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// gRPC calls handled, by `service`, `method` and status `code`.
pub const GRPC_HANDLED: &str = "taskwire_grpc_server_handled_total";
/// gRPC handling time (a stream's whole life for streaming RPCs), by `service`, `method`.
pub const GRPC_SECONDS: &str = "taskwire_grpc_server_handling_seconds";
/// Tasks accepted by SubmitTask, by `kind`.
pub const TASKS_SUBMITTED: &str = "taskwire_tasks_submitted_total";
/// Submits answered with an earlier task (same idempotency key), by `kind`.
pub const TASKS_DEDUPLICATED: &str = "taskwire_tasks_deduplicated_total";
/// Attempts started (RUNNING appended), by `kind`.
pub const TASKS_STARTED: &str = "taskwire_tasks_started_total";
/// Attempts that failed and will be retried, by `kind`.
pub const TASKS_RETRIED: &str = "taskwire_tasks_retried_total";
/// Tasks that ended SUCCEEDED, by `kind`.
pub const TASKS_SUCCEEDED: &str = "taskwire_tasks_succeeded_total";
/// Tasks that ended FAILED, by `kind`.
pub const TASKS_FAILED: &str = "taskwire_tasks_failed_total";
/// Tasks cancelled by request, by `kind`.
pub const TASKS_CANCELLED: &str = "taskwire_tasks_cancelled_total";
/// Tasks copied to the dead-letter stream, by `kind`.
pub const TASKS_DEAD_LETTERED: &str = "taskwire_tasks_dead_lettered_total";
/// Time from submit to the first attempt's start, by `kind`.
pub const TASK_QUEUE_WAIT: &str = "taskwire_task_queue_wait_seconds";
/// Time an attempt ran, by `kind` and `outcome` (succeeded, retried, failed, stopped,
/// handed_back, or unsettled: its outcome could not be stored and it is redelivered).
pub const TASK_RUN: &str = "taskwire_task_run_seconds";
/// Tasks waiting to be delivered (the kind's consumer's pending count), by `kind`.
pub const QUEUE_PENDING: &str = "taskwire_queue_pending_tasks";
/// Tasks delivered and not yet acknowledged (running, or waiting out a retry's
/// delay), by `kind`.
pub const QUEUE_ACK_PENDING: &str = "taskwire_queue_ack_pending_tasks";
/// Age of the oldest task waiting to be delivered, by `kind` (0 when none waits).
pub const QUEUE_OLDEST_AGE: &str = "taskwire_queue_oldest_waiting_seconds";
/// A worker's task slots, by `state` (used, free).
pub const WORKER_SLOTS: &str = "taskwire_worker_slots";
/// Events stored but not yet recorded in the database.
pub const RECORDER_LAG_EVENTS: &str = "taskwire_recorder_lag_events";
/// Age of the oldest event not yet recorded (0 when caught up).
pub const RECORDER_LAG_SECONDS: &str = "taskwire_recorder_lag_seconds";
/// Events applied to the database by the recorder.
pub const RECORDER_EVENTS: &str = "taskwire_recorder_events_total";
/// FAILED tasks given a new run by RetryTask or RetryTasks, by `kind`.
pub const TASKS_RETRIED_BY_REQUEST: &str = "taskwire_tasks_retried_by_request_total";
/// Terminal tasks deleted by retention, by `state`.
pub const TASKS_EXPIRED: &str = "taskwire_tasks_expired_total";
/// Outbox rows (tasks committed, publish not yet confirmed or cleaned up).
pub const OUTBOX_ROWS: &str = "taskwire_outbox_rows";
/// Age of the oldest outbox row (0 when empty).
pub const OUTBOX_OLDEST_AGE: &str = "taskwire_outbox_oldest_seconds";
/// Open watch streams, by `rpc` (WatchTask, WatchTasks).
pub const WATCH_STREAMS: &str = "taskwire_watch_streams";
/// Events sent on watch streams, by `rpc`.
pub const WATCH_EVENTS_SENT: &str = "taskwire_watch_events_sent_total";
/// Watchers dropped from the hub for reading too slowly, by `rpc` (a WatchTask
/// catches up from the stream; a WatchTasks stream ends).
pub const WATCH_SLOW_DROPPED: &str = "taskwire_watch_slow_clients_dropped_total";
/// WatchTask streams resumed (after_seq > 0).
pub const WATCH_RESUMES: &str = "taskwire_watch_resumes_total";
/// Always 1, labelled with the `version` of this build.
pub const BUILD_INFO: &str = "taskwire_build_info";
/// Whether the process is ready (NATS and, where it has one, the database answer).
pub const READY: &str = "taskwire_ready";

/// The label value of a kind no worker serves (so a caller inventing kinds cannot grow
/// the label set).
pub const UNSERVED_KIND: &str = "unserved";

/// Histogram buckets, in seconds: from a fast gRPC call to a long task.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0, 3600.0,
];

/// Whether a recorder is installed (an admin listener serves /metrics): pollers that
/// only feed gauges (queue depths, lags) run only then.
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs this process's recorder once (every service of `taskwire dev`, and every
/// test of a test binary, share it) and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Only fails if another recorder was installed first: then that one records.
            let _ = ::metrics::set_global_recorder(recorder);
            describe();
            ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
            ::metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            metrics_process::Collector::default().describe();
            handle
        })
        .clone()
}

/// The exposition text: every metric, after refreshing the process metrics.
pub fn render(handle: &PrometheusHandle) -> String {
    metrics_process::Collector::default().collect();
    handle.render()
}

fn describe() {
    describe_counter!(
        GRPC_HANDLED,
        "gRPC calls handled, by service, method and status code"
    );
    describe_histogram!(
        GRPC_SECONDS,
        Unit::Seconds,
        "gRPC handling time (a stream's whole life for streaming RPCs)"
    );
    describe_counter!(TASKS_SUBMITTED, "Tasks accepted by SubmitTask");
    describe_counter!(
        TASKS_DEDUPLICATED,
        "Submits answered with an earlier task (same idempotency key)"
    );
    describe_counter!(TASKS_STARTED, "Attempts started");
    describe_counter!(TASKS_RETRIED, "Attempts that failed and will be retried");
    describe_counter!(TASKS_SUCCEEDED, "Tasks that ended SUCCEEDED");
    describe_counter!(TASKS_FAILED, "Tasks that ended FAILED");
    describe_counter!(TASKS_CANCELLED, "Tasks cancelled by request");
    describe_counter!(
        TASKS_DEAD_LETTERED,
        "Tasks copied to the dead-letter stream"
    );
    describe_histogram!(
        TASK_QUEUE_WAIT,
        Unit::Seconds,
        "Time from submit to the first attempt's start"
    );
    describe_histogram!(TASK_RUN, Unit::Seconds, "Time an attempt ran, by outcome");
    describe_gauge!(QUEUE_PENDING, "Tasks waiting to be delivered");
    describe_gauge!(
        QUEUE_ACK_PENDING,
        "Tasks delivered and not yet acknowledged"
    );
    describe_gauge!(
        QUEUE_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest task waiting to be delivered"
    );
    describe_gauge!(WORKER_SLOTS, "A worker's task slots, used and free");
    describe_gauge!(
        RECORDER_LAG_EVENTS,
        "Events stored but not yet recorded in the database"
    );
    describe_gauge!(
        RECORDER_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest event not yet recorded"
    );
    describe_counter!(
        RECORDER_EVENTS,
        "Events applied to the database by the recorder"
    );
    describe_counter!(TASKS_EXPIRED, "Terminal tasks deleted by retention");
    describe_counter!(
        TASKS_RETRIED_BY_REQUEST,
        "FAILED tasks given a new run by RetryTask or RetryTasks"
    );
    describe_gauge!(
        OUTBOX_ROWS,
        "Outbox rows (tasks committed, publish not yet confirmed)"
    );
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest outbox row"
    );
    describe_gauge!(WATCH_STREAMS, "Open watch streams");
    describe_counter!(WATCH_EVENTS_SENT, "Events sent on watch streams");
    describe_counter!(
        WATCH_SLOW_DROPPED,
        "Watchers dropped from the hub for reading too slowly"
    );
    describe_counter!(WATCH_RESUMES, "WatchTask streams resumed with after_seq");
    describe_gauge!(
        BUILD_INFO,
        "Always 1, labelled with the version of this build"
    );
    describe_gauge!(
        READY,
        "Whether the process is ready: NATS (and the database) answer"
    );
}

/// Counts one task event (one of the `TASKS_*` counters) for `kind`.
pub fn task_event(name: &'static str, kind: &str) {
    ::metrics::counter!(name, "kind" => kind.to_string()).increment(1);
}
