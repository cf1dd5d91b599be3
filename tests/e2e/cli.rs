//! The `taskwire` CLI and `taskwire dev`, as a user runs them: exit codes a script can
//! test, --json lines, a dev process killed mid-task and restarted, Ctrl-C that leaves
//! no nats-server behind.

use taskwire_tests::{DevProcess, cli, venv_bin};

pub(crate) async fn run(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&refs)
    })
    .await
    .unwrap()
}

pub(crate) fn args(addr: &str, rest: &[&str]) -> Vec<String> {
    let mut v = vec!["--addr".to_string(), format!("http://{addr}")];
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

pub(crate) fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exit_codes_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::spawn(dir.path()).await;
    let addr = dev.addr.to_string();

    // submit --watch --json: one event per line, ending SUCCEEDED; exit 0.
    let out = run(args(
        &addr,
        &[
            "submit",
            "demo.agent",
            "--input",
            r#"{"prompt":"hi","tokens":8,"delay_ms":50}"#,
            "--watch",
            "--json",
        ],
    ))
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    // The first line is the state when the watch attached, then every later event.
    assert!(lines.len() >= 2, "{lines:?}");
    assert_eq!(lines.last().unwrap()["state"], "TASK_STATE_SUCCEEDED");
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let id = lines[0]["task_id"].as_str().unwrap().to_string();

    // status --json of that task.
    let out = run(args(&addr, &["status", &id, "--json"])).await;
    assert_eq!(out.status.code(), Some(0));
    let task: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(task["state"], "TASK_STATE_SUCCEEDED");
    assert!(task["output"]["text"].as_str().is_some());

    // A failing task: exit 1.
    let out = run(args(&addr, &["submit", "demo.fail", "--watch"])).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEMO_FAILURE"));

    // A cancelled task: watch exits 3.
    let out = run(args(
        &addr,
        &[
            "submit",
            "demo.sleep",
            "--input",
            r#"{"seconds":30,"steps":30}"#,
        ],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0));
    let sleeper = stdout(&out).trim().to_string();
    let out = run(args(&addr, &["cancel", &sleeper])).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("CANCELLED"));
    let out = run(args(&addr, &["watch", &sleeper])).await;
    assert_eq!(out.status.code(), Some(3));
    // Cancelling a finished task: refused, exit 4.
    let out = run(args(&addr, &["cancel", &id])).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("succeeded"));

    // Bad input and unknown tasks: exit 4 with the server's reason.
    let out = run(args(&addr, &["submit", "Not A Kind"])).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kind"));
    let out = run(args(&addr, &["status", &uuid::Uuid::now_v7().to_string()])).await;
    assert_eq!(out.status.code(), Some(4));
    // Bad usage: exit 2.
    let out = run(args(
        &addr,
        &["submit", "demo.echo", "--input", "{not json"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(2));
    // ls --json lists them, with filters.
    let out = run(args(&addr, &["ls", "--json", "--state", "cancelled"])).await;
    let listed: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], sleeper.as_str());

    // grpcurl, as the README shows it, against dev.
    let grpcurl = venv_bin("grpcurl");
    let a = addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(grpcurl)
            .args([
                "-plaintext",
                "-d",
                r#"{"kind":"demo.echo","input":{"x":1}}"#,
                &a,
                "taskwire.v1.TaskService/SubmitTask",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let echo = v["taskId"].as_str().unwrap().to_string();
    let out = run(args(&addr, &["watch", &echo, "--json"])).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains(r#""output":{"x":1}"#),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_exits_5() {
    let out = run(vec![
        "--addr".into(),
        "http://127.0.0.1:1".into(),
        "status".into(),
        uuid::Uuid::now_v7().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(5));
}

/// Dead letters and delays from the command line: `retry` one task (a new run),
/// `attempts` shows both runs, a bulk retry asks first (and without an answer does
/// nothing), `--yes` retries exactly the counted tasks, `discard` deletes them;
/// `submit --delay` is SCHEDULED and listed as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_dead_letters_and_delays() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::spawn(dir.path()).await;
    let addr = dev.addr.to_string();
    let batch = format!("batch=cli-{}", std::process::id());

    // Two dead letters: demo.fail always fails (exit 1 with --watch).
    let mut ids = Vec::new();
    for _ in 0..2 {
        let out = run(args(
            &addr,
            &[
                "submit",
                "demo.fail",
                "--label",
                &batch,
                "--watch",
                "--json",
            ],
        ))
        .await;
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let first: serde_json::Value =
            serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
        ids.push(first["task_id"].as_str().unwrap().to_string());
    }

    // Retry one: run 2.
    let out = run(args(&addr, &["retry", &ids[0], "--json"])).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(t["run"], 2);
    // It fails again; then its attempts show both runs.
    let attempts = taskwire_tests::eventually("both runs end", || {
        let addr = addr.clone();
        let id = ids[0].clone();
        async move {
            let out = run(args(&addr, &["attempts", &id, "--json"])).await;
            let lines: Vec<serde_json::Value> = stdout(&out)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            (lines.len() == 2 && lines[1]["outcome"] == "FAILED").then_some(lines)
        }
    })
    .await;
    assert_eq!(
        (attempts[0]["run"].as_u64(), attempts[1]["run"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(attempts[0]["error"]["code"], "DEMO_FAILURE");

    // Bulk: a dry run counts; without --yes and no answer on stdin nothing happens.
    let filter = ["--all", "--kind", "demo.fail", "--label", batch.as_str()];
    let dry = run(args(
        &addr,
        &[&["retry"], &filter[..], &["--dry-run"]].concat(),
    ))
    .await;
    assert_eq!(
        stdout(&dry).trim(),
        format!("2 failed task(s) match (kind demo.fail, label {batch})")
    );
    let unconfirmed = run(args(&addr, &[&["retry"], &filter[..]].concat())).await;
    assert_eq!(unconfirmed.status.code(), Some(2));
    let yes = run(args(&addr, &[&["retry"], &filter[..], &["--yes"]].concat())).await;
    assert_eq!(
        yes.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&yes.stderr)
    );
    let mut retried: Vec<String> = stdout(&yes).lines().map(str::to_string).collect();
    retried.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(retried, expected);

    // Discard them once they failed again; then they are gone (exit 4: not found).
    taskwire_tests::eventually("the retried runs fail again", || {
        let addr = addr.clone();
        async move {
            let dry = run(args(
                &addr,
                &[&["discard"], &filter[..], &["--dry-run"]].concat(),
            ))
            .await;
            stdout(&dry).starts_with("2 ").then_some(())
        }
    })
    .await;
    let gone = run(args(
        &addr,
        &[&["discard"], &filter[..], &["--yes"]].concat(),
    ))
    .await;
    assert_eq!(
        gone.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    for id in &ids {
        let out = run(args(&addr, &["status", id])).await;
        assert_eq!(out.status.code(), Some(4), "{id} was discarded");
    }

    // A delayed submit is SCHEDULED.
    let out = run(args(
        &addr,
        &["submit", "demo.echo", "--delay", "1h", "--json"],
    ))
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = run(args(&addr, &["ls", "--state", "scheduled", "--json"])).await;
    let rows: Vec<serde_json::Value> = stdout(&listed)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "TASK_STATE_SCHEDULED");
    assert!(rows[0]["run_at"].is_string());
}

/// `submit --from-file`: one task per JSON line, sent as SubmitTasks batches; a
/// refused line is reported with its number (exit 4) and the others are submitted; a
/// file with a malformed line sends nothing (exit 2); a resend is deduplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_submit_from_file() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::spawn(dir.path()).await;
    let addr = dev.addr.to_string();
    let file = dir.path().join("tasks.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"kind":"demo.echo","input":{"n":1},"idempotencyKey":"f-1"}"#,
            "\n\n",
            r#"{"kind":"Bad Kind","idempotency_key":"f-2"}"#,
            "\n",
            r#"{"kind":"demo.echo","input":{"n":3},"labels":{"from":"file"},"idempotencyKey":"f-3"}"#,
            "\n",
        ),
    )
    .unwrap();
    let path = file.to_str().unwrap();

    let lines = |o: &std::process::Output| -> Vec<serde_json::Value> {
        stdout(o)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    let first = run(args(&addr, &["submit", "--from-file", path, "--json"])).await;
    assert_eq!(
        first.status.code(),
        Some(4),
        "a task was refused: {first:?}"
    );
    let first = lines(&first);
    assert_eq!(first.len(), 3, "{first:?}");
    // Line numbers are the file's (line 2 is blank).
    assert_eq!(
        first
            .iter()
            .map(|l| l["line"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    assert_eq!(first[1]["error"]["code"], 3, "{first:?}");
    for l in [&first[0], &first[2]] {
        assert_eq!(l["deduplicated"], false, "{l}");
        let id = l["task_id"].as_str().unwrap();
        let out = run(args(&addr, &["watch", id, "--json"])).await;
        assert_eq!(out.status.code(), Some(0), "{id} succeeded: {out:?}");
    }

    // Again: the same tasks, deduplicated.
    let again = lines(&run(args(&addr, &["submit", "--from-file", path, "--json"])).await);
    for i in [0, 2] {
        assert_eq!(again[i]["task_id"], first[i]["task_id"]);
        assert_eq!(again[i]["deduplicated"], true);
    }

    // A malformed line: a usage error naming it, and nothing sent.
    std::fs::write(
        &file,
        "{\"kind\":\"demo.echo\",\"idempotencyKey\":\"f-9\"}\n{\"kind\":\n",
    )
    .unwrap();
    let bad = run(args(&addr, &["submit", "--from-file", path])).await;
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("line 2"),
        "{bad:?}"
    );
    let listed = run(args(&addr, &["ls", "--kind", "demo.echo", "--json"])).await;
    assert_eq!(
        stdout(&listed).lines().count(),
        2,
        "only the first file's two tasks exist: {listed:?}"
    );
}

/// A task graph from the CLI: the agent fans out to tool calls; `watch --tree --json`
/// prints every node's events, each naming its parent and kind, and ends with the
/// parent's; `ls --parent` lists the children; `status` counts them; a client's child
/// is added with `submit --parent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_task_tree() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::spawn(dir.path()).await;
    let addr = dev.addr.to_string();
    let out = run(args(
        &addr,
        &[
            "submit",
            "demo.agent",
            "--input",
            r#"{"prompt":"plan","tools":3,"tokens":4,"delay_ms":30}"#,
        ],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0));
    let parent = stdout(&out).trim().to_string();
    let out = run(args(&addr, &["watch", &parent, "--tree", "--json"])).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = events.last().unwrap();
    assert_eq!(
        (last["task_id"].as_str(), last["state"].as_str()),
        (Some(parent.as_str()), Some("TASK_STATE_SUCCEEDED"))
    );
    let children: std::collections::BTreeSet<&str> = events
        .iter()
        .filter(|e| e["parent_id"] == parent.as_str())
        .map(|e| {
            assert_eq!(e["kind"], "demo.agent");
            e["task_id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(children.len(), 3, "{events:?}");

    let out = run(args(&addr, &["ls", "--parent", &parent, "--json"])).await;
    let listed: std::collections::BTreeSet<String> = stdout(&out)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        listed,
        children.iter().map(|c| c.to_string()).collect(),
        "ls --parent lists exactly the children"
    );
    let out = run(args(&addr, &["status", &parent])).await;
    assert!(
        stdout(&out).contains("children 3/3 done"),
        "{}",
        stdout(&out)
    );

    // A client's child of a running task.
    let out = run(args(
        &addr,
        &[
            "submit",
            "demo.sleep",
            "--input",
            r#"{"seconds":30,"steps":30}"#,
        ],
    ))
    .await;
    let sleeper = stdout(&out).trim().to_string();
    let out = run(args(
        &addr,
        &[
            "submit",
            "demo.echo",
            "--parent",
            &sleeper,
            "--on-failure",
            "ignore",
            "--json",
        ],
    ))
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(args(&addr, &["submit", "demo.echo", "--parent", &parent])).await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "a finished parent takes no child"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("finished"));
    run(args(&addr, &["cancel", &sleeper])).await;
}
