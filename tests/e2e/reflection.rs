//! grpcurl (a new user's first tool) works without proto files: reflection lists both
//! services, and a submit typed as plain JSON round-trips.

use std::process::Command;

use taskwire_tests::{Api, Db, NatsServer, api_config, venv_bin};

fn grpcurl(args: &[&str]) -> String {
    let out = Command::new(venv_bin("grpcurl"))
        .args(args)
        .output()
        .expect("grpcurl runs");
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_submits() {
    let nats = NatsServer::start();
    let db = Db::Sqlite.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let addr = api.addr.to_string();

    let list = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || grpcurl(&["-plaintext", &addr, "list"])
    })
    .await
    .unwrap();
    for svc in [
        "taskwire.v1.TaskService",
        "taskwire.v1.WatchService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            list.lines().any(|l| l == svc),
            "{svc} missing from:\n{list}"
        );
    }

    let out = tokio::task::spawn_blocking(move || {
        let submitted = grpcurl(&[
            "-plaintext",
            "-d",
            r#"{"kind":"demo.sleep","input":{"seconds":1,"steps":2},"labels":{"team":"ml"}}"#,
            &addr,
            "taskwire.v1.TaskService/SubmitTask",
        ]);
        let v: serde_json::Value = serde_json::from_str(&submitted).expect("JSON answer");
        let id = v["taskId"].as_str().expect("taskId").to_string();
        assert_eq!(v["state"], "TASK_STATE_QUEUED");
        let status = grpcurl(&[
            "-plaintext",
            "-d",
            &format!(r#"{{"task_id":"{id}"}}"#),
            &addr,
            "taskwire.v1.TaskService/GetStatus",
        ]);
        let health = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
        (status, health)
    })
    .await
    .unwrap();
    let status: serde_json::Value = serde_json::from_str(&out.0).unwrap();
    assert_eq!(status["kind"], "demo.sleep");
    assert_eq!(
        status["input"],
        serde_json::json!({"seconds": 1, "steps": 2})
    );
    assert!(out.1.contains("SERVING"), "{}", out.1);
}
