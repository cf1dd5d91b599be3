//! Every store query against both databases.

use std::{collections::HashMap, time::Duration};

use taskwire::{
    domain::{Caller, IdempotencyKey, Labels, TaskId, TaskKind},
    json,
    pb::v1::{Progress, TaskError, TaskState},
    store::{EventUpdate, Inserted, ListQuery, NewTask, OutboxEntry, Store},
};
use taskwire_tests::{Db, both_databases};

fn new_task(key: Option<&str>, labels: &[(&str, &str)]) -> NewTask {
    let labels: HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    NewTask {
        id: TaskId::new(),
        kind: TaskKind::parse("demo.echo").unwrap(),
        caller: Caller::default(),
        tenant: taskwire::auth::Tenant::none(),
        idempotency_key: key.map(|k| IdempotencyKey::parse(k).unwrap().unwrap()),
        input: r#"{"a":1}"#.into(),
        labels: Labels::parse(&labels).unwrap(),
        max_attempts: 3,
        timeout: Some(Duration::from_millis(1500)),
        created_at_us: json::now_micros(),
        run_at_us: None,
        parent_id: None,
        child_failure: 0,
        cancel_policy: 0,
    }
}

fn outbox(lease_until_us: i64) -> OutboxEntry {
    OutboxEntry {
        subject: "taskwire.tasks.demo.echo".into(),
        payload: vec![1, 2, 3],
        lease_until_us,
    }
}

