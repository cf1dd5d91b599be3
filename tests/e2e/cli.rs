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
