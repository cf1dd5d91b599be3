//! Messages that do not decode (bytes that are not the method's protobuf, an input
//! nested past prost's recursion limit) are the caller's fault: INVALID_ARGUMENT with a
//! short message on every RPC, and nothing is written.

use bytes::{Buf, BufMut};
use taskwire::store::{ListQuery, Store};
use taskwire_tests::{Api, Db, NatsServer, WatchServer, api_config};
use tonic::{
    Code,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

use super::submit_req;

/// Sends bytes as they are, reads bytes as they come.
#[derive(Debug, Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let out = src.chunk().to_vec();
        src.advance(out.len());
        Ok(Some(out))
    }
}

/// A client that sends and reads raw bytes, ready.
async fn raw_client(addr: std::net::SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc
}

async fn call(addr: std::net::SocketAddr, path: &'static str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = raw_client(addr).await;
    let path = http::uri::PathAndQuery::from_static(path);
    let streaming = path.as_str().contains("Watch");
    let req = tonic::Request::new(body);
    if streaming {
        match grpc.server_streaming(req, path, Raw).await {
            Err(s) => s,
            Ok(resp) => {
                let mut s = resp.into_inner();
                match s.message().await {
                    Err(e) => e,
                    Ok(m) => panic!("{m:?} was answered"),
                }
            }
        }
    } else {
        grpc.unary(req, path, Raw)
            .await
            .expect_err("a malformed message is refused")
    }
}

/// A SubmitTaskRequest whose input is an object nested `depth` levels deep.
fn nested(depth: usize) -> Vec<u8> {
    let mut v = serde_json::json!(1);
    for _ in 0..depth {
        v = serde_json::json!({ "a": v });
    }
    prost::Message::encode_to_vec(&submit_req("demo.echo", v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_invalid_argument_everywhere() {
    let nats = NatsServer::start();
    let db = Db::Sqlite.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let watch = WatchServer::start(&nats.url(), &db.url).await;
    let garbage: Vec<Vec<u8>> = vec![
        vec![0xff; 12],   // a field number past the limit, a varint that never ends
        vec![0x0a, 0x80], // a string whose length is cut short
        vec![0x0a, 0x05, 0xc3, 0x28, 0xa0, 0xa1, 0xff], // field 1: not UTF-8, or not a string
    ];
    let rpcs: [(&str, &'static str); 7] = [
        ("api", "/taskwire.v1.TaskService/SubmitTask"),
        ("api", "/taskwire.v1.TaskService/GetStatus"),
        ("api", "/taskwire.v1.TaskService/CancelTask"),
        ("api", "/taskwire.v1.TaskService/ListTasks"),
        ("api", "/taskwire.v1.TaskService/GetQueueStats"),
        ("watch", "/taskwire.v1.WatchService/WatchTask"),
        ("watch", "/taskwire.v1.WatchService/WatchTasks"),
    ];
    for (service, path) in rpcs {
        let addr = if service == "api" {
            api.addr
        } else {
            watch.addr
        };
        for bytes in &garbage {
            let s = call(addr, path, bytes.clone()).await;
            assert_eq!(s.code(), Code::InvalidArgument, "{path} {bytes:?}: {s:?}");
            assert!(s.message().len() < 120, "{path}: short message: {s:?}");
        }
    }
    // An input nested 60 levels deep: past prost's recursion limit.
    let s = call(api.addr, "/taskwire.v1.TaskService/SubmitTask", nested(60)).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("nested too deeply"), "{s:?}");
    assert!(s.message().len() < 120, "{s:?}");
    // 20 levels are fine.
    raw_client(api.addr)
        .await
        .unary(
            tonic::Request::new(nested(20)),
            http::uri::PathAndQuery::from_static("/taskwire.v1.TaskService/SubmitTask"),
            Raw,
        )
        .await
        .expect("a 20-level input is accepted");

    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    let (rows, _) = store
        .list_tasks(&ListQuery {
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        1,
        "only the 20-level task was written: {rows:?}"
    );
}
