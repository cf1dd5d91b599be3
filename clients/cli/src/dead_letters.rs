//! Dead letters from the command line: `retry` (one task, or every FAILED task matching
//! a filter after a dry run and a confirmation), `discard` (the same, deleting), and
//! `attempts` (a task's attempt history).

use std::io::{BufRead, Write};

use clap::Args;
use taskwire::pb::v1::{
    BulkTasksRequest, ListAttemptsRequest, RetryTaskRequest, task_service_client::TaskServiceClient,
};

use crate::{
    CliError,
    client::{Target, channel, parse_label},
    output,
};

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The FAILED task to retry (or --all with filters).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<String>,
    #[command(flatten)]
    bulk: BulkArgs,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct DiscardArgs {
    #[command(flatten)]
    bulk: BulkArgs,
}

/// Which FAILED tasks a bulk retry or discard applies to.
#[derive(Debug, Args)]
pub struct BulkArgs {
    /// Every FAILED task matching the filters (all of them without filters).
    #[arg(long)]
    all: bool,
    /// Only this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only tasks with this label, key=value; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Only tasks whose error has this code, e.g. DEMO_FAILURE.
    #[arg(long)]
    error_code: Option<String>,
    /// Count the matching tasks; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask before changing them.
    #[arg(long, short)]
    yes: bool,
}

#[derive(Debug, Args)]
pub struct AttemptsArgs {
    /// The task.
    id: String,
    /// One JSON object per attempt.
    #[arg(long)]
    json: bool,
}

pub async fn retry(to: &Target, a: RetryArgs) -> Result<(), CliError> {
    let mut client = TaskServiceClient::new(channel(to).await?);
    match a.id {
        Some(task_id) => {
            let t = client
                .retry_task(RetryTaskRequest { task_id })
                .await?
                .into_inner();
            if a.json {
                println!("{}", output::task_json(&t));
            } else {
                println!("{}", output::task_line(&t));
            }
            Ok(())
        }
        None => bulk(&mut client, a.bulk, Bulk::Retry).await,
    }
}

pub async fn discard(to: &Target, a: DiscardArgs) -> Result<(), CliError> {
    if !a.bulk.all {
        return Err(CliError::Usage(
            "discard deletes every FAILED task matching --kind, --label and --error-code: \
             say --all"
                .into(),
        ));
    }
    let mut client = TaskServiceClient::new(channel(to).await?);
    bulk(&mut client, a.bulk, Bulk::Discard).await
}

pub async fn attempts(to: &Target, a: AttemptsArgs) -> Result<(), CliError> {
    let attempts = TaskServiceClient::new(channel(to).await?)
        .list_attempts(ListAttemptsRequest { task_id: a.id })
        .await?
        .into_inner()
        .attempts;
    for at in &attempts {
        if a.json {
            println!("{}", output::attempt_json(at));
        } else {
            println!("{}", output::attempt_line(at));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Bulk {
    Retry,
    Discard,
}

/// The dry run, the question, then the real run in calls of up to 1,000 until none
/// of the counted tasks remain.
async fn bulk(
    client: &mut TaskServiceClient<crate::client::Authed>,
    a: BulkArgs,
    op: Bulk,
) -> Result<(), CliError> {
    let filter = BulkTasksRequest {
        kind: a.kind.clone().unwrap_or_default(),
        labels: a.labels.iter().cloned().collect(),
        error_code: a.error_code.clone().unwrap_or_default(),
        ..Default::default()
    };
    let call = |client: &mut TaskServiceClient<crate::client::Authed>, req| {
        let mut client = client.clone();
        async move {
            match op {
                Bulk::Retry => client.retry_tasks(req).await,
                Bulk::Discard => client.discard_tasks(req).await,
            }
            .map(tonic::Response::into_inner)
        }
    };
    let dry = call(
        client,
        BulkTasksRequest {
            dry_run: true,
            ..filter.clone()
        },
    )
    .await?;
    let verb = match op {
        Bulk::Retry => "retry",
        Bulk::Discard => "discard",
    };
    let what = describe(&a);
    if a.dry_run || dry.matched == 0 {
        println!("{} failed task(s) match{what}", dry.matched);
        return Ok(());
    }
    if !a.yes && !confirm(&format!("{verb} all {} failed task(s){what}?", dry.matched)) {
        return Err(CliError::Usage(format!(
            "not confirmed: nothing done (pass --yes to {verb} the {} task(s) without asking)",
            dry.matched
        )));
    }
    let mut done = 0;
    loop {
        let r = call(
            client,
            BulkTasksRequest {
                finished_before: dry.finished_before,
                ..filter.clone()
            },
        )
        .await?;
        done += r.matched;
        for id in &r.task_ids {
            println!("{id}");
        }
        if r.remaining == 0 || r.matched == 0 {
            break;
        }
    }
    eprintln!("{verb}: {done} of {} task(s)", dry.matched);
    Ok(())
}

fn describe(a: &BulkArgs) -> String {
    let mut parts = Vec::new();
    if let Some(k) = &a.kind {
        parts.push(format!("kind {k}"));
    }
    for (k, v) in &a.labels {
        parts.push(format!("label {k}={v}"));
    }
    if let Some(c) = &a.error_code {
        parts.push(format!("error {c}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// Asks on stderr, reads a line from stdin: yes only for y or yes.
fn confirm(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}
