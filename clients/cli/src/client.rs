//! The client commands: submit, status, watch, cancel, ls.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use taskwire::auth::Bearer;

use crate::tree::TreeView;
use taskwire::backoff::Backoff;
use taskwire::pb::v1::{
    CancelPolicy, CancelTaskRequest, ChildFailurePolicy, GetQueueStatsRequest, GetStatusRequest,
    ListTasksRequest, SubmitTaskRequest, SubmitTasksRequest, TaskEvent, TaskState,
    WatchTaskRequest, submit_tasks_result::Outcome, task_service_client::TaskServiceClient,
    watch_service_client::WatchServiceClient,
};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use crate::{CliError, output};

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The task kind, e.g. demo.sleep.
    #[arg(required_unless_present = "from_file")]
    kind: Option<String>,
    /// Submit every task of a file (`-`: standard input) instead, one
    /// SubmitTaskRequest per line in JSON (`{"kind":"demo.echo","input":{..},
    /// "idempotencyKey":"k1"}`), in batches of 1,000. Prints a line per task: its id,
    /// or with --json its answer or error, with its line number.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kind", "input", "idempotency_key", "max_attempts", "labels", "delay", "run_at", "parent", "cancel_policy", "watch"])]
    from_file: Option<PathBuf>,
    /// The input, as JSON.
    #[arg(long, default_value = "null")]
    input: String,
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Attempts before the task fails (0 = the server default).
    #[arg(long, default_value_t = 0)]
    max_attempts: u32,
    /// A label, key=value; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Start no earlier than this long from now, e.g. 90s, 2h, 1d (the task is
    /// SCHEDULED until then).
    #[arg(long, value_parser = taskwire::config::parse_duration, conflicts_with = "run_at")]
    delay: Option<std::time::Duration>,
    /// Start no earlier than this time (RFC 3339, e.g. 2026-12-24T18:00:00Z).
    #[arg(long, value_parser = parse_time)]
    run_at: Option<prost_types::Timestamp>,
    /// Submit it as a child of this task (same tenant; a waiting parent's fan-in
    /// waits for it).
    #[arg(long, value_name = "TASK_ID")]
    parent: Option<String>,
    /// As a child: what its failure does to the parent.
    #[arg(long, value_parser = parse_child_failure, requires = "parent")]
    on_failure: Option<ChildFailurePolicy>,
    /// What cancelling it does to its children: cascade (default) or abandon.
    #[arg(long, value_parser = parse_cancel_policy)]
    cancel_policy: Option<CancelPolicy>,
    /// Follow the task's progress until it finishes.
    #[arg(long)]
    watch: bool,
    /// Print JSON (the response, or with --watch one event per line).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The task id.
    id: String,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The task id.
    id: String,
    /// Print one JSON event per line instead of a progress bar.
    #[arg(long)]
    json: bool,
    /// Resume after this seq.
    #[arg(long, default_value_t = 0)]
    after_seq: u64,
    /// Also follow its children (and theirs): a bar per task, under its parent.
    #[arg(long)]
    tree: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only tasks in this state: scheduled, queued, running, retrying, succeeded,
    /// failed, cancelled.
    #[arg(long, value_parser = parse_state)]
    state: Option<TaskState>,
    #[arg(long)]
    kind: Option<String>,
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Only the children of this task.
    #[arg(long, value_name = "TASK_ID")]
    parent: Option<String>,
    #[arg(long, default_value_t = 20)]
    page_size: i32,
    #[arg(long, default_value = "")]
    page_token: String,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct KindsArgs {
    /// Minutes of finished tasks to count (1 to 60).
    #[arg(long, default_value_t = 15)]
    window: u32,
    /// Print one JSON object per kind.
    #[arg(long)]
    json: bool,
}

fn parse_child_failure(s: &str) -> Result<ChildFailurePolicy, String> {
    match s {
        "fail-parent" => Ok(ChildFailurePolicy::FailParent),
        "ignore" => Ok(ChildFailurePolicy::Ignore),
        "continue" => Ok(ChildFailurePolicy::Continue),
        _ => Err(format!("{s:?} is not fail-parent, ignore or continue")),
    }
}

fn parse_cancel_policy(s: &str) -> Result<CancelPolicy, String> {
    match s {
        "cascade" => Ok(CancelPolicy::Cascade),
        "abandon" => Ok(CancelPolicy::Abandon),
        _ => Err(format!("{s:?} is not cascade or abandon")),
    }
}

fn parse_time(s: &str) -> Result<prost_types::Timestamp, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an RFC 3339 time like 2026-12-24T18:00:00Z"))
}

