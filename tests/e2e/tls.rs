//! TLS on the api's listener: a client with the CA connects, one without it (or in
//! plaintext) cannot, a certificate rotated on disk is served without a restart, and
//! with a client CA (mTLS) only callers with a certificate it signed get in.

use std::{path::Path, time::Duration};

use taskwire::pb::v1::{ListTasksRequest, task_service_client::TaskServiceClient};
use taskwire_tests::{Db, NatsServer, TestCa, api_config, eventually};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

async fn connect(
    port: u16,
    ca: Option<&str>,
    identity: Option<(&str, &str)>,
) -> Result<TaskServiceClient<Channel>, String> {
    let mut tls = ClientTlsConfig::new().domain_name("localhost");
    if let Some(ca) = ca {
        tls = tls.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(TaskServiceClient::new(channel))
}

/// Whether a ListTasks call through that connection is answered.
async fn answered(
    port: u16,
    ca: Option<&str>,
    identity: Option<(&str, &str)>,
) -> Result<(), String> {
    let mut c = connect(port, ca, identity).await?;
    c.list_tasks(ListTasksRequest::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// Starts the api serving TLS with `dir`/server.{crt,key} and, with `mtls`, asking for
/// client certificates `dir`/clients.pem signed; returns its port and its stop token.
async fn start_api(
    nats: &NatsServer,
    db_url: &str,
    dir: &Path,
    mtls: bool,
) -> (u16, CancellationToken) {
    let mut config = api_config(&nats.url(), db_url);
    config.serve.tls_cert = Some(dir.join("server.crt"));
    config.serve.tls_key = Some(dir.join("server.key"));
    config.serve.tls_client_ca = mtls.then(|| dir.join("clients.pem"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    tokio::spawn(taskwire_api::run(config, listener, stop.clone()));
    (port, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_ca_only_and_rotation_without_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let nats = NatsServer::start();
    let db = Db::Sqlite.create().await;
    let dir = tempfile::tempdir().unwrap();
    let first = TestCa::new("first ca");
    first.issue_server(dir.path());
    let (port, stop) = start_api(&nats, &db.url, dir.path(), false).await;

    let first_pem = first.pem();
    eventually("the api answers over TLS", || {
        let ca = first_pem.clone();
        async move { answered(port, Some(&ca), None).await.ok() }
    })
    .await;
    // Without the CA (the system's roots only), or in plaintext: no.
    answered(port, None, None)
        .await
        .expect_err("a client without the CA cannot connect");
    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(ch) = plain {
        TaskServiceClient::new(ch)
            .list_tasks(ListTasksRequest::default())
            .await
            .expect_err("plaintext is not served");
    }

    // Rotation: a certificate from another CA replaces the files; new connections
    // get it within seconds, and the process never restarted.
    let second = TestCa::new("second ca");
    second.issue_server(dir.path());
    let second_pem = second.pem();
    eventually("the rotated certificate is served", || {
        let ca = second_pem.clone();
        async move { answered(port, Some(&ca), None).await.ok() }
    })
    .await;
    assert!(
        answered(port, Some(&first_pem), None).await.is_err(),
        "the old certificate is no longer served"
    );
    // A half-written pair (garbage) keeps the current certificate in force.
    std::fs::write(dir.path().join("server.crt"), "not a certificate").unwrap();
    tokio::time::sleep(taskwire::tls::RELOAD_CHECK * 2).await;
    answered(port, Some(&second_pem), None)
        .await
        .expect("a broken file does not take the listener down");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admits_only_signed_clients() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let nats = NatsServer::start();
    let db = Db::Sqlite.create().await;
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new("server ca");
    server_ca.issue_server(dir.path());
    let clients = TestCa::new("client ca");
    std::fs::write(dir.path().join("clients.pem"), clients.pem()).unwrap();
    let (port, stop) = start_api(&nats, &db.url, dir.path(), true).await;
    let ca = server_ca.pem();
    let (cert, key) = clients.leaf("billing");
    eventually("a client with a signed certificate gets in", || {
        let (ca, cert, key) = (ca.clone(), cert.clone(), key.clone());
        async move { answered(port, Some(&ca), Some((&cert, &key))).await.ok() }
    })
    .await;
    answered(port, Some(&ca), None)
        .await
        .expect_err("no client certificate: refused");
    let (stranger_cert, stranger_key) = TestCa::new("stranger").leaf("mallory");
    answered(port, Some(&ca), Some((&stranger_cert, &stranger_key)))
        .await
        .expect_err("a certificate another CA signed: refused");
    stop.cancel();
}