async fn tasks_round_trip(db: Db) {
    let db = db.create().await;
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    // Migrations are idempotent: a second connect (a restart) applies nothing new.
    let store2 = Store::connect(&db.url, &Default::default()).await.unwrap();
    store2.ping().await.unwrap();

    let t = new_task(Some("k1"), &[("team", "ml")]);
    assert_eq!(
        store.insert_task(&t, &outbox(0)).await.unwrap(),
        Inserted::New
    );
    let rec = store.get_task(t.id).await.unwrap().expect("stored");
    assert_eq!(rec.state, TaskState::Queued);
    assert_eq!(rec.input, r#"{"a":1}"#);
    assert_eq!(rec.timeout_ms, Some(1500));
    assert_eq!(rec.max_attempts, 3);
    assert_eq!(rec.last_seq, 0);
    assert_eq!(
        rec.to_proto().labels.get("team").map(String::as_str),
        Some("ml")
    );
    assert!(store.get_task(TaskId::new()).await.unwrap().is_none());

    // Same key, same caller: nothing written, the first task named.
    let dup = new_task(Some("k1"), &[]);
    assert_eq!(
        store.insert_task(&dup, &outbox(0)).await.unwrap(),
        Inserted::Duplicate(t.id)
    );
    assert!(store.get_task(dup.id).await.unwrap().is_none());
    // Same key, other caller: a new task.
    let other = NewTask {
        caller: Caller::parse("svc-b").unwrap(),
        ..new_task(Some("k1"), &[])
    };
    assert_eq!(
        store.insert_task(&other, &outbox(0)).await.unwrap(),
        Inserted::New
    );

    // One batch: a repeat of k1 (with labels), two tasks sharing a new key, and one
    // without a key. Only the new tasks get outbox rows and labels.
    let repeat = new_task(Some("k1"), &[("team", "dup")]);
    let (twin_a, twin_b) = (
        new_task(Some("k2"), &[("x", "1")]),
        new_task(Some("k2"), &[("x", "2")]),
    );
    let plain = new_task(None, &[("y", "1"), ("z", "2")]);
    let batch: Vec<_> = [&repeat, &twin_a, &twin_b, &plain]
        .into_iter()
        .map(|t| (t.clone(), outbox(0)))
        .collect();
    let results = store.insert_tasks(&batch).await.unwrap();
    assert_eq!(results[0], Inserted::Duplicate(t.id));
    assert_eq!(results[3], Inserted::New);
    let (winner, loser) = match (&results[1], &results[2]) {
        (Inserted::New, Inserted::Duplicate(w)) => (twin_a.id, (twin_b.id, *w)),
        (Inserted::Duplicate(w), Inserted::New) => (twin_b.id, (twin_a.id, *w)),
        other => panic!("one twin wins: {other:?}"),
    };
    assert_eq!(loser.1, winner, "the loser names the winner");
    for (id, queued) in [
        (repeat.id, false),
        (loser.0, false),
        (winner, true),
        (plain.id, true),
    ] {
        assert_eq!(
            store.in_outbox(id).await.unwrap(),
            queued,
            "outbox row of {id}"
        );
        assert_eq!(store.get_task(id).await.unwrap().is_some(), queued);
    }
    let by_label = |k: &str, v: &str| ListQuery {
        page_size: 10,
        after: None,
        state: None,
        kind: None,
        labels: Labels::parse(&HashMap::from([(k.to_string(), v.to_string())])).unwrap(),
        tenant: None,
        parent: None,
    };
    let page = store.list_tasks(&by_label("z", "2")).await.unwrap();
    assert_eq!(page.0.iter().map(|r| r.id).collect::<Vec<_>>(), [plain.id]);
    let page = store.list_tasks(&by_label("team", "dup")).await.unwrap();
    assert!(page.0.is_empty(), "a repeat's labels are not written");
}

async fn events_apply_once_and_in_order(db: Db) {
    let db = db.create().await;
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    let t = new_task(None, &[]);
    store.insert_task(&t, &outbox(0)).await.unwrap();

    let ev = |seq, state, fraction: Option<f64>| EventUpdate {
        seq,
        time_us: 1_000_000 * seq as i64,
        state,
        attempt: 1,
        progress: fraction.map(|f| Progress {
            fraction: f,
            message: format!("at {f}"),
        }),
        output: None,
        error: None,
        run: 0,
    };
    assert!(
        store
            .apply_event(t.id, &ev(5, TaskState::Running, None))
            .await
            .unwrap()
    );
    assert!(
        store
            .apply_event(t.id, &ev(9, TaskState::Running, Some(0.5)))
            .await
            .unwrap()
    );
    // Replays and stale events change nothing.
    assert!(
        !store
            .apply_event(t.id, &ev(9, TaskState::Running, Some(0.9)))
            .await
            .unwrap()
    );
    assert!(
        !store
            .apply_event(t.id, &ev(7, TaskState::Failed, None))
            .await
            .unwrap()
    );
    let rec = store.get_task(t.id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.last_seq, rec.progress_fraction),
        (TaskState::Running, 9, 0.5)
    );
    assert_eq!(
        rec.started_at_us,
        Some(5_000_000),
        "started at the first RUNNING event"
    );
    assert_eq!(rec.finished_at_us, None);

    let done = EventUpdate {
        output: Some(r#"{"ok":true}"#.into()),
        error: Some(TaskError {
            code: "X".into(),
            message: "m".into(),
            retryable: true,
        }),
        ..ev(12, TaskState::Succeeded, None)
    };
    assert!(store.apply_event(t.id, &done).await.unwrap());
    let rec = store.get_task(t.id).await.unwrap().unwrap();
    assert_eq!(rec.state, TaskState::Succeeded);
    assert_eq!(rec.output.as_deref(), Some(r#"{"ok":true}"#));
    assert_eq!(
        rec.progress_message, "at 0.5",
        "progress kept when an event has none"
    );
    assert_eq!(rec.finished_at_us, Some(12_000_000));
    assert_eq!(rec.error, None, "success clears an earlier attempt's error");
}

/// Two recorders can apply one task's events out of order (each takes what the shared
/// consumer hands it): the newest event's columns win, and the start time is still the
/// first RUNNING's.
async fn events_out_of_order_keep_the_first_start(db: Db) {
    let db = db.create().await;
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    let t = new_task(None, &[]);
    store.insert_task(&t, &outbox(0)).await.unwrap();
    let ev = |seq: u64, state, attempt| EventUpdate {
        seq,
        time_us: 1_000_000 * seq as i64,
        state,
        attempt,
        progress: None,
        output: None,
        error: None,
        run: 0,
    };
    // Attempt 2's start and the end arrive first, in one batch; attempt 1's start last.
    let newer = [
        (t.id, ev(8, TaskState::Running, 2)),
        (t.id, ev(9, TaskState::Succeeded, 2)),
    ];
    assert_eq!(store.apply_events(&newer).await.unwrap(), 2);
    assert_eq!(
        store
            .apply_events(&[(t.id, ev(3, TaskState::Running, 1))])
            .await
            .unwrap(),
        0,
        "an older event applies nothing of its own"
    );
    let rec = store.get_task(t.id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.attempt, rec.last_seq),
        (TaskState::Succeeded, 2, 9)
    );
    assert_eq!(rec.started_at_us, Some(3_000_000), "the first start");
    assert_eq!(rec.finished_at_us, Some(9_000_000));
    // A later start arriving late changes nothing.
    store
        .apply_events(&[(t.id, ev(5, TaskState::Running, 1))])
        .await
        .unwrap();
    let rec = store.get_task(t.id).await.unwrap().unwrap();
    assert_eq!(rec.started_at_us, Some(3_000_000));
}

async fn outbox_leases(db: Db) {
    let db = db.create().await;
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    let now = json::now_micros();
    let live = new_task(None, &[("a", "b")]);
    let expired = new_task(None, &[]);
    store
        .insert_task(&live, &outbox(now + 60_000_000))
        .await
        .unwrap();
    store.insert_task(&expired, &outbox(now - 1)).await.unwrap();

    // Only the expired row is claimed, and only once while the new lease holds.
    let claimed = store.claim_outbox(now, now + 30_000_000, 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|r| r.task_id).collect::<Vec<_>>(),
        vec![expired.id]
    );
    assert_eq!(claimed[0].payload, vec![1, 2, 3]);
    assert!(
        store
            .claim_outbox(now, now + 30_000_000, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The live row stays its submitter's until its lease runs out; its task stays.
    assert!(store.in_outbox(live.id).await.unwrap());
    assert!(store.get_task(live.id).await.unwrap().is_some());

    // The outbox's figures: both rows, the oldest task's submit time.
    let (rows, oldest) = store.outbox_stats().await.unwrap();
    assert_eq!(rows, 2);
    assert!(oldest.is_some());

    store.delete_outbox(expired.id).await.unwrap();
    assert!(!store.in_outbox(expired.id).await.unwrap());
}

/// PostgreSQL: nothing listens on port 1, so connecting fails fast as retryable
/// (Unavailable), not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_postgres_is_unavailable() {
    let opts = taskwire::store::StoreOptions {
        timeout: Duration::from_secs(2),
        max_connections: 2,
    };
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        Store::connect("postgres://postgres@127.0.0.1:1/x", &opts),
    )
    .await
    .expect("answers within its deadline")
    .unwrap_err();
    assert!(
        matches!(err, taskwire::store::Error::Unavailable(_)),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

/// SQLite: another process holds the file's write lock past the store's deadline, so
/// a write fails as retryable (the database is busy), not a hang and not INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_sqlite_is_unavailable() {
    use sqlx::{Connection, Executor};
    let db = Db::Sqlite.create().await;
    let opts = taskwire::store::StoreOptions {
        timeout: Duration::from_secs(1),
        max_connections: 2,
    };
    let store = Store::connect(&db.url, &opts).await.unwrap();
    let mut holder = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    holder.execute("BEGIN EXCLUSIVE").await.unwrap();

    let err = tokio::time::timeout(
        Duration::from_secs(10),
        store.insert_task(&new_task(None, &[]), &outbox(0)),
    )
    .await
    .expect("answers within its deadline")
    .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");

    holder.execute("ROLLBACK").await.unwrap();
    store
        .insert_task(&new_task(None, &[]), &outbox(0))
        .await
        .expect("writes work again once the lock is gone");
}

/// The recorder's batches (events folded per task, one UPDATE per batch) leave every
/// row exactly as applying each batch's events one at a time in seq order does, and
/// applying one event to a record in memory (`TaskRecord::fold`, what reads use) gives
/// the row the database holds after it: random histories, delivered in random batches
/// with redeliveries of old events mixed in.
async fn batched_events_match_one_by_one(db: Db) {
    use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

    let db = db.create().await;
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    for seed in 0..8_u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        // Pairs of identical tasks: `batched` gets apply_events, `single` apply_event.
        let mut pairs = Vec::new();
        for _ in 0..12 {
            let (a, b) = (new_task(None, &[]), new_task(None, &[]));
            store.insert_task(&a, &outbox(0)).await.unwrap();
            store.insert_task(&b, &outbox(0)).await.unwrap();
            pairs.push((a.id, b.id));
        }
        // Each task's history, interleaved in one stream: global seqs with gaps.
        let mut stream: Vec<(usize, EventUpdate)> = Vec::new();
        let mut seq = 0_u64;
        let mut attempt = vec![1_u32; pairs.len()];
        let mut finished = vec![false; pairs.len()];
        let mut failed = vec![false; pairs.len()];
        let mut run = vec![1_u32; pairs.len()];
        for _ in 0..200 {
            let t = rng.random_range(0..pairs.len());
            if finished[t] {
                // A FAILED task may be retried: a new run, attempts from 1 again.
                if failed[t] && rng.random_bool(0.5) {
                    seq += rng.random_range(1..4);
                    run[t] += 1;
                    stream.push((
                        t,
                        EventUpdate {
                            seq,
                            time_us: seq as i64 * 1000,
                            state: TaskState::Queued,
                            attempt: 0,
                            progress: None,
                            output: None,
                            error: None,
                            run: run[t],
                        },
                    ));
                    finished[t] = false;
                    failed[t] = false;
                    attempt[t] = 1;
                }
                continue;
            }
            seq += rng.random_range(1..4);
            let error = |rng: &mut StdRng| TaskError {
                code: format!("E{}", rng.random_range(0..100)),
                message: "boom".into(),
                retryable: rng.random(),
            };
            let mut ev = EventUpdate {
                seq,
                time_us: seq as i64 * 1000,
                state: TaskState::Running,
                attempt: attempt[t],
                progress: None,
                output: None,
                error: None,
                run: 0,
            };
            match rng.random_range(0..10) {
                0..=4 => {
                    ev.progress = rng.random_bool(0.7).then(|| Progress {
                        fraction: rng.random(),
                        message: format!("step {seq}"),
                    })
                }
                5 | 6 => {
                    ev.state = TaskState::Retrying;
                    ev.error = Some(error(&mut rng));
                    attempt[t] += 1;
                }
                7 => {
                    ev.state = TaskState::Failed;
                    ev.error = Some(error(&mut rng));
                    finished[t] = true;
                    failed[t] = true;
                }
                _ => {
                    ev.state = TaskState::Succeeded;
                    ev.output = Some(format!("{{\"n\":{seq}}}"));
                    ev.progress = Some(Progress {
                        fraction: 1.0,
                        message: "done".into(),
                    });
                    finished[t] = true;
                }
            }
            stream.push((t, ev));
        }
        // Deliveries: the stream in order, with redeliveries of earlier events.
        let mut deliveries = Vec::new();
        for (i, e) in stream.iter().enumerate() {
            deliveries.push(e.clone());
            if i > 0 && rng.random_bool(0.15) {
                deliveries.push(stream[rng.random_range(0..i)].clone());
            }
        }
        let mut rest = &deliveries[..];
        while !rest.is_empty() {
            let n = rng.random_range(1..=rest.len().min(9));
            let (batch, tail) = rest.split_at(n);
            rest = tail;
            let mut shuffled = batch.to_vec();
            shuffled.shuffle(&mut rng);
            let events: Vec<_> = shuffled
                .iter()
                .map(|(t, ev)| (pairs[*t].0, ev.clone()))
                .collect();
            let applied = store.apply_events(&events).await.unwrap();

            let mut one_by_one = batch.to_vec();
            one_by_one.sort_by_key(|(t, ev)| (*t, ev.seq));
            one_by_one.dedup_by_key(|(t, ev)| (*t, ev.seq));
            let mut expected = 0;
            for (t, ev) in &one_by_one {
                // The in-memory fold that reads use agrees with the row's update.
                let single = pairs[*t].1;
                let mut folded = store.get_task(single).await.unwrap().unwrap();
                let folds = folded.fold(ev);
                let applies = store.apply_event(single, ev).await.unwrap();
                assert_eq!(
                    folds, applies,
                    "seed {seed}: fold applies when the row does"
                );
                assert_eq!(
                    store.get_task(single).await.unwrap().unwrap(),
                    folded,
                    "seed {seed}: TaskRecord::fold equals the row"
                );
                expected += usize::from(applies);
            }
            assert_eq!(applied, expected, "seed {seed}: events applied");
        }
        for (a, b) in &pairs {
            let a = store.get_task(*a).await.unwrap().unwrap();
            let b = store.get_task(*b).await.unwrap().unwrap();
            assert_eq!(
                (a.state, a.attempt, a.progress_fraction, &a.progress_message),
                (b.state, b.attempt, b.progress_fraction, &b.progress_message),
                "seed {seed}"
            );
            assert_eq!((&a.output, &a.error), (&b.output, &b.error), "seed {seed}");
            assert_eq!(
                (
                    a.started_at_us,
                    a.finished_at_us,
                    a.updated_at_us,
                    a.last_seq
                ),
                (
                    b.started_at_us,
                    b.finished_at_us,
                    b.updated_at_us,
                    b.last_seq
                ),
                "seed {seed}"
            );
        }
    }
}

both_databases!(
    tasks_round_trip,
    events_apply_once_and_in_order,
    events_out_of_order_keep_the_first_start,
    batched_events_match_one_by_one,
    outbox_leases
);

/// Several processes starting at once on a fresh database (api, recorder, watch...) all
/// migrate it without tripping over each other.
async fn concurrent_first_starts_migrate_once(db: Db) {
    let db = db.create().await;
    let connects = (0..6).map(|_| {
        let url = db.url.clone();
        tokio::spawn(async move { Store::connect(&url, &Default::default()).await.map(|_| ()) })
    });
    for r in futures::future::join_all(connects).await {
        r.unwrap()
            .expect("every concurrent start migrates or finds it done");
    }
}

both_databases!(concurrent_first_starts_migrate_once);