pub(crate) fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

fn parse_state(s: &str) -> Result<TaskState, String> {
    let name = format!(
        "TASK_STATE_{}",
        s.to_ascii_uppercase().trim_start_matches("TASK_STATE_")
    );
    TaskState::from_str_name(&name).ok_or_else(|| format!("unknown state {s:?}"))
}

/// Where a taskwire service is, and how to reach it: the token to send and, for an
/// `https://` address, the CA that signed its certificate (default: the system's).
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: String,
    pub token: Option<String>,
    pub ca: Option<PathBuf>,
}

pub(crate) type Authed = InterceptedService<Channel, Bearer>;

pub(crate) async fn channel(to: &Target) -> Result<Authed, CliError> {
    let addr = &to.addr;
    let mut endpoint = Endpoint::from_shared(addr.to_string())
        .map_err(|e| CliError::Usage(format!("bad address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(3));
    if addr.starts_with("https://") {
        let tls = match &to.ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    CliError::Usage(format!("cannot read --ca {}: {e}", path.display()))
                })?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_enabled_roots(),
        };
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| CliError::Usage(format!("TLS for {addr}: {e}")))?;
    }
    let bearer = Bearer::new(to.token.as_deref())
        .map_err(|_| CliError::Usage("--token must be printable ASCII".into()))?;
    let channel = endpoint.connect().await.map_err(|e| {
        CliError::Unreachable(format!("{addr}: {}", taskwire::telemetry::chain(&e)))
    })?;
    Ok(InterceptedService::new(channel, bearer))
}

async fn tasks(to: &Target) -> Result<TaskServiceClient<Authed>, CliError> {
    Ok(TaskServiceClient::new(channel(to).await?))
}

pub async fn submit(to: &Target, watch_to: &Target, a: SubmitArgs) -> Result<(), CliError> {
    if let Some(path) = &a.from_file {
        return submit_file(to, path, a.json).await;
    }
    let kind = a.kind.expect("clap requires KIND without --from-file");
    let input: serde_json::Value = serde_json::from_str(&a.input)
        .map_err(|e| CliError::Usage(format!("--input is not JSON: {e}")))?;
    // With OTEL_EXPORTER_OTLP_ENDPOINT set, the submit starts the task's trace: its span
    // context goes to the api as the traceparent metadata.
    let _telemetry = taskwire::telemetry::init("taskwire-cli", Default::default());
    let span = tracing::info_span!("taskwire submit", kind = %kind);
    let mut request = tonic::Request::new(SubmitTaskRequest {
        kind,
        input: Some(taskwire::json::json_to_value(&input)),
        idempotency_key: a.idempotency_key.unwrap_or_default(),
        max_attempts: a.max_attempts,
        timeout: None,
        labels: a.labels.into_iter().collect::<HashMap<_, _>>(),
        delay: a
            .delay
            .map(|d| prost_types::Duration::try_from(d).expect("a parsed delay fits")),
        run_at: a.run_at,
        parent_id: a.parent.unwrap_or_default(),
        child_failure: a.on_failure.map_or(0, |p| p as i32),
        cancel_policy: a.cancel_policy.map_or(0, |p| p as i32),
    });
    if let Some(tp) = taskwire::telemetry::trace::traceparent_of(&span)
        .and_then(|tp| tp.parse::<tonic::metadata::MetadataValue<_>>().ok())
    {
        request
            .metadata_mut()
            .insert(taskwire::telemetry::trace::TRACEPARENT, tp);
    }
    let resp = tracing::Instrument::instrument(tasks(to).await?.submit_task(request), span)
        .await?
        .into_inner();
    // A kind no worker serves waits forever: say so where a person looks.
    if !resp.warning.is_empty() {
        eprintln!("warning: {}", resp.warning);
    }
    if a.watch {
        if !a.json {
            eprintln!("task {}", resp.task_id);
        }
        return follow(watch_to, &resp.task_id, 0, a.json, View::single(a.json)).await;
    }
    if a.json {
        let mut line = serde_json::json!({"task_id": resp.task_id, "state": output::state_name(resp.state), "deduplicated": resp.deduplicated});
        if !resp.warning.is_empty() {
            line["warning"] = resp.warning.into();
        }
        println!("{line}");
    } else {
        println!("{}", resp.task_id);
    }
    Ok(())
}

/// Tasks per SubmitTasks call (the server's limit).
const FILE_BATCH: usize = 1000;

