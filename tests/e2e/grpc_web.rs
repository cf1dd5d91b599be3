//! grpc-web as a browser speaks it: HTTP/1.1, binary grpc-web frames, a CORS
//! preflight first. A unary GetStatus and a WatchTask stream.

use prost::Message;
use taskwire::pb::v1::{GetStatusRequest, Task, TaskEvent, TaskState, WatchTaskRequest};
use taskwire_tests::{Db, Stack, WatchServer, wait_terminal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::submit_req;

/// One HTTP/1.1 exchange on a fresh connection; returns (status line + headers, body).
pub(crate) async fn http1(addr: std::net::SocketAddr, request: Vec<u8>) -> (String, Vec<u8>) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(&request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        conn.read_to_end(&mut raw),
    )
    .await
    .expect("response in time")
    .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        b = &b[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn post(addr: std::net::SocketAddr, path: &str, msg: &impl Message) -> Vec<u8> {
    post_with(addr, path, msg, "")
}

/// A grpc-web POST with `extra` header lines (each ending in CRLF).
pub(crate) fn post_with(
    addr: std::net::SocketAddr,
    path: &str,
    msg: &impl Message,
    extra: &str,
) -> Vec<u8> {
    let payload = msg.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    body.extend_from_slice(&payload);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://app.example\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nAccept: application/grpc-web+proto\r\n\
         {extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

/// Splits a grpc-web body into its data frames and its trailers frame.
pub(crate) fn frames(mut b: &[u8]) -> (Vec<Vec<u8>>, String) {
    let mut data = Vec::new();
    let mut trailers = String::new();
    while b.len() >= 5 {
        let flag = b[0];
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        let frame = &b[5..5 + len];
        if flag & 0x80 != 0 {
            trailers = String::from_utf8_lossy(frame).to_string();
        } else {
            data.push(frame.to_vec());
        }
        b = &b[5 + len..];
    }
    (data, trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_style_grpc_web_calls() {
    let stack = Stack::start(Db::Sqlite).await;
    let watch = WatchServer::start(&stack.nats.url(), &stack.db.url).await;
    let mut client = stack.client().await;
    let id = super::submit(
        &mut client,
        submit_req(
            "demo.sleep",
            serde_json::json!({"seconds": 0.5, "steps": 5}),
        ),
    )
    .await;

    // CORS preflight, as a browser sends before a cross-origin grpc-web call.
    let preflight = format!(
        "OPTIONS /taskwire.v1.WatchService/WatchTask HTTP/1.1\r\nHost: {a}\r\nOrigin: http://app.example\r\n\
         Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type,x-grpc-web\r\n\
         Connection: close\r\n\r\n",
        a = watch.addr
    );
    let (head, _) = http1(watch.addr, preflight.into_bytes()).await;
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        lower.contains("access-control-allow-origin: http://app.example"),
        "{head}"
    );
    assert!(lower.contains("access-control-allow-headers"), "{head}");
    // An origin not on the list gets no CORS grant.
    let stranger = format!(
        "OPTIONS /taskwire.v1.WatchService/WatchTask HTTP/1.1\r\nHost: {a}\r\nOrigin: http://evil.example\r\n\
         Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
        a = watch.addr
    );
    let (head, _) = http1(watch.addr, stranger.into_bytes()).await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{head}"
    );

    // WatchTask over grpc-web on HTTP/1.1: a stream of frames, then trailers.
    let (head, body) = http1(
        watch.addr,
        post(
            watch.addr,
            "/taskwire.v1.WatchService/WatchTask",
            &WatchTaskRequest {
                task_id: id.clone(),
                after_seq: 0,
                tree: false,
            },
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/grpc-web"),
        "{head}"
    );
    let (data, trailers) = frames(&body);
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    let events: Vec<TaskEvent> = data
        .iter()
        .map(|d| TaskEvent::decode(d.as_slice()).unwrap())
        .collect();
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(events.last().unwrap().state, TaskState::Succeeded as i32);
    let steps = events
        .iter()
        .filter(|e| {
            e.progress
                .as_ref()
                .is_some_and(|p| p.message.starts_with("step"))
        })
        .count();
    assert!(steps >= 1, "progress streamed: {events:?}");

    // Unary GetStatus over grpc-web, against the api.
    let final_task = wait_terminal(&client, &id).await;
    let (head, body) = http1(
        stack.api.addr,
        post(
            stack.api.addr,
            "/taskwire.v1.TaskService/GetStatus",
            &GetStatusRequest {
                task_id: id.clone(),
            },
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (data, trailers) = frames(&body);
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    let task = Task::decode(data[0].as_slice()).unwrap();
    assert_eq!(task, final_task);
}
