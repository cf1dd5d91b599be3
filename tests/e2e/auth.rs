//! Principals and tenants end to end, over gRPC and grpc-web (docs/security.md): no
//! token is UNAUTHENTICATED, a reader cannot submit or cancel, tenant B cannot read,
//! list, cancel or watch tenant A's tasks (NOT_FOUND, as a missing task), idempotency
//! keys are per tenant, and a revoked key stops working within seconds. Nothing a
//! refused call sent is written.

use std::time::{Duration, Instant};

use taskwire::{
    auth::{ApiKey, Role, Tenant},
    domain::{Caller, TaskId},
    pb::v1::{
        CancelTaskRequest, GetQueueStatsRequest, GetStatusRequest, ListTasksRequest,
        SubmitTaskRequest, TaskState, WatchTaskRequest, WatchTasksRequest,
    },
    store::{ListQuery, Store},
};
use taskwire_tests::{
    Api, Db, NatsServer, Running, WatchServer, api_config, both_databases, eventually,
    recorder_config, watch_client, worker_config,
};
use tonic::{Code, Request};

use super::submit_req;

/// `msg` with `authorization: Bearer <token>`.
fn as_key<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn key(store: &Store, tenant: &str, role: Role) -> (ApiKey, String) {
    let (key, token) = ApiKey::create("test", Tenant::parse(tenant).unwrap(), role);
    store.insert_key(&key).await.unwrap();
    (key, token.reveal())
}

fn sleep_req() -> SubmitTaskRequest {
    submit_req(
        "demo.sleep",
        serde_json::json!({"seconds": 0.3, "steps": 3}),
    )
}