/// `submit --from-file`: every line read and checked before anything is sent (a
/// malformed line is a usage error, exit 2), then sent in batches. Exits 4 if the
/// server refused any task; the others are submitted all the same.
async fn submit_file(to: &Target, path: &std::path::Path, json: bool) -> Result<(), CliError> {
    use std::io::BufRead;
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut requests = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line =
            line.map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let task = serde_json::from_str(&line)
            .map_err(|e| e.to_string())
            .and_then(|v| taskwire::rest::from_json("taskwire.v1.SubmitTaskRequest", v))
            .map_err(|e| CliError::Usage(format!("line {}: {e}", i + 1)))?;
        requests.push((i + 1, task));
    }
    let mut client = tasks(to).await?;
    let mut refused = 0;
    for chunk in requests.chunks(FILE_BATCH) {
        let (lines, batch): (Vec<usize>, Vec<SubmitTaskRequest>) = chunk.iter().cloned().unzip();
        let results = client
            .submit_tasks(SubmitTasksRequest { tasks: batch })
            .await?
            .into_inner()
            .results;
        for (line, result) in lines.into_iter().zip(results) {
            match result.outcome {
                Some(Outcome::Accepted(a)) if json => {
                    println!(
                        "{}",
                        serde_json::json!({"line": line, "task_id": a.task_id, "state": output::state_name(a.state), "deduplicated": a.deduplicated})
                    );
                }
                Some(Outcome::Accepted(a)) => println!("{}", a.task_id),
                Some(Outcome::Error(e)) => {
                    refused += 1;
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"line": line, "error": {"code": e.code, "message": e.message}})
                        );
                    } else {
                        eprintln!("line {line}: {}: {}", tonic::Code::from(e.code), e.message);
                    }
                }
                None => {
                    return Err(CliError::Rejected(tonic::Status::internal(
                        "the server answered a task with no outcome",
                    )));
                }
            }
        }
    }
    if refused > 0 {
        return Err(CliError::Rejected(tonic::Status::invalid_argument(
            format!("{refused} of {} tasks refused", requests.len()),
        )));
    }
    Ok(())
}

pub async fn status(to: &Target, a: IdArgs) -> Result<(), CliError> {
    let t = tasks(to)
        .await?
        .get_status(GetStatusRequest { task_id: a.id })
        .await?
        .into_inner();
    print_task(&t, a.json);
    Ok(())
}

pub async fn cancel(to: &Target, a: IdArgs) -> Result<(), CliError> {
    let t = tasks(to)
        .await?
        .cancel_task(CancelTaskRequest { task_id: a.id })
        .await?
        .into_inner();
    print_task(&t, a.json);
    Ok(())
}

pub async fn ls(to: &Target, a: LsArgs) -> Result<(), CliError> {
    let page = tasks(to)
        .await?
        .list_tasks(ListTasksRequest {
            page_size: a.page_size,
            page_token: a.page_token,
            state: a.state.map_or(0, |s| s as i32),
            kind: a.kind.unwrap_or_default(),
            labels: a.labels.into_iter().collect(),
            parent_id: a.parent.unwrap_or_default(),
        })
        .await?
        .into_inner();
    for t in &page.tasks {
        print_task(t, a.json);
    }
    if !page.next_page_token.is_empty() && !a.json {
        eprintln!("more: --page-token {}", page.next_page_token);
    }
    Ok(())
}

pub async fn kinds(to: &Target, a: KindsArgs) -> Result<(), CliError> {
    let stats = tasks(to)
        .await?
        .get_queue_stats(GetQueueStatsRequest {
            window_minutes: a.window,
        })
        .await?
        .into_inner();
    if a.json {
        for k in &stats.kinds {
            println!("{}", output::kind_json(k));
        }
    } else {
        print!("{}", output::kinds_table(&stats));
    }
    Ok(())
}

/// A task as one JSON line (scripts) or one line for people.
fn print_task(t: &taskwire::pb::v1::Task, json: bool) {
    if json {
        println!("{}", output::task_json(t));
    } else {
        println!("{}", output::task_line(t));
    }
}

pub async fn watch(watch_to: &Target, a: WatchArgs) -> Result<(), CliError> {
    let view = if a.tree {
        View::Tree(TreeView::new(a.json))
    } else {
        View::single(a.json)
    };
    follow(watch_to, &a.id, a.after_seq, a.json, view).await
}

/// How a watch is drawn: one bar, or a bar per task of a tree.
enum View {
    Single(ProgressBar),
    Tree(TreeView),
}

impl View {
    fn single(hidden: bool) -> Self {
        let bar = if hidden {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(1000)
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:40}] {percent:>3}% {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        View::Single(bar)
    }

