//! Task graphs: a handler's children, the parent's fan-in with their results, the
//! failure policies, cancel cascading, children a client adds, and the tree's
//! progress. Every test runs the whole system (api with its graph loop, recorder,
//! worker) on both databases.

use std::collections::HashSet;

use serde_json::{Value, json};
use taskwire::pb::v1::{TaskEvent, WatchTaskRequest};
use taskwire::{
    json::value_to_json,
    pb::v1::{
        CancelPolicy, CancelTaskRequest, ChildFailurePolicy, GetStatusRequest, ListTasksRequest,
        SubmitTaskRequest, Task, TaskState, task_service_client::TaskServiceClient,
    },
};
use taskwire_tests::{
    Db, Stack, WatchServer, both_databases, eventually, wait_terminal, watch_client,
};
use tonic::{Code, transport::Channel};

use super::{submit, submit_req};

async fn status(client: &TaskServiceClient<Channel>, id: &str) -> Task {
    client
        .clone()
        .get_status(GetStatusRequest {
            task_id: id.to_string(),
        })
        .await
        .expect("status")
        .into_inner()
}

/// Every child of `parent`, oldest first.
async fn children(client: &TaskServiceClient<Channel>, parent: &str) -> Vec<Task> {
    let mut tasks = client
        .clone()
        .list_tasks(ListTasksRequest {
            parent_id: parent.to_string(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list by parent")
        .into_inner()
        .tasks;
    tasks.reverse();
    tasks
}

fn output(t: &Task) -> Value {
    value_to_json(t.output.as_ref()).expect("JSON output")
}

fn state(t: &Task) -> TaskState {
    state_of(t.state)
}

fn state_of(s: i32) -> TaskState {
    TaskState::try_from(s).unwrap()
}

/// A parent with 20 children (each streams progress for 0.4 s) waits for them, then
/// its fan-in receives all 20 results in order; its progress, polled all along, never
/// goes backwards and ends at 1.
async fn fan_out_and_fan_in(db: Db) {
    let stack = Stack::start(db).await;
    let mut client = stack.client().await;
    let parent = submit(
        &mut client,
        submit_req(
            "demo.fanout",
            json!({"children": 20, "child_kind": "demo.sleep",
                   "child_input": {"seconds": 0.4, "steps": 4}, "fan_in_seconds": 0.3}),
        ),
    )
    .await;

    let mut seen = Vec::new();
    let mut waited = false;
    let done = loop {
        let t = status(&client, &parent).await;
        seen.push(t.progress.as_ref().map_or(0.0, |p| p.fraction));
        waited |= state(&t) == TaskState::Waiting;
        if state(&t).is_terminal() {
            break t;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(state(&done), TaskState::Succeeded, "{done:?}");
    assert!(waited, "the parent was seen WAITING for its children");
    assert!(
        seen.windows(2).all(|w| w[1] >= w[0]),
        "the tree's progress never goes backwards: {seen:?}"
    );
    assert!(
        seen.iter().any(|p| *p > 0.0 && *p < 1.0),
        "progress was seen between 0 and 1: {seen:?}"
    );
    assert_eq!(done.progress.as_ref().unwrap().fraction, 1.0);

    let out = output(&done);
    assert_eq!(out["received"], 20, "{out}");
    assert_eq!(out["succeeded"], 20, "{out}");
    let kids = children(&client, &parent).await;
    assert_eq!(kids.len(), 20);
    let ids: Vec<&str> = kids.iter().map(|k| k.id.as_str()).collect();
    let got: Vec<&str> = out["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids, "the fan-in got every child's result, in order");
    for (k, r) in kids.iter().zip(out["results"].as_array().unwrap()) {
        assert_eq!(k.parent_id, parent);
        assert_eq!(state(k), TaskState::Succeeded);
        assert_eq!(r["output"], output(k), "the result is the child's output");
    }
    let counts = done
        .children
        .expect("a parent's record counts its children");
    assert_eq!((counts.total, counts.succeeded, counts.active), (20, 20, 0));
}

/// A child that fails does what its policy says: FAIL_PARENT fails the parent at once
/// and cancels its other children; IGNORE leaves it out of the fan-in; CONTINUE hands
/// the fan-in its error.
async fn failure_policies(db: Db) {
    let stack = Stack::start(db).await;
    let mut client = stack.client().await;
    let spec = |policy: &str| {
        submit_req(
            "demo.fanout",
            json!({"children": 4, "fail": [1], "policy": policy,
                   "child_kind": "demo.sleep", "child_input": {"seconds": 0.5, "steps": 2}}),
        )
    };
    // Fail the parent: the others (0.5 s each) are still running when demo.fail ends.
    let strict = submit(
        &mut client,
        submit_req(
            "demo.fanout",
            json!({"children": 4, "fail": [1], "policy": "fail_parent",
                   "child_kind": "demo.sleep", "child_input": {"seconds": 30, "steps": 30}}),
        ),
    )
    .await;
    let ignore = submit(&mut client, spec("ignore")).await;
    let cont = submit(&mut client, spec("continue")).await;

    let failed = wait_terminal(&client, &strict).await;
    assert_eq!(state(&failed), TaskState::Failed, "{failed:?}");
    let error = failed.error.unwrap();
    assert_eq!(error.code, "CHILD_FAILED");
    assert!(error.message.contains("DEMO_FAILURE"), "{}", error.message);
    let kids = eventually("the failed parent's other children are cancelled", || {
        let client = client.clone();
        let strict = strict.clone();
        async move {
            let kids = children(&client, &strict).await;
            kids.iter().all(|k| state(k).is_terminal()).then_some(kids)
        }
    })
    .await;
    let states: Vec<TaskState> = kids.iter().map(state).collect();
    assert_eq!(
        states,
        [
            TaskState::Cancelled,
            TaskState::Failed,
            TaskState::Cancelled,
            TaskState::Cancelled
        ]
    );

    let ignored = wait_terminal(&client, &ignore).await;
    assert_eq!(state(&ignored), TaskState::Succeeded, "{ignored:?}");
    let out = output(&ignored);
    assert_eq!(
        (out["received"].clone(), out["succeeded"].clone()),
        (json!(3), json!(3))
    );

    let continued = wait_terminal(&client, &cont).await;
    assert_eq!(state(&continued), TaskState::Succeeded, "{continued:?}");
    let out = output(&continued);
    assert_eq!(
        (out["received"].clone(), out["succeeded"].clone()),
        (json!(4), json!(3))
    );
    let failed_child = &out["results"][1];
    assert_eq!(failed_child["state"], "TASK_STATE_FAILED");
    assert_eq!(failed_child["error"], "DEMO_FAILURE");
    let counts = continued.children.unwrap();
    assert_eq!((counts.total, counts.succeeded, counts.failed), (4, 3, 1));
}

/// Cancelling a waiting parent cancels its running children before CancelTask
/// answers; with the ABANDON policy they run on to their end.
async fn cancel_cascades(db: Db) {
    let stack = Stack::start(db).await;
    let mut client = stack.client().await;
    let fan = |seconds: f64| {
        json!({"children": 3, "child_kind": "demo.sleep",
               "child_input": {"seconds": seconds, "steps": 10}})
    };
    let parent = submit(&mut client, submit_req("demo.fanout", fan(30.0))).await;
    let abandoning = submit(
        &mut client,
        SubmitTaskRequest {
            cancel_policy: CancelPolicy::Abandon as i32,
            ..submit_req("demo.fanout", fan(1.0))
        },
    )
    .await;
    for p in [&parent, &abandoning] {
        eventually("the children run", || {
            let client = client.clone();
            async move {
                let kids = children(&client, p).await;
                (kids.len() == 3 && kids.iter().all(|k| state(k) == TaskState::Running))
                    .then_some(())
            }
        })
        .await;
    }

    let cancelled = client
        .cancel_task(CancelTaskRequest {
            task_id: parent.clone(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(state(&cancelled), TaskState::Cancelled);
    for k in children(&client, &parent).await {
        assert_eq!(
            state(&k),
            TaskState::Cancelled,
            "child {} was cancelled with its parent",
            k.id
        );
    }

    client
        .cancel_task(CancelTaskRequest {
            task_id: abandoning.clone(),
        })
        .await
        .expect("cancel");
    for k in children(&client, &abandoning).await {
        let k = wait_terminal(&client, &k.id).await;
        assert_eq!(
            state(&k),
            TaskState::Succeeded,
            "an abandoned child runs on"
        );
    }
}

/// A client adds a child to a running task: it is listed under it and counted on its
/// record. Bad parents are refused with clear codes, and nothing is written.
async fn client_children(db: Db) {
    let stack = Stack::start(db).await;
    let watch = WatchServer::start(&stack.nats.url(), &stack.db.url).await;
    let mut client = stack.client().await;
    let parent = submit(
        &mut client,
        submit_req("demo.sleep", json!({"seconds": 30, "steps": 30})),
    )
    .await;
    // Running, its tree watched from before the child exists.
    eventually("the parent runs", || {
        let client = client.clone();
        let parent = parent.clone();
        async move { (state(&status(&client, &parent).await) == TaskState::Running).then_some(()) }
    })
    .await;
    let mut tree = watch_client(watch.addr)
        .await
        .watch_task(WatchTaskRequest {
            task_id: parent.clone(),
            after_seq: 0,
            tree: true,
        })
        .await
        .expect("a tree watch starts")
        .into_inner();
    let child = submit(
        &mut client,
        SubmitTaskRequest {
            parent_id: parent.clone(),
            child_failure: ChildFailurePolicy::Ignore as i32,
            ..submit_req("demo.echo", json!({"from": "a client"}))
        },
    )
    .await;
    let listed: HashSet<String> = children(&client, &parent)
        .await
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, HashSet::from([child.clone()]));
    let c = wait_terminal(&client, &child).await;
    assert_eq!(c.parent_id, parent);
    assert_eq!(c.child_failure, ChildFailurePolicy::Ignore as i32);
    let p = status(&client, &parent).await;
    let counts = p.children.expect("counted");
    assert_eq!((counts.total, counts.succeeded), (1, 1));
    assert_eq!(state(&p), TaskState::Running, "the parent's worker went on");
    // The live tree watch followed the child from its first event to its end.
    let mut child_states = Vec::new();
    while let Some(e) = tree.message().await.expect("the tree stream") {
        if e.task_id == child {
            assert_eq!(
                (e.parent_id.as_str(), e.kind.as_str()),
                (parent.as_str(), "demo.echo")
            );
            child_states.push(state_of(e.state));
            if state_of(e.state).is_terminal() {
                break;
            }
        }
    }
    assert_eq!(
        child_states.last(),
        Some(&TaskState::Succeeded),
        "{child_states:?}"
    );
    drop(tree);

    // A parent waiting for its children takes no more.
    let waiting = submit(
        &mut client,
        submit_req(
            "demo.fanout",
            json!({"children": 1, "child_kind": "demo.sleep", "child_input": {"seconds": 30}}),
        ),
    )
    .await;
    eventually("the fan-out parent waits", || {
        let client = client.clone();
        let waiting = waiting.clone();
        async move { (state(&status(&client, &waiting).await) == TaskState::Waiting).then_some(()) }
    })
    .await;
    let e = client
        .clone()
        .submit_task(SubmitTaskRequest {
            parent_id: waiting.clone(),
            ..submit_req("demo.echo", json!(1))
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let kids = eventually("the waiting parent's child is created", || {
        let client = client.clone();
        let waiting = waiting.clone();
        async move { Some(children(&client, &waiting).await).filter(|k| !k.is_empty()) }
    })
    .await;
    let kinds: Vec<&str> = kids.iter().map(|k| k.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["demo.sleep"],
        "its own child, and not the refused one"
    );

    let refused = |req: SubmitTaskRequest, code: Code| {
        let mut client = client.clone();
        async move {
            let e = client.submit_task(req).await.expect_err("refused");
            assert_eq!(e.code(), code, "{e:?}");
            assert!(!e.message().is_empty());
        }
    };
    let echo = || submit_req("demo.echo", json!(1));
    refused(
        SubmitTaskRequest {
            parent_id: "not-a-task".into(),
            ..echo()
        },
        Code::InvalidArgument,
    )
    .await;
    refused(
        SubmitTaskRequest {
            child_failure: ChildFailurePolicy::Ignore as i32,
            ..echo()
        },
        Code::InvalidArgument,
    )
    .await;
    refused(
        SubmitTaskRequest {
            parent_id: parent.clone(),
            child_failure: 99,
            ..echo()
        },
        Code::InvalidArgument,
    )
    .await;
    refused(
        SubmitTaskRequest {
            parent_id: taskwire::domain::TaskId::new().to_string(),
            ..echo()
        },
        Code::NotFound,
    )
    .await;
    client
        .clone()
        .cancel_task(CancelTaskRequest {
            task_id: parent.clone(),
        })
        .await
        .expect("cancel");
    refused(
        SubmitTaskRequest {
            parent_id: parent.clone(),
            ..echo()
        },
        Code::FailedPrecondition,
    )
    .await;
    assert_eq!(
        children(&client, &parent).await.len(),
        1,
        "nothing refused was written"
    );
}

/// A tree watch streams the parent's and its children's events in one order; one
/// dropped midway and resumed from its last seq gets exactly the rest (no gap, no
/// repeat): what it got in two parts is what a full replay of the tree gets.
async fn tree_watch_resumes(db: Db) {
    let stack = Stack::start(db).await;
    let watch = WatchServer::start(&stack.nats.url(), &stack.db.url).await;
    let mut client = stack.client().await;
    let parent = submit(
        &mut client,
        submit_req(
            "demo.fanout",
            json!({"children": 5, "child_kind": "demo.sleep",
                   "child_input": {"seconds": 0.5, "steps": 5}, "fan_in_seconds": 0.2}),
        ),
    )
    .await;
    let tree_watch = |after_seq: u64| {
        let parent = parent.clone();
        let addr = watch.addr;
        async move {
            watch_client(addr)
                .await
                .watch_task(WatchTaskRequest {
                    task_id: parent,
                    after_seq,
                    tree: true,
                })
                .await
                .expect("a tree watch starts")
                .into_inner()
        }
    };
    // The first part: until some child has reported progress, then the client leaves.
    let mut first: Vec<TaskEvent> = Vec::new();
    let mut stream = tree_watch(0).await;
    while let Some(e) = stream.message().await.expect("stream ok") {
        let child_progress = !e.parent_id.is_empty() && e.progress.is_some();
        first.push(e);
        if child_progress {
            break;
        }
    }
    drop(stream);
    let resume_at = first.last().expect("events before the drop").seq;
    let mut rest = Vec::new();
    let mut stream = tree_watch(resume_at).await;
    while let Some(e) = stream.message().await.expect("stream ok") {
        rest.push(e);
    }
    let mut full = Vec::new();
    let mut stream = tree_watch(0).await;
    while let Some(e) = stream.message().await.expect("stream ok") {
        full.push(e);
    }

    let seqs = |v: &[TaskEvent]| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    let joined: Vec<TaskEvent> = first.iter().chain(&rest).cloned().collect();
    assert_eq!(
        seqs(&joined),
        seqs(&full),
        "no gap and no repeat across the resume"
    );
    assert_eq!(joined, full);
    assert!(
        seqs(&full).windows(2).all(|w| w[1] > w[0]),
        "one order, by seq"
    );
    let last = full.last().unwrap();
    assert_eq!(last.task_id, parent);
    assert_eq!(
        last.state,
        TaskState::Succeeded as i32,
        "it ends with the parent's end"
    );
    let kids: HashSet<String> = children(&client, &parent)
        .await
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(kids.len(), 5);
    let streamed: HashSet<String> = full
        .iter()
        .filter(|e| e.parent_id == parent)
        .map(|e| e.task_id.clone())
        .collect();
    assert_eq!(streamed, kids, "every child's events are in the tree");
    for e in &full {
        let (parent_id, kind) = if e.task_id == parent {
            ("", "demo.fanout")
        } else {
            (parent.as_str(), "demo.sleep")
        };
        assert_eq!((e.parent_id.as_str(), e.kind.as_str()), (parent_id, kind));
        if e.task_id != parent && e.state == TaskState::Succeeded as i32 {
            assert!(
                full.iter().any(|p| p.task_id == parent
                    && p.seq > e.seq
                    && p.progress.as_ref().is_some_and(|p| p.message == "fan-in")),
                "the fan-in starts after every child ended"
            );
        }
    }
}

both_databases!(
    fan_out_and_fan_in,
    tree_watch_resumes,
    failure_policies,
    cancel_cascades,
    client_children
);