async fn keys_roles_and_tenants(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    let (_, a_sub) = key(&store, "acme", Role::Submitter).await;
    let (_, a_read) = key(&store, "acme", Role::Reader).await;
    let (_, a_admin) = key(&store, "acme", Role::Admin).await;
    let (b_key, b_sub) = key(&store, "bravo", Role::Submitter).await;

    let mut config = api_config(&nats.url(), &db.url);
    config.serve.auth = taskwire::auth::Mode::Keys;
    let api = Api::start(config).await;
    let watch = WatchServer::start_with(&nats.url(), &db.url, &["--auth", "keys"]).await;
    let _recorder = Running::recorder(recorder_config(&nats.url(), &db.url));
    let _worker = Running::worker(worker_config(&nats.url()));
    let mut c = api.client().await;
    let mut w = watch_client(watch.addr).await;

    // No token, a malformed one, an unknown one, another scheme: UNAUTHENTICATED, and
    // nothing is written.
    let unknown = taskwire::auth::Token::generate().reveal();
    for token in [None, Some("nonsense"), Some(unknown.as_str())] {
        let req = match token {
            None => Request::new(sleep_req()),
            Some(t) => as_key(t, sleep_req()),
        };
        let e = c.submit_task(req).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{token:?}: {e:?}");
        let e = w
            .watch_task(Request::new(WatchTaskRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    let mut basic = Request::new(ListTasksRequest::default());
    basic
        .metadata_mut()
        .insert("authorization", "Basic YTpi".parse().unwrap());
    assert_eq!(
        c.list_tasks(basic).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let all = ListQuery {
        page_size: 100,
        ..Default::default()
    };
    assert!(store.list_tasks(&all).await.unwrap().0.is_empty());

    // A submitter of acme submits; its reader reads but cannot submit or cancel.
    let a_task = c
        .submit_task(as_key(&a_sub, sleep_req()))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let status = |id: &str| GetStatusRequest {
        task_id: id.to_string(),
    };
    let seen = c
        .get_status(as_key(&a_read, status(&a_task)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.id, a_task);
    let e = c
        .submit_task(as_key(&a_read, sleep_req()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let cancel = |id: &str| CancelTaskRequest {
        task_id: id.to_string(),
    };
    let e = c
        .cancel_task(as_key(&a_read, cancel(&a_task)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Queue statistics span tenants: admins only.
    let e = c
        .get_queue_stats(as_key(&a_sub, GetQueueStatsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    c.get_queue_stats(as_key(&a_admin, GetQueueStatsRequest::default()))
        .await
        .unwrap();

    // bravo cannot see acme's task: exactly what a missing task gets.
    let missing = TaskId::new().to_string();
    let anonymise = |e: tonic::Status, id: &str| (e.code(), e.message().replace(id, "<id>"));
    let theirs = c
        .get_status(as_key(&b_sub, status(&a_task)))
        .await
        .unwrap_err();
    let nobody = c
        .get_status(as_key(&b_sub, status(&missing)))
        .await
        .unwrap_err();
    assert_eq!(theirs.code(), Code::NotFound);
    assert_eq!(anonymise(theirs, &a_task), anonymise(nobody, &missing));
    let e = c
        .cancel_task(as_key(&b_sub, cancel(&a_task)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = w
        .watch_task(as_key(
            &b_sub,
            WatchTaskRequest {
                task_id: a_task.clone(),
                after_seq: 0,
                tree: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let listed = c
        .list_tasks(as_key(&b_sub, ListTasksRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tasks.is_empty(), "{listed:?}");
    // Nor its tree, nor add a child to it; a child of its own task is its own.
    let e = w
        .watch_task(as_key(
            &b_sub,
            WatchTaskRequest {
                task_id: a_task.clone(),
                after_seq: 0,
                tree: true,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let child_of = |parent: &str| SubmitTaskRequest {
        parent_id: parent.to_string(),
        ..sleep_req()
    };
    let e = c
        .submit_task(as_key(&b_sub, child_of(&a_task)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let a_child = c
        .submit_task(as_key(&a_sub, child_of(&a_task)))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let by_parent = |parent: &str| ListTasksRequest {
        parent_id: parent.to_string(),
        ..Default::default()
    };
    let listed = c
        .list_tasks(as_key(&b_sub, by_parent(&a_task)))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tasks.is_empty(), "{listed:?}");
    let listed = c
        .list_tasks(as_key(&a_read, by_parent(&a_task)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.tasks.iter().map(|t| &t.id).collect::<Vec<_>>(),
        [&a_child]
    );

    // bravo's firehose carries bravo's tasks only, while acme's run beside them.
    let mut firehose = w
        .watch_tasks(as_key(&b_sub, WatchTasksRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let a_second = c
        .submit_task(as_key(&a_sub, sleep_req()))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let b_task = c
        .submit_task(as_key(&b_sub, sleep_req()))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let mut b_events = 0;
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = firehose.message().await.unwrap() {
            assert_eq!(e.task_id, b_task, "bravo saw another tenant's event: {e:?}");
            b_events += 1;
            if e.state == TaskState::Succeeded as i32 {
                break;
            }
        }
    })
    .await
    .expect("bravo's task finishes on its firehose");
    assert!(b_events >= 2, "RUNNING .. SUCCEEDED: {b_events}");
    // acme's reader lists acme's three tasks (one a child), never bravo's.
    let listed = c
        .list_tasks(as_key(&a_read, ListTasksRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<String> = listed.tasks.into_iter().map(|t| t.id).collect();
    ids.sort();
    let mut want = vec![a_task.clone(), a_second, a_child];
    want.sort();
    assert_eq!(ids, want);

    // Idempotency keys are per tenant, whatever caller header is sent.
    let keyed = |token: &str, caller: &str| {
        let mut r = as_key(
            token,
            SubmitTaskRequest {
                idempotency_key: "order-1".into(),
                ..sleep_req()
            },
        );
        r.metadata_mut()
            .insert(Caller::METADATA_KEY, caller.parse().unwrap());
        r
    };
    let a1 = c
        .submit_task(keyed(&a_sub, "x"))
        .await
        .unwrap()
        .into_inner();
    let a2 = c
        .submit_task(keyed(&a_sub, "y"))
        .await
        .unwrap()
        .into_inner();
    let b1 = c
        .submit_task(keyed(&b_sub, "x"))
        .await
        .unwrap()
        .into_inner();
    assert!(a2.deduplicated && a2.task_id == a1.task_id, "{a1:?} {a2:?}");
    assert!(!b1.deduplicated && b1.task_id != a1.task_id, "{b1:?}");

    // A revoked key stops working within seconds, on both services.
    let revoked_at = Instant::now();
    assert!(store.revoke_key(&b_key.id, 1).await.unwrap());
    eventually("the revoked key is refused", || {
        let mut c = c.clone();
        let mut w = w.clone();
        let b_sub = b_sub.clone();
        let b_task = b_task.clone();
        async move {
            let api = c
                .list_tasks(as_key(&b_sub, ListTasksRequest::default()))
                .await
                .err()?;
            let watch = w
                .watch_task(as_key(
                    &b_sub,
                    WatchTaskRequest {
                        task_id: b_task,
                        after_seq: 0,
                        tree: false,
                    },
                ))
                .await
                .err()?;
            (api.code() == Code::Unauthenticated && watch.code() == Code::Unauthenticated)
                .then_some(())
        }
    })
    .await;
    let took = revoked_at.elapsed();
    assert!(
        took <= taskwire::auth::keys::CACHE_TTL + Duration::from_secs(3),
        "refused after {took:?}"
    );

    // Everything written is what was accepted: 3 acme (one a child) + 1 bravo sleeps,
    // 2 keyed.
    let (rows, _) = store.list_tasks(&all).await.unwrap();
    assert_eq!(rows.len(), 6, "{rows:?}");
    let tenants = |t: &str| rows.iter().filter(|r| r.tenant.as_str() == t).count();
    assert_eq!((tenants("acme"), tenants("bravo")), (4, 2));
}

/// grpc-web (HTTP/1.1) meets the same checks as native gRPC.
async fn grpc_web_carries_the_key(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    let (_, a_sub) = key(&store, "acme", Role::Submitter).await;
    let (_, b_read) = key(&store, "bravo", Role::Reader).await;
    let mut config = api_config(&nats.url(), &db.url);
    config.serve.auth = taskwire::auth::Mode::Keys;
    let api = Api::start(config).await;
    let id = api
        .client()
        .await
        .submit_task(as_key(&a_sub, sleep_req()))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let get = GetStatusRequest {
        task_id: id.clone(),
    };
    let call = |token: Option<&str>| {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        super::grpc_web::post_with(api.addr, "/taskwire.v1.TaskService/GetStatus", &get, &auth)
    };
    let status_of = |head: &str, body: &[u8]| {
        let (_, trailers) = super::grpc_web::frames(body);
        let all = format!("{}\n{trailers}", head.to_ascii_lowercase());
        all.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("grpc-status:")
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_default()
    };
    let (head, body) = super::grpc_web::http1(api.addr, call(None)).await;
    assert_eq!(status_of(&head, &body), "16", "{head}");
    let (head, body) = super::grpc_web::http1(api.addr, call(Some(&b_read))).await;
    assert_eq!(status_of(&head, &body), "5", "{head}");
    let (head, body) = super::grpc_web::http1(api.addr, call(Some(&a_sub))).await;
    assert_eq!(status_of(&head, &body), "0", "{head}");
}

both_databases!(keys_roles_and_tenants);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_auth() {
    grpc_web_carries_the_key(Db::Sqlite).await
}

/// Per-tenant submit rate and stream quotas: RESOURCE_EXHAUSTED with when to retry,
/// for the tenant over its limit only, and nothing written for a refused submit.
async fn limits_hold_per_tenant_and_key(db: Db) {
    use tonic_types::StatusExt;
    let nats = NatsServer::start();
    let db = db.create().await;
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    let (_, a_sub) = key(&store, "acme", Role::Submitter).await;
    let (_, a_sub2) = key(&store, "acme", Role::Submitter).await;
    let (_, b_sub) = key(&store, "bravo", Role::Submitter).await;
    let mut config = api_config(&nats.url(), &db.url);
    config.serve.auth = taskwire::auth::Mode::Keys;
    config.tenant_submit_rate = 3;
    let api = Api::start(config).await;
    let watch = WatchServer::start_with(
        &nats.url(),
        &db.url,
        &[
            "--auth",
            "keys",
            "--tenant-max-streams",
            "2",
            "--max-watch-all-per-key",
            "1",
        ],
    )
    .await;
    let mut c = api.client().await;
    let mut w = watch_client(watch.addr).await;

    // acme's burst of 3 passes; the 4th, on another of acme's keys, is refused.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = c.submit_task(as_key(&a_sub, sleep_req())).await.unwrap();
        ids.push(r.into_inner().task_id);
    }
    let e = c
        .submit_task(as_key(&a_sub2, sleep_req()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let retry = e
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay);
    assert!(
        retry.is_some_and(|d| d > Duration::ZERO && d <= Duration::from_secs(1)),
        "{retry:?}"
    );
    assert!(e.metadata().get("retry-after").is_some(), "{e:?}");
    // bravo has its own budget.
    c.submit_task(as_key(&b_sub, sleep_req())).await.unwrap();
    // After the hint, acme may submit again.
    tokio::time::sleep(retry.unwrap()).await;
    c.submit_task(as_key(&a_sub, sleep_req())).await.unwrap();
    let (rows, _) = store
        .list_tasks(&ListQuery {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 5, "the refused submit wrote nothing");

    // Streams: one WatchTasks per key, two streams per tenant.
    let watch_one = |token: &str, id: &str| {
        as_key(
            token,
            WatchTaskRequest {
                task_id: id.to_string(),
                after_seq: 0,
                tree: false,
            },
        )
    };
    let all = w
        .watch_tasks(as_key(&a_sub, WatchTasksRequest::default()))
        .await
        .unwrap();
    let e = w
        .watch_tasks(as_key(&a_sub, WatchTasksRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let one = w.watch_task(watch_one(&a_sub2, &ids[0])).await.unwrap();
    let e = w.watch_task(watch_one(&a_sub2, &ids[1])).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::ResourceExhausted,
        "acme's third stream: {e:?}"
    );
    // bravo is not held back by acme's streams.
    let _b = w
        .watch_tasks(as_key(&b_sub, WatchTasksRequest::default()))
        .await
        .unwrap();
    // A closed stream gives its place back.
    drop(all);
    drop(one);
    eventually("closed streams free their places", || {
        let mut w = w.clone();
        let req = as_key(&a_sub, WatchTasksRequest::default());
        async move { w.watch_tasks(req).await.ok().map(|_| ()) }
    })
    .await;
}

both_databases!(limits_hold_per_tenant_and_key);

/// JWTs from an external issuer map to the same tenants and roles: a good token
/// works, and an expired one, another issuer's, one signed by another key, or an HMAC
/// token made with the public key (algorithm confusion) is UNAUTHENTICATED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_from_an_issuer() {
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);

    let signer = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
    let point = signer.public_key_raw(); // 0x04 || x || y
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    }]});
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).unwrap();

    let nats = NatsServer::start();
    let db = Db::Sqlite.create().await;
    let mut config = api_config(&nats.url(), &db.url);
    config.serve.auth = taskwire::auth::Mode::Keys;
    config.serve.jwt_jwks = Some(jwks_file);
    config.serve.jwt_issuer = Some("https://idp.example".into());
    config.serve.jwt_audience = Some("taskwire".into());
    let api = Api::start(config).await;
    let mut c = api.client().await;

    let now = taskwire::json::now_micros() / 1_000_000;
    let sign = |key: &rcgen::KeyPair, claims: serde_json::Value| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_ec_der(&key.serialize_der()),
        )
        .unwrap()
    };
    let claims = |tenant: &str, role: &str, iss: &str, exp: i64| {
        serde_json::json!({"sub": "user-1", "tenant": tenant, "role": role,
            "iss": iss, "aud": "taskwire", "exp": exp})
    };
    let idp = "https://idp.example";
    let good = sign(&signer, claims("acme", "submitter", idp, now + 300));
    let id = c
        .submit_task(as_key(&good, sleep_req()))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let get = |id: &str| GetStatusRequest {
        task_id: id.to_string(),
    };
    c.get_status(as_key(&good, get(&id))).await.unwrap();

    let reader = sign(&signer, claims("acme", "reader", idp, now + 300));
    let e = c
        .submit_task(as_key(&reader, sleep_req()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let bravo = sign(&signer, claims("bravo", "admin", idp, now + 300));
    let e = c.get_status(as_key(&bravo, get(&id))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let stranger = rcgen::KeyPair::generate().unwrap();
    let hmac = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &claims("acme", "admin", idp, now + 300),
            &EncodingKey::from_secret(point),
        )
        .unwrap()
    };
    let refused = [
        (
            "expired",
            sign(&signer, claims("acme", "submitter", idp, now - 120)),
        ),
        (
            "another issuer",
            sign(
                &signer,
                claims("acme", "submitter", "https://evil.example", now + 300),
            ),
        ),
        (
            "another key",
            sign(&stranger, claims("acme", "submitter", idp, now + 300)),
        ),
        ("HMAC with the public key", hmac),
        (
            "no role",
            sign(
                &signer,
                serde_json::json!({"tenant": "acme", "iss": idp, "aud": "taskwire", "exp": now + 300}),
            ),
        ),
    ];
    for (what, token) in refused {
        let e = c.get_status(as_key(&token, get(&id))).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
    }
}