    fn show(&mut self, event: &TaskEvent) {
        match self {
            View::Tree(tree) => tree.show(event),
            View::Single(bar) => {
                if let Some(p) = &event.progress {
                    bar.set_position((p.fraction * 1000.0) as u64);
                    if !p.message.is_empty() {
                        bar.set_message(format!(
                            "{} {}",
                            output::short_state(event.state),
                            p.message
                        ));
                    }
                } else {
                    bar.set_message(output::short_state(event.state).to_string());
                }
            }
        }
    }

    fn println(&self, line: &str) {
        match self {
            View::Tree(tree) => tree.println(line),
            View::Single(bar) => bar.println(line),
        }
    }

    fn status(&self, line: String) {
        match self {
            View::Tree(tree) => tree.println(&line),
            View::Single(bar) => bar.set_message(line),
        }
    }

    fn finish(&self) {
        match self {
            View::Tree(tree) => tree.finish(),
            View::Single(bar) => bar.finish_and_clear(),
        }
    }
}

/// How long a dropped watch keeps trying to resume without hearing anything.
const RESUME_PATIENCE: Duration = Duration::from_secs(60);
/// Waits between tries to resume: 100 ms doubling up to 2 s.
const RESUME_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// Follows a task to its end, resuming after a dropped connection from the last seq,
/// and turns its final state into the result (and so the exit code).
async fn follow(
    to: &Target,
    id: &str,
    after_seq: u64,
    json: bool,
    mut view: View,
) -> Result<(), CliError> {
    let mut last_seq = after_seq;
    let mut last: Option<TaskEvent> = None;
    let mut quiet_since = tokio::time::Instant::now();
    let mut retries = RESUME_BACKOFF.retries();
    loop {
        match stream_once(to, id, &mut last_seq, &mut last, &mut view, json).await {
            Ok(()) => break,
            // The server refused (unknown task, bad id): resuming cannot help.
            Err(CliError::Rejected(s)) => return Err(CliError::Rejected(s)),
            Err(e) => {
                if quiet_since.elapsed() > RESUME_PATIENCE {
                    return Err(e);
                }
                view.status(format!("reconnecting ({e})"));
                retries.wait().await;
            }
        }
        if last.as_ref().is_some_and(|e| e.seq == last_seq) {
            quiet_since = tokio::time::Instant::now();
            retries.reset();
        }
    }
    view.finish();
    let Some(end) = last else {
        return Err(CliError::Unreachable(
            "the stream ended without events".into(),
        ));
    };
    let output = end
        .output
        .as_ref()
        .and_then(|v| taskwire::json::value_to_json(Some(v)).ok());
    match TaskState::try_from(end.state) {
        Ok(TaskState::Succeeded) => {
            if !json {
                println!("SUCCEEDED {}", output.unwrap_or(serde_json::Value::Null));
            }
            Ok(())
        }
        Ok(TaskState::Cancelled) => Err(CliError::TaskCancelled(id.to_string())),
        _ => Err(CliError::TaskFailed(
            id.to_string(),
            end.error.map_or_else(
                || "unknown error".into(),
                |e| format!("{}: {}", e.code, e.message),
            ),
        )),
    }
}

/// One WatchTask stream, until it ends (Ok: the task finished) or breaks.
async fn stream_once(
    to: &Target,
    id: &str,
    last_seq: &mut u64,
    last: &mut Option<TaskEvent>,
    view: &mut View,
    json: bool,
) -> Result<(), CliError> {
    let tree = matches!(view, View::Tree(_));
    let mut client = WatchServiceClient::new(channel(to).await?);
    let mut stream = client
        .watch_task(WatchTaskRequest {
            task_id: id.to_string(),
            after_seq: *last_seq,
            tree,
        })
        .await?
        .into_inner();
    while let Some(event) = stream.message().await? {
        if event.seq < *last_seq || (event.seq == *last_seq && last.is_some()) {
            continue;
        }
        *last_seq = event.seq;
        if json {
            println!("{}", output::event_json(&event));
        } else {
            view.show(&event);
            if !event.message.is_empty() {
                view.println(&event.message);
            }
        }
        // In a tree, the watched task's own end ends it.
        if tree && event.task_id != id {
            continue;
        }
        *last = Some(event);
    }
    match last {
        Some(e) if TaskState::try_from(e.state).is_ok_and(TaskState::is_terminal) => Ok(()),
        _ => Err(CliError::Unreachable("the stream ended early".into())),
    }
}
